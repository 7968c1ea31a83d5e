/*
 * test_numerics -- the numerics module against slow, obviously-correct references:
 * e4m3 / bf16 / f16 decoding and encoding (all codes, strided sweeps over every fp32 bit
 * pattern, every rounding midpoint), ue8m0 group scales and quantization error bounds, the
 * Walsh-Hadamard transform against a dense matrix, and YaRN RoPE (frequencies, both layouts).
 */
#include "numerics/numerics.h"
#include "test.h"

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

static uint32_t bits_of(float x)
{
    uint32_t b;
    memcpy(&b, &x, sizeof b);
    return b;
}

static float float_of(uint32_t b)
{
    float x;
    memcpy(&x, &b, sizeof x);
    return x;
}

/* Identical floats, bit for bit (so -0 != +0; NaN == NaN with the same pattern). */
static int same_bits(float a, float b)
{
    return bits_of(a) == bits_of(b);
}

/* ------------------------------------------------------------------------------------------ */
/* Slow reference decoders: sign, exponent field, mantissa field, the textbook formula.        */
/* ------------------------------------------------------------------------------------------ */

static double slow_e4m3(int c)
{
    int s = (c >> 7) & 1, e = (c >> 3) & 15, m = c & 7;
    if (e == 15 && m == 7)
        return NAN;
    double v = e == 0 ? ldexp((double)m, -9) : ldexp(1.0 + m / 8.0, e - 7);
    return s ? -v : v;
}

static double slow_f16(int c)
{
    int s = (c >> 15) & 1, e = (c >> 10) & 31, m = c & 1023;
    double v;
    if (e == 31)
        v = m ? NAN : INFINITY;
    else if (e == 0)
        v = ldexp((double)m, -24);
    else
        v = ldexp(1.0 + m / 1024.0, e - 15);
    return s ? -v : v;
}

static double slow_bf16(int c)
{
    int s = (c >> 15) & 1, e = (c >> 7) & 255, m = c & 127;
    double v;
    if (e == 255)
        v = m ? NAN : INFINITY;
    else if (e == 0)
        v = ldexp((double)m, -133);
    else
        v = ldexp(1.0 + m / 128.0, e - 127);
    return s ? -v : v;
}

/* ------------------------------------------------------------------------------------------ */
/* Slow reference encoder: nearest entry of a sorted table of the format's non-negative values */
/* (index = code), ties to the even code (= even mantissa). vals[n-1] is the largest entry.   */
/* The caller handles NaN, sign and what lies at or beyond the last entry.                     */
/* ------------------------------------------------------------------------------------------ */

static int nearest_code(double a, const double *vals, int n)
{
    int lo = 0, hi = n - 1; /* invariant: vals[lo] <= a < vals[hi] */
    while (hi - lo > 1) {
        int mid = lo + (hi - lo) / 2;
        if (vals[mid] <= a)
            lo = mid;
        else
            hi = mid;
    }
    double midpoint = (vals[lo] + vals[hi]) / 2.0; /* exact in double for these formats */
    if (a < midpoint)
        return lo;
    if (a > midpoint)
        return hi;
    return (lo % 2 == 0) ? lo : hi;
}

static double e4m3_pos[127]; /* codes 0x00..0x7E */
static double f16_pos[0x7C01]; /* codes 0x0000..0x7BFF, then 0x7C00 standing for 2^16 */
static double bf16_pos[0x7F81]; /* codes 0x0000..0x7F7F, then 0x7F80 standing for 2^128 */

static void init_tables(void)
{
    for (int c = 0; c < 127; c++)
        e4m3_pos[c] = slow_e4m3(c);
    for (int c = 0; c < 0x7C00; c++)
        f16_pos[c] = slow_f16(c);
    f16_pos[0x7C00] = ldexp(1.0, 16); /* IEEE: round as if the exponent were unbounded */
    for (int c = 0; c < 0x7F80; c++)
        bf16_pos[c] = slow_bf16(c);
    bf16_pos[0x7F80] = ldexp(1.0, 128);
}

/* e4m3fn: NaN -> S.1111.111; |x| >= 448 (inf too) saturates to S.1111.110. */
static uint8_t ref_e4m3(float x)
{
    uint8_t sign = signbit(x) ? 0x80 : 0x00;
    if (isnan(x))
        return (uint8_t)(sign | 0x7F);
    double a = fabs((double)x);
    if (a >= 448.0)
        return (uint8_t)(sign | 0x7E);
    return (uint8_t)(sign | nearest_code(a, e4m3_pos, 127));
}

/* IEEE half / bf16 (non-NaN inputs): overflow rounds to inf. */
static uint16_t ref_ieee16(float x, const double *vals, int n_with_inf)
{
    uint16_t sign = signbit(x) ? 0x8000 : 0x0000;
    double a = fabs((double)x);
    int inf_code = n_with_inf - 1;
    if (a >= vals[inf_code])
        return (uint16_t)(sign | inf_code);
    return (uint16_t)(sign | nearest_code(a, vals, n_with_inf));
}

