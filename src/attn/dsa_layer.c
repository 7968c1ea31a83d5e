/*
 * dsa_layer.c -- one DSA attention layer, in the order of docs/dsa-math.md section 3.
 *
 *   1. qr = RMSNorm(q_a_proj x);  q = q_b_proj qr = [q_nope | q_pe] per head
 *   2. kv = kv_a_proj_with_mqa x = [c | k_pe];  c = RMSNorm(c)
 *   3. RoPE, interleaved pairs, on q_pe and k_pe;  cache (c, k_pe) at the token's slot
 *   4. indexer: qi = wq_b qr, ki = LayerNorm(wk x), rotate-half RoPE on their first rope dims,
 *      w = weights_proj x * Hi^-0.5;  deployed: Hadamard + FP8 on qi and ki;  cache ki
 *   5. I(p, s) = sum_h w[h] ReLU(qi[h] . ki[s]) di^-0.5 over s <= p;  top-k (ties: lower s)
 *   6. absorbed sparse MLA over the selected rows, W_UV, o_proj
 *
 * Steps 1-4 run for all T tokens of the step before any token attends, so a prefill chunk sees
 * its own earlier tokens exactly as a token-by-token schedule would.
 */
#include "attn/dsa_layer.h"
#include "model/model.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- weights ---- */

static float *layer_vector(const dsacp_model *m, const char *suffix, int64_t layer, int64_t n, int *rc)
{
    char name[200];
    snprintf(name, sizeof name, "model.layers.%lld.self_attn.%s", (long long)layer, suffix);
    return dsacp_model_vector_f32(m, name, n, rc);
}

int dsacp_dsa_weights_bind(dsacp_dsa_weights *w, const dsacp_model *m, int64_t layer)
{
    memset(w, 0, sizeof *w);
    const dsacp_config *cfg = dsacp_model_config(m);
    const char *p = "model.layers.%d.self_attn.";
    char f[160];
#define BIND(field, suffix)                                                                     \
    do {                                                                                        \
        snprintf(f, sizeof f, "%s%s", p, suffix);                                               \
        w->field = dsacp_model_weightf(m, f, (int)layer);                                       \
        if (!w->field)                                                                          \
            return dsacp_error(DSACP_ENOTFOUND, "layer %lld: missing %s", (long long)layer, suffix); \
    } while (0)
    BIND(q_a, "q_a_proj.weight");
    BIND(q_b, "q_b_proj.weight");
    BIND(kv_a, "kv_a_proj_with_mqa.weight");
    BIND(kv_b, "kv_b_proj.weight");
    BIND(o, "o_proj.weight");
    BIND(wq_b, "indexer.wq_b.weight");
    BIND(wk, "indexer.wk.weight");
    BIND(wproj, "indexer.weights_proj.weight");
#undef BIND
    int rc = DSACP_OK;
    w->q_a_norm = layer_vector(m, "q_a_layernorm.weight", layer, cfg->q_lora_rank, &rc);
    if (!rc) w->kv_a_norm = layer_vector(m, "kv_a_layernorm.weight", layer, cfg->kv_lora_rank, &rc);
    if (!rc) w->k_norm_w = layer_vector(m, "indexer.k_norm.weight", layer, cfg->index_head_dim, &rc);
    if (!rc) w->k_norm_b = layer_vector(m, "indexer.k_norm.bias", layer, cfg->index_head_dim, &rc);
    if (!rc) {
        w->kv_b_f32 = dsacp_alloc((size_t)(w->kv_b->rows * w->kv_b->cols) * sizeof(float));
        if (!w->kv_b_f32) rc = DSACP_ENOMEM;
        else dsacp_weight_to_f32(w->kv_b, w->kv_b_f32);
    }
    if (!rc) rc = dsacp_dsa_weights_absorb(w, cfg);
    if (rc) dsacp_dsa_weights_release(w);
    return rc;
}

static void absorb_release(dsacp_dsa_weights *w)
{
    free(w->wuk_t);
    free(w->wuv);
    dsacp_free(w->absorb_buf);
    w->wuk_t = w->wuv = NULL;
    w->absorb_buf = NULL;
}

