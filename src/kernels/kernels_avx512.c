/*
 * kernels_avx512.c -- the AVX-512 ISA file: AVX-512 variants of the kernels (kernels.h) and the
 * AVX-512 kernel tables (with and without VBMI). Every function is compiled for AVX-512 through a
 * target attribute (no build flag); the tables are only chosen when dispatch.c found the CPU
 * able. Calls gemm_avx2.c (the blocked many-row linear), kernels_small.c, kernels_linear.c (the
 * shared linear driver), the AVX2 act_quant rounding, numerics and core. Batch invariance: each
 * output element is produced by one fixed sequence of vector instructions that depends on its own
 * inputs and lengths only; tails use masked loads with the same arithmetic as full vectors.
 */
#include "kernels/kernels_isa.h"
#include "numerics/numerics.h"

#include <math.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>

#define T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))
#define INL __attribute__((always_inline)) inline

/* The fixed tree of dsacp_dot_f32: lanes l += l + 8, then + 4, + 2, + 1. */
T512 static INL float hsum_tree(__m512 v)
{
    __m256 a = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    __m128 c = _mm_add_ps(b, _mm_movehl_ps(b, b));
    __m128 d = _mm_add_ss(c, _mm_movehdup_ps(c));
    return _mm_cvtss_f32(d);
}

/* 16 e4m3 bytes -> their values times 2^-120 (exact): sign to bit 31, exponent and mantissa to
 * bits 26..20, so one multiply by 2^120 (times any power-of-two or other scale) finishes the
 * decode with a single rounding. 0x7F / 0xFF (NaN in e4m3fn) become NaN. */
T512 static INL __m512 e4m3_bits(__m128i b8)
{
    __m512i v = _mm512_slli_epi32(_mm512_cvtepi8_epi32(b8), 20);
    const __m512i em = _mm512_set1_epi32(0x07F00000);
    __mmask16 nan = _mm512_cmpeq_epi32_mask(_mm512_and_si512(v, em), em);
    v = _mm512_and_si512(v, _mm512_set1_epi32((int)0x87F00000u));
    v = _mm512_mask_mov_epi32(v, nan, _mm512_set1_epi32(0x7FC00000));
    return _mm512_castsi512_ps(v);
}

static INL __mmask16 tail_mask(int64_t left) { return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1); }

/* ---- linear ---- */

/* 16 weights of row `row` from column k (masked), dequantized; mult = 2^120 * block scale. */
T512 static INL __m512 wload(int dt, const void *row, int64_t k, __mmask16 m, __m512 mult)
{
    switch (dt) {
    case DSACP_BF16:
        return _mm512_castsi512_ps(
            _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, (const uint16_t *)row + k)), 16));
    case DSACP_F16: return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, (const uint16_t *)row + k));
    case DSACP_F8_E4M3: return _mm512_mul_ps(e4m3_bits(_mm_maskz_loadu_epi8(m, (const uint8_t *)row + k)), mult);
    default: return _mm512_maskz_loadu_ps(m, (const float *)row + k);
    }
}

