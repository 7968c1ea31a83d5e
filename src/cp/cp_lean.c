/*
 * cp_lean.c -- decode strategy "lean" (docs/context-parallel.md section 3.5): exact, with the
 * fewest bytes and rounds that stay exact. Per decode token and layer:
 *
 *   queries        every rank projects and absorbs ALL heads' queries itself (q_b_proj and W_UK
 *                  replicated: no query gather; cp_layer.c asks for all heads on decode rows)
 *   candidates     each rank scores its shard of the indexer keys and sends only the scores of
 *                  its best k' = min(k, ceil(f k / W)) positions (positions stay home; a rank
 *                  with fewer than k' positions sends all of them; nothing at all when the
 *                  context is <= k long)              -- phase index_candidates, 4 bytes each
 *   threshold      every rank derives the same verdict from the same lists (lean_decide): tau =
 *                  the k-th best score of the union; decided when no truncated list ends above
 *                  tau and the positions tied at tau need no cross-rank tie-break; otherwise
 *                  the token falls back to exact-topk's exchange of k (score, position) pairs
 *                  per rank                           -- phase lean_fallback, counted
 *   attention      all H heads over the winners this rank owns: o_r [H][dc], lse_r [H]
 *   merge          lse_r all-gathered (phase attn_merge); every rank scales its o_r by
 *                  exp(lse_r - lse) and applies W_UV (128 wide per head instead of 512), then
 *                    output: the whole o_proj on its partial; cp_layer.c all-reduces the D
 *                            values per token (phase o_proj)
 *                    values: a reduce-scatter of the head rows to their heads' ranks (phase
 *                            attn_merge), o_proj split by heads as in the other strategies
 * Partials travel in bf16 in deployed numerics unless --partials fp32 (fp32 in exact numerics),
 * summed in rank order. With a replicated index every rank takes the whole top-k itself and no
 * candidate travels; with partial:G the lists travel between the W / G groups only (every rank
 * of a group holds and scores the group's keys, k' = ceil(f k G / W)).
 *
 * Why the threshold check is exact: let U be the union of the lists and tau its k-th best score.
 * A position outside U belongs to a rank whose list was truncated, so its score is <= the last
 * score of that list; if every truncated list ends at or below tau, no position outside U
 * scores above tau, so the positions above tau (fewer than k) are all in U and all selected.
 * The rest of the k are the lowest positions scoring exactly tau. When every such position can
 * only live on one rank (one list holds tau), that rank takes its first ones in list order,
 * which is the global order; when several lists hold tau, the union holds exactly the missing
 * count of them and no truncated list ends at tau, all are selected; otherwise positions would
 * have to travel: fallback.
 */
#include "cp/cp_strategy.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int64_t dsacp_cp_lean_kprime(int64_t K, int64_t W, double f)
{
    double v = ceil(f * (double)K / (double)W);
    if (v < 1) v = 1;
    return v >= (double)K ? K : (int64_t)v;
}

int dsacp_cp_lean_decide(int64_t W, const uint32_t *const *keys, const int64_t *m, const uint8_t *trunc, int64_t K,
                         int64_t me, uint32_t *tau_out, int64_t *take_out)
{
    int64_t total = 0;
    for (int64_t q = 0; q < W; q++) total += m[q];
    if (total < K) return DSACP_LEAN_THRESHOLD; /* the lists cannot even name k positions */
    /* tau: the k-th largest key of the union, by a W-way merge of the sorted lists. */
    int64_t idx_stack[64];
    int64_t *at = W <= 64 ? idx_stack : calloc((size_t)W, sizeof *at);
    if (!at) return DSACP_LEAN_THRESHOLD;
    memset(at, 0, (size_t)W * sizeof *at);
    uint32_t tau = 0;
    for (int64_t taken = 0; taken < K; taken++) {
        int64_t best = -1;
        for (int64_t q = 0; q < W; q++)
            if (at[q] < m[q] && (best < 0 || keys[q][at[q]] > keys[best][at[best]])) best = q;
        tau = keys[best][at[best]++];
    }
    if (at != idx_stack) free(at);
    if (tau == dsacp_float_key(-INFINITY)) return DSACP_LEAN_THRESHOLD; /* padding could decide: never */
    int64_t above = 0, tied = 0, tie_ranks = 0, tie_rank = -1;
    bool open_tie = false;
    for (int64_t q = 0; q < W; q++) {
        if (trunc[q] && m[q] > 0 && keys[q][m[q] - 1] > tau) return DSACP_LEAN_THRESHOLD;
        int64_t a = 0, t = 0;
        for (int64_t i = 0; i < m[q]; i++) a += keys[q][i] > tau, t += keys[q][i] == tau;
        above += a;
        tied += t;
        if (t) tie_ranks++, tie_rank = q;
        if (trunc[q] && m[q] > 0 && keys[q][m[q] - 1] == tau) open_tie = true; /* more tied beyond it */
    }
    const int64_t need = K - above; /* 1 <= need <= tied */
    int64_t take;
    if (tie_ranks == 1) take = tie_rank == me ? need : 0;
    else if (tied == need && !open_tie) take = -1; /* every tied position of every list */
    else return DSACP_LEAN_TIES;
    *tau_out = tau;
    *take_out = take;
    return DSACP_LEAN_DECIDED;
}

