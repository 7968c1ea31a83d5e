/*
 * gemm_bf16_x86.c -- the register tiles of the batched bf16-dot product (gemm_bf16.h): model
 * lane l of every output is a GEMM of its own over the pairs p = l (mod 16) in increasing p, so a
 * tile of 32 rows x up to 12 tokens runs one lane's chains over the block ([l][q][32] dwords),
 * the tokens broadcast. Three forms, each the model's bits on the operands it is for:
 *   FMA (zmm) and AVX2 (ymm), plain operands (dsacp_bf16dot_plain_ok: DAZ and FTZ never act): per
 *     pair the high elements' product, then the low ones', each one fused f32 FMA (a product of
 *     two bf16 is exact); the weights split in registers (high: & 0xFFFF0000, low: << 16), the
 *     tokens read from their f32 split;
 *   DPBF16: VDPBF16PS on the pairs (the instruction is the model where hw_level says so).
 * With scales (the fold), each lane's partial restarts from +0 every bq steps and is folded into
 * the lane's total, tot = fma(b, scale, tot), one IEEE FMA as the model's fmaf. The FMA form's
 * full groups (12 tokens) run micro-kernels in asm (fixed registers, prefetch across pages), the
 * fold's keeping the totals in registers; the other tiles are intrinsics. Also the block's
 * packing (16 x 16 transposes, F8 decoded in registers) and the trees, which sum the 16 lanes in
 * IEEE adds in the model's order. Calls nothing.
 */
#include "kernels/gemm_bf16.h"

#if defined(__x86_64__)
#include <immintrin.h>
#include <string.h>

enum { ROWS = DSACP_BF16GEMM_ROWS, GROUP = DSACP_BF16GEMM_GROUP, LANES = 16, DPT = 6, YT = 4 };

#define T512 __attribute__((target("avx512f")))
#define TBF16 __attribute__((target("avx512f,avx512bf16")))
#define TAVX2 __attribute__((target("avx2,fma")))
#define INL __attribute__((always_inline)) inline

/* The steps of column block j: [q0, q1). */
static inline int64_t seg_end(int64_t q0, int64_t seg, int64_t Q) { return q0 + seg < Q ? q0 + seg : Q; }

/* ---- zmm FMA ---- */

/* Lane chains of NT (= nb) tokens: wl the lane's [Q][32] weights, xl its [Q][nb][2] tokens, tl
 * the lane's tile ([t][32]). */
T512 static INL void fma_lane(const dsacp_bf16gemm_group *g, const uint32_t *wl, const float *xl, const int NT,
                              float *tl)
{
    __m512 acc[2][GROUP];
    const __m512i himask = _mm512_set1_epi32((int)0xFFFF0000u);
    const int64_t Q = g->Q, seg = g->scales ? g->bq : Q, nb = g->nb;
    if (g->scales)
        for (int t = 0; t < NT; t++) _mm512_storeu_ps(tl + t * ROWS, _mm512_setzero_ps()), _mm512_storeu_ps(tl + t * ROWS + 16, _mm512_setzero_ps());
    for (int64_t q0 = 0, j = 0; q0 < Q; q0 += seg, j++) {
        const int64_t q1 = seg_end(q0, seg, Q);
#pragma GCC unroll 12
        for (int t = 0; t < NT; t++) acc[0][t] = acc[1][t] = _mm512_setzero_ps();
        for (int64_t q = q0; q < q1; q++) {
            const float *xq = xl + 2 * q * nb;
            const __m512 h0 = _mm512_castsi512_ps(_mm512_and_si512(_mm512_loadu_si512(wl + q * ROWS), himask));
            const __m512 h1 = _mm512_castsi512_ps(_mm512_and_si512(_mm512_loadu_si512(wl + q * ROWS + 16), himask));
#pragma GCC unroll 12
            for (int t = 0; t < NT; t++) {
                const __m512 xh = _mm512_set1_ps(xq[2 * t]);
                acc[0][t] = _mm512_fmadd_ps(h0, xh, acc[0][t]);
                acc[1][t] = _mm512_fmadd_ps(h1, xh, acc[1][t]);
            }
            const __m512 l0 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_loadu_si512(wl + q * ROWS), 16));
            const __m512 l1 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_loadu_si512(wl + q * ROWS + 16), 16));
#pragma GCC unroll 12
            for (int t = 0; t < NT; t++) {
                const __m512 xo = _mm512_set1_ps(xq[2 * t + 1]);
                acc[0][t] = _mm512_fmadd_ps(l0, xo, acc[0][t]);
                acc[1][t] = _mm512_fmadd_ps(l1, xo, acc[1][t]);
            }
        }
        if (g->scales) {
            const __m512 s = _mm512_set1_ps(g->scales[j]);
#pragma GCC unroll 12
            for (int t = 0; t < NT; t++)
                for (int h = 0; h < 2; h++)
                    _mm512_storeu_ps(tl + t * ROWS + 16 * h,
                                     _mm512_fmadd_ps(acc[h][t], s, _mm512_loadu_ps(tl + t * ROWS + 16 * h)));
        } else {
#pragma GCC unroll 12
            for (int t = 0; t < NT; t++)
                _mm512_storeu_ps(tl + t * ROWS, acc[0][t]), _mm512_storeu_ps(tl + t * ROWS + 16, acc[1][t]);
        }
    }
}

typedef void (*lane_fn)(const dsacp_bf16gemm_group *, const uint32_t *, const void *, float *);
#define FMA_LANE(NT)                                                                                               \
    T512 static void fma_lane##NT(const dsacp_bf16gemm_group *g, const uint32_t *wl, const void *xl, float *tl)     \
    {                                                                                                             \
        fma_lane(g, wl, (const float *)xl, NT, tl);                                                               \
    }
