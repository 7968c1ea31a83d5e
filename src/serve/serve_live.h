/*
 * serve_live.h -- what the online loop's two files share (src/serve; docs/serving.md "Online"):
 * serve_live.c (create, run, free: above serve.c's loop) and serve_live_queue.c (the queue other
 * threads fill, the slots, the events, and the hooks serve.c and serve_plan.c call: below them).
 * Internal.
 */
#ifndef DSACP_SERVE_LIVE_H
#define DSACP_SERVE_LIVE_H

#include "serve/serve_loop.h"

#include <pthread.h>
#include <stdatomic.h>

#define LIVE_IDLE_S 0.05 /* the longest an idle loop waits before it sends an empty plan */

/* A submitted request not yet in a slot (owned copies). */
typedef struct pending {
    dsacp_live_request rq;
    int32_t *prompt, *stop;
    uint64_t id;
} pending;

struct dsacp_live {
    dsacp_engine *e;
    dsacp_live_options opt;
    bool root;
    /* shared with other threads, under mu */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pending *pend;
    int64_t n_pend, cap_pend;
    uint64_t *aborts;
    int64_t n_abort, cap_abort;
    uint64_t *ids;          /* ids submitted whose final event has not been sent */
    int64_t n_ids, cap_ids;
    uint64_t next_id;
    int64_t waiting;        /* queued in slots at the last plan */
    bool failed;            /* the run failed: submissions refused */
    dsacp_live_stats stats;
    atomic_int shut;        /* 0 serving, 1 draining, 2 aborting what is left (async-signal-safe) */
    /* the loop's thread */
    sched S;
    loop L;
    dsacp_serve_result res;
    uint64_t *slot_id;
    void **slot_user;
    int64_t cap;            /* slots allocated */
    int64_t seq;            /* arrival order */
    dsacp_live_event *ev;   /* the events not yet handed to the sink */
    char **ev_msg;
    int64_t n_ev, cap_ev, cap_msg;
    int64_t gen_step;       /* tokens generated since the last stats update */
    dsacp_live_sink sink;
    void *sink_arg;
    bool ran;
};


/* Grows *p (elements of elem bytes, capacity *cap) to hold `need`. */
int dsacp_live_grow(void **p, int64_t *cap, int64_t need, size_t elem);
/* The scheduler's per-slot arrays to `cap` slots (rank 0); the new slots are free. */
int dsacp_live_slots_grow(dsacp_live *lv, int64_t cap);
/* A final error event for every request in flight and every queued one (a failed run). */
void dsacp_live_fail_all(dsacp_live *lv, int status);

#endif