/* ------------------------------------------------------------------------------------------ */

static void test_e4m3_codes(void)
{
    const float *t = dsacp_e4m3_table();
    CHECK(t != NULL);
    CHECK(t == dsacp_e4m3_table());
    int bad_decode = 0, bad_trip = 0;
    for (int c = 0; c < 256; c++) {
        double want = slow_e4m3(c);
        float got = t[c];
        CHECK(same_bits(got, dsacp_e4m3_to_f32((uint8_t)c)) || (isnan(got) && isnan(want)));
        if (isnan(want)) {
            CHECKF(isnan(got) && (signbit(got) != 0) == (c >= 128), "code 0x%02X", c);
            continue;
        }
        if (!((double)got == want && (signbit(got) != 0) == (c >= 128))) {
            if (bad_decode++ < 5)
                fprintf(stderr, "e4m3 decode 0x%02X: got %a want %a\n", c, (double)got, want);
        }
        if (dsacp_f32_to_e4m3(got) != c) {
            if (bad_trip++ < 5)
                fprintf(stderr, "e4m3 round trip 0x%02X -> %a -> 0x%02X\n", c, (double)got,
                        dsacp_f32_to_e4m3(got));
        }
    }
    CHECK(bad_decode == 0);
    CHECK(bad_trip == 0);
    CHECK(dsacp_e4m3_to_f32(0x7E) == 448.0f);
    CHECK(dsacp_e4m3_to_f32(0xFE) == -448.0f);
    CHECK(dsacp_e4m3_to_f32(0x01) == 0x1p-9f);
    CHECK(dsacp_e4m3_to_f32(0x08) == 0x1p-6f);
    CHECK(dsacp_e4m3_to_f32(0x38) == 1.0f);
    CHECK(dsacp_e4m3_to_f32(0x00) == 0.0f && !signbit(dsacp_e4m3_to_f32(0x00)));
    CHECK(dsacp_e4m3_to_f32(0x80) == 0.0f && signbit(dsacp_e4m3_to_f32(0x80)));
    CHECK(isnan(dsacp_e4m3_to_f32(0x7F)) && isnan(dsacp_e4m3_to_f32(0xFF)));

    /* Hand-picked encodings. */
    CHECK(dsacp_f32_to_e4m3(NAN) == 0x7F);
    CHECK(dsacp_f32_to_e4m3(-NAN) == 0xFF);
    CHECK(dsacp_f32_to_e4m3(INFINITY) == 0x7E);
    CHECK(dsacp_f32_to_e4m3(-INFINITY) == 0xFE);
    CHECK(dsacp_f32_to_e4m3(FLT_MAX) == 0x7E);
    CHECK(dsacp_f32_to_e4m3(449.0f) == 0x7E);
    CHECK(dsacp_f32_to_e4m3(464.0f) == 0x7E); /* would round to 480: saturates */
    CHECK(dsacp_f32_to_e4m3(1000.0f) == 0x7E);
    CHECK(dsacp_f32_to_e4m3(-1e30f) == 0xFE);
    CHECK(dsacp_f32_to_e4m3(0x1p-10f) == 0x00);            /* tie 0 / 2^-9: even (0) */
    CHECK(dsacp_f32_to_e4m3(nextafterf(0x1p-10f, 1.0f)) == 0x01);
    CHECK(dsacp_f32_to_e4m3(3 * 0x1p-10f) == 0x02);        /* tie 2^-9 / 2^-8: even */
    CHECK(dsacp_f32_to_e4m3(15 * 0x1p-10f) == 0x08);       /* tie 7*2^-9 / 2^-6: to 0x08 */
    CHECK(dsacp_f32_to_e4m3(1.0625f) == 0x38);             /* tie 1 / 1.125: even */
    CHECK(dsacp_f32_to_e4m3(1.1875f) == 0x3A);             /* tie 1.125 / 1.25: even */
    CHECK(dsacp_f32_to_e4m3(-0.0f) == 0x80);
    CHECK(dsacp_f32_to_e4m3(0x1p-149f) == 0x00);
    CHECK(dsacp_f32_to_e4m3(-0x1p-149f) == 0x80);
}

