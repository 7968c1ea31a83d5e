/* bf16dot_peak.c -- the arithmetic ceilings of the bf16-dot chain on this machine, one thread:
 * the peak rate of VDPBF16PS (zmm) against the f32 FMA (zmm and ymm), from 12 independent
 * accumulators, and the rates of the bf16-dot kernels (src/kernels/bf16dot.h) on one dot of
 * 4096 pairs held in L1 (a single 16-lane chain: latency, not throughput, bounds them), and the
 * batched micro-kernel (gemm_bf16.c, its VDPBF16PS form) on 256 rows x K 2048 x 48 tokens against
 * the peak.
 * Times are the thread's CPU time (CLOCK_THREAD_CPUTIME_ID), so a busy machine that takes the
 * core away does not count; a sibling hyperthread still does.
 * The accumulator loops are unrolled (GCC unroll) so the 12 accumulators stay in registers: as
 * plain loops gcc 12 kept them in memory (load, op, store) and measured the stores, not the units.
 * The batched product splits its rows over OpenMP threads: run with OMP_NUM_THREADS=1 for the
 * one-thread figures the peaks are.
 * usage: OMP_NUM_THREADS=1 bf16dot_peak [SECONDS_PER_ROW]   (default 0.3; best of 5 runs per row) */
#include "kernels/bf16dot.h"
#include "kernels/gemm_bf16.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__x86_64__)
#include <immintrin.h>

enum { ACC = 12 };
static volatile float sink;

static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Flops of `steps` rounds over ACC zmm FMAs: 16 lanes x 2 flops each. */
__attribute__((target("avx512f"))) static double fma512(long steps)
{
    __m512 acc[ACC];
    const __m512 a = _mm512_set1_ps(1e-3f), b = _mm512_set1_ps(0.5f);
    for (int i = 0; i < ACC; i++) acc[i] = _mm512_set1_ps((float)i);
    for (long s = 0; s < steps; s++)
        _Pragma("GCC unroll 12") for (int i = 0; i < ACC; i++) acc[i] = _mm512_fmadd_ps(a, b, acc[i]);
    float t = 0;
    for (int i = 0; i < ACC; i++) t += _mm512_reduce_add_ps(acc[i]);
    sink = t;
    return (double)steps * ACC * 16 * 2;
}

__attribute__((target("avx2,fma"))) static double fma256(long steps)
{
    __m256 acc[ACC];
    const __m256 a = _mm256_set1_ps(1e-3f), b = _mm256_set1_ps(0.5f);
    for (int i = 0; i < ACC; i++) acc[i] = _mm256_set1_ps((float)i);
    for (long s = 0; s < steps; s++)
        _Pragma("GCC unroll 12") for (int i = 0; i < ACC; i++) acc[i] = _mm256_fmadd_ps(a, b, acc[i]);
    float out[8], t = 0;
    for (int i = 0; i < ACC; i++) {
        _mm256_storeu_ps(out, acc[i]);
        for (int l = 0; l < 8; l++) t += out[l];
    }
    sink = t;
    return (double)steps * ACC * 8 * 2;
}

/* VDPBF16PS: 16 lanes x 2 products x 2 flops. */
__attribute__((target("avx512f,avx512bf16"))) static double dpbf16(long steps)
{
    __m512 acc[ACC];
    const __m512bh a = (__m512bh)_mm512_set1_epi32(0x3a833a83), b = (__m512bh)_mm512_set1_epi32(0x3f003f00);
    for (int i = 0; i < ACC; i++) acc[i] = _mm512_set1_ps((float)i);
    for (long s = 0; s < steps; s++)
        _Pragma("GCC unroll 12") for (int i = 0; i < ACC; i++) acc[i] = _mm512_dpbf16_ps(acc[i], a, b);
    float t = 0;
    for (int i = 0; i < ACC; i++) t += _mm512_reduce_add_ps(acc[i]);
    sink = t;
    return (double)steps * ACC * 16 * 4;
}

enum { PAIRS = 4096 };
static uint16_t va[2 * PAIRS], vb[2 * PAIRS];

static double run_dot(int which, long steps)
{
    float t = 0;
    for (long s = 0; s < steps; s++) {
        switch (which) {
        case 0: t += dsacp_bf16dot_scalar(va, vb, PAIRS); break;
        case 1: t += dsacp_bf16dot_avx2(va, vb, PAIRS, true); break;
        case 2: t += dsacp_bf16dot_avx2(va, vb, PAIRS, false); break;
        default: t += dsacp_bf16dot_avx512bf16(va, vb, PAIRS); break;
        }
    }
    sink = t;
    return (double)steps * PAIRS * 4;
}

enum { GN = 256, GK = 2048, GT = 48 };
static void *gpacked, *gws;
static uint16_t *gx;
static float *gy;

