/* fuzz_forward_input.c -- libFuzzer entry: the `dsacp forward` input file (input_ids + schedule
 * in safetensors) checked against a model config. Any bytes must be rejected with a message or
 * accepted as an input whose every invariant holds; the buffer sizes derived from it must be
 * overflow-checked, including against configs whose index_topk or vocabulary would make a
 * product wrap. Links src/io/forward_input.c, src/io/safetensors.c and src/core/core.c only, so
 * the config is built by hand. */
#include "io/forward_input.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Keeps the checks' reads from being optimized away. */
volatile int64_t fuzz_forward_input_sink;

static void check_sizes(const dsacp_forward_input *in, const dsacp_config *cfg)
{
    for (int dump = 0; dump < 2; dump++) {
        dsacp_forward_sizes sz;
        int rc = dsacp_forward_input_sizes(in, cfg, dump, "fuzz.safetensors", &sz);
        /* Exact products in 128 bits: a success must be right, a refusal must be justified. */
        unsigned __int128 l = (unsigned __int128)in->requests * (unsigned __int128)in->max_len * cfg->vocab_size;
        unsigned __int128 k = (unsigned __int128)cfg->num_hidden_layers * (unsigned __int128)in->requests *
                              (unsigned __int128)in->max_len * (unsigned __int128)cfg->index_topk;
        unsigned __int128 sl = (unsigned __int128)in->max_step_tokens * cfg->vocab_size;
        unsigned __int128 sk = (unsigned __int128)cfg->num_hidden_layers * in->max_step_tokens * cfg->index_topk;
        unsigned __int128 lim = DSACP_FORWARD_MAX_BYTES;
        bool fits = l * 4 <= lim && sl * 4 <= lim && (!dump || (k * 4 <= lim && sk * 4 <= lim));
        if (rc == DSACP_OK) {
            if (!fits) abort();
            if (sz.logits != l || sz.step_logits != sl || sz.step_ids != (size_t)in->max_step_tokens) abort();
            if (dump && (sz.topk != k || sz.step_topk != sk)) abort();
            if (!dump && (sz.topk || sz.step_topk)) abort();
        } else {
            if (fits || rc != DSACP_ERANGE || dsacp_last_error()[0] == '\0') abort();
        }
    }
}

/* Checks one parse of the input against one config. */
static void run_one(const uint8_t *data, size_t size, const dsacp_config *cfgp)
{
    const dsacp_config cfg = *cfgp;
    dsacp_forward_input in;
    int rc = dsacp_forward_input_parse(data, size, "fuzz.safetensors", &cfg, &in);
    if (rc != DSACP_OK) {
        if (dsacp_last_error()[0] == '\0') abort();
        dsacp_forward_input_free(&in); /* a failed parse must still be freeable */
        return;
    }
    /* Accepted: every invariant the CLI relies on. */
    const int64_t R = in.requests, L = in.max_len, S = in.steps;
    if (R < 1 || L < 1 || S < 0 || !in.input_ids || !in.schedule || !in.length) abort();
    int64_t total = 0, maxT = 0;
    int64_t *fed = calloc((size_t)R, sizeof *fed);
    if (!fed) abort();
    for (int64_t r = 0; r < R; r++) {
        int64_t n = in.length[r];
        if (n < 0 || n > L || n > cfg.max_position_embeddings) abort();
        for (int64_t j = 0; j < L; j++) {
            int32_t id = in.input_ids[r * L + j];
            if (j < n && (id < 0 || id >= cfg.vocab_size)) abort();
            if (j >= n && id != -1) abort();
        }
        total += n;
    }
    for (int64_t s = 0; s < S; s++) {
        int64_t T = 0;
        for (int64_t r = 0; r < R; r++) {
            int32_t c = in.schedule[s * R + r];
            if (c < 0) abort();
            fed[r] += c;
            if (fed[r] > in.length[r]) abort();
            T += c;
        }
        if (T > maxT) maxT = T;
    }
    for (int64_t r = 0; r < R; r++)
        if (fed[r] != in.length[r]) abort();
    if (total != in.total_tokens || maxT != in.max_step_tokens) abort();
    free(fed);
    check_sizes(&in, &cfg);
    fuzz_forward_input_sink = total;
    dsacp_forward_input_free(&in);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* Every input meets the tiny preset's dimensions and configs whose products wrap. */
    static const struct { int64_t vocab, layers, topk, maxpos; } cfgs[] = {
        {512, 2, 32, 64},                                     /* tiny, 64 positions */
        {512, 2, (int64_t)1 << 40, (int64_t)1 << 40},         /* the index_topk */
        {(int64_t)1 << 40, 61, 2048, 163840},                 /* vocabulary past the bound */
        {129280, 512, (int64_t)1 << 40, (int64_t)1 << 40},    /* everything large */
        {1, 1, 1, 1},                                         /* the smallest config */
    };
    for (size_t i = 0; i < sizeof cfgs / sizeof cfgs[0]; i++) {
        dsacp_config cfg;
        memset(&cfg, 0, sizeof cfg);
        cfg.vocab_size = cfgs[i].vocab;
        cfg.num_hidden_layers = cfgs[i].layers;
        cfg.index_topk = cfgs[i].topk;
        cfg.max_position_embeddings = cfgs[i].maxpos;
        run_one(data, size, &cfg);
    }
    return 0;
}
