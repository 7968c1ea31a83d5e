/*
 * cli_bench_cp.c -- `dsacp bench --kernel cp --model DIR` (under mpirun -np W): decode and
 * chunked prefill over a CP group, per phase. Each of --batch requests is given --context cached
 * positions of pseudo-random cache entries (dsacp_bench_cp_fill: what a prefill would leave,
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
#include "dsacp_bench.h"
#include "dsacp_util.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* What the report says about the run besides its figures. */
typedef struct run_ctx {
    const dsacp_config *cfg;
    const dsacp_cp_options *cp;
    int64_t context, batch, tokens_per_step, W;
    bool json, deployed;
    FILE *out; /* the report, printed once the run (and --comm-report) succeeded */
} run_ctx;

/* The share of the collectives' time hidden behind compute (NaN when none was in flight). */
static double overlap(const dsacp_bench_cp_figures *f)
{
    const double t = f->overlap_compute + f->overlap_wait;
    return t > 0 ? f->overlap_compute / t : NAN;
}

/* One object per line, built with jansson (a non-finite figure is null, never "nan"). */
static int report_json(const run_ctx *r, const char *kind, const dsacp_bench_cp_figures *f, double per)
{
    const dsacp_cp_options *o = r->cp;
    const double ovl = overlap(f);
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
    json_object_set_new(j, "step_ms", JNUM(f->step * 1e3));
    json_object_set_new(j, "attention_ms", JNUM(f->attention * 1e3));
    json_object_set_new(j, "attention_ms_per_token", JNUM(f->attention * 1e3 / per));
    json_object_set_new(j, "projections_ms", JNUM(f->projections * 1e3));
    json_object_set_new(j, "attend_ms", JNUM(f->attend * 1e3));
    json_object_set_new(j, "o_proj_ms", JNUM(f->o_proj * 1e3));
    json_object_set_new(j, "overlap_compute_ms", JNUM(f->overlap_compute * 1e3));
    json_object_set_new(j, "overlap_wait_ms", JNUM(f->overlap_wait * 1e3));
    json_object_set_new(j, "overlap", JNUM(isfinite(ovl) ? ovl : 0.0));
    json_object_set_new(j, "kv_bytes_per_rank_max", JNUM(f->kv_bytes_max));
    json_object_set_new(j, "transient_peak_bytes_max", JNUM(f->transient_peak_bytes_max));
    for (int p = 0; p < DSACP_PHASE_COUNT; p++) {
        const char *name = dsacp_comm_phase_name(p);
        if (f->phase_recv_bytes[p] > 0) json_object_set_new(recv_j, name, JNUM(f->phase_recv_bytes[p] / per));
        if (f->phase_calls[p] > 0) json_object_set_new(calls_j, name, JNUM(f->phase_calls[p]));
        if (f->phase_calls[p] > 0) json_object_set_new(ms_j, name, JNUM(f->phase_seconds[p] * 1e3));
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

static void report_text(const run_ctx *r, const char *kind, const dsacp_bench_cp_figures *f, double per)
{
    const double ovl = overlap(f);
    fprintf(r->out, "%s: W=%lld, %lld request%s x %lld cached positions, %lld token%s per step, %s, %s numerics\n", kind,
            (long long)r->W, (long long)r->batch, r->batch == 1 ? "" : "s", (long long)r->context,
            (long long)r->tokens_per_step, r->tokens_per_step == 1 ? "" : "s", dsacp_decode_strategy_name(r->cp->decode),
            r->deployed ? "deployed" : "exact");
    fprintf(r->out, "  step %.2f ms (attention %.2f: projections %.2f, attend %.2f, o_proj %.2f; mlp %.2f), slowest rank, median\n",
            f->step * 1e3, f->attention * 1e3, f->projections * 1e3, f->attend * 1e3, f->o_proj * 1e3, f->mlp * 1e3);
    if (isfinite(ovl))
        fprintf(r->out, "  overlap: %.3f ms of compute while collectives were in flight, then %.3f ms waiting: %.0f%% hidden\n",
                f->overlap_compute * 1e3, f->overlap_wait * 1e3, 100 * ovl);
    fprintf(r->out, "  %-18s %8s %12s %14s\n", "phase", "calls", "ms/step", strcmp(kind, "decode") ? "KB recv/step" : "KB recv/token");
    for (int p = 0; p < DSACP_PHASE_COUNT; p++)
        if (f->phase_calls[p] > 0)
            fprintf(r->out, "  %-18s %8.2f %12.3f %14.2f\n", dsacp_comm_phase_name(p), f->phase_calls[p],
                    f->phase_seconds[p] * 1e3, f->phase_recv_bytes[p] / per / 1024);
    fprintf(r->out, "  KV bytes per rank (max) %.2f MB, transient peak %.2f MB\n", f->kv_bytes_max / 1048576,
            f->transient_peak_bytes_max / 1048576);
}

/* `steps` steps of the `n` entries, reported (rank 0) as `kind`; per: tokens to divide the bytes
 * by (decode: per token). */
static int run_steps(dsacp_engine *e, const run_ctx *r, const char *kind, const dsacp_step_entry *en, int64_t n,
                     int64_t steps, double per)
{
    dsacp_bench_cp_figures f;
    int rc = dsacp_bench_cp_steps(e, en, n, steps, &f);
    if (rc || dsacp_comm_rank(cli_world) != 0) return rc;
    if (r->json) return report_json(r, kind, &f, per);
    report_text(r, kind, &f, per);
    return DSACP_OK;
}

/* The sizes of the run. */
typedef struct cp_sizes {
    int64_t context, batch, reps, chunk, block_size;
} cp_sizes;

/* --context, --batch, --reps, --chunk, --block-size and --numerics; false (printed) when one is
 * wrong. */
static bool cp_flags(const cli_opt *opts, cp_sizes *z, dsacp_engine_options *eo)
{
    const char *s;
    *z = (cp_sizes){.context = 32768, .batch = 1, .reps = 3, .chunk = 0, .block_size = 64};
    bool ok = true;
    if (ok && (s = cli_get(opts, "context"))) ok = cli_int("bench", "context", s, 0, 1 << 24, &z->context);
    if (ok && (s = cli_get(opts, "batch"))) ok = cli_int("bench", "batch", s, 1, 1024, &z->batch);
    if (ok && (s = cli_get(opts, "reps"))) ok = cli_int("bench", "reps", s, 1, 1000, &z->reps);
    if (ok && (s = cli_get(opts, "chunk"))) ok = cli_int("bench", "chunk", s, 0, 1 << 24, &z->chunk);
    if (ok && (s = cli_get(opts, "block-size"))) ok = cli_int("bench", "block-size", s, 1, 1 << 20, &z->block_size);
    dsacp_engine_options_default(eo);
    eo->numerics = DSACP_NUMERICS_DEPLOYED;
    eo->kv_dtype = DSACP_KV_FP8;
    if (ok && (s = cli_get(opts, "numerics"))) {
        if (!strcmp(s, "exact")) eo->numerics = DSACP_NUMERICS_EXACT, eo->kv_dtype = DSACP_KV_F32;
        else if (strcmp(s, "deployed")) {
            fprintf(stderr, "dsacp bench: option '--numerics' must be exact or deployed, got '%s'\n", s);
            ok = false;
        }
    }
    if (ok && z->context == 0 && z->chunk == 0) {
        fprintf(stderr, "dsacp bench: '--kernel cp' with '--context 0' needs '--chunk P' (a prefill of P tokens)\n");
        ok = false;
    }
    eo->block_size = z->block_size;
    return ok;
}

/* The sizes against the model, before any work (the same answer on every rank): a block larger
 * than any request, and request 0's positions (the cached context, one per decode step, the
 * chunk) beyond max_position_embeddings would only fail once running. False (printed). */
static bool cp_sizes_fit(const cp_sizes *z, const dsacp_engine_options *eo, const dsacp_config *cfg, const char *dir)
{
    if (!cli_block_size_fits("bench", eo, cfg, dir)) return false;
    const int64_t L = z->context, maxpos = cfg->max_position_embeddings, steps = L > 0 ? z->reps : 0;
    if (L > maxpos) {
        fprintf(stderr, "dsacp bench: option '--context' = %lld exceeds the model's max_position_embeddings %lld (%s)\n",
                (long long)L, (long long)maxpos, dir);
        return false;
    }
    if (L + steps + z->chunk > maxpos) {
        char ch[48] = "";
        if (z->chunk > 0) snprintf(ch, sizeof ch, " + '--chunk %lld'", (long long)z->chunk);
        fprintf(stderr, "dsacp bench: '--context %lld' + %lld decode steps ('--reps')%s = %lld positions exceed the "
                        "model's max_position_embeddings %lld (%s)\n",
                (long long)L, (long long)steps, ch, (long long)(L + steps + z->chunk), (long long)maxpos, dir);
        return false;
    }
    return true;
}

/* The engine's requests, their cached context, the decode steps and the chunk, reported into
 * r->out. Collective. */
static int cp_run(const cp_sizes *z, dsacp_engine *e, run_ctx *r)
{
    const int64_t B = z->batch, L = z->context, chunk = z->chunk;
    const dsacp_config *cfg = r->cfg;
    int64_t *id = dsacp_calloc((size_t)B, sizeof *id);
    int32_t *tok = dsacp_calloc((size_t)(B + chunk + 1), sizeof *tok);
    dsacp_step_entry *en = dsacp_calloc((size_t)B, sizeof *en);
    int rc = id && tok && en ? DSACP_OK : dsacp_error(DSACP_ENOMEM, "out of memory");
    for (int64_t i = 0; i < B && !rc; i++) {
        rc = dsacp_comm_agree(cli_world, dsacp_engine_add_request(e, &id[i]));
        if (!rc && L > 0) rc = dsacp_bench_cp_fill(e, id[i], L, 12345 + (uint64_t)i);
    }
    if (!rc && L > 0) {
        for (int64_t i = 0; i < B; i++) {
            tok[i] = (int32_t)((i * 7919) % cfg->vocab_size);
            en[i] = (dsacp_step_entry){id[i], 1, tok + i};
        }
        rc = run_steps(e, r, "decode", en, B, z->reps, (double)B);
    }
    if (!rc && chunk > 0) {
        for (int64_t i = 0; i < chunk; i++) tok[i] = (int32_t)((i * 104729 + 17) % cfg->vocab_size);
        en[0] = (dsacp_step_entry){id[0], chunk, tok};
        r->tokens_per_step = chunk;
        r->batch = 1;
        rc = run_steps(e, r, L > 0 ? "chunk" : "prefill", en, 1, 1, 1.0);
    }
    dsacp_free(id), dsacp_free(tok), dsacp_free(en);
    return rc;
}

int cli_bench_cp(const cli_opt *opts)
{
    const char *dir = cli_get(opts, "model");
    if (!dir) {
        fprintf(stderr, "dsacp bench: '--kernel cp' needs '--model DIR' (the engine runs the model's layers)\n");
        return 2;
    }
    cp_sizes z;
    dsacp_engine_options eo;
    dsacp_cp_options cp;
    bool ok = cp_flags(opts, &z, &eo);
    if (ok) ok = cli_cp_options("bench", opts, &cp);
    if (dsacp_comm_agree(cli_world, ok ? DSACP_OK : DSACP_EINVAL)) return 2;
    dsacp_model *m = NULL;
    dsacp_engine *e = NULL;
    int rc = dsacp_comm_agree(cli_world, dsacp_model_load(dir, &m));
    if (rc) {
        cli_fail("bench", rc);
        dsacp_model_free(m);
        return cli_setup_exit(rc); /* a bad model directory: a bad invocation */
    }
    const dsacp_config *cfg = dsacp_model_config(m);
    if (dsacp_comm_agree(cli_world, cp_sizes_fit(&z, &eo, cfg, dir) ? DSACP_OK : DSACP_EINVAL)) {
        dsacp_model_free(m);
        return 2;
    }
    cli_output report_out;
    if ((rc = cli_cp_begin("bench", opts, &report_out))) { /* README "Errors" */
        dsacp_model_free(m);
        return cli_output_exit(rc);
    }
    char *text = NULL;
    size_t text_len = 0;
    FILE *out = open_memstream(&text, &text_len);
    if (!out) rc = dsacp_error(DSACP_ENOMEM, "out of memory for the report");
    rc = dsacp_comm_agree(cli_world, rc);
    if (!rc) {
        /* every request's context + the decode steps + the chunk, on the rank that keeps most */
        eo.num_blocks = z.batch * ((z.context + z.reps + z.chunk) / z.block_size + 2) + 4;
        rc = dsacp_engine_create_cp(m, &eo, &cp, cli_world, &e);
    }
    run_ctx r = {cfg, &cp, z.context, z.batch, z.batch, dsacp_comm_size(cli_world), cli_get(opts, "json") != NULL,
                 eo.numerics == DSACP_NUMERICS_DEPLOYED, out};
    if (!rc) rc = cp_run(&z, e, &r);
    if (out && fclose(out) != 0 && !rc) rc = dsacp_error(DSACP_ENOMEM, "out of memory for the report");
    if (rc) cli_fail("bench", rc);
    int st = cli_cp_finish("bench", opts, rc, e, &report_out);
    if (!st && dsacp_comm_rank(cli_world) == 0 && (st = cli_print_buffer(text, text_len))) cli_fail("bench", st);
    free(text);
    dsacp_engine_free(e);
    dsacp_model_free(m);
    return st ? 1 : 0;
}
