/*
 * test_cp_plan_spec.c -- the planner's prediction of speculative decoding's steps against the
 * communicator's counters, exactly (issue 23; docs/context-parallel.md "Speculative decoding",
 * docs/planning.md): verify entries (DSACP_ENTRY_VERIFY, k + 1 decode rows each with its own
 * context, n_logits rows of logits), MTP catch-up steps (the target step's entries and
 * placement, one layer: num_hidden_layers) and MTP chain steps (one row per request at the
 * holder's placement), mixed with prefill chunks, after truncations of rejected positions, under
 * every decode strategy, DCP and DSA-CP (with layer-shard and tp weight plans, whose broadcasts of
 * the MTP layer come from rank L mod W). A small driver of its own: values do not matter to the
 * counters (lean's fallbacks are measured), so the drafts are random and the accepted counts
 * fixed by the round.
 */
#include "test_cp_util.h"

enum { K = 2, NR = 3, ROUNDS = 5, B = 4 };

/* Request r's prompt (C's in chunks of 8 from round 1, beside the others' verify entries). */
static const int64_t prompt[NR] = {20, 13, 24};

typedef struct drv {
    dsacp_engine *e;
    const dsacp_config *cfg;
    bool mtp;
    int64_t id[NR], len[NR];
    int32_t ids[64];
    float *logits; /* rank 0 */
} drv;

/* One step of entries en[0..n) with options o: the target step (dsacp_engine_step_opts) or an MTP
 * step. */
static void step(drv *d, const dsacp_step_entry *en, const dsacp_entry_opts *o, int64_t n, bool mtp)
{
    float *lg = g_rank == 0 ? d->logits : NULL;
    if (mtp) REQUIRE_OK(dsacp_engine_mtp_step(d->e, en, o, n, lg, NULL));
    else REQUIRE_OK(dsacp_engine_step_opts(d->e, en, o, n, lg, NULL));
}

/* A round: the target step (prompt chunks, verify entries of k + 1 rows), the truncation of the
 * rejected drafts (a = (round + r) mod (K + 1) accepted), and with the MTP layer its catch-up
 * (the same entries, n_logits k + 1 - a), the MTP truncation and K - 1 chain steps. */
static void round_run(drv *d, int round)
{
    dsacp_step_entry en[NR];
    dsacp_entry_opts o[NR], oc[NR];
    int64_t n = 0, acc[NR];
    for (int r = 0; r < NR; r++) {
        const int64_t L = d->len[r];
        const bool start = r < 2 || round >= 1;
        if (!start || (r == 2 && round > 3)) continue; /* C: chunks in rounds 1-3, verify in round 4 */
        if (L < prompt[r]) {
            const int64_t c = r == 2 ? 8 : prompt[r];
            en[n] = (dsacp_step_entry){d->id[r], c, d->ids};
            o[n] = oc[n] = (dsacp_entry_opts){1, 0};
            acc[n] = c - 1;
        } else {
            en[n] = (dsacp_step_entry){d->id[r], K + 1, d->ids + round};
            o[n] = (dsacp_entry_opts){K + 1, DSACP_ENTRY_VERIFY};
            acc[n] = (round + r) % (K + 1);
            oc[n] = (dsacp_entry_opts){K + 1 - acc[n], DSACP_ENTRY_VERIFY};
        }
        n++;
    }
    step(d, en, o, n, false);
    for (int64_t i = 0; i < n; i++) {
        int r = 0;
        while (d->id[r] != en[i].request_id) r++;
        const int64_t before = d->len[r];
        d->len[r] = before + acc[i] + 1; /* a prefill entry keeps every position */
        REQUIRE_OK(dsacp_engine_truncate_request(d->e, d->id[r], d->len[r], before));
    }
    if (!d->mtp) return;
    /* Catch-up: the MTP lengths were the target's before the step (truncated above to them). */
    step(d, en, oc, n, true);
    int64_t nd = 0;
    dsacp_step_entry ch[NR];
    for (int64_t i = 0; i < n; i++) {
        int r = 0;
        while (d->id[r] != en[i].request_id) r++;
        REQUIRE_OK(dsacp_engine_truncate_request(d->e, d->id[r], d->len[r], d->len[r]));
        if (d->len[r] >= prompt[r]) ch[nd++] = (dsacp_step_entry){d->id[r], 1, d->ids + 7};
    }
    for (int j = 0; j + 1 < K && nd > 0; j++) step(d, ch, NULL, nd, true);
    for (int r = 0; r < NR; r++) REQUIRE_OK(dsacp_engine_truncate_request(d->e, d->id[r], d->len[r], d->len[r]));
}

