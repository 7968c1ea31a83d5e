/*
 * cp_weights.c -- DSA-CP's weight plans for q_b_proj and o_proj (vllm-ascend #4702/#5702/#6120;
 * docs/context-parallel.md section 9). In DSA-CP every rank runs all H heads for its tokens, so
 * both weights are needed whole:
 *
 *   replicated   every rank reads its own (memory-mapped) copy
 *   layer-shard  layer i's weight is read only by rank i mod W and broadcast into a ring of
 *                `prefetch` buffers on the others, `prefetch` layers ahead (non-blocking,
 *                waited on just before use); one broadcast per layer per sharded weight per step
 *   tp           (o_proj) rank r keeps the input columns of its heads; a step with prefill
 *                tokens all-gathers the shards into one full-weight buffer (started when the
 *                layer starts, waited on before o_proj); a decode-only step moves activations
 *                instead (all-to-all of v columns, the local shard, reduce-scatter: cp_layer.c)
 *   auto         tp's two paths chosen per step by bytes (dsacp_cp_weights_choose)
 *
 * FP8 weights move as FP8 bytes plus their block scales, never as an f32 copy; only when a
 * rank's columns do not fall on the 128-column blocks (small test models) does the tp shard
 * hold f32 values (exact: e4m3 x scale rounds once, as the kernels' own decode does).
 */
#include "cp/cp.h"

#include <stdlib.h>
#include <string.h>

/* The plans and what this file keeps per step: the layer range [l0, l1) of the step in flight
 * (dsacp_cp_step.layer0/layer1), so that layer_done issues the ring's next broadcasts only for
 * layers the step runs and nothing is left in flight after it. cp->wp points at `pub`. */
typedef struct weights_state {
    dsacp_cp_weights pub;
    int64_t l0, l1;
} weights_state;

static weights_state *state_of(dsacp_cp_weights *wp) { return (weights_state *)(void *)wp; }

static size_t scale_bytes(const dsacp_weight *w)
{
    return w->dtype == DSACP_F8_E4M3 && w->scale ? (size_t)(w->scale_rows * w->scale_stride) * 4 : 0;
}

static size_t data_bytes(const dsacp_weight *w) { return (size_t)(w->rows * w->cols) * dsacp_dtype_size(w->dtype); }

static int ring_init(dsacp_cp_ring *r, const dsacp_weight *const *ws, int64_t L, int64_t slots, int W, int me)
{
    memset(r, 0, sizeof *r);
    r->slots = slots < L ? slots : L;
    size_t mx = 0;
    for (int64_t l = 0; l < L; l++) {
        const size_t b = (data_bytes(ws[l]) + 63) / 64 * 64 + scale_bytes(ws[l]);
        if ((int)(l % W) != me && b > mx) mx = b;
    }
    r->slot_bytes = mx;
    r->buf = calloc((size_t)r->slots, sizeof *r->buf);
    r->view = calloc((size_t)r->slots, sizeof *r->view);
    r->layer = malloc((size_t)r->slots * sizeof *r->layer);
    r->req = calloc((size_t)r->slots, sizeof *r->req);
    if (!r->buf || !r->view || !r->layer || !r->req) return dsacp_error(DSACP_ENOMEM, "out of memory for a weight ring");
    for (int64_t s = 0; s < r->slots; s++) {
        r->layer[s] = -1;
        if (mx && !(r->buf[s] = dsacp_alloc(mx)))
            return dsacp_error(DSACP_ENOMEM, "out of memory for a %zu-byte weight ring slot", mx);
    }
    return DSACP_OK;
}

static void ring_free(dsacp_cp_ring *r)
{
    for (int64_t s = 0; r->buf && s < r->slots; s++) {
        dsacp_comm_wait(r->req ? r->req[s] : NULL);
        dsacp_free(r->buf[s]);
    }
    free(r->buf), free(r->view), free(r->layer), free(r->req);
    memset(r, 0, sizeof *r);
}

