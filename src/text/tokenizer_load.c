/* tokenizer_load.c -- tokenizer.json's BPE model and added tokens into the tables (tokenizer.h);
 * the pipeline around them (normalizer, pre-tokenizer, post-processor, decoder) is read by
 * tokenizer_pipeline.c. */
#include "text/tokenizer.h"
#include "text/tokenizer_pipeline.h"

#include "core/core.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#define TOKENIZER_MAX_BYTES ((size_t)1 << 30)
#define TOKENIZER_MAX_IDS ((int64_t)1 << 24)

/* The ByteLevel decoder's bytes of a token: each character's byte when every character is in
 * the ByteLevel alphabet, the token's own UTF-8 otherwise (added tokens such as <｜User｜>). */
static int token_bytes(dsacp_tokenizer *t, int32_t id)
{
    const uint8_t *s = (const uint8_t *)t->tok_str[id];
    size_t len = t->tok_len[id], n = 0;
    uint8_t *b = malloc(len + 1);
    if (!b) return dsacp_error(DSACP_ENOMEM, "tokenizer: token %d", id);
    for (size_t i = 0, used; i < len; i += used) {
        int byte = text_char_byte(text_utf8_next(s + i, len - i, &used));
        if (byte < 0) {
            n = len;
            memcpy(b, s, len);
            break;
        }
        b[n++] = (uint8_t)byte;
    }
    t->tok_bytes[id] = b;
    t->tok_nbytes[id] = (uint32_t)n;
    if (n > t->max_nbytes) t->max_nbytes = (uint32_t)n;
    return DSACP_OK;
}

static int set_token(dsacp_tokenizer *t, const char *path, int64_t id, const char *s, size_t len)
{
    if (id < 0 || id >= t->n_ids) return dsacp_error(DSACP_EFORMAT, "%s: token id %lld out of range", path, (long long)id);
    if (text_utf8_invalid_at((const uint8_t *)s, len) != len)
        return dsacp_error(DSACP_EFORMAT, "%s: token %lld is not UTF-8", path, (long long)id);
    free(t->tok_str[id]);
    free(t->tok_bytes[id]);
    t->tok_bytes[id] = NULL;
    t->tok_str[id] = malloc(len + 1);
    if (!t->tok_str[id]) return dsacp_error(DSACP_ENOMEM, "%s: token %lld", path, (long long)id);
    memcpy(t->tok_str[id], s, len);
    t->tok_str[id][len] = '\0';
    t->tok_len[id] = (uint32_t)len;
    return DSACP_OK;
}

static int get_int(const char *path, json_t *v, const char *what, int64_t *out)
{
    if (!json_is_integer(v)) return dsacp_error(DSACP_EFORMAT, "%s: %s is not an integer", path, what);
    *out = json_integer_value(v);
    return DSACP_OK;
}

/* n_ids: one past the largest id of the vocabulary and the added tokens. */
static int count_ids(const char *path, json_t *vocab, json_t *added, int64_t *n_ids)
{
    int64_t top = -1, id = 0;
    const char *key;
    json_t *v;
    json_object_foreach(vocab, key, v) {
        int st = get_int(path, v, "model.vocab's id", &id);
        if (st) return st;
        if (id > top) top = id;
    }
    size_t i;
    json_array_foreach(added, i, v) {
        int st = get_int(path, json_object_get(v, "id"), "added_tokens[].id", &id);
        if (st) return st;
        if (id > top) top = id;
    }
    if (top < 0 || top >= TOKENIZER_MAX_IDS)
        return dsacp_error(DSACP_EFORMAT, "%s: model.vocab: %lld ids (1 to %lld)", path, (long long)top + 1,
                           (long long)TOKENIZER_MAX_IDS);
    *n_ids = top + 1;
    return DSACP_OK;
}

