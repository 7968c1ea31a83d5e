/*
 * linear_bf16.c -- the deployed linears on the bf16-dot chain (linear_bf16.h): the driver (the
 * act_quant copy, the tokens rounded to bf16 once per call, groups of output rows split over
 * the threads) and the one-token path, where each weight row (BF16: the stored row; FP8 or odd
 * widths: decoded into the thread's buffer) is dotted with each token by the kernels of the ISA:
 * scalar -> the model; AVX2 -> the AVX2 kernel, plain where the two floors allow, emulating
 * otherwise; AVX-512 -> the zmm FMA form over 8 rows at a time (its rows' floor found on the
 * way; a row that turns out not plain is redone), VDPBF16PS where dsacp_bf16dot_hw_level allows
 * and the batched product's measured form prefers it, the AVX2 emulation for what is neither.
 * From MANY_T tokens (SIMD ISAs) the batched product's block API runs instead (gemm_bf16.h): the
 * tokens packed once, each thread packing one block of 32 rows at a time and running the form
 * the operands allow (zmm FMA on plain operands, VDPBF16PS where the instruction is the model,
 * the ymm FMA form on AVX2), a block whose operands no form takes going through the one-token
 * path. Every path gives the model's bits (bf16dot.h), so T, the split and the ISA never change
 * them. Allocates nothing. Calls the bf16-dot chain's files, kernels_linear.c (act_quant) and
 * kernels_threads.c.
 */
#include "kernels/linear_bf16.h"
#include "kernels/bf16dot.h"
#include "kernels/gemm_bf16.h"

#include <string.h>

/* RG: output rows per group of the one-token path (the FMA form's rows per pass); BR: rows of a
 * packed block; MANY_T: the tokens from which the block API runs; TCH: the tokens of one pass
 * of the block API over the weights (packed apart, so that a pass's tokens stay in cache while
 * every block runs them: 21 groups of 12; each pass packs the blocks again). */
enum { RG = 8, BR = DSACP_BF16GEMM_ROWS, MANY_T = 4, TCH = 21 * DSACP_BF16GEMM_GROUP };

/* Pairs of a row, and the same padded to the 16 lanes (a token row's length in pairs). */
static int64_t pairs_of(int64_t K) { return (K + 1) / 2; }
static int64_t padded_pairs(int64_t K) { return (pairs_of(K) + 15) / 16 * 16; }

/* Whether rows go through a buffer: FP8 (decoded) and BF16 of odd width (padded with +0). */
static bool rows_buffered(const dsacp_weight *w) { return w->dtype != DSACP_BF16 || w->cols % 2; }

/* Whether a call takes the block API (the scalar ISA runs the model row by row). */
static bool many_path(dsacp_isa isa, int64_t T) { return isa >= DSACP_ISA_AVX2 && T >= MANY_T; }

/* One thread's buffers: RG rows of 2 * padded pairs bf16 and one for a NaN row's model (when
 * rows_buffered), and with `many` one packed panel of blocks. */
static size_t thread_bytes(const dsacp_weight *w, bool many)
{
    size_t b = 0;
    if (rows_buffered(w))
        b = dsacp_ws_round(dsacp_ws_mul(dsacp_ws_mul(RG + 1, (size_t)padded_pairs(w->cols)), 2 * sizeof(uint16_t)));
    const size_t panel = dsacp_ws_mul((size_t)dsacp_bf16gemm_panel_blocks(w->cols), dsacp_bf16gemm_block_bytes(w->cols));
    return many ? dsacp_ws_add(b, dsacp_ws_round(panel)) : b;
}

/* The block API's token passes: how many, and the bytes of one's packed tokens. */
static int64_t passes(int64_t T) { return (T + TCH - 1) / TCH; }
static size_t pass_bytes(const dsacp_weight *w, int64_t T)
{
    return dsacp_ws_round(dsacp_bf16gemm_tokens_bytes(w->cols, T < TCH ? T : TCH));
}

/* The tokens as bf16 (T rows of 2 * padded pairs), their floors, and with `many` packed per
 * pass with the passes' floors. */
