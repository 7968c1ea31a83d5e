/* api/linear.c -- dsacp_linear_f32 (dsacp_util.h): the engine's linear kernel on a caller's F32
 * matrix, for tools that measure what decode's matrix-vector products cost. Calls kernels. */
#include "kernels/kernels.h"

#include "dsacp_util.h"

int dsacp_linear_f32(const float *w, int64_t rows, int64_t cols, const float *x, float *y)
{
    if (!w || !x || !y) return dsacp_error(DSACP_EINVAL, "dsacp_linear_f32: w, x and y must not be NULL");
    if (rows < 1 || cols < 1)
        return dsacp_error(DSACP_EINVAL, "dsacp_linear_f32: rows (%lld) and cols (%lld) must be >= 1", (long long)rows,
                           (long long)cols);
    const dsacp_weight view = {.name = "dsacp_linear_f32", .dtype = DSACP_F32, .ndim = 2, .rows = rows, .cols = cols,
                               .data = w};
    return dsacp_linear(&view, x, 1, cols, y, rows, false);
}