static double run_gemm(long steps)
{
    for (long s = 0; s < steps; s++)
        if (dsacp_bf16gemm_as(DSACP_BF16GEMM_DPBF16, gpacked, GN, GK, gx, GT, GK, gy, GN, gws,
                              dsacp_bf16gemm_ws_bytes(GK, GT))) return 0;
    sink = gy[0];
    return (double)steps * 2.0 * GN * GK * GT;
}

/* Packs a random-looking weight and token set for run_gemm. */
static void gemm_setup(void)
{
    uint16_t *w = malloc((size_t)GN * GK * sizeof(uint16_t));
    gx = malloc((size_t)GT * GK * sizeof(uint16_t));
    gy = malloc((size_t)GT * GN * sizeof(float));
    for (long i = 0; i < (long)GN * GK; i++) w[i] = (uint16_t)(0x3c00 + (i * 2654435761u >> 7) % 0x600);
    for (long i = 0; i < (long)GT * GK; i++) gx[i] = (uint16_t)(0x3c00 + (i * 40503u >> 3) % 0x600);
    gpacked = malloc(dsacp_bf16gemm_pack_bytes(GN, GK));
    gws = malloc(dsacp_bf16gemm_ws_bytes(GK, GT));
    dsacp_bf16gemm_pack(w, GN, GK, GK, gpacked);
    free(w);
}

/* Best GFLOP/s of 5 runs of about `secs` each. */
static double rate(double (*f)(long), int which, double secs)
{
    long steps = 16;
    double best = 0;
    for (int rep = 0; rep < 6; rep++) {
        const double t0 = cpu_now();
        const double flops = f ? f(steps) : run_dot(which, steps);
        const double dt = cpu_now() - t0;
        if (rep > 0 && flops / dt / 1e9 > best) best = flops / dt / 1e9;
        steps = (long)((double)steps * secs / (dt > 1e-6 ? dt : 1e-6)) + 1; /* the first run sizes the rest */
    }
    return best;
}

/* ---- the block API (gemm_bf16.h) on q_a's shape, K 7168: BN rows (8 blocks) x T tokens ---- */
enum { BN = 256, BK = 7168 };
static void *bblk, *btok;
static float *by, bscales[BK / 128 + 1];
static int64_t bT;
static int bform, bfold;

static int bpanel; /* blocks per call: 1 runs dsacp_bf16gemm_block */

static double run_blocks(long steps)
{
    const size_t bb = dsacp_bf16gemm_block_bytes(BK);
    const float *sc[8] = {bscales, bscales, bscales, bscales, bscales, bscales, bscales, bscales};
    for (long s = 0; s < steps; s++)
        for (int b = 0; b < BN / 32; b += bpanel)
            if (bpanel == 1)
                dsacp_bf16gemm_block(bform, (unsigned char *)bblk + b * bb, 32, BK, btok, bT, bfold ? bscales : NULL,
                                     64, by + b * 32, BN);
            else
                dsacp_bf16gemm_panel(bform, (unsigned char *)bblk + b * bb, bpanel, 32 * bpanel, BK, btok, bT,
                                     bfold ? sc : NULL, 64, by + b * 32, BN);
    sink = by[0];
    return (double)steps * 2.0 * BN * BK * (double)bT;
}

static uint16_t *bx;
static double run_pack_tokens(long steps)
{
    for (long s = 0; s < steps; s++) dsacp_bf16gemm_pack_tokens(bx, bT, BK, BK, btok);
    return (double)steps * 2.0 * BN * BK * (double)bT; /* the flops of the product it serves */
}

static uint16_t *bw;
static double run_pack_block(long steps)
{
    const dsacp_weight w = {.name = "w", .dtype = DSACP_BF16, .ndim = 2, .rows = BN, .cols = BK, .data = bw};
    for (long s = 0; s < steps; s++)
        for (int b = 0; b < BN / 32; b++)
            dsacp_bf16gemm_pack_block(&w, 32 * b, (unsigned char *)bblk + b * dsacp_bf16gemm_block_bytes(BK));
    return (double)steps * 2.0 * BN * BK * (double)bT;
}

/* The block product's rates at T = 16, 256, 2048 in each form this CPU runs (no fold and the
 * fold of 128-column blocks), block by block and in panels (dsacp_bf16gemm_panel), and what packing costs at the same T: the rate the product would
 * have if it did nothing but pack (the tokens once, the blocks once per call). */
