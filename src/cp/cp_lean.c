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

static int cmp_desc(const void *a, const void *b)
{
    const uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

static int cmp_i32(const void *a, const void *b)
{
    const int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

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

static int decode(const dsacp_cp_decode_args *a)
{
    const bool output_merge = a->output_merge, bf16 = a->wire16;
    dsacp_cp_ctx *cp = a->cp;
    const dsacp_cp_step *st = a->st;
    const dsacp_config *cfg = a->ctx->cfg;
    const int64_t nd = st->n_dec, K = cfg->index_topk, Hi = cfg->index_n_heads, di = cfg->index_head_dim;
    const int64_t H = cfg->num_attention_heads, nope = cfg->qk_nope_head_dim, dr = cfg->qk_rope_head_dim;
    const int64_t dq = nope + dr, dc = cfg->kv_lora_rank, dk = dc + dr, dv = cfg->v_head_dim;
    const int64_t W = cp->W, me = cp->rank, I = cp->opt.interleave, n1 = nd > 0 ? nd : 1;
    const int64_t h0 = cp->h0, h1 = cp->h1, Hs = h1 - h0;
    /* The lists travel between the indexer's holder groups (iW of them: W when sharded, W / G
     * with partial:G, where the G ranks of a group hold and score the same keys). */
    const int64_t iW = cp->iW, ir = cp->ir, iI = cp->iI;
    const bool sharded = iW > 1;
    const bool lat_sh = W > 1 && cp->opt.kv_layout == DSACP_LAYOUT_SHARDED;
    const int64_t kp = dsacp_cp_lean_kprime(K, iW, cp->opt.lean_factor);
    const float scale = (float)cfg->softmax_scale;

    int64_t maxn = 1;
    for (int64_t j = 0; j < nd; j++)
        if (a->pos_act[j] + 1 > maxn) maxn = a->pos_act[j] + 1;
    float *scores = malloc((size_t)maxn * 4);
    int32_t *lsel = malloc((size_t)K * 4);
    uint64_t *list = malloc((size_t)(n1 * K) * sizeof *list);        /* [nd][K] own local top-K, best first */
    int64_t *lcount = calloc((size_t)n1, sizeof *lcount);            /* entries of list[j] */
    int64_t *m = calloc((size_t)(n1 * iW), sizeof *m);               /* [nd][iW] list lengths sent */
    uint8_t *trunc = calloc((size_t)(n1 * iW), 1), *mode = calloc((size_t)n1, 1);
    size_t *rb = calloc((size_t)iW, sizeof *rb);
    int32_t *own = malloc((size_t)(n1 * K) * 4);                     /* [nd][K] owned winners, ascending */
    int64_t *nown = calloc((size_t)n1, sizeof *nown);
    float *qall = dsacp_alloc((size_t)(n1 * H * dk) * 4), *kv = dsacp_alloc((size_t)(K * dk) * 4);
    float *work = malloc((size_t)K * 4), *o = dsacp_alloc((size_t)(n1 * H * dc) * 4);
    float *lse = malloc((size_t)(n1 * H) * 4), *lse_all = malloc((size_t)(W * n1 * H) * 4);
    float *vpart = dsacp_alloc((size_t)(n1 * H * dv) * 4);
    void *qpack = dsacp_alloc((dsacp_index_query_bytes(Hi, di) + 63) / 64 * 64);
    float *sendsc = NULL, *recvsc = NULL;
    uint32_t *vkeys = NULL;
    const uint32_t **vkq = NULL;
    int64_t *voff = NULL, *vbase = NULL;
    uint64_t *fb_send = NULL, *fb_recv = NULL, *merge = NULL;
    /* Each allocation stage is agreed before its first collective (dsacp_cp_agree_alloc): a rank
     * short of memory stops every rank at the same point. */
    int crc = dsacp_cp_agree_alloc(cp, "strategy",
                                   scores && lsel && list && lcount && m && trunc && mode && rb && own && nown && qall &&
                                       kv && work && o && lse && lse_all && vpart && qpack,
                                   "the lean decode");
    if (crc) goto done;

    /* 1. Local scores, local top-K in (score desc, position asc) order, and what each rank sends:
     *    every rank knows every rank's shard length, so the list lengths need no exchange. */
    int64_t tot_send = 0, tot_all = 0;
    enum { ALL = 0, EXCHANGE = 1, FALLBACK = 2 };
    for (int64_t j = 0; j < nd; j++) {
        const int64_t e = st->ent[st->act[j]], n = a->pos_act[j] + 1;
        const int64_t nl = dsacp_cp_idx_len(cp, n, ir);
        dsacp_index_query_pack(a->proj->qi + j * Hi * di, a->proj->wts + j * Hi, Hi, di, qpack);
        dsacp_dsa_index_scores(cp->idx, a->layer, st->idx_seq[e], nl, qpack, scores, true);
        cp->stats.keys_scored += nl;
        const int64_t k = dsacp_topk_select(scores, nl, K, lsel);
        for (int64_t i = 0; i < k; i++) {
            const int32_t p = (int32_t)(sharded ? dsacp_cp_global_pos(lsel[i], ir, iI, iW) : lsel[i]);
            list[j * K + i] = ckey(scores[lsel[i]], p);
        }
        qsort(list + j * K, (size_t)k, sizeof *list, cmp_desc);
        lcount[j] = k;
        mode[j] = (!sharded || n <= K) ? ALL : EXCHANGE;
        if (mode[j] == ALL) continue;
        cp->stats.lean_decisions++;
        for (int64_t q = 0; q < iW; q++) {
            const int64_t nq = dsacp_cp_idx_len(cp, n, q);
            m[j * iW + q] = nq < kp ? nq : kp;
            trunc[j * iW + q] = nq > m[j * iW + q];
            rb[q] += (size_t)m[j * iW + q] * 4;
            tot_all += m[j * iW + q];
        }
        tot_send += m[j * iW + ir];
    }
    /* 2. The truncated lists' scores (padded with -inf where NaN scores left a list short), and
     *    the verdict's buffers: one agreement for both (tot_all is the same on every rank). */
    if (tot_all > 0) {
        sendsc = malloc((size_t)tot_send * 4 + 4);
        recvsc = malloc((size_t)tot_all * 4 + 4);
    }
    vkeys = malloc((size_t)(tot_all > 0 ? tot_all : 1) * 4);
    vkq = malloc((size_t)iW * sizeof *vkq);
    voff = calloc((size_t)iW, sizeof *voff), vbase = calloc((size_t)iW + 1, sizeof *vbase);
    crc = dsacp_cp_agree_alloc(cp, "lean", (tot_all == 0 || (sendsc && recvsc)) && vkeys && vkq && voff && vbase,
                               "the lean candidates");
    if (crc) goto done;
    if (tot_all > 0) {
        float *s = sendsc;
        for (int64_t j = 0; j < nd; j++) {
            if (mode[j] != EXCHANGE) continue;
            for (int64_t i = 0; i < m[j * iW + ir]; i++) {
                float f = -INFINITY;
                if (i < lcount[j]) {
                    const uint32_t fk = (uint32_t)(list[j * K + i] >> 32), b = (fk & 0x80000000u) ? (fk & 0x7FFFFFFFu) : ~fk;
                    memcpy(&f, &b, 4);
                }
                *s++ = f;
            }
        }
    }
    /* The scores travel (non-blocking) while every head's absorbed query row is computed here
     * (nothing gathered): W_UK does not depend on the selection. */
    {
        dsacp_comm_request *req = NULL;
        if (tot_all > 0) {
            crc = dsacp_comm_iallgatherv(cp->icomm, sendsc, (size_t)tot_send * 4, recvsc, rb, DSACP_PHASE_index_candidates,
                                         &req);
            if (crc) goto done;
        }
        double t0 = dsacp_now();
        if (nd > 0) dsacp_dsa_query_rows_n(a->w, cfg, a->proj->q, nd, H * dq, 0, H, qall, H * dk, true);
        const double t1 = dsacp_now();
        if (req) {
            cp->ovl_compute += t1 - t0;
            crc = dsacp_comm_wait(req);
            cp->ovl_wait += dsacp_now() - t1;
            if (crc) goto done;
        }
    }
    /* 3. The verdict per token (the same on every rank), and this rank's winners. */
    {
        uint32_t *keys = vkeys;
        const uint32_t **kq = vkq;
        int64_t *off = voff, *base = vbase;
        for (int64_t q = 0; q < iW; q++) base[q + 1] = base[q] + (int64_t)(rb[q] / 4);
        for (int64_t i = 0; i < tot_all; i++) keys[i] = dsacp_float_key(recvsc[i]);
        int64_t nfb = 0;
        for (int64_t j = 0; j < nd; j++) {
            int32_t *ow = own + j * K;
            nown[j] = 0;
            if (mode[j] == ALL) {
                for (int64_t i = 0; i < lcount[j]; i++) {
                    const int32_t p = ckey_pos(list[j * K + i]);
                    if (dsacp_cp_owner(p, I, W) == me) ow[nown[j]++] = p;
                }
                continue;
            }
            for (int64_t q = 0; q < iW; q++) kq[q] = keys + base[q] + off[q];
            uint32_t tau = 0;
            int64_t take = 0;
            const int v = dsacp_cp_lean_decide(iW, kq, m + j * iW, trunc + j * iW, K, ir, &tau, &take);
            for (int64_t q = 0; q < iW; q++) off[q] += m[j * iW + q];
            if (v != DSACP_LEAN_DECIDED) {
                mode[j] = FALLBACK;
                nfb++;
                if (v == DSACP_LEAN_TIES) cp->stats.lean_fallback_ties++;
                else cp->stats.lean_fallback_threshold++;
                continue;
            }
            /* the group's winners; this rank attends those it owns */
            const int64_t ng = dsacp_cp_lean_own(list + j * K, lcount[j], tau, take, ow);
            for (int64_t i = 0; i < ng; i++)
                if (dsacp_cp_owner(ow[i], I, W) == me) ow[nown[j]++] = ow[i];
        }
        /* 4. Fallback: exact-topk's exchange of every rank's local top-K for the open tokens. */
        if (nfb > 0) {
            fb_send = malloc((size_t)(nfb * K) * sizeof *fb_send);
            fb_recv = malloc((size_t)(iW * nfb * K) * sizeof *fb_recv);
            merge = malloc((size_t)(iW * K) * sizeof *merge);
            /* nfb is the same on every rank (the verdicts are) */
            crc = dsacp_cp_agree_alloc(cp, "lean", fb_send && fb_recv && merge, "the lean fallback");
            if (crc) goto done;
            int64_t f = 0;
            for (int64_t j = 0; j < nd; j++) {
                if (mode[j] != FALLBACK) continue;
                for (int64_t i = 0; i < K; i++) fb_send[f * K + i] = i < lcount[j] ? list[j * K + i] : 0; /* 0: none */
                f++;
            }
            cp->stats.lean_fallback_rounds++;
            crc = dsacp_comm_allgather(cp->icomm, fb_send, (size_t)(nfb * K) * sizeof *fb_send, fb_recv,
                                       DSACP_PHASE_lean_fallback);
            if (crc) goto done;
            f = 0;
            for (int64_t j = 0; j < nd; j++) {
                if (mode[j] != FALLBACK) continue;
                int64_t cnt = 0;
                for (int64_t q = 0; q < iW; q++)
                    for (int64_t i = 0; i < K; i++) {
                        const uint64_t k = fb_recv[(q * nfb + f) * K + i];
                        if (k) merge[cnt++] = k;
                    }
                f++;
                qsort(merge, (size_t)cnt, sizeof *merge, cmp_desc);
                for (int64_t i = 0; i < cnt && i < K; i++) {
                    const int32_t p = ckey_pos(merge[i]);
                    if (dsacp_cp_owner(p, I, W) == me) own[j * K + nown[j]++] = p;
                }
            }
        }
    }
    for (int64_t j = 0; j < nd; j++) qsort(own + j * K, (size_t)nown[j], sizeof *own, cmp_i32);

    /* 5. The attention of all heads over the owned winners in ascending positions. */
    for (int64_t j = 0; j < nd; j++) {
        const int64_t e = st->ent[st->act[j]];
        for (int64_t i = 0; i < nown[j]; i++) {
            const int64_t p = own[j * K + i], lp = lat_sh ? dsacp_cp_local_pos(p, I, W) : p;
            dsacp_kv_read_mla(cp->lat, a->layer, dsacp_kv_slot(cp->lat, st->lat_seq[e], lp), kv + i * dk);
        }
        cp->stats.keys_attended += nown[j];
        cp->stats.lean_owned_winners += nown[j];
        cp->stats.decode_tokens++;
        dsacp_sparse_mla(qall + j * H * dk, kv, nown[j], H, dc, dr, scale, o + j * H * dc, lse + j * H, work);
    }

    /* 6. Merge. values + a2a (Helix): W_UV of every head on the unscaled partial, each head's row
     *    and lse to its rank in one all-to-all, merged there. Otherwise: the lse of every rank,
     *    this rank's share scaled, W_UV of every head, then the output or values merge. */
    if (!output_merge && cp->opt.merge_backend == DSACP_MERGE_A2A) {
        float *mine = dsacp_alloc((size_t)(n1 * (Hs > 0 ? Hs : 1) * dv) * 4);
        crc = dsacp_cp_agree_alloc(cp, "merge", mine != NULL, "the lean merge");
        if (crc) {
            dsacp_free(mine);
            goto done;
        }
        if (nd > 0) dsacp_dsa_value_rows_n(a->w, cfg, o, nd, H * dc, 0, H, vpart, H * dv, true);
        crc = dsacp_cp_merge_a2a(cp, nd, H, dv, vpart, lse, mine, bf16, DSACP_PHASE_attn_merge);
        if (!crc)
            for (int64_t j = 0; j < nd; j++)
                memcpy(a->vcat + (j * H + h0) * dv, mine + j * Hs * dv, (size_t)(Hs * dv) * 4);
        dsacp_free(mine);
        if (crc) goto done;
        goto selected_sets;
    }
    crc = dsacp_comm_allgather(cp->comm, lse, (size_t)(nd * H) * 4, lse_all, DSACP_PHASE_attn_merge);
    if (crc) goto done;
    for (int64_t j = 0; j < nd; j++)
        for (int64_t h = 0; h < H; h++) {
            float mx = -INFINITY;
            for (int64_t r = 0; r < W; r++) mx = fmaxf(mx, lse_all[(r * nd + j) * H + h]);
            float f = 0.0f;
            if (mx != -INFINITY) {
                double sum = 0;
                for (int64_t r = 0; r < W; r++) sum += exp((double)lse_all[(r * nd + j) * H + h] - mx);
                f = (float)exp((double)lse[j * H + h] - (mx + log(sum)));
            }
            float *oh = o + (j * H + h) * dc;
            for (int64_t i = 0; i < dc; i++) oh[i] *= f;
        }
    if (nd > 0) dsacp_dsa_value_rows_n(a->w, cfg, o, nd, H * dc, 0, H, vpart, H * dv, true);
    if (output_merge) {
        /* cp_layer.c applies the whole o_proj to each rank's partial and all-reduces. */
        memcpy(a->vcat, vpart, (size_t)(nd * H * dv) * 4);
    } else {
        /* Head rows to their heads' ranks, summed there in rank order. */
        int64_t *cnt = malloc((size_t)W * sizeof *cnt);
        float *sendv = dsacp_alloc((size_t)(n1 * H * dv) * 4), *mine = dsacp_alloc((size_t)(n1 * (Hs > 0 ? Hs : 1) * dv) * 4);
        crc = dsacp_cp_agree_alloc(cp, "merge", cnt && sendv && mine, "the lean merge");
        if (crc) {
            free(cnt), dsacp_free(sendv), dsacp_free(mine);
            goto done;
        }
        float *s = sendv;
        for (int64_t q = 0; q < W; q++) {
            const int64_t qa = dsacp_split_begin(H, q, W), qb = dsacp_split_begin(H, q + 1, W);
            cnt[q] = nd * (qb - qa) * dv;
            for (int64_t j = 0; j < nd; j++, s += (qb - qa) * dv)
                memcpy(s, vpart + (j * H + qa) * dv, (size_t)((qb - qa) * dv) * 4);
        }
        crc = dsacp_comm_reduce_scatter_wire(cp->comm, sendv, mine, cnt, bf16, DSACP_PHASE_attn_merge);
        if (!crc)
            for (int64_t j = 0; j < nd; j++)
                memcpy(a->vcat + (j * H + h0) * dv, mine + j * Hs * dv, (size_t)(Hs * dv) * 4);
        free(cnt), dsacp_free(sendv), dsacp_free(mine);
        if (crc) goto done;
    }
selected_sets:
    /* 7. The selected sets, only when asked: every rank's owned winners to rank 0. */
    if (st->want_topk) {
        size_t *gb = calloc((size_t)W, sizeof *gb);
        int64_t *gn = malloc((size_t)(W * n1) * sizeof *gn), mycnt = 0;
        int32_t *gs = malloc((size_t)(n1 * K) * 4), *ga = NULL;
        crc = dsacp_cp_agree_alloc(cp, "topk", gb && gn && gs, "the selected sets");
        if (!crc) {
            for (int64_t j = 0; j < nd; j++) memcpy(gs + mycnt, own + j * K, (size_t)nown[j] * 4), mycnt += nown[j];
            crc = dsacp_comm_allgather(cp->comm, nown, (size_t)nd * sizeof *nown, gn, DSACP_PHASE_topk_dump);
        }
        int64_t all = 0;
        if (!crc) {
            for (int64_t q = 0; q < W; q++) {
                for (int64_t j = 0; j < nd; j++) gb[q] += (size_t)gn[q * nd + j] * 4;
                all += (int64_t)gb[q] / 4;
            }
            ga = malloc((size_t)all * 4 + 4);
            crc = dsacp_cp_agree_alloc(cp, "topk", ga != NULL, "the selected sets");
        }
        if (!crc) crc = dsacp_comm_gatherv(cp->comm, gs, (size_t)mycnt * 4, ga, gb, DSACP_PHASE_topk_dump);
        if (!crc && me == 0) {
            int64_t *fill = calloc((size_t)n1, sizeof *fill);
            const int32_t *r = ga;
            for (int64_t q = 0; q < W && fill; q++)
                for (int64_t j = 0; j < nd; j++)
                    for (int64_t i = 0; i < gn[q * nd + j]; i++) a->topk[j * K + fill[j]++] = *r++;
            for (int64_t j = 0; j < nd && fill; j++) {
                qsort(a->topk + j * K, (size_t)fill[j], 4, cmp_i32);
                for (int64_t i = fill[j]; i < K; i++) a->topk[j * K + i] = -1;
            }
            if (!fill) *a->rc = dsacp_error(DSACP_ENOMEM, "out of memory for the selected sets");
            free(fill);
        }
        free(gb), free(gn), free(gs), free(ga);
        if (crc) goto done;
    }
done:
    free(scores), free(lsel), free(list), free(lcount), free(m), free(trunc), free(mode), free(rb), free(own), free(nown);
    dsacp_free(qall), dsacp_free(kv), free(work), dsacp_free(o), free(lse), free(lse_all), dsacp_free(vpart);
    dsacp_free(qpack), free(sendsc), free(recvsc), free(fb_send), free(fb_recv), free(merge);
    free(vkeys), free((void *)vkq), free(voff), free(vbase);
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
    KEEP(*rc, dsacp_linear(o, vcat, nd, H * dv, out, D, false));
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
    const int64_t L = f->cfg->num_hidden_layers, K = f->cfg->index_topk, H = f->cfg->num_attention_heads;
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
    .merges_output = merges_output,
    .o_proj = o_proj,
    .wire_bytes = wire_bytes,
    .shared_len = shared_len,
    .shared = shared,
    .comm = comm,
    .token_bytes = token_bytes,
    .report = report,
};
