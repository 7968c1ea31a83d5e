/*
 * cli_generate.c -- `dsacp generate` (greedy decoding, the demo job) and `dsacp make-input`
 * (writes a forward input: random requests and a mixed prefill/decode schedule).
 */
#include "cli.h"
#include "dsacp_io.h"
#include "dsacp_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Greedy choice over one row of logits: the first index of the largest value. A NaN or an
 * infinity is an error (DSACP_ERANGE naming the token and the index), never token 0. */
static int argmax(const float *x, int64_t n, int64_t token, int32_t *out)
{
    int64_t best = 0;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(x[i]))
            return dsacp_error(DSACP_ERANGE, "the logits after token %lld are not finite (vocabulary index %lld "
                               "is %g); the model's weights or activations overflowed", (long long)token,
                               (long long)i, (double)x[i]);
        if (x[i] > x[best]) best = i;
    }
    *out = (int32_t)best;
    return DSACP_OK;
}

/* Rank 0's choice (and status) to every rank: each rank feeds the same next token. */
static int share_token(dsacp_comm *world, int rc, int32_t *next)
{
    if (!world) return rc;
    rc = dsacp_comm_agree(world, rc);
    if (rc) return rc;
    return dsacp_comm_bcast(world, next, sizeof *next, DSACP_PHASE_input);
}

