/*
 * kernels_avx2.c -- the AVX2 ISA file: AVX2 + FMA variants of the kernels (kernels.h) and the
 * AVX2 kernel table, for CPUs without AVX-512 (and DSACP_ISA=avx2). Every function is compiled
 * for AVX2 through a target attribute (no build flag); the table is only chosen when dispatch.c
 * found the CPU able. Calls kernels_linear.c (the shared linear driver), the scalar twins of
 * kernels.c it keeps (cache row decoders), numerics and core.
 *
 * The reductions keep the AVX-512 variants' lane structure: a 16-lane accumulator is a pair of
 * ymm registers (lanes 0..7, 8..15), summed by the same fixed tree (l += l + 8, + 4, + 2, + 1).
 * Batch invariance: each output element is produced by one fixed sequence of instructions that
 * depends on its own inputs and lengths only; tails run the same arithmetic on zero-padded
 * copies (or masked loads), never a different algorithm.
 */
#include "kernels/kernels_isa.h"
#include "kernels/avx2_inl.h"
#include "numerics/numerics.h"

#include <math.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>


/* The fixed tree of dsacp_dot_f32 over 16 lanes held as (lo, hi). */
T256 static INL float hsum16(__m256 lo, __m256 hi)
{
    __m256 a = _mm256_add_ps(lo, hi);
    __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    __m128 c = _mm_add_ps(b, _mm_movehl_ps(b, b));
    __m128 d = _mm_add_ss(c, _mm_movehdup_ps(c));
    return _mm_cvtss_f32(d);
}

/* Lane mask of the first `left` of 8 lanes. */
T256 static INL __m256i mask8(int64_t left)
{
    const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(left >= 8 ? 8 : (int)left), idx);
}

/* ---- linear ---- */

/* 8 weights starting at byte pointer p (stored dtype dt), dequantized; mult = 2^120 * scale. */
T256 static INL __m256 wload8(int dt, const uint8_t *p, __m256 mult)
{
    switch (dt) {
    case DSACP_BF16:
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
    case DSACP_F16: return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
    case DSACP_F8_E4M3: return _mm256_mul_ps(e4m3_bits8(_mm_loadl_epi64((const __m128i *)p)), mult);
    default: return _mm256_loadu_ps((const float *)p);
    }
}

