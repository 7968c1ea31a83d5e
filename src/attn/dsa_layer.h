/*
 * attn -- one DeepSeek Sparse Attention layer (docs/dsa-math.md section 3) over the paged caches:
 * projections, lightning indexer, top-k, absorbed sparse MLA, o_proj: the phases (dsa_layer.c),
 * composed top to bottom by the single-process layer (dsa_reference.c) and over a CP group by
 * src/cp/cp_layer.c. Calls core, numerics, kernels, cache and the model's weight views.
 */
#ifndef DSACP_DSA_LAYER_H
#define DSACP_DSA_LAYER_H

#include "cache/kv_cache.h"
#include "kernels/kernels.h"
#include "numerics/numerics.h"

typedef enum dsacp_numerics_mode { DSACP_MODE_EXACT = 0, DSACP_MODE_DEPLOYED = 1 } dsacp_numerics_mode;

/* One layer's weights, resolved once: projections as stored, small vectors as F32 copies, and
 * kv_b_proj dequantized for the absorbed form (W_UK, W_UV). */
typedef struct dsacp_dsa_weights {
    const dsacp_weight *q_a, *q_b, *kv_a, *kv_b, *o, *wq_b, *wk, *wproj;
    float *q_a_norm, *kv_a_norm, *k_norm_w, *k_norm_b; /* F32 [q_lora], [dc], [di], [di] */
    /* F32 [H][nope + v][dc]: rows 0..nope-1 are W_UK[h], the next v are W_UV[h]. Input of
     * dsacp_dsa_weights_absorb, which frees it (NULL) unless W_UV ends up viewing it. */
    float *kv_b_f32;
    /* The absorbed form read in the stored dtype (dsacp_dsa_weights_absorb; NULL: the layer reads
     * kv_b_f32 instead): per head, W_UK[h]^T [dc][nope] (a transposed copy: F8_E4M3 with the
     * transposed block scales when the 128-blocks align, BF16/F16 as stored, else F32) and W_UV[h]
     * [v][dc] (a view of kv_b_proj, or of kv_b_f32). Both run through dsacp_linear, so a token's
     * q_abs and v rows are batch-invariant and read 1 (fp8) or 2 bytes per weight, not 4. */
    dsacp_weight *wuk_t, *wuv; /* [H] each */
    void *absorb_buf;
} dsacp_dsa_weights;

/* Builds wuk_t / wuv from kv_b (and kv_b_f32, which must be filled), then frees kv_b_f32 when
 * nothing views it; calling it again after that is a no-op. Released by
 * dsacp_dsa_weights_release. */
int dsacp_dsa_weights_absorb(dsacp_dsa_weights *w, const dsacp_config *cfg);

int dsacp_dsa_weights_bind(dsacp_dsa_weights *w, const dsacp_model *m, int64_t layer);
void dsacp_dsa_weights_release(dsacp_dsa_weights *w);

/* The step's tokens, flattened in request order (as vLLM does). */
typedef struct dsacp_step_tokens {
    int64_t T;
    const int64_t *pos;           /* [T] absolute position of each token */
    const int32_t *seq;           /* [T] index into seqs */
    dsacp_kv_seq *const *seqs;    /* block tables, already reserved to cover every token */
} dsacp_step_tokens;

typedef struct dsacp_dsa_ctx {
    const dsacp_config *cfg;
    dsacp_numerics_mode mode;
    const dsacp_rope *rope;
    dsacp_kv_cache *cache;
    /* The step workspace the phases take their scratch from (linears, attention), or NULL: each
     * call then allocates its own (the W > 1 strategies). Not thread-safe: one caller at a time. */
    dsacp_arena *ws;
} dsacp_dsa_ctx;

/* ---- phases (docs/context-parallel.md: the CP layer in src/cp composes them) ---- */