static void block_rates(double secs, double f512)
{
    bw = malloc((size_t)BN * BK * sizeof *bw);
    bx = malloc((size_t)2048 * BK * sizeof *bx);
    by = malloc((size_t)2048 * BN * sizeof *by);
    bblk = malloc(BN / 32 * dsacp_bf16gemm_block_bytes(BK));
    btok = aligned_alloc(64, (dsacp_bf16gemm_tokens_bytes(BK, 2048) + 63) / 64 * 64);
    for (long i = 0; i < (long)BN * BK; i++) bw[i] = (uint16_t)(0x3c00 + (i * 2654435761u >> 7) % 0x600);
    for (long i = 0; i < 2048L * BK; i++) bx[i] = (uint16_t)(0x3c00 + (i * 40503u >> 3) % 0x600);
    for (int j = 0; j <= BK / 128; j++) bscales[j] = 0x1p-8f * (float)(j + 1);
    static const int64_t Ts[] = {16, 256, 2048};
    static const char *names[] = {"", "fma", "dpbf16", "avx2"};
    for (int i = 0; i < 3; i++) {
        bT = Ts[i];
        run_pack_block(1);
        const double pb = rate(run_pack_block, 0, secs), pt = rate(run_pack_tokens, 0, secs);
        printf("block API T %4lld: packing alone would run at: blocks %8.1f, tokens %8.1f GFLOP/s\n", (long long)bT,
               pb, pt);
        for (bform = DSACP_BF16GEMM_FMA; bform <= DSACP_BF16GEMM_AVX2; bform++)
            for (bfold = 0; bfold < 2; bfold++) {
                if (bform == DSACP_BF16GEMM_FMA && dsacp_isa_best() < DSACP_ISA_AVX512) continue;
                if (bform == DSACP_BF16GEMM_DPBF16 && dsacp_bf16dot_hw_level() == DSACP_BF16DOT_HW_NONE) continue;
                bpanel = 1;
                const double g = rate(run_blocks, 0, secs);
                bpanel = dsacp_bf16gemm_panel_blocks(BK);
                const double gp = rate(run_blocks, 0, secs);
                printf("block API T %4lld %-6s %-7s %8.1f GFLOP/s  (%.2fx the f32 FMA zmm peak); panels of %d blocks "
                       "%8.1f (%.2fx)\n", (long long)bT, names[bform], bfold ? "fold" : "no fold", g,
                       f512 > 0 ? g / f512 : 0.0, bpanel, gp, f512 > 0 ? gp / f512 : 0.0);
            }
    }
    free(bw), free(bx), free(by), free(bblk), free(btok);
}

int main(int argc, char **argv)
{
    const double secs = argc > 1 ? atof(argv[1]) : 0.3;
    const bool blocks_only = argc > 2 && !strcmp(argv[2], "blocks");
    if (dsacp_isa_best() < DSACP_ISA_AVX2) {
        printf("no AVX2 on this CPU: nothing to measure\n");
        return 0;
    }
    for (int i = 0; i < 2 * PAIRS; i++) { /* bf16 values in [0.5, 2): the plain path applies */
        va[i] = (uint16_t)(0x3f00 + (i * 37) % 0x100);
        vb[i] = (uint16_t)(0x3f00 + (i * 91) % 0x100);
    }
    const double f256 = rate(fma256, 0, secs);
    printf("f32 FMA ymm peak            %8.1f GFLOP/s\n", f256);
    double f512 = 0;
    if (dsacp_isa_best() == DSACP_ISA_AVX512) {
        f512 = rate(fma512, 0, secs);
        printf("f32 FMA zmm peak            %8.1f GFLOP/s\n", f512);
    }
    if (blocks_only) {
        block_rates(secs, f512);
        return 0;
    }
    if (dsacp_cpu_has_avx512bf16()) {
        const double bf = rate(dpbf16, 0, secs);
        printf("VDPBF16PS zmm peak          %8.1f GFLOP/s  (%.2fx the f32 FMA zmm peak)\n", bf, bf / f512);
        if (dsacp_bf16dot_hw_level() == DSACP_BF16DOT_HW_ALL) {
            gemm_setup();
            const double g = rate(run_gemm, 0, secs);
            printf("bf16 GEMM %dx%dx%d        %8.1f GFLOP/s  (%.2fx the VDPBF16PS peak)\n", GN, GK, GT, g, g / bf);
        }
    } else {
        printf("VDPBF16PS: this CPU has no AVX512-BF16\n");
    }
    static const char *names[] = {"model (scalar)", "AVX2 plain", "AVX2 DAZ/FTZ", "AVX512-BF16"};
    const int kinds = dsacp_bf16dot_hw_level() == DSACP_BF16DOT_HW_ALL ? 4 : 3;
    for (int k = 0; k < kinds; k++)
        printf("one dot of %d pairs, %-15s %7.2f GFLOP/s\n", PAIRS, names[k], rate(NULL, k, k == 0 ? secs / 4 : secs));
    return 0;
}
#else
int main(void)
{
    printf("bf16dot_peak: x86-64 only\n");
    return 0;
}
#endif
