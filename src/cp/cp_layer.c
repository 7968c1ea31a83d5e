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
 * status is agreed at the end of the step (engine.c).
 */
#include "cp/cp_strategy.h"
#include "dsacp_plan.h"

#include <stdlib.h>
#include <string.h>

int dsacp_cp_agree_alloc(dsacp_cp_ctx *cp, const char *site, bool ok, const char *what)
{
    int rc = DSACP_OK;
    if (!ok) rc = dsacp_error(DSACP_ENOMEM, "%s: out of memory", what);
    else if (dsacp_fault(site)) rc = dsacp_fault_error(site, what);
    rc = dsacp_comm_agree_phase(cp->comm, rc, -1);
    if (rc) cp->step_failed = true;
    return rc;
}

static int64_t assigned_rank(const dsacp_cp_ctx *cp, const dsacp_cp_step *st, int64_t t, int64_t chunk)
{
    const int64_t W = cp->W;
    switch (cp->opt.prefill_split) {
    case DSACP_PREFILL_CONTIGUOUS: return t / chunk;
    case DSACP_PREFILL_ZIGZAG: {
        const int64_t e = st->ent[t], n = st->new_len[e] - st->old_len[e], i = st->pos[t] - st->old_len[e];
        int64_t c = i * 2 * W / n; /* then the exact chunk of the balanced split n c / (2W) */
        while (c + 1 < 2 * W && dsacp_split_begin(n, c + 1, 2 * W) <= i) c++;
        while (c > 0 && dsacp_split_begin(n, c, 2 * W) > i) c--;
        return c < W ? c : 2 * W - 1 - c;
    }
    default: return dsacp_cp_owner(st->pos[t], cp->opt.interleave, W);
    }
}

void dsacp_cp_context_rule(const dsacp_cp_ctx *cp, int64_t old_len, double *gather_bytes, double *per_token)
{
    /* One rule (cp_formula.c): what the engine decides, `dsacp plan` predicts. */
    dsacp_cp_context_bytes(cp->cfg, &cp->opt, cp->W, (int64_t)cp->lat->mla_bytes, (int64_t)cp->idx->index_bytes,
                           cp->deployed, cp->o_gather_v, old_len, gather_bytes, per_token);
}

/* The path of a chunk of n_new tokens after old_len sharded positions: the option, or (auto)
 * the chooser the engine installed (the planner's time on a hardware profile), else the byte
 * rule. */
static int context_distributed(dsacp_cp_ctx *cp, int64_t old_len, int64_t n_new, bool *dist)
{
    *dist = cp->opt.context_path == DSACP_CONTEXT_DISTRIBUTED;
    if (cp->opt.context_path != DSACP_CONTEXT_AUTO) return DSACP_OK;
    if (cp->hw && cp->choose_context)
        return cp->choose_context(cp->cfg, &cp->opt, cp->W, (int64_t)cp->lat->mla_bytes, (int64_t)cp->idx->index_bytes,
                                  cp->deployed, cp->o_gather_v, cp->wp && cp->wp->tp_f32, cp->hw, old_len, n_new, dist);
    if (cp->hw) /* until the engine installs its chooser */
        return dsacp_plan_context_distributed(cp->cfg, &cp->opt, cp->W, (int64_t)cp->lat->mla_bytes,
                                              (int64_t)cp->idx->index_bytes, cp->deployed, cp->o_gather_v,
                                              cp->wp && cp->wp->tp_f32, cp->hw, old_len, n_new, dist);
    double g, per;
    dsacp_cp_context_rule(cp, old_len, &g, &per);
    *dist = (double)n_new * per < g;
    return DSACP_OK;
}

