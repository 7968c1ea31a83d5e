/* cli_run_workload.c -- `dsacp run`'s workload: synthetic requests (lengths in ranges, Poisson
 * arrivals) or a JSONL prompts file, checked against the model before anything is generated. */
#include "cli_run.h"
#include "dsacp_text.h"
#include "dsacp_util.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void run_workload_free(workload *w)
{
    for (int64_t i = 0; w->rq && i < w->n; i++) {
        free(w->rq[i].prompt);
        free((void *)w->rq[i].stop_ids);
        if (w->text) free(w->text[i]);
    }
    free(w->rq);
    free(w->text);
    memset(w, 0, sizeof *w);
}

/* "MIN:MAX" (or one number) into [lo, hi] within [min, max]. */
bool run_parse_range(const char *flag, const char *s, int64_t min, int64_t max, int64_t *lo, int64_t *hi)
{
    char a[64];
    const char *colon = strchr(s, ':');
    if (!colon) return cli_int("run", flag, s, min, max, lo) && (*hi = *lo, true);
    size_t k = (size_t)(colon - s);
    if (k >= sizeof a) {
        fprintf(stderr, "dsacp run: option '--%s' must be MIN:MAX or one integer, got '%s'\n", flag, s);
        return false;
    }
    memcpy(a, s, k);
    a[k] = 0;
    if (!cli_int("run", flag, a, min, max, lo) || !cli_int("run", flag, colon + 1, min, max, hi)) return false;
    if (*hi < *lo) {
        fprintf(stderr, "dsacp run: option '--%s' = %s: MIN > MAX\n", flag, s);
        return false;
    }
    return true;
}

/* The most prompt tokens a workload may hold in memory (4 bytes each): 2^30 tokens, 4 GiB. */
#define RUN_MAX_WORKLOAD_TOKENS ((int64_t)1 << 30)

/* The synthetic workload's ranges against the model, before anything is generated: every
 * request's prompt plus output within max_position_embeddings, the total prompt tokens bounded
 * (overflow-checked). */
int run_check_synthetic(int64_t n, int64_t phi, int64_t ghi, int64_t nlong, int64_t lhi, const dsacp_config *cfg,
                        const char *model)
{
    const int64_t maxpos = cfg->max_position_embeddings;
    if (n > 0 && phi + ghi > maxpos)
        return dsacp_error(DSACP_ERANGE, "--prompt-len up to %lld + --gen-len up to %lld = %lld positions, more than "
                           "the model's max_position_embeddings = %lld (%s)", (long long)phi, (long long)ghi,
                           (long long)(phi + ghi), (long long)maxpos, model);
    if (nlong > 0 && lhi + ghi > maxpos)
        return dsacp_error(DSACP_ERANGE, "--long-prompt-len up to %lld + --gen-len up to %lld = %lld positions, more "
                           "than the model's max_position_embeddings = %lld (%s)", (long long)lhi, (long long)ghi,
                           (long long)(lhi + ghi), (long long)maxpos, model);
    size_t a = 0, b = 0, total = 0;
    if (!dsacp_mul_ok((size_t)n, (size_t)phi, &a) || !dsacp_mul_ok((size_t)nlong, (size_t)lhi, &b) ||
        !dsacp_add_ok(a, b, &total) || total > (size_t)RUN_MAX_WORKLOAD_TOKENS)
        return dsacp_error(DSACP_ERANGE, "--requests %lld x --prompt-len up to %lld + --long-requests %lld x "
                           "--long-prompt-len up to %lld: more than %lld prompt tokens", (long long)n, (long long)phi,
                           (long long)nlong, (long long)lhi, (long long)RUN_MAX_WORKLOAD_TOKENS);
    return DSACP_OK;
}

/* Synthetic: n requests, prompt and output lengths uniform in their ranges, Poisson arrivals
 * (rate per second; 0: all at once), plus `nlong` long prompts arriving first. The ranges were
 * checked against the model (check_synthetic). */
