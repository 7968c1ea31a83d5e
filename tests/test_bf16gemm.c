/*
 * test_bf16gemm.c -- the batched bf16-dot product (src/kernels/gemm_bf16.c) against the scalar
 * model, bitwise: every y[t][o] equals dsacp_bf16dot_scalar(w_o, x_t) on awkward shapes (row and
 * token tails, odd K, K below and across the 16 lanes) and on random, tiny/subnormal and inf/NaN
 * values, on one thread and split over THREADS (the same bits), in each form (auto, the FMA form
 * on plain operands and its fallback on the others, VDPBF16PS); a short workspace is refused.
 * The whole-matrix product needs a CPU whose VDPBF16PS is the model (exit 77, with the reason,
 * elsewhere). First, on every CPU: dispatch.c's dsacp_bf16dot under each ISA this CPU runs gives
 * the model's bits; and the block API (gemm_bf16.h: BF16 and F8 blocks, the fold of F8 block
 * scales or none, panels of blocks) in every form the CPU runs (FMA, VDPBF16PS, AVX2, scalar),
 * packed under each ISA, gives the model's (dsacp_bf16dot_scalar / dsacp_bf16dot_fold_scalar).
 */
#include "test.h"
#include "core/core.h"
#include "kernels/bf16dot.h"
#include "kernels/gemm_bf16.h"

#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

enum { THREADS = 3 }; /* more threads than cores here, and not a divisor of most block counts */

static dsacp_rng rng;

/* A bf16 of the class: 0 moderate, 1 tiny and subnormal (against moderate), 2 some inf/NaN, 3
 * wide but plain (exponents -60..59 against -52..59: products from 2^-112 up, the least
 * dsacp_bf16dot_plain_ok admits, with cancellation). */
enum { CLASSES = 4 };
static uint16_t element(int k, bool tiny_side)
{
    const uint64_t u = dsacp_rng_u64(&rng);
    int e = k == 1 && tiny_side ? -150 + (int)(u % 40) : -6 + (int)(u % 12);
    if (k == 3) e = tiny_side ? -60 + (int)(u % 120) : -52 + (int)(u % 112);
    const uint16_t sign = (uint16_t)((u >> 20 & 1) << 15), m = (uint16_t)(u >> 24 & 0x7F);
    if (k == 2 && u % 97 == 0) return (uint16_t)(0x7F80 | sign | (u >> 40 & 1 ? m : 0));
    if (e < -126) return (uint16_t)(sign | (m ? m : 1));
    return (uint16_t)(sign | (uint16_t)((e + 127) << 7) | m);
}

/* The product in form `form` (bf16dot.h: AUTO, FMA, DPBF16) on `threads` OpenMP threads. */
static int product(int form, int threads, const void *packed, int64_t N, int64_t K, const uint16_t *x, int64_t T,
                   int64_t ldx, float *y, int64_t ldy, void *ws, size_t wsb)
{
    omp_set_num_threads(threads);
    const int rc = form == DSACP_BF16GEMM_AUTO ? dsacp_bf16gemm(packed, N, K, x, T, ldx, y, ldy, ws, wsb)
                                               : dsacp_bf16gemm_as(form, packed, N, K, x, T, ldx, y, ldy, ws, wsb);
    omp_set_num_threads(1);
    return rc;
}

/* Whether the operands of a shape are plain (dsacp_bf16dot_plain_ok of the two floors): the FMA
 * form runs on them, and falls back to VDPBF16PS on the others. */
static bool plain_operands(const uint16_t *w, int64_t N, int64_t ldw, const uint16_t *x, int64_t T, int64_t ldx,
                           int64_t K)
{
    int fw = 256, fx = 256;
    for (int64_t o = 0; o < N; o++) {
        const int f = dsacp_bf16_exp_floor(w + o * ldw, K);
        fw = f < fw ? f : fw;
    }
    for (int64_t t = 0; t < T; t++) {
        const int f = dsacp_bf16_exp_floor(x + t * ldx, K);
        fx = f < fx ? f : fx;
    }
    return dsacp_bf16dot_plain_ok(fw, fx);
}

static long plain_shapes, other_shapes;

/* One shape in one form: every output against the model (rows padded with a +0 element when K
 * is odd), and the product split over THREADS against the one-thread product. */
