/*
 * test_cp_util.h -- what the test_cp*.c files share (each file one topic, run alone as W = 1 and
 * under mpirun with W = 2, 3, 4 by CTest): the world and the schedule of four requests, the
 * comparison against a solo engine, the planner's view of an engine, the shared models, the
 * expected counters of a step from the strategies' formulas (src/cp/cp_formula.c), and the long
 * two-request run of the lean and context-path tests.
 */
#ifndef DSACP_TEST_CP_UTIL_H
#define DSACP_TEST_CP_UTIL_H

#include "test.h"
#include "cp/cp_strategy.h"
#include "dsacp_cp.h"
#include "dsacp_plan.h"
#include "io/safetensors.h"
#include "ref/test_util.h"
#include <math.h>
#include <stdint.h>

enum { NREQ = 4, NSTEP = 8 };

/* tokens of request r in step s */
static const int sched[NSTEP][NREQ] = {
    {20, 7, 0, 0}, {25, 1, 32, 0}, {1, 1, 1, 3}, {1, 1, 1, 1},
    {1, 0, 1, 1},  {0, 1, 0, 0},   {9, 0, 0, 0}, {1, 1, 1, 1},
};

typedef struct step_out {
    int64_t T;
    float *logits;  /* [T][V] */
    int32_t *topk;  /* [L][T][K] */
} step_out;

static int32_t *g_ids[NREQ];
static dsacp_comm *g_world;
static int g_rank, g_W;

static inline void make_ids(int64_t vocab)
{
    for (int r = 0; r < NREQ; r++) {
        int64_t n = 0;
        for (int s = 0; s < NSTEP; s++) n += sched[s][r];
        g_ids[r] = malloc((size_t)(n + 16) * sizeof(int32_t));
        tu_random_ids(g_ids[r], n + 16, vocab, 1000 + (uint64_t)r);
    }
}

/* The planner's prediction of a whole schedule, summed step by step (dsacp_plan_entries_comm
 * classifies each step's entries as the engine does; lean's fallbacks are the measured ones). */
typedef struct plan_acc {
    const dsacp_cp_options *cp;
    dsacp_plan_step base;
    int64_t fb_tokens, fb_rounds, winners; /* the engine's cumulative lean counts so far */
    dsacp_comm_counter sum[DSACP_PHASE_COUNT];
} plan_acc;

static inline void plan_acc_step(plan_acc *a, dsacp_engine *e, const dsacp_config *cfg, const dsacp_plan_entry *pe, int64_t n)
{
    dsacp_cp_stats st;
    dsacp_engine_cp_stats(e, &st);
    dsacp_plan_step b = a->base;
    const int64_t ft = st.lean_fallback_threshold + st.lean_fallback_ties;
    b.lean_fallback_tokens = ft - a->fb_tokens, b.lean_fallback_rounds = st.lean_fallback_rounds - a->fb_rounds;
    a->fb_tokens = ft, a->fb_rounds = st.lean_fallback_rounds;
    b.lean_owned_winners = st.lean_owned_winners - a->winners, a->winners = st.lean_owned_winners;
    dsacp_comm_counter c[DSACP_PHASE_COUNT];
    CHECK_OK(dsacp_plan_entries_comm(cfg, a->cp, &b, pe, n, c));
    for (int p = 0; p < DSACP_PHASE_COUNT; p++)
        a->sum[p].calls += c[p].calls, a->sum[p].bytes_sent += c[p].bytes_sent, a->sum[p].bytes_recv += c[p].bytes_recv;
}

/* Runs the schedule; fills out[s] (rank 0 only when want); adds each step's plan to acc. */
static inline int run_sched_plan(dsacp_engine *e, const dsacp_config *cfg, step_out *out, plan_acc *acc);
static inline int run_sched(dsacp_engine *e, const dsacp_config *cfg, step_out *out) { return run_sched_plan(e, cfg, out, NULL); }