/* Per-token outputs of the projections (steps 1-4a) for a step's tokens on this rank. */
typedef struct dsacp_dsa_proj {
    int64_t T;
    float *qa;  /* F32 [T][q_lora]        qr = RMSNorm(q_a_proj x) */
    float *q;   /* F32 [T][H][nope + dr]  [q_nope | RoPE(q_pe)]; only the heads asked for are filled */
    float *kv;  /* F32 [T][dc + dr]       [RMSNorm(c) | RoPE(k_pe)] */
    float *qi;  /* F32 [T][Hi][di]        indexer queries after RoPE (deployed: Hadamard, e4m3 values) */
    float *ki;  /* F32 [T][di]            indexer keys after LayerNorm + RoPE (deployed: Hadamard) */
    float *wts; /* F32 [T][Hi]            head weights * Hi^-0.5 * di^-0.5 (deployed: * q scale) */
} dsacp_dsa_proj;
/* Its arrays taken from a step workspace (nothing to free; DSACP_ENOMEM when it does not fit),
 * and the bytes they take (dsacp_arena_need). */
int dsacp_dsa_proj_take(dsacp_dsa_proj *p, const dsacp_config *cfg, int64_t T, dsacp_arena *ws);
void dsacp_dsa_proj_need(size_t *total, const dsacp_config *cfg, int64_t T);

/* y = W x (dsacp_linear's shapes) with the kernel's scratch taken from ctx->ws and given back
 * (ctx or ctx->ws NULL: the allocating dsacp_linear); dsacp_dsa_linear_need: the most any of
 * the layer's projections (q_a, q_b, kv_a, wk, wq_b, weights_proj, o_proj) takes for n rows. */
int dsacp_dsa_linear(const dsacp_dsa_ctx *ctx, const dsacp_weight *w, const float *x, int64_t T, int64_t ldx,
                     float *y, int64_t ldy, bool act_quant);
size_t dsacp_dsa_linear_need(const dsacp_dsa_weights *w, int64_t n, bool deployed);

/* Steps 1-4a for n tokens (x: F32 [n][D], already RMS-normed; pos: [n]) into rows
 * [row0, row0 + n) of p, in two halves: the cache entries' inputs (kv, ki: steps 2, 3, 4a's key),
 * and the queries (qa, q of heads [h0, h1) with q_b_proj = q_b, or the layer's own when NULL;
 * qi, wts), so that the entries can travel while the queries are computed. */
int dsacp_dsa_project_kv(const dsacp_dsa_ctx *ctx, const dsacp_dsa_weights *w, const float *x, int64_t n,
                         const int64_t *pos, dsacp_dsa_proj *p, int64_t row0);
int dsacp_dsa_project_q(const dsacp_dsa_ctx *ctx, const dsacp_dsa_weights *w, const dsacp_weight *q_b,
                        const float *x, int64_t n, const int64_t *pos, int64_t h0, int64_t h1, dsacp_dsa_proj *p,
                        int64_t row0);

/* Index scores of one packed query (dsacp_index_query_pack) against positions 0..n-1 of a
 * block table, one kernel call per block; inner: split the blocks over threads. */
void dsacp_dsa_index_scores(const dsacp_kv_cache *c, int64_t layer, const dsacp_kv_seq *seq, int64_t n,
                            const void *qpack, float *scores, bool inner);
/* Absorbed query rows of n tokens (token t: q + t * ldq, F32 [H][nope + dr] -> qrow + t * ldr,
 * F32 [h1 - h0][dc + dr]): each head's W_UK is one many-row linear over the tokens (the blocked
 * GEMM from 8 tokens on), giving every token the bits it gets alone. inner: split the heads over threads. */
void dsacp_dsa_query_rows_n(const dsacp_dsa_weights *w, const dsacp_config *cfg, const float *q, int64_t n,
                            int64_t ldq, int64_t h0, int64_t h1, float *qrow, int64_t ldr, bool inner);
/* v[h] = W_UV[h] o[h] for heads [h0, h1): o: F32 [h1 - h0][dc] -> v: F32 [h1 - h0][dv]. */
void dsacp_dsa_value_rows(const dsacp_dsa_weights *w, const dsacp_config *cfg, const float *o, int64_t h0,
                          int64_t h1, float *v, bool inner);
/* The same for n tokens (token t: o + t * ldo, v + t * ldv), one many-row linear per head. */
void dsacp_dsa_value_rows_n(const dsacp_dsa_weights *w, const dsacp_config *cfg, const float *o, int64_t n,
                            int64_t ldo, int64_t h0, int64_t h1, float *v, int64_t ldv, bool inner);

/* Where every position 0..p of a token's request can be read: the latent rows and the indexer
 * keys, each through a cache layer and a block table in global position order. */
