/*
 * kernels_isa.h -- the per-ISA variants behind the dispatched kernels of kernels.h (private to
 * src/kernels). Each has exactly the contract of its public kernel; dispatch.c picks one.
 */
#ifndef DSACP_KERNELS_ISA_H
#define DSACP_KERNELS_ISA_H

#include "kernels/kernels.h"

int dsacp_linear_avx512(const dsacp_weight *w, const float *x, int64_t T, int64_t ldx, float *y, int64_t ldy,
                        bool act_quant);
void dsacp_sparse_mla_avx512(const float *q, const float *kv, int64_t n, int64_t H, int64_t dc, int64_t dr,
                             float scale, float *o, float *lse, float *work);
/* The SIMD sparse MLAs on a caller's buffer of dsacp_sparse_mla_<isa>_bytes(H, dc, dr) bytes,
 * 64-byte aligned (it depends on the shape, not on n). The plain forms allocate it and, without
 * memory, write NaN (never fall back to another kernel). */
size_t dsacp_sparse_mla_avx512_bytes(int64_t H, int64_t dc, int64_t dr);
void dsacp_sparse_mla_avx512_buf(const float *q, const float *kv, int64_t n, int64_t H, int64_t dc, int64_t dr,
                                 float scale, float *o, float *lse, float *buf);
size_t dsacp_sparse_mla_avx2_bytes(int64_t H, int64_t dc, int64_t dr);
void dsacp_sparse_mla_avx2_buf(const float *q, const float *kv, int64_t n, int64_t H, int64_t dc, int64_t dr,
                               float scale, float *o, float *lse, float *buf);


void dsacp_index_scores_packed_avx512(const float *qt, const float *wp, int64_t Hp, int64_t di, const void *keys,
                                      const float *kscales, int64_t n, float *out);
void dsacp_gemv_t_avx512(const float *A, int64_t lda, const float *x, int64_t m, int64_t n, float *y);

int dsacp_linear_avx2(const dsacp_weight *w, const float *x, int64_t T, int64_t ldx, float *y, int64_t ldy,
                      bool act_quant);
void dsacp_sparse_mla_avx2(const float *q, const float *kv, int64_t n, int64_t H, int64_t dc, int64_t dr,
                           float scale, float *o, float *lse, float *work);
void dsacp_index_scores_packed_avx2(const float *qt, const float *wp, int64_t Hp, int64_t di, const void *keys,
                                    const float *kscales, int64_t n, float *out);
void dsacp_gemv_t_avx2(const float *A, int64_t lda, const float *x, int64_t m, int64_t n, float *y);

/* Whether an F8_E4M3 weight suits the SIMD decode: blocks a multiple of 16 and every
 * 2^120 * scale finite. */
bool dsacp_linear_f8_ok(const dsacp_weight *w);

/* dsacp_fake_quant_e4m3_groups(x, n, 128) in AVX2, bit for bit (n % 128 == 0). */
void dsacp_fake_quant_e4m3_128_avx2(float *x, int64_t n);
/* Rounds x rows through e4m3 groups of 128 into a fresh buffer (the act_quant of dsacp_linear);
 * *ldout gets its row stride. NULL on allocation failure. */
float *dsacp_linear_act_quant(const float *x, int64_t T, int64_t ldx, int64_t K, int64_t *ldout);

/* The driver shared by the SIMD linears: falls back to the scalar twin for dtypes or FP8 block
 * layouts a variant cannot decode, applies act_quant, then hands output row blocks of
 * DSACP_LINEAR_BLOCK to `rows` over the threads (only outside a parallel region, for products of
 * at least 1e6 multiply-adds). `rows_by_dtype` is indexed F32, BF16, F16, F8_E4M3. `fast`, when
 * not NULL, is offered the (act-quantized) input first and returns 1 when it did the product. */
enum { DSACP_LINEAR_BLOCK = 16 };
/* o[i] += wgt * src[i] for i < d, one variant per ISA; the LSE merge around it is shared. */
typedef void (*dsacp_axpy_fn)(float *o, const float *src, float wgt, int64_t d);
void dsacp_lse_merge_axpy(const float *o_parts, const float *lse_parts, int64_t R, int64_t H, int64_t d, float *o,
                          float *lse, dsacp_axpy_fn axpy);
typedef void (*dsacp_linear_rows_fn)(const dsacp_weight *w, int64_t o0, int64_t o1, const float *x, int64_t ldx,
                                     int64_t T, float *y, int64_t ldy);
typedef int (*dsacp_linear_fast_fn)(const dsacp_weight *w, const float *x, int64_t T, int64_t ldx, float *y,
                                    int64_t ldy, int *rc);
/* The blocked many-row linear (gemm_avx2.c), used for T >= DSACP_GEMM_MIN_T: the same bits as
 * the row kernels (natural chains; with fold, the chains of the AVX-512 VBMI table decode of FP8
 * weights with blocks of a multiple of 64). Returns 1 when it did the product (status in *rc: OK
 * or ENOMEM), 0 when this weight does not suit it (nothing written). x is the act-quantized input. */
enum { DSACP_GEMM_MIN_T = 8 };
int dsacp_linear_gemm(const dsacp_weight *w, const float *x, int64_t T, int64_t ldx, float *y, int64_t ldy, bool fold,
                      int *rc);
int dsacp_linear_drive(const dsacp_weight *w, const float *x, int64_t T, int64_t ldx, float *y, int64_t ldy,
                       bool act_quant, const dsacp_linear_rows_fn rows_by_dtype[4], dsacp_linear_fast_fn fast);

#endif
