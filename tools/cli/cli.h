/* cli.h -- subcommands of the dsacp tool and the one option parser they share. The tool is a
 * client of the public API only: its files include include/dsacp*.h and tools/cli's headers. */
#ifndef DSACP_CLI_H
#define DSACP_CLI_H

#include "dsacp.h"
#include "dsacp_cp.h"

#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdint.h>

/* An option of a subcommand: "--name VALUE" (has_value) or a "--name" flag. */
typedef struct cli_opt {
    const char *name;
    bool has_value;
    const char *value; /* filled by cli_parse; NULL when not given (flags: "1" when given) */
} cli_opt;

/* cli_parse's answer when the subcommand should go on; any other value is its exit status. */
#define CLI_RUN (-1)
/* Parses argv[1..] of subcommand argv[0] against opts (terminated by a NULL name). With --help
 * or -h anywhere, prints the subcommand's usage on stdout and returns 0. Prints one line naming
 * the bad flag and returns 2 on unknown options, missing values, repeats or positional
 * arguments. Returns CLI_RUN otherwise. Use: `int st = cli_parse(..); if (st != CLI_RUN) return st;` */
int cli_parse(int argc, char **argv, cli_opt *opts);
/* Prints subcommand cmd's usage (the summary of every command for an unknown name). */
void cli_usage(const char *cmd, FILE *f);
const char *cli_get(const cli_opt *opts, const char *name);
/* The value of a flag the command requires; NULL after "dsacp CMD: missing required option
 * '--NAME'" on stderr (the caller exits 2). */
const char *cli_require(const cli_opt *opts, const char *cmd, const char *name);
/* The one strict number parser of flags and JSON-free text fields (docs/conventions.md): an
 * optional '-', decimal digits, and for reals an optional fraction and exponent. No whitespace,
 * '+', hex, nan, inf or trailing text; out-of-range integers and overflowing reals refused.
 * Return false without printing. */
bool cli_parse_i64(const char *text, int64_t *out);
bool cli_parse_f64(const char *text, double *out);
/* Strict real parsing of a flag value in [min, max] (finite); prints the error naming the flag. */
bool cli_double(const char *cmd, const char *flag, const char *text, double min, double max, double *out);
/* Strict integer parsing of a flag value in [min, max]; prints the error naming the flag. */
bool cli_int(const char *cmd, const char *flag, const char *text, int64_t min, int64_t max,
             int64_t *out);
/* Engine options from --numerics, --kv-dtype and --block-size (each optional; options absent
 * from `opts` are simply not given). Prints the error naming the flag and returns false. */
bool cli_engine_options(const char *cmd, const cli_opt *opts, dsacp_engine_options *eo);
/* Exit status (README): 0 success; 2 the invocation is wrong: bad flags and bad files or values
 * the user named (model directory, prompts, forward input, preset, sizes out of range), anything
 * found while validating before the work starts; 1 the run failed (out of memory, KV capacity
 * once running, an output that cannot be created or written -- refused before any work, but
 * still 1 -- non-finite logits, a rank failed). */
/* A cache block holds positions of one request: --block-size above the smallest power of two
 * holding the model's max_position_embeddings (and above the default) only wastes memory (each
 * request's one block). Prints the error naming the flag and returns false. */
bool cli_block_size_fits(const char *cmd, const dsacp_engine_options *eo, const dsacp_config *cfg, const char *model);
/* Collective under cli_world: every rank loads the model directory, then --block-size is checked
 * against it. CLI_RUN with *out set, or the exit status with the error printed (*out NULL): 2 for
 * a model the user named that is bad, 1 when the machine failed (out of memory, a rank). */
int cli_load_model(const char *cmd, const char *dir, const dsacp_engine_options *eo, dsacp_model **out);
/* Prints "dsacp CMD: <dsacp_last_error()>" and returns 1 (a failed run). */
int cli_fail(const char *cmd, int status);
/* The same message; returns 2 (a bad invocation: a file or value the user named is wrong). */
int cli_fail_invocation(const char *cmd, int status);
/* The exit status of a failure while validating, before the work starts: 2 (the invocation),
 * unless the machine failed (out of memory, the process group: 1). */
int cli_setup_exit(int status);

/* Paths removed when SIGINT, SIGTERM or SIGHUP ends the process: a file (unlink), or with is_dir a
 * directory the command created together with the files inside it (its temporaries included);
 * the signal's default action follows. Returns a slot for cli_cleanup_remove (-1 when the path
 * is too long or every slot is taken). */
int cli_cleanup_add(const char *path, bool is_dir);
void cli_cleanup_remove(int slot);
/* Holds SIGINT, SIGTERM and SIGHUP (hold: the previous mask into *saved) or lets them through
 * again (restores *saved): around creating a path and registering it, so no signal falls between. */
void cli_signals_hold(bool hold, sigset_t *saved);
/* Removes a directory the command created and the files directly inside it. */
int cli_remove_dir(const char *dir);
/* "512M", "2G", "1048576" (K, M, G: powers of 1024; an optional B; a fraction allowed): bytes in
 * [1, 1e15], -1 when malformed (--kv-memory). */
