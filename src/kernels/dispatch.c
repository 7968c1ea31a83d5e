/*
 * dispatch.c -- runtime choice of the kernels' instruction set (kernels.h, "ISA dispatch").
 * The choice is made once, lazily, from cpuid and DSACP_ISA; dsacp_isa_set overrides it.
 */
#include "kernels/kernels_isa.h"

#include <omp.h>

#include <stdint.h>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif
#include <stdlib.h>
#include <string.h>

static int isa_state = -1; /* -1: not chosen yet */

dsacp_isa dsacp_isa_best(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("fma"))
        return DSACP_ISA_AVX512;
    unsigned a = 0, b = 0, c = 0, d = 0;
    const bool f16c = __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C); /* clang lacks "f16c" here */
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c) return DSACP_ISA_AVX2;
#endif
    return DSACP_ISA_SCALAR;
}

dsacp_isa dsacp_isa_active(void)
{
    int s = __atomic_load_n(&isa_state, __ATOMIC_ACQUIRE);
    if (s >= 0) return (dsacp_isa)s;
    dsacp_isa best = dsacp_isa_best(), want = best;
    const char *env = getenv("DSACP_ISA");
    if (env && *env) {
        if (!strcmp(env, "scalar")) want = DSACP_ISA_SCALAR;
        else if (!strcmp(env, "avx2")) want = DSACP_ISA_AVX2;
        else if (!strcmp(env, "avx512")) want = DSACP_ISA_AVX512;
    }
    if (want > best) want = best;
    __atomic_store_n(&isa_state, (int)want, __ATOMIC_RELEASE);
    return want;
}

int dsacp_isa_set(dsacp_isa isa)
{
    if ((int)isa < DSACP_ISA_SCALAR || isa > DSACP_ISA_AVX512)
        return dsacp_error(DSACP_EINVAL, "unknown ISA %d", (int)isa);
    if (isa > dsacp_isa_best())
        return dsacp_error(DSACP_EUNSUPPORTED, "this CPU does not support %s", dsacp_isa_name(isa));
    __atomic_store_n(&isa_state, (int)isa, __ATOMIC_RELEASE);
    return DSACP_OK;
}

const char *dsacp_isa_name(dsacp_isa isa)
{
    switch (isa) {
    case DSACP_ISA_SCALAR: return "scalar";
    case DSACP_ISA_AVX2: return "avx2";
    case DSACP_ISA_AVX512: return "avx512";
    }
    return "unknown";
}

int dsacp_linear(const dsacp_weight *w, const float *x, int64_t T, int64_t ldx, float *y, int64_t ldy,
                 bool act_quant)
{
    switch (dsacp_isa_active()) {
    case DSACP_ISA_AVX512: return dsacp_linear_avx512(w, x, T, ldx, y, ldy, act_quant);
    case DSACP_ISA_AVX2: return dsacp_linear_avx2(w, x, T, ldx, y, ldy, act_quant);
    default: return dsacp_linear_scalar(w, x, T, ldx, y, ldy, act_quant);
    }
}

int dsacp_index_scores_ws(const float *q, const float *w, int64_t Hi, int64_t di, const void *keys,
                          const float *kscales, int64_t n, float *out, void *work)
{
    if (dsacp_isa_active() == DSACP_ISA_SCALAR) {
        dsacp_index_scores_scalar(q, w, Hi, di, keys, kscales, n, out);
        return DSACP_OK;
    }
    if (!work || ((uintptr_t)work & 63))
        return dsacp_error(DSACP_EINVAL, "index scores: workspace must be 64-byte aligned");
    dsacp_index_query_pack(q, w, Hi, di, work);
    dsacp_index_scores_packed(work, keys, kscales, n, out);
    return DSACP_OK;
}

