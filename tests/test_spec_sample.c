/*
 * test_spec_sample.c -- speculative decoding's pure parts (src/serve/serve_spec.c): the
 * --speculative-config parser, the n-gram drafter against vLLM's prompt lookup (longest suffix
 * n-gram in [min, max], its earliest occurrence), greedy acceptance, and rejection sampling
 * keeping the target distribution (chi-square on a 5-token vocabulary, fixed seeds).
 */
#include "test.h"
#include "serve/serve_spec.h"

static void test_parse(void)
{
    dsacp_spec_config c;
    CHECK_OK(dsacp_spec_config_parse("{\"method\": \"ngram\", \"num_speculative_tokens\": 3}", "t", &c));
    CHECK(c.method == DSACP_SPEC_NGRAM && c.num_speculative_tokens == 3 && c.prompt_lookup_min == 5 &&
          c.prompt_lookup_max == 5);
    CHECK_OK(dsacp_spec_config_parse("{\"method\":\"ngram\",\"num_speculative_tokens\":2,\"prompt_lookup_max\":4}", "t", &c));
    CHECK(c.prompt_lookup_min == 4 && c.prompt_lookup_max == 4);
    CHECK_OK(dsacp_spec_config_parse("{\"method\":\"ngram\",\"num_speculative_tokens\":2,\"prompt_lookup_min\":2}", "t", &c));
    CHECK(c.prompt_lookup_min == 2 && c.prompt_lookup_max == 2);
    CHECK_OK(dsacp_spec_config_parse("{\"method\":\"ngram\",\"num_speculative_tokens\":1,\"prompt_lookup_min\":1,"
                                     "\"prompt_lookup_max\":3}", "t", &c));
    CHECK(c.prompt_lookup_min == 1 && c.prompt_lookup_max == 3);
    CHECK_OK(dsacp_spec_config_parse("{\"method\": \"deepseek_mtp\", \"num_speculative_tokens\": 2}", "t", &c));
    CHECK(c.method == DSACP_SPEC_MTP && c.num_speculative_tokens == 2);
    CHECK_OK(dsacp_spec_config_parse("{\"method\": \"mtp\"}", "t", &c));
    CHECK(c.method == DSACP_SPEC_MTP && c.num_speculative_tokens == 1);
    static const struct {
        const char *json, *field;
    } bad[] = {
        {"{\"method\":\"ngram\",\"num_speculative_tokens\":2,\"draft_model\":1}", "draft_model"},
        {"{\"method\":\"eagle\",\"num_speculative_tokens\":2}", "method"},
        {"{\"num_speculative_tokens\":2}", "method"},
        {"{\"method\":\"ngram\"}", "num_speculative_tokens"},
        {"{\"method\":\"ngram\",\"num_speculative_tokens\":0}", "num_speculative_tokens"},
        {"{\"method\":\"ngram\",\"num_speculative_tokens\":17}", "num_speculative_tokens"},
        {"{\"method\":\"ngram\",\"num_speculative_tokens\":\"2\"}", "num_speculative_tokens"},
        {"{\"method\":\"ngram\",\"num_speculative_tokens\":2,\"prompt_lookup_min\":4,\"prompt_lookup_max\":3}",
         "prompt_lookup_min"},
        {"{\"method\":\"ngram\",\"num_speculative_tokens\":2,\"prompt_lookup_min\":0}", "prompt_lookup_min"},
        {"{\"method\":\"mtp\",\"prompt_lookup_min\":2}", "prompt_lookup_min"},
        {"[1]", "object"},
        {"{\"method\":", "JSON"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        int rc = dsacp_spec_config_parse(bad[i].json, "--speculative-config", &c);
        CHECKF(rc == DSACP_EINVAL && strstr(dsacp_last_error(), bad[i].field) &&
                   strstr(dsacp_last_error(), "--speculative-config"),
               "%s: %s", bad[i].json, dsacp_last_error());
    }
}

/* vLLM's prompt lookup, by its own examples and the choice of the earliest occurrence. */
static void test_ngram(void)
{
    int32_t out[8];
    const int32_t a[] = {1, 2, 3, 4, 2, 3};
    /* min 2, max 3, k 4: [4,2,3] has no earlier match, [2,3] matches at 1: propose [4,2,3]. */
    CHECK(dsacp_spec_ngram_propose(a, 6, 2, 3, 4, out) == 3 && out[0] == 4 && out[1] == 2 && out[2] == 3);
    CHECK(dsacp_spec_ngram_propose(a, 6, 3, 3, 4, out) == 0);
    CHECK(dsacp_spec_ngram_propose(a, 6, 2, 2, 1, out) == 1 && out[0] == 4);
    /* [1,2,3,4,1,2,3,5,1,2,3]: the longest suffix in [2,3] is [1,2,3], at 0 and 4: the earliest (0) -> 4. */
    const int32_t b[] = {1, 2, 3, 4, 1, 2, 3, 5, 1, 2, 3};
    CHECK(dsacp_spec_ngram_propose(b, 11, 2, 3, 2, out) == 2 && out[0] == 4 && out[1] == 1);
    /* Longest first: max 4 tries [5,1,2,3] (no earlier occurrence), then [1,2,3] at 0. */
    CHECK(dsacp_spec_ngram_propose(b, 11, 1, 4, 3, out) == 3 && out[0] == 4 && out[1] == 1 && out[2] == 2);
    /* An occurrence overlapping the suffix (a run of one token): [7,7,7,7], n = 2 matches at 0. */
    const int32_t c[] = {7, 7, 7, 7};
    CHECK(dsacp_spec_ngram_propose(c, 4, 2, 2, 5, out) == 2 && out[0] == 7 && out[1] == 7);
    /* Context no longer than min: nothing. */
    CHECK(dsacp_spec_ngram_propose(c, 2, 2, 2, 3, out) == 0);
    CHECK(dsacp_spec_ngram_propose(c, 3, 2, 2, 3, out) == 1);
    const int32_t d[] = {1, 2, 3, 4, 5};
    CHECK(dsacp_spec_ngram_propose(d, 5, 1, 5, 3, out) == 0);
}

static void test_greedy(void)
{
    const int64_t V = 4;
    /* rows: argmax 2, 1, 3, 0 */
    const float lg[] = {0, 1, 5, 2, 0, 9, 1, 1, 0, 0, 0, 3, 4, 1, 1, 1};
    int32_t out[4];
    const int32_t all[3] = {2, 1, 3}, mid[3] = {2, 0, 3}, none[3] = {1, 1, 3};
    CHECK(dsacp_spec_accept_greedy(lg, V, all, 3, out) == 3 && out[0] == 2 && out[1] == 1 && out[2] == 3 && out[3] == 0);
    CHECK(dsacp_spec_accept_greedy(lg, V, mid, 3, out) == 1 && out[0] == 2 && out[1] == 1);
    CHECK(dsacp_spec_accept_greedy(lg, V, none, 3, out) == 0 && out[0] == 2);
    /* Ties: the first largest, as the loop's sampler. */
    const float tie[] = {3, 3, 1, 0};
    CHECK(dsacp_spec_argmax(tie, V) == 0);
}

typedef struct rng_arg {
    uint64_t seed;
    int64_t req;
} rng_arg;

static void rng_for(void *arg, int64_t j, dsacp_rng *rng)
{
    const rng_arg *a = arg;
    dsacp_spec_rng(rng, a->seed, a->req, j);
}

/* Pearson's statistic of counts against probabilities (cells with p > 0). */
static double chi2(const int64_t *cnt, const double *p, int64_t V, int64_t n)
{
    double x = 0;
    for (int64_t i = 0; i < V; i++)
        if (p[i] > 0) x += ((double)cnt[i] - n * p[i]) * ((double)cnt[i] - n * p[i]) / (n * p[i]);
    return x;
}

/* Token 1 and token 2 of a run of k = 2 drafts: each must follow the target's distribution
 * (token 2 given token 1 = d_1, when accepted), whatever the drafter: drafts drawn from a spread
 * q, and fixed drafts with a one-hot q (the n-gram drafter, a greedy MTP) that the target finds
 * unlikely or likely. */
static void test_rejection(void)
{
    enum { V = 5, N = 40000 };
    const float lg[3][V] = {{1.0f, 0.2f, -0.5f, 2.0f, 0.0f}, {0.3f, 1.5f, 0.1f, -1.0f, 0.8f}, {0, 0, 1, 2, 3}};
    dsacp_spec_prob work[V];
    double p[3 * V], resid[V];
    for (int r = 0; r < 3; r++) dsacp_spec_target_probs(lg[r], V, 0.8, 1.0, work, p + r * V);
    double qs[2 * V] = {0.1, 0.1, 0.6, 0.1, 0.1, 0.05, 0.05, 0.1, 0.1, 0.7};
    const int32_t drafts[2][2] = {{2, 4}, {3, 1}}; /* unlikely under p, then likely */
    for (int use_q = 0; use_q < 2; use_q++)
        for (int dv = 0; dv < 2; dv++) {
            int64_t c1[V] = {0}, c2[V] = {0}, n2 = 0, acc = 0;
            for (int64_t t = 0; t < N; t++) {
                rng_arg ra = {12345u + (uint64_t)use_q, t * 2 + dv};
                int32_t out[3], dr[2] = {drafts[dv][0], drafts[dv][1]};
                if (use_q) { /* drafts drawn from q, on their own generator */
                    dsacp_rng g;
                    dsacp_spec_rng(&g, 99, t, dv);
                    dr[0] = dsacp_spec_draw(qs, V, dsacp_rng_uniform(&g));
                    dr[1] = dsacp_spec_draw(qs + V, V, dsacp_rng_uniform(&g));
                }
                const int64_t a = dsacp_spec_accept_sample(p, use_q ? qs : NULL, V, dr, 2, rng_for, &ra, resid, out);
                acc += a;
                c1[out[0]]++;
                if (a >= 1) c2[out[1]]++, n2++; /* token 2, given that d_1 was accepted */
            }
            /* 4 degrees of freedom: P(chi2 > 23.5) ~ 1e-4. */
            const double x1 = chi2(c1, p, V, N), x2 = chi2(c2, p + V, V, n2);
            CHECKF(x1 < 23.5, "q %d drafts %d: first token chi2 %.2f", use_q, dv, x1);
            CHECKF(n2 > 1000 && x2 < 23.5, "q %d drafts %d: second token chi2 %.2f over %lld", use_q, dv, x2, (long long)n2);
            CHECK(acc > 0);
        }
    /* Reproducible: the same seeds give the same run. */
    rng_arg ra = {7, 3};
    int32_t o1[3], o2[3];
    const int64_t a1 = dsacp_spec_accept_sample(p, qs, V, drafts[1], 2, rng_for, &ra, resid, o1);
    const int64_t a2 = dsacp_spec_accept_sample(p, qs, V, drafts[1], 2, rng_for, &ra, resid, o2);
    CHECK(a1 == a2 && !memcmp(o1, o2, (size_t)(a1 + 1) * sizeof *o1));
    /* Temperature 0 (one-hot p) and one-hot q: exactly greedy acceptance. */
    double g[3 * V];
    for (int r = 0; r < 3; r++) dsacp_spec_target_probs(lg[r], V, 0, 1.0, work, g + r * V);
    const int32_t dg[2] = {3, 1};
    CHECK(dsacp_spec_accept_sample(g, NULL, V, dg, 2, rng_for, &ra, resid, o1) == 2 && o1[2] == 4);
    /* top_p keeps the smallest set reaching it: with 0.3 only the most probable token. */
    dsacp_spec_target_probs(lg[0], V, 1.0, 0.3, work, p);
    CHECK(p[3] == 1.0 && p[0] == 0);
}

int main(void)
{
    test_parse();
    test_ngram();
    test_greedy();
    test_rejection();
    return test_finish("test_spec_sample");
}
