/*
 * comm -- the collectives the CP strategies use, over an MPI communicator or over a solo one
 * (W = 1, no MPI), each counted per rank and per phase in logical bytes (dsacp_cp.h gives the
 * definition per collective; docs/context-parallel.md the formulas per strategy), and point to
 * point messages between the ranks of one communicator (the link between rank groups). Only comm.c
 * includes mpi.h. Every function but the point-to-point ones is collective over the communicator:
 * all ranks call it, in the same order, with sizes that agree. Buffers are plain bytes or F32; blocks land in rank order.
 * Calls core (errors, timer, fault injection) and numerics (bf16 conversion of the wire formats),
 * and jansson for the report.
 */
#ifndef DSACP_COMM_H
#define DSACP_COMM_H

#include "core/core.h"
#include "dsacp_cp.h"

/* All-gather of blocks of different sizes: rank q contributes recv_bytes[q] bytes (send_bytes
 * on this rank must equal recv_bytes[rank]); recv receives them concatenated in rank order. */
int dsacp_comm_allgatherv(dsacp_comm *c, const void *send, size_t send_bytes, void *recv,
                          const size_t *recv_bytes, int phase);
/* Equal blocks: dsacp_comm_allgather (include/dsacp_cp.h). */
/* The same, non-blocking: start, compute, then wait (time is counted in both calls). Wait on
 * (or test until done) every request a start returned (dsacp_comm_wait accepts NULL) before freeing its
 * communicator; the wait hands the request back to the communicator, which reuses it for the
 * next start, so that once a step's requests exist the non-blocking collectives allocate
 * nothing (what the MPI library allocates inside its own calls aside). */
typedef struct dsacp_comm_request dsacp_comm_request;
int dsacp_comm_iallgatherv(dsacp_comm *c, const void *send, size_t send_bytes, void *recv,
                           const size_t *recv_bytes, int phase, dsacp_comm_request **req);
int dsacp_comm_wait(dsacp_comm_request *req);
/* Non-blocking broadcast from `root` of one object in up to two pieces (a weight's data and its
 * block scales): one call, len1 + len2 bytes. buf2 may be NULL with len2 = 0. */
int dsacp_comm_ibcast2(dsacp_comm *c, void *buf1, size_t len1, void *buf2, size_t len2, int root, int phase,
                       dsacp_comm_request **req);
/* All-to-all: send holds W blocks (send_bytes[q] for rank q, concatenated), recv receives W
 * blocks (recv_bytes[q] from rank q). */
int dsacp_comm_alltoallv(dsacp_comm *c, const void *send, const size_t *send_bytes, void *recv,
                         const size_t *recv_bytes, int phase);
/* Sum over ranks, scattered: send F32 [sum counts] (block q = counts[q] floats, in rank order),
 * recv F32 [counts[rank]] = elementwise sum of every rank's block `rank`. */
int dsacp_comm_reduce_scatter_f32(dsacp_comm *c, const float *send, float *recv, const int64_t *counts,
                                  int phase);
/* The same two with a choice of wire format: bf16 sends every block as bf16 (round to nearest
 * even) and sums the received blocks in fp32 in rank order; the all-reduce rounds the sums to
 * bf16 before they are gathered, so every rank holds the same bits. Counted like the f32
 * versions with 2-byte elements (the reduce-scatter travels as one all-to-all). bf16 == false:
 * exactly the f32 functions. */
int dsacp_comm_reduce_scatter_wire(dsacp_comm *c, const float *send, float *recv, const int64_t *counts, bool bf16,
                                   int phase);
int dsacp_comm_allreduce_wire(dsacp_comm *c, float *buf, int64_t n, bool bf16, int phase);
/* Gather to rank 0: rank q sends recv_bytes[q] bytes; on rank 0 recv gets them in rank order
 * (recv may be NULL elsewhere). */
int dsacp_comm_gatherv(dsacp_comm *c, const void *send, size_t send_bytes, void *recv,
                       const size_t *recv_bytes, int phase);

/* Collective over c: the ranks passing the same color form a new communicator, ranked by key.
 * It counts into c's counters (the same phases), so that a report of c includes its traffic.
 * A group of one is a solo communicator. Free it before c. */
int dsacp_comm_split(dsacp_comm *c, int color, int key, dsacp_comm **out);

/* Split into groups with their own counters, a duplicate, the wait bound: dsacp_comm_split_group,
 * dsacp_comm_dup, dsacp_comm_set_timeout (include/dsacp_cp.h). */

