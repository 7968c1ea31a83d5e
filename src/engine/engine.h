/* engine.h -- internal views of an engine, for tests and the CP layer (not public API). */
#ifndef DSACP_ENGINE_H
#define DSACP_ENGINE_H

#include "cache/kv_cache.h"
#include "dsacp_serve.h" /* the engine queries a scheduler needs (admission, KV use, step times) */

/* The engine's cache pool. */
dsacp_kv_cache *dsacp_engine_cache(dsacp_engine *e);
/* A live request's block table, NULL when the id is not live. */
const dsacp_kv_seq *dsacp_engine_request_seq(const dsacp_engine *e, int64_t request_id);

/* The largest step the engine accepts, in tokens (vLLM's max_num_batched_tokens): sizes the step
 * workspace now for any step of at most max_tokens tokens, so that none of them grows it, and
 * refuses a larger step whole with DSACP_EINVAL naming max_num_batched_tokens (the same verdict
 * on every rank). 0, the default: no limit; the workspace then grows before the first step
 * larger than any before. Local: give every rank of the group the same value. */
int dsacp_engine_set_max_num_batched_tokens(dsacp_engine *e, int64_t max_tokens);

#endif
