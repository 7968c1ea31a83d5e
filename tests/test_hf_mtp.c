/*
 * test_hf_mtp.c -- the engine's MTP layer (docs/mtp.md) against Hugging Face transformers:
 * tests/data/hf_tiny_mtp, made by tools/hf_mtp_reference.py (the block is transformers'
 * DeepseekV32DecoderLayer, enorm / hnorm / eh_proj / shared_head follow vLLM's and SGLang's code).
 *
 * Each sequence runs through an engine with opt.mtp: target steps (dsacp_engine_step_opts), each
 * followed by the MTP catch-up step over the same entry with the tokens shifted by one (the last
 * row's token the generator's next id), then one chained MTP step (token = the generator's draft,
 * hidden = the MTP output of the row before). Three schedules: one prefill (block 16), token by
 * token (block 1), and a prefill followed by a 4-token verify entry (block 4). Target logits, MTP
 * logits and the chained row's logits within 1e-4 relative (as test_hf_engine); the MTP layer's
 * selected sets identical; rows a near tie of the reference may have changed are left out.
 */
#include "test.h"
#include "ref/hf_mtp_data.h"
#include "ref/test_util.h"

#include <math.h>

#define TOL 1e-4

typedef hf_mtp_data expected;

/* What one engine run of a sequence produced. */
typedef struct outputs {
    float *lg, *mlg, *clg; /* [n][V], [n][V], [V] */
    int32_t *tk, *mtk, *ctk; /* target [NL][n][K], MTP [n][K], chain [K] */
} outputs;

/* A schedule: token by token, or a prefill of all but the last `tail` tokens and then the tail
 * as one verify entry (none when tail is 0). */
typedef struct schedule {
    const char *name;
    int64_t block_size;
    bool token_by_token;
    int64_t tail;
} schedule;

/* One chunk at positions p..p+c-1: the target step, then the MTP catch-up over the same entry. */
static int step_pair(dsacp_engine *e, const expected *x, int64_t id, const int32_t *ids, const int32_t *mids,
                     int64_t n, int64_t p, int64_t c, uint32_t flags, outputs *o)
{
    const int64_t V = x->V, K = x->K, NL = x->NL;
    dsacp_step_entry en = {id, c, ids + p};
    dsacp_entry_opts op = {c, flags};
    int32_t *tk = malloc((size_t)((NL + 1) * c * K) * sizeof(int32_t)); /* room for every layer */
    REQUIRE_OK(tk ? 0 : DSACP_ENOMEM);
    int rc = dsacp_engine_step_opts(e, &en, &op, 1, o->lg + p * V, tk);
    for (int64_t l = 0; l < NL && !rc; l++)
        memcpy(o->tk + (l * n + p) * K, tk + l * c * K, (size_t)(c * K) * sizeof(int32_t));
    free(tk);
    en.token_ids = mids + p;
    if (!rc) rc = dsacp_engine_mtp_step(e, &en, &op, 1, o->mlg + p * V, o->mtk + p * K);
    if (!rc && dsacp_engine_request_mtp_length(e, id) != p + c) rc = DSACP_EINVAL;
    return rc;
}

/* Runs sequence r on the engine: the schedule's chunks, then one chained MTP row. */
static int run_sequence(dsacp_engine *e, const expected *x, const schedule *s, int64_t r, int64_t n, outputs *o)
{
    const int32_t *ids = x->ids + r * x->Lmax;
    int32_t *mids = malloc((size_t)n * sizeof(int32_t));
    REQUIRE_OK(mids ? 0 : DSACP_ENOMEM);
    memcpy(mids, ids + 1, (size_t)(n - 1) * sizeof(int32_t));
    mids[n - 1] = x->next[r];
    int64_t id;
    int rc = dsacp_engine_add_request(e, &id);
    if (s->token_by_token) {
        for (int64_t p = 0; p < n && !rc; p++) rc = step_pair(e, x, id, ids, mids, n, p, 1, 0, o);
    } else {
        const int64_t head = n - s->tail;
        if (!rc) rc = step_pair(e, x, id, ids, mids, n, 0, head, 0, o);
        if (!rc && s->tail) rc = step_pair(e, x, id, ids, mids, n, head, s->tail, DSACP_ENTRY_VERIFY, o);
    }
    /* the chained row at position n: token = the draft, hidden = the MTP output at n - 1 */
    dsacp_step_entry ch = {id, 1, x->chain_ids + r};
    if (!rc) rc = dsacp_engine_mtp_step(e, &ch, NULL, 1, o->clg, o->ctk);
    if (!rc) {
        CHECK(dsacp_engine_request_length(e, id) == n);
        CHECK(dsacp_engine_request_mtp_length(e, id) == n + 1);
        CHECK_OK(dsacp_engine_truncate_request(e, id, n, n)); /* the chain row is scratch */
        CHECK(dsacp_engine_request_mtp_length(e, id) == n);
        CHECK_OK(dsacp_engine_end_request(e, id));
    }
    free(mids);
    return rc;
}

typedef struct tally {
    double target, mtp, chain;
    int64_t rows, chains, bad_sets;
} tally;

