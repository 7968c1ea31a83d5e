/*
 * bf16dot.c -- the scalar model of the bf16-dot chain (bf16dot.h; docs/numerics.md, "The bf16-dot
 * chain"): one VDPBF16PS accumulation step as measured on an Intel Xeon with AVX512-BF16 (DAZ on
 * every input, one rounding per product added, FTZ with tininess after rounding, MXCSR ignored),
 * the pair (high product first), the 16-lane dot and its reduction, and the rounding of
 * activations to bf16. NaNs are resolved by explicit rules, never by what the compiler's choice
 * of operand order would give. Assumes the default floating-point environment (round to nearest,
 * no FTZ/DAZ in MXCSR), as every kernel of dsacp does. Calls numerics only.
 */
#include "kernels/bf16dot.h"
#include "numerics/numerics.h"

#include <math.h>
#include <string.h>

#if defined(__FAST_MATH__)
#error "bf16dot.c must not be built with -ffast-math (the model relies on IEEE fmaf and subnormals)"
#endif

enum { DEFAULT_NAN = 0xFFC00000u, QUIET = 0x00400000u };

static bool nan_bits(uint32_t u) { return (u & 0x7FFFFFFFu) > 0x7F800000u; }

/* DAZ: a zero exponent field reads as the zero of its sign. */
static float daz(uint32_t u) { return dsacp_f32_of_bits((u & 0x7F800000u) ? u : u & 0x80000000u); }

/* FTZ of an IEEE fmaf result r = fl(c + x * y): the model's result. Below 2^-126 the IEEE result
 * is subnormal and the exact value is tiny too: the zero of its sign. At exactly 2^-126 the
 * gradual underflow may have rounded up a value whose 24-bit rounding is below 2^-126 (the
 * instruction gives 0 there): redo the FMA scaled by 2^64, where nothing underflows (a result
 * this small needs |c| and |x * y| below 2^-100, so |x|, |y| < 2^26 and the scaling is exact). */
static float ftz(float r, float x, float y, float c)
{
    const float t = fabsf(r);
    if (!(t <= 0x1p-126f) || t == 0) return r;
    if (t < 0x1p-126f) return copysignf(0.0f, r);
    if (x == 0 || y == 0) return r; /* the exact result is c itself */
    const float s = fmaf(x * 0x1p32f, y * 0x1p32f, c * 0x1p64f);
    return fabsf(s) < 0x1p-62f ? copysignf(0.0f, s) : r;
}

float dsacp_bf16dot_model_step(float acc, uint16_t a, uint16_t b)
{
    const uint32_t ua = (uint32_t)a << 16, ub = (uint32_t)b << 16, uc = dsacp_f32_bits(acc);
    if (nan_bits(ua)) return dsacp_f32_of_bits(ua | QUIET);
    if (nan_bits(ub)) return dsacp_f32_of_bits(ub | QUIET);
    if (nan_bits(uc)) return dsacp_f32_of_bits(uc | QUIET);
    const float x = daz(ua), y = daz(ub), c = daz(uc);
    const float r = fmaf(x, y, c);
    if (isnan(r)) return dsacp_f32_of_bits(DEFAULT_NAN); /* inf * 0, inf - inf */
    return ftz(r, x, y, c);
}

float dsacp_bf16dot_model_pair(float acc, uint32_t a_pair, uint32_t b_pair)
{
    acc = dsacp_bf16dot_model_step(acc, (uint16_t)(a_pair >> 16), (uint16_t)(b_pair >> 16));
    return dsacp_bf16dot_model_step(acc, (uint16_t)(a_pair & 0xFFFFu), (uint16_t)(b_pair & 0xFFFFu));
}

/* One add of the reduction with its NaN rule. */
static float add_model(float x, float y)
{
    if (isnan(x)) return dsacp_f32_of_bits(dsacp_f32_bits(x) | QUIET);
    if (isnan(y)) return dsacp_f32_of_bits(dsacp_f32_bits(y) | QUIET);
    const float r = x + y;
    return isnan(r) ? dsacp_f32_of_bits(DEFAULT_NAN) : r;
}

float dsacp_bf16dot_lanes_sum(const float lanes[16])
{
    float l[16];
    memcpy(l, lanes, sizeof l);
    for (int w = 8; w >= 1; w /= 2)
        for (int i = 0; i < w; i++) l[i] = add_model(l[i], l[i + w]);
    return l[0];
}

/* Pair p of a bf16 vector (element 2p low, 2p + 1 high). */
static uint32_t pair_at(const uint16_t *v, int64_t p) { return (uint32_t)v[2 * p] | (uint32_t)v[2 * p + 1] << 16; }

