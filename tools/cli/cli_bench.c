/*
 * cli_bench.c -- `dsacp bench`: the kernels and one decode layer at a model's dimensions, each
 * beside the machine's own ceilings measured in the same run (OpenBLAS sgemm on the equivalent
 * dense product, a peak-FMA loop, stream-copy bandwidth), printed as a table or as one JSON
 * object (docs/performance.md explains every figure).
 *
 * With --preset nothing touches the disk: the few tensors each kernel needs (FP8 weights with
 * block scales, caches of `context` tokens) are generated in memory from a deterministic RNG.
 * With --model DIR the layer's weights come from the checkpoint (dsacp_dsa_weights_bind); the
 * caches are still synthetic. The decode layer runs src/attn directly on a cache already holding
 * context - 1 tokens, so a 128K context costs no prefill.
 *
 * Timing: every figure is the minimum over --reps repetitions (noise on a shared machine only
 * ever slows a run down); a repetition of a short kernel loops it until it lasts >= 20 ms. The
 * fp8 linear layers are timed cold: the last-level cache is flushed before each call, as in a
 * real model whose 61 layers never fit in it (--warm: not flushed, for diagnosis).
 */
#include "cli.h"
#include "attn/dsa_layer.h"
#include "cache/kv_cache.h"
#include "core/core.h"
#include "kernels/kernels.h"
#include "model/model.h"
#include "numerics/numerics.h"

#include <cblas.h>
#include <jansson.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define BENCH_X86 1
#endif

/* ---- results ---- */

typedef struct bench_result {
    char name[64];
    double value;
    const char *unit;
    char ceiling_name[64]; /* "" when no ceiling applies */
    double ceiling_value;
    double ratio; /* value / ceiling_value, or the ratio stated by the caller */
} bench_result;

enum { MAX_RESULTS = 64 };

typedef struct bench {
    /* options */
    const char *preset, *model_dir;
    int64_t context, batch, threads, reps, block_size;
    bool deployed, json, warm;
    const char *kernel;
    /* model */
    dsacp_config cfg;
    dsacp_model *model; /* --model only */
    /* ceilings, 0 until measured */
    double peak_fma, stream_copy, stream_read, sgemm_indexer, sgemm_indexer_prefill, sgemm_mla;
    double loadavg;       /* 1-minute load average when the run started (timing hygiene) */
    double indexer_fp8_s; /* time of one decode-query scoring (fp8 keys), for the top-k ratio */
    bench_result res[MAX_RESULTS];
    int nres;
} bench;

static void add_result(bench *b, const char *name, double value, const char *unit, const char *ceil_name,
                       double ceil_value, double ratio)
{
    if (b->nres >= MAX_RESULTS) return;
    bench_result *r = &b->res[b->nres++];
    snprintf(r->name, sizeof r->name, "%s", name);
    r->value = value;
    r->unit = unit;
    snprintf(r->ceiling_name, sizeof r->ceiling_name, "%s", ceil_name ? ceil_name : "");
    r->ceiling_value = ceil_name ? ceil_value : NAN;
    r->ratio = ceil_name ? ratio : NAN;
    if (!b->json) {
        if (ceil_name)
            printf("%-28s %12.4g %-7s %-24s %12.4g %8.3f\n", r->name, value, unit, ceil_name, ceil_value, ratio);
        else
            printf("%-28s %12.4g %-7s %-24s %12s %8s\n", r->name, value, unit, "-", "-", "-");
        fflush(stdout);
    }
}

/* A throughput result against a ceiling of the same unit. */
static void add_rate(bench *b, const char *name, double value, const char *unit, const char *ceil_name,
                     double ceil_value)
{
    add_result(b, name, value, unit, ceil_name, ceil_value, ceil_value > 0 ? value / ceil_value : NAN);
}

/* ---- timing ---- */

typedef void (*bench_fn)(void *arg);

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Seconds per call of fn(arg): one warm-up call, then `reps` repetitions, each looping fn until
 * it lasts >= min_s (the loop count is fixed after the warm-up). before(arg), when given, runs
 * untimed before every call, and then every call is timed on its own. Returns the minimum;
 * *median gets the median when not NULL. */
static double time_fn(bench_fn fn, bench_fn before, void *arg, int64_t reps, double min_s, double *median)
{
    if (before) before(arg);
    double t0 = dsacp_now();
    fn(arg);
    double once = dsacp_now() - t0;
    int64_t inner = 1;
    if (!before && once < min_s) inner = (int64_t)(min_s / (once > 1e-7 ? once : 1e-7)) + 1;
    if (inner > 1000000) inner = 1000000;
    double *t = malloc((size_t)reps * sizeof *t);
    double best = once;
    if (!t) return once;
    for (int64_t r = 0; r < reps; r++) {
        if (before) before(arg);
        double s = dsacp_now();
        for (int64_t i = 0; i < inner; i++) fn(arg);
        t[r] = (dsacp_now() - s) / (double)inner;
    }
    qsort(t, (size_t)reps, sizeof *t, cmp_double);
    best = t[0];
    if (median) *median = t[reps / 2];
    free(t);
    return best;
}

/* ---- deterministic random data ---- */

/* Fast uniform floats in [-1.73, 1.73) (unit variance) from a splitmix64 stream. */
static inline uint64_t mix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static inline float unif(uint64_t *s) { return ((float)(mix64(s) >> 40) * (1.0f / 16777216.0f) - 0.5f) * 3.4641016f; }

static void fill_f32(float *x, int64_t n, uint64_t seed, float scale)
{
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < (n + 65535) / 65536; c++) {
        uint64_t s = seed * 0x100000001b3ull + (uint64_t)c;
        int64_t end = (c + 1) * 65536 < n ? (c + 1) * 65536 : n;
        for (int64_t i = c * 65536; i < end; i++) x[i] = unif(&s) * scale;
    }
}

/* e4m3 codes of standard-normal samples, to draw FP8 weights from quickly. */
static uint8_t normal_e4m3[4096];
static void init_normal_table(void)
{
    dsacp_rng rng;
    dsacp_rng_seed(&rng, 12345);
    for (int i = 0; i < 4096; i++) normal_e4m3[i] = dsacp_f32_to_e4m3((float)dsacp_rng_normal(&rng));
}

/* An in-memory weight [rows][cols] ~ N(0, 1/cols): F8_E4M3 with block scales, or F32. */
typedef struct owned_weight {
    dsacp_weight w;
    void *data;
    float *scale;
} owned_weight;

static int make_weight(owned_weight *o, const char *name, int64_t rows, int64_t cols, bool fp8, uint64_t seed)
{
    memset(o, 0, sizeof *o);
    o->w.name = name;
    o->w.ndim = 2;
    o->w.rows = rows;
    o->w.cols = cols;
    float sd = 1.0f / sqrtf((float)cols);
    if (!fp8) {
        o->data = dsacp_alloc((size_t)(rows * cols) * 4);
        if (!o->data) return dsacp_error(DSACP_ENOMEM, "out of memory for weight %s", name);
        fill_f32(o->data, rows * cols, seed, sd);
        o->w.dtype = DSACP_F32;
        o->w.data = o->data;
        return DSACP_OK;
    }
    int64_t sr = (rows + 127) / 128, sc = (cols + 127) / 128, n = rows * cols;
    o->data = dsacp_alloc((size_t)n);
    o->scale = dsacp_alloc((size_t)(sr * sc) * 4);
    if (!o->data || !o->scale) return dsacp_error(DSACP_ENOMEM, "out of memory for weight %s", name);
    uint8_t *d = o->data;
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < (n + 65535) / 65536; c++) {
        uint64_t s = seed * 0x100000001b3ull + (uint64_t)c;
        int64_t end = (c + 1) * 65536 < n ? (c + 1) * 65536 : n;
        for (int64_t i = c * 65536; i < end; i += 4) {
            uint64_t r = mix64(&s);
            for (int64_t k = 0; k < 4 && i + k < end; k++) d[i + k] = normal_e4m3[(r >> (16 * k)) & 4095];
        }
    }
    for (int64_t i = 0; i < sr * sc; i++) o->scale[i] = sd;
    o->w.dtype = DSACP_F8_E4M3;
    o->w.data = o->data;
    o->w.scale = o->scale;
    o->w.scale_rows = sr;
    o->w.scale_cols = sc;
    o->w.scale_stride = sc;
    o->w.block = 128;
    return DSACP_OK;
}

