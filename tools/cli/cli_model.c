/* cli_model.c -- `dsacp init-model`, and `dsacp inspect`: a quick look at a checkpoint of any
 * size (config, files, tensor names, dtypes, shapes, counts; only config.json, the shard index and
 * the safetensors headers are read), and with --scan-weights the NaN/Inf scan of every weight
 * byte (dsacp_model_scan_finite), with a progress line on stderr. */
#include "cli.h"
#include "cli_model_tokenizer.h"
#include "dsacp_io.h"
#include "dsacp_util.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* --weights: the stored dtype of the linear weights; false after the error naming the flag. */
static bool weight_format(const char *preset, const char *ws, dsacp_weight_format *fmt)
{
    /* The real checkpoint stores FP8 weights; so does the default of the real-size preset. */
    *fmt = strcmp(preset, "v32-layer") == 0 ? DSACP_WEIGHTS_FP8 : DSACP_WEIGHTS_F32;
    if (!ws) return true;
    if (strcmp(ws, "f32") == 0) *fmt = DSACP_WEIGHTS_F32;
    else if (strcmp(ws, "bf16") == 0) *fmt = DSACP_WEIGHTS_BF16;
    else if (strcmp(ws, "fp8") == 0) *fmt = DSACP_WEIGHTS_FP8;
    else {
        fprintf(stderr, "dsacp init-model: option '--weights' must be f32, bf16 or fp8, got '%s'\n", ws);
        return false;
    }
    return true;
}

/* The vocabulary: --vocab-size, else the tokenizer's (cli_tokenizer_vocab), else the preset's.
 * false after the error naming the flag. */
static bool choose_vocab(const cli_opt *opts, const cli_tokenizer_files *tf, dsacp_config *cfg, const char **why)
{
    const char *vs = cli_get(opts, "vocab-size");
    const int64_t ids = tf->tok ? tf->ids : 1;
    if (!vs) {
        if (tf->tok) cfg->vocab_size = cli_tokenizer_vocab(tf->tok, why);
        return true;
    }
    int64_t v;
    if (!cli_int("init-model", "vocab-size", vs, 1, CLI_MAX_VOCAB, &v)) return false;
    if (v < ids) {
        fprintf(stderr, "dsacp init-model: option '--vocab-size' = %lld is below the %lld ids of the tokenizer "
                "%s\n", (long long)v, (long long)ids, tf->file);
        return false;
    }
    cfg->vocab_size = v;
    *why = "--vocab-size";
    return true;
}

/* Writes the model and, with --tokenizer, its tokenizer files: staged before the model is written,
 * committed after it; on failure nothing this call wrote is left (the directory too when this call
 * created it). */
static int write_model(const dsacp_config *cfg, const char *out, uint64_t seed, dsacp_weight_format fmt,
                       cli_tokenizer_files *tf)
{
    if (!tf->tok) return dsacp_model_init(cfg, out, seed, fmt);
    const bool made_dir = mkdir(out, 0777) == 0;
    int rc = cli_tokenizer_files_stage(tf, out);
    bool wrote_model = false;
    if (!rc) {
        rc = dsacp_model_init(cfg, out, seed, fmt);
        wrote_model = rc == DSACP_OK;
    }
    if (!rc) rc = cli_tokenizer_files_commit(tf, out);
    if (rc) {
        int keep = rc;
        cli_tokenizer_files_free(tf); /* the temporaries */
        const char *names[] = {"config.json", "model.safetensors"};
        char path[4096];
        for (size_t i = 0; wrote_model && i < sizeof names / sizeof names[0]; i++)
            if ((size_t)snprintf(path, sizeof path, "%s/%s", out, names[i]) < sizeof path) unlink(path);
        if (made_dir) rmdir(out);
        rc = keep;
    }
    return rc;
}

