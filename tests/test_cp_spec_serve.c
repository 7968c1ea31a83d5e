/*
 * test_cp_spec_serve.c -- speculative decoding in the serving loop (docs/speculative.md), run
 * alone as W = 1 and under mpirun with W = 2, 3, 4 by CTest: greedy tokens with speculation are
 * the tokens without it (one process, no speculation), token for token, for method ngram and mtp,
 * k in {1, 2, 3}, under every decode strategy with I in {1, 3, block size}, chunked prefill mixed
 * with verify steps (a small token budget), a request whose context crosses index_topk during a
 * verify step, one ending at a stop id and one at max_new_tokens in the middle of an accepted run,
 * and a pool small enough to preempt. The spec counters follow vLLM's meaning; ngram on a prompt
 * whose output loops accepts most drafts (> 0.5), the MTP layer of a random model almost none.
 */
#include "test.h"
#include "dsacp_cp.h"
#include "engine/engine.h"
#include "ref/test_util.h"
#include "serve/serve.h"

#include <stdint.h>

enum { NREQ = 5, CUT = 3, LOOP = 4 }; /* the request stopped mid-run, the one whose output loops */

static dsacp_comm *g_world;
static int g_rank, g_W;

typedef struct cp_case {
    const char *name;
    dsacp_cp_mode mode;
    dsacp_decode_strategy dec;
    dsacp_cp_layout kv, idx;
    int64_t I, B;
} cp_case;

/* The workload (every rank builds it; rank 0 passes it): random prompts of 29 tokens (its context
 * crosses the tiny preset's index_topk 32 while it decodes), 7 and 45; LOOP's prompt {350, 351,
 * 352}, whose output (seed 31) falls into a loop of one token (later one of four); CUT's prompt
 * is LOOP's prompt and the first 46 tokens of its longer output (the four-token loop twice: the n-gram drafter
 * proposes the continuation) and its stop id the third token it generates (set by main). */
static void make_workload(int64_t V, dsacp_serve_request *rq, int32_t *stop)
{
    static const int64_t plen[NREQ] = {29, 7, 45, 49, 3}, gen[NREQ] = {10, 9, 6, 12, 22};
    dsacp_rng rng;
    dsacp_rng_seed(&rng, 2023);
    for (int64_t i = 0; i < NREQ; i++) {
        rq[i] = (dsacp_serve_request){.prompt_len = plen[i], .max_new_tokens = gen[i]};
        rq[i].prompt = calloc((size_t)plen[i], sizeof *rq[i].prompt);
        for (int64_t j = 0; j < plen[i] && i < CUT; j++) rq[i].prompt[j] = (int32_t)(dsacp_rng_u64(&rng) % (uint64_t)V);
    }
    for (int64_t j = 0; j < 3; j++) rq[LOOP].prompt[j] = (int32_t)(350 + j);
    rq[CUT].stop_ids = stop, rq[CUT].n_stop = 1;
}

/* Disaggregated runs: the group's role (kv_both: none), and for a consumer the spec counters the
 * run must report. */
static dsacp_kv_role g_role = DSACP_KV_BOTH;

/* Serves with a link (role != kv_both: comm is the group, the link joins it to the other group
 * over the world); every rank's kv_transfer counter must equal the relayout's formula. */
static int serve_link(dsacp_engine *e, const dsacp_serve_request *rq, int64_t n, dsacp_serve_options *so,
                      dsacp_serve_result *res)
{
    dsacp_pd *pd = NULL;
    int rc = dsacp_pd_create(g_world, e, g_role, 60, &pd);
    so->pd = pd;
    if (!rc) rc = dsacp_serve_run(e, g_rank == 0 ? rq : NULL, g_rank == 0 ? n : 0, so, res);
    if (!rc) {
        const dsacp_comm_counter got = dsacp_comm_get_counter(dsacp_pd_link(pd), DSACP_PHASE_kv_transfer),
                                 want = dsacp_pd_predicted(pd);
        CHECKF(got.calls == want.calls && got.bytes_sent == want.bytes_sent && got.bytes_recv == want.bytes_recv,
               "world rank %d: kv_transfer %lld calls %lld sent %lld received, formula %lld %lld %lld", g_rank,
               (long long)got.calls, (long long)got.bytes_sent, (long long)got.bytes_recv, (long long)want.calls,
               (long long)want.bytes_sent, (long long)want.bytes_recv);
    }
    dsacp_pd_free(pd);
    return rc;
}

