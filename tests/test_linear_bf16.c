/*
 * test_linear_bf16.c -- deployed linears on the bf16-dot chain (src/kernels/linear_bf16.c,
 * docs/numerics.md "The bf16-dot chain"): every output of dsacp_linear / dsacp_linear_ws with
 * act_quant (deployed) on BF16 and FP8 (blocks 128 and 32) weights equals the chain computed here
 * from the scalar model (act_quant, bf16 rounding, the weight row as bf16 -- FP8 decoded through
 * dsacp_e4m3_to_f32 --, dsacp_bf16dot_scalar / dsacp_bf16dot_fold_scalar), bit for bit: under
 * every ISA this CPU runs, on 1 and THREADS threads, for T-token calls and T = 1 calls (the
 * one-token path and the block API), on awkward widths (odd pairs, partial blocks, N not a
 * multiple of the row groups) and value classes (normal; tiny and subnormal activations and
 * weights, which force the non-plain kernels; inf and NaN). Exact mode, F16 weights and FP8
 * blocks not a multiple of 32 keep the f32 chain. The e4m3 -> bf16 decoders against
 * dsacp_e4m3_to_f32. The whole test runs again with the instruction's level lowered
 * (DSACP_BF16DOT_HW=plain, none) and without the VBMI decode, for the paths of other CPUs.
 */
#include "test.h"
#include "core/core.h"
#include "kernels/bf16dot.h"
#include "kernels/kernels.h"
#include "numerics/numerics.h"

#include <omp.h>
#include <stdint.h>
#include <string.h>

enum { THREADS = 3 };

static dsacp_rng rng;

static uint64_t u64(void) { return dsacp_rng_u64(&rng); }
static float frand(void) { return (float)(2 * dsacp_rng_uniform(&rng) - 1); }

/* The e4m3 byte's value as bf16 bits, independently of bf16dot.c's table. */
static uint16_t e4m3_bf16(uint8_t b)
{
    if ((b & 0x7F) == 0x7F) return (uint16_t)((b & 0x80u) << 8 | 0x7FC0u);
    return (uint16_t)(dsacp_f32_bits(dsacp_e4m3_to_f32(b)) >> 16);
}

/* Value classes: 0 normal, 1 tiny and subnormal activations (and some tiny weight rows), 2 inf
 * and NaN sprinkled, 3 all-zero tokens. */
enum { CLASSES = 4 };

static float act_value(int cls)
{
    const float v = frand() * (u64() % 5 == 0 ? 20.0f : 1.0f);
    const uint64_t u = u64() % 64;
    if (cls == 1 && u < 12) return u < 4 ? frand() * 1e-39f : ldexpf(frand(), -100 - (int)(u64() % 30));
    if (cls == 2 && u == 0) return (u64() & 1) ? INFINITY : -INFINITY;
    if (cls == 2 && u == 1) return NAN;
    if (cls == 3) return 0.0f;
    return v;
}

static uint16_t bf16_value(int cls, bool tiny_row)
{
    if (tiny_row && u64() % 4 == 0) return dsacp_f32_to_bf16(ldexpf(frand(), -110 - (int)(u64() % 30)));
    if (cls == 2 && u64() % 97 == 0) return (u64() & 1) ? 0xFF80 : 0x7FC1;
    return dsacp_f32_to_bf16(frand());
}

static uint8_t f8_value(int cls)
{
    const uint8_t b = (uint8_t)u64();
    if ((b & 0x7F) == 0x7F && (cls != 2 || u64() % 8)) return (uint8_t)(b ^ 1); /* NaN only in class 2 */
    return b;
}

typedef struct wbuf {
    dsacp_weight w;
    void *data;
    float *scale;
} wbuf;

