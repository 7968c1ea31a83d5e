/*
 * test_cp_spec.c -- speculative greedy decoding under context parallelism (issue 23,
 * docs/speculative.md), run alone as W = 1 and under mpirun with W = 2, 3, 4 by CTest. Every
 * decode strategy of the table (src/cp/cp_strategy.c) at interleave 1, 3 and the block size, in
 * DCP and in DSA-CP (+ DCP, and alone over replicated caches), runs spec_util.h's driver: four
 * requests drafting k = 3, 3, 2, 1 tokens per round (the oracle's drafts, fully, partly and not
 * accepted), contexts crossing index_topk inside verify steps, a prompt prefilled in chunks in
 * the same steps as verify entries. Rank 0 compares against one process: the tokens are
 * identical; every verify row whose inputs were accepted has the one-by-one decode's selected
 * set in every layer and its logits within fp32 reassociation (1e-5); every step, rejected rows
 * included, matches the one-process speculative run's (same entries and drafts, identical sets,
 * logits within 1e-5); each rank's KV use after every truncation is the blocks its shard of the
 * requests' spans needs; the planner predicts every collective of the verify steps. The
 * local-length bug (ATOM: a draft row's causal window from the rank's local length, dropping up
 * to k - 1 recent positions under I = 1): the short request drafting k = 3 with every draft
 * accepted has each of its rows' sets equal to the one-process decode's, at every W. The MTP
 * layer (catch-up, chain steps, MTP lengths truncated back) under every strategy once and DSA-CP:
 * drafts, MTP selected sets and MTP logits as the one-process MTP run's; and with the oracle's
 * drafts, catch-ups after partial acceptance equal to the one-by-one catch-up row by row.
 */
#include "test_cp_util.h"
#include "spec_util.h"

enum { BS = 16, LOCAL = 1 /* the request of the local-length check */ };

static const spec_req reqs[] = {
    {29, 10, 0, 0, 3, "0213", 11}, /* crosses index_topk (32) in its first verify steps */
    {6, 9, 0, 0, 3, "0", 14},      /* short context, every draft accepted: the local-length check */
    {31, 9, 0, 0, 2, "102", 12},
    {20, 7, 7, 2, 1, "01", 13},    /* prompt chunks mixed with the others' verify entries */
};
enum { NR = sizeof reqs / sizeof reqs[0] };

typedef struct sp_case {
    char name[96];
    dsacp_cp_options cp;
    bool mtp; /* also run with the MTP layer's drafts (each strategy once in DCP, DSA-CP) */
} sp_case;

/* Every strategy x I in DCP; each strategy in DSA-CP + DCP; DSA-CP alone (replicated caches, the
 * verify rows split over the ranks like decode tokens). Combinations the option check refuses
 * (allgather-blocks needs I = block size) are left out. */
static int make_cases(const dsacp_config *cfg, sp_case *out)
{
    static const int64_t Is[3] = {1, 3, BS};
    int n = 0;
    for (int s = 0; s < dsacp_decode_strategy_count(); s++) {
        bool flagged = false;
        for (int v = 0; v < 4; v++) {
            dsacp_cp_options cp;
            dsacp_cp_options_default(&cp);
            cp.decode = (dsacp_decode_strategy)s;
            cp.index_layout = dsacp_decode_strategy_replicated_index(cp.decode) ? DSACP_LAYOUT_REPLICATED : DSACP_LAYOUT_SHARDED;
            cp.interleave = Is[v < 3 ? v : s % 3];
            if (v == 3) {
                cp.mode = DSACP_CP_DSA_CP, cp.prefill_split = DSACP_PREFILL_CONTIGUOUS;
                cp.q_proj = DSACP_WEIGHTS_LAYER_SHARD, cp.o_proj = s % 2 ? DSACP_WEIGHTS_AUTO : DSACP_WEIGHTS_TP;
            }
            if (dsacp_cp_options_check(cfg, &cp, g_W, BS) != DSACP_OK && v == 3) cp.interleave = BS; /* allgather-blocks */
            if (dsacp_cp_options_check(cfg, &cp, g_W, BS) != DSACP_OK) continue;
            snprintf(out[n].name, sizeof out[n].name, "%s %s I=%lld", v == 3 ? "dsa-cp+dcp" : "dcp",
                     dsacp_decode_strategy_name(cp.decode), (long long)cp.interleave);
            out[n].mtp = v == 3 || (!flagged && (v == s % 3 || v == 2));
            flagged |= out[n].mtp;
            out[n++].cp = cp;
        }
    }
    for (int v = 0; v < 2; v++) {
        dsacp_cp_options cp;
        dsacp_cp_options_default(&cp);
        cp.mode = DSACP_CP_DSA_CP, cp.decode = DSACP_DECODE_ALLGATHER_KV;
        cp.kv_layout = cp.index_layout = DSACP_LAYOUT_REPLICATED;
        cp.prefill_split = v ? DSACP_PREFILL_ZIGZAG : DSACP_PREFILL_CONTIGUOUS;
        cp.q_proj = v ? DSACP_WEIGHTS_REPLICATED : DSACP_WEIGHTS_LAYER_SHARD, cp.o_proj = v ? DSACP_WEIGHTS_AUTO : DSACP_WEIGHTS_TP;
        snprintf(out[n].name, sizeof out[n].name, "dsa-cp repl %s", dsacp_prefill_split_name(cp.prefill_split));
        out[n].mtp = true;
        out[n++].cp = cp;
    }
    return n;
}

