/* cli_run.h -- the parts of `dsacp run` (docs/serving.md): cli_run.c runs the command phase by
 * phase; cli_run_workload.c makes the workload (synthetic, or a JSONL prompts file) and checks it
 * against the model; cli_run_report.c compares a run with --verify's one-process replay and
 * writes the report (text and --json). Private to tools/cli. */
#ifndef DSACP_CLI_RUN_H
#define DSACP_CLI_RUN_H

#include "cli.h"
#include "dsacp_serve.h"

#include <jansson.h>
#include <stdio.h>

typedef struct workload {
    dsacp_serve_request *rq; /* each request owns its prompt and stop ids */
    int64_t n;
} workload;
void run_workload_free(workload *w);
/* "MIN:MAX" (or one number) of flag --flag into [lo, hi] within [min, max]; prints the error. */
bool run_parse_range(const char *flag, const char *s, int64_t min, int64_t max, int64_t *lo, int64_t *hi);
/* The synthetic workload's ranges against the model, before anything is generated (DSACP_ERANGE
 * naming the flag and the model's limit). */
int run_check_synthetic(int64_t n, int64_t phi, int64_t ghi, int64_t nlong, int64_t lhi, const dsacp_config *cfg,
                        const char *model);
/* n requests (plus nlong long ones), lengths uniform in their ranges, Poisson arrivals at `rate`
 * per second (0: all at once), prompts drawn from the vocabulary with `seed`. */
int run_make_synthetic(workload *w, int64_t n, int64_t plo, int64_t phi, int64_t glo, int64_t ghi, double rate,
                       int64_t nlong, int64_t llo, int64_t lhi, int64_t vocab, uint64_t seed);
/* The JSONL prompts file (docs/serving.md); `gen` is the default max_new_tokens. */
int run_load_prompts(workload *w, const char *path, int64_t gen, const dsacp_config *cfg);

/* --verify in deployed numerics: a divergence passes when it is a near-tie, the one-process
 * reference's top-1 minus top-2 logit at that step at most this (docs/serving.md "--verify"). */
#define RUN_VERIFY_NEAR_TIE 0.1

typedef struct divergence {
    int64_t request, step;
    int32_t token, ref_token; /* -1: that run ended there */
    double ref_gap;           /* NAN when the reference has no token at that step */
    bool near_tie;
} divergence;

/* Compares every request of res with the reference ver: the first step where they differ
 * (*out malloc'd, *n_div entries). */
int run_compare(const dsacp_serve_result *res, const dsacp_serve_result *ver, int64_t n, bool deployed,
                divergence **out, int64_t *n_div);

typedef struct report_ctx {
    const workload *wl;
    const dsacp_serve_result *res;
    const dsacp_engine_options *eo;
    const dsacp_cp_options *cpo;
    const char *model;
    int W;
    int64_t mbt;
    const double *allmem; /* [W][6] */
    dsacp_comm *world;
    bool verify, passed, deployed;
    const divergence *div;
    int64_t n_div, near_ties;
} report_ctx;

/* The report: the text into f (printed once every output is committed) and, when j is not
 * NULL, the --json object. */
int run_write_report(FILE *f, json_t *j, const report_ctx *c);

#endif
