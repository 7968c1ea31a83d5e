/*
 * serve_loop.h -- what the serving loop's two files share (src/serve): serve_run.c (the entry
 * point: a run of one group, or a disaggregated run's workload, end and merged result) above
 * serve.c (the loop and its scheduler, every role), above serve_pd.c (the link). Internal.
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

/* ---- serve.c ---- */
/* Appends one word (grown by doubling). */
int dsacp_serve_plan_push(plan *p, int64_t v);
/* Sends rank 0's words (length 0: the run is over) to every rank of c. */
int dsacp_serve_plan_bcast(dsacp_comm *c, plan *p);
/* The loop itself, every rank of the group; rank 0 passes the requests (S->rq, S->n). */
int dsacp_serve_loop(sched *S, loop *L);
/* Releases what the loop made (every live request ended). */
void dsacp_serve_sched_free(sched *S, loop *L, dsacp_engine *e, int64_t n);
#endif
