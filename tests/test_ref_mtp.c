/*
 * test_ref_mtp -- the MTP layer (docs/mtp.md) in the float64 reference (ref_mtp_forward) against
 * transformers, and the engine's MTP steps against the reference on random preset models.
 *
 * 1. tests/data/hf_tiny_mtp (tools/hf_mtp_reference.py): for each sequence, ref_forward_ex's
 *    final-normed hidden rows feed ref_mtp_forward (row p: token ids[p+1], the last row the
 *    generator's next id); its pre-norm output, logits and selected sets must match transformers'
 *    (1e-4 relative, sets exact outside near-tie rows), and so must one chained draft row (its
 *    hidden input the MTP output of the row before).
 * 2. Random models with an MTP layer (init-model of the presets): the engine's target step, MTP
 *    catch-up step and chained MTP steps (dsacp_engine_step_opts / dsacp_engine_mtp_step) against
 *    ref_forward_ex + ref_mtp_forward, for a prefill and for token-by-token decoding.
 */
#include "test.h"

#include "dsacp.h"
#include "ref/hf_mtp_data.h"
#include "ref/ref_model.h"
#include "ref/test_util.h"

#include <math.h>
#include <stdint.h>

#define HF_TOL 1e-4

/* Part 1: ref_mtp_forward against transformers. */
static void test_ref_vs_hf(void)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tests/data/hf_tiny_mtp", tu_source_dir());
    dsacp_model *m;
    REQUIRE_OK(dsacp_model_load(dir, &m));
    REQUIRE_OK(dsacp_model_has_mtp(m) ? 0 : DSACP_ENOTFOUND);
    hf_mtp_data h;
    hf_mtp_open(dsacp_model_config(m), &h);
    const int64_t V = h.V, K = h.K, D = h.D, Lmax = h.Lmax;
    double *hid = malloc((size_t)((Lmax + 1) * D) * sizeof(double));
    double *out = malloc((size_t)((Lmax + 1) * D) * sizeof(double));
    double *lg = malloc((size_t)((Lmax + 1) * V) * sizeof(double));
    int32_t *tk = malloc((size_t)((Lmax + 1) * K) * sizeof(int32_t));
    int32_t *mids = malloc((size_t)(Lmax + 1) * sizeof(int32_t));
    REQUIRE_OK(hid && out && lg && tk && mids ? 0 : DSACP_ENOMEM);
    double worst = 0, worst_out = 0, worst_chain = 0;
    int64_t rows = 0, bad_sets = 0, chains = 0;
    for (int64_t r = 0; r < h.R; r++) {
        const int64_t n = hf_mtp_seq_len(&h, r), fa = hf_mtp_first_affected(&h, r, n);
        const int32_t *ids = h.ids + r * Lmax;
        CHECK_OK(ref_forward_ex(m, REF_EXACT, REF_KV_F32, ids, n, NULL, NULL, NULL, hid));
        memcpy(mids, ids + 1, (size_t)(n - 1) * sizeof(int32_t));
        mids[n - 1] = h.next[r];
        CHECK_OK(ref_mtp_forward(m, REF_EXACT, REF_KV_F32, mids, hid, n, out, lg, tk, NULL));
        worst = fmax(worst, tu_max_rel(h.mtp_logits + r * Lmax * V, lg, fa * V));
        worst_out = fmax(worst_out, tu_max_rel(h.mtp_hidden + r * Lmax * D, out, fa * D));
        for (int64_t p = 0; p < fa; p++)
            bad_sets += memcmp(tk + p * K, h.mtp_topk + (r * Lmax + p) * K, (size_t)K * sizeof(int32_t)) != 0;
        rows += fa;
        if (fa < n || h.chain_tie[r]) continue;
        /* the chained row at position n: token chain.ids, hidden = the MTP output of row n - 1 */
        memcpy(hid + n * D, out + (n - 1) * D, (size_t)D * sizeof(double));
        mids[n] = h.chain_ids[r];
        CHECK_OK(ref_mtp_forward(m, REF_EXACT, REF_KV_F32, mids, hid, n + 1, out, lg, tk, NULL));
        worst_chain = fmax(worst_chain, tu_max_rel(h.chain_logits + r * V, lg + n * V, V));
        bad_sets += memcmp(tk + n * K, h.chain_topk + r * K, (size_t)K * sizeof(int32_t)) != 0;
        chains++;
    }
    printf("ref MTP vs transformers: %lld rows + %lld chained rows, logits max rel %.3g (chained %.3g), "
           "output max rel %.3g, top-k sets differing %lld\n", (long long)rows, (long long)chains, worst,
           worst_chain, worst_out, (long long)bad_sets);
    CHECKF(worst <= HF_TOL && worst_chain <= HF_TOL && worst_out <= HF_TOL, "max rel %.3g / %.3g / %.3g > %g",
           worst, worst_chain, worst_out, HF_TOL);
    CHECK(bad_sets == 0);
    CHECK(rows >= h.R * 16 && chains >= 1);
    /* a model without the layer is refused */
    dsacp_model *plain;
    snprintf(dir, sizeof dir, "%s/tests/data/hf_tiny", tu_source_dir());
    REQUIRE_OK(dsacp_model_load(dir, &plain));
    CHECK(ref_mtp_forward(plain, REF_EXACT, REF_KV_F32, mids, hid, 1, out, lg, NULL, NULL) == DSACP_EINVAL);
    dsacp_model_free(plain);
    free(hid), free(out), free(lg), free(tk), free(mids);
    dsacp_st_close(h.f);
    dsacp_model_free(m);
}

