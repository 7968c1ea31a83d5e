/*
 * test_spec_engine.c -- speculative greedy decoding at the engine level, one process (issue 23,
 * docs/speculative.md): verify entries of k + 1 rows (k = 1, 2, 3; DSACP_ENTRY_VERIFY, n_logits
 * k + 1), greedy acceptance and dsacp_engine_truncate_request of the rejected positions, against
 * greedy decoding one token at a time (spec_util.h's driver). What holds, and is asserted: the
 * tokens are identical; every verify row whose inputs were accepted has the one-by-one decode's
 * logits bit for bit (the kernels are batch-invariant: a row's reduction order depends only on
 * the row, docs/conventions.md) and its selected set in every layer; the KV use after every
 * truncation is exactly the blocks the requests' spans need (rejected positions give their
 * blocks back, re-growth takes them again). Cases: drafts fully, partly and not accepted, a
 * context crossing index_topk inside a verify step, prompts prefilled in chunks in the same steps
 * as other requests' verify entries, a pool with no spare block under repeated rejection; the
 * MTP layer (opt.mtp): catch-up rows equal to the one-by-one catch-up bit for bit, chain drafts,
 * MTP lengths truncated back; the target's outputs of an MTP engine equal a plain engine's; the
 * error cases of truncation, verify options and the MTP step's contract.
 */
#include "spec_util.h"

enum { B = 4 }; /* cache block: boundaries crossed often by k + 1 rows */

/* Mixed requests: k = 3, 2, 1; contexts crossing index_topk (32 in tiny) inside verify steps
 * (prompts 29 and 31), chunked prompts starting while others verify, a short full-acceptance one. */
static const spec_req mixed[] = {
    {29, 14, 0, 0, 3, "0213", 11},
    {31, 12, 0, 0, 2, "102", 12},
    {20, 9, 7, 2, 1, "01", 13},
    {6, 10, 0, 0, 3, "0", 14},
    {45, 8, 16, 1, 2, "20", 15},
};
enum { NMIXED = sizeof mixed / sizeof mixed[0] };

static void run_init(spec_run *r, const char *what, dsacp_engine *e, const dsacp_config *cfg, spec_mode mode, bool mtp,
                     const spec_req *q, int nreq, spec_ref *ref)
{
    memset(r, 0, sizeof *r);
    *r = (spec_run){.what = what, .e = e, .cfg = cfg, .mode = mode, .mtp = mtp, .req = q, .nreq = nreq, .ref = ref,
                    .block_size = B, .I = 1, .W = 1, .nlayers = cfg->num_hidden_layers + (mtp ? 1 : 0),
                    .kv_layout = DSACP_LAYOUT_SHARDED, .index_layout = DSACP_LAYOUT_SHARDED};
}

static dsacp_engine *engine(const dsacp_model *m, bool mtp, int64_t blocks)
{
    dsacp_engine_options eo;
    dsacp_engine_options_default(&eo);
    eo.block_size = B;
    eo.num_blocks = blocks;
    eo.mtp = mtp;
    dsacp_engine *e = NULL;
    REQUIRE_OK(dsacp_engine_create(m, &eo, &e));
    return e;
}

static void check_empty(dsacp_engine *e, const char *what)
{
    dsacp_kv_usage u;
    dsacp_engine_kv_usage(e, &u);
    CHECKF(u.latent_used_bytes == 0 && u.index_used_bytes == 0, "%s: %lld + %lld bytes still used after every request "
           "ended", what, (long long)u.latent_used_bytes, (long long)u.index_used_bytes);
}

static void print_stats(const spec_run *r)
{
    const spec_stats *s = &r->st;
    printf("%-40s %3lld target steps (%lld MTP, %lld chain), %lld verify entries (%lld full, %lld partial, %lld none), "
           "%lld/%lld drafts accepted, %lld rows checked, %lld crossing index_topk, %lld mixed with chunks, "
           "logits max rel %.3g\n", r->what, (long long)s->steps, (long long)s->mtp_steps, (long long)s->chain_steps,
           (long long)s->verify_entries, (long long)s->full, (long long)s->partial, (long long)s->zero,
           (long long)s->accepted, (long long)s->drafted, (long long)s->rows_checked, (long long)s->crossings,
           (long long)s->mixed, s->worst_rel);
}

