/*
 * test_engine.c -- the single-process engine against the float64 reference model, and its
 * invariances: schedules (single prefill / odd chunks / token by token, mixed with other
 * requests), block sizes, cache dtypes, numerics modes (deployed: bit for bit over schedules and
 * thread counts), capacity refusal; the step workspace
 * sized for max_num_batched_tokens (no step up to it grows it, a larger one is refused whole).
 */
#include "test.h"
#include "cache/kv_cache.h"
#include "engine/engine.h"
#include "engine/engine_internal.h" /* the step workspace's capacity */
#include "numerics/numerics.h"
#include "ref/ref_model.h"
#include "ref/test_util.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>

enum { MAXR = 4 };

typedef struct seqs {
    int64_t R;
    int64_t len[MAXR];
    int32_t *ids[MAXR];
} seqs;

typedef struct result {
    float *logits[MAXR];  /* [len][V] */
    int32_t *topk[MAXR];  /* [layers][len][K] */
} result;

static void result_free(result *r)
{
    for (int i = 0; i < MAXR; i++) {
        free(r->logits[i]);
        free(r->topk[i]);
    }
}

/* Runs the requests through one engine with sched[s][r] tokens of request r in step s
 * (S steps; entries ordered by request, optionally reversed to vary the flattening order). */
static int run(const dsacp_model *m, const dsacp_engine_options *eo, const seqs *q, const int32_t *sched,
               int64_t S, bool reverse, result *out)
{
    const dsacp_config *cfg = dsacp_model_config(m);
    const int64_t V = cfg->vocab_size, K = cfg->index_topk, NL = cfg->num_hidden_layers;
    dsacp_engine *e;
    int rc = dsacp_engine_create(m, eo, &e);
    if (rc) return rc;
    int64_t id[MAXR], fed[MAXR] = {0};
    for (int64_t r = 0; r < q->R; r++) {
        dsacp_engine_add_request(e, &id[r]);
        out->logits[r] = calloc((size_t)(q->len[r] * V), sizeof(float));
        out->topk[r] = calloc((size_t)(NL * q->len[r] * K), sizeof(int32_t));
    }
    for (int64_t s = 0; s < S && !rc; s++) {
        dsacp_step_entry en[MAXR];
        int64_t n = 0, T = 0, order[MAXR];
        for (int64_t i = 0; i < q->R; i++) {
            int64_t r = reverse ? q->R - 1 - i : i;
            int32_t c = sched[s * q->R + r];
            if (!c) continue;
            order[n] = r;
            en[n++] = (dsacp_step_entry){id[r], c, q->ids[r] + fed[r]};
            T += c;
        }
        if (!n) continue;
        float *lg = malloc((size_t)(T * V) * sizeof(float));
        int32_t *tk = malloc((size_t)(NL * T * K) * sizeof(int32_t));
        rc = dsacp_engine_step(e, en, n, lg, tk);
        int64_t t = 0;
        for (int64_t i = 0; i < n && !rc; i++) {
            int64_t r = order[i];
            for (int64_t j = 0; j < en[i].n_tokens; j++, t++) {
                int64_t p = fed[r] + j;
                memcpy(out->logits[r] + p * V, lg + t * V, (size_t)V * sizeof(float));
                for (int64_t l = 0; l < NL; l++)
                    memcpy(out->topk[r] + (l * q->len[r] + p) * K, tk + (l * T + t) * K, (size_t)K * sizeof(int32_t));
            }
            fed[r] += en[i].n_tokens;
        }
        free(lg);
        free(tk);
    }
    dsacp_engine_free(e);
    return rc;
}

/* One-step prefill of every request. */
static int32_t *sched_prefill(const seqs *q, int64_t *S)
{
    int32_t *s = calloc((size_t)q->R, sizeof *s);
    for (int64_t r = 0; r < q->R; r++) s[r] = (int32_t)q->len[r];
    *S = 1;
    return s;
}

/* Request r fed in chunks cycling through `chunks` (0 = one token at a time), starting at step
 * start[r]. */
