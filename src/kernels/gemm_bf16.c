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
 * count. A second form for plain operands (dsacp_bf16dot_plain_ok), FMA: the same packed weights
 * split into f32 in registers, two f32 FMAs per pair (high product first), 32 rows x 12 tokens
 * per tile, the tree in zmm adds; it has the f32 FMA's ceiling, twice VDPBF16PS's on this
 * project's Xeon (docs/numerics.md). The automatic choice between the two is measured once.
 * Not wired into the linears yet. Calls bf16dot_check.c (whether the instruction is the
 * model), bf16dot.c and kernels_threads.c.
 */
#include "kernels/bf16dot.h"
#include "kernels/kernels_isa.h"

#include <string.h>

/* TOKENS: the VDPBF16PS tile's tokens; FTOKENS: the FMA form's (its weights are split in
 * registers, two ALU ops per vector, spread over more tokens); HEAD: the packed weights' header
 * (the weights' exponent floor, an int), 64 bytes so the blocks keep the buffer's alignment. */
enum { ROWS = 32, TOKENS = 6, FTOKENS = 12, LANES = 16, HEAD = 64 };

/* Pairs of a row of K elements, and their count padded to the 16 lanes. */
static int64_t pairs_of(int64_t K) { return (K + 1) / 2; }
static int64_t padded_pairs(int64_t K) { return (pairs_of(K) + LANES - 1) / LANES * LANES; }

size_t dsacp_bf16gemm_pack_bytes(int64_t N, int64_t K)
{
    const size_t blocks = (size_t)((N + ROWS - 1) / ROWS);
    const size_t body = dsacp_ws_mul(dsacp_ws_mul(blocks, (size_t)padded_pairs(K)), ROWS * sizeof(uint32_t));
    return dsacp_ws_add(body, HEAD);
}

