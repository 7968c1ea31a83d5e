/*
 * test_cp_memory.c -- what a rank holds and how the group refuses: the sharded KV memory per
 * rank against W = 1, layer-shard ranks never touching the weights they do not own, conflicting
 * options refused on every rank, and one rank's failure failing the step everywhere.
 */
#include "test_cp_util.h"

/* ---- layer-shard: ranks never read the weights they do not own ---- */

#include <fcntl.h>
#include <unistd.h>

/* Pages of [p, p + n) mapped into this process (/proc/self/pagemap bit 63), leaving out `edge`
 * bytes at each end (the kernel maps a few neighbouring pages around a fault). -1 if unreadable. */
static int64_t pages_present(const void *p, size_t n, size_t edge)
{
    const long ps = sysconf(_SC_PAGESIZE);
    uintptr_t a = ((uintptr_t)p + edge + (uintptr_t)ps - 1) / (uintptr_t)ps, b = ((uintptr_t)p + n - edge) / (uintptr_t)ps;
    if (n <= 2 * edge || b <= a) return 0;
    int fd = open("/proc/self/pagemap", O_RDONLY);
    if (fd < 0) return -1;
    int64_t present = 0;
    for (uintptr_t pg = a; pg < b; pg++) {
        uint64_t e = 0;
        if (pread(fd, &e, sizeof e, (off_t)(pg * sizeof e)) != (ssize_t)sizeof e) {
            present = -1;
            break;
        }
        present += (int64_t)(e >> 63);
    }
    close(fd);
    return present;
}

static void test_layer_shard_resident(void)
{
    dsacp_config c;
    REQUIRE_OK(dsacp_preset_config("tiny", &c));
    c.num_hidden_layers = 4;
    c.num_attention_heads = 8;
    c.q_lora_rank = 512;
    c.qk_nope_head_dim = 64;
    c.v_head_dim = 64;
    char *dir = NULL;
    dsacp_model *m = shared_model_cfg(&dir, &c, 3, DSACP_WEIGHTS_F32);
    dsacp_cp_options cp;
    dsacp_cp_options_default(&cp);
    cp.mode = DSACP_CP_DSA_CP, cp.prefill_split = DSACP_PREFILL_CONTIGUOUS;
    cp.kv_layout = cp.index_layout = DSACP_LAYOUT_REPLICATED;
    cp.q_proj = cp.o_proj = DSACP_WEIGHTS_LAYER_SHARD;
    dsacp_engine_options eo;
    dsacp_engine_options_default(&eo);
    eo.num_blocks = 16;
    dsacp_engine *e = NULL;
    REQUIRE_OK(dsacp_engine_create_cp(m, &eo, &cp, g_world, &e));
    int64_t id;
    REQUIRE_OK(dsacp_engine_add_request(e, &id));
    for (int s = 0; s < 2; s++) {
        dsacp_step_entry en = {id, s ? 1 : 40, g_ids[0]};
        CHECK_OK(dsacp_engine_step(e, &en, 1, NULL, NULL));
    }
    int64_t own = 0, other = 0;
    for (int64_t l = 0; l < c.num_hidden_layers; l++) {
        for (int k = 0; k < 2; k++) {
            char n[128];
            snprintf(n, sizeof n, "model.layers.%lld.self_attn.%s.weight", (long long)l, k ? "o_proj" : "q_b_proj");
            const dsacp_weight *w = dsacp_model_weight(m, n);
            const int64_t pr = pages_present(w->data, (size_t)(w->rows * w->cols) * 4, 128 * 1024);
            if (pr < 0) continue; /* no pagemap here: nothing to check */
            if (l % g_W == g_rank || g_W == 1) own += pr;
            else other += pr;
        }
    }
    CHECKF(other == 0, "W=%d rank %d: %lld pages of q_b_proj/o_proj of layers it does not own were read", g_W, g_rank,
           (long long)other);
    CHECKF(own > 0, "W=%d rank %d: its own layers' weights show no resident page (the check sees nothing)", g_W, g_rank);
    if (g_rank == 0)
        printf("layer-shard W=%d rank 0: %lld resident pages of its own layers' q_b_proj/o_proj, %lld of the others'\n",
               g_W, (long long)own, (long long)other);
    dsacp_engine_free(e);
    drop_model(m, dir);
}

/* ---- KV memory per rank ---- */

