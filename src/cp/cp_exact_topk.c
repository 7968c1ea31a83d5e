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

static int decode(const dsacp_cp_decode_args *a)
{
    dsacp_cp_ctx *cp = a->cp;
    const dsacp_cp_step *st = a->st;
    const dsacp_config *cfg = a->ctx->cfg;
    const int64_t nd = st->n_dec, K = cfg->index_topk, Hi = cfg->index_n_heads, di = cfg->index_head_dim;
    const int64_t iW = cp->iW, ir = cp->ir, iI = cp->iI;
    const bool sharded = iW > 1;
    int64_t maxn = 1;
    for (int64_t j = 0; j < nd; j++)
        if (a->pos_act[j] + 1 > maxn) maxn = a->pos_act[j] + 1;
    const size_t nc = (size_t)((nd > 0 ? nd : 1) * K);
    float *scores = malloc((size_t)maxn * 4);
    int32_t *lsel = malloc((size_t)K * 4), *sel = malloc(nc * 4);
    int64_t *nsel = malloc((size_t)(nd > 0 ? nd : 1) * sizeof *nsel);
    candidate *mine = malloc(nc * sizeof *mine), *all = malloc(nc * (size_t)iW * sizeof *all);
    uint64_t *keys = malloc((size_t)(iW * K) * sizeof *keys);
    void *qpack = dsacp_alloc((dsacp_index_query_bytes(Hi, di) + 63) / 64 * 64);
    const int64_t Hs = cp->h1 - cp->h0, dk = cfg->kv_lora_rank + cfg->qk_rope_head_dim;
    float *qown = dsacp_alloc((size_t)((nd > 0 ? nd : 1) * (Hs > 0 ? Hs : 1) * dk) * 4);
    size_t *rbq = malloc((size_t)iW * sizeof *rbq);
    /* Agreed before the first collective: a rank short of memory stops every rank here. */
    int crc = dsacp_cp_agree_alloc(cp, "strategy", scores && lsel && sel && nsel && mine && all && keys && qpack && qown && rbq,
                                   "the top-k candidates");
    if (crc) goto done;
    /* Local scores and local top-k over this rank's shard. */
    for (int64_t j = 0; j < nd; j++) {
        const int64_t k = dsacp_cp_shard_topk(a, j, qpack, scores, lsel);
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
    free(scores), free(lsel), free(sel), free(nsel), free(mine), free(all), free(keys), free(rbq);
    dsacp_free(qpack);
    dsacp_free(qown);
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
    const int64_t L = f->cfg->num_hidden_layers, K = f->cfg->index_topk, iW = f->iW, nd = f->nd;
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
    .comm = comm,
    .token_bytes = token_bytes,
};