void dsacp_bf16gemm_pack(const uint16_t *w, int64_t N, int64_t K, int64_t ldw, void *packed)
{
    const int64_t P = pairs_of(K), Q = padded_pairs(K) / LANES;
    int floor = 256;
    for (int64_t o = 0; o < N; o++) {
        const int f = dsacp_bf16_exp_floor(w + o * ldw, K);
        floor = f < floor ? f : floor;
    }
    memset(packed, 0, HEAD);
    memcpy(packed, &floor, sizeof floor);
    uint32_t *out = (uint32_t *)((unsigned char *)packed + HEAD);
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

/* The tokens' pairs, and the FMA form's copy of them as f32 (high, low) per pair. */
size_t dsacp_bf16gemm_ws_bytes(int64_t K, int64_t T)
{
    const size_t tokens = dsacp_ws_mul(dsacp_ws_mul((size_t)T, (size_t)padded_pairs(K)), sizeof(uint32_t));
    const size_t split = dsacp_ws_round(dsacp_ws_mul(tokens, 2));
    return dsacp_ws_add(dsacp_ws_add(dsacp_ws_round(tokens), split), DSACP_WS_ALIGN);
}

#if defined(__x86_64__)
#include <immintrin.h>

/* x's T rows as zero-padded pairs [T][padded pairs] (element K of an odd row is +0); for the FMA
 * form also as f32 (xf, or NULL) in the order its tiles read them: per group of FTOKENS tokens
 * (the last one shorter), [lane l][q][token][high, low] for pair p = l + 16 q. Returns the
 * tokens' exponent floor. */
static int pack_tokens(const uint16_t *x, int64_t T, int64_t K, int64_t ldx, uint32_t *xp, float *xf)
{
    const int64_t P = pairs_of(K), PP = padded_pairs(K), Q = PP / LANES;
    int floor = 256;
    for (int64_t t = 0; t < T; t++) {
        uint32_t *row = xp + t * PP;
        const int f = dsacp_bf16_exp_floor(x + t * ldx, K);
        floor = f < floor ? f : floor;
        const int64_t g = t / FTOKENS * FTOKENS, nb = T - g < FTOKENS ? T - g : FTOKENS;
        for (int64_t p = 0; p < PP; p++) {
            const uint16_t lo = p < P ? x[t * ldx + 2 * p] : 0;
            const uint16_t hi = p < P && 2 * p + 1 < K ? x[t * ldx + 2 * p + 1] : 0;
            row[p] = (uint32_t)lo | (uint32_t)hi << 16;
            if (!xf) continue;
            float *at = xf + 2 * (g * PP + ((p % LANES * Q + p / LANES) * nb + t - g));
            at[0] = dsacp_f32_of_bits((uint32_t)hi << 16), at[1] = dsacp_f32_of_bits((uint32_t)lo << 16);
        }
    }
    return floor;
}

#define TBF16 __attribute__((target("avx512f,avx512bf16")))
#define T512 __attribute__((target("avx512f")))
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

/* The FMA form of lane_tile for plain operands (dsacp_bf16dot_plain_ok: DAZ and FTZ never act):
 * per pair the high elements' product, then the low ones', each one fused f32 FMA (a product of
 * two bf16 is exact). The weights' pairs split in registers (high: & 0xFFFF0000, low: << 16),
 * the tokens' from xf (their group's [l][q][NT][high, low] f32, pack_tokens); lane l's chains
 * into tile[l][t][r] (fma_tree's order). */
T512 static INL void lane_tile_fma(const uint32_t *wl, int64_t Q, const float *xf, int64_t PP, int64_t l, const int NT,
                                   float *tile)
{
    (void)PP;
    __m512 acc[2][FTOKENS];
    const __m512i himask = _mm512_set1_epi32((int)0xFFFF0000u);
#pragma GCC unroll 12
    for (int t = 0; t < NT; t++) acc[0][t] = acc[1][t] = _mm512_setzero_ps();
    for (int64_t q = 0; q < Q; q++) {
        const __m512i w0 = _mm512_loadu_si512(wl + q * ROWS), w1 = _mm512_loadu_si512(wl + q * ROWS + 16);
        const __m512 h0 = _mm512_castsi512_ps(_mm512_and_si512(w0, himask));
        const __m512 h1 = _mm512_castsi512_ps(_mm512_and_si512(w1, himask));
        const __m512 l0 = _mm512_castsi512_ps(_mm512_slli_epi32(w0, 16));
        const __m512 l1 = _mm512_castsi512_ps(_mm512_slli_epi32(w1, 16));
        const float *xq = xf + 2 * (l * Q + q) * NT;
#pragma GCC unroll 12
        for (int t = 0; t < NT; t++) {
            const __m512 xh = _mm512_set1_ps(xq[2 * t]), xl = _mm512_set1_ps(xq[2 * t + 1]);
            acc[0][t] = _mm512_fmadd_ps(h0, xh, acc[0][t]);
            acc[1][t] = _mm512_fmadd_ps(h1, xh, acc[1][t]);
            acc[0][t] = _mm512_fmadd_ps(l0, xl, acc[0][t]);
            acc[1][t] = _mm512_fmadd_ps(l1, xl, acc[1][t]);
        }
    }
#pragma GCC unroll 12
    for (int t = 0; t < NT; t++) {
        _mm512_storeu_ps(tile + (l * FTOKENS + t) * ROWS, acc[0][t]);
        _mm512_storeu_ps(tile + (l * FTOKENS + t) * ROWS + 16, acc[1][t]);
    }
}

/* The model's tree over the 16 lanes of the FMA form's outputs (t, rows 16 h .. 16 h + 15),
 * tile [l][FTOKENS][32 rows], in zmm IEEE adds in the model's order (gradual underflow; a NaN
 * sum is redone by the model, whose NaN rule the adds' operand order need not keep). */
T512 static void fma_tree(const float *tile, int t, int h, float out[16])
{
    __m512 v[LANES];
    for (int l = 0; l < LANES; l++) v[l] = _mm512_loadu_ps(tile + (l * FTOKENS + t) * ROWS + 16 * h);
    for (int w = 8; w >= 1; w /= 2)
        for (int i = 0; i < w; i++) v[i] = _mm512_add_ps(v[i], v[i + w]);
    _mm512_storeu_ps(out, v[0]);
}

/* One tile function per token count: x is xp (uint32_t pairs) or xf (f32 halves). */
typedef void (*lane_tile_fn)(const uint32_t *, int64_t, const void *, int64_t, int64_t, float *);
#define LANE_TILE(NAME, ATTR, FN, XT, NT)                                                                          \
    ATTR static void NAME##NT(const uint32_t *wl, int64_t Q, const void *x, int64_t PP, int64_t l, float *tile)     \
    {                                                                                                             \
        FN(wl, Q, (const XT *)x, PP, l, NT, tile);                                                                \
    }
#define DP_TILE(NT) LANE_TILE(dp_tile, TBF16, lane_tile, uint32_t, NT)
#define FMA_TILE(NT) LANE_TILE(fma_tile, T512, lane_tile_fma, float, NT)
DP_TILE(1) DP_TILE(2) DP_TILE(3) DP_TILE(4) DP_TILE(5) DP_TILE(6)
FMA_TILE(1) FMA_TILE(2) FMA_TILE(3) FMA_TILE(4) FMA_TILE(5) FMA_TILE(6)
FMA_TILE(7) FMA_TILE(8) FMA_TILE(9) FMA_TILE(10) FMA_TILE(11) FMA_TILE(12)
static const lane_tile_fn dp_tiles[TOKENS + 1] = {NULL, dp_tile1, dp_tile2, dp_tile3, dp_tile4, dp_tile5, dp_tile6};
static const lane_tile_fn fma_tiles[FTOKENS + 1] = {NULL,       fma_tile1,  fma_tile2, fma_tile3, fma_tile4,
                                                    fma_tile5,  fma_tile6,  fma_tile7, fma_tile8, fma_tile9,
                                                    fma_tile10, fma_tile11, fma_tile12};

/* One call's operands, shared by the threads: the packed weights, the tokens' pairs (and their
 * f32 halves for the FMA form), y, the form. */
typedef struct job {
    const uint32_t *packed, *xp;
    const float *xf;
    int64_t N, T, PP, Q, ldy;
    float *y;
    bool fma;
} job;

/* The model's dot of row r of block wb and token pairs xt, from the packed weights (the FMA
 * form's NaN results: their payload is the model's, not the FMA order's). */
static float model_dot(const uint32_t *wb, int64_t Q, const uint32_t *xt, int64_t r)
{
    float lanes[LANES];
    for (int64_t l = 0; l < LANES; l++) {
        float acc = 0.0f;
        for (int64_t q = 0; q < Q; q++)
            acc = dsacp_bf16dot_model_pair(acc, wb[(l * Q + q) * ROWS + r], xt[l + LANES * q]);
        lanes[l] = acc;
    }
    return dsacp_bf16dot_lanes_sum(lanes);
}

/* The block of rows [o0, o0 + 32) and tokens [t0, t0 + nt): 16 lane chains, then the tree. */
static void block_dp(const job *j, const uint32_t *wb, int64_t o0, int64_t t0, int nt, float *tile)
{
    const int64_t Q = j->Q, PP = j->PP;
    for (int64_t l = 0; l < LANES; l++) dp_tiles[nt](wb + l * Q * ROWS, Q, j->xp + t0 * PP, PP, l, tile);
    for (int t = 0; t < nt; t++)
        for (int64_t r = 0; r < ROWS && o0 + r < j->N; r++)
            j->y[(t0 + t) * j->ldy + o0 + r] = dsacp_bf16dot_lanes_sum(tile + (t * ROWS + r) * LANES);
}

/* The same in the FMA form (t0: the first token of a group of FTOKENS), a NaN output redone by
 * the model. */
static void block_fma(const job *j, const uint32_t *wb, int64_t o0, int64_t t0, int nt, float *tile)
{
    const int64_t Q = j->Q, PP = j->PP;
    for (int64_t l = 0; l < LANES; l++) fma_tiles[nt](wb + l * Q * ROWS, Q, j->xf + 2 * t0 * PP, PP, l, tile);
    for (int t = 0; t < nt; t++)
        for (int h = 0; h < 2; h++) {
            float out[16];
            fma_tree(tile, t, h, out);
            for (int64_t r = 16 * h; r < 16 * h + 16 && o0 + r < j->N; r++) {
                const float v = out[r - 16 * h];
                j->y[(t0 + t) * j->ldy + o0 + r] = v == v ? v : model_dot(wb, Q, j->xp + (t0 + t) * PP, r);
            }
        }
}

/* Rows [32 b, 32 b + 32) for every token (one thread's unit of the split), through a tile on
 * this thread's stack. */
static void row_block(void *ctx, int64_t b)
{
    const job *j = ctx;
    float tile[FTOKENS * ROWS * LANES];
    const uint32_t *wb = j->packed + b * LANES * j->Q * ROWS;
    const int64_t step = j->fma ? FTOKENS : TOKENS;
    for (int64_t t0 = 0; t0 < j->T; t0 += step)
        (j->fma ? block_fma : block_dp)(j, wb, b * ROWS, t0, (int)(j->T - t0 < step ? j->T - t0 : step), tile);
}

/* Seconds of `reps` full tiles of each form over Q = 128 pairs of zeros (the forms' throughput,
 * what the choice needs), the best of three interleaved rounds. */
static void time_forms(double *dp, double *fma)
{
    enum { Q = 64, REPS = 200 };
    static const uint32_t w[Q * ROWS], xp[LANES * Q * TOKENS];
    static const float xf[2 * LANES * Q * FTOKENS];
    float tile[FTOKENS * ROWS * LANES];
    *dp = *fma = 1e30;
    for (int round = 0; round < 3; round++) {
        double t0 = dsacp_now();
        for (int i = 0; i < REPS * 2; i++) dp_tiles[TOKENS](w, Q, xp, LANES * Q, 0, tile);
        double t1 = dsacp_now();
        for (int i = 0; i < REPS; i++) fma_tiles[FTOKENS](w, Q, xf, Q * LANES, 0, tile);
        double t2 = dsacp_now();
        *dp = t1 - t0 < *dp ? t1 - t0 : *dp;
        *fma = t2 - t1 < *fma ? t2 - t1 : *fma;
    }
}
#endif

/* The automatic choice, once: DSACP_BF16DOT_FORM=fma|dpbf16 when set, else the form that ran
 * the same work faster in time_forms (racing first calls may measure twice; the bits are the
 * model's either way). */
static int auto_form(void)
{
    static int chosen; /* 0: not yet */
    int f = __atomic_load_n(&chosen, __ATOMIC_ACQUIRE);
    if (f) return f;
    const char *env = getenv("DSACP_BF16DOT_FORM");
    if (env && !strcmp(env, "fma")) f = DSACP_BF16GEMM_FMA;
    else if (env && !strcmp(env, "dpbf16")) f = DSACP_BF16GEMM_DPBF16;
    else {
#if defined(__x86_64__)
        double dp, fma;
        time_forms(&dp, &fma);
        f = fma <= dp ? DSACP_BF16GEMM_FMA : DSACP_BF16GEMM_DPBF16;
#else
        f = DSACP_BF16GEMM_DPBF16;
#endif
    }
    __atomic_store_n(&chosen, f, __ATOMIC_RELEASE);
    return f;
}

int dsacp_bf16gemm_form(void) { return auto_form(); }

int dsacp_bf16gemm_as(int form, const void *packed, int64_t N, int64_t K, const uint16_t *x, int64_t T, int64_t ldx,
                      float *y, int64_t ldy, void *ws, size_t ws_bytes)
{
    if (dsacp_bf16dot_hw_level() != DSACP_BF16DOT_HW_ALL)
        return dsacp_error(DSACP_EUNSUPPORTED, "bf16 GEMM: this CPU's VDPBF16PS is not the model");
    if (form != DSACP_BF16GEMM_AUTO && form != DSACP_BF16GEMM_FMA && form != DSACP_BF16GEMM_DPBF16)
        return dsacp_error(DSACP_EINVAL, "bf16 GEMM: form %d is none of auto, fma, dpbf16", form);
    const size_t need = dsacp_bf16gemm_ws_bytes(K, T);
    if (!ws || ws_bytes < need)
        return dsacp_error(DSACP_EINVAL, "bf16 GEMM: workspace of %zu bytes, %zu needed", ws_bytes, need);
#if defined(__x86_64__)
    if (form == DSACP_BF16GEMM_AUTO) form = auto_form();
    const int64_t PP = padded_pairs(K);
    dsacp_ws s = dsacp_ws_open(ws, ws_bytes);
    uint32_t *xp = dsacp_ws_take(&s, (size_t)(T * PP) * sizeof(uint32_t));
    float *xf = form == DSACP_BF16GEMM_FMA ? dsacp_ws_take(&s, (size_t)(2 * T * PP) * sizeof(float)) : NULL;
    const int xfloor = pack_tokens(x, T, K, ldx, xp, xf);
    int wfloor;
    memcpy(&wfloor, packed, sizeof wfloor);
    job j = {.packed = (const uint32_t *)((const unsigned char *)packed + HEAD), .xp = xp, .xf = xf, .N = N, .T = T,
             .PP = PP, .Q = PP / LANES, .ldy = ldy, .y = y, .fma = xf && dsacp_bf16dot_plain_ok(wfloor, xfloor)};
    dsacp_parallel_for((N + ROWS - 1) / ROWS, true, row_block, &j);
    return DSACP_OK;
#else
    (void)packed, (void)N, (void)x, (void)ldx, (void)y, (void)ldy;
    return DSACP_EUNSUPPORTED;
#endif
}

int dsacp_bf16gemm(const void *packed, int64_t N, int64_t K, const uint16_t *x, int64_t T, int64_t ldx, float *y,
                   int64_t ldy, void *ws, size_t ws_bytes)
{
    return dsacp_bf16gemm_as(DSACP_BF16GEMM_AUTO, packed, N, K, x, T, ldx, y, ldy, ws, ws_bytes);
}
