/*
 * cli_run.c -- `dsacp run`: the serving main job (docs/serving.md). A workload (synthetic or a
 * JSONL prompts file) is served by the engine on one rank or on every rank of an mpirun job
 * (src/serve: continuous batching, chunked prefill, preemption), then rank 0 prints a report with
 * vLLM's metric names and, with --json, writes it in the schema of docs/serving.md. --verify
 * replays the workload on rank 0 alone (one process, same model and options) and states, per
 * request, whether every generated token matches.
 */
#include "cli.h"
#include "comm/comm.h"
#include "core/core.h"
#include "engine/engine.h"
#include "model/model.h"
#include "serve/serve.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct workload {
    dsacp_serve_request *rq; /* each request owns its prompt and stop ids */
    int64_t n;
} workload;

static void workload_free(workload *w)
{
    for (int64_t i = 0; w->rq && i < w->n; i++) {
        free(w->rq[i].prompt);
        free((void *)w->rq[i].stop_ids);
    }
    free(w->rq);
    memset(w, 0, sizeof *w);
}

/* "MIN:MAX" (or one number) into [lo, hi] within [min, max]. */
static bool parse_range(const char *flag, const char *s, int64_t min, int64_t max, int64_t *lo, int64_t *hi)
{
    char a[64];
    const char *colon = strchr(s, ':');
    if (!colon) return cli_int("run", flag, s, min, max, lo) && (*hi = *lo, true);
    size_t k = (size_t)(colon - s);
    if (k >= sizeof a) k = sizeof a - 1;
    memcpy(a, s, k);
    a[k] = 0;
    if (!cli_int("run", flag, a, min, max, lo) || !cli_int("run", flag, colon + 1, min, max, hi)) return false;
    if (*hi < *lo) {
        fprintf(stderr, "dsacp run: option '--%s' = %s: MIN > MAX\n", flag, s);
        return false;
    }
    return true;
}

/* Synthetic: n requests, prompt and output lengths uniform in their ranges, Poisson arrivals
 * (rate per second; 0: all at once), plus `nlong` long prompts arriving first. */
static int make_synthetic(workload *w, int64_t n, int64_t plo, int64_t phi, int64_t glo, int64_t ghi, double rate,
                          int64_t nlong, int64_t llo, int64_t lhi, int64_t V, uint64_t seed)
{
    w->n = n + nlong;
    w->rq = calloc((size_t)w->n, sizeof *w->rq);
    if (!w->rq) return dsacp_error(DSACP_ENOMEM, "out of memory");
    dsacp_rng rng, arr;
    dsacp_rng_seed(&rng, seed);
    dsacp_rng_seed(&arr, seed ^ 0xA5A5A5A5A5A5A5A5ull); /* arrivals: their own stream, so prompts do not depend on the rate */
    double t = 0;
    for (int64_t i = 0; i < w->n; i++) {
        dsacp_serve_request *r = &w->rq[i];
        const bool lng = i < nlong;
        const int64_t lo = lng ? llo : plo, hi = lng ? lhi : phi;
        r->prompt_len = lo + (int64_t)(dsacp_rng_u64(&rng) % (uint64_t)(hi - lo + 1));
        r->max_new_tokens = glo + (int64_t)(dsacp_rng_u64(&rng) % (uint64_t)(ghi - glo + 1));
        r->prompt = malloc((size_t)r->prompt_len * sizeof *r->prompt);
        if (!r->prompt) return dsacp_error(DSACP_ENOMEM, "out of memory");
        for (int64_t j = 0; j < r->prompt_len; j++) r->prompt[j] = (int32_t)(dsacp_rng_u64(&rng) % (uint64_t)V);
        if (rate > 0 && !lng) t += -log(1.0 - dsacp_rng_uniform(&arr)) / rate;
        r->arrival_s = t;
    }
    return DSACP_OK;
}

/* JSONL: one object per line: prompt_ids (array of ints), optional max_new_tokens (default
 * `gen`), stop_ids (array of ints), arrival_s (>= 0). Errors name the file and line. */
