/* api/model_info.c -- dsacp_model_tensor_info (dsacp_io.h): a model's stored tensors as plain
 * facts (name, dtype, shape, bytes) without the kernels' weight view. Calls model and core. */
#include "model/model.h"

#include "dsacp_io.h"

int dsacp_model_tensor_info(const dsacp_model *m, int64_t i, dsacp_tensor_info *out)
{
    if (i < 0 || i >= dsacp_model_weight_count(m))
        return dsacp_error(DSACP_ERANGE, "dsacp_model_tensor_info: i = %lld is outside [0, %lld)", (long long)i,
                           (long long)dsacp_model_weight_count(m));
    const dsacp_weight *w = dsacp_model_weight_at(m, i);
    const bool fp8 = w->dtype == DSACP_F8_E4M3;
    *out = (dsacp_tensor_info){.name = w->name, .dtype = w->dtype, .ndim = w->ndim, .rows = w->rows, .cols = w->cols,
                               .scale_rows = fp8 ? w->scale_rows : 0, .scale_cols = fp8 ? w->scale_cols : 0};
    out->bytes = w->rows * w->cols * (int64_t)dsacp_dtype_size(w->dtype) +
                 out->scale_rows * out->scale_cols * (int64_t)sizeof(float);
    return DSACP_OK;
}
