/*
 * mla_bf16_x86.c -- the SIMD phases of the deployed-mode sparse MLA (mla_bf16.h): SIMD lanes run
 * across heads (Qt [32 kd][Hp], St [32 kq][width], lane-major rows), and model lane l of every output is a small GEMM of
 * its own over the pairs p = l (mod 16) in increasing p (scores: the query's dim pairs against the
 * keys, a register tile of 6 keys x up to 4 head vectors; values: key pairs, p against the
 * latents, 6 latent dims x up to 4 head vectors), stored per lane and summed by the tree in
 * vector adds. Scores' forms: zmm FMA (plain operands: per pair the high product, then the low
 * one, each one fused f32 FMA -- a product of two bf16 is exact -- so DAZ/FTZ never act and the
 * bits are the model's), VDPBF16PS (where bf16dot_check.c found it the model), ymm FMA on AVX2.
 * The values are the definition's fmaf chain (f32 p, no DAZ/FTZ) in zmm or ymm FMAs, the same
 * bits by construction. A NaN result is redone by the model. The softmax phase (the max, exp,
 * the 16-lane sum) is the generic one's sequence of IEEE operations in vectors. Compiled through target attributes.
 * Calls mla_bf16.c's generic pieces and bf16dot.c.
 */
#include "kernels/mla_bf16.h"
#include "numerics/numerics.h"

#include <math.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>

#define T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))
#define TBF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,avx512bf16")))
#define T256 __attribute__((target("avx2,fma")))
#define INL __attribute__((always_inline)) inline

enum { LANES = 16, TILE = DSACP_MLA16_TILE };

/* The dword pair of two f32 holding bf16 values (lo: element 2p, hi: element 2p + 1). */
static INL uint32_t pair_of(float lo, float hi)
{
    return (dsacp_f32_bits(hi) & 0xFFFF0000u) | dsacp_f32_bits(lo) >> 16;
}

/* ======================================================================== AVX-512 ==== */

static INL __mmask16 tail16(int64_t left) { return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1); }

/* x rounded to bf16 (dsacp_f32_to_bf16), as the f32 holding it. */
T512 static INL __m512 r16_512(__m512 x)
{
    const __m512i u = _mm512_castps_si512(x), hi = _mm512_set1_epi32((int)0xFFFF0000u);
    const __mmask16 nan = _mm512_cmpgt_epi32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7FFFFFFF)),
                                                  _mm512_set1_epi32(0x7F800000));
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    const __m512i rounded = _mm512_and_si512(_mm512_add_epi32(u, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF))), hi);
    const __m512i quiet = _mm512_and_si512(_mm512_or_si512(u, _mm512_set1_epi32(0x00400000)), hi);
    return _mm512_castsi512_ps(_mm512_mask_mov_epi32(rounded, nan, quiet));
}

/* The running floor: the least exponent field of the nonzero values of v (masked by m). */
T512 static INL __m512i floor_512(__m512i fl, __m512 v, __mmask16 m)
{
    const __m512i u = _mm512_castps_si512(v);
    m &= _mm512_test_epi32_mask(u, _mm512_set1_epi32(0x7FFFFFFF));
    const __m512i e = _mm512_and_si512(_mm512_srli_epi32(u, 23), _mm512_set1_epi32(0xFF));
    return _mm512_mask_min_epi32(fl, m, fl, e);
}

T512 static int check_keys_512(const float *kv, int64_t rows, int64_t D, bool *same)
{
    __m512i fl = _mm512_set1_epi32(256);
    __mmask16 diff = 0;
    for (int64_t i = 0; i < rows * D; i += 16) {
        const __mmask16 m = tail16(rows * D - i);
        const __m512 x = _mm512_maskz_loadu_ps(m, kv + i), r = r16_512(x);
        diff |= _mm512_mask_cmpneq_epi32_mask(m, _mm512_castps_si512(x), _mm512_castps_si512(r));
        fl = floor_512(fl, r, m);
    }
    *same = diff == 0;
    return _mm512_reduce_min_epi32(fl);
}

