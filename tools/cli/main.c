/*
 * dsacp -- the command-line tool. One subcommand per job; every error is one line on stderr
 * naming the file or flag at fault, with a non-zero exit status. `dsacp CMD --help` (or -h)
 * prints CMD's usage on stdout and exits 0; `dsacp --version` prints the version.
 */
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct cli_command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *synopsis; /* options, as in the usage line */
    const char *summary;  /* one line */
    const char *details;  /* the options explained (may be "") */
} cli_command;

static const cli_command commands[] = {
    {"init-model", cli_init_model,
     "--preset NAME --out DIR [--seed N] [--weights f32|bf16|fp8] [--no-mtp]\n"
     "           [--tokenizer FILE] [--vocab-size N]",
     "write config.json and model.safetensors with deterministic random weights",
     "  --preset NAME   tiny, tiny-moe, small or v32-layer\n"
     "  --out DIR       the model directory to create (nothing is left there on failure)\n"
     "  --seed N        random seed of the weights (default 0)\n"
     "  --weights FMT   stored dtype of the linear weights: f32, bf16 or fp8 (default f32; fp8 for\n"
     "                  v32-layer)\n"
     "  --no-mtp        leave out the MTP layer (checkpoint layer num_hidden_layers) and declare\n"
     "                  num_nextn_predict_layers 0 (every preset has one MTP layer)\n"
     "  --tokenizer FILE  a Hugging Face tokenizer.json, copied into DIR (with tokenizer_config.json\n"
     "                  from its directory); the vocabulary fits it: 129280 for DeepSeek's own\n"
     "                  (V3/V3.1/V3.2: 128815 ids), else its ids rounded up to a multiple of 128\n"
     "                  (docs/text.md section 3); config.json gets bos_token_id and eos_token_id\n"
     "  --vocab-size N  the vocabulary instead (at least the tokenizer's ids)\n"},
    {"inspect", cli_inspect, "--model DIR [--scan-weights]",
     "load and validate a model directory (config and safetensors headers), print a summary",
     "  --model DIR     config.json plus model.safetensors (or the shards of\n"
     "                  model.safetensors.index.json)\n"
     "  --scan-weights  also read every weight and report NaN/Inf (reads the whole checkpoint)\n"
     "Reads only config.json and the safetensors headers unless --scan-weights is given. Exits 2 when\n"
     "the model is malformed (missing or malformed tensors, a bad config), 1 when --scan-weights finds\n"
     "NaN/Inf. A tokenizer.json in DIR is reported with its id count; one that does not load or has\n"
     "more ids than the vocabulary is an error (exit 2).\n"},
    {"forward", cli_forward,
     "--model DIR --input IN.safetensors --output OUT.safetensors\n"
     "          [--numerics exact|deployed] [--kv-dtype f32|bf16|fp8] [--block-size B] [--dump-topk]\n"
     "          [--decode-strategy S] [--kv-layout L] [--index-layout L] [--cp-interleave I] [--comm-report F]",
     "run the schedule of engine steps in IN and write the logits",
     "  --input IN      input_ids I32 [R, Lmax] (-1 after a request's end) and schedule I32 [S, R]\n"
     "                  (tokens of each request fed in each step); `dsacp make-input` writes one\n"
     "  --output OUT    logits F32 [R, Lmax, vocab] (and topk.<layer> I32 [R, Lmax, index_topk]\n"
     "                  with --dump-topk), written only when the whole run succeeded\n"
     "  --numerics M    exact (fp32, as transformers) or deployed (Hadamard + FP8 indexer)\n"
     "  --kv-dtype T    MLA latent cache dtype: f32, bf16, or fp8 (deployed only)\n"
     "  --block-size B  tokens per cache block, a power of two (default 64)\n"
     "  --dump-topk     also write each layer's selected positions\n" CLI_CP_USAGE},
    {"generate", cli_generate,
     "--model DIR [--prompt-len N] [--new-tokens N] [--seed N] [--chunk N] [--all-logits]\n"
     "           [--numerics exact|deployed] [--kv-dtype f32|bf16|fp8] [--block-size B]\n"
     "           [--decode-strategy S] [--kv-layout L] [--index-layout L] [--cp-interleave I] [--comm-report F]",
     "prefill a random prompt in chunks, then decode greedily",
     "  --prompt-len N  random prompt tokens (default 64)\n"
     "  --new-tokens N  tokens to generate (default 16); prompt + new tokens must not exceed the\n"
     "                  model's max_position_embeddings\n"
     "  --seed N        random seed of the prompt (default 0)\n"
     "  --chunk N       prefill chunk size (default 256)\n"
     "  --all-logits    compute lm_head after every prompt token, not only after each chunk's last\n"
     "                  (the one greedy decoding reads); the output is the same, only slower\n"
     "  --numerics M    exact or deployed (see forward)\n"
     "  --kv-dtype T    f32, bf16, or fp8 (deployed only)\n"
     "Prints nothing until the run has succeeded; a non-finite logit is an error.\n" CLI_CP_USAGE},
    {"make-input", cli_make_input,
     "--out IN.safetensors [--requests R] [--length L] [--vocab V] [--chunk C] [--seed N]",
     "write a forward input: random requests and a mixed prefill/decode schedule",
     "  --requests R    number of requests (default 3)\n"
     "  --length L      tokens of the longest request (default 100)\n"
     "  --vocab V       ids are drawn from [0, V) (default 512)\n"
     "  --chunk C       prefill chunk size (default 37)\n"
     "  --seed N        random seed (default 0)\n"},
    {"bench", cli_bench,
     "(--preset NAME | --model DIR) [--context N] [--batch B] [--threads N]\n"
     "        [--kernel all|ceilings|indexer|topk|mla|linear|layer|gemm|prefill|cp] [--reps N] [--json]\n"
     "        [--numerics exact|deployed] [--isa scalar|avx2|avx512] [--block-size B] [--warm]\n"
     "        [--chunk P] [context-parallel flags, under mpirun -np W]",
     "time the kernels and one decode layer beside the machine's ceilings",
     "  gemm     batched linear on 16, 256, 2048 tokens (f32, bf16, fp8 weights) beside OpenBLAS\n"
     "           sgemm on the same shape, timed interleaved (not part of 'all')\n"
     "  prefill  one step prefilling --context tokens through the layer, against the peak FMA\n"
     "           rate (the roofline; not part of 'all')\n"
     "  cp       (--model DIR; under mpirun -np W) decode steps of --batch requests holding\n"
     "           --context cached positions, then with --chunk P one step appending P tokens to\n"
     "           the first (--context 0: a prefill of P tokens): step time, the layer's parts,\n"
     "           time and bytes per communication phase, and the overlap achieved; --threads and\n"
     "           --isa apply; --context + --reps + --chunk must fit max_position_embeddings\n"
     "  a flag the chosen kernel does not read is refused (exit 2): --context: all but linear,\n"
     "  gemm; --batch: all, layer, cp; --numerics: all, linear, layer, gemm, prefill, cp; --isa: all\n"
     "  but ceilings; --block-size: all, layer, prefill, cp; --warm: all, linear; --chunk and the\n"
     "  context-parallel flags: cp\n"
     "  see docs/performance.md and docs/context-parallel.md for every figure it prints\n" CLI_CP_USAGE},
    {"plan", cli_plan,
     "(--model DIR | --preset NAME) --context L [--batch N] --cp W --hardware FILE.json [--json FILE]\n"
     "        [--numerics deployed|exact] [--lean-candidates F] [--layers N] [--prefill P] [--chunk C]\n"
     "        [--ep N] [--plot F.svg|F.png]\n"
     "        [--pd P:D [--rate R[,R...]] [--gen-len N] [--producer-chunk C] [--link-gbps G] [--link-latency-us U]]\n"
     "        [--speculative-config JSON [--spec-acceptance-rate A]];\n"
     "        or under mpirun:\n"
     "        --calibrate FILE.json",
     "predict each decode strategy's bytes, calls, memory and time per layer (docs/planning.md)",
     "  --hardware FILE    a device profile: hardware/*.json (published figures) or one written by\n"
     "                     --calibrate (this machine: sgemm peak, the rate decode's linear kernel\n"
     "                     reads weights, MPI all-gather bandwidth and latency over the run's ranks)\n"
     "  --batch N          decode tokens per step, one per request (default 1)\n"
     "  --cp W             ranks (default 8); --context L cached positions per request (default 131072)\n"
     "  --preset v32       the whole DeepSeek-V3.2 (61 layers, 256 experts; planning only)\n"
     "  --layers N         the model's layers (default the model's)\n"
     "  --ep N             routed experts spread over N ranks (default: replicated when the whole\n"
     "                     model fits in half a rank's memory, else over the --cp ranks)\n"
     "  --weight-bytes N   bytes per stored weight value: 1 fp8, 2 bf16, 4 f32 (default by --numerics)\n"
     "  --plot FILE        a bar chart (.svg or .png) of the attention time per token and the KV\n"
     "                     per rank, and with --prefill the TTFT per split\n"
     "  --prefill P        also the prefill of a fresh P-token prompt (TTFT): TP with the indexer\n"
     "                     replicated or its rows split, and the CP engine's splits\n"
     "  --chunk C          the chunked-prefill table: a C-token chunk after the context by each\n"
     "                     context path, gathered or distributed, priced (default 2048)\n"
     "  --pd P:D           price P producer and D consumer instances of --cp ranks each (prefill and\n"
     "                     decode on separate groups, the KV moved over the link) against the same\n"
     "                     P + D instances run PD-mixed: TTFT, TPOT and ITL per load\n"
     "  --rate R[,R...]    request rates (requests/s) to price (default: 10-200% of what the\n"
     "                     producers keep up with); --gen-len N output tokens per request\n"
     "  --producer-chunk C the producers' prefill chunk (default --chunk: they have no decode to protect)\n"
     "  --link-gbps G --link-latency-us U   the inter-node link (default the profile's network)\n"
     "  --speculative-config JSON    vLLM's speculative config ({\"method\": \"mtp\"|\"ngram\",\n"
     "                     \"num_speculative_tokens\": k, ...}): each strategy's TPOT with k drafts\n"
     "                     beside the plain one (docs/planning.md)\n"
     "  --spec-acceptance-rate A   the drafts' acceptance rate per position (default 0.7 for mtp;\n"
     "                     required for ngram)\n"
     "  the byte and call counts are the formulas test_cp checks against the counters exactly\n"},
    {"run", cli_run,
     "(--model DIR | --preset NAME) [--requests N --prompt-len MIN:MAX --gen-len MIN:MAX\n"
     "          --arrival-rate R --long-requests N --long-prompt-len MIN:MAX | --prompts FILE.jsonl]\n"
     "          [--max-batch-tokens N] [--max-num-seqs N] [--kv-blocks N | --kv-memory SIZE] [--verify]\n"
     "          [--json FILE] [--seed N] [--temperature T] [--top-p P] [--speculative-config JSON]\n"
     "          [--no-realtime] [CP flags]\n"
     "          [--kv-role kv_producer|kv_consumer|kv_both | --pd P:D] [--kv-transfer-timeout S]\n"
     "   or: dsacp run --url http://HOST:PORT [--model DIR | --preset NAME | --tokenizer FILE]\n"
     "          [--model-name NAME] [--max-concurrency N] [the workload's flags] [--json FILE] [--seed N]\n"
     "          [--temperature T] [--top-p P] [--no-realtime]",
     "serve a workload with continuous batching and report latency, throughput, traffic, memory",
     "  --model DIR / --preset NAME   the model (a preset is created in a temporary directory under\n"
     "                               $TMPDIR or /tmp, removed once loaded and on SIGINT/SIGTERM)\n"
     "  --requests N                 synthetic requests (default 16) with prompt lengths uniform in\n"
     "  --prompt-len MIN:MAX         (default 128:512) and output lengths in --gen-len (default 16:32),\n"
     "  --arrival-rate R             arriving as a Poisson process of R requests/s (0: all at once)\n"
     "                               (prompt ids uniform over the vocabulary, or over the ids of the\n"
     "                               model directory's tokenizer.json when it has one)\n"
     "  --long-requests N            N more requests with prompts in --long-prompt-len (2048:4096), at t=0\n"
     "  --prompts FILE.jsonl         one JSON object per line: prompt_ids (array of ints), optional\n"
     "                               max_new_tokens, stop_ids, arrival_s (with --url: prompt, a text,\n"
     "                               instead of prompt_ids)\n"
     "  --max-batch-tokens N         per-step token budget (default 2048): decode tokens first, then\n"
     "                               prefill chunks (chunked prefill)\n"
     "  --max-num-seqs N             running requests at most (default 256)\n"
     "  --kv-blocks N | --kv-memory SIZE   this rank's KV pool (default: the whole workload at once);\n"
     "                               when it is full, requests wait or are preempted (the youngest\n"
     "                               first, decoding or mid-prompt) and recomputed\n"
     "  --verify                     replay the workload on one process and compare every token:\n"
     "                               exact numerics, identical tokens; deployed, identical or each\n"
     "                               request's first divergence at a near-tie (top-2 gap <= 0.1)\n"
     "  --json FILE                  the report (docs/serving.md; vllm bench serve's field names);\n"
     "                               bench/plot_run.py FILE OUT.svg draws it\n"
     "  --temperature T --top-p P    sampling (default greedy), seeded by --seed\n"
     "  --speculative-config JSON    vLLM's: {\"method\": \"ngram\"|\"mtp\", \"num_speculative_tokens\": k,\n"
     "                               \"prompt_lookup_min\": a, \"prompt_lookup_max\": b} (docs/speculative.md)\n"
     "  --no-realtime                every request present at t = 0; arrival times only order the\n"
     "                               queue (like vllm bench serve --request-rate inf)\n"
     "  --numerics, --kv-dtype, --block-size as for forward\n"
     "benchmark client (docs/serving.md \"The benchmark client\"):\n"
     "  --url http://HOST:PORT       send the workload to an OpenAI-compatible server (dsacp serve, vLLM)\n"
     "                               as streamed POST /v1/completions, each request at its arrival time,\n"
     "                               and report what the client saw (no model is loaded; the engine's,\n"
     "                               KV, CP and role flags and --verify are refused)\n"
     "  --model DIR | --preset NAME | --tokenizer FILE   with --url: only the vocabulary the synthetic\n"
     "                               prompts are drawn from (same flags, same prompts as in-process)\n"
     "  --model-name NAME            the requests' \"model\" (default: the first id of GET /v1/models)\n"
     "  --max-concurrency N          requests in flight at most (default: no limit)\n"
     "  $OPENAI_API_KEY, when set, is sent as 'Authorization: Bearer KEY' (dsacp serve --api-key)\n"
     "  a request the server refuses or breaks off is reported as failed, with its error (exit 0,\n"
     "  as vllm bench serve); a server that cannot be reached exits 1\n"
     "Exit status: 0; 2 a bad invocation (flags, or a file or value named: model, prompts, sizes);\n"
     "1 a failed run (an output that cannot be written, a --url server that cannot be reached);\n"
     "3 --verify failed.\n" CLI_RUN_PD_USAGE CLI_CP_USAGE},
    {"serve", cli_serve,
     "(--model DIR | --preset NAME) [--tokenizer FILE] [--host H] [--port P] [--api-key KEY]\n"
     "          [--served-model-name NAME] [--max-num-batched-tokens N] [--max-num-seqs N] [--max-waiting N]\n"
     "          [--kv-blocks N | --kv-memory SIZE] [--max-body-bytes N] [--timeout S] [--shutdown-timeout S]\n"
     "          [--numerics exact|deployed] [--kv-dtype T] [--block-size B] [CP flags]",
     "serve the model over an OpenAI-compatible HTTP API (docs/server.md)",
     "  --model DIR         the model; its tokenizer.json is used unless --tokenizer is given\n"
     "  --preset NAME       a preset with random weights (needs --tokenizer; the preset's vocabulary\n"
     "                      must hold the tokenizer's)\n"
     "  --tokenizer FILE    a Hugging Face tokenizer.json (byte-level BPE; docs/text.md)\n"
     "  --host H --port P   the address to listen on (default 127.0.0.1:8000; --port 0: any free port,\n"
     "                      printed on stdout as 'listening on http://H:P')\n"
     "  --api-key KEY       required as 'Authorization: Bearer KEY' on every route but /health\n"
     "  --served-model-name NAME   the model's name in the API (default: the model directory's name)\n"
     "  --max-num-batched-tokens N   per-step token budget (default 2048)\n"
     "  --max-num-seqs N    running requests at most (default 256)\n"
     "  --max-waiting N     queued requests at most (default 256); past it 429\n"
     "  --kv-blocks N | --kv-memory SIZE   this rank's KV pool (default: max-num-seqs requests of\n"
     "                      the model's full length, at most 1 GiB)\n"
     "  --max-body-bytes N  request bodies past it are refused with 413 (default 4194304)\n"
     "  --timeout S         a connection idle S seconds is closed (default 60; whole seconds, rounded up)\n"
     "  --shutdown-timeout S   after SIGTERM/SIGINT, requests in flight get S seconds to finish\n"
     "                      before they are aborted (default 30); exit 0\n"
     "Under mpirun rank 0 holds the socket and every rank steps the engine.\n" CLI_CP_USAGE},
    {"tokenize", cli_tokenize, "--tokenizer FILE (--text S | --file F) [--json] [--add-special]",
     "print the ids of a text under a Hugging Face tokenizer.json",
     "  --tokenizer FILE  tokenizer.json (byte-level BPE; docs/text.md)\n"
     "  --text S | --file F   the text (UTF-8)\n"
     "  --json            {\"ids\": [...], \"count\": N} instead of comma-separated ids\n"
     "  --add-special     the post-processor's special tokens (as tokenizers' add_special_tokens)\n"},
    {"detokenize", cli_detokenize, "--tokenizer FILE --ids 1,2,3 [--skip-special]", "print the text of token ids",
     "  --tokenizer FILE  tokenizer.json\n"
     "  --ids LIST        comma-separated token ids\n"
     "  --skip-special    leave out special tokens\n"},
    {"help", NULL, "[COMMAND]", "print this summary, or COMMAND's usage", ""},
};

