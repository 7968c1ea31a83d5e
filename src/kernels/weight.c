/* weight.c -- the weight view's row decoder (kernels/weight.h): the stored dtype to f32, the
 * reference the kernels' in-register decodes equal. Calls numerics (the e4m3 table, bf16, f16). */
#include "kernels/weight.h"
#include "numerics/numerics.h"

#include <string.h>

void dsacp_weight_row_f32(const dsacp_weight *w, int64_t r, float *out)
{
    const int64_t c = w->cols;
    switch (w->dtype) {
    case DSACP_F32:
        memcpy(out, (const float *)w->data + r * c, (size_t)c * sizeof(float));
        break;
    case DSACP_BF16: {
        const uint16_t *src = (const uint16_t *)w->data + r * c;
        for (int64_t j = 0; j < c; j++) out[j] = dsacp_bf16_to_f32(src[j]);
        break;
    }
    case DSACP_F16: {
        const uint16_t *src = (const uint16_t *)w->data + r * c;
        for (int64_t j = 0; j < c; j++) out[j] = dsacp_f16_to_f32(src[j]);
        break;
    }
    case DSACP_F8_E4M3: {
        const uint8_t *src = (const uint8_t *)w->data + r * c;
        const float *lut = dsacp_e4m3_table();
        const float *srow = w->scale + (r / w->block) * w->scale_stride;
        for (int64_t j = 0; j < c; j++) out[j] = lut[src[j]] * srow[j / w->block];
        break;
    }
    default:
        memset(out, 0, (size_t)c * sizeof(float));
    }
}

void dsacp_weight_to_f32(const dsacp_weight *w, float *out)
{
    for (int64_t r = 0; r < w->rows; r++) dsacp_weight_row_f32(w, r, out + r * w->cols);
}
