/*
 * mla_bf16.h -- the deployed-mode sparse MLA on the bf16-dot chain (kernels.h,
 * dsacp_sparse_mla_bf16_ws; docs/numerics.md, "The bf16-dot chain"): private to src/kernels.
 *
 * Files, each calling only the ones below it:
 *   mla_bf16.c      the definition (dsacp_sparse_mla_bf16_model), dsacp_exp_model, the workspace,
 *                   the driver (rounding, the split of head groups over threads, the choice of
 *                   form per phase) and the generic phases over any bf16-dot kernel
 *   mla_bf16_x86.c  the AVX-512 phases (zmm FMA form; VDPBF16PS for the scores) and the AVX2 ones
 *                   (ymm FMA form), the SIMD exp and rounding; every one the definition's bits
 *   bf16dot*.c, gemm_bf16.c (the automatic form's measurement), kernels_threads.c
 *
 * The layout every phase reads (the driver fills it): Qt [32 kd][Hp] the rounded query transposed
 * (f32 holding bf16 values; Dp = D rounded up to even, Hp = H rounded up to the ISA's lanes,
 * padding +0; rows lane-major, dsacp_mla16_qrow), the rounded keys K (f32 rows of ldk >= Dp holding bf16 values; row s >= n reads
 * zrow, Dp zeros), and per group of `width` heads the scores St [np][width] (np = n rounded up
 * to even): S, then p (f32) in place (row n of an odd n: +0), its rows lane-major
 * (dsacp_mla16_row: the key pairs of one model lane of the values' dots contiguous, so the
 * values phase streams them); on AVX-512 also the latents packed the same way, per tile of
 * DSACP_MLA16_TILE latent dims (Vp [ct][lane][k][low, high][TILE]).
 */
#ifndef DSACP_MLA_BF16_H
#define DSACP_MLA_BF16_H

#include "kernels/bf16dot.h"
#include "kernels/kernels_isa.h"

/* exp(x) by a fixed sequence of f32 operations, the same in every ISA: NaN -> x quieted; x < -88
 * -> +0; x clamped to 89; n = rint(x * log2 e) (ties to even); r = x - n ln2 in two fmaf steps
 * (ln2 = 0.693359375 - 2.12194440e-4); p = 1 + r + r^2 P(r) (a degree-5 polynomial, Horner with
 * fmaf); y = (p * 2^floor(n/2)) * 2^(n - floor(n/2)); y below 2^-126 -> +0 (as the GPU's
 * ex2.approx.ftz flushes). Within 2 ulp of expf on [-87, 88] (test_mla_bf16 checks the bound). */
float dsacp_exp_model(float x);

/* The definition, written out plainly (one head at a time, scalar model dots; allocates its
 * scratch, DSACP_ENOMEM without it): the bits every path of dsacp_sparse_mla_bf16_ws gives. */
int dsacp_sparse_mla_bf16_model(const float *q, const float *kv, int64_t n, int64_t H, int64_t dc, int64_t dr,
                                float scale, float *o, float *lse);

/* Forms of the scores phase: GENERIC (any bf16-dot kernel per score: the model on the scalar
 * ISA, AVX2's DAZ/FTZ-emulating one otherwise), the zmm FMA form (plain operands), VDPBF16PS, the
 * ymm FMA form (plain operands, AVX2). The values phase has one form per ISA (f32 FMAs of p and
 * the latents: the definition's fmaf chain whatever the operands). */
enum { DSACP_MLA16_GENERIC = 0, DSACP_MLA16_FMA = 1, DSACP_MLA16_DPBF16 = 2, DSACP_MLA16_AVX2 = 3 };
/* dsacp_sparse_mla_bf16_ws as ISA `isa` (at most dsacp_isa_best()) would run it, preferring
 * form `prefer` (DSACP_BF16GEMM_AUTO, _FMA or _DPBF16) and using VDPBF16PS at most as far as
 * hw_cap (DSACP_BF16DOT_HW_*, lowered to what this CPU has) allows: for the tests (every path
 * gives the same bits). DSACP_EUNSUPPORTED for an ISA the CPU lacks. */
int dsacp_sparse_mla_bf16_as(dsacp_isa isa, int prefer, int hw_cap, const float *q, const float *kv, int64_t n,
                             int64_t H, int64_t dc, int64_t dr, float scale, float *o, float *lse, void *work,
                             size_t work_bytes);

/* One call's shared operands (the driver's layout above). */
typedef struct dsacp_mla16_job {
    const float *Qt, *K, *zrow, *Vp;
    int64_t n, np, H, Hp, dc, Dp, ldk, width;
    int64_t kq, kd; /* key pairs per model lane, ceil(np / 32); query pairs per lane, ceil(Dp / 32) */
    float scale;
    float *o, *lse;
    dsacp_bf16dot_fn dot; /* the GENERIC scores' kernel */
} dsacp_mla16_job;

/* Row s of the rounded keys (zrow past n). */
static inline const float *dsacp_mla16_key(const dsacp_mla16_job *j, int64_t s)
{
    return s < j->n ? j->K + s * j->ldk : j->zrow;
}

/* Qt's row of query dim d (d < 32 kd), lane-major as St's rows are (the scores' lanes). */
static inline int64_t dsacp_mla16_qrow(const dsacp_mla16_job *j, int64_t d)
{
    const int64_t p = d >> 1;
    return ((p % 16) * j->kd + p / 16) * 2 + (d & 1);
}

