/*
 * dsacp -- the command-line tool. One subcommand per job; every error is one line on stderr
 * naming the file or flag at fault, with a non-zero exit status.
 */
#include "cli.h"

#include <stdio.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f,
            "usage: dsacp <command> [options]\n"
            "commands:\n"
            "  init-model --preset NAME --out DIR [--seed N] [--weights f32|bf16|fp8]\n"
            "      write config.json and model.safetensors with deterministic random weights\n"
            "      presets: tiny, tiny-moe, small, v32-layer\n"
            "  inspect --model DIR\n"
            "      load and validate a model directory and print a summary\n"
            "  forward --model DIR --input IN.safetensors --output OUT.safetensors\n"
            "          [--numerics exact|deployed] [--kv-dtype f32|bf16|fp8] [--block-size B]\n"
            "          [--dump-topk]\n"
            "      run the schedule of engine steps in IN and write the logits\n"
            "  generate --model DIR [--prompt-len N] [--new-tokens N] [--seed N] [--chunk N]\n"
            "           [--numerics exact|deployed] [--kv-dtype f32|bf16|fp8]\n"
            "      prefill a random prompt in chunks, then decode greedily\n"
            "  make-input --out IN.safetensors [--requests R] [--length L] [--vocab V] [--chunk C]\n"
            "             [--seed N]\n"
            "      write a forward input: random requests and a mixed prefill/decode schedule\n"
            "  bench (--preset NAME | --model DIR) [--context N] [--batch B] [--threads N]\n"
            "        [--kernel all|ceilings|indexer|topk|mla|linear|layer] [--reps N] [--json]\n"
            "        [--numerics exact|deployed] [--isa scalar|avx2|avx512] [--block-size B] [--warm]\n"
            "      time the kernels and one decode layer beside the machine's ceilings\n"
            "  help\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "init-model") == 0) return cli_init_model(argc - 1, argv + 1);
    if (strcmp(cmd, "inspect") == 0) return cli_inspect(argc - 1, argv + 1);
    if (strcmp(cmd, "forward") == 0) return cli_forward(argc - 1, argv + 1);
    if (strcmp(cmd, "generate") == 0) return cli_generate(argc - 1, argv + 1);
    if (strcmp(cmd, "make-input") == 0) return cli_make_input(argc - 1, argv + 1);
    if (strcmp(cmd, "bench") == 0) return cli_bench(argc - 1, argv + 1);
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "dsacp: unknown command '%s' (try 'dsacp help')\n", cmd);
    return 2;
}