int dsacp_cp_step_build(dsacp_cp_ctx *cp, dsacp_cp_step *st, dsacp_cp_step_mem *m)
{
    memset(m, 0, sizeof *m);
    const int64_t T = st->T, W = cp->W, n_ent = st->n_ent;
    m->decode = calloc((size_t)(n_ent > 0 ? n_ent : 1), 1);
    m->act = malloc((size_t)(T > 0 ? T : 1) * sizeof *m->act);
    m->act_row = malloc((size_t)(T > 0 ? T : 1) * sizeof *m->act_row);
    m->pre_all = malloc((size_t)(T > 0 ? T : 1) * sizeof *m->pre_all);
    m->pre_idx = malloc((size_t)(T > 0 ? T : 1) * sizeof *m->pre_idx);
    m->pre_off = calloc((size_t)W + 1, sizeof *m->pre_off);
    if (!m->decode || !m->act || !m->act_row || !m->pre_all || !m->pre_idx || !m->pre_off) {
        dsacp_cp_step_free(m);
        return dsacp_error(DSACP_ENOMEM, "out of memory for the step's metadata");
    }
    /* Decode tokens go to every rank (DCP) unless DSA-CP keeps every cache whole: DSA-CP + DCP
     * splits the prefill tokens and attends the decode tokens over the sharded cache with the
     * decode strategy. */
    const bool dsa_cp_only = cp->opt.mode == DSACP_CP_DSA_CP &&
                             (W == 1 || (cp->opt.kv_layout == DSACP_LAYOUT_REPLICATED &&
                                         cp->opt.index_layout == DSACP_LAYOUT_REPLICATED));
    for (int64_t e = 0; e < n_ent; e++) m->decode[e] = !dsa_cp_only && st->new_len[e] - st->old_len[e] == 1;
    /* A chunk whose earlier context is sharded (chunked prefill, a cached prefix): gathered for
     * it (the prefill path below), or its tokens processed like decode tokens on every rank
     * through the decode strategy (distributed), or the cheaper of the two in bytes (auto). */
    const bool sharded = W > 1 && !dsa_cp_only &&
                         (cp->opt.kv_layout == DSACP_LAYOUT_SHARDED || cp->iW > 1);
    char choice = '-';
    for (int64_t e = 0; e < n_ent && sharded; e++) {
        const int64_t nn = st->new_len[e] - st->old_len[e];
        if (m->decode[e] || st->old_len[e] == 0 || nn < 1) continue;
        bool dist = false;
        int drc = context_distributed(cp, st->old_len[e], nn, &dist);
        if (drc) { /* agreed by the caller: every rank stops the step */
            dsacp_cp_step_free(m);
            return drc;
        }
        m->decode[e] = dist;
        if (dist) cp->stats.context_distributed++;
        else cp->stats.context_gather++;
        const char c = dist ? 'd' : 'g';
        choice = choice == '-' || choice == c ? c : 'm';
    }
    if (choice != '-') {
        if (cp->nctx_choices == cp->capctx_choices) {
            const int64_t cap = cp->capctx_choices ? 2 * cp->capctx_choices : 64;
            char *nb = realloc(cp->ctx_choices, (size_t)cap + 1);
            if (nb) cp->ctx_choices = nb, cp->capctx_choices = cap;
        }
        if (cp->nctx_choices < cp->capctx_choices) cp->ctx_choices[cp->nctx_choices++] = choice, cp->ctx_choices[cp->nctx_choices] = 0;
    }
    /* The rank that computes a non-decode token: its position's owner, DSA-CP's flat slice of
     * the step's batch padded to a multiple of W, or the zigzag chunk of its request's new
     * tokens (2W near-equal chunks: rank r takes chunks r and 2W - 1 - r). */
    const int64_t chunk = (T + W - 1) / W;
#define ASSIGNED(t) assigned_rank(cp, st, (t), chunk)
    int64_t nd = 0, np = 0, npa = 0;
    for (int64_t t = 0; t < T; t++) {
        m->act_row[t] = -1;
        m->pre_idx[t] = -1;
        if (m->decode[st->ent[t]]) m->act_row[t] = nd++;
        else m->pre_off[ASSIGNED(t) + 1]++, npa++;
    }
    for (int64_t q = 0; q < W; q++) m->pre_off[q + 1] += m->pre_off[q];
    int64_t *fill = calloc((size_t)W, sizeof *fill);
    if (!fill) {
        dsacp_cp_step_free(m);
        return dsacp_error(DSACP_ENOMEM, "out of memory for the step's metadata");
    }
    for (int64_t t = 0, j = 0; t < T; t++) {
        if (m->decode[st->ent[t]]) {
            m->act[j++] = t;
            continue;
        }
        const int64_t q = ASSIGNED(t), k = m->pre_off[q] + fill[q]++;
        m->pre_all[k] = t;
        m->pre_idx[t] = k;
        if (q == cp->rank) {
            m->act[nd + np] = t;
            m->act_row[t] = nd + np++;
        }
    }
#undef ASSIGNED
    free(fill);
    st->decode = m->decode;
    st->act = m->act;
    st->act_row = m->act_row;
    st->pre_all = m->pre_all;
    st->pre_off = m->pre_off;
    st->pre_idx = m->pre_idx;
    st->n_dec = nd;
    st->n_pre = np;
    st->n_pre_all = npa;
    return DSACP_OK;
}

