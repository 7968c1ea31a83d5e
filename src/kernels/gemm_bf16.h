/*
 * gemm_bf16.h -- the batched bf16-dot product's block API (private to src/kernels; issue 25,
 * docs/numerics.md "The bf16-dot chain"): the many-token path of deployed linears. A caller
 * packs the tokens once per call (shared read-only by its threads), packs a block of 32 weight
 * rows (BF16 rows, or F8 rows as their e4m3 values in bf16, unscaled) and runs the product of
 * that block and every token on one thread; each output is the model's bits
 * (dsacp_bf16dot_scalar, or with the per-block fold of F8 weights the fold model), whatever the
 * form, the ISA or the split of blocks over threads. The whole-matrix API (dsacp_bf16gemm,
 * _as, _pack, bf16dot.h) runs on these blocks.
 *
 *   gemm_bf16.c      packing, the block driver (groups of tokens, the tree, NaN outputs redone
 *                    by the model), the whole-matrix API
 *   gemm_bf16_x86.c  the register tiles of the forms: zmm FMA, VDPBF16PS, ymm FMA
 */
#ifndef DSACP_GEMM_BF16_H
#define DSACP_GEMM_BF16_H

#include "kernels/bf16dot.h"
#include "kernels/weight.h"

#include <stddef.h>
#include <stdint.h>

/* The forms: DSACP_BF16GEMM_FMA and _DPBF16 (bf16dot.h), a ymm FMA form for AVX2 machines, and
 * the scalar model (any CPU, any operands). */
enum { DSACP_BF16GEMM_AVX2 = 3, DSACP_BF16GEMM_SCALAR = 4 };

/* Bytes of one packed block of 32 weight rows of K columns: [l][q][32] dwords, pair p = l + 16 q
 * of row r at [l][q][r] (the pairs padded with (+0, +0) to a multiple of 16; no header). */
size_t dsacp_bf16gemm_block_bytes(int64_t K);
/* Packs rows [o0, o0 + 32) of w (K = w->cols; BF16, or F8_E4M3: each e4m3 value as bf16, exactly,
 * unscaled, NaN as the quiet bf16 NaN of its sign) into blk (block_bytes, any alignment); rows
 * past w->rows are zero. Returns the block's exponent floor (dsacp_bf16_exp_floor of its rows). */
int dsacp_bf16gemm_pack_block(const dsacp_weight *w, int64_t o0, void *blk);
/* The same by the packing code of isa (the same bytes for every ISA; AVX512 where the CPU has
 * AVX512BW, else scalar code): pack_block runs the best this CPU has (not the active ISA: this
 * file is below dispatch.c). For tests. */
int dsacp_bf16gemm_pack_block_as(dsacp_isa isa, const dsacp_weight *w, int64_t o0, void *blk);
/* Bytes of T packed tokens of K columns: a header, the pairs and the FMA forms' f32 split of
 * them, by groups of 12 tokens in the order the tiles read them. */
size_t dsacp_bf16gemm_tokens_bytes(int64_t K, int64_t T);
/* Packs xb (T rows of K bf16, row stride ldx elements) into tok (tokens_bytes; 64-byte aligned
 * for speed, any alignment works). Returns the tokens' exponent floor. */
int dsacp_bf16gemm_pack_tokens(const uint16_t *xb, int64_t T, int64_t K, int64_t ldx, void *tok);
/* y[t][r] for r < rows (<= 32) and t < T (T and K as tok was packed with): the dot of block row r
 * and token t, bit for bit dsacp_bf16dot_scalar (scales NULL) or, with scales, the fold: per
 * lane, the model's partial b of each column block j of bp pairs (bp a positive multiple of 16)
 * from +0, tot = fmaf(b, scales[j], tot), then dsacp_bf16dot_lanes_sum of tot (the fold model,
 * docs/numerics.md). form: DSACP_BF16GEMM_FMA (AVX-512; only for operands whose floors are
 * dsacp_bf16dot_plain_ok), DSACP_BF16GEMM_DPBF16 (only where dsacp_bf16dot_hw_level allows for
 * these operands) or DSACP_BF16GEMM_AVX2 (AVX2 FMA; plain operands only); the caller checks.
 * DSACP_BF16GEMM_SCALAR (or any form on a build without x86) runs the scalar model. A NaN output is redone by
 * the model. Single-threaded; uses about 25 KB of stack. */
