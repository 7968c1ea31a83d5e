/*
 * bench_ceilings.c -- the machine's own ceilings, measured in the same run as the kernels set
 * beside them: the peak FMA rate (and AVX512-BF16 dot products: the instruction's rate, and the
 * bf16-dot chain's ceiling where the chain may use it), stream copy and read bandwidth,
 * and the reference dense product (the caller's sgemm) on the indexer's and sparse MLA's shapes.
 * The "ceilings" case is these alone.
 */
#include "bench/bench.h"
#include "core/core.h"
#include "kernels/bf16dot.h"

#include <omp.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define BENCH_X86 1
#endif

#ifdef BENCH_X86
#define FMA_ACC 16
__attribute__((target("avx512f"))) static float fma_loop_avx512(int64_t iters)
{
    __m512 a[FMA_ACC];
    const __m512 m = _mm512_set1_ps(0.9999999f), c = _mm512_set1_ps(1e-7f);
    for (int j = 0; j < FMA_ACC; j++) a[j] = _mm512_set1_ps(1.0f + (float)j * 1e-3f);
    for (int64_t i = 0; i < iters; i++) {
#pragma GCC unroll 16
        for (int j = 0; j < FMA_ACC; j++) a[j] = _mm512_fmadd_ps(a[j], m, c);
    }
    __m512 s = a[0];
    for (int j = 1; j < FMA_ACC; j++) s = _mm512_add_ps(s, a[j]);
    return _mm512_reduce_add_ps(s);
}
/* AVX2 has 16 ymm registers: 16 chains plus the two constants would spill to the stack and
 * measure the loads (it reported half the FMA rate on a Zen 3); 12 chains cover the latency
 * (4 cycles x 2 pipes = 8) and stay in registers. */
#define FMA_ACC2 12
__attribute__((target("avx2,fma"))) static float fma_loop_avx2(int64_t iters)
{
    __m256 a[FMA_ACC2];
    const __m256 m = _mm256_set1_ps(0.9999999f), c = _mm256_set1_ps(1e-7f);
    for (int j = 0; j < FMA_ACC2; j++) a[j] = _mm256_set1_ps(1.0f + (float)j * 1e-3f);
    for (int64_t i = 0; i < iters; i++) {
#pragma GCC unroll 12
        for (int j = 0; j < FMA_ACC2; j++) a[j] = _mm256_fmadd_ps(a[j], m, c);
    }
    __m256 s = a[0];
    for (int j = 1; j < FMA_ACC2; j++) s = _mm256_add_ps(s, a[j]);
    float v[8];
    _mm256_storeu_ps(v, s);
    return v[0] + v[1] + v[2] + v[3] + v[4] + v[5] + v[6] + v[7];
}
/* AVX512-BF16 dot products (vdpbf16ps: 32 bf16 pairs, 64 flop per instruction). */
__attribute__((target("avx512f,avx512bf16"))) static float bf16dp_loop(int64_t iters)
{
    __m512 a[FMA_ACC];
    const __m512bh x = (__m512bh)_mm512_set1_epi16(0x3f80), y = (__m512bh)_mm512_set1_epi16(0x3380);
    for (int j = 0; j < FMA_ACC; j++) a[j] = _mm512_set1_ps((float)j);
    for (int64_t i = 0; i < iters; i++) {
#pragma GCC unroll 16
        for (int j = 0; j < FMA_ACC; j++) a[j] = _mm512_dpbf16_ps(a[j], x, y);
    }
    __m512 s = a[0];
    for (int j = 1; j < FMA_ACC; j++) s = _mm512_add_ps(s, a[j]);
    return _mm512_reduce_add_ps(s);
}
#else
#define FMA_ACC 16
#define FMA_ACC2 12
#endif

typedef struct fma_arg {
    int64_t iters;
    int lanes; /* floats per vector of the loop used */
    volatile float sink;
} fma_arg;

static void fma_run(void *p)
{
    fma_arg *a = p;
    float s = 0;
#pragma omp parallel reduction(+ : s)
    {
#ifdef BENCH_X86
        if (a->lanes == 32) s += bf16dp_loop(a->iters);
        else if (a->lanes == 16) s += fma_loop_avx512(a->iters);
        else if (a->lanes == 8) s += fma_loop_avx2(a->iters);
#endif
    }
    a->sink = s;
}