/* y[t][o0 + r] for r < NR, t < NT: the register tile (NR * NT * 2 accumulators). */
T256 static INL void lin_tile(int dt, const dsacp_weight *w, int64_t o0, const int NR, const float *x, int64_t ldx,
                              const int NT, float *y, int64_t ldy)
{
    const int64_t K = w->cols;
    const size_t es = dt == DSACP_F32 ? 4 : dt == DSACP_F8_E4M3 ? 1 : 2;
    const int64_t blk = dt == DSACP_F8_E4M3 ? w->block : K;
    const uint8_t *rows[4];
    __m256 acc[4][2][2];
#pragma GCC unroll 4
    for (int r = 0; r < NR; r++) {
        rows[r] = (const uint8_t *)w->data + (size_t)(o0 + r) * (size_t)K * es;
#pragma GCC unroll 2
        for (int t = 0; t < NT; t++) acc[r][t][0] = acc[r][t][1] = _mm256_setzero_ps();
    }
    for (int64_t k0 = 0; k0 < K; k0 += blk) {
        const int64_t k1 = K < k0 + blk ? K : k0 + blk;
        __m256 mult[4];
#pragma GCC unroll 4
        for (int r = 0; r < NR; r++) {
            float s = 1.0f;
            if (dt == DSACP_F8_E4M3) s = w->scale[((o0 + r) / w->block) * w->scale_stride + k0 / w->block] * 0x1p120f;
            mult[r] = _mm256_set1_ps(s);
        }
        int64_t k = k0;
        for (; k + 16 <= k1; k += 16) {
            __m256 xl[2], xh[2];
#pragma GCC unroll 2
            for (int t = 0; t < NT; t++) {
                xl[t] = _mm256_loadu_ps(x + t * ldx + k);
                xh[t] = _mm256_loadu_ps(x + t * ldx + k + 8);
            }
#pragma GCC unroll 4
            for (int r = 0; r < NR; r++) {
                const uint8_t *p = rows[r] + (size_t)k * es;
                if (((k * (int64_t)es) & 63) == 0) _mm_prefetch((const char *)p + 512, _MM_HINT_T0);
                __m256 wl = wload8(dt, p, mult[r]), wh = wload8(dt, p + 8 * es, mult[r]);
#pragma GCC unroll 2
                for (int t = 0; t < NT; t++) {
                    acc[r][t][0] = _mm256_fmadd_ps(wl, xl[t], acc[r][t][0]);
                    acc[r][t][1] = _mm256_fmadd_ps(wh, xh[t], acc[r][t][1]);
                }
            }
        }
        if (k < k1) {
            /* Tail: the same arithmetic on zero-padded copies. */
            const int64_t left = k1 - k;
            const __m256i m0 = mask8(left), m1 = mask8(left - 8);
            __m256 xl[2], xh[2];
#pragma GCC unroll 2
            for (int t = 0; t < NT; t++) {
                xl[t] = _mm256_maskload_ps(x + t * ldx + k, m0);
                xh[t] = left > 8 ? _mm256_maskload_ps(x + t * ldx + k + 8, m1) : _mm256_setzero_ps();
            }
#pragma GCC unroll 4
            for (int r = 0; r < NR; r++) {
                _Alignas(32) uint8_t pad[64] = {0};
                memcpy(pad, rows[r] + (size_t)k * es, (size_t)left * es);
                __m256 wl = wload8(dt, pad, mult[r]), wh = wload8(dt, pad + 8 * es, mult[r]);
#pragma GCC unroll 2
                for (int t = 0; t < NT; t++) {
                    acc[r][t][0] = _mm256_fmadd_ps(wl, xl[t], acc[r][t][0]);
                    acc[r][t][1] = _mm256_fmadd_ps(wh, xh[t], acc[r][t][1]);
                }
            }
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < NR; r++)
#pragma GCC unroll 2
        for (int t = 0; t < NT; t++) y[t * ldy + o0 + r] = hsum16(acc[r][t][0], acc[r][t][1]);
}


T256 static INL void lin_rows(int dt, const dsacp_weight *w, int64_t o0, int64_t o1, const float *x, int64_t ldx,
                              int64_t T, float *y, int64_t ldy)
{
    int64_t t = 0;
    for (; t + 2 <= T; t += 2) {
        int64_t o = o0;
        for (; o + 2 <= o1; o += 2) lin_tile(dt, w, o, 2, x + t * ldx, ldx, 2, y + t * ldy, ldy);
        for (; o < o1; o++) lin_tile(dt, w, o, 1, x + t * ldx, ldx, 2, y + t * ldy, ldy);
    }
    if (t == T) return;
    int64_t o = o0;
    for (; o + 4 <= o1; o += 4) lin_tile(dt, w, o, 4, x + t * ldx, ldx, 1, y + t * ldy, ldy);
    for (; o < o1; o++) lin_tile(dt, w, o, 1, x + t * ldx, ldx, 1, y + t * ldy, ldy);
}

DSACP_DEFINE_LINEAR_ROWS(T256, lin_rows)

/* ---- act_quant ---- */

/* dsacp_fake_quant_e4m3_groups over groups of 128, bit for bit: amax by max (NaN skipped, as the
 * scalar `v > amax` does), the same ue8m0 scale, x / s by IEEE division, the clamp to +-448
 * (NaN kept), rounding to e4m3 (normal range: the mantissa to 3 bits, nearest-even, a carry
 * moving into the exponent; below 2^-6: to a multiple of 2^-9, nearest-even), times s. A group
 * holding a NaN goes to the scalar code (its NaN payload is the table's). */
T256 void dsacp_fake_quant_e4m3_128_avx2(float *x, int64_t n)
{
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    const __m256 cmax = _mm256_set1_ps(DSACP_FP8_MAX), cmin = _mm256_set1_ps(-DSACP_FP8_MAX);
    const __m256 tiny = _mm256_set1_ps(0x1p-6f), up = _mm256_set1_ps(512.0f), down = _mm256_set1_ps(0x1p-9f);
    const __m256i bias = _mm256_set1_epi32(0x7FFFF), one = _mm256_set1_epi32(1), keep = _mm256_set1_epi32((int)0xFFF00000u);
    for (int64_t g = 0; g < n; g += 128) {
        float *xg = x + g;
        __m256 amax = _mm256_setzero_ps(), nan = _mm256_setzero_ps();
        for (int i = 0; i < 128; i += 8) {
            const __m256 v = _mm256_loadu_ps(xg + i);
            amax = _mm256_max_ps(_mm256_and_ps(v, absmask), amax);
            nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
        }
        if (_mm256_movemask_ps(nan)) {
            dsacp_fake_quant_e4m3_groups(xg, 128, 128);
            continue;
        }
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        const float sc = dsacp_ue8m0_scale(_mm_cvtss_f32(m4));
        const __m256 s = _mm256_set1_ps(sc);
        for (int i = 0; i < 128; i += 8) {
            __m256 v = _mm256_div_ps(_mm256_loadu_ps(xg + i), s);
            v = _mm256_max_ps(cmin, _mm256_min_ps(cmax, v));
            const __m256 a = _mm256_and_ps(v, absmask), sign = _mm256_andnot_ps(absmask, v);
            const __m256i ab = _mm256_castps_si256(a);
            const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(ab, 20), one);
            const __m256 rn = _mm256_castsi256_ps(_mm256_and_si256(_mm256_add_epi32(ab, _mm256_add_epi32(bias, odd)), keep));
            const __m256 rs = _mm256_mul_ps(_mm256_round_ps(_mm256_mul_ps(a, up), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), down);
            const __m256 r = _mm256_blendv_ps(rs, rn, _mm256_cmp_ps(a, tiny, _CMP_GE_OQ));
            _mm256_storeu_ps(xg + i, _mm256_mul_ps(_mm256_or_ps(r, sign), s));
        }
    }
}