float dsacp_bf16dot_scalar(const uint16_t *a, const uint16_t *b, int64_t n)
{
    float lanes[16] = {0};
    const int64_t padded = (n + 15) / 16 * 16;
    for (int64_t p = 0; p < padded; p++) {
        const uint32_t ap = p < n ? pair_at(a, p) : 0, bp = p < n ? pair_at(b, p) : 0;
        lanes[p % 16] = dsacp_bf16dot_model_pair(lanes[p % 16], ap, bp);
    }
    return dsacp_bf16dot_lanes_sum(lanes);
}

/* e4m3 magnitude code c = (e, m) -> bf16: e > 0: 2^(e - 7) * (1 + m / 8), bf16 exponent field
 * e + 120 (c << 4 plus 0x3C00); e == 0: m * 2^-9, normal in bf16; 0x7F: NaN. */
const uint16_t dsacp_e4m3_bf16_mag[128] = {
    0x0000, 0x3B00, 0x3B80, 0x3BC0, 0x3C00, 0x3C20, 0x3C40, 0x3C60, 0x3C80, 0x3C90, 0x3CA0, 0x3CB0,
    0x3CC0, 0x3CD0, 0x3CE0, 0x3CF0, 0x3D00, 0x3D10, 0x3D20, 0x3D30, 0x3D40, 0x3D50, 0x3D60, 0x3D70,
    0x3D80, 0x3D90, 0x3DA0, 0x3DB0, 0x3DC0, 0x3DD0, 0x3DE0, 0x3DF0, 0x3E00, 0x3E10, 0x3E20, 0x3E30,
    0x3E40, 0x3E50, 0x3E60, 0x3E70, 0x3E80, 0x3E90, 0x3EA0, 0x3EB0, 0x3EC0, 0x3ED0, 0x3EE0, 0x3EF0,
    0x3F00, 0x3F10, 0x3F20, 0x3F30, 0x3F40, 0x3F50, 0x3F60, 0x3F70, 0x3F80, 0x3F90, 0x3FA0, 0x3FB0,
    0x3FC0, 0x3FD0, 0x3FE0, 0x3FF0, 0x4000, 0x4010, 0x4020, 0x4030, 0x4040, 0x4050, 0x4060, 0x4070,
    0x4080, 0x4090, 0x40A0, 0x40B0, 0x40C0, 0x40D0, 0x40E0, 0x40F0, 0x4100, 0x4110, 0x4120, 0x4130,
    0x4140, 0x4150, 0x4160, 0x4170, 0x4180, 0x4190, 0x41A0, 0x41B0, 0x41C0, 0x41D0, 0x41E0, 0x41F0,
    0x4200, 0x4210, 0x4220, 0x4230, 0x4240, 0x4250, 0x4260, 0x4270, 0x4280, 0x4290, 0x42A0, 0x42B0,
    0x42C0, 0x42D0, 0x42E0, 0x42F0, 0x4300, 0x4310, 0x4320, 0x4330, 0x4340, 0x4350, 0x4360, 0x4370,
    0x4380, 0x4390, 0x43A0, 0x43B0, 0x43C0, 0x43D0, 0x43E0, 0x7FC0,
};

void dsacp_e4m3_row_bf16(const uint8_t *src, int64_t n, uint16_t *out)
{
    for (int64_t i = 0; i < n; i++) out[i] = dsacp_e4m3_to_bf16(src[i]);
}

float dsacp_bf16dot_fold_scalar(const uint16_t *a, const uint16_t *b, int64_t n, int64_t bp, const float *scales)
{
    if (bp <= 0) return dsacp_bf16dot_scalar(a, b, n);
    float tot[16] = {0};
    for (int64_t p0 = 0, j = 0; p0 < n; p0 += bp, j++) {
        const int64_t p1 = p0 + bp < n ? p0 + bp : n, end = p0 + (p1 - p0 + 15) / 16 * 16;
        float lanes[16] = {0};
        for (int64_t p = p0; p < end; p++) {
            const uint32_t ap = p < p1 ? pair_at(a, p) : 0, xp = p < p1 ? pair_at(b, p) : 0;
            lanes[p % 16] = dsacp_bf16dot_model_pair(lanes[p % 16], ap, xp);
        }
        for (int l = 0; l < 16; l++) tot[l] = fmaf(lanes[l], scales[j], tot[l]);
    }
    return dsacp_bf16dot_lanes_sum(tot);
}

int dsacp_bf16_exp_floor(const uint16_t *x, int64_t n)
{
    int floor = 256;
    for (int64_t i = 0; i < n; i++) {
        const int e = (x[i] >> 7) & 0xFF;
        if ((x[i] & 0x7FFFu) && e < floor) floor = e;
    }
    return floor;
}

int dsacp_bf16_round_row(const float *x, int64_t n, uint16_t *out)
{
    for (int64_t i = 0; i < n; i++) out[i] = dsacp_f32_to_bf16(x[i]);
    return dsacp_bf16_exp_floor(out, n);
}
