/*
 * cli_run.c -- `dsacp run`: the serving main job (docs/serving.md). A workload (synthetic or a
 * JSONL prompts file) is served by the engine on one rank or on every rank of an mpirun job
 * (src/serve: continuous batching, chunked prefill, preemption), then rank 0 prints a report with
 * vLLM's metric names and, with --json, writes it in the schema of docs/serving.md. --verify
 * replays the workload on rank 0 alone (one process, same model and options) and states, per
 * request, whether every generated token matches. With --kv-role or --pd the world holds a
 * producer and a consumer group (cli_run_pd.c): each group's engine runs over its own
 * communicator, the link joins them, and every setup verdict is agreed over the world.
 */
#include "cli_run.h"
#include "dsacp_io.h"
#include "dsacp_util.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void run_progress(void *arg, const dsacp_serve_progress *p)
{
    progress_state *ps = arg;
    if (!ps->tty && p->elapsed_s - ps->last < 5.0 && p->done < p->total) return;
    if (ps->tty && p->elapsed_s - ps->last < 0.1 && p->done < p->total) return;
    ps->last = p->elapsed_s;
    const double eta = p->done > 0 ? p->elapsed_s * (double)(p->total - p->done) / (double)p->done : NAN;
    char kv[32] = "";
    if (!isnan(p->kv_use)) snprintf(kv, sizeof kv, ", KV %.0f%%", 100 * p->kv_use);
    fprintf(stderr, "%s[run] %lld/%lld requests done, %lld tokens generated, %.1f tokens/s%s, %.1f s elapsed, "
            "ETA %s%.0f s%s", ps->tty ? "\r" : "", (long long)p->done, (long long)p->total, (long long)p->generated,
            p->generated / fmax(p->elapsed_s, 1e-9), kv, p->elapsed_s, isnan(eta) ? "~" : "",
            isnan(eta) ? 0.0 : eta, ps->tty ? "   " : "\n");
    if (ps->tty && p->done == p->total) fputc('\n', stderr);
}

/* What a run holds, from its outputs to its report; run_state_free releases all of it. */
typedef struct run_state {
    dsacp_comm *world; /* every setup agreement goes over it */
    bool root;         /* world rank 0: the workload, the report */
    int W;             /* the engine's group's ranks */
    bool pd;           /* a disaggregated run: */
    dsacp_comm *group; /*   this rank's group (the engine's communicator) */
    dsacp_pd *link;
    run_pd_card *cards;  /* [world] */
    run_pd_rank *pdr;    /* [world], world rank 0 */
    cli_output json_out, report_out;
    cli_tmp_model tm;
    dsacp_model *m;
    const char *model_name;
    workload wl;
    int64_t need; /* blocks the whole workload needs at once (one process holds every position) */
    dsacp_engine *e;
    dsacp_serve_options so;
    progress_state ps;
    dsacp_serve_result res, ver;
    divergence *div;
    int64_t n_div, near_ties;
    bool verify_passed;
    double *allmem; /* [W][6] */
    char *text, *jtext;
    size_t text_len;
} run_state;

/* The flags that conflict with each other, before any value is read. */
static int run_parse_conflicts(const cli_opt *opts, run_args *a)
{
    const char *s;
    int ret = run_client_conflicts(opts, a->url != NULL);
    if (ret != CLI_RUN) return ret;
    if (!a->url && !a->mdir == !a->preset) {
        fprintf(stderr, "dsacp run: give exactly one of '--model DIR' and '--preset NAME'\n");
        return 2;
    }
    if (a->prompts) {
        static const char *const synthetic[] = {"requests", "prompt-len", "arrival-rate", "long-requests", "long-prompt-len"};
        for (size_t k = 0; k < sizeof synthetic / sizeof synthetic[0]; k++)
            if (cli_get(opts, synthetic[k])) {
                fprintf(stderr, "dsacp run: '--prompts FILE' conflicts with '--%s' (a synthetic workload's option: "
                        "--requests, --prompt-len, --arrival-rate, --long-requests, --long-prompt-len)\n", synthetic[k]);
                return 2;
            }
        if ((s = cli_get(opts, "gen-len")) && strchr(s, ':')) {
            fprintf(stderr, "dsacp run: with '--prompts FILE', '--gen-len' is the default max_new_tokens: one integer, "
                    "got '%s'\n", s);
            return 2;
        }
    }
    if (cli_get(opts, "kv-blocks") && cli_get(opts, "kv-memory")) {
        fprintf(stderr, "dsacp run: give at most one of '--kv-blocks' and '--kv-memory'\n");
        return 2;
    }
    return CLI_RUN;
}

