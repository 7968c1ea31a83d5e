/*
 * plan_entries.c -- a step given as entries (dsacp_plan_entries_comm): each entry classified the
 * way the engine does, a chunk after a sharded context by the context rule (the time rule on a
 * hardware profile, dsacp_plan_context_distributed in plan_cost.c), then counted by
 * plan_comm.c; its lists carved from the caller's memory (dsacp_plan_entries_comm_mem, the
 * engine's step workspace) or from one allocation. The top of src/plan: nothing in the module
 * calls it.
 */
#include "plan/plan.h"
#include "core/core.h"

#include <string.h>

static int entries_tokens(const dsacp_plan_entry *ent, int64_t n, size_t *T)
{
    *T = 0;
    for (int64_t e = 0; e < n; e++) {
        if (ent[e].n_new < 0 || ent[e].old_len < 0) return dsacp_error(DSACP_EINVAL, "plan: entry %lld has negative lengths", (long long)e);
        if (!dsacp_add_ok(*T, (size_t)ent[e].n_new, T)) return dsacp_error(DSACP_ERANGE, "plan: the entries' tokens overflow");
    }
    return DSACP_OK;
}

/* The lists (2 T + 6 n int64), then the entries' decisions (n bools); SIZE_MAX on overflow. */
static size_t lists_bytes(int64_t T, int64_t n)
{
    size_t len, bytes;
    if (T < 0 || n < 0 || !dsacp_mul_ok((size_t)T, 2, &len) || !dsacp_add_ok(len, 6 * (size_t)n, &len) ||
        !dsacp_mul_ok(len, sizeof(int64_t), &bytes) || !dsacp_add_ok(bytes, (size_t)n + 1, &bytes))
        return SIZE_MAX;
    return bytes;
}

/* The lists rounded up to 8 bytes, then the step's counts (at most T decode tokens of n
 * requests); 0 on one rank. */
size_t dsacp_plan_entries_bytes(const dsacp_config *cfg, const dsacp_cp_options *cp, int64_t W, int64_t T, int64_t n)
{
    if (W == 1) return 0;
    const size_t lists = lists_bytes(T, n), step = dsacp_plan_step_bytes(cfg, cp, W, T, n);
    size_t bytes;
    if (lists == SIZE_MAX || step == SIZE_MAX || !dsacp_add_ok(lists / 8 * 8, 8 + step, &bytes)) return SIZE_MAX;
    return bytes;
}

/* The step of n entries (T tokens) in lists carved from mem, each entry's path decided as the
 * engine decides it. */
static int entries_build(const dsacp_config *cfg, const dsacp_cp_options *cp, const dsacp_plan_step *base,
                         const dsacp_plan_entry *ent, int64_t n, size_t T, dsacp_plan_lists *l, void *mem)
{
    int64_t *p = mem;
    bool *decodes = (bool *)(p + 2 * T + 6 * (size_t)n);
    dsacp_plan_entries_lists(base, (int64_t)T, n, p, l);
    int rc = DSACP_OK;
    for (int64_t e = 0; e < n && !rc; e++) {
        const dsacp_plan_entry_spec *sp = dsacp_plan_spec_of(base, e);
        if (sp->path < DSACP_PLAN_PATH_AUTO || sp->path > DSACP_PLAN_PATH_RANK ||
            (sp->path == DSACP_PLAN_PATH_RANK && (sp->rank < 0 || sp->rank >= base->W)) || sp->n_logits < 0 ||
            sp->n_logits > ent[e].n_new)
            return dsacp_error(DSACP_EINVAL, "plan: entry %lld: path %d, rank %d, n_logits %lld of %lld tokens",
                               (long long)e, (int)sp->path, (int)sp->rank, (long long)sp->n_logits, (long long)ent[e].n_new);
        const int kind = dsacp_plan_entry_kind(cp, base->W, &ent[e], sp);
        decodes[e] = kind == DSACP_PLAN_ENTRY_DECODE;
        if (kind == DSACP_PLAN_ENTRY_CONTEXT)
            rc = dsacp_plan_context_distributed(cfg, cp, base->W, base->latent_bytes, base->index_bytes, base->deployed,
                                                base->o_gather_v, base->o_tp_f32, base->context_hw, ent[e].old_len,
                                                ent[e].n_new, &decodes[e]);
    }
    if (!rc) dsacp_plan_entries_step(cp, ent, n, decodes, l);
    return rc;
}

int dsacp_plan_entries_comm_mem(const dsacp_config *cfg, const dsacp_cp_options *cp, const dsacp_plan_step *base,
                                const dsacp_plan_entry *ent, int64_t n, dsacp_comm_counter out[DSACP_PHASE_COUNT],
                                void *mem, size_t bytes)
{
    memset(out, 0, sizeof(dsacp_comm_counter) * DSACP_PHASE_COUNT);
    size_t T;
    int rc = entries_tokens(ent, n, &T);
    /* A solo group counts nothing (dsacp_plan_step_comm checks the step and returns): no lists. */
    if (rc || base->W == 1) return rc ? rc : dsacp_plan_step_comm(cfg, cp, base, out);
    const size_t need = dsacp_plan_entries_bytes(cfg, cp, base->W, (int64_t)T, n);
    if (need == SIZE_MAX) return dsacp_error(DSACP_ERANGE, "plan: the lists of %lld entries overflow", (long long)n);
    if (!mem || bytes < need)
        return dsacp_error(DSACP_EINVAL, "plan: mem holds %zu bytes, the lists of %lld entries need %zu", mem ? bytes : 0,
                           (long long)n, need);
    dsacp_plan_lists l;
    rc = entries_build(cfg, cp, base, ent, n, T, &l, mem);
    const size_t off = lists_bytes((int64_t)T, n) / 8 * 8 + 8; /* the step's counts after the lists */
    return rc ? rc : dsacp_plan_step_comm_mem(cfg, cp, &l.s, out, (char *)mem + off, bytes - off);
}

int dsacp_plan_entries_comm(const dsacp_config *cfg, const dsacp_cp_options *cp, const dsacp_plan_step *base,
                            const dsacp_plan_entry *ent, int64_t n, dsacp_comm_counter out[DSACP_PHASE_COUNT])
{
    size_t T;
    int rc = entries_tokens(ent, n, &T);
    if (rc) {
        memset(out, 0, sizeof(dsacp_comm_counter) * DSACP_PHASE_COUNT);
        return rc;
    }
    const size_t bytes = dsacp_plan_entries_bytes(cfg, cp, base->W, (int64_t)T, n);
    if (bytes == SIZE_MAX) return dsacp_error(DSACP_ERANGE, "plan: the lists of %lld entries overflow", (long long)n);
    void *mem = bytes ? dsacp_alloc(bytes) : NULL;
    if (bytes && !mem) return dsacp_error_context(DSACP_ENOMEM, "plan: the lists of %lld entries", (long long)n);
    rc = dsacp_plan_entries_comm_mem(cfg, cp, base, ent, n, out, mem, bytes);
    dsacp_free(mem);
    return rc;
}