static void compare(const expected *x, int64_t r, int64_t n, const outputs *o, tally *t)
{
    const int64_t V = x->V, K = x->K, Lmax = x->Lmax, fa = hf_mtp_first_affected(x, r, n);
    t->target = fmax(t->target, tu_max_rel_ff(o->lg, x->logits + r * Lmax * V, fa * V));
    t->mtp = fmax(t->mtp, tu_max_rel_ff(o->mlg, x->mtp_logits + r * Lmax * V, fa * V));
    for (int64_t p = 0; p < fa; p++) {
        for (int64_t l = 0; l < x->NL; l++)
            t->bad_sets += memcmp(o->tk + (l * n + p) * K, x->topk[l] + (r * Lmax + p) * K, (size_t)K * 4) != 0;
        t->bad_sets += memcmp(o->mtk + p * K, x->mtp_topk + (r * Lmax + p) * K, (size_t)K * 4) != 0;
    }
    t->rows += fa;
    if (fa < n || x->chain_tie[r]) return;
    t->chain = fmax(t->chain, tu_max_rel_ff(o->clg, x->chain_logits + r * V, V));
    t->bad_sets += memcmp(o->ctk, x->chain_topk + r * K, (size_t)K * 4) != 0;
    t->chains++;
}

static void run_schedule(const dsacp_model *m, const expected *x, const schedule *s)
{
    dsacp_engine_options eo = {0};
    dsacp_engine_options_default(&eo);
    eo.block_size = s->block_size;
    eo.num_blocks = 256;
    eo.mtp = true;
    dsacp_engine *e;
    REQUIRE_OK(dsacp_engine_create(m, &eo, &e));
    const int64_t V = x->V, K = x->K, Lmax = x->Lmax;
    outputs o = {malloc((size_t)(Lmax * V) * 4), malloc((size_t)(Lmax * V) * 4), malloc((size_t)V * 4),
                 malloc((size_t)(x->NL * Lmax * K) * 4), malloc((size_t)(Lmax * K) * 4), malloc((size_t)K * 4)};
    REQUIRE_OK(o.lg && o.mlg && o.clg && o.tk && o.mtk && o.ctk ? 0 : DSACP_ENOMEM);
    tally t = {0};
    for (int64_t r = 0; r < x->R; r++) {
        const int64_t n = hf_mtp_seq_len(x, r);
        int rc = run_sequence(e, x, s, r, n, &o);
        CHECKF(rc == 0, "%s, sequence %lld: %s", s->name, (long long)r, dsacp_last_error());
        if (!rc) compare(x, r, n, &o, &t);
    }
    printf("vs transformers (%s): %lld rows + %lld chained rows; logits max rel: target %.3g, MTP %.3g, "
           "chained %.3g; top-k sets differing %lld\n", s->name, (long long)t.rows, (long long)t.chains,
           t.target, t.mtp, t.chain, (long long)t.bad_sets);
    CHECKF(t.target <= TOL && t.mtp <= TOL && t.chain <= TOL, "%s: max rel %.3g / %.3g / %.3g > %g", s->name,
           t.target, t.mtp, t.chain, TOL);
    CHECK(t.bad_sets == 0);
    CHECK(t.rows >= x->R * 16 && t.chains >= 1);
    free(o.lg), free(o.mlg), free(o.clg), free(o.tk), free(o.mtk), free(o.ctk);
    dsacp_engine_free(e);
}

int main(void)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tests/data/hf_tiny_mtp", tu_source_dir());
    dsacp_model *m;
    REQUIRE_OK(dsacp_model_load(dir, &m));
    CHECK(dsacp_model_has_mtp(m));
    expected x;
    hf_mtp_open(dsacp_model_config(m), &x);
    static const schedule scheds[] = {
        {"prefill, block 16", 16, false, 0},
        {"token by token, block 1", 1, true, 0},
        {"prefill + 4-token verify entry, block 4", 4, false, 4},
    };
    for (size_t i = 0; i < sizeof scheds / sizeof scheds[0]; i++) run_schedule(m, &x, &scheds[i]);

    /* the layer needs the engine option, and the option needs the layer */
    dsacp_engine_options eo = {0};
    dsacp_engine_options_default(&eo);
    dsacp_engine *e;
    REQUIRE_OK(dsacp_engine_create(m, &eo, &e));
    int64_t id;
    REQUIRE_OK(dsacp_engine_add_request(e, &id));
    dsacp_step_entry en = {id, 1, x.ids};
    CHECK(dsacp_engine_mtp_step(e, &en, NULL, 1, NULL, NULL) == DSACP_EINVAL);
    dsacp_engine_free(e);
    dsacp_model *plain;
    snprintf(dir, sizeof dir, "%s/tests/data/hf_tiny", tu_source_dir());
    REQUIRE_OK(dsacp_model_load(dir, &plain));
    CHECK(!dsacp_model_has_mtp(plain));
    eo.mtp = true;
    CHECK(dsacp_engine_create(plain, &eo, &e) == DSACP_EINVAL);
    dsacp_model_free(plain);
    dsacp_st_close(x.f);
    dsacp_model_free(m);
    return test_finish("test_hf_mtp");
}