/* y[t][o0 + r] for r < NR, t < NT: the register tile. NR, NT are constants after inlining. */
T512 static INL void lin_tile(int dt, const dsacp_weight *w, int64_t o0, const int NR, const float *x, int64_t ldx,
                              const int NT, float *y, int64_t ldy)
{
    const int64_t K = w->cols;
    const size_t es = dt == DSACP_F32 ? 4 : dt == DSACP_F8_E4M3 ? 1 : 2;
    const int64_t blk = dt == DSACP_F8_E4M3 ? w->block : K;
    const void *rows[4];
    __m512 acc[4][4];
#pragma GCC unroll 4
    for (int r = 0; r < NR; r++) {
        rows[r] = (const uint8_t *)w->data + (size_t)(o0 + r) * (size_t)K * es;
#pragma GCC unroll 4
        for (int t = 0; t < NT; t++) acc[r][t] = _mm512_setzero_ps();
    }
    for (int64_t k0 = 0; k0 < K; k0 += blk) {
        const int64_t k1 = K < k0 + blk ? K : k0 + blk;
        __m512 mult[4];
#pragma GCC unroll 4
        for (int r = 0; r < NR; r++) {
            float s = 1.0f;
            if (dt == DSACP_F8_E4M3) s = w->scale[((o0 + r) / w->block) * w->scale_stride + k0 / w->block] * 0x1p120f;
            mult[r] = _mm512_set1_ps(s);
        }
        for (int64_t k = k0; k < k1; k += 16) {
            const __mmask16 m = tail_mask(k1 - k);
            __m512 xv[4];
#pragma GCC unroll 4
            for (int t = 0; t < NT; t++) xv[t] = _mm512_maskz_loadu_ps(m, x + t * ldx + k);
#pragma GCC unroll 4
            for (int r = 0; r < NR; r++) {
                /* The weight stream is the bottleneck at small T: fetch 512 bytes ahead. */
                if (((k * (int64_t)es) & 63) == 0)
                    _mm_prefetch((const char *)rows[r] + (size_t)k * es + 512, _MM_HINT_T0);
                __m512 wv = wload(dt, rows[r], k, m, mult[r]);
#pragma GCC unroll 4
                for (int t = 0; t < NT; t++) acc[r][t] = _mm512_fmadd_ps(wv, xv[t], acc[r][t]);
            }
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < NR; r++)
#pragma GCC unroll 4
        for (int t = 0; t < NT; t++) y[t * ldy + o0 + r] = hsum_tree(acc[r][t]);
}


T512 static INL void lin_rows(int dt, const dsacp_weight *w, int64_t o0, int64_t o1, const float *x, int64_t ldx,
                              int64_t T, float *y, int64_t ldy)
{
    int64_t t = 0;
    for (; t + 4 <= T; t += 4) {
        int64_t o = o0;
        for (; o + 4 <= o1; o += 4) lin_tile(dt, w, o, 4, x + t * ldx, ldx, 4, y + t * ldy, ldy);
        for (; o < o1; o++) lin_tile(dt, w, o, 1, x + t * ldx, ldx, 4, y + t * ldy, ldy);
    }
    const int64_t rem = T - t;
    if (!rem) return;
    int64_t o = o0;
    for (; o + 4 <= o1; o += 4) {
        if (rem == 3) lin_tile(dt, w, o, 4, x + t * ldx, ldx, 3, y + t * ldy, ldy);
        else if (rem == 2) lin_tile(dt, w, o, 4, x + t * ldx, ldx, 2, y + t * ldy, ldy);
        else lin_tile(dt, w, o, 4, x + t * ldx, ldx, 1, y + t * ldy, ldy);
    }
    for (; o < o1; o++)
        for (int64_t tt = t; tt < T; tt++) lin_tile(dt, w, o, 1, x + tt * ldx, ldx, 1, y + tt * ldy, ldy);
}

DSACP_DEFINE_LINEAR_ROWS(T512, lin_rows)
DSACP_DEFINE_LINEAR_SLOTS(linear_avx512, lin_rows, NULL, NULL, dsacp_fake_quant_e4m3_128_avx2, DSACP_ISA_AVX512)

/* ---- linear, F8_E4M3 with AVX512-VBMI: table decode ----
 * 64 weight bytes per step: two vpermi2b lookups of the 7-bit magnitude give the high and low
 * bytes of the value's bf16 encoding (e4m3 values are exact in bf16, NaN stays NaN), the sign is
 * OR-ed into the high byte, and two rounds of unpacking against zero give 4 zmm of f32 whose
 * columns are, for group g and lane p, 16 (p / 4) + 4 g + p % 4 of the 64. x is permuted the same
 * way once per call (lin8_permute_x). Per output: lane p sums its 4 groups' products in order
 * over each 128-column (w->block) block into b, then tot = fma(b, block scale, tot); y is the
 * fixed tree over tot's 16 lanes. The same chain for every T. */
#define T512V __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi,fma")))

typedef struct lin8_tab {
    _Alignas(64) uint8_t hi[128];
    _Alignas(64) uint8_t lo[128];
} lin8_tab;

static void lin8_tab_init(lin8_tab *tb)
{
    for (int b = 0; b < 128; b++) {
        float v = dsacp_e4m3_to_f32((uint8_t)b);
        uint32_t u;
        memcpy(&u, &v, sizeof u);
        if (v != v) u = 0x7FC00000u;
        tb->hi[b] = (uint8_t)(u >> 24);
        tb->lo[b] = (uint8_t)(u >> 16);
    }
}

static void lin8_permute_x(const float *x, int64_t T, int64_t ldx, int64_t K, float *xp, int64_t Kp)
{
    for (int64_t t = 0; t < T; t++)
        for (int64_t c = 0; c < Kp; c += 64)
            for (int g = 0; g < 4; g++)
                for (int p = 0; p < 16; p++) {
                    int64_t col = c + 16 * (p / 4) + 4 * g + p % 4;
                    xp[t * Kp + c + g * 16 + p] = col < K ? x[t * ldx + col] : 0.0f;
                }
}

T512V static INL void lin8_tile(const dsacp_weight *w, int64_t o0, const int NR, const float *xp, int64_t Kp,
                               const int NT, float *y, int64_t ldy, const lin8_tab *tb)
{
    const int64_t K = w->cols, blk = w->block;
    const __m512i th0 = _mm512_load_si512(tb->hi), th1 = _mm512_load_si512(tb->hi + 64);
    const __m512i tl0 = _mm512_load_si512(tb->lo), tl1 = _mm512_load_si512(tb->lo + 64);
    const __m512i zero = _mm512_setzero_si512(), sign = _mm512_set1_epi8((char)0x80);
    const uint8_t *rows[4];
    __m512 tot[4][4];
#pragma GCC unroll 4
    for (int r = 0; r < NR; r++) {
        rows[r] = (const uint8_t *)w->data + (size_t)(o0 + r) * (size_t)K;
#pragma GCC unroll 4
        for (int t = 0; t < NT; t++) tot[r][t] = _mm512_setzero_ps();
    }
    /* Prefetch distance: a 4-row tile (one token) streams 4 contiguous rows, so fetch the same
     * offset of the next tile -- short rows (K = 1536) would otherwise start every tile cold. */
    const int64_t pf = NR == 4 ? 4 * K : 1024;
    for (int64_t k0 = 0; k0 < K; k0 += blk) {
        const int64_t k1 = K < k0 + blk ? K : k0 + blk;
        __m512 b[4][4];
#pragma GCC unroll 4
        for (int r = 0; r < NR; r++)
#pragma GCC unroll 4
            for (int t = 0; t < NT; t++) b[r][t] = _mm512_setzero_ps();
        for (int64_t k = k0; k < k1; k += 64) {
            const __mmask64 m = k1 - k >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << (k1 - k)) - 1);
#pragma GCC unroll 4
            for (int r = 0; r < NR; r++) {
                _mm_prefetch((const char *)rows[r] + k + pf, _MM_HINT_T0);
                const __m512i v = _mm512_maskz_loadu_epi8(m, rows[r] + k);
                __m512i hi = _mm512_permutex2var_epi8(th0, v, th1);
                const __m512i lo = _mm512_permutex2var_epi8(tl0, v, tl1);
                hi = _mm512_ternarylogic_epi32(hi, v, sign, 0xF8); /* hi | (v & sign) */
                const __m512i wl = _mm512_unpacklo_epi8(lo, hi), wh = _mm512_unpackhi_epi8(lo, hi);
                const __m512 wv[4] = {_mm512_castsi512_ps(_mm512_unpacklo_epi16(zero, wl)),
                                      _mm512_castsi512_ps(_mm512_unpackhi_epi16(zero, wl)),
                                      _mm512_castsi512_ps(_mm512_unpacklo_epi16(zero, wh)),
                                      _mm512_castsi512_ps(_mm512_unpackhi_epi16(zero, wh))};
#pragma GCC unroll 4
                for (int t = 0; t < NT; t++) {
                    const float *xk = xp + t * Kp + k;
#pragma GCC unroll 4
                    for (int g = 0; g < 4; g++) b[r][t] = _mm512_fmadd_ps(wv[g], _mm512_load_ps(xk + 16 * g), b[r][t]);
                }
            }
        }
#pragma GCC unroll 4
        for (int r = 0; r < NR; r++) {
            const __m512 s = _mm512_set1_ps(w->scale[((o0 + r) / blk) * w->scale_stride + k0 / blk]);
#pragma GCC unroll 4
            for (int t = 0; t < NT; t++) tot[r][t] = _mm512_fmadd_ps(b[r][t], s, tot[r][t]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < NR; r++)
#pragma GCC unroll 4
        for (int t = 0; t < NT; t++) y[t * ldy + o0 + r] = hsum_tree(tot[r][t]);
}

T512V static void lin8_rows(const dsacp_weight *w, int64_t o0, int64_t o1, const float *xp, int64_t Kp, int64_t T,
                            float *y, int64_t ldy, const lin8_tab *tb)
{
    int64_t t = 0;
    for (; t + 4 <= T; t += 4)
        for (int64_t o = o0; o < o1; o++) lin8_tile(w, o, 1, xp + t * Kp, Kp, 4, y + t * ldy, ldy, tb);
    const int64_t rem = T - t;
    if (rem == 3)
        for (int64_t o = o0; o < o1; o++) lin8_tile(w, o, 1, xp + t * Kp, Kp, 3, y + t * ldy, ldy, tb);
    else if (rem == 2)
        for (int64_t o = o0; o < o1; o++) lin8_tile(w, o, 1, xp + t * Kp, Kp, 2, y + t * ldy, ldy, tb);
    else if (rem == 1) {
        int64_t o = o0;
        for (; o + 4 <= o1; o += 4) lin8_tile(w, o, 4, xp + t * Kp, Kp, 1, y + t * ldy, ldy, tb);
        for (; o < o1; o++) lin8_tile(w, o, 1, xp + t * Kp, Kp, 1, y + t * ldy, ldy, tb);
    }
}

/* The permuted input: T rows of K rounded up to 64. */
static size_t lin8_x_bytes(const dsacp_weight *w, int64_t T)
{
    return dsacp_ws_round(dsacp_ws_mul(dsacp_ws_mul((size_t)T, (size_t)((w->cols + 63) / 64 * 64)), sizeof(float)));
}

/* One table-decode linear: the permuted input and the tables, row block by row block. */
typedef struct lin8_job {
    const dsacp_weight *w;
    const float *xp;
    int64_t Kp, T;
    float *y;
    int64_t ldy;
    lin8_tab tb;
} lin8_job;

static void lin8_block(void *ctx, int64_t b)
{
    const lin8_job *j = ctx;
    const int64_t N = j->w->rows;
    const int64_t o0 = b * DSACP_LINEAR_BLOCK, o1 = o0 + DSACP_LINEAR_BLOCK < N ? o0 + DSACP_LINEAR_BLOCK : N;
    lin8_rows(j->w, o0, o1, j->xp, j->Kp, j->T, j->y, j->ldy, &j->tb);
}

static int lin8_linear(const dsacp_weight *w, const float *x, int64_t T, int64_t ldx, float *y, int64_t ldy, void *ws,
                       size_t ws_bytes)
{
    const int64_t K = w->cols, N = w->rows, Kp = (K + 63) / 64 * 64;
    dsacp_ws s = dsacp_ws_open(ws, ws_bytes);
    float *xp = dsacp_ws_take(&s, lin8_x_bytes(w, T));
    if (!xp) return dsacp_linear_short_ws(w, ws_bytes, lin8_x_bytes(w, T));
    lin8_permute_x(x, T, ldx, K, xp, Kp);
    lin8_job j = {.w = w, .xp = xp, .Kp = Kp, .T = T, .y = y, .ldy = ldy};
    lin8_tab_init(&j.tb);
    /* Threads split the row blocks when the call is large enough. */
    const int64_t nb = (N + DSACP_LINEAR_BLOCK - 1) / DSACP_LINEAR_BLOCK;
    dsacp_parallel_for(nb, (double)N * (double)K * (double)T >= 65536, lin8_block, &j);
    return DSACP_OK;
}

/* The VBMI table decode for FP8 weights whose blocks are multiples of 64 columns (the driver's
 * `fast`: the workspace after the act_quant copy). */
static bool lin8_suits(const dsacp_weight *w) { return w->dtype == DSACP_F8_E4M3 && w->block % 64 == 0; }

static size_t lin8_ws_bytes(const dsacp_weight *w, int64_t T)
{
    if (!lin8_suits(w)) return 0;
    const size_t x = lin8_x_bytes(w, T), g = T >= DSACP_GEMM_MIN_T ? dsacp_linear_gemm_ws_bytes(w, T, true) : 0;
    return x > g ? x : g;
}

static int lin8_fast(const dsacp_weight *w, const float *x, int64_t T, int64_t ldx, float *y, int64_t ldy, int *rc,
                     void *ws, size_t ws_bytes)
{
    if (!lin8_suits(w)) return 0;
    /* Many tokens: the blocked GEMM running these very chains (gemm_avx2.c, fold mode). */
    if (T >= DSACP_GEMM_MIN_T && dsacp_linear_gemm(w, x, T, ldx, y, ldy, true, rc, ws, ws_bytes)) return 1;
    *rc = lin8_linear(w, x, T, ldx, y, ldy, ws, ws_bytes);
    return 1;
}

/* The VBMI table's linear slots: lin_rows with lin8_fast in front. */
DSACP_DEFINE_LINEAR_SLOTS(linear_vbmi, lin_rows, lin8_fast, lin8_ws_bytes, dsacp_fake_quant_e4m3_128_avx2, DSACP_ISA_AVX512)

/* ---- gemv_t ---- */

T512 static void gemv_t_avx512(const float *A, int64_t lda, const float *x, int64_t m, int64_t n, float *y)
{
    int64_t j = 0;
    for (; j + 64 <= n; j += 64) {
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int64_t i = 0; i < m; i++) {
            const float *r = A + i * lda + j;
            __m512 xi = _mm512_set1_ps(x[i]);
            a0 = _mm512_fmadd_ps(xi, _mm512_loadu_ps(r), a0);
            a1 = _mm512_fmadd_ps(xi, _mm512_loadu_ps(r + 16), a1);
            a2 = _mm512_fmadd_ps(xi, _mm512_loadu_ps(r + 32), a2);
            a3 = _mm512_fmadd_ps(xi, _mm512_loadu_ps(r + 48), a3);
        }
        _mm512_storeu_ps(y + j, a0);
        _mm512_storeu_ps(y + j + 16, a1);
        _mm512_storeu_ps(y + j + 32, a2);
        _mm512_storeu_ps(y + j + 48, a3);
    }
    for (; j < n; j += 16) {
        __mmask16 mk = tail_mask(n - j);
        __m512 a0 = _mm512_setzero_ps();
        for (int64_t i = 0; i < m; i++)
            a0 = _mm512_fmadd_ps(_mm512_set1_ps(x[i]), _mm512_maskz_loadu_ps(mk, A + i * lda + j), a0);
        _mm512_mask_storeu_ps(y + j, mk, a0);
    }
}

