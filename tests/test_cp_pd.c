/*
 * test_cp_pd.c -- prefill and decode on separate rank groups (docs/disaggregation.md): for every
 * split of the world into a producer group of P ranks and a consumer group of W - P (under
 * mpirun at W = 2, 3, 4: (1,1), (1,2), (2,1), (1,3), (2,2), (3,1)), the same mixed workload --
 * long and short prompts, one shorter than W_d x I_d, one exactly index_topk long, chunked
 * prefill, preemption-free and pool-starved consumers -- is served disaggregated with every
 * consumer decode strategy (and DSA-CP), I_d in {1, 3, block size}, the consumer's index layouts
 * (sharded, replicated, partial:G), block sizes that differ between the groups and producers
 * on the pure-prefill plan (DSA-CP, layer-shard q_proj / o_proj) or on DCP; every request gets
 * the greedy tokens one process gives, and every rank's kv_transfer counter on the link equals
 * the relayout's formula (dsacp_pd_predicted). The refusals: a role without a partner group,
 * mismatched cache dtypes. Run alone (W = 1) it checks the refusal of a lone producer.
 */
#include "test.h"
#include "dsacp_cp.h"
#include "dsacp_serve.h"
#include "dsacp_util.h"
#include "ref/test_util.h"

#include <stdint.h>
#include <string.h>

enum { NREQ = 7 };

static dsacp_comm *g_world;
static int g_rank, g_W;
static int64_t g_runs, g_starved, g_preempted;

typedef struct pd_case {
    dsacp_cp_mode mode;
    dsacp_decode_strategy dec;
    dsacp_cp_layout kv, idx;
    int64_t G, I, B;
    bool producer_dcp; /* the producer on DCP (sharded, I_p = 2) instead of the pure-prefill plan */
    bool starved;      /* the consumer's pool holds the largest request alone, no more */
    bool realtime;     /* the arrivals on the wall clock (staggered by a few ms) */
} pd_case;

/* The workload every rank draws: long and short prompts, one shorter than W_d I_d, one exactly
 * index_topk long; staggered arrival order. */
static void make_workload(dsacp_serve_request *rq, int64_t V, int64_t topk, int64_t short_len)
{
    static const int64_t lens[NREQ] = {70, 5, 0, 41, 0, 96, 12};
    static const int64_t gen[NREQ] = {6, 3, 5, 1, 4, 5, 2};
    dsacp_rng rng;
    dsacp_rng_seed(&rng, 77);
    for (int i = 0; i < NREQ; i++) {
        memset(&rq[i], 0, sizeof rq[i]);
        rq[i].prompt_len = i == 2 ? topk : i == 4 ? short_len : lens[i];
        rq[i].max_new_tokens = gen[i];
        rq[i].arrival_s = 0.001 * (double)((i * 5) % NREQ);
        rq[i].prompt = malloc((size_t)rq[i].prompt_len * sizeof *rq[i].prompt);
        for (int64_t j = 0; j < rq[i].prompt_len; j++) rq[i].prompt[j] = (int32_t)(dsacp_rng_u64(&rng) % (uint64_t)V);
    }
}

static int64_t blocks_for(const dsacp_serve_request *rq, int64_t B, bool largest_only)
{
    int64_t sum = 0, most = 0;
    for (int i = 0; i < NREQ; i++) {
        const int64_t b = (rq[i].prompt_len + rq[i].max_new_tokens + B - 1) / B;
        sum += b;
        most = b > most ? b : most;
    }
    return largest_only ? most : sum + 2;
}

