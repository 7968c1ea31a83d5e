/*
 * test_cp_context.c -- every prefill split x context path (docs/context-parallel.md section
 * 3.6): long prompts in odd chunks after a sharded context, gathered or distributed through every
 * strategy, and --context-path auto by bytes and by a hardware profile's times.
 */
#include "test_cp_util.h"


/* ---- every prefill split x context path (issue 12): long prompts in odd chunks after
 * sharded context, mixed with decode tokens, against W = 1 ---- */
static void test_context_paths(const dsacp_model *m)
{
    dsacp_engine_options eo;
    dsacp_engine_options_default(&eo);
    eo.block_size = 16;
    eo.num_blocks = 64;
    const dsacp_prefill_split splits[3] = {DSACP_PREFILL_OWNER, DSACP_PREFILL_CONTIGUOUS, DSACP_PREFILL_ZIGZAG};
    const dsacp_context_path paths[3] = {DSACP_CONTEXT_GATHER, DSACP_CONTEXT_DISTRIBUTED, DSACP_CONTEXT_AUTO};
    const int64_t Is[2] = {1, 16};
    int k = 0;
    for (int a = 0; a < 3; a++)
        for (int b = 0; b < 3; b++)
            for (int c = 0; c < 2; c++, k++) {
                dsacp_cp_options cp;
                dsacp_cp_options_default(&cp);
                cp.prefill_split = splits[a];
                cp.context_path = paths[b];
                cp.interleave = Is[c];
                cp.decode = k % 2 ? DSACP_DECODE_LEAN : DSACP_DECODE_EXACT_TOPK;
                cp.lean_factor = 1.25;
                char what[96];
                snprintf(what, sizeof what, "split %s, context %s, I=%lld, %s", dsacp_prefill_split_name(cp.prefill_split),
                         dsacp_context_path_name(cp.context_path), (long long)cp.interleave,
                         dsacp_decode_strategy_name(cp.decode));
                const dsacp_cp_stats st = run_long(m, &eo, &cp, what, 1e-5, 1e-10);
                if (g_W > 1 && cp.context_path != DSACP_CONTEXT_AUTO) {
                    /* two chunks after context (77 tokens after 131, 29 after 47), each by the path asked */
                    const bool d = cp.context_path == DSACP_CONTEXT_DISTRIBUTED;
                    CHECKF(st.context_gather == (d ? 0 : 2 * g_W) && st.context_distributed == (d ? 2 * g_W : 0),
                           "%s W=%d: %lld chunks gathered, %lld distributed (summed over ranks)", what, g_W,
                           (long long)st.context_gather, (long long)st.context_distributed);
                }
            }
}

/* --context-path auto with a hardware profile: the path the planner prices faster on it. The
 * profiles span the two sides (link-bound: bytes decide; compute-bound: the distributed path's
 * replicated compute loses); every choice gives W = 1's results and the planner predicts every
 * collective, the choices included. */