static int32_t *sched_chunks(const seqs *q, const int *const *chunks, const int *nchunks, const int *start,
                             int64_t *S)
{
    int64_t cap = 4096;
    int32_t *s = calloc((size_t)(cap * q->R), sizeof *s);
    int64_t fed[MAXR] = {0}, st = 0;
    bool more = true;
    while (more && st < cap) {
        more = false;
        for (int64_t r = 0; r < q->R; r++) {
            if (st >= start[r] && fed[r] < q->len[r]) {
                int64_t k = (st - start[r]) % nchunks[r];
                int64_t c = chunks[r][k];
                if (c > q->len[r] - fed[r]) c = q->len[r] - fed[r];
                s[st * q->R + r] = (int32_t)c;
                fed[r] += c;
            }
            if (fed[r] < q->len[r]) more = true;
        }
        st++;
    }
    *S = st;
    return s;
}

static void make_seqs(seqs *q, int64_t R, const int64_t *len, int64_t vocab, uint64_t seed)
{
    q->R = R;
    for (int64_t r = 0; r < R; r++) {
        q->len[r] = len[r];
        q->ids[r] = malloc((size_t)len[r] * sizeof(int32_t));
        tu_random_ids(q->ids[r], len[r], vocab, seed + (uint64_t)r);
    }
}

static void free_seqs(seqs *q)
{
    for (int64_t r = 0; r < q->R; r++) free(q->ids[r]);
}

/* Compares the engine with the float64 reference for every request. Returns the worst max-rel
 * logits error; counts top-k mismatches outside near-ties (gap < tie_tol) into *bad_sets. */
static double compare_ref(const dsacp_model *m, const seqs *q, const result *res, ref_numerics mode, ref_kv kv,
                          double tie_tol, int64_t *bad_sets, int64_t *near_ties, double *cos_worst,
                          double *overlap_min)
{
    const dsacp_config *cfg = dsacp_model_config(m);
    const int64_t V = cfg->vocab_size, K = cfg->index_topk, NL = cfg->num_hidden_layers;
    double worst = 0;
    *bad_sets = 0;
    *near_ties = 0;
    *cos_worst = 0;
    *overlap_min = 1.0;
    for (int64_t r = 0; r < q->R; r++) {
        int64_t n = q->len[r];
        double *lg = malloc((size_t)(n * V) * sizeof(double));
        int32_t *tk = malloc((size_t)(NL * n * K) * sizeof(int32_t));
        double *gap = malloc((size_t)(NL * n) * sizeof(double));
        int rc = ref_forward(m, mode, kv, q->ids[r], n, lg, tk, gap);
        CHECKF(rc == 0, "ref_forward: %s", dsacp_last_error());
        if (!rc) {
            double e = tu_max_rel(res->logits[r], lg, n * V);
            if (e > worst) worst = e;
            double c = tu_cos_diff(res->logits[r], lg, n * V);
            if (c > *cos_worst) *cos_worst = c;
            for (int64_t l = 0; l < NL; l++)
                for (int64_t p = 0; p < n; p++) {
                    const int32_t *a = res->topk[r] + (l * n + p) * K, *b = tk + (l * n + p) * K;
                    int64_t common = 0, valid = 0;
                    for (int64_t i = 0; i < K; i++) {
                        if (b[i] < 0) continue;
                        valid++;
                        for (int64_t j = 0; j < K; j++)
                            if (a[j] == b[i]) {
                                common++;
                                break;
                            }
                    }
                    double ov = valid ? (double)common / (double)valid : 1.0;
                    if (ov < *overlap_min) *overlap_min = ov;
                    if (memcmp(a, b, (size_t)K * sizeof(int32_t)) != 0) {
                        if (gap[l * n + p] < tie_tol) (*near_ties)++;
                        else (*bad_sets)++;
                    }
                }
        }
        free(lg);
        free(tk);
        free(gap);
    }
    return worst;
}

static bool results_equal_topk(const dsacp_config *cfg, const seqs *q, const result *a, const result *b)
{
    for (int64_t r = 0; r < q->R; r++)
        if (memcmp(a->topk[r], b->topk[r], (size_t)(cfg->num_hidden_layers * q->len[r] * cfg->index_topk) * sizeof(int32_t)))
            return false;
    return true;
}

static double results_max_rel(const dsacp_config *cfg, const seqs *q, const result *a, const result *b,
                              bool *bitwise)
{
    double worst = 0;
    *bitwise = true;
    for (int64_t r = 0; r < q->R; r++) {
        int64_t n = q->len[r] * cfg->vocab_size;
        double e = tu_max_rel_ff(a->logits[r], b->logits[r], n);
        if (e > worst) worst = e;
        if (memcmp(a->logits[r], b->logits[r], (size_t)n * sizeof(float))) *bitwise = false;
    }
    return worst;
}