/* St's row of key s: pair q = s / 2 is the k-th (k = q / 16) of model lane l = q % 16, its two
 * keys rows 2 (l kq + k) and 2 (l kq + k) + 1. */
static inline int64_t dsacp_mla16_row(const dsacp_mla16_job *j, int64_t s)
{
    const int64_t q = s >> 1;
    return ((q % 16) * j->kq + q / 16) * 2 + (s & 1);
}

/* One group's share of a call: heads [h0, h0 + cnt) (cnt a multiple of the ISA's lanes) and
 * its scratch: St [32 kq][width], the lanes' partial tiles (16 x DSACP_MLA16_TILE x width floats),
 * the max m and sum l per head [width], and scr (2 max(Dp, np) floats) for single outputs. */
typedef struct dsacp_mla16_group {
    int64_t h0, cnt;
    float *St, *tile, *m, *l, *scr;
} dsacp_mla16_group;
enum { DSACP_MLA16_TILE = 6 };

/* A phase set of one ISA (mla_bf16_x86.c): scores writes St = S; softmax turns St into p in
 * place and writes m and l; values writes o[h][d] = (p.v) / l for the heads h < H whose l is not
 * NaN. A NaN score or output of a SIMD form is redone by the model. check_keys returns the floor of `rows` rows
 * of D rounded values and sets *same when rounding changes none; round_keys writes them, rows
 * of Dp (an odd D's last element +0). */
typedef struct dsacp_mla16_isa {
    int64_t lanes, width;
    bool packs_values; /* its values phase reads Vp */
    int (*check_keys)(const float *kv, int64_t rows, int64_t D, bool *same);
    void (*round_keys)(const float *kv, int64_t rows, int64_t D, float *out, int64_t Dp);
    void (*scores)(const dsacp_mla16_job *j, int form, const dsacp_mla16_group *g);
    void (*softmax)(const dsacp_mla16_job *j, const dsacp_mla16_group *g);
    void (*values)(const dsacp_mla16_job *j, const dsacp_mla16_group *g);
} dsacp_mla16_isa;

/* x rounded to bf16, as the f32 holding it. */
static inline float dsacp_mla16_r16(float x) { return dsacp_f32_of_bits((uint32_t)dsacp_f32_to_bf16(x) << 16); }
/* The exponent field of a nonzero value, 256 for +-0 (dsacp_bf16_exp_floor's rule). */
static inline int dsacp_mla16_expo(float x)
{
    const uint32_t u = dsacp_f32_bits(x);
    return (u & 0x7FFFFFFFu) ? (int)(u >> 23 & 0xFF) : 256;
}

/* A head whose sum is NaN: o and lse the canonical NaN 0x7FC00000. */
void dsacp_mla16_head_nan(float *oh, int64_t dc, float *lse);
/* The scalar ISA's phase set (mla_bf16_model.c). */
extern const dsacp_mla16_isa dsacp_mla16_scalar;

/* The generic pieces (mla_bf16_model.c), which the SIMD phases call for the forms they do not run and
 * for their NaN results. */
int dsacp_mla16_check_keys(const float *kv, int64_t rows, int64_t D, bool *same);
void dsacp_mla16_round_keys(const float *kv, int64_t rows, int64_t D, float *out, int64_t Dp);
/* One score, S = fl(dot(qb[h], kb[s]) * scale), by kernel `dot` (h = g->h0 + hh). */
float dsacp_mla16_score(const dsacp_mla16_job *j, dsacp_bf16dot_fn dot, const dsacp_mla16_group *g, int64_t hh,
                        int64_t s);
/* Step 6's chain: p [np] (f32) against v [np] (bf16 values), np even: 16 lanes over the pairs q
 * (lane q mod 16, increasing q, padded with zero pairs to a multiple of 16), each pair
 * acc = fmaf(p[2q + 1], v[2q + 1], acc) then acc = fmaf(p[2q], v[2q], acc) (IEEE: no DAZ/FTZ), and
 * the 16 lanes by the plain f32 tree l += l + 8, + 4, + 2, + 1 (IEEE adds). */
float dsacp_mla16_pv(const float *p, const float *v, int64_t np);
/* One output's chain before the division by l: column hh of St (p) against latent dim d. */
float dsacp_mla16_value(const dsacp_mla16_job *j, const dsacp_mla16_group *g, int64_t hh, int64_t d);
void dsacp_mla16_scores_generic(const dsacp_mla16_job *j, const dsacp_mla16_group *g);
void dsacp_mla16_softmax_generic(const dsacp_mla16_job *j, const dsacp_mla16_group *g);
void dsacp_mla16_values_generic(const dsacp_mla16_job *j, const dsacp_mla16_group *g);
/* Vp's entries of keys [s0, s1) (keys past n +0; s1 <= 32 kq) in every tile of latent dims
 * (DSACP_MLA16_TILE of them, dims past dc +0). */
void dsacp_mla16_pack_values(const dsacp_mla16_job *j, float *Vp, int64_t s0, int64_t s1);

#if defined(__x86_64__)
/* The phase sets: AVX-512 (width 64, lanes 16) and AVX2 (width 16, lanes 8). */
extern const dsacp_mla16_isa dsacp_mla16_avx512;
extern const dsacp_mla16_isa dsacp_mla16_avx2;
#endif

#endif