/* dtype BF16 (blk 0) or F8_E4M3 with blocks of blk. */
static void make_weight(wbuf *b, dsacp_dtype dt, int64_t N, int64_t K, int64_t blk, int cls)
{
    memset(b, 0, sizeof *b);
    const size_t es = dt == DSACP_BF16 ? 2 : 1;
    b->data = malloc((size_t)(N * K) * es + 2);
    for (int64_t o = 0; o < N; o++) {
        const bool tiny = cls == 1 && o % 5 == 2;
        for (int64_t k = 0; k < K; k++) {
            if (dt == DSACP_BF16) ((uint16_t *)b->data)[o * K + k] = bf16_value(cls, tiny);
            else ((uint8_t *)b->data)[o * K + k] = f8_value(cls);
        }
    }
    b->w = (dsacp_weight){.name = dt == DSACP_BF16 ? "bf16" : "fp8", .dtype = dt, .ndim = 2, .rows = N, .cols = K,
                          .data = b->data};
    if (dt == DSACP_F8_E4M3) {
        const int64_t sr = (N + blk - 1) / blk, sc = (K + blk - 1) / blk;
        b->scale = malloc(sizeof(float) * (size_t)(sr * sc));
        for (int64_t i = 0; i < sr * sc; i++) b->scale[i] = ldexpf(1.0f + (float)dsacp_rng_uniform(&rng), -9 + (int)(i % 3));
        if (cls == 1) b->scale[0] = 0x1p-120f; /* a block folding into the subnormal range */
        b->w.scale = b->scale, b->w.scale_rows = sr, b->w.scale_cols = sc, b->w.scale_stride = sc, b->w.block = blk;
    }
}

static void free_weight(wbuf *b)
{
    free(b->data);
    free(b->scale);
}

/* The chain of row o and token x, from the scalar model. */
static float chain(const dsacp_weight *w, const float *x, int64_t o, uint16_t *wb, uint16_t *xb, float *xq)
{
    const int64_t K = w->cols, n = (K + 1) / 2;
    memcpy(xq, x, (size_t)K * sizeof(float));
    if (dsacp_act_quant_applies(w, true)) dsacp_fake_quant_e4m3_groups(xq, K, 128);
    for (int64_t k = 0; k < K; k++) {
        xb[k] = dsacp_f32_to_bf16(xq[k]);
        wb[k] = w->dtype == DSACP_BF16 ? ((const uint16_t *)w->data)[o * K + k]
                                       : e4m3_bf16(((const uint8_t *)w->data)[o * K + k]);
    }
    xb[K] = wb[K] = 0;
    if (w->dtype == DSACP_BF16) return dsacp_bf16dot_scalar(wb, xb, n);
    return dsacp_bf16dot_fold_scalar(wb, xb, n, w->block / 2, w->scale + (o / w->block) * w->scale_stride);
}

static int64_t mismatches(const float *a, const float *b, int64_t n)
{
    int64_t bad = 0;
    for (int64_t i = 0; i < n; i++) bad += dsacp_f32_bits(a[i]) != dsacp_f32_bits(b[i]);
    return bad;
}

/* dsacp_linear on `threads` threads. */
static int linear_on(int threads, const dsacp_weight *w, const float *x, int64_t T, float *y)
{
    omp_set_num_threads(threads);
    const int rc = dsacp_linear(w, x, T, w->cols, y, w->rows, true);
    omp_set_num_threads(1);
    return rc;
}