/* ---- indexer ---- */

/* Scores of NK keys (rows kp[0..NK) of di floats) against head zmm groups [g0, g0 + NG) of the
 * packed query; sv[i] accumulates w * ReLU(q . k) over the groups in order. */
T512 static INL void idx_tile(const float *qt, const float *wp, int64_t Hp, int64_t di, const float *const *kp,
                              const int NK, int64_t g0, const int NG, __m512 *sv)
{
    __m512 acc[6][4];
#pragma GCC unroll 6
    for (int i = 0; i < NK; i++)
#pragma GCC unroll 4
        for (int g = 0; g < NG; g++) acc[i][g] = _mm512_setzero_ps();
    const float *qg = qt + g0 * 16;
    for (int64_t d = 0; d < di; d++) {
        __m512 qv[4];
#pragma GCC unroll 4
        for (int g = 0; g < NG; g++) qv[g] = _mm512_load_ps(qg + d * Hp + g * 16);
#pragma GCC unroll 6
        for (int i = 0; i < NK; i++) {
            __m512 kb = _mm512_set1_ps(kp[i][d]);
#pragma GCC unroll 4
            for (int g = 0; g < NG; g++) acc[i][g] = _mm512_fmadd_ps(qv[g], kb, acc[i][g]);
        }
    }
    const __m512 zero = _mm512_setzero_ps();
#pragma GCC unroll 6
    for (int i = 0; i < NK; i++)
#pragma GCC unroll 4
        for (int g = 0; g < NG; g++)
            sv[i] = _mm512_fmadd_ps(_mm512_load_ps(wp + (g0 + g) * 16), _mm512_max_ps(acc[i][g], zero), sv[i]);
}

