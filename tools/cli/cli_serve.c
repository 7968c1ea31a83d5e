/*
 * cli_serve.c -- `dsacp serve` (docs/server.md): the model (a directory, or a preset written to a
 * temporary directory), its tokenizer (--tokenizer, else <model>/tokenizer.json), the engine over
 * every rank of the job (the CP flags as for run), then the OpenAI-compatible server
 * (dsacp_server.h) until SIGTERM/SIGINT: rank 0 holds the socket, every rank steps. Prints
 * "dsacp serve: listening on http://HOST:PORT" on stdout once bound (--port 0: the port chosen),
 * the access log on stderr; exits 0 after a clean drain.
 */
#include "cli.h"
#include "cli_model_tokenizer.h"
#include "dsacp_server.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The flags, parsed and checked before anything else happens. */
typedef struct serve_args {
    const char *mdir, *preset, *tok_file, *name;
    int64_t kvb, kvmem;
    double grace_s;
    dsacp_engine_options eo;
    dsacp_cp_options cpo;
    dsacp_server_options so;
} serve_args;

static dsacp_server *volatile serve_handle; /* the signal handlers' server */

static void on_signal(int sig)
{
    (void)sig;
    dsacp_server_stop(serve_handle);
}

static void access_log(void *arg, const char *line)
{
    (void)arg;
    fprintf(stderr, "[serve] %s\n", line);
}

/* The server's numbers and strings. */
static bool serve_parse_server(const cli_opt *opts, serve_args *a)
{
    const char *s;
    int64_t v;
    dsacp_server_options_default(&a->so);
    if ((s = cli_get(opts, "host"))) a->so.host = s;
    if ((s = cli_get(opts, "port"))) {
        if (!cli_int("serve", "port", s, 0, 65535, &v)) return false;
        a->so.port = (int)v;
    }
    a->so.api_key = cli_get(opts, "api-key");
    if (a->so.api_key && !*a->so.api_key) {
        fprintf(stderr, "dsacp serve: option '--api-key' is empty\n");
        return false;
    }
    if ((s = cli_get(opts, "max-num-batched-tokens")) && !cli_int("serve", "max-num-batched-tokens", s, 1, 1 << 24, &a->so.live.serve.max_batch_tokens)) return false;
    if ((s = cli_get(opts, "max-num-seqs")) && !cli_int("serve", "max-num-seqs", s, 1, 1 << 20, &a->so.live.serve.max_num_seqs)) return false;
    if ((s = cli_get(opts, "max-waiting")) && !cli_int("serve", "max-waiting", s, 1, 1 << 20, &a->so.live.max_waiting)) return false;
    if ((s = cli_get(opts, "max-body-bytes"))) {
        if (!cli_int("serve", "max-body-bytes", s, 1, (int64_t)1 << 32, &v)) return false;
        a->so.max_body_bytes = (size_t)v;
    }
    if ((s = cli_get(opts, "timeout")) && !cli_double("serve", "timeout", s, 0.001, 1e6, &a->so.timeout_s)) return false;
    a->grace_s = 30;
    if ((s = cli_get(opts, "shutdown-timeout")) && !cli_double("serve", "shutdown-timeout", s, 0, 1e6, &a->grace_s)) return false;
    return true;
}

/* Every flag; 2 after the message naming the flag, CLI_RUN otherwise. */
static int serve_parse(const cli_opt *opts, serve_args *a)
{
    *a = (serve_args){.mdir = cli_get(opts, "model"), .preset = cli_get(opts, "preset"),
                      .tok_file = cli_get(opts, "tokenizer"), .name = cli_get(opts, "served-model-name"), .kvmem = -1};
    const char *s;
    if (!a->mdir == !a->preset) {
        fprintf(stderr, "dsacp serve: give exactly one of '--model DIR' and '--preset NAME'\n");
        return 2;
    }
    if (a->preset && !a->tok_file) {
        fprintf(stderr, "dsacp serve: '--preset %s' needs '--tokenizer FILE' (a preset has no tokenizer)\n", a->preset);
        return 2;
    }
    if (cli_get(opts, "kv-blocks") && cli_get(opts, "kv-memory")) {
        fprintf(stderr, "dsacp serve: give at most one of '--kv-blocks' and '--kv-memory'\n");
        return 2;
    }
    if ((s = cli_get(opts, "kv-blocks")) && !cli_int("serve", "kv-blocks", s, 1, INT32_MAX, &a->kvb)) return 2;
    if ((s = cli_get(opts, "kv-memory")) && (a->kvmem = cli_parse_size(s)) < 0) {
        fprintf(stderr, "dsacp serve: option '--kv-memory' must be a size of at least one byte like 512M, 2G or "
                "1048576, got '%s'\n", s);
        return 2;
    }
    if (a->name && !*a->name) {
        fprintf(stderr, "dsacp serve: option '--served-model-name' is empty\n");
        return 2;
    }
    if (!serve_parse_server(opts, a) || !cli_engine_options("serve", opts, &a->eo) || !cli_cp_options("serve", opts, &a->cpo))
        return 2;
    dsacp_config pc;
    if (a->preset && dsacp_preset_config(a->preset, &pc)) return cli_fail_invocation("serve", DSACP_ENOTFOUND);
    return CLI_RUN;
}