static int serve(const dsacp_model *m, const cp_case *c, dsacp_comm *comm, const dsacp_spec_config *spec,
                 const dsacp_serve_request *rq, int64_t n, int64_t mbt, int64_t blocks, dsacp_serve_result *res)
{
    dsacp_engine_options eo;
    dsacp_engine_options_default(&eo);
    eo.block_size = c ? c->B : 16;
    eo.num_blocks = blocks;
    eo.mtp = spec && spec->method == DSACP_SPEC_MTP;
    dsacp_cp_options cp;
    dsacp_cp_options_default(&cp);
    if (c) {
        cp.mode = c->mode, cp.decode = c->dec, cp.kv_layout = c->kv, cp.index_layout = c->idx, cp.interleave = c->I;
        if (c->mode == DSACP_CP_DSA_CP) cp.prefill_split = DSACP_PREFILL_CONTIGUOUS;
    }
    dsacp_serve_options so;
    dsacp_serve_options_default(&so);
    so.realtime = false;
    so.max_batch_tokens = mbt;
    if (spec) so.spec = *spec;
    dsacp_engine *e = NULL;
    int rc = comm ? dsacp_engine_create_cp(m, &eo, &cp, comm, &e) : dsacp_engine_create(m, &eo, &e);
    const bool root = !comm || dsacp_comm_rank(comm) == 0;
    if (g_role != DSACP_KV_BOTH && comm) rc = dsacp_comm_agree(g_world, rc); /* the other group must not wait */
    if (!rc && g_role != DSACP_KV_BOTH && comm) rc = serve_link(e, rq, n, &so, res);
    else if (!rc) rc = dsacp_serve_run(e, root ? rq : NULL, root ? n : 0, &so, res);
    dsacp_engine_free(e);
    return rc;
}

/* Request i's expected tokens: the reference's, cut after its first stop id. */
static int64_t expected_len(const dsacp_serve_out *ref, const dsacp_serve_request *q)
{
    for (int64_t k = 0; k < ref->n_tokens; k++)
        for (int64_t s = 0; s < q->n_stop; s++)
            if (ref->tokens[k] == q->stop_ids[s]) return k + 1;
    return ref->n_tokens;
}

typedef struct totals {
    int64_t runs, drafts[2], draft_tokens[2], accepted[2], preemptions; /* [0] ngram, [1] mtp */
} totals;

static void check_run(const char *what, const dsacp_serve_result *res, const dsacp_serve_result *ref,
                      const dsacp_serve_request *rq, const dsacp_spec_config *sp, totals *t)
{
    for (int64_t i = 0; i < NREQ; i++) {
        const dsacp_serve_out *a = &res->out[i], *b = &ref->out[i];
        const int64_t want = expected_len(b, &rq[i]);
        bool same = a->n_tokens == want;
        for (int64_t k = 0; same && k < want; k++) same = a->tokens[k] == b->tokens[k];
        CHECKF(same, "%s: request %lld: %lld tokens, %lld without speculation, or a token differs", what, (long long)i,
               (long long)a->n_tokens, (long long)want);
    }
    int64_t per_pos = 0;
    for (int64_t j = 0; j < sp->num_speculative_tokens; j++) per_pos += res->spec_accepted_per_pos[j];
    CHECKF(per_pos == res->spec_num_accepted_tokens && res->spec_num_accepted_tokens <= res->spec_num_draft_tokens &&
               res->spec_num_draft_tokens <= sp->num_speculative_tokens * res->spec_num_drafts &&
               res->spec_num_drafts <= res->spec_num_draft_tokens,
           "%s: counters drafts %lld, draft tokens %lld, accepted %lld (per position %lld)", what,
           (long long)res->spec_num_drafts, (long long)res->spec_num_draft_tokens, (long long)res->spec_num_accepted_tokens,
           (long long)per_pos);
    int64_t verify = 0, draft_steps = 0;
    for (int64_t s = 0; s < res->n_steps; s++) verify += res->steps[s].verify_tokens, draft_steps += res->steps[s].draft_steps;
    CHECKF(verify == res->spec_num_draft_tokens + res->spec_num_drafts, "%s: verify rows %lld", what, (long long)verify);
    CHECK(sp->method == DSACP_SPEC_MTP ? draft_steps >= res->n_steps : draft_steps == 0);
    const int m = sp->method == DSACP_SPEC_MTP;
    t->runs++, t->preemptions += res->preemptions;
    t->drafts[m] += res->spec_num_drafts, t->draft_tokens[m] += res->spec_num_draft_tokens;
    t->accepted[m] += res->spec_num_accepted_tokens;
}

