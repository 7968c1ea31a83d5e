/*
 * test_model.c -- config parsing (both rope spellings, derived scales, errors naming fields),
 * presets, init-model determinism and bit-exact round trips through the loader (f32, bf16,
 * fp8 with block scales), packed experts and sharded checkpoints; structure-only loads (inspect's)
 * and the non-finite scan.
 */
#include "test.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "model/shard_index.h"
#include "numerics/numerics.h"
#include "ref/test_util.h"

#include <math.h>
#include <stdint.h>

static const char *V32_ROPE_SCALING =
    "{\"hidden_size\":7168,\"num_hidden_layers\":61,\"num_attention_heads\":128,\"q_lora_rank\":1536,"
    "\"kv_lora_rank\":512,\"qk_nope_head_dim\":128,\"qk_rope_head_dim\":64,\"v_head_dim\":128,"
    "\"index_n_heads\":64,\"index_head_dim\":128,\"index_topk\":2048,\"vocab_size\":129280,"
    "\"intermediate_size\":18432,\"moe_intermediate_size\":2048,\"n_routed_experts\":256,"
    "\"n_shared_experts\":1,\"num_experts_per_tok\":8,\"n_group\":8,\"topk_group\":4,"
    "\"routed_scaling_factor\":2.5,\"norm_topk_prob\":true,\"first_k_dense_replace\":3,"
    "\"max_position_embeddings\":163840,\"rms_norm_eps\":1e-6,\"rope_theta\":10000,"
    "\"rope_scaling\":{\"type\":\"yarn\",\"factor\":40,\"original_max_position_embeddings\":4096,"
    "\"beta_fast\":32,\"beta_slow\":1,\"mscale\":1.0,\"mscale_all_dim\":1.0},"
    "\"quantization_config\":{\"quant_method\":\"fp8\",\"fmt\":\"e4m3\",\"activation_scheme\":\"dynamic\","
    "\"weight_block_size\":[128,128],\"scale_fmt\":\"ue8m0\"}}";