static inline int run_sched_plan(dsacp_engine *e, const dsacp_config *cfg, step_out *out, plan_acc *acc)
{
    int64_t id[NREQ], used[NREQ] = {0};
    for (int r = 0; r < NREQ; r++) {
        int rc = dsacp_engine_add_request(e, &id[r]);
        if (rc) return rc;
    }
    const int64_t V = cfg->vocab_size, K = cfg->index_topk, L = cfg->num_hidden_layers;
    for (int s = 0; s < NSTEP; s++) {
        dsacp_step_entry en[NREQ];
        dsacp_plan_entry pe[NREQ];
        int64_t n = 0, T = 0;
        for (int r = 0; r < NREQ; r++)
            if (sched[s][r]) {
                pe[n] = (dsacp_plan_entry){used[r], sched[s][r]};
                en[n++] = (dsacp_step_entry){id[r], sched[s][r], g_ids[r] + used[r]};
                used[r] += sched[s][r];
                T += sched[s][r];
            }
        out[s].T = T;
        out[s].logits = malloc((size_t)(T * V) * 4);
        out[s].topk = malloc((size_t)(L * T * K) * 4);
        int rc = dsacp_engine_step(e, en, n, out[s].logits, out[s].topk);
        if (rc) return rc;
        if (acc) plan_acc_step(acc, e, cfg, pe, n);
    }
    return DSACP_OK;
}

static inline void free_out(step_out *o)
{
    for (int s = 0; s < NSTEP; s++) {
        free(o[s].logits);
        free(o[s].topk);
    }
}

typedef struct cp_case {
    const char *name;
    dsacp_decode_strategy dec;
    dsacp_cp_layout kv, idx;
    int64_t I;
    dsacp_cp_mode mode;            /* DSA-CP cases: */
    dsacp_prefill_split split;
    dsacp_weight_plan q, o;
    double lf;                     /* lean: candidates factor (0: the default) */
    dsacp_lean_merge merge;
    dsacp_partials_dtype partials;
} cp_case;

/* FlashMLA's global difference 1 - 2 sum(a r) / sum(a^2 + r^2) of two vectors. */
static inline double cos_diff(const float *a, const float *r, int64_t n)
{
    double ar = 0, aa = 0;
    for (int64_t i = 0; i < n; i++) ar += (double)a[i] * r[i], aa += (double)a[i] * a[i] + (double)r[i] * r[i];
    return aa > 0 ? 1 - 2 * ar / aa : 0;
}

static inline double compare(const dsacp_config *cfg, const step_out *ref, const step_out *got, int64_t *topk_diff,
                      double *cosd)
{
    const int64_t V = cfg->vocab_size, K = cfg->index_topk, L = cfg->num_hidden_layers;
    double worst = 0;
    *topk_diff = 0;
    *cosd = 0;
    for (int s = 0; s < NSTEP; s++) {
        const int64_t T = ref[s].T;
        for (int64_t i = 0; i < L * T * K; i++) *topk_diff += ref[s].topk[i] != got[s].topk[i];
        double r = tu_max_rel_ff(got[s].logits, ref[s].logits, T * V);
        *cosd = fmax(*cosd, cos_diff(got[s].logits, ref[s].logits, T * V));
        for (int64_t i = 0; i < T * V; i++)
            if (!isfinite(got[s].logits[i])) r = INFINITY;
        if (r > worst || isnan(r)) worst = r;
    }
    return worst;
}

static inline int64_t weight_bytes(const dsacp_weight *w)
{
    return w->rows * w->cols * (int64_t)dsacp_dtype_size(w->dtype) +
           (w->dtype == DSACP_F8_E4M3 && w->scale ? w->scale_rows * w->scale_stride * 4 : 0);
}

/* The planner's view of an engine of this model: cache entry sizes, numerics and, for DSA-CP,
 * the bytes q_b_proj / o_proj travel as per layer and each rank's tp shard of o_proj. */
static inline void plan_base(const dsacp_model *m, const dsacp_engine_options *eo, const dsacp_cp_options *cp, plan_acc *a)
{
    const dsacp_config *cfg = dsacp_model_config(m);
    memset(a, 0, sizeof *a);
    a->cp = cp;
    dsacp_plan_step *b = &a->base;
    b->W = g_W, b->rank = g_rank, b->hidden_bytes = cfg->hidden_size * 4, b->want_logits = true;
    b->deployed = eo->numerics == DSACP_NUMERICS_DEPLOYED;
    b->latent_bytes = dsacp_mla_cache_bytes_per_token(cfg, eo->kv_dtype);
    b->index_bytes = dsacp_index_cache_bytes_per_token(cfg, b->deployed ? DSACP_KV_FP8 : DSACP_KV_F32);
    b->want_topk = true; /* run_sched asks for the selected sets */
    const dsacp_weight *o = dsacp_model_weight(m, "model.layers.0.self_attn.o_proj.weight");
    dsacp_cp_o_paths(cfg, cp, g_W, o->dtype, o->block, &b->o_gather_v, &b->o_tp_f32);
    if (cp->mode != DSACP_CP_DSA_CP) return;
    const int64_t L = cfg->num_hidden_layers, H = cfg->num_attention_heads, dv = cfg->v_head_dim;
    int64_t *qb = calloc((size_t)L, sizeof *qb), *ob = calloc((size_t)L, sizeof *ob), *sh = calloc((size_t)g_W, sizeof *sh);
    if (!qb || !ob || !sh) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    for (int64_t l = 0; l < L; l++) {
        qb[l] = weight_bytes(dsacp_model_weightf(m, "model.layers.%lld.self_attn.q_b_proj.weight", (long long)l));
        ob[l] = weight_bytes(dsacp_model_weightf(m, "model.layers.%lld.self_attn.o_proj.weight", (long long)l));
    }
    const bool f32 = b->o_tp_f32;
    for (int q = 0; q < g_W; q++) {
        const int64_t nc = (dsacp_split_begin(H, q + 1, g_W) - dsacp_split_begin(H, q, g_W)) * dv;
        sh[q] = f32 ? o->rows * nc * 4 : o->rows * nc * (int64_t)dsacp_dtype_size(o->dtype);
        if (!f32 && o->dtype == DSACP_F8_E4M3) sh[q] += o->scale_rows * ((nc + o->block - 1) / o->block) * 4;
    }
    b->q_bytes = qb, b->o_bytes = ob, b->o_shard_bytes = sh;
}

