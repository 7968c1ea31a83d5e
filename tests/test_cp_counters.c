/*
 * test_cp_counters.c -- the communication counters of the CP engine against the byte and call
 * formulas of docs/context-parallel.md (the strategies' own, src/cp/cp_formula.c) and against
 * the planner, exactly: decode steps of every strategy and merge backend, DSA-CP's weight plans,
 * the distributed context path, every prefill split, partial:G, and the planner's weight bytes.
 */
#include "test_cp_util.h"

/* After the schedule: one more decode token of every request (en) and the positions each has
 * cached (old). */
static void next_decode_step(const dsacp_engine *e, int64_t old[NREQ], dsacp_step_entry en[NREQ])
{
    int64_t used[NREQ] = {0};
    for (int s = 0; s < NSTEP; s++)
        for (int r = 0; r < NREQ; r++) used[r] += sched[s][r];
    for (int r = 0; r < NREQ; r++) {
        old[r] = dsacp_engine_request_length(e, r);
        en[r] = (dsacp_step_entry){r, 1, g_ids[r] + used[r]};
    }
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
        int64_t old[NREQ];
        dsacp_step_entry en[NREQ];
        next_decode_step(e, old, en);
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
        int64_t old[NREQ];
        dsacp_step_entry en[NREQ];
        next_decode_step(e, old, en);
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

int main(int argc, char **argv)
{
    cp_test_begin(&argc, &argv);
    char *dir = NULL;
    dsacp_engine_options eo;
    dsacp_model *m = cp_test_tiny(&dir, &eo);
    test_counters(m, &eo, "exact");
    test_counters_blocks(m, &eo, "exact");
    test_counters_dsa(m, &eo);
    test_counters_distributed(m, &eo);
    test_counters_splits(m, &eo);
    test_a2a(m);
    test_partial(m);
    drop_model(m, dir);

    /* deployed numerics, fp8 weights and fp8 caches: o_proj columns split FP8 blocks at this
     * size, so the heads' outputs travel (o_gather_v). */
    m = shared_model(&dir, "tiny-moe", DSACP_WEIGHTS_FP8, false);
    eo.numerics = DSACP_NUMERICS_DEPLOYED;
    eo.kv_dtype = DSACP_KV_FP8;
    test_counters(m, &eo, "deployed");
    test_counters_blocks(m, &eo, "deployed");
    test_plan_weights_fp8(m, &eo);
    drop_model(m, dir);
    return cp_test_end("test_cp_counters");
}
