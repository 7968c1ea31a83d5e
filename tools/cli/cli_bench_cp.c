/*
 * cli_bench_cp.c -- `dsacp bench --kernel cp --model DIR` (under mpirun -np W): decode and
 * chunked prefill over a CP group, per phase. Each of --batch requests is given --context cached
 * positions of pseudo-random cache entries (dsacp_engine_fill_random: what a prefill would leave,
 * without running it); then --reps decode steps of every request, then (--chunk P) one step
 * appending P tokens to request 0 (a chunk after sharded context: --context-path decides how it
 * reaches it; --context 0 --chunk P is a plain prefill of P tokens, split by --prefill-split).
 *
 * Per step kind it prints (rank 0) the step time and the layer's parts (slowest rank, median
 * over the steps), the wall time inside each phase's collectives and the bytes received by the
 * busiest rank (per decode token for decode steps), and the overlap achieved by the non-blocking
 * collectives: compute done while one was in flight / (that compute + the wait that followed).
 * With --json one JSON object per step kind (bench/cp_table.sh reads it). Timings are wall time;
 * with more ranks than cores they include waiting for a core.
 */
#include "cli.h"
#include "comm/comm.h"
#include "core/core.h"
#include "engine/engine.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int cmp_d(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

enum { P = DSACP_PHASE_COUNT, NT = 8 }; /* NT: step, attention, mlp, projections, attend, o_proj, ovl, wait */

/* Max over ranks of n doubles (uncounted all-gather). */
static int max_over_ranks(dsacp_comm *c, double *v, int n)
{
    const int W = dsacp_comm_size(c);
    double *all = malloc((size_t)(W * n) * sizeof *all);
    if (!all) return dsacp_error(DSACP_ENOMEM, "out of memory");
    int rc = dsacp_comm_allgather(c, v, (size_t)n * sizeof *v, all, -1);
    for (int q = 0; q < W && !rc; q++)
        for (int i = 0; i < n; i++) v[i] = fmax(v[i], all[q * n + i]);
    free(all);
    return rc;
}

/* Runs `steps` steps (entries built by the caller's callback) and reports them as `kind`. */
typedef struct run_ctx {
    dsacp_engine *e;
    dsacp_comm *world;
    const dsacp_config *cfg;
    const dsacp_cp_options *cp;
    int64_t context, batch, tokens_per_step, W;
    bool json, deployed;
    FILE *out; /* the report, printed once the run (and --comm-report) succeeded */
} run_ctx;

