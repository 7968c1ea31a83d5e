/*
 * test_kernels_simd.c -- every SIMD variant the CPU runs against its scalar twin on random
 * inputs of awkward sizes (tolerance: summation orders differ between ISAs), plus the
 * properties that must hold exactly within one ISA: deterministic results, batch invariance
 * (a row alone equals the row inside a batch; a key scored alone equals the key inside a
 * block; the multi-query indexer equals the single-query one), thread-count invariance, and
 * the radix top-k equal to the quickselect reference.
 */
#include "test.h"
#include "kernel_weights.h"
#include "cache/kv_cache.h"
#include "kernels/kernels.h"
#include "kernels/kernels_isa.h"
#include "numerics/numerics.h"

#include <math.h>
#include <omp.h>

static dsacp_rng rng;

static float frand(void) { return (float)(2 * dsacp_rng_uniform(&rng) - 1); }

static double rel_err(const float *a, const float *b, int64_t n)
{
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        num = fmax(num, fabs((double)a[i] - b[i]));
        den = fmax(den, fabs((double)b[i]));
    }
    return num / (den + 1e-30);
}

static void test_linear(dsacp_isa isa)
{
    static const int64_t shapes[][3] = {{1, 1, 1}, {5, 17, 3}, {37, 275, 5}, {64, 256, 1}, {33, 384, 7}, {130, 129, 4}, {19, 200, 2}, {7, 12, 6}, {3, 136, 9}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int64_t N = shapes[s][0], K = shapes[s][1], T = shapes[s][2];
        float *x = malloc((size_t)(T * K) * sizeof(float));
        float *y = malloc((size_t)(T * N) * sizeof(float)), *yr = malloc((size_t)(T * N) * sizeof(float)), *y1 = malloc((size_t)N * sizeof(float));
        kernel_weights kw;
        kernel_weights_make(&kw, N, K, 128, &rng);
        for (int64_t i = 0; i < T * K; i++) x[i] = frand();
        const dsacp_weight *ws = kw.w;
        for (int k = 0; k < 4; k++)
            for (int aq = 0; aq < 2; aq++) {
                CHECK_OK(dsacp_isa_set(DSACP_ISA_SCALAR));
                CHECK_OK(dsacp_linear(&ws[k], x, T, K, yr, N, aq));
                CHECK_OK(dsacp_isa_set(isa));
                CHECK_OK(dsacp_linear(&ws[k], x, T, K, y, N, aq));
                double e = rel_err(y, yr, T * N);
                CHECKF(e < 1e-5, "%s linear %s %lldx%lld T=%lld aq=%d: error %g", dsacp_isa_name(isa), ws[k].name,
                       (long long)N, (long long)K, (long long)T, aq, e);
                for (int64_t t = 0; t < T; t++) {
                    CHECK_OK(dsacp_linear(&ws[k], x + t * K, 1, K, y1, N, aq));
                    CHECKF(memcmp(y1, y + t * N, (size_t)N * sizeof(float)) == 0, "%s linear %s row %lld not batch-invariant",
                           dsacp_isa_name(isa), ws[k].name, (long long)t);
                }
            }
        free(x);
        free(y);
        free(yr);
        free(y1);
        kernel_weights_free(&kw);
    }
}

/* Issue 21: dsacp_linear_ws (the step path's form) gives dsacp_linear's bits on every path --
 * the row kernels, the blocked GEMM (T >= 8), the VBMI table decode, the scalar twin's row
 * buffers, act_quant -- from a workspace at any alignment, with fewer threads than it was sized
 * for, and refuses a short one. */
