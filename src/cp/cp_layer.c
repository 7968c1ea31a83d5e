/*
 * cp_layer.c -- one DSA layer over the CP group (docs/context-parallel.md sections 2-4):
 *
 *   1. projections of the active rows (decode rows: query heads [h0, h1) only; own prefill rows:
 *      all heads)                                                          -- dsacp_dsa_project
 *   2. the new tokens' cache entries, encoded once (staged, one slot per active row)
 *   3. prefill exchange: own prefill tokens' packed entries all-gathered   -- phase prefill_kv
 *   4. persist: each rank writes the new positions its layouts keep
 *   5. prefill attention: own prefill tokens over full views of their requests (sharded earlier
 *      context gathered transiently, phase prefill_kv)                     -- dsacp_dsa_attend_views
 *   6. decode attention: the decode strategy (one file each) fills v for heads [h0, h1)
 *   7. o_proj: own prefill rows with the whole weight; decode rows with this rank's head columns,
 *      then an all-reduce (or, when the columns split FP8 blocks, the heads' v all-gathered and
 *      the whole weight applied)                                           -- phase o_proj
 *   8. selected sets to rank 0 when asked                                  -- phase topk_dump
 *
 * A local failure never skips a collective: the rank keeps going with whatever it has and the
 * status is agreed at the end of the step (engine.c). The step's metadata is cp_step.c, the
 * output projection cp_oproj.c, the decode strategies their own files (cp_strategy.h).
 */
#include "cp/cp_strategy.h"

#include <string.h>

#define KEEP(rc, expr)                                                                            \
    do {                                                                                          \
        int k_ = (expr);                                                                          \
        if (k_ && !(rc)) (rc) = k_;                                                               \
    } while (0)

/* One layer call's buffers (sized by the step's metadata) and its statuses. */
typedef struct layer_call {
    dsacp_cp_ctx *cp;
    const dsacp_dsa_ctx *ctx;
    const dsacp_dsa_weights *w;
    int64_t layer;
    const dsacp_cp_step *st;
    dsacp_dsa_proj p;
    dsacp_kv_cache *stage;       /* the active rows' new entries (slot = row) */
    int64_t *pos_act;            /* [na] */
    float *vcat;                 /* F32 [na][H][dv] */
    int32_t *topk_act;           /* I32 [na][K] */
    uint8_t *entry;              /* one packed cache entry (persist) */
    uint8_t *pre_send, *pre_recv, *want;
    size_t *rb;
    const dsacp_dsa_view **vptr;
    dsacp_comm_request *xreq;    /* the prefill exchange in flight */
    int rc;                      /* local status (the rank keeps taking part) */
    size_t mark;                 /* cp->ws before the layer's buffers */
} layer_call;

static void layer_free(layer_call *c) { dsacp_arena_rewind(c->cp->ws, c->mark); }

/* The staging pool kept in the context, recreated only for more rows than it has. */
static int stage_get(dsacp_cp_ctx *cp, int64_t rows, dsacp_kv_cache **out)
{
    if (!cp->stage || cp->stage_rows < rows) {
        dsacp_kv_cache_free(cp->stage);
        cp->stage = NULL, cp->stage_rows = 0;
        int rc = dsacp_cp_cache_like(cp->lat, cp->idx, 1, rows, &cp->stage);
        if (rc) return rc;
        cp->stage_rows = rows;
    }
    *out = cp->stage;
    return DSACP_OK;
}