static void test_config(void)
{
    dsacp_config c;
    CHECK_OK(dsacp_config_parse(V32_ROPE_SCALING, strlen(V32_ROPE_SCALING), "v32.json", &c));
    CHECK(c.hidden_size == 7168 && c.index_topk == 2048 && c.n_routed_experts == 256);
    CHECK(c.rope_type == DSACP_ROPE_YARN && c.rope_factor == 40 && c.rope_original_max_position == 4096);
    CHECKF(fabs(c.softmax_scale - 0.1352337789) < 1e-9, "softmax scale %.10f", c.softmax_scale);
    CHECKF(fabs(c.rope_attention_factor - 1.0) < 1e-15, "attention factor %.17g", c.rope_attention_factor);
    CHECK(c.fp8_weights && c.weight_block_rows == 128 && c.scale_fmt_ue8m0);
    CHECK(!dsacp_config_layer_is_moe(&c, 2) && dsacp_config_layer_is_moe(&c, 3));
    CHECK(dsacp_mla_cache_bytes_per_token(&c, DSACP_KV_FP8) == 656);
    CHECK(dsacp_mla_cache_bytes_per_token(&c, DSACP_KV_BF16) == 1152);
    CHECK(dsacp_mla_cache_bytes_per_token(&c, DSACP_KV_F32) == 2304);
    CHECK(dsacp_index_cache_bytes_per_token(&c, DSACP_KV_FP8) == 132);

    /* transformers 5 spelling: rope_parameters with rope_theta inside, mlp_layer_types. */
    char buf[4096];
    const char *p5 =
        "{\"hidden_size\":64,\"num_hidden_layers\":2,\"num_attention_heads\":4,\"q_lora_rank\":32,"
        "\"kv_lora_rank\":32,\"qk_nope_head_dim\":16,\"qk_rope_head_dim\":16,\"v_head_dim\":16,"
        "\"index_n_heads\":4,\"index_head_dim\":32,\"index_topk\":16,\"vocab_size\":256,"
        "\"intermediate_size\":128,\"moe_intermediate_size\":32,\"n_routed_experts\":8,"
        "\"num_experts_per_tok\":2,\"n_group\":2,\"topk_group\":1,\"mlp_layer_types\":[\"sparse\",\"dense\"],"
        "\"rope_parameters\":{\"rope_type\":\"yarn\",\"rope_theta\":5000.0,\"factor\":4.0,"
        "\"original_max_position_embeddings\":64,\"mscale\":1.0,\"mscale_all_dim\":0.5}}";
    CHECK_OK(dsacp_config_parse(p5, strlen(p5), "t5.json", &c));
    CHECK(c.rope_theta == 5000.0 && c.rope_type == DSACP_ROPE_YARN);
    CHECK(dsacp_config_layer_is_moe(&c, 0) && !dsacp_config_layer_is_moe(&c, 1));
    double m1 = 0.1 * log(4.0) + 1, mh = 0.05 * log(4.0) + 1;
    CHECKF(fabs(c.rope_attention_factor - m1 / mh) < 1e-15, "attention factor %.17g", c.rope_attention_factor);
    CHECKF(fabs(c.softmax_scale - mh * mh / sqrt(32.0)) < 1e-15, "softmax %.17g", c.softmax_scale);

    /* Errors name the file and the field. */
    struct {
        const char *from, *to, *field;
    } bad[] = {
        {"\"kv_lora_rank\":512,", "", "'kv_lora_rank'"},
        {"\"index_topk\":2048", "\"index_topk\":\"many\"", "'index_topk'"},
        {"\"index_topk\":2048", "\"index_topk\":-5", "'index_topk'"},
        {"\"type\":\"yarn\"", "\"type\":\"longrope\"", "rope_type"},
        {"\"original_max_position_embeddings\":4096,", "", "original_max_position_embeddings"},
        {"\"n_group\":8", "\"n_group\":7", "'n_group'"},
        {"\"quant_method\":\"fp8\"", "\"quant_method\":\"gptq\"", "quant_method"},
        {"\"qk_rope_head_dim\":64", "\"qk_rope_head_dim\":63", "'qk_rope_head_dim'"},
        {"\"n_shared_experts\":1,", "\"n_shared_experts\":1,\"scoring_func\":\"softmax\",", "'scoring_func'"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *at = strstr(V32_ROPE_SCALING, bad[i].from);
        CHECK(at != NULL);
        if (!at) continue;
        snprintf(buf, sizeof buf, "%.*s%s%s", (int)(at - V32_ROPE_SCALING), V32_ROPE_SCALING, bad[i].to,
                 at + strlen(bad[i].from));
        int rc = dsacp_config_parse(buf, strlen(buf), "bad.json", &c);
        CHECKF(rc == DSACP_ECONFIG && strstr(dsacp_last_error(), "bad.json") &&
                   strstr(dsacp_last_error(), bad[i].field),
               "case %zu: rc %d, message '%s'", i, rc, dsacp_last_error());
    }
    const char *dup = "{\"hidden_size\":1,\"hidden_size\":2}";
    CHECK(dsacp_config_parse(dup, strlen(dup), "dup.json", &c) == DSACP_ECONFIG);
    CHECK(dsacp_config_parse("[]", 2, "arr.json", &c) == DSACP_ECONFIG);
    CHECK(dsacp_config_parse("{", 1, "open.json", &c) == DSACP_ECONFIG && strstr(dsacp_last_error(), "open.json"));
}

static void test_presets(void)
{
    dsacp_config c;
    for (const char *const *n = dsacp_preset_names(); *n; n++) {
        CHECK_OK(dsacp_preset_config(*n, &c));
        CHECK(c.num_hidden_layers > 0 && c.hidden_size > 0);
    }
    CHECK_OK(dsacp_preset_config("v32-layer", &c));
    CHECKF(fabs(c.softmax_scale - 0.1352337789) < 1e-9, "v32-layer softmax scale %.10f", c.softmax_scale);
    CHECK(c.kv_lora_rank == 512 && c.index_topk == 2048 && c.num_attention_heads == 128);
    CHECK(dsacp_preset_config("nosuch", &c) == DSACP_ENOTFOUND && strstr(dsacp_last_error(), "nosuch"));
}

/* Every stored tensor read back through the loader equals the file's bytes, and two runs with
 * the same seed write identical files. */
static void test_round_trip(const char *preset, dsacp_weight_format fmt)
{
    char *a = tu_make_model(preset, 42, fmt), *b = tu_make_model(preset, 42, fmt);
    char pa[4200], pb[4200];
    snprintf(pa, sizeof pa, "%s/model.safetensors", a);
    snprintf(pb, sizeof pb, "%s/model.safetensors", b);
    char *da, *db;
    size_t la, lb;
    REQUIRE_OK(dsacp_read_file(pa, &da, &la, (size_t)1 << 32));
    REQUIRE_OK(dsacp_read_file(pb, &db, &lb, (size_t)1 << 32));
    CHECKF(la == lb && memcmp(da, db, la) == 0, "%s: same seed, different files", preset);
    dsacp_free(da);
    dsacp_free(db);

    dsacp_model *m;
    REQUIRE_OK(dsacp_model_load(a, &m));
    dsacp_st_file *f;
    REQUIRE_OK(dsacp_st_open(pa, &f));
    int64_t matched = 0, mismatched = 0;
    for (int64_t i = 0; i < dsacp_st_count(f); i++) {
        const dsacp_st_tensor *t = dsacp_st_tensor_at(f, i);
        const dsacp_weight *w = dsacp_model_weight(m, t->name);
        if (!w) {
            CHECKF(strstr(t->name, "weight_scale_inv") != NULL, "tensor %s not loaded", t->name);
            continue;
        }
        size_t bytes = (size_t)(w->rows * w->cols) * dsacp_dtype_size(w->dtype);
        if (w->dtype == t->dtype && bytes == t->nbytes && memcmp(w->data, t->data, bytes) == 0) matched++;
        else mismatched++;
    }
    dsacp_tensor_spec *specs;
    int64_t nspecs;
    REQUIRE_OK(dsacp_model_tensor_specs(dsacp_model_config(m), &specs, &nspecs));
    printf("%s (%s): %lld tensors round-trip bit for bit, %lld differ; %lld canonical weights\n", preset,
           fmt == DSACP_WEIGHTS_FP8 ? "fp8" : fmt == DSACP_WEIGHTS_BF16 ? "bf16" : "f32", (long long)matched,
           (long long)mismatched, (long long)nspecs);
    CHECK(mismatched == 0 && matched == nspecs);
    CHECK(dsacp_model_weight_count(m) == nspecs);
    dsacp_free(specs);
    dsacp_st_close(f);

    /* Same seed in f32: bf16 weights are its rounding, fp8 weights its block quantization. */
    if (fmt != DSACP_WEIGHTS_F32) {
        char *r = tu_make_model(preset, 42, DSACP_WEIGHTS_F32);
        dsacp_model *mr;
        REQUIRE_OK(dsacp_model_load(r, &mr));
        double worst = 0;
        int64_t bad = 0;
        for (int64_t i = 0; i < dsacp_model_weight_count(m); i++) {
            const dsacp_weight *w = dsacp_model_weight_at(m, i), *wr = dsacp_model_weight(mr, w->name);
            int64_t n = w->rows * w->cols;
            float *x = malloc((size_t)n * 4), *y = malloc((size_t)n * 4);
            dsacp_weight_to_f32(w, x);
            dsacp_weight_to_f32(wr, y);
            for (int64_t j = 0; j < n; j++) {
                if (w->dtype == DSACP_BF16) {
                    if (x[j] != dsacp_bf16_to_f32(dsacp_f32_to_bf16(y[j]))) bad++;
                } else if (w->dtype == DSACP_F8_E4M3) {
                    float s = w->scale[(j / w->cols / w->block) * w->scale_stride + (j % w->cols) / w->block];
                    double err = fabs((double)x[j] - y[j]);
                    /* e4m3 keeps 3 mantissa bits: error <= half an ulp, or the subnormal step. */
                    double bound = fmax(fabs(y[j]) / 16.0, s * 0x1p-10);
                    if (err > bound) bad++;
                    if (err / fmax(fabs(y[j]), 1e-30) > worst && fabs(y[j]) > s) worst = err / fabs(y[j]);
                } else if (x[j] != y[j]) {
                    bad++;
                }
            }
            free(x);
            free(y);
        }
        printf("%s: dequantized weights vs the f32 model of the same seed: %lld out of bounds, worst normal "
               "relative error %.4f\n", preset, (long long)bad, worst);
        CHECK(bad == 0);
        dsacp_model_free(mr);
        tu_rmtree(r);
        free(r);
    }
    dsacp_model_free(m);
    tu_rmtree(a);
    tu_rmtree(b);
    free(a);
    free(b);
}

/* transformers-5 packed experts and a sharded checkpoint load to the same weights. */
static void test_packed_and_sharded(void)
{
    char *src = tu_make_model("tiny-moe", 7, DSACP_WEIGHTS_F32);
    dsacp_model *m;
    REQUIRE_OK(dsacp_model_load(src, &m));
    const dsacp_config *cfg = dsacp_model_config(m);
    const int64_t E = cfg->n_routed_experts, I = cfg->moe_intermediate_size, D = cfg->hidden_size;
    char *dst = tu_tempdir();
    char path[4200];
    /* Shard 1: everything but the MoE layers' experts; shard 2: the experts of layer 1 and of the
     * MTP layer 2, packed. */
    CHECK(dsacp_model_has_mtp(m));
    dsacp_st_writer *w1, *w2;
    REQUIRE_OK(dsacp_st_writer_create(&w1));
    REQUIRE_OK(dsacp_st_writer_create(&w2));
    float *gate_up = malloc((size_t)(2 * E * 2 * I * D) * 4), *down = malloc((size_t)(2 * E * D * I) * 4);
    for (int64_t i = 0; i < dsacp_model_weight_count(m); i++) {
        const dsacp_weight *w = dsacp_model_weight_at(m, i);
        long long L, e;
        char which[16];
        if (sscanf(w->name, "model.layers.%lld.mlp.experts.%lld.%15[a-z]_proj", &L, &e, which) == 3) {
            float *gu = gate_up + (L - 1) * E * 2 * I * D, *dn = down + (L - 1) * E * D * I;
            if (!strcmp(which, "gate")) memcpy(gu + e * 2 * I * D, w->data, (size_t)(I * D) * 4);
            else if (!strcmp(which, "up")) memcpy(gu + (e * 2 + 1) * I * D, w->data, (size_t)(I * D) * 4);
            else memcpy(dn + e * D * I, w->data, (size_t)(D * I) * 4);
            continue;
        }
        int64_t shape[2] = {w->rows, w->cols};
        if (w->ndim == 1) shape[0] = w->cols;
        CHECK_OK(dsacp_st_writer_add(w1, w->name, w->dtype, w->ndim, shape, w->data));
    }
    int64_t s_gu[3] = {E, 2 * I, D}, s_d[3] = {E, D, I};
    CHECK_OK(dsacp_st_writer_add(w2, "model.layers.1.mlp.experts.gate_up_proj", DSACP_F32, 3, s_gu, gate_up));
    CHECK_OK(dsacp_st_writer_add(w2, "model.layers.1.mlp.experts.down_proj", DSACP_F32, 3, s_d, down));
    CHECK_OK(dsacp_st_writer_add(w2, "model.layers.2.mlp.experts.gate_up_proj.weight", DSACP_F32, 3, s_gu,
                                 gate_up + E * 2 * I * D));
    CHECK_OK(dsacp_st_writer_add(w2, "model.layers.2.mlp.experts.down_proj.weight", DSACP_F32, 3, s_d, down + E * D * I));
    snprintf(path, sizeof path, "%s/model-00001-of-00002.safetensors", dst);
    CHECK_OK(dsacp_st_writer_write(w1, path));
    snprintf(path, sizeof path, "%s/model-00002-of-00002.safetensors", dst);
    CHECK_OK(dsacp_st_writer_write(w2, path));
    dsacp_st_writer_free(w1);
    dsacp_st_writer_free(w2);
    /* The index. */
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dst);
    FILE *f = fopen(path, "w");
    fprintf(f, "{\"metadata\":{},\"weight_map\":{");
    bool first = true;
    for (int64_t i = 0; i < dsacp_model_weight_count(m); i++) {
        const char *n = dsacp_model_weight_at(m, i)->name;
        if (strstr(n, ".mlp.experts.")) continue;
        fprintf(f, "%s\"%s\":\"model-00001-of-00002.safetensors\"", first ? "" : ",", n);
        first = false;
    }
    fprintf(f, ",\"model.layers.1.mlp.experts.gate_up_proj\":\"model-00002-of-00002.safetensors\"");
    fprintf(f, ",\"model.layers.1.mlp.experts.down_proj\":\"model-00002-of-00002.safetensors\"");
    fprintf(f, ",\"model.layers.2.mlp.experts.gate_up_proj.weight\":\"model-00002-of-00002.safetensors\"");
    fprintf(f, ",\"model.layers.2.mlp.experts.down_proj.weight\":\"model-00002-of-00002.safetensors\"}}");
    fclose(f);
    snprintf(path, sizeof path, "cp %s/config.json %s/config.json", src, dst);
    CHECK(system(path) == 0);
    dsacp_model *m2;
    CHECK_OK(dsacp_model_load(dst, &m2));
    if (m2) {
        int64_t same = 0;
        for (int64_t i = 0; i < dsacp_model_weight_count(m); i++) {
            const dsacp_weight *a = dsacp_model_weight_at(m, i), *b = dsacp_model_weight(m2, a->name);
            if (b && b->rows == a->rows && b->cols == a->cols &&
                !memcmp(a->data, b->data, (size_t)(a->rows * a->cols) * 4))
                same++;
        }
        printf("sharded + packed experts: %lld of %lld weights identical\n", (long long)same,
               (long long)dsacp_model_weight_count(m));
        CHECK(same == dsacp_model_weight_count(m));
        CHECK(dsacp_model_file_count(m2) == 2 && dsacp_model_has_mtp(m2));
        dsacp_model_free(m2);
    }
    /* A shard name escaping the directory is refused. */
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dst);
    f = fopen(path, "w");
    fprintf(f, "{\"weight_map\":{\"model.norm.weight\":\"../evil.safetensors\"}}");
    fclose(f);
    dsacp_model *m3 = NULL;
    int rc = dsacp_model_load(dst, &m3);
    CHECKF(rc != 0 && strstr(dsacp_last_error(), "weight_map"), "rc %d: %s", rc, dsacp_last_error());
    dsacp_model_free(m3);
    free(gate_up);
    free(down);
    dsacp_model_free(m);
    tu_rmtree(src);
    tu_rmtree(dst);
    free(src);
    free(dst);
}


