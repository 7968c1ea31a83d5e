/*
 * engine_cp -- the engine's context-parallel side: validation of the engine and CP options, the
 * CP context of a created engine (communicators, head split, indexer sharding, DSA-CP weight
 * plans, o_proj column shards), what each rank keeps of a layout, and the CP views of an engine.
 */
#include "engine/engine_internal.h"
#include "cp/cp_strategy.h"

#include <stdlib.h>
#include <string.h>

/* Validation of the options, before anything is allocated (the same verdict on every rank). */
int dsacp_engine_check_options(const dsacp_config *cfg, const dsacp_engine_options *opt, const dsacp_cp_options *cp,
                               int W)
{
    if (opt->numerics != DSACP_NUMERICS_EXACT && opt->numerics != DSACP_NUMERICS_DEPLOYED)
        return dsacp_error(DSACP_EINVAL, "unknown numerics mode %d", (int)opt->numerics);
    if (opt->kv_dtype != DSACP_KV_F32 && opt->kv_dtype != DSACP_KV_BF16 && opt->kv_dtype != DSACP_KV_FP8)
        return dsacp_error(DSACP_EINVAL, "unknown kv dtype %d", (int)opt->kv_dtype);
    if (opt->kv_dtype == DSACP_KV_FP8 && opt->numerics != DSACP_NUMERICS_DEPLOYED)
        return dsacp_error(DSACP_EINVAL, "the fp8 latent cache belongs to the deployed numerics mode");
    /* The CP options: one check for the engine and the CLI (src/cp/cp_strategy.c). */
    return dsacp_cp_options_check(cfg, cp, W, opt->block_size);
}

/* The longest context the pools can hold (the positions one rank keeps, times W when the
 * latent cache is sharded), capped by the model's positions: what context-sized workspace
 * buffers are sized for. */
int64_t dsacp_engine_max_context(const dsacp_engine *e)
{
    const int W = dsacp_comm_size(e->comm);
    const int64_t local = e->cache->num_blocks * e->opt.block_size; /* positions one rank's pool holds */
    const bool sharded = W > 1 && e->cp.opt.kv_layout == DSACP_LAYOUT_SHARDED;
    const int64_t whole = sharded && local <= INT64_MAX / W ? local * W : local;
    return whole < e->cfg->max_position_embeddings ? whole : e->cfg->max_position_embeddings;
}


