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

#include <stdlib.h>
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

/* The model's result of a dot the SIMD code hands back (NaN, or the emulation's 2^-126 edge). */
static float model_dot(const uint16_t *a, const uint16_t *b, int64_t n, int64_t bp, const float *scales)
{
    return dsacp_bf16dot_fold_scalar(a, b, n, bp, scales);
}

/* Pairs [p, p1) (p1 - p < 16) padded with (+0, +0) pairs to 16, into t. */
static void tail16(const uint16_t *v, int64_t p, int64_t p1, uint32_t t[16])
{
    memset(t, 0, 16 * sizeof(uint32_t));
    memcpy(t, v + 2 * p, (size_t)(p1 - p) * 2 * sizeof(uint16_t));
}

/* The chain in ymm pairs (lanes 0-7, 8-15), folded every bp pairs when bp > 0. */
T256 static INL float avx2_dot(const uint16_t *a, const uint16_t *b, int64_t n, int64_t bp, const float *sc,
                               bool plain)
{
    __m256 tlo = _mm256_setzero_ps(), thi = _mm256_setzero_ps(), edge = _mm256_setzero_ps();
    const int64_t step = bp > 0 ? bp : n;
    for (int64_t p0 = 0, j = 0; p0 < n; p0 += step, j++) {
        const int64_t p1 = p0 + step < n ? p0 + step : n;
        __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
        int64_t p = p0;
        for (; p + 16 <= p1; p += 16) {
            const __m256i *pa = (const __m256i *)(a + 2 * p), *pb = (const __m256i *)(b + 2 * p);
            lo = step8(lo, _mm256_loadu_si256(pa), _mm256_loadu_si256(pb), plain, &edge);
            hi = step8(hi, _mm256_loadu_si256(pa + 1), _mm256_loadu_si256(pb + 1), plain, &edge);
        }
        if (p < p1) { /* the last pairs, padded with (+0, +0) pairs to 16 */
            uint32_t ta[16], tb[16];
            tail16(a, p, p1, ta);
            tail16(b, p, p1, tb);
            const __m256i *pa = (const __m256i *)ta, *pb = (const __m256i *)tb;
            lo = step8(lo, _mm256_loadu_si256(pa), _mm256_loadu_si256(pb), plain, &edge);
            hi = step8(hi, _mm256_loadu_si256(pa + 1), _mm256_loadu_si256(pb + 1), plain, &edge);
        }
        if (bp > 0) {
            const __m256 s = _mm256_set1_ps(sc[j]);
            tlo = _mm256_fmadd_ps(lo, s, tlo);
            thi = _mm256_fmadd_ps(hi, s, thi);
        } else {
            tlo = lo, thi = hi;
        }
    }
    const float r = tree8x2(tlo, thi);
    if (r != r || _mm256_movemask_ps(edge)) return model_dot(a, b, n, bp, sc);
    return r;
}

T256 static float avx2_dot_plain(const uint16_t *a, const uint16_t *b, int64_t n, int64_t bp, const float *sc)
{
    return avx2_dot(a, b, n, bp, sc, true);
}
T256 static float avx2_dot_exact(const uint16_t *a, const uint16_t *b, int64_t n, int64_t bp, const float *sc)
{
    return avx2_dot(a, b, n, bp, sc, false);
}

float dsacp_bf16dot_fold_avx2(const uint16_t *a, const uint16_t *b, int64_t n, int64_t bp, const float *scales,
                              bool plain)
{
    return plain ? avx2_dot_plain(a, b, n, bp, scales) : avx2_dot_exact(a, b, n, bp, scales);
}

float dsacp_bf16dot_avx2(const uint16_t *a, const uint16_t *b, int64_t n, bool plain)
{
    return dsacp_bf16dot_fold_avx2(a, b, n, 0, NULL, plain);
}

/* The least exponent floor: min over the elements of (x & 0x7FFF) - 1 as unsigned (a zero
 * element wraps to 0xFFFF), whose exponent field is the floor. */
static int floor_of_min(unsigned m) { return m == 0xFFFFu ? 256 : (int)(((m + 1) >> 7) & 0xFF); }

T256 static int exp_floor_avx2(const uint16_t *x, int64_t n)
{
    const __m256i mag = _mm256_set1_epi16(0x7FFF), one = _mm256_set1_epi16(1);
    __m256i mn = _mm256_set1_epi16(-1);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m256i v = _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(x + i)), mag);
        mn = _mm256_min_epu16(mn, _mm256_sub_epi16(v, one));
    }
    const __m128i m8 = _mm_min_epu16(_mm256_castsi256_si128(mn), _mm256_extracti128_si256(mn, 1));
    unsigned m = (unsigned)_mm_cvtsi128_si32(_mm_minpos_epu16(m8)) & 0xFFFFu;
    for (; i < n; i++) {
        const unsigned v = ((unsigned)x[i] & 0x7FFFu) - 1u;
        if ((v & 0xFFFFu) < m) m = v & 0xFFFFu;
    }
    return floor_of_min(m);
}

