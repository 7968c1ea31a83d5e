/*
 * cli_forward.c -- `dsacp forward`: runs a schedule of engine steps from a safetensors file.
 *
 * IN:  input_ids I32 [R, Lmax] (-1 after a request's end), schedule I32 [S, R] (tokens of
 *      request r fed in step s; a request's counts sum to its length).
 * OUT: logits F32 [R, Lmax, vocab] (zeros where no token); with --dump-topk, topk.<layer>
 *      I32 [R, Lmax, index_topk] (selected positions ascending, -1 padded).
 * The whole input is validated before any compute; the output is written atomically.
 */
#include "cli.h"
#include "io/safetensors.h"
#include "model/model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Reads an I32 matrix tensor; prints the error naming file and tensor. */
static const int32_t *get_i32_2d(const dsacp_st_file *f, const char *path, const char *name, int64_t *rows,
                                 int64_t *cols)
{
    const dsacp_st_tensor *t = dsacp_st_find(f, name);
    if (!t) {
        fprintf(stderr, "dsacp forward: %s: missing tensor '%s'\n", path, name);
        return NULL;
    }
    if (t->dtype != DSACP_I32 || t->ndim != 2) {
        fprintf(stderr, "dsacp forward: %s: tensor '%s' must be I32 with 2 dimensions (got %s, %d dims)\n", path,
                name, dsacp_dtype_name(t->dtype), t->ndim);
        return NULL;
    }
    if ((uintptr_t)t->data % 4) {
        fprintf(stderr, "dsacp forward: %s: tensor '%s' is not 4-byte aligned\n", path, name);
        return NULL;
    }
    *rows = t->shape[0];
    *cols = t->shape[1];
    return t->data;
}

