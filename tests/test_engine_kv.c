/*
 * test_engine_kv.c -- the engine's KV side of a relayout (src/engine/engine_kv.c, issue 22) at
 * W = 1: a prompt prefilled on one engine, packed layer by layer and unpacked into an import on a
 * second engine with another block size, reads back the same bytes for every latent dtype and
 * numerics mode; a step naming the import is refused until import_end; then both engines decode
 * the same logits, bit for bit. Also: the import reserves what a step would (kv_use, fits,
 * DSACP_ECAPACITY changing nothing), pack and unpack refuse positions beyond the reserved
 * blocks, and the layer hook packs a step's new positions before the request's length moves
 * and fails the step when it fails.
 */
#include "test.h"
#include "cp/cp.h"
#include "dsacp.h"
#include "engine/engine.h"
#include "ref/test_util.h"

enum { PROMPT = 37, CHUNK = 5 };

typedef struct kv_mode {
    const char *name;
    dsacp_numerics numerics;
    dsacp_kv_dtype kv;
} kv_mode;

static const kv_mode modes[] = {
    {"exact f32", DSACP_NUMERICS_EXACT, DSACP_KV_F32},
    {"exact bf16", DSACP_NUMERICS_EXACT, DSACP_KV_BF16},
    {"deployed f32", DSACP_NUMERICS_DEPLOYED, DSACP_KV_F32},
    {"deployed bf16", DSACP_NUMERICS_DEPLOYED, DSACP_KV_BF16},
    {"deployed fp8", DSACP_NUMERICS_DEPLOYED, DSACP_KV_FP8},
};

static dsacp_engine *make_engine(const dsacp_model *m, const kv_mode *md, int64_t block, int64_t blocks)
{
    dsacp_engine_options eo;
    dsacp_engine_options_default(&eo);
    eo.numerics = md->numerics;
    eo.kv_dtype = md->kv;
    eo.block_size = block;
    eo.num_blocks = blocks;
    dsacp_engine *e;
    REQUIRE_OK(dsacp_engine_create(m, &eo, &e));
    return e;
}

/* Every layer and kind of positions [0, n) of request a on ea, into request b on eb; then each is
 * read back from eb and compared with ea's bytes. Returns the mismatching entries. */
static int64_t move_prompt(dsacp_engine *ea, int64_t a, dsacp_engine *eb, int64_t b, int64_t n, int64_t layers)
{
    int64_t pos[PROMPT], bad = 0;
    for (int64_t p = 0; p < n; p++) pos[p] = p;
    for (int kind = 0; kind < 2; kind++) {
        const int64_t eb_bytes = dsacp_engine_kv_wire_bytes(ea, kind);
        CHECK(eb_bytes == dsacp_engine_kv_wire_bytes(eb, kind));
        uint8_t *x = malloc((size_t)(n * eb_bytes)), *y = malloc((size_t)(n * eb_bytes));
        for (int64_t l = 0; l < layers; l++) {
            CHECK_OK(dsacp_engine_kv_pack(ea, a, l, kind, pos, n, x));
            CHECK_OK(dsacp_engine_kv_unpack(eb, b, l, kind, pos, n, x));
            CHECK_OK(dsacp_engine_kv_pack(eb, b, l, kind, pos, n, y));
            for (int64_t p = 0; p < n; p++) bad += memcmp(x + p * eb_bytes, y + p * eb_bytes, (size_t)eb_bytes) != 0;
        }
        free(x);
        free(y);
    }
    return bad;
}