/* A model of `preset` written under a fresh directory (*dir) and loaded. */
static dsacp_model *preset_model(const char *preset, uint64_t seed, dsacp_weight_format fmt, char **dir)
{
    *dir = tu_make_model(preset, seed, fmt);
    dsacp_model *m;
    REQUIRE_OK(dsacp_model_load(*dir, &m));
    return m;
}

/* Frees the model and removes its directory. */
static void model_done(dsacp_model *m, char *dir)
{
    dsacp_model_free(m);
    tu_rmtree(dir);
    free(dir);
}

/* Schedules against the single-prefill result `base`: odd chunks, token by token, mixed with the
 * others, different start steps and flattening orders. Identical top-k sets always; logits within
 * 1e-5, or bit for bit when `bitwise`. */
static void check_schedules(const char *name, const dsacp_model *m, const dsacp_engine_options *eo, const seqs *q,
                            const result *base, bool bitwise_required)
{
    const dsacp_config *cfg = dsacp_model_config(m);
    int64_t S;
    static const int c_odd[] = {7, 13, 29, 1, 3};
    static const int c_one[] = {1};
    static const int c_mix[] = {17, 1, 1, 5};
    const int *chunks_a[3] = {c_odd, c_one, c_mix};
    const int nchunks_a[3] = {5, 1, 4};
    const int start_a[3] = {0, 2, 5};
    const int *chunks_b[3] = {c_one, c_mix, c_odd};
    const int nchunks_b[3] = {1, 4, 5};
    const int start_b[3] = {3, 0, 1};
    struct {
        const int *const *c;
        const int *n, *s;
        bool reverse;
        const char *name;
    } scheds[2] = {{chunks_a, nchunks_a, start_a, false, "odd chunks / token-by-token / mixed"},
                   {chunks_b, nchunks_b, start_b, true, "token-by-token / mixed / odd chunks, reversed order"}};
    for (int k = 0; k < 2; k++) {
        int32_t *sk = sched_chunks(q, scheds[k].c, scheds[k].n, scheds[k].s, &S);
        result rk = {0};
        CHECK_OK(run(m, eo, q, sk, S, scheds[k].reverse, &rk));
        bool bitwise;
        double e = results_max_rel(cfg, q, &rk, base, &bitwise);
        bool same = results_equal_topk(cfg, q, &rk, base);
        printf("%s schedule '%s' (%lld steps): logits max rel %.3g vs single prefill%s, top-k %s\n", name,
               scheds[k].name, (long long)S, e, bitwise ? " (bitwise identical)" : "", same ? "identical" : "DIFFER");
        CHECKF(e <= 1e-5, "schedule invariance: %.3g", e);
        if (bitwise_required) CHECKF(bitwise, "%s: schedule '%s' not bit for bit", name, scheds[k].name);
        CHECK(same);
        result_free(&rk);
        free(sk);
    }
}

/* Exact mode against the reference, then every schedule / block size against the first run. */
static void test_exact(const char *preset, uint64_t seed)
{
    char *dir;
    dsacp_model *m = preset_model(preset, seed, DSACP_WEIGHTS_F32, &dir);
    const dsacp_config *cfg = dsacp_model_config(m);
    seqs q;
    int64_t len[3] = {131, 97, 40}; /* several times index_topk (32) */
    make_seqs(&q, 3, len, cfg->vocab_size, seed * 10);

    dsacp_engine_options eo;
    dsacp_engine_options_default(&eo);
    eo.block_size = 16;
    eo.num_blocks = 64;
    int64_t S;
    int32_t *s0 = sched_prefill(&q, &S);
    result base = {0};
    CHECK_OK(run(m, &eo, &q, s0, S, false, &base));
    int64_t bad, ties;
    double cosd, ov;
    double err = compare_ref(m, &q, &base, REF_EXACT, REF_KV_F32, 1e-5, &bad, &ties, &cosd, &ov);
    printf("%s exact/f32 vs float64 reference: logits max rel %.3g, cos diff %.3g, top-k sets differing %lld "
           "(+%lld at near-ties)\n", preset, err, cosd, (long long)bad, (long long)ties);
    CHECKF(bad == 0, "%lld top-k sets differ from the reference away from ties", (long long)bad);
    if (ties == 0) CHECKF(err <= 1e-5, "%s: logits max rel error %.3g > 1e-5", preset, err);

    check_schedules(preset, m, &eo, &q, &base, false);
    /* Block sizes. */
    int64_t bs[3] = {1, 16, 64};
    for (int k = 0; k < 3; k++) {
        dsacp_engine_options e2 = eo;
        e2.block_size = bs[k];
        e2.num_blocks = 400 / bs[k] + 8;
        result rk = {0};
        CHECK_OK(run(m, &e2, &q, s0, 1, false, &rk));
        bool bitwise;
        double e = results_max_rel(cfg, &q, &rk, &base, &bitwise);
        bool same = results_equal_topk(cfg, &q, &rk, &base);
        printf("%s block size %lld: logits max rel %.3g%s, top-k %s\n", preset, (long long)bs[k], e,
               bitwise ? " (bitwise identical)" : "", same ? "identical" : "DIFFER");
        CHECKF(e <= 1e-5, "block size %lld: %.3g", (long long)bs[k], e);
        CHECK(same);
        result_free(&rk);
    }
    result_free(&base);
    free(s0);
    free_seqs(&q);
    model_done(m, dir);
}