static int alloc_tables(dsacp_tokenizer *t, int64_t n)
{
    t->n_ids = n;
    t->tok_str = calloc((size_t)n, sizeof *t->tok_str);
    t->tok_len = calloc((size_t)n, sizeof *t->tok_len);
    t->tok_bytes = calloc((size_t)n, sizeof *t->tok_bytes);
    t->tok_nbytes = calloc((size_t)n, sizeof *t->tok_nbytes);
    t->special = calloc((size_t)n, sizeof *t->special);
    if (!t->tok_str || !t->tok_len || !t->tok_bytes || !t->tok_nbytes || !t->special)
        return dsacp_error(DSACP_ENOMEM, "tokenizer: tables of %lld ids", (long long)n);
    return text_str_map_init(&t->str_ids, (size_t)n, t->tok_str, t->tok_len);
}

static int read_vocab(dsacp_tokenizer *t, const char *path, json_t *vocab)
{
    const char *key;
    json_t *v;
    json_object_foreach(vocab, key, v) {
        int st = set_token(t, path, json_integer_value(v), key, strlen(key));
        if (st) return st;
    }
    return DSACP_OK;
}

/* A merge "a b" (or ["a", "b"]) as the ids of a, b and a + b. */
static int merge_ids(dsacp_tokenizer *t, const char *path, size_t rank, json_t *m, int32_t ids[3])
{
    const char *a = NULL, *b = NULL;
    size_t la = 0, lb = 0;
    if (json_is_string(m)) {
        a = json_string_value(m);
        const char *sp = strchr(a, ' ');
        if (sp && !strchr(sp + 1, ' ')) la = (size_t)(sp - a), b = sp + 1, lb = strlen(b);
    } else if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
               json_is_string(json_array_get(m, 1))) {
        a = json_string_value(json_array_get(m, 0)), la = strlen(a);
        b = json_string_value(json_array_get(m, 1)), lb = strlen(b);
    }
    if (!b) return dsacp_error(DSACP_EFORMAT, "%s: model.merges[%zu] is not a pair of tokens", path, rank);
    char *ab = malloc(la + lb + 1);
    if (!ab) return dsacp_error(DSACP_ENOMEM, "%s: model.merges[%zu]", path, rank);
    memcpy(ab, a, la);
    memcpy(ab + la, b, lb);
    ids[0] = text_str_map_get(&t->str_ids, a, la);
    ids[1] = text_str_map_get(&t->str_ids, b, lb);
    ids[2] = text_str_map_get(&t->str_ids, ab, la + lb);
    free(ab);
    if (ids[0] < 0 || ids[1] < 0 || ids[2] < 0)
        return dsacp_error(DSACP_EFORMAT, "%s: model.merges[%zu]: a token not in model.vocab", path, rank);
    return DSACP_OK;
}

static int read_merges(dsacp_tokenizer *t, const char *path, json_t *merges)
{
    if (!json_is_array(merges)) return dsacp_error(DSACP_EFORMAT, "%s: model.merges is not an array", path);
    int st = text_u64_map_init(&t->merges, json_array_size(merges));
    size_t i;
    json_t *m;
    json_array_foreach(merges, i, m) {
        int32_t ids[3] = {-1, -1, -1};
        if (st || (st = merge_ids(t, path, i, m, ids))) return st;
        text_u64_map_put(&t->merges, (uint64_t)ids[0] << 32 | (uint32_t)ids[1], (uint64_t)i << 32 | (uint32_t)ids[2]);
    }
    return st;
}

/* model: BPE without dropout, unk, prefixes or suffixes (what byte-level files use). */
static int check_model(const char *path, json_t *model)
{
    const char *type = json_string_value(json_object_get(model, "type"));
    if (!type || strcmp(type, "BPE") != 0)
        return dsacp_error(DSACP_EUNSUPPORTED, "%s: model.type '%s' (BPE only)", path, type ? type : "?");
    const char *unset[] = {"dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix"};
    for (size_t i = 0; i < sizeof unset / sizeof unset[0]; i++) {
        json_t *v = json_object_get(model, unset[i]);
        if (v && !json_is_null(v)) return dsacp_error(DSACP_EUNSUPPORTED, "%s: model.%s is set", path, unset[i]);
    }
    const char *off[] = {"byte_fallback", "ignore_merges", "fuse_unk"};
    for (size_t i = 0; i < sizeof off / sizeof off[0]; i++)
        if (json_is_true(json_object_get(model, off[i])))
            return dsacp_error(DSACP_EUNSUPPORTED, "%s: model.%s is true", path, off[i]);
    if (!json_is_object(json_object_get(model, "vocab")))
        return dsacp_error(DSACP_EFORMAT, "%s: model.vocab is not an object", path);
    return DSACP_OK;
}