void dsacp_cp_step_free(dsacp_cp_step_mem *m)
{
    free(m->decode);
    free(m->act);
    free(m->act_row);
    free(m->pre_all);
    free(m->pre_off);
    free(m->pre_idx);
    memset(m, 0, sizeof *m);
}

#define KEEP(rc, expr)                                                                            \
    do {                                                                                          \
        int k_ = (expr);                                                                          \
        if (k_ && !(rc)) (rc) = k_;                                                               \
    } while (0)

/* The heads' v rows of the decode tokens to every rank (vcat's rows become whole). */
static int gather_v(dsacp_cp_ctx *cp, const dsacp_config *cfg, const dsacp_cp_step *st, float *vcat);

/* Step 7 for the decode rows on W > 1: with `shard` (this rank's head columns of o_proj),
 * partial sums over the columns, all-reduced; without, the heads' v rows are all-gathered and the
 * whole `full` o_proj applied (bit-identical to W = 1). */
static int decode_o_proj(dsacp_cp_ctx *cp, const dsacp_dsa_ctx *ctx, const dsacp_dsa_weights *w,
                         const dsacp_weight *shard, const dsacp_weight *full, const dsacp_cp_step *st, float *vcat,
                         float *out, bool bf16, int *rc)
{
    const dsacp_config *cfg = ctx->cfg;
    const int64_t H = cfg->num_attention_heads, dv = cfg->v_head_dim, D = cfg->hidden_size, nd = st->n_dec;
    const int64_t h0 = cp->h0, h1 = cp->h1;
    const bool deployed = ctx->mode == DSACP_MODE_DEPLOYED;
    if (shard) {
        bool aq = deployed && w->o->dtype == DSACP_F8_E4M3 && w->o->cols % 128 == 0;
        if (aq && shard->dtype != w->o->dtype) {
            /* f32 columns of an FP8 o_proj (blocks split by the heads): the activation
             * quantization needs whole rows, so the rows travel first. */
            int crc = gather_v(cp, cfg, st, vcat);
            if (crc) return crc;
            for (int64_t j = 0; j < nd; j++) dsacp_fake_quant_e4m3_groups(vcat + j * H * dv, H * dv, 128);
            aq = false;
        }
        if (h1 > h0) KEEP(*rc, dsacp_linear(shard, vcat + h0 * dv, nd, H * dv, out, D, aq));
        else memset(out, 0, (size_t)(nd * D) * 4);
        return dsacp_comm_allreduce_wire(cp->comm, out, nd * D, bf16, DSACP_PHASE_o_proj);
    }
    int crc = gather_v(cp, cfg, st, vcat);
    if (!crc) KEEP(*rc, dsacp_linear(full, vcat, nd, H * dv, out, D, deployed));
    return crc;
}

static int gather_v(dsacp_cp_ctx *cp, const dsacp_config *cfg, const dsacp_cp_step *st, float *vcat)
{
    const int64_t H = cfg->num_attention_heads, dv = cfg->v_head_dim, nd = st->n_dec;
    const int64_t W = cp->W, h0 = cp->h0, h1 = cp->h1;
    size_t *rb = calloc((size_t)W, sizeof *rb);
    float *send = calloc((size_t)(nd * (h1 - h0) * dv) + 1, 4), *recv = malloc((size_t)(nd * H * dv) * 4 + 4);
    int arc = dsacp_cp_agree_alloc(cp, "o_proj", rb && send && recv, "the o_proj exchange");
    if (arc) {
        free(rb), free(send), free(recv);
        return arc;
    }
    for (int64_t q = 0; q < W; q++)
        rb[q] = (size_t)(nd * (dsacp_split_begin(H, q + 1, W) - dsacp_split_begin(H, q, W)) * dv) * 4;
    for (int64_t j = 0; j < nd; j++) memcpy(send + j * (h1 - h0) * dv, vcat + (j * H + h0) * dv, (size_t)((h1 - h0) * dv) * 4);
    int crc = dsacp_comm_allgatherv(cp->comm, send, rb[cp->rank], recv, rb, DSACP_PHASE_o_proj);
    if (!crc) {
        const float *r = recv;
        for (int64_t q = 0; q < W; q++) {
            const int64_t a = dsacp_split_begin(H, q, W), b = dsacp_split_begin(H, q + 1, W);
            for (int64_t j = 0; j < nd; j++, r += (b - a) * dv) memcpy(vcat + (j * H + a) * dv, r, (size_t)((b - a) * dv) * 4);
        }
    }
    free(rb), free(send), free(recv);
    return crc;
}