static inline void plan_acc_free(plan_acc *a)
{
    free((void *)a->base.q_bytes), free((void *)a->base.o_bytes), free((void *)a->base.o_shard_bytes);
}

/* The summed plan of a whole schedule against the engine's counters, per phase. */
static inline void check_plan_sum(dsacp_comm *ec, const plan_acc *a, const char *label, const char *name, int64_t I)
{
    for (int p = 0; p < DSACP_PHASE_COUNT; p++) {
        const dsacp_comm_counter k = dsacp_comm_get_counter(ec, p), x = a->sum[p];
        CHECKF(k.calls == x.calls && k.bytes_sent == x.bytes_sent && k.bytes_recv == x.bytes_recv,
               "plan %s %s I=%lld W=%d rank %d, whole schedule, phase %s: measured calls %lld sent %lld recv %lld, "
               "planned %lld %lld %lld", label, name, (long long)I, g_W, g_rank, dsacp_comm_phase_name(p),
               (long long)k.calls, (long long)k.bytes_sent, (long long)k.bytes_recv, (long long)x.calls,
               (long long)x.bytes_sent, (long long)x.bytes_recv);
    }
}

/* tol: max relative error of the logits (exact mode); cos_tol: FlashMLA's global difference
 * (deployed mode, where a reassociated merge can move an activation across an e4m3 rounding
 * boundary of the next FP8 layer: docs/context-parallel.md, "Correctness"). */
