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

void dsacp_dsa_weights_absorb_release(dsacp_dsa_weights *w)
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
    dsacp_dsa_weights_absorb_release(w);
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
        dsacp_dsa_weights_absorb_release(w);
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
    dsacp_dsa_weights_absorb_release(w);
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

int dsacp_dsa_proj_alloc(dsacp_dsa_proj *p, const dsacp_config *cfg, int64_t T)
{
    memset(p, 0, sizeof *p);
    const int64_t H = cfg->num_attention_heads, dq = cfg->qk_nope_head_dim + cfg->qk_rope_head_dim;
    const int64_t dk = cfg->kv_lora_rank + cfg->qk_rope_head_dim, Hi = cfg->index_n_heads, di = cfg->index_head_dim;
    const int64_t n = T > 0 ? T : 1;
    p->T = T;
    p->qa = dsacp_alloc((size_t)(n * cfg->q_lora_rank) * 4);
    p->q = dsacp_alloc((size_t)(n * H * dq) * 4);
    p->kv = dsacp_alloc((size_t)(n * dk) * 4);
    p->qi = dsacp_alloc((size_t)(n * Hi * di) * 4);
    p->ki = dsacp_alloc((size_t)(n * di) * 4);
    p->wts = dsacp_alloc((size_t)(n * Hi) * 4);
    if (p->qa && p->q && p->kv && p->qi && p->ki && p->wts) return DSACP_OK;
    dsacp_dsa_proj_free(p);
    return dsacp_error(DSACP_ENOMEM, "out of memory for the projections of %lld tokens", (long long)T);
}

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

void dsacp_dsa_proj_free(dsacp_dsa_proj *p)
{
    dsacp_free(p->qa);
    dsacp_free(p->q);
    dsacp_free(p->kv);
    dsacp_free(p->qi);
    dsacp_free(p->ki);
    dsacp_free(p->wts);
    memset(p, 0, sizeof *p);
}

/* Output rows [r0, r1) of y = W x (into y + r0, row stride ldy). Rows are independent in every
 * linear kernel, so a subset gives the full call's bits. An FP8 weight is cut at its 128-row
 * scale blocks, so the rows computed may extend to the enclosing blocks: they land in y at their
 * own offsets (the caller's row of y must have room for all W->rows). */
