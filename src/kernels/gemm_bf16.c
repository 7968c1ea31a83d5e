/*
 * gemm_bf16.c -- the batched bf16-dot product (bf16dot.h, "batched"): y[t][o] is the model's dot
 * of weight row o and token t (dsacp_bf16dot_scalar(w_o, x_t)), computed with a VDPBF16PS
 * micro-kernel whose every accumulator lane is one model lane of one output. Model lane l of
 * every output is a GEMM of its own over the pairs p = l (mod 16), in increasing p: the weights
 * are packed per block of 32 rows and per lane, [l][q][32 rows] dwords (pair p = l + 16 q), the
 * tokens' pairs are broadcast from a zero-padded copy, a register tile of 32 rows x up to 6
 * tokens accumulates one lane's chain, and the 16 lanes of each output are then summed by the
 * model's tree (dsacp_bf16dot_lanes_sum). The blocks of 32 rows are split over the threads
 * (dsacp_parallel_for), each output computed whole by one thread: the same bits for every thread
 * count. Not wired into the linears yet. Calls bf16dot_check.c (whether the instruction is the
 * model), bf16dot.c and kernels_threads.c.
 */
#include "kernels/bf16dot.h"
#include "kernels/kernels_isa.h"

#include <string.h>

enum { ROWS = 32, TOKENS = 6, LANES = 16 };

/* Pairs of a row of K elements, and their count padded to the 16 lanes. */
static int64_t pairs_of(int64_t K) { return (K + 1) / 2; }
static int64_t padded_pairs(int64_t K) { return (pairs_of(K) + LANES - 1) / LANES * LANES; }

size_t dsacp_bf16gemm_pack_bytes(int64_t N, int64_t K)
{
    const size_t blocks = (size_t)((N + ROWS - 1) / ROWS);
    return dsacp_ws_mul(dsacp_ws_mul(blocks, (size_t)padded_pairs(K)), ROWS * sizeof(uint32_t));
}

void dsacp_bf16gemm_pack(const uint16_t *w, int64_t N, int64_t K, int64_t ldw, void *packed)
{
    const int64_t P = pairs_of(K), Q = padded_pairs(K) / LANES;
    uint32_t *out = packed;
    for (int64_t o0 = 0; o0 < N; o0 += ROWS)
        for (int64_t l = 0; l < LANES; l++)
            for (int64_t q = 0; q < Q; q++, out += ROWS) {
                const int64_t p = l + LANES * q;
                for (int64_t r = 0; r < ROWS; r++) {
                    const int64_t o = o0 + r;
                    const uint16_t lo = o < N && p < P ? w[o * ldw + 2 * p] : 0;
                    const uint16_t hi = o < N && p < P && 2 * p + 1 < K ? w[o * ldw + 2 * p + 1] : 0;
                    out[r] = (uint32_t)lo | (uint32_t)hi << 16;
                }
            }
}

size_t dsacp_bf16gemm_ws_bytes(int64_t K, int64_t T)
{
    const size_t tokens = dsacp_ws_mul(dsacp_ws_mul((size_t)T, (size_t)padded_pairs(K)), sizeof(uint32_t));
    return dsacp_ws_add(tokens, DSACP_WS_ALIGN);
}

#if defined(__x86_64__)
#include <immintrin.h>

/* x's T rows as zero-padded pairs [T][padded pairs] (element K of an odd row is +0). */
static void pack_tokens(const uint16_t *x, int64_t T, int64_t K, int64_t ldx, uint32_t *xp)
{
    const int64_t P = pairs_of(K), PP = padded_pairs(K);
    for (int64_t t = 0; t < T; t++) {
        uint32_t *row = xp + t * PP;
        for (int64_t p = 0; p < PP; p++) {
            const uint16_t lo = p < P ? x[t * ldx + 2 * p] : 0, hi = p < P && 2 * p + 1 < K ? x[t * ldx + 2 * p + 1] : 0;
            row[p] = (uint32_t)lo | (uint32_t)hi << 16;
        }
    }
}

#define TBF16 __attribute__((target("avx512f,avx512bf16")))
#define INL __attribute__((always_inline)) inline

/* Model lane l of the 32 rows of block wl ([Q][32] dwords) and NT tokens (xp rows, stride PP),
 * into tile[t][r][l]. NT is a constant after inlining. */
