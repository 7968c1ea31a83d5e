/*
 * test_bf16gemm.c -- the batched bf16-dot product (src/kernels/gemm_bf16.c) against the scalar
 * model, bitwise: every y[t][o] equals dsacp_bf16dot_scalar(w_o, x_t) on awkward shapes (row and
 * token tails, odd K, K below and across the 16 lanes) and on random, tiny/subnormal and inf/NaN
 * values, on one thread and split over THREADS (the same bits); a short workspace is refused.
 * Needs a CPU whose VDPBF16PS is the model (exit 77, with the reason, elsewhere). First, on every
 * CPU: dispatch.c's dsacp_bf16dot under each ISA this CPU runs gives the model's bits.
 */
#include "test.h"
#include "core/core.h"
#include "kernels/bf16dot.h"

#include <omp.h>
#include <stdint.h>
#include <string.h>

enum { THREADS = 3 }; /* more threads than cores here, and not a divisor of most block counts */

static dsacp_rng rng;

/* A bf16 of the class: 0 moderate, 1 tiny and subnormal (against moderate), 2 some inf/NaN. */
static uint16_t element(int k, bool tiny_side)
{
    const uint64_t u = dsacp_rng_u64(&rng);
    const int e = k == 1 && tiny_side ? -150 + (int)(u % 40) : -6 + (int)(u % 12);
    const uint16_t sign = (uint16_t)((u >> 20 & 1) << 15), m = (uint16_t)(u >> 24 & 0x7F);
    if (k == 2 && u % 97 == 0) return (uint16_t)(0x7F80 | sign | (u >> 40 & 1 ? m : 0));
    if (e < -126) return (uint16_t)(sign | (m ? m : 1));
    return (uint16_t)(sign | (uint16_t)((e + 127) << 7) | m);
}

/* The product on `threads` OpenMP threads. */
static int product(int threads, const void *packed, int64_t N, int64_t K, const uint16_t *x, int64_t T, int64_t ldx,
                   float *y, int64_t ldy, void *ws, size_t wsb)
{
    omp_set_num_threads(threads);
    const int rc = dsacp_bf16gemm(packed, N, K, x, T, ldx, y, ldy, ws, wsb);
    omp_set_num_threads(1);
    return rc;
}

/* One shape: every output against the model (rows padded with a +0 element when K is odd), and
 * the product split over THREADS against the one-thread product. */
static long check_shape(int64_t N, int64_t K, int64_t T, int k)
{
    const int64_t ldw = K + 3, ldx = K + 1, ldy = N + 2, P = (K + 1) / 2;
    uint16_t *w = malloc((size_t)(N * ldw) * sizeof(uint16_t)), *x = malloc((size_t)(T * ldx) * sizeof(uint16_t));
    uint16_t *wr = calloc((size_t)(2 * P), sizeof(uint16_t)), *xr = calloc((size_t)(2 * P), sizeof(uint16_t));
    float *y = malloc((size_t)(T * ldy) * sizeof(float)), *yt = malloc((size_t)(T * ldy) * sizeof(float));
    for (int64_t i = 0; i < N * ldw; i++) w[i] = element(k, true);
    for (int64_t i = 0; i < T * ldx; i++) x[i] = element(k, false);
    void *packed = malloc(dsacp_bf16gemm_pack_bytes(N, K));
    const size_t wsb = dsacp_bf16gemm_ws_bytes(K, T);
    void *ws = malloc(wsb);
    dsacp_bf16gemm_pack(w, N, K, ldw, packed);
    CHECK(dsacp_bf16gemm(packed, N, K, x, T, ldx, y, ldy, ws, wsb - 1) == DSACP_EINVAL);
    CHECK_OK(product(1, packed, N, K, x, T, ldx, y, ldy, ws, wsb));
    CHECK_OK(product(THREADS, packed, N, K, x, T, ldx, yt, ldy, ws, wsb));
    long bad = 0;
    for (int64_t o = 0; o < N; o++) {
        memcpy(wr, w + o * ldw, (size_t)K * sizeof(uint16_t));
        for (int64_t t = 0; t < T; t++) {
            memcpy(xr, x + t * ldx, (size_t)K * sizeof(uint16_t));
            const float want = dsacp_bf16dot_scalar(wr, xr, P);
            if (dsacp_f32_bits(y[t * ldy + o]) != dsacp_f32_bits(want) && bad++ < 3)
                fprintf(stderr, "N %lld K %lld T %lld class %d: y[%lld][%lld] = %08x, model %08x\n", (long long)N,
                        (long long)K, (long long)T, k, (long long)t, (long long)o, dsacp_f32_bits(y[t * ldy + o]),
                        dsacp_f32_bits(want));
            if (dsacp_f32_bits(yt[t * ldy + o]) != dsacp_f32_bits(y[t * ldy + o]) && bad++ < 3)
                fprintf(stderr, "N %lld K %lld T %lld class %d: y[%lld][%lld] = %08x on %d threads, %08x on 1\n",
                        (long long)N, (long long)K, (long long)T, k, (long long)t, (long long)o,
                        dsacp_f32_bits(yt[t * ldy + o]), THREADS, dsacp_f32_bits(y[t * ldy + o]));
        }
    }
    free(w), free(x), free(wr), free(xr), free(y), free(yt), free(packed), free(ws);
    return bad;
}

