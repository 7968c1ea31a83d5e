/* engine.h -- internal views of an engine, for tests and the CP layer (not public API). */
#ifndef DSACP_ENGINE_H
#define DSACP_ENGINE_H

#include "cache/kv_cache.h"
#include "dsacp_serve.h" /* the engine queries a scheduler needs (admission, KV use, step times) */

/* The engine's cache pool. */
dsacp_kv_cache *dsacp_engine_cache(dsacp_engine *e);
/* A live request's block table, NULL when the id is not live. */
const dsacp_kv_seq *dsacp_engine_request_seq(const dsacp_engine *e, int64_t request_id);

#endif
