/*
 * gemm_bf16.c -- the batched bf16-dot product (gemm_bf16.h; docs/numerics.md "The bf16-dot
 * chain"): the packing of weight blocks and tokens, the block driver and the whole-matrix API.
 * y[t][o] is the model's dot of weight row o and token t, with the fold of F8 block scales where
 * the caller passes them. Model lane l of every output is a GEMM of its own over the pairs
 * p = l (mod 16): a block of 32 rows is packed per lane, [l][q][32] dwords (p = l + 16 q); the
 * tokens once per call in groups of 12, as pairs ([l][q][t]: VDPBF16PS and the model) and as
 * their f32 split ([l][q][t][high, low]: the FMA forms), each read in order by the tiles; the register tiles (gemm_bf16_x86.c) run one lane's
 * chains of a group, then the 16 lanes of each output are summed in the model's tree, and a NaN
 * output is redone by the model (its payload is the model's, not the SIMD order's). A panel of
 * blocks runs each group of tokens against all its blocks in turn (the group stays in L2). The
 * whole-matrix API splits panels over the threads (dsacp_parallel_for), each output computed
 * whole by one thread: the same bits for every thread count. Calls gemm_bf16_x86.c,
 * bf16dot_check.c (whether the instruction is the model), bf16dot.c, bf16dot_x86.c (the AVX2
 * floor) and kernels_threads.c; never dispatch.c (it calls this file through linear_bf16.c).
 */
#include "kernels/gemm_bf16.h"
#include "kernels/kernels_isa.h"

#include <assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* HEAD: the header of the whole-matrix packed weights (their exponent floor) and of the packed
 * tokens (their floor, T, K), 64 bytes so what follows keeps the buffer's alignment. */
enum { ROWS = DSACP_BF16GEMM_ROWS, GROUP = DSACP_BF16GEMM_GROUP, LANES = 16, HEAD = 64 };
/* The weights of a panel: with a group of tokens (12 x K x 4 bytes) they stay in a 2 MB L2. */
enum { PANEL_BYTES = 1 << 20 };

typedef struct tokens_head {
    int floor;
    int64_t T, K;
} tokens_head;

/* Pairs of a row of K elements, and their count padded to the 16 lanes. */
static int64_t pairs_of(int64_t K) { return (K + 1) / 2; }
static int64_t padded_pairs(int64_t K) { return (pairs_of(K) + LANES - 1) / LANES * LANES; }

/* ---- packing ---- */

size_t dsacp_bf16gemm_block_bytes(int64_t K) { return dsacp_ws_mul((size_t)padded_pairs(K), ROWS * sizeof(uint32_t)); }

typedef dsacp_bf16gemm_rows rows_src;

static uint16_t elem(const rows_src *s, int64_t r, int64_t k)
{
    if (r >= s->n || k >= s->K) return 0;
    return s->b16 ? s->b16[r * s->ld + k] : dsacp_e4m3_to_bf16(s->f8[r * s->ld + k]);
}

/* Whether this CPU runs the AVX512BW packing (the OS's zmm state included). */
static bool cpu_avx512bw(void)
{
#if defined(__x86_64__)
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl");
#else
    return false;
#endif
}

/* The block [l][q][32] of s's rows by the code of isa; returns their exponent floor. */
static int pack_rows(dsacp_isa isa, const rows_src *s, uint32_t *out)
{
#if defined(__x86_64__)
    if (isa == DSACP_ISA_AVX512 && cpu_avx512bw()) return dsacp_bf16gemm_pack_rows_avx512(s, out);
#endif
    (void)isa;
    const int64_t Q = padded_pairs(s->K) / LANES;
    int floor = 256;
    for (int64_t l = 0; l < LANES; l++)
        for (int64_t q = 0; q < Q; q++, out += ROWS) {
            const int64_t p = l + LANES * q;
            for (int64_t r = 0; r < ROWS; r++) {
                const uint16_t e[2] = {elem(s, r, 2 * p), elem(s, r, 2 * p + 1)};
                out[r] = (uint32_t)e[0] | (uint32_t)e[1] << 16;
                const int f = dsacp_bf16_exp_floor(e, 2);
                floor = f < floor ? f : floor;
            }
        }
    return floor;
}

