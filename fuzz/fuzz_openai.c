/* fuzz_openai.c -- the server's OpenAI request reader on arbitrary bytes (it waits in fuzz/pending
 * until CMakeLists.txt lists FUZZ_SRC_fuzz_openai, then moves to fuzz/): the first byte picks the
 * route (even: /v1/completions, odd: /v1/chat/completions), the rest is the body. With the
 * tokenizer of tests/data/tok_chat (found beside this file, or under $DSACP_SOURCE_DIR) text
 * prompts and chat messages are tokenized too. A parsed request keeps the positions limit, and its
 * stop strings run over the body pushed in small pieces; a refused one has a message and an error
 * object that is JSON. */
#include "dsacp_text.h"
#include "server/server.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static dsacp_tokenizer *tok_;
static dsacp_config cfg_;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    char path[4096];
    const char *root = getenv("DSACP_SOURCE_DIR");
    if (root) {
        snprintf(path, sizeof path, "%s/tests/data/tok_chat/tokenizer.json", root);
    } else {
        const char *slash = strrchr(__FILE__, '/');
        int dir = slash ? (int)(slash - __FILE__) : 1;
        snprintf(path, sizeof path, "%.*s/../tests/data/tok_chat/tokenizer.json", dir, slash ? __FILE__ : ".");
    }
    if (dsacp_tokenizer_load(path, &tok_) != 0)
        fprintf(stderr, "fuzz_openai: no tokenizer (%s): id prompts only\n", path);
    cfg_.vocab_size = 516;
    cfg_.max_position_embeddings = 64;
    return 0;
}

/* The request's stop strings over text pushed `step` bytes at a time: never more out than in. */
static void run_stop(const oai_request *r, const char *text, size_t len, size_t step)
{
    oai_stop *s;
    if (oai_stop_create(r->stop, r->n_stop, &s) != 0)
        abort();
    size_t total = 0, n;
    const char *out;
    bool matched = false;
    for (size_t i = 0; i < len && !matched; i += step) {
        if (oai_stop_push(s, text + i, len - i < step ? len - i : step, &out, &n, &matched) != 0)
            abort();
        total += n;
    }
    if (oai_stop_flush(s, &out, &n) != 0 || total + n > len)
        abort();
    oai_stop_free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    oai_kind kind = data[0] & 1 ? OAI_CHAT : OAI_COMPLETION;
    oai_request r;
    oai_error e;
    int rc = oai_request_parse(kind, (const char *)data + 1, size - 1, tok_, &cfg_, 16, &r, &e);
    if (rc == 0) {
        if (r.prompt_len < 1 || r.max_tokens < 1 || r.prompt_len + r.max_tokens > cfg_.max_position_embeddings ||
            !(r.temperature >= 0 && r.temperature <= 2) || !(r.top_p > 0 && r.top_p <= 1))
            abort();
        for (int64_t i = 0; i < r.prompt_len; i++)
            if (r.prompt[i] < 0 || r.prompt[i] >= cfg_.vocab_size)
                abort();
        run_stop(&r, (const char *)data + 1, size - 1, (size_t)(data[0] >> 1) % 7 + 1);
        oai_request_free(&r);
    } else {
        if (rc != e.http || (rc != 400 && rc != 500) || e.message[0] == '\0')
            abort();
        free(oai_error_json(&e));
    }
    return 0;
}
