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

/* Rounds x rows through e4m3 groups of 128 into a fresh buffer (the act_quant of dsacp_linear);
 * *ldout gets its row stride. NULL on allocation failure. */
float *dsacp_linear_act_quant(const float *x, int64_t T, int64_t ldx, int64_t K, int64_t *ldout);

#endif
