/*
 * cp_strategy.c -- the table of decode strategies (cp_strategy.h): their names, the option
 * check every caller shares (dsacp_cp_options_check: the engine and the CLI), and the report
 * members of the configured strategy. A new strategy adds one line to `table`.
 */
#include "cp/cp_strategy.h"

#include <assert.h>
#include <stdio.h>
#include <string.h>

/* The registration: one definition per strategy file, indexed by dsacp_decode_strategy (the
 * first four keep the public enum's values). */
extern const dsacp_cp_strategy dsacp_cp_strategy_allgather_kv, dsacp_cp_strategy_replicated_index,
    dsacp_cp_strategy_exact_topk, dsacp_cp_strategy_lean, dsacp_cp_strategy_allgather_blocks;
static const dsacp_cp_strategy *const table[] = {
    &dsacp_cp_strategy_allgather_kv,
    &dsacp_cp_strategy_replicated_index,
    &dsacp_cp_strategy_exact_topk,
    &dsacp_cp_strategy_lean,
    &dsacp_cp_strategy_allgather_blocks,
};
enum { NSTRATEGY = (int)(sizeof table / sizeof table[0]) };

int dsacp_cp_strategy_count(void) { return NSTRATEGY; }
int dsacp_decode_strategy_count(void) { return NSTRATEGY; }

const dsacp_cp_strategy *dsacp_cp_strategy_at(int id) { return id >= 0 && id < NSTRATEGY ? table[id] : NULL; }

const dsacp_cp_strategy *dsacp_cp_strategy_of(const dsacp_cp_options *opt)
{
    const dsacp_cp_strategy *s = dsacp_cp_strategy_at((int)opt->decode);
    assert(s && "options not checked (dsacp_cp_options_check)");
    return s;
}

const char *dsacp_decode_strategy_name(dsacp_decode_strategy s)
{
    const dsacp_cp_strategy *st = dsacp_cp_strategy_at((int)s);
    return st ? st->name : "?";
}

int dsacp_decode_strategy_parse(const char *name, dsacp_decode_strategy *out)
{
    char list[256] = "";
    for (int i = 0; i < NSTRATEGY; i++) {
        if (name && strcmp(name, table[i]->name) == 0) return *out = (dsacp_decode_strategy)i, DSACP_OK;
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", i ? ", " : "", table[i]->name);
    }
    return dsacp_error(DSACP_EINVAL, "unknown decode strategy '%s' (%s)", name ? name : "", list);
}

int dsacp_decode_strategy_replicated_index(dsacp_decode_strategy s)
{
    const dsacp_cp_strategy *st = dsacp_cp_strategy_at((int)s);
    return st && st->replicated_index;
}

/* The values of the option enums, then their combinations (the same verdict on every rank). */
static int check_values(const dsacp_cp_options *cp)
{
    if (cp->interleave < 1 || cp->interleave > ((int64_t)1 << 30))
        return dsacp_error(DSACP_EINVAL, "--cp-interleave %lld: must be in [1, 2^30]", (long long)cp->interleave);
    if ((unsigned)cp->decode >= (unsigned)NSTRATEGY || (unsigned)cp->kv_layout > 1 || (unsigned)cp->index_layout > 2 ||
        (unsigned)cp->prefill_split > 2 || (unsigned)cp->mode > 1 || (unsigned)cp->q_proj > 5 || (unsigned)cp->o_proj > 5 ||
        (unsigned)cp->lean_merge > 1 || (unsigned)cp->partials > 1 || (unsigned)cp->context_path > 2 ||
        (unsigned)cp->merge_backend > 1)
        return dsacp_error(DSACP_EINVAL, "unknown context-parallel option value");
    if (cp->context_hardware && cp->context_path != DSACP_CONTEXT_AUTO)
        return dsacp_error(DSACP_EINVAL, "--context-hardware %s: belongs to '--context-path auto' (the path is %s)",
                           cp->context_hardware, dsacp_context_path_name(cp->context_path));
    if (!(cp->lean_factor >= 1.0 && cp->lean_factor <= 1024.0))
        return dsacp_error(DSACP_EINVAL, "--lean-candidates %g: must be in [1, 1024] (times index_topk / W scores "
                           "per rank)", cp->lean_factor);
    return DSACP_OK;
}

int dsacp_cp_options_check(const dsacp_config *cfg, const dsacp_cp_options *cp, int W, int64_t block_size)
{
    int rc = check_values(cp);
    if (rc) return rc;
    if (cp->index_layout == DSACP_LAYOUT_PARTIAL && (cp->index_group < 1 || W % cp->index_group))
        return dsacp_error(DSACP_EINVAL, "--index-layout partial:%lld: the group size must divide the %d ranks",
                           (long long)cp->index_group, W);
    if (cp->index_layout == DSACP_LAYOUT_PARTIAL && cp->mode == DSACP_CP_DSA_CP)
        return dsacp_error(DSACP_EINVAL, "--index-layout partial:G belongs to --cp-mode dcp");
    if (cp->prefetch < 1 || cp->prefetch > 64)
        return dsacp_error(DSACP_EINVAL, "--prefetch %lld: must be in [1, 64]", (long long)cp->prefetch);
    if (cp->mode == DSACP_CP_DCP && (cp->q_proj != DSACP_WEIGHTS_REPLICATED || cp->o_proj != DSACP_WEIGHTS_REPLICATED))
        return dsacp_error(DSACP_EINVAL, "--q-proj/--o-proj plans belong to --cp-mode dsa-cp (DCP splits the heads "
                           "of q_b_proj and o_proj already)");
    if (cp->q_proj >= DSACP_WEIGHTS_TP)
        return dsacp_error(DSACP_EINVAL, "--q-proj %s: q_b_proj is replicated or layer-shard (tp and auto are "
                           "o_proj plans)", dsacp_weight_plan_name(cp->q_proj));
    /* Decode tokens attend over the sharded cache with the decode strategy in DCP and in DSA-CP +
     * DCP (DSA-CP with every cache replicated attends locally). */
    const bool dcp_decode = cp->mode == DSACP_CP_DCP || cp->kv_layout == DSACP_LAYOUT_SHARDED ||
                            cp->index_layout == DSACP_LAYOUT_SHARDED;
    const dsacp_cp_strategy *s = dsacp_cp_strategy_of(cp);
    if (s->check && (rc = s->check(cp, W, block_size, dcp_decode))) return rc;
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
