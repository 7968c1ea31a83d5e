/*
 * cp_formula.c -- the byte and call formulas of the decode path (docs/context-parallel.md
 * sections 3 and 7), written once: each strategy's own phases (its file's `comm`) plus what the
 * layer adds around them (the decode rows' o_proj), and the two run-time rules built on them --
 * the context path's byte rule and the o_proj path. The planner (src/plan) and test_cp call
 * these; the layer's collectives are measured equal to them. Logical bytes as comm.c counts.
 */
#include "cp/cp_strategy.h"

#include <stdlib.h>

void dsacp_cp_count(dsacp_comm_counter *c, int64_t calls, int64_t sent, int64_t recv)
{
    c->calls += calls;
    c->bytes_sent += sent;
    c->bytes_recv += recv;
}

void dsacp_cp_index_groups(const dsacp_cp_options *opt, int64_t W, int64_t rank, int64_t *iW, int64_t *iI, int64_t *ir)
{
    *iW = 1, *iI = 1, *ir = 0;
    if (W > 1 && opt->index_layout == DSACP_LAYOUT_SHARDED) *iW = W, *iI = opt->interleave, *ir = rank;
    if (W > 1 && opt->index_layout == DSACP_LAYOUT_PARTIAL) {
        const int64_t G = opt->index_group;
        *iW = W / G, *iI = opt->interleave * G, *ir = rank / G;
    }
}

int64_t dsacp_cp_formula_sharded_entry(const dsacp_cp_formula *f)
{
    const bool lsh = f->opt->kv_layout == DSACP_LAYOUT_SHARDED, ish = f->iW > 1;
    return (lsh ? f->latent_bytes : 0) + (ish ? f->index_bytes : 0);
}

int64_t dsacp_cp_wire_bytes(const dsacp_cp_strategy *s, const dsacp_cp_options *opt, bool deployed)
{
    return s->wire_bytes ? s->wire_bytes(opt, deployed) : 4;
}

void dsacp_cp_formula_allreduce(dsacp_comm_counter *c, int64_t n, int64_t s, int64_t W, int64_t me, int64_t L)
{
    const int64_t mine = (dsacp_split_begin(n, me + 1, W) - dsacp_split_begin(n, me, W)) * s, b = mine * (W - 1) + (n * s - mine);
    dsacp_cp_count(c, L, L * b, L * b);
}

void dsacp_cp_formula_merge(const dsacp_cp_formula *f, dsacp_comm_counter out[DSACP_PHASE_COUNT])
{
    const dsacp_config *cfg = f->cfg;
    const int64_t L = cfg->num_hidden_layers, H = cfg->num_attention_heads, dc = cfg->kv_lora_rank;
    const int64_t dk = dc + cfg->qk_rope_head_dim, W = f->W, nd = f->nd, Hs = dsacp_cp_heads(H, f->me, W);
    dsacp_cp_count(&out[DSACP_PHASE_query_gather], L, L * nd * Hs * dk * 4 * (W - 1), L * nd * (H - Hs) * dk * 4);
    if (f->opt->merge_backend == DSACP_MERGE_A2A)
        dsacp_cp_count(&out[DSACP_PHASE_attn_merge], L, L * nd * (H - Hs) * (dc + 1) * 4, L * nd * Hs * (dc + 1) * 4 * (W - 1));
    else
        dsacp_cp_count(&out[DSACP_PHASE_attn_merge], 2 * L, L * (nd * H * 4 * (W - 1) + nd * (H - Hs) * dc * 4),
                       L * (nd * H * 4 * (W - 1) + nd * Hs * dc * 4 * (W - 1)));
}

double dsacp_cp_merge_token_bytes(const dsacp_cp_formula *f, double candidates, double oproj_bytes)
{
    const double Wd = (double)f->W, H = (double)f->cfg->num_attention_heads, dc = (double)f->cfg->kv_lora_rank;
    const double dk = dc + (double)f->cfg->qk_rope_head_dim;
    return candidates + (H - H / Wd) * dk * 4 + (Wd - 1) * H * 4 + (Wd - 1) * (H / Wd) * dc * 4 + oproj_bytes;
}

/* The heads' v rows of the decode tokens all-gathered (cp_layer.c gather_v). */
static void gather_v(const dsacp_cp_formula *f, dsacp_comm_counter *c)
{
    const int64_t L = f->cfg->num_hidden_layers, H = f->cfg->num_attention_heads, dv = f->cfg->v_head_dim;
    const int64_t Hs = dsacp_cp_heads(H, f->me, f->W);
    dsacp_cp_count(c, L, L * f->nd * Hs * dv * 4 * (f->W - 1), L * f->nd * (H - Hs) * dv * 4);
}

