/*
 * bf16dot.h -- the bf16-dot chain of deployed mode (issue 25; docs/numerics.md, "The bf16-dot
 * chain"): a dot product of bf16 pairs accumulated in fp32 exactly as AVX512-BF16's VDPBF16PS
 * computes it, defined by a scalar model, with an AVX2 kernel and an AVX512-BF16 kernel that give
 * the model's bits on every input (private to src/kernels).
 *
 * Files, each calling only the ones below it (none calls dispatch.c: callers name the ISA, e.g.
 * dsacp_bf16dot_kernel(dsacp_isa_active())):
 *   linear_bf16.c   deployed BF16/FP8 linears on the chain (linear_bf16.h): one-token path and
 *                   driver of the batched product's block API
 *   gemm_bf16.c     the batched product: packing, blocks and panels, the whole-matrix API below
 *                   (gemm_bf16.h)
 *   gemm_bf16_x86.c its micro-kernels (zmm FMA in asm, VDPBF16PS, ymm FMA) and block packing
 *   bf16dot_x86.c   the AVX2 and AVX512-BF16 kernels (with the FP8 fold), the row kernels of
 *                   several rows per pass (zmm FMA form, VDPBF16PS; FP8 decoded in registers),
 *                   activation rounding in AVX2, the choice of kernel for an ISA
 *   bf16dot_check.c the cpuid test and the start-up check of the instruction against the model
 *   bf16dot.c       the scalar model (one step, one pair, the 16-lane dot, the fold), activation
 *                   rounding, the exponent floor, the e4m3 -> bf16 decode
 *
 * Layout: a bf16 vector of 2n elements is n dword pairs; pair p holds element 2p in its low half
 * and element 2p + 1 in its high half (the little-endian bytes of a bf16 row, as VDPBF16PS reads
 * them). A row of odd length is padded with one +0 element.
 */
#ifndef DSACP_BF16DOT_H
#define DSACP_BF16DOT_H

#include "kernels/kernels.h"
#include "numerics/numerics.h" /* dsacp_f32_bits, dsacp_f32_of_bits */

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

/* ---- the model (bf16dot.c) ---- */

/* One accumulation: acc + a * b as VDPBF16PS adds one product. NaN first (a's, else b's, else
 * acc's, quieted; an invalid operation without a NaN operand gives 0xFFC00000); then a, b and acc
 * with a zero exponent field read as zero of their sign (DAZ); then the exact acc + a * b rounded
 * once to 24 bits, nearest even, with an unbounded exponent; a result below 2^-126 in magnitude
 * after that rounding is the zero of its sign (FTZ, tininess after rounding); overflow is inf. */
float dsacp_bf16dot_model_step(float acc, uint16_t a, uint16_t b);
/* One dword lane of VDPBF16PS: the high elements' product first, then the low elements'. */
float dsacp_bf16dot_model_pair(float acc, uint32_t a_pair, uint32_t b_pair);
/* The lane reduction: lanes l += l + 8 (l < 8), then + 4, + 2, + 1 (IEEE adds with gradual
 * underflow); a NaN operand gives its own NaN (the left one first), inf - inf 0xFFC00000. */
float dsacp_bf16dot_lanes_sum(const float lanes[16]);
/* The dot of n pairs of a and b: lane l (of 16) accumulates pairs p = l (mod 16) from +0 in
 * increasing p, n padded with (+0, +0) pairs to a multiple of 16; then dsacp_bf16dot_lanes_sum.
 * The definition every kernel below gives bit for bit. */
float dsacp_bf16dot_scalar(const uint16_t *a, const uint16_t *b, int64_t n);

/* The fold chain of FP8 weights (DeepGEMM's promotion): lane l (of 16) keeps a total from +0;
 * per column block j of bp pairs (bp a multiple of 16; the last block may be shorter, padded
 * with (+0, +0) pairs to a multiple of 16) it accumulates b_l from +0 over the block's pairs
 * p = l (mod 16) in increasing p by dsacp_bf16dot_model_pair, then tot_l = fmaf(b_l, scales[j],
 * tot_l) (IEEE); the result is dsacp_bf16dot_lanes_sum(tot). bp == 0: no fold, the same as
 * dsacp_bf16dot_scalar (scales unused). */