/* The reference (one token per step) and the oracle's verify runs: k = 1, 2, 3 mixed. */
static void test_verify(const dsacp_model *m, spec_ref *ref)
{
    const dsacp_config *cfg = dsacp_model_config(m);
    dsacp_engine *e = engine(m, false, 256);
    spec_run r;
    run_init(&r, "one by one", e, cfg, SPEC_REF, false, mixed, NMIXED, ref);
    REQUIRE_OK(spec_drive(&r));
    check_empty(e, r.what);
    run_init(&r, "verify k=1,2,3 (oracle drafts)", e, cfg, SPEC_ORACLE, false, mixed, NMIXED, ref);
    CHECK_OK(spec_drive(&r));
    print_stats(&r);
    CHECKF(r.st.full > 0 && r.st.partial > 0 && r.st.zero > 0, "acceptance: %lld full, %lld partial, %lld none",
           (long long)r.st.full, (long long)r.st.partial, (long long)r.st.zero);
    CHECKF(r.st.crossings > 0, "no verify step crossed index_topk");
    CHECKF(r.st.mixed > 0, "no step mixed a prompt chunk with verify entries");
    CHECK(r.st.usage_checks > 0 && r.st.truncations > 0);
    check_empty(e, r.what);
    dsacp_engine_free(e);
}

/* One request decoded with every draft wrong (one token per round) in a pool with no spare
 * block: every round takes up to two blocks more and must give them back. */
static void test_reject_pool(const dsacp_model *m)
{
    const dsacp_config *cfg = dsacp_model_config(m);
    static const spec_req q[] = {{14, 24, 0, 0, 3, "1", 21}};
    spec_ref ref[1];
    spec_ref_alloc(ref, q, 1, cfg, false);
    dsacp_engine *e = engine(m, false, (14 + 24 + B - 1) / B);
    spec_run r;
    run_init(&r, "one by one, exact pool", e, cfg, SPEC_REF, false, q, 1, ref);
    REQUIRE_OK(spec_drive(&r));
    run_init(&r, "every draft rejected, exact pool", e, cfg, SPEC_ORACLE, false, q, 1, ref);
    CHECK_OK(spec_drive(&r));
    print_stats(&r);
    CHECKF(r.st.zero == r.st.verify_entries - 1 && r.st.accepted == 0, "%lld of %lld verify entries rejected everything",
           (long long)r.st.zero, (long long)r.st.verify_entries);
    check_empty(e, r.what);
    dsacp_engine_free(e);
    spec_ref_free(ref, 1);
}

/* The MTP layer: the one-by-one reference with catch-up steps (its target outputs equal the
 * plain engine's), then the oracle's verify rounds with catch-ups of partial acceptance, then
 * MTP drafts with chain steps. */
static void test_mtp(const dsacp_model *m, const spec_ref *plain)
{
    const dsacp_config *cfg = dsacp_model_config(m);
    const int64_t V = cfg->vocab_size, K = cfg->index_topk, L = cfg->num_hidden_layers;
    spec_ref ref[NMIXED];
    spec_ref_alloc(ref, mixed, NMIXED, cfg, true);
    dsacp_engine *e = engine(m, true, 256);
    spec_run r;
    run_init(&r, "one by one with MTP catch-up", e, cfg, SPEC_REF, true, mixed, NMIXED, ref);
    REQUIRE_OK(spec_drive(&r));
    for (int i = 0; i < NMIXED; i++) {
        const int64_t n = ref[i].n;
        CHECKF(memcmp(ref[i].seq, plain[i].seq, (size_t)n * sizeof(int32_t)) == 0 &&
                   memcmp(ref[i].lg, plain[i].lg, (size_t)((n - 1) * V) * sizeof(float)) == 0 &&
                   memcmp(ref[i].tk, plain[i].tk, (size_t)((n - 1) * L * K) * sizeof(int32_t)) == 0,
               "request %d: an MTP engine's target tokens, logits or selected sets differ from a plain engine's", i);
    }
    check_empty(e, r.what);
    run_init(&r, "verify + MTP catch-up (oracle drafts)", e, cfg, SPEC_ORACLE, true, mixed, NMIXED, ref);
    CHECK_OK(spec_drive(&r));
    print_stats(&r);
    CHECK(r.st.partial > 0 && r.st.mtp_steps == r.st.steps);
    check_empty(e, r.what);
    run_init(&r, "MTP drafts (catch-up + chain)", e, cfg, SPEC_MTP, true, mixed, NMIXED, ref);
    CHECK_OK(spec_drive(&r));
    print_stats(&r);
    CHECK(r.st.chain_steps > 0 && r.st.verify_entries > 0);
    check_empty(e, r.what);
    dsacp_engine_free(e);
    spec_ref_free(ref, NMIXED);
}

