/*
 * engine_kv -- the engine's side of a KV relayout between a producer and a consumer group
 * (docs/disaggregation.md): the wire bytes of an entry, this engine's shape as either side of a
 * dsacp_cp_relayout, the copy of a request's entries out of and into its blocks, requests whose
 * prompt arrives from elsewhere (imports), and the hook a step calls after each layer's
 * attention. Every cached layer travels: the target's L and, with opt.mtp, the MTP layer (index L). What a rank keeps is the engine's own rule (dsacp_cp_idx_holds, the latent's
 * sharded or replicated layout), the same as dsacp_cp_relayout_holds computes.
 */
#include "engine/engine_internal.h"

#include <string.h>

int64_t dsacp_engine_kv_wire_bytes(const dsacp_engine *e, int kind)
{
    return kind == DSACP_KV_LATENT ? e->cache->mla_bytes : e->icache->index_bytes;
}

void dsacp_engine_relayout_side(const dsacp_engine *e, bool producer, dsacp_cp_relayout *r)
{
    if (producer) {
        r->Wp = e->cp.W;
        r->Ip = e->cp.opt.interleave;
    } else {
        r->Wd = e->cp.W;
        r->Id = e->cp.opt.interleave;
        r->kv_layout = e->cp.opt.kv_layout;
        r->index_layout = e->cp.opt.index_layout;
        r->index_group = e->cp.opt.index_group;
    }
    r->latent_bytes = dsacp_engine_kv_wire_bytes(e, DSACP_KV_LATENT);
    r->index_bytes = dsacp_engine_kv_wire_bytes(e, DSACP_KV_INDEX);
    r->layers = e->NL; /* every cached layer: the MTP layer's too (index L) with opt.mtp */
}

/* The slot of global position p of kind in request r on this rank, or -1 when this rank does
 * not keep p or p lies beyond the request's reserved blocks (which, during a step, already cover
 * the step's new positions: the length is updated only at the step's end). */
static int64_t kv_slot(const dsacp_engine *e, const dsacp_engine_request *r, int kind, int64_t p)
{
    if (p < 0) return -1;
    const dsacp_kv_cache *c;
    const dsacp_kv_seq *s;
    int64_t lp;
    if (kind == DSACP_KV_LATENT) {
        const int W = e->cp.W;
        const int64_t I = e->cp.opt.interleave;
        const bool all = W == 1 || e->cp.opt.kv_layout == DSACP_LAYOUT_REPLICATED;
        if (!all && dsacp_cp_owner(p, I, W) != e->cp.rank) return -1;
        c = e->cache;
        s = &r->seq;
        lp = all ? p : dsacp_cp_local_pos(p, I, W);
    } else {
        if (!dsacp_cp_idx_holds(&e->cp, p)) return -1;
        c = e->icache;
        s = e->icache == e->cache ? &r->seq : &r->iseq;
        lp = dsacp_cp_idx_local(&e->cp, p);
    }
    if (lp / c->block_size >= s->num_blocks) return -1;
    return dsacp_kv_slot(c, s, lp);
}

/* The request and the checks both directions share; *bytes: wire bytes of one entry. */
static int kv_access(const dsacp_engine *e, int64_t id, int64_t layer, int kind, const void *buf, int64_t n,
                     const dsacp_engine_request **out, int64_t *bytes)
{
    const dsacp_engine_request *r = dsacp_engine_find_request(e, id);
    if (!r) return dsacp_error(DSACP_EINVAL, "kv copy: no live request %lld", (long long)id);
    if (layer < 0 || layer >= e->NL)
        return dsacp_error(DSACP_EINVAL, "kv copy: layer %lld outside [0, %lld)", (long long)layer, (long long)e->NL);
    if (kind != DSACP_KV_LATENT && kind != DSACP_KV_INDEX)
        return dsacp_error(DSACP_EINVAL, "kv copy: kind %d is neither latent (0) nor index (1)", kind);
    if (n < 0 || (n > 0 && !buf)) return dsacp_error(DSACP_EINVAL, "kv copy: bad position count or buffer");
    *out = r;
    *bytes = dsacp_engine_kv_wire_bytes(e, kind);
    return DSACP_OK;
}

/* Every slot of pos[0..n), or DSACP_EINVAL naming the first position this rank cannot copy. */
static int check_positions(const dsacp_engine *e, const dsacp_engine_request *r, int64_t id, int kind,
                           const int64_t *pos, int64_t n)
{
    for (int64_t k = 0; k < n; k++)
        if (kv_slot(e, r, kind, pos[k]) < 0)
            return dsacp_error(DSACP_EINVAL, "kv copy: position %lld of request %lld (%s) is not kept by rank %d "
                               "or lies beyond its reserved blocks", (long long)pos[k], (long long)id,
                               kind == DSACP_KV_LATENT ? "latent" : "index", e->cp.rank);
    return DSACP_OK;
}