T512 static INL void idx_keys(const float *qt, const float *wp, int64_t Hp, int64_t di, const float *const *kp,
                              const int NK, float *out)
{
    const int64_t G = Hp / 16;
    __m512 sv[6];
#pragma GCC unroll 6
    for (int i = 0; i < NK; i++) sv[i] = _mm512_setzero_ps();
    int64_t g = 0;
    for (; g + 4 <= G; g += 4) idx_tile(qt, wp, Hp, di, kp, NK, g, 4, sv);
    switch (G - g) {
    case 3: idx_tile(qt, wp, Hp, di, kp, NK, g, 3, sv); break;
    case 2: idx_tile(qt, wp, Hp, di, kp, NK, g, 2, sv); break;
    case 1: idx_tile(qt, wp, Hp, di, kp, NK, g, 1, sv); break;
    default: break;
    }
#pragma GCC unroll 6
    for (int i = 0; i < NK; i++) out[i] = hsum_tree(sv[i]);
}

T512 static void index_scores_avx512(const float *qt, const float *wp, int64_t Hp, int64_t di, const void *keys,
                                          const float *kscales, int64_t n, float *out)
{
    _Alignas(64) float kbuf[6 * 1024];
    for (int64_t j0 = 0; j0 < n; j0 += 6) {
        const int nk = n - j0 < 6 ? (int)(n - j0) : 6;
        const float *kp[6];
        for (int i = 0; i < nk; i++) {
            if (kscales) {
                const uint8_t *k8 = (const uint8_t *)keys + (j0 + i) * di;
                float *kf = kbuf + i * di;
                const __m512 two120 = _mm512_set1_ps(0x1p120f);
                for (int64_t d = 0; d < di; d += 16) {
                    __mmask16 m = tail_mask(di - d);
                    _mm512_mask_storeu_ps(kf + d, m, _mm512_mul_ps(e4m3_bits(_mm_maskz_loadu_epi8(m, k8 + d)), two120));
                }
                kp[i] = kf;
            } else {
                kp[i] = (const float *)keys + (j0 + i) * di;
            }
        }
        switch (nk) {
        case 6: idx_keys(qt, wp, Hp, di, kp, 6, out + j0); break;
        case 5: idx_keys(qt, wp, Hp, di, kp, 5, out + j0); break;
        case 4: idx_keys(qt, wp, Hp, di, kp, 4, out + j0); break;
        case 3: idx_keys(qt, wp, Hp, di, kp, 3, out + j0); break;
        case 2: idx_keys(qt, wp, Hp, di, kp, 2, out + j0); break;
        default: idx_keys(qt, wp, Hp, di, kp, 1, out + j0); break;
        }
        if (kscales)
            for (int i = 0; i < nk; i++) out[j0 + i] *= kscales[j0 + i];
    }
}