void dsacp_cp_layer_buffers_need(size_t *total, const dsacp_cp_ctx *cp, int64_t T, int64_t n_ent)
{
    const dsacp_config *cfg = cp->cfg;
    const int64_t T1 = T > 0 ? T : 1, E = (int64_t)(cp->lat->mla_bytes + cp->idx->index_bytes);
    dsacp_arena_need(total, T + 1, 1, sizeof(int64_t));
    dsacp_arena_need(total, T1, cfg->num_attention_heads * cfg->v_head_dim, sizeof(float));
    dsacp_arena_need(total, T1, cfg->index_topk, sizeof(int32_t));
    dsacp_dsa_proj_need(total, cfg, T);
    dsacp_arena_need(total, cp->W, 1, sizeof(size_t));
    dsacp_arena_need(total, 1, T1 * E + 1, 1);
    dsacp_arena_need(total, 1, T1 * E + 1, 1);
    dsacp_arena_need(total, n_ent > 0 ? n_ent : 1, 1, 1);
    dsacp_arena_need(total, T + 1, 1, sizeof(const dsacp_dsa_view *));
    dsacp_arena_need(total, 1, E, 1);
    /* after the layer's phases: the selected sets' gather (dump_topk) */
    dsacp_arena_need(total, cp->W, 1, sizeof(size_t));
    dsacp_arena_need(total, T1, cfg->index_topk, sizeof(int32_t));
}

/* Every buffer whose size the step's metadata fixes is taken here (from the step workspace,
 * dsacp_cp_layer_buffers_need), and the group agrees on it before the first collective of the
 * layer: a rank short of memory stops every rank at the same point instead of leaving them
 * waiting in a collective. */
static int layer_alloc(layer_call *c)
{
    dsacp_cp_ctx *cp = c->cp;
    dsacp_arena *ws = cp->ws;
    const dsacp_cp_step *st = c->st;
    const dsacp_config *cfg = c->ctx->cfg;
    const int64_t na = st->n_dec + st->n_pre, n1 = na > 0 ? na : 1, W = cp->W, layer = c->layer;
    c->mark = dsacp_arena_mark(ws);
    c->pos_act = dsacp_arena_take(ws, na + 1, 1, sizeof *c->pos_act, "the layer's active rows");
    c->vcat = c->pos_act ? dsacp_arena_take(ws, n1, cfg->num_attention_heads * cfg->v_head_dim, sizeof *c->vcat,
                                            "the layer's values") : NULL;
    c->topk_act = c->vcat ? dsacp_arena_take(ws, n1, cfg->index_topk, sizeof *c->topk_act, "the selected sets") : NULL;
    c->entry = c->topk_act ? dsacp_arena_take(ws, 1, (int64_t)(cp->lat->mla_bytes + cp->idx->index_bytes), 1,
                                              "the cache writes") : NULL;
    int arc = c->entry ? dsacp_dsa_proj_take(&c->p, cfg, na, ws) : DSACP_ENOMEM;
    if (!arc) memset(c->vcat, 0, (size_t)n1 * (size_t)(cfg->num_attention_heads * cfg->v_head_dim) * sizeof *c->vcat);
    if (arc) arc = dsacp_error_context(arc, "layer %lld: %lld active tokens", (long long)layer, (long long)na);
    if (!arc && stage_get(cp, n1, &c->stage))
        arc = dsacp_error(DSACP_ENOMEM, "layer %lld: out of memory staging %lld entries", (long long)layer, (long long)na);
    if (!arc && W > 1 && st->n_pre_all > 0) {
        const int64_t E0 = c->stage->mla_bytes + c->stage->index_bytes;
        c->rb = dsacp_arena_take(ws, W, 1, sizeof *c->rb, "the prefill exchange");
        c->pre_send = c->rb ? dsacp_arena_take(ws, 1, st->n_pre * E0 + 1, 1, "the prefill exchange") : NULL;
        c->pre_recv = c->pre_send ? dsacp_arena_take(ws, 1, st->n_pre_all * E0 + 1, 1, "the prefill exchange") : NULL;
        if (!c->pre_recv) arc = dsacp_error_context(DSACP_ENOMEM, "layer %lld", (long long)layer);
    }
    if (!arc && st->n_pre_all > 0) {
        c->want = dsacp_arena_take(ws, st->n_ent > 0 ? st->n_ent : 1, 1, 1, "the prefill views");
        c->vptr = c->want ? dsacp_arena_take(ws, st->n_pre + 1, 1, sizeof *c->vptr, "the prefill views") : NULL;
        if (!c->vptr) arc = dsacp_error_context(DSACP_ENOMEM, "layer %lld", (long long)layer);
        else memset(c->want, 0, (size_t)(st->n_ent > 0 ? st->n_ent : 1));
    }
    if (!arc && dsacp_fault("layer")) arc = dsacp_fault_error("layer", "the layer's buffers");
    int crc = dsacp_comm_agree(c->cp->comm, arc);
    if (crc) c->cp->step_failed = true;
    return crc;
}