static void test_e4m3_sweep(void)
{
    int64_t bad = 0, count = 0;
    uint32_t first_bad = 0;
    for (uint64_t b = 0; b < (UINT64_C(1) << 32); b += 97) {
        float x = float_of((uint32_t)b);
        uint8_t got = dsacp_f32_to_e4m3(x), want = ref_e4m3(x);
        count++;
        if (got != want && bad++ == 0)
            first_bad = (uint32_t)b;
    }
    CHECKF(bad == 0, "%lld of %lld fp32 patterns differ, first 0x%08X", (long long)bad,
           (long long)count, first_bad);

    /* Every midpoint between neighbouring codes, one ulp either side, and the codes. */
    bad = 0;
    for (int k = 0; k < 126; k++) {
        float mid = (float)((e4m3_pos[k] + e4m3_pos[k + 1]) / 2.0);
        CHECK((double)mid == (e4m3_pos[k] + e4m3_pos[k + 1]) / 2.0);
        float probes[5] = {mid, nextafterf(mid, 0.0f), nextafterf(mid, INFINITY),
                           (float)e4m3_pos[k], (float)e4m3_pos[k + 1]};
        for (int p = 0; p < 5; p++) {
            for (int s = 0; s < 2; s++) {
                float x = s ? -probes[p] : probes[p];
                if (dsacp_f32_to_e4m3(x) != ref_e4m3(x) && bad++ < 5)
                    fprintf(stderr, "e4m3(%a) = 0x%02X, want 0x%02X\n", (double)x,
                            dsacp_f32_to_e4m3(x), ref_e4m3(x));
            }
        }
    }
    /* The saturation edge and every float exponent. */
    for (int e = -149; e <= 127; e++) {
        for (int m = 0; m < 8; m++) {
            float x = ldexpf(1.0f + m / 8.0f, e);
            float probes[3] = {x, nextafterf(x, 0.0f), nextafterf(x, INFINITY)};
            for (int p = 0; p < 3; p++)
                if (dsacp_f32_to_e4m3(probes[p]) != ref_e4m3(probes[p]) && bad++ < 5)
                    fprintf(stderr, "e4m3(%a) = 0x%02X, want 0x%02X\n", (double)probes[p],
                            dsacp_f32_to_e4m3(probes[p]), ref_e4m3(probes[p]));
        }
    }
    CHECK(bad == 0);
}

static void test_bf16(void)
{
    int bad = 0;
    for (int c = 0; c < 65536; c++) { /* decode every code */
        double want = slow_bf16(c);
        float got = dsacp_bf16_to_f32((uint16_t)c);
        if (isnan(want)) {
            if (!(isnan(got) && (signbit(got) != 0) == (c >= 0x8000)) && bad++ < 5)
                fprintf(stderr, "bf16 decode 0x%04X not NaN\n", c);
            continue;
        }
        if (!((double)got == want && (signbit(got) != 0) == (c >= 0x8000)) && bad++ < 5)
            fprintf(stderr, "bf16 decode 0x%04X: %a want %a\n", c, (double)got, want);
        if (dsacp_f32_to_bf16(got) != c && bad++ < 5)
            fprintf(stderr, "bf16 round trip 0x%04X\n", c);
    }
    CHECK(bad == 0);

    int64_t nbad = 0;
    uint32_t first_bad = 0;
    for (uint64_t b = 0; b < (UINT64_C(1) << 32); b += 193) {
        float x = float_of((uint32_t)b);
        uint16_t got = dsacp_f32_to_bf16(x);
        int ok;
        if (isnan(x)) /* NaN stays a quiet NaN with its sign */
            ok = (got & 0x7F80) == 0x7F80 && (got & 0x0040) && (got >> 15) == (b >> 31);
        else
            ok = got == ref_ieee16(x, bf16_pos, 0x7F81);
        if (!ok && nbad++ == 0)
            first_bad = (uint32_t)b;
    }
    CHECKF(nbad == 0, "%lld bf16 encodings differ, first 0x%08X", (long long)nbad, first_bad);

    nbad = 0;
    for (int k = 0; k < 0x7F80; k++) { /* every midpoint, +-1 ulp */
        double m = (bf16_pos[k] + bf16_pos[k + 1]) / 2.0;
        if (m > FLT_MAX)
            continue;
        float mid = (float)m;
        float probes[3] = {mid, nextafterf(mid, 0.0f), nextafterf(mid, INFINITY)};
        for (int p = 0; p < 3; p++)
            for (int s = 0; s < 2; s++) {
                float x = s ? -probes[p] : probes[p];
                if (dsacp_f32_to_bf16(x) != ref_ieee16(x, bf16_pos, 0x7F81))
                    nbad++;
            }
    }
    CHECK(nbad == 0);
    CHECK(dsacp_f32_to_bf16(INFINITY) == 0x7F80);
    CHECK(dsacp_f32_to_bf16(-INFINITY) == 0xFF80);
    CHECK(dsacp_f32_to_bf16(FLT_MAX) == 0x7F80); /* rounds up past the largest bf16 */
    CHECK(dsacp_f32_to_bf16(1.0f + 0x1p-8f) == 0x3F80);  /* tie: even */
    CHECK(dsacp_f32_to_bf16(1.0f + 0x3p-8f) == 0x3F82);  /* tie: even (up) */
    CHECK(isnan(dsacp_bf16_to_f32(dsacp_f32_to_bf16(float_of(0x7F800001u))))); /* payload in low bits */
}