int cli_generate(int argc, char **argv)
{
    cli_opt opts[] = {{"model", true, NULL},      {"prompt-len", true, NULL}, {"new-tokens", true, NULL},
                      {"seed", true, NULL},       {"chunk", true, NULL},      {"numerics", true, NULL},
                      {"kv-dtype", true, NULL},   {"block-size", true, NULL}, {"all-logits", false, NULL},
                      CLI_CP_OPTS,                {NULL, false, NULL}};
    int parsed = cli_parse(argc, argv, opts);
    if (parsed != CLI_RUN) return parsed;
    const char *dir = cli_require(opts, "generate", "model");
    if (!dir) return 2;
    /* Greedy decoding reads one row per step: lm_head runs only there unless asked for all. */
    const bool all_logits = cli_get(opts, "all-logits") != NULL;
    int64_t plen = 64, ntok = 16, seed = 0, chunk = 256;
    const char *s;
    if ((s = cli_get(opts, "prompt-len")) && !cli_int("generate", "prompt-len", s, 1, 1 << 24, &plen)) return 2;
    if ((s = cli_get(opts, "new-tokens")) && !cli_int("generate", "new-tokens", s, 0, 1 << 24, &ntok)) return 2;
    if ((s = cli_get(opts, "seed")) && !cli_int("generate", "seed", s, 0, INT64_MAX, &seed)) return 2;
    if ((s = cli_get(opts, "chunk")) && !cli_int("generate", "chunk", s, 1, 1 << 24, &chunk)) return 2;
    dsacp_engine_options eo;
    if (!cli_engine_options("generate", opts, &eo)) return 2;
    dsacp_cp_options cpo;
    if (!cli_cp_options("generate", opts, &cpo)) return 2;
    dsacp_comm *world = cli_world;
    const bool root = !world || dsacp_comm_rank(world) == 0;
    cli_output report_out; /* --comm-report, opened before any work */
    int orc = cli_cp_begin("generate", opts, &report_out);
    if (orc) return cli_output_exit(orc); /* 1: cannot be created; 2: it names an input */
    dsacp_model *m = NULL;
    int rc = cli_load_model("generate", dir, &eo, &m);
    if (rc != CLI_RUN) {
        cli_output_abort(&report_out);
        return rc;
    }
    const dsacp_config *cfg = dsacp_model_config(m);
    /* Every generated token is fed back, so positions 0 .. plen + ntok - 1 are computed. */
    if (plen + ntok > cfg->max_position_embeddings) {
        fprintf(stderr, "dsacp generate: --prompt-len %lld + --new-tokens %lld = %lld positions, more than the "
                "model's max_position_embeddings = %lld (%s/config.json)\n", (long long)plen, (long long)ntok,
                (long long)(plen + ntok), (long long)cfg->max_position_embeddings, dir);
        dsacp_model_free(m);
        cli_output_abort(&report_out);
        return 2;
    }
    const int64_t rows = !all_logits ? 1 : chunk < plen ? chunk : plen; /* logits rows of the largest step */
    const int64_t V = cfg->vocab_size;
    size_t ids_bytes = 0, logits_bytes = 0;
    if (!dsacp_size_product(sizeof(int32_t), 1, (int64_t[]){plen + ntok + 1}, DSACP_FORWARD_MAX_BYTES, &ids_bytes) ||
        !dsacp_size_product(sizeof(float), 2, (int64_t[]){rows, V}, DSACP_FORWARD_MAX_BYTES, &logits_bytes)) {
        fprintf(stderr, "dsacp generate: the logits of a prefill chunk, --chunk %lld x vocab_size %lld floats, are "
                "more than %zu bytes\n", (long long)chunk, (long long)V, (size_t)DSACP_FORWARD_MAX_BYTES);
        dsacp_model_free(m);
        cli_output_abort(&report_out);
        return 2;
    }
    eo.num_blocks = (plen + ntok + eo.block_size - 1) / eo.block_size + 1;
    dsacp_engine *e = NULL;
    rc = world ? dsacp_engine_create_cp(m, &eo, &cpo, world, &e) : dsacp_engine_create(m, &eo, &e);
    /* options the engine refuses (CP conflicts) are the invocation's: exit 2, as in run */
    const bool refused = rc == DSACP_EINVAL || rc == DSACP_EUNSUPPORTED;
    int32_t *ids = malloc(ids_bytes);
    float *logits = malloc(root ? logits_bytes : 4);
    int64_t req = 0;
    if (!rc && (!ids || !logits)) rc = dsacp_error(DSACP_ENOMEM, "out of memory");
    if (!rc) rc = dsacp_engine_add_request(e, &req);
    if (world && e) rc = dsacp_comm_agree(world, rc);
    dsacp_rng rng;
    dsacp_rng_seed(&rng, (uint64_t)seed);
    for (int64_t i = 0; i < plen && !rc; i++) ids[i] = (int32_t)(dsacp_rng_u64(&rng) % (uint64_t)V);
    /* Nothing is printed until the whole run has succeeded: no partial report before an error. */
    double t0 = dsacp_now();
    int32_t next = 0;
    for (int64_t done_ = 0; done_ < plen && !rc; done_ += chunk) {
        int64_t c = plen - done_ < chunk ? plen - done_ : chunk;
        dsacp_step_entry en = {req, c, ids + done_};
        if (all_logits) rc = dsacp_engine_step(e, &en, 1, root ? logits : NULL, NULL); /* agreed by the group */
        else rc = dsacp_engine_step_last(e, &en, 1, root ? logits : NULL, NULL);
        const float *row = all_logits ? logits + (c - 1) * V : logits;
        if (!rc) rc = share_token(world, root ? argmax(row, V, done_ + c - 1, &next) : DSACP_OK, &next);
    }
    double t1 = dsacp_now();
    for (int64_t i = 0; i < ntok && !rc; i++) {
        ids[plen + i] = next;
        dsacp_step_entry en = {req, 1, ids + plen + i};
        rc = dsacp_engine_step(e, &en, 1, root ? logits : NULL, NULL);
        if (!rc) rc = share_token(world, root ? argmax(logits, V, plen + i, &next) : DSACP_OK, &next);
    }
    double t2 = dsacp_now();
    if (rc) {
        cli_fail("generate", rc);
        goto done;
    }
    rc = cli_cp_finish("generate", opts, rc, e, &report_out);
    if (rc) goto done;
    char *text = NULL;
    size_t text_len = 0;
    FILE *f = open_memstream(&text, &text_len);
    if (!f) {
        rc = cli_fail("generate", dsacp_error(DSACP_ENOMEM, "out of memory for the report"));
        goto done;
    }
    fprintf(f, "prompt: %lld random tokens (seed %lld), prefill in chunks of %lld: %.3f s (%.1f tokens/s)\n",
           (long long)plen, (long long)seed, (long long)chunk, t1 - t0, plen / (t1 - t0));
    fprintf(f, "generated:");
    for (int64_t i = 0; i < ntok; i++) fprintf(f, " %d", ids[plen + i]);
    fprintf(f, "\n");
    if (ntok) fprintf(f, "decode: %lld tokens in %.3f s (%.1f ms/token)\n", (long long)ntok, t2 - t1, 1e3 * (t2 - t1) / ntok);
    rc = fclose(f) != 0 ? dsacp_error(DSACP_ENOMEM, "out of memory for the report") : DSACP_OK;
    if (!rc && root) rc = cli_print_buffer(text, text_len);
    if (rc) cli_fail("generate", rc);
    free(text);
done:
    cli_output_abort(&report_out);
    free(ids);
    free(logits);
    dsacp_engine_free(e);
    dsacp_model_free(m);
    return rc ? (refused ? 2 : 1) : 0;
}

