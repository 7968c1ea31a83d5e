/*
 * plan.c -- the planner's communication and memory model (include/dsacp_plan.h): the formulas
 * of docs/context-parallel.md sections 3-4 per rank and phase, written once here and checked by
 * test_cp against the communicator's counters exactly. Logical bytes as comm.c counts them.
 */
#include "dsacp_plan.h"
#include "core/core.h"

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

/* The indexer cache's holders (cp.h's iW, iI, ir): W sharded, W / G partial, 1 replicated. */
static void index_groups(const dsacp_cp_options *cp, int64_t W, int64_t rank, int64_t *iW, int64_t *iI, int64_t *ir)
{
    *iW = 1, *iI = 1, *ir = 0;
    if (W > 1 && cp->index_layout == DSACP_LAYOUT_SHARDED) *iW = W, *iI = cp->interleave, *ir = rank;
    if (W > 1 && cp->index_layout == DSACP_LAYOUT_PARTIAL) {
        const int64_t G = cp->index_group;
        *iW = W / G, *iI = cp->interleave * G, *ir = rank / G;
    }
}

static int64_t lean_kprime(int64_t K, int64_t W, double f)
{
    double v = (double)K * f / (double)W;
    int64_t k = (int64_t)v;
    if ((double)k < v) k++;
    if (k < 1) k = 1;
    return k > K ? K : k;
}

/* The all-reduce of n elements of s bytes (reduce-scatter + all-gather over blocks n q / W). */
static void allreduce(dsacp_comm_counter *c, int64_t n, int64_t s, int64_t W, int64_t me, int64_t L)
{
    const int64_t mine = (split_begin(n, me + 1, W) - split_begin(n, me, W)) * s, b = mine * (W - 1) + (n * s - mine);
    add(c, L, L * b, L * b);
}

/* The heads' v rows of nd decode tokens all-gathered (o_gather_v). */
static void gather_v(dsacp_comm_counter *c, int64_t nd, int64_t H, int64_t Hs, int64_t dv, int64_t W, int64_t L)
{
    add(c, L, L * nd * Hs * dv * 4 * (W - 1), L * nd * (H - Hs) * dv * 4);
}