/* ---- gemv_t ---- */

T256 static void gemv_t_avx2(const float *A, int64_t lda, const float *x, int64_t m, int64_t n, float *y)
{
    int64_t j = 0;
    for (; j + 32 <= n; j += 32) {
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int64_t i = 0; i < m; i++) {
            const float *r = A + i * lda + j;
            __m256 xi = _mm256_set1_ps(x[i]);
            a0 = _mm256_fmadd_ps(xi, _mm256_loadu_ps(r), a0);
            a1 = _mm256_fmadd_ps(xi, _mm256_loadu_ps(r + 8), a1);
            a2 = _mm256_fmadd_ps(xi, _mm256_loadu_ps(r + 16), a2);
            a3 = _mm256_fmadd_ps(xi, _mm256_loadu_ps(r + 24), a3);
        }
        _mm256_storeu_ps(y + j, a0);
        _mm256_storeu_ps(y + j + 8, a1);
        _mm256_storeu_ps(y + j + 16, a2);
        _mm256_storeu_ps(y + j + 24, a3);
    }
    for (; j < n; j += 8) {
        const __m256i mk = mask8(n - j);
        __m256 a0 = _mm256_setzero_ps();
        for (int64_t i = 0; i < m; i++)
            a0 = _mm256_fmadd_ps(_mm256_set1_ps(x[i]), _mm256_maskload_ps(A + i * lda + j, mk), a0);
        _mm256_maskstore_ps(y + j, mk, a0);
    }
}

/* ---- indexer ---- */

/* Scores of NK keys against 16-head groups [g0, g0 + NG) of the packed query (qt [di][Hp],
 * Hp % 16 == 0); sv[i][0..1] (16 lanes, lane = head mod 16) accumulate w * ReLU(q . k) over the
 * groups in order, exactly as the AVX-512 variant's single zmm does. */
