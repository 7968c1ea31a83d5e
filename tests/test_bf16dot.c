/*
 * test_bf16dot.c -- the bf16-dot chain (src/kernels/bf16dot.h, docs/numerics.md "The bf16-dot
 * chain"): the scalar model against the VDPBF16PS behaviour measured on an Intel Xeon (crafted
 * cases, bit for bit) and against an independent exact reference (random steps in float128);
 * the AVX2 kernel (plain and emulated) and activation rounding against the model, bitwise, on
 * random and adversarial vectors of 1..67 pairs; the AVX512-BF16 instruction lane by lane and
 * its kernel against the model where the CPU has AVX512-BF16 (a SKIP line elsewhere).
 */
#include "test.h"
#include "core/core.h"
#include "kernels/bf16dot.h"
#include "kernels/kernels.h"
#include "numerics/numerics.h"

#include <stdint.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

static dsacp_rng rng;

static uint32_t rnd32(void) { return (uint32_t)dsacp_rng_u64(&rng); }

/* ---- crafted cases: the instruction's results measured on this project's Xeon ---- */

typedef struct crafted {
    uint32_t acc, a, b, want;
    const char *what;
} crafted;

static const crafted cases[] = {
    {0x00800000u, 0x97800000u, 0x17800000u, 0x00800000u, "2^-126 - 2^-160: not tiny after rounding"},
    {0x00800000u, 0x99f80000u, 0x1a040000u, 0x00000000u, "2^-126 - 2^-150 + 2^-160: IEEE 2^-126, tiny after 24-bit rounding"},
    {0x00800000u, 0x9a000000u, 0x1a000000u, 0x00000000u, "2^-126 - 2^-150 exactly: tiny"},
    {0x00800000u, 0x9a000000u, 0x19800000u, 0x00800000u, "2^-126 - 2^-151: tie to 2^-126"},
    {0x00800000u, 0x000099f8u, 0x00001a04u, 0x00000000u, "the same at the low (second) product"},
    {0x80800000u, 0x19f80000u, 0x1a040000u, 0x00000000u, "negative side, then +0 low product"},
    {0x00C00000u, 0xbf803f80u, 0x00800080u, 0x00800000u, "intermediate 2^-127 flushed before the low product"},
    {0x00000000u, 0x1c800000u, 0x1c800000u, 0x00000000u, "product 2^-140 alone: flushed"},
    {0x00000000u, 0x9c808000u, 0x1c803f80u, 0x80000000u, "negative tiny flushed to -0, + (-0)"},
    {0x00000000u, 0x1f801f80u, 0x20002000u, 0x00000000u, "two 2^-127 products: each flushed"},
    {0x00000000u, 0x20400000u, 0x20000000u, 0x00c00000u, "product 1.5 * 2^-126 kept"},
    {0x3f800000u, 0x39800000u, 0x39800000u, 0x3f800000u, "tie 1 + 2^-24: even"},
    {0x3f800001u, 0x39800000u, 0x39800000u, 0x3f800002u, "tie 1 + 2^-23 + 2^-24: up"},
    {0x3f800000u, 0x39803980u, 0x39803980u, 0x3f800000u, "two ties in turn: each rounded"},
    {0x80000000u, 0x80008000u, 0x3f803f80u, 0x80000000u, "-0 + -0 + -0"},
    {0x80000000u, 0x80000000u, 0x3f803f80u, 0x00000000u, "-0 + -0 + +0"},
    {0x3f800000u, 0xbf800000u, 0x3f803f80u, 0x00000000u, "1 - 1 = +0"},
    {0x00400000u, 0x3f800000u, 0x00800000u, 0x00800000u, "subnormal acc read as 0 (DAZ)"},
    {0x80400000u, 0x00000000u, 0x00000000u, 0x00000000u, "-subnormal acc + 0 + 0"},
    {0x00000000u, 0x00400000u, 0x71800000u, 0x00000000u, "subnormal bf16 a read as 0"},
    {0x00000000u, 0x71800000u, 0x00400000u, 0x00000000u, "subnormal bf16 b read as 0"},
    {0x80000000u, 0x80408000u, 0x3f803f80u, 0x80000000u, "-subnormal read as -0"},
    {0x00000000u, 0x7f800000u, 0x00000000u, 0xffc00000u, "inf * 0: default NaN"},
    {0x00000000u, 0x7f80ff80u, 0x3f803f80u, 0xffc00000u, "inf - inf: default NaN"},
    {0x00000000u, 0x7f7f0000u, 0x7f7f0000u, 0x7f800000u, "overflow: inf"},
    {0x00000000u, 0xff7f0000u, 0x7f7f0000u, 0xff800000u, "overflow: -inf"},
    {0x3f800000u, 0x7f810000u, 0x3f800000u, 0x7fc10000u, "sNaN a quieted"},
    {0x3f800000u, 0x7fc10000u, 0x7fc20000u, 0x7fc10000u, "NaN a before NaN b"},
    {0x3f800000u, 0x7fc17fc3u, 0x3f803f80u, 0x7fc30000u, "the low NaN a before the high step's NaN acc"},
    {0x7fc00005u, 0x7fc10000u, 0x3f800000u, 0x7fc10000u, "NaN a before NaN acc"},
    {0x7f800005u, 0x00000000u, 0x00000000u, 0x7fc00005u, "sNaN acc quieted"},
    {0x00000000u, 0x7fc17f80u, 0x3f800000u, 0x7fc10000u, "NaN acc before inf * 0's default NaN"},
    {0x00000000u, 0x7f807fc1u, 0x00003f80u, 0x7fc10000u, "default NaN acc, then NaN a"},
};