int dsacp_engine_setup_cp(dsacp_engine *e, const dsacp_cp_options *cp)
{
    const dsacp_config *cfg = e->cfg;
    const int W = dsacp_comm_size(e->comm), me = dsacp_comm_rank(e->comm);
    const int64_t H = cfg->num_attention_heads, dv = cfg->v_head_dim;
    e->cp.comm = e->comm;
    e->cp.W = W;
    e->cp.icomm = e->comm;
    if (W > 1 && cp->index_layout == DSACP_LAYOUT_PARTIAL) {
        /* The one collective of the setup, first: every rank reaches it (the caller agreed
         * before), whatever fails below is local and agreed after. The candidates travel
         * between the groups: one rank of each, the same place in its group. */
        int rc = dsacp_comm_split(e->comm, (int)(me % cp->index_group), me, &e->cp.icomm_own);
        if (rc) return rc;
        e->cp.icomm = e->cp.icomm_own;
    }
    if (dsacp_fault("cp")) return dsacp_fault_error("cp", "context-parallel setup");
    if (cp->context_hardware) { /* --context-path auto by the planner's time on this profile */
        int hrc = dsacp_engine_plan_load_hw(e, cp->context_hardware);
        if (hrc) return hrc;
    }
    e->cp.rank = me;
    e->cp.opt = *cp;
    e->cp.opt.context_hardware = NULL; /* read into cp.hw above; the caller's string need not outlive this */
    e->cp.lat = e->cache;
    e->cp.idx = e->icache;
    e->cp.block_size = e->opt.block_size;
    e->cp.h0 = dsacp_split_begin(H, me, W);
    e->cp.h1 = dsacp_split_begin(H, me + 1, W);
    e->cp.cfg = cfg;
    /* The indexer cache as a sharding of its own: W_i holders of I_i-position runs (docs section 1). */
    dsacp_cp_index_groups(cp, W, me, &e->cp.iW, &e->cp.iI, &e->cp.ir);
    e->cp.deployed = e->opt.numerics == DSACP_NUMERICS_DEPLOYED;
    e->cp.ws = &e->ws;
    e->cp.layer_w = e->attn;
    e->cp.n_layers = e->NL; /* the target's layers, then the MTP layer's with option mtp */
    e->cp.max_context = dsacp_engine_max_context(e);
    /* DSA-CP: every rank runs all heads for its tokens; the weight plans say where the whole
     * q_b_proj and o_proj come from (cp_weights.c). */
    if (cp->mode == DSACP_CP_DSA_CP) {
        int rc = dsacp_cp_weights_setup(&e->cp, e->attn, e->NL);
        const bool dcp_decode = W > 1 && (cp->kv_layout == DSACP_LAYOUT_SHARDED || cp->index_layout == DSACP_LAYOUT_SHARDED);
        if (rc || !dcp_decode) return rc;
        /* DSA-CP + DCP: decode tokens are processed by every rank with the heads split. Their o_proj
         * columns: tp's shards (cp_layer.c), or the whole layer-shard weight after a v gather, or,
         * with a replicated o_proj, the column copies below. */
        if (cp->o_proj == DSACP_WEIGHTS_LAYER_SHARD) e->cp.o_gather_v = true;
        if (cp->o_proj != DSACP_WEIGHTS_REPLICATED) return DSACP_OK;
    }
    if (W == 1) return DSACP_OK;
    /* One decision for the whole group (dsacp_cp_o_paths): the head columns of every rank must
     * fall on o_proj's FP8 blocks for the column shards, otherwise the heads' outputs travel. */
    bool tp_f32;
    dsacp_cp_o_paths(cfg, cp, W, e->attn[0].o->dtype, e->attn[0].o->block, &e->cp.o_gather_v, &tp_f32);
    if (e->cp.o_gather_v) return DSACP_OK;
    e->cp.o_shard = calloc((size_t)e->NL, sizeof *e->cp.o_shard);
    if (!e->cp.o_shard) return dsacp_error(DSACP_ENOMEM, "out of memory");
    for (int64_t l = 0; l < e->NL; l++) {
        int rc = dsacp_cp_weight_columns(e->attn[l].o, e->cp.h0 * dv, e->cp.h1 * dv, false, &e->cp.o_shard[l]);
        if (rc) return rc;
    }
    return DSACP_OK;
}

void dsacp_engine_release_cp(dsacp_engine *e)
{
    if (e->cp.o_shard) {
        for (int64_t l = 0; l < e->NL; l++) dsacp_cp_weight_free(e->cp.o_shard[l]);
        free(e->cp.o_shard);
    }
    dsacp_cp_weights_free(e->cp.wp);
    dsacp_kv_cache_free(e->cp.stage);
    dsacp_cp_views_release(&e->cp);
    free(e->cp.ctx_choices);
    free(e->cp.hw);
    dsacp_comm_free(e->cp.icomm_own);
}

/* Positions of [0, L) rank q keeps in a cache of the given layout. */
int64_t dsacp_engine_kept_on(const dsacp_engine *e, dsacp_cp_layout layout, int64_t L, int q)
{
    const int W = e->cp.W;
    const int64_t I = e->cp.opt.interleave, G = e->cp.opt.index_group;
    if (W > 1 && layout == DSACP_LAYOUT_PARTIAL) return dsacp_cp_local_len(L, q / G, I * G, W / G);
    return W == 1 || layout == DSACP_LAYOUT_REPLICATED ? L : dsacp_cp_local_len(L, q, I, W);
}

void dsacp_engine_cp_stats(const dsacp_engine *e, dsacp_cp_stats *out) { *out = e->cp.stats; }

void dsacp_engine_cp_stats_reset(dsacp_engine *e)
{
    memset(&e->cp.stats, 0, sizeof e->cp.stats);
    dsacp_engine_plan_stats_reset(e);
}

void dsacp_engine_weight_usage(const dsacp_engine *e, dsacp_weight_usage *u) { dsacp_cp_weights_usage(&e->cp, u); }

const dsacp_engine_options *dsacp_engine_options_get(const dsacp_engine *e) { return &e->opt; }
const dsacp_cp_options *dsacp_engine_cp_options(const dsacp_engine *e) { return &e->cp.opt; }