/* Replaces `from` (which must occur in `base`) by `to`; the result is heap-allocated. */
static char *cfg_edit(const char *base, const char *from, const char *to)
{
    const char *at = strstr(base, from);
    if (!at) {
        fprintf(stderr, "cfg_edit: '%s' not in the base config\n", from);
        exit(1);
    }
    size_t n = strlen(base) - strlen(from) + strlen(to) + 1;
    char *out = malloc(n);
    snprintf(out, n, "%.*s%s%s", (int)(at - base), base, to, at + strlen(from));
    return out;
}

/* A config of `layers` layers with a `types`-entry mlp_layer_types. */
static char *cfg_with_layers(int64_t layers, int64_t types)
{
    size_t cap = 256 + (size_t)types * 10;
    char *list = malloc(cap);
    size_t o = 0;
    for (int64_t i = 0; i < types; i++) o += (size_t)snprintf(list + o, cap - o, "%s\"sparse\"", i ? "," : "");
    char from[64], *to = malloc(cap + 128);
    snprintf(from, sizeof from, "\"num_hidden_layers\":61,");
    snprintf(to, cap + 128, "\"num_hidden_layers\":%lld,\"mlp_layer_types\":[%s],", (long long)layers, list);
    char *cfg = cfg_edit(V32_ROPE_SCALING, from, to);
    free(list);
    free(to);
    return cfg;
}

/* Issue 7 defect 1: mlp_layer_types was stored for every layer before num_hidden_layers <= 512
 * was checked (ASan: index 512 out of bounds). Now the bound comes first, and nothing is stored
 * into the caller's config on failure. */
static void test_config_layer_types_bound(void)
{
    dsacp_config c;
    int64_t cases[][2] = {{2000, 2000}, {513, 513}, {100000, 3}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *cfg = cfg_with_layers(cases[i][0], cases[i][1]);
        memset(&c, 0xab, sizeof c);
        int rc = dsacp_config_parse(cfg, strlen(cfg), "layers.json", &c);
        CHECKF(rc == DSACP_ECONFIG && strstr(dsacp_last_error(), "layers.json") &&
                   strstr(dsacp_last_error(), "'num_hidden_layers'"),
               "%lld layers: rc %d, '%s'", (long long)cases[i][0], rc, dsacp_last_error());
        CHECK(c.num_hidden_layers == 0 && !c.has_mlp_layer_types);
        free(cfg);
    }
    /* The largest allowed: every entry stored. */
    char *cfg = cfg_with_layers(DSACP_MAX_LAYERS, DSACP_MAX_LAYERS);
    CHECK_OK(dsacp_config_parse(cfg, strlen(cfg), "max.json", &c));
    CHECK(c.num_hidden_layers == DSACP_MAX_LAYERS && c.has_mlp_layer_types &&
          dsacp_config_layer_is_moe(&c, DSACP_MAX_LAYERS - 1) && !dsacp_config_layer_is_moe(&c, DSACP_MAX_LAYERS));
    free(cfg);
    /* A wrong entry is named by its index. */
    cfg = cfg_edit(V32_ROPE_SCALING, "\"num_hidden_layers\":61,",
                   "\"num_hidden_layers\":2,\"mlp_layer_types\":[\"dense\",\"moe\"],");
    CHECK(dsacp_config_parse(cfg, strlen(cfg), "t.json", &c) == DSACP_ECONFIG &&
          strstr(dsacp_last_error(), "mlp_layer_types[1]"));
    free(cfg);
    /* A config built in code with too many layers is refused, not read past the array. */
    CHECK_OK(dsacp_preset_config("tiny", &c));
    c.num_hidden_layers = 2000;
    CHECK(!dsacp_config_layer_is_moe(&c, 1999));
    CHECK(dsacp_config_check(&c, "code") == DSACP_ECONFIG && strstr(dsacp_last_error(), "num_hidden_layers"));
}

/* Issue 7 defect 3: every field bounded by what a real model can have and by the others, so no
 * product in the tensor specs overflows and nothing is allocated from absurd values. */
