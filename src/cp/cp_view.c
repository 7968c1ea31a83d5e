/*
 * cp_view.c -- raw cache entries and transient full views (docs/context-parallel.md, "Views").
 *
 * A view makes positions [0, new_len) of a request readable on this rank in global order: the
 * sharded parts of the earlier context are all-gathered as raw cache entries (the bytes the
 * owner's cache holds, so the kernels see exactly what W = 1 sees), the step's new tokens come
 * from this rank's staged entries or from the prefill exchange. Replicated parts are read in
 * place from the rank's own cache.
 */
#include "cp/cp.h"

#include <string.h>

void dsacp_cp_get_lat(const dsacp_kv_cache *c, int64_t layer, int64_t slot, uint8_t *dst)
{
    memcpy(dst, c->mla[layer] + slot * c->mla_bytes, (size_t)c->mla_bytes);
}

void dsacp_cp_put_lat(dsacp_kv_cache *c, int64_t layer, int64_t slot, const uint8_t *src)
{
    memcpy(c->mla[layer] + slot * c->mla_bytes, src, (size_t)c->mla_bytes);
}

/* The indexer cache keeps a block's e4m3 rows first, then its scales (kv_cache.h). */
void dsacp_cp_get_idx(const dsacp_kv_cache *c, int64_t layer, int64_t slot, uint8_t *dst)
{
    const int64_t B = c->block_size, di = c->di, off = slot % B;
    const uint8_t *base = c->index[layer] + (slot / B) * B * c->index_bytes;
    if (!c->index_fp8) {
        memcpy(dst, base + off * di * 4, (size_t)di * 4);
        return;
    }
    memcpy(dst, base + off * di, (size_t)di);
    memcpy(dst + di, base + B * di + off * 4, 4);
}

void dsacp_cp_put_idx(dsacp_kv_cache *c, int64_t layer, int64_t slot, const uint8_t *src)
{
    const int64_t B = c->block_size, di = c->di, off = slot % B;
    uint8_t *base = c->index[layer] + (slot / B) * B * c->index_bytes;
    if (!c->index_fp8) {
        memcpy(base + off * di * 4, src, (size_t)di * 4);
        return;
    }
    memcpy(base + off * di, src, (size_t)di);
    memcpy(base + B * di + off * 4, src + di, 4);
}

int64_t dsacp_cp_lat_slot(const dsacp_cp_ctx *cp, const dsacp_cp_step *st, int64_t e, int64_t p)
{
    const bool sh = cp->W > 1 && cp->opt.kv_layout == DSACP_LAYOUT_SHARDED;
    const int64_t lp = sh ? dsacp_cp_local_pos(p, cp->opt.interleave, cp->W) : p;
    return dsacp_kv_slot(cp->lat, st->lat_seq[e], lp);
}

int64_t dsacp_cp_idx_slot(const dsacp_cp_ctx *cp, const dsacp_cp_step *st, int64_t e, int64_t p)
{
    return dsacp_kv_slot(cp->idx, st->idx_seq[e], dsacp_cp_idx_local(cp, p));
}

void dsacp_cp_views_free(dsacp_cp_views *v)
{
    if (v->ws) dsacp_arena_rewind(v->ws, v->mark);
    memset(v, 0, sizeof *v);
}

void dsacp_cp_views_release(dsacp_cp_ctx *cp)
{
    dsacp_kv_cache_free(cp->view_cache);
    dsacp_free(cp->view_table), dsacp_free(cp->view_buf);
    cp->view_cache = NULL, cp->view_table = NULL, cp->view_buf = NULL;
    cp->view_blocks = 0;
}

int dsacp_cp_views_reserve(dsacp_cp_ctx *cp, int64_t nblocks)
{
    if (nblocks <= cp->view_blocks) return DSACP_OK;
    dsacp_cp_views_release(cp);
    const int64_t cap = 2 * nblocks, B = cp->block_size, E = (int64_t)(cp->lat->mla_bytes + cp->idx->index_bytes);
    size_t buf = 0; /* what is sent, then what is received: at most cap whole blocks and their table entries each */
    dsacp_arena_need(&buf, 2, cap * (B * E + (int64_t)sizeof(int32_t)) + 1, 1);
    int rc = buf == SIZE_MAX ? dsacp_error(DSACP_ERANGE, "views of %lld blocks: too large", (long long)cap)
                             : dsacp_cp_cache_like(cp->lat, cp->idx, B, cap, &cp->view_cache);
    if (!rc) {
        cp->view_table = dsacp_alloc((size_t)cap * sizeof *cp->view_table);
        cp->view_buf = dsacp_alloc(buf);
        if (!cp->view_table || !cp->view_buf)
            rc = dsacp_error(DSACP_ENOMEM, "out of memory for views of %lld blocks", (long long)cap);
    }
    if (rc) dsacp_cp_views_release(cp);
    else cp->view_blocks = cap;
    return rc;
}

