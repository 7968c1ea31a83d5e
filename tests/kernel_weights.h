/*
 * kernel_weights.h -- one random N x K weight in the four stored dtypes the kernels read (F32,
 * BF16, F16, F8_E4M3 with blk x blk block scales), for the kernel tests (test_kernels_simd,
 * test_gemm). Values: w uniform in [-1, 1), the FP8 bytes e4m3(400 w), scales 0.0025 (1 + u).
 */
#ifndef DSACP_TEST_KERNEL_WEIGHTS_H
#define DSACP_TEST_KERNEL_WEIGHTS_H

#include "kernels/kernels.h"
#include "numerics/numerics.h"

#include <stdlib.h>

typedef struct kernel_weights {
    float *f32, *scales;
    uint16_t *bf16, *f16;
    uint8_t *fp8;
    dsacp_weight w[4]; /* f32, bf16, f16, fp8 */
} kernel_weights;

static inline void kernel_weights_make(kernel_weights *t, int64_t N, int64_t K, int64_t blk, dsacp_rng *rng)
{
    const int64_t sr = (N + blk - 1) / blk, sc = (K + blk - 1) / blk;
    t->f32 = malloc(sizeof(float) * (size_t)(N * K));
    t->bf16 = malloc(sizeof(uint16_t) * (size_t)(N * K));
    t->f16 = malloc(sizeof(uint16_t) * (size_t)(N * K));
    t->fp8 = malloc((size_t)(N * K));
    t->scales = malloc(sizeof(float) * (size_t)(sr * sc));
    for (int64_t i = 0; i < N * K; i++) {
        t->f32[i] = (float)(2 * dsacp_rng_uniform(rng) - 1);
        t->bf16[i] = dsacp_f32_to_bf16(t->f32[i]);
        t->f16[i] = dsacp_f32_to_f16(t->f32[i]);
        t->fp8[i] = dsacp_f32_to_e4m3(t->f32[i] * 400);
    }
    for (int64_t i = 0; i < sr * sc; i++) t->scales[i] = (float)(0.0025 * (1 + dsacp_rng_uniform(rng)));
    const dsacp_weight w[4] = {
        {.name = "f32", .dtype = DSACP_F32, .ndim = 2, .rows = N, .cols = K, .data = t->f32},
        {.name = "bf16", .dtype = DSACP_BF16, .ndim = 2, .rows = N, .cols = K, .data = t->bf16},
        {.name = "f16", .dtype = DSACP_F16, .ndim = 2, .rows = N, .cols = K, .data = t->f16},
        {.name = "fp8", .dtype = DSACP_F8_E4M3, .ndim = 2, .rows = N, .cols = K, .data = t->fp8, .scale = t->scales,
         .scale_rows = sr, .scale_cols = sc, .scale_stride = sc, .block = blk},
    };
    for (int k = 0; k < 4; k++) t->w[k] = w[k];
}

static inline void kernel_weights_free(kernel_weights *t)
{
    free(t->f32);
    free(t->bf16);
    free(t->f16);
    free(t->fp8);
    free(t->scales);
}

#endif
