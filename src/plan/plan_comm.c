/*
 * plan_comm.c -- the planner's communication and memory model (include/dsacp_plan.h): the
 * formulas of docs/context-parallel.md sections 3-4 per rank and phase, written once here (the
 * decode strategies' own from src/cp's table) and checked by test_cp against the communicator's
 * counters exactly, and a step built from entries whose paths are decided. The bottom of
 * src/plan: it calls neither the cost model (plan_cost.c) nor the classification of entries
 * (plan_entries.c). Logical bytes as comm.c counts them.
 */
#include "plan/plan.h"
#include "core/core.h"
#include "cp/cp_strategy.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static inline int64_t split_begin(int64_t n, int64_t r, int64_t W) { return n * r / W; }
static inline int64_t heads(int64_t H, int64_t q, int64_t W) { return split_begin(H, q + 1, W) - split_begin(H, q, W); }

static void add(dsacp_comm_counter *c, int64_t calls, int64_t sent, int64_t recv)
{
    c->calls += calls;
    c->bytes_sent += sent;
    c->bytes_recv += recv;
}

/* The layers step s runs: [layer0, layer0 + layers) (layers 0: the target's). */
static int64_t step_layers(const dsacp_config *cfg, const dsacp_plan_step *s)
{
    return s->layers > 0 ? s->layers : cfg->num_hidden_layers;
}

static void index_groups(const dsacp_cp_options *cp, int64_t W, int64_t rank, int64_t *iW, int64_t *iI, int64_t *ir)
{
    dsacp_cp_index_groups(cp, W, rank, iW, iI, ir);
}

/* What a step's counts share across ranks, built once (dsacp_plan_step_comm_ranks then fills
 * every rank's counters in O(entries + layers) each, so the busiest rank of W costs O(W), not the
 * O(W^2) of W separate calls): the prefill tokens each rank computes and the logits rows it
 * sends, and per rank (per index group for lean) the cached positions the decode strategies
 * move. */
typedef struct step_shared {
    int64_t iW, iI, T;
    int64_t *npq, *rows;   /* [W] prefill tokens computed by each rank, rows of them rank 0's head needs */
    int64_t orows;         /* rows of ranks 1.. */
    dsacp_cp_formula f;    /* the decode strategy's formula of the step (me and ir set per rank) */
    int64_t *strat;        /* its shared counts (dsacp_cp_formula_shared_into) */
    bool gather;           /* DSA-CP tp: the step gathers o_proj's shards */
    bool tp, tp_a2a, dsa;
    int64_t shard_total;   /* tp: the column shards' bytes, all ranks */
} step_shared;

size_t dsacp_plan_step_bytes(const dsacp_config *cfg, const dsacp_cp_options *cp, int64_t W, int64_t nd, int64_t nreq)
{
    if (W <= 1) return 0;
    if (W > INT32_MAX || nd < 0 || nreq < 0 || nreq > INT64_MAX / 4) return SIZE_MAX;
    int64_t iW, iI, ir;
    index_groups(cp, W, 0, &iW, &iI, &ir);
    const dsacp_cp_formula f = {.cfg = cfg, .opt = cp, .W = W, .iW = iW, .iI = iI, .nd = nd, .nreq = nreq};
    const int64_t ints = dsacp_cp_formula_shared_len(&f);
    size_t bytes;
    if (ints > INT64_MAX / 4 || !dsacp_mul_ok((size_t)(2 * W + ints), sizeof(int64_t), &bytes)) return SIZE_MAX;
    return bytes;
}

/* The rank computing token i of a prefill entry of n new tokens after o cached positions, the
 * entry's first token at `first` of the step (src/cp/cp_layer.c assigned_rank). */
static int64_t token_rank(const dsacp_cp_options *cp, int64_t W, int64_t n, int64_t o, int64_t first, int64_t chunk, int64_t i)
{
    int64_t q;
    if (cp->prefill_split == DSACP_PREFILL_CONTIGUOUS) {
        q = (first + i) / chunk;
    } else if (cp->prefill_split == DSACP_PREFILL_ZIGZAG) {
        int64_t c = i * 2 * W / n;
        while (c + 1 < 2 * W && split_begin(n, c + 1, 2 * W) <= i) c++;
        while (c > 0 && split_begin(n, c, 2 * W) > i) c--;
        q = c < W ? c : 2 * W - 1 - c;
    } else {
        q = dsacp_cp_owner(o + i, cp->interleave, W);
    }
    return q < W ? q : W - 1;
}

