/*
 * config.c -- parsing and writing the Hugging Face config.json of a DeepSeek-V3.2 model.
 *
 * Both rope spellings are accepted: "rope_scaling" (DeepSeek's and older transformers) and
 * "rope_parameters" (transformers 5, which also moves rope_theta inside). Derived numbers
 * (the cos/sin attention factor and the softmax scale) follow transformers' rules, which a
 * config written by it must reproduce (docs/reference-notes.md, "RoPE"); DeepSeek's reference
 * code uses m(factor, mscale) for the softmax scale instead, which agrees on the released configs.
 *
 * Every field is validated before anything derived from it is stored: each integer within the
 * bounds of model.h (DSACP_CFG_MAX_*) as it is read, then every field against the others
 * (dsacp_config_check), then the per-layer mlp_layer_types. The result is copied to the caller
 * only on success. A field that changes the math with a value dsacp does not implement
 * (attention_bias: true, ...) is refused with its name, never ignored.
 */
#include "core/core.h"
#include "model/model.h"
#include "numerics/numerics.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#define CONFIG_MAX_BYTES (16u << 20)

typedef struct parse_ctx {
    const char *path;
    json_t *root;
} parse_ctx;

/* Integer field: required (fails naming it) or defaulted. Accepts integral JSON numbers. */
static int get_int(parse_ctx *c, json_t *obj, const char *key, bool required, int64_t def,
                   int64_t min, int64_t max, int64_t *out)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) {
        if (required)
            return dsacp_error(DSACP_ECONFIG, "%s: missing required field '%s'", c->path, key);
        *out = def;
        return DSACP_OK;
    }
    int64_t x;
    if (json_is_integer(v)) {
        x = (int64_t)json_integer_value(v);
    } else if (json_is_real(v) && json_real_value(v) == floor(json_real_value(v)) &&
               fabs(json_real_value(v)) < 9e15) {
        x = (int64_t)json_real_value(v);
    } else {
        return dsacp_error(DSACP_ECONFIG, "%s: field '%s' must be an integer", c->path, key);
    }
    if (x < min || x > max)
        return dsacp_error(DSACP_ECONFIG, "%s: field '%s' = %lld is out of range [%lld, %lld]",
                           c->path, key, (long long)x, (long long)min, (long long)max);
    *out = x;
    return DSACP_OK;
}

static int get_real(parse_ctx *c, json_t *obj, const char *key, bool required, double def,
                    double min, double max, double *out, bool *present)
{
    json_t *v = json_object_get(obj, key);
    if (present) *present = false;
    if (!v || json_is_null(v)) {
        if (required)
            return dsacp_error(DSACP_ECONFIG, "%s: missing required field '%s'", c->path, key);
        *out = def;
        return DSACP_OK;
    }
    if (!json_is_number(v))
        return dsacp_error(DSACP_ECONFIG, "%s: field '%s' must be a number", c->path, key);
    double x = json_number_value(v);
    if (!(x >= min && x <= max))
        return dsacp_error(DSACP_ECONFIG, "%s: field '%s' = %g is out of range [%g, %g]", c->path,
                           key, x, min, max);
    *out = x;
    if (present) *present = true;
    return DSACP_OK;
}

static int get_bool(parse_ctx *c, json_t *obj, const char *key, bool def, bool *out)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return DSACP_OK;
    }
    if (!json_is_boolean(v))
        return dsacp_error(DSACP_ECONFIG, "%s: field '%s' must be true or false", c->path, key);
    *out = json_is_true(v);
    return DSACP_OK;
}

#define TRY(x)                        \
    do {                              \
        int rc_ = (x);                \
        if (rc_ != DSACP_OK) return rc_; \
    } while (0)

