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
#include <string.h>

/* The a2a merge's buffers for nd rows of wd floats (s bytes each on the wire). */
static int a2a_bufs(const dsacp_cp_ctx *cp, int64_t nd, int64_t H, int64_t wd, int64_t s, size_t **sb, size_t **rb,
                    uint8_t **send, uint8_t **recv, float **lr, dsacp_cp_buf *b)
{
    const int64_t W = cp->W, Hs = cp->h1 - cp->h0, rowb = wd * s + (int64_t)sizeof(float);
    int n = 0;
    b[n++] = DSACP_CP_BUF(*sb, W, 1);
    b[n++] = DSACP_CP_BUF(*rb, W, 1);
    b[n++] = DSACP_CP_BUF(*send, 1, nd * H * rowb + 1);
    b[n++] = DSACP_CP_BUF(*recv, 1, W * nd * (Hs > 0 ? Hs : 1) * rowb + 1);
    b[n++] = DSACP_CP_BUF(*lr, W, 1);
    return n;
}

void dsacp_cp_merge_a2a_need(size_t *total, const dsacp_cp_ctx *cp, int64_t nd, int64_t wd)
{
    size_t *sb, *rb;
    uint8_t *send, *recv;
    float *lr;
    dsacp_cp_buf b[5];
    const int n = a2a_bufs(cp, nd, cp->cfg->num_attention_heads, wd, (int64_t)sizeof(float), &sb, &rb, &send, &recv, &lr, b);
    dsacp_cp_bufs_need(total, b, n);
}