/* One disaggregated run of case c with P producers; tokens compared with ref on world rank 0. */
static void run_case(const dsacp_model *m, dsacp_comm *group, bool producer, int P, const pd_case *c,
                     const dsacp_serve_request *rq, const dsacp_serve_result *ref)
{
    const int Wd = g_W - P;
    dsacp_engine_options eo;
    dsacp_engine_options_default(&eo);
    dsacp_cp_options cp;
    dsacp_cp_options_default(&cp);
    if (producer) {
        eo.block_size = c->B == 4 ? 8 : 4; /* never the consumer's */
        eo.num_blocks = blocks_for(rq, eo.block_size, false);
        if (c->producer_dcp) {
            cp.interleave = 2;
        } else {
            cp.mode = DSACP_CP_DSA_CP, cp.prefill_split = DSACP_PREFILL_CONTIGUOUS;
            cp.kv_layout = cp.index_layout = DSACP_LAYOUT_REPLICATED;
            cp.q_proj = cp.o_proj = DSACP_WEIGHTS_LAYER_SHARD;
        }
    } else {
        eo.block_size = c->B;
        cp.mode = c->mode, cp.decode = c->dec, cp.kv_layout = c->kv, cp.index_layout = c->idx;
        cp.index_group = c->G, cp.interleave = c->I;
        if (c->mode == DSACP_CP_DSA_CP) cp.prefill_split = DSACP_PREFILL_CONTIGUOUS;
        /* starved: the largest request's share alone on a rank (its whole length: one rank may
         * hold it all under a replicated layout or an interleave past the prompt) */
        eo.num_blocks = blocks_for(rq, c->B, c->starved);
    }
    char what[240];
    snprintf(what, sizeof what, "P=%d D=%d consumer %s %s kv %s index %s G=%lld I=%lld B=%lld%s%s", P, Wd,
             dsacp_cp_mode_name(c->mode), dsacp_decode_strategy_name(c->dec), dsacp_cp_layout_name(c->kv),
             dsacp_cp_layout_name(c->idx), (long long)c->G, (long long)c->I, (long long)c->B,
             c->producer_dcp ? ", producer dcp" : "", c->starved ? ", starved" : "");
    dsacp_engine *e = NULL;
    int rc = dsacp_engine_create_cp(m, &eo, &cp, group, &e);
    rc = dsacp_comm_agree(g_world, rc);
    CHECKF(rc == DSACP_OK, "%s: engine: %s", what, dsacp_last_error());
    if (rc) return;
    dsacp_pd *pd = NULL;
    rc = dsacp_pd_create(g_world, e, producer ? DSACP_KV_PRODUCER : DSACP_KV_CONSUMER, 60, &pd);
    CHECKF(rc == DSACP_OK, "%s: link: %s", what, dsacp_last_error());
    dsacp_serve_options so;
    dsacp_serve_options_default(&so);
    so.realtime = c->realtime;
    so.max_batch_tokens = 24; /* chunked prefill */
    so.pd = pd;
    dsacp_serve_result res;
    if (!rc) {
        rc = dsacp_serve_run(e, g_rank == 0 ? rq : NULL, g_rank == 0 ? NREQ : 0, &so, &res);
        CHECKF(rc == DSACP_OK, "%s: %s (%s)", what, dsacp_status_name(rc), dsacp_last_error());
    }
    if (!rc) {
        const dsacp_comm_counter got = dsacp_comm_get_counter(dsacp_pd_link(pd), DSACP_PHASE_kv_transfer),
                                 want = dsacp_pd_predicted(pd);
        CHECKF(got.calls == want.calls && got.bytes_sent == want.bytes_sent && got.bytes_recv == want.bytes_recv &&
                   (got.calls > 0) == (producer ? true : true),
               "%s: world rank %d kv_transfer %lld calls %lld sent %lld received, formula %lld %lld %lld", what, g_rank,
               (long long)got.calls, (long long)got.bytes_sent, (long long)got.bytes_recv, (long long)want.calls,
               (long long)want.bytes_sent, (long long)want.bytes_recv);
    }
    /* The per-request bytes and messages (the formula over each request's chunks) add up to what
     * the producer ranks' counters measured. */
    int64_t sent[2] = {0, 0}, all[2 * 8] = {0};
    if (!rc) {
        const dsacp_comm_counter k = dsacp_comm_get_counter(dsacp_pd_link(pd), DSACP_PHASE_kv_transfer);
        sent[0] = producer ? k.bytes_sent : 0, sent[1] = producer ? k.calls : 0;
        REQUIRE_OK(dsacp_comm_allgather(g_world, sent, sizeof sent, all, -1));
    }
    if (!rc && g_rank == 0) {
        int64_t bytes = 0, msgs = 0, per_bytes = 0, per_msgs = 0;
        for (int q = 0; q < g_W; q++) bytes += all[2 * q], msgs += all[2 * q + 1];
        for (int i = 0; i < NREQ; i++) per_bytes += res.out[i].kv_bytes, per_msgs += res.out[i].kv_messages;
        CHECKF(per_bytes == bytes && per_msgs == msgs, "%s: requests' kv_bytes %lld / messages %lld, producers sent %lld / %lld",
               what, (long long)per_bytes, (long long)per_msgs, (long long)bytes, (long long)msgs);
    }
    if (!rc && g_rank == 0) {
        g_runs++;
        g_starved += c->starved;
        g_preempted += res.pd_preemptions[1];
        CHECKF(res.pd && res.pd_W[0] == P && res.pd_W[1] == Wd && res.n_requests == NREQ, "%s: result", what);
        for (int i = 0; i < NREQ; i++) {
            const dsacp_serve_out *a = &res.out[i], *b = &ref->out[i];
            bool same = a->n_tokens == b->n_tokens;
            for (int64_t k = 0; same && k < a->n_tokens; k++) same = a->tokens[k] == b->tokens[k];
            CHECKF(same, "%s: request %d (prompt %lld): %lld tokens, one process %lld, or a token differs", what, i,
                   (long long)rq[i].prompt_len, (long long)a->n_tokens, (long long)b->n_tokens);
            CHECKF(a->kv_bytes > 0 && a->kv_messages > 0 && a->prefill_done_s >= 0 && a->kv_ready_s >= a->prefill_done_s - 0.05 &&
                       a->first_s == a->kv_ready_s && a->finish_s >= a->first_s,
                   "%s: request %d's times or transfer", what, i);
        }
    }
    if (!rc && g_rank == 0) dsacp_serve_result_free(&res);
    dsacp_pd_free(pd);
    dsacp_engine_free(e);
}