/* Starts layer l's broadcast into its slot (l mod slots) from rank l mod W. */
static int ring_issue(dsacp_cp_ctx *cp, dsacp_cp_ring *r, const dsacp_weight *w, int64_t l, int phase)
{
    const int64_t s = l % r->slots;
    const int root = (int)(l % cp->W);
    dsacp_weight *v = &r->view[s];
    *v = *w;
    const size_t db = data_bytes(w), sb = scale_bytes(w);
    void *d = (void *)w->data, *sc = (void *)w->scale;
    if (r->req[s]) { /* a step that failed left it in flight */
        dsacp_comm_wait(r->req[s]);
        r->req[s] = NULL;
    }
    if (cp->rank != root) {
        d = r->buf[s];
        sc = sb ? r->buf[s] + (db + 63) / 64 * 64 : NULL;
        v->data = d;
        v->scale = sc;
    }
    r->layer[s] = l;
    return dsacp_comm_ibcast2(cp->comm, d, db, sc, sb, root, phase, &r->req[s]);
}

static int ring_get(dsacp_cp_ring *r, int64_t l, const dsacp_weight **out)
{
    const int64_t s = l % r->slots;
    if (r->layer[s] != l) return dsacp_error(DSACP_EINVAL, "weight ring: layer %lld is not in flight", (long long)l);
    int rc = dsacp_comm_wait(r->req[s]);
    r->req[s] = NULL;
    *out = &r->view[s];
    return rc;
}

/* ---- tp: this rank's columns ---- */

int dsacp_cp_weight_columns(const dsacp_weight *o, int64_t c0, int64_t c1, bool as_f32, dsacp_weight **out)
{
    *out = NULL;
    const int64_t nc = c1 - c0, rows = o->rows;
    const size_t es = as_f32 ? 4 : dsacp_dtype_size(o->dtype);
    dsacp_weight *w = calloc(1, sizeof *w);
    uint8_t *data = dsacp_alloc((size_t)(rows * (nc > 0 ? nc : 1)) * es);
    float *row = as_f32 ? malloc((size_t)o->cols * 4) : NULL, *scale = NULL;
    if (!w || !data || (as_f32 && !row)) goto oom;
    for (int64_t r = 0; r < rows; r++) {
        if (as_f32) {
            dsacp_weight_row_f32(o, r, row);
            memcpy(data + (size_t)(r * nc) * 4, row + c0, (size_t)nc * 4);
        } else {
            memcpy(data + (size_t)(r * nc) * es, (const uint8_t *)o->data + (size_t)(r * o->cols + c0) * es, (size_t)nc * es);
        }
    }
    *w = *o;
    w->name = "o_proj (head columns)";
    w->cols = nc;
    w->data = data;
    if (as_f32) {
        w->dtype = DSACP_F32;
        w->scale = NULL, w->scale_rows = w->scale_cols = w->scale_stride = w->block = 0;
    } else if (o->dtype == DSACP_F8_E4M3) {
        const int64_t b = o->block, sc = (nc + b - 1) / b;
        scale = dsacp_alloc((size_t)(o->scale_rows * (sc > 0 ? sc : 1)) * 4);
        if (!scale) goto oom;
        for (int64_t r = 0; r < o->scale_rows; r++)
            for (int64_t c = 0; c < sc; c++) scale[r * sc + c] = o->scale[r * o->scale_stride + c0 / b + c];
        w->scale = scale, w->scale_cols = sc, w->scale_stride = sc;
    }
    free(row);
    *out = w;
    return DSACP_OK;
oom:
    free(w), dsacp_free(data), free(row), dsacp_free(scale);
    return dsacp_error(DSACP_ENOMEM, "out of memory for the o_proj head columns");
}

void dsacp_cp_weight_free(dsacp_weight *w)
{
    if (!w) return;
    dsacp_free((void *)w->data);
    dsacp_free((void *)w->scale);
    free(w);
}

