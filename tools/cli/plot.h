/*
 * plot.h -- a tiny chart canvas for `dsacp plan --plot`: filled rectangles and one-line text,
 * written as SVG or as PNG (rasterized here: a built-in 5x7 font, deflate written here too, so
 * no image library is needed). Coordinates in SVG user units; the PNG is drawn at 2x.
 */
#ifndef DSACP_CLI_PLOT_H
#define DSACP_CLI_PLOT_H

#include <stddef.h>
#include <stdint.h>

typedef struct plot plot;

/* A white canvas of w x h units, or NULL when out of memory. */
plot *plot_new(int w, int h);
void plot_free(plot *p);
/* A filled rectangle, colour 0xRRGGBB. */
void plot_rect(plot *p, double x, double y, double w, double h, uint32_t rgb);
/* Black text with its baseline at y, `size` units high (12 body, 14 title); printf-style. */
void plot_text(plot *p, double x, double y, int size, const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* The whole canvas as SVG or PNG (by the path's extension, ".svg" or ".png"), written atomically.
 * DSACP_EINVAL for any other extension; DSACP_ENOMEM when a primitive could not be recorded. */
int plot_write(const plot *p, const char *path);
/* The bytes plot_write would write to `path` (SVG or PNG by its extension) in a malloc'ed buffer,
 * for a caller that writes them itself (dsacp plan opens its outputs before any work). */
int plot_encode(const plot *p, const char *path, uint8_t **out, size_t *len);
/* The PNG encoding of the canvas into a malloc'ed buffer (tests and plot_write). */
int plot_png(const plot *p, uint8_t **out, size_t *len);

#endif /* DSACP_CLI_PLOT_H */