/* The consumer cases of a group of Wd ranks: every strategy (and DSA-CP) x I_d in {1, 3, B} with the
 * index layouts rotated, the invalid combinations skipped by the options' own check. */
static int consumer_cases(const dsacp_config *cfg, int Wd, pd_case *out, int cap)
{
    static const int64_t blocks[] = {2, 8, 16};
    int n = 0, k = 0;
    const int ns = dsacp_decode_strategy_count();
    for (int s = -1; s < ns; s++)
        for (int ii = 0; ii < 3; ii++, k++) {
            pd_case c = {.mode = s < 0 ? DSACP_CP_DSA_CP : DSACP_CP_DCP, .dec = s < 0 ? DSACP_DECODE_ALLGATHER_KV : (dsacp_decode_strategy)s,
                         .B = blocks[k % 3], .G = 1, .producer_dcp = k % 4 == 1, .starved = k % 5 == 2,
                         .realtime = k % 7 == 3};
            c.I = ii == 0 ? 1 : ii == 1 ? 3 : c.B;
            c.kv = s < 0 ? DSACP_LAYOUT_REPLICATED : DSACP_LAYOUT_SHARDED;
            const int rot = (k + s) % 3;
            c.idx = s < 0 ? DSACP_LAYOUT_REPLICATED : rot == 0 ? DSACP_LAYOUT_SHARDED : rot == 1 ? DSACP_LAYOUT_REPLICATED : DSACP_LAYOUT_PARTIAL;
            if (c.idx == DSACP_LAYOUT_PARTIAL) c.G = Wd % 2 == 0 ? 2 : Wd;
            if (s >= 0 && dsacp_decode_strategy_replicated_index((dsacp_decode_strategy)s)) c.idx = DSACP_LAYOUT_REPLICATED;
            dsacp_cp_options o;
            dsacp_cp_options_default(&o);
            o.mode = c.mode, o.decode = c.dec, o.kv_layout = c.kv, o.index_layout = c.idx, o.index_group = c.G, o.interleave = c.I;
            if (c.mode == DSACP_CP_DSA_CP) o.prefill_split = DSACP_PREFILL_CONTIGUOUS;
            if (c.idx == DSACP_LAYOUT_PARTIAL && c.G == 1) continue;
            if (dsacp_cp_options_check(cfg, &o, Wd, c.B) != DSACP_OK) {
                if (c.idx != DSACP_LAYOUT_SHARDED && s >= 0) { /* the strategy's own index layout */
                    o.index_layout = c.idx = DSACP_LAYOUT_SHARDED, o.index_group = c.G = 1;
                    if (dsacp_cp_options_check(cfg, &o, Wd, c.B) != DSACP_OK) continue;
                } else {
                    continue;
                }
            }
            if (n < cap) out[n++] = c;
        }
    return n;
}

