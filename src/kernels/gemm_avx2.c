/*
 * gemm_avx2.c -- the blocked many-row linear: y = x W^T for T >= DSACP_GEMM_MIN_T tokens, with
 * exactly the arithmetic of the one-token kernels (docs/performance.md, "Blocked GEMM").
 *
 * Why a separate kernel. The row kernels of kernels_avx2.c / kernels_avx512.c compute each output
 * as a dot product straight from the stored weight row: right for one token (the weight stream is
 * the cost), but with many tokens each weight vector is decoded again for every small tile of
 * tokens and only a 2x2 (AVX2) or 4x4 (AVX-512) tile of outputs shares the loads, so the loop is
 * bound by loads and decode, not by FMAs (~80 GFLOP/s where OpenBLAS reaches ~270).
 *
 * What stays the same (batch invariance). An output y[t][o] of the row kernels is a 16-lane
 * chain: lane l accumulates, with FMA and in increasing k, the products of the columns assigned
 * to it, starting from +0, and y is the fixed tree l += l + 8, + 4, + 2, + 1 over the lanes.
 * Two assignments exist:
 *   natural  (AVX2; AVX-512 without VBMI; every dtype): the weight value is the stored value
 *            decoded to f32 (FP8: fl(e4m3 * block scale), one rounding), lane l takes the columns
 *            k = l (mod 16) (FP8 blocks are multiples of 16 columns), K padded with zeros to 16;
 *   fold     (AVX-512 with VBMI, FP8 with blocks of a multiple of 64): within each 64 columns
 *            lane p of group g takes column 16 (p / 4) + 4 g + p % 4, the value is the exact
 *            unscaled e4m3, each w->block block is summed from +0 into b and folded as
 *            tot = fma(b, scale, tot) (kernels_avx512.c, "table decode").
 * This kernel reproduces either chain bit for bit, however T is tiled: it packs a chunk of
 * columns of a block of weight rows, decoded to f32 in the chain's column order, and the same
 * columns of a block of token rows; a register tile of 3 rows x 4 tokens runs one half (8 lanes)
 * of the 16-lane chains over the chunk, reading and writing the lanes' running sums in a per-
 * block accumulator [tokens][rows][16] between chunks (storing and reloading a float is exact).
 * Padding rows and tokens are zeros and their outputs are dropped. Lanes are independent, so
 * running lanes 0-7 and 8-15 in separate passes changes nothing. FMA is IEEE fused multiply-add
 * whatever the vector width, so on AVX-512 machines this AVX2 kernel gives the bits the zmm row
 * kernels give (a zmm micro-kernel with the same chains is the next step for Zen 5's full-width
 * FMA; on Zen 4 zmm FMAs are double-pumped and the AVX2 tile runs at the same rate).
 *
 * Blocking: tokens in super-blocks of 1024, each packed once into a copy shared by the threads
 * (1024 x K floats: the extra memory is bounded whatever T is); each task is NC weight rows x MC
 * tokens, its weights packed (decoded to f32) once per row block for all the token blocks a
 * thread runs on them; KC columns per chunk (multiple of 16, and of the FP8 block in fold mode).
 * Panels are per lane, [k][NR rows] and [k][MU tokens], so the micro-kernel reads two sequential
 * streams. Tasks are split statically over the threads; each output is computed by one task
 * with one fixed sequence, so the thread count changes nothing either.
 */
#include "kernels/kernels_isa.h"
#include "kernels/avx2_inl.h"
#include "numerics/numerics.h"

#include <omp.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>


/* Register tile MR rows x MU tokens (12 ymm accumulators + 3 weight + 1 token register; the
 * unroll pragmas below assume these values); NC rows x MC tokens per task, KC packed columns per
 * chunk. Chosen by measurement on Zen 3 (docs/performance.md, "Blocked GEMM"). */
#ifndef GCFG
#define GCFG NC = 48, MC = 32, KC = 512
#endif
enum { NR = 24, MU = 4, GCFG, GEMM_TS = 1024 };

typedef struct gemm_job {
    const dsacp_weight *w;
    const float *x;
    int64_t T, ldx, ldy, K, N, Kp; /* Kp: K padded to 16 (natural) or 64 (fold) */
    float *y;
    int fold;                      /* fold mode (implies the 64-column permutation) */
    int64_t kc;                    /* packed columns per chunk */
    int64_t t_base;                /* first token of the current super-block */
    int dt;
} gemm_job;