/* 2-3. Stage the new entries (a one-layer pool of block size 1: slot j holds active row j's
 * entries contiguously, the packed format of the exchange), then every prefill token's entry to
 * every rank: one fused non-blocking all-gather, in flight during the query projection. */
static int stage_and_exchange(layer_call *c)
{
    dsacp_cp_ctx *cp = c->cp;
    const dsacp_cp_step *st = c->st;
    const dsacp_config *cfg = c->ctx->cfg;
    const int64_t dc = cfg->kv_lora_rank, dk = dc + cfg->qk_rope_head_dim, di = cfg->index_head_dim;
    const int64_t nd = st->n_dec, np = st->n_pre, W = cp->W;
    for (int64_t j = 0; j < nd + np; j++) {
        dsacp_kv_write_mla(c->stage, 0, j, c->p.kv + j * dk, c->p.kv + j * dk + dc);
        dsacp_kv_write_index(c->stage, 0, j, c->p.ki + j * di);
    }
    if (W == 1 || st->n_pre_all == 0) return DSACP_OK;
    const int64_t ml = c->stage->mla_bytes, E = ml + c->stage->index_bytes;
    for (int64_t q = 0; q < W; q++) c->rb[q] = (size_t)((st->pre_off[q + 1] - st->pre_off[q]) * E);
    for (int64_t j = 0; j < np; j++) {
        dsacp_cp_get_lat(c->stage, 0, nd + j, c->pre_send + j * E);
        dsacp_cp_get_idx(c->stage, 0, nd + j, c->pre_send + j * E + ml);
    }
    int crc = dsacp_comm_iallgatherv(cp->comm, c->pre_send, c->rb[cp->rank], c->pre_recv, c->rb, DSACP_PHASE_prefill_kv,
                                     &c->xreq);
    const int64_t tb = (int64_t)(np + st->n_pre_all) * E;
    if (!crc && tb > cp->transient_peak) cp->transient_peak = tb;
    return crc;
}

/* 1b. Queries: decode rows with this rank's heads (DCP; every head for a strategy that
 * replicates the query projection), the others with all heads; DSA-CP's q_b_proj may come from a
 * layer-shard broadcast. Then the prefill exchange is waited for. */
static int project_queries(layer_call *c, const float *x)
{
    dsacp_cp_ctx *cp = c->cp;
    const dsacp_cp_step *st = c->st;
    const int64_t H = c->ctx->cfg->num_attention_heads, D = c->ctx->cfg->hidden_size, nd = st->n_dec, np = st->n_pre;
    const double t0 = dsacp_now();
    const dsacp_weight *qb = NULL;
    int wrc = dsacp_cp_weights_q(cp, c->layer, &qb);
    if (wrc) {
        dsacp_comm_wait(c->xreq);
        return wrc;
    }
    const bool all_heads = nd > 0 && dsacp_cp_strategy_of(&cp->opt)->all_query_heads;
    const int64_t dh0 = all_heads ? 0 : cp->h0, dh1 = all_heads ? H : cp->h1;
    if (nd > 0 && np > 0 && (dh0 != 0 || dh1 != H)) {
        KEEP(c->rc, dsacp_dsa_project_q(c->ctx, c->w, qb, x, nd, c->pos_act, dh0, dh1, &c->p, 0));
        KEEP(c->rc, dsacp_dsa_project_q(c->ctx, c->w, qb, x + nd * D, np, c->pos_act + nd, 0, H, &c->p, nd));
    } else {
        KEEP(c->rc, dsacp_dsa_project_q(c->ctx, c->w, qb, x, nd + np, c->pos_act, np > 0 ? 0 : dh0, np > 0 ? H : dh1, &c->p, 0));
    }
    const double t1 = dsacp_now();
    cp->t_proj += t1 - t0;
    if (c->xreq) cp->ovl_compute += t1 - t0;
    int crc = dsacp_comm_wait(c->xreq);
    if (c->xreq) cp->ovl_wait += dsacp_now() - t1;
    return crc;
}

