/* cli_run.h -- the parts of `dsacp run` (docs/serving.md): cli_run.c runs the command phase by
 * phase; cli_run_workload.c makes the workload (synthetic, or a JSONL prompts file) and checks it
 * against the model; cli_run_report.c compares a run with --verify's one-process replay and
 * writes the report (text and --json); cli_run_client.c is `dsacp run --url`, the benchmark
 * client: the same workload sent to an OpenAI-compatible server over HTTP (libcurl), the same
 * report from what the client observed. Private to tools/cli. */
#ifndef DSACP_CLI_RUN_H
#define DSACP_CLI_RUN_H

#include "cli.h"
#include "dsacp_serve.h"

#include <jansson.h>
#include <stdio.h>

typedef struct workload {
    dsacp_serve_request *rq; /* each request owns its prompt and stop ids */
    char **text;             /* [n] or NULL: a JSONL "prompt" string (--url only; that request has no
                              * ids and its prompt_len is the server's count once it answered) */
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
/* The ids synthetic prompts are drawn from: the model's vocabulary, or fewer, the ids of its
 * tokenizer when it has one (`tokenizer`, else <model_dir>/tokenizer.json when present): a server
 * refuses a prompt id its tokenizer lacks (vLLM does). A tokenizer that cannot be read is an error
 * naming it. */
int run_prompt_vocab(const char *tokenizer, const char *model_dir, int64_t model_vocab, int64_t *vocab);
/* The JSONL prompts file (docs/serving.md); `gen` is the default max_new_tokens. With `text_ok`
 * (the client) a line may give "prompt" (a string) instead of "prompt_ids". */
int run_load_prompts(workload *w, const char *path, int64_t gen, const dsacp_config *cfg, bool text_ok);

/* The progress line on stderr (every 5 s, or a line redrawn on a terminal); kv_use NAN: not known
 * (the client). */
typedef struct progress_state {
    bool tty;
    double last;
} progress_state;
void run_progress(void *arg, const dsacp_serve_progress *p);

/* --verify in deployed numerics: a divergence passes when it is a near-tie, the one-process
 * reference's top-1 minus top-2 logit at that step at most this (docs/serving.md "--verify"). */
#define RUN_VERIFY_NEAR_TIE 0.1

/* ---- disaggregated runs (cli_run_pd.c; docs/serving.md "Disaggregated serving") ---- */

/* The flags of the roles, appended to run's option table. */
#define RUN_PD_OPTS {"kv-role", true, NULL}, {"pd", true, NULL}, {"kv-transfer-timeout", true, NULL}

/* This rank's part: its role (kv_both: today's run), how it was given, the link's timeout. */
typedef struct run_pd_args {
    dsacp_kv_role role;
    bool role_flag, pd_flag; /* --kv-role, --pd P:D */
    int64_t P, D;
    double timeout_s; /* --kv-transfer-timeout (default 120) */
} run_pd_args;
/* --kv-role, --pd and --kv-transfer-timeout of this rank (world rank `rank` of `size`): local
 * checks only; prints the error naming the flag. CLI_RUN or the exit status. */
int run_pd_parse(const cli_opt *opts, int rank, int size, run_pd_args *p);

/* What every rank tells the others before anything is shared (one uncounted all-gather): its
 * role, its command line's fingerprint (the ranks of a group share one), the job-wide flags'
 * values (one per flag of cli_run_pd.c's job_flags) and whether it writes --comm-report. */
#define RUN_PD_JOB_FLAGS 18
typedef struct run_pd_card {
    int32_t role, pd_flag, comm_report;
    int64_t P, D, block_size;
    uint64_t argv_hash, job[RUN_PD_JOB_FLAGS];
} run_pd_card;
/* This rank's card. */
void run_pd_card_of(const cli_opt *opts, int argc, char **argv, const run_pd_args *p, int64_t block_size,
                    run_pd_card *card);
/* Every rank's cards [size] (the same on every rank): whether the job is disaggregated (*pd), or a
 * refusal printed by world rank 0 (the same verdict on every rank, no communication): a rank
 * without a role beside ranks with one, a role without its partner group, --pd beside --kv-role,
 * ranks of one group started with different flags, job-wide flags that differ between groups. */
int run_pd_check_cards(const run_pd_card *cards, int size, bool *pd);
/* The group's context-parallel options on W ranks: a consumer's are its flags; a producer's the
 * seed's pure-prefill plan (dsa-cp, contiguous split, q_proj and o_proj layer-shard, both caches
 * replicated), each overridden by an explicit flag of its own (with --pd the flags belong to the
 * consumer group: the producer keeps the plan). Prints the error naming the flag; false then. */
bool run_pd_cp_options(const cli_opt *opts, const run_pd_args *p, int W, dsacp_cp_options *cpo);

/* The flags of one run, parsed and checked before anything else happens. */
typedef struct run_args {
    const char *mdir, *preset, *prompts, *json_path;
    const char *url; /* --url: the benchmark client (cli_run_client.c) */
    int64_t nreq, plo, phi, glo, ghi, nlong, llo, lhi, seed, mbt, mns, kvb, kvmem;
    double rate, temp, topp;
    bool verify;
    dsacp_spec_config spec; /* --speculative-config */
    dsacp_engine_options eo;
    dsacp_cp_options cpo; /* this rank's group's plan */
    dsacp_config pc; /* --preset's configuration */
    run_pd_args pd;
} run_args;

/* ---- the benchmark client (cli_run_client.c; docs/serving.md "The benchmark client") ---- */

/* The client's own flags, appended to run's option table. */
#define RUN_CLIENT_OPTS {"url", true, NULL}, {"model-name", true, NULL}, {"tokenizer", true, NULL}, \
                        {"max-concurrency", true, NULL}
/* With --url: the flags of the engine, the scheduler, the KV pool, context parallelism, roles and
 * --verify are refused, naming the flag (2); without it, the client's own flags are. */
int run_client_conflicts(const cli_opt *opts, bool client);
/* The client's checks of the values (world: the processes it was started as; one only). */
int run_client_check(const cli_opt *opts, const run_args *a, int world);
/* `dsacp run --url`: the workload sent, the report printed. Returns the exit status: 0 (failed
 * requests are reported, as vllm bench serve does), 2 a bad invocation (a malformed URL
 * included), 1 the server cannot be reached or an output cannot be written. */
int run_client(const cli_opt *opts, const run_args *a);

/* Another rank's one-line error reaches world rank 0: a rank other than 0 (whose stderr is
 * /dev/null) keeps what a local check printed and hands it to the agreement. */
typedef struct run_capture {
    int saved_fd;
    FILE *tmp;
} run_capture;
void run_capture_begin(run_capture *c, bool on);
/* The verdict of a local check (ret: CLI_RUN or an exit status) agreed over the world,
 * uncounted: a rank that failed returns its own status; the others print the first failing
 * rank's line ("dsacp run: rank R: ...") and return 2 (1 when that rank failed with ENOMEM or
 * ECOMM). Ends the capture. */
int run_capture_verdict(run_capture *c, dsacp_comm *world, int ret);

/* What world rank 0 reports of every rank of a disaggregated run (gathered, uncounted). */
typedef struct run_pd_rank {
    int32_t role, group_rank;
    double mem[6];                        /* as run_memory's */
    dsacp_comm_counter measured, predicted; /* the link's kv_transfer counter, and the formula's */
    int64_t kv_blocks, block_size;
    char plan[96];                        /* the group's CP plan in words */
} run_pd_rank;
/* The group's plan in words ("dsa-cp, contiguous, q_proj layer-shard, o_proj layer-shard, ..."). */
void run_pd_plan_words(const dsacp_cp_options *cpo, int W, char *buf, size_t cap);
/* The link's phase index of the transfer (-1 when the library has none). */
int run_pd_transfer_phase(void);
/* Collective end of a disaggregated run (cli_cp_finish's part): the agreed status; with
 * --comm-report, one JSON object {"producer": group report, "consumer": group report, "link":
 * the link's report} committed by world rank 0. */
int run_pd_finish(int status, dsacp_comm *world, dsacp_comm *group, dsacp_kv_role role, const dsacp_engine *e,
                  dsacp_pd *link, bool want_report, cli_output *report);

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
    /* Disaggregated runs: every world rank's part [world_W], and the world's size. */
    const run_pd_rank *pd;
    int world_W;
    /* The benchmark client (url not NULL): what the server answered a request that failed
     * (errors[i] NULL when it succeeded), and how many failed. No engine: eo, cpo, allmem, world
     * are NULL and the server-side fields are left out. */
    const char *url;
    const char *const *errors;
    int64_t n_failed;
} report_ctx;

/* The report: the text into f (printed once every output is committed) and, when j is not
 * NULL, the --json object. */
int run_write_report(FILE *f, json_t *j, const report_ctx *c);
/* The report's text into *text (*len bytes, malloc'd: printed once every output is in place) and,
 * with json_out open, the --json object committed into it (*jtext keeps its bytes). */
int run_report_build(const report_ctx *c, cli_output *json_out, bool json, char **text, size_t *len, char **jtext);

#endif