T512 static void round_keys_512(const float *kv, int64_t rows, int64_t D, float *out, int64_t Dp)
{
    for (int64_t s = 0; s < rows; s++) {
        for (int64_t d = 0; d < D; d += 16) {
            const __mmask16 m = tail16(D - d);
            _mm512_mask_storeu_ps(out + s * Dp + d, m, r16_512(_mm512_maskz_loadu_ps(m, kv + s * D + d)));
        }
        if (Dp > D) out[s * Dp + D] = 0.0f;
    }
}

/* dsacp_exp_model in 16 lanes, operation for operation. */
T512 static INL __m512 exp_512(__m512 x)
{
    const __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
    const __mmask16 low = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-88.0f), _CMP_LT_OQ);
    const __m512 xq = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(x), _mm512_set1_epi32(0x00400000)));
    x = _mm512_min_ps(x, _mm512_set1_ps(89.0f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500E-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507E-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073E-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894E-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459E-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201E-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r);
    p = _mm512_add_ps(p, _mm512_set1_ps(1.0f));
    const __m512 n1 = _mm512_roundscale_ps(_mm512_mul_ps(n, _mm512_set1_ps(0.5f)), _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    const __m512 n2 = _mm512_sub_ps(n, n1);
    const __m512i b = _mm512_set1_epi32(127);
    const __m512 s1 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n1), b), 23));
    const __m512 s2 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n2), b), 23));
    __m512 y = _mm512_mul_ps(_mm512_mul_ps(p, s1), s2);
    const __mmask16 tiny = _mm512_cmp_ps_mask(y, _mm512_set1_ps(0x1p-126f), _CMP_LT_OQ);
    y = _mm512_mask_mov_ps(y, tiny | low, _mm512_setzero_ps());
    return _mm512_mask_mov_ps(y, nan, xq);
}

/* The model's tree over 16 lane vectors. */
T512 static INL __m512 tree_512(__m512 *v)
{
    for (int w = 8; w >= 1; w /= 2)
        for (int i = 0; i < w; i++) v[i] = _mm512_add_ps(v[i], v[i + w]);
    return v[0];
}

T512 static void softmax_512(const dsacp_mla16_job *j, const dsacp_mla16_group *g)
{
    const int64_t W = j->width, n = j->n;
    for (int64_t v = 0; v < g->cnt / 16; v++) {
        float *col = g->St + 16 * v;
        __m512 m = _mm512_set1_ps(-INFINITY), acc[LANES];
        for (int64_t s = 0; s < n; s++) m = _mm512_max_ps(_mm512_load_ps(col + dsacp_mla16_row(j, s) * W), m);
        for (int i = 0; i < LANES; i++) acc[i] = _mm512_setzero_ps();
        for (int64_t s0 = 0; s0 < n; s0 += LANES)
            for (int i = 0; i < LANES && s0 + i < n; i++) {
                float *at = col + dsacp_mla16_row(j, s0 + i) * W;
                const __m512 p = exp_512(_mm512_sub_ps(_mm512_load_ps(at), m));
                acc[i] = _mm512_add_ps(acc[i], p);
                _mm512_store_ps(at, p);
            }
        if (j->np > n) _mm512_store_ps(col + dsacp_mla16_row(j, n) * W, _mm512_setzero_ps());
        _mm512_store_ps(g->m + 16 * v, m);
        _mm512_store_ps(g->l + 16 * v, tree_512(acc));
    }
}

/* ---- scores ---- */

/* Model lane l of the scores of NK keys (rows k[i]) x NG head vectors from Qt column h0, FMA
 * form: into tile[l][i][16 g]. */
T512 static INL void s_lane_fma(const dsacp_mla16_job *j, int64_t h0, const float *const *k, const int NK, const int NG,
                                int64_t l, float *tile)
{
    __m512 acc[TILE][4];
    const int64_t P = j->Dp / 2, Hp = j->Hp;
#pragma GCC unroll 6
    for (int i = 0; i < NK; i++)
#pragma GCC unroll 4
        for (int v = 0; v < NG; v++) acc[i][v] = _mm512_setzero_ps();
    for (int64_t kk = 0, p = l; p < P; kk++, p += LANES) { /* lane l's rows of Qt, contiguous */
        const float *ql = j->Qt + 2 * (l * j->kd + kk) * Hp + h0, *qh = ql + Hp;
        /* every high product, then every low one: each chain still adds its pair's high product
         * first, and only 4 query vectors are live (24 accumulators stay in registers) */
        __m512 qv[4];
#pragma GCC unroll 2
        for (int half = 1; half >= 0; half--) {
#pragma GCC unroll 4
            for (int v = 0; v < NG; v++) qv[v] = _mm512_loadu_ps((half ? qh : ql) + 16 * v);
#pragma GCC unroll 6
            for (int i = 0; i < NK; i++) {
                const __m512 b = _mm512_set1_ps(k[i][2 * p + half]);
#pragma GCC unroll 4
                for (int v = 0; v < NG; v++) acc[i][v] = _mm512_fmadd_ps(qv[v], b, acc[i][v]);
            }
        }
    }
#pragma GCC unroll 6
    for (int i = 0; i < NK; i++)
#pragma GCC unroll 4
        for (int v = 0; v < NG; v++) _mm512_store_ps(tile + (l * TILE + i) * j->width + 16 * v, acc[i][v]);
}

