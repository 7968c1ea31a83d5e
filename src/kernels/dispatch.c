/*
 * dispatch.c -- the top of src/kernels: the kernel table of the active ISA (isa.c chooses it;
 * kernels.h, "ISA dispatch") and the public kernels, each a call through that table (and
 * dsacp_bf16dot, through the bf16-dot chain's kernel of the active ISA). Calls the ISA files'
 * tables, the scalar pieces of kernels.c, bf16dot_x86.c's choice of kernel and isa.c; nothing in
 * src/kernels calls it.
 */
#include "kernels/bf16dot.h"
#include "kernels/kernels_isa.h"

#include <stdint.h>
#include <string.h>

/* The table of an ISA this CPU runs (AVX-512 with VBMI gets the table decode's variant). */
static const dsacp_kernel_table *table_of(dsacp_isa isa)
{
#if defined(__x86_64__)
    if (isa == DSACP_ISA_AVX512) {
        static int vbmi = -1; /* racing first calls find the same answer */
        int v = __atomic_load_n(&vbmi, __ATOMIC_RELAXED);
        if (v < 0) {
            __builtin_cpu_init();
            v = __builtin_cpu_supports("avx512vbmi") ? 1 : 0;
            __atomic_store_n(&vbmi, v, __ATOMIC_RELAXED);
        }
        return v ? &dsacp_kernels_avx512_vbmi : &dsacp_kernels_avx512;
    }
    if (isa == DSACP_ISA_AVX2) return &dsacp_kernels_avx2;
#endif
    return &dsacp_kernels_scalar;
}

const dsacp_kernel_table *dsacp_kernels(void) { return table_of(dsacp_isa_active()); }

/* ---- linear ---- */

size_t dsacp_linear_ws_bytes(const dsacp_weight *w, int64_t T, bool act_quant)
{
    /* Enough for every table this CPU runs, so that a dsacp_isa_set after sizing stays safe. */
    size_t most = 0;
    for (int i = DSACP_ISA_SCALAR; i <= (int)dsacp_isa_best(); i++) {
        const size_t b = table_of((dsacp_isa)i)->linear_ws_bytes(w, T, act_quant);
        if (b > most) most = b;
    }
    return most;
}

int dsacp_linear_ws(const dsacp_weight *w, const float *x, int64_t T, int64_t ldx, float *y, int64_t ldy,
                    bool act_quant, void *ws, size_t ws_bytes)
{
    return dsacp_kernels()->linear(w, x, T, ldx, y, ldy, act_quant, ws, ws_bytes);
}

/* A linear of table t with its workspace allocated for this call. */
static int linear_alloc(const dsacp_kernel_table *t, const dsacp_weight *w, const float *x, int64_t T, int64_t ldx,
                        float *y, int64_t ldy, bool act_quant)
{
    const size_t bytes = t->linear_ws_bytes(w, T, act_quant);
    void *ws = bytes ? dsacp_alloc(bytes) : NULL;
    if (bytes && !ws)
        return dsacp_error(DSACP_ENOMEM, "linear %s: out of memory for a %zu-byte workspace", w->name ? w->name : "",
                           bytes);
    const int rc = t->linear(w, x, T, ldx, y, ldy, act_quant, ws, bytes);
    dsacp_free(ws);
    return rc;
}

int dsacp_linear(const dsacp_weight *w, const float *x, int64_t T, int64_t ldx, float *y, int64_t ldy,
                 bool act_quant)
{
    return linear_alloc(dsacp_kernels(), w, x, T, ldx, y, ldy, act_quant);
}

/* ---- the bf16-dot chain ---- */

float dsacp_bf16dot(const uint16_t *a, const uint16_t *b, int64_t n)
{
    return dsacp_bf16dot_kernel(dsacp_isa_active())(a, b, n);
}

/* ---- small kernels ---- */

void dsacp_rmsnorm(float *y, const float *x, const float *weight, int64_t n, double eps)
{
    dsacp_kernels()->rmsnorm(y, x, weight, n, eps);
}