static void test_config_bounds(void)
{
    dsacp_config c;
    struct {
        const char *from, *to, *field;
    } bad[] = {
        {"\"hidden_size\":7168", "\"hidden_size\":65537", "'hidden_size'"},
        {"\"num_attention_heads\":128", "\"num_attention_heads\":2147483648", "'num_attention_heads'"},
        {"\"qk_nope_head_dim\":128", "\"qk_nope_head_dim\":2147483648", "'qk_nope_head_dim'"},
        {"\"qk_rope_head_dim\":64", "\"qk_rope_head_dim\":8192", "'qk_rope_head_dim'"},
        {"\"v_head_dim\":128", "\"v_head_dim\":1099511627776", "'v_head_dim'"},
        {"\"q_lora_rank\":1536", "\"q_lora_rank\":1000000", "'q_lora_rank'"},
        {"\"kv_lora_rank\":512", "\"kv_lora_rank\":1000000", "'kv_lora_rank'"},
        {"\"index_n_heads\":64", "\"index_n_heads\":4096", "'index_n_heads'"},
        {"\"index_head_dim\":128", "\"index_head_dim\":100000", "'index_head_dim'"},
        {"\"index_topk\":2048", "\"index_topk\":163841", "'index_topk'"},
        {"\"index_topk\":2048", "\"index_topk\":1099511627776", "'index_topk'"},
        {"\"vocab_size\":129280", "\"vocab_size\":100000000", "'vocab_size'"},
        {"\"intermediate_size\":18432", "\"intermediate_size\":10000000", "'intermediate_size'"},
        {"\"moe_intermediate_size\":2048", "\"moe_intermediate_size\":10000000", "'moe_intermediate_size'"},
        {"\"n_routed_experts\":256", "\"n_routed_experts\":100000000", "'n_routed_experts'"},
        {"\"n_shared_experts\":1", "\"n_shared_experts\":1000", "'n_shared_experts'"},
        {"\"num_experts_per_tok\":8", "\"num_experts_per_tok\":257", "'num_experts_per_tok'"},
        {"\"n_group\":8", "\"n_group\":512", "'n_group'"},
        {"\"topk_group\":4", "\"topk_group\":9", "'topk_group'"},
        {"\"first_k_dense_replace\":3", "\"first_k_dense_replace\":100000", "'first_k_dense_replace'"},
        {"\"max_position_embeddings\":163840", "\"max_position_embeddings\":1099511627776",
         "'max_position_embeddings'"},
        {"\"max_position_embeddings\":163840", "\"max_position_embeddings\":1024", "'index_topk'"},
        {"\"original_max_position_embeddings\":4096", "\"original_max_position_embeddings\":1e15",
         "original_max_position_embeddings"},
        {"\"weight_block_size\":[128,128]", "\"weight_block_size\":[131072,131072]", "weight_block_size"},
    };
    char name[64];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *cfg = cfg_edit(V32_ROPE_SCALING, bad[i].from, bad[i].to);
        snprintf(name, sizeof name, "bounds%zu.json", i);
        int rc = dsacp_config_parse(cfg, strlen(cfg), name, &c);
        CHECKF(rc == DSACP_ECONFIG && strstr(dsacp_last_error(), name) && strstr(dsacp_last_error(), bad[i].field),
               "case %zu (%s): rc %d, message '%s'", i, bad[i].to, rc, dsacp_last_error());
        free(cfg);
    }
    /* V3.2 itself sits well inside every bound. */
    CHECK_OK(dsacp_config_parse(V32_ROPE_SCALING, strlen(V32_ROPE_SCALING), "v32.json", &c));
    CHECK_OK(dsacp_config_check(&c, "v32.json"));

    /* A config built in code: dsacp_model_tensor_specs refuses it before listing anything (it
     * used to compute heads x head dim in int64 overflow, and allocate E specs per layer). */
    dsacp_tensor_spec *specs = (dsacp_tensor_spec *)&c;
    int64_t n = 77;
    CHECK_OK(dsacp_preset_config("tiny-moe", &c));
    c.num_attention_heads = (int64_t)1 << 31;
    c.qk_nope_head_dim = (int64_t)1 << 33;
    CHECK(dsacp_model_tensor_specs(&c, &specs, &n) == DSACP_ECONFIG && specs == NULL && n == 0 &&
          strstr(dsacp_last_error(), "num_attention_heads"));
    CHECK_OK(dsacp_preset_config("tiny-moe", &c));
    c.n_routed_experts = 100000000;
    CHECK(dsacp_model_tensor_specs(&c, &specs, &n) == DSACP_ECONFIG && strstr(dsacp_last_error(), "n_routed_experts"));
    CHECK_OK(dsacp_preset_config("tiny-moe", &c));
    c.index_topk = c.max_position_embeddings + 1;
    CHECK(dsacp_model_tensor_specs(&c, &specs, &n) == DSACP_ECONFIG && strstr(dsacp_last_error(), "index_topk"));
    for (const char *const *pn = dsacp_preset_names(); *pn; pn++) {
        CHECK_OK(dsacp_preset_config(*pn, &c));
        CHECKF(dsacp_config_check(&c, *pn) == DSACP_OK, "preset %s: %s", *pn, dsacp_last_error());
    }
}

/* Writes `text` as dir/config.json. */
static void write_text(const char *dir, const char *file, const char *text)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    FILE *f = fopen(path, "w");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(1);
    }
}

static char *read_text(const char *dir, const char *file)
{
    char path[4200], *text;
    size_t len;
    snprintf(path, sizeof path, "%s/%s", dir, file);
    REQUIRE_OK(dsacp_read_file(path, &text, &len, 1 << 24));
    return text;
}

/* Issue 7 defect 3, the loader: a config asking for more layers x experts than the checkpoint
 * holds is refused before its tensor list is built (512 layers x 4096 experts used to allocate
 * ~1.2 GB of specs for a 40-tensor file). */
static void test_experts_vs_checkpoint(void)
{
    char *dir = tu_make_model("tiny-moe", 3, DSACP_WEIGHTS_F32);
    char *orig = read_text(dir, "config.json");
    char *a = cfg_edit(orig, "\"n_routed_experts\": 8", "\"n_routed_experts\": 4096");
    /* (Without the MTP layer: 512 layers leave it no slot, an error of its own, test_mtp_config.) */
    char *a2 = cfg_edit(a, "\"num_nextn_predict_layers\": 1", "\"num_nextn_predict_layers\": 0");
    char *b = cfg_edit(a2, "\"num_hidden_layers\": 2", "\"num_hidden_layers\": 512");
    free(a2);
    write_text(dir, "config.json", b);
    for (int keep = 0; keep < 2; keep++) {
        dsacp_model *m = NULL;
        double t0 = dsacp_now();
        int rc = dsacp_model_load_ex(dir, keep != 0, &m);
        double dt = dsacp_now() - t0;
        CHECKF(rc == DSACP_ECONFIG && m == NULL && strstr(dsacp_last_error(), "config.json") &&
                   strstr(dsacp_last_error(), "'n_routed_experts'") && strstr(dsacp_last_error(), "checkpoint"),
               "keep_going %d: rc %d, '%s'", keep, rc, dsacp_last_error());
        CHECKF(dt < 2.0, "refusing took %.2f s", dt);
        dsacp_model_free(m);
    }
    /* The original still loads; one missing expert is still reported tensor by tensor. */
    write_text(dir, "config.json", orig);
    dsacp_model *m = NULL;
    CHECK_OK(dsacp_model_load(dir, &m));
    dsacp_model_free(m);
    free(a);
    free(b);
    dsacp_free(orig);
    tu_rmtree(dir);
    free(dir);
}

/* Issue 7 defect 8: a config field that changes the math and has a value dsacp does not
 * implement is an error naming the field, never a silent default. */
