/*
 * bench_prefill.c -- the "prefill" case: one sequence of `context` tokens prefilled through
 * layer 0 in one step (positions 0 .. context-1), against the roofline: its flops at the peak
 * FMA rate, the higher of the peaks measured before and after it; in deployed numerics also
 * against the bf16-dot peak.
 */
#include "bench/bench.h"
#include "core/core.h"

/* Flops of a prefill of L tokens through one layer, counting multiply-adds as 2: the seven
 * projections, W_UK and W_UV per head, the indexer over pos + 1 keys and sparse MLA over
 * min(topk, pos + 1) keys for every token. */
static double work(const bench_run *r, int64_t L)
{
    const dsacp_config *c = r->cfg;
    const double D = (double)c->hidden_size, H = (double)c->num_attention_heads, ql = (double)c->q_lora_rank;
    const double nope = (double)c->qk_nope_head_dim, dr = (double)c->qk_rope_head_dim, dv = (double)c->v_head_dim;
    const double dc = (double)c->kv_lora_rank, Hi = (double)c->index_n_heads, di = (double)c->index_head_dim;
    const double proj = D * ql + ql * H * (nope + dr) + D * (dc + dr) + ql * Hi * di + D * di + D * Hi + H * dv * D;
    const double absorb = H * nope * dc + H * dc * dv;
    double f = 2.0 * (proj + absorb) * (double)L;
    for (int64_t p = 0; p < L; p++) {
        const double n = (double)(p + 1), k = (double)(p + 1 < c->index_topk ? p + 1 : c->index_topk);
        f += (2.0 * Hi * di + Hi) * n + 2.0 * H * k * (dc + dr) + 2.0 * H * k * dc;
    }
    return f;
}

static int setup(bench_run *r, void **state)
{
    const int64_t L = r->opt->context;
    int rc = bench_layer_step_new(r, state, 1, L, L, 43, "prefill");
    bench_layer_step *s = *state;
    for (int64_t i = 0; i < L && !rc; i++) s->pos[i] = i;
    return rc;
}

static int run(bench_run *r, void *state)
{
    bench_layer_step *s = state;
    const int64_t L = r->opt->context;
    bench_layer_call a;
    bench_layer_call_init(r, s, &a);
    const double t = bench_time(bench_layer_call_run, NULL, &a, r->opt->reps < 3 ? r->opt->reps : 3, 0.0);
    if (a.rc) return a.rc;
    /* The peak again after the prefill, the higher of the two is the roofline: a prefill takes
     * seconds to minutes, and the machine's speed drifts over that long. */
    int lanes;
    const double again = bench_peak_fma(r, &lanes), peak = again > r->peak_fma ? again : r->peak_fma;
    bench_result(r, "prefill_layer_time", t * 1e3, "ms", NULL, 0, 0);
    bench_result(r, "prefill_layer_tokens_per_s", (double)L / t, "tok/s", NULL, 0, 0);
    if (peak > 0) bench_result(r, "peak_fma_after", again, "GFLOP/s", NULL, 0, 0);
    bench_work_rate(r, "prefill_layer_gflops", L, t, peak > 0 ? "peak_fma_max" : NULL, peak);
    /* Deployed mode's linears and sparse MLA run the bf16-dot chain: its roofline is the bf16-dot
     * peak where VDPBF16PS is the model (issue 25's target; on a CPU where the instruction is
     * slower than two f32 FMAs the chain runs at the FMA peak's ceiling instead, the row above). */
    if (r->opt->deployed && r->peak_bf16dot > 0)
        bench_work_rate(r, "prefill_layer_gflops_bf16dot", L, t, "peak_bf16dot", r->peak_bf16dot);
    return DSACP_OK;
}

const bench_case bench_case_prefill = {
    .name = "prefill",
    .options = 1u << DSACP_BENCH_OPT_PRESET | 1u << DSACP_BENCH_OPT_CONTEXT | 1u << DSACP_BENCH_OPT_NUMERICS |
               1u << DSACP_BENCH_OPT_ISA | 1u << DSACP_BENCH_OPT_BLOCK_SIZE,
    .ceilings = BENCH_CEIL_FMA,
    .layer_weights = true,
    .setup = setup,
    .run = run,
    .teardown = bench_layer_step_teardown,
    .work = work,
    .work_unit = "flop",
};