static void free_weight(owned_weight *o)
{
    dsacp_free(o->data);
    dsacp_free(o->scale);
    memset(o, 0, sizeof *o);
}

static int64_t weight_bytes(const dsacp_weight *w)
{
    int64_t n = w->rows * w->cols * (int64_t)dsacp_dtype_size(w->dtype);
    if (w->dtype == DSACP_F8_E4M3) n += w->scale_rows * w->scale_cols * 4;
    return n;
}

/* ---- ceilings ---- */

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
        memcpy(c->b + lo, c->a + lo, (size_t)(hi - lo) * 4);
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

typedef struct gemm_arg {
    int64_t M, N, K;
    const float *A, *B;
    float *C;
    int64_t lda, ldb, ldc;
    bool transb;
    /* optional second product (sparse MLA: S = Q K^T, then O = P V) */
    int64_t M2, N2, K2, lda2, ldb2, ldc2;
    const float *A2, *B2;
    float *C2;
} gemm_arg;

static void gemm_run(void *p)
{
    gemm_arg *g = p;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, g->transb ? CblasTrans : CblasNoTrans, (int)g->M, (int)g->N,
                (int)g->K, 1.0f, g->A, (int)g->lda, g->B, (int)g->ldb, 0.0f, g->C, (int)g->ldc);
    if (g->A2)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)g->M2, (int)g->N2, (int)g->K2, 1.0f, g->A2,
                    (int)g->lda2, g->B2, (int)g->ldb2, 0.0f, g->C2, (int)g->ldc2);
}

/* OpenBLAS's pthread workers spin for a while after a call; let them park before OpenMP code
 * is timed on the same two cores. */
static void blas_quiesce(void)
{
    struct timespec ts = {0, 200 * 1000 * 1000};
    nanosleep(&ts, NULL);
}

static double gemm_gflops(bench *b, gemm_arg *g, double flops)
{
    double t = time_fn(gemm_run, NULL, g, b->reps, 0.02, NULL);
    return flops / t * 1e-9;
}

/* The peak FMA rate of the widest FMA this CPU runs (0 when none): the best of at least 5 timings
 * of >= 50 ms each, whatever --reps says. A ceiling has to be an upper bound: on a shared VM one
 * timing with a vCPU descheduled read 83-96 GFLOP/s where the machine gives ~200, and a roofline
 * ratio taken against it read 1.3-1.5x "of peak" (seen 2026-12-02). *lanes: floats per vector. */
static double peak_fma_rate(const bench *b, int *lanes)
{
    fma_arg a = {.iters = 2000000, .lanes = 0};
#ifdef BENCH_X86
    if (__builtin_cpu_supports("avx512f")) a.lanes = 16;
    else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) a.lanes = 8;
#endif
    *lanes = a.lanes;
    if (!a.lanes) return 0;
    double t = time_fn(fma_run, NULL, &a, b->reps < 5 ? 5 : b->reps, 0.05, NULL);
    return (double)b->threads * (double)a.iters * (a.lanes == 8 ? FMA_ACC2 : FMA_ACC) * a.lanes * 2 / t * 1e-9;
}

static int measure_ceilings(bench *b, bool fma, bool stream, bool sg_index, bool sg_mla)
{
    const dsacp_config *c = &b->cfg;
    if (fma) {
        fma_arg a = {.iters = 2000000, .lanes = 0};
        b->peak_fma = peak_fma_rate(b, &a.lanes);
        if (b->peak_fma > 0)
            add_result(b, a.lanes == 16 ? "peak_fma_avx512" : "peak_fma_avx2", b->peak_fma, "GFLOP/s", NULL, 0, 0);
#ifdef BENCH_X86
        if (__builtin_cpu_supports("avx512bf16")) {
            a.lanes = 32;
            double t = time_fn(fma_run, NULL, &a, b->reps < 5 ? 5 : b->reps, 0.05, NULL);
            double g = (double)b->threads * (double)a.iters * FMA_ACC * 32 * 2 / t * 1e-9;
            add_rate(b, "peak_bf16dp_avx512", g, "GFLOP/s", "peak_fma_avx512", b->peak_fma);
        }
#endif
    }
    if (stream) {
        copy_arg a = {.n = 32 << 20}; /* 128 MiB per array: 4x the largest L3 in sight */
        a.a = dsacp_alloc((size_t)a.n * 4);
        a.b = dsacp_alloc((size_t)a.n * 4);
        if (!a.a || !a.b) {
            dsacp_free(a.a);
            dsacp_free(a.b);
            return dsacp_error(DSACP_ENOMEM, "out of memory for the stream arrays");
        }
        /* first touch by the threads that will use each half */
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < a.n; i++) a.a[i] = (float)(i & 1023), a.b[i] = 0;
        double t = time_fn(copy_run, NULL, &a, b->reps, 0.0, NULL);
        b->stream_copy = 2.0 * (double)a.n * 4 / t * 1e-9;
        add_result(b, "stream_copy", b->stream_copy, "GB/s", NULL, 0, 0);
        t = time_fn(read_run, NULL, &a, b->reps, 0.0, NULL);
        b->stream_read = (double)a.n * 4 / t * 1e-9;
        add_result(b, "stream_read", b->stream_read, "GB/s", NULL, 0, 0);
        dsacp_free(a.a);
        dsacp_free(a.b);
    }
    const int64_t Hi = c->index_n_heads, di = c->index_head_dim, n = b->context;
    if (sg_index) {
        /* Indexer decode as a dense product: scores[n][Hi] = keys[n][di] . q^T[di][Hi]; and
         * the prefill form with 16 queries (N = 16 Hi). */
        float *K = dsacp_alloc((size_t)(n * di) * 4), *Q = dsacp_alloc((size_t)(16 * Hi * di) * 4);
        float *C = dsacp_alloc((size_t)(n * 16 * Hi) * 4);
        if (!K || !Q || !C) {
            dsacp_free(K), dsacp_free(Q), dsacp_free(C);
            return dsacp_error(DSACP_ENOMEM, "out of memory for the sgemm operands");
        }
        fill_f32(K, n * di, 1, 1), fill_f32(Q, 16 * Hi * di, 2, 1);
        gemm_arg g = {.M = n, .N = Hi, .K = di, .A = K, .lda = di, .B = Q, .ldb = di, .C = C, .ldc = Hi, .transb = true};
        b->sgemm_indexer = gemm_gflops(b, &g, 2.0 * (double)n * di * Hi);
        add_result(b, "sgemm_indexer", b->sgemm_indexer, "GFLOP/s", NULL, 0, 0);
        if (!strcmp(b->kernel, "all") || !strcmp(b->kernel, "indexer")) {
            g.N = 16 * Hi, g.ldc = 16 * Hi;
            b->sgemm_indexer_prefill = gemm_gflops(b, &g, 2.0 * (double)n * di * Hi * 16);
            add_result(b, "sgemm_indexer_prefill16", b->sgemm_indexer_prefill, "GFLOP/s", NULL, 0, 0);
        }
        dsacp_free(K), dsacp_free(Q), dsacp_free(C);
    }
    if (sg_mla) {
        /* Sparse MLA decode as two dense products: S[H][k] = Q[H][dc+dr] . KV^T, then
         * O[H][dc] = P[H][k] . KV[k][0:dc]. */
        const int64_t H = c->num_attention_heads, dk = c->kv_lora_rank + c->qk_rope_head_dim, dc = c->kv_lora_rank;
        const int64_t k = n < c->index_topk ? n : c->index_topk;
        float *Q = dsacp_alloc((size_t)(H * dk) * 4), *KV = dsacp_alloc((size_t)(k * dk) * 4);
        float *S = dsacp_alloc((size_t)(H * k) * 4), *O = dsacp_alloc((size_t)(H * dc) * 4);
        if (!Q || !KV || !S || !O) {
            dsacp_free(Q), dsacp_free(KV), dsacp_free(S), dsacp_free(O);
            return dsacp_error(DSACP_ENOMEM, "out of memory for the sgemm operands");
        }
        fill_f32(Q, H * dk, 3, 1), fill_f32(KV, k * dk, 4, 1), fill_f32(S, H * k, 5, 1.0f / (float)k);
        gemm_arg g = {.M = H, .N = k, .K = dk, .A = Q, .lda = dk, .B = KV, .ldb = dk, .C = S, .ldc = k, .transb = true,
                      .M2 = H, .N2 = dc, .K2 = k, .A2 = S, .lda2 = k, .B2 = KV, .ldb2 = dk, .C2 = O, .ldc2 = dc};
        b->sgemm_mla = gemm_gflops(b, &g, 2.0 * (double)H * k * dk + 2.0 * (double)H * k * dc);
        add_result(b, "sgemm_mla", b->sgemm_mla, "GFLOP/s", NULL, 0, 0);
        dsacp_free(Q), dsacp_free(KV), dsacp_free(S), dsacp_free(O);
    }
    if (sg_index || sg_mla) blas_quiesce();
    return DSACP_OK;
}

