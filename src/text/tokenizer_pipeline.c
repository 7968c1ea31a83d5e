/* tokenizer_pipeline.c -- tokenizer.json's added tokens, normalizer, pre-tokenizer,
 * post-processor and decoder (docs/text.md lists what is implemented). */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "text/tokenizer_pipeline.h"

#include "core/core.h"

#include <pcre2.h>
#include <stdlib.h>
#include <string.h>

static bool flag(json_t *o, const char *name) { return json_is_true(json_object_get(o, name)); }

static int trie_init(text_trie *tr, size_t bytes)
{
    tr->terminal = malloc((bytes + 1) * sizeof *tr->terminal);
    if (!tr->terminal) return dsacp_error(DSACP_ENOMEM, "tokenizer: added tokens");
    tr->terminal[0] = -1;
    tr->n_nodes = 1;
    return text_u64_map_init(&tr->edges, bytes);
}

static void trie_add(text_trie *tr, const char *s, size_t len, int32_t index)
{
    uint64_t node = 0, child;
    for (size_t i = 0; i < len; i++) {
        uint64_t key = node << 8 | (uint8_t)s[i];
        if (!text_u64_map_get(&tr->edges, key, &child)) {
            child = (uint64_t)tr->n_nodes++;
            tr->terminal[child] = -1;
            text_u64_map_put(&tr->edges, key, child);
        }
        node = child;
    }
    if (tr->terminal[node] < 0) tr->terminal[node] = index;
    tr->any = true;
}

static int added_one(dsacp_tokenizer *t, const char *path, size_t i, json_t *a)
{
    json_t *content = json_object_get(a, "content");
    if (!json_is_string(content) || json_string_length(content) == 0)
        return dsacp_error(DSACP_EFORMAT, "%s: added_tokens[%zu].content is not a non-empty string", path, i);
    if (flag(a, "single_word"))
        return dsacp_error(DSACP_EUNSUPPORTED, "%s: added_tokens[%zu].single_word is true", path, i);
    int32_t id = (int32_t)json_integer_value(json_object_get(a, "id"));
    const char *s = json_string_value(content);
    size_t len = json_string_length(content);
    if (id < 0 || id >= t->n_ids) return dsacp_error(DSACP_EFORMAT, "%s: added_tokens[%zu].id out of range", path, i);
    free(t->tok_str[id]);
    t->tok_str[id] = malloc(len + 1);
    if (!t->tok_str[id]) return dsacp_error(DSACP_ENOMEM, "%s: added_tokens[%zu]", path, i);
    memcpy(t->tok_str[id], s, len + 1);
    t->tok_len[id] = (uint32_t)len;
    t->special[id] = flag(a, "special");
    t->added[i] = (text_added){.id = id, .lstrip = flag(a, "lstrip"), .rstrip = flag(a, "rstrip")};
    if (text_str_map_get(&t->str_ids, s, len) < 0) text_str_map_put(&t->str_ids, id);
    /* tokenizers' default for "normalized" is !special */
    json_t *norm = json_object_get(a, "normalized");
    bool normalized = norm ? json_is_true(norm) : !t->special[id];
    trie_add(normalized ? &t->trie_norm : &t->trie_raw, s, len, (int32_t)i);
    return DSACP_OK;
}

int text_added_read(dsacp_tokenizer *t, const char *path, json_t *added)
{
    size_t n = added ? json_array_size(added) : 0, bytes = 0, i;
    json_t *a;
    json_array_foreach(added, i, a) bytes += json_string_length(json_object_get(a, "content"));
    t->added = calloc(n + 1, sizeof *t->added);
    if (!t->added) return dsacp_error(DSACP_ENOMEM, "%s: added_tokens", path);
    t->n_added = (int64_t)n;
    int st = trie_init(&t->trie_raw, bytes);
    if (!st) st = trie_init(&t->trie_norm, bytes);
    json_array_foreach(added, i, a) {
        if (st) break;
        if (!json_is_object(a)) st = dsacp_error(DSACP_EFORMAT, "%s: added_tokens[%zu] is not an object", path, i);
        if (!st) st = added_one(t, path, i, a);
    }
    return st;
}