/* Every case and method on this world; rank 0 compares with the reference. */
static void run_cases(const dsacp_model *m, dsacp_serve_request *rq, const dsacp_serve_result *ref, totals *t)
{
    static const cp_case cases[] = {
        {"dcp exact-topk sharded I=1", DSACP_CP_DCP, DSACP_DECODE_EXACT_TOPK, DSACP_LAYOUT_SHARDED, DSACP_LAYOUT_SHARDED, 1, 4},
        {"dcp allgather-kv sharded I=3", DSACP_CP_DCP, DSACP_DECODE_ALLGATHER_KV, DSACP_LAYOUT_SHARDED, DSACP_LAYOUT_SHARDED, 3, 8},
        {"dcp replicated-index I=B", DSACP_CP_DCP, DSACP_DECODE_REPLICATED_INDEX, DSACP_LAYOUT_SHARDED, DSACP_LAYOUT_REPLICATED, 8, 8},
        {"dsa-cp replicated", DSACP_CP_DSA_CP, DSACP_DECODE_ALLGATHER_KV, DSACP_LAYOUT_REPLICATED, DSACP_LAYOUT_REPLICATED, 1, 16},
    };
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++)
        for (int meth = 0; meth < 2; meth++) {
                const int64_t k = 1 + (int64_t)(c + (size_t)meth) % 3; /* ngram 1 2 3 1, mtp 2 3 1 2 */
                const dsacp_spec_config sp = {meth ? DSACP_SPEC_MTP : DSACP_SPEC_NGRAM, k, 1, 3};
                /* A small budget mixes prefill chunks with verify entries; a tight pool (CUT's 60
                 * cached tokens fit alone) preempts. */
                const int64_t mbt = (k + c) % 2 ? 7 : 64, blocks = (k + c) % 3 == 0 ? 64 / cases[c].B : 1024;
                char what[160];
                snprintf(what, sizeof what, "W=%d %s %s k=%lld budget %lld blocks %lld", g_W, cases[c].name,
                         meth ? "mtp" : "ngram", (long long)k, (long long)mbt, (long long)blocks);
                dsacp_serve_result res = {0};
                const int rc = serve(m, &cases[c], g_world, &sp, rq, NREQ, mbt, blocks, &res);
                CHECKF(rc == DSACP_OK, "%s: %s (%s)", what, dsacp_status_name(rc), dsacp_last_error());
                if (g_rank == 0 && rc == DSACP_OK) check_run(what, &res, ref, rq, &sp, t);
                dsacp_serve_result_free(&res);
            }
}

/* Disaggregated (docs/disaggregation.md): every split of the world into P producers and W - P
 * consumers, the producer on the pure-prefill plan or on DCP, the consumer under a decode strategy
 * of its own with ngram or mtp speculation (the producer never speculates; with mtp it computes
 * the prompt's MTP entries, which travel with the target layers'): the tokens are those of one
 * process without speculation, the consumer's spec counters reach the merged result, the link's
 * counters equal the formula over every cached layer (serve_link). */
