/*
 * dsa_reference.c -- the single-process DSA layer, top to bottom (docs/dsa-math.md section 3):
 * what one process computes for a step's rows, and what the context-parallel layer runs at W = 1
 * (src/cp/cp_layer.c: the first strategy, no communicator). The phases are dsa_layer.c's; this
 * file only orders them:
 *
 *   1. projections: kv_a, latent RMSNorm, k_pe RoPE, indexer key; then q_a, q_b (every head),
 *      indexer queries and head weights
 *   2. cache writes: every row's latent entry and indexer key at its slot, before any row attends
 *      (a prefill chunk sees its own earlier tokens)
 *   3. per row: index scores over positions 0..p, top-k, gather, absorbed sparse MLA, W_UV
 *   4. o_proj
 */
#include "attn/dsa_layer.h"

#include <stdlib.h>
#include <string.h>

void dsacp_dsa_layer_need(size_t *total, const dsacp_config *cfg, const dsacp_dsa_weights *w, int64_t nw, int64_t n,
                          int64_t max_ctx, bool deployed)
{
    const int64_t n1 = n > 0 ? n : 1;
    dsacp_dsa_proj_need(total, cfg, n);
    dsacp_arena_need(total, n1, cfg->num_attention_heads * cfg->v_head_dim, sizeof(float));
    dsacp_arena_need(total, n1, 1, sizeof(dsacp_dsa_view));
    dsacp_arena_need(total, n1, 1, sizeof(const dsacp_dsa_view *));
    /* Then, given back after each: a linear's scratch, or the attention's. */
    size_t phase = 0;
    dsacp_dsa_attend_need(&phase, cfg, n, cfg->num_attention_heads, max_ctx, deployed);
    for (int64_t l = 0; l < nw; l++) phase = dsacp_arena_max(phase, dsacp_dsa_linear_need(&w[l], n, deployed));
    if (*total == SIZE_MAX || phase == SIZE_MAX || !dsacp_add_ok(*total, phase, total)) *total = SIZE_MAX;
}

int dsacp_dsa_layer(const dsacp_dsa_ctx *ctx, const dsacp_dsa_weights *w, const dsacp_weight *q_b, int64_t layer,
                    dsacp_kv_cache *lat, dsacp_kv_cache *idx, const dsacp_dsa_rows *rows, const float *x, float *out,
                    int32_t *topk, dsacp_dsa_times *times, dsacp_arena *ws)
{
    const dsacp_config *cfg = ctx->cfg;
    const int64_t n = rows->n, n1 = n > 0 ? n : 1, H = cfg->num_attention_heads, dv = cfg->v_head_dim, D = cfg->hidden_size;
    const int64_t dc = cfg->kv_lora_rank, dk = dc + cfg->qk_rope_head_dim, di = cfg->index_head_dim;
    const size_t mark = dsacp_arena_mark(ws);
    dsacp_dsa_ctx lc = *ctx; /* the phases take their scratch from ws */
    lc.ws = ws;
    ctx = &lc;
    dsacp_dsa_proj p;
    int rc = dsacp_dsa_proj_take(&p, cfg, n, ws);
    float *vcat = rc ? NULL : dsacp_arena_take(ws, n1, H * dv, sizeof *vcat, "the heads' values");
    dsacp_dsa_view *view = vcat ? dsacp_arena_take(ws, n1, 1, sizeof *view, "the rows' views") : NULL;
    const dsacp_dsa_view **vptr = view ? dsacp_arena_take(ws, n1, 1, sizeof *vptr, "the rows' views") : NULL;
    if (!vptr) rc = DSACP_ENOMEM;
    if (!rc) memset(vcat, 0, (size_t)(n1 * H * dv) * sizeof *vcat);
    /* 1. projections */
    double t0 = dsacp_now();
    if (!rc) rc = dsacp_dsa_project_kv(ctx, w, x, n, rows->pos, &p, 0);
    if (!rc) rc = dsacp_dsa_project_q(ctx, w, q_b, x, n, rows->pos, 0, H, &p, 0);
    double t1 = dsacp_now();
    /* 2. cache writes */
    for (int64_t t = 0; t < n && !rc; t++) {
        const int64_t pp = rows->pos[t];
        dsacp_kv_write_mla(lat, layer, dsacp_kv_slot(lat, rows->lat_seq[t], pp), p.kv + t * dk, p.kv + t * dk + dc);
        dsacp_kv_write_index(idx, layer, dsacp_kv_slot(idx, rows->idx_seq[t], pp), p.ki + t * di);
        view[t] = (dsacp_dsa_view){lat, idx, layer, layer, rows->lat_seq[t], rows->idx_seq[t]};
        vptr[t] = &view[t];
    }
    /* 3. index scores, top-k, sparse MLA, W_UV */
    if (!rc) rc = dsacp_dsa_attend_views(ctx, w, &p, 0, n, rows->pos, vptr, 0, H, vcat, topk, layer);
    double t2 = dsacp_now();
    /* 4. o_proj */
    if (!rc) rc = dsacp_dsa_linear(ctx, w->o, vcat, n, H * dv, out, D, ctx->mode == DSACP_MODE_DEPLOYED);
    if (times) times->proj += t1 - t0, times->attn += t2 - t1, times->oproj += dsacp_now() - t2;
    dsacp_arena_rewind(ws, mark);
    return rc;
}

int dsacp_dsa_forward(const dsacp_dsa_ctx *ctx, const dsacp_dsa_weights *w, int64_t layer,
                      const dsacp_step_tokens *tok, const float *x, float *out, int32_t *topk)
{
    if (tok->T == 0) return DSACP_OK;
    dsacp_kv_seq **seq = malloc((size_t)(tok->T > 0 ? tok->T : 1) * sizeof *seq);
    if (!seq) return dsacp_error(DSACP_ENOMEM, "out of memory for %lld rows", (long long)tok->T);
    for (int64_t t = 0; t < tok->T; t++) seq[t] = tok->seqs[tok->seq[t]];
    const dsacp_dsa_rows rows = {tok->T, tok->pos, seq, seq};
    int64_t max_ctx = 1;
    for (int64_t t = 0; t < tok->T; t++)
        if (tok->pos[t] + 1 > max_ctx) max_ctx = tok->pos[t] + 1;
    size_t need = 0;
    dsacp_dsa_layer_need(&need, ctx->cfg, w, 1, tok->T, max_ctx, ctx->mode == DSACP_MODE_DEPLOYED);
    dsacp_arena ws;
    int rc = dsacp_arena_create(&ws, need, "the layer's workspace");
    if (!rc) rc = dsacp_dsa_layer(ctx, w, NULL, layer, ctx->cache, ctx->cache, &rows, x, out, topk, NULL, &ws);
    dsacp_arena_destroy(&ws);
    free(seq);
    return rc;
}
