/* tokenizer_encode.c -- text to ids, in tokenizers' order (docs/text.md): added tokens with
 * normalized = false matched on the text, then the normalized ones in what is left; the
 * pre-tokenizer's Splits (PCRE2) on each remaining piece; byte-level BPE on each piece. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "text/tokenizer.h"

#include "core/core.h"

#include <pcre2.h>
#include <stdlib.h>
#include <string.h>

typedef struct range {
    size_t s, e;
} range;

typedef struct bpe_sym {
    int32_t id, prev, next, len;
} bpe_sym;

typedef struct bpe_merge {
    uint32_t rank, pos;
    int32_t id;
} bpe_merge;

typedef struct enc {
    const dsacp_tokenizer *t;
    const uint8_t *text;
    int32_t *ids;
    int64_t cap, n;
    range *pieces[2]; /* [3 * len + 8] each: a pass's input and output (a piece's empty parts
                       * stay until its behavior is applied) */
    bpe_sym *sym;     /* [len] */
    bpe_merge *heap;  /* [3 * len]: the first pairs and two per merge */
    size_t n_heap;
    pcre2_match_data *md;
} enc;

static void emit(enc *e, int32_t id)
{
    if (e->n < e->cap) e->ids[e->n] = id;
    e->n++;
}

static bool merge_before(const bpe_merge *a, const bpe_merge *b)
{
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static void heap_push(enc *e, bpe_merge m)
{
    size_t i = e->n_heap++;
    while (i > 0 && merge_before(&m, &e->heap[(i - 1) / 2])) {
        e->heap[i] = e->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    e->heap[i] = m;
}

static bpe_merge heap_pop(enc *e)
{
    bpe_merge top = e->heap[0], last = e->heap[--e->n_heap];
    size_t i = 0, n = e->n_heap;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && merge_before(&e->heap[c + 1], &e->heap[c])) c++;
        if (!merge_before(&e->heap[c], &last)) break;
        e->heap[i] = e->heap[c];
        i = c;
    }
    if (n > 0) e->heap[i] = last;
    return top;
}

/* Queues the merge of symbol `pos` with its next one, when the pair has a merge. */
static void queue_pair(enc *e, int32_t pos)
{
    int32_t next = e->sym[pos].next;
    uint64_t v;
    if (next < 0 || !text_u64_map_get(&e->t->merges, (uint64_t)e->sym[pos].id << 32 | (uint32_t)e->sym[next].id, &v)) return;
    heap_push(e, (bpe_merge){.rank = (uint32_t)(v >> 32), .pos = (uint32_t)pos, .id = (int32_t)(uint32_t)v});
}

/* tokenizers' BPE::merge_word: the lowest-ranked pair first (leftmost among equals); a queued
 * pair whose symbols changed since is skipped. */
static void bpe(enc *e, size_t s, size_t end)
{
    int32_t k = 0;
    for (size_t i = s; i < end; i++) {
        int32_t id = e->t->byte_id[e->text[i]];
        if (id < 0) continue; /* no unk: tokenizers drops the character */
        e->sym[k] = (bpe_sym){.id = id, .prev = k - 1, .next = -1, .len = 1};
        if (k > 0) e->sym[k - 1].next = k;
        k++;
    }
    e->n_heap = 0;
    for (int32_t i = 0; i + 1 < k; i++) queue_pair(e, i);
    while (e->n_heap > 0) {
        bpe_merge m = heap_pop(e);
        bpe_sym *a = &e->sym[m.pos];
        if (a->len == 0 || a->next < 0) continue;
        bpe_sym *b = &e->sym[a->next];
        uint64_t v;
        if (!text_u64_map_get(&e->t->merges, (uint64_t)a->id << 32 | (uint32_t)b->id, &v) || (int32_t)(uint32_t)v != m.id)
            continue;
        a->id = m.id;
        a->len += b->len;
        a->next = b->next;
        b->len = 0;
        if (a->next >= 0) e->sym[a->next].prev = (int32_t)m.pos;
        if (a->prev >= 0) queue_pair(e, a->prev);
        queue_pair(e, (int32_t)m.pos);
    }
    for (int32_t i = 0; i < k && k > 0; i = e->sym[i].next) {
        emit(e, e->sym[i].id);
        if (e->sym[i].next < 0) break;
    }
}