/* The workload's and the scheduler's numbers. */
static int run_parse_values(const cli_opt *opts, run_args *a)
{
    const char *s;
    *a = (run_args){.mdir = a->mdir, .preset = a->preset, .prompts = a->prompts, .json_path = a->json_path,
                    .url = a->url, .nreq = 16, .plo = 128, .phi = 512, .glo = 16, .ghi = 32, .llo = 2048, .lhi = 4096,
                    .mbt = 2048, .mns = 256, .kvmem = -1, .topp = 1};
    if ((s = cli_get(opts, "requests")) && !cli_int("run", "requests", s, 0, 1 << 20, &a->nreq)) return 2;
    if ((s = cli_get(opts, "prompt-len")) && !run_parse_range("prompt-len", s, 1, 1 << 24, &a->plo, &a->phi)) return 2;
    if ((s = cli_get(opts, "gen-len")) && !run_parse_range("gen-len", s, 1, 1 << 24, &a->glo, &a->ghi)) return 2;
    if ((s = cli_get(opts, "long-requests")) && !cli_int("run", "long-requests", s, 0, 1 << 16, &a->nlong)) return 2;
    if ((s = cli_get(opts, "long-prompt-len")) && !run_parse_range("long-prompt-len", s, 1, 1 << 24, &a->llo, &a->lhi))
        return 2;
    if ((s = cli_get(opts, "seed")) && !cli_int("run", "seed", s, 0, INT64_MAX, &a->seed)) return 2;
    if ((s = cli_get(opts, "max-batch-tokens")) && !cli_int("run", "max-batch-tokens", s, 1, 1 << 24, &a->mbt)) return 2;
    if ((s = cli_get(opts, "max-num-seqs")) && !cli_int("run", "max-num-seqs", s, 1, 1 << 20, &a->mns)) return 2;
    if ((s = cli_get(opts, "kv-blocks")) && !cli_int("run", "kv-blocks", s, 1, INT32_MAX, &a->kvb)) return 2;
    /* Requests per second (0: all at once); 1e9 keeps the arrival times finite and distinct. */
    if ((s = cli_get(opts, "arrival-rate")) && !cli_double("run", "arrival-rate", s, 0, 1e9, &a->rate)) return 2;
    if (a->rate > 0 && a->rate < 1e-6) { /* below that the gaps (1 / rate) leave every finite clock */
        fprintf(stderr, "dsacp run: option '--arrival-rate' = %s: 0 (all at once) or a rate in [1e-06, 1e+09] "
                "requests per second\n", s);
        return 2;
    }
    if ((s = cli_get(opts, "temperature")) && !cli_double("run", "temperature", s, 0, 1e6, &a->temp)) return 2;
    if ((s = cli_get(opts, "top-p")) && !cli_double("run", "top-p", s, 0, 1, &a->topp)) return 2;
    if (s && !(a->topp > 0)) {
        fprintf(stderr, "dsacp run: option '--top-p' must be in (0, 1], got '%s'\n", s);
        return 2;
    }
    if (s && !(a->temp > 0)) { /* greedy decoding never samples: a top-p would be silently ignored */
        fprintf(stderr, "dsacp run: option '--top-p' applies to sampling only: give '--temperature T' > 0 with it\n");
        return 2;
    }
    if ((s = cli_get(opts, "kv-memory")) && (a->kvmem = cli_parse_size(s)) < 0) {
        fprintf(stderr, "dsacp run: option '--kv-memory' must be a size of at least one byte like 512M, 2G or "
                "1048576, got '%s'\n", s);
        return 2;
    }
    if (!a->prompts && a->nreq + a->nlong == 0) {
        fprintf(stderr, "dsacp run: zero requests (--requests 0 and no --long-requests)\n");
        return 2;
    }
    return CLI_RUN;
}

