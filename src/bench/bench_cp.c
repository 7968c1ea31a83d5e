/*
 * bench_cp.c -- the "cp" case's measurements (dsacp_bench.h): a request given a cached context
 * without running a prefill, and the figures of steps of an engine over its CP group (the
 * slowest rank's step times and the busiest rank's counters, reduced over the ranks). The caller
 * creates the engine and prints the figures (`dsacp bench --kernel cp`).
 */
#include "comm/comm.h"
#include "core/core.h"
#include "dsacp_bench.h"
#include "engine/engine.h"

#include <math.h>
#include <stdlib.h>

enum { P = DSACP_PHASE_COUNT, NT = 8 }; /* NT: the times of dsacp_step_times, in its order */

int dsacp_bench_cp_fill(dsacp_engine *engine, int64_t request_id, int64_t length, uint64_t seed)
{
    return dsacp_engine_fill_random(engine, request_id, length, seed);
}

static int cmp_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Max over ranks of n doubles (an uncounted all-gather). */
static int max_over_ranks(dsacp_comm *c, double *v, int n)
{
    const int W = dsacp_comm_size(c);
    double *all = dsacp_calloc((size_t)W * (size_t)n, sizeof *all);
    if (!all) return dsacp_error(DSACP_ENOMEM, "out of memory");
    int rc = dsacp_comm_allgather(c, v, (size_t)n * sizeof *v, all, -1);
    for (int q = 0; q < W && !rc; q++)
        for (int i = 0; i < n; i++) v[i] = fmax(v[i], all[q * n + i]);
    dsacp_free(all);
    return rc;
}

/* One step: its times (slowest rank) into t[NT], its counters (busiest rank) added / steps. */
static int one_step(dsacp_engine *e, const dsacp_step_entry *en, int64_t n, int64_t steps, double *t,
                    dsacp_bench_cp_figures *out)
{
    dsacp_comm *ec = dsacp_engine_comm(e);
    dsacp_comm_reset_counters(ec);
    int rc = dsacp_engine_step(e, en, n, NULL, NULL);
    if (rc) return rc;
    const dsacp_step_times st = dsacp_engine_last_step_times(e);
    t[0] = st.step, t[1] = st.attention, t[2] = st.mlp, t[3] = st.projections, t[4] = st.attend;
    t[5] = st.o_proj, t[6] = st.overlap_compute, t[7] = st.overlap_wait;
    rc = max_over_ranks(ec, t, NT);
    double ph[3 * P];
    for (int p = 0; p < P; p++) {
        const dsacp_comm_counter k = dsacp_comm_get_counter(ec, p);
        ph[p] = k.seconds, ph[P + p] = (double)k.bytes_recv, ph[2 * P + p] = (double)k.calls;
    }
    if (!rc) rc = max_over_ranks(ec, ph, 3 * P);
    for (int p = 0; p < P && !rc; p++) {
        out->phase_seconds[p] += ph[p] / (double)steps;
        out->phase_recv_bytes[p] += ph[P + p] / (double)steps;
        out->phase_calls[p] += ph[2 * P + p] / (double)steps;
    }
    return rc;
}

/* The median over the steps of each of the NT times. */
static int medians(const double *t, int64_t steps, dsacp_bench_cp_figures *out)
{
    double med[NT], *col = dsacp_calloc((size_t)steps, sizeof *col);
    if (!col) return dsacp_error(DSACP_ENOMEM, "out of memory");
    for (int k = 0; k < NT; k++) {
        for (int64_t s = 0; s < steps; s++) col[s] = t[s * NT + k];
        qsort(col, (size_t)steps, sizeof *col, cmp_double);
        med[k] = col[steps / 2];
    }
    dsacp_free(col);
    out->step = med[0], out->attention = med[1], out->mlp = med[2], out->projections = med[3];
    out->attend = med[4], out->o_proj = med[5], out->overlap_compute = med[6], out->overlap_wait = med[7];
    return DSACP_OK;
}

int dsacp_bench_cp_steps(dsacp_engine *engine, const dsacp_step_entry *entries, int64_t n, int64_t steps,
                         dsacp_bench_cp_figures *out)
{
    *out = (dsacp_bench_cp_figures){0};
    if (steps < 1) return dsacp_error(DSACP_EINVAL, "bench cp: steps %lld must be >= 1", (long long)steps);
    double *t = dsacp_calloc((size_t)steps * NT, sizeof *t);
    if (!t) return dsacp_error(DSACP_ENOMEM, "out of memory");
    int rc = DSACP_OK;
    for (int64_t s = 0; s < steps && !rc; s++) rc = one_step(engine, entries, n, steps, t + s * NT, out);
    if (!rc) rc = medians(t, steps, out);
    dsacp_free(t);
    if (rc) return rc;
    dsacp_kv_usage u;
    dsacp_engine_kv_usage(engine, &u);
    double kv[2] = {(double)(u.latent_used_bytes + u.index_used_bytes), (double)u.transient_peak_bytes};
    rc = max_over_ranks(dsacp_engine_comm(engine), kv, 2);
    out->kv_bytes_max = kv[0], out->transient_peak_bytes_max = kv[1];
    return rc;
}
