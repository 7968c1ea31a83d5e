/*
 * plot.c -- the chart canvas of `dsacp plan --plot` (plot.h): primitives recorded once, written
 * as SVG text or rasterized to a palette PNG. The PNG needs no library: a 5x7 bitmap font drawn
 * for dsacp (ASCII 32-126, scaled 2x), and a deflate stream of fixed Huffman codes whose
 * matches are runs (distance 1) and repeats of the row above (distance = the row's bytes) --
 * what bar charts are made of.
 */
#include "plot.h"
#include "dsacp_util.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { SCALE = 2 }; /* raster pixels per unit */

typedef struct prim {
    bool text;
    double x, y, w, h; /* rect: box; text: x, baseline y, size in h */
    uint32_t rgb;
    char *s;
} prim;

struct plot {
    int w, h;
    prim *p;
    size_t n, cap;
    bool failed; /* a primitive could not be recorded (out of memory) */
};

plot *plot_new(int w, int h)
{
    plot *p = calloc(1, sizeof *p);
    if (p) p->w = w, p->h = h;
    return p;
}

void plot_free(plot *p)
{
    if (!p) return;
    for (size_t i = 0; i < p->n; i++) free(p->p[i].s);
    free(p->p);
    free(p);
}

static prim *add(plot *p)
{
    if (p->n == p->cap) {
        const size_t cap = p->cap ? 2 * p->cap : 64;
        prim *q = realloc(p->p, cap * sizeof *q);
        if (!q) {
            p->failed = true;
            return NULL;
        }
        p->p = q, p->cap = cap;
    }
    prim *r = &p->p[p->n++];
    memset(r, 0, sizeof *r);
    return r;
}

void plot_rect(plot *p, double x, double y, double w, double h, uint32_t rgb)
{
    prim *r = add(p);
    if (r) *r = (prim){false, x, y, w, h, rgb & 0xffffff, NULL};
}

void plot_text(plot *p, double x, double y, int size, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    prim *r = add(p);
    if (!r) return;
    *r = (prim){true, x, y, 0, (double)size, 0, strdup(buf)};
    if (!r->s) p->failed = true, p->n--;
}

/* ---- SVG ---- */

static int svg_encode(const plot *p, uint8_t **out, size_t *len)
{
    char *text = NULL;
    size_t n = 0;
    *out = NULL, *len = 0;
    FILE *f = open_memstream(&text, &n);
    if (!f) return dsacp_error(DSACP_ENOMEM, "out of memory");
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" font-family=\"sans-serif\" "
               "font-size=\"12\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n", p->w, p->h);
    for (size_t i = 0; i < p->n; i++) {
        const prim *r = &p->p[i];
        if (!r->text) {
            fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"#%06x\"/>\n", r->x, r->y, r->w, r->h,
                    (unsigned)r->rgb);
            continue;
        }
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\"%s>", r->x, r->y, r->h != 12 ? " font-size=\"14\"" : "");
        for (const char *c = r->s; *c; c++) {
            if (*c == '&') fputs("&amp;", f);
            else if (*c == '<') fputs("&lt;", f);
            else if (*c == '>') fputs("&gt;", f);
            else if (*c == '"') fputs("&quot;", f);
            else if ((unsigned char)*c < 0x20 || *c == 0x7f) fputc('?', f); /* not allowed in XML */
            else fputc(*c, f);
        }
        fprintf(f, "</text>\n");
    }
    fprintf(f, "</svg>\n");
    const bool bad = ferror(f) != 0;
    if (fclose(f) != 0 || bad) {
        free(text);
        return dsacp_error(DSACP_ENOMEM, "out of memory drawing the plot");
    }
    *out = (uint8_t *)text, *len = n;
    return DSACP_OK;
}

/* ---- raster ---- */

/* 5x7 glyphs, ASCII 32..126, rows top to bottom, bit 4 = leftmost column. */
static const uint8_t font[95][7] = {
#include "plot_font.inc"
};

typedef struct raster {
    int w, h;
    uint8_t *px; /* palette indices */
    uint32_t pal[256];
    int npal;
} raster;

static int colour(raster *r, uint32_t rgb)
{
    for (int i = 0; i < r->npal; i++)
        if (r->pal[i] == rgb) return i;
    if (r->npal == 256) return 1; /* black: charts use a handful of colours */
    r->pal[r->npal] = rgb;
    return r->npal++;
}