int cli_make_input(int argc, char **argv)
{
    cli_opt opts[] = {{"out", true, NULL},   {"requests", true, NULL}, {"length", true, NULL},
                      {"vocab", true, NULL}, {"chunk", true, NULL},    {"seed", true, NULL},
                      {NULL, false, NULL}};
    int parsed = cli_parse(argc, argv, opts);
    if (parsed != CLI_RUN) return parsed;
    const char *out = cli_require(opts, "make-input", "out");
    if (!out) return 2;
    int64_t R = 3, L = 100, V = 512, chunk = 37, seed = 0;
    const char *s;
    if ((s = cli_get(opts, "requests")) && !cli_int("make-input", "requests", s, 1, 4096, &R)) return 2;
    if ((s = cli_get(opts, "length")) && !cli_int("make-input", "length", s, 1, 1 << 20, &L)) return 2;
    if ((s = cli_get(opts, "vocab")) && !cli_int("make-input", "vocab", s, 1, INT32_MAX, &V)) return 2;
    if ((s = cli_get(opts, "chunk")) && !cli_int("make-input", "chunk", s, 1, 1 << 20, &chunk)) return 2;
    if ((s = cli_get(opts, "seed")) && !cli_int("make-input", "seed", s, 0, INT64_MAX, &seed)) return 2;
    cli_output held; /* the output before any work: one that cannot be created is known at once */
    if (cli_output_open("make-input", "out", out, &held)) return 1; /* an output that cannot be created: exit 1 */
    /* Request r has length L - r * L / (2R) (different lengths); prefill in chunks of `chunk`,
     * then one token per step, each request starting one step later than the previous. */
    dsacp_rng rng;
    dsacp_rng_seed(&rng, (uint64_t)seed);
    int64_t *len = calloc((size_t)R, sizeof *len), S = 0;
    int32_t *ids = malloc((size_t)(R * L) * sizeof *ids);
    if (!len || !ids) {
        free(len);
        free(ids);
        cli_output_abort(&held);
        fprintf(stderr, "dsacp make-input: out of memory\n");
        return 1;
    }
    for (int64_t r = 0; r < R; r++) {
        len[r] = L - r * L / (2 * R);
        for (int64_t j = 0; j < L; j++)
            ids[r * L + j] = j < len[r] ? (int32_t)(dsacp_rng_u64(&rng) % (uint64_t)V) : -1;
    }
    /* Count steps, then fill. */
    int32_t *sched = NULL;
    for (int pass = 0; pass < 2; pass++) {
        int64_t *fed = calloc((size_t)R, sizeof *fed);
        int64_t st = 0;
        bool more = true;
        while (more && fed) {
            more = false;
            for (int64_t r = 0; r < R; r++) {
                int64_t c = 0;
                if (st >= r && fed[r] < len[r]) {
                    int64_t prompt = len[r] / 2;
                    c = fed[r] < prompt ? (prompt - fed[r] < chunk ? prompt - fed[r] : chunk) : 1;
                }
                if (pass) sched[st * R + r] = (int32_t)c;
                fed[r] += c;
                if (fed[r] < len[r]) more = true;
            }
            st++;
        }
        free(fed);
        S = st;
        if (!pass) sched = calloc((size_t)(S * R), sizeof *sched);
        if (!sched) break;
    }
    int rc = sched ? DSACP_OK : DSACP_ENOMEM;
    dsacp_st_writer *w = NULL;
    int64_t ishape[2] = {R, L}, sshape[2] = {S, R};
    if (!rc) rc = dsacp_st_writer_create(&w);
    if (!rc) rc = dsacp_st_writer_add(w, "input_ids", DSACP_I32, 2, ishape, ids);
    if (!rc) rc = dsacp_st_writer_add(w, "schedule", DSACP_I32, 2, sshape, sched);
    if (!rc) rc = dsacp_st_writer_write(w, out); /* its own temporary; the held one is removed below */
    dsacp_st_writer_free(w);
    cli_output_abort(&held);
    free(len);
    free(ids);
    free(sched);
    if (rc) return cli_fail("make-input", rc);
    printf("wrote %s: %lld requests up to %lld tokens, %lld steps\n", out, (long long)R, (long long)L, (long long)S);
    return fflush(stdout) != 0 ? cli_fail("make-input", dsacp_error(DSACP_EIO, "stdout: write failed")) : 0;
}
