/*
 * cli_forward.c -- `dsacp forward`: runs a schedule of engine steps from a safetensors file.
 *
 * IN:  input_ids I32 [R, Lmax] (-1 after a request's end), schedule I32 [S, R] (tokens of
 *      request r fed in step s; a request's counts sum to its length).
 * OUT: logits F32 [R, Lmax, vocab] (zeros where no token); with --dump-topk, topk.<layer>
 *      I32 [R, Lmax, index_topk] (selected positions ascending, -1 padded).
 * The whole input is validated before any compute (src/io/forward_input.c: ids, schedule,
 * positions against max_position_embeddings, every buffer size overflow-checked); logits that
 * are not finite fail the run; the output is written atomically and only after success.
 */
#include "cli.h"
#include "dsacp_io.h"
#include "dsacp_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The input file, checked against the model: read directly on one process; under mpirun rank 0
 * reads its bytes and sends them to every rank, each parses them (the same verdict everywhere).
 * The status is not agreed. */
static int forward_read_input(const char *in, const dsacp_config *cfg, dsacp_comm *world, dsacp_forward_input *fi)
{
    int rc = DSACP_OK;
    if (!world || dsacp_comm_size(world) == 1) {
        dsacp_st_file *f = NULL;
        rc = dsacp_st_open(in, &f);
        if (!rc) rc = dsacp_forward_input_from_file(f, cfg, fi);
        dsacp_st_close(f);
        return rc;
    }
    const bool root = dsacp_comm_rank(world) == 0;
    char *data = NULL;
    size_t len = 0;
    if (root) rc = dsacp_read_file(in, &data, &len, (size_t)1 << 30);
    rc = dsacp_comm_agree(world, rc);
    uint64_t n = len;
    if (!rc) rc = dsacp_comm_bcast(world, &n, sizeof n, DSACP_PHASE_input);
    if (!rc && !root && !(data = dsacp_alloc((size_t)n + 1))) rc = DSACP_ENOMEM;
    rc = dsacp_comm_agree(world, rc);
    if (!rc) rc = dsacp_comm_bcast(world, data, (size_t)n, DSACP_PHASE_input);
    if (!rc) rc = dsacp_forward_input_parse(data, (size_t)n, in, cfg, fi);
    dsacp_free(data);
    return rc;
}

/* The run's buffers (sizes from dsacp_forward_input_sizes; logits and topk on rank 0 only). */
typedef struct forward_bufs {
    int64_t *fed, *ids;          /* [R]: tokens fed so far, request ids */
    dsacp_step_entry *entries;   /* [R] */
    int32_t *step_ids;           /* [Tmax] */
    float *logits, *step_logits; /* [R][Lmax][V], [Tmax][V] */
    int32_t *topk, *step_topk;   /* [NL][R][Lmax][K], [NL][Tmax][K] (--dump-topk) */
} forward_bufs;

/* Every step of the schedule; rank 0 copies each token's logits (and selected sets) into place.
 * The engine refuses a step whose logits are not finite (DSACP_ERANGE), so every row copied is
 * an answer. */
static int forward_steps(dsacp_engine *e, const dsacp_forward_input *fi, const dsacp_config *cfg, bool root, bool dump,
                         const forward_bufs *b)
{
    const int64_t R = fi->requests, Lmax = fi->max_len, S = fi->steps;
    const int64_t V = cfg->vocab_size, K = cfg->index_topk, NL = cfg->num_hidden_layers;
    const int32_t *input_ids = fi->input_ids, *sched = fi->schedule;
    int rc = DSACP_OK;
    for (int64_t st = 0; st < S && !rc; st++) {
        int64_t n = 0, T = 0;
        for (int64_t r = 0; r < R; r++) {
            int32_t c = sched[st * R + r];
            if (!c) continue;
            memcpy(b->step_ids + T, input_ids + r * Lmax + b->fed[r], (size_t)c * sizeof *b->step_ids);
            b->entries[n++] = (dsacp_step_entry){b->ids[r], c, b->step_ids + T};
            T += c;
        }
        if (!T) continue;
        rc = dsacp_engine_step(e, b->entries, n, root ? b->step_logits : NULL, dump && root ? b->step_topk : NULL);
        if (rc) break;
        int64_t t = 0;
        for (int64_t r = 0; r < R; r++) {
            int32_t c = sched[st * R + r];
            for (int32_t j = 0; root && j < c; j++, t++) {
                int64_t p = b->fed[r] + j;
                memcpy(b->logits + (r * Lmax + p) * V, b->step_logits + t * V, (size_t)V * sizeof *b->logits);
                if (dump)
                    for (int64_t l = 0; l < NL; l++)
                        memcpy(b->topk + ((l * R + r) * Lmax + p) * K, b->step_topk + (l * T + t) * K,
                               (size_t)K * sizeof *b->topk);
            }
            b->fed[r] += c;
        }
    }
    return rc;
}

