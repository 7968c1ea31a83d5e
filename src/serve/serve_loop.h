/*
 * serve_loop.h -- what the serving loop's files share (src/serve): serve_run.c (the entry point:
 * a run of one group, or a disaggregated run's workload, end and merged result) above serve.c
 * (the loop and its scheduler, every role), above serve_spec_round.c (a speculative round's
 * acceptance and MTP steps), above serve_plan.c (the plan words, rank 0's record of a token),
 * serve_spec.c (drafters, sampling) and serve_pd.c (the link). Internal.
 */
#ifndef DSACP_SERVE_LOOP_H
#define DSACP_SERVE_LOOP_H

#include "serve/serve.h"

#include <string.h>

/* ST_ASKED / ST_IMPORTING: consumer only (asked by the producer, granted and receiving). */
enum { ST_FUTURE, ST_WAITING, ST_RUNNING, ST_DONE, ST_ASKED, ST_IMPORTING };

typedef struct sreq {
    int state;
    int32_t *seq;        /* prompt, then generated tokens: what is fed */
    int64_t len, cap;    /* tokens in seq */
    int64_t fed;         /* tokens in the engine's cache */
    int64_t admit;       /* admission order (preemption picks the youngest) */
    /* disaggregated */
    int64_t *chunks;     /* [a, b) pairs: producer, the chunks it ran; consumer, the producer's (DONE) */
    int64_t n_chunks, cap_chunks;
    int64_t ask;         /* consumer: order of the producer's ask */
    bool granted;        /* producer: the consumer reserved the prompt's blocks */
    bool done_known;     /* consumer: DONE arrived */
    int32_t first_tok;
    float first_gap;
    double prefill_s;    /* consumer: when the producer sampled the first token */
    int64_t pre_preempt; /* consumer: the producer's preemptions of the request */
    /* speculative decoding (rank 0) */
    int32_t draft[DSACP_SPEC_MAX_TOKENS]; /* drafts for the token after seq[len - 1] on */
    int64_t n_draft;
    /* sampling (rank 0): the run's options, or an online request's own; draws are seeded by
     * (seed, rng_req, token index) */
    double temperature, top_p;
    uint64_t seed;
    int64_t rng_req;
} sreq;

typedef struct plan {
    int64_t *w;
    int64_t n, cap;
} plan;

typedef struct prob {
    float p;
    int32_t id;
} prob;

typedef struct sched {
    dsacp_engine *e;
    const dsacp_serve_request *rq;
    sreq *r;
    int64_t *eid, n, admitted;
    const dsacp_serve_options *o;
    dsacp_serve_result *res;
    /* this step's entries while planning */
    int64_t *ent_s, *ent_n, *fit_id, *fit_len, n_ent;
    int64_t *ent_k; /* drafts in each entry (a verify entry of ent_k + 1 rows; 0: none) */
    int64_t *ent_a; /* after the step: the drafts of each verify entry accepted */
    plan truncs;    /* rank 0: (s, length) the last step's verify entries were cut back to */
    int64_t *order; /* [2 n]: the running requests as (admission, index), oldest first */
    plan ends, adds;
    /* disaggregated */
    dsacp_pd *pd;           /* NULL: kv_both */
    dsacp_kv_role role;
    int64_t asks;           /* consumer: asks received so far */
    plan imps, acts;        /* consumer: this plan's imports and activations */
    int64_t *stash;         /* consumer leader: the producer's RESULT when it came during the loop */
    int64_t n_stash;
    double shift;           /* consumer leader: its run clock + shift = the producer's */
    plan dones;             /* producer leader with the MTP layer: DONEs held until the catch-up's
                             * entries of the step are posted */
    /* online (serve_live.c): requests come and go; per-request arrays hold S->n slots (rank 0)
     * or engine ids of S->n slots (other ranks), grown on demand; NULL: a batch run */
    struct dsacp_live *live;
    dsacp_serve_request *lrq; /* rank 0: the slots' requests (S->rq points here) */
} sched;

/* The loop's state beside the scheduler's: the plan every rank applies, rank 0's logits and
 * sampling scratch, the run's clock and counts. */