int dsacp_bf16gemm_pack_block(const dsacp_weight *w, int64_t o0, void *blk)
{
    return dsacp_bf16gemm_pack_block_as(cpu_avx512bw() ? DSACP_ISA_AVX512 : DSACP_ISA_SCALAR, w, o0, blk);
}

int dsacp_bf16gemm_pack_block_as(dsacp_isa isa, const dsacp_weight *w, int64_t o0, void *blk)
{
    rows_src s = {.n = w->rows - o0 < ROWS ? w->rows - o0 : ROWS, .K = w->cols, .ld = w->cols};
    if (s.n < 0) s.n = 0;
    if (w->dtype == DSACP_BF16) s.b16 = (const uint16_t *)w->data + o0 * w->cols;
    else s.f8 = (const uint8_t *)w->data + o0 * w->cols;
    return pack_rows(isa, &s, blk);
}

size_t dsacp_bf16gemm_tokens_bytes(int64_t K, int64_t T)
{
    const size_t pairs = dsacp_ws_mul(dsacp_ws_mul((size_t)T, (size_t)padded_pairs(K)), sizeof(uint32_t));
    return dsacp_ws_add(dsacp_ws_add(HEAD, dsacp_ws_round(pairs)), dsacp_ws_mul(pairs, 2));
}

/* The parts of a packed tokens buffer. */
static const uint32_t *tokens_pairs(const void *tok) { return (const uint32_t *)((const unsigned char *)tok + HEAD); }
static const float *tokens_split(const void *tok, int64_t T, int64_t PP)
{
    return (const float *)((const unsigned char *)tok + HEAD + dsacp_ws_round((size_t)(T * PP) * sizeof(uint32_t)));
}

/* One call of pack_tokens, shared by the threads that pack its groups. */
typedef struct tokens_job {
    const uint16_t *xb;
    int64_t T, K, ldx, PP;
    uint32_t *xp;
    float *xs;
    int floor; /* the least floor so far, updated atomically */
} tokens_job;

/* Pair p of a row of K bf16 (element K of an odd row and pairs past the row: +0). */
static uint32_t pair_of(const uint16_t *x, int64_t K, int64_t p)
{
    if (2 * p + 1 < K) {
        uint32_t v;
        memcpy(&v, x + 2 * p, sizeof v); /* little-endian: element 2p low */
        return v;
    }
    return 2 * p < K ? x[2 * p] : 0;
}

/* Group g (tokens [12 g, 12 g + nb)) in the order the tiles read it: the pairs [l][q][t] and
 * their f32 split [l][q][t][high, low]. */