static inline void run_cases(const char *label, const dsacp_model *m, const dsacp_engine_options *eo, const cp_case *cases,
                      int ncases, double tol, double cos_tol)
{
    const dsacp_config *cfg = dsacp_model_config(m);
    step_out ref[NSTEP] = {0};
    dsacp_engine *e = NULL;
    REQUIRE_OK(dsacp_engine_create(m, eo, &e));
    REQUIRE_OK(run_sched(e, cfg, ref));
    dsacp_engine_free(e);
    for (int c = 0; c < ncases; c++) {
        dsacp_cp_options cp;
        dsacp_cp_options_default(&cp);
        cp.decode = cases[c].dec;
        cp.kv_layout = cases[c].kv;
        cp.index_layout = cases[c].idx;
        cp.interleave = cases[c].I;
        cp.mode = cases[c].mode;
        cp.prefill_split = cases[c].split;
        cp.q_proj = cases[c].q;
        cp.o_proj = cases[c].o;
        if (cases[c].lf > 0) cp.lean_factor = cases[c].lf;
        cp.lean_merge = cases[c].merge;
        cp.partials = cases[c].partials;
        step_out got[NSTEP] = {0};
        CHECK_OK(dsacp_engine_create_cp(m, eo, &cp, g_world, &e));
        if (!e) continue;
        plan_acc acc;
        plan_base(m, eo, &cp, &acc);
        dsacp_comm_counter creation[DSACP_PHASE_COUNT];
        for (int p = 0; p < DSACP_PHASE_COUNT; p++) acc.sum[p] = creation[p] = dsacp_comm_get_counter(dsacp_engine_comm(e), p);
        CHECK_OK(run_sched_plan(e, cfg, got, &acc));
        /* The planner predicts every collective of the whole schedule, per phase, exactly: summed
         * here from the schedule, and by the engine itself (dsacp_engine_plan_comm). */
        check_plan_sum(dsacp_engine_comm(e), &acc, label, cases[c].name, cases[c].I);
        {
            dsacp_comm_counter pl[DSACP_PHASE_COUNT], me[DSACP_PHASE_COUNT];
            CHECK_OK(dsacp_engine_plan_comm(e, pl, me));
            for (int p = 0; p < DSACP_PHASE_COUNT; p++)
                CHECKF(pl[p].calls == me[p].calls && pl[p].bytes_sent == me[p].bytes_sent && pl[p].bytes_recv == me[p].bytes_recv &&
                       me[p].calls == acc.sum[p].calls - creation[p].calls && me[p].bytes_recv == acc.sum[p].bytes_recv - creation[p].bytes_recv,
                       "engine's plan %s %s W=%d rank %d phase %s: planned %lld %lld %lld, measured %lld %lld %lld", label,
                       cases[c].name, g_W, g_rank, dsacp_comm_phase_name(p), (long long)pl[p].calls, (long long)pl[p].bytes_sent,
                       (long long)pl[p].bytes_recv, (long long)me[p].calls, (long long)me[p].bytes_sent, (long long)me[p].bytes_recv);
        }
        plan_acc_free(&acc);
        /* The sharded caches hold no position twice and lose none (checked through the usage). */
        dsacp_engine_free(e);
        if (g_rank == 0) {
            int64_t dt = 0;
            double cd = 0, rel = compare(cfg, ref, got, &dt, &cd);
            CHECKF(dt == 0 && rel <= tol && cd <= cos_tol, "%s %s I=%lld W=%d: %lld selected positions differ, logits "
                   "max rel %.3g (tolerance %.1g), cos diff %.3g (tolerance %.1g)", label, cases[c].name,
                   (long long)cases[c].I, g_W, (long long)dt, rel, tol, cd, cos_tol);
            printf("%-8s %-36s I=%-3lld W=%d: selected sets identical=%s, logits max rel %.3g, cos diff %.3g\n", label,
                   cases[c].name, (long long)cases[c].I, g_W, dt == 0 ? "yes" : "NO", rel, cd);
        }
        free_out(got);
    }
    free_out(ref);
}

/* A copy of the model whose indexer head weights are zero: every index score is 0. */
static inline char *make_tie_model(const char *src)
{
    char *dir = tu_tempdir();
    char a[4200], b[4200];
    snprintf(a, sizeof a, "%s/config.json", src);
    snprintf(b, sizeof b, "%s/config.json", dir);
    char *text = NULL;
    size_t len = 0;
    REQUIRE_OK(dsacp_read_file(a, &text, &len, 1 << 20));
    REQUIRE_OK(dsacp_write_file_atomic(b, text, len));
    dsacp_free(text);
    snprintf(a, sizeof a, "%s/model.safetensors", src);
    snprintf(b, sizeof b, "%s/model.safetensors", dir);
    dsacp_st_file *f = NULL;
    REQUIRE_OK(dsacp_st_open(a, &f));
    dsacp_st_writer *w = NULL;
    REQUIRE_OK(dsacp_st_writer_create(&w));
    void **zeros = calloc((size_t)dsacp_st_count(f), sizeof *zeros);
    for (int64_t i = 0; i < dsacp_st_count(f); i++) {
        const dsacp_st_tensor *t = dsacp_st_tensor_at(f, i);
        const void *data = t->data;
        if (strstr(t->name, "indexer.weights_proj")) data = zeros[i] = calloc(t->nbytes, 1);
        REQUIRE_OK(dsacp_st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, data));
    }
    REQUIRE_OK(dsacp_st_writer_write(w, b));
    dsacp_st_writer_free(w);
    for (int64_t i = 0; i < dsacp_st_count(f); i++) free(zeros[i]);
    free(zeros);
    dsacp_st_close(f);
    return dir;
}

/* Rank 0's model directory (dir, 256 bytes, filled on rank 0) loaded by every rank; *dir_out its
 * name (drop_model removes it). */
static inline dsacp_model *load_shared_dir(char *dir, char **dir_out)
{
    REQUIRE_OK(dsacp_comm_bcast(g_world, dir, 256, DSACP_PHASE_input));
    dsacp_model *m = NULL;
    REQUIRE_OK(dsacp_model_load(dir, &m));
    *dir_out = strdup(dir);
    return m;
}

