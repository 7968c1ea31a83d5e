/*
 * bench_mla.c -- the "mla" case: sparse MLA for one decode token over min(context, index_topk)
 * selected latent rows, beside the reference product of the same two dense products
 * (S = Q K^T, O = P V): exact mode's f32 kernel (sparse_mla) and deployed mode's bf16-dot twin
 * (sparse_mla_deployed, dsacp_sparse_mla_bf16_ws) on latents with fp8_ds_mla's values (each
 * 128-group of the latent part e4m3 values times a power of two, the rope part bf16), each also
 * beside the bf16-dot peak (_peak) and the f32 FMA peak (_fma). The two kernels are timed
 * interleaved, each keeping its minimum (the shared VM's speed drifts between seconds).
 */
#include "bench/bench.h"
#include "core/core.h"
#include "numerics/numerics.h"

#include <stdio.h>

typedef struct mla_state {
    float *q, *kv, *o, *lse, *work;
    void *ws, *ws16; /* the two kernels' workspaces */
    size_t ws_bytes, ws16_bytes;
    int64_t n, H, dc, dr;
    float scale;
    int rc;
} mla_state;

static void mla_run(void *p)
{
    mla_state *s = p;
    const int rc = dsacp_sparse_mla_ws(s->q, s->kv, s->n, s->H, s->dc, s->dr, s->scale, s->o, s->lse, s->ws,
                                       s->ws_bytes);
    s->rc = s->rc ? s->rc : rc;
}

static void mla16_run(void *p)
{
    mla_state *s = p;
    const int rc = dsacp_sparse_mla_bf16_ws(s->q, s->kv, s->n, s->H, s->dc, s->dr, s->scale, s->o, s->lse, s->ws16,
                                            s->ws16_bytes);
    s->rc = s->rc ? s->rc : rc;
}

/* fp8_ds_mla's latent values: per row, the latent part's groups of 128 through e4m3 with a
 * power-of-two scale, the rope part rounded to bf16. */
static void fp8_latents(float *kv, int64_t n, int64_t dc, int64_t dr)
{
    for (int64_t s = 0; s < n; s++) {
        float *row = kv + s * (dc + dr);
        if (dc % 128 == 0) dsacp_fake_quant_e4m3_groups(row, dc, 128);
        else for (int64_t d = 0; d < dc; d++) row[d] = dsacp_bf16_to_f32(dsacp_f32_to_bf16(row[d]));
        for (int64_t d = dc; d < dc + dr; d++) row[d] = dsacp_bf16_to_f32(dsacp_f32_to_bf16(row[d]));
    }
}

static int setup(bench_run *r, void **state)
{
    const dsacp_config *c = r->cfg;
    mla_state *s = dsacp_calloc(1, sizeof *s);
    *state = s;
    if (!s) return DSACP_ENOMEM;
    s->H = c->num_attention_heads, s->dc = c->kv_lora_rank, s->dr = c->qk_rope_head_dim;
    s->n = r->opt->context < c->index_topk ? r->opt->context : c->index_topk;
    s->scale = (float)c->softmax_scale;
    const int64_t dk = s->dc + s->dr;
    s->q = dsacp_calloc((size_t)(s->H * dk), sizeof(float));
    s->kv = dsacp_calloc((size_t)(s->n * dk), sizeof(float));
    s->o = dsacp_calloc((size_t)(s->H * s->dc), sizeof(float));
    s->lse = dsacp_calloc((size_t)s->H, sizeof(float));
    s->work = dsacp_calloc((size_t)s->n, sizeof(float));
    s->ws_bytes = dsacp_sparse_mla_work_bytes(s->n, s->H, s->dc, s->dr);
    s->ws16_bytes = dsacp_sparse_mla_bf16_work_bytes(s->n, s->H, s->dc, s->dr);
    s->ws = dsacp_alloc(s->ws_bytes), s->ws16 = dsacp_alloc(s->ws16_bytes);
    if (!s->q || !s->kv || !s->o || !s->lse || !s->work || !s->ws || !s->ws16)
        return dsacp_error(DSACP_ENOMEM, "out of memory for the sparse MLA operands");
    bench_fill(s->q, s->H * dk, 21, 1), bench_fill(s->kv, s->n * dk, 22, 1);
    fp8_latents(s->kv, s->n, s->dc, s->dr);
    return DSACP_OK;
}