void dsacp_cp_views_tables(dsacp_cp_ctx *cp, const dsacp_cp_step *st, const uint8_t *want, dsacp_kv_seq *seqs)
{
    const int64_t B = cp->block_size;
    int64_t next = 0;
    for (int64_t e = 0; e < st->n_ent; e++) {
        seqs[e] = (dsacp_kv_seq){0};
        if (!want[e]) continue;
        const int64_t nb = (st->new_len[e] + B - 1) / B;
        seqs[e] = (dsacp_kv_seq){cp->view_table + next, nb, nb, 0};
        for (int64_t i = 0; i < nb; i++) cp->view_table[next + i] = (int32_t)(next + i);
        next += nb;
    }
}

int dsacp_cp_cache_like(const dsacp_kv_cache *lat, const dsacp_kv_cache *idx, int64_t B, int64_t nblocks,
                      dsacp_kv_cache **out)
{
    dsacp_config c;
    memset(&c, 0, sizeof c);
    c.kv_lora_rank = lat->dc;
    c.qk_rope_head_dim = lat->dr;
    c.index_head_dim = idx->di;
    return dsacp_kv_cache_create(&c, 1, lat->mla_dtype, idx->index_fp8, B, nblocks, out);
}

/* The view of every entry over this rank's own caches. */
static void views_own(const dsacp_cp_ctx *cp, const dsacp_cp_step *st, int64_t layer, dsacp_cp_views *out)
{
    for (int64_t e = 0; e < st->n_ent; e++)
        out->view[e] = (dsacp_dsa_view){cp->lat, cp->idx, layer, layer, st->lat_seq[e], st->idx_seq[e]};
}

/* The gathered entries and the step's new tokens into the transient pool, where the listed
 * entries' views then read (seqs: block tables carved from cp->view_table in entry order). */
static void views_fill(dsacp_cp_ctx *cp, const dsacp_cp_step *st, const uint8_t *want, const dsacp_kv_cache *stage,
                       const uint8_t *pre_recv, const uint8_t *recv, uint8_t *tmp, dsacp_cp_views *out)
{
    const int64_t W = cp->W, I = cp->opt.interleave, n_ent = st->n_ent;
    const bool lat_sh = W > 1 && cp->opt.kv_layout == DSACP_LAYOUT_SHARDED, idx_sh = W > 1 && cp->iW > 1;
    const int64_t ml = cp->lat->mla_bytes, il = cp->idx->index_bytes, E = ml + il;
    dsacp_kv_cache *vc = cp->view_cache;
    dsacp_cp_views_tables(cp, st, want, out->seqs);
    /* Earlier context, rank by rank, back to global positions. */
    const uint8_t *r = recv;
    for (int64_t q = 0; q < W; q++)
        for (int64_t e = 0; e < n_ent; e++) {
            if (!want[e]) continue;
            const int64_t n = dsacp_cp_local_len(st->old_len[e], q, I, W);
            for (int64_t lp = 0; lp < n; lp++) {
                const int64_t slot = dsacp_kv_slot(vc, &out->seqs[e], dsacp_cp_global_pos(lp, q, I, W));
                if (lat_sh) dsacp_cp_put_lat(vc, 0, slot, r), r += ml;
                if (idx_sh) dsacp_cp_put_idx(vc, 0, slot, r), r += il;
            }
        }
    /* The step's new tokens. */
    for (int64_t t = 0; t < st->T; t++) {
        const int64_t e = st->ent[t];
        if (!want[e]) continue;
        const uint8_t *src;
        if (st->act_row[t] >= 0) {
            dsacp_cp_get_lat(stage, 0, st->act_row[t], tmp);
            dsacp_cp_get_idx(stage, 0, st->act_row[t], tmp + ml);
            src = tmp;
        } else if (pre_recv && st->pre_idx[t] >= 0) {
            src = pre_recv + st->pre_idx[t] * E;
        } else {
            continue; /* cannot happen: every new token is staged here or exchanged */
        }
        const int64_t slot = dsacp_kv_slot(vc, &out->seqs[e], st->pos[t]);
        if (lat_sh) dsacp_cp_put_lat(vc, 0, slot, src);
        if (idx_sh) dsacp_cp_put_idx(vc, 0, slot, src + ml);
    }
    for (int64_t e = 0; e < n_ent; e++) {
        if (!want[e]) continue;
        if (lat_sh) out->view[e].lat = vc, out->view[e].lat_layer = 0, out->view[e].lat_seq = &out->seqs[e];
        if (idx_sh) out->view[e].idx = vc, out->view[e].idx_layer = 0, out->view[e].idx_seq = &out->seqs[e];
    }
}

