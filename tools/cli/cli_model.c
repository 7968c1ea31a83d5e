/* cli_model.c -- `dsacp init-model` and `dsacp inspect` (which also scans every weight for NaN/Inf with dsacp_model_check_finite). */
#include "cli.h"
#include "model/model.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

int cli_init_model(int argc, char **argv)
{
    cli_opt opts[] = {{"preset", true, NULL}, {"out", true, NULL}, {"seed", true, NULL},
                      {"weights", true, NULL}, {NULL, false, NULL}};
    int parsed = cli_parse(argc, argv, opts);
    if (parsed != CLI_RUN) return parsed;
    const char *preset = cli_get(opts, "preset"), *out = cli_get(opts, "out");
    if (!preset || !out) {
        fprintf(stderr, "dsacp init-model: missing required option '--%s'\n", !preset ? "preset" : "out");
        return 2;
    }
    int64_t seed = 0;
    const char *seed_s = cli_get(opts, "seed");
    if (seed_s && !cli_int("init-model", "seed", seed_s, 0, INT64_MAX, &seed)) return 2;
    dsacp_config cfg;
    int rc = dsacp_preset_config(preset, &cfg);
    if (rc) return cli_fail("init-model", rc);
    /* The real checkpoint stores FP8 weights; so does the default of the real-size preset. */
    dsacp_weight_format fmt = strcmp(preset, "v32-layer") == 0 ? DSACP_WEIGHTS_FP8 : DSACP_WEIGHTS_F32;
    const char *ws = cli_get(opts, "weights");
    if (ws) {
        if (strcmp(ws, "f32") == 0) fmt = DSACP_WEIGHTS_F32;
        else if (strcmp(ws, "bf16") == 0) fmt = DSACP_WEIGHTS_BF16;
        else if (strcmp(ws, "fp8") == 0) fmt = DSACP_WEIGHTS_FP8;
        else {
            fprintf(stderr, "dsacp init-model: option '--weights' must be f32, bf16 or fp8, got '%s'\n", ws);
            return 2;
        }
    }
    rc = dsacp_model_init(&cfg, out, (uint64_t)seed, fmt);
    if (rc) return cli_fail("init-model", rc);
    printf("wrote %s/config.json and %s/model.safetensors (preset %s, seed %" PRId64 ", weights %s)\n",
           out, out, preset, seed, fmt == DSACP_WEIGHTS_FP8 ? "fp8" : fmt == DSACP_WEIGHTS_BF16 ? "bf16" : "f32");
    return 0;
}

static void print_config(const dsacp_config *c)
{
    printf("config:\n");
    printf("  hidden_size %lld, layers %lld, heads %lld, vocab %lld\n", (long long)c->hidden_size,
           (long long)c->num_hidden_layers, (long long)c->num_attention_heads, (long long)c->vocab_size);
    printf("  q_lora_rank %lld, kv_lora_rank %lld, qk_nope %lld, qk_rope %lld, v_head %lld\n",
           (long long)c->q_lora_rank, (long long)c->kv_lora_rank, (long long)c->qk_nope_head_dim,
           (long long)c->qk_rope_head_dim, (long long)c->v_head_dim);
    printf("  indexer: %lld heads x %lld dims, top-k %lld\n", (long long)c->index_n_heads,
           (long long)c->index_head_dim, (long long)c->index_topk);
    if (c->n_routed_experts > 0)
        printf("  MoE: %lld routed experts (%lld per token, %lld groups, top %lld groups), %lld shared, "
               "intermediate %lld, scaling %.3g, first %lld layers dense\n",
               (long long)c->n_routed_experts, (long long)c->num_experts_per_tok, (long long)c->n_group,
               (long long)c->topk_group, (long long)c->n_shared_experts,
               (long long)c->moe_intermediate_size, c->routed_scaling_factor,
               (long long)c->first_k_dense_replace);
    printf("  dense MLP intermediate %lld\n", (long long)c->intermediate_size);
    if (c->rope_type == DSACP_ROPE_YARN)
        printf("  rope: yarn, theta %g, factor %g, original %g, beta %g/%g, mscale %g/%g -> "
               "cos/sin factor %.10g\n", c->rope_theta, c->rope_factor, c->rope_original_max_position,
               c->rope_beta_fast, c->rope_beta_slow, c->rope_mscale, c->rope_mscale_all_dim,
               c->rope_attention_factor);
    else
        printf("  rope: default, theta %g\n", c->rope_theta);
    printf("  softmax scale %.10f, rms_norm_eps %g\n", c->softmax_scale, c->rms_norm_eps);
    if (c->fp8_weights)
        printf("  quantization: fp8 e4m3, block %lldx%lld, scales %s\n", (long long)c->weight_block_rows,
               (long long)c->weight_block_cols, c->scale_fmt_ue8m0 ? "ue8m0" : "float");
}