int dsacp_dsa_weights_absorb(dsacp_dsa_weights *w, const dsacp_config *cfg)
{
    if (!w->kv_b_f32 && w->wuk_t) return DSACP_OK; /* already absorbed, the f32 copy released */
    absorb_release(w);
    const dsacp_weight *kb = w->kv_b;
    const int64_t H = cfg->num_attention_heads, nope = cfg->qk_nope_head_dim, dv = cfg->v_head_dim;
    const int64_t dc = cfg->kv_lora_rank, hr = nope + dv;
    if (!kb || !w->kv_b_f32 || kb->rows != H * hr || kb->cols != dc) return DSACP_OK; /* kv_b_f32 path */
    const int64_t B = kb->block;
    const bool f8 = kb->dtype == DSACP_F8_E4M3 && B > 0 && nope % B == 0 && dv % B == 0 && dc % B == 0;
    const bool half = kb->dtype == DSACP_BF16 || kb->dtype == DSACP_F16;
    const size_t es = f8 ? 1 : half ? 2 : 4;
    const int64_t sr = f8 ? dc / B : 0, sc = f8 ? nope / B : 0;
    const size_t dbytes = (size_t)(H * dc * nope) * es, sbytes = (size_t)(H * sr * sc) * sizeof(float);
    w->wuk_t = calloc((size_t)H, sizeof *w->wuk_t);
    w->wuv = calloc((size_t)H, sizeof *w->wuv);
    w->absorb_buf = dsacp_alloc(dbytes + sbytes + 64);
    if (!w->wuk_t || !w->wuv || !w->absorb_buf) {
        absorb_release(w);
        return dsacp_error(DSACP_ENOMEM, "out of memory for the absorbed kv_b_proj");
    }
    uint8_t *data = w->absorb_buf;
    float *scales = (float *)(data + (dbytes + 63) / 64 * 64);
    for (int64_t h = 0; h < H; h++) {
        uint8_t *dt = data + (size_t)(h * dc * nope) * es;
        const int64_t r0 = h * hr;
        /* W_UK[h]^T [dc][nope]: element (c, i) = kv_b[r0 + i][c]. */
        for (int64_t c = 0; c < dc; c++)
            for (int64_t i = 0; i < nope; i++) {
                if (f8 || half) {
                    const uint8_t *src = (const uint8_t *)kb->data + (size_t)((r0 + i) * dc + c) * es;
                    memcpy(dt + (size_t)(c * nope + i) * es, src, es);
                } else {
                    ((float *)dt)[c * nope + i] = w->kv_b_f32[(r0 + i) * dc + c];
                }
            }
        dsacp_weight *uk = &w->wuk_t[h], *uv = &w->wuv[h];
        *uk = (dsacp_weight){.name = "W_UK^T", .dtype = f8 ? DSACP_F8_E4M3 : half ? kb->dtype : DSACP_F32,
                             .ndim = 2, .rows = dc, .cols = nope, .data = dt};
        *uv = (dsacp_weight){.name = "W_UV", .dtype = uk->dtype, .ndim = 2, .rows = dv, .cols = dc};
        if (f8) {
            float *st = scales + h * sr * sc;
            for (int64_t cb = 0; cb < sr; cb++)
                for (int64_t ib = 0; ib < sc; ib++) st[cb * sc + ib] = kb->scale[(r0 / B + ib) * kb->scale_stride + cb];
            uk->scale = st, uk->scale_rows = sr, uk->scale_cols = sc, uk->scale_stride = sc, uk->block = B;
            uv->data = (const uint8_t *)kb->data + (size_t)((r0 + nope) * dc);
            uv->scale = kb->scale + ((r0 + nope) / B) * kb->scale_stride;
            uv->scale_rows = dv / B, uv->scale_cols = dc / B, uv->scale_stride = kb->scale_stride, uv->block = B;
        } else if (half) {
            uv->data = (const uint8_t *)kb->data + (size_t)((r0 + nope) * dc) * 2;
        } else {
            const float *src = kb->dtype == DSACP_F32 ? (const float *)kb->data : w->kv_b_f32;
            uv->data = src + (r0 + nope) * dc;
        }
    }
    /* The f32 copy is needed only where W_UV views it (an FP8 kv_b whose 128-blocks do not line
     * up with the heads); otherwise it is 64 MB per layer at V3.2 that nothing reads. */
    if (f8 || half || kb->dtype == DSACP_F32) {
        dsacp_free(w->kv_b_f32);
        w->kv_b_f32 = NULL;
    }
    return DSACP_OK;
}

void dsacp_dsa_weights_release(dsacp_dsa_weights *w)
{
    absorb_release(w);
    dsacp_free(w->q_a_norm);
    dsacp_free(w->kv_a_norm);
    dsacp_free(w->k_norm_w);
    dsacp_free(w->k_norm_b);
    dsacp_free(w->kv_b_f32);
    memset(w, 0, sizeof *w);
}

/* ---- phases ----
 * The layer is a sequence of phases over plain buffers; the single-process layer
 * (dsa_reference.c) runs them top to bottom, the context-parallel layer (src/cp/cp_layer.c)
 * composes them and says what moves between them. */