/* A model directory made by rank 0 and loaded by every rank. */
static inline dsacp_model *shared_model(char **dir_out, const char *preset, dsacp_weight_format fmt, bool tie)
{
    char dir[256] = {0};
    if (g_rank == 0) {
        char *d = tu_make_model(preset, 7, fmt);
        if (tie) {
            char *t = make_tie_model(d);
            tu_rmtree(d);
            free(d);
            d = t;
        }
        snprintf(dir, sizeof dir, "%s", d);
        free(d);
    }
    return load_shared_dir(dir, dir_out);
}

/* The same for a configuration of the test's own (tu_make_model_cfg). */
static inline dsacp_model *shared_model_cfg(char **dir_out, const dsacp_config *cfg, uint64_t seed, dsacp_weight_format fmt)
{
    char dir[256] = {0};
    if (g_rank == 0) {
        char *d = tu_make_model_cfg(cfg, seed, fmt);
        snprintf(dir, sizeof dir, "%s", d);
        free(d);
    }
    return load_shared_dir(dir, dir_out);
}

static inline void drop_model(dsacp_model *m, char *dir)
{
    dsacp_model_free(m);
    REQUIRE_OK(dsacp_comm_agree(g_world, DSACP_OK)); /* everyone is done with the files */
    if (g_rank == 0) tu_rmtree(dir);
    free(dir);
}

/* ---- communication counters against the documented formulas ---- */

typedef struct expect {
    int64_t calls, sent, recv;
} expect;


/* docs/context-parallel.md, "Bytes per step": one decode step of nd tokens (all requests
 * decoding; token j's context old[j], request r's cached positions old[r]) on rank me: the
 * control agreements, and the strategy's phases with the decode rows' o_proj from its formula
 * (src/cp/cp_formula.c, the one the planner calls too). */
static inline void expected_decode(const dsacp_config *cfg, const dsacp_cp_options *cp, int64_t W, int64_t me, int64_t nd,
                            const int64_t *old, int64_t nreq, int64_t mla_b, int64_t idx_b, bool o_gather_v,
                            const dsacp_cp_stats *lean, bool wire16, expect *ex /* [DSACP_PHASE_COUNT] */)
{
    memset(ex, 0, sizeof(expect) * DSACP_PHASE_COUNT);
    const int64_t L = cfg->num_hidden_layers;
    int64_t *req = malloc((size_t)(nd > 0 ? nd : 1) * sizeof *req);
    REQUIRE_OK(req ? DSACP_OK : DSACP_ENOMEM);
    for (int64_t j = 0; j < nd; j++) req[j] = j < nreq ? j : nreq - 1;
    dsacp_cp_formula f = {.cfg = cfg, .opt = cp, .W = W, .me = me, .nd = nd, .context = old, .request = req, .nreq = nreq,
                          .req_old = old, .latent_bytes = mla_b, .index_bytes = idx_b, .deployed = wire16,
                          .o_gather_v = o_gather_v, .lean_fallback_tokens = lean->lean_fallback_threshold + lean->lean_fallback_ties,
                          .lean_fallback_rounds = lean->lean_fallback_rounds};
    dsacp_cp_index_groups(cp, W, me, &f.iW, &f.iI, &f.ir);
    dsacp_comm_counter c[DSACP_PHASE_COUNT] = {0};
    int64_t *sh = NULL;
    REQUIRE_OK(dsacp_cp_formula_shared(&f, &sh));
    dsacp_cp_decode_comm(&f, sh, c);
    free(sh), free(req);
    for (int p = 0; p < DSACP_PHASE_COUNT; p++) ex[p] = (expect){c[p].calls, c[p].bytes_sent, c[p].bytes_recv};
    /* control: capacity agreement, metadata agreement, end agreement (int each) + want flags, and
     * one allocation agreement per layer (the strategy adds its own, e.g. allgather-kv's views). */
    const int64_t agrees = 3 + L;
    ex[DSACP_PHASE_control].calls += agrees + 1;
    ex[DSACP_PHASE_control].sent += agrees * 4 * (W - 1) + (me ? 0 : 2 * (W - 1));
    ex[DSACP_PHASE_control].recv += agrees * 4 * (W - 1) + (me ? 2 : 0);
}

/* One prefill-only step: entries with old lengths old[] and n[] new tokens, both caches
 * sharded (docs/context-parallel.md, "Bytes per step"). */
/* The rank that computes token i (of n new ones) of an entry under a split, written out again
 * from docs/context-parallel.md section 4 (t: the token's index in the step, T the step's size). */
