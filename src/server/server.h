/*
 * server -- the OpenAI-compatible HTTP server (include/dsacp_server.h; docs/server.md). Calls
 * serve (the online loop, dsacp_live_*), text (tokenizer, chat encoding, streaming detokenizer),
 * engine (the model's configuration) and core. Internal.
 *
 * Files, calling one way: server.c (dsacp_server_*: lifecycle, the stop watcher) above
 * server_http.c (libmicrohttpd, one thread per connection: routes, bodies, auth, limits) above
 * server_conn.c (per-request state shared with the live loop's sink: text, SSE, the response) above
 * server_req.c (OpenAI request bodies -> token ids and sampling, or an error naming the field),
 * server_resp.c (response bodies and SSE chunks), server_stop.c (stop strings over streamed text)
 * and server_metrics.c (Prometheus text with vLLM's names).
 */
#ifndef DSACP_SERVER_H
#define DSACP_SERVER_H

#include "core/core.h"
#include "dsacp_server.h"

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- server_req.c: request bodies ---- */

typedef enum oai_kind { OAI_COMPLETION = 0, OAI_CHAT = 1 } oai_kind;

/* An error answered to the client: HTTP status, OpenAI's error object
 * {"error": {"message": ..., "type": ..., "param": ..., "code": ...}}. */
typedef struct oai_error {
    int http;           /* 400, 401, 404, 405, 413, 429, 500, 503 */
    char type[48];      /* "invalid_request_error", "authentication_error", "not_found_error", ... */
    char param[64];     /* the field ("max_tokens", "messages[2].content"); "" when none */
    char message[512];
} oai_error;
/* Fills e (message printf-style); returns e->http. */
int oai_error_set(oai_error *e, int http, const char *type, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

typedef struct oai_request {
    oai_kind kind;
    char *model;              /* as sent (checked against served_model_name by the caller); NULL: absent */
    int32_t *prompt;          /* token ids fed to the model (chat: the encoded conversation) */
    int64_t prompt_len;
    int64_t max_tokens;       /* resolved: the body's, else the default (completions) or what the
                               * positions limit leaves (chat) */
    double temperature;       /* default 1.0 (OpenAI) */
    double top_p;             /* default 1.0 */
    bool has_seed;
    uint64_t seed;
    char **stop;              /* stop strings, matched on the detokenized text */
    int64_t n_stop;
    int32_t *stop_ids;        /* EOS unless ignore_eos, plus stop_token_ids */
    int64_t n_stop_ids;
    bool stream, include_usage; /* stream_options.include_usage */
    bool skip_special_tokens; /* default true */
    bool thinking;            /* chat: chat_template_kwargs.thinking (the reply starts in reasoning) */
    bool echo;                /* completions: prompt text prepended (only without stream) */
    bool return_token_ids;    /* vLLM's extension: responses and chunks carry "token_ids" */
    bool ignore_eos;          /* vLLM's extension: EOS is not a stop id */
} oai_request;

/* Parses and validates a body for `kind` against the model and tokenizer: malformed JSON, a wrong
 * type, an unknown field, an out-of-range value (max_tokens < 1 or past the positions limit with
 * the prompt, temperature outside [0, 2], top_p outside (0, 1], n != 1, unsupported features such
 * as logprobs / tools), an empty prompt, invalid UTF-8 in text, a prompt past max positions: a 400
 * naming the field in *err. Returns 0 or err->http. */
int oai_request_parse(oai_kind kind, const char *body, size_t len, const dsacp_tokenizer *tok,
                      const dsacp_config *cfg, int64_t default_max_tokens, oai_request *out, oai_error *err);
void oai_request_free(oai_request *r);

/* ---- server_resp.c: response bodies (malloc'd NUL-terminated strings; NULL: out of memory) ---- */

/* The whole non-streamed response: a text_completion or chat.completion object. reasoning: the
 * chat's reasoning_content (NULL: none). finish_reason: "stop", "length", "abort". */
char *oai_response_json(oai_kind kind, const char *id, const char *model, int64_t created, const char *text,
                        const char *reasoning, const char *finish_reason, int64_t prompt_tokens,
                        int64_t completion_tokens, const int32_t *token_ids, int64_t n_token_ids);
/* One SSE event "data: {...}\n\n" of a stream: a text_completion / chat.completion.chunk with the
 * delta (text, or reasoning when reasoning != NULL; the first chat chunk carries role
 * "assistant"), finish_reason NULL until the last one. token_ids (return_token_ids): the ids of
 * the response / of this chunk as choices[0].token_ids (NULL: no such field). */
char *oai_chunk_sse(oai_kind kind, const char *id, const char *model, int64_t created, const char *text,
                    const char *reasoning, bool first, const char *finish_reason, const int32_t *token_ids,
                    int64_t n_token_ids);
/* The usage chunk of stream_options.include_usage ("choices": [], "usage": {...}), as SSE. */
char *oai_usage_sse(oai_kind kind, const char *id, const char *model, int64_t created, int64_t prompt_tokens,
                    int64_t completion_tokens);
/* {"error": {...}} */
char *oai_error_json(const oai_error *e);
/* GET /v1/models: {"object": "list", "data": [{"id": name, "object": "model", "created", "owned_by": "dsacp",
 * "max_model_len": n}]} */
char *oai_models_json(const char *name, int64_t created, int64_t max_model_len);

/* ---- server_stop.c: stop strings over streamed text ---- */

/* Text pushed piece by piece comes out with every stop string cut: the text before the first match
 * is released, and nothing after it; text that might be the start of a stop string is held back
 * until it is known not to be. */
typedef struct oai_stop oai_stop;
int oai_stop_create(char *const *stop, int64_t n, oai_stop **out);
void oai_stop_free(oai_stop *s);
/* Appends text; *out / *out_len: the text now released (valid until the next call); *matched:
 * a stop string was found (everything later is dropped). */
int oai_stop_push(oai_stop *s, const char *text, size_t len, const char **out, size_t *out_len, bool *matched);
/* At the end of the request: releases what was held back. */
int oai_stop_flush(oai_stop *s, const char **out, size_t *out_len);

/* ---- server_metrics.c: Prometheus text ---- */

typedef struct oai_metrics oai_metrics; /* thread-safe */
int oai_metrics_create(oai_metrics **out);
void oai_metrics_free(oai_metrics *m);
void oai_metrics_ttft(oai_metrics *m, double s);      /* vllm:time_to_first_token_seconds */
void oai_metrics_itl(oai_metrics *m, double s);       /* vllm:inter_token_latency_seconds (and time_per_output_token) */
/* A request ended: e2e latency, its queue time (arrival to first scheduled ~ first token's prefill),
 * its counts, why ("stop", "length", "abort", "error"). */
void oai_metrics_finished(oai_metrics *m, double e2e_s, int64_t prompt_tokens, int64_t generation_tokens,
                          const char *reason);
/* The exposition text: every histogram and counter above, the live loop's gauges (running,
 * waiting, KV usage) and counters (preemptions, prompt / generation tokens), labelled
 * model_name="name". malloc'd. */
char *oai_metrics_render(oai_metrics *m, const char *model_name, const dsacp_live_stats *st);

#endif
