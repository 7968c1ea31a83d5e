/*
 * act_quant.c -- deployed mode's activation rounding of FP8 linears' inputs (DeepSeek's act_quant:
 * e4m3 in groups of 128, power-of-two scales) into the caller's workspace, shared by the f32
 * linears (kernels_linear.c) and the bf16-dot ones (linear_bf16.c), and the linears' short-
 * workspace error. Calls numerics and kernels_threads.c.
 */
#include "kernels/linear_bf16.h"
#include "numerics/numerics.h"

#include <string.h>

void dsacp_quant_rows_scalar(float *x, int64_t n) { dsacp_fake_quant_e4m3_groups(x, n, 128); }

size_t dsacp_linear_act_quant_bytes(const dsacp_weight *w, int64_t T, bool act_quant)
{
    if (!dsacp_act_quant_applies(w, act_quant) || T <= 0) return 0;
    return dsacp_ws_round(dsacp_ws_mul(dsacp_ws_mul((size_t)T, (size_t)w->cols), sizeof(float)));
}

typedef struct aq_job {
    const float *x;
    int64_t ldx, K;
    float *xq;
    dsacp_quant_rows_fn quant;
} aq_job;

static void aq_row(void *ctx, int64_t t)
{
    const aq_job *j = ctx;
    memcpy(j->xq + t * j->K, j->x + t * j->ldx, (size_t)j->K * sizeof(float));
    j->quant(j->xq + t * j->K, j->K);
}

/* x rows rounded through `quant` (e4m3, groups of 128) into xq [T][K]. */
static void act_quant_rows(const float *x, int64_t T, int64_t ldx, int64_t K, float *xq, dsacp_quant_rows_fn quant)
{
    /* Rows are independent: split them over the threads when the call is large enough. */
    aq_job j = {x, ldx, K, xq, quant};
    dsacp_parallel_for(T, T * K >= (1 << 17), aq_row, &j);
}

int dsacp_linear_short_ws(const dsacp_weight *w, size_t have, size_t need)
{
    return dsacp_error(DSACP_EINVAL, "linear %s: workspace of %zu bytes, %zu needed", w->name ? w->name : "", have,
                       need);
}

const float *dsacp_linear_act_quant_input(const dsacp_weight *w, const float *x, int64_t T, int64_t ldx, bool act_quant,
                                    dsacp_quant_rows_fn quant, dsacp_ws *s, int64_t *ldout)
{
    *ldout = ldx;
    const size_t bytes = dsacp_linear_act_quant_bytes(w, T, act_quant);
    if (!bytes) return x;
    float *xq = dsacp_ws_take(s, bytes);
    if (!xq) return NULL;
    act_quant_rows(x, T, ldx, w->cols, xq, quant);
    *ldout = w->cols;
    return xq;
}