static void test_f16(void)
{
    int bad = 0;
    for (int c = 0; c < 65536; c++) {
        double want = slow_f16(c);
        float got = dsacp_f16_to_f32((uint16_t)c);
        int neg = c >= 0x8000;
        if (isnan(want)) {
            uint16_t back = dsacp_f32_to_f16(got);
            if (!(isnan(got) && (signbit(got) != 0) == neg && (back & 0x7C00) == 0x7C00 &&
                  (back & 0x03FF) && (back >> 15) == neg) &&
                bad++ < 5)
                fprintf(stderr, "f16 NaN 0x%04X\n", c);
            continue;
        }
        if (!((double)got == want && (signbit(got) != 0) == neg) && bad++ < 5)
            fprintf(stderr, "f16 decode 0x%04X: %a want %a\n", c, (double)got, want);
        if (dsacp_f32_to_f16(got) != c && bad++ < 5)
            fprintf(stderr, "f16 round trip 0x%04X -> 0x%04X\n", c, dsacp_f32_to_f16(got));
    }
    CHECK(bad == 0);

    int64_t nbad = 0;
    uint32_t first_bad = 0;
    for (uint64_t b = 0; b < (UINT64_C(1) << 32); b += 389) {
        float x = float_of((uint32_t)b);
        if (isnan(x))
            continue;
        if (dsacp_f32_to_f16(x) != ref_ieee16(x, f16_pos, 0x7C01) && nbad++ == 0)
            first_bad = (uint32_t)b;
    }
    CHECKF(nbad == 0, "%lld f16 encodings differ, first 0x%08X", (long long)nbad, first_bad);

    nbad = 0;
    for (int k = 0; k < 0x7C00; k++) {
        float mid = (float)((f16_pos[k] + f16_pos[k + 1]) / 2.0);
        float probes[3] = {mid, nextafterf(mid, 0.0f), nextafterf(mid, INFINITY)};
        for (int p = 0; p < 3; p++)
            for (int s = 0; s < 2; s++) {
                float x = s ? -probes[p] : probes[p];
                if (dsacp_f32_to_f16(x) != ref_ieee16(x, f16_pos, 0x7C01))
                    nbad++;
            }
    }
    CHECK(nbad == 0);
    CHECK(dsacp_f32_to_f16(65504.0f) == 0x7BFF);
    CHECK(dsacp_f32_to_f16(65519.0f) == 0x7BFF);
    CHECK(dsacp_f32_to_f16(65520.0f) == 0x7C00);
    CHECK(dsacp_f32_to_f16(0x1p-24f) == 0x0001);
    CHECK(dsacp_f32_to_f16(0x1p-25f) == 0x0000); /* tie with 0: even */
    CHECK(dsacp_f32_to_f16(-INFINITY) == 0xFC00);
}

/* ------------------------------------------------------------------------------------------ */

/* Reference scale: ratio in fp32 as the official kernels, then the smallest power of two
 * >= ratio found by repeated doubling / halving in double. */
static float ref_scale(float amax)
{
    if (!(amax >= 1e-4f))
        amax = 1e-4f;
    float r = amax / 448.0f;
    if (isinf(r))
        return 0x1p127f;
    double p = 1.0;
    while (p < (double)r)
        p *= 2.0;
    while (p / 2.0 >= (double)r)
        p /= 2.0;
    return p > 0x1p127 ? 0x1p127f : (float)p;
}

