/*
 * comm -- the collectives the CP strategies use, over an MPI communicator or over a solo one
 * (W = 1, no MPI), each counted per rank and per phase in logical bytes (dsacp_cp.h gives the
 * definition per collective; docs/context-parallel.md the formulas per strategy). Only comm.c
 * includes mpi.h. Every function is collective over the communicator: all ranks call it, in the
 * same order, with sizes that agree. Buffers are plain bytes or F32; blocks land in rank order.
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
 * every request a start returned (dsacp_comm_wait accepts NULL) before freeing its
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

/* dsacp_comm_agree counted under a phase or uncounted: dsacp_comm_agree_phase (include/dsacp_cp.h). */

/* Balanced split of n items over W ranks: rank r takes [n r / W, n (r + 1) / W). */
static inline int64_t dsacp_split_begin(int64_t n, int64_t r, int64_t W) { return n * r / W; }

#endif