/* The shared part of step s, its arrays carved from mem (dsacp_plan_step_bytes of the step). */
static int shared_build(const dsacp_config *cfg, const dsacp_cp_options *cp, const dsacp_plan_step *s, step_shared *sh,
                        int64_t *mem)
{
    memset(sh, 0, sizeof *sh);
    const int64_t W = s->W, I = cp->interleave, H = cfg->num_attention_heads, dv = cfg->v_head_dim, D = cfg->hidden_size;
    int64_t iW, iI, ir;
    index_groups(cp, W, 0, &iW, &iI, &ir);
    sh->iW = iW, sh->iI = iI;
    /* Every counter below is exact in int64: a conservative bound of them (sizes from a model's
     * config and `plan`'s flags reach 2^68 bytes for allgather-kv's batch x context x entry) is
     * refused instead of wrapping. A rank's share of n cached positions: at most n / W + I. */
    {
        const double Ld = (double)step_layers(cfg, s) + 1, Wd = (double)W, E = (double)(s->latent_bytes + s->index_bytes);
        const double Hd = (double)H, dk = (double)(cfg->kv_lora_rank + cfg->qk_rope_head_dim), K = (double)cfg->index_topk;
        const double Id = (double)(I > iI ? I : iI);
        double old = 0, old_share = 0, ctx = 0, ctx_share = 0, T = 0, weights = 0;
        const bool gathers = dsacp_cp_strategy_of(cp)->gathers_context;
        for (int64_t r = 0; r < s->nreq && s->nd > 0 && gathers; r++) /* the cache gathered */
            old += (double)s->req_old[r], old_share += fmin((double)s->req_old[r], (double)s->req_old[r] / Wd + Id);
        for (int64_t e = 0; e < s->npre; e++) {
            ctx += (double)s->pre_old[e], ctx_share += fmin((double)s->pre_old[e], (double)s->pre_old[e] / Wd + Id);
            T += (double)s->pre_new[e];
        }
        for (int64_t l = s->layer0; l < s->layer0 + step_layers(cfg, s) && cp->mode == DSACP_CP_DSA_CP; l++)
            weights += (s->q_bytes ? (double)s->q_bytes[l] : 0) + (s->o_bytes ? (double)s->o_bytes[l] : 0);
        for (int64_t q = 0; q < W && s->o_shard_bytes && cp->mode == DSACP_CP_DSA_CP; q++) weights += (double)s->o_shard_bytes[q];
        const double per_token = Hd * (dk + (double)cfg->kv_lora_rank + (double)dv + 8) * 4 + (double)D * 8 + K * 8 + 64;
        const double bound =
            Ld * ((old_share * Wd + old + ctx_share * Wd + ctx) * E + T * Wd * (E + K * 4 + (double)s->hidden_bytes +
                  (double)D * 4 + Hd * (double)dv * 4) + (double)s->nd * (per_token * Wd + K * 4) +
                  (double)s->lean_fallback_tokens * K * 8 * Wd + (double)s->lean_owned_winners * 4 + weights * Wd);
        if (!(bound < 0x1p62))
            return dsacp_error(DSACP_ERANGE, "plan: a step of %lld decode tokens (%.4g cached positions gathered) and %.4g "
                               "prefill tokens after %.4g, on %lld ranks, moves more bytes than 64 bits count (up to %.3g)",
                               (long long)s->nd, old, T, ctx, (long long)W, bound);
    }
    sh->npq = mem, sh->rows = mem + W;
    memset(mem, 0, 2 * (size_t)W * sizeof *mem);
    int64_t *npq = sh->npq, *rows = sh->rows, T = 0;
    for (int64_t e = 0; e < s->npre; e++) T += s->pre_new[e];
    sh->T = T;
    const int64_t Tall = s->step_tokens > 0 ? s->step_tokens : T, chunk = Tall > 0 ? (Tall + W - 1) / W : 1;
    for (int64_t e = 0, t = 0; e < s->npre; e++) {
        const int64_t n = s->pre_new[e], o = s->pre_old[e], first = s->pre_first ? s->pre_first[e] : t;
        const int64_t nl = s->pre_logits && s->pre_logits[e] > 0 ? s->pre_logits[e] : 1; /* logits_last's rows */
        if (s->pre_rank && s->pre_rank[e] >= 0) { /* the whole entry on one given rank */
            const int64_t q = s->pre_rank[e] < W ? s->pre_rank[e] : W - 1;
            npq[q] += n;
            rows[q] += s->logits_last ? (nl < n ? nl : n) : n;
        } else if (n <= 2 * W) {
            for (int64_t i = 0; i < n; i++) {
                const int64_t q = token_rank(cp, W, n, o, first, chunk, i);
                npq[q]++;
                if (!s->logits_last || i >= n - nl) rows[q]++; /* rows rank 0's head needs */
            }
        } else {
            /* a long entry: each rank's count at once (O(W), the same counts as token by token) */
            const bool all_rows = !s->logits_last;
            if (cp->prefill_split == DSACP_PREFILL_CONTIGUOUS) {
                for (int64_t c = first / chunk; c * chunk < first + n; c++) {
                    const int64_t lo = c * chunk > first ? c * chunk : first, hi = (c + 1) * chunk < first + n ? (c + 1) * chunk : first + n;
                    const int64_t q = c < W ? c : W - 1;
                    npq[q] += hi - lo;
                    if (all_rows) rows[q] += hi - lo;
                }
            } else if (cp->prefill_split == DSACP_PREFILL_ZIGZAG) {
                for (int64_t c = 0; c < 2 * W; c++) { /* chunk c: tokens [split_begin(c), split_begin(c + 1)) */
                    const int64_t cnt = split_begin(n, c + 1, 2 * W) - split_begin(n, c, 2 * W), q = c < W ? c : 2 * W - 1 - c;
                    npq[q] += cnt;
                    if (all_rows) rows[q] += cnt;
                }
            } else {
                for (int64_t q = 0; q < W; q++) {
                    const int64_t cnt = dsacp_cp_local_len(o + n, q, I, W) - dsacp_cp_local_len(o, q, I, W);
                    npq[q] += cnt;
                    if (all_rows) rows[q] += cnt;
                }
            }
            for (int64_t i = n - (nl < n ? nl : n); i < n && !all_rows; i++) rows[token_rank(cp, W, n, o, first, chunk, i)]++;
        }
        t += n;
    }
    for (int64_t q = 1; q < W; q++) sh->orows += rows[q];

    /* DSA-CP's weight plans (src/cp/cp_weights.c): tp's path for the step */
    sh->dsa = cp->mode == DSACP_CP_DSA_CP && s->q_bytes && s->o_bytes;
    sh->tp = sh->dsa && cp->o_proj >= DSACP_WEIGHTS_TP && s->o_shard_bytes;
    sh->gather = s->tp_gather;
    if (sh->tp && s->tp_auto) {
        /* the engine's rule: the shards' bytes against the activations' (mean over ranks) */
        double recv = 0, a = 0;
        for (int64_t q = 0; q < W; q++) recv += (double)s->o_shard_bytes[q];
        for (int64_t q = 0; q < W; q++)
            a += (double)(T - npq[q]) * (double)(heads(H, q, W) * dv) * 4 + (double)npq[q] * (double)D * 4 * (double)(W - 1);
        sh->gather = recv * (double)(W - 1) / (double)W < a / (double)W;
    }
    sh->tp_a2a = sh->tp && !sh->gather;
    for (int64_t q = 0; q < W && sh->tp; q++) sh->shard_total += s->o_shard_bytes[q];

    /* the decode strategy's formula and its counts shared by the ranks */
    sh->f = (dsacp_cp_formula){.cfg = cfg, .opt = cp, .W = W, .iW = iW, .iI = iI, .nd = s->nd, .context = s->context,
                               .request = s->request, .nreq = s->nreq, .req_old = s->req_old,
                               .latent_bytes = s->latent_bytes, .index_bytes = s->index_bytes, .deployed = s->deployed,
                               .want_topk = s->want_topk, .tp = sh->tp, .tp_a2a = sh->tp_a2a, .o_gather_v = s->o_gather_v,
                               .o_tp_f32 = s->o_tp_f32, .lean_fallback_tokens = s->lean_fallback_tokens,
                               .lean_fallback_rounds = s->lean_fallback_rounds, .lean_owned_winners = s->lean_owned_winners,
                               .layers = step_layers(cfg, s)};
    sh->strat = dsacp_cp_formula_shared_len(&sh->f) > 0 ? mem + 2 * W : NULL;
    if (sh->strat) dsacp_cp_formula_shared_into(&sh->f, sh->strat);
    return DSACP_OK;
}

