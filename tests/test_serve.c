/*
 * test_serve.c -- the serving scheduler (src/serve, docs/serving.md) on one process:
 *   - progress: many random workloads (prompt and output lengths, stop ids, token budgets,
 *     max_num_seqs, block sizes, pools from just enough for the largest request upward) must all
 *     complete, every request with the greedy tokens (and top-2 gaps) it gets when run alone --
 *     the scheduler may reorder, chunk, preempt and recompute, never change a token or give up;
 *   - issue 20's two deadlocks (requests stuck mid-prompt blocking each other), exactly;
 *   - the up-front check (dsacp_serve_check) counts the tokens a request caches (prompt +
 *     output - 1) and refuses bad options and requests before anything runs;
 *   - the clock: arrival on the run's clock is arrival_s when realtime, 0 when replayed, and
 *     arrival_s <= first_s <= finish_s always;
 *   - gap: top-1 minus top-2 logit of each generated token, from the logits the engine computes.
 * The contexts under mpirun are tests/test_cp_serve.c's.
 */
#include "test.h"
#include "engine/engine.h"
#include "ref/test_util.h"
#include "serve/serve.h"

#include <stdint.h>

static dsacp_model *g_model;
static int64_t g_vocab;

typedef struct workload {
    dsacp_serve_request rq[16];
    int32_t stop[16];
    int64_t n, block_size, num_blocks;
    dsacp_serve_options opt;
} workload;

static void workload_free(workload *w)
{
    for (int64_t i = 0; i < w->n; i++) free(w->rq[i].prompt);
}

/* An empty replayed workload (realtime off) over pools of num_blocks blocks of block_size, and
 * its prompts' generator seeded with `seed`. */
static void workload_start(workload *w, dsacp_rng *rng, uint64_t seed, int64_t block_size, int64_t num_blocks)
{
    *w = (workload){0};
    dsacp_rng_seed(rng, seed);
    dsacp_serve_options_default(&w->opt);
    w->opt.realtime = false;
    w->block_size = block_size, w->num_blocks = num_blocks;
}

static int64_t blocks_for(int64_t tokens, int64_t B) { return (tokens + B - 1) / B; }

/* The fewest blocks that hold each request alone (the last output token is never cached). */
static int64_t min_pool(const workload *w)
{
    int64_t m = 0;
    for (int64_t i = 0; i < w->n; i++) {
        const int64_t b = blocks_for(w->rq[i].prompt_len + w->rq[i].max_new_tokens - 1, w->block_size);
        if (b > m) m = b;
    }
    return m;
}

static int make_engine(int64_t block_size, int64_t num_blocks, dsacp_engine **e)
{
    dsacp_engine_options eo;
    dsacp_engine_options_default(&eo);
    eo.block_size = block_size;
    eo.num_blocks = num_blocks;
    return dsacp_engine_create(g_model, &eo, e);
}

static int serve(const workload *w, int64_t num_blocks, const dsacp_serve_request *rq, int64_t n,
                 const dsacp_serve_options *opt, dsacp_serve_result *res)
{
    dsacp_engine *e = NULL;
    int rc = make_engine(w->block_size, num_blocks, &e);
    if (!rc) rc = dsacp_serve_run(e, rq, n, opt, res);
    dsacp_engine_free(e);
    return rc;
}

/* The clock's invariants on one request's record. */
static void check_clock(const dsacp_serve_out *o, const char *what, int64_t i)
{
    CHECKF(o->n_tokens >= 1 && o->first_s >= o->arrival_s && o->finish_s >= o->first_s && o->token_s[0] == o->first_s &&
               o->token_s[o->n_tokens - 1] == o->finish_s,
           "%s request %lld: arrival %.6f first %.6f finish %.6f", what, (long long)i, o->arrival_s, o->first_s, o->finish_s);
    for (int64_t k = 1; k < o->n_tokens; k++) CHECK(o->token_s[k] >= o->token_s[k - 1]);
    for (int64_t k = 0; k < o->n_tokens; k++)
        CHECKF(o->gap[k] >= 0, "%s request %lld token %lld: gap %g", what, (long long)i, (long long)k, o->gap[k]);
}

