/*
 * cli_run.c -- `dsacp run`: the serving main job (docs/serving.md). A workload (synthetic or a
 * JSONL prompts file) is served by the engine on one rank or on every rank of an mpirun job
 * (src/serve: continuous batching, chunked prefill, preemption), then rank 0 prints a report with
 * vLLM's metric names and, with --json, writes it in the schema of docs/serving.md. --verify
 * replays the workload on rank 0 alone (one process, same model and options) and states, per
 * request, whether every generated token matches.
 */
#include "cli.h"
#include "dsacp_io.h"
#include "dsacp_serve.h"
#include "dsacp_util.h"

#include <errno.h>
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
    if (k >= sizeof a) {
        fprintf(stderr, "dsacp run: option '--%s' must be MIN:MAX or one integer, got '%s'\n", flag, s);
        return false;
    }
    memcpy(a, s, k);
    a[k] = 0;
    if (!cli_int("run", flag, a, min, max, lo) || !cli_int("run", flag, colon + 1, min, max, hi)) return false;
    if (*hi < *lo) {
        fprintf(stderr, "dsacp run: option '--%s' = %s: MIN > MAX\n", flag, s);
        return false;
    }
    return true;
}

/* The most prompt tokens a workload may hold in memory (4 bytes each): 2^30 tokens, 4 GiB. */
#define RUN_MAX_WORKLOAD_TOKENS ((int64_t)1 << 30)

/* The synthetic workload's ranges against the model, before anything is generated: every
 * request's prompt plus output within max_position_embeddings, the total prompt tokens bounded
 * (overflow-checked). */
static int check_synthetic(int64_t n, int64_t phi, int64_t ghi, int64_t nlong, int64_t lhi, const dsacp_config *cfg,
                           const char *model)
{
    const int64_t maxpos = cfg->max_position_embeddings;
    if (n > 0 && phi + ghi > maxpos)
        return dsacp_error(DSACP_ERANGE, "--prompt-len up to %lld + --gen-len up to %lld = %lld positions, more than "
                           "the model's max_position_embeddings = %lld (%s)", (long long)phi, (long long)ghi,
                           (long long)(phi + ghi), (long long)maxpos, model);
    if (nlong > 0 && lhi + ghi > maxpos)
        return dsacp_error(DSACP_ERANGE, "--long-prompt-len up to %lld + --gen-len up to %lld = %lld positions, more "
                           "than the model's max_position_embeddings = %lld (%s)", (long long)lhi, (long long)ghi,
                           (long long)(lhi + ghi), (long long)maxpos, model);
    size_t a = 0, b = 0, total = 0;
    if (!dsacp_mul_ok((size_t)n, (size_t)phi, &a) || !dsacp_mul_ok((size_t)nlong, (size_t)lhi, &b) ||
        !dsacp_add_ok(a, b, &total) || total > (size_t)RUN_MAX_WORKLOAD_TOKENS)
        return dsacp_error(DSACP_ERANGE, "--requests %lld x --prompt-len up to %lld + --long-requests %lld x "
                           "--long-prompt-len up to %lld: more than %lld prompt tokens", (long long)n, (long long)phi,
                           (long long)nlong, (long long)lhi, (long long)RUN_MAX_WORKLOAD_TOKENS);
    return DSACP_OK;
}

/* Synthetic: n requests, prompt and output lengths uniform in their ranges, Poisson arrivals
 * (rate per second; 0: all at once), plus `nlong` long prompts arriving first. The ranges were
 * checked against the model (check_synthetic). */
static int make_synthetic(workload *w, int64_t n, int64_t plo, int64_t phi, int64_t glo, int64_t ghi, double rate,
                          int64_t nlong, int64_t llo, int64_t lhi, int64_t V, uint64_t seed)
{
    w->rq = calloc((size_t)(n + nlong), sizeof *w->rq);
    if (!w->rq) return dsacp_error(DSACP_ENOMEM, "out of memory for %lld requests", (long long)(n + nlong));
    dsacp_rng rng, arr;
    dsacp_rng_seed(&rng, seed);
    dsacp_rng_seed(&arr, seed ^ 0xA5A5A5A5A5A5A5A5ull); /* arrivals: their own stream, so prompts do not depend on the rate */
    double t = 0;
    for (int64_t i = 0; i < n + nlong; i++) {
        dsacp_serve_request *r = &w->rq[i];
        const bool lng = i < nlong;
        const int64_t lo = lng ? llo : plo, hi = lng ? lhi : phi;
        r->prompt_len = lo + (int64_t)(dsacp_rng_u64(&rng) % (uint64_t)(hi - lo + 1));
        r->max_new_tokens = glo + (int64_t)(dsacp_rng_u64(&rng) % (uint64_t)(ghi - glo + 1));
        r->prompt = malloc((size_t)r->prompt_len * sizeof *r->prompt);
        if (!r->prompt) return dsacp_error(DSACP_ENOMEM, "out of memory for request %lld's prompt", (long long)i);
        w->n = i + 1;
        for (int64_t j = 0; j < r->prompt_len; j++) r->prompt[j] = (int32_t)(dsacp_rng_u64(&rng) % (uint64_t)V);
        if (rate > 0 && !lng) t += -log(1.0 - dsacp_rng_uniform(&arr)) / rate;
        r->arrival_s = t;
    }
    return DSACP_OK;
}

/* A token id field of the prompts file: an integer in [0, vocab). */
static int token_field(json_t *v, const char *path, int64_t ln, const char *field, size_t j, int64_t V, int32_t *out)
{
    if (!json_is_integer(v))
        return dsacp_error(DSACP_EFORMAT, "%s: line %lld: %s[%zu] is not an integer", path, (long long)ln, field, j);
    const json_int_t x = json_integer_value(v);
    if (x < 0 || x >= V)
        return dsacp_error(DSACP_ERANGE, "%s: line %lld: %s[%zu] = %lld is outside the vocabulary [0, %lld)", path,
                           (long long)ln, field, j, (long long)x, (long long)V);
    *out = (int32_t)x;
    return DSACP_OK;
}