/* Every path of one case against the model. */
static void run_case(dsacp_dtype dt, int64_t N, int64_t K, int64_t blk, int64_t T, int cls)
{
    wbuf b;
    make_weight(&b, dt, N, K, blk, cls);
    const dsacp_weight *w = &b.w;
    float *x = malloc(sizeof(float) * (size_t)(T * K)), *xq = malloc(sizeof(float) * (size_t)K);
    float *ym = malloc(sizeof(float) * (size_t)(T * N)), *y = malloc(sizeof(float) * (size_t)(T * N));
    uint16_t *wb = malloc(sizeof(uint16_t) * (size_t)(K + 1)), *xb = malloc(sizeof(uint16_t) * (size_t)(K + 1));
    for (int64_t i = 0; i < T * K; i++) x[i] = act_value(cls);
    for (int64_t t = 0; t < T; t++)
        for (int64_t o = 0; o < N; o++) ym[t * N + o] = chain(w, x + t * K, o, wb, xb, xq);
    for (int isa = DSACP_ISA_SCALAR; isa <= (int)dsacp_isa_best(); isa++) {
        CHECK_OK(dsacp_isa_set((dsacp_isa)isa));
        int64_t bad[4] = {0};
        for (int th = 0; th < 2; th++) {
            memset(y, 0xFF, sizeof(float) * (size_t)(T * N));
            CHECK_OK(linear_on(th ? THREADS : 1, w, x, T, y));
            bad[th] = mismatches(y, ym, T * N);
        }
        for (int64_t t = 0; t < T && T > 1; t++) {
            CHECK_OK(linear_on(THREADS, w, x + t * K, 1, y + t * N));
        }
        if (T > 1) bad[2] = mismatches(y, ym, T * N);
        /* The step path's form: sized on one thread, run on THREADS (the extra ones sit out). */
        const size_t need = dsacp_linear_ws_bytes(w, T, true);
        unsigned char *ws = malloc(need + 8);
        omp_set_num_threads(THREADS);
        CHECK_OK(dsacp_linear_ws(w, x, T, K, y, N, true, ws + 3, need));
        CHECK(dsacp_linear_ws(w, x, T, K, y, N, true, ws, 16) == DSACP_EINVAL);
        omp_set_num_threads(1);
        bad[3] = mismatches(y, ym, T * N);
        free(ws);
        CHECKF(!bad[0] && !bad[1] && !bad[2] && !bad[3],
               "%s %s blk=%lld N=%lld K=%lld T=%lld class %d: %lld/%lld outputs differ from the model on 1/%d "
               "threads, %lld as T = 1 calls, %lld through dsacp_linear_ws",
               dsacp_isa_name((dsacp_isa)isa), w->name, (long long)blk, (long long)N, (long long)K, (long long)T,
               cls, (long long)bad[0], (long long)bad[1], THREADS, (long long)bad[2], (long long)bad[3]);
    }
    free(x), free(xq), free(ym), free(y), free(wb), free(xb);
    free_weight(&b);
}

static void test_chain(void)
{
    /* N, K, T: K = 130 has odd pairs (65) and a partial block, 96 a block of 128 cut short, 7168
     * DeepSeek's width; N cuts the 8-row groups and the 32-row blocks; T = 300 and 530 make two
     * and three passes of the block API (252 tokens each). */
    static const int64_t shapes[][3] = {{37, 32, 1},  {70, 96, 13},  {37, 128, 5},   {5, 130, 64},
                                        {37, 130, 2}, {45, 256, 8},  {9, 7168, 3},   {33, 1024, 64},
                                        {3, 7168, 1}, {70, 384, 4},  {5, 96, 530},   {11, 130, 300}};
    int cls = 0;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int64_t N = shapes[s][0], K = shapes[s][1], T = shapes[s][2];
        run_case(DSACP_BF16, N, K, 0, T, cls++ % CLASSES);
        run_case(DSACP_F8_E4M3, N, K, 128, T, cls++ % CLASSES);
        run_case(DSACP_F8_E4M3, N, K, 32, T, cls++ % CLASSES);
    }
    /* Every class on a shape of both paths. */
    for (int c = 0; c < CLASSES; c++) {
        run_case(DSACP_BF16, 41, 160, 0, 9, c);
        run_case(DSACP_F8_E4M3, 41, 256, 128, 9, c);
        run_case(DSACP_F8_E4M3, 41, 130, 32, 1, c);
    }
}

/* Exact mode, F16 weights and FP8 blocks of 16 keep the f32 chain: dsacp_dot_f32 of the
 * dequantized row and the (act-quantized) token under the scalar ISA. */