/* DSA-CP, o_proj tp on a step that moves activations: v columns of each rank's heads go to it
 * (all-to-all: [own tokens x all heads] -> [all tokens x own heads]), each rank applies its
 * shard, and a reduce-scatter sums the partials back to [own tokens x D]. In deployed mode the
 * FP8 activation quantization is applied to whole v rows first, exactly where the full
 * o_proj would apply it. */
static int tp_o_proj(dsacp_cp_ctx *cp, const dsacp_dsa_ctx *ctx, const dsacp_dsa_weights *w, int64_t layer,
                     const dsacp_cp_step *st, float *v, float *out, int *rc)
{
    const dsacp_config *cfg = ctx->cfg;
    const dsacp_cp_weights *wp = cp->wp;
    const int64_t H = cfg->num_attention_heads, dv = cfg->v_head_dim, D = cfg->hidden_size, np = st->n_pre;
    const int W = cp->W, me = cp->rank;
    const int64_t ncol = H * dv, mine = wp->col[me + 1] - wp->col[me], Tall = st->n_pre_all;
    if (ctx->mode == DSACP_MODE_DEPLOYED && w->o->dtype == DSACP_F8_E4M3 && w->o->cols % 128 == 0)
        for (int64_t j = 0; j < np; j++) dsacp_fake_quant_e4m3_groups(v + j * ncol, ncol, 128);
    size_t *sb = malloc((size_t)W * sizeof *sb), *rb = malloc((size_t)W * sizeof *rb);
    int64_t *cnt = malloc((size_t)W * sizeof *cnt);
    float *send = malloc((size_t)(np * ncol) * 4 + 4), *x = malloc((size_t)(Tall * mine) * 4 + 4);
    float *y = malloc((size_t)(Tall * D) * 4 + 4);
    int crc = dsacp_cp_agree_alloc(cp, "o_proj", sb && rb && cnt && send && x && y, "tp o_proj");
    if (!crc) {
        float *s = send;
        for (int q = 0; q < W; q++) {
            const int64_t c0 = wp->col[q], nc = wp->col[q + 1] - c0, Tq = st->pre_off[q + 1] - st->pre_off[q];
            for (int64_t j = 0; j < np; j++, s += nc) memcpy(s, v + j * ncol + c0, (size_t)nc * 4);
            sb[q] = (size_t)(np * nc) * 4;
            rb[q] = (size_t)(Tq * mine) * 4;
            cnt[q] = Tq * D;
        }
        crc = dsacp_comm_alltoallv(cp->comm, send, sb, x, rb, DSACP_PHASE_o_proj);
    }
    if (!crc) {
        if (mine > 0) {
            int r2 = dsacp_linear(wp->o_tp[layer], x, Tall, mine, y, D, false);
            if (r2 && !*rc) *rc = r2;
        } else {
            memset(y, 0, (size_t)(Tall * D) * 4);
        }
        crc = dsacp_comm_reduce_scatter_f32(cp->comm, y, out, cnt, DSACP_PHASE_o_proj);
    }
    free(sb), free(rb), free(cnt), free(send), free(x), free(y);
    return crc;
}

/* Step 8: rank 0 gets every token's selected set in step order. */
static int dump_topk(dsacp_cp_ctx *cp, const dsacp_cp_step *st, int64_t K, const int32_t *topk_act, int32_t *topk)
{
    const int64_t W = cp->W, nd = st->n_dec;
    if (cp->rank == 0 && topk)
        for (int64_t j = 0; j < nd; j++) memcpy(topk + st->act[j] * K, topk_act + j * K, (size_t)K * 4);
    if (st->n_pre_all == 0) return DSACP_OK;
    size_t *rb = malloc((size_t)W * sizeof *rb);
    int32_t *all = cp->rank == 0 ? malloc((size_t)(st->n_pre_all * K) * 4) : NULL;
    int arc = dsacp_cp_agree_alloc(cp, "topk", rb && (cp->rank != 0 || all), "the selected sets");
    if (arc) {
        free(rb), free(all);
        return arc;
    }
    for (int64_t q = 0; q < W; q++) rb[q] = (size_t)((st->pre_off[q + 1] - st->pre_off[q]) * K) * 4;
    int crc = dsacp_comm_gatherv(cp->comm, topk_act + nd * K, rb[cp->rank], all, rb, DSACP_PHASE_topk_dump);
    if (!crc && cp->rank == 0 && topk)
        for (int64_t k = 0; k < st->n_pre_all; k++) memcpy(topk + st->pre_all[k] * K, all + k * K, (size_t)K * 4);
    free(rb), free(all);
    return crc;
}

