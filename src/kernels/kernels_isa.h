/*
 * kernels_isa.h -- what the ISA files of src/kernels share (private to src/kernels): the three
 * kernel tables, the scalar pieces a SIMD variant falls back on, the linear driver the SIMD
 * linears share, and workspace carving. The files of src/kernels, each calling only files below
 * it (no circle; the ISA files never call the dispatcher):
 *   dispatch.c        the active ISA's table and the public kernels over it
 *   kernels_avx512.c  AVX-512 tables (uses the AVX2 act_quant rounding and gemm_avx2.c's fold mode)
 *   kernels_avx2.c    AVX2 table
 *   kernels_small.c   the small per-row SIMD kernels (RMSNorm, axpy)
 *   kernels.c         the scalar table: the reference twins
 *   kernels_linear.c  dsacp_dot_f32, the scalar linear, the driver the SIMD linears share
 *   gemm_avx2.c       the blocked many-row linear
 *   mla_bf16.c        deployed sparse MLA: the driver (workspace, operands, head groups)
 *   mla_bf16_x86.c    its AVX-512 and AVX2 phases
 *   mla_bf16_model.c  its definition, exp and generic (scalar) phases
 *   linear_bf16.c     deployed BF16/FP8 linears on the bf16-dot chain (one token; many via below)
 *   act_quant.c       act_quant into the workspace, shared by both linears
 * and the bf16-dot chain (bf16dot.h; docs/numerics.md, "The bf16-dot chain"):
 *   gemm_bf16.c       the batched product: blocks, panels, forms (gemm_bf16.h)
 *   gemm_bf16_x86.c   its micro-kernels (zmm FMA, VDPBF16PS, ymm FMA) and packing
 *   bf16dot_check.c   cpuid and the start-up check of the instruction against the model
 *   bf16dot_x86.c     the AVX2 (plain and DAZ/FTZ-emulating), FMA-form and AVX512-BF16 dot kernels
 *   bf16dot.c         the scalar model of VDPBF16PS: the definition the kernels give the bits of
 * and at the bottom of all:
 *   kernels_threads.c dsacp_parallel_for: a split over threads that never opens a region of one
 *                     thread or a nested one (so it allocates nothing under libgomp)
 *   isa.c             the best and the active ISA (cpuid, DSACP_ISA, dsacp_isa_set)
 */
#ifndef DSACP_KERNELS_ISA_H
#define DSACP_KERNELS_ISA_H

#include "kernels/kernels.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

extern const dsacp_kernel_table dsacp_kernels_scalar;
#if defined(__x86_64__)
extern const dsacp_kernel_table dsacp_kernels_avx2;
extern const dsacp_kernel_table dsacp_kernels_avx512;
extern const dsacp_kernel_table dsacp_kernels_avx512_vbmi; /* the same with the FP8 table decode */
#endif

/* ---- workspace carving: a caller's buffer, any alignment, cut into 64-byte aligned parts ---- */

enum { DSACP_WS_ALIGN = 64 };
/* a * b, saturating at SIZE_MAX (a size no allocation gives). */
static inline size_t dsacp_ws_mul(size_t a, size_t b) { return b && a > SIZE_MAX / b ? SIZE_MAX : a * b; }
/* a + b, saturating likewise. */
static inline size_t dsacp_ws_add(size_t a, size_t b) { return a > SIZE_MAX - b ? SIZE_MAX : a + b; }
/* bytes rounded up to the alignment (saturating). */
static inline size_t dsacp_ws_round(size_t b) { return b > SIZE_MAX - 63 ? SIZE_MAX : (b + 63) / 64 * 64; }
typedef struct dsacp_ws {
    unsigned char *p; /* next free byte, aligned */
    size_t left;      /* bytes from p to the end */
} dsacp_ws;
/* The aligned view of ws[0..bytes). */
static inline dsacp_ws dsacp_ws_open(void *ws, size_t bytes)
{
    const uintptr_t a = ((uintptr_t)ws + DSACP_WS_ALIGN - 1) & ~(uintptr_t)(DSACP_WS_ALIGN - 1);
    const size_t skip = (size_t)(a - (uintptr_t)ws);
    dsacp_ws w = {(unsigned char *)a, ws && bytes > skip ? bytes - skip : 0};
    return w;
}
/* The next `bytes` (rounded to the alignment), or NULL when the rest is shorter. */
static inline void *dsacp_ws_take(dsacp_ws *w, size_t bytes)
{
    const size_t r = dsacp_ws_round(bytes);
    if (r > w->left) return NULL;
    void *p = w->p;
    w->p += r;
    w->left -= r;
    return p;
}