/* Cache dtypes and the deployed mode against the reference computing the same roundings:
 * statistical tolerances (docs/dsa-math.md section 8), since a float32 value and a float64 value
 * can round to neighbouring bf16/e4m3 codes. */
static void test_quantized_cfg(const char *preset, const dsacp_config *model_cfg, uint64_t seed,
                               dsacp_weight_format fmt)
{
    char *dir = tu_make_model_cfg(model_cfg, seed, fmt);
    dsacp_model *m;
    REQUIRE_OK(dsacp_model_load(dir, &m));
    const dsacp_config *cfg = dsacp_model_config(m);
    seqs q;
    int64_t len[2] = {120, 77};
    make_seqs(&q, 2, len, cfg->vocab_size, seed * 10 + 1);
    struct {
        dsacp_numerics mode;
        dsacp_kv_dtype kv;
        ref_numerics rmode;
        ref_kv rkv;
        const char *name;
    } cases[4] = {{DSACP_NUMERICS_EXACT, DSACP_KV_BF16, REF_EXACT, REF_KV_BF16, "exact/bf16"},
                  {DSACP_NUMERICS_DEPLOYED, DSACP_KV_F32, REF_DEPLOYED, REF_KV_F32, "deployed/f32"},
                  {DSACP_NUMERICS_DEPLOYED, DSACP_KV_BF16, REF_DEPLOYED, REF_KV_BF16, "deployed/bf16"},
                  {DSACP_NUMERICS_DEPLOYED, DSACP_KV_FP8, REF_DEPLOYED, REF_KV_FP8, "deployed/fp8"}};
    for (int k = 0; k < 4; k++) {
        dsacp_engine_options eo;
        dsacp_engine_options_default(&eo);
        eo.numerics = cases[k].mode;
        eo.kv_dtype = cases[k].kv;
        eo.block_size = 16;
        eo.num_blocks = 32;
        int64_t S;
        int32_t *s0 = sched_prefill(&q, &S);
        result res = {0};
        CHECK_OK(run(m, &eo, &q, s0, S, false, &res));
        int64_t bad, ties;
        double cosd, ov;
        double err = compare_ref(m, &q, &res, cases[k].rmode, cases[k].rkv, 1e-5, &bad, &ties, &cosd, &ov);
        printf("%s (%s weights) %s vs float64 reference: logits max rel %.3g, cos diff %.3g, top-k min overlap "
               "%.3f, sets differing %lld (+%lld near ties)\n", preset,
               fmt == DSACP_WEIGHTS_FP8 ? "fp8" : "f32", cases[k].name, err, cosd, ov, (long long)bad,
               (long long)ties);
        /* Thresholds: FlashMLA's global difference (5e-6) is for one kernel; through a whole model
         * with requantized caches we hold 1e-4 on the logits and 90% top-k overlap. */
        CHECKF(cosd <= 1e-4, "%s: cos diff %.3g", cases[k].name, cosd);
        CHECKF(ov >= 0.9, "%s: top-k overlap %.3f", cases[k].name, ov);
        result_free(&res);
        free(s0);
    }
    free_seqs(&q);
    model_done(m, dir);
}

static void test_quantized(const char *preset, uint64_t seed, dsacp_weight_format fmt)
{
    dsacp_config cfg;
    REQUIRE_OK(dsacp_preset_config(preset, &cfg));
    test_quantized_cfg(preset, &cfg, seed, fmt);
}

