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

/* Whether one request of `length` cached positions fits every rank's pools when it is alone in
 * them (whatever is live now): the online loop's admission check of a request that arrives while
 * others run (the batch loop checks on an empty engine with dsacp_engine_fits). */
bool dsacp_engine_fits_alone(const dsacp_engine *e, int64_t length);

/* ---- disaggregation: the engine's KV as a relayout moves it (engine_kv.c) ---- */

/* Wire bytes per position, one layer: latent = the cache's entry bytes (f32 (dc+dr)*4, bf16 *2,
 * fp8_ds_mla 656 for V3.2: the stored bytes, copied as they are); index = f32 di*4, fp8 di + 4
 * (e4m3 row then its fp32 scale). kind: DSACP_KV_LATENT or DSACP_KV_INDEX (cp/cp.h). */
int64_t dsacp_engine_kv_wire_bytes(const dsacp_engine *e, int kind);
/* This engine's side of a relayout: as producer (Wp, Ip) or as consumer (Wd, Id, layouts, wire
 * bytes, layers). Fills only that side's fields (and bytes/layers). */
struct dsacp_cp_relayout;
void dsacp_engine_relayout_side(const dsacp_engine *e, bool producer, struct dsacp_cp_relayout *r);
/* Copy out / in the entries of global positions pos[0..n) of one layer of live request id, which
 * this rank keeps (DSACP_EINVAL naming the position otherwise) and which are below the request's
 * reserved blocks. Entries are packed one after the other, wire bytes each. pack works while a
 * step is running (called from the layer hook: the step's new positions are written but the
 * request's length is not yet updated). unpack writes the bytes as they are (the same dtype on
 * both sides: checked when the link is made). */
int dsacp_engine_kv_pack(const dsacp_engine *e, int64_t id, int64_t layer, int kind, const int64_t *pos, int64_t n,
                         void *out);
int dsacp_engine_kv_unpack(dsacp_engine *e, int64_t id, int64_t layer, int kind, const int64_t *pos, int64_t n,
                           const void *in);
/* A request whose first `length` positions arrive from elsewhere: blocks reserved on this rank for
 * what its layouts keep of [0, length) (DSACP_ECAPACITY, nothing changed, when short), the request
 * not steppable (a step naming it: DSACP_EINVAL) until import_end, which makes its length `length`.
 * Local calls (every rank of the group makes the same calls in the same order: ids agree). */
int dsacp_engine_import_begin(dsacp_engine *e, int64_t length, int64_t *id);
int dsacp_engine_import_end(dsacp_engine *e, int64_t id);
/* Called on every rank after each layer's attention (cache entries of the step written), before
 * the MLP; a non-zero return fails the step like a local error (agreed at the step's end). fn
 * NULL: no hook. */
typedef int (*dsacp_engine_layer_hook)(void *arg, int64_t layer);
void dsacp_engine_set_layer_hook(dsacp_engine *e, dsacp_engine_layer_hook fn, void *arg);

/* The engine's options and its CP group's (W = 1: the defaults it was created with); borrowed. */
const dsacp_engine_options *dsacp_engine_options_get(const dsacp_engine *e);
const dsacp_cp_options *dsacp_engine_cp_options(const dsacp_engine *e);

#endif
