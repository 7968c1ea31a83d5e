/*
 * serve_spec.c -- speculative decoding's pure parts (serve_spec.h; docs/speculative.md): vLLM's
 * --speculative-config, the n-gram drafter (prompt lookup), the sampler's target distribution,
 * greedy acceptance and rejection sampling.
 */
#include "serve/serve_spec.h"
#include "engine/engine.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- --speculative-config ---- */

/* An integer field (absent: *out untouched, *seen false). */
static int spec_int(json_t *root, const char *key, const char *what, int64_t *out, bool *seen)
{
    json_t *v = json_object_get(root, key);
    *seen = v && !json_is_null(v);
    if (!*seen) return DSACP_OK;
    if (!json_is_integer(v)) return dsacp_error(DSACP_EINVAL, "%s: %s must be an integer", what, key);
    *out = (int64_t)json_integer_value(v);
    return DSACP_OK;
}

static int spec_method(json_t *root, const char *what, dsacp_spec_method *m)
{
    json_t *v = json_object_get(root, "method");
    if (!v || !json_is_string(v))
        return dsacp_error(DSACP_EINVAL, "%s: method is required, a string: \"ngram\", \"mtp\" or \"deepseek_mtp\"", what);
    const char *s = json_string_value(v);
    if (!strcmp(s, "ngram")) *m = DSACP_SPEC_NGRAM;
    else if (!strcmp(s, "mtp") || !strcmp(s, "deepseek_mtp")) *m = DSACP_SPEC_MTP;
    else return dsacp_error(DSACP_EINVAL, "%s: method \"%s\" is not one of \"ngram\", \"mtp\", \"deepseek_mtp\"", what, s);
    return DSACP_OK;
}

/* The fields' values (after parsing, and again in dsacp_serve_check for a config built by hand). */
static int spec_ranges(const dsacp_spec_config *c, const char *what)
{
    if (c->method == DSACP_SPEC_NONE) return DSACP_OK;
    if (c->method != DSACP_SPEC_NGRAM && c->method != DSACP_SPEC_MTP)
        return dsacp_error(DSACP_EINVAL, "%s: method %d is not a speculative method", what, (int)c->method);
    if (c->num_speculative_tokens < 1 || c->num_speculative_tokens > DSACP_SPEC_MAX_TOKENS)
        return dsacp_error(DSACP_EINVAL, "%s: num_speculative_tokens %lld must be in [1, %d]", what,
                           (long long)c->num_speculative_tokens, DSACP_SPEC_MAX_TOKENS);
    if (c->method == DSACP_SPEC_NGRAM && (c->prompt_lookup_min < 1 || c->prompt_lookup_max < c->prompt_lookup_min))
        return dsacp_error(DSACP_EINVAL, "%s: prompt_lookup_min %lld must be >= 1 and <= prompt_lookup_max %lld", what,
                           (long long)c->prompt_lookup_min, (long long)c->prompt_lookup_max);
    return DSACP_OK;
}

static int spec_fields(json_t *root, const char *what, dsacp_spec_config *c)
{
    static const char *const known[] = {"method", "num_speculative_tokens", "prompt_lookup_min", "prompt_lookup_max"};
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        bool ok = false;
        for (size_t i = 0; i < sizeof known / sizeof *known; i++) ok |= !strcmp(key, known[i]);
        if (!ok)
            return dsacp_error(DSACP_EINVAL, "%s: unknown field \"%s\" (known: method, num_speculative_tokens, "
                               "prompt_lookup_min, prompt_lookup_max)", what, key);
    }
    int rc = spec_method(root, what, &c->method);
    bool k_seen, min_seen, max_seen;
    if (!rc) rc = spec_int(root, "num_speculative_tokens", what, &c->num_speculative_tokens, &k_seen);
    if (!rc) rc = spec_int(root, "prompt_lookup_min", what, &c->prompt_lookup_min, &min_seen);
    if (!rc) rc = spec_int(root, "prompt_lookup_max", what, &c->prompt_lookup_max, &max_seen);
    if (rc) return rc;
    if (c->method == DSACP_SPEC_MTP) {
        if (min_seen || max_seen)
            return dsacp_error(DSACP_EINVAL, "%s: %s is a field of method \"ngram\" only", what,
                               min_seen ? "prompt_lookup_min" : "prompt_lookup_max");
        if (!k_seen) c->num_speculative_tokens = 1; /* vLLM: the model's num_nextn_predict_layers */
        return DSACP_OK;
    }
    if (!k_seen) return dsacp_error(DSACP_EINVAL, "%s: num_speculative_tokens is required for method \"ngram\"", what);
    /* vLLM's defaults: both absent 5 and 5, one absent the other's value. */
    if (!min_seen && !max_seen) c->prompt_lookup_min = c->prompt_lookup_max = 5;
    else if (!min_seen) c->prompt_lookup_min = c->prompt_lookup_max;
    else if (!max_seen) c->prompt_lookup_max = c->prompt_lookup_min;
    return DSACP_OK;
}