/* V3.2's head dimensions (nope = v = 128) with a small model around them: the FP8 kv_b_proj then
 * splits into whole 128x128 blocks per head and the absorbed W_UK/W_UV products take their FP8
 * path, which the other presets never reach. */
static void test_v32_heads(void)
{
    dsacp_config cfg;
    REQUIRE_OK(dsacp_preset_config("tiny", &cfg));
    cfg.num_attention_heads = 2;
    cfg.qk_nope_head_dim = 128;
    cfg.v_head_dim = 128;
    test_quantized_cfg("tiny/v32-heads", &cfg, 13, DSACP_WEIGHTS_FP8);
}

/* Deployed mode (the bf16-dot chain: BF16 / FP8 linears, bf16 sparse MLA; docs/numerics.md) is
 * bit for bit the same whatever the schedule (one token or many per linear call) and the thread
 * count: BF16 weights with a bf16 cache, FP8 weights with the fp8_ds_mla cache. */
static void test_deployed_invariance(const char *preset, uint64_t seed, dsacp_weight_format fmt, dsacp_kv_dtype kv)
{
    char *dir;
    dsacp_model *m = preset_model(preset, seed, fmt, &dir);
    const dsacp_config *cfg = dsacp_model_config(m);
    seqs q;
    int64_t len[3] = {131, 97, 40};
    make_seqs(&q, 3, len, cfg->vocab_size, seed * 10);
    dsacp_engine_options eo;
    dsacp_engine_options_default(&eo);
    eo.numerics = DSACP_NUMERICS_DEPLOYED;
    eo.kv_dtype = kv;
    eo.block_size = 16;
    eo.num_blocks = 64;
    int64_t S;
    int32_t *s0 = sched_prefill(&q, &S);
    result base = {0};
    CHECK_OK(run(m, &eo, &q, s0, S, false, &base));
    char name[96];
    snprintf(name, sizeof name, "%s deployed (%s weights, %s cache)", preset,
             fmt == DSACP_WEIGHTS_FP8 ? "fp8" : "bf16", kv == DSACP_KV_FP8 ? "fp8" : "bf16");
    check_schedules(name, m, &eo, &q, &base, true);
    const int max_threads = omp_get_max_threads();
    const int threads[2] = {1, 3};
    for (int k = 0; k < 2; k++) {
        omp_set_num_threads(threads[k]);
        result rk = {0};
        CHECK_OK(run(m, &eo, &q, s0, S, false, &rk));
        bool bitwise;
        double e = results_max_rel(cfg, &q, &rk, &base, &bitwise);
        printf("%s, %d thread(s): logits max rel %.3g%s\n", name, threads[k], e, bitwise ? " (bitwise identical)" : "");
        CHECKF(bitwise, "%s: %d thread(s) not bit for bit", name, threads[k]);
        CHECK(results_equal_topk(cfg, &q, &rk, &base));
        result_free(&rk);
    }
    omp_set_num_threads(max_threads);
    result_free(&base);
    free(s0);
    free_seqs(&q);
    model_done(m, dir);
}

/* The fp8_ds_mla cache holds exactly what the numerics module produces for its rows.
 * Layer 0 sees the same input whatever the latent cache dtype (f32 weights: no activation
 * quantization), so the rows an f32-cache run stores, quantized by dsacp_quant_e4m3_groups,
 * must equal the fp8 run's bytes. Every layer's entries must also be self-consistent:
 * power-of-two scales, and each code re-encodes to itself under its stored scale. */
static int64_t fp8_run(const dsacp_model *m, dsacp_kv_dtype kv, const int32_t *ids, int64_t n, dsacp_engine **out,
                       int64_t *id)
{
    dsacp_engine_options eo;
    dsacp_engine_options_default(&eo);
    eo.numerics = DSACP_NUMERICS_DEPLOYED;
    eo.kv_dtype = kv;
    eo.block_size = 16;
    eo.num_blocks = 16;
    REQUIRE_OK(dsacp_engine_create(m, &eo, out));
    REQUIRE_OK(dsacp_engine_add_request(*out, id));
    dsacp_step_entry en = {*id, n, ids};
    REQUIRE_OK(dsacp_engine_step(*out, &en, 1, NULL, NULL));
    return n;
}