static size_t tokens_bytes(const dsacp_weight *w, int64_t T, bool many)
{
    const size_t xb = dsacp_ws_mul(dsacp_ws_mul((size_t)T, (size_t)padded_pairs(w->cols)), 2 * sizeof(uint16_t));
    const size_t b = dsacp_ws_add(dsacp_ws_round(xb), dsacp_ws_round(dsacp_ws_mul((size_t)T, sizeof(int))));
    if (!many) return b;
    const size_t np = (size_t)passes(T);
    return dsacp_ws_add(dsacp_ws_add(b, dsacp_ws_mul(np, pass_bytes(w, T))), dsacp_ws_round(np * sizeof(int)));
}

size_t dsacp_linear_bf16_ws_bytes(const dsacp_weight *w, int64_t T)
{
    if (T <= 0) return 0;
    const bool many = many_path(DSACP_ISA_AVX2, T); /* the most any ISA takes */
    size_t b = dsacp_ws_add(dsacp_linear_act_quant_bytes(w, T, true), tokens_bytes(w, T, many));
    b = dsacp_ws_add(b, dsacp_ws_mul(thread_bytes(w, many), (size_t)dsacp_kernel_threads()));
    return dsacp_ws_add(b, DSACP_WS_ALIGN);
}

/* ---- the tokens ---- */

typedef struct tok_job {
    const float *x;
    int64_t ldx, K, ld; /* ld: a bf16 token row's length (2 * padded pairs) */
    uint16_t *xb;
    int *floor;
    bool avx2;
} tok_job;

static void tok_row(void *ctx, int64_t t)
{
    const tok_job *j = ctx;
    uint16_t *row = j->xb + t * j->ld;
#if defined(__x86_64__)
    if (j->avx2) j->floor[t] = dsacp_bf16_round_row_avx2(j->x + t * j->ldx, j->K, row);
    else
#endif
        j->floor[t] = dsacp_bf16_round_row(j->x + t * j->ldx, j->K, row);
    memset(row + j->K, 0, (size_t)(j->ld - j->K) * sizeof(uint16_t));
}

/* ---- the one-token path ---- */

typedef struct job {
    const dsacp_weight *w;
    dsacp_isa isa;
    const uint16_t *xb;
    const int *floor;
    unsigned char *tok; /* the block API's packed passes (pass_bytes apart), or NULL */
    int *tok_floor;     /* their floors */
    size_t tok_stride;
    int64_t pass;       /* the pass running */
    int64_t pb;         /* blocks per panel */
    size_t blk_bytes;   /* one packed block */
    int64_t T, ld, ldy, units, chunks; /* units: row groups, or panels with tok */
    float *y;
    unsigned char *bufs;
    size_t buf_bytes, rows_bytes; /* per chunk; its row buffer's part (0: rows read in place) */
    int hw;      /* dsacp_bf16dot_hw_level() */
    bool dpbf16; /* the block API in VDPBF16PS for every block (hw ALL and the measured form) */
} job;

/* A group's rows as bf16 pairs (rows[r], once ready) and their scales (FP8). */
typedef struct group {
    int64_t o0;
    int R;
    bool ready;    /* rows[] filled (FP8 and odd widths: decoded into buf) */
    uint16_t *buf; /* the thread's row buffer, or NULL */
    const uint16_t *rows[RG];
    const float *scales[RG];
    int floor[RG]; /* -1: not known yet */
} group;

static void load_group(const job *j, int64_t g, uint16_t *buf, group *gr)
{
    const dsacp_weight *w = j->w;
    gr->o0 = g * RG;
    gr->R = (int)(w->rows - gr->o0 < RG ? w->rows - gr->o0 : RG);
    gr->ready = false;
    gr->buf = buf;
    for (int r = 0; r < gr->R; r++) {
        const int64_t o = gr->o0 + r;
        gr->floor[r] = -1;
        gr->scales[r] = w->dtype == DSACP_F8_E4M3 ? w->scale + (o / w->block) * w->scale_stride : NULL;
    }
}