int dsacp_index_scores(const float *q, const float *w, int64_t Hi, int64_t di, const void *keys,
                       const float *kscales, int64_t n, float *out)
{
    if (dsacp_isa_active() == DSACP_ISA_SCALAR) return dsacp_index_scores_ws(q, w, Hi, di, keys, kscales, n, out, NULL);
    /* Never a different kernel for want of memory: the packed query fits the stack for the real
     * shapes; otherwise it is allocated, and without memory the call fails. */
    size_t bytes = dsacp_index_query_bytes(Hi, di);
    _Alignas(64) unsigned char stackbuf[1 << 16];
    void *buf = bytes <= sizeof stackbuf ? (void *)stackbuf : dsacp_alloc(bytes);
    if (!buf) return dsacp_error(DSACP_ENOMEM, "index scores: out of memory for a %zu-byte packed query", bytes);
    int rc = dsacp_index_scores_ws(q, w, Hi, di, keys, kscales, n, out, buf);
    if (buf != stackbuf) dsacp_free(buf);
    return rc;
}

/* Packed query: a 64-byte header, then the ISA's layout of q and w. */
typedef struct packed_head {
    int32_t isa;
    int64_t Hi, di, Hp;
} packed_head;
enum { PACKED_HEAD = 64 };

static int64_t round16(int64_t x) { return (x + 15) / 16 * 16; }

size_t dsacp_index_query_bytes(int64_t Hi, int64_t di)
{
    int64_t Hp = round16(Hi);
    return PACKED_HEAD + (size_t)(di * Hp + Hp) * sizeof(float);
}

void dsacp_index_query_pack(const float *q, const float *w, int64_t Hi, int64_t di, void *packed)
{
    packed_head *ph = packed;
    ph->isa = (int32_t)dsacp_isa_active();
    ph->Hi = Hi;
    ph->di = di;
    ph->Hp = round16(Hi);
    float *body = (float *)((unsigned char *)packed + PACKED_HEAD);
    if (ph->isa != DSACP_ISA_SCALAR) {
        /* q transposed to [di][Hp] (zero padded), w padded to Hp: the SIMD variants run across heads. */
        const int64_t Hp = ph->Hp;
        float *qt = body, *wp = body + di * Hp;
        for (int64_t d = 0; d < di; d++) {
            for (int64_t h = 0; h < Hi; h++) qt[d * Hp + h] = q[h * di + d];
            for (int64_t h = Hi; h < Hp; h++) qt[d * Hp + h] = 0;
        }
        for (int64_t h = 0; h < Hp; h++) wp[h] = h < Hi ? w[h] : 0;
    } else {
        memcpy(body, q, (size_t)(Hi * di) * sizeof(float));
        memcpy(body + Hi * di, w, (size_t)Hi * sizeof(float));
    }
}

void dsacp_index_scores_packed(const void *packed, const void *keys, const float *kscales, int64_t n, float *out)
{
    const packed_head *ph = packed;
    const float *body = (const float *)((const unsigned char *)packed + PACKED_HEAD);
    if (ph->isa == DSACP_ISA_AVX512)
        dsacp_index_scores_packed_avx512(body, body + ph->di * ph->Hp, ph->Hp, ph->di, keys, kscales, n, out);
    else if (ph->isa == DSACP_ISA_AVX2)
        dsacp_index_scores_packed_avx2(body, body + ph->di * ph->Hp, ph->Hp, ph->di, keys, kscales, n, out);
    else
        dsacp_index_scores_scalar(body, body + ph->Hi * ph->di, ph->Hi, ph->di, keys, kscales, n, out);
}

void dsacp_gemv_t(const float *A, int64_t lda, const float *x, int64_t m, int64_t n, float *y)
{
    switch (dsacp_isa_active()) {
    case DSACP_ISA_AVX512: dsacp_gemv_t_avx512(A, lda, x, m, n, y); return;
    case DSACP_ISA_AVX2: dsacp_gemv_t_avx2(A, lda, x, m, n, y); return;
    default: break;
    }
    for (int64_t j = 0; j < n; j++) y[j] = 0;
    for (int64_t i = 0; i < m; i++) {
        const float a = x[i], *row = A + i * lda;
        for (int64_t j = 0; j < n; j++) y[j] += a * row[j];
    }
}