/* The tables of every id: strings (added tokens replace the vocabulary's spelling of an id, as
 * tokenizers' id_to_token looks them up first), the string map, the decoder's bytes. */
static int read_tokens(dsacp_tokenizer *t, const char *path, json_t *root)
{
    json_t *model = json_object_get(root, "model"), *added = json_object_get(root, "added_tokens");
    if (!json_is_object(model)) return dsacp_error(DSACP_EFORMAT, "%s: no model object", path);
    if (added && !json_is_array(added)) return dsacp_error(DSACP_EFORMAT, "%s: added_tokens is not an array", path);
    int64_t n = 0;
    int st = check_model(path, model);
    if (!st) st = count_ids(path, json_object_get(model, "vocab"), added, &n);
    if (!st) st = alloc_tables(t, n);
    if (!st) st = read_vocab(t, path, json_object_get(model, "vocab"));
    if (!st) st = text_added_read(t, path, added);
    for (int32_t id = 0; !st && id < t->n_ids; id++)
        if (t->tok_str[id] && text_str_map_get(&t->str_ids, t->tok_str[id], t->tok_len[id]) < 0)
            text_str_map_put(&t->str_ids, id);
    for (int32_t id = 0; !st && id < t->n_ids; id++)
        if (t->tok_str[id]) st = token_bytes(t, id);
    if (!st) st = read_merges(t, path, json_object_get(model, "merges"));
    for (int b = 0; !st && b < 256; b++) {
        char c[4];
        size_t len = text_utf8_put(text_byte_char((uint8_t)b), c);
        t->byte_id[b] = text_str_map_get(&t->str_ids, c, len);
    }
    return st;
}

int dsacp_tokenizer_load(const char *path, dsacp_tokenizer **out)
{
    if (!path || !out) return dsacp_error(DSACP_EINVAL, "dsacp_tokenizer_load: path and out must be non-NULL");
    *out = NULL;
    char *text;
    size_t len;
    int st = dsacp_read_file(path, &text, &len, TOKENIZER_MAX_BYTES);
    if (st) return st;
    json_error_t jerr;
    json_t *root = json_loadb(text, len, 0, &jerr);
    dsacp_free(text);
    if (!root) return dsacp_error(DSACP_EFORMAT, "%s: line %d: %s", path, jerr.line, jerr.text);
    dsacp_tokenizer *t = calloc(1, sizeof *t);
    if (!t) st = dsacp_error(DSACP_ENOMEM, "%s: the tokenizer", path);
    if (!st) st = read_tokens(t, path, root);
    if (!st) st = text_pipeline_read(t, path, root);
    json_decref(root);
    if (st) {
        dsacp_tokenizer_free(t);
        return st;
    }
    *out = t;
    return DSACP_OK;
}

void dsacp_tokenizer_free(dsacp_tokenizer *t)
{
    if (!t) return;
    for (int64_t i = 0; t->tok_str && i < t->n_ids; i++) {
        free(t->tok_str[i]);
        free(t->tok_bytes[i]);
    }
    free(t->tok_str);
    free(t->tok_len);
    free(t->tok_bytes);
    free(t->tok_nbytes);
    free(t->special);
    text_str_map_free(&t->str_ids);
    text_u64_map_free(&t->merges);
    text_pipeline_free(t);
    free(t);
}

int64_t dsacp_tokenizer_vocab_size(const dsacp_tokenizer *t) { return t ? t->n_ids : 0; }

int32_t dsacp_tokenizer_token_id(const dsacp_tokenizer *t, const char *token)
{
    if (!t || !token) return -1;
    return text_str_map_get(&t->str_ids, token, strlen(token));
}