/* ---- Part 2: the engine against the reference on random models ---- */

#define SEQ 48   /* crosses the presets' index_topk (32) */
#define CHAIN 2  /* chained draft rows after the catch-up (k = 3) */
#define TIE_TOL 1e-6
#define ENGINE_TOL 1e-5

/* The reference's view of one sequence: target hidden rows, MTP tokens / hidden / logits / sets
 * for the SEQ catch-up rows and the CHAIN chained rows after them. */
typedef struct ref_run {
    int32_t mids[SEQ + CHAIN];
    double *hid, *out, *lg; /* [SEQ + CHAIN][D], [SEQ + CHAIN][D], [SEQ + CHAIN][V] */
    int32_t *tk;            /* [SEQ + CHAIN][K] */
    int64_t clean;          /* rows before the first near tie (target layers or the MTP layer) */
} ref_run;

static int64_t argmax_d(const double *x, int64_t n)
{
    int64_t b = 0;
    for (int64_t i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

static int64_t first_near_tie(const double *gap, int64_t layers, int64_t n, int64_t stride)
{
    int64_t first = n;
    for (int64_t l = 0; l < layers; l++)
        for (int64_t p = 0; p < n && p < first; p++)
            if (gap[l * stride + p] < TIE_TOL) first = p;
    return first;
}

static void ref_run_sequence(const dsacp_model *m, ref_numerics mode, ref_kv kv, const int32_t *ids, ref_run *rr)
{
    const dsacp_config *cfg = dsacp_model_config(m);
    const int64_t D = cfg->hidden_size, V = cfg->vocab_size, K = cfg->index_topk, NL = cfg->num_hidden_layers;
    const int64_t N = SEQ + CHAIN;
    rr->hid = malloc((size_t)(N * D) * sizeof(double));
    rr->out = malloc((size_t)(N * D) * sizeof(double));
    rr->lg = malloc((size_t)(N * V) * sizeof(double));
    rr->tk = malloc((size_t)(N * K) * sizeof(int32_t));
    double *tlg = malloc((size_t)(SEQ * V) * sizeof(double)), *gap = malloc((size_t)((NL + 1) * N) * sizeof(double));
    REQUIRE_OK(rr->hid && rr->out && rr->lg && rr->tk && tlg && gap ? 0 : DSACP_ENOMEM);
    REQUIRE_OK(ref_forward_ex(m, mode, kv, ids, SEQ, tlg, NULL, gap, rr->hid));
    rr->clean = first_near_tie(gap, NL, SEQ, SEQ);
    memcpy(rr->mids, ids + 1, (SEQ - 1) * sizeof(int32_t));
    rr->mids[SEQ - 1] = (int32_t)argmax_d(tlg + (SEQ - 1) * V, V); /* the sampled token */
    for (int64_t n = SEQ; n <= N; n++) { /* the catch-up rows, then one more chained row each time */
        REQUIRE_OK(ref_mtp_forward(m, mode, kv, rr->mids, rr->hid, n, rr->out, rr->lg, rr->tk, gap));
        if (n == N) break;
        rr->mids[n] = (int32_t)argmax_d(rr->lg + (n - 1) * V, V);  /* the draft */
        memcpy(rr->hid + n * D, rr->out + (n - 1) * D, (size_t)D * sizeof(double)); /* its hidden */
    }
    const int64_t mt = first_near_tie(gap, 1, N, N);
    rr->clean = mt < rr->clean ? mt : rr->clean;
    free(tlg), free(gap);
}

/* The engine: a prefill of SEQ - tail tokens then a verify entry of tail tokens (tail 0: all one
 * prefill; tail SEQ: token by token), each target step followed by its catch-up MTP step, then
 * CHAIN chained MTP steps. Returns the MTP logits [SEQ + CHAIN][V] and sets [SEQ + CHAIN][K]. */
static int engine_run(const dsacp_model *m, const dsacp_engine_options *o, int64_t tail, const int32_t *ids,
                      const ref_run *rr, float *lg, int32_t *tk)
{
    const dsacp_config *cfg = dsacp_model_config(m);
    const int64_t V = cfg->vocab_size, K = cfg->index_topk;
    dsacp_engine *e;
    int rc = dsacp_engine_create(m, o, &e);
    if (rc) return rc;
    int64_t id;
    rc = dsacp_engine_add_request(e, &id);
    for (int64_t p = 0; p < SEQ && !rc;) {
        const bool each = tail == SEQ;
        const int64_t c = each ? 1 : p == 0 && tail ? SEQ - tail : SEQ - p;
        dsacp_step_entry en = {id, c, ids + p};
        dsacp_entry_opts op = {c, p > 0 && !each ? DSACP_ENTRY_VERIFY : 0};
        rc = dsacp_engine_step_opts(e, &en, &op, 1, NULL, NULL);
        en.token_ids = rr->mids + p;
        if (!rc) rc = dsacp_engine_mtp_step(e, &en, &op, 1, lg + p * V, tk + p * K);
        p += c;
    }
    for (int64_t j = 0; j < CHAIN && !rc; j++) {
        dsacp_step_entry en = {id, 1, rr->mids + SEQ + j};
        rc = dsacp_engine_mtp_step(e, &en, NULL, 1, lg + (SEQ + j) * V, tk + (SEQ + j) * K);
    }
    if (!rc && dsacp_engine_request_mtp_length(e, id) != SEQ + CHAIN) rc = DSACP_EINVAL;
    if (!rc) rc = dsacp_engine_truncate_request(e, id, SEQ, SEQ);
    if (!rc && dsacp_engine_request_mtp_length(e, id) != SEQ) rc = DSACP_EINVAL;
    dsacp_engine_free(e);
    return rc;
}

/* Fraction of the reference's selected positions the engine also selected, the worst row. */
static double min_overlap(const int32_t *a, const int32_t *r, int64_t rows, int64_t K)
{
    double worst = 1;
    for (int64_t p = 0; p < rows; p++) {
        int64_t n = 0, both = 0;
        for (int64_t i = 0; i < K && r[p * K + i] >= 0; i++, n++)
            for (int64_t j = 0; j < K; j++) both += a[p * K + j] == r[p * K + i];
        if (n) worst = fmin(worst, (double)both / (double)n);
    }
    return worst;
}

/* Exact numerics: each schedule's MTP rows within ENGINE_TOL and the sets identical (outside
 * near ties). Deployed numerics (FP8 weights, bf16 cache): the ref's deployed mode, held like
 * test_engine holds the target -- cos diff 1e-4, 90% top-k overlap. */
static void test_engine_vs_ref(const char *preset, uint64_t seed, bool deployed)
{
    char *dir = tu_make_model(preset, seed, deployed ? DSACP_WEIGHTS_FP8 : DSACP_WEIGHTS_F32);
    dsacp_model *m;
    REQUIRE_OK(dsacp_model_load(dir, &m));
    CHECKF(dsacp_model_has_mtp(m), "%s: init-model wrote no MTP layer", preset);
    const dsacp_config *cfg = dsacp_model_config(m);
    const int64_t V = cfg->vocab_size, K = cfg->index_topk, N = SEQ + CHAIN;
    int32_t ids[SEQ];
    tu_random_ids(ids, SEQ, V, seed + 100);
    ref_run rr;
    ref_run_sequence(m, deployed ? REF_DEPLOYED : REF_EXACT, deployed ? REF_KV_BF16 : REF_KV_F32, ids, &rr);
    float *lg = malloc((size_t)(N * V) * sizeof(float));
    int32_t *tk = malloc((size_t)(N * K) * sizeof(int32_t));
    REQUIRE_OK(lg && tk ? 0 : DSACP_ENOMEM);
    static const struct { int64_t block, tail; const char *name; } runs[] = {
        {4, 3, "prefill + 3-token verify entry"}, {16, 0, "prefill"}, {1, SEQ, "token by token"}};
    for (size_t k = 0; k < (deployed ? 1 : sizeof runs / sizeof runs[0]); k++) {
        dsacp_engine_options eo = {0};
        dsacp_engine_options_default(&eo);
        eo.numerics = deployed ? DSACP_NUMERICS_DEPLOYED : DSACP_NUMERICS_EXACT;
        eo.kv_dtype = deployed ? DSACP_KV_BF16 : DSACP_KV_F32;
        eo.block_size = runs[k].block;
        eo.num_blocks = 512;
        eo.mtp = true;
        int rc = engine_run(m, &eo, runs[k].tail, ids, &rr, lg, tk);
        CHECKF(rc == 0, "%s %s: %s", preset, runs[k].name, dsacp_last_error());
        if (rc) continue;
        const int64_t rows = rr.clean == SEQ ? N : rr.clean; /* the chain only without near ties */
        const double worst = tu_max_rel(lg, rr.lg, rows * V), cosd = tu_cos_diff(lg, rr.lg, rows * V);
        const double ov = min_overlap(tk, rr.tk, rows, K);
        int64_t bad = 0;
        for (int64_t p = 0; p < rows; p++) bad += memcmp(tk + p * K, rr.tk + p * K, (size_t)K * sizeof(int32_t)) != 0;
        printf("%s%s, %s (block %lld): %lld MTP rows vs the float64 reference, logits max rel %.3g, cos diff %.3g, "
               "top-k min overlap %.3f, sets differing %lld\n", preset, deployed ? " deployed/fp8 weights/bf16 cache" : "",
               runs[k].name, (long long)runs[k].block, (long long)rows, worst, cosd, ov, (long long)bad);
        if (deployed) {
            CHECKF(cosd <= 1e-4, "%s deployed: cos diff %.3g", preset, cosd);
            CHECKF(ov >= 0.9, "%s deployed: top-k overlap %.3f", preset, ov);
        } else {
            CHECKF(worst <= ENGINE_TOL, "%s %s: MTP logits max rel %.3g > %g", preset, runs[k].name, worst, ENGINE_TOL);
            CHECK(bad == 0);
        }
        CHECK(rows > cfg->index_topk);
    }
    free(lg), free(tk), free(rr.hid), free(rr.out), free(rr.lg), free(rr.tk);
    dsacp_model_free(m);
    tu_rmtree(dir);
    free(dir);
}

int main(void)
{
    test_ref_vs_hf();
    test_engine_vs_ref("tiny", 31, false);
    test_engine_vs_ref("tiny-moe", 32, false);
    test_engine_vs_ref("tiny-moe", 33, true);
    return test_finish("test_ref_mtp");
}