/* The projections' arrays: (rows, cols) of F32 each, in one order for the take and the need. */
static void proj_shapes(const dsacp_config *cfg, int64_t T, int64_t cols[6])
{
    const int64_t H = cfg->num_attention_heads, dq = cfg->qk_nope_head_dim + cfg->qk_rope_head_dim;
    cols[0] = cfg->q_lora_rank, cols[1] = H * dq, cols[2] = cfg->kv_lora_rank + cfg->qk_rope_head_dim;
    cols[3] = cfg->index_n_heads * cfg->index_head_dim, cols[4] = cfg->index_head_dim, cols[5] = cfg->index_n_heads;
    (void)T;
}

void dsacp_dsa_proj_need(size_t *total, const dsacp_config *cfg, int64_t T)
{
    int64_t cols[6];
    proj_shapes(cfg, T, cols);
    for (int i = 0; i < 6; i++) dsacp_arena_need(total, T > 0 ? T : 1, cols[i], sizeof(float));
}

int dsacp_dsa_proj_take(dsacp_dsa_proj *p, const dsacp_config *cfg, int64_t T, dsacp_arena *ws)
{
    memset(p, 0, sizeof *p);
    int64_t cols[6];
    proj_shapes(cfg, T, cols);
    float **dst[6] = {&p->qa, &p->q, &p->kv, &p->qi, &p->ki, &p->wts};
    for (int i = 0; i < 6; i++)
        if (!(*dst[i] = dsacp_arena_take(ws, T > 0 ? T : 1, cols[i], sizeof(float), "the projections")))
            return DSACP_ENOMEM;
    p->T = T;
    return DSACP_OK;
}

int dsacp_dsa_linear(const dsacp_dsa_ctx *ctx, const dsacp_weight *w, const float *x, int64_t T, int64_t ldx,
                     float *y, int64_t ldy, bool act_quant)
{
    if (!ctx || !ctx->ws) return dsacp_linear(w, x, T, ldx, y, ldy, act_quant);
    const size_t bytes = dsacp_linear_ws_bytes(w, T, act_quant);
    if (bytes == 0) return dsacp_linear_ws(w, x, T, ldx, y, ldy, act_quant, NULL, 0);
    const size_t mark = dsacp_arena_mark(ctx->ws);
    void *scratch = dsacp_arena_take(ctx->ws, 1, (int64_t)bytes, 1, "a linear's scratch");
    int rc = scratch ? dsacp_linear_ws(w, x, T, ldx, y, ldy, act_quant, scratch, bytes) : DSACP_ENOMEM;
    dsacp_arena_rewind(ctx->ws, mark);
    return rc;
}

size_t dsacp_dsa_linear_need(const dsacp_dsa_weights *w, int64_t n, bool deployed)
{
    const dsacp_weight *aq[] = {w->q_a, w->q_b, w->kv_a, w->wk, w->wq_b, w->o};
    size_t most = 0, b = 0;
    for (size_t i = 0; i < sizeof aq / sizeof aq[0]; i++) {
        b = 0;
        dsacp_arena_need(&b, 1, (int64_t)dsacp_linear_ws_bytes(aq[i], n, deployed), 1);
        most = dsacp_arena_max(most, b);
    }
    b = 0;
    dsacp_arena_need(&b, 1, (int64_t)dsacp_linear_ws_bytes(w->wproj, n, false), 1);
    return dsacp_arena_max(most, b);
}

/* Output rows [r0, r1) of y = W x (into y + r0, row stride ldy). Rows are independent in every
 * linear kernel, so a subset gives the full call's bits. An FP8 weight is cut at its 128-row
 * scale blocks, so the rows computed may extend to the enclosing blocks: they land in y at their
 * own offsets (the caller's row of y must have room for all W->rows). */
static int linear_rows(const dsacp_dsa_ctx *ctx, const dsacp_weight *w, int64_t r0, int64_t r1, const float *x,
                       int64_t T, int64_t ldx, float *y, int64_t ldy, bool act_quant)
{
    if (r0 == 0 && r1 == w->rows) return dsacp_dsa_linear(ctx, w, x, T, ldx, y, ldy, act_quant);
    if (r1 <= r0) return DSACP_OK;
    dsacp_weight v = *w;
    int64_t a0 = r0, a1 = r1;
    size_t es = dsacp_dtype_size(w->dtype);
    if (w->dtype == DSACP_F8_E4M3 && w->block > 0) {
        a0 = r0 / w->block * w->block;
        a1 = (r1 + w->block - 1) / w->block * w->block;
        if (a1 > w->rows) a1 = w->rows;
        v.scale = w->scale + (a0 / w->block) * w->scale_stride;
        v.scale_rows = (a1 - a0 + w->block - 1) / w->block;
    }
    v.data = (const uint8_t *)w->data + (size_t)(a0 * w->cols) * es;
    v.rows = a1 - a0;
    return dsacp_dsa_linear(ctx, &v, x, T, ldx, y + a0, ldy, act_quant);
}

