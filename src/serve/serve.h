/*
 * serve -- the serving loop over an engine (docs/serving.md); its interface is public:
 * include/dsacp_serve.h. Calls engine, cp (the relayout's formula), comm and core.
 *
 * Files, calling one way: serve_run.c (dsacp_serve_run: one group's run, or a disaggregated run's
 * workload, end and merged result) and serve_live.c (the online loop's create, run, free) above
 * serve.c (the loop and its scheduler, every role; the types they share in serve_loop.h) above
 * serve_live_queue.c (the online loop's queue, slots, events and hooks) and serve_pd.c (the link
 * between a producer and a consumer group: control messages, the KV transfer;
 * docs/disaggregation.md).
 */
#ifndef DSACP_SERVE_H
#define DSACP_SERVE_H

#include "core/core.h"
#include "dsacp_serve.h"

/* The leaders' control messages: int64 words, the first one their kind. */
enum {
    DSACP_PD_ASK = 1,   /* producer -> consumer: [ASK, s] request s arrived, may it be prefilled? */
    DSACP_PD_GRANT,     /* consumer -> producer: [GRANT, s] its blocks are reserved */
    DSACP_PD_DONE,      /* producer -> consumer: [DONE, s, token, gap bits, t bits, n, a0, b0, ...] prompt
                         * prefilled: the first token, its top-2 gap, when, and the chunks that were sent */
    DSACP_PD_ALIVE,     /* either way: nothing to say for a second, but alive */
    DSACP_PD_ABORT,     /* either way: [ABORT, status, text...] the group failed */
    DSACP_PD_RESULT,    /* to the world's rank 0 at the end: the group's part of the result */
    DSACP_PD_FINAL,     /* from the world's rank 0: [FINAL, status] the run's verdict */
    DSACP_PD_PING,      /* consumer -> producer at the start: [PING] */
    DSACP_PD_PONG,      /* producer -> consumer: [PONG, the producer's clock bits] */
};

/* ---- serve_pd.c ---- */
bool dsacp_pd_leader(const dsacp_pd *pd);
dsacp_comm *dsacp_pd_world(const dsacp_pd *pd);
int dsacp_pd_world_rank(const dsacp_pd *pd);
int dsacp_pd_peer(const dsacp_pd *pd);
double dsacp_pd_timeout(const dsacp_pd *pd);
/* Control messages to / from the other group's leader. send copies w; poll returns at once
 * (*n = 0: nothing; heartbeats are consumed; silence longer than the timeout is DSACP_ECOMM);
 * wait blocks until a message or max_s seconds (< 0: no limit but the timeout; a consumer
 * drains its transfers meanwhile). The words stay valid until the next poll or wait. An ABORT
 * arrives as a message: abort_error makes it the caller's error. */
int dsacp_pd_ctl_send(dsacp_pd *pd, const int64_t *w, int64_t n);
int dsacp_pd_ctl_poll(dsacp_pd *pd, const int64_t **w, int64_t *n);
int dsacp_pd_ctl_wait(dsacp_pd *pd, double max_s, const int64_t **w, int64_t *n);
int dsacp_pd_abort_error(const dsacp_pd *pd, const int64_t *w, int64_t n);
/* The leaders' clocks, at the start of the run (both leaders, before the loop): the consumer's
 * *shift = what to add to a time on its run clock (seconds since its t0) to put it on the
 * producer's (the run's clock: requests arrive there), from the round trip of least delay of a
 * few pings (0 on the producer). */
int dsacp_pd_clock_sync(dsacp_pd *pd, double t0, double *shift);
/* A heartbeat when nothing was sent for a second. */
int dsacp_pd_alive(dsacp_pd *pd);
/* Best effort: tells the other leader this group failed. */
void dsacp_pd_abort(dsacp_pd *pd, int status, const char *msg);
/* Producer: the step's entries (serve index, engine id, old length, new tokens) for the layer
 * hook, which sends each layer's new entries; the step's predicted counters are added. */
void dsacp_pd_step_begin(dsacp_pd *pd, const int64_t *s, const int64_t *eid, const int64_t *a, const int64_t *n,
                         int64_t n_ent);
void dsacp_pd_step_end(dsacp_pd *pd);
/* Producer, every rank, between step_begin and step_end: sends the step's entries of one layer as
 * the layer hook does (the MTP layer's, after the catch-up MTP step over the step's entries; its
 * bytes are in step_begin's prediction, which counts every cached layer). */
int dsacp_pd_send_layer(dsacp_pd *pd, int64_t layer);
/* Waits until every send of this rank completed, at most max_s seconds (< 0: the link's timeout). */
int dsacp_pd_flush(dsacp_pd *pd, double max_s);
/* Consumer: request s (engine id eid, prompt of length tokens) is imported; poll drains what
 * arrived; finish receives the rest of s (the producer's chunks tell how much) and ends the
 * engine's import. */
int dsacp_pd_import_add(dsacp_pd *pd, int64_t s, int64_t eid, int64_t length);
int dsacp_pd_poll(dsacp_pd *pd);
int dsacp_pd_import_finish(dsacp_pd *pd, int64_t s, const int64_t *chunks, int64_t n_chunks);
/* Bytes and messages of every producer rank's sends for a request's chunks. */
void dsacp_pd_chunks_cost(const dsacp_pd *pd, const int64_t *chunks, int64_t n_chunks, int64_t *bytes, int64_t *messages);

#endif
