/*
 * cp_exact_topk.c -- decode strategy "exact-topk" (vLLM #46076/#46514, ROCm ATOM #1832):
 * every rank scores only its shard of the indexer keys, takes a local top-k (k slots, padded
 * with (-inf, -1)), the candidates (score, global position) are all-gathered (phase
 * index_candidates: recv = (W - 1) x k x 8 bytes per decode token) and merged into the exact
 * global top-k: a global winner has fewer than k better positions anywhere, so it is in its
 * owner's local top-k; ties go to the lower position, as on one process. Then attention over
 * the owned winners and the LSE merge (cp_merge.c). With --index-layout partial:G the G ranks
 * of a group hold (and score) the same keys, so the candidates travel between the W / G groups
 * only (cp->icomm: recv = (W / G - 1) x k x 8 bytes).
 */
#include "cp/cp_strategy.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct candidate {
    float score;
    int32_t pos; /* -1: padding */
} candidate;

/* The buffers of n1 decode rows at contexts up to maxn (one list sizes and takes them). */
typedef struct xt_bufs {
    float *scores, *qown;
    int32_t *lsel, *sel;
    int64_t *nsel;
    candidate *mine, *all;
    uint64_t *keys;
    uint8_t *qpack, *topk_work;
    size_t *rbq;
} xt_bufs;

static int xt_list(const dsacp_cp_ctx *cp, int64_t n1, int64_t maxn, xt_bufs *x, dsacp_cp_buf *b)
{
    const dsacp_config *cfg = cp->cfg;
    const int64_t K = cfg->index_topk, iW = cp->iW, Hs = cp->h1 - cp->h0, dk = cfg->kv_lora_rank + cfg->qk_rope_head_dim;
    int n = 0;
    b[n++] = DSACP_CP_BUF(x->scores, maxn, 1);
    b[n++] = DSACP_CP_BUF(x->lsel, K, 1);
    b[n++] = DSACP_CP_BUF(x->sel, n1, K);
    b[n++] = DSACP_CP_BUF(x->nsel, n1, 1);
    b[n++] = DSACP_CP_BUF(x->mine, n1, K);
    b[n++] = DSACP_CP_BUF(x->all, n1 * iW, K);
    b[n++] = DSACP_CP_BUF(x->keys, iW, K);
    b[n++] = DSACP_CP_BUF(x->qpack, 1, (int64_t)dsacp_index_query_bytes(cfg->index_n_heads, cfg->index_head_dim));
    b[n++] = DSACP_CP_BUF(x->topk_work, 1, (int64_t)dsacp_topk_ws_bytes(maxn));
    b[n++] = DSACP_CP_BUF(x->qown, n1 * (Hs > 0 ? Hs : 1), dk);
    b[n++] = DSACP_CP_BUF(x->rbq, iW, 1);
    return n;
}

static void ws_need(size_t *total, const dsacp_cp_ctx *cp, int64_t n_dec)
{
    xt_bufs x;
    dsacp_cp_buf b[11];
    dsacp_cp_bufs_need(total, b, xt_list(cp, n_dec > 0 ? n_dec : 1, cp->max_context + 1, &x, b));
    dsacp_cp_merge_need(total, cp, n_dec);
}

