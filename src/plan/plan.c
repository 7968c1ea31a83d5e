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

    /* control: capacity, metadata and end agreements (4 bytes each), rank 0's two want flags,
     * per layer the allocation agreement and, when the layer builds views, their agreement. */
    const bool views = Esh && ((nd > 0 && cp->decode == DSACP_DECODE_ALLGATHER_KV) || s->npre > 0);
    const int64_t agrees = 3 + L * (1 + (views ? 1 : 0));
    add(&out[DSACP_PHASE_control], agrees + 1, agrees * 4 * (W - 1) + (me ? 0 : 2 * (W - 1)),
        agrees * 4 * (W - 1) + (me ? 2 : 0));

    /* ---- decode-like tokens: the strategy ---- */
    if (nd > 0) {
        switch (cp->decode) {
        case DSACP_DECODE_ALLGATHER_KV:
            if (Esh) {
                int64_t mine = 0, others = 0;
                for (int64_t r = 0; r < s->nreq; r++)
                    for (int64_t q = 0; q < W; q++) {
                        const int64_t b = dsacp_cp_local_len(s->req_old[r], q, I, W) * Esh;
                        if (q == me) mine += b;
                        else others += b;
                    }
                add(&out[DSACP_PHASE_kv_gather], L, L * mine * (W - 1), L * others);
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
            const int64_t sz = s->deployed && cp->partials == DSACP_PARTIALS_AUTO ? 2 : 4;
            int64_t mine = 0, others = 0;
            for (int64_t j = 0; j < nd && iW > 1; j++) {
                const int64_t n = s->context[j] + 1;
                if (n <= K) continue;
                for (int64_t q = 0; q < iW; q++) {
                    const int64_t nq = dsacp_cp_local_len(n, q, iI, iW), mq = nq < kp ? nq : kp;
                    if (q == ir) mine += mq;
                    else others += mq;
                }
            }
            if (mine + others > 0) add(&out[DSACP_PHASE_index_candidates], L, L * mine * 4 * (iW - 1), L * others * 4);
            add(&out[DSACP_PHASE_lean_fallback], s->lean_fallback_rounds, s->lean_fallback_tokens * K * 8 * (iW - 1),
                s->lean_fallback_tokens * K * 8 * (iW - 1));
            const bool values = cp->lean_merge == DSACP_LEAN_MERGE_VALUES;
            if (values && cp->merge_backend == DSACP_MERGE_A2A) {
                add(&out[DSACP_PHASE_attn_merge], L, L * nd * (H - Hs) * (dv * sz + 4), L * nd * Hs * (dv * sz + 4) * (W - 1));
            } else {
                add(&out[DSACP_PHASE_attn_merge], L, L * nd * H * 4 * (W - 1), L * nd * H * 4 * (W - 1));
                if (values) add(&out[DSACP_PHASE_attn_merge], L, L * nd * (H - Hs) * dv * sz, L * nd * Hs * dv * sz * (W - 1));
            }
            if (values && s->o_gather_v) add(&out[DSACP_PHASE_o_proj], L, L * nd * Hs * dv * 4 * (W - 1), L * nd * (H - Hs) * dv * 4);
            else allreduce(&out[DSACP_PHASE_o_proj], nd * D, sz, W, me, L);
            goto prefill;
        }
        }
        if (s->o_gather_v) add(&out[DSACP_PHASE_o_proj], L, L * nd * Hs * dv * 4 * (W - 1), L * nd * (H - Hs) * dv * 4);
        else allreduce(&out[DSACP_PHASE_o_proj], nd * D, 4, W, me, L);
    }
prefill:
    /* ---- prefill entries: their split, the packed entries all-gathered, context gathered ---- */
    if (s->npre > 0) {
        int64_t *npq = calloc((size_t)W, sizeof *npq), T = 0, t = 0, ctx_me = 0, ctx_others = 0;
        if (!npq) return dsacp_error(DSACP_ENOMEM, "out of memory");
        for (int64_t e = 0; e < s->npre; e++) T += s->pre_new[e];
        for (int64_t e = 0; e < s->npre; e++) {
            const int64_t n = s->pre_new[e], o = s->pre_old[e];
            for (int64_t i = 0; i < n; i++, t++) {
                int64_t q;
                if (cp->prefill_split == DSACP_PREFILL_CONTIGUOUS) {
                    q = t / ((T + W - 1) / W);
                } else if (cp->prefill_split == DSACP_PREFILL_ZIGZAG) {
                    int64_t c = i * 2 * W / n;
                    while (c + 1 < 2 * W && split_begin(n, c + 1, 2 * W) <= i) c++;
                    while (c > 0 && split_begin(n, c, 2 * W) > i) c--;
                    q = c < W ? c : 2 * W - 1 - c;
                } else {
                    q = dsacp_cp_owner(o + i, I, W);
                }
                npq[q]++;
            }
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
        add(&out[DSACP_PHASE_prefill_kv], L, L * npq[me] * E * (W - 1), L * others * E);
        if (Esh) add(&out[DSACP_PHASE_prefill_kv], L, L * ctx_me * (W - 1), L * ctx_others);
        add(&out[DSACP_PHASE_logits], 1, me ? npq[me] * s->hidden_bytes : 0, me ? 0 : others * s->hidden_bytes);
        /* DSA-CP weight plans: layer-shard broadcasts from the layer's owner rank (l mod W); tp
         * gathers the column shards, or moves every token's v columns to their heads' ranks and
         * the partial sums back (all-to-all + reduce-scatter, fp32) */
        for (int64_t l = 0; l < L && cp->mode == DSACP_CP_DSA_CP && s->q_bytes && s->o_bytes; l++) {
            const bool root = l % W == me;
            if (cp->q_proj == DSACP_WEIGHTS_LAYER_SHARD)
                add(&out[DSACP_PHASE_q_proj_weight], 1, root ? s->q_bytes[l] * (W - 1) : 0, root ? 0 : s->q_bytes[l]);
            if (cp->o_proj == DSACP_WEIGHTS_LAYER_SHARD)
                add(&out[DSACP_PHASE_o_proj_weight], 1, root ? s->o_bytes[l] * (W - 1) : 0, root ? 0 : s->o_bytes[l]);
            if (cp->o_proj == DSACP_WEIGHTS_TP || cp->o_proj == DSACP_WEIGHTS_AUTO || cp->o_proj == DSACP_WEIGHTS_TP_GATHER ||
                cp->o_proj == DSACP_WEIGHTS_TP_A2A) {
                if (s->tp_gather) {
                    add(&out[DSACP_PHASE_o_proj_weight], 1, s->o_shard_bytes[me] * (W - 1), s->o_bytes[l] - s->o_shard_bytes[me]);
                } else {
                    const int64_t cme = heads(H, me, W) * dv;
                    int64_t sent = 0, recv = 0;
                    for (int64_t q = 0; q < W; q++) {
                        if (q == me) continue;
                        const int64_t cq = heads(H, q, W) * dv;
                        sent += npq[me] * cq * 4 + npq[q] * D * 4;
                        recv += npq[q] * cme * 4 + npq[me] * D * 4;
                    }
                    add(&out[DSACP_PHASE_o_proj], 2, sent, recv);
                }
            }
        }
        free(npq);
    }
    return DSACP_OK;
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
