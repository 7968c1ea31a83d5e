/*
 * test_gemm.c -- the blocked many-row linear (src/kernels/gemm_avx2.c) gives exactly the bits of
 * the one-token kernels, for every SIMD ISA the CPU runs, every weight dtype, act_quant on and
 * off, FP8 block sizes 16/64/128 and awkward T, N and K (tiles, chunks and blocks all cut
 * partially). Three bitwise checks:
 *   1. each row of a T-row dsacp_linear equals the same row computed alone (T = 1), at 1 and
 *      at all threads;
 *   2. both equal a scalar model of the 16-lane chains written with fmaf (natural chains; on
 *      AVX-512 with VBMI, FP8 weights with blocks of a multiple of 64 follow the fold chains);
 *   3. the fold mode of the GEMM, run directly on any CPU, equals the scalar model of the fold
 *      chains (on AVX-512 VBMI machines check 2 also ties it to the zmm table decode).
 */
#include "test.h"
#include "kernel_weights.h"
#include "kernels/kernels.h"
#include "kernels/kernels_isa.h"
#include "numerics/numerics.h"

#include <omp.h>

static dsacp_rng rng;

static float frand(void) { return (float)(2 * dsacp_rng_uniform(&rng) - 1); }

static float wval(const dsacp_weight *w, int64_t o, int64_t k, bool scaled)
{
    const int64_t K = w->cols;
    switch (w->dtype) {
    case DSACP_BF16: return dsacp_bf16_to_f32(((const uint16_t *)w->data)[o * K + k]);
    case DSACP_F16: return dsacp_f16_to_f32(((const uint16_t *)w->data)[o * K + k]);
    case DSACP_F8_E4M3: {
        float v = dsacp_e4m3_to_f32(((const uint8_t *)w->data)[o * K + k]);
        if (scaled) v = v * w->scale[(o / w->block) * w->scale_stride + k / w->block];
        return v;
    }
    default: return ((const float *)w->data)[o * K + k];
    }
}

static float tree16(const float *l)
{
    float a[8], b[4], c[2];
    for (int i = 0; i < 8; i++) a[i] = l[i] + l[i + 8];
    for (int i = 0; i < 4; i++) b[i] = a[i] + a[i + 4];
    for (int i = 0; i < 2; i++) c[i] = b[i] + b[i + 2];
    return c[0] + c[1];
}

/* Lane l takes columns k = l (mod 16), K padded with zeros to 16. */
static float model_natural(const dsacp_weight *w, const float *x, int64_t o)
{
    const int64_t K = w->cols, Kp = (K + 15) / 16 * 16;
    float acc[16] = {0};
    for (int64_t k = 0; k < Kp; k++) {
        float wv = k < K ? wval(w, o, k, true) : 0.0f, xv = k < K ? x[k] : 0.0f;
        acc[k % 16] = fmaf(wv, xv, acc[k % 16]);
    }
    return tree16(acc);
}

/* Within 64 columns lane p of group g takes column 16 (p / 4) + 4 g + p % 4; each block summed
 * unscaled from +0, then folded into the total with one fma by its scale. */
static float model_fold(const dsacp_weight *w, const float *x, int64_t o)
{
    const int64_t K = w->cols, Kp = (K + 63) / 64 * 64, B = w->block;
    float tot[16] = {0};
    for (int64_t k0 = 0; k0 < K; k0 += B) {
        const int64_t k1 = k0 + B < Kp ? k0 + B : Kp;
        float b[16] = {0};
        for (int64_t c = k0; c < k1; c += 64)
            for (int g = 0; g < 4; g++)
                for (int p = 0; p < 16; p++) {
                    const int64_t col = c + 16 * (p / 4) + 4 * g + p % 4;
                    float wv = col < K ? wval(w, o, col, false) : 0.0f, xv = col < K ? x[col] : 0.0f;
                    b[p] = fmaf(wv, xv, b[p]);
                }
        const float s = w->scale[(o / B) * w->scale_stride + k0 / B];
        for (int p = 0; p < 16; p++) tot[p] = fmaf(b[p], s, tot[p]);
    }
    return tree16(tot);
}

static bool have_vbmi(void)
{
#if defined(__x86_64__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vbmi");
#else
    return false;
#endif
}