static void fill(raster *r, long x0, long y0, long x1, long y1, int c)
{
    if (x0 < 0) x0 = 0;
    if (y0 < 0) y0 = 0;
    if (x1 > r->w) x1 = r->w;
    if (y1 > r->h) y1 = r->h;
    for (long y = y0; y < y1; y++)
        if (x1 > x0) memset(r->px + (size_t)y * (size_t)r->w + (size_t)x0, c, (size_t)(x1 - x0));
}

static void draw_text(raster *r, const prim *t, int c)
{
    const long s = SCALE, adv = 6 * s;
    long x = (long)(t->x * SCALE), top = (long)(t->y * SCALE) - 7 * s;
    for (const unsigned char *ch = (const unsigned char *)t->s; *ch; ch++, x += adv) {
        const uint8_t *g = font[*ch >= 32 && *ch < 127 ? *ch - 32 : '?' - 32];
        const long drop = strchr("gjpqy", *ch) ? s : 0; /* descenders a row below the baseline */
        for (long row = 0; row < 7; row++)
            for (long col = 0; col < 5; col++)
                if (g[row] & (0x10 >> col))
                    fill(r, x + col * s, top + drop + row * s, x + (col + 1) * s, top + drop + (row + 1) * s, c);
    }
}

/* ---- PNG: chunks, CRC-32, Adler-32, a fixed-Huffman deflate ---- */

typedef struct buf {
    uint8_t *d;
    size_t n, cap;
    bool bad;
    uint64_t bits; /* deflate's bit accumulator, LSB first */
    int nbits;
} buf;

static void put(buf *b, const void *src, size_t n)
{
    if (b->bad || n == 0) return;
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + n) cap *= 2;
        uint8_t *d = realloc(b->d, cap);
        if (!d) {
            b->bad = true;
            return;
        }
        b->d = d, b->cap = cap;
    }
    memcpy(b->d + b->n, src, n);
    b->n += n;
}

static void put32(buf *b, uint32_t v)
{
    const uint8_t x[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
    put(b, x, 4);
}

static uint32_t crc32_of(const uint8_t *d, size_t n)
{
    static uint32_t table[256];
    static bool init;
    if (!init) {
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++) c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
            table[i] = c;
        }
        init = true;
    }
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) c = table[(c ^ d[i]) & 0xff] ^ (c >> 8);
    return c ^ 0xffffffffu;
}

static void chunk(buf *b, const char *type, const uint8_t *data, size_t n)
{
    put32(b, (uint32_t)n);
    const size_t at = b->n;
    put(b, type, 4);
    put(b, data, n);
    if (!b->bad) put32(b, crc32_of(b->d + at, n + 4));
}

static void bits(buf *b, uint32_t v, int n) /* n low bits of v, LSB first */
{
    b->bits |= (uint64_t)v << b->nbits;
    b->nbits += n;
    while (b->nbits >= 8) {
        const uint8_t byte = (uint8_t)b->bits;
        put(b, &byte, 1);
        b->bits >>= 8;
        b->nbits -= 8;
    }
}

static void huff(buf *b, uint32_t code, int n) /* a Huffman code, MSB first */
{
    uint32_t r = 0;
    for (int i = 0; i < n; i++) r |= ((code >> i) & 1) << (n - 1 - i);
    bits(b, r, n);
}

static void litlen(buf *b, int v) /* RFC 1951 3.2.6 fixed codes */
{
    if (v < 144) huff(b, 0x30 + (uint32_t)v, 8);
    else if (v < 256) huff(b, 0x190 + (uint32_t)(v - 144), 9);
    else if (v < 280) huff(b, (uint32_t)(v - 256), 7);
    else huff(b, 0xc0 + (uint32_t)(v - 280), 8);
}

static void match(buf *b, int len, int dist)
{
    static const int lbase[29] = {3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258};
    static const int lext[29] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0};
    static const int dbase[30] = {1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577};
    static const int dext[30] = {0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13};
    int l = 28;
    while (lbase[l] > len) l--;
    litlen(b, 257 + l);
    bits(b, (uint32_t)(len - lbase[l]), lext[l]);
    int d = 29;
    while (dbase[d] > dist) d--;
    huff(b, (uint32_t)d, 5);
    bits(b, (uint32_t)(dist - dbase[d]), dext[d]);
}

/* A zlib stream of one fixed-Huffman block: at each byte the longer of a run (distance 1) and a
 * repeat of the row above (distance `stride`), from 3 bytes up, else a literal. */
