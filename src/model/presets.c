/*
 * presets.c -- the built-in model shapes and `init-model`: deterministic random checkpoints
 * with the real tensor names (docs/dsa-math.md section 2).
 *
 * Determinism: every tensor is filled in chunks of 64K elements, each chunk from its own
 * generator seeded by (seed, tensor name, chunk index). The bytes therefore depend only on
 * (config, seed, format), not on thread count or tensor order; the MTP layer's tensors (their own
 * names) leave every target tensor's bytes as they were without it.
 * Scaling: linear weights N(0, 1/fan_in), embeddings N(0, 1), norm weights 1 + 0.05 N(0, 1),
 * biases 0.05 N(0, 1): every RMSNorm input is O(1), so activations stay O(1) through the stack.
 */
#include "io/safetensors.h"
#include "model/model.h"
#include "numerics/numerics.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static void yarn(dsacp_config *c, double factor, double orig)
{
    c->rope_type = DSACP_ROPE_YARN;
    c->rope_factor = factor;
    c->rope_original_max_position = orig;
    c->rope_beta_fast = 32;
    c->rope_beta_slow = 1;
    c->rope_mscale = 1.0;
    c->rope_mscale_all_dim = 1.0;
}

/* Fills the derived fields exactly as the parser would, by a round trip through JSON rules. */
static int finish(dsacp_config *c)
{
    c->num_nextn_predict_layers = 1; /* DeepSeek-V3.2's one MTP layer (init-model --no-mtp: 0) */
    c->rope_theta = 10000.0;
    c->rms_norm_eps = 1e-6;
    c->moe_layer_freq = 1;
    c->weight_block_rows = c->weight_block_cols = 128;
    c->scale_fmt_ue8m0 = true;
    double f = c->rope_factor;
    c->rope_attention_factor = 1.0;
    if (c->rope_type == DSACP_ROPE_YARN)
        c->rope_attention_factor = (c->rope_mscale != 0 && c->rope_mscale_all_dim != 0)
                                       ? dsacp_yarn_mscale(f, c->rope_mscale) /
                                             dsacp_yarn_mscale(f, c->rope_mscale_all_dim)
                                       : dsacp_yarn_mscale(f, 1.0);
    c->softmax_scale = 1.0 / sqrt((double)(c->qk_nope_head_dim + c->qk_rope_head_dim));
    if (c->rope_type == DSACP_ROPE_YARN && c->rope_mscale_all_dim != 0) {
        double m = dsacp_yarn_mscale(f, c->rope_mscale_all_dim);
        c->softmax_scale *= m * m;
    }
    return DSACP_OK;
}

/* ---- the presets ---- */

static void preset_tiny(dsacp_config *c)
{
    *c = (dsacp_config){.hidden_size = 256, .num_hidden_layers = 2, .num_attention_heads = 4,
                        .q_lora_rank = 128, .kv_lora_rank = 128, .qk_nope_head_dim = 32,
                        .qk_rope_head_dim = 32, .v_head_dim = 32, .index_n_heads = 8,
                        .index_head_dim = 64, .index_topk = 32, .vocab_size = 512,
                        .intermediate_size = 512, .max_position_embeddings = 4096,
                        .n_group = 1, .topk_group = 1, .routed_scaling_factor = 1.0};
    yarn(c, 4.0, 1024);
}

static void preset_tiny_moe(dsacp_config *c)
{
    preset_tiny(c);
    c->n_routed_experts = 8;
    c->n_shared_experts = 1;
    c->num_experts_per_tok = 2;
    c->n_group = 2;
    c->topk_group = 1;
    c->moe_intermediate_size = 128;
    c->first_k_dense_replace = 1;
    c->routed_scaling_factor = 2.5;
    c->norm_topk_prob = true;
}

