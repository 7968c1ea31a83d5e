/*
 * test_cp_kv_import.c -- the relayout against the engine's own layouts (issue 22), run alone and
 * under mpirun with W = 2, 3, 4: for every consumer layout (sharded, replicated, partial:G
 * indexer keys; sharded or replicated latent) and I in {1, 3, block size},
 *   - what dsacp_cp_relayout_holds says rank q keeps is exactly what the engine wrote there
 *     (dsacp_engine_fill_random, compared with a solo engine's entries of the same seed), and
 *     nothing else can be copied;
 *   - a request filled on a "producer" engine of one layout, interleave and block size moves
 *     into an import on a "consumer" engine of another: each rank packs the positions it sends
 *     (dsacp_cp_relayout_sender), the data travels by one all-gather (the test's stand-in for
 *     the link), each rank unpacks what the relayout routes to it -- which is everything it
 *     keeps -- and the import's decode step gives the same logits, bit for bit, as a consumer
 *     engine filled directly; its KV use is the same too.
 * Both engines share the world (one group playing both sides: the routing is what is tested).
 */
#include "test_cp_util.h"
#include "engine/engine_internal.h" /* dsacp_engine_kept_on: what a rank keeps */

enum { SEED = 4242 };

typedef struct layout_case {
    const char *name;
    dsacp_decode_strategy dec;
    dsacp_cp_layout kv, idx;
    bool partial; /* idx partial:G, G = 2 when it divides W, else W */
} layout_case;

static const layout_case cases[] = {
    {"sharded/sharded exact-topk", DSACP_DECODE_EXACT_TOPK, DSACP_LAYOUT_SHARDED, DSACP_LAYOUT_SHARDED, false},
    {"sharded/replicated replicated-index", DSACP_DECODE_REPLICATED_INDEX, DSACP_LAYOUT_SHARDED,
     DSACP_LAYOUT_REPLICATED, false},
    {"replicated/replicated replicated-index", DSACP_DECODE_REPLICATED_INDEX, DSACP_LAYOUT_REPLICATED,
     DSACP_LAYOUT_REPLICATED, false},
    {"sharded/partial exact-topk", DSACP_DECODE_EXACT_TOPK, DSACP_LAYOUT_SHARDED, DSACP_LAYOUT_PARTIAL, true},
    {"sharded/sharded allgather-kv", DSACP_DECODE_ALLGATHER_KV, DSACP_LAYOUT_SHARDED, DSACP_LAYOUT_SHARDED, false},
};
enum { NCASES = sizeof cases / sizeof *cases };

static dsacp_engine *engine_of(const dsacp_model *m, const layout_case *lc, int64_t I, int64_t block)
{
    dsacp_cp_options cp;
    dsacp_cp_options_default(&cp);
    cp.decode = lc->dec;
    cp.kv_layout = lc->kv;
    cp.index_layout = lc->idx;
    cp.index_group = lc->partial ? (g_W % 2 == 0 ? 2 : g_W) : 1;
    cp.interleave = I;
    dsacp_engine_options eo;
    dsacp_engine_options_default(&eo);
    eo.block_size = block;
    eo.num_blocks = 64;
    dsacp_engine *e = NULL;
    REQUIRE_OK(dsacp_engine_create_cp(m, &eo, &cp, g_world, &e));
    return e;
}

/* On this rank: a position copies out of e iff the relayout says it is held here, and then with
 * the bytes the solo engine holds for it. Returns the mismatches. */
static int64_t check_holders(dsacp_engine *e, int64_t id, dsacp_engine *solo, int64_t sid, int64_t n, int64_t L)
{
    dsacp_cp_relayout r = {.Wp = 1, .Ip = 1};
    dsacp_engine_relayout_side(e, false, &r);
    uint8_t a[4096], b[4096];
    int64_t bad = 0;
    for (int kind = 0; kind < 2; kind++)
        for (int64_t p = 0; p < n; p++) {
            const bool holds = dsacp_cp_relayout_holds(&r, kind, p, g_rank);
            for (int64_t l = 0; l < L; l++) {
                const int rc = dsacp_engine_kv_pack(e, id, l, kind, &p, 1, a);
                if ((rc == 0) != holds) bad++;
                if (rc || !holds) continue;
                CHECK_OK(dsacp_engine_kv_pack(solo, sid, l, kind, &p, 1, b));
                bad += memcmp(a, b, (size_t)dsacp_engine_kv_wire_bytes(e, kind)) != 0;
            }
        }
    return bad;
}

/* One layer and kind of request pid on the producer into import cid on the consumer: every rank
 * sends what the relayout makes it send, receives through one all-gather and unpacks what is
 * routed to it. Returns the positions this rank received. */
static int64_t move_layer(dsacp_engine *pe, int64_t pid, dsacp_engine *ce, int64_t cid, const dsacp_cp_relayout *r,
                          int64_t n, int64_t l, int kind)
{
    const int64_t eb = r->latent_bytes > r->index_bytes ? r->latent_bytes : r->index_bytes;
    const int64_t wb = kind == DSACP_KV_LATENT ? r->latent_bytes : r->index_bytes;
    uint8_t *send = calloc((size_t)(n * eb), 1), *recv = malloc((size_t)(g_W * n * eb)), *tmp = malloc((size_t)(n * eb));
    int64_t *pos = malloc((size_t)n * sizeof *pos), got = 0;
    for (int64_t p = 0; p < n; p++)
        if (dsacp_cp_relayout_sender(r, p) == g_rank) CHECK_OK(dsacp_engine_kv_pack(pe, pid, l, kind, &p, 1, send + p * eb));
    CHECK_OK(dsacp_comm_allgather(g_world, send, (size_t)(n * eb), recv, DSACP_PHASE_control));
    for (int64_t src = 0; src < g_W; src++) {
        const int64_t k = dsacp_cp_relayout_positions(r, kind, 0, n, src, g_rank, pos);
        for (int64_t j = 0; j < k; j++) memcpy(tmp + j * wb, recv + (src * n + pos[j]) * eb, (size_t)wb);
        CHECK_OK(dsacp_engine_kv_unpack(ce, cid, l, kind, pos, k, tmp));
        got += k;
    }
    free(send);
    free(recv);
    free(tmp);
    free(pos);
    return got;
}