T256 static INL void idx_tile(const float *qt, const float *wp, int64_t Hp, int64_t di, const float *const *kp,
                              const int NK, int64_t g0, const int NG, __m256 (*sv)[2])
{
    __m256 acc[2][2][2];
#pragma GCC unroll 2
    for (int i = 0; i < NK; i++)
#pragma GCC unroll 2
        for (int g = 0; g < NG; g++) acc[i][g][0] = acc[i][g][1] = _mm256_setzero_ps();
    const float *qg = qt + g0 * 16;
    for (int64_t d = 0; d < di; d++) {
        __m256 qv[2][2];
#pragma GCC unroll 2
        for (int g = 0; g < NG; g++) {
            qv[g][0] = _mm256_load_ps(qg + d * Hp + g * 16);
            qv[g][1] = _mm256_load_ps(qg + d * Hp + g * 16 + 8);
        }
#pragma GCC unroll 2
        for (int i = 0; i < NK; i++) {
            __m256 kb = _mm256_broadcast_ss(kp[i] + d);
#pragma GCC unroll 2
            for (int g = 0; g < NG; g++) {
                acc[i][g][0] = _mm256_fmadd_ps(qv[g][0], kb, acc[i][g][0]);
                acc[i][g][1] = _mm256_fmadd_ps(qv[g][1], kb, acc[i][g][1]);
            }
        }
    }
    const __m256 zero = _mm256_setzero_ps();
#pragma GCC unroll 2
    for (int i = 0; i < NK; i++)
#pragma GCC unroll 2
        for (int g = 0; g < NG; g++)
#pragma GCC unroll 2
            for (int hh = 0; hh < 2; hh++)
                sv[i][hh] = _mm256_fmadd_ps(_mm256_load_ps(wp + (g0 + g) * 16 + hh * 8),
                                            _mm256_max_ps(acc[i][g][hh], zero), sv[i][hh]);
}

T256 static INL void idx_keys(const float *qt, const float *wp, int64_t Hp, int64_t di, const float *const *kp,
                              const int NK, float *out)
{
    const int64_t G = Hp / 16;
    __m256 sv[2][2];
#pragma GCC unroll 2
    for (int i = 0; i < NK; i++) sv[i][0] = sv[i][1] = _mm256_setzero_ps();
    int64_t g = 0;
    for (; g + 2 <= G; g += 2) idx_tile(qt, wp, Hp, di, kp, NK, g, 2, sv);
    if (g < G) idx_tile(qt, wp, Hp, di, kp, NK, g, 1, sv);
#pragma GCC unroll 2
    for (int i = 0; i < NK; i++) out[i] = hsum16(sv[i][0], sv[i][1]);
}

T256 static void index_scores_avx2(const float *qt, const float *wp, int64_t Hp, int64_t di, const void *keys,
                                        const float *kscales, int64_t n, float *out)
{
    _Alignas(32) float kbuf[2 * 1024];
    const __m256 two120 = _mm256_set1_ps(0x1p120f);
    for (int64_t j0 = 0; j0 < n; j0 += 2) {
        const int nk = n - j0 < 2 ? (int)(n - j0) : 2;
        const float *kp[2];
        for (int i = 0; i < nk; i++) {
            if (kscales) {
                const uint8_t *k8 = (const uint8_t *)keys + (j0 + i) * di;
                float *kf = kbuf + i * di;
                int64_t d = 0;
                for (; d + 8 <= di; d += 8)
                    _mm256_storeu_ps(kf + d, _mm256_mul_ps(e4m3_bits8(_mm_loadl_epi64((const __m128i *)(k8 + d))), two120));
                for (; d < di; d++) kf[d] = dsacp_e4m3_to_f32(k8[d]);
                kp[i] = kf;
            } else {
                kp[i] = (const float *)keys + (j0 + i) * di;
            }
        }
        if (nk == 2) idx_keys(qt, wp, Hp, di, kp, 2, out + j0);
        else idx_keys(qt, wp, Hp, di, kp, 1, out + j0);
        if (kscales)
            for (int i = 0; i < nk; i++) out[j0 + i] *= kscales[j0 + i];
    }
}

/* ---- sparse MLA ---- */

/* e^x for x <= 0 (the Cephes polynomial of exp512); results below 2^-126 flush to 0, which
 * changes a softmax sum (>= 1) by less than 2^-126 relative. */
T256 static INL __m256 exp256(__m256 x)
{
    const __m256 lo = _mm256_set1_ps(-87.0f);
    const __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    x = _mm256_max_ps(x, lo);
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500E-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507E-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073E-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894E-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459E-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201E-1f));
    __m256 r2 = _mm256_mul_ps(r, r);
    p = _mm256_fmadd_ps(p, r2, r);
    p = _mm256_add_ps(p, _mm256_set1_ps(1.0f));
    /* n in [-126, 0]: 2^n is a normal float. */
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    p = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
    return _mm256_andnot_ps(under, p);
}