float dsacp_bf16dot_fold_scalar(const uint16_t *a, const uint16_t *b, int64_t n, int64_t bp, const float *scales);

/* FP8 weights as bf16: the e4m3 value exactly (every e4m3 value, subnormals included, is a
 * normal bf16), unscaled; NaN (0x7F, 0xFF) -> the bf16 quiet NaN of its sign (0x7FC0, 0xFFC0).
 * dsacp_e4m3_bf16_mag[c]: the bits of magnitude code c = x & 0x7F. The one decoder of the
 * chain (the linears and the batched product's packing use it). */
extern const uint16_t dsacp_e4m3_bf16_mag[128];
static inline uint16_t dsacp_e4m3_to_bf16(uint8_t x)
{
    return (uint16_t)((uint32_t)(x & 0x80u) << 8 | dsacp_e4m3_bf16_mag[x & 0x7F]);
}
/* out[i] = dsacp_e4m3_to_bf16(src[i]), i < n. */
void dsacp_e4m3_row_bf16(const uint8_t *src, int64_t n, uint16_t *out);

/* Activations to bf16: out[i] = dsacp_f32_to_bf16(x[i]) (nearest even, NaN quiet, subnormals
 * kept: the dot reads them as zero), i < n. Returns the exponent floor of out. */
int dsacp_bf16_round_row(const float *x, int64_t n, uint16_t *out);
/* The exponent floor of n bf16 values: the least exponent field (0..255) among the elements that
 * are not +-0 (0 when one is subnormal, 255 for inf and NaN), 256 when all are +-0 or n == 0. */
int dsacp_bf16_exp_floor(const uint16_t *x, int64_t n);
/* Whether a dot of vectors with exponent floors fa and fb is plain: every nonzero product is a
 * multiple of 2^(ea + eb - 14) (unbiased exponents), so when neither vector holds a subnormal and
 * ea + eb >= -112, every partial sum is 0 or at least 2^-126 -- DAZ and FTZ never act, and plain
 * IEEE FMAs in the model's order give the model's bits. An all-zero vector makes every product
 * a zero (or NaN) whatever the other holds. */
static inline bool dsacp_bf16dot_plain_ok(int fa, int fb)
{
    return fa == 256 || fb == 256 || (fa >= 1 && fb >= 1 && fa + fb >= 254 - 112);
}

/* ---- the instruction (bf16dot_check.c) ---- */

/* Whether this CPU runs AVX512-BF16 (cpuid leaf 7 subleaf 1, EAX bit 5, with AVX-512 usable). */
bool dsacp_cpu_has_avx512bf16(void);
/* How far this CPU's VDPBF16PS is the model, checked once on fixed lanes (bf16dot_check.c):
 * ALL (every input class; this project's Xeon), PLAIN (only inputs dsacp_bf16dot_plain_ok
 * admits: its DAZ/FTZ differ), NONE (no AVX512-BF16, or it differs on normal values).
 * DSACP_BF16DOT_HW=plain|none in the environment lowers the answer (tests run the paths of other
 * CPUs with it; the bits never change). */
enum { DSACP_BF16DOT_HW_NONE = 0, DSACP_BF16DOT_HW_PLAIN = 1, DSACP_BF16DOT_HW_ALL = 2 };
int dsacp_bf16dot_hw_level(void);
#if defined(__x86_64__)
/* out[l] = VDPBF16PS's lane l of acc, a, b (only where dsacp_cpu_has_avx512bf16). */
void dsacp_bf16dot_hw_lanes(const float acc[16], const uint32_t a[16], const uint32_t b[16], float out[16]);
#endif

/* ---- kernels (bf16dot_x86.c) ---- */

