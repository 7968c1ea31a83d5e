/*
 * dsacp_serve.h -- serving over an engine (docs/serving.md): what a front end such as `dsacp run`
 * needs besides dsacp.h and dsacp_cp.h. Admission (does a batch of requests fit every rank's KV
 * pool), the KV pool's use, the last step's times, and the serving loop itself: requests arriving
 * over time, continuous batching in the style of vLLM's scheduler (a per-step token budget;
 * decode tokens first, prefill chunks filling the rest; admission by free KV blocks on every
 * rank; preemption with recompute when the cache is full), greedy or seeded temperature / top-p
 * sampling, and the per-request and per-step records a report is made of. Under mpirun rank 0
 * decides every step and broadcasts it; every rank runs the same steps.
 *
 * Thread safety: every function here is a call on its engine (one thread at a time, dsacp.h);
 * dsacp_serve_run is collective over the engine's group and runs the engine until every request
 * finished. The progress callback is called on rank 0 from the thread that called
 * dsacp_serve_run, between steps.
 * Ownership: requests (prompts, stop ids) stay the caller's and must live until
 * dsacp_serve_run returns; a dsacp_serve_result is filled by the library and released with
 * dsacp_serve_result_free (which accepts a zeroed result).
 */
#ifndef DSACP_SERVE_H_PUBLIC
#define DSACP_SERVE_H_PUBLIC

#include "dsacp.h"
#include "dsacp_cp.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------------------------ */
/* Engine queries a scheduler needs                                                           */
/* ------------------------------------------------------------------------------------------ */

/* The engine's model configuration (borrowed: valid while the engine lives). */
const dsacp_config *dsacp_engine_config(const dsacp_engine *e);
/* Whether growing requests ids[i] (-1: one not added yet, from length 0) to new_len[i] tokens
 * fits the cache pools of every rank of the group; computed locally (every rank's usage follows
 * from the lengths), so the scheduler on rank 0 can admit without asking. */
bool dsacp_engine_fits(const dsacp_engine *e, const int64_t *ids, const int64_t *new_len, int64_t n);
/* Fraction of the busiest rank's latent pool in use. */
double dsacp_engine_kv_use(const dsacp_engine *e);

/* Wall time of the last step on this rank, split by part (seconds). */
typedef struct dsacp_step_times {
    double step, attention, mlp;      /* attention: the whole layer; its parts: */
    double projections, attend, o_proj; /* q/kv/indexer projections; cache writes, index scores,
                                         * top-k, sparse MLA, W_UV (with their collectives);
                                         * o_proj (with its collectives) */
    double overlap_compute, overlap_wait; /* compute while a non-blocking collective was in flight,
                                           * and the wait for it that followed */
} dsacp_step_times;
dsacp_step_times dsacp_engine_last_step_times(const dsacp_engine *e);

/* For benchmarks: gives an empty live request `length` cached positions of deterministic
 * pseudo-random latent rows and indexer keys (the same values for every W and layout; each
 * rank writes what its layouts keep), without running the model. Collective. */
int dsacp_engine_fill_random(dsacp_engine *e, int64_t request_id, int64_t length, uint64_t seed);

/* ------------------------------------------------------------------------------------------ */
/* Prefill and decode on separate rank groups (docs/disaggregation.md)                        */
/* ------------------------------------------------------------------------------------------ */

/* A rank's role, with vLLM's names (--kv-role): kv_both runs prefill and decode (one group, the
 * default); kv_producer ranks prefill only and send the prefilled latent and indexer entries to
 * the kv_consumer ranks, which decode. One MPI job holds both groups. */
typedef enum dsacp_kv_role { DSACP_KV_BOTH = 0, DSACP_KV_PRODUCER = 1, DSACP_KV_CONSUMER = 2 } dsacp_kv_role;
/* "kv_both", "kv_producer", "kv_consumer" ("?" when out of range); the parser takes those names
 * (DSACP_EINVAL, listing them, otherwise). */
const char *dsacp_kv_role_name(dsacp_kv_role role);
int dsacp_kv_role_parse(const char *name, dsacp_kv_role *out);

/* Collective over the world: every rank names its role. Ranks of one role form a group, ranked by
 * world rank, with its own communicator and counters (*group; NULL when every rank is kv_both:
 * the world is the group). Refused with DSACP_EINVAL and the same message on every rank unless
 * every rank is kv_both or the world holds exactly a producer group and a consumer group. */
int dsacp_pd_split(dsacp_comm *world, dsacp_kv_role role, dsacp_comm **group);