/* One rank's counters from the shared part. */
static void rank_comm(const dsacp_config *cfg, const dsacp_cp_options *cp, const dsacp_plan_step *s, const step_shared *sh,
                      int64_t me, dsacp_comm_counter out[DSACP_PHASE_COUNT])
{
    memset(out, 0, sizeof(dsacp_comm_counter) * DSACP_PHASE_COUNT);
    const int64_t W = s->W, I = cp->interleave, L = step_layers(cfg, s), K = cfg->index_topk;
    const int64_t H = cfg->num_attention_heads, dv = cfg->v_head_dim, D = cfg->hidden_size;
    int64_t iW, iI, ir;
    index_groups(cp, W, me, &iW, &iI, &ir);
    const bool lsh = cp->kv_layout == DSACP_LAYOUT_SHARDED, ish = iW > 1;
    const int64_t Esh = (lsh ? s->latent_bytes : 0) + (ish ? s->index_bytes : 0), E = s->latent_bytes + s->index_bytes;
    const int64_t *npq = sh->npq, *rows = sh->rows, T = sh->T, others = T - npq[me];
    const bool tp = sh->tp, tp_a2a = sh->tp_a2a, gather = sh->gather, dsa = sh->dsa;
    /* the context the chunks gather: this rank's shard of every entry's cached positions, and the rest */
    int64_t ctx_me = 0, ctx_others = 0;
    if (Esh)
        for (int64_t e = 0; e < s->npre; e++) {
            const int64_t mine = dsacp_cp_local_len(s->pre_old[e], me, I, W);
            ctx_me += mine * Esh, ctx_others += (s->pre_old[e] - mine) * Esh;
        }

    /* control: capacity, metadata and end agreements (4 bytes each), rank 0's two want flags,
     * per layer the allocation agreement and, when the layer builds prefill views, their
     * agreement (the decode strategy counts its own). */
    const int64_t agrees = 3 + L * (1 + (Esh && s->npre > 0));
    add(&out[DSACP_PHASE_control], agrees + 1, agrees * 4 * (W - 1) + (me ? 0 : 2 * (W - 1)),
        agrees * 4 * (W - 1) + (me ? 2 : 0));

    /* ---- decode-like tokens: the strategy's formula, then their o_proj (cp_rules.c) ---- */
    if (s->nd > 0) {
        dsacp_cp_formula f = sh->f;
        f.me = me, f.ir = ir;
        dsacp_cp_decode_comm(&f, sh->strat, out);
    }

    /* ---- prefill entries: their split, the packed entries all-gathered, context gathered ---- */
    if (s->npre > 0) {
        add(&out[DSACP_PHASE_prefill_kv], L, L * npq[me] * E * (W - 1), L * others * E);
        if (Esh) add(&out[DSACP_PHASE_prefill_kv], L, L * ctx_me * (W - 1), L * ctx_others);
        if (s->want_logits)
            add(&out[DSACP_PHASE_logits], 1, me ? rows[me] * s->hidden_bytes : 0, me ? 0 : sh->orows * s->hidden_bytes);
        if (s->want_topk) add(&out[DSACP_PHASE_topk_dump], L, me ? L * npq[me] * K * 4 : 0, me ? 0 : L * others * K * 4);
        if (tp_a2a && T > 0) {
            /* every token's v columns to their heads' ranks, the partial sums back (fp32): summed
             * over the other ranks q, sum_q cq = H dv - cme and sum_q npq[q] = others */
            const int64_t cme = heads(H, me, W) * dv;
            const int64_t sent = npq[me] * (H * dv - cme) * 4 + others * D * 4;
            const int64_t recv = others * cme * 4 + (W - 1) * npq[me] * D * 4;
            add(&out[DSACP_PHASE_o_proj], 2 * L, L * sent, L * recv);
        }
    }
    /* DSA-CP's weights, every step: layer-shard broadcasts from the layer's owner rank (l mod W);
     * tp's gather of the column shards when the step takes it. */
    int64_t rest = 0; /* every other rank's shard (f32 when the heads split FP8 blocks) */
    if (dsa && tp && gather) rest = sh->shard_total - s->o_shard_bytes[me];
    for (int64_t l = s->layer0; l < s->layer0 + L && dsa; l++) {
        const bool root = l % W == me;
        if (cp->q_proj == DSACP_WEIGHTS_LAYER_SHARD)
            add(&out[DSACP_PHASE_q_proj_weight], 1, root ? s->q_bytes[l] * (W - 1) : 0, root ? 0 : s->q_bytes[l]);
        if (cp->o_proj == DSACP_WEIGHTS_LAYER_SHARD)
            add(&out[DSACP_PHASE_o_proj_weight], 1, root ? s->o_bytes[l] * (W - 1) : 0, root ? 0 : s->o_bytes[l]);
        if (tp && gather) add(&out[DSACP_PHASE_o_proj_weight], 1, s->o_shard_bytes[me] * (W - 1), rest);
    }
}

