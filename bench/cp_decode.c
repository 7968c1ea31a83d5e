/*
 * cp_decode.c -- decode over a CP group, for docs/context-parallel.md's measured table.
 *
 *   mpirun -np W build/cp_decode --model DIR --context L [--decode-strategy S] [--kv-layout ..]
 *          [--index-layout ..] [--cp-interleave I] [--numerics exact|deployed] [--reps N]
 *
 * Builds a CP engine, gives one request L cached positions of pseudo-random cache entries
 * (dsacp_engine_fill_random: what a prefill would leave, without running it), then times N
 * decode steps of that request. Prints one JSON object (rank 0): per phase the bytes rank 0 and
 * the busiest rank received per decode token (per layer: the preset has one), the KV bytes per
 * rank, the transient peak, and the attention time per token (median over the steps of the
 * slowest rank). Timings are wall time; with more ranks than cores they include waiting.
 */
#include "cp/cp.h"
#include "dsacp_cp.h"
#include "engine/engine.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int cmp_d(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void usage(void)
{
    printf("usage: mpirun -np W cp_decode --model DIR --context L [--decode-strategy allgather-kv|replicated-index|"
           "exact-topk] [--kv-layout sharded|replicated] [--index-layout sharded|replicated] [--cp-interleave I] "
           "[--numerics exact|deployed] [--reps N] [--block-size B]\n");
}