static void test_crafted(void)
{
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const crafted *c = &cases[i];
        const float r = dsacp_bf16dot_model_pair(dsacp_f32_of_bits(c->acc), c->a, c->b);
        CHECKF(dsacp_f32_bits(r) == c->want, "%s: %08x, want %08x", c->what, dsacp_f32_bits(r), c->want);
    }
    /* the lane reduction: IEEE adds, the left NaN first */
    float lanes[16] = {0};
    lanes[0] = 0x1.8p-126f;
    lanes[8] = -0x1p-126f;
    CHECK(dsacp_f32_bits(dsacp_bf16dot_lanes_sum(lanes)) == 0x00400000u); /* a subnormal sum is kept */
    lanes[3] = dsacp_f32_of_bits(0x7fc00003u);
    lanes[2] = dsacp_f32_of_bits(0x7fc00002u);
    CHECK(dsacp_f32_bits(dsacp_bf16dot_lanes_sum(lanes)) == 0x7fc00002u);
    memset(lanes, 0, sizeof lanes);
    lanes[1] = INFINITY;
    lanes[5] = -INFINITY;
    CHECK(dsacp_f32_bits(dsacp_bf16dot_lanes_sum(lanes)) == 0xffc00000u);
}

/* ---- the model against an exact reference (float128) ---- */

/* A bf16 of random sign and mantissa with unbiased exponent in [lo, hi] (subnormal below -126). */
static uint16_t rbf(int lo, int hi)
{
    const int e = lo + (int)(rnd32() % (uint32_t)(hi - lo + 1));
    const uint16_t sign = (uint16_t)((rnd32() & 1u) << 15);
    if (e < -126) return (uint16_t)(sign | (1 + rnd32() % 0x7F));
    return (uint16_t)(sign | (uint16_t)((e + 127) << 7) | (rnd32() & 0x7F));
}

static float daz_ref(float x) { return fpclassify(x) == FP_SUBNORMAL ? copysignf(0.0f, x) : x; }

/* acc + a * b exactly (the operands' exponents within 80 of each other), rounded to 24 bits with
 * an unbounded exponent, zero below 2^-126 in magnitude (finite inputs). */
static float step_ref(float acc, uint16_t a, uint16_t b)
{
    const float x = daz_ref(dsacp_bf16_to_f32(a)), y = daz_ref(dsacp_bf16_to_f32(b)), c = daz_ref(acc);
    const __float128 e = (__float128)c + (__float128)x * (__float128)y;
    if (e == 0) return x * y + c; /* the sign of an exact zero: IEEE's */
    const __float128 scale = 0x1p100, mag = e < 0 ? -e : e;
    if (mag >= 0x1p-100) return (float)e; /* no underflow on the way: IEEE's conversion */
    const float s = (float)(e * scale);   /* normal: |e| >= 2^-270 */
    return fabsf(s) < 0x1p-26f ? copysignf(0.0f, s) : (float)((__float128)s / scale);
}

