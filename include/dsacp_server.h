/*
 * dsacp_server.h -- an OpenAI-compatible HTTP server over an engine (docs/server.md): text in, text
 * out with DeepSeek-V3.2's tokenizer and chat encoding (dsacp_text.h), continuous batching across
 * connections with the online loop (dsacp_live_*, dsacp_serve.h), under mpirun too (rank 0 holds
 * the socket; every rank of the engine's group steps).
 *
 * Routes: POST /v1/completions, POST /v1/chat/completions (stream: server-sent events ending with
 * "data: [DONE]"), GET /v1/models, GET /health, GET /metrics (Prometheus text, vLLM's names).
 * HTTP is libmicrohttpd's (Debian libmicrohttpd-dev); JSON is jansson's.
 *
 * Thread safety: create, run and free are collective over the engine's group and called from one
 * thread per rank; dsacp_server_stop is async-signal-safe (a SIGTERM handler may call it).
 * Ownership: the server borrows the engine and the tokenizer, which must outlive it.
 */
#ifndef DSACP_SERVER_H_PUBLIC
#define DSACP_SERVER_H_PUBLIC

#include "dsacp_serve.h"
#include "dsacp_text.h"

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dsacp_server_options {
    const char *host;              /* address to bind (default "127.0.0.1"); rank 0 only */
    int port;                      /* TCP port (default 8000; 0: any free port, see dsacp_server_port) */
    const char *api_key;           /* NULL: none; else "Authorization: Bearer KEY" on every route but /health */
    const char *served_model_name; /* the model's name in /v1/models and responses (required) */
    size_t max_body_bytes;         /* request bodies past it: 413 (default 4 MiB) */
    double timeout_s;              /* a connection idle (not sending its request, not reading its
                                    * response) this long is closed (default 60) */
    int max_connections;           /* open connections at most (default 512); past it refused */
    int64_t default_max_tokens;    /* /v1/completions without max_tokens (OpenAI: 16) */
    dsacp_live_options live;       /* the loop: max_batch_tokens, max_num_seqs, max_waiting (429
                                    * when the queue is full, 503 while stopping) */
    void (*log)(void *arg, const char *line); /* access and error lines (NULL: none) */
    void *log_arg;
} dsacp_server_options;
void dsacp_server_options_default(dsacp_server_options *o);

typedef struct dsacp_server dsacp_server;

/* Collective over the engine's group: rank 0 binds host:port (DSACP_EIO naming the address when
 * it cannot; every rank then fails alike) and starts the HTTP threads; `tok` is needed on rank 0
 * only (others may pass NULL). The model's vocabulary must hold the tokenizer's
 * (DSACP_EINVAL otherwise). */
int dsacp_server_create(dsacp_engine *e, const dsacp_tokenizer *tok, const dsacp_server_options *opt,
                        dsacp_server **out);
/* The port bound (rank 0; after create). */
int dsacp_server_port(const dsacp_server *s);
/* Collective: serves until dsacp_server_stop; then stops accepting, lets the requests in flight
 * finish (within grace_s seconds of the stop, then aborts them), and returns DSACP_OK on every rank. */
int dsacp_server_run(dsacp_server *s, double grace_s);
/* Rank 0 (others: ignored), async-signal-safe. */
void dsacp_server_stop(dsacp_server *s);
void dsacp_server_free(dsacp_server *s);

#ifdef __cplusplus
}
#endif
#endif /* DSACP_SERVER_H_PUBLIC */
