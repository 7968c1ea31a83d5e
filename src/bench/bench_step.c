/*
 * bench_step.c -- the paged cache and the step of one layer run, shared by the decode layer and
 * prefill cases: `requests` sequences with `length` reserved positions, the step's tokens and
 * its input rows, and the call of the single-process layer (dsacp_dsa_forward) that is timed.
 */
#include "bench/bench.h"
#include "core/core.h"

int bench_layer_step_new(const bench_run *r, void **state, int64_t requests, int64_t length, int64_t tokens,
                         uint64_t seed, const char *what)
{
    const dsacp_config *c = r->cfg;
    const int64_t D = c->hidden_size, bs = r->opt->block_size;
    bench_layer_step *s = dsacp_calloc(1, sizeof *s);
    *state = s;
    if (!s) return DSACP_ENOMEM;
    s->requests = requests, s->tokens = tokens, s->deployed = r->opt->deployed;
    s->seqs = dsacp_calloc((size_t)requests, sizeof *s->seqs);
    s->seqp = dsacp_calloc((size_t)requests, sizeof *s->seqp);
    s->pos = dsacp_calloc((size_t)tokens, sizeof *s->pos);
    s->seq = dsacp_calloc((size_t)tokens, sizeof *s->seq);
    s->x = dsacp_calloc((size_t)(tokens * D), sizeof(float));
    s->out = dsacp_calloc((size_t)(tokens * D), sizeof(float));
    if (!s->seqs || !s->seqp || !s->pos || !s->seq || !s->x || !s->out)
        return what ? dsacp_error(DSACP_ENOMEM, "out of memory for a %lld-token %s", (long long)tokens, what)
                    : dsacp_error(DSACP_ENOMEM, "out of memory");
    int rc = dsacp_rope_init(&s->rope, c);
    if (!rc)
        rc = dsacp_kv_cache_create(c, 1, s->deployed ? DSACP_KV_FP8 : DSACP_KV_F32, s->deployed, bs,
                                   requests * ((length + bs - 1) / bs) + 1, &s->cache);
    for (int64_t q = 0; q < requests && !rc; q++) {
        rc = dsacp_kv_reserve(s->cache, &s->seqs[q], length);
        s->seqp[q] = &s->seqs[q];
    }
    if (!rc) bench_fill(s->x, tokens * D, seed, 1);
    return rc;
}

void bench_layer_step_teardown(void *state)
{
    bench_layer_step *s = state;
    if (!s) return;
    for (int64_t q = 0; q < s->requests && s->cache && s->seqs; q++) dsacp_kv_release(s->cache, &s->seqs[q]);
    dsacp_kv_cache_free(s->cache);
    dsacp_free(s->seqs), dsacp_free(s->seqp), dsacp_free(s->pos), dsacp_free(s->seq);
    dsacp_free(s->x), dsacp_free(s->out);
    dsacp_free(s);
}

void bench_layer_call_init(const bench_run *r, bench_layer_step *s, bench_layer_call *call)
{
    *call = (bench_layer_call){
        .ctx = {.cfg = r->cfg,
                .mode = s->deployed ? DSACP_MODE_DEPLOYED : DSACP_MODE_EXACT,
                .rope = &s->rope,
                .cache = s->cache},
        .w = r->lw,
        .tok = {.T = s->tokens, .pos = s->pos, .seq = s->seq, .seqs = s->seqp},
        .x = s->x,
        .out = s->out,
    };
}

void bench_layer_call_run(void *p)
{
    bench_layer_call *a = p;
    int rc = dsacp_dsa_forward(&a->ctx, a->w, 0, &a->tok, a->x, a->out, NULL);
    if (rc && !a->rc) a->rc = rc;
}