/* The 8 columns of (packed step s, half h): two runs of 4 starting at *a and *b. */
static INL void step_cols(int fold, int64_t s, int h, int64_t *a, int64_t *b)
{
    if (fold) {
        *a = 64 * (s / 4) + 32 * h + 4 * (s % 4);
        *b = *a + 16;
    } else {
        *a = 16 * s + 8 * h;
        *b = *a + 4;
    }
}

/* 8 weights of a row of dtype dt at columns a..a+3, b..b+3, decoded as the chains use them. */
T256 static INL __m256 wdecode8(int dt, const uint8_t *row, int64_t a, int64_t b, __m256 mult)
{
        switch (dt) {
        case DSACP_BF16: {
            int64_t va, vb; /* rows need not be 8-byte aligned: memcpy, not a cast */
            memcpy(&va, row + 2 * a, sizeof va);
            memcpy(&vb, row + 2 * b, sizeof vb);
            return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_set_epi64x(vb, va)), 16));
        }
        case DSACP_F16: {
            int64_t va, vb;
            memcpy(&va, row + 2 * a, sizeof va);
            memcpy(&vb, row + 2 * b, sizeof vb);
            return _mm256_cvtph_ps(_mm_set_epi64x(vb, va));
        }
        case DSACP_F8_E4M3: {
            int32_t va, vb;
            memcpy(&va, row + a, sizeof va);
            memcpy(&vb, row + b, sizeof vb);
            return _mm256_mul_ps(e4m3_bits8(_mm_set_epi32(0, 0, vb, va)), mult);
        }
        default:
            return _mm256_set_m128(_mm_loadu_ps((const float *)(const void *)row + b),
                                   _mm_loadu_ps((const float *)(const void *)row + a));
        }
}

/* The same with zeros for the columns past K. */
T256 static INL __m256 wpack8(const gemm_job *j, const uint8_t *row, int64_t a, int64_t b, __m256 mult)
{
    const int64_t K = j->K;
    if (b + 4 <= K && a + 4 <= K) return wdecode8(j->dt, row, a, b, mult);
    /* Tail: the same decode on a zero-padded copy. */
    const size_t es = j->dt == DSACP_F32 ? 4 : j->dt == DSACP_F8_E4M3 ? 1 : 2;
    _Alignas(32) uint8_t pad[32] = {0};
    for (int i = 0; i < 4; i++) {
        if (a + i < K) memcpy(pad + i * es, row + (size_t)(a + i) * es, es);
        if (b + i < K) memcpy(pad + (4 + i) * es, row + (size_t)(b + i) * es, es);
    }
    return wdecode8(j->dt, pad, 0, 4, mult);
}

/* The 16 chain values (lanes 0..15) of packed step S of a token row into v (zeros past K). */
T256 static INL void xstep16(const gemm_job *j, const float *xr, int64_t S, float *v)
{
    const int64_t K = j->K;
    for (int h = 0; h < 2; h++) {
        int64_t a, b;
        step_cols(j->fold, S, h, &a, &b);
        if (b + 4 <= K && a + 4 <= K) {
            _mm256_store_ps(v + 8 * h, _mm256_set_m128(_mm_loadu_ps(xr + b), _mm_loadu_ps(xr + a)));
        } else {
            for (int i = 0; i < 4; i++) {
                v[8 * h + i] = a + i < K ? xr[a + i] : 0.0f;
                v[8 * h + 4 + i] = b + i < K ? xr[b + i] : 0.0f;
            }
        }
    }
}

/* In-register transposes: out[l][r] = in[r][l] (8 x 8), and the 4 x 8 form for token panels. */
T256 static INL void transpose8(__m256 r[8])
{
    __m256 t[8], u[8];
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 2; i++) {
        u[4 * i + 0] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
        u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
        u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
    for (int i = 0; i < 4; i++) {
        r[i] = _mm256_permute2f128_ps(u[i], u[4 + i], 0x20);
        r[4 + i] = _mm256_permute2f128_ps(u[i], u[4 + i], 0x31);
    }
}

