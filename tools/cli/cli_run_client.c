/*
 * cli_run_client.c -- `dsacp run --url`: the benchmark client (vllm bench serve's job). The workload
 * of `dsacp run` (synthetic -- drawn with --seed from the vocabulary of --model, --preset or
 * --tokenizer, so the same flags give the same prompts as an in-process run -- or a JSONL prompts
 * file, whose lines may also give "prompt" as text) goes to an OpenAI-compatible server as
 * streamed POST /v1/completions requests, each sent at its arrival time (all at once with
 * --no-realtime), every one in flight on this one thread through libcurl's multi interface. Each
 * token's time is the time its server-sent event arrived (an event carrying several ids gives
 * each the event's time); the report is cli_run_report.c's, from what the client observed (the
 * server's steps, KV use and memory are not visible from here and are left out). A request the
 * server refused or broke off is counted as failed and reported with the server's message, as
 * vllm bench serve does; the run still exits 0.
 */
#include "cli_run.h"
#include "dsacp_util.h"

#include <curl/curl.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The most bytes kept of an answer that is not an event stream (an error's JSON), and of one
 * event's line. */
#define CLIENT_MAX_BODY ((size_t)1 << 20)
#define CLIENT_MAX_LINE ((size_t)16 << 20)
#define CLIENT_CONNECT_TIMEOUT_MS 10000L

/* ---- flags ---- */

/* Flags that configure the engine, which the server runs: refused with --url (with the roles' and
 * the context-parallel ones). */
static const cli_opt engine_flags[] = {{"max-batch-tokens", true, NULL}, {"max-num-seqs", true, NULL},
                                       {"kv-blocks", true, NULL},        {"kv-memory", true, NULL},
                                       {"verify", false, NULL},          {"numerics", true, NULL},
                                       {"kv-dtype", true, NULL},         {"block-size", true, NULL},
                                       {"speculative-config", true, NULL}};

/* The first flag of `list` given in opts, NULL when none. */
static const char *first_given(const cli_opt *opts, const cli_opt *list, size_t n)
{
    for (size_t k = 0; k < n; k++)
        if (cli_get(opts, list[k].name)) return list[k].name;
    return NULL;
}

int run_client_conflicts(const cli_opt *opts, bool client)
{
    static const cli_opt mine[] = {RUN_CLIENT_OPTS}, pd[] = {RUN_PD_OPTS}, cp[] = {CLI_CP_OPTS};
    const char *f = NULL;
    if (!client) {
        if ((f = first_given(opts, mine, sizeof mine / sizeof mine[0]))) {
            fprintf(stderr, "dsacp run: '--%s' is the benchmark client's: give it with '--url http://HOST:PORT'\n", f);
            return 2;
        }
        return CLI_RUN;
    }
    if ((f = first_given(opts, engine_flags, sizeof engine_flags / sizeof engine_flags[0])) ||
        (f = first_given(opts, pd, sizeof pd / sizeof pd[0])) || (f = first_given(opts, cp, sizeof cp / sizeof cp[0]))) {
        fprintf(stderr, "dsacp run: '--%s' configures the engine, which the server at '--url' runs (give it to dsacp "
                "serve): not with '--url'\n", f);
        return 2;
    }
    const int sources = !!cli_get(opts, "model") + !!cli_get(opts, "preset") + !!cli_get(opts, "tokenizer");
    if (sources > 1) {
        fprintf(stderr, "dsacp run: with '--url', give at most one of '--model DIR', '--preset NAME' and "
                "'--tokenizer FILE' (the vocabulary synthetic prompts are drawn from; no model is loaded)\n");
        return 2;
    }
    return CLI_RUN;
}

