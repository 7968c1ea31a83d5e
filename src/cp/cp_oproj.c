/*
 * cp_oproj.c -- the layer's output projection over the group (docs/context-parallel.md section
 * 2, step 7; section 9 for DSA-CP's weight plans): own prefill rows with the whole o_proj (the
 * rank's own, a layer-shard broadcast or tp's gather); decode rows with this rank's head columns
 * then an all-reduce, or the heads' v rows all-gathered and the whole weight applied when the
 * columns split FP8 blocks, or the strategy's own output merge (lean); DSA-CP's tp steps that
 * move activations instead (all-to-all + reduce-scatter).
 */
#include "cp/cp_strategy.h"

#include <string.h>

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
        /* deployed: the bf16-dot chain (dsacp_bf16dot_linear_applies) as one process runs it on
         * the whole row -- it rounds activations elementwise, so head columns split over ranks
         * and all-reduced are within f32 reassociation of it; aq false only after the rows
         * were fake-quantized above */
        const bool chain = aq || (deployed && shard->dtype == w->o->dtype);
        if (h1 > h0) KEEP(*rc, dsacp_dsa_linear(ctx, shard, vcat + h0 * dv, nd, H * dv, out, D, chain));
        else memset(out, 0, (size_t)(nd * D) * 4);
        return dsacp_comm_allreduce_wire(cp->comm, out, nd * D, bf16, DSACP_PHASE_o_proj);
    }
    int crc = gather_v(cp, cfg, st, vcat);
    if (!crc) KEEP(*rc, dsacp_dsa_linear(ctx, full, vcat, nd, H * dv, out, D, deployed));
    return crc;
}

/* gather_v's buffers for nd decode rows (one list sizes and takes them). */
static int gather_v_list(const dsacp_cp_ctx *cp, int64_t nd, size_t **rb, float **send, float **recv, dsacp_cp_buf *b)
{
    const int64_t H = cp->cfg->num_attention_heads, dv = cp->cfg->v_head_dim;
    int n = 0;
    b[n++] = DSACP_CP_BUF(*rb, cp->W, 1);
    b[n++] = DSACP_CP_BUF(*send, 1, nd * (cp->h1 - cp->h0) * dv + 1);
    b[n++] = DSACP_CP_BUF(*recv, 1, nd * H * dv + 1);
    return n;
}

/* tp_o_proj's buffers for np own prefill rows of Tall in all (one list sizes and takes them). */
static int tp_list(const dsacp_cp_ctx *cp, int64_t np, int64_t Tall, size_t **sb, size_t **rb, int64_t **cnt, float **send,
                   float **x, float **y, dsacp_cp_buf *b)
{
    const int64_t W = cp->W, ncol = cp->cfg->num_attention_heads * cp->cfg->v_head_dim, D = cp->cfg->hidden_size;
    int n = 0;
    b[n++] = DSACP_CP_BUF(*sb, W, 1);
    b[n++] = DSACP_CP_BUF(*rb, W, 1);
    b[n++] = DSACP_CP_BUF(*cnt, W, 1);
    b[n++] = DSACP_CP_BUF(*send, 1, np * ncol + 1);
    b[n++] = DSACP_CP_BUF(*x, 1, Tall * ncol + 1); /* this rank's columns, at most all of them */
    b[n++] = DSACP_CP_BUF(*y, 1, Tall * D + 1);
    return n;
}

void dsacp_cp_oproj_need(size_t *total, const dsacp_cp_ctx *cp, int64_t T)
{
    size_t *rb, *sb;
    int64_t *cnt;
    float *send, *recv, *y;
    dsacp_cp_buf b[6];
    dsacp_cp_bufs_need(total, b, gather_v_list(cp, T, &rb, &send, &recv, b));
    if (cp->wp && cp->wp->o_tp) dsacp_cp_bufs_need(total, b, tp_list(cp, T, T, &sb, &rb, &cnt, &send, &recv, &y, b));
    /* the decode rows' linear over this rank's head columns (dsacp_dsa_linear's scratch) */
    size_t most = 0;
    for (int64_t l = 0; cp->layer_w && l < cp->n_layers; l++) {
        /* the layer's o_proj, as stored or as an f32 gather (DSA-CP tp), its head columns and tp's shard */
        dsacp_weight f32 = *cp->layer_w[l].o;
        f32.dtype = DSACP_F32;
        const dsacp_weight *ws[4] = {cp->layer_w[l].o, &f32, cp->o_shard ? cp->o_shard[l] : NULL,
                                     cp->wp && cp->wp->o_tp ? cp->wp->o_tp[l] : NULL};
        for (int i = 0; i < 4; i++)
            for (int aq = 0; aq < 2 && ws[i]; aq++) most = dsacp_arena_max(most, dsacp_linear_ws_bytes(ws[i], T, aq));
    }
    dsacp_arena_need(total, 1, (int64_t)most, 1);
}

