/*
 * test_kernels_alloc.c -- the step path's kernels allocate nothing (issue 21, "one step
 * workspace"). The malloc family is interposed in this executable (the library and the OpenMP
 * runtime resolve to it) and counted while the kernels' workspace forms run on buffers made
 * beforehand: linear (F32, BF16, F16, FP8 with and without act_quant; one token, a few, and enough
 * for the blocked GEMM; shapes large enough to split over threads), index scores (single,
 * packed, multi-query), top-k, sparse MLA (large enough to split its head groups), RMSNorm,
 * gemv_t and the LSE merge. For every ISA this CPU runs, with 1 and 2 OpenMP threads, called at
 * the top level and from inside a parallel region (where a kernel must not open a nested one),
 * after one warm-up round: zero allocations (counted by alloc_count.h). Under AddressSanitizer
 * (which owns malloc) the test is skipped (exit 77); under LLVM's OpenMP runtime, which
 * allocates in every parallel region, the count is printed but not asserted.
 */
#include "test.h"
#include "kernels/kernels.h"
#include "numerics/numerics.h"

#include "alloc_count.h"

#include <omp.h>

#if ALLOC_COUNTING

/* ---- the inputs, made before anything is counted ---- */

/* Linear: N x K weights; the largest call has LIN_T tokens (the blocked GEMM, act_quant split). */
enum { N = 64, K = 1024, LIN_T = 128, NW = 4 };
/* Indexer: Hi heads of di over NK keys, MQ queries; top-k of TK among NK. */
enum { HI = 16, DI = 64, NK = 1000, MQ = 3, TK = 64 };
/* Sparse MLA: H heads (more than one group of 64), n rows of dc + dr; the merge: R parts. */
enum { H = 128, DC = 64, DR = 16, MLA_N = 128, R = 3 };
/* The most threads a run uses. */
enum { THREADS = 2 };

static dsacp_rng rng;
static float frand(void) { return (float)(2 * dsacp_rng_uniform(&rng) - 1); }
static float *frands(size_t n)
{
    float *p = dsacp_alloc(n * sizeof(float));
    for (size_t i = 0; p && i < n; i++) p[i] = frand();
    return p;
}

typedef struct inputs {
    dsacp_weight w[NW];
    float *wf, *x, *y, *scales, *norm_w;
    uint16_t *wb, *wh;
    uint8_t *w8;
    float *q, *qw, *keys, *scores; /* indexer */
    int32_t *sel;
    float *mq, *kv, *o, *lse, *parts, *plse; /* sparse MLA and merge */
    void *ws;
    size_t ws_bytes;
} inputs;

static size_t max_size(size_t a, size_t b) { return a > b ? a : b; }