static void run_pd_cases(const dsacp_model *m, dsacp_serve_request *rq, const dsacp_serve_result *ref, totals *t)
{
    static const cp_case prod[] = {
        {"producer dsa-cp", DSACP_CP_DSA_CP, DSACP_DECODE_ALLGATHER_KV, DSACP_LAYOUT_REPLICATED, DSACP_LAYOUT_REPLICATED, 1, 8},
        {"producer dcp I=2", DSACP_CP_DCP, DSACP_DECODE_EXACT_TOPK, DSACP_LAYOUT_SHARDED, DSACP_LAYOUT_SHARDED, 2, 16},
    };
    static const cp_case cons[] = {
        {"exact-topk sharded I=1", DSACP_CP_DCP, DSACP_DECODE_EXACT_TOPK, DSACP_LAYOUT_SHARDED, DSACP_LAYOUT_SHARDED, 1, 4},
        {"replicated-index I=3", DSACP_CP_DCP, DSACP_DECODE_REPLICATED_INDEX, DSACP_LAYOUT_SHARDED, DSACP_LAYOUT_REPLICATED, 3, 8},
        {"dsa-cp replicated", DSACP_CP_DSA_CP, DSACP_DECODE_ALLGATHER_KV, DSACP_LAYOUT_REPLICATED, DSACP_LAYOUT_REPLICATED, 1, 16},
    };
    int64_t drafts = 0, mtp_drafts = 0, preempted = 0;
    for (int P = 1; P < g_W; P++) {
        const bool producer = g_rank < P;
        dsacp_comm *group = NULL;
        g_role = producer ? DSACP_KV_PRODUCER : DSACP_KV_CONSUMER;
        REQUIRE_OK(dsacp_pd_split(g_world, g_role, &group));
        for (int ci = 0; ci < 6; ci++) {
            const int64_t k = 1 + (P + ci) % 3;
            const dsacp_spec_config sp = {ci < 3 ? DSACP_SPEC_NGRAM : DSACP_SPEC_MTP, k, ci < 3 ? 1 : 0, ci < 3 ? 3 : 0};
            const cp_case *c = producer ? &prod[(P + ci) % 2] : &cons[ci % 3];
            /* the consumer's pool tight in one case (CUT's 60 cached tokens fit alone): it preempts
             * and recomputes there, verify entries beside the recompute's prefill chunks */
            const int64_t mbt = ci % 3 == 1 ? 7 : 64, blocks = !producer && ci % 3 == 0 ? 60 / c->B : 1024;
            char what[200];
            snprintf(what, sizeof what, "W=%d --pd %d:%d consumer %s, %s, %s k=%lld budget %lld blocks %lld", g_W, P,
                     g_W - P, cons[ci % 3].name, prod[(P + ci) % 2].name, ci < 3 ? "ngram" : "mtp", (long long)k,
                     (long long)mbt, (long long)blocks);
            dsacp_serve_result res = {0};
            const int rc = serve(m, c, group, &sp, rq, NREQ, mbt, blocks, &res);
            CHECKF(rc == DSACP_OK, "%s: %s (%s)", what, dsacp_status_name(rc), dsacp_last_error());
            if (g_rank == 0 && rc == DSACP_OK) {
                CHECKF(res.pd && res.pd_W[0] == P && res.spec.method == sp.method, "%s: the result", what);
                check_run(what, &res, ref, rq, &sp, t);
                drafts += ci < 3 ? res.spec_num_drafts : 0, mtp_drafts += ci < 3 ? 0 : res.spec_num_drafts;
                preempted += res.pd_preemptions[1];
            }
            dsacp_serve_result_free(&res);
        }
        dsacp_comm_free(group);
    }
    g_role = DSACP_KV_BOTH;
    if (g_rank == 0) {
        printf("W=%d: disaggregated, ngram %lld drafts and mtp %lld over %d splits (%lld consumer preemptions), tokens "
               "of one process\n", g_W, (long long)drafts, (long long)mtp_drafts, g_W - 1, (long long)preempted);
        CHECK(drafts > 0 && mtp_drafts > 0);
    }
}

/* The looping request alone with ngram: the output without speculation repeats itself, and most
 * drafts are accepted. CUT alone: its stop id ends it inside an accepted run (fewer tokens than
 * the first token, the accepted drafts, a bonus per verify entry and the plain decode steps). */