/* Rank 0: the output file (logits, and topk.<layer> with --dump-topk). The writer stages its own
 * temporary; the one opened up front is removed once this one is in place. */
static int forward_write(const char *outp, const dsacp_forward_input *fi, const dsacp_config *cfg, bool dump,
                         const float *logits, const int32_t *topk)
{
    const int64_t R = fi->requests, Lmax = fi->max_len, V = cfg->vocab_size, K = cfg->index_topk;
    dsacp_st_writer *w = NULL;
    int rc = dsacp_st_writer_create(&w);
    int64_t lshape[3] = {R, Lmax, V}, tshape[3] = {R, Lmax, K};
    if (!rc) rc = dsacp_st_writer_add(w, "logits", DSACP_F32, 3, lshape, logits);
    for (int64_t l = 0; dump && l < cfg->num_hidden_layers && !rc; l++) {
        char nm[32];
        snprintf(nm, sizeof nm, "topk.%lld", (long long)l);
        rc = dsacp_st_writer_add(w, nm, DSACP_I32, 3, tshape, topk + l * R * Lmax * K);
    }
    dsacp_out staged;
    if (!rc) rc = dsacp_st_writer_stage(w, outp, &staged);
    if (!rc) rc = dsacp_out_commit(&staged);
    dsacp_st_writer_free(w);
    return rc;
}