static void test_roundtrip(const dsacp_model *m, const kv_mode *md)
{
    const dsacp_config *cfg = dsacp_model_config(m);
    const int64_t V = cfg->vocab_size, L = cfg->num_hidden_layers;
    int32_t ids[PROMPT + 1];
    tu_random_ids(ids, PROMPT + 1, V, 91);
    dsacp_engine *ea = make_engine(m, md, 16, 16), *eb = make_engine(m, md, 8, 32);
    int64_t a, b;
    REQUIRE_OK(dsacp_engine_add_request(ea, &a));
    dsacp_step_entry en = {a, PROMPT, ids};
    REQUIRE_OK(dsacp_engine_step(ea, &en, 1, NULL, NULL));
    REQUIRE_OK(dsacp_engine_import_begin(eb, PROMPT, &b));
    /* the import holds what a step would: the same use as an engine of eb's shape that prefilled */
    dsacp_engine *ec = make_engine(m, md, 8, 32);
    int64_t c;
    REQUIRE_OK(dsacp_engine_add_request(ec, &c));
    en.request_id = c;
    REQUIRE_OK(dsacp_engine_step(ec, &en, 1, NULL, NULL));
    CHECK(dsacp_engine_kv_use(eb) == dsacp_engine_kv_use(ec));
    CHECK(dsacp_engine_request_length(eb, b) == 0);
    /* not steppable until import_end */
    dsacp_step_entry dec = {b, 1, ids + PROMPT};
    CHECK(dsacp_engine_step(eb, &dec, 1, NULL, NULL) == DSACP_EINVAL);
    CHECK(strstr(dsacp_last_error(), "imported") != NULL);
    const int64_t bad = move_prompt(ea, a, eb, b, PROMPT, L);
    CHECKF(bad == 0, "%s: %lld entries differ after the move", md->name, (long long)bad);
    CHECK_OK(dsacp_engine_import_end(eb, b));
    CHECK(dsacp_engine_import_end(eb, b) == DSACP_EINVAL);
    CHECK(dsacp_engine_request_length(eb, b) == PROMPT);
    /* both decode the next token to the same bits */
    float *la = malloc((size_t)V * sizeof(float)), *lb = malloc((size_t)V * sizeof(float));
    dsacp_step_entry da = {a, 1, ids + PROMPT};
    CHECK_OK(dsacp_engine_step(ea, &da, 1, la, NULL));
    CHECK_OK(dsacp_engine_step(eb, &dec, 1, lb, NULL));
    CHECKF(memcmp(la, lb, (size_t)V * sizeof(float)) == 0, "%s: the imported request decodes other logits", md->name);
    printf("engine kv %s: %lld latent + %lld index bytes per position and layer, moved and decoded identically\n",
           md->name, (long long)dsacp_engine_kv_wire_bytes(ea, DSACP_KV_LATENT),
           (long long)dsacp_engine_kv_wire_bytes(ea, DSACP_KV_INDEX));
    free(la);
    free(lb);
    dsacp_engine_free(ea);
    dsacp_engine_free(eb);
    dsacp_engine_free(ec);
}

/* Capacity and bounds: an import the pool cannot hold changes nothing; fits sees an import's
 * blocks; positions beyond the reserved blocks, a wrong kind or layer are refused. */
static void test_refusals(const dsacp_model *m)
{
    dsacp_engine *e = make_engine(m, &modes[0], 8, 6);
    int64_t id = -1;
    CHECK(dsacp_engine_import_begin(e, 49, &id) == DSACP_ECAPACITY && id == -1);
    CHECK(dsacp_engine_kv_use(e) == 0);
    CHECK(dsacp_engine_import_begin(e, 0, &id) == DSACP_ERANGE);
    REQUIRE_OK(dsacp_engine_import_begin(e, 20, &id)); /* 3 blocks of 8 */
    const int64_t more = 25, fresh = -1;
    CHECK(!dsacp_engine_fits(e, &fresh, &more, 1)); /* 4 more blocks: 7 > 6 */
    const int64_t fewer = 24;
    CHECK(dsacp_engine_fits(e, &fresh, &fewer, 1));
    uint8_t buf[4096];
    const int64_t in[2] = {0, 23}, out[1] = {24}, neg[1] = {-1};
    CHECK_OK(dsacp_engine_kv_pack(e, id, 0, DSACP_KV_LATENT, in, 2, buf)); /* reserved, not yet written */
    CHECK(dsacp_engine_kv_pack(e, id, 0, DSACP_KV_LATENT, out, 1, buf) == DSACP_EINVAL);
    CHECK(strstr(dsacp_last_error(), "position 24") != NULL);
    CHECK(dsacp_engine_kv_unpack(e, id, 0, DSACP_KV_INDEX, neg, 1, buf) == DSACP_EINVAL);
    CHECK(dsacp_engine_kv_pack(e, id, 0, 2, in, 1, buf) == DSACP_EINVAL);
    CHECK(dsacp_engine_kv_pack(e, id, dsacp_model_config(m)->num_hidden_layers, DSACP_KV_LATENT, in, 1, buf) ==
          DSACP_EINVAL);
    CHECK(dsacp_engine_kv_pack(e, id + 1, 0, DSACP_KV_LATENT, in, 1, buf) == DSACP_EINVAL);
    CHECK_OK(dsacp_engine_end_request(e, id)); /* an import can be given up: its blocks return */
    CHECK(dsacp_engine_kv_use(e) == 0);
    dsacp_engine_free(e);
}