static int report(const run_ctx *r, const char *kind, double *t /* [steps][NT] */, int64_t steps, double *sec,
                  double *recv, double *calls, double per)
{
    /* medians of the slowest rank's times */
    double med[NT];
    double *col = malloc((size_t)steps * sizeof *col);
    if (!col) return dsacp_error(DSACP_ENOMEM, "out of memory");
    for (int k = 0; k < NT; k++) {
        for (int64_t s = 0; s < steps; s++) col[s] = t[s * NT + k];
        qsort(col, (size_t)steps, sizeof *col, cmp_d);
        med[k] = col[steps / 2];
    }
    free(col);
    dsacp_kv_usage u;
    dsacp_engine_kv_usage(r->e, &u);
    double kv[2] = {(double)(u.latent_used_bytes + u.index_used_bytes), (double)u.transient_peak_bytes};
    int rc = max_over_ranks(r->world, kv, 2);
    if (rc) return rc;
    if (dsacp_comm_rank(r->world) != 0) return DSACP_OK;
    const double ovl = med[6] + med[7] > 0 ? med[6] / (med[6] + med[7]) : NAN;
    const dsacp_cp_options *o = r->cp;
    if (r->json) {
        /* One object per line, built with jansson (a non-finite figure is null, never "nan"). */
        json_t *j = json_object(), *recv_j = json_object(), *calls_j = json_object(), *ms_j = json_object();
#define JNUM(v) (isfinite(v) ? json_real(v) : json_null())
        json_object_set_new(j, "kind", json_string(kind));
        json_object_set_new(j, "world", json_integer((json_int_t)r->W));
        json_object_set_new(j, "context", json_integer((json_int_t)r->context));
        json_object_set_new(j, "batch", json_integer((json_int_t)r->batch));
        json_object_set_new(j, "tokens_per_step", json_integer((json_int_t)r->tokens_per_step));
        json_object_set_new(j, "strategy", json_string(dsacp_decode_strategy_name(o->decode)));
        json_object_set_new(j, "kv_layout", json_string(dsacp_cp_layout_name(o->kv_layout)));
        json_object_set_new(j, "index_layout", json_string(dsacp_cp_layout_name(o->index_layout)));
        json_object_set_new(j, "interleave", json_integer((json_int_t)o->interleave));
        json_object_set_new(j, "prefill_split", json_string(dsacp_prefill_split_name(o->prefill_split)));
        json_object_set_new(j, "context_path", json_string(dsacp_context_path_name(o->context_path)));
        json_object_set_new(j, "dcp_comm_backend", json_string(dsacp_merge_backend_name(o->merge_backend)));
        json_object_set_new(j, "numerics", json_string(r->deployed ? "deployed" : "exact"));
        json_object_set_new(j, "layers", json_integer((json_int_t)r->cfg->num_hidden_layers));
        json_object_set_new(j, "step_ms", JNUM(med[0] * 1e3));
        json_object_set_new(j, "attention_ms", JNUM(med[1] * 1e3));
        json_object_set_new(j, "attention_ms_per_token", JNUM(med[1] * 1e3 / per));
        json_object_set_new(j, "projections_ms", JNUM(med[3] * 1e3));
        json_object_set_new(j, "attend_ms", JNUM(med[4] * 1e3));
        json_object_set_new(j, "o_proj_ms", JNUM(med[5] * 1e3));
        json_object_set_new(j, "overlap_compute_ms", JNUM(med[6] * 1e3));
        json_object_set_new(j, "overlap_wait_ms", JNUM(med[7] * 1e3));
        json_object_set_new(j, "overlap", JNUM(isfinite(ovl) ? ovl : 0.0));
        json_object_set_new(j, "kv_bytes_per_rank_max", JNUM(kv[0]));
        json_object_set_new(j, "transient_peak_bytes_max", JNUM(kv[1]));
        for (int p = 0; p < P; p++) {
            if (recv[p] > 0) json_object_set_new(recv_j, dsacp_comm_phase_name(p), JNUM(recv[p] / per));
            if (calls[p] > 0) json_object_set_new(calls_j, dsacp_comm_phase_name(p), JNUM(calls[p]));
            if (calls[p] > 0) json_object_set_new(ms_j, dsacp_comm_phase_name(p), JNUM(sec[p] * 1e3));
        }
#undef JNUM
        json_object_set_new(j, "recv_bytes_max_rank", recv_j);
        json_object_set_new(j, "calls_per_step", calls_j);
        json_object_set_new(j, "comm_ms_per_step", ms_j);
        char *line = json_dumps(j, JSON_PRESERVE_ORDER);
        json_decref(j);
        if (!line) return dsacp_error(DSACP_ENOMEM, "out of memory for the JSON line");
        fprintf(r->out, "%s\n", line);
        free(line);
        return DSACP_OK;
    }
    fprintf(r->out, "%s: W=%lld, %lld request%s x %lld cached positions, %lld token%s per step, %s, %s numerics\n", kind,
           (long long)r->W, (long long)r->batch, r->batch == 1 ? "" : "s", (long long)r->context,
           (long long)r->tokens_per_step, r->tokens_per_step == 1 ? "" : "s", dsacp_decode_strategy_name(o->decode),
           r->deployed ? "deployed" : "exact");
    fprintf(r->out, "  step %.2f ms (attention %.2f: projections %.2f, attend %.2f, o_proj %.2f; mlp %.2f), slowest rank, median\n",
           med[0] * 1e3, med[1] * 1e3, med[3] * 1e3, med[4] * 1e3, med[5] * 1e3, med[2] * 1e3);
    if (isfinite(ovl))
        fprintf(r->out, "  overlap: %.3f ms of compute while collectives were in flight, then %.3f ms waiting: %.0f%% hidden\n",
               med[6] * 1e3, med[7] * 1e3, 100 * ovl);
    fprintf(r->out, "  %-18s %8s %12s %14s\n", "phase", "calls", "ms/step", strcmp(kind, "decode") ? "KB recv/step" : "KB recv/token");
    for (int p = 0; p < P; p++)
        if (calls[p] > 0)
            fprintf(r->out, "  %-18s %8.2f %12.3f %14.2f\n", dsacp_comm_phase_name(p), calls[p], sec[p] * 1e3, recv[p] / per / 1024);
    fprintf(r->out, "  KV bytes per rank (max) %.2f MB, transient peak %.2f MB\n", kv[0] / 1048576, kv[1] / 1048576);
    return DSACP_OK;
}

