/*
 * test_plan.c -- the planner (src/plan): hardware profiles load or fail naming the field, and the
 * per-layer figures of `dsacp plan` at V3.2's dimensions are the ones docs/context-parallel.md
 * measured (the byte formulas themselves are checked against the counters by test_cp).
 */
#include "test.h"
#include "dsacp_plan.h"
#include "plan/plan.h"
#include "ref/test_util.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *src_dir(void)
{
    const char *s = getenv("DSACP_SOURCE_DIR");
    return s ? s : ".";
}

/* A profile of hardware/ by name (most tests' set-up). */
static void load_profile(const char *name, dsacp_hw *hw)
{
    char p[4200];
    snprintf(p, sizeof p, "%s/hardware/%s.json", src_dir(), name);
    REQUIRE_OK(dsacp_hw_load(p, hw));
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
    dsacp_hw hw;
    load_profile("h200-nvlink8", &hw);
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
    dsacp_hw hw;
    load_profile("b200-nvlink8", &hw);
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
    dsacp_hw hw;
    load_profile("h200-nvlink8", &hw);
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
    dsacp_hw hw;
    load_profile("h200-nvlink8", &hw);
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


/* Writes text to dir/name; returns the path (static buffer). */
static const char *write_text(const char *dir, const char *name, const char *text)
{
    static char path[4200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    if (f) fputs(text, f), fclose(f);
    return path;
}

/* Profile fields outside their physical ranges (docs/planning.md) are refused naming the file and
 * the field: a tiny positive bandwidth made `plan` print inf and exit 0 (issue 20 item 8); a file
 * that cannot be read says why, not "line -1" (item 15). */
static void test_profile_bounds(void)
{
    char *dir = tu_tempdir();
    const struct {
        const char *field, *value, *want;
    } bad[] = {
        {"mem_bw", "1e-300", "mem_bw"},          {"net_bw", "1e-300", "net_bw"},       {"link_bw", "5e15", "link_bw"},
        {"net_latency_us", "1e300", "net_latency_us"}, {"link_latency_us", "0", "link_latency_us"},
        {"flops_fp8", "1e30", "flops_fp8"},      {"flops_bf16", "10", "flops_bf16"},  {"mem_bytes", "1e20", "mem_bytes"},
        {"ranks_per_node", "8.0", "ranks_per_node"}, {"ranks_per_node", "100000", "ranks_per_node"},
        {"mem_bw", "true", "mem_bw"},            {"mem_bw", "\"4.8e12\"", "mem_bw"},  {"name", "\"a\\u0007b\"", "name"},
    };
    const char *keys[] = {"name", "source", "flops_bf16", "flops_fp8", "mem_bw", "mem_bytes", "ranks_per_node",
                          "link_bw", "link_latency_us", "net_bw", "net_latency_us"};
    const char *vals[] = {"\"x\"", "\"y\"", "1e12", "2e12", "1e12", "1e9", "8", "1e9", "5", "1e9", "9"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char text[2048];
        size_t n = (size_t)snprintf(text, sizeof text, "{");
        for (int k = 0; k < 11; k++)
            n += (size_t)snprintf(text + n, sizeof text - n, "%s\"%s\": %s", k ? ", " : "", keys[k],
                                  strcmp(keys[k], bad[i].field) ? vals[k] : bad[i].value);
        snprintf(text + n, sizeof text - n, "}\n");
        char name[32];
        snprintf(name, sizeof name, "b%zu.json", i);
        const char *path = write_text(dir, name, text);
        dsacp_hw hw;
        const int rc = dsacp_hw_load(path, &hw);
        CHECKF(rc == DSACP_EINVAL && strstr(dsacp_last_error(), path) && strstr(dsacp_last_error(), bad[i].want),
               "%s = %s: status %d, '%s'", bad[i].field, bad[i].value, rc, dsacp_last_error());
    }
    /* the ends of the ranges are accepted */
    const char *edge = write_text(dir, "edge.json",
                                  "{\"name\": \"e\", \"source\": \"s\", \"flops_bf16\": 1e6, \"flops_fp8\": 1e18, \"mem_bw\": 1e15, "
                                  "\"mem_bytes\": 1e6, \"ranks_per_node\": 65536, \"link_bw\": 1e6, \"link_latency_us\": 1e-3, "
                                  "\"net_bw\": 1e15, \"net_latency_us\": 1e6}");
    dsacp_hw hw;
    CHECK_OK(dsacp_hw_load(edge, &hw));
    /* cannot open / not a regular file / a JSON error at its line, each naming the file */
    char missing[4200];
    snprintf(missing, sizeof missing, "%s/none.json", dir);
    CHECK(dsacp_hw_load(missing, &hw) == DSACP_EINVAL);
    CHECKF(strstr(dsacp_last_error(), missing) && strstr(dsacp_last_error(), "cannot open") && !strstr(dsacp_last_error(), "line -1"),
           "missing profile: '%s'", dsacp_last_error());
    CHECK(dsacp_hw_load(dir, &hw) == DSACP_EINVAL);
    CHECKF(strstr(dsacp_last_error(), dir) && strstr(dsacp_last_error(), "not a regular file"), "directory: '%s'",
           dsacp_last_error());
    const char *broken = write_text(dir, "broken.json", "{\n  \"name\": \"x\",\n  \"source\": oops\n}\n");
    CHECK(dsacp_hw_load(broken, &hw) == DSACP_EINVAL);
    CHECKF(strstr(dsacp_last_error(), broken) && strstr(dsacp_last_error(), "line 3"), "broken JSON: '%s'", dsacp_last_error());
    tu_rmtree(dir);
    free(dir);
}

/* A profile that bypasses the loader's bounds (a caller's own struct): a non-finite figure is
 * DSACP_ERANGE naming it, never a result (issue 20 item 8). */
static void test_nonfinite(void)
{
    dsacp_config cfg;
    REQUIRE_OK(dsacp_preset_config("v32-layer", &cfg));
    dsacp_hw hw = {.flops_bf16 = 1e15, .flops_fp8 = 2e15, .mem_bw = 1e-310, .mem_bytes = 1e11, .ranks_per_node = 8,
                   .link_bw = 1e11, .link_latency_us = 5, .net_bw = 1e10, .net_latency_us = 10};
    dsacp_cp_options cp;
    dsacp_cp_options_default(&cp);
    dsacp_plan_decode d;
    CHECK(dsacp_plan_decode_layer(&cfg, &cp, 8, 131072, 1, true, &hw, &d) == DSACP_ERANGE);
    CHECKF(strstr(dsacp_last_error(), "t_memory") != NULL, "'%s'", dsacp_last_error());
    hw.mem_bw = 1e12, hw.net_bw = 1e-310;
    CHECK(dsacp_plan_decode_layer(&cfg, &cp, 16, 131072, 1, true, &hw, &d) == DSACP_ERANGE);
    CHECKF(strstr(dsacp_last_error(), "t_comm") != NULL, "'%s'", dsacp_last_error());
    bool dist;
    CHECK(dsacp_plan_chunk_layer(&cfg, &cp, 16, 131072, 64, true, &hw, &d, &dist) == DSACP_ERANGE);
    CHECK(dsacp_plan_prefill_layer(&cfg, &cp, 16, 4096, DSACP_PLAN_PREFILL_CP, true, &hw, &d) == DSACP_ERANGE);
    dsacp_plan_model pm;
    CHECK(dsacp_plan_decode_model(&cfg, &cp, 16, 1, 4096, 1, true, 0, &hw, &pm) == DSACP_ERANGE);
    /* byte counts past 64 bits (allgather-kv: batch x context x entry bytes) are refused, not
     * wrapped; V3.2 itself at the largest flags still fits */
    hw.net_bw = 1e10;
    cp.decode = DSACP_DECODE_ALLGATHER_KV;
    CHECK_OK(dsacp_plan_decode_layer(&cfg, &cp, 4096, (int64_t)1 << 32, 1 << 16, false, &hw, &d));
    CHECK(d.recv_bytes > 0x1p59 && d.recv_bytes < 0x1p63);
    cfg.kv_lora_rank = 65536;
    CHECK(dsacp_plan_decode_layer(&cfg, &cp, 4096, (int64_t)1 << 32, 1 << 16, false, &hw, &d) == DSACP_ERANGE);
    CHECKF(strstr(dsacp_last_error(), "64 bits") != NULL, "'%s'", dsacp_last_error());
}

/* The strategies of `dsacp plan` (tools/cli/cli_plan.c's table), in its order. */
static const struct {
    dsacp_decode_strategy s;
    dsacp_cp_layout kv, idx;
    int64_t group;
    dsacp_lean_merge merge;
    dsacp_merge_backend backend;
} plan_variants[] = {
    {DSACP_DECODE_ALLGATHER_KV, DSACP_LAYOUT_REPLICATED, DSACP_LAYOUT_REPLICATED, 1, DSACP_LEAN_MERGE_OUTPUT, DSACP_MERGE_AG_RS},
    {DSACP_DECODE_ALLGATHER_KV, DSACP_LAYOUT_SHARDED, DSACP_LAYOUT_SHARDED, 1, DSACP_LEAN_MERGE_OUTPUT, DSACP_MERGE_AG_RS},
    {DSACP_DECODE_REPLICATED_INDEX, DSACP_LAYOUT_SHARDED, DSACP_LAYOUT_REPLICATED, 1, DSACP_LEAN_MERGE_OUTPUT, DSACP_MERGE_AG_RS},
    {DSACP_DECODE_EXACT_TOPK, DSACP_LAYOUT_SHARDED, DSACP_LAYOUT_SHARDED, 1, DSACP_LEAN_MERGE_OUTPUT, DSACP_MERGE_AG_RS},
    {DSACP_DECODE_EXACT_TOPK, DSACP_LAYOUT_SHARDED, DSACP_LAYOUT_SHARDED, 1, DSACP_LEAN_MERGE_OUTPUT, DSACP_MERGE_A2A},
    {DSACP_DECODE_EXACT_TOPK, DSACP_LAYOUT_SHARDED, DSACP_LAYOUT_PARTIAL, 2, DSACP_LEAN_MERGE_OUTPUT, DSACP_MERGE_AG_RS},
    {DSACP_DECODE_LEAN, DSACP_LAYOUT_SHARDED, DSACP_LAYOUT_SHARDED, 1, DSACP_LEAN_MERGE_OUTPUT, DSACP_MERGE_AG_RS},
    {DSACP_DECODE_LEAN, DSACP_LAYOUT_SHARDED, DSACP_LAYOUT_SHARDED, 1, DSACP_LEAN_MERGE_VALUES, DSACP_MERGE_A2A},
};
enum { PLAN_NV = sizeof plan_variants / sizeof plan_variants[0] };

static void variant_options(int v, double lean_factor, dsacp_cp_options *cp)
{
    dsacp_cp_options_default(cp);
    cp->decode = plan_variants[v].s, cp->kv_layout = plan_variants[v].kv, cp->index_layout = plan_variants[v].idx;
    cp->index_group = plan_variants[v].group, cp->lean_merge = plan_variants[v].merge;
    cp->merge_backend = plan_variants[v].backend, cp->lean_factor = lean_factor;
}

/* The busiest rank's bytes and calls are those the planner gave before its per-rank loops became
 * one pass over the ranks (issue 20 item 9): `dsacp plan --preset v32-layer --batch 3 --chunk 301
 * --prefill 3001 --lean-candidates 1.5 --hardware hardware/h200-nvlink8.json` at these W and
 * contexts, by the code of commit fbe47bc (the decode table's per-phase bytes summed). */
static const struct {
    int64_t W, context;
    int exact, ns, nc;
    double v[64];
} golden[] = {
    {3, 100, 0, 7, 5, {114688, 1, 273076, 2, 1233664, 4, 1331968, 5, 1329928, 4, 60416, 2, 124424, 2, 230356, 3, 123777624, 4, 239068, 3, 133640792, 5, 239068, 3, 133436112, 4, 239068, 3, 6061740, 2, 239068, 3, 12483876, 2, 57363115, 1, 73752576, 2, 1576788, 2, 1577576, 2, 1576788, 2}},
    {3, 100, 1, 7, 5, {114688, 1, 680704, 2, 1233664, 4, 1331968, 5, 1329928, 4, 117760, 2, 247816, 2, 746752, 3, 123777624, 4, 780544, 3, 133640792, 5, 780544, 3, 133436112, 4, 780544, 3, 11815256, 2, 780544, 3, 24864208, 2, 57363115, 1, 73752576, 2, 5634816, 2, 5637632, 2, 5634816, 2}},
    {3, 131071, 0, 7, 5, {114688, 1, 206683372, 2, 1233664, 4, 1331968, 5, 1329928, 4, 84992, 3, 149000, 3, 57508340, 3, 123777624, 4, 69042500, 3, 133640792, 5, 69042500, 3, 133436112, 4, 69042500, 3, 8527532, 3, 69042500, 3, 14949668, 3, 57363115, 1, 73752576, 2, 1576788, 2, 1577576, 2, 1576788, 2}},
    {3, 131071, 1, 7, 5, {114688, 1, 738309376, 2, 1233664, 4, 1331968, 5, 1329928, 4, 142336, 3, 272392, 3, 201918208, 3, 123777624, 4, 246656768, 3, 133640792, 5, 246656768, 3, 133436112, 4, 246656768, 3, 14281048, 3, 246656768, 3, 27330000, 3, 57363115, 1, 73752576, 2, 5634816, 2, 5637632, 2, 5634816, 2}},
    {5, 100, 0, 7, 5, {137628, 1, 326748, 2, 1487772, 4, 1684380, 5, 1679484, 4, 74958, 2, 149934, 2, 242388, 3, 149272888, 4, 252948, 3, 168999224, 5, 252948, 3, 168507992, 4, 252948, 3, 7520668, 2, 252948, 3, 15043260, 2, 68835738, 1, 88503091, 2, 1891988, 2, 1894352, 2, 1891988, 2}},
    {5, 100, 1, 7, 5, {137628, 1, 813468, 2, 1487772, 4, 1684380, 5, 1679484, 4, 143772, 2, 298620, 2, 862976, 3, 149272888, 4, 903936, 3, 168999224, 5, 903936, 3, 168507992, 4, 903936, 3, 14424888, 2, 903936, 3, 29961304, 2, 68835738, 1, 88503091, 2, 6761216, 2, 6769664, 2, 6761216, 2}},
    {5, 131071, 0, 7, 5, {137628, 1, 248019576, 2, 1487772, 4, 1684380, 5, 1679484, 4, 104478, 3, 179454, 3, 69004116, 3, 149272888, 4, 82845108, 3, 168999224, 5, 82845108, 3, 168507992, 4, 82845108, 3, 10482508, 3, 82845108, 3, 18005100, 3, 68835738, 1, 88503091, 2, 1891988, 2, 1894352, 2, 1891988, 2}},
    {5, 131071, 1, 7, 5, {137628, 1, 885969564, 2, 1487772, 4, 1684380, 5, 1679484, 4, 173292, 3, 328140, 3, 242295552, 3, 149272888, 4, 295981824, 3, 168999224, 5, 295981824, 3, 168507992, 4, 295981824, 3, 17386728, 3, 295981824, 3, 32923144, 3, 68835738, 1, 88503091, 2, 6761216, 2, 6769664, 2, 6761216, 2}},
    {8, 100, 0, 8, 6, {150528, 1, 358560, 2, 1623552, 4, 1967616, 5, 1958208, 4, 1771008, 5, 86016, 2, 162624, 2, 265104, 3, 162896384, 4, 276588, 3, 197417472, 5, 276588, 3, 196473536, 4, 276588, 3, 177691136, 5, 276588, 3, 8630272, 2, 276588, 3, 16316608, 2, 75289088, 1, 96800256, 2, 2069288, 2, 2074016, 2, 2070076, 2}},
    {8, 100, 1, 8, 6, {150528, 1, 893952, 2, 1623552, 4, 1967616, 5, 1958208, 4, 1771008, 5, 161280, 2, 323904, 2, 943872, 3, 162896384, 4, 988416, 3, 197417472, 5, 988416, 3, 196473536, 4, 988416, 3, 177691136, 5, 988416, 3, 16181760, 2, 988416, 3, 32498368, 2, 75289088, 1, 96800256, 2, 7394816, 2, 7411712, 2, 7397632, 2}},
    {8, 131071, 0, 8, 6, {150528, 1, 271272960, 2, 1623552, 4, 1967616, 5, 1958208, 4, 1771008, 5, 118272, 3, 194880, 3, 75470588, 3, 162896384, 4, 90609272, 3, 197417472, 5, 90609272, 3, 196473536, 4, 90609272, 3, 177691136, 5, 90609272, 3, 11866624, 3, 90609272, 3, 19552960, 3, 75289088, 1, 96800256, 2, 2069288, 2, 2074016, 2, 2070076, 2}},
    {8, 131071, 1, 8, 6, {150528, 1, 969034752, 2, 1623552, 4, 1967616, 5, 1958208, 4, 1771008, 5, 193536, 3, 356160, 3, 265008128, 3, 162896384, 4, 323727872, 3, 197417472, 5, 323727872, 3, 196473536, 4, 323727872, 3, 177691136, 5, 323727872, 3, 19418112, 3, 323727872, 3, 35734720, 3, 75289088, 1, 96800256, 2, 7394816, 2, 7411712, 2, 7397632, 2}},
};

static void test_golden(void)
{
    dsacp_config cfg;
    REQUIRE_OK(dsacp_preset_config("v32-layer", &cfg));
    dsacp_hw hw;
    load_profile("h200-nvlink8", &hw);
    for (size_t g = 0; g < sizeof golden / sizeof golden[0]; g++) {
        const int64_t W = golden[g].W, L = golden[g].context;
        const bool deployed = !golden[g].exact;
        const double *want = golden[g].v;
        int k = 0, ns = 0, nc = 0;
        for (int v = 0; v < PLAN_NV; v++) {
            dsacp_cp_options cp;
            variant_options(v, 1.5, &cp);
            if (cp.index_layout == DSACP_LAYOUT_PARTIAL && (W % cp.index_group || W < 2 * cp.index_group)) continue;
            dsacp_plan_decode d;
            CHECK_OK(dsacp_plan_decode_layer(&cfg, &cp, W, L, 3, deployed, &hw, &d));
            CHECKF(d.recv_bytes == want[k] && d.calls == want[k + 1], "W %lld context %lld strategy %d: %.0f bytes %.0f calls, "
                   "before %.0f %.0f", (long long)W, (long long)L, v, d.recv_bytes, d.calls, want[k], want[k + 1]);
            k += 2, ns++;
        }
        for (int v = 0; v < PLAN_NV; v++) {
            if (plan_variants[v].s == DSACP_DECODE_ALLGATHER_KV) continue;
            dsacp_cp_options cp;
            variant_options(v, 1.5, &cp);
            if (cp.index_layout == DSACP_LAYOUT_PARTIAL && (W % cp.index_group || W < 2 * cp.index_group)) continue;
            for (int path = 0; path < 2; path++) {
                cp.context_path = path ? DSACP_CONTEXT_DISTRIBUTED : DSACP_CONTEXT_GATHER;
                dsacp_plan_decode d;
                bool dist;
                CHECK_OK(dsacp_plan_chunk_layer(&cfg, &cp, W, L, 301, deployed, &hw, &d, &dist));
                CHECKF(d.recv_bytes == want[k] && d.calls == want[k + 1], "W %lld context %lld chunk strategy %d path %d: %.0f "
                       "bytes %.0f calls, before %.0f %.0f", (long long)W, (long long)L, v, path, d.recv_bytes, d.calls, want[k],
                       want[k + 1]);
                k += 2;
            }
            nc++;
        }
        const int modes[5] = {DSACP_PLAN_PREFILL_TP, DSACP_PLAN_PREFILL_TP_IDXSPLIT, DSACP_PLAN_PREFILL_CP, DSACP_PLAN_PREFILL_CP,
                              DSACP_PLAN_PREFILL_CP};
        const dsacp_prefill_split splits[5] = {DSACP_PREFILL_OWNER, DSACP_PREFILL_OWNER, DSACP_PREFILL_OWNER,
                                               DSACP_PREFILL_CONTIGUOUS, DSACP_PREFILL_ZIGZAG};
        for (int v = 0; v < 5; v++) {
            dsacp_cp_options cp;
            dsacp_cp_options_default(&cp);
            cp.prefill_split = splits[v];
            dsacp_plan_decode d;
            CHECK_OK(dsacp_plan_prefill_layer(&cfg, &cp, W, 3001, modes[v], deployed, &hw, &d));
            CHECKF(fabs(d.recv_bytes - want[k]) <= 0.5 && d.calls == want[k + 1], "W %lld prefill %d: %.1f bytes, before %.0f",
                   (long long)W, v, d.recv_bytes, want[k]);
            k += 2;
        }
        CHECK(ns == golden[g].ns && nc == golden[g].nc);
    }
}

/* Every rank's counters in one pass equal dsacp_plan_step_comm's rank by rank, and lean's
 * candidate counts (walked incrementally over the tokens) equal the per-token sum over the
 * index groups: decode tokens of contexts that repeat, grow by one, and jump back and forth,
 * interleaves 1 and 3, sharded and partial:2 indexes, with prefill entries beside them. */
static void test_ranks_pass(void)
{
    dsacp_config cfg;
    REQUIRE_OK(dsacp_preset_config("v32-layer", &cfg));
    cfg.num_hidden_layers = 2;
    const int64_t K = cfg.index_topk;
    int64_t ctx[64], req[64], rold[64], pold[2] = {5000, 0}, pnew[2] = {37, 9};
    int64_t nd = 0, nreq = 0;
    const int64_t starts[6] = {K + 5, K + 5, 3 * K, 100, 9000, 2 * K - 1};
    for (int r = 0; r < 6; r++) {
        rold[nreq] = starts[r];
        for (int j = 0; j < (r % 3) * 4 + 1 && nd < 64; j++) ctx[nd] = starts[r] + j, req[nd++] = nreq;
        nreq++;
    }
    for (int64_t W = 2; W <= 8; W++)
        for (int v = 0; v < PLAN_NV; v++)
            for (int64_t I = 1; I <= 3; I += 2) {
                dsacp_cp_options cp;
                variant_options(v, 2.0, &cp);
                cp.interleave = I;
                if (cp.index_layout == DSACP_LAYOUT_PARTIAL && W % cp.index_group) continue;
                dsacp_plan_step s = {.W = W, .nd = nd, .context = ctx, .request = req, .nreq = nreq, .req_old = rold, .npre = 2,
                                     .pre_old = pold, .pre_new = pnew, .latent_bytes = 656, .index_bytes = 132,
                                     .hidden_bytes = cfg.hidden_size * 4, .deployed = true, .want_logits = true, .want_topk = true};
                dsacp_comm_counter all[8 * DSACP_PHASE_COUNT];
                CHECK_OK(dsacp_plan_step_comm_ranks(&cfg, &cp, &s, all));
                int64_t iW = 1, iI = 1;
                if (cp.index_layout == DSACP_LAYOUT_SHARDED) iW = W, iI = I;
                if (cp.index_layout == DSACP_LAYOUT_PARTIAL) iW = W / cp.index_group, iI = I * cp.index_group;
                double kv = ceil((double)K * cp.lean_factor / (double)iW);
                const int64_t kp = kv < 1 ? 1 : kv > (double)K ? K : (int64_t)kv;
                for (int64_t r = 0; r < W; r++) {
                    s.rank = r;
                    dsacp_comm_counter one[DSACP_PHASE_COUNT];
                    CHECK_OK(dsacp_plan_step_comm(&cfg, &cp, &s, one));
                    CHECKF(!memcmp(one, all + r * DSACP_PHASE_COUNT, sizeof one), "W %lld strategy %d I %lld rank %lld",
                           (long long)W, v, (long long)I, (long long)r);
                    if (cp.decode != DSACP_DECODE_LEAN || iW == 1) continue;
                    const int64_t ir = cp.index_layout == DSACP_LAYOUT_PARTIAL ? r / cp.index_group : r;
                    int64_t mine = 0, oth = 0;
                    for (int64_t j = 0; j < nd; j++) {
                        const int64_t n = ctx[j] + 1;
                        if (n <= K) continue;
                        for (int64_t q = 0; q < iW; q++) {
                            const int64_t nq = dsacp_cp_local_len(n, q, iI, iW), mq = nq < kp ? nq : kp;
                            if (q == ir) mine += mq;
                            else oth += mq;
                        }
                    }
                    const dsacp_comm_counter *c = &one[DSACP_PHASE_index_candidates];
                    CHECKF(c->bytes_sent == 2 * mine * 4 * (iW - 1) && c->bytes_recv == 2 * oth * 4,
                           "lean W %lld I %lld rank %lld: sent %lld recv %lld, per token %lld %lld", (long long)W, (long long)I,
                           (long long)r, (long long)c->bytes_sent, (long long)c->bytes_recv, (long long)(2 * mine * 4 * (iW - 1)),
                           (long long)(2 * oth * 4));
                }
            }
}

/* W = 4096, the largest --cp: one pass over the ranks (W separate per-rank calls cost W^2 and
 * took minutes), every figure finite. A hang guard, not a timing. */
static void test_large_world(void)
{
    dsacp_config cfg;
    REQUIRE_OK(dsacp_preset_config("v32-layer", &cfg));
    dsacp_hw hw;
    load_profile("h200-nvlink8", &hw);
    for (int v = 0; v < PLAN_NV; v++) {
        dsacp_cp_options cp;
        variant_options(v, 2.0, &cp);
        dsacp_plan_decode d;
        bool dist;
        CHECK_OK(dsacp_plan_decode_layer(&cfg, &cp, 4096, 131072, 64, true, &hw, &d));
        CHECK(isfinite(d.t_layer) && d.recv_bytes > 0);
        if (cp.decode == DSACP_DECODE_ALLGATHER_KV) continue;
        cp.context_path = DSACP_CONTEXT_DISTRIBUTED;
        CHECK_OK(dsacp_plan_chunk_layer(&cfg, &cp, 4096, 131072, 2048, true, &hw, &d, &dist));
        CHECK(dist && isfinite(d.t_layer));
    }
    dsacp_cp_options cp;
    dsacp_cp_options_default(&cp);
    dsacp_plan_decode d;
    CHECK_OK(dsacp_plan_prefill_layer(&cfg, &cp, 4096, 65536, DSACP_PLAN_PREFILL_CP, true, &hw, &d));
    CHECK(isfinite(d.t_layer));
}

/* The keys each rank scores and attends for P new tokens after O cached ones, token by token
 * (the planner counts them per rank in closed form): the busiest rank's sums. */
static void brute_work(dsacp_prefill_split sp, int64_t I, int64_t W, int64_t O, int64_t P, int64_t K, double *scored,
                       double *attended, double *tokens)
{
    double sc[64] = {0}, at[64] = {0}, tk[64] = {0};
    const int64_t chunk = (P + W - 1) / W;
    for (int64_t i = 0; i < P; i++) {
        int64_t q;
        if (sp == DSACP_PREFILL_CONTIGUOUS) {
            q = i / chunk;
        } else if (sp == DSACP_PREFILL_ZIGZAG) {
            int64_t c = 0;
            while (c + 1 < 2 * W && P * (c + 1) / (2 * W) <= i) c++;
            q = c < W ? c : 2 * W - 1 - c;
        } else {
            q = dsacp_cp_owner(O + i, I, W);
        }
        sc[q] += (double)(O + i + 1), at[q] += (double)(O + i + 1 < K ? O + i + 1 : K), tk[q] += 1;
    }
    *scored = *attended = *tokens = 0;
    for (int64_t q = 0; q < W; q++) *scored = fmax(*scored, sc[q]), *attended = fmax(*attended, at[q]), *tokens = fmax(*tokens, tk[q]);
}

/* Prefill and a gathered chunk's compute from the closed-form per-rank sums equal the token-by-token
 * sums: every split, interleaves 1 and 3, contexts below, at and past the top-k, W up to 9. */
static void test_prefill_work(void)
{
    dsacp_config cfg;
    REQUIRE_OK(dsacp_preset_config("v32-layer", &cfg));
    dsacp_hw hw;
    load_profile("h200-nvlink8", &hw);
    const double H = (double)cfg.num_attention_heads, D = (double)cfg.hidden_size, Hi = (double)cfg.index_n_heads;
    const double di = (double)cfg.index_head_dim, dc = (double)cfg.kv_lora_rank, dr = (double)cfg.qk_rope_head_dim;
    const double dk = dc + dr, nope = (double)cfg.qk_nope_head_dim, dq = nope + dr, dv = (double)cfg.v_head_dim;
    const double ql = (double)cfg.q_lora_rank;
    const double mac_tok = D * ql + ql * H * dq + D * dk + ql * Hi * di + D * di + D * Hi + H * dv * D + H * nope * dc + H * dc * dv;
    const int64_t K = cfg.index_topk;
    const dsacp_prefill_split splits[3] = {DSACP_PREFILL_OWNER, DSACP_PREFILL_CONTIGUOUS, DSACP_PREFILL_ZIGZAG};
    const int64_t contexts[4] = {0, 7, K - 3, 3 * K + 5}, lens[4] = {1, 5, 333, 2 * K + 17};
    for (int64_t W = 1; W <= 9; W++)
        for (int sp = 0; sp < 3; sp++)
            for (int64_t I = 1; I <= 3; I += 2)
                for (int c = 0; c < 4; c++)
                    for (int l = 0; l < 4; l++) {
                        dsacp_cp_options cp;
                        dsacp_cp_options_default(&cp);
                        cp.prefill_split = splits[sp], cp.interleave = I, cp.context_path = DSACP_CONTEXT_GATHER;
                        cp.kv_layout = cp.index_layout = DSACP_LAYOUT_SHARDED;
                        const int64_t O = contexts[c], P = lens[l];
                        double sc, at, tk;
                        brute_work(splits[sp], I, W, O, P, K, &sc, &at, &tk);
                        const double want = 2 * (tk * mac_tok + sc * Hi * di + at * H * (dk + dc));
                        dsacp_plan_decode d;
                        bool dist;
                        if (O == 0) {
                            CHECK_OK(dsacp_plan_prefill_layer(&cfg, &cp, W, P, DSACP_PLAN_PREFILL_CP, true, &hw, &d));
                        } else {
                            CHECK_OK(dsacp_plan_chunk_layer(&cfg, &cp, W, O, P, true, &hw, &d, &dist));
                            CHECK(!dist);
                        }
                        CHECKF(fabs(d.flops - want) <= 1e-12 * want, "W %lld split %d I %lld O %lld P %lld: flops %.17g, token by "
                               "token %.17g", (long long)W, sp, (long long)I, (long long)O, (long long)P, d.flops, want);
                    }
}

int main(void)
{
    test_prefill_work();
    test_profile_bounds();
    test_nonfinite();
    test_golden();
    test_ranks_pass();
    test_large_world();
    test_v32_model();
    test_profiles();
    test_v32_figures();
    test_prefill();
    test_chunk();
    return test_finish("test_plan");
}