int dsacp_cp_weights_setup(dsacp_cp_ctx *cp, const dsacp_dsa_weights *attn, int64_t L)
{
    if (dsacp_fault("weights")) return dsacp_fault_error("weights", "DSA-CP weight plans");
    weights_state *ws = calloc(1, sizeof *ws);
    if (!ws) return dsacp_error(DSACP_ENOMEM, "out of memory");
    dsacp_cp_weights *wp = &ws->pub;
    cp->wp = wp;
    wp->L = L; /* the target's layers, plus the MTP layer (index num_hidden_layers) when bound */
    ws->l0 = 0, ws->l1 = L;
    const int W = cp->W, me = cp->rank;
    wp->q_b = calloc((size_t)L, sizeof *wp->q_b);
    wp->o = calloc((size_t)L, sizeof *wp->o);
    if (!wp->q_b || !wp->o) return dsacp_error(DSACP_ENOMEM, "out of memory");
    for (int64_t l = 0; l < L; l++) wp->q_b[l] = attn[l].q_b, wp->o[l] = attn[l].o;
    const dsacp_cp_options *o = &cp->opt;
    int rc = DSACP_OK;
    if (W > 1 && o->q_proj == DSACP_WEIGHTS_LAYER_SHARD) rc = ring_init(&wp->q_ring, wp->q_b, L, o->prefetch, W, me);
    if (!rc && W > 1 && o->o_proj == DSACP_WEIGHTS_LAYER_SHARD) rc = ring_init(&wp->o_ring, wp->o, L, o->prefetch, W, me);
    if (rc || W == 1 || o->o_proj < DSACP_WEIGHTS_TP) return rc;

    /* tp: columns of each rank's heads; f32 shards only when FP8 blocks would be split. */
    const int64_t H = cp->cfg->num_attention_heads, dv = cp->cfg->v_head_dim;
    wp->col = calloc((size_t)W + 1, sizeof *wp->col);
    wp->o_tp = calloc((size_t)L, sizeof *wp->o_tp);
    if (!wp->col || !wp->o_tp) return dsacp_error(DSACP_ENOMEM, "out of memory");
    for (int q = 0; q <= W; q++) wp->col[q] = dsacp_split_begin(H, q, W) * dv;
    const dsacp_weight *o0 = wp->o[0];
    if (o0->dtype == DSACP_F8_E4M3 && o0->block > 0)
        for (int q = 0; q <= W; q++)
            if (wp->col[q] % o0->block && wp->col[q] != o0->cols) wp->tp_f32 = true;
    size_t full = 0, recv = 0;
    for (int64_t l = 0; l < L && !rc; l++) {
        rc = dsacp_cp_weight_columns(wp->o[l], wp->col[me], wp->col[me + 1], wp->tp_f32, &wp->o_tp[l]);
        if (rc) break;
        const size_t es = wp->tp_f32 ? 4 : dsacp_dtype_size(wp->o[l]->dtype);
        const size_t f = (size_t)(wp->o[l]->rows * wp->o[l]->cols) * es;
        size_t rsum = 0;
        for (int q = 0; q < W; q++) rsum += (size_t)(wp->col[q + 1] - wp->col[q]) * (size_t)wp->o[l]->rows * es;
        if (!wp->tp_f32 && wp->o[l]->dtype == DSACP_F8_E4M3) {
            const int64_t b = wp->o[l]->block;
            for (int q = 0; q < W; q++)
                rsum += (size_t)(wp->o[l]->scale_rows * ((wp->col[q + 1] - wp->col[q] + b - 1) / b)) * 4;
        }
        if (f > full) full = f;
        if (rsum > recv) recv = rsum;
    }
    if (rc) return rc;
    wp->full_bytes = (full + 63) / 64 * 64 + scale_bytes(o0) + 64;
    wp->recv_bytes = recv;
    wp->gather_full = dsacp_alloc(wp->full_bytes);
    wp->gather_recv = dsacp_alloc(recv + 64);
    if (!wp->gather_full || !wp->gather_recv) return dsacp_error(DSACP_ENOMEM, "out of memory for the o_proj gather buffer");
    return DSACP_OK;
}

void dsacp_cp_weights_free(dsacp_cp_weights *wp)
{
    if (!wp) return;
    ring_free(&wp->q_ring);
    ring_free(&wp->o_ring);
    dsacp_comm_wait(wp->gather_req);
    for (int64_t l = 0; wp->o_tp && l < wp->L; l++) dsacp_cp_weight_free(wp->o_tp[l]);
    free(wp->o_tp), free(wp->col), free(wp->q_b), free(wp->o), free(wp->choices);
    dsacp_free(wp->gather_full), dsacp_free(wp->gather_recv);
    free(state_of(wp));
}

