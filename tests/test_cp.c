/*
 * test_cp.c -- context parallelism against W = 1 (run under mpirun with W = 2, 3, 4 by CTest, and
 * alone as W = 1). One table of cases {numerics, decode strategy, kv layout, index layout,
 * interleave} runs one mixed schedule (prefill chunks and decode tokens of four requests of
 * different lengths, a prompt exactly index_topk long, a request shorter than W x I, a step with
 * fewer tokens than ranks, a prefill chunk after decodes) on the CP group and on a solo engine
 * in the same process, and compares on rank 0: identical selected sets in every layer, logits
 * within the documented tolerance. A model whose indexer head weights are zero makes every
 * index score tie (0): the selection is then the lowest positions, so ranks that own none of a
 * token's winners are exercised (lse = -inf, no NaN). The planner's prediction of every
 * case's schedule equals the counters. Other topics: test_cp_counters.c, test_cp_lean.c,
 * test_cp_context.c, test_cp_memory.c (helpers in test_cp_util.h).
 */
#include "test_cp_util.h"

static const cp_case all_cases[] = {
#define CASES(I)                                                                                               \
    {"allgather-kv kv=sharded idx=sharded", DSACP_DECODE_ALLGATHER_KV, DSACP_LAYOUT_SHARDED, DSACP_LAYOUT_SHARDED, I, DSACP_CP_DCP, DSACP_PREFILL_OWNER, DSACP_WEIGHTS_REPLICATED, DSACP_WEIGHTS_REPLICATED, 0, DSACP_LEAN_MERGE_OUTPUT, DSACP_PARTIALS_AUTO}, \
    {"allgather-kv kv=replicated idx=repl", DSACP_DECODE_ALLGATHER_KV, DSACP_LAYOUT_REPLICATED, DSACP_LAYOUT_REPLICATED, I, DSACP_CP_DCP, DSACP_PREFILL_OWNER, DSACP_WEIGHTS_REPLICATED, DSACP_WEIGHTS_REPLICATED, 0, DSACP_LEAN_MERGE_OUTPUT, DSACP_PARTIALS_AUTO}, \
    {"allgather-kv kv=sharded idx=repl", DSACP_DECODE_ALLGATHER_KV, DSACP_LAYOUT_SHARDED, DSACP_LAYOUT_REPLICATED, I, DSACP_CP_DCP, DSACP_PREFILL_OWNER, DSACP_WEIGHTS_REPLICATED, DSACP_WEIGHTS_REPLICATED, 0, DSACP_LEAN_MERGE_OUTPUT, DSACP_PARTIALS_AUTO}, \
    {"replicated-index kv=sharded", DSACP_DECODE_REPLICATED_INDEX, DSACP_LAYOUT_SHARDED, DSACP_LAYOUT_REPLICATED, I, DSACP_CP_DCP, DSACP_PREFILL_OWNER, DSACP_WEIGHTS_REPLICATED, DSACP_WEIGHTS_REPLICATED, 0, DSACP_LEAN_MERGE_OUTPUT, DSACP_PARTIALS_AUTO}, \
    {"replicated-index kv=replicated", DSACP_DECODE_REPLICATED_INDEX, DSACP_LAYOUT_REPLICATED, DSACP_LAYOUT_REPLICATED, I, DSACP_CP_DCP, DSACP_PREFILL_OWNER, DSACP_WEIGHTS_REPLICATED, DSACP_WEIGHTS_REPLICATED, 0, DSACP_LEAN_MERGE_OUTPUT, DSACP_PARTIALS_AUTO}, \
    {"exact-topk kv=sharded", DSACP_DECODE_EXACT_TOPK, DSACP_LAYOUT_SHARDED, DSACP_LAYOUT_SHARDED, I, DSACP_CP_DCP, DSACP_PREFILL_OWNER, DSACP_WEIGHTS_REPLICATED, DSACP_WEIGHTS_REPLICATED, 0, DSACP_LEAN_MERGE_OUTPUT, DSACP_PARTIALS_AUTO}, \
    {"exact-topk kv=replicated", DSACP_DECODE_EXACT_TOPK, DSACP_LAYOUT_REPLICATED, DSACP_LAYOUT_SHARDED, I, DSACP_CP_DCP, DSACP_PREFILL_OWNER, DSACP_WEIGHTS_REPLICATED, DSACP_WEIGHTS_REPLICATED, 0, DSACP_LEAN_MERGE_OUTPUT, DSACP_PARTIALS_AUTO}, \
    {"exact-topk zigzag", DSACP_DECODE_EXACT_TOPK, DSACP_LAYOUT_SHARDED, DSACP_LAYOUT_SHARDED, I, DSACP_CP_DCP, DSACP_PREFILL_ZIGZAG, DSACP_WEIGHTS_REPLICATED, DSACP_WEIGHTS_REPLICATED, 0, DSACP_LEAN_MERGE_OUTPUT, DSACP_PARTIALS_AUTO}, \
    CASES(1) CASES(3) CASES(16)
#undef CASES
};
enum { NCASES = sizeof all_cases / sizeof all_cases[0] };