int dsacp_bf16_exp_floor_avx2(const uint16_t *x, int64_t n) { return exp_floor_avx2(x, n); }

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
    return exp_floor_avx2(out, n);
}

int dsacp_bf16_round_row_avx2(const float *x, int64_t n, uint16_t *out) { return round_row_avx2(x, n, out); }

/* ---- AVX512-BF16 ---- */

/* The model's tree over 16 lanes (AVX512F only: inlined into every zmm kernel below). */
__attribute__((target("avx512f"))) static INL float tree16(__m512 v)
{
    const __m256 lo = _mm512_castps512_ps256(v);
    const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
    const __m256 a = _mm256_add_ps(lo, hi);
    const __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    const __m128 c = _mm_add_ps(b, _mm_movehl_ps(b, b));
    return _mm_cvtss_f32(_mm_add_ss(c, _mm_movehdup_ps(c)));
}

TBF16 float dsacp_bf16dot_fold_avx512bf16(const uint16_t *a, const uint16_t *b, int64_t n, int64_t bp,
                                          const float *scales)
{
    __m512 tot = _mm512_setzero_ps();
    const int64_t step = bp > 0 ? bp : n;
    for (int64_t p0 = 0, j = 0; p0 < n; p0 += step, j++) {
        const int64_t p1 = p0 + step < n ? p0 + step : n;
        __m512 acc = _mm512_setzero_ps();
        int64_t p = p0;
        for (; p + 16 <= p1; p += 16)
            acc = _mm512_dpbf16_ps(acc, (__m512bh)_mm512_loadu_si512(a + 2 * p),
                                   (__m512bh)_mm512_loadu_si512(b + 2 * p));
        if (p < p1) { /* masked loads: the padding pairs are (+0, +0) */
            const __mmask16 m = (__mmask16)((1u << (p1 - p)) - 1);
            acc = _mm512_dpbf16_ps(acc, (__m512bh)_mm512_maskz_loadu_epi32(m, a + 2 * p),
                                   (__m512bh)_mm512_maskz_loadu_epi32(m, b + 2 * p));
        }
        tot = bp > 0 ? _mm512_fmadd_ps(acc, _mm512_set1_ps(scales[j]), tot) : acc;
    }
    const float r = tree16(tot);
    return r != r ? model_dot(a, b, n, bp, scales) : r;
}

float dsacp_bf16dot_avx512bf16(const uint16_t *a, const uint16_t *b, int64_t n)
{
    return dsacp_bf16dot_fold_avx512bf16(a, b, n, 0, NULL);
}

/* ---- AVX512BW: the zmm FMA form over several rows, the FP8 row decode ---- */

#define T512 __attribute__((target("avx512f,avx512bw,avx512vl")))
/* The row kernels' two forms in one body: compiled with AVX512-BF16 enabled, whose instruction
 * only the dp instances execute (the FMA instances run on any AVX512BW CPU). */
#define TROWS __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

/* 32 e4m3 bytes to bf16: the magnitude code through the 128-entry table (two vpermi2w over 64
 * entries each, bit 6 choosing), the sign bit moved to bit 15. */
T512 static INL __m512i e4m3_32(__m256i bytes, const __m512i tab[4])
{
    const __m512i idx = _mm512_cvtepu8_epi16(bytes);
    const __m512i lo = _mm512_permutex2var_epi16(tab[0], idx, tab[1]);
    const __m512i hi = _mm512_permutex2var_epi16(tab[2], idx, tab[3]);
    const __m512i mag = _mm512_mask_blend_epi16(_mm512_test_epi16_mask(idx, _mm512_set1_epi16(0x40)), lo, hi);
    /* mag | ((idx << 8) & 0x8000) */
    return _mm512_ternarylogic_epi32(mag, _mm512_slli_epi16(idx, 8), _mm512_set1_epi16((short)0x8000), 0xF8);
}