int dsacp_plan_step_comm(const dsacp_config *cfg, const dsacp_cp_options *cp, const dsacp_plan_step *s,
                         dsacp_comm_counter out[DSACP_PHASE_COUNT])
{
    memset(out, 0, sizeof(dsacp_comm_counter) * DSACP_PHASE_COUNT);
    const int64_t W = s->W, me = s->rank, I = cp->interleave, L = cfg->num_hidden_layers, K = cfg->index_topk;
    const int64_t H = cfg->num_attention_heads, dc = cfg->kv_lora_rank, dk = dc + cfg->qk_rope_head_dim;
    const int64_t dv = cfg->v_head_dim, D = cfg->hidden_size, Hs = heads(H, me, W), nd = s->nd;
    if (W < 1 || me < 0 || me >= W || (cp->index_layout == DSACP_LAYOUT_PARTIAL && W % cp->index_group))
        return dsacp_error(DSACP_EINVAL, "plan: rank %lld of %lld ranks, index layout", (long long)me, (long long)W);
    if (W == 1) return DSACP_OK; /* a solo group counts nothing */
    int64_t iW, iI, ir;
    index_groups(cp, W, me, &iW, &iI, &ir);
    const bool lsh = cp->kv_layout == DSACP_LAYOUT_SHARDED, ish = iW > 1;
    const int64_t Esh = (lsh ? s->latent_bytes : 0) + (ish ? s->index_bytes : 0), E = s->latent_bytes + s->index_bytes;

    /* The rank computing each prefill token (src/cp/cp_layer.c assigned_rank), and the context
     * the chunks gather. */
    int64_t *npq = calloc((size_t)W, sizeof *npq), *rows = calloc((size_t)W, sizeof *rows), T = 0, ctx_me = 0, ctx_others = 0;
    if (!npq || !rows) {
        free(npq), free(rows);
        return dsacp_error(DSACP_ENOMEM, "out of memory");
    }
    for (int64_t e = 0; e < s->npre; e++) T += s->pre_new[e];
    const int64_t Tall = s->step_tokens > 0 ? s->step_tokens : T, chunk = Tall > 0 ? (Tall + W - 1) / W : 1;
    for (int64_t e = 0, t = 0; e < s->npre; e++) {
        const int64_t n = s->pre_new[e], o = s->pre_old[e], first = s->pre_first ? s->pre_first[e] : t;
        for (int64_t i = 0; i < n; i++) {
            int64_t q;
            if (cp->prefill_split == DSACP_PREFILL_CONTIGUOUS) {
                q = (first + i) / chunk;
            } else if (cp->prefill_split == DSACP_PREFILL_ZIGZAG) {
                int64_t c = i * 2 * W / n;
                while (c + 1 < 2 * W && split_begin(n, c + 1, 2 * W) <= i) c++;
                while (c > 0 && split_begin(n, c, 2 * W) > i) c--;
                q = c < W ? c : 2 * W - 1 - c;
            } else {
                q = dsacp_cp_owner(o + i, I, W);
            }
            npq[q < W ? q : W - 1]++;
            if (!s->logits_last || i == n - 1) rows[q < W ? q : W - 1]++; /* rows rank 0's head needs */
        }
        t += n;
        if (Esh)
            for (int64_t q = 0; q < W; q++) {
                const int64_t b = dsacp_cp_local_len(o, q, I, W) * Esh;
                if (q == me) ctx_me += b;
                else ctx_others += b;
            }
    }
    int64_t others = 0;
    for (int64_t q = 0; q < W; q++)
        if (q != me) others += npq[q];

    /* DSA-CP's weight plans (src/cp/cp_weights.c): tp's path for the step */
    const bool dsa = cp->mode == DSACP_CP_DSA_CP && s->q_bytes && s->o_bytes;
    const bool tp = dsa && cp->o_proj >= DSACP_WEIGHTS_TP && s->o_shard_bytes;
    bool gather = s->tp_gather;
    if (tp && s->tp_auto) {
        /* the engine's rule: the shards' bytes against the activations' (mean over ranks) */
        double recv = 0, a = 0;
        for (int64_t q = 0; q < W; q++) recv += (double)s->o_shard_bytes[q];
        for (int64_t q = 0; q < W; q++)
            a += (double)(T - npq[q]) * (double)(heads(H, q, W) * dv) * 4 + (double)npq[q] * (double)D * 4 * (double)(W - 1);
        gather = recv * (double)(W - 1) / (double)W < a / (double)W;
    }
    const bool tp_a2a = tp && !gather;

    /* control: capacity, metadata and end agreements (4 bytes each), rank 0's two want flags,
     * per layer the allocation agreement and, when the layer builds views, their agreement. */
    const int64_t views = Esh ? (nd > 0 && cp->decode == DSACP_DECODE_ALLGATHER_KV) + (s->npre > 0) : 0;
    const int64_t agrees = 3 + L * (1 + views);
    add(&out[DSACP_PHASE_control], agrees + 1, agrees * 4 * (W - 1) + (me ? 0 : 2 * (W - 1)),
        agrees * 4 * (W - 1) + (me ? 2 : 0));

    /* ---- decode-like tokens: the strategy, then their o_proj ---- */
    if (nd > 0) {
        const bool lean = cp->decode == DSACP_DECODE_LEAN;
        const int64_t sz = lean && s->deployed && cp->partials == DSACP_PARTIALS_AUTO ? 2 : 4;
        switch (cp->decode) {
        case DSACP_DECODE_ALLGATHER_KV:
            if (Esh) {
                int64_t mine = 0, oth = 0;
                for (int64_t r = 0; r < s->nreq; r++)
                    for (int64_t q = 0; q < W; q++) {
                        const int64_t b = dsacp_cp_local_len(s->req_old[r], q, I, W) * Esh;
                        if (q == me) mine += b;
                        else oth += b;
                    }
                add(&out[DSACP_PHASE_kv_gather], L, L * mine * (W - 1), L * oth);
            }
            break;
        case DSACP_DECODE_REPLICATED_INDEX:
        case DSACP_DECODE_EXACT_TOPK:
            if (cp->decode == DSACP_DECODE_EXACT_TOPK && iW > 1)
                add(&out[DSACP_PHASE_index_candidates], L, L * nd * K * 8 * (iW - 1), L * nd * K * 8 * (iW - 1));
            add(&out[DSACP_PHASE_query_gather], L, L * nd * Hs * dk * 4 * (W - 1), L * nd * (H - Hs) * dk * 4);
            if (cp->merge_backend == DSACP_MERGE_A2A)
                add(&out[DSACP_PHASE_attn_merge], L, L * nd * (H - Hs) * (dc + 1) * 4, L * nd * Hs * (dc + 1) * 4 * (W - 1));
            else
                add(&out[DSACP_PHASE_attn_merge], 2 * L, L * (nd * H * 4 * (W - 1) + nd * (H - Hs) * dc * 4),
                    L * (nd * H * 4 * (W - 1) + nd * Hs * dc * 4 * (W - 1)));
            break;
        case DSACP_DECODE_LEAN: {
            const int64_t kp = lean_kprime(K, iW, cp->lean_factor);
            int64_t mine = 0, oth = 0, sel = 0;
            for (int64_t j = 0; j < nd; j++) {
                const int64_t n = s->context[j] + 1;
                sel += n < K ? n : K;
                if (n <= K || iW == 1) continue;
                for (int64_t q = 0; q < iW; q++) {
                    const int64_t nq = dsacp_cp_local_len(n, q, iI, iW), mq = nq < kp ? nq : kp;
                    if (q == ir) mine += mq;
                    else oth += mq;
                }
            }
            if (mine + oth > 0) add(&out[DSACP_PHASE_index_candidates], L, L * mine * 4 * (iW - 1), L * oth * 4);
            add(&out[DSACP_PHASE_lean_fallback], s->lean_fallback_rounds, s->lean_fallback_tokens * K * 8 * (iW - 1),
                s->lean_fallback_tokens * K * 8 * (iW - 1));
            /* the output merge needs the whole o_proj: a tp step on the activation path merges values */
            const bool values = cp->lean_merge == DSACP_LEAN_MERGE_VALUES || tp_a2a;
            if (values && cp->merge_backend == DSACP_MERGE_A2A) {
                add(&out[DSACP_PHASE_attn_merge], L, L * nd * (H - Hs) * (dv * sz + 4), L * nd * Hs * (dv * sz + 4) * (W - 1));
            } else {
                add(&out[DSACP_PHASE_attn_merge], L, L * nd * H * 4 * (W - 1), L * nd * H * 4 * (W - 1));
                if (values) add(&out[DSACP_PHASE_attn_merge], L, L * nd * (H - Hs) * dv * sz, L * nd * Hs * dv * sz * (W - 1));
            }
            /* the selected sets: every rank's owned-winner counts, then the winners to rank 0 */
            if (s->want_topk) {
                add(&out[DSACP_PHASE_topk_dump], L, L * nd * 8 * (W - 1), L * nd * 8 * (W - 1));
                add(&out[DSACP_PHASE_topk_dump], L, me ? s->lean_owned_winners * 4 : 0,
                    me ? 0 : (L * sel - s->lean_owned_winners) * 4);
            }
            break;
        }
        }
        /* o_proj of the decode tokens (cp_layer.c step 7): lean's output merge all-reduces the
         * whole o_proj's partial outputs; otherwise a rank's head columns of o_proj (tp's shard,
         * or a column copy) and an all-reduce, or the heads' v gathered and the whole o_proj. */
        const bool lean_out = lean && cp->lean_merge == DSACP_LEAN_MERGE_OUTPUT && !tp_a2a;
        if (lean_out) {
            allreduce(&out[DSACP_PHASE_o_proj], nd * D, sz, W, me, L);
        } else if (tp || !s->o_gather_v) {
            if (tp && s->o_tp_f32 && s->deployed && (H * dv) % 128 == 0) gather_v(&out[DSACP_PHASE_o_proj], nd, H, Hs, dv, W, L);
            allreduce(&out[DSACP_PHASE_o_proj], nd * D, sz, W, me, L);
        } else {
            gather_v(&out[DSACP_PHASE_o_proj], nd, H, Hs, dv, W, L);
        }
    }

    /* ---- prefill entries: their split, the packed entries all-gathered, context gathered ---- */
    if (s->npre > 0) {
        add(&out[DSACP_PHASE_prefill_kv], L, L * npq[me] * E * (W - 1), L * others * E);
        if (Esh) add(&out[DSACP_PHASE_prefill_kv], L, L * ctx_me * (W - 1), L * ctx_others);
        int64_t orows = 0;
        for (int64_t q = 1; q < W; q++) orows += rows[q];
        if (s->want_logits) add(&out[DSACP_PHASE_logits], 1, me ? rows[me] * s->hidden_bytes : 0, me ? 0 : orows * s->hidden_bytes);
        if (s->want_topk) add(&out[DSACP_PHASE_topk_dump], L, me ? L * npq[me] * K * 4 : 0, me ? 0 : L * others * K * 4);
        if (tp_a2a && T > 0) { /* every token's v columns to their heads' ranks, the partial sums back (fp32) */
            const int64_t cme = heads(H, me, W) * dv;
            int64_t sent = 0, recv = 0;
            for (int64_t q = 0; q < W; q++) {
                if (q == me) continue;
                const int64_t cq = heads(H, q, W) * dv;
                sent += npq[me] * cq * 4 + npq[q] * D * 4;
                recv += npq[q] * cme * 4 + npq[me] * D * 4;
            }
            add(&out[DSACP_PHASE_o_proj], 2 * L, L * sent, L * recv);
        }
    }
    /* DSA-CP's weights, every step: layer-shard broadcasts from the layer's owner rank (l mod W);
     * tp's gather of the column shards when the step takes it. */
    for (int64_t l = 0; l < L && dsa; l++) {
        const bool root = l % W == me;
        if (cp->q_proj == DSACP_WEIGHTS_LAYER_SHARD)
            add(&out[DSACP_PHASE_q_proj_weight], 1, root ? s->q_bytes[l] * (W - 1) : 0, root ? 0 : s->q_bytes[l]);
        if (cp->o_proj == DSACP_WEIGHTS_LAYER_SHARD)
            add(&out[DSACP_PHASE_o_proj_weight], 1, root ? s->o_bytes[l] * (W - 1) : 0, root ? 0 : s->o_bytes[l]);
        if (tp && gather) {
            int64_t rest = 0; /* every other rank's shard (f32 when the heads split FP8 blocks) */
            for (int64_t q = 0; q < W; q++) rest += q == me ? 0 : s->o_shard_bytes[q];
            add(&out[DSACP_PHASE_o_proj_weight], 1, s->o_shard_bytes[me] * (W - 1), rest);
        }
    }
    free(npq), free(rows);
    return DSACP_OK;
}

