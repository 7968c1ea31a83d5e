/*
 * bench_linear.c -- the "linear" case: layer 0's fp8 linears at one token (q_a, q_b, kv_a,
 * o_proj, the indexer's wq_b) as weight bytes read per second, beside stream copy. They are
 * timed cold: the last-level cache is flushed before each call, as in a real model whose 61
 * layers never fit in it (warm: not flushed, for diagnosis).
 */
#include "bench/bench.h"
#include "core/core.h"

enum { NLIN = 5 };
static const char *const names[NLIN] = {"linear_q_a", "linear_q_b", "linear_kv_a", "linear_o_proj", "linear_wq_b"};

typedef struct linear_state {
    const dsacp_weight *w[NLIN];
    float *x, *y;
    int64_t cols;
    uint8_t *flush; /* written before every call: evicts the weights from the caches */
    size_t flush_bytes;
} linear_state;

typedef struct linear_arg {
    const linear_state *s;
    const dsacp_weight *w;
    bool act_quant;
    int rc;
} linear_arg;

static void linear_run(void *p)
{
    linear_arg *a = p;
    a->rc = dsacp_linear(a->w, a->s->x, 1, a->w->cols, a->s->y, a->w->rows, a->act_quant);
}

static void cache_flush(void *p)
{
    const linear_state *s = ((linear_arg *)p)->s;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < s->flush_bytes; i += 64) s->flush[i]++;
}

static int setup(bench_run *r, void **state)
{
    linear_state *s = dsacp_calloc(1, sizeof *s);
    *state = s;
    if (!s) return DSACP_ENOMEM;
    const dsacp_dsa_weights *lw = r->lw;
    const dsacp_weight *ws[NLIN] = {lw->q_a, lw->q_b, lw->kv_a, lw->o, lw->wq_b};
    int64_t maxr = 0;
    for (int i = 0; i < NLIN; i++) {
        s->w[i] = ws[i];
        if (ws[i]->cols > s->cols) s->cols = ws[i]->cols;
        if (ws[i]->rows > maxr) maxr = ws[i]->rows;
    }
    s->flush_bytes = (size_t)96 << 20;
    s->x = dsacp_calloc((size_t)s->cols, sizeof(float));
    s->y = dsacp_calloc((size_t)maxr, sizeof(float));
    s->flush = dsacp_calloc(s->flush_bytes, 1);
    if (!s->x || !s->y || !s->flush) return dsacp_error(DSACP_ENOMEM, "out of memory for the linear operands");
    return DSACP_OK;
}

static void teardown(void *state)
{
    linear_state *s = state;
    if (!s) return;
    dsacp_free(s->x), dsacp_free(s->y), dsacp_free(s->flush);
    dsacp_free(s);
}

/* The bytes of weight i (with its block scales). */
static double work(const bench_run *r, int64_t i)
{
    const dsacp_weight *ws[NLIN] = {r->lw->q_a, r->lw->q_b, r->lw->kv_a, r->lw->o, r->lw->wq_b};
    return (double)bench_weight_bytes(ws[i]);
}

static int run(bench_run *r, void *state)
{
    linear_state *s = state;
    const bool warm = r->opt->warm;
    double tot_bytes = 0, tot_t = 0;
    for (int i = 0; i < NLIN; i++) {
        bench_fill(s->x, s->cols, 31 + (uint64_t)i, 1);
        linear_arg a = {s, s->w[i], r->opt->deployed && s->w[i]->dtype == DSACP_F8_E4M3, 0};
        const double t = bench_time(linear_run, warm ? NULL : cache_flush, &a, r->opt->reps < 5 ? 5 : r->opt->reps,
                                    warm ? 0.02 : 0);
        tot_bytes += work(r, i), tot_t += t;
        bench_work_rate(r, names[i], i, t, "stream_copy", r->stream_copy);
        if (a.rc) return a.rc;
    }
    bench_rate(r, "linear_all", tot_bytes / tot_t * 1e-9, "GB/s", "stream_copy", r->stream_copy);
    return DSACP_OK;
}

const bench_case bench_case_linear = {
    .name = "linear",
    .options = 1u << DSACP_BENCH_OPT_PRESET | 1u << DSACP_BENCH_OPT_NUMERICS | 1u << DSACP_BENCH_OPT_ISA |
               1u << DSACP_BENCH_OPT_WARM,
    .ceilings = BENCH_CEIL_STREAM,
    .layer_weights = true,
    .setup = setup,
    .run = run,
    .teardown = teardown,
    .work = work,
    .work_unit = "byte",
};