/* allgather-blocks (vllm-ascend #6563 as it runs): the interleave is the block size (16 here);
 * its strategy id comes from the table by name (main fills `dec`). */
static cp_case blocks_cases[] = {
    {"allgather-blocks kv=sharded idx=sharded", 0, DSACP_LAYOUT_SHARDED, DSACP_LAYOUT_SHARDED, 16, DSACP_CP_DCP, DSACP_PREFILL_OWNER, DSACP_WEIGHTS_REPLICATED, DSACP_WEIGHTS_REPLICATED, 0, DSACP_LEAN_MERGE_OUTPUT, DSACP_PARTIALS_AUTO},
    {"allgather-blocks kv=sharded idx=repl", 0, DSACP_LAYOUT_SHARDED, DSACP_LAYOUT_REPLICATED, 16, DSACP_CP_DCP, DSACP_PREFILL_OWNER, DSACP_WEIGHTS_REPLICATED, DSACP_WEIGHTS_REPLICATED, 0, DSACP_LEAN_MERGE_OUTPUT, DSACP_PARTIALS_AUTO},
    {"allgather-blocks kv=repl idx=sharded", 0, DSACP_LAYOUT_REPLICATED, DSACP_LAYOUT_SHARDED, 16, DSACP_CP_DCP, DSACP_PREFILL_ZIGZAG, DSACP_WEIGHTS_REPLICATED, DSACP_WEIGHTS_REPLICATED, 0, DSACP_LEAN_MERGE_OUTPUT, DSACP_PARTIALS_AUTO},
};
enum { NBLOCKS = sizeof blocks_cases / sizeof blocks_cases[0] };

/* lean (issue 12): every merge, list length and split; the default f = 2 and f = 1 (lists of
 * k / W scores: truncated lists and fallbacks at this size). */
static const cp_case lean_cases[] = {
#define LEAN(I)                                                                                                \
    {"lean kv=sharded", DSACP_DECODE_LEAN, DSACP_LAYOUT_SHARDED, DSACP_LAYOUT_SHARDED, I, DSACP_CP_DCP, DSACP_PREFILL_OWNER, DSACP_WEIGHTS_REPLICATED, DSACP_WEIGHTS_REPLICATED, 0, DSACP_LEAN_MERGE_OUTPUT, DSACP_PARTIALS_AUTO}, \
    {"lean f=1", DSACP_DECODE_LEAN, DSACP_LAYOUT_SHARDED, DSACP_LAYOUT_SHARDED, I, DSACP_CP_DCP, DSACP_PREFILL_OWNER, DSACP_WEIGHTS_REPLICATED, DSACP_WEIGHTS_REPLICATED, 1.0, DSACP_LEAN_MERGE_OUTPUT, DSACP_PARTIALS_AUTO}, \
    {"lean f=1 values zigzag", DSACP_DECODE_LEAN, DSACP_LAYOUT_SHARDED, DSACP_LAYOUT_SHARDED, I, DSACP_CP_DCP, DSACP_PREFILL_ZIGZAG, DSACP_WEIGHTS_REPLICATED, DSACP_WEIGHTS_REPLICATED, 1.0, DSACP_LEAN_MERGE_VALUES, DSACP_PARTIALS_AUTO}, \
    {"lean idx=repl contiguous", DSACP_DECODE_LEAN, DSACP_LAYOUT_SHARDED, DSACP_LAYOUT_REPLICATED, I, DSACP_CP_DCP, DSACP_PREFILL_CONTIGUOUS, DSACP_WEIGHTS_REPLICATED, DSACP_WEIGHTS_REPLICATED, 0, DSACP_LEAN_MERGE_OUTPUT, DSACP_PARTIALS_AUTO}, \
    {"lean kv=repl zigzag f=1.5", DSACP_DECODE_LEAN, DSACP_LAYOUT_REPLICATED, DSACP_LAYOUT_SHARDED, I, DSACP_CP_DCP, DSACP_PREFILL_ZIGZAG, DSACP_WEIGHTS_REPLICATED, DSACP_WEIGHTS_REPLICATED, 1.5, DSACP_LEAN_MERGE_OUTPUT, DSACP_PARTIALS_AUTO},
    LEAN(1) LEAN(3) LEAN(16)
#undef LEAN
    {"dsa-cp+dcp lean o=repl", DSACP_DECODE_LEAN, DSACP_LAYOUT_SHARDED, DSACP_LAYOUT_SHARDED, 1, DSACP_CP_DSA_CP, DSACP_PREFILL_CONTIGUOUS, DSACP_WEIGHTS_REPLICATED, DSACP_WEIGHTS_REPLICATED, 1.0, DSACP_LEAN_MERGE_OUTPUT, DSACP_PARTIALS_AUTO},
    {"dsa-cp+dcp lean q=layer o=tp", DSACP_DECODE_LEAN, DSACP_LAYOUT_SHARDED, DSACP_LAYOUT_SHARDED, 3, DSACP_CP_DSA_CP, DSACP_PREFILL_CONTIGUOUS, DSACP_WEIGHTS_LAYER_SHARD, DSACP_WEIGHTS_TP, 0, DSACP_LEAN_MERGE_OUTPUT, DSACP_PARTIALS_AUTO},
    {"dsa-cp+dcp lean o=layer", DSACP_DECODE_LEAN, DSACP_LAYOUT_SHARDED, DSACP_LAYOUT_SHARDED, 16, DSACP_CP_DSA_CP, DSACP_PREFILL_CONTIGUOUS, DSACP_WEIGHTS_REPLICATED, DSACP_WEIGHTS_LAYER_SHARD, 1.0, DSACP_LEAN_MERGE_VALUES, DSACP_PARTIALS_AUTO},
    {"dsa-cp+dcp zigzag lean o=auto", DSACP_DECODE_LEAN, DSACP_LAYOUT_SHARDED, DSACP_LAYOUT_SHARDED, 1, DSACP_CP_DSA_CP, DSACP_PREFILL_ZIGZAG, DSACP_WEIGHTS_REPLICATED, DSACP_WEIGHTS_AUTO, 1.0, DSACP_LEAN_MERGE_OUTPUT, DSACP_PARTIALS_AUTO},
};
enum { NLEAN = sizeof lean_cases / sizeof lean_cases[0] };

