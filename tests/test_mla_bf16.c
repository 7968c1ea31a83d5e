/*
 * test_mla_bf16.c -- the deployed-mode sparse MLA (kernels.h dsacp_sparse_mla_bf16_ws,
 * src/kernels/mla_bf16*.c) bit for bit against its definition (dsacp_sparse_mla_bf16_model):
 * under every ISA this CPU runs, each form (the FMA forms, VDPBF16PS where the CPU's instruction
 * is the model, and the model's kernels as on a CPU without a usable VDPBF16PS), on 1 and 3
 * threads, for n in {0, 1, 2, 63, 64, 65, 2048}, awkward head counts and odd D, on value classes
 * that take every path (bf16-valued latents, values rounding changes, tiny and subnormal keys
 * that are not plain -- the values' fmaf chain keeps their subnormal products --, logits spread
 * so far that p underflows, inf/NaN); then the definition against a float64 softmax attention
 * over the same bf16 q and k (f32 tolerance: p stays f32), and dsacp_exp_model against expf.
 */
#include "test.h"
#include "core/core.h"
#include "kernels/mla_bf16.h"
#include "numerics/numerics.h"

#include <omp.h>
#include <stdint.h>
#include <string.h>

static dsacp_rng rng;

enum { NORMAL, ROUNDED, TINY, SPREAD, SPECIAL, CLASSES };
static const char *class_name[CLASSES] = {"bf16 latents", "unrounded", "tiny keys", "spread logits", "inf/nan"};

static float bf(float x) { return dsacp_bf16_to_f32(dsacp_f32_to_bf16(x)); }

/* q [H][D] and kv [n][D] of a value class. */
static void fill(int cls, float *q, int64_t H, float *kv, int64_t n, int64_t D)
{
    for (int64_t i = 0; i < H * D; i++) q[i] = (float)dsacp_rng_normal(&rng) * (cls == SPREAD ? 8.0f : 1.0f);
    for (int64_t i = 0; i < n * D; i++) {
        float v = (float)dsacp_rng_normal(&rng);
        if (cls != ROUNDED) v = bf(v);
        if (cls == TINY && dsacp_rng_u64(&rng) % 7 == 0) v = bf(v * 0x1p-120f);
        if (cls == SPREAD) v = bf(v * 8.0f);
        if (cls == SPECIAL) {
            const uint64_t u = dsacp_rng_u64(&rng) % 4000;
            if (u == 0) v = INFINITY;
            else if (u == 1) v = -INFINITY;
            else if (u == 2) v = NAN;
        }
        kv[i] = v;
    }
}

static bool same_bits(const float *a, const float *b, int64_t n)
{
    return n <= 0 || memcmp(a, b, (size_t)n * sizeof(float)) == 0;
}

typedef struct shape {
    int64_t n, H, dc, dr;
} shape;

/* One path (isa, prefer, hw cap, threads) against the definition's o and lse. */
static void check_path(const shape *s, const char *what, dsacp_isa isa, int prefer, int hw, int threads,
                       const float *q, const float *kv, const float *o_ref, const float *lse_ref, void *ws,
                       size_t wsb, float *o, float *lse, float scale)
{
    memset(o, 0xA5, (size_t)(s->H * s->dc) * sizeof(float));
    omp_set_num_threads(threads);
    const int rc = dsacp_sparse_mla_bf16_as(isa, prefer, hw, q, kv, s->n, s->H, s->dc, s->dr, scale, o, lse, ws, wsb);
    omp_set_num_threads(1);
    CHECK_OK(rc);
    const bool ok = same_bits(o, o_ref, s->H * s->dc) && same_bits(lse, lse_ref, s->H);
    CHECKF(ok, "%s n=%lld H=%lld dc=%lld dr=%lld: %s prefer %d hw %d threads %d differs from the definition", what,
           (long long)s->n, (long long)s->H, (long long)s->dc, (long long)s->dr, dsacp_isa_name(isa), prefer, hw,
           threads);
}

