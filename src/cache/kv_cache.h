/*
 * cache -- the paged caches of one process (or one CP rank's shard): a pool of fixed-size blocks
 * of B tokens, per-layer storage for the MLA latent cache and the indexer key cache, and
 * per-sequence block tables. Calls core, numerics (entry formats and their sizes) and kernels
 * (the active table's row decoders).
 *
 * Layouts (docs/dsa-math.md section 6), per layer, per block of B tokens:
 *   MLA latent, token-major, mla_bytes per token:
 *     f32:        [dc] F32 c, then [dr] F32 k_pe
 *     bf16:       [dc] BF16 c, then [dr] BF16 k_pe
 *     fp8_ds_mla: [dc] E4M3 c, [dc/128] F32 scales, [dr] BF16 k_pe   (656 bytes for V3.2)
 *   Indexer keys:
 *     f32: [B][di] F32
 *     fp8: [B][di] E4M3 rows, then [B] F32 scales (DeepGEMM's paged layout: a block's rows first)
 * A slot is block * B + offset; position p of a sequence lives at
 * slot(blocks[p / B], p % B).
 */
#ifndef DSACP_KV_CACHE_H
#define DSACP_KV_CACHE_H

#include "core/core.h"
#include "kernels/kernels.h"
/* Transitional (issue 21): tests/test_cp.c calls dsacp_model_weight and reaches model.h only
 * through this header (by way of cp.h and dsa_layer.h); the line goes once it includes
 * model/model.h itself. The cache calls nothing in model. */
#include "model/model.h"

typedef struct dsacp_kv_cache {
    int64_t num_layers, num_blocks, block_size;
    int64_t dc, dr, di;           /* latent, rope and indexer key widths */
    dsacp_kv_dtype mla_dtype;
    bool index_fp8;
    int64_t mla_bytes, index_bytes; /* per token */
    uint8_t **mla;                  /* [num_layers] -> num_blocks * B * mla_bytes */
    uint8_t **index;                /* [num_layers] -> num_blocks * B * index_bytes */
    int32_t *free_list;             /* stack of free block ids */
    int64_t num_free;
} dsacp_kv_cache;

/* One sequence's block table. */
typedef struct dsacp_kv_seq {
    int32_t *blocks;
    int64_t num_blocks, cap;
    int64_t length; /* tokens cached */
} dsacp_kv_seq;

int dsacp_kv_cache_create(const dsacp_config *cfg, int64_t num_layers, dsacp_kv_dtype mla_dtype,
                          bool index_fp8, int64_t block_size, int64_t num_blocks, dsacp_kv_cache **out);
/* The same with only the latent or only the indexer storage (a context-parallel rank whose two
 * caches have different layouts keeps one pool per cache); the other part's arrays stay NULL
 * and must not be written. */
int dsacp_kv_cache_create_parts(const dsacp_config *cfg, int64_t num_layers, dsacp_kv_dtype mla_dtype,
                                bool index_fp8, int64_t block_size, int64_t num_blocks, bool latent, bool index,
                                dsacp_kv_cache **out);
void dsacp_kv_cache_free(dsacp_kv_cache *c);

/* Blocks `seq` needs beyond what it holds to cover `length` tokens. */
int64_t dsacp_kv_blocks_needed(const dsacp_kv_cache *c, const dsacp_kv_seq *seq, int64_t length);
/* Grows the block table to cover `length` tokens; DSACP_ECAPACITY (nothing changed) when the pool
 * has too few free blocks. Does not change seq->length. */
int dsacp_kv_reserve(dsacp_kv_cache *c, dsacp_kv_seq *seq, int64_t length);
/* Keeps the blocks covering `length` tokens and returns the rest to the pool (rejected
 * speculative positions); seq->length is capped at `length`. */
void dsacp_kv_shrink(dsacp_kv_cache *c, dsacp_kv_seq *seq, int64_t length);
/* Returns every block of `seq` to the pool and empties it. */
void dsacp_kv_release(dsacp_kv_cache *c, dsacp_kv_seq *seq);

static inline int64_t dsacp_kv_slot(const dsacp_kv_cache *c, const dsacp_kv_seq *seq, int64_t pos)
{
    return (int64_t)seq->blocks[pos / c->block_size] * c->block_size + pos % c->block_size;
}

/* Writes one token's latent row: c [dc] and k_pe [dr], rounded/quantized to the cache dtype. */
void dsacp_kv_write_mla(dsacp_kv_cache *c, int64_t layer, int64_t slot, const float *latent,
                        const float *k_pe);
/* Reads one token's latent row back as F32 [dc + dr] = [c | k_pe] (dequantized). */
void dsacp_kv_read_mla(const dsacp_kv_cache *c, int64_t layer, int64_t slot, float *out);
/* The ISA of the row decoders dsacp_kv_read_mla runs now (the active kernel table's decode_isa):
 * DSACP_ISA_AVX512 when the kernels' active ISA is AVX-512, else DSACP_ISA_SCALAR. Both give
 * the same floats. */
dsacp_isa dsacp_kv_decode_isa(void);
/* Raw bytes of a slot's latent entry (mla_bytes). */
const uint8_t *dsacp_kv_mla_entry(const dsacp_kv_cache *c, int64_t layer, int64_t slot);

/* Writes one token's indexer key [di]: F32 as is; FP8 quantized with one power-of-two scale
 * (the caller has already applied the Hadamard rotation). */
void dsacp_kv_write_index(dsacp_kv_cache *c, int64_t layer, int64_t slot, const float *key);
/* The keys of one block: F32 [B][di] (scales NULL), or E4M3 [B][di] with F32 [B] scales. */
const void *dsacp_kv_index_block(const dsacp_kv_cache *c, int64_t layer, int64_t block,
                                 const float **scales);

#endif