/* ---- sparse MLA ---- */

/* e^x for x <= 0 (Cephes expf polynomial, about 1 ulp; tiny x underflow to 0 via scalef). */
T512 static INL __m512 exp512(__m512 x)
{
    x = _mm512_max_ps(x, _mm512_set1_ps(-104.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500E-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507E-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073E-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894E-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459E-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201E-1f));
    __m512 r2 = _mm512_mul_ps(r, r);
    p = _mm512_fmadd_ps(p, r2, r);
    p = _mm512_add_ps(p, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

enum { MLA_NC = 64 };

/* St[i][g] = scale * (q . kv[i]) for NK keys, NG head vectors at Qt column h0. */
T512 static INL void mla_s_tile(const float *Qt, int64_t Hp, int64_t h0, const float *kv, int64_t dk, const int NK,
                                const int NG, float scale, float *St)
{
    __m512 acc[6][4];
#pragma GCC unroll 6
    for (int i = 0; i < NK; i++)
#pragma GCC unroll 4
        for (int g = 0; g < NG; g++) acc[i][g] = _mm512_setzero_ps();
    for (int64_t d = 0; d < dk; d++) {
        __m512 qv[4];
#pragma GCC unroll 4
        for (int g = 0; g < NG; g++) qv[g] = _mm512_load_ps(Qt + d * Hp + h0 + g * 16);
#pragma GCC unroll 6
        for (int i = 0; i < NK; i++) {
            __m512 kb = _mm512_set1_ps(kv[i * dk + d]);
#pragma GCC unroll 4
            for (int g = 0; g < NG; g++) acc[i][g] = _mm512_fmadd_ps(qv[g], kb, acc[i][g]);
        }
    }
    const __m512 sc = _mm512_set1_ps(scale);
#pragma GCC unroll 6
    for (int i = 0; i < NK; i++)
#pragma GCC unroll 4
        for (int g = 0; g < NG; g++) _mm512_store_ps(St + i * 64 + g * 16, _mm512_mul_ps(acc[i][g], sc));
}

/* Ot[c + i][g] = Ot[c + i][g] * alpha[g] + sum_j kv[j][c + i] * St[j][g], j < nc in order. */
T512 static INL void mla_o_tile(float *Ot, const float *kv, int64_t dk, int64_t c, const int NC6, const int NG,
                                const float *St, int64_t nc, const __m512 *alpha)
{
    __m512 acc[6][4];
#pragma GCC unroll 6
    for (int i = 0; i < NC6; i++)
#pragma GCC unroll 4
        for (int g = 0; g < NG; g++) acc[i][g] = _mm512_mul_ps(_mm512_load_ps(Ot + (c + i) * 64 + g * 16), alpha[g]);
    for (int64_t j = 0; j < nc; j++) {
        __m512 pv[4];
#pragma GCC unroll 4
        for (int g = 0; g < NG; g++) pv[g] = _mm512_load_ps(St + j * 64 + g * 16);
        const float *row = kv + j * dk + c;
#pragma GCC unroll 6
        for (int i = 0; i < NC6; i++) {
            __m512 vb = _mm512_set1_ps(row[i]);
#pragma GCC unroll 4
            for (int g = 0; g < NG; g++) acc[i][g] = _mm512_fmadd_ps(pv[g], vb, acc[i][g]);
        }
    }
#pragma GCC unroll 6
    for (int i = 0; i < NC6; i++)
#pragma GCC unroll 4
        for (int g = 0; g < NG; g++) _mm512_store_ps(Ot + (c + i) * 64 + g * 16, acc[i][g]);
}

/* One group of NG head vectors (16 heads each) starting at Qt column h0. */
T512 static INL void mla_group(const float *Qt, int64_t Hp, int64_t h0, const int NG, const float *kv, int64_t n,
                               int64_t dc, int64_t dk, float scale, float *St, float *Ot, float *mo, float *lo)
{
    __m512 m[4], l[4];
#pragma GCC unroll 4
    for (int g = 0; g < NG; g++) {
        m[g] = _mm512_set1_ps(-INFINITY);
        l[g] = _mm512_setzero_ps();
    }
    memset(Ot, 0, (size_t)(dc * 64) * sizeof(float));
    for (int64_t c0 = 0; c0 < n; c0 += MLA_NC) {
        const int64_t nc = n - c0 < MLA_NC ? n - c0 : MLA_NC;
        const float *kc = kv + c0 * dk;
        int64_t j = 0;
        for (; j + 6 <= nc; j += 6) mla_s_tile(Qt, Hp, h0, kc + j * dk, dk, 6, NG, scale, St + j * 64);
        for (; j < nc; j++) mla_s_tile(Qt, Hp, h0, kc + j * dk, dk, 1, NG, scale, St + j * 64);
        __m512 alpha[4];
#pragma GCC unroll 4
        for (int g = 0; g < NG; g++) {
            __m512 mx = m[g];
            for (int64_t i = 0; i < nc; i++) mx = _mm512_max_ps(mx, _mm512_load_ps(St + i * 64 + g * 16));
            alpha[g] = exp512(_mm512_sub_ps(m[g], mx));
            __m512 s = _mm512_mul_ps(l[g], alpha[g]);
            for (int64_t i = 0; i < nc; i++) {
                __m512 p = exp512(_mm512_sub_ps(_mm512_load_ps(St + i * 64 + g * 16), mx));
                _mm512_store_ps(St + i * 64 + g * 16, p);
                s = _mm512_add_ps(s, p);
            }
            l[g] = s;
            m[g] = mx;
        }
        int64_t c = 0;
        for (; c + 6 <= dc; c += 6) mla_o_tile(Ot, kc, dk, c, 6, NG, St, nc, alpha);
        for (; c < dc; c++) mla_o_tile(Ot, kc, dk, c, 1, NG, St, nc, alpha);
    }
#pragma GCC unroll 4
    for (int g = 0; g < NG; g++) {
        _mm512_store_ps(mo + g * 16, m[g]);
        _mm512_store_ps(lo + g * 16, l[g]);
    }
}

DSACP_DEFINE_MLA_GROUPS(T512, mla_group)

/* Head groups: 64 heads (4 zmm) each, or -- when that leaves fewer groups than threads -- 32 or
 * 16, so that the threads share the work (the small preset's 16 heads were one group: one thread
 * ran a decode token's whole sparse MLA while the other waited). Every head's arithmetic is the
 * same whatever group it is in (its scores, softmax and sums are lanes of their own), so the width
 * changes no bit. The workspace holds up to MLA_MAXG groups of the narrowest width (as many as
 * 64-wide groups when the heads are many); the tiles keep the 64-head row stride. */
enum { MLA_MAXG = 4 };

static int64_t mla_groups_max(int64_t Hp)
{
    const int64_t g64 = (Hp + 63) / 64, g16 = Hp / 16 < MLA_MAXG ? Hp / 16 : MLA_MAXG;
    return g64 > g16 ? g64 : g16;
}

/* Heads per group for nth threads: the widest of 64, 32, 16 that gives nth groups, within the
 * workspace's group count. */
static int64_t mla_width(int64_t Hp, int nth)
{
    const int64_t gmax = mla_groups_max(Hp);
    int64_t w = 64;
    while (w > 16 && (Hp + w - 1) / w < nth && (Hp + w / 2 - 1) / (w / 2) <= gmax) w /= 2;
    return w;
}

static size_t mla_bytes_avx512(int64_t n, int64_t H, int64_t dc, int64_t dr)
{
    const int64_t dk = dc + dr, Hp = (H + 15) / 16 * 16, G = mla_groups_max(Hp);
    const size_t per = (size_t)(MLA_NC * 64 + dc * 64 + 128);
    return ((size_t)(dk * Hp) + (size_t)G * per) * sizeof(float);
}

static void sparse_mla_avx512(const float *q, const float *kv, int64_t n, int64_t H, int64_t dc, int64_t dr,
                              float scale, float *o, float *lse, float *buf)
{
    const int64_t dk = dc + dr, Hp = (H + 15) / 16 * 16;
    /* Threads split the head groups when the call is large enough; narrower groups only then. */
    const int nth = dsacp_kernel_threads();
    const bool split = nth > 1 && (double)n * (double)H * (double)dk >= 1e6;
    const int64_t W = split ? mla_width(Hp, nth) : 64, G = (Hp + W - 1) / W;
    if (n == 0) {
        dsacp_mla_empty(H, dc, o, lse);
        return;
    }
    dsacp_transpose_heads(q, H, dk, Hp, buf);
    dsacp_mla_job j = {.Qt = buf, .kv = kv, .n = n, .H = H, .Hp = Hp, .dc = dc, .dr = dr, .scale = scale, .o = o,
                       .lse = lse, .tiles = buf + dk * Hp, .per = (size_t)(MLA_NC * 64 + dc * 64 + 128),
                       .nc = MLA_NC, .ld = 64, .width = W, .lanes = 16};
    dsacp_parallel_for(G, split, mla_group_task, &j);
}

/* ---- cache row decoders (cache/kv_cache.c), the scalar twins' floats bit for bit ---- */

/* n bf16 -> f32 (exact). */
T512 static void bf16_row_avx512(const uint8_t *src, int64_t n, float *out)
{
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail_mask(n - i);
        __m512i v = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, src + 2 * i));
        _mm512_mask_storeu_ps(out + i, m, _mm512_castsi512_ps(_mm512_slli_epi32(v, 16)));
    }
}