void dsacp_plan_context_rule(const dsacp_config *cfg, const dsacp_cp_options *cp, int64_t W, int64_t latent_bytes,
                             int64_t index_bytes, bool deployed, bool o_gather_v, int64_t old_len, double *gather_bytes,
                             double *per_token)
{
    int64_t iW, iI, ir;
    index_groups(cp, W, 0, &iW, &iI, &ir);
    const double Wd = (double)W, H = (double)cfg->num_attention_heads, K = (double)cfg->index_topk;
    const double dc = (double)cfg->kv_lora_rank, dk = dc + (double)cfg->qk_rope_head_dim;
    const double dv = (double)cfg->v_head_dim, D = (double)cfg->hidden_size;
    const bool lsh = cp->kv_layout == DSACP_LAYOUT_SHARDED, ish = iW > 1;
    const double esh = (lsh ? (double)latent_bytes : 0) + (ish ? (double)index_bytes : 0);
    *gather_bytes = (Wd - 1) / Wd * (double)old_len * esh;
    const bool deployed16 = deployed && cp->partials == DSACP_PARTIALS_AUTO;
    const double s = cp->decode == DSACP_DECODE_LEAN && deployed16 ? 2 : 4;
    const double oproj = o_gather_v ? (H - H / Wd) * dv * 4 : 2 * (Wd - 1) / Wd * D * s;
    switch (cp->decode) {
    case DSACP_DECODE_LEAN: {
        const bool out = cp->lean_merge == DSACP_LEAN_MERGE_OUTPUT;
        const double kpg = (double)lean_kprime(cfg->index_topk, iW, cp->lean_factor);
        *per_token = (ish ? ((double)iW - 1) * kpg * 4 : 0) + (Wd - 1) * H * 4 + (out ? 0 : (Wd - 1) * (H / Wd) * dv * s) +
                     (out ? 2 * (Wd - 1) / Wd * D * s : oproj);
        break;
    }
    case DSACP_DECODE_EXACT_TOPK:
    case DSACP_DECODE_REPLICATED_INDEX:
        *per_token = (cp->decode == DSACP_DECODE_EXACT_TOPK ? ((double)iW - 1) * K * 8 : 0) + (H - H / Wd) * dk * 4 +
                     (Wd - 1) * H * 4 + (Wd - 1) * (H / Wd) * dc * 4 + oproj;
        break;
    default: /* allgather-kv gathers the context for decode tokens too: never cheaper */
        *per_token = *gather_bytes + 1;
        break;
    }
}