/* Serves the workload in its pool and checks every request against the same request run alone in
 * a pool of its own (greedy: the tokens and gaps must be bit-identical, by batch invariance). */
static void check_workload(const workload *w, const char *what, int64_t *preemptions)
{
    dsacp_serve_result res;
    int rc = serve(w, w->num_blocks, w->rq, w->n, &w->opt, &res);
    CHECKF(rc == DSACP_OK, "%s: %s (%s)", what, dsacp_status_name(rc), dsacp_last_error());
    if (rc) return;
    CHECK(res.n_requests == w->n);
    *preemptions += res.preemptions;
    dsacp_serve_options alone = w->opt;
    alone.max_batch_tokens = 4096, alone.max_num_seqs = 1;
    for (int64_t i = 0; i < w->n; i++) {
        dsacp_serve_result ref;
        const int64_t big = blocks_for(w->rq[i].prompt_len + w->rq[i].max_new_tokens, w->block_size) + 1;
        rc = serve(w, big, &w->rq[i], 1, &alone, &ref);
        CHECKF(rc == DSACP_OK, "%s request %lld alone: %s", what, (long long)i, dsacp_last_error());
        if (rc) continue;
        const dsacp_serve_out *a = &res.out[i], *b = &ref.out[0];
        bool same = a->n_tokens == b->n_tokens;
        for (int64_t k = 0; same && k < a->n_tokens; k++) same = a->tokens[k] == b->tokens[k] && a->gap[k] == b->gap[k];
        CHECKF(same, "%s request %lld (prompt %lld, max_new %lld): %lld tokens, alone %lld, or a token/gap differs", what,
               (long long)i, (long long)w->rq[i].prompt_len, (long long)w->rq[i].max_new_tokens, (long long)a->n_tokens,
               (long long)b->n_tokens);
        bool stopped = a->n_tokens == w->rq[i].max_new_tokens;
        for (int64_t k = 0; k < w->rq[i].n_stop; k++) stopped |= a->tokens[a->n_tokens - 1] == w->rq[i].stop_ids[k];
        CHECKF(stopped, "%s request %lld ended early", what, (long long)i);
        CHECK(a->arrival_s == 0); /* replayed */
        check_clock(a, what, i);
        dsacp_serve_result_free(&ref);
    }
    dsacp_serve_result_free(&res);
}

static void add_request(workload *w, int64_t prompt_len, int64_t max_new, dsacp_rng *rng)
{
    dsacp_serve_request *r = &w->rq[w->n++];
    r->prompt_len = prompt_len;
    r->max_new_tokens = max_new;
    r->prompt = malloc((size_t)prompt_len * sizeof *r->prompt);
    for (int64_t j = 0; j < prompt_len; j++) r->prompt[j] = (int32_t)(dsacp_rng_u64(rng) % (uint64_t)g_vocab);
}

/* The property: random workloads, each in a pool from the smallest that holds its largest
 * request alone upward. */
