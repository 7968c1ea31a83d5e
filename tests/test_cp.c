/*
 * test_cp.c -- context parallelism against W = 1 (run under mpirun with W = 2, 3, 4 by CTest, and
 * alone as W = 1). One table of cases {numerics, decode strategy, kv layout, index layout,
 * interleave} runs one mixed schedule (prefill chunks and decode tokens of four requests of
 * different lengths, a prompt exactly index_topk long, a request shorter than W x I, a step with
 * fewer tokens than ranks, a prefill chunk after decodes) on the CP group and on a solo engine
 * in the same process, and compares on rank 0: identical selected sets in every layer, logits
 * within the documented tolerance. A model whose indexer head weights are zero makes every
 * index score tie (0): the selection is then the lowest positions, so ranks that own none of a
 * token's winners are exercised (lse = -inf, no NaN). Communication counters are compared with
 * the byte formulas of docs/context-parallel.md exactly, and the sharded KV memory with the
 * W = 1 memory.
 */
#include "test.h"
#include "cp/cp_strategy.h"
#include "dsacp_cp.h"
#include "dsacp_plan.h"
#include "io/safetensors.h"
#include "ref/test_util.h"

#include <math.h>
#include <stdint.h>

enum { NREQ = 4, NSTEP = 8 };

/* tokens of request r in step s */
static const int sched[NSTEP][NREQ] = {
    {20, 7, 0, 0}, {25, 1, 32, 0}, {1, 1, 1, 3}, {1, 1, 1, 1},
    {1, 0, 1, 1},  {0, 1, 0, 0},   {9, 0, 0, 0}, {1, 1, 1, 1},
};

typedef struct step_out {
    int64_t T;
    float *logits;  /* [T][V] */
    int32_t *topk;  /* [L][T][K] */
} step_out;

static int32_t *g_ids[NREQ];
static dsacp_comm *g_world;
static int g_rank, g_W;

static void make_ids(int64_t vocab)
{
    for (int r = 0; r < NREQ; r++) {
        int64_t n = 0;
        for (int s = 0; s < NSTEP; s++) n += sched[s][r];
        g_ids[r] = malloc((size_t)(n + 16) * sizeof(int32_t));
        tu_random_ids(g_ids[r], n + 16, vocab, 1000 + (uint64_t)r);
    }
}

/* The planner's prediction of a whole schedule, summed step by step (dsacp_plan_entries_comm
 * classifies each step's entries as the engine does; lean's fallbacks are the measured ones). */
typedef struct plan_acc {
    const dsacp_cp_options *cp;
    dsacp_plan_step base;
    int64_t fb_tokens, fb_rounds, winners; /* the engine's cumulative lean counts so far */
    dsacp_comm_counter sum[DSACP_PHASE_COUNT];
} plan_acc;

static void plan_acc_step(plan_acc *a, dsacp_engine *e, const dsacp_config *cfg, const dsacp_plan_entry *pe, int64_t n)
{
    dsacp_cp_stats st;
    dsacp_engine_cp_stats(e, &st);
    dsacp_plan_step b = a->base;
    const int64_t ft = st.lean_fallback_threshold + st.lean_fallback_ties;
    b.lean_fallback_tokens = ft - a->fb_tokens, b.lean_fallback_rounds = st.lean_fallback_rounds - a->fb_rounds;
    a->fb_tokens = ft, a->fb_rounds = st.lean_fallback_rounds;
    b.lean_owned_winners = st.lean_owned_winners - a->winners, a->winners = st.lean_owned_winners;
    dsacp_comm_counter c[DSACP_PHASE_COUNT];
    CHECK_OK(dsacp_plan_entries_comm(cfg, a->cp, &b, pe, n, c));
    for (int p = 0; p < DSACP_PHASE_COUNT; p++)
        a->sum[p].calls += c[p].calls, a->sum[p].bytes_sent += c[p].bytes_sent, a->sum[p].bytes_recv += c[p].bytes_recv;
}

/* Runs the schedule; fills out[s] (rank 0 only when want); adds each step's plan to acc. */
static int run_sched_plan(dsacp_engine *e, const dsacp_config *cfg, step_out *out, plan_acc *acc);
static int run_sched(dsacp_engine *e, const dsacp_config *cfg, step_out *out) { return run_sched_plan(e, cfg, out, NULL); }

static int run_sched_plan(dsacp_engine *e, const dsacp_config *cfg, step_out *out, plan_acc *acc)
{
    int64_t id[NREQ], used[NREQ] = {0};
    for (int r = 0; r < NREQ; r++) {
        int rc = dsacp_engine_add_request(e, &id[r]);
        if (rc) return rc;
    }
    const int64_t V = cfg->vocab_size, K = cfg->index_topk, L = cfg->num_hidden_layers;
    for (int s = 0; s < NSTEP; s++) {
        dsacp_step_entry en[NREQ];
        dsacp_plan_entry pe[NREQ];
        int64_t n = 0, T = 0;
        for (int r = 0; r < NREQ; r++)
            if (sched[s][r]) {
                pe[n] = (dsacp_plan_entry){used[r], sched[s][r]};
                en[n++] = (dsacp_step_entry){id[r], sched[s][r], g_ids[r] + used[r]};
                used[r] += sched[s][r];
                T += sched[s][r];
            }
        out[s].T = T;
        out[s].logits = malloc((size_t)(T * V) * 4);
        out[s].topk = malloc((size_t)(L * T * K) * 4);
        int rc = dsacp_engine_step(e, en, n, out[s].logits, out[s].topk);
        if (rc) return rc;
        if (acc) plan_acc_step(acc, e, cfg, pe, n);
    }
    return DSACP_OK;
}

static void free_out(step_out *o)
{
    for (int s = 0; s < NSTEP; s++) {
        free(o[s].logits);
        free(o[s].topk);
    }
}

typedef struct cp_case {
    const char *name;
    dsacp_decode_strategy dec;
    dsacp_cp_layout kv, idx;
    int64_t I;
    dsacp_cp_mode mode;            /* DSA-CP cases: */
    dsacp_prefill_split split;
    dsacp_weight_plan q, o;
    double lf;                     /* lean: candidates factor (0: the default) */
    dsacp_lean_merge merge;
    dsacp_partials_dtype partials;
} cp_case;

/* FlashMLA's global difference 1 - 2 sum(a r) / sum(a^2 + r^2) of two vectors. */
static double cos_diff(const float *a, const float *r, int64_t n)
{
    double ar = 0, aa = 0;
    for (int64_t i = 0; i < n; i++) ar += (double)a[i] * r[i], aa += (double)a[i] * a[i] + (double)r[i] * r[i];
    return aa > 0 ? 1 - 2 * ar / aa : 0;
}

static double compare(const dsacp_config *cfg, const step_out *ref, const step_out *got, int64_t *topk_diff,
                      double *cosd)
{
    const int64_t V = cfg->vocab_size, K = cfg->index_topk, L = cfg->num_hidden_layers;
    double worst = 0;
    *topk_diff = 0;
    *cosd = 0;
    for (int s = 0; s < NSTEP; s++) {
        const int64_t T = ref[s].T;
        for (int64_t i = 0; i < L * T * K; i++) *topk_diff += ref[s].topk[i] != got[s].topk[i];
        double r = tu_max_rel_ff(got[s].logits, ref[s].logits, T * V);
        *cosd = fmax(*cosd, cos_diff(got[s].logits, ref[s].logits, T * V));
        for (int64_t i = 0; i < T * V; i++)
            if (!isfinite(got[s].logits[i])) r = INFINITY;
        if (r > worst || isnan(r)) worst = r;
    }
    return worst;
}

static int64_t weight_bytes(const dsacp_weight *w)
{
    return w->rows * w->cols * (int64_t)dsacp_dtype_size(w->dtype) +
           (w->dtype == DSACP_F8_E4M3 && w->scale ? w->scale_rows * w->scale_stride * 4 : 0);
}

/* The planner's view of an engine of this model: cache entry sizes, numerics and, for DSA-CP,
 * the bytes q_b_proj / o_proj travel as per layer and each rank's tp shard of o_proj. */
static void plan_base(const dsacp_model *m, const dsacp_engine_options *eo, const dsacp_cp_options *cp, plan_acc *a)
{
    const dsacp_config *cfg = dsacp_model_config(m);
    memset(a, 0, sizeof *a);
    a->cp = cp;
    dsacp_plan_step *b = &a->base;
    b->W = g_W, b->rank = g_rank, b->hidden_bytes = cfg->hidden_size * 4, b->want_logits = true;
    b->deployed = eo->numerics == DSACP_NUMERICS_DEPLOYED;
    b->latent_bytes = dsacp_mla_cache_bytes_per_token(cfg, eo->kv_dtype);
    b->index_bytes = dsacp_index_cache_bytes_per_token(cfg, b->deployed ? DSACP_KV_FP8 : DSACP_KV_F32);
    b->want_topk = true; /* run_sched asks for the selected sets */
    const dsacp_weight *o = dsacp_model_weight(m, "model.layers.0.self_attn.o_proj.weight");
    dsacp_cp_o_paths(cfg, cp, g_W, o->dtype, o->block, &b->o_gather_v, &b->o_tp_f32);
    if (cp->mode != DSACP_CP_DSA_CP) return;
    const int64_t L = cfg->num_hidden_layers, H = cfg->num_attention_heads, dv = cfg->v_head_dim;
    int64_t *qb = calloc((size_t)L, sizeof *qb), *ob = calloc((size_t)L, sizeof *ob), *sh = calloc((size_t)g_W, sizeof *sh);
    if (!qb || !ob || !sh) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    for (int64_t l = 0; l < L; l++) {
        qb[l] = weight_bytes(dsacp_model_weightf(m, "model.layers.%lld.self_attn.q_b_proj.weight", (long long)l));
        ob[l] = weight_bytes(dsacp_model_weightf(m, "model.layers.%lld.self_attn.o_proj.weight", (long long)l));
    }
    const bool f32 = b->o_tp_f32;
    for (int q = 0; q < g_W; q++) {
        const int64_t nc = (dsacp_split_begin(H, q + 1, g_W) - dsacp_split_begin(H, q, g_W)) * dv;
        sh[q] = f32 ? o->rows * nc * 4 : o->rows * nc * (int64_t)dsacp_dtype_size(o->dtype);
        if (!f32 && o->dtype == DSACP_F8_E4M3) sh[q] += o->scale_rows * ((nc + o->block - 1) / o->block) * 4;
    }
    b->q_bytes = qb, b->o_bytes = ob, b->o_shard_bytes = sh;
}

static void plan_acc_free(plan_acc *a)
{
    free((void *)a->base.q_bytes), free((void *)a->base.o_bytes), free((void *)a->base.o_shard_bytes);
}

/* The summed plan of a whole schedule against the engine's counters, per phase. */
static void check_plan_sum(dsacp_comm *ec, const plan_acc *a, const char *label, const char *name, int64_t I)
{
    for (int p = 0; p < DSACP_PHASE_COUNT; p++) {
        const dsacp_comm_counter k = dsacp_comm_get_counter(ec, p), x = a->sum[p];
        CHECKF(k.calls == x.calls && k.bytes_sent == x.bytes_sent && k.bytes_recv == x.bytes_recv,
               "plan %s %s I=%lld W=%d rank %d, whole schedule, phase %s: measured calls %lld sent %lld recv %lld, "
               "planned %lld %lld %lld", label, name, (long long)I, g_W, g_rank, dsacp_comm_phase_name(p),
               (long long)k.calls, (long long)k.bytes_sent, (long long)k.bytes_recv, (long long)x.calls,
               (long long)x.bytes_sent, (long long)x.bytes_recv);
    }
}