/* The same by VDPBF16PS, every padded pair included (the model's (+0, +0) steps). */
TBF16 static INL void s_lane_dp(const dsacp_mla16_job *j, int64_t h0, const float *const *k, const int NK, const int NG,
                                int64_t l, float *tile)
{
    __m512 acc[TILE][4];
    const int64_t P = j->Dp / 2, PP = (P + LANES - 1) / LANES * LANES, Hp = j->Hp;
    const __m512i hi = _mm512_set1_epi32((int)0xFFFF0000u);
#pragma GCC unroll 6
    for (int i = 0; i < NK; i++)
#pragma GCC unroll 4
        for (int v = 0; v < NG; v++) acc[i][v] = _mm512_setzero_ps();
    for (int64_t kk = 0, p = l; p < PP; kk++, p += LANES) { /* lane l's rows of Qt, contiguous */
        __m512i qp[4];
        const float *ql = j->Qt + 2 * (l * j->kd + kk) * Hp + h0, *qh = ql + Hp;
#pragma GCC unroll 4
        for (int v = 0; v < NG; v++)
            qp[v] = p < P ? _mm512_or_si512(_mm512_and_si512(_mm512_loadu_si512(qh + 16 * v), hi),
                                            _mm512_srli_epi32(_mm512_loadu_si512(ql + 16 * v), 16))
                          : _mm512_setzero_si512();
#pragma GCC unroll 6
        for (int i = 0; i < NK; i++) {
            const __m512i kb = _mm512_set1_epi32(p < P ? (int)pair_of(k[i][2 * p], k[i][2 * p + 1]) : 0);
#pragma GCC unroll 4
            for (int v = 0; v < NG; v++) acc[i][v] = _mm512_dpbf16_ps(acc[i][v], (__m512bh)qp[v], (__m512bh)kb);
        }
    }
#pragma GCC unroll 6
    for (int i = 0; i < NK; i++)
#pragma GCC unroll 4
        for (int v = 0; v < NG; v++) _mm512_store_ps(tile + (l * TILE + i) * j->width + 16 * v, acc[i][v]);
}

/* A tile's 16 lanes summed by the tree, times scale, into St rows s0.. (a NaN redone). */
T512 static void s_finish_512(const dsacp_mla16_job *j, const dsacp_mla16_group *g, int64_t s0, int NK, int NG)
{
    const int64_t W = j->width;
    for (int i = 0; i < NK; i++)
        for (int v = 0; v < NG; v++) {
            __m512 t[LANES];
            for (int l = 0; l < LANES; l++) t[l] = _mm512_load_ps(g->tile + (l * TILE + i) * W + 16 * v);
            const __m512 r = _mm512_mul_ps(tree_512(t), _mm512_set1_ps(j->scale));
            float *out = g->St + dsacp_mla16_row(j, s0 + i) * W + 16 * v;
            _mm512_store_ps(out, r);
            __mmask16 bad = _mm512_cmp_ps_mask(r, r, _CMP_UNORD_Q);
            for (int64_t hh = 0; bad; hh++, bad >>= 1)
                if (bad & 1) out[hh] = dsacp_mla16_score(j, dsacp_bf16dot_scalar, g, 16 * v + hh, s0 + i);
        }
}