typedef struct cand {
    uint64_t key; /* float key << 32 | ~position: larger is better, ties to the lower position */
} cand;

#define ckey dsacp_cp_cand_key
#define ckey_pos dsacp_cp_cand_pos

int64_t dsacp_cp_lean_own(const uint64_t *list, int64_t n, uint32_t tau, int64_t take, int32_t *out)
{
    int64_t cnt = 0, ties = 0;
    for (int64_t i = 0; i < n; i++) {
        const uint32_t fk = (uint32_t)(list[i] >> 32);
        if (fk < tau) break;
        if (fk == tau && take >= 0 && ties++ >= take) break;
        out[cnt++] = ckey_pos(list[i]);
    }
    return cnt;
}

enum { ALL = 0, EXCHANGE = 1, FALLBACK = 2 }; /* a token's path: whole local top-k, lists, fallback */

/* One layer call of lean: the sizes and every buffer of its stages. */
typedef struct lean_call {
    const dsacp_cp_decode_args *a;
    dsacp_cp_ctx *cp;
    const dsacp_config *cfg;
    int64_t nd, n1, K, H, dk, dv;
    /* The lists travel between the indexer's holder groups (iW of them: W when sharded, W / G
     * with partial:G, where the G ranks of a group hold and score the same keys). */
    int64_t iW, ir, kp;
    float *scores;
    int32_t *lsel;
    uint64_t *list;        /* [nd][K] own local top-K, best first */
    int64_t *lcount;       /* entries of list[j] */
    int64_t *m;            /* [nd][iW] list lengths sent */
    uint8_t *trunc, *mode;
    size_t *rb;
    int32_t *own;          /* [nd][K] owned winners, ascending */
    int64_t *nown;
    float *qall, *kv, *o, *lse, *lse_all, *vpart;
    uint8_t *qpack, *work, *topk_work;
    int64_t tot_send, tot_all;
    float *sendsc, *recvsc;
    uint32_t *vkeys;
    const uint32_t **vkq;
    int64_t *voff, *vbase;
    uint64_t *fb_send, *fb_recv, *merge;
} lean_call;

/* The lists of every stage's buffers (one list sizes a stage and takes it from cp->ws; all of
 * them are held until the layer call's end, as the stages read earlier stages' buffers). */
static int stage1_list(lean_call *l, int64_t maxn, dsacp_cp_buf *b)
{
    const dsacp_config *cfg = l->cfg;
    const int64_t n1 = l->n1, K = l->K, iW = l->iW, H = l->H, dk = l->dk, dc = cfg->kv_lora_rank;
    int n = 0;
    b[n++] = DSACP_CP_BUF(l->scores, maxn, 1);
    b[n++] = DSACP_CP_BUF(l->lsel, K, 1);
    b[n++] = DSACP_CP_BUF(l->topk_work, 1, (int64_t)dsacp_topk_ws_bytes(maxn));
    b[n++] = DSACP_CP_BUF(l->list, n1, K);
    b[n++] = DSACP_CP_BUF(l->lcount, n1, 1);
    b[n++] = DSACP_CP_BUF(l->m, n1, iW);
    b[n++] = DSACP_CP_BUF(l->trunc, n1, iW);
    b[n++] = DSACP_CP_BUF(l->mode, n1, 1);
    b[n++] = DSACP_CP_BUF(l->rb, iW, 1);
    b[n++] = DSACP_CP_BUF(l->own, n1, K);
    b[n++] = DSACP_CP_BUF(l->nown, n1, 1);
    b[n++] = DSACP_CP_BUF(l->qall, n1 * H, dk);
    b[n++] = DSACP_CP_BUF(l->kv, K, dk);
    b[n++] = DSACP_CP_BUF(l->work, 1, (int64_t)dsacp_cp_mla_work_bytes(l->cp, K, H));
    b[n++] = DSACP_CP_BUF(l->o, n1 * H, dc);
    b[n++] = DSACP_CP_BUF(l->lse, n1, H);
    b[n++] = DSACP_CP_BUF(l->lse_all, l->cp->W * n1, H);
    b[n++] = DSACP_CP_BUF(l->vpart, n1 * H, l->dv);
    b[n++] = DSACP_CP_BUF(l->qpack, 1, (int64_t)dsacp_index_query_bytes(cfg->index_n_heads, cfg->index_head_dim));
    return n;
}

static int exchange_list(lean_call *l, int64_t tot_send, int64_t tot_all, dsacp_cp_buf *b)
{
    int n = 0;
    b[n++] = DSACP_CP_BUF(l->sendsc, tot_send + 1, 1);
    b[n++] = DSACP_CP_BUF(l->recvsc, tot_all + 1, 1);
    b[n++] = DSACP_CP_BUF(l->vkeys, tot_all > 0 ? tot_all : 1, 1);
    b[n++] = DSACP_CP_BUF(l->vkq, l->iW, 1);
    b[n++] = DSACP_CP_BUF(l->voff, l->iW, 1);
    b[n++] = DSACP_CP_BUF(l->vbase, l->iW + 1, 1);
    return n;
}

