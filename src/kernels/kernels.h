/*
 * kernels -- leaf compute functions over plain buffers (pointers, strides, counts), with no
 * knowledge of requests, steps or ranks: the context-parallel strategies run the same kernels
 * on each rank's shard. Calls core, numerics and the weight view of model.h.
 *
 * Batch invariance: every kernel computes each output row with a reduction order that depends
 * only on that row's own inputs and lengths, never on how many other rows are in the call or on
 * the thread count. A token therefore gets bit-identical projections, index scores and top-k
 * sets whether it arrives in a prefill of 1000 tokens, a chunk of 7 or alone; schedule-invariance
 * of the selected sets rests on this.
 */
#ifndef DSACP_KERNELS_H
#define DSACP_KERNELS_H

#include "model/model.h"

#include <stdint.h>

/* Dot product of n floats with a fixed 16-lane summation order. */
float dsacp_dot_f32(const float *a, const float *b, int64_t n);

/* y[t][o] = sum_i W[o][i] * x[t][i] for t < T, o < W->rows, W in its stored dtype (F32, BF16,
 * F16, or F8_E4M3 with block scales). x: F32 [T][W->cols] row stride ldx; y: F32 [T][W->rows]
 * row stride ldy. With act_quant (the deployed mode's FP8 layers) each x row is first rounded
 * through e4m3 in groups of 128 (power-of-two scales), as DeepSeek's act_quant does; it is
 * applied only when W is F8_E4M3 and W->cols % 128 == 0. */
int dsacp_linear(const dsacp_weight *w, const float *x, int64_t T, int64_t ldx, float *y, int64_t ldy,
                 bool act_quant);

/* y = x / sqrt(mean(x^2) + eps) * weight, n values (weight: dsacp_weight of n, any float dtype). */
void dsacp_rmsnorm(float *y, const float *x, const float *weight, int64_t n, double eps);
/* LayerNorm: (x - mean) / sqrt(var + eps) * weight + bias (biased variance). */
void dsacp_layernorm(float *y, const float *x, const float *weight, const float *bias, int64_t n,
                     double eps);

/* Top-k by descending score among scores[0..n), ties to the lower index; writes the min(k, n)
 * selected indices in ASCENDING order to out and returns their count. NaN scores never win. */
int64_t dsacp_topk_select(const float *scores, int64_t n, int64_t k, int32_t *out);
/* Order-preserving map of a float to uint32 (larger float -> larger key); -0 and +0 map to
 * the same key, so they tie as floats do. */
static inline uint32_t dsacp_float_key(float f)
{
    uint32_t b;
    if (f == 0.0f) f = 0.0f;
    __builtin_memcpy(&b, &f, 4);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

/* Sparse MLA for one query token over n gathered latent rows (absorbed form, dsa-spec.md 3.6):
 *   q:    F32 [H][dc + dr]  rows [q_abs | q_pe]
 *   kv:   F32 [n][dc + dr]  rows [c | k_pe] of the selected positions
 *   o:    F32 [H][dc]       softmax-weighted sum of c
 *   lse:  F32 [H]           natural-log logsumexp of the scaled logits (-inf when n == 0, o = 0)
 *   work: F32 [n] scratch
 * logits = (q . kv) * scale. */
void dsacp_sparse_mla(const float *q, const float *kv, int64_t n, int64_t H, int64_t dc, int64_t dr,
                      float scale, float *o, float *lse, float *work);

/* Merge of partial attention results over R parts (context parallelism): per head
 * lse = log sum_r exp(lse_r), o = sum_r exp(lse_r - lse) o_r, in fixed part order; parts with
 * lse_r = -inf contribute nothing; all -inf gives o = 0, lse = -inf.
 *   o_parts: F32 [R][H][d], lse_parts: F32 [R][H] -> o: F32 [H][d], lse: F32 [H]. */
void dsacp_lse_merge(const float *o_parts, const float *lse_parts, int64_t R, int64_t H, int64_t d,
                     float *o, float *lse);

#endif
