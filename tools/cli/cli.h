/* cli.h -- subcommands of the dsacp tool and the one option parser they share. */
#ifndef DSACP_CLI_H
#define DSACP_CLI_H

#include "dsacp.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdint.h>

/* An option of a subcommand: "--name VALUE" (has_value) or a "--name" flag. */
typedef struct cli_opt {
    const char *name;
    bool has_value;
    const char *value; /* filled by cli_parse; NULL when not given (flags: "1" when given) */
} cli_opt;

/* The version `dsacp --version` prints: the build may pass the CMake project version as
 * -DDSACP_VERSION="x.y.z"; otherwise this is the one place it is written. */
#ifndef DSACP_VERSION
#define DSACP_VERSION "0.1.0"
#endif

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
/* Strict integer parsing of a flag value in [min, max]; prints the error naming the flag. */
bool cli_int(const char *cmd, const char *flag, const char *text, int64_t min, int64_t max,
             int64_t *out);
/* Engine options from --numerics, --kv-dtype and --block-size (each optional; options absent
 * from `opts` are simply not given). Prints the error naming the flag and returns false. */
bool cli_engine_options(const char *cmd, const cli_opt *opts, dsacp_engine_options *eo);
/* Prints "dsacp CMD: <dsacp_last_error()>" and returns 1. */
int cli_fail(const char *cmd, int status);

int cli_init_model(int argc, char **argv);
int cli_inspect(int argc, char **argv);
int cli_forward(int argc, char **argv);
int cli_generate(int argc, char **argv);
int cli_make_input(int argc, char **argv);
int cli_bench(int argc, char **argv);

#endif