static int fallback_list(lean_call *l, int64_t nfb, dsacp_cp_buf *b)
{
    int n = 0;
    b[n++] = DSACP_CP_BUF(l->fb_send, nfb, l->K);
    b[n++] = DSACP_CP_BUF(l->fb_recv, l->iW * nfb, l->K);
    b[n++] = DSACP_CP_BUF(l->merge, l->iW, l->K);
    return n;
}

/* The merges' and the selected sets' buffers (ga: up to n1 K winners over all ranks, as every
 * position is owned by one rank). */
static int merge_list(lean_call *l, int64_t **cnt, float **sendv, float **mine, dsacp_cp_buf *b)
{
    const int64_t Hs = l->cp->h1 - l->cp->h0;
    int n = 0;
    b[n++] = DSACP_CP_BUF(*cnt, l->cp->W, 1);
    b[n++] = DSACP_CP_BUF(*sendv, l->n1 * l->H, l->dv);
    b[n++] = DSACP_CP_BUF(*mine, l->n1 * (Hs > 0 ? Hs : 1), l->dv);
    return n;
}

typedef struct sets_bufs {
    size_t *gb;
    int64_t *gn, *fill;
    int32_t *gs, *ga;
} sets_bufs;

static int sets_list(lean_call *l, int64_t all, sets_bufs *g, dsacp_cp_buf *b)
{
    const int64_t W = l->cp->W;
    int n = 0;
    b[n++] = DSACP_CP_BUF(g->gb, W, 1);
    b[n++] = DSACP_CP_BUF(g->gn, W * l->n1, 1);
    b[n++] = DSACP_CP_BUF(g->gs, l->n1, l->K);
    b[n++] = DSACP_CP_BUF(g->ga, all + 1, 1);
    b[n++] = DSACP_CP_BUF(g->fill, l->n1, 1);
    return n;
}

static lean_call lean_sizes(const dsacp_cp_decode_args *a, dsacp_cp_ctx *cp, int64_t nd)
{
    const dsacp_config *cfg = cp->cfg;
    lean_call l = {.a = a, .cp = cp, .cfg = cfg, .nd = nd, .K = cfg->index_topk, .H = cfg->num_attention_heads,
                   .dk = cfg->kv_lora_rank + cfg->qk_rope_head_dim, .dv = cfg->v_head_dim, .iW = cp->iW, .ir = cp->ir};
    l.n1 = l.nd > 0 ? l.nd : 1;
    l.kp = dsacp_cp_lean_kprime(l.K, l.iW, cp->opt.lean_factor);
    return l;
}

static void ws_need(size_t *total, const dsacp_cp_ctx *cp, int64_t n_dec)
{
    lean_call l = lean_sizes(NULL, (dsacp_cp_ctx *)cp, n_dec);
    dsacp_cp_buf b[19];
    int64_t *cnt;
    float *sendv, *mine;
    sets_bufs g;
    dsacp_cp_bufs_need(total, b, stage1_list(&l, cp->max_context + 1, b));
    dsacp_cp_bufs_need(total, b, exchange_list(&l, l.n1 * l.kp, l.n1 * l.iW * l.kp, b));
    dsacp_cp_bufs_need(total, b, fallback_list(&l, l.n1, b));
    dsacp_cp_bufs_need(total, b, merge_list(&l, &cnt, &sendv, &mine, b));
    dsacp_cp_merge_a2a_need(total, cp, l.n1, l.dv);
    dsacp_cp_bufs_need(total, b, sets_list(&l, l.n1 * l.K, &g, b));
}

/* Each stage's buffers come from cp->ws and are agreed by the group (dsacp_cp_bufs_agree): a
 * rank short of memory stops every rank at the same point. */
static int lean_alloc(lean_call *l)
{
    dsacp_cp_buf b[19];
    const int crc = dsacp_cp_bufs_agree(l->cp, "strategy", b, stage1_list(l, dsacp_cp_decode_maxn(l->a), b), "the lean decode");
    if (crc) return crc;
    const size_t n1 = (size_t)l->n1, iW = (size_t)l->iW;
    memset(l->lcount, 0, n1 * sizeof *l->lcount), memset(l->m, 0, n1 * iW * sizeof *l->m);
    memset(l->trunc, 0, n1 * iW), memset(l->mode, 0, n1), memset(l->rb, 0, iW * sizeof *l->rb);
    memset(l->nown, 0, n1 * sizeof *l->nown);
    return DSACP_OK;
}

/* 1. Local scores, local top-K in (score desc, position asc) order, and what each rank sends:
 *    every rank knows every rank's shard length, so the list lengths need no exchange. */
