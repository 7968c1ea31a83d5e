/*
 * numerics -- bf16 / f16 / FP8 e4m3 conversion, ue8m0 group quantization, the scaled
 * Walsh-Hadamard transform and YaRN RoPE (docs/dsa-math.md sections 4 and 5).
 *
 * Every rounding decision below is made on the integer bit patterns (round to nearest, ties
 * to even), so the results do not depend on the FPU rounding mode, x87 excess precision or
 * the compiler's floating-point contraction.
 */
#include "numerics/numerics.h"

#include <assert.h>
#include <math.h>
#include <string.h>

#if defined(__FAST_MATH__)
#error "numerics.c must not be built with -ffast-math (it flushes e4m3 subnormals and breaks NaN handling)"
#endif


/* Shifts `v` right by `shift` (1..31) bits, rounding to nearest, ties to even. */
static inline uint32_t shift_rne(uint32_t v, unsigned shift)
{
    uint32_t q = v >> shift;
    uint32_t rem = v & ((1u << shift) - 1u);
    uint32_t half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (q & 1u)))
        q++;
    return q;
}

/* The magnitude bits of a finite |x| (bit pattern a, below the target's overflow) in a smaller
 * binary float format with `mbits` mantissa bits and smallest normal exponent `emin` (bias
 * 1 - emin), rounded to nearest even. In the normal range: rebias and round the mantissa 23 ->
 * mbits bits (a carry moves into the exponent). Below it: round(|x| * 2^(mbits - emin)) as an
 * integer, the subnormal codes (the largest rounds up to the smallest normal's code). Float
 * subnormals are far below either format's smallest subnormal: zero. f16 and e4m3 share it. */
static inline uint32_t narrow_magnitude(uint32_t a, int mbits, int emin)
{
    const unsigned drop = (unsigned)(23 - mbits);
    if (a >= (uint32_t)(127 + emin) << 23) return shift_rne(a - ((uint32_t)(127 - (1 - emin)) << 23), drop);
    if (a < 0x00800000u) return 0;
    const int e = (int)(a >> 23) - 127; /* < emin */
    const uint32_t sig = (a & 0x007FFFFFu) | 0x00800000u;
    const unsigned shift = drop + (unsigned)(emin - e); /* |x| * 2^(mbits - emin) = sig >> shift */
    return shift > 24 ? 0 : shift_rne(sig, shift);      /* sig < 2^24: below half the smallest code */
}

/* ---- bf16 ---- */

uint16_t dsacp_f32_to_bf16(float x)
{
    uint32_t b = dsacp_f32_bits(x);
    if ((b & 0x7FFFFFFFu) > 0x7F800000u) /* NaN: keep sign and top payload, force quiet */
        return (uint16_t)((b >> 16) | 0x0040u);
    /* Round to nearest even on the low 16 bits; a carry runs into the exponent, which gives
     * the right answer at binade edges and overflows finite values to inf. inf stays inf. */
    b += 0x7FFFu + ((b >> 16) & 1u);
    return (uint16_t)(b >> 16);
}

float dsacp_bf16_to_f32(uint16_t x)
{
    return dsacp_f32_of_bits((uint32_t)x << 16);
}

/* ---- IEEE half ---- */

uint16_t dsacp_f32_to_f16(float x)
{
    uint32_t b = dsacp_f32_bits(x);
    uint16_t sign = (uint16_t)((b >> 16) & 0x8000u);
    uint32_t a = b & 0x7FFFFFFFu;
    if (a > 0x7F800000u) /* NaN: quiet, top payload bits kept */
        return (uint16_t)(sign | 0x7E00u | ((a >> 13) & 0x03FFu));
    if (a >= 0x47800000u) /* >= 65536 (and inf): inf */
        return (uint16_t)(sign | 0x7C00u);
    return (uint16_t)(sign | narrow_magnitude(a, 10, -14)); /* from 2^-14 normal; 0x7C00 (inf) from 65520 */
}

float dsacp_f16_to_f32(uint16_t x)
{
    uint32_t sign = (uint32_t)(x & 0x8000u) << 16;
    uint32_t exp = (x >> 10) & 0x1Fu;
    uint32_t man = x & 0x03FFu;
    if (exp == 0x1Fu) /* inf / NaN (payload kept) */
        return dsacp_f32_of_bits(sign | 0x7F800000u | (man << 13));
    if (exp != 0)
        return dsacp_f32_of_bits(sign | ((exp + 127u - 15u) << 23) | (man << 13));
    if (man == 0)
        return dsacp_f32_of_bits(sign);
    /* subnormal: man * 2^-24; normalise so the leading one lands in bit 10 */
    int e = -14;
    while (!(man & 0x0400u)) {
        man <<= 1;
        e--;
    }
    man &= 0x03FFu;
    return dsacp_f32_of_bits(sign | ((uint32_t)(e + 127) << 23) | (man << 13));
}