static bool pow2(float s)
{
    int e;
    return s > 0 && frexpf(s, &e) == 0.5f;
}

static void test_fp8_cache_bytes(void)
{
    char *dir;
    dsacp_model *m = preset_model("tiny", 5, DSACP_WEIGHTS_F32, &dir);
    const dsacp_config *cfg = dsacp_model_config(m);
    int32_t ids[70];
    tu_random_ids(ids, 70, cfg->vocab_size, 77);
    dsacp_engine *e8, *e32;
    int64_t id8, id32;
    fp8_run(m, DSACP_KV_FP8, ids, 70, &e8, &id8);
    fp8_run(m, DSACP_KV_F32, ids, 70, &e32, &id32);
    dsacp_kv_cache *c8 = dsacp_engine_cache(e8), *c32 = dsacp_engine_cache(e32);
    const dsacp_kv_seq *s8 = dsacp_engine_request_seq(e8, id8), *s32 = dsacp_engine_request_seq(e32, id32);
    const int64_t dc = c8->dc, dr = c8->dr, di = c8->di, ng = dc / 128;
    CHECK(c8->mla_bytes == dc + 4 * ng + 2 * dr);
    int64_t exact_mismatch = 0, inconsistent = 0;
    for (int64_t p = 0; p < 70; p++) {
        float row[1024];
        uint8_t want[1024];
        float sc[8];
        dsacp_kv_read_mla(c32, 0, dsacp_kv_slot(c32, s32, p), row);
        dsacp_quant_e4m3_groups(row, dc, 128, want, sc);
        memcpy(want + dc, sc, (size_t)ng * sizeof(float));
        for (int64_t i = 0; i < dr; i++) {
            uint16_t b = dsacp_f32_to_bf16(row[dc + i]);
            memcpy(want + dc + ng * (int64_t)sizeof(float) + 2 * i, &b, sizeof b);
        }
        if (memcmp(want, dsacp_kv_mla_entry(c8, 0, dsacp_kv_slot(c8, s8, p)), (size_t)c8->mla_bytes)) exact_mismatch++;
        for (int64_t l = 0; l < cfg->num_hidden_layers; l++) {
            const uint8_t *entry = dsacp_kv_mla_entry(c8, l, dsacp_kv_slot(c8, s8, p));
            memcpy(sc, entry + dc, (size_t)ng * sizeof(float));
            for (int64_t g = 0; g < ng; g++) {
                if (!pow2(sc[g])) inconsistent++;
                for (int64_t i = g * 128; i < (g + 1) * 128; i++)
                    if (dsacp_f32_to_e4m3(dsacp_e4m3_to_f32(entry[i])) != entry[i]) inconsistent++;
            }
            const float *scales;
            const uint8_t *keys = dsacp_kv_index_block(c8, l, s8->blocks[p / 16], &scales);
            float ks = scales[p % 16], k[1024];
            if (!pow2(ks)) inconsistent++;
            for (int64_t i = 0; i < di; i++) k[i] = dsacp_e4m3_to_f32(keys[(p % 16) * di + i]) * ks;
            for (int64_t i = 0; i < di; i++)
                if (dsacp_f32_to_e4m3(k[i] / ks) != keys[(p % 16) * di + i]) inconsistent++;
            /* The indexer cache is fp8 in both runs: identical bytes. */
            const float *scales32;
            const uint8_t *keys32 = dsacp_kv_index_block(c32, l, s32->blocks[p / 16], &scales32);
            if (l == 0 && (memcmp(keys + (p % 16) * di, keys32 + (p % 16) * di, (size_t)di) || scales32[p % 16] != ks))
                exact_mismatch++;
        }
    }
    printf("fp8 caches: layer-0 latent rows and indexer keys equal the numerics module's encoding of the same rows "
           "(%lld mismatches of 140); %lld inconsistent codes or scales over all layers\n",
           (long long)exact_mismatch, (long long)inconsistent);
    CHECK(exact_mismatch == 0);
    CHECK(inconsistent == 0);
    dsacp_engine_free(e8);
    dsacp_engine_free(e32);
    model_done(m, dir);
}