int run_make_synthetic(workload *w, int64_t n, int64_t plo, int64_t phi, int64_t glo, int64_t ghi, double rate,
                       int64_t nlong, int64_t llo, int64_t lhi, int64_t V, uint64_t seed)
{
    w->rq = calloc((size_t)(n + nlong), sizeof *w->rq);
    if (!w->rq) return dsacp_error(DSACP_ENOMEM, "out of memory for %lld requests", (long long)(n + nlong));
    dsacp_rng rng, arr;
    dsacp_rng_seed(&rng, seed);
    dsacp_rng_seed(&arr, seed ^ 0xA5A5A5A5A5A5A5A5ull); /* arrivals: their own stream, so prompts do not depend on the rate */
    double t = 0;
    for (int64_t i = 0; i < n + nlong; i++) {
        dsacp_serve_request *r = &w->rq[i];
        const bool lng = i < nlong;
        const int64_t lo = lng ? llo : plo, hi = lng ? lhi : phi;
        r->prompt_len = lo + (int64_t)(dsacp_rng_u64(&rng) % (uint64_t)(hi - lo + 1));
        r->max_new_tokens = glo + (int64_t)(dsacp_rng_u64(&rng) % (uint64_t)(ghi - glo + 1));
        r->prompt = malloc((size_t)r->prompt_len * sizeof *r->prompt);
        if (!r->prompt) return dsacp_error(DSACP_ENOMEM, "out of memory for request %lld's prompt", (long long)i);
        w->n = i + 1;
        for (int64_t j = 0; j < r->prompt_len; j++) r->prompt[j] = (int32_t)(dsacp_rng_u64(&rng) % (uint64_t)V);
        if (rate > 0 && !lng) t += -log(1.0 - dsacp_rng_uniform(&arr)) / rate;
        r->arrival_s = t;
    }
    return DSACP_OK;
}

int run_prompt_vocab(const char *tokenizer, const char *model_dir, int64_t model_vocab, int64_t *vocab)
{
    char path[4096];
    *vocab = model_vocab;
    if (!tokenizer && model_dir) {
        if ((size_t)snprintf(path, sizeof path, "%s/tokenizer.json", model_dir) >= sizeof path) return DSACP_OK;
        if (access(path, F_OK) != 0) return DSACP_OK; /* a model without a tokenizer */
        tokenizer = path;
    }
    if (!tokenizer) return DSACP_OK;
    dsacp_tokenizer *t = NULL;
    const int rc = dsacp_tokenizer_load(tokenizer, &t);
    if (!rc && dsacp_tokenizer_vocab_size(t) < *vocab) *vocab = dsacp_tokenizer_vocab_size(t);
    dsacp_tokenizer_free(t);
    return rc;
}

/* A token id field of the prompts file: an integer in [0, vocab). */
static int token_field(json_t *v, const char *path, int64_t ln, const char *field, size_t j, int64_t V, int32_t *out)
{
    if (!json_is_integer(v))
        return dsacp_error(DSACP_EFORMAT, "%s: line %lld: %s[%zu] is not an integer", path, (long long)ln, field, j);
    const json_int_t x = json_integer_value(v);
    if (x < 0 || x >= V)
        return dsacp_error(DSACP_ERANGE, "%s: line %lld: %s[%zu] = %lld is outside the vocabulary [0, %lld)", path,
                           (long long)ln, field, j, (long long)x, (long long)V);
    *out = (int32_t)x;
    return DSACP_OK;
}

/* A line's prompt: "prompt_ids", or (text not NULL: the client) "prompt", a non-empty string sent
 * to the server as it is. */