/* dsacp_bf16dot through each ISA this CPU runs, against the model, on every value class and
 * lengths across the 16 lanes. */
static void check_hook(void)
{
    enum { MAXP = 70 };
    uint16_t a[2 * MAXP], b[2 * MAXP];
    const dsacp_isa was = dsacp_isa_active();
    long bad = 0, dots = 0;
    for (int isa = DSACP_ISA_SCALAR; isa <= (int)dsacp_isa_best(); isa++) {
        CHECK_OK(dsacp_isa_set((dsacp_isa)isa));
        for (int k = 0; k < 3; k++)
            for (int64_t n = 0; n <= MAXP; n += 1 + n / 8, dots++) {
                for (int64_t i = 0; i < 2 * n; i++) a[i] = element(k, true), b[i] = element(k, false);
                if (dsacp_f32_bits(dsacp_bf16dot(a, b, n)) != dsacp_f32_bits(dsacp_bf16dot_scalar(a, b, n)) &&
                    bad++ < 3)
                    fprintf(stderr, "dsacp_bf16dot on %s: n %lld class %d differs from the model\n",
                            dsacp_isa_name((dsacp_isa)isa), (long long)n, k);
            }
    }
    CHECK_OK(dsacp_isa_set(was));
    CHECKF(bad == 0, "%ld of %ld dsacp_bf16dot calls differ from the model", bad, dots);
}

int main(void)
{
    dsacp_rng_seed(&rng, 2024);
    check_hook();
    if (dsacp_bf16dot_hw_level() != DSACP_BF16DOT_HW_ALL) {
        if (test_failures_) return test_finish("test_bf16gemm");
        printf("SKIP: this CPU's VDPBF16PS is not the model (or it has none): the bf16 GEMM does not run here\n");
        return 77;
    }
    dsacp_rng_seed(&rng, 2025);
    static const int64_t shapes[][3] = {{1, 1, 1},   {17, 2, 3},   {32, 31, 6},  {33, 32, 7},  {45, 33, 13},
                                        {64, 64, 1}, {70, 200, 5}, {31, 257, 12}, {96, 513, 8}, {5, 1030, 2},
                                        {257, 130, 9}, {200, 96, 17}};
    long bad = 0, outputs = 0;
    for (int k = 0; k < 3; k++)
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
            bad += check_shape(shapes[s][0], shapes[s][1], shapes[s][2], k);
            outputs += shapes[s][0] * shapes[s][2];
        }
    CHECKF(bad == 0, "%ld of %ld bf16 GEMM outputs differ from the model or across thread counts", bad, outputs);
    printf("bf16 GEMM: %ld outputs checked bitwise against the model, on 1 and %d threads\n", outputs, THREADS);
    return test_finish("test_bf16gemm");
}