/* ---- point to point (not collective) ----
 * One message counts ONE call on each side, under the phase its calls name: the sender adds the
 * call and bytes_sent when it starts the send, the receiver the call and bytes_recv when it
 * receives; seconds = time inside the calls (tests and waits included). A message to oneself, a
 * peer outside [0, size), a tag outside [0, dsacp_comm_tag_max] and any call on a solo
 * communicator (it has no peers) are DSACP_EINVAL; a message over 2^31 - 1 bytes DSACP_ERANGE;
 * MPI errors DSACP_ECOMM with MPI's message. Messages between two ranks with one tag arrive in
 * the order they were sent (MPI's non-overtaking rule). */

/* Start a send of `bytes` of buf to rank `dest`: buf must stay untouched until the request
 * completes (dsacp_comm_wait or dsacp_comm_test), which hands the request back to the
 * communicator (reused, as the collectives' are; any number may be in flight). The wait is bounded
 * by the communicator's timeout: when it expires (DSACP_ECOMM naming the peer, the tag and the
 * seconds) the request is handed back all the same, but the send stays with MPI, which may still
 * read buf: keep buf allocated (the run is ending with an error anyway). dsacp_comm_free frees
 * the requests never waited on too (a run ending with an error): do not use them afterwards. */
int dsacp_comm_isend(dsacp_comm *c, int dest, int tag, const void *buf, size_t bytes, int phase,
                     dsacp_comm_request **req);
/* Whether req (a send or a non-blocking collective) has completed, without blocking: *done true
 * when it has -- the request is then handed back, as by dsacp_comm_wait -- or when the test failed
 * (the error returned, the request handed back too). NULL: done. */
int dsacp_comm_test(dsacp_comm_request *req, bool *done);
/* A message waiting to be received, as dsacp_comm_improbe found it; mpi_ is MPI's handle of the
 * matched message (NULL once received). */
typedef struct dsacp_comm_message {
    int source, tag;
    size_t bytes;
    void *mpi_;
} dsacp_comm_message;
/* Matched probe, not blocking: is a message from `source` (-1: any) with `tag` (-1: any) waiting?
 * *found; when found, msg describes it and it is no longer visible to other probes or receives:
 * it MUST be received with dsacp_comm_mrecv. */
int dsacp_comm_improbe(dsacp_comm *c, int source, int tag, bool *found, dsacp_comm_message *msg);
/* Receive the message improbe matched into buf (msg->bytes bytes), counted under `phase`. */
int dsacp_comm_mrecv(dsacp_comm *c, dsacp_comm_message *msg, void *buf, int phase);
/* Blocking forms, bounded by the communicator's timeout (they poll, back to back for 2 ms and
 * then sleeping 50-200 us between polls, so that a dead peer or link is DSACP_ECOMM within the
 * timeout, never a hang). send: isend + wait. recv: exactly `bytes` from `source` (-1: any; *from
 * gets the sender, may be NULL) with `tag` (-1: any); a message of another size is received
 * (consumed) and refused with DSACP_ECOMM naming both sizes. */
int dsacp_comm_send(dsacp_comm *c, int dest, int tag, const void *buf, size_t bytes, int phase);
int dsacp_comm_recv(dsacp_comm *c, int source, int tag, void *buf, size_t bytes, int phase, int *from);
/* The blocking forms' wait, for a caller's own polling loop (several sources or requests at
 * once): start, then after every unsuccessful poll dsacp_comm_poll_next, which returns at once
 * for the first 2 ms (polls back to back: a message on a live link is taken at MPI's latency),
 * then sleeps 50 us doubling to 200 us, and returns false once timeout_s (<= 0: none) has
 * passed since the start. */
typedef struct dsacp_comm_poll {
    double spin_end, deadline;
    long sleep_ns;
} dsacp_comm_poll;
void dsacp_comm_poll_start(dsacp_comm_poll *p, double timeout_s);
bool dsacp_comm_poll_next(dsacp_comm_poll *p);
/* The largest tag MPI allows on c (MPI_TAG_UB, at least 32767; 32767 for a solo communicator). */
int dsacp_comm_tag_max(const dsacp_comm *c);

/* dsacp_comm_agree counted under a phase or uncounted: dsacp_comm_agree_phase (include/dsacp_cp.h). */

/* Balanced split of n items over W ranks: rank r takes [n r / W, n (r + 1) / W). */
static inline int64_t dsacp_split_begin(int64_t n, int64_t r, int64_t W) { return n * r / W; }

#endif