/* The best of at least 5 timings of >= 50 ms each, whatever reps says. A ceiling has to be an
 * upper bound: on a shared VM one timing with a vCPU descheduled read 83-96 GFLOP/s where the
 * machine gives ~200, and a roofline ratio taken against it read 1.3-1.5x "of peak" (seen
 * 2026-12-02). */
double bench_peak_fma(const bench_run *r, int *lanes)
{
    fma_arg a = {.iters = 2000000, .lanes = 0};
#ifdef BENCH_X86
    if (__builtin_cpu_supports("avx512f")) a.lanes = 16;
    else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) a.lanes = 8;
#endif
    *lanes = a.lanes;
    if (!a.lanes) return 0;
    const int64_t reps = r->opt->reps < 5 ? 5 : r->opt->reps;
    double t = bench_time(fma_run, NULL, &a, reps, 0.05);
    return (double)r->opt->threads * (double)a.iters * (a.lanes == 8 ? FMA_ACC2 : FMA_ACC) * a.lanes * 2 / t * 1e-9;
}

const char *bench_bf16dot_na(void)
{
    if (!dsacp_cpu_has_avx512bf16()) return "n/a: no AVX512-BF16 on this CPU";
    switch (dsacp_bf16dot_hw_level()) {
    case DSACP_BF16DOT_HW_ALL: return NULL;
    case DSACP_BF16DOT_HW_PLAIN: return "n/a: VDPBF16PS is the bf16-dot model on plain inputs only";
    default: return "n/a: VDPBF16PS is not the bf16-dot model on this CPU";
    }
}

/* The FMA peak; VDPBF16PS's where the CPU has it; the bf16-dot chain's ceiling: VDPBF16PS's
 * rate where the start-up check finds it is the model, else n/a with the reason. */
static void measure_fma(bench_run *r)
{
    int lanes;
    r->peak_fma = bench_peak_fma(r, &lanes);
    r->peak_fma_name = lanes == 16 ? "peak_fma_avx512" : "peak_fma_avx2";
    if (r->peak_fma > 0) bench_result(r, r->peak_fma_name, r->peak_fma, "GFLOP/s", NULL, 0, 0);
#ifdef BENCH_X86
    if (__builtin_cpu_supports("avx512bf16")) {
        fma_arg a = {.iters = 2000000, .lanes = 32};
        double t = bench_time(fma_run, NULL, &a, r->opt->reps < 5 ? 5 : r->opt->reps, 0.05);
        double g = (double)r->opt->threads * (double)a.iters * FMA_ACC * 32 * 2 / t * 1e-9;
        bench_rate(r, "peak_bf16dp_avx512", g, "GFLOP/s", "peak_fma_avx512", r->peak_fma);
        if (!bench_bf16dot_na()) r->peak_bf16dot = g;
    }
#endif
    const char *na = bench_bf16dot_na();
    if (na || r->peak_bf16dot <= 0) bench_na(r, "peak_bf16dot", na ? na : "n/a: VDPBF16PS not measured");
    else bench_rate(r, "peak_bf16dot", r->peak_bf16dot, "GFLOP/s", "peak_fma_avx512", r->peak_fma);
}

/* ---- stream ---- */

typedef struct copy_arg {
    float *a, *b;
    int64_t n;
    volatile float sink;
} copy_arg;

static void copy_run(void *p)
{
    copy_arg *c = p;
#pragma omp parallel
    {
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        int64_t lo = c->n * t / nt, hi = c->n * (t + 1) / nt;
        memcpy(c->b + lo, c->a + lo, (size_t)(hi - lo) * sizeof *c->b);
    }
}