static void test_model_reference(void)
{
    static const int ranges[][2] = {{-8, 8}, {-70, -50}, {-90, -40}, {-140, -60}, {40, 70}};
    long bad = 0, n = 0;
    for (size_t r = 0; r < sizeof ranges / sizeof ranges[0]; r++)
        for (int it = 0; it < 40000; it++) {
            const int lo = ranges[r][0], hi = ranges[r][1];
            const uint16_t a = rbf(lo, hi), b = rbf(lo, hi);
            const float p = dsacp_f32_of_bits((uint32_t)a << 16) * dsacp_f32_of_bits((uint32_t)b << 16);
            /* acc: random near -p (cancellation), or random of the products' range, or 0 */
            const int k = (int)(rnd32() % 3);
            float acc = k == 0 ? 0.0f : k == 1 ? dsacp_f32_of_bits((uint32_t)rbf(2 * lo, 2 * hi) << 16 | (rnd32() & 0xFFFFu))
                                               : -p * (1.0f + (float)((int)(rnd32() % 64) - 32) * 0x1p-23f);
            if (!isfinite(acc)) acc = 0;
            const float got = dsacp_bf16dot_model_step(acc, a, b), want = step_ref(acc, a, b);
            n++;
            if (dsacp_f32_bits(got) != dsacp_f32_bits(want) && bad++ < 5)
                fprintf(stderr, "step(%08x, %04x, %04x) = %08x, reference %08x\n", dsacp_f32_bits(acc), a, b,
                        dsacp_f32_bits(got), dsacp_f32_bits(want));
        }
    CHECKF(bad == 0, "%ld of %ld model steps differ from the exact reference", bad, n);
}

/* ---- vectors ---- */

enum { CLASSES = 7 };
/* One element of a vector of class k: 0 moderate, 1 wide, 2 tiny and subnormal, 3 with zeros,
 * 4 with inf and NaN, 5 huge, 6 mixed. */
static uint16_t element(int k)
{
    const uint32_t u = rnd32() % 16;
    switch (k) {
    case 0: return rbf(-6, 6);
    case 1: return rbf(-126, 127);
    case 2: return u < 4 ? rbf(-140, -127) : rbf(-75, -55);
    case 3: return u < 6 ? (uint16_t)((rnd32() & 1u) << 15) : rbf(-4, 4);
    case 4: return u == 0 ? (uint16_t)(0x7F80 | (rnd32() & 0x807Fu)) : rbf(-4, 4);
    case 5: return rbf(50, 66);
    default: return element((int)(rnd32() % 6));
    }
}

static void fill(uint16_t *a, uint16_t *b, int64_t n, int k)
{
    for (int64_t i = 0; i < 2 * n; i++) {
        a[i] = element(k);
        b[i] = element(k);
    }
    if (k == 0 && (rnd32() & 1)) /* cancellation: pairs whose two products nearly cancel */
        for (int64_t p = 0; p < n; p++) {
            a[2 * p] = a[2 * p + 1] ^ 0x8000u;
            b[2 * p] = (uint16_t)(b[2 * p + 1] + (rnd32() % 3) - 1);
        }
}

/* Lane 0 reaches 2^-126 + (a product of -2^-150 + 2^-160): IEEE gives 2^-126, the model 0. */
static void fill_edge(uint16_t *a, uint16_t *b, int64_t n)
{
    memset(a, 0, (size_t)(2 * n) * sizeof(uint16_t));
    memset(b, 0, (size_t)(2 * n) * sizeof(uint16_t));
    a[1] = 0x2000; /* 2^-63 * 2^-63 */
    b[1] = 0x2000;
    a[33] = 0x99f8; /* -(1 - 2^-5) 2^-75 */
    b[33] = 0x1a04; /* (1 + 2^-5) 2^-75 */
}

