/*
 * bench_topk.c -- the "topk" case: the radix top-k over one decode query's index scores against
 * `context` keys, as a time beside the time of computing those scores (the indexer case's
 * indexer_fp8_time, timed here when that case did not run before it).
 */
#include "bench/bench.h"
#include "core/core.h"

typedef struct topk_state {
    bench_index_data d;
    int32_t *selected;
    int64_t k;
} topk_state;

typedef struct topk_arg {
    const float *scores;
    int64_t n, k;
    int32_t *out;
} topk_arg;

static void topk_run(void *p)
{
    topk_arg *a = p;
    dsacp_topk_select(a->scores, a->n, a->k, a->out);
}

static int setup(bench_run *r, void **state)
{
    topk_state *s = dsacp_calloc(1, sizeof *s);
    *state = s;
    if (!s) return DSACP_ENOMEM;
    s->k = r->cfg->index_topk;
    s->selected = dsacp_calloc((size_t)s->k, sizeof *s->selected);
    if (!s->selected) return dsacp_error(DSACP_ENOMEM, "out of memory for the indexer operands");
    return bench_index_data_make(r, &s->d);
}

static void teardown(void *state)
{
    topk_state *s = state;
    if (!s) return;
    bench_index_data_free(&s->d);
    dsacp_free(s->selected);
    dsacp_free(s);
}

static int run(bench_run *r, void *state)
{
    topk_state *s = state;
    const double t = r->indexer_fp8_s > 0 ? r->indexer_fp8_s : bench_index_time_fp8(r, &s->d);
    bench_index_score(&s->d, true, 1); /* the scores of one real query */
    topk_arg a = {.scores = s->d.scores, .n = s->d.n, .k = s->k, .out = s->selected};
    const double tt = bench_time(topk_run, NULL, &a, r->opt->reps, 0.02);
    bench_result(r, "topk_time", tt * 1e3, "ms", "indexer_fp8_time", t * 1e3, tt / t);
    return DSACP_OK;
}

const bench_case bench_case_topk = {
    .name = "topk",
    .options = 1u << DSACP_BENCH_OPT_PRESET | 1u << DSACP_BENCH_OPT_CONTEXT | 1u << DSACP_BENCH_OPT_ISA,
    .setup = setup,
    .run = run,
    .teardown = teardown,
};
