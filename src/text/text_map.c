/* text_map.c -- the tokenizer's hash maps, UTF-8 helpers and the ByteLevel alphabet. */
#include "text/tokenizer.h"

#include "core/core.h"

#include <stdlib.h>
#include <string.h>

static size_t table_size(size_t n)
{
    size_t s = 16;
    while (s < n * 2 + 1) s *= 2;
    return s;
}

static uint64_t hash_bytes(const char *s, size_t len)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < len; i++) h = (h ^ (uint8_t)s[i]) * 1099511628211ull;
    return h;
}

static uint64_t hash_u64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return x;
}

int text_str_map_init(text_str_map *m, size_t n, char *const *keys, const uint32_t *key_len)
{
    m->mask = table_size(n) - 1;
    m->slots = malloc((m->mask + 1) * sizeof *m->slots);
    if (!m->slots) return dsacp_error(DSACP_ENOMEM, "tokenizer: a map of %zu tokens", n);
    memset(m->slots, 0xff, (m->mask + 1) * sizeof *m->slots);
    m->keys = keys;
    m->key_len = key_len;
    return DSACP_OK;
}

void text_str_map_put(text_str_map *m, int32_t id)
{
    size_t i = hash_bytes(m->keys[id], m->key_len[id]) & m->mask;
    while (m->slots[i] >= 0) i = (i + 1) & m->mask;
    m->slots[i] = id;
}

int32_t text_str_map_get(const text_str_map *m, const char *key, size_t len)
{
    if (!m->slots) return -1;
    for (size_t i = hash_bytes(key, len) & m->mask;; i = (i + 1) & m->mask) {
        int32_t id = m->slots[i];
        if (id < 0) return -1;
        if (m->key_len[id] == len && memcmp(m->keys[id], key, len) == 0) return id;
    }
}

void text_str_map_free(text_str_map *m)
{
    free(m->slots);
    m->slots = NULL;
}

int text_u64_map_init(text_u64_map *m, size_t n)
{
    m->mask = table_size(n) - 1;
    m->keys = malloc((m->mask + 1) * sizeof *m->keys);
    m->vals = malloc((m->mask + 1) * sizeof *m->vals);
    if (!m->keys || !m->vals) {
        text_u64_map_free(m);
        return dsacp_error(DSACP_ENOMEM, "tokenizer: a map of %zu entries", n);
    }
    memset(m->keys, 0xff, (m->mask + 1) * sizeof *m->keys);
    return DSACP_OK;
}

bool text_u64_map_put(text_u64_map *m, uint64_t key, uint64_t val)
{
    size_t i = hash_u64(key) & m->mask;
    while (m->keys[i] != UINT64_MAX && m->keys[i] != key) i = (i + 1) & m->mask;
    bool fresh = m->keys[i] == UINT64_MAX;
    m->keys[i] = key;
    m->vals[i] = val;
    return fresh;
}

bool text_u64_map_get(const text_u64_map *m, uint64_t key, uint64_t *val)
{
    if (!m->keys) return false;
    for (size_t i = hash_u64(key) & m->mask; m->keys[i] != UINT64_MAX; i = (i + 1) & m->mask)
        if (m->keys[i] == key) {
            *val = m->vals[i];
            return true;
        }
    return false;
}

void text_u64_map_free(text_u64_map *m)
{
    free(m->keys);
    free(m->vals);
    m->keys = m->vals = NULL;
}

/* The length of the UTF-8 sequence starting at s[0..len), or 0 when it is not valid there. */
static size_t utf8_seq(const uint8_t *s, size_t len)
{
    uint8_t b = s[0];
    if (b < 0x80) return 1;
    size_t n = b >= 0xc2 && b <= 0xdf ? 2 : b >= 0xe0 && b <= 0xef ? 3 : b >= 0xf0 && b <= 0xf4 ? 4 : 0;
    if (n == 0 || len < n) return 0;
    uint8_t lo = 0x80, hi = 0xbf; /* the second byte's range (no overlongs, surrogates, > U+10FFFF) */
    if (b == 0xe0) lo = 0xa0;
    if (b == 0xed) hi = 0x9f;
    if (b == 0xf0) lo = 0x90;
    if (b == 0xf4) hi = 0x8f;
    if (s[1] < lo || s[1] > hi) return 0;
    for (size_t i = 2; i < n; i++)
        if ((s[i] & 0xc0) != 0x80) return 0;
    return n;
}

size_t text_utf8_invalid_at(const uint8_t *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        size_t n = utf8_seq(s + i, len - i);
        if (n == 0) return i;
        i += n;
    }
    return len;
}

uint32_t text_utf8_next(const uint8_t *s, size_t len, size_t *used)
{
    size_t n = utf8_seq(s, len);
    if (n <= 1) {
        *used = 1;
        return s[0];
    }
    uint32_t c = s[0] & (0x7f >> n);
    for (size_t i = 1; i < n; i++) c = c << 6 | (s[i] & 0x3f);
    *used = n;
    return c;
}

bool text_is_whitespace(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0d) || c == 0x20 || c == 0x85 || c == 0xa0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f ||
           c == 0x3000;
}

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the others for
 * U+0100 onwards in byte order. */
static bool byte_prints(unsigned b) { return (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || b >= 0xae; }

uint32_t text_byte_char(uint8_t b)
{
    if (byte_prints(b)) return b;
    uint32_t n = 0;
    for (unsigned i = 0; i < b; i++)
        if (!byte_prints(i)) n++;
    return 0x100 + n;
}

int text_char_byte(uint32_t c)
{
    if (c < 0x100) return byte_prints(c) ? (int)c : -1;
    uint32_t n = 0;
    for (unsigned i = 0; i < 256; i++)
        if (!byte_prints(i) && n++ == c - 0x100) return (int)i;
    return -1;
}

size_t text_utf8_put(uint32_t c, char *out)
{
    if (c < 0x80) {
        out[0] = (char)c;
        return 1;
    }
    if (c < 0x800) {
        out[0] = (char)(0xc0 | c >> 6);
        out[1] = (char)(0x80 | (c & 0x3f));
        return 2;
    }
    if (c < 0x10000) {
        out[0] = (char)(0xe0 | c >> 12);
        out[1] = (char)(0x80 | (c >> 6 & 0x3f));
        out[2] = (char)(0x80 | (c & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | c >> 18);
    out[1] = (char)(0x80 | (c >> 12 & 0x3f));
    out[2] = (char)(0x80 | (c >> 6 & 0x3f));
    out[3] = (char)(0x80 | (c & 0x3f));
    return 4;
}
