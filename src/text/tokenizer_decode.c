/* tokenizer_decode.c -- ids to text: the ByteLevel decoder (each token's bytes), then the bytes
 * as UTF-8 with U+FFFD for each maximal invalid subpart (Rust's String::from_utf8_lossy, what
 * tokenizers does); and the streaming form, which holds back an unfinished character. */
#include "text/tokenizer.h"

#include "core/core.h"

#include <stdlib.h>
#include <string.h>

static const char REPLACEMENT[] = "\xef\xbf\xbd";

/* The number of bytes of the longest valid UTF-8 prefix of a character at b[0..n) (1 for a
 * byte that cannot start one), and in *need the character's full length (0: invalid start). */
static size_t valid_prefix(const uint8_t *b, size_t n, size_t *need)
{
    uint8_t c = b[0];
    *need = c < 0x80 ? 1 : c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
    if (*need <= 1) return 1;
    uint8_t lo = c == 0xe0 ? 0xa0 : c == 0xf0 ? 0x90 : 0x80, hi = c == 0xed ? 0x9f : c == 0xf4 ? 0x8f : 0xbf;
    size_t i = 1;
    if (i < n && b[1] >= lo && b[1] <= hi) {
        i++;
        while (i < *need && i < n && (b[i] & 0xc0) == 0x80) i++;
    }
    return i;
}

static void put(char *out, size_t cap, size_t *len, const void *s, size_t n)
{
    if (*len + n < cap) memcpy(out + *len, s, n);
    *len += n;
}

/* Writes b[0..n) lossily to out (whatever fits of *len bytes); returns the bytes consumed:
 * all of them when final, else all but an unfinished character at the end. */
static size_t lossy(const uint8_t *b, size_t n, bool final, char *out, size_t cap, size_t *len)
{
    size_t i = 0;
    while (i < n) {
        size_t need, got = valid_prefix(b + i, n - i, &need);
        if (need != 0 && got == need) {
            put(out, cap, len, b + i, got);
        } else {
            if (!final && need > got && i + got == n) break; /* may still complete */
            put(out, cap, len, REPLACEMENT, 3);
        }
        i += got;
    }
    return i;
}

static int check_id(const dsacp_tokenizer *t, int32_t id, int64_t index, const char *fn)
{
    if (id < 0 || id >= t->n_ids || !t->tok_bytes[id])
        return dsacp_error(DSACP_EINVAL, "%s: ids[%lld] = %d is not a token id", fn, (long long)index, id);
    return DSACP_OK;
}

int dsacp_tokenizer_decode(const dsacp_tokenizer *t, const int32_t *ids, int64_t n, bool skip_special,
                           char *out, size_t cap, size_t *len)
{
    if (!t || (!ids && n) || n < 0 || !len || (!out && cap))
        return dsacp_error(DSACP_EINVAL, "dsacp_tokenizer_decode: t, ids, len and out (when cap > 0) must be non-NULL");
    *len = 0;
    size_t total = 0;
    for (int64_t i = 0; i < n; i++) {
        int st = check_id(t, ids[i], i, "dsacp_tokenizer_decode");
        if (st) return st;
        if (!(skip_special && t->special[ids[i]])) total += t->tok_nbytes[ids[i]];
    }
    uint8_t *bytes = malloc(total + 1);
    if (!bytes) return dsacp_error(DSACP_ENOMEM, "dsacp_tokenizer_decode: %zu bytes", total);
    size_t at = 0;
    for (int64_t i = 0; i < n; i++)
        if (!(skip_special && t->special[ids[i]])) {
            memcpy(bytes + at, t->tok_bytes[ids[i]], t->tok_nbytes[ids[i]]);
            at += t->tok_nbytes[ids[i]];
        }
    lossy(bytes, total, true, out, cap, len);
    free(bytes);
    if (*len >= cap) return dsacp_error(DSACP_ERANGE, "dsacp_tokenizer_decode: the text needs cap >= %zu", *len + 1);
    out[*len] = '\0';
    return DSACP_OK;
}

struct dsacp_detok {
    const dsacp_tokenizer *t;
    bool skip_special;
    uint8_t held[4]; /* an unfinished character (at most 3 bytes) */
    size_t n_held;
    uint8_t *buf; /* held + a token: max_nbytes + 4 */
};

int dsacp_detok_create(const dsacp_tokenizer *t, bool skip_special, dsacp_detok **out)
{
    if (!t || !out) return dsacp_error(DSACP_EINVAL, "dsacp_detok_create: t and out must be non-NULL");
    dsacp_detok *d = calloc(1, sizeof *d);
    size_t longest = t->max_nbytes;
    if (d) d->buf = malloc(longest + sizeof d->held);
    if (!d || !d->buf) {
        dsacp_detok_free(d);
        return dsacp_error(DSACP_ENOMEM, "dsacp_detok_create");
    }
    d->t = t;
    d->skip_special = skip_special;
    *out = d;
    return DSACP_OK;
}

/* The held bytes and `extra` decoded; kept only when the text fits out. */
static int detok_emit(dsacp_detok *d, const uint8_t *extra, size_t n_extra, bool final, char *out, size_t cap,
                      size_t *len, const char *fn)
{
    if (!len || (!out && cap)) return dsacp_error(DSACP_EINVAL, "%s: len and out (when cap > 0) must be non-NULL", fn);
    *len = 0;
    memcpy(d->buf, d->held, d->n_held);
    if (n_extra) memcpy(d->buf + d->n_held, extra, n_extra);
    size_t n = d->n_held + n_extra, used = lossy(d->buf, n, final, out, cap, len);
    if (*len >= cap) return dsacp_error(DSACP_ERANGE, "%s: the text needs cap >= %zu", fn, *len + 1);
    out[*len] = '\0';
    d->n_held = n - used;
    memmove(d->held, d->buf + used, d->n_held);
    return DSACP_OK;
}

int dsacp_detok_push(dsacp_detok *d, int32_t id, char *out, size_t cap, size_t *len)
{
    if (!d) return dsacp_error(DSACP_EINVAL, "dsacp_detok_push: d must be non-NULL");
    int st = check_id(d->t, id, 0, "dsacp_detok_push");
    if (st) return st;
    bool skip = d->skip_special && d->t->special[id];
    return detok_emit(d, d->t->tok_bytes[id], skip ? 0 : d->t->tok_nbytes[id], false, out, cap, len, "dsacp_detok_push");
}

int dsacp_detok_flush(dsacp_detok *d, char *out, size_t cap, size_t *len)
{
    if (!d) return dsacp_error(DSACP_EINVAL, "dsacp_detok_flush: d must be non-NULL");
    return detok_emit(d, NULL, 0, true, out, cap, len, "dsacp_detok_flush");
}

void dsacp_detok_free(dsacp_detok *d)
{
    if (!d) return;
    free(d->buf);
    free(d);
}