static int check_step(const dsacp_cp_options *cp, const dsacp_plan_step *s, int64_t me)
{
    const int64_t W = s->W;
    if (W < 1 || me < 0 || me >= W || (cp->index_layout == DSACP_LAYOUT_PARTIAL && W % cp->index_group))
        return dsacp_error(DSACP_EINVAL, "plan: rank %lld of %lld ranks, index layout", (long long)me, (long long)W);
    return DSACP_OK;
}

/* Rank me's counters (every rank's, out[W][DSACP_PHASE_COUNT], when all) of a step of W > 1
 * ranks, its shared arrays carved from mem. */
static int step_counts(const dsacp_config *cfg, const dsacp_cp_options *cp, const dsacp_plan_step *s, int64_t me, bool all,
                       dsacp_comm_counter *out, void *mem, size_t bytes)
{
    const size_t need = dsacp_plan_step_bytes(cfg, cp, s->W, s->nd, s->nreq);
    if (need == SIZE_MAX)
        return dsacp_error(DSACP_ERANGE, "plan: the counts of a step of %lld ranks and %lld requests overflow",
                           (long long)s->W, (long long)s->nreq);
    if (!mem || bytes < need)
        return dsacp_error(DSACP_EINVAL, "plan: mem holds %zu bytes, the step's counts need %zu", mem ? bytes : 0, need);
    step_shared sh;
    int rc = shared_build(cfg, cp, s, &sh, mem);
    for (int64_t r = all ? 0 : me; !rc && r < (all ? s->W : me + 1); r++)
        rank_comm(cfg, cp, s, &sh, r, out + (all ? r : 0) * DSACP_PHASE_COUNT);
    return rc;
}

