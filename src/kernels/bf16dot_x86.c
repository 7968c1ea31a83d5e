/*
 * bf16dot_x86.c -- the bf16-dot chain's SIMD kernels (bf16dot.h): AVX2 with f32 FMAs (a product
 * of two bf16 values is exact inside an FMA), AVX512-BF16 with VDPBF16PS, activation rounding in
 * AVX2, and the kernel of an ISA (the instruction only as far as bf16dot_check.c found it equal
 * to the model). Every kernel gives the bits of the scalar model (bf16dot.c), which it calls for
 * the rare dots it does not finish itself; compiled through target attributes (no build flag).
 * Calls bf16dot_check.c and bf16dot.c (never dispatch.c: the caller names the ISA).
 */
#include "kernels/bf16dot.h"
#include "numerics/numerics.h"

#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>

#define T256 __attribute__((target("avx2,fma")))
#define TBF16 __attribute__((target("avx512f,avx512bf16")))
#define INL __attribute__((always_inline)) inline

/* ---- AVX2 ---- */

/* The model's lanes 0..7 and 8..15 summed by its tree (l += l + 8, + 4, + 2, + 1). */
T256 static INL float tree8x2(__m256 lo, __m256 hi)
{
    const __m256 a = _mm256_add_ps(lo, hi);
    const __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    const __m128 c = _mm_add_ps(b, _mm_movehl_ps(b, b));
    return _mm_cvtss_f32(_mm_add_ss(c, _mm_movehdup_ps(c)));
}

/* 8 dword pairs: DAZ on each bf16 half (a zero exponent field keeps only the sign). */
T256 static INL __m256i daz8(__m256i v)
{
    const __m256i zexp = _mm256_cmpeq_epi16(_mm256_and_si256(v, _mm256_set1_epi16(0x7F80)), _mm256_setzero_si256());
    return _mm256_andnot_si256(_mm256_and_si256(zexp, _mm256_set1_epi16(0x7FFF)), v);
}

/* FTZ of FMA results: below 2^-126 the zero of the sign; exactly 2^-126 marked in *edge. */
T256 static INL __m256 ftz8(__m256 r, __m256 *edge)
{
    const __m256 abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF)), min = _mm256_set1_ps(0x1p-126f);
    const __m256 t = _mm256_and_ps(r, abs);
    *edge = _mm256_or_ps(*edge, _mm256_cmp_ps(t, min, _CMP_EQ_OQ));
    return _mm256_andnot_ps(_mm256_and_ps(_mm256_cmp_ps(t, min, _CMP_LT_OQ), abs), r);
}

/* acc += the 8 pairs of va, vb (high products first), with DAZ/FTZ unless plain. */
T256 static INL __m256 step8(__m256 acc, __m256i va, __m256i vb, bool plain, __m256 *edge)
{
    const __m256i hi = _mm256_set1_epi32((int)0xFFFF0000u);
    if (!plain) {
        va = daz8(va);
        vb = daz8(vb);
    }
    const __m256 ah = _mm256_castsi256_ps(_mm256_and_si256(va, hi)), bh = _mm256_castsi256_ps(_mm256_and_si256(vb, hi));
    const __m256 al = _mm256_castsi256_ps(_mm256_slli_epi32(va, 16)), bl = _mm256_castsi256_ps(_mm256_slli_epi32(vb, 16));
    acc = _mm256_fmadd_ps(ah, bh, acc);
    if (!plain) acc = ftz8(acc, edge);
    acc = _mm256_fmadd_ps(al, bl, acc);
    if (!plain) acc = ftz8(acc, edge);
    return acc;
}

T256 static INL float avx2_dot(const uint16_t *a, const uint16_t *b, int64_t n, bool plain)
{
    __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps(), edge = _mm256_setzero_ps();
    int64_t p = 0;
    for (; p + 16 <= n; p += 16) {
        const __m256i *pa = (const __m256i *)(a + 2 * p), *pb = (const __m256i *)(b + 2 * p);
        lo = step8(lo, _mm256_loadu_si256(pa), _mm256_loadu_si256(pb), plain, &edge);
        hi = step8(hi, _mm256_loadu_si256(pa + 1), _mm256_loadu_si256(pb + 1), plain, &edge);
    }
    if (p < n) { /* the last pairs, padded with (+0, +0) pairs to 16 */
        uint32_t ta[16] = {0}, tb[16] = {0};
        memcpy(ta, a + 2 * p, (size_t)(n - p) * 2 * sizeof(uint16_t));
        memcpy(tb, b + 2 * p, (size_t)(n - p) * 2 * sizeof(uint16_t));
        lo = step8(lo, _mm256_loadu_si256((const __m256i *)ta), _mm256_loadu_si256((const __m256i *)tb), plain, &edge);
        hi = step8(hi, _mm256_loadu_si256((const __m256i *)ta + 1), _mm256_loadu_si256((const __m256i *)tb + 1), plain,
                   &edge);
    }
    const float r = tree8x2(lo, hi);
    if (r != r || _mm256_movemask_ps(edge)) return dsacp_bf16dot_scalar(a, b, n);
    return r;
}