/* Bytes a rank receives, on average over the group, for o_proj in this step by each tp path. */
static void tp_bytes(const dsacp_cp_ctx *cp, const dsacp_cp_step *st, double *gather, double *act)
{
    const dsacp_cp_weights *wp = cp->wp;
    const int W = cp->W;
    const int64_t D = cp->cfg->hidden_size, T = st->n_pre_all; /* the tokens tp's activation path moves */
    *gather = (double)wp->recv_bytes * (W - 1) / W;
    double a = 0;
    for (int q = 0; q < W; q++) {
        const int64_t Tq = st->pre_off[q + 1] - st->pre_off[q], hc = wp->col[q + 1] - wp->col[q];
        a += (double)(T - Tq) * (double)hc * 4 + (double)Tq * (double)D * 4 * (W - 1);
    }
    *act = a / W;
}

void dsacp_cp_weights_rule(const dsacp_cp_ctx *cp, double *gather, double *per_token)
{
    const dsacp_cp_weights *wp = cp->wp;
    *gather = *per_token = 0;
    if (!wp || !wp->col) return;
    const double W = cp->W, C = (double)(cp->cfg->num_attention_heads * cp->cfg->v_head_dim);
    *gather = (double)wp->recv_bytes * (W - 1) / W;
    *per_token = (W - 1) / W * (C * 4 / W + (double)cp->cfg->hidden_size * 4);
}

int dsacp_cp_weights_step_begin(dsacp_cp_ctx *cp, const dsacp_cp_step *st)
{
    dsacp_cp_weights *wp = cp->wp;
    if (!wp || cp->W == 1) return DSACP_OK;
    /* tp / auto: which path o_proj takes this step (the same verdict on every rank). */
    if (cp->opt.o_proj >= DSACP_WEIGHTS_TP) {
        /* tp's "prefill step": an entry of more than one token that is not a verify entry (whose
         * rows are decode rows); an MTP step by the same rule over its entries. */
        bool prefill = false;
        for (int64_t e = 0; e < st->n_ent; e++)
            if (st->new_len[e] - st->old_len[e] > 1 && !(st->flags && (st->flags[e] & DSACP_ENTRY_VERIFY))) prefill = true;
        double g, a;
        tp_bytes(cp, st, &g, &a);
        switch (cp->opt.o_proj) {
        case DSACP_WEIGHTS_TP: wp->step_gather = prefill; break;
        case DSACP_WEIGHTS_TP_GATHER: wp->step_gather = true; break;
        case DSACP_WEIGHTS_TP_A2A: wp->step_gather = false; break;
        default: wp->step_gather = g < a; break;
        }
        /* What actually runs (the label reports it): the weight gather; the activation path (the
         * seed's all-to-all + reduce-scatter, for the tokens computed by one rank each); or, in a
         * decode-only step of DSA-CP + DCP (sharded layouts: every decode token is computed by every
         * rank with its heads), neither -- each rank's head columns and one all-reduce. */
        const bool allreduce_only = !wp->step_gather && st->n_pre_all == 0;
        if (wp->step_gather) wp->steps_gather++;
        else if (allreduce_only) wp->steps_allreduce++;
        else wp->steps_activations++;
        if (wp->nchoices == wp->capchoices) {
            const int64_t cap = wp->capchoices ? 2 * wp->capchoices : 64;
            char *n = realloc(wp->choices, (size_t)cap + 1);
            if (n) wp->choices = n, wp->capchoices = cap;
        }
        if (wp->nchoices < wp->capchoices) wp->choices[wp->nchoices++] = wp->step_gather ? 'g' : allreduce_only ? 'r' : 'a', wp->choices[wp->nchoices] = 0;
        wp->last_gather_bytes = g, wp->last_act_bytes = a;
    }
    /* The step's layers: the target's [0, L) or the MTP layer's [L, L + 1); layer1 == 0 (a caller
     * that sets no range) runs every layer. The rings' first broadcasts start at layer0. */
    weights_state *ws = state_of(wp);
    ws->l0 = st->layer1 > 0 ? st->layer0 : 0;
    ws->l1 = st->layer1 > 0 ? st->layer1 : wp->L;
    if (ws->l0 < 0 || ws->l1 > wp->L || ws->l0 >= ws->l1)
        return dsacp_error(DSACP_EINVAL, "step layers [%lld, %lld) outside the %lld bound layers", (long long)ws->l0,
                           (long long)ws->l1, (long long)wp->L);
    int rc = DSACP_OK;
    for (int64_t l = ws->l0; l < ws->l0 + wp->q_ring.slots && l < ws->l1 && !rc; l++)
        rc = ring_issue(cp, &wp->q_ring, wp->q_b[l], l, DSACP_PHASE_q_proj_weight);
    for (int64_t l = ws->l0; l < ws->l0 + wp->o_ring.slots && l < ws->l1 && !rc; l++)
        rc = ring_issue(cp, &wp->o_ring, wp->o[l], l, DSACP_PHASE_o_proj_weight);
    return rc;
}