/* A step that needs more blocks than are free is refused whole, changing nothing. */
static void test_capacity(void)
{
    char *dir;
    dsacp_model *m = preset_model("tiny", 9, DSACP_WEIGHTS_F32, &dir);
    const dsacp_config *cfg = dsacp_model_config(m);
    const int64_t V = cfg->vocab_size;
    dsacp_engine_options eo;
    dsacp_engine_options_default(&eo);
    eo.block_size = 16;
    eo.num_blocks = 4; /* 64 tokens */
    dsacp_engine *e;
    REQUIRE_OK(dsacp_engine_create(m, &eo, &e));
    int32_t ids[80];
    tu_random_ids(ids, 80, V, 3);
    int64_t a, b;
    REQUIRE_OK(dsacp_engine_add_request(e, &a));
    REQUIRE_OK(dsacp_engine_add_request(e, &b));
    float *lg = malloc((size_t)(80 * V) * sizeof(float));
    dsacp_step_entry s1 = {a, 50, ids};
    CHECK_OK(dsacp_engine_step(e, &s1, 1, lg, NULL));
    /* A +10 fits its 4 blocks; B needs a fifth: the whole step is refused. */
    dsacp_step_entry s2[2] = {{a, 10, ids + 50}, {b, 10, ids}};
    int rc = dsacp_engine_step(e, s2, 2, lg, NULL);
    CHECKF(rc == DSACP_ECAPACITY, "expected DSACP_ECAPACITY, got %s", dsacp_status_name(rc));
    printf("capacity refusal: %s\n", dsacp_last_error());
    CHECK(dsacp_engine_request_length(e, a) == 50);
    CHECK(dsacp_engine_request_length(e, b) == 0);
    /* A continues unaffected: same logits as an engine that never saw the refused step. */
    dsacp_step_entry s3 = {a, 10, ids + 50};
    CHECK_OK(dsacp_engine_step(e, &s3, 1, lg, NULL));
    dsacp_engine *f;
    REQUIRE_OK(dsacp_engine_create(m, &eo, &f));
    int64_t a2;
    REQUIRE_OK(dsacp_engine_add_request(f, &a2));
    float *lf = malloc((size_t)(80 * V) * sizeof(float));
    dsacp_step_entry t1 = {a2, 50, ids}, t2 = {a2, 10, ids + 50};
    CHECK_OK(dsacp_engine_step(f, &t1, 1, lf, NULL));
    CHECK_OK(dsacp_engine_step(f, &t2, 1, lf, NULL));
    CHECK(memcmp(lg, lf, (size_t)(10 * V) * sizeof(float)) == 0);
    /* Ending A frees its blocks for B. */
    CHECK_OK(dsacp_engine_end_request(e, a));
    dsacp_step_entry s4 = {b, 64, ids};
    CHECK_OK(dsacp_engine_step(e, &s4, 1, lg, NULL));
    /* Bad steps are rejected before anything runs. */
    int32_t bad_id = (int32_t)V;
    dsacp_step_entry s5 = {b, 1, &bad_id};
    CHECK(dsacp_engine_step(e, &s5, 1, lg, NULL) == DSACP_ERANGE);
    dsacp_step_entry s6 = {a, 1, ids};
    CHECK(dsacp_engine_step(e, &s6, 1, lg, NULL) == DSACP_EINVAL);
    dsacp_step_entry s7[2] = {{b, 1, ids}, {b, 1, ids}};
    CHECK(dsacp_engine_step(e, s7, 2, lg, NULL) == DSACP_EINVAL);
    CHECK(dsacp_engine_request_length(e, b) == 64);
    free(lg);
    free(lf);
    dsacp_engine_free(e);
    dsacp_engine_free(f);
    model_done(m, dir);
}

/* dsacp_engine_step_last: each entry's last-token logits equal the matching rows of the full
 * step's, bit for bit, on a mixed step (two prefill chunks and a decode token), deployed fp8. */