/* ---- kernels ---- */

typedef struct index_arg {
    const float *q, *w;
    int64_t Tq, Hi, di, n;
    const void *keys;
    const float *kscales;
    float *out;
} index_arg;

/* One query against n keys, the keys split into one contiguous range per thread (the kernel is
 * serial by contract; each score depends only on its key). */
static void index_run(void *p)
{
    index_arg *a = p;
    const size_t kb = a->kscales ? 1 : 4;
#pragma omp parallel
    {
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        int64_t lo = a->n * t / nt, hi = a->n * (t + 1) / nt;
        if (hi > lo)
            dsacp_index_scores(a->q, a->w, a->Hi, a->di, (const uint8_t *)a->keys + (size_t)(lo * a->di) * kb,
                               a->kscales ? a->kscales + lo : NULL, hi - lo, a->out + lo);
    }
}

static void index_multi_run(void *p)
{
    index_arg *a = p;
#pragma omp parallel
    {
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        int64_t lo = a->n * t / nt, hi = a->n * (t + 1) / nt;
        if (hi > lo)
            dsacp_index_scores_multi(a->q, a->w, a->Tq, a->Hi, a->di, (const uint8_t *)a->keys + (size_t)(lo * a->di),
                                     a->kscales + lo, hi - lo, a->out + lo, a->n);
    }
}

typedef struct topk_arg {
    const float *scores;
    int64_t n, k;
    int32_t *out;
} topk_arg;

static void topk_run(void *p)
{
    topk_arg *a = p;
    dsacp_topk_select(a->scores, a->n, a->k, a->out);
}

static int bench_indexer_topk(bench *b, bool report_indexer, bool do_topk)
{
    const dsacp_config *c = &b->cfg;
    const int64_t Hi = c->index_n_heads, di = c->index_head_dim, n = b->context, TQ = 16;
    uint8_t *k8 = dsacp_alloc((size_t)(n * di));
    float *ks = dsacp_alloc((size_t)n * 4), *kf = dsacp_alloc((size_t)(n * di) * 4);
    float *q = dsacp_alloc((size_t)(TQ * Hi * di) * 4), *w = dsacp_alloc((size_t)(TQ * Hi) * 4);
    float *out = dsacp_alloc((size_t)(TQ * n) * 4);
    int32_t *sel = dsacp_alloc((size_t)c->index_topk * 4);
    int rc = DSACP_OK;
    if (!k8 || !ks || !kf || !q || !w || !out || !sel) {
        rc = dsacp_error(DSACP_ENOMEM, "out of memory for the indexer operands");
        goto done;
    }
    /* Keys: unit-variance f32 rows, and their deployed form (one power-of-two scale per key).
     * Query: e4m3 values (the deployed query), weights of either sign. */
    fill_f32(kf, n * di, 11, 1);
#pragma omp parallel for schedule(static)
    for (int64_t j = 0; j < n; j++) dsacp_quant_e4m3_groups(kf + j * di, di, di, k8 + j * di, ks + j);
    fill_f32(q, TQ * Hi * di, 12, 1);
    for (int64_t i = 0; i < TQ * Hi * di; i++) q[i] = dsacp_e4m3_to_f32(dsacp_f32_to_e4m3(q[i] * 100.0f));
    fill_f32(w, TQ * Hi, 13, 0.01f);
    const double flops = (2.0 * (double)Hi * di + (double)Hi) * (double)n;
    index_arg a = {.q = q, .w = w, .Tq = 1, .Hi = Hi, .di = di, .n = n, .keys = k8, .kscales = ks, .out = out};
    double t = time_fn(index_run, NULL, &a, b->reps, 0.02, NULL);
    b->indexer_fp8_s = t;
    if (report_indexer) {
        add_rate(b, "indexer_fp8", flops / t * 1e-9, "GFLOP/s", "sgemm_indexer", b->sgemm_indexer);
        add_result(b, "indexer_fp8_time", t * 1e3, "ms", NULL, 0, 0);
        index_arg af = a;
        af.keys = kf;
        af.kscales = NULL;
        double tf = time_fn(index_run, NULL, &af, b->reps, 0.02, NULL);
        add_rate(b, "indexer_f32", flops / tf * 1e-9, "GFLOP/s", "sgemm_indexer", b->sgemm_indexer);
        if (!strcmp(b->kernel, "all") || !strcmp(b->kernel, "indexer")) {
            index_arg am = a;
            am.Tq = TQ;
            double tm = time_fn(index_multi_run, NULL, &am, b->reps, 0.02, NULL);
            add_rate(b, "indexer_prefill16_fp8", TQ * flops / tm * 1e-9, "GFLOP/s", "sgemm_indexer_prefill16",
                     b->sgemm_indexer_prefill);
        }
    }
    if (do_topk) {
        index_run(&a); /* the scores of one real query */
        topk_arg ta = {.scores = out, .n = n, .k = c->index_topk, .out = sel};
        double tt = time_fn(topk_run, NULL, &ta, b->reps, 0.02, NULL);
        add_result(b, "topk_time", tt * 1e3, "ms", "indexer_fp8_time", t * 1e3, tt / t);
    }
done:
    dsacp_free(k8), dsacp_free(ks), dsacp_free(kf), dsacp_free(q), dsacp_free(w), dsacp_free(out), dsacp_free(sel);
    return rc;
}

typedef struct mla_arg {
    const float *q, *kv;
    int64_t n, H, dc, dr;
    float scale;
    float *o, *lse, *work;
} mla_arg;

static void mla_run(void *p)
{
    mla_arg *a = p;
    dsacp_sparse_mla(a->q, a->kv, a->n, a->H, a->dc, a->dr, a->scale, a->o, a->lse, a->work);
}

static int bench_mla(bench *b)
{
    const dsacp_config *c = &b->cfg;
    const int64_t H = c->num_attention_heads, dc = c->kv_lora_rank, dr = c->qk_rope_head_dim, dk = dc + dr;
    const int64_t k = b->context < c->index_topk ? b->context : c->index_topk;
    float *q = dsacp_alloc((size_t)(H * dk) * 4), *kv = dsacp_alloc((size_t)(k * dk) * 4);
    float *o = dsacp_alloc((size_t)(H * dc) * 4), *lse = dsacp_alloc((size_t)H * 4), *work = dsacp_alloc((size_t)k * 4);
    int rc = DSACP_OK;
    if (!q || !kv || !o || !lse || !work) {
        rc = dsacp_error(DSACP_ENOMEM, "out of memory for the sparse MLA operands");
    } else {
        fill_f32(q, H * dk, 21, 1), fill_f32(kv, k * dk, 22, 1);
        mla_arg a = {q, kv, k, H, dc, dr, (float)c->softmax_scale, o, lse, work};
        double t = time_fn(mla_run, NULL, &a, b->reps, 0.02, NULL);
        double flops = 2.0 * (double)H * k * dk + 2.0 * (double)H * k * dc;
        add_rate(b, "sparse_mla", flops / t * 1e-9, "GFLOP/s", "sgemm_mla", b->sgemm_mla);
        add_result(b, "sparse_mla_time", t * 1e3, "ms", NULL, 0, 0);
    }
    dsacp_free(q), dsacp_free(kv), dsacp_free(o), dsacp_free(lse), dsacp_free(work);
    return rc;
}