int dsacp_cp_merge_a2a(dsacp_cp_ctx *cp, int64_t nd, int64_t H, int64_t wd, const float *part, const float *lse,
                       float *out, bool bf16, int phase)
{
    const int64_t W = cp->W, Hs = cp->h1 - cp->h0, s = bf16 ? 2 : 4, rowb = wd * s + 4;
    size_t *sb, *rb;
    uint8_t *send, *recv;
    float *lr;
    dsacp_cp_buf bl[5];
    const size_t mark = dsacp_arena_mark(cp->ws);
    const int n = a2a_bufs(cp, nd, H, wd, s, &sb, &rb, &send, &recv, &lr, bl);
    int arc = dsacp_cp_bufs_agree(cp, "merge", bl, n, "the all-to-all merge");
    if (arc) {
        dsacp_arena_rewind(cp->ws, mark);
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
    dsacp_arena_rewind(cp->ws, mark);
    return crc;
}

int64_t dsacp_cp_decode_maxn(const dsacp_cp_decode_args *a)
{
    int64_t maxn = 1;
    for (int64_t j = 0; j < a->st->n_dec; j++)
        if (a->pos_act[j] + 1 > maxn) maxn = a->pos_act[j] + 1;
    return maxn;
}

int64_t dsacp_cp_shard_topk(const dsacp_cp_decode_args *a, int64_t j, void *qpack, float *scores, int32_t *sel,
                            void *topk_work)
{
    dsacp_cp_ctx *cp = a->cp;
    const dsacp_cp_step *st = a->st;
    const dsacp_config *cfg = a->ctx->cfg;
    const int64_t Hi = cfg->index_n_heads, di = cfg->index_head_dim, e = st->ent[st->act[j]];
    const int64_t nl = dsacp_cp_idx_len(cp, a->pos_act[j] + 1, cp->ir);
    dsacp_index_query_pack(a->proj->qi + j * Hi * di, a->proj->wts + j * Hi, Hi, di, qpack);
    dsacp_dsa_index_scores(cp->idx, a->layer, st->idx_seq[e], nl, qpack, scores, true);
    cp->stats.keys_scored += nl;
    return dsacp_topk_select_ws(scores, nl, cfg->index_topk, sel, topk_work);
}

size_t dsacp_cp_mla_work_bytes(const dsacp_cp_ctx *cp, int64_t K, int64_t H)
{
    const int64_t dc = cp->cfg->kv_lora_rank, dr = cp->cfg->qk_rope_head_dim;
    return cp->deployed ? dsacp_sparse_mla_bf16_work_bytes(K, H, dc, dr) : dsacp_sparse_mla_work_bytes(K, H, dc, dr);
}

int64_t dsacp_cp_attend_positions(const dsacp_cp_decode_args *a, int64_t j, const int32_t *pos, int64_t n,
                                  bool owned_only, const float *q, float *kv, float *o, float *lse, void *work,
                                  size_t work_bytes)
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
    /* Deployed mode: the bf16-dot twin (FlashMLA's arithmetic); exact: the f32 kernel. */
    const bool deployed = a->ctx->mode == DSACP_MODE_DEPLOYED;
    const int rc = (deployed ? dsacp_sparse_mla_bf16_ws : dsacp_sparse_mla_ws)(
        q, kv, m, cfg->num_attention_heads, dc, dr, (float)cfg->softmax_scale, o, lse, work, work_bytes);
    if (rc && !*a->rc) *a->rc = rc;
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

/* The merge's buffers for nd decode rows (the same list sizes and takes them). */
typedef struct merge_bufs {
    float *qown, *qrecv, *qall, *kv, *o, *lse, *lse_all, *osend, *omine;
    uint8_t *work;
    size_t *rb;
    int64_t *cnt;
} merge_bufs;

static int merge_list(const dsacp_cp_ctx *cp, int64_t nd, merge_bufs *m, dsacp_cp_buf *b)
{
    const dsacp_config *cfg = cp->cfg;
    const int64_t K = cfg->index_topk, H = cfg->num_attention_heads, W = cp->W, dc = cfg->kv_lora_rank;
    const int64_t dr = cfg->qk_rope_head_dim, dk = dc + dr, Hs = cp->h1 - cp->h0, n1 = nd > 0 ? nd : 1;
    const int64_t Hs1 = Hs > 0 ? Hs : 1;
    int n = 0;
    b[n++] = DSACP_CP_BUF(m->qown, n1 * Hs1, dk);
    b[n++] = DSACP_CP_BUF(m->qrecv, n1 * H, dk);
    b[n++] = DSACP_CP_BUF(m->qall, n1 * H, dk);
    b[n++] = DSACP_CP_BUF(m->kv, K, dk);
    b[n++] = DSACP_CP_BUF(m->work, 1, (int64_t)dsacp_cp_mla_work_bytes(cp, K, H));
    b[n++] = DSACP_CP_BUF(m->o, n1 * H, dc);
    b[n++] = DSACP_CP_BUF(m->lse, n1, H);
    b[n++] = DSACP_CP_BUF(m->lse_all, W * n1, H);
    b[n++] = DSACP_CP_BUF(m->osend, n1 * H, dc);
    b[n++] = DSACP_CP_BUF(m->omine, n1 * Hs1, dc);
    b[n++] = DSACP_CP_BUF(m->rb, W, 1);
    b[n++] = DSACP_CP_BUF(m->cnt, W, 1);
    return n;
}

void dsacp_cp_merge_need(size_t *total, const dsacp_cp_ctx *cp, int64_t nd)
{
    merge_bufs m;
    dsacp_cp_buf b[12];
    dsacp_cp_bufs_need(total, b, merge_list(cp, nd, &m, b));
    if (cp->opt.merge_backend == DSACP_MERGE_A2A) dsacp_cp_merge_a2a_need(total, cp, nd, cp->cfg->kv_lora_rank);
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
    const int64_t h0 = cp->h0, h1 = cp->h1, Hs = h1 - h0;
    merge_bufs mb;
    dsacp_cp_buf b[12];
    const size_t mark = dsacp_arena_mark(cp->ws);
    const int nb = merge_list(cp, nd, &mb, b);
    int crc = dsacp_cp_bufs_agree(cp, "merge", b, nb, "the decode attention merge");
    if (crc) goto done;
    float *qown = mb.qown, *qrecv = mb.qrecv, *qall = mb.qall, *kv = mb.kv, *o = mb.o, *lse = mb.lse;
    float *lse_all = mb.lse_all, *osend = mb.osend, *omine = mb.omine;
    size_t *rb = mb.rb;
    int64_t *cnt = mb.cnt;
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
        dsacp_cp_attend_positions(a, j, sel + j * K, nsel[j], true, qall + j * H * dk, kv, o + j * H * dc, lse + j * H,
                                  mb.work, dsacp_cp_mla_work_bytes(cp, K, H));
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
    dsacp_arena_rewind(cp->ws, mark);
    return crc;
}