static int64_t mismatches(const float *a, const float *b, int64_t n)
{
    int64_t bad = 0;
    for (int64_t i = 0; i < n; i++) bad += memcmp(a + i, b + i, sizeof(float)) != 0;
    return bad;
}

static void run_shape(dsacp_isa isa, int64_t N, int64_t K, int64_t T, int64_t blk)
{
    float *x = malloc((size_t)(T * K) * sizeof(float)), *xq = malloc((size_t)(T * K) * sizeof(float));
    float *y = malloc((size_t)(T * N) * sizeof(float)), *y1 = malloc((size_t)(T * N) * sizeof(float)), *yt = malloc((size_t)(T * N) * sizeof(float));
    float *ym = malloc((size_t)(T * N) * sizeof(float));
    kernel_weights kw;
    kernel_weights_make(&kw, N, K, blk, &rng);
    for (int64_t i = 0; i < T * K; i++) x[i] = frand() * (i % 7 == 0 ? 30.0f : 1.0f);
    const dsacp_weight *ws = kw.w;
    const int maxth = omp_get_max_threads();
    for (int k = 0; k < 4; k++)
        for (int aq = 0; aq < 2; aq++) {
            if (k != 3 && (aq || blk != 128)) continue; /* only FP8 depends on these */
            CHECK_OK(dsacp_isa_set(isa));
            /* Deployed FP8 with blocks of a multiple of 32 runs the bf16-dot chain instead
             * (kernels/weight.h dsacp_bf16dot_linear_applies), held to its model by
             * test_linear_bf16; the f32 fold chain is still checked directly below. */
            const bool bf16dot = dsacp_bf16dot_linear_applies(&ws[k], aq);
            /* The model's input: x rounded through e4m3 where act_quant applies. */
            memcpy(xq, x, (size_t)(T * K) * sizeof(float));
            if (aq && k == 3 && K % 128 == 0)
                for (int64_t t = 0; t < T; t++) dsacp_fake_quant_e4m3_groups(xq + t * K, K, 128);
            if (!bf16dot) {
                CHECK_OK(dsacp_linear(&ws[k], x, T, K, y, N, aq));
                omp_set_num_threads(1);
                CHECK_OK(dsacp_linear(&ws[k], x, T, K, yt, N, aq));
                omp_set_num_threads(maxth);
                for (int64_t t = 0; t < T; t++) CHECK_OK(dsacp_linear(&ws[k], x + t * K, 1, K, y1 + t * N, N, aq));
                const bool fold = k == 3 && isa == DSACP_ISA_AVX512 && blk % 64 == 0 && have_vbmi();
                for (int64_t t = 0; t < T; t++)
                    for (int64_t o = 0; o < N; o++)
                        ym[t * N + o] = fold ? model_fold(&ws[k], xq + t * K, o) : model_natural(&ws[k], xq + t * K, o);
                const int64_t b1 = mismatches(y, y1, T * N), bt = mismatches(y, yt, T * N), bm = mismatches(y, ym, T * N);
                CHECKF(b1 == 0 && bt == 0 && bm == 0,
                       "%s %s N=%lld K=%lld T=%lld blk=%lld aq=%d: %lld outputs differ from T=1, %lld from 1 thread, "
                       "%lld from the %s chain model",
                       dsacp_isa_name(isa), ws[k].name, (long long)N, (long long)K, (long long)T, (long long)blk, aq,
                       (long long)b1, (long long)bt, (long long)bm, fold ? "fold" : "natural");
            }
            if (k == 3 && blk % 64 == 0) {
                /* The fold mode, directly (the AVX-512 VBMI machines' chains). */
                int rc = -1;
                const size_t gb = dsacp_linear_gemm_ws_bytes(&ws[k], T, true);
                void *gws = dsacp_alloc(gb);
                CHECK(dsacp_linear_gemm(&ws[k], xq, T, K, yt, N, true, &rc, gws, gb) == 1 && rc == DSACP_OK);
                dsacp_free(gws);
                for (int64_t t = 0; t < T; t++)
                    for (int64_t o = 0; o < N; o++) ym[t * N + o] = model_fold(&ws[k], xq + t * K, o);
                const int64_t bf = mismatches(yt, ym, T * N);
                CHECKF(bf == 0, "gemm fold N=%lld K=%lld T=%lld blk=%lld aq=%d: %lld outputs differ from the model",
                       (long long)N, (long long)K, (long long)T, (long long)blk, aq, (long long)bf);
            }
        }
    free(x);
    free(xq);
    free(y);
    free(y1);
    free(yt);
    free(ym);
    kernel_weights_free(&kw);
}

