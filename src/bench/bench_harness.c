/*
 * bench_harness.c -- what every bench case calls (bench.h): the results (a value, a rate against
 * a ceiling, the case's work per second) and the timing loop. Below the cases and the
 * registration table (bench.c); it calls only core.
 */
#include "bench/bench.h"
#include "core/core.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- results ---- */

void bench_result(bench_run *r, const char *name, double value, const char *unit, const char *ceil_name,
                  double ceil_value, double ratio)
{
    dsacp_bench_report *rep = r->report;
    if (rep->count >= DSACP_BENCH_MAX_RESULTS) return;
    dsacp_bench_result *x = &rep->results[rep->count++];
    snprintf(x->name, sizeof x->name, "%s", name);
    x->value = value;
    x->unit = unit;
    snprintf(x->ceiling_name, sizeof x->ceiling_name, "%s", ceil_name ? ceil_name : "");
    x->ceiling_value = ceil_name ? ceil_value : NAN;
    x->ratio = ceil_name ? ratio : NAN;
    if (r->opt->on_result) r->opt->on_result(x, r->opt->user);
}

void bench_na(bench_run *r, const char *name, const char *why) { bench_result(r, name, NAN, why, NULL, 0, 0); }

void bench_rate(bench_run *r, const char *name, double value, const char *unit, const char *ceil_name,
                double ceil_value)
{
    bench_result(r, name, value, unit, ceil_name, ceil_value, ceil_value > 0 ? value / ceil_value : NAN);
}

void bench_work_rate(bench_run *r, const char *name, int64_t i, double seconds, const char *ceil_name,
                     double ceil_value)
{
    const bench_case *c = r->current;
    const bool bytes = !strcmp(c->work_unit, "byte");
    bench_rate(r, name, c->work(r, i) / seconds * 1e-9, bytes ? "GB/s" : "GFLOP/s", ceil_name, ceil_value);
}

/* ---- timing ---- */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

double bench_time(bench_fn fn, bench_fn before, void *arg, int64_t reps, double min_s)
{
    if (before) before(arg);
    double t0 = dsacp_now();
    fn(arg);
    double once = dsacp_now() - t0;
    int64_t inner = 1;
    if (!before && once < min_s) inner = (int64_t)(min_s / (once > 1e-7 ? once : 1e-7)) + 1;
    if (inner > 1000000) inner = 1000000;
    double *t = dsacp_calloc((size_t)reps, sizeof *t);
    if (!t) return once;
    for (int64_t k = 0; k < reps; k++) {
        if (before) before(arg);
        double s = dsacp_now();
        for (int64_t i = 0; i < inner; i++) fn(arg);
        t[k] = (dsacp_now() - s) / (double)inner;
    }
    qsort(t, (size_t)reps, sizeof *t, cmp_double);
    double best = t[0];
    dsacp_free(t);
    return best;
}

void bench_reference_settle(void)
{
    struct timespec ts = {0, 200 * 1000 * 1000};
    nanosleep(&ts, NULL);
}
