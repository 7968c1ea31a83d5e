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

int dsacp_dsa_layer(const dsacp_dsa_ctx *ctx, const dsacp_dsa_weights *w, const dsacp_weight *q_b, int64_t layer,
                    dsacp_kv_cache *lat, dsacp_kv_cache *idx, const dsacp_dsa_rows *rows, const float *x, float *out,
                    int32_t *topk, dsacp_dsa_times *times)
{
    const dsacp_config *cfg = ctx->cfg;
    const int64_t n = rows->n, H = cfg->num_attention_heads, dv = cfg->v_head_dim, D = cfg->hidden_size;
    const int64_t dc = cfg->kv_lora_rank, dk = dc + cfg->qk_rope_head_dim, di = cfg->index_head_dim;
    dsacp_dsa_proj p;
    float *vcat = dsacp_calloc((size_t)(n > 0 ? n : 1) * (size_t)(H * dv), sizeof *vcat);
    dsacp_dsa_view *view = malloc((size_t)(n > 0 ? n : 1) * sizeof *view);
    const dsacp_dsa_view **vptr = malloc((size_t)(n > 0 ? n : 1) * sizeof *vptr);
    int rc = dsacp_dsa_proj_alloc(&p, cfg, n);
    if (!rc && (!vcat || !view || !vptr))
        rc = dsacp_error(DSACP_ENOMEM, "layer %lld: out of memory for %lld rows", (long long)layer, (long long)n);
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
    if (!rc) rc = dsacp_linear(w->o, vcat, n, H * dv, out, D, ctx->mode == DSACP_MODE_DEPLOYED);
    if (times) times->proj += t1 - t0, times->attn += t2 - t1, times->oproj += dsacp_now() - t2;
    dsacp_dsa_proj_free(&p);
    dsacp_free(vcat);
    free(view), free((void *)vptr);
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
    int rc = dsacp_dsa_layer(ctx, w, NULL, layer, ctx->cache, ctx->cache, &rows, x, out, topk, NULL);
    free(seq);
    return rc;
}
