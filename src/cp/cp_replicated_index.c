/*
 * cp_replicated_index.c -- decode strategy "replicated-index" (vllm-ascend since mid-2026,
 * SGLang): the indexer key cache is replicated, so every rank scores all positions and takes
 * the full top-k itself -- no candidate exchange -- then attends over the winners it owns in
 * its latent shard; the partials are LSE-merged (cp_merge.c: query gather + merge).
 */
#include "cp/cp_strategy.h"

#include <stdlib.h>

static int decode(const dsacp_cp_decode_args *a)
{
    const dsacp_cp_step *st = a->st;
    const dsacp_config *cfg = a->ctx->cfg;
    const int64_t nd = st->n_dec, K = cfg->index_topk, Hi = cfg->index_n_heads, di = cfg->index_head_dim;
    int64_t maxn = 1;
    for (int64_t j = 0; j < nd; j++)
        if (a->pos_act[j] + 1 > maxn) maxn = a->pos_act[j] + 1;
    float *scores = malloc((size_t)maxn * 4);
    int32_t *sel = malloc((size_t)((nd > 0 ? nd : 1) * K) * 4);
    int64_t *nsel = malloc((size_t)(nd > 0 ? nd : 1) * sizeof *nsel);
    void *qpack = dsacp_alloc((dsacp_index_query_bytes(Hi, di) + 63) / 64 * 64);
    int arc = dsacp_cp_agree_alloc(a->cp, "strategy", scores && sel && nsel && qpack, "the replicated-index scores");
    if (arc) {
        free(scores), free(sel), free(nsel), dsacp_free(qpack);
        return arc;
    }
    for (int64_t j = 0; j < nd; j++) { /* the whole index is this rank's shard */
        nsel[j] = dsacp_cp_shard_topk(a, j, qpack, scores, sel + j * K);
        for (int64_t i = 0; i < K; i++) a->topk[j * K + i] = i < nsel[j] ? sel[j * K + i] : -1;
    }
    int crc = dsacp_cp_attend_owned_and_merge(a, sel, nsel, NULL);
    free(scores), free(sel), free(nsel), dsacp_free(qpack);
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
    .comm = comm,
    .token_bytes = token_bytes,
};