int dsacp_cp_formula_shared(const dsacp_cp_formula *f, int64_t **sh)
{
    *sh = NULL;
    const dsacp_cp_strategy *s = dsacp_cp_strategy_of(f->opt);
    const int64_t n = f->nd > 0 && s->shared_len ? s->shared_len(f) : 0;
    if (n <= 0) return DSACP_OK;
    *sh = calloc((size_t)n, sizeof **sh);
    if (!*sh) return dsacp_error(DSACP_ENOMEM, "out of memory for the decode formula");
    s->shared(f, *sh);
    return DSACP_OK;
}

void dsacp_cp_decode_comm(const dsacp_cp_formula *f, const int64_t *sh, dsacp_comm_counter out[DSACP_PHASE_COUNT])
{
    if (f->nd <= 0) return;
    const dsacp_cp_strategy *s = dsacp_cp_strategy_of(f->opt);
    s->comm(f, sh, out);
    /* o_proj of the decode rows (cp_layer.c step 7): the strategy's own output merge, or the
     * rank's head columns (tp's shard or a column copy) and an all-reduce, or the heads' v
     * gathered and the whole o_proj. */
    const dsacp_config *cfg = f->cfg;
    const int64_t L = cfg->num_hidden_layers, H = cfg->num_attention_heads, dv = cfg->v_head_dim, D = cfg->hidden_size;
    const int64_t sz = dsacp_cp_wire_bytes(s, f->opt, f->deployed);
    dsacp_comm_counter *o = &out[DSACP_PHASE_o_proj];
    if (s->merges_output && s->merges_output(f->opt, f->tp_a2a)) {
        dsacp_cp_formula_allreduce(o, f->nd * D, sz, f->W, f->me, L);
    } else if (f->tp || !f->o_gather_v) {
        if (f->tp && f->o_tp_f32 && f->deployed && (H * dv) % 128 == 0) gather_v(f, o);
        dsacp_cp_formula_allreduce(o, f->nd * D, sz, f->W, f->me, L);
    } else {
        gather_v(f, o);
    }
}

void dsacp_cp_context_bytes(const dsacp_config *cfg, const dsacp_cp_options *cp, int64_t W, int64_t latent_bytes,
                            int64_t index_bytes, bool deployed, bool o_gather_v, int64_t old_len, double *gather_bytes,
                            double *per_token)
{
    dsacp_cp_formula f = {.cfg = cfg, .opt = cp, .W = W, .latent_bytes = latent_bytes, .index_bytes = index_bytes,
                          .deployed = deployed, .o_gather_v = o_gather_v};
    dsacp_cp_index_groups(cp, W, 0, &f.iW, &f.iI, &f.ir);
    const double Wd = (double)W, H = (double)cfg->num_attention_heads;
    const double dv = (double)cfg->v_head_dim, D = (double)cfg->hidden_size;
    *gather_bytes = (Wd - 1) / Wd * (double)old_len * (double)dsacp_cp_formula_sharded_entry(&f);
    const dsacp_cp_strategy *s = dsacp_cp_strategy_of(cp);
    const double sz = (double)dsacp_cp_wire_bytes(s, cp, deployed);
    const double oproj = o_gather_v ? (H - H / Wd) * dv * 4 : 2 * (Wd - 1) / Wd * D * sz;
    /* A strategy that gathers the context for decode tokens too is never cheaper than the gather. */
    *per_token = s->gathers_context ? *gather_bytes + 1 : s->token_bytes(&f, *gather_bytes, oproj);
}

void dsacp_cp_o_paths(const dsacp_config *cfg, const dsacp_cp_options *cp, int64_t W, dsacp_dtype dtype, int64_t block,
                      bool *gather_v, bool *tp_f32)
{
    bool split = false; /* some rank's head columns start inside an FP8 block */
    for (int64_t q = 0; q <= W && dtype == DSACP_F8_E4M3 && block > 0; q++) {
        const int64_t c = dsacp_split_begin(cfg->num_attention_heads, q, W) * cfg->v_head_dim;
        if (c % block && c != cfg->num_attention_heads * cfg->v_head_dim) split = true;
    }
    const bool dsa = cp->mode == DSACP_CP_DSA_CP;
    *tp_f32 = W > 1 && dsa && cp->o_proj >= DSACP_WEIGHTS_TP && split;
    if (dsa && cp->o_proj != DSACP_WEIGHTS_REPLICATED) *gather_v = cp->o_proj == DSACP_WEIGHTS_LAYER_SHARD;
    else *gather_v = W > 1 && split;
}