static int parse_rope(parse_ctx *c, dsacp_config *cfg)
{
    json_t *root = c->root;
    json_t *rope = json_object_get(root, "rope_parameters");
    const char *rope_key = "rope_parameters";
    if (!rope || json_is_null(rope)) {
        rope = json_object_get(root, "rope_scaling");
        rope_key = "rope_scaling";
    }
    if (rope && !json_is_null(rope) && !json_is_object(rope))
        return dsacp_error(DSACP_ECONFIG, "%s: field '%s' must be an object", c->path, rope_key);
    if (rope && json_is_null(rope)) rope = NULL;

    /* rope_theta: top level (older) or inside rope_parameters (transformers 5). */
    json_t *theta_obj = root;
    if (rope && json_object_get(rope, "rope_theta")) theta_obj = rope;
    TRY(get_real(c, theta_obj, "rope_theta", false, 10000.0, 1.0, 1e12, &cfg->rope_theta, NULL));

    /* A partial rotary dimension would rotate fewer than qk_rope_head_dim dims. */
    char field[96];
    for (int k = 0; k < 2; k++) {
        json_t *obj = k == 0 ? root : rope;
        if (!obj) continue;
        json_t *v = json_object_get(obj, "partial_rotary_factor");
        if (!v || json_is_null(v)) continue;
        if (k == 0) snprintf(field, sizeof field, "partial_rotary_factor");
        else snprintf(field, sizeof field, "%s.partial_rotary_factor", rope_key);
        if (!json_is_number(v))
            return dsacp_error(DSACP_ECONFIG, "%s: field '%s' must be a number", c->path, field);
        if (json_number_value(v) != 1.0)
            return dsacp_error(DSACP_EUNSUPPORTED, "%s: field '%s' = %g is not supported (RoPE covers "
                               "all qk_rope_head_dim dims: only 1)", c->path, field, json_number_value(v));
    }

    cfg->rope_type = DSACP_ROPE_DEFAULT;
    cfg->rope_factor = 1.0;
    cfg->rope_attention_factor = 1.0;
    if (!rope) return DSACP_OK;

    json_t *type = json_object_get(rope, "rope_type");
    if (!type) type = json_object_get(rope, "type");
    const char *tname = type && json_is_string(type) ? json_string_value(type) : NULL;
    if (type && !tname)
        return dsacp_error(DSACP_ECONFIG, "%s: field '%s.rope_type' must be a string", c->path,
                           rope_key);
    if (!tname || strcmp(tname, "default") == 0) return DSACP_OK;
    if (strcmp(tname, "yarn") != 0)
        return dsacp_error(DSACP_ECONFIG, "%s: field '%s.rope_type' = \"%s\" is not supported "
                           "(only \"yarn\" and \"default\")", c->path, rope_key, tname);
    cfg->rope_type = DSACP_ROPE_YARN;

    /* transformers' yarn "truncate" (default true) floors/ceils the correction range; dsacp
     * implements only that. */
    json_t *trunc = json_object_get(rope, "truncate");
    if (trunc && !json_is_null(trunc)) {
        if (!json_is_boolean(trunc))
            return dsacp_error(DSACP_ECONFIG, "%s: field '%s.truncate' must be true or false", c->path,
                               rope_key);
        if (!json_is_true(trunc))
            return dsacp_error(DSACP_EUNSUPPORTED, "%s: field '%s.truncate' = false is not supported "
                               "(only the truncated yarn correction range)", c->path, rope_key);
    }

    snprintf(field, sizeof field, "%s.original_max_position_embeddings", rope_key);
    json_t *orig = json_object_get(rope, "original_max_position_embeddings");
    json_t *orig_obj = orig ? rope : root;
    if (!json_object_get(orig_obj, "original_max_position_embeddings"))
        return dsacp_error(DSACP_ECONFIG, "%s: missing required field '%s'", c->path, field);
    TRY(get_real(c, orig_obj, "original_max_position_embeddings", true, 0, 1, DSACP_CFG_MAX_POSITIONS,
                 &cfg->rope_original_max_position, NULL));
    double def_factor = (double)cfg->max_position_embeddings / cfg->rope_original_max_position;
    bool present;
    TRY(get_real(c, rope, "factor", false, def_factor, 1e-6, 1e9, &cfg->rope_factor, NULL));
    TRY(get_real(c, rope, "beta_fast", false, 32.0, 1e-9, 1e9, &cfg->rope_beta_fast, NULL));
    TRY(get_real(c, rope, "beta_slow", false, 1.0, 1e-9, 1e9, &cfg->rope_beta_slow, NULL));
    TRY(get_real(c, rope, "mscale", false, 0.0, 0.0, 1e9, &cfg->rope_mscale, NULL));
    TRY(get_real(c, rope, "mscale_all_dim", false, 0.0, 0.0, 1e9, &cfg->rope_mscale_all_dim, NULL));
    TRY(get_real(c, rope, "attention_factor", false, 0.0, 0.0, 1e9,
                 &cfg->rope_attention_factor_key, &present));
    cfg->rope_has_attention_factor = present;

    /* transformers _compute_yarn_parameters. */
    double f = cfg->rope_factor;
    if (cfg->rope_has_attention_factor)
        cfg->rope_attention_factor = cfg->rope_attention_factor_key;
    else if (cfg->rope_mscale != 0 && cfg->rope_mscale_all_dim != 0)
        cfg->rope_attention_factor =
            dsacp_yarn_mscale(f, cfg->rope_mscale) / dsacp_yarn_mscale(f, cfg->rope_mscale_all_dim);
    else
        cfg->rope_attention_factor = dsacp_yarn_mscale(f, 1.0);
    return DSACP_OK;
}