typedef float (*dsacp_bf16dot_fn)(const uint16_t *a, const uint16_t *b, int64_t n);
/* The kernel of an ISA this CPU runs (dsacp_isa_active(), or one below dsacp_isa_best()): scalar
 * -> the model; AVX2 -> the AVX2 kernel; AVX-512 -> the AVX512-BF16 kernel where
 * dsacp_bf16dot_hw_level is ALL (where it is PLAIN: for plain inputs only), else the AVX2 kernel.
 * Each gives dsacp_bf16dot_scalar's bits. */
dsacp_bf16dot_fn dsacp_bf16dot_kernel(dsacp_isa isa);
/* The dot of n pairs by the kernel of the active ISA (dispatch.c, above this chain:
 * dsacp_bf16dot_kernel(dsacp_isa_active()), so DSACP_ISA and dsacp_isa_set choose it); the
 * model's bits whatever the ISA. For callers outside src/kernels. */
float dsacp_bf16dot(const uint16_t *a, const uint16_t *b, int64_t n);
#if defined(__x86_64__)
/* AVX2: plain (the caller knows dsacp_bf16dot_plain_ok of the two floors) runs two FMAs per pair;
 * otherwise DAZ and FTZ are emulated per step, and a dot that meets a result of exactly 2^-126
 * (where IEEE's gradual underflow and the model's tininess rule may part) or a NaN is recomputed
 * by the model. */
float dsacp_bf16dot_avx2(const uint16_t *a, const uint16_t *b, int64_t n, bool plain);
/* AVX512-BF16 (only where dsacp_cpu_has_avx512bf16): VDPBF16PS, a NaN result recomputed by the
 * model (whose reduction fixes the NaN payload). */
float dsacp_bf16dot_avx512bf16(const uint16_t *a, const uint16_t *b, int64_t n);
/* dsacp_bf16_round_row in AVX2, bit for bit. */
int dsacp_bf16_round_row_avx2(const float *x, int64_t n, uint16_t *out);
/* dsacp_bf16_exp_floor in AVX2, the same answer. */
int dsacp_bf16_exp_floor_avx2(const uint16_t *x, int64_t n);
/* The fold chain (dsacp_bf16dot_fold_scalar's bits; bp == 0: dsacp_bf16dot_scalar's) by the
 * AVX2 kernel (plain as above) and by VDPBF16PS (only where dsacp_bf16dot_hw_level is ALL, or
 * PLAIN for plain operands): every bp pairs the lanes are folded into the totals with one f32
 * FMA by the block's scale. A NaN result (or, emulating, a 2^-126 edge) is the model's. */
float dsacp_bf16dot_fold_avx2(const uint16_t *a, const uint16_t *b, int64_t n, int64_t bp, const float *scales,
                              bool plain);
float dsacp_bf16dot_fold_avx512bf16(const uint16_t *a, const uint16_t *b, int64_t n, int64_t bp,
                                    const float *scales);
/* R <= 8 weight rows and one token by the zmm FMA form (plain operands: the caller checks
 * dsacp_bf16dot_plain_ok with the floor returned) or, with dp, by VDPBF16PS (only where
 * dsacp_bf16dot_hw_level is ALL; returns 0): rows[r] holds ceil(K/2) pairs (K odd: a +0 element
 * after the row; K elements are read, with masked loads at the end), x the token's ceil(K/2)
 * pairs padded with zero pairs to a multiple of 16; the FMA form takes two f32 FMAs per pair,
 * the high elements' product first (a product of two bf16 is exact); bp / scales[r] as
 * dsacp_bf16dot_fold_scalar (bp == 0: no fold). out[r]: the model's bits (a NaN output is
 * recomputed by the model). Returns the least exponent floor of the R rows (the FMA form).
 * AVX512BW (+ AVX512-BF16 for dp). */
int dsacp_bf16dot_rows(const uint16_t *const *rows, int R, int64_t K, const uint16_t *x, int64_t bp,
                       const float *const *scales, bool dp, float *out);