static void test_config_unsupported(void)
{
    dsacp_config c;
    struct {
        const char *to, *field;
        int status;
    } bad[] = {
        {"\"attention_bias\":true,", "'attention_bias'", DSACP_EUNSUPPORTED},
        {"\"attention_bias\":1,", "'attention_bias'", DSACP_ECONFIG},
        {"\"mlp_bias\":true,", "'mlp_bias'", DSACP_EUNSUPPORTED},
        {"\"rope_interleave\":false,", "'rope_interleave'", DSACP_EUNSUPPORTED},
        {"\"partial_rotary_factor\":0.5,", "'partial_rotary_factor'", DSACP_EUNSUPPORTED},
        {"\"num_key_value_heads\":1,", "'num_key_value_heads'", DSACP_EUNSUPPORTED},
        {"\"qk_head_dim\":128,", "'qk_head_dim'", DSACP_ECONFIG},
        {"\"num_local_experts\":64,", "'num_local_experts'", DSACP_ECONFIG},
        {"\"hidden_act\":\"gelu\",", "'hidden_act'", DSACP_ECONFIG},
        {"\"topk_method\":\"greedy\",", "'topk_method'", DSACP_ECONFIG},
        {"\"scoring_func\":\"softmax\",", "'scoring_func'", DSACP_ECONFIG},
    };
    char name[64];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *to = malloc(strlen(bad[i].to) + 32);
        sprintf(to, "{%s\"hidden_size\":7168", bad[i].to);
        char *cfg = cfg_edit(V32_ROPE_SCALING, "{\"hidden_size\":7168", to);
        snprintf(name, sizeof name, "unsup%zu.json", i);
        int rc = dsacp_config_parse(cfg, strlen(cfg), name, &c);
        CHECKF(rc == bad[i].status && strstr(dsacp_last_error(), name) && strstr(dsacp_last_error(), bad[i].field),
               "case %zu (%s): rc %d, message '%s'", i, bad[i].to, rc, dsacp_last_error());
        free(cfg);
        free(to);
    }
    /* Inside rope_scaling / quantization_config. */
    struct {
        const char *from, *to, *field;
        int status;
    } nested[] = {
        {"\"beta_fast\":32", "\"beta_fast\":32,\"truncate\":false", "truncate", DSACP_EUNSUPPORTED},
        {"\"beta_fast\":32", "\"beta_fast\":32,\"partial_rotary_factor\":0.25", "partial_rotary_factor",
         DSACP_EUNSUPPORTED},
        {"\"activation_scheme\":\"dynamic\"", "\"activation_scheme\":\"static\"", "activation_scheme",
         DSACP_EUNSUPPORTED},
        {"\"scale_fmt\":\"ue8m0\"", "\"scale_fmt\":\"e5m2\"", "scale_fmt", DSACP_EUNSUPPORTED},
        {"\"scale_fmt\":\"ue8m0\"", "\"scale_fmt\":8", "scale_fmt", DSACP_ECONFIG},
    };
    for (size_t i = 0; i < sizeof nested / sizeof nested[0]; i++) {
        char *cfg = cfg_edit(V32_ROPE_SCALING, nested[i].from, nested[i].to);
        snprintf(name, sizeof name, "nested%zu.json", i);
        int rc = dsacp_config_parse(cfg, strlen(cfg), name, &c);
        CHECKF(rc == nested[i].status && strstr(dsacp_last_error(), name) &&
                   strstr(dsacp_last_error(), nested[i].field),
               "case %zu (%s): rc %d, message '%s'", i, nested[i].to, rc, dsacp_last_error());
        free(cfg);
    }
    /* The values dsacp implements are accepted, spelled out as transformers saves them. */
    const char *ok_fields = "{\"attention_bias\":false,\"mlp_bias\":false,\"rope_interleave\":true,"
                            "\"num_key_value_heads\":128,\"qk_head_dim\":192,\"num_local_experts\":256,"
                            "\"hidden_act\":\"silu\",\"topk_method\":\"noaux_tc\",\"scoring_func\":\"sigmoid\","
                            "\"partial_rotary_factor\":1.0,\"hidden_size\":7168";
    char *cfg = cfg_edit(V32_ROPE_SCALING, "{\"hidden_size\":7168", ok_fields);
    char *cfg2 = cfg_edit(cfg, "\"beta_fast\":32", "\"beta_fast\":32,\"truncate\":true");
    CHECK_OK(dsacp_config_parse(cfg2, strlen(cfg2), "ok.json", &c));
    free(cfg);
    free(cfg2);
    /* The transformers-5 config of tests/data/hf_tiny (attention_bias false, mlp_bias false...). */
    char path[4200];
    snprintf(path, sizeof path, "%s/tests/data/hf_tiny/config.json", tu_source_dir());
    CHECK_OK(dsacp_config_load(path, &c));
}

/* Rewrites dir/model.safetensors with `nbytes` bytes at element `index` of tensor `name` (when not
 * NULL) replaced by `bytes`, or without that tensor when `bytes` is NULL; and with one more F32
 * tensor `add` [rows][cols] of 0.5s when `add` is not NULL. */
static void edit_checkpoint(const char *dir, const char *name, int64_t index, const void *bytes, size_t nbytes,
                            const char *add, int64_t rows, int64_t cols)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    dsacp_st_file *f;
    REQUIRE_OK(dsacp_st_open(path, &f));
    dsacp_st_writer *w;
    REQUIRE_OK(dsacp_st_writer_create(&w));
    int64_t n = dsacp_st_count(f);
    void **copies = calloc((size_t)n + 1, sizeof *copies);
    bool found = name == NULL;
    for (int64_t i = 0; i < n; i++) {
        const dsacp_st_tensor *t = dsacp_st_tensor_at(f, i);
        copies[i] = malloc(t->nbytes ? t->nbytes : 1);
        memcpy(copies[i], t->data, t->nbytes);
        if (name && strcmp(t->name, name) == 0) {
            found = true;
            if (!bytes) continue;
            memcpy((uint8_t *)copies[i] + (size_t)index * dsacp_dtype_size(t->dtype), bytes, nbytes);
        }
        REQUIRE_OK(dsacp_st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, copies[i]));
    }
    if (!found) {
        fprintf(stderr, "edit_checkpoint: no tensor %s\n", name);
        exit(1);
    }
    if (add) {
        float *v = malloc((size_t)(rows * cols) * sizeof(float));
        for (int64_t i = 0; i < rows * cols; i++) v[i] = 0.5f;
        copies[n] = v;
        REQUIRE_OK(dsacp_st_writer_add(w, add, DSACP_F32, 2, (int64_t[2]){rows, cols}, v));
    }
    REQUIRE_OK(dsacp_st_writer_write(w, path));
    dsacp_st_writer_free(w);
    dsacp_st_close(f);
    for (int64_t i = 0; i <= n; i++) free(copies[i]);
    free(copies);
}

static void poke_tensor(const char *dir, const char *name, int64_t index, const void *bytes, size_t nbytes)
{
    edit_checkpoint(dir, name, index, bytes, nbytes, NULL, 0, 0);
}

static void expect_nonfinite(const char *dir, const char *message)
{
    dsacp_model *m = NULL;
    REQUIRE_OK(dsacp_model_load(dir, &m)); /* loading does not scan */
    int rc = dsacp_model_check_finite(m);
    CHECKF(rc == DSACP_ERANGE && strcmp(dsacp_last_error(), message) == 0, "rc %d, '%s', expected '%s'", rc,
           dsacp_last_error(), message);
    dsacp_model_free(m);
}