static int parse_quant(parse_ctx *c, dsacp_config *cfg)
{
    json_t *q = json_object_get(c->root, "quantization_config");
    cfg->weight_block_rows = cfg->weight_block_cols = 128;
    if (!q || json_is_null(q)) return DSACP_OK;
    if (!json_is_object(q))
        return dsacp_error(DSACP_ECONFIG, "%s: field 'quantization_config' must be an object",
                           c->path);
    json_t *m = json_object_get(q, "quant_method");
    if (!m || !json_is_string(m))
        return dsacp_error(DSACP_ECONFIG, "%s: missing required field 'quantization_config.quant_method'",
                           c->path);
    if (strcmp(json_string_value(m), "fp8") != 0)
        return dsacp_error(DSACP_ECONFIG, "%s: field 'quantization_config.quant_method' = \"%s\" is "
                           "not supported (only \"fp8\")", c->path, json_string_value(m));
    cfg->fp8_weights = true;
    json_t *fmt = json_object_get(q, "fmt");
    if (fmt && (!json_is_string(fmt) || strcmp(json_string_value(fmt), "e4m3") != 0))
        return dsacp_error(DSACP_ECONFIG, "%s: field 'quantization_config.fmt' must be \"e4m3\"",
                           c->path);
    /* "static" activation quantization needs per-layer input scales that dsacp never reads. */
    json_t *act = json_object_get(q, "activation_scheme");
    if (act && !json_is_null(act)) {
        if (!json_is_string(act))
            return dsacp_error(DSACP_ECONFIG, "%s: field 'quantization_config.activation_scheme' must "
                               "be a string", c->path);
        if (strcmp(json_string_value(act), "dynamic") != 0)
            return dsacp_error(DSACP_EUNSUPPORTED, "%s: field 'quantization_config.activation_scheme' = "
                               "\"%.64s\" is not supported (only \"dynamic\")", c->path,
                               json_string_value(act));
    }
    json_t *bs = json_object_get(q, "weight_block_size");
    if (bs) {
        if (!json_is_array(bs) || json_array_size(bs) != 2 ||
            !json_is_integer(json_array_get(bs, 0)) || !json_is_integer(json_array_get(bs, 1)) ||
            json_integer_value(json_array_get(bs, 0)) <= 0 ||
            json_integer_value(json_array_get(bs, 1)) <= 0 ||
            json_integer_value(json_array_get(bs, 0)) > DSACP_CFG_MAX_BLOCK ||
            json_integer_value(json_array_get(bs, 1)) > DSACP_CFG_MAX_BLOCK)
            return dsacp_error(DSACP_ECONFIG, "%s: field 'quantization_config.weight_block_size' "
                               "must be two integers in [1, %d]", c->path, DSACP_CFG_MAX_BLOCK);
        cfg->weight_block_rows = json_integer_value(json_array_get(bs, 0));
        cfg->weight_block_cols = json_integer_value(json_array_get(bs, 1));
        if (cfg->weight_block_rows != cfg->weight_block_cols)
            return dsacp_error(DSACP_ECONFIG, "%s: field 'quantization_config.weight_block_size' "
                               "must be square", c->path);
    }
    /* Block scales: plain float (absent / null / "float") or power-of-two "ue8m0". */
    json_t *sf = json_object_get(q, "scale_fmt");
    if (sf && !json_is_null(sf)) {
        if (!json_is_string(sf))
            return dsacp_error(DSACP_ECONFIG, "%s: field 'quantization_config.scale_fmt' must be a string",
                               c->path);
        const char *v = json_string_value(sf);
        if (strcmp(v, "ue8m0") == 0)
            cfg->scale_fmt_ue8m0 = true;
        else if (strcmp(v, "float") != 0)
            return dsacp_error(DSACP_EUNSUPPORTED, "%s: field 'quantization_config.scale_fmt' = \"%.64s\" "
                               "is not supported (only \"ue8m0\" or \"float\")", c->path, v);
    }
    return DSACP_OK;
}

/* One bound check, with the message every config error uses. */
static int in_range(const char *path, const char *key, int64_t x, int64_t lo, int64_t hi)
{
    if (x < lo || x > hi)
        return dsacp_error(DSACP_ECONFIG, "%s: field '%s' = %lld is out of range [%lld, %lld]", path, key,
                           (long long)x, (long long)lo, (long long)hi);
    return DSACP_OK;
}

static int real_in_range(const char *path, const char *key, double x, double lo, double hi)
{
    if (!(x >= lo && x <= hi))
        return dsacp_error(DSACP_ECONFIG, "%s: field '%s' = %g is out of range [%g, %g]", path, key, x, lo,
                           hi);
    return DSACP_OK;
}