void dsacp_gemv_t(const float *A, int64_t lda, const float *x, int64_t m, int64_t n, float *y)
{
    dsacp_kernels()->gemv_t(A, lda, x, m, n, y);
}

void dsacp_lse_merge(const float *o_parts, const float *lse_parts, int64_t R, int64_t H, int64_t d, float *o,
                     float *lse)
{
    dsacp_lse_merge_axpy(o_parts, lse_parts, R, H, d, o, lse, dsacp_kernels()->axpy);
}

/* ---- indexer ---- */

int dsacp_index_scores_ws(const float *q, const float *w, int64_t Hi, int64_t di, const void *keys,
                          const float *kscales, int64_t n, float *out, void *work)
{
    const dsacp_kernel_table *t = dsacp_kernels();
    if (!t->index_transposed) {
        t->index_scores(q, w, Hi, di, keys, kscales, n, out);
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
    if (!dsacp_kernels()->index_transposed) return dsacp_index_scores_ws(q, w, Hi, di, keys, kscales, n, out, NULL);
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

/* Packed query: a 64-byte header naming the table that packed it, then its layout of q and w. */
typedef struct packed_head {
    const dsacp_kernel_table *t;
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
    ph->t = dsacp_kernels();
    ph->Hi = Hi;
    ph->di = di;
    ph->Hp = round16(Hi);
    float *body = (float *)((unsigned char *)packed + PACKED_HEAD);
    if (ph->t->index_transposed) {
        /* q transposed to [di][Hp] (zero padded), w padded to Hp: the SIMD variants run across heads. */
        const int64_t Hp = ph->Hp;
        float *wp = body + di * Hp;
        dsacp_transpose_heads(q, Hi, di, Hp, body);
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
    const int64_t H = ph->t->index_transposed ? ph->Hp : ph->Hi;
    ph->t->index_scores(body, body + ph->di * H, H, ph->di, keys, kscales, n, out);
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

/* ---- sparse MLA ---- */

size_t dsacp_sparse_mla_work_bytes(int64_t n, int64_t H, int64_t dc, int64_t dr)
{
    /* Enough for every table this CPU runs, plus room to align. */
    size_t most = 0;
    for (int i = DSACP_ISA_SCALAR; i <= (int)dsacp_isa_best(); i++) {
        const size_t b = table_of((dsacp_isa)i)->mla_bytes(n, H, dc, dr);
        if (b > most) most = b;
    }
    return most + DSACP_WS_ALIGN;
}

int dsacp_sparse_mla_ws(const float *q, const float *kv, int64_t n, int64_t H, int64_t dc, int64_t dr, float scale,
                        float *o, float *lse, void *work, size_t work_bytes)
{
    const size_t need = dsacp_sparse_mla_work_bytes(n, H, dc, dr);
    if (!work || work_bytes < need)
        return dsacp_error(DSACP_EINVAL, "sparse MLA: workspace of %zu bytes, %zu needed", work_bytes, need);
    dsacp_ws s = dsacp_ws_open(work, work_bytes);
    dsacp_kernels()->sparse_mla(q, kv, n, H, dc, dr, scale, o, lse, (float *)s.p);
    return DSACP_OK;
}

int dsacp_sparse_mla(const float *q, const float *kv, int64_t n, int64_t H, int64_t dc, int64_t dr, float scale,
                     float *o, float *lse, float *work)
{
    const dsacp_kernel_table *t = dsacp_kernels();
    /* The caller's F32 [n] is the scalar twin's scratch (any alignment); no table reads its
     * scratch when n == 0. */
    if (t->isa == DSACP_ISA_SCALAR || n == 0) {
        t->sparse_mla(q, kv, n, H, dc, dr, scale, o, lse, work);
        return DSACP_OK;
    }
    const size_t bytes = t->mla_bytes(n, H, dc, dr);
    float *buf = dsacp_alloc(bytes);
    if (!buf) return dsacp_error(DSACP_ENOMEM, "sparse MLA: out of memory for a %zu-byte workspace", bytes);
    t->sparse_mla(q, kv, n, H, dc, dr, scale, o, lse, buf);
    dsacp_free(buf);
    return DSACP_OK;
}