/* Packs weight rows [n0, n0 + nr) and packed columns [c0, c0 + kc) lane by lane: lane l's
 * column of step s for row r goes to wp[((l * nop + r / NR) * kpl + s) * NR + r % NR] (kpl = kc / 16
 * steps, nop = nrp / NR panels; rows nr .. nrp - 1 are zero). Eight rows at a time, transposed in
 * registers. */
T256 static INL void pack_w_dt(const int dt, const gemm_job *j, int64_t n0, int64_t nr, int64_t c0, float *wp)
{
    const int64_t kpl = j->kc / 16, nrp = (nr + NR - 1) / NR * NR, nop = nrp / NR, lstride = nop * kpl * NR;
    const size_t es = dt == DSACP_F32 ? 4 : dt == DSACP_F8_E4M3 ? 1 : 2;
    const dsacp_weight *w = j->w;
    const bool f8 = dt == DSACP_F8_E4M3 && !j->fold;
    const int64_t blk = f8 ? w->block : 0;
    for (int64_t r0 = 0; r0 < nrp; r0 += 8) {
        const uint8_t *row[8];
        const float *srow[8];
        __m256 mult[8];
        for (int i = 0; i < 8; i++) {
            const int64_t n = n0 + r0 + i;
            row[i] = r0 + i < nr ? (const uint8_t *)w->data + (size_t)n * (size_t)j->K * es : NULL;
            srow[i] = f8 && row[i] ? w->scale + (n / blk) * w->scale_stride : NULL;
            mult[i] = _mm256_set1_ps(0x1p120f);
        }
        float *d = wp + (r0 / NR) * kpl * NR + r0 % NR;
        for (int64_t s = 0; s < kpl; s++) {
            const int64_t S = c0 / 16 + s;
            __m256 lo[8], hi[8];
            for (int i = 0; i < 8; i++) {
                if (!row[i]) {
                    lo[i] = hi[i] = _mm256_setzero_ps();
                    continue;
                }
                /* natural FP8: a step's 16 columns lie in one block (blocks are multiples of 16) */
                if (srow[i] && (s == 0 || (16 * S) % blk == 0)) mult[i] = _mm256_set1_ps(srow[i][16 * S / blk] * 0x1p120f);
                int64_t a, b;
                step_cols(j->fold, S, 0, &a, &b);
                lo[i] = b + 4 <= j->K && a + 4 <= j->K ? wdecode8(dt, row[i], a, b, mult[i]) : wpack8(j, row[i], a, b, mult[i]);
                step_cols(j->fold, S, 1, &a, &b);
                hi[i] = b + 4 <= j->K && a + 4 <= j->K ? wdecode8(dt, row[i], a, b, mult[i]) : wpack8(j, row[i], a, b, mult[i]);
            }
            transpose8(lo);
            transpose8(hi);
            for (int l = 0; l < 8; l++) {
                _mm256_store_ps(d + l * lstride + s * NR, lo[l]);
                _mm256_store_ps(d + (l + 8) * lstride + s * NR, hi[l]);
            }
        }
    }
}

T256 static void pack_w(const gemm_job *j, int64_t n0, int64_t nr, int64_t c0, float *wp)
{
    switch (j->dt) {
    case DSACP_BF16: pack_w_dt(DSACP_BF16, j, n0, nr, c0, wp); break;
    case DSACP_F16: pack_w_dt(DSACP_F16, j, n0, nr, c0, wp); break;
    case DSACP_F8_E4M3: pack_w_dt(DSACP_F8_E4M3, j, n0, nr, c0, wp); break;
    default: pack_w_dt(DSACP_F32, j, n0, nr, c0, wp); break;
    }
}

/* Packs token rows [t0, t0 + nt) the same way, panels of MU = 4 tokens: xp[((l * ntt + u / MU) * kpl
 * + s) * MU + u % MU] (tokens nt .. ntp - 1 zero). */