/* Prefills a request of n prompt tokens (and its MTP catch-up on an MTP engine). */
static int64_t prefilled(dsacp_engine *e, int64_t n, bool mtp, const int32_t *ids)
{
    int64_t id;
    REQUIRE_OK(dsacp_engine_add_request(e, &id));
    const dsacp_step_entry en = {id, n, ids};
    REQUIRE_OK(dsacp_engine_step_opts(e, &en, NULL, 1, NULL, NULL));
    if (mtp) REQUIRE_OK(dsacp_engine_mtp_step(e, &(dsacp_step_entry){id, n, ids + 1}, NULL, 1, NULL, NULL));
    return id;
}

/* Truncation and verify options refused, nothing changed. */
static void test_errors_target(const dsacp_model *m, int32_t *ids)
{
    dsacp_engine *e = engine(m, false, 64);
    const int64_t id = prefilled(e, 9, false, ids);
    CHECK(dsacp_engine_truncate_request(e, id, 10, 0) == DSACP_EINVAL);
    CHECK(dsacp_engine_truncate_request(e, id, -1, 0) == DSACP_EINVAL);
    CHECK(dsacp_engine_truncate_request(e, id + 1000, 1, 0) != DSACP_OK);
    CHECK(dsacp_engine_request_length(e, id) == 9);
    CHECK_OK(dsacp_engine_truncate_request(e, id, 9, 0));
    CHECK_OK(dsacp_engine_truncate_request(e, id, 9, 1000)); /* mtp_length ignored without MTP */
    CHECK(dsacp_engine_request_mtp_length(e, id) <= 0);
    dsacp_entry_opts op = {3, DSACP_ENTRY_VERIFY};
    dsacp_step_entry en = {id, 2, ids + 9};
    CHECK(dsacp_engine_step_opts(e, &en, &op, 1, NULL, NULL) == DSACP_EINVAL); /* n_logits > n_tokens */
    op.n_logits = -1;
    CHECK(dsacp_engine_step_opts(e, &en, &op, 1, NULL, NULL) == DSACP_EINVAL);
    CHECK(dsacp_engine_request_length(e, id) == 9);
    /* an MTP step on an engine without the MTP layer */
    CHECK(dsacp_engine_mtp_step(e, &en, NULL, 1, NULL, NULL) == DSACP_EINVAL);
    CHECK_OK(dsacp_engine_truncate_request(e, id, 3, 0));
    CHECK(dsacp_engine_request_length(e, id) == 3);
    CHECK_OK(dsacp_engine_end_request(e, id));
    check_empty(e, "errors");
    dsacp_engine_free(e);
}

/* A one-token target step of request id at position p, and an MTP step of n rows at p. */
static int tstep(dsacp_engine *e, int64_t id, int64_t p, const int32_t *ids)
{
    return dsacp_engine_step_opts(e, &(dsacp_step_entry){id, 1, ids + p}, NULL, 1, NULL, NULL);
}

static int mstep(dsacp_engine *e, int64_t id, int64_t n, int64_t p, const int32_t *ids)
{
    return dsacp_engine_mtp_step(e, &(dsacp_step_entry){id, n, ids + p + 1}, NULL, 1, NULL, NULL);
}

/* The MTP step's contract (docs/speculative.md): catch-up = the last target step's entries at
 * the target length before it; chain = one row per entry after a row of the previous MTP step.
 * Anything else is DSACP_EINVAL and changes no length, and forgets nothing: the rows a catch-up
 * or a chain can read stay readable after a refusal (the last check reads them). */