/* Every buffer, and one workspace large enough for every call below. */
static bool inputs_make(inputs *in)
{
    memset(in, 0, sizeof *in);
    in->wf = frands((size_t)N * K), in->x = frands((size_t)LIN_T * K), in->norm_w = frands(K);
    in->y = dsacp_alloc((size_t)LIN_T * N * sizeof(float));
    in->wb = dsacp_alloc((size_t)N * K * sizeof(uint16_t)), in->wh = dsacp_alloc((size_t)N * K * sizeof(uint16_t));
    in->w8 = dsacp_alloc((size_t)N * K), in->scales = dsacp_alloc((K / 128) * sizeof(float));
    in->q = frands((size_t)MQ * HI * DI), in->qw = frands((size_t)MQ * HI), in->keys = frands((size_t)NK * DI);
    in->scores = dsacp_alloc((size_t)MQ * NK * sizeof(float)), in->sel = dsacp_alloc(TK * sizeof(int32_t));
    in->mq = frands((size_t)H * (DC + DR)), in->kv = frands((size_t)MLA_N * (DC + DR));
    in->o = dsacp_alloc((size_t)H * DC * sizeof(float)), in->lse = dsacp_alloc(H * sizeof(float));
    in->parts = frands((size_t)R * H * DC), in->plse = frands((size_t)R * H);
    if (!in->wf || !in->x || !in->norm_w || !in->y || !in->wb || !in->wh || !in->w8 || !in->scales || !in->q ||
        !in->qw || !in->keys || !in->scores || !in->sel || !in->mq || !in->kv || !in->o || !in->lse || !in->parts ||
        !in->plse)
        return false;
    for (int64_t j = 0; j < K / 128; j++) in->scales[j] = dsacp_ue8m0_scale(1.0f);
    for (size_t i = 0; i < (size_t)N * K; i++) {
        in->wb[i] = dsacp_f32_to_bf16(in->wf[i]), in->wh[i] = dsacp_f32_to_f16(in->wf[i]);
        in->w8[i] = dsacp_f32_to_e4m3(in->wf[i] / in->scales[(i % K) / 128]);
    }
    const dsacp_weight base = {.ndim = 2, .rows = N, .cols = K};
    in->w[0] = base, in->w[0].name = "f32", in->w[0].dtype = DSACP_F32, in->w[0].data = in->wf;
    in->w[1] = base, in->w[1].name = "bf16", in->w[1].dtype = DSACP_BF16, in->w[1].data = in->wb;
    in->w[2] = base, in->w[2].name = "f16", in->w[2].dtype = DSACP_F16, in->w[2].data = in->wh;
    /* FP8 in blocks of 128 (with AVX512-VBMI the table decode). */
    in->w[3] = base, in->w[3].name = "fp8", in->w[3].dtype = DSACP_F8_E4M3, in->w[3].data = in->w8;
    in->w[3].scale = in->scales, in->w[3].scale_rows = 1, in->w[3].scale_cols = K / 128;
    in->w[3].scale_stride = K / 128, in->w[3].block = 128;
    size_t b = dsacp_topk_ws_bytes(NK);
    b = max_size(b, dsacp_sparse_mla_work_bytes(MLA_N, H, DC, DR));
    b = max_size(b, dsacp_index_scores_multi_bytes(MQ, HI, DI));
    b = max_size(b, dsacp_index_query_bytes(HI, DI));
    for (int k = 0; k < NW; k++)
        for (int aq = 0; aq < 2; aq++) b = max_size(b, dsacp_linear_ws_bytes(&in->w[k], LIN_T, aq));
    in->ws_bytes = b;
    in->ws = dsacp_alloc(b);
    return in->ws != NULL;
}

static void inputs_free(inputs *in)
{
    void *p[] = {in->wf, in->x, in->norm_w, in->y, in->wb, in->wh, in->w8, in->scales, in->q, in->qw, in->keys,
                 in->scores, in->sel, in->mq, in->kv, in->o, in->lse, in->parts, in->plse, in->ws};
    for (size_t i = 0; i < sizeof p / sizeof p[0]; i++) dsacp_free(p[i]);
}

/* ---- one round of kernel calls (each thread of a region on its own inputs and workspace) ---- */

static int round_linear(inputs *in)
{
    static const int64_t tokens[] = {1, 4, LIN_T};
    int rc = DSACP_OK;
    for (int k = 0; k < NW && !rc; k++)
        for (int aq = 0; aq < 2 && !rc; aq++)
            for (size_t t = 0; t < sizeof tokens / sizeof tokens[0] && !rc; t++)
                rc = dsacp_linear_ws(&in->w[k], in->x, tokens[t], K, in->y, N, aq, in->ws, in->ws_bytes);
    return rc;
}

static int round_attention(inputs *in)
{
    int rc = dsacp_index_scores_ws(in->q, in->qw, HI, DI, in->keys, NULL, NK, in->scores, in->ws);
    if (!rc) {
        dsacp_index_query_pack(in->q, in->qw, HI, DI, in->ws);
        dsacp_index_scores_packed(in->ws, in->keys, NULL, NK, in->scores);
        rc = dsacp_index_scores_multi_ws(in->q, in->qw, MQ, HI, DI, in->keys, NULL, NK, in->scores, NK, in->ws);
    }
    if (!rc && dsacp_topk_select_ws(in->scores, NK, TK, in->sel, in->ws) != TK)
        rc = dsacp_error(DSACP_EINVAL, "top-k: not %d positions", TK);
    if (!rc) rc = dsacp_sparse_mla_ws(in->mq, in->kv, MLA_N, H, DC, DR, 0.1f, in->o, in->lse, in->ws, in->ws_bytes);
    if (!rc) {
        dsacp_rmsnorm(in->y, in->x, in->norm_w, K, 1e-6);
        dsacp_gemv_t(in->wf, K, in->x, N, K, in->y);
        dsacp_lse_merge(in->parts, in->plse, R, H, DC, in->o, in->lse);
    }
    return rc;
}