T256 static void pack_x(const gemm_job *j, int64_t t0, int64_t nt, int64_t c0, float *xp)
{
    const int64_t kpl = j->kc / 16, ntp = (nt + MU - 1) / MU * MU, ntt = ntp / MU, lstride = ntt * kpl * MU;
    _Alignas(32) float v[MU][16];
    for (int64_t u0 = 0; u0 < ntp; u0 += MU) {
        float *d = xp + (u0 / MU) * kpl * MU;
        for (int64_t s = 0; s < kpl; s++) {
            for (int u = 0; u < MU; u++) {
                if (u0 + u < nt) xstep16(j, j->x + (t0 + u0 + u) * j->ldx, c0 / 16 + s, v[u]);
                else memset(v[u], 0, sizeof v[u]);
            }
            for (int h = 0; h < 2; h++) {
                const __m256 x0 = _mm256_load_ps(v[0] + 8 * h), x1 = _mm256_load_ps(v[1] + 8 * h);
                const __m256 x2 = _mm256_load_ps(v[2] + 8 * h), x3 = _mm256_load_ps(v[3] + 8 * h);
                const __m256 ta = _mm256_unpacklo_ps(x0, x1), tb = _mm256_unpackhi_ps(x0, x1);
                const __m256 tc = _mm256_unpacklo_ps(x2, x3), td = _mm256_unpackhi_ps(x2, x3);
                const __m256 q[4] = {_mm256_shuffle_ps(ta, tc, 0x44), _mm256_shuffle_ps(ta, tc, 0xEE),
                                     _mm256_shuffle_ps(tb, td, 0x44), _mm256_shuffle_ps(tb, td, 0xEE)};
                for (int l = 0; l < 4; l++) {
                    _mm_store_ps(d + (8 * h + l) * lstride + s * MU, _mm256_castps256_ps128(q[l]));
                    _mm_store_ps(d + (8 * h + l + 4) * lstride + s * MU, _mm256_extractf128_ps(q[l], 1));
                }
            }
        }
    }
}

/* acc[i][u] += w[8 i .. 8 i + 7] * x[u] for each of n packed steps (row panel [n][NR], token
 * panel [n][MU]): the FMA sequence of both micro-kernels below. */
T256 static INL void lane_steps(const float *wp, const float *xp, int64_t n, __m256 acc[3][MU])
{
    for (int64_t s = 0; s < n; s++, wp += NR, xp += MU) {
        const __m256 w0 = _mm256_load_ps(wp), w1 = _mm256_load_ps(wp + 8), w2 = _mm256_load_ps(wp + 16);
#pragma GCC unroll 4
        for (int u = 0; u < MU; u++) {
            const __m256 xb = _mm256_broadcast_ss(xp + u);
            acc[0][u] = _mm256_fmadd_ps(w0, xb, acc[0][u]);
            acc[1][u] = _mm256_fmadd_ps(w1, xb, acc[1][u]);
            acc[2][u] = _mm256_fmadd_ps(w2, xb, acc[2][u]);
        }
    }
}

/* One lane's chains of NR rows x MU tokens over kpl steps: acc[i][u] (rows 8i..8i+7 of the
 * panel, token u) += w * x, w from the row panel [kpl][NR], x broadcast from the token panel
 * [kpl][MU]; the running sums c[u * ldc + 8 i] (start from +0 when first). Each output lane is
 * the same sequence of FMAs the one-token kernels run, in the same order. */
T256 static void mk_lane(const float *wp, const float *xp, int64_t kpl, float *c, int64_t ldc, bool first)
{
    __m256 acc[3][MU];
#pragma GCC unroll 4
    for (int u = 0; u < MU; u++)
#pragma GCC unroll 3
        for (int i = 0; i < 3; i++) acc[i][u] = first ? _mm256_setzero_ps() : _mm256_load_ps(c + u * ldc + 8 * i);
    lane_steps(wp, xp, kpl, acc);
#pragma GCC unroll 4
    for (int u = 0; u < MU; u++)
#pragma GCC unroll 3
        for (int i = 0; i < 3; i++) _mm256_store_ps(c + u * ldc + 8 * i, acc[i][u]);
}

/* Fold chains of one lane: per block of bs steps, b = sum from +0, then tot = fma(b, scale, tot)
 * with the rows' scales of that block at sc[block * ldsc + 8 i] (the last block may be short). */