int dsacp_cp_weights_layer_begin(dsacp_cp_ctx *cp, int64_t l)
{
    dsacp_cp_weights *wp = cp->wp;
    if (!wp || cp->W == 1 || !wp->o_tp || !wp->step_gather) return DSACP_OK;
    /* tp gather of layer l's shards, in flight during the layer's projections and attention. */
    const int W = cp->W;
    const dsacp_weight *o = wp->o[l];
    const size_t es = wp->tp_f32 ? 4 : dsacp_dtype_size(o->dtype);
    const bool f8 = !wp->tp_f32 && o->dtype == DSACP_F8_E4M3;
    size_t *rb = malloc((size_t)W * sizeof *rb);
    int arc = dsacp_cp_agree_alloc(cp, "o_proj", rb != NULL, "the o_proj weight gather");
    if (arc) {
        free(rb);
        return arc;
    }
    for (int q = 0; q < W; q++) {
        const int64_t nc = wp->col[q + 1] - wp->col[q];
        rb[q] = (size_t)(o->rows * nc) * es + (f8 ? (size_t)(o->scale_rows * ((nc + o->block - 1) / o->block)) * 4 : 0);
    }
    if (wp->gather_req) {
        dsacp_comm_wait(wp->gather_req);
        wp->gather_req = NULL;
    }
    /* This rank's block: its shard's data then its scale columns, packed. */
    const dsacp_weight *s = wp->o_tp[l];
    uint8_t *mine = wp->gather_recv; /* own block first at its offset */
    size_t off = 0;
    for (int q = 0; q < cp->rank; q++) off += rb[q];
    mine += off;
    const size_t db = (size_t)(s->rows * s->cols) * es;
    memcpy(mine, s->data, db);
    if (f8) memcpy(mine + db, s->scale, rb[cp->rank] - db);
    int rc = dsacp_comm_iallgatherv(cp->comm, mine, rb[cp->rank], wp->gather_recv, rb, DSACP_PHASE_o_proj_weight,
                                    &wp->gather_req);
    wp->gather_layer = l;
    free(rb);
    return rc;
}

int dsacp_cp_weights_q(dsacp_cp_ctx *cp, int64_t l, const dsacp_weight **out)
{
    dsacp_cp_weights *wp = cp->wp;
    *out = wp ? wp->q_b[l] : NULL;
    if (!wp || cp->W == 1 || !wp->q_ring.slots) return DSACP_OK;
    return ring_get(&wp->q_ring, l, out);
}

