/*
 * cp_merge.c -- attention of the decode tokens over the winners each rank owns, and the merge
 * of the partial results (vLLM's cp_lse_ag_out_rs), shared by replicated-index and exact-topk:
 *
 *   query_gather  each rank absorbs the query rows of its heads [h0, h1) ([q_abs | q_pe], dc + dr
 *                 floats per head) and all-gathers them: recv = (H - Hs) (dc + dr) 4 bytes/token
 *   attention     all H heads over the owned winners, ascending positions: o_r [H][dc], lse_r [H]
 *                 (no owned winner: o_r = 0, lse_r = -inf)
 *   attn_merge    all-gather of lse_r: recv = (W - 1) H 4 bytes/token; then every rank scales its
 *                 o_r by exp(lse_r - lse), lse = log sum_r exp(lse_r), and a reduce-scatter over
 *                 heads sums them: recv = (W - 1) Hs dc 4 bytes/token
 *   W_UV          for heads [h0, h1) -> v, then o_proj (cp_layer.c)
 * A rank with lse_r = -inf contributes exp(-inf) = 0 times o_r = 0: never NaN. When every rank
 * has -inf the token's output is 0.
 */
#include "cp/cp.h"

#include "numerics/numerics.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int dsacp_cp_merge_a2a(dsacp_cp_ctx *cp, int64_t nd, int64_t H, int64_t wd, const float *part, const float *lse,
                       float *out, bool bf16, int phase)
{
    const int64_t W = cp->W, me = cp->rank, Hs = cp->h1 - cp->h0, s = bf16 ? 2 : 4, rowb = wd * s + 4;
    size_t *sb = malloc((size_t)W * sizeof *sb), *rb = malloc((size_t)W * sizeof *rb);
    uint8_t *send = malloc((size_t)(nd * H * rowb) + 1), *recv = malloc((size_t)(W * nd * (Hs > 0 ? Hs : 1) * rowb) + 1);
    float *lr = malloc((size_t)W * 4);
    int arc = dsacp_cp_agree_alloc(cp, "merge", sb && rb && send && recv && lr, "the all-to-all merge");
    if (arc) {
        free(sb), free(rb), free(send), free(recv), free(lr);
        return arc;
    }
    uint8_t *p = send;
    for (int64_t q = 0; q < W; q++) {
        const int64_t qa = dsacp_split_begin(H, q, W), qb = dsacp_split_begin(H, q + 1, W);
        sb[q] = (size_t)(nd * (qb - qa) * rowb);
        rb[q] = (size_t)(nd * Hs * rowb);
        for (int64_t j = 0; j < nd; j++)
            for (int64_t h = qa; h < qb; h++, p += rowb) {
                const float *r = part + (j * H + h) * wd;
                if (bf16) {
                    for (int64_t i = 0; i < wd; i++) {
                        const uint16_t b = dsacp_f32_to_bf16(r[i]);
                        memcpy(p + 2 * i, &b, 2);
                    }
                } else {
                    memcpy(p, r, (size_t)wd * 4);
                }
                memcpy(p + wd * s, &lse[j * H + h], 4);
            }
    }
    int crc = dsacp_comm_alltoallv(cp->comm, send, sb, recv, rb, phase);
    if (!crc)
        for (int64_t j = 0; j < nd; j++)
            for (int64_t h = 0; h < Hs; h++) {
                /* rank r's row of (token j, own head h): recv + ((r nd + j) Hs + h) rowb */
                float *o = out + (j * Hs + h) * wd;
                memset(o, 0, (size_t)wd * 4);
                for (int64_t r = 0; r < W; r++) memcpy(&lr[r], recv + ((r * nd + j) * Hs + h) * rowb + wd * s, 4);
                const double lt = dsacp_cp_lse_total(lr, W, 1);
                if (lt != -INFINITY) {
                    for (int64_t r = 0; r < W; r++) {
                        const float f = (float)exp((double)lr[r] - lt);
                        const uint8_t *row = recv + ((r * nd + j) * Hs + h) * rowb;
                        for (int64_t i = 0; i < wd; i++) {
                            float v;
                            if (bf16) {
                                uint16_t b;
                                memcpy(&b, row + 2 * i, 2);
                                v = dsacp_bf16_to_f32(b);
                            } else {
                                memcpy(&v, row + 4 * i, 4);
                            }
                            o[i] += f * v;
                        }
                    }
                }
            }
    (void)me;
    free(sb), free(rb), free(send), free(recv), free(lr);
    return crc;
}