T256 static void mk_lane_fold(const float *wp, const float *xp, int64_t kpl, int64_t bs, const float *sc,
                              int64_t ldsc, float *c, int64_t ldc, bool first)
{
    for (int64_t s0 = 0; s0 < kpl; s0 += bs) {
        __m256 acc[3][MU];
#pragma GCC unroll 4
        for (int u = 0; u < MU; u++)
#pragma GCC unroll 3
            for (int i = 0; i < 3; i++) acc[i][u] = _mm256_setzero_ps();
        const int64_t se = s0 + bs < kpl ? s0 + bs : kpl;
        lane_steps(wp + s0 * NR, xp + s0 * MU, se - s0, acc);
        const float *sb = sc + (s0 / bs) * ldsc;
        const bool zero = first && s0 == 0;
#pragma GCC unroll 3
        for (int i = 0; i < 3; i++) {
            const __m256 sv = _mm256_load_ps(sb + 8 * i);
#pragma GCC unroll 4
            for (int u = 0; u < MU; u++) {
                float *cp = c + u * ldc + 8 * i;
                _mm256_store_ps(cp, _mm256_fmadd_ps(acc[i][u], sv, zero ? _mm256_setzero_ps() : _mm256_load_ps(cp)));
            }
        }
    }
}

/* The thread's room (floats): the whole K of NC packed weight rows, the lane sums
 * [16][MC][NC] and (fold) the rows' block scales [nkb][NC]; a multiple of 16 floats so every
 * thread's room stays 64-byte aligned. */
static size_t room_floats(int64_t Kp, int64_t nkb)
{
    return ((size_t)NC * (size_t)Kp + (size_t)16 * MC * NC + (size_t)NC * (size_t)nkb + 15) / 16 * 16;
}

/* Packs rows [n0, n0 + nr) over the whole K into wp, chunk after chunk (chunk c0 at
 * wp + c0 * nrp), and (fold) their block scales into sc [nkb][nrp]. */
T256 static void pack_w_all(const gemm_job *j, int64_t n0, int64_t nr, float *wp, float *sc, int64_t nkb)
{
    const int64_t nrp = (nr + NR - 1) / NR * NR;
    for (int64_t c0 = 0; c0 < j->Kp; c0 += j->kc) {
        gemm_job jc = *j;
        if (c0 + jc.kc > j->Kp) jc.kc = j->Kp - c0;
        pack_w(&jc, n0, nr, c0, wp + c0 * nrp);
    }
    if (j->fold) {
        const dsacp_weight *w = j->w;
        for (int64_t kb = 0; kb < nkb; kb++)
            for (int64_t r = 0; r < nrp; r++)
                sc[kb * nrp + r] = r < nr ? w->scale[((n0 + r) / w->block) * w->scale_stride + kb] : 0;
    }
}

/* Tokens [t0, t0 + nt) the same way into xp (chunk c0 at xp + c0 * ntp). */
T256 static void pack_x_all(const gemm_job *j, int64_t t0, int64_t nt, float *xp)
{
    const int64_t ntp = (nt + MU - 1) / MU * MU;
    for (int64_t c0 = 0; c0 < j->Kp; c0 += j->kc) {
        gemm_job jc = *j;
        if (c0 + jc.kc > j->Kp) jc.kc = j->Kp - c0;
        pack_x(&jc, t0, nt, c0, xp + c0 * ntp);
    }
}

/* One task: rows [n0, n0 + nr) (packed in wp, scales in sc) x tokens [t0, t0 + nt) (packed in xp);
 * c: the lane sums [16][MC][NC]. Lane by lane, a row panel (kpl x NR floats) stays in L1 while
 * the token panels stream past it, as in a textbook GEMM. */
