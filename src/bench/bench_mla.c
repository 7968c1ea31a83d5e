/*
 * bench_mla.c -- the "mla" case: sparse MLA for one decode token over min(context, index_topk)
 * selected latent rows, beside the reference product of the same two dense products
 * (S = Q K^T, O = P V).
 */
#include "bench/bench.h"
#include "core/core.h"

typedef struct mla_state {
    float *q, *kv, *o, *lse, *work;
    int64_t n, H, dc, dr;
    float scale;
} mla_state;

static void mla_run(void *p)
{
    mla_state *s = p;
    dsacp_sparse_mla(s->q, s->kv, s->n, s->H, s->dc, s->dr, s->scale, s->o, s->lse, s->work);
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
    if (!s->q || !s->kv || !s->o || !s->lse || !s->work)
        return dsacp_error(DSACP_ENOMEM, "out of memory for the sparse MLA operands");
    bench_fill(s->q, s->H * dk, 21, 1), bench_fill(s->kv, s->n * dk, 22, 1);
    return DSACP_OK;
}

static void teardown(void *state)
{
    mla_state *s = state;
    if (!s) return;
    dsacp_free(s->q), dsacp_free(s->kv), dsacp_free(s->o), dsacp_free(s->lse), dsacp_free(s->work);
    dsacp_free(s);
}

/* Q K^T over the selected rows, then P V over their latent part. */
static double work(const bench_run *r, int64_t n)
{
    const double H = (double)r->cfg->num_attention_heads, dc = (double)r->cfg->kv_lora_rank;
    const double dk = dc + (double)r->cfg->qk_rope_head_dim;
    return 2.0 * H * (double)n * dk + 2.0 * H * (double)n * dc;
}

static int run(bench_run *r, void *state)
{
    mla_state *s = state;
    const double t = bench_time(mla_run, NULL, s, r->opt->reps, 0.02);
    bench_work_rate(r, "sparse_mla", s->n, t, "sgemm_mla", r->sgemm_mla);
    bench_result(r, "sparse_mla_time", t * 1e3, "ms", NULL, 0, 0);
    return DSACP_OK;
}

const bench_case bench_case_mla = {
    .name = "mla",
    .options = 1u << DSACP_BENCH_OPT_PRESET | 1u << DSACP_BENCH_OPT_CONTEXT | 1u << DSACP_BENCH_OPT_ISA,
    .ceilings = BENCH_CEIL_SGEMM_MLA,
    .setup = setup,
    .run = run,
    .teardown = teardown,
    .work = work,
    .work_unit = "flop",
};