static void test_scales(void)
{
    CHECK(dsacp_ue8m0_scale(336.0f) == 1.0f);
    CHECK(dsacp_ue8m0_scale(448.0f) == 1.0f);
    CHECK(dsacp_ue8m0_scale(nextafterf(448.0f, 0.0f)) == 1.0f);
    CHECK(dsacp_ue8m0_scale(448.0001f) == 2.0f);
    CHECK(dsacp_ue8m0_scale(nextafterf(448.0f, INFINITY)) == 2.0f);
    CHECK(dsacp_ue8m0_scale(449.0f) == 2.0f);
    CHECK(dsacp_ue8m0_scale(896.0f) == 2.0f);
    CHECK(dsacp_ue8m0_scale(897.0f) == 4.0f);
    CHECK(dsacp_ue8m0_scale(224.0f) == 0.5f);
    CHECK(dsacp_ue8m0_scale(225.0f) == 1.0f);
    CHECK(dsacp_ue8m0_scale(1.0f) == 0x1p-8f); /* 1/448 = 2^-8.8 */
    CHECK(dsacp_ue8m0_scale(7.0f) == 0x1p-6f); /* 7/448 = 2^-6 exactly */
    /* The 1e-4 floor: 1e-4/448 = 2^-22.09 -> 2^-22. */
    CHECK(dsacp_ue8m0_scale(0.0f) == 0x1p-22f);
    CHECK(dsacp_ue8m0_scale(1e-30f) == 0x1p-22f);
    CHECK(dsacp_ue8m0_scale(1e-4f) == 0x1p-22f);
    CHECK(dsacp_ue8m0_scale(0x1p-149f) == 0x1p-22f);
    CHECK(dsacp_ue8m0_scale(NAN) == 0x1p-22f);
    CHECK(dsacp_ue8m0_scale(FLT_MAX) == 0x1p120f);
    CHECK(dsacp_ue8m0_scale(INFINITY) == 0x1p127f);
    CHECK(dsacp_ue8m0_scale(ldexpf(7.0f, 20)) == 0x1p14f);

    int64_t bad = 0;
    uint32_t first_bad = 0;
    for (uint64_t b = 0; b <= 0x7F800000u; b += 1013) {
        float a = float_of((uint32_t)b);
        if (!same_bits(dsacp_ue8m0_scale(a), ref_scale(a)) && bad++ == 0)
            first_bad = (uint32_t)b;
    }
    for (int e = -30; e <= 100; e++) { /* exact 448 * 2^e and its neighbours */
        float x = ldexpf(448.0f, e);
        float probes[3] = {x, nextafterf(x, 0.0f), nextafterf(x, INFINITY)};
        for (int p = 0; p < 3; p++)
            if (!same_bits(dsacp_ue8m0_scale(probes[p]), ref_scale(probes[p])) && bad++ == 0)
                first_bad = bits_of(probes[p]);
    }
    CHECKF(bad == 0, "%lld scales differ, first amax 0x%08X", (long long)bad, first_bad);
}

static void test_quant(void)
{
    dsacp_rng rng;
    dsacp_rng_seed(&rng, 20251117);
    const int64_t cases[][2] = {{128, 1}, {128, 2}, {128, 3}, {128, 7}, {128, 13}, {64, 9},
                                {1, 5},   {512, 3}, {1000, 2}};
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        int64_t group = cases[ci][0], ng = cases[ci][1], n = group * ng;
        float *x = malloc((size_t)n * sizeof *x);
        float *deq = malloc((size_t)n * sizeof *deq);
        float *fake = malloc((size_t)n * sizeof *fake);
        uint8_t *q = malloc((size_t)n);
        float *sc = malloc((size_t)ng * sizeof *sc);
        for (int64_t g = 0; g < ng; g++) {
            /* Per-group magnitude 10^[-8, 8]; group 1 of the third case all zero; one group
             * with an exact 448 * 2^k maximum. */
            double mag = pow(10.0, 16.0 * dsacp_rng_uniform(&rng) - 8.0);
            for (int64_t i = 0; i < group; i++)
                x[g * group + i] = (float)(dsacp_rng_normal(&rng) * mag);
            if (ci == 2 && g == 1)
                for (int64_t i = 0; i < group; i++)
                    x[g * group + i] = 0.0f;
            if (ci == 3 && g == 2)
                x[g * group + group / 2] = -448.0f * 4.0f;
        }
        dsacp_quant_e4m3_groups(x, n, group, q, sc);
        dsacp_dequant_e4m3_groups(q, sc, n, group, deq);
        memcpy(fake, x, (size_t)n * sizeof *fake);
        dsacp_fake_quant_e4m3_groups(fake, n, group);
        int bad = 0;
        for (int64_t g = 0; g < ng; g++) {
            float amax = 0.0f;
            for (int64_t i = 0; i < group; i++)
                amax = fmaxf(amax, fabsf(x[g * group + i]));
            float s = sc[g];
            if (!same_bits(s, ref_scale(amax)) && bad++ < 5)
                fprintf(stderr, "case %zu group %lld: scale %a want %a\n", ci, (long long)g,
                        (double)s, (double)ref_scale(amax));
            /* tight: the largest element lands in (224, 448] unless the 1e-4 floor applies */
            if (amax >= 1e-4f && !(amax / s > 224.0f && amax / s <= 448.0f) && bad++ < 5)
                fprintf(stderr, "case %zu group %lld: amax/s = %g\n", ci, (long long)g,
                        (double)(amax / s));
            if (ci == 3 && g == 2 && s != 4.0f && bad++ < 5)
                fprintf(stderr, "exact 1792 max: scale %a\n", (double)s);
            for (int64_t i = 0; i < group; i++) {
                int64_t k = g * group + i;
                float v = x[k];
                if (q[k] != dsacp_f32_to_e4m3(v / s) && bad++ < 5)
                    fprintf(stderr, "q[%lld] = 0x%02X\n", (long long)k, q[k]);
                if (!same_bits(deq[k], dsacp_e4m3_to_f32(q[k]) * s) && bad++ < 5)
                    fprintf(stderr, "deq[%lld]\n", (long long)k);
                if (!same_bits(fake[k], deq[k]) && bad++ < 5)
                    fprintf(stderr, "fake[%lld] = %a, dequant %a\n", (long long)k,
                            (double)fake[k], (double)deq[k]);
                double err = fabs((double)v - (double)deq[k]);
                double bound = fmax(fabs((double)v) * 0x1p-4, (double)s * 0x1p-10);
                if (!(err <= bound) && bad++ < 5)
                    fprintf(stderr, "case %zu x=%a deq=%a err %g > %g\n", ci, (double)v,
                            (double)deq[k], err, bound);
            }
        }
        CHECKF(bad == 0, "quantization case %zu (group %lld, n %lld)", ci, (long long)group,
               (long long)n);
        free(x);
        free(deq);
        free(fake);
        free(q);
        free(sc);
    }

    /* Exactly representable values come back unchanged; NaN survives as NaN. */
    float y[4] = {448.0f, -0x1p-9f, 1.5f, NAN};
    uint8_t q4[4];
    float s4;
    dsacp_quant_e4m3_groups(y, 4, 4, q4, &s4);
    CHECK(s4 == 1.0f && q4[0] == 0x7E && q4[1] == 0x81 && q4[2] == 0x3C && q4[3] == 0x7F);
    dsacp_fake_quant_e4m3_groups(y, 4, 4);
    CHECK(y[0] == 448.0f && y[1] == -0x1p-9f && y[2] == 1.5f && isnan(y[3]));
    dsacp_fake_quant_e4m3_groups(y, 0, 128); /* nothing to do */
}