int dsacp_linear_rows(const dsacp_weight *w, int64_t r0, int64_t r1, const float *x, int64_t T, int64_t ldx,
                      float *y, int64_t ldy, bool act_quant)
{
    if (r0 == 0 && r1 == w->rows) return dsacp_linear(w, x, T, ldx, y, ldy, act_quant);
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
    return dsacp_linear(&v, x, T, ldx, y + a0, ldy, act_quant);
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
    int rc = dsacp_linear(w->kv_a, x, n, D, kv, dk, deployed);
    if (!rc) rc = dsacp_linear(w->wk, x, n, D, ki, di, deployed);
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
    int rc = dsacp_linear(w->q_a, x, n, D, qa, ql, deployed);
    if (!rc)
        for (int64_t t = 0; t < n; t++) dsacp_rmsnorm(qa + t * ql, qa + t * ql, w->q_a_norm, ql, 1e-6);
    if (!rc) rc = dsacp_linear_rows(q_b, h0 * dq, h1 * dq, qa, n, ql, q, H * dq, deployed);
    /* 4a. Indexer query (same qr) and head weights (same x). */
    if (!rc) rc = dsacp_linear(w->wq_b, qa, n, ql, qi, Hi * di, deployed);
    if (!rc) rc = dsacp_linear(w->wproj, x, n, D, wts, Hi, false);
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

int dsacp_dsa_project(const dsacp_dsa_ctx *ctx, const dsacp_dsa_weights *w, const float *x, int64_t n,
                      const int64_t *pos, int64_t h0, int64_t h1, dsacp_dsa_proj *p, int64_t row0)
{
    int rc = dsacp_dsa_project_kv(ctx, w, x, n, pos, p, row0);
    return rc ? rc : dsacp_dsa_project_q(ctx, w, NULL, x, n, pos, h0, h1, p, row0);
}

void dsacp_dsa_index_scores(const dsacp_kv_cache *c, int64_t layer, const dsacp_kv_seq *seq, int64_t n,
                            const void *qpack, float *scores, bool inner)
{
    const int64_t B = c->block_size, nb = (n + B - 1) / B;
#pragma omp parallel for schedule(static) if (inner)
    for (int64_t b = 0; b < nb; b++) {
        const float *scales;
        const void *keys = dsacp_kv_index_block(c, layer, seq->blocks[b], &scales);
        int64_t cnt = n - b * B < B ? n - b * B : B;
        dsacp_index_scores_packed(qpack, keys, scales, cnt, scores + b * B);
    }
}

void dsacp_dsa_query_rows_n(const dsacp_dsa_weights *w, const dsacp_config *cfg, const float *q, int64_t n,
                            int64_t ldq, int64_t h0, int64_t h1, float *qrow, int64_t ldr, bool inner)
{
    const int64_t nope = cfg->qk_nope_head_dim, dr = cfg->qk_rope_head_dim, dv = cfg->v_head_dim;
    const int64_t dq = nope + dr, dc = cfg->kv_lora_rank, dk = dc + dr;
#pragma omp parallel for schedule(static) if (inner)
    for (int64_t h = h0; h < h1; h++) {
        const float *qh = q + h * dq;
        float *qr = qrow + (h - h0) * dk;
        if (w->wuk_t) dsacp_linear(&w->wuk_t[h], qh, n, ldq, qr, ldr, false);
        else
            for (int64_t t = 0; t < n; t++)
                dsacp_gemv_t(w->kv_b_f32 + h * (nope + dv) * dc, dc, qh + t * ldq, nope, dc, qr + t * ldr);
        for (int64_t t = 0; t < n; t++) memcpy(qr + t * ldr + dc, qh + t * ldq + nope, (size_t)dr * 4);
    }
}

void dsacp_dsa_query_rows(const dsacp_dsa_weights *w, const dsacp_config *cfg, const float *q, int64_t h0,
                          int64_t h1, float *qrow, bool inner)
{
    const int64_t dq = cfg->qk_nope_head_dim + cfg->qk_rope_head_dim, dk = cfg->kv_lora_rank + cfg->qk_rope_head_dim;
    dsacp_dsa_query_rows_n(w, cfg, q, 1, cfg->num_attention_heads * dq, h0, h1, qrow, (h1 - h0) * dk, inner);
}

void dsacp_dsa_value_rows_n(const dsacp_dsa_weights *w, const dsacp_config *cfg, const float *o, int64_t n,
                            int64_t ldo, int64_t h0, int64_t h1, float *v, int64_t ldv, bool inner)
{
    const int64_t nope = cfg->qk_nope_head_dim, dv = cfg->v_head_dim, dc = cfg->kv_lora_rank;
#pragma omp parallel for schedule(static) if (inner)
    for (int64_t h = h0; h < h1; h++) {
        dsacp_weight wuv = {.name = "W_UV", .dtype = DSACP_F32, .ndim = 2, .rows = dv, .cols = dc,
                            .data = w->kv_b_f32 ? w->kv_b_f32 + (h * (nope + dv) + nope) * dc : NULL};
        dsacp_linear(w->wuv ? &w->wuv[h] : &wuv, o + (h - h0) * dc, n, ldo, v + (h - h0) * dv, ldv, false);
    }
}

void dsacp_dsa_value_rows(const dsacp_dsa_weights *w, const dsacp_config *cfg, const float *o, int64_t h0,
                          int64_t h1, float *v, bool inner)
{
    const int64_t dc = cfg->kv_lora_rank, dv = cfg->v_head_dim;
    dsacp_dsa_value_rows_n(w, cfg, o, 1, (h1 - h0) * dc, h0, h1, v, (h1 - h0) * dv, inner);
}

/* Scratch of one token's attention (per thread). */
typedef struct token_scratch {
    float *scores;  /* [max_ctx] */
    int32_t *sel;   /* [k] */
    float *kv;      /* [k][dc + dr] */
    float *lse;     /* [H] */
    float *work;    /* [k] */
    void *qpack;    /* dsacp_index_query_bytes(Hi, di), 64-byte aligned */
} token_scratch;

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
    int64_t max_ctx;
    int *rc;
} attend_args;