/* ---- the layer's weights: bound from a checkpoint, or generated in memory ---- */

typedef struct layer_weights {
    dsacp_dsa_weights w; /* released with dsacp_dsa_weights_release in both paths */
    owned_weight q_a, q_b, kv_a, kv_b, o, wq_b, wk, wproj;
} layer_weights;

static float *norm_vector(int64_t n, uint64_t seed)
{
    float *v = dsacp_alloc((size_t)n * 4);
    if (!v) return NULL;
    fill_f32(v, n, seed, 0.05f);
    for (int64_t i = 0; i < n; i++) v[i] += 1.0f;
    return v;
}

/* The preset path fills the fields dsacp_dsa_weights_bind would (projection views, F32 norm
 * vectors and kv_b_f32 from dsacp_alloc), then lets the layer build its absorbed form, so that
 * dsacp_dsa_weights_release frees exactly what bind would have allocated. */
static int layer_weights_make(bench *b, layer_weights *lw)
{
    memset(lw, 0, sizeof *lw);
    if (b->model) return dsacp_dsa_weights_bind(&lw->w, b->model, 0);
    const dsacp_config *c = &b->cfg;
    const int64_t D = c->hidden_size, H = c->num_attention_heads, ql = c->q_lora_rank, dc = c->kv_lora_rank;
    const int64_t dq = c->qk_nope_head_dim + c->qk_rope_head_dim, dr = c->qk_rope_head_dim, dv = c->v_head_dim;
    const int64_t Hi = c->index_n_heads, di = c->index_head_dim;
    int rc = DSACP_OK;
    if (!rc) rc = make_weight(&lw->q_a, "q_a_proj", ql, D, true, 101);
    if (!rc) rc = make_weight(&lw->q_b, "q_b_proj", H * dq, ql, true, 102);
    if (!rc) rc = make_weight(&lw->kv_a, "kv_a_proj_with_mqa", dc + dr, D, true, 103);
    if (!rc) rc = make_weight(&lw->kv_b, "kv_b_proj", H * (c->qk_nope_head_dim + dv), dc, true, 104);
    if (!rc) rc = make_weight(&lw->o, "o_proj", D, H * dv, true, 105);
    if (!rc) rc = make_weight(&lw->wq_b, "indexer.wq_b", Hi * di, ql, true, 106);
    if (!rc) rc = make_weight(&lw->wk, "indexer.wk", di, D, true, 107);
    if (!rc) rc = make_weight(&lw->wproj, "indexer.weights_proj", Hi, D, false, 108);
    if (rc) return rc;
    dsacp_dsa_weights *w = &lw->w;
    w->q_a = &lw->q_a.w, w->q_b = &lw->q_b.w, w->kv_a = &lw->kv_a.w, w->kv_b = &lw->kv_b.w;
    w->o = &lw->o.w, w->wq_b = &lw->wq_b.w, w->wk = &lw->wk.w, w->wproj = &lw->wproj.w;
    w->q_a_norm = norm_vector(ql, 111);
    w->kv_a_norm = norm_vector(dc, 112);
    w->k_norm_w = norm_vector(di, 113);
    w->k_norm_b = dsacp_alloc((size_t)di * 4);
    w->kv_b_f32 = dsacp_alloc((size_t)(lw->kv_b.w.rows * lw->kv_b.w.cols) * 4);
    if (!w->q_a_norm || !w->kv_a_norm || !w->k_norm_w || !w->k_norm_b || !w->kv_b_f32)
        return dsacp_error(DSACP_ENOMEM, "out of memory for the layer weights");
    fill_f32(w->k_norm_b, di, 114, 0.05f);
    dsacp_weight_to_f32(w->kv_b, w->kv_b_f32);
    return dsacp_dsa_weights_absorb(w, c);
}

static void layer_weights_free(layer_weights *lw)
{
    dsacp_dsa_weights_release(&lw->w);
    owned_weight *ow[] = {&lw->q_a, &lw->q_b, &lw->kv_a, &lw->kv_b, &lw->o, &lw->wq_b, &lw->wk, &lw->wproj};
    for (size_t i = 0; i < sizeof ow / sizeof *ow; i++) free_weight(ow[i]);
    memset(lw, 0, sizeof *lw);
}

/* ---- fp8 linear at one token ---- */

typedef struct linear_arg {
    const dsacp_weight *w;
    const float *x;
    float *y;
    bool act_quant;
    uint8_t *flush; /* written before every call: evicts the weights from the caches */
    size_t flush_bytes;
    int rc;
} linear_arg;

static void linear_run(void *p)
{
    linear_arg *a = p;
    a->rc = dsacp_linear(a->w, a->x, 1, a->w->cols, a->y, a->w->rows, a->act_quant);
}

static void cache_flush(void *p)
{
    linear_arg *a = p;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < a->flush_bytes; i += 64) a->flush[i]++;
}

static int bench_linear(bench *b, const layer_weights *lw)
{
    const dsacp_weight *ws[] = {lw->w.q_a, lw->w.q_b, lw->w.kv_a, lw->w.o, lw->w.wq_b};
    const char *names[] = {"linear_q_a", "linear_q_b", "linear_kv_a", "linear_o_proj", "linear_wq_b"};
    int64_t maxc = 0, maxr = 0;
    for (int i = 0; i < 5; i++) {
        if (ws[i]->cols > maxc) maxc = ws[i]->cols;
        if (ws[i]->rows > maxr) maxr = ws[i]->rows;
    }
    float *x = dsacp_alloc((size_t)maxc * 4), *y = dsacp_alloc((size_t)maxr * 4);
    size_t fb = (size_t)96 << 20;
    uint8_t *flush = dsacp_calloc(fb, 1);
    int rc = DSACP_OK;
    if (!x || !y || !flush) rc = dsacp_error(DSACP_ENOMEM, "out of memory for the linear operands");
    double tot_bytes = 0, tot_t = 0;
    for (int i = 0; i < 5 && !rc; i++) {
        fill_f32(x, maxc, 31 + (uint64_t)i, 1);
        linear_arg a = {ws[i], x, y, b->deployed && ws[i]->dtype == DSACP_F8_E4M3, flush, fb, 0};
        double t = time_fn(linear_run, b->warm ? NULL : cache_flush, &a, b->reps < 5 ? 5 : b->reps, b->warm ? 0.02 : 0,
                           NULL);
        if (a.rc) rc = a.rc;
        double bytes = (double)weight_bytes(ws[i]);
        tot_bytes += bytes, tot_t += t;
        add_rate(b, names[i], bytes / t * 1e-9, "GB/s", "stream_copy", b->stream_copy);
    }
    if (!rc) add_rate(b, "linear_all", tot_bytes / tot_t * 1e-9, "GB/s", "stream_copy", b->stream_copy);
    dsacp_free(x), dsacp_free(y), dsacp_free(flush);
    return rc;
}

/* ---- batched linear (the blocked GEMM) ---- */

typedef struct batch_arg {
    const dsacp_weight *w;
    const float *x;
    float *y;
    int64_t T;
    bool act_quant;
    int rc;
} batch_arg;

static void batch_run(void *p)
{
    batch_arg *a = p;
    int rc = dsacp_linear(a->w, a->x, a->T, a->w->cols, a->y, a->w->rows, a->act_quant);
    if (rc && !a->rc) a->rc = rc;
}

/* dsacp_linear on T tokens for T in {16, 256, 2048}, weights of q_a's shape (hidden x q_lora,
 * the layer's first and most common GEMM shape) stored as f32, bf16 and fp8, each beside OpenBLAS
 * sgemm on the same f32 product, timed in the same run. */