/* ---- scalar pieces (kernels.c) ---- */

/* The LSE merge with the weighted sum of one ISA (dsacp_kernel_table.axpy). */
void dsacp_lse_merge_axpy(const float *o_parts, const float *lse_parts, int64_t R, int64_t H, int64_t d, float *o,
                          float *lse, void (*axpy)(float *o, const float *src, float wgt, int64_t d));
void dsacp_bf16_row_scalar(const uint8_t *src, int64_t n, float *out);
void dsacp_e4m3_row_scalar(const uint8_t *src, const float *scales, int64_t group, int64_t n, float *out);

/* ---- linear (kernels_linear.c) ---- */

typedef void (*dsacp_quant_rows_fn)(float *x, int64_t n);
/* DSACP_EINVAL naming the weight: a linear's workspace of `have` bytes where `need` are needed. */
int dsacp_linear_short_ws(const dsacp_weight *w, size_t have, size_t need);
/* The scalar table's linear slots (act_quant through dsacp_fake_quant_e4m3_groups). */
size_t dsacp_linear_scalar_ws_bytes(const dsacp_weight *w, int64_t T, bool act_quant);
int dsacp_linear_scalar_ws(const dsacp_weight *w, const float *x, int64_t T, int64_t ldx, float *y, int64_t ldy,
                           bool act_quant, void *ws, size_t ws_bytes);

/* What one SIMD ISA gives the shared driver. `rows` (indexed F32, BF16, F16, F8_E4M3) computes
 * output rows [o0, o1) of every token; `fast`, when not NULL, is offered the (act-quantized)
 * input first with the workspace left after the act_quant copy and returns 1 when it did the
 * product (status in *rc), 0 when the weight does not suit it; fast_ws_bytes sizes it. */
typedef void (*dsacp_linear_rows_fn)(const dsacp_weight *w, int64_t o0, int64_t o1, const float *x, int64_t ldx,
                                     int64_t T, float *y, int64_t ldy);
typedef struct dsacp_linear_isa {
    dsacp_linear_rows_fn rows[4];
    int (*fast)(const dsacp_weight *w, const float *x, int64_t T, int64_t ldx, float *y, int64_t ldy, int *rc,
                void *ws, size_t ws_bytes);
    size_t (*fast_ws_bytes)(const dsacp_weight *w, int64_t T);
    dsacp_quant_rows_fn quant;
    dsacp_isa isa; /* the table's ISA (deployed BF16/FP8 linears run linear_bf16.c's kernels of it) */
} dsacp_linear_isa;
/* The driver shared by the SIMD linears: the scalar twin for dtypes or FP8 block layouts a
 * variant cannot decode, act_quant, `fast`, the blocked GEMM for T >= DSACP_GEMM_MIN_T, then
 * output row blocks of DSACP_LINEAR_BLOCK to `rows` over the threads (dsacp_parallel_for: only
 * outside any parallel region, for products of at least 65536 multiply-adds). */
enum { DSACP_LINEAR_BLOCK = 16 };
size_t dsacp_linear_drive_ws_bytes(const dsacp_linear_isa *li, const dsacp_weight *w, int64_t T, bool act_quant);
int dsacp_linear_drive(const dsacp_linear_isa *li, const dsacp_weight *w, const float *x, int64_t T, int64_t ldx,
                       float *y, int64_t ldy, bool act_quant, void *ws, size_t ws_bytes);

/* In an ISA file: ROWS##_f32, _bf16, _f16, _f8, the four per-dtype row functions over
 * ROWS(dtype, w, o0, o1, x, ldx, T, y, ldy) (an always-inline template compiled with the target
 * attribute ATTR: one compiled body per dtype). */
#define DSACP_DEFINE_LINEAR_ROW(ATTR, ROWS, SUFFIX, DTYPE)                                                       \
    ATTR static void ROWS##SUFFIX(const dsacp_weight *w, int64_t o0, int64_t o1, const float *x, int64_t ldx,    \
                                  int64_t T, float *y, int64_t ldy)                                               \
    {                                                                                                             \
        ROWS(DTYPE, w, o0, o1, x, ldx, T, y, ldy);                                                                \
    }