/* The same with the arrays allocated (the planner's own calls, `dsacp plan`). */
static int step_counts_alloc(const dsacp_config *cfg, const dsacp_cp_options *cp, const dsacp_plan_step *s, int64_t me,
                             bool all, dsacp_comm_counter *out)
{
    const size_t bytes = dsacp_plan_step_bytes(cfg, cp, s->W, s->nd, s->nreq);
    void *mem = bytes && bytes != SIZE_MAX ? dsacp_alloc(bytes) : NULL;
    if (bytes && bytes != SIZE_MAX && !mem) return dsacp_error_context(DSACP_ENOMEM, "plan: the step's per-rank counts");
    const int rc = step_counts(cfg, cp, s, me, all, out, mem, bytes);
    dsacp_free(mem);
    return rc;
}

int dsacp_plan_step_comm_mem(const dsacp_config *cfg, const dsacp_cp_options *cp, const dsacp_plan_step *s,
                             dsacp_comm_counter out[DSACP_PHASE_COUNT], void *mem, size_t bytes)
{
    memset(out, 0, sizeof(dsacp_comm_counter) * DSACP_PHASE_COUNT);
    const int rc = check_step(cp, s, s->rank);
    if (rc || s->W == 1) return rc; /* a solo group counts nothing */
    return step_counts(cfg, cp, s, s->rank, false, out, mem, bytes);
}