FMA_LANE(1) FMA_LANE(2) FMA_LANE(3) FMA_LANE(4) FMA_LANE(5) FMA_LANE(6)
FMA_LANE(7) FMA_LANE(8) FMA_LANE(9) FMA_LANE(10) FMA_LANE(11) FMA_LANE(12)
static const lane_fn fma_lanes[GROUP + 1] = {NULL,       fma_lane1,  fma_lane2, fma_lane3, fma_lane4,
                                             fma_lane5,  fma_lane6,  fma_lane7, fma_lane8, fma_lane9,
                                             fma_lane10, fma_lane11, fma_lane12};

/* The micro-kernel of a full group (12 tokens) in asm, its registers fixed: GCC's allocation of
 * the 24 accumulators moved them between registers every step (a dozen extra moves per 48 FMAs
 * on the FMA ports). Text generated: accumulators zmm0..23, weights zmm24..27, mask zmm28. */
/* Zero the 24 accumulators zmm0..zmm23 (token t: zmm 2t rows 0-15, zmm 2t+1 rows 16-31). */
#define FMA12_ZERO \
    "vpxord %%zmm0, %%zmm0, %%zmm0\n\tvpxord %%zmm1, %%zmm1, %%zmm1\n\tvpxord %%zmm2, %%zmm2, %%zmm2\n\t" \
    "vpxord %%zmm3, %%zmm3, %%zmm3\n\tvpxord %%zmm4, %%zmm4, %%zmm4\n\tvpxord %%zmm5, %%zmm5, %%zmm5\n\t" \
    "vpxord %%zmm6, %%zmm6, %%zmm6\n\tvpxord %%zmm7, %%zmm7, %%zmm7\n\tvpxord %%zmm8, %%zmm8, %%zmm8\n\t" \
    "vpxord %%zmm9, %%zmm9, %%zmm9\n\tvpxord %%zmm10, %%zmm10, %%zmm10\n\tvpxord %%zmm11, %%zmm11, %%zmm11\n\t" \
    "vpxord %%zmm12, %%zmm12, %%zmm12\n\tvpxord %%zmm13, %%zmm13, %%zmm13\n\tvpxord %%zmm14, %%zmm14, %%zmm14\n\t" \
    "vpxord %%zmm15, %%zmm15, %%zmm15\n\tvpxord %%zmm16, %%zmm16, %%zmm16\n\tvpxord %%zmm17, %%zmm17, %%zmm17\n\t" \
    "vpxord %%zmm18, %%zmm18, %%zmm18\n\tvpxord %%zmm19, %%zmm19, %%zmm19\n\tvpxord %%zmm20, %%zmm20, %%zmm20\n\t" \
    "vpxord %%zmm21, %%zmm21, %%zmm21\n\tvpxord %%zmm22, %%zmm22, %%zmm22\n\tvpxord %%zmm23, %%zmm23, %%zmm23\n\t"

/* One step: the weights split (zmm24/25 high, zmm26/27 low; zmm28 the high mask), then per token
 * the high products, then the low ones (zmm29..31 the broadcasts). */