/* The AVX2 act_quant rounding equals dsacp_fake_quant_e4m3_groups bit for bit: random groups
 * of every scale, values on rounding ties of both ranges, subnormals, +-448 and beyond, +-0,
 * infinities, NaN, all-zero and tiny groups. */
static void test_act_quant(void)
{
#if defined(__x86_64__)
    if (dsacp_isa_best() < DSACP_ISA_AVX2) return;
    enum { G = 128, NG = 400 };
    float *a = malloc(sizeof(float) * G * NG), *b = malloc(sizeof(float) * G * NG);
    for (int g = 0; g < NG; g++) {
        const float mag = ldexpf(1.0f, (int)(dsacp_rng_uniform(&rng) * 60) - 40);
        for (int i = 0; i < G; i++) {
            float v = frand() * mag;
            const int kind = (int)(dsacp_rng_uniform(&rng) * 40);
            const float sc = ldexpf(1.0f, (int)(dsacp_rng_uniform(&rng) * 30) - 15);
            switch (g % 8 == 7 ? -1 : kind) {
            case 0: v = (1.0f + 0.0625f) * sc; break;            /* tie between two 3-bit mantissas */
            case 1: v = -(1.0f + 0.1875f) * sc; break;           /* tie, odd side */
            case 2: v = 0x1p-10f * sc; break;                     /* subnormal-range tie */
            case 3: v = 3 * 0x1p-11f * sc; break;
            case 4: v = 1e-40f; break;                            /* f32 subnormal */
            case 5: v = -0.0f; break;
            case 6: v = 470.0f * sc; break;
            case 7: v = (g % 5 == 0) ? INFINITY : v; break;
            case 8: v = (g % 11 == 0) ? NAN : v; break;
            default: break;
            }
            if (g % 8 == 7) v = g % 16 == 7 ? 0.0f : frand() * 1e-6f; /* all zero / tiny groups */
            a[g * G + i] = b[g * G + i] = v;
        }
    }
    dsacp_fake_quant_e4m3_groups(a, G * NG, G);
    dsacp_fake_quant_e4m3_128_avx2(b, G * NG);
    int64_t bad = 0;
    for (int64_t i = 0; i < G * NG; i++) bad += memcmp(a + i, b + i, sizeof(float)) != 0 && !(isnan(a[i]) && isnan(b[i]));
    CHECKF(bad == 0, "act_quant avx2: %lld of %d values differ from the scalar rounding", (long long)bad, G * NG);
    free(a);
    free(b);
#endif
}

int main(void)
{
    dsacp_rng_seed(&rng, 7);
    const dsacp_isa start = dsacp_isa_active();
    if (dsacp_isa_best() < DSACP_ISA_AVX2) {
        printf("SKIP test_gemm: no SIMD ISA on this CPU, nothing to compare\n");
        return 77;
    }
    if (!have_vbmi()) printf("SKIP test_gemm: the AVX-512 VBMI fold chains of dsacp_linear (this CPU lacks VBMI)\n");
    /* N, K, T: rows cut the 24-row panel and the 48-row block, K the 16-lane step, the 512-column
     * chunk and the FP8 blocks, T the 4-token tile, the 32-token block and (T = 1100) the
     * 1024-token super-block; K = 16500 makes 33 chunks, the last one short. */
    static const int64_t shapes[][3] = {{1, 1, 8},      {5, 17, 9},      {97, 136, 13}, {200, 520, 67},
                                        {33, 1100, 8},  {130, 384, 130}, {7, 2048, 11}, {96, 64, 64},
                                        {10, 70, 530},  {5, 16500, 9},   {3, 40, 1100}};
    static const int64_t blks[] = {128, 64, 16};
    for (int i = DSACP_ISA_AVX2; i <= (int)dsacp_isa_best(); i++)
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
            for (size_t b = 0; b < sizeof blks / sizeof blks[0]; b++)
                run_shape((dsacp_isa)i, shapes[s][0], shapes[s][1], shapes[s][2], blks[b]);
    CHECK_OK(dsacp_isa_set(start));
    test_act_quant();
    return test_finish("test_gemm");
}