static void run_init(spec_run *r, const char *what, dsacp_engine *e, const dsacp_model *m, const dsacp_engine_options *eo,
                     const dsacp_cp_options *cp, int W, spec_mode mode, spec_ref *ref)
{
    const dsacp_config *cfg = dsacp_model_config(m);
    *r = (spec_run){.what = what, .e = e, .cfg = cfg, .comm = W > 1 ? g_world : NULL, .rank = W > 1 ? g_rank : 0,
                    .mode = mode, .mtp = eo->mtp, .req = reqs, .nreq = NR, .ref = ref, .tol = 1e-5,
                    .block_size = eo->block_size, .I = cp ? cp->interleave : 1, .W = W,
                    .nlayers = cfg->num_hidden_layers + (eo->mtp ? 1 : 0),
                    .kv_layout = cp ? cp->kv_layout : DSACP_LAYOUT_SHARDED,
                    .index_layout = cp ? cp->index_layout : DSACP_LAYOUT_SHARDED, .kv_dtype = eo->kv_dtype};
}

/* Rank 0, one process: the one-by-one reference and the speculative run's log; then every rank
 * gets the reference's tokens. */
static void reference(const dsacp_model *m, const dsacp_engine_options *eo, spec_mode mode, spec_ref *ref, spec_log *log)
{
    spec_ref_alloc(ref, reqs, NR, dsacp_model_config(m), eo->mtp);
    if (g_rank == 0) {
        dsacp_engine *e = NULL;
        REQUIRE_OK(dsacp_engine_create(m, eo, &e));
        spec_run r;
        run_init(&r, "one process, one by one", e, m, eo, NULL, 1, SPEC_REF, ref);
        REQUIRE_OK(spec_drive(&r));
        run_init(&r, mode == SPEC_MTP ? "one process, MTP drafts" : "one process, oracle drafts", e, m, eo, NULL, 1, mode, ref);
        r.log = log;
        r.tol = 0;
        CHECK_OK(spec_drive(&r));
        dsacp_engine_free(e);
    }
    for (int i = 0; i < NR; i++) REQUIRE_OK(dsacp_comm_bcast(g_world, ref[i].seq, (size_t)ref[i].n * sizeof(int32_t), DSACP_PHASE_input));
}