/* ------------------------------------------------------------------------------------------ */

static void test_hadamard(void)
{
    dsacp_rng rng;
    dsacp_rng_seed(&rng, 7);
    float x[256], y[256];
    double z[256];
    for (int n = 1; n <= 256; n *= 2) {
        double norm = 0.0;
        for (int i = 0; i < n; i++) {
            x[i] = (float)dsacp_rng_normal(&rng);
            norm += (double)x[i] * x[i];
        }
        norm = sqrt(norm);
        for (int i = 0; i < n; i++) {
            double acc = 0.0;
            for (int j = 0; j < n; j++)
                acc += (__builtin_popcount((unsigned)(i & j)) & 1 ? -1.0 : 1.0) * x[j];
            z[i] = acc / sqrt((double)n);
        }
        memcpy(y, x, sizeof(float) * (size_t)n);
        dsacp_hadamard(y, n);
        double maxerr = 0.0, maxerr2 = 0.0;
        for (int i = 0; i < n; i++)
            maxerr = fmax(maxerr, fabs(y[i] - z[i]));
        dsacp_hadamard(y, n);
        for (int i = 0; i < n; i++)
            maxerr2 = fmax(maxerr2, fabs((double)y[i] - x[i]));
        CHECKF(maxerr <= 2e-6 * norm, "n=%d: max error %g vs dense", n, maxerr);
        CHECKF(maxerr2 <= 4e-6 * norm, "n=%d: H(H(x)) error %g", n, maxerr2);
    }
    /* e_0 -> the constant vector 128^-0.5; e_1 alternates signs (Sylvester order). */
    float e[128] = {0};
    e[0] = 1.0f;
    dsacp_hadamard(e, 128);
    int ok = 1;
    for (int i = 0; i < 128; i++)
        ok &= fabsf(e[i] - (float)(1.0 / sqrt(128.0))) < 1e-7f;
    CHECK(ok);
    memset(e, 0, sizeof e);
    e[1] = 1.0f;
    dsacp_hadamard(e, 128);
    ok = 1;
    for (int i = 0; i < 128; i++)
        ok &= fabsf(e[i] - (float)((i & 1 ? -1.0 : 1.0) / sqrt(128.0))) < 1e-7f;
    CHECK(ok);
}

/* ------------------------------------------------------------------------------------------ */

static dsacp_config v32_rope_config(void)
{
    dsacp_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.qk_rope_head_dim = 64;
    cfg.rope_theta = 10000.0;
    cfg.rope_type = DSACP_ROPE_YARN;
    cfg.rope_factor = 40.0;
    cfg.rope_original_max_position = 4096.0;
    cfg.rope_beta_fast = 32.0;
    cfg.rope_beta_slow = 1.0;
    cfg.rope_mscale = 1.0;
    cfg.rope_mscale_all_dim = 1.0;
    cfg.rope_attention_factor = 1.0;
    cfg.max_position_embeddings = 163840;
    return cfg;
}

static double theta_ref(int i, int dim, double base)
{
    return pow(base, -2.0 * i / dim);
}

static int rel_close(double a, double b, double tol)
{
    return fabs(a - b) <= tol * fabs(b);
}