static long check_shape(int64_t N, int64_t K, int64_t T, int k, int form)
{
    const int64_t ldw = K + 3, ldx = K + 1, ldy = N + 2, P = (K + 1) / 2;
    uint16_t *w = malloc((size_t)(N * ldw) * sizeof(uint16_t)), *x = malloc((size_t)(T * ldx) * sizeof(uint16_t));
    uint16_t *wr = calloc((size_t)(2 * P), sizeof(uint16_t)), *xr = calloc((size_t)(2 * P), sizeof(uint16_t));
    float *y = malloc((size_t)(T * ldy) * sizeof(float)), *yt = malloc((size_t)(T * ldy) * sizeof(float));
    for (int64_t i = 0; i < N * ldw; i++) w[i] = element(k, true);
    for (int64_t i = 0; i < T * ldx; i++) x[i] = element(k, false);
    void *packed = malloc(dsacp_bf16gemm_pack_bytes(N, K));
    const size_t wsb = dsacp_bf16gemm_ws_bytes(K, T);
    void *ws = malloc(wsb);
    dsacp_bf16gemm_pack(w, N, K, ldw, packed);
    if (form == DSACP_BF16GEMM_FMA) {
        const bool plain = plain_operands(w, N, ldw, x, T, ldx, K);
        CHECKF(plain == (k != 1), "class %d: operands %s plain", k, plain ? "are" : "are not");
        plain ? plain_shapes++ : other_shapes++;
    }
    CHECK(dsacp_bf16gemm_as(form, packed, N, K, x, T, ldx, y, ldy, ws, wsb - 1) == DSACP_EINVAL);
    CHECK_OK(product(form, 1, packed, N, K, x, T, ldx, y, ldy, ws, wsb));
    CHECK_OK(product(form, THREADS, packed, N, K, x, T, ldx, yt, ldy, ws, wsb));
    long bad = 0;
    for (int64_t o = 0; o < N; o++) {
        memcpy(wr, w + o * ldw, (size_t)K * sizeof(uint16_t));
        for (int64_t t = 0; t < T; t++) {
            memcpy(xr, x + t * ldx, (size_t)K * sizeof(uint16_t));
            const float want = dsacp_bf16dot_scalar(wr, xr, P);
            if (dsacp_f32_bits(y[t * ldy + o]) != dsacp_f32_bits(want) && bad++ < 3)
                fprintf(stderr, "form %d N %lld K %lld T %lld class %d: y[%lld][%lld] = %08x, model %08x\n", form,
                        (long long)N, (long long)K, (long long)T, k, (long long)t, (long long)o,
                        dsacp_f32_bits(y[t * ldy + o]), dsacp_f32_bits(want));
            if (dsacp_f32_bits(yt[t * ldy + o]) != dsacp_f32_bits(y[t * ldy + o]) && bad++ < 3)
                fprintf(stderr,
                        "form %d N %lld K %lld T %lld class %d: y[%lld][%lld] = %08x on %d threads, %08x on 1\n", form,
                        (long long)N, (long long)K, (long long)T, k, (long long)t, (long long)o,
                        dsacp_f32_bits(yt[t * ldy + o]), THREADS, dsacp_f32_bits(y[t * ldy + o]));
        }
    }
    free(w), free(x), free(wr), free(xr), free(y), free(yt), free(packed), free(ws);
    return bad;
}

/* dsacp_bf16dot through each ISA this CPU runs, against the model, on every value class and
 * lengths across the 16 lanes. */
static void check_hook(void)
{
    enum { MAXP = 70 };
    uint16_t a[2 * MAXP], b[2 * MAXP];
    const dsacp_isa was = dsacp_isa_active();
    long bad = 0, dots = 0;
    for (int isa = DSACP_ISA_SCALAR; isa <= (int)dsacp_isa_best(); isa++) {
        CHECK_OK(dsacp_isa_set((dsacp_isa)isa));
        for (int k = 0; k < CLASSES; k++)
            for (int64_t n = 0; n <= MAXP; n += 1 + n / 8, dots++) {
                for (int64_t i = 0; i < 2 * n; i++) a[i] = element(k, true), b[i] = element(k, false);
                if (dsacp_f32_bits(dsacp_bf16dot(a, b, n)) != dsacp_f32_bits(dsacp_bf16dot_scalar(a, b, n)) &&
                    bad++ < 3)
                    fprintf(stderr, "dsacp_bf16dot on %s: n %lld class %d differs from the model\n",
                            dsacp_isa_name((dsacp_isa)isa), (long long)n, k);
            }
    }
    CHECK_OK(dsacp_isa_set(was));
    CHECKF(bad == 0, "%ld of %ld dsacp_bf16dot calls differ from the model", bad, dots);
}