static void test_linear_ws(dsacp_isa isa)
{
    static const int64_t shapes[][3] = {{5, 17, 3}, {37, 256, 1}, {33, 384, 9}, {130, 128, 4}, {19, 200, 12}};
    CHECK_OK(dsacp_isa_set(isa));
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int64_t N = shapes[s][0], K = shapes[s][1], T = shapes[s][2];
        float *x = malloc(sizeof(float) * (size_t)(T * K));
        float *y = malloc(sizeof(float) * (size_t)(T * N)), *yw = malloc(sizeof(float) * (size_t)(T * N));
        kernel_weights kw;
        kernel_weights_make(&kw, N, K, 128, &rng);
        for (int64_t i = 0; i < T * K; i++) x[i] = frand();
        const dsacp_weight ws[3] = {kw.w[0], kw.w[1], kw.w[3]};
        for (int k = 0; k < 3; k++)
            for (int aq = 0; aq < 2; aq++) {
                const size_t need = dsacp_linear_ws_bytes(&ws[k], T, aq);
                unsigned char *buf = malloc(need + 8);
                CHECK_OK(dsacp_linear(&ws[k], x, T, K, y, N, aq));
                CHECK_OK(dsacp_linear_ws(&ws[k], x, T, K, yw, N, aq, buf + 4, need));
                bool same = memcmp(y, yw, sizeof(float) * (size_t)(T * N)) == 0;
                /* Sized for one thread, run with all of them: the extra threads sit out. */
                const int maxth = omp_get_max_threads();
                omp_set_num_threads(1);
                const size_t one = dsacp_linear_ws_bytes(&ws[k], T, aq);
                omp_set_num_threads(maxth);
                memset(yw, 0, sizeof(float) * (size_t)(T * N));
                CHECK_OK(dsacp_linear_ws(&ws[k], x, T, K, yw, N, aq, buf + 4, one));
                same &= memcmp(y, yw, sizeof(float) * (size_t)(T * N)) == 0;
                CHECKF(same, "%s linear_ws %s %lldx%lld T=%lld aq=%d differs from dsacp_linear", dsacp_isa_name(isa),
                       ws[k].name, (long long)N, (long long)K, (long long)T, aq);
                /* The active table's own size is enough; a workspace without room for one
                 * thread's share is refused. */
                const size_t act = dsacp_kernels()->linear_ws_bytes(&ws[k], T, aq);
                CHECK(act <= need);
                CHECK_OK(dsacp_linear_ws(&ws[k], x, T, K, yw, N, aq, buf, act));
                if (act) CHECK(dsacp_linear_ws(&ws[k], x, T, K, yw, N, aq, buf, 16) == DSACP_EINVAL);
                free(buf);
            }
        free(x);
        free(y);
        free(yw);
        kernel_weights_free(&kw);
    }
}

static void test_index(dsacp_isa isa)
{
    static const int64_t shapes[][3] = {{1, 16, 1}, {3, 20, 7}, {64, 128, 67}, {17, 64, 13}, {70, 32, 29}, {33, 13, 5}, {8, 24, 4}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int64_t Hi = shapes[s][0], di = shapes[s][1], n = shapes[s][2], Tq = 3;
        float *q = malloc((size_t)(Tq * Hi * di) * sizeof(float)), *w = malloc((size_t)(Tq * Hi) * sizeof(float));
        float *kf = malloc((size_t)(n * di) * sizeof(float)), *ks = malloc((size_t)n * sizeof(float));
        uint8_t *k8 = malloc((size_t)(n * di));
        float *out = malloc((size_t)(Tq * n) * sizeof(float)), *ref = malloc((size_t)n * sizeof(float)), *one = malloc(sizeof(float));
        float *multi = malloc((size_t)(Tq * (n + 3)) * sizeof(float));
        for (int64_t i = 0; i < Tq * Hi * di; i++) q[i] = frand();
        for (int64_t i = 0; i < Tq * Hi; i++) w[i] = frand();
        for (int64_t i = 0; i < n * di; i++) {
            kf[i] = frand();
            k8[i] = dsacp_f32_to_e4m3(kf[i] * 300);
        }
        for (int64_t j = 0; j < n; j++) ks[j] = (float)(0.003 * (1 + dsacp_rng_uniform(&rng)));
        for (int fp8 = 0; fp8 < 2; fp8++) {
            const void *keys = fp8 ? (const void *)k8 : (const void *)kf;
            const float *sc = fp8 ? ks : NULL;
            for (int64_t t = 0; t < Tq; t++) {
                CHECK_OK(dsacp_isa_set(DSACP_ISA_SCALAR));
                dsacp_index_scores(q + t * Hi * di, w + t * Hi, Hi, di, keys, sc, n, ref);
                CHECK_OK(dsacp_isa_set(isa));
                dsacp_index_scores(q + t * Hi * di, w + t * Hi, Hi, di, keys, sc, n, out + t * n);
                double e = rel_err(out + t * n, ref, n);
                CHECKF(e < 1e-5, "%s index Hi=%lld di=%lld n=%lld fp8=%d: error %g", dsacp_isa_name(isa),
                       (long long)Hi, (long long)di, (long long)n, fp8, e);
                /* Each key alone gives the same bits as inside the block. */
                bool same = true;
                for (int64_t j = 0; j < n; j++) {
                    dsacp_index_scores(q + t * Hi * di, w + t * Hi, Hi, di,
                                       (const uint8_t *)keys + (size_t)j * (size_t)di * (fp8 ? 1 : 4),
                                       fp8 ? ks + j : NULL, 1, one);
                    same &= memcmp(one, out + t * n + j, sizeof(float)) == 0;
                }
                CHECKF(same, "%s index: a key alone differs from the key in a block", dsacp_isa_name(isa));
            }
            CHECK_OK(dsacp_index_scores_multi(q, w, Tq, Hi, di, keys, sc, n, multi, n + 3));
            bool same = true;
            for (int64_t t = 0; t < Tq; t++) same &= memcmp(multi + t * (n + 3), out + t * n, (size_t)n * sizeof(float)) == 0;
            CHECKF(same, "%s index multi differs from single (fp8=%d)", dsacp_isa_name(isa), fp8);
            /* Issue 7 defect 15: with caller workspace, the same bits and no allocation. */
            void *ws = dsacp_alloc(dsacp_index_scores_multi_bytes(Tq, Hi, di));
            CHECK_OK(dsacp_index_scores_multi_ws(q, w, Tq, Hi, di, keys, sc, n, multi, n + 3, ws));
            same = true;
            for (int64_t t = 0; t < Tq; t++) same &= memcmp(multi + t * (n + 3), out + t * n, (size_t)n * sizeof(float)) == 0;
            for (int64_t t = 0; t < Tq; t++) {
                CHECK_OK(dsacp_index_scores_ws(q + t * Hi * di, w + t * Hi, Hi, di, keys, sc, n, ref, ws));
                same &= memcmp(ref, out + t * n, (size_t)n * sizeof(float)) == 0;
            }
            CHECKF(same, "%s index with workspace differs (fp8=%d)", dsacp_isa_name(isa), fp8);
            dsacp_free(ws);
        }
        free(q);
        free(w);
        free(kf);
        free(ks);
        free(k8);
        free(out);
        free(ref);
        free(one);
        free(multi);
    }
}