/* tol: max relative error of the logits (exact mode); cos_tol: FlashMLA's global difference
 * (deployed mode, where a reassociated merge can move an activation across an e4m3 rounding
 * boundary of the next FP8 layer: docs/context-parallel.md, "Correctness"). */
static void run_cases(const char *label, const dsacp_model *m, const dsacp_engine_options *eo, const cp_case *cases,
                      int ncases, double tol, double cos_tol)
{
    const dsacp_config *cfg = dsacp_model_config(m);
    step_out ref[NSTEP] = {0};
    dsacp_engine *e = NULL;
    REQUIRE_OK(dsacp_engine_create(m, eo, &e));
    REQUIRE_OK(run_sched(e, cfg, ref));
    dsacp_engine_free(e);
    for (int c = 0; c < ncases; c++) {
        dsacp_cp_options cp;
        dsacp_cp_options_default(&cp);
        cp.decode = cases[c].dec;
        cp.kv_layout = cases[c].kv;
        cp.index_layout = cases[c].idx;
        cp.interleave = cases[c].I;
        cp.mode = cases[c].mode;
        cp.prefill_split = cases[c].split;
        cp.q_proj = cases[c].q;
        cp.o_proj = cases[c].o;
        if (cases[c].lf > 0) cp.lean_factor = cases[c].lf;
        cp.lean_merge = cases[c].merge;
        cp.partials = cases[c].partials;
        step_out got[NSTEP] = {0};
        CHECK_OK(dsacp_engine_create_cp(m, eo, &cp, g_world, &e));
        if (!e) continue;
        plan_acc acc;
        plan_base(m, eo, &cp, &acc);
        dsacp_comm_counter creation[DSACP_PHASE_COUNT];
        for (int p = 0; p < DSACP_PHASE_COUNT; p++) acc.sum[p] = creation[p] = dsacp_comm_get_counter(dsacp_engine_comm(e), p);
        CHECK_OK(run_sched_plan(e, cfg, got, &acc));
        /* The planner predicts every collective of the whole schedule, per phase, exactly: summed
         * here from the schedule, and by the engine itself (dsacp_engine_plan_comm). */
        check_plan_sum(dsacp_engine_comm(e), &acc, label, cases[c].name, cases[c].I);
        {
            dsacp_comm_counter pl[DSACP_PHASE_COUNT], me[DSACP_PHASE_COUNT];
            CHECK_OK(dsacp_engine_plan_comm(e, pl, me));
            for (int p = 0; p < DSACP_PHASE_COUNT; p++)
                CHECKF(pl[p].calls == me[p].calls && pl[p].bytes_sent == me[p].bytes_sent && pl[p].bytes_recv == me[p].bytes_recv &&
                       me[p].calls == acc.sum[p].calls - creation[p].calls && me[p].bytes_recv == acc.sum[p].bytes_recv - creation[p].bytes_recv,
                       "engine's plan %s %s W=%d rank %d phase %s: planned %lld %lld %lld, measured %lld %lld %lld", label,
                       cases[c].name, g_W, g_rank, dsacp_comm_phase_name(p), (long long)pl[p].calls, (long long)pl[p].bytes_sent,
                       (long long)pl[p].bytes_recv, (long long)me[p].calls, (long long)me[p].bytes_sent, (long long)me[p].bytes_recv);
        }
        plan_acc_free(&acc);
        /* The sharded caches hold no position twice and lose none (checked through the usage). */
        dsacp_engine_free(e);
        if (g_rank == 0) {
            int64_t dt = 0;
            double cd = 0, rel = compare(cfg, ref, got, &dt, &cd);
            CHECKF(dt == 0 && rel <= tol && cd <= cos_tol, "%s %s I=%lld W=%d: %lld selected positions differ, logits "
                   "max rel %.3g (tolerance %.1g), cos diff %.3g (tolerance %.1g)", label, cases[c].name,
                   (long long)cases[c].I, g_W, (long long)dt, rel, tol, cd, cos_tol);
            printf("%-8s %-36s I=%-3lld W=%d: selected sets identical=%s, logits max rel %.3g, cos diff %.3g\n", label,
                   cases[c].name, (long long)cases[c].I, g_W, dt == 0 ? "yes" : "NO", rel, cd);
        }
        free_out(got);
    }
    free_out(ref);
}

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

/* A copy of the model whose indexer head weights are zero: every index score is 0. */
static char *make_tie_model(const char *src)
{
    char *dir = tu_tempdir();
    char a[4200], b[4200];
    snprintf(a, sizeof a, "%s/config.json", src);
    snprintf(b, sizeof b, "%s/config.json", dir);
    char *text = NULL;
    size_t len = 0;
    REQUIRE_OK(dsacp_read_file(a, &text, &len, 1 << 20));
    REQUIRE_OK(dsacp_write_file_atomic(b, text, len));
    dsacp_free(text);
    snprintf(a, sizeof a, "%s/model.safetensors", src);
    snprintf(b, sizeof b, "%s/model.safetensors", dir);
    dsacp_st_file *f = NULL;
    REQUIRE_OK(dsacp_st_open(a, &f));
    dsacp_st_writer *w = NULL;
    REQUIRE_OK(dsacp_st_writer_create(&w));
    void **zeros = calloc((size_t)dsacp_st_count(f), sizeof *zeros);
    for (int64_t i = 0; i < dsacp_st_count(f); i++) {
        const dsacp_st_tensor *t = dsacp_st_tensor_at(f, i);
        const void *data = t->data;
        if (strstr(t->name, "indexer.weights_proj")) data = zeros[i] = calloc(t->nbytes, 1);
        REQUIRE_OK(dsacp_st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, data));
    }
    REQUIRE_OK(dsacp_st_writer_write(w, b));
    dsacp_st_writer_free(w);
    for (int64_t i = 0; i < dsacp_st_count(f); i++) free(zeros[i]);
    free(zeros);
    dsacp_st_close(f);
    return dir;
}

/* A model directory made by rank 0 and loaded by every rank. */
static dsacp_model *shared_model(char **dir_out, const char *preset, dsacp_weight_format fmt, bool tie)
{
    char dir[256] = {0};
    if (g_rank == 0) {
        char *d = tu_make_model(preset, 7, fmt);
        if (tie) {
            char *t = make_tie_model(d);
            tu_rmtree(d);
            free(d);
            d = t;
        }
        snprintf(dir, sizeof dir, "%s", d);
        free(d);
    }
    REQUIRE_OK(dsacp_comm_bcast(g_world, dir, sizeof dir, DSACP_PHASE_input));
    dsacp_model *m = NULL;
    REQUIRE_OK(dsacp_model_load(dir, &m));
    *dir_out = strdup(dir);
    return m;
}

static void drop_model(dsacp_model *m, char *dir)
{
    dsacp_model_free(m);
    REQUIRE_OK(dsacp_comm_agree(g_world, DSACP_OK)); /* everyone is done with the files */
    if (g_rank == 0) tu_rmtree(dir);
    free(dir);
}

/* ---- communication counters against the documented formulas ---- */

typedef struct expect {
    int64_t calls, sent, recv;
} expect;


/* docs/context-parallel.md, "Bytes per step": one decode step of nd tokens (all requests
 * decoding; token j's context old[j], request r's cached positions old[r]) on rank me: the
 * control agreements, and the strategy's phases with the decode rows' o_proj from its formula
 * (src/cp/cp_formula.c, the one the planner calls too). */
static void expected_decode(const dsacp_config *cfg, const dsacp_cp_options *cp, int64_t W, int64_t me, int64_t nd,
                            const int64_t *old, int64_t nreq, int64_t mla_b, int64_t idx_b, bool o_gather_v,
                            const dsacp_cp_stats *lean, bool wire16, expect *ex /* [DSACP_PHASE_COUNT] */)
{
    memset(ex, 0, sizeof(expect) * DSACP_PHASE_COUNT);
    const int64_t L = cfg->num_hidden_layers;
    int64_t *req = malloc((size_t)(nd > 0 ? nd : 1) * sizeof *req);
    REQUIRE_OK(req ? DSACP_OK : DSACP_ENOMEM);
    for (int64_t j = 0; j < nd; j++) req[j] = j < nreq ? j : nreq - 1;
    dsacp_cp_formula f = {.cfg = cfg, .opt = cp, .W = W, .me = me, .nd = nd, .context = old, .request = req, .nreq = nreq,
                          .req_old = old, .latent_bytes = mla_b, .index_bytes = idx_b, .deployed = wire16,
                          .o_gather_v = o_gather_v, .lean_fallback_tokens = lean->lean_fallback_threshold + lean->lean_fallback_ties,
                          .lean_fallback_rounds = lean->lean_fallback_rounds};
    dsacp_cp_index_groups(cp, W, me, &f.iW, &f.iI, &f.ir);
    dsacp_comm_counter c[DSACP_PHASE_COUNT] = {0};
    int64_t *sh = NULL;
    REQUIRE_OK(dsacp_cp_formula_shared(&f, &sh));
    dsacp_cp_decode_comm(&f, sh, c);
    free(sh), free(req);
    for (int p = 0; p < DSACP_PHASE_COUNT; p++) ex[p] = (expect){c[p].calls, c[p].bytes_sent, c[p].bytes_recv};
    /* control: capacity agreement, metadata agreement, end agreement (int each) + want flags, and
     * one allocation agreement per layer (the strategy adds its own, e.g. allgather-kv's views). */
    const int64_t agrees = 3 + L;
    ex[DSACP_PHASE_control].calls += agrees + 1;
    ex[DSACP_PHASE_control].sent += agrees * 4 * (W - 1) + (me ? 0 : 2 * (W - 1));
    ex[DSACP_PHASE_control].recv += agrees * 4 * (W - 1) + (me ? 2 : 0);
}

/* One prefill-only step: entries with old lengths old[] and n[] new tokens, both caches
 * sharded (docs/context-parallel.md, "Bytes per step"). */
/* The rank that computes token i (of n new ones) of an entry under a split, written out again
 * from docs/context-parallel.md section 4 (t: the token's index in the step, T the step's size). */
static int64_t split_rank(dsacp_prefill_split split, int64_t p, int64_t I, int64_t W, int64_t i, int64_t n, int64_t t,
                          int64_t T)
{
    if (split == DSACP_PREFILL_CONTIGUOUS) return t / ((T + W - 1) / W);
    if (split == DSACP_PREFILL_ZIGZAG) {
        int64_t c = 0;
        while (c + 1 < 2 * W && n * (c + 1) / (2 * W) <= i) c++; /* chunk c = [n c / 2W, n (c + 1) / 2W) */
        return c < W ? c : 2 * W - 1 - c;
    }
    return dsacp_cp_owner(p, I, W);
}

static void expected_prefill_split(const dsacp_config *cfg, dsacp_prefill_split split, int64_t I, int64_t W,
                                   int64_t me, const int64_t *old, const int64_t *n, int64_t nent, int64_t E,
                                   expect *ex);

static void expected_prefill(const dsacp_config *cfg, int64_t I, int64_t W, int64_t me, const int64_t *old,
                             const int64_t *n, int64_t nent, int64_t E, expect *ex)
{
    expected_prefill_split(cfg, DSACP_PREFILL_OWNER, I, W, me, old, n, nent, E, ex);
}