static void test_avx2_vectors(void)
{
#if defined(__x86_64__)
    if (dsacp_isa_best() < DSACP_ISA_AVX2) {
        printf("SKIP: AVX2 kernel (no AVX2 on this CPU)\n");
        return;
    }
    enum { MAXN = 67 };
    uint16_t a[2 * MAXN], b[2 * MAXN];
    long bad = 0, plain = 0, runs = 0;
    for (int it = 0; it < 1000 * CLASSES; it++) {
        const int64_t n = 1 + it % MAXN;
        fill(a, b, n, it % CLASSES);
        const float want = dsacp_bf16dot_scalar(a, b, n);
        const float got = dsacp_bf16dot_avx2(a, b, n, false);
        bad += dsacp_f32_bits(got) != dsacp_f32_bits(want);
        if (dsacp_bf16dot_plain_ok(dsacp_bf16_exp_floor(a, 2 * n), dsacp_bf16_exp_floor(b, 2 * n))) {
            plain++;
            bad += dsacp_f32_bits(dsacp_bf16dot_avx2(a, b, n, true)) != dsacp_f32_bits(want);
        }
        runs++;
        if (bad && bad < 3 && dsacp_f32_bits(got) != dsacp_f32_bits(want))
            fprintf(stderr, "class %d n %lld: avx2 %08x model %08x\n", it % CLASSES, (long long)n, dsacp_f32_bits(got),
                    dsacp_f32_bits(want));
    }
    for (int64_t n = 17; n <= MAXN; n += 25) {
        fill_edge(a, b, n);
        CHECK(dsacp_f32_bits(dsacp_bf16dot_scalar(a, b, n)) == 0);
        CHECK(dsacp_f32_bits(dsacp_bf16dot_avx2(a, b, n, false)) == 0);
        CHECK(!dsacp_bf16dot_plain_ok(dsacp_bf16_exp_floor(a, 2 * n), dsacp_bf16_exp_floor(b, 2 * n)));
    }
    CHECKF(bad == 0, "%ld AVX2 dots of %ld differ from the model", bad, runs);
    CHECKF(plain > 1000, "only %ld vectors took the plain path", plain);
    CHECK(dsacp_f32_bits(dsacp_bf16dot_avx2(a, b, 0, false)) == 0 && dsacp_f32_bits(dsacp_bf16dot_scalar(a, b, 0)) == 0);
    for (int i = DSACP_ISA_SCALAR; i <= (int)dsacp_isa_best(); i++) {
        CHECK(dsacp_f32_bits(dsacp_bf16dot_kernel((dsacp_isa)i)(a, b, 0)) == 0); /* an empty dot is +0 */
        fill(a, b, 41, 6);
        CHECK(dsacp_f32_bits(dsacp_bf16dot_kernel((dsacp_isa)i)(a, b, 41)) == dsacp_f32_bits(dsacp_bf16dot_scalar(a, b, 41)));
    }
    printf("AVX2 kernel: %ld vectors (%ld also plain) checked bitwise against the model\n", runs, plain);
#else
    printf("SKIP: AVX2 kernel (not x86-64)\n");
#endif
}

static void test_round(void)
{
    enum { N = 4099 };
    float *x = malloc(N * sizeof(float));
    uint16_t *r1 = malloc(N * sizeof(uint16_t)), *r2 = malloc(N * sizeof(uint16_t));
    long bad = 0;
    uint64_t u = 0;
    while (u < (1ull << 32)) { /* every 97th bit pattern, and the rounding midpoints beside them */
        int i = 0;
        for (; i < N && u < (1ull << 32); i++, u += 97)
            x[i] = dsacp_f32_of_bits(i & 1 ? (uint32_t)u : ((uint32_t)u & ~0xFFFFu) | 0x8000u);
        int f1 = dsacp_bf16_round_row(x, i, r1);
#if defined(__x86_64__)
        int f2 = dsacp_isa_best() >= DSACP_ISA_AVX2 ? dsacp_bf16_round_row_avx2(x, i, r2) : f1;
        if (dsacp_isa_best() < DSACP_ISA_AVX2) memcpy(r2, r1, (size_t)i * sizeof(uint16_t));
#else
        int f2 = f1;
        memcpy(r2, r1, (size_t)i * sizeof(uint16_t));
#endif
        bad += f1 != f2 || memcmp(r1, r2, (size_t)i * sizeof(uint16_t)) != 0;
        for (int j = 0; j < i; j++) bad += r1[j] != dsacp_f32_to_bf16(x[j]);
    }
    CHECKF(bad == 0, "%ld bf16 roundings differ", bad);
    const uint16_t v[] = {0x8000, 0x0000, 0x3f80, 0x0001, 0x7fc0};
    CHECK(dsacp_bf16_exp_floor(v, 2) == 256 && dsacp_bf16_exp_floor(v, 3) == 127 && dsacp_bf16_exp_floor(v, 4) == 0);
    CHECK(dsacp_bf16_exp_floor(v + 4, 1) == 255 && dsacp_bf16_exp_floor(v, 0) == 256);
    CHECK(!dsacp_bf16dot_plain_ok(255, 0) && dsacp_bf16dot_plain_ok(256, 0) && dsacp_bf16dot_plain_ok(71, 71));
    CHECK(!dsacp_bf16dot_plain_ok(71, 70));
    free(x);
    free(r1);
    free(r2);
}