int dsacp_plan_entries_comm(const dsacp_config *cfg, const dsacp_cp_options *cp, const dsacp_plan_step *base,
                            const dsacp_plan_entry *ent, int64_t n, dsacp_comm_counter out[DSACP_PHASE_COUNT])
{
    dsacp_plan_step s = *base;
    const int64_t W = s.W;
    int64_t iW, iI, ir;
    index_groups(cp, W, 0, &iW, &iI, &ir);
    /* The engine's classification (src/cp/cp_layer.c, dsacp_cp_step_build): a one-token entry
     * is a decode token on every rank unless DSA-CP keeps every cache whole; a chunk after a
     * sharded context takes the context path (auto: the byte rule above). */
    const bool dsa_cp_only = cp->mode == DSACP_CP_DSA_CP &&
                             (W == 1 || (cp->kv_layout == DSACP_LAYOUT_REPLICATED && cp->index_layout == DSACP_LAYOUT_REPLICATED));
    const bool sharded = W > 1 && !dsa_cp_only && (cp->kv_layout == DSACP_LAYOUT_SHARDED || iW > 1);
    int64_t T = 0;
    bool multi = false;
    for (int64_t e = 0; e < n; e++) {
        if (ent[e].n_new < 0 || ent[e].old_len < 0) return dsacp_error(DSACP_EINVAL, "plan: entry %lld has negative lengths", (long long)e);
        T += ent[e].n_new;
        multi = multi || ent[e].n_new > 1;
    }
    const size_t cap = (size_t)(T > 0 ? T : 1), ce = (size_t)(n > 0 ? n : 1);
    int64_t *ctx = malloc(cap * sizeof *ctx), *req = malloc(cap * sizeof *req), *rold = malloc(ce * sizeof *rold);
    int64_t *pold = malloc(ce * sizeof *pold), *pnew = malloc(ce * sizeof *pnew), *pfirst = malloc(ce * sizeof *pfirst);
    int rc = ctx && req && rold && pold && pnew && pfirst ? DSACP_OK : dsacp_error(DSACP_ENOMEM, "out of memory");
    int64_t first = 0;
    s.nd = s.nreq = s.npre = 0;
    for (int64_t e = 0; e < n && !rc; e++) {
        bool dec = !dsa_cp_only && ent[e].n_new == 1;
        if (!dec && sharded && ent[e].old_len > 0 && ent[e].n_new >= 1)
            rc = dsacp_plan_context_distributed(cfg, cp, W, s.latent_bytes, s.index_bytes, s.deployed, s.o_gather_v, s.o_tp_f32,
                                                s.context_hw, ent[e].old_len, ent[e].n_new, &dec);
        if (dec) {
            for (int64_t j = 0; j < ent[e].n_new; j++) ctx[s.nd] = ent[e].old_len + j, req[s.nd++] = s.nreq;
            rold[s.nreq++] = ent[e].old_len;
        } else if (ent[e].n_new > 0) {
            pfirst[s.npre] = first, pold[s.npre] = ent[e].old_len, pnew[s.npre++] = ent[e].n_new;
        }
        first += ent[e].n_new;
    }
    s.context = ctx, s.request = req, s.req_old = rold, s.pre_old = pold, s.pre_new = pnew;
    s.pre_first = pfirst, s.step_tokens = T;
    /* tp's path for the step (src/cp/cp_weights.c): tp gathers when an entry brings more than one
     * token; auto decides by bytes in dsacp_plan_step_comm, which knows each rank's tokens. */
    if (cp->o_proj == DSACP_WEIGHTS_TP) s.tp_gather = multi, s.tp_auto = false;
    else if (cp->o_proj == DSACP_WEIGHTS_TP_GATHER) s.tp_gather = true, s.tp_auto = false;
    else if (cp->o_proj == DSACP_WEIGHTS_TP_A2A) s.tp_gather = false, s.tp_auto = false;
    else if (cp->o_proj == DSACP_WEIGHTS_AUTO) s.tp_auto = true;
    if (!rc) rc = dsacp_plan_step_comm(cfg, cp, &s, out);
    free(ctx), free(req), free(rold), free(pold), free(pnew), free(pfirst);
    return rc;
}

void dsacp_plan_o_paths(const dsacp_config *cfg, const dsacp_cp_options *cp, int64_t W, dsacp_dtype dtype, int64_t block,
                        bool *gather_v, bool *tp_f32)
{
    bool split = false; /* some rank's head columns start inside an FP8 block */
    for (int64_t q = 0; q <= W && dtype == DSACP_F8_E4M3 && block > 0; q++) {
        const int64_t c = split_begin(cfg->num_attention_heads, q, W) * cfg->v_head_dim;
        if (c % block && c != cfg->num_attention_heads * cfg->v_head_dim) split = true;
    }
    const bool dsa = cp->mode == DSACP_CP_DSA_CP;
    *tp_f32 = W > 1 && dsa && cp->o_proj >= DSACP_WEIGHTS_TP && split;
    if (dsa && cp->o_proj != DSACP_WEIGHTS_REPLICATED) *gather_v = cp->o_proj == DSACP_WEIGHTS_LAYER_SHARD;
    else *gather_v = W > 1 && split;
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