static void pack_group(void *ctx, int64_t g)
{
    tokens_job *j = ctx;
    const int64_t PP = j->PP, Q = PP / LANES, t0 = g * GROUP, nb = j->T - t0 < GROUP ? j->T - t0 : GROUP;
    int floor = 256;
    for (int64_t t = t0; t < t0 + nb; t++) {
        const uint16_t *x = j->xb + t * j->ldx;
#if defined(__x86_64__)
        const int f = __builtin_cpu_supports("avx2") ? dsacp_bf16_exp_floor_avx2(x, j->K) : dsacp_bf16_exp_floor(x, j->K);
#else
        const int f = dsacp_bf16_exp_floor(x, j->K);
#endif
        floor = f < floor ? f : floor;
    }
    uint32_t *pairs = j->xp + t0 * PP;
    float *out = j->xs + 2 * t0 * PP;
    for (int64_t l = 0; l < LANES; l++)
        for (int64_t q = 0; q < Q; q++)
            for (int64_t t = t0; t < t0 + nb; t++, out += 2) {
                const uint32_t pr = pair_of(j->xb + t * j->ldx, j->K, l + LANES * q);
                *pairs++ = pr;
                out[0] = dsacp_f32_of_bits(pr & 0xFFFF0000u), out[1] = dsacp_f32_of_bits(pr << 16);
            }
    int seen = __atomic_load_n(&j->floor, __ATOMIC_RELAXED);
    while (floor < seen && !__atomic_compare_exchange_n(&j->floor, &seen, floor, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
}

int dsacp_bf16gemm_pack_tokens(const uint16_t *xb, int64_t T, int64_t K, int64_t ldx, void *tok)
{
    const int64_t PP = padded_pairs(K);
    tokens_job j = {.xb = xb, .T = T, .K = K, .ldx = ldx, .PP = PP, .xp = (uint32_t *)tokens_pairs(tok),
                    .xs = (float *)tokens_split(tok, T, PP), .floor = 256};
    dsacp_parallel_for((T + GROUP - 1) / GROUP, T * K >= (1 << 16), pack_group, &j);
    const tokens_head h = {.floor = j.floor, .T = T, .K = K};
    memset(tok, 0, HEAD);
    memcpy(tok, &h, sizeof h);
    return h.floor;
}

/* ---- the block product ---- */

/* The model's dot of row r of block wb and token t of a group of nb (pairs xg, [l][q][nb]); with
 * scales, the fold (bq steps per column block). */
static float block_model(const uint32_t *wb, int64_t Q, const uint32_t *xg, int64_t nb, int64_t t, int64_t r,
                         const float *scales, int64_t bq)
{
    float tot[LANES];
    for (int64_t l = 0; l < LANES; l++) {
        float b = 0.0f, sum = 0.0f;
        for (int64_t q = 0; q < Q; q++) {
            b = dsacp_bf16dot_model_pair(b, wb[(l * Q + q) * ROWS + r], xg[(l * Q + q) * nb + t]);
            if (scales && ((q + 1) % bq == 0 || q + 1 == Q)) sum = fmaf(b, scales[q / bq], sum), b = 0.0f;
        }
        tot[l] = scales ? sum : b;
    }
    return dsacp_bf16dot_lanes_sum(tot);
}

/* The scalar form: every output by the model. */
static void block_scalar(const uint32_t *wb, int64_t rows, int64_t Q, const uint32_t *xp, int64_t T, int64_t PP,
                         const float *scales, int64_t bq, float *y, int64_t ldy)
{
    for (int64_t t = 0; t < T; t++) {
        const int64_t t0 = t / GROUP * GROUP, nb = T - t0 < GROUP ? T - t0 : GROUP;
        for (int64_t r = 0; r < rows; r++)
            y[t * ldy + r] = block_model(wb, Q, xp + t0 * PP, nb, t - t0, r, scales, bq);
    }
}

#if defined(__x86_64__)
/* One group's outputs for the rows of block wb from its tile: the tree, a NaN redone by the
 * model. */
static void group_out(const dsacp_bf16gemm_group *g, const float *tile, void (*tree)(const float *, int, float *),
                      int64_t rows, float *y, int64_t ldy)
{
    for (int t = 0; t < g->nb; t++) {
        float out[ROWS];
        tree(tile, t, out);
        float *yt = y + t * ldy;
        for (int64_t r = 0; r < rows; r++)
            yt[r] = out[r] == out[r] ? out[r] : block_model(g->blk, g->Q, g->xp, g->nb, t, r, g->scales, g->bq);
    }
}
#endif

void dsacp_bf16gemm_panel(int form, const void *blk, int nblk, int64_t rows, int64_t K, const void *tok, int64_t T,
                          const float *const *scales, int64_t bp, float *y, int64_t ldy)
{
    tokens_head h;
    memcpy(&h, tok, sizeof h);
    assert(h.T == T && h.K == K && nblk >= 1 && rows > (int64_t)ROWS * (nblk - 1) && rows <= (int64_t)ROWS * nblk &&
           (!scales || (bp > 0 && bp % LANES == 0)));
    const int64_t PP = padded_pairs(K), Q = PP / LANES, bq = scales ? bp / LANES : 0;
    const size_t bw = (size_t)(Q * LANES * ROWS); /* a block's dwords */
    const uint32_t *wb = blk, *xp = tokens_pairs(tok);
#if defined(__x86_64__)
    void (*group)(const dsacp_bf16gemm_group *, float *) =
        form == DSACP_BF16GEMM_FMA ? dsacp_bf16gemm_group_fma
        : form == DSACP_BF16GEMM_DPBF16 ? dsacp_bf16gemm_group_dp
        : form == DSACP_BF16GEMM_AVX2 ? dsacp_bf16gemm_group_avx2
                                      : NULL;
    if (group) {
        void (*tree)(const float *, int, float *) =
            form == DSACP_BF16GEMM_AVX2 ? dsacp_bf16gemm_tree_ymm : dsacp_bf16gemm_tree_zmm;
        const float *xs = tokens_split(tok, T, PP);
        _Alignas(64) float tile[LANES * GROUP * ROWS];
        for (int64_t t0 = 0; t0 < T; t0 += GROUP)
            for (int b = 0; b < nblk; b++) {
                const dsacp_bf16gemm_group g = {.blk = wb + b * bw, .xp = xp + t0 * PP, .xs = xs + 2 * t0 * PP,
                                                .scales = scales ? scales[b] : NULL, .Q = Q, .bq = bq,
                                                .nb = (int)(T - t0 < GROUP ? T - t0 : GROUP)};
                group(&g, tile);
                const int64_t r0 = (int64_t)ROWS * b;
                group_out(&g, tile, tree, rows - r0 < ROWS ? rows - r0 : ROWS, y + t0 * ldy + r0, ldy);
            }
        return;
    }
#endif
    (void)form;
    for (int b = 0; b < nblk; b++) {
        const int64_t r0 = (int64_t)ROWS * b;
        block_scalar(wb + b * bw, rows - r0 < ROWS ? rows - r0 : ROWS, Q, xp, T, PP, scales ? scales[b] : NULL, bq,
                     y + r0, ldy);
    }
}

void dsacp_bf16gemm_block(int form, const void *blk, int64_t rows, int64_t K, const void *tok, int64_t T,
                          const float *scales, int64_t bp, float *y, int64_t ldy)
{
    if (rows <= 0) return;
    dsacp_bf16gemm_panel(form, blk, 1, rows, K, tok, T, scales ? &scales : NULL, bp, y, ldy);
}

/* ---- the whole-matrix API (bf16dot.h): a header, then the blocks ---- */

size_t dsacp_bf16gemm_pack_bytes(int64_t N, int64_t K)
{
    const size_t blocks = (size_t)((N + ROWS - 1) / ROWS);
    return dsacp_ws_add(dsacp_ws_mul(blocks, dsacp_bf16gemm_block_bytes(K)), HEAD);
}

void dsacp_bf16gemm_pack(const uint16_t *w, int64_t N, int64_t K, int64_t ldw, void *packed)
{
    const size_t bb = dsacp_bf16gemm_block_bytes(K);
    int floor = 256;
    for (int64_t o0 = 0; o0 < N; o0 += ROWS) {
        const rows_src s = {.b16 = w + o0 * ldw, .n = N - o0 < ROWS ? N - o0 : ROWS, .K = K, .ld = ldw};
        const int f = pack_rows(cpu_avx512bw() ? DSACP_ISA_AVX512 : DSACP_ISA_SCALAR, &s,
                                (uint32_t *)((unsigned char *)packed + HEAD + (size_t)(o0 / ROWS) * bb));
        floor = f < floor ? f : floor;
    }
    memset(packed, 0, HEAD);
    memcpy(packed, &floor, sizeof floor);
}

int dsacp_bf16gemm_panel_blocks(int64_t K)
{
    const size_t b = dsacp_bf16gemm_block_bytes(K), fit = (size_t)PANEL_BYTES / (b ? b : 1);
    return fit < 1 ? 1 : fit > 8 ? 8 : (int)fit;
}

size_t dsacp_bf16gemm_ws_bytes(int64_t K, int64_t T)
{
    return dsacp_ws_add(dsacp_bf16gemm_tokens_bytes(K, T), DSACP_WS_ALIGN);
}

/* One call's operands, shared by the threads. */
typedef struct job {
    const unsigned char *blocks;
    const void *tok;
    size_t block_bytes;
    int64_t N, K, T, ldy, panel; /* panel: blocks per unit */
    float *y;
    int form;
} job;

/* Panel p: blocks [p panel, p panel + panel) for every token (one thread's unit of the split). */
static void row_panel(void *ctx, int64_t p)
{
    const job *j = ctx;
    const int64_t o0 = p * j->panel * ROWS, rows = j->N - o0 < j->panel * ROWS ? j->N - o0 : j->panel * ROWS;
    dsacp_bf16gemm_panel(j->form, j->blocks + (size_t)(p * j->panel) * j->block_bytes, (int)((rows + ROWS - 1) / ROWS),
                         rows, j->K, j->tok, j->T, NULL, 0, j->y + o0, j->ldy);
}

#if defined(__x86_64__)
/* Seconds of `reps` groups of each form over Q = 64 steps of zeros (the forms' throughput, what
 * the choice needs), the best of three interleaved rounds. */
static void time_forms(double *dp, double *fma)
{
    enum { Q = 64, REPS = 100 };
    static const uint32_t w[LANES * Q * ROWS], xp[LANES * Q * GROUP];
    static const float xs[2 * LANES * Q * GROUP];
    float tile[LANES * GROUP * ROWS];
    const dsacp_bf16gemm_group g = {.blk = w, .xp = xp, .xs = xs, .Q = Q, .nb = GROUP};
    *dp = *fma = 1e30;
    for (int round = 0; round < 3; round++) {
        const double t0 = dsacp_now();
        for (int i = 0; i < REPS; i++) dsacp_bf16gemm_group_dp(&g, tile);
        const double t1 = dsacp_now();
        for (int i = 0; i < REPS; i++) dsacp_bf16gemm_group_fma(&g, tile);
        const double t2 = dsacp_now();
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
    if (form == DSACP_BF16GEMM_AUTO) form = auto_form();
    dsacp_ws s = dsacp_ws_open(ws, ws_bytes);
    void *tok = dsacp_ws_take(&s, dsacp_bf16gemm_tokens_bytes(K, T));
    const int xfloor = dsacp_bf16gemm_pack_tokens(x, T, K, ldx, tok);
    int wfloor;
    memcpy(&wfloor, packed, sizeof wfloor);
    if (form == DSACP_BF16GEMM_FMA && !dsacp_bf16dot_plain_ok(wfloor, xfloor)) form = DSACP_BF16GEMM_DPBF16;
    job j = {.blocks = (const unsigned char *)packed + HEAD, .tok = tok, .block_bytes = dsacp_bf16gemm_block_bytes(K),
             .N = N, .K = K, .T = T, .ldy = ldy, .y = y, .form = form};
    j.panel = dsacp_bf16gemm_panel_blocks(K);
    const int64_t blocks = (N + ROWS - 1) / ROWS;
    dsacp_parallel_for((blocks + j.panel - 1) / j.panel, true, row_panel, &j);
    return DSACP_OK;
}

int dsacp_bf16gemm(const void *packed, int64_t N, int64_t K, const uint16_t *x, int64_t T, int64_t ldx, float *y,
                   int64_t ldy, void *ws, size_t ws_bytes)
{
    return dsacp_bf16gemm_as(DSACP_BF16GEMM_AUTO, packed, N, K, x, T, ldx, y, ldy, ws, ws_bytes);
}
