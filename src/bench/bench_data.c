/*
 * bench_data.c -- the synthetic operands of the cases, generated in memory (nothing touches the
 * disk): unit-variance floats, FP8 or F32 weights, layer 0's attention weights (bound from a
 * model when there is one), the indexer's keys and queries, a paged cache holding a context.
 *
 * One generator: dsacp_rng. A fill draws one stream per chunk of 65536 elements, seeded by
 * (seed, chunk), so OpenMP threads fill their chunks independently and the values do not depend
 * on the number of threads.
 */
#include "bench/bench.h"
#include "core/core.h"

#include <math.h>
#include <string.h>

enum { CHUNK = 65536 };

static void chunk_rng(dsacp_rng *rng, uint64_t seed, int64_t chunk)
{
    dsacp_rng_seed(rng, seed * 0x100000001b3ull + (uint64_t)chunk);
}

void bench_fill_rng(float *x, int64_t n, dsacp_rng *rng, float scale)
{
    /* uniform in [-sqrt(3), sqrt(3)): unit variance, from the top 24 bits */
    for (int64_t i = 0; i < n; i++)
        x[i] = ((float)(dsacp_rng_u64(rng) >> 40) * (1.0f / 16777216.0f) - 0.5f) * 3.4641016f * scale;
}

void bench_fill(float *x, int64_t n, uint64_t seed, float scale)
{
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < (n + CHUNK - 1) / CHUNK; c++) {
        dsacp_rng rng;
        chunk_rng(&rng, seed, c);
        const int64_t end = (c + 1) * CHUNK < n ? (c + 1) * CHUNK : n;
        bench_fill_rng(x + c * CHUNK, end - c * CHUNK, &rng, scale);
    }
}

/* ---- weights ---- */

/* e4m3 codes of standard-normal samples, to draw FP8 weights from quickly. */
static uint8_t normal_e4m3[4096];

static void normal_table(void)
{
    static bool done;
    if (done) return;
    dsacp_rng rng;
    dsacp_rng_seed(&rng, 12345);
    for (int i = 0; i < 4096; i++) normal_e4m3[i] = dsacp_f32_to_e4m3((float)dsacp_rng_normal(&rng));
    done = true;
}

/* n e4m3 codes of N(0, 1) samples, four from each draw. */
static void fill_e4m3(uint8_t *d, int64_t n, uint64_t seed)
{
    normal_table();
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < (n + CHUNK - 1) / CHUNK; c++) {
        dsacp_rng rng;
        chunk_rng(&rng, seed, c);
        const int64_t end = (c + 1) * CHUNK < n ? (c + 1) * CHUNK : n;
        for (int64_t i = c * CHUNK; i < end; i += 4) {
            const uint64_t r = dsacp_rng_u64(&rng);
            for (int64_t k = 0; k < 4 && i + k < end; k++) d[i + k] = normal_e4m3[(r >> (16 * k)) & 4095];
        }
    }
}

int bench_weight_make(bench_weight *o, const char *name, int64_t rows, int64_t cols, bool fp8, uint64_t seed)
{
    memset(o, 0, sizeof *o);
    o->w.name = name;
    o->w.ndim = 2;
    o->w.rows = rows;
    o->w.cols = cols;
    const float sd = 1.0f / sqrtf((float)cols);
    const int64_t n = rows * cols;
    if (!fp8) {
        o->data = dsacp_calloc((size_t)n, sizeof(float));
        if (!o->data) return dsacp_error(DSACP_ENOMEM, "out of memory for weight %s", name);
        bench_fill(o->data, n, seed, sd);
        o->w.dtype = DSACP_F32;
        o->w.data = o->data;
        return DSACP_OK;
    }
    const int64_t sr = (rows + 127) / 128, sc = (cols + 127) / 128;
    o->data = dsacp_alloc((size_t)n);
    o->scale = dsacp_calloc((size_t)(sr * sc), sizeof(float));
    if (!o->data || !o->scale) return dsacp_error(DSACP_ENOMEM, "out of memory for weight %s", name);
    fill_e4m3(o->data, n, seed);
    for (int64_t i = 0; i < sr * sc; i++) o->scale[i] = sd;
    o->w.dtype = DSACP_F8_E4M3;
    o->w.data = o->data;
    o->w.scale = o->scale;
    o->w.scale_rows = sr;
    o->w.scale_cols = sc;
    o->w.scale_stride = sc;
    o->w.block = 128;
    return DSACP_OK;
}