static void test_mla(dsacp_isa isa)
{
    /* The last two are large enough to run in parallel with few heads: the AVX2 kernel then splits
     * them into groups of 8 or 16 heads (16 -> 2 x 8; 24 -> 16 + 8), which the 1-thread run and
     * the head-alone run below must match bit for bit. */
    static const int64_t shapes[][4] = {{5, 40, 8, 37},   {16, 64, 16, 1},   {17, 33, 7, 70},  {128, 64, 8, 130},
                                        {3, 512, 64, 200}, {40, 31, 5, 65},   {72, 17, 3, 9},   {16, 512, 64, 256},
                                        {24, 512, 64, 100}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int64_t H = shapes[s][0], dc = shapes[s][1], dr = shapes[s][2], n = shapes[s][3], dk = dc + dr;
        float *q = malloc((size_t)(H * dk) * sizeof(float)), *kv = malloc((size_t)(n * dk) * sizeof(float));
        float *o = malloc((size_t)(H * dc) * sizeof(float)), *or_ = malloc((size_t)(H * dc) * sizeof(float)), *o2 = malloc((size_t)(H * dc) * sizeof(float));
        float *lse = malloc((size_t)H * sizeof(float)), *lr = malloc((size_t)H * sizeof(float)), *l2 = malloc((size_t)H * sizeof(float));
        float *work = malloc((size_t)n * sizeof(float));
        for (int64_t i = 0; i < H * dk; i++) q[i] = 3 * frand();
        for (int64_t i = 0; i < n * dk; i++) kv[i] = frand();
        CHECK_OK(dsacp_isa_set(DSACP_ISA_SCALAR));
        dsacp_sparse_mla(q, kv, n, H, dc, dr, 0.2f, or_, lr, work);
        CHECK_OK(dsacp_isa_set(isa));
        dsacp_sparse_mla(q, kv, n, H, dc, dr, 0.2f, o, lse, work);
        double e = fmax(rel_err(o, or_, H * dc), rel_err(lse, lr, H));
        CHECKF(e < 1e-5, "%s sparse MLA H=%lld dc=%lld n=%lld: error %g", dsacp_isa_name(isa), (long long)H,
               (long long)dc, (long long)n, e);
        /* Deterministic, thread-count invariant, and head h alone equals head h in the batch. */
        omp_set_num_threads(1);
        dsacp_sparse_mla(q, kv, n, H, dc, dr, 0.2f, o2, l2, work);
        omp_set_num_threads(omp_get_num_procs());
        CHECKF(memcmp(o, o2, (size_t)(H * dc) * sizeof(float)) == 0 && memcmp(lse, l2, (size_t)H * sizeof(float)) == 0,
               "%s sparse MLA depends on the thread count", dsacp_isa_name(isa));
        int64_t h = H / 2;
        dsacp_sparse_mla(q + h * dk, kv, n, 1, dc, dr, 0.2f, o2, l2, work);
        CHECKF(memcmp(o2, o + h * dc, (size_t)dc * sizeof(float)) == 0 && l2[0] == lse[h],
               "%s sparse MLA head alone differs", dsacp_isa_name(isa));
        /* Issue 7 defect 15: the caller-workspace form gives the same bits (any alignment), and
         * a short workspace is an error, never another kernel. */
        size_t wb = dsacp_sparse_mla_work_bytes(n, H, dc, dr);
        unsigned char *big = malloc(wb + 4);
        CHECK_OK(dsacp_sparse_mla_ws(q, kv, n, H, dc, dr, 0.2f, o2, l2, big + 4, wb));
        CHECKF(memcmp(o, o2, (size_t)(H * dc) * sizeof(float)) == 0 && memcmp(lse, l2, (size_t)H * sizeof(float)) == 0,
               "%s sparse MLA with workspace differs", dsacp_isa_name(isa));
        CHECK(dsacp_sparse_mla_ws(q, kv, n, H, dc, dr, 0.2f, o2, l2, big, wb - 1) == DSACP_EINVAL);
        free(big);
        free(q);
        free(kv);
        free(o);
        free(or_);
        free(o2);
        free(lse);
        free(lr);
        free(l2);
        free(work);
    }
}

