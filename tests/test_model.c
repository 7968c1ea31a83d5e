/*
 * test_model.c -- config parsing (both rope spellings, derived scales, errors naming fields),
 * presets, init-model determinism and bit-exact round trips through the loader (f32, bf16,
 * fp8 with block scales), packed experts and sharded checkpoints.
 */
#include "test.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "numerics/numerics.h"
#include "ref/test_util.h"

#include <math.h>

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
    /* Shard 1: everything but layer 1's experts; shard 2: layer 1's experts, packed. */
    dsacp_st_writer *w1, *w2;
    REQUIRE_OK(dsacp_st_writer_create(&w1));
    REQUIRE_OK(dsacp_st_writer_create(&w2));
    float *gate_up = malloc((size_t)(E * 2 * I * D) * 4), *down = malloc((size_t)(E * D * I) * 4);
    for (int64_t i = 0; i < dsacp_model_weight_count(m); i++) {
        const dsacp_weight *w = dsacp_model_weight_at(m, i);
        long long L, e;
        char which[16];
        if (sscanf(w->name, "model.layers.%lld.mlp.experts.%lld.%15[a-z]_proj", &L, &e, which) == 3) {
            if (!strcmp(which, "gate")) memcpy(gate_up + e * 2 * I * D, w->data, (size_t)(I * D) * 4);
            else if (!strcmp(which, "up")) memcpy(gate_up + (e * 2 + 1) * I * D, w->data, (size_t)(I * D) * 4);
            else memcpy(down + e * D * I, w->data, (size_t)(D * I) * 4);
            continue;
        }
        int64_t shape[2] = {w->rows, w->cols};
        if (w->ndim == 1) shape[0] = w->cols;
        CHECK_OK(dsacp_st_writer_add(w1, w->name, w->dtype, w->ndim, shape, w->data));
    }
    int64_t s_gu[3] = {E, 2 * I, D}, s_d[3] = {E, D, I};
    CHECK_OK(dsacp_st_writer_add(w2, "model.layers.1.mlp.experts.gate_up_proj", DSACP_F32, 3, s_gu, gate_up));
    CHECK_OK(dsacp_st_writer_add(w2, "model.layers.1.mlp.experts.down_proj", DSACP_F32, 3, s_d, down));
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
    fprintf(f, ",\"model.layers.1.mlp.experts.down_proj\":\"model-00002-of-00002.safetensors\"}}");
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
        CHECK(dsacp_model_file_count(m2) == 2);
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

int main(void)
{
    test_config();
    test_presets();
    test_round_trip("tiny", DSACP_WEIGHTS_F32);
    test_round_trip("tiny-moe", DSACP_WEIGHTS_BF16);
    test_round_trip("tiny-moe", DSACP_WEIGHTS_FP8);
    test_packed_and_sharded();
    return test_finish("test_model");
}
