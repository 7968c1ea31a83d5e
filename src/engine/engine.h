/* engine.h -- internal views of an engine, for tests and the CP layer (not public API). */
#ifndef DSACP_ENGINE_H
#define DSACP_ENGINE_H

#include "cache/kv_cache.h"

/* The engine's cache pool. */
dsacp_kv_cache *dsacp_engine_cache(dsacp_engine *e);
/* A live request's block table, NULL when the id is not live. */
const dsacp_kv_seq *dsacp_engine_request_seq(const dsacp_engine *e, int64_t request_id);

/* Wall time of the last step on this rank, split by part. */
typedef struct dsacp_step_times {
    double step, attention, mlp;
} dsacp_step_times;
dsacp_step_times dsacp_engine_last_step_times(const dsacp_engine *e);

/* For benchmarks: gives an empty live request `length` cached positions of deterministic
 * pseudo-random latent rows and indexer keys (the same values for every W and layout; each
 * rank writes what its layouts keep), without running the model. Collective. */
int dsacp_engine_fill_random(dsacp_engine *e, int64_t request_id, int64_t length, uint64_t seed);

#endif
