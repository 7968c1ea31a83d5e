/* kv_cache.c -- block pool, block tables and the per-dtype row encoders of the paged caches. */
#include "cache/kv_cache.h"
#include "kernels/kernels.h"
#include "numerics/numerics.h"

#include <math.h>
#include <stdlib.h>
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
    dsacp_kv_cache *c = calloc(1, sizeof *c);
    if (!c) return dsacp_error(DSACP_ENOMEM, "out of memory");
    c->num_layers = num_layers;
    c->num_blocks = num_blocks;
    c->block_size = block_size;
    c->dc = cfg->kv_lora_rank;
    c->dr = cfg->qk_rope_head_dim;
    c->di = cfg->index_head_dim;
    c->mla_dtype = mla_dtype;
    c->index_fp8 = index_fp8;
    c->mla_bytes = dsacp_mla_cache_bytes_per_token(cfg, mla_dtype);
    c->index_bytes = dsacp_index_cache_bytes_per_token(cfg, index_fp8 ? DSACP_KV_FP8 : DSACP_KV_F32);
    c->mla = calloc((size_t)num_layers, sizeof *c->mla);
    c->index = calloc((size_t)num_layers, sizeof *c->index);
    c->free_list = malloc((size_t)num_blocks * sizeof *c->free_list);
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
    free(c->mla);
    free(c->index);
    free(c->free_list);
    free(c);
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
        int32_t *b = realloc(seq->blocks, (size_t)cap * sizeof *b);
        if (!b) return dsacp_error(DSACP_ENOMEM, "out of memory growing a block table");
        seq->blocks = b;
        seq->cap = cap;
    }
    for (int64_t i = 0; i < extra; i++) seq->blocks[seq->num_blocks++] = c->free_list[--c->num_free];
    return DSACP_OK;
}

void dsacp_kv_release(dsacp_kv_cache *c, dsacp_kv_seq *seq)
{
    for (int64_t i = seq->num_blocks - 1; i >= 0; i--) c->free_list[c->num_free++] = seq->blocks[i];
    free(seq->blocks);
    memset(seq, 0, sizeof *seq);
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
        memcpy(e, latent, (size_t)dc * 4);
        memcpy(e + dc * 4, k_pe, (size_t)dr * 4);
        break;
    case DSACP_KV_BF16: {
        uint16_t v[1024];
        for (int64_t i = 0; i < dc + dr; i++) v[i] = dsacp_f32_to_bf16(i < dc ? latent[i] : k_pe[i - dc]);
        memcpy(e, v, (size_t)(dc + dr) * 2);
        break;
    }
    case DSACP_KV_FP8: {
        float scales[64];
        dsacp_quant_e4m3_groups(latent, dc, 128, e, scales);
        memcpy(e + dc, scales, (size_t)(dc / 128) * 4);
        uint16_t v[512];
        for (int64_t i = 0; i < dr; i++) v[i] = dsacp_f32_to_bf16(k_pe[i]);
        memcpy(e + dc + (dc / 128) * 4, v, (size_t)dr * 2);
        break;
    }
    }
}

#if defined(__x86_64__)
#include <immintrin.h>
#define KV_T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))

/* Whether the AVX-512 row decoders may run: the kernels' ISA choice (dsacp_isa_active, which
 * honours DSACP_ISA and dsacp_isa_set), never a probe of its own. */
static bool kv_simd(void) { return dsacp_isa_active() == DSACP_ISA_AVX512; }

/* n bf16 -> f32 (exact). */
KV_T512 static void kv_bf16_row(const uint8_t *src, int64_t n, float *out)
{
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1);
        __m512i v = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, src + 2 * i));
        _mm512_mask_storeu_ps(out + i, m, _mm512_castsi512_ps(_mm512_slli_epi32(v, 16)));
    }
}

