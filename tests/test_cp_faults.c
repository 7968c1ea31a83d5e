/*
 * test_cp_faults.c -- every failure of engine creation and of a step is agreed by the group
 * (issue 20 item 1): with an allocation failure injected at each named site (dsacp_fault_configure,
 * the DSACP_FAULT hook) on one rank at a time, every rank returns the same status from the same
 * call -- nobody hangs (an alarm fails the test instead), nobody leaves early -- the ranks that did
 * not fail name the rank that did, and the group goes on: the same call succeeds afterwards.
 * Sites: creation (pools, engine, cp, weights, plan) and steps (step, views, layer, strategy,
 * lean, merge, o_proj, topk, logits), each in configurations that reach it. Runs alone (W = 1)
 * and under mpirun at W = 2, 3, 4.
 */
#include "test.h"
#include "comm/comm.h"
#include "core/core.h"
#include "dsacp_cp.h"
#include "ref/test_util.h"

#include <signal.h>
#include <stdint.h>
#include <unistd.h>

static dsacp_comm *g_world;
static int g_rank, g_W;
static int32_t g_ids[128];

enum { NSTEP = 4 };
/* request 0: a prefill, a chunk on sharded earlier context, then decodes (context > index_topk) */
static const int64_t sched[NSTEP] = {40, 9, 1, 1};

typedef struct fcase {
    const char *name;
    dsacp_cp_mode mode;
    dsacp_decode_strategy dec;
    dsacp_cp_layout idx;
    dsacp_weight_plan o;
    dsacp_lean_merge merge;
    dsacp_merge_backend backend;
    double lf;
} fcase;

static const fcase C_DEFAULT = {"exact-topk", DSACP_CP_DCP, DSACP_DECODE_EXACT_TOPK, DSACP_LAYOUT_SHARDED, 0, 0, 0, 0};
static const fcase C_AGKV = {"allgather-kv", DSACP_CP_DCP, DSACP_DECODE_ALLGATHER_KV, DSACP_LAYOUT_SHARDED, 0, 0, 0, 0};
static const fcase C_REPL = {"replicated-index", DSACP_CP_DCP, DSACP_DECODE_REPLICATED_INDEX, DSACP_LAYOUT_REPLICATED, 0, 0, 0, 0};
static const fcase C_A2A = {"exact-topk a2a", DSACP_CP_DCP, DSACP_DECODE_EXACT_TOPK, DSACP_LAYOUT_SHARDED, 0, 0, DSACP_MERGE_A2A, 0};
static const fcase C_LEAN = {"lean f=1", DSACP_CP_DCP, DSACP_DECODE_LEAN, DSACP_LAYOUT_SHARDED, 0, 0, 0, 1.0};
static const fcase C_LEANV = {"lean values", DSACP_CP_DCP, DSACP_DECODE_LEAN, DSACP_LAYOUT_SHARDED, 0, DSACP_LEAN_MERGE_VALUES, 0, 0};
static const fcase C_LEANVA = {"lean values a2a", DSACP_CP_DCP, DSACP_DECODE_LEAN, DSACP_LAYOUT_SHARDED, 0, DSACP_LEAN_MERGE_VALUES, DSACP_MERGE_A2A, 0};
static const fcase C_TP = {"dsa-cp tp", DSACP_CP_DSA_CP, DSACP_DECODE_EXACT_TOPK, DSACP_LAYOUT_SHARDED, DSACP_WEIGHTS_TP, 0, 0, 0};
static const fcase C_LS = {"dsa-cp layer-shard o_proj", DSACP_CP_DSA_CP, DSACP_DECODE_EXACT_TOPK, DSACP_LAYOUT_SHARDED, DSACP_WEIGHTS_LAYER_SHARD, 0, 0, 0};
static const fcase C_TPA = {"dsa-cp tp-a2a", DSACP_CP_DSA_CP, DSACP_DECODE_EXACT_TOPK, DSACP_LAYOUT_SHARDED, DSACP_WEIGHTS_TP_A2A, 0, 0, 0};