enum { MLA_NC = 64, MLA_HG = 32 }; /* keys per softmax chunk; heads per group (4 ymm) */

/* The score and output register tiles, generated twice (MLA_TILES): for 3-4 head vectors with up
 * to 3 keys or latent columns, and -- suffix _narrow -- for 1-2 head vectors with up to 8 (the
 * arrays sized to what they hold, so that the compiler keeps them in registers). Same arithmetic:
 *   s_tile: St[i][g] = scale * (q . kv[i]) for NK keys, NG 8-head vectors at Qt column h0;
 *   o_tile: Ot[c + i][g] = Ot[c + i][g] * alpha[g] + sum_j kv[j][c + i] * St[j][g], j < nc in order. */
#define MLA_UNROLL(N) _Pragma(#N)
#define MLA_TILES(SUFFIX, NI, NGV, UI)                                                                            \
    T256 static INL void mla_s_tile##SUFFIX(const float *Qt, int64_t Hp, int64_t h0, const float *kv, int64_t dk, \
                                            const int NK, const int NG, float scale, float *St)                   \
    {                                                                                                             \
        __m256 acc[NI][NGV];                                                                                      \
        MLA_UNROLL(GCC unroll UI)                                                                                 \
        for (int i = 0; i < NK; i++)                                                                              \
            MLA_UNROLL(GCC unroll 4)                                                                              \
        for (int g = 0; g < NG; g++) acc[i][g] = _mm256_setzero_ps();                                             \
        for (int64_t d = 0; d < dk; d++) {                                                                        \
            __m256 qv[NGV];                                                                                       \
            MLA_UNROLL(GCC unroll 4)                                                                              \
            for (int g = 0; g < NG; g++) qv[g] = _mm256_load_ps(Qt + d * Hp + h0 + g * 8);                        \
            MLA_UNROLL(GCC unroll UI)                                                                             \
            for (int i = 0; i < NK; i++) {                                                                        \
                __m256 kb = _mm256_broadcast_ss(kv + i * dk + d);                                                 \
                MLA_UNROLL(GCC unroll 4)                                                                          \
                for (int g = 0; g < NG; g++) acc[i][g] = _mm256_fmadd_ps(qv[g], kb, acc[i][g]);                   \
            }                                                                                                     \
        }                                                                                                         \
        const __m256 sc = _mm256_set1_ps(scale);                                                                  \
        MLA_UNROLL(GCC unroll UI)                                                                                 \
        for (int i = 0; i < NK; i++)                                                                              \
            MLA_UNROLL(GCC unroll 4)                                                                              \
        for (int g = 0; g < NG; g++) _mm256_store_ps(St + i * MLA_HG + g * 8, _mm256_mul_ps(acc[i][g], sc));     \
    }                                                                                                             \
    T256 static INL void mla_o_tile##SUFFIX(float *Ot, const float *kv, int64_t dk, int64_t c, const int NCD,     \
                                            const int NG, const float *St, int64_t nc, const __m256 *alpha)       \
    {                                                                                                             \
        __m256 acc[NI][NGV];                                                                                      \
        MLA_UNROLL(GCC unroll UI)                                                                                 \
        for (int i = 0; i < NCD; i++)                                                                             \
            MLA_UNROLL(GCC unroll 4)                                                                              \
        for (int g = 0; g < NG; g++) acc[i][g] = _mm256_mul_ps(_mm256_load_ps(Ot + (c + i) * MLA_HG + g * 8), alpha[g]); \
        for (int64_t j = 0; j < nc; j++) {                                                                        \
            __m256 pv[NGV];                                                                                       \
            MLA_UNROLL(GCC unroll 4)                                                                              \
            for (int g = 0; g < NG; g++) pv[g] = _mm256_load_ps(St + j * MLA_HG + g * 8);                         \
            const float *row = kv + j * dk + c;                                                                   \
            MLA_UNROLL(GCC unroll UI)                                                                             \
            for (int i = 0; i < NCD; i++) {                                                                       \
                __m256 vb = _mm256_broadcast_ss(row + i);                                                         \
                MLA_UNROLL(GCC unroll 4)                                                                          \
                for (int g = 0; g < NG; g++) acc[i][g] = _mm256_fmadd_ps(pv[g], vb, acc[i][g]);                   \
            }                                                                                                     \
        }                                                                                                         \
        MLA_UNROLL(GCC unroll UI)                                                                                 \
        for (int i = 0; i < NCD; i++)                                                                             \
            MLA_UNROLL(GCC unroll 4)                                                                              \
        for (int g = 0; g < NG; g++) _mm256_store_ps(Ot + (c + i) * MLA_HG + g * 8, acc[i][g]);                   \
    }