int cli_inspect(int argc, char **argv)
{
    cli_opt opts[] = {{"model", true, NULL}, {NULL, false, NULL}};
    int parsed = cli_parse(argc, argv, opts);
    if (parsed != CLI_RUN) return parsed;
    const char *dir = cli_get(opts, "model");
    if (!dir) {
        fprintf(stderr, "dsacp inspect: missing required option '--model'\n");
        return 2;
    }
    dsacp_model *m = NULL;
    int rc = dsacp_model_load_ex(dir, true, &m);
    if (!m) return cli_fail("inspect", rc);
    char load_msg[512] = "";
    if (rc) snprintf(load_msg, sizeof load_msg, "%s", dsacp_last_error());
    const dsacp_config *c = dsacp_model_config(m);
    printf("model %s\n", dir);
    for (int64_t i = 0; i < dsacp_model_file_count(m); i++) printf("  file %s\n", dsacp_model_file_path(m, i));
    print_config(c);
    printf("tensors (canonical names; packed experts shown per expert):\n");
    int64_t params = 0, bytes = 0;
    for (int64_t i = 0; i < dsacp_model_weight_count(m); i++) {
        const dsacp_weight *w = dsacp_model_weight_at(m, i);
        if (strcmp(w->name, "lm_head.weight") == 0 && c->tie_word_embeddings) continue;
        int64_t n = w->rows * w->cols;
        params += n;
        bytes += n * (int64_t)dsacp_dtype_size(w->dtype);
        if (w->dtype == DSACP_F8_E4M3) bytes += w->scale_rows * w->scale_cols * 4;
        if (w->ndim == 2)
            printf("  %-60s %-8s [%lld, %lld]%s\n", w->name, dsacp_dtype_name(w->dtype), (long long)w->rows,
                   (long long)w->cols, w->dtype == DSACP_F8_E4M3 ? " + weight_scale_inv" : "");
        else
            printf("  %-60s %-8s [%lld]\n", w->name, dsacp_dtype_name(w->dtype), (long long)w->cols);
    }
    printf("parameters: %lld (%.3f M), weight bytes: %lld (%.2f MiB)\n", (long long)params, params / 1e6,
           (long long)bytes, bytes / 1048576.0);
    printf("KV cache bytes per token per layer:\n");
    printf("  MLA latent: f32 %lld, bf16 %lld, fp8_ds_mla %lld\n",
           (long long)dsacp_mla_cache_bytes_per_token(c, DSACP_KV_F32),
           (long long)dsacp_mla_cache_bytes_per_token(c, DSACP_KV_BF16),
           (long long)dsacp_mla_cache_bytes_per_token(c, DSACP_KV_FP8));
    printf("  indexer keys: f32 %lld, fp8 %lld\n", (long long)dsacp_index_cache_bytes_per_token(c, DSACP_KV_F32),
           (long long)dsacp_index_cache_bytes_per_token(c, DSACP_KV_FP8));
    /* Every weight is scanned for NaN/Inf (loading does not, for speed): the first bad tensor
     * and its first bad index are an error. */
    int frc = dsacp_model_check_finite(m);
    char finite_msg[512] = "";
    if (frc) snprintf(finite_msg, sizeof finite_msg, "%s: %s", dir, dsacp_last_error());
    int64_t nerr = frc ? 1 : 0, nwarn = 0;
    for (int64_t i = 0; i < dsacp_model_problem_count(m); i++) {
        const dsacp_model_problem *p = dsacp_model_problem_at(m, i);
        if (p->error) nerr++; else nwarn++;
    }
    if (nerr || nwarn) {
        printf("problems: %lld errors, %lld warnings\n", (long long)nerr, (long long)nwarn);
        for (int64_t i = 0; i < dsacp_model_problem_count(m); i++) {
            const dsacp_model_problem *p = dsacp_model_problem_at(m, i);
            printf("  %s: %s\n", p->error ? "error" : "warning", p->text);
        }
        if (frc) printf("  error: %s\n", finite_msg);
    } else {
        printf("problems: none\n");
    }
    if (nerr) {
        /* The load's first error, else the non-finite weight. */
        const char *msg = load_msg[0] ? load_msg : finite_msg;
        for (int64_t i = 0; !msg[0] && i < dsacp_model_problem_count(m); i++)
            if (dsacp_model_problem_at(m, i)->error) msg = dsacp_model_problem_at(m, i)->text;
        fprintf(stderr, "dsacp inspect: %s\n", msg);
        dsacp_model_free(m);
        return 1;
    }
    dsacp_model_free(m);
    return 0;
}