/* Deployed numerics on the 2-layer MoE model, whose random weights amplify any change of an
 * activation (expert routing, next layer's e4m3 codes): lean with fp32 partials merged as
 * values (o_proj split by heads, its FP8 activation quantization on whole merged rows) is
 * bit-identical to W = 1; the default (bf16 partials, output merge) is checked per layer on a
 * one-layer model (test_lean_deployed). */
static const cp_case lean_deployed_cases[] = {
    {"lean values fp32", DSACP_DECODE_LEAN, DSACP_LAYOUT_SHARDED, DSACP_LAYOUT_SHARDED, 1, DSACP_CP_DCP, DSACP_PREFILL_OWNER, DSACP_WEIGHTS_REPLICATED, DSACP_WEIGHTS_REPLICATED, 1.0, DSACP_LEAN_MERGE_VALUES, DSACP_PARTIALS_F32},
    {"lean values fp32 zigzag", DSACP_DECODE_LEAN, DSACP_LAYOUT_SHARDED, DSACP_LAYOUT_SHARDED, 3, DSACP_CP_DCP, DSACP_PREFILL_ZIGZAG, DSACP_WEIGHTS_REPLICATED, DSACP_WEIGHTS_REPLICATED, 2.0, DSACP_LEAN_MERGE_VALUES, DSACP_PARTIALS_F32},
    {"lean values fp32 idx=repl", DSACP_DECODE_LEAN, DSACP_LAYOUT_SHARDED, DSACP_LAYOUT_REPLICATED, 16, DSACP_CP_DCP, DSACP_PREFILL_OWNER, DSACP_WEIGHTS_REPLICATED, DSACP_WEIGHTS_REPLICATED, 1.0, DSACP_LEAN_MERGE_VALUES, DSACP_PARTIALS_F32},
};
enum { NLEAND = sizeof lean_deployed_cases / sizeof lean_deployed_cases[0] };


/* DSA-CP (issue 9): every plan x layout, the seed's contiguous split and the owner split. */
#define DSA(name, kv, q, o, split, I)                                                                        \
    {name, DSACP_DECODE_ALLGATHER_KV, kv, kv, I, DSACP_CP_DSA_CP, split, q, o, 0, DSACP_LEAN_MERGE_OUTPUT, DSACP_PARTIALS_AUTO}
#define DSAD(name, dec, kv, idx, q, o, I)                                                                    \
    {name, dec, kv, idx, I, DSACP_CP_DSA_CP, DSACP_PREFILL_CONTIGUOUS, q, o, 0, DSACP_LEAN_MERGE_OUTPUT, DSACP_PARTIALS_AUTO}