#define N_COMMANDS (sizeof commands / sizeof commands[0])

static const cli_command *find_command(const char *name)
{
    for (size_t i = 0; i < N_COMMANDS; i++)
        if (strcmp(commands[i].name, name) == 0) return &commands[i];
    return NULL;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: dsacp <command> [options]    (dsacp <command> --help: the command's options)\n"
               "       dsacp --version\n"
               "commands:\n");
    for (size_t i = 0; i < N_COMMANDS; i++)
        fprintf(f, "  %s %s\n      %s\n", commands[i].name, commands[i].synopsis, commands[i].summary);
}

void cli_usage(const char *cmd, FILE *f)
{
    const cli_command *c = find_command(cmd);
    if (!c) {
        usage(f);
        return;
    }
    fprintf(f, "usage: dsacp %s %s\n%s\n%s", c->name, c->synopsis, c->summary, c->details);
    fprintf(f, "  -h, --help      print this help and exit\n");
}

/* dsacp plan --calibrate runs on every rank of an mpirun job (it times the group's collectives). */
static bool wants_calibrate(int argc, char **argv)
{
    for (int i = 2; i < argc; i++)
        if (strcmp(argv[i], "--calibrate") == 0 || strncmp(argv[i], "--calibrate=", 12) == 0) return true;
    return false;
}