typedef struct loop {
    dsacp_comm *c;
    bool root;
    int64_t V;
    plan p;
    float *logits; /* [entries][V] (rank 0) */
    prob *work;    /* [V] (rank 0) */
    double t0, kv_peak;
    int64_t done;
    /* speculative decoding: the step's entries as every rank applied them (serve_step) */
    const dsacp_step_entry *ent;
    const dsacp_entry_opts *opts;
    const int64_t *ent_s;
    int64_t n_ent;
    float *mtp_logits;  /* [entries][V] (rank 0) */
    double *probs;      /* [DSACP_SPEC_MAX_TOKENS + 1][V] + [V] (rank 0, sampling) */
    struct dsacp_spec_prob *swork; /* [V] (rank 0, sampling) */
    plan sw;            /* the MTP round's words from rank 0 */
    double draft_ms;    /* drafting for or after the last target step (ngram's lookups, MTP steps) */
    int64_t draft_steps;
} loop;

static inline double bits_f64(int64_t w)
{
    double d;
    memcpy(&d, &w, sizeof d);
    return d;
}

static inline int64_t f64_bits(double d)
{
    int64_t w;
    memcpy(&w, &d, sizeof w);
    return w;
}

/* ---- serve_plan.c (below serve.c and serve_spec_round.c) ---- */
/* Appends a token to the request's sequence (what is fed). */
int dsacp_serve_seq_push(sreq *r, int32_t tok);
/* Rank 0: token `tok` (top-2 gap `gap`) generated for request s now: recorded; the request ends
 * (*stopped) at max_new_tokens or a stop id, else the token is appended to be fed. */
int dsacp_serve_emit(sched *S, loop *L, int64_t s, int32_t tok, float gap, bool *stopped);
/* The first largest logit minus the largest of the others (0 on a tie or a one-word vocabulary). */
float dsacp_serve_top2_gap(const float *logits, int64_t V);
/* Appends one word (grown by doubling). */
int dsacp_serve_plan_push(plan *p, int64_t v);
/* Sends rank 0's words (length 0: the run is over) to every rank of c. */
int dsacp_serve_plan_bcast(dsacp_comm *c, plan *p);

/* ---- serve_live_queue.c (the online loop's hooks; below serve.c and serve_plan.c, which call them) ---- */
/* Rank 0, at the start of each plan: takes what was submitted and aborted (waiting up to 50 ms
 * when nothing runs); *over: a shutdown drained the loop (the plan is the empty one). */
int dsacp_live_plan_begin(sched *S, loop *L, bool *over);
/* Rank 0, after a plan's ends: running and waiting requests and KV use to the stats. */
void dsacp_live_stats_update(sched *S);
/* Rank 0: request s generated token tok (*stopped as dsacp_serve_emit decided). */
int dsacp_live_token(sched *S, loop *L, int64_t s, int32_t tok, bool stopped);
/* Rank 0, after each step: the events of the step to the sink, the stats. */
void dsacp_live_step_end(sched *S, loop *L);
/* Every rank but 0: slot s (from a plan's adds) gets room in S->eid. */
int dsacp_live_reserve(sched *S, int64_t s);

/* ---- serve.c ---- */
/* The loop itself, every rank of the group; rank 0 passes the requests (S->rq, S->n). */
int dsacp_serve_loop(sched *S, loop *L);
/* Releases what the loop made (every live request ended). */
void dsacp_serve_sched_free(sched *S, loop *L, dsacp_engine *e, int64_t n);

/* ---- serve_spec_round.c: the speculative round's steps in the loop (docs/speculative.md) ---- */
/* Rank 0, planning: the drafts of decoding request s for this step (ngram: proposed now; mtp: the
 * last round's), at most k and max_new_tokens - generated - 1; returns their number. */
int64_t dsacp_spec_drafts(sched *S, loop *L, int64_t s);
/* Rank 0, after a target step: entry i's k = S->ent_k[i] drafts verified against its k + 1
 * logits rows (greedy or rejection sampling); the accepted run and its bonus appended to
 * request s (a stop id or max_new_tokens cuts it); the counters; the request's cut-back length
 * pushed to S->truncs (and applied to rank 0's engine at once for ngram). Returns the status. */
int dsacp_spec_accept(sched *S, loop *L, int64_t i, const float *logits, bool *stopped);
/* Every rank, after the target step (method mtp): the catch-up MTP step over the target step's
 * entries, the cut back of every verify entry's request, the chain steps; rank 0 keeps each
 * decoding request's drafts. Collective. */
int dsacp_spec_mtp_round(sched *S, loop *L);
/* Every rank: request s keeps `keep` target positions and at most as many MTP positions (the
 * cut back of a verify entry's rejected drafts). */
int dsacp_spec_cut_back(sched *S, int64_t s, int64_t keep);
/* The token at position q of request s (prompt, then the generated ones; 0 beyond). */
int32_t dsacp_spec_token_at(const sched *S, int64_t s, int64_t q);
#endif