static void local_lists(lean_call *l)
{
    const dsacp_cp_decode_args *a = l->a;
    dsacp_cp_ctx *cp = l->cp;
    const int64_t K = l->K, iW = l->iW, ir = l->ir;
    const bool sharded = iW > 1;
    for (int64_t j = 0; j < l->nd; j++) {
        const int64_t n = a->pos_act[j] + 1;
        const int64_t k = dsacp_cp_shard_topk(a, j, l->qpack, l->scores, l->lsel, l->topk_work);
        for (int64_t i = 0; i < k; i++) {
            const int32_t p = (int32_t)(sharded ? dsacp_cp_global_pos(l->lsel[i], ir, cp->iI, iW) : l->lsel[i]);
            l->list[j * K + i] = ckey(l->scores[l->lsel[i]], p);
        }
        qsort(l->list + j * K, (size_t)k, sizeof *l->list, dsacp_cp_cmp_key_desc);
        l->lcount[j] = k;
        l->mode[j] = (!sharded || n <= K) ? ALL : EXCHANGE;
        if (l->mode[j] == ALL) continue;
        cp->stats.lean_decisions++;
        for (int64_t q = 0; q < iW; q++) {
            const int64_t nq = dsacp_cp_idx_len(cp, n, q);
            l->m[j * iW + q] = nq < l->kp ? nq : l->kp;
            l->trunc[j * iW + q] = nq > l->m[j * iW + q];
            l->rb[q] += (size_t)l->m[j * iW + q] * 4;
            l->tot_all += l->m[j * iW + q];
        }
        l->tot_send += l->m[j * iW + ir];
    }
}

/* 2. The truncated lists' scores (padded with -inf where NaN scores left a list short), and the
 *    verdict's buffers: one agreement for both (tot_all is the same on every rank). The scores
 *    travel (non-blocking) while every head's absorbed query row is computed here (nothing
 *    gathered): W_UK does not depend on the selection. */
static int exchange_scores(lean_call *l)
{
    dsacp_cp_ctx *cp = l->cp;
    const int64_t iW = l->iW, K = l->K, nd = l->nd, H = l->H;
    dsacp_cp_buf bl[6];
    int crc = dsacp_cp_bufs_agree(l->cp, "lean", bl, exchange_list(l, l->tot_send, l->tot_all, bl), "the lean candidates");
    if (crc) return crc;
    memset(l->voff, 0, (size_t)iW * sizeof *l->voff), memset(l->vbase, 0, (size_t)(iW + 1) * sizeof *l->vbase);
    float *s = l->sendsc;
    for (int64_t j = 0; j < nd && l->tot_all > 0; j++) {
        if (l->mode[j] != EXCHANGE) continue;
        for (int64_t i = 0; i < l->m[j * iW + l->ir]; i++) {
            float f = -INFINITY;
            if (i < l->lcount[j]) {
                const uint32_t fk = (uint32_t)(l->list[j * K + i] >> 32), b = (fk & 0x80000000u) ? (fk & 0x7FFFFFFFu) : ~fk;
                memcpy(&f, &b, 4);
            }
            *s++ = f;
        }
    }
    dsacp_comm_request *req = NULL;
    if (l->tot_all > 0) {
        crc = dsacp_comm_iallgatherv(cp->icomm, l->sendsc, (size_t)l->tot_send * 4, l->recvsc, l->rb,
                                     DSACP_PHASE_index_candidates, &req);
        if (crc) return crc;
    }
    const int64_t dq = l->cfg->qk_nope_head_dim + l->cfg->qk_rope_head_dim;
    const double t0 = dsacp_now();
    if (nd > 0) dsacp_dsa_query_rows_n(l->a->w, l->cfg, l->a->proj->q, nd, H * dq, 0, H, l->qall, H * l->dk, true);
    const double t1 = dsacp_now();
    if (!req) return DSACP_OK;
    cp->ovl_compute += t1 - t0;
    crc = dsacp_comm_wait(req);
    cp->ovl_wait += dsacp_now() - t1;
    return crc;
}

/* 4. Fallback: exact-topk's exchange of every rank's local top-K for the nfb open tokens (nfb is
 *    the same on every rank: the verdicts are). */
static int fallback(lean_call *l, int64_t nfb)
{
    dsacp_cp_ctx *cp = l->cp;
    const int64_t K = l->K, iW = l->iW, nd = l->nd, W = cp->W, me = cp->rank, I = cp->opt.interleave;
    dsacp_cp_buf b[3];
    int crc = dsacp_cp_bufs_agree(l->cp, "lean", b, fallback_list(l, nfb, b), "the lean fallback");
    if (crc) return crc;
    int64_t f = 0;
    for (int64_t j = 0; j < nd; j++) {
        if (l->mode[j] != FALLBACK) continue;
        for (int64_t i = 0; i < K; i++) l->fb_send[f * K + i] = i < l->lcount[j] ? l->list[j * K + i] : 0; /* 0: none */
        f++;
    }
    cp->stats.lean_fallback_rounds++;
    crc = dsacp_comm_allgather(cp->icomm, l->fb_send, (size_t)(nfb * K) * sizeof *l->fb_send, l->fb_recv,
                               DSACP_PHASE_lean_fallback);
    if (crc) return crc;
    f = 0;
    for (int64_t j = 0; j < nd; j++) {
        if (l->mode[j] != FALLBACK) continue;
        int64_t cnt = 0;
        for (int64_t q = 0; q < iW; q++)
            for (int64_t i = 0; i < K; i++) {
                const uint64_t k = l->fb_recv[(q * nfb + f) * K + i];
                if (k) l->merge[cnt++] = k;
            }
        f++;
        qsort(l->merge, (size_t)cnt, sizeof *l->merge, dsacp_cp_cmp_key_desc);
        for (int64_t i = 0; i < cnt && i < K; i++) {
            const int32_t p = ckey_pos(l->merge[i]);
            if (dsacp_cp_owner(p, I, W) == me) l->own[j * K + l->nown[j]++] = p;
        }
    }
    return DSACP_OK;
}