static int bench_gemm(bench *b)
{
    const dsacp_config *c = &b->cfg;
    const int64_t N = c->q_lora_rank > 0 ? c->q_lora_rank : c->hidden_size, K = c->hidden_size;
    static const int64_t Ts[] = {16, 256, 2048};
    const int64_t Tmax = 2048;
    owned_weight wf, w8, wb;
    memset(&wb, 0, sizeof wb);
    int rc = make_weight(&wf, "gemm_f32", N, K, false, 201);
    if (!rc) rc = make_weight(&w8, "gemm_fp8", N, K, true, 202);
    else memset(&w8, 0, sizeof w8);
    if (!rc) {
        wb.data = dsacp_alloc((size_t)(N * K) * 2);
        if (!wb.data) rc = dsacp_error(DSACP_ENOMEM, "out of memory for the bf16 weight");
        else {
            uint16_t *d = wb.data;
            for (int64_t i = 0; i < N * K; i++) d[i] = dsacp_f32_to_bf16(((const float *)wf.data)[i]);
            wb.w = wf.w;
            wb.w.name = "gemm_bf16", wb.w.dtype = DSACP_BF16, wb.w.data = wb.data;
        }
    }
    float *x = dsacp_alloc((size_t)(Tmax * K) * 4), *y = dsacp_alloc((size_t)(Tmax * N) * 4);
    if (!rc && (!x || !y)) rc = dsacp_error(DSACP_ENOMEM, "out of memory for the batched linear operands");
    if (!rc) fill_f32(x, Tmax * K, 203, 1);
    /* The four products (sgemm, f32, bf16, fp8) are timed interleaved, one after another in
     * every repetition, and each keeps its minimum: on a shared VM the machine's speed drifts by
     * 30-40 % between seconds, which a ratio of separately timed runs would carry. */
    const int64_t reps = b->reps < 5 ? 5 : b->reps;
    for (size_t i = 0; i < sizeof Ts / sizeof *Ts && !rc; i++) {
        const int64_t T = Ts[i];
        const double flops = 2.0 * (double)T * (double)N * (double)K;
        gemm_arg g = {.M = T, .N = N, .K = K, .A = x, .lda = K, .B = wf.data, .ldb = K, .C = y, .ldc = N, .transb = true};
        const owned_weight *ws[3] = {&wf, &wb, &w8};
        batch_arg a[3];
        for (int k = 0; k < 3; k++) a[k] = (batch_arg){&ws[k]->w, x, y, T, b->deployed && k == 2, 0};
        double best[4] = {1e30, 1e30, 1e30, 1e30};
        int64_t inner[4];
        for (int k = 0; k < 4; k++) { /* warm-up; calls per timing of >= 20 ms */
            double t0 = dsacp_now();
            if (k == 0) gemm_run(&g);
            else batch_run(&a[k - 1]);
            double once = dsacp_now() - t0;
            inner[k] = once >= 0.02 ? 1 : (int64_t)(0.02 / (once > 1e-7 ? once : 1e-7)) + 1;
        }
        for (int64_t r = 0; r < reps; r++)
            for (int k = 0; k < 4; k++) {
                if (k == 1) blas_quiesce();
                double t0 = dsacp_now();
                for (int64_t it = 0; it < inner[k]; it++) {
                    if (k == 0) gemm_run(&g);
                    else batch_run(&a[k - 1]);
                }
                double t = (dsacp_now() - t0) / (double)inner[k];
                if (t < best[k]) best[k] = t;
            }
        for (int k = 0; k < 3; k++)
            if (a[k].rc) rc = a[k].rc;
        char name[64], cname[64];
        snprintf(cname, sizeof cname, "sgemm_T%lld", (long long)T);
        add_result(b, cname, flops / best[0] * 1e-9, "GFLOP/s", NULL, 0, 0);
        const char *tag[3] = {"f32", "bf16", "fp8"};
        for (int k = 0; k < 3; k++) {
            snprintf(name, sizeof name, "gemm_%s_T%lld", tag[k], (long long)T);
            add_rate(b, name, flops / best[k + 1] * 1e-9, "GFLOP/s", cname, flops / best[0] * 1e-9);
        }
    }
    dsacp_free(x), dsacp_free(y);
    free_weight(&wf), free_weight(&w8);
    dsacp_free(wb.data);
    return rc;
}

/* ---- one decode layer step ---- */

typedef struct layer_arg {
    dsacp_dsa_ctx ctx;
    const dsacp_dsa_weights *w;
    dsacp_step_tokens tok;
    const float *x;
    float *out;
    int rc;
} layer_arg;

static void layer_run(void *p)
{
    layer_arg *a = p;
    int rc = dsacp_dsa_forward(&a->ctx, a->w, 0, &a->tok, a->x, a->out, NULL);
    if (rc && !a->rc) a->rc = rc;
}

static int bench_layer(bench *b, const layer_weights *lw)
{
    const dsacp_config *c = &b->cfg;
    const int64_t B = b->batch, L = b->context, D = c->hidden_size, dc = c->kv_lora_rank, dr = c->qk_rope_head_dim;
    const int64_t di = c->index_head_dim, bs = b->block_size;
    const int64_t per_seq = (L + bs - 1) / bs;
    dsacp_kv_cache *cache = NULL;
    dsacp_kv_seq *seqs = calloc((size_t)B, sizeof *seqs);
    dsacp_kv_seq **seqp = calloc((size_t)B, sizeof *seqp);
    int64_t *pos = calloc((size_t)B, sizeof *pos);
    int32_t *seqi = calloc((size_t)B, sizeof *seqi);
    float *x = dsacp_alloc((size_t)(B * D) * 4), *out = dsacp_alloc((size_t)(B * D) * 4);
    dsacp_rope rope;
    int rc = (seqs && seqp && pos && seqi && x && out) ? DSACP_OK : dsacp_error(DSACP_ENOMEM, "out of memory");
    if (!rc) rc = dsacp_rope_init(&rope, c);
    if (!rc)
        rc = dsacp_kv_cache_create(c, 1, b->deployed ? DSACP_KV_FP8 : DSACP_KV_F32, b->deployed, bs, B * per_seq + 1,
                                   &cache);
    for (int64_t s = 0; s < B && !rc; s++) {
        rc = dsacp_kv_reserve(cache, &seqs[s], L);
        seqp[s] = &seqs[s];
        pos[s] = L - 1;
        seqi[s] = (int32_t)s;
    }
    if (rc) goto done;
    /* The cache already holds positions 0 .. L-2 of every sequence (random latent rows and
     * indexer keys of unit variance); the step decodes position L-1, so it scores L keys. */
#pragma omp parallel
    {
        float *row = malloc((size_t)(dc + dr + di) * 4);
#pragma omp for schedule(static)
        for (int64_t i = 0; i < B * (L - 1); i++) {
            if (!row) continue;
            int64_t s = i / (L - 1), p = i % (L - 1);
            uint64_t st = (uint64_t)i * 0x9e3779b97f4a7c15ull + 77;
            for (int64_t j = 0; j < dc + dr + di; j++) row[j] = unif(&st);
            int64_t slot = dsacp_kv_slot(cache, &seqs[s], p);
            dsacp_kv_write_mla(cache, 0, slot, row, row + dc);
            dsacp_kv_write_index(cache, 0, slot, row + dc + dr);
        }
        free(row);
    }
    for (int64_t s = 0; s < B; s++) seqs[s].length = L - 1;
    fill_f32(x, B * D, 41, 1);
    layer_arg a = {.ctx = {.cfg = c, .mode = b->deployed ? DSACP_MODE_DEPLOYED : DSACP_MODE_EXACT, .rope = &rope,
                           .cache = cache},
                   .w = &lw->w,
                   .tok = {.T = B, .pos = pos, .seq = seqi, .seqs = seqp},
                   .x = x,
                   .out = out};
    char name[64];
    double tn = time_fn(layer_run, NULL, &a, b->reps, 0.0, NULL);
    if (a.rc) {
        rc = a.rc;
        goto done;
    }
    add_result(b, "decode_layer_time", tn * 1e3 / (double)B, "ms", NULL, 0, 0);
    add_result(b, "decode_layer_step_time", tn * 1e3, "ms", NULL, 0, 0);
    add_result(b, "decode_layer_tokens_per_s", (double)B / tn, "tok/s", NULL, 0, 0);
    if (b->threads > 1) {
        omp_set_num_threads(1);
        double t1 = time_fn(layer_run, NULL, &a, b->reps, 0.0, NULL);
        omp_set_num_threads((int)b->threads);
        if (a.rc) {
            rc = a.rc;
            goto done;
        }
        add_result(b, "decode_layer_time_1t", t1 * 1e3 / (double)B, "ms", NULL, 0, 0);
        snprintf(name, sizeof name, "decode_layer_speedup_%lldt", (long long)b->threads);
        add_result(b, name, t1 / tn, "x", "threads", (double)b->threads, t1 / tn / (double)b->threads);
    }
done:
    for (int64_t s = 0; s < B && cache && seqs; s++) dsacp_kv_release(cache, &seqs[s]);
    dsacp_kv_cache_free(cache);
    free(seqs), free(seqp), free(pos), free(seqi);
    dsacp_free(x), dsacp_free(out);
    return rc;
}