static void test_context_hardware(const dsacp_model *m)
{
    dsacp_engine_options eo;
    dsacp_engine_options_default(&eo);
    eo.block_size = 16;
    eo.num_blocks = 64;
    char *dir = tu_tempdir();
    char prof[3][4200];
    static const char *const fig[3] = {
        /* slow links, instant rounds, fast compute: bytes decide */
        "\"flops_bf16\": 1e15, \"flops_fp8\": 1e15, \"mem_bw\": 1e13, \"link_bw\": 1e6, \"link_latency_us\": 1e-3",
        /* slow compute and memory, fast links: replicating the chunk's projections loses */
        "\"flops_bf16\": 1e6, \"flops_fp8\": 1e6, \"mem_bw\": 1e6, \"link_bw\": 1e13, \"link_latency_us\": 1e-3",
        "\"flops_bf16\": 9.89e14, \"flops_fp8\": 1.979e15, \"mem_bw\": 4.8e12, \"link_bw\": 4.5e11, \"link_latency_us\": 8"};
    for (int i = 0; i < 3; i++) {
        snprintf(prof[i], sizeof prof[i], "%s/hw%d.json", dir, i); /* each rank its own copy */
        FILE *f = fopen(prof[i], "w");
        REQUIRE_OK(f ? DSACP_OK : DSACP_EIO);
        fprintf(f, "{\"name\": \"test %d\", \"source\": \"test_cp\", %s, \"mem_bytes\": 1e11, \"ranks_per_node\": 8, "
                   "\"net_bw\": 1e9, \"net_latency_us\": 10}\n", i, fig[i]);
        fclose(f);
    }
    int64_t gathered = 0, distributed = 0;
    for (int k = 0; k < 2; k++) {
        dsacp_cp_options cp;
        dsacp_cp_options_default(&cp);
        cp.context_path = DSACP_CONTEXT_AUTO;
        cp.decode = k ? DSACP_DECODE_LEAN : DSACP_DECODE_EXACT_TOPK;
        cp.lean_factor = 1.25;
        char what[96];
        snprintf(what, sizeof what, "context auto by bytes, %s", dsacp_decode_strategy_name(cp.decode));
        const dsacp_cp_stats bytes = run_long(m, &eo, &cp, what, 1e-5, 1e-10);
        for (int i = 0; i < 3; i++) {
            cp.context_hardware = prof[i];
            snprintf(what, sizeof what, "context auto on profile %d, %s", i, dsacp_decode_strategy_name(cp.decode));
            const dsacp_cp_stats st = run_long(m, &eo, &cp, what, 1e-5, 1e-10);
            gathered += st.context_gather, distributed += st.context_distributed;
            /* link-bound: the path whose exact bytes (the planner's, busiest rank) are fewer for
             * each of run_long's two chunks (77 tokens after 131, 29 after 45) -- not always the
             * byte rule's pick, whose per-token figure is the long-context one; compute-bound:
             * never the distributed path */
            if (g_W > 1 && i == 0) {
                dsacp_hw hw;
                REQUIRE_OK(dsacp_hw_load(prof[0], &hw));
                static const int64_t ch[2][2] = {{131, 77}, {45, 29}};
                int64_t want = 0;
                for (int c = 0; c < 2; c++) {
                    dsacp_cp_options c2 = cp;
                    dsacp_plan_decode g, d;
                    bool dg, dd;
                    c2.context_path = DSACP_CONTEXT_GATHER;
                    CHECK_OK(dsacp_plan_chunk_layer(dsacp_model_config(m), &c2, g_W, ch[c][0], ch[c][1], false, &hw, &g, &dg));
                    c2.context_path = DSACP_CONTEXT_DISTRIBUTED;
                    CHECK_OK(dsacp_plan_chunk_layer(dsacp_model_config(m), &c2, g_W, ch[c][0], ch[c][1], false, &hw, &d, &dd));
                    want += d.recv_bytes < g.recv_bytes;
                }
                CHECKF(st.context_distributed == want * g_W && st.context_gather == (2 - want) * g_W,
                       "%s W=%d: %lld chunks gathered, %lld distributed; fewer bytes distributed for %lld of 2 (by the "
                       "byte rule: %lld, %lld)", what, g_W, (long long)st.context_gather, (long long)st.context_distributed,
                       (long long)want, (long long)bytes.context_gather, (long long)bytes.context_distributed);
            }
            if (g_W > 1 && i == 1)
                CHECKF(st.context_gather > 0 && st.context_distributed == 0, "%s W=%d: %lld chunks gathered, %lld distributed",
                       what, g_W, (long long)st.context_gather, (long long)st.context_distributed);
        }
    }
    if (g_W > 1) CHECKF(distributed > 0 && gathered > 0, "W=%d: %lld gathered, %lld distributed", g_W, (long long)gathered,
                        (long long)distributed);
    if (g_rank == 0) printf("context auto by planned time: %lld chunks gathered, %lld distributed (summed over ranks)\n",
                            (long long)gathered, (long long)distributed);
    /* a profile with a missing field, or without auto: refused on every rank, naming the file */
    dsacp_cp_options cp;
    dsacp_cp_options_default(&cp);
    cp.context_path = DSACP_CONTEXT_AUTO;
    char bad[4300];
    snprintf(bad, sizeof bad, "%s/none.json", dir);
    cp.context_hardware = bad;
    dsacp_engine *e = NULL;
    CHECK(dsacp_engine_create_cp(m, &eo, &cp, g_world, &e) != DSACP_OK && !e && strstr(dsacp_last_error(), "none.json"));
    cp.context_path = DSACP_CONTEXT_GATHER;
    cp.context_hardware = prof[0];
    CHECK(dsacp_engine_create_cp(m, &eo, &cp, g_world, &e) == DSACP_EINVAL && !e);
    tu_rmtree(dir);
    free(dir);
}

/* The distributed path through the other strategies and through DSA-CP + DCP's weight plans. */
static void test_context_paths_more(const dsacp_model *m)
{
    dsacp_engine_options eo;
    dsacp_engine_options_default(&eo);
    eo.block_size = 16;
    eo.num_blocks = 64;
    for (int c = 0; c < 4; c++) {
        dsacp_cp_options cp;
        dsacp_cp_options_default(&cp);
        cp.context_path = DSACP_CONTEXT_DISTRIBUTED;
        cp.interleave = c % 2 ? 16 : 1;
        if (c == 0) cp.decode = DSACP_DECODE_ALLGATHER_KV;
        if (c == 1) cp.decode = DSACP_DECODE_REPLICATED_INDEX, cp.index_layout = DSACP_LAYOUT_REPLICATED;
        if (c >= 2) {
            cp.mode = DSACP_CP_DSA_CP, cp.prefill_split = c == 2 ? DSACP_PREFILL_CONTIGUOUS : DSACP_PREFILL_ZIGZAG;
            cp.decode = c == 2 ? DSACP_DECODE_LEAN : DSACP_DECODE_EXACT_TOPK;
            cp.q_proj = DSACP_WEIGHTS_LAYER_SHARD, cp.o_proj = c == 2 ? DSACP_WEIGHTS_TP : DSACP_WEIGHTS_AUTO;
        }
        char what[96];
        snprintf(what, sizeof what, "context distributed, %s %s, I=%lld", dsacp_cp_mode_name(cp.mode),
                 dsacp_decode_strategy_name(cp.decode), (long long)cp.interleave);
        run_long(m, &eo, &cp, what, 1e-5, 1e-10);
    }
}

int main(int argc, char **argv)
{
    cp_test_begin(&argc, &argv);
    char *dir = NULL;
    dsacp_engine_options eo;
    dsacp_model *m = cp_test_tiny(&dir, &eo);
    test_context_paths(m);
    test_context_paths_more(m);
    test_context_hardware(m);
    drop_model(m, dir);
    return cp_test_end("test_cp_context");
}
