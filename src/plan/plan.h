/*
 * plan.h -- the planner module's own declarations (src/plan; the public ones are in
 * include/dsacp_plan.h). It owns the cost model behind `dsacp plan` and `--context-path auto`,
 * and calls model (dsacp_preset_config, the cache bytes per token) and core, with the inline
 * ownership helpers of include/dsacp_cp.h: no engine, no communicator, no MPI.
 */
#ifndef DSACP_PLAN_INTERNAL_H
#define DSACP_PLAN_INTERNAL_H

#include "dsacp_plan.h"

/* dsacp_plan_step_comm for every rank of the step at once (s->rank ignored): out holds
 * s->W x DSACP_PHASE_COUNT counters, rank r's at out + r * DSACP_PHASE_COUNT, each equal to what
 * dsacp_plan_step_comm gives for rank r. O(W + tokens) instead of W calls of O(W + tokens). */
int dsacp_plan_step_comm_ranks(const dsacp_config *cfg, const dsacp_cp_options *cp, const dsacp_plan_step *s,
                               dsacp_comm_counter *out);
/* dsacp_plan_entries_comm for every rank at once (base->rank ignored), the same layout. */
int dsacp_plan_entries_comm_ranks(const dsacp_config *cfg, const dsacp_cp_options *cp, const dsacp_plan_step *base,
                                  const dsacp_plan_entry *ent, int64_t n, dsacp_comm_counter *out);

#endif /* DSACP_PLAN_INTERNAL_H */