/* The group's rows as bf16: the stored ones, or decoded / padded into the buffer. */
static void ready_rows(const job *j, group *gr)
{
    if (gr->ready) return;
    const dsacp_weight *w = j->w;
    const int64_t K = w->cols;
    for (int r = 0; r < gr->R; r++) {
        const int64_t o = gr->o0 + r;
        uint16_t *dst = gr->buf + r * j->ld;
        if (!gr->buf) {
            gr->rows[r] = (const uint16_t *)w->data + o * K;
            continue;
        }
        if (w->dtype == DSACP_BF16) memcpy(dst, (const uint16_t *)w->data + o * K, (size_t)K * sizeof(uint16_t));
#if defined(__x86_64__)
        else if (j->isa == DSACP_ISA_AVX512) dsacp_e4m3_row_bf16_avx512((const uint8_t *)w->data + o * K, K, dst);
#endif
        else dsacp_e4m3_row_bf16((const uint8_t *)w->data + o * K, K, dst);
        if (K % 2) dst[K] = 0;
        gr->rows[r] = dst;
    }
    gr->ready = true;
}

static int row_floor(const job *j, group *gr, int r)
{
    if (gr->floor[r] < 0) {
        const int64_t n2 = 2 * pairs_of(j->w->cols);
#if defined(__x86_64__)
        gr->floor[r] = j->isa >= DSACP_ISA_AVX2 ? dsacp_bf16_exp_floor_avx2(gr->rows[r], n2)
                                               : dsacp_bf16_exp_floor(gr->rows[r], n2);
#else
        gr->floor[r] = dsacp_bf16_exp_floor(gr->rows[r], n2);
#endif
    }
    return gr->floor[r];
}

/* One dot of row r and token x (floor fx) by the ISA's single-row kernel. */
static float dot_one(const job *j, group *gr, int r, const uint16_t *x, int fx)
{
    const int64_t n = pairs_of(j->w->cols), bp = gr->scales[r] ? j->w->block / 2 : 0;
#if defined(__x86_64__)
    if (j->isa == DSACP_ISA_AVX512 && j->hw == DSACP_BF16DOT_HW_ALL)
        return dsacp_bf16dot_fold_avx512bf16(gr->rows[r], x, n, bp, gr->scales[r]);
    if (j->isa >= DSACP_ISA_AVX2) {
        const bool plain = dsacp_bf16dot_plain_ok(row_floor(j, gr, r), fx);
        return dsacp_bf16dot_fold_avx2(gr->rows[r], x, n, bp, gr->scales[r], plain);
    }
#endif
    (void)fx;
    return dsacp_bf16dot_fold_scalar(gr->rows[r], x, n, bp, gr->scales[r]);
}

#if defined(__x86_64__)
/* FP8 rows on AVX-512, decoded in registers: VDPBF16PS where the instruction is the model, the
 * FMA form where an FP8 row's least floor makes the operands plain; false when neither. */
static bool f8_direct(const job *j, group *gr, const uint16_t *x, int fx, float *y)
{
    const bool dp = j->hw == DSACP_BF16DOT_HW_ALL;
    if (!dp && !dsacp_bf16dot_plain_ok(DSACP_E4M3_BF16_FLOOR, fx)) return false;
    const uint8_t *rows[RG];
    for (int r = 0; r < gr->R; r++) rows[r] = (const uint8_t *)j->w->data + (gr->o0 + r) * j->w->cols;
    dsacp_bf16dot_f8_rows(rows, gr->R, j->w->cols, x, j->w->block / 2, gr->scales, dp, y, gr->buf + RG * j->ld);
    return true;
}
#endif

/* The group's outputs for token t on AVX-512: FP8 straight from the bytes (f8_direct), rows by
 * VDPBF16PS where the instruction is the model, else by the FMA form where the operands may be
 * plain (a row whose floor says otherwise is redone by dot_one); elsewhere dot_one per row.
 * (At one token VDPBF16PS, one instruction per 16 pairs, is the faster here even where the
 * batched product prefers the FMA form: the weights' split costs as much as the FMAs.) */