/* Issue 7 defect 15: the paged cache's row decoders follow the kernels' ISA choice (they
 * probed the CPU themselves, so DSACP_ISA=scalar still ran AVX-512), and every ISA decodes the
 * same floats. */
static void test_kv_decode(dsacp_isa isa, const float *want_bf16, const float *want_fp8, float *got)
{
    dsacp_config cfg;
    REQUIRE_OK(dsacp_preset_config("tiny", &cfg));
    const int64_t dc = cfg.kv_lora_rank, dr = cfg.qk_rope_head_dim;
    CHECK_OK(dsacp_isa_set(isa));
    CHECKF(dsacp_kv_decode_isa() == (isa == DSACP_ISA_AVX512 ? DSACP_ISA_AVX512 : DSACP_ISA_SCALAR),
           "cache decoders run %s under %s", dsacp_isa_name(dsacp_kv_decode_isa()), dsacp_isa_name(isa));
    for (int fp8 = 0; fp8 < 2; fp8++) {
        dsacp_kv_cache *c;
        REQUIRE_OK(dsacp_kv_cache_create(&cfg, 1, fp8 ? DSACP_KV_FP8 : DSACP_KV_BF16, false, 4, 2, &c));
        dsacp_rng r;
        dsacp_rng_seed(&r, 5);
        float lat[1024], pe[1024];
        bool same = true;
        for (int64_t slot = 0; slot < 8; slot++) {
            for (int64_t i = 0; i < dc; i++) lat[i] = (float)(4 * dsacp_rng_uniform(&r) - 2);
            for (int64_t i = 0; i < dr; i++) pe[i] = (float)(4 * dsacp_rng_uniform(&r) - 2);
            dsacp_kv_write_mla(c, 0, slot, lat, pe);
            dsacp_kv_read_mla(c, 0, slot, got + slot * (dc + dr));
        }
        const float *want = fp8 ? want_fp8 : want_bf16;
        if (isa == DSACP_ISA_SCALAR) memcpy((float *)want, got, (size_t)(8 * (dc + dr)) * sizeof(float));
        else same = memcmp(want, got, (size_t)(8 * (dc + dr)) * sizeof(float)) == 0;
        CHECKF(same, "%s cache decode (fp8=%d) differs from scalar", dsacp_isa_name(isa), fp8);
        dsacp_kv_cache_free(c);
    }
}

/* Issue 21: the cache row decoders are table slots; each ISA's gives the scalar twins' floats bit
 * for bit on awkward lengths (tails of 1..15), groups of 16 and 128, and scales out of the SIMD
 * decode's range (|scale| >= 2^7: the scalar path). */
