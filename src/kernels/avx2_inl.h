/*
 * avx2_inl.h -- inline AVX2 helpers shared by the AVX2 translation units (kernels_avx2.c,
 * gemm_avx2.c; private to src/kernels, x86-64 only). Functions are compiled for AVX2 through a
 * target attribute, so including this needs no build flag.
 */
#ifndef DSACP_AVX2_INL_H
#define DSACP_AVX2_INL_H

#if defined(__x86_64__)
#include <immintrin.h>

#define T256 __attribute__((target("avx2,fma,f16c")))
#define INL __attribute__((always_inline)) inline

/* 8 e4m3 bytes -> their values times 2^-120 (exact; see kernels_avx512.c e4m3_bits): one multiply
 * by 2^120 * scale finishes the decode with a single rounding. 0x7F / 0xFF become NaN. */
T256 static INL __m256 e4m3_bits8(__m128i b8)
{
    __m256i v = _mm256_slli_epi32(_mm256_cvtepi8_epi32(b8), 20);
    const __m256i em = _mm256_set1_epi32(0x07F00000);
    __m256i nan = _mm256_cmpeq_epi32(_mm256_and_si256(v, em), em);
    v = _mm256_and_si256(v, _mm256_set1_epi32((int)0x87F00000u));
    v = _mm256_blendv_epi8(v, _mm256_set1_epi32(0x7FC00000), nan);
    return _mm256_castsi256_ps(v);
}
#endif

#endif