#define FMA12_STEP \
    "vpandd (%[w]), %%zmm28, %%zmm24\n\tvpandd 64(%[w]), %%zmm28, %%zmm25\n\t" \
    "vpslld $16, (%[w]), %%zmm26\n\tvpslld $16, 64(%[w]), %%zmm27\n\t" \
    "vbroadcastss 0(%[x]), %%zmm29\n\tvfmadd231ps %%zmm24, %%zmm29, %%zmm0\n\tvfmadd231ps %%zmm25, %%zmm29, %%zmm1\n\t" \
    "vbroadcastss 8(%[x]), %%zmm30\n\tvfmadd231ps %%zmm24, %%zmm30, %%zmm2\n\tvfmadd231ps %%zmm25, %%zmm30, %%zmm3\n\t" \
    "vbroadcastss 16(%[x]), %%zmm31\n\tvfmadd231ps %%zmm24, %%zmm31, %%zmm4\n\tvfmadd231ps %%zmm25, %%zmm31, %%zmm5\n\t" \
    "vbroadcastss 24(%[x]), %%zmm29\n\tvfmadd231ps %%zmm24, %%zmm29, %%zmm6\n\tvfmadd231ps %%zmm25, %%zmm29, %%zmm7\n\t" \
    "vbroadcastss 32(%[x]), %%zmm30\n\tvfmadd231ps %%zmm24, %%zmm30, %%zmm8\n\tvfmadd231ps %%zmm25, %%zmm30, %%zmm9\n\t" \
    "vbroadcastss 40(%[x]), %%zmm31\n\tvfmadd231ps %%zmm24, %%zmm31, %%zmm10\n\tvfmadd231ps %%zmm25, %%zmm31, %%zmm11\n\t" \
    "vbroadcastss 48(%[x]), %%zmm29\n\tvfmadd231ps %%zmm24, %%zmm29, %%zmm12\n\tvfmadd231ps %%zmm25, %%zmm29, %%zmm13\n\t" \
    "vbroadcastss 56(%[x]), %%zmm30\n\tvfmadd231ps %%zmm24, %%zmm30, %%zmm14\n\tvfmadd231ps %%zmm25, %%zmm30, %%zmm15\n\t" \
    "vbroadcastss 64(%[x]), %%zmm31\n\tvfmadd231ps %%zmm24, %%zmm31, %%zmm16\n\tvfmadd231ps %%zmm25, %%zmm31, %%zmm17\n\t" \
    "vbroadcastss 72(%[x]), %%zmm29\n\tvfmadd231ps %%zmm24, %%zmm29, %%zmm18\n\tvfmadd231ps %%zmm25, %%zmm29, %%zmm19\n\t" \
    "vbroadcastss 80(%[x]), %%zmm30\n\tvfmadd231ps %%zmm24, %%zmm30, %%zmm20\n\tvfmadd231ps %%zmm25, %%zmm30, %%zmm21\n\t" \
    "vbroadcastss 88(%[x]), %%zmm31\n\tvfmadd231ps %%zmm24, %%zmm31, %%zmm22\n\tvfmadd231ps %%zmm25, %%zmm31, %%zmm23\n\t" \
    "vbroadcastss 4(%[x]), %%zmm29\n\tvfmadd231ps %%zmm26, %%zmm29, %%zmm0\n\tvfmadd231ps %%zmm27, %%zmm29, %%zmm1\n\t" \
    "vbroadcastss 12(%[x]), %%zmm30\n\tvfmadd231ps %%zmm26, %%zmm30, %%zmm2\n\tvfmadd231ps %%zmm27, %%zmm30, %%zmm3\n\t" \
    "vbroadcastss 20(%[x]), %%zmm31\n\tvfmadd231ps %%zmm26, %%zmm31, %%zmm4\n\tvfmadd231ps %%zmm27, %%zmm31, %%zmm5\n\t" \
    "vbroadcastss 28(%[x]), %%zmm29\n\tvfmadd231ps %%zmm26, %%zmm29, %%zmm6\n\tvfmadd231ps %%zmm27, %%zmm29, %%zmm7\n\t" \
    "vbroadcastss 36(%[x]), %%zmm30\n\tvfmadd231ps %%zmm26, %%zmm30, %%zmm8\n\tvfmadd231ps %%zmm27, %%zmm30, %%zmm9\n\t" \
    "vbroadcastss 44(%[x]), %%zmm31\n\tvfmadd231ps %%zmm26, %%zmm31, %%zmm10\n\tvfmadd231ps %%zmm27, %%zmm31, %%zmm11\n\t" \
    "vbroadcastss 52(%[x]), %%zmm29\n\tvfmadd231ps %%zmm26, %%zmm29, %%zmm12\n\tvfmadd231ps %%zmm27, %%zmm29, %%zmm13\n\t" \
    "vbroadcastss 60(%[x]), %%zmm30\n\tvfmadd231ps %%zmm26, %%zmm30, %%zmm14\n\tvfmadd231ps %%zmm27, %%zmm30, %%zmm15\n\t" \
    "vbroadcastss 68(%[x]), %%zmm31\n\tvfmadd231ps %%zmm26, %%zmm31, %%zmm16\n\tvfmadd231ps %%zmm27, %%zmm31, %%zmm17\n\t" \
    "vbroadcastss 76(%[x]), %%zmm29\n\tvfmadd231ps %%zmm26, %%zmm29, %%zmm18\n\tvfmadd231ps %%zmm27, %%zmm29, %%zmm19\n\t" \
    "vbroadcastss 84(%[x]), %%zmm30\n\tvfmadd231ps %%zmm26, %%zmm30, %%zmm20\n\tvfmadd231ps %%zmm27, %%zmm30, %%zmm21\n\t" \
    "vbroadcastss 92(%[x]), %%zmm31\n\tvfmadd231ps %%zmm26, %%zmm31, %%zmm22\n\tvfmadd231ps %%zmm27, %%zmm31, %%zmm23\n\t"

/* The accumulators to out[t][32]. */
#define FMA12_STORE \
    "vmovups %%zmm0, 0(%[out])\n\tvmovups %%zmm1, 64(%[out])\n\tvmovups %%zmm2, 128(%[out])\n\t" \
    "vmovups %%zmm3, 192(%[out])\n\tvmovups %%zmm4, 256(%[out])\n\tvmovups %%zmm5, 320(%[out])\n\t" \
    "vmovups %%zmm6, 384(%[out])\n\tvmovups %%zmm7, 448(%[out])\n\tvmovups %%zmm8, 512(%[out])\n\t" \
    "vmovups %%zmm9, 576(%[out])\n\tvmovups %%zmm10, 640(%[out])\n\tvmovups %%zmm11, 704(%[out])\n\t" \
    "vmovups %%zmm12, 768(%[out])\n\tvmovups %%zmm13, 832(%[out])\n\tvmovups %%zmm14, 896(%[out])\n\t" \
    "vmovups %%zmm15, 960(%[out])\n\tvmovups %%zmm16, 1024(%[out])\n\tvmovups %%zmm17, 1088(%[out])\n\t" \
    "vmovups %%zmm18, 1152(%[out])\n\tvmovups %%zmm19, 1216(%[out])\n\tvmovups %%zmm20, 1280(%[out])\n\t" \
    "vmovups %%zmm21, 1344(%[out])\n\tvmovups %%zmm22, 1408(%[out])\n\tvmovups %%zmm23, 1472(%[out])\n\t"

