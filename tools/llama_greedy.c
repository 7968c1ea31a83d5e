/*
 * llama_greedy.c -- llama.cpp's greedy tokens for tools/llama_bench.py's token comparison, which
 * llama-bench cannot give (it feeds random tokens and prints timings only). Built by the script
 * against the llama.cpp it built (its include/ and ggml/include/, libllama.so); not part of the
 * dsacp build.
 *
 *   llama_greedy MODEL.gguf THREADS NEW < PROMPT_IDS
 *
 * reads the prompt's token ids (whitespace separated) from stdin, prefills them in one batch,
 * then decodes NEW tokens one at a time, each the first index of the largest logit (as dsacp
 * generate chooses), and prints "generated: ID ..." as dsacp generate does; stderr gets llama.cpp's
 * system_info line (which kernels it was built with). Exit 1 on an error, with a message on stderr.
 */
#include "llama.h"

#include <stdio.h>
#include <stdlib.h>

static void quiet(enum ggml_log_level level, const char *text, void *user)
{
    (void)user;
    if (level == GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

static int32_t argmax(const float *x, int32_t n)
{
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* The prompt from stdin; *n its length. NULL on an allocation failure or no ids. */
static llama_token *read_ids(int32_t *n)
{
    int32_t cap = 1024, len = 0;
    llama_token *ids = malloc((size_t)cap * sizeof *ids);
    long v;
    while (ids && scanf("%ld", &v) == 1) {
        if (len == cap) {
            cap *= 2;
            llama_token *grown = realloc(ids, (size_t)cap * sizeof *ids);
            if (!grown) free(ids);
            ids = grown;
            if (!ids) break;
        }
        ids[len++] = (llama_token)v;
    }
    *n = len;
    if (ids && !len) {
        free(ids);
        ids = NULL;
    }
    return ids;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: llama_greedy MODEL.gguf THREADS NEW < PROMPT_IDS\n");
        return 1;
    }
    const int threads = atoi(argv[2]), n_new = atoi(argv[3]);
    int32_t n_prompt = 0;
    llama_token *ids = read_ids(&n_prompt);
    if (!ids || threads < 1 || n_new < 1) {
        fprintf(stderr, "llama_greedy: no prompt ids on stdin, or THREADS/NEW below 1\n");
        return 1;
    }
    llama_log_set(quiet, NULL);
    llama_backend_init();
    fprintf(stderr, "system_info: %s\n", llama_print_system_info()); /* the kernels it has: AVX512_BF16 */
    struct llama_model *m = llama_model_load_from_file(argv[1], llama_model_default_params());
    if (!m) {
        fprintf(stderr, "llama_greedy: cannot load %s\n", argv[1]);
        return 1;
    }
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t)(n_prompt + n_new);
    cp.n_batch = cp.n_ubatch = (uint32_t)n_prompt;
    cp.n_threads = cp.n_threads_batch = threads;
    struct llama_context *ctx = llama_init_from_model(m, cp);
    const int32_t V = llama_vocab_n_tokens(llama_model_get_vocab(m));
    int rc = ctx ? llama_decode(ctx, llama_batch_get_one(ids, n_prompt)) : -1;
    printf("generated:");
    for (int i = 0; i < n_new && rc == 0; i++) {
        llama_token next = argmax(llama_get_logits_ith(ctx, -1), V);
        printf(" %d", next);
        if (i + 1 < n_new) rc = llama_decode(ctx, llama_batch_get_one(&next, 1));
    }
    printf("\n");
    if (rc) fprintf(stderr, "llama_greedy: llama_decode failed (%d)\n", rc);
    if (ctx) llama_free(ctx);
    llama_model_free(m);
    llama_backend_free();
    free(ids);
    return rc ? 1 : 0;
}