static void test_errors_mtp(const dsacp_model *m, int32_t *ids)
{
    dsacp_engine *e = engine(m, true, 64);
    const int64_t a = prefilled(e, 8, true, ids), b = prefilled(e, 8, true, ids + 20);
    CHECK(dsacp_engine_request_mtp_length(e, a) == 8 && dsacp_engine_request_mtp_length(e, b) == 8);
    CHECK(dsacp_engine_truncate_request(e, a, 8, 9) == DSACP_EINVAL); /* more MTP positions than held */
#define LENGTHS(la, ma, mb)                                                                                       \
    (dsacp_engine_request_length(e, a) == (la) && dsacp_engine_request_mtp_length(e, a) == (ma) &&             \
     dsacp_engine_request_mtp_length(e, b) == (mb))
    REQUIRE_OK(tstep(e, a, 8, ids));
    CHECKF(mstep(e, a, 2, 8, ids) == DSACP_EINVAL && LENGTHS(9, 8, 8), "a catch-up with other n_tokens than the target "
           "step's: not refused, or a length changed");
    CHECK_OK(dsacp_engine_truncate_request(e, a, 8, 8));
    REQUIRE_OK(tstep(e, a, 8, ids));
    /* b's last MTP rows (its prefill's catch-up) would make one row at 8 a valid chain row: two are
     * neither that nor a catch-up */
    CHECKF(mstep(e, b, 2, 8, ids + 20) == DSACP_EINVAL && LENGTHS(9, 8, 8), "a catch-up of a request the target step "
           "did not run: not refused, or a length changed");
    CHECK_OK(dsacp_engine_truncate_request(e, a, 8, 8));
    REQUIRE_OK(tstep(e, a, 8, ids));
    CHECK_OK(mstep(e, a, 1, 8, ids)); /* catch-up */
    CHECK_OK(mstep(e, a, 1, 9, ids)); /* chain */
    CHECK(LENGTHS(9, 10, 8));
    CHECKF(mstep(e, a, 2, 10, ids) == DSACP_EINVAL && LENGTHS(9, 10, 8), "a chain step of two rows: not refused, or a "
           "length changed");
    CHECK_OK(dsacp_engine_truncate_request(e, a, 9, 9));
    REQUIRE_OK(tstep(e, a, 9, ids));
    CHECK_OK(mstep(e, a, 1, 9, ids));
    CHECKF(mstep(e, b, 1, 8, ids + 20) == DSACP_EINVAL && LENGTHS(10, 10, 8), "a chain row after no row of the previous "
           "MTP step: not refused, or a length changed");
    CHECK_OK(dsacp_engine_truncate_request(e, a, 10, 10));
    REQUIRE_OK(tstep(e, a, 10, ids));
    CHECK_OK(mstep(e, a, 1, 10, ids)); /* catch-up: 11 */
    CHECK_OK(mstep(e, a, 1, 11, ids)); /* chain: 12 */
    CHECK_OK(mstep(e, a, 1, 12, ids)); /* chain: 13 */
    CHECK_OK(dsacp_engine_truncate_request(e, a, 11, 12));
    REQUIRE_OK(tstep(e, a, 11, ids));
    /* MTP length 12: neither the target length before the step (11) nor after a row of the
     * previous MTP step (12) */
    CHECKF(mstep(e, a, 1, 12, ids) == DSACP_EINVAL && LENGTHS(12, 12, 8), "an MTP step with the MTP length ahead of "
           "the target's, after no row of the previous MTP step: not refused, or a length changed");
    /* the refusals above left the target step's rows readable: the catch-up from 11 runs */
    CHECK_OK(dsacp_engine_truncate_request(e, a, 12, 11));
    CHECKF(mstep(e, a, 1, 11, ids) == DSACP_OK && LENGTHS(12, 12, 8), "a catch-up after a refused MTP step");
#undef LENGTHS
    CHECK_OK(dsacp_engine_end_request(e, a));
    CHECK_OK(dsacp_engine_end_request(e, b));
    check_empty(e, "MTP errors");
    dsacp_engine_free(e);
}

int main(void)
{
    dsacp_config cfg;
    REQUIRE_OK(dsacp_preset_config("tiny", &cfg));
    cfg.num_nextn_predict_layers = 1;
    char *dir = tu_make_model_cfg(&cfg, 7, DSACP_WEIGHTS_F32);
    cfg.num_nextn_predict_layers = 0;
    char *dir0 = tu_make_model_cfg(&cfg, 7, DSACP_WEIGHTS_F32);
    dsacp_model *m = NULL, *m0 = NULL;
    REQUIRE_OK(dsacp_model_load(dir, &m));
    REQUIRE_OK(dsacp_model_load(dir0, &m0));
    CHECKF(dsacp_model_has_mtp(m) && !dsacp_model_has_mtp(m0), "has_mtp: %d with the MTP layer, %d without",
           dsacp_model_has_mtp(m), dsacp_model_has_mtp(m0));
    const dsacp_config *mc = dsacp_model_config(m);
    spec_ref ref[NMIXED];
    spec_ref_alloc(ref, mixed, NMIXED, mc, false);
    test_verify(m, ref);
    test_reject_pool(m);
    if (dsacp_model_has_mtp(m)) test_mtp(m, ref);
    spec_ref_free(ref, NMIXED);
    int32_t ids[64];
    tu_random_ids(ids, 64, mc->vocab_size, 99);
    test_errors_target(m, ids);
    if (dsacp_model_has_mtp(m)) test_errors_mtp(m, ids);
    /* opt.mtp on a model without the MTP layer */
    dsacp_engine_options eo;
    dsacp_engine_options_default(&eo);
    eo.mtp = true;
    dsacp_engine *e = NULL;
    CHECK(dsacp_engine_create(m0, &eo, &e) == DSACP_EINVAL && !e);
    dsacp_model_free(m);
    dsacp_model_free(m0);
    tu_rmtree(dir);
    tu_rmtree(dir0);
    free(dir);
    free(dir0);
    return test_finish("test_spec_engine");
}
