/*
 * kernels_linear.c -- below the ISA tables (kernels_isa.h): dsacp_dot_f32 (the fixed 16-lane
 * reduction every scalar twin uses), the scalar linear and the driver the SIMD linears share;
 * deployed BF16/FP8 linears go to linear_bf16.c with the table's ISA and act_quant rounding.
 * Calls linear_bf16.c, act_quant.c and kernels_threads.c. Every buffer comes from the caller's
 * workspace; nothing here allocates.
 */
#include "kernels/kernels_isa.h"
#include "kernels/linear_bf16.h"
#include "numerics/numerics.h"

#include <math.h>
#include <omp.h>
#include <string.h>

float dsacp_dot_f32(const float *a, const float *b, int64_t n)
{
    float acc[16] = {0};
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        for (int l = 0; l < 16; l++) acc[l] += a[i + l] * b[i + l];
    for (int l = 0; i < n; i++, l++) acc[l] += a[i] * b[i];
    /* Fixed pairwise tree over the lanes. */
    for (int w = 8; w >= 1; w /= 2)
        for (int l = 0; l < w; l++) acc[l] += acc[l + w];
    return acc[0];
}

/* Whether an F8_E4M3 weight suits the SIMD decode: blocks a multiple of 16 and every
 * 2^120 * scale finite. */
static bool f8_decode_ok(const dsacp_weight *w)
{
    if (!(w->block > 0 && w->block % 16 == 0)) return false;
    for (int64_t i = 0; i < w->scale_rows; i++)
        for (int64_t j = 0; j < w->scale_cols; j++)
            if (!(fabsf(w->scale[i * w->scale_stride + j]) < 0x1p7f)) return false;
    return true;
}

/* ---- the scalar twin ---- */

enum { LINEAR_ROWS = 16 };

/* One thread's decode buffer: LINEAR_ROWS rows of the weight as f32 (none for F32 weights). */
static size_t ref_rows_bytes(const dsacp_weight *w)
{
    if (w->dtype == DSACP_F32) return 0;
    return dsacp_ws_round(dsacp_ws_mul((size_t)LINEAR_ROWS * sizeof(float), (size_t)w->cols));
}

size_t dsacp_linear_scalar_ws_bytes(const dsacp_weight *w, int64_t T, bool act_quant)
{
    if (dsacp_bf16dot_linear_applies(w, act_quant)) return dsacp_linear_bf16_ws_bytes(w, T);
    const size_t b = dsacp_ws_add(dsacp_linear_act_quant_bytes(w, T, act_quant),
                                  dsacp_ws_mul(ref_rows_bytes(w), (size_t)dsacp_kernel_threads()));
    return b ? dsacp_ws_add(b, DSACP_WS_ALIGN) : 0;
}

/* One call of the scalar twin: the blocks of LINEAR_ROWS outputs. */
typedef struct ref_job {
    const dsacp_weight *w;
    const float *x;
    int64_t T, ldx, ldy;
    float *y;
} ref_job;

/* Outputs [16 b, 16 b + 16) for every token; wrows: the thread's decode buffer (NULL for F32). */
static void ref_block(const ref_job *j, float *wrows, int64_t b)
{
    const int64_t K = j->w->cols, N = j->w->rows;
    const int64_t o0 = b * LINEAR_ROWS, o1 = o0 + LINEAR_ROWS < N ? o0 + LINEAR_ROWS : N;
    const float *W;
    if (!wrows) {
        W = (const float *)j->w->data + o0 * K;
    } else {
        for (int64_t o = o0; o < o1; o++) dsacp_weight_row_f32(j->w, o, wrows + (o - o0) * K);
        W = wrows;
    }
    for (int64_t t = 0; t < j->T; t++)
        for (int64_t o = o0; o < o1; o++) j->y[t * j->ldy + o] = dsacp_dot_f32(W + (o - o0) * K, j->x + t * j->ldx, K);
}

/* The scalar linear with a given act_quant rounding (the SIMD tables' fallback passes theirs;
 * every rounding gives the same bits) and its workspace. */
static int linear_ref(const dsacp_weight *w, const float *x, int64_t T, int64_t ldx, float *y, int64_t ldy,
                      bool act_quant, dsacp_quant_rows_fn quant, void *ws, size_t ws_bytes)
{
    dsacp_ws s = dsacp_ws_open(ws, ws_bytes);
    int64_t ldxin;
    const float *xin = dsacp_linear_act_quant_input(w, x, T, ldx, act_quant, quant, &s, &ldxin);
    const size_t rb = ref_rows_bytes(w);
    /* As many threads as the workspace has decode buffers for (the bits do not depend on it). */
    const size_t nbuf = rb ? s.left / rb : SIZE_MAX;
    if (!xin || nbuf < 1) return dsacp_linear_short_ws(w, ws_bytes, dsacp_linear_scalar_ws_bytes(w, T, act_quant));
    const int nth = (size_t)dsacp_kernel_threads() < nbuf ? dsacp_kernel_threads() : (int)nbuf;
    unsigned char *bufs = s.p;
    const int64_t nblocks = (w->rows + LINEAR_ROWS - 1) / LINEAR_ROWS;
    const ref_job j = {w, xin, T, ldxin, ldy, y};
    if (nth < 2 || nblocks < 2) {
        /* No region of one thread (libgomp would allocate its team). */
        for (int64_t b = 0; b < nblocks; b++) ref_block(&j, rb ? (float *)bufs : NULL, b);
        return DSACP_OK;
    }
#pragma omp parallel num_threads(nth)
    {
        float *wrows = rb ? (float *)(bufs + (size_t)omp_get_thread_num() * rb) : NULL;
#pragma omp for schedule(dynamic, 1)
        for (int64_t b = 0; b < nblocks; b++) ref_block(&j, wrows, b);
    }
    return DSACP_OK;
}