/* The link between a producer and a consumer group. Collective over the world, after each rank
 * created its group's engine (over the group communicator of dsacp_pd_split): the groups exchange
 * what the transfer needs (model configuration, numerics, cache dtype, W, interleave, block size,
 * layouts) and refuse an incompatible pair (another model or numerics, another latent cache dtype)
 * with DSACP_EINVAL and one message on every rank of both groups. The link is a duplicate of the
 * world communicator: its counters hold the transfer (phase kv_transfer) and the leaders' control
 * messages (phase control). `timeout_s` (> 0) bounds every wait on the other group: a dead peer or
 * link is DSACP_ECOMM within it (docs/disaggregation.md, "Failures"). The world, the group
 * communicator and the engine outlive the link. */
typedef struct dsacp_pd dsacp_pd;
int dsacp_pd_create(dsacp_comm *world, dsacp_engine *e, dsacp_kv_role role, double timeout_s, dsacp_pd **out);
void dsacp_pd_free(dsacp_pd *pd);
dsacp_kv_role dsacp_pd_role(const dsacp_pd *pd);
/* The link's communicator (borrowed): world ranks, counters of the transfer. */
dsacp_comm *dsacp_pd_link(const dsacp_pd *pd);
/* The producer's and the consumer's group sizes. */
void dsacp_pd_sizes(const dsacp_pd *pd, int *w_producer, int *w_consumer);
/* The relayout's formula (docs/disaggregation.md, "Bytes") for the chunks the producer ran so far:
 * this rank's kv_transfer counter as predicted (calls, bytes_sent, bytes_recv; seconds 0): equal,
 * field by field, to dsacp_comm_get_counter(dsacp_pd_link(pd), DSACP_PHASE_kv_transfer) after
 * dsacp_serve_run returned. */
dsacp_comm_counter dsacp_pd_predicted(const dsacp_pd *pd);

/* ------------------------------------------------------------------------------------------ */
/* The serving loop                                                                           */
/* ------------------------------------------------------------------------------------------ */

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

/* Speculative decoding (docs/speculative.md): vLLM's --speculative-config fields. */
typedef enum dsacp_spec_method { DSACP_SPEC_NONE = 0, DSACP_SPEC_NGRAM = 1, DSACP_SPEC_MTP = 2 } dsacp_spec_method;
#define DSACP_SPEC_MAX_TOKENS 16 /* num_speculative_tokens at most */
typedef struct dsacp_spec_config {
    dsacp_spec_method method;       /* none, ngram (prompt lookup), mtp (the model's MTP layer;
                                     * the engine must be created with opt.mtp) */
    int64_t num_speculative_tokens; /* k in [1, DSACP_SPEC_MAX_TOKENS] */
    int64_t prompt_lookup_min;      /* ngram: shortest suffix matched */
    int64_t prompt_lookup_max;      /* ngram: longest suffix matched (vLLM: both absent: 5 and 5;
                                     * one absent: the other's value; 1 <= min <= max) */
} dsacp_spec_config;
/* Parses vLLM's JSON ({"method": "ngram" | "mtp" | "deepseek_mtp", "num_speculative_tokens": k,
 * "prompt_lookup_min": a, "prompt_lookup_max": b}); an unknown key, a bad value or a missing
 * required field is DSACP_EINVAL with a message naming the field. `what` names the source (a
 * flag or a file) in messages. */
int dsacp_spec_config_parse(const char *json, const char *what, dsacp_spec_config *out);

typedef struct dsacp_serve_options {
    int64_t max_batch_tokens; /* per-step token budget (default 2048) */
    int64_t max_num_seqs;     /* running requests at most (default 256) */
    double temperature;       /* 0: greedy */
    double top_p;             /* (0, 1] */
    uint64_t seed;
    bool realtime;            /* wait for arrivals on the wall clock (false: replay as fast as possible) */
    void (*progress)(void *arg, const dsacp_serve_progress *p);
    void *progress_arg;
    /* Disaggregated serving: the link of this rank (dsacp_pd_create), NULL for kv_both. The call is
     * then collective over the world: a producer engine prefills (and samples each request's first
     * token), a consumer engine decodes the rest; the world's rank 0 passes the requests and gets
     * the result. The options must agree between the groups except `progress`. */
    dsacp_pd *pd;
    /* Speculative decoding: method none by default. Not with a disaggregated link (refused). */
    dsacp_spec_config spec;
} dsacp_serve_options;
void dsacp_serve_options_default(dsacp_serve_options *o);