TBF16 static INL void lane_tile(const uint32_t *wl, int64_t Q, const uint32_t *xp, int64_t PP, int64_t l, const int NT,
                                float *tile)
{
    __m512 acc[2][TOKENS];
#pragma GCC unroll 6
    for (int t = 0; t < NT; t++) acc[0][t] = acc[1][t] = _mm512_setzero_ps();
    for (int64_t q = 0; q < Q; q++) {
        const __m512bh w0 = (__m512bh)_mm512_loadu_si512(wl + q * ROWS);
        const __m512bh w1 = (__m512bh)_mm512_loadu_si512(wl + q * ROWS + 16);
        const int64_t p = l + LANES * q;
#pragma GCC unroll 6
        for (int t = 0; t < NT; t++) {
            const __m512bh xb = (__m512bh)_mm512_set1_epi32((int)xp[t * PP + p]);
            acc[0][t] = _mm512_dpbf16_ps(acc[0][t], w0, xb);
            acc[1][t] = _mm512_dpbf16_ps(acc[1][t], w1, xb);
        }
    }
#pragma GCC unroll 6
    for (int t = 0; t < NT; t++) {
        float v[ROWS];
        _mm512_storeu_ps(v, acc[0][t]);
        _mm512_storeu_ps(v + 16, acc[1][t]);
        for (int r = 0; r < ROWS; r++) tile[(t * ROWS + r) * LANES + l] = v[r];
    }
}

#define LANE_TILE(NT)                                                                                              \
    TBF16 static void lane_tile##NT(const uint32_t *wl, int64_t Q, const uint32_t *xp, int64_t PP, int64_t l,      \
                                    float *tile)                                                                  \
    {                                                                                                             \
        lane_tile(wl, Q, xp, PP, l, NT, tile);                                                                    \
    }
LANE_TILE(1)
LANE_TILE(2)
LANE_TILE(3)
LANE_TILE(4)
LANE_TILE(5)
LANE_TILE(6)
typedef void (*lane_tile_fn)(const uint32_t *, int64_t, const uint32_t *, int64_t, int64_t, float *);
static const lane_tile_fn lane_tiles[TOKENS + 1] = {NULL,       lane_tile1, lane_tile2, lane_tile3,
                                                    lane_tile4, lane_tile5, lane_tile6};

/* The block of rows [o0, o0 + 32) and tokens [t0, t0 + nt): 16 lane chains, then the tree. */
static void block(const uint32_t *wb, int64_t Q, const uint32_t *xp, int64_t PP, int64_t o0, int64_t N, int64_t t0,
                  int nt, float *tile, float *y, int64_t ldy)
{
    for (int64_t l = 0; l < LANES; l++) lane_tiles[nt](wb + l * Q * ROWS, Q, xp + t0 * PP, PP, l, tile);
    for (int t = 0; t < nt; t++)
        for (int64_t r = 0; r < ROWS && o0 + r < N; r++)
            y[(t0 + t) * ldy + o0 + r] = dsacp_bf16dot_lanes_sum(tile + (t * ROWS + r) * LANES);
}

/* One call's operands, shared by the threads: the packed weights, the tokens' pairs, y. */
typedef struct job {
    const uint32_t *packed, *xp;
    int64_t N, T, PP, Q, ldy;
    float *y;
} job;

/* Rows [32 b, 32 b + 32) for every token (one thread's unit of the split), through a tile on
 * this thread's stack. */
static void row_block(void *ctx, int64_t b)
{
    const job *j = ctx;
    float tile[TOKENS * ROWS * LANES];
    const uint32_t *wb = j->packed + b * LANES * j->Q * ROWS;
    for (int64_t t0 = 0; t0 < j->T; t0 += TOKENS)
        block(wb, j->Q, j->xp, j->PP, b * ROWS, j->N, t0, (int)(j->T - t0 < TOKENS ? j->T - t0 : TOKENS), tile, j->y,
              j->ldy);
}
#endif

int dsacp_bf16gemm(const void *packed, int64_t N, int64_t K, const uint16_t *x, int64_t T, int64_t ldx, float *y,
                   int64_t ldy, void *ws, size_t ws_bytes)
{
    if (dsacp_bf16dot_hw_level() != DSACP_BF16DOT_HW_ALL)
        return dsacp_error(DSACP_EUNSUPPORTED, "bf16 GEMM: this CPU's VDPBF16PS is not the model");
    const size_t need = dsacp_bf16gemm_ws_bytes(K, T);
    if (!ws || ws_bytes < need)
        return dsacp_error(DSACP_EINVAL, "bf16 GEMM: workspace of %zu bytes, %zu needed", ws_bytes, need);
#if defined(__x86_64__)
    const int64_t PP = padded_pairs(K);
    dsacp_ws s = dsacp_ws_open(ws, ws_bytes);
    uint32_t *xp = dsacp_ws_take(&s, (size_t)(T * PP) * sizeof(uint32_t));
    pack_tokens(x, T, K, ldx, xp);
    job j = {.packed = packed, .xp = xp, .N = N, .T = T, .PP = PP, .Q = PP / LANES, .ldy = ldy, .y = y};
    dsacp_parallel_for((N + ROWS - 1) / ROWS, true, row_block, &j);
    return DSACP_OK;
#else
    (void)packed, (void)N, (void)x, (void)ldx, (void)y, (void)ldy;
    return DSACP_EUNSUPPORTED;
#endif
}