/* What a serve holds; serve_state_free releases it. */
typedef struct serve_state {
    bool root;
    cli_tmp_model tm; /* --preset's model directory until every rank has loaded it */
    dsacp_model *m;
    dsacp_tokenizer *tok;
    dsacp_engine *e;
    dsacp_server *srv;
    cli_output report;
    char name[256];
} serve_state;

/* --preset: rank 0 writes the preset into a fresh directory (cli_tmp_model), which every rank then
 * loads; removed once loaded (the weights stay mapped) and on SIGINT/SIGTERM. */
static int serve_preset_dir(const serve_args *a, serve_state *st)
{
    int rc = DSACP_OK;
    if (st->root) {
        dsacp_config pc;
        rc = dsacp_preset_config(a->preset, &pc);
        if (!rc) rc = cli_tmp_model_create(&st->tm, "serve", &pc, 0);
    }
    if (cli_world) rc = dsacp_comm_agree(cli_world, rc);
    if (!rc && cli_world) rc = dsacp_comm_bcast(cli_world, st->tm.dir, sizeof st->tm.dir, DSACP_PHASE_input);
    return rc;
}

/* The model, its name in the API, and (rank 0) the tokenizer checked against its vocabulary. */
static int serve_load(const serve_args *a, serve_state *st)
{
    if (a->preset) {
        const int rc = serve_preset_dir(a, st);
        if (rc) return cli_fail("serve", rc);
    }
    int ret = cli_load_model("serve", a->preset ? st->tm.dir : a->mdir, &a->eo, &st->m);
    if (st->root) cli_tmp_model_remove(&st->tm, "serve");
    if (ret != CLI_RUN) return ret;
    const char *base = a->preset;
    if (!base) {
        size_t n = strlen(a->mdir);
        while (n > 1 && a->mdir[n - 1] == '/') n--;
        size_t b = n;
        while (b > 0 && a->mdir[b - 1] != '/') b--;
        snprintf(st->name, sizeof st->name, "%.*s", (int)(n - b), a->mdir + b);
    }
    if (a->name || base) snprintf(st->name, sizeof st->name, "%s", a->name ? a->name : base);
    if (st->root) ret = cli_model_tokenizer("serve", a->tok_file, a->mdir, dsacp_model_config(st->m), &st->tok);
    if (!cli_world) return ret;
    /* another rank's verdict: rank 0's message was printed there */
    const int rc = dsacp_comm_agree(cli_world, ret == CLI_RUN ? DSACP_OK : ret == 2 ? DSACP_EINVAL : DSACP_ENOMEM);
    return rc == DSACP_OK ? CLI_RUN : rc == DSACP_EINVAL ? 2 : 1;
}

/* The KV pool of each rank: --kv-blocks, --kv-memory, or max-num-seqs requests of the model's
 * full length, at most 1 GiB. */
static int serve_pool(const serve_args *a, const dsacp_config *cfg, dsacp_engine_options *eo)
{
    const int64_t bs = eo->block_size;
    const int64_t per_block = bs * cfg->num_hidden_layers *
                              (dsacp_mla_cache_bytes_per_token(cfg, eo->kv_dtype) +
                               dsacp_index_cache_bytes_per_token(cfg, eo->numerics == DSACP_NUMERICS_DEPLOYED ? DSACP_KV_FP8 : DSACP_KV_F32));
    const int64_t per_request = (cfg->max_position_embeddings + bs - 1) / bs, cap = ((int64_t)1 << 30) / per_block;
    int64_t blocks = a->so.live.serve.max_num_seqs <= INT64_MAX / per_request ? a->so.live.serve.max_num_seqs * per_request : cap;
    if (blocks > cap) blocks = cap;
    eo->num_blocks = a->kvb ? a->kvb : a->kvmem > 0 ? a->kvmem / per_block : blocks < 1 ? 1 : blocks;
    if (eo->num_blocks >= 1) return CLI_RUN;
    fprintf(stderr, "dsacp serve: option '--kv-memory' holds no cache block of %lld bytes\n", (long long)per_block);
    return 2;
}