/* Step 5 and the sparse MLA of step 6 for every token of a chunk: index scores, top-k, latent
 * gather, absorbed sparse MLA into obuf (W_UK before and W_UV after run over the whole chunk,
 * head by head, in dsacp_dsa_attend_views). The token loop is an orphaned `omp for`: called
 * inside a parallel region, the threads take whole tokens; called outside one (inner = true),
 * the caller runs the tokens one after another and the kernels inside split each token's work
 * (index blocks, heads) over the threads. Those inner regions are then top-level and reuse
 * libgomp's pool; nested under an inactive region they would each start new threads (measured:
 * 1.2x instead of 1.8x on 2 threads at batch 1). Kernels are thread-count invariant, so a
 * token's result is the same either way. */
static void attend_tokens(const attend_args *a, bool inner)
{
    const dsacp_config *cfg = a->ctx->cfg;
    const int64_t max_ctx = a->max_ctx, Hs = a->h1 - a->h0;
    const int64_t dr = cfg->qk_rope_head_dim, dc = cfg->kv_lora_rank, dk = dc + dr;
    const int64_t Hi = cfg->index_n_heads, di = cfg->index_head_dim, K = cfg->index_topk;
    const float scale = (float)cfg->softmax_scale;
    const size_t qpack_bytes = (dsacp_index_query_bytes(Hi, di) + 63) / 64 * 64;
    token_scratch s = {0};
    s.scores = malloc((size_t)max_ctx * 4);
    s.sel = malloc((size_t)K * 4);
    s.kv = dsacp_alloc((size_t)(K * dk) * 4);
    s.lse = malloc((size_t)Hs * 4);
    s.work = malloc((size_t)K * 4);
    s.qpack = dsacp_alloc(qpack_bytes);
    bool ok = s.scores && s.sel && s.kv && s.lse && s.work && s.qpack;
    if (!ok) {
#pragma omp atomic write
        *a->rc = DSACP_ENOMEM;
    }
#pragma omp for schedule(dynamic, 1)
    for (int64_t j = 0; j < a->n; j++) {
        if (!ok) continue;
        const int64_t t = a->row0 + j, n = a->pos[j] + 1;
        const dsacp_dsa_view *v = a->views[j];
        dsacp_index_query_pack(a->p->qi + t * Hi * di, a->p->wts + t * Hi, Hi, di, s.qpack);
        dsacp_dsa_index_scores(v->idx, v->idx_layer, v->idx_seq, n, s.qpack, s.scores, inner);
        int64_t nsel = dsacp_topk_select(s.scores, n, K, s.sel);
        if (a->topk) {
            int32_t *row = a->topk + j * K;
            for (int64_t i = 0; i < K; i++) row[i] = i < nsel ? s.sel[i] : -1;
        }
#pragma omp parallel for schedule(static) if (inner)
        for (int64_t i = 0; i < nsel; i++)
            dsacp_kv_read_mla(v->lat, v->lat_layer, dsacp_kv_slot(v->lat, v->lat_seq, s.sel[i]), s.kv + i * dk);
        dsacp_sparse_mla(a->qrows + j * Hs * dk, s.kv, nsel, Hs, dc, dr, scale, a->obuf + j * Hs * dc, s.lse, s.work);
    }
    free(s.scores);
    free(s.sel);
    dsacp_free(s.kv);
    free(s.lse);
    free(s.work);
    dsacp_free(s.qpack);
}

/* No heads to attend with (a rank of a group larger than the head count): the selected sets
 * alone, computed exactly as attend_tokens computes them (the same kernels, the same order), so
 * that every rank reports the true sets whether it owns heads or not. */
