/*
 * core -- what every other module may use: the error path (status + thread-local message),
 * the allocator and the step workspace (arena.c), the deterministic random generator, timers and
 * small file helpers. Its public half (errors, allocator, checked sizes, clock, RNG, output
 * files) is declared once, in include/dsacp_util.h; this header adds what only the library uses.
 * It calls nothing else in dsacp.
 */
#ifndef DSACP_CORE_H
/* Before DSACP_CORE_H is defined: dsacp_util.h defines the shared types and inline helpers only
 * for a translation unit without core.h, and this is where core.h gets them. */
#include "dsacp_util.h"
#define DSACP_CORE_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

/* The one error path is dsacp_error / dsacp_error_context (dsacp_util.h):
 * `return dsacp_error(DSACP_EFORMAT, "%s: ...", path);`. Clears the current message: */
void dsacp_error_clear(void);

/* The one allocator is dsacp_alloc / dsacp_calloc / dsacp_free (64-byte aligned), sizes are
 * checked with dsacp_mul_ok / dsacp_add_ok (dsacp_util.h). */

/* ---- step workspace (arena) ----
 * One dsacp_alloc'd block (llm.c's single allocation) carved into named buffers, each 64-byte
 * aligned, given back all at once (dsacp_arena_reset, at the start of every step) or down to a
 * mark (a phase's temporaries). Its size is computed up front: each module that takes from it
 * has a sizing function adding, through dsacp_arena_need, the same (rows, cols, element size) it
 * will take for the largest step its owner accepts; the owner creates the arena with the sum (or
 * dsacp_arena_max of phases that reuse the same bytes after a rewind). A take that does not fit
 * is NULL with DSACP_ENOMEM recorded, naming the buffer and the sizes: the caller returns that
 * status (never a NaN, never a silent fallback). An arena is not thread-safe: take every
 * thread's buffer before a parallel region. */
typedef struct dsacp_arena {
    unsigned char *base; /* NULL when cap is 0 */
    size_t cap;          /* bytes of base */
    size_t used;         /* bytes taken since the last reset (a multiple of 64) */
    size_t peak;         /* the largest `used` so far */
} dsacp_arena;

/* *total += the arena bytes of rows x cols elements of elem_size each (rounded up to 64).
 * Overflow or a negative count makes *total SIZE_MAX, which stays and which dsacp_arena_create
 * refuses. */
void dsacp_arena_need(size_t *total, int64_t rows, int64_t cols, size_t elem_size);
/* The larger of two sizes (phases that reuse the same bytes one after the other). */
static inline size_t dsacp_arena_max(size_t a, size_t b) { return a > b ? a : b; }
/* An arena of `bytes` (0: an empty one); *a is zeroed first. DSACP_ENOMEM naming `what` when
 * the allocation fails, DSACP_ERANGE when bytes is SIZE_MAX (a size that overflowed). */
int dsacp_arena_create(dsacp_arena *a, size_t bytes, const char *what);
/* Makes the capacity at least `bytes`, reallocating when it is smaller (the contents are lost:
 * only with nothing taken). Same errors as dsacp_arena_create; *a is unchanged on failure. */
int dsacp_arena_reserve(dsacp_arena *a, size_t bytes, const char *what);
/* Frees the block; *a becomes an empty arena. Accepts an empty or zeroed arena. */
void dsacp_arena_destroy(dsacp_arena *a);
/* Gives back everything taken. */
static inline void dsacp_arena_reset(dsacp_arena *a) { a->used = 0; }
/* A point to come back to: dsacp_arena_rewind(a, mark) gives back what was taken after it. */
static inline size_t dsacp_arena_mark(const dsacp_arena *a) { return a->used; }
static inline void dsacp_arena_rewind(dsacp_arena *a, size_t mark) { a->used = mark; }
/* rows x cols elements of elem_size bytes, 64-byte aligned, uninitialised (zero elements: a
 * valid pointer to no bytes). NULL with DSACP_ENOMEM recorded ("<what>: workspace too small
 * ...") when it does not fit or the size overflows. */
void *dsacp_arena_take(dsacp_arena *a, int64_t rows, int64_t cols, size_t elem_size, const char *what);

/* ---- fault injection (tests) ----
 * DSACP_FAULT=<site>[:<rank>[:<nth>]] makes the nth time (default 1) this process passes the
 * named allocation site report an allocation failure -- on every rank, or on world rank <rank>
 * only (the rank dsacp_fault_set_rank was given; a process that was given none is rank 0). The
 * variable is read once, at the first site passed. The sites (docs/context-parallel.md,
 * "Failures"): creation "pools", "engine", "cp", "weights", "plan"; steps "step", "views",
 * "layer", "strategy", "lean", "merge", "o_proj", "topk", "logits". A malformed variable (an
 * unknown site) is reported once on stderr and ignored. */
/* True when the site must fail now (and counts the pass). Thread-safe. */
bool dsacp_fault(const char *site);
/* The status of a failed site: DSACP_ENOMEM, "<what>: out of memory (injected: DSACP_FAULT=<site>)". */
int dsacp_fault_error(const char *site, const char *what);
/* This process's world rank (comm calls it when it joins the MPI world). */
void dsacp_fault_set_rank(int rank);
/* Tests: replaces DSACP_FAULT with `spec` (NULL: none) and restarts the counts. DSACP_EINVAL
 * for a malformed spec or an unknown site. */
int dsacp_fault_configure(const char *spec);

/* The random generator (dsacp_rng: xoshiro256** seeded by splitmix64) and the one timer
 * (dsacp_now) are in dsacp_util.h. */

/* ---- files ----
 * Reading: every reader opens with dsacp_open_regular, which never blocks (O_NONBLOCK) and
 * refuses anything that is not a regular file (a FIFO, device, directory, socket) with a
 * message naming the path.
 * Writing: every writer goes through dsacp_out: the data goes to a fresh temporary in the
 * target's directory (created with O_CREAT|O_EXCL|O_NOFOLLOW under an unpredictable name, so a
 * planted symlink is never followed), is fsync'd, renamed over the target, and the directory is
 * fsync'd. An existing target that is not a regular file (device, FIFO, directory, symlink) is
 * refused before anything is written. Any failure removes the temporary: no partial output. */

/* Opens `path` read-only (O_NONBLOCK, O_CLOEXEC), requires a regular file; *fd gets the
 * descriptor (close it) and *size its length. DSACP_EIO with a message naming the file. */
int dsacp_open_regular(const char *path, int *fd, uint64_t *size);
/* dsacp_read_file (dsacp_util.h) reads a whole file through it. */


/* dsacp_out_open checks the target with it; dsacp_out and dsacp_write_file_atomic are in
 * dsacp_util.h. */
/* mkdir for one level (parents must exist); succeeds when it exists as a directory. *created
 * (when not NULL) tells whether this call created it (false when it existed). */
int dsacp_make_dir_created(const char *path, bool *created);

#endif