/* out[t][32] = fma(accumulator, *s, out[t][32]) (zmm29: the scale). */
#define FMA12_FOLD \
    "vbroadcastss (%[s]), %%zmm29\n\t" \
    "vfmadd213ps 0(%[out]), %%zmm29, %%zmm0\n\tvmovups %%zmm0, 0(%[out])\n\t" \
    "vfmadd213ps 64(%[out]), %%zmm29, %%zmm1\n\tvmovups %%zmm1, 64(%[out])\n\t" \
    "vfmadd213ps 128(%[out]), %%zmm29, %%zmm2\n\tvmovups %%zmm2, 128(%[out])\n\t" \
    "vfmadd213ps 192(%[out]), %%zmm29, %%zmm3\n\tvmovups %%zmm3, 192(%[out])\n\t" \
    "vfmadd213ps 256(%[out]), %%zmm29, %%zmm4\n\tvmovups %%zmm4, 256(%[out])\n\t" \
    "vfmadd213ps 320(%[out]), %%zmm29, %%zmm5\n\tvmovups %%zmm5, 320(%[out])\n\t" \
    "vfmadd213ps 384(%[out]), %%zmm29, %%zmm6\n\tvmovups %%zmm6, 384(%[out])\n\t" \
    "vfmadd213ps 448(%[out]), %%zmm29, %%zmm7\n\tvmovups %%zmm7, 448(%[out])\n\t" \
    "vfmadd213ps 512(%[out]), %%zmm29, %%zmm8\n\tvmovups %%zmm8, 512(%[out])\n\t" \
    "vfmadd213ps 576(%[out]), %%zmm29, %%zmm9\n\tvmovups %%zmm9, 576(%[out])\n\t" \
    "vfmadd213ps 640(%[out]), %%zmm29, %%zmm10\n\tvmovups %%zmm10, 640(%[out])\n\t" \
    "vfmadd213ps 704(%[out]), %%zmm29, %%zmm11\n\tvmovups %%zmm11, 704(%[out])\n\t" \
    "vfmadd213ps 768(%[out]), %%zmm29, %%zmm12\n\tvmovups %%zmm12, 768(%[out])\n\t" \
    "vfmadd213ps 832(%[out]), %%zmm29, %%zmm13\n\tvmovups %%zmm13, 832(%[out])\n\t" \
    "vfmadd213ps 896(%[out]), %%zmm29, %%zmm14\n\tvmovups %%zmm14, 896(%[out])\n\t" \
    "vfmadd213ps 960(%[out]), %%zmm29, %%zmm15\n\tvmovups %%zmm15, 960(%[out])\n\t" \
    "vfmadd213ps 1024(%[out]), %%zmm29, %%zmm16\n\tvmovups %%zmm16, 1024(%[out])\n\t" \
    "vfmadd213ps 1088(%[out]), %%zmm29, %%zmm17\n\tvmovups %%zmm17, 1088(%[out])\n\t" \
    "vfmadd213ps 1152(%[out]), %%zmm29, %%zmm18\n\tvmovups %%zmm18, 1152(%[out])\n\t" \
    "vfmadd213ps 1216(%[out]), %%zmm29, %%zmm19\n\tvmovups %%zmm19, 1216(%[out])\n\t" \
    "vfmadd213ps 1280(%[out]), %%zmm29, %%zmm20\n\tvmovups %%zmm20, 1280(%[out])\n\t" \
    "vfmadd213ps 1344(%[out]), %%zmm29, %%zmm21\n\tvmovups %%zmm21, 1344(%[out])\n\t" \
    "vfmadd213ps 1408(%[out]), %%zmm29, %%zmm22\n\tvmovups %%zmm22, 1408(%[out])\n\t" \
    "vfmadd213ps 1472(%[out]), %%zmm29, %%zmm23\n\tvmovups %%zmm23, 1472(%[out])\n\t"

/* The steps, the tokens and weights prefetched PREFETCH bytes ahead (the hardware's streams stop at
 * each 4 KB page: at T 2048 the tokens come from memory, and a block stalled on every page). */
#define PREFETCH "prefetcht0 1536(%[x])\n\tprefetcht0 2048(%[w])\n\t"
#define FMA12_LOOP "1:\n\t" PREFETCH FMA12_STEP "add $128, %[w]\n\tadd $96, %[x]\n\tdec %[n]\n\tjnz 1b\n\t"
#define ZMM_CLOBBERS                                                                                              \
    "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", \
        "xmm14", "xmm15", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", "xmm23", "xmm24", "xmm25",   \
        "xmm26", "xmm27", "xmm28", "xmm29", "xmm30", "xmm31"

static const uint32_t himask32 = 0xFFFF0000u;

/* fma_lane for 12 tokens without the fold: the same operations in the same order. */
T512 static void fma_lane_asm(const dsacp_bf16gemm_group *g, const uint32_t *wl, const float *xl, float *tl)
{
    int64_t n = g->Q; /* >= 1 */
    __asm__ volatile("vpbroadcastd %[m], %%zmm28\n\t" FMA12_ZERO FMA12_LOOP FMA12_STORE
                     : [w] "+r"(wl), [x] "+r"(xl), [n] "+r"(n)
                     : [out] "r"(tl), [m] "m"(himask32)
                     : "cc", "memory", ZMM_CLOBBERS);
}

/* The fold's micro-kernel: 32 rows x 6 tokens, the partials zmm0..11 (token t: zmm 2t rows 0-15,
 * 2t+1 rows 16-31), the totals zmm12..23 kept in registers across the column blocks; weights
 * zmm24/25 (high) and zmm26/27 (low), mask zmm28, scale zmm29, broadcasts zmm30/31. The totals
 * from and to out[t][32]. */
#define FOLD6_LOAD \
    "vmovups 0(%[out]), %%zmm12\n\tvmovups 64(%[out]), %%zmm13\n\t" \
    "vmovups 128(%[out]), %%zmm14\n\tvmovups 192(%[out]), %%zmm15\n\t" \
    "vmovups 256(%[out]), %%zmm16\n\tvmovups 320(%[out]), %%zmm17\n\t" \
    "vmovups 384(%[out]), %%zmm18\n\tvmovups 448(%[out]), %%zmm19\n\t" \
    "vmovups 512(%[out]), %%zmm20\n\tvmovups 576(%[out]), %%zmm21\n\t" \
    "vmovups 640(%[out]), %%zmm22\n\tvmovups 704(%[out]), %%zmm23\n\t"