static int select_only(const dsacp_dsa_ctx *ctx, const dsacp_dsa_proj *p, int64_t row0, int64_t n, const int64_t *pos,
                       const dsacp_dsa_view *const *views, int32_t *topk, int64_t layer)
{
    const dsacp_config *cfg = ctx->cfg;
    const int64_t Hi = cfg->index_n_heads, di = cfg->index_head_dim, K = cfg->index_topk;
    int64_t max_ctx = 1;
    for (int64_t t = 0; t < n; t++)
        if (pos[t] + 1 > max_ctx) max_ctx = pos[t] + 1;
    float *scores = malloc((size_t)max_ctx * 4);
    int32_t *sel = malloc((size_t)K * 4);
    void *qpack = dsacp_alloc((dsacp_index_query_bytes(Hi, di) + 63) / 64 * 64);
    int rc = scores && sel && qpack ? DSACP_OK
                                    : dsacp_error(DSACP_ENOMEM, "layer %lld: out of memory for the index scores of a "
                                                  "%lld-token context", (long long)layer, (long long)max_ctx);
    for (int64_t j = 0; j < n && !rc; j++) {
        const int64_t t = row0 + j, nk = pos[j] + 1;
        const dsacp_dsa_view *v = views[j];
        dsacp_index_query_pack(p->qi + t * Hi * di, p->wts + t * Hi, Hi, di, qpack);
        dsacp_dsa_index_scores(v->idx, v->idx_layer, v->idx_seq, nk, qpack, scores, true);
        const int64_t nsel = dsacp_topk_select(scores, nk, K, sel);
        for (int64_t i = 0; i < K; i++) topk[j * K + i] = i < nsel ? sel[i] : -1;
    }
    free(scores);
    free(sel);
    dsacp_free(qpack);
    return rc;
}

/* Tokens per chunk of dsacp_dsa_attend_views: W_UK and W_UV run as many-row linears over a
 * chunk (each head's weights read once per chunk instead of once per token); the chunk's query
 * rows and outputs take CH x heads x (2 dc + dr) floats (35 MB at V3.2's 128 heads). */
enum { ATTEND_CHUNK = 64 };

int dsacp_dsa_attend_views(const dsacp_dsa_ctx *ctx, const dsacp_dsa_weights *w, const dsacp_dsa_proj *p,
                           int64_t row0, int64_t n, const int64_t *pos, const dsacp_dsa_view *const *views,
                           int64_t h0, int64_t h1, float *vcat, int32_t *topk, int64_t layer)
{
    if (n == 0) return DSACP_OK;
    if (h1 <= h0) return topk ? select_only(ctx, p, row0, n, pos, views, topk, layer) : DSACP_OK;
    const dsacp_config *cfg = ctx->cfg;
    const int64_t H = cfg->num_attention_heads, Hs = h1 - h0, dq = cfg->qk_nope_head_dim + cfg->qk_rope_head_dim;
    const int64_t dc = cfg->kv_lora_rank, dk = dc + cfg->qk_rope_head_dim, dv = cfg->v_head_dim;
    const int64_t CH = n < ATTEND_CHUNK ? n : ATTEND_CHUNK;
    int64_t max_ctx = 0;
    for (int64_t t = 0; t < n; t++)
        if (pos[t] + 1 > max_ctx) max_ctx = pos[t] + 1;
    float *qrows = dsacp_alloc((size_t)(CH * Hs * dk) * 4), *obuf = dsacp_alloc((size_t)(CH * Hs * dc) * 4);
    int rc = qrows && obuf ? DSACP_OK : DSACP_ENOMEM;
    for (int64_t c0 = 0; c0 < n && !rc; c0 += CH) {
        const int64_t cn = n - c0 < CH ? n - c0 : CH;
        const int64_t r = row0 + c0;
        /* q_abs[t][h] = q_nope[t][h] . W_UK[h] (dc wide), query rows [q_abs | q_pe]. */
        dsacp_dsa_query_rows_n(w, cfg, p->q + r * H * dq, cn, H * dq, h0, h1, qrows, Hs * dk, true);
        const attend_args args = {ctx, w, p, r, cn, pos + c0, views + c0, h0, h1, qrows, obuf,
                                  topk ? topk + c0 * cfg->index_topk : NULL, max_ctx, &rc};
        if (cn >= omp_get_max_threads()) {
#pragma omp parallel
            attend_tokens(&args, false);
        } else {
            attend_tokens(&args, true);
        }
        /* v[t][h] = W_UV[h] o[t][h]. */
        if (!rc) dsacp_dsa_value_rows_n(w, cfg, obuf, cn, Hs * dc, h0, h1, vcat + (c0 * H + h0) * dv, H * dv, true);
    }
    dsacp_free(qrows);
    dsacp_free(obuf);
    if (rc)
        return dsacp_error(rc, "layer %lld: out of memory for the attention scratch of a %lld-token context "
                           "(index_topk %lld, num_attention_heads %lld)", (long long)layer, (long long)max_ctx,
                           (long long)ctx->cfg->index_topk, (long long)ctx->cfg->num_attention_heads);
    return DSACP_OK;
}
