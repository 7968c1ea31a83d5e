/*
 * plan.h -- the planner module's own declarations (src/plan; the public ones are in
 * include/dsacp_plan.h). It owns the cost model behind `dsacp plan` and `--context-path auto`
 * in five files that call one way: plan_pd.c (a disaggregated deployment priced against PD-mixed,
 * the kv_transfer prediction over src/cp's relayout formula) and plan_spec.c (speculative
 * decoding's rounds) -> plan_entries.c (entries classified,
 * with the time rule) -> plan_cost.c (times) -> plan_comm.c (bytes). It calls src/cp's strategy
 * table, rules and relayout formula, model
 * (dsacp_preset_config, the cache bytes per token) and core: no engine, no communicator, no MPI.
 */
#ifndef DSACP_PLAN_INTERNAL_H
#define DSACP_PLAN_INTERNAL_H

#include "dsacp_plan.h"

/* dsacp_plan_step_comm for every rank of the step at once (s->rank ignored): out holds
 * s->W x DSACP_PHASE_COUNT counters, rank r's at out + r * DSACP_PHASE_COUNT, each equal to what
 * dsacp_plan_step_comm gives for rank r. O(W + tokens) instead of W calls of O(W + tokens). */
int dsacp_plan_step_comm_ranks(const dsacp_config *cfg, const dsacp_cp_options *cp, const dsacp_plan_step *s,
                               dsacp_comm_counter *out);

/* dsacp_plan_decode_layer / dsacp_plan_decode_model for batch requests of `rows` decode rows each
 * (1..64: a verify entry's k + 1 rows, row j after context + j positions; rows = 1 is the decode
 * step itself): the layer's communication exact from the per-row formula, its work at the rows'
 * mean context, the MLPs and the head over batch x rows rows. */
int dsacp_plan_layer_rows(const dsacp_config *cfg, const dsacp_cp_options *cp, int64_t W, int64_t context, int64_t batch,
                          int64_t rows, bool deployed, const dsacp_hw *hw, dsacp_plan_decode *out);
int dsacp_plan_model_rows(const dsacp_config *cfg, const dsacp_cp_options *cp, int64_t W, int64_t ep, int64_t context,
                          int64_t batch, int64_t rows, bool deployed, double weight_bytes, const dsacp_hw *hw,
                          dsacp_plan_model *out);

/* ---- a step given as entries (plan_comm.c builds it, plan_entries.c classifies) ---- */

/* How the engine classifies an entry (src/cp/cp_layer.c, dsacp_cp_step_build): its tokens are
 * prefill, decode tokens, or a chunk after a sharded context whose path the context rule picks
 * (decode tokens on the distributed path). */
enum { DSACP_PLAN_ENTRY_PREFILL, DSACP_PLAN_ENTRY_DECODE, DSACP_PLAN_ENTRY_CONTEXT };
int dsacp_plan_entry_kind(const dsacp_cp_options *cp, int64_t W, const dsacp_plan_entry *e, const dsacp_plan_entry_spec *sp);
/* Entry e's spec of base->entry_spec, or the ordinary entry's (all zero). */
const dsacp_plan_entry_spec *dsacp_plan_spec_of(const dsacp_plan_step *base, int64_t e);

/* The step and the lists it points into, carved from the caller's memory. */
typedef struct dsacp_plan_lists {
    dsacp_plan_step s;
    int64_t *ctx, *req, *rold, *pold, *pnew, *pfirst, *plogits, *prank;
} dsacp_plan_lists;
/* Points l's lists into mem (2 T + 6 n int64_t: the lists of n entries bringing T tokens) and
 * copies base into l->s. */
void dsacp_plan_entries_lists(const dsacp_plan_step *base, int64_t T, int64_t n, void *mem, dsacp_plan_lists *l);
/* Fills l->s from n entries (lengths checked, T tokens in all), decodes[e] saying whether entry
 * e's tokens go through the decode strategy; also tp's path for the step. */
void dsacp_plan_entries_step(const dsacp_cp_options *cp, const dsacp_plan_entry *ent, int64_t n, const bool *decodes,
                             dsacp_plan_lists *l);

#endif /* DSACP_PLAN_INTERNAL_H */