typedef struct dsacp_dsa_view {
    const dsacp_kv_cache *lat, *idx;
    int64_t lat_layer, idx_layer;
    const dsacp_kv_seq *lat_seq, *idx_seq;
} dsacp_dsa_view;

/* Steps 5-6 on full views (the single-process attention): for rows [row0, row0 + n) of p, token
 * j at position pos[j] scores positions 0..pos[j] of views[j], takes the top-k and attends with
 * heads [h0, h1), writing vcat F32 [n][H][dv] (those heads' columns) and topk I32 [n][index_topk]
 * (ascending, -1 padded; NULL: not wanted). With no heads (h1 <= h0) only the selected sets are
 * computed (a rank that owns no head still reports the true sets). */
int dsacp_dsa_attend_views(const dsacp_dsa_ctx *ctx, const dsacp_dsa_weights *w, const dsacp_dsa_proj *p,
                           int64_t row0, int64_t n, const int64_t *pos, const dsacp_dsa_view *const *views,
                           int64_t h0, int64_t h1, float *vcat, int32_t *topk, int64_t layer);
/* Tokens per chunk of dsacp_dsa_attend_views: W_UK and W_UV run as many-row linears over a
 * chunk (each head's weights read once per chunk instead of once per token); the chunk's query
 * rows and outputs take CH x heads x (2 dc + dr) floats (35 MB at V3.2's 128 heads). */
enum { DSACP_DSA_ATTEND_CHUNK = 64 };
/* What dsacp_dsa_attend_views takes from ctx->ws (and gives back) for n rows attended by
 * `heads` heads at positions below max_ctx, added to *total: the chunk's query rows and
 * outputs, and per token thread the index scores, top-k, gathered rows and sparse MLA scratch
 * (the kernels' _ws_bytes; deployed: the bf16-dot twin's, which ctx->mode DSACP_MODE_DEPLOYED
 * runs, else the f32 kernel's). */
void dsacp_dsa_attend_need(size_t *total, const dsacp_config *cfg, int64_t n, int64_t heads, int64_t max_ctx,
                           bool deployed);

/* The single-process layer (dsa_reference.c), top to bottom: out[t] = attention(x[t]) for n
 * rows (x: F32 [n][D], already RMS-normed; out: F32 [n][D]; row t at position pos[t] of the
 * request whose block tables are lat_seq[t] / idx_seq[t], reserved to cover it). Writes every
 * row's latent entry (lat) and indexer key (idx) at its slot first, then attends (a row sees the
 * earlier rows of its own request), with q_b_proj q_b (NULL: the layer's own). topk: I32
 * [n][index_topk] or NULL; times (or NULL) accumulates the seconds of projections, attention
 * and o_proj; its buffers come from ws (dsacp_dsa_layer_need). The context-parallel layer runs
 * it at W = 1. */
typedef struct dsacp_dsa_rows {
    int64_t n;
    const int64_t *pos;                        /* [n] */
    dsacp_kv_seq *const *lat_seq, *const *idx_seq; /* [n] */
} dsacp_dsa_rows;
typedef struct dsacp_dsa_times {
    double proj, attn, oproj;
} dsacp_dsa_times;
int dsacp_dsa_layer(const dsacp_dsa_ctx *ctx, const dsacp_dsa_weights *w, const dsacp_weight *q_b, int64_t layer,
                    dsacp_kv_cache *lat, dsacp_kv_cache *idx, const dsacp_dsa_rows *rows, const float *x, float *out,
                    int32_t *topk, dsacp_dsa_times *times, dsacp_arena *ws);
/* The workspace dsacp_dsa_layer takes from `ws` for n rows at positions below max_ctx (added to
 * *total), the linears' scratch the most any of the nw layers' weights w[0..nw) takes; it gives
 * it all back before returning. */
void dsacp_dsa_layer_need(size_t *total, const dsacp_config *cfg, const dsacp_dsa_weights *w, int64_t nw, int64_t n,
                          int64_t max_ctx, bool deployed);

/* The same for the step's T tokens over ctx->cache (both layouts in one cache). */
int dsacp_dsa_forward(const dsacp_dsa_ctx *ctx, const dsacp_dsa_weights *w, int64_t layer,
                      const dsacp_step_tokens *tok, const float *x, float *out, int32_t *topk);

#endif