/* dc e4m3 bytes times their group-of-128 scales: bit placement gives value * 2^-120 exactly, one
 * multiply by scale * 2^120 (exact while |scale| < 2^7) rounds once -- the same float as
 * dsacp_e4m3_to_f32(b) * scale. false (nothing written) when a scale is out of that range. */
KV_T512 static bool kv_fp8_row(const uint8_t *e, const float *scales, int64_t dc, float *out)
{
    for (int64_t g = 0; g < dc / 128; g++)
        if (!(fabsf(scales[g]) < 0x1p7f)) return false;
    const __m512i em = _mm512_set1_epi32(0x07F00000);
    for (int64_t i = 0; i < dc; i += 16) {
        __m512i v = _mm512_slli_epi32(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(e + i))), 20);
        const __mmask16 nan = _mm512_cmpeq_epi32_mask(_mm512_and_si512(v, em), em);
        v = _mm512_and_si512(v, _mm512_set1_epi32((int)0x87F00000u));
        v = _mm512_mask_mov_epi32(v, nan, _mm512_set1_epi32(0x7FC00000));
        _mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_castsi512_ps(v), _mm512_set1_ps(scales[i / 128] * 0x1p120f)));
    }
    return true;
}
#endif

dsacp_isa dsacp_kv_decode_isa(void)
{
#if defined(__x86_64__)
    if (kv_simd()) return DSACP_ISA_AVX512;
#endif
    return DSACP_ISA_SCALAR;
}

void dsacp_kv_read_mla(const dsacp_kv_cache *c, int64_t layer, int64_t slot, float *out)
{
    const uint8_t *e = c->mla[layer] + slot * c->mla_bytes;
    const int64_t dc = c->dc, dr = c->dr;
#if defined(__x86_64__)
    /* The SIMD decoders give the scalar code's floats bit for bit. */
    if (c->mla_dtype == DSACP_KV_BF16 && kv_simd()) {
        kv_bf16_row(e, dc + dr, out);
        return;
    }
    if (c->mla_dtype == DSACP_KV_FP8 && kv_simd()) {
        float scales[64];
        memcpy(scales, e + dc, (size_t)(dc / 128) * 4);
        if (kv_fp8_row(e, scales, dc, out)) {
            kv_bf16_row(e + dc + (dc / 128) * 4, dr, out + dc);
            return;
        }
    }
#endif
    switch (c->mla_dtype) {
    case DSACP_KV_F32:
        memcpy(out, e, (size_t)(dc + dr) * 4);
        break;
    case DSACP_KV_BF16:
        for (int64_t i = 0; i < dc + dr; i++) {
            uint16_t v;
            memcpy(&v, e + 2 * i, 2);
            out[i] = dsacp_bf16_to_f32(v);
        }
        break;
    case DSACP_KV_FP8: {
        const float *lut = dsacp_e4m3_table();
        float scales[64];
        memcpy(scales, e + dc, (size_t)(dc / 128) * 4);
        for (int64_t i = 0; i < dc; i++) out[i] = lut[e[i]] * scales[i / 128];
        const uint8_t *r = e + dc + (dc / 128) * 4;
        for (int64_t i = 0; i < dr; i++) {
            uint16_t v;
            memcpy(&v, r + 2 * i, 2);
            out[dc + i] = dsacp_bf16_to_f32(v);
        }
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
        memcpy(base + off * di * 4, key, (size_t)di * 4);
        return;
    }
    float scale;
    dsacp_quant_e4m3_groups(key, di, di, base + off * di, &scale);
    memcpy(base + B * di + off * 4, &scale, 4);
}

const void *dsacp_kv_index_block(const dsacp_kv_cache *c, int64_t layer, int64_t block,
                                 const float **scales)
{
    const int64_t B = c->block_size;
    const uint8_t *base = c->index[layer] + block * B * c->index_bytes;
    *scales = c->index_fp8 ? (const float *)(base + B * c->di) : NULL;
    return base;
}