int dsacp_dsa_project_kv(const dsacp_dsa_ctx *ctx, const dsacp_dsa_weights *w, const float *x, int64_t n,
                         const int64_t *pos, dsacp_dsa_proj *p, int64_t row0)
{
    const dsacp_config *cfg = ctx->cfg;
    const int64_t D = cfg->hidden_size, dr = cfg->qk_rope_head_dim, dc = cfg->kv_lora_rank, dk = dc + dr;
    const int64_t di = cfg->index_head_dim;
    const bool deployed = ctx->mode == DSACP_MODE_DEPLOYED;
    if (n == 0) return DSACP_OK;
    float *kv = p->kv + row0 * dk, *ki = p->ki + row0 * di;
    /* 2. Latent: [c | k_pe] = kv_a_proj x, c = RMSNorm(c); 4a. the indexer key (same x). */
    int rc = dsacp_dsa_linear(ctx, w->kv_a, x, n, D, kv, dk, deployed);
    if (!rc) rc = dsacp_dsa_linear(ctx, w->wk, x, n, D, ki, di, deployed);
    if (rc) return rc;
    /* 3 + 4b. Norms and RoPE per token. */
    for (int64_t t = 0; t < n; t++) {
        float cos_t[256], sin_t[256];
        dsacp_rope_cos_sin(ctx->rope, pos[t], cos_t, sin_t);
        float *kvt = kv + t * dk;
        dsacp_rmsnorm(kvt, kvt, w->kv_a_norm, dc, 1e-6);
        dsacp_rope_apply_interleaved(kvt + dc, dr, cos_t, sin_t);
        float *kit = ki + t * di;
        dsacp_layernorm(kit, kit, w->k_norm_w, w->k_norm_b, di, 1e-6);
        dsacp_rope_apply_rotate_half(kit, dr, cos_t, sin_t);
        if (deployed) dsacp_hadamard(kit, di);
    }
    return DSACP_OK;
}

int dsacp_dsa_project_q(const dsacp_dsa_ctx *ctx, const dsacp_dsa_weights *w, const dsacp_weight *q_b,
                        const float *x, int64_t n, const int64_t *pos, int64_t h0, int64_t h1, dsacp_dsa_proj *p,
                        int64_t row0)
{
    const dsacp_config *cfg = ctx->cfg;
    const int64_t D = cfg->hidden_size, H = cfg->num_attention_heads;
    const int64_t nope = cfg->qk_nope_head_dim, dr = cfg->qk_rope_head_dim, dq = nope + dr;
    const int64_t Hi = cfg->index_n_heads, di = cfg->index_head_dim, ql = cfg->q_lora_rank;
    const bool deployed = ctx->mode == DSACP_MODE_DEPLOYED;
    if (n == 0) return DSACP_OK;
    if (!q_b) q_b = w->q_b;
    float *qa = p->qa + row0 * ql, *q = p->q + row0 * H * dq;
    float *qi = p->qi + row0 * Hi * di, *wts = p->wts + row0 * Hi;
    /* 1. Query path: qr = RMSNorm(q_a_proj x), q = q_b_proj qr (rows of heads [h0, h1)). */
    int rc = dsacp_dsa_linear(ctx, w->q_a, x, n, D, qa, ql, deployed);
    if (!rc)
        for (int64_t t = 0; t < n; t++) dsacp_rmsnorm(qa + t * ql, qa + t * ql, w->q_a_norm, ql, 1e-6);
    if (!rc) rc = linear_rows(ctx, q_b, h0 * dq, h1 * dq, qa, n, ql, q, H * dq, deployed);
    /* 4a. Indexer query (same qr) and head weights (same x). */
    if (!rc) rc = dsacp_dsa_linear(ctx, w->wq_b, qa, n, ql, qi, Hi * di, deployed);
    if (!rc) rc = dsacp_dsa_linear(ctx, w->wproj, x, n, D, wts, Hi, false);
    if (rc) return rc;
    const double wscale = 1.0 / sqrt((double)Hi) / sqrt((double)di);
    for (int64_t t = 0; t < n; t++) {
        float cos_t[256], sin_t[256];
        dsacp_rope_cos_sin(ctx->rope, pos[t], cos_t, sin_t);
        for (int64_t h = h0; h < h1; h++) dsacp_rope_apply_interleaved(q + (t * H + h) * dq + nope, dr, cos_t, sin_t);
        float *wt = wts + t * Hi;
        for (int64_t h = 0; h < Hi; h++) {
            float *qh = qi + (t * Hi + h) * di;
            dsacp_rope_apply_rotate_half(qh, dr, cos_t, sin_t);
            wt[h] = (float)(wt[h] * wscale);
            if (deployed) {
                /* Hadamard, then e4m3 with one power-of-two scale per head; the scale moves
                 * into the head weight so the dot product runs on the e4m3 values. */
                uint8_t q8[1024];
                float qs;
                dsacp_hadamard(qh, di);
                dsacp_quant_e4m3_groups(qh, di, di, q8, &qs);
                for (int64_t i = 0; i < di; i++) qh[i] = dsacp_e4m3_to_f32(q8[i]);
                wt[h] *= qs;
            }
        }
    }
    return DSACP_OK;
}

