/*
 * cp_step.c -- a step's metadata on a rank (docs/context-parallel.md sections 2 and 4): which
 * tokens are decode-like (every rank, heads split) and which are prefill tokens of which rank
 * (the split: owner, contiguous or zigzag, or the caller's placement for an MTP step), verify
 * entries (decode rows), the context path of a chunk after a sharded context (gather,
 * distributed, or auto by the byte rule or the engine's chooser).
 */
#include "cp/cp_strategy.h"

#include <stdlib.h>
#include <string.h>

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
    /* One rule (cp_rules.c): what the engine decides, `dsacp plan` predicts. */
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
    double g, per;
    dsacp_cp_context_rule(cp, old_len, &g, &per);
    *dist = (double)n_new * per < g;
    return DSACP_OK;
}

/* Records one step's context-path letter (g, d or m) in cp->ctx_choices. */
static void record_choice(dsacp_cp_ctx *cp, char choice)
{
    if (cp->nctx_choices == cp->capctx_choices) {
        const int64_t cap = cp->capctx_choices ? 2 * cp->capctx_choices : 64;
        char *nb = realloc(cp->ctx_choices, (size_t)cap + 1);
        if (nb) cp->ctx_choices = nb, cp->capctx_choices = cap;
    }
    if (cp->nctx_choices < cp->capctx_choices) cp->ctx_choices[cp->nctx_choices++] = choice, cp->ctx_choices[cp->nctx_choices] = 0;
}

/* Which entries are decode-like (decode[e] = 1: every rank, heads split).
 * - Given placement (an MTP step): an entry's rows run where their hidden inputs are, decode
 *   rows when its first token's place is -1; no context-path choice.
 * - Otherwise decode tokens go to every rank (DCP) unless DSA-CP keeps every cache whole
 *   (DSA-CP + DCP splits the prefill tokens and attends the decode tokens over the sharded cache
 *   with the decode strategy); a verify entry's rows are decode rows under the same condition,
 *   each with its own causal bound, never the context-path choice.
 * - A chunk whose earlier context is sharded (chunked prefill, a cached prefix): gathered for it
 *   (the prefill path), or its tokens processed like decode tokens on every rank through the
 *   decode strategy (distributed), or the cheaper of the two in bytes (auto). */
static int step_decode(dsacp_cp_ctx *cp, const dsacp_cp_step *st, uint8_t *decode)
{
    const int64_t W = cp->W, n_ent = st->n_ent;
    memset(decode, 0, (size_t)(n_ent > 0 ? n_ent : 1));
    if (st->place) {
        for (int64_t t = st->T - 1; t >= 0; t--) decode[st->ent[t]] = st->place[t] == -1; /* ends at the first token */
        return DSACP_OK;
    }
    const bool dsa_cp_only = cp->opt.mode == DSACP_CP_DSA_CP &&
                             (W == 1 || (cp->opt.kv_layout == DSACP_LAYOUT_REPLICATED &&
                                         cp->opt.index_layout == DSACP_LAYOUT_REPLICATED));
    for (int64_t e = 0; e < n_ent; e++) {
        const bool verify = st->flags && (st->flags[e] & DSACP_ENTRY_VERIFY);
        decode[e] = !dsa_cp_only && (verify || st->new_len[e] - st->old_len[e] == 1);
    }
    const bool sharded = W > 1 && !dsa_cp_only && (cp->opt.kv_layout == DSACP_LAYOUT_SHARDED || cp->iW > 1);
    char choice = '-';
    for (int64_t e = 0; e < n_ent && sharded; e++) {
        const int64_t nn = st->new_len[e] - st->old_len[e];
        if (decode[e] || st->old_len[e] == 0 || nn < 1) continue;
        bool dist = false;
        int drc = context_distributed(cp, st->old_len[e], nn, &dist);
        if (drc) return drc;
        decode[e] = dist;
        if (dist) cp->stats.context_distributed++;
        else cp->stats.context_gather++;
        const char c = dist ? 'd' : 'g';
        choice = choice == '-' || choice == c ? c : 'm';
    }
    if (choice != '-') record_choice(cp, choice);
    return DSACP_OK;
}

/* The step's metadata, in the order step_take takes it. */
size_t dsacp_cp_step_ws_bytes(const dsacp_cp_ctx *cp, int64_t T, int64_t n_ent)
{
    const int64_t W = cp->W, T1 = T > 0 ? T : 1;
    size_t total = 0;
    dsacp_arena_need(&total, n_ent > 0 ? n_ent : 1, 1, 1);
    for (int i = 0; i < 4; i++) dsacp_arena_need(&total, T1, 1, sizeof(int64_t));
    dsacp_arena_need(&total, W + 1, 1, sizeof(int64_t));
    dsacp_arena_need(&total, W, 1, sizeof(int64_t));
    return total;
}

/* What a layer takes and gives back: at W = 1 solo_layer's rows, then the single-process
 * layer's own (cp_layer.c); at W > 1 the layer call's buffers (n_ent <= T) and what its phases
 * take after them. */