T512 static void e4m3_row_512(const uint8_t *src, int64_t n, uint16_t *out)
{
    __m512i tab[4];
    for (int i = 0; i < 4; i++) tab[i] = _mm512_loadu_si512(dsacp_e4m3_bf16_mag + 32 * i);
    int64_t i = 0;
    for (; i + 32 <= n; i += 32)
        _mm512_storeu_si512(out + i, e4m3_32(_mm256_loadu_si256((const __m256i *)(src + i)), tab));
    if (i < n) {
        const __mmask32 m = (__mmask32)((1ull << (n - i)) - 1);
        _mm512_mask_storeu_epi16(out + i, m, e4m3_32(_mm256_maskz_loadu_epi8(m, src + i), tab));
    }
}

void dsacp_e4m3_row_bf16_avx512(const uint8_t *src, int64_t n, uint16_t *out) { e4m3_row_512(src, n, out); }

/* The outputs of R rows from their lane vectors: the model's tree; a NaN one the model's dot
 * (FP8: over the row decoded into scratch). */
TROWS static INL void rows_finish(const void *const *w, const int R, const bool f8, int64_t K, const uint16_t *x,
                                  int64_t bp, const float *const *sc, const __m512 *acc, float *out, uint16_t *scratch)
{
    for (int r = 0; r < R; r++) {
        const float v = tree16(acc[r]);
        if (v == v) {
            out[r] = v;
            continue;
        }
        const uint16_t *row = w[r];
        if (f8) {
            dsacp_e4m3_row_bf16(w[r], K, scratch);
            if (K % 2) scratch[K] = 0;
            row = scratch;
        }
        out[r] = model_dot(row, x, (K + 1) / 2, bp, bp > 0 ? sc[r] : NULL);
    }
}

/* R rows (a constant after inlining; BF16, or FP8 decoded in registers by e4m3_32) against the
 * token x: lane l of b[r] is model lane l of row r (pairs p = l + 16 q of chunk q), by VDPBF16PS
 * (dp) or two FMAs per pair, high first; every bp / 16 chunks the block's lanes fold into
 * tot[r]. The BF16 FMA form's floor (the rows' least (x & 0x7FFF) - 1) rides along; the others
 * return 256 (dp: the instruction is the model; FP8: the caller knows the rows' least floor). */
TROWS static INL int rows_t(const void *const *w, const int R, int64_t K, const uint16_t *x, int64_t bp,
                            const float *const *sc, const bool dp, const bool f8, float *out, uint16_t *scratch)
{
    const int64_t nq = ((K + 1) / 2 + 15) / 16, nfull = K / 32, qpb = bp > 0 ? bp / 16 : nq;
    const __m512i himask = _mm512_set1_epi32((int)0xFFFF0000u), mag = _mm512_set1_epi16(0x7FFF);
    const __m512i one = _mm512_set1_epi16(1);
    __m512i mn = _mm512_set1_epi16(-1), tab[4];
    for (int i = 0; i < 4 && f8; i++) tab[i] = _mm512_loadu_si512(dsacp_e4m3_bf16_mag + 32 * i);
    __m512 b[8], tot[8];
    for (int r = 0; r < R; r++) b[r] = tot[r] = _mm512_setzero_ps();
    for (int64_t q0 = 0, j = 0; q0 < nq; q0 += qpb, j++) {
        const int64_t q1 = q0 + qpb < nq ? q0 + qpb : nq;
        for (int64_t q = q0; q < q1; q++) {
            const __m512i xv = _mm512_loadu_si512(x + 32 * q);
            const __m512 xh = _mm512_castsi512_ps(_mm512_and_si512(xv, himask));
            const __m512 xl = _mm512_castsi512_ps(_mm512_slli_epi32(xv, 16));
            const bool full = q < nfull;
            const __mmask32 m = full ? ~(__mmask32)0 : (__mmask32)((1ull << (K - 32 * q)) - 1);
            for (int r = 0; r < R; r++) {
                __m512i wv;
                if (f8) wv = e4m3_32(_mm256_maskz_loadu_epi8(m, (const uint8_t *)w[r] + 32 * q), tab);
                else if (full) wv = _mm512_loadu_si512((const uint16_t *)w[r] + 32 * q);
                else wv = _mm512_maskz_loadu_epi16(m, (const uint16_t *)w[r] + 32 * q);
                if (dp) {
                    b[r] = _mm512_dpbf16_ps(b[r], (__m512bh)wv, (__m512bh)xv);
                    continue;
                }
                if (!f8) mn = _mm512_min_epu16(mn, _mm512_sub_epi16(_mm512_and_si512(wv, mag), one));
                b[r] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(wv, himask)), xh, b[r]);
                b[r] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(wv, 16)), xl, b[r]);
            }
        }
        if (bp > 0)
            for (int r = 0; r < R; r++) {
                tot[r] = _mm512_fmadd_ps(b[r], _mm512_set1_ps(sc[r][j]), tot[r]);
                b[r] = _mm512_setzero_ps();
            }
    }
    rows_finish(w, R, f8, K, x, bp, sc, bp > 0 ? tot : b, out, scratch);
    if (dp || f8) return 256;
    const __m256i m16 = _mm256_min_epu16(_mm512_castsi512_si256(mn), _mm512_extracti64x4_epi64(mn, 1));
    const __m128i m8 = _mm_min_epu16(_mm256_castsi256_si128(m16), _mm256_extracti128_si256(m16, 1));
    return floor_of_min((unsigned)_mm_cvtsi128_si32(_mm_minpos_epu16(m8)) & 0xFFFFu);
}