typedef struct scores_args {
    const dsacp_kv_cache *c;
    int64_t layer, n;
    const dsacp_kv_seq *seq;
    const void *qpack;
    float *scores;
} scores_args;

static void score_block(void *ctx, int64_t b)
{
    const scores_args *a = ctx;
    const int64_t B = a->c->block_size;
    const float *scales;
    const void *keys = dsacp_kv_index_block(a->c, a->layer, a->seq->blocks[b], &scales);
    const int64_t cnt = a->n - b * B < B ? a->n - b * B : B;
    dsacp_index_scores_packed(a->qpack, keys, scales, cnt, a->scores + b * B);
}

void dsacp_dsa_index_scores(const dsacp_kv_cache *c, int64_t layer, const dsacp_kv_seq *seq, int64_t n,
                            const void *qpack, float *scores, bool inner)
{
    scores_args a = {c, layer, n, seq, qpack, scores};
    dsacp_parallel_for((n + c->block_size - 1) / c->block_size, inner, score_block, &a);
}

typedef struct heads_args {
    const dsacp_dsa_weights *w;
    const dsacp_config *cfg;
    const float *in;
    int64_t n, ldin, h0;
    float *out;
    int64_t ldout;
} heads_args;

static void query_head(void *ctx, int64_t i)
{
    const heads_args *a = ctx;
    const dsacp_config *cfg = a->cfg;
    const int64_t nope = cfg->qk_nope_head_dim, dr = cfg->qk_rope_head_dim, dv = cfg->v_head_dim;
    const int64_t dq = nope + dr, dc = cfg->kv_lora_rank, dk = dc + dr, h = a->h0 + i;
    const float *qh = a->in + h * dq;
    float *qr = a->out + i * dk;
    if (a->w->wuk_t) dsacp_linear(&a->w->wuk_t[h], qh, a->n, a->ldin, qr, a->ldout, false);
    else
        for (int64_t t = 0; t < a->n; t++)
            dsacp_gemv_t(a->w->kv_b_f32 + h * (nope + dv) * dc, dc, qh + t * a->ldin, nope, dc, qr + t * a->ldout);
    for (int64_t t = 0; t < a->n; t++) memcpy(qr + t * a->ldout + dc, qh + t * a->ldin + nope, (size_t)dr * sizeof *qr);
}

void dsacp_dsa_query_rows_n(const dsacp_dsa_weights *w, const dsacp_config *cfg, const float *q, int64_t n,
                            int64_t ldq, int64_t h0, int64_t h1, float *qrow, int64_t ldr, bool inner)
{
    heads_args a = {w, cfg, q, n, ldq, h0, qrow, ldr};
    dsacp_parallel_for(h1 - h0, inner, query_head, &a);
}

static void value_head(void *ctx, int64_t i)
{
    const heads_args *a = ctx;
    const int64_t nope = a->cfg->qk_nope_head_dim, dv = a->cfg->v_head_dim, dc = a->cfg->kv_lora_rank, h = a->h0 + i;
    const dsacp_dsa_weights *w = a->w;
    dsacp_weight wuv = {.name = "W_UV", .dtype = DSACP_F32, .ndim = 2, .rows = dv, .cols = dc,
                        .data = w->kv_b_f32 ? w->kv_b_f32 + (h * (nope + dv) + nope) * dc : NULL};
    dsacp_linear(w->wuv ? &w->wuv[h] : &wuv, a->in + i * dc, a->n, a->ldin, a->out + i * dv, a->ldout, false);
}

void dsacp_dsa_value_rows_n(const dsacp_dsa_weights *w, const dsacp_config *cfg, const float *o, int64_t n,
                            int64_t ldo, int64_t h0, int64_t h1, float *v, int64_t ldv, bool inner)
{
    heads_args a = {w, cfg, o, n, ldo, h0, v, ldv};
    dsacp_parallel_for(h1 - h0, inner, value_head, &a);
}

void dsacp_dsa_value_rows(const dsacp_dsa_weights *w, const dsacp_config *cfg, const float *o, int64_t h0,
                          int64_t h1, float *v, bool inner)
{
    const int64_t dc = cfg->kv_lora_rank, dv = cfg->v_head_dim;
    dsacp_dsa_value_rows_n(w, cfg, o, 1, (h1 - h0) * dc, h0, h1, v, (h1 - h0) * dv, inner);
}

/* Scratch of one token's attention (one per thread), taken from the workspace before any thread
 * starts (an arena is not thread-safe). */