int dsacp_plan_step_comm(const dsacp_config *cfg, const dsacp_cp_options *cp, const dsacp_plan_step *s,
                         dsacp_comm_counter out[DSACP_PHASE_COUNT])
{
    memset(out, 0, sizeof(dsacp_comm_counter) * DSACP_PHASE_COUNT);
    const int rc = check_step(cp, s, s->rank);
    if (rc || s->W == 1) return rc; /* a solo group counts nothing */
    return step_counts_alloc(cfg, cp, s, s->rank, false, out);
}

int dsacp_plan_step_comm_ranks(const dsacp_config *cfg, const dsacp_cp_options *cp, const dsacp_plan_step *s,
                               dsacp_comm_counter *out)
{
    const int rc = check_step(cp, s, 0);
    if (rc) return rc;
    memset(out, 0, sizeof(dsacp_comm_counter) * DSACP_PHASE_COUNT * (size_t)s->W);
    return s->W == 1 ? DSACP_OK : step_counts_alloc(cfg, cp, s, 0, true, out);
}

void dsacp_plan_context_rule(const dsacp_config *cfg, const dsacp_cp_options *cp, int64_t W, int64_t latent_bytes,
                             int64_t index_bytes, bool deployed, bool o_gather_v, int64_t old_len, double *gather_bytes,
                             double *per_token)
{
    dsacp_cp_context_bytes(cfg, cp, W, latent_bytes, index_bytes, deployed, o_gather_v, old_len, gather_bytes, per_token);
}

void dsacp_plan_entries_lists(const dsacp_plan_step *base, int64_t T, int64_t n, void *mem, dsacp_plan_lists *l)
{
    int64_t *p = mem;
    *l = (dsacp_plan_lists){.s = *base};
    l->ctx = p, l->req = p + T, l->rold = p + 2 * T, l->pold = l->rold + n, l->pnew = l->pold + n, l->pfirst = l->pnew + n;
    l->plogits = l->pfirst + n, l->prank = l->plogits + n;
}

const dsacp_plan_entry_spec *dsacp_plan_spec_of(const dsacp_plan_step *base, int64_t e)
{
    static const dsacp_plan_entry_spec ordinary = {0, 0, DSACP_PLAN_PATH_AUTO, 0};
    return base->entry_spec ? &base->entry_spec[e] : &ordinary;
}

int dsacp_plan_entry_kind(const dsacp_cp_options *cp, int64_t W, const dsacp_plan_entry *e, const dsacp_plan_entry_spec *sp)
{
    int64_t iW, iI, ir;
    index_groups(cp, W, 0, &iW, &iI, &ir);
    /* The engine's classification (src/cp/cp_step.c, dsacp_cp_step_build): a given path (an MTP
     * step) as given; a one-token entry or a verify entry is decode rows on every rank unless
     * DSA-CP keeps every cache whole; a chunk after a sharded context takes the context path. */
    if (sp && sp->path == DSACP_PLAN_PATH_DECODE) return DSACP_PLAN_ENTRY_DECODE;
    if (sp && (sp->path == DSACP_PLAN_PATH_SPLIT || sp->path == DSACP_PLAN_PATH_RANK)) return DSACP_PLAN_ENTRY_PREFILL;
    const bool dsa_cp_only = cp->mode == DSACP_CP_DSA_CP &&
                             (W == 1 || (cp->kv_layout == DSACP_LAYOUT_REPLICATED && cp->index_layout == DSACP_LAYOUT_REPLICATED));
    const bool sharded = W > 1 && !dsa_cp_only && (cp->kv_layout == DSACP_LAYOUT_SHARDED || iW > 1);
    if (!dsa_cp_only && (e->n_new == 1 || (sp && (sp->flags & DSACP_ENTRY_VERIFY)))) return DSACP_PLAN_ENTRY_DECODE;
    return sharded && e->old_len > 0 && e->n_new >= 1 ? DSACP_PLAN_ENTRY_CONTEXT : DSACP_PLAN_ENTRY_PREFILL;
}