static void check_loop(const dsacp_model *m, dsacp_serve_request *rq, const dsacp_serve_result *ref)
{
    const dsacp_spec_config k3 = {DSACP_SPEC_NGRAM, 3, 1, 3};
    dsacp_serve_result cut = {0};
    CHECK_OK(serve(m, NULL, NULL, &k3, &rq[CUT], 1, 64, 64, &cut));
    const int64_t D = cut.spec_num_drafts, A = cut.spec_num_accepted_tokens, P = cut.target_steps_decode - D;
    CHECKF(cut.out[0].n_tokens == 3 && 1 + A + D + P > cut.out[0].n_tokens,
           "the stop id did not cut an accepted run: %lld tokens, %lld accepted in %lld drafts, %lld plain decodes",
           (long long)cut.out[0].n_tokens, (long long)A, (long long)D, (long long)P);
    dsacp_serve_result_free(&cut);
    const dsacp_serve_out *o = &ref->out[LOOP];
    int64_t period = 0; /* the shortest p <= 4 with tokens[k] == tokens[k + p] for 16 k in a row */
    for (int64_t p = 1; p <= 4 && !period; p++)
        for (int64_t k = 0, run = 0; k + p < o->n_tokens && !period; k++)
            if ((run = o->tokens[k] == o->tokens[k + p] ? run + 1 : 0) >= 16) period = p;
    CHECKF(period > 0, "the looping prompt's output does not loop");
    dsacp_serve_result res = {0};
    CHECK_OK(serve(m, NULL, NULL, &k3, &rq[LOOP], 1, 64, 64, &res));
    const double rate = res.spec_num_draft_tokens ? (double)res.spec_num_accepted_tokens / (double)res.spec_num_draft_tokens : 0;
    printf("ngram on the looping prompt (period %lld): %lld drafts, %lld draft tokens, %lld accepted (%.2f)\n",
           (long long)period, (long long)res.spec_num_drafts, (long long)res.spec_num_draft_tokens,
           (long long)res.spec_num_accepted_tokens, rate);
    CHECKF(rate > 0.5, "ngram acceptance %.2f on a looping output", rate);
    bool same = res.out[0].n_tokens == o->n_tokens;
    for (int64_t k = 0; same && k < o->n_tokens; k++) same = res.out[0].tokens[k] == o->tokens[k];
    CHECK(same);
    dsacp_serve_result_free(&res);
}

int main(int argc, char **argv)
{
    REQUIRE_OK(dsacp_comm_create_world(&argc, &argv, &g_world));
    g_rank = dsacp_comm_rank(g_world);
    g_W = dsacp_comm_size(g_world);
    char dir[256] = {0};
    if (g_rank == 0) {
        char *d = tu_make_model("tiny", 31, DSACP_WEIGHTS_F32);
        snprintf(dir, sizeof dir, "%s", d);
        free(d);
    }
    REQUIRE_OK(dsacp_comm_bcast(g_world, dir, sizeof dir, DSACP_PHASE_input));
    dsacp_model *m = NULL;
    REQUIRE_OK(dsacp_model_load(dir, &m));
    dsacp_serve_request rq[NREQ];
    int32_t stop = -1;
    make_workload(dsacp_model_config(m)->vocab_size, rq, &stop);
    /* The reference: one process, no speculation (LOOP's output gives CUT's prompt first). */
    dsacp_serve_result ref = {0};
    if (g_rank == 0) {
        dsacp_serve_request longer = rq[LOOP];
        longer.max_new_tokens = 50;
        REQUIRE_OK(serve(m, NULL, NULL, NULL, &longer, 1, 4096, 1024, &ref));
        memcpy(rq[CUT].prompt + 3, ref.out[0].tokens, 46 * sizeof(int32_t));
        memcpy(rq[CUT].prompt, rq[LOOP].prompt, 3 * sizeof(int32_t));
        stop = ref.out[0].tokens[48];
        dsacp_serve_result_free(&ref);
        REQUIRE_OK(serve(m, NULL, NULL, NULL, rq, NREQ, 4096, 1024, &ref));
        if (g_W == 1) check_loop(m, rq, &ref);
    }
    totals t = {0};
    run_cases(m, rq, &ref, &t);
    if (g_W > 1) run_pd_cases(m, rq, &ref, &t);
    if (g_rank == 0) {
        const double ng = t.draft_tokens[0] ? (double)t.accepted[0] / (double)t.draft_tokens[0] : 0;
        const double mt = t.draft_tokens[1] ? (double)t.accepted[1] / (double)t.draft_tokens[1] : 1;
        printf("W=%d: %lld runs identical to no speculation, %lld preemptions; ngram %lld drafts, acceptance %.2f; "
               "mtp %lld drafts, acceptance %.2f\n", g_W, (long long)t.runs, (long long)t.preemptions,
               (long long)t.drafts[0], ng, (long long)t.drafts[1], mt);
        CHECK(t.drafts[0] > 0 && t.drafts[1] > 0 && (g_W > 1 || t.preemptions > 0));
        CHECKF(mt < 0.2, "the random MTP layer accepts %.2f of its drafts", mt);
    }
    dsacp_serve_result_free(&ref);
    for (int64_t i = 0; i < NREQ; i++) free(rq[i].prompt);
    dsacp_model_free(m);
    REQUIRE_OK(dsacp_comm_agree(g_world, DSACP_OK));
    if (g_rank == 0) tu_rmtree(dir);
    dsacp_comm_free(g_world);
    return test_finish("test_cp_spec_serve");
}
