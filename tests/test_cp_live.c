/*
 * test_cp_live.c -- the online loop (dsacp_live_*, docs/serving.md "Online"), alone as W = 1 and
 * under mpirun with W = 2, 3, 4 by CTest. Rank 0's client thread submits requests while every rank
 * runs the loop; the sink (the loop's thread) records each request's events:
 *   - greedy requests arriving at different times, in a pool small enough to preempt, give the
 *     tokens each gives alone in a one-process batch run (dsacp_serve_run), ending by length or at
 *     a stop id with the right finish reason;
 *   - a sampled request (temperature, top_p, seed) gives the tokens of a one-process batch run with
 *     that seed: the draws depend on (seed, token index) only;
 *   - an abort from inside the sink after 3 tokens ends the request with exactly 3 tokens and an
 *     ABORT final event; aborting a finished id is DSACP_ENOTFOUND;
 *   - a request that fits no pool alone gets a final ERROR event (DSACP_ECAPACITY), a bad request
 *     is refused by submit (DSACP_EINVAL) and a full queue by DSACP_EBUSY;
 *   - every request gets exactly one final event; afterwards no request runs or waits and the KV
 *     pools are empty; a graceful shutdown returns DSACP_OK on every rank, and submit is then
 *     DSACP_EBUSY; shutdown(abort_all) ends requests in flight with ABORT events.
 */
#include "test.h"
#include "dsacp_cp.h"
#include "engine/engine.h"
#include "ref/test_util.h"
#include "serve/serve.h"

#include <pthread.h>
#include <stdint.h>
#include <time.h>

enum { NREQ = 7, SAMPLED = 4, ABORTED = 5, TOO_BIG = 6, MAXTOK = 64 };

static dsacp_comm *g_world;
static int g_rank, g_W;
static int64_t g_preemptions;

typedef struct rec {
    int32_t tokens[MAXTOK];
    int64_t n, finals, preemptions;
    dsacp_finish finish;
    int status;
    uint64_t id;
} rec;

typedef struct client {
    dsacp_live *lv;
    dsacp_serve_request rq[NREQ];
    double temperature[NREQ], top_p[NREQ];
    uint64_t seed[NREQ];
    rec out[NREQ];
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int64_t done;
    bool abort_all;     /* the case that shuts down with abort_all while requests run */
    int submit_errors;
} client;