static int gather_v(dsacp_cp_ctx *cp, const dsacp_config *cfg, const dsacp_cp_step *st, float *vcat)
{
    const int64_t H = cfg->num_attention_heads, dv = cfg->v_head_dim, nd = st->n_dec;
    const int64_t W = cp->W, h0 = cp->h0, h1 = cp->h1;
    size_t *rb;
    float *send, *recv;
    dsacp_cp_buf bl[3];
    const size_t mark = dsacp_arena_mark(cp->ws);
    const int n = gather_v_list(cp, nd, &rb, &send, &recv, bl);
    int arc = dsacp_cp_bufs_agree(cp, "o_proj", bl, n, "the o_proj exchange");
    if (arc) {
        dsacp_arena_rewind(cp->ws, mark);
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
    dsacp_arena_rewind(cp->ws, mark);
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
    size_t *sb, *rb;
    int64_t *cnt;
    float *send, *x, *y;
    dsacp_cp_buf bl[6];
    const size_t mark = dsacp_arena_mark(cp->ws);
    const int nb = tp_list(cp, np, Tall, &sb, &rb, &cnt, &send, &x, &y, bl);
    int crc = dsacp_cp_bufs_agree(cp, "o_proj", bl, nb, "tp o_proj");
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
            int r2 = dsacp_dsa_linear(ctx, wp->o_tp[layer], x, Tall, mine, y, D, false);
            if (r2 && !*rc) *rc = r2;
        } else {
            memset(y, 0, (size_t)(Tall * D) * 4);
        }
        crc = dsacp_comm_reduce_scatter_f32(cp->comm, y, out, cnt, DSACP_PHASE_o_proj);
    }
    dsacp_arena_rewind(cp->ws, mark);
    return crc;
}

/* Step 7 of the layer on W > 1 (cp_layer.c): out F32 [n_dec + n_pre][D] from vcat. */
int dsacp_cp_layer_o_proj(dsacp_cp_ctx *cp, const dsacp_dsa_ctx *ctx, const dsacp_dsa_weights *w, int64_t layer,
                          const dsacp_cp_step *st, bool own_merge, bool wire16, float *vcat, float *out, int *rc)
{
    const dsacp_config *cfg = ctx->cfg;
    const int64_t H = cfg->num_attention_heads, dv = cfg->v_head_dim, D = cfg->hidden_size, nd = st->n_dec, np = st->n_pre;
    const bool deployed = ctx->mode == DSACP_MODE_DEPLOYED;
    /* DSA-CP's tp in a step without prefill moves activations; otherwise the whole o_proj comes
     * from the plan (the rank's own, a layer-shard broadcast, or the tp gather). Decode rows
     * (DCP) use this rank's head columns when there are any, else the gathered v rows. */
    const bool tp_a2a = cp->wp && cp->wp->o_tp && !cp->wp->step_gather;
    const dsacp_weight *o = w->o, *shard = NULL;
    int crc = DSACP_OK;
    if (!tp_a2a) crc = dsacp_cp_weights_o_full(cp, layer, &o); /* DSA-CP: broadcast or gathered weight */
    if (crc) return crc;
    if (cp->wp && cp->wp->o_tp) shard = cp->wp->o_tp[layer];
    else if (cp->o_shard && !cp->o_gather_v) shard = cp->o_shard[layer];
    if (tp_a2a) {
        if (st->n_pre_all > 0) crc = tp_o_proj(cp, ctx, w, layer, st, vcat + nd * H * dv, out + nd * D, rc);
        if (!crc && nd > 0) crc = decode_o_proj(cp, ctx, w, shard, o, st, vcat, out, wire16, rc);
        return crc;
    }
    bool aq = deployed;
    if (deployed && o->dtype != w->o->dtype && w->o->dtype == DSACP_F8_E4M3 && w->o->cols % 128 == 0) {
        /* A tp gather held as f32 (FP8 blocks split by the head columns): the activation
         * quantization the FP8 o_proj applies is applied here, on whole rows. */
        for (int64_t j = 0; j < np; j++) dsacp_fake_quant_e4m3_groups(vcat + (nd + j) * H * dv, H * dv, 128);
        aq = false;
    }
    if (np > 0) KEEP(*rc, dsacp_dsa_linear(ctx, o, vcat + nd * H * dv, np, H * dv, out + nd * D, D, aq));
    if (nd > 0 && own_merge) return dsacp_cp_strategy_of(&cp->opt)->o_proj(cp, ctx, o, st, vcat, out, rc);
    if (nd > 0) return decode_o_proj(cp, ctx, w, shard, o, st, vcat, out, wire16, rc);
    return DSACP_OK;
}