static int load_prompts(workload *w, const char *path, int64_t gen)
{
    char *text = NULL;
    size_t len = 0;
    int rc = dsacp_read_file(path, &text, &len, (size_t)1 << 30);
    if (rc) return rc;
    int64_t lines = 0, cap = 0;
    for (size_t i = 0; i < len; i++) lines += text[i] == '\n';
    cap = lines + 1;
    w->rq = calloc((size_t)cap, sizeof *w->rq);
    if (!w->rq) rc = dsacp_error(DSACP_ENOMEM, "out of memory");
    char *line = text;
    for (int64_t ln = 1; !rc && line && *line; ln++) {
        char *end = strchr(line, '\n');
        if (end) *end = 0;
        const char *p = line;
        while (*p == ' ' || *p == '\t' || *p == '\r') p++;
        if (*p) {
            json_error_t err;
            json_t *o = json_loads(line, 0, &err);
            json_t *ids = o ? json_object_get(o, "prompt_ids") : NULL;
            if (!o || !json_is_object(o)) rc = dsacp_error(DSACP_EFORMAT, "%s: line %lld: not a JSON object%s%s", path,
                                                          (long long)ln, o ? "" : ": ", o ? "" : err.text);
            else if (!json_is_array(ids) || json_array_size(ids) == 0)
                rc = dsacp_error(DSACP_EFORMAT, "%s: line %lld: 'prompt_ids' must be a non-empty array of integers", path,
                                 (long long)ln);
            dsacp_serve_request *r = &w->rq[w->n];
            if (!rc) {
                r->prompt_len = (int64_t)json_array_size(ids);
                r->prompt = malloc((size_t)r->prompt_len * sizeof *r->prompt);
                if (!r->prompt) rc = dsacp_error(DSACP_ENOMEM, "out of memory");
                for (int64_t j = 0; j < r->prompt_len && !rc; j++) {
                    json_t *v = json_array_get(ids, (size_t)j);
                    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT32_MAX)
                        rc = dsacp_error(DSACP_EFORMAT, "%s: line %lld: prompt_ids[%lld] is not a token id", path,
                                         (long long)ln, (long long)j);
                    else r->prompt[j] = (int32_t)json_integer_value(v);
                }
                w->n++;
            }
            json_t *m = o ? json_object_get(o, "max_new_tokens") : NULL, *a = o ? json_object_get(o, "arrival_s") : NULL;
            json_t *st = o ? json_object_get(o, "stop_ids") : NULL;
            r->max_new_tokens = gen;
            if (!rc && m) {
                if (!json_is_integer(m) || json_integer_value(m) < 1 || json_integer_value(m) > (1 << 24))
                    rc = dsacp_error(DSACP_EFORMAT, "%s: line %lld: 'max_new_tokens' must be an integer in [1, 2^24]", path,
                                     (long long)ln);
                else r->max_new_tokens = json_integer_value(m);
            }
            if (!rc && a) {
                if (!json_is_number(a) || json_number_value(a) < 0 || !isfinite(json_number_value(a)))
                    rc = dsacp_error(DSACP_EFORMAT, "%s: line %lld: 'arrival_s' must be a number >= 0", path, (long long)ln);
                else r->arrival_s = json_number_value(a);
            }
            if (!rc && st) {
                if (!json_is_array(st)) rc = dsacp_error(DSACP_EFORMAT, "%s: line %lld: 'stop_ids' must be an array", path, (long long)ln);
                for (size_t j = 0; !rc && j < json_array_size(st); j++)
                    if (!json_is_integer(json_array_get(st, j)))
                        rc = dsacp_error(DSACP_EFORMAT, "%s: line %lld: stop_ids[%zu] is not an integer", path, (long long)ln, j);
                int32_t *stops = rc ? NULL : malloc((json_array_size(st) + 1) * sizeof *stops);
                if (!rc && !stops) rc = dsacp_error(DSACP_ENOMEM, "out of memory");
                for (size_t j = 0; stops && j < json_array_size(st); j++) stops[j] = (int32_t)json_integer_value(json_array_get(st, j));
                if (stops) r->stop_ids = stops, r->n_stop = (int64_t)json_array_size(st);
            }
            json_decref(o);
        }
        line = end ? end + 1 : NULL;
    }
    if (!rc && w->n == 0) rc = dsacp_error(DSACP_EINVAL, "%s: no requests (every line empty)", path);
    dsacp_free(text);
    return rc;
}

/* ---- the report ---- */

typedef struct stats {
    double mean, median, std, p90, p99;
    int64_t n;
} stats;