/* The same for FP8 rows (rows[r]: K e4m3 bytes, decoded in registers; bp > 0 and scales[r] the
 * row's block scales), by VDPBF16PS when dp (only where dsacp_bf16dot_hw_level is ALL) or the FMA
 * form (plain operands only: an FP8 row's floor is at least 118, the exponent of 2^-9, so
 * dsacp_bf16dot_plain_ok(118, token floor) suffices). scratch: 2 * ceil(K/2) bf16, where a row of
 * NaN output is decoded for the model. AVX512BW (+ AVX512-BF16 when dp). */
enum { DSACP_E4M3_BF16_FLOOR = 118 };
void dsacp_bf16dot_f8_rows(const uint8_t *const *rows, int R, int64_t K, const uint16_t *x, int64_t bp,
                           const float *const *scales, bool dp, float *out, uint16_t *scratch);
/* dsacp_e4m3_row_bf16 in AVX512BW, bit for bit. */
void dsacp_e4m3_row_bf16_avx512(const uint8_t *src, int64_t n, uint16_t *out);
#endif

/* ---- batched, whole matrix (gemm_bf16.c; the benches use it; the linears use the block and panel
 * API of gemm_bf16.h, where the tiles are described) ----
 * y[t][o] = dsacp_bf16dot_scalar(w_o, x_t, ceil(K / 2)) bit for bit (weights the first operand),
 * for N weight rows and T token rows of K bf16 (an odd K padded with +0), run on the block API's
 * panels; the blocks of 32 rows split over the threads (dsacp_parallel_for), each output by one
 * thread: the same bits for every thread count. */
/* Bytes of the packed weights: per block of 32 rows (zero rows pad N) and per lane l, the pairs
 * p = l + 16 q as [q][32 rows] dwords. */
size_t dsacp_bf16gemm_pack_bytes(int64_t N, int64_t K);
/* Packs w (N rows of K bf16, row stride ldw elements) into `packed` (pack_bytes, any alignment). */
void dsacp_bf16gemm_pack(const uint16_t *w, int64_t N, int64_t K, int64_t ldw, void *packed);
/* The workspace of a call with T tokens (the tokens' padded pairs; each thread's tile is on its
 * stack). */
size_t dsacp_bf16gemm_ws_bytes(int64_t K, int64_t T);
/* The product; x: T rows of K bf16 (stride ldx elements), y: F32 [T][ldy]. DSACP_EUNSUPPORTED
 * unless dsacp_bf16dot_hw_level is ALL; DSACP_EINVAL for a short workspace. */
int dsacp_bf16gemm(const void *packed, int64_t N, int64_t K, const uint16_t *x, int64_t T, int64_t ldx, float *y,
                   int64_t ldy, void *ws, size_t ws_bytes);
/* The packed weights begin with a 64-byte header holding their exponent floor
 * (dsacp_bf16_exp_floor), the blocks follow it. The product has two forms, the same bits:
 * DPBF16 (VDPBF16PS tiles) and FMA, for operands whose floors are dsacp_bf16dot_plain_ok: each
 * pair as two zmm f32 FMAs (the high elements' product first; a product of two bf16 is exact, and
 * DAZ/FTZ cannot act), the packed weights split in registers (high: & 0xFFFF0000, low: << 16), a
 * NaN output recomputed by the model; the same split over threads. FMA on operands that are not plain runs
 * DPBF16. AUTO: DSACP_BF16DOT_FORM=fma|dpbf16 when set, else the form a one-time measurement at
 * the first call finds faster (dsacp_bf16gemm_form). dsacp_bf16gemm is dsacp_bf16gemm_as(AUTO).
 * The workspace (dsacp_bf16gemm_ws_bytes) also holds the FMA form's f32 copy of the tokens. */
enum { DSACP_BF16GEMM_AUTO = 0, DSACP_BF16GEMM_FMA = 1, DSACP_BF16GEMM_DPBF16 = 2 };
int dsacp_bf16gemm_as(int form, const void *packed, int64_t N, int64_t K, const uint16_t *x, int64_t T, int64_t ldx,
                      float *y, int64_t ldy, void *ws, size_t ws_bytes);
/* The form AUTO runs (FMA or DPBF16), chosen at the first call of this or of AUTO. */
int dsacp_bf16gemm_form(void);

#endif
