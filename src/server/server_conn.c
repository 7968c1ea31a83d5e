/*
 * server_conn.c -- one HTTP request of the server (server_conn.h): its body, its submission to
 * the live loop, the loop's events turned into response bytes (text through the streaming
 * detokenizer and the stop strings, reasoning split at "</think>", SSE chunks or one JSON body),
 * and the waits of the connection's thread, which watch the client's socket so that a client
 * that leaves is aborted within one wait step (SRV_WAIT_S) and its KV freed at the loop's next step.
 */
#include "server/server_conn.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

/* How often a waiting connection thread looks at its client's socket (seconds). */
#define SRV_WAIT_S 0.05

typedef struct sbuf {
    char *p;
    size_t len, cap;
} sbuf;

struct srv_req {
    dsacp_server *s;
    atomic_int refs;
    pthread_mutex_t mu;          /* guards everything below that the sink and the HTTP thread share */
    pthread_cond_t cv;           /* signalled at every event */
    int fd;                      /* the client's socket (MHD's) */
    double t_arrival;            /* dsacp_live_now() when the request's headers arrived */
    char method[16];
    char *path;
    sbuf body;
    bool too_large;
    /* the answer (errors, GET routes, a non-streamed response) */
    int http;
    const char *ctype;
    char *answer;
    /* generation */
    oai_kind kind;
    oai_request rq;
    bool parsed, submitted;
    uint64_t id;
    char idstr[48];
    int64_t created;
    dsacp_detok *detok;
    oai_stop *stop[2];           /* [0] the content's stop strings, [1] the reasoning's */
    bool reasoning;              /* chat thinking mode, before the "</think>" token */
    sbuf scratch;                /* one token's text */
    int64_t n_gen;               /* tokens the client's response counts */
    double t_last;
    int32_t *ids;                /* return_token_ids without stream: every id */
    int64_t n_ids, cap_ids;
    sbuf text, reason;           /* the non-streamed response's content and reasoning */
    sbuf out;                    /* a stream's bytes not yet read by MHD, from out_pos */
    size_t out_pos;
    bool started;                /* the first event arrived */
    bool done;                   /* the client's response is complete (answer set or stream ended) */
    bool final_seen;             /* the loop's final event came (its reference dropped) */
    bool gone;                   /* the client went away */
};

void srv_log(dsacp_server *s, const char *fmt, ...)
{
    if (!s->opt.log) return;
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    s->opt.log(s->opt.log_arg, line);
}

static bool sbuf_add(sbuf *b, const char *data, size_t len)
{
    if (len > SIZE_MAX - b->len - 1) return false;
    if (b->len + len + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + len + 1) cap = cap > SIZE_MAX / 2 ? b->len + len + 1 : cap * 2;
        char *p = realloc(b->p, cap);
        if (!p) return false;
        b->p = p, b->cap = cap;
    }
    if (len) memcpy(b->p + b->len, data, len);
    b->len += len;
    b->p[b->len] = 0;
    return true;
}

/* Appends a malloc'd string and frees it (false when it is NULL: out of memory). */
static bool sbuf_take(sbuf *b, char *s)
{
    const bool ok = s && sbuf_add(b, s, strlen(s));
    free(s);
    return ok;
}

