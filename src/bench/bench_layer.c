/*
 * bench_layer.c -- the "layer" case: one decode step of `batch` requests through layer 0 on one
 * process (src/attn's single-process layer), on a cache already holding context - 1 positions of
 * every request, so a 128K context costs no prefill; per token, per step, tokens per second, and
 * the speedup over one thread.
 */
#include "bench/bench.h"
#include "core/core.h"

#include <omp.h>
#include <stdio.h>

/* Positions 0 .. L-2 of every sequence hold random latent rows and indexer keys of unit variance
 * (one dsacp_rng stream per row); the step decodes position L-1, so it scores L keys. */
static int fill_context(const bench_run *r, bench_layer_step *s, int64_t L)
{
    const dsacp_config *c = r->cfg;
    const int64_t dc = c->kv_lora_rank, dr = c->qk_rope_head_dim, di = c->index_head_dim, row_len = dc + dr + di;
    const int64_t B = s->requests;
    float *rows = dsacp_calloc((size_t)omp_get_max_threads() * (size_t)row_len, sizeof(float));
    if (!rows) return dsacp_error(DSACP_ENOMEM, "out of memory for the cache rows");
#pragma omp parallel
    {
        float *row = rows + (size_t)omp_get_thread_num() * (size_t)row_len;
#pragma omp for schedule(static)
        for (int64_t i = 0; i < B * (L - 1); i++) {
            const int64_t q = i / (L - 1), p = i % (L - 1);
            dsacp_rng rng;
            dsacp_rng_seed(&rng, (uint64_t)i * 0x9e3779b97f4a7c15ull + 77);
            bench_fill_rng(row, row_len, &rng, 1);
            const int64_t slot = dsacp_kv_slot(s->cache, &s->seqs[q], p);
            dsacp_kv_write_mla(s->cache, 0, slot, row, row + dc);
            dsacp_kv_write_index(s->cache, 0, slot, row + dc + dr);
        }
    }
    dsacp_free(rows);
    for (int64_t q = 0; q < B; q++) s->seqs[q].length = L - 1;
    return DSACP_OK;
}

static int setup(bench_run *r, void **state)
{
    const int64_t B = r->opt->batch, L = r->opt->context;
    int rc = bench_layer_step_new(r, state, B, L, B, 41, NULL);
    bench_layer_step *s = *state;
    for (int64_t q = 0; q < B && !rc; q++) s->pos[q] = L - 1, s->seq[q] = (int32_t)q;
    return rc ? rc : fill_context(r, s, L);
}

static int run(bench_run *r, void *state)
{
    bench_layer_step *s = state;
    const int64_t B = r->opt->batch, threads = r->opt->threads;
    bench_layer_call a;
    bench_layer_call_init(r, s, &a);
    const double tn = bench_time(bench_layer_call_run, NULL, &a, r->opt->reps, 0.0);
    if (a.rc) return a.rc;
    bench_result(r, "decode_layer_time", tn * 1e3 / (double)B, "ms", NULL, 0, 0);
    bench_result(r, "decode_layer_step_time", tn * 1e3, "ms", NULL, 0, 0);
    bench_result(r, "decode_layer_tokens_per_s", (double)B / tn, "tok/s", NULL, 0, 0);
    if (threads > 1) {
        omp_set_num_threads(1);
        const double t1 = bench_time(bench_layer_call_run, NULL, &a, r->opt->reps, 0.0);
        omp_set_num_threads((int)threads);
        if (a.rc) return a.rc;
        char name[64];
        snprintf(name, sizeof name, "decode_layer_speedup_%lldt", (long long)threads);
        bench_result(r, "decode_layer_time_1t", t1 * 1e3 / (double)B, "ms", NULL, 0, 0);
        bench_result(r, name, t1 / tn, "x", "threads", (double)threads, t1 / tn / (double)threads);
    }
    return DSACP_OK;
}

const bench_case bench_case_layer = {
    .name = "layer",
    .options = 1u << DSACP_BENCH_OPT_PRESET | 1u << DSACP_BENCH_OPT_CONTEXT | 1u << DSACP_BENCH_OPT_BATCH |
               1u << DSACP_BENCH_OPT_NUMERICS | 1u << DSACP_BENCH_OPT_ISA | 1u << DSACP_BENCH_OPT_BLOCK_SIZE,
    .layer_weights = true,
    .setup = setup,
    .run = run,
    .teardown = bench_layer_step_teardown,
};