/* ---- machine description ---- */

static void cpu_model(char *out, size_t n, bool *bf16, bool *vnni)
{
    snprintf(out, n, "unknown");
    *bf16 = *vnni = false;
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return;
    char line[4096];
    bool got_model = false, got_flags = false;
    while (fgets(line, sizeof line, f) && !(got_model && got_flags)) {
        if (!got_model && !strncmp(line, "model name", 10)) {
            char *v = strchr(line, ':');
            if (v) {
                v += 1 + (v[1] == ' ');
                v[strcspn(v, "\n")] = 0;
                snprintf(out, n, "%s", v);
                got_model = true;
            }
        } else if (!got_flags && !strncmp(line, "flags", 5)) {
            *bf16 = strstr(line, " avx512_bf16") != NULL;
            *vnni = strstr(line, " avx512_vnni") != NULL;
            got_flags = true;
        }
    }
    fclose(f);
}

static json_t *jnum(double v) { return isfinite(v) ? json_real(v) : json_null(); }

/* A JSON string of text that may not be UTF-8 (a directory name, /proc/cpuinfo, the environment):
 * when jansson refuses it, every byte >= 0x80 becomes '?' (as cli_plan.c's jstr). NULL only when
 * out of memory. */
static json_t *jtext(const char *text)
{
    json_t *v = json_string(text);
    if (v) return v;
    char *t = strdup(text);
    if (!t) return NULL;
    for (char *c = t; *c; c++)
        if ((unsigned char)*c >= 0x80) *c = '?';
    v = json_string(t);
    free(t);
    return v;
}

/* obj[key] = v; false (v released) when v is NULL or the insertion fails. */
static bool jset(json_t *obj, const char *key, json_t *v)
{
    if (!v) return false;
    if (!obj) {
        json_decref(v);
        return false;
    }
    return json_object_set_new(obj, key, v) == 0;
}

/* The report as one JSON object on stdout. Any failure to build it (out of memory) is an error:
 * never a silent success with nothing printed. */
static int print_json(const bench *b)
{
    char model[256];
    bool bf16, vnni;
    cpu_model(model, sizeof model, &bf16, &vnni);
    const dsacp_config *c = &b->cfg;
    json_t *root = json_object(), *machine = json_object(), *config = json_object(), *dims = json_object();
    json_t *results = json_array();
    bool ok = root && machine && config && dims && results;
    const char *ct = getenv("OPENBLAS_CORETYPE");
    ok = ok && jset(machine, "cpu", jtext(model)) && jset(machine, "cores", json_integer(omp_get_num_procs())) &&
         jset(machine, "isa", jtext(dsacp_isa_name(dsacp_isa_active()))) &&
         jset(machine, "isa_best", jtext(dsacp_isa_name(dsacp_isa_best()))) &&
         jset(machine, "avx512_bf16", json_boolean(bf16)) && jset(machine, "avx512_vnni", json_boolean(vnni)) &&
         jset(machine, "openblas", jtext(openblas_get_corename())) &&
         jset(machine, "loadavg_at_start", jnum(b->loadavg)) &&
         jset(machine, "openblas_coretype_env", ct ? jtext(ct) : json_null());
    ok = ok && jset(config, "preset", b->preset ? jtext(b->preset) : json_null()) &&
         jset(config, "model", b->model_dir ? jtext(b->model_dir) : json_null()) &&
         jset(config, "context", json_integer((json_int_t)b->context)) &&
         jset(config, "batch", json_integer((json_int_t)b->batch)) &&
         jset(config, "threads", json_integer((json_int_t)b->threads)) && jset(config, "kernel", jtext(b->kernel)) &&
         jset(config, "reps", json_integer((json_int_t)b->reps)) &&
         jset(config, "numerics", json_string(b->deployed ? "deployed" : "exact")) &&
         jset(config, "block_size", json_integer((json_int_t)b->block_size)) &&
         jset(config, "statistic", json_string("minimum over reps")) &&
         jset(config, "linear_caches", json_string(b->warm ? "warm" : "flushed"));
    const struct {
        const char *name;
        int64_t v;
    } dim[] = {{"hidden_size", c->hidden_size},
               {"num_attention_heads", c->num_attention_heads},
               {"q_lora_rank", c->q_lora_rank},
               {"kv_lora_rank", c->kv_lora_rank},
               {"qk_nope_head_dim", c->qk_nope_head_dim},
               {"qk_rope_head_dim", c->qk_rope_head_dim},
               {"v_head_dim", c->v_head_dim},
               {"index_n_heads", c->index_n_heads},
               {"index_head_dim", c->index_head_dim},
               {"index_topk", c->index_topk}};
    for (size_t i = 0; ok && i < sizeof dim / sizeof *dim; i++)
        ok = jset(dims, dim[i].name, json_integer((json_int_t)dim[i].v));
    if (ok) ok = jset(config, "dims", dims), dims = NULL; /* owned by config now (or released) */
    for (int i = 0; ok && i < b->nres; i++) {
        const bench_result *r = &b->res[i];
        json_t *o = json_object();
        ok = o && jset(o, "name", jtext(r->name)) && jset(o, "value", jnum(r->value)) &&
             jset(o, "unit", jtext(r->unit)) &&
             jset(o, "ceiling_name", r->ceiling_name[0] ? jtext(r->ceiling_name) : json_null()) &&
             jset(o, "ceiling_value", r->ceiling_name[0] ? jnum(r->ceiling_value) : json_null()) &&
             jset(o, "ratio", r->ceiling_name[0] ? jnum(r->ratio) : json_null());
        if (!ok) json_decref(o);
        else ok = json_array_append_new(results, o) == 0;
    }
    if (ok) ok = jset(root, "machine", machine), machine = NULL;
    if (ok) ok = jset(root, "config", config), config = NULL;
    if (ok) ok = jset(root, "results", results), results = NULL;
    char *s = ok ? json_dumps(root, JSON_INDENT(1) | JSON_PRESERVE_ORDER) : NULL;
    json_decref(machine), json_decref(config), json_decref(dims), json_decref(results), json_decref(root);
    if (!s) return dsacp_error(DSACP_ENOMEM, "--json: out of memory building the report");
    printf("%s\n", s);
    free(s);
    return DSACP_OK;
}

/* ---- the command ---- */

/* ---- layer prefill ---- */

/* Flops of a prefill of L tokens through one layer, counting multiply-adds as 2: the seven
 * projections, W_UK and W_UV per head, the indexer over pos + 1 keys and sparse MLA over
 * min(topk, pos + 1) keys for every token. The roofline is this at the peak FMA rate. */