/* ---- AVX512-BF16 ---- */

#if defined(__x86_64__)
/* The instruction lane by lane against the model; where the start-up check found it equal on
 * every class it must be equal here too (bits, NaN payloads included). */
static void test_instruction_lanes(int level)
{
    long bad = 0, lanes = 0;
    float acc[16], out[16];
    uint32_t a[16], b[16];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) { /* the crafted table is what this Xeon does */
        for (int l = 0; l < 16; l++) acc[l] = dsacp_f32_of_bits(cases[i].acc), a[l] = cases[i].a, b[l] = cases[i].b;
        dsacp_bf16dot_hw_lanes(acc, a, b, out);
        if (level == DSACP_BF16DOT_HW_ALL)
            CHECKF(dsacp_f32_bits(out[0]) == cases[i].want, "instruction: %s: %08x", cases[i].what, dsacp_f32_bits(out[0]));
    }
    for (int it = 0; it < 20000; it++) {
        const int k = it % CLASSES;
        for (int l = 0; l < 16; l++) {
            a[l] = (uint32_t)element(k) << 16 | element(k);
            b[l] = (uint32_t)element(k) << 16 | element(k);
            const uint32_t u = rnd32() % 4;
            acc[l] = u == 0 ? 0.0f : u == 1 ? dsacp_f32_of_bits(rnd32()) : dsacp_bf16_to_f32(element(k));
            if (u == 3) acc[l] = -dsacp_bf16_to_f32((uint16_t)(a[l] >> 16)) * dsacp_bf16_to_f32((uint16_t)(b[l] >> 16));
        }
        dsacp_bf16dot_hw_lanes(acc, a, b, out);
        for (int l = 0; l < 16; l++, lanes++)
            bad += dsacp_f32_bits(out[l]) != dsacp_f32_bits(dsacp_bf16dot_model_pair(acc[l], a[l], b[l]));
    }
    if (level == DSACP_BF16DOT_HW_ALL) CHECKF(bad == 0, "%ld of %ld VDPBF16PS lanes differ from the model", bad, lanes);
    else printf("NOTE: this CPU's VDPBF16PS differs from the model in %ld of %ld lanes (level %d)\n", bad, lanes, level);
    printf("AVX512-BF16 (level %d): %ld instruction lanes checked bitwise against the model\n", level, lanes);
}

static void test_instruction(void)
{
    if (!dsacp_cpu_has_avx512bf16()) {
        printf("SKIP: AVX512-BF16 instruction vs model (this CPU has no AVX512-BF16)\n");
        return;
    }
    const int level = dsacp_bf16dot_hw_level();
    test_instruction_lanes(level);
    enum { MAXN = 67 };
    uint16_t va[2 * MAXN], vb[2 * MAXN];
    long vbad = 0, kbad = 0;
    const dsacp_bf16dot_fn kernel = dsacp_bf16dot_kernel(DSACP_ISA_AVX512);
    for (int it = 0; it < 1000 * CLASSES; it++) {
        int64_t n = 1 + it % MAXN;
        if (it % 100 == 99) {
            n = n < 17 ? 17 : n;
            fill_edge(va, vb, n);
        } else {
            fill(va, vb, n, it % CLASSES);
        }
        const uint32_t want = dsacp_f32_bits(dsacp_bf16dot_scalar(va, vb, n));
        if (level == DSACP_BF16DOT_HW_ALL) vbad += dsacp_f32_bits(dsacp_bf16dot_avx512bf16(va, vb, n)) != want;
        kbad += dsacp_f32_bits(kernel(va, vb, n)) != want;
    }
    CHECKF(vbad == 0, "%ld AVX512-BF16 dots differ from the model", vbad);
    CHECKF(kbad == 0, "%ld dots of the AVX-512 table's kernel differ from the model", kbad);
    printf("AVX512-BF16: %d dots checked bitwise against the model\n", 1000 * CLASSES);
}
#else
static void test_instruction(void) { printf("SKIP: AVX512-BF16 instruction vs model (not x86-64)\n"); }
#endif

int main(void)
{
    dsacp_rng_seed(&rng, 25);
    test_crafted();
    test_model_reference();
    test_round();
    test_avx2_vectors();
    test_instruction();
    return test_finish("test_bf16dot");
}
