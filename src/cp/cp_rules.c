/*
 * cp_rules.c -- the rules that look up the strategy table (cp_strategy.c), above it and above
 * the strategy files: the option check every caller shares (dsacp_cp_options_check: the engine
 * and the CLI), the whole decode formula of a step (the strategy's phases plus the decode rows'
 * o_proj, cp_layer.c step 7), the context path's byte rule and the o_proj path the engine uses
 * at run time (the planner calls them), and the configured strategy's report members. The
 * planner (src/plan) and test_cp call the formulas; the layer's collectives are measured equal
 * to them. Logical bytes as comm.c counts.
 */
#include "cp/cp_strategy.h"

#include <string.h>

/* The values of the option enums, then their combinations (the same verdict on every rank). */
static int check_values(const dsacp_cp_options *cp)
{
    if (cp->interleave < 1 || cp->interleave > ((int64_t)1 << 30))
        return dsacp_error(DSACP_EINVAL, "interleave = %lld: must be in [1, 2^30]", (long long)cp->interleave);
    if ((unsigned)cp->decode >= (unsigned)dsacp_cp_strategy_count() || (unsigned)cp->kv_layout > 1 || (unsigned)cp->index_layout > 2 ||
        (unsigned)cp->prefill_split > 2 || (unsigned)cp->mode > 1 || (unsigned)cp->q_proj > 5 || (unsigned)cp->o_proj > 5 ||
        (unsigned)cp->lean_merge > 1 || (unsigned)cp->partials > 1 || (unsigned)cp->context_path > 2 ||
        (unsigned)cp->merge_backend > 1)
        return dsacp_error(DSACP_EINVAL, "unknown context-parallel option value");
    if (cp->context_hardware && cp->context_path != DSACP_CONTEXT_AUTO)
        return dsacp_error(DSACP_EINVAL, "context_hardware %s: used only by context_path auto (the path is %s)",
                           cp->context_hardware, dsacp_context_path_name(cp->context_path));
    if (!(cp->lean_factor >= 1.0 && cp->lean_factor <= 1024.0))
        return dsacp_error(DSACP_EINVAL, "lean_factor = %g: must be in [1, 1024] (times index_topk / W scores per "
                           "rank)", cp->lean_factor);
    return DSACP_OK;
}

int dsacp_decode_strategy_check(const dsacp_cp_options *cp, int W, int64_t block_size)
{
    if ((unsigned)cp->decode >= (unsigned)dsacp_cp_strategy_count())
        return dsacp_error(DSACP_EINVAL, "decode = %d: not a decode strategy", (int)cp->decode);
    /* Decode tokens attend over the sharded cache with the decode strategy in DCP and in DSA-CP +
     * DCP (DSA-CP with every cache replicated attends locally). */
    const bool dcp_decode = cp->mode == DSACP_CP_DCP || cp->kv_layout == DSACP_LAYOUT_SHARDED ||
                            cp->index_layout == DSACP_LAYOUT_SHARDED;
    const dsacp_cp_strategy *s = dsacp_cp_strategy_of(cp);
    return s->check ? s->check(cp, W, block_size, dcp_decode) : DSACP_OK;
}

int dsacp_cp_options_check(const dsacp_config *cfg, const dsacp_cp_options *cp, int W, int64_t block_size)
{
    int rc = check_values(cp);
    if (rc) return rc;
    if (cp->index_layout == DSACP_LAYOUT_PARTIAL && (cp->index_group < 1 || W % cp->index_group))
        return dsacp_error(DSACP_EINVAL, "index_layout partial:%lld: index_group must divide the %d ranks",
                           (long long)cp->index_group, W);
    if (cp->index_layout == DSACP_LAYOUT_PARTIAL && cp->mode == DSACP_CP_DSA_CP)
        return dsacp_error(DSACP_EINVAL, "index_layout partial belongs to mode dcp");
    if (cp->prefetch < 1 || cp->prefetch > 64)
        return dsacp_error(DSACP_EINVAL, "prefetch = %lld: must be in [1, 64]", (long long)cp->prefetch);
    if (cp->mode == DSACP_CP_DCP && (cp->q_proj != DSACP_WEIGHTS_REPLICATED || cp->o_proj != DSACP_WEIGHTS_REPLICATED))
        return dsacp_error(DSACP_EINVAL, "q_proj/o_proj plans belong to mode dsa-cp (DCP splits the heads of "
                           "q_b_proj and o_proj already)");
    if (cp->q_proj >= DSACP_WEIGHTS_TP)
        return dsacp_error(DSACP_EINVAL, "q_proj = %s: q_b_proj is replicated or layer-shard (tp and auto are o_proj "
                           "plans)", dsacp_weight_plan_name(cp->q_proj));
    if ((rc = dsacp_decode_strategy_check(cp, W, block_size))) return rc;
    if (W > cfg->max_position_embeddings)
        return dsacp_error(DSACP_EINVAL, "%d ranks exceed max_position_embeddings %lld: a rank would own no "
                           "position", W, (long long)cfg->max_position_embeddings);
    return DSACP_OK;
}

int dsacp_cp_strategy_report(const dsacp_cp_options *opt, json_t *obj)
{
    const dsacp_cp_strategy *s = dsacp_cp_strategy_of(opt);
    return s->report ? s->report(opt, obj) : DSACP_OK;
}

/* The heads' v rows of the decode tokens all-gathered (cp_layer.c gather_v). */
static void gather_v(const dsacp_cp_formula *f, dsacp_comm_counter *c)
{
    const int64_t L = dsacp_cp_formula_layers(f), H = f->cfg->num_attention_heads, dv = f->cfg->v_head_dim;
    const int64_t Hs = dsacp_cp_heads(H, f->me, f->W);
    dsacp_cp_count(c, L, L * f->nd * Hs * dv * 4 * (f->W - 1), L * f->nd * (H - Hs) * dv * 4);
}

int64_t dsacp_cp_formula_shared_len(const dsacp_cp_formula *f)
{
    const dsacp_cp_strategy *s = dsacp_cp_strategy_of(f->opt);
    const int64_t n = f->nd > 0 && s->shared_len ? s->shared_len(f) : 0;
    return n > 0 ? n : 0;
}

void dsacp_cp_formula_shared_into(const dsacp_cp_formula *f, int64_t *sh)
{
    const int64_t n = dsacp_cp_formula_shared_len(f);
    if (n <= 0) return;
    memset(sh, 0, (size_t)n * sizeof *sh);
    dsacp_cp_strategy_of(f->opt)->shared(f, sh);
}

int dsacp_cp_formula_shared(const dsacp_cp_formula *f, int64_t **sh)
{
    *sh = NULL;
    const int64_t n = dsacp_cp_formula_shared_len(f);
    if (n <= 0) return DSACP_OK;
    *sh = dsacp_calloc((size_t)n, sizeof **sh);
    if (!*sh) return dsacp_error_context(DSACP_ENOMEM, "the decode formula's shared counts");
    dsacp_cp_formula_shared_into(f, *sh);
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
    const int64_t L = dsacp_cp_formula_layers(f), H = cfg->num_attention_heads, dv = cfg->v_head_dim, D = cfg->hidden_size;
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