/* ---- FP8 e4m3fn ---- */

/* Magnitude of the 7-bit code c (0..0x7E) as a constant expression:
 * exponent field E = c >> 3, mantissa m = c & 7;
 * E == 0: m * 2^-9 (subnormal); else (8 + m) * 2^(E - 10) = (1 + m/8) * 2^(E - 7). */
#define E4M3_MAG_(c)                                                  \
    (((c) >> 3) == 0 ? (float)((c) & 7) * 0x1p-9f                     \
                     : (float)((8 + ((c) & 7)) * (1 << ((c) >> 3))) * 0x1p-10f)
#define E4M3_VAL_(c)                                                   \
    (((c) & 0x7F) == 0x7F ? (((c) & 0x80) ? -NAN : NAN)                \
                          : (((c) & 0x80) ? -E4M3_MAG_((c) & 0x7F) : E4M3_MAG_((c) & 0x7F)))
#define E4M3_X4_(c) E4M3_VAL_(c), E4M3_VAL_((c) + 1), E4M3_VAL_((c) + 2), E4M3_VAL_((c) + 3)
#define E4M3_X16_(c) E4M3_X4_(c), E4M3_X4_((c) + 4), E4M3_X4_((c) + 8), E4M3_X4_((c) + 12)
#define E4M3_X64_(c) E4M3_X16_(c), E4M3_X16_((c) + 16), E4M3_X16_((c) + 32), E4M3_X16_((c) + 48)

/* The decode table is a compile-time constant, so it needs no run-time initialisation at all
 * (trivially thread-safe). */
static const float e4m3_table[256] = {E4M3_X64_(0), E4M3_X64_(64), E4M3_X64_(128),
                                      E4M3_X64_(192)};

const float *dsacp_e4m3_table(void)
{
    return e4m3_table;
}

float dsacp_e4m3_to_f32(uint8_t x)
{
    return e4m3_table[x];
}

uint8_t dsacp_f32_to_e4m3(float x)
{
    uint32_t b = dsacp_f32_bits(x);
    uint8_t sign = (uint8_t)((b >> 24) & 0x80u);
    uint32_t a = b & 0x7FFFFFFFu;
    if (a > 0x7F800000u) /* NaN */
        return (uint8_t)(sign | 0x7Fu);
    if (a >= 0x43E00000u) /* >= 448 (inf too): saturate to the largest finite value */
        return (uint8_t)(sign | 0x7Eu);
    /* Below 448 the result is at most 0x7E (448 itself), never the NaN code. */
    return (uint8_t)(sign | narrow_magnitude(a, 3, -6)); /* from 2^-6 normal */
}

/* ---- cache entry formats ---- */

int64_t dsacp_mla_entry_bytes(int64_t dc, int64_t dr, dsacp_kv_dtype dtype)
{
    switch (dtype) {
    case DSACP_KV_F32: return (dc + dr) * (int64_t)sizeof(float);
    case DSACP_KV_BF16: return (dc + dr) * (int64_t)sizeof(uint16_t);
    case DSACP_KV_FP8: return dc + (int64_t)sizeof(float) * ((dc + 127) / 128) + (int64_t)sizeof(uint16_t) * dr;
    }
    return 0;
}

int64_t dsacp_index_entry_bytes(int64_t di, dsacp_kv_dtype dtype)
{
    return dtype == DSACP_KV_FP8 ? di + (int64_t)sizeof(float) : di * (int64_t)sizeof(float);
}

/* ---- group quantization ---- */

float dsacp_ue8m0_scale(float amax)
{
    /* As the official kernels: amax clamped to 1e-4 (a NaN amax takes the floor too), ratio in
     * fp32, then the smallest power of two >= ratio from the exponent bits. (The kernels
     * multiply by fp32(1/448) instead of dividing; over every fp32 amax >= 1e-4 the rounded
     * power of two is the same, checked exhaustively.) */
    if (!(amax >= 1e-4f))
        amax = 1e-4f;
    float ratio = amax / DSACP_FP8_MAX; /* >= 2.2e-7: a normal float */
    uint32_t b = dsacp_f32_bits(ratio);
    int e = (int)((b >> 23) & 0xFFu) - 127 + ((b & 0x007FFFFFu) != 0);
    if (e > 127) /* inf amax: saturate the scale at 2^127 instead of returning inf */
        e = 127;
    return dsacp_f32_of_bits((uint32_t)(e + 127) << 23);
}