static double prefill_flops(const dsacp_config *c, int64_t L)
{
    const double D = (double)c->hidden_size, H = (double)c->num_attention_heads, ql = (double)c->q_lora_rank;
    const double nope = (double)c->qk_nope_head_dim, dr = (double)c->qk_rope_head_dim, dv = (double)c->v_head_dim;
    const double dc = (double)c->kv_lora_rank, Hi = (double)c->index_n_heads, di = (double)c->index_head_dim;
    const double proj = D * ql + ql * H * (nope + dr) + D * (dc + dr) + ql * Hi * di + D * di + D * Hi + H * dv * D;
    const double absorb = H * nope * dc + H * dc * dv;
    double f = 2.0 * (proj + absorb) * (double)L;
    for (int64_t p = 0; p < L; p++) {
        const double n = (double)(p + 1), k = (double)(p + 1 < c->index_topk ? p + 1 : c->index_topk);
        f += (2.0 * Hi * di + Hi) * n + 2.0 * H * k * (dc + dr) + 2.0 * H * k * dc;
    }
    return f;
}

/* One sequence of `context` tokens prefilled in one step (positions 0 .. context-1). */
static int bench_prefill(bench *b, const layer_weights *lw)
{
    const dsacp_config *c = &b->cfg;
    const int64_t L = b->context, D = c->hidden_size, bs = b->block_size;
    dsacp_kv_cache *cache = NULL;
    dsacp_kv_seq seq = {0};
    dsacp_kv_seq *seqp = &seq;
    int64_t *pos = malloc((size_t)L * sizeof *pos);
    int32_t *seqi = calloc((size_t)L, sizeof *seqi);
    float *x = dsacp_alloc((size_t)(L * D) * 4), *out = dsacp_alloc((size_t)(L * D) * 4);
    dsacp_rope rope;
    int rc = (pos && seqi && x && out) ? DSACP_OK : dsacp_error(DSACP_ENOMEM, "out of memory for a %lld-token prefill",
                                                                 (long long)L);
    if (!rc) rc = dsacp_rope_init(&rope, c);
    if (!rc)
        rc = dsacp_kv_cache_create(c, 1, b->deployed ? DSACP_KV_FP8 : DSACP_KV_F32, b->deployed, bs, (L + bs - 1) / bs + 1,
                                   &cache);
    if (!rc) rc = dsacp_kv_reserve(cache, &seq, L);
    if (!rc) {
        for (int64_t i = 0; i < L; i++) pos[i] = i;
        fill_f32(x, L * D, 43, 1);
        layer_arg a = {.ctx = {.cfg = c, .mode = b->deployed ? DSACP_MODE_DEPLOYED : DSACP_MODE_EXACT, .rope = &rope,
                               .cache = cache},
                       .w = &lw->w,
                       .tok = {.T = L, .pos = pos, .seq = seqi, .seqs = &seqp},
                       .x = x,
                       .out = out};
        const double t = time_fn(layer_run, NULL, &a, b->reps < 3 ? b->reps : 3, 0.0, NULL);
        rc = a.rc;
        if (!rc) {
            /* The peak again after the prefill, the higher of the two is the roofline: a prefill
             * takes seconds to minutes, and the machine's speed drifts over that long. */
            int lanes;
            const double again = peak_fma_rate(b, &lanes), peak = again > b->peak_fma ? again : b->peak_fma;
            const double f = prefill_flops(c, L);
            add_result(b, "prefill_layer_time", t * 1e3, "ms", NULL, 0, 0);
            add_result(b, "prefill_layer_tokens_per_s", (double)L / t, "tok/s", NULL, 0, 0);
            if (peak > 0) add_result(b, "peak_fma_after", again, "GFLOP/s", NULL, 0, 0);
            add_rate(b, "prefill_layer_gflops", f / t * 1e-9, "GFLOP/s", peak > 0 ? "peak_fma_max" : NULL, peak);
        }
    }
    if (cache) dsacp_kv_release(cache, &seq);
    dsacp_kv_cache_free(cache);
    free(pos), free(seqi);
    dsacp_free(x), dsacp_free(out);
    return rc;
}

static const char *const kernel_names[] = {"all", "ceilings", "indexer", "topk", "mla", "linear", "layer", "gemm", "prefill", "cp", NULL};

/* The kernels (bit i: kernel_names[i]) that read each flag whose use depends on the kernel; the
 * other flags (--model, --reps, --json, --threads) are read by every kernel, and the CP flags by
 * cp alone. A flag given to a kernel that does not read it is refused: silently ignoring it would
 * report a measurement of something else than asked. */
enum { K_ALL = 1 << 0, K_CEIL = 1 << 1, K_INDEXER = 1 << 2, K_TOPK = 1 << 3, K_MLA = 1 << 4, K_LINEAR = 1 << 5,
       K_LAYER = 1 << 6, K_GEMM = 1 << 7, K_PREFILL = 1 << 8, K_CP = 1 << 9,
       /* --numerics: indexer, topk and mla always run fp8 keys / f32, ceilings no kernel */
       K_NUMERICS = K_ALL | K_LINEAR | K_LAYER | K_GEMM | K_PREFILL | K_CP };
static const struct {
    const char *flag;
    unsigned kernels;
} flag_kernels[] = {
    {"preset", K_ALL | K_CEIL | K_INDEXER | K_TOPK | K_MLA | K_LINEAR | K_LAYER | K_GEMM | K_PREFILL}, /* cp: --model */
    {"context", K_ALL | K_CEIL | K_INDEXER | K_TOPK | K_MLA | K_LAYER | K_PREFILL | K_CP}, /* not linear, gemm */
    {"batch", K_ALL | K_LAYER | K_CP},
    {"numerics", K_NUMERICS},
    {"isa", K_ALL | K_INDEXER | K_TOPK | K_MLA | K_LINEAR | K_LAYER | K_GEMM | K_PREFILL | K_CP}, /* ceilings: none */
    {"block-size", K_ALL | K_LAYER | K_PREFILL | K_CP},
    {"warm", K_ALL | K_LINEAR},
    {"chunk", K_CP},
};

/* Exit status 2 (printed) when a flag is given that kernel `k` (an index of kernel_names) does not read. */
static bool flags_fit_kernel(const cli_opt *opts, int k)
{
    for (size_t i = 0; i < sizeof flag_kernels / sizeof *flag_kernels; i++) {
        if (!cli_get(opts, flag_kernels[i].flag) || (flag_kernels[i].kernels >> k & 1)) continue;
        char users[160] = "";
        size_t n = 0;
        for (int j = 0; kernel_names[j] && n < sizeof users; j++)
            if (flag_kernels[i].kernels >> j & 1)
                n += (size_t)snprintf(users + n, sizeof users - n, "%s%s", n ? ", " : "", kernel_names[j]);
        fprintf(stderr, "dsacp bench: option '--%s' is not read by '--kernel %s' (only by --kernel %s)\n",
                flag_kernels[i].flag, kernel_names[k], users);
        return false;
    }
    return true;
}

/* --isa: the kernels dsacp_isa_set switches to. False (printed) for an unknown name. */
static bool parse_isa(const char *s, dsacp_isa *isa)
{
    if (!strcmp(s, "scalar")) *isa = DSACP_ISA_SCALAR;
    else if (!strcmp(s, "avx2")) *isa = DSACP_ISA_AVX2;
    else if (!strcmp(s, "avx512")) *isa = DSACP_ISA_AVX512;
    else {
        fprintf(stderr, "dsacp bench: option '--isa' must be scalar, avx2 or avx512, got '%s'\n", s);
        return false;
    }
    return true;
}