int64_t cli_parse_size(const char *s);
/* The model of --preset: a fresh directory "$TMPDIR/dsacp-CMD-XXXXXX" (or /tmp), registered for
 * removal on SIGINT/SIGTERM/SIGHUP, holding the preset's bf16 weights; removed by the caller as
 * soon as every rank has loaded it (the weights stay mapped). */
typedef struct cli_tmp_model {
    char dir[4096];
    int cleanup; /* cli_cleanup_add slot, -1 when none */
} cli_tmp_model;
int cli_tmp_model_create(cli_tmp_model *t, const char *cmd, const dsacp_config *pc, uint64_t seed);
void cli_tmp_model_remove(cli_tmp_model *t, const char *cmd);

/* An output file of a command (docs/conventions.md "Inputs and outputs"): opened by rank 0 before
 * any work (its temporary beside the target: a missing directory, a directory, a device, a
 * symlink are refused at once), written and committed once the result is known, removed on
 * failure and on SIGINT/SIGTERM. */
typedef struct dsacp_out dsacp_out; /* dsacp_util.h */
typedef struct cli_output {
    dsacp_out *out; /* the temporary in progress (rank 0 with a path), NULL otherwise */
    int cleanup; /* cli_cleanup_add slot of the temporary */
    bool open;   /* rank 0 with a path: the temporary exists */
} cli_output;
/* An output that holds nothing (safe for cli_output_abort). */
void cli_output_init(cli_output *o);
/* Rank 0 opens `path` (given by --flag; NULL: no output, nothing to do). Collective under
 * cli_world (the status is agreed). Prints the error naming the flag and returns the status. */
int cli_output_open(const char *cmd, const char *flag, const char *path, cli_output *o);
/* Writes data into the open output and commits it (a no-op returning 0 when not open). */
int cli_output_commit_bytes(cli_output *o, const void *data, size_t len);
/* Removes the temporary (no-op when committed or not open). */
void cli_output_abort(cli_output *o);
/* The files a command reads: cli_parse records the values of --model (every regular file directly
 * inside the directory: config, weights, shards, index), --input, --prompts, --hardware and
 * --context-hardware. DSACP_EINVAL naming --flag and the input when `path` is one of them (the
 * same device and inode), so no output replaces an input; DSACP_OK otherwise. cli_output_open
 * checks it; a command that opens an output another way calls it first. */
int cli_check_not_input(const char *flag, const char *path);
/* The exit status of a failed cli_output_open / cli_check_not_input: 2 when the output names an
 * input (a bad invocation), 1 when it cannot be created (README "Errors"). */
int cli_output_exit(int status);
/* True when a and b name the same file: the same string, or both exist with the same device and
 * inode (a hard link, a symlink, "./x" for "x"). */
bool cli_same_file(const char *a, const char *b);
/* Writes the report kept in memory to stdout (after every output has been committed). */
int cli_print_buffer(const char *text, size_t len);

/* The process group of this run (MPI_COMM_WORLD under mpirun, else solo), made by main() for
 * the commands that run the engine; NULL for the others. Ranks other than 0 print nothing:
 * their stdout and stderr go to /dev/null, and a failure anywhere reaches rank 0 through
 * dsacp_comm_agree, which names the rank. */
extern dsacp_comm *cli_world;
/* The context-parallel flags every engine command accepts (append to its option table). */
#define CLI_CP_OPTS                                                                             \
    {"decode-strategy", true, NULL}, {"kv-layout", true, NULL}, {"index-layout", true, NULL},   \
    {"cp-interleave", true, NULL}, {"cp-kv-cache-interleave-size", true, NULL},                 \
    {"prefill-split", true, NULL}, {"decode-context-parallel-size", true, NULL},                \
    {"dcp-comm-backend", true, NULL}, {"comm-report", true, NULL}, {"cp-mode", true, NULL},      \
    {"q-proj", true, NULL}, {"o-proj", true, NULL}, {"prefetch", true, NULL},                    \
    {"lean-candidates", true, NULL}, {"lean-merge", true, NULL}, {"partials", true, NULL},       \
    {"context-path", true, NULL}, {"context-hardware", true, NULL}
