/* cli_serve.c -- `dsacp serve` (docs/server.md): placeholder until the server lands. */
#include "cli.h"

int cli_serve(int argc, char **argv)
{
    cli_opt opts[] = {{NULL, false, NULL}};
    int st = cli_parse(argc, argv, opts);
    if (st != CLI_RUN) return st;
    fprintf(stderr, "dsacp serve: not built yet\n");
    return 1;
}