/* The producer of case pc (interleave Ip, blocks of 16) to the consumer of case cc (Id, blocks of
 * 8), a prompt of n positions; then one decode token on the import and on a consumer filled
 * directly. */
static void check_move(const dsacp_model *m, const layout_case *pc, int64_t Ip, const layout_case *cc, int64_t Id,
                       int64_t n, dsacp_engine *solo, int64_t sid)
{
    const dsacp_config *cfg = dsacp_model_config(m);
    const int64_t L = cfg->num_hidden_layers, V = cfg->vocab_size;
    dsacp_engine *pe = engine_of(m, pc, Ip, 16), *ce = engine_of(m, cc, Id, 8), *ref = engine_of(m, cc, Id, 8);
    int64_t pid, cid, rid;
    REQUIRE_OK(dsacp_engine_add_request(pe, &pid));
    REQUIRE_OK(dsacp_engine_fill_random(pe, pid, n, SEED));
    REQUIRE_OK(dsacp_engine_add_request(ref, &rid));
    REQUIRE_OK(dsacp_engine_fill_random(ref, rid, n, SEED));
    const int64_t hbad = check_holders(pe, pid, solo, sid, n, L) + check_holders(ref, rid, solo, sid, n, L);
    CHECKF(hbad == 0, "W=%d rank %d %s I=%lld / %s I=%lld n=%lld: %lld holder mismatches", g_W, g_rank, pc->name,
           (long long)Ip, cc->name, (long long)Id, (long long)n, (long long)hbad);
    REQUIRE_OK(dsacp_engine_import_begin(ce, n, &cid));
    CHECK(dsacp_engine_kv_use(ce) == dsacp_engine_kv_use(ref));
    dsacp_cp_relayout r;
    dsacp_engine_relayout_side(pe, true, &r);
    dsacp_engine_relayout_side(ce, false, &r);
    for (int kind = 0; kind < 2; kind++) {
        const dsacp_cp_layout lay = kind == DSACP_KV_LATENT ? cc->kv : cc->idx;
        int64_t got = 0;
        for (int64_t l = 0; l < L; l++) got += move_layer(pe, pid, ce, cid, &r, n, l, kind);
        CHECK(got == L * dsacp_engine_kept_on(ce, lay, n, g_rank));
    }
    CHECK_OK(dsacp_engine_import_end(ce, cid));
    const int32_t tok = 7;
    float *la = malloc((size_t)V * sizeof(float)), *lb = malloc((size_t)V * sizeof(float));
    dsacp_step_entry a = {cid, 1, &tok}, b = {rid, 1, &tok};
    CHECK_OK(dsacp_engine_step(ce, &a, 1, la, NULL));
    CHECK_OK(dsacp_engine_step(ref, &b, 1, lb, NULL));
    if (g_rank == 0)
        CHECKF(memcmp(la, lb, (size_t)V * sizeof(float)) == 0, "W=%d %s I=%lld -> %s I=%lld n=%lld: the import "
               "decodes other logits", g_W, pc->name, (long long)Ip, cc->name, (long long)Id, (long long)n);
    free(la);
    free(lb);
    dsacp_engine_free(pe);
    dsacp_engine_free(ce);
    dsacp_engine_free(ref);
}

int main(int argc, char **argv)
{
    cp_test_begin(&argc, &argv);
    char *dir = NULL;
    dsacp_model *m = shared_model(&dir, "tiny", DSACP_WEIGHTS_F32, false);
    /* the entries every rank compares with: a solo engine's fill of the longest prompt */
    const int64_t lens[] = {5, 61};
    dsacp_engine *solo;
    int64_t sid;
    dsacp_engine_options eo;
    dsacp_engine_options_default(&eo);
    eo.block_size = 16;
    eo.num_blocks = 16;
    REQUIRE_OK(dsacp_engine_create(m, &eo, &solo));
    REQUIRE_OK(dsacp_engine_add_request(solo, &sid));
    REQUIRE_OK(dsacp_engine_fill_random(solo, sid, lens[1], SEED));
    const int64_t Is[] = {1, 3, 8};
    int64_t moves = 0;
    for (int c = 0; c < NCASES; c++)
        for (int i = 0; i < 3; i++) {
            const layout_case *pc = &cases[(c + 1 + i) % NCASES];
            check_move(m, pc, Is[(i + 1) % 3] * 2, &cases[c], Is[i], lens[(c + i) % 2], solo, sid);
            moves++;
        }
    if (g_rank == 0)
        printf("kv import W=%d: %lld producer -> consumer moves (every consumer layout, I_d in {1, 3, block size}, "
               "prompts of 5 and 61): holders equal the engine's writes, imports decode identical logits\n", g_W,
               (long long)moves);
    dsacp_engine_free(solo);
    drop_model(m, dir);
    return cp_test_end("test_cp_kv_import");
}