static int one_round(inputs *in)
{
    int rc = round_linear(in);
    return rc ? rc : round_attention(in);
}

/* Allocations of `reps` rounds at the top level. */
static long top_level(inputs *in, int reps)
{
    atomic_store(&alloc_count, 0);
    atomic_store(&alloc_counting, true);
    int rc = DSACP_OK;
    for (int r = 0; r < reps && !rc; r++) rc = one_round(in);
    atomic_store(&alloc_counting, false);
    CHECKF(rc == 0, "kernels: %s", dsacp_last_error());
    return atomic_load(&alloc_count);
}

/* Allocations of `reps` rounds on every thread of a region of `threads` (the region's own start
 * is not counted: the barriers keep the count to the kernels). */
static long in_region(inputs *in, int threads, int reps)
{
    atomic_int rc = DSACP_OK;
    atomic_store(&alloc_count, 0);
#pragma omp parallel num_threads(threads)
    {
#pragma omp single
        atomic_store(&alloc_counting, true);
        int mine = DSACP_OK;
        for (int r = 0; r < reps && !mine; r++) mine = one_round(&in[omp_get_thread_num()]);
        if (mine) atomic_store(&rc, mine);
#pragma omp barrier
#pragma omp single
        atomic_store(&alloc_counting, false);
    }
    CHECKF(atomic_load(&rc) == 0, "kernels in a region: %s", dsacp_last_error());
    return atomic_load(&alloc_count);
}

/* in: one set of inputs per thread (THREADS). */
static void check_isa(inputs *in, dsacp_isa isa, bool assert_zero)
{
    if (dsacp_isa_set(isa)) return;
    for (int threads = 1; threads <= THREADS; threads++) {
        omp_set_num_threads(threads);
        /* Warm-up: the runtime's thread pool and anything else a first call sets up. */
        top_level(in, 1);
        in_region(in, threads, 1);
        const long a = top_level(in, 3), b = in_region(in, threads, 3);
        printf("%s, %d thread%s: %ld allocations in 3 rounds at the top level, %ld inside a region\n",
               dsacp_isa_name(isa), threads, threads > 1 ? "s" : "", a, b);
        if (assert_zero) {
            CHECKF(a == 0, "%s, %d threads: %ld allocations at the top level", dsacp_isa_name(isa), threads, a);
            CHECKF(b == 0, "%s, %d threads: %ld allocations inside a region", dsacp_isa_name(isa), threads, b);
        }
    }
}

int main(void)
{
    dsacp_rng_seed(&rng, 21);
    const bool llvm = alloc_llvm_openmp();
    if (llvm) printf("LLVM's OpenMP runtime: allocations counted, zero not asserted\n");
    inputs in[THREADS];
    bool made = true;
    for (int t = 0; t < THREADS; t++) made = inputs_make(&in[t]) && made;
    CHECK(made);
    const dsacp_isa best = dsacp_isa_best();
    for (int isa = DSACP_ISA_SCALAR; made && isa <= (int)best; isa++) check_isa(in, (dsacp_isa)isa, !llvm);
    dsacp_isa_set(best);
    omp_set_num_threads(omp_get_num_procs());
    for (int t = 0; t < THREADS; t++) inputs_free(&in[t]);
    return test_finish("test_kernels_alloc");
}

#else

int main(void)
{
    fprintf(stderr, "test_kernels_alloc: skipped under AddressSanitizer (it owns malloc)\n");
    return 77;
}

#endif