static void test_f32_chain_kept(void)
{
    enum { N = 21, K = 256, T = 3 };
    float x[T * K], xq[K], row[K], y[T * N];
    for (int i = 0; i < T * K; i++) x[i] = frand();
    wbuf b[3];
    make_weight(&b[0], DSACP_BF16, N, K, 0, 0);
    make_weight(&b[1], DSACP_F8_E4M3, N, K, 128, 0);
    make_weight(&b[2], DSACP_F8_E4M3, N, K, 16, 0);
    CHECK_OK(dsacp_isa_set(DSACP_ISA_SCALAR));
    for (int k = 0; k < 3; k++)
        for (int aq = 0; aq < 2; aq++) {
            if (aq && k < 2) continue; /* deployed BF16 / FP8 of blocks 128: the chain above */
            const dsacp_weight *w = &b[k].w;
            CHECK_OK(dsacp_linear(w, x, T, K, y, N, aq));
            int64_t bad = 0;
            for (int t = 0; t < T; t++) {
                memcpy(xq, x + t * K, sizeof xq);
                if (dsacp_act_quant_applies(w, aq)) dsacp_fake_quant_e4m3_groups(xq, K, 128);
                for (int o = 0; o < N; o++) {
                    dsacp_weight_row_f32(w, o, row);
                    bad += dsacp_f32_bits(dsacp_dot_f32(row, xq, K)) != dsacp_f32_bits(y[t * N + o]);
                }
            }
            CHECKF(bad == 0, "%s blk=%lld aq=%d: %lld outputs left the f32 chain", w->name, (long long)w->block, aq,
                   (long long)bad);
        }
    for (int k = 0; k < 3; k++) free_weight(&b[k]);
    /* F16: deployed changes nothing, on every ISA. */
    uint16_t h[N * K];
    for (int i = 0; i < N * K; i++) h[i] = dsacp_f32_to_f16(frand());
    const dsacp_weight wh = {.name = "f16", .dtype = DSACP_F16, .ndim = 2, .rows = N, .cols = K, .data = h};
    float y2[T * N];
    for (int isa = DSACP_ISA_SCALAR; isa <= (int)dsacp_isa_best(); isa++) {
        CHECK_OK(dsacp_isa_set((dsacp_isa)isa));
        CHECK_OK(dsacp_linear(&wh, x, T, K, y, N, false));
        CHECK_OK(dsacp_linear(&wh, x, T, K, y2, N, true));
        CHECK(memcmp(y, y2, sizeof y) == 0);
    }
}

/* The decoders: the table against dsacp_e4m3_to_f32 on all 256 bytes, the AVX-512 row decoder
 * against the scalar one (every byte, a tail of each length). */
static void test_decode(void)
{
    uint8_t src[256 + 31];
    uint16_t a[256 + 31], b[256 + 31];
    for (int i = 0; i < 256; i++) {
        src[i] = (uint8_t)i;
        CHECKF(dsacp_e4m3_to_bf16((uint8_t)i) == e4m3_bf16((uint8_t)i), "e4m3 0x%02x: bf16 %04x, want %04x", i,
               dsacp_e4m3_to_bf16((uint8_t)i), e4m3_bf16((uint8_t)i));
    }
    for (int i = 256; i < 256 + 31; i++) src[i] = (uint8_t)u64();
#if defined(__x86_64__)
    if (dsacp_isa_best() < DSACP_ISA_AVX512) return;
    for (int n = 225; n <= 256 + 31; n++) {
        memset(a, 0xAB, sizeof a);
        memset(b, 0xAB, sizeof b);
        dsacp_e4m3_row_bf16(src, n, a);
        dsacp_e4m3_row_bf16_avx512(src, n, b);
        CHECKF(memcmp(a, b, sizeof a) == 0, "avx512 e4m3 decode of %d bytes differs", n);
    }
#else
    (void)a, (void)b;
#endif
}

/* The paths of CPUs whose VDPBF16PS is the model only on plain operands, or not at all, and
 * without AVX512-VBMI: this test again with dsacp_bf16dot_hw_level lowered (DSACP_BF16DOT_HW)
 * and the FP8 rows' VBMI decode off (DSACP_BF16DOT_NO_VBMI). */
static void test_lower_hw(const char *self)
{
    static const char *const levels[] = {"plain", "none"};
    for (int i = 0; i < 2; i++) {
        char cmd[4096];
        const int len = snprintf(cmd, sizeof cmd, "DSACP_BF16DOT_HW=%s DSACP_BF16DOT_NO_VBMI=1 '%s'", levels[i], self);
        CHECK(len > 0 && (size_t)len < sizeof cmd && !strchr(self, '\''));
        CHECKF(system(cmd) == 0, "the test with DSACP_BF16DOT_HW=%s failed", levels[i]);
    }
}

int main(int argc, char **argv)
{
    (void)argc;
    dsacp_rng_seed(&rng, 25);
    const dsacp_isa start = dsacp_isa_active();
    const int maxth = omp_get_max_threads();
    omp_set_num_threads(1);
    test_decode();
    test_chain();
    test_f32_chain_kept();
    omp_set_num_threads(maxth);
    CHECK_OK(dsacp_isa_set(start));
    if (!getenv("DSACP_BF16DOT_HW")) test_lower_hw(argv[0]);
    return test_finish("test_linear_bf16");
}
