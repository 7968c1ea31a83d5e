/*
 * server.c -- dsacp_server_* (include/dsacp_server.h; docs/server.md): the server's lifecycle on
 * every rank of the engine's group, the live loop's sink, and the stop.
 *
 * Rank 0 holds the socket (server_http.c) and the requests (server_conn.c); every rank runs the
 * live loop in dsacp_server_run. The stop is a flag (dsacp_server_stop, async-signal-safe) that a
 * watcher thread of rank 0 looks at every 50 ms: it stops accepting connections, lets the loop
 * drain (dsacp_live_shutdown(false)), and after grace_s aborts what is left; once the loop has
 * returned on every rank, rank 0 waits for the responses still being sent, then stops MHD.
 */
#include "server/server_conn.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* How often the watcher looks at the stop flag (seconds). */
#define SERVER_WATCH_S 0.05

void dsacp_server_options_default(dsacp_server_options *o)
{
    memset(o, 0, sizeof *o);
    o->host = "127.0.0.1";
    o->port = 8000;
    o->max_body_bytes = (size_t)4 << 20;
    o->timeout_s = 60;
    o->max_connections = 512;
    o->default_max_tokens = 16;
    dsacp_live_options_default(&o->live);
}

static int check_options(const dsacp_server_options *o, const dsacp_tokenizer *tok, const dsacp_config *cfg)
{
    if (!o->host || !*o->host) return dsacp_error(DSACP_EINVAL, "dsacp_server_create: opt.host is empty");
    if (!o->served_model_name || !*o->served_model_name)
        return dsacp_error(DSACP_EINVAL, "dsacp_server_create: opt.served_model_name is empty");
    if (o->port < 0 || o->port > 65535)
        return dsacp_error(DSACP_EINVAL, "dsacp_server_create: opt.port = %d is not in [0, 65535]", o->port);
    if (o->max_body_bytes < 1) return dsacp_error(DSACP_EINVAL, "dsacp_server_create: opt.max_body_bytes is 0");
    if (!(o->timeout_s >= 1e-3 && o->timeout_s <= 1e6))
        return dsacp_error(DSACP_EINVAL, "dsacp_server_create: opt.timeout_s = %g is not in [0.001, 1e6]", o->timeout_s);
    if (o->max_connections < 1)
        return dsacp_error(DSACP_EINVAL, "dsacp_server_create: opt.max_connections = %d is below 1", o->max_connections);
    if (o->default_max_tokens < 1)
        return dsacp_error(DSACP_EINVAL, "dsacp_server_create: opt.default_max_tokens = %lld is below 1",
                           (long long)o->default_max_tokens);
    if (!tok) return dsacp_error(DSACP_EINVAL, "dsacp_server_create: tok is NULL on rank 0");
    if (dsacp_tokenizer_vocab_size(tok) > cfg->vocab_size)
        return dsacp_error(DSACP_EINVAL, "dsacp_server_create: the tokenizer's %lld ids do not fit the model's vocab_size %lld",
                           (long long)dsacp_tokenizer_vocab_size(tok), (long long)cfg->vocab_size);
    return DSACP_OK;
}

static char *copy_string(const char *text, int *rc)
{
    if (!text || *rc) return NULL;
    char *c = strdup(text);
    if (!c) *rc = dsacp_error(DSACP_ENOMEM, "dsacp_server_create: out of memory");
    return c;
}

/* This rank's part before the loop: options (rank 0), copies, locks. */
static int server_init(dsacp_server *s, dsacp_engine *e, const dsacp_tokenizer *tok, const dsacp_server_options *opt)
{
    s->e = e;
    s->tok = tok;
    s->cfg = dsacp_engine_config(e);
    s->opt = *opt;
    s->listen_fd = -1;
    s->port = -1;
    s->think_end = -1;
    s->created = (int64_t)time(NULL);
    atomic_init(&s->stop_requested, 0);
    atomic_init(&s->stopping, false);
    atomic_init(&s->run_done, false);
    atomic_init(&s->next_id, 1);
    if (pthread_mutex_init(&s->mu, NULL)) return dsacp_error(DSACP_ENOMEM, "dsacp_server_create: no mutex");
    if (pthread_cond_init(&s->cv, NULL)) {
        pthread_mutex_destroy(&s->mu);
        return dsacp_error(DSACP_ENOMEM, "dsacp_server_create: no condition variable");
    }
    s->locks = true;
    if (!s->root) return DSACP_OK;
    int rc = check_options(opt, tok, s->cfg);
    s->host = copy_string(opt->host, &rc);
    s->name = copy_string(opt->served_model_name, &rc);
    s->api_key = copy_string(opt->api_key, &rc);
    s->opt.host = s->host, s->opt.served_model_name = s->name, s->opt.api_key = s->api_key;
    if (!rc) s->think_end = dsacp_tokenizer_token_id(tok, "</think>");
    if (!rc) rc = oai_metrics_create(&s->metrics);
    return rc;
}