/* The engine's and the CP group's options, the preset, and outputs that would replace inputs. */
static int run_parse_engine(const cli_opt *opts, run_args *a)
{
    if (!cli_engine_options("run", opts, &a->eo)) return 2;
    const char *sj = cli_get(opts, "speculative-config");
    if (sj && dsacp_spec_config_parse(sj, "--speculative-config", &a->spec)) {
        fprintf(stderr, "dsacp run: %s\n", dsacp_last_error());
        return 2;
    }
    /* The MTP layer's caches only when it drafts. Disaggregated, both groups have them: the
     * producer computes the prompt's MTP entries (it never speculates), the consumer drafts. */
    a->eo.mtp = a->spec.method == DSACP_SPEC_MTP;
    a->verify = cli_get(opts, "verify") != NULL;
    /* Deployed numerics' --verify judges a divergence by the reference's top-2 gap, which only
     * decides a greedy token: a sampled token can differ wherever the logits differ at all. */
    if (a->verify && a->temp > 0 && a->eo.numerics == DSACP_NUMERICS_DEPLOYED) {
        fprintf(stderr, "dsacp run: '--verify' with '--temperature' > 0 needs '--numerics exact' (in deployed numerics "
                "only greedy tokens can be checked, by their top-2 gap)\n");
        return 2;
    }
    /* A group's plan is checked against the group's size, once the world is split. */
    if (a->pd.role == DSACP_KV_BOTH && !cli_cp_options("run", opts, &a->cpo)) return 2;
    if (a->preset && dsacp_preset_config(a->preset, &a->pc)) return cli_fail_invocation("run", DSACP_ENOTFOUND);
    const char *cr = cli_get(opts, "comm-report"), *json_path = a->json_path;
    if (json_path && (cli_same_file(json_path, cr) || cli_same_file(json_path, a->prompts))) {
        fprintf(stderr, "dsacp run: '--json %s' names the same file as '--%s'\n", json_path,
                cli_same_file(json_path, cr) ? "comm-report" : "prompts");
        return 2;
    }
    if (cr && cli_same_file(cr, a->prompts)) {
        fprintf(stderr, "dsacp run: '--comm-report %s' names the same file as '--prompts'\n", cr);
        return 2;
    }
    return CLI_RUN;
}

/* The model: a directory, or a preset made by rank 0 in a temporary directory; then the block
 * size against it. */
static int run_load_model(const run_args *a, run_state *st)
{
    int rc = DSACP_OK;
    const char *mdir = a->mdir;
    if (a->preset) {
        if (st->root) rc = cli_tmp_model_create(&st->tm, "run", &a->pc, (uint64_t)a->seed);
        if (st->world) rc = dsacp_comm_agree(st->world, rc);
        if (!rc && st->world) rc = dsacp_comm_bcast(st->world, st->tm.dir, sizeof st->tm.dir, DSACP_PHASE_input);
        if (rc) return cli_fail("run", rc); /* the machine failed (disk, TMPDIR), not the invocation */
        mdir = st->tm.dir;
    }
    rc = dsacp_model_load(mdir, &st->m);
    if (st->world) rc = dsacp_comm_agree(st->world, rc);
    if (st->root) cli_tmp_model_remove(&st->tm, "run"); /* every rank has it mapped (or failed) */
    if (rc) return a->preset ? cli_fail("run", rc) : cli_fail_invocation("run", rc);
    st->model_name = a->preset ? a->preset : a->mdir;
    run_capture cap; /* each group checks its own block size: the verdict is the world's */
    run_capture_begin(&cap, st->pd && !st->root);
    const int ret = cli_block_size_fits("run", &a->eo, dsacp_model_config(st->m), st->model_name) ? CLI_RUN : 2;
    return st->pd ? run_capture_verdict(&cap, st->world, ret) : ret;
}

/* A pool given by flags that cannot hold even the shortest synthetic request, spread over the
 * ranks as evenly as any layout could, is refused before any prompt is generated. */