static void on_alarm(int sig)
{
    (void)sig;
    static const char m[] = "FAIL test_cp_faults: a rank hung (no agreement within the alarm)\n";
    if (write(2, m, sizeof m - 1) < 0) _exit(3);
    _exit(3);
}

/* Runs the schedule until a call fails: *where = -1 creation, s = step s, NSTEP: none failed.
 * Each step is retried once after a failure (the injected fault fires once): it must succeed. */
static int run(const dsacp_model *m, const dsacp_engine_options *eo, const fcase *fc, int *where, int *retry_rc)
{
    dsacp_cp_options cp;
    dsacp_cp_options_default(&cp);
    cp.mode = fc->mode;
    cp.decode = fc->dec;
    cp.index_layout = fc->idx;
    cp.o_proj = fc->o;
    cp.lean_merge = fc->merge;
    cp.merge_backend = fc->backend;
    if (fc->lf > 0) cp.lean_factor = fc->lf;
    dsacp_engine *e = NULL;
    *retry_rc = DSACP_OK;
    int rc = dsacp_engine_create_cp(m, eo, &cp, g_world, &e);
    if (rc) {
        *where = -1;
        *retry_rc = dsacp_engine_create_cp(m, eo, &cp, g_world, &e);
        dsacp_engine_free(e);
        return rc;
    }
    const dsacp_config *cfg = dsacp_model_config(m);
    int64_t id = 0, used = 0;
    rc = dsacp_engine_add_request(e, &id);
    float *logits = malloc((size_t)(64 * cfg->vocab_size) * 4);
    int32_t *topk = malloc((size_t)(64 * cfg->index_topk * cfg->num_hidden_layers) * 4);
    *where = NSTEP;
    for (int s = 0; s < NSTEP && !rc; s++) {
        dsacp_step_entry en = {id, sched[s], g_ids + used};
        rc = dsacp_engine_step(e, &en, 1, logits, topk);
        if (rc) {
            *where = s;
            if (dsacp_engine_request_length(e, id) != used) *retry_rc = DSACP_EINVAL; /* a failed step changes nothing */
            else *retry_rc = dsacp_engine_step(e, &en, 1, logits, topk);
        }
        used += sched[s];
    }
    free(logits), free(topk);
    dsacp_engine_free(e);
    return rc;
}

static void check_site(const dsacp_model *m, const dsacp_engine_options *eo, const char *label, const char *site,
                       const fcase *fc, int nth)
{
    for (int r = 0; r < g_W; r++) {
        char spec[64];
        snprintf(spec, sizeof spec, "%s:%d:%d", site, r, nth);
        REQUIRE_OK(dsacp_fault_configure(spec));
        int where = 0, retry = 0;
        alarm(120);
        int rc = run(m, eo, fc, &where, &retry);
        alarm(0);
        const char *msg = dsacp_last_error();
        char want[32];
        snprintf(want, sizeof want, "rank %d:", r);
        const bool named = g_rank == r ? strstr(msg, "injected") != NULL : strstr(msg, want) != NULL;
        REQUIRE_OK(dsacp_fault_configure(NULL));
        /* every rank's (status, call, retry status, message check) */
        int mine[4] = {rc, where, retry, named || rc == DSACP_OK}, all[4 * 4];
        REQUIRE_OK(dsacp_comm_allgather(g_world, mine, sizeof mine, all, -1));
        if (g_rank != 0) continue;
        bool same = true;
        for (int q = 1; q < g_W; q++)
            for (int k = 0; k < 3; k++) same = same && all[4 * q + k] == all[k];
        bool named_all = true;
        for (int q = 0; q < g_W; q++) named_all = named_all && all[4 * q + 3];
        /* W = 1 runs no collective at some sites (the logits gather, the o_proj exchange, ...). */
        const bool hit = all[0] != DSACP_OK;
        CHECKF(same, "%s %s %s rank %d: the ranks disagree (rank 0: status %d at call %d)", label, spec, fc->name, r, all[0], all[1]);
        CHECKF(hit || g_W == 1, "%s %s %s: the site was never reached", label, spec, fc->name);
        if (hit) {
            CHECKF(all[0] == DSACP_ENOMEM, "%s %s %s: status %s", label, spec, fc->name, dsacp_status_name(all[0]));
            CHECKF(all[2] == DSACP_OK, "%s %s %s: the call failed again after the fault (%s)", label, spec, fc->name,
                   dsacp_status_name(all[2]));
            CHECKF(named_all, "%s %s %s: a rank's message does not name rank %d's injected failure", label, spec, fc->name, r);
        }
    }
}

