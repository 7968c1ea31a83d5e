/*
 * model -- configuration parsing, checkpoint loading (tensor names: docs/reference-notes.md,
 * "Weights in the saved file"), presets and init-model. Calls core, numerics and io;
 * the weight view it fills (dsacp_weight) is kernels/weight.h.
 *
 * Weights stay in their stored dtype, memory-mapped: F32, BF16, F16, or F8_E4M3 with a
 * weight_scale_inv block-scale tensor (dequantized by the kernels, or by dsacp_weight_to_f32).
 * Every weight is reached by its canonical per-expert name: packed transformers-5 experts
 * (mlp.experts.gate_up_proj [E, 2I, D], mlp.experts.down_proj [E, D, I]) are exposed as views
 * named model.layers.L.mlp.experts.E.{gate,up,down}_proj.weight; a tied lm_head is a view of
 * model.embed_tokens.weight.
 */
#ifndef DSACP_MODEL_H
#define DSACP_MODEL_H

#include "core/core.h"
#include "dsacp_io.h" /* the model's inspection: problems, load flags, files, the non-finite scan */
#include "kernels/weight.h"

/* ---- bounds on config.json ----
 * What a real model can have: generous multiples of DeepSeek-V3.2's values (in parentheses).
 * They keep every product the loader and the engine form from config fields (heads x head dim,
 * vocab x hidden, experts x layers, ...) far inside int64 and size_t, and they are checked before
 * anything is allocated or written from a config. */
#define DSACP_CFG_MAX_WIDTH 65536              /* hidden_size (7168), q_lora_rank (1536), kv_lora_rank (512) */
#define DSACP_CFG_MAX_HEAD_DIM 4096            /* qk_nope/qk_rope/v_head_dim (128/64/128), index_head_dim (128) */
#define DSACP_CFG_MAX_HEADS 1024               /* num_attention_heads (128), index_n_heads (64) */
#define DSACP_CFG_MAX_VOCAB (1 << 24)          /* vocab_size (129280) */
#define DSACP_CFG_MAX_INTERMEDIATE (1 << 20)   /* intermediate_size (18432), moe_intermediate_size (2048) */
#define DSACP_CFG_MAX_EXPERTS 4096             /* n_routed_experts (256), num_experts_per_tok (8), n_group (8) */
#define DSACP_CFG_MAX_SHARED_EXPERTS 64        /* n_shared_experts (1) */
#define DSACP_CFG_MAX_POSITIONS (1 << 24)      /* max_position_embeddings (163840) >= index_topk (2048) */
#define DSACP_CFG_MAX_BLOCK 65536              /* quantization_config.weight_block_size (128) */
#define DSACP_CFG_MAX_NEXTN 16                 /* num_nextn_predict_layers (1) */
/* num_hidden_layers (61) <= DSACP_MAX_LAYERS (512), from dsacp.h, one less with an MTP layer
 * (checkpoint layer num_hidden_layers). */

/* Checks every field of a config (each within the bounds above, and against the others:
 * index_topk <= max_position_embeddings, n_group divides n_routed_experts, ...). The parser runs it
 * before it stores anything derived from the fields; dsacp_model_tensor_specs and
 * dsacp_config_save run it on configs built in code. DSACP_ECONFIG with a message naming `path`
 * (may be NULL) and the field. */
int dsacp_config_check(const dsacp_config *cfg, const char *path);
/* dsacp_preset_config, and the planning-only presets of the same list ("v32": the whole
 * DeepSeek-V3.2, 61 layers, 256 routed experts, vocabulary 129280, which init-model never
 * writes); DSACP_ENOTFOUND listing both kinds otherwise. dsacp_plan_preset is this. */
int dsacp_preset_config_planning(const char *name, dsacp_config *out);


/* The named weight, or NULL when the model has none of that name. */
const dsacp_weight *dsacp_model_weight(const dsacp_model *m, const char *name);
/* Same with a printf-style name: dsacp_model_weightf(m, "model.layers.%d.mlp.gate.weight", L). */
const dsacp_weight *dsacp_model_weightf(const dsacp_model *m, const char *fmt, ...) DSACP_PRINTF(2, 3);
/* A freshly allocated F32 copy of the named weight, which must hold exactly n values (norm
 * weights, biases); NULL with *rc set (DSACP_ENOTFOUND naming it, or DSACP_ENOMEM) otherwise.
 * dsacp_free it. */
float *dsacp_model_vector_f32(const dsacp_model *m, const char *name, int64_t n, int *rc);
/* dsacp_weight (the view), dsacp_weight_to_f32 and dsacp_weight_row_f32: kernels/weight.h. */


/* ---- the checkpoint's expected tensors (one list drives loading, inspect and init-model) ---- */

typedef enum dsacp_tensor_kind {
    DSACP_TK_LINEAR,    /* [out][in] projection: FP8-eligible, init N(0, 1/in) */
    DSACP_TK_LINEAR_F32,/* projection kept in fp32 by transformers (router gate, weights_proj) */
    DSACP_TK_LINEAR_BF16,/* projection never FP8 (DeepSeek's FP8 checkpoint keeps the MTP layer's
                          * eh_proj in bf16): init N(0, 1/in), bf16 when init-model writes fp8 */
    DSACP_TK_EMBED,     /* embedding table, init N(0, 1) */
    DSACP_TK_HEAD,      /* lm_head, init N(0, 1/D) */
    DSACP_TK_NORM,      /* norm weight, init 1 + 0.05 N(0,1) */
    DSACP_TK_BIAS,      /* norm bias / router correction bias, init 0.05 N(0,1) */
} dsacp_tensor_kind;

typedef struct dsacp_tensor_spec {
    char name[160];
    int ndim;
    int64_t shape[2];
    dsacp_tensor_kind kind;
    bool mtp;             /* part of the MTP layer (checkpoint layer num_hidden_layers) */
    const char *fallback; /* NULL: required. Else the checkpoint may omit it, and the loader then
                           * resolves this name to the tensor named here (the MTP shared head ->
                           * lm_head.weight) */
} dsacp_tensor_spec;

/* The canonical tensors a model with this config needs, in checkpoint order (embed, layers, norm,
 * lm_head; per-expert names), then, when num_nextn_predict_layers > 0, the MTP layer M =
 * num_hidden_layers (enorm, hnorm, eh_proj, its decoder layer, shared_head.norm, shared_head.head;
 * `mtp` set; only the first MTP layer: DeepSeek's checkpoints have one). The MTP layer's optional
 * embed_tokens is not listed (init-model does not write it). `*out` is dsacp_free'd by the caller.
 * lm_head is omitted when tie_word_embeddings. */
int dsacp_model_tensor_specs(const dsacp_config *cfg, dsacp_tensor_spec **out, int64_t *count);

/* The loader's public half (problems, DSACP_LOAD_* flags, dsacp_model_load_ex, the files, the
 * non-finite scan and its callbacks) is declared in include/dsacp_io.h. */
/* dsacp_model_scan_finite without callbacks. */
int dsacp_model_check_finite(const dsacp_model *m);
/* Every stored tensor (for inspect): i in [0, dsacp_model_weight_count). */
const dsacp_weight *dsacp_model_weight_at(const dsacp_model *m, int64_t i);
#endif
