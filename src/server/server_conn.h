/*
 * server_conn.h -- what server.c and server_http.c share (private to src/server): the server's
 * state (struct dsacp_server) and one HTTP request's state (srv_req, server_conn.c).
 *
 * Calling one way: server.c (lifecycle, the live loop's sink, the stop) -> server_http.c
 * (libmicrohttpd) -> server_conn.c (a request: submit, the events turned into response bytes,
 * waits that watch the client's socket) -> server_req/resp/stop/metrics.c.
 *
 * A request's state is reference-counted: the HTTP side holds one reference while MHD knows
 * the request (dropped in MHD's completion callback), a streamed response one more (dropped when
 * MHD frees the response), and the live loop one from submit to the request's final event. So a
 * client that went away leaves its state alive until the loop's last event about it, and the
 * loop never names freed memory.
 */
#ifndef DSACP_SERVER_CONN_H
#define DSACP_SERVER_CONN_H

#include "server/server.h"

#include <stdatomic.h>
#include <sys/types.h>

struct MHD_Daemon;

struct dsacp_server {
    dsacp_engine *e;
    const dsacp_tokenizer *tok;  /* rank 0 */
    const dsacp_config *cfg;
    dsacp_server_options opt;    /* strings point at the copies below */
    char *host, *api_key, *name;
    bool root;                   /* rank 0 of the engine's group: holds the socket */
    dsacp_live *lv;
    oai_metrics *metrics;
    struct MHD_Daemon *mhd;
    int listen_fd;               /* the listening socket once quiesced (closed after the stop), else -1 */
    int port;
    int32_t think_end;           /* the "</think>" token's id, -1 when the tokenizer has none */
    int64_t created;             /* unix seconds at create (/v1/models) */
    atomic_int stop_requested;   /* dsacp_server_stop (async-signal-safe) */
    atomic_bool stopping;        /* the watcher has begun the stop: new requests get 503 */
    atomic_bool run_done;        /* dsacp_live_run returned: no event comes any more */
    atomic_uint_fast64_t next_id;
    bool locks;                  /* mu and cv initialised */
    pthread_mutex_t mu;          /* guards active */
    pthread_cond_t cv;
    int64_t active;              /* HTTP requests MHD still knows (their responses not finished) */
};

/* ---- server_http.c: the HTTP side (rank 0) ---- */

/* Binds s->host:s->opt.port (s->port: the port bound) and starts libmicrohttpd's threads;
 * DSACP_EIO naming the address. */
int srv_http_start(dsacp_server *s);
/* Stops accepting connections (the requests in progress go on). */
void srv_http_quiesce(dsacp_server *s);
/* Closes every connection and joins MHD's threads (after the responses are done). */
void srv_http_stop(dsacp_server *s);

/* An access or error line through opt.log (server_conn.c). */
void srv_log(dsacp_server *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- server_conn.c: one HTTP request ---- */

typedef struct srv_req srv_req;

/* A new request (one reference, the HTTP side's) arriving now; counts in s->active. NULL: out
 * of memory. */
srv_req *srv_req_new(dsacp_server *s, const char *method, const char *path, int fd);
void srv_req_ref(srv_req *r);
/* Drops a reference; the last one frees the request (and leaves s->active). */
void srv_req_unref(srv_req *r);

/* The body as it arrives: false once past max_body_bytes (the rest is dropped). */
bool srv_req_append(srv_req *r, const char *data, size_t len);
bool srv_req_too_large(const srv_req *r);

/* The answer so far: HTTP status and body to send (error objects, GET routes). */
void srv_req_set_answer(srv_req *r, int http, const char *content_type, char *body);
/* An OpenAI error as the answer (oai_error_json of e). */
void srv_req_set_error(srv_req *r, const oai_error *e);

/* POST /v1/completions and /v1/chat/completions once the body is complete: parse, check the
 * model's name, submit to the live loop, then wait (watching the client's socket) for the
 * response's start (a stream: its first event) or its end. Returns:
 *  SRV_ANSWER: an answer is set (an error, or a whole non-streamed response) -- send it;
 *  SRV_STREAM: send 200 text/event-stream with srv_req_read as the content reader;
 *  SRV_GONE: the client went away (its request aborted) -- close the connection. */
typedef enum srv_outcome { SRV_ANSWER, SRV_STREAM, SRV_GONE } srv_outcome;
srv_outcome srv_req_generate(srv_req *r, oai_kind kind);
/* The stream's next bytes into buf [max]: blocks until some are ready; 0 never. -1: the end;
 * -2: the client went away or the server stopped without an end (close). */
ssize_t srv_req_read(srv_req *r, char *buf, size_t max);

/* MHD is done with the request: a request still generating is aborted (the client went away, or MHD closed the connection: a timeout). */
void srv_req_closed(srv_req *r);

/* The live loop's event about this request (the sink, loop thread). A request whose loop
 * ended (s->run_done) without its final event is ended by the waits of its HTTP side. */
void srv_req_event(srv_req *r, const dsacp_live_event *ev);

/* What the access log and MHD need. */
int srv_req_http(const srv_req *r);
bool srv_req_answered(const srv_req *r); /* an answer is set */
const char *srv_req_content_type(const srv_req *r);
const char *srv_req_body(const srv_req *r, size_t *len);
const char *srv_req_method(const srv_req *r);
const char *srv_req_path(const srv_req *r);
double srv_req_arrival(const srv_req *r);

#endif