/* normalizer: none, or an empty Sequence (V3.2's). */
static int read_normalizer(const char *path, json_t *n)
{
    if (!n || json_is_null(n)) return DSACP_OK;
    const char *type = json_string_value(json_object_get(n, "type"));
    json_t *list = json_object_get(n, "normalizers");
    if (type && strcmp(type, "Sequence") == 0 && json_is_array(list) && json_array_size(list) == 0) return DSACP_OK;
    return dsacp_error(DSACP_EUNSUPPORTED, "%s: normalizer '%s' (only none or an empty Sequence)", path,
                       type ? type : "?");
}

static int compile_split(text_split *sp, const char *path, const char *pattern, size_t len, bool literal)
{
    int err;
    PCRE2_SIZE at;
    uint32_t opts = PCRE2_UTF | PCRE2_UCP | (literal ? PCRE2_LITERAL : 0);
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, len, opts, &err, &at, NULL);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        return dsacp_error(DSACP_EFORMAT, "%s: pre_tokenizer pattern at %zu: %s", path, (size_t)at, (char *)msg);
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* the interpreter when JIT is not available */
    sp->re = re;
    return DSACP_OK;
}

static int read_split(dsacp_tokenizer *t, const char *path, json_t *p)
{
    static const char *names[] = {"Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous"};
    if (t->n_splits == TEXT_MAX_SPLITS) return dsacp_error(DSACP_EUNSUPPORTED, "%s: more than %d Splits", path, TEXT_MAX_SPLITS);
    text_split *sp = &t->splits[t->n_splits];
    const char *b = json_string_value(json_object_get(p, "behavior"));
    size_t k = 0;
    while (k < 5 && !(b && strcmp(b, names[k]) == 0)) k++;
    if (k == 5) return dsacp_error(DSACP_EUNSUPPORTED, "%s: Split behavior '%s'", path, b ? b : "?");
    sp->behavior = (text_split_behavior)k;
    sp->invert = flag(p, "invert");
    json_t *pat = json_object_get(p, "pattern"), *re = json_object_get(pat, "Regex"), *lit = json_object_get(pat, "String");
    json_t *s = json_is_string(re) ? re : lit;
    if (!json_is_string(s)) return dsacp_error(DSACP_EFORMAT, "%s: Split pattern is not a Regex or String", path);
    int st = compile_split(sp, path, json_string_value(s), json_string_length(s), s == lit);
    if (!st) t->n_splits++;
    return st;
}

/* ByteLevel as a pre-tokenizer: without its regex and prefix space it only maps bytes, which
 * the BPE step does. */
static int read_byte_level_pre(dsacp_tokenizer *t, const char *path, json_t *p)
{
    if (flag(p, "add_prefix_space"))
        return dsacp_error(DSACP_EUNSUPPORTED, "%s: pre_tokenizer ByteLevel.add_prefix_space is true", path);
    if (json_object_get(p, "use_regex") && !flag(p, "use_regex")) return DSACP_OK;
    /* GPT-2's pattern, what ByteLevel applies with use_regex */
    static const char gpt2[] = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
    if (t->n_splits == TEXT_MAX_SPLITS) return dsacp_error(DSACP_EUNSUPPORTED, "%s: more than %d Splits", path, TEXT_MAX_SPLITS);
    t->splits[t->n_splits].behavior = TEXT_SPLIT_ISOLATED;
    int st = compile_split(&t->splits[t->n_splits], path, gpt2, sizeof gpt2 - 1, false);
    if (!st) t->n_splits++;
    return st;
}

static int read_pre(dsacp_tokenizer *t, const char *path, json_t *p, bool byte_level_seen)
{
    const char *type = json_string_value(json_object_get(p, "type"));
    if (!type) return dsacp_error(DSACP_EFORMAT, "%s: pre_tokenizer without a type", path);
    if (byte_level_seen) return dsacp_error(DSACP_EUNSUPPORTED, "%s: pre_tokenizer '%s' after ByteLevel", path, type);
    if (strcmp(type, "Split") == 0) return read_split(t, path, p);
    if (strcmp(type, "ByteLevel") == 0) return read_byte_level_pre(t, path, p);
    return dsacp_error(DSACP_EUNSUPPORTED, "%s: pre_tokenizer '%s' (Split, ByteLevel or a Sequence of them)", path, type);
}