/* e4m3 bytes times their group's scale: e4m3_bits gives value * 2^-120 exactly, one multiply by
 * scale * 2^120 (exact while |scale| < 2^7) rounds once -- the same float as the scalar
 * lut[b] * scale. Groups not a multiple of 16, or a scale out of that range: the scalar twin. */
T512 static void e4m3_row_avx512(const uint8_t *src, const float *scales, int64_t group, int64_t n, float *out)
{
    bool ok = group > 0 && group % 16 == 0;
    for (int64_t g = 0; ok && g < (n + group - 1) / group; g++) ok = fabsf(scales[g]) < 0x1p7f;
    if (!ok) {
        dsacp_e4m3_row_scalar(src, scales, group, n, out);
        return;
    }
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail_mask(n - i);
        const __m512 v = e4m3_bits(_mm_maskz_loadu_epi8(m, src + i));
        _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(v, _mm512_set1_ps(scales[i / group] * 0x1p120f)));
    }
}

/* The AVX-512 table; with AVX512-VBMI (chosen once by dispatch.c) the same but for the linear,
 * whose FP8 weights with blocks of a multiple of 64 run the table decode. */
#define AVX512_SLOTS                                                                                              \
    .isa = DSACP_ISA_AVX512, .rmsnorm = dsacp_rmsnorm_avx512, .gemv_t = gemv_t_avx512, .index_transposed = true,  \
    .index_scores = index_scores_avx512,                                                                          \
    .mla_bytes = mla_bytes_avx512, .sparse_mla = sparse_mla_avx512, .axpy = dsacp_axpy_avx512,                    \
    .decode_isa = DSACP_ISA_AVX512, .bf16_row = bf16_row_avx512, .e4m3_row = e4m3_row_avx512
const dsacp_kernel_table dsacp_kernels_avx512 = {AVX512_SLOTS, .linear_ws_bytes = linear_avx512_ws_bytes,
                                                 .linear = linear_avx512};
const dsacp_kernel_table dsacp_kernels_avx512_vbmi = {AVX512_SLOTS, .linear_ws_bytes = linear_vbmi_ws_bytes,
                                                      .linear = linear_vbmi};
#undef AVX512_SLOTS

#endif