/* 4. Persist what this rank's layouts keep (a local failure: no collective here, the rank keeps
 * taking part and its step fails). */
static void persist(layer_call *c)
{
    dsacp_cp_ctx *cp = c->cp;
    const dsacp_cp_step *st = c->st;
    const int64_t W = cp->W, me = cp->rank, I = cp->opt.interleave, ml = c->stage->mla_bytes, E = ml + c->stage->index_bytes;
    uint8_t *tmp = c->entry;
    const bool lat_all = W == 1 || cp->opt.kv_layout == DSACP_LAYOUT_REPLICATED;
    for (int64_t t = 0; t < st->T; t++) {
        const int64_t e = st->ent[t], pp = st->pos[t];
        const bool mine = dsacp_cp_owner(pp, I, W) == me, idx_keep = dsacp_cp_idx_holds(cp, pp);
        if (!(lat_all || mine) && !idx_keep) continue;
        const uint8_t *src;
        if (st->act_row[t] >= 0) {
            dsacp_cp_get_lat(c->stage, 0, st->act_row[t], tmp);
            dsacp_cp_get_idx(c->stage, 0, st->act_row[t], tmp + ml);
            src = tmp;
        } else {
            src = c->pre_recv + st->pre_idx[t] * E; /* W > 1: exchanged above */
        }
        if (lat_all || mine) dsacp_cp_put_lat(cp->lat, c->layer, dsacp_cp_lat_slot(cp, st, e, pp), src);
        if (idx_keep) dsacp_cp_put_idx(cp->idx, c->layer, dsacp_cp_idx_slot(cp, st, e, pp), src + ml);
    }
}

/* 5. Prefill attention over full views (every rank gathers every prefill request's context: the
 * collective is the same everywhere). */
static int prefill_attention(layer_call *c)
{
    dsacp_cp_ctx *cp = c->cp;
    const dsacp_cp_step *st = c->st;
    const int64_t H = c->ctx->cfg->num_attention_heads, dv = c->ctx->cfg->v_head_dim, K = c->ctx->cfg->index_topk;
    const int64_t nd = st->n_dec, np = st->n_pre;
    if (st->n_pre_all == 0) return DSACP_OK;
    for (int64_t e = 0; e < st->n_ent; e++) c->want[e] = !st->decode[e];
    dsacp_cp_views pv = {0};
    int crc = dsacp_cp_views_build(cp, st, c->layer, c->want, c->stage, c->pre_recv, DSACP_PHASE_prefill_kv, &pv, &c->rc);
    if (crc) return crc;
    for (int64_t j = 0; j < np; j++) {
        const int64_t n = c->pos_act[nd + j] + 1;
        cp->stats.prefill_tokens++;
        cp->stats.keys_scored += n;
        cp->stats.keys_attended += n < K ? n : K;
    }
    if (!c->rc) {
        for (int64_t j = 0; j < np; j++) c->vptr[j] = &pv.view[st->ent[st->act[nd + j]]];
        KEEP(c->rc, dsacp_dsa_attend_views(c->ctx, c->w, &c->p, nd, np, c->pos_act + nd, c->vptr, 0, H,
                                           c->vcat + nd * H * dv, c->topk_act + nd * K, c->layer));
    }
    dsacp_cp_views_free(&pv);
    return DSACP_OK;
}