typedef struct site_case {
    const char *site;
    const fcase *fc;
    int nth;
} site_case;

int main(int argc, char **argv)
{
    REQUIRE_OK(dsacp_comm_create_world(&argc, &argv, &g_world));
    g_rank = dsacp_comm_rank(g_world);
    g_W = dsacp_comm_size(g_world);
    signal(SIGALRM, on_alarm);
    char dir[256] = {0};
    if (g_rank == 0) {
        char *d = tu_make_model("tiny", 5, DSACP_WEIGHTS_F32);
        snprintf(dir, sizeof dir, "%s", d);
        free(d);
    }
    REQUIRE_OK(dsacp_comm_bcast(g_world, dir, sizeof dir, DSACP_PHASE_input));
    dsacp_model *m = NULL;
    REQUIRE_OK(dsacp_model_load(dir, &m));
    tu_random_ids(g_ids, 128, dsacp_model_config(m)->vocab_size, 77);
    dsacp_engine_options eo;
    dsacp_engine_options_default(&eo);
    eo.block_size = 8;
    eo.num_blocks = 64;

    const site_case cases[] = {
        {"pools", &C_DEFAULT, 1},    {"engine", &C_DEFAULT, 1},  {"cp", &C_DEFAULT, 1},
        {"weights", &C_TP, 1},       {"plan", &C_DEFAULT, 1},    {"plan", &C_TP, 1},
        {"step", &C_DEFAULT, 1},     {"step", &C_DEFAULT, 3},    {"views", &C_DEFAULT, 1},
        {"views", &C_AGKV, 2},       {"layer", &C_DEFAULT, 1},   {"layer", &C_DEFAULT, 6},
        {"strategy", &C_AGKV, 1},    {"strategy", &C_REPL, 1},   {"strategy", &C_DEFAULT, 1},
        {"strategy", &C_LEAN, 1},    {"strategy", &C_DEFAULT, 2}, {"lean", &C_LEAN, 1},
        {"lean", &C_LEAN, 2},        {"lean", &C_LEAN, 3},       {"merge", &C_DEFAULT, 1},
        {"merge", &C_A2A, 1},        {"merge", &C_LEANV, 1},     {"merge", &C_LEANVA, 1},
        {"o_proj", &C_LS, 1},        {"o_proj", &C_TP, 1},       {"o_proj", &C_TPA, 1},
        {"topk", &C_DEFAULT, 1},     {"topk", &C_LEAN, 1},       {"logits", &C_DEFAULT, 1},
        {"logits", &C_TP, 2},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        check_site(m, &eo, "exact", cases[i].site, cases[i].fc, cases[i].nth);

    /* A malformed spec is refused. */
    CHECK(dsacp_fault_configure("no-such-site:0") == DSACP_EINVAL);
    CHECK(dsacp_fault_configure("pools:x") == DSACP_EINVAL);
    CHECK(dsacp_fault_configure("pools:0:0") == DSACP_EINVAL);
    REQUIRE_OK(dsacp_fault_configure(NULL));

    dsacp_model_free(m);
    REQUIRE_OK(dsacp_comm_agree(g_world, DSACP_OK));
    if (g_rank == 0) tu_rmtree(dir);
    int failed = test_failures_;
    int rc = dsacp_comm_agree(g_world, failed ? DSACP_EINVAL : DSACP_OK);
    dsacp_comm_free(g_world);
    if (rc && !failed) {
        fprintf(stderr, "FAIL test_cp_faults: another rank failed\n");
        return 1;
    }
    return test_finish("test_cp_faults");
}