static void check_predicted(dsacp_engine *e, const char *what)
{
    dsacp_comm_counter planned[DSACP_PHASE_COUNT], measured[DSACP_PHASE_COUNT];
    CHECKF(dsacp_engine_plan_comm(e, planned, measured) == DSACP_OK, "%s: a step was not predicted", what);
    int64_t calls = 0, recv = 0;
    for (int p = 0; p < DSACP_PHASE_COUNT; p++) calls += measured[p].calls, recv += measured[p].bytes_recv;
    if (g_rank == 0) printf("%-32s rank 0: %lld calls, %lld bytes received, as predicted\n", what, (long long)calls, (long long)recv);
    for (int p = 0; p < DSACP_PHASE_COUNT; p++)
        CHECKF(planned[p].calls == measured[p].calls && planned[p].bytes_sent == measured[p].bytes_sent &&
                   planned[p].bytes_recv == measured[p].bytes_recv,
               "%s, rank %d, phase %s: planned %lld calls %lld sent %lld recv, measured %lld %lld %lld", what, g_rank,
               dsacp_comm_phase_name(p), (long long)planned[p].calls, (long long)planned[p].bytes_sent,
               (long long)planned[p].bytes_recv, (long long)measured[p].calls, (long long)measured[p].bytes_sent,
               (long long)measured[p].bytes_recv);
}

static void run_case(const dsacp_model *m, const dsacp_cp_options *cp, bool mtp, const char *what)
{
    const dsacp_config *cfg = dsacp_model_config(m);
    dsacp_engine_options eo;
    dsacp_engine_options_default(&eo);
    eo.block_size = B;
    eo.num_blocks = 256;
    eo.mtp = mtp;
    drv d = {.cfg = cfg, .mtp = mtp};
    REQUIRE_OK(dsacp_engine_create_cp(m, &eo, cp, g_world, &d.e));
    tu_random_ids(d.ids, 64, cfg->vocab_size, 5);
    d.logits = malloc((size_t)(64 * cfg->vocab_size) * sizeof(float));
    for (int r = 0; r < NR; r++) REQUIRE_OK(dsacp_engine_add_request(d.e, &d.id[r]));
    for (int round = 0; round < ROUNDS; round++) round_run(&d, round);
    char label[160];
    snprintf(label, sizeof label, "%s%s", what, mtp ? " + MTP" : "");
    check_predicted(d.e, label);
    free(d.logits);
    dsacp_engine_free(d.e);
}

static void cases(const dsacp_model *m, bool mtp)
{
    for (int s = 0; s < dsacp_cp_strategy_count(); s++)
        for (int64_t I = 1; I <= 3; I += 2) {
            dsacp_cp_options cp;
            dsacp_cp_options_default(&cp);
            cp.decode = (dsacp_decode_strategy)s, cp.interleave = I;
            cp.kv_layout = DSACP_LAYOUT_SHARDED;
            cp.index_layout = dsacp_cp_strategy_at(s)->replicated_index ? DSACP_LAYOUT_REPLICATED : DSACP_LAYOUT_SHARDED;
            if (dsacp_cp_options_check(dsacp_model_config(m), &cp, g_W, B) != DSACP_OK) continue;
            char what[96];
            snprintf(what, sizeof what, "DCP %s I %lld", dsacp_cp_strategy_at(s)->name, (long long)I);
            run_case(m, &cp, mtp, what);
        }
    /* DSA-CP alone (replicated caches: every row split like prefill tokens, chain rows on their
     * holder's rank) with layer-shard q_b_proj and tp o_proj; DSA-CP + DCP with layer-shard o_proj. */
    for (int c = 0; c < 2 && g_W > 1; c++) {
        dsacp_cp_options cp;
        dsacp_cp_options_default(&cp);
        cp.mode = DSACP_CP_DSA_CP;
        cp.kv_layout = cp.index_layout = c == 0 ? DSACP_LAYOUT_REPLICATED : DSACP_LAYOUT_SHARDED;
        cp.q_proj = DSACP_WEIGHTS_LAYER_SHARD;
        cp.o_proj = c == 0 ? DSACP_WEIGHTS_TP : DSACP_WEIGHTS_LAYER_SHARD;
        cp.prefetch = 2;
        if (dsacp_cp_options_check(dsacp_model_config(m), &cp, g_W, B) != DSACP_OK) continue;
        run_case(m, &cp, mtp, c == 0 ? "DSA-CP" : "DSA-CP + DCP");
    }
}

int main(int argc, char **argv)
{
    cp_test_begin(&argc, &argv);
    dsacp_config cfg;
    REQUIRE_OK(dsacp_preset_config("tiny", &cfg));
    cfg.num_nextn_predict_layers = 1;
    char *dir = NULL;
    dsacp_model *m = shared_model_cfg(&dir, &cfg, 7, DSACP_WEIGHTS_F32);
    REQUIRE_OK(dsacp_model_has_mtp(m) ? DSACP_OK : DSACP_EINVAL);
    cases(m, false); /* verify entries alone (the n-gram drafter's steps) */
    cases(m, true);
    drop_model(m, dir);
    return cp_test_end("test_cp_plan_spec");
}
