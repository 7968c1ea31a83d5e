/*
 * test_plan_spec.c -- the planner's speculative decoding (issue 23, docs/planning.md
 * "Speculative decoding"): a verify step's communication priced per row (dsacp_plan_layer_rows)
 * is what the entries' path predicts for verify entries (the path test_cp_plan_spec checks against
 * the counters), an MTP step's weight broadcasts come from the MTP layer's owner rank, and the
 * round's price follows E = (1 - A^(k+1)) / (1 - A) with no draft step for n-gram drafts.
 */
#include "test.h"
#include "dsacp_plan.h"
#include "plan/plan.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static void load_profile(const char *name, dsacp_hw *hw)
{
    const char *s = getenv("DSACP_SOURCE_DIR");
    char p[4200];
    snprintf(p, sizeof p, "%s/hardware/%s.json", s ? s : ".", name);
    REQUIRE_OK(dsacp_hw_load(p, hw));
}

/* batch verify entries of `rows` rows after ctx positions, one layer: the busiest rank's bytes
 * received (control aside) by the entries' path, against dsacp_plan_layer_rows. */
static void test_verify_rows(const dsacp_config *cfg, const dsacp_hw *hw)
{
    dsacp_config one = *cfg;
    one.num_hidden_layers = 1;
    const int64_t lat = dsacp_mla_cache_bytes_per_token(&one, DSACP_KV_FP8), idx = dsacp_index_cache_bytes_per_token(&one, DSACP_KV_FP8);
    for (int s = 0; s < dsacp_decode_strategy_count(); s++)
        for (int64_t W = 2; W <= 8; W *= 2)
            for (int64_t rows = 1; rows <= 4; rows += 3) {
                dsacp_cp_options cp;
                dsacp_cp_options_default(&cp);
                cp.decode = (dsacp_decode_strategy)s;
                if (dsacp_decode_strategy_check(&cp, (int)W, 64)) cp.interleave = 64;
                if (dsacp_decode_strategy_check(&cp, (int)W, 64)) continue;
                dsacp_plan_decode d;
                CHECK_OK(dsacp_plan_layer_rows(cfg, &cp, W, 5000, 3, rows, true, hw, &d));
                dsacp_plan_entry ent[3];
                dsacp_plan_entry_spec sp[3];
                for (int i = 0; i < 3; i++)
                    ent[i] = (dsacp_plan_entry){5000, rows}, sp[i] = (dsacp_plan_entry_spec){DSACP_ENTRY_VERIFY, rows, 0, 0};
                double best = -1;
                for (int64_t r = 0; r < W; r++) {
                    const dsacp_plan_step b = {.W = W, .rank = r, .latent_bytes = lat, .index_bytes = idx, .hidden_bytes = one.hidden_size * 4,
                                               .want_logits = true, .deployed = true, .entry_spec = sp};
                    dsacp_comm_counter c[DSACP_PHASE_COUNT];
                    CHECK_OK(dsacp_plan_entries_comm(&one, &cp, &b, ent, 3, c));
                    double recv = 0;
                    for (int p = 0; p < DSACP_PHASE_COUNT; p++)
                        if (p != DSACP_PHASE_control) recv += (double)c[p].bytes_recv;
                    if (recv > best) best = recv;
                }
                CHECKF(best == d.recv_bytes, "%s W %lld rows %lld: entries %.0f, layer_rows %.0f", dsacp_decode_strategy_name(cp.decode),
                       (long long)W, (long long)rows, best, d.recv_bytes);
                CHECK(d.recv_bytes > 0);
            }
}