static inline int64_t split_rank(dsacp_prefill_split split, int64_t p, int64_t I, int64_t W, int64_t i, int64_t n, int64_t t,
                          int64_t T)
{
    if (split == DSACP_PREFILL_CONTIGUOUS) return t / ((T + W - 1) / W);
    if (split == DSACP_PREFILL_ZIGZAG) {
        int64_t c = 0;
        while (c + 1 < 2 * W && n * (c + 1) / (2 * W) <= i) c++; /* chunk c = [n c / 2W, n (c + 1) / 2W) */
        return c < W ? c : 2 * W - 1 - c;
    }
    return dsacp_cp_owner(p, I, W);
}

static inline void expected_prefill_split(const dsacp_config *cfg, dsacp_prefill_split split, int64_t I, int64_t W,
                                   int64_t me, const int64_t *old, const int64_t *n, int64_t nent, int64_t E,
                                   expect *ex);

static inline void expected_prefill(const dsacp_config *cfg, int64_t I, int64_t W, int64_t me, const int64_t *old,
                             const int64_t *n, int64_t nent, int64_t E, expect *ex)
{
    expected_prefill_split(cfg, DSACP_PREFILL_OWNER, I, W, me, old, n, nent, E, ex);
}

static inline void expected_prefill_split(const dsacp_config *cfg, dsacp_prefill_split split, int64_t I, int64_t W,
                                   int64_t me, const int64_t *old, const int64_t *n, int64_t nent, int64_t E,
                                   expect *ex)
{
    memset(ex, 0, sizeof(expect) * DSACP_PHASE_COUNT);
    const int64_t L = cfg->num_hidden_layers, D = cfg->hidden_size;
    const int64_t agrees = 3 + 2 * L; /* + per layer: the allocation agreement and the views' */
    ex[DSACP_PHASE_control] = (expect){agrees + 1, agrees * 4 * (W - 1) + (me ? 0 : 2 * (W - 1)), agrees * 4 * (W - 1) + (me ? 2 : 0)};
    int64_t *npre = calloc((size_t)W, sizeof *npre), ctx_me = 0, ctx_others = 0;
    int64_t T = 0, t = 0;
    for (int64_t e = 0; e < nent; e++) T += n[e];
    for (int64_t e = 0; e < nent; e++) {
        for (int64_t p = old[e]; p < old[e] + n[e]; p++, t++) npre[split_rank(split, p, I, W, p - old[e], n[e], t, T)]++;
        for (int64_t q = 0; q < W; q++) {
            const int64_t b = dsacp_cp_local_len(old[e], q, I, W) * E;
            if (q == me) ctx_me += b;
            else ctx_others += b;
        }
    }
    int64_t others = 0;
    for (int64_t q = 0; q < W; q++)
        if (q != me) others += npre[q];
    ex[DSACP_PHASE_prefill_kv] = (expect){2 * L, L * (npre[me] * E + ctx_me) * (W - 1), L * (others * E + ctx_others)};
    ex[DSACP_PHASE_logits] = (expect){1, me ? npre[me] * D * 4 : 0, me ? 0 : others * D * 4};
    free(npre);
}

static inline void check_counters(dsacp_comm *ec, const expect *ex, const char *label, const char *name, const char *what)
{
    for (int p = 0; p < DSACP_PHASE_COUNT; p++) {
        const dsacp_comm_counter k = dsacp_comm_get_counter(ec, p);
        const expect x = g_W == 1 ? (expect){0, 0, 0} : ex[p];
        CHECKF(k.calls == x.calls && k.bytes_sent == x.sent && k.bytes_recv == x.recv,
               "%s %s %s W=%d rank %d phase %s: calls %lld sent %lld recv %lld, formula %lld %lld %lld", label, name,
               what, g_W, g_rank, dsacp_comm_phase_name(p), (long long)k.calls, (long long)k.bytes_sent,
               (long long)k.bytes_recv, (long long)x.calls, (long long)x.sent, (long long)x.recv);
    }
}


/* The planner's prediction (dsacp_plan_step_comm, src/plan) against the counters, per phase. */
static inline void check_plan(dsacp_comm *ec, const dsacp_config *cfg, const dsacp_cp_options *cp, const dsacp_plan_step *ps,
                       const char *name, const char *what)
{
    dsacp_comm_counter pr[DSACP_PHASE_COUNT];
    CHECK_OK(dsacp_plan_step_comm(cfg, cp, ps, pr));
    for (int p = 0; p < DSACP_PHASE_COUNT; p++) {
        const dsacp_comm_counter k = dsacp_comm_get_counter(ec, p);
        CHECKF(k.calls == pr[p].calls && k.bytes_sent == pr[p].bytes_sent && k.bytes_recv == pr[p].bytes_recv,
               "plan %s %s W=%d rank %d phase %s: measured calls %lld sent %lld recv %lld, planned %lld %lld %lld", name,
               what, g_W, g_rank, dsacp_comm_phase_name(p), (long long)k.calls, (long long)k.bytes_sent,
               (long long)k.bytes_recv, (long long)pr[p].calls, (long long)pr[p].bytes_sent, (long long)pr[p].bytes_recv);
    }
}