static void group_token(const job *j, group *gr, int64_t t)
{
    const uint16_t *x = j->xb + t * j->ld;
    const int fx = j->floor[t];
    float *y = j->y + t * j->ldy + gr->o0;
#if defined(__x86_64__)
    if (j->isa == DSACP_ISA_AVX512 && j->w->dtype == DSACP_F8_E4M3 && f8_direct(j, gr, x, fx, y)) return;
    ready_rows(j, gr);
    const int64_t bp = gr->scales[0] ? j->w->block / 2 : 0;
    if (j->isa == DSACP_ISA_AVX512 && j->hw == DSACP_BF16DOT_HW_ALL) {
        dsacp_bf16dot_rows(gr->rows, gr->R, j->w->cols, x, bp, gr->scales, true, y);
        return;
    }
    if (j->isa == DSACP_ISA_AVX512 && fx >= 1) {
        const int f = dsacp_bf16dot_rows(gr->rows, gr->R, j->w->cols, x, bp, gr->scales, false, y);
        if (!dsacp_bf16dot_plain_ok(f, fx))
            for (int r = 0; r < gr->R; r++)
                if (!dsacp_bf16dot_plain_ok(row_floor(j, gr, r), fx)) y[r] = dot_one(j, gr, r, x, fx);
        return;
    }
#endif
    ready_rows(j, gr);
    for (int r = 0; r < gr->R; r++) y[r] = dot_one(j, gr, r, x, fx);
}

/* Row group g (RG rows) for tokens [t0, t1) by the one-token path. */
static void group_all(const job *j, int64_t g, uint16_t *buf, int64_t t0, int64_t t1)
{
    group gr;
    load_group(j, g, buf, &gr);
    for (int64_t t = t0; t < t1; t++) group_token(j, &gr, t);
}

/* The block API's form for a block of floor fb and tokens of floor ft, or -1 when none takes
 * these operands. */
static int block_form(const job *j, int fb, int ft)
{
    const bool plain = dsacp_bf16dot_plain_ok(fb, ft);
    if (j->isa == DSACP_ISA_AVX512 && (j->dpbf16 || (!plain && j->hw == DSACP_BF16DOT_HW_ALL)))
        return DSACP_BF16GEMM_DPBF16;
    if (!plain) return -1;
    return j->isa == DSACP_ISA_AVX512 ? DSACP_BF16GEMM_FMA : DSACP_BF16GEMM_AVX2;
}

/* Panel u (the blocks [u * pb, u * pb + pb) of BR rows) for the tokens of the pass running:
 * packed into blk and run by the block API in the form all its blocks allow, or group by group
 * by the one-token path. */
static void panel_pass(const job *j, int64_t u, uint16_t *buf, unsigned char *blk)
{
    const dsacp_weight *w = j->w;
    const int64_t o0 = u * j->pb * BR, rows = w->rows - o0 < j->pb * BR ? w->rows - o0 : j->pb * BR;
    const int64_t t0 = j->pass * TCH, nt = j->T - t0 < TCH ? j->T - t0 : TCH;
    const int nb = (int)((rows + BR - 1) / BR);
    const bool f8 = w->dtype == DSACP_F8_E4M3;
    const float *scales[8] = {NULL};
    int fb = 256;
    for (int b = 0; b < nb; b++) {
        const int f = dsacp_bf16gemm_pack_block(w, o0 + b * BR, blk + (size_t)b * j->blk_bytes);
        fb = f < fb ? f : fb;
        if (f8) scales[b] = w->scale + ((o0 + b * BR) / w->block) * w->scale_stride;
    }
    const int form = block_form(j, fb, j->tok_floor[j->pass]);
    if (form < 0) {
        for (int64_t g = o0 / RG; g * RG < o0 + rows; g++) group_all(j, g, buf, t0, t0 + nt);
        return;
    }
    dsacp_bf16gemm_panel(form, blk, nb, rows, w->cols, j->tok + (size_t)j->pass * j->tok_stride, nt,
                         f8 ? scales : NULL, f8 ? w->block / 2 : 0, j->y + t0 * j->ldy + o0, j->ldy);
}

/* Chunk c: units [c * units / chunks, (c + 1) * units / chunks) with buffers c. */
static void chunk(void *ctx, int64_t c)
{
    const job *j = ctx;
    unsigned char *mine = j->bufs ? j->bufs + (size_t)c * j->buf_bytes : NULL;
    uint16_t *buf = j->rows_bytes ? (uint16_t *)mine : NULL;
    const int64_t u0 = c * j->units / j->chunks, u1 = (c + 1) * j->units / j->chunks;
    for (int64_t u = u0; u < u1; u++) {
        if (j->tok) panel_pass(j, u, buf, mine + j->rows_bytes);
        else group_all(j, u, buf, 0, j->T);
    }
}

/* ---- the driver ---- */