/* 3. The verdict per token (the same on every rank) and this rank's winners; the open tokens
 *    through the fallback. */
static int verdicts(lean_call *l)
{
    dsacp_cp_ctx *cp = l->cp;
    const int64_t K = l->K, iW = l->iW, W = cp->W, me = cp->rank, I = cp->opt.interleave;
    for (int64_t q = 0; q < iW; q++) l->vbase[q + 1] = l->vbase[q] + (int64_t)(l->rb[q] / 4);
    for (int64_t i = 0; i < l->tot_all; i++) l->vkeys[i] = dsacp_float_key(l->recvsc[i]);
    int64_t nfb = 0;
    for (int64_t j = 0; j < l->nd; j++) {
        int32_t *ow = l->own + j * K;
        l->nown[j] = 0;
        if (l->mode[j] == ALL) {
            for (int64_t i = 0; i < l->lcount[j]; i++) {
                const int32_t p = ckey_pos(l->list[j * K + i]);
                if (dsacp_cp_owner(p, I, W) == me) ow[l->nown[j]++] = p;
            }
            continue;
        }
        for (int64_t q = 0; q < iW; q++) l->vkq[q] = l->vkeys + l->vbase[q] + l->voff[q];
        uint32_t tau = 0;
        int64_t take = 0;
        const int v = dsacp_cp_lean_decide(iW, l->vkq, l->m + j * iW, l->trunc + j * iW, K, l->ir, &tau, &take);
        for (int64_t q = 0; q < iW; q++) l->voff[q] += l->m[j * iW + q];
        if (v != DSACP_LEAN_DECIDED) {
            l->mode[j] = FALLBACK;
            nfb++;
            if (v == DSACP_LEAN_TIES) cp->stats.lean_fallback_ties++;
            else cp->stats.lean_fallback_threshold++;
            continue;
        }
        /* the group's winners; this rank attends those it owns */
        const int64_t ng = dsacp_cp_lean_own(l->list + j * K, l->lcount[j], tau, take, ow);
        for (int64_t i = 0; i < ng; i++)
            if (dsacp_cp_owner(ow[i], I, W) == me) ow[l->nown[j]++] = ow[i];
    }
    int crc = nfb > 0 ? fallback(l, nfb) : DSACP_OK;
    for (int64_t j = 0; j < l->nd && !crc; j++) qsort(l->own + j * K, (size_t)l->nown[j], sizeof *l->own, dsacp_cmp_i32);
    return crc;
}

/* 5. The attention of all heads over the owned winners in ascending positions. */
static void attend(lean_call *l)
{
    const int64_t K = l->K, H = l->H, dc = l->cfg->kv_lora_rank;
    for (int64_t j = 0; j < l->nd; j++) {
        dsacp_cp_attend_positions(l->a, j, l->own + j * K, l->nown[j], false, l->qall + j * H * l->dk, l->kv,
                                  l->o + j * H * dc, l->lse + j * H, l->work,
                                  dsacp_cp_mla_work_bytes(l->cp, K, H));
        l->cp->stats.lean_owned_winners += l->nown[j];
    }
}

/* The merged head rows of this rank's heads into vcat: from the a2a merge or the reduce-scatter. */
static void put_own_heads(lean_call *l, const float *mine)
{
    const int64_t Hs = l->cp->h1 - l->cp->h0, dv = l->dv;
    for (int64_t j = 0; j < l->nd; j++)
        memcpy(l->a->vcat + (j * l->H + l->cp->h0) * dv, mine + j * Hs * dv, (size_t)(Hs * dv) * 4);
}

/* 6a. values + a2a (Helix): W_UV of every head on the unscaled partial, each head's row and lse
 *     to its rank in one all-to-all, merged there. */
static int merge_a2a(lean_call *l)
{
    const int64_t H = l->H, dc = l->cfg->kv_lora_rank;
    int64_t *cnt;
    float *sendv, *mine;
    dsacp_cp_buf b[3];
    int crc = dsacp_cp_bufs_agree(l->cp, "merge", b, merge_list(l, &cnt, &sendv, &mine, b), "the lean merge");
    if (!crc) {
        if (l->nd > 0) dsacp_dsa_value_rows_n(l->a->w, l->cfg, l->o, l->nd, H * dc, 0, H, l->vpart, H * l->dv, true);
        crc = dsacp_cp_merge_a2a(l->cp, l->nd, H, l->dv, l->vpart, l->lse, mine, l->a->wire16, DSACP_PHASE_attn_merge);
        if (!crc) put_own_heads(l, mine);
    }
    return crc;
}