/* One part of a Split's partition of a piece, kept per tokenizers' SplitDelimiterBehavior:
 * `first` is where this piece's output starts in out, *pending a MergedWithNext match. */
static void split_part(const text_split *sp, range *out, size_t *n, size_t first, range r, bool is_match,
                       bool *prev_match, range *pending)
{
    bool extend = false;
    switch (sp->behavior) {
    case TEXT_SPLIT_REMOVED:
        if (is_match) return;
        break;
    case TEXT_SPLIT_ISOLATED:
        break;
    case TEXT_SPLIT_MERGED_PREV:
        extend = is_match && !*prev_match;
        break;
    case TEXT_SPLIT_CONTIGUOUS:
        extend = is_match == *prev_match;
        break;
    case TEXT_SPLIT_MERGED_NEXT:
        if (is_match) {
            if (pending->e > pending->s) out[(*n)++] = *pending;
            *pending = r;
            return;
        }
        if (pending->e > pending->s) r.s = pending->s;
        *pending = (range){0, 0};
        break;
    }
    *prev_match = is_match;
    if (extend && *n > first)
        out[*n - 1].e = r.e;
    else
        out[(*n)++] = r;
}

/* Splits piece r by sp's regex into out (tokenizers' find_matches over the onig crate's
 * find_iter: an empty match steps one character on and is dropped right after a match). */
static int split_piece(enc *e, const text_split *sp, range r, range *out, size_t *n)
{
    size_t first = *n, at = r.s, last_end = SIZE_MAX;
    bool prev_match = false;
    range pending = {0, 0};
    for (size_t start = 0; r.s + start <= r.e;) {
        int rc = pcre2_match(sp->re, e->text + r.s, r.e - r.s, start, PCRE2_NO_UTF_CHECK, e->md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) return dsacp_error(DSACP_EINVAL, "dsacp_tokenizer_encode: regex match failed (%d) at byte %zu", rc, r.s + start);
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(e->md);
        range m = {r.s + ov[0], r.s + ov[1]};
        start = ov[1];
        if (m.s == m.e) {
            size_t used = 1;
            if (m.e < r.e) text_utf8_next(e->text + m.e, r.e - m.e, &used);
            start += used;
            if (m.e == last_end) continue;
        }
        last_end = m.e;
        if (m.s > at) split_part(sp, out, n, first, (range){at, m.s}, sp->invert, &prev_match, &pending);
        split_part(sp, out, n, first, m, !sp->invert, &prev_match, &pending);
        at = m.e;
    }
    if (at < r.e) split_part(sp, out, n, first, (range){at, r.e}, sp->invert, &prev_match, &pending);
    if (pending.e > pending.s) out[(*n)++] = pending;
    size_t w = first; /* tokenizers keeps no empty piece */
    for (size_t i = first; i < *n; i++)
        if (out[i].e > out[i].s) out[w++] = out[i];
    *n = w;
    return DSACP_OK;
}

/* A stretch with no added token: the pre-tokenizer's splits, then BPE on each piece. */
static int encode_plain(enc *e, range r)
{
    if (r.e <= r.s) return DSACP_OK;
    range *in = e->pieces[0], *out = e->pieces[1];
    size_t n_in = 1;
    in[0] = r;
    for (int k = 0; k < e->t->n_splits; k++) {
        size_t n_out = 0;
        for (size_t i = 0; i < n_in; i++) {
            int st = split_piece(e, &e->t->splits[k], in[i], out, &n_out);
            if (st) return st;
        }
        range *x = in;
        in = out, out = x, n_in = n_out;
    }
    for (size_t i = 0; i < n_in; i++) bpe(e, in[i].s, in[i].e);
    return DSACP_OK;
}

/* The longest added token of the trie at text[pos..end): its index, and *len; -1 if none. */
static int32_t trie_match(const text_trie *tr, const uint8_t *s, size_t pos, size_t end, size_t *len)
{
    uint64_t node = 0;
    int32_t best = -1;
    for (size_t i = pos; i < end; i++) {
        if (!text_u64_map_get(&tr->edges, node << 8 | s[i], &node)) break;
        if (tr->terminal[node] >= 0) best = tr->terminal[node], *len = i + 1 - pos;
    }
    return best;
}

