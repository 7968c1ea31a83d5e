/*
 * test_cp_lean.c -- the lean strategy (docs/context-parallel.md section 3.5): its verdict against
 * brute force, long contexts with truncated lists and fallbacks, deployed numerics, and a model
 * whose index scores all tie.
 */
#include "test_cp_util.h"


/* ---- lean: the verdict against brute force, long contexts, forced fallbacks ---- */

static uint64_t rng_next(uint64_t *x)
{
    *x ^= *x << 13, *x ^= *x >> 7, *x ^= *x << 17;
    return *x;
}

/* Random score sets (few distinct values: many ties; or all winners on one rank; or continuous),
 * positions dealt to ranks by the ownership rule: whenever dsacp_cp_lean_decide decides, the
 * union of every rank's dsacp_cp_lean_own must be exactly the global top-k (score descending,
 * lower position first). Every verdict kind must occur. */
static void test_lean_decide(void)
{
    uint64_t x = 0x9E3779B97F4A7C15ull;
    int64_t decided = 0, thr = 0, ties = 0;
    for (int it = 0; it < 6000; it++) {
        const int64_t W = 1 + (int64_t)(rng_next(&x) % 5), K = 1 + (int64_t)(rng_next(&x) % 12);
        const int64_t n = 1 + (int64_t)(rng_next(&x) % 60), I = 1 + (int64_t)(rng_next(&x) % 4);
        const int kind = (int)(rng_next(&x) % 3);
        const double f = 1.0 + (double)(rng_next(&x) % 4) * 0.5;
        float sc[64];
        for (int64_t p = 0; p < n; p++) {
            if (kind == 0) sc[p] = (float)(rng_next(&x) % 4);                       /* heavy ties */
            else if (kind == 1) sc[p] = dsacp_cp_owner(p, I, W) == 0 ? 10.0f + (float)(rng_next(&x) % 100) : (float)(rng_next(&x) % 100) / 100.0f;
            else sc[p] = (float)(rng_next(&x) % 1000000) / 7.0f;
        }
        uint64_t all[64];
        for (int64_t p = 0; p < n; p++) all[p] = dsacp_cp_cand_key(sc[p], (int32_t)p);
        qsort(all, (size_t)n, sizeof *all, dsacp_cp_cmp_key_desc);
        const int64_t kk = n < K ? n : K;
        int32_t want[64];
        for (int64_t i = 0; i < kk; i++) want[i] = dsacp_cp_cand_pos(all[i]);
        qsort(want, (size_t)kk, 4, dsacp_cmp_i32);
        if (n <= K) continue; /* lean selects everything without an exchange */
        const int64_t kp = dsacp_cp_lean_kprime(K, W, f);
        uint64_t lists[5][64];
        int64_t cnt[5] = {0}, m[5];
        uint8_t trunc[5];
        uint32_t keys[5][64];
        const uint32_t *kq[5];
        for (int64_t p = 0; p < n; p++) {
            const int64_t q = dsacp_cp_owner(p, I, W);
            lists[q][cnt[q]++] = dsacp_cp_cand_key(sc[p], (int32_t)p);
        }
        for (int64_t q = 0; q < W; q++) {
            qsort(lists[q], (size_t)cnt[q], sizeof(uint64_t), dsacp_cp_cmp_key_desc);
            if (cnt[q] > K) cnt[q] = K; /* the local top-k */
            m[q] = cnt[q] < kp ? cnt[q] : kp;
            trunc[q] = dsacp_cp_local_len(n, q, I, W) > m[q];
            for (int64_t i = 0; i < m[q]; i++) keys[q][i] = (uint32_t)(lists[q][i] >> 32);
            kq[q] = keys[q];
        }
        int32_t got[64 * 5];
        int64_t ng = 0, verdict = -1;
        for (int64_t me = 0; me < W; me++) {
            uint32_t tau = 0;
            int64_t take = 0;
            const int v = dsacp_cp_lean_decide(W, kq, m, trunc, K, me, &tau, &take);
            CHECK(verdict < 0 || v == verdict); /* every rank reaches the same verdict */
            verdict = v;
            if (v == DSACP_LEAN_DECIDED) ng += dsacp_cp_lean_own(lists[me], cnt[me], tau, take, got + ng);
        }
        if (verdict == DSACP_LEAN_DECIDED) {
            decided++;
            qsort(got, (size_t)ng, 4, dsacp_cmp_i32);
            bool same = ng == kk;
            for (int64_t i = 0; same && i < kk; i++) same = got[i] == want[i];
            CHECKF(same, "lean verdict: W=%lld K=%lld n=%lld I=%lld kind %d f=%.1f: %lld selected, want %lld", (long long)W,
                   (long long)K, (long long)n, (long long)I, kind, f, (long long)ng, (long long)kk);
        } else {
            thr += verdict == DSACP_LEAN_THRESHOLD;
            ties += verdict == DSACP_LEAN_TIES;
        }
    }
    CHECKF(decided > 1000 && thr > 100 && ties > 100, "lean verdicts: decided %lld, threshold fallbacks %lld, tie "
           "fallbacks %lld (each kind must occur)", (long long)decided, (long long)thr, (long long)ties);
    if (g_rank == 0)
        printf("lean verdict vs brute force: %lld decided exactly, %lld threshold and %lld tie fallbacks\n",
               (long long)decided, (long long)thr, (long long)ties);
}

