/*
 * test_bf16gemm.c -- the batched bf16-dot product (src/kernels/gemm_bf16.c) against the scalar
 * model, bitwise: every y[t][o] equals dsacp_bf16dot_scalar(w_o, x_t) on awkward shapes (row and
 * token tails, odd K, K below and across the 16 lanes) and on random, tiny/subnormal and inf/NaN
 * values; a short workspace is refused. Needs a CPU whose VDPBF16PS is the model (exit 77, with
 * the reason, elsewhere).
 */
#include "test.h"
#include "core/core.h"
#include "kernels/bf16dot.h"

#include <stdint.h>
#include <string.h>

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

/* One shape: every output against the model (rows padded with a +0 element when K is odd). */
static long check_shape(int64_t N, int64_t K, int64_t T, int k)
{
    const int64_t ldw = K + 3, ldx = K + 1, ldy = N + 2, P = (K + 1) / 2;
    uint16_t *w = malloc((size_t)(N * ldw) * sizeof(uint16_t)), *x = malloc((size_t)(T * ldx) * sizeof(uint16_t));
    uint16_t *wr = calloc((size_t)(2 * P), sizeof(uint16_t)), *xr = calloc((size_t)(2 * P), sizeof(uint16_t));
    float *y = malloc((size_t)(T * ldy) * sizeof(float));
    for (int64_t i = 0; i < N * ldw; i++) w[i] = element(k, true);
    for (int64_t i = 0; i < T * ldx; i++) x[i] = element(k, false);
    void *packed = malloc(dsacp_bf16gemm_pack_bytes(N, K));
    const size_t wsb = dsacp_bf16gemm_ws_bytes(K, T);
    void *ws = malloc(wsb);
    dsacp_bf16gemm_pack(w, N, K, ldw, packed);
    CHECK(dsacp_bf16gemm(packed, N, K, x, T, ldx, y, ldy, ws, wsb - 1) == DSACP_EINVAL);
    CHECK_OK(dsacp_bf16gemm(packed, N, K, x, T, ldx, y, ldy, ws, wsb));
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
        }
    }
    free(w), free(x), free(wr), free(xr), free(y), free(packed), free(ws);
    return bad;
}

int main(void)
{
    if (dsacp_bf16dot_hw_level() != DSACP_BF16DOT_HW_ALL) {
        printf("SKIP: this CPU's VDPBF16PS is not the model (or it has none): the bf16 GEMM does not run here\n");
        return 77;
    }
    dsacp_rng_seed(&rng, 2025);
    static const int64_t shapes[][3] = {{1, 1, 1},   {17, 2, 3},   {32, 31, 6},  {33, 32, 7},  {45, 33, 13},
                                        {64, 64, 1}, {70, 200, 5}, {31, 257, 12}, {96, 513, 8}, {5, 1030, 2}};
    long bad = 0, outputs = 0;
    for (int k = 0; k < 3; k++)
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
            bad += check_shape(shapes[s][0], shapes[s][1], shapes[s][2], k);
            outputs += shapes[s][0] * shapes[s][2];
        }
    CHECKF(bad == 0, "%ld of %ld bf16 GEMM outputs differ from the model", bad, outputs);
    printf("bf16 GEMM: %ld outputs checked bitwise against the model\n", outputs);
    return test_finish("test_bf16gemm");
}