/* A step of decode tokens, one per request, with the given contexts. */
static inline dsacp_plan_step plan_decode(const dsacp_config *cfg, const dsacp_engine_options *eo, int64_t nd, const int64_t *ctx,
                                   const int64_t *req, int64_t nreq, const int64_t *req_old, bool gv,
                                   const dsacp_cp_stats *lst)
{
    dsacp_plan_step ps = {.W = g_W, .rank = g_rank, .nd = nd, .context = ctx, .request = req, .nreq = nreq,
                          .req_old = req_old, .hidden_bytes = cfg->hidden_size * 4, .want_logits = true,
                          .deployed = eo->numerics == DSACP_NUMERICS_DEPLOYED, .o_gather_v = gv};
    ps.latent_bytes = dsacp_mla_cache_bytes_per_token(cfg, eo->kv_dtype);
    ps.index_bytes = dsacp_index_cache_bytes_per_token(cfg, ps.deployed ? DSACP_KV_FP8 : DSACP_KV_F32);
    if (lst) ps.lean_fallback_tokens = lst->lean_fallback_threshold + lst->lean_fallback_ties, ps.lean_fallback_rounds = lst->lean_fallback_rounds;
    return ps;
}

/* Sums a stats struct over the group (every rank gets the sums). */
static inline dsacp_cp_stats stats_sum(const dsacp_engine *e)
{
    dsacp_cp_stats me, *all = calloc((size_t)g_W, sizeof *all), sum = {0};
    dsacp_engine_cp_stats(e, &me);
    REQUIRE_OK(dsacp_comm_allgather(g_world, &me, sizeof me, all, -1));
    for (int q = 0; q < g_W; q++) {
        sum.prefill_tokens += all[q].prefill_tokens, sum.decode_tokens += all[q].decode_tokens;
        sum.keys_scored += all[q].keys_scored, sum.keys_attended += all[q].keys_attended;
    }
    /* lean's verdicts are the group's: every rank counts the same */
    for (int q = 0; q < g_W; q++)
        CHECK(all[q].lean_decisions == all[0].lean_decisions && all[q].lean_fallback_ties == all[0].lean_fallback_ties &&
              all[q].lean_fallback_threshold == all[0].lean_fallback_threshold);
    sum.lean_decisions = all[0].lean_decisions;
    sum.lean_fallback_threshold = all[0].lean_fallback_threshold;
    sum.lean_fallback_ties = all[0].lean_fallback_ties;
    sum.lean_fallback_rounds = all[0].lean_fallback_rounds;
    for (int q = 0; q < g_W; q++) sum.context_gather += all[q].context_gather, sum.context_distributed += all[q].context_distributed;
    free(all);
    return sum;
}

/* Two requests with long prompts (prefilled in odd chunks) and decode steps mixed with a later
 * chunk, on the CP group and on one process: identical selected sets in every layer, logits
 * within tol. Returns the group's stats summed over ranks. */