/* steps steps of `n` entries; per = tokens to divide the bytes by (decode: per token). */
static int run_steps(run_ctx *r, const char *kind, dsacp_step_entry *en, int64_t n, int64_t steps, double per)
{
    double *t = calloc((size_t)(steps * NT), sizeof *t), sec[P] = {0}, recv[P] = {0}, calls[P] = {0};
    if (!t) return dsacp_error(DSACP_ENOMEM, "out of memory");
    dsacp_comm *ec = dsacp_engine_comm(r->e);
    int rc = DSACP_OK;
    for (int64_t s = 0; s < steps && !rc; s++) {
        dsacp_comm_reset_counters(ec);
        rc = dsacp_engine_step(r->e, en, n, NULL, NULL);
        if (rc) break;
        const dsacp_step_times st = dsacp_engine_last_step_times(r->e);
        double *ts = t + s * NT;
        ts[0] = st.step, ts[1] = st.attention, ts[2] = st.mlp, ts[3] = st.projections, ts[4] = st.attend;
        ts[5] = st.o_proj, ts[6] = st.overlap_compute, ts[7] = st.overlap_wait;
        rc = max_over_ranks(r->world, ts, NT);
        double ph[3 * P];
        for (int p = 0; p < P; p++) {
            const dsacp_comm_counter k = dsacp_comm_get_counter(ec, p);
            ph[p] = k.seconds, ph[P + p] = (double)k.bytes_recv, ph[2 * P + p] = (double)k.calls;
        }
        if (!rc) rc = max_over_ranks(r->world, ph, 3 * P);
        for (int p = 0; p < P && !rc; p++) sec[p] += ph[p] / steps, recv[p] += ph[P + p] / steps, calls[p] += ph[2 * P + p] / steps;
    }
    if (!rc) rc = report(r, kind, t, steps, sec, recv, calls, per);
    free(t);
    return rc;
}