static int run_check_pool(const run_args *a, int W, int64_t per_block)
{
    if (a->prompts || !(a->kvb || a->kvmem > 0)) return CLI_RUN;
    const int64_t blocks = a->kvb ? a->kvb : a->kvmem / per_block, bs = a->eo.block_size;
    int64_t smallest = INT64_MAX;
    if (a->nreq > 0) smallest = a->plo + a->glo - 1;
    if (a->nlong > 0 && a->llo + a->glo - 1 < smallest) smallest = a->llo + a->glo - 1;
    const int64_t per_rank = (smallest + W - 1) / W, need1 = (per_rank + bs - 1) / bs;
    if (blocks >= 1 && need1 > blocks) {
        fprintf(stderr, "dsacp run: option '--%s': %lld block%s of %lld tokens per rank cannot hold the shortest "
                "request of the workload (%lld cached tokens, at least %lld per rank over %d rank%s)\n",
                a->kvb ? "kv-blocks" : "kv-memory", (long long)blocks, blocks == 1 ? "" : "s", (long long)bs,
                (long long)smallest, (long long)per_rank, W, W == 1 ? "" : "s");
        return 2;
    }
    return CLI_RUN;
}

/* Blocks of `bs` tokens holding the whole workload at once, plus a few spare (256 tokens' worth, at
 * least one block). */
static int64_t workload_blocks(const workload *wl, int64_t bs)
{
    int64_t need = (256 + bs - 1) / bs;
    for (int64_t i = 0; i < wl->n; i++) need += (wl->rq[i].prompt_len + wl->rq[i].max_new_tokens + bs - 1) / bs;
    return need;
}

/* The block size of the group of `role` (the ranks of a group share their flags). */
static int64_t group_block_size(const run_state *st, int role)
{
    const int size = dsacp_comm_size(st->world);
    for (int q = 0; q < size; q++)
        if (st->cards[q].role == role) return st->cards[q].block_size;
    return 1;
}

/* The workload, checked against the model before anything is generated or allocated, and the
 * pool: --kv-blocks, --kv-memory (this rank's latent + indexer bytes), or enough for the whole
 * workload at once: each request's blocks plus a few spare (256 tokens' worth, at least one
 * block). Sets eo->num_blocks. */
static int run_make_workload(const cli_opt *opts, const run_args *a, run_state *st, dsacp_engine_options *eo)
{
    const dsacp_config *cfg = dsacp_model_config(st->m);
    /* Every cached layer: the MTP layer's too when the engine has it (--speculative-config mtp). */
    const int64_t per_block = eo->block_size * (cfg->num_hidden_layers + (eo->mtp ? 1 : 0)) *
                              (dsacp_mla_cache_bytes_per_token(cfg, eo->kv_dtype) +
                               dsacp_index_cache_bytes_per_token(cfg, eo->numerics == DSACP_NUMERICS_DEPLOYED ? DSACP_KV_FP8 : DSACP_KV_F32));
    run_capture cap; /* each group checks its own pool: the verdict is the world's */
    run_capture_begin(&cap, st->pd && !st->root);
    int ret = run_check_pool(a, st->W, per_block);
    if (st->pd) ret = run_capture_verdict(&cap, st->world, ret);
    if (ret != CLI_RUN) return ret;
    int rc = DSACP_OK;
    if (st->root) {
        if (a->prompts) rc = run_load_prompts(&st->wl, a->prompts, a->glo, cfg, false);
        else {
            int64_t V = cfg->vocab_size;
            rc = run_check_synthetic(a->nreq, a->phi, a->ghi, a->nlong, a->lhi, cfg, st->model_name);
            if (!rc) rc = run_prompt_vocab(NULL, a->mdir, cfg->vocab_size, &V);
            if (!rc)
                rc = run_make_synthetic(&st->wl, a->nreq, a->plo, a->phi, a->glo, a->ghi, a->rate, a->nlong, a->llo, a->lhi,
                                        V, (uint64_t)a->seed);
        }
    }
    if (st->world) rc = dsacp_comm_agree(st->world, rc);
    if (!rc && !st->pd) {
        if (st->root) st->need = workload_blocks(&st->wl, eo->block_size);
        if (st->world) rc = dsacp_comm_bcast(st->world, &st->need, sizeof st->need, DSACP_PHASE_input);
    } else if (!rc) { /* world rank 0 sizes both groups' pools, each by its block size */
        int64_t need[3] = {0};
        for (int r = 1; st->root && r < 3; r++) need[r] = workload_blocks(&st->wl, group_block_size(st, r));
        rc = dsacp_comm_bcast(st->world, need, sizeof need, -1);
        st->need = need[a->pd.role];
    }
    if (!rc) {
        eo->num_blocks = a->kvb ? a->kvb : a->kvmem > 0 ? a->kvmem / per_block : st->need;
        if (eo->num_blocks < 1) rc = dsacp_error(DSACP_EINVAL, "--kv-memory %s holds no cache block of %lld bytes",
                                                 cli_get(opts, "kv-memory"), (long long)per_block);
    }
    if (rc) {
        cli_fail("run", rc);
        return cli_setup_exit(rc);
    }
    return CLI_RUN;
}