/* A byte-level tokenizer: ByteLevel last (alone or ending a Sequence). */
static int read_pre_tokenizer(dsacp_tokenizer *t, const char *path, json_t *p)
{
    const char *type = json_string_value(json_object_get(p, "type"));
    json_t *list = json_object_get(p, "pretokenizers");
    if (type && strcmp(type, "Sequence") == 0) {
        size_t i, n = json_array_size(list);
        json_t *q;
        const char *last = n ? json_string_value(json_object_get(json_array_get(list, n - 1), "type")) : NULL;
        if (!last || strcmp(last, "ByteLevel") != 0)
            return dsacp_error(DSACP_EUNSUPPORTED, "%s: pre_tokenizer Sequence does not end with ByteLevel", path);
        json_array_foreach(list, i, q) {
            int st = read_pre(t, path, q, false);
            if (st) return st;
        }
        return DSACP_OK;
    }
    if (!type || strcmp(type, "ByteLevel") != 0)
        return dsacp_error(DSACP_EUNSUPPORTED, "%s: pre_tokenizer '%s' (ByteLevel or a Sequence ending with it)", path,
                           type ? type : "none");
    return read_pre(t, path, p, false);
}

/* TemplateProcessing's single template: special tokens around $A. */
static int read_template(dsacp_tokenizer *t, const char *path, json_t *p)
{
    json_t *single = json_object_get(p, "single"), *specials = json_object_get(p, "special_tokens"), *piece;
    bool after = false;
    size_t i;
    json_array_foreach(single, i, piece) {
        json_t *sp = json_object_get(piece, "SpecialToken");
        if (json_object_get(piece, "Sequence")) {
            after = true;
            continue;
        }
        json_t *ids = json_object_get(json_object_get(specials, json_string_value(json_object_get(sp, "id"))), "ids"), *id;
        size_t k;
        json_array_foreach(ids, k, id) {
            int *n = after ? &t->n_post_post : &t->n_post_pre;
            int64_t v = json_integer_value(id);
            if (*n == TEXT_MAX_POST || v < 0 || v >= t->n_ids)
                return dsacp_error(DSACP_EUNSUPPORTED, "%s: post_processor.special_tokens: bad ids", path);
            (after ? t->post_post : t->post_pre)[(*n)++] = (int32_t)v;
        }
    }
    if (!after) return dsacp_error(DSACP_EFORMAT, "%s: post_processor.single without $A", path);
    return DSACP_OK;
}

static int read_post_and_decoder(dsacp_tokenizer *t, const char *path, json_t *root)
{
    json_t *post = json_object_get(root, "post_processor"), *dec = json_object_get(root, "decoder");
    const char *type = json_string_value(json_object_get(post, "type"));
    int st = DSACP_OK;
    if (type && strcmp(type, "TemplateProcessing") == 0)
        st = read_template(t, path, post);
    else if (post && !json_is_null(post) && !(type && strcmp(type, "ByteLevel") == 0))
        st = dsacp_error(DSACP_EUNSUPPORTED, "%s: post_processor '%s' (ByteLevel or TemplateProcessing)", path,
                         type ? type : "?");
    const char *dtype = json_string_value(json_object_get(dec, "type"));
    if (!st && !(dtype && strcmp(dtype, "ByteLevel") == 0))
        st = dsacp_error(DSACP_EUNSUPPORTED, "%s: decoder '%s' (ByteLevel only)", path, dtype ? dtype : "none");
    return st;
}

int text_pipeline_read(dsacp_tokenizer *t, const char *path, json_t *root)
{
    int st = read_normalizer(path, json_object_get(root, "normalizer"));
    if (!st) st = read_pre_tokenizer(t, path, json_object_get(root, "pre_tokenizer"));
    if (!st) st = read_post_and_decoder(t, path, root);
    return st;
}

void text_pipeline_free(dsacp_tokenizer *t)
{
    for (int i = 0; i < t->n_splits; i++) pcre2_code_free(t->splits[i].re);
    t->n_splits = 0;
    text_u64_map_free(&t->trie_raw.edges);
    text_u64_map_free(&t->trie_norm.edges);
    free(t->trie_raw.terminal);
    free(t->trie_norm.terminal);
    free(t->added);
}