MLA_TILES(, 3, 4, 3)
MLA_TILES(_narrow, 8, 2, 8)
#undef MLA_TILES
#undef MLA_UNROLL

T256 static INL void mla_group(const float *Qt, int64_t Hp, int64_t h0, const int NG, const float *kv, int64_t n,
                               int64_t dc, int64_t dk, float scale, float *St, float *Ot, float *mo, float *lo)
{
    /* Keys (score tiles) and latent columns (output tiles) per tile: 12 accumulators at 3 and 4
     * head vectors, 12 at 2 and 8 at 1 (a narrow group keeps as many FMA chains in flight). Tiles
     * only group independent chains; each score and output sum runs in the same order. */
    const int NT = NG == 2 ? 6 : 8; /* narrow groups only */
    __m256 m[4], l[4];
#pragma GCC unroll 4
    for (int g = 0; g < NG; g++) {
        m[g] = _mm256_set1_ps(-INFINITY);
        l[g] = _mm256_setzero_ps();
    }
    memset(Ot, 0, (size_t)(dc * MLA_HG) * sizeof(float));
    for (int64_t c0 = 0; c0 < n; c0 += MLA_NC) {
        const int64_t nc = n - c0 < MLA_NC ? n - c0 : MLA_NC;
        const float *kc = kv + c0 * dk;
        int64_t j = 0;
        if (NG >= 3) {
            for (; j + 3 <= nc; j += 3) mla_s_tile(Qt, Hp, h0, kc + j * dk, dk, 3, NG, scale, St + j * MLA_HG);
            for (; j < nc; j++) mla_s_tile(Qt, Hp, h0, kc + j * dk, dk, 1, NG, scale, St + j * MLA_HG);
        } else {
            for (; j + NT <= nc; j += NT) mla_s_tile_narrow(Qt, Hp, h0, kc + j * dk, dk, NT, NG, scale, St + j * MLA_HG);
            for (; j < nc; j++) mla_s_tile_narrow(Qt, Hp, h0, kc + j * dk, dk, 1, NG, scale, St + j * MLA_HG);
        }
        __m256 alpha[4];
#pragma GCC unroll 4
        for (int g = 0; g < NG; g++) {
            __m256 mx = m[g];
            for (int64_t i = 0; i < nc; i++) mx = _mm256_max_ps(mx, _mm256_load_ps(St + i * MLA_HG + g * 8));
            alpha[g] = exp256(_mm256_sub_ps(m[g], mx));
            __m256 s = _mm256_mul_ps(l[g], alpha[g]);
            for (int64_t i = 0; i < nc; i++) {
                __m256 p = exp256(_mm256_sub_ps(_mm256_load_ps(St + i * MLA_HG + g * 8), mx));
                _mm256_store_ps(St + i * MLA_HG + g * 8, p);
                s = _mm256_add_ps(s, p);
            }
            l[g] = s;
            m[g] = mx;
        }
        int64_t c = 0;
        if (NG >= 3) {
            for (; c + 3 <= dc; c += 3) mla_o_tile(Ot, kc, dk, c, 3, NG, St, nc, alpha);
            for (; c < dc; c++) mla_o_tile(Ot, kc, dk, c, 1, NG, St, nc, alpha);
        } else {
            for (; c + NT <= dc; c += NT) mla_o_tile_narrow(Ot, kc, dk, c, NT, NG, St, nc, alpha);
            for (; c < dc; c++) mla_o_tile_narrow(Ot, kc, dk, c, 1, NG, St, nc, alpha);
        }
    }
#pragma GCC unroll 4
    for (int g = 0; g < NG; g++) {
        _mm256_store_ps(mo + g * 8, m[g]);
        _mm256_store_ps(lo + g * 8, l[g]);
    }
}

