/*
 * cp_strategy.c -- the table of decode strategies (cp_strategy.h): the registration and its
 * look-ups (by id, by options, by name). The rules that consult the table (the option check,
 * the formulas with the layer's o_proj, the context path's byte rule, the report) are
 * cp_rules.c's, above it. A new strategy adds one line to `table`.
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

int dsacp_decode_strategy_gathers_context(dsacp_decode_strategy s)
{
    const dsacp_cp_strategy *st = dsacp_cp_strategy_at((int)s);
    return st && st->gathers_context;
}
