/*
 * serve -- a serving loop over an engine (docs/serving.md): requests arriving over time,
 * continuous batching in the style of vLLM's scheduler (a per-step token budget; decode tokens
 * first, prefill chunks filling the rest; admission by free KV blocks on every rank; preemption
 * with recompute when the cache is full), greedy or seeded temperature / top-p sampling, and the
 * per-request and per-step records the report is made of. Under mpirun rank 0 decides every step
 * and broadcasts it; every rank runs the same steps. Calls engine, comm and core.
 */
#ifndef DSACP_SERVE_H
#define DSACP_SERVE_H

#include "core/core.h"
#include "dsacp_cp.h"

typedef struct dsacp_serve_request {
    int32_t *prompt;     /* I32 [prompt_len], each in [0, vocab) (owned by the caller) */
    int64_t prompt_len;  /* >= 1 */
    int64_t max_new_tokens;
    const int32_t *stop_ids; /* generation ends after one of these (it is kept) */
    int64_t n_stop;
    double arrival_s;    /* seconds after the start of the run */
} dsacp_serve_request;

typedef struct dsacp_serve_progress {
    int64_t done, total, generated, prompt_tokens;
    double elapsed_s, kv_use; /* kv_use: fraction of the busiest rank's pool in use */
} dsacp_serve_progress;

typedef struct dsacp_serve_options {
    int64_t max_batch_tokens; /* per-step token budget (default 2048) */
    int64_t max_num_seqs;     /* running requests at most (default 256) */
    double temperature;       /* 0: greedy */
    double top_p;             /* (0, 1] */
    uint64_t seed;
    bool realtime;            /* wait for arrivals on the wall clock (false: replay as fast as possible) */
    void (*progress)(void *arg, const dsacp_serve_progress *p);
    void *progress_arg;
} dsacp_serve_options;
void dsacp_serve_options_default(dsacp_serve_options *o);

typedef struct dsacp_serve_step {
    double t_s, dur_ms;
    int64_t prefill_tokens, decode_tokens;
    double attention_ms, mlp_ms, comm_ms;
    double projections_ms, attend_ms, o_proj_ms; /* parts of attention_ms */
    int64_t comm_bytes; /* received by rank 0 */
} dsacp_serve_step;

/* Times are seconds on the run's clock (0 = the start of the run, docs/serving.md "The clock"). */
typedef struct dsacp_serve_out {
    int32_t *tokens;      /* [n_tokens] generated */
    double *token_s;      /* [n_tokens] time each token was produced */
    float *gap;           /* [n_tokens] top-1 minus top-2 logit at each generated token (rank 0) */
    int64_t n_tokens;
    double arrival_s;     /* the request's arrival on the run's clock: arrival_s when realtime, 0 when replayed */
    double first_s, finish_s; /* first token, last token; arrival_s <= first_s <= finish_s */
    int64_t preemptions;
} dsacp_serve_out;

typedef struct dsacp_serve_result {
    dsacp_serve_out *out;   /* [n_requests] (rank 0) */
    int64_t n_requests;
    dsacp_serve_step *steps;
    int64_t n_steps, cap_steps;
    int64_t preemptions;
    double duration_s, kv_peak_use;
} dsacp_serve_result;
void dsacp_serve_result_free(dsacp_serve_result *r);

/* What dsacp_serve_run checks before it starts, on rank 0 alone (local, not collective), so a
 * caller can tell a bad workload from a run that failed: the options (max_batch_tokens,
 * max_num_seqs >= 1, temperature, top_p), at least one request, each with a prompt of ids in
 * [0, vocab), max_new_tokens >= 1, prompt + max_new_tokens <= max_position_embeddings, a finite
 * arrival_s >= 0, and fitting every rank's KV pool alone at the length it caches (prompt +
 * max_new_tokens - 1: the last token is never fed back; DSACP_ECAPACITY naming the request).
 * Whatever the workload and the pools, a workload that passes completes (docs/serving.md,
 * "Preemption, and why every request finishes"). */
int dsacp_serve_check(const dsacp_engine *e, const dsacp_serve_request *reqs, int64_t n, const dsacp_serve_options *opt);

/* Collective over the engine's group: rank 0 passes the requests (others: NULL, 0), which it
 * checks first (dsacp_serve_check; the verdict is agreed). Fills `res` on rank 0. */
int dsacp_serve_run(dsacp_engine *e, const dsacp_serve_request *reqs, int64_t n, const dsacp_serve_options *opt,
                    dsacp_serve_result *res);

#endif
