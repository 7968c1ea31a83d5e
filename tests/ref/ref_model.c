/*
 * ref_model.c -- the float64 reference model (see ref_model.h for the conventions).
 *
 * Reading order: the small ops (linear, norms, RoPE), then one attention layer
 * (ref_attention: docs/dsa-math.md section 3, in the absorbed form of step 6), the MLPs
 * (section 7), ref_forward, which runs the stack, and ref_mtp_forward, the MTP layer
 * (docs/mtp.md). Weights of one layer are converted to
 * double when the layer starts and freed when it ends.
 */
#include "ref_model.h"

#include "core/core.h"
#include "model/model.h"
#include "numerics/numerics.h"

#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REF_PI 3.14159265358979323846
#define REF_SUBLAYER_EPS 1e-6 /* q_a_layernorm, kv_a_layernorm, indexer k_norm */
#define REF_ACT_GROUP 128     /* activation quantization group of FP8 linear layers */
#define REF_KV_GROUP 128      /* fp8_ds_mla latent quantization group */

/* ------------------------------------------------------------------------------------------ */
/* Weights as doubles                                                                         */
/* ------------------------------------------------------------------------------------------ */

typedef struct ref_mat {
    double *w;          /* [rows][cols] */
    int64_t rows, cols; /* a vector is rows = 1 */
    bool fp8;           /* stored as F8_E4M3 (deployed mode quantizes the input) */
    bool bf16dot;       /* deployed mode rounds the input to bf16 (dsacp_bf16dot_linear_applies) */
} ref_mat;

static void mat_free(ref_mat *a)
{
    dsacp_free(a->w);
    a->w = NULL;
}

/* Loads the weight named by fmt, checks it is [rows][cols] (a vector: rows = 1, cols = n) and
 * converts it to double. */
static int mat_load(const dsacp_model *m, ref_mat *out, int64_t rows, int64_t cols,
                    const char *fmt, ...) DSACP_PRINTF(5, 6);
static int mat_load(const dsacp_model *m, ref_mat *out, int64_t rows, int64_t cols,
                    const char *fmt, ...)
{
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    out->w = NULL;
    const dsacp_weight *w = dsacp_model_weight(m, name);
    if (!w)
        return dsacp_error(DSACP_ENOTFOUND, "ref_forward: weight '%s' not found", name);
    bool ok = rows == 1 ? w->rows * w->cols == cols : (w->rows == rows && w->cols == cols);
    if (!ok)
        return dsacp_error(DSACP_ESHAPE, "ref_forward: weight '%s' is [%lld, %lld], expected [%lld, %lld]",
                           name, (long long)w->rows, (long long)w->cols, (long long)rows,
                           (long long)cols);
    size_t count = (size_t)rows * (size_t)cols;
    float *f = dsacp_alloc(count * sizeof(float));
    out->w = dsacp_alloc(count * sizeof(double));
    if (!f || !out->w) {
        dsacp_free(f);
        mat_free(out);
        return dsacp_error(DSACP_ENOMEM, "ref_forward: no memory for weight '%s'", name);
    }
    dsacp_weight_to_f32(w, f);
    for (size_t i = 0; i < count; i++)
        out->w[i] = f[i];
    dsacp_free(f);
    out->rows = rows;
    out->cols = cols;
    out->fp8 = w->dtype == DSACP_F8_E4M3;
    /* The engine's linears that take the deployed flag run the bf16-dot chain over BF16 weights
     * and FP8 weights of blocks a multiple of 32 (kernels/weight.h); the router and the heads
     * take the f32 chain in both modes, so their loaders clear this. */
    out->bf16dot = w->dtype == DSACP_BF16 || (out->fp8 && w->block > 0 && w->block % 32 == 0);
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Small ops                                                                                  */
/* ------------------------------------------------------------------------------------------ */

typedef struct ref_ctx {
    const dsacp_model *m;
    const dsacp_config *cfg;
    ref_numerics mode;
    ref_kv kv;
    float *scratch_f;    /* [scratch_n] */
    double *scratch_d;   /* [scratch_n], used by linear() only */
    int64_t scratch_n;
} ref_ctx;

/* Four partial sums: lets the compiler vectorize without -ffast-math (all in double). */
static double dot(const double *a, const double *b, int64_t n)
{
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += a[i] * b[i];
        s1 += a[i + 1] * b[i + 1];
        s2 += a[i + 2] * b[i + 2];
        s3 += a[i + 3] * b[i + 3];
    }
    for (; i < n; i++)
        s0 += a[i] * b[i];
    return (s0 + s1) + (s2 + s3);
}

static double round_bf16(double x);

/* y = W x (W [out][in]). In deployed mode an FP8 weight first rounds x through a per-128-group
 * e4m3 quantization (official act_quant), when in % 128 == 0, and a weight of the bf16-dot chain
 * (docs/numerics.md) then rounds x to bf16 (the products are then exact in double; only the
 * summation order differs from the engine's). x and y must not overlap. */
static void linear(ref_ctx *c, const ref_mat *a, const double *x, double *y)
{
    const double *in = x;
    const bool aq = c->mode == REF_DEPLOYED && a->fp8 && a->cols % REF_ACT_GROUP == 0;
    const bool b16 = c->mode == REF_DEPLOYED && a->bf16dot;
    if (aq || b16) {
        for (int64_t j = 0; j < a->cols; j++)
            c->scratch_f[j] = (float)x[j];
        if (aq)
            dsacp_fake_quant_e4m3_groups(c->scratch_f, a->cols, REF_ACT_GROUP);
        for (int64_t j = 0; j < a->cols; j++)
            c->scratch_d[j] = b16 ? round_bf16(c->scratch_f[j]) : c->scratch_f[j];
        in = c->scratch_d;
    }
    for (int64_t i = 0; i < a->rows; i++)
        y[i] = dot(a->w + i * a->cols, in, a->cols);
}