/* --url: http:// or https://, a host, an optional port and base path; no query or fragment. */
static bool url_valid(const char *url, char *why, size_t cap)
{
    CURLU *u = curl_url();
    char *scheme = NULL, *host = NULL, *query = NULL, *frag = NULL;
    bool ok = false;
    CURLUcode uc = u ? curl_url_set(u, CURLUPART_URL, url, 0) : CURLUE_OUT_OF_MEMORY;
    if (uc == CURLUE_UNSUPPORTED_SCHEME || uc == CURLUE_BAD_SCHEME ||
        (!uc && (curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) || (strcmp(scheme, "http") && strcmp(scheme, "https")))))
        snprintf(why, cap, "the scheme must be http:// or https:// (like http://127.0.0.1:8000)");
    else if (uc) snprintf(why, cap, "%s", curl_url_strerror(uc));
    else if (curl_url_get(u, CURLUPART_HOST, &host, 0) || !host[0]) snprintf(why, cap, "no host");
    else if (!curl_url_get(u, CURLUPART_QUERY, &query, 0) || !curl_url_get(u, CURLUPART_FRAGMENT, &frag, 0))
        snprintf(why, cap, "a query or fragment (give the server's base URL, like http://127.0.0.1:8000)");
    else ok = true;
    curl_free(scheme), curl_free(host), curl_free(query), curl_free(frag);
    curl_url_cleanup(u);
    return ok;
}

int run_client_check(const cli_opt *opts, const run_args *a, int world)
{
    char why[256] = "";
    const char *s;
    int64_t v;
    if (world > 1) {
        fprintf(stderr, "dsacp run: '--url' runs the benchmark client as one process, not under mpirun (%d "
                "processes): start the server under mpirun instead\n", world);
        return 2;
    }
    if (!url_valid(a->url, why, sizeof why)) {
        fprintf(stderr, "dsacp run: option '--url' = '%s' is not a server's URL: %s\n", a->url, why);
        return 2;
    }
    if ((s = cli_get(opts, "model-name")) && !s[0]) {
        fprintf(stderr, "dsacp run: option '--model-name' must not be empty\n");
        return 2;
    }
    if ((s = cli_get(opts, "max-concurrency")) && !cli_int("run", "max-concurrency", s, 1, 1 << 20, &v)) return 2;
    if (a->json_path && cli_same_file(a->json_path, a->prompts)) {
        fprintf(stderr, "dsacp run: '--json %s' names the same file as '--prompts'\n", a->json_path);
        return 2;
    }
    return CLI_RUN;
}

/* ---- the workload ---- */

/* The positions the workload is checked against and the ids synthetic prompts are drawn from
 * (run_prompt_vocab): --model's config and tokenizer (no weights read), --preset's config, or
 * --tokenizer's ids; a prompts file alone is checked by the server (every id accepted here). */
static int client_config(const cli_opt *opts, const run_args *a, dsacp_config *cfg, int64_t *vocab, const char **what)
{
    const char *tok = cli_get(opts, "tokenizer");
    int rc = DSACP_OK;
    *cfg = (dsacp_config){.vocab_size = INT32_MAX, .max_position_embeddings = (int64_t)1 << 40};
    *what = a->mdir ? a->mdir : a->preset ? a->preset : tok ? tok : a->url;
    if (a->mdir) {
        char path[4096];
        if ((size_t)snprintf(path, sizeof path, "%s/config.json", a->mdir) >= sizeof path)
            return cli_fail_invocation("run", dsacp_error(DSACP_EINVAL, "--model %s: the path is too long", a->mdir));
        rc = dsacp_config_load(path, cfg);
    } else if (a->preset) {
        rc = dsacp_preset_config(a->preset, cfg);
    } else if (!tok && !a->prompts) {
        fprintf(stderr, "dsacp run: with '--url', the synthetic prompts are drawn from a vocabulary: give '--model DIR', "
                "'--preset NAME' or '--tokenizer FILE' (or '--prompts FILE.jsonl')\n");
        return 2;
    }
    if (!rc) rc = run_prompt_vocab(tok, a->mdir, cfg->vocab_size, vocab);
    return rc ? cli_fail_invocation("run", rc) : CLI_RUN;
}