/* An MTP step of DSA-CP's layer-shard plans: one broadcast of layer L's weights, from rank L mod W. */
static void test_mtp_weights(const dsacp_config *cfg)
{
    const int64_t W = 4, L = cfg->num_hidden_layers, q[64] = {[61] = 1000}, o[64] = {[61] = 3000};
    CHECK(L == 61);
    if (L != 61) return;
    dsacp_cp_options cp;
    dsacp_cp_options_default(&cp);
    cp.mode = DSACP_CP_DSA_CP, cp.kv_layout = cp.index_layout = DSACP_LAYOUT_REPLICATED;
    cp.q_proj = cp.o_proj = DSACP_WEIGHTS_LAYER_SHARD;
    const dsacp_plan_entry ent = {100, 1};
    const dsacp_plan_entry_spec sp = {0, 1, DSACP_PLAN_PATH_RANK, 2};
    for (int64_t r = 0; r < W; r++) {
        const dsacp_plan_step b = {.W = W, .rank = r, .latent_bytes = 656, .index_bytes = 132, .hidden_bytes = cfg->hidden_size * 4,
                                   .q_bytes = q, .o_bytes = o, .layer0 = L, .layers = 1, .entry_spec = &sp};
        dsacp_comm_counter c[DSACP_PHASE_COUNT];
        CHECK_OK(dsacp_plan_entries_comm(cfg, &cp, &b, &ent, 1, c));
        const bool root = r == L % W;
        CHECK(c[DSACP_PHASE_q_proj_weight].calls == 1 && c[DSACP_PHASE_o_proj_weight].calls == 1);
        CHECK(c[DSACP_PHASE_q_proj_weight].bytes_sent == (root ? 1000 * (W - 1) : 0));
        CHECK(c[DSACP_PHASE_o_proj_weight].bytes_recv == (root ? 0 : 3000));
        /* the chain row on rank 2: its packed entry from rank 2 to the others, one layer */
        CHECK(c[DSACP_PHASE_prefill_kv].calls == 1 && (c[DSACP_PHASE_prefill_kv].bytes_recv > 0) == (r != 2));
    }
    dsacp_plan_entry_spec bad = {0, 1, DSACP_PLAN_PATH_RANK, 4};
    const dsacp_plan_step b = {.W = W, .latent_bytes = 656, .index_bytes = 132, .q_bytes = q, .o_bytes = o, .entry_spec = &bad};
    dsacp_comm_counter c[DSACP_PHASE_COUNT];
    CHECK(dsacp_plan_entries_comm(cfg, &cp, &b, &ent, 1, c) == DSACP_EINVAL);
}

static void test_price(const dsacp_config *cfg, const dsacp_hw *hw)
{
    dsacp_cp_options cp;
    dsacp_cp_options_default(&cp);
    dsacp_plan_model plain;
    CHECK_OK(dsacp_plan_decode_model(cfg, &cp, 8, 8, 32768, 4, true, 0, hw, &plain));
    const double A[4] = {0, 0.5, 0.7, 1};
    for (int64_t k = 1; k <= 3; k++)
        for (int a = 0; a < 4; a++)
            for (int mtp = 0; mtp < 2; mtp++) {
                const dsacp_plan_spec s = {k, A[a], mtp};
                dsacp_plan_spec_model m;
                CHECK_OK(dsacp_plan_spec_price(cfg, &cp, 8, 8, 32768, 4, true, 0, hw, &s, &m));
                double E = 0;
                for (int64_t j = 0; j <= k; j++) E += pow(A[a], (double)j);
                CHECK(fabs(m.tokens_per_step - E) < 1e-12 * E);
                CHECK(m.plain.tpot == plain.tpot && m.t_verify > plain.tpot);
                CHECK(mtp ? m.t_catchup > 0 && (k == 1 ? m.t_chain == 0 : m.t_chain > 0) : m.t_catchup == 0 && m.t_chain == 0);
                CHECK(fabs(m.tpot - (m.t_verify + m.t_catchup + m.t_chain) / E) <= 1e-12 * m.tpot);
            }
    const dsacp_plan_spec bad[3] = {{0, 0.5, true}, {17, 0.5, true}, {2, 1.5, true}};
    for (int i = 0; i < 3; i++) {
        dsacp_plan_spec_model m;
        CHECK(dsacp_plan_spec_price(cfg, &cp, 8, 8, 32768, 4, true, 0, hw, &bad[i], &m) == DSACP_EINVAL);
    }
}

int main(void)
{
    dsacp_config cfg;
    REQUIRE_OK(dsacp_plan_preset("v32", &cfg));
    dsacp_hw hw;
    load_profile("h200-nvlink8", &hw);
    test_verify_rows(&cfg, &hw);
    test_mtp_weights(&cfg);
    test_price(&cfg, &hw);
    return test_finish("test_plan_spec");
}