#ifdef BENCH_X86
__attribute__((target("avx512f"))) static float read_sum_avx512(const float *a, int64_t n)
{
    __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        s0 = _mm512_add_ps(s0, _mm512_loadu_ps(a + i));
        s1 = _mm512_add_ps(s1, _mm512_loadu_ps(a + i + 16));
        s2 = _mm512_add_ps(s2, _mm512_loadu_ps(a + i + 32));
        s3 = _mm512_add_ps(s3, _mm512_loadu_ps(a + i + 48));
    }
    float r = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
    for (; i < n; i++) r += a[i];
    return r;
}
#endif

static void read_run(void *p)
{
    copy_arg *c = p;
    float s = 0;
#pragma omp parallel reduction(+ : s)
    {
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        int64_t lo = c->n * t / nt, hi = c->n * (t + 1) / nt;
#ifdef BENCH_X86
        if (__builtin_cpu_supports("avx512f")) s += read_sum_avx512(c->a + lo, hi - lo);
        else
#endif
            for (int64_t i = lo; i < hi; i++) s += c->a[i];
    }
    c->sink = s;
}

static int measure_stream(bench_run *r)
{
    copy_arg a = {.n = 32 << 20}; /* 128 MiB per array: 4x the largest L3 in sight */
    const size_t bytes = (size_t)a.n * sizeof *a.a;
    a.a = dsacp_alloc(bytes);
    a.b = dsacp_alloc(bytes);
    if (!a.a || !a.b) {
        dsacp_free(a.a);
        dsacp_free(a.b);
        return dsacp_error(DSACP_ENOMEM, "out of memory for the stream arrays");
    }
    /* first touch by the threads that will use each half */
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < a.n; i++) a.a[i] = (float)(i & 1023), a.b[i] = 0;
    double t = bench_time(copy_run, NULL, &a, r->opt->reps, 0.0);
    r->stream_copy = 2.0 * (double)bytes / t * 1e-9;
    bench_result(r, "stream_copy", r->stream_copy, "GB/s", NULL, 0, 0);
    t = bench_time(read_run, NULL, &a, r->opt->reps, 0.0);
    r->stream_read = (double)bytes / t * 1e-9;
    bench_result(r, "stream_read", r->stream_read, "GB/s", NULL, 0, 0);
    dsacp_free(a.a);
    dsacp_free(a.b);
    return DSACP_OK;
}

/* ---- the reference product ---- */

typedef struct gemm_arg {
    dsacp_bench_gemm_fn gemm;
    int64_t M, N, K, lda, ldb, ldc;
    const float *A, *B;
    float *C;
    bool transb;
    /* optional second product (sparse MLA: S = Q K^T, then O = P V) */
    int64_t M2, N2, K2, lda2, ldb2, ldc2;
    const float *A2, *B2;
    float *C2;
} gemm_arg;

static void gemm_run(void *p)
{
    gemm_arg *g = p;
    g->gemm(g->M, g->N, g->K, g->A, g->lda, g->B, g->ldb, g->transb, g->C, g->ldc);
    if (g->A2) g->gemm(g->M2, g->N2, g->K2, g->A2, g->lda2, g->B2, g->ldb2, false, g->C2, g->ldc2);
}

static double gemm_gflops(const bench_run *r, gemm_arg *g, double flops)
{
    return flops / bench_time(gemm_run, NULL, g, r->opt->reps, 0.02) * 1e-9;
}

/* Indexer decode as a dense product: scores[n][Hi] = keys[n][di] . q^T[di][Hi]; and the prefill
 * form with 16 queries (N = 16 Hi) when asked. */
