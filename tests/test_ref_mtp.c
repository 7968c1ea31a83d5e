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
#include "io/safetensors.h"
#include "ref/ref_model.h"
#include "ref/test_util.h"

#include <math.h>
#include <stdint.h>

#define HF_TOL 1e-4

typedef struct hf_data {
    dsacp_st_file *f;
    int64_t R, Lmax, V, K, D, NL;
    const int32_t *ids, *next, *chain_ids, *mtp_topk, *chain_topk, *topk[8];
    const float *mtp_logits, *mtp_hidden, *chain_logits, *logits;
    const uint8_t *mtp_tie, *chain_tie, *tie[8];
} hf_data;

static const void *need(dsacp_st_file *f, const char *name, int64_t numel)
{
    const dsacp_st_tensor *t = dsacp_st_find(f, name);
    REQUIRE_OK(t && t->numel == numel ? 0 : DSACP_EFORMAT);
    return t->data;
}

static void hf_open(const dsacp_config *cfg, const char *path, hf_data *h)
{
    REQUIRE_OK(dsacp_st_open(path, &h->f));
    const dsacp_st_tensor *ids = dsacp_st_find(h->f, "input_ids");
    REQUIRE_OK(ids && ids->ndim == 2 ? 0 : DSACP_EFORMAT);
    h->R = ids->shape[0], h->Lmax = ids->shape[1], h->V = cfg->vocab_size, h->K = cfg->index_topk;
    h->D = cfg->hidden_size, h->NL = cfg->num_hidden_layers;
    REQUIRE_OK(h->NL <= 8 ? 0 : DSACP_EFORMAT);
    const int64_t RL = h->R * h->Lmax;
    h->ids = ids->data;
    h->next = need(h->f, "next_ids", h->R);
    h->logits = need(h->f, "logits", RL * h->V);
    h->mtp_logits = need(h->f, "mtp.logits", RL * h->V);
    h->mtp_hidden = need(h->f, "mtp.hidden", RL * h->D);
    h->mtp_topk = need(h->f, "mtp.topk", RL * h->K);
    h->mtp_tie = need(h->f, "mtp.tie", RL);
    h->chain_ids = need(h->f, "chain.ids", h->R);
    h->chain_logits = need(h->f, "chain.logits", h->R * h->V);
    h->chain_topk = need(h->f, "chain.topk", h->R * h->K);
    h->chain_tie = need(h->f, "chain.tie", h->R);
    for (int64_t l = 0; l < h->NL; l++) {
        char n[32];
        snprintf(n, sizeof n, "topk.%lld", (long long)l);
        h->topk[l] = need(h->f, n, RL * h->K);
        snprintf(n, sizeof n, "tie.%lld", (long long)l);
        h->tie[l] = need(h->f, n, RL);
    }
}

static int64_t seq_len(const hf_data *h, int64_t r)
{
    int64_t n = 0;
    while (n < h->Lmax && h->ids[r * h->Lmax + n] >= 0) n++;
    return n;
}

/* The first row of sequence r a near tie (any target layer, or the MTP layer) may have changed. */
static int64_t first_affected(const hf_data *h, int64_t r, int64_t n)
{
    for (int64_t p = 0; p < n; p++) {
        bool t = h->mtp_tie[r * h->Lmax + p];
        for (int64_t l = 0; l < h->NL; l++) t = t || h->tie[l][r * h->Lmax + p];
        if (t) return p;
    }
    return n;
}

/* max |a - b| / max |b| over n values (double a, float b). */
static double rel_df(const double *a, const float *b, int64_t n)
{
    double md = 0, mr = 0;
    for (int64_t i = 0; i < n; i++) {
        md = fmax(md, fabs(a[i] - (double)b[i]));
        mr = fmax(mr, fabs((double)b[i]));
    }
    return mr > 0 ? md / mr : md;
}

/* Part 1: ref_mtp_forward against transformers. */
static void test_ref_vs_hf(void)
{
    char dir[4096], path[4200];
    snprintf(dir, sizeof dir, "%s/tests/data/hf_tiny_mtp", tu_source_dir());
    snprintf(path, sizeof path, "%s/expected.safetensors", dir);
    dsacp_model *m;
    REQUIRE_OK(dsacp_model_load(dir, &m));
    REQUIRE_OK(dsacp_model_has_mtp(m) ? 0 : DSACP_ENOTFOUND);
    hf_data h;
    hf_open(dsacp_model_config(m), path, &h);
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
        const int64_t n = seq_len(&h, r), fa = first_affected(&h, r, n);
        const int32_t *ids = h.ids + r * Lmax;
        CHECK_OK(ref_forward_ex(m, REF_EXACT, REF_KV_F32, ids, n, NULL, NULL, NULL, hid));
        memcpy(mids, ids + 1, (size_t)(n - 1) * sizeof(int32_t));
        mids[n - 1] = h.next[r];
        CHECK_OK(ref_mtp_forward(m, REF_EXACT, REF_KV_F32, mids, hid, n, out, lg, tk, NULL));
        worst = fmax(worst, rel_df(lg, h.mtp_logits + r * Lmax * V, fa * V));
        worst_out = fmax(worst_out, rel_df(out, h.mtp_hidden + r * Lmax * D, fa * D));
        for (int64_t p = 0; p < fa; p++)
            bad_sets += memcmp(tk + p * K, h.mtp_topk + (r * Lmax + p) * K, (size_t)K * sizeof(int32_t)) != 0;
        rows += fa;
        if (fa < n || h.chain_tie[r]) continue;
        /* the chained row at position n: token chain.ids, hidden = the MTP output of row n - 1 */
        memcpy(hid + n * D, out + (n - 1) * D, (size_t)D * sizeof(double));
        mids[n] = h.chain_ids[r];
        CHECK_OK(ref_mtp_forward(m, REF_EXACT, REF_KV_F32, mids, hid, n + 1, out, lg, tk, NULL));
        worst_chain = fmax(worst_chain, rel_df(lg + n * V, h.chain_logits + r * V, V));
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

int main(void)
{
    test_ref_vs_hf();
    return test_finish("test_ref_mtp");
}