/* 6b. The lse of every rank, this rank's share scaled, W_UV of every head, then the output merge
 *     (the strategy's o_proj all-reduces) or the values merge (head rows to their heads' ranks,
 *     summed there in rank order). */
static int merge_scaled(lean_call *l)
{
    dsacp_cp_ctx *cp = l->cp;
    const int64_t nd = l->nd, H = l->H, W = cp->W, dc = l->cfg->kv_lora_rank, dv = l->dv;
    int crc = dsacp_comm_allgather(cp->comm, l->lse, (size_t)(nd * H) * 4, l->lse_all, DSACP_PHASE_attn_merge);
    if (crc) return crc;
    for (int64_t j = 0; j < nd; j++)
        for (int64_t h = 0; h < H; h++) {
            const double total = dsacp_cp_lse_total(l->lse_all + j * H + h, W, nd * H);
            const float f = total == -INFINITY ? 0.0f : (float)exp((double)l->lse[j * H + h] - total);
            float *oh = l->o + (j * H + h) * dc;
            for (int64_t i = 0; i < dc; i++) oh[i] *= f;
        }
    if (nd > 0) dsacp_dsa_value_rows_n(l->a->w, l->cfg, l->o, nd, H * dc, 0, H, l->vpart, H * dv, true);
    if (l->a->output_merge) {
        memcpy(l->a->vcat, l->vpart, (size_t)(nd * H * dv) * 4);
        return DSACP_OK;
    }
    int64_t *cnt;
    float *sendv, *mine;
    dsacp_cp_buf b[3];
    crc = dsacp_cp_bufs_agree(l->cp, "merge", b, merge_list(l, &cnt, &sendv, &mine, b), "the lean merge");
    if (!crc) {
        float *s = sendv;
        for (int64_t q = 0; q < W; q++) {
            const int64_t qa = dsacp_split_begin(H, q, W), qb = dsacp_split_begin(H, q + 1, W);
            cnt[q] = nd * (qb - qa) * dv;
            for (int64_t j = 0; j < nd; j++, s += (qb - qa) * dv)
                memcpy(s, l->vpart + (j * H + qa) * dv, (size_t)((qb - qa) * dv) * 4);
        }
        crc = dsacp_comm_reduce_scatter_wire(cp->comm, sendv, mine, cnt, l->a->wire16, DSACP_PHASE_attn_merge);
        if (!crc) put_own_heads(l, mine);
    }
    return crc;
}

/* 7. The selected sets, only when asked: every rank's owned winners to rank 0. */
static int selected_sets(lean_call *l)
{
    dsacp_cp_ctx *cp = l->cp;
    const int64_t nd = l->nd, n1 = l->n1, K = l->K, W = cp->W;
    sets_bufs g;
    dsacp_cp_buf b[5];
    int64_t mycnt = 0;
    /* ga sized for the most winners there can be (n1 K): one agreement for the stage */
    int crc = dsacp_cp_bufs_agree(l->cp, "topk", b, sets_list(l, n1 * K, &g, b), "the selected sets");
    if (!crc) {
        memset(g.gb, 0, (size_t)W * sizeof *g.gb), memset(g.fill, 0, (size_t)n1 * sizeof *g.fill);
        for (int64_t j = 0; j < nd; j++) memcpy(g.gs + mycnt, l->own + j * K, (size_t)l->nown[j] * 4), mycnt += l->nown[j];
        crc = dsacp_comm_allgather(cp->comm, l->nown, (size_t)nd * sizeof *l->nown, g.gn, DSACP_PHASE_topk_dump);
    }
    if (!crc) {
        for (int64_t q = 0; q < W; q++)
            for (int64_t j = 0; j < nd; j++) g.gb[q] += (size_t)g.gn[q * nd + j] * 4;
        crc = dsacp_comm_gatherv(cp->comm, g.gs, (size_t)mycnt * 4, g.ga, g.gb, DSACP_PHASE_topk_dump);
    }
    if (!crc && cp->rank == 0) {
        int32_t *topk = l->a->topk;
        const int32_t *r = g.ga;
        for (int64_t q = 0; q < W; q++)
            for (int64_t j = 0; j < nd; j++)
                for (int64_t i = 0; i < g.gn[q * nd + j]; i++) topk[j * K + g.fill[j]++] = *r++;
        for (int64_t j = 0; j < nd; j++) {
            qsort(topk + j * K, (size_t)g.fill[j], sizeof *topk, dsacp_cmp_i32);
            for (int64_t i = g.fill[j]; i < K; i++) topk[j * K + i] = -1;
        }
    }
    return crc;
}