static void expected_prefill_split(const dsacp_config *cfg, dsacp_prefill_split split, int64_t I, int64_t W,
                                   int64_t me, const int64_t *old, const int64_t *n, int64_t nent, int64_t E,
                                   expect *ex)
{
    memset(ex, 0, sizeof(expect) * DSACP_PHASE_COUNT);
    const int64_t L = cfg->num_hidden_layers, D = cfg->hidden_size;
    const int64_t agrees = 3 + 2 * L; /* + per layer: the allocation agreement and the views' */
    ex[DSACP_PHASE_control] = (expect){agrees + 1, agrees * 4 * (W - 1) + (me ? 0 : 2 * (W - 1)), agrees * 4 * (W - 1) + (me ? 2 : 0)};
    int64_t *npre = calloc((size_t)W, sizeof *npre), ctx_me = 0, ctx_others = 0;
    int64_t T = 0, t = 0;
    for (int64_t e = 0; e < nent; e++) T += n[e];
    for (int64_t e = 0; e < nent; e++) {
        for (int64_t p = old[e]; p < old[e] + n[e]; p++, t++) npre[split_rank(split, p, I, W, p - old[e], n[e], t, T)]++;
        for (int64_t q = 0; q < W; q++) {
            const int64_t b = dsacp_cp_local_len(old[e], q, I, W) * E;
            if (q == me) ctx_me += b;
            else ctx_others += b;
        }
    }
    int64_t others = 0;
    for (int64_t q = 0; q < W; q++)
        if (q != me) others += npre[q];
    ex[DSACP_PHASE_prefill_kv] = (expect){2 * L, L * (npre[me] * E + ctx_me) * (W - 1), L * (others * E + ctx_others)};
    ex[DSACP_PHASE_logits] = (expect){1, me ? npre[me] * D * 4 : 0, me ? 0 : others * D * 4};
    free(npre);
}

static void check_counters(dsacp_comm *ec, const expect *ex, const char *label, const char *name, const char *what)
{
    for (int p = 0; p < DSACP_PHASE_COUNT; p++) {
        const dsacp_comm_counter k = dsacp_comm_get_counter(ec, p);
        const expect x = g_W == 1 ? (expect){0, 0, 0} : ex[p];
        CHECKF(k.calls == x.calls && k.bytes_sent == x.sent && k.bytes_recv == x.recv,
               "%s %s %s W=%d rank %d phase %s: calls %lld sent %lld recv %lld, formula %lld %lld %lld", label, name,
               what, g_W, g_rank, dsacp_comm_phase_name(p), (long long)k.calls, (long long)k.bytes_sent,
               (long long)k.bytes_recv, (long long)x.calls, (long long)x.sent, (long long)x.recv);
    }
}


/* The planner's prediction (dsacp_plan_step_comm, src/plan) against the counters, per phase. */
static void check_plan(dsacp_comm *ec, const dsacp_config *cfg, const dsacp_cp_options *cp, const dsacp_plan_step *ps,
                       const char *name, const char *what)
{
    dsacp_comm_counter pr[DSACP_PHASE_COUNT];
    CHECK_OK(dsacp_plan_step_comm(cfg, cp, ps, pr));
    for (int p = 0; p < DSACP_PHASE_COUNT; p++) {
        const dsacp_comm_counter k = dsacp_comm_get_counter(ec, p);
        CHECKF(k.calls == pr[p].calls && k.bytes_sent == pr[p].bytes_sent && k.bytes_recv == pr[p].bytes_recv,
               "plan %s %s W=%d rank %d phase %s: measured calls %lld sent %lld recv %lld, planned %lld %lld %lld", name,
               what, g_W, g_rank, dsacp_comm_phase_name(p), (long long)k.calls, (long long)k.bytes_sent,
               (long long)k.bytes_recv, (long long)pr[p].calls, (long long)pr[p].bytes_sent, (long long)pr[p].bytes_recv);
    }
}

/* A step of decode tokens, one per request, with the given contexts. */
static dsacp_plan_step plan_decode(const dsacp_config *cfg, const dsacp_engine_options *eo, int64_t nd, const int64_t *ctx,
                                   const int64_t *req, int64_t nreq, const int64_t *req_old, bool gv,
                                   const dsacp_cp_stats *lst)
{
    dsacp_plan_step ps = {.W = g_W, .rank = g_rank, .nd = nd, .context = ctx, .request = req, .nreq = nreq,
                          .req_old = req_old, .hidden_bytes = cfg->hidden_size * 4, .want_logits = true,
                          .deployed = eo->numerics == DSACP_NUMERICS_DEPLOYED, .o_gather_v = gv};
    ps.latent_bytes = dsacp_mla_cache_bytes_per_token(cfg, eo->kv_dtype);
    ps.index_bytes = dsacp_index_cache_bytes_per_token(cfg, ps.deployed ? DSACP_KV_FP8 : DSACP_KV_F32);
    if (lst) ps.lean_fallback_tokens = lst->lean_fallback_threshold + lst->lean_fallback_ties, ps.lean_fallback_rounds = lst->lean_fallback_rounds;
    return ps;
}

static void test_counters(const dsacp_model *m, const dsacp_engine_options *eo, const char *label)
{
    const dsacp_config *cfg = dsacp_model_config(m);
    const cp_case cases[] = {
        {"allgather-kv", DSACP_DECODE_ALLGATHER_KV, DSACP_LAYOUT_SHARDED, DSACP_LAYOUT_SHARDED, 3, DSACP_CP_DCP, DSACP_PREFILL_OWNER, DSACP_WEIGHTS_REPLICATED, DSACP_WEIGHTS_REPLICATED, 0, DSACP_LEAN_MERGE_OUTPUT, DSACP_PARTIALS_AUTO},
        {"replicated-index", DSACP_DECODE_REPLICATED_INDEX, DSACP_LAYOUT_SHARDED, DSACP_LAYOUT_REPLICATED, 3, DSACP_CP_DCP, DSACP_PREFILL_OWNER, DSACP_WEIGHTS_REPLICATED, DSACP_WEIGHTS_REPLICATED, 0, DSACP_LEAN_MERGE_OUTPUT, DSACP_PARTIALS_AUTO},
        {"exact-topk", DSACP_DECODE_EXACT_TOPK, DSACP_LAYOUT_SHARDED, DSACP_LAYOUT_SHARDED, 3, DSACP_CP_DCP, DSACP_PREFILL_OWNER, DSACP_WEIGHTS_REPLICATED, DSACP_WEIGHTS_REPLICATED, 0, DSACP_LEAN_MERGE_OUTPUT, DSACP_PARTIALS_AUTO},
        {"lean", DSACP_DECODE_LEAN, DSACP_LAYOUT_SHARDED, DSACP_LAYOUT_SHARDED, 1, DSACP_CP_DCP, DSACP_PREFILL_OWNER, DSACP_WEIGHTS_REPLICATED, DSACP_WEIGHTS_REPLICATED, 1.0, DSACP_LEAN_MERGE_OUTPUT, DSACP_PARTIALS_AUTO},
        {"lean values", DSACP_DECODE_LEAN, DSACP_LAYOUT_SHARDED, DSACP_LAYOUT_SHARDED, 3, DSACP_CP_DCP, DSACP_PREFILL_OWNER, DSACP_WEIGHTS_REPLICATED, DSACP_WEIGHTS_REPLICATED, 1.5, DSACP_LEAN_MERGE_VALUES, DSACP_PARTIALS_AUTO},
    };
    for (int c = 0; c < 8; c++) {
        /* cases 5..7: exact-topk, replicated-index and lean values with --dcp-comm-backend a2a */
        const int ci = c < 5 ? c : c == 5 ? 2 : c == 6 ? 1 : 4;
        dsacp_cp_options cp;
        dsacp_cp_options_default(&cp);
        cp.merge_backend = c < 5 ? DSACP_MERGE_AG_RS : DSACP_MERGE_A2A;
        cp.decode = cases[ci].dec, cp.kv_layout = cases[ci].kv, cp.index_layout = cases[ci].idx, cp.interleave = cases[ci].I;
        if (cases[ci].lf > 0) cp.lean_factor = cases[ci].lf;
        cp.lean_merge = cases[ci].merge;
        char name[64];
        snprintf(name, sizeof name, "%s%s", cases[ci].name, c < 5 ? "" : " a2a");
        dsacp_engine *e = NULL;
        REQUIRE_OK(dsacp_engine_create_cp(m, eo, &cp, g_world, &e));
        step_out got[NSTEP] = {0};
        CHECK_OK(run_sched(e, cfg, got));
        free_out(got);
        /* One more decode step of every request, counted alone. */
        int64_t old[NREQ], used[NREQ] = {0};
        for (int s = 0; s < NSTEP; s++)
            for (int r = 0; r < NREQ; r++) used[r] += sched[s][r];
        dsacp_step_entry en[NREQ];
        for (int r = 0; r < NREQ; r++) {
            old[r] = dsacp_engine_request_length(e, r);
            en[r] = (dsacp_step_entry){r, 1, g_ids[r] + used[r]};
        }
        dsacp_comm_reset_counters(g_world);
        dsacp_comm *ec = dsacp_engine_comm(e);
        dsacp_comm_reset_counters(ec);
        dsacp_engine_cp_stats_reset(e);
        float *logits = malloc((size_t)(NREQ * cfg->vocab_size) * 4);
        CHECK_OK(dsacp_engine_step(e, en, NREQ, logits, NULL));
        dsacp_cp_stats lst;
        dsacp_engine_cp_stats(e, &lst);
        free(logits);
        expect ex[DSACP_PHASE_COUNT];
        const int64_t mla_b = dsacp_mla_cache_bytes_per_token(cfg, eo->kv_dtype);
        const int64_t idx_b = dsacp_index_cache_bytes_per_token(cfg, eo->numerics == DSACP_NUMERICS_DEPLOYED ? DSACP_KV_FP8 : DSACP_KV_F32);
        bool gv = false, f32 = false;
        {
            /* The engine's rule: every rank's head columns on o_proj's FP8 blocks. */
            const dsacp_weight *o = dsacp_model_weight(m, "model.layers.0.self_attn.o_proj.weight");
            if (o) dsacp_cp_o_paths(cfg, &cp, g_W, o->dtype, o->block, &gv, &f32);
        }
        expected_decode(cfg, &cp, g_W, g_rank, NREQ, old, NREQ, mla_b, idx_b, gv, &lst,
                        eo->numerics == DSACP_NUMERICS_DEPLOYED && cp.partials == DSACP_PARTIALS_AUTO, ex);
        check_counters(ec, ex, label, name, "decode step");
        {
            int64_t req[NREQ];
            for (int r = 0; r < NREQ; r++) req[r] = r;
            const dsacp_plan_step ps = plan_decode(cfg, eo, NREQ, old, req, NREQ, old, gv, &lst);
            check_plan(ec, cfg, &cp, &ps, name, "decode step");
        }
        if (cases[ci].dec == DSACP_DECODE_EXACT_TOPK && c < 5) {
            /* A prefill-only step: a chunk of request 0 after its context, and a new request. */
            int64_t id4;
            REQUIRE_OK(dsacp_engine_add_request(e, &id4));
            const int64_t o2[2] = {dsacp_engine_request_length(e, 0), 0}, n2[2] = {5, 10};
            dsacp_step_entry pe[2] = {{0, 5, g_ids[0]}, {id4, 10, g_ids[1]}};
            dsacp_comm_reset_counters(ec);
            float *lg = malloc((size_t)(15 * cfg->vocab_size) * 4);
            CHECK_OK(dsacp_engine_step(e, pe, 2, lg, NULL));
            free(lg);
            expected_prefill(cfg, cp.interleave, g_W, g_rank, o2, n2, 2, mla_b + idx_b, ex);
            check_counters(ec, ex, label, name, "prefill step");
            dsacp_plan_step ps = plan_decode(cfg, eo, 0, NULL, NULL, 0, NULL, gv, NULL);
            ps.npre = 2, ps.pre_old = o2, ps.pre_new = n2;
            check_plan(ec, cfg, &cp, &ps, name, "prefill step");
        }
        if (g_rank == 0) {
            const dsacp_comm_counter k = dsacp_comm_get_counter(ec, DSACP_PHASE_query_gather);
            const dsacp_comm_counter k2 = dsacp_comm_get_counter(ec, DSACP_PHASE_index_candidates);
            const dsacp_comm_counter k3 = dsacp_comm_get_counter(ec, DSACP_PHASE_kv_gather);
            const dsacp_comm_counter k4 = dsacp_comm_get_counter(ec, DSACP_PHASE_lean_fallback);
            printf("%s counters %-16s W=%d: decode step of %d tokens, rank 0 recv: kv_gather %lld, candidates %lld "
                   "(+ fallback %lld), query %lld bytes (formulas matched)\n", label, name, g_W, NREQ,
                   (long long)k3.bytes_recv, (long long)k2.bytes_recv, (long long)k4.bytes_recv, (long long)k.bytes_recv);
        }
        dsacp_engine_free(e);
    }
}