static void sink(void *arg, const dsacp_live_event *ev)
{
    client *c = arg;
    rec *r = ev->user;
    if (ev->token >= 0 && r->n < MAXTOK) r->tokens[r->n++] = ev->token;
    CHECKF(ev->n_generated == r->n, "event of request %llu: n_generated %lld, %lld tokens seen",
           (unsigned long long)ev->id, (long long)ev->n_generated, (long long)r->n);
    if (ev->finish == DSACP_FINISH_NONE && r == &c->out[ABORTED] && r->n == 3 && !c->abort_all)
        CHECK_OK(dsacp_live_abort(c->lv, ev->id));
    if (ev->finish != DSACP_FINISH_NONE) {
        r->finals++;
        r->finish = ev->finish, r->status = ev->status, r->preemptions = ev->preemptions;
        pthread_mutex_lock(&c->mu);
        c->done++;
        pthread_cond_signal(&c->cv);
        pthread_mutex_unlock(&c->mu);
    }
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Rank 0's client: submits the requests 0-5 ms apart (the bad ones first), waits for every final
 * event, checks the refusals, then shuts the loop down. */
static void *client_main(void *arg)
{
    client *c = arg;
    dsacp_live_request bad = {.prompt = c->rq[0].prompt, .prompt_len = 1, .max_new_tokens = 0, .top_p = 1};
    uint64_t id;
    CHECK(dsacp_live_submit(c->lv, &bad, &id) == DSACP_EINVAL);
    CHECK(strstr(dsacp_last_error(), "max_new_tokens") != NULL);
    bad.max_new_tokens = 1, bad.top_p = 0;
    CHECK(dsacp_live_submit(c->lv, &bad, &id) == DSACP_EINVAL);
    for (int i = 0; i < NREQ; i++) {
        const dsacp_live_request q = {.prompt = c->rq[i].prompt, .prompt_len = c->rq[i].prompt_len,
                                      .max_new_tokens = c->rq[i].max_new_tokens, .stop_ids = c->rq[i].stop_ids,
                                      .n_stop = c->rq[i].n_stop, .temperature = c->temperature[i],
                                      .top_p = c->top_p[i], .seed = c->seed[i], .user = &c->out[i]};
        int rc = dsacp_live_submit(c->lv, &q, &c->out[i].id);
        CHECK_OK(rc);
        if (rc) {
            pthread_mutex_lock(&c->mu);
            c->done++, c->submit_errors++;
            pthread_mutex_unlock(&c->mu);
        }
        sleep_ms(i % 3 == 0 ? 5 : 0);
    }
    if (c->abort_all) {
        sleep_ms(20);
        dsacp_live_shutdown(c->lv, false);
        dsacp_live_shutdown(c->lv, true);
    }
    pthread_mutex_lock(&c->mu);
    while (c->done < NREQ) pthread_cond_wait(&c->cv, &c->mu);
    pthread_mutex_unlock(&c->mu);
    if (!c->abort_all) {
        CHECK(dsacp_live_abort(c->lv, c->out[0].id) == DSACP_ENOTFOUND);
        dsacp_live_stats st;
        dsacp_live_get_stats(c->lv, &st);
        sleep_ms(120); /* an idle plan or two: the last requests' blocks are freed */
        dsacp_live_get_stats(c->lv, &st);
        CHECKF(st.running == 0 && st.waiting == 0 && st.kv_use == 0, "after the requests: %lld running, %lld "
               "waiting, KV use %g", (long long)st.running, (long long)st.waiting, st.kv_use);
        CHECK(st.finished[DSACP_FINISH_ABORT] == 1 && st.finished[DSACP_FINISH_ERROR] == 1);
        CHECK(st.steps > 0 && st.generation_tokens > 0 && st.prompt_tokens > 0);
        dsacp_live_shutdown(c->lv, false);
        CHECK(dsacp_live_submit(c->lv, &(dsacp_live_request){.prompt = c->rq[0].prompt, .prompt_len = 1,
                                                               .max_new_tokens = 1, .top_p = 1}, &id) == DSACP_EBUSY);
    }
    return NULL;
}

/* The workload: random prompts (rank 0 only), a stop id on request 1 (its third greedy token, set
 * by main), request TOO_BIG longer than any pool. */
static void make_workload(int64_t V, client *c)
{
    static const int64_t plen[NREQ] = {29, 7, 45, 12, 9, 20, 40}, gen[NREQ] = {10, 9, 6, 12, 8, 12, 20};
    dsacp_rng rng;
    dsacp_rng_seed(&rng, 77);
    for (int i = 0; i < NREQ; i++) {
        c->rq[i] = (dsacp_serve_request){.prompt_len = plen[i], .max_new_tokens = gen[i]};
        c->rq[i].prompt = calloc((size_t)plen[i], sizeof *c->rq[i].prompt);
        for (int64_t j = 0; j < plen[i]; j++) c->rq[i].prompt[j] = (int32_t)(dsacp_rng_u64(&rng) % (uint64_t)V);
        c->top_p[i] = 1;
    }
    c->temperature[SAMPLED] = 0.8, c->top_p[SAMPLED] = 0.9, c->seed[SAMPLED] = 4242;
}

/* One request alone on one process, batch loop: the reference. */
static void reference(const dsacp_model *m, const client *c, int i, dsacp_serve_result *ref)
{
    dsacp_engine_options eo;
    dsacp_engine_options_default(&eo);
    eo.block_size = 4;
    dsacp_engine *solo = NULL;
    REQUIRE_OK(dsacp_engine_create(m, &eo, &solo));
    dsacp_serve_options so;
    dsacp_serve_options_default(&so);
    so.realtime = false;
    so.temperature = c->temperature[i], so.top_p = c->top_p[i], so.seed = c->seed[i];
    CHECK_OK(dsacp_serve_run(solo, &c->rq[i], 1, &so, ref));
    dsacp_engine_free(solo);
}

static void test_case(const dsacp_model *m, dsacp_cp_mode mode, dsacp_decode_strategy dec, int64_t I, bool abort_all,
                      int32_t *stop)
{
    dsacp_engine_options eo;
    dsacp_engine_options_default(&eo);
    eo.block_size = 4;
    /* 56 positions (a sharded cache: about as many over the ranks): long requests do not fit
     * together -> preemption */
    eo.num_blocks = mode == DSACP_CP_DCP ? (14 + g_W - 1) / g_W + 2 : 14;
    dsacp_cp_options cp;
    dsacp_cp_options_default(&cp);
    cp.mode = mode, cp.decode = dec, cp.interleave = I;
    if (mode == DSACP_CP_DSA_CP)
        cp.kv_layout = cp.index_layout = DSACP_LAYOUT_REPLICATED, cp.prefill_split = DSACP_PREFILL_CONTIGUOUS;
    dsacp_engine *e = NULL;
    REQUIRE_OK(dsacp_engine_create_cp(m, &eo, &cp, g_world, &e));
    const int64_t V = dsacp_model_config(m)->vocab_size;
    client c = {0};
    pthread_mutex_init(&c.mu, NULL);
    pthread_cond_init(&c.cv, NULL);
    c.abort_all = abort_all;
    make_workload(V, &c);
    c.rq[TOO_BIG].prompt_len = 40, c.rq[TOO_BIG].max_new_tokens = eo.num_blocks * 4 * g_W; /* past every pool */
    if (c.rq[TOO_BIG].prompt_len + c.rq[TOO_BIG].max_new_tokens > dsacp_model_config(m)->max_position_embeddings)
        c.rq[TOO_BIG].max_new_tokens = dsacp_model_config(m)->max_position_embeddings - 40;
    c.rq[1].stop_ids = stop, c.rq[1].n_stop = 1;
    dsacp_live_options lo;
    dsacp_live_options_default(&lo);
    lo.serve.max_batch_tokens = 16;
    lo.serve.max_num_seqs = 4;
    lo.max_waiting = NREQ;
    REQUIRE_OK(dsacp_live_create(e, &lo, &c.lv));
    pthread_t th;
    if (g_rank == 0) pthread_create(&th, NULL, client_main, &c);
    CHECK_OK(dsacp_live_run(c.lv, g_rank == 0 ? sink : NULL, &c));
    if (g_rank == 0) pthread_join(th, NULL);
    if (g_rank == 0) {
        int64_t pre = 0;
        for (int i = 0; i < NREQ; i++) {
            const rec *r = &c.out[i];
            CHECKF(r->finals == 1, "request %d: %lld final events", i, (long long)r->finals);
            pre += r->preemptions;
            if (abort_all) {
                CHECK(r->finish != DSACP_FINISH_NONE);
                continue;
            }
            if (i == TOO_BIG) {
                CHECK(r->finish == DSACP_FINISH_ERROR && r->status == DSACP_ECAPACITY && r->n == 0);
                continue;
            }
            if (i == ABORTED) {
                CHECKF(r->finish == DSACP_FINISH_ABORT && r->n == 3, "aborted: finish %d after %lld tokens", r->finish,
                       (long long)r->n);
                continue;
            }
            dsacp_serve_result ref = {0};
            reference(m, &c, i, &ref);
            const dsacp_serve_out *o = &ref.out[0];
            bool same = o->n_tokens == r->n;
            for (int64_t t = 0; same && t < r->n; t++) same = o->tokens[t] == r->tokens[t];
            CHECKF(same, "W=%d request %d: %lld tokens online, %lld alone, or different ids", g_W, i, (long long)r->n,
                   (long long)o->n_tokens);
            const dsacp_finish want = i == 1 ? DSACP_FINISH_STOP : DSACP_FINISH_LENGTH;
            CHECKF(r->finish == want, "request %d: finish %d, want %d", i, r->finish, want);
            dsacp_serve_result_free(&ref);
        }
        g_preemptions += pre;
    }
    dsacp_live_free(c.lv);
    dsacp_engine_free(e);
    for (int i = 0; i < NREQ; i++) free(c.rq[i].prompt);
    pthread_mutex_destroy(&c.mu);
    pthread_cond_destroy(&c.cv);
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
    /* Request 1 stops at its third greedy token (found by a reference run). */
    int32_t stop = -1;
    if (g_rank == 0) {
        client c = {0};
        make_workload(dsacp_model_config(m)->vocab_size, &c);
        dsacp_serve_result ref = {0};
        reference(m, &c, 1, &ref);
        stop = ref.out[0].tokens[2];
        dsacp_serve_result_free(&ref);
        for (int i = 0; i < NREQ; i++) free(c.rq[i].prompt);
    }
    REQUIRE_OK(dsacp_comm_bcast(g_world, &stop, sizeof stop, DSACP_PHASE_input));
    test_case(m, DSACP_CP_DCP, DSACP_DECODE_EXACT_TOPK, 1, false, &stop);
    if (g_W > 1) {
        test_case(m, DSACP_CP_DCP, DSACP_DECODE_ALLGATHER_KV, 3, false, &stop);
        test_case(m, DSACP_CP_DSA_CP, DSACP_DECODE_ALLGATHER_KV, 1, false, &stop);
    }
    test_case(m, DSACP_CP_DCP, DSACP_DECODE_EXACT_TOPK, 1, true, &stop);
    if (g_rank == 0) CHECKF(g_preemptions > 0, "W=%d: no preemption in the small pools", g_W);
    dsacp_model_free(m);
    REQUIRE_OK(dsacp_comm_agree(g_world, DSACP_OK));
    if (g_rank == 0) tu_rmtree(dir);
    dsacp_comm_free(g_world);
    return test_finish("test_cp_live");
}