/* y = x / sqrt(mean(x^2) + eps) * w (y may be x). */
static void rmsnorm(const double *x, const double *w, int64_t n, double eps, double *y)
{
    double r = 1.0 / sqrt(dot(x, x, n) / (double)n + eps);
    for (int64_t i = 0; i < n; i++)
        y[i] = x[i] * r * w[i];
}

/* y = (x - mean) / sqrt(var + eps) * w + b, biased variance (y may be x). */
static void layernorm(const double *x, const double *w, const double *b, int64_t n, double eps,
                      double *y)
{
    double mean = 0, var = 0;
    for (int64_t i = 0; i < n; i++)
        mean += x[i];
    mean /= (double)n;
    for (int64_t i = 0; i < n; i++)
        var += (x[i] - mean) * (x[i] - mean);
    var /= (double)n;
    double r = 1.0 / sqrt(var + eps);
    for (int64_t i = 0; i < n; i++)
        y[i] = (x[i] - mean) * r * w[i] + b[i];
}

static double silu(double x)
{
    return x / (1.0 + exp(-x));
}

static double round_bf16(double x)
{
    return dsacp_bf16_to_f32(dsacp_f32_to_bf16((float)x));
}

/* x <- e4m3 fake quantization of x in groups (through a float copy in scratch_f). */
static void fake_quant(ref_ctx *c, double *x, int64_t n, int64_t group)
{
    for (int64_t i = 0; i < n; i++)
        c->scratch_f[i] = (float)x[i];
    dsacp_fake_quant_e4m3_groups(c->scratch_f, n, group);
    for (int64_t i = 0; i < n; i++)
        x[i] = c->scratch_f[i];
}

/* Deployed indexer row: x <- e4m3 values of (Hadamard(x) * n^-0.5) / scale, *scale returned;
 * x * scale is the dequantized row. */
static void hadamard_quant(ref_ctx *c, double *x, int64_t n, double *scale)
{
    uint8_t q[1024];
    float s;
    for (int64_t i = 0; i < n; i++)
        c->scratch_f[i] = (float)x[i];
    dsacp_hadamard(c->scratch_f, n);
    dsacp_quant_e4m3_groups(c->scratch_f, n, n, q, &s);
    for (int64_t i = 0; i < n; i++)
        x[i] = dsacp_e4m3_to_f32(q[i]);
    *scale = s;
}

/* ------------------------------------------------------------------------------------------ */
/* RoPE (docs/dsa-math.md section 4), in double                                                    */
/* ------------------------------------------------------------------------------------------ */

#define REF_ROPE_MAX 512

typedef struct ref_rope {
    int64_t dim;
    double attention_factor;
    double inv_freq[REF_ROPE_MAX / 2];
} ref_rope;

static int rope_init(ref_rope *r, const dsacp_config *cfg)
{
    /* Written on every path (also the error one): gcc -O2/-O3 cannot see that dsacp_error()
     * returns non-zero and reports the caller's copy as maybe-uninitialized otherwise. */
    memset(r, 0, sizeof *r);
    int64_t dim = cfg->qk_rope_head_dim;
    if (dim <= 0 || dim % 2 || dim > REF_ROPE_MAX)
        return dsacp_error(DSACP_EUNSUPPORTED, "ref_forward: qk_rope_head_dim %lld", (long long)dim);
    double base = cfg->rope_theta;
    r->dim = dim;
    r->attention_factor = cfg->rope_attention_factor;
    double low = 0, high = 0, factor = 1;
    bool yarn = cfg->rope_type == DSACP_ROPE_YARN;
    if (yarn) {
        factor = cfg->rope_factor;
        double orig = cfg->rope_original_max_position > 0 ? cfg->rope_original_max_position
                                                          : (double)cfg->max_position_embeddings;
        double beta_fast = cfg->rope_beta_fast != 0 ? cfg->rope_beta_fast : 32;
        double beta_slow = cfg->rope_beta_slow != 0 ? cfg->rope_beta_slow : 1;
        /* corr(r) = dim ln(orig / (r 2 pi)) / (2 ln base); transformers: floor / ceil, then
         * max(low, 0), min(high, dim - 1). */
        low = floor((double)dim * log(orig / (beta_fast * 2 * REF_PI)) / (2 * log(base)));
        high = ceil((double)dim * log(orig / (beta_slow * 2 * REF_PI)) / (2 * log(base)));
        if (low < 0)
            low = 0;
        if (high > (double)(dim - 1))
            high = (double)(dim - 1);
        if (low == high)
            high += 0.001;
    }
    for (int64_t i = 0; i < dim / 2; i++) {
        double theta = pow(base, -2.0 * (double)i / (double)dim);
        if (yarn) {
            double ramp = ((double)i - low) / (high - low);
            ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
            r->inv_freq[i] = theta / factor * ramp + theta * (1 - ramp);
        } else {
            r->inv_freq[i] = theta;
        }
    }
    return 0;
}

static void rope_cos_sin(const ref_rope *r, int64_t pos, double *cs, double *sn)
{
    for (int64_t i = 0; i < r->dim / 2; i++) {
        double a = (double)pos * r->inv_freq[i];
        cs[i] = cos(a) * r->attention_factor;
        sn[i] = sin(a) * r->attention_factor;
    }
}

/* Interleaved pairs (2i, 2i+1): MLA q_pe and k_pe. */
static void rope_interleaved(double *x, int64_t dim, const double *cs, const double *sn)
{
    for (int64_t i = 0; i < dim / 2; i++) {
        double a = x[2 * i], b = x[2 * i + 1];
        x[2 * i] = a * cs[i] - b * sn[i];
        x[2 * i + 1] = a * sn[i] + b * cs[i];
    }
}