static void preset_small(dsacp_config *c)
{
    *c = (dsacp_config){.hidden_size = 1024, .num_hidden_layers = 4, .num_attention_heads = 16,
                        .q_lora_rank = 512, .kv_lora_rank = 512, .qk_nope_head_dim = 64,
                        .qk_rope_head_dim = 64, .v_head_dim = 64, .index_n_heads = 16,
                        .index_head_dim = 128, .index_topk = 256, .vocab_size = 8192,
                        .intermediate_size = 2816, .max_position_embeddings = 32768,
                        .n_routed_experts = 16, .n_shared_experts = 1,
                        .num_experts_per_tok = 4, .n_group = 4, .topk_group = 2,
                        .moe_intermediate_size = 256, .first_k_dense_replace = 1,
                        .routed_scaling_factor = 2.5, .norm_topk_prob = true};
    yarn(c, 8.0, 4096);
}

/* One layer with DeepSeek-V3.2's real attention dimensions; a small vocabulary keeps the file to
 * the attention and one dense MLP. */
static void preset_v32_layer(dsacp_config *c)
{
    *c = (dsacp_config){.hidden_size = 7168, .num_hidden_layers = 1, .num_attention_heads = 128,
                        .q_lora_rank = 1536, .kv_lora_rank = 512, .qk_nope_head_dim = 128,
                        .qk_rope_head_dim = 64, .v_head_dim = 128, .index_n_heads = 64,
                        .index_head_dim = 128, .index_topk = 2048, .vocab_size = 4096,
                        .intermediate_size = 18432, .max_position_embeddings = 163840,
                        .n_group = 1, .topk_group = 1, .routed_scaling_factor = 1.0};
    yarn(c, 40.0, 4096);
}

/* DeepSeek-V3.2's config.json (docs/dsa-math.md section 1): v32-layer's attention, the whole
 * stack. For planning only: no checkpoint is ever made of it. */
static void preset_v32(dsacp_config *c)
{
    preset_v32_layer(c);
    c->num_hidden_layers = 61;
    c->vocab_size = 129280;
    c->intermediate_size = 18432;
    c->moe_intermediate_size = 2048;
    c->n_routed_experts = 256;
    c->n_shared_experts = 1;
    c->num_experts_per_tok = 8;
    c->n_group = 8;
    c->topk_group = 4;
    c->routed_scaling_factor = 2.5;
    c->norm_topk_prob = true;
    c->first_k_dense_replace = 3;
}

/* The one list of presets: the ones init-model writes (dsacp_preset_names, up to the first
 * NULL), then the planning-only ones (dsacp_preset_config_planning), each with its fill. */
static const char *const preset_names[] = {"tiny", "tiny-moe", "small", "v32-layer", NULL, "v32", NULL};
static void (*const preset_fills[])(dsacp_config *) = {preset_tiny, preset_tiny_moe, preset_small,
                                                       preset_v32_layer, NULL, preset_v32, NULL};
_Static_assert(sizeof preset_names / sizeof preset_names[0] == sizeof preset_fills / sizeof preset_fills[0],
               "one fill per preset name");

const char *const *dsacp_preset_names(void) { return preset_names; }

/* Appends the words to buf (size bytes), cut short when full. */
static void append(char *buf, size_t size, const char *sep, const char *word)
{
    const size_t used = strlen(buf);
    snprintf(buf + used, size - used, "%s%s", sep, word);
}

/* Fills c from the row named `name` among the init-model presets, and among the planning-only
 * ones too when `planning`; DSACP_ENOTFOUND listing the names it looked at otherwise. */
static int preset_lookup(const char *name, bool planning, const char *shown, dsacp_config *c)
{
    memset(c, 0, sizeof *c);
    const size_t n = sizeof preset_names / sizeof preset_names[0];
    for (size_t i = 0; i < n; i++) {
        if (!preset_names[i] && !planning) break;
        if (preset_names[i] && strcmp(name, preset_names[i]) == 0) {
            preset_fills[i](c);
            return finish(c);
        }
    }
    char known[128] = "";
    size_t i = 0;
    for (; preset_names[i]; i++) append(known, sizeof known, i ? ", " : "", preset_names[i]);
    for (i++; planning && preset_names[i]; i++) append(known, sizeof known, ", and for planning ", preset_names[i]);
    return dsacp_error(DSACP_ENOTFOUND, "unknown preset '%s' (known: %s)", shown, known);
}

int dsacp_preset_config(const char *name, dsacp_config *c)
{
    return preset_lookup(name ? name : "", false, name ? name : "", c);
}