static void teardown(void *state)
{
    mla_state *s = state;
    if (!s) return;
    dsacp_free(s->q), dsacp_free(s->kv), dsacp_free(s->o), dsacp_free(s->lse), dsacp_free(s->work);
    dsacp_free(s->ws), dsacp_free(s->ws16);
    dsacp_free(s);
}

/* Q K^T over the selected rows, then P V over their latent part. */
static double work(const bench_run *r, int64_t n)
{
    const double H = (double)r->cfg->num_attention_heads, dc = (double)r->cfg->kv_lora_rank;
    const double dk = dc + (double)r->cfg->qk_rope_head_dim;
    return 2.0 * H * (double)n * dk + 2.0 * H * (double)n * dc;
}

/* The two kernels' best seconds per call, timed one after the other in every repetition. */
static void time_interleaved(const bench_run *r, mla_state *s, double best[2])
{
    const bench_fn fn[2] = {mla_run, mla16_run};
    int64_t inner[2];
    for (int k = 0; k < 2; k++) { /* warm-up; calls per timing of >= 20 ms */
        const double t0 = dsacp_now();
        fn[k](s);
        const double once = dsacp_now() - t0;
        inner[k] = once >= 0.02 ? 1 : (int64_t)(0.02 / (once > 1e-7 ? once : 1e-7)) + 1;
        best[k] = 1e30;
    }
    const int64_t reps = r->opt->reps < 5 ? 5 : r->opt->reps;
    for (int64_t rep = 0; rep < reps; rep++)
        for (int k = 0; k < 2; k++) {
            const double t0 = dsacp_now();
            for (int64_t it = 0; it < inner[k]; it++) fn[k](s);
            const double t = (dsacp_now() - t0) / (double)inner[k];
            best[k] = t < best[k] ? t : best[k];
        }
}

/* A kernel's rows: beside the reference, the bf16-dot peak and the f32 FMA peak. */
static void report(bench_run *r, const char *name, int64_t n, double t)
{
    char row[64];
    bench_work_rate(r, name, n, t, "sgemm_mla", r->sgemm_mla);
    snprintf(row, sizeof row, "%s_peak", name);
    bench_work_rate(r, row, n, t, r->peak_bf16dot > 0 ? "peak_bf16dot" : NULL, r->peak_bf16dot);
    snprintf(row, sizeof row, "%s_fma", name);
    bench_work_rate(r, row, n, t, r->peak_fma > 0 ? r->peak_fma_name : NULL, r->peak_fma);
    snprintf(row, sizeof row, "%s_time", name);
    bench_result(r, row, t * 1e3, "ms", NULL, 0, 0);
}

static int run(bench_run *r, void *state)
{
    mla_state *s = state;
    double best[2];
    time_interleaved(r, s, best);
    if (s->rc) return s->rc;
    report(r, "sparse_mla", s->n, best[0]);
    report(r, "sparse_mla_deployed", s->n, best[1]);
    bench_rate(r, "sparse_mla_deployed_vs_exact", best[0] / best[1], "x", NULL, 0);
    return DSACP_OK;
}

const bench_case bench_case_mla = {
    .name = "mla",
    .options = 1u << DSACP_BENCH_OPT_PRESET | 1u << DSACP_BENCH_OPT_CONTEXT | 1u << DSACP_BENCH_OPT_ISA,
    .ceilings = BENCH_CEIL_FMA | BENCH_CEIL_SGEMM_MLA,
    .setup = setup,
    .run = run,
    .teardown = teardown,
    .work = work,
    .work_unit = "flop",
};
