/* tokenizer_speed.c -- dsacp's tokenizer throughput on files (bench/tokenizer_speed.sh runs it
 * beside Hugging Face tokenizers). usage: tokenizer_speed TOKENIZER_JSON REPEATS whole|lines FILE...
 * Encodes each file's text whole (or each line of it, the newline included), REPEATS times, on
 * one thread; prints bytes, tokens, seconds. */
#include "dsacp_text.h"
#include "dsacp_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Encodes text whole or line by line; the number of ids, or -1 after printing the error. */
static int64_t encode(const dsacp_tokenizer *t, const char *text, size_t len, bool lines, int32_t *ids, int64_t cap)
{
    int64_t total = 0, n = 0;
    for (size_t at = 0; at < len;) {
        const char *nl = lines ? memchr(text + at, '\n', len - at) : NULL;
        size_t end = nl ? (size_t)(nl - text) + 1 : len;
        if (dsacp_tokenizer_encode(t, text + at, end - at, false, ids, cap, &n)) {
            fprintf(stderr, "%s\n", dsacp_last_error());
            return -1;
        }
        total += n;
        at = end;
    }
    return total;
}

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: %s TOKENIZER_JSON REPEATS whole|lines FILE...\n", argv[0]);
        return 2;
    }
    dsacp_tokenizer *t = NULL;
    if (dsacp_tokenizer_load(argv[1], &t)) {
        fprintf(stderr, "%s\n", dsacp_last_error());
        return 1;
    }
    int reps = atoi(argv[2]);
    bool lines = strcmp(argv[3], "lines") == 0;
    size_t bytes = 0;
    int64_t tokens = 0;
    double secs = 0;
    for (int f = 4; f < argc; f++) {
        char *text;
        size_t len;
        if (dsacp_read_file(argv[f], &text, &len, (size_t)1 << 30)) {
            fprintf(stderr, "%s\n", dsacp_last_error());
            return 1;
        }
        int64_t cap = (int64_t)len + 16, n = 0;
        int32_t *ids = malloc((size_t)cap * sizeof *ids);
        double t0 = dsacp_now();
        for (int r = 0; r < reps; r++)
            if ((n = encode(t, text, len, lines, ids, cap)) < 0) return 1;
        secs += dsacp_now() - t0;
        bytes += len * (size_t)reps;
        tokens += n * reps;
        free(ids);
        dsacp_free(text);
    }
    printf("dsacp (%s): %zu bytes, %lld tokens, %.3f s, %.2f MB/s, %.0f tokens/s\n", argv[3], bytes, (long long)tokens, secs,
           (double)bytes / secs / 1e6, (double)tokens / secs);
    dsacp_tokenizer_free(t);
    return 0;
}