static int cmp_d(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static stats stats_of(double *v, int64_t n)
{
    stats s = {0};
    s.n = n;
    if (n == 0) return s;
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    double sum = 0, sq = 0;
    for (int64_t i = 0; i < n; i++) sum += v[i];
    s.mean = sum / n;
    for (int64_t i = 0; i < n; i++) sq += (v[i] - s.mean) * (v[i] - s.mean);
    s.std = sqrt(sq / n);
    s.median = n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
    s.p90 = v[(int64_t)ceil(0.90 * n) - 1];
    s.p99 = v[(int64_t)ceil(0.99 * n) - 1];
    return s;
}

typedef struct progress_state {
    bool tty;
    double last;
} progress_state;

static void progress(void *arg, const dsacp_serve_progress *p)
{
    progress_state *ps = arg;
    if (!ps->tty && p->elapsed_s - ps->last < 5.0 && p->done < p->total) return;
    if (ps->tty && p->elapsed_s - ps->last < 0.1 && p->done < p->total) return;
    ps->last = p->elapsed_s;
    const double eta = p->done > 0 ? p->elapsed_s * (double)(p->total - p->done) / (double)p->done : NAN;
    fprintf(stderr, "%s[run] %lld/%lld requests done, %lld tokens generated, %.1f tokens/s, KV %.0f%%, %.1f s elapsed, "
            "ETA %s%.0f s%s", ps->tty ? "\r" : "", (long long)p->done, (long long)p->total, (long long)p->generated,
            p->generated / fmax(p->elapsed_s, 1e-9), 100 * p->kv_use, p->elapsed_s, isnan(eta) ? "~" : "",
            isnan(eta) ? 0.0 : eta, ps->tty ? "   " : "\n");
    if (ps->tty && p->done == p->total) fputc('\n', stderr);
}

static int64_t parse_size(const char *s)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || v <= 0) return -1;
    switch (*end) {
    case 'k': case 'K': v *= 1024.0; end++; break;
    case 'm': case 'M': v *= 1048576.0; end++; break;
    case 'g': case 'G': v *= 1073741824.0; end++; break;
    default: break;
    }
    if (*end == 'B' || *end == 'b') end++;
    return *end || v > 1e15 ? -1 : (int64_t)v;
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
                      {"block-size", true, NULL},    CLI_CP_OPTS,                    {NULL, false, NULL}};
    int parsed = cli_parse(argc, argv, opts);
    if (parsed != CLI_RUN) return parsed;
    const char *mdir = cli_get(opts, "model"), *preset = cli_get(opts, "preset"), *s;
    if (!mdir == !preset) {
        fprintf(stderr, "dsacp run: give exactly one of '--model DIR' and '--preset NAME'\n");
        return 2;
    }
    if (cli_get(opts, "prompts") && (cli_get(opts, "requests") || cli_get(opts, "prompt-len") || cli_get(opts, "arrival-rate"))) {
        fprintf(stderr, "dsacp run: '--prompts FILE' conflicts with the synthetic workload's options "
                "(--requests, --prompt-len, --arrival-rate)\n");
        return 2;
    }
    if (cli_get(opts, "kv-blocks") && cli_get(opts, "kv-memory")) {
        fprintf(stderr, "dsacp run: give at most one of '--kv-blocks' and '--kv-memory'\n");
        return 2;
    }
    int64_t nreq = 16, plo = 128, phi = 512, glo = 16, ghi = 32, nlong = 0, llo = 2048, lhi = 4096, seed = 0;
    int64_t mbt = 2048, mns = 256, kvb = 0;
    double rate = 0, temp = 0, topp = 1;
    if ((s = cli_get(opts, "requests")) && !cli_int("run", "requests", s, 0, 1 << 20, &nreq)) return 2;
    if ((s = cli_get(opts, "prompt-len")) && !parse_range("prompt-len", s, 1, 1 << 24, &plo, &phi)) return 2;
    if ((s = cli_get(opts, "gen-len")) && !parse_range("gen-len", s, 1, 1 << 24, &glo, &ghi)) return 2;
    if ((s = cli_get(opts, "long-requests")) && !cli_int("run", "long-requests", s, 0, 1 << 16, &nlong)) return 2;
    if ((s = cli_get(opts, "long-prompt-len")) && !parse_range("long-prompt-len", s, 1, 1 << 24, &llo, &lhi)) return 2;
    if ((s = cli_get(opts, "seed")) && !cli_int("run", "seed", s, 0, INT64_MAX, &seed)) return 2;
    if ((s = cli_get(opts, "max-batch-tokens")) && !cli_int("run", "max-batch-tokens", s, 1, 1 << 24, &mbt)) return 2;
    if ((s = cli_get(opts, "max-num-seqs")) && !cli_int("run", "max-num-seqs", s, 1, 1 << 20, &mns)) return 2;
    if ((s = cli_get(opts, "kv-blocks")) && !cli_int("run", "kv-blocks", s, 1, INT32_MAX, &kvb)) return 2;
    if ((s = cli_get(opts, "arrival-rate")) && (!(rate = atof(s)) && strcmp(s, "0") != 0 ? 1 : rate < 0)) {
        fprintf(stderr, "dsacp run: option '--arrival-rate' must be a number >= 0 (requests per second), got '%s'\n", s);
        return 2;
    }
    if ((s = cli_get(opts, "temperature")) && ((temp = atof(s)) < 0 || !isfinite(temp))) {
        fprintf(stderr, "dsacp run: option '--temperature' must be >= 0, got '%s'\n", s);
        return 2;
    }
    if ((s = cli_get(opts, "top-p")) && (!((topp = atof(s)) > 0) || topp > 1)) {
        fprintf(stderr, "dsacp run: option '--top-p' must be in (0, 1], got '%s'\n", s);
        return 2;
    }
    int64_t kvmem = 0;
    if ((s = cli_get(opts, "kv-memory")) && (kvmem = parse_size(s)) < 0) {
        fprintf(stderr, "dsacp run: option '--kv-memory' must be a size like 512M or 2G, got '%s'\n", s);
        return 2;
    }
    if (!cli_get(opts, "prompts") && nreq + nlong == 0) {
        fprintf(stderr, "dsacp run: zero requests (--requests 0 and no --long-requests)\n");
        return 2;
    }
    dsacp_engine_options eo;
    if (!cli_engine_options("run", opts, &eo)) return 2;
    dsacp_cp_options cpo;
    if (!cli_cp_options("run", opts, &cpo)) return 2;
    dsacp_comm *world = cli_world;
    const bool root = !world || dsacp_comm_rank(world) == 0;
    const int W = world ? dsacp_comm_size(world) : 1;

    /* The model: a directory, or a preset made by rank 0 in a temporary directory. */
    char tmpdir[64] = "";
    int rc = DSACP_OK;
    if (preset) {
        dsacp_config pc;
        rc = dsacp_preset_config(preset, &pc);
        if (!rc && root) {
            snprintf(tmpdir, sizeof tmpdir, "/tmp/dsacp-run-XXXXXX");
            if (!mkdtemp(tmpdir)) rc = dsacp_error(DSACP_EIO, "cannot create a temporary model directory");
            else rc = dsacp_model_init(&pc, tmpdir, (uint64_t)seed, DSACP_WEIGHTS_BF16);
        }
        if (world) rc = dsacp_comm_agree(world, rc);
        if (!rc && world) rc = dsacp_comm_bcast(world, tmpdir, sizeof tmpdir, DSACP_PHASE_input);
        mdir = tmpdir;
    }
    dsacp_model *m = NULL;
    if (!rc) rc = dsacp_model_load(mdir, &m);
    if (world) rc = dsacp_comm_agree(world, rc);
    workload wl = {0};
    dsacp_engine *e = NULL;
    dsacp_serve_result res = {0}, ver = {0};
    const dsacp_config *cfg = m ? dsacp_model_config(m) : NULL;
    if (!rc && root) {
        if ((s = cli_get(opts, "prompts"))) rc = load_prompts(&wl, s, glo);
        else rc = make_synthetic(&wl, nreq, plo, phi, glo, ghi, rate, nlong, llo, lhi, cfg->vocab_size, (uint64_t)seed);
    }
    if (world) rc = dsacp_comm_agree(world, rc);
    /* The pool: --kv-blocks, --kv-memory (this rank's latent + indexer bytes), or enough for the
     * whole workload at once. */
    int64_t need = 0;
    if (!rc) {
        for (int64_t i = 0; root && i < wl.n; i++) need += (wl.rq[i].prompt_len + wl.rq[i].max_new_tokens) / eo.block_size + 1;
        if (world) rc = dsacp_comm_bcast(world, &need, sizeof need, DSACP_PHASE_input);
        const int64_t per_block = eo.block_size * cfg->num_hidden_layers *
                                  (dsacp_mla_cache_bytes_per_token(cfg, eo.kv_dtype) +
                                   dsacp_index_cache_bytes_per_token(cfg, eo.numerics == DSACP_NUMERICS_DEPLOYED ? DSACP_KV_FP8 : DSACP_KV_F32));
        eo.num_blocks = kvb ? kvb : kvmem ? kvmem / per_block : need + 4;
        if (eo.num_blocks < 1) rc = dsacp_error(DSACP_EINVAL, "--kv-memory %s holds no cache block of %lld bytes",
                                                cli_get(opts, "kv-memory"), (long long)per_block);
    }
    if (!rc) rc = world ? dsacp_engine_create_cp(m, &eo, &cpo, world, &e) : dsacp_engine_create(m, &eo, &e);
    dsacp_serve_options so;
    dsacp_serve_options_default(&so);
    so.max_batch_tokens = mbt;
    so.max_num_seqs = mns;
    so.temperature = temp;
    so.top_p = topp;
    so.seed = (uint64_t)seed;
    so.realtime = !cli_get(opts, "no-realtime");
    progress_state ps = {isatty(2) != 0, -1e9};
    if (root) so.progress = progress, so.progress_arg = &ps;
    if (!rc) rc = dsacp_serve_run(e, wl.rq, wl.n, &so, &res);
    /* --verify: the same workload on one process. */
    int64_t matched = -1;
    if (!rc && root && cli_get(opts, "verify")) {
        dsacp_engine *e1 = NULL;
        dsacp_serve_options s1 = so;
        s1.realtime = false;
        s1.progress = NULL;
        dsacp_engine_options e1o = eo;
        e1o.num_blocks = need + 4; /* one process holds every position: room for the whole workload */
        rc = dsacp_engine_create(m, &e1o, &e1);
        if (!rc) rc = dsacp_serve_run(e1, wl.rq, wl.n, &s1, &ver);
        dsacp_engine_free(e1);
        matched = 0;
        for (int64_t i = 0; !rc && i < wl.n; i++)
            matched += res.out[i].n_tokens == ver.out[i].n_tokens &&
                       !memcmp(res.out[i].tokens, ver.out[i].tokens, (size_t)res.out[i].n_tokens * sizeof(int32_t));
    }
    if (world) rc = dsacp_comm_agree(world, rc);
    /* Memory per rank: weights (checkpoint tensors), KV pool and peak use, transients. */
    double mem[6] = {0}, *allmem = NULL;
    if (!rc && world) rc = dsacp_comm_bcast(world, &res.kv_peak_use, sizeof res.kv_peak_use, DSACP_PHASE_input);
    if (!rc) {
        for (int64_t i = 0; i < dsacp_model_weight_count(m); i++) {
            const dsacp_weight *w = dsacp_model_weight_at(m, i);
            mem[0] += (double)(w->rows * w->cols) * (double)dsacp_dtype_size(w->dtype);
        }
        dsacp_kv_usage ku;
        dsacp_engine_kv_usage(e, &ku);
        mem[1] = (double)(ku.latent_pool_bytes + ku.index_pool_bytes);
        mem[2] = res.kv_peak_use * mem[1];
        mem[3] = (double)ku.transient_peak_bytes;
        dsacp_weight_usage wu;
        dsacp_engine_weight_usage(e, &wu);
        mem[4] = (double)(wu.ring_bytes + wu.gather_bytes);
        allmem = malloc((size_t)(6 * W) * sizeof *allmem);
        if (!allmem) rc = DSACP_ENOMEM;
        else if (world) rc = dsacp_comm_allgather(world, mem, sizeof mem, allmem, -1);
        else memcpy(allmem, mem, sizeof mem);
    }
    if (!rc && root) {
        const int64_t n = wl.n;
        double *ttft = malloc((size_t)(n + 1) * sizeof(double)), *tpot = malloc((size_t)(n + 1) * sizeof(double));
        double *e2el = malloc((size_t)(n + 1) * sizeof(double));
        int64_t nitl = 0, in_tok = 0, out_tok = 0, ntpot = 0;
        for (int64_t i = 0; i < n; i++) nitl += res.out[i].n_tokens > 1 ? res.out[i].n_tokens - 1 : 0;
        double *itl = malloc((size_t)(nitl + 1) * sizeof(double));
        nitl = 0;
        for (int64_t i = 0; i < n; i++) {
            const dsacp_serve_out *o = &res.out[i];
            in_tok += wl.rq[i].prompt_len, out_tok += o->n_tokens;
            ttft[i] = (o->first_s - wl.rq[i].arrival_s) * 1e3;
            e2el[i] = (o->finish_s - wl.rq[i].arrival_s) * 1e3;
            if (o->n_tokens > 1) tpot[ntpot++] = (e2el[i] - ttft[i]) / (double)(o->n_tokens - 1);
            for (int64_t k = 1; k < o->n_tokens; k++) itl[nitl++] = (o->token_s[k] - o->token_s[k - 1]) * 1e3;
        }
        /* Per-request values for the JSON before the stats sort them. */
        double *ttft_r = malloc((size_t)(n + 1) * sizeof(double)), *e2el_r = malloc((size_t)(n + 1) * sizeof(double));
        memcpy(ttft_r, ttft, (size_t)n * sizeof(double));
        memcpy(e2el_r, e2el, (size_t)n * sizeof(double));
        const stats st_ttft = stats_of(ttft, n), st_tpot = stats_of(tpot, ntpot), st_itl = stats_of(itl, nitl),
                    st_e2el = stats_of(e2el, n);
        double attn = 0, mlp = 0, comm = 0, total = 0, bytes = 0, proj = 0, att = 0, oproj = 0;
        for (int64_t i = 0; i < res.n_steps; i++) {
            const dsacp_serve_step *k = &res.steps[i];
            attn += k->attention_ms, mlp += k->mlp_ms, comm += k->comm_ms, total += k->dur_ms, bytes += (double)k->comm_bytes;
            proj += k->projections_ms, att += k->attend_ms, oproj += k->o_proj_ms;
        }
        const double dur = res.duration_s;
        printf("============ dsacp run: serving result ============\n");
        printf("%-42s %s\n", "Model:", preset ? preset : mdir);
        printf("%-42s %d (%s%s%s)\n", "Ranks:", W, dsacp_cp_mode_name(cpo.mode), W > 1 ? ", " : "",
               W > 1 ? (cpo.mode == DSACP_CP_DCP ? dsacp_decode_strategy_name(cpo.decode) : dsacp_weight_plan_name(cpo.o_proj)) : "");
        printf("%-42s %lld\n", "Successful requests:", (long long)n);
        printf("%-42s %.2f\n", "Benchmark duration (s):", dur);
        printf("%-42s %lld\n", "Total input tokens:", (long long)in_tok);
        printf("%-42s %lld\n", "Total generated tokens:", (long long)out_tok);
        printf("%-42s %.2f\n", "Request throughput (req/s):", n / dur);
        printf("%-42s %.2f\n", "Output token throughput (tok/s):", out_tok / dur);
        printf("%-42s %.2f\n", "Total Token throughput (tok/s):", (in_tok + out_tok) / dur);
        const struct { const char *title, *name; stats s; } sec[] = {
            {"Time to First Token", "TTFT", st_ttft}, {"Time per Output Token (excl. 1st token)", "TPOT", st_tpot},
            {"Inter-token Latency", "ITL", st_itl}, {"End-to-end Latency", "E2EL", st_e2el}};
        for (int k = 0; k < 4; k++) {
            printf("%s\n", sec[k].title);
            printf("  Mean / Median / P90 / P99 %s (ms):%*s %.2f / %.2f / %.2f / %.2f\n", sec[k].name, (int)(10 - strlen(sec[k].name)),
                   "", sec[k].s.mean, sec[k].s.median, sec[k].s.p90, sec[k].s.p99);
        }
        printf("Time per phase (rank 0, summed over %lld steps)\n", (long long)res.n_steps);
        printf("  attention layer: %.2f s (%.0f%%) = projections %.2f + indexer, top-k and sparse MLA %.2f + o_proj %.2f\n",
               attn / 1e3, 100 * attn / fmax(total, 1e-9), proj / 1e3, att / 1e3, oproj / 1e3);
        printf("  MLP / MoE: %.2f s (%.0f%%)   communication (inside collectives, waits included): %.2f s (%.0f%%)\n",
               mlp / 1e3, 100 * mlp / fmax(total, 1e-9), comm / 1e3, 100 * comm / fmax(total, 1e-9));
        printf("  other (embedding, norms, head, scheduling): %.2f s; idle between steps: %.2f s\n",
               (total - attn - mlp) / 1e3, fmax(dur - total / 1e3, 0));
        printf("Communication (rank 0 received): %.1f MB, %.1f KB per generated token; by phase:\n", bytes / 1048576,
               bytes / 1024 / fmax((double)out_tok, 1));
        if (world) {
            for (int ph = 0, k = 0; ph < DSACP_PHASE_COUNT; ph++) {
                const dsacp_comm_counter ct = dsacp_comm_get_counter(world, ph);
                if (!ct.calls) continue;
                printf("%s%s %lld calls %.1f MB", k++ % 3 ? ",  " : "  ", dsacp_comm_phase_name(ph), (long long)ct.calls,
                       (double)ct.bytes_recv / 1048576);
                if (k % 3 == 0) printf("\n");
            }
            printf("\n");
        }
        printf("Memory per rank (MB): weights / KV pool / KV peak used (busiest rank's share) / transient peak / weight buffers\n");
        for (int q = 0; q < W; q++)
            printf("  rank %d: %.1f / %.1f / %.1f / %.1f / %.1f\n", q, allmem[6 * q] / 1048576, allmem[6 * q + 1] / 1048576,
                   allmem[6 * q + 2] / 1048576, allmem[6 * q + 3] / 1048576, allmem[6 * q + 4] / 1048576);
        printf("KV utilisation peak: %.0f%% of %lld blocks of %lld tokens; preemptions: %lld\n", 100 * res.kv_peak_use,
               (long long)eo.num_blocks, (long long)eo.block_size, (long long)res.preemptions);
        if (matched >= 0) {
            printf("Verify (the same workload on one process): %lld of %lld requests generated identical tokens%s\n",
                   (long long)matched, (long long)n, matched == n ? "" : "  <-- MISMATCH");
            for (int64_t i = 0; i < n && matched != n; i++)
                if (res.out[i].n_tokens != ver.out[i].n_tokens ||
                    memcmp(res.out[i].tokens, ver.out[i].tokens, (size_t)res.out[i].n_tokens * sizeof(int32_t)))
                    printf("  request %lld differs\n", (long long)i);
        }
        printf("===================================================\n");
        if ((s = cli_get(opts, "json"))) {
            char *text = NULL;
            size_t len = 0;
            FILE *f = open_memstream(&text, &len);
            if (!f) rc = DSACP_ENOMEM;
            else {
                fprintf(f, "{\n\"config\": {\"model\": \"%s\", \"world\": %d, \"cp_mode\": \"%s\", \"decode_strategy\": \"%s\", "
                           "\"kv_layout\": \"%s\", \"index_layout\": \"%s\", \"o_proj\": \"%s\", \"max_batch_tokens\": %lld, "
                           "\"kv_blocks\": %lld, \"block_size\": %lld},\n",
                        preset ? preset : mdir, W, dsacp_cp_mode_name(cpo.mode), dsacp_decode_strategy_name(cpo.decode),
                        dsacp_cp_layout_name(cpo.kv_layout), dsacp_cp_layout_name(cpo.index_layout),
                        dsacp_weight_plan_name(cpo.o_proj), (long long)mbt, (long long)eo.num_blocks, (long long)eo.block_size);
                fprintf(f, "\"completed\": %lld, \"duration_s\": %.6f, \"total_input_tokens\": %lld, \"total_output_tokens\": %lld,\n"
                           "\"request_throughput\": %.6f, \"output_throughput\": %.6f, \"total_token_throughput\": %.6f,\n",
                        (long long)n, dur, (long long)in_tok, (long long)out_tok, n / dur, out_tok / dur, (in_tok + out_tok) / dur);
                const char *names[4] = {"ttft", "tpot", "itl", "e2el"};
                for (int k = 0; k < 4; k++)
                    fprintf(f, "\"mean_%s_ms\": %.4f, \"median_%s_ms\": %.4f, \"std_%s_ms\": %.4f, \"p90_%s_ms\": %.4f, \"p99_%s_ms\": %.4f,\n",
                            names[k], sec[k].s.mean, names[k], sec[k].s.median, names[k], sec[k].s.std, names[k], sec[k].s.p90,
                            names[k], sec[k].s.p99);
                fprintf(f, "\"preemptions\": %lld, \"kv_utilization_peak\": %.4f, \"comm_bytes_rank0\": %.0f, "
                           "\"comm_bytes_per_generated_token\": %.1f,\n",
                        (long long)res.preemptions, res.kv_peak_use, bytes, bytes / fmax((double)out_tok, 1));
                fprintf(f, "\"verify\": %s,\n", matched < 0 ? "null" : matched == n ? "\"identical\"" : "\"mismatch\"");
                fprintf(f, "\"memory_per_rank\": [");
                for (int q = 0; q < W; q++)
                    fprintf(f, "%s{\"rank\": %d, \"weights\": %.0f, \"kv_pool\": %.0f, \"kv_peak_used\": %.0f, \"transient_peak\": %.0f, "
                               "\"weight_buffers\": %.0f}", q ? ", " : "", q, allmem[6 * q], allmem[6 * q + 1], allmem[6 * q + 2],
                            allmem[6 * q + 3], allmem[6 * q + 4]);
                fprintf(f, "],\n\"steps\": [");
                for (int64_t i = 0; i < res.n_steps; i++) {
                    const dsacp_serve_step *k = &res.steps[i];
                    fprintf(f, "%s\n {\"index\": %lld, \"t_s\": %.6f, \"dur_ms\": %.4f, \"prefill_tokens\": %lld, \"decode_tokens\": %lld, "
                               "\"comm_bytes\": %lld, \"phases_ms\": {\"projections\": %.4f, \"attention\": %.4f, \"o_proj\": %.4f, "
                               "\"mlp\": %.4f, \"other\": %.4f}, \"comm_ms\": %.4f}",
                            i ? "," : "", (long long)i, k->t_s, k->dur_ms, (long long)k->prefill_tokens, (long long)k->decode_tokens,
                            (long long)k->comm_bytes, k->projections_ms, k->attend_ms, k->o_proj_ms, k->mlp_ms,
                            fmax(k->dur_ms - k->attention_ms - k->mlp_ms, 0), k->comm_ms);
                }
                fprintf(f, "],\n\"requests\": [");
                for (int64_t i = 0; i < n; i++) {
                    const dsacp_serve_out *o = &res.out[i];
                    fprintf(f, "%s\n {\"id\": %lld, \"prompt_len\": %lld, \"output_len\": %lld, \"arrival_s\": %.6f, \"ttft_ms\": %.4f, "
                               "\"e2el_ms\": %.4f, \"tpot_ms\": ",
                            i ? "," : "", (long long)i, (long long)wl.rq[i].prompt_len, (long long)o->n_tokens, wl.rq[i].arrival_s,
                            ttft_r[i], e2el_r[i]);
                    if (o->n_tokens > 1) fprintf(f, "%.4f", (e2el_r[i] - ttft_r[i]) / (double)(o->n_tokens - 1));
                    else fprintf(f, "null");
                    fprintf(f, ", \"preemptions\": %lld, \"tokens\": [", (long long)o->preemptions);
                    for (int64_t k = 0; k < o->n_tokens; k++) fprintf(f, "%s%d", k ? "," : "", o->tokens[k]);
                    fprintf(f, "]}");
                }
                fprintf(f, "\n]\n}\n");
                fclose(f);
                rc = dsacp_write_file_atomic(s, text, len);
                free(text);
                if (rc) cli_fail("run", rc);
            }
        }
        free(ttft), free(tpot), free(e2el), free(itl), free(ttft_r), free(e2el_r);
    } else if (rc) {
        cli_fail("run", rc);
    }
    if (world) rc = dsacp_comm_agree(world, rc);
    if (!rc) rc = cli_cp_finish("run", opts, rc, e);
    int verify_failed = matched >= 0 && matched != wl.n;
    free(allmem);
    dsacp_serve_result_free(&res);
    dsacp_serve_result_free(&ver);
    workload_free(&wl);
    dsacp_engine_free(e);
    dsacp_model_free(m);
    if (tmpdir[0] && root) {
        char p[128];
        snprintf(p, sizeof p, "%s/config.json", tmpdir), unlink(p);
        snprintf(p, sizeof p, "%s/model.safetensors", tmpdir), unlink(p);
        rmdir(tmpdir);
    }
    return rc ? 1 : verify_failed ? 3 : 0;
}