int dsacp_config_check(const dsacp_config *cfg, const char *path)
{
    if (!cfg) return dsacp_error(DSACP_EINVAL, "dsacp_config_check: NULL config");
    const char *p = path ? path : "config";
    const bool moe = cfg->n_routed_experts > 0;
    /* Each field on its own (the parser already enforced these; a config built in code may not). */
    TRY(in_range(p, "hidden_size", cfg->hidden_size, 1, DSACP_CFG_MAX_WIDTH));
    TRY(in_range(p, "num_hidden_layers", cfg->num_hidden_layers, 1, DSACP_MAX_LAYERS));
    TRY(in_range(p, "num_nextn_predict_layers", cfg->num_nextn_predict_layers, 0, DSACP_CFG_MAX_NEXTN));
    /* The MTP layer is checkpoint layer num_hidden_layers: it needs a layer slot of its own. */
    if (cfg->num_nextn_predict_layers > 0 && cfg->num_hidden_layers >= DSACP_MAX_LAYERS)
        return dsacp_error(DSACP_ECONFIG, "%s: field 'num_nextn_predict_layers' = %lld needs layer %lld for "
                           "the MTP layer, but num_hidden_layers (%lld) + 1 exceeds %d layers", p,
                           (long long)cfg->num_nextn_predict_layers, (long long)cfg->num_hidden_layers,
                           (long long)cfg->num_hidden_layers, DSACP_MAX_LAYERS);
    TRY(in_range(p, "num_attention_heads", cfg->num_attention_heads, 1, DSACP_CFG_MAX_HEADS));
    TRY(in_range(p, "q_lora_rank", cfg->q_lora_rank, 1, DSACP_CFG_MAX_WIDTH));
    TRY(in_range(p, "kv_lora_rank", cfg->kv_lora_rank, 1, DSACP_CFG_MAX_WIDTH));
    TRY(in_range(p, "qk_nope_head_dim", cfg->qk_nope_head_dim, 1, DSACP_CFG_MAX_HEAD_DIM));
    TRY(in_range(p, "qk_rope_head_dim", cfg->qk_rope_head_dim, 1, DSACP_CFG_MAX_HEAD_DIM));
    TRY(in_range(p, "v_head_dim", cfg->v_head_dim, 1, DSACP_CFG_MAX_HEAD_DIM));
    TRY(in_range(p, "index_n_heads", cfg->index_n_heads, 1, DSACP_CFG_MAX_HEADS));
    TRY(in_range(p, "index_head_dim", cfg->index_head_dim, 1, DSACP_CFG_MAX_HEAD_DIM));
    TRY(in_range(p, "max_position_embeddings", cfg->max_position_embeddings, 1, DSACP_CFG_MAX_POSITIONS));
    TRY(in_range(p, "index_topk", cfg->index_topk, 1, DSACP_CFG_MAX_POSITIONS));
    TRY(in_range(p, "vocab_size", cfg->vocab_size, 1, DSACP_CFG_MAX_VOCAB));
    TRY(in_range(p, "intermediate_size", cfg->intermediate_size, 1, DSACP_CFG_MAX_INTERMEDIATE));
    TRY(in_range(p, "n_routed_experts", cfg->n_routed_experts, 0, DSACP_CFG_MAX_EXPERTS));
    TRY(in_range(p, "moe_intermediate_size", cfg->moe_intermediate_size, moe ? 1 : 0,
                 DSACP_CFG_MAX_INTERMEDIATE));
    TRY(in_range(p, "num_experts_per_tok", cfg->num_experts_per_tok, moe ? 1 : 0, DSACP_CFG_MAX_EXPERTS));
    TRY(in_range(p, "n_shared_experts", cfg->n_shared_experts, 0, DSACP_CFG_MAX_SHARED_EXPERTS));
    TRY(in_range(p, "n_group", cfg->n_group, 1, DSACP_CFG_MAX_EXPERTS));
    TRY(in_range(p, "topk_group", cfg->topk_group, 1, DSACP_CFG_MAX_EXPERTS));
    TRY(in_range(p, "first_k_dense_replace", cfg->first_k_dense_replace, 0, DSACP_MAX_LAYERS));
    TRY(in_range(p, "moe_layer_freq", cfg->moe_layer_freq, 1, DSACP_MAX_LAYERS));
    TRY(real_in_range(p, "rope_theta", cfg->rope_theta, 1.0, 1e12));
    TRY(real_in_range(p, "rms_norm_eps", cfg->rms_norm_eps, 0.0, 1.0));
    TRY(real_in_range(p, "routed_scaling_factor", cfg->routed_scaling_factor, 0.0, 1e9));

    /* Against each other. */
    if (cfg->qk_rope_head_dim % 2)
        return dsacp_error(DSACP_ECONFIG, "%s: field 'qk_rope_head_dim' must be even", p);
    if (cfg->index_head_dim < cfg->qk_rope_head_dim)
        return dsacp_error(DSACP_ECONFIG, "%s: field 'index_head_dim' (%lld) must be at least "
                           "qk_rope_head_dim (%lld)", p, (long long)cfg->index_head_dim,
                           (long long)cfg->qk_rope_head_dim);
    if (cfg->index_topk > cfg->max_position_embeddings)
        return dsacp_error(DSACP_ECONFIG, "%s: field 'index_topk' (%lld) exceeds "
                           "max_position_embeddings (%lld)", p, (long long)cfg->index_topk,
                           (long long)cfg->max_position_embeddings);
    if (moe) {
        if (cfg->n_group > cfg->n_routed_experts || cfg->n_routed_experts % cfg->n_group)
            return dsacp_error(DSACP_ECONFIG, "%s: field 'n_group' (%lld) must divide "
                               "n_routed_experts (%lld)", p, (long long)cfg->n_group,
                               (long long)cfg->n_routed_experts);
        if (cfg->topk_group > cfg->n_group)
            return dsacp_error(DSACP_ECONFIG, "%s: field 'topk_group' exceeds n_group", p);
        if (cfg->num_experts_per_tok > cfg->n_routed_experts)
            return dsacp_error(DSACP_ECONFIG, "%s: field 'num_experts_per_tok' exceeds "
                               "n_routed_experts", p);
        if (cfg->num_experts_per_tok > cfg->topk_group * (cfg->n_routed_experts / cfg->n_group))
            return dsacp_error(DSACP_ECONFIG, "%s: field 'num_experts_per_tok' exceeds the experts "
                               "in topk_group groups", p);
    } else if (cfg->has_mlp_layer_types) {
        for (int64_t l = 0; l < cfg->num_hidden_layers; l++)
            if (cfg->mlp_layer_moe[l])
                return dsacp_error(DSACP_ECONFIG, "%s: field 'mlp_layer_types' names a sparse layer "
                                   "but n_routed_experts is 0", p);
    }

    /* RoPE. */
    if (cfg->rope_type != DSACP_ROPE_DEFAULT && cfg->rope_type != DSACP_ROPE_YARN)
        return dsacp_error(DSACP_ECONFIG, "%s: field 'rope_scaling.rope_type' is not supported", p);
    if (cfg->rope_type == DSACP_ROPE_YARN) {
        TRY(real_in_range(p, "rope_scaling.original_max_position_embeddings", cfg->rope_original_max_position,
                          1.0, DSACP_CFG_MAX_POSITIONS));
        TRY(real_in_range(p, "rope_scaling.factor", cfg->rope_factor, 1e-6, 1e9));
        TRY(real_in_range(p, "rope_scaling.beta_fast", cfg->rope_beta_fast, 1e-9, 1e9));
        TRY(real_in_range(p, "rope_scaling.beta_slow", cfg->rope_beta_slow, 1e-9, 1e9));
        TRY(real_in_range(p, "rope_scaling.mscale", cfg->rope_mscale, 0.0, 1e9));
        TRY(real_in_range(p, "rope_scaling.mscale_all_dim", cfg->rope_mscale_all_dim, 0.0, 1e9));
        if (cfg->rope_has_attention_factor)
            TRY(real_in_range(p, "rope_scaling.attention_factor", cfg->rope_attention_factor_key, 0.0, 1e9));
    }
    /* Quantization blocks (read even without fp8: init-model may switch to it). */
    if (cfg->fp8_weights || cfg->weight_block_rows || cfg->weight_block_cols) {
        TRY(in_range(p, "quantization_config.weight_block_size", cfg->weight_block_rows, 1, DSACP_CFG_MAX_BLOCK));
        if (cfg->weight_block_cols != cfg->weight_block_rows)
            return dsacp_error(DSACP_ECONFIG, "%s: field 'quantization_config.weight_block_size' "
                               "must be square", p);
    }
    return DSACP_OK;
}

