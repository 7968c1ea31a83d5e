/* kv_cache.c -- block pool, block tables and the per-dtype row encoders of the paged caches;
 * the row decoders are the active kernel table's. */
#include "cache/kv_cache.h"
#include "numerics/numerics.h"

#include <string.h>

int dsacp_kv_cache_create(const dsacp_config *cfg, int64_t num_layers, dsacp_kv_dtype mla_dtype,
                          bool index_fp8, int64_t block_size, int64_t num_blocks, dsacp_kv_cache **out)
{
    return dsacp_kv_cache_create_parts(cfg, num_layers, mla_dtype, index_fp8, block_size, num_blocks, true, true, out);
}

int dsacp_kv_cache_create_parts(const dsacp_config *cfg, int64_t num_layers, dsacp_kv_dtype mla_dtype,
                                bool index_fp8, int64_t block_size, int64_t num_blocks, bool latent, bool index,
                                dsacp_kv_cache **out)
{
    *out = NULL;
    if (block_size < 1 || (block_size & (block_size - 1)) || block_size > (1 << 20))
        return dsacp_error(DSACP_EINVAL, "block size %lld must be a power of two in [1, 2^20]",
                           (long long)block_size);
    if (num_blocks < 1 || num_blocks > INT32_MAX)
        return dsacp_error(DSACP_EINVAL, "cache block count %lld out of range", (long long)num_blocks);
    if (mla_dtype == DSACP_KV_FP8 && cfg->kv_lora_rank % 128)
        return dsacp_error(DSACP_EUNSUPPORTED, "fp8 latent cache needs kv_lora_rank %% 128 == 0 (got %lld)",
                           (long long)cfg->kv_lora_rank);
    dsacp_kv_cache *c = dsacp_calloc(1, sizeof *c);
    if (!c) return dsacp_error(DSACP_ENOMEM, "out of memory");
    c->num_layers = num_layers;
    c->num_blocks = num_blocks;
    c->block_size = block_size;
    c->dc = cfg->kv_lora_rank;
    c->dr = cfg->qk_rope_head_dim;
    c->di = cfg->index_head_dim;
    c->mla_dtype = mla_dtype;
    c->index_fp8 = index_fp8;
    c->mla_bytes = dsacp_mla_entry_bytes(c->dc, c->dr, mla_dtype);
    c->index_bytes = dsacp_index_entry_bytes(c->di, index_fp8 ? DSACP_KV_FP8 : DSACP_KV_F32);
    c->mla = dsacp_calloc((size_t)num_layers, sizeof *c->mla);
    c->index = dsacp_calloc((size_t)num_layers, sizeof *c->index);
    c->free_list = dsacp_alloc((size_t)num_blocks * sizeof *c->free_list);
    if (!c->mla || !c->index || !c->free_list) goto oom;
    size_t tokens = (size_t)(num_blocks * block_size);
    for (int64_t l = 0; l < num_layers; l++) {
        if (latent && !(c->mla[l] = dsacp_calloc(tokens, (size_t)c->mla_bytes))) goto oom;
        if (index && !(c->index[l] = dsacp_calloc(tokens, (size_t)c->index_bytes))) goto oom;
    }
    /* Lowest block ids are handed out first. */
    for (int64_t b = 0; b < num_blocks; b++) c->free_list[b] = (int32_t)(num_blocks - 1 - b);
    c->num_free = num_blocks;
    *out = c;
    return DSACP_OK;
oom:
    dsacp_kv_cache_free(c);
    return dsacp_error(DSACP_ENOMEM, "out of memory allocating %lld cache blocks of %lld tokens",
                       (long long)num_blocks, (long long)block_size);
}

void dsacp_kv_cache_free(dsacp_kv_cache *c)
{
    if (!c) return;
    for (int64_t l = 0; l < c->num_layers; l++) {
        if (c->mla) dsacp_free(c->mla[l]);
        if (c->index) dsacp_free(c->index[l]);
    }
    dsacp_free(c->mla);
    dsacp_free(c->index);
    dsacp_free(c->free_list);
    dsacp_free(c);
}

int64_t dsacp_kv_blocks_needed(const dsacp_kv_cache *c, const dsacp_kv_seq *seq, int64_t length)
{
    int64_t need = (length + c->block_size - 1) / c->block_size;
    return need > seq->num_blocks ? need - seq->num_blocks : 0;
}

int dsacp_kv_reserve(dsacp_kv_cache *c, dsacp_kv_seq *seq, int64_t length)
{
    int64_t extra = dsacp_kv_blocks_needed(c, seq, length);
    if (extra == 0) return DSACP_OK;
    if (extra > c->num_free)
        return dsacp_error(DSACP_ECAPACITY, "cache pool exhausted: %lld more blocks of %lld tokens "
                           "needed, %lld free of %lld", (long long)extra, (long long)c->block_size,
                           (long long)c->num_free, (long long)c->num_blocks);
    int64_t need = seq->num_blocks + extra;
    if (need > seq->cap) {
        int64_t cap = seq->cap ? seq->cap : 8;
        while (cap < need) cap *= 2;
        int32_t *b = dsacp_alloc((size_t)cap * sizeof *b);
        if (!b) return dsacp_error(DSACP_ENOMEM, "out of memory growing a block table");
        if (seq->num_blocks) memcpy(b, seq->blocks, (size_t)seq->num_blocks * sizeof *b);
        dsacp_free(seq->blocks);
        seq->blocks = b;
        seq->cap = cap;
    }
    for (int64_t i = 0; i < extra; i++) seq->blocks[seq->num_blocks++] = c->free_list[--c->num_free];
    return DSACP_OK;
}