typedef struct token_scratch {
    float *scores;  /* F32 [max_ctx] */
    int32_t *sel;   /* I32 [k] */
    float *kv;      /* F32 [k][dc + dr] the gathered latent rows */
    float *lse;     /* F32 [heads] */
    void *qpack;    /* dsacp_index_query_bytes(Hi, di) */
    void *topk_ws;  /* dsacp_topk_ws_bytes(max_ctx) */
    void *mla_ws;   /* the sparse MLA kernel's of the mode (mla_work_bytes) */
    size_t mla_bytes;
} token_scratch;

/* The sparse MLA's workspace for the kernel the mode runs (deployed: the bf16-dot twin). */
static size_t mla_work_bytes(bool deployed, int64_t K, int64_t heads, int64_t dc, int64_t dr)
{
    return deployed ? dsacp_sparse_mla_bf16_work_bytes(K, heads, dc, dr) : dsacp_sparse_mla_work_bytes(K, heads, dc, dr);
}

/* The scratch's takes, in one order for the need and the take: (rows, cols, element size). */
static void scratch_shapes(const dsacp_config *cfg, int64_t heads, int64_t max_ctx, bool deployed,
                           int64_t shape[7][3])
{
    const int64_t K = cfg->index_topk, dc = cfg->kv_lora_rank, dr = cfg->qk_rope_head_dim;
    const int64_t rows[7][3] = {
        {max_ctx, 1, sizeof(float)},
        {K, 1, sizeof(int32_t)},
        {K, dc + dr, sizeof(float)},
        {heads, 1, sizeof(float)},
        {1, (int64_t)dsacp_index_query_bytes(cfg->index_n_heads, cfg->index_head_dim), 1},
        {1, (int64_t)dsacp_topk_ws_bytes(max_ctx), 1},
        {1, heads > 0 ? (int64_t)mla_work_bytes(deployed, K, heads, dc, dr) : 0, 1},
    };
    memcpy(shape, rows, sizeof rows);
}

static int scratch_take(dsacp_arena *ws, const dsacp_config *cfg, int64_t heads, int64_t max_ctx, bool deployed,
                        token_scratch *s)
{
    int64_t sh[7][3];
    scratch_shapes(cfg, heads, max_ctx, deployed, sh);
    void *got[7];
    for (int i = 0; i < 7; i++)
        if (!(got[i] = dsacp_arena_take(ws, sh[i][0] > 0 ? sh[i][0] : 1, sh[i][1] > 0 ? sh[i][1] : 1, (size_t)sh[i][2],
                                        "the attention scratch")))
            return DSACP_ENOMEM;
    *s = (token_scratch){got[0], got[1], got[2], got[3], got[4], got[5], got[6], (size_t)sh[6][1]};
    return DSACP_OK;
}

/* Threads that take whole tokens of a chunk of n (one scratch each); 1: the tokens run one after
 * another and the kernels split each token's work. */
static int64_t token_threads(int64_t n)
{
    const int64_t mt = omp_get_max_threads();
    return mt > 1 && n >= mt ? mt : 1;
}

void dsacp_dsa_attend_need(size_t *total, const dsacp_config *cfg, int64_t n, int64_t heads, int64_t max_ctx,
                           bool deployed)
{
    const int64_t CH = n < DSACP_DSA_ATTEND_CHUNK ? (n > 0 ? n : 1) : DSACP_DSA_ATTEND_CHUNK, nt = token_threads(CH);
    const int64_t dc = cfg->kv_lora_rank, dk = dc + cfg->qk_rope_head_dim;
    dsacp_arena_need(total, CH, heads > 0 ? heads * dk : 1, sizeof(float));
    dsacp_arena_need(total, CH, heads > 0 ? heads * dc : 1, sizeof(float));
    dsacp_arena_need(total, nt, 1, sizeof(token_scratch));
    int64_t sh[7][3];
    scratch_shapes(cfg, heads, max_ctx > 0 ? max_ctx : 1, deployed, sh);
    for (int64_t t = 0; t < nt; t++)
        for (int i = 0; i < 7; i++)
            dsacp_arena_need(total, sh[i][0] > 0 ? sh[i][0] : 1, sh[i][1] > 0 ? sh[i][1] : 1, (size_t)sh[i][2]);
}

/* Everything the tokens of one chunk need, shared by the threads. */
typedef struct attend_args {
    const dsacp_dsa_ctx *ctx;
    const dsacp_dsa_weights *w;
    const dsacp_dsa_proj *p;
    int64_t row0, n;                        /* the chunk: rows [row0, row0 + n) of p, entries 0..n-1 below */
    const int64_t *pos;
    const dsacp_dsa_view *const *views;
    int64_t h0, h1;
    const float *qrows;                     /* [n][Hs][dc + dr] absorbed query rows */
    float *obuf;                            /* [n][Hs][dc] attention outputs */
    int32_t *topk;
    token_scratch *scratch;                 /* [threads] */
    int *rc;
} attend_args;