/* DSA-CP: the collectives each weight plan must use and no others, with their bytes (docs
 * section 9): a step of T_q tokens on rank q (contiguous split), replicated caches, f32 weights. */
static void expected_dsa(const dsacp_model *m, const dsacp_cp_options *cp, int64_t W, int64_t me, const int64_t *Tq,
                         bool gather, int64_t E, expect *ex)
{
    const dsacp_config *cfg = dsacp_model_config(m);
    memset(ex, 0, sizeof(expect) * DSACP_PHASE_COUNT);
    const int64_t L = cfg->num_hidden_layers, D = cfg->hidden_size, H = cfg->num_attention_heads, dv = cfg->v_head_dim;
    int64_t others = 0;
    for (int64_t q = 0; q < W; q++)
        if (q != me) others += Tq[q];
    const int64_t agrees = 3 + L; /* + the per-layer allocation agreement (replicated caches: no views) */
    ex[DSACP_PHASE_control] = (expect){agrees + 1, agrees * 4 * (W - 1) + (me ? 0 : 2 * (W - 1)), agrees * 4 * (W - 1) + (me ? 2 : 0)};
    ex[DSACP_PHASE_prefill_kv] = (expect){L, L * Tq[me] * E * (W - 1), L * others * E};
    ex[DSACP_PHASE_logits] = (expect){1, me ? Tq[me] * D * 4 : 0, me ? 0 : others * D * 4};
    for (int64_t l = 0; l < L; l++) {
        char n[128];
        snprintf(n, sizeof n, "model.layers.%lld.self_attn.q_b_proj.weight", (long long)l);
        const dsacp_weight *qb = dsacp_model_weight(m, n);
        snprintf(n, sizeof n, "model.layers.%lld.self_attn.o_proj.weight", (long long)l);
        const dsacp_weight *ob = dsacp_model_weight(m, n);
        const int64_t qbytes = qb->rows * qb->cols * 4, obytes = ob->rows * ob->cols * 4;
        const bool root = l % W == me;
        if (cp->q_proj == DSACP_WEIGHTS_LAYER_SHARD) {
            expect *x = &ex[DSACP_PHASE_q_proj_weight];
            x->calls++, x->sent += root ? qbytes * (W - 1) : 0, x->recv += root ? 0 : qbytes;
        }
        if (cp->o_proj == DSACP_WEIGHTS_LAYER_SHARD) {
            expect *x = &ex[DSACP_PHASE_o_proj_weight];
            x->calls++, x->sent += root ? obytes * (W - 1) : 0, x->recv += root ? 0 : obytes;
        }
        if (cp->o_proj == DSACP_WEIGHTS_TP || cp->o_proj == DSACP_WEIGHTS_AUTO) {
            const int64_t cme = (dsacp_split_begin(H, me + 1, W) - dsacp_split_begin(H, me, W)) * dv;
            if (gather) {
                expect *x = &ex[DSACP_PHASE_o_proj_weight];
                x->calls++, x->sent += D * cme * 4 * (W - 1), x->recv += (obytes - D * cme * 4);
            } else {
                expect *x = &ex[DSACP_PHASE_o_proj];
                x->calls += 2; /* all-to-all of v columns, reduce-scatter of partial sums */
                for (int64_t q = 0; q < W; q++) {
                    if (q == me) continue;
                    const int64_t cq = (dsacp_split_begin(H, q + 1, W) - dsacp_split_begin(H, q, W)) * dv;
                    x->sent += Tq[me] * cq * 4 + Tq[q] * D * 4;
                    x->recv += Tq[q] * cme * 4 + Tq[me] * D * 4;
                }
            }
        }
    }
}

static void test_counters_dsa(const dsacp_model *m, const dsacp_engine_options *eo)
{
    const dsacp_config *cfg = dsacp_model_config(m);
    const dsacp_weight_plan plans[3][2] = {{DSACP_WEIGHTS_LAYER_SHARD, DSACP_WEIGHTS_TP},
                                           {DSACP_WEIGHTS_REPLICATED, DSACP_WEIGHTS_LAYER_SHARD},
                                           {DSACP_WEIGHTS_LAYER_SHARD, DSACP_WEIGHTS_REPLICATED}};
    const int64_t E = dsacp_mla_cache_bytes_per_token(cfg, eo->kv_dtype) +
                      dsacp_index_cache_bytes_per_token(cfg, DSACP_KV_F32);
    for (int c = 0; c < 3; c++) {
        dsacp_cp_options cp;
        dsacp_cp_options_default(&cp);
        cp.mode = DSACP_CP_DSA_CP, cp.prefill_split = DSACP_PREFILL_CONTIGUOUS, cp.decode = DSACP_DECODE_ALLGATHER_KV;
        cp.kv_layout = cp.index_layout = DSACP_LAYOUT_REPLICATED;
        cp.q_proj = plans[c][0], cp.o_proj = plans[c][1];
        dsacp_engine *e = NULL;
        REQUIRE_OK(dsacp_engine_create_cp(m, eo, &cp, g_world, &e));
        dsacp_comm *ec = dsacp_engine_comm(e);
        int64_t id[3];
        for (int r = 0; r < 3; r++) REQUIRE_OK(dsacp_engine_add_request(e, &id[r]));
        /* A prefill step of 9 + 5 tokens, then a decode step of 3 tokens. */
        for (int phase = 0; phase < 2; phase++) {
            dsacp_step_entry en[3];
            int64_t n = 0, T = 0;
            if (phase == 0) {
                en[n++] = (dsacp_step_entry){id[0], 9, g_ids[0]};
                en[n++] = (dsacp_step_entry){id[1], 5, g_ids[1]};
            } else {
                for (int r = 0; r < 3; r++) en[n++] = (dsacp_step_entry){id[r], 1, g_ids[r] + 20};
            }
            for (int64_t i = 0; i < n; i++) T += en[i].n_tokens;
            int64_t Tq[8] = {0}, chunk = (T + g_W - 1) / g_W;
            for (int64_t t = 0; t < T; t++) Tq[t / chunk]++;
            dsacp_comm_reset_counters(ec);
            float *lg = malloc((size_t)(T * cfg->vocab_size) * 4);
            CHECK_OK(dsacp_engine_step(e, en, n, lg, NULL));
            free(lg);
            expect ex[DSACP_PHASE_COUNT];
            expected_dsa(m, &cp, g_W, g_rank, Tq, phase == 0, E, ex);
            {
                /* the planner's weight-plan phases (f32 weights: 4 bytes per value) */
                const int64_t Lm = cfg->num_hidden_layers, H = cfg->num_attention_heads, dv = cfg->v_head_dim;
                int64_t *qb = calloc((size_t)Lm, sizeof *qb), *ob = calloc((size_t)Lm, sizeof *ob), sh[8];
                for (int64_t l = 0; l < Lm; l++) {
                    char nm[128];
                    snprintf(nm, sizeof nm, "model.layers.%lld.self_attn.q_b_proj.weight", (long long)l);
                    const dsacp_weight *w1 = dsacp_model_weight(m, nm);
                    snprintf(nm, sizeof nm, "model.layers.%lld.self_attn.o_proj.weight", (long long)l);
                    const dsacp_weight *w2 = dsacp_model_weight(m, nm);
                    qb[l] = w1->rows * w1->cols * 4, ob[l] = w2->rows * w2->cols * 4;
                }
                for (int q = 0; q < g_W && q < 8; q++)
                    sh[q] = cfg->hidden_size * (dsacp_split_begin(H, q + 1, g_W) - dsacp_split_begin(H, q, g_W)) * dv * 4;
                int64_t pold[3] = {0}, pnew[3];
                for (int64_t i = 0; i < n; i++) {
                    pnew[i] = en[i].n_tokens;
                    pold[i] = dsacp_engine_request_length(e, en[i].request_id) - en[i].n_tokens;
                }
                dsacp_plan_step ps = {.W = g_W, .rank = g_rank, .npre = n, .pre_old = pold, .pre_new = pnew,
                                      .latent_bytes = dsacp_mla_cache_bytes_per_token(cfg, eo->kv_dtype),
                                      .index_bytes = dsacp_index_cache_bytes_per_token(cfg, DSACP_KV_F32),
                                      .hidden_bytes = cfg->hidden_size * 4, .want_logits = true, .q_bytes = qb, .o_bytes = ob,
                                      .o_shard_bytes = sh, .tp_gather = phase == 0};
                char pn[96];
                snprintf(pn, sizeof pn, "dsa-cp q=%s o=%s", dsacp_weight_plan_name(cp.q_proj), dsacp_weight_plan_name(cp.o_proj));
                check_plan(ec, cfg, &cp, &ps, pn, phase == 0 ? "prefill step" : "decode step");
                free(qb), free(ob);
            }
            char name[96];
            snprintf(name, sizeof name, "dsa-cp q=%s o=%s", dsacp_weight_plan_name(cp.q_proj), dsacp_weight_plan_name(cp.o_proj));
            check_counters(ec, ex, "exact", name, phase == 0 ? "prefill step" : "decode step");
        }
        dsacp_weight_usage u, pu;
        dsacp_engine_weight_usage(e, &u);
        dsacp_plan_weight_usage(cfg, &cp, g_W, g_rank, DSACP_F32, 0, &pu);
        CHECKF(pu.q_proj_resident == u.q_proj_resident && pu.o_proj_resident == u.o_proj_resident &&
               pu.ring_bytes == u.ring_bytes && pu.gather_bytes == u.gather_bytes,
               "plan weights q=%s o=%s W=%d rank %d: planned %lld %lld %lld %lld, engine %lld %lld %lld %lld",
               dsacp_weight_plan_name(cp.q_proj), dsacp_weight_plan_name(cp.o_proj), g_W, g_rank,
               (long long)pu.q_proj_resident, (long long)pu.o_proj_resident, (long long)pu.ring_bytes,
               (long long)pu.gather_bytes, (long long)u.q_proj_resident, (long long)u.o_proj_resident,
               (long long)u.ring_bytes, (long long)u.gather_bytes);
        if (g_rank == 0)
            printf("weights dsa-cp q=%s o=%s W=%d rank 0: q_proj resident %lld, o_proj resident %lld, ring %lld, "
                   "gather %lld bytes; steps gather/activations %lld/%lld\n", dsacp_weight_plan_name(cp.q_proj),
                   dsacp_weight_plan_name(cp.o_proj), g_W, (long long)u.q_proj_resident, (long long)u.o_proj_resident,
                   (long long)u.ring_bytes, (long long)u.gather_bytes, (long long)u.steps_gather,
                   (long long)u.steps_activations);
        dsacp_engine_free(e);
    }
}