static int client_workload(const cli_opt *opts, const run_args *a, workload *wl)
{
    dsacp_config cfg;
    const char *what;
    int64_t V;
    int ret = client_config(opts, a, &cfg, &V, &what);
    if (ret != CLI_RUN) return ret;
    int rc;
    if (a->prompts) rc = run_load_prompts(wl, a->prompts, a->glo, &cfg, true);
    else {
        rc = run_check_synthetic(a->nreq, a->phi, a->ghi, a->nlong, a->lhi, &cfg, what);
        if (!rc)
            rc = run_make_synthetic(wl, a->nreq, a->plo, a->phi, a->glo, a->ghi, a->rate, a->nlong, a->llo, a->lhi, V,
                                    (uint64_t)a->seed);
    }
    if (rc) {
        cli_fail("run", rc);
        return cli_setup_exit(rc);
    }
    return CLI_RUN;
}

/* ---- one request ---- */

typedef struct client client;

/* A request in flight and what the client observed of it (times on the run's clock). */
typedef struct creq {
    client *cl;
    int64_t i;
    CURL *h;
    char *body;
    char *buf;          /* the event stream's unfinished line, or the whole answer when it is not a stream */
    size_t len, cap;
    int32_t *tok;       /* ids as they arrived (-1: text without its id) */
    double *tok_s;
    int64_t n, cap_tok;
    double sent_s, first_s, finish_s;
    int64_t prompt_tokens; /* usage.prompt_tokens, -1 until the usage event */
    bool seen_code, stream, done; /* the status was read; it was 200 (an event stream); data: [DONE] arrived */
    char *error;        /* why it failed (malloc'd), NULL while it has not */
    char errbuf[CURL_ERROR_SIZE];
} creq;

struct client {
    char *completions, *models; /* the endpoints' URLs */
    char *model_name;
    struct curl_slist *headers;
    CURLM *multi;
    double t0;
    creq *rq; /* [n] */
    int64_t n, inflight, done, generated;
};

static void set_error(creq *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_error(creq *r, const char *fmt, ...)
{
    if (r->error) return; /* the first reason stays */
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    r->error = strdup(msg);
    if (!r->error) r->error = strdup("out of memory");
}

static bool push_token(creq *r, int32_t id, double t)
{
    if (r->n == r->cap_tok) {
        const int64_t cap = r->cap_tok ? 2 * r->cap_tok : 64;
        int32_t *tk = realloc(r->tok, (size_t)cap * sizeof *tk);
        if (tk) r->tok = tk;
        double *ts = tk ? realloc(r->tok_s, (size_t)cap * sizeof *ts) : NULL;
        if (!ts) return false;
        r->tok_s = ts, r->cap_tok = cap;
    }
    if (r->n == 0) r->first_s = t;
    r->tok[r->n] = id, r->tok_s[r->n++] = t, r->finish_s = t;
    r->cl->generated++;
    return true;
}

/* One event's JSON: its choice's token ids (or, without them, one token per non-empty text), the
 * usage, or an error object (vLLM sends one in the stream when a request fails mid-way). */
static void on_event(creq *r, const char *data, size_t len, double t)
{
    if (len == 6 && !memcmp(data, "[DONE]", 6)) {
        r->done = true;
        return;
    }
    json_t *o = json_loadb(data, len, 0, NULL), *err = json_object_get(o, "error");
    json_t *c0 = json_array_get(json_object_get(o, "choices"), 0), *usage = json_object_get(o, "usage");
    json_t *ids = json_object_get(c0, "token_ids"), *text = json_object_get(c0, "text"), *v;
    size_t k;
    if (!json_is_object(o)) set_error(r, "the server sent an event that is not a JSON object: %.80s", data);
    else if (err) set_error(r, "the stream ended with an error: %s", json_string_value(json_object_get(err, "message")));
    else if (json_is_array(ids)) {
        json_array_foreach(ids, k, v) {
            if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT32_MAX)
                set_error(r, "the server sent a token id that is not one: token_ids[%zu]", k);
            else if (!push_token(r, (int32_t)json_integer_value(v), t)) set_error(r, "out of memory");
        }
    } else if (json_is_string(text) && json_string_length(text) > 0 && !push_token(r, -1, t)) set_error(r, "out of memory");
    if (json_is_integer(json_object_get(usage, "prompt_tokens")))
        r->prompt_tokens = json_integer_value(json_object_get(usage, "prompt_tokens"));
    json_decref(o);
}