/* Issue 7 defect 9: NaN / Inf anywhere in the stored weights is found and named. */
static void test_check_finite(void)
{
    const uint32_t f32_nan = 0x7fc00001u, f32_ninf = 0xff800000u;
    const uint16_t bf16_inf = 0x7f80u, bf16_nan = 0xffc1u;
    const uint8_t e4m3_nan = 0x7f;
    const float big = 448.0f; /* a finite e4m3 maximum and a finite scale: no false alarm */

    char *d = tu_make_model("tiny", 5, DSACP_WEIGHTS_F32);
    dsacp_model *m = NULL;
    REQUIRE_OK(dsacp_model_load(d, &m));
    CHECK_OK(dsacp_model_check_finite(m));
    dsacp_model_free(m);
    poke_tensor(d, "model.layers.1.self_attn.q_a_proj.weight", 0, &big, 4);
    poke_tensor(d, "model.layers.0.self_attn.q_a_proj.weight", 17, &f32_nan, 4);
    poke_tensor(d, "model.layers.1.mlp.down_proj.weight", 3, &f32_ninf, 4);
    expect_nonfinite(d, "model.layers.0.self_attn.q_a_proj.weight: non-finite value (nan) at index 17");
    tu_rmtree(d);
    free(d);

    /* bf16, with a tied-free MoE model: the first bad tensor in name order is reported. */
    d = tu_make_model("tiny-moe", 5, DSACP_WEIGHTS_BF16);
    poke_tensor(d, "model.norm.weight", 255, &bf16_inf, 2);
    poke_tensor(d, "model.layers.1.mlp.experts.7.up_proj.weight", 1000, &bf16_nan, 2);
    expect_nonfinite(d, "model.layers.1.mlp.experts.7.up_proj.weight: non-finite value (nan) at index 1000");
    poke_tensor(d, "model.layers.1.mlp.experts.7.up_proj.weight", 1000, &(uint16_t){0x3f80u}, 2);
    expect_nonfinite(d, "model.norm.weight: non-finite value (inf) at index 255");
    tu_rmtree(d);
    free(d);

    /* fp8: the e4m3 NaN code, and a non-finite block scale. */
    d = tu_make_model("tiny", 5, DSACP_WEIGHTS_FP8);
    m = NULL;
    REQUIRE_OK(dsacp_model_load(d, &m));
    CHECK_OK(dsacp_model_check_finite(m));
    dsacp_model_free(m);
    poke_tensor(d, "model.layers.0.self_attn.o_proj.weight", 4242, &e4m3_nan, 1);
    expect_nonfinite(d, "model.layers.0.self_attn.o_proj.weight: non-finite value (nan) at index 4242");
    poke_tensor(d, "model.layers.0.self_attn.o_proj.weight", 4242, &(uint8_t){0x7e}, 1);
    poke_tensor(d, "model.layers.0.mlp.up_proj.weight_scale_inv", 3, &f32_ninf, 4);
    expect_nonfinite(d, "model.layers.0.mlp.up_proj.weight_scale_inv: non-finite value (-inf) at index 3");
    tu_rmtree(d);
    free(d);
    CHECK(dsacp_model_check_finite(NULL) == DSACP_EINVAL);
}

/* Rewrites dir/model.safetensors with one more space after its header, so that the data region
 * starts at an odd offset of the file and no F32 tensor (or FP8 block scale) is aligned. */
static void misalign_checkpoint(const char *dir)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    char *buf;
    size_t len;
    REQUIRE_OK(dsacp_read_file(path, &buf, &len, 1u << 30));
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | (uint8_t)buf[i];
    uint64_t nlen = hlen + 1;
    FILE *f = fopen(path, "wb");
    if (!f) {
        fprintf(stderr, "misalign_checkpoint: cannot write %s\n", path);
        exit(1);
    }
    for (int i = 0; i < 8; i++) fputc((int)((nlen >> (8 * i)) & 0xff), f);
    fwrite(buf + 8, 1, (size_t)hlen, f);
    fputc(' ', f);
    fwrite(buf + 8 + hlen, 1, len - 8 - (size_t)hlen, f);
    CHECK(fclose(f) == 0);
    dsacp_free(buf);
}

typedef struct scan_record {
    int64_t calls, first_done, last_done, last_total;
    int nbad;
    char bad[4][256];
} scan_record;

static void record_progress(int64_t done, int64_t total, void *ctx)
{
    scan_record *r = ctx;
    if (r->calls++ == 0) r->first_done = done;
    r->last_done = done;
    r->last_total = total;
}

static void record_bad(const char *message, void *ctx)
{
    scan_record *r = ctx;
    if (r->nbad < 4) snprintf(r->bad[r->nbad], sizeof r->bad[0], "%s", message);
    r->nbad++;
}

/* Issue 20 item 14: a structure-only load (inspect's) reads no weight byte: an unaligned tensor
 * stays a view into the mapping instead of being copied (a copy reads the data, the whole
 * checkpoint when the header length is odd). The scan reads unaligned data and scales, reports
 * every bad tensor in name order, and its progress ends at dsacp_model_scan_bytes. */
static void test_structure_only(void)
{
    const uint32_t f32_nan = 0x7fc00001u, f32_ninf = 0xff800000u;
    for (int fp8 = 0; fp8 < 2; fp8++) {
        char *d = tu_make_model("tiny", 9, fp8 ? DSACP_WEIGHTS_FP8 : DSACP_WEIGHTS_F32);
        if (fp8) poke_tensor(d, "model.layers.1.self_attn.o_proj.weight_scale_inv", 1, &f32_ninf, 4);
        else poke_tensor(d, "model.layers.0.self_attn.q_a_proj.weight", 17, &f32_nan, 4);
        /* (The FP8 preset stores its norms in bf16.) */
        if (fp8) poke_tensor(d, "model.norm.weight", 2, &(uint16_t){0xff80u}, 2);
        else poke_tensor(d, "model.norm.weight", 2, &f32_ninf, 4);
        misalign_checkpoint(d);
        const char *first = fp8 ? "model.layers.1.self_attn.o_proj.weight_scale_inv: non-finite value (-inf) at index 1"
                                : "model.layers.0.self_attn.q_a_proj.weight: non-finite value (nan) at index 17";
        for (int structure = 0; structure < 2; structure++) {
            dsacp_model *m = NULL;
            REQUIRE_OK(dsacp_model_load_ex(d, structure ? DSACP_LOAD_STRUCTURE_ONLY : 0, &m));
            /* Structure only: views into the mapping, unaligned; a full load copies them aligned. */
            int64_t unaligned = 0, f32 = 0;
            for (int64_t i = 0; i < dsacp_model_weight_count(m); i++) {
                const dsacp_weight *w = dsacp_model_weight_at(m, i);
                if (w->dtype == DSACP_F32) {
                    f32++;
                    unaligned += (uintptr_t)w->data % 4 != 0;
                }
                if (w->dtype == DSACP_F8_E4M3) unaligned += (uintptr_t)w->scale % 4 != 0;
            }
            CHECKF(structure ? unaligned > f32 / 2 : unaligned == 0, "fp8 %d structure %d: %lld unaligned views",
                   fp8, structure, (long long)unaligned);
            scan_record r = {0};
            int rc = dsacp_model_scan_finite(m, record_progress, record_bad, &r);
            CHECKF(rc == DSACP_ERANGE && strcmp(dsacp_last_error(), first) == 0, "fp8 %d structure %d: rc %d '%s'",
                   fp8, structure, rc, dsacp_last_error());
            CHECKF(r.nbad == 2 && strcmp(r.bad[0], first) == 0 &&
                       strcmp(r.bad[1], "model.norm.weight: non-finite value (-inf) at index 2") == 0,
                   "fp8 %d structure %d: %d bad: '%s', '%s'", fp8, structure, r.nbad, r.bad[0], r.bad[1]);
            CHECKF(r.calls >= 2 && r.first_done == 0 && r.last_done == r.last_total &&
                       r.last_total == dsacp_model_scan_bytes(m) && r.last_total > 0,
                   "progress: %lld calls, first %lld, last %lld of %lld (scan bytes %lld)", (long long)r.calls,
                   (long long)r.first_done, (long long)r.last_done, (long long)r.last_total,
                   (long long)dsacp_model_scan_bytes(m));
            dsacp_model_free(m);
        }
        tu_rmtree(d);
        free(d);
    }
}