int dsacp_engine_kv_pack(const dsacp_engine *e, int64_t id, int64_t layer, int kind, const int64_t *pos, int64_t n,
                         void *out)
{
    const dsacp_engine_request *r;
    int64_t eb;
    int rc = kv_access(e, id, layer, kind, out, n, &r, &eb);
    if (!rc) rc = check_positions(e, r, id, kind, pos, n);
    if (rc) return rc;
    uint8_t *o = out;
    for (int64_t k = 0; k < n; k++) {
        const int64_t slot = kv_slot(e, r, kind, pos[k]);
        if (kind == DSACP_KV_LATENT) dsacp_cp_get_lat(e->cache, layer, slot, o + k * eb);
        else dsacp_cp_get_idx(e->icache, layer, slot, o + k * eb);
    }
    return DSACP_OK;
}

int dsacp_engine_kv_unpack(dsacp_engine *e, int64_t id, int64_t layer, int kind, const int64_t *pos, int64_t n,
                           const void *in)
{
    const dsacp_engine_request *r;
    int64_t eb;
    int rc = kv_access(e, id, layer, kind, in, n, &r, &eb);
    if (!rc) rc = check_positions(e, r, id, kind, pos, n);
    if (rc) return rc;
    const uint8_t *src = in;
    for (int64_t k = 0; k < n; k++) {
        const int64_t slot = kv_slot(e, r, kind, pos[k]);
        if (kind == DSACP_KV_LATENT) dsacp_cp_put_lat(e->cache, layer, slot, src + k * eb);
        else dsacp_cp_put_idx(e->icache, layer, slot, src + k * eb);
    }
    return DSACP_OK;
}

/* ---- imports ---- */

int dsacp_engine_import_begin(dsacp_engine *e, int64_t length, int64_t *id)
{
    if (length < 1 || length > e->cfg->max_position_embeddings || length > INT32_MAX)
        return dsacp_error(DSACP_ERANGE, "import: length %lld outside [1, max_position_embeddings %lld]",
                           (long long)length, (long long)e->cfg->max_position_embeddings);
    const bool split = e->icache != e->cache;
    const int me = e->cp.rank;
    const int64_t kl = dsacp_engine_kept_on(e, e->cp.opt.kv_layout, length, me);
    const int64_t ki = dsacp_engine_kept_on(e, e->cp.opt.index_layout, length, me);
    /* What a step growing a new request to `length` reserves (engine.c's reserve): a fresh table
     * needs the blocks of what this rank keeps, in each pool. */
    const dsacp_kv_seq none = {0};
    const int64_t need_l = dsacp_kv_blocks_needed(e->cache, &none, kl);
    const int64_t need_i = split ? dsacp_kv_blocks_needed(e->icache, &none, ki) : 0;
    if (need_l > e->cache->num_free || need_i > e->icache->num_free)
        return dsacp_error(DSACP_ECAPACITY, "import of %lld positions refused: it needs %lld latent and %lld index "
                           "cache blocks, %lld and %lld are free", (long long)length, (long long)need_l,
                           (long long)need_i, (long long)e->cache->num_free,
                           (long long)(split ? e->icache->num_free : 0));
    int64_t rid;
    int rc = dsacp_engine_add_request(e, &rid);
    if (rc) return rc;
    dsacp_engine_request *r = dsacp_engine_find_request(e, rid);
    rc = dsacp_kv_reserve(e->cache, &r->seq, kl);
    if (!rc && split) rc = dsacp_kv_reserve(e->icache, &r->iseq, ki);
    if (rc) { /* out of memory growing a table: give everything back */
        dsacp_engine_end_request(e, rid);
        return rc;
    }
    r->importing = true;
    r->import_len = length;
    *id = rid;
    return DSACP_OK;
}

int dsacp_engine_import_end(dsacp_engine *e, int64_t id)
{
    dsacp_engine_request *r = dsacp_engine_find_request(e, id);
    if (!r || !r->importing)
        return dsacp_error(DSACP_EINVAL, "import end: request %lld is not being imported", (long long)id);
    const int me = e->cp.rank;
    r->importing = false;
    r->length = r->import_len;
    /* With the MTP layer the producer sent its entries of the prompt too (the link refuses a pair
     * where only one side has it): the MTP layer holds the prompt's positions as the target does. */
    r->mtp_length = e->NL > e->L ? r->length : 0;
    r->seq.length = dsacp_engine_kept_on(e, e->cp.opt.kv_layout, r->length, me);
    if (e->icache != e->cache) r->iseq.length = dsacp_engine_kept_on(e, e->cp.opt.index_layout, r->length, me);
    return DSACP_OK;
}

void dsacp_engine_set_layer_hook(dsacp_engine *e, dsacp_engine_layer_hook fn, void *arg)
{
    e->layer_hook = fn;
    e->layer_hook_arg = arg;
}
