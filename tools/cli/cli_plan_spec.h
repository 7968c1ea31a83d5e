/*
 * cli_plan_spec.h -- `dsacp plan`'s speculative-decoding section (cli_plan_spec.c): the flags
 * --speculative-config JSON (vLLM's fields) and --spec-acceptance-rate A, and the per-strategy
 * TPOT with k drafts beside the plain one (docs/planning.md "Speculative decoding").
 */
#ifndef DSACP_CLI_PLAN_SPEC_H
#define DSACP_CLI_PLAN_SPEC_H

#include "dsacp_plan.h"

#include <jansson.h>
#include <stdio.h>

/* The flags' meaning: on when --speculative-config was given. */
typedef struct cli_plan_spec {
    bool on;
    dsacp_plan_spec spec;
    const char *method;   /* "mtp" or "ngram" */
    bool rate_default;    /* the acceptance rate is the method's default (DSACP_PLAN_MTP_ACCEPTANCE) */
} cli_plan_spec;

/* The default acceptance rate of an MTP draft (docs/planning.md says where it comes from). */
#define DSACP_PLAN_MTP_ACCEPTANCE 0.7

/* Parses the two flags (either may be NULL): false after the message naming the flag and field. */
bool cli_plan_spec_flags(const char *config, const char *rate, cli_plan_spec *out);

/* One priced strategy of the section. */
typedef struct cli_plan_spec_row {
    const char *label;
    dsacp_cp_options cp;
} cli_plan_spec_row;

/* The section: a table on txt and root's "speculative" object (nothing when s is off); the
 * model's figures as for the decode table. DSACP_ENOMEM / DSACP_ERANGE / the planner's status. */
int cli_plan_spec_section(FILE *txt, json_t *root, const cli_plan_spec *s, const dsacp_config *cfg,
                          const cli_plan_spec_row *rows, int n, int64_t W, int64_t ep, int64_t context, int64_t batch,
                          bool deployed, double wbytes, const dsacp_hw *hw);

#endif