#define FOLD6_ZERO \
    "vpxord %%zmm0, %%zmm0, %%zmm0\n\tvpxord %%zmm1, %%zmm1, %%zmm1\n\tvpxord %%zmm2, %%zmm2, %%zmm2\n\t" \
    "vpxord %%zmm3, %%zmm3, %%zmm3\n\tvpxord %%zmm4, %%zmm4, %%zmm4\n\tvpxord %%zmm5, %%zmm5, %%zmm5\n\t" \
    "vpxord %%zmm6, %%zmm6, %%zmm6\n\tvpxord %%zmm7, %%zmm7, %%zmm7\n\tvpxord %%zmm8, %%zmm8, %%zmm8\n\t" \
    "vpxord %%zmm9, %%zmm9, %%zmm9\n\tvpxord %%zmm10, %%zmm10, %%zmm10\n\tvpxord %%zmm11, %%zmm11, %%zmm11\n\t"
#define FOLD6_STEP \
    "vpandd (%[w]), %%zmm28, %%zmm24\n\tvpandd 64(%[w]), %%zmm28, %%zmm25\n\t" \
    "vpslld $16, (%[w]), %%zmm26\n\tvpslld $16, 64(%[w]), %%zmm27\n\t" \
    "vbroadcastss 0(%[x]), %%zmm30\n\tvfmadd231ps %%zmm24, %%zmm30, %%zmm0\n\tvfmadd231ps %%zmm25, %%zmm30, %%zmm1\n\t" \
    "vbroadcastss 8(%[x]), %%zmm31\n\tvfmadd231ps %%zmm24, %%zmm31, %%zmm2\n\tvfmadd231ps %%zmm25, %%zmm31, %%zmm3\n\t" \
    "vbroadcastss 16(%[x]), %%zmm30\n\tvfmadd231ps %%zmm24, %%zmm30, %%zmm4\n\tvfmadd231ps %%zmm25, %%zmm30, %%zmm5\n\t" \
    "vbroadcastss 24(%[x]), %%zmm31\n\tvfmadd231ps %%zmm24, %%zmm31, %%zmm6\n\tvfmadd231ps %%zmm25, %%zmm31, %%zmm7\n\t" \
    "vbroadcastss 32(%[x]), %%zmm30\n\tvfmadd231ps %%zmm24, %%zmm30, %%zmm8\n\tvfmadd231ps %%zmm25, %%zmm30, %%zmm9\n\t" \
    "vbroadcastss 40(%[x]), %%zmm31\n\tvfmadd231ps %%zmm24, %%zmm31, %%zmm10\n\tvfmadd231ps %%zmm25, %%zmm31, %%zmm11\n\t" \
    "vbroadcastss 4(%[x]), %%zmm30\n\tvfmadd231ps %%zmm26, %%zmm30, %%zmm0\n\tvfmadd231ps %%zmm27, %%zmm30, %%zmm1\n\t" \
    "vbroadcastss 12(%[x]), %%zmm31\n\tvfmadd231ps %%zmm26, %%zmm31, %%zmm2\n\tvfmadd231ps %%zmm27, %%zmm31, %%zmm3\n\t" \
    "vbroadcastss 20(%[x]), %%zmm30\n\tvfmadd231ps %%zmm26, %%zmm30, %%zmm4\n\tvfmadd231ps %%zmm27, %%zmm30, %%zmm5\n\t" \
    "vbroadcastss 28(%[x]), %%zmm31\n\tvfmadd231ps %%zmm26, %%zmm31, %%zmm6\n\tvfmadd231ps %%zmm27, %%zmm31, %%zmm7\n\t" \
    "vbroadcastss 36(%[x]), %%zmm30\n\tvfmadd231ps %%zmm26, %%zmm30, %%zmm8\n\tvfmadd231ps %%zmm27, %%zmm30, %%zmm9\n\t" \
    "vbroadcastss 44(%[x]), %%zmm31\n\tvfmadd231ps %%zmm26, %%zmm31, %%zmm10\n\tvfmadd231ps %%zmm27, %%zmm31, %%zmm11\n\t"
#define FOLD6_FOLD \
    "vbroadcastss (%[s]), %%zmm29\n\tadd $4, %[s]\n\t" \
    "vfmadd231ps %%zmm29, %%zmm0, %%zmm12\n\tvfmadd231ps %%zmm29, %%zmm1, %%zmm13\n\t" \
    "vfmadd231ps %%zmm29, %%zmm2, %%zmm14\n\tvfmadd231ps %%zmm29, %%zmm3, %%zmm15\n\t" \
    "vfmadd231ps %%zmm29, %%zmm4, %%zmm16\n\tvfmadd231ps %%zmm29, %%zmm5, %%zmm17\n\t" \
    "vfmadd231ps %%zmm29, %%zmm6, %%zmm18\n\tvfmadd231ps %%zmm29, %%zmm7, %%zmm19\n\t" \
    "vfmadd231ps %%zmm29, %%zmm8, %%zmm20\n\tvfmadd231ps %%zmm29, %%zmm9, %%zmm21\n\t" \
    "vfmadd231ps %%zmm29, %%zmm10, %%zmm22\n\tvfmadd231ps %%zmm29, %%zmm11, %%zmm23\n\t"
#define FOLD6_STORE \
    "vmovups %%zmm12, 0(%[out])\n\tvmovups %%zmm13, 64(%[out])\n\t" \
    "vmovups %%zmm14, 128(%[out])\n\tvmovups %%zmm15, 192(%[out])\n\t" \
    "vmovups %%zmm16, 256(%[out])\n\tvmovups %%zmm17, 320(%[out])\n\t" \
    "vmovups %%zmm18, 384(%[out])\n\tvmovups %%zmm19, 448(%[out])\n\t" \
    "vmovups %%zmm20, 512(%[out])\n\tvmovups %%zmm21, 576(%[out])\n\t" \
    "vmovups %%zmm22, 640(%[out])\n\tvmovups %%zmm23, 704(%[out])\n\t"