static void test_memory(const dsacp_model *m)
{
    const dsacp_config *cfg = dsacp_model_config(m);
    dsacp_engine_options eo;
    dsacp_engine_options_default(&eo);
    eo.block_size = 16;
    eo.num_blocks = 256;
    const int64_t lens[3] = {1000, 333, 77};
    int64_t used[2][2] = {{0}};
    for (int mode = 0; mode < 2; mode++) {
        dsacp_engine *e = NULL;
        if (mode == 0) REQUIRE_OK(dsacp_engine_create(m, &eo, &e));
        else REQUIRE_OK(dsacp_engine_create_cp(m, &eo, NULL, g_world, &e));
        for (int r = 0; r < 3; r++) {
            int64_t id;
            REQUIRE_OK(dsacp_engine_add_request(e, &id));
            int32_t *ids = malloc((size_t)lens[r] * 4);
            tu_random_ids(ids, lens[r], cfg->vocab_size, 77 + (uint64_t)r);
            for (int64_t off = 0; off < lens[r]; off += 250) {
                dsacp_step_entry en = {id, lens[r] - off < 250 ? lens[r] - off : 250, ids + off};
                CHECK_OK(dsacp_engine_step(e, &en, 1, NULL, NULL));
            }
            free(ids);
        }
        dsacp_kv_usage u;
        dsacp_engine_kv_usage(e, &u);
        used[mode][0] = u.latent_used_bytes;
        used[mode][1] = u.index_used_bytes;
        dsacp_engine_free(e);
    }
    const int64_t L = cfg->num_hidden_layers;
    const int64_t blk = eo.block_size * L *
                        (dsacp_mla_cache_bytes_per_token(cfg, DSACP_KV_F32) + dsacp_index_cache_bytes_per_token(cfg, DSACP_KV_F32));
    const double bound = 1.05 * (double)(used[0][0] + used[0][1]) / g_W + 3.0 * (double)blk;
    const double have = (double)(used[1][0] + used[1][1]);
    CHECKF(have <= bound, "W=%d rank %d: KV bytes %.0f > 1.05 x %lld / W + one block per request (%.0f)", g_W, g_rank,
           have, (long long)(used[0][0] + used[0][1]), bound);
    if (g_rank == 0)
        printf("memory W=%d: sharded KV bytes on rank 0 %.0f vs W=1 %lld (ratio %.3f of 1/W)\n", g_W, have,
               (long long)(used[0][0] + used[0][1]), have * g_W / (double)(used[0][0] + used[0][1]));
}

/* ---- conflicting options fail cleanly on every rank ---- */

/* A failure on one rank fails the step on every rank, with that rank's message, and changes
 * nothing: here the last rank's pool is too small for a step the others could take. */
static void test_one_rank_fails(const dsacp_model *m)
{
    if (g_W == 1) return;
    dsacp_engine_options eo;
    dsacp_engine_options_default(&eo);
    eo.block_size = 16;
    eo.num_blocks = g_rank == g_W - 1 ? 1 : 64;
    dsacp_engine *e = NULL;
    REQUIRE_OK(dsacp_engine_create_cp(m, &eo, NULL, g_world, &e));
    int64_t id;
    REQUIRE_OK(dsacp_engine_add_request(e, &id));
    dsacp_step_entry en = {id, 70, g_ids[0]}; /* 70 tokens: more than one block on every rank */
    int rc = dsacp_engine_step(e, &en, 1, NULL, NULL);
    char want[32];
    snprintf(want, sizeof want, "rank %d:", g_W - 1);
    CHECKF(rc == DSACP_ECAPACITY, "W=%d rank %d: step status %s", g_W, g_rank, dsacp_status_name(rc));
    if (g_rank != g_W - 1)
        CHECKF(strstr(dsacp_last_error(), want) != NULL, "rank %d: message '%s' does not name the failing rank",
               g_rank, dsacp_last_error());
    CHECK(dsacp_engine_request_length(e, id) == 0); /* nothing changed */
    /* The group goes on: a step every rank can take succeeds. */
    dsacp_step_entry small = {id, 8, g_ids[0]};
    CHECK_OK(dsacp_engine_step(e, &small, 1, NULL, NULL));
    dsacp_engine_free(e);
}

static void test_bad_options(const dsacp_model *m)
{
    dsacp_cp_options cp;
    dsacp_cp_options_default(&cp);
    dsacp_engine *e = NULL;
    cp.interleave = 0;
    CHECK(dsacp_engine_create_cp(m, NULL, &cp, g_world, &e) == DSACP_EINVAL && !e);
    dsacp_cp_options_default(&cp);
    cp.decode = DSACP_DECODE_REPLICATED_INDEX; /* needs a replicated index cache when W > 1 */
    int rc = dsacp_engine_create_cp(m, NULL, &cp, g_world, &e);
    CHECK(g_W == 1 ? rc == DSACP_OK : rc == DSACP_EINVAL);
    dsacp_engine_free(e);
    e = NULL;
    dsacp_cp_options_default(&cp); /* allgather-blocks: the interleave must be the block size */
    REQUIRE_OK(dsacp_decode_strategy_parse("allgather-blocks", &cp.decode));
    CHECK(dsacp_engine_create_cp(m, NULL, &cp, g_world, &e) == DSACP_EINVAL && !e &&
          strstr(dsacp_last_error(), "interleave equal to block_size"));
}

int main(int argc, char **argv)
{
    cp_test_begin(&argc, &argv);
    char *dir = NULL;
    dsacp_engine_options eo;
    dsacp_model *m = cp_test_tiny(&dir, &eo);
    test_memory(m);
    test_layer_shard_resident();
    test_bad_options(m);
    test_one_rank_fails(m);
    drop_model(m, dir);
    return cp_test_end("test_cp_memory");
}
