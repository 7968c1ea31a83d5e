/*
 * cp_options -- the CP options' defaults, names and parsers (include/dsacp_cp.h; the decode
 * strategies' names are their table's, cp_strategy.c). They live with
 * the layer that reads them, so src/cp needs nothing from the engine above it
 * (docs/architecture.md, "Layers").
 */
#include "cp/cp.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void dsacp_cp_options_default(dsacp_cp_options *opt)
{
    opt->interleave = 1;
    opt->kv_layout = DSACP_LAYOUT_SHARDED;
    opt->index_layout = DSACP_LAYOUT_SHARDED;
    opt->index_group = 1;
    opt->decode = DSACP_DECODE_EXACT_TOPK;
    opt->prefill_split = DSACP_PREFILL_OWNER;
    opt->mode = DSACP_CP_DCP;
    opt->q_proj = DSACP_WEIGHTS_REPLICATED;
    opt->o_proj = DSACP_WEIGHTS_REPLICATED;
    opt->prefetch = 2;
    opt->lean_factor = 2.0;
    opt->lean_merge = DSACP_LEAN_MERGE_OUTPUT;
    opt->partials = DSACP_PARTIALS_AUTO;
    opt->context_path = DSACP_CONTEXT_GATHER;
    opt->context_hardware = NULL;
    opt->merge_backend = DSACP_MERGE_AG_RS;
}

static const char *const layout_names[] = {"sharded", "replicated", "partial"};
static const char *const split_names[] = {"owner", "contiguous", "zigzag"};
static const char *const merge_names[] = {"output", "values"};
static const char *const partials_names[] = {"auto", "fp32"};
static const char *const path_names[] = {"gather", "distributed", "auto"};
static const char *const backend_names[] = {"ag_rs", "a2a"};
static const char *const mode_names[] = {"dcp", "dsa-cp"};
static const char *const plan_names[] = {"replicated", "layer-shard", "tp", "auto", "tp-gather", "tp-a2a"};

/* One parser for the name tables: DSACP_EINVAL listing the names when unknown. */
static int parse_name(const char *what, const char *const *names, int n, const char *name, int *out)
{
    char list[200] = "";
    for (int i = 0; i < n; i++) {
        if (name && strcmp(name, names[i]) == 0) return *out = i, DSACP_OK;
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", i ? ", " : "", names[i]);
    }
    return dsacp_error(DSACP_EINVAL, "unknown %s '%s' (%s)", what, name ? name : "", list);
}

const char *dsacp_prefill_split_name(dsacp_prefill_split s) { return (unsigned)s < 3 ? split_names[s] : "?"; }
const char *dsacp_lean_merge_name(dsacp_lean_merge m) { return (unsigned)m < 2 ? merge_names[m] : "?"; }
const char *dsacp_partials_dtype_name(dsacp_partials_dtype d) { return (unsigned)d < 2 ? partials_names[d] : "?"; }

int dsacp_lean_merge_parse(const char *name, dsacp_lean_merge *out)
{
    int v = 0, rc = parse_name("lean merge", merge_names, 2, name, &v);
    if (!rc) *out = (dsacp_lean_merge)v;
    return rc;
}

const char *dsacp_merge_backend_name(dsacp_merge_backend b) { return (unsigned)b < 2 ? backend_names[b] : "?"; }

int dsacp_merge_backend_parse(const char *name, dsacp_merge_backend *out)
{
    int v = 0, rc = parse_name("merge backend", backend_names, 2, name, &v);
    if (!rc) *out = (dsacp_merge_backend)v;
    return rc;
}

const char *dsacp_context_path_name(dsacp_context_path p) { return (unsigned)p < 3 ? path_names[p] : "?"; }

int dsacp_context_path_parse(const char *name, dsacp_context_path *out)
{
    int v = 0, rc = parse_name("context path", path_names, 3, name, &v);
    if (!rc) *out = (dsacp_context_path)v;
    return rc;
}

int dsacp_partials_dtype_parse(const char *name, dsacp_partials_dtype *out)
{
    int v = 0, rc = parse_name("partials dtype", partials_names, 2, name, &v);
    if (!rc) *out = (dsacp_partials_dtype)v;
    return rc;
}
const char *dsacp_cp_mode_name(dsacp_cp_mode m) { return (unsigned)m < 2 ? mode_names[m] : "?"; }
const char *dsacp_weight_plan_name(dsacp_weight_plan p) { return (unsigned)p < 6 ? plan_names[p] : "?"; }

int dsacp_prefill_split_parse(const char *name, dsacp_prefill_split *out)
{
    int v = 0, rc = parse_name("prefill split", split_names, 3, name, &v);
    if (!rc) *out = (dsacp_prefill_split)v;
    return rc;
}

int dsacp_cp_mode_parse(const char *name, dsacp_cp_mode *out)
{
    int v = 0, rc = parse_name("cp mode", mode_names, 2, name, &v);
    if (!rc) *out = (dsacp_cp_mode)v;
    return rc;
}

int dsacp_weight_plan_parse(const char *name, dsacp_weight_plan *out)
{
    int v = 0, rc = parse_name("weight plan", plan_names, 6, name, &v);
    if (!rc) *out = (dsacp_weight_plan)v;
    return rc;
}

const char *dsacp_cp_layout_name(dsacp_cp_layout l) { return (unsigned)l < 3 ? layout_names[l] : "?"; }

int dsacp_index_layout_parse(const char *name, dsacp_cp_layout *out, int64_t *group)
{
    if (name && strncmp(name, "partial:", 8) == 0) {
        char *end;
        errno = 0;
        const long long g = strtoll(name + 8, &end, 10);
        if (errno || end == name + 8 || *end || g < 1 || g > (1 << 20))
            return dsacp_error(DSACP_EINVAL, "index layout '%s': partial:G needs a group size G >= 1", name);
        *out = DSACP_LAYOUT_PARTIAL;
        *group = g;
        return DSACP_OK;
    }
    if (name && strcmp(name, "partial") == 0)
        return dsacp_error(DSACP_EINVAL, "index layout 'partial' needs its group size: partial:G");
    int rc = dsacp_cp_layout_parse(name, out);
    if (rc) return dsacp_error(DSACP_EINVAL, "unknown index layout '%s' (sharded, replicated, partial:G)", name ? name : "");
    *group = 1;
    return DSACP_OK;
}

int dsacp_cp_layout_parse(const char *name, dsacp_cp_layout *out)
{
    for (int i = 0; i < 2; i++)
        if (name && strcmp(name, layout_names[i]) == 0) return *out = (dsacp_cp_layout)i, DSACP_OK;
    return dsacp_error(DSACP_EINVAL, "unknown layout '%s' (sharded, replicated)", name ? name : "");
}