/* One case on the group against the one-process runs (rank 0). */
static void run_case(const dsacp_model *m, const dsacp_engine_options *eo, const sp_case *c, spec_mode mode, spec_ref *ref,
                     const spec_log *want)
{
    char what[160];
    snprintf(what, sizeof what, "%s %s W=%d", mode == SPEC_MTP ? "MTP" : eo->mtp ? "verify+MTP" : "verify", c->name, g_W);
    dsacp_engine *e = NULL;
    CHECK_OK(dsacp_engine_create_cp(m, eo, &c->cp, g_world, &e));
    if (!e) return;
    spec_run r;
    run_init(&r, what, e, m, eo, &c->cp, g_W, mode, ref);
    r.comm = g_world, r.rank = g_rank;
    r.want = g_rank == 0 ? want : NULL;
    CHECK_OK(spec_drive(&r));
    dsacp_comm_counter pl[DSACP_PHASE_COUNT], me[DSACP_PHASE_COUNT];
    CHECK_OK(dsacp_engine_plan_comm(e, pl, me));
    for (int p = 0; p < DSACP_PHASE_COUNT; p++)
        CHECKF(pl[p].calls == me[p].calls && pl[p].bytes_sent == me[p].bytes_sent && pl[p].bytes_recv == me[p].bytes_recv,
               "%s rank %d phase %s: planned %lld calls %lld sent %lld recv, measured %lld %lld %lld", what, g_rank,
               dsacp_comm_phase_name(p), (long long)pl[p].calls, (long long)pl[p].bytes_sent, (long long)pl[p].bytes_recv,
               (long long)me[p].calls, (long long)me[p].bytes_sent, (long long)me[p].bytes_recv);
    if (c->cp.mode == DSACP_CP_DCP && mode == SPEC_ORACLE) {
        /* verify rows are decode rows on every rank (never a prompt chunk's split), the MTP
         * layer's catch-up rows too (where their hidden inputs are) */
        const int64_t L = dsacp_model_config(m)->num_hidden_layers + (eo->mtp ? 1 : 0);
        dsacp_cp_stats mine;
        dsacp_engine_cp_stats(e, &mine);
        const dsacp_cp_stats sum = stats_sum(e);
        CHECKF(mine.decode_tokens == r.st.rows_decode * L && sum.prefill_tokens == r.st.rows_prompt * L,
               "%s rank %d: %lld decode tokens attended (x layers), %lld prompt tokens over the group; %lld verify and "
               "decode rows, %lld prompt rows ran, x %lld layers", what, g_rank, (long long)mine.decode_tokens,
               (long long)sum.prefill_tokens, (long long)r.st.rows_decode, (long long)r.st.rows_prompt, (long long)L);
    }
    dsacp_engine_free(e);
    if (g_rank != 0) return;
    const spec_req *q = &reqs[LOCAL];
    if (mode == SPEC_ORACLE)
        CHECKF(r.st.rows_req[LOCAL] == q->prompt + q->n_new - 1, "%s: local-length check: %lld of request %d's %lld rows "
               "compared with the one-process decode", what, (long long)r.st.rows_req[LOCAL], LOCAL,
               (long long)(q->prompt + q->n_new - 1));
    printf("%-44s %2lld steps (%lld MTP), %lld/%lld drafts accepted, %lld rows checked (%lld of request %d's), logits "
           "max rel %.3g vs one by one, %.3g vs one process\n", what, (long long)r.st.steps, (long long)r.st.mtp_steps,
           (long long)r.st.accepted, (long long)r.st.drafted, (long long)r.st.rows_checked, (long long)r.st.rows_req[LOCAL],
           LOCAL, r.st.worst_rel, r.st.worst_log);
}

int main(int argc, char **argv)
{
    cp_test_begin(&argc, &argv);
    char *dir = NULL;
    dsacp_model *m = shared_model(&dir, "tiny", DSACP_WEIGHTS_F32, false); /* presets carry the MTP layer */
    const dsacp_config *cfg = dsacp_model_config(m);
    CHECKF(dsacp_model_has_mtp(m), "the tiny preset's model has no MTP layer");
    sp_case *cases = calloc(64, sizeof *cases);
    const int n = make_cases(cfg, cases);
    dsacp_engine_options eo;
    dsacp_engine_options_default(&eo);
    eo.block_size = BS;
    eo.num_blocks = 64;
    /* passes: oracle drafts (every case); with the MTP layer, its drafts (catch-up + chain steps)
     * and the oracle's (catch-ups after partial acceptance), each strategy once and DSA-CP */
    for (int pass = 0; pass < (dsacp_model_has_mtp(m) ? 3 : 1); pass++) {
        eo.mtp = pass > 0;
        const spec_mode mode = pass == 1 ? SPEC_MTP : SPEC_ORACLE;
        spec_ref ref[NR];
        spec_log log = {0};
        reference(m, &eo, mode, ref, &log);
        /* at W = 1 every case is the one-process engine: a few suffice */
        for (int c = 0, k = 0; c < n; c++) {
            if (pass && !cases[c].mtp) continue;
            if (pass == 2 && k++ % 2) continue;
            if (g_W > 1 || c % 6 == 0) run_case(m, &eo, &cases[c], mode, ref, &log);
        }
        spec_log_free(&log);
        spec_ref_free(ref, NR);
    }
    free(cases);
    drop_model(m, dir);
    return cp_test_end("test_cp_spec");
}