static int parse_prompt(json_t *o, const char *path, int64_t ln, const dsacp_config *cfg, dsacp_serve_request *r,
                        char **text)
{
    const int64_t maxpos = cfg->max_position_embeddings;
    json_t *ids = json_object_get(o, "prompt_ids"), *str = text ? json_object_get(o, "prompt") : NULL;
    if (str && ids)
        return dsacp_error(DSACP_EFORMAT, "%s: line %lld: give one of 'prompt_ids' and 'prompt'", path, (long long)ln);
    if (!text && json_object_get(o, "prompt"))
        return dsacp_error(DSACP_EFORMAT, "%s: line %lld: a text 'prompt' is read by the benchmark client only "
                           "(--url, the server tokenizes it): give 'prompt_ids'", path, (long long)ln);
    if (str) {
        if (!json_is_string(str) || json_string_length(str) == 0 || strlen(json_string_value(str)) != json_string_length(str))
            return dsacp_error(DSACP_EFORMAT, "%s: line %lld: 'prompt' must be a non-empty string without NUL", path,
                               (long long)ln);
        *text = strdup(json_string_value(str));
        return *text ? DSACP_OK : dsacp_error(DSACP_ENOMEM, "%s: line %lld: out of memory", path, (long long)ln);
    }
    if (!json_is_array(ids) || json_array_size(ids) == 0)
        return dsacp_error(DSACP_EFORMAT, "%s: line %lld: 'prompt_ids' must be a non-empty array of token ids%s", path,
                           (long long)ln, text ? " (or 'prompt' a string)" : "");
    if ((int64_t)json_array_size(ids) > maxpos)
        return dsacp_error(DSACP_ERANGE, "%s: line %lld: %zu prompt tokens, more than the model's "
                           "max_position_embeddings = %lld", path, (long long)ln, json_array_size(ids), (long long)maxpos);
    r->prompt_len = (int64_t)json_array_size(ids);
    r->prompt = malloc((size_t)r->prompt_len * sizeof *r->prompt);
    if (!r->prompt) return dsacp_error(DSACP_ENOMEM, "%s: line %lld: out of memory", path, (long long)ln);
    int rc = DSACP_OK;
    for (int64_t j = 0; j < r->prompt_len && !rc; j++)
        rc = token_field(json_array_get(ids, (size_t)j), path, ln, "prompt_ids", (size_t)j, cfg->vocab_size, &r->prompt[j]);
    return rc;
}

/* A field the loader does not read (a typo such as "max_new_token", or a per-request sampling
 * field dsacp does not support) is an error, never silently ignored. */
static int check_fields(json_t *o, const char *path, int64_t ln, bool text)
{
    static const char *const known[] = {"prompt_ids", "max_new_tokens", "stop_ids", "arrival_s", "prompt"};
    const size_t nk = text ? 5 : 4;
    const char *key;
    json_t *val;
    json_object_foreach(o, key, val) {
        (void)val;
        size_t k = 0;
        while (k < nk && strcmp(key, known[k])) k++;
        if (k == nk)
            return dsacp_error(DSACP_EFORMAT, "%s: line %lld: unknown field '%s' (a request has prompt_ids%s, "
                               "max_new_tokens, stop_ids and arrival_s)", path, (long long)ln, key,
                               text ? " or prompt" : "");
    }
    return DSACP_OK;
}