/* Every path on one shape and class. */
static void check_shape(const shape *s, int cls)
{
    const int64_t D = s->dc + s->dr;
    const float scale = cls == SPREAD ? 0.5f : 1.0f / sqrtf((float)D);
    float *q = dsacp_alloc((size_t)(s->H * D + 1) * sizeof(float));
    float *kv = dsacp_alloc((size_t)(s->n * D + 1) * sizeof(float));
    float *o_ref = dsacp_alloc((size_t)(s->H * s->dc + 1) * sizeof(float)), *o = dsacp_alloc((size_t)(s->H * s->dc + 1) * sizeof(float));
    float *lse_ref = dsacp_alloc((size_t)(s->H + 1) * sizeof(float)), *lse = dsacp_alloc((size_t)(s->H + 1) * sizeof(float));
    const size_t wsb = dsacp_sparse_mla_bf16_work_bytes(s->n, s->H, s->dc, s->dr);
    void *ws = dsacp_alloc(wsb);
    REQUIRE_OK(q && kv && o_ref && o && lse_ref && lse && ws ? DSACP_OK : DSACP_ENOMEM);
    fill(cls, q, s->H, kv, s->n, D);
    REQUIRE_OK(dsacp_sparse_mla_bf16_model(q, kv, s->n, s->H, s->dc, s->dr, scale, o_ref, lse_ref));
    for (int isa = DSACP_ISA_SCALAR; isa <= (int)dsacp_isa_best(); isa++) {
        const bool many = isa == DSACP_ISA_AVX512;
        for (int prefer = DSACP_BF16GEMM_FMA; prefer <= (many ? DSACP_BF16GEMM_DPBF16 : DSACP_BF16GEMM_FMA); prefer++)
            for (int hw = many ? DSACP_BF16DOT_HW_NONE : DSACP_BF16DOT_HW_ALL; hw <= DSACP_BF16DOT_HW_ALL; hw++)
                for (int threads = 1; threads <= 3; threads += 2) {
                    if (isa == DSACP_ISA_SCALAR && threads == 3 && s->n * s->H > 4096) continue;
                    check_path(s, class_name[cls], (dsacp_isa)isa, prefer, hw, threads, q, kv, o_ref, lse_ref, ws,
                               wsb, o, lse, scale);
                }
    }
    /* The public entry under the active ISA, and a short workspace refused. */
    CHECK_OK(dsacp_sparse_mla_bf16_ws(q, kv, s->n, s->H, s->dc, s->dr, scale, o, lse, ws, wsb));
    CHECK(same_bits(o, o_ref, s->H * s->dc) && same_bits(lse, lse_ref, s->H));
    CHECK(dsacp_sparse_mla_bf16_ws(q, kv, s->n, s->H, s->dc, s->dr, scale, o, lse, ws, wsb - 1) == DSACP_EINVAL);
    dsacp_free(q), dsacp_free(kv), dsacp_free(o_ref), dsacp_free(o), dsacp_free(lse_ref), dsacp_free(lse);
    dsacp_free(ws);
}

static void test_paths(void)
{
    static const int64_t ns[] = {0, 1, 2, 63, 64, 65, 2048};
    static const shape heads[] = {{0, 3, 32, 8}, {0, 17, 31, 4}, {0, 16, 6, 1}};
    for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++)
        for (size_t k = 0; k < sizeof heads / sizeof heads[0]; k++) {
            shape s = heads[k];
            s.n = ns[i];
            if (s.n == 2048 && k > 0) continue;
            for (int cls = 0; cls < CLASSES; cls++) check_shape(&s, cls);
        }
    /* V3.2's head width and many heads: 128 heads, dc 512, dr 64. */
    const shape big = {65, 128, 512, 64};
    check_shape(&big, NORMAL);
    const shape wide = {64, 33, 512, 64};
    check_shape(&wide, TINY);
}