typedef struct gather_args {
    const dsacp_dsa_view *v;
    const int32_t *sel;
    float *kv;
    int64_t dk;
} gather_args;

static void gather_row(void *ctx, int64_t i)
{
    const gather_args *g = ctx;
    dsacp_kv_read_mla(g->v->lat, g->v->lat_layer, dsacp_kv_slot(g->v->lat, g->v->lat_seq, g->sel[i]), g->kv + i * g->dk);
}

/* Index scores and top-k of one token (row t of p, n positions of view v) into s->sel. */
static int64_t token_select(const dsacp_dsa_proj *p, const dsacp_config *cfg, int64_t t, int64_t n,
                            const dsacp_dsa_view *v, const token_scratch *s, bool inner)
{
    const int64_t Hi = cfg->index_n_heads, di = cfg->index_head_dim;
    dsacp_index_query_pack(p->qi + t * Hi * di, p->wts + t * Hi, Hi, di, s->qpack);
    dsacp_dsa_index_scores(v->idx, v->idx_layer, v->idx_seq, n, s->qpack, s->scores, inner);
    return dsacp_topk_select_ws(s->scores, n, cfg->index_topk, s->sel, s->topk_ws);
}

static void write_selected(int32_t *row, const int32_t *sel, int64_t nsel, int64_t K)
{
    for (int64_t i = 0; i < K; i++) row[i] = i < nsel ? sel[i] : -1;
}

/* Step 5 and the sparse MLA of step 6 for token j of a chunk: index scores, top-k, latent
 * gather, absorbed sparse MLA into obuf (W_UK before and W_UV after run over the whole chunk,
 * head by head, in attend_chunks). inner: the kernels split the token's work (index blocks,
 * heads) over the threads (dsacp_parallel_for: top-level regions only, which reuse libgomp's
 * pool); otherwise the caller's threads take whole tokens. Kernels are thread-count invariant,
 * so a token's result is the same either way. */
static void attend_token(const attend_args *a, int64_t j, const token_scratch *s, bool inner)
{
    const dsacp_config *cfg = a->ctx->cfg;
    const int64_t Hs = a->h1 - a->h0, dr = cfg->qk_rope_head_dim, dc = cfg->kv_lora_rank, dk = dc + dr;
    const int64_t K = cfg->index_topk;
    const dsacp_dsa_view *v = a->views[j];
    const int64_t nsel = token_select(a->p, cfg, a->row0 + j, a->pos[j] + 1, v, s, inner);
    if (a->topk) write_selected(a->topk + j * K, s->sel, nsel, K);
    gather_args g = {v, s->sel, s->kv, dk};
    dsacp_parallel_for(nsel, inner, gather_row, &g);
    /* Deployed mode: the bf16-dot twin (FlashMLA's arithmetic); exact: the f32 kernel. */
    const bool deployed = a->ctx->mode == DSACP_MODE_DEPLOYED;
    int rc = (deployed ? dsacp_sparse_mla_bf16_ws : dsacp_sparse_mla_ws)(
        a->qrows + j * Hs * dk, s->kv, nsel, Hs, dc, dr, (float)cfg->softmax_scale, a->obuf + j * Hs * dc, s->lse,
        s->mla_ws, s->mla_bytes);
    if (rc) {
#pragma omp atomic write
        *a->rc = rc;
    }
}

/* The tokens of a chunk: one after another on the calling thread (the kernels split each), or
 * taken whole by `threads` threads, each with its own scratch. */
static void attend_tokens(const attend_args *a, int64_t threads)
{
    if (threads <= 1) {
        for (int64_t j = 0; j < a->n; j++) attend_token(a, j, &a->scratch[0], true);
        return;
    }
#pragma omp parallel num_threads((int)threads)
    {
        const token_scratch *s = &a->scratch[omp_get_thread_num()];
#pragma omp for schedule(dynamic, 1)
        for (int64_t j = 0; j < a->n; j++) attend_token(a, j, s, false);
    }
}

/* No heads to attend with (a rank of a group larger than the head count): the selected sets
 * alone, computed exactly as attend_tokens computes them (the same kernels, the same order), so
 * that every rank reports the true sets whether it owns heads or not. */
static void select_only(const dsacp_dsa_ctx *ctx, const dsacp_dsa_proj *p, int64_t row0, int64_t n,
                        const int64_t *pos, const dsacp_dsa_view *const *views, int32_t *topk, const token_scratch *s)
{
    const int64_t K = ctx->cfg->index_topk;
    for (int64_t j = 0; j < n; j++)
        write_selected(topk + j * K, s->sel, token_select(p, ctx->cfg, row0 + j, pos[j] + 1, views[j], s, true), K);
}

