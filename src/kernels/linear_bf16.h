/*
 * linear_bf16.h -- deployed mode's linears on the bf16-dot chain (docs/numerics.md, "The bf16-dot
 * chain"; private to src/kernels): a BF16 weight, or an FP8 one with blocks of a multiple of 32,
 * under deployed numerics (dsacp_bf16dot_linear_applies) gives y[t][o] = the chain of weight row
 * o and token t rounded to bf16 (after act_quant where it applies) -- dsacp_bf16dot_scalar for
 * BF16, dsacp_bf16dot_fold_scalar with the row's block scales for FP8 -- bit for bit on every
 * ISA, for every T and thread count. The tables' linear slots route to it (kernels_linear.c), so a
 * table's own workspace size covers it.
 */
#ifndef DSACP_LINEAR_BF16_H
#define DSACP_LINEAR_BF16_H

#include "kernels/kernels_isa.h"

/* The workspace of a call with T tokens: the act_quant copy, the tokens as bf16 pairs and their
 * exponent floors, one buffer of decoded rows per thread of now (FP8, or BF16 of odd width). */
size_t dsacp_linear_bf16_ws_bytes(const dsacp_weight *w, int64_t T);
/* The linear by the kernels of `isa` (one this CPU runs) with act_quant rounded by `quant` (the
 * table's: every rounding gives the same bits); x: F32 [T][ldx], y: F32 [T][ldy].
 * DSACP_EINVAL on a short workspace (fewer threads run when it holds fewer buffers than sized). */
int dsacp_linear_bf16(dsacp_isa isa, dsacp_quant_rows_fn quant, const dsacp_weight *w, const float *x, int64_t T,
                      int64_t ldx, float *y, int64_t ldy, void *ws, size_t ws_bytes);

/* ---- act_quant.c: act_quant, shared with the f32 linears ---- */

/* dsacp_fake_quant_e4m3_groups(x, n, 128). */
void dsacp_quant_rows_scalar(float *x, int64_t n);
/* Bytes of the act_quant copy of T rows (0 when act_quant does not apply to w). */
size_t dsacp_linear_act_quant_bytes(const dsacp_weight *w, int64_t T, bool act_quant);
/* The act_quant copy of x rounded by `quant` (from s, rows of w->cols, *ldout = w->cols) when it
 * applies, else x itself (*ldout = ldx); NULL when s is short. */
const float *dsacp_linear_act_quant_input(const dsacp_weight *w, const float *x, int64_t T, int64_t ldx,
                                          bool act_quant, dsacp_quant_rows_fn quant, dsacp_ws *s, int64_t *ldout);

#endif