static inline dsacp_cp_stats run_long(const dsacp_model *m, const dsacp_engine_options *eo, const dsacp_cp_options *cp,
                               const char *what, double tol, double cos_tol)
{
    const dsacp_config *cfg = dsacp_model_config(m);
    const int64_t V = cfg->vocab_size, K = cfg->index_topk, L = cfg->num_hidden_layers;
    enum { LS = 7 };
    static const int64_t plan[LS][2] = {{131, 0}, {77, 45}, {1, 1}, {1, 1}, {1, 29}, {1, 1}, {1, 1}};
    int32_t *ids[2];
    for (int r = 0; r < 2; r++) {
        ids[r] = malloc(400 * sizeof(int32_t));
        tu_random_ids(ids[r], 400, V, 4242 + (uint64_t)r);
    }
    dsacp_cp_stats st = {0};
    float *lg[2] = {malloc((size_t)(256 * V) * 4), malloc((size_t)(256 * V) * 4)};
    int32_t *tk[2] = {malloc((size_t)(L * 256 * K) * 4), malloc((size_t)(L * 256 * K) * 4)};
    dsacp_engine *e[2] = {NULL, NULL};
    REQUIRE_OK(dsacp_engine_create(m, eo, &e[0]));
    REQUIRE_OK(dsacp_engine_create_cp(m, eo, cp, g_world, &e[1]));
    int64_t id[2][2], used[2] = {0, 0};
    for (int k = 0; k < 2; k++)
        for (int r = 0; r < 2; r++) REQUIRE_OK(dsacp_engine_add_request(e[k], &id[k][r]));
    double worst = 0, cosd = 0;
    int64_t diff = 0;
    for (int s = 0; s < LS; s++) {
        for (int k = 0; k < 2; k++) {
            dsacp_step_entry en[2];
            int64_t n = 0;
            for (int r = 0; r < 2; r++)
                if (plan[s][r]) en[n++] = (dsacp_step_entry){id[k][r], plan[s][r], ids[r] + used[r]};
            CHECK_OK(dsacp_engine_step(e[k], en, n, lg[k], tk[k]));
        }
        const int64_t T = plan[s][0] + plan[s][1];
        for (int r = 0; r < 2; r++) used[r] += plan[s][r];
        if (g_rank == 0) {
            for (int64_t i = 0; i < L * T * K; i++) diff += tk[0][i] != tk[1][i];
            const double rel = tu_max_rel_ff(lg[1], lg[0], T * V);
            if (!(rel <= worst)) worst = rel;
            cosd = fmax(cosd, cos_diff(lg[1], lg[0], T * V));
        }
    }
    st = stats_sum(e[1]);
    {
        /* the engine's own plan of these steps (chunks by their context path) = its counters */
        dsacp_comm_counter pl[DSACP_PHASE_COUNT], me[DSACP_PHASE_COUNT];
        CHECK_OK(dsacp_engine_plan_comm(e[1], pl, me));
        for (int p = 0; p < DSACP_PHASE_COUNT; p++)
            CHECKF(pl[p].calls == me[p].calls && pl[p].bytes_sent == me[p].bytes_sent && pl[p].bytes_recv == me[p].bytes_recv,
                   "%s W=%d rank %d phase %s: planned %lld %lld %lld, measured %lld %lld %lld", what, g_W, g_rank,
                   dsacp_comm_phase_name(p), (long long)pl[p].calls, (long long)pl[p].bytes_sent, (long long)pl[p].bytes_recv,
                   (long long)me[p].calls, (long long)me[p].bytes_sent, (long long)me[p].bytes_recv);
    }
    if (g_rank == 0) {
        CHECKF(diff == 0 && worst <= tol && cosd <= cos_tol, "%s W=%d: %lld selected positions differ, logits max rel "
               "%.3g, cos diff %.3g", what, g_W, (long long)diff, worst, cosd);
        printf("%-44s W=%d: selected sets identical=%s, logits max rel %.3g, cos diff %.3g; lean decided %lld, "
               "fallbacks %lld (threshold) + %lld (ties)\n", what, g_W, diff ? "NO" : "yes", worst, cosd, (long long)st.lean_decisions,
               (long long)st.lean_fallback_threshold, (long long)st.lean_fallback_ties);
    }
    for (int k = 0; k < 2; k++) dsacp_engine_free(e[k]), free(lg[k]), free(tk[k]);
    for (int r = 0; r < 2; r++) free(ids[r]);
    return st;
}

/* The tiny f32 model every topic starts with (exact numerics, 64 blocks of 16 tokens), and the
 * schedule's ids drawn from its vocabulary. */
static inline dsacp_model *cp_test_tiny(char **dir, dsacp_engine_options *eo)
{
    dsacp_model *m = shared_model(dir, "tiny", DSACP_WEIGHTS_F32, false);
    make_ids(dsacp_model_config(m)->vocab_size);
    dsacp_engine_options_default(eo);
    eo->block_size = 16;
    eo->num_blocks = 64;
    return m;
}

/* The world, the ids and the end of a test file (every rank agrees on the verdict). */
static inline void cp_test_begin(int *argc, char ***argv)
{
    REQUIRE_OK(dsacp_comm_create_world(argc, argv, &g_world));
    g_rank = dsacp_comm_rank(g_world);
    g_W = dsacp_comm_size(g_world);
}

static inline int cp_test_end(const char *name)
{
    for (int r = 0; r < NREQ; r++) free(g_ids[r]);
    int failed = test_failures_;
    int rc = dsacp_comm_agree(g_world, failed ? DSACP_EINVAL : DSACP_OK);
    dsacp_comm_free(g_world);
    if (rc && !failed) {
        fprintf(stderr, "FAIL %s: another rank failed\n", name);
        return 1;
    }
    return test_finish(name);
}

#endif /* DSACP_TEST_CP_UTIL_H */
