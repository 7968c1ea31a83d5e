/* engine.h -- internal views of an engine, for tests and the CP layer (not public API). */
#ifndef DSACP_ENGINE_H
#define DSACP_ENGINE_H

#include "cache/kv_cache.h"

/* The engine's cache pool. */
dsacp_kv_cache *dsacp_engine_cache(dsacp_engine *e);
/* A live request's block table, NULL when the id is not live. */
const dsacp_kv_seq *dsacp_engine_request_seq(const dsacp_engine *e, int64_t request_id);

/* Whether growing requests ids[i] (-1: one not added yet, from length 0) to new_len[i] tokens
 * fits the cache pools of every rank of the group; computed locally (every rank's usage follows
 * from the lengths), so the scheduler on rank 0 can admit without asking. */
bool dsacp_engine_fits(const dsacp_engine *e, const int64_t *ids, const int64_t *new_len, int64_t n);
/* Fraction of the busiest rank's latent pool in use. */
double dsacp_engine_kv_use(const dsacp_engine *e);
const dsacp_config *dsacp_engine_config(const dsacp_engine *e);

/* Wall time of the last step on this rank, split by part. */
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

#endif