int dsacp_preset_config_planning(const char *name, dsacp_config *c)
{
    return preset_lookup(name ? name : "", true, name ? name : "(null)", c);
}

/* ---- init-model ---- */

static uint64_t fnv1a(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 0x100000001b3ull;
    return h;
}

enum { CHUNK = 1 << 16 };

static void fill_tensor(const dsacp_tensor_spec *s, uint64_t seed, float *out, int64_t n)
{
    double mean = 0, std = 1;
    switch (s->kind) {
    case DSACP_TK_LINEAR:
    case DSACP_TK_LINEAR_F32:
    case DSACP_TK_LINEAR_BF16: std = 1.0 / sqrt((double)s->shape[1]); break;
    case DSACP_TK_EMBED: std = 1.0; break;
    case DSACP_TK_HEAD: std = 1.0 / sqrt((double)s->shape[1]); break;
    case DSACP_TK_NORM: mean = 1.0; std = 0.05; break;
    case DSACP_TK_BIAS: std = 0.05; break;
    }
    uint64_t h = fnv1a(s->name) ^ (seed * 0x9E3779B97F4A7C15ull);
    int64_t nchunks = (n + CHUNK - 1) / CHUNK;
#pragma omp parallel for schedule(dynamic, 4)
    for (int64_t c = 0; c < nchunks; c++) {
        dsacp_rng rng;
        dsacp_rng_seed(&rng, h + (uint64_t)c * 0xD1B54A32D192ED03ull);
        int64_t end = (c + 1) * CHUNK < n ? (c + 1) * CHUNK : n;
        for (int64_t i = c * CHUNK; i < end; i++) out[i] = (float)(mean + std * dsacp_rng_normal(&rng));
    }
}

/* FP8 block quantization of a [rows][cols] weight: 128x128 blocks, power-of-two scales. */
static void quant_fp8_blocks(const float *w, int64_t rows, int64_t cols, int64_t blk, uint8_t *q,
                             float *scale)
{
    int64_t sr = (rows + blk - 1) / blk, sc = (cols + blk - 1) / blk;
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t bi = 0; bi < sr; bi++)
        for (int64_t bj = 0; bj < sc; bj++) {
            int64_t r1 = (bi + 1) * blk < rows ? (bi + 1) * blk : rows;
            int64_t c1 = (bj + 1) * blk < cols ? (bj + 1) * blk : cols;
            float amax = 0;
            for (int64_t i = bi * blk; i < r1; i++)
                for (int64_t j = bj * blk; j < c1; j++) amax = fmaxf(amax, fabsf(w[i * cols + j]));
            float s = dsacp_ue8m0_scale(amax);
            scale[bi * sc + bj] = s;
            for (int64_t i = bi * blk; i < r1; i++)
                for (int64_t j = bj * blk; j < c1; j++) {
                    float x = w[i * cols + j] / s;
                    x = x > DSACP_FP8_MAX ? DSACP_FP8_MAX : x < -DSACP_FP8_MAX ? -DSACP_FP8_MAX : x;
                    q[i * cols + j] = dsacp_f32_to_e4m3(x);
                }
        }
}