/* The complete lines of the event stream in r->buf: each "data: X" is an event. */
static void on_lines(creq *r, double t)
{
    size_t start = 0;
    char *nl;
    while ((nl = memchr(r->buf + start, '\n', r->len - start))) {
        size_t end = (size_t)(nl - r->buf), e = end;
        if (e > start && r->buf[e - 1] == '\r') e--;
        const char *line = r->buf + start;
        if (e - start >= 5 && !memcmp(line, "data:", 5)) {
            size_t p = 5;
            if (p < e - start && line[p] == ' ') p++;
            on_event(r, line + p, e - start - p, t);
        }
        start = end + 1;
    }
    memmove(r->buf, r->buf + start, r->len - start);
    r->len -= start;
}

static size_t on_data(char *data, size_t size, size_t nmemb, void *arg)
{
    creq *r = arg;
    const size_t n = size * nmemb;
    const double t = dsacp_now() - r->cl->t0;
    if (!r->seen_code) {
        long code = 0;
        curl_easy_getinfo(r->h, CURLINFO_RESPONSE_CODE, &code);
        r->seen_code = true, r->stream = code == 200;
    }
    const size_t limit = r->stream ? CLIENT_MAX_LINE : CLIENT_MAX_BODY;
    const size_t take = r->len + n > limit ? (r->len < limit ? limit - r->len : 0) : n;
    if (r->stream && take < n) {
        set_error(r, "an event of the stream is longer than %zu bytes", CLIENT_MAX_LINE);
        return 0; /* ends the transfer */
    }
    if (r->len + take + 1 > r->cap) {
        const size_t cap = (r->len + take + 1) * 2;
        char *b = realloc(r->buf, cap);
        if (!b) {
            set_error(r, "out of memory");
            return 0;
        }
        r->buf = b, r->cap = cap;
    }
    memcpy(r->buf + r->len, data, take);
    r->len += take;
    r->buf[r->len] = 0;
    if (r->stream) on_lines(r, t);
    return n;
}

/* The request's body: vLLM's /v1/completions fields, streamed with the usage and the token ids. */
static char *request_body(const client *cl, const workload *wl, int64_t i, const run_args *a)
{
    const dsacp_serve_request *q = &wl->rq[i];
    json_t *o = json_object(), *prompt, *so = json_object();
    if (wl->text && wl->text[i]) prompt = json_string(wl->text[i]);
    else {
        prompt = json_array();
        for (int64_t k = 0; k < q->prompt_len; k++) json_array_append_new(prompt, json_integer(q->prompt[k]));
    }
    json_object_set_new(o, "model", json_string(cl->model_name));
    json_object_set_new(o, "prompt", prompt);
    json_object_set_new(o, "max_tokens", json_integer(q->max_new_tokens));
    json_object_set_new(o, "temperature", json_real(a->temp));
    if (a->temp > 0) { /* each request its own seed: the same seed, the same tokens */
        json_object_set_new(o, "top_p", json_real(a->topp));
        json_object_set_new(o, "seed", json_integer((json_int_t)(((uint64_t)a->seed + (uint64_t)i) & INT64_MAX)));
    }
    /* As the in-process run: the output ends at max_tokens or one of the request's stop ids, never
     * at the tokenizer's EOS. */
    json_object_set_new(o, "ignore_eos", json_true());
    if (q->n_stop > 0) {
        json_t *st = json_array();
        for (int64_t k = 0; k < q->n_stop; k++) json_array_append_new(st, json_integer(q->stop_ids[k]));
        json_object_set_new(o, "stop_token_ids", st);
    }
    json_object_set_new(o, "stream", json_true());
    json_object_set_new(so, "include_usage", json_true());
    json_object_set_new(o, "stream_options", so);
    json_object_set_new(o, "return_token_ids", json_true());
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return s;
}