/* model.safetensors.index.json from memory (the loader's parser, also fuzzed). */
static void test_shard_index(void)
{
    dsacp_shard_index idx;
    const char *ok = "{\"metadata\":{\"total_size\":1},\"weight_map\":{\"a\":\"s2.safetensors\","
                     "\"b\":\"s1.safetensors\",\"c\":\"s2.safetensors\",\"d\":\"s3.safetensors\"}}";
    CHECK_OK(dsacp_shard_index_parse(ok, strlen(ok), "i.json", &idx));
    CHECK(idx.nfiles == 3 && idx.ntensors == 4 && !strcmp(idx.files[0], "s2.safetensors") &&
          !strcmp(idx.files[1], "s1.safetensors") && !strcmp(idx.files[2], "s3.safetensors"));
    dsacp_shard_index_free(&idx);
    const char *bad[][2] = {
        {"{\"weight_map\":{\"a\":\"../x\"}}", "weight_map.a"},
        {"{\"weight_map\":{\"a\":\"..\"}}", "weight_map.a"},
        {"{\"weight_map\":{\"a\":\"\"}}", "weight_map.a"},
        {"{\"weight_map\":{\"a\":3}}", "weight_map.a"},
        {"{\"weight_map\":{}}", "weight_map"},
        {"{\"weight_map\":[]}", "weight_map"},
        {"[]", "weight_map"},
        {"{\"weight_map\":", "invalid JSON"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = dsacp_shard_index_parse(bad[i][0], strlen(bad[i][0]), "i.json", &idx);
        CHECKF(rc == DSACP_EFORMAT && strstr(dsacp_last_error(), "i.json") && strstr(dsacp_last_error(), bad[i][1]) &&
                   idx.nfiles == 0 && idx.files == NULL,
               "case %zu: rc %d '%s'", i, rc, dsacp_last_error());
    }
    /* A long file name is refused (the loader joins it to the directory). */
    char *longname = malloc(400);
    snprintf(longname, 400, "{\"weight_map\":{\"a\":\"%0300d\"}}", 0);
    CHECK(dsacp_shard_index_parse(longname, strlen(longname), "i.json", &idx) == DSACP_EFORMAT);
    free(longname);
}

/* ---- the MTP layer (issue 23) ---- */

/* num_nextn_predict_layers: parsed (absent: 0), bounded, saved; the MTP layer's MLP by the
 * first_k_dense_replace / moe_layer_freq rule, also when mlp_layer_types lists the target layers. */
static void test_mtp_config(void)
{
    dsacp_config c;
    CHECK_OK(dsacp_config_parse(V32_ROPE_SCALING, strlen(V32_ROPE_SCALING), "v32.json", &c));
    CHECK(c.num_nextn_predict_layers == 0 && !dsacp_config_layer_is_moe(&c, 61));
    char *cfg = cfg_edit(V32_ROPE_SCALING, "\"num_hidden_layers\":61,", "\"num_hidden_layers\":61,\"num_nextn_predict_layers\":1,");
    CHECK_OK(dsacp_config_parse(cfg, strlen(cfg), "v32.json", &c));
    CHECK(c.num_nextn_predict_layers == 1 && dsacp_config_layer_is_moe(&c, 61) && !dsacp_config_layer_is_moe(&c, 62));
    free(cfg);
    /* transformers 5: mlp_layer_types covers layers 0 and 1; the MTP layer 2 follows the rule. */
    const char *base = "{\"hidden_size\":64,\"num_hidden_layers\":2,\"num_attention_heads\":4,\"q_lora_rank\":32,"
                       "\"kv_lora_rank\":32,\"qk_nope_head_dim\":16,\"qk_rope_head_dim\":16,\"v_head_dim\":16,"
                       "\"index_n_heads\":4,\"index_head_dim\":32,\"index_topk\":16,\"vocab_size\":256,"
                       "\"intermediate_size\":128,\"moe_intermediate_size\":32,\"n_routed_experts\":8,"
                       "\"num_experts_per_tok\":2,\"n_group\":2,\"topk_group\":1,\"first_k_dense_replace\":1,"
                       "\"mlp_layer_types\":[\"dense\",\"dense\"],\"num_nextn_predict_layers\":1}";
    CHECK_OK(dsacp_config_parse(base, strlen(base), "t5.json", &c));
    CHECK(!dsacp_config_layer_is_moe(&c, 1) && dsacp_config_layer_is_moe(&c, 2));
    cfg = cfg_edit(base, "\"first_k_dense_replace\":1", "\"first_k_dense_replace\":3");
    CHECK_OK(dsacp_config_parse(cfg, strlen(cfg), "t5.json", &c));
    CHECK(!dsacp_config_layer_is_moe(&c, 2));
    free(cfg);
    cfg = cfg_edit(base, "\"num_nextn_predict_layers\":1", "\"num_nextn_predict_layers\":0");
    CHECK_OK(dsacp_config_parse(cfg, strlen(cfg), "t5.json", &c));
    CHECK(!dsacp_config_layer_is_moe(&c, 2));
    free(cfg);
    /* Bounds: 0..16, and the MTP layer needs a slot below DSACP_MAX_LAYERS. */
    const char *bad[] = {"\"num_nextn_predict_layers\":17", "\"num_nextn_predict_layers\":-1",
                         "\"num_nextn_predict_layers\":\"one\""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cfg = cfg_edit(base, "\"num_nextn_predict_layers\":1", bad[i]);
        int rc = dsacp_config_parse(cfg, strlen(cfg), "n.json", &c);
        CHECKF(rc == DSACP_ECONFIG && strstr(dsacp_last_error(), "n.json") &&
                   strstr(dsacp_last_error(), "'num_nextn_predict_layers'"), "%s: rc %d '%s'", bad[i], rc, dsacp_last_error());
        free(cfg);
    }
    char *big = cfg_with_layers(DSACP_MAX_LAYERS, DSACP_MAX_LAYERS);
    cfg = cfg_edit(big, "\"mlp_layer_types\"", "\"num_nextn_predict_layers\":1,\"mlp_layer_types\"");
    int rc = dsacp_config_parse(cfg, strlen(cfg), "max.json", &c);
    CHECKF(rc == DSACP_ECONFIG && strstr(dsacp_last_error(), "'num_nextn_predict_layers'") &&
               strstr(dsacp_last_error(), "num_hidden_layers"), "512 layers + MTP: rc %d '%s'", rc, dsacp_last_error());
    free(cfg);
    free(big);
    /* Saved and read back. */
    char *dir = tu_tempdir(), path[4200];
    snprintf(path, sizeof path, "%s/config.json", dir);
    for (int64_t n = 0; n <= 2; n++) {
        dsacp_config a, b;
        CHECK_OK(dsacp_preset_config("tiny-moe", &a));
        a.num_nextn_predict_layers = n;
        CHECK_OK(dsacp_config_save(&a, path));
        CHECK_OK(dsacp_config_load(path, &b));
        CHECKF(b.num_nextn_predict_layers == n, "saved %lld, read %lld", (long long)n, (long long)b.num_nextn_predict_layers);
    }
    tu_rmtree(dir);
    free(dir);
}

/* The specs list the MTP layer after the target's, with its own MoE MLP and the extra tensors. */
static void test_mtp_specs(void)
{
    dsacp_config c;
    CHECK_OK(dsacp_preset_config("tiny-moe", &c));
    dsacp_tensor_spec *s0, *s1, *s2;
    int64_t n0, n1, n2;
    c.num_nextn_predict_layers = 0;
    REQUIRE_OK(dsacp_model_tensor_specs(&c, &s0, &n0));
    c.num_nextn_predict_layers = 1;
    REQUIRE_OK(dsacp_model_tensor_specs(&c, &s1, &n1));
    c.num_nextn_predict_layers = 2; /* only the first MTP layer is listed */
    REQUIRE_OK(dsacp_model_tensor_specs(&c, &s2, &n2));
    const int64_t E = c.n_routed_experts, D = c.hidden_size, V = c.vocab_size;
    const int64_t layer = 14 + 2 + 3 * E + 3; /* attention + norms, router, experts, shared expert */
    CHECKF(n1 == n0 + 5 + layer && n2 == n1, "%lld specs without MTP, %lld with, %lld with 2", (long long)n0,
           (long long)n1, (long long)n2);
    int64_t mtp = 0, same = 0;
    for (int64_t i = 0; i < n1; i++) mtp += s1[i].mtp;
    for (int64_t i = 0; i < n0; i++) same += !strcmp(s0[i].name, s1[i].name) && !s1[i].mtp && !s0[i].mtp;
    CHECK(mtp == 5 + layer && same == n0);
    CHECK(!strcmp(s1[n0].name, "model.layers.2.enorm.weight") && s1[n0].ndim == 1 && s1[n0].shape[0] == D);
    const dsacp_tensor_spec *eh = &s1[n0 + 2], *head = &s1[n1 - 1];
    CHECK(!strcmp(eh->name, "model.layers.2.eh_proj.weight") && eh->kind == DSACP_TK_LINEAR_BF16 &&
          eh->shape[0] == D && eh->shape[1] == 2 * D && !eh->fallback);
    CHECK(!strcmp(head->name, "model.layers.2.shared_head.head.weight") && head->shape[0] == V && head->shape[1] == D &&
          head->fallback && !strcmp(head->fallback, "lm_head.weight"));
    bool experts = false;
    for (int64_t i = n0; i < n1; i++) experts |= !strcmp(s1[i].name, "model.layers.2.mlp.experts.7.down_proj.weight");
    CHECK(experts);
    dsacp_free(s0);
    dsacp_free(s1);
    dsacp_free(s2);
}

static bool has_problem(const dsacp_model *m, bool error, const char *text)
{
    for (int64_t i = 0; i < dsacp_model_problem_count(m); i++) {
        const dsacp_model_problem *p = dsacp_model_problem_at(m, i);
        if (p->error == error && strstr(p->text, text)) return true;
    }
    return false;
}

/* A checkpoint with the whole MTP layer (FP8: its linears quantized but eh_proj), without it, with
 * part of it, with its own embedding, with a tensor of the wrong shape. */
static void test_mtp_load(void)
{
    dsacp_config c;
    CHECK_OK(dsacp_preset_config("tiny-moe", &c));
    c.num_nextn_predict_layers = 1;
    char *d = tu_make_model_cfg(&c, 11, DSACP_WEIGHTS_FP8);
    dsacp_model *m = NULL;
    REQUIRE_OK(dsacp_model_load(d, &m));
    const dsacp_weight *ex = dsacp_model_weight(m, "model.layers.2.mlp.experts.7.down_proj.weight");
    const dsacp_weight *eh = dsacp_model_weight(m, "model.layers.2.eh_proj.weight");
    const dsacp_weight *emb = dsacp_model_weight(m, "model.layers.2.embed_tokens.weight");
    const dsacp_weight *head = dsacp_model_weight(m, "model.layers.2.shared_head.head.weight");
    CHECK(dsacp_model_has_mtp(m) && dsacp_model_problem_count(m) == 0);
    CHECK(ex && ex->dtype == DSACP_F8_E4M3 && ex->scale && eh && eh->dtype == DSACP_BF16 && eh->cols == 2 * c.hidden_size);
    CHECK(emb && emb == dsacp_model_weight(m, "model.embed_tokens.weight"));
    CHECK(head && head != dsacp_model_weight(m, "lm_head.weight") && head->rows == c.vocab_size);
    CHECK(dsacp_model_weight(m, "model.layers.2.self_attn.indexer.wk.weight") != NULL);
    dsacp_model_free(m);

    /* Its own embedding, stored, is bound; the shared head absent resolves to lm_head. */
    edit_checkpoint(d, "model.layers.2.shared_head.head.weight", 0, NULL, 0, "model.layers.2.embed_tokens.weight",
                    c.vocab_size, c.hidden_size);
    REQUIRE_OK(dsacp_model_load(d, &m));
    emb = dsacp_model_weight(m, "model.layers.2.embed_tokens.weight");
    CHECK(dsacp_model_has_mtp(m) && emb && emb->dtype == DSACP_F32 && emb != dsacp_model_weight(m, "model.embed_tokens.weight"));
    CHECK(dsacp_model_weight(m, "model.layers.2.shared_head.head.weight") == dsacp_model_weight(m, "lm_head.weight"));
    dsacp_model_free(m);

    /* Part of it: an error naming the first missing tensor and the file. */
    poke_tensor(d, "model.layers.2.hnorm.weight", 0, NULL, 0);
    m = NULL;
    int rc = dsacp_model_load(d, &m);
    CHECKF(rc == DSACP_EFORMAT && !m && strstr(dsacp_last_error(), "'model.layers.2.hnorm.weight'") &&
               strstr(dsacp_last_error(), "model.safetensors") && strstr(dsacp_last_error(), "MTP"),
           "partial MTP layer: rc %d '%s'", rc, dsacp_last_error());
    tu_rmtree(d);
    free(d);

    /* None of it, though the config declares it: the target loads, a note says why mtp is unavailable. */
    c.num_nextn_predict_layers = 0;
    d = tu_make_model_cfg(&c, 11, DSACP_WEIGHTS_F32);
    char *text = read_text(d, "config.json");
    char *edited = cfg_edit(text, "\"num_nextn_predict_layers\": 0", "\"num_nextn_predict_layers\": 1");
    write_text(d, "config.json", edited);
    REQUIRE_OK(dsacp_model_load(d, &m));
    CHECK(!dsacp_model_has_mtp(m) && dsacp_model_weight(m, "model.layers.1.mlp.gate.weight") &&
          !dsacp_model_weight(m, "model.layers.2.enorm.weight") && !dsacp_model_weight(m, "model.layers.2.embed_tokens.weight"));
    CHECKF(dsacp_model_problem_count(m) == 1 && has_problem(m, false, "speculative method mtp unavailable"),
           "%lld problems: '%s'", (long long)dsacp_model_problem_count(m),
           dsacp_model_problem_count(m) ? dsacp_model_problem_at(m, 0)->text : "");
    dsacp_model_free(m);
    CHECK(!dsacp_model_has_mtp(NULL));
    dsacp_free(text);
    free(edited);
    tu_rmtree(d);
    free(d);

    /* A tensor of the wrong shape: the usual shape error (inspect's keep-going load lists it). */
    c.num_nextn_predict_layers = 1;
    d = tu_make_model_cfg(&c, 11, DSACP_WEIGHTS_F32);
    edit_checkpoint(d, "model.layers.2.eh_proj.weight", 0, NULL, 0, "model.layers.2.eh_proj.weight", c.hidden_size,
                    c.hidden_size);
    m = NULL;
    rc = dsacp_model_load(d, &m);
    CHECKF(rc == DSACP_ESHAPE && !m && strstr(dsacp_last_error(), "'model.layers.2.eh_proj.weight'") &&
               strstr(dsacp_last_error(), "shape"), "wrong shape: rc %d '%s'", rc, dsacp_last_error());
    rc = dsacp_model_load_ex(d, DSACP_LOAD_KEEP_GOING | DSACP_LOAD_STRUCTURE_ONLY, &m);
    CHECK(rc == DSACP_ESHAPE && m && !dsacp_model_has_mtp(m) && has_problem(m, true, "eh_proj"));
    dsacp_model_free(m);
    tu_rmtree(d);
    free(d);
}

int main(void)
{
    test_config();
    test_config_layer_types_bound();
    test_config_bounds();
    test_config_unsupported();
    test_shard_index();
    test_experts_vs_checkpoint();
    test_check_finite();
    test_structure_only();
    test_presets();
    test_round_trip("tiny", DSACP_WEIGHTS_F32);
    test_round_trip("tiny-moe", DSACP_WEIGHTS_BF16);
    test_round_trip("tiny-moe", DSACP_WEIGHTS_FP8);
    test_packed_and_sharded();
    test_mtp_config();
    test_mtp_specs();
    test_mtp_load();
    return test_finish("test_model");
}