int cli_init_model(int argc, char **argv)
{
    cli_opt opts[] = {{"preset", true, NULL},    {"out", true, NULL},        {"seed", true, NULL},
                      {"weights", true, NULL},   {"no-mtp", false, NULL},    {"tokenizer", true, NULL},
                      {"vocab-size", true, NULL}, {NULL, false, NULL}};
    int parsed = cli_parse(argc, argv, opts);
    if (parsed != CLI_RUN) return parsed;
    const char *preset = cli_require(opts, "init-model", "preset");
    const char *out = preset ? cli_require(opts, "init-model", "out") : NULL;
    if (!out) return 2;
    int64_t seed = 0;
    const char *seed_s = cli_get(opts, "seed");
    if (seed_s && !cli_int("init-model", "seed", seed_s, 0, INT64_MAX, &seed)) return 2;
    dsacp_config cfg;
    int rc = dsacp_preset_config(preset, &cfg);
    if (rc) return cli_fail_invocation("init-model", rc); /* an unknown preset: exit 2 */
    /* Without the MTP layer the config declares none, so the checkpoint is complete as written. */
    if (cli_get(opts, "no-mtp")) cfg.num_nextn_predict_layers = 0;
    dsacp_weight_format fmt;
    if (!weight_format(preset, cli_get(opts, "weights"), &fmt)) return 2;
    cli_tokenizer_files tf = {0};
    const char *tok_file = cli_get(opts, "tokenizer"), *why = NULL;
    if (tok_file && (rc = cli_tokenizer_files_read("init-model", tok_file, &tf)) != CLI_RUN) {
        cli_tokenizer_files_free(&tf);
        return rc;
    }
    if (!choose_vocab(opts, &tf, &cfg, &why)) {
        cli_tokenizer_files_free(&tf);
        return 2;
    }
    rc = write_model(&cfg, out, (uint64_t)seed, fmt, &tf);
    if (rc) {
        cli_tokenizer_files_free(&tf);
        return cli_fail("init-model", rc);
    }
    printf("wrote %s/config.json and %s/model.safetensors (preset %s, seed %" PRId64 ", weights %s, %s)\n",
           out, out, preset, seed, fmt == DSACP_WEIGHTS_FP8 ? "fp8" : fmt == DSACP_WEIGHTS_BF16 ? "bf16" : "f32",
           cfg.num_nextn_predict_layers > 0 ? "with the MTP layer" : "no MTP layer");
    if (tf.tok)
        printf("wrote %s/tokenizer.json%s from %s: %lld ids, vocabulary %lld (%s)\n", out,
               tf.config ? " and tokenizer_config.json" : "", tok_file, (long long)tf.ids,
               (long long)cfg.vocab_size, why);
    else if (why)
        printf("vocabulary %lld (--vocab-size)\n", (long long)cfg.vocab_size);
    cli_tokenizer_files_free(&tf);
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
    printf("  MTP layers declared (num_nextn_predict_layers): %lld\n", (long long)c->num_nextn_predict_layers);
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

/* The MTP layer (checkpoint layer num_hidden_layers): loaded with its tensor count (canonical
 * names, experts counted one by one), or why not. */
static void print_mtp(const dsacp_model *m, const dsacp_config *c)
{
    if (c->num_nextn_predict_layers == 0) {
        printf("MTP layer: none (num_nextn_predict_layers = 0)\n");
        return;
    }
    if (!dsacp_model_has_mtp(m)) {
        printf("MTP layer: not loaded (layer %lld: see the problems below)\n", (long long)c->num_hidden_layers);
        return;
    }
    char prefix[64];
    int len = snprintf(prefix, sizeof prefix, "model.layers.%lld.", (long long)c->num_hidden_layers);
    int64_t n = 0;
    for (int64_t i = 0; i < dsacp_model_weight_count(m); i++) {
        dsacp_tensor_info t;
        if (!dsacp_model_tensor_info(m, i, &t) && strncmp(t.name, prefix, (size_t)len) == 0) n++;
    }
    printf("MTP layer: layer %lld loaded, %lld tensors%s\n", (long long)c->num_hidden_layers, (long long)n,
           c->num_nextn_predict_layers > 1 ? " (only the first MTP layer is used)" : "");
}

/* <dir>/tokenizer.json, when there is one: printed with its id count; one that does not load, or
 * has ids past the model's vocabulary, is an error (false, msg set). */
static bool print_tokenizer(const char *dir, const dsacp_config *c, char *msg, size_t cap)
{
    char path[4096];
    struct stat sb;
    if ((size_t)snprintf(path, sizeof path, "%s/tokenizer.json", dir) >= sizeof path || stat(path, &sb) != 0)
        return true;
    dsacp_tokenizer *t = NULL;
    if (dsacp_tokenizer_load(path, &t)) {
        snprintf(msg, cap, "%s", dsacp_last_error());
        printf("tokenizer: %s does not load\n", path);
        return false;
    }
    const int64_t ids = dsacp_tokenizer_vocab_size(t);
    const int32_t bos = dsacp_tokenizer_token_id(t, CLI_BOS_TOKEN), eos = dsacp_tokenizer_token_id(t, CLI_EOS_TOKEN);
    dsacp_tokenizer_free(t);
    char special[64] = "";
    if (bos >= 0 && eos >= 0) snprintf(special, sizeof special, " (BOS id %d, EOS id %d)", (int)bos, (int)eos);
    printf("tokenizer: %s, %lld ids%s, model vocabulary %lld\n", path, (long long)ids, special,
           (long long)c->vocab_size);
    if (ids <= c->vocab_size) return true;
    snprintf(msg, cap, "%s: the tokenizer has %lld ids but the model's vocabulary (config.json vocab_size) is %lld",
             path, (long long)ids, (long long)c->vocab_size);
    return false;
}

/* The scan's progress line on stderr: on a terminal one line rewritten in place (at most four
 * times a second) and ended when the scan ends; otherwise (a log) a full line every 10 s, so a
 * scan shorter than that prints nothing there. */
typedef struct scan_progress {
    double t0, last;
    bool tty, shown;
    int64_t done;
} scan_progress;

static void scan_progress_line(scan_progress *p, int64_t done, int64_t total, double now)
{
    double dt = now - p->t0;
    fprintf(stderr, "%sscanning weights: %.2f / %.2f GB (%.2f GB/s)%s", p->tty ? "\r" : "", done / 1e9,
            total / 1e9, dt > 0 ? done / 1e9 / dt : 0.0, p->tty ? "" : "\n");
    fflush(stderr);
    p->shown = true;
    p->last = now;
}

static void on_scan_progress(int64_t done, int64_t total, void *ctx)
{
    scan_progress *p = ctx;
    if (done > p->done) p->done = done;
    double now = dsacp_now();
    /* A terminal sees the line from the start, updated, and its final value. */
    if (now - p->last >= (p->tty ? 0.25 : 10.0) || (p->tty && (!p->shown || p->done == total)))
        scan_progress_line(p, p->done, total, now);
}

/* The problems found by the scan, listed after the loader's. */
typedef struct scan_findings {
    char (*msg)[512];
    int64_t n, cap;
    bool truncated;
} scan_findings;

static void on_scan_bad(const char *message, void *ctx)
{
    scan_findings *f = ctx;
    if (f->n == f->cap) {
        int64_t cap = f->cap ? 2 * f->cap : 16;
        char(*v)[512] = dsacp_alloc((size_t)cap * sizeof *v);
        if (!v) {
            f->truncated = true;
            return;
        }
        if (f->n) memcpy(v, f->msg, (size_t)f->n * sizeof *v);
        dsacp_free(f->msg);
        f->msg = v;
        f->cap = cap;
    }
    snprintf(f->msg[f->n++], sizeof f->msg[0], "%s", message);
}

typedef struct scan_ctx {
    scan_progress progress;
    scan_findings findings;
} scan_ctx;

static void scan_ctx_progress(int64_t done, int64_t total, void *ctx)
{
    on_scan_progress(done, total, &((scan_ctx *)ctx)->progress);
}

static void scan_ctx_bad(const char *message, void *ctx) { on_scan_bad(message, &((scan_ctx *)ctx)->findings); }

int cli_inspect(int argc, char **argv)
{
    cli_opt opts[] = {{"model", true, NULL}, {"scan-weights", false, NULL}, {NULL, false, NULL}};
    int parsed = cli_parse(argc, argv, opts);
    if (parsed != CLI_RUN) return parsed;
    const char *dir = cli_require(opts, "inspect", "model");
    if (!dir) return 2;
    const bool scan = cli_get(opts, "scan-weights") != NULL;
    /* Structure only: the headers are read and checked against the file sizes; no weight byte
     * is read unless --scan-weights asks for it. */
    dsacp_model *m = NULL;
    int rc = dsacp_model_load_ex(dir, DSACP_LOAD_KEEP_GOING | DSACP_LOAD_STRUCTURE_ONLY, &m);
    if (!m) {
        /* A model directory that cannot be read is the invocation's fault (2), unless memory ran out. */
        cli_fail("inspect", rc);
        return rc == DSACP_ENOMEM ? 1 : 2;
    }
    char load_msg[512] = "";
    if (rc) snprintf(load_msg, sizeof load_msg, "%s", dsacp_last_error());
    const dsacp_config *c = dsacp_model_config(m);
    printf("model %s\n", dir);
    for (int64_t i = 0; i < dsacp_model_file_count(m); i++) printf("  file %s\n", dsacp_model_file_path(m, i));
    print_config(c);
    printf("tensors (canonical names; packed experts shown per expert):\n");
    int64_t params = 0, bytes = 0;
    for (int64_t i = 0; i < dsacp_model_weight_count(m); i++) {
        dsacp_tensor_info t;
        if (dsacp_model_tensor_info(m, i, &t)) continue; /* i is in range: never */
        const dsacp_tensor_info *w = &t;
        if (strcmp(w->name, "lm_head.weight") == 0 && c->tie_word_embeddings) continue;
        params += w->rows * w->cols;
        bytes += w->bytes;
        if (w->ndim == 2)
            printf("  %-60s %-8s [%lld, %lld]%s\n", w->name, dsacp_dtype_name(w->dtype), (long long)w->rows,
                   (long long)w->cols, w->dtype == DSACP_F8_E4M3 ? " + weight_scale_inv" : "");
        else
            printf("  %-60s %-8s [%lld]\n", w->name, dsacp_dtype_name(w->dtype), (long long)w->cols);
    }
    print_mtp(m, c);
    char tok_msg[4608] = "";
    const bool tok_ok = print_tokenizer(dir, c, tok_msg, sizeof tok_msg);
    printf("parameters: %lld (%.3f M), weight bytes: %lld (%.2f MiB)\n", (long long)params, params / 1e6,
           (long long)bytes, bytes / 1048576.0);
    printf("KV cache bytes per token per layer:\n");
    printf("  MLA latent: f32 %lld, bf16 %lld, fp8_ds_mla %lld\n",
           (long long)dsacp_mla_cache_bytes_per_token(c, DSACP_KV_F32),
           (long long)dsacp_mla_cache_bytes_per_token(c, DSACP_KV_BF16),
           (long long)dsacp_mla_cache_bytes_per_token(c, DSACP_KV_FP8));
    printf("  indexer keys: f32 %lld, fp8 %lld\n", (long long)dsacp_index_cache_bytes_per_token(c, DSACP_KV_F32),
           (long long)dsacp_index_cache_bytes_per_token(c, DSACP_KV_FP8));
    const int64_t scan_total = dsacp_model_scan_bytes(m);
    scan_ctx sc = {{0}, {0}};
    int frc = DSACP_OK;
    char finite_msg[512] = "";
    if (scan) {
        /* Every weight byte is read: NaN/Inf in any tensor (or FP8 block scale) is an error. */
        sc.progress.tty = isatty(fileno(stderr)) != 0;
        sc.progress.t0 = sc.progress.last = dsacp_now();
        frc = dsacp_model_scan_finite(m, scan_ctx_progress, scan_ctx_bad, &sc);
        double dt = dsacp_now() - sc.progress.t0;
        if (sc.progress.shown && sc.progress.tty) fputc('\n', stderr);
        if (frc) snprintf(finite_msg, sizeof finite_msg, "%s: %s", dir, dsacp_last_error());
        if (frc && frc != DSACP_ERANGE) {
            /* The scan itself failed (out of memory): no finding to list. */
            fprintf(stderr, "dsacp inspect: %s\n", dsacp_last_error());
            dsacp_free(sc.findings.msg);
            dsacp_model_free(m);
            return 1;
        }
        printf("weights: %.3f GB scanned for NaN/Inf in %.2f s (%.2f GB/s): %s\n", scan_total / 1e9, dt,
               dt > 0 ? scan_total / 1e9 / dt : 0.0, frc ? "non-finite values found" : "all finite");
    } else {
        printf("weights: not scanned for NaN/Inf (add --scan-weights to read all %.3f GB of them)\n",
               scan_total / 1e9);
    }
    int64_t nerr = sc.findings.n + (sc.findings.truncated ? 1 : 0), nwarn = 0;
    int64_t nload_err = 0;
    for (int64_t i = 0; i < dsacp_model_problem_count(m); i++) {
        const dsacp_model_problem *p = dsacp_model_problem_at(m, i);
        if (p->error) nload_err++; else nwarn++;
    }
    if (!tok_ok) nload_err++;
    nerr += nload_err;
    if (frc && nerr == 0) nerr = 1;
    if (nerr || nwarn) {
        printf("problems: %lld errors, %lld warnings\n", (long long)nerr, (long long)nwarn);
        for (int64_t i = 0; i < dsacp_model_problem_count(m); i++) {
            const dsacp_model_problem *p = dsacp_model_problem_at(m, i);
            printf("  %s: %s\n", p->error ? "error" : "warning", p->text);
        }
        for (int64_t i = 0; i < sc.findings.n; i++) printf("  error: %s: %s\n", dir, sc.findings.msg[i]);
        if (sc.findings.truncated || (frc && sc.findings.n == 0)) printf("  error: %s\n", finite_msg);
        if (!tok_ok) printf("  error: %s\n", tok_msg);
    } else {
        printf("problems: none\n");
    }
    dsacp_free(sc.findings.msg);
    if (nerr) {
        /* The load's first error (a malformed checkpoint: the invocation named a bad model, 2),
         * else the first non-finite weight (found by the scan, 1). */
        const char *msg = load_msg[0] ? load_msg : finite_msg;
        for (int64_t i = 0; !msg[0] && i < dsacp_model_problem_count(m); i++)
            if (dsacp_model_problem_at(m, i)->error) msg = dsacp_model_problem_at(m, i)->text;
        if (!msg[0]) msg = tok_msg;
        fprintf(stderr, "dsacp inspect: %s\n", msg);
        dsacp_model_free(m);
        return nload_err || rc ? 2 : 1;
    }
    dsacp_model_free(m);
    return 0;
}