/* The refusals: mismatched cache dtypes between the groups (every rank gets the same verdict). */
static void refusals(const dsacp_model *m, dsacp_comm *group, bool producer)
{
    dsacp_engine_options eo;
    dsacp_engine_options_default(&eo);
    eo.num_blocks = 64;
    eo.kv_dtype = producer ? DSACP_KV_F32 : DSACP_KV_BF16;
    dsacp_cp_options cp;
    dsacp_cp_options_default(&cp);
    dsacp_engine *e = NULL;
    REQUIRE_OK(dsacp_engine_create_cp(m, &eo, &cp, group, &e));
    dsacp_pd *pd = NULL;
    const int rc = dsacp_pd_create(g_world, e, producer ? DSACP_KV_PRODUCER : DSACP_KV_CONSUMER, 10, &pd);
    CHECKF(rc == DSACP_EINVAL && !pd && strstr(dsacp_last_error(), "cache dtype"), "mismatched cache dtypes: %s (%s)",
           dsacp_status_name(rc), dsacp_last_error());
    dsacp_engine_free(e);
}

int main(int argc, char **argv)
{
    REQUIRE_OK(dsacp_comm_create_world(&argc, &argv, &g_world));
    g_rank = dsacp_comm_rank(g_world);
    g_W = dsacp_comm_size(g_world);
    /* A lone role is refused on every rank. */
    dsacp_comm *group = NULL;
    int rc = dsacp_pd_split(g_world, DSACP_KV_PRODUCER, &group);
    CHECKF(rc == DSACP_EINVAL && !group && strstr(dsacp_last_error(), "needs a consumer"), "lone producers: %s (%s)",
           dsacp_status_name(rc), dsacp_last_error());
    REQUIRE_OK(dsacp_pd_split(g_world, DSACP_KV_BOTH, &group));
    CHECK(group == NULL);
    if (g_W == 1) {
        dsacp_comm_free(g_world);
        return test_finish("test_cp_pd");
    }
    char dir[256] = {0};
    if (g_rank == 0) {
        char *d = tu_make_model("tiny", 41, DSACP_WEIGHTS_F32);
        snprintf(dir, sizeof dir, "%s", d);
        free(d);
    }
    REQUIRE_OK(dsacp_comm_bcast(g_world, dir, sizeof dir, DSACP_PHASE_input));
    dsacp_model *m = NULL;
    REQUIRE_OK(dsacp_model_load(dir, &m));
    const dsacp_config *cfg = dsacp_model_config(m);
    for (int P = 1; P < g_W; P++) {
        const bool producer = g_rank < P;
        const int Wd = g_W - P;
        REQUIRE_OK(dsacp_pd_split(g_world, producer ? DSACP_KV_PRODUCER : DSACP_KV_CONSUMER, &group));
        /* one prompt shorter than W_d x I_d for the largest I_d used (3) */
        dsacp_serve_request rq[NREQ];
        make_workload(rq, cfg->vocab_size, cfg->index_topk, 3 * Wd - 1 > 1 ? 3 * Wd - 1 : 1);
        dsacp_serve_result ref;
        memset(&ref, 0, sizeof ref);
        if (g_rank == 0) { /* one process */
            dsacp_engine_options eo;
            dsacp_engine_options_default(&eo);
            eo.num_blocks = blocks_for(rq, eo.block_size, false);
            dsacp_engine *solo = NULL;
            dsacp_serve_options so;
            dsacp_serve_options_default(&so);
            so.realtime = false;
            REQUIRE_OK(dsacp_engine_create(m, &eo, &solo));
            REQUIRE_OK(dsacp_serve_run(solo, rq, NREQ, &so, &ref));
            dsacp_engine_free(solo);
        }
        pd_case cases[64];
        const int n = consumer_cases(cfg, Wd, cases, 64);
        for (int k = 0; k < n; k++) run_case(m, group, producer, P, &cases[k], rq, &ref);
        if (P == 1) refusals(m, group, producer);
        dsacp_serve_result_free(&ref);
        for (int i = 0; i < NREQ; i++) free(rq[i].prompt);
        dsacp_comm_free(group);
    }
    if (g_rank == 0) {
        printf("W=%d: %lld disaggregated runs (%lld with a starved consumer pool, %lld preemptions there), tokens of "
               "one process\n", g_W, (long long)g_runs, (long long)g_starved, (long long)g_preempted);
        CHECK(g_runs > 0);
    }
    dsacp_model_free(m);
    REQUIRE_OK(dsacp_comm_agree(g_world, DSACP_OK));
    if (g_rank == 0) tu_rmtree(dir);
    dsacp_comm_free(g_world);
    return test_finish("test_cp_pd");
}