int dsacp_cp_layer_forward(dsacp_cp_ctx *cp, const dsacp_dsa_ctx *ctx, const dsacp_dsa_weights *w, int64_t layer,
                           const dsacp_cp_step *st, const float *x, float *out, int32_t *topk)
{
    const dsacp_config *cfg = ctx->cfg;
    const int64_t H = cfg->num_attention_heads, dv = cfg->v_head_dim, D = cfg->hidden_size, K = cfg->index_topk;
    const int64_t dc = cfg->kv_lora_rank, dk = dc + cfg->qk_rope_head_dim, di = cfg->index_head_dim;
    const int64_t nd = st->n_dec, np = st->n_pre, na = nd + np, W = cp->W, me = cp->rank, I = cp->opt.interleave;
    const bool deployed = ctx->mode == DSACP_MODE_DEPLOYED;
    int rc = DSACP_OK, crc = DSACP_OK; /* local status; collective (fatal) status */
    /* lean: partials in bf16 unless exact numerics or --partials fp32; the output merge needs the
     * whole o_proj on every rank (not DSA-CP's tp activation path, which keeps it split). */
    const dsacp_cp_strategy *strat = dsacp_cp_strategy_of(&cp->opt);
    const bool tp_a2a_step = cp->wp && cp->wp->o_tp && !cp->wp->step_gather;
    const bool lean_out = nd > 0 && strat->merges_output && strat->merges_output(&cp->opt, tp_a2a_step);
    const bool wire16 = nd > 0 && dsacp_cp_wire_bytes(strat, &cp->opt, deployed) == 2;

    dsacp_dsa_proj p;
    dsacp_kv_cache *stage = NULL;
    dsacp_cp_views pv = {0};
    int64_t *pos_act = malloc((size_t)(na + 1) * sizeof *pos_act);
    float *vcat = dsacp_calloc((size_t)(na > 0 ? na : 1) * (size_t)(H * dv), 4);
    int32_t *topk_act = malloc((size_t)((na > 0 ? na : 1) * K) * 4);
    uint8_t *pre_send = NULL, *pre_recv = NULL, *want = NULL;
    size_t *rb = NULL;
    const dsacp_dsa_view **vptr = NULL;
    /* Every buffer whose size the step's metadata fixes is allocated here, and the group agrees
     * on it before the first collective of the layer: a rank short of memory stops every rank
     * at the same point instead of leaving them waiting in a collective. */
    int arc = DSACP_OK;
    if (dsacp_dsa_proj_alloc(&p, cfg, na) || !pos_act || !vcat || !topk_act)
        arc = dsacp_error(DSACP_ENOMEM, "layer %lld: out of memory for %lld active tokens", (long long)layer, (long long)na);
    if (!arc && dsacp_cp_cache_like(cp->lat, cp->idx, 1, na > 0 ? na : 1, &stage))
        arc = dsacp_error(DSACP_ENOMEM, "layer %lld: out of memory staging %lld entries", (long long)layer, (long long)na);
    if (!arc && W > 1 && st->n_pre_all > 0) {
        const int64_t E0 = stage->mla_bytes + stage->index_bytes;
        rb = malloc((size_t)W * sizeof *rb);
        pre_send = malloc((size_t)(np * E0) + 1);
        pre_recv = malloc((size_t)(st->n_pre_all * E0) + 1);
        if (!rb || !pre_send || !pre_recv)
            arc = dsacp_error(DSACP_ENOMEM, "layer %lld: out of memory for the prefill exchange", (long long)layer);
    }
    if (!arc && st->n_pre_all > 0) {
        want = calloc((size_t)(st->n_ent > 0 ? st->n_ent : 1), 1);
        vptr = malloc((size_t)(np + 1) * sizeof *vptr);
        if (!want || !vptr) arc = dsacp_error(DSACP_ENOMEM, "layer %lld: out of memory for the prefill views", (long long)layer);
    }
    if (!arc && dsacp_fault("layer")) arc = dsacp_fault_error("layer", "the layer's buffers");
    crc = dsacp_comm_agree(cp->comm, arc);
    if (crc) cp->step_failed = true;
    if (crc) goto done;
    for (int64_t j = 0; j < na; j++) pos_act[j] = st->pos[st->act[j]];
    /* DSA-CP tp: this layer's o_proj shards start travelling now. */
    crc = dsacp_cp_weights_layer_begin(cp, layer);
    if (crc) goto done;

    /* 1a. The new tokens' latent rows and indexer keys first, so that they can travel while the
     *     queries are projected. */
    double t0 = dsacp_now();
    KEEP(rc, dsacp_dsa_project_kv(ctx, w, x, na, pos_act, &p, 0));
    cp->t_proj += dsacp_now() - t0;

    /* 2. Stage the new entries: a one-layer pool of block size 1 (allocated above), so that slot j
     *    holds active row j's entries contiguously (the packed format of the exchange). */
    for (int64_t j = 0; j < na; j++) {
        dsacp_kv_write_mla(stage, 0, j, p.kv + j * dk, p.kv + j * dk + dc);
        dsacp_kv_write_index(stage, 0, j, p.ki + j * di);
    }
    const int64_t ml = stage->mla_bytes, il = stage->index_bytes, E = ml + il;

    /* 3. Prefill exchange: every prefill token's entry to every rank, one fused non-blocking
     *    all-gather in flight during the query projection. */
    dsacp_comm_request *xreq = NULL;
    if (W > 1 && st->n_pre_all > 0) {
        for (int64_t q = 0; q < W; q++) rb[q] = (size_t)((st->pre_off[q + 1] - st->pre_off[q]) * E);
        for (int64_t j = 0; j < np; j++) {
            dsacp_cp_get_lat(stage, 0, nd + j, pre_send + j * E);
            dsacp_cp_get_idx(stage, 0, nd + j, pre_send + j * E + ml);
        }
        crc = dsacp_comm_iallgatherv(cp->comm, pre_send, rb[me], pre_recv, rb, DSACP_PHASE_prefill_kv, &xreq);
        if (crc) goto done;
        const int64_t tb = (int64_t)(np + st->n_pre_all) * E;
        if (tb > cp->transient_peak) cp->transient_peak = tb;
    }

    /* 1b. Queries: decode rows with this rank's heads (DCP), the others with all heads; DSA-CP's
     *     q_b_proj may come from a layer-shard broadcast. */
    t0 = dsacp_now();
    {
        const dsacp_weight *qb = NULL;
        int wrc = dsacp_cp_weights_q(cp, layer, &qb);
        if (wrc) {
            dsacp_comm_wait(xreq);
            crc = wrc;
            goto done;
        }
        /* lean replicates the query projection: decode rows get every head too. */
        const bool all_heads = nd > 0 && strat->all_query_heads;
        const int64_t dh0 = all_heads ? 0 : cp->h0, dh1 = all_heads ? H : cp->h1;
        if (nd > 0 && np > 0 && (dh0 != 0 || dh1 != H)) {
            KEEP(rc, dsacp_dsa_project_q(ctx, w, qb, x, nd, pos_act, dh0, dh1, &p, 0));
            KEEP(rc, dsacp_dsa_project_q(ctx, w, qb, x + nd * D, np, pos_act + nd, 0, H, &p, nd));
        } else {
            KEEP(rc, dsacp_dsa_project_q(ctx, w, qb, x, na, pos_act, np > 0 ? 0 : dh0, np > 0 ? H : dh1, &p, 0));
        }
    }
    {
        const double t1 = dsacp_now();
        cp->t_proj += t1 - t0;
        if (xreq) cp->ovl_compute += t1 - t0;
        crc = dsacp_comm_wait(xreq);
        if (xreq) cp->ovl_wait += dsacp_now() - t1;
    }
    if (crc) goto done;
    t0 = dsacp_now();

    /* 4. Persist what this rank's layouts keep. */
    /* (A local failure: no collective here, the rank keeps taking part and its step fails.) */
    uint8_t *tmp = malloc((size_t)E);
    if (!tmp) KEEP(rc, dsacp_error(DSACP_ENOMEM, "layer %lld: out of memory writing the cache", (long long)layer));
    if (tmp) {
        const bool lat_all = W == 1 || cp->opt.kv_layout == DSACP_LAYOUT_REPLICATED;
        for (int64_t t = 0; t < st->T; t++) {
            const int64_t e = st->ent[t], pp = st->pos[t];
            const bool mine = dsacp_cp_owner(pp, I, W) == me, idx_keep = dsacp_cp_idx_holds(cp, pp);
            if (!(lat_all || mine) && !idx_keep) continue;
            const uint8_t *src;
            if (st->act_row[t] >= 0) {
                dsacp_cp_get_lat(stage, 0, st->act_row[t], tmp);
                dsacp_cp_get_idx(stage, 0, st->act_row[t], tmp + ml);
                src = tmp;
            } else {
                src = pre_recv + st->pre_idx[t] * E; /* W > 1: exchanged above */
            }
            if (lat_all || mine) dsacp_cp_put_lat(cp->lat, layer, dsacp_cp_lat_slot(cp, st, e, pp), src);
            if (idx_keep) dsacp_cp_put_idx(cp->idx, layer, dsacp_cp_idx_slot(cp, st, e, pp), src + ml);
        }
        free(tmp);
    }

    /* 5. Prefill attention over full views (every rank gathers every prefill request's context:
     *    the collective is the same everywhere). */
    if (st->n_pre_all > 0) {
        for (int64_t e = 0; e < st->n_ent; e++) want[e] = !st->decode[e];
        crc = dsacp_cp_views_build(cp, st, layer, want, stage, pre_recv, DSACP_PHASE_prefill_kv, &pv, &rc);
        if (crc) goto done;
        for (int64_t j = 0; j < np; j++) {
            cp->stats.prefill_tokens++;
            cp->stats.keys_scored += pos_act[nd + j] + 1;
            cp->stats.keys_attended += pos_act[nd + j] + 1 < K ? pos_act[nd + j] + 1 : K;
        }
        if (!rc) {
            for (int64_t j = 0; j < np; j++) vptr[j] = &pv.view[st->ent[st->act[nd + j]]];
            KEEP(rc, dsacp_dsa_attend_views(ctx, w, &p, nd, np, pos_act + nd, vptr, 0, H, vcat + nd * H * dv,
                                            topk_act + nd * K, layer));
        }
        dsacp_cp_views_free(&pv);
    }

    /* 6. Decode attention: the strategy fills v of heads [h0, h1) and the selected sets. */
    if (nd > 0) {
        dsacp_cp_decode_args a = {cp, ctx, w, layer, st, &p, pos_act, stage, vcat, topk_act, &rc, lean_out, wire16};
        crc = strat->decode(&a);
        if (crc) goto done;
    }

    cp->t_attn += dsacp_now() - t0; /* cache writes, views, index scores, top-k, sparse MLA, W_UV */
    t0 = dsacp_now();
    /* 7. Output projection. */
    if (W == 1) {
        KEEP(rc, dsacp_linear(w->o, vcat, na, H * dv, out, D, deployed));
    } else {
        /* DSA-CP's tp in a step without prefill moves activations; otherwise the whole o_proj comes
         * from the plan (the rank's own, a layer-shard broadcast, or the tp gather). Decode rows
         * (DCP) use this rank's head columns when there are any, else the gathered v rows. */
        const bool tp_a2a = cp->wp && cp->wp->o_tp && !cp->wp->step_gather;
        const dsacp_weight *o = w->o, *shard = NULL;
        if (!tp_a2a) crc = dsacp_cp_weights_o_full(cp, layer, &o); /* DSA-CP: broadcast or gathered weight */
        if (crc) goto done;
        if (cp->wp && cp->wp->o_tp) shard = cp->wp->o_tp[layer];
        else if (cp->o_shard && !cp->o_gather_v) shard = cp->o_shard[layer];
        if (tp_a2a) {
            if (st->n_pre_all > 0) crc = tp_o_proj(cp, ctx, w, layer, st, vcat + nd * H * dv, out + nd * D, &rc);
            if (!crc && nd > 0) crc = decode_o_proj(cp, ctx, w, shard, o, st, vcat, out, wire16, &rc);
            if (crc) goto done;
            goto projected;
        }
        bool aq = deployed;
        if (deployed && o->dtype != w->o->dtype && w->o->dtype == DSACP_F8_E4M3 && w->o->cols % 128 == 0) {
            /* A tp gather held as f32 (FP8 blocks split by the head columns): the activation
             * quantization the FP8 o_proj applies is applied here, on whole rows. */
            for (int64_t j = 0; j < np; j++) dsacp_fake_quant_e4m3_groups(vcat + (nd + j) * H * dv, H * dv, 128);
            aq = false;
        }
        if (np > 0) KEEP(rc, dsacp_linear(o, vcat + nd * H * dv, np, H * dv, out + nd * D, D, aq));
        if (nd > 0 && lean_out) crc = strat->o_proj(cp, ctx, o, st, vcat, out, &rc);
        else if (nd > 0) crc = decode_o_proj(cp, ctx, w, shard, o, st, vcat, out, wire16, &rc);
        if (crc) goto done;
    }
projected:
    cp->t_oproj += dsacp_now() - t0;
    crc = dsacp_cp_weights_layer_done(cp, layer);
    if (crc) goto done;

    /* 8. Selected sets. */
    if (st->want_topk) {
        if (W == 1) {
            if (topk)
                for (int64_t j = 0; j < na; j++) memcpy(topk + st->act[j] * K, topk_act + j * K, (size_t)K * 4);
        } else {
            crc = dump_topk(cp, st, K, topk_act, topk);
        }
    }
done:
    dsacp_dsa_proj_free(&p);
    dsacp_kv_cache_free(stage);
    free(pos_act);
    dsacp_free(vcat);
    free(topk_act);
    free(pre_send);
    free(pre_recv);
    free(want);
    free(vptr);
    free(rb);
    return crc ? crc : rc;
}