static size_t multi_stride(int64_t Hi, int64_t di) { return (dsacp_index_query_bytes(Hi, di) + 63) / 64 * 64; }

size_t dsacp_index_scores_multi_bytes(int64_t Tq, int64_t Hi, int64_t di)
{
    return multi_stride(Hi, di) * (size_t)(Tq > 0 ? Tq : 1);
}

int dsacp_index_scores_multi_ws(const float *q, const float *w, int64_t Tq, int64_t Hi, int64_t di,
                                const void *keys, const float *kscales, int64_t n, float *out, int64_t ldo,
                                void *work)
{
    if (!work || ((uintptr_t)work & 63))
        return dsacp_error(DSACP_EINVAL, "index scores: workspace must be 64-byte aligned");
    /* Every query packed once; key chunks outer so a chunk stays in cache across the queries;
     * each (query, key) runs the single-query kernel's exact arithmetic. */
    const int64_t C = 256;
    const size_t kb = kscales ? 1 : 4;
    const size_t bytes = multi_stride(Hi, di);
    unsigned char *packs = work;
    for (int64_t t = 0; t < Tq; t++) dsacp_index_query_pack(q + t * Hi * di, w + t * Hi, Hi, di, packs + (size_t)t * bytes);
    for (int64_t j0 = 0; j0 < n; j0 += C) {
        int64_t c = n - j0 < C ? n - j0 : C;
        for (int64_t t = 0; t < Tq; t++)
            dsacp_index_scores_packed(packs + (size_t)t * bytes, (const uint8_t *)keys + (size_t)j0 * (size_t)di * kb,
                                      kscales ? kscales + j0 : NULL, c, out + t * ldo + j0);
    }
    return DSACP_OK;
}

int dsacp_index_scores_multi(const float *q, const float *w, int64_t Tq, int64_t Hi, int64_t di,
                             const void *keys, const float *kscales, int64_t n, float *out, int64_t ldo)
{
    size_t bytes;
    if (!dsacp_mul_ok(multi_stride(Hi, di), (size_t)(Tq > 0 ? Tq : 1), &bytes))
        return dsacp_error(DSACP_ENOMEM, "index scores: %lld packed queries overflow", (long long)Tq);
    void *packs = dsacp_alloc(bytes);
    if (!packs) return dsacp_error(DSACP_ENOMEM, "index scores: out of memory for %lld packed queries", (long long)Tq);
    int rc = dsacp_index_scores_multi_ws(q, w, Tq, Hi, di, keys, kscales, n, out, ldo, packs);
    dsacp_free(packs);
    return rc;
}

void dsacp_sparse_mla(const float *q, const float *kv, int64_t n, int64_t H, int64_t dc, int64_t dr,
                      float scale, float *o, float *lse, float *work)
{
    switch (dsacp_isa_active()) {
    case DSACP_ISA_AVX512: dsacp_sparse_mla_avx512(q, kv, n, H, dc, dr, scale, o, lse, work); break;
    case DSACP_ISA_AVX2: dsacp_sparse_mla_avx2(q, kv, n, H, dc, dr, scale, o, lse, work); break;
    default: dsacp_sparse_mla_scalar(q, kv, n, H, dc, dr, scale, o, lse, work); break;
    }
}

size_t dsacp_sparse_mla_work_bytes(int64_t n, int64_t H, int64_t dc, int64_t dr)
{
    size_t b = (size_t)(n > 0 ? n : 1) * sizeof(float);
    size_t b512 = dsacp_sparse_mla_avx512_bytes(H, dc, dr), b2 = dsacp_sparse_mla_avx2_bytes(H, dc, dr);
    if (b512 > b) b = b512;
    if (b2 > b) b = b2;
    return b + 64; /* room to align */
}