/* ---- the block API (gemm_bf16.h) ---- */

/* An e4m3 byte of class k: 2 any (NaN 0x7F / 0xFF among them), else any but NaN. */
static uint8_t e4m3_byte(int k)
{
    for (;;) {
        const uint8_t u = (uint8_t)(dsacp_rng_u64(&rng) >> 33);
        if (k == 2 || (u & 0x7F) != 0x7F) return u;
    }
}

/* A block scale: a random f32 of either sign in [2^-20, 2^20); class 2 also inf, 0 and NaN. */
static float block_scale(int k)
{
    const uint64_t u = dsacp_rng_u64(&rng);
    if (k == 2 && u % 7 == 0) return (float[]){INFINITY, 0.0f, NAN, -0.0f}[u >> 8 & 3];
    const float m = 1.0f + (float)(u >> 40 & 0xFFFF) / 65536.0f;
    return ldexpf(u >> 60 & 1 ? -m : m, (int)(u >> 32 & 63) % 40 - 20);
}

typedef struct block_case {
    int64_t N, o0, K, T, bp; /* bp 0: no fold */
    int k;
    bool f8;
    dsacp_isa isa; /* the packing's code */
} block_case;

static long block_outputs, block_runs[5];

/* The forms this CPU runs on operands of floors fw, fx. */
static bool form_runs(int form, int fw, int fx)
{
    const bool plain = dsacp_bf16dot_plain_ok(fw, fx);
    const int hw = dsacp_bf16dot_hw_level();
    switch (form) {
    case DSACP_BF16GEMM_SCALAR: return true;
    case DSACP_BF16GEMM_AVX2: return plain && dsacp_isa_best() >= DSACP_ISA_AVX2;
    case DSACP_BF16GEMM_FMA: return plain && dsacp_isa_best() >= DSACP_ISA_AVX512;
    default: return hw == DSACP_BF16DOT_HW_ALL || (hw == DSACP_BF16DOT_HW_PLAIN && plain);
    }
}

/* The model's output of weight row wr and token xr (P pairs), with the fold when bp > 0. */
static float model_out(const uint16_t *wr, const uint16_t *xr, int64_t P, int64_t bp, const float *scales)
{
    return bp ? dsacp_bf16dot_fold_scalar(wr, xr, P, bp, scales) : dsacp_bf16dot_scalar(wr, xr, P);
}

/* Outputs y (rows x T, ldy) of one form against the model (block b of the rows folding with
 * sc[b]) and, for the first block, y1 against y. */
static long compare_outputs(const block_case *c, int form, const uint16_t *wb, const uint16_t *x, const float *const *sc,
                            const float *y, const float *y1, int64_t ldy)
{
    const int64_t K = c->K, T = c->T, P = (K + 1) / 2, rows = c->N - c->o0;
    uint16_t *wr = calloc((size_t)(2 * P), sizeof *wr), *xr = calloc((size_t)(2 * P), sizeof *xr);
    long bad = 0;
    for (int64_t r = 0; r < rows; r++) {
        memcpy(wr, wb + (c->o0 + r) * K, (size_t)K * sizeof *wr);
        for (int64_t t = 0; t < T; t++, block_outputs++) {
            memcpy(xr, x + t * (K + 1), (size_t)K * sizeof *xr);
            const float want = model_out(wr, xr, P, c->bp, sc[r / 32]);
            const uint32_t got = dsacp_f32_bits(y[t * ldy + r]);
            if ((got != dsacp_f32_bits(want) || (r < 32 && dsacp_f32_bits(y1[t * ldy + r]) != got)) && bad++ < 3)
                fprintf(stderr, "block form %d %s N %lld o0 %lld K %lld T %lld bp %lld class %d: y[%lld][%lld] = %08x "
                        "(block call %08x), model %08x\n", form, c->f8 ? "f8" : "bf16", (long long)c->N,
                        (long long)c->o0, (long long)K, (long long)T, (long long)c->bp, c->k, (long long)t,
                        (long long)r, got, r < 32 ? dsacp_f32_bits(y1[t * ldy + r]) : 0, dsacp_f32_bits(want));
        }
    }
    free(wr), free(xr);
    return bad;
}

