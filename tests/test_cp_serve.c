/*
 * test_cp_serve.c -- the serving scheduler's guarantee under context parallelism (run alone as
 * W = 1 and under mpirun with W = 2, 3, 4 by CTest): random workloads in pools where each rank
 * holds just enough blocks for the largest request's share on that rank (blocks are per rank;
 * the share depends on the layouts and the interleave) all complete, every request with the greedy
 * tokens it gets alone on one process. Layouts: DCP sharded caches (I = 1), allgather-kv with
 * I = 3, replicated-index (replicated index keys, sharded latents, I = 2) and DSA-CP with
 * replicated caches. docs/serving.md, "Preemption, and why every request finishes".
 */
#include "test.h"
#include "dsacp_cp.h"
#include "engine/engine.h"
#include "ref/test_util.h"
#include "serve/serve.h"

#include <stdint.h>

enum { MAXREQ = 8 };

static dsacp_comm *g_world;
static int g_rank, g_W;

typedef struct cp_case {
    const char *name;
    dsacp_cp_mode mode;
    dsacp_decode_strategy dec;
    dsacp_cp_layout kv, idx;
    int64_t I;
} cp_case;

static int64_t kept(dsacp_cp_layout layout, int64_t L, int64_t q, int64_t I)
{
    return g_W == 1 || layout == DSACP_LAYOUT_REPLICATED ? L : dsacp_cp_local_len(L, q, I, g_W);
}

/* The fewest blocks per rank that hold each request's share alone (its cached length: prompt +
 * output - 1), over every rank and both caches. */
static int64_t min_pool(const cp_case *c, const dsacp_serve_request *rq, int64_t n, int64_t B)
{
    int64_t m = 0;
    for (int64_t i = 0; i < n; i++)
        for (int64_t q = 0; q < g_W; q++) {
            const int64_t L = rq[i].prompt_len + rq[i].max_new_tokens - 1;
            const int64_t a = (kept(c->kv, L, q, c->I) + B - 1) / B, b = (kept(c->idx, L, q, c->I) + B - 1) / B;
            if (a > m) m = a;
            if (b > m) m = b;
        }
    return m;
}