static void test_row_decoders(dsacp_isa isa)
{
    static const int64_t ns[] = {1, 15, 16, 17, 100, 128, 200, 513};
    uint8_t src[1026];
    float scales[40], a[513], b[513];
    for (size_t i = 0; i < sizeof src; i++) src[i] = (uint8_t)(dsacp_rng_u64(&rng) & 0xFF);
    CHECK_OK(dsacp_isa_set(isa));
    const dsacp_kernel_table *t = dsacp_kernels();
    for (size_t k = 0; k < sizeof ns / sizeof ns[0]; k++) {
        const int64_t n = ns[k];
        t->bf16_row(src, n, a);
        dsacp_bf16_row_scalar(src, n, b);
        CHECKF(memcmp(a, b, sizeof(float) * (size_t)n) == 0, "%s bf16 row n=%lld", dsacp_isa_name(isa), (long long)n);
        for (int64_t group = 16; group <= 128; group *= 8)
            for (int big = 0; big < 2; big++) {
                for (int g = 0; g < 40; g++) scales[g] = (float)(0.01 * (1 + dsacp_rng_uniform(&rng)));
                if (big) scales[(n - 1) / group] = 300.0f;
                t->e4m3_row(src, scales, group, n, a);
                dsacp_e4m3_row_scalar(src, scales, group, n, b);
                bool same = true;
                for (int64_t i = 0; i < n; i++) same &= memcmp(a + i, b + i, sizeof(float)) == 0 || (isnan(a[i]) && isnan(b[i]));
                CHECKF(same, "%s e4m3 row n=%lld group=%lld big=%d", dsacp_isa_name(isa), (long long)n, (long long)group,
                       big);
            }
    }
}

static void test_gemv_t(dsacp_isa isa)
{
    const int64_t m = 37, n = 133;
    float *A = malloc((size_t)(m * n) * sizeof(float)), x[37], y[133], yr[133], y1[133];
    for (int64_t i = 0; i < m * n; i++) A[i] = frand();
    for (int64_t i = 0; i < m; i++) x[i] = frand();
    CHECK_OK(dsacp_isa_set(DSACP_ISA_SCALAR));
    dsacp_gemv_t(A, n, x, m, n, yr);
    CHECK_OK(dsacp_isa_set(isa));
    dsacp_gemv_t(A, n, x, m, n, y);
    CHECKF(rel_err(y, yr, n) < 1e-5, "%s gemv_t error %g", dsacp_isa_name(isa), rel_err(y, yr, n));
    /* Column j's value does not depend on n (lane position). */
    dsacp_gemv_t(A + 70, n, x, m, 3, y1);
    CHECK(memcmp(y1, y + 70, 12) == 0);
    free(A);
}

static void test_topk_radix(void)
{
    const int64_t n = 131072;
    float *s = malloc((size_t)n * sizeof(float));
    int32_t *a = malloc((size_t)n * sizeof(int32_t)), *b = malloc((size_t)n * sizeof(int32_t));
    for (int rep = 0; rep < 6; rep++) {
        for (int64_t i = 0; i < n; i++) {
            s[i] = rep % 3 == 0 ? frand() : rep % 3 == 1 ? (float)(dsacp_rng_u64(&rng) % 7) : fmaxf(frand(), 0);
            if (rep == 5 && i % 97 == 0) s[i] = NAN;
        }
        int64_t k = rep < 3 ? 2048 : 1 + (int64_t)(dsacp_rng_u64(&rng) % 5000);
        int64_t ga = dsacp_topk_select(s, n, k, a), gb = dsacp_topk_select_ref(s, n, k, b);
        CHECKF(ga == gb && memcmp(a, b, (size_t)ga * sizeof(int32_t)) == 0, "radix top-k differs from reference (rep %d)", rep);
    }
    free(s);
    free(a);
    free(b);
}

