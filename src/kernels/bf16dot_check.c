/*
 * bf16dot_check.c -- whether this CPU's VDPBF16PS is the model (bf16dot.h): a start-up check run
 * once, on the first question, that puts fixed inputs through the instruction and the model and
 * compares them lane by lane. Two classes: plain inputs (normal values whose sums never come
 * near 2^-126: order of the products, one rounding each, ties, overflow, zeros, inf) and the
 * rest (subnormal inputs, tiny products and sums: DAZ, FTZ and its tininess rule). NaN results
 * compare as NaN only (the kernels recompute a NaN dot with the model). Calls bf16dot.c.
 */
#include "kernels/bf16dot.h"

#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>

bool dsacp_cpu_has_avx512bf16(void)
{
    unsigned a = 0, b = 0, c = 0, d = 0;
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512f")) return false; /* AVX-512 usable, the OS's zmm state included */
    return __get_cpuid_count(7, 1, &a, &b, &c, &d) && (a & (1u << 5));
}

__attribute__((target("avx512f,avx512bf16"))) void dsacp_bf16dot_hw_lanes(const float acc[16], const uint32_t a[16],
                                                                          const uint32_t b[16], float out[16])
{
    const __m512bh x = (__m512bh)_mm512_loadu_si512(a), y = (__m512bh)_mm512_loadu_si512(b);
    _mm512_storeu_ps(out, _mm512_dpbf16_ps(_mm512_loadu_ps(acc), x, y));
}

/* Crafted lanes (acc bits, a pair, b pair): PLAIN_CRAFTED plain ones, then the subnormal range. */
enum { PLAIN_CRAFTED = 10 };
static const uint32_t crafted[][3] = {
    {0x3f800000u, 0x39800000u, 0x39800000u}, {0x3f800001u, 0x39800000u, 0x39800000u}, /* ties */
    {0x3f800000u, 0x39803980u, 0x39803980u}, {0x3f800000u, 0x3f813b80u, 0x3f81bb80u}, /* two ties; order */
    {0x4b800000u, 0x3f80bf80u, 0x3f803f81u}, {0x00000000u, 0x7f7f0000u, 0x7f7f0000u}, /* order; overflow */
    {0x80000000u, 0x80000000u, 0x3f803f80u}, {0x80000000u, 0x80008000u, 0x3f803f80u}, /* zero signs */
    {0x3f800000u, 0xbf800000u, 0x3f803f80u}, {0x00000000u, 0x7f80ff80u, 0x3f803f80u}, /* cancellation; inf */
    {0x00800000u, 0x97800000u, 0x17800000u}, {0x00800000u, 0x99f80000u, 0x1a040000u}, /* tininess after rounding */
    {0x00800000u, 0x9a000000u, 0x1a000000u}, {0x00800000u, 0x9a000000u, 0x19800000u},
    {0x00800000u, 0x000099f8u, 0x00001a04u}, {0x00C00000u, 0xbf803f80u, 0x00800080u}, /* flushed in between */
    {0x00000000u, 0x9c808000u, 0x1c803f80u}, {0x00000000u, 0x1f801f80u, 0x20002000u}, /* flush sign; per product */
    {0x00400000u, 0x3f800000u, 0x00800000u}, {0x00000000u, 0x00400000u, 0x71800000u}, /* DAZ acc; DAZ a */
    {0x00000000u, 0x71800000u, 0x00400000u}, {0x00000000u, 0x7f800000u, 0x00400000u}, /* DAZ b; inf * DAZ */
};
enum { CRAFTED = sizeof crafted / sizeof crafted[0], RANDOM_ROUNDS = 32 };

static uint32_t next(uint32_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}

/* A bf16 with unbiased exponent in [lo, lo + 31] (below -126: subnormal), random sign, mantissa. */
static uint32_t element(uint32_t *s, int lo)
{
    const int e = lo + (int)(next(s) % 32);
    const uint32_t sign = (next(s) & 1u) << 15, m = next(s) & 0x7Fu;
    return e < -126 ? sign | (m ? m : 1) : sign | (uint32_t)(e + 127) << 7 | m;
}

/* A random lane of the class: plain, exponents near 0 and sums far above 2^-126; otherwise
 * subnormal and tiny a against moderate b, the accumulator tiny, or cancelling, or 0. */
static void random_lane(uint32_t *s, bool plain, float *acc, uint32_t *a, uint32_t *b)
{
    const int la = plain ? -16 : -150, lb = plain ? -16 : -10;
    *a = element(s, la) << 16 | element(s, la);
    *b = element(s, lb) << 16 | element(s, lb);
    const uint32_t k = next(s) % 3;
    const float p = dsacp_f32_of_bits(*a & 0xFFFF0000u) * dsacp_f32_of_bits(*b & 0xFFFF0000u);
    const uint32_t tiny = element(s, plain ? -32 : -140) << 16 | (next(s) & 0xFFFFu);
    *acc = k == 0 ? 0.0f : k == 1 ? dsacp_f32_of_bits(tiny) : -p * 1.0000001f;
}

static bool same(float x, float y) { return dsacp_f32_bits(x) == dsacp_f32_bits(y) || (x != x && y != y); }

/* Whether the instruction equals the model on the crafted lanes [c0, c1) and on random lanes of
 * the class. */
static bool agrees(int c0, int c1, bool plain)
{
    float acc[16], out[16];
    uint32_t a[16], b[16], s = plain ? 2463534242u : 88675123u;
    for (int r = 0; r < RANDOM_ROUNDS; r++) {
        for (int l = 0; l < 16; l++) {
            const int c = c0 + (r * 16 + l) % (c1 - c0);
            if (r < 2) acc[l] = dsacp_f32_of_bits(crafted[c][0]), a[l] = crafted[c][1], b[l] = crafted[c][2];
            else random_lane(&s, plain, &acc[l], &a[l], &b[l]);
        }
        dsacp_bf16dot_hw_lanes(acc, a, b, out);
        for (int l = 0; l < 16; l++)
            if (!same(out[l], dsacp_bf16dot_model_pair(acc[l], a[l], b[l]))) return false;
    }
    return true;
}

static int level; /* 0: not checked yet; else 1 + the answer */

int dsacp_bf16dot_hw_level(void)
{
    int v = __atomic_load_n(&level, __ATOMIC_ACQUIRE);
    if (v) return v - 1;
    v = !dsacp_cpu_has_avx512bf16() || !agrees(0, PLAIN_CRAFTED, true) ? DSACP_BF16DOT_HW_NONE
        : agrees(PLAIN_CRAFTED, CRAFTED, false)                      ? DSACP_BF16DOT_HW_ALL
                                                                     : DSACP_BF16DOT_HW_PLAIN;
    const char *env = getenv("DSACP_BF16DOT_HW"); /* lowering only: the paths of other CPUs */
    if (env && !strcmp(env, "none")) v = DSACP_BF16DOT_HW_NONE;
    if (env && !strcmp(env, "plain") && v > DSACP_BF16DOT_HW_PLAIN) v = DSACP_BF16DOT_HW_PLAIN;
    __atomic_store_n(&level, v + 1, __ATOMIC_RELEASE); /* racing first calls find the same */
    return v;
}
#else
bool dsacp_cpu_has_avx512bf16(void) { return false; }
int dsacp_bf16dot_hw_level(void) { return DSACP_BF16DOT_HW_NONE; }
#endif