static void test_case(const dsacp_model *m, const cp_case *c, uint64_t seed, int64_t *preemptions)
{
    const int64_t V = dsacp_model_config(m)->vocab_size;
    static const int64_t block_sizes[] = {1, 4, 8, 16};
    static const int64_t budgets[] = {2, 5, 16, 40, 256};
    dsacp_rng rng;
    dsacp_rng_seed(&rng, seed);
    /* every rank draws the same workload; rank 0 passes it */
    dsacp_serve_request rq[MAXREQ] = {{0}};
    const int64_t n = 2 + (int64_t)(dsacp_rng_u64(&rng) % 5), B = block_sizes[dsacp_rng_u64(&rng) % 4];
    const int64_t minp = seed % 2 ? 20 : 1;
    for (int64_t i = 0; i < n; i++) {
        rq[i].prompt_len = minp + (int64_t)(dsacp_rng_u64(&rng) % (uint64_t)(60 - minp + 1));
        rq[i].max_new_tokens = 1 + (int64_t)(dsacp_rng_u64(&rng) % 6);
        rq[i].prompt = malloc((size_t)rq[i].prompt_len * sizeof *rq[i].prompt);
        for (int64_t j = 0; j < rq[i].prompt_len; j++) rq[i].prompt[j] = (int32_t)(dsacp_rng_u64(&rng) % (uint64_t)V);
    }
    dsacp_serve_options so;
    dsacp_serve_options_default(&so);
    so.realtime = false;
    so.max_batch_tokens = budgets[dsacp_rng_u64(&rng) % 5];
    dsacp_engine_options eo;
    dsacp_engine_options_default(&eo);
    eo.block_size = B;
    const int64_t least = min_pool(c, rq, n, B);
    eo.num_blocks = least + (seed % 3 == 0 ? 1 : 0);
    dsacp_cp_options cp;
    dsacp_cp_options_default(&cp);
    cp.mode = c->mode, cp.decode = c->dec, cp.kv_layout = c->kv, cp.index_layout = c->idx, cp.interleave = c->I;
    if (c->mode == DSACP_CP_DSA_CP) cp.prefill_split = DSACP_PREFILL_CONTIGUOUS;
    char what[200];
    snprintf(what, sizeof what, "W=%d %s seed %llu (%lld requests, block %lld, pool %lld per rank (least %lld), budget %lld)",
             g_W, c->name, (unsigned long long)seed, (long long)n, (long long)B, (long long)eo.num_blocks, (long long)least,
             (long long)so.max_batch_tokens);
    dsacp_engine *e = NULL;
    REQUIRE_OK(dsacp_engine_create_cp(m, &eo, &cp, g_world, &e));
    dsacp_serve_result res;
    int rc = dsacp_serve_run(e, g_rank == 0 ? rq : NULL, g_rank == 0 ? n : 0, &so, &res);
    CHECKF(rc == DSACP_OK, "%s: %s (%s)", what, dsacp_status_name(rc), dsacp_last_error());
    dsacp_engine_free(e);
    if (g_rank == 0 && rc == DSACP_OK) {
        *preemptions += res.preemptions;
        /* each request alone on one process, in a pool of its own */
        dsacp_serve_options alone = so;
        alone.max_batch_tokens = 4096;
        for (int64_t i = 0; i < n; i++) {
            dsacp_engine_options so_eo = eo;
            so_eo.num_blocks = (rq[i].prompt_len + rq[i].max_new_tokens + B - 1) / B + 1;
            dsacp_engine *solo = NULL;
            dsacp_serve_result ref;
            REQUIRE_OK(dsacp_engine_create(m, &so_eo, &solo));
            CHECK_OK(dsacp_serve_run(solo, &rq[i], 1, &alone, &ref));
            dsacp_engine_free(solo);
            const dsacp_serve_out *a = &res.out[i], *b = &ref.out[0];
            bool same = a->n_tokens == b->n_tokens && a->n_tokens == rq[i].max_new_tokens;
            for (int64_t k = 0; same && k < a->n_tokens; k++) same = a->tokens[k] == b->tokens[k] && a->gap[k] >= 0;
            CHECKF(same, "%s: request %lld (prompt %lld, max_new %lld): %lld tokens, alone %lld, or a token differs", what,
                   (long long)i, (long long)rq[i].prompt_len, (long long)rq[i].max_new_tokens, (long long)a->n_tokens,
                   (long long)b->n_tokens);
            CHECK(a->arrival_s == 0 && a->first_s >= a->arrival_s && a->finish_s >= a->first_s);
            dsacp_serve_result_free(&ref);
        }
    }
    dsacp_serve_result_free(&res);
    for (int64_t i = 0; i < n; i++) free(rq[i].prompt);
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
    static const cp_case cases[] = {
        {"dcp exact-topk sharded I=1", DSACP_CP_DCP, DSACP_DECODE_EXACT_TOPK, DSACP_LAYOUT_SHARDED, DSACP_LAYOUT_SHARDED, 1},
        {"dcp allgather-kv sharded I=3", DSACP_CP_DCP, DSACP_DECODE_ALLGATHER_KV, DSACP_LAYOUT_SHARDED, DSACP_LAYOUT_SHARDED, 3},
        {"dcp replicated-index I=2", DSACP_CP_DCP, DSACP_DECODE_REPLICATED_INDEX, DSACP_LAYOUT_SHARDED, DSACP_LAYOUT_REPLICATED, 2},
        {"dsa-cp replicated", DSACP_CP_DSA_CP, DSACP_DECODE_ALLGATHER_KV, DSACP_LAYOUT_REPLICATED, DSACP_LAYOUT_REPLICATED, 1},
    };
    int64_t preemptions = 0;
    const int per_case = 6;
    for (int c = 0; c < 4; c++)
        for (int k = 0; k < per_case; k++) test_case(m, &cases[c], 100 * (uint64_t)c + (uint64_t)k, &preemptions);
    if (g_rank == 0) {
        printf("W=%d: %d workloads served in the smallest pools, %lld preemptions\n", g_W, 4 * per_case, (long long)preemptions);
        CHECK(preemptions > 0);
    }
    dsacp_model_free(m);
    REQUIRE_OK(dsacp_comm_agree(g_world, DSACP_OK));
    if (g_rank == 0) tu_rmtree(dir);
    dsacp_comm_free(g_world);
    return test_finish("test_cp_serve");
}