static void test_rope_freqs(void)
{
    dsacp_config cfg = v32_rope_config();
    dsacp_rope r;
    REQUIRE_OK(dsacp_rope_init(&r, &cfg));
    CHECK(r.dim == 64);
    CHECK(r.attention_factor == 1.0);
    /* The V3.2 correction range: low = 10, high = 23. */
    int bad = 0;
    for (int i = 0; i < 32; i++) {
        double th = theta_ref(i, 64, 10000.0);
        double want;
        if (i <= 10)
            want = th;
        else if (i >= 23)
            want = th / 40.0;
        else {
            double ramp = (i - 10) / 13.0;
            want = th / 40.0 * ramp + th * (1.0 - ramp);
        }
        if (!rel_close(r.inv_freq[i], want, 1e-15) && bad++ < 5)
            fprintf(stderr, "v3.2 inv_freq[%d] = %.17g want %.17g\n", i, r.inv_freq[i], want);
    }
    CHECK(bad == 0);
    /* strictly inside the ramp: neither end value */
    CHECK(r.inv_freq[11] < theta_ref(11, 64, 1e4) * 0.99);
    CHECK(r.inv_freq[22] > theta_ref(22, 64, 1e4) / 40.0 * 1.01);

    /* No yarn: freq = theta (even with a stale factor in the config). */
    cfg.rope_type = DSACP_ROPE_DEFAULT;
    REQUIRE_OK(dsacp_rope_init(&r, &cfg));
    bad = 0;
    for (int i = 0; i < 32; i++)
        if (!rel_close(r.inv_freq[i], theta_ref(i, 64, 10000.0), 1e-15))
            bad++;
    CHECK(bad == 0);

    /* low == high (both corrections <= 0): high becomes low + 0.001, so freq_0 = theta_0 and
     * everything above is interpolated. */
    cfg = v32_rope_config();
    cfg.rope_beta_slow = 4096.0 / (2.0 * 3.14159265358979323846) * 1.01;
    cfg.rope_beta_fast = cfg.rope_beta_slow * 4.0;
    REQUIRE_OK(dsacp_rope_init(&r, &cfg));
    CHECK(r.inv_freq[0] == 1.0);
    bad = 0;
    for (int i = 1; i < 32; i++)
        if (!rel_close(r.inv_freq[i], theta_ref(i, 64, 10000.0) / 40.0, 1e-15))
            bad++;
    CHECK(bad == 0);

    /* attention factor: 0 means 1; otherwise it multiplies cos and sin. */
    cfg = v32_rope_config();
    cfg.rope_attention_factor = 0.0;
    REQUIRE_OK(dsacp_rope_init(&r, &cfg));
    CHECK(r.attention_factor == 1.0);
    cfg.rope_attention_factor = 1.25;
    REQUIRE_OK(dsacp_rope_init(&r, &cfg));
    CHECK(r.attention_factor == 1.25);
    float c[256], s[256];
    dsacp_rope_cos_sin(&r, 0, c, s);
    CHECK(c[0] == 1.25f && s[0] == 0.0f && c[31] == 1.25f);

    /* Invalid dims. */
    const int64_t bad_dims[] = {0, -2, 3, 63, 514, 1024};
    for (size_t k = 0; k < sizeof bad_dims / sizeof bad_dims[0]; k++) {
        cfg = v32_rope_config();
        cfg.qk_rope_head_dim = bad_dims[k];
        dsacp_error_clear();
        CHECK(dsacp_rope_init(&r, &cfg) == DSACP_EINVAL);
        CHECK(dsacp_last_error()[0] != '\0');
    }
    cfg = v32_rope_config();
    cfg.qk_rope_head_dim = 512;
    CHECK_OK(dsacp_rope_init(&r, &cfg));
    cfg.qk_rope_head_dim = 2;
    CHECK_OK(dsacp_rope_init(&r, &cfg));
    cfg = v32_rope_config();
    cfg.rope_theta = 0.0;
    CHECK(dsacp_rope_init(&r, &cfg) == DSACP_EINVAL);

    /* yarn mscale and the V3.2 softmax scale of docs/dsa-math.md section 3. */
    CHECK(dsacp_yarn_mscale(1.0, 1.0) == 1.0);
    CHECK(dsacp_yarn_mscale(0.5, 1.0) == 1.0);
    double m = dsacp_yarn_mscale(40.0, 1.0);
    CHECK(rel_close(m, 0.1 * log(40.0) + 1.0, 1e-15));
    CHECK(fabs(m * m / sqrt(192.0) - 0.1352337789) < 1e-10);
    CHECK(rel_close(dsacp_yarn_mscale(40.0, 0.707), 0.1 * 0.707 * log(40.0) + 1.0, 1e-15));
}