static void test_random_workloads(void)
{
    static const int64_t block_sizes[] = {1, 2, 4, 8, 16, 32};
    static const int64_t budgets[] = {1, 2, 3, 5, 8, 13, 24, 47, 100, 256};
    int64_t preemptions = 0, minimal = 0;
    const int N = getenv("TEST_SERVE_N") ? atoi(getenv("TEST_SERVE_N")) : 120;
    for (int t = 0; t < N; t++) {
        dsacp_rng rng;
        dsacp_rng_seed(&rng, 1000 + (uint64_t)t);
        workload w = {0};
        dsacp_serve_options_default(&w.opt);
        w.opt.realtime = false;
        w.block_size = block_sizes[dsacp_rng_u64(&rng) % 6];
        /* prompts of up to 12, 48 or 110 tokens, or long ones only (55..110: a few fill the pool) */
        const int64_t kind = t % 4, n = kind == 3 ? 2 + (int64_t)(dsacp_rng_u64(&rng) % 7) : 1 + (int64_t)(dsacp_rng_u64(&rng) % 6);
        const int64_t minp = kind == 3 ? 55 : 1, maxp = kind == 0 ? 12 : kind == 1 ? 48 : 110;
        for (int64_t i = 0; i < n; i++) {
            const int64_t len = minp + (int64_t)(dsacp_rng_u64(&rng) % (uint64_t)(maxp - minp + 1));
            add_request(&w, len, 1 + (int64_t)(dsacp_rng_u64(&rng) % 10), &rng); /* draws in this order on every compiler */
            w.rq[i].arrival_s = (double)(dsacp_rng_u64(&rng) % 4); /* replayed: only orders the queue */
            if (dsacp_rng_u64(&rng) % 4 == 0) {
                w.stop[i] = (int32_t)(dsacp_rng_u64(&rng) % (uint64_t)g_vocab);
                w.rq[i].stop_ids = &w.stop[i], w.rq[i].n_stop = 1;
            }
        }
        /* long prompts with large budgets in tight pools: several requests admitted mid-prompt */
        w.opt.max_batch_tokens = kind == 3 ? budgets[7 + dsacp_rng_u64(&rng) % 3] : budgets[dsacp_rng_u64(&rng) % 10];
        if (dsacp_rng_u64(&rng) % 4 == 0) w.opt.max_num_seqs = 1 + (int64_t)(dsacp_rng_u64(&rng) % 3);
        const int64_t m = min_pool(&w), extra = dsacp_rng_u64(&rng) % 3;
        w.num_blocks = m + (t % 2 == 0 || kind == 3 ? (int64_t)(extra / 2) : extra == 0 ? 1 : extra == 1 ? m / 2 : 2 * m);
        minimal += w.num_blocks == m;
        char what[160];
        snprintf(what, sizeof what, "workload %d (%lld requests, block %lld, pool %lld (min %lld), budget %lld, seqs %lld)", t,
                 (long long)n, (long long)w.block_size, (long long)w.num_blocks, (long long)m,
                 (long long)w.opt.max_batch_tokens, (long long)w.opt.max_num_seqs);
        const double t0 = dsacp_now();
        check_workload(&w, what, &preemptions);
        if (getenv("TEST_SERVE_TIMES")) printf("%s: %.3f s\n", what, dsacp_now() - t0);
        workload_free(&w);
    }
    printf("random workloads: %d served (%lld in the smallest pool), %lld preemptions in all\n", N, (long long)minimal,
           (long long)preemptions);
    CHECK(preemptions > 0); /* the pools were small enough to preempt */
}

/* Issue 20 item 2, exactly: one 32-token prompt (1 new token) and two 90-token prompts (2 each),
 * block 16, 6 blocks, budget 256; and `dsacp run --requests 10 --prompt-len 32:300 --gen-len 1:16
 * --kv-blocks 8 --max-batch-tokens 200 --block-size 32 --seed 19` (the CLI's synthetic draw:
 * lengths then ids from one generator seeded with 19). Both failed with "no request can be
 * scheduled" when two requests mid-prompt held the pool between them. */
static void test_issue_cases(void)
{
    int64_t pre = 0;
    workload w;
    dsacp_rng rng;
    workload_start(&w, &rng, 5, 16, 6);
    w.opt.max_batch_tokens = 256;
    add_request(&w, 32, 1, &rng);
    add_request(&w, 90, 2, &rng);
    add_request(&w, 90, 2, &rng);
    check_workload(&w, "issue case 1", &pre);
    workload_free(&w);

    memset(&w, 0, sizeof w);
    dsacp_serve_options_default(&w.opt);
    w.opt.realtime = false;
    w.opt.max_batch_tokens = 200;
    w.block_size = 32, w.num_blocks = 8;
    dsacp_rng_seed(&rng, 19);
    for (int i = 0; i < 10; i++) {
        dsacp_serve_request *r = &w.rq[w.n++];
        r->prompt_len = 32 + (int64_t)(dsacp_rng_u64(&rng) % 269);
        r->max_new_tokens = 1 + (int64_t)(dsacp_rng_u64(&rng) % 16);
        r->prompt = malloc((size_t)r->prompt_len * sizeof *r->prompt);
        for (int64_t j = 0; j < r->prompt_len; j++) r->prompt[j] = (int32_t)(dsacp_rng_u64(&rng) % (uint64_t)g_vocab);
    }
    CHECK(min_pool(&w) <= 8); /* each fits alone, as the issue's run had checked */
    check_workload(&w, "issue case 2", &pre);
    workload_free(&w);
}