static int measure_sgemm_index(bench_run *r, bool prefill16)
{
    const int64_t Hi = r->cfg->index_n_heads, di = r->cfg->index_head_dim, n = r->opt->context;
    float *K = dsacp_calloc((size_t)(n * di), sizeof(float)), *Q = dsacp_calloc((size_t)(16 * Hi * di), sizeof(float));
    float *C = dsacp_calloc((size_t)(n * 16 * Hi), sizeof(float));
    if (!K || !Q || !C) {
        dsacp_free(K), dsacp_free(Q), dsacp_free(C);
        return dsacp_error(DSACP_ENOMEM, "out of memory for the sgemm operands");
    }
    bench_fill(K, n * di, 1, 1), bench_fill(Q, 16 * Hi * di, 2, 1);
    gemm_arg g = {.gemm = r->opt->reference_gemm, .M = n, .N = Hi, .K = di, .A = K, .lda = di, .B = Q, .ldb = di,
                  .C = C, .ldc = Hi, .transb = true};
    r->sgemm_indexer = gemm_gflops(r, &g, 2.0 * (double)n * di * Hi);
    bench_result(r, "sgemm_indexer", r->sgemm_indexer, "GFLOP/s", NULL, 0, 0);
    if (prefill16) {
        g.N = 16 * Hi, g.ldc = 16 * Hi;
        r->sgemm_indexer_prefill = gemm_gflops(r, &g, 2.0 * (double)n * di * Hi * 16);
        bench_result(r, "sgemm_indexer_prefill16", r->sgemm_indexer_prefill, "GFLOP/s", NULL, 0, 0);
    }
    dsacp_free(K), dsacp_free(Q), dsacp_free(C);
    return DSACP_OK;
}

/* Sparse MLA decode as two dense products: S[H][k] = Q[H][dc+dr] . KV^T, then
 * O[H][dc] = P[H][k] . KV[k][0:dc]. */
static int measure_sgemm_mla(bench_run *r)
{
    const dsacp_config *c = r->cfg;
    const int64_t H = c->num_attention_heads, dk = c->kv_lora_rank + c->qk_rope_head_dim, dc = c->kv_lora_rank;
    const int64_t k = r->opt->context < c->index_topk ? r->opt->context : c->index_topk;
    float *Q = dsacp_calloc((size_t)(H * dk), sizeof(float)), *KV = dsacp_calloc((size_t)(k * dk), sizeof(float));
    float *S = dsacp_calloc((size_t)(H * k), sizeof(float)), *O = dsacp_calloc((size_t)(H * dc), sizeof(float));
    if (!Q || !KV || !S || !O) {
        dsacp_free(Q), dsacp_free(KV), dsacp_free(S), dsacp_free(O);
        return dsacp_error(DSACP_ENOMEM, "out of memory for the sgemm operands");
    }
    bench_fill(Q, H * dk, 3, 1), bench_fill(KV, k * dk, 4, 1), bench_fill(S, H * k, 5, 1.0f / (float)k);
    gemm_arg g = {.gemm = r->opt->reference_gemm, .M = H, .N = k, .K = dk, .A = Q, .lda = dk, .B = KV, .ldb = dk,
                  .C = S, .ldc = k, .transb = true, .M2 = H, .N2 = dc, .K2 = k, .A2 = S, .lda2 = k, .B2 = KV,
                  .ldb2 = dk, .C2 = O, .ldc2 = dc};
    r->sgemm_mla = gemm_gflops(r, &g, 2.0 * (double)H * k * dk + 2.0 * (double)H * k * dc);
    bench_result(r, "sgemm_mla", r->sgemm_mla, "GFLOP/s", NULL, 0, 0);
    dsacp_free(Q), dsacp_free(KV), dsacp_free(S), dsacp_free(O);
    return DSACP_OK;
}

int bench_measure_ceilings(bench_run *r, unsigned which)
{
    int rc = DSACP_OK;
    if (which & BENCH_CEIL_FMA) measure_fma(r);
    if (which & BENCH_CEIL_STREAM) rc = measure_stream(r);
    if (!rc && (which & BENCH_CEIL_SGEMM_INDEX)) rc = measure_sgemm_index(r, which & BENCH_CEIL_SGEMM_INDEX16);
    if (!rc && (which & BENCH_CEIL_SGEMM_MLA)) rc = measure_sgemm_mla(r);
    if (which & (BENCH_CEIL_SGEMM_INDEX | BENCH_CEIL_SGEMM_MLA)) bench_reference_settle();
    return rc;
}

const bench_case bench_case_ceilings = {
    .name = "ceilings",
    .options = 1u << DSACP_BENCH_OPT_PRESET | 1u << DSACP_BENCH_OPT_CONTEXT,
    .ceilings = BENCH_CEIL_FMA | BENCH_CEIL_STREAM | BENCH_CEIL_SGEMM_INDEX | BENCH_CEIL_SGEMM_MLA,
};
