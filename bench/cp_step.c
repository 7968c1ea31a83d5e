/*
 * cp_step.c -- DSA-CP weight plans, for docs/context-parallel.md section 9's measured table.
 *
 *   cp_step --make-model DIR                      (once, without mpirun: the v32-layer preset's
 *                                                  attention with fp8 weights, a 128-wide MLP)
 *   mpirun -np W cp_step --model DIR --tokens T [--q-proj P] [--o-proj P] [--context C] [--reps N]
 *
 * One step of T decode tokens (T requests, each with C cached positions of pseudo-random entries)
 * under --cp-mode dsa-cp with replicated caches (the seed's setting): prints one JSON object
 * (rank 0) with the step time (slowest rank, median of the reps), bytes received per step by the
 * busiest rank per phase, the weight bytes per rank (resident, ring, gather buffers) and the
 * o_proj rule's predicted crossover. The MLP is shrunk so that the time is the attention layer's.
 */
#include "cp/cp.h"
#include "dsacp_cp.h"
#include "engine/engine.h"
#include "model/model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int cmp_d(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    for (int i = 1; i + 1 < argc; i++)
        if (strcmp(argv[i], "--make-model") == 0) {
            dsacp_config c;
            if (dsacp_preset_config("v32-layer", &c) == 0) {
                c.intermediate_size = 128;
                if (dsacp_model_init(&c, argv[i + 1], 0, DSACP_WEIGHTS_FP8) == 0) return 0;
            }
            fprintf(stderr, "cp_step: %s\n", dsacp_last_error());
            return 1;
        }
    dsacp_comm *world = NULL;
    if (dsacp_comm_create_world(&argc, &argv, &world)) {
        fprintf(stderr, "cp_step: %s\n", dsacp_last_error());
        return 1;
    }
    const int me = dsacp_comm_rank(world), W = dsacp_comm_size(world);
    const char *model_dir = NULL;
    int64_t T = 1, C = 16, reps = 3;
    dsacp_cp_options cp;
    dsacp_cp_options_default(&cp);
    cp.mode = DSACP_CP_DSA_CP;
    cp.prefill_split = DSACP_PREFILL_CONTIGUOUS;
    cp.decode = DSACP_DECODE_ALLGATHER_KV;
    cp.kv_layout = cp.index_layout = DSACP_LAYOUT_REPLICATED;
    dsacp_engine_options eo;
    dsacp_engine_options_default(&eo);
    eo.numerics = DSACP_NUMERICS_DEPLOYED;
    eo.kv_dtype = DSACP_KV_FP8;
    eo.block_size = 16;
    int rc = DSACP_OK;
    for (int i = 1; i < argc && !rc; i += 2) { /* --flag value pairs */
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) rc = dsacp_error(DSACP_EINVAL, "option %s needs a value", a);
        else if (strcmp(a, "--model") == 0) model_dir = v;
        else if (strcmp(a, "--tokens") == 0) T = atoll(v);
        else if (strcmp(a, "--context") == 0) C = atoll(v);
        else if (strcmp(a, "--reps") == 0) reps = atoll(v);
        else if (strcmp(a, "--prefetch") == 0) cp.prefetch = atoll(v);
        else if (strcmp(a, "--q-proj") == 0) rc = dsacp_weight_plan_parse(v, &cp.q_proj);
        else if (strcmp(a, "--o-proj") == 0) rc = dsacp_weight_plan_parse(v, &cp.o_proj);
        else rc = dsacp_error(DSACP_EINVAL, "unknown option %s", a);
    }
    if (!rc && (!model_dir || T < 1 || C < 1 || reps < 1)) rc = dsacp_error(DSACP_EINVAL, "--model, --tokens >= 1 needed");
    rc = dsacp_comm_agree(world, rc);
    dsacp_model *m = NULL;
    dsacp_engine *e = NULL;
    if (!rc) rc = dsacp_comm_agree(world, dsacp_model_load(model_dir, &m));
    if (!rc) {
        eo.num_blocks = T * ((C + reps + eo.block_size) / eo.block_size) + 4;
        rc = dsacp_engine_create_cp(m, &eo, &cp, world, &e);
    }
    int64_t *ids = calloc((size_t)T, sizeof *ids);
    int32_t *tok = calloc((size_t)T, sizeof *tok);
    dsacp_step_entry *en = calloc((size_t)T, sizeof *en);
    for (int64_t r = 0; r < T && !rc; r++) {
        rc = dsacp_comm_agree(world, dsacp_engine_add_request(e, &ids[r]));
        if (!rc) rc = dsacp_engine_fill_random(e, ids[r], C, 7 + (uint64_t)r);
        tok[r] = (int32_t)(r % 4096);
        en[r] = (dsacp_step_entry){ids[r], 1, &tok[r]};
    }
    const int P = DSACP_PHASE_COUNT;
    double *t = calloc((size_t)reps, sizeof *t), *recv = calloc((size_t)P, sizeof *recv);
    double *mx = calloc((size_t)P, sizeof *mx);
    for (int64_t r = 0; r < reps && !rc; r++) {
        dsacp_comm_reset_counters(world);
        rc = dsacp_engine_step(e, en, T, NULL, NULL);
        double mine = dsacp_engine_last_step_times(e).attention, *all = malloc((size_t)W * sizeof *all);
        if (!rc) rc = dsacp_comm_allgather(world, &mine, sizeof mine, all, -1);
        for (int q = 0; q < W && !rc; q++) t[r] = all[q] > t[r] ? all[q] : t[r];
        free(all);
    }
    if (!rc) {
        for (int p = 0; p < P; p++) recv[p] = (double)dsacp_comm_get_counter(world, p).bytes_recv;
        double *all = malloc((size_t)(P * W) * sizeof *all);
        rc = dsacp_comm_allgather(world, recv, (size_t)P * sizeof *recv, all, -1);
        for (int q = 0; q < W && !rc; q++)
            for (int p = 0; p < P; p++) mx[p] = all[q * P + p] > mx[p] ? all[q * P + p] : mx[p];
        free(all);
    }
    if (!rc && me == 0) {
        dsacp_weight_usage u;
        dsacp_engine_weight_usage(e, &u);
        qsort(t, (size_t)reps, sizeof *t, cmp_d);
        printf("{\"world\": %d, \"tokens\": %lld, \"q_proj\": \"%s\", \"o_proj\": \"%s\", \"step_ms\": %.2f, "
               "\"weights_rank0\": {\"q_proj_resident\": %lld, \"o_proj_resident\": %lld, \"ring\": %lld, \"gather\": %lld}, "
               "\"o_proj_steps\": {\"gather\": %lld, \"activations\": %lld}, \"recv_bytes_max_rank\": {",
               W, (long long)T, dsacp_weight_plan_name(cp.q_proj), dsacp_weight_plan_name(cp.o_proj), t[reps / 2] * 1e3,
               (long long)u.q_proj_resident, (long long)u.o_proj_resident, (long long)u.ring_bytes,
               (long long)u.gather_bytes, (long long)u.steps_gather, (long long)u.steps_activations);
        for (int p = 0, first = 1; p < P; p++)
            if (mx[p] > 0) printf("%s\"%s\": %.0f", first ? "" : ", ", dsacp_comm_phase_name(p), mx[p]), first = 0;
        printf("}}\n");
    }
    if (rc && me == 0) fprintf(stderr, "cp_step: %s\n", dsacp_last_error());
    free(t), free(recv), free(mx), free(ids), free(tok), free(en);
    dsacp_engine_free(e);
    dsacp_model_free(m);
    dsacp_comm_free(world);
    return rc ? 1 : 0;
}