/* fma_lane for 12 tokens with the fold, 6 tokens at a time: the same operations in the same
 * order, each total in a register from the first column block to the last (kept in memory, the
 * fold's load and store cost a third of the rate). The full column blocks, then the short last. */
T512 static void fold_lane_asm(const dsacp_bf16gemm_group *g, const uint32_t *wl, const float *xl, float *tl)
{
    const int64_t Q = g->Q, bq = g->bq;
    memset(tl, 0, GROUP * ROWS * sizeof(float));
    for (int th = 0; th < 2; th++) {
        const uint32_t *w = wl;
        const float *x = xl + 2 * 6 * th, *s = g->scales;
        for (int part = 0; part < 2; part++) {
            int64_t nseg = part ? Q % bq != 0 : Q / bq, n;
            const int64_t steps = part ? Q % bq : bq;
            if (!nseg) continue;
            __asm__ volatile("vpbroadcastd %[m], %%zmm28\n\t" FOLD6_LOAD "3:\n\t" FOLD6_ZERO "mov %[steps], %[n]\n\t"
                             "1:\n\t" PREFETCH FOLD6_STEP "add $128, %[w]\n\tadd $96, %[x]\n\tdec %[n]\n\tjnz 1b\n\t" FOLD6_FOLD
                             "dec %[nseg]\n\tjnz 3b\n\t" FOLD6_STORE
                             : [w] "+r"(w), [x] "+r"(x), [s] "+r"(s), [nseg] "+r"(nseg), [n] "=&r"(n)
                             : [out] "r"(tl + 6 * th * ROWS), [steps] "r"(steps), [m] "m"(himask32)
                             : "cc", "memory", ZMM_CLOBBERS);
        }
    }
}

void dsacp_bf16gemm_group_fma(const dsacp_bf16gemm_group *g, float *tile)
{
    for (int64_t l = 0; l < LANES; l++) {
        const uint32_t *wl = g->blk + l * g->Q * ROWS;
        const float *xl = g->xs + 2 * l * g->Q * g->nb;
        if (g->nb == GROUP) (g->scales ? fold_lane_asm : fma_lane_asm)(g, wl, xl, tile + l * GROUP * ROWS);
        else fma_lanes[g->nb](g, wl, xl, tile + l * GROUP * ROWS);
    }
}

/* ---- VDPBF16PS ---- */

/* Lane chains of NT tokens (xl: the lane's pairs [Q][nb] from the subtile's first) into tl
 * ([t][32]). */
TBF16 static INL void dp_lane(const dsacp_bf16gemm_group *g, const uint32_t *wl, const uint32_t *xl, const int NT,
                              float *tl)
{
    __m512 acc[2][DPT];
    const int64_t Q = g->Q, seg = g->scales ? g->bq : Q, nb = g->nb;
    if (g->scales)
        for (int t = 0; t < NT; t++) _mm512_storeu_ps(tl + t * ROWS, _mm512_setzero_ps()), _mm512_storeu_ps(tl + t * ROWS + 16, _mm512_setzero_ps());
    for (int64_t q0 = 0, j = 0; q0 < Q; q0 += seg, j++) {
        const int64_t q1 = seg_end(q0, seg, Q);
#pragma GCC unroll 6
        for (int t = 0; t < NT; t++) acc[0][t] = acc[1][t] = _mm512_setzero_ps();
        for (int64_t q = q0; q < q1; q++) {
            const __m512bh w0 = (__m512bh)_mm512_loadu_si512(wl + q * ROWS);
            const __m512bh w1 = (__m512bh)_mm512_loadu_si512(wl + q * ROWS + 16);
            const uint32_t *xq = xl + q * nb;
#pragma GCC unroll 6
            for (int t = 0; t < NT; t++) {
                const __m512bh xb = (__m512bh)_mm512_set1_epi32((int)xq[t]);
                acc[0][t] = _mm512_dpbf16_ps(acc[0][t], w0, xb);
                acc[1][t] = _mm512_dpbf16_ps(acc[1][t], w1, xb);
            }
        }
        if (g->scales) {
            const __m512 s = _mm512_set1_ps(g->scales[j]);
#pragma GCC unroll 6
            for (int t = 0; t < NT; t++)
                for (int h = 0; h < 2; h++)
                    _mm512_storeu_ps(tl + t * ROWS + 16 * h,
                                     _mm512_fmadd_ps(acc[h][t], s, _mm512_loadu_ps(tl + t * ROWS + 16 * h)));
        } else {
#pragma GCC unroll 6
            for (int t = 0; t < NT; t++)
                _mm512_storeu_ps(tl + t * ROWS, acc[0][t]), _mm512_storeu_ps(tl + t * ROWS + 16, acc[1][t]);
        }
    }
}

typedef void (*dp_lane_fn)(const dsacp_bf16gemm_group *, const uint32_t *, const uint32_t *, float *);
#define DP_LANE(NT)                                                                                                \
    TBF16 static void dp_lane##NT(const dsacp_bf16gemm_group *g, const uint32_t *wl, const uint32_t *xl, float *tl) \
    {                                                                                                              \
        dp_lane(g, wl, xl, NT, tl);                                                                                \
    }