/* Step 8: rank 0 gets every token's selected set in step order. */
static int dump_topk(dsacp_cp_ctx *cp, const dsacp_cp_step *st, int64_t K, const int32_t *topk_act, int32_t *topk)
{
    const int64_t W = cp->W, nd = st->n_dec;
    if (cp->rank == 0 && topk)
        for (int64_t j = 0; j < nd; j++) memcpy(topk + st->act[j] * K, topk_act + j * K, (size_t)K * 4);
    if (st->n_pre_all == 0) return DSACP_OK;
    const size_t mark = dsacp_arena_mark(cp->ws);
    size_t *rb = dsacp_arena_take(cp->ws, W, 1, sizeof *rb, "the selected sets");
    int32_t *all = cp->rank == 0 && rb ? dsacp_arena_take(cp->ws, st->n_pre_all, K, sizeof *all, "the selected sets") : NULL;
    int arc = dsacp_cp_agree_alloc(cp, "topk", rb && (cp->rank != 0 || all), "the selected sets");
    if (arc) {
        dsacp_arena_rewind(cp->ws, mark);
        return arc;
    }
    for (int64_t q = 0; q < W; q++) rb[q] = (size_t)((st->pre_off[q + 1] - st->pre_off[q]) * K) * 4;
    int crc = dsacp_comm_gatherv(cp->comm, topk_act + nd * K, rb[cp->rank], all, rb, DSACP_PHASE_topk_dump);
    if (!crc && cp->rank == 0 && topk)
        for (int64_t k = 0; k < st->n_pre_all; k++) memcpy(topk + st->pre_all[k] * K, all + k * K, (size_t)K * 4);
    dsacp_arena_rewind(cp->ws, mark);
    return crc;
}

/* W = 1, the first strategy: the single-process reference layer of src/attn (dsa_reference.c)
 * on the active rows, no communicator; the same bits as the group's path on one rank (decode and
 * prefill rows attend alike: test_engine's schedule invariance). */
static int solo_layer(dsacp_cp_ctx *cp, const dsacp_dsa_ctx *ctx, const dsacp_dsa_weights *w, int64_t layer,
                      const dsacp_cp_step *st, const float *x, float *out, int32_t *topk)
{
    const int64_t nd = st->n_dec, na = nd + st->n_pre, n1 = na > 0 ? na : 1, K = ctx->cfg->index_topk;
    dsacp_arena *ws = cp->ws; /* holds dsacp_cp_layer_ws_bytes */
    const size_t mark = dsacp_arena_mark(ws);
    int64_t *pos = dsacp_arena_take(ws, n1, 1, sizeof *pos, "the layer's rows");
    dsacp_kv_seq **seq = pos ? dsacp_arena_take(ws, 2 * n1, 1, sizeof *seq, "the layer's rows") : NULL;
    int32_t *tk = seq && st->want_topk && topk ? dsacp_arena_take(ws, n1, K, sizeof *tk, "the selected sets") : NULL;
    int rc = pos && seq && (tk || !(st->want_topk && topk)) ? DSACP_OK : DSACP_ENOMEM;
    if (!rc && dsacp_fault("layer")) rc = dsacp_fault_error("layer", "the layer's buffers");
    if (rc) cp->step_failed = true;
    const dsacp_weight *qb = NULL;
    if (!rc) rc = dsacp_cp_weights_layer_begin(cp, layer);
    if (!rc) rc = dsacp_cp_weights_q(cp, layer, &qb);
    for (int64_t j = 0; j < na && !rc; j++) {
        const int64_t t = st->act[j], e = st->ent[t], n = st->pos[t] + 1;
        pos[j] = st->pos[t], seq[j] = st->lat_seq[e], seq[n1 + j] = st->idx_seq[e];
        if (j < nd) cp->stats.decode_tokens++;
        else cp->stats.prefill_tokens++;
        cp->stats.keys_scored += n;
        cp->stats.keys_attended += n < K ? n : K;
    }
    dsacp_dsa_times tm = {0};
    const dsacp_dsa_rows rows = {na, pos, seq, seq + n1};
    if (!rc) rc = dsacp_dsa_layer(ctx, w, qb, layer, cp->lat, cp->idx, &rows, x, out, tk, &tm, ws);
    cp->t_proj += tm.proj, cp->t_attn += tm.attn, cp->t_oproj += tm.oproj;
    if (!rc) rc = dsacp_cp_weights_layer_done(cp, layer);
    for (int64_t j = 0; j < na && tk && !rc; j++) memcpy(topk + st->act[j] * K, tk + j * K, (size_t)K * sizeof *tk);
    dsacp_arena_rewind(ws, mark);
    return rc;
}