size_t dsacp_cp_layer_ws_bytes(const dsacp_cp_ctx *cp, int64_t T)
{
    const int64_t T1 = T > 0 ? T : 1;
    size_t total = 0;
    if (cp->W != 1) {
        /* the layer call's buffers, held through the layer; then, one after another and each
         * given back, the phases of src/attn it runs (the linears' scratch, prefill attention
         * and the gathering strategies' attention: dsacp_dsa_layer_need's bound), the
         * strategy's decode, the decode rows' o_proj, the transient views */
        const dsacp_cp_strategy *s = dsacp_cp_strategy_of(&cp->opt);
        dsacp_cp_layer_buffers_need(&total, cp, T, T);
        dsacp_dsa_layer_need(&total, cp->cfg, cp->layer_w, cp->n_layers, T, cp->max_context, cp->deployed);
        if (s->ws_need) s->ws_need(&total, cp, T);
        dsacp_cp_oproj_need(&total, cp, T);
        dsacp_cp_views_need(&total, cp, T);
        return total;
    }
    dsacp_arena_need(&total, T1, 1, sizeof(int64_t));
    dsacp_arena_need(&total, 2 * T1, 1, sizeof(dsacp_kv_seq *));
    dsacp_arena_need(&total, T1, cp->cfg->index_topk, sizeof(int32_t));
    dsacp_dsa_layer_need(&total, cp->cfg, cp->layer_w, cp->n_layers, T, cp->max_context, cp->deployed);
    return total;
}

static int step_take(dsacp_cp_ctx *cp, int64_t T, int64_t n_ent, dsacp_cp_step_mem *m, int64_t **fill)
{
    dsacp_arena *ws = cp->ws;
    const int64_t W = cp->W, T1 = T > 0 ? T : 1;
    if (!(m->decode = dsacp_arena_take(ws, n_ent > 0 ? n_ent : 1, 1, 1, "the step's metadata")) ||
        !(m->act = dsacp_arena_take(ws, T1, 1, sizeof *m->act, "the step's metadata")) ||
        !(m->act_row = dsacp_arena_take(ws, T1, 1, sizeof *m->act_row, "the step's metadata")) ||
        !(m->pre_all = dsacp_arena_take(ws, T1, 1, sizeof *m->pre_all, "the step's metadata")) ||
        !(m->pre_idx = dsacp_arena_take(ws, T1, 1, sizeof *m->pre_idx, "the step's metadata")) ||
        !(m->pre_off = dsacp_arena_take(ws, W + 1, 1, sizeof *m->pre_off, "the step's metadata")) ||
        !(*fill = dsacp_arena_take(ws, W, 1, sizeof **fill, "the step's metadata")))
        return DSACP_ENOMEM;
    memset(m->pre_off, 0, (size_t)(W + 1) * sizeof *m->pre_off);
    memset(*fill, 0, (size_t)W * sizeof **fill);
    return DSACP_OK;
}

int dsacp_cp_step_build(dsacp_cp_ctx *cp, dsacp_cp_step *st, dsacp_cp_step_mem *m)
{
    memset(m, 0, sizeof *m);
    const int64_t T = st->T, W = cp->W, n_ent = st->n_ent;
    int64_t *fill = NULL;
    int trc = step_take(cp, T, n_ent, m, &fill);
    if (trc) {
        memset(m, 0, sizeof *m);
        return trc;
    }
    int drc = step_decode(cp, st, m->decode);
    if (drc) { /* agreed by the caller: every rank stops the step */
        dsacp_cp_step_free(m);
        return drc;
    }
    /* The rank that computes a non-decode token: the given place (an MTP step), its position's
     * owner, DSA-CP's flat slice of the step's batch padded to a multiple of W, or the zigzag
     * chunk of its request's new tokens (2W near-equal chunks: rank r takes chunks r and
     * 2W - 1 - r). */
    const int64_t chunk = (T + W - 1) / W;
    for (int64_t t = 0; st->place && t < T; t++)
        if (!m->decode[st->ent[t]] && (st->place[t] < 0 || st->place[t] >= W)) {
            dsacp_cp_step_free(m);
            return dsacp_error(DSACP_EINVAL, "place[%lld] = %d: not a rank of the group of %lld (entry %d mixes "
                               "decode rows and ranks?)", (long long)t, (int)st->place[t], (long long)W, (int)st->ent[t]);
        }
#define ASSIGNED(t) (st->place ? (int64_t)st->place[(t)] : assigned_rank(cp, st, (t), chunk))
    int64_t nd = 0, np = 0, npa = 0;
    for (int64_t t = 0; t < T; t++) {
        m->act_row[t] = -1;
        m->pre_idx[t] = -1;
        if (m->decode[st->ent[t]]) m->act_row[t] = nd++;
        else m->pre_off[ASSIGNED(t) + 1]++, npa++;
    }
    for (int64_t q = 0; q < W; q++) m->pre_off[q + 1] += m->pre_off[q];
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

void dsacp_cp_step_free(dsacp_cp_step_mem *m) { memset(m, 0, sizeof *m); /* the arrays are the workspace's */ }