/* The pool check counts the tokens a request caches: prompt + output - 1 (the last output token
 * is never fed). 31 + 2 tokens in 2 blocks of 16 fit; 32 + 2 do not, and fail naming request 1. */
static void test_fits_alone(void)
{
    workload w;
    dsacp_rng rng;
    workload_start(&w, &rng, 8, 16, 2);
    add_request(&w, 31, 2, &rng);
    int64_t pre = 0;
    check_workload(&w, "exactly the pool", &pre);
    add_request(&w, 32, 2, &rng);
    dsacp_serve_result res;
    const int rc = serve(&w, 2, w.rq, 2, &w.opt, &res);
    CHECKF(rc == DSACP_ECAPACITY && strstr(dsacp_last_error(), "request 1 "), "%s: %s", dsacp_status_name(rc), dsacp_last_error());
    w.opt.max_batch_tokens = 0;
    CHECK(serve(&w, 8, w.rq, 1, &w.opt, &res) == DSACP_EINVAL);
    w.opt.max_batch_tokens = 16, w.opt.max_num_seqs = 0;
    CHECK(serve(&w, 8, w.rq, 1, &w.opt, &res) == DSACP_EINVAL);
    w.opt.max_num_seqs = 4;
    /* dsacp_serve_check: the same verdicts before any run, without overflow on absurd sizes */
    dsacp_engine *e = NULL;
    REQUIRE_OK(make_engine(16, 2, &e));
    CHECK_OK(dsacp_serve_check(e, w.rq, 1, &w.opt));
    CHECK(dsacp_serve_check(e, w.rq, 2, &w.opt) == DSACP_ECAPACITY);
    CHECK(dsacp_serve_check(e, w.rq, 0, &w.opt) == DSACP_EINVAL);
    dsacp_serve_request bad = w.rq[0];
    bad.max_new_tokens = INT64_MAX;
    CHECK(dsacp_serve_check(e, &bad, 1, &w.opt) == DSACP_ERANGE);
    bad = w.rq[0], bad.arrival_s = NAN;
    CHECK(dsacp_serve_check(e, &bad, 1, &w.opt) == DSACP_ERANGE);
    bad = w.rq[0], bad.n_stop = 1;
    CHECK(dsacp_serve_check(e, &bad, 1, &w.opt) == DSACP_EINVAL);
    int32_t outside[2] = {1, (int32_t)g_vocab};
    bad = w.rq[0], bad.prompt = outside, bad.prompt_len = 2;
    CHECK(dsacp_serve_check(e, &bad, 1, &w.opt) == DSACP_ERANGE && strstr(dsacp_last_error(), "vocabulary"));
    dsacp_serve_options o2 = w.opt;
    o2.temperature = -1;
    CHECK(dsacp_serve_check(e, w.rq, 1, &o2) == DSACP_EINVAL);
    o2 = w.opt, o2.top_p = 0;
    CHECK(dsacp_serve_check(e, w.rq, 1, &o2) == DSACP_EINVAL);
    dsacp_engine_free(e);
    workload_free(&w);
}

/* The clock (issue 20 item 7): replayed, every request is present at the start (arrival 0 on the
 * run's clock, however late its arrival_s); realtime, it arrives at arrival_s. first_s >=
 * arrival_s in both. */