#define R DSACP_LAYOUT_REPLICATED
#define S DSACP_LAYOUT_SHARDED
#define PR DSACP_WEIGHTS_REPLICATED
#define PL DSACP_WEIGHTS_LAYER_SHARD
#define PT DSACP_WEIGHTS_TP
#define PA DSACP_WEIGHTS_AUTO
#define C DSACP_PREFILL_CONTIGUOUS
#define O DSACP_PREFILL_OWNER
static const cp_case dsa_cases[] = {
    DSA("dsa-cp repl q=repl o=repl", R, PR, PR, C, 1),      DSA("dsa-cp repl q=layer o=layer", R, PL, PL, C, 1),
    DSA("dsa-cp repl q=repl o=tp", R, PR, PT, C, 1),        DSA("dsa-cp repl q=layer o=auto", R, PL, PA, C, 1),
    DSA("dsa-cp repl q=layer o=tp", R, PL, PT, C, 1),       DSA("dsa-cp repl q=repl o=layer", R, PR, PL, C, 1),
    DSA("dsa-cp+dcp q=repl o=repl", S, PR, PR, C, 1),       DSA("dsa-cp+dcp q=layer o=layer", S, PL, PL, C, 3),
    DSA("dsa-cp+dcp q=layer o=tp", S, PL, PT, C, 1),        DSA("dsa-cp+dcp q=repl o=auto", S, PR, PA, C, 16),
    DSA("dsa-cp owner repl q=layer o=tp", R, PL, PT, O, 1), DSA("dsa-cp owner dcp q=repl o=auto", S, PR, PA, O, 3),
    /* DSA-CP + DCP with the other decode strategies */
    DSAD("dsa-cp+dcp exact-topk o=repl", DSACP_DECODE_EXACT_TOPK, S, S, PR, PR, 1),
    DSAD("dsa-cp+dcp exact-topk o=tp", DSACP_DECODE_EXACT_TOPK, S, S, PL, PT, 3),
    DSAD("dsa-cp+dcp exact-topk o=layer", DSACP_DECODE_EXACT_TOPK, S, S, PR, PL, 1),
    DSAD("dsa-cp+dcp repl-index o=auto", DSACP_DECODE_REPLICATED_INDEX, S, R, PL, PA, 16),
    DSA("dsa-cp zigzag repl q=repl o=auto", R, PR, PA, DSACP_PREFILL_ZIGZAG, 1),
};
#undef R
#undef S
#undef PR
#undef PL
#undef PT
#undef PA
#undef C
#undef O
#undef DSAD
enum { NDSA = sizeof dsa_cases / sizeof dsa_cases[0] };

int main(int argc, char **argv)
{
    cp_test_begin(&argc, &argv);
    char *dir = NULL;

    /* exact numerics, f32 weights: o_proj column shards + all-reduce. */
    dsacp_engine_options eo;
    dsacp_model *m = cp_test_tiny(&dir, &eo);
    for (int c = 0; c < NBLOCKS; c++) REQUIRE_OK(dsacp_decode_strategy_parse("allgather-blocks", &blocks_cases[c].dec));
    run_cases("exact", m, &eo, all_cases, NCASES, 1e-5, 1e-10);
    run_cases("exact", m, &eo, dsa_cases, NDSA, 1e-5, 1e-10);
    run_cases("exact", m, &eo, lean_cases, NLEAN, 1e-5, 1e-10);
    run_cases("exact", m, &eo, blocks_cases, NBLOCKS, 1e-5, 1e-10);
    drop_model(m, dir);

    /* deployed numerics, fp8 weights and fp8 caches: o_proj columns split FP8 blocks at this
     * size, so the heads' outputs travel (o_gather_v). */
    m = shared_model(&dir, "tiny-moe", DSACP_WEIGHTS_FP8, false);
    eo.numerics = DSACP_NUMERICS_DEPLOYED;
    eo.kv_dtype = DSACP_KV_FP8;
    run_cases("deployed", m, &eo, all_cases, NCASES, 0.1, 2e-3);
    run_cases("deployed", m, &eo, dsa_cases, NDSA, 0.1, 2e-3);
    run_cases("deployed", m, &eo, lean_deployed_cases, NLEAND, 0.1, 2e-3);
    run_cases("deployed", m, &eo, blocks_cases, NBLOCKS, 0.1, 2e-3);
    drop_model(m, dir);

    /* every index score ties at 0: the lowest positions win, most ranks own none of them. */
    m = shared_model(&dir, "tiny", DSACP_WEIGHTS_F32, true);
    eo.numerics = DSACP_NUMERICS_EXACT;
    eo.kv_dtype = DSACP_KV_F32;
    run_cases("ties", m, &eo, all_cases, NCASES, 1e-5, 1e-10);
    run_cases("ties", m, &eo, lean_cases, NLEAN, 1e-5, 1e-10);
    run_cases("ties", m, &eo, blocks_cases, NBLOCKS, 1e-5, 1e-10);
    drop_model(m, dir);
    return cp_test_end("test_cp");
}