static void zlib_of(buf *b, const uint8_t *d, size_t n, size_t stride)
{
    const uint8_t hdr[2] = {0x78, 0x01};
    put(b, hdr, 2);
    bits(b, 1, 1); /* BFINAL */
    bits(b, 1, 2); /* BTYPE 01: fixed codes */
    for (size_t i = 0; i < n;) {
        int best = 0, bd = 0;
        const size_t ds[2] = {1, stride};
        for (int k = 0; k < 2; k++) {
            const size_t dist = ds[k];
            if (dist > i || dist > 32768) continue;
            int l = 0;
            while (l < 258 && i + (size_t)l < n && d[i + (size_t)l] == d[i + (size_t)l - dist]) l++;
            if (l > best) best = l, bd = (int)dist;
        }
        if (best >= 3) {
            match(b, best, bd);
            i += (size_t)best;
        } else {
            litlen(b, d[i++]);
        }
    }
    litlen(b, 256);
    if (b->nbits > 0) bits(b, 0, 8 - b->nbits);
    uint32_t s1 = 1, s2 = 0;
    for (size_t i = 0; i < n; i++) s1 = (s1 + d[i]) % 65521, s2 = (s2 + s1) % 65521;
    put32(b, (s2 << 16) | s1);
}

int plot_png(const plot *p, uint8_t **out, size_t *len)
{
    *out = NULL, *len = 0;
    if (p->failed) return dsacp_error(DSACP_ENOMEM, "out of memory drawing the plot");
    raster r = {.w = p->w * SCALE, .h = p->h * SCALE};
    const size_t stride = (size_t)r.w + 1;
    r.px = malloc((size_t)r.w * (size_t)r.h);
    uint8_t *rows = malloc(stride * (size_t)r.h);
    if (!r.px || !rows) {
        free(r.px), free(rows);
        return dsacp_error(DSACP_ENOMEM, "out of memory drawing the plot");
    }
    colour(&r, 0xffffff);
    colour(&r, 0x000000);
    memset(r.px, 0, (size_t)r.w * (size_t)r.h);
    for (size_t i = 0; i < p->n; i++) {
        const prim *q = &p->p[i];
        if (q->text) draw_text(&r, q, 1);
        else
            fill(&r, (long)(q->x * SCALE + 0.5), (long)(q->y * SCALE + 0.5), (long)((q->x + q->w) * SCALE + 0.5),
                 (long)((q->y + q->h) * SCALE + 0.5), colour(&r, q->rgb));
    }
    for (int y = 0; y < r.h; y++) {
        rows[(size_t)y * stride] = 0; /* filter: none */
        memcpy(rows + (size_t)y * stride + 1, r.px + (size_t)y * (size_t)r.w, (size_t)r.w);
    }
    buf b = {0};
    static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    put(&b, sig, 8);
    uint8_t ihdr[13] = {0};
    for (int k = 0; k < 4; k++) ihdr[k] = (uint8_t)((uint32_t)r.w >> (24 - 8 * k)), ihdr[4 + k] = (uint8_t)((uint32_t)r.h >> (24 - 8 * k));
    ihdr[8] = 8, ihdr[9] = 3; /* 8-bit palette indices */
    chunk(&b, "IHDR", ihdr, 13);
    uint8_t plte[768];
    for (int i = 0; i < r.npal; i++)
        plte[3 * i] = (uint8_t)(r.pal[i] >> 16), plte[3 * i + 1] = (uint8_t)(r.pal[i] >> 8), plte[3 * i + 2] = (uint8_t)r.pal[i];
    chunk(&b, "PLTE", plte, (size_t)r.npal * 3);
    buf z = {0};
    zlib_of(&z, rows, stride * (size_t)r.h, stride);
    if (z.bad) b.bad = true;
    else chunk(&b, "IDAT", z.d, z.n);
    chunk(&b, "IEND", NULL, 0);
    free(z.d), free(r.px), free(rows);
    if (b.bad) {
        free(b.d);
        return dsacp_error(DSACP_ENOMEM, "out of memory encoding the PNG");
    }
    *out = b.d, *len = b.n;
    return DSACP_OK;
}

int plot_encode(const plot *p, const char *path, uint8_t **out, size_t *len)
{
    const size_t n = strlen(path);
    *out = NULL, *len = 0;
    if (p->failed) return dsacp_error(DSACP_ENOMEM, "out of memory drawing the plot");
    if (n > 4 && !strcmp(path + n - 4, ".svg")) return svg_encode(p, out, len);
    if (n <= 4 || strcmp(path + n - 4, ".png"))
        return dsacp_error(DSACP_EINVAL, "%s: a plot is written as .svg or .png", path);
    return plot_png(p, out, len);
}

int plot_write(const plot *p, const char *path)
{
    uint8_t *d;
    size_t len;
    int rc = plot_encode(p, path, &d, &len);
    if (!rc) rc = dsacp_write_file_atomic(path, d, len);
    free(d);
    return rc;
}
