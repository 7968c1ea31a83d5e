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
 * Blocking: tokens in super-blocks of 8 MC, packed once per call into a shared copy; each task is
 * NC weight rows x MC tokens, its weights packed (decoded to f32) once per row block for all the
 * token blocks a thread runs on them; KC columns per chunk (multiple of 16, and of the FP8 block
 * in fold mode). Packed panels are [steps][tile][8] so the micro-kernel reads two sequential
 * streams. Tasks are split statically over the threads; each output is computed by one task
 * with one fixed sequence, so the thread count changes nothing either.
 */
#include "kernels/kernels_isa.h"
#include "numerics/numerics.h"

#include <omp.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>

#define T256 __attribute__((target("avx2,fma,f16c")))
#define INL __attribute__((always_inline)) inline

/* Register tile MR rows x MU tokens (12 ymm accumulators + 3 weight + 1 token register; the
 * unroll pragmas below assume these values); NC rows x MC tokens per task, KC packed columns per
 * chunk. Chosen by measurement on Zen 3 (docs/performance.md, "Blocked GEMM"). */
enum { MR = 3, MU = 4, NC = 96, MC = 64, KC = 1024 };

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

/* The fixed tree of dsacp_dot_f32 over 16 lanes held as (lo, hi). */
T256 static INL float hsum16(__m256 lo, __m256 hi)
{
    __m256 a = _mm256_add_ps(lo, hi);
    __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    __m128 c = _mm_add_ps(b, _mm_movehl_ps(b, b));
    __m128 d = _mm_add_ss(c, _mm_movehdup_ps(c));
    return _mm_cvtss_f32(d);
}