/* Starts request i: its handle joins the multi handle; it is sent as soon as libcurl can. */
static int start_request(client *cl, const workload *wl, int64_t i, const run_args *a)
{
    creq *r = &cl->rq[i];
    r->cl = cl, r->i = i, r->prompt_tokens = -1;
    r->sent_s = dsacp_now() - cl->t0;
    r->body = request_body(cl, wl, i, a);
    r->h = curl_easy_init();
    if (!r->body || !r->h) return dsacp_error(DSACP_ENOMEM, "out of memory for request %lld", (long long)i);
    curl_easy_setopt(r->h, CURLOPT_URL, cl->completions);
    curl_easy_setopt(r->h, CURLOPT_POSTFIELDS, r->body);
    curl_easy_setopt(r->h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(r->body));
    curl_easy_setopt(r->h, CURLOPT_HTTPHEADER, cl->headers);
    curl_easy_setopt(r->h, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(r->h, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(r->h, CURLOPT_PRIVATE, r);
    curl_easy_setopt(r->h, CURLOPT_ERRORBUFFER, r->errbuf);
    curl_easy_setopt(r->h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(r->h, CURLOPT_CONNECTTIMEOUT_MS, CLIENT_CONNECT_TIMEOUT_MS);
    if (curl_multi_add_handle(cl->multi, r->h) != CURLM_OK)
        return dsacp_error(DSACP_ENOMEM, "request %lld: libcurl refused the transfer", (long long)i);
    cl->inflight++;
    return DSACP_OK;
}

/* The message of an answer that is not a stream: OpenAI's {"error": {"message": ...}}, else its
 * first bytes. */
static void http_error(creq *r, long code)
{
    json_t *o = r->buf ? json_loadb(r->buf, r->len, 0, NULL) : NULL;
    const char *msg = json_string_value(json_object_get(json_object_get(o, "error"), "message"));
    if (msg) set_error(r, "HTTP %ld: %s", code, msg);
    else set_error(r, "HTTP %ld: %.200s", code, r->buf ? r->buf : "");
    json_decref(o);
}

/* A transfer ended: why it failed, if it did; its handle and buffers released (its tokens stay). */
static void finish_request(client *cl, creq *r, CURLcode res)
{
    long code = 0;
    curl_easy_getinfo(r->h, CURLINFO_RESPONSE_CODE, &code);
    const double t = dsacp_now() - cl->t0;
    if (res != CURLE_OK) set_error(r, "%s: %s", cl->completions, r->errbuf[0] ? r->errbuf : curl_easy_strerror(res));
    else if (code != 200) http_error(r, code);
    else if (!r->done) set_error(r, "the stream ended before 'data: [DONE]'");
    if (r->n == 0) r->first_s = r->finish_s = t; /* nothing observed: the answer's time */
    curl_multi_remove_handle(cl->multi, r->h);
    curl_easy_cleanup(r->h);
    r->h = NULL;
    free(r->body), free(r->buf);
    r->body = r->buf = NULL;
    cl->inflight--, cl->done++;
}

/* ---- the run ---- */

typedef struct arrival {
    double t;
    int64_t i;
} arrival;

static int cmp_arrival(const void *x, const void *y)
{
    const arrival *a = x, *b = y;
    return a->t < b->t ? -1 : a->t > b->t ? 1 : (a->i > b->i) - (a->i < b->i);
}

/* The requests' order of sending: by arrival, then by index (the in-process queue's order). */
static arrival *arrival_order(const workload *wl)
{
    arrival *o = malloc((size_t)(wl->n + 1) * sizeof *o);
    if (!o) return NULL;
    for (int64_t i = 0; i < wl->n; i++) o[i] = (arrival){wl->rq[i].arrival_s, i};
    qsort(o, (size_t)wl->n, sizeof *o, cmp_arrival);
    return o;
}

static void client_progress(client *cl, progress_state *ps)
{
    const dsacp_serve_progress p = {.done = cl->done, .total = cl->n, .generated = cl->generated,
                                    .elapsed_s = dsacp_now() - cl->t0, .kv_use = NAN};
    run_progress(ps, &p);
}

/* Every request sent at its time (realtime) or at once, at most `conc` in flight, until each has
 * ended. */
static int client_loop(client *cl, const workload *wl, const run_args *a, bool realtime, int64_t conc)
{
    arrival *ord = arrival_order(wl);
    if (!ord) return dsacp_error(DSACP_ENOMEM, "out of memory for %lld requests", (long long)wl->n);
    progress_state ps = {isatty(2) != 0, -1e9};
    int rc = DSACP_OK;
    int64_t next = 0;
    cl->t0 = dsacp_now();
    while (!rc && cl->done < cl->n) {
        double now = dsacp_now() - cl->t0;
        while (!rc && next < cl->n && cl->inflight < conc && (!realtime || ord[next].t <= now))
            rc = start_request(cl, wl, ord[next++].i, a);
        int running = 0, left = 0;
        if (!rc && curl_multi_perform(cl->multi, &running) != CURLM_OK) rc = dsacp_error(DSACP_EIO, "libcurl failed");
        CURLMsg *m;
        while (!rc && (m = curl_multi_info_read(cl->multi, &left)))
            if (m->msg == CURLMSG_DONE) {
                creq *r = NULL;
                curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&r);
                finish_request(cl, r, m->data.result);
            }
        client_progress(cl, &ps); /* rate-limited: a line every 5 s, or redrawn on a terminal */
        now = dsacp_now() - cl->t0;
        int wait_ms = 1000; /* at most: the progress line */
        if (next < cl->n && cl->inflight < conc)
            wait_ms = realtime ? (int)fmin(fmax(ceil((ord[next].t - now) * 1e3), 0), 1000) : 0;
        if (!rc && curl_multi_poll(cl->multi, NULL, 0, wait_ms, NULL) != CURLM_OK)
            rc = dsacp_error(DSACP_EIO, "libcurl failed while waiting");
    }
    free(ord);
    return rc;
}

/* GET URL: the answer's body (malloc'd, NUL-terminated) and status; DSACP_EIO naming the URL when
 * the server cannot be reached. */
static int http_get(const char *url, struct curl_slist *headers, char **body, long *code)
{
    creq r = {.prompt_tokens = -1};
    client dummy = {.t0 = dsacp_now()};
    r.cl = &dummy;
    r.h = curl_easy_init();
    if (!r.h) return dsacp_error(DSACP_ENOMEM, "out of memory");
    r.seen_code = true; /* a plain body */
    curl_easy_setopt(r.h, CURLOPT_URL, url);
    curl_easy_setopt(r.h, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(r.h, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(r.h, CURLOPT_WRITEDATA, &r);
    curl_easy_setopt(r.h, CURLOPT_ERRORBUFFER, r.errbuf);
    curl_easy_setopt(r.h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(r.h, CURLOPT_CONNECTTIMEOUT_MS, CLIENT_CONNECT_TIMEOUT_MS);
    curl_easy_setopt(r.h, CURLOPT_TIMEOUT_MS, 3 * CLIENT_CONNECT_TIMEOUT_MS);
    const CURLcode res = curl_easy_perform(r.h);
    curl_easy_getinfo(r.h, CURLINFO_RESPONSE_CODE, code);
    curl_easy_cleanup(r.h);
    free(r.tok), free(r.tok_s), free(r.error);
    if (res != CURLE_OK) {
        free(r.buf);
        return dsacp_error(DSACP_EIO, "cannot reach the server at %s: %s", url, r.errbuf[0] ? r.errbuf : curl_easy_strerror(res));
    }
    *body = r.buf ? r.buf : strdup("");
    return *body ? DSACP_OK : dsacp_error(DSACP_ENOMEM, "out of memory");
}

/* The server is reachable (GET /v1/models) and takes our key, and the model's name: --model-name,
 * else the first model the server lists. DSACP_EIO when it cannot be reached, refuses the key or
 * names no model. */
static int client_model(client *cl, const char *given)
{
    char *body = NULL;
    long code = 0;
    int rc = http_get(cl->models, cl->headers, &body, &code);
    json_t *o = rc ? NULL : json_loads(body, 0, NULL);
    const char *id = json_string_value(json_object_get(json_array_get(json_object_get(o, "data"), 0), "id"));
    const char *msg = json_string_value(json_object_get(json_object_get(o, "error"), "message"));
    if (!rc && given && code != 401 && code != 403) cl->model_name = strdup(given); /* its own list may be elsewhere */
    else if (!rc && code != 200)
        rc = dsacp_error(DSACP_EIO, "GET %s answered HTTP %ld: %.200s%s", cl->models, code, msg ? msg : body,
                         code == 401 || code == 403 ? " (the key is read from OPENAI_API_KEY)" : " (or give --model-name NAME)");
    else if (!rc && !id) rc = dsacp_error(DSACP_EIO, "GET %s lists no model (give --model-name NAME)", cl->models);
    else if (!rc) cl->model_name = strdup(id);
    if (!rc && !cl->model_name) rc = dsacp_error(DSACP_ENOMEM, "out of memory");
    json_decref(o);
    free(body);
    return rc;
}

/* The endpoints under --url (its trailing '/' dropped) and the headers every request sends. */
static int client_init(client *cl, const char *url)
{
    size_t n = strlen(url);
    while (n > 0 && url[n - 1] == '/') n--;
    cl->completions = malloc(n + sizeof "/v1/completions");
    cl->models = malloc(n + sizeof "/v1/models");
    if (!cl->completions || !cl->models) return dsacp_error(DSACP_ENOMEM, "out of memory");
    snprintf(cl->completions, n + sizeof "/v1/completions", "%.*s/v1/completions", (int)n, url);
    snprintf(cl->models, n + sizeof "/v1/models", "%.*s/v1/models", (int)n, url);
    /* "Expect:" off: libcurl would wait for a 100 Continue before a large body. $OPENAI_API_KEY,
     * when set, is sent as the bearer token (vllm bench serve does the same). */
    const char *key = getenv("OPENAI_API_KEY");
    char auth[1024] = "";
    if (key && key[0] && (size_t)snprintf(auth, sizeof auth, "Authorization: Bearer %s", key) >= sizeof auth)
        return dsacp_error(DSACP_EINVAL, "OPENAI_API_KEY: longer than %zu bytes", sizeof auth - 32);
    const char *const hs[] = {"Content-Type: application/json", "Accept: text/event-stream", "Expect:", auth};
    for (size_t k = 0; k < sizeof hs / sizeof hs[0] && hs[k][0]; k++) {
        struct curl_slist *l = curl_slist_append(cl->headers, hs[k]);
        if (!l) return dsacp_error(DSACP_ENOMEM, "out of memory");
        cl->headers = l;
    }
    cl->multi = curl_multi_init();
    return cl->multi ? DSACP_OK : dsacp_error(DSACP_ENOMEM, "out of memory for libcurl");
}

static void client_free(client *cl)
{
    for (int64_t i = 0; cl->rq && i < cl->n; i++) {
        creq *r = &cl->rq[i];
        if (r->h) curl_multi_remove_handle(cl->multi, r->h), curl_easy_cleanup(r->h);
        free(r->body), free(r->buf), free(r->tok), free(r->tok_s), free(r->error);
    }
    free(cl->rq);
    if (cl->multi) curl_multi_cleanup(cl->multi);
    curl_slist_free_all(cl->headers);
    free(cl->completions), free(cl->models), free(cl->model_name);
}

/* What was observed, as the serving loop's result (its tokens moved out of the client); a text
 * prompt's length is the server's count. errors[i]: request i's failure (moved too). */
static int client_result(client *cl, workload *wl, dsacp_serve_result *res, char **errors, int64_t *n_failed)
{
    res->out = calloc((size_t)cl->n + 1, sizeof *res->out);
    if (!res->out) return dsacp_error(DSACP_ENOMEM, "out of memory for the report");
    res->n_requests = cl->n;
    for (int64_t i = 0; i < cl->n; i++) {
        creq *r = &cl->rq[i];
        dsacp_serve_out *o = &res->out[i];
        o->tokens = r->tok, o->token_s = r->tok_s, o->n_tokens = r->n;
        o->arrival_s = r->sent_s, o->first_s = r->first_s, o->finish_s = r->finish_s;
        r->tok = NULL, r->tok_s = NULL;
        if (wl->text && wl->text[i]) wl->rq[i].prompt_len = r->prompt_tokens > 0 ? r->prompt_tokens : 0;
        errors[i] = r->error, r->error = NULL;
        *n_failed += errors[i] != NULL;
        res->duration_s = fmax(res->duration_s, o->finish_s);
    }
    return DSACP_OK;
}

/* The report: --json committed, then the text on stdout. */
static int client_report(const client *cl, const run_args *a, const workload *wl, const dsacp_serve_result *res,
                         char *const *errors, int64_t n_failed, cli_output *json_out)
{
    char *text = NULL, *jtext = NULL;
    size_t len = 0;
    const report_ctx c = {.wl = wl, .res = res, .model = cl->model_name, .W = 1, .url = a->url,
                          .errors = (const char *const *)errors, .n_failed = n_failed};
    int rc = run_report_build(&c, json_out, a->json_path != NULL, &text, &len, &jtext);
    if (!rc) rc = cli_print_buffer(text, len);
    free(text), free(jtext);
    return rc;
}

int run_client(const cli_opt *opts, const run_args *a)
{
    workload wl = {0};
    client cl = {0};
    dsacp_serve_result res = {0};
    char **errors = NULL;
    int64_t n_failed = 0, conc = INT64_MAX;
    cli_output json_out;
    cli_output_init(&json_out);
    const char *s = cli_get(opts, "max-concurrency");
    if (s && !cli_int("run", "max-concurrency", s, 1, 1 << 20, &conc)) return 2; /* checked at parse already */
    int ret = client_workload(opts, a, &wl), rc = DSACP_OK;
    if (ret == CLI_RUN && (rc = cli_output_open("run", "json", a->json_path, &json_out))) ret = cli_output_exit(rc);
    if (ret == CLI_RUN) {
        if (curl_global_init(CURL_GLOBAL_DEFAULT)) rc = dsacp_error(DSACP_ENOMEM, "libcurl cannot start");
        if (!rc) rc = client_init(&cl, a->url);
        if (!rc) rc = client_model(&cl, cli_get(opts, "model-name"));
        cl.n = wl.n;
        cl.rq = rc ? NULL : calloc((size_t)wl.n + 1, sizeof *cl.rq);
        errors = rc ? NULL : calloc((size_t)wl.n + 1, sizeof *errors);
        if (!rc && (!cl.rq || !errors)) rc = dsacp_error(DSACP_ENOMEM, "out of memory for %lld requests", (long long)wl.n);
        if (!rc) rc = client_loop(&cl, &wl, a, !cli_get(opts, "no-realtime"), conc);
        if (!rc) rc = client_result(&cl, &wl, &res, errors, &n_failed);
        if (!rc) rc = client_report(&cl, a, &wl, &res, errors, n_failed, &json_out);
        ret = rc ? cli_fail("run", rc) : 0;
        client_free(&cl);
        curl_global_cleanup();
    }
    for (int64_t i = 0; errors && i < wl.n; i++) free(errors[i]);
    free(errors);
    cli_output_abort(&json_out);
    dsacp_serve_result_free(&res);
    run_workload_free(&wl);
    return ret;
}