static size_t skip_space(const uint8_t *s, size_t pos, size_t end)
{
    size_t used;
    while (pos < end && text_is_whitespace(text_utf8_next(s + pos, end - pos, &used))) pos += used;
    return pos;
}

/* Leftmost-longest matches of the trie's tokens in r (lstrip / rstrip take the whitespace
 * beside them); what is between goes to the normalized tokens' pass, then to encode_plain. */
static int encode_added(enc *e, range r, bool raw)
{
    const text_trie *tr = raw ? &e->t->trie_raw : &e->t->trie_norm;
    size_t prev = r.s;
    for (size_t pos = r.s; tr->any && pos < r.e;) {
        size_t len = 0;
        int32_t k = trie_match(tr, e->text, pos, r.e, &len);
        if (k < 0) {
            pos++;
            continue;
        }
        const text_added *a = &e->t->added[k];
        size_t s = pos, end = pos + len;
        while (a->lstrip && s > prev && e->text[s - 1] < 0x80 && text_is_whitespace(e->text[s - 1])) s--; /* ASCII only */
        if (a->rstrip) end = skip_space(e->text, end, r.e);
        int st = raw ? encode_added(e, (range){prev, s}, false) : encode_plain(e, (range){prev, s});
        if (st) return st;
        emit(e, a->id);
        prev = pos = end;
    }
    return raw ? encode_added(e, (range){prev, r.e}, false) : encode_plain(e, (range){prev, r.e});
}

static int enc_init(enc *e, const dsacp_tokenizer *t, const char *text, size_t len)
{
    memset(e, 0, sizeof *e);
    e->t = t;
    e->text = (const uint8_t *)text;
    size_t n3;
    if (!dsacp_mul_ok(len + 3, 3, &n3) || len > INT32_MAX / 4)
        return dsacp_error(DSACP_ERANGE, "dsacp_tokenizer_encode: len %zu is too long", len);
    e->pieces[0] = malloc(n3 * sizeof(range));
    e->pieces[1] = malloc(n3 * sizeof(range));
    e->sym = malloc((len + 1) * sizeof(bpe_sym));
    e->heap = malloc(n3 * sizeof(bpe_merge));
    e->md = pcre2_match_data_create(1, NULL);
    if (!e->pieces[0] || !e->pieces[1] || !e->sym || !e->heap || !e->md)
        return dsacp_error(DSACP_ENOMEM, "dsacp_tokenizer_encode: scratch for %zu bytes", len);
    return DSACP_OK;
}

static void enc_free(enc *e)
{
    free(e->pieces[0]);
    free(e->pieces[1]);
    free(e->sym);
    free(e->heap);
    pcre2_match_data_free(e->md);
}

int dsacp_tokenizer_encode(const dsacp_tokenizer *t, const char *text, size_t len, bool add_special,
                           int32_t *ids, int64_t cap, int64_t *n)
{
    if (!t || (!text && len) || !n || cap < 0 || (!ids && cap > 0))
        return dsacp_error(DSACP_EINVAL, "dsacp_tokenizer_encode: t, text, n and ids (when cap > 0) must be non-NULL");
    *n = 0;
    size_t bad = text_utf8_invalid_at((const uint8_t *)text, len);
    if (bad < len) return dsacp_error(DSACP_EINVAL, "dsacp_tokenizer_encode: text is not UTF-8 at byte %zu", bad);
    enc e;
    int st = enc_init(&e, t, text, len);
    e.ids = ids;
    e.cap = cap;
    for (int i = 0; add_special && i < t->n_post_pre; i++) emit(&e, t->post_pre[i]);
    if (!st) st = encode_added(&e, (range){0, len}, true);
    for (int i = 0; add_special && i < t->n_post_post; i++) emit(&e, t->post_post[i]);
    enc_free(&e);
    if (st) return st;
    *n = e.n;
    if (e.n > cap) return dsacp_error(DSACP_ERANGE, "dsacp_tokenizer_encode: %lld ids need cap >= %lld", (long long)e.n, (long long)e.n);
    return DSACP_OK;
}