static int decode(const dsacp_cp_decode_args *a)
{
    dsacp_cp_ctx *cp = a->cp;
    lean_call l = lean_sizes(a, cp, a->st->n_dec);
    const size_t mark = dsacp_arena_mark(cp->ws);
    int crc = lean_alloc(&l);
    if (!crc) {
        local_lists(&l);
        crc = exchange_scores(&l);
    }
    if (!crc) crc = verdicts(&l);
    if (!crc) {
        attend(&l);
        crc = !a->output_merge && cp->opt.merge_backend == DSACP_MERGE_A2A ? merge_a2a(&l) : merge_scaled(&l);
    }
    if (!crc && a->st->want_topk) crc = selected_sets(&l);
    dsacp_arena_rewind(cp->ws, mark);
    return crc;
}

/* The output merge needs the whole o_proj on every rank: a DSA-CP tp step on the activation path
 * keeps it split, so lean merges values there. */
static bool merges_output(const dsacp_cp_options *opt, bool tp_a2a)
{
    return opt->lean_merge == DSACP_LEAN_MERGE_OUTPUT && !tp_a2a;
}

/* Partials in bf16 in deployed numerics unless --partials fp32. */
static int64_t wire_bytes(const dsacp_cp_options *opt, bool deployed)
{
    return deployed && opt->partials == DSACP_PARTIALS_AUTO ? 2 : 4;
}

#define KEEP(rc, expr)                                                                            \
    do {                                                                                          \
        int k_ = (expr);                                                                          \
        if (k_ && !(rc)) (rc) = k_;                                                               \
    } while (0)

/* The output merge: the whole o_proj `o` on this rank's partial v rows of every head, then an
 * all-reduce of the D values per token in rank order. The partials are not FP8-quantized in
 * deployed numerics: quantizing each partial would add one e4m3 rounding per rank; applied to
 * the f32 partial (an FP8-weight x 16-bit-activation GEMM on an accelerator), the sum equals
 * o_proj of the merged row up to reassociation, one activation rounding away from W = 1. */
static int o_proj(dsacp_cp_ctx *cp, const dsacp_dsa_ctx *ctx, const dsacp_weight *o, const dsacp_cp_step *st, float *vcat,
                  float *out, int *rc)
{
    const dsacp_config *cfg = ctx->cfg;
    const int64_t H = cfg->num_attention_heads, dv = cfg->v_head_dim, D = cfg->hidden_size, nd = st->n_dec;
    const bool bf16 = wire_bytes(&cp->opt, ctx->mode == DSACP_MODE_DEPLOYED) == 2;
    KEEP(*rc, dsacp_dsa_linear(ctx, o, vcat, nd, H * dv, out, D, false));
    return dsacp_comm_allreduce_wire(cp->comm, out, nd * D, bf16, DSACP_PHASE_o_proj);
}

/* Shared counts: [q] the scores index group q sends over the step (min(local, k') per token
 * whose context exceeds k), [iW] their sum, [iW + 1] the selected positions of the tokens, then
 * 2 iW of work. */
static int64_t shared_len(const dsacp_cp_formula *f) { return 3 * f->iW + 2; }

/* For every index group q, the sum over the decode tokens (n = context + 1 positions each, those
 * with n > K) of min(local_len(n, q), kp): the tokens walked in order, each group's count of
 * positions advanced by one position at a time while n grows a little and recomputed when it
 * jumps, its running minimum added lazily -- O(tokens + iW x jumps), the same integers as the
 * per-token sum over groups. */
static void lean_counts(const int64_t *context, int64_t nd, int64_t K, int64_t kp, int64_t iI, int64_t iW, int64_t *M,
                        int64_t *f, int64_t *since)
{
    int64_t clock = 0, cur = -1; /* f[q] = local_len(cur, q); each token adds one to the clock */
    for (int64_t q = 0; q < iW; q++) M[q] = 0;
    for (int64_t j = 0; j < nd; j++) {
        const int64_t n = context[j] + 1;
        if (n <= K) continue;
        if (cur >= 0 && n >= cur && n - cur <= iW) {
            for (int64_t p = cur; p < n; p++) {
                const int64_t q = dsacp_cp_owner(p, iI, iW);
                M[q] += (f[q] < kp ? f[q] : kp) * (clock - since[q]);
                since[q] = clock;
                f[q]++;
            }
        } else {
            for (int64_t q = 0; q < iW; q++) {
                if (cur >= 0) M[q] += (f[q] < kp ? f[q] : kp) * (clock - since[q]);
                f[q] = dsacp_cp_local_len(n, q, iI, iW), since[q] = clock;
            }
        }
        cur = n;
        clock++;
    }
    for (int64_t q = 0; q < iW && cur >= 0; q++) M[q] += (f[q] < kp ? f[q] : kp) * (clock - since[q]);
}

static void shared(const dsacp_cp_formula *f, int64_t *sh)
{
    const int64_t K = f->cfg->index_topk, iW = f->iW;
    for (int64_t j = 0; j < f->nd; j++) {
        const int64_t n = f->context[j] + 1;
        sh[iW + 1] += n < K ? n : K;
    }
    if (iW <= 1) return;
    lean_counts(f->context, f->nd, K, dsacp_cp_lean_kprime(K, iW, f->opt->lean_factor), f->iI, iW, sh, sh + iW + 2,
                sh + 2 * iW + 2);
    for (int64_t q = 0; q < iW; q++) sh[iW] += sh[q];
}

