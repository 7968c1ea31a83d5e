/*
 * serve_spec.h -- speculative decoding's pure parts (docs/speculative.md): the n-gram drafter
 * (vLLM's prompt lookup), the target distribution the sampler draws from, greedy acceptance and
 * rejection sampling. No engine, no communicator: each is a function of its arguments, so the
 * loop (serve.c) and the tests (tests/test_spec_sample.c) call the same code. Internal.
 */
#ifndef DSACP_SERVE_SPEC_H
#define DSACP_SERVE_SPEC_H

#include "dsacp_serve.h"
#include "dsacp_util.h"

/* vLLM's prompt lookup: the longest n in [min_n, max_n] such that the last n tokens of tok[0..n_tok)
 * occur earlier (an occurrence ending before the last token; it may overlap the suffix), the
 * EARLIEST such occurrence (vLLM's choice), and up to k tokens that followed it (fewer when the
 * context ends first). Writes them to out[0..k) and returns their number (0: no match). */
int64_t dsacp_spec_ngram_propose(const int32_t *tok, int64_t n_tok, int64_t min_n, int64_t max_n, int64_t k,
                                 int32_t *out);

/* The first largest logit (the greedy token, as the loop samples it). */
int32_t dsacp_spec_argmax(const float *logits, int64_t V);

/* The sampler's distribution for one row: softmax(logits / temperature) restricted to the
 * smallest set of most probable tokens reaching top_p (ties by the lower id), renormalised; p:
 * [V] (0 outside the set). temperature <= 0: one-hot at the argmax. work: [V] scratch. */
typedef struct dsacp_spec_prob {
    double p;
    int64_t id;
} dsacp_spec_prob;
void dsacp_spec_target_probs(const float *logits, int64_t V, double temperature, double top_p, dsacp_spec_prob *work,
                             double *p);

/* A draw from p[V] (summing to ~1) with the uniform u in [0, 1): inverse CDF over ids ascending;
 * the last id with p > 0 when rounding leaves u above the sum. */
int32_t dsacp_spec_draw(const double *p, int64_t V, double u);

/* Greedy acceptance of drafts d[0..k) against the k + 1 rows of logits [k + 1][V] (row j = the
 * target's logits after the row that fed d_j, row 0 after the last sampled token): a = the
 * number of leading j with argmax(row j) == d[j]; out[0..a) = d[0..a), out[a] = argmax(row a).
 * Returns a (the run emitted is a + 1 tokens). */
int64_t dsacp_spec_accept_greedy(const float *logits, int64_t V, const int32_t *d, int64_t k, int32_t *out);

/* Rejection sampling (Leviathan et al., Chen et al.): p: [k + 1][V] the target's distributions,
 * q: [k][V] the drafter's (NULL: one-hot at each draft, a deterministic drafter such as the
 * n-gram one or a greedy MTP). Draft j is accepted with probability min(1, p_j(d_j) / q_j(d_j));
 * at the first rejection out[j] is drawn from norm(max(0, p_j - q_j)) and the run ends; when all
 * are accepted the bonus out[k] is drawn from p_k. u(j) draws come from `rng_for`: the draws of
 * output token j (its acceptance test and its residual or bonus draw) use generator rng_for(arg,
 * j), so a run is reproducible from (seed, request, token index) alone. resid: [V] scratch.
 * Returns a, the accepted drafts; the run emitted is out[0..a]. */
typedef void (*dsacp_spec_rng_fn)(void *arg, int64_t j, dsacp_rng *rng);
int64_t dsacp_spec_accept_sample(const double *p, const double *q, int64_t V, const int32_t *d, int64_t k,
                                 dsacp_spec_rng_fn rng_for, void *arg, double *resid, int32_t *out);

/* The generator of output token `index` of request `req` under `seed` (the loop's sampler uses
 * the same seeding, so a token does not depend on the batch it was computed in). */
void dsacp_spec_rng(dsacp_rng *rng, uint64_t seed, int64_t req, int64_t index);

/* The spec part of dsacp_serve_check: the fields' ranges (k in [1, DSACP_SPEC_MAX_TOKENS], ngram's
 * 1 <= min <= max), method mtp only on an engine with its MTP layer (with a disaggregated link:
 * both groups' engines, which the link checks). */
int dsacp_spec_check(const dsacp_engine *e, const dsacp_serve_options *opt);

#endif