#define DSACP_DEFINE_LINEAR_ROWS(ATTR, ROWS)                                                                      \
    DSACP_DEFINE_LINEAR_ROW(ATTR, ROWS, _f32, DSACP_F32)                                                          \
    DSACP_DEFINE_LINEAR_ROW(ATTR, ROWS, _bf16, DSACP_BF16)                                                        \
    DSACP_DEFINE_LINEAR_ROW(ATTR, ROWS, _f16, DSACP_F16)                                                          \
    DSACP_DEFINE_LINEAR_ROW(ATTR, ROWS, _f8, DSACP_F8_E4M3)

/* In an ISA file: a table's two linear slots, static NAME##_ws_bytes and NAME, over the shared
 * driver with the row functions of DSACP_DEFINE_LINEAR_ROWS(_, ROWS), FAST and FAST_WS (both may
 * be NULL), the act_quant rounding QUANT and the table's ISA. */
#define DSACP_DEFINE_LINEAR_SLOTS(NAME, ROWS, FAST, FAST_WS, QUANT, ISA)                                          \
    static const dsacp_linear_isa NAME##_parts = {                                                                \
        {ROWS##_f32, ROWS##_bf16, ROWS##_f16, ROWS##_f8}, FAST, FAST_WS, QUANT, ISA};                             \
    static size_t NAME##_ws_bytes(const dsacp_weight *w, int64_t T, bool act_quant)                               \
    {                                                                                                             \
        return dsacp_linear_drive_ws_bytes(&NAME##_parts, w, T, act_quant);                                       \
    }                                                                                                             \
    static int NAME(const dsacp_weight *w, const float *x, int64_t T, int64_t ldx, float *y, int64_t ldy,         \
                    bool act_quant, void *ws, size_t ws_bytes)                                                    \
    {                                                                                                             \
        return dsacp_linear_drive(&NAME##_parts, w, x, T, ldx, y, ldy, act_quant, ws, ws_bytes);                  \
    }

/* One SIMD sparse MLA call split into groups of `width` heads (`lanes` per vector) for
 * dsacp_parallel_for: group g runs on its own tiles, `per` floats from tiles + g * per (the
 * scores St [nc][ld], then Ot [dc][ld], the running max mo [ld] and sum lo [ld]) and writes heads
 * [g * width, g * width + width) of o and lse. Qt: the transposed query [dc + dr][Hp]. */
typedef struct dsacp_mla_job {
    const float *Qt, *kv;
    int64_t n, H, Hp, dc, dr;
    float scale;
    float *o, *lse, *tiles;
    size_t per;
    int64_t nc, ld, width, lanes;
} dsacp_mla_job;

/* In an ISA file: NAME##4 .. NAME##1, the sparse MLA's head-group functions for 4..1 head
 * vectors over the always-inline template NAME(Qt, Hp, h0, NG, ...), compiled with ATTR (one
 * compiled body per group width, chosen by a switch at run time); NAME##_task runs one group of
 * a dsacp_mla_job. */
#define DSACP_DEFINE_MLA_GROUP(ATTR, NAME, NG)                                                                    \
    ATTR static void NAME##NG(const float *Qt, int64_t Hp, int64_t h0, const float *kv, int64_t n, int64_t dc,    \
                              int64_t dk, float scale, float *St, float *Ot, float *mo, float *lo)                \
    {                                                                                                             \
        NAME(Qt, Hp, h0, NG, kv, n, dc, dk, scale, St, Ot, mo, lo);                                               \
    }
#define DSACP_DEFINE_MLA_GROUPS(ATTR, NAME)                                                                       \
    DSACP_DEFINE_MLA_GROUP(ATTR, NAME, 4)                                                                         \
    DSACP_DEFINE_MLA_GROUP(ATTR, NAME, 3)                                                                         \
    DSACP_DEFINE_MLA_GROUP(ATTR, NAME, 2)                                                                         \
    DSACP_DEFINE_MLA_GROUP(ATTR, NAME, 1)                                                                         \
    static void NAME##_run(int64_t ng, const float *Qt, int64_t Hp, int64_t h0, const float *kv, int64_t n,       \
                           int64_t dc, int64_t dk, float scale, float *St, float *Ot, float *mo, float *lo)       \
    {                                                                                                             \
        switch (ng) {                                                                                             \
        case 4: NAME##4(Qt, Hp, h0, kv, n, dc, dk, scale, St, Ot, mo, lo); break;                                 \
        case 3: NAME##3(Qt, Hp, h0, kv, n, dc, dk, scale, St, Ot, mo, lo); break;                                 \
        case 2: NAME##2(Qt, Hp, h0, kv, n, dc, dk, scale, St, Ot, mo, lo); break;                                 \
        default: NAME##1(Qt, Hp, h0, kv, n, dc, dk, scale, St, Ot, mo, lo); break;                                \
        }                                                                                                         \
    }                                                                                                             \
    static void NAME##_task(void *ctx, int64_t g)                                                                 \
    {                                                                                                             \
        const dsacp_mla_job *j = ctx;                                                                             \
        float *St = j->tiles + (size_t)g * j->per, *Ot = St + j->nc * j->ld, *mo = Ot + j->dc * j->ld;           \
        const int64_t h0 = g * j->width, left = (j->Hp - h0) / j->lanes;                                          \
        const int64_t ng = left < j->width / j->lanes ? left : j->width / j->lanes;                               \
        NAME##_run(ng, j->Qt, j->Hp, h0, j->kv, j->n, j->dc, j->dc + j->dr, j->scale, St, Ot, mo, mo + j->ld);    \
        dsacp_mla_finish(Ot, j->ld, mo, mo + j->ld, h0, ng * j->lanes, j->H, j->dc, j->o, j->lse);                \
    }

/* ---- the blocked many-row linear (gemm_avx2.c) ----
 * Used for T >= DSACP_GEMM_MIN_T: the same bits as the row kernels (natural chains; with fold,
 * the chains of the AVX-512 VBMI table decode of FP8 weights with blocks of a multiple of 64).
 * dsacp_linear_gemm_ws_bytes: its packing room with the threads of now (0 when this weight does
 * not suit it). dsacp_linear_gemm returns 1 when it did the product (status in *rc: OK, or
 * EINVAL when ws is shorter than one thread's room; fewer threads run when it holds fewer than
 * sized, with the same bits), 0 when this weight does not suit it (nothing written). x is the
 * act-quantized input. */
enum { DSACP_GEMM_MIN_T = 8 };
size_t dsacp_linear_gemm_ws_bytes(const dsacp_weight *w, int64_t T, bool fold);
int dsacp_linear_gemm(const dsacp_weight *w, const float *x, int64_t T, int64_t ldx, float *y, int64_t ldy, bool fold,
                      int *rc, void *ws, size_t ws_bytes);

/* ---- the SIMD sparse MLAs' plain-C steps (the same in every ISA file) ---- */

/* An empty selection: o = 0, lse = -inf. */
static inline void dsacp_mla_empty(int64_t H, int64_t dc, float *o, float *lse)
{
    memset(o, 0, (size_t)(H * dc) * sizeof(float));
    for (int64_t h = 0; h < H; h++) lse[h] = -INFINITY;
}
/* q [H][dk] transposed to Qt [dk][Hp], heads H..Hp zero (the sparse MLAs' and the packed indexer
 * query's layout: SIMD lanes run across heads). */
static inline void dsacp_transpose_heads(const float *q, int64_t H, int64_t dk, int64_t Hp, float *Qt)
{
    for (int64_t d = 0; d < dk; d++) {
        for (int64_t h = 0; h < H; h++) Qt[d * Hp + h] = q[h * dk + d];
        for (int64_t h = H; h < Hp; h++) Qt[d * Hp + h] = 0;
    }
}
/* Heads h0 + hh, hh < nh (and < H): o = Ot[.][hh] / lo[hh] (Ot's row stride ld), lse = mo + log lo. */
static inline void dsacp_mla_finish(const float *Ot, int64_t ld, const float *mo, const float *lo, int64_t h0,
                                    int64_t nh, int64_t H, int64_t dc, float *o, float *lse)
{
    for (int64_t hh = 0; hh < nh && h0 + hh < H; hh++) {
        const int64_t h = h0 + hh;
        const float inv = 1.0f / lo[hh];
        float *oh = o + h * dc;
        for (int64_t c = 0; c < dc; c++) oh[c] = Ot[c * ld + hh] * inv;
        lse[h] = mo[hh] + logf(lo[hh]);
    }
}

/* ---- small SIMD kernels (kernels_small.c) and the AVX2 act_quant (kernels_avx2.c) ---- */

#if defined(__x86_64__)
void dsacp_rmsnorm_avx512(float *y, const float *x, const float *weight, int64_t n, double eps);
void dsacp_rmsnorm_avx2(float *y, const float *x, const float *weight, int64_t n, double eps);
void dsacp_axpy_avx512(float *o, const float *src, float wgt, int64_t d);
void dsacp_axpy_avx2(float *o, const float *src, float wgt, int64_t d);
/* dsacp_fake_quant_e4m3_groups(x, n, 128) in AVX2, bit for bit (n % 128 == 0). */
void dsacp_fake_quant_e4m3_128_avx2(float *x, int64_t n);
#endif

#endif