DP_LANE(1) DP_LANE(2) DP_LANE(3) DP_LANE(4) DP_LANE(5) DP_LANE(6)
static const dp_lane_fn dp_lanes[DPT + 1] = {NULL, dp_lane1, dp_lane2, dp_lane3, dp_lane4, dp_lane5, dp_lane6};

void dsacp_bf16gemm_group_dp(const dsacp_bf16gemm_group *g, float *tile)
{
    for (int64_t l = 0; l < LANES; l++)
        for (int t0 = 0; t0 < g->nb; t0 += DPT) {
            const int nt = g->nb - t0 < DPT ? g->nb - t0 : DPT;
            dp_lanes[nt](g, g->blk + l * g->Q * ROWS, g->xp + l * g->Q * g->nb + t0, tile + (l * GROUP + t0) * ROWS);
        }
}

/* ---- ymm FMA (AVX2) ---- */

/* Rows [16 h, 16 h + 16) of lane chains of NT tokens (xl: the lane's [Q][nb][2] tokens from the
 * subtile's first) into tl ([t][32], from row 16 h). */
TAVX2 static INL void ymm_lane(const dsacp_bf16gemm_group *g, const uint32_t *wl, const float *xl, const int NT,
                               float *tl)
{
    __m256 acc[2][YT];
    const __m256i himask = _mm256_set1_epi32((int)0xFFFF0000u);
    const int64_t Q = g->Q, seg = g->scales ? g->bq : Q, nb = g->nb;
    if (g->scales)
        for (int t = 0; t < NT; t++) _mm256_storeu_ps(tl + t * ROWS, _mm256_setzero_ps()), _mm256_storeu_ps(tl + t * ROWS + 8, _mm256_setzero_ps());
    for (int64_t q0 = 0, j = 0; q0 < Q; q0 += seg, j++) {
        const int64_t q1 = seg_end(q0, seg, Q);
#pragma GCC unroll 4
        for (int t = 0; t < NT; t++) acc[0][t] = acc[1][t] = _mm256_setzero_ps();
        for (int64_t q = q0; q < q1; q++) {
            const __m256i w0 = _mm256_loadu_si256((const __m256i *)(wl + q * ROWS));
            const __m256i w1 = _mm256_loadu_si256((const __m256i *)(wl + q * ROWS + 8));
            const __m256 h0 = _mm256_castsi256_ps(_mm256_and_si256(w0, himask));
            const __m256 h1 = _mm256_castsi256_ps(_mm256_and_si256(w1, himask));
            const __m256 l0 = _mm256_castsi256_ps(_mm256_slli_epi32(w0, 16));
            const __m256 l1 = _mm256_castsi256_ps(_mm256_slli_epi32(w1, 16));
            const float *xq = xl + 2 * q * nb;
#pragma GCC unroll 4
            for (int t = 0; t < NT; t++) {
                const __m256 xh = _mm256_broadcast_ss(xq + 2 * t), xo = _mm256_broadcast_ss(xq + 2 * t + 1);
                acc[0][t] = _mm256_fmadd_ps(h0, xh, acc[0][t]);
                acc[1][t] = _mm256_fmadd_ps(h1, xh, acc[1][t]);
                acc[0][t] = _mm256_fmadd_ps(l0, xo, acc[0][t]);
                acc[1][t] = _mm256_fmadd_ps(l1, xo, acc[1][t]);
            }
        }
        if (g->scales) {
            const __m256 s = _mm256_set1_ps(g->scales[j]);
#pragma GCC unroll 4
            for (int t = 0; t < NT; t++)
                for (int h = 0; h < 2; h++)
                    _mm256_storeu_ps(tl + t * ROWS + 8 * h,
                                     _mm256_fmadd_ps(acc[h][t], s, _mm256_loadu_ps(tl + t * ROWS + 8 * h)));
        } else {
#pragma GCC unroll 4
            for (int t = 0; t < NT; t++)
                _mm256_storeu_ps(tl + t * ROWS, acc[0][t]), _mm256_storeu_ps(tl + t * ROWS + 8, acc[1][t]);
        }
    }
}

#define YMM_LANE(NT)                                                                                               \
    TAVX2 static void ymm_lane##NT(const dsacp_bf16gemm_group *g, const uint32_t *wl, const void *xl, float *tl)    \
    {                                                                                                             \
        ymm_lane(g, wl, (const float *)xl, NT, tl);                                                               \
    }
YMM_LANE(1) YMM_LANE(2) YMM_LANE(3) YMM_LANE(4)
static const lane_fn ymm_lanes[YT + 1] = {NULL, ymm_lane1, ymm_lane2, ymm_lane3, ymm_lane4};

void dsacp_bf16gemm_group_avx2(const dsacp_bf16gemm_group *g, float *tile)
{
    for (int64_t l = 0; l < LANES; l++)
        for (int r0 = 0; r0 < ROWS; r0 += 16)
            for (int t0 = 0; t0 < g->nb; t0 += YT) {
                const int nt = g->nb - t0 < YT ? g->nb - t0 : YT;
                ymm_lanes[nt](g, g->blk + l * g->Q * ROWS + r0, g->xs + 2 * (l * g->Q * g->nb + t0),
                              tile + (l * GROUP + t0) * ROWS + r0);
            }
}

/* ---- packing a block ---- */

#define TBW __attribute__((target("avx512f,avx512bw,avx512vl")))