/* max |x[i]| of a group, NaN skipped (`v > amax` is false for NaN). */
static float group_amax(const float *x, int64_t group)
{
    float amax = 0.0f;
    for (int64_t i = 0; i < group; i++) {
        float v = fabsf(x[i]);
        if (v > amax)
            amax = v;
    }
    return amax;
}

void dsacp_quant_e4m3_groups(const float *x, int64_t n, int64_t group, uint8_t *q, float *scales)
{
    assert(group > 0 && n >= 0 && n % group == 0);
    for (int64_t g = 0; g * group < n; g++) {
        const float *xg = x + g * group;
        float s = dsacp_ue8m0_scale(group_amax(xg, group));
        scales[g] = s;
        for (int64_t i = 0; i < group; i++) {
            float v = xg[i] / s; /* exact: s is a power of two and v stays normal or tiny */
            if (v > DSACP_FP8_MAX)
                v = DSACP_FP8_MAX;
            else if (v < -DSACP_FP8_MAX)
                v = -DSACP_FP8_MAX;
            q[g * group + i] = dsacp_f32_to_e4m3(v);
        }
    }
}

void dsacp_dequant_e4m3_groups(const uint8_t *q, const float *scales, int64_t n, int64_t group,
                               float *x)
{
    assert(group > 0 && n >= 0 && n % group == 0);
    for (int64_t i = 0; i < n; i++)
        x[i] = e4m3_table[q[i]] * scales[i / group];
}

void dsacp_fake_quant_e4m3_groups(float *x, int64_t n, int64_t group)
{
    assert(group > 0 && n >= 0 && n % group == 0);
    enum { CHUNK = 512 };
    uint8_t qbuf[CHUNK];
    /* One group at a time (a group may be larger than the buffer: then in chunks of it). */
    for (int64_t g = 0; g * group < n; g++) {
        float *xg = x + g * group;
        float s = dsacp_ue8m0_scale(group_amax(xg, group));
        for (int64_t i0 = 0; i0 < group; i0 += CHUNK) {
            int64_t len = group - i0 < CHUNK ? group - i0 : CHUNK;
            for (int64_t i = 0; i < len; i++) {
                float v = xg[i0 + i] / s;
                if (v > DSACP_FP8_MAX)
                    v = DSACP_FP8_MAX;
                else if (v < -DSACP_FP8_MAX)
                    v = -DSACP_FP8_MAX;
                qbuf[i] = dsacp_f32_to_e4m3(v);
            }
            for (int64_t i = 0; i < len; i++)
                xg[i0 + i] = e4m3_table[qbuf[i]] * s;
        }
    }
}

/* ---- Hadamard ---- */

void dsacp_hadamard(float *x, int64_t n)
{
    assert(n >= 1 && (n & (n - 1)) == 0);
    for (int64_t h = 1; h < n; h *= 2) {
        for (int64_t i = 0; i < n; i += 2 * h) {
            for (int64_t j = i; j < i + h; j++) {
                float a = x[j], b = x[j + h];
                x[j] = a + b;
                x[j + h] = a - b;
            }
        }
    }
    float scale = (float)(1.0 / sqrt((double)n));
    for (int64_t i = 0; i < n; i++)
        x[i] *= scale;
}

/* ---- RoPE ---- */

double dsacp_yarn_mscale(double factor, double mscale)
{
    if (factor <= 1.0)
        return 1.0;
    return 0.1 * mscale * log(factor) + 1.0;
}

static double yarn_correction_dim(double rotations, double dim, double base, double orig)
{
    return dim * log(orig / (rotations * 2.0 * 3.14159265358979323846)) / (2.0 * log(base));
}