static void test_step_last(void)
{
    char *dir;
    dsacp_model *m = preset_model("tiny-moe", 6, DSACP_WEIGHTS_FP8, &dir);
    const int64_t V = dsacp_model_config(m)->vocab_size;
    dsacp_engine_options eo;
    dsacp_engine_options_default(&eo);
    eo.numerics = DSACP_NUMERICS_DEPLOYED;
    eo.kv_dtype = DSACP_KV_FP8;
    eo.block_size = 16;
    eo.num_blocks = 32;
    int32_t ids[64];
    tu_random_ids(ids, 64, V, 9);
    float *full = malloc((size_t)(64 * V) * sizeof(float)), *last = malloc((size_t)(3 * V) * sizeof(float));
    dsacp_engine *e[2];
    int64_t r[2][3];
    for (int k = 0; k < 2; k++) {
        REQUIRE_OK(dsacp_engine_create(m, &eo, &e[k]));
        for (int i = 0; i < 3; i++) REQUIRE_OK(dsacp_engine_add_request(e[k], &r[k][i]));
        dsacp_step_entry first = {r[k][2], 9, ids + 40}; /* request 2 has a past: its next step decodes */
        CHECK_OK(dsacp_engine_step(e[k], &first, 1, NULL, NULL));
        dsacp_step_entry st[3] = {{r[k][0], 23, ids}, {r[k][1], 17, ids + 23}, {r[k][2], 1, ids + 49}};
        if (k == 0) CHECK_OK(dsacp_engine_step(e[k], st, 3, full, NULL));
        else CHECK_OK(dsacp_engine_step_last(e[k], st, 3, last, NULL));
    }
    const int64_t rows[3] = {22, 39, 40};
    for (int i = 0; i < 3; i++)
        CHECKF(memcmp(full + rows[i] * V, last + i * V, (size_t)V * sizeof(float)) == 0,
               "step_last entry %d differs from row %lld of the full step", i, (long long)rows[i]);
    for (int k = 0; k < 2; k++) dsacp_engine_free(e[k]);
    free(full);
    free(last);
    model_done(m, dir);
}

/* dsacp_engine_set_max_num_batched_tokens: the workspace is sized once; steps up to the limit
 * (prefill and decode) never grow it, a larger step is refused whole naming the parameter and
 * changes nothing; 0 lifts the limit. */
static void test_max_num_batched_tokens(void)
{
    char *dir;
    dsacp_model *m = preset_model("tiny-moe", 8, DSACP_WEIGHTS_F32, &dir);
    const int64_t V = dsacp_model_config(m)->vocab_size;
    dsacp_engine *e;
    REQUIRE_OK(dsacp_engine_create(m, NULL, &e));
    CHECK(dsacp_engine_set_max_num_batched_tokens(e, -1) == DSACP_EINVAL);
    REQUIRE_OK(dsacp_engine_set_max_num_batched_tokens(e, 8));
    const size_t cap = e->ws.cap;
    int32_t ids[16];
    tu_random_ids(ids, 16, V, 5);
    int64_t a, b;
    REQUIRE_OK(dsacp_engine_add_request(e, &a));
    REQUIRE_OK(dsacp_engine_add_request(e, &b));
    float *lg = malloc((size_t)(16 * V) * sizeof(float));
    dsacp_step_entry s1[2] = {{a, 5, ids}, {b, 3, ids + 5}};
    CHECK_OK(dsacp_engine_step(e, s1, 2, lg, NULL));
    dsacp_step_entry s2[2] = {{a, 1, ids + 8}, {b, 1, ids + 9}};
    CHECK_OK(dsacp_engine_step_last(e, s2, 2, lg, NULL));
    CHECK(e->ws.cap == cap);
    dsacp_step_entry s3 = {a, 9, ids};
    CHECK(dsacp_engine_step(e, &s3, 1, lg, NULL) == DSACP_EINVAL);
    CHECKF(strstr(dsacp_last_error(), "max_num_batched_tokens 8") != NULL, "%s", dsacp_last_error());
    CHECK(dsacp_engine_request_length(e, a) == 6 && e->ws.cap == cap);
    CHECK_OK(dsacp_engine_set_max_num_batched_tokens(e, 0));
    CHECK_OK(dsacp_engine_step(e, &s3, 1, lg, NULL));
    CHECK(dsacp_engine_request_length(e, a) == 15 && e->ws.cap > cap);
    free(lg);
    dsacp_engine_free(e);
    model_done(m, dir);
}

int main(void)
{
    test_step_last();
    test_exact("tiny", 1);
    test_exact("tiny-moe", 2);
    test_quantized("tiny", 3, DSACP_WEIGHTS_F32);
    test_quantized("tiny-moe", 4, DSACP_WEIGHTS_FP8);
    test_v32_heads();
    test_deployed_invariance("tiny", 6, DSACP_WEIGHTS_BF16, DSACP_KV_BF16);
    test_deployed_invariance("tiny-moe", 7, DSACP_WEIGHTS_FP8, DSACP_KV_FP8);
    test_fp8_cache_bytes();
    test_capacity();
    test_max_num_batched_tokens();
    return test_finish("test_engine");
}