/* Fields of transformers' DeepseekV32Config / DeepSeek-V3 configs that change the math and that
 * dsacp implements for one value only: any other value is refused, never ignored. */
static int check_unsupported(parse_ctx *c, const dsacp_config *cfg)
{
    const char *p = c->path;
    json_t *root = c->root;
    /* Booleans that must have one value: biases dsacp does not add, the interleaved MLA RoPE. */
    static const struct {
        const char *key;
        bool want;
        const char *why;
    } flags[] = {
        {"attention_bias", false, "dsacp has no biases on q_a_proj, kv_a_proj_with_mqa and o_proj"},
        {"mlp_bias", false, "dsacp has no MLP biases"},
        {"rope_interleave", true, "dsacp implements the interleaved MLA RoPE only"},
    };
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++) {
        json_t *v = json_object_get(root, flags[i].key);
        if (!v || json_is_null(v)) continue;
        if (!json_is_boolean(v))
            return dsacp_error(DSACP_ECONFIG, "%s: field '%s' must be true or false", p, flags[i].key);
        if (json_is_true(v) != flags[i].want)
            return dsacp_error(DSACP_EUNSUPPORTED, "%s: field '%s' = %s is not supported (%s)", p,
                               flags[i].key, flags[i].want ? "false" : "true", flags[i].why);
    }
    json_t *act = json_object_get(root, "hidden_act");
    if (act && !json_is_null(act) && (!json_is_string(act) || strcmp(json_string_value(act), "silu") != 0))
        return dsacp_error(DSACP_ECONFIG, "%s: field 'hidden_act' must be \"silu\"", p);
    /* DeepSeek-V3 routing is sigmoid scoring with bias-corrected ("noaux_tc") choice; other
     * DeepSeek generations' settings would silently compute something else. */
    static const struct {
        const char *key, *want;
    } fixed[] = {{"scoring_func", "sigmoid"}, {"topk_method", "noaux_tc"}};
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) {
        json_t *v = json_object_get(root, fixed[i].key);
        if (v && !json_is_null(v) && (!json_is_string(v) || strcmp(json_string_value(v), fixed[i].want) != 0))
            return dsacp_error(DSACP_ECONFIG, "%s: field '%s' must be \"%s\" (DeepSeek-V3 routing)", p,
                               fixed[i].key, fixed[i].want);
    }
    /* Integers that must agree with the fields dsacp reads (grouped-query KV, the head size,
     * transformers' alias of n_routed_experts). */
    static const struct {
        const char *key;
        int which;
    } same[] = {{"num_key_value_heads", 0}, {"qk_head_dim", 1}, {"num_local_experts", 2}};
    for (size_t i = 0; i < sizeof same / sizeof same[0]; i++) {
        json_t *v = json_object_get(root, same[i].key);
        if (!v || json_is_null(v)) continue;
        int64_t want = same[i].which == 0   ? cfg->num_attention_heads
                       : same[i].which == 1 ? cfg->qk_nope_head_dim + cfg->qk_rope_head_dim
                                            : cfg->n_routed_experts;
        const char *other = same[i].which == 0   ? "num_attention_heads"
                            : same[i].which == 1 ? "qk_nope_head_dim + qk_rope_head_dim"
                                                 : "n_routed_experts";
        if (!json_is_integer(v))
            return dsacp_error(DSACP_ECONFIG, "%s: field '%s' must be an integer", p, same[i].key);
        if ((int64_t)json_integer_value(v) != want)
            return dsacp_error(same[i].which == 0 ? DSACP_EUNSUPPORTED : DSACP_ECONFIG,
                               "%s: field '%s' = %lld must equal %s (%lld)", p, same[i].key,
                               (long long)json_integer_value(v), other, (long long)want);
    }
    return DSACP_OK;
}