/* The same with AVX512-VBMI, 64 bytes (two steps of 16 pairs) per load: the bf16's high and low
 * bytes through two 128-entry byte tables (vpermi2b reads the code's low 7 bits), the sign
 * or-ed into the high byte, the bytes interleaved into words by one vpermt2b per 32 words. */
#define TVB __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,avx512vbmi")))
TVB static INL int f8_rows_vbmi_t(const void *const *w, const int R, int64_t K, const uint16_t *x, int64_t bp,
                                  const float *const *sc, const bool dp, float *out, uint16_t *scratch)
{
    const int64_t nq = ((K + 1) / 2 + 15) / 16, qpb = bp / 16;
    const __m512i himask = _mm512_set1_epi32((int)0xFFFF0000u), sign = _mm512_set1_epi8((char)0x80);
    uint8_t th[128], tl[128], i0[64], i1[64];
    for (int c = 0; c < 128; c++) th[c] = (uint8_t)(dsacp_e4m3_bf16_mag[c] >> 8), tl[c] = (uint8_t)dsacp_e4m3_bf16_mag[c];
    for (int i = 0; i < 32; i++) i0[2 * i] = (uint8_t)i, i0[2 * i + 1] = (uint8_t)(64 + i), i1[2 * i] = (uint8_t)(32 + i),
                                 i1[2 * i + 1] = (uint8_t)(96 + i);
    const __m512i th0 = _mm512_loadu_si512(th), th1 = _mm512_loadu_si512(th + 64);
    const __m512i tl0 = _mm512_loadu_si512(tl), tl1 = _mm512_loadu_si512(tl + 64);
    const __m512i ix0 = _mm512_loadu_si512(i0), ix1 = _mm512_loadu_si512(i1);
    __m512 b[8], tot[8];
    for (int r = 0; r < R; r++) b[r] = tot[r] = _mm512_setzero_ps();
    for (int64_t q = 0; q < nq; q += 2) {
        const bool two = q + 1 < nq, fold0 = (q + 1) % qpb == 0 || q + 1 == nq, fold1 = (q + 2) % qpb == 0 || q + 2 == nq;
        const int64_t j0 = q / qpb, j1 = (q + 1) / qpb, left = K - 32 * q;
        const __mmask64 m = left >= 64 ? ~(__mmask64)0 : (__mmask64)((1ull << left) - 1);
        const __m512i x0 = _mm512_loadu_si512(x + 32 * q), x1 = two ? _mm512_loadu_si512(x + 32 * q + 32) : x0;
        for (int r = 0; r < R; r++) {
            const __m512i raw = _mm512_maskz_loadu_epi8(m, (const uint8_t *)w[r] + 32 * q);
            const __m512i lo = _mm512_permutex2var_epi8(tl0, raw, tl1);
            const __m512i hi = _mm512_ternarylogic_epi32(_mm512_permutex2var_epi8(th0, raw, th1), raw, sign, 0xF8);
            __m512i wv = _mm512_permutex2var_epi8(lo, ix0, hi), xv = x0;
            for (int h = 0; h < 2; h++) {
                if (dp) {
                    b[r] = _mm512_dpbf16_ps(b[r], (__m512bh)wv, (__m512bh)xv);
                } else {
                    const __m512 xh = _mm512_castsi512_ps(_mm512_and_si512(xv, himask));
                    const __m512 xl = _mm512_castsi512_ps(_mm512_slli_epi32(xv, 16));
                    b[r] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(wv, himask)), xh, b[r]);
                    b[r] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(wv, 16)), xl, b[r]);
                }
                if (h ? fold1 : fold0) {
                    tot[r] = _mm512_fmadd_ps(b[r], _mm512_set1_ps(sc[r][h ? j1 : j0]), tot[r]);
                    b[r] = _mm512_setzero_ps();
                }
                if (!two) break;
                wv = _mm512_permutex2var_epi8(lo, ix1, hi), xv = x1;
            }
        }
    }
    rows_finish(w, R, true, K, x, bp, sc, tot, out, scratch);
    return 256;
}