srv_req *srv_req_new(dsacp_server *s, const char *method, const char *path, int fd)
{
    srv_req *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->path = strdup(path);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    const bool ok = r->path && !pthread_mutex_init(&r->mu, NULL) && !pthread_cond_init(&r->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (!ok) {
        free(r->path);
        free(r);
        return NULL;
    }
    r->s = s;
    atomic_init(&r->refs, 1);
    r->fd = fd;
    r->t_arrival = dsacp_live_now();
    snprintf(r->method, sizeof r->method, "%s", method);
    r->http = 500;
    pthread_mutex_lock(&s->mu);
    s->active++;
    pthread_mutex_unlock(&s->mu);
    return r;
}

void srv_req_ref(srv_req *r) { atomic_fetch_add(&r->refs, 1); }

void srv_req_unref(srv_req *r)
{
    if (!r || atomic_fetch_sub(&r->refs, 1) != 1) return;
    dsacp_server *s = r->s;
    if (r->parsed) oai_request_free(&r->rq);
    dsacp_detok_free(r->detok);
    oai_stop_free(r->stop[0]);
    oai_stop_free(r->stop[1]);
    free(r->scratch.p), free(r->text.p), free(r->reason.p), free(r->out.p), free(r->body.p);
    free(r->ids), free(r->answer), free(r->path);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    free(r);
    pthread_mutex_lock(&s->mu);
    s->active--;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

bool srv_req_append(srv_req *r, const char *data, size_t len)
{
    if (r->too_large || len > r->s->opt.max_body_bytes - r->body.len) {
        r->too_large = true;
        return false;
    }
    if (!sbuf_add(&r->body, data, len)) r->too_large = true; /* out of memory: as if too large */
    return !r->too_large;
}

bool srv_req_too_large(const srv_req *r) { return r->too_large; }

void srv_req_set_answer(srv_req *r, int http, const char *content_type, char *body)
{
    free(r->answer);
    r->http = body ? http : 500;
    r->ctype = content_type;
    r->answer = body;
}

void srv_req_set_error(srv_req *r, const oai_error *e) { srv_req_set_answer(r, e->http, "application/json", oai_error_json(e)); }

int srv_req_http(const srv_req *r) { return r->http; }
bool srv_req_answered(const srv_req *r) { return r->answer != NULL; }
const char *srv_req_content_type(const srv_req *r) { return r->ctype ? r->ctype : "application/json"; }
const char *srv_req_body(const srv_req *r, size_t *len)
{
    *len = r->answer ? strlen(r->answer) : 0;
    return r->answer ? r->answer : "";
}
const char *srv_req_method(const srv_req *r) { return r->method; }
const char *srv_req_path(const srv_req *r) { return r->path; }
double srv_req_arrival(const srv_req *r) { return r->t_arrival; }

/* ---- the events: text, chunks, the end ---- */

/* The text of one more token through the streaming detokenizer, into r->scratch. */
static bool detok_piece(srv_req *r, int32_t token, bool flush)
{
    for (;;) {
        size_t len = 0;
        const int st = flush ? dsacp_detok_flush(r->detok, r->scratch.p, r->scratch.cap, &len)
                             : dsacp_detok_push(r->detok, token, r->scratch.p, r->scratch.cap, &len);
        if (st == DSACP_OK || st == DSACP_EINVAL) { /* EINVAL: an id of the model's without a token: no text */
            r->scratch.len = st == DSACP_OK ? len : 0;
            return true;
        }
        if (st != DSACP_ERANGE) return false;
        char *p = realloc(r->scratch.p, len + 1);
        if (!p) return false;
        r->scratch.p = p, r->scratch.cap = len + 1;
    }
}

/* Text released by the stop strings of the current phase into piece; *matched when one ended it. */
static bool stop_text(srv_req *r, const char *text, size_t len, bool flush, sbuf *piece, bool *matched)
{
    const char *out = NULL;
    size_t out_len = 0;
    oai_stop *st = r->stop[r->reasoning ? 1 : 0];
    const int rc = flush ? oai_stop_flush(st, &out, &out_len) : oai_stop_push(st, text, len, &out, &out_len, matched);
    return rc == DSACP_OK && sbuf_add(piece, out, out_len);
}

/* One token's text (its phase's; the "</think>" token ends the reasoning and shows nothing), and
 * with `flush` whatever was held back. */
static bool token_text(srv_req *r, int32_t token, bool flush, sbuf *piece, bool *matched)
{
    if (token >= 0 && r->reasoning && token == r->s->think_end) {
        if (!detok_piece(r, -1, true) || !stop_text(r, r->scratch.p, r->scratch.len, false, piece, matched) ||
            (!*matched && !stop_text(r, NULL, 0, true, piece, matched)))
            return false;
        r->reasoning = false; /* the rest is content */
        return true;
    }
    if (token >= 0 && (!detok_piece(r, token, false) || !stop_text(r, r->scratch.p, r->scratch.len, false, piece, matched)))
        return false;
    if (!flush || *matched) return true;
    return detok_piece(r, -1, true) && stop_text(r, r->scratch.p, r->scratch.len, false, piece, matched) &&
           (*matched || stop_text(r, NULL, 0, true, piece, matched));
}

static const char *finish_name(dsacp_finish f)
{
    return f == DSACP_FINISH_LENGTH ? "length" : f == DSACP_FINISH_STOP ? "stop" : f == DSACP_FINISH_ABORT ? "abort" : "error";
}

/* The client's response is complete: metrics, and for a stream the usage chunk and [DONE]. */
static bool finish_response(srv_req *r, const char *reason, double t)
{
    dsacp_server *s = r->s;
    r->done = true;
    oai_metrics_finished(s->metrics, t - r->t_arrival, r->rq.prompt_len, r->n_gen, reason);
    if (!r->rq.stream) return true;
    if (r->rq.include_usage &&
        !sbuf_take(&r->out, oai_usage_sse(r->kind, r->idstr, s->name, r->created, r->rq.prompt_len, r->n_gen)))
        return false;
    return sbuf_add(&r->out, "data: [DONE]\n\n", 14);
}

/* A non-streamed response's body (echo: the prompt's text before the completion). */
static char *response_body(srv_req *r, const char *reason)
{
    dsacp_server *s = r->s;
    sbuf text = {0};
    if (r->rq.echo) {
        size_t need = 0;
        dsacp_tokenizer_decode(s->tok, r->rq.prompt, r->rq.prompt_len, r->rq.skip_special_tokens, NULL, 0, &need);
        char *p = malloc(need + 1);
        if (!p || dsacp_tokenizer_decode(s->tok, r->rq.prompt, r->rq.prompt_len, r->rq.skip_special_tokens, p, need + 1,
                                         &need) || !sbuf_add(&text, p, need)) {
            free(p);
            free(text.p);
            return NULL;
        }
        free(p);
    }
    if (!sbuf_add(&text, r->text.p ? r->text.p : "", r->text.len)) {
        free(text.p);
        return NULL;
    }
    char *body = oai_response_json(r->kind, r->idstr, s->name, r->created, text.p, r->rq.thinking ? (r->reason.p ? r->reason.p : "") : NULL,
                                   reason, r->rq.prompt_len, r->n_gen, r->rq.return_token_ids ? r->ids : NULL,
                                   r->rq.return_token_ids ? r->n_ids : 0);
    free(text.p);
    return body;
}

/* The metrics of a token the client gets: time to the first, or since the previous one. */
static void observe_token(srv_req *r, int32_t token, double t)
{
    if (r->n_gen == 0) oai_metrics_ttft(r->s->metrics, t - r->t_arrival);
    else oai_metrics_itl(r->s->metrics, t - r->t_last);
    r->t_last = t;
    r->n_gen++;
    if (!r->rq.return_token_ids || r->rq.stream) return;
    if (r->n_ids == r->cap_ids) {
        const int64_t cap = r->cap_ids ? 2 * r->cap_ids : 64;
        int32_t *p = realloc(r->ids, (size_t)cap * sizeof *p);
        if (!p) return; /* the ids are then short: out of memory is reported by the text's own appends */
        r->ids = p, r->cap_ids = cap;
    }
    r->ids[r->n_ids++] = token;
}

/* An error as the whole answer (before any token) or, in a stream that started, an error event. */
static void answer_error(srv_req *r, int http, const char *type, const char *msg, double t)
{
    oai_error e;
    oai_error_set(&e, http, type, "", "%s", msg);
    if (r->rq.stream && r->n_gen > 0) {
        char *j = oai_error_json(&e);
        if (!(j && sbuf_add(&r->out, "data: ", 6) && sbuf_add(&r->out, j, strlen(j)) && sbuf_add(&r->out, "\n\n", 2)))
            r->gone = true; /* out of memory: the stream is cut */
        free(j);
    } else {
        srv_req_set_error(r, &e);
    }
    finish_response(r, "error", t);
}

/* A token event or the final one, while the client is there. *abort_now: a stop string ended
 * the response before the loop did. */
static void emit(srv_req *r, const dsacp_live_event *ev, bool *abort_now)
{
    const bool fin = ev->finish != DSACP_FINISH_NONE;
    if (fin && ev->token < 0 && r->n_gen == 0 && ev->finish != DSACP_FINISH_LENGTH && ev->finish != DSACP_FINISH_STOP) {
        /* ended before any token: an error status, not an empty completion */
        if (ev->finish == DSACP_FINISH_ERROR)
            answer_error(r, ev->status == DSACP_ECAPACITY || ev->status == DSACP_EINVAL || ev->status == DSACP_ERANGE ? 400 : 500,
                         ev->status == DSACP_ECAPACITY || ev->status == DSACP_EINVAL ? "invalid_request_error" : "server_error",
                         ev->message && *ev->message ? ev->message : dsacp_strerror(ev->status), ev->t_s);
        else answer_error(r, 503, "service_unavailable", "the server is shutting down", ev->t_s);
        return;
    }
    if (ev->finish == DSACP_FINISH_ERROR && ev->token < 0) {
        answer_error(r, 500, "server_error", ev->message && *ev->message ? ev->message : dsacp_strerror(ev->status), ev->t_s);
        return;
    }
    const bool in_reasoning = r->reasoning, first = r->n_gen == 0;
    if (ev->token >= 0) observe_token(r, ev->token, ev->t_s);
    sbuf piece = {0};
    bool matched = false, ok = sbuf_add(&piece, "", 0) && token_text(r, ev->token, fin, &piece, &matched);
    const char *reason = matched ? "stop" : fin ? finish_name(ev->finish) : NULL;
    if (matched && !fin) *abort_now = true;
    if (ok && r->rq.stream) {
        ok = sbuf_take(&r->out, oai_chunk_sse(r->kind, r->idstr, r->s->name, r->created, in_reasoning ? "" : piece.p,
                                              in_reasoning ? piece.p : NULL, first, reason,
                                              r->rq.return_token_ids && ev->token >= 0 ? &ev->token : NULL,
                                              r->rq.return_token_ids && ev->token >= 0 ? 1 : 0));
    } else if (ok) {
        ok = sbuf_add(in_reasoning ? &r->reason : &r->text, piece.p, piece.len);
    }
    free(piece.p);
    if (ok && reason && !r->rq.stream) {
        char *body = response_body(r, reason);
        srv_req_set_answer(r, 200, "application/json", body);
        ok = body != NULL;
    }
    if (ok && reason) ok = finish_response(r, reason, ev->t_s);
    if (!ok) { /* out of memory: the request ends, its connection is closed */
        srv_log(r->s, "%s: cut: %s", r->idstr, dsacp_last_error());
        r->gone = true;
        if (!fin) *abort_now = true;
    }
}

void srv_req_event(srv_req *r, const dsacp_live_event *ev)
{
    bool abort_now = false;
    const bool fin = ev->finish != DSACP_FINISH_NONE;
    pthread_mutex_lock(&r->mu);
    r->started = true;
    if (!r->done && !r->gone) emit(r, ev, &abort_now);
    else if (fin && !r->done) oai_metrics_finished(r->s->metrics, ev->t_s - r->t_arrival, r->rq.prompt_len, r->n_gen, "abort");
    if (fin) r->final_seen = true;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    if (abort_now) dsacp_live_abort(r->s->lv, ev->id);
    if (fin) srv_req_unref(r); /* the loop's reference */
}

/* ---- the HTTP side's waits ---- */

/* The client closed its end (or the socket failed); data it sent meanwhile (a pipelined
 * request) is not a hang-up. */
static bool socket_gone(int fd)
{
    if (fd < 0) return false;
    struct pollfd p = {.fd = fd, .events = POLLIN | POLLRDHUP};
    if (poll(&p, 1, 0) <= 0) return false;
    if (p.revents & (POLLHUP | POLLERR | POLLNVAL | POLLRDHUP)) return true;
    char c;
    const ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

static void wait_step(srv_req *r)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_nsec += (long)(SRV_WAIT_S * 1e9);
    if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
    pthread_cond_timedwait(&r->cv, &r->mu, &ts);
}

/* With r->mu held: waits until `stream_start` (the first event) or the response's end; false when
 * the client went away (its request then aborted) or the loop ended without answering. */
static bool wait_for(srv_req *r, bool stream_start)
{
    dsacp_server *s = r->s;
    for (;;) {
        if (r->gone) return false;
        if (r->done || (stream_start && r->started) || (r->out_pos < r->out.len)) return true;
        if (atomic_load(&s->run_done) && !r->final_seen) { /* no event will come: the loop has returned */
            r->final_seen = true;
            atomic_fetch_sub(&r->refs, 1); /* the loop's reference (the HTTP side still holds one) */
            oai_error e;
            oai_error_set(&e, 503, "service_unavailable", "", "the server is shutting down");
            if (!r->rq.stream || !r->started) srv_req_set_error(r, &e);
            r->done = true;
            return !r->rq.stream || !r->started;
        }
        wait_step(r);
        if (!r->done && socket_gone(r->fd)) {
            r->gone = true;
            r->http = 499; /* nginx's "client closed request" in the access log */
            const uint64_t id = r->id;
            pthread_mutex_unlock(&r->mu);
            dsacp_live_abort(s->lv, id);
            pthread_mutex_lock(&r->mu);
            return false;
        }
    }
}

/* A fresh hex id: "cmpl-" / "chatcmpl-" and 32 hex digits from the server's counter and the clock. */
static void make_id(srv_req *r)
{
    uint64_t x = atomic_fetch_add(&r->s->next_id, 1), h[2];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    x ^= (uint64_t)ts.tv_nsec * 0x9E3779B97F4A7C15ull ^ (uint64_t)ts.tv_sec;
    for (int k = 0; k < 2; k++) { /* splitmix64 */
        uint64_t z = (x += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        h[k] = z ^ (z >> 31);
    }
    snprintf(r->idstr, sizeof r->idstr, "%s-%016llx%016llx", r->kind == OAI_CHAT ? "chatcmpl" : "cmpl",
             (unsigned long long)h[0], (unsigned long long)h[1]);
    r->created = (int64_t)ts.tv_sec;
}

/* The parsed request's streaming state: detokenizer, stop strings, phase. */
static int prepare(srv_req *r)
{
    const oai_request *q = &r->rq;
    make_id(r);
    r->reasoning = q->kind == OAI_CHAT && q->thinking;
    int rc = dsacp_detok_create(r->s->tok, q->skip_special_tokens, &r->detok);
    if (!rc) rc = oai_stop_create(q->stop, q->n_stop, &r->stop[0]);
    if (!rc && r->reasoning) rc = oai_stop_create(q->stop, q->n_stop, &r->stop[1]);
    return rc;
}

/* Submits the request (the loop's reference taken first); the status of dsacp_live_submit. */
static int submit(srv_req *r)
{
    const oai_request *q = &r->rq;
    uint64_t seed = q->seed;
    if (!q->has_seed) seed = atomic_fetch_add(&r->s->next_id, 1) * 0x9E3779B97F4A7C15ull ^ (uint64_t)(r->t_arrival * 1e9);
    dsacp_live_request lr = {.prompt = q->prompt, .prompt_len = q->prompt_len, .max_new_tokens = q->max_tokens,
                             .stop_ids = q->stop_ids, .n_stop = q->n_stop_ids, .temperature = q->temperature,
                             .top_p = q->top_p, .seed = seed, .user = r};
    srv_req_ref(r);
    pthread_mutex_lock(&r->mu); /* the sink waits for r->id */
    const int st = dsacp_live_submit(r->s->lv, &lr, &r->id);
    r->submitted = st == DSACP_OK;
    pthread_mutex_unlock(&r->mu);
    if (st) srv_req_unref(r);
    return st;
}

/* A refused submit as the client's answer: 429 when the queue is full, 503 while stopping, 400
 * for what the loop refuses about the request. */
static void submit_refused(srv_req *r, int st)
{
    oai_error e;
    const char *msg = dsacp_last_error();
    if (st == DSACP_EBUSY && (atomic_load(&r->s->stopping) || atomic_load(&r->s->run_done)))
        oai_error_set(&e, 503, "service_unavailable", "", "the server is shutting down");
    else if (st == DSACP_EBUSY)
        oai_error_set(&e, 429, "rate_limit_error", "", "too many requests are waiting: retry later");
    else if (st == DSACP_EINVAL || st == DSACP_ERANGE)
        oai_error_set(&e, 400, "invalid_request_error", "", "%s", msg);
    else
        oai_error_set(&e, 500, "server_error", "", "%s", msg);
    srv_req_set_error(r, &e);
}

srv_outcome srv_req_generate(srv_req *r, oai_kind kind)
{
    dsacp_server *s = r->s;
    oai_error e;
    r->kind = kind;
    if (oai_request_parse(kind, r->body.p ? r->body.p : "", r->body.len, s->tok, s->cfg, s->opt.default_max_tokens, &r->rq, &e)) {
        srv_req_set_error(r, &e);
        return SRV_ANSWER;
    }
    r->parsed = true;
    if (r->rq.model && strcmp(r->rq.model, s->name) != 0) {
        oai_error_set(&e, 404, "model_not_found", "model", "The model '%s' does not exist.", r->rq.model);
        srv_req_set_error(r, &e);
        return SRV_ANSWER;
    }
    if (prepare(r)) {
        oai_error_set(&e, 500, "server_error", "", "%s", dsacp_last_error());
        srv_req_set_error(r, &e);
        return SRV_ANSWER;
    }
    const int st = atomic_load(&s->stopping) ? DSACP_EBUSY : submit(r);
    if (st) {
        submit_refused(r, st);
        return SRV_ANSWER;
    }
    pthread_mutex_lock(&r->mu);
    const bool ok = wait_for(r, r->rq.stream);
    const bool stream = ok && r->rq.stream && !r->answer;
    pthread_mutex_unlock(&r->mu);
    if (stream) r->http = 200;
    return !ok ? SRV_GONE : stream ? SRV_STREAM : SRV_ANSWER;
}

void srv_req_closed(srv_req *r)
{
    pthread_mutex_lock(&r->mu);
    const bool abort_it = r->submitted && !r->done && !r->gone;
    if (abort_it) r->gone = true, r->http = 499;
    const uint64_t id = r->id;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    if (abort_it) dsacp_live_abort(r->s->lv, id);
}

ssize_t srv_req_read(srv_req *r, char *buf, size_t max)
{
    pthread_mutex_lock(&r->mu);
    ssize_t n = -1;
    if (!wait_for(r, false)) n = -2;
    else if (r->out_pos < r->out.len) {
        size_t k = r->out.len - r->out_pos;
        if (k > max) k = max;
        if (k > (size_t)SSIZE_MAX) k = (size_t)SSIZE_MAX;
        memcpy(buf, r->out.p + r->out_pos, k);
        r->out_pos += k;
        if (r->out_pos == r->out.len) r->out_pos = r->out.len = 0;
        n = (ssize_t)k;
    }
    pthread_mutex_unlock(&r->mu);
    return n;
}