/* One line of the prompts file (len bytes, no NUL inside) into request r. */
static int parse_request(const char *line, size_t len, const char *path, int64_t ln, int64_t gen, const dsacp_config *cfg,
                         dsacp_serve_request *r)
{
    const int64_t V = cfg->vocab_size, maxpos = cfg->max_position_embeddings;
    json_error_t err;
    /* A repeated key is refused (which value would win is not the user's intent to guess). */
    json_t *o = json_loadb(line, len, JSON_REJECT_DUPLICATES, &err);
    int rc = DSACP_OK;
    json_t *ids = o ? json_object_get(o, "prompt_ids") : NULL;
    if (!o || !json_is_object(o))
        rc = dsacp_error(DSACP_EFORMAT, "%s: line %lld: not a JSON object%s%s", path, (long long)ln, o ? "" : ": ",
                         o ? "" : err.text);
    else if (!json_is_array(ids) || json_array_size(ids) == 0)
        rc = dsacp_error(DSACP_EFORMAT, "%s: line %lld: 'prompt_ids' must be a non-empty array of token ids", path,
                         (long long)ln);
    else if ((int64_t)json_array_size(ids) > maxpos)
        rc = dsacp_error(DSACP_ERANGE, "%s: line %lld: %zu prompt tokens, more than the model's "
                         "max_position_embeddings = %lld", path, (long long)ln, json_array_size(ids), (long long)maxpos);
    /* A key this loader does not read (a typo such as "max_new_token", or a per-request sampling
     * field dsacp does not support) is an error, never silently ignored. */
    const char *key;
    json_t *val;
    if (!rc) {
        json_object_foreach(o, key, val) {
            (void)val;
            if (strcmp(key, "prompt_ids") && strcmp(key, "max_new_tokens") && strcmp(key, "stop_ids") &&
                strcmp(key, "arrival_s")) {
                rc = dsacp_error(DSACP_EFORMAT, "%s: line %lld: unknown field '%s' (a request has prompt_ids, "
                                 "max_new_tokens, stop_ids and arrival_s)", path, (long long)ln, key);
                break;
            }
        }
    }
    if (!rc) {
        r->prompt_len = (int64_t)json_array_size(ids);
        r->prompt = malloc((size_t)r->prompt_len * sizeof *r->prompt);
        if (!r->prompt) rc = dsacp_error(DSACP_ENOMEM, "%s: line %lld: out of memory", path, (long long)ln);
        for (int64_t j = 0; j < r->prompt_len && !rc; j++)
            rc = token_field(json_array_get(ids, (size_t)j), path, ln, "prompt_ids", (size_t)j, V, &r->prompt[j]);
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
    if (!rc && r->prompt_len + r->max_new_tokens > maxpos)
        rc = dsacp_error(DSACP_ERANGE, "%s: line %lld: %lld prompt tokens + max_new_tokens %lld = %lld positions, more "
                         "than the model's max_position_embeddings = %lld", path, (long long)ln,
                         (long long)r->prompt_len, (long long)r->max_new_tokens,
                         (long long)(r->prompt_len + r->max_new_tokens), (long long)maxpos);
    if (!rc && a) {
        /* 1e7 s (116 days): beyond it a realtime run would wait silently for longer than any trace */
        if (!json_is_number(a) || !(json_number_value(a) >= 0) || !(json_number_value(a) <= 1e7))
            rc = dsacp_error(DSACP_EFORMAT, "%s: line %lld: 'arrival_s' must be a number of seconds in [0, 1e7]", path,
                             (long long)ln);
        else r->arrival_s = json_number_value(a);
    }
    if (!rc && st) {
        if (!json_is_array(st)) rc = dsacp_error(DSACP_EFORMAT, "%s: line %lld: 'stop_ids' must be an array of token ids",
                                                 path, (long long)ln);
        int32_t *stops = rc ? NULL : malloc((json_array_size(st) + 1) * sizeof *stops);
        if (!rc && !stops) rc = dsacp_error(DSACP_ENOMEM, "%s: line %lld: out of memory", path, (long long)ln);
        for (size_t j = 0; !rc && j < json_array_size(st); j++)
            rc = token_field(json_array_get(st, j), path, ln, "stop_ids", j, V, &stops[j]);
        if (stops) r->stop_ids = stops, r->n_stop = (int64_t)json_array_size(st);
    }
    json_decref(o);
    return rc;
}

/* JSONL: one object per line: prompt_ids (array of token ids), optional max_new_tokens (default
 * `gen`), stop_ids (array of token ids), arrival_s (>= 0). The file is read by length: a NUL byte
 * is an error naming its line, as is anything outside the model's vocabulary or positions. */
static int load_prompts(workload *w, const char *path, int64_t gen, const dsacp_config *cfg)
{
    char *text = NULL;
    size_t len = 0;
    int rc = dsacp_read_file(path, &text, &len, (size_t)1 << 30);
    if (rc) return rc;
    size_t lines = 1;
    for (size_t i = 0; i < len; i++) lines += text[i] == '\n';
    w->rq = calloc(lines, sizeof *w->rq);
    if (!w->rq) rc = dsacp_error(DSACP_ENOMEM, "%s: out of memory for %zu lines", path, lines);
    size_t pos = 0;
    for (int64_t ln = 1; !rc && pos < len; ln++) {
        const char *line = text + pos;
        const char *nl = memchr(line, '\n', len - pos);
        const size_t n = nl ? (size_t)(nl - line) : len - pos;
        pos += n + 1;
        const char *nul = memchr(line, '\0', n);
        if (nul) {
            rc = dsacp_error(DSACP_EFORMAT, "%s: line %lld: a NUL byte at column %zu", path, (long long)ln,
                             (size_t)(nul - line) + 1);
            break;
        }
        size_t k = 0;
        while (k < n && (line[k] == ' ' || line[k] == '\t' || line[k] == '\r')) k++;
        if (k == n) continue; /* an empty line */
        rc = parse_request(line, n, path, ln, gen, cfg, &w->rq[w->n]);
        w->n++; /* owns whatever was allocated, even on failure */
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

/* "512M", "2G", "1048576": bytes (K, M, G: powers of 1024; an optional B); the number in the
 * strict grammar. -1 when malformed, below one byte or above 1e15. */
static int64_t parse_size(const char *s)
{
    char num[64];
    size_t n = strlen(s);
    double mult = 1;
    if (n && (s[n - 1] == 'B' || s[n - 1] == 'b')) n--;
    if (n) switch (s[n - 1]) {
        case 'k': case 'K': mult = 1024.0, n--; break;
        case 'm': case 'M': mult = 1048576.0, n--; break;
        case 'g': case 'G': mult = 1073741824.0, n--; break;
        default: break;
        }
    if (n == 0 || n >= sizeof num) return -1;
    memcpy(num, s, n);
    num[n] = 0;
    double v;
    if (!cli_parse_f64(num, &v)) return -1;
    v *= mult;
    return v >= 1 && v <= 1e15 ? (int64_t)v : -1;
}

/* The model of --preset: rank 0 writes it into a fresh directory under $TMPDIR (or /tmp), removed
 * on SIGINT/SIGTERM and as soon as every rank has loaded it (the weights stay mapped). */
typedef struct tmp_model {
    char dir[4096];
    int cleanup; /* cli_cleanup_add slot, -1 when none */
} tmp_model;

static int tmp_model_create(tmp_model *t, const dsacp_config *pc, uint64_t seed)
{
    const char *base = getenv("TMPDIR");
    if (!base || !*base) base = "/tmp";
    const int n = snprintf(t->dir, sizeof t->dir, "%s/dsacp-run-XXXXXX", base);
    if (n < 0 || (size_t)n >= sizeof t->dir) {
        t->dir[0] = 0;
        return dsacp_error(DSACP_EINVAL, "TMPDIR = '%s': the path is too long", base);
    }
    sigset_t saved; /* the directory exists only once a signal would remove it */
    cli_signals_hold(true, &saved);
    if (!mkdtemp(t->dir)) {
        const int err = errno;
        cli_signals_hold(false, &saved);
        t->dir[0] = 0;
        return dsacp_error(DSACP_EIO, "cannot create a temporary model directory in %s (TMPDIR): %s", base, strerror(err));
    }
    t->cleanup = cli_cleanup_add(t->dir, true);
    cli_signals_hold(false, &saved);
    return dsacp_model_init(pc, t->dir, seed, DSACP_WEIGHTS_BF16);
}

static void tmp_model_remove(tmp_model *t)
{
    if (!t->dir[0]) return;
    if (cli_remove_dir(t->dir)) fprintf(stderr, "dsacp run: warning: %s\n", dsacp_last_error());
    cli_cleanup_remove(t->cleanup);
    t->cleanup = -1;
    t->dir[0] = 0;
}

/* A number for the JSON report: null when not finite (an empty run's rates). */
static json_t *jnum(double v) { return isfinite(v) ? json_real(v) : json_null(); }
static json_t *jint(int64_t v) { return json_integer((json_int_t)v); }

/* --verify in deployed numerics: a divergence passes when it is a near-tie, the one-process
 * reference's top-1 minus top-2 logit at that step at most this (docs/serving.md "--verify"). */
#define RUN_VERIFY_NEAR_TIE 0.1

typedef struct divergence {
    int64_t request, step;
    int32_t token, ref_token; /* -1: that run ended there */
    double ref_gap;           /* NAN when the reference has no token at that step */
    bool near_tie;
} divergence;

/* Compares every request of res with the reference ver: the first step where they differ. */
static int compare_runs(const dsacp_serve_result *res, const dsacp_serve_result *ver, int64_t n, bool deployed,
                        divergence **out, int64_t *n_div)
{
    *out = NULL;
    *n_div = 0;
    divergence *d = calloc((size_t)n + 1, sizeof *d);
    if (!d) return dsacp_error(DSACP_ENOMEM, "--verify: out of memory");
    for (int64_t i = 0; i < n; i++) {
        const dsacp_serve_out *a = &res->out[i], *b = &ver->out[i];
        const int64_t m = a->n_tokens < b->n_tokens ? a->n_tokens : b->n_tokens;
        int64_t k = 0;
        while (k < m && a->tokens[k] == b->tokens[k]) k++;
        if (k == m && a->n_tokens == b->n_tokens) continue;
        divergence *v = &d[(*n_div)++];
        v->request = i, v->step = k;
        v->token = k < a->n_tokens ? a->tokens[k] : -1;
        v->ref_token = k < b->n_tokens ? b->tokens[k] : -1;
        v->ref_gap = k < b->n_tokens && b->gap ? (double)b->gap[k] : NAN;
        v->near_tie = deployed && v->token >= 0 && v->ref_token >= 0 && v->ref_gap <= RUN_VERIFY_NEAR_TIE;
    }
    *out = d;
    return DSACP_OK;
}

typedef struct report_ctx {
    const workload *wl;
    const dsacp_serve_result *res;
    const dsacp_engine_options *eo;
    const dsacp_cp_options *cpo;
    const char *model;
    int W;
    int64_t mbt;
    const double *allmem; /* [W][6] */
    dsacp_comm *world;
    bool verify, passed, deployed;
    const divergence *div;
    int64_t n_div, near_ties;
} report_ctx;

static json_t *stats_json(json_t *o, const char *name, const stats *st)
{
    char k[32];
    const struct { const char *what; double v; } f[] = {
        {"mean", st->mean}, {"median", st->median}, {"std", st->std}, {"p90", st->p90}, {"p99", st->p99}};
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
        snprintf(k, sizeof k, "%s_%s_ms", f[i].what, name);
        json_object_set_new(o, k, jnum(f[i].v));
    }
    return o;
}

/* The report: the text into f (printed once every output is committed) and, when j is not
 * NULL, the JSON report (docs/serving.md) into j, built with jansson. Latencies are measured from
 * each request's arrival on the run's clock (dsacp_serve_out.arrival_s: 0 when replayed). */
static int write_report(FILE *f, json_t *j, const report_ctx *c)
{
    const workload *wl = c->wl;
    const dsacp_serve_result *res = c->res;
    const int64_t n = wl->n;
    const int W = c->W;
    int64_t nitl = 0, in_tok = 0, out_tok = 0, ntpot = 0;
    for (int64_t i = 0; i < n; i++) nitl += res->out[i].n_tokens > 1 ? res->out[i].n_tokens - 1 : 0;
    double *ttft = malloc((size_t)(n + 1) * sizeof(double)), *tpot = malloc((size_t)(n + 1) * sizeof(double));
    double *e2el = malloc((size_t)(n + 1) * sizeof(double)), *itl = malloc((size_t)(nitl + 1) * sizeof(double));
    double *ttft_r = malloc((size_t)(n + 1) * sizeof(double)), *e2el_r = malloc((size_t)(n + 1) * sizeof(double));
    if (!ttft || !tpot || !e2el || !itl || !ttft_r || !e2el_r) {
        free(ttft), free(tpot), free(e2el), free(itl), free(ttft_r), free(e2el_r);
        return dsacp_error(DSACP_ENOMEM, "out of memory for the report");
    }
    nitl = 0;
    for (int64_t i = 0; i < n; i++) {
        const dsacp_serve_out *o = &res->out[i];
        in_tok += wl->rq[i].prompt_len, out_tok += o->n_tokens;
        ttft[i] = ttft_r[i] = (o->first_s - o->arrival_s) * 1e3;
        e2el[i] = e2el_r[i] = (o->finish_s - o->arrival_s) * 1e3;
        if (o->n_tokens > 1) tpot[ntpot++] = (e2el[i] - ttft[i]) / (double)(o->n_tokens - 1);
        for (int64_t k = 1; k < o->n_tokens; k++) itl[nitl++] = (o->token_s[k] - o->token_s[k - 1]) * 1e3;
    }
    const stats sec_s[4] = {stats_of(ttft, n), stats_of(tpot, ntpot), stats_of(itl, nitl), stats_of(e2el, n)};
    double attn = 0, mlp = 0, comm = 0, total = 0, bytes = 0, proj = 0, att = 0, oproj = 0;
    for (int64_t i = 0; i < res->n_steps; i++) {
        const dsacp_serve_step *k = &res->steps[i];
        attn += k->attention_ms, mlp += k->mlp_ms, comm += k->comm_ms, total += k->dur_ms, bytes += (double)k->comm_bytes;
        proj += k->projections_ms, att += k->attend_ms, oproj += k->o_proj_ms;
    }
    /* The attention layer's time outside its three timed parts: buffer set-up and agreement,
     * staging the new cache entries, waiting for the prefill exchange, the CP merge's own calls. */
    const double arest = fmax(attn - proj - att - oproj, 0);
    const double dur = res->duration_s;
    const dsacp_cp_options *cpo = c->cpo;
    const char *mode_detail = W > 1 ? (cpo->mode == DSACP_CP_DCP ? dsacp_decode_strategy_name(cpo->decode)
                                                                  : dsacp_weight_plan_name(cpo->o_proj)) : "";
    fprintf(f, "============ dsacp run: serving result ============\n");
    fprintf(f, "%-42s %s\n", "Model:", c->model);
    fprintf(f, "%-42s %d (%s%s%s)\n", "Ranks:", W, dsacp_cp_mode_name(cpo->mode), W > 1 ? ", " : "", mode_detail);
    fprintf(f, "%-42s %lld\n", "Successful requests:", (long long)n);
    fprintf(f, "%-42s %.2f\n", "Benchmark duration (s):", dur);
    fprintf(f, "%-42s %lld\n", "Total input tokens:", (long long)in_tok);
    fprintf(f, "%-42s %lld\n", "Total generated tokens:", (long long)out_tok);
    fprintf(f, "%-42s %.2f\n", "Request throughput (req/s):", n / dur);
    fprintf(f, "%-42s %.2f\n", "Output token throughput (tok/s):", out_tok / dur);
    fprintf(f, "%-42s %.2f\n", "Total Token throughput (tok/s):", (in_tok + out_tok) / dur);
    static const char *const titles[4] = {"Time to First Token", "Time per Output Token (excl. 1st token)",
                                          "Inter-token Latency", "End-to-end Latency"};
    static const char *const names[4] = {"TTFT", "TPOT", "ITL", "E2EL"}, *const keys[4] = {"ttft", "tpot", "itl", "e2el"};
    for (int k = 0; k < 4; k++) {
        fprintf(f, "%s\n", titles[k]);
        fprintf(f, "  Mean / Median / P90 / P99 %s (ms):%*s %.2f / %.2f / %.2f / %.2f\n", names[k], (int)(10 - strlen(names[k])),
                "", sec_s[k].mean, sec_s[k].median, sec_s[k].p90, sec_s[k].p99);
    }
    fprintf(f, "Time per phase (rank 0, summed over %lld steps)\n", (long long)res->n_steps);
    fprintf(f, "  attention layer: %.2f s (%.0f%%) = projections %.2f + indexer, top-k and sparse MLA %.2f + o_proj %.2f\n"
               "    + set-up, staging and exchange waits %.2f\n",
            attn / 1e3, 100 * attn / fmax(total, 1e-9), proj / 1e3, att / 1e3, oproj / 1e3, arest / 1e3);
    fprintf(f, "  MLP / MoE: %.2f s (%.0f%%)   communication (inside collectives, waits included): %.2f s (%.0f%%)\n",
            mlp / 1e3, 100 * mlp / fmax(total, 1e-9), comm / 1e3, 100 * comm / fmax(total, 1e-9));
    fprintf(f, "  other (embedding, norms, head, scheduling): %.2f s; idle between steps: %.2f s\n",
            (total - attn - mlp) / 1e3, fmax(dur - total / 1e3, 0));
    fprintf(f, "Communication (rank 0 received): %.1f MB, %.1f KB per generated token; by phase:\n", bytes / 1048576,
            bytes / 1024 / fmax((double)out_tok, 1));
    if (c->world) {
        for (int ph = 0, k = 0; ph < DSACP_PHASE_COUNT; ph++) {
            const dsacp_comm_counter ct = dsacp_comm_get_counter(c->world, ph);
            if (!ct.calls) continue;
            fprintf(f, "%s%s %lld calls %.1f MB", k++ % 3 ? ",  " : "  ", dsacp_comm_phase_name(ph), (long long)ct.calls,
                    (double)ct.bytes_recv / 1048576);
            if (k % 3 == 0) fprintf(f, "\n");
        }
        fprintf(f, "\n");
    }
    const double *am = c->allmem;
    fprintf(f, "Memory per rank (MB): weights / KV pool / KV peak used (busiest rank's share) / transient peak / weight buffers\n");
    for (int q = 0; q < W; q++)
        fprintf(f, "  rank %d: %.1f / %.1f / %.1f / %.1f / %.1f\n", q, am[6 * q] / 1048576, am[6 * q + 1] / 1048576,
                am[6 * q + 2] / 1048576, am[6 * q + 3] / 1048576, am[6 * q + 4] / 1048576);
    fprintf(f, "KV utilisation peak: %.0f%% of %lld blocks of %lld tokens; preemptions: %lld\n", 100 * res->kv_peak_use,
            (long long)c->eo->num_blocks, (long long)c->eo->block_size, (long long)res->preemptions);
    if (c->verify) {
        if (!c->deployed)
            fprintf(f, "Verify (exact numerics: every token identical to one process): %lld of %lld requests generated "
                       "identical tokens%s\n", (long long)(n - c->n_div), (long long)n, c->passed ? "" : "  <-- MISMATCH");
        else
            fprintf(f, "Verify (deployed numerics: identical tokens, or diverging only at a near-tie, the one-process "
                       "top-2 logit gap <= %g): %lld of %lld requests generated identical tokens, %lld diverged at "
                       "near-ties%s\n", RUN_VERIFY_NEAR_TIE, (long long)(n - c->n_div), (long long)n,
                    (long long)c->near_ties, c->passed ? "" : "  <-- MISMATCH");
        for (int64_t k = 0; k < c->n_div; k++) {
            const divergence *d = &c->div[k];
            fprintf(f, "  request %lld differs at generated token %lld: %d here, %d on one process (its top-2 gap %.4g%s)\n",
                    (long long)d->request, (long long)d->step, d->token, d->ref_token, d->ref_gap,
                    d->near_tie ? ": a near-tie" : c->deployed ? ": NOT a near-tie" : "");
        }
    }
    fprintf(f, "===================================================\n");
    if (j) {
        const dsacp_engine_options *eo = c->eo;
        json_t *cfgj = json_object();
        json_object_set_new(cfgj, "model", json_string(c->model));
        json_object_set_new(cfgj, "world", jint(W));
        json_object_set_new(cfgj, "cp_mode", json_string(dsacp_cp_mode_name(cpo->mode)));
        json_object_set_new(cfgj, "decode_strategy", json_string(dsacp_decode_strategy_name(cpo->decode)));
        json_object_set_new(cfgj, "kv_layout", json_string(dsacp_cp_layout_name(cpo->kv_layout)));
        json_object_set_new(cfgj, "index_layout", json_string(dsacp_cp_layout_name(cpo->index_layout)));
        json_object_set_new(cfgj, "o_proj", json_string(dsacp_weight_plan_name(cpo->o_proj)));
        json_object_set_new(cfgj, "numerics", json_string(c->deployed ? "deployed" : "exact"));
        json_object_set_new(cfgj, "max_batch_tokens", jint(c->mbt));
        json_object_set_new(cfgj, "kv_blocks", jint(eo->num_blocks));
        json_object_set_new(cfgj, "block_size", jint(eo->block_size));
        json_object_set_new(j, "config", cfgj);
        json_object_set_new(j, "completed", jint(n));
        json_object_set_new(j, "duration_s", jnum(dur));
        json_object_set_new(j, "total_input_tokens", jint(in_tok));
        json_object_set_new(j, "total_output_tokens", jint(out_tok));
        json_object_set_new(j, "request_throughput", jnum(n / dur));
        json_object_set_new(j, "output_throughput", jnum(out_tok / dur));
        json_object_set_new(j, "total_token_throughput", jnum((in_tok + out_tok) / dur));
        for (int k = 0; k < 4; k++) stats_json(j, keys[k], &sec_s[k]);
        json_object_set_new(j, "preemptions", jint(res->preemptions));
        json_object_set_new(j, "kv_utilization_peak", jnum(res->kv_peak_use));
        json_object_set_new(j, "comm_bytes_rank0", jnum(bytes));
        json_object_set_new(j, "comm_bytes_per_generated_token", jnum(bytes / fmax((double)out_tok, 1)));
        json_t *vj = json_null();
        if (c->verify) {
            vj = json_object();
            json_object_set_new(vj, "numerics", json_string(c->deployed ? "deployed" : "exact"));
            json_object_set_new(vj, "checks", json_string(c->deployed ? "identical tokens, or the first divergence of each "
                                                                        "request at a near-tie" : "identical tokens"));
            json_object_set_new(vj, "near_tie_gap", c->deployed ? jnum(RUN_VERIFY_NEAR_TIE) : json_null());
            json_object_set_new(vj, "requests", jint(n));
            json_object_set_new(vj, "identical", jint(n - c->n_div));
            json_object_set_new(vj, "passed", json_boolean(c->passed));
            json_t *dv = json_array();
            for (int64_t k = 0; k < c->n_div; k++) {
                const divergence *d = &c->div[k];
                json_t *o = json_object();
                json_object_set_new(o, "request", jint(d->request));
                json_object_set_new(o, "step", jint(d->step));
                json_object_set_new(o, "token", d->token >= 0 ? jint(d->token) : json_null());
                json_object_set_new(o, "reference_token", d->ref_token >= 0 ? jint(d->ref_token) : json_null());
                json_object_set_new(o, "reference_gap", jnum(d->ref_gap));
                json_object_set_new(o, "near_tie", json_boolean(d->near_tie));
                json_array_append_new(dv, o);
            }
            json_object_set_new(vj, "divergences", dv);
        }
        json_object_set_new(j, "verify", vj);
        json_t *mj = json_array();
        for (int q = 0; q < W; q++) {
            json_t *o = json_object();
            json_object_set_new(o, "rank", jint(q));
            static const char *const mk[5] = {"weights", "kv_pool", "kv_peak_used", "transient_peak", "weight_buffers"};
            for (int k = 0; k < 5; k++) json_object_set_new(o, mk[k], jnum(round(am[6 * q + k])));
            json_array_append_new(mj, o);
        }
        json_object_set_new(j, "memory_per_rank", mj);
        json_t *sj = json_array();
        for (int64_t i = 0; i < res->n_steps; i++) {
            const dsacp_serve_step *k = &res->steps[i];
            json_t *o = json_object(), *ph = json_object();
            json_object_set_new(o, "index", jint(i));
            json_object_set_new(o, "t_s", jnum(k->t_s));
            json_object_set_new(o, "dur_ms", jnum(k->dur_ms));
            json_object_set_new(o, "prefill_tokens", jint(k->prefill_tokens));
            json_object_set_new(o, "decode_tokens", jint(k->decode_tokens));
            json_object_set_new(o, "comm_bytes", jint(k->comm_bytes));
            json_object_set_new(ph, "projections", jnum(k->projections_ms));
            json_object_set_new(ph, "attention", jnum(k->attend_ms));
            json_object_set_new(ph, "o_proj", jnum(k->o_proj_ms));
            json_object_set_new(ph, "attention_other",
                                jnum(fmax(k->attention_ms - k->projections_ms - k->attend_ms - k->o_proj_ms, 0)));
            json_object_set_new(ph, "mlp", jnum(k->mlp_ms));
            json_object_set_new(ph, "other", jnum(fmax(k->dur_ms - k->attention_ms - k->mlp_ms, 0)));
            json_object_set_new(o, "phases_ms", ph);
            json_object_set_new(o, "comm_ms", jnum(k->comm_ms));
            json_array_append_new(sj, o);
        }
        json_object_set_new(j, "steps", sj);
        json_t *rj = json_array();
        for (int64_t i = 0; i < n; i++) {
            const dsacp_serve_out *o = &res->out[i];
            json_t *r = json_object(), *tk = json_array();
            json_object_set_new(r, "id", jint(i));
            json_object_set_new(r, "prompt_len", jint(wl->rq[i].prompt_len));
            json_object_set_new(r, "output_len", jint(o->n_tokens));
            json_object_set_new(r, "arrival_s", jnum(o->arrival_s));
            json_object_set_new(r, "ttft_ms", jnum(ttft_r[i]));
            json_object_set_new(r, "e2el_ms", jnum(e2el_r[i]));
            json_object_set_new(r, "tpot_ms", o->n_tokens > 1 ? jnum((e2el_r[i] - ttft_r[i]) / (double)(o->n_tokens - 1))
                                                               : json_null());
            json_object_set_new(r, "preemptions", jint(o->preemptions));
            for (int64_t k = 0; k < o->n_tokens; k++) json_array_append_new(tk, jint(o->tokens[k]));
            json_object_set_new(r, "tokens", tk);
            json_array_append_new(rj, r);
        }
        json_object_set_new(j, "requests", rj);
    }
    free(ttft), free(tpot), free(e2el), free(itl), free(ttft_r), free(e2el_r);
    return DSACP_OK;
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
    const char *prompts = cli_get(opts, "prompts"), *json_path = cli_get(opts, "json");
    if (!mdir == !preset) {
        fprintf(stderr, "dsacp run: give exactly one of '--model DIR' and '--preset NAME'\n");
        return 2;
    }
    if (prompts) {
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
    /* Requests per second (0: all at once); 1e9 keeps the arrival times finite and distinct. */
    if ((s = cli_get(opts, "arrival-rate")) && !cli_double("run", "arrival-rate", s, 0, 1e9, &rate)) return 2;
    if (rate > 0 && rate < 1e-6) { /* below that the gaps (1 / rate) leave every finite clock */
        fprintf(stderr, "dsacp run: option '--arrival-rate' = %s: 0 (all at once) or a rate in [1e-06, 1e+09] "
                "requests per second\n", s);
        return 2;
    }
    if ((s = cli_get(opts, "temperature")) && !cli_double("run", "temperature", s, 0, 1e6, &temp)) return 2;
    if ((s = cli_get(opts, "top-p")) && !cli_double("run", "top-p", s, 0, 1, &topp)) return 2;
    if (s && !(topp > 0)) {
        fprintf(stderr, "dsacp run: option '--top-p' must be in (0, 1], got '%s'\n", s);
        return 2;
    }
    if (s && !(temp > 0)) { /* greedy decoding never samples: a top-p would be silently ignored */
        fprintf(stderr, "dsacp run: option '--top-p' applies to sampling only: give '--temperature T' > 0 with it\n");
        return 2;
    }
    int64_t kvmem = -1;
    if ((s = cli_get(opts, "kv-memory")) && (kvmem = parse_size(s)) < 0) {
        fprintf(stderr, "dsacp run: option '--kv-memory' must be a size of at least one byte like 512M, 2G or "
                "1048576, got '%s'\n", s);
        return 2;
    }
    if (!prompts && nreq + nlong == 0) {
        fprintf(stderr, "dsacp run: zero requests (--requests 0 and no --long-requests)\n");
        return 2;
    }
    dsacp_engine_options eo;
    if (!cli_engine_options("run", opts, &eo)) return 2;
    /* Deployed numerics' --verify judges a divergence by the reference's top-2 gap, which only
     * decides a greedy token: a sampled token can differ wherever the logits differ at all. */
    if (cli_get(opts, "verify") && temp > 0 && eo.numerics == DSACP_NUMERICS_DEPLOYED) {
        fprintf(stderr, "dsacp run: '--verify' with '--temperature' > 0 needs '--numerics exact' (in deployed numerics "
                "only greedy tokens can be checked, by their top-2 gap)\n");
        return 2;
    }
    dsacp_cp_options cpo;
    if (!cli_cp_options("run", opts, &cpo)) return 2;
    dsacp_config pc;
    if (preset && dsacp_preset_config(preset, &pc)) return cli_fail_invocation("run", DSACP_ENOTFOUND);
    const char *cr = cli_get(opts, "comm-report");
    if (json_path && (cli_same_file(json_path, cr) || cli_same_file(json_path, prompts))) {
        fprintf(stderr, "dsacp run: '--json %s' names the same file as '--%s'\n", json_path,
                cli_same_file(json_path, cr) ? "comm-report" : "prompts");
        return 2;
    }
    if (cr && cli_same_file(cr, prompts)) {
        fprintf(stderr, "dsacp run: '--comm-report %s' names the same file as '--prompts'\n", cr);
        return 2;
    }
    dsacp_comm *world = cli_world;
    const bool root = !world || dsacp_comm_rank(world) == 0;
    const int W = world ? dsacp_comm_size(world) : 1;

    /* The outputs first: a report that cannot be written is known before any work. */
    cli_output json_out, report_out;
    cli_output_init(&json_out);
    cli_output_init(&report_out);
    int rc = cli_output_open("run", "json", json_path, &json_out);
    if (!rc) rc = cli_cp_begin("run", opts, &report_out);
    if (rc) {
        cli_output_abort(&json_out);
        return cli_output_exit(rc); /* 1: cannot be created (README "Errors"); 2: it names an input */
    }
    int ret = 1;
    tmp_model tm = {.dir = "", .cleanup = -1};
    dsacp_model *m = NULL;
    workload wl = {0};
    dsacp_engine *e = NULL;
    dsacp_serve_result res = {0}, ver = {0};
    divergence *div = NULL;
    int64_t n_div = 0, near_ties = 0;
    bool verify_passed = true;
    double *allmem = NULL;
    char *text = NULL, *jtext = NULL;
    size_t text_len = 0;

    /* The model: a directory, or a preset made by rank 0 in a temporary directory. */
    if (preset) {
        if (root) rc = tmp_model_create(&tm, &pc, (uint64_t)seed);
        if (world) rc = dsacp_comm_agree(world, rc);
        if (!rc && world) rc = dsacp_comm_bcast(world, tm.dir, sizeof tm.dir, DSACP_PHASE_input);
        if (rc) {
            cli_fail("run", rc); /* the machine failed (disk, TMPDIR), not the invocation */
            goto done;
        }
        mdir = tm.dir;
    }
    rc = dsacp_model_load(mdir, &m);
    if (world) rc = dsacp_comm_agree(world, rc);
    if (root) tmp_model_remove(&tm); /* every rank has it mapped (or failed) */
    if (rc) {
        ret = preset ? cli_fail("run", rc) : cli_fail_invocation("run", rc);
        goto done;
    }
    const dsacp_config *cfg = dsacp_model_config(m);
    const char *model_name = preset ? preset : mdir;
    if (!cli_block_size_fits("run", &eo, cfg, model_name)) {
        ret = 2;
        goto done;
    }
    const int64_t per_block = eo.block_size * cfg->num_hidden_layers *
                              (dsacp_mla_cache_bytes_per_token(cfg, eo.kv_dtype) +
                               dsacp_index_cache_bytes_per_token(cfg, eo.numerics == DSACP_NUMERICS_DEPLOYED ? DSACP_KV_FP8 : DSACP_KV_F32));
    /* A pool given by flags that cannot hold even the shortest synthetic request, spread over the
     * ranks as evenly as any layout could, is refused before any prompt is generated. */
    if (!prompts && (kvb || kvmem > 0)) {
        const int64_t blocks = kvb ? kvb : kvmem / per_block;
        int64_t smallest = INT64_MAX;
        if (nreq > 0) smallest = plo + glo - 1;
        if (nlong > 0 && llo + glo - 1 < smallest) smallest = llo + glo - 1;
        const int64_t per_rank = (smallest + W - 1) / W, need1 = (per_rank + eo.block_size - 1) / eo.block_size;
        if (blocks >= 1 && need1 > blocks) {
            fprintf(stderr, "dsacp run: option '--%s': %lld block%s of %lld tokens per rank cannot hold the shortest "
                    "request of the workload (%lld cached tokens, at least %lld per rank over %d rank%s)\n",
                    kvb ? "kv-blocks" : "kv-memory", (long long)blocks, blocks == 1 ? "" : "s", (long long)eo.block_size,
                    (long long)smallest, (long long)per_rank, W, W == 1 ? "" : "s");
            ret = 2;
            goto done;
        }
    }
    /* The workload, checked against the model before anything is generated or allocated. */
    if (root) {
        if (prompts) rc = load_prompts(&wl, prompts, glo, cfg);
        else {
            rc = check_synthetic(nreq, phi, ghi, nlong, lhi, cfg, model_name);
            if (!rc) rc = make_synthetic(&wl, nreq, plo, phi, glo, ghi, rate, nlong, llo, lhi, cfg->vocab_size, (uint64_t)seed);
        }
    }
    if (world) rc = dsacp_comm_agree(world, rc);
    /* The pool: --kv-blocks, --kv-memory (this rank's latent + indexer bytes), or enough for the
     * whole workload at once: each request's blocks plus a few spare (256 tokens' worth, at
     * least one block). */
    int64_t need = 0;
    if (!rc) {
        for (int64_t i = 0; root && i < wl.n; i++)
            need += (wl.rq[i].prompt_len + wl.rq[i].max_new_tokens + eo.block_size - 1) / eo.block_size;
        need += (256 + eo.block_size - 1) / eo.block_size;
        if (world) rc = dsacp_comm_bcast(world, &need, sizeof need, DSACP_PHASE_input);
    }
    if (!rc) {
        eo.num_blocks = kvb ? kvb : kvmem > 0 ? kvmem / per_block : need;
        if (eo.num_blocks < 1) rc = dsacp_error(DSACP_EINVAL, "--kv-memory %s holds no cache block of %lld bytes",
                                                cli_get(opts, "kv-memory"), (long long)per_block);
    }
    if (rc) {
        ret = cli_setup_exit(rc);
        cli_fail("run", rc);
        goto done;
    }
    rc = world ? dsacp_engine_create_cp(m, &eo, &cpo, world, &e) : dsacp_engine_create(m, &eo, &e);
    if (rc) {
        ret = rc == DSACP_EINVAL || rc == DSACP_EUNSUPPORTED ? 2 : 1; /* options the engine refuses, or memory */
        cli_fail("run", rc);
        goto done;
    }
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
    /* What the serving loop would refuse before its first step (a request that fits no rank's
     * pool alone, given --kv-blocks or --kv-memory) is the invocation's fault too. */
    if (root) rc = dsacp_serve_check(e, wl.rq, wl.n, &so);
    if (root && rc == DSACP_ECAPACITY) { /* the library names the pool; the CLI names the flags that size it */
        char msg[512];
        snprintf(msg, sizeof msg, "%s", dsacp_last_error());
        dsacp_error(rc, "%s: give more --kv-blocks / --kv-memory", msg);
    }
    if (world) rc = dsacp_comm_agree(world, rc);
    if (rc) {
        ret = cli_setup_exit(rc);
        cli_fail("run", rc);
        goto done;
    }
    rc = dsacp_serve_run(e, wl.rq, wl.n, &so, &res);
    /* --verify: the same workload on one process. */
    const bool verify = cli_get(opts, "verify") != NULL;
    const bool deployed = eo.numerics == DSACP_NUMERICS_DEPLOYED;
    if (!rc && root && verify) {
        dsacp_engine *e1 = NULL;
        dsacp_serve_options s1 = so;
        s1.realtime = false;
        s1.progress = NULL;
        dsacp_engine_options e1o = eo;
        e1o.num_blocks = need; /* one process holds every position: room for the whole workload */
        rc = dsacp_engine_create(m, &e1o, &e1);
        if (!rc) rc = dsacp_serve_run(e1, wl.rq, wl.n, &s1, &ver);
        dsacp_engine_free(e1);
        if (!rc) rc = compare_runs(&res, &ver, wl.n, deployed, &div, &n_div);
    }
    if (world) rc = dsacp_comm_agree(world, rc);
    /* Memory per rank: weights (checkpoint tensors), KV pool and peak use, transients. */
    double mem[6] = {0};
    if (!rc && world) rc = dsacp_comm_bcast(world, &res.kv_peak_use, sizeof res.kv_peak_use, DSACP_PHASE_input);
    if (!rc) {
        for (int64_t i = 0; i < dsacp_model_weight_count(m); i++) {
            dsacp_tensor_info w;
            if (!dsacp_model_tensor_info(m, i, &w)) mem[0] += (double)(w.rows * w.cols) * (double)dsacp_dtype_size(w.dtype);
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
        if (!allmem) rc = dsacp_error(DSACP_ENOMEM, "out of memory");
        else if (world) rc = dsacp_comm_allgather(world, mem, sizeof mem, allmem, -1);
        else memcpy(allmem, mem, sizeof mem);
        if (world) rc = dsacp_comm_agree(world, rc);
    }
    if (rc) {
        cli_fail("run", rc);
        goto finish;
    }
    for (int64_t k = 0; k < n_div; k++) near_ties += div[k].near_tie;
    verify_passed = n_div == near_ties;
    /* Rank 0 alone compared the runs: every rank learns the verdict, so all exit with the same
     * status (3 on a failed check). An uncounted agreement: the report's counters stay the run's. */
    if (world && verify) verify_passed = dsacp_comm_agree_phase(world, root && !verify_passed ? 1 : DSACP_OK, -1) == DSACP_OK;
    if (root) {
        FILE *f = open_memstream(&text, &text_len);
        json_t *j = json_object();
        rc = f && j ? DSACP_OK : dsacp_error(DSACP_ENOMEM, "out of memory for the report");
        if (!rc) rc = write_report(f, json_path ? j : NULL, &(report_ctx){.wl = &wl, .res = &res, .eo = &eo, .cpo = &cpo,
                                   .model = model_name, .W = W, .mbt = mbt, .allmem = allmem, .world = world,
                                   .verify = verify, .div = div, .n_div = n_div, .near_ties = near_ties, .passed = verify_passed,
                                   .deployed = deployed});
        if (f && fclose(f) != 0 && !rc) rc = dsacp_error(DSACP_ENOMEM, "out of memory for the report");
        if (!rc && json_path) {
            jtext = json_dumps(j, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
            if (!jtext) rc = dsacp_error(DSACP_ENOMEM, "--json: out of memory for the report");
        }
        json_decref(j);
        if (!rc && jtext) {
            const size_t jl = strlen(jtext);
            jtext[jl] = '\n'; /* its NUL becomes the final newline */
            rc = cli_output_commit_bytes(&json_out, jtext, jl + 1);
            if (rc) dsacp_error_context(rc, "--json");
        }
        if (rc) cli_fail("run", rc);
    }
finish:
    /* The counters' report (collective), then stdout once every file is in place. */
    rc = cli_cp_finish("run", opts, rc, e, &report_out);
    if (!rc && root) {
        rc = cli_print_buffer(text, text_len);
        if (rc) cli_fail("run", rc);
    }
    ret = rc ? 1 : verify && !verify_passed ? 3 : 0;
done:
    cli_output_abort(&json_out);
    cli_output_abort(&report_out);
    if (root) tmp_model_remove(&tm);
    free(text);
    free(jtext);
    free(div);
    free(allmem);
    dsacp_serve_result_free(&res);
    dsacp_serve_result_free(&ver);
    workload_free(&wl);
    dsacp_engine_free(e);
    dsacp_model_free(m);
    return ret;
}