/* ---- layer-shard: ranks never read the weights they do not own ---- */

#include <fcntl.h>
#include <unistd.h>

/* Pages of [p, p + n) mapped into this process (/proc/self/pagemap bit 63), leaving out `edge`
 * bytes at each end (the kernel maps a few neighbouring pages around a fault). -1 if unreadable. */
static int64_t pages_present(const void *p, size_t n, size_t edge)
{
    const long ps = sysconf(_SC_PAGESIZE);
    uintptr_t a = ((uintptr_t)p + edge + (uintptr_t)ps - 1) / (uintptr_t)ps, b = ((uintptr_t)p + n - edge) / (uintptr_t)ps;
    if (n <= 2 * edge || b <= a) return 0;
    int fd = open("/proc/self/pagemap", O_RDONLY);
    if (fd < 0) return -1;
    int64_t present = 0;
    for (uintptr_t pg = a; pg < b; pg++) {
        uint64_t e = 0;
        if (pread(fd, &e, sizeof e, (off_t)(pg * sizeof e)) != (ssize_t)sizeof e) {
            present = -1;
            break;
        }
        present += (int64_t)(e >> 63);
    }
    close(fd);
    return present;
}

static void test_layer_shard_resident(void)
{
    dsacp_config c;
    REQUIRE_OK(dsacp_preset_config("tiny", &c));
    c.num_hidden_layers = 4;
    c.num_attention_heads = 8;
    c.q_lora_rank = 512;
    c.qk_nope_head_dim = 64;
    c.v_head_dim = 64;
    char dir[256] = {0};
    if (g_rank == 0) {
        char *d = tu_make_model_cfg(&c, 3, DSACP_WEIGHTS_F32);
        snprintf(dir, sizeof dir, "%s", d);
        free(d);
    }
    REQUIRE_OK(dsacp_comm_bcast(g_world, dir, sizeof dir, DSACP_PHASE_input));
    dsacp_model *m = NULL;
    REQUIRE_OK(dsacp_model_load(dir, &m));
    dsacp_cp_options cp;
    dsacp_cp_options_default(&cp);
    cp.mode = DSACP_CP_DSA_CP, cp.prefill_split = DSACP_PREFILL_CONTIGUOUS;
    cp.kv_layout = cp.index_layout = DSACP_LAYOUT_REPLICATED;
    cp.q_proj = cp.o_proj = DSACP_WEIGHTS_LAYER_SHARD;
    dsacp_engine_options eo;
    dsacp_engine_options_default(&eo);
    eo.num_blocks = 16;
    dsacp_engine *e = NULL;
    REQUIRE_OK(dsacp_engine_create_cp(m, &eo, &cp, g_world, &e));
    int64_t id;
    REQUIRE_OK(dsacp_engine_add_request(e, &id));
    for (int s = 0; s < 2; s++) {
        dsacp_step_entry en = {id, s ? 1 : 40, g_ids[0]};
        CHECK_OK(dsacp_engine_step(e, &en, 1, NULL, NULL));
    }
    int64_t own = 0, other = 0;
    for (int64_t l = 0; l < c.num_hidden_layers; l++) {
        for (int k = 0; k < 2; k++) {
            char n[128];
            snprintf(n, sizeof n, "model.layers.%lld.self_attn.%s.weight", (long long)l, k ? "o_proj" : "q_b_proj");
            const dsacp_weight *w = dsacp_model_weight(m, n);
            const int64_t pr = pages_present(w->data, (size_t)(w->rows * w->cols) * 4, 128 * 1024);
            if (pr < 0) continue; /* no pagemap here: nothing to check */
            if (l % g_W == g_rank || g_W == 1) own += pr;
            else other += pr;
        }
    }
    CHECKF(other == 0, "W=%d rank %d: %lld pages of q_b_proj/o_proj of layers it does not own were read", g_W, g_rank,
           (long long)other);
    CHECKF(own > 0, "W=%d rank %d: its own layers' weights show no resident page (the check sees nothing)", g_W, g_rank);
    if (g_rank == 0)
        printf("layer-shard W=%d rank 0: %lld resident pages of its own layers' q_b_proj/o_proj, %lld of the others'\n",
               g_W, (long long)own, (long long)other);
    dsacp_engine_free(e);
    drop_model(m, strdup(dir));
}

/* ---- KV memory per rank ---- */

static void test_memory(const dsacp_model *m)
{
    const dsacp_config *cfg = dsacp_model_config(m);
    dsacp_engine_options eo;
    dsacp_engine_options_default(&eo);
    eo.block_size = 16;
    eo.num_blocks = 256;
    const int64_t lens[3] = {1000, 333, 77};
    int64_t used[2][2] = {{0}};
    for (int mode = 0; mode < 2; mode++) {
        dsacp_engine *e = NULL;
        if (mode == 0) REQUIRE_OK(dsacp_engine_create(m, &eo, &e));
        else REQUIRE_OK(dsacp_engine_create_cp(m, &eo, NULL, g_world, &e));
        for (int r = 0; r < 3; r++) {
            int64_t id;
            REQUIRE_OK(dsacp_engine_add_request(e, &id));
            int32_t *ids = malloc((size_t)lens[r] * 4);
            tu_random_ids(ids, lens[r], cfg->vocab_size, 77 + (uint64_t)r);
            for (int64_t off = 0; off < lens[r]; off += 250) {
                dsacp_step_entry en = {id, lens[r] - off < 250 ? lens[r] - off : 250, ids + off};
                CHECK_OK(dsacp_engine_step(e, &en, 1, NULL, NULL));
            }
            free(ids);
        }
        dsacp_kv_usage u;
        dsacp_engine_kv_usage(e, &u);
        used[mode][0] = u.latent_used_bytes;
        used[mode][1] = u.index_used_bytes;
        dsacp_engine_free(e);
    }
    const int64_t L = cfg->num_hidden_layers;
    const int64_t blk = eo.block_size * L *
                        (dsacp_mla_cache_bytes_per_token(cfg, DSACP_KV_F32) + dsacp_index_cache_bytes_per_token(cfg, DSACP_KV_F32));
    const double bound = 1.05 * (double)(used[0][0] + used[0][1]) / g_W + 3.0 * (double)blk;
    const double have = (double)(used[1][0] + used[1][1]);
    CHECKF(have <= bound, "W=%d rank %d: KV bytes %.0f > 1.05 x %lld / W + one block per request (%.0f)", g_W, g_rank,
           have, (long long)(used[0][0] + used[0][1]), bound);
    if (g_rank == 0)
        printf("memory W=%d: sharded KV bytes on rank 0 %.0f vs W=1 %lld (ratio %.3f of 1/W)\n", g_W, have,
               (long long)(used[0][0] + used[0][1]), have * g_W / (double)(used[0][0] + used[0][1]));
}


/* ---- lean: the verdict against brute force, long contexts, forced fallbacks ---- */

static uint64_t rng_next(uint64_t *x)
{
    *x ^= *x << 13, *x ^= *x >> 7, *x ^= *x << 17;
    return *x;
}