/* The engine and the server (bound: the listening line printed). */
static int serve_start(const serve_args *a, serve_state *st)
{
    dsacp_engine_options eo = a->eo;
    int ret = serve_pool(a, dsacp_model_config(st->m), &eo);
    if (ret != CLI_RUN) return ret;
    int rc = cli_world ? dsacp_engine_create_cp(st->m, &eo, &a->cpo, cli_world, &st->e) : dsacp_engine_create(st->m, &eo, &st->e);
    if (cli_world) rc = dsacp_comm_agree(cli_world, rc);
    if (rc) {
        cli_fail("serve", rc);
        return rc == DSACP_EINVAL || rc == DSACP_EUNSUPPORTED ? 2 : 1;
    }
    dsacp_server_options so = a->so;
    so.served_model_name = st->name;
    so.log = access_log;
    rc = dsacp_server_create(st->e, st->tok, &so, &st->srv);
    if (rc) {
        cli_fail("serve", rc);
        return rc == DSACP_EIO || rc == DSACP_ENOMEM ? 1 : 2; /* the address cannot be bound: a failed run */
    }
    if (st->root) {
        const char *h = so.host;
        printf(strchr(h, ':') ? "dsacp serve: listening on http://[%s]:%d\n" : "dsacp serve: listening on http://%s:%d\n", h,
               dsacp_server_port(st->srv));
        fflush(stdout);
    }
    return CLI_RUN;
}

int cli_serve(int argc, char **argv)
{
    cli_opt opts[] = {{"model", true, NULL},        {"preset", true, NULL},     {"tokenizer", true, NULL},
                      {"host", true, NULL},         {"port", true, NULL},       {"api-key", true, NULL},
                      {"served-model-name", true, NULL}, {"max-num-batched-tokens", true, NULL},
                      {"max-num-seqs", true, NULL}, {"max-waiting", true, NULL}, {"kv-blocks", true, NULL},
                      {"kv-memory", true, NULL},    {"max-body-bytes", true, NULL}, {"timeout", true, NULL},
                      {"shutdown-timeout", true, NULL}, {"numerics", true, NULL}, {"kv-dtype", true, NULL},
                      {"block-size", true, NULL},   CLI_CP_OPTS,                {NULL, false, NULL}};
    int ret = cli_parse(argc, argv, opts);
    if (ret != CLI_RUN) return ret;
    serve_args a;
    serve_state st = {.root = !cli_world || dsacp_comm_rank(cli_world) == 0};
    st.tm.cleanup = -1;
    cli_output_init(&st.report);
    if ((ret = serve_parse(opts, &a)) != CLI_RUN) return ret; /* every rank parses the same flags */
    int rc = cli_cp_begin("serve", opts, &st.report);
    if (rc) ret = cli_output_exit(rc);
    if (ret == CLI_RUN && (ret = serve_load(&a, &st)) == CLI_RUN && (ret = serve_start(&a, &st)) == CLI_RUN) {
        serve_handle = st.srv;
        struct sigaction sa = {.sa_handler = on_signal};
        sigemptyset(&sa.sa_mask);
        sigaction(SIGTERM, &sa, NULL);
        sigaction(SIGINT, &sa, NULL);
        rc = dsacp_server_run(st.srv, a.grace_s);
        if (cli_world) rc = dsacp_comm_agree(cli_world, rc);
        if (rc) cli_fail("serve", rc);
        ret = cli_cp_finish("serve", opts, rc, st.e, &st.report) ? 1 : 0;
    }
    serve_handle = NULL;
    cli_output_abort(&st.report);
    dsacp_server_free(st.srv);
    dsacp_engine_free(st.e);
    dsacp_tokenizer_free(st.tok);
    if (st.root) cli_tmp_model_remove(&st.tm, "serve");
    dsacp_model_free(st.m);
    return ret;
}