/* Rotate-half pairs (i, i + dim/2): indexer q and k. */
static void rope_rotate_half(double *x, int64_t dim, const double *cs, const double *sn)
{
    int64_t h = dim / 2;
    for (int64_t i = 0; i < h; i++) {
        double a = x[i], b = x[i + h];
        x[i] = a * cs[i] - b * sn[i];
        x[i + h] = b * cs[i] + a * sn[i];
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Attention layer (docs/dsa-math.md section 3)                                                    */
/* ------------------------------------------------------------------------------------------ */

typedef struct ref_attn_w {
    ref_mat q_a, q_a_norm, q_b, kv_a, kv_a_norm, kv_b, o;
    ref_mat wq_b, wk, k_norm_w, k_norm_b, weights_proj;
} ref_attn_w;

static void attn_w_free(ref_attn_w *w)
{
    ref_mat *all[] = {&w->q_a, &w->q_a_norm, &w->q_b, &w->kv_a, &w->kv_a_norm, &w->kv_b, &w->o,
                      &w->wq_b, &w->wk, &w->k_norm_w, &w->k_norm_b, &w->weights_proj};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        mat_free(all[i]);
}

static int attn_w_load(const dsacp_model *m, const dsacp_config *cfg, int64_t L, ref_attn_w *w)
{
    int64_t D = cfg->hidden_size, H = cfg->num_attention_heads, ql = cfg->q_lora_rank;
    int64_t kvl = cfg->kv_lora_rank, nope = cfg->qk_nope_head_dim, rope = cfg->qk_rope_head_dim;
    int64_t vd = cfg->v_head_dim, Hi = cfg->index_n_heads, di = cfg->index_head_dim;
    long long l = (long long)L;
    int rc;
    memset(w, 0, sizeof *w);
#define REF_LOAD(dst, r, c_, suffix)                                                          \
    do {                                                                                      \
        if ((rc = mat_load(m, dst, r, c_, "model.layers.%lld.self_attn.%s", l, suffix)))     \
            goto fail;                                                                        \
    } while (0)
    REF_LOAD(&w->q_a, ql, D, "q_a_proj.weight");
    REF_LOAD(&w->q_a_norm, 1, ql, "q_a_layernorm.weight");
    REF_LOAD(&w->q_b, H * (nope + rope), ql, "q_b_proj.weight");
    REF_LOAD(&w->kv_a, kvl + rope, D, "kv_a_proj_with_mqa.weight");
    REF_LOAD(&w->kv_a_norm, 1, kvl, "kv_a_layernorm.weight");
    REF_LOAD(&w->kv_b, H * (nope + vd), kvl, "kv_b_proj.weight");
    REF_LOAD(&w->o, D, H * vd, "o_proj.weight");
    REF_LOAD(&w->wq_b, Hi * di, ql, "indexer.wq_b.weight");
    REF_LOAD(&w->wk, di, D, "indexer.wk.weight");
    REF_LOAD(&w->k_norm_w, 1, di, "indexer.k_norm.weight");
    REF_LOAD(&w->k_norm_b, 1, di, "indexer.k_norm.bias");
    REF_LOAD(&w->weights_proj, Hi, D, "indexer.weights_proj.weight");
#undef REF_LOAD
    return 0;
fail:
    attn_w_free(w);
    return rc;
}

typedef struct ref_score {
    double score;
    int64_t pos;
} ref_score;

/* Descending score, then ascending position (the lower position wins a tie). */
static int score_cmp(const void *a, const void *b)
{
    const ref_score *x = a, *y = b;
    if (x->score > y->score)
        return -1;
    if (x->score < y->score)
        return 1;
    return (x->pos > y->pos) - (x->pos < y->pos);
}

static int pos_cmp(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* One attention layer over the whole sequence: x [n][D] (already RMS-normed) -> out [n][D].
 * topk [n][index_topk] and gap [n] may be NULL. */
static int ref_attention(ref_ctx *c, const ref_attn_w *w, const double *x, int64_t n, double *out,
                         int32_t *topk, double *gap)
{
    const dsacp_config *cfg = c->cfg;
    int64_t D = cfg->hidden_size, H = cfg->num_attention_heads, ql = cfg->q_lora_rank;
    int64_t kvl = cfg->kv_lora_rank, nope = cfg->qk_nope_head_dim, rope = cfg->qk_rope_head_dim;
    int64_t vd = cfg->v_head_dim, Hi = cfg->index_n_heads, di = cfg->index_head_dim;
    int64_t K = cfg->index_topk, qh = nope + rope;
    bool deployed = c->mode == REF_DEPLOYED;
    int rc = 0;

    ref_rope rp;
    if ((rc = rope_init(&rp, cfg)))
        return rc;

    /* Per-sequence caches and per-token work arrays. */
    double *qr = dsacp_alloc((size_t)(n * ql) * sizeof(double));     /* [n][ql] */
    double *lat = dsacp_alloc((size_t)(n * kvl) * sizeof(double));   /* c  [n][kvl] */
    double *kpe = dsacp_alloc((size_t)(n * rope) * sizeof(double));  /* k_pe [n][rope] */
    double *ki = dsacp_alloc((size_t)(n * di) * sizeof(double));     /* indexer keys [n][di] */
    double *ks = dsacp_alloc((size_t)n * sizeof(double));            /* deployed key scales */
    double *kv = dsacp_alloc((size_t)(kvl + rope) * sizeof(double));
    double *q = dsacp_alloc((size_t)(H * qh) * sizeof(double));
    double *qabs = dsacp_alloc((size_t)(H * kvl) * sizeof(double));
    double *qi = dsacp_alloc((size_t)(Hi * di) * sizeof(double));
    double *qs = dsacp_alloc((size_t)Hi * sizeof(double));
    double *wh = dsacp_alloc((size_t)Hi * sizeof(double));
    ref_score *sc = dsacp_alloc((size_t)n * sizeof(ref_score));
    int64_t *sel = dsacp_alloc((size_t)n * sizeof(int64_t));
    double *prob = dsacp_alloc((size_t)n * sizeof(double));
    double *o = dsacp_alloc((size_t)kvl * sizeof(double));
    double *v = dsacp_alloc((size_t)(H * vd) * sizeof(double));
    double cs[REF_ROPE_MAX / 2], sn[REF_ROPE_MAX / 2];
    if (!qr || !lat || !kpe || !ki || !ks || !kv || !q || !qabs || !qi || !qs || !wh || !sc ||
        !sel || !prob || !o || !v) {
        rc = dsacp_error(DSACP_ENOMEM, "ref_forward: no memory for the attention arrays");
        goto done;
    }

    /* Steps 1, 2, 4, 5 (keys): everything cached at each position. Causality makes it
     * equivalent to computing them as each token arrives. */
    for (int64_t p = 0; p < n; p++) {
        const double *xp = x + p * D;
        rope_cos_sin(&rp, p, cs, sn);
        /* qr = RMSNorm(q_a_proj x) */
        linear(c, &w->q_a, xp, qr + p * ql);
        rmsnorm(qr + p * ql, w->q_a_norm.w, ql, REF_SUBLAYER_EPS, qr + p * ql);
        /* [c | k_pe] = kv_a_proj_with_mqa x; c = RMSNorm(c); RoPE (interleaved) on k_pe */
        linear(c, &w->kv_a, xp, kv);
        double *cp = lat + p * kvl, *kp = kpe + p * rope;
        rmsnorm(kv, w->kv_a_norm.w, kvl, REF_SUBLAYER_EPS, cp);
        memcpy(kp, kv + kvl, (size_t)rope * sizeof(double));
        rope_interleaved(kp, rope, cs, sn);
        /* What the cache holds is what attention reads. */
        if (c->kv == REF_KV_FP8) {
            fake_quant(c, cp, kvl, REF_KV_GROUP);
        } else if (c->kv == REF_KV_BF16) {
            for (int64_t j = 0; j < kvl; j++)
                cp[j] = round_bf16(cp[j]);
        }
        if (c->kv != REF_KV_F32) {
            for (int64_t j = 0; j < rope; j++)
                kp[j] = round_bf16(kp[j]);
        }
        /* Deployed sparse MLA reads the latents as bf16 (the identity for the bf16 and
         * fp8_ds_mla caches; a rounding for the f32 one). */
        if (deployed && c->kv == REF_KV_F32) {
            for (int64_t j = 0; j < kvl; j++)
                cp[j] = round_bf16(cp[j]);
            for (int64_t j = 0; j < rope; j++)
                kp[j] = round_bf16(kp[j]);
        }
        /* ki = LayerNorm(wk x); rotate-half RoPE on its first rope dims */
        double *kip = ki + p * di;
        linear(c, &w->wk, xp, kip);
        layernorm(kip, w->k_norm_w.w, w->k_norm_b.w, di, REF_SUBLAYER_EPS, kip);
        rope_rotate_half(kip, rope, cs, sn);
        ks[p] = 1;
        if (deployed)
            hadamard_quant(c, kip, di, &ks[p]);
    }

    /* Per query position: indexer scores, top-k, sparse MLA over the selected set. */
    for (int64_t p = 0; p < n; p++) {
        const double *xp = x + p * D;
        const double *qrp = qr + p * ql;
        rope_cos_sin(&rp, p, cs, sn);

        /* Indexer query and head weights. */
        linear(c, &w->wq_b, qrp, qi);
        linear(c, &w->weights_proj, xp, wh);
        for (int64_t h = 0; h < Hi; h++) {
            double *qih = qi + h * di;
            rope_rotate_half(qih, rope, cs, sn);
            wh[h] *= 1.0 / sqrt((double)Hi);
            qs[h] = 1;
            if (deployed)
                hadamard_quant(c, qih, di, &qs[h]);
            /* w'[h] = w[h] * q_scale[h] * di^-0.5 (q_scale = 1 in exact mode) */
            wh[h] *= qs[h] / sqrt((double)di);
        }
        /* I(p, s) = k_scale[s] * sum_h ReLU(qi[h] . ki[s]) * w'[h] */
        for (int64_t s = 0; s <= p; s++) {
            double I = 0;
            for (int64_t h = 0; h < Hi; h++) {
                double d = dot(qi + h * di, ki + s * di, di);
                I += (d > 0 ? d : 0) * wh[h];
            }
            sc[s].score = I * ks[s];
            sc[s].pos = s;
        }
        qsort(sc, (size_t)(p + 1), sizeof sc[0], score_cmp);
        int64_t nsel = p + 1 < K ? p + 1 : K;
        for (int64_t i = 0; i < nsel; i++)
            sel[i] = sc[i].pos;
        qsort(sel, (size_t)nsel, sizeof sel[0], pos_cmp);
        if (topk) {
            for (int64_t i = 0; i < K; i++)
                topk[p * K + i] = i < nsel ? (int32_t)sel[i] : -1;
        }
        if (gap) {
            if (p + 1 <= K) {
                gap[p] = INFINITY;
            } else {
                double sk = sc[K - 1].score, sk1 = sc[K].score;
                double den = fabs(sk) > 1e-30 ? fabs(sk) : 1e-30;
                gap[p] = (sk - sk1) / den;
            }
        }

        /* MLA query: q = q_b_proj qr = [H][nope | rope]; interleaved RoPE on the rope part. */
        linear(c, &w->q_b, qrp, q);
        for (int64_t h = 0; h < H; h++)
            rope_interleaved(q + h * qh + nope, rope, cs, sn);
        /* q_abs[h] = q_nope[h] . W_UK[h]  (W_UK[h] = kv_b rows h*(nope+v) .. +nope-1) */
        for (int64_t h = 0; h < H; h++) {
            const double *wuk = w->kv_b.w + h * (nope + vd) * kvl;
            for (int64_t j = 0; j < kvl; j++) {
                double s = 0;
                for (int64_t d = 0; d < nope; d++)
                    s += q[h * qh + d] * wuk[d * kvl + j];
                qabs[h * kvl + j] = deployed ? round_bf16(s) : s;
            }
        }
        /* Deployed: the query is rounded to bf16 too (docs/numerics.md, sparse MLA). */
        if (deployed)
            for (int64_t h = 0; h < H; h++)
                for (int64_t d = 0; d < rope; d++)
                    q[h * qh + nope + d] = round_bf16(q[h * qh + nope + d]);
        for (int64_t h = 0; h < H; h++) {
            /* logits over the selected set, softmax, o = sum prob c */
            double mx = -INFINITY;
            for (int64_t i = 0; i < nsel; i++) {
                int64_t s = sel[i];
                double lg = (dot(qabs + h * kvl, lat + s * kvl, kvl) +
                             dot(q + h * qh + nope, kpe + s * rope, rope)) *
                            cfg->softmax_scale;
                prob[i] = lg;
                if (lg > mx)
                    mx = lg;
            }
            double sum = 0;
            for (int64_t i = 0; i < nsel; i++) {
                prob[i] = exp(prob[i] - mx);
                sum += prob[i];
            }
            for (int64_t j = 0; j < kvl; j++)
                o[j] = 0;
            for (int64_t i = 0; i < nsel; i++) {
                const double *cs_ = lat + sel[i] * kvl;
                double pr = prob[i] / sum; /* fp32 probabilities in both modes */
                for (int64_t j = 0; j < kvl; j++)
                    o[j] += pr * cs_[j];
            }
            /* v[h] = W_UV[h] o */
            const double *wuv = w->kv_b.w + (h * (nope + vd) + nope) * kvl;
            for (int64_t j = 0; j < vd; j++)
                v[h * vd + j] = dot(wuv + j * kvl, o, kvl);
        }
        linear(c, &w->o, v, out + p * D);
    }

done:
    dsacp_free(qr);
    dsacp_free(lat);
    dsacp_free(kpe);
    dsacp_free(ki);
    dsacp_free(ks);
    dsacp_free(kv);
    dsacp_free(q);
    dsacp_free(qabs);
    dsacp_free(qi);
    dsacp_free(qs);
    dsacp_free(wh);
    dsacp_free(sc);
    dsacp_free(sel);
    dsacp_free(prob);
    dsacp_free(o);
    dsacp_free(v);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* MLPs (docs/dsa-math.md section 7)                                                               */
/* ------------------------------------------------------------------------------------------ */

typedef struct ref_mlp_w {
    ref_mat gate, up, down;
} ref_mlp_w;

static void mlp_w_free(ref_mlp_w *w)
{
    mat_free(&w->gate);
    mat_free(&w->up);
    mat_free(&w->down);
}

/* prefix: "model.layers.L.mlp" or "...mlp.experts.E" or "...mlp.shared_experts". */
static int mlp_w_load(const dsacp_model *m, const char *prefix, int64_t D, int64_t inter,
                      ref_mlp_w *w)
{
    int rc;
    memset(w, 0, sizeof *w);
    if ((rc = mat_load(m, &w->gate, inter, D, "%s.gate_proj.weight", prefix)) ||
        (rc = mat_load(m, &w->up, inter, D, "%s.up_proj.weight", prefix)) ||
        (rc = mat_load(m, &w->down, D, inter, "%s.down_proj.weight", prefix))) {
        mlp_w_free(w);
        return rc;
    }
    return 0;
}

/* y = down(silu(gate x) * up x); tmp has 2 * inter doubles. */
static void mlp(ref_ctx *c, const ref_mlp_w *w, const double *x, double *y, double *tmp)
{
    int64_t inter = w->gate.rows;
    double *g = tmp, *u = tmp + inter;
    linear(c, &w->gate, x, g);
    linear(c, &w->up, x, u);
    for (int64_t i = 0; i < inter; i++)
        g[i] = silu(g[i]) * u[i];
    linear(c, &w->down, g, y);
}

typedef struct ref_moe_w {
    ref_mat router, bias;
    ref_mlp_w *experts; /* [E] */
    ref_mlp_w shared;
    bool has_shared;
    int64_t E;
} ref_moe_w;

static void moe_w_free(ref_moe_w *w)
{
    mat_free(&w->router);
    mat_free(&w->bias);
    if (w->experts)
        for (int64_t e = 0; e < w->E; e++)
            mlp_w_free(&w->experts[e]);
    dsacp_free(w->experts);
    w->experts = NULL;
    if (w->has_shared)
        mlp_w_free(&w->shared);
}

static int moe_w_load(const dsacp_model *m, const dsacp_config *cfg, int64_t L, ref_moe_w *w)
{
    int64_t D = cfg->hidden_size, E = cfg->n_routed_experts, mi = cfg->moe_intermediate_size;
    long long l = (long long)L;
    char prefix[160];
    int rc;
    memset(w, 0, sizeof *w);
    w->E = E;
    if ((rc = mat_load(m, &w->router, E, D, "model.layers.%lld.mlp.gate.weight", l)) ||
        (rc = mat_load(m, &w->bias, 1, E, "model.layers.%lld.mlp.gate.e_score_correction_bias", l)))
        goto fail;
    w->router.bf16dot = false; /* the engine's router is f32 in both modes */
    w->experts = dsacp_calloc((size_t)E, sizeof(ref_mlp_w));
    if (!w->experts) {
        rc = dsacp_error(DSACP_ENOMEM, "ref_forward: no memory for experts");
        goto fail;
    }
    for (int64_t e = 0; e < E; e++) {
        snprintf(prefix, sizeof prefix, "model.layers.%lld.mlp.experts.%lld", l, (long long)e);
        if ((rc = mlp_w_load(m, prefix, D, mi, &w->experts[e])))
            goto fail;
    }
    if (cfg->n_shared_experts > 0) {
        snprintf(prefix, sizeof prefix, "model.layers.%lld.mlp.shared_experts", l);
        if ((rc = mlp_w_load(m, prefix, D, mi * cfg->n_shared_experts, &w->shared)))
            goto fail;
        w->has_shared = true;
    }
    return 0;
fail:
    moe_w_free(w);
    return rc;
}

/* DeepSeek-V3 routing: s = sigmoid(gate x), b = s + bias; group score = sum of the top-2 b of
 * the group; keep topk_group groups; pick num_experts_per_tok experts by b among them; weights
 * = s (normalized by sum + 1e-20 when norm_topk_prob) * routed_scaling_factor. Ties go to the
 * lower index. y = sum weight * expert(x) + shared(x). */
static void moe(ref_ctx *c, const ref_moe_w *w, const double *x, double *y, double *tmp,
                double *ey, double *s, double *b, ref_score *rank)
{
    const dsacp_config *cfg = c->cfg;
    int64_t D = cfg->hidden_size, E = w->E;
    int64_t G = cfg->n_group > 0 ? cfg->n_group : 1;
    int64_t per = E / G;
    int64_t tg = cfg->topk_group > 0 && cfg->topk_group < G ? cfg->topk_group : G;
    int64_t k = cfg->num_experts_per_tok;

    linear(c, &w->router, x, s);
    for (int64_t e = 0; e < E; e++) {
        s[e] = 1.0 / (1.0 + exp(-s[e]));
        b[e] = s[e] + w->bias.w[e];
    }
    /* Group scores: sum of the (up to) two largest b in each group. */
    for (int64_t g = 0; g < G; g++) {
        double m1 = -INFINITY, m2 = -INFINITY;
        for (int64_t j = 0; j < per; j++) {
            double v = b[g * per + j];
            if (v > m1) {
                m2 = m1;
                m1 = v;
            } else if (v > m2) {
                m2 = v;
            }
        }
        rank[g].score = per >= 2 ? m1 + m2 : m1;
        rank[g].pos = g;
    }
    qsort(rank, (size_t)G, sizeof rank[0], score_cmp);
    /* Candidates: experts of the kept groups. */
    bool keep[4096] = {false};
    for (int64_t i = 0; i < tg && i < 4096; i++)
        keep[rank[i].pos] = true;
    int64_t ncand = 0;
    for (int64_t e = 0; e < E; e++) {
        if (keep[e / per]) {
            rank[ncand].score = b[e];
            rank[ncand].pos = e;
            ncand++;
        }
    }
    qsort(rank, (size_t)ncand, sizeof rank[0], score_cmp);
    if (k > ncand)
        k = ncand;
    double wsum = 0;
    for (int64_t i = 0; i < k; i++)
        wsum += s[rank[i].pos];
    for (int64_t d = 0; d < D; d++)
        y[d] = 0;
    for (int64_t i = 0; i < k; i++) {
        int64_t e = rank[i].pos;
        double wt = s[e];
        if (cfg->norm_topk_prob)
            wt /= wsum + 1e-20;
        wt *= cfg->routed_scaling_factor;
        mlp(c, &w->experts[e], x, ey, tmp);
        for (int64_t d = 0; d < D; d++)
            y[d] += wt * ey[d];
    }
    if (w->has_shared) {
        mlp(c, &w->shared, x, ey, tmp);
        for (int64_t d = 0; d < D; d++)
            y[d] += ey[d];
    }
}

/* ------------------------------------------------------------------------------------------ */
/* The stack (docs/dsa-math.md section 7)                                                          */
/* ------------------------------------------------------------------------------------------ */

static int64_t max64(int64_t a, int64_t b)
{
    return a > b ? a : b;
}

/* The work buffers of one run over n rows. */
typedef struct ref_bufs {
    double *h, *x, *y; /* [n][D]: the residual stream, a normed copy, a sublayer's output */
    double *tmp;       /* [2 * inter_max] */
    double *ey, *cat;  /* [D], [2D] */
    double *rs, *rb;   /* [E] router scores */
    ref_score *rank;   /* [max(E, G)] */
    float *row;        /* [D] */
} ref_bufs;

static void run_free(ref_ctx *c, ref_bufs *b)
{
    dsacp_free(b->h), dsacp_free(b->x), dsacp_free(b->y), dsacp_free(b->tmp), dsacp_free(b->ey);
    dsacp_free(b->cat), dsacp_free(b->rs), dsacp_free(b->rb), dsacp_free(b->rank), dsacp_free(b->row);
    dsacp_free(c->scratch_f), dsacp_free(c->scratch_d);
}

/* Checks the arguments against the model (layers [0, layers) run; ids in [0, vocab)) and sets up
 * the context and the buffers for n rows. `who` names the caller in messages. */
static int run_init(const dsacp_model *m, ref_numerics mode, ref_kv kv, const int32_t *ids, int64_t n,
                    int64_t layers, const char *who, ref_ctx *c, ref_bufs *b)
{
    memset(b, 0, sizeof *b);
    memset(c, 0, sizeof *c);
    if (!m || !ids || n <= 0 || (mode != REF_EXACT && mode != REF_DEPLOYED) ||
        (kv != REF_KV_F32 && kv != REF_KV_BF16 && kv != REF_KV_FP8))
        return dsacp_error(DSACP_EINVAL, "%s: invalid arguments", who);
    const dsacp_config *cfg = dsacp_model_config(m);
    int64_t D = cfg->hidden_size, V = cfg->vocab_size, E = cfg->n_routed_experts;
    int64_t K = cfg->index_topk, di = cfg->index_head_dim, G = cfg->n_group > 0 ? cfg->n_group : 1;
    if (K <= 0 || cfg->qk_rope_head_dim > di)
        return dsacp_error(DSACP_EUNSUPPORTED, "%s: index_topk %lld, rope %lld > di %lld", who, (long long)K,
                           (long long)cfg->qk_rope_head_dim, (long long)di);
    if (mode == REF_DEPLOYED && (di & (di - 1) || di > 1024))
        return dsacp_error(DSACP_EUNSUPPORTED,
                           "%s: deployed mode needs a power-of-two index_head_dim <= 1024, got %lld", who,
                           (long long)di);
    if (kv == REF_KV_FP8 && cfg->kv_lora_rank % REF_KV_GROUP)
        return dsacp_error(DSACP_EUNSUPPORTED, "%s: fp8 kv needs kv_lora_rank %% 128 == 0, got %lld", who,
                           (long long)cfg->kv_lora_rank);
    for (int64_t L = 0; L < layers; L++)
        if (dsacp_config_layer_is_moe(cfg, L) && (E <= 0 || E % G || G > 4096))
            return dsacp_error(DSACP_EUNSUPPORTED, "%s: %lld experts in %lld groups", who, (long long)E,
                               (long long)G);
    for (int64_t p = 0; p < n; p++)
        if (ids[p] < 0 || ids[p] >= V)
            return dsacp_error(DSACP_EINVAL, "%s: token id %d at %lld outside [0, %lld)", who, ids[p],
                               (long long)p, (long long)V);

    int64_t inter_max = max64(cfg->intermediate_size, cfg->moe_intermediate_size * max64(cfg->n_shared_experts, 1));
    int64_t scratch_n = max64(max64(2 * D, cfg->q_lora_rank), max64(cfg->num_attention_heads * cfg->v_head_dim, inter_max));
    scratch_n = max64(max64(scratch_n, cfg->kv_lora_rank), di);
    *c = (ref_ctx){.m = m, .cfg = cfg, .mode = mode, .kv = kv, .scratch_n = scratch_n};
    b->h = dsacp_alloc((size_t)(n * D) * sizeof(double));
    b->x = dsacp_alloc((size_t)(n * D) * sizeof(double));
    b->y = dsacp_alloc((size_t)(n * D) * sizeof(double));
    b->tmp = dsacp_alloc((size_t)(2 * inter_max) * sizeof(double));
    b->ey = dsacp_alloc((size_t)D * sizeof(double));
    b->cat = dsacp_alloc((size_t)(2 * D) * sizeof(double));
    b->rs = dsacp_alloc((size_t)max64(E, 1) * sizeof(double));
    b->rb = dsacp_alloc((size_t)max64(E, 1) * sizeof(double));
    b->rank = dsacp_alloc((size_t)max64(max64(E, G), 1) * sizeof(ref_score));
    b->row = dsacp_alloc((size_t)D * sizeof(float));
    c->scratch_f = dsacp_alloc((size_t)scratch_n * sizeof(float));
    c->scratch_d = dsacp_alloc((size_t)scratch_n * sizeof(double));
    if (!b->h || !b->x || !b->y || !b->tmp || !b->ey || !b->cat || !b->rs || !b->rb || !b->rank || !b->row ||
        !c->scratch_f || !c->scratch_d) {
        run_free(c, b);
        return dsacp_error(DSACP_ENOMEM, "%s: no memory for %lld tokens", who, (long long)n);
    }
    return 0;
}

/* out[p] = the row ids[p] of the embedding table `name` ([vocab][D]), in double. */
static int embed_rows(ref_ctx *c, ref_bufs *b, const char *name, const int32_t *ids, int64_t n, double *out)
{
    const int64_t D = c->cfg->hidden_size, V = c->cfg->vocab_size;
    const dsacp_weight *emb = dsacp_model_weight(c->m, name);
    if (!emb)
        return dsacp_error(DSACP_ENOTFOUND, "ref_forward: weight '%s' not found", name);
    if (emb->rows != V || emb->cols != D)
        return dsacp_error(DSACP_ESHAPE, "ref_forward: %s is [%lld, %lld]", name, (long long)emb->rows,
                           (long long)emb->cols);
    for (int64_t p = 0; p < n; p++) {
        dsacp_weight_row_f32(emb, ids[p], b->row);
        for (int64_t d = 0; d < D; d++)
            out[p * D + d] = b->row[d];
    }
    return 0;
}

/* y[p] = the layer's MLP (dense or MoE) of x[p], p < n. */
static int ref_mlp_rows(ref_ctx *c, ref_bufs *b, int64_t L, int64_t n)
{
    const dsacp_config *cfg = c->cfg;
    const int64_t D = cfg->hidden_size;
    int rc;
    if (dsacp_config_layer_is_moe(cfg, L)) {
        ref_moe_w mw;
        if ((rc = moe_w_load(c->m, cfg, L, &mw)))
            return rc;
        for (int64_t p = 0; p < n; p++)
            moe(c, &mw, b->x + p * D, b->y + p * D, b->tmp, b->ey, b->rs, b->rb, b->rank);
        moe_w_free(&mw);
        return 0;
    }
    ref_mlp_w dw;
    char prefix[96];
    snprintf(prefix, sizeof prefix, "model.layers.%lld.mlp", (long long)L);
    if ((rc = mlp_w_load(c->m, prefix, D, cfg->intermediate_size, &dw)))
        return rc;
    for (int64_t p = 0; p < n; p++)
        mlp(c, &dw, b->x + p * D, b->y + p * D, b->tmp);
    mlp_w_free(&dw);
    return 0;
}

/* Decoder layer L over the residual stream b->h [n][D] (positions 0..n-1), in place:
 * h += attn(RMSNorm(h)); h += mlp(RMSNorm(h)). topk [n][index_topk] and gap [n] may be NULL. */
static int ref_layer(ref_ctx *c, ref_bufs *b, int64_t L, int64_t n, int32_t *topk, double *gap)
{
    const dsacp_config *cfg = c->cfg;
    const int64_t D = cfg->hidden_size;
    ref_mat in_norm = {0}, post_norm = {0};
    ref_attn_w aw;
    int rc = mat_load(c->m, &in_norm, 1, D, "model.layers.%lld.input_layernorm.weight", (long long)L);
    if (!rc)
        rc = mat_load(c->m, &post_norm, 1, D, "model.layers.%lld.post_attention_layernorm.weight", (long long)L);
    if (!rc && !(rc = attn_w_load(c->m, cfg, L, &aw))) {
        for (int64_t p = 0; p < n; p++)
            rmsnorm(b->h + p * D, in_norm.w, D, cfg->rms_norm_eps, b->x + p * D);
        rc = ref_attention(c, &aw, b->x, n, b->y, topk, gap);
        attn_w_free(&aw);
    }
    if (!rc) {
        for (int64_t i = 0; i < n * D; i++)
            b->h[i] += b->y[i];
        for (int64_t p = 0; p < n; p++)
            rmsnorm(b->h + p * D, post_norm.w, D, cfg->rms_norm_eps, b->x + p * D);
        rc = ref_mlp_rows(c, b, L, n);
    }
    if (!rc)
        for (int64_t i = 0; i < n * D; i++)
            b->h[i] += b->y[i];
    mat_free(&in_norm);
    mat_free(&post_norm);
    return rc;
}

/* normed[p] = RMSNorm(h[p]; norm_name) and logits[p] = head normed[p] (either may be NULL). */
static int head_rows(ref_ctx *c, ref_bufs *b, const char *norm_name, const char *head_name, int64_t n,
                     double *normed, double *logits)
{
    const int64_t D = c->cfg->hidden_size, V = c->cfg->vocab_size;
    ref_mat norm = {0}, head = {0};
    int rc = mat_load(c->m, &norm, 1, D, "%s", norm_name);
    if (!rc && logits)
        rc = mat_load(c->m, &head, V, D, "%s", head_name);
    head.bf16dot = false; /* the lm_head is f32 in both modes */
    for (int64_t p = 0; p < n && !rc; p++) {
        rmsnorm(b->h + p * D, norm.w, D, c->cfg->rms_norm_eps, b->x + p * D);
        if (normed)
            memcpy(normed + p * D, b->x + p * D, (size_t)D * sizeof(double));
        if (logits)
            linear(c, &head, b->x + p * D, logits + p * V);
    }
    mat_free(&norm);
    mat_free(&head);
    return rc;
}

int ref_forward_ex(const dsacp_model *m, ref_numerics mode, ref_kv kv, const int32_t *ids, int64_t n,
                   double *logits, int32_t *topk, double *gap, double *hidden)
{
    ref_ctx c;
    ref_bufs b;
    const dsacp_config *cfg = m ? dsacp_model_config(m) : NULL;
    int rc = run_init(m, mode, kv, ids, n, cfg ? cfg->num_hidden_layers : 0, "ref_forward", &c, &b);
    if (rc)
        return rc;
    const int64_t NL = cfg->num_hidden_layers, K = cfg->index_topk;
    rc = embed_rows(&c, &b, "model.embed_tokens.weight", ids, n, b.h);
    for (int64_t L = 0; L < NL && !rc; L++)
        rc = ref_layer(&c, &b, L, n, topk ? topk + L * n * K : NULL, gap ? gap + L * n : NULL);
    if (!rc && (logits || hidden))
        rc = head_rows(&c, &b, "model.norm.weight", "lm_head.weight", n, hidden, logits);
    run_free(&c, &b);
    return rc;
}

int ref_forward(const dsacp_model *m, ref_numerics mode, ref_kv kv, const int32_t *ids, int64_t n,
                double *logits, int32_t *topk, double *gap)
{
    return ref_forward_ex(m, mode, kv, ids, n, logits, topk, gap, NULL);
}

/* ------------------------------------------------------------------------------------------ */
/* The MTP layer (docs/mtp.md)                                                                */
/* ------------------------------------------------------------------------------------------ */

/* b->h[p] = eh_proj [enorm(embed(ids[p])) (zero at p = 0); hnorm(hidden[p])]. */
static int mtp_input(ref_ctx *c, ref_bufs *b, int64_t M, const int32_t *ids, const double *hidden, int64_t n)
{
    const int64_t D = c->cfg->hidden_size;
    const double eps = c->cfg->rms_norm_eps;
    char name[160];
    ref_mat en = {0}, hn = {0}, eh = {0};
    snprintf(name, sizeof name, "model.layers.%lld.embed_tokens.weight", (long long)M);
    if (!dsacp_model_weight(c->m, name))
        snprintf(name, sizeof name, "model.embed_tokens.weight");
    int rc = embed_rows(c, b, name, ids, n, b->y); /* b->y: the embedding rows */
    if (!rc)
        rc = mat_load(c->m, &en, 1, D, "model.layers.%lld.enorm.weight", (long long)M);
    if (!rc)
        rc = mat_load(c->m, &hn, 1, D, "model.layers.%lld.hnorm.weight", (long long)M);
    if (!rc)
        rc = mat_load(c->m, &eh, D, 2 * D, "model.layers.%lld.eh_proj.weight", (long long)M);
    for (int64_t p = 0; p < n && !rc; p++) {
        if (p == 0) /* vLLM masks position 0's embedding; RMSNorm keeps the zero row zero */
            memset(b->y + p * D, 0, (size_t)D * sizeof(double));
        rmsnorm(b->y + p * D, en.w, D, eps, b->cat);
        rmsnorm(hidden + p * D, hn.w, D, eps, b->cat + D);
        linear(c, &eh, b->cat, b->h + p * D);
    }
    mat_free(&en);
    mat_free(&hn);
    mat_free(&eh);
    return rc;
}

int ref_mtp_forward(const dsacp_model *m, ref_numerics mode, ref_kv kv, const int32_t *ids, const double *hidden,
                    int64_t n, double *out, double *logits, int32_t *topk, double *gap)
{
    if (m && !dsacp_model_has_mtp(m))
        return dsacp_error(DSACP_EINVAL, "ref_mtp_forward: the model has no MTP layer");
    if (!hidden)
        return dsacp_error(DSACP_EINVAL, "ref_mtp_forward: hidden is NULL");
    ref_ctx c;
    ref_bufs b;
    const dsacp_config *cfg = m ? dsacp_model_config(m) : NULL;
    int rc = run_init(m, mode, kv, ids, n, cfg ? cfg->num_hidden_layers + 1 : 0, "ref_mtp_forward", &c, &b);
    if (rc)
        return rc;
    const int64_t M = cfg->num_hidden_layers, D = cfg->hidden_size;
    rc = mtp_input(&c, &b, M, ids, hidden, n);
    if (!rc)
        rc = ref_layer(&c, &b, M, n, topk, gap);
    if (!rc && out)
        memcpy(out, b.h, (size_t)(n * D) * sizeof(double));
    if (!rc && logits) {
        char norm[160], head[160];
        snprintf(norm, sizeof norm, "model.layers.%lld.shared_head.norm.weight", (long long)M);
        snprintf(head, sizeof head, "model.layers.%lld.shared_head.head.weight", (long long)M);
        if (!dsacp_model_weight(m, head))
            snprintf(head, sizeof head, "lm_head.weight");
        rc = head_rows(&c, &b, norm, head, n, NULL, logits);
    }
    run_free(&c, &b);
    return rc;
}