/* transformers 5's per-layer "mlp_layer_types"; num_hidden_layers is already bounded by
 * DSACP_MAX_LAYERS, and every entry is checked before any is stored. */
static int parse_mlp_layer_types(parse_ctx *c, dsacp_config *cfg)
{
    json_t *types = json_object_get(c->root, "mlp_layer_types");
    if (!types || json_is_null(types)) return DSACP_OK;
    const int64_t L = cfg->num_hidden_layers;
    if (L < 1 || L > DSACP_MAX_LAYERS)
        return dsacp_error(DSACP_ECONFIG, "%s: field 'num_hidden_layers' = %lld is out of range [1, %d]",
                           c->path, (long long)L, DSACP_MAX_LAYERS);
    if (!json_is_array(types) || (int64_t)json_array_size(types) < L)
        return dsacp_error(DSACP_ECONFIG, "%s: field 'mlp_layer_types' must list a type for each "
                           "of the %lld layers", c->path, (long long)L);
    uint8_t moe[DSACP_MAX_LAYERS];
    for (int64_t l = 0; l < L; l++) {
        json_t *t = json_array_get(types, (size_t)l);
        const char *s = json_is_string(t) ? json_string_value(t) : "";
        if (strcmp(s, "dense") == 0) {
            moe[l] = 0;
        } else if (strcmp(s, "sparse") == 0) {
            moe[l] = 1;
        } else {
            return dsacp_error(DSACP_ECONFIG, "%s: field 'mlp_layer_types[%lld]' must be \"dense\" "
                               "or \"sparse\"", c->path, (long long)l);
        }
        if (moe[l] && cfg->n_routed_experts == 0)
            return dsacp_error(DSACP_ECONFIG, "%s: field 'mlp_layer_types' names a sparse layer "
                               "but n_routed_experts is 0", c->path);
    }
    memcpy(cfg->mlp_layer_moe, moe, (size_t)L);
    cfg->has_mlp_layer_types = true;
    return DSACP_OK;
}

static int parse_root(parse_ctx *c, dsacp_config *cfg)
{
    json_t *root = c->root;
    if (!json_is_object(root))
        return dsacp_error(DSACP_ECONFIG, "%s: top level must be a JSON object", c->path);
    /* Every integer within its bound before anything reads it. */
#define INT_REQ(name, lo, hi) TRY(get_int(c, root, #name, true, 0, lo, hi, &cfg->name))
#define INT_OPT(name, def, lo, hi) TRY(get_int(c, root, #name, false, def, lo, hi, &cfg->name))
    INT_REQ(hidden_size, 1, DSACP_CFG_MAX_WIDTH);
    INT_REQ(num_hidden_layers, 1, DSACP_MAX_LAYERS);
    INT_OPT(num_nextn_predict_layers, 0, 0, DSACP_CFG_MAX_NEXTN);
    INT_REQ(num_attention_heads, 1, DSACP_CFG_MAX_HEADS);
    INT_REQ(q_lora_rank, 1, DSACP_CFG_MAX_WIDTH);
    INT_REQ(kv_lora_rank, 1, DSACP_CFG_MAX_WIDTH);
    INT_REQ(qk_nope_head_dim, 1, DSACP_CFG_MAX_HEAD_DIM);
    INT_REQ(qk_rope_head_dim, 1, DSACP_CFG_MAX_HEAD_DIM);
    INT_REQ(v_head_dim, 1, DSACP_CFG_MAX_HEAD_DIM);
    INT_REQ(index_n_heads, 1, DSACP_CFG_MAX_HEADS);
    INT_REQ(index_head_dim, 1, DSACP_CFG_MAX_HEAD_DIM);
    INT_REQ(index_topk, 1, DSACP_CFG_MAX_POSITIONS);
    INT_REQ(vocab_size, 1, DSACP_CFG_MAX_VOCAB);
    INT_REQ(intermediate_size, 1, DSACP_CFG_MAX_INTERMEDIATE);
    INT_OPT(max_position_embeddings, 163840, 1, DSACP_CFG_MAX_POSITIONS);
    INT_OPT(n_routed_experts, 0, 0, DSACP_CFG_MAX_EXPERTS);
    if (cfg->n_routed_experts > 0) {
        INT_REQ(moe_intermediate_size, 1, DSACP_CFG_MAX_INTERMEDIATE);
        INT_REQ(num_experts_per_tok, 1, DSACP_CFG_MAX_EXPERTS);
    } else {
        INT_OPT(moe_intermediate_size, 0, 0, DSACP_CFG_MAX_INTERMEDIATE);
        INT_OPT(num_experts_per_tok, 0, 0, DSACP_CFG_MAX_EXPERTS);
    }
    INT_OPT(n_shared_experts, 0, 0, DSACP_CFG_MAX_SHARED_EXPERTS);
    INT_OPT(n_group, 1, 1, DSACP_CFG_MAX_EXPERTS);
    INT_OPT(topk_group, 1, 1, DSACP_CFG_MAX_EXPERTS);
    INT_OPT(first_k_dense_replace, 0, 0, DSACP_MAX_LAYERS);
    INT_OPT(moe_layer_freq, 1, 1, DSACP_MAX_LAYERS);
#undef INT_REQ
#undef INT_OPT
    TRY(get_real(c, root, "routed_scaling_factor", false, 1.0, 0.0, 1e9, &cfg->routed_scaling_factor, NULL));
    TRY(get_real(c, root, "rms_norm_eps", false, 1e-6, 0.0, 1.0, &cfg->rms_norm_eps, NULL));
    TRY(get_bool(c, root, "norm_topk_prob", false, &cfg->norm_topk_prob));
    TRY(get_bool(c, root, "tie_word_embeddings", false, &cfg->tie_word_embeddings));
    TRY(check_unsupported(c, cfg));
    TRY(parse_rope(c, cfg));
    TRY(parse_quant(c, cfg));
    /* Every field against the others, then the per-layer list (which relies on them). */
    TRY(dsacp_config_check(cfg, c->path));
    TRY(parse_mlp_layer_types(c, cfg));

    cfg->softmax_scale = 1.0 / sqrt((double)(cfg->qk_nope_head_dim + cfg->qk_rope_head_dim));
    if (cfg->rope_type != DSACP_ROPE_DEFAULT && cfg->rope_mscale_all_dim != 0) {
        double m = dsacp_yarn_mscale(cfg->rope_factor, cfg->rope_mscale_all_dim);
        cfg->softmax_scale *= m * m;
    }
    return DSACP_OK;
}

