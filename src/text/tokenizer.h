/* tokenizer.h -- the tokenizer's tables, shared by its files (docs/text.md):
 *   tokenizer_load.c    tokenizer.json into the tables below (jansson, PCRE2 compile)
 *   tokenizer_encode.c  added tokens, pre-tokenizer splits, byte-level BPE
 *   tokenizer_decode.c  the ByteLevel decoder, lossy UTF-8, streaming detokenization
 *   text_map.c          the two hash maps (strings -> id, u64 -> value) and UTF-8 helpers */
#ifndef DSACP_TEXT_TOKENIZER_H
#define DSACP_TEXT_TOKENIZER_H

#include "dsacp_text.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Open addressing, linear probing. A string map stores ids; the strings are the caller's. */
typedef struct text_str_map {
    int32_t *slots; /* id, -1 empty */
    size_t mask;
    char *const *keys;       /* keys[id] */
    const uint32_t *key_len; /* key_len[id] */
} text_str_map;
int text_str_map_init(text_str_map *m, size_t n, char *const *keys, const uint32_t *key_len);
/* Adds id (its key must not be present yet; keys[id] is the key). */
void text_str_map_put(text_str_map *m, int32_t id);
int32_t text_str_map_get(const text_str_map *m, const char *key, size_t len);
void text_str_map_free(text_str_map *m);

typedef struct text_u64_map {
    uint64_t *keys; /* UINT64_MAX empty */
    uint64_t *vals;
    size_t mask;
} text_u64_map;
int text_u64_map_init(text_u64_map *m, size_t n);
/* Puts or replaces key's value (the last put wins, as a Rust HashMap collected from a list);
 * false when the key was present. The map holds at most the n it was made for. */
bool text_u64_map_put(text_u64_map *m, uint64_t key, uint64_t val);
bool text_u64_map_get(const text_u64_map *m, uint64_t key, uint64_t *val);
void text_u64_map_free(text_u64_map *m);

/* Offset of the first byte that is not part of valid UTF-8, or len when all is valid. */
size_t text_utf8_invalid_at(const uint8_t *s, size_t len);
/* The code point at s[0..len) (valid UTF-8) and its byte count. */
uint32_t text_utf8_next(const uint8_t *s, size_t len, size_t *used);
/* Writes code point c (<= U+10FFFF) as UTF-8 into out[4]; returns the byte count. */
size_t text_utf8_put(uint32_t c, char *out);
/* Unicode White_Space (Rust's char::is_whitespace). */
bool text_is_whitespace(uint32_t c);

/* A pre-tokenizer Split (SplitDelimiterBehavior) */
typedef enum text_split_behavior {
    TEXT_SPLIT_REMOVED,
    TEXT_SPLIT_ISOLATED,
    TEXT_SPLIT_MERGED_PREV,
    TEXT_SPLIT_MERGED_NEXT,
    TEXT_SPLIT_CONTIGUOUS,
} text_split_behavior;

typedef struct text_split {
    void *re; /* pcre2_code_8 */
    text_split_behavior behavior;
    bool invert;
} text_split;

/* Added tokens matched before pre-tokenization: a byte trie in a u64 map ((node << 8 | byte) ->
 * child), terminal[node] = the token's index in `added` or -1. */
typedef struct text_added {
    int32_t id;
    bool lstrip, rstrip;
} text_added;

typedef struct text_trie {
    text_u64_map edges;
    int32_t *terminal;
    int64_t n_nodes;
    bool any;
} text_trie;

#define TEXT_MAX_SPLITS 8
#define TEXT_MAX_POST 8

struct dsacp_tokenizer {
    int64_t n_ids;           /* vocab size, added tokens included */
    char **tok_str;          /* [n_ids] the token as tokenizer.json spells it; NULL for an unused id */
    uint32_t *tok_len;       /* [n_ids] */
    uint8_t **tok_bytes;     /* [n_ids] the ByteLevel decoder's bytes of the token */
    uint32_t *tok_nbytes;    /* [n_ids] */
    uint32_t max_nbytes;     /* the longest token's bytes */
    uint8_t *special;        /* [n_ids] 1: a special added token */
    text_str_map str_ids;    /* token string -> id (vocabulary, then added tokens) */
    int32_t byte_id[256];    /* the vocabulary id of each byte's ByteLevel character, -1 if none */
    text_u64_map merges;     /* (left << 32 | right) -> (rank << 32 | merged id) */
    text_added *added;       /* [n_added] */
    int64_t n_added;
    text_trie trie_raw;      /* added tokens with normalized = false (matched first) */
    text_trie trie_norm;     /* normalized = true (matched in what is left) */
    text_split splits[TEXT_MAX_SPLITS];
    int n_splits;
    int32_t post_pre[TEXT_MAX_POST], post_post[TEXT_MAX_POST]; /* add_special: ids before/after */
    int n_post_pre, n_post_post;
};

/* The ByteLevel alphabet: the character (code point) byte b maps to, and back (-1: none). */
uint32_t text_byte_char(uint8_t b);
int text_char_byte(uint32_t c);

#endif
