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
 * the relayout's formula (dsacp_pd_predicted). With the MTP layer (speculative decoding, method
 * mtp) the producer's catch-up entries travel beside the target layers': every entry a consumer
 * rank keeps equals one process's, the counters equal the formula over L + 1 layers. The
 * refusals: a role without a partner group, mismatched cache dtypes, the MTP layer on one side. Run alone (W = 1) it checks the refusal of a lone producer.
 */
#include "test.h"
#include "dsacp_cp.h"
#include "dsacp_plan.h"
#include "dsacp_serve.h"
#include "dsacp_util.h"
#include "cp/cp.h"
#include "engine/engine.h"
#include "ref/test_util.h"
#include "serve/serve.h"

#include <math.h>
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

/* ---- the MTP layer's entries over the link (speculative decoding, method mtp) ---- */

enum { MTP_N = 37, MTP_CHUNK = 16 };

static int32_t argmax(const float *x, int64_t n)
{
    int64_t best = 0;
    for (int64_t i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return (int32_t)best;
}

/* One prefill chunk [a, b) of request `id` on a producer, as the serving loop runs it with the MTP
 * layer: the target step (its layers' entries sent by the link's hook), the catch-up MTP step over
 * the same rows (row p's token: the prompt's at p + 1, the first token after the last row), the
 * MTP layer's entries sent. *first: the first token (the last chunk, every rank of the group). */
static void producer_chunk(dsacp_engine *e, dsacp_pd *pd, int64_t id, const int32_t *prompt, int64_t a, int64_t b,
                           int32_t *first)
{
    const dsacp_config *cfg = dsacp_engine_config(e);
    const bool root = dsacp_comm_rank(dsacp_engine_comm(e)) == 0;
    float *lg = root ? malloc((size_t)cfg->vocab_size * sizeof *lg) : NULL;
    const int64_t s = 0, n = b - a;
    dsacp_pd_step_begin(pd, &s, &id, &a, &n, 1);
    const dsacp_step_entry t = {id, n, prompt + a};
    REQUIRE_OK(dsacp_engine_step_opts(e, &t, NULL, 1, lg, NULL));
    int32_t tok = b < MTP_N ? prompt[b] : 0;
    if (b == MTP_N) {
        if (root) tok = argmax(lg, cfg->vocab_size);
        REQUIRE_OK(dsacp_comm_bcast(dsacp_engine_comm(e), &tok, sizeof tok, DSACP_PHASE_input));
        *first = tok;
    }
    int32_t ids[MTP_CHUNK];
    for (int64_t j = 0; j < n; j++) ids[j] = a + j + 1 < MTP_N ? prompt[a + j + 1] : tok;
    const dsacp_step_entry c = {id, n, ids};
    REQUIRE_OK(dsacp_engine_mtp_step(e, &c, NULL, 1, NULL, NULL));
    REQUIRE_OK(dsacp_pd_send_layer(pd, cfg->num_hidden_layers));
    dsacp_pd_step_end(pd);
    free(lg);
}

/* Every entry a consumer rank keeps, target layers and the MTP layer's, against one process's
 * (exact numerics: the same values up to the summation order of the CP reductions). */
static int64_t compare_entries(dsacp_engine *e, int64_t id, dsacp_engine *solo, int64_t sid, const char *what)
{
    const dsacp_config *cfg = dsacp_engine_config(e);
    dsacp_cp_relayout rl = {0};
    dsacp_engine_relayout_side(e, false, &rl);
    const int me = dsacp_comm_rank(dsacp_engine_comm(e));
    int64_t checked = 0;
    for (int kind = 0; kind < 2; kind++) {
        const int64_t eb = dsacp_engine_kv_wire_bytes(e, kind), nf = eb / (int64_t)sizeof(float);
        float *x = malloc((size_t)eb), *y = malloc((size_t)eb);
        for (int64_t l = 0; l <= cfg->num_hidden_layers; l++)
            for (int64_t p = 0; p < MTP_N; p++) {
                if (!dsacp_cp_relayout_holds(&rl, kind, p, me)) continue;
                REQUIRE_OK(dsacp_engine_kv_pack(e, id, l, kind, &p, 1, x));
                REQUIRE_OK(dsacp_engine_kv_pack(solo, sid, l, kind, &p, 1, y));
                double worst = 0, norm = 0;
                for (int64_t i = 0; i < nf; i++) worst = fmax(worst, fabs((double)x[i] - y[i])), norm += fabs((double)y[i]);
                CHECKF(worst <= 1e-4 * (1 + norm / (double)nf) && norm > 0, "%s: rank %d layer %lld %s position %lld "
                       "differs from one process by %g", what, me, (long long)l, kind ? "index" : "latent", (long long)p, worst);
                checked++;
            }
        free(x), free(y);
    }
    return checked;
}

/* A prompt prefilled by the producer group with the MTP layer (chunks, catch-up steps) and
 * imported by the consumer group: every entry the consumer keeps -- the MTP layer's included --
 * equals one process's, the imported request's MTP length is the prompt's, and every rank's
 * kv_transfer counter equals the formula over L + 1 layers. */
static void mtp_relayout(const dsacp_model *m, dsacp_comm *group, bool producer, int P, int variant)
{
    dsacp_engine_options eo;
    dsacp_engine_options_default(&eo);
    eo.mtp = true, eo.num_blocks = 64;
    dsacp_cp_options cp;
    dsacp_cp_options_default(&cp);
    if (producer) {
        eo.block_size = 8;
        if (variant) cp.interleave = 2;
        else cp.mode = DSACP_CP_DSA_CP, cp.prefill_split = DSACP_PREFILL_CONTIGUOUS,
             cp.kv_layout = cp.index_layout = DSACP_LAYOUT_REPLICATED;
    } else {
        eo.block_size = 4, cp.interleave = variant ? 3 : 1;
        if (variant) cp.decode = DSACP_DECODE_REPLICATED_INDEX, cp.index_layout = DSACP_LAYOUT_REPLICATED;
    }
    char what[120];
    snprintf(what, sizeof what, "MTP layer over the link, P=%d D=%d variant %d", P, g_W - P, variant);
    dsacp_engine *e = NULL;
    REQUIRE_OK(dsacp_engine_create_cp(m, &eo, &cp, group, &e));
    dsacp_pd *pd = NULL;
    REQUIRE_OK(dsacp_pd_create(g_world, e, producer ? DSACP_KV_PRODUCER : DSACP_KV_CONSUMER, 60, &pd));
    int32_t prompt[MTP_N], first = -1;
    dsacp_rng rng;
    dsacp_rng_seed(&rng, 909);
    for (int64_t j = 0; j < MTP_N; j++) prompt[j] = (int32_t)(dsacp_rng_u64(&rng) % (uint64_t)dsacp_engine_config(e)->vocab_size);
    int64_t chunks[2 * 3], nc = 0, id = -1;
    for (int64_t a = 0; a < MTP_N; a += MTP_CHUNK) chunks[2 * nc] = a, chunks[2 * nc + 1] = a + MTP_CHUNK < MTP_N ? a + MTP_CHUNK : MTP_N, nc++;
    if (producer) {
        REQUIRE_OK(dsacp_engine_add_request(e, &id));
        for (int64_t k = 0; k < nc; k++) producer_chunk(e, pd, id, prompt, chunks[2 * k], chunks[2 * k + 1], &first);
        REQUIRE_OK(dsacp_pd_flush(pd, -1));
    } else {
        REQUIRE_OK(dsacp_engine_import_begin(e, MTP_N, &id));
        REQUIRE_OK(dsacp_pd_import_add(pd, 0, id, MTP_N));
        REQUIRE_OK(dsacp_pd_import_finish(pd, 0, chunks, nc));
        CHECKF(dsacp_engine_request_mtp_length(e, id) == MTP_N && dsacp_engine_request_length(e, id) == MTP_N,
               "%s: the imported request's lengths", what);
        /* One process: the whole prompt, then its catch-up (the first token its own argmax). */
        dsacp_engine_options so = eo;
        dsacp_engine *solo = NULL;
        REQUIRE_OK(dsacp_engine_create(m, &so, &solo));
        int64_t sid;
        float *lg = malloc((size_t)dsacp_engine_config(e)->vocab_size * sizeof *lg);
        REQUIRE_OK(dsacp_engine_add_request(solo, &sid));
        const dsacp_step_entry t = {sid, MTP_N, prompt};
        REQUIRE_OK(dsacp_engine_step_opts(solo, &t, NULL, 1, lg, NULL));
        int32_t ids[MTP_N];
        for (int64_t j = 0; j < MTP_N; j++) ids[j] = j + 1 < MTP_N ? prompt[j + 1] : argmax(lg, dsacp_engine_config(e)->vocab_size);
        const dsacp_step_entry c = {sid, MTP_N, ids};
        REQUIRE_OK(dsacp_engine_mtp_step(solo, &c, NULL, 1, NULL, NULL));
        const int64_t n = compare_entries(e, id, solo, sid, what);
        CHECKF(n > 0, "%s: no entry kept", what);
        free(lg);
        dsacp_engine_free(solo);
    }
    const dsacp_comm_counter got = dsacp_comm_get_counter(dsacp_pd_link(pd), DSACP_PHASE_kv_transfer),
                             want = dsacp_pd_predicted(pd);
    CHECKF(got.calls == want.calls && got.bytes_sent == want.bytes_sent && got.bytes_recv == want.bytes_recv && got.calls > 0,
           "%s: world rank %d kv_transfer %lld calls %lld sent %lld received, formula %lld %lld %lld", what, g_rank,
           (long long)got.calls, (long long)got.bytes_sent, (long long)got.bytes_recv, (long long)want.calls,
           (long long)want.bytes_sent, (long long)want.bytes_recv);
    /* The planner's formula (dsacp_plan_kv_transfer) over the chunks with L + 1 layers: the same. */
    const dsacp_plan_relayout pr = {.Wp = P, .Ip = variant ? 2 : 1, .Wd = g_W - P, .Id = variant ? 3 : 1,
                                    .kv_layout = DSACP_LAYOUT_SHARDED,
                                    .index_layout = variant ? DSACP_LAYOUT_REPLICATED : DSACP_LAYOUT_SHARDED,
                                    .index_group = 1, .latent_bytes = dsacp_engine_kv_wire_bytes(e, DSACP_KV_LATENT),
                                    .index_bytes = dsacp_engine_kv_wire_bytes(e, DSACP_KV_INDEX),
                                    .layers = dsacp_engine_config(e)->num_hidden_layers + 1};
    dsacp_plan_chunk pc[3];
    for (int64_t k = 0; k < nc; k++) pc[k] = (dsacp_plan_chunk){0, chunks[2 * k], chunks[2 * k + 1]};
    dsacp_comm_counter plan = {0};
    CHECK_OK(dsacp_plan_kv_transfer(&pr, pc, nc, producer ? 0 : 1, dsacp_comm_rank(group), &plan));
    CHECKF(plan.calls == got.calls && plan.bytes_sent == got.bytes_sent && plan.bytes_recv == got.bytes_recv,
           "%s: world rank %d: the planner's formula over L + 1 layers %lld calls %lld sent %lld received", what, g_rank,
           (long long)plan.calls, (long long)plan.bytes_sent, (long long)plan.bytes_recv);
    REQUIRE_OK(dsacp_comm_agree(g_world, DSACP_OK));
    dsacp_pd_free(pd);
    dsacp_engine_free(e);
}

/* The link's refusals (every rank gets the same verdict): mismatched cache dtypes between the
 * groups (mtp false), the MTP layer on the producer's engine only (mtp true). */
static void refusal(const dsacp_model *m, dsacp_comm *group, bool producer, bool mtp)
{
    dsacp_engine_options eo;
    dsacp_engine_options_default(&eo);
    eo.num_blocks = 64;
    if (mtp) eo.mtp = producer;
    else eo.kv_dtype = producer ? DSACP_KV_F32 : DSACP_KV_BF16;
    dsacp_cp_options cp;
    dsacp_cp_options_default(&cp);
    dsacp_engine *e = NULL;
    REQUIRE_OK(dsacp_engine_create_cp(m, &eo, &cp, group, &e));
    dsacp_pd *pd = NULL;
    const int rc = dsacp_pd_create(g_world, e, producer ? DSACP_KV_PRODUCER : DSACP_KV_CONSUMER, 10, &pd);
    CHECKF(rc == DSACP_EINVAL && !pd && strstr(dsacp_last_error(), mtp ? "MTP layer" : "cache dtype"), "%s: %s (%s)",
           mtp ? "the MTP layer on one side only" : "mismatched cache dtypes", dsacp_status_name(rc), dsacp_last_error());
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
        if (P == 1) refusal(m, group, producer, false), refusal(m, group, producer, true);
        for (int v = 0; v < 2; v++) mtp_relayout(m, group, producer, P, v);
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