/* One compiled body per form and row count (8, 4, 2, 1), run by run_rows. */
typedef int (*rows_fn)(const void *const *, int64_t, const uint16_t *, int64_t, const float *const *, float *,
                       uint16_t *);
#define ROWS_FN(ATTR, NAME, CALL)                                                                                 \
    ATTR static int NAME(const void *const *w, int64_t K, const uint16_t *x, int64_t bp, const float *const *sc,  \
                         float *out, uint16_t *scratch)                                                         \
    {                                                                                                             \
        return CALL;                                                                                              \
    }
#define ROWS_FNS(ATTR, NAME, CALL_R)                                                                              \
    ROWS_FN(ATTR, NAME##1, CALL_R(1)) ROWS_FN(ATTR, NAME##2, CALL_R(2)) ROWS_FN(ATTR, NAME##4, CALL_R(4))         \
    ROWS_FN(ATTR, NAME##8, CALL_R(8))
#define BF16_FMA(R) rows_t(w, R, K, x, bp, sc, false, false, out, scratch)
#define BF16_DP(R) rows_t(w, R, K, x, bp, sc, true, false, out, scratch)
#define F8_FMA(R) rows_t(w, R, K, x, bp, sc, false, true, out, scratch)
#define F8_DP(R) rows_t(w, R, K, x, bp, sc, true, true, out, scratch)
#define F8V_FMA(R) f8_rows_vbmi_t(w, R, K, x, bp, sc, false, out, scratch)
#define F8V_DP(R) f8_rows_vbmi_t(w, R, K, x, bp, sc, true, out, scratch)
ROWS_FNS(TROWS, bf16_fma, BF16_FMA) ROWS_FNS(TROWS, bf16_dp, BF16_DP) ROWS_FNS(TROWS, f8_fma, F8_FMA)
ROWS_FNS(TROWS, f8_dp, F8_DP) ROWS_FNS(TVB, f8v_fma, F8V_FMA) ROWS_FNS(TVB, f8v_dp, F8V_DP)
#define ROWS_TABLE(NAME) {NAME##1, NAME##2, NAME##4, NAME##8}

/* R rows by fns, 8, 4, 2, 1 a pass; the least floor the passes return. */
static int run_rows(const rows_fn fns[4], const void *const *rows, int R, int64_t K, const uint16_t *x, int64_t bp,
                    const float *const *scales, float *out, uint16_t *scratch)
{
    int floor = 256;
    while (R > 0) {
        const int r = R >= 8 ? 8 : R >= 4 ? 4 : R >= 2 ? 2 : 1;
        const int f = fns[r == 8 ? 3 : r == 4 ? 2 : r == 2 ? 1 : 0](rows, K, x, bp, scales, out, scratch);
        floor = f < floor ? f : floor;
        rows += r, out += r, R -= r;
        if (scales) scales += r;
    }
    return floor;
}

int dsacp_bf16dot_rows(const uint16_t *const *rows, int R, int64_t K, const uint16_t *x, int64_t bp,
                       const float *const *scales, bool dp, float *out)
{
    static const rows_fn fns[2][4] = {ROWS_TABLE(bf16_fma), ROWS_TABLE(bf16_dp)};
    return run_rows(fns[dp], (const void *const *)rows, R, K, x, bp, scales, out, NULL);
}

/* Whether the VBMI decode runs: the CPU has AVX512-VBMI, and DSACP_BF16DOT_NO_VBMI is unset (a
 * test hook for the other decode). Found once. */
static int use_vbmi(void)
{
    static int v; /* 0: not yet; else 1 + the answer */
    int r = __atomic_load_n(&v, __ATOMIC_RELAXED);
    if (!r) {
        __builtin_cpu_init();
        r = 1 + (__builtin_cpu_supports("avx512vbmi") && !getenv("DSACP_BF16DOT_NO_VBMI"));
        __atomic_store_n(&v, r, __ATOMIC_RELAXED);
    }
    return r - 1;
}

void dsacp_bf16dot_f8_rows(const uint8_t *const *rows, int R, int64_t K, const uint16_t *x, int64_t bp,
                           const float *const *scales, bool dp, float *out, uint16_t *scratch)
{
    static const rows_fn fns[2][2][4] = {{ROWS_TABLE(f8_fma), ROWS_TABLE(f8_dp)},
                                         {ROWS_TABLE(f8v_fma), ROWS_TABLE(f8v_dp)}};
    run_rows(fns[use_vbmi()][dp], (const void *const *)rows, R, K, x, bp, scales, out, scratch);
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