/* docs/context-parallel.md 3.5: the truncated lists' scores, the fallback's (score, position)
 * pairs, the lse all-gather and, merging values, the head rows' reduce-scatter (or one
 * all-to-all); the selected sets when asked. */
static void comm(const dsacp_cp_formula *f, const int64_t *sh, dsacp_comm_counter out[DSACP_PHASE_COUNT])
{
    const dsacp_cp_options *cp = f->opt;
    const int64_t L = dsacp_cp_formula_layers(f), K = f->cfg->index_topk, H = f->cfg->num_attention_heads;
    const int64_t dv = f->cfg->v_head_dim, W = f->W, me = f->me, iW = f->iW, nd = f->nd, Hs = dsacp_cp_heads(H, me, W);
    const int64_t sz = wire_bytes(cp, f->deployed);
    const int64_t mine = iW > 1 ? sh[f->ir] : 0, oth = iW > 1 ? sh[iW] - mine : 0, sel = sh[iW + 1];
    if (mine + oth > 0) dsacp_cp_count(&out[DSACP_PHASE_index_candidates], L, L * mine * 4 * (iW - 1), L * oth * 4);
    dsacp_cp_count(&out[DSACP_PHASE_lean_fallback], f->lean_fallback_rounds, f->lean_fallback_tokens * K * 8 * (iW - 1),
                   f->lean_fallback_tokens * K * 8 * (iW - 1));
    const bool values = !merges_output(cp, f->tp_a2a); /* values, or a tp step on the activation path */
    if (values && cp->merge_backend == DSACP_MERGE_A2A) {
        dsacp_cp_count(&out[DSACP_PHASE_attn_merge], L, L * nd * (H - Hs) * (dv * sz + 4), L * nd * Hs * (dv * sz + 4) * (W - 1));
    } else {
        dsacp_cp_count(&out[DSACP_PHASE_attn_merge], L, L * nd * H * 4 * (W - 1), L * nd * H * 4 * (W - 1));
        if (values) dsacp_cp_count(&out[DSACP_PHASE_attn_merge], L, L * nd * (H - Hs) * dv * sz, L * nd * Hs * dv * sz * (W - 1));
    }
    /* the selected sets: every rank's owned-winner counts, then the winners to rank 0 */
    if (f->want_topk) {
        dsacp_cp_count(&out[DSACP_PHASE_topk_dump], L, L * nd * 8 * (W - 1), L * nd * 8 * (W - 1));
        dsacp_cp_count(&out[DSACP_PHASE_topk_dump], L, me ? f->lean_owned_winners * 4 : 0,
                       me ? 0 : (L * sel - f->lean_owned_winners) * 4);
    }
}

static double token_bytes(const dsacp_cp_formula *f, double gather_bytes, double oproj_bytes)
{
    const dsacp_cp_options *cp = f->opt;
    const double Wd = (double)f->W, H = (double)f->cfg->num_attention_heads, dv = (double)f->cfg->v_head_dim;
    const double D = (double)f->cfg->hidden_size, s = (double)wire_bytes(cp, f->deployed), iW = (double)f->iW;
    const bool out = cp->lean_merge == DSACP_LEAN_MERGE_OUTPUT, ish = f->iW > 1;
    const double kpg = (double)dsacp_cp_lean_kprime(f->cfg->index_topk, f->iW, cp->lean_factor);
    return (ish ? (iW - 1) * kpg * 4 : 0) + (Wd - 1) * H * 4 + (out ? 0 : (Wd - 1) * (H / Wd) * dv * s) +
           (out ? 2 * (Wd - 1) / Wd * D * s : oproj_bytes);
}

/* The report's members: the merge backend and lean's options (the factor written as %g). */
static int report(const dsacp_cp_options *o, json_t *obj)
{
    char factor[32];
    snprintf(factor, sizeof factor, "%g", o->lean_factor);
    if (json_object_set_new(obj, "dcp_comm_backend", json_string(dsacp_merge_backend_name(o->merge_backend))) ||
        json_object_set_new(obj, "lean", json_pack("{s:o, s:s, s:s}", "candidates_factor",
                                                   json_loads(factor, JSON_DECODE_ANY, NULL), "merge",
                                                   dsacp_lean_merge_name(o->lean_merge), "partials",
                                                   dsacp_partials_dtype_name(o->partials))))
        return dsacp_error(DSACP_ENOMEM, "out of memory for the report");
    return DSACP_OK;
}

const dsacp_cp_strategy dsacp_cp_strategy_lean = {
    .name = "lean",
    .summary = "replicated queries, truncated score lists with an exact threshold check, merge after W_UV and o_proj",
    .all_query_heads = true,
    .overlaps_candidates = true,
    .decode = decode,
    .ws_need = ws_need,
    .merges_output = merges_output,
    .o_proj = o_proj,
    .wire_bytes = wire_bytes,
    .shared_len = shared_len,
    .shared = shared,
    .comm = comm,
    .token_bytes = token_bytes,
    .report = report,
};