/* RMSNorm and LSE merge of each ISA against the scalar twins on awkward sizes. */
static void test_small(dsacp_isa isa)
{
    static const int64_t ns[] = {1, 7, 8, 15, 16, 17, 63, 128, 513, 7168};
    float *x = malloc(7168 * sizeof(float)), *w = malloc(7168 * sizeof(float)), *ya = malloc(7168 * sizeof(float)), *yb = malloc(7168 * sizeof(float));
    for (size_t k = 0; k < sizeof ns / sizeof ns[0]; k++) {
        const int64_t n = ns[k];
        for (int64_t i = 0; i < n; i++) x[i] = 4 * frand(), w[i] = frand();
        CHECK_OK(dsacp_isa_set(isa));
        dsacp_rmsnorm(ya, x, w, n, 1e-6);
        dsacp_rmsnorm_scalar(yb, x, w, n, 1e-6);
        double e = 0;
        for (int64_t i = 0; i < n; i++) e = fmax(e, fabs((double)ya[i] - yb[i]) / (fabs(yb[i]) + 1e-6));
        CHECKF(e < 1e-6, "rmsnorm %s n=%lld: %g", dsacp_isa_name(isa), (long long)n, e);
    }
    const int64_t R = 3, H = 5;
    static const int64_t ds[] = {1, 15, 16, 17, 128, 512};
    for (size_t k = 0; k < sizeof ds / sizeof ds[0]; k++) {
        const int64_t d = ds[k];
        float *op = malloc((size_t)(R * H * d) * sizeof(float)), lp[15], oa[5 * 512], ob[5 * 512], la[5], lb[5];
        for (int64_t i = 0; i < R * H * d; i++) op[i] = frand();
        for (int64_t i = 0; i < R * H; i++) lp[i] = i % 4 == 1 ? -INFINITY : 3 * frand();
        for (int64_t h = 0; h < H; h++) lp[h] = lp[H + h] = lp[2 * H + h] = h == 4 ? -INFINITY : lp[h];
        CHECK_OK(dsacp_isa_set(isa));
        dsacp_lse_merge(op, lp, R, H, d, oa, la);
        dsacp_lse_merge_scalar(op, lp, R, H, d, ob, lb);
        double e = 0;
        bool same_inf = true;
        for (int64_t i = 0; i < H * d; i++) e = fmax(e, fabs((double)oa[i] - ob[i]));
        for (int64_t h = 0; h < H; h++) {
            same_inf &= isinf(la[h]) == isinf(lb[h]);
            if (!isinf(lb[h])) e = fmax(e, fabs((double)la[h] - lb[h]));
        }
        CHECKF(e < 1e-5 && same_inf, "lse_merge %s d=%lld: %g", dsacp_isa_name(isa), (long long)d, e);
        free(op);
    }
    free(x);
    free(w);
    free(ya);
    free(yb);
}

int main(void)
{
    dsacp_rng_seed(&rng, 99);
    printf("best ISA: %s\n", dsacp_isa_name(dsacp_isa_best()));
    CHECK(dsacp_isa_active() <= dsacp_isa_best());
    CHECK(!strcmp(dsacp_isa_name(DSACP_ISA_AVX512), "avx512"));
    const char *env = getenv("DSACP_ISA");
    if (env && !strcmp(env, "scalar"))
        CHECKF(dsacp_kv_decode_isa() == DSACP_ISA_SCALAR, "DSACP_ISA=scalar, cache decoders run %s",
               dsacp_isa_name(dsacp_kv_decode_isa()));
    const dsacp_isa start = dsacp_isa_active();
    static float kv_bf16[8 * 1024], kv_fp8[8 * 1024], kv_got[8 * 1024];
    for (int i = DSACP_ISA_SCALAR; i <= (int)dsacp_isa_best(); i++) {
        dsacp_isa isa = (dsacp_isa)i;
        test_linear(isa);
        test_linear_ws(isa);
        test_index(isa);
        test_mla(isa);
        test_gemv_t(isa);
        test_row_decoders(isa);
        test_small(isa);
        test_kv_decode(isa, kv_bf16, kv_fp8, kv_got);
    }
    if (dsacp_isa_best() < DSACP_ISA_AVX512) CHECK(dsacp_isa_set(DSACP_ISA_AVX512) == DSACP_EUNSUPPORTED);
    CHECK_OK(dsacp_isa_set(start));
    test_topk_radix();
    /* What this CPU cannot run is skipped and said; with no SIMD ISA at all nothing was compared
     * (CTest's SKIP_RETURN_CODE 77), unless a check of the scalar twins failed. */
    if (dsacp_isa_best() < DSACP_ISA_AVX512)
        printf("SKIP test_kernels_simd: the AVX-512 variants (this CPU lacks AVX-512)\n");
    if (dsacp_isa_best() == DSACP_ISA_SCALAR && test_finish("test_kernels_simd") == 0) {
        printf("SKIP test_kernels_simd: no SIMD ISA on this CPU, nothing to compare\n");
        return 77;
    }
    return test_finish("test_kernels_simd");
}