typedef struct dsacp_serve_step {
    double t_s, dur_ms;
    int64_t prefill_tokens, decode_tokens;
    double attention_ms, mlp_ms, comm_ms;
    double projections_ms, attend_ms, o_proj_ms; /* parts of attention_ms */
    int64_t comm_bytes; /* received by rank 0 */
    dsacp_kv_role group; /* the group that ran it (kv_both without a link) */
    /* Speculative decoding: the target step's verify rows (every row of its verify entries),
     * and the MTP draft steps that followed it before the next target step (their number and
     * summed wall time, ms: the draft phase; dur_ms is the target step, the verify phase). */
    int64_t verify_tokens;
    int64_t draft_steps;
    double draft_ms;
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
    /* Disaggregated runs (0 otherwise): when the producer sampled the first token, when the
     * consumer held every entry of the prompt (first_s: the first token reaches the client from
     * the decode group, so TTFT includes the transfer), and the bytes and messages of the
     * transfer (every producer rank's sends, headers included). */
    double prefill_done_s, kv_ready_s;
    int64_t kv_bytes, kv_messages;
} dsacp_serve_out;

typedef struct dsacp_serve_result {
    dsacp_serve_out *out;   /* [n_requests] (rank 0) */
    int64_t n_requests;
    dsacp_serve_step *steps;
    int64_t n_steps, cap_steps;
    int64_t preemptions;
    double duration_s, kv_peak_use;
    /* Disaggregated runs: per group ([0] producer, [1] consumer) its size, its busiest rank's peak
     * KV use, its steps and their summed duration (seconds), its preemptions. */
    bool pd;
    int pd_W[2];
    double pd_kv_peak_use[2], pd_busy_s[2];
    int64_t pd_steps[2], pd_preemptions[2];
    /* Speculative decoding, with vLLM's metric names (spec_decode_*): verify entries run
     * (num_drafts), draft tokens proposed and accepted, accepted per draft position [k]. */
    dsacp_spec_config spec;
    int64_t spec_num_drafts, spec_num_draft_tokens, spec_num_accepted_tokens;
    int64_t spec_accepted_per_pos[DSACP_SPEC_MAX_TOKENS];
    int64_t target_steps_decode; /* target steps that ran at least one decode or verify row */
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


/* ------------------------------------------------------------------------------------------ */
/* Online serving: requests that arrive while the loop runs (docs/serving.md, "Online")        */
/* ------------------------------------------------------------------------------------------ */

/* The loop of dsacp_serve_run with requests submitted from any thread while it runs, each with
 * its own sampling, each answered token by token through a sink, abortable at any time (a client
 * that went away): what an HTTP front end (dsacp_server.h) needs. The scheduler, preemption and
 * every context-parallel strategy are dsacp_serve_run's; under mpirun rank 0 owns the requests
 * and every rank steps (an idle engine broadcasts an empty plan every 50 ms at most).
 * Not supported yet (refused by dsacp_live_create with DSACP_EUNSUPPORTED): speculative decoding
 * (opt.spec) and disaggregated links (opt.pd).
 *
 * Thread safety: submit, abort, shutdown and stats are callable from any thread of rank 0, also
 * from inside the sink; run is collective and blocks its thread; create and free are collective.
 * Ownership: a request's prompt and stop ids are copied by submit; `user` is handed back. */
typedef struct dsacp_live dsacp_live;

typedef struct dsacp_live_request {
    const int32_t *prompt;   /* I32 [prompt_len], each in [0, vocab), copied */
    int64_t prompt_len;      /* >= 1 */
    int64_t max_new_tokens;  /* >= 1, prompt_len + max_new_tokens <= max_position_embeddings */
    const int32_t *stop_ids; /* generation ends after one of these (it is emitted), copied */
    int64_t n_stop;
    double temperature;      /* 0: greedy; otherwise softmax(logits / T) restricted to top_p */
    double top_p;            /* (0, 1] */
    uint64_t seed;           /* draws seeded by (seed, token index): the same seed, the same tokens */
    void *user;              /* handed back in every event of the request */
} dsacp_live_request;

/* Why a request ended. */
typedef enum dsacp_finish {
    DSACP_FINISH_NONE = 0,   /* not yet: a token event */
    DSACP_FINISH_LENGTH = 1, /* max_new_tokens reached */
    DSACP_FINISH_STOP = 2,   /* a stop id was generated (the event's token) */
    DSACP_FINISH_ABORT = 3,  /* dsacp_live_abort, or a shutdown that aborts */
    DSACP_FINISH_ERROR = 4   /* refused after submit (status, message: e.g. DSACP_ECAPACITY, a
                              * prompt that fits no rank's pool) or the run failed */
} dsacp_finish;

/* One event of one request. Every submitted request gets zero or more token events and then
 * exactly one final event (finish != NONE; it may carry the last token too), after which its id
 * is never named again: the sink may release what `user` points to then. */
typedef struct dsacp_live_event {
    uint64_t id;
    void *user;
    int32_t token;          /* the generated token, -1 when the event has none */
    dsacp_finish finish;
    int status;             /* DSACP_FINISH_ERROR: the status; DSACP_OK otherwise */
    const char *message;    /* DSACP_FINISH_ERROR: the message (valid during the call); else "" */
    int64_t prompt_tokens;  /* the prompt's length */
    int64_t n_generated;    /* tokens generated so far, this one included */
    int64_t preemptions;    /* times the request was preempted so far */
    double t_s;             /* when (dsacp_now-style monotonic seconds, the same clock as
                             * dsacp_live_now) */
} dsacp_live_event;

/* Called on rank 0, from the thread in dsacp_live_run, between steps (never while a lock of the
 * live object is held: it may submit, abort or read stats). */
typedef void (*dsacp_live_sink)(void *arg, const dsacp_live_event *ev);

typedef struct dsacp_live_options {
    dsacp_serve_options serve; /* max_batch_tokens, max_num_seqs (temperature, top_p, seed,
                                * realtime, progress are unused: per request here) */
    int64_t max_waiting;       /* submitted requests not yet admitted at most (default 256):
                                * past it submit is DSACP_EBUSY */
} dsacp_live_options;
void dsacp_live_options_default(dsacp_live_options *o);

/* Collective over the engine's group; the options must agree. */
int dsacp_live_create(dsacp_engine *e, const dsacp_live_options *opt, dsacp_live **out);
/* Collective: releases the live object (after dsacp_live_run returned); the engine stays. */
void dsacp_live_free(dsacp_live *lv);
/* Rank 0, any thread: queues a request. Checked at once against the model (ids in range,
 * lengths, the positions limit, temperature >= 0 finite, top_p in (0, 1]): DSACP_EINVAL naming the
 * field ("prompt", "max_new_tokens", "temperature", "top_p", "stop_ids") with nothing queued;
 * DSACP_EBUSY when max_waiting requests wait or after a shutdown. Whether the request fits the KV
 * pools is known on the loop's thread: a request that fits no rank's pool alone gets a final
 * DSACP_FINISH_ERROR event (DSACP_ECAPACITY). *id: the request's id (never 0). */
int dsacp_live_submit(dsacp_live *lv, const dsacp_live_request *rq, uint64_t *id);
/* Rank 0, any thread: the request ends (its final event says DSACP_FINISH_ABORT) and its KV
 * blocks are freed on every rank at the next step. DSACP_ENOTFOUND when the id is not live
 * (finished already: harmless). */
int dsacp_live_abort(dsacp_live *lv, uint64_t id);
/* Rank 0, any thread, async-signal-safe: stop accepting requests (submit: DSACP_EBUSY); the
 * requests in flight finish (abort_all: they end with DSACP_FINISH_ABORT at the next step), then
 * dsacp_live_run returns on every rank. Calling again with abort_all = true aborts what is left. */
void dsacp_live_shutdown(dsacp_live *lv, bool abort_all);
/* Collective: runs the loop until a shutdown drained it; the sink gets every event (rank 0).
 * Returns the first failure (every rank the same status); requests in flight then end with
 * DSACP_FINISH_ERROR events. */
int dsacp_live_run(dsacp_live *lv, dsacp_live_sink sink, void *arg);

/* What the loop looks like now (rank 0, any thread): counts of the last step's state and
 * totals since create. */
typedef struct dsacp_live_stats {
    int64_t running, waiting;   /* admitted requests (prefilling or decoding), queued ones */
    double kv_use;              /* fraction of the busiest rank's latent pool in use */
    int64_t preemptions;        /* total */
    int64_t prompt_tokens;      /* total prompt tokens of admitted requests (recompute not counted) */
    int64_t generation_tokens;  /* total generated */
    int64_t steps;              /* engine steps run */
    int64_t finished[5];        /* requests ended, by dsacp_finish (index 0 unused) */
} dsacp_live_stats;
void dsacp_live_get_stats(dsacp_live *lv, dsacp_live_stats *out);
/* The monotonic clock of events (seconds). */
double dsacp_live_now(void);

#ifdef __cplusplus
}
#endif
#endif /* DSACP_SERVE_H_PUBLIC */