/* The engine and the serving options, and what the serving loop would refuse before its first
 * step (a request that fits no rank's pool alone, given --kv-blocks or --kv-memory): the
 * invocation's fault too. */
static int run_prepare(const cli_opt *opts, const run_args *a, run_state *st, const dsacp_engine_options *eo)
{
    dsacp_comm *comm = st->pd ? st->group : st->world;
    int rc = comm ? dsacp_engine_create_cp(st->m, eo, &a->cpo, comm, &st->e) : dsacp_engine_create(st->m, eo, &st->e);
    if (st->pd) rc = dsacp_comm_agree(st->world, rc); /* the other group must not wait for this one */
    /* The link checks the groups against each other (model, numerics, cache dtype). */
    if (!rc && st->pd) rc = dsacp_pd_create(st->world, st->e, a->pd.role, a->pd.timeout_s, &st->link);
    if (rc) {
        cli_fail("run", rc);
        return rc == DSACP_EINVAL || rc == DSACP_EUNSUPPORTED ? 2 : 1; /* options the engine refuses, or memory */
    }
    dsacp_serve_options_default(&st->so);
    st->so.pd = st->link;
    st->so.max_batch_tokens = a->mbt;
    st->so.max_num_seqs = a->mns;
    st->so.temperature = a->temp;
    st->so.top_p = a->topp;
    st->so.seed = (uint64_t)a->seed;
    st->so.spec = a->spec;
    st->so.realtime = !cli_get(opts, "no-realtime");
    st->ps = (progress_state){isatty(2) != 0, -1e9};
    /* The progress line is the decode side's: a disaggregated run's consumer leader prints it (the
     * producer's leader only knows the first tokens). */
    const bool shows = st->pd ? a->pd.role == DSACP_KV_CONSUMER && dsacp_comm_rank(st->group) == 0 : st->root;
    if (shows) st->so.progress = run_progress, st->so.progress_arg = &st->ps;
    if (st->root) rc = dsacp_serve_check(st->e, st->wl.rq, st->wl.n, &st->so);
    if (st->root && rc == DSACP_ECAPACITY) { /* the library names the pool; the CLI names the flags that size it */
        char msg[512];
        snprintf(msg, sizeof msg, "%s", dsacp_last_error());
        dsacp_error(rc, "%s: give more --kv-blocks / --kv-memory", msg);
    }
    if (st->world) rc = dsacp_comm_agree(st->world, rc);
    if (rc) {
        cli_fail("run", rc);
        return cli_setup_exit(rc);
    }
    return CLI_RUN;
}

/* The other group is unreachable (DSACP_ECOMM: the link's timeout passed): no agreement can cross
 * the world, and MPI_Finalize would wait as long as the link is down (docs/netns.md, "The fault
 * test"). World rank 0 prints the line; every rank removes its outputs and exits 1 without
 * finalising; mpirun ends the job. */
static void run_pd_unreachable(run_state *st)
{
    if (st->root) fprintf(stderr, "dsacp run: %s\n", dsacp_last_error());
    cli_output_abort(&st->json_out);
    cli_output_abort(&st->report_out);
    fflush(stdout);
    fflush(stderr);
    _exit(1);
}