static void test_clock(void)
{
    static const double arrivals[3] = {100.0, 0.0, 3.5};
    workload w = {0};
    dsacp_rng rng;
    dsacp_rng_seed(&rng, 9);
    dsacp_serve_options_default(&w.opt);
    w.block_size = 16, w.num_blocks = 64;
    for (int i = 0; i < 3; i++) add_request(&w, 5 + i, 3, &rng), w.rq[i].arrival_s = arrivals[i];
    w.opt.realtime = false;
    dsacp_serve_result res;
    CHECK_OK(serve(&w, w.num_blocks, w.rq, w.n, &w.opt, &res));
    for (int64_t i = 0; i < res.n_requests; i++) {
        CHECKF(res.out[i].arrival_s == 0, "replayed request %lld: arrival %g on the run's clock", (long long)i, res.out[i].arrival_s);
        check_clock(&res.out[i], "replayed", i);
    }
    /* arrival order still orders the queue: request 1 (arrival 0) gets its first token first */
    if (res.n_requests == 3) CHECK(res.out[1].first_s <= res.out[2].first_s && res.out[2].first_s <= res.out[0].first_s);
    dsacp_serve_result_free(&res);

    static const double soon[3] = {0.06, 0.0, 0.03};
    for (int i = 0; i < 3; i++) w.rq[i].arrival_s = soon[i];
    w.opt.realtime = true;
    CHECK_OK(serve(&w, w.num_blocks, w.rq, w.n, &w.opt, &res));
    for (int64_t i = 0; i < res.n_requests; i++) {
        CHECKF(res.out[i].arrival_s == soon[i], "realtime request %lld: arrival %g", (long long)i, res.out[i].arrival_s);
        check_clock(&res.out[i], "realtime", i);
    }
    dsacp_serve_result_free(&res);
    workload_free(&w);
}

static int desc_f(const void *a, const void *b)
{
    const float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

/* gap[k] is the top-1 minus top-2 logit of the step that produced token k: the first token's from
 * the prompt's logits, the second's after feeding the first. */
static void test_gap(void)
{
    workload w;
    dsacp_rng rng;
    workload_start(&w, &rng, 11, 16, 16);
    add_request(&w, 20, 2, &rng);
    dsacp_serve_result res;
    CHECK_OK(serve(&w, w.num_blocks, w.rq, 1, &w.opt, &res));
    dsacp_engine *e = NULL;
    REQUIRE_OK(make_engine(16, 16, &e));
    int64_t id;
    REQUIRE_OK(dsacp_engine_add_request(e, &id));
    float *logits = malloc((size_t)g_vocab * sizeof *logits), *sorted = malloc((size_t)g_vocab * sizeof *sorted);
    for (int k = 0; k < 2 && res.n_requests == 1 && res.out[0].n_tokens == 2; k++) {
        const dsacp_step_entry ent = {id, k == 0 ? w.rq[0].prompt_len : 1, k == 0 ? w.rq[0].prompt : &res.out[0].tokens[0]};
        CHECK_OK(dsacp_engine_step_last(e, &ent, 1, logits, NULL));
        memcpy(sorted, logits, (size_t)g_vocab * sizeof *sorted);
        qsort(sorted, (size_t)g_vocab, sizeof *sorted, desc_f);
        CHECKF(res.out[0].gap[k] == sorted[0] - sorted[1] && logits[res.out[0].tokens[k]] == sorted[0],
               "token %d: gap %g, logits say %g", k, res.out[0].gap[k], sorted[0] - sorted[1]);
    }
    free(logits), free(sorted);
    dsacp_engine_free(e);
    dsacp_serve_result_free(&res);
    workload_free(&w);
}

int main(void)
{
    char *dir = tu_make_model("tiny", 21, DSACP_WEIGHTS_F32);
    REQUIRE_OK(dsacp_model_load(dir, &g_model));
    g_vocab = dsacp_model_config(g_model)->vocab_size;
    test_fits_alone();
    test_issue_cases();
    test_clock();
    test_gap();
    test_random_workloads();
    dsacp_model_free(g_model);
    tu_rmtree(dir);
    free(dir);
    return test_finish("test_serve");
}
