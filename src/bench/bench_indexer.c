/*
 * bench_indexer.c -- the "indexer" case: one decode query's index scores against `context` keys
 * (fp8 keys with their scales, the deployed form, and f32 keys), and 16 queries at once (the
 * prefill form), each beside the reference product on the same shape. Its operands serve the
 * top-k case too (bench_topk.c ranks the scores of one query).
 */
#include "bench/bench.h"
#include "core/core.h"

#include <omp.h>
#include <stdint.h>

enum { QUERIES = 16 };

void bench_index_data_free(bench_index_data *d)
{
    if (!d) return;
    dsacp_free(d->k8), dsacp_free(d->kscale), dsacp_free(d->kf32);
    dsacp_free(d->q), dsacp_free(d->w), dsacp_free(d->scores);
    *d = (bench_index_data){0};
}

int bench_index_data_make(const bench_run *r, bench_index_data *d)
{
    const int64_t Hi = r->cfg->index_n_heads, di = r->cfg->index_head_dim, n = r->opt->context;
    *d = (bench_index_data){.Hi = Hi, .di = di, .n = n, .queries = QUERIES};
    d->k8 = dsacp_alloc((size_t)(n * di));
    d->kscale = dsacp_calloc((size_t)n, sizeof(float));
    d->kf32 = dsacp_calloc((size_t)(n * di), sizeof(float));
    d->q = dsacp_calloc((size_t)(QUERIES * Hi * di), sizeof(float));
    d->w = dsacp_calloc((size_t)(QUERIES * Hi), sizeof(float));
    d->scores = dsacp_calloc((size_t)(QUERIES * n), sizeof(float));
    if (!d->k8 || !d->kscale || !d->kf32 || !d->q || !d->w || !d->scores)
        return dsacp_error(DSACP_ENOMEM, "out of memory for the indexer operands");
    /* Keys: unit-variance f32 rows, and their deployed form (one power-of-two scale per key).
     * Queries: e4m3 values (the deployed query); head weights of either sign. */
    bench_fill(d->kf32, n * di, 11, 1);
#pragma omp parallel for schedule(static)
    for (int64_t j = 0; j < n; j++) dsacp_quant_e4m3_groups(d->kf32 + j * di, di, di, d->k8 + j * di, d->kscale + j);
    bench_fill(d->q, QUERIES * Hi * di, 12, 1);
    for (int64_t i = 0; i < QUERIES * Hi * di; i++) d->q[i] = dsacp_e4m3_to_f32(dsacp_f32_to_e4m3(d->q[i] * 100.0f));
    bench_fill(d->w, QUERIES * Hi, 13, 0.01f);
    return DSACP_OK;
}

typedef struct score_arg {
    const bench_index_data *d;
    bool fp8;
    int64_t queries;
} score_arg;

/* The keys split into one contiguous range per thread (the kernel is serial by contract; each
 * score depends only on its key). */
void bench_index_score(const bench_index_data *d, bool fp8, int64_t queries)
{
#pragma omp parallel
    {
        const int t = omp_get_thread_num(), nt = omp_get_num_threads();
        const int64_t lo = d->n * t / nt, hi = d->n * (t + 1) / nt, di = d->di;
        if (hi > lo && queries > 1)
            dsacp_index_scores_multi(d->q, d->w, queries, d->Hi, di, d->k8 + lo * di, d->kscale + lo, hi - lo,
                                     d->scores + lo, d->n);
        else if (hi > lo && fp8)
            dsacp_index_scores(d->q, d->w, d->Hi, di, d->k8 + lo * di, d->kscale + lo, hi - lo, d->scores + lo);
        else if (hi > lo)
            dsacp_index_scores(d->q, d->w, d->Hi, di, d->kf32 + lo * di, NULL, hi - lo, d->scores + lo);
    }
}

static void score_run(void *p)
{
    const score_arg *a = p;
    bench_index_score(a->d, a->fp8, a->queries);
}

double bench_index_time_fp8(bench_run *r, const bench_index_data *d)
{
    score_arg a = {d, true, 1};
    return bench_time(score_run, NULL, &a, r->opt->reps, 0.02);
}

static int setup(bench_run *r, void **state)
{
    bench_index_data *d = dsacp_calloc(1, sizeof *d);
    *state = d;
    return d ? bench_index_data_make(r, d) : DSACP_ENOMEM;
}

static void teardown(void *state)
{
    bench_index_data_free(state);
    dsacp_free(state);
}

/* One query against every key: 2 Hi di multiply-adds and Hi weightings per key. */
static double work(const bench_run *r, int64_t queries)
{
    const double Hi = (double)r->cfg->index_n_heads, di = (double)r->cfg->index_head_dim;
    return (double)queries * (2.0 * Hi * di + Hi) * (double)r->opt->context;
}

static int run(bench_run *r, void *state)
{
    const bench_index_data *d = state;
    const double t = bench_index_time_fp8(r, d);
    r->indexer_fp8_s = t;
    bench_work_rate(r, "indexer_fp8", 1, t, "sgemm_indexer", r->sgemm_indexer);
    bench_result(r, "indexer_fp8_time", t * 1e3, "ms", NULL, 0, 0);
    score_arg f32 = {d, false, 1}, multi = {d, true, QUERIES};
    const double tf = bench_time(score_run, NULL, &f32, r->opt->reps, 0.02);
    bench_work_rate(r, "indexer_f32", 1, tf, "sgemm_indexer", r->sgemm_indexer);
    const double tm = bench_time(score_run, NULL, &multi, r->opt->reps, 0.02);
    bench_work_rate(r, "indexer_prefill16_fp8", QUERIES, tm, "sgemm_indexer_prefill16", r->sgemm_indexer_prefill);
    return DSACP_OK;
}

const bench_case bench_case_indexer = {
    .name = "indexer",
    .options = 1u << DSACP_BENCH_OPT_PRESET | 1u << DSACP_BENCH_OPT_CONTEXT | 1u << DSACP_BENCH_OPT_ISA,
    .ceilings = BENCH_CEIL_SGEMM_INDEX | BENCH_CEIL_SGEMM_INDEX16,
    .setup = setup,
    .run = run,
    .teardown = teardown,
    .work = work,
    .work_unit = "flop",
};