/* The run, then --verify's replay of the same workload on one process (rank 0). Agreed status. */
static int run_serve(const run_args *a, run_state *st, const dsacp_engine_options *eo)
{
    int rc = dsacp_serve_run(st->e, st->wl.rq, st->wl.n, &st->so, &st->res);
    if (st->pd && rc == DSACP_ECOMM) run_pd_unreachable(st);
    if (!rc && st->root && a->verify) {
        dsacp_engine *e1 = NULL;
        dsacp_serve_options s1 = st->so;
        s1.realtime = false;
        s1.progress = NULL;
        s1.pd = NULL; /* one process, no link */
        /* Greedy: the replay runs without speculation, so --verify also checks that speculation
         * changed no token. Sampling keeps it (rejection sampling draws other numbers). */
        if (s1.temperature <= 0) s1.spec.method = DSACP_SPEC_NONE;
        dsacp_engine_options e1o = *eo;
        e1o.num_blocks = st->need; /* one process holds every position: room for the whole workload */
        rc = dsacp_engine_create(st->m, &e1o, &e1);
        if (!rc) rc = dsacp_serve_run(e1, st->wl.rq, st->wl.n, &s1, &st->ver);
        dsacp_engine_free(e1);
        if (!rc)
            rc = run_compare(&st->res, &st->ver, st->wl.n, eo->numerics == DSACP_NUMERICS_DEPLOYED, &st->div, &st->n_div);
    }
    if (st->world) rc = dsacp_comm_agree(st->world, rc);
    return rc;
}

/* This rank's memory: weights (checkpoint tensors), KV pool and its peak use (at `peak`, the
 * busiest rank's fraction), transients, weight buffers. */
static void rank_memory(const run_state *st, double peak, double mem[6])
{
    for (int64_t i = 0; i < dsacp_model_weight_count(st->m); i++) {
        dsacp_tensor_info w;
        if (!dsacp_model_tensor_info(st->m, i, &w)) mem[0] += (double)(w.rows * w.cols) * (double)dsacp_dtype_size(w.dtype);
    }
    dsacp_kv_usage ku;
    dsacp_engine_kv_usage(st->e, &ku);
    mem[1] = (double)(ku.latent_pool_bytes + ku.index_pool_bytes);
    mem[2] = peak * mem[1];
    mem[3] = (double)ku.transient_peak_bytes;
    dsacp_weight_usage wu;
    dsacp_engine_weight_usage(st->e, &wu);
    mem[4] = (double)(wu.ring_bytes + wu.gather_bytes);
}

/* Memory per rank, gathered to every rank. Agreed status. */
static int run_memory(run_state *st)
{
    double mem[6] = {0};
    int rc = DSACP_OK;
    if (st->world) rc = dsacp_comm_bcast(st->world, &st->res.kv_peak_use, sizeof st->res.kv_peak_use, DSACP_PHASE_input);
    if (rc) return rc;
    rank_memory(st, st->res.kv_peak_use, mem);
    st->allmem = malloc((size_t)(6 * st->W) * sizeof *st->allmem);
    if (!st->allmem) rc = dsacp_error(DSACP_ENOMEM, "out of memory");
    else if (st->world) rc = dsacp_comm_allgather(st->world, mem, sizeof mem, st->allmem, -1);
    else memcpy(st->allmem, mem, sizeof mem);
    if (st->world) rc = dsacp_comm_agree(st->world, rc);
    return rc;
}

/* A disaggregated run's part of every world rank (uncounted): its group, memory, the link's
 * transfer counter beside the formula's, pool and plan. Agreed status. */
static int run_pd_memory(const run_args *a, run_state *st, const dsacp_engine_options *eo)
{
    const int size = dsacp_comm_size(st->world), ph = run_pd_transfer_phase();
    double peak[2] = {st->res.pd_kv_peak_use[0], st->res.pd_kv_peak_use[1]};
    int rc = dsacp_comm_bcast(st->world, peak, sizeof peak, -1);
    run_pd_rank me = {.role = (int32_t)a->pd.role, .group_rank = dsacp_comm_rank(st->group),
                      .kv_blocks = eo->num_blocks, .block_size = eo->block_size};
    rank_memory(st, peak[a->pd.role == DSACP_KV_PRODUCER ? 0 : 1], me.mem);
    if (ph >= 0) me.measured = dsacp_comm_get_counter(dsacp_pd_link(st->link), ph);
    me.predicted = dsacp_pd_predicted(st->link);
    run_pd_plan_words(&a->cpo, st->W, me.plan, sizeof me.plan);
    st->pdr = calloc((size_t)size, sizeof *st->pdr);
    if (!rc && !st->pdr) rc = dsacp_error(DSACP_ENOMEM, "out of memory");
    if (!rc) rc = dsacp_comm_allgather(st->world, &me, sizeof me, st->pdr, -1);
    return dsacp_comm_agree_phase(st->world, rc, -1);
}