/* The usage lines of those flags. */
#define CLI_CP_USAGE                                                                                  \
    "context parallelism (under mpirun -np W; docs/context-parallel.md):\n"                          \
    "  --decode-strategy S   allgather-kv, replicated-index, exact-topk (default), lean or\n"         \
    "                        allgather-blocks (allgather-blocks: vllm-ascend #6563 as it runs --\n"  \
    "                        whole cache blocks and block tables gathered; needs --cp-interleave\n" \
    "                        equal to --block-size)\n"                                              \
    "  --lean-candidates F   lean: each rank sends its best ceil(F k / W) index scores (default 2)\n" \
    "  --lean-merge M        lean: output (W_UV + whole o_proj before the merge, D values per token;\n" \
    "                        default) or values (W_UV only, o_proj split by heads)\n"                 \
    "  --partials P          lean's partial results on the wire: auto (bf16 in deployed numerics,\n" \
    "                        fp32 in exact) or fp32\n"                                                \
    "  --kv-layout L         MLA latent cache: sharded or replicated (default sharded)\n"            \
    "  --index-layout L      indexer key cache: sharded, replicated or partial:G (replicated within\n" \
    "                        groups of G ranks, sharded across groups; default sharded, replicated\n" \
    "                        for replicated-index)\n"                                                \
    "  --cp-interleave I     position p lives on rank (p / I) mod W (default 1; any I >= 1);\n"      \
    "                        vLLM's name --cp-kv-cache-interleave-size is accepted too\n"            \
    "  --prefill-split S     owner: a token is computed by the rank owning its position (default);\n" \
    "                        contiguous: DSA-CP's flat slice of the step's tokens (dsa-cp's default);\n" \
    "                        zigzag: each request's new tokens in 2W chunks, rank r takes r, 2W-1-r\n" \
    "  --context-path P      a chunk after sharded context: gather (the context, default),\n"      \
    "                        distributed (its tokens through the decode strategy) or auto (fewer bytes)\n" \
    "  --context-hardware F  auto: choose by the time `dsacp plan` predicts on profile F (hardware/)\n" \
    "  --cp-mode M           dcp (decode tokens on every rank, heads split; default) or dsa-cp\n"    \
    "                        (every token on one rank with all heads; vllm-ascend's DSA-CP)\n"       \
    "  --q-proj P            dsa-cp: q_b_proj replicated or layer-shard (default replicated)\n"     \
    "  --o-proj P            dsa-cp: o_proj replicated, layer-shard, tp or auto\n"                  \
    "  --prefetch N          layer-shard: broadcasts issued N layers ahead (default 2)\n"           \
    "  --decode-context-parallel-size W   must equal the number of ranks (vLLM's flag)\n"           \
    "  --dcp-comm-backend B  merge of partial results: ag_rs (all-gather lse + reduce-scatter, vLLM's;\n" \
    "                        default) or a2a (one all-to-all of partials and lse, Helix)\n"         \
    "  --comm-report FILE    write every rank's communication counters (JSON) at the end\n"
/* The usage lines of `dsacp run`'s roles (tools/cli/cli_run_pd.c; docs/serving.md "Disaggregated
 * serving"), for run's usage in main.c. */
#define CLI_RUN_PD_USAGE                                                                              \
    "disaggregated serving (one MPI job, a producer and a consumer group; docs/serving.md):\n"      \
    "  --kv-role R           kv_producer (prefill only, the first token), kv_consumer (decode) or\n" \
    "                        kv_both (default: both, one group); MPMD, each group its own flags:\n"  \
    "                        mpirun -np P dsacp run --kv-role kv_producer ... : -np D dsacp run\n"   \
    "                        --kv-role kv_consumer ...\n"                                           \
    "  --pd P:D              one command: world ranks [0, P) kv_producer, [P, P + D) kv_consumer;\n" \
    "                        the CP flags are the consumer's, the producer runs dsa-cp with q_proj\n"\
    "                        and o_proj layer-shard and both caches replicated (each overridable\n" \
    "                        on a kv_producer's own command line)\n"                                \
    "  --kv-transfer-timeout S   bound on every wait for the other group (default 120 s)\n"
/* Fills cp from the CLI_CP_OPTS flags (defaults otherwise), checks them against the group's size.
 * Prints the error naming the flag and returns false. */
bool cli_cp_options(const char *cmd, const cli_opt *opts, dsacp_cp_options *cp);
/* The same for a group of W ranks of a larger job (`dsacp run --kv-role` / `--pd`: a producer or
 * consumer group checks its flags against its own size, not the world's). */
bool cli_cp_options_group(const char *cmd, const cli_opt *opts, int W, dsacp_cp_options *cp);
/* Collective: opens --comm-report (when given) on rank 0 before any work; prints the error and
 * returns the agreed status. */
int cli_cp_begin(const char *cmd, const cli_opt *opts, cli_output *report);
/* Collective end of a run: with status 0 everywhere, the counters' report (dsacp_comm_report_json)
 * is committed into the output cli_cp_begin opened; otherwise that output is removed. Prints the
 * error (when the failure is new) and returns the agreed status. */
int cli_cp_finish(const char *cmd, const cli_opt *opts, int status, const dsacp_engine *engine, cli_output *report);

int cli_init_model(int argc, char **argv);
int cli_inspect(int argc, char **argv);
int cli_forward(int argc, char **argv);
int cli_generate(int argc, char **argv);
int cli_make_input(int argc, char **argv);
int cli_bench(int argc, char **argv);
/* dsacp bench --kernel cp (cli_bench_cp.c): decode and chunked prefill over the CP group. */
int cli_bench_cp(const cli_opt *opts);
int cli_run(int argc, char **argv);
int cli_tokenize(int argc, char **argv);
int cli_serve(int argc, char **argv);
int cli_detokenize(int argc, char **argv);
int cli_plan(int argc, char **argv);

#endif