void dsacp_cp_views_need(size_t *total, const dsacp_cp_ctx *cp, int64_t n_ent)
{
    const int64_t n1 = n_ent > 0 ? n_ent : 1;
    dsacp_arena_need(total, n1, 1, sizeof(dsacp_dsa_view));
    dsacp_arena_need(total, cp->W, 1, sizeof(size_t));
    dsacp_arena_need(total, n1, 1, sizeof(dsacp_kv_seq));
    dsacp_arena_need(total, 1, (int64_t)(cp->lat->mla_bytes + cp->idx->index_bytes), 1);
}

int dsacp_cp_views_build(dsacp_cp_ctx *cp, const dsacp_cp_step *st, int64_t layer, const uint8_t *want,
                         const dsacp_kv_cache *stage, const uint8_t *pre_recv, int phase, dsacp_cp_views *out,
                         int *rc)
{
    memset(out, 0, sizeof *out);
    out->n_ent = st->n_ent;
    out->ws = cp->ws, out->mark = dsacp_arena_mark(cp->ws);
    const int64_t W = cp->W, me = cp->rank, I = cp->opt.interleave, n_ent = st->n_ent, n1 = n_ent > 0 ? n_ent : 1;
    const bool lat_sh = W > 1 && cp->opt.kv_layout == DSACP_LAYOUT_SHARDED;
    /* A partial index layout travels like a sharded one: every rank sends the keys of the
     * positions it owns (they are among those its group holds). */
    const bool idx_sh = W > 1 && cp->iW > 1;
    out->view = dsacp_arena_take(cp->ws, n1, 1, sizeof *out->view, "the views");
    if (!lat_sh && !idx_sh) {
        /* No collective here: a failure is this rank's own (poisoned step, *rc). */
        if (!out->view) *rc = *rc ? *rc : DSACP_ENOMEM;
        else views_own(cp, st, layer, out);
        return DSACP_OK;
    }
    const int64_t ml = cp->lat->mla_bytes, il = cp->idx->index_bytes;
    const int64_t Esh = (lat_sh ? ml : 0) + (idx_sh ? il : 0), E = ml + il, B = cp->block_size;
    /* What each rank sends: its local entries of the listed requests' earlier context. */
    size_t *rb = out->view ? dsacp_arena_take(cp->ws, W, 1, sizeof *rb, "the views") : NULL;
    out->seqs = rb ? dsacp_arena_take(cp->ws, n1, 1, sizeof *out->seqs, "the views") : NULL;
    uint8_t *tmp = out->seqs ? dsacp_arena_take(cp->ws, 1, E, 1, "the views") : NULL;
    int64_t nblocks = 0;
    size_t total = 0;
    if (tmp) {
        views_own(cp, st, layer, out);
        memset(rb, 0, (size_t)W * sizeof *rb);
        for (int64_t e = 0; e < n_ent; e++) {
            if (!want[e]) continue;
            for (int64_t q = 0; q < W; q++) rb[q] += (size_t)(dsacp_cp_local_len(st->old_len[e], q, I, W) * Esh);
            nblocks += (st->new_len[e] + B - 1) / B;
        }
        for (int64_t q = 0; q < W; q++) total += rb[q];
    }
    /* Every rank reaches the agreement (a rank short of memory with sizes unknown included). */
    int lrc = tmp ? dsacp_cp_views_reserve(cp, nblocks > 0 ? nblocks : 1) : DSACP_ENOMEM;
    if (!lrc && dsacp_fault("views")) lrc = dsacp_fault_error("views", "the gathered views");
    lrc = dsacp_comm_agree(cp->comm, lrc); /* the largest transient: every rank has it, or all stop */
    if (lrc) {
        cp->step_failed = true;
        dsacp_cp_views_free(out);
        return lrc;
    }
    uint8_t *send = cp->view_buf, *recv = send + rb[me], *s = send;
    for (int64_t e = 0; e < n_ent; e++) {
        if (!want[e]) continue;
        const int64_t n = dsacp_cp_local_len(st->old_len[e], me, I, W);
        for (int64_t lp = 0; lp < n; lp++) {
            if (lat_sh) dsacp_cp_get_lat(cp->lat, layer, dsacp_kv_slot(cp->lat, st->lat_seq[e], lp), s), s += ml;
            if (idx_sh) dsacp_cp_get_idx(cp->idx, layer, dsacp_cp_idx_slot(cp, st, e, dsacp_cp_global_pos(lp, me, I, W)), s), s += il;
        }
    }
    int crc = dsacp_comm_allgatherv(cp->comm, send, rb[me], recv, rb, phase);
    if (crc) return crc;
    views_fill(cp, st, want, stage, pre_recv, recv, tmp, out);
    const dsacp_kv_cache *vc = cp->view_cache;
    out->bytes = (int64_t)total + (int64_t)rb[me] + nblocks * B * (vc->mla_bytes + vc->index_bytes);
    if (out->bytes > cp->transient_peak) cp->transient_peak = out->bytes;
    return DSACP_OK;
}