int cli_forward(int argc, char **argv)
{
    cli_opt opts[] = {{"model", true, NULL},    {"input", true, NULL},      {"output", true, NULL},
                      {"numerics", true, NULL}, {"kv-dtype", true, NULL},   {"block-size", true, NULL},
                      {"dump-topk", false, NULL}, {NULL, false, NULL}};
    if (!cli_parse(argc, argv, opts)) return 2;
    const char *mdir = cli_get(opts, "model"), *in = cli_get(opts, "input"), *outp = cli_get(opts, "output");
    if (!mdir || !in || !outp) {
        fprintf(stderr, "dsacp forward: missing required option '--%s'\n", !mdir ? "model" : !in ? "input" : "output");
        return 2;
    }
    dsacp_engine_options eo;
    if (!cli_engine_options("forward", opts, &eo)) return 2;
    const bool dump = cli_get(opts, "dump-topk") != NULL;

    dsacp_model *m = NULL;
    int rc = dsacp_model_load(mdir, &m);
    if (rc) return cli_fail("forward", rc);
    const dsacp_config *cfg = dsacp_model_config(m);
    dsacp_st_file *f = NULL;
    int ret = 1;
    dsacp_engine *e = NULL;
    int64_t *len = NULL, *fed = NULL, *ids = NULL;
    float *logits = NULL, *step_logits = NULL;
    int32_t *topk = NULL, *step_topk = NULL, *step_ids = NULL;
    dsacp_step_entry *entries = NULL;
    rc = dsacp_st_open(in, &f);
    if (rc) {
        cli_fail("forward", rc);
        goto done;
    }
    int64_t R, Lmax, S, R2;
    const int32_t *input_ids = get_i32_2d(f, in, "input_ids", &R, &Lmax);
    const int32_t *sched = input_ids ? get_i32_2d(f, in, "schedule", &S, &R2) : NULL;
    if (!input_ids || !sched) goto done;
    if (R2 != R || R < 1 || Lmax < 1) {
        fprintf(stderr, "dsacp forward: %s: tensor 'schedule' is [%lld, %lld] but input_ids has %lld requests\n",
                in, (long long)S, (long long)R2, (long long)R);
        goto done;
    }
    /* Validate: request lengths, ids in vocabulary, schedule counts. */
    len = calloc((size_t)R, sizeof *len);
    fed = calloc((size_t)R, sizeof *fed);
    ids = calloc((size_t)R, sizeof *ids);
    if (!len || !fed || !ids) goto oom;
    for (int64_t r = 0; r < R; r++) {
        int64_t j = 0;
        while (j < Lmax && input_ids[r * Lmax + j] != -1) {
            int32_t id = input_ids[r * Lmax + j];
            if (id < 0 || id >= cfg->vocab_size) {
                fprintf(stderr, "dsacp forward: %s: tensor 'input_ids'[%lld][%lld] = %d is out of the vocabulary "
                        "[0, %lld)\n", in, (long long)r, (long long)j, id, (long long)cfg->vocab_size);
                goto done;
            }
            j++;
        }
        len[r] = j;
        for (; j < Lmax; j++)
            if (input_ids[r * Lmax + j] != -1) {
                fprintf(stderr, "dsacp forward: %s: tensor 'input_ids'[%lld][%lld] follows the request's end (-1) "
                        "but is not -1\n", in, (long long)r, (long long)j);
                goto done;
            }
    }
    for (int64_t st = 0; st < S; st++)
        for (int64_t r = 0; r < R; r++) {
            int32_t c = sched[st * R + r];
            if (c < 0) {
                fprintf(stderr, "dsacp forward: %s: tensor 'schedule'[%lld][%lld] = %d is negative\n", in,
                        (long long)st, (long long)r, c);
                goto done;
            }
            fed[r] += c;
            if (fed[r] > len[r]) {
                fprintf(stderr, "dsacp forward: %s: tensor 'schedule' overruns request %lld at step %lld (%lld tokens "
                        "fed, the request has %lld)\n", in, (long long)r, (long long)st, (long long)fed[r],
                        (long long)len[r]);
                goto done;
            }
        }
    for (int64_t r = 0; r < R; r++)
        if (fed[r] != len[r]) {
            fprintf(stderr, "dsacp forward: %s: tensor 'schedule' feeds request %lld %lld tokens, but it has %lld\n",
                    in, (long long)r, (long long)fed[r], (long long)len[r]);
            goto done;
        }
    /* Exactly the blocks the requests need. */
    eo.num_blocks = 0;
    for (int64_t r = 0; r < R; r++) eo.num_blocks += (len[r] + eo.block_size - 1) / eo.block_size;
    if (eo.num_blocks < 1) eo.num_blocks = 1;
    rc = dsacp_engine_create(m, &eo, &e);
    if (rc) {
        cli_fail("forward", rc);
        goto done;
    }
    const int64_t V = cfg->vocab_size, K = cfg->index_topk, NL = cfg->num_hidden_layers;
    logits = calloc((size_t)(R * Lmax * V), sizeof *logits);
    if (dump) {
        topk = malloc((size_t)(NL * R * Lmax * K) * sizeof *topk);
        if (!topk) goto oom;
        for (int64_t i = 0; i < NL * R * Lmax * K; i++) topk[i] = -1;
    }
    entries = calloc((size_t)R, sizeof *entries);
    step_ids = malloc((size_t)(R * Lmax) * sizeof *step_ids);
    if (!logits || !entries || !step_ids) goto oom;
    for (int64_t r = 0; r < R && !rc; r++) {
        rc = dsacp_engine_add_request(e, &ids[r]);
        fed[r] = 0;
    }
    for (int64_t st = 0; st < S && !rc; st++) {
        int64_t n = 0, T = 0;
        for (int64_t r = 0; r < R; r++) {
            int32_t c = sched[st * R + r];
            if (!c) continue;
            memcpy(step_ids + T, input_ids + r * Lmax + fed[r], (size_t)c * sizeof *step_ids);
            entries[n++] = (dsacp_step_entry){ids[r], c, step_ids + T};
            T += c;
        }
        if (!T) continue;
        free(step_logits);
        free(step_topk);
        step_logits = malloc((size_t)(T * V) * sizeof *step_logits);
        step_topk = dump ? malloc((size_t)(NL * T * K) * sizeof *step_topk) : NULL;
        if (!step_logits || (dump && !step_topk)) goto oom;
        rc = dsacp_engine_step(e, entries, n, step_logits, step_topk);
        if (rc) {
            cli_fail("forward", rc);
            goto done;
        }
        int64_t t = 0;
        for (int64_t r = 0; r < R; r++) {
            int32_t c = sched[st * R + r];
            for (int32_t j = 0; j < c; j++, t++) {
                int64_t p = fed[r] + j;
                memcpy(logits + (r * Lmax + p) * V, step_logits + t * V, (size_t)V * sizeof *logits);
                if (dump)
                    for (int64_t l = 0; l < NL; l++)
                        memcpy(topk + ((l * R + r) * Lmax + p) * K, step_topk + (l * T + t) * K, (size_t)K * 4);
            }
            fed[r] += c;
        }
    }
    if (rc) {
        cli_fail("forward", rc);
        goto done;
    }
    dsacp_st_writer *w;
    rc = dsacp_st_writer_create(&w);
    int64_t lshape[3] = {R, Lmax, V}, tshape[3] = {R, Lmax, K};
    if (!rc) rc = dsacp_st_writer_add(w, "logits", DSACP_F32, 3, lshape, logits);
    for (int64_t l = 0; dump && l < NL && !rc; l++) {
        char nm[32];
        snprintf(nm, sizeof nm, "topk.%lld", (long long)l);
        rc = dsacp_st_writer_add(w, nm, DSACP_I32, 3, tshape, topk + l * R * Lmax * K);
    }
    if (!rc) rc = dsacp_st_writer_write(w, outp);
    dsacp_st_writer_free(w);
    if (rc) {
        cli_fail("forward", rc);
        goto done;
    }
    int64_t total = 0;
    for (int64_t r = 0; r < R; r++) total += len[r];
    printf("forward: %lld requests, %lld tokens, %lld steps -> %s\n", (long long)R, (long long)total, (long long)S,
           outp);
    ret = 0;
    goto done;
oom:
    fprintf(stderr, "dsacp forward: out of memory\n");
done:
    free(len);
    free(fed);
    free(ids);
    free(logits);
    free(step_logits);
    free(topk);
    free(step_topk);
    free(step_ids);
    free(entries);
    dsacp_engine_free(e);
    dsacp_st_close(f);
    dsacp_model_free(m);
    return ret;
}