void dsacp_plan_entries_step(const dsacp_cp_options *cp, const dsacp_plan_entry *ent, int64_t n, const bool *decodes,
                             dsacp_plan_lists *l)
{
    dsacp_plan_step *s = &l->s;
    int64_t first = 0;
    bool multi = false;
    s->nd = s->nreq = s->npre = 0;
    for (int64_t e = 0; e < n; e++) {
        const dsacp_plan_entry_spec *sp = dsacp_plan_spec_of(s, e);
        multi = multi || (ent[e].n_new > 1 && !(sp->flags & DSACP_ENTRY_VERIFY));
        if (decodes[e]) { /* one row per token, each with its own context (a verify entry's rows too) */
            for (int64_t j = 0; j < ent[e].n_new; j++) l->ctx[s->nd] = ent[e].old_len + j, l->req[s->nd++] = s->nreq;
            l->rold[s->nreq++] = ent[e].old_len;
        } else if (ent[e].n_new > 0) {
            l->pfirst[s->npre] = first, l->pold[s->npre] = ent[e].old_len, l->pnew[s->npre] = ent[e].n_new;
            l->plogits[s->npre] = sp->n_logits > 0 ? sp->n_logits : 1;
            l->prank[s->npre++] = sp->path == DSACP_PLAN_PATH_RANK ? sp->rank : -1;
        }
        first += ent[e].n_new;
    }
    s->context = l->ctx, s->request = l->req, s->req_old = l->rold, s->pre_old = l->pold, s->pre_new = l->pnew;
    s->pre_first = l->pfirst, s->step_tokens = first, s->pre_logits = l->plogits, s->pre_rank = l->prank;
    /* tp's path for the step (src/cp/cp_weights.c): tp gathers when an entry other than a verify
     * entry brings more than one token; auto decides by bytes in dsacp_plan_step_comm, which knows each rank's tokens. */
    if (cp->o_proj == DSACP_WEIGHTS_TP) s->tp_gather = multi, s->tp_auto = false;
    else if (cp->o_proj == DSACP_WEIGHTS_TP_GATHER) s->tp_gather = true, s->tp_auto = false;
    else if (cp->o_proj == DSACP_WEIGHTS_TP_A2A) s->tp_gather = false, s->tp_auto = false;
    else if (cp->o_proj == DSACP_WEIGHTS_AUTO) s->tp_auto = true;
}

void dsacp_plan_o_paths(const dsacp_config *cfg, const dsacp_cp_options *cp, int64_t W, dsacp_dtype dtype, int64_t block,
                        bool *gather_v, bool *tp_f32)
{
    dsacp_cp_o_paths(cfg, cp, W, dtype, block, gather_v, tp_f32);
}

void dsacp_plan_kv_bytes(const dsacp_config *cfg, const dsacp_cp_options *cp, int64_t W, int64_t rank,
                         const int64_t *len, int64_t nreq, int64_t block_size, int64_t latent_bytes,
                         int64_t index_bytes, int64_t *latent_out, int64_t *index_out)
{
    int64_t iW, iI, ir, bl = 0, bi = 0;
    index_groups(cp, W, rank, &iW, &iI, &ir);
    const bool lsh = W > 1 && cp->kv_layout == DSACP_LAYOUT_SHARDED;
    for (int64_t i = 0; i < nreq; i++) {
        const int64_t kl = lsh ? dsacp_cp_local_len(len[i], rank, cp->interleave, W) : len[i];
        const int64_t ki = iW > 1 ? dsacp_cp_local_len(len[i], ir, iI, iW) : len[i];
        bl += (kl + block_size - 1) / block_size;
        bi += (ki + block_size - 1) / block_size;
    }
    const int64_t L = cfg->num_hidden_layers;
    *latent_out = bl * block_size * latent_bytes * L;
    *index_out = bi * block_size * index_bytes * L;
}