int dsacp_linear_scalar_ws(const dsacp_weight *w, const float *x, int64_t T, int64_t ldx, float *y, int64_t ldy,
                           bool act_quant, void *ws, size_t ws_bytes)
{
    if (dsacp_bf16dot_linear_applies(w, act_quant))
        return dsacp_linear_bf16(DSACP_ISA_SCALAR, dsacp_quant_rows_scalar, w, x, T, ldx, y, ldy, ws, ws_bytes);
    return linear_ref(w, x, T, ldx, y, ldy, act_quant, dsacp_quant_rows_scalar, ws, ws_bytes);
}

/* ---- the SIMD linears' driver ---- */

/* One row-kernel call: every token's outputs, block by block. */
typedef struct rows_job {
    const dsacp_weight *w;
    const float *x;
    int64_t ldx, T;
    float *y;
    int64_t ldy;
    dsacp_linear_rows_fn rows;
} rows_job;

static void rows_block(void *ctx, int64_t b)
{
    const rows_job *j = ctx;
    const int64_t N = j->w->rows;
    const int64_t o0 = b * DSACP_LINEAR_BLOCK, o1 = o0 + DSACP_LINEAR_BLOCK < N ? o0 + DSACP_LINEAR_BLOCK : N;
    j->rows(j->w, o0, o1, j->x, j->ldx, j->T, j->y, j->ldy);
}

/* The row function for this weight's dtype, or NULL when the scalar twin must run (a dtype the
 * variants do not decode, or FP8 blocks not a multiple of 16 / 2^120 * scale not finite). */
static dsacp_linear_rows_fn drive_rows(const dsacp_linear_isa *li, const dsacp_weight *w)
{
    switch (w->dtype) {
    case DSACP_F32: return li->rows[0];
    case DSACP_BF16: return li->rows[1];
    case DSACP_F16: return li->rows[2];
    case DSACP_F8_E4M3: return f8_decode_ok(w) ? li->rows[3] : NULL;
    default: return NULL;
    }
}

size_t dsacp_linear_drive_ws_bytes(const dsacp_linear_isa *li, const dsacp_weight *w, int64_t T, bool act_quant)
{
    if (dsacp_bf16dot_linear_applies(w, act_quant)) return dsacp_linear_bf16_ws_bytes(w, T);
    if (!drive_rows(li, w)) return dsacp_linear_scalar_ws_bytes(w, T, act_quant);
    size_t path = li->fast ? li->fast_ws_bytes(w, T) : 0;
    const size_t gemm = T >= DSACP_GEMM_MIN_T ? dsacp_linear_gemm_ws_bytes(w, T, false) : 0;
    if (gemm > path) path = gemm;
    const size_t b = dsacp_ws_add(dsacp_linear_act_quant_bytes(w, T, act_quant), path);
    return b ? dsacp_ws_add(b, DSACP_WS_ALIGN) : 0;
}

int dsacp_linear_drive(const dsacp_linear_isa *li, const dsacp_weight *w, const float *x, int64_t T, int64_t ldx,
                       float *y, int64_t ldy, bool act_quant, void *ws, size_t ws_bytes)
{
    /* The deployed chain (dispatch.c routes it before the tables; any SIMD table's CPU runs AVX2,
     * and every ISA gives the same bits). */
    if (dsacp_bf16dot_linear_applies(w, act_quant))
        return dsacp_linear_bf16(li->isa, li->quant, w, x, T, ldx, y, ldy, ws, ws_bytes);
    const dsacp_linear_rows_fn rows = drive_rows(li, w);
    if (!rows) return linear_ref(w, x, T, ldx, y, ldy, act_quant, li->quant, ws, ws_bytes);
    const int64_t K = w->cols, N = w->rows;
    if (T <= 0 || N <= 0) return DSACP_OK;
    dsacp_ws s = dsacp_ws_open(ws, ws_bytes);
    int64_t ldxin;
    const float *xin = dsacp_linear_act_quant_input(w, x, T, ldx, act_quant, li->quant, &s, &ldxin);
    if (!xin) return dsacp_linear_short_ws(w, ws_bytes, dsacp_linear_drive_ws_bytes(li, w, T, act_quant));
    int rc = DSACP_OK;
    if ((li->fast && li->fast(w, xin, T, ldxin, y, ldy, &rc, s.p, s.left)) ||
        (T >= DSACP_GEMM_MIN_T && dsacp_linear_gemm(w, xin, T, ldxin, y, ldy, false, &rc, s.p, s.left)))
        return rc;
    /* Threads split the row blocks when the call is large enough. */
    rows_job j = {w, xin, ldxin, T, y, ldy, rows};
    const int64_t nb = (N + DSACP_LINEAR_BLOCK - 1) / DSACP_LINEAR_BLOCK;
    dsacp_parallel_for(nb, (double)N * (double)K * (double)T >= 65536, rows_block, &j);
    return DSACP_OK;
}