/* The layer hook: it sees every layer in order, the step's new positions can be packed from it
 * (the same bytes as after the step), and its failure fails the step, the length unchanged. */
typedef struct hook_state {
    dsacp_engine *e;
    int64_t id, calls, fail_at;
    int64_t pos[CHUNK];
    uint8_t *lat; /* [L][CHUNK][latent bytes] */
    int64_t lb;
    int rc;
} hook_state;

static int hook(void *arg, int64_t layer)
{
    hook_state *h = arg;
    if (layer != h->calls++) h->rc = DSACP_EINVAL;
    if (layer == h->fail_at) return dsacp_error(DSACP_EIO, "hook: failing layer %lld", (long long)layer);
    int rc = dsacp_engine_kv_pack(h->e, h->id, layer, DSACP_KV_LATENT, h->pos, CHUNK, h->lat + layer * CHUNK * h->lb);
    if (rc) h->rc = rc;
    return DSACP_OK;
}

static void test_hook(const dsacp_model *m)
{
    const dsacp_config *cfg = dsacp_model_config(m);
    const int64_t L = cfg->num_hidden_layers;
    int32_t ids[PROMPT + CHUNK];
    tu_random_ids(ids, PROMPT + CHUNK, cfg->vocab_size, 5);
    dsacp_engine *e = make_engine(m, &modes[0], 16, 16);
    hook_state h = {.e = e, .fail_at = -1, .lb = dsacp_engine_kv_wire_bytes(e, DSACP_KV_LATENT)};
    REQUIRE_OK(dsacp_engine_add_request(e, &h.id));
    dsacp_step_entry en = {h.id, PROMPT, ids};
    REQUIRE_OK(dsacp_engine_step(e, &en, 1, NULL, NULL));
    for (int64_t k = 0; k < CHUNK; k++) h.pos[k] = PROMPT + k;
    h.lat = malloc((size_t)(L * CHUNK * h.lb));
    uint8_t *after = malloc((size_t)(CHUNK * h.lb));
    dsacp_engine_set_layer_hook(e, hook, &h);
    en = (dsacp_step_entry){h.id, CHUNK, ids + PROMPT};
    CHECK_OK(dsacp_engine_step(e, &en, 1, NULL, NULL));
    CHECK(h.calls == L && h.rc == 0);
    int64_t bad = 0;
    for (int64_t l = 0; l < L; l++) {
        CHECK_OK(dsacp_engine_kv_pack(e, h.id, l, DSACP_KV_LATENT, h.pos, CHUNK, after));
        bad += memcmp(after, h.lat + l * CHUNK * h.lb, (size_t)(CHUNK * h.lb)) != 0;
    }
    CHECK(bad == 0);
    /* a failing hook fails the step like a local error: the length stays */
    h.calls = 0, h.fail_at = L - 1;
    const int64_t len = dsacp_engine_request_length(e, h.id);
    en.token_ids = ids;
    CHECK(dsacp_engine_step(e, &en, 1, NULL, NULL) == DSACP_EIO);
    CHECK(dsacp_engine_request_length(e, h.id) == len);
    dsacp_engine_set_layer_hook(e, NULL, NULL);
    CHECK_OK(dsacp_engine_step(e, &en, 1, NULL, NULL));
    free(after);
    free(h.lat);
    dsacp_engine_free(e);
}

int main(void)
{
    char *dir = tu_make_model("tiny", 17, DSACP_WEIGHTS_F32);
    dsacp_model *m;
    REQUIRE_OK(dsacp_model_load(dir, &m));
    for (size_t i = 0; i < sizeof modes / sizeof *modes; i++) test_roundtrip(m, &modes[i]);
    test_refusals(m);
    test_hook(m);
    dsacp_model_free(m);
    tu_rmtree(dir);
    free(dir);
    return test_finish("test_engine_kv");
}