/* Rows [o0, N) of an N-row weight (BF16 or F8), packed block by block (each block's floor
 * checked), against T tokens in every form this CPU runs: the panel of all the blocks (each its
 * own fold scales) and the block call of the first, every output against the model. */
static long check_block(const block_case *c)
{
    const int64_t N = c->N, K = c->K, T = c->T, P = (K + 1) / 2, ldx = K + 1, rows = N - c->o0, ldy = rows + 3;
    const int nblk = (int)((rows + 31) / 32);
    const int64_t nscale = (P + 15) / 16 * 16 / (c->bp ? c->bp : 1) + 1;
    const size_t bb = dsacp_bf16gemm_block_bytes(K);
    uint16_t *wb = calloc((size_t)(N * K), sizeof *wb), *x = malloc((size_t)(T * ldx) * sizeof *x);
    uint8_t *w8 = malloc((size_t)(N * K));
    float *scales = malloc((size_t)(nblk * nscale) * sizeof *scales), *y = malloc((size_t)(T * ldy) * sizeof *y);
    float *y1 = malloc((size_t)(T * ldy) * sizeof *y1);
    const float **sc = malloc((size_t)nblk * sizeof *sc);
    unsigned char *blk = malloc((size_t)nblk * bb);
    void *tok = malloc(dsacp_bf16gemm_tokens_bytes(K, T));
    for (int64_t i = 0; i < N * K; i++) {
        w8[i] = e4m3_byte(c->k);
        wb[i] = c->f8 ? dsacp_e4m3_to_bf16(w8[i]) : element(c->k, true);
    }
    for (int64_t i = 0; i < T * ldx; i++) x[i] = element(c->k, c->f8);
    for (int64_t j = 0; j < nblk * nscale; j++) scales[j] = block_scale(c->k);
    const dsacp_weight w = {.name = "w", .dtype = c->f8 ? DSACP_F8_E4M3 : DSACP_BF16, .ndim = 2, .rows = N, .cols = K,
                            .data = c->f8 ? (const void *)w8 : (const void *)wb};
    int fw = 256, want_fx = 256;
    for (int b = 0; b < nblk; b++) {
        const int64_t o = c->o0 + 32 * b, n = N - o < 32 ? N - o : 32;
        const int f = c->isa == dsacp_isa_best() ? dsacp_bf16gemm_pack_block(&w, o, blk + b * bb)
                                                   : dsacp_bf16gemm_pack_block_as(c->isa, &w, o, blk + b * bb);
        CHECK(f == dsacp_bf16_exp_floor(wb + o * K, n * K));
        fw = f < fw ? f : fw;
        sc[b] = scales + b * nscale;
    }
    const int fx = dsacp_bf16gemm_pack_tokens(x, T, K, ldx, tok);
    for (int64_t t = 0; t < T; t++) {
        const int f = dsacp_bf16_exp_floor(x + t * ldx, K);
        want_fx = f < want_fx ? f : want_fx;
    }
    CHECK(fx == want_fx);
    long bad = 0;
    for (int form = DSACP_BF16GEMM_FMA; form <= DSACP_BF16GEMM_SCALAR; form++) {
        if (!form_runs(form, fw, fx)) continue;
        block_runs[form]++;
        dsacp_bf16gemm_panel(form, blk, nblk, rows, K, tok, T, c->bp ? sc : NULL, c->bp, y, ldy);
        dsacp_bf16gemm_block(form, blk, rows < 32 ? rows : 32, K, tok, T, c->bp ? sc[0] : NULL, c->bp, y1, ldy);
        bad += compare_outputs(c, form, wb, x, sc, y, y1, ldy);
    }
    free(wb), free(x), free(w8), free(scales), free(y), free(y1), free(sc), free(blk), free(tok);
    return bad;
}