typedef void (*s_lane_fn)(const dsacp_mla16_job *, int64_t, const float *const *, int64_t, float *);
#define S_LANE(NAME, ATTR, FN, NK, NG)                                                                            \
    ATTR static void NAME##_##NK##_##NG(const dsacp_mla16_job *j, int64_t h0, const float *const *k, int64_t l,  \
                                        float *tile)                                                              \
    {                                                                                                             \
        FN(j, h0, k, NK, NG, l, tile);                                                                            \
    }
#define S_LANES(NAME, ATTR, FN)                                                                                   \
    S_LANE(NAME, ATTR, FN, 6, 1) S_LANE(NAME, ATTR, FN, 6, 2) S_LANE(NAME, ATTR, FN, 6, 3)                       \
    S_LANE(NAME, ATTR, FN, 6, 4) S_LANE(NAME, ATTR, FN, 1, 1) S_LANE(NAME, ATTR, FN, 1, 2)                       \
    S_LANE(NAME, ATTR, FN, 1, 3) S_LANE(NAME, ATTR, FN, 1, 4)                                                     \
    static const s_lane_fn NAME##_fns[2][4] = {{NAME##_6_1, NAME##_6_2, NAME##_6_3, NAME##_6_4},                 \
                                               {NAME##_1_1, NAME##_1_2, NAME##_1_3, NAME##_1_4}};
S_LANES(sfma, T512, s_lane_fma)
S_LANES(sdp, TBF16, s_lane_dp)

static void scores_512(const dsacp_mla16_job *j, int form, const dsacp_mla16_group *g)
{
    if (form != DSACP_MLA16_FMA && form != DSACP_MLA16_DPBF16) {
        dsacp_mla16_scores_generic(j, g);
        return;
    }
    const int NG = (int)(g->cnt / 16);
    for (int64_t s0 = 0; s0 < j->n;) {
        const int NK = j->n - s0 >= TILE ? TILE : 1;
        const s_lane_fn fn = (form == DSACP_MLA16_FMA ? sfma_fns : sdp_fns)[NK == TILE ? 0 : 1][NG - 1];
        const float *k[TILE];
        for (int i = 0; i < NK; i++) k[i] = dsacp_mla16_key(j, s0 + i);
        for (int64_t l = 0; l < LANES; l++) fn(j, g->h0, k, l, g->tile);
        s_finish_512(j, g, s0, NK, NG);
        s0 += NK;
    }
}

/* ---- values ---- */

/* Lane l of the values of latent dims [c, c + NC) x NG head vectors (key pairs, St's p against
 * the latents; the definition's fmaf chain, its zero pairs past np / 2 left out: adding +-0 to
 * an accumulator that is never -0 changes nothing): into tile[l][i][16 g]. */
T512 static INL void v_lane_fma(const dsacp_mla16_job *j, const dsacp_mla16_group *g, int64_t c, const int NC,
                                const int NG, int64_t l)
{
    __m512 acc[TILE][4];
    const int64_t J = j->np / 2, W = j->width;
#pragma GCC unroll 6
    for (int i = 0; i < NC; i++)
#pragma GCC unroll 4
        for (int v = 0; v < NG; v++) acc[i][v] = _mm512_setzero_ps();
    const float *pbase = g->St + 2 * l * j->kq * W, *vbase = j->Vp + (c / TILE * LANES + l) * j->kq * 2 * TILE;
    for (int64_t k = 0, q = l; q < J; k++, q += LANES) { /* lane l's rows, contiguous in St and Vp */
        const float *pl = pbase + 2 * k * W, *ph = pl + W, *kl = vbase + 2 * k * TILE, *kh = kl + TILE;
        __m512 pv[4]; /* the high products first, as in s_lane_fma */
#pragma GCC unroll 2
        for (int half = 1; half >= 0; half--) {
#pragma GCC unroll 4
            for (int v = 0; v < NG; v++) pv[v] = _mm512_load_ps((half ? ph : pl) + 16 * v);
#pragma GCC unroll 6
            for (int i = 0; i < NC; i++) {
                const __m512 b = _mm512_set1_ps((half ? kh : kl)[i]);
#pragma GCC unroll 4
                for (int v = 0; v < NG; v++) acc[i][v] = _mm512_fmadd_ps(pv[v], b, acc[i][v]);
            }
        }
    }
#pragma GCC unroll 6
    for (int i = 0; i < NC; i++)
#pragma GCC unroll 4
        for (int v = 0; v < NG; v++) _mm512_store_ps(g->tile + (l * TILE + i) * W + 16 * v, acc[i][v]);
}

/* A tile's outputs: the tree, / l, into o (heads < H); a NaN of a head whose l is not NaN redone. */
T512 static void v_finish_512(const dsacp_mla16_job *j, const dsacp_mla16_group *g, int64_t c, int NC, int NG)
{
    const int64_t W = j->width;
    for (int i = 0; i < NC && c + i < j->dc; i++)
        for (int v = 0; v < NG; v++) {
            __m512 t[LANES];
            for (int l = 0; l < LANES; l++) t[l] = _mm512_load_ps(g->tile + (l * TILE + i) * W + 16 * v);
            float r[16];
            const float *lv = g->l + 16 * v;
            _mm512_storeu_ps(r, _mm512_div_ps(tree_512(t), _mm512_load_ps(lv)));
            for (int64_t hh = 0; hh < 16 && g->h0 + 16 * v + hh < j->H; hh++) {
                if (isnan(lv[hh])) continue;
                float x = r[hh];
                if (isnan(x)) x = dsacp_mla16_value(j, g, 16 * v + hh, c + i) / lv[hh];
                j->o[(g->h0 + 16 * v + hh) * j->dc + c + i] = x;
            }
        }
}

typedef void (*v_lane_fn)(const dsacp_mla16_job *, const dsacp_mla16_group *, int64_t, int64_t);
#define V_LANE(NAME, ATTR, FN, NC, NG)                                                                            \
    ATTR static void NAME##_##NC##_##NG(const dsacp_mla16_job *j, const dsacp_mla16_group *g, int64_t c,        \
                                        int64_t l)                                                                \
    {                                                                                                             \
        FN(j, g, c, NC, NG, l);                                                                                   \
    }