static int cmp_u64_desc(const void *a, const void *b)
{
    const uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

static int cmp_i32_asc(const void *a, const void *b)
{
    const int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* Random score sets (few distinct values: many ties; or all winners on one rank; or continuous),
 * positions dealt to ranks by the ownership rule: whenever dsacp_cp_lean_decide decides, the
 * union of every rank's dsacp_cp_lean_own must be exactly the global top-k (score descending,
 * lower position first). Every verdict kind must occur. */
static void test_lean_decide(void)
{
    uint64_t x = 0x9E3779B97F4A7C15ull;
    int64_t decided = 0, thr = 0, ties = 0;
    for (int it = 0; it < 6000; it++) {
        const int64_t W = 1 + (int64_t)(rng_next(&x) % 5), K = 1 + (int64_t)(rng_next(&x) % 12);
        const int64_t n = 1 + (int64_t)(rng_next(&x) % 60), I = 1 + (int64_t)(rng_next(&x) % 4);
        const int kind = (int)(rng_next(&x) % 3);
        const double f = 1.0 + (double)(rng_next(&x) % 4) * 0.5;
        float sc[64];
        for (int64_t p = 0; p < n; p++) {
            if (kind == 0) sc[p] = (float)(rng_next(&x) % 4);                       /* heavy ties */
            else if (kind == 1) sc[p] = dsacp_cp_owner(p, I, W) == 0 ? 10.0f + (float)(rng_next(&x) % 100) : (float)(rng_next(&x) % 100) / 100.0f;
            else sc[p] = (float)(rng_next(&x) % 1000000) / 7.0f;
        }
        uint64_t all[64];
        for (int64_t p = 0; p < n; p++) all[p] = dsacp_cp_cand_key(sc[p], (int32_t)p);
        qsort(all, (size_t)n, sizeof *all, cmp_u64_desc);
        const int64_t kk = n < K ? n : K;
        int32_t want[64];
        for (int64_t i = 0; i < kk; i++) want[i] = dsacp_cp_cand_pos(all[i]);
        qsort(want, (size_t)kk, 4, cmp_i32_asc);
        if (n <= K) continue; /* lean selects everything without an exchange */
        const int64_t kp = dsacp_cp_lean_kprime(K, W, f);
        uint64_t lists[5][64];
        int64_t cnt[5] = {0}, m[5];
        uint8_t trunc[5];
        uint32_t keys[5][64];
        const uint32_t *kq[5];
        for (int64_t p = 0; p < n; p++) {
            const int64_t q = dsacp_cp_owner(p, I, W);
            lists[q][cnt[q]++] = dsacp_cp_cand_key(sc[p], (int32_t)p);
        }
        for (int64_t q = 0; q < W; q++) {
            qsort(lists[q], (size_t)cnt[q], sizeof(uint64_t), cmp_u64_desc);
            if (cnt[q] > K) cnt[q] = K; /* the local top-k */
            m[q] = cnt[q] < kp ? cnt[q] : kp;
            trunc[q] = dsacp_cp_local_len(n, q, I, W) > m[q];
            for (int64_t i = 0; i < m[q]; i++) keys[q][i] = (uint32_t)(lists[q][i] >> 32);
            kq[q] = keys[q];
        }
        int32_t got[64 * 5];
        int64_t ng = 0, verdict = -1;
        for (int64_t me = 0; me < W; me++) {
            uint32_t tau = 0;
            int64_t take = 0;
            const int v = dsacp_cp_lean_decide(W, kq, m, trunc, K, me, &tau, &take);
            CHECK(verdict < 0 || v == verdict); /* every rank reaches the same verdict */
            verdict = v;
            if (v == DSACP_LEAN_DECIDED) ng += dsacp_cp_lean_own(lists[me], cnt[me], tau, take, got + ng);
        }
        if (verdict == DSACP_LEAN_DECIDED) {
            decided++;
            qsort(got, (size_t)ng, 4, cmp_i32_asc);
            bool same = ng == kk;
            for (int64_t i = 0; same && i < kk; i++) same = got[i] == want[i];
            CHECKF(same, "lean verdict: W=%lld K=%lld n=%lld I=%lld kind %d f=%.1f: %lld selected, want %lld", (long long)W,
                   (long long)K, (long long)n, (long long)I, kind, f, (long long)ng, (long long)kk);
        } else {
            thr += verdict == DSACP_LEAN_THRESHOLD;
            ties += verdict == DSACP_LEAN_TIES;
        }
    }
    CHECKF(decided > 1000 && thr > 100 && ties > 100, "lean verdicts: decided %lld, threshold fallbacks %lld, tie "
           "fallbacks %lld (each kind must occur)", (long long)decided, (long long)thr, (long long)ties);
    if (g_rank == 0)
        printf("lean verdict vs brute force: %lld decided exactly, %lld threshold and %lld tie fallbacks\n",
               (long long)decided, (long long)thr, (long long)ties);
}

/* Sums a stats struct over the group (every rank gets the sums). */
static dsacp_cp_stats stats_sum(const dsacp_engine *e)
{
    dsacp_cp_stats me, *all = calloc((size_t)g_W, sizeof *all), sum = {0};
    dsacp_engine_cp_stats(e, &me);
    REQUIRE_OK(dsacp_comm_allgather(g_world, &me, sizeof me, all, -1));
    for (int q = 0; q < g_W; q++) {
        sum.prefill_tokens += all[q].prefill_tokens, sum.decode_tokens += all[q].decode_tokens;
        sum.keys_scored += all[q].keys_scored, sum.keys_attended += all[q].keys_attended;
    }
    /* lean's verdicts are the group's: every rank counts the same */
    for (int q = 0; q < g_W; q++)
        CHECK(all[q].lean_decisions == all[0].lean_decisions && all[q].lean_fallback_ties == all[0].lean_fallback_ties &&
              all[q].lean_fallback_threshold == all[0].lean_fallback_threshold);
    sum.lean_decisions = all[0].lean_decisions;
    sum.lean_fallback_threshold = all[0].lean_fallback_threshold;
    sum.lean_fallback_ties = all[0].lean_fallback_ties;
    sum.lean_fallback_rounds = all[0].lean_fallback_rounds;
    for (int q = 0; q < g_W; q++) sum.context_gather += all[q].context_gather, sum.context_distributed += all[q].context_distributed;
    free(all);
    return sum;
}

/* Two requests with long prompts (prefilled in odd chunks) and decode steps mixed with a later
 * chunk, on the CP group and on one process: identical selected sets in every layer, logits
 * within tol. Returns the group's stats summed over ranks. */
static dsacp_cp_stats run_long(const dsacp_model *m, const dsacp_engine_options *eo, const dsacp_cp_options *cp,
                               const char *what, double tol, double cos_tol)
{
    const dsacp_config *cfg = dsacp_model_config(m);
    const int64_t V = cfg->vocab_size, K = cfg->index_topk, L = cfg->num_hidden_layers;
    enum { LS = 7 };
    static const int64_t plan[LS][2] = {{131, 0}, {77, 45}, {1, 1}, {1, 1}, {1, 29}, {1, 1}, {1, 1}};
    int32_t *ids[2];
    for (int r = 0; r < 2; r++) {
        ids[r] = malloc(400 * sizeof(int32_t));
        tu_random_ids(ids[r], 400, V, 4242 + (uint64_t)r);
    }
    dsacp_cp_stats st = {0};
    float *lg[2] = {malloc((size_t)(256 * V) * 4), malloc((size_t)(256 * V) * 4)};
    int32_t *tk[2] = {malloc((size_t)(L * 256 * K) * 4), malloc((size_t)(L * 256 * K) * 4)};
    dsacp_engine *e[2] = {NULL, NULL};
    REQUIRE_OK(dsacp_engine_create(m, eo, &e[0]));
    REQUIRE_OK(dsacp_engine_create_cp(m, eo, cp, g_world, &e[1]));
    int64_t id[2][2], used[2] = {0, 0};
    for (int k = 0; k < 2; k++)
        for (int r = 0; r < 2; r++) REQUIRE_OK(dsacp_engine_add_request(e[k], &id[k][r]));
    double worst = 0, cosd = 0;
    int64_t diff = 0;
    for (int s = 0; s < LS; s++) {
        for (int k = 0; k < 2; k++) {
            dsacp_step_entry en[2];
            int64_t n = 0;
            for (int r = 0; r < 2; r++)
                if (plan[s][r]) en[n++] = (dsacp_step_entry){id[k][r], plan[s][r], ids[r] + used[r]};
            CHECK_OK(dsacp_engine_step(e[k], en, n, lg[k], tk[k]));
        }
        const int64_t T = plan[s][0] + plan[s][1];
        for (int r = 0; r < 2; r++) used[r] += plan[s][r];
        if (g_rank == 0) {
            for (int64_t i = 0; i < L * T * K; i++) diff += tk[0][i] != tk[1][i];
            const double rel = tu_max_rel_ff(lg[1], lg[0], T * V);
            if (!(rel <= worst)) worst = rel;
            cosd = fmax(cosd, cos_diff(lg[1], lg[0], T * V));
        }
    }
    st = stats_sum(e[1]);
    {
        /* the engine's own plan of these steps (chunks by their context path) = its counters */
        dsacp_comm_counter pl[DSACP_PHASE_COUNT], me[DSACP_PHASE_COUNT];
        CHECK_OK(dsacp_engine_plan_comm(e[1], pl, me));
        for (int p = 0; p < DSACP_PHASE_COUNT; p++)
            CHECKF(pl[p].calls == me[p].calls && pl[p].bytes_sent == me[p].bytes_sent && pl[p].bytes_recv == me[p].bytes_recv,
                   "%s W=%d rank %d phase %s: planned %lld %lld %lld, measured %lld %lld %lld", what, g_W, g_rank,
                   dsacp_comm_phase_name(p), (long long)pl[p].calls, (long long)pl[p].bytes_sent, (long long)pl[p].bytes_recv,
                   (long long)me[p].calls, (long long)me[p].bytes_sent, (long long)me[p].bytes_recv);
    }
    if (g_rank == 0) {
        CHECKF(diff == 0 && worst <= tol && cosd <= cos_tol, "%s W=%d: %lld selected positions differ, logits max rel "
               "%.3g, cos diff %.3g", what, g_W, (long long)diff, worst, cosd);
        printf("%-44s W=%d: selected sets identical=%s, logits max rel %.3g, cos diff %.3g; lean decided %lld, "
               "fallbacks %lld (threshold) + %lld (ties)\n", what, g_W, diff ? "NO" : "yes", worst, cosd, (long long)st.lean_decisions,
               (long long)st.lean_fallback_threshold, (long long)st.lean_fallback_ties);
    }
    for (int k = 0; k < 2; k++) dsacp_engine_free(e[k]), free(lg[k]), free(tk[k]);
    for (int r = 0; r < 2; r++) free(ids[r]);
    return st;
}

static void test_lean_long(const dsacp_model *m)
{
    dsacp_engine_options eo;
    dsacp_engine_options_default(&eo);
    eo.block_size = 16;
    eo.num_blocks = 64;
    dsacp_cp_options cp;
    dsacp_cp_options_default(&cp);
    cp.decode = DSACP_DECODE_LEAN;
    const double fs[3] = {1.0, 1.25, 2.0};
    int64_t fb = 0;
    for (int i = 0; i < 3; i++) {
        cp.lean_factor = fs[i];
        cp.lean_merge = i == 1 ? DSACP_LEAN_MERGE_VALUES : DSACP_LEAN_MERGE_OUTPUT;
        cp.prefill_split = i == 2 ? DSACP_PREFILL_ZIGZAG : DSACP_PREFILL_OWNER;
        char what[64];
        snprintf(what, sizeof what, "lean long f=%.2f %s", fs[i], dsacp_lean_merge_name(cp.lean_merge));
        const dsacp_cp_stats st = run_long(m, &eo, &cp, what, 1e-5, 1e-10);
        if (g_W > 1) CHECKF(st.lean_decisions > 0, "%s W=%d: no token went through the truncated lists", what, g_W);
        fb += st.lean_fallback_threshold;
    }
    /* k' = k / W at W = 3, 4: one rank's share of the winners often exceeds it */
    if (g_W > 2) CHECKF(fb > 0, "lean W=%d: f = 1 never fell back on the threshold", g_W);
}

static void test_lean_ties(const dsacp_model *ties)
{
    dsacp_engine_options eo;
    dsacp_engine_options_default(&eo);
    eo.block_size = 16;
    eo.num_blocks = 64;
    dsacp_cp_options cp;
    dsacp_cp_options_default(&cp);
    cp.decode = DSACP_DECODE_LEAN;
    /* Forced: every score ties at 0 and, with I = 2k, the k winners (the lowest positions) all
     * live on rank 0: every decision must fall back, and still select exactly. */
    cp.lean_factor = 1.0;
    cp.lean_merge = DSACP_LEAN_MERGE_OUTPUT;
    cp.prefill_split = DSACP_PREFILL_OWNER;
    cp.interleave = 2 * dsacp_model_config(ties)->index_topk;
    const dsacp_cp_stats st = run_long(ties, &eo, &cp, "lean ties, all winners on rank 0", 1e-5, 1e-10);
    if (g_W > 1)
        CHECKF(st.lean_decisions > 0 && st.lean_fallback_threshold + st.lean_fallback_ties == st.lean_decisions,
               "lean ties W=%d: %lld decisions, %lld + %lld fallbacks (all must fall back)", g_W,
               (long long)st.lean_decisions, (long long)st.lean_fallback_threshold, (long long)st.lean_fallback_ties);
}

/* The default lean (bf16 partials, o_proj before the merge) in deployed numerics, per layer: a
 * one-layer dense model, so that a decode token's logits see one merged attention output (its
 * cache entries come from the embeddings: no error carries over). Tolerance: FlashMLA's. */
static void test_lean_deployed(void)
{
    char dir[256] = {0};
    if (g_rank == 0) {
        dsacp_config c;
        REQUIRE_OK(dsacp_preset_config("tiny", &c));
        c.num_hidden_layers = 1;
        char *d = tu_make_model_cfg(&c, 11, DSACP_WEIGHTS_FP8);
        snprintf(dir, sizeof dir, "%s", d);
        free(d);
    }
    REQUIRE_OK(dsacp_comm_bcast(g_world, dir, sizeof dir, DSACP_PHASE_input));
    dsacp_model *m = NULL;
    REQUIRE_OK(dsacp_model_load(dir, &m));
    dsacp_engine_options eo;
    dsacp_engine_options_default(&eo);
    eo.block_size = 16;
    eo.num_blocks = 64;
    eo.numerics = DSACP_NUMERICS_DEPLOYED;
    eo.kv_dtype = DSACP_KV_FP8;
    dsacp_cp_options cp;
    dsacp_cp_options_default(&cp);
    cp.decode = DSACP_DECODE_LEAN;
    run_long(m, &eo, &cp, "lean deployed 1 layer (bf16, output merge)", 0.1, 2e-3);
    cp.lean_merge = DSACP_LEAN_MERGE_VALUES;
    cp.partials = DSACP_PARTIALS_F32;
    run_long(m, &eo, &cp, "lean deployed 1 layer (fp32, values merge)", 0.1, 2e-3);
    drop_model(m, strdup(dir));
}


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

/* The distributed context path's bytes are the decode formula's, one query row per chunk token
 * (its context = its position): a step with one chunk of 5 tokens after 58 cached ones. */
static void test_counters_distributed(const dsacp_model *m, const dsacp_engine_options *eo)
{
    const dsacp_config *cfg = dsacp_model_config(m);
    for (int c = 0; c < 2; c++) {
        dsacp_cp_options cp;
        dsacp_cp_options_default(&cp);
        cp.decode = c ? DSACP_DECODE_LEAN : DSACP_DECODE_EXACT_TOPK;
        cp.interleave = 3;
        cp.context_path = DSACP_CONTEXT_DISTRIBUTED;
        cp.lean_factor = 1.0;
        dsacp_engine *e = NULL;
        REQUIRE_OK(dsacp_engine_create_cp(m, eo, &cp, g_world, &e));
        int64_t id;
        REQUIRE_OK(dsacp_engine_add_request(e, &id));
        dsacp_step_entry en = {id, 58, g_ids[0]};
        CHECK_OK(dsacp_engine_step(e, &en, 1, NULL, NULL));
        dsacp_comm *ec = dsacp_engine_comm(e);
        dsacp_comm_reset_counters(ec);
        dsacp_engine_cp_stats_reset(e);
        en = (dsacp_step_entry){id, 5, g_ids[0] + 58};
        float *lg = malloc((size_t)(5 * cfg->vocab_size) * 4);
        CHECK_OK(dsacp_engine_step(e, &en, 1, lg, NULL));
        free(lg);
        dsacp_cp_stats lst;
        dsacp_engine_cp_stats(e, &lst);
        const int64_t old[5] = {58, 59, 60, 61, 62};
        expect ex[DSACP_PHASE_COUNT];
        const int64_t mla_b = dsacp_mla_cache_bytes_per_token(cfg, eo->kv_dtype);
        const int64_t idx_b = dsacp_index_cache_bytes_per_token(cfg, eo->numerics == DSACP_NUMERICS_DEPLOYED ? DSACP_KV_FP8 : DSACP_KV_F32);
        expected_decode(cfg, &cp, g_W, g_rank, 5, old, 1, mla_b, idx_b, false, &lst, false, ex);
        check_counters(ec, ex, "exact", dsacp_decode_strategy_name(cp.decode), "distributed chunk");
        const int64_t req[5] = {0, 0, 0, 0, 0}, rold = 58;
        const dsacp_plan_step ps = plan_decode(cfg, eo, 5, old, req, 1, &rold, false, &lst);
        check_plan(ec, cfg, &cp, &ps, dsacp_decode_strategy_name(cp.decode), "distributed chunk");
        CHECK(g_W == 1 || lst.context_distributed == 1);
        dsacp_engine_free(e);
    }
}


/* --dcp-comm-backend a2a (Helix's one all-to-all of partials and lse) for every merge that has
 * it, against W = 1. */
static void test_a2a(const dsacp_model *m)
{
    dsacp_engine_options eo;
    dsacp_engine_options_default(&eo);
    eo.block_size = 16;
    eo.num_blocks = 64;
    for (int c = 0; c < 4; c++) {
        dsacp_cp_options cp;
        dsacp_cp_options_default(&cp);
        cp.merge_backend = DSACP_MERGE_A2A;
        cp.interleave = c % 2 ? 3 : 1;
        cp.decode = c == 0 ? DSACP_DECODE_EXACT_TOPK : c == 1 ? DSACP_DECODE_REPLICATED_INDEX : DSACP_DECODE_LEAN;
        if (c == 1) cp.index_layout = DSACP_LAYOUT_REPLICATED;
        cp.lean_merge = DSACP_LEAN_MERGE_VALUES;
        cp.lean_factor = c == 3 ? 1.0 : 2.0;
        cp.context_path = c == 2 ? DSACP_CONTEXT_DISTRIBUTED : DSACP_CONTEXT_GATHER;
        char what[96];
        snprintf(what, sizeof what, "a2a merge, %s, I=%lld", dsacp_decode_strategy_name(cp.decode), (long long)cp.interleave);
        run_long(m, &eo, &cp, what, 1e-5, 1e-10);
    }
}


/* --index-layout partial:G for every G dividing W: the same selected sets as W = 1, the
 * candidates between the W / G groups only (counters = formulas), and the index memory of a
 * rank G times the sharded one's. */
static void test_partial(const dsacp_model *m)
{
    const dsacp_config *cfg = dsacp_model_config(m);
    dsacp_engine_options eo;
    dsacp_engine_options_default(&eo);
    eo.block_size = 16;
    eo.num_blocks = 64;
    for (int64_t G = 1; G <= g_W; G++) {
        if (g_W % G) continue;
        for (int c = 0; c < 4; c++) {
            dsacp_cp_options cp;
            dsacp_cp_options_default(&cp);
            cp.index_layout = DSACP_LAYOUT_PARTIAL;
            cp.index_group = G;
            cp.interleave = c % 2 ? 3 : 1;
            cp.decode = c == 0 ? DSACP_DECODE_EXACT_TOPK : c == 3 ? DSACP_DECODE_ALLGATHER_KV : DSACP_DECODE_LEAN;
            cp.lean_factor = c == 2 ? 1.0 : 2.0;
            cp.context_path = c == 1 ? DSACP_CONTEXT_DISTRIBUTED : DSACP_CONTEXT_GATHER;
            char what[96];
            snprintf(what, sizeof what, "index partial:%lld, %s, I=%lld", (long long)G, dsacp_decode_strategy_name(cp.decode),
                     (long long)cp.interleave);
            run_long(m, &eo, &cp, what, 1e-5, 1e-10);
        }
        /* counters of a decode step, exact-topk and lean */
        for (int c = 0; c < 2; c++) {
            dsacp_cp_options cp;
            dsacp_cp_options_default(&cp);
            cp.index_layout = DSACP_LAYOUT_PARTIAL;
            cp.index_group = G;
            cp.decode = c ? DSACP_DECODE_LEAN : DSACP_DECODE_EXACT_TOPK;
            cp.lean_factor = 1.0;
            dsacp_engine *e = NULL;
            REQUIRE_OK(dsacp_engine_create_cp(m, &eo, &cp, g_world, &e));
            int64_t id[2];
            for (int r = 0; r < 2; r++) REQUIRE_OK(dsacp_engine_add_request(e, &id[r]));
            dsacp_step_entry en[2] = {{id[0], 70, g_ids[0]}, {id[1], 20, g_ids[1]}};
            CHECK_OK(dsacp_engine_step(e, en, 2, NULL, NULL));
            dsacp_comm *ec = dsacp_engine_comm(e);
            dsacp_comm_reset_counters(ec);
            dsacp_engine_cp_stats_reset(e);
            en[0] = (dsacp_step_entry){id[0], 1, g_ids[0] + 70};
            en[1] = (dsacp_step_entry){id[1], 1, g_ids[1] + 20};
            CHECK_OK(dsacp_engine_step(e, en, 2, NULL, NULL));
            dsacp_cp_stats lst;
            dsacp_engine_cp_stats(e, &lst);
            const int64_t old[2] = {70, 20};
            expect ex[DSACP_PHASE_COUNT];
            const int64_t mla_b = dsacp_mla_cache_bytes_per_token(cfg, eo.kv_dtype);
            const int64_t idx_b = dsacp_index_cache_bytes_per_token(cfg, DSACP_KV_F32);
            expected_decode(cfg, &cp, g_W, g_rank, 2, old, 2, mla_b, idx_b, false, &lst, false, ex);
            char name[48];
            snprintf(name, sizeof name, "%s partial:%lld", dsacp_decode_strategy_name(cp.decode), (long long)G);
            check_counters(ec, ex, "exact", name, "decode step");
            {
                const int64_t req[2] = {0, 1};
                const dsacp_plan_step ps = plan_decode(cfg, &eo, 2, old, req, 2, old, false, &lst);
                check_plan(ec, cfg, &cp, &ps, name, "decode step");
            }
            dsacp_kv_usage u;
            dsacp_engine_kv_usage(e, &u);
            {
                /* the planner's KV bytes: what the engine reports */
                const int64_t len[2] = {71, 21};
                int64_t pl, pi;
                dsacp_plan_kv_bytes(cfg, &cp, g_W, g_rank, len, 2, eo.block_size, dsacp_mla_cache_bytes_per_token(cfg, eo.kv_dtype),
                                    idx_b, &pl, &pi);
                CHECKF(pl == u.latent_used_bytes && pi == u.index_used_bytes, "plan kv %s W=%d rank %d: latent %lld/%lld, "
                       "index %lld/%lld (planned/engine)", name, g_W, g_rank, (long long)pl, (long long)u.latent_used_bytes,
                       (long long)pi, (long long)u.index_used_bytes);
            }
            /* 71 and 21 positions: the group's share, in blocks of 16 */
            const int64_t held = dsacp_cp_local_len(71, g_rank / G, G, g_W / G);
            const int64_t held2 = dsacp_cp_local_len(21, g_rank / G, G, g_W / G);
            const int64_t want = ((held + 15) / 16 + (held2 + 15) / 16) * 16 * idx_b * cfg->num_hidden_layers;
            CHECKF(g_W == 1 || u.index_used_bytes == want, "partial:%lld W=%d rank %d: index bytes %lld, want %lld",
                   (long long)G, g_W, g_rank, (long long)u.index_used_bytes, (long long)want);
            dsacp_engine_free(e);
        }
    }
}


/* Prefill bytes of every split: the new tokens' entries travel from the rank that computes them
 * (counted per rank), the context as before. A chunk after context and a new request. */
static void test_counters_splits(const dsacp_model *m, const dsacp_engine_options *eo)
{
    const dsacp_config *cfg = dsacp_model_config(m);
    const int64_t E = dsacp_mla_cache_bytes_per_token(cfg, eo->kv_dtype) + dsacp_index_cache_bytes_per_token(cfg, DSACP_KV_F32);
    for (int c = 0; c < 3; c++) {
        dsacp_cp_options cp;
        dsacp_cp_options_default(&cp);
        cp.prefill_split = c == 0 ? DSACP_PREFILL_OWNER : c == 1 ? DSACP_PREFILL_CONTIGUOUS : DSACP_PREFILL_ZIGZAG;
        cp.interleave = 3;
        dsacp_engine *e = NULL;
        REQUIRE_OK(dsacp_engine_create_cp(m, eo, &cp, g_world, &e));
        int64_t id[2];
        for (int r = 0; r < 2; r++) REQUIRE_OK(dsacp_engine_add_request(e, &id[r]));
        dsacp_step_entry en = {id[0], 41, g_ids[0]};
        CHECK_OK(dsacp_engine_step(e, &en, 1, NULL, NULL));
        dsacp_comm *ec = dsacp_engine_comm(e);
        dsacp_comm_reset_counters(ec);
        dsacp_step_entry pe[2] = {{id[0], 13, g_ids[0] + 41}, {id[1], 22, g_ids[1]}};
        float *lg = malloc((size_t)(35 * cfg->vocab_size) * 4);
        CHECK_OK(dsacp_engine_step(e, pe, 2, lg, NULL));
        free(lg);
        const int64_t o2[2] = {41, 0}, n2[2] = {13, 22};
        expect ex[DSACP_PHASE_COUNT];
        expected_prefill_split(cfg, cp.prefill_split, cp.interleave, g_W, g_rank, o2, n2, 2, E, ex);
        check_counters(ec, ex, "exact", dsacp_prefill_split_name(cp.prefill_split), "prefill step");
        dsacp_plan_step ps = plan_decode(cfg, eo, 0, NULL, NULL, 0, NULL, false, NULL);
        ps.npre = 2, ps.pre_old = o2, ps.pre_new = n2;
        check_plan(ec, cfg, &cp, &ps, dsacp_prefill_split_name(cp.prefill_split), "prefill step");
        dsacp_engine_free(e);
    }
}


/* The planner's weight bytes per DSA-CP plan against the engine's, FP8 weights with block scales
 * (the tp shards split FP8 blocks at this size: f32 shards). */
static void test_plan_weights_fp8(const dsacp_model *m, const dsacp_engine_options *eo)
{
    const dsacp_config *cfg = dsacp_model_config(m);
    const dsacp_weight_plan plans[4][2] = {{DSACP_WEIGHTS_LAYER_SHARD, DSACP_WEIGHTS_TP},
                                           {DSACP_WEIGHTS_REPLICATED, DSACP_WEIGHTS_LAYER_SHARD},
                                           {DSACP_WEIGHTS_LAYER_SHARD, DSACP_WEIGHTS_REPLICATED},
                                           {DSACP_WEIGHTS_REPLICATED, DSACP_WEIGHTS_AUTO}};
    for (int c = 0; c < 4; c++) {
        dsacp_cp_options cp;
        dsacp_cp_options_default(&cp);
        cp.mode = DSACP_CP_DSA_CP, cp.prefill_split = DSACP_PREFILL_CONTIGUOUS, cp.decode = DSACP_DECODE_ALLGATHER_KV;
        cp.kv_layout = cp.index_layout = DSACP_LAYOUT_REPLICATED;
        cp.q_proj = plans[c][0], cp.o_proj = plans[c][1];
        dsacp_engine *e = NULL;
        REQUIRE_OK(dsacp_engine_create_cp(m, eo, &cp, g_world, &e));
        dsacp_weight_usage u, pu;
        dsacp_engine_weight_usage(e, &u);
        dsacp_plan_weight_usage(cfg, &cp, g_W, g_rank, DSACP_F8_E4M3, cfg->weight_block_rows, &pu);
        CHECKF(pu.q_proj_resident == u.q_proj_resident && pu.o_proj_resident == u.o_proj_resident &&
               pu.ring_bytes == u.ring_bytes && pu.gather_bytes == u.gather_bytes,
               "plan fp8 weights q=%s o=%s W=%d rank %d: planned %lld %lld %lld %lld, engine %lld %lld %lld %lld",
               dsacp_weight_plan_name(cp.q_proj), dsacp_weight_plan_name(cp.o_proj), g_W, g_rank,
               (long long)pu.q_proj_resident, (long long)pu.o_proj_resident, (long long)pu.ring_bytes,
               (long long)pu.gather_bytes, (long long)u.q_proj_resident, (long long)u.o_proj_resident,
               (long long)u.ring_bytes, (long long)u.gather_bytes);
        dsacp_engine_free(e);
    }
}

/* ---- conflicting options fail cleanly on every rank ---- */

/* A failure on one rank fails the step on every rank, with that rank's message, and changes
 * nothing: here the last rank's pool is too small for a step the others could take. */
static void test_one_rank_fails(const dsacp_model *m)
{
    if (g_W == 1) return;
    dsacp_engine_options eo;
    dsacp_engine_options_default(&eo);
    eo.block_size = 16;
    eo.num_blocks = g_rank == g_W - 1 ? 1 : 64;
    dsacp_engine *e = NULL;
    REQUIRE_OK(dsacp_engine_create_cp(m, &eo, NULL, g_world, &e));
    int64_t id;
    REQUIRE_OK(dsacp_engine_add_request(e, &id));
    dsacp_step_entry en = {id, 70, g_ids[0]}; /* 70 tokens: more than one block on every rank */
    int rc = dsacp_engine_step(e, &en, 1, NULL, NULL);
    char want[32];
    snprintf(want, sizeof want, "rank %d:", g_W - 1);
    CHECKF(rc == DSACP_ECAPACITY, "W=%d rank %d: step status %s", g_W, g_rank, dsacp_status_name(rc));
    if (g_rank != g_W - 1)
        CHECKF(strstr(dsacp_last_error(), want) != NULL, "rank %d: message '%s' does not name the failing rank",
               g_rank, dsacp_last_error());
    CHECK(dsacp_engine_request_length(e, id) == 0); /* nothing changed */
    /* The group goes on: a step every rank can take succeeds. */
    dsacp_step_entry small = {id, 8, g_ids[0]};
    CHECK_OK(dsacp_engine_step(e, &small, 1, NULL, NULL));
    dsacp_engine_free(e);
}

/* allgather-blocks: a decode step of every request counted alone equals its formula (whole
 * blocks and their table entries of [0, new_len)), and moves more than allgather-kv's entries of
 * [0, old_len) (the seed's padding, tables and new tokens). */
static void test_counters_blocks(const dsacp_model *m, const dsacp_engine_options *eo, const char *label)
{
    const dsacp_config *cfg = dsacp_model_config(m);
    int64_t kv_recv[2] = {0, 0};
    for (int c = 0; c < 2; c++) {
        dsacp_cp_options cp;
        dsacp_cp_options_default(&cp);
        REQUIRE_OK(dsacp_decode_strategy_parse(c ? "allgather-blocks" : "allgather-kv", &cp.decode));
        cp.interleave = eo->block_size;
        dsacp_engine *e = NULL;
        REQUIRE_OK(dsacp_engine_create_cp(m, eo, &cp, g_world, &e));
        step_out got[NSTEP] = {0};
        CHECK_OK(run_sched(e, cfg, got));
        free_out(got);
        int64_t old[NREQ], used[NREQ] = {0};
        for (int st = 0; st < NSTEP; st++)
            for (int r = 0; r < NREQ; r++) used[r] += sched[st][r];
        dsacp_step_entry en[NREQ];
        for (int r = 0; r < NREQ; r++) {
            old[r] = dsacp_engine_request_length(e, r);
            en[r] = (dsacp_step_entry){r, 1, g_ids[r] + used[r]};
        }
        dsacp_comm *ec = dsacp_engine_comm(e);
        dsacp_comm_reset_counters(ec);
        dsacp_engine_cp_stats_reset(e);
        CHECK_OK(dsacp_engine_step(e, en, NREQ, NULL, NULL));
        dsacp_cp_stats lst;
        dsacp_engine_cp_stats(e, &lst);
        const int64_t mla_b = dsacp_mla_cache_bytes_per_token(cfg, eo->kv_dtype);
        const int64_t idx_b = dsacp_index_cache_bytes_per_token(cfg, eo->numerics == DSACP_NUMERICS_DEPLOYED ? DSACP_KV_FP8 : DSACP_KV_F32);
        bool gv = false, f32 = false;
        const dsacp_weight *o = dsacp_model_weight(m, "model.layers.0.self_attn.o_proj.weight");
        if (o) dsacp_cp_o_paths(cfg, &cp, g_W, o->dtype, o->block, &gv, &f32);
        expect ex[DSACP_PHASE_COUNT];
        expected_decode(cfg, &cp, g_W, g_rank, NREQ, old, NREQ, mla_b, idx_b, gv, &lst, false, ex);
        check_counters(ec, ex, label, dsacp_decode_strategy_name(cp.decode), "decode step");
        int64_t req[NREQ];
        for (int r = 0; r < NREQ; r++) req[r] = r;
        const dsacp_plan_step ps = plan_decode(cfg, eo, NREQ, old, req, NREQ, old, gv, &lst);
        check_plan(ec, cfg, &cp, &ps, dsacp_decode_strategy_name(cp.decode), "decode step");
        kv_recv[c] = dsacp_comm_get_counter(ec, DSACP_PHASE_kv_gather).bytes_recv;
        dsacp_engine_free(e);
    }
    CHECKF(g_W == 1 ? kv_recv[1] == 0 : kv_recv[1] > kv_recv[0], "%s W=%d rank %d: allgather-blocks received %lld bytes, "
           "allgather-kv %lld", label, g_W, g_rank, (long long)kv_recv[1], (long long)kv_recv[0]);
    if (g_rank == 0)
        printf("%s counters allgather-blocks W=%d: decode step of %d tokens, rank 0 kv_gather recv %lld bytes "
               "(allgather-kv %lld; formulas matched)\n", label, g_W, NREQ, (long long)kv_recv[1], (long long)kv_recv[0]);
}

static void test_bad_options(const dsacp_model *m)
{
    dsacp_cp_options cp;
    dsacp_cp_options_default(&cp);
    dsacp_engine *e = NULL;
    cp.interleave = 0;
    CHECK(dsacp_engine_create_cp(m, NULL, &cp, g_world, &e) == DSACP_EINVAL && !e);
    dsacp_cp_options_default(&cp);
    cp.decode = DSACP_DECODE_REPLICATED_INDEX; /* needs a replicated index cache when W > 1 */
    int rc = dsacp_engine_create_cp(m, NULL, &cp, g_world, &e);
    CHECK(g_W == 1 ? rc == DSACP_OK : rc == DSACP_EINVAL);
    dsacp_engine_free(e);
    e = NULL;
    dsacp_cp_options_default(&cp); /* allgather-blocks: the interleave must be the block size */
    REQUIRE_OK(dsacp_decode_strategy_parse("allgather-blocks", &cp.decode));
    CHECK(dsacp_engine_create_cp(m, NULL, &cp, g_world, &e) == DSACP_EINVAL && !e &&
          strstr(dsacp_last_error(), "--cp-interleave equal to --block-size"));
}

int main(int argc, char **argv)
{
    REQUIRE_OK(dsacp_comm_create_world(&argc, &argv, &g_world));
    g_rank = dsacp_comm_rank(g_world);
    g_W = dsacp_comm_size(g_world);
    char *dir = NULL;

    /* exact numerics, f32 weights: o_proj column shards + all-reduce. */
    dsacp_model *m = shared_model(&dir, "tiny", DSACP_WEIGHTS_F32, false);
    make_ids(dsacp_model_config(m)->vocab_size);
    dsacp_engine_options eo;
    dsacp_engine_options_default(&eo);
    eo.block_size = 16;
    eo.num_blocks = 64;
    run_cases("exact", m, &eo, all_cases, NCASES, 1e-5, 1e-10);
    run_cases("exact", m, &eo, dsa_cases, NDSA, 1e-5, 1e-10);
    run_cases("exact", m, &eo, lean_cases, NLEAN, 1e-5, 1e-10);
    for (int c = 0; c < NBLOCKS; c++) REQUIRE_OK(dsacp_decode_strategy_parse("allgather-blocks", &blocks_cases[c].dec));
    run_cases("exact", m, &eo, blocks_cases, NBLOCKS, 1e-5, 1e-10);
    test_counters(m, &eo, "exact");
    test_counters_blocks(m, &eo, "exact");
    test_counters_dsa(m, &eo);
    test_lean_decide();
    test_lean_long(m);
    test_lean_deployed();
    test_context_paths(m);
    test_context_paths_more(m);
    test_context_hardware(m);
    test_counters_distributed(m, &eo);
    test_counters_splits(m, &eo);
    test_a2a(m);
    test_partial(m);
    test_memory(m);
    test_layer_shard_resident();
    test_bad_options(m);
    test_one_rank_fails(m);
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
    test_counters(m, &eo, "deployed");
    test_counters_blocks(m, &eo, "deployed");
    test_plan_weights_fp8(m, &eo);
    drop_model(m, dir);

    /* every index score ties at 0: the lowest positions win, most ranks own none of them. */
    m = shared_model(&dir, "tiny", DSACP_WEIGHTS_F32, true);
    eo.numerics = DSACP_NUMERICS_EXACT;
    eo.kv_dtype = DSACP_KV_F32;
    run_cases("ties", m, &eo, all_cases, NCASES, 1e-5, 1e-10);
    run_cases("ties", m, &eo, lean_cases, NLEAN, 1e-5, 1e-10);
    run_cases("ties", m, &eo, blocks_cases, NBLOCKS, 1e-5, 1e-10);
    test_lean_ties(m);
    drop_model(m, dir);

    for (int r = 0; r < NREQ; r++) free(g_ids[r]);
    int failed = test_failures_;
    int rc = dsacp_comm_agree(g_world, failed ? DSACP_EINVAL : DSACP_OK);
    dsacp_comm_free(g_world);
    if (rc && !failed) {
        fprintf(stderr, "FAIL test_cp: another rank failed\n");
        return 1;
    }
    return test_finish("test_cp");
}