/* Rank 0: the report's text (kept for stdout) and --json, committed. */
static int run_report(const run_args *a, run_state *st, const dsacp_engine_options *eo)
{
    const report_ctx c = {.wl = &st->wl, .res = &st->res, .eo = eo, .cpo = &a->cpo, .model = st->model_name,
                          .W = st->W, .mbt = a->mbt, .allmem = st->allmem, .world = st->pd ? st->group : st->world,
                          .verify = a->verify, .div = st->div, .n_div = st->n_div, .near_ties = st->near_ties,
                          .passed = st->verify_passed, .deployed = eo->numerics == DSACP_NUMERICS_DEPLOYED,
                          .pd = st->pdr, .world_W = dsacp_comm_size(st->world)};
    const int rc = run_report_build(&c, &st->json_out, a->json_path != NULL, &st->text, &st->text_len, &st->jtext);
    if (rc) cli_fail("run", rc);
    return rc;
}

/* The results of a served run (rc: its agreed status): memory, --verify's verdict (agreed, so
 * every rank exits alike), the report; then the counters' report (collective) and stdout once
 * every file is in place. Returns the exit status. */
static int run_results(const cli_opt *opts, const run_args *a, run_state *st, const dsacp_engine_options *eo, int rc)
{
    if (!rc) rc = st->pd ? run_pd_memory(a, st, eo) : run_memory(st);
    if (rc) {
        cli_fail("run", rc);
    } else {
        for (int64_t k = 0; k < st->n_div; k++) st->near_ties += st->div[k].near_tie;
        st->verify_passed = st->n_div == st->near_ties;
        /* An uncounted agreement: the report's counters stay the run's. */
        if (st->world && a->verify)
            st->verify_passed =
                dsacp_comm_agree_phase(st->world, st->root && !st->verify_passed ? 1 : DSACP_OK, -1) == DSACP_OK;
        if (st->root) rc = run_report(a, st, eo);
    }
    rc = st->pd ? run_pd_finish(rc, st->world, st->group, a->pd.role, st->e, st->link, st->cards[0].comm_report,
                                &st->report_out)
                : cli_cp_finish("run", opts, rc, st->e, &st->report_out);
    if (!rc && st->root) {
        rc = cli_print_buffer(st->text, st->text_len);
        if (rc) cli_fail("run", rc);
    }
    return rc ? 1 : a->verify && !st->verify_passed ? 3 : 0;
}

static void run_state_free(run_state *st)
{
    cli_output_abort(&st->json_out);
    cli_output_abort(&st->report_out);
    if (st->root) cli_tmp_model_remove(&st->tm, "run");
    free(st->text);
    free(st->jtext);
    free(st->div);
    free(st->allmem);
    dsacp_serve_result_free(&st->res);
    dsacp_serve_result_free(&st->ver);
    run_workload_free(&st->wl);
    free(st->cards);
    free(st->pdr);
    dsacp_pd_free(st->link); /* before the engine and the group it joins */
    dsacp_engine_free(st->e);
    dsacp_comm_free(st->group);
    dsacp_model_free(st->m);
}

/* The flags of this rank, then the roles: a disaggregated run splits the world into its groups and
 * checks each group's plan against the group's size. Every verdict is the world's (a rank of the
 * other group, with flags of its own, may be the one that failed). */