void dsacp_kv_release(dsacp_kv_cache *c, dsacp_kv_seq *seq)
{
    for (int64_t i = seq->num_blocks - 1; i >= 0; i--) c->free_list[c->num_free++] = seq->blocks[i];
    dsacp_free(seq->blocks);
    memset(seq, 0, sizeof *seq);
}

void dsacp_kv_shrink(dsacp_kv_cache *c, dsacp_kv_seq *seq, int64_t length)
{
    const int64_t keep = (length + c->block_size - 1) / c->block_size;
    while (seq->num_blocks > keep) c->free_list[c->num_free++] = seq->blocks[--seq->num_blocks];
    if (seq->length > length) seq->length = length;
}

const uint8_t *dsacp_kv_mla_entry(const dsacp_kv_cache *c, int64_t layer, int64_t slot)
{
    return c->mla[layer] + slot * c->mla_bytes;
}

void dsacp_kv_write_mla(dsacp_kv_cache *c, int64_t layer, int64_t slot, const float *latent,
                        const float *k_pe)
{
    uint8_t *e = c->mla[layer] + slot * c->mla_bytes;
    const int64_t dc = c->dc, dr = c->dr;
    switch (c->mla_dtype) {
    case DSACP_KV_F32:
        memcpy(e, latent, (size_t)dc * sizeof(float));
        memcpy(e + dc * (int64_t)sizeof(float), k_pe, (size_t)dr * sizeof(float));
        break;
    case DSACP_KV_BF16: {
        uint16_t v[1024];
        for (int64_t i = 0; i < dc + dr; i++) v[i] = dsacp_f32_to_bf16(i < dc ? latent[i] : k_pe[i - dc]);
        memcpy(e, v, (size_t)(dc + dr) * sizeof(uint16_t));
        break;
    }
    case DSACP_KV_FP8: {
        float scales[64];
        dsacp_quant_e4m3_groups(latent, dc, 128, e, scales);
        memcpy(e + dc, scales, (size_t)(dc / 128) * sizeof(float));
        uint16_t v[512];
        for (int64_t i = 0; i < dr; i++) v[i] = dsacp_f32_to_bf16(k_pe[i]);
        memcpy(e + dc + (dc / 128) * (int64_t)sizeof(float), v, (size_t)dr * sizeof(uint16_t));
        break;
    }
    }
}

dsacp_isa dsacp_kv_decode_isa(void) { return dsacp_kernels()->decode_isa; }

void dsacp_kv_read_mla(const dsacp_kv_cache *c, int64_t layer, int64_t slot, float *out)
{
    const uint8_t *e = c->mla[layer] + slot * c->mla_bytes;
    const int64_t dc = c->dc, dr = c->dr;
    const dsacp_kernel_table *k = dsacp_kernels();
    switch (c->mla_dtype) {
    case DSACP_KV_F32:
        memcpy(out, e, (size_t)(dc + dr) * sizeof(float));
        break;
    case DSACP_KV_BF16:
        k->bf16_row(e, dc + dr, out);
        break;
    case DSACP_KV_FP8: {
        float scales[64];
        memcpy(scales, e + dc, (size_t)(dc / 128) * sizeof(float));
        k->e4m3_row(e, scales, 128, dc, out);
        k->bf16_row(e + dc + (dc / 128) * (int64_t)sizeof(float), dr, out + dc);
        break;
    }
    }
}

void dsacp_kv_write_index(dsacp_kv_cache *c, int64_t layer, int64_t slot, const float *key)
{
    const int64_t B = c->block_size, di = c->di;
    int64_t block = slot / B, off = slot % B;
    uint8_t *base = c->index[layer] + block * B * c->index_bytes;
    if (!c->index_fp8) {
        memcpy(base + off * di * (int64_t)sizeof(float), key, (size_t)di * sizeof(float));
        return;
    }
    float scale;
    dsacp_quant_e4m3_groups(key, di, di, base + off * di, &scale);
    memcpy(base + B * di + off * (int64_t)sizeof(float), &scale, sizeof scale);
}

const void *dsacp_kv_index_block(const dsacp_kv_cache *c, int64_t layer, int64_t block,
                                 const float **scales)
{
    const int64_t B = c->block_size;
    const uint8_t *base = c->index[layer] + block * B * c->index_bytes;
    *scales = c->index_fp8 ? (const float *)(base + B * c->di) : NULL;
    return base;
}