#define V_LANES(NAME, ATTR, FN)                                                                                   \
    V_LANE(NAME, ATTR, FN, 6, 1) V_LANE(NAME, ATTR, FN, 6, 2) V_LANE(NAME, ATTR, FN, 6, 3)                       \
    V_LANE(NAME, ATTR, FN, 6, 4)                                                                                  \
    static const v_lane_fn NAME##_fns[4] = {NAME##_6_1, NAME##_6_2, NAME##_6_3, NAME##_6_4};
V_LANES(vfma, T512, v_lane_fma)

static void values_512(const dsacp_mla16_job *j, const dsacp_mla16_group *g)
{
    const int NG = (int)(g->cnt / 16);
    const v_lane_fn fn = vfma_fns[NG - 1];
    for (int64_t c = 0; c < j->dc; c += TILE) { /* whole tiles of Vp (dims past dc +0, not written) */
        for (int64_t l = 0; l < LANES; l++) fn(j, g, c, l);
        v_finish_512(j, g, c, TILE, NG);
    }
}

const dsacp_mla16_isa dsacp_mla16_avx512 = {16, 64, true, check_keys_512, round_keys_512, scores_512, softmax_512, values_512};

/* =========================================================================== AVX2 ==== */

enum { NK2 = 4 }; /* the ymm tile: 4 keys (or latent dims) x 2 head vectors */

T256 static INL __m256 r16_256(__m256 x)
{
    const __m256i u = _mm256_castps_si256(x), hi = _mm256_set1_epi32((int)0xFFFF0000u);
    const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7FFFFFFF)),
                                           _mm256_set1_epi32(0x7F800000));
    const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const __m256i rounded = _mm256_and_si256(_mm256_add_epi32(u, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7FFF))), hi);
    const __m256i quiet = _mm256_and_si256(_mm256_or_si256(u, _mm256_set1_epi32(0x00400000)), hi);
    return _mm256_castsi256_ps(_mm256_blendv_epi8(rounded, quiet, nan));
}

/* The running floor over the nonzero values of v among the first `left` lanes. */
T256 static INL __m256i floor_256(__m256i fl, __m256 v, int64_t left)
{
    const __m256i u = _mm256_castps_si256(v);
    const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i in = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(left < 8 ? left : 8)), idx);
    const __m256i zero = _mm256_cmpeq_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7FFFFFFF)), _mm256_setzero_si256());
    const __m256i e = _mm256_and_si256(_mm256_srli_epi32(u, 23), _mm256_set1_epi32(0xFF));
    const __m256i e2 = _mm256_blendv_epi8(_mm256_set1_epi32(256), e, _mm256_andnot_si256(zero, in));
    return _mm256_min_epi32(fl, e2);
}