/* 8 e4m3 bytes -> their values times 2^-120, exact (as kernels_avx2.c e4m3_bits8). */
T256 static INL __m256 e4m3_bits8(__m128i b8)
{
    __m256i v = _mm256_slli_epi32(_mm256_cvtepi8_epi32(b8), 20);
    const __m256i em = _mm256_set1_epi32(0x07F00000);
    __m256i nan = _mm256_cmpeq_epi32(_mm256_and_si256(v, em), em);
    v = _mm256_and_si256(v, _mm256_set1_epi32((int)0x87F00000u));
    v = _mm256_blendv_epi8(v, _mm256_set1_epi32(0x7FC00000), nan);
    return _mm256_castsi256_ps(v);
}

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
            __m128i v = _mm_set_epi64x(*(const int64_t *)(const void *)(row + 2 * b),
                                       *(const int64_t *)(const void *)(row + 2 * a));
            return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16));
        }
        case DSACP_F16: {
            int64_t va, vb;
            memcpy(&va, row + 2 * a, 8);
            memcpy(&vb, row + 2 * b, 8);
            return _mm256_cvtph_ps(_mm_set_epi64x(vb, va));
        }
        case DSACP_F8_E4M3: {
            int32_t va, vb;
            memcpy(&va, row + a, 4);
            memcpy(&vb, row + b, 4);
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

/* Where packed step j (of `steps` in the chunk) of half h of row (or token) r goes: panels of
 * `tile` rows, each [steps][tile][8] floats, so the micro-kernel reads two sequential streams. */
static INL float *panel_at(float *base, int64_t rows_pad, int64_t steps, int tile, int h, int64_t r, int64_t j)
{
    const int64_t ntile = rows_pad / tile;
    return base + (((h * ntile + r / tile) * steps + j) * tile + r % tile) * 8;
}

/* Packs weight rows [n0, n0 + nr) (rows up to the multiple of MR are zero) and packed columns
 * [c0, c0 + kc) into wp, as panels of MR rows. */
T256 static void pack_w(const gemm_job *j, int64_t n0, int64_t nr, int64_t c0, float *wp)
{
    const int64_t kc = j->kc, steps = kc / 16, nrp = (nr + MR - 1) / MR * MR;
    const size_t es = j->dt == DSACP_F32 ? 4 : j->dt == DSACP_F8_E4M3 ? 1 : 2;
    const dsacp_weight *w = j->w;
    const bool f8 = j->dt == DSACP_F8_E4M3 && !j->fold;
    const int64_t blk = f8 ? w->block : 0;
    for (int64_t r = 0; r < nrp; r++) {
        float *d0 = panel_at(wp, nrp, steps, MR, 0, r, 0), *d1 = panel_at(wp, nrp, steps, MR, 1, r, 0);
        if (r >= nr) {
            for (int64_t s = 0; s < steps; s++, d0 += MR * 8, d1 += MR * 8) {
                _mm256_store_ps(d0, _mm256_setzero_ps());
                _mm256_store_ps(d1, _mm256_setzero_ps());
            }
            continue;
        }
        const int64_t n = n0 + r;
        const uint8_t *row = (const uint8_t *)w->data + (size_t)n * (size_t)j->K * es;
        const float *srow = f8 ? w->scale + (n / blk) * w->scale_stride : NULL;
        __m256 mult = _mm256_set1_ps(0x1p120f);
        for (int64_t s = 0; s < steps; s++, d0 += MR * 8, d1 += MR * 8) {
            int64_t a0, b0, a1, b1;
            step_cols(j->fold, c0 / 16 + s, 0, &a0, &b0);
            step_cols(j->fold, c0 / 16 + s, 1, &a1, &b1);
            /* natural FP8: both halves of a step lie in one block (blocks are multiples of 16) */
            if (f8 && (s == 0 || a0 % blk == 0)) mult = _mm256_set1_ps(srow[a0 / blk] * 0x1p120f);
            _mm256_store_ps(d0, wpack8(j, row, a0, b0, mult));
            _mm256_store_ps(d1, wpack8(j, row, a1, b1, mult));
        }
    }
}

/* Packs token rows [t0, t0 + nt) (up to the multiple of MU zero) the same way, panels of MU. */
T256 static void pack_x(const gemm_job *j, int64_t t0, int64_t nt, int64_t c0, float *xp)
{
    const int64_t kc = j->kc, steps = kc / 16, ntp = (nt + MU - 1) / MU * MU, K = j->K;
    for (int64_t u = 0; u < ntp; u++) {
        float *d[2] = {panel_at(xp, ntp, steps, MU, 0, u, 0), panel_at(xp, ntp, steps, MU, 1, u, 0)};
        if (u >= nt) {
            for (int64_t s = 0; s < steps; s++)
                for (int h = 0; h < 2; h++) _mm256_store_ps(d[h] + s * MU * 8, _mm256_setzero_ps());
            continue;
        }
        const float *xr = j->x + (t0 + u) * j->ldx;
        for (int64_t s = 0; s < steps; s++)
            for (int h = 0; h < 2; h++) {
                int64_t a, b;
                step_cols(j->fold, c0 / 16 + s, h, &a, &b);
                __m256 v;
                if (b + 4 <= K && a + 4 <= K) {
                    v = _mm256_set_m128(_mm_loadu_ps(xr + b), _mm_loadu_ps(xr + a));
                } else {
                    _Alignas(32) float pad[8] = {0};
                    for (int i = 0; i < 4; i++) {
                        if (a + i < K) pad[i] = xr[a + i];
                        if (b + i < K) pad[4 + i] = xr[b + i];
                    }
                    v = _mm256_load_ps(pad);
                }
                _mm256_store_ps(d[h] + s * MU * 8, v);
            }
    }
}

/* Natural chains over `steps` packed steps of one half: acc(u, r) += w[r] * x[u] lane-wise; wp, xp
 * are panels ([steps][MR][8], [steps][MU][8]); the running sums live in c. */
T256 static void mk_chain(const float *wp, const float *xp, int64_t steps, float *c, int64_t ldct)
{
    __m256 acc[MR][MU];
#pragma GCC unroll 4
    for (int u = 0; u < MU; u++)
#pragma GCC unroll 3
        for (int r = 0; r < MR; r++) acc[r][u] = _mm256_load_ps(c + u * ldct + r * 16);
    for (int64_t i = 0; i < steps; i++, wp += MR * 8, xp += MU * 8) {
        __m256 wv[MR];
#pragma GCC unroll 3
        for (int r = 0; r < MR; r++) wv[r] = _mm256_load_ps(wp + r * 8);
#pragma GCC unroll 4
        for (int u = 0; u < MU; u++) {
            const __m256 xv = _mm256_load_ps(xp + u * 8);
#pragma GCC unroll 3
            for (int r = 0; r < MR; r++) acc[r][u] = _mm256_fmadd_ps(wv[r], xv, acc[r][u]);
        }
    }
#pragma GCC unroll 4
    for (int u = 0; u < MU; u++)
#pragma GCC unroll 3
        for (int r = 0; r < MR; r++) _mm256_store_ps(c + u * ldct + r * 16, acc[r][u]);
}

/* Fold chains: per block of bsteps packed steps, b = sum from +0, then tot = fma(b, scale_r, tot)
 * (scales sc[r * ldsc + block]); the last block may be short. */
T256 static void mk_fold(const float *wp, const float *xp, int64_t steps, int64_t bsteps, const float *sc,
                         int64_t ldsc, float *c, int64_t ldct)
{
    for (int64_t i0 = 0; i0 < steps; i0 += bsteps) {
        __m256 acc[MR][MU];
#pragma GCC unroll 4
        for (int u = 0; u < MU; u++)
#pragma GCC unroll 3
            for (int r = 0; r < MR; r++) acc[r][u] = _mm256_setzero_ps();
        const int64_t ie = i0 + bsteps < steps ? i0 + bsteps : steps;
        for (int64_t i = i0; i < ie; i++, wp += MR * 8, xp += MU * 8) {
            __m256 wv[MR];
#pragma GCC unroll 3
            for (int r = 0; r < MR; r++) wv[r] = _mm256_load_ps(wp + r * 8);
#pragma GCC unroll 4
            for (int u = 0; u < MU; u++) {
                const __m256 xv = _mm256_load_ps(xp + u * 8);
#pragma GCC unroll 3
                for (int r = 0; r < MR; r++) acc[r][u] = _mm256_fmadd_ps(wv[r], xv, acc[r][u]);
            }
        }
        const int64_t kb = i0 / bsteps;
#pragma GCC unroll 3
        for (int r = 0; r < MR; r++) {
            const __m256 s = _mm256_set1_ps(sc[r * ldsc + kb]);
#pragma GCC unroll 4
            for (int u = 0; u < MU; u++) {
                float *cp = c + u * ldct + r * 16;
                _mm256_store_ps(cp, _mm256_fmadd_ps(acc[r][u], s, _mm256_load_ps(cp)));
            }
        }
    }
}

/* The thread's room (floats): the whole K of NC packed weight rows, the lane sums of the MC x NC
 * outputs and (fold) their block scales; a multiple of 16 floats so every thread's room is
 * 64-byte aligned. */
static size_t room_floats(int64_t Kp, int64_t nkb)
{
    return ((size_t)NC * (size_t)Kp + (size_t)MC * NC * 16 + (size_t)NC * (size_t)nkb + 15) / 16 * 16;
}

/* Packs rows [n0, n0 + nr) over the whole K into wp, chunk after chunk (chunk c0 at
 * wp + c0 * nrp), and (fold) their block scales into sc [nrp][nkb]. */
T256 static void pack_w_all(const gemm_job *j, int64_t n0, int64_t nr, float *wp, float *sc, int64_t nkb)
{
    const int64_t nrp = (nr + MR - 1) / MR * MR;
    for (int64_t c0 = 0; c0 < j->Kp; c0 += j->kc) {
        gemm_job jc = *j;
        if (c0 + jc.kc > j->Kp) jc.kc = j->Kp - c0;
        pack_w(&jc, n0, nr, c0, wp + c0 * nrp);
    }
    if (j->fold) {
        const dsacp_weight *w = j->w;
        for (int64_t r = 0; r < nrp; r++)
            for (int64_t kb = 0; kb < nkb; kb++)
                sc[r * nkb + kb] = r < nr ? w->scale[((n0 + r) / w->block) * w->scale_stride + kb] : 0;
    }
}

/* Tokens [t0, t0 + nt) the same way into xp. */
T256 static void pack_x_all(const gemm_job *j, int64_t t0, int64_t nt, float *xp)
{
    const int64_t ntp = (nt + MU - 1) / MU * MU;
    for (int64_t c0 = 0; c0 < j->Kp; c0 += j->kc) {
        gemm_job jc = *j;
        if (c0 + jc.kc > j->Kp) jc.kc = j->Kp - c0;
        pack_x(&jc, t0, nt, c0, xp + c0 * ntp);
    }
}

/* One task: rows [n0, n0 + nr) (packed in wp, scales in sc) x tokens [t0, t0 + nt). */
T256 static void gemm_task(const gemm_job *j, int64_t n0, int64_t nr, int64_t t0, int64_t nt, const float *wp,
                           const float *sc, int64_t nkb, const float *xp, float *c)
{
    const int64_t nrp = (nr + MR - 1) / MR * MR, ntp = (nt + MU - 1) / MU * MU;
    const int64_t ldct = nrp * 16;
    memset(c, 0, (size_t)(ntp * ldct) * sizeof(float));
    const int64_t blk = j->fold ? j->w->block : 0;
    for (int64_t c0 = 0; c0 < j->Kp; c0 += j->kc) {
        const int64_t kc = c0 + j->kc > j->Kp ? j->Kp - c0 : j->kc, steps = kc / 16;
        const float *wc = wp + c0 * nrp, *xc = xp + c0 * ntp;
        /* A tile of MU tokens stays in L1 while the row panels stream from L2 (measured faster
         * than the converse on Zen 3: 0.74-0.77 of sgemm against 0.67). */
        for (int h = 0; h < 2; h++)
            for (int64_t u0 = 0; u0 < ntp; u0 += MU)
                for (int64_t r0 = 0; r0 < nrp; r0 += MR) {
                    const float *wt = panel_at((float *)wc, nrp, steps, MR, h, r0, 0);
                    const float *xt = panel_at((float *)xc, ntp, steps, MU, h, u0, 0);
                    float *ct = c + u0 * ldct + r0 * 16 + h * 8;
                    if (j->fold) mk_fold(wt, xt, steps, blk / 16, sc + r0 * nkb + c0 / blk, nkb, ct, ldct);
                    else mk_chain(wt, xt, steps, ct, ldct);
                }
    }
    for (int64_t u = 0; u < nt; u++)
        for (int64_t r = 0; r < nr; r++) {
            const float *cp = c + u * ldct + r * 16;
            j->y[(j->t_base + t0 + u) * j->ldy + n0 + r] = hsum16(_mm256_load_ps(cp), _mm256_load_ps(cp + 8));
        }
}

int dsacp_linear_gemm(const dsacp_weight *w, const float *x, int64_t T, int64_t ldx, float *y, int64_t ldy, bool fold,
                      int *rc)
{
    const int64_t K = w->cols, N = w->rows;
    gemm_job j = {.w = w, .x = x, .T = T, .ldx = ldx, .ldy = ldy, .K = K, .N = N, .y = y, .fold = fold, .dt = w->dtype};
    int64_t nkb = 0;
    if (fold) {
        if (w->dtype != DSACP_F8_E4M3 || w->block <= 0 || w->block % 64 || w->block > 4096) return 0;
        j.kc = w->block * (KC / w->block > 1 ? KC / w->block : 1);
        j.Kp = (K + 63) / 64 * 64;
        nkb = (j.Kp + w->block - 1) / w->block;
    } else {
        j.kc = KC;
        j.Kp = (K + 15) / 16 * 16;
    }
    /* Tokens go in super-blocks of TS: their packed copy (TS x Kp floats, shared by the threads)
     * bounds the extra memory whatever T is; the weights are packed once per row block and
     * super-block, a cost of 1/TS of the product. */
    const int64_t nb = (N + NC - 1) / NC, TS = MC * 8;
    const int nth = omp_in_parallel() ? 1 : omp_get_max_threads();
    const size_t per = room_floats(j.Kp, nkb);
    size_t total, xbytes;
    if (!dsacp_mul_ok(per * sizeof(float), (size_t)nth, &total) ||
        !dsacp_mul_ok((size_t)(T < TS ? (T + MC - 1) / MC * MC : TS) * sizeof(float), (size_t)j.Kp, &xbytes) ||
        total + xbytes < total) {
        *rc = dsacp_error(DSACP_ENOMEM, "linear %s: packing room overflows", w->name ? w->name : "");
        return 1;
    }
    float *bufs = dsacp_alloc(total + xbytes);
    if (!bufs) {
        *rc = dsacp_error(DSACP_ENOMEM, "linear %s: out of memory for %zu bytes of packing room", w->name ? w->name : "",
                          total + xbytes);
        return 1;
    }
    float *xall = bufs + total / sizeof(float);
    for (int64_t tb = 0; tb < T; tb += TS) {
        const int64_t ts = T - tb < TS ? T - tb : TS, mb = (ts + MC - 1) / MC, tasks = nb * mb;
        j.t_base = tb;
        gemm_job jx = j;
        jx.x = x + tb * ldx;
        const bool par = nth > 1 && tasks > 1;
#pragma omp parallel num_threads(nth) if (par)
        {
#pragma omp for schedule(static)
            for (int64_t m = 0; m < mb; m++)
                pack_x_all(&jx, m * MC, ts - m * MC < MC ? ts - m * MC : MC, xall + (size_t)(m * MC) * (size_t)j.Kp);
            /* Each thread takes a contiguous run of tasks in row-block-major order and packs a row
             * block's weights once for all the token blocks it runs on them. */
            const int th = omp_get_thread_num(), nt = omp_get_num_threads();
            float *wp = bufs + (size_t)th * per;
            float *c = wp + (size_t)NC * (size_t)j.Kp, *sc = c + (size_t)MC * NC * 16;
            const int64_t i0 = tasks * th / nt, i1 = tasks * (th + 1) / nt;
            int64_t packed = -1;
            for (int64_t i = i0; i < i1; i++) {
                const int64_t b = i / mb, m = i % mb;
                const int64_t n0 = b * NC, nr = N - n0 < NC ? N - n0 : NC, t0 = m * MC, nt_ = ts - t0 < MC ? ts - t0 : MC;
                if (b != packed) {
                    pack_w_all(&j, n0, nr, wp, sc, nkb);
                    packed = b;
                }
                gemm_task(&j, n0, nr, t0, nt_, wp, sc, nkb, xall + (size_t)t0 * (size_t)j.Kp, c);
            }
        }
    }
    dsacp_free(bufs);
    *rc = DSACP_OK;
    return 1;
}

#else

int dsacp_linear_gemm(const dsacp_weight *w, const float *x, int64_t T, int64_t ldx, float *y, int64_t ldy, bool fold,
                      int *rc)
{
    (void)w, (void)x, (void)T, (void)ldx, (void)y, (void)ldy, (void)fold, (void)rc;
    return 0;
}

#endif
