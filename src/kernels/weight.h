/*
 * weight.h -- the weight view the kernels compute with: a stored-dtype matrix (F32, BF16, F16,
 * or F8_E4M3 with block scales), as src/model maps it from a checkpoint. It sits in src/kernels,
 * below src/model (which includes it and fills the views), so that the kernels do not depend on
 * the loader. Calls core and numerics.
 */
#ifndef DSACP_WEIGHT_H
#define DSACP_WEIGHT_H

#include "core/core.h"

typedef struct dsacp_weight {
    const char *name;   /* canonical name */
    dsacp_dtype dtype;  /* F32, BF16, F16 or F8_E4M3 */
    int ndim;           /* 1 or 2 */
    int64_t rows, cols; /* 1-D: rows = 1, cols = n */
    const void *data;   /* row-major [rows][cols], row stride cols elements (may be unaligned) */
    /* F8_E4M3 only: block scales, F32 [scale_rows][scale_cols] with scale_rows = ceil(rows/128),
     * row stride scale_stride; W[i][j] = e4m3(data[i][j]) * scale[i / block][j / block]. */
    const float *scale;
    int64_t scale_rows, scale_cols, scale_stride, block;
} dsacp_weight;

/* Dequantizes a whole weight to f32, row-major [rows][cols]. */
void dsacp_weight_to_f32(const dsacp_weight *w, float *out);
/* Dequantizes row r (cols values). */
void dsacp_weight_row_f32(const dsacp_weight *w, int64_t r, float *out);

/* The one act-quant predicate: whether a linear over w rounds its input rows through e4m3 in
 * groups of 128 (DeepSeek's act_quant). It applies in the deployed numerics to FP8 weights whose
 * input width is a multiple of 128, and nowhere else; dsacp_linear's act_quant flag is
 * `deployed` and the kernels test this. */
static inline bool dsacp_act_quant_applies(const dsacp_weight *w, bool deployed)
{
    return deployed && w->dtype == DSACP_F8_E4M3 && w->cols % 128 == 0;
}

/* Whether a linear over w runs the bf16-dot chain (docs/numerics.md, "The bf16-dot chain";
 * kernels/linear_bf16.h): deployed numerics on BF16 weights, or on FP8 weights whose blocks are a
 * multiple of 32 columns (whole 16-pair steps per block). Otherwise (F32 and F16 weights, other
 * FP8 blocks, exact mode) the f32 chains run. */
static inline bool dsacp_bf16dot_linear_applies(const dsacp_weight *w, bool deployed)
{
    return deployed && (w->dtype == DSACP_BF16 ||
                        (w->dtype == DSACP_F8_E4M3 && w->block > 0 && w->block % 32 == 0));
}

#endif
