/*
 * ref_model -- the float64 reference implementation of the whole model: the test oracle the
 * optimized engine is checked against.
 *
 * Deliberately simple: dense per-sequence arrays, direct loops that mirror docs/dsa-math.md
 * sections 3, 4, 5 and 7 line by line, no paging, no BLAS, no threads. Every value is a double;
 * weights are dequantized to f32 by dsacp_weight_to_f32 and widened. Weights are looked up by
 * their canonical names (docs/dsa-math.md section 2, src/model/model.h).
 *
 * Conventions the reference fixes (and the engine must share):
 *  - RMSNorm: x * 1/sqrt(mean(x^2) + eps) * weight; eps = cfg->rms_norm_eps for the input,
 *    post-attention and final norms, 1e-6 for q_a_layernorm and kv_a_layernorm (transformers
 *    builds those two with the default eps). Indexer k_norm is a LayerNorm (biased variance,
 *    eps 1e-6, weight and bias).
 *  - RoPE: frequencies computed here in double from the config (yarn ramp with transformers'
 *    rules: low = max(floor(corr(beta_fast)), 0), high = min(ceil(corr(beta_slow)), rope-1),
 *    high += 0.001 when low == high), cos/sin multiplied by cfg->rope_attention_factor.
 *    Interleaved pairs (2i, 2i+1) on the last `rope` dims of each MLA query head and on k_pe
 *    (the last `rope` values of kv_a_proj_with_mqa's output); rotate-half pairs (i, i+rope/2)
 *    on the first `rope` dims of each indexer query head and of the indexer key.
 *  - Top-k: the min(index_topk, p+1) positions s <= p with the largest index score; ties go to
 *    the lower position. Exact ties are common: with few indexer heads many keys score exactly 0
 *    (every ReLU zero), and torch.topk may break them differently. Attention softmax runs over
 *    the selected set only.
 *  - MLA is computed in the absorbed form (docs/dsa-math.md section 3 step 6), scale
 *    cfg->softmax_scale. kv_b_proj is used as W_UK / W_UV directly (never with an activation
 *    quantization, as in the official absorbed code).
 *  - MoE routing as docs/dsa-math.md section 7 / transformers' DeepseekV32TopkRouter; ties among
 *    groups and experts go to the lower index. Shared experts: one MLP named shared_experts.
 *
 * Numerics modes:
 *  - REF_EXACT: no activation rounding anywhere except the KV cache rounding chosen by `kv`.
 *  - REF_DEPLOYED additionally:
 *      indexer: each qi head row and each ki row is multiplied by the di-point Hadamard matrix
 *      times di^-0.5 (dsacp_hadamard), then quantized to e4m3 with one power-of-two scale per
 *      row (group = di); score I(p,s) = k_scale[s] * sum_h ReLU(q8[h].k8[s]) * w'[h],
 *      w'[h] = w[h] * q_scale[h] * di^-0.5, w[h] = weights_proj(x)[h] * Hi^-0.5
 *      (di must be a power of two <= 1024, else DSACP_EUNSUPPORTED);
 *      FP8 linear layers (weight dtype F8_E4M3, in_features a multiple of 128) round their
 *      input through a per-128-group e4m3 quantization first (official act_quant).
 *  - kv (both modes; what is cached is what attention reads, for the token's own position too):
 *      REF_KV_F32  no rounding;
 *      REF_KV_BF16 c and k_pe rounded to bf16;
 *      REF_KV_FP8  c rounded through e4m3 per 128-group with power-of-two scales
 *                  (kv_lora_rank must be a multiple of 128, else DSACP_EUNSUPPORTED), k_pe
 *                  rounded to bf16.
 *    The indexer key is f32 in REF_EXACT (whatever `kv` is) and e4m3 in REF_DEPLOYED.
 */
#ifndef DSACP_REF_MODEL_H
#define DSACP_REF_MODEL_H

#include "dsacp.h"

#include <stdint.h>

typedef enum { REF_EXACT = 0, REF_DEPLOYED = 1 } ref_numerics;
typedef enum { REF_KV_F32 = 0, REF_KV_BF16 = 1, REF_KV_FP8 = 2 } ref_kv;

/* Runs one sequence of n tokens (positions 0..n-1, causal) through the whole model in float64.
 *  ids    I32 [n], each in [0, vocab_size).
 *  logits F64 [n][vocab_size] (may be NULL): lm_head . RMSNorm(h) of every position.
 *  topk   I32 [num_hidden_layers][n][index_topk] (may be NULL): for each layer and position p
 *         the selected set S_p, positions in ascending order, padded with -1 after the
 *         min(index_topk, p+1) valid entries.
 *  gap    F64 [num_hidden_layers][n] (may be NULL): relative gap between the k-th and the
 *         (k+1)-th largest index score of position p (k = index_topk):
 *         (s_k - s_k1) / max(|s_k|, 1e-30); +inf when p+1 <= k (no competition). Tests skip
 *         positions whose gap is below their tolerance (near-ties).
 * Returns 0, or a dsacp status (DSACP_EINVAL for bad arguments or ids, DSACP_ENOTFOUND /
 * DSACP_ESHAPE for a missing or misshaped weight, DSACP_EUNSUPPORTED for a mode the model's
 * dimensions cannot run, DSACP_ENOMEM) with dsacp_last_error() set. */
int ref_forward(const dsacp_model *m, ref_numerics mode, ref_kv kv, const int32_t *ids, int64_t n,
                double *logits, int32_t *topk, double *gap);
/* ref_forward that also returns the final-normed hidden rows (what lm_head reads and what the MTP
 * layer takes as its hidden input): hidden F64 [n][hidden_size], may be NULL. */
int ref_forward_ex(const dsacp_model *m, ref_numerics mode, ref_kv kv, const int32_t *ids, int64_t n,
                   double *logits, int32_t *topk, double *gap, double *hidden);

/* The MTP layer (checkpoint layer M = num_hidden_layers, docs/mtp.md) over n rows at positions
 * 0..n-1, in float64:
 *   x_p      = eh_proj [RMSNorm(e_p; enorm); RMSNorm(hidden[p]; hnorm)], e_p = embed(ids[p]) (the
 *              layer's own embed_tokens when the checkpoint has one), zero for p = 0 (vLLM);
 *   out_p    = decoder layer M (DSA attention over rows 0..p, its MLP) of x;
 *   logits_p = head RMSNorm(out_p; shared_head.norm), head = shared_head.head, else lm_head.
 *  ids     I32 [n]: row p's token = the token at position p + 1 of the sequence.
 *  hidden  F64 [n][D]: row p's hidden input: the target's final-normed row p (ref_forward_ex), or,
 *          for a chained draft row, the MTP layer's out_{p-1}.
 *  out     F64 [n][D] (may be NULL): out_p, pre-norm (what a chained row p + 1 takes as hidden).
 *  logits  F64 [n][vocab] (may be NULL); topk I32 [n][index_topk] and gap F64 [n] (may be NULL):
 *          the MTP layer's selections, as ref_forward's.
 * DSACP_EINVAL when the model has no MTP layer (dsacp_model_has_mtp) or for bad arguments; else
 * as ref_forward. */
int ref_mtp_forward(const dsacp_model *m, ref_numerics mode, ref_kv kv, const int32_t *ids, const double *hidden,
                    int64_t n, double *out, double *logits, int32_t *topk, double *gap);

#endif