T256 static void gemm_task(const gemm_job *j, int64_t n0, int64_t nr, int64_t t0, int64_t nt, const float *wp,
                           const float *sc, const float *xp, float *c)
{
    const int64_t nrp = (nr + NR - 1) / NR * NR, ntp = (nt + MU - 1) / MU * MU, nop = nrp / NR, ntt = ntp / MU;
    const int64_t blk = j->fold ? j->w->block : 16;
    for (int64_t c0 = 0; c0 < j->Kp; c0 += j->kc) {
        const int64_t kc = c0 + j->kc > j->Kp ? j->Kp - c0 : j->kc, kpl = kc / 16;
        const float *wc = wp + c0 * nrp, *xc = xp + c0 * ntp;
        for (int l = 0; l < 16; l++)
            for (int64_t op = 0; op < nop; op++) {
                const float *wt = wc + ((l * nop + op) * kpl) * NR;
                for (int64_t tt = 0; tt < ntt; tt++) {
                    const float *xt = xc + ((l * ntt + tt) * kpl) * MU;
                    float *ct = c + (size_t)l * MC * NC + (tt * nop + op) * MU * NR;
                    if (j->fold)
                        mk_lane_fold(wt, xt, kpl, blk / 16, sc + (c0 / blk) * nrp + op * NR, nrp, ct, NR, c0 == 0);
                    else
                        mk_lane(wt, xt, kpl, ct, NR, c0 == 0);
                }
            }
    }
    /* y = the fixed tree over the 16 lanes: l += l + 8, + 4, + 2, + 1 (as hsum16), 8 rows at once. */
    for (int64_t u = 0; u < nt; u++)
        for (int64_t r = 0; r < nrp; r += 8) {
            /* lane sums are tile-major: [16][token tile][row panel][MU][NR] */
            const float *cp = c + ((u / MU) * nop + r / NR) * MU * NR + (u % MU) * NR + r % NR;
            __m256 a[8];
#pragma GCC unroll 8
            for (int l = 0; l < 8; l++)
                a[l] = _mm256_add_ps(_mm256_load_ps(cp + (size_t)l * MC * NC), _mm256_load_ps(cp + (size_t)(l + 8) * MC * NC));
#pragma GCC unroll 4
            for (int l = 0; l < 4; l++) a[l] = _mm256_add_ps(a[l], a[l + 4]);
            a[0] = _mm256_add_ps(a[0], a[2]);
            a[1] = _mm256_add_ps(a[1], a[3]);
            a[0] = _mm256_add_ps(a[0], a[1]);
            float *yr = j->y + (j->t_base + t0 + u) * j->ldy + n0 + r;
            if (r + 8 <= nr) {
                _mm256_storeu_ps(yr, a[0]);
            } else {
                _Alignas(32) float v[8];
                _mm256_store_ps(v, a[0]);
                for (int64_t i = 0; i < nr - r && i < 8; i++) yr[i] = v[i];
            }
        }
}

/* The job's shape for this weight (0 when it does not suit the fold mode) and its room: per
 * thread `per` floats, the packed tokens `xfloats`. */
static int gemm_setup(const dsacp_weight *w, int64_t T, bool fold, gemm_job *j, int64_t *nkb, size_t *per,
                      size_t *xfloats)
{
    const int64_t K = w->cols;
    *nkb = 0;
    if (fold) {
        if (w->dtype != DSACP_F8_E4M3 || w->block <= 0 || w->block % 64 || w->block > 4096) return 0;
        j->kc = w->block * (KC / w->block > 1 ? KC / w->block : 1);
        j->Kp = (K + 63) / 64 * 64;
        *nkb = (j->Kp + w->block - 1) / w->block;
    } else {
        j->kc = KC;
        j->Kp = (K + 15) / 16 * 16;
    }
    /* Tokens go in super-blocks of TS: their packed copy (TS x Kp floats, shared by the threads)
     * bounds the extra memory whatever T is; the weights are packed once per row block and
     * super-block, a cost of 1/TS of the product. */
    *per = room_floats(j->Kp, *nkb);
    *xfloats = dsacp_ws_mul((size_t)(T < GEMM_TS ? (T + MC - 1) / MC * MC : GEMM_TS), (size_t)j->Kp);
    return 1;
}

/* One super-block of tokens: its packed copy xall, and its tasks (row block x token block, in
 * row-block-major order) over the threads' packing rooms `per` floats each from bufs. */
typedef struct gemm_block {
    const gemm_job *j, *jx; /* jx: x at the super-block's first token */
    int64_t ts, mb, tasks, nkb;
    float *bufs;
    size_t per;
    float *xall;
} gemm_block;

/* Token block m of the super-block packed into xall. */
static void gemm_pack_x(const gemm_block *b, int64_t m)
{
    pack_x_all(b->jx, m * MC, b->ts - m * MC < MC ? b->ts - m * MC : MC, b->xall + (size_t)(m * MC) * (size_t)b->j->Kp);
}

/* Thread th of nt: a contiguous run of the tasks, packing a row block's weights once for all the
 * token blocks it runs on them. */
