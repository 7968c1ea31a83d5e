/*
 * test_plan.c -- the planner (src/plan): hardware profiles load or fail naming the field, and the
 * per-layer figures of `dsacp plan` at V3.2's dimensions are the ones docs/context-parallel.md
 * measured (the byte formulas themselves are checked against the counters by test_cp).
 */
#include "test.h"
#include "dsacp_plan.h"
#include "ref/test_util.h"

#include <stdio.h>
#include <string.h>

static const char *src_dir(void)
{
    const char *s = getenv("DSACP_SOURCE_DIR");
    return s ? s : ".";
}

static void test_profiles(void)
{
    const char *names[] = {"h200-nvlink8", "b200-nvlink8", "mi355x-8", "ascend-910b-8"};
    for (int i = 0; i < 4; i++) {
        char p[4200];
        snprintf(p, sizeof p, "%s/hardware/%s.json", src_dir(), names[i]);
        dsacp_hw hw;
        CHECK_OK(dsacp_hw_load(p, &hw));
        CHECK(hw.flops_fp8 >= hw.flops_bf16 && hw.mem_bw > 1e11 && hw.ranks_per_node == 8 && strlen(hw.source) > 20);
    }
    /* bad files: the message names the file and the field */
    char *dir = tu_tempdir();
    const char *good = "\"name\": \"x\", \"source\": \"y\", \"flops_bf16\": 1e12, \"flops_fp8\": 2e12, \"mem_bw\": 1e12, "
                       "\"mem_bytes\": 1e9, \"ranks_per_node\": 8, \"link_bw\": 1e9, \"link_latency_us\": 5, \"net_bw\": 1e9";
    struct {
        const char *text, *want;
    } bad[] = {
        {"{%s, \"net_latency_us\": 9}", NULL},
        {"{%s}", "net_latency_us"},
        {"{%s, \"net_latency_us\": \"fast\"}", "net_latency_us"},
        {"{%s, \"net_latency_us\": -1}", "net_latency_us"},
        {"[%s]", "line"},
        {"{%s, \"net_latency_us\": 9, \"ranks_per_node\": 2.5}", "ranks_per_node"}, /* a repeated key: the last counts */
        {"{\"name\": \"\", \"source\": \"y\"}", "name"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char path[4200], text[1024];
        snprintf(path, sizeof path, "%s/hw%zu.json", dir, i);
        snprintf(text, sizeof text, bad[i].text, good);
        FILE *f = fopen(path, "w");
        if (!f) {
            CHECK(f != NULL);
            continue;
        }
        fputs(text, f);
        fclose(f);
        dsacp_hw hw;
        const int rc = dsacp_hw_load(path, &hw);
        if (!bad[i].want) {
            CHECK_OK(rc);
            continue;
        }
        CHECKF(rc == DSACP_EINVAL && strstr(dsacp_last_error(), path), "profile %zu: status %d, message '%s'", i, rc,
               dsacp_last_error());
        if (i != 4)
            CHECKF(strstr(dsacp_last_error(), bad[i].want) != NULL, "profile %zu: '%s' does not name '%s'", i,
                   dsacp_last_error(), bad[i].want);
    }
    tu_rmtree(dir);
    free(dir);
}

/* V3.2 at W = 8, 128K, deployed: the measured rows of docs/context-parallel.md section 8. */
static void test_v32_figures(void)
{
    dsacp_config cfg;
    REQUIRE_OK(dsacp_preset_config("v32-layer", &cfg));
    char p[4200];
    snprintf(p, sizeof p, "%s/hardware/h200-nvlink8.json", src_dir());
    dsacp_hw hw;
    REQUIRE_OK(dsacp_hw_load(p, &hw));
    struct {
        dsacp_decode_strategy s;
        dsacp_cp_layout idx;
        double kb;
        int calls;
    } want[] = {
        {DSACP_DECODE_EXACT_TOPK, DSACP_LAYOUT_SHARDED, 640.5, 5},
        {DSACP_DECODE_REPLICATED_INDEX, DSACP_LAYOUT_REPLICATED, 528.5, 4},
        {DSACP_DECODE_LEAN, DSACP_LAYOUT_SHARDED, 42.0, 3},
    };
    for (int i = 0; i < 3; i++) {
        dsacp_cp_options cp;
        dsacp_cp_options_default(&cp);
        cp.decode = want[i].s, cp.index_layout = want[i].idx;
        dsacp_plan_decode d;
        CHECK_OK(dsacp_plan_decode_layer(&cfg, &cp, 8, 131072, 1, true, &hw, &d));
        CHECKF(d.recv_bytes == want[i].kb * 1024 && d.calls == want[i].calls, "%s: %.1f KB in %.0f calls, measured %.1f KB "
               "in %d", dsacp_decode_strategy_name(want[i].s), d.recv_bytes / 1024, d.calls, want[i].kb, want[i].calls);
        CHECK(d.t_layer > 0 && d.t_layer >= d.t_comm && d.kv_bytes_per_rank > 0);
        /* a batch of 8 tokens: 8x the bytes, the weights read once */
        dsacp_plan_decode d8;
        CHECK_OK(dsacp_plan_decode_layer(&cfg, &cp, 8, 131072, 8, true, &hw, &d8));
        CHECK(d8.recv_bytes == 8 * d.recv_bytes && d8.weight_bytes == d.weight_bytes && d8.calls == d.calls);
    }
    /* allgather-kv grows with the context */
    dsacp_cp_options cp;
    dsacp_cp_options_default(&cp);
    cp.decode = DSACP_DECODE_ALLGATHER_KV;
    dsacp_plan_decode a, b;
    CHECK_OK(dsacp_plan_decode_layer(&cfg, &cp, 8, 32768, 1, true, &hw, &a));
    CHECK_OK(dsacp_plan_decode_layer(&cfg, &cp, 8, 131072, 1, true, &hw, &b));
    CHECK(b.recv_bytes > 3.9 * a.recv_bytes);
}

/* Prefill at 150K on 8 B200s: splitting the indexer's rows gains over replicated-indexer TP
 * (TensorRT-LLM #11871's direction), the CP splits move (W - 1) / W x P x 788 bytes per layer,
 * and the contiguous split is the slowest of them (its last rank scores 1.75x the mean keys). */
static void test_prefill(void)
{
    dsacp_config cfg;
    REQUIRE_OK(dsacp_preset_config("v32-layer", &cfg));
    char p[4200];
    snprintf(p, sizeof p, "%s/hardware/b200-nvlink8.json", src_dir());
    dsacp_hw hw;
    REQUIRE_OK(dsacp_hw_load(p, &hw));
    dsacp_cp_options cp;
    dsacp_cp_options_default(&cp);
    const int64_t P = 153600;
    dsacp_plan_decode tp, tps, own, con, zz;
    CHECK_OK(dsacp_plan_prefill_layer(&cfg, &cp, 8, P, DSACP_PLAN_PREFILL_TP, true, &hw, &tp));
    CHECK_OK(dsacp_plan_prefill_layer(&cfg, &cp, 8, P, DSACP_PLAN_PREFILL_TP_IDXSPLIT, true, &hw, &tps));
    CHECK_OK(dsacp_plan_prefill_layer(&cfg, &cp, 8, P, DSACP_PLAN_PREFILL_CP, true, &hw, &own));
    cp.prefill_split = DSACP_PREFILL_CONTIGUOUS;
    CHECK_OK(dsacp_plan_prefill_layer(&cfg, &cp, 8, P, DSACP_PLAN_PREFILL_CP, true, &hw, &con));
    cp.prefill_split = DSACP_PREFILL_ZIGZAG;
    CHECK_OK(dsacp_plan_prefill_layer(&cfg, &cp, 8, P, DSACP_PLAN_PREFILL_CP, true, &hw, &zz));
    CHECKF(tp.t_layer > 1.5 * tps.t_layer, "indexer split: %.4f s vs TP %.4f s", tps.t_layer, tp.t_layer);
    CHECK(own.recv_bytes == (double)(P - P / 8) * 788 && con.recv_bytes == own.recv_bytes);
    CHECK(con.t_layer > own.t_layer && con.t_layer > zz.t_layer && con.flops > 1.3 * own.flops);
}

/* Chunked prefill after a sharded 128K context on 8 H200s, priced by context path: the gather
 * path moves the context's sharded entries ((W - 1) / W x L x 788 B) plus the chunk's, whatever
 * the decode strategy; the distributed path moves the strategy's per-token bytes (C x its decode
 * bytes: exact for exact-topk); auto takes the byte rule's side (the engine's); short chunks are
 * cheaper distributed, long ones gathered, in bytes and in time. */
static void test_chunk(void)
{
    dsacp_config cfg;
    REQUIRE_OK(dsacp_preset_config("v32-layer", &cfg));
    char p[4200];
    snprintf(p, sizeof p, "%s/hardware/h200-nvlink8.json", src_dir());
    dsacp_hw hw;
    REQUIRE_OK(dsacp_hw_load(p, &hw));
    dsacp_cp_options cp;
    dsacp_cp_options_default(&cp);
    cp.decode = DSACP_DECODE_EXACT_TOPK;
    const int64_t L = 131072, W = 8;
    for (int c = 0; c < 2; c++) {
        const int64_t C = c ? 4096 : 16;
        dsacp_plan_decode g, d, a, dec;
        bool dg, dd, da;
        cp.context_path = DSACP_CONTEXT_GATHER;
        CHECK_OK(dsacp_plan_chunk_layer(&cfg, &cp, W, L, C, true, &hw, &g, &dg));
        cp.context_path = DSACP_CONTEXT_DISTRIBUTED;
        CHECK_OK(dsacp_plan_chunk_layer(&cfg, &cp, W, L, C, true, &hw, &d, &dd));
        cp.context_path = DSACP_CONTEXT_AUTO;
        CHECK_OK(dsacp_plan_chunk_layer(&cfg, &cp, W, L, C, true, &hw, &a, &da));
        CHECK(!dg && dd);
        /* gather: the context's entries from the 7 other ranks, the chunk's from the ranks that made
         * them, and to rank 0 the last token's hidden row (its logits) */
        CHECKF(g.recv_bytes >= (double)(L - L / W) * 788 &&
                   g.recv_bytes <= (double)(L - L / W + C) * 788 + (double)cfg.hidden_size * 4,
               "chunk %lld gathered: %.0f bytes", (long long)C, g.recv_bytes);
        /* distributed: C decode tokens, per token what a decode step's token moves (logits aside) */
        CHECK_OK(dsacp_plan_decode_layer(&cfg, &cp, W, L, 1, true, &hw, &dec));
        CHECKF(d.recv_bytes > 0.99 * (double)C * dec.recv_bytes && d.recv_bytes < 1.01 * (double)C * dec.recv_bytes + 1e5,
               "chunk %lld distributed: %.0f bytes vs %lld x %.0f", (long long)C, d.recv_bytes, (long long)C, dec.recv_bytes);
        CHECK(da == (d.recv_bytes < g.recv_bytes));
        CHECK(a.t_layer == (da ? d.t_layer : g.t_layer));
        if (c == 0) CHECK(da && d.t_layer < g.t_layer);
        else CHECK(!da && g.t_layer < d.t_layer);
    }
}

/* The whole V3.2: its parameters (about 671 B plus the indexer's, FP8: one byte each) on one rank
 * with replicated experts; with experts over 8 ranks a rank holds its 32 experts per MoE layer
 * and the rest; an all-reduce per MoE layer only when experts are spread. */
static void test_v32_model(void)
{
    dsacp_config cfg;
    REQUIRE_OK(dsacp_plan_preset("v32", &cfg));
    CHECK(cfg.num_hidden_layers == 61 && cfg.n_routed_experts == 256 && cfg.vocab_size == 129280);
    char p[4200];
    snprintf(p, sizeof p, "%s/hardware/h200-nvlink8.json", src_dir());
    dsacp_hw hw;
    REQUIRE_OK(dsacp_hw_load(p, &hw));
    dsacp_cp_options cp;
    dsacp_cp_options_default(&cp);
    cp.kv_layout = cp.index_layout = DSACP_LAYOUT_REPLICATED; /* W = 1 */
    dsacp_plan_model one, ep8;
    CHECK_OK(dsacp_plan_decode_model(&cfg, &cp, 1, 1, 4096, 1, true, 0, &hw, &one));
    CHECKF(one.weights_per_rank > 670e9 && one.weights_per_rank < 700e9, "V3.2 weights %.4g bytes", one.weights_per_rank);
    CHECK(one.t_moe_comm == 0 && one.tpot > one.t_attention + one.t_mlp);
    dsacp_cp_options_default(&cp);
    CHECK_OK(dsacp_plan_decode_model(&cfg, &cp, 8, 8, 131072, 1, true, 0, &hw, &ep8));
    const double experts = 58.0 * 256 / 8 * 3 * 7168 * 2048; /* the rank's routed experts, 58 MoE layers */
    CHECKF(ep8.weights_per_rank > experts && ep8.weights_per_rank < experts + 20e9, "rank holds %.4g", ep8.weights_per_rank);
    CHECK(ep8.t_moe_comm > 0 && ep8.ep == 8);
    CHECK(dsacp_plan_decode_model(&cfg, &cp, 8, 3, 131072, 1, true, 0, &hw, &ep8) == DSACP_EINVAL);
}

int main(void)
{
    test_v32_model();
    test_profiles();
    test_v32_figures();
    test_prefill();
    test_chunk();
    return test_finish("test_plan");
}