/* One line of the prompts file (len bytes, no NUL inside) into request r (text: see parse_prompt). */
static int parse_request(const char *line, size_t len, const char *path, int64_t ln, int64_t gen, const dsacp_config *cfg,
                         dsacp_serve_request *r, char **text)
{
    const int64_t V = cfg->vocab_size, maxpos = cfg->max_position_embeddings;
    json_error_t err;
    /* A repeated key is refused (which value would win is not the user's intent to guess). */
    json_t *o = json_loadb(line, len, JSON_REJECT_DUPLICATES, &err);
    int rc = DSACP_OK;
    if (!o || !json_is_object(o))
        rc = dsacp_error(DSACP_EFORMAT, "%s: line %lld: not a JSON object%s%s", path, (long long)ln, o ? "" : ": ",
                         o ? "" : err.text);
    if (!rc) rc = parse_prompt(o, path, ln, cfg, r, text);
    if (!rc) rc = check_fields(o, path, ln, text != NULL);
    json_t *m = o ? json_object_get(o, "max_new_tokens") : NULL, *a = o ? json_object_get(o, "arrival_s") : NULL;
    json_t *st = o ? json_object_get(o, "stop_ids") : NULL;
    r->max_new_tokens = gen;
    if (!rc && m) {
        if (!json_is_integer(m) || json_integer_value(m) < 1 || json_integer_value(m) > (1 << 24))
            rc = dsacp_error(DSACP_EFORMAT, "%s: line %lld: 'max_new_tokens' must be an integer in [1, 2^24]", path,
                             (long long)ln);
        else r->max_new_tokens = json_integer_value(m);
    }
    if (!rc && r->prompt && r->prompt_len + r->max_new_tokens > maxpos)
        rc = dsacp_error(DSACP_ERANGE, "%s: line %lld: %lld prompt tokens + max_new_tokens %lld = %lld positions, more "
                         "than the model's max_position_embeddings = %lld", path, (long long)ln,
                         (long long)r->prompt_len, (long long)r->max_new_tokens,
                         (long long)(r->prompt_len + r->max_new_tokens), (long long)maxpos);
    if (!rc && a) {
        /* 1e7 s (116 days): beyond it a realtime run would wait silently for longer than any trace */
        if (!json_is_number(a) || !(json_number_value(a) >= 0) || !(json_number_value(a) <= 1e7))
            rc = dsacp_error(DSACP_EFORMAT, "%s: line %lld: 'arrival_s' must be a number of seconds in [0, 1e7]", path,
                             (long long)ln);
        else r->arrival_s = json_number_value(a);
    }
    if (!rc && st) {
        if (!json_is_array(st)) rc = dsacp_error(DSACP_EFORMAT, "%s: line %lld: 'stop_ids' must be an array of token ids",
                                                 path, (long long)ln);
        int32_t *stops = rc ? NULL : malloc((json_array_size(st) + 1) * sizeof *stops);
        if (!rc && !stops) rc = dsacp_error(DSACP_ENOMEM, "%s: line %lld: out of memory", path, (long long)ln);
        for (size_t j = 0; !rc && j < json_array_size(st); j++)
            rc = token_field(json_array_get(st, j), path, ln, "stop_ids", j, V, &stops[j]);
        if (stops) r->stop_ids = stops, r->n_stop = (int64_t)json_array_size(st);
    }
    json_decref(o);
    return rc;
}

/* JSONL: one object per line: prompt_ids (array of token ids; the client: or prompt, a string),
 * optional max_new_tokens (default `gen`), stop_ids (array of token ids), arrival_s (>= 0). The
 * file is read by length: a NUL byte is an error naming its line, as is anything outside the
 * model's vocabulary or positions. */
int run_load_prompts(workload *w, const char *path, int64_t gen, const dsacp_config *cfg, bool text_ok)
{
    char *text = NULL;
    size_t len = 0;
    int rc = dsacp_read_file(path, &text, &len, (size_t)1 << 30);
    if (rc) return rc;
    size_t lines = 1;
    for (size_t i = 0; i < len; i++) lines += text[i] == '\n';
    w->rq = calloc(lines, sizeof *w->rq);
    if (text_ok) w->text = calloc(lines, sizeof *w->text);
    if (!w->rq || (text_ok && !w->text)) rc = dsacp_error(DSACP_ENOMEM, "%s: out of memory for %zu lines", path, lines);
    size_t pos = 0;
    for (int64_t ln = 1; !rc && pos < len; ln++) {
        const char *line = text + pos;
        const char *nl = memchr(line, '\n', len - pos);
        const size_t n = nl ? (size_t)(nl - line) : len - pos;
        pos += n + 1;
        const char *nul = memchr(line, '\0', n);
        if (nul) {
            rc = dsacp_error(DSACP_EFORMAT, "%s: line %lld: a NUL byte at column %zu", path, (long long)ln,
                             (size_t)(nul - line) + 1);
            break;
        }
        size_t k = 0;
        while (k < n && (line[k] == ' ' || line[k] == '\t' || line[k] == '\r')) k++;
        if (k == n) continue; /* an empty line */
        rc = parse_request(line, n, path, ln, gen, cfg, &w->rq[w->n], w->text ? &w->text[w->n] : NULL);
        w->n++; /* owns whatever was allocated, even on failure */
    }
    if (!rc && w->n == 0) rc = dsacp_error(DSACP_EINVAL, "%s: no requests (every line empty)", path);
    dsacp_free(text);
    return rc;
}