/* The block and panel API, packed under each ISA this CPU runs, on awkward shapes (a partial
 * last block, panels of 1 to 4 blocks, odd K, K < 32, K not a multiple of the fold's column
 * block, token counts across the groups of 12), every value class, BF16 and F8 weights, no fold
 * and the fold of 32- and 128-column blocks. */
static void check_blocks(void)
{
    static const int64_t shapes[][4] = {{32, 0, 1, 1},   {32, 0, 7, 5},    {45, 32, 31, 13}, {70, 0, 32, 12},
                                        {64, 32, 33, 2}, {40, 0, 130, 25}, {33, 0, 257, 7},  {96, 0, 300, 11},
                                        {50, 32, 1030, 3}, {100, 0, 64, 24}};
    static const int64_t bps[] = {0, 16, 64};
    long bad = 0;
    for (int isa = DSACP_ISA_SCALAR; isa <= (int)dsacp_isa_best(); isa++) /* the packing's code */
        for (int k = 0; k < CLASSES; k++)
            for (int f8 = 0; f8 < 2; f8++)
                for (int b = 0; b < 3; b++)
                    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
                        const block_case c = {shapes[s][0], shapes[s][1], shapes[s][2], shapes[s][3], bps[b], k, f8,
                                              (dsacp_isa)isa};
                        bad += check_block(&c);
                    }
    CHECKF(bad == 0, "%ld of %ld block outputs differ from the model", bad, block_outputs);
    CHECK(block_runs[DSACP_BF16GEMM_SCALAR] > 0);
    if (dsacp_isa_best() >= DSACP_ISA_AVX2) CHECK(block_runs[DSACP_BF16GEMM_AVX2] > 0);
    printf("bf16 block API: %ld outputs bitwise the model; runs of forms fma %ld, dpbf16 %ld, avx2 %ld, scalar %ld\n",
           block_outputs, block_runs[DSACP_BF16GEMM_FMA], block_runs[DSACP_BF16GEMM_DPBF16],
           block_runs[DSACP_BF16GEMM_AVX2], block_runs[DSACP_BF16GEMM_SCALAR]);
}

int main(void)
{
    dsacp_rng_seed(&rng, 2024);
    check_hook();
    check_blocks();
    if (dsacp_bf16dot_hw_level() != DSACP_BF16DOT_HW_ALL) {
        if (test_failures_) return test_finish("test_bf16gemm");
        printf("SKIP: this CPU's VDPBF16PS is not the model (or it has none): the bf16 GEMM does not run here\n");
        return 77;
    }
    dsacp_rng_seed(&rng, 2025);
    static const int64_t shapes[][3] = {{1, 1, 1},   {17, 2, 3},   {32, 31, 6},  {33, 32, 7},  {45, 33, 13},
                                        {64, 64, 1}, {70, 200, 5}, {31, 257, 12}, {96, 513, 8}, {5, 1030, 2},
                                        {257, 130, 9}, {200, 96, 17}};
    static const int forms[] = {DSACP_BF16GEMM_AUTO, DSACP_BF16GEMM_FMA, DSACP_BF16GEMM_DPBF16};
    long bad = 0, outputs = 0;
    for (int f = 0; f < 3; f++)
        for (int k = 0; k < CLASSES; k++)
            for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
                bad += check_shape(shapes[s][0], shapes[s][1], shapes[s][2], k, forms[f]);
                outputs += shapes[s][0] * shapes[s][2];
            }
    CHECKF(bad == 0, "%ld of %ld bf16 GEMM outputs differ from the model or across thread counts", bad, outputs);
    CHECK(plain_shapes > 0 && other_shapes > 0);
    CHECK(dsacp_bf16gemm_form() == DSACP_BF16GEMM_FMA || dsacp_bf16gemm_form() == DSACP_BF16GEMM_DPBF16);
    printf("bf16 GEMM: %ld outputs checked bitwise against the model, on 1 and %d threads, forms auto (%s), fma "
           "(%ld shapes plain, %ld falling back), dpbf16\n",
           outputs, THREADS, dsacp_bf16gemm_form() == DSACP_BF16GEMM_FMA ? "fma" : "dpbf16", plain_shapes,
           other_shapes);
    return test_finish("test_bf16gemm");
}
