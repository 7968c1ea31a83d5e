/*
 * cp_allgather_kv.c -- decode strategy "allgather-kv", the second seed's stop-gap (vllm-ascend
 * PR #6563, gather_kv_cross_cp), for any interleave.
 *
 * Moves (phase kv_gather, per layer): every rank's sharded cache entries of the step's decode
 * requests' earlier context, as raw entries (latent mla_bytes and/or indexer index_bytes each):
 *   recv = sum over the other ranks q of local_len(old_len, q) x entry bytes, per request.
 * Then each rank holds a transient full copy, scores all positions, takes the top-k itself
 * (identical everywhere: same bytes, same kernels) and attends with its own heads [h0, h1).
 * The seed moves whole blocks plus block tables; dsacp moves the entries only (at most one
 * block per request per rank less) and rebuilds the positions from the ownership formula.
 */
#include "cp/cp_strategy.h"


static int decode(const dsacp_cp_decode_args *a)
{
    const dsacp_cp_step *st = a->st;
    const int64_t nd = st->n_dec;
    const size_t mark = dsacp_arena_mark(a->cp->ws);
    uint8_t *want = dsacp_arena_take(a->cp->ws, st->n_ent > 0 ? st->n_ent : 1, 1, 1, "the allgather-kv views");
    const dsacp_dsa_view **vptr = want ? dsacp_arena_take(a->cp->ws, nd + 1, 1, sizeof *vptr, "the allgather-kv views") : NULL;
    int crc = dsacp_cp_agree_alloc(a->cp, "strategy", want && vptr, "the allgather-kv views");
    if (crc) {
        dsacp_arena_rewind(a->cp->ws, mark);
        return crc;
    }
    for (int64_t e = 0; e < st->n_ent; e++) want[e] = st->decode[e];
    dsacp_cp_views v;
    crc = dsacp_cp_views_build(a->cp, st, a->layer, want, a->stage, NULL, DSACP_PHASE_kv_gather, &v, a->rc);
    if (!crc && !*a->rc) {
        const int64_t K = a->ctx->cfg->index_topk;
        for (int64_t j = 0; j < nd; j++) {
            vptr[j] = &v.view[st->ent[st->act[j]]];
            const int64_t n = a->pos_act[j] + 1;
            a->cp->stats.decode_tokens++;
            a->cp->stats.keys_scored += n;
            a->cp->stats.keys_attended += n < K ? n : K;
        }
        int rc = dsacp_dsa_attend_views(a->ctx, a->w, a->proj, 0, nd, a->pos_act, vptr, a->cp->h0, a->cp->h1,
                                        a->vcat, a->topk, a->layer);
        if (rc) *a->rc = rc;
    }
    dsacp_arena_rewind(a->cp->ws, mark);
    return crc;
}

/* The decode's lists (want, vptr) and the views' (dsacp_cp_views_need). */
static void ws_need(size_t *total, const dsacp_cp_ctx *cp, int64_t n_dec)
{
    dsacp_arena_need(total, n_dec > 0 ? n_dec : 1, 1, 1);
    dsacp_arena_need(total, n_dec + 1, 1, sizeof(const dsacp_dsa_view *));
    dsacp_cp_views_need(total, cp, n_dec);
}

/* Shared counts: [q] the decode requests' cached positions rank q holds, [W] their sum. */
static int64_t shared_len(const dsacp_cp_formula *f) { return f->W + 1; }

static void shared(const dsacp_cp_formula *f, int64_t *sh)
{
    const int64_t W = f->W, I = f->opt->interleave;
    for (int64_t r = 0; r < f->nreq;) { /* requests of equal length together */
        int64_t k = r + 1;
        while (k < f->nreq && f->req_old[k] == f->req_old[r]) k++;
        for (int64_t q = 0; q < W; q++) sh[q] += (k - r) * dsacp_cp_local_len(f->req_old[r], q, I, W);
        sh[W] += (k - r) * f->req_old[r];
        r = k;
    }
}

/* Per layer, when a cache is sharded: the views' agreement (control) and one all-gather of the
 * entries every rank holds (phase kv_gather). */
static void comm(const dsacp_cp_formula *f, const int64_t *sh, dsacp_comm_counter out[DSACP_PHASE_COUNT])
{
    const int64_t W = f->W, L = dsacp_cp_formula_layers(f), Esh = dsacp_cp_formula_sharded_entry(f);
    if (!Esh) return;
    dsacp_cp_count(&out[DSACP_PHASE_control], L, L * 4 * (W - 1), L * 4 * (W - 1));
    const int64_t mine = sh[f->me] * Esh, oth = (sh[W] - sh[f->me]) * Esh;
    dsacp_cp_count(&out[DSACP_PHASE_kv_gather], L, L * mine * (W - 1), L * oth);
}

const dsacp_cp_strategy dsacp_cp_strategy_allgather_kv = {
    .name = "allgather-kv",
    .summary = "every layer all-gathers the decode requests' sharded cache entries; single-process kernels on the copy",
    .gathers_context = true,
    .decode = decode,
    .ws_need = ws_need,
    .shared_len = shared_len,
    .shared = shared,
    .comm = comm,
};