T256 static float avx2_dot_plain(const uint16_t *a, const uint16_t *b, int64_t n) { return avx2_dot(a, b, n, true); }
T256 static float avx2_dot_exact(const uint16_t *a, const uint16_t *b, int64_t n) { return avx2_dot(a, b, n, false); }

float dsacp_bf16dot_avx2(const uint16_t *a, const uint16_t *b, int64_t n, bool plain)
{
    return plain ? avx2_dot_plain(a, b, n) : avx2_dot_exact(a, b, n);
}

static float avx2_kernel(const uint16_t *a, const uint16_t *b, int64_t n) { return dsacp_bf16dot_avx2(a, b, n, false); }

/* 8 floats to bf16 (dsacp_f32_to_bf16's integer rounding) in the low 16 bits of each dword. */
T256 static INL __m256i round8(__m256 x)
{
    const __m256i u = _mm256_castps_si256(x);
    const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7FFFFFFF)),
                                           _mm256_set1_epi32(0x7F800000));
    const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7FFF))), 16);
    const __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x0040));
    return _mm256_blendv_epi8(rounded, quiet, nan);
}

T256 static int round_row_avx2(const float *x, int64_t n, uint16_t *out)
{
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m256i lo = round8(_mm256_loadu_ps(x + i)), hi = round8(_mm256_loadu_ps(x + i + 8));
        const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(lo, hi), 0xD8);
        _mm256_storeu_si256((__m256i *)(out + i), packed);
    }
    for (; i < n; i++) out[i] = dsacp_f32_to_bf16(x[i]);
    return dsacp_bf16_exp_floor(out, n);
}

int dsacp_bf16_round_row_avx2(const float *x, int64_t n, uint16_t *out) { return round_row_avx2(x, n, out); }

/* ---- AVX512-BF16 ---- */

/* The model's tree over 16 lanes. */
TBF16 static INL float tree16(__m512 v)
{
    const __m256 lo = _mm512_castps512_ps256(v);
    const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
    const __m256 a = _mm256_add_ps(lo, hi);
    const __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    const __m128 c = _mm_add_ps(b, _mm_movehl_ps(b, b));
    return _mm_cvtss_f32(_mm_add_ss(c, _mm_movehdup_ps(c)));
}

TBF16 float dsacp_bf16dot_avx512bf16(const uint16_t *a, const uint16_t *b, int64_t n)
{
    __m512 acc = _mm512_setzero_ps();
    int64_t p = 0;
    for (; p + 16 <= n; p += 16)
        acc = _mm512_dpbf16_ps(acc, (__m512bh)_mm512_loadu_si512(a + 2 * p), (__m512bh)_mm512_loadu_si512(b + 2 * p));
    if (p < n) { /* masked loads: the padding pairs are (+0, +0) */
        const __mmask16 m = (__mmask16)((1u << (n - p)) - 1);
        acc = _mm512_dpbf16_ps(acc, (__m512bh)_mm512_maskz_loadu_epi32(m, a + 2 * p),
                               (__m512bh)_mm512_maskz_loadu_epi32(m, b + 2 * p));
    }
    const float r = tree16(acc);
    return r != r ? dsacp_bf16dot_scalar(a, b, n) : r;
}

static float avx512_kernel(const uint16_t *a, const uint16_t *b, int64_t n) { return dsacp_bf16dot_avx512bf16(a, b, n); }

/* AVX512-BF16 on plain inputs (dsacp_bf16dot_plain_ok of the two floors), AVX2 otherwise. */
static float avx512_plain_kernel(const uint16_t *a, const uint16_t *b, int64_t n)
{
    if (dsacp_bf16dot_plain_ok(dsacp_bf16_exp_floor(a, 2 * n), dsacp_bf16_exp_floor(b, 2 * n)))
        return dsacp_bf16dot_avx512bf16(a, b, n);
    return dsacp_bf16dot_avx2(a, b, n, false);
}
#endif

dsacp_bf16dot_fn dsacp_bf16dot_kernel(dsacp_isa isa)
{
#if defined(__x86_64__)
    if (isa == DSACP_ISA_AVX512 && dsacp_bf16dot_hw_level() == DSACP_BF16DOT_HW_ALL) return avx512_kernel;
    if (isa == DSACP_ISA_AVX512 && dsacp_bf16dot_hw_level() == DSACP_BF16DOT_HW_PLAIN) return avx512_plain_kernel;
    if (isa >= DSACP_ISA_AVX2) return avx2_kernel;
#endif
    (void)isa;
    return dsacp_bf16dot_scalar;
}