/* The chunks of dsacp_dsa_attend_views over a workspace that holds dsacp_dsa_attend_need. */
static int attend_chunks(const dsacp_dsa_ctx *ctx, const dsacp_dsa_weights *w, const dsacp_dsa_proj *p,
                         int64_t row0, int64_t n, const int64_t *pos, const dsacp_dsa_view *const *views, int64_t h0,
                         int64_t h1, float *vcat, int32_t *topk, int64_t max_ctx, dsacp_arena *ws)
{
    const dsacp_config *cfg = ctx->cfg;
    const int64_t H = cfg->num_attention_heads, Hs = h1 > h0 ? h1 - h0 : 0, dq = cfg->qk_nope_head_dim + cfg->qk_rope_head_dim;
    const int64_t dc = cfg->kv_lora_rank, dk = dc + cfg->qk_rope_head_dim, dv = cfg->v_head_dim;
    const int64_t CH = n < DSACP_DSA_ATTEND_CHUNK ? n : DSACP_DSA_ATTEND_CHUNK, nt = token_threads(CH);
    float *qrows = dsacp_arena_take(ws, CH, Hs > 0 ? Hs * dk : 1, sizeof *qrows, "the attention's query rows");
    float *obuf = qrows ? dsacp_arena_take(ws, CH, Hs > 0 ? Hs * dc : 1, sizeof *obuf, "the attention's outputs") : NULL;
    token_scratch *sc = obuf ? dsacp_arena_take(ws, nt, 1, sizeof *sc, "the attention scratch") : NULL;
    int rc = sc ? DSACP_OK : DSACP_ENOMEM;
    const bool deployed = ctx->mode == DSACP_MODE_DEPLOYED;
    for (int64_t i = 0; i < nt && !rc; i++) rc = scratch_take(ws, cfg, Hs, max_ctx, deployed, &sc[i]);
    if (rc || Hs == 0) {
        if (!rc && topk) select_only(ctx, p, row0, n, pos, views, topk, &sc[0]);
        return rc;
    }
    for (int64_t c0 = 0; c0 < n && !rc; c0 += CH) {
        const int64_t cn = n - c0 < CH ? n - c0 : CH, r = row0 + c0;
        /* q_abs[t][h] = q_nope[t][h] . W_UK[h] (dc wide), query rows [q_abs | q_pe]. */
        dsacp_dsa_query_rows_n(w, cfg, p->q + r * H * dq, cn, H * dq, h0, h1, qrows, Hs * dk, true);
        const attend_args args = {ctx, w, p, r, cn, pos + c0, views + c0, h0, h1, qrows, obuf,
                                  topk ? topk + c0 * cfg->index_topk : NULL, sc, &rc};
        attend_tokens(&args, token_threads(cn));
        /* v[t][h] = W_UV[h] o[t][h]. */
        if (!rc) dsacp_dsa_value_rows_n(w, cfg, obuf, cn, Hs * dc, h0, h1, vcat + (c0 * H + h0) * dv, H * dv, true);
    }
    return rc;
}

int dsacp_dsa_attend_views(const dsacp_dsa_ctx *ctx, const dsacp_dsa_weights *w, const dsacp_dsa_proj *p,
                           int64_t row0, int64_t n, const int64_t *pos, const dsacp_dsa_view *const *views,
                           int64_t h0, int64_t h1, float *vcat, int32_t *topk, int64_t layer)
{
    if (n == 0 || (h1 <= h0 && !topk)) return DSACP_OK;
    int64_t max_ctx = 1;
    for (int64_t t = 0; t < n; t++)
        if (pos[t] + 1 > max_ctx) max_ctx = pos[t] + 1;
    /* Without a workspace in ctx (the W > 1 strategies), one of this call's size. */
    dsacp_arena own = {0}, *ws = ctx->ws;
    int rc = DSACP_OK;
    if (!ws) {
        size_t need = 0;
        dsacp_dsa_attend_need(&need, ctx->cfg, n, h1 > h0 ? h1 - h0 : 0, max_ctx, ctx->mode == DSACP_MODE_DEPLOYED);
        rc = dsacp_arena_create(&own, need, "the attention scratch");
        ws = &own;
    }
    const size_t mark = dsacp_arena_mark(ws);
    if (!rc) rc = attend_chunks(ctx, w, p, row0, n, pos, views, h0, h1, vcat, topk, max_ctx, ws);
    dsacp_arena_rewind(ws, mark);
    dsacp_arena_destroy(&own);
    if (rc)
        return dsacp_error_context(rc, "layer %lld: the attention of a %lld-token context (index_topk %lld, "
                                   "num_attention_heads %lld)", (long long)layer, (long long)max_ctx,
                                   (long long)ctx->cfg->index_topk, (long long)ctx->cfg->num_attention_heads);
    return DSACP_OK;
}