int cli_bench_cp(const cli_opt *opts)
{
    const char *dir = cli_get(opts, "model"), *s;
    if (!dir) {
        fprintf(stderr, "dsacp bench: '--kernel cp' needs '--model DIR' (the engine runs the model's layers)\n");
        return 2;
    }
    int64_t L = 32768, B = 1, reps = 3, chunk = 0, bs = 64;
    bool ok = true;
    if (ok && (s = cli_get(opts, "context"))) ok = cli_int("bench", "context", s, 0, 1 << 24, &L);
    if (ok && (s = cli_get(opts, "batch"))) ok = cli_int("bench", "batch", s, 1, 1024, &B);
    if (ok && (s = cli_get(opts, "reps"))) ok = cli_int("bench", "reps", s, 1, 1000, &reps);
    if (ok && (s = cli_get(opts, "chunk"))) ok = cli_int("bench", "chunk", s, 0, 1 << 24, &chunk);
    if (ok && (s = cli_get(opts, "block-size"))) ok = cli_int("bench", "block-size", s, 1, 1 << 20, &bs);
    dsacp_engine_options eo;
    dsacp_engine_options_default(&eo);
    eo.numerics = DSACP_NUMERICS_DEPLOYED;
    eo.kv_dtype = DSACP_KV_FP8;
    if (ok && (s = cli_get(opts, "numerics"))) {
        if (!strcmp(s, "exact")) eo.numerics = DSACP_NUMERICS_EXACT, eo.kv_dtype = DSACP_KV_F32;
        else if (strcmp(s, "deployed")) {
            fprintf(stderr, "dsacp bench: option '--numerics' must be exact or deployed, got '%s'\n", s);
            ok = false;
        }
    }
    if (ok && L == 0 && chunk == 0) {
        fprintf(stderr, "dsacp bench: '--kernel cp' with '--context 0' needs '--chunk P' (a prefill of P tokens)\n");
        ok = false;
    }
    dsacp_cp_options cp;
    if (ok) ok = cli_cp_options("bench", opts, &cp);
    int rc = dsacp_comm_agree(cli_world, ok ? DSACP_OK : DSACP_EINVAL);
    if (rc) return 2;
    dsacp_model *m = NULL;
    dsacp_engine *e = NULL;
    rc = dsacp_comm_agree(cli_world, dsacp_model_load(dir, &m));
    if (rc) {
        cli_fail("bench", rc);
        dsacp_model_free(m);
        return cli_setup_exit(rc); /* a bad model directory: a bad invocation */
    }
    /* The sizes against the model, before any work (the same answer on every rank): a block
     * larger than any request, and request 0's positions (the cached context, one per decode
     * step, the chunk) beyond max_position_embeddings would only fail once running. */
    const dsacp_config *cfg = dsacp_model_config(m);
    eo.block_size = bs;
    ok = cli_block_size_fits("bench", &eo, cfg, dir);
    const int64_t maxpos = cfg->max_position_embeddings, steps = L > 0 ? reps : 0;
    if (ok && L > maxpos) {
        fprintf(stderr, "dsacp bench: option '--context' = %lld exceeds the model's max_position_embeddings %lld (%s)\n",
                (long long)L, (long long)maxpos, dir);
        ok = false;
    } else if (ok && L + steps + chunk > maxpos) {
        char ch[48] = "";
        if (chunk > 0) snprintf(ch, sizeof ch, " + '--chunk %lld'", (long long)chunk);
        fprintf(stderr, "dsacp bench: '--context %lld' + %lld decode steps ('--reps')%s = %lld positions exceed the "
                        "model's max_position_embeddings %lld (%s)\n",
                (long long)L, (long long)steps, ch, (long long)(L + steps + chunk), (long long)maxpos, dir);
        ok = false;
    }
    if (dsacp_comm_agree(cli_world, ok ? DSACP_OK : DSACP_EINVAL)) {
        dsacp_model_free(m);
        return 2;
    }
    cli_output report_out;
    if ((rc = cli_cp_begin("bench", opts, &report_out))) { /* README "Errors" */
        dsacp_model_free(m);
        return cli_output_exit(rc);
    }
    const int W = dsacp_comm_size(cli_world);
    char *text = NULL;
    size_t text_len = 0;
    FILE *out = open_memstream(&text, &text_len);
    if (!out) rc = dsacp_error(DSACP_ENOMEM, "out of memory for the report");
    rc = dsacp_comm_agree(cli_world, rc);
    if (!rc) {
        /* every request's context + the decode steps + the chunk, on the rank that keeps most */
        eo.num_blocks = B * ((L + reps + chunk) / bs + 2) + 4;
        rc = dsacp_engine_create_cp(m, &eo, &cp, cli_world, &e);
    }
    int64_t *id = calloc((size_t)B, sizeof *id);
    int32_t *tok = calloc((size_t)(B + chunk + 1), sizeof *tok);
    dsacp_step_entry *en = calloc((size_t)B, sizeof *en);
    if (!rc && (!id || !tok || !en)) rc = dsacp_error(DSACP_ENOMEM, "out of memory");
    for (int64_t i = 0; i < B && !rc; i++) {
        rc = dsacp_comm_agree(cli_world, dsacp_engine_add_request(e, &id[i]));
        if (!rc && L > 0) rc = dsacp_engine_fill_random(e, id[i], L, 12345 + (uint64_t)i);
    }
    run_ctx r = {e, cli_world, cfg, &cp, L, B, B, W, cli_get(opts, "json") != NULL,
                 eo.numerics == DSACP_NUMERICS_DEPLOYED, out};
    if (!rc && L > 0) {
        for (int64_t i = 0; i < B; i++) {
            tok[i] = (int32_t)((i * 7919) % cfg->vocab_size);
            en[i] = (dsacp_step_entry){id[i], 1, tok + i};
        }
        rc = run_steps(&r, "decode", en, B, reps, (double)B);
    }
    if (!rc && chunk > 0) {
        for (int64_t i = 0; i < chunk; i++) tok[i] = (int32_t)((i * 104729 + 17) % cfg->vocab_size);
        en[0] = (dsacp_step_entry){id[0], chunk, tok};
        r.tokens_per_step = chunk;
        r.batch = 1;
        rc = run_steps(&r, L > 0 ? "chunk" : "prefill", en, 1, 1, 1.0);
    }
    free(id), free(tok), free(en);
    if (out && fclose(out) != 0 && !rc) rc = dsacp_error(DSACP_ENOMEM, "out of memory for the report");
    if (rc) cli_fail("bench", rc);
    int st = cli_cp_finish("bench", opts, rc, e, &report_out);
    if (!st && dsacp_comm_rank(cli_world) == 0 && (st = cli_print_buffer(text, text_len))) cli_fail("bench", st);
    free(text);
    dsacp_engine_free(e);
    dsacp_model_free(m);
    return st ? 1 : 0;
}