int dsacp_cp_layer_forward(dsacp_cp_ctx *cp, const dsacp_dsa_ctx *ctx, const dsacp_dsa_weights *w, int64_t layer,
                           const dsacp_cp_step *st, const float *x, float *out, int32_t *topk)
{
    if (cp->W == 1) return solo_layer(cp, ctx, w, layer, st, x, out, topk);
    const dsacp_config *cfg = ctx->cfg;
    const int64_t K = cfg->index_topk, nd = st->n_dec, na = nd + st->n_pre;
    const bool deployed = ctx->mode == DSACP_MODE_DEPLOYED;
    /* The strategy's own output merge (lean: needs the whole o_proj on every rank, not DSA-CP's tp
     * activation path) and its partials' wire dtype. */
    const dsacp_cp_strategy *strat = dsacp_cp_strategy_of(&cp->opt);
    const bool tp_a2a_step = cp->wp && cp->wp->o_tp && !cp->wp->step_gather;
    const bool own_merge = nd > 0 && strat->merges_output && strat->merges_output(&cp->opt, tp_a2a_step);
    const bool wire16 = nd > 0 && dsacp_cp_wire_bytes(strat, &cp->opt, deployed) == 2;
    layer_call c = {.cp = cp, .ctx = ctx, .w = w, .layer = layer, .st = st};
    int crc = layer_alloc(&c); /* collective (fatal) status */
    if (crc) goto done;
    for (int64_t j = 0; j < na; j++) c.pos_act[j] = st->pos[st->act[j]];
    /* DSA-CP tp: this layer's o_proj shards start travelling now. */
    if ((crc = dsacp_cp_weights_layer_begin(cp, layer))) goto done;

    /* 1a. The new tokens' latent rows and indexer keys first, so that they travel while the
     *     queries are projected; 2-3 their staging and exchange; 1b the queries. */
    double t0 = dsacp_now();
    KEEP(c.rc, dsacp_dsa_project_kv(ctx, w, x, na, c.pos_act, &c.p, 0));
    cp->t_proj += dsacp_now() - t0;
    if ((crc = stage_and_exchange(&c)) || (crc = project_queries(&c, x))) goto done;
    t0 = dsacp_now();
    persist(&c);
    if ((crc = prefill_attention(&c))) goto done;
    /* 6. Decode attention: the strategy fills v of heads [h0, h1) and the selected sets. */
    if (nd > 0) {
        dsacp_cp_decode_args a = {cp, ctx, w, layer, st, &c.p, c.pos_act, c.stage, c.vcat, c.topk_act, &c.rc,
                                  own_merge, wire16};
        if ((crc = strat->decode(&a))) goto done;
    }
    cp->t_attn += dsacp_now() - t0; /* cache writes, views, index scores, top-k, sparse MLA, W_UV */

    /* 7. Output projection (cp_oproj.c). */
    t0 = dsacp_now();
    if ((crc = dsacp_cp_layer_o_proj(cp, ctx, w, layer, st, own_merge, wire16, c.vcat, out, &c.rc))) goto done;
    cp->t_oproj += dsacp_now() - t0;
    if ((crc = dsacp_cp_weights_layer_done(cp, layer))) goto done;

    /* 8. Selected sets. */
    if (st->want_topk) crc = dump_topk(cp, st, K, c.topk_act, topk);
done:
    layer_free(&c);
    return crc ? crc : c.rc;
}