/* v[c] = column c of the 16 x 16 dword matrix whose row r is v[r]. */
TBW static INL void transpose16(__m512i v[16])
{
    __m512i t[16], u[16];
    for (int i = 0; i < 8; i++)
        t[2 * i] = _mm512_unpacklo_epi32(v[2 * i], v[2 * i + 1]), t[2 * i + 1] = _mm512_unpackhi_epi32(v[2 * i], v[2 * i + 1]);
    for (int i = 0; i < 4; i++) { /* u[4 i + j], 128-bit lane k: column 4 k + j of rows 4 i .. 4 i + 3 */
        u[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
    for (int j = 0; j < 4; j++) {
        const __m512i s0 = _mm512_shuffle_i32x4(u[j], u[4 + j], 0x44), s1 = _mm512_shuffle_i32x4(u[j], u[4 + j], 0xEE);
        const __m512i s2 = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0x44);
        const __m512i s3 = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0xEE);
        v[j] = _mm512_shuffle_i32x4(s0, s2, 0x88), v[4 + j] = _mm512_shuffle_i32x4(s0, s2, 0xDD);
        v[8 + j] = _mm512_shuffle_i32x4(s1, s3, 0x88), v[12 + j] = _mm512_shuffle_i32x4(s1, s3, 0xDD);
    }
}

/* 32 e4m3 bytes as bf16 words: normal codes (mag << 4) + 0x3C00, the 8 subnormal codes from a
 * table, NaN 0x7FC0, the sign on top (dsacp_e4m3_to_bf16's bits). */
TBW static INL __m512i e4m3_words(__m256i b)
{
    const __m512i x = _mm512_cvtepu8_epi16(b), mag = _mm512_and_si512(x, _mm512_set1_epi16(0x7F));
    const __m512i sub = _mm512_set_epi16(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x3C60,
                                         0x3C40, 0x3C20, 0x3C00, 0x3BC0, 0x3B80, 0x3B00, 0);
    __m512i v = _mm512_add_epi16(_mm512_slli_epi16(mag, 4), _mm512_set1_epi16(0x3C00));
    v = _mm512_mask_permutexvar_epi16(v, _mm512_cmplt_epu16_mask(mag, _mm512_set1_epi16(8)), mag, sub);
    v = _mm512_mask_mov_epi16(v, _mm512_cmpeq_epi16_mask(mag, _mm512_set1_epi16(0x7F)), _mm512_set1_epi16(0x7FC0));
    return _mm512_or_si512(v, _mm512_slli_epi16(_mm512_and_si512(x, _mm512_set1_epi16(0x80)), 8));
}

/* Elements [32 q, 32 q + 32) of row r as 16 pairs (zero past K or past the rows present). */
TBW static INL __m512i row_chunk(const dsacp_bf16gemm_rows *s, int64_t r, int64_t q)
{
    const int64_t left = s->K - 32 * q;
    if (r >= s->n || left <= 0) return _mm512_setzero_si512();
    const __mmask32 m = left >= 32 ? (__mmask32)~0u : (__mmask32)((1u << left) - 1);
    if (s->b16) return _mm512_maskz_loadu_epi16(m, s->b16 + r * s->ld + 32 * q);
    return e4m3_words(_mm256_maskz_loadu_epi8(m, s->f8 + r * s->ld + 32 * q));
}

TBW int dsacp_bf16gemm_pack_rows_avx512(const dsacp_bf16gemm_rows *s, uint32_t *out)
{
    const int64_t Q = ((s->K + 1) / 2 + LANES - 1) / LANES;
    const __m512i one = _mm512_set1_epi16(1), magmask = _mm512_set1_epi16(0x7FFF);
    __m512i mn = _mm512_set1_epi16(-1); /* min of |x| - 1 as unsigned: zeros never count */
    for (int64_t q = 0; q < Q; q++)
        for (int h = 0; h < 2; h++) {
            __m512i v[16];
            for (int i = 0; i < 16; i++) {
                v[i] = row_chunk(s, 16 * h + i, q);
                mn = _mm512_min_epu16(mn, _mm512_sub_epi16(_mm512_and_si512(v[i], magmask), one));
            }
            transpose16(v);
            for (int l = 0; l < LANES; l++) _mm512_storeu_si512(out + (l * Q + q) * ROWS + 16 * h, v[l]);
        }
    const __m256i m16 = _mm256_min_epu16(_mm512_castsi512_si256(mn), _mm512_extracti64x4_epi64(mn, 1));
    const __m128i m8 = _mm_min_epu16(_mm256_castsi256_si128(m16), _mm256_extracti128_si256(m16, 1));
    const unsigned m = (unsigned)_mm_cvtsi128_si32(_mm_minpos_epu16(m8)) & 0xFFFFu;
    return m == 0xFFFFu ? 256 : (int)((m + 1) >> 7);
}

/* ---- the trees ---- */

T512 void dsacp_bf16gemm_tree_zmm(const float *tile, int t, float out[32])
{
    for (int h = 0; h < 2; h++) {
        __m512 v[LANES];
        for (int l = 0; l < LANES; l++) v[l] = _mm512_loadu_ps(tile + (l * GROUP + t) * ROWS + 16 * h);
        for (int w = 8; w >= 1; w /= 2)
            for (int i = 0; i < w; i++) v[i] = _mm512_add_ps(v[i], v[i + w]);
        _mm512_storeu_ps(out + 16 * h, v[0]);
    }
}

TAVX2 void dsacp_bf16gemm_tree_ymm(const float *tile, int t, float out[32])
{
    for (int h = 0; h < 4; h++) {
        __m256 v[LANES];
        for (int l = 0; l < LANES; l++) v[l] = _mm256_loadu_ps(tile + (l * GROUP + t) * ROWS + 8 * h);
        for (int w = 8; w >= 1; w /= 2)
            for (int i = 0; i < w; i++) v[i] = _mm256_add_ps(v[i], v[i + w]);
        _mm256_storeu_ps(out + 8 * h, v[0]);
    }
}
#else
typedef int dsacp_gemm_bf16_x86_empty; /* ISO C: a translation unit is not empty */
#endif
