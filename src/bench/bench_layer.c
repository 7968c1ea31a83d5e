/*
 * bench_layer.c -- the "layer" case: one decode step of `batch` requests through layer 0 on one
 * process (src/attn's single-process layer), on a cache already holding context - 1 positions of
 * every request, so a 128K context costs no prefill; per token, per step, tokens per second, and
 * the speedup over one thread, in the numerics asked for (decode_layer_*, as before). Beside
 * them, both numerics side by side on the same weights and context: deployed (an fp8 cache; the
 * bf16-dot chain where the linears and sparse MLA run it for these weights) and exact (an f32
 * cache, f32 arithmetic), each on `threads` threads and on one, all four timed interleaved
 * (one call of each in every repetition, each keeping its minimum: a shared VM's speed drifts
 * between seconds) -- decode_layer_{deployed,exact}_{time,time_1t,speedup_<N>t} and
 * decode_layer_deployed_vs_exact (the exact time over the deployed one: > 1, deployed faster).
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

/* The two steps: m[0] in the numerics asked for, m[1] in the other one (same weights, seeds,
 * context). */
typedef struct layer_state {
    void *m[2];
} layer_state;

static int step_make(const bench_run *r, void **state)
{
    const int64_t B = r->opt->batch, L = r->opt->context;
    int rc = bench_layer_step_new(r, state, B, L, B, 41, NULL);
    bench_layer_step *s = *state;
    for (int64_t q = 0; q < B && !rc; q++) s->pos[q] = L - 1, s->seq[q] = (int32_t)q;
    return rc ? rc : fill_context(r, s, L);
}

static int setup(bench_run *r, void **state)
{
    layer_state *ls = dsacp_calloc(1, sizeof *ls);
    *state = ls;
    if (!ls) return dsacp_error(DSACP_ENOMEM, "out of memory");
    int rc = step_make(r, &ls->m[0]);
    dsacp_bench_options other = *r->opt;
    other.deployed = !other.deployed;
    bench_run ro = *r;
    ro.opt = &other;
    return rc ? rc : step_make(&ro, &ls->m[1]);
}

static void teardown(void *state)
{
    layer_state *ls = state;
    if (!ls) return;
    bench_layer_step_teardown(ls->m[0]);
    bench_layer_step_teardown(ls->m[1]);
    dsacp_free(ls);
}

/* The minimum time of one call in each configuration c = 2 * step + (one thread ? 1 : 0),
 * interleaved over the repetitions after a warm-up call of each. */
static int time_interleaved(const bench_run *r, bench_layer_call call[2], double best[4])
{
    const int threads = (int)r->opt->threads, nc = threads > 1 ? 4 : 2;
    for (int c = 0; c < 4; c++) best[c] = 1e30;
    for (int64_t rep = -1; rep < r->opt->reps; rep++)
        for (int c = 0; c < nc; c++) {
            if (nc == 4) omp_set_num_threads(c & 1 ? 1 : threads);
            bench_layer_call *a = &call[nc == 4 ? c >> 1 : c];
            const double t0 = dsacp_now();
            bench_layer_call_run(a);
            const double t = dsacp_now() - t0;
            if (rep >= 0 && t < best[c]) best[c] = t;
        }
    omp_set_num_threads(threads);
    if (nc == 2) best[2] = best[1], best[1] = best[3] = 1e30;
    return call[0].rc ? call[0].rc : call[1].rc;
}

/* One numerics' side-by-side rows: its time per token on `threads` and on one thread, the speedup. */
static void report_mode(bench_run *r, const char *mode, int64_t B, const double t[2])
{
    char name[64];
    snprintf(name, sizeof name, "decode_layer_%s_time", mode);
    bench_result(r, name, t[0] * 1e3 / (double)B, "ms", NULL, 0, 0);
    const int64_t threads = r->opt->threads;
    if (threads < 2) return;
    snprintf(name, sizeof name, "decode_layer_%s_time_1t", mode);
    bench_result(r, name, t[1] * 1e3 / (double)B, "ms", NULL, 0, 0);
    snprintf(name, sizeof name, "decode_layer_%s_speedup_%lldt", mode, (long long)threads);
    bench_result(r, name, t[1] / t[0], "x", "threads", (double)threads, t[1] / t[0] / (double)threads);
}

static int run(bench_run *r, void *state)
{
    layer_state *ls = state;
    const int64_t B = r->opt->batch, threads = r->opt->threads;
    bench_layer_call call[2];
    for (int k = 0; k < 2; k++) bench_layer_call_init(r, ls->m[k], &call[k]);
    double best[4];
    const int rc = time_interleaved(r, call, best);
    if (rc) return rc;
    const double tn = best[0], t1 = best[1];
    bench_result(r, "decode_layer_time", tn * 1e3 / (double)B, "ms", NULL, 0, 0);
    bench_result(r, "decode_layer_step_time", tn * 1e3, "ms", NULL, 0, 0);
    bench_result(r, "decode_layer_tokens_per_s", (double)B / tn, "tok/s", NULL, 0, 0);
    if (threads > 1) {
        char name[64];
        snprintf(name, sizeof name, "decode_layer_speedup_%lldt", (long long)threads);
        bench_result(r, "decode_layer_time_1t", t1 * 1e3 / (double)B, "ms", NULL, 0, 0);
        bench_result(r, name, t1 / tn, "x", "threads", (double)threads, t1 / tn / (double)threads);
    }
    const int dep = r->opt->deployed ? 0 : 1; /* which step is the deployed one */
    report_mode(r, "deployed", B, best + 2 * dep);
    report_mode(r, "exact", B, best + 2 * (1 - dep));
    bench_result(r, "decode_layer_deployed_vs_exact", best[2 * (1 - dep)] / best[2 * dep], "x", NULL, 0, 0);
    return DSACP_OK;
}

const bench_case bench_case_layer = {
    .name = "layer",
    .options = 1u << DSACP_BENCH_OPT_PRESET | 1u << DSACP_BENCH_OPT_CONTEXT | 1u << DSACP_BENCH_OPT_BATCH |
               1u << DSACP_BENCH_OPT_NUMERICS | 1u << DSACP_BENCH_OPT_ISA | 1u << DSACP_BENCH_OPT_BLOCK_SIZE,
    .layer_weights = true,
    .setup = setup,
    .run = run,
    .teardown = teardown,
};