static void gemm_share(const gemm_block *b, int th, int nt)
{
    const gemm_job *j = b->j;
    float *wp = b->bufs + (size_t)th * b->per;
    float *c = wp + (size_t)NC * (size_t)j->Kp, *sc = c + (size_t)16 * MC * NC;
    const int64_t i0 = b->tasks * th / nt, i1 = b->tasks * (th + 1) / nt;
    int64_t packed = -1;
    for (int64_t i = i0; i < i1; i++) {
        const int64_t blk = i / b->mb, m = i % b->mb;
        const int64_t n0 = blk * NC, nr = j->N - n0 < NC ? j->N - n0 : NC, t0 = m * MC;
        const int64_t ntk = b->ts - t0 < MC ? b->ts - t0 : MC;
        if (blk != packed) {
            pack_w_all(j, n0, nr, wp, sc, b->nkb);
            packed = blk;
        }
        gemm_task(j, n0, nr, t0, ntk, wp, sc, b->xall + (size_t)t0 * (size_t)j->Kp, c);
    }
}

size_t dsacp_linear_gemm_ws_bytes(const dsacp_weight *w, int64_t T, bool fold)
{
    gemm_job j;
    int64_t nkb;
    size_t per, xf;
    if (!gemm_setup(w, T, fold, &j, &nkb, &per, &xf)) return 0;
    const size_t floats = dsacp_ws_add(dsacp_ws_mul(per, (size_t)dsacp_kernel_threads()), xf);
    return dsacp_ws_add(dsacp_ws_mul(floats, sizeof(float)), DSACP_WS_ALIGN);
}

int dsacp_linear_gemm(const dsacp_weight *w, const float *x, int64_t T, int64_t ldx, float *y, int64_t ldy, bool fold,
                      int *rc, void *ws, size_t ws_bytes)
{
    const int64_t K = w->cols, N = w->rows;
    gemm_job j = {.w = w, .x = x, .T = T, .ldx = ldx, .ldy = ldy, .K = K, .N = N, .y = y, .fold = fold, .dt = w->dtype};
    int64_t nkb;
    size_t per, xf;
    if (!gemm_setup(w, T, fold, &j, &nkb, &per, &xf)) return 0;
    const int64_t nb = (N + NC - 1) / NC, TS = GEMM_TS;
    /* As many threads as the workspace has room for (the bits do not depend on it). */
    dsacp_ws s = dsacp_ws_open(ws, ws_bytes);
    const size_t avail = s.left / sizeof(float);
    const size_t fit = avail > xf ? (avail - xf) / per : 0;
    if (fit < 1) {
        *rc = dsacp_error(DSACP_EINVAL, "linear %s: workspace of %zu bytes, %zu needed", w->name ? w->name : "",
                          ws_bytes, dsacp_linear_gemm_ws_bytes(w, T, fold));
        return 1;
    }
    const int nth = (size_t)dsacp_kernel_threads() < fit ? dsacp_kernel_threads() : (int)fit;
    float *bufs = (float *)s.p;
    const size_t total = per * (size_t)nth * sizeof(float);
    float *xall = bufs + total / sizeof(float);
    for (int64_t tb = 0; tb < T; tb += TS) {
        const int64_t ts = T - tb < TS ? T - tb : TS, mb = (ts + MC - 1) / MC;
        j.t_base = tb;
        gemm_job jx = j;
        jx.x = x + tb * ldx;
        gemm_block b = {&j, &jx, ts, mb, nb * mb, nkb, bufs, per, xall};
        /* No region of one thread (libgomp would allocate its team). */
        if (nth < 2 || b.tasks < 2) {
            for (int64_t m = 0; m < mb; m++) gemm_pack_x(&b, m);
            gemm_share(&b, 0, 1);
            continue;
        }
#pragma omp parallel num_threads(nth)
        {
#pragma omp for schedule(static)
            for (int64_t m = 0; m < mb; m++) gemm_pack_x(&b, m);
            gemm_share(&b, omp_get_thread_num(), omp_get_num_threads());
        }
    }
    *rc = DSACP_OK;
    return 1;
}

#else

size_t dsacp_linear_gemm_ws_bytes(const dsacp_weight *w, int64_t T, bool fold) { return 0; }
int dsacp_linear_gemm(const dsacp_weight *w, const float *x, int64_t T, int64_t ldx, float *y, int64_t ldy, bool fold,
                      int *rc, void *ws, size_t ws_bytes)
{
    return 0;
}

#endif