/* ---- the single-process layer: the solo case ---- */

int dsacp_dsa_forward(const dsacp_dsa_ctx *ctx, const dsacp_dsa_weights *w, int64_t layer,
                      const dsacp_step_tokens *tok, const float *x, float *out, int32_t *topk)
{
    if (tok->T == 0) return DSACP_OK;
    /* Entries: one per distinct sequence of the step, in order of first appearance. */
    const int64_t T = tok->T;
    int64_t n_ent = 0;
    for (int64_t t = 0; t < T; t++)
        if (tok->seq[t] + 1 > n_ent) n_ent = tok->seq[t] + 1;
    int64_t *old_len = calloc((size_t)n_ent, sizeof *old_len), *new_len = calloc((size_t)n_ent, sizeof *new_len);
    float *xa = dsacp_alloc((size_t)(T * ctx->cfg->hidden_size) * 4), *oa = dsacp_alloc((size_t)(T * ctx->cfg->hidden_size) * 4);
    dsacp_comm *solo = NULL;
    int rc = (old_len && new_len && xa && oa) ? dsacp_comm_create_solo(&solo)
                                                        : dsacp_error(DSACP_ENOMEM, "out of memory");
    dsacp_cp_step_mem mem = {0};
    if (!rc) {
        for (int64_t e = 0; e < n_ent; e++) old_len[e] = INT64_MAX;
        for (int64_t t = 0; t < T; t++) {
            const int64_t e = tok->seq[t];
            if (tok->pos[t] < old_len[e]) old_len[e] = tok->pos[t];
            if (tok->pos[t] + 1 > new_len[e]) new_len[e] = tok->pos[t] + 1;
        }
        for (int64_t e = 0; e < n_ent; e++)
            if (old_len[e] == INT64_MAX) old_len[e] = new_len[e] = 0;
        dsacp_cp_ctx cp = {.cfg = ctx->cfg, .comm = solo, .icomm = solo, .iW = 1, .iI = 1, .W = 1, .rank = 0,
                           .lat = ctx->cache, .idx = ctx->cache,
                           .block_size = ctx->cache->block_size, .h0 = 0, .h1 = ctx->cfg->num_attention_heads};
        dsacp_cp_options_default(&cp.opt);
        dsacp_cp_step st = {.T = T, .n_ent = n_ent, .pos = tok->pos, .ent = tok->seq, .old_len = old_len,
                            .new_len = new_len, .lat_seq = tok->seqs, .idx_seq = tok->seqs, .want_topk = topk != NULL};
        rc = dsacp_cp_step_build(&cp, &st, &mem);
        const int64_t D = ctx->cfg->hidden_size;
        if (!rc) {
            for (int64_t j = 0; j < T; j++) memcpy(xa + j * D, x + st.act[j] * D, (size_t)D * 4);
            rc = dsacp_cp_layer_forward(&cp, ctx, w, layer, &st, xa, oa, topk);
            for (int64_t j = 0; j < T && !rc; j++) memcpy(out + st.act[j] * D, oa + j * D, (size_t)D * 4);
        }
    }
    dsacp_cp_step_free(&mem);
    dsacp_comm_free(solo);
    free(old_len), free(new_len);
    dsacp_free(xa), dsacp_free(oa);
    return rc;
}