int dsacp_cp_weights_o_full(dsacp_cp_ctx *cp, int64_t l, const dsacp_weight **out)
{
    dsacp_cp_weights *wp = cp->wp;
    if (!wp) return DSACP_OK; /* DCP: the caller's own o_proj */
    *out = wp->o[l];
    if (cp->W == 1) return DSACP_OK;
    if (wp->o_ring.slots) return ring_get(&wp->o_ring, l, out);
    if (!wp->o_tp) return DSACP_OK;
    /* tp gather: wait, then lay the rank blocks out as the full [D][H dv] weight. */
    if (wp->gather_layer != l || !wp->gather_req) return dsacp_error(DSACP_EINVAL, "o_proj gather of layer %lld not started", (long long)l);
    int rc = dsacp_comm_wait(wp->gather_req);
    wp->gather_req = NULL;
    if (rc) return rc;
    const int W = cp->W;
    const dsacp_weight *o = wp->o[l];
    const size_t es = wp->tp_f32 ? 4 : dsacp_dtype_size(o->dtype);
    const bool f8 = !wp->tp_f32 && o->dtype == DSACP_F8_E4M3;
    const int64_t rows = o->rows, cols = o->cols;
    uint8_t *full = wp->gather_full;
    float *fscale = f8 ? (float *)(full + ((size_t)(rows * cols) * es + 63) / 64 * 64) : NULL;
    const uint8_t *r = wp->gather_recv;
    for (int q = 0; q < W; q++) {
        const int64_t c0 = wp->col[q], nc = wp->col[q + 1] - c0;
        for (int64_t i = 0; i < rows; i++) memcpy(full + (size_t)(i * cols + c0) * es, r + (size_t)(i * nc) * es, (size_t)nc * es);
        r += (size_t)(rows * nc) * es;
        if (f8) {
            const int64_t b = o->block, sc = (nc + b - 1) / b;
            for (int64_t i = 0; i < o->scale_rows; i++)
                for (int64_t c = 0; c < sc; c++) fscale[i * o->scale_cols + c0 / b + c] = ((const float *)r)[i * sc + c];
            r += (size_t)(o->scale_rows * sc) * 4;
        }
    }
    wp->o_full = *o;
    wp->o_full.data = full;
    if (wp->tp_f32) {
        wp->o_full.dtype = DSACP_F32;
        wp->o_full.scale = NULL, wp->o_full.scale_rows = wp->o_full.scale_cols = wp->o_full.scale_stride = 0;
        wp->o_full.block = 0;
    } else if (f8) {
        wp->o_full.scale = fscale, wp->o_full.scale_stride = o->scale_cols;
    }
    *out = &wp->o_full;
    return DSACP_OK;
}

int dsacp_cp_weights_layer_done(dsacp_cp_ctx *cp, int64_t l)
{
    dsacp_cp_weights *wp = cp->wp;
    if (!wp || cp->W == 1) return DSACP_OK;
    const int64_t l1 = state_of(wp)->l1; /* only the step's layers: nothing in flight after it */
    int rc = DSACP_OK;
    if (wp->q_ring.slots && l + wp->q_ring.slots < l1)
        rc = ring_issue(cp, &wp->q_ring, wp->q_b[l + wp->q_ring.slots], l + wp->q_ring.slots, DSACP_PHASE_q_proj_weight);
    if (!rc && wp->o_ring.slots && l + wp->o_ring.slots < l1)
        rc = ring_issue(cp, &wp->o_ring, wp->o[l + wp->o_ring.slots], l + wp->o_ring.slots, DSACP_PHASE_o_proj_weight);
    return rc;
}

void dsacp_cp_weights_usage(const dsacp_cp_ctx *cp, dsacp_weight_usage *u)
{
    memset(u, 0, sizeof *u);
    const dsacp_cp_weights *wp = cp->wp;
    if (!wp) return;
    const int W = cp->W, me = cp->rank;
    for (int64_t l = 0; l < wp->L; l++) {
        const bool own = (int)(l % W) == me || W == 1;
        const int64_t qb = (int64_t)(data_bytes(wp->q_b[l]) + scale_bytes(wp->q_b[l]));
        const int64_t ob = (int64_t)(data_bytes(wp->o[l]) + scale_bytes(wp->o[l]));
        if (cp->opt.q_proj != DSACP_WEIGHTS_LAYER_SHARD || own) u->q_proj_resident += qb;
        if (wp->o_tp) u->o_proj_resident += (int64_t)(data_bytes(wp->o_tp[l]) + scale_bytes(wp->o_tp[l]));
        else if (cp->opt.o_proj != DSACP_WEIGHTS_LAYER_SHARD || own) u->o_proj_resident += ob;
    }
    u->ring_bytes = (int64_t)(wp->q_ring.slot_bytes * (size_t)wp->q_ring.slots + wp->o_ring.slot_bytes * (size_t)wp->o_ring.slots);
    u->gather_bytes = wp->o_tp ? (int64_t)(wp->full_bytes + wp->recv_bytes) : 0;
    u->steps_gather = wp->steps_gather;
    u->steps_activations = wp->steps_activations;
    u->steps_allreduce = wp->steps_allreduce;
}