static int run_parse(int argc, char **argv, cli_opt *opts, run_args *a, run_state *st)
{
    const int size = st->world ? dsacp_comm_size(st->world) : 1, rank = st->world ? dsacp_comm_rank(st->world) : 0;
    run_capture cap;
    run_capture_begin(&cap, rank != 0);
    int ret = cli_parse(argc, argv, opts);
    if (ret == CLI_RUN) {
        *a = (run_args){.mdir = cli_get(opts, "model"), .preset = cli_get(opts, "preset"),
                        .prompts = cli_get(opts, "prompts"), .json_path = cli_get(opts, "json"), .url = cli_get(opts, "url")};
        if ((ret = run_parse_conflicts(opts, a)) == CLI_RUN && (ret = run_parse_values(opts, a)) == CLI_RUN) {
            if (a->url) ret = run_client_check(opts, a, size);
            else if ((ret = run_pd_parse(opts, rank, size, &a->pd)) == CLI_RUN) ret = run_parse_engine(opts, a);
        }
    }
    if (!st->world) return ret;
    if ((ret = run_capture_verdict(&cap, st->world, ret)) != CLI_RUN || a->url) return ret;
    run_pd_card mine;
    run_pd_card_of(opts, argc, argv, &a->pd, a->eo.block_size, &mine);
    st->cards = calloc((size_t)size, sizeof *st->cards);
    int rc = st->cards ? dsacp_comm_allgather(st->world, &mine, sizeof mine, st->cards, -1)
                       : dsacp_error(DSACP_ENOMEM, "out of memory");
    if ((rc = dsacp_comm_agree_phase(st->world, rc, -1))) return cli_fail("run", rc);
    if ((ret = run_pd_check_cards(st->cards, size, &st->pd)) != CLI_RUN || !st->pd) return ret;
    if ((rc = dsacp_pd_split(st->world, a->pd.role, &st->group))) {
        cli_fail("run", rc);
        return cli_setup_exit(rc);
    }
    st->W = dsacp_comm_size(st->group);
    run_capture_begin(&cap, rank != 0);
    return run_capture_verdict(&cap, st->world, run_pd_cp_options(opts, &a->pd, st->W, &a->cpo) ? CLI_RUN : 2);
}

int cli_run(int argc, char **argv)
{
    cli_opt opts[] = {{"model", true, NULL},         {"preset", true, NULL},         {"requests", true, NULL},
                      {"prompt-len", true, NULL},    {"gen-len", true, NULL},        {"arrival-rate", true, NULL},
                      {"long-requests", true, NULL}, {"long-prompt-len", true, NULL}, {"prompts", true, NULL},
                      {"max-batch-tokens", true, NULL}, {"max-num-seqs", true, NULL}, {"kv-blocks", true, NULL},
                      {"kv-memory", true, NULL},     {"verify", false, NULL},        {"json", true, NULL},
                      {"seed", true, NULL},          {"temperature", true, NULL},    {"top-p", true, NULL},
                      {"no-realtime", false, NULL},  {"numerics", true, NULL},       {"kv-dtype", true, NULL},
                      {"block-size", true, NULL},    {"speculative-config", true, NULL}, RUN_PD_OPTS,
                      RUN_CLIENT_OPTS,               CLI_CP_OPTS,                    {NULL, false, NULL}};
    run_args a = {0};
    run_state st = {.world = cli_world, .tm = {.dir = "", .cleanup = -1}, .verify_passed = true};
    st.root = !st.world || dsacp_comm_rank(st.world) == 0;
    st.W = st.world ? dsacp_comm_size(st.world) : 1;
    cli_output_init(&st.json_out);
    cli_output_init(&st.report_out);
    int ret = run_parse(argc, argv, opts, &a, &st);
    if (ret == CLI_RUN && a.url) { /* the benchmark client: no model, no engine */
        run_state_free(&st);
        return run_client(opts, &a);
    }
    /* The outputs first: a report that cannot be written is known before any work. */
    int rc = ret == CLI_RUN ? cli_output_open("run", "json", a.json_path, &st.json_out) : DSACP_OK;
    if (ret == CLI_RUN && !rc) rc = cli_cp_begin("run", opts, &st.report_out);
    if (rc) ret = cli_output_exit(rc); /* 1: cannot be created (README "Errors"); 2: it names an input */
    dsacp_engine_options eo = a.eo; /* its num_blocks is sized by the workload */
    if (ret == CLI_RUN && (ret = run_load_model(&a, &st)) == CLI_RUN &&
        (ret = run_make_workload(opts, &a, &st, &eo)) == CLI_RUN && (ret = run_prepare(opts, &a, &st, &eo)) == CLI_RUN)
        ret = run_results(opts, &a, &st, &eo, run_serve(&a, &st, &eo));
    run_state_free(&st);
    return ret;
}
