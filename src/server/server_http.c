/*
 * server_http.c -- the server's HTTP side on libmicrohttpd (docs/server.md): the listening
 * socket, routes, auth, body limits, responses and the access log.
 *
 * Threading: MHD_USE_THREAD_PER_CONNECTION. A request waits for its tokens on its connection's
 * own thread (blocked on the request's condition variable, 50 ms at a time, looking at the
 * client's socket between waits), so a client that hangs up is seen within 50 ms whether its
 * request is queued, prefilling or streaming, and aborted at once (its KV freed at the loop's
 * next step). With MHD's internal polling thread and suspended connections instead, a suspended
 * connection's socket is not polled and a hang-up goes unseen until something else looks. The
 * threads are bounded by MHD_OPTION_CONNECTION_LIMIT (max_connections, 1 MiB stacks), and an
 * idle connection (not sending its request, not reading its response) is closed after
 * MHD_OPTION_CONNECTION_TIMEOUT; time spent waiting for the model does not count as idle.
 */
#include "server/server_conn.h"

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <microhttpd.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

typedef enum route_kind { ROUTE_COMPLETIONS, ROUTE_CHAT, ROUTE_MODELS, ROUTE_HEALTH, ROUTE_METRICS } route_kind;

typedef struct route {
    const char *path, *method;
    route_kind kind;
    bool auth; /* needs the API key (when one is set) */
} route;

static const route routes[] = {
    {"/v1/completions", "POST", ROUTE_COMPLETIONS, true},
    {"/v1/chat/completions", "POST", ROUTE_CHAT, true},
    {"/v1/models", "GET", ROUTE_MODELS, true},
    {"/health", "GET", ROUTE_HEALTH, false},
    {"/metrics", "GET", ROUTE_METRICS, true},
};

static const route *find_route(const char *path)
{
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
        if (strcmp(routes[i].path, path) == 0) return &routes[i];
    return NULL;
}

static void set_error(srv_req *r, int http, const char *type, const char *msg)
{
    oai_error e;
    oai_error_set(&e, http, type, "", "%s", msg);
    srv_req_set_error(r, &e);
}

/* "Authorization: Bearer KEY", compared in constant time. */
static bool authorized(dsacp_server *s, struct MHD_Connection *c)
{
    if (!s->api_key) return true;
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!h || strncmp(h, "Bearer ", 7) != 0) return false;
    h += 7;
    const size_t n = strlen(h), k = strlen(s->api_key);
    unsigned diff = n != k;
    for (size_t i = 0; i < k; i++) diff |= (unsigned char)s->api_key[i] ^ (unsigned char)(i < n ? h[i] : 0);
    return diff == 0;
}

static enum MHD_Result send_answer(struct MHD_Connection *c, srv_req *r)
{
    size_t len;
    const char *body = srv_req_body(r, &len);
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (!resp) return MHD_NO;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, srv_req_content_type(r));
    const int http = srv_req_http(r);
    if (http == 401) MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    if (http == 405) {
        const route *rt = find_route(srv_req_path(r));
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, rt ? rt->method : "GET");
    }
    const enum MHD_Result ret = MHD_queue_response(c, (unsigned)http, resp);
    MHD_destroy_response(resp);
    return ret;
}

/* ---- streams ---- */

typedef struct stream_ctx {
    srv_req *r;
    struct MHD_Connection *c;
    unsigned timeout;
} stream_ctx;

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    stream_ctx *sc = cls;
    const ssize_t n = srv_req_read(sc->r, buf, max);
    /* the wait for tokens is not the client's idleness: the timeout counts from here */
    MHD_set_connection_option(sc->c, MHD_CONNECTION_OPTION_TIMEOUT, sc->timeout);
    return n >= 0 ? n : n == -1 ? MHD_CONTENT_READER_END_OF_STREAM : MHD_CONTENT_READER_END_WITH_ERROR;
}

static void stream_free(void *cls)
{
    stream_ctx *sc = cls;
    srv_req_unref(sc->r);
    free(sc);
}

static enum MHD_Result send_stream(dsacp_server *s, struct MHD_Connection *c, srv_req *r)
{
    stream_ctx *sc = malloc(sizeof *sc);
    if (!sc) return MHD_NO;
    *sc = (stream_ctx){r, c, (unsigned)ceil(s->opt.timeout_s)};
    srv_req_ref(r);
    struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, stream_read, sc, stream_free);
    if (!resp) {
        stream_free(sc);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    const enum MHD_Result ret = MHD_queue_response(c, MHD_HTTP_OK, resp);
    MHD_destroy_response(resp);
    return ret;
}

/* ---- routes ---- */

static void get_route(dsacp_server *s, srv_req *r, route_kind kind)
{
    if (kind == ROUTE_HEALTH) {
        srv_req_set_answer(r, 200, "text/plain", strdup(""));
    } else if (kind == ROUTE_MODELS) {
        srv_req_set_answer(r, 200, "application/json", oai_models_json(s->name, s->created, s->cfg->max_position_embeddings));
    } else {
        dsacp_live_stats st;
        dsacp_live_get_stats(s->lv, &st);
        srv_req_set_answer(r, 200, "text/plain; version=0.0.4; charset=utf-8", oai_metrics_render(s->metrics, s->name, &st));
    }
}