/* Pass p's tokens packed for the block API. */
static void pack_pass(void *ctx, int64_t p)
{
    job *j = ctx;
    const int64_t t0 = p * TCH, nt = j->T - t0 < TCH ? j->T - t0 : TCH;
    j->tok_floor[p] = dsacp_bf16gemm_pack_tokens(j->xb + t0 * j->ld, nt, j->w->cols, j->ld,
                                                 j->tok + (size_t)p * j->tok_stride);
}

/* Rounds the tokens to bf16 (xb, floors) and, with tok, packs them pass by pass. */
static void prepare_tokens(dsacp_isa isa, const float *xin, int64_t ldxin, job *j, uint16_t *xb, int *floor)
{
    const int64_t T = j->T, K = j->w->cols;
    tok_job tj = {xin, ldxin, K, j->ld, xb, floor, isa >= DSACP_ISA_AVX2};
    dsacp_parallel_for(T, T * K >= (1 << 17), tok_row, &tj);
    j->xb = xb, j->floor = floor;
    if (j->tok) dsacp_parallel_for(passes(T), T * K >= (1 << 17), pack_pass, j);
}

int dsacp_linear_bf16(dsacp_isa isa, dsacp_quant_rows_fn quant, const dsacp_weight *w, const float *x, int64_t T,
                      int64_t ldx, float *y, int64_t ldy, void *ws, size_t ws_bytes)
{
    const int64_t K = w->cols, N = w->rows;
    if (T <= 0 || N <= 0) return DSACP_OK;
    dsacp_ws s = dsacp_ws_open(ws, ws_bytes);
    if (!quant) quant = dsacp_quant_rows_scalar;
    int64_t ldxin;
    const float *xin = dsacp_linear_act_quant_input(w, x, T, ldx, true, quant, &s, &ldxin);
    const bool many = many_path(isa, T);
    const int64_t ld = 2 * padded_pairs(K);
    uint16_t *xb = xin ? dsacp_ws_take(&s, (size_t)(T * ld) * sizeof(uint16_t)) : NULL;
    int *floor = xb ? dsacp_ws_take(&s, (size_t)T * sizeof(int)) : NULL;
    const size_t stride = many ? pass_bytes(w, T) : 0;
    unsigned char *tok = floor && many ? dsacp_ws_take(&s, (size_t)passes(T) * stride) : NULL;
    int *tok_floor = tok ? dsacp_ws_take(&s, (size_t)passes(T) * sizeof(int)) : NULL;
    const size_t tb = thread_bytes(w, many), nbuf = tb ? s.left / tb : SIZE_MAX;
    if (!floor || (many && !tok_floor) || nbuf < 1)
        return dsacp_linear_short_ws(w, ws_bytes, dsacp_linear_bf16_ws_bytes(w, T));
    const int hw = isa == DSACP_ISA_AVX512 ? dsacp_bf16dot_hw_level() : DSACP_BF16DOT_HW_NONE;
    job j = {.w = w, .isa = isa, .tok = tok, .tok_floor = tok_floor, .tok_stride = stride, .T = T, .ld = ld,
             .ldy = ldy, .y = y, .bufs = tb ? s.p : NULL, .buf_bytes = tb, .rows_bytes = thread_bytes(w, false),
             .hw = hw, .dpbf16 = hw == DSACP_BF16DOT_HW_ALL && dsacp_bf16gemm_form() == DSACP_BF16GEMM_DPBF16};
    prepare_tokens(isa, xin, ldxin, &j, xb, floor);
    j.pb = dsacp_bf16gemm_panel_blocks(K);
    j.blk_bytes = dsacp_bf16gemm_block_bytes(K);
    j.units = many ? (N + j.pb * BR - 1) / (j.pb * BR) : (N + RG - 1) / RG;
    const bool split = (double)N * (double)K * (double)T >= 65536;
    j.chunks = split ? dsacp_kernel_threads() : 1;
    if ((size_t)j.chunks > nbuf) j.chunks = (int64_t)nbuf;
    if (j.chunks > j.units) j.chunks = j.units;
    for (j.pass = 0; j.pass < (many ? passes(T) : 1); j.pass++) dsacp_parallel_for(j.chunks, split, chunk, &j);
    return DSACP_OK;
}