int cli_bench(int argc, char **argv)
{
    cli_opt opts[] = {{"preset", true, NULL},  {"model", true, NULL},    {"context", true, NULL},
                      {"batch", true, NULL},   {"threads", true, NULL},  {"kernel", true, NULL},
                      {"reps", true, NULL},    {"json", false, NULL},    {"numerics", true, NULL},
                      {"isa", true, NULL},     {"block-size", true, NULL}, {"warm", false, NULL},
                      {"chunk", true, NULL},   CLI_CP_OPTS,
                      {NULL, false, NULL}};
    int parsed = cli_parse(argc, argv, opts);
    if (parsed != CLI_RUN) return parsed;
    const char *s;
    int kernel = 0; /* index of kernel_names */
    if ((s = cli_get(opts, "kernel"))) {
        while (kernel_names[kernel] && strcmp(kernel_names[kernel], s)) kernel++;
        if (!kernel_names[kernel]) {
            fprintf(stderr, "dsacp bench: option '--kernel' must be all, ceilings, indexer, topk, mla, linear, layer, gemm, prefill or cp, "
                            "got '%s'\n", s);
            return 2;
        }
    }
    const bool cp = !strcmp(kernel_names[kernel], "cp");
    if (cp && !cli_get(opts, "model")) {
        fprintf(stderr, "dsacp bench: '--kernel cp' needs '--model DIR' (the engine runs the model's layers)\n");
        return 2;
    }
    if (!flags_fit_kernel(opts, kernel)) return 2;
    /* The context-parallel flags (--comm-report included) belong to --kernel cp: elsewhere they
     * would be silently ignored. */
    static const cli_opt cp_flags[] = {CLI_CP_OPTS, {NULL, false, NULL}};
    for (const cli_opt *f = cp_flags; f->name && !cp; f++)
        if (cli_get(opts, f->name)) {
            fprintf(stderr, "dsacp bench: option '--%s' applies to '--kernel cp' only\n", f->name);
            return 2;
        }
    /* Flags every kernel checks alike, before any work (--kernel cp included). */
    int64_t threads = omp_get_max_threads(), block_size = 64; /* OMP_NUM_THREADS, else every core */
    if ((s = cli_get(opts, "threads")) && !cli_int("bench", "threads", s, 1, 1024, &threads)) return 2;
    if ((s = cli_get(opts, "block-size"))) {
        if (!cli_int("bench", "block-size", s, 1, 1 << 20, &block_size)) return 2;
        if (block_size & (block_size - 1)) {
            fprintf(stderr, "dsacp bench: option '--block-size' = %s must be a power of two\n", s);
            return 2;
        }
    }
    dsacp_isa isa = DSACP_ISA_SCALAR;
    const char *isa_flag = cli_get(opts, "isa");
    if (isa_flag && !parse_isa(isa_flag, &isa)) return 2;
    if (cp) {
        /* the same machine and flags on every rank: the same answer everywhere */
        if (isa_flag) {
            int rc = dsacp_isa_set(isa);
            if (rc) return cli_fail("bench", rc);
        }
        omp_set_num_threads((int)threads);
        openblas_set_num_threads((int)threads);
        return cli_bench_cp(opts);
    }
    bench *b = calloc(1, sizeof *b);
    if (!b) {
        fprintf(stderr, "dsacp bench: out of memory\n");
        return 1;
    }
    int ret = 2;
    b->preset = cli_get(opts, "preset");
    b->model_dir = cli_get(opts, "model");
    b->json = cli_get(opts, "json") != NULL;
    b->warm = cli_get(opts, "warm") != NULL;
    b->context = 32768, b->batch = 1, b->reps = 5, b->block_size = block_size, b->deployed = true;
    b->threads = threads;
    b->kernel = kernel_names[kernel];
    if (!b->preset == !b->model_dir) {
        fprintf(stderr, "dsacp bench: give exactly one of '--preset NAME' and '--model DIR'\n");
        goto out;
    }
    if ((s = cli_get(opts, "context")) && !cli_int("bench", "context", s, 1, 1 << 24, &b->context)) goto out;
    if ((s = cli_get(opts, "batch")) && !cli_int("bench", "batch", s, 1, 1024, &b->batch)) goto out;
    if ((s = cli_get(opts, "reps")) && !cli_int("bench", "reps", s, 1, 1000, &b->reps)) goto out;
    if ((s = cli_get(opts, "numerics"))) {
        if (!strcmp(s, "exact")) b->deployed = false;
        else if (strcmp(s, "deployed")) {
            fprintf(stderr, "dsacp bench: option '--numerics' must be exact or deployed, got '%s'\n", s);
            goto out;
        }
    }
    if (isa_flag) {
        int rc = dsacp_isa_set(isa);
        if (rc) {
            ret = cli_fail("bench", rc);
            goto out;
        }
    }
    int rc;
    if (b->preset) {
        rc = dsacp_preset_config(b->preset, &b->cfg);
        if (rc) {
            cli_fail("bench", rc);
            ret = cli_setup_exit(rc); /* an unknown preset: a bad invocation */
            goto out;
        }
    } else {
        rc = dsacp_model_load(b->model_dir, &b->model);
        if (rc) {
            cli_fail("bench", rc);
            ret = cli_setup_exit(rc); /* a bad model directory: a bad invocation */
            goto out;
        }
        b->cfg = *dsacp_model_config(b->model);
    }
    {
        dsacp_engine_options eo;
        dsacp_engine_options_default(&eo);
        eo.block_size = b->block_size;
        if (!cli_block_size_fits("bench", &eo, &b->cfg, b->preset ? b->preset : b->model_dir)) {
            ret = 2;
            goto out;
        }
    }
    if (b->deployed && (K_NUMERICS >> kernel & 1) && (b->cfg.index_head_dim & (b->cfg.index_head_dim - 1))) {
        fprintf(stderr, "dsacp bench: the deployed numerics need a power-of-two index_head_dim (use '--numerics exact')\n");
        goto out;
    }
    b->loadavg = NAN;
    FILE *la = fopen("/proc/loadavg", "r");
    if (la) {
        if (fscanf(la, "%lf", &b->loadavg) != 1) b->loadavg = NAN;
        fclose(la);
    }
    omp_set_num_threads((int)b->threads);
    openblas_set_num_threads((int)b->threads);
    init_normal_table();

    const char *k = b->kernel;
    bool all = !strcmp(k, "all"), ceil_only = !strcmp(k, "ceilings");
    bool do_index = all || !strcmp(k, "indexer"), do_topk = all || !strcmp(k, "topk");
    bool do_mla = all || !strcmp(k, "mla"), do_linear = all || !strcmp(k, "linear");
    bool do_layer = all || !strcmp(k, "layer"), do_gemm = !strcmp(k, "gemm"), do_prefill = !strcmp(k, "prefill");
    if (!b->json) {
        printf("dsacp bench: %s %s, context %lld, batch %lld, %lld threads, isa %s, %s numerics, min of %lld reps%s\n",
               b->preset ? "preset" : "model", b->preset ? b->preset : b->model_dir, (long long)b->context,
               (long long)b->batch, (long long)b->threads, dsacp_isa_name(dsacp_isa_active()),
               b->deployed ? "deployed" : "exact", (long long)b->reps, b->warm ? ", warm caches" : "");
        if (isfinite(b->loadavg)) printf("cpu: %d cores, load average %.2f at start\n", omp_get_num_procs(), b->loadavg);
        printf("openblas: %s kernels%s%s\n", openblas_get_corename(),
               getenv("OPENBLAS_CORETYPE") ? ", forced by OPENBLAS_CORETYPE=" : " (autodetected)",
               getenv("OPENBLAS_CORETYPE") ? getenv("OPENBLAS_CORETYPE") : "");
        printf("%-28s %12s %-7s %-24s %12s %8s\n", "name", "value", "unit", "ceiling", "ceiling_val", "ratio");
    }
    rc = measure_ceilings(b, all || ceil_only || do_gemm || do_prefill, all || ceil_only || do_linear, all || ceil_only || do_index,
                          all || ceil_only || do_mla);
    if (!rc && (do_index || do_topk)) rc = bench_indexer_topk(b, do_index, do_topk);
    if (!rc && do_mla) rc = bench_mla(b);
    if (!rc && do_gemm) rc = bench_gemm(b);
    if (!rc && (do_linear || do_layer || do_prefill)) {
        layer_weights lw;
        rc = layer_weights_make(b, &lw);
        if (!rc && do_linear) rc = bench_linear(b, &lw);
        if (!rc && do_layer) rc = bench_layer(b, &lw);
        if (!rc && do_prefill) rc = bench_prefill(b, &lw);
        layer_weights_free(&lw);
    }
    if (rc) {
        ret = cli_fail("bench", rc);
        goto out;
    }
    if (b->json && (rc = print_json(b))) {
        ret = cli_fail("bench", rc);
        goto out;
    }
    ret = 0;
out:
    dsacp_model_free(b->model);
    free(b);
    return ret;
}