int64_t dsacp_cp_shard_topk(const dsacp_cp_decode_args *a, int64_t j, void *qpack, float *scores, int32_t *sel)
{
    dsacp_cp_ctx *cp = a->cp;
    const dsacp_cp_step *st = a->st;
    const dsacp_config *cfg = a->ctx->cfg;
    const int64_t Hi = cfg->index_n_heads, di = cfg->index_head_dim, e = st->ent[st->act[j]];
    const int64_t nl = dsacp_cp_idx_len(cp, a->pos_act[j] + 1, cp->ir);
    dsacp_index_query_pack(a->proj->qi + j * Hi * di, a->proj->wts + j * Hi, Hi, di, qpack);
    dsacp_dsa_index_scores(cp->idx, a->layer, st->idx_seq[e], nl, qpack, scores, true);
    cp->stats.keys_scored += nl;
    return dsacp_topk_select(scores, nl, cfg->index_topk, sel);
}

int64_t dsacp_cp_attend_positions(const dsacp_cp_decode_args *a, int64_t j, const int32_t *pos, int64_t n,
                                  bool owned_only, const float *q, float *kv, float *o, float *lse, float *work)
{
    dsacp_cp_ctx *cp = a->cp;
    const dsacp_cp_step *st = a->st;
    const dsacp_config *cfg = a->ctx->cfg;
    const int64_t W = cp->W, I = cp->opt.interleave, dc = cfg->kv_lora_rank, dr = cfg->qk_rope_head_dim;
    const int64_t e = st->ent[st->act[j]];
    const bool lat_sh = W > 1 && cp->opt.kv_layout == DSACP_LAYOUT_SHARDED;
    int64_t m = 0;
    for (int64_t i = 0; i < n; i++) {
        const int64_t p = pos[i];
        if (owned_only && dsacp_cp_owner(p, I, W) != cp->rank) continue;
        const int64_t lp = lat_sh ? dsacp_cp_local_pos(p, I, W) : p;
        dsacp_kv_read_mla(cp->lat, a->layer, dsacp_kv_slot(cp->lat, st->lat_seq[e], lp), kv + m * (dc + dr));
        m++;
    }
    cp->stats.keys_attended += m;
    cp->stats.decode_tokens++;
    dsacp_sparse_mla(q, kv, m, cfg->num_attention_heads, dc, dr, (float)cfg->softmax_scale, o, lse, work);
    return m;
}

double dsacp_cp_lse_total(const float *lse, int64_t R, int64_t stride)
{
    float mx = -INFINITY;
    for (int64_t r = 0; r < R; r++) mx = fmaxf(mx, lse[r * stride]);
    if (mx == -INFINITY) return -INFINITY;
    double sum = 0;
    for (int64_t r = 0; r < R; r++) sum += exp((double)lse[r * stride] - mx);
    return mx + log(sum);
}