int main(int argc, char **argv)
{
    dsacp_comm *world = NULL;
    if (dsacp_comm_create_world(&argc, &argv, &world)) {
        fprintf(stderr, "cp_decode: %s\n", dsacp_last_error());
        return 1;
    }
    const int me = dsacp_comm_rank(world), W = dsacp_comm_size(world);
    const char *model_dir = NULL;
    int64_t L = 4096, reps = 5;
    dsacp_cp_options cp;
    dsacp_cp_options_default(&cp);
    dsacp_engine_options eo;
    dsacp_engine_options_default(&eo);
    eo.numerics = DSACP_NUMERICS_DEPLOYED;
    eo.kv_dtype = DSACP_KV_FP8;
    int rc = DSACP_OK;
    for (int i = 1; i < argc && !rc; i += 2) { /* --flag value pairs */
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            if (me == 0) usage();
            dsacp_comm_free(world);
            return 0;
        }
        if (!v) rc = dsacp_error(DSACP_EINVAL, "option %s needs a value", a);
        else if (strcmp(a, "--model") == 0) model_dir = v;
        else if (strcmp(a, "--context") == 0) L = atoll(v);
        else if (strcmp(a, "--reps") == 0) reps = atoll(v);
        else if (strcmp(a, "--cp-interleave") == 0) cp.interleave = atoll(v);
        else if (strcmp(a, "--block-size") == 0) eo.block_size = atoll(v);
        else if (strcmp(a, "--decode-strategy") == 0) rc = dsacp_decode_strategy_parse(v, &cp.decode);
        else if (strcmp(a, "--kv-layout") == 0) rc = dsacp_cp_layout_parse(v, &cp.kv_layout);
        else if (strcmp(a, "--index-layout") == 0) rc = dsacp_cp_layout_parse(v, &cp.index_layout);
        else if (strcmp(a, "--numerics") == 0) {
            const bool exact = strcmp(v, "exact") == 0;
            eo.numerics = exact ? DSACP_NUMERICS_EXACT : DSACP_NUMERICS_DEPLOYED;
            eo.kv_dtype = exact ? DSACP_KV_F32 : DSACP_KV_FP8;
        } else rc = dsacp_error(DSACP_EINVAL, "unknown option %s", a);
    }
    if (!rc && (!model_dir || L < 1 || reps < 1)) rc = dsacp_error(DSACP_EINVAL, "--model and --context >= 1 needed");
    rc = dsacp_comm_agree(world, rc);
    dsacp_model *m = NULL;
    dsacp_engine *e = NULL;
    if (!rc) rc = dsacp_comm_agree(world, dsacp_model_load(model_dir, &m));
    if (!rc) {
        eo.num_blocks = (L + reps + 16) / eo.block_size + 4;
        rc = dsacp_engine_create_cp(m, &eo, &cp, world, &e);
    }
    int64_t id = 0;
    if (!rc) rc = dsacp_comm_agree(world, dsacp_engine_add_request(e, &id));
    if (!rc) rc = dsacp_engine_fill_random(e, id, L, 12345);
    const int P = DSACP_PHASE_COUNT;
    double *t = calloc((size_t)reps, sizeof *t), *recv = calloc((size_t)P, sizeof *recv);
    double *calls = calloc((size_t)P, sizeof *calls);
    const dsacp_config *cfg = m ? dsacp_model_config(m) : NULL;
    for (int64_t r = 0; r < reps && !rc; r++) {
        int32_t tok = (int32_t)((r * 7919) % cfg->vocab_size);
        dsacp_step_entry en = {id, 1, &tok};
        dsacp_comm_reset_counters(world);
        rc = dsacp_engine_step(e, &en, 1, NULL, NULL);
        double mine = dsacp_engine_last_step_times(e).attention;
        /* slowest rank: gather through an all-gather of one double per rank */
        if (!rc) {
            double *all = malloc((size_t)W * sizeof *all);
            rc = dsacp_comm_allgather(world, &mine, sizeof mine, all, -1);
            double mx = 0;
            for (int q = 0; q < W; q++) mx = all[q] > mx ? all[q] : mx;
            t[r] = mx;
            free(all);
        }
        if (r == reps - 1)
            for (int p = 0; p < P; p++) {
                dsacp_comm_counter k = dsacp_comm_get_counter(dsacp_engine_comm(e), p);
                recv[p] = (double)k.bytes_recv, calls[p] = (double)k.calls;
            }
    }
    /* Busiest rank's received bytes per phase. */
    double *mx = calloc((size_t)P, sizeof *mx);
    if (!rc) {
        double *all = malloc((size_t)(P * W) * sizeof *all);
        rc = dsacp_comm_allgather(world, recv, (size_t)P * sizeof *recv, all, -1);
        for (int q = 0; q < W && !rc; q++)
            for (int p = 0; p < P; p++) mx[p] = all[q * P + p] > mx[p] ? all[q * P + p] : mx[p];
        free(all);
    }
    dsacp_kv_usage u = {0};
    if (e) dsacp_engine_kv_usage(e, &u);
    double kvmax = (double)(u.latent_used_bytes + u.index_used_bytes), tmax = (double)u.transient_peak_bytes;
    if (!rc) {
        double both[2] = {kvmax, tmax}, *all = malloc((size_t)(2 * W) * sizeof *all);
        rc = dsacp_comm_allgather(world, both, sizeof both, all, -1);
        for (int q = 0; q < W && !rc; q++) {
            kvmax = all[2 * q] > kvmax ? all[2 * q] : kvmax;
            tmax = all[2 * q + 1] > tmax ? all[2 * q + 1] : tmax;
        }
        free(all);
    }
    if (!rc && me == 0) {
        qsort(t, (size_t)reps, sizeof *t, cmp_d);
        printf("{\"world\": %d, \"context\": %lld, \"strategy\": \"%s\", \"kv_layout\": \"%s\", \"index_layout\": \"%s\", "
               "\"interleave\": %lld, \"layers\": %lld, \"attention_ms_per_token\": %.3f, \"kv_bytes_per_rank_max\": %.0f, "
               "\"transient_peak_bytes_max\": %.0f, \"recv_bytes_rank0\": {",
               W, (long long)L, dsacp_decode_strategy_name(cp.decode), dsacp_cp_layout_name(cp.kv_layout),
               dsacp_cp_layout_name(cp.index_layout), (long long)cp.interleave, (long long)cfg->num_hidden_layers,
               t[reps / 2] * 1e3, kvmax, tmax);
        for (int p = 0, first = 1; p < P; p++)
            if (recv[p] > 0 || calls[p] > 0)
                printf("%s\"%s\": %.0f", first ? "" : ", ", dsacp_comm_phase_name(p), recv[p]), first = 0;
        printf("}, \"recv_bytes_max_rank\": {");
        for (int p = 0, first = 1; p < P; p++)
            if (mx[p] > 0) printf("%s\"%s\": %.0f", first ? "" : ", ", dsacp_comm_phase_name(p), mx[p]), first = 0;
        printf("}}\n");
    }
    if (rc && me == 0) fprintf(stderr, "cp_decode: %s\n", dsacp_last_error());
    free(t), free(recv), free(calls), free(mx);
    dsacp_engine_free(e);
    dsacp_model_free(m);
    dsacp_comm_free(world);
    return rc ? 1 : 0;
}