DSACP_DEFINE_MLA_GROUPS(T256, mla_group)

/* Head groups: 32 heads (4 ymm) each, or -- when that leaves fewer groups than threads and the
 * heads are few -- 16 or 8, so that the threads share the work (the small preset's 16 heads were
 * one group: one thread ran the whole sparse MLA of a decode token while the other waited). Every
 * head's arithmetic is the same whatever group it is in (its scores, softmax and sums are lanes
 * of their own), so the width changes no bit. The workspace is sized for up to MLA_MAXG groups of
 * the narrowest width (as many as 32-wide groups when the heads are many). */
enum { MLA_MAXG = 4 };

static int64_t mla_groups_max(int64_t Hp)
{
    const int64_t g32 = (Hp + MLA_HG - 1) / MLA_HG, g8 = Hp / 8 < MLA_MAXG ? Hp / 8 : MLA_MAXG;
    return g32 > g8 ? g32 : g8;
}

/* Heads per group for nth threads: the widest of 32, 16, 8 that gives nth groups, within the
 * workspace's group count. */
static int64_t mla_width(int64_t Hp, int nth)
{
    const int64_t gmax = mla_groups_max(Hp);
    int64_t w = MLA_HG;
    while (w > 8 && (Hp + w - 1) / w < nth && (Hp + w / 2 - 1) / (w / 2) <= gmax) w /= 2;
    return w;
}

static size_t mla_bytes_avx2(int64_t n, int64_t H, int64_t dc, int64_t dr)
{
    const int64_t dk = dc + dr, Hp = (H + 7) / 8 * 8, G = mla_groups_max(Hp);
    const size_t per = (size_t)(MLA_NC * MLA_HG + dc * MLA_HG + 2 * MLA_HG);
    return ((size_t)(dk * Hp) + (size_t)G * per) * sizeof(float);
}

static void sparse_mla_avx2(const float *q, const float *kv, int64_t n, int64_t H, int64_t dc, int64_t dr,
                            float scale, float *o, float *lse, float *buf)
{
    const int64_t dk = dc + dr, Hp = (H + 7) / 8 * 8;
    /* Narrower groups only where the groups then run in parallel. */
    const int nth = dsacp_kernel_threads();
    const bool split = nth > 1 && (double)n * (double)H * (double)dk >= 1e6;
    const int64_t W = split ? mla_width(Hp, nth) : MLA_HG, G = (Hp + W - 1) / W;
    if (n == 0) {
        dsacp_mla_empty(H, dc, o, lse);
        return;
    }
    dsacp_transpose_heads(q, H, dk, Hp, buf);
    dsacp_mla_job j = {.Qt = buf, .kv = kv, .n = n, .H = H, .Hp = Hp, .dc = dc, .dr = dr, .scale = scale, .o = o,
                       .lse = lse, .tiles = buf + dk * Hp,
                       .per = (size_t)(MLA_NC * MLA_HG + dc * MLA_HG + 2 * MLA_HG), .nc = MLA_NC, .ld = MLA_HG,
                       .width = W, .lanes = 8};
    dsacp_parallel_for(G, split, mla_group_task, &j);
}

DSACP_DEFINE_LINEAR_SLOTS(linear_avx2, lin_rows, NULL, NULL, dsacp_fake_quant_e4m3_128_avx2, DSACP_ISA_AVX2)

const dsacp_kernel_table dsacp_kernels_avx2 = {
    .isa = DSACP_ISA_AVX2,
    .linear_ws_bytes = linear_avx2_ws_bytes,
    .linear = linear_avx2,
    .rmsnorm = dsacp_rmsnorm_avx2,
    .gemv_t = gemv_t_avx2,
    .index_transposed = true,
    .index_scores = index_scores_avx2,
    .mla_bytes = mla_bytes_avx2,
    .sparse_mla = sparse_mla_avx2,
    .axpy = dsacp_axpy_avx2,
    .decode_isa = DSACP_ISA_SCALAR, /* the cache rows: AVX2 has no decoders of its own */
    .bf16_row = dsacp_bf16_row_scalar,
    .e4m3_row = dsacp_e4m3_row_scalar,
};

#endif