int dsacp_model_init(const dsacp_config *cfg_in, const char *dir, uint64_t seed,
                     dsacp_weight_format format)
{
    dsacp_config cfg = *cfg_in;
    cfg.fp8_weights = format == DSACP_WEIGHTS_FP8;
    if (cfg.fp8_weights) {
        cfg.weight_block_rows = cfg.weight_block_cols = 128;
        cfg.scale_fmt_ue8m0 = true;
    }
    dsacp_tensor_spec *specs;
    int64_t n;
    int rc = dsacp_model_tensor_specs(&cfg, &specs, &n);
    if (rc) return rc;
    /* No partial output: the directory is removed again when this call created it and fails,
     * model.safetensors is staged in a temporary and renamed only once config.json is written,
     * and a config.json this call wrote is removed when the last rename fails. */
    bool made_dir = false, wrote_config = false;
    rc = dsacp_make_dir_created(dir, &made_dir);
    if (rc) {
        dsacp_free(specs);
        return rc;
    }
    dsacp_out model_out = {.fd = -1, .path = NULL, .tmp = NULL};
    char cfg_path[4096];
    dsacp_st_writer *w = NULL;
    void **bufs = dsacp_calloc((size_t)(2 * n + 1), sizeof *bufs);
    int64_t nbufs = 0;
    float *tmp = NULL;
    char path[4096];
    if (!bufs) {
        rc = DSACP_ENOMEM;
        goto done;
    }
    rc = dsacp_st_writer_create(&w);
    for (int64_t i = 0; !rc && i < n; i++) {
        const dsacp_tensor_spec *s = &specs[i];
        int64_t rows = s->ndim == 2 ? s->shape[0] : 1, cols = s->ndim == 2 ? s->shape[1] : s->shape[0];
        int64_t numel = rows * cols;
        tmp = dsacp_alloc((size_t)numel * sizeof(float));
        if (!tmp) {
            rc = DSACP_ENOMEM;
            break;
        }
        fill_tensor(s, seed, tmp, numel);
        bool fp8 = format == DSACP_WEIGHTS_FP8 && s->kind == DSACP_TK_LINEAR;
        bool keep_f32 = format == DSACP_WEIGHTS_F32 ||
                        (format == DSACP_WEIGHTS_FP8 &&
                         (s->kind == DSACP_TK_LINEAR_F32 || s->kind == DSACP_TK_BIAS));
        if (fp8) {
            int64_t blk = cfg.weight_block_rows;
            int64_t sshape[2] = {(rows + blk - 1) / blk, (cols + blk - 1) / blk};
            uint8_t *q = dsacp_alloc((size_t)numel);
            float *sc = dsacp_alloc((size_t)(sshape[0] * sshape[1]) * sizeof(float));
            if (!q || !sc) {
                dsacp_free(q);
                dsacp_free(sc);
                rc = DSACP_ENOMEM;
                break;
            }
            bufs[nbufs++] = q;
            bufs[nbufs++] = sc;
            quant_fp8_blocks(tmp, rows, cols, blk, q, sc);
            char sname[200];
            snprintf(sname, sizeof sname, "%.*s.weight_scale_inv", (int)(strlen(s->name) - 7), s->name);
            rc = dsacp_st_writer_add(w, s->name, DSACP_F8_E4M3, 2, s->shape, q);
            if (!rc) rc = dsacp_st_writer_add(w, sname, DSACP_F32, 2, sshape, sc);
            dsacp_free(tmp);
        } else if (keep_f32) {
            bufs[nbufs++] = tmp;
            rc = dsacp_st_writer_add(w, s->name, DSACP_F32, s->ndim, s->shape, tmp);
        } else {
            uint16_t *b = (uint16_t *)tmp; /* converted in place: element i is read before written */
            for (int64_t j = 0; j < numel; j++) b[j] = dsacp_f32_to_bf16(tmp[j]);
            bufs[nbufs++] = tmp;
            rc = dsacp_st_writer_add(w, s->name, DSACP_BF16, s->ndim, s->shape, b);
        }
        tmp = NULL;
    }
    if (!rc && ((size_t)snprintf(path, sizeof path, "%s/model.safetensors", dir) >= sizeof path ||
                (size_t)snprintf(cfg_path, sizeof cfg_path, "%s/config.json", dir) >= sizeof cfg_path))
        rc = dsacp_error(DSACP_EINVAL, "%s: directory name too long", dir);
    if (!rc) rc = dsacp_st_writer_stage(w, path, &model_out);
    if (!rc) {
        rc = dsacp_config_save(&cfg, cfg_path);
        wrote_config = rc == DSACP_OK;
    }
    if (!rc) rc = dsacp_out_commit(&model_out);
    else dsacp_out_abort(&model_out);
done:
    if (rc) {
        int keep = rc;
        if (wrote_config) unlink(cfg_path);
        if (made_dir) rmdir(dir);
        rc = keep;
    }
    dsacp_st_writer_free(w);
    for (int64_t i = 0; i < nbufs; i++) dsacp_free(bufs[i]);
    dsacp_free(bufs);
    dsacp_free(specs);
    return rc;
}