void bench_weight_free(bench_weight *o)
{
    dsacp_free(o->data);
    dsacp_free(o->scale);
    memset(o, 0, sizeof *o);
}

int64_t bench_weight_bytes(const dsacp_weight *w)
{
    int64_t n = w->rows * w->cols * (int64_t)dsacp_dtype_size(w->dtype);
    if (w->dtype == DSACP_F8_E4M3) n += w->scale_rows * w->scale_cols * (int64_t)sizeof(float);
    return n;
}

/* ---- layer 0's weights ---- */

static float *norm_vector(int64_t n, uint64_t seed)
{
    float *v = dsacp_calloc((size_t)n, sizeof(float));
    if (!v) return NULL;
    bench_fill(v, n, seed, 0.05f);
    for (int64_t i = 0; i < n; i++) v[i] += 1.0f;
    return v;
}

/* The preset path fills the fields dsacp_dsa_weights_bind would (projection views, F32 norm
 * vectors and kv_b_f32 from dsacp_alloc), then lets the layer build its absorbed form, so that
 * dsacp_dsa_weights_release frees exactly what bind would have allocated. */
int bench_layer_weights_make(const bench_run *r, bench_layer_weights *lw)
{
    memset(lw, 0, sizeof *lw);
    if (r->opt->model) return dsacp_dsa_weights_bind(&lw->w, r->opt->model, 0);
    const dsacp_config *c = r->cfg;
    const int64_t D = c->hidden_size, H = c->num_attention_heads, ql = c->q_lora_rank, dc = c->kv_lora_rank;
    const int64_t dq = c->qk_nope_head_dim + c->qk_rope_head_dim, dr = c->qk_rope_head_dim, dv = c->v_head_dim;
    const int64_t Hi = c->index_n_heads, di = c->index_head_dim;
    int rc = DSACP_OK;
    if (!rc) rc = bench_weight_make(&lw->q_a, "q_a_proj", ql, D, true, 101);
    if (!rc) rc = bench_weight_make(&lw->q_b, "q_b_proj", H * dq, ql, true, 102);
    if (!rc) rc = bench_weight_make(&lw->kv_a, "kv_a_proj_with_mqa", dc + dr, D, true, 103);
    if (!rc) rc = bench_weight_make(&lw->kv_b, "kv_b_proj", H * (c->qk_nope_head_dim + dv), dc, true, 104);
    if (!rc) rc = bench_weight_make(&lw->o, "o_proj", D, H * dv, true, 105);
    if (!rc) rc = bench_weight_make(&lw->wq_b, "indexer.wq_b", Hi * di, ql, true, 106);
    if (!rc) rc = bench_weight_make(&lw->wk, "indexer.wk", di, D, true, 107);
    if (!rc) rc = bench_weight_make(&lw->wproj, "indexer.weights_proj", Hi, D, false, 108);
    if (rc) return rc;
    dsacp_dsa_weights *w = &lw->w;
    w->q_a = &lw->q_a.w, w->q_b = &lw->q_b.w, w->kv_a = &lw->kv_a.w, w->kv_b = &lw->kv_b.w;
    w->o = &lw->o.w, w->wq_b = &lw->wq_b.w, w->wk = &lw->wk.w, w->wproj = &lw->wproj.w;
    w->q_a_norm = norm_vector(ql, 111);
    w->kv_a_norm = norm_vector(dc, 112);
    w->k_norm_w = norm_vector(di, 113);
    w->k_norm_b = dsacp_calloc((size_t)di, sizeof(float));
    w->kv_b_f32 = dsacp_calloc((size_t)(lw->kv_b.w.rows * lw->kv_b.w.cols), sizeof(float));
    if (!w->q_a_norm || !w->kv_a_norm || !w->k_norm_w || !w->k_norm_b || !w->kv_b_f32)
        return dsacp_error(DSACP_ENOMEM, "out of memory for the layer weights");
    bench_fill(w->k_norm_b, di, 114, 0.05f);
    dsacp_weight_to_f32(w->kv_b, w->kv_b_f32);
    return dsacp_dsa_weights_absorb(w, c);
}

void bench_layer_weights_free(bench_layer_weights *lw)
{
    dsacp_dsa_weights_release(&lw->w);
    bench_weight *ow[] = {&lw->q_a, &lw->q_b, &lw->kv_a, &lw->kv_b, &lw->o, &lw->wq_b, &lw->wk, &lw->wproj};
    for (size_t i = 0; i < sizeof ow / sizeof *ow; i++) bench_weight_free(ow[i]);
    memset(lw, 0, sizeof *lw);
}