int dsacp_sparse_mla_ws(const float *q, const float *kv, int64_t n, int64_t H, int64_t dc, int64_t dr, float scale,
                        float *o, float *lse, void *work, size_t work_bytes)
{
    if (!work || work_bytes < dsacp_sparse_mla_work_bytes(n, H, dc, dr))
        return dsacp_error(DSACP_EINVAL, "sparse MLA: workspace of %zu bytes, %zu needed", work_bytes,
                           dsacp_sparse_mla_work_bytes(n, H, dc, dr));
    float *buf = (float *)(((uintptr_t)work + 63) & ~(uintptr_t)63);
    switch (dsacp_isa_active()) {
    case DSACP_ISA_AVX512: dsacp_sparse_mla_avx512_buf(q, kv, n, H, dc, dr, scale, o, lse, buf); break;
    case DSACP_ISA_AVX2: dsacp_sparse_mla_avx2_buf(q, kv, n, H, dc, dr, scale, o, lse, buf); break;
    default: dsacp_sparse_mla_scalar(q, kv, n, H, dc, dr, scale, o, lse, buf); break;
    }
    return DSACP_OK;
}

int dsacp_linear_drive(const dsacp_weight *w, const float *x, int64_t T, int64_t ldx, float *y, int64_t ldy,
                       bool act_quant, const dsacp_linear_rows_fn rows_by_dtype[4], dsacp_linear_fast_fn fast)
{
    dsacp_linear_rows_fn rows;
    switch (w->dtype) {
    case DSACP_F32: rows = rows_by_dtype[0]; break;
    case DSACP_BF16: rows = rows_by_dtype[1]; break;
    case DSACP_F16: rows = rows_by_dtype[2]; break;
    case DSACP_F8_E4M3: rows = rows_by_dtype[3]; break;
    default: return dsacp_linear_scalar(w, x, T, ldx, y, ldy, act_quant);
    }
    const int64_t K = w->cols, N = w->rows;
    /* The in-register decode needs 16-aligned blocks and 2^120 * scale finite. */
    if (w->dtype == DSACP_F8_E4M3 && !dsacp_linear_f8_ok(w)) return dsacp_linear_scalar(w, x, T, ldx, y, ldy, act_quant);
    if (T <= 0 || N <= 0) return DSACP_OK;
    const float *xin = x;
    int64_t ldxin = ldx;
    float *xq = NULL;
    if (act_quant && w->dtype == DSACP_F8_E4M3 && K % 128 == 0) {
        xq = dsacp_linear_act_quant(x, T, ldx, K, &ldxin);
        if (!xq) return dsacp_error(DSACP_ENOMEM, "linear %s: out of memory", w->name ? w->name : "");
        xin = xq;
    }
    int rc = DSACP_OK;
    if ((fast && fast(w, xin, T, ldxin, y, ldy, &rc)) ||
        (T >= DSACP_GEMM_MIN_T && dsacp_linear_gemm(w, xin, T, ldxin, y, ldy, false, &rc))) {
        dsacp_free(xq);
        return rc;
    }
    const int64_t nb = (N + DSACP_LINEAR_BLOCK - 1) / DSACP_LINEAR_BLOCK;
    const bool par = !omp_in_parallel() && (double)N * (double)K * (double)T >= 65536 && nb > 1;
#pragma omp parallel for schedule(static) if (par)
    for (int64_t b = 0; b < nb; b++) {
        int64_t o0 = b * DSACP_LINEAR_BLOCK, o1 = o0 + DSACP_LINEAR_BLOCK < N ? o0 + DSACP_LINEAR_BLOCK : N;
        rows(w, o0, o1, xin, ldxin, T, y, ldy);
    }
    dsacp_free(xq);
    return DSACP_OK;
}