int cli_forward(int argc, char **argv)
{
    cli_opt opts[] = {{"model", true, NULL},    {"input", true, NULL},      {"output", true, NULL},
                      {"numerics", true, NULL}, {"kv-dtype", true, NULL},   {"block-size", true, NULL},
                      {"dump-topk", false, NULL}, CLI_CP_OPTS, {NULL, false, NULL}};
    int parsed = cli_parse(argc, argv, opts);
    if (parsed != CLI_RUN) return parsed;
    const char *mdir = cli_require(opts, "forward", "model");
    const char *in = mdir ? cli_require(opts, "forward", "input") : NULL;
    const char *outp = in ? cli_require(opts, "forward", "output") : NULL;
    if (!outp) return 2;
    dsacp_engine_options eo;
    if (!cli_engine_options("forward", opts, &eo)) return 2;
    dsacp_cp_options cpo;
    if (!cli_cp_options("forward", opts, &cpo)) return 2;
    const bool dump = cli_get(opts, "dump-topk") != NULL;
    const char *cr = cli_get(opts, "comm-report");
    /* An output over the input would replace it: compared by name and by device and inode. */
    if (cli_same_file(outp, in) || cli_same_file(cr, in) || cli_same_file(cr, outp)) {
        fprintf(stderr, "dsacp forward: '--%s %s' names the same file as '--%s'\n", cli_same_file(outp, in) ? "output" : "comm-report",
                cli_same_file(outp, in) ? outp : cr, cli_same_file(outp, in) || cli_same_file(cr, in) ? "input" : "output");
        return 2;
    }
    dsacp_comm *world = cli_world;
    const bool root = !world || dsacp_comm_rank(world) == 0;

    /* The outputs before any work: one that cannot be created is known at once. */
    cli_output out_file, report_out;
    cli_output_init(&out_file);
    cli_output_init(&report_out);
    int orc = cli_output_open("forward", "output", outp, &out_file);
    if (orc) return cli_output_exit(orc); /* 1: cannot be created; 2: it names an input */
    if ((orc = cli_cp_begin("forward", opts, &report_out))) {
        cli_output_abort(&out_file);
        return cli_output_exit(orc);
    }
    /* Every rank loads the model; rank 0 alone reads the input and sends its bytes. */
    dsacp_model *m = NULL;
    int rc = cli_load_model("forward", mdir, &eo, &m);
    if (rc != CLI_RUN) {
        cli_output_abort(&out_file);
        cli_output_abort(&report_out);
        return rc;
    }
    const dsacp_config *cfg = dsacp_model_config(m);
    int ret = 1;
    dsacp_engine *e = NULL;
    dsacp_forward_input fi = {0};
    dsacp_forward_sizes sz = {0};
    int64_t *fed = NULL, *ids = NULL;
    float *logits = NULL, *step_logits = NULL;
    int32_t *topk = NULL, *step_topk = NULL, *step_ids = NULL;
    dsacp_step_entry *entries = NULL;
    /* The whole input is checked (ids, schedule, positions, every buffer size) before any
     * allocation of the run's size and any compute. */
    rc = forward_read_input(in, cfg, world, &fi);
    if (!rc) rc = dsacp_forward_input_sizes(&fi, cfg, dump, in, &sz);
    if (world) rc = dsacp_comm_agree(world, rc);
    if (rc) {
        cli_fail("forward", rc);
        ret = cli_setup_exit(rc); /* the input file is the user's invocation */
        goto done;
    }
    const int64_t R = fi.requests, S = fi.steps;
    /* Exactly the blocks the requests need (each length <= max_position_embeddings). */
    eo.num_blocks = 0;
    for (int64_t r = 0; r < R; r++) eo.num_blocks += (fi.length[r] + eo.block_size - 1) / eo.block_size;
    if (eo.num_blocks < 1) eo.num_blocks = 1;
    rc = world ? dsacp_engine_create_cp(m, &eo, &cpo, world, &e) : dsacp_engine_create(m, &eo, &e);
    if (rc) {
        cli_fail("forward", rc);
        ret = rc == DSACP_EINVAL || rc == DSACP_EUNSUPPORTED ? 2 : 1; /* options the engine refuses, as in run */
        goto done;
    }
    /* Sizes from dsacp_forward_input_sizes: overflow-checked and bounded. */
    fed = calloc((size_t)R, sizeof *fed);
    ids = calloc((size_t)R, sizeof *ids);
    entries = calloc((size_t)R, sizeof *entries);
    /* Only rank 0 receives logits and selected sets. */
    logits = calloc(root ? sz.logits : 1, sizeof *logits);
    step_logits = malloc((root && sz.step_logits ? sz.step_logits : 1) * sizeof *step_logits);
    step_ids = malloc((sz.step_ids ? sz.step_ids : 1) * sizeof *step_ids);
    rc = (!fed || !ids || !entries || !logits || !step_logits || !step_ids) ? DSACP_ENOMEM : DSACP_OK;
    if (world) rc = dsacp_comm_agree(world, rc);
    if (rc) goto oom;
    if (dump && root) {
        topk = malloc(sz.topk * sizeof *topk);
        step_topk = malloc((sz.step_topk ? sz.step_topk : 1) * sizeof *step_topk);
        rc = (!topk || !step_topk) ? DSACP_ENOMEM : DSACP_OK;
    }
    if (world) rc = dsacp_comm_agree(world, rc);
    if (rc) goto oom;
    for (size_t i = 0; topk && i < sz.topk; i++) topk[i] = -1;
    for (int64_t r = 0; r < R && !rc; r++) rc = dsacp_engine_add_request(e, &ids[r]);
    if (!rc)
        rc = forward_steps(e, &fi, cfg, root, dump,
                           &(forward_bufs){.fed = fed, .ids = ids, .entries = entries, .step_ids = step_ids,
                                           .logits = logits, .step_logits = step_logits, .topk = topk,
                                           .step_topk = step_topk});
    if (rc) {
        cli_fail("forward", rc);
        goto done;
    }
    if (root) rc = forward_write(outp, &fi, cfg, dump, logits, topk);
    if (world) rc = dsacp_comm_agree(world, rc);
    if (rc) {
        cli_fail("forward", rc);
        goto done;
    }
    rc = cli_cp_finish("forward", opts, DSACP_OK, e, &report_out);
    if (rc) goto done;
    printf("forward: %lld requests, %lld tokens, %lld steps -> %s\n", (long long)R, (long long)fi.total_tokens,
           (long long)S, outp);
    if (fflush(stdout) != 0) {
        cli_fail("forward", dsacp_error(DSACP_EIO, "stdout: write failed"));
        goto done;
    }
    ret = 0;
    goto done;
oom:
    fprintf(stderr, "dsacp forward: out of memory for the run's buffers (logits: %zu floats)\n", sz.logits);
done:
    cli_output_abort(&out_file);
    cli_output_abort(&report_out);
    free(fed);
    free(ids);
    free(logits);
    free(step_logits);
    free(topk);
    free(step_topk);
    free(step_ids);
    free(entries);
    dsacp_forward_input_free(&fi);
    dsacp_engine_free(e);
    dsacp_model_free(m);
    return ret;
}