T256 static INL int hmin_256(__m256i v)
{
    __m128i m = _mm_min_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    m = _mm_min_epi32(m, _mm_shuffle_epi32(m, 0x4E));
    m = _mm_min_epi32(m, _mm_shuffle_epi32(m, 0xB1));
    return _mm_cvtsi128_si32(m);
}

T256 static INL __m256 load_tail(const float *x, int64_t left)
{
    if (left >= 8) return _mm256_loadu_ps(x);
    float t[8] = {0};
    memcpy(t, x, (size_t)left * sizeof(float));
    return _mm256_loadu_ps(t);
}

T256 static int check_keys_256(const float *kv, int64_t rows, int64_t D, bool *same)
{
    __m256i fl = _mm256_set1_epi32(256), diff = _mm256_setzero_si256();
    const int64_t N = rows * D;
    for (int64_t i = 0; i < N; i += 8) {
        const __m256 x = load_tail(kv + i, N - i), r = r16_256(x);
        diff = _mm256_or_si256(diff, _mm256_xor_si256(_mm256_castps_si256(x), _mm256_castps_si256(r)));
        fl = floor_256(fl, r, N - i);
    }
    *same = _mm256_testz_si256(diff, diff);
    return hmin_256(fl);
}

T256 static void round_keys_256(const float *kv, int64_t rows, int64_t D, float *out, int64_t Dp)
{
    for (int64_t s = 0; s < rows; s++) {
        int64_t d = 0;
        for (; d + 8 <= D; d += 8) _mm256_storeu_ps(out + s * Dp + d, r16_256(_mm256_loadu_ps(kv + s * D + d)));
        for (; d < D; d++) out[s * Dp + d] = dsacp_f32_of_bits((uint32_t)dsacp_f32_to_bf16(kv[s * D + d]) << 16);
        if (Dp > D) out[s * Dp + D] = 0.0f;
    }
}

T256 static INL __m256 pow2_256(__m256 k)
{
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23));
}

