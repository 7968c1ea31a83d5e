/*
 * attn -- one DeepSeek Sparse Attention layer (dsa-spec.md section 3) over the paged caches:
 * projections, lightning indexer, top-k, absorbed sparse MLA, o_proj. The math reads top to
 * bottom in dsa_layer.c. Calls core, numerics, kernels, cache and the model's weight views.
 */
#ifndef DSACP_DSA_LAYER_H
#define DSACP_DSA_LAYER_H

#include "cache/kv_cache.h"
#include "kernels/kernels.h"
#include "numerics/numerics.h"

typedef enum dsacp_numerics_mode { DSACP_MODE_EXACT = 0, DSACP_MODE_DEPLOYED = 1 } dsacp_numerics_mode;

/* One layer's weights, resolved once: projections as stored, small vectors as F32 copies, and
 * kv_b_proj dequantized for the absorbed form (W_UK, W_UV). */
typedef struct dsacp_dsa_weights {
    const dsacp_weight *q_a, *q_b, *kv_a, *kv_b, *o, *wq_b, *wk, *wproj;
    float *q_a_norm, *kv_a_norm, *k_norm_w, *k_norm_b; /* F32 [q_lora], [dc], [di], [di] */
    /* F32 [H][nope + v][dc]: rows 0..nope-1 are W_UK[h], the next v are W_UV[h]. Input of
     * dsacp_dsa_weights_absorb, which frees it (NULL) unless W_UV ends up viewing it. */
    float *kv_b_f32;
    /* The absorbed form read in the stored dtype (dsacp_dsa_weights_absorb; NULL: the layer reads
     * kv_b_f32 instead): per head, W_UK[h]^T [dc][nope] (a transposed copy: F8_E4M3 with the
     * transposed block scales when the 128-blocks align, BF16/F16 as stored, else F32) and W_UV[h]
     * [v][dc] (a view of kv_b_proj, or of kv_b_f32). Both run through dsacp_linear, so a token's
     * q_abs and v rows are batch-invariant and read 1 (fp8) or 2 bytes per weight, not 4. */
    dsacp_weight *wuk_t, *wuv; /* [H] each */
    void *absorb_buf;
} dsacp_dsa_weights;

/* Builds wuk_t / wuv from kv_b (and kv_b_f32, which must be filled), then frees kv_b_f32 when
 * nothing views it; calling it again after that is a no-op. Released by
 * dsacp_dsa_weights_release or dsacp_dsa_weights_absorb_release. */
int dsacp_dsa_weights_absorb(dsacp_dsa_weights *w, const dsacp_config *cfg);
void dsacp_dsa_weights_absorb_release(dsacp_dsa_weights *w);

int dsacp_dsa_weights_bind(dsacp_dsa_weights *w, const dsacp_model *m, int64_t layer);
void dsacp_dsa_weights_release(dsacp_dsa_weights *w);

/* The step's tokens, flattened in request order (as vLLM does). */
typedef struct dsacp_step_tokens {
    int64_t T;
    const int64_t *pos;           /* [T] absolute position of each token */
    const int32_t *seq;           /* [T] index into seqs */
    dsacp_kv_seq *const *seqs;    /* block tables, already reserved to cover every token */
} dsacp_step_tokens;

typedef struct dsacp_dsa_ctx {
    const dsacp_config *cfg;
    dsacp_numerics_mode mode;
    const dsacp_rope *rope;
    dsacp_kv_cache *cache;
} dsacp_dsa_ctx;

/* out[t] = attention(x[t]) for the step's T tokens; x: F32 [T][D] (already RMS-normed),
 * out: F32 [T][D]. Writes the latent and indexer caches at every token's slot first, then
 * attends (so a token sees the step's earlier tokens of its own request).
 * topk: I32 [T][index_topk] or NULL: selected positions, ascending, -1 padded. */
int dsacp_dsa_forward(const dsacp_dsa_ctx *ctx, const dsacp_dsa_weights *w, int64_t layer,
                      const dsacp_step_tokens *tok, const float *x, float *out, int32_t *topk);

#endif
