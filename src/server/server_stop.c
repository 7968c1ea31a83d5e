/*
 * server_stop.c -- stop strings over streamed text (server.h).
 *
 * Each stop string runs a Knuth-Morris-Pratt matcher over the bytes as they arrive: its state is
 * the length of the longest prefix of the string that the text ends with. The first stop string
 * to complete ends the text (when several complete at the same byte, the longest wins): the text
 * before it is released, it and everything after are dropped. Otherwise the text is released
 * except its last max(state) bytes, which might still begin a stop string. The result depends
 * only on the whole text, never on how it was split into pushes; a held suffix starts where a
 * stop string does, so with UTF-8 text and stop strings it never splits a character.
 */
#include "server/server.h"

#include <stdlib.h>
#include <string.h>

typedef struct stop_string {
    char *s;
    size_t len;
    size_t *fail;   /* fail[i]: the longest proper border of s[0..i] (KMP's failure function) */
    size_t state;   /* the longest prefix of s the text now ends with */
} stop_string;

struct oai_stop {
    stop_string *stops;
    int64_t n;
    char *buf;       /* the held bytes, then the pushed ones */
    size_t held;     /* held bytes at the start of buf */
    size_t cap;
    char *out;       /* the released bytes of the last call */
    size_t out_cap;
    bool done;       /* a stop string matched */
};

static int stop_string_init(stop_string *t, const char *s)
{
    t->len = strlen(s);
    if (t->len == 0)
        return dsacp_error(DSACP_EINVAL, "stop: an empty stop string");
    t->s = malloc(t->len + 1);
    t->fail = malloc(t->len * sizeof(size_t));
    if (!t->s || !t->fail)
        return dsacp_error(DSACP_ENOMEM, "stop: %zu bytes", t->len);
    memcpy(t->s, s, t->len + 1);
    t->fail[0] = 0;
    for (size_t i = 1, k = 0; i < t->len; i++) {
        while (k > 0 && s[i] != s[k])
            k = t->fail[k - 1];
        if (s[i] == s[k])
            k++;
        t->fail[i] = k;
    }
    return 0;
}

int oai_stop_create(char *const *stop, int64_t n, oai_stop **out)
{
    *out = NULL;
    if (n < 0 || (n > 0 && !stop))
        return dsacp_error(DSACP_EINVAL, "oai_stop_create: n is %lld with stop %s", (long long)n, stop ? "set" : "NULL");
    oai_stop *s = calloc(1, sizeof *s);
    if (!s || (n > 0 && !(s->stops = calloc((size_t)n, sizeof(stop_string))))) {
        free(s);
        return dsacp_error(DSACP_ENOMEM, "oai_stop_create: %lld stop strings", (long long)n);
    }
    for (; s->n < n; s->n++) {
        int rc = stop_string_init(&s->stops[s->n], stop[s->n]);
        if (rc) {
            s->n++;
            oai_stop_free(s);
            return rc;
        }
    }
    *out = s;
    return 0;
}

void oai_stop_free(oai_stop *s)
{
    if (!s)
        return;
    for (int64_t i = 0; i < s->n; i++) {
        free(s->stops[i].s);
        free(s->stops[i].fail);
    }
    free(s->stops);
    free(s->buf);
    free(s->out);
    free(s);
}

static int reserve(char **p, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t c = *cap ? *cap : 64;
    while (c < need)
        if (!dsacp_mul_ok(c, 2, &c))
            return dsacp_error(DSACP_ENOMEM, "stop: %zu bytes of text", need);
    char *q = realloc(*p, c);
    if (!q)
        return dsacp_error(DSACP_ENOMEM, "stop: %zu bytes of text", c);
    *p = q;
    *cap = c;
    return 0;
}

/* Feeds one byte to every matcher; returns the length of the longest stop string it completes (0: none). */
static size_t feed(oai_stop *s, char ch)
{
    size_t best = 0;
    for (int64_t i = 0; i < s->n; i++) {
        stop_string *t = &s->stops[i];
        while (t->state > 0 && t->s[t->state] != ch)
            t->state = t->fail[t->state - 1];
        if (t->s[t->state] == ch)
            t->state++;
        if (t->state == t->len) {
            best = t->len > best ? t->len : best;
            t->state = t->fail[t->len - 1];
        }
    }
    return best;
}

/* Moves buf[0..n) to out and keeps buf[n..end) as the held bytes. */
static int release(oai_stop *s, size_t n, size_t end, const char **out, size_t *out_len)
{
    int rc = reserve(&s->out, &s->out_cap, n + 1);
    if (rc)
        return rc;
    memcpy(s->out, s->buf, n);
    s->out[n] = '\0';
    memmove(s->buf, s->buf + n, end - n);
    s->held = end - n;
    *out = s->out;
    *out_len = n;
    return 0;
}

int oai_stop_push(oai_stop *s, const char *text, size_t len, const char **out, size_t *out_len, bool *matched)
{
    *out = "";
    *out_len = 0;
    *matched = s->done;
    if (s->done || len == 0)
        return 0;
    size_t end;
    if (!dsacp_add_ok(s->held, len, &end))
        return dsacp_error(DSACP_ENOMEM, "stop: text too long");
    int rc = reserve(&s->buf, &s->cap, end);
    if (rc)
        return rc;
    memcpy(s->buf + s->held, text, len);
    for (size_t i = s->held; i < end; i++) {
        size_t m = feed(s, s->buf[i]);
        if (m) {
            s->done = *matched = true;
            return release(s, i + 1 - m, i + 1 - m, out, out_len);
        }
    }
    size_t keep = 0;
    for (int64_t i = 0; i < s->n; i++)
        keep = s->stops[i].state > keep ? s->stops[i].state : keep;
    return release(s, end - keep, end, out, out_len);
}

int oai_stop_flush(oai_stop *s, const char **out, size_t *out_len)
{
    *out = "";
    *out_len = 0;
    if (s->done || s->held == 0)
        return 0;
    for (int64_t i = 0; i < s->n; i++)
        s->stops[i].state = 0;
    return release(s, s->held, s->held, out, out_len);
}