int dsacp_config_parse(const char *json_text, size_t len, const char *path, dsacp_config *out)
{
    if (!json_text || !out) return dsacp_error(DSACP_EINVAL, "dsacp_config_parse: NULL argument");
    if (!path) path = "config.json";
    memset(out, 0, sizeof *out);
    json_error_t jerr;
    json_t *root = json_loadb(json_text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return dsacp_error(DSACP_ECONFIG, "%s: invalid JSON at line %d, column %d: %s", path,
                           jerr.line, jerr.column, jerr.text);
    /* Parsed into a local copy: `out` receives a config only once every field is validated. */
    parse_ctx c = {path, root};
    dsacp_config cfg;
    memset(&cfg, 0, sizeof cfg);
    int rc = parse_root(&c, &cfg);
    if (rc == DSACP_OK) *out = cfg;
    json_decref(root);
    return rc;
}

int dsacp_config_load(const char *path, dsacp_config *out)
{
    char *text;
    size_t len;
    int rc = dsacp_read_file(path, &text, &len, CONFIG_MAX_BYTES);
    if (rc) return rc == DSACP_EIO ? rc : DSACP_ECONFIG;
    rc = dsacp_config_parse(text, len, path, out);
    dsacp_free(text);
    return rc;
}

/* Layers [0, num_hidden_layers) are the target's; layer num_hidden_layers is the MTP layer when
 * the config declares one. mlp_layer_types (transformers 5) lists the target layers only, so the
 * MTP layer always takes the first_k_dense_replace / moe_layer_freq rule: vLLM's MTP decoder layer
 * (deepseek_mtp.py builds a DeepseekV2DecoderLayer whose index, read from its prefix
 * "model.layers.M", goes through that rule); SGLang's deepseek_nextn.py makes it MoE whenever the
 * model has routed experts, which agrees on DeepSeek's configs (M = 61 >= first_k_dense_replace = 3,
 * moe_layer_freq 1); transformers has no MTP module and skips the layer's tensors on load. */
bool dsacp_config_layer_is_moe(const dsacp_config *cfg, int64_t layer)
{
    const int64_t layers = cfg->num_hidden_layers + (cfg->num_nextn_predict_layers > 0 ? 1 : 0);
    if (cfg->n_routed_experts <= 0 || layer < 0 || layer >= layers || layer >= DSACP_MAX_LAYERS)
        return false;
    if (cfg->has_mlp_layer_types && layer < cfg->num_hidden_layers) return cfg->mlp_layer_moe[layer] != 0;
    return layer >= cfg->first_k_dense_replace && layer % cfg->moe_layer_freq == 0;
}

/* One formula for an entry's bytes, in numerics (the cache sizes its pools with it too). */
int64_t dsacp_mla_cache_bytes_per_token(const dsacp_config *cfg, dsacp_kv_dtype dtype)
{
    return dsacp_mla_entry_bytes(cfg->kv_lora_rank, cfg->qk_rope_head_dim, dtype);
}

int64_t dsacp_index_cache_bytes_per_token(const dsacp_config *cfg, dsacp_kv_dtype dtype)
{
    return dsacp_index_entry_bytes(cfg->index_head_dim, dtype);
}

/* ---- writing ---- */

static json_t *jint(int64_t v) { return json_integer((json_int_t)v); }

int dsacp_config_save(const dsacp_config *cfg, const char *path)
{
    int crc = dsacp_config_check(cfg, path);
    if (crc) return crc;
    json_t *o = json_object();
    json_object_set_new(o, "architectures", json_pack("[s]", "DeepseekV32ForCausalLM"));
    json_object_set_new(o, "model_type", json_string("deepseek_v32"));
#define PUT_INT(name) json_object_set_new(o, #name, jint(cfg->name))
    PUT_INT(hidden_size);
    PUT_INT(num_hidden_layers);
    PUT_INT(num_nextn_predict_layers);
    PUT_INT(num_attention_heads);
    json_object_set_new(o, "num_key_value_heads", jint(cfg->num_attention_heads));
    PUT_INT(q_lora_rank);
    PUT_INT(kv_lora_rank);
    PUT_INT(qk_nope_head_dim);
    PUT_INT(qk_rope_head_dim);
    PUT_INT(v_head_dim);
    PUT_INT(index_n_heads);
    PUT_INT(index_head_dim);
    PUT_INT(index_topk);
    PUT_INT(vocab_size);
    PUT_INT(intermediate_size);
    PUT_INT(moe_intermediate_size);
    PUT_INT(n_routed_experts);
    PUT_INT(n_shared_experts);
    PUT_INT(num_experts_per_tok);
    PUT_INT(n_group);
    PUT_INT(topk_group);
    PUT_INT(first_k_dense_replace);
    PUT_INT(moe_layer_freq);
    PUT_INT(max_position_embeddings);
#undef PUT_INT
    json_object_set_new(o, "routed_scaling_factor", json_real(cfg->routed_scaling_factor));
    json_object_set_new(o, "norm_topk_prob", json_boolean(cfg->norm_topk_prob));
    json_object_set_new(o, "tie_word_embeddings", json_boolean(cfg->tie_word_embeddings));
    json_object_set_new(o, "rms_norm_eps", json_real(cfg->rms_norm_eps));
    json_object_set_new(o, "hidden_act", json_string("silu"));
    json_object_set_new(o, "rope_theta", json_real(cfg->rope_theta));
    if (cfg->has_mlp_layer_types) {
        json_t *a = json_array();
        for (int64_t l = 0; l < cfg->num_hidden_layers; l++)
            json_array_append_new(a, json_string(cfg->mlp_layer_moe[l] ? "sparse" : "dense"));
        json_object_set_new(o, "mlp_layer_types", a);
    }
    if (cfg->rope_type == DSACP_ROPE_YARN) {
        json_t *r = json_object();
        json_object_set_new(r, "type", json_string("yarn"));
        json_object_set_new(r, "rope_type", json_string("yarn"));
        json_object_set_new(r, "factor", json_real(cfg->rope_factor));
        json_object_set_new(r, "original_max_position_embeddings",
                            jint((int64_t)cfg->rope_original_max_position));
        json_object_set_new(r, "beta_fast", json_real(cfg->rope_beta_fast));
        json_object_set_new(r, "beta_slow", json_real(cfg->rope_beta_slow));
        if (cfg->rope_mscale != 0) json_object_set_new(r, "mscale", json_real(cfg->rope_mscale));
        if (cfg->rope_mscale_all_dim != 0)
            json_object_set_new(r, "mscale_all_dim", json_real(cfg->rope_mscale_all_dim));
        if (cfg->rope_has_attention_factor)
            json_object_set_new(r, "attention_factor", json_real(cfg->rope_attention_factor_key));
        json_object_set_new(o, "rope_scaling", r);
    }
    if (cfg->fp8_weights) {
        json_t *q = json_object();
        json_object_set_new(q, "quant_method", json_string("fp8"));
        json_object_set_new(q, "fmt", json_string("e4m3"));
        json_object_set_new(q, "activation_scheme", json_string("dynamic"));
        json_object_set_new(q, "weight_block_size",
                            json_pack("[I,I]", (json_int_t)cfg->weight_block_rows,
                                      (json_int_t)cfg->weight_block_cols));
        json_object_set_new(q, "scale_fmt", json_string(cfg->scale_fmt_ue8m0 ? "ue8m0" : "float"));
        json_object_set_new(o, "quantization_config", q);
    }
    char *text = json_dumps(o, JSON_INDENT(2) | JSON_REAL_PRECISION(17));
    json_decref(o);
    if (!text) return dsacp_error(DSACP_ENOMEM, "%s: cannot serialize config", path);
    size_t n = strlen(text);
    char *buf = dsacp_alloc(n + 2);
    int rc = DSACP_ENOMEM;
    if (buf) {
        memcpy(buf, text, n);
        buf[n] = '\n';
        rc = dsacp_write_file_atomic(path, buf, n + 1);
        dsacp_free(buf);
    }
    free(text);
    return rc;
}