/* The checks before the body: route, method, key, declared length. True when an answer is set. */
static bool check_headers(dsacp_server *s, struct MHD_Connection *c, srv_req *r, const char *method)
{
    const route *rt = find_route(srv_req_path(r));
    char msg[256];
    if (!rt) {
        snprintf(msg, sizeof msg, "no route %.200s", srv_req_path(r));
        set_error(r, 404, "not_found_error", msg);
    } else if (strcmp(method, rt->method) != 0 && !(strcmp(method, "HEAD") == 0 && strcmp(rt->method, "GET") == 0)) {
        snprintf(msg, sizeof msg, "method %.16s not allowed: %s takes %s", method, rt->path, rt->method);
        set_error(r, 405, "invalid_request_error", msg);
    } else if (rt->auth && !authorized(s, c)) {
        set_error(r, 401, "authentication_error", "missing or wrong API key (Authorization: Bearer KEY)");
    } else {
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        char *end = NULL;
        errno = 0;
        const unsigned long long n = cl ? strtoull(cl, &end, 10) : 0;
        if (!cl || end == cl || errno || n <= s->opt.max_body_bytes) return false;
        set_error(r, 413, "invalid_request_error", "the request body is larger than the server's limit (max_body_bytes)");
    }
    return true;
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                 const char *version, const char *upload_data, size_t *upload_data_size, void **con_cls)
{
    (void)version;
    dsacp_server *s = cls;
    srv_req *r = *con_cls;
    if (!r) { /* the headers are in */
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        if (!(r = srv_req_new(s, method, url, ci ? ci->connect_fd : -1))) return MHD_NO;
        *con_cls = r;
        return check_headers(s, c, r, method) ? send_answer(c, r) : MHD_YES;
    }
    if (srv_req_answered(r)) { /* refused with the headers: the rest of the body is not read */
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (*upload_data_size) {
        /* past the limit: dropped, 413 at the end (libmicrohttpd 0.9.75 queues no response mid-upload) */
        srv_req_append(r, upload_data, *upload_data_size);
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (srv_req_too_large(r)) {
        set_error(r, 413, "invalid_request_error", "the request body is larger than the server's limit (max_body_bytes)");
        return send_answer(c, r);
    }
    const route *rt = find_route(url);
    if (rt->kind != ROUTE_COMPLETIONS && rt->kind != ROUTE_CHAT) {
        get_route(s, r, rt->kind);
        return send_answer(c, r);
    }
    const srv_outcome o = srv_req_generate(r, rt->kind == ROUTE_CHAT ? OAI_CHAT : OAI_COMPLETION);
    /* the wait for the model is not the client's idleness */
    MHD_set_connection_option(c, MHD_CONNECTION_OPTION_TIMEOUT, (unsigned)ceil(s->opt.timeout_s));
    return o == SRV_GONE ? MHD_NO : o == SRV_STREAM ? send_stream(s, c, r) : send_answer(c, r);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe)
{
    (void)c, (void)toe;
    dsacp_server *s = cls;
    srv_req *r = *con_cls;
    if (!r) return;
    *con_cls = NULL;
    srv_req_closed(r);
    srv_log(s, "%s %s %d %.3fs", srv_req_method(r), srv_req_path(r), srv_req_http(r), dsacp_live_now() - srv_req_arrival(r));
    srv_req_unref(r);
}

/* ---- the daemon ---- */

/* A listening socket on host:port (DSACP_EIO naming the address). */
static int listen_on(const char *host, int port, int *fd_out, int *port_out, bool *ipv6)
{
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE | AI_NUMERICSERV}, *ai;
    const int g = getaddrinfo(host, ps, &hints, &ai);
    if (g) return dsacp_error(DSACP_EIO, "host '%s': %s", host, gai_strerror(g));
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol), one = 1, err = 0;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) || bind(fd, ai->ai_addr, ai->ai_addrlen) ||
        listen(fd, 128))
        err = errno;
    *ipv6 = ai->ai_family == AF_INET6;
    freeaddrinfo(ai);
    struct sockaddr_storage sa;
    socklen_t sl = sizeof sa;
    if (!err && getsockname(fd, (struct sockaddr *)&sa, &sl)) err = errno;
    if (err) {
        if (fd >= 0) close(fd);
        return dsacp_error(DSACP_EIO, "cannot listen on %s:%d: %s", host, port, strerror(err));
    }
    *port_out = ntohs(sa.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&sa)->sin6_port : ((struct sockaddr_in *)&sa)->sin_port);
    *fd_out = fd;
    return DSACP_OK;
}

int srv_http_start(dsacp_server *s)
{
    int fd = -1;
    bool ipv6 = false;
    int rc = listen_on(s->host, s->opt.port, &fd, &s->port, &ipv6);
    if (rc) return rc;
    const unsigned timeout = (unsigned)ceil(s->opt.timeout_s);
    s->mhd = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ITC |
                                  MHD_USE_POLL | (ipv6 ? MHD_USE_IPv6 : 0),
                              0, NULL, NULL, on_access, s, MHD_OPTION_LISTEN_SOCKET, fd,
                              MHD_OPTION_CONNECTION_TIMEOUT, timeout, MHD_OPTION_CONNECTION_LIMIT,
                              (unsigned)s->opt.max_connections, MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
                              MHD_OPTION_THREAD_STACK_SIZE, (size_t)1 << 20, MHD_OPTION_END);
    if (!s->mhd) {
        close(fd);
        return dsacp_error(DSACP_EIO, "cannot start the HTTP server on %s:%d (libmicrohttpd)", s->host, s->port);
    }
    return DSACP_OK;
}

void srv_http_quiesce(dsacp_server *s)
{
    if (!s->mhd || s->listen_fd >= 0) return;
    s->listen_fd = MHD_quiesce_daemon(s->mhd);
}

void srv_http_stop(dsacp_server *s)
{
    if (s->mhd) MHD_stop_daemon(s->mhd);
    s->mhd = NULL;
    if (s->listen_fd >= 0) close(s->listen_fd); /* quiesced: ours to close after the stop */
    s->listen_fd = -1;
}