/* A command that succeeded but whose report could not be written to stdout (a full disk, a closed
 * pipe, /dev/full) has failed: exit 1 with the reason, never 0 with the report lost. */
static int stdout_ok(const char *cmd, int status)
{
    if (status == 0 && (fflush(stdout) != 0 || ferror(stdout))) {
        fprintf(stderr, "dsacp %s: stdout: write failed\n", cmd);
        return 1;
    }
    return status;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "version") == 0) {
        printf("dsacp %s\n", dsacp_version());
        return 0;
    }
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        /* dsacp help [COMMAND]; dsacp help --help is the summary too. */
        if (argc > 2 && find_command(argv[2]) && strcmp(argv[2], "help") != 0) cli_usage(argv[2], stdout);
        else if (argc > 2 && argv[2][0] != '-' && !find_command(argv[2])) {
            fprintf(stderr, "dsacp help: unknown command '%s' (try 'dsacp help')\n", argv[2]);
            return 2;
        } else usage(stdout);
        return 0;
    }
    const cli_command *c = find_command(cmd);
    if (c && c->run && (c->run == cli_forward || c->run == cli_generate || c->run == cli_run || c->run == cli_bench || c->run == cli_serve ||
                            (c->run == cli_plan && wants_calibrate(argc, argv)))) {
        /* The engine commands run on every rank of an mpirun job (a solo group otherwise). */
        if (dsacp_comm_create_world(&argc, &argv, &cli_world)) {
            fprintf(stderr, "dsacp %s: %s\n", cmd, dsacp_last_error());
            return 1;
        }
        if (dsacp_comm_rank(cli_world) != 0) {
            if (!freopen("/dev/null", "w", stdout) || !freopen("/dev/null", "w", stderr)) { /* keep going */
            }
        }
        int st = stdout_ok(cmd, c->run(argc - 1, argv + 1));
        /* Every rank reaches here with the same status (the commands agree before returning). */
        dsacp_comm_free(cli_world);
        cli_world = NULL;
        return st;
    }
    if (c && c->run) return stdout_ok(cmd, c->run(argc - 1, argv + 1));
    fprintf(stderr, "dsacp: unknown command '%s' (try 'dsacp help')\n", cmd);
    return 2;
}