/* The definition against softmax attention in float64 over the same bf16 q and k. */
static void test_vs_float64(void)
{
    const int64_t n = 300, H = 5, dc = 64, dr = 16, D = dc + dr;
    const float scale = 1.0f / sqrtf((float)D);
    float *q = dsacp_alloc((size_t)(H * D) * sizeof(float)), *kv = dsacp_alloc((size_t)(n * D) * sizeof(float));
    float *o = dsacp_alloc((size_t)(H * dc) * sizeof(float)), lse[5];
    double *S = dsacp_alloc((size_t)n * sizeof(double));
    REQUIRE_OK(q && kv && o && S ? DSACP_OK : DSACP_ENOMEM);
    fill(NORMAL, q, H, kv, n, D);
    for (int64_t i = 0; i < H * D; i++) q[i] = bf(q[i]);
    REQUIRE_OK(dsacp_sparse_mla_bf16_model(q, kv, n, H, dc, dr, scale, o, lse));
    double worst = 0, worst_lse = 0;
    for (int64_t h = 0; h < H; h++) {
        double m = -INFINITY, l = 0;
        for (int64_t s = 0; s < n; s++) {
            double d = 0;
            for (int64_t i = 0; i < D; i++) d += (double)q[h * D + i] * kv[s * D + i];
            S[s] = d * scale;
            m = S[s] > m ? S[s] : m;
        }
        for (int64_t s = 0; s < n; s++) l += exp(S[s] - m);
        for (int64_t c = 0; c < dc; c++) {
            double v = 0;
            for (int64_t s = 0; s < n; s++) v += exp(S[s] - m) * kv[s * D + c];
            const double e = fabs(o[h * dc + c] - v / l);
            worst = e > worst ? e : worst;
        }
        const double e = fabs(lse[h] - (m + log(l)));
        worst_lse = e > worst_lse ? e : worst_lse;
    }
    /* q and k are bf16 values here, so only f32 arithmetic differs (the products are exact, p
     * stays f32, exp within 2 ulp): a few f32 ulps of values of magnitude ~1. */
    CHECKF(worst < 1e-6, "bf16 MLA vs float64 attention: max |o error| %g", worst);
    CHECKF(worst_lse < 4e-6, "bf16 MLA vs float64 attention: max |lse error| %g", worst_lse);
    printf("definition vs float64 attention: max |o error| %.3g, max |lse error| %.3g\n", worst, worst_lse);
    dsacp_free(q), dsacp_free(kv), dsacp_free(o), dsacp_free(S);
}

static int64_t ulps(float a, float b)
{
    const int64_t x = (int32_t)dsacp_f32_bits(a), y = (int32_t)dsacp_f32_bits(b);
    return x > y ? x - y : y - x;
}

/* dsacp_exp_model within 2 ulp of expf on [-87, 88], its edges and specials. */
static void test_exp(void)
{
    int64_t worst = 0;
    float at = 0;
    for (float x = -87.0f; x <= 88.0f; x += 0.000731f) {
        const int64_t u = ulps(dsacp_exp_model(x), expf(x));
        if (u > worst) worst = u, at = x;
    }
    CHECKF(worst <= 2, "exp model: %lld ulp from expf at %.9g", (long long)worst, (double)at);
    CHECK(dsacp_exp_model(0.0f) == 1.0f && dsacp_exp_model(-0.0f) == 1.0f);
    CHECK(dsacp_exp_model(-INFINITY) == 0.0f && dsacp_exp_model(-88.5f) == 0.0f && dsacp_exp_model(-100.0f) == 0.0f);
    CHECK(dsacp_exp_model(-87.5f) == 0.0f); /* e^-87.5 < 2^-126: flushed */
    CHECK(dsacp_exp_model(-87.3f) >= 0x1p-126f);
    CHECK(isinf(dsacp_exp_model(89.0f)) && isinf(dsacp_exp_model(INFINITY)));
    CHECK(isnan(dsacp_exp_model(NAN)));
    printf("exp model: at most %lld ulp from expf on [-87, 88]\n", (long long)worst);
}

int main(void)
{
    dsacp_rng_seed(&rng, 25);
    omp_set_num_threads(1);
    test_exp();
    test_vs_float64();
    test_paths();
    return test_finish("test_mla_bf16");
}
