/*
 * bench.c -- dsacp_bench.h's registration table of the cases, their options, and one run (its
 * ceilings, then its cases in order). The top of src/bench: the cases call the harness
 * (bench_harness.c: results and the timing loop), never this file.
 */
#include "bench/bench.h"
#include "core/core.h"

#include <omp.h>
#include <string.h>

#define OPT(x) (1u << DSACP_BENCH_OPT_##x)

static const bench_case *const all_members[] = {&bench_case_ceilings, &bench_case_indexer, &bench_case_topk,
                                                &bench_case_mla,      &bench_case_linear,  &bench_case_layer,
                                                NULL};
static const bench_case case_all = {.name = "all", .members = all_members};
/* Run by the caller over an engine (dsacp_bench_cp_*): listed for its name and options. */
static const bench_case case_cp = {
    .name = "cp",
    .options = OPT(CONTEXT) | OPT(BATCH) | OPT(NUMERICS) | OPT(ISA) | OPT(BLOCK_SIZE) | OPT(CHUNK),
    .engine = true,
};

/* The registration table: the order of `dsacp bench --kernel`'s names and messages. */
static const bench_case *const cases[] = {&case_all,        &bench_case_ceilings, &bench_case_indexer,
                                          &bench_case_topk, &bench_case_mla,      &bench_case_linear,
                                          &bench_case_layer, &bench_case_gemm,    &bench_case_prefill,
                                          &case_cp};
enum { NCASES = (int)(sizeof cases / sizeof *cases) };

const char *dsacp_bench_option_name(int option)
{
    static const char *const names[DSACP_BENCH_OPT_COUNT] = {"preset", "context",    "batch", "numerics",
                                                             "isa",    "block-size", "warm",  "chunk"};
    return option >= 0 && option < DSACP_BENCH_OPT_COUNT ? names[option] : "unknown";
}

int dsacp_bench_case_count(void) { return NCASES; }

/* A case's options and ceilings: its own, or the union of its members'. */
static unsigned case_options(const bench_case *c)
{
    unsigned o = c->options;
    for (const bench_case *const *m = c->members; m && *m; m++) o |= (*m)->options;
    return o;
}

int dsacp_bench_case_get(int i, dsacp_bench_case_info *out)
{
    if (i < 0 || i >= NCASES) return dsacp_error(DSACP_EINVAL, "bench case index %d out of range", i);
    *out = (dsacp_bench_case_info){cases[i]->name, case_options(cases[i]), cases[i]->engine};
    return DSACP_OK;
}

int dsacp_bench_case_find(const char *name)
{
    for (int i = 0; i < NCASES; i++)
        if (!strcmp(cases[i]->name, name)) return i;
    return -1;
}

void dsacp_bench_options_default(dsacp_bench_options *opt)
{
    *opt = (dsacp_bench_options){.context = 32768, .batch = 1, .threads = omp_get_max_threads(), .reps = 5,
                                 .block_size = 64, .deployed = true};
}

/* ---- one run ---- */

static int check_options(const dsacp_bench_options *o, const bench_case *c)
{
    if (!o->config) return dsacp_error(DSACP_EINVAL, "bench options: config is NULL");
    const dsacp_config *d = o->config;
    if (d->hidden_size < 1 || d->num_attention_heads < 1 || d->q_lora_rank < 0 || d->kv_lora_rank < 1 ||
        d->qk_rope_head_dim < 1 || d->index_n_heads < 1 || d->index_head_dim < 1 || d->index_topk < 1)
        return dsacp_error(DSACP_EINVAL, "bench options: config has a dimension below 1");
    if (o->context < 1 || o->context > 1 << 24 || o->batch < 1 || o->batch > 1024 || o->threads < 1 ||
        o->threads > 1024 || o->reps < 1 || o->reps > 1000)
        return dsacp_error(DSACP_EINVAL, "bench options: context (1..2^24), batch (1..1024), threads (1..1024) "
                                         "or reps (1..1000) out of range");
    if (o->block_size < 1 || (o->block_size & (o->block_size - 1)))
        return dsacp_error(DSACP_EINVAL, "bench options: block_size %lld is not a power of two",
                           (long long)o->block_size);
    unsigned ceil = c->ceilings;
    for (const bench_case *const *m = c->members; m && *m; m++) ceil |= (*m)->ceilings;
    if ((ceil & (BENCH_CEIL_SGEMM_INDEX | BENCH_CEIL_SGEMM_MLA | BENCH_CEIL_REFERENCE)) && !o->reference_gemm)
        return dsacp_error(DSACP_EINVAL, "bench case '%s': options reference_gemm is NULL", c->name);
    return DSACP_OK;
}

/* One case: setup, run, teardown; the layer weights made at the first case that needs them. */
static int run_case(bench_run *r, const bench_case *c, bench_layer_weights *lw, bool *have_lw)
{
    int rc = DSACP_OK;
    if (c->layer_weights && !*have_lw) {
        *have_lw = true;
        rc = bench_layer_weights_make(r, lw);
        r->lw = &lw->w;
        if (rc) return rc;
    }
    void *state = NULL;
    r->current = c;
    if (c->setup) rc = c->setup(r, &state);
    if (!rc && c->run) rc = c->run(r, state);
    if (c->teardown) c->teardown(state);
    return rc;
}

int dsacp_bench_run(const char *name, const dsacp_bench_options *opt, dsacp_bench_report *out)
{
    const int i = dsacp_bench_case_find(name);
    if (i < 0 || cases[i]->engine)
        return dsacp_error(DSACP_EINVAL, "bench case '%s' unknown or run through an engine", name);
    const bench_case *c = cases[i];
    int rc = check_options(opt, c);
    if (rc) return rc;
    memset(out, 0, sizeof *out);
    omp_set_num_threads((int)opt->threads);
    bench_run r = {.opt = opt, .cfg = opt->config, .report = out};
    const bench_case *one[] = {c, NULL};
    const bench_case *const *list = c->members ? c->members : one;
    unsigned ceil = 0;
    for (const bench_case *const *m = list; *m; m++) ceil |= (*m)->ceilings;
    rc = bench_measure_ceilings(&r, ceil);
    bench_layer_weights lw;
    bool have_lw = false;
    for (const bench_case *const *m = list; *m && !rc; m++) rc = run_case(&r, *m, &lw, &have_lw);
    if (have_lw) bench_layer_weights_free(&lw);
    return rc;
}