static void test_lean_long(const dsacp_model *m)
{
    dsacp_engine_options eo;
    dsacp_engine_options_default(&eo);
    eo.block_size = 16;
    eo.num_blocks = 64;
    dsacp_cp_options cp;
    dsacp_cp_options_default(&cp);
    cp.decode = DSACP_DECODE_LEAN;
    const double fs[3] = {1.0, 1.25, 2.0};
    int64_t fb = 0;
    for (int i = 0; i < 3; i++) {
        cp.lean_factor = fs[i];
        cp.lean_merge = i == 1 ? DSACP_LEAN_MERGE_VALUES : DSACP_LEAN_MERGE_OUTPUT;
        cp.prefill_split = i == 2 ? DSACP_PREFILL_ZIGZAG : DSACP_PREFILL_OWNER;
        char what[64];
        snprintf(what, sizeof what, "lean long f=%.2f %s", fs[i], dsacp_lean_merge_name(cp.lean_merge));
        const dsacp_cp_stats st = run_long(m, &eo, &cp, what, 1e-5, 1e-10);
        if (g_W > 1) CHECKF(st.lean_decisions > 0, "%s W=%d: no token went through the truncated lists", what, g_W);
        fb += st.lean_fallback_threshold;
    }
    /* k' = k / W at W = 3, 4: one rank's share of the winners often exceeds it */
    if (g_W > 2) CHECKF(fb > 0, "lean W=%d: f = 1 never fell back on the threshold", g_W);
}

static void test_lean_ties(const dsacp_model *ties)
{
    dsacp_engine_options eo;
    dsacp_engine_options_default(&eo);
    eo.block_size = 16;
    eo.num_blocks = 64;
    dsacp_cp_options cp;
    dsacp_cp_options_default(&cp);
    cp.decode = DSACP_DECODE_LEAN;
    /* Forced: every score ties at 0 and, with I = 2k, the k winners (the lowest positions) all
     * live on rank 0: every decision must fall back, and still select exactly. */
    cp.lean_factor = 1.0;
    cp.lean_merge = DSACP_LEAN_MERGE_OUTPUT;
    cp.prefill_split = DSACP_PREFILL_OWNER;
    cp.interleave = 2 * dsacp_model_config(ties)->index_topk;
    const dsacp_cp_stats st = run_long(ties, &eo, &cp, "lean ties, all winners on rank 0", 1e-5, 1e-10);
    if (g_W > 1)
        CHECKF(st.lean_decisions > 0 && st.lean_fallback_threshold + st.lean_fallback_ties == st.lean_decisions,
               "lean ties W=%d: %lld decisions, %lld + %lld fallbacks (all must fall back)", g_W,
               (long long)st.lean_decisions, (long long)st.lean_fallback_threshold, (long long)st.lean_fallback_ties);
}

/* The default lean (bf16 partials, o_proj before the merge) in deployed numerics, per layer: a
 * one-layer dense model, so that a decode token's logits see one merged attention output (its
 * cache entries come from the embeddings: no error carries over). Tolerance: FlashMLA's. */
static void test_lean_deployed(void)
{
    dsacp_config c;
    REQUIRE_OK(dsacp_preset_config("tiny", &c));
    c.num_hidden_layers = 1;
    char *dir = NULL;
    dsacp_model *m = shared_model_cfg(&dir, &c, 11, DSACP_WEIGHTS_FP8);
    dsacp_engine_options eo;
    dsacp_engine_options_default(&eo);
    eo.block_size = 16;
    eo.num_blocks = 64;
    eo.numerics = DSACP_NUMERICS_DEPLOYED;
    eo.kv_dtype = DSACP_KV_FP8;
    dsacp_cp_options cp;
    dsacp_cp_options_default(&cp);
    cp.decode = DSACP_DECODE_LEAN;
    run_long(m, &eo, &cp, "lean deployed 1 layer (bf16, output merge)", 0.1, 2e-3);
    cp.lean_merge = DSACP_LEAN_MERGE_VALUES;
    cp.partials = DSACP_PARTIALS_F32;
    run_long(m, &eo, &cp, "lean deployed 1 layer (fp32, values merge)", 0.1, 2e-3);
    drop_model(m, dir);
}

int main(int argc, char **argv)
{
    cp_test_begin(&argc, &argv);
    char *dir = NULL;
    dsacp_engine_options eo;
    dsacp_model *m = cp_test_tiny(&dir, &eo);
    test_lean_decide();
    test_lean_long(m);
    test_lean_deployed();
    drop_model(m, dir);

    /* every index score ties at 0: the lowest positions win, most ranks own none of them. */
    m = shared_model(&dir, "tiny", DSACP_WEIGHTS_F32, true);
    test_lean_ties(m);
    drop_model(m, dir);
    return cp_test_end("test_cp_lean");
}