int dsacp_spec_config_parse(const char *json, const char *what, dsacp_spec_config *out)
{
    if (!what) what = "speculative config";
    if (!json || !out) return dsacp_error(DSACP_EINVAL, "dsacp_spec_config_parse: NULL argument");
    json_error_t jerr;
    json_t *root = json_loads(json, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return dsacp_error(DSACP_EINVAL, "%s: invalid JSON at column %d: %s", what, jerr.column, jerr.text);
    dsacp_spec_config c = {0};
    int rc = json_is_object(root) ? spec_fields(root, what, &c)
                                  : dsacp_error(DSACP_EINVAL, "%s: must be a JSON object", what);
    if (!rc) rc = spec_ranges(&c, what);
    if (!rc) *out = c;
    json_decref(root);
    return rc;
}

int dsacp_spec_check(const dsacp_engine *e, const dsacp_serve_options *opt)
{
    const dsacp_spec_config *c = &opt->spec;
    if (c->method == DSACP_SPEC_NONE) return DSACP_OK;
    int rc = spec_ranges(c, "serve: spec");
    if (rc) return rc;
    if (c->method == DSACP_SPEC_MTP && !dsacp_engine_options_get(e)->mtp)
        return dsacp_error(DSACP_EINVAL, "serve: spec method mtp needs the model's MTP layer: create the engine "
                           "with opt.mtp");
    return DSACP_OK;
}

/* ---- the n-gram drafter ---- */

int64_t dsacp_spec_ngram_propose(const int32_t *tok, int64_t n_tok, int64_t min_n, int64_t max_n, int64_t k,
                                 int32_t *out)
{
    if (min_n < 1 || k < 1 || n_tok < min_n + 1) return 0;
    if (max_n > n_tok - 1) max_n = n_tok - 1;
    for (int64_t n = max_n; n >= min_n; n--) {
        const int32_t *suffix = tok + n_tok - n;
        /* Occurrences start at j with j + n <= n_tok - 1 (ending before the last token). */
        for (int64_t j = 0; j + n < n_tok; j++) {
            if (memcmp(tok + j, suffix, (size_t)n * sizeof *tok) != 0) continue;
            int64_t m = n_tok - (j + n);
            if (m > k) m = k;
            memcpy(out, tok + j + n, (size_t)m * sizeof *out);
            return m;
        }
    }
    return 0;
}

/* ---- acceptance ---- */

int32_t dsacp_spec_argmax(const float *logits, int64_t V)
{
    int64_t best = 0;
    for (int64_t i = 1; i < V; i++)
        if (logits[i] > logits[best]) best = i;
    return (int32_t)best;
}

void dsacp_spec_rng(dsacp_rng *rng, uint64_t seed, int64_t req, int64_t index)
{
    dsacp_rng_seed(rng, seed * 0x9E3779B97F4A7C15ull ^ ((uint64_t)req << 32) ^ (uint64_t)index);
}

static int pid_desc(const void *a, const void *b)
{
    const dsacp_spec_prob *x = a, *y = b;
    if (x->p != y->p) return x->p < y->p ? 1 : -1;
    return (x->id > y->id) - (x->id < y->id);
}

void dsacp_spec_target_probs(const float *logits, int64_t V, double temperature, double top_p, dsacp_spec_prob *w,
                             double *p)
{
    const int64_t best = dsacp_spec_argmax(logits, V);
    memset(p, 0, (size_t)V * sizeof *p);
    if (temperature <= 0) {
        p[best] = 1;
        return;
    }
    double sum = 0;
    for (int64_t i = 0; i < V; i++) {
        w[i] = (dsacp_spec_prob){exp(((double)logits[i] - (double)logits[best]) / temperature), i};
        sum += w[i].p;
    }
    qsort(w, (size_t)V, sizeof *w, pid_desc);
    double keep = 0;
    int64_t n = 0;
    while (n < V && (n == 0 || keep < top_p * sum)) keep += w[n++].p;
    for (int64_t i = 0; i < n; i++) p[w[i].id] = w[i].p / keep;
}

int32_t dsacp_spec_draw(const double *p, int64_t V, double u)
{
    double acc = 0;
    int64_t last = 0;
    for (int64_t i = 0; i < V; i++) {
        if (p[i] <= 0) continue;
        acc += p[i];
        last = i;
        if (u < acc) return (int32_t)i;
    }
    return (int32_t)last;
}

int64_t dsacp_spec_accept_greedy(const float *logits, int64_t V, const int32_t *d, int64_t k, int32_t *out)
{
    int64_t a = 0;
    while (a < k && dsacp_spec_argmax(logits + a * V, V) == d[a]) out[a] = d[a], a++;
    out[a] = dsacp_spec_argmax(logits + a * V, V);
    return a;
}

int64_t dsacp_spec_accept_sample(const double *p, const double *q, int64_t V, const int32_t *d, int64_t k,
                                 dsacp_spec_rng_fn rng_for, void *arg, double *resid, int32_t *out)
{
    for (int64_t j = 0; j < k; j++) {
        const double *pj = p + j * V;
        const double qd = q ? q[j * V + d[j]] : 1.0;
        dsacp_rng rng;
        rng_for(arg, j, &rng);
        const double u = dsacp_rng_uniform(&rng);
        if (qd > 0 && u * qd < pj[d[j]]) { /* u < p/q, i.e. accepted w.p. min(1, p/q) */
            out[j] = d[j];
            continue;
        }
        double z = 0;
        for (int64_t i = 0; i < V; i++) {
            resid[i] = fmax(0.0, pj[i] - (q ? q[j * V + i] : (i == d[j] ? 1.0 : 0.0)));
            z += resid[i];
        }
        if (z > 0) {
            for (int64_t i = 0; i < V; i++) resid[i] /= z;
            out[j] = dsacp_spec_draw(resid, V, dsacp_rng_uniform(&rng));
        } else { /* p == q: a rejection has probability 0; draw from p */
            out[j] = dsacp_spec_draw(pj, V, dsacp_rng_uniform(&rng));
        }
        return j;
    }
    dsacp_rng rng;
    rng_for(arg, k, &rng);
    (void)dsacp_rng_uniform(&rng); /* the same stream position as an acceptance test */
    out[k] = dsacp_spec_draw(p + k * V, V, dsacp_rng_uniform(&rng));
    return k;
}