int dsacp_server_create(dsacp_engine *e, const dsacp_tokenizer *tok, const dsacp_server_options *opt,
                        dsacp_server **out)
{
    *out = NULL;
    if (!e || !opt) return dsacp_error(DSACP_EINVAL, "dsacp_server_create: %s is NULL", e ? "opt" : "e");
    dsacp_comm *comm = dsacp_engine_comm(e);
    dsacp_server *s = calloc(1, sizeof *s);
    int rc = s ? DSACP_OK : dsacp_error(DSACP_ENOMEM, "dsacp_server_create: out of memory");
    if (s) {
        s->root = !comm || dsacp_comm_rank(comm) == 0;
        rc = server_init(s, e, tok, opt);
    }
    /* live_create is collective: every rank enters it or none */
    if (comm) rc = dsacp_comm_agree_phase(comm, rc, -1);
    if (!rc) rc = dsacp_live_create(e, &opt->live, &s->lv);
    if (comm) rc = dsacp_comm_agree_phase(comm, rc, -1);
    if (!rc && s->root) rc = srv_http_start(s); /* a bind failure fails every rank */
    if (comm) rc = dsacp_comm_agree_phase(comm, rc, -1);
    if (rc) {
        dsacp_server_free(s);
        return rc;
    }
    *out = s;
    return DSACP_OK;
}

int dsacp_server_port(const dsacp_server *s) { return s && s->root ? s->port : -1; }

void dsacp_server_stop(dsacp_server *s)
{
    if (s && s->root) atomic_store(&s->stop_requested, 1);
}

static void sink(void *arg, const dsacp_live_event *ev)
{
    (void)arg;
    srv_req_event(ev->user, ev);
}

static void sleep_s(double t)
{
    struct timespec ts = {(time_t)t, (long)((t - floor(t)) * 1e9)};
    nanosleep(&ts, NULL);
}

typedef struct watch_args {
    dsacp_server *s;
    double grace_s;
} watch_args;

/* Rank 0's watcher: the stop flag -> stop accepting, drain, abort after grace_s. Ends with the loop. */
static void *watch(void *arg)
{
    const watch_args *w = arg;
    dsacp_server *s = w->s;
    double t_stop = -1;
    bool aborted = false;
    while (!atomic_load(&s->run_done)) {
        sleep_s(SERVER_WATCH_S);
        const double now = dsacp_live_now();
        if (t_stop < 0 && atomic_load(&s->stop_requested)) {
            t_stop = now;
            atomic_store(&s->stopping, true);
            srv_http_quiesce(s);
            dsacp_live_shutdown(s->lv, false);
            srv_log(s, "stopping: no new connections; requests in flight get %.0f s to finish", w->grace_s);
        } else if (t_stop >= 0 && !aborted && now - t_stop >= w->grace_s) {
            aborted = true;
            dsacp_live_shutdown(s->lv, true);
            srv_log(s, "stopping: aborting the requests still in flight");
        }
    }
    return NULL;
}

/* Rank 0 after the loop: the responses still being sent get up to `bound_s` seconds, then MHD stops. */
static void drain_http(dsacp_server *s, double bound_s)
{
    srv_http_quiesce(s);
    const double end = dsacp_live_now() + bound_s;
    pthread_mutex_lock(&s->mu);
    while (s->active > 0 && dsacp_live_now() < end) {
        pthread_mutex_unlock(&s->mu);
        sleep_s(SERVER_WATCH_S);
        pthread_mutex_lock(&s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    srv_http_stop(s);
}

int dsacp_server_run(dsacp_server *s, double grace_s)
{
    if (!s) return dsacp_error(DSACP_EINVAL, "dsacp_server_run: s is NULL");
    if (!(grace_s >= 0)) grace_s = 0;
    if (!s->root) return dsacp_live_run(s->lv, sink, s);
    watch_args w = {s, grace_s};
    pthread_t th;
    const bool watching = pthread_create(&th, NULL, watch, &w) == 0;
    if (!watching) { /* no watcher: nothing could stop the loop; end it now, on every rank */
        atomic_store(&s->stopping, true);
        dsacp_live_shutdown(s->lv, true);
    }
    int rc = dsacp_live_run(s->lv, sink, s);
    atomic_store(&s->run_done, true);
    dsacp_live_shutdown(s->lv, true); /* a submit racing the end is refused */
    if (watching) pthread_join(th, NULL);
    drain_http(s, fmax(1.0, fmin(grace_s, s->opt.timeout_s)));
    if (!watching && !rc) rc = dsacp_error(DSACP_ENOMEM, "dsacp_server_run: cannot start the stop watcher thread");
    return rc;
}

void dsacp_server_free(dsacp_server *s)
{
    if (!s) return;
    if (s->root) {
        atomic_store(&s->run_done, true); /* requests still waiting (a server that never ran) end */
        srv_http_stop(s);
    }
    dsacp_live_free(s->lv);
    oai_metrics_free(s->metrics);
    free(s->host), free(s->name), free(s->api_key);
    if (s->locks) {
        pthread_cond_destroy(&s->cv);
        pthread_mutex_destroy(&s->mu);
    }
    free(s);
}
