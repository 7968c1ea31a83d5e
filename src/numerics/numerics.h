/*
 * numerics -- scalar number formats and the small transforms of DSA (docs/dsa-math.md sections 4-5):
 * bf16, f16 and FP8 e4m3 conversion, per-group FP8 quantization with power-of-two (ue8m0)
 * scales, the scaled fast Walsh-Hadamard transform, and YaRN RoPE (tables and both ways of
 * applying them). Pure functions over plain buffers; calls only core.
 *
 * The conversions use integer code only and this module must never be built with
 * -ffast-math (it would flush the e4m3 subnormals); numerics.c refuses to compile if it is.
 */
#ifndef DSACP_NUMERICS_H
#define DSACP_NUMERICS_H

#include "core/core.h"

#include <stdint.h>
#include <string.h>

/* ---- scalar formats ---- */

/* The bits of a float, and the float of bits (what every format conversion starts from). */
static inline uint32_t dsacp_f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}
static inline float dsacp_f32_of_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* fp32 -> bf16, round to nearest even; NaN stays NaN (quiet), inf stays inf. */
uint16_t dsacp_f32_to_bf16(float x);
float dsacp_bf16_to_f32(uint16_t x);
/* IEEE half. */
uint16_t dsacp_f32_to_f16(float x);
float dsacp_f16_to_f32(uint16_t x);
/* fp32 -> e4m3fn: round to nearest even, saturate to +-448 (inf too), NaN -> 0x7F / 0xFF
 * (sign kept). Subnormals down to 2^-9 are produced exactly. */
uint8_t dsacp_f32_to_e4m3(float x);
float dsacp_e4m3_to_f32(uint8_t x);
/* The 256-entry decode table (a compile-time constant). */
const float *dsacp_e4m3_table(void);

/* ---- group quantization (docs/dsa-math.md section 5, "deployed") ---- */

#define DSACP_FP8_MAX 448.0f

/* The power-of-two scale of a group: s = 2^ceil(log2(max(amax, 1e-4) / 448)), exact
 * (computed from the float's exponent bits, no libm rounding). */
float dsacp_ue8m0_scale(float amax);
/* Quantizes n values in groups of `group` (n % group == 0):
 * scales[g] = dsacp_ue8m0_scale(max |x| in group g), q[i] = e4m3(clamp(x[i]/s, +-448)).
 * x / s is exact because s is a power of two. */
void dsacp_quant_e4m3_groups(const float *x, int64_t n, int64_t group, uint8_t *q, float *scales);
/* x[i] = e4m3_to_f32(q[i]) * scales[i / group]. */
void dsacp_dequant_e4m3_groups(const uint8_t *q, const float *scales, int64_t n, int64_t group,
                               float *x);
/* Rounds x in place through quantize + dequantize (the value a fp8 cache would give back). */
void dsacp_fake_quant_e4m3_groups(float *x, int64_t n, int64_t group);

/* ---- cache entry formats (docs/dsa-math.md section 6) ----
 * Bytes of one token's entry: the MLA latent [dc] c and [dr] k_pe in F32, BF16, or fp8_ds_mla
 * (dc e4m3, one F32 scale per 128 of c, dr BF16: 656 for V3.2); the indexer key [di] in F32, or
 * e4m3 plus one F32 scale. The one formula: the paged cache lays its blocks out with it, and
 * dsacp_mla_cache_bytes_per_token / dsacp_index_cache_bytes_per_token give it for a config. */
int64_t dsacp_mla_entry_bytes(int64_t dc, int64_t dr, dsacp_kv_dtype dtype);
int64_t dsacp_index_entry_bytes(int64_t di, dsacp_kv_dtype dtype);

/* ---- Hadamard ---- */

/* In-place x <- H_n x * n^-0.5, H_n the Sylvester-order Hadamard matrix
 * (H[i][j] = (-1)^popcount(i & j)); n must be a power of two. */
void dsacp_hadamard(float *x, int64_t n);

/* ---- RoPE ---- */

typedef struct dsacp_rope {
    int64_t dim;             /* rope dims (qk_rope_head_dim), even */
    double attention_factor; /* multiplier of cos and sin (transformers' yarn attention_factor) */
    double inv_freq[256];    /* dim/2 frequencies */
} dsacp_rope;

/* Frequencies from the config (docs/dsa-math.md section 4, transformers' yarn rules: correction
 * range floor/ceil, clamped to [0, dim-1]; high += 0.001 when low == high). */
int dsacp_rope_init(dsacp_rope *rope, const dsacp_config *cfg);
/* cos[i] = cos(pos * inv_freq[i]) * attention_factor, same for sin; i < dim/2. The angle is
 * computed in double. */
void dsacp_rope_cos_sin(const dsacp_rope *rope, int64_t pos, float *cos_out, float *sin_out);
/* Interleaved pairs (2i, 2i+1) -- MLA q_pe / k_pe:
 * (x0, x1) <- (x0 c - x1 s, x0 s + x1 c). */
void dsacp_rope_apply_interleaved(float *x, int64_t dim, const float *cos_t, const float *sin_t);
/* Rotate-half pairs (i, i + dim/2) -- indexer q / k (first `dim` dims of the head). */
void dsacp_rope_apply_rotate_half(float *x, int64_t dim, const float *cos_t, const float *sin_t);

/* m(f, x) = 0.1 x ln f + 1, or 1 when f <= 1 (yarn "get_mscale"). */
double dsacp_yarn_mscale(double factor, double mscale);

#endif