static int decode(const dsacp_cp_decode_args *a)
{
    dsacp_cp_ctx *cp = a->cp;
    const dsacp_cp_step *st = a->st;
    const dsacp_config *cfg = a->ctx->cfg;
    const int64_t nd = st->n_dec, K = cfg->index_topk;
    const int64_t iW = cp->iW, ir = cp->ir, iI = cp->iI;
    const bool sharded = iW > 1;
    const int64_t maxn = dsacp_cp_decode_maxn(a);
    const size_t nc = (size_t)((nd > 0 ? nd : 1) * K);
    xt_bufs x;
    dsacp_cp_buf b[11];
    const size_t mark = dsacp_arena_mark(cp->ws);
    const int nb = xt_list(cp, nd > 0 ? nd : 1, maxn, &x, b);
    /* Agreed before the first collective: a rank short of memory stops every rank here. */
    int crc = dsacp_cp_bufs_agree(cp, "strategy", b, nb, "the top-k candidates");
    if (crc) goto done;
    float *scores = x.scores, *qown = x.qown;
    int32_t *lsel = x.lsel, *sel = x.sel;
    int64_t *nsel = x.nsel;
    candidate *mine = x.mine, *all = x.all;
    uint64_t *keys = x.keys;
    size_t *rbq = x.rbq;
    /* Local scores and local top-k over this rank's shard. */
    for (int64_t j = 0; j < nd; j++) {
        const int64_t k = dsacp_cp_shard_topk(a, j, x.qpack, scores, lsel, x.topk_work);
        for (int64_t i = 0; i < K; i++) {
            candidate *c = &mine[j * K + i];
            if (i < k) {
                c->score = scores[lsel[i]];
                c->pos = (int32_t)(sharded ? dsacp_cp_global_pos(lsel[i], ir, iI, iW) : lsel[i]);
            } else {
                c->score = -INFINITY;
                c->pos = -1;
            }
        }
    }
    /* The candidates travel (non-blocking) while the query rows of this rank's heads are absorbed. */
    {
        dsacp_comm_request *req = NULL;
        for (int64_t q = 0; q < iW; q++) rbq[q] = nc * sizeof *mine;
        crc = dsacp_comm_iallgatherv(cp->icomm, mine, nc * sizeof *mine, all, rbq, DSACP_PHASE_index_candidates, &req);
        if (crc) goto done;
        const double t0 = dsacp_now();
        dsacp_cp_own_query_rows(a, qown);
        const double t1 = dsacp_now();
        cp->ovl_compute += t1 - t0;
        crc = dsacp_comm_wait(req);
        cp->ovl_wait += dsacp_now() - t1;
        if (crc) goto done;
    }
    /* Exact merge, the same on every rank. */
    for (int64_t j = 0; j < nd; j++) {
        int64_t m = 0;
        for (int64_t q = 0; q < iW; q++)
            for (int64_t i = 0; i < K; i++) {
                const candidate *c = &all[(q * nd + j) * K + i];
                if (c->pos >= 0) keys[m++] = dsacp_cp_cand_key(c->score, c->pos);
            }
        qsort(keys, (size_t)m, sizeof *keys, dsacp_cp_cmp_key_desc);
        nsel[j] = m < K ? m : K;
        int32_t *s = sel + j * K;
        for (int64_t i = 0; i < nsel[j]; i++) s[i] = dsacp_cp_cand_pos(keys[i]);
        qsort(s, (size_t)nsel[j], sizeof *s, dsacp_cmp_i32);
        for (int64_t i = 0; i < K; i++) a->topk[j * K + i] = i < nsel[j] ? s[i] : -1;
    }
    crc = dsacp_cp_attend_owned_and_merge(a, sel, nsel, qown);
done:
    dsacp_arena_rewind(cp->ws, mark);
    return crc;
}

static int check(const dsacp_cp_options *cp, int W, int64_t block_size, bool dcp_decode)
{
    if (W > 1 && dcp_decode && cp->index_layout == DSACP_LAYOUT_REPLICATED)
        return dsacp_error(DSACP_EINVAL, "decode strategy exact-topk scores each rank's shard of the indexer "
                           "cache: it needs index_layout sharded or partial:G (replicated-index uses a replicated one)");
    return DSACP_OK;
}

/* k (score, position) candidates per token between the index groups, then the query gather and
 * the merge. */
static void comm(const dsacp_cp_formula *f, const int64_t *sh, dsacp_comm_counter out[DSACP_PHASE_COUNT])
{
    const int64_t L = dsacp_cp_formula_layers(f), K = f->cfg->index_topk, iW = f->iW, nd = f->nd;
    if (iW > 1) dsacp_cp_count(&out[DSACP_PHASE_index_candidates], L, L * nd * K * 8 * (iW - 1), L * nd * K * 8 * (iW - 1));
    dsacp_cp_formula_merge(f, out);
}

static double token_bytes(const dsacp_cp_formula *f, double gather_bytes, double oproj_bytes)
{
    return dsacp_cp_merge_token_bytes(f, ((double)f->iW - 1) * (double)f->cfg->index_topk * 8, oproj_bytes);
}

const dsacp_cp_strategy dsacp_cp_strategy_exact_topk = {
    .name = "exact-topk",
    .summary = "local top-k, (score, position) candidates all-gathered and merged exactly, attention over owned winners, LSE merge",
    .overlaps_candidates = true,
    .check = check,
    .decode = decode,
    .ws_need = ws_need,
    .comm = comm,
    .token_bytes = token_bytes,
};