void dsacp_bf16gemm_block(int form, const void *blk, int64_t rows, int64_t K, const void *tok, int64_t T,
                          const float *scales, int64_t bp, float *y, int64_t ldy);
/* The product of a panel of nblk consecutive blocks (blk: nblk x block_bytes(K)) and every token:
 * rows in all (32 (nblk - 1) < rows <= 32 nblk), block b's rows at y + 32 b, block b's fold scales
 * scales[b] (scales NULL: no fold), the same bits as nblk calls of dsacp_bf16gemm_block. Each
 * group of tokens runs against every block of the panel in turn, so the tokens, which a block
 * call streams from memory once per 32 rows, come from cache for the others: a panel of
 * dsacp_bf16gemm_panel_blocks(K) blocks fits L2 with a group (at T = 2048 the tokens' split copy
 * is 58 MB at K 7168, the bandwidth a single block's reuse of 32 rows cannot feed). */
void dsacp_bf16gemm_panel(int form, const void *blk, int nblk, int64_t rows, int64_t K, const void *tok, int64_t T,
                          const float *const *scales, int64_t bp, float *y, int64_t ldy);
/* Blocks per panel for K columns (1..8; 2 at K 7168). */
int dsacp_bf16gemm_panel_blocks(int64_t K);

/* ---- between gemm_bf16.c and gemm_bf16_x86.c ---- */

enum { DSACP_BF16GEMM_ROWS = 32, DSACP_BF16GEMM_GROUP = 12 };
/* The rows of one block as bf16: BF16 rows (b16) or F8 rows (f8, decoded), n <= 32 present, K
 * columns, row stride ld elements. */
typedef struct dsacp_bf16gemm_rows {
    const uint16_t *b16;
    const uint8_t *f8;
    int64_t n, K, ld;
} dsacp_bf16gemm_rows;
#if defined(__x86_64__)
/* The block [l][Q][32] of s's rows by 16 x 16 transposes (AVX512BW); returns their floor. */
int dsacp_bf16gemm_pack_rows_avx512(const dsacp_bf16gemm_rows *s, uint32_t *out);
/* One group of nb <= GROUP tokens against one block: tile[l][t][r] (t stride GROUP, 32 rows) =
 * model lane l of row r and token t (with scales: the lane's folded tot, bq = bp / 16 steps per
 * column block). blk: the block ([l][Q][32]); xs: the group's f32 split ([l][Q][nb][high, low]);
 * xp: the group's pairs ([l][Q][nb] dwords). */
typedef struct dsacp_bf16gemm_group {
    const uint32_t *blk, *xp;
    const float *xs, *scales;
    int64_t Q, bq;
    int nb;
} dsacp_bf16gemm_group;
void dsacp_bf16gemm_group_fma(const dsacp_bf16gemm_group *g, float *tile);
void dsacp_bf16gemm_group_dp(const dsacp_bf16gemm_group *g, float *tile);
void dsacp_bf16gemm_group_avx2(const dsacp_bf16gemm_group *g, float *tile);
/* out[r] = the model's tree over tile's 16 lanes of token t, r < 32, in IEEE adds (zmm or ymm;
 * the same bits; a NaN's payload is not the model's). */
void dsacp_bf16gemm_tree_zmm(const float *tile, int t, float out[32]);
void dsacp_bf16gemm_tree_ymm(const float *tile, int t, float out[32]);
#endif

#endif
