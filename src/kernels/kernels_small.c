/*
 * kernels_small.c -- AVX-512 and AVX2 variants of the small per-row kernels (RMSNorm, the LSE
 * merge's weighted sum), slots of those ISAs' tables. Same contracts as the scalar twins in
 * kernels.c; per-row work with a fixed lane order, so results depend only on the row and the ISA.
 */
#include "kernels/kernels_isa.h"

#include <math.h>

#if defined(__x86_64__)
#include <immintrin.h>

/* ---- RMSNorm: sum of squares in double (as the scalar twin), 8 double lanes ---- */

__attribute__((target("avx512f,avx512vl"))) void dsacp_rmsnorm_avx512(float *y, const float *x,
                                                                   const float *weight, int64_t n, double eps)
{
    __m512d acc = _mm512_setzero_pd();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m512d v = _mm512_cvtps_pd(_mm256_loadu_ps(x + i));
        acc = _mm512_fmadd_pd(v, v, acc);
    }
    if (i < n) {
        __mmask8 m = (__mmask8)((1u << (n - i)) - 1);
        __m512d v = _mm512_cvtps_pd(_mm256_maskz_loadu_ps(m, x + i));
        acc = _mm512_fmadd_pd(v, v, acc);
    }
    const double ss = _mm512_reduce_add_pd(acc);
    const __m512 r = _mm512_set1_ps((float)(1.0 / sqrt(ss / (double)n + eps)));
    for (i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1);
        __m512 v = _mm512_maskz_loadu_ps(m, x + i), w = _mm512_maskz_loadu_ps(m, weight + i);
        _mm512_mask_storeu_ps(y + i, m, _mm512_mul_ps(w, _mm512_mul_ps(v, r)));
    }
}

__attribute__((target("avx2,fma"))) void dsacp_rmsnorm_avx2(float *y, const float *x, const float *weight,
                                                            int64_t n, double eps)
{
    __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v)), hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
        a0 = _mm256_fmadd_pd(lo, lo, a0);
        a1 = _mm256_fmadd_pd(hi, hi, a1);
    }
    double t[4], ss = 0;
    _mm256_storeu_pd(t, _mm256_add_pd(a0, a1));
    ss = (t[0] + t[1]) + (t[2] + t[3]);
    for (; i < n; i++) ss += (double)x[i] * x[i];
    const float rs = (float)(1.0 / sqrt(ss / (double)n + eps));
    const __m256 r = _mm256_set1_ps(rs);
    for (i = 0; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_loadu_ps(weight + i), _mm256_mul_ps(_mm256_loadu_ps(x + i), r)));
    for (; i < n; i++) y[i] = weight[i] * (x[i] * rs);
}

/* ---- LSE merge (dsacp_lse_merge_axpy in kernels.c): the per-part weights are scalar (R is
 * small), the weighted sum over d is vectorized; parts are added in fixed order ---- */

__attribute__((target("avx512f"))) void dsacp_axpy_avx512(float *o, const float *src, float wgt, int64_t d)
{
    const __m512 w = _mm512_set1_ps(wgt);
    for (int64_t i = 0; i < d; i += 16) {
        __mmask16 m = d - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (d - i)) - 1);
        __m512 a = _mm512_maskz_loadu_ps(m, o + i), s = _mm512_maskz_loadu_ps(m, src + i);
        _mm512_mask_storeu_ps(o + i, m, _mm512_fmadd_ps(w, s, a));
    }
}

__attribute__((target("avx2,fma"))) void dsacp_axpy_avx2(float *o, const float *src, float wgt, int64_t d)
{
    const __m256 w = _mm256_set1_ps(wgt);
    int64_t i = 0;
    for (; i + 8 <= d; i += 8)
        _mm256_storeu_ps(o + i, _mm256_fmadd_ps(w, _mm256_loadu_ps(src + i), _mm256_loadu_ps(o + i)));
    for (; i < d; i++) o[i] = fmaf(wgt, src[i], o[i]);
}

#endif
