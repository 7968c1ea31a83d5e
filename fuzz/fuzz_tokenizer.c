/* fuzz_tokenizer.c -- libFuzzer entry: the tokenizer must encode or refuse any bytes without
 * crashing. A small byte-level tokenizer with DeepSeek-V3.2's pre-tokenizer regexes and added
 * tokens is built once; invalid UTF-8 is DSACP_EINVAL, valid text decodes back to itself, and the
 * streamed text equals the decoded text. */
#include "dsacp_text.h"
#include "dsacp_util.h"
#include "text/tokenizer.h"

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *V32_SPLITS[] = {
    "\\p{N}{1,3}", "[\xe4\xb8\x80-\xe9\xbe\xa5\xe3\x81\x80-\xe3\x82\x9f\xe3\x82\xa0-\xe3\x83\xbf]+",
    ("[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| "
     "?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+")};

static json_t *token_json(int id, const char *content, bool special)
{
    return json_pack("{s:i, s:s, s:b, s:b, s:b, s:b, s:b}", "id", id, "content", content, "single_word", 0, "lstrip", 0,
                     "rstrip", 0, "normalized", !special, "special", special);
}

/* The 256 byte characters, a few merges, three added tokens, V3.2's pipeline. */
static json_t *tokenizer_json(void)
{
    json_t *vocab = json_object(), *pre = json_array();
    for (int b = 0; b < 256; b++) {
        char c[5] = {0};
        text_utf8_put(text_byte_char((uint8_t)b), c);
        json_object_set_new(vocab, c, json_integer(b));
    }
    const char *merged[] = {"\xc4\xa0t", "in", "th", "the", "\xc4\xa0the", "12", "\xc3\xa4\xc2\xbd"};
    json_t *merges = json_pack("[s,s,s,s,s,s,s]", "\xc4\xa0 t", "i n", "t h", "th e", "\xc4\xa0 the", "1 2", "\xc3\xa4 \xc2\xbd");
    for (int i = 0; i < 7; i++) json_object_set_new(vocab, merged[i], json_integer(256 + i));
    for (int i = 0; i < 3; i++)
        json_array_append_new(pre, json_pack("{s:s, s:{s:s}, s:s, s:b}", "type", "Split", "pattern", "Regex", V32_SPLITS[i],
                                             "behavior", "Isolated", "invert", 0));
    json_array_append_new(pre, json_pack("{s:s, s:b, s:b}", "type", "ByteLevel", "add_prefix_space", 0, "use_regex", 0));
    json_t *added = json_pack("[o,o,o]", token_json(300, "<\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>", true),
                              token_json(301, "<\xef\xbd\x9cUser\xef\xbd\x9c>", false), token_json(302, "<think>", false));
    return json_pack("{s:{s:s, s:[]}, s:{s:s, s:o}, s:{s:s}, s:{s:s}, s:o, s:{s:s, s:o, s:o}}", "normalizer", "type", "Sequence",
                     "normalizers", "pre_tokenizer", "type", "Sequence", "pretokenizers", pre, "post_processor", "type",
                     "ByteLevel", "decoder", "type", "ByteLevel", "added_tokens", added, "model", "type", "BPE", "vocab", vocab,
                     "merges", merges);
}

static dsacp_tokenizer *load_once(void)
{
    static dsacp_tokenizer *t;
    if (t) return t;
    char path[] = "/tmp/fuzz_tokenizer_XXXXXX";
    int fd = mkstemp(path);
    json_t *j = tokenizer_json();
    if (fd < 0 || !j || json_dumpfd(j, fd, 0) != 0) abort();
    close(fd);
    json_decref(j);
    if (dsacp_tokenizer_load(path, &t) != DSACP_OK) {
        fprintf(stderr, "%s\n", dsacp_last_error());
        abort();
    }
    unlink(path);
    return t;
}

/* Streams ids and compares with want[0..len). */
static void check_stream(const dsacp_tokenizer *t, const int32_t *ids, int64_t n, const char *want, size_t len)
{
    dsacp_detok *d = NULL;
    if (dsacp_detok_create(t, false, &d) != DSACP_OK) abort();
    char piece[64];
    size_t at = 0, got;
    for (int64_t i = 0; i <= n; i++) {
        int st = i < n ? dsacp_detok_push(d, ids[i], piece, sizeof piece, &got) : dsacp_detok_flush(d, piece, sizeof piece, &got);
        if (st != DSACP_OK || at + got > len || memcmp(want + at, piece, got) != 0) abort();
        at += got;
    }
    if (at != len) abort();
    dsacp_detok_free(d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const dsacp_tokenizer *t = load_once();
    int64_t cap = (int64_t)size + 1, n = 0;
    int32_t *ids = malloc((size_t)cap * sizeof *ids);
    char *back = malloc(size + 1);
    if (!ids || !back) abort();
    int st = dsacp_tokenizer_encode(t, (const char *)data, size, false, ids, cap, &n);
    bool valid = text_utf8_invalid_at(data, size) == size;
    if (st != (valid ? DSACP_OK : DSACP_EINVAL)) abort();
    if (valid) {
        size_t len = 0;
        if (dsacp_tokenizer_decode(t, ids, n, false, back, size + 1, &len) != DSACP_OK) abort();
        if (len != size || memcmp(back, data, size) != 0) abort();
        check_stream(t, ids, n, back, len);
    }
    free(ids);
    free(back);
    return 0;
}