int dsacp_rope_init(dsacp_rope *rope, const dsacp_config *cfg)
{
    int64_t dim = cfg->qk_rope_head_dim;
    if (dim <= 0 || dim % 2 != 0 || dim > 512) /* inv_freq holds 256 */
        return dsacp_error(DSACP_EINVAL, "rope: qk_rope_head_dim %lld must be even and in [2, 512]",
                           (long long)dim);
    double base = cfg->rope_theta;
    if (!(base > 0.0) || !isfinite(base))
        return dsacp_error(DSACP_EINVAL, "rope: rope_theta %g must be finite and positive", base);
    if (cfg->rope_type == DSACP_ROPE_YARN) {
        if (base == 1.0)
            return dsacp_error(DSACP_EINVAL, "rope: yarn needs rope_theta != 1");
        if (!(cfg->rope_factor > 0.0) || !isfinite(cfg->rope_factor))
            return dsacp_error(DSACP_EINVAL, "rope: yarn factor %g must be finite and positive",
                               cfg->rope_factor);
        if (!(cfg->rope_original_max_position > 0.0))
            return dsacp_error(DSACP_EINVAL,
                               "rope: yarn original_max_position_embeddings %g must be positive",
                               cfg->rope_original_max_position);
        if (!(cfg->rope_beta_fast > 0.0) || !(cfg->rope_beta_slow > 0.0))
            return dsacp_error(DSACP_EINVAL, "rope: yarn beta_fast %g / beta_slow %g must be positive",
                               cfg->rope_beta_fast, cfg->rope_beta_slow);
    } else if (cfg->rope_type != DSACP_ROPE_DEFAULT) {
        return dsacp_error(DSACP_EINVAL, "rope: unknown rope type %d", (int)cfg->rope_type);
    }

    memset(rope, 0, sizeof *rope);
    rope->dim = dim;
    double af = cfg->rope_attention_factor;
    rope->attention_factor = af == 0.0 ? 1.0 : af;

    int64_t half = dim / 2;
    for (int64_t i = 0; i < half; i++) /* theta_i = 1 / base^(2i/dim), as transformers writes it */
        rope->inv_freq[i] = 1.0 / pow(base, (double)(2 * i) / (double)dim);

    if (cfg->rope_type == DSACP_ROPE_YARN) {
        /* transformers' _compute_yarn_parameters (truncate = true): the correction range is
         * floor/ceil'd, then clamped to [0, dim - 1] (dim = the full rope dim, as transformers
         * does; a clamp at rope/2-1, as some write it, differs only for configs where the range
         * exceeds dim/2 - 1 -- not V3.2, whose range is [10, 23]). */
        double factor = cfg->rope_factor, orig = cfg->rope_original_max_position;
        double low = floor(yarn_correction_dim(cfg->rope_beta_fast, (double)dim, base, orig));
        double high = ceil(yarn_correction_dim(cfg->rope_beta_slow, (double)dim, base, orig));
        if (low < 0.0)
            low = 0.0;
        if (high > (double)(dim - 1))
            high = (double)(dim - 1);
        if (low == high)
            high += 0.001; /* transformers: "prevent singularity" */
        for (int64_t i = 0; i < half; i++) {
            double ramp = ((double)i - low) / (high - low);
            if (ramp < 0.0)
                ramp = 0.0;
            else if (ramp > 1.0)
                ramp = 1.0;
            /* (named after transformers: interpolation * (1 - extrapolation_factor) +
             * extrapolation * extrapolation_factor, extrapolation_factor = 1 - ramp) */
            double theta = rope->inv_freq[i];
            rope->inv_freq[i] = theta / factor * ramp + theta * (1.0 - ramp);
        }
    }
    return DSACP_OK;
}

void dsacp_rope_cos_sin(const dsacp_rope *rope, int64_t pos, float *cos_out, float *sin_out)
{
    int64_t half = rope->dim / 2;
    double af = rope->attention_factor;
    for (int64_t i = 0; i < half; i++) {
        double angle = (double)pos * rope->inv_freq[i];
        cos_out[i] = (float)(cos(angle) * af);
        sin_out[i] = (float)(sin(angle) * af);
    }
}

void dsacp_rope_apply_interleaved(float *x, int64_t dim, const float *cos_t, const float *sin_t)
{
    for (int64_t i = 0; i < dim / 2; i++) {
        float x0 = x[2 * i], x1 = x[2 * i + 1];
        float c = cos_t[i], s = sin_t[i];
        x[2 * i] = x0 * c - x1 * s;
        x[2 * i + 1] = x0 * s + x1 * c;
    }
}

void dsacp_rope_apply_rotate_half(float *x, int64_t dim, const float *cos_t, const float *sin_t)
{
    int64_t h = dim / 2;
    for (int64_t i = 0; i < h; i++) {
        float x0 = x[i], x1 = x[i + h];
        float c = cos_t[i], s = sin_t[i];
        x[i] = x0 * c - x1 * s;
        x[i + h] = x1 * c + x0 * s;
    }
}