static int64_t es_of(dsacp_dtype d) { return d == DSACP_F32 ? 4 : d == DSACP_F8_E4M3 ? 1 : 2; }

void dsacp_plan_weight_usage(const dsacp_config *cfg, const dsacp_cp_options *cp, int64_t W, int64_t rank,
                             dsacp_dtype dtype, int64_t block, dsacp_weight_usage *out)
{
    memset(out, 0, sizeof *out);
    if (cp->mode != DSACP_CP_DSA_CP) return;
    const int64_t L = cfg->num_hidden_layers, H = cfg->num_attention_heads, dv = cfg->v_head_dim, D = cfg->hidden_size;
    const int64_t es = es_of(dtype), b = dtype == DSACP_F8_E4M3 ? block : 0;
    const int64_t qr = H * (cfg->qk_nope_head_dim + cfg->qk_rope_head_dim), qc = cfg->q_lora_rank, orows = D, ocols = H * dv;
#define SCALES(r, c) (b > 0 ? ((r) + b - 1) / b * (((c) + b - 1) / b) * 4 : 0)
    const int64_t qbytes = qr * qc * es + SCALES(qr, qc), obytes = orows * ocols * es + SCALES(orows, ocols);
    const bool tp = W > 1 && cp->o_proj >= DSACP_WEIGHTS_TP;
    bool tp_f32 = false;
    if (tp && b > 0)
        for (int64_t q = 0; q <= W; q++) {
            const int64_t c = split_begin(H, q, W) * dv;
            if (c % b && c != ocols) tp_f32 = true;
        }
    const int64_t c0 = split_begin(H, rank, W) * dv, nc = split_begin(H, rank + 1, W) * dv - c0;
    for (int64_t l = 0; l < L; l++) {
        const bool own = l % W == rank || W == 1;
        if (cp->q_proj != DSACP_WEIGHTS_LAYER_SHARD || own) out->q_proj_resident += qbytes;
        if (tp) out->o_proj_resident += tp_f32 ? orows * nc * 4 : orows * nc * es + (b > 0 ? (orows + b - 1) / b * ((nc + b - 1) / b) * 4 : 0);
        else if (cp->o_proj != DSACP_WEIGHTS_LAYER_SHARD || own) out->o_proj_resident += obytes;
    }
    /* layer-shard rings: min(prefetch, L) slots of the largest weight this rank does not own */
    const int64_t slots = cp->prefetch < L ? cp->prefetch : L;
    bool other = false;
    for (int64_t l = 0; l < L; l++) other = other || l % W != rank;
    const int64_t qslot = other ? (qr * qc * es + 63) / 64 * 64 + SCALES(qr, qc) : 0;
    const int64_t oslot = other ? (orows * ocols * es + 63) / 64 * 64 + SCALES(orows, ocols) : 0;
    if (W > 1 && cp->q_proj == DSACP_WEIGHTS_LAYER_SHARD) out->ring_bytes += qslot * slots;
    if (W > 1 && cp->o_proj == DSACP_WEIGHTS_LAYER_SHARD) out->ring_bytes += oslot * slots;
    if (tp) {
        const int64_t e2 = tp_f32 ? 4 : es;
        int64_t recv = 0;
        for (int64_t q = 0; q < W; q++) {
            const int64_t ncq = split_begin(H, q + 1, W) * dv - split_begin(H, q, W) * dv;
            recv += ncq * orows * e2;
            if (!tp_f32 && b > 0) recv += (orows + b - 1) / b * ((ncq + b - 1) / b) * 4;
        }
        out->gather_bytes = (orows * ocols * e2 + 63) / 64 * 64 + SCALES(orows, ocols) + 64 + recv;
    }
#undef SCALES
}
