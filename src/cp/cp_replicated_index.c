/*
 * cp_replicated_index.c -- decode strategy "replicated-index" (vllm-ascend since mid-2026,
 * SGLang): the indexer key cache is replicated, so every rank scores all positions and takes
 * the full top-k itself -- no candidate exchange -- then attends over the winners it owns in
 * its latent shard; the partials are LSE-merged (cp_merge.c: query gather + merge).
 */
#include "cp/cp_strategy.h"


/* The buffers of n1 decode rows at contexts up to maxn (one list sizes and takes them). */
typedef struct ri_bufs {
    float *scores;
    int32_t *sel;
    int64_t *nsel;
    uint8_t *qpack, *topk_work;
} ri_bufs;

static int ri_list(const dsacp_cp_ctx *cp, int64_t n1, int64_t maxn, ri_bufs *r, dsacp_cp_buf *b)
{
    const dsacp_config *cfg = cp->cfg;
    int n = 0;
    b[n++] = DSACP_CP_BUF(r->scores, maxn, 1);
    b[n++] = DSACP_CP_BUF(r->sel, n1, cfg->index_topk);
    b[n++] = DSACP_CP_BUF(r->nsel, n1, 1);
    b[n++] = DSACP_CP_BUF(r->qpack, 1, (int64_t)dsacp_index_query_bytes(cfg->index_n_heads, cfg->index_head_dim));
    b[n++] = DSACP_CP_BUF(r->topk_work, 1, (int64_t)dsacp_topk_ws_bytes(maxn));
    return n;
}

static void ws_need(size_t *total, const dsacp_cp_ctx *cp, int64_t n_dec)
{
    ri_bufs r;
    dsacp_cp_buf b[5];
    dsacp_cp_bufs_need(total, b, ri_list(cp, n_dec > 0 ? n_dec : 1, cp->max_context + 1, &r, b));
    dsacp_cp_merge_need(total, cp, n_dec);
}

static int decode(const dsacp_cp_decode_args *a)
{
    const dsacp_cp_step *st = a->st;
    const int64_t nd = st->n_dec, K = a->ctx->cfg->index_topk;
    const int64_t maxn = dsacp_cp_decode_maxn(a);
    ri_bufs r;
    dsacp_cp_buf b[5];
    const size_t mark = dsacp_arena_mark(a->cp->ws);
    const int n = ri_list(a->cp, nd > 0 ? nd : 1, maxn, &r, b);
    int crc = dsacp_cp_bufs_agree(a->cp, "strategy", b, n, "the replicated-index scores");
    if (!crc) {
        for (int64_t j = 0; j < nd; j++) { /* the whole index is this rank's shard */
            r.nsel[j] = dsacp_cp_shard_topk(a, j, r.qpack, r.scores, r.sel + j * K, r.topk_work);
            for (int64_t i = 0; i < K; i++) a->topk[j * K + i] = i < r.nsel[j] ? r.sel[j * K + i] : -1;
        }
        crc = dsacp_cp_attend_owned_and_merge(a, r.sel, r.nsel, NULL);
    }
    dsacp_arena_rewind(a->cp->ws, mark);
    return crc;
}

static int check(const dsacp_cp_options *cp, int W, int64_t block_size, bool dcp_decode)
{
    if (W > 1 && dcp_decode && cp->index_layout != DSACP_LAYOUT_REPLICATED)
        return dsacp_error(DSACP_EINVAL, "decode strategy replicated-index needs index_layout replicated "
                           "(every rank scores every position)");
    return DSACP_OK;
}

/* No candidates: the query gather and the merge only. */
static void comm(const dsacp_cp_formula *f, const int64_t *sh, dsacp_comm_counter out[DSACP_PHASE_COUNT])
{
    dsacp_cp_formula_merge(f, out);
}

static double token_bytes(const dsacp_cp_formula *f, double gather_bytes, double oproj_bytes)
{
    return dsacp_cp_merge_token_bytes(f, 0, oproj_bytes);
}

const dsacp_cp_strategy dsacp_cp_strategy_replicated_index = {
    .name = "replicated-index",
    .summary = "replicated index cache: every rank takes the whole top-k, attends its winners, LSE merge",
    .replicated_index = true,
    .check = check,
    .decode = decode,
    .ws_need = ws_need,
    .comm = comm,
    .token_bytes = token_bytes,
};