static void test_rope_apply(void)
{
    dsacp_config cfg = v32_rope_config();
    dsacp_rope r;
    REQUIRE_OK(dsacp_rope_init(&r, &cfg));
    dsacp_rng rng;
    dsacp_rng_seed(&rng, 99);
    const int64_t positions[] = {0, 1, 7, 4095, 4096, 100000, 163839};
    float c[32], s[32], x[64], yi[64], yh[64];
    for (size_t pi = 0; pi < sizeof positions / sizeof positions[0]; pi++) {
        int64_t pos = positions[pi];
        dsacp_rope_cos_sin(&r, pos, c, s);
        /* independently computed frequencies and angles */
        double fr[32], ca[32], sa[32];
        for (int i = 0; i < 32; i++) {
            double th = theta_ref(i, 64, 1e4);
            double ramp = i <= 10 ? 0.0 : i >= 23 ? 1.0 : (i - 10) / 13.0;
            fr[i] = th / 40.0 * ramp + th * (1.0 - ramp);
            ca[i] = cos((double)pos * fr[i]);
            sa[i] = sin((double)pos * fr[i]);
        }
        int bad = 0;
        for (int i = 0; i < 32; i++)
            if (fabs(c[i] - ca[i]) > 1e-6 || fabs(s[i] - sa[i]) > 1e-6)
                bad++;
        CHECKF(bad == 0, "cos/sin at pos %lld", (long long)pos);

        double nx = 0.0;
        for (int i = 0; i < 64; i++) {
            x[i] = (float)dsacp_rng_normal(&rng);
            nx += (double)x[i] * x[i];
        }
        memcpy(yi, x, sizeof x);
        memcpy(yh, x, sizeof x);
        dsacp_rope_apply_interleaved(yi, 64, c, s);
        dsacp_rope_apply_rotate_half(yh, 64, c, s);
        double erri = 0.0, errh = 0.0, ni = 0.0, nh = 0.0, diff = 0.0;
        for (int i = 0; i < 32; i++) {
            /* interleaved: pair (2i, 2i+1) */
            double a0 = x[2 * i], a1 = x[2 * i + 1];
            erri = fmax(erri, fabs(yi[2 * i] - (a0 * ca[i] - a1 * sa[i])));
            erri = fmax(erri, fabs(yi[2 * i + 1] - (a0 * sa[i] + a1 * ca[i])));
            /* rotate-half: pair (i, i + 32) */
            double b0 = x[i], b1 = x[i + 32];
            errh = fmax(errh, fabs(yh[i] - (b0 * ca[i] - b1 * sa[i])));
            errh = fmax(errh, fabs(yh[i + 32] - (b1 * ca[i] + b0 * sa[i])));
        }
        for (int i = 0; i < 64; i++) {
            ni += (double)yi[i] * yi[i];
            nh += (double)yh[i] * yh[i];
            diff = fmax(diff, fabs(yi[i] - yh[i]));
        }
        CHECKF(erri < 1e-5 && errh < 1e-5, "pos %lld: interleaved err %g, rotate-half err %g",
               (long long)pos, erri, errh);
        CHECKF(rel_close(ni, nx, 1e-5) && rel_close(nh, nx, 1e-5), "pos %lld: norms %g %g %g",
               (long long)pos, ni, nh, nx);
        if (pos == 0)
            CHECK(memcmp(yi, x, sizeof x) == 0 && memcmp(yh, x, sizeof x) == 0);
        else
            CHECKF(diff > 1e-2, "pos %lld: the two layouts agree (diff %g)", (long long)pos, diff);
    }

    /* A tiny exact example of the two layouts (all products exact in float). */
    float cc[2] = {0.5f, 0.25f}, ss[2] = {0.75f, -0.5f};
    float a[4] = {1, 2, 3, 4}, b[4] = {1, 2, 3, 4};
    dsacp_rope_apply_interleaved(a, 4, cc, ss);
    CHECK(a[0] == 1 * 0.5f - 2 * 0.75f && a[1] == 1 * 0.75f + 2 * 0.5f);
    CHECK(a[2] == 3 * 0.25f - 4 * -0.5f && a[3] == 3 * -0.5f + 4 * 0.25f);
    dsacp_rope_apply_rotate_half(b, 4, cc, ss);
    CHECK(b[0] == 1 * 0.5f - 3 * 0.75f && b[2] == 3 * 0.5f + 1 * 0.75f);
    CHECK(b[1] == 2 * 0.25f - 4 * -0.5f && b[3] == 4 * 0.25f + 2 * -0.5f);
}

int main(void)
{
    init_tables();
    test_e4m3_codes();
    test_e4m3_sweep();
    test_bf16();
    test_f16();
    test_scales();
    test_quant();
    test_hadamard();
    test_rope_freqs();
    test_rope_apply();
    return test_finish("test_numerics");
}
