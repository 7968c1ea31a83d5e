/*
 * decode_costs.c -- where a decode step's time goes (issue 25's decode fixed costs).
 *
 *   decode_costs --model DIR [--context L] [--steps N] [--numerics exact|deployed] [--kv f32|bf16|fp8]
 *
 * One request with L - 1 cached positions of pseudo-random entries (dsacp_engine_fill_random, no
 * prefill), then 2N decode steps of one token, alternately with and without logits (the same
 * work but lm_head), each step's times from dsacp_engine_last_step_times; and the fork/join cost
 * of an empty OpenMP region on this machine's threads. Prints one JSON object: medians in ms (ms)
 * and minimums (ms_min: each part's own minimum over the steps, the machine's best case when
 * other processes share the cores) of the step with and without lm_head, attention (projections, attend, o_proj), MLP, the rest of
 * the step (norms, residual adds, the final norm, embedding), lm_head (the difference of the two
 * step kinds), and the empty region's cost. Each step decodes the next position, so the context
 * grows by 2N over the run.
 */
#include "dsacp.h"
#include "dsacp_serve.h"

#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int cmp_d(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Microseconds per empty parallel region of the default team (fork, join and its barrier). */
static double empty_region_us(void)
{
    enum { N = 20000 };
    volatile int sink = 0;
    const double t0 = omp_get_wtime();
    for (int i = 0; i < N; i++) {
#pragma omp parallel
        {
            if (omp_get_thread_num() == 0) sink = sink + 1;
        }
    }
    return (omp_get_wtime() - t0) / N * 1e6;
}

typedef struct options {
    const char *model;
    int64_t context, steps;
    dsacp_engine_options eo;
} options;

static int parse(int argc, char **argv, options *o)
{
    *o = (options){.context = 1024, .steps = 200};
    dsacp_engine_options_default(&o->eo);
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--model")) o->model = v;
        else if (!strcmp(k, "--context")) o->context = atoll(v);
        else if (!strcmp(k, "--steps")) o->steps = atoll(v);
        else if (!strcmp(k, "--numerics") && (!strcmp(v, "exact") || !strcmp(v, "deployed")))
            o->eo.numerics = !strcmp(v, "exact") ? DSACP_NUMERICS_EXACT : DSACP_NUMERICS_DEPLOYED;
        else if (!strcmp(k, "--kv") && (!strcmp(v, "f32") || !strcmp(v, "bf16") || !strcmp(v, "fp8")))
            o->eo.kv_dtype = !strcmp(v, "f32") ? DSACP_KV_F32 : !strcmp(v, "bf16") ? DSACP_KV_BF16 : DSACP_KV_FP8;
        else return 0;
    }
    return o->model && o->context >= 2 && o->steps >= 2 && o->steps <= 100000;
}

enum { F_STEP, F_ATTN, F_PROJ, F_ATTEND, F_OPROJ, F_MLP, F_REST, NF };

int main(int argc, char **argv)
{
    options o;
    if (!parse(argc, argv, &o)) {
        fprintf(stderr, "usage: decode_costs --model DIR [--context L] [--steps N] [--numerics exact|deployed] "
                        "[--kv f32|bf16|fp8]\n");
        return 2;
    }
    dsacp_model *m = NULL;
    dsacp_engine *e = NULL;
    int64_t id = 0;
    int rc = dsacp_model_load(o.model, &m);
    const dsacp_config *cfg = rc ? NULL : dsacp_model_config(m);
    const int64_t n = o.steps, V = cfg ? cfg->vocab_size : 1;
    o.eo.num_blocks = (o.context + 2 * n + o.eo.block_size - 1) / o.eo.block_size + 1;
    if (!rc) rc = dsacp_engine_create(m, &o.eo, &e);
    if (!rc) rc = dsacp_engine_add_request(e, &id);
    if (!rc) rc = dsacp_engine_fill_random(e, id, o.context - 1, 7);
    float *logits = malloc((size_t)V * sizeof *logits);
    double *f[2][NF];
    for (int h = 0; h < 2; h++)
        for (int k = 0; k < NF; k++) f[h][k] = calloc((size_t)n, sizeof(double));
    int32_t tok = 1;
    for (int64_t i = 0; i < 2 * n && !rc; i++) {
        const int head = (int)(i & 1);
        dsacp_step_entry en = {id, 1, &tok};
        rc = dsacp_engine_step(e, &en, 1, head ? logits : NULL, NULL);
        const dsacp_step_times t = dsacp_engine_last_step_times(e);
        const double v[NF] = {t.step, t.attention, t.projections, t.attend, t.o_proj, t.mlp,
                              t.step - t.attention - t.mlp};
        for (int k = 0; k < NF; k++) f[head][k][i / 2] = v[k] * 1e3;
        tok = (int32_t)((tok * 7919 + 13) % V);
    }
    if (rc) {
        fprintf(stderr, "decode_costs: %s\n", dsacp_last_error());
    } else {
        double med[2][NF], lo[2][NF];
        for (int h = 0; h < 2; h++)
            for (int k = 0; k < NF; k++) med[h][k] = median(f[h][k], (int)n), lo[h][k] = f[h][k][0];
        printf("{\"model\": \"%s\", \"context\": %lld, \"steps\": %lld, \"threads\": %d, \"numerics\": \"%s\"",
               o.model, (long long)o.context, (long long)n, omp_get_max_threads(),
               o.eo.numerics == DSACP_NUMERICS_EXACT ? "exact" : "deployed");
        for (int q = 0; q < 2; q++) {
            const double(*v)[NF] = q ? lo : med;
            printf(", \"%s\": {\"step_with_head\": %.4f, \"step_no_head\": %.4f, \"attention\": %.4f, "
                   "\"projections\": %.4f, \"attend\": %.4f, \"o_proj\": %.4f, \"mlp\": %.4f, \"rest\": %.4f, "
                   "\"lm_head\": %.4f}",
                   q ? "ms_min" : "ms", v[1][F_STEP], v[0][F_STEP], v[0][F_ATTN], v[0][F_PROJ], v[0][F_ATTEND],
                   v[0][F_OPROJ], v[0][F_MLP], v[0][F_REST], v[1][F_STEP] - v[0][F_STEP]);
        }
        printf(", \"empty_region_us\": %.3f}\n", empty_region_us());
    }
    for (int h = 0; h < 2; h++)
        for (int k = 0; k < NF; k++) free(f[h][k]);
    free(logits);
    dsacp_engine_free(e);
    dsacp_model_free(m);
    return rc ? 1 : 0;
}
