/*
 * arena -- the step workspace (core.h): one 64-byte aligned block carved into named buffers,
 * sized up front, given back at once or down to a mark.
 */
#include "core/core.h"

#include <stdint.h>

enum { ARENA_ALIGN = 64 };

/* The arena bytes of rows x cols x elem_size (rounded up to the alignment); false on overflow or
 * a negative count. */
static bool arena_bytes(int64_t rows, int64_t cols, size_t elem_size, size_t *out)
{
    size_t n, bytes;
    if (rows < 0 || cols < 0 || (uint64_t)rows > SIZE_MAX || (uint64_t)cols > SIZE_MAX) return false;
    if (!dsacp_mul_ok((size_t)rows, (size_t)cols, &n) || !dsacp_mul_ok(n, elem_size, &bytes)) return false;
    if (!dsacp_add_ok(bytes, ARENA_ALIGN - 1, &bytes)) return false;
    *out = bytes & ~(size_t)(ARENA_ALIGN - 1);
    return true;
}

void dsacp_arena_need(size_t *total, int64_t rows, int64_t cols, size_t elem_size)
{
    size_t b;
    if (*total == SIZE_MAX || !arena_bytes(rows, cols, elem_size, &b) || !dsacp_add_ok(*total, b, total))
        *total = SIZE_MAX;
}

int dsacp_arena_create(dsacp_arena *a, size_t bytes, const char *what)
{
    *a = (dsacp_arena){0};
    return dsacp_arena_reserve(a, bytes, what);
}

int dsacp_arena_reserve(dsacp_arena *a, size_t bytes, const char *what)
{
    if (bytes == SIZE_MAX)
        return dsacp_error(DSACP_ERANGE, "%s: the workspace's size overflows", what);
    if (bytes <= a->cap) return DSACP_OK;
    unsigned char *p = dsacp_alloc(bytes);
    if (!p) return dsacp_error(DSACP_ENOMEM, "%s: out of memory for a workspace of %zu bytes", what, bytes);
    dsacp_free(a->base);
    a->base = p, a->cap = bytes, a->used = 0;
    return DSACP_OK;
}

void dsacp_arena_destroy(dsacp_arena *a)
{
    dsacp_free(a->base);
    *a = (dsacp_arena){0};
}

void *dsacp_arena_take(dsacp_arena *a, int64_t rows, int64_t cols, size_t elem_size, const char *what)
{
    static _Alignas(ARENA_ALIGN) unsigned char nothing[ARENA_ALIGN]; /* where zero bytes live */
    size_t b, end;
    if (!arena_bytes(rows, cols, elem_size, &b) || !dsacp_add_ok(a->used, b, &end) || end > a->cap) {
        dsacp_error(DSACP_ENOMEM, "%s: workspace too small (%lld x %lld x %zu bytes wanted, %zu of %zu bytes free)",
                    what, (long long)rows, (long long)cols, elem_size, a->cap - a->used, a->cap);
        return NULL;
    }
    if (b == 0) return nothing;
    void *p = a->base + a->used;
    a->used = end;
    if (end > a->peak) a->peak = end;
    return p;
}