/* dsacp_exp_model in 8 lanes, operation for operation. */
T256 static INL __m256 exp_256(__m256 x)
{
    const __m256 nan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
    const __m256 low = _mm256_cmp_ps(x, _mm256_set1_ps(-88.0f), _CMP_LT_OQ);
    const __m256 xq = _mm256_or_ps(x, _mm256_castsi256_ps(_mm256_set1_epi32(0x00400000)));
    x = _mm256_min_ps(x, _mm256_set1_ps(89.0f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500E-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507E-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073E-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894E-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459E-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201E-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r);
    p = _mm256_add_ps(p, _mm256_set1_ps(1.0f));
    const __m256 n1 = _mm256_round_ps(_mm256_mul_ps(n, _mm256_set1_ps(0.5f)), _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    __m256 y = _mm256_mul_ps(_mm256_mul_ps(p, pow2_256(n1)), pow2_256(_mm256_sub_ps(n, n1)));
    const __m256 tiny = _mm256_cmp_ps(y, _mm256_set1_ps(0x1p-126f), _CMP_LT_OQ);
    y = _mm256_andnot_ps(_mm256_or_ps(tiny, low), y);
    return _mm256_blendv_ps(y, xq, nan);
}

T256 static INL __m256 tree_256(__m256 *v)
{
    for (int w = 8; w >= 1; w /= 2)
        for (int i = 0; i < w; i++) v[i] = _mm256_add_ps(v[i], v[i + w]);
    return v[0];
}

T256 static void softmax_256(const dsacp_mla16_job *j, const dsacp_mla16_group *g)
{
    const int64_t W = j->width, n = j->n;
    for (int64_t v = 0; v < g->cnt / 8; v++) {
        float *col = g->St + 8 * v;
        __m256 m = _mm256_set1_ps(-INFINITY), acc[LANES];
        for (int64_t s = 0; s < n; s++) m = _mm256_max_ps(_mm256_load_ps(col + dsacp_mla16_row(j, s) * W), m);
        for (int i = 0; i < LANES; i++) acc[i] = _mm256_setzero_ps();
        for (int64_t s0 = 0; s0 < n; s0 += LANES)
            for (int i = 0; i < LANES && s0 + i < n; i++) {
                float *at = col + dsacp_mla16_row(j, s0 + i) * W;
                const __m256 p = exp_256(_mm256_sub_ps(_mm256_load_ps(at), m));
                acc[i] = _mm256_add_ps(acc[i], p);
                _mm256_store_ps(at, p);
            }
        if (j->np > n) _mm256_store_ps(col + dsacp_mla16_row(j, n) * W, _mm256_setzero_ps());
        _mm256_store_ps(g->m + 8 * v, m);
        _mm256_store_ps(g->l + 8 * v, tree_256(acc));
    }
}

/* Model lane l of the scores of NK keys x NG head vectors of 8, ymm FMA form. */
T256 static INL void s_lane_256(const dsacp_mla16_job *j, int64_t h0, const float *const *k, const int NK, const int NG,
                                int64_t l, float *tile)
{
    __m256 acc[NK2][2];
    const int64_t P = j->Dp / 2, Hp = j->Hp;
#pragma GCC unroll 6
    for (int i = 0; i < NK; i++)
#pragma GCC unroll 4
        for (int v = 0; v < NG; v++) acc[i][v] = _mm256_setzero_ps();
    for (int64_t kk = 0, p = l; p < P; kk++, p += LANES) { /* lane l's rows of Qt, contiguous */
        const float *ql = j->Qt + 2 * (l * j->kd + kk) * Hp + h0, *qh = ql + Hp;
        __m256 vh[2], vl[2];
#pragma GCC unroll 4
        for (int v = 0; v < NG; v++) vh[v] = _mm256_loadu_ps(qh + 8 * v), vl[v] = _mm256_loadu_ps(ql + 8 * v);
#pragma GCC unroll 6
        for (int i = 0; i < NK; i++) {
            const __m256 bh = _mm256_set1_ps(k[i][2 * p + 1]), bl = _mm256_set1_ps(k[i][2 * p]);
#pragma GCC unroll 4
            for (int v = 0; v < NG; v++) {
                acc[i][v] = _mm256_fmadd_ps(vh[v], bh, acc[i][v]);
                acc[i][v] = _mm256_fmadd_ps(vl[v], bl, acc[i][v]);
            }
        }
    }
#pragma GCC unroll 6
    for (int i = 0; i < NK; i++)
#pragma GCC unroll 4
        for (int v = 0; v < NG; v++) _mm256_store_ps(tile + (l * TILE + i) * j->width + 8 * v, acc[i][v]);
}

T256 static void s_finish_256(const dsacp_mla16_job *j, const dsacp_mla16_group *g, int64_t s0, int NK, int NG)
{
    const int64_t W = j->width;
    for (int i = 0; i < NK; i++)
        for (int v = 0; v < NG; v++) {
            __m256 t[LANES];
            for (int l = 0; l < LANES; l++) t[l] = _mm256_load_ps(g->tile + (l * TILE + i) * W + 8 * v);
            float *out = g->St + dsacp_mla16_row(j, s0 + i) * W + 8 * v;
            _mm256_store_ps(out, _mm256_mul_ps(tree_256(t), _mm256_set1_ps(j->scale)));
            for (int64_t hh = 0; hh < 8; hh++)
                if (isnan(out[hh])) out[hh] = dsacp_mla16_score(j, dsacp_bf16dot_scalar, g, 8 * v + hh, s0 + i);
        }
}

S_LANE(s256, T256, s_lane_256, 4, 1) S_LANE(s256, T256, s_lane_256, 4, 2)
S_LANE(s256, T256, s_lane_256, 1, 1) S_LANE(s256, T256, s_lane_256, 1, 2)
static const s_lane_fn s256_fns[2][2] = {{s256_4_1, s256_4_2}, {s256_1_1, s256_1_2}};

static void scores_256(const dsacp_mla16_job *j, int form, const dsacp_mla16_group *g)
{
    if (form != DSACP_MLA16_AVX2) {
        dsacp_mla16_scores_generic(j, g);
        return;
    }
    const int NG = (int)(g->cnt / 8);
    for (int64_t s0 = 0; s0 < j->n;) {
        const int NK = j->n - s0 >= NK2 ? NK2 : 1;
        const s_lane_fn fn = s256_fns[NK == NK2 ? 0 : 1][NG - 1];
        const float *k[NK2];
        for (int i = 0; i < NK; i++) k[i] = dsacp_mla16_key(j, s0 + i);
        for (int64_t l = 0; l < LANES; l++) fn(j, g->h0, k, l, g->tile);
        s_finish_256(j, g, s0, NK, NG);
        s0 += NK;
    }
}

T256 static INL void v_lane_256(const dsacp_mla16_job *j, const dsacp_mla16_group *g, int64_t c, const int NC,
                                const int NG, int64_t l)
{
    __m256 acc[NK2][2];
    const int64_t J = j->np / 2, W = j->width;
#pragma GCC unroll 6
    for (int i = 0; i < NC; i++)
#pragma GCC unroll 4
        for (int v = 0; v < NG; v++) acc[i][v] = _mm256_setzero_ps();
    for (int64_t k = 0, q = l; q < J; k++, q += LANES) {
        const float *pl = g->St + 2 * (l * j->kq + k) * W, *ph = pl + W;
        const float *kl = dsacp_mla16_key(j, 2 * q) + c, *kh = dsacp_mla16_key(j, 2 * q + 1) + c;
        __m256 vh[2], vl[2];
#pragma GCC unroll 4
        for (int v = 0; v < NG; v++) vh[v] = _mm256_load_ps(ph + 8 * v), vl[v] = _mm256_load_ps(pl + 8 * v);
#pragma GCC unroll 6
        for (int i = 0; i < NC; i++) {
            const __m256 bh = _mm256_set1_ps(kh[i]), bl = _mm256_set1_ps(kl[i]);
#pragma GCC unroll 4
            for (int v = 0; v < NG; v++) {
                acc[i][v] = _mm256_fmadd_ps(vh[v], bh, acc[i][v]);
                acc[i][v] = _mm256_fmadd_ps(vl[v], bl, acc[i][v]);
            }
        }
    }
#pragma GCC unroll 6
    for (int i = 0; i < NC; i++)
#pragma GCC unroll 4
        for (int v = 0; v < NG; v++) _mm256_store_ps(g->tile + (l * TILE + i) * W + 8 * v, acc[i][v]);
}

T256 static void v_finish_256(const dsacp_mla16_job *j, const dsacp_mla16_group *g, int64_t c, int NC, int NG)
{
    const int64_t W = j->width;
    for (int i = 0; i < NC; i++)
        for (int v = 0; v < NG; v++) {
            __m256 t[LANES];
            for (int l = 0; l < LANES; l++) t[l] = _mm256_load_ps(g->tile + (l * TILE + i) * W + 8 * v);
            float r[8];
            const float *lv = g->l + 8 * v;
            _mm256_storeu_ps(r, _mm256_div_ps(tree_256(t), _mm256_load_ps(lv)));
            for (int64_t hh = 0; hh < 8 && g->h0 + 8 * v + hh < j->H; hh++) {
                if (isnan(lv[hh])) continue;
                float x = r[hh];
                if (isnan(x)) x = dsacp_mla16_value(j, g, 8 * v + hh, c + i) / lv[hh];
                j->o[(g->h0 + 8 * v + hh) * j->dc + c + i] = x;
            }
        }
}

V_LANE(v256, T256, v_lane_256, 4, 1) V_LANE(v256, T256, v_lane_256, 4, 2)
V_LANE(v256, T256, v_lane_256, 1, 1) V_LANE(v256, T256, v_lane_256, 1, 2)
static const v_lane_fn v256_fns[2][2] = {{v256_4_1, v256_4_2}, {v256_1_1, v256_1_2}};

static void values_256(const dsacp_mla16_job *j, const dsacp_mla16_group *g)
{
    const int NG = (int)(g->cnt / 8);
    for (int64_t c = 0; c < j->dc;) {
        const int NC = j->dc - c >= NK2 ? NK2 : 1;
        const v_lane_fn fn = v256_fns[NC == NK2 ? 0 : 1][NG - 1];
        for (int64_t l = 0; l < LANES; l++) fn(j, g, c, l);
        v_finish_256(j, g, c, NC, NG);
        c += NC;
    }
}

const dsacp_mla16_isa dsacp_mla16_avx2 = {8, 16, false, check_keys_256, round_keys_256, scores_256, softmax_256, values_256};
#endif