int dsacp_cp_cmp_key_desc(const void *a, const void *b)
{
    const uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

void dsacp_cp_own_query_rows(const dsacp_cp_decode_args *a, float *qown)
{
    const dsacp_config *cfg = a->ctx->cfg;
    const int64_t H = cfg->num_attention_heads, dq = cfg->qk_nope_head_dim + cfg->qk_rope_head_dim;
    const int64_t dk = cfg->kv_lora_rank + cfg->qk_rope_head_dim, Hs = a->cp->h1 - a->cp->h0;
    if (a->st->n_dec > 0 && Hs > 0)
        dsacp_dsa_query_rows_n(a->w, cfg, a->proj->q, a->st->n_dec, H * dq, a->cp->h0, a->cp->h1, qown, Hs * dk, true);
}

int dsacp_cp_attend_owned_and_merge(const dsacp_cp_decode_args *a, const int32_t *sel, const int64_t *nsel,
                                    const float *qpre)
{
    dsacp_cp_ctx *cp = a->cp;
    const dsacp_cp_step *st = a->st;
    const dsacp_config *cfg = a->ctx->cfg;
    const int64_t nd = st->n_dec, K = cfg->index_topk, H = cfg->num_attention_heads, W = cp->W, me = cp->rank;
    const int64_t dr = cfg->qk_rope_head_dim, dv = cfg->v_head_dim;
    const int64_t dc = cfg->kv_lora_rank, dk = dc + dr;
    const int64_t h0 = cp->h0, h1 = cp->h1, Hs = h1 - h0, n1 = nd > 0 ? nd : 1;

    float *qown = dsacp_alloc((size_t)(n1 * (Hs > 0 ? Hs : 1) * dk) * 4);
    float *qrecv = dsacp_alloc((size_t)(n1 * H * dk) * 4), *qall = dsacp_alloc((size_t)(n1 * H * dk) * 4);
    float *kv = dsacp_alloc((size_t)(K * dk) * 4), *work = malloc((size_t)K * 4);
    float *o = dsacp_alloc((size_t)(n1 * H * dc) * 4), *lse = malloc((size_t)(n1 * H) * 4);
    float *lse_all = malloc((size_t)(W * n1 * H) * 4);
    float *osend = dsacp_alloc((size_t)(n1 * H * dc) * 4), *omine = dsacp_alloc((size_t)(n1 * (Hs > 0 ? Hs : 1) * dc) * 4);
    size_t *rb = malloc((size_t)W * sizeof *rb);
    int64_t *cnt = malloc((size_t)W * sizeof *cnt);
    int crc = dsacp_cp_agree_alloc(cp, "merge", qown && qrecv && qall && kv && work && o && lse && lse_all && osend && omine && rb && cnt,
                                   "the decode attention merge");
    if (crc) goto done;
    /* Query rows of this rank's heads, gathered to every rank. */
    if (qpre) memcpy(qown, qpre, (size_t)(nd * Hs * dk) * 4);
    else dsacp_cp_own_query_rows(a, qown);
    for (int64_t q = 0; q < W; q++)
        rb[q] = (size_t)(nd * (dsacp_split_begin(H, q + 1, W) - dsacp_split_begin(H, q, W)) * dk) * 4;
    crc = dsacp_comm_allgatherv(cp->comm, qown, rb[me], qrecv, rb, DSACP_PHASE_query_gather);
    if (crc) goto done;
    {
        const float *r = qrecv;
        for (int64_t q = 0; q < W; q++) {
            const int64_t qa = dsacp_split_begin(H, q, W), qb = dsacp_split_begin(H, q + 1, W);
            for (int64_t j = 0; j < nd; j++, r += (qb - qa) * dk)
                memcpy(qall + (j * H + qa) * dk, r, (size_t)((qb - qa) * dk) * 4);
        }
    }
    /* All heads over the winners this rank owns. */
    for (int64_t j = 0; j < nd; j++)
        dsacp_cp_attend_positions(a, j, sel + j * K, nsel[j], true, qall + j * H * dk, kv, o + j * H * dc, lse + j * H, work);
    /* Merge: --dcp-comm-backend a2a sends every head's partial and lse to the head's rank; ag_rs
     * all-gathers the lse, scales the own part, and sums over the ranks by a reduce-scatter. */
    if (cp->opt.merge_backend == DSACP_MERGE_A2A) {
        crc = dsacp_cp_merge_a2a(cp, nd, H, dc, o, lse, omine, false, DSACP_PHASE_attn_merge);
        if (crc) goto done;
        goto merged;
    }
    crc = dsacp_comm_allgather(cp->comm, lse, (size_t)(nd * H) * 4, lse_all, DSACP_PHASE_attn_merge);
    if (crc) goto done;
    {
        float *s = osend;
        for (int64_t q = 0; q < W; q++) {
            const int64_t qa = dsacp_split_begin(H, q, W), qb = dsacp_split_begin(H, q + 1, W);
            cnt[q] = nd * (qb - qa) * dc;
            for (int64_t j = 0; j < nd; j++)
                for (int64_t h = qa; h < qb; h++, s += dc) {
                    const double l = dsacp_cp_lse_total(lse_all + j * H + h, W, nd * H);
                    const float f = l == -INFINITY ? 0.0f : (float)exp((double)lse[j * H + h] - l);
                    const float *oh = o + (j * H + h) * dc;
                    for (int64_t i = 0; i < dc; i++) s[i] = f * oh[i];
                }
        }
    }
    crc = dsacp_comm_reduce_scatter_f32(cp->comm, osend, omine, cnt, DSACP_PHASE_attn_merge);
    if (crc) goto done;
merged:
    for (int64_t j = 0; j < nd; j++)
        dsacp_dsa_value_rows(a->w, cfg, omine + j * Hs * dc, h0, h1, a->vcat + (j * H + h0) * dv, true);
done:
    dsacp_free(qown), dsacp_free(qrecv), dsacp_free(qall), dsacp_free(kv), free(work);
    dsacp_free(o), free(lse), free(lse_all), dsacp_free(osend), dsacp_free(omine), free(rb), free(cnt);
    return crc;
}
