/*
 * dsacp_util.h -- the library's own small helpers, offered to programs and tools built on it
 * (the dsacp CLI uses only these and the other dsacp*.h headers): the error recorder behind
 * dsacp_last_error(), the 64-byte-aligned allocator, overflow-checked sizes, the one monotonic
 * clock, the deterministic random generator, and output files that appear whole or not at all.
 *
 * Thread safety: every function is reentrant; a dsacp_rng or dsacp_out is used by one thread at
 * a time. The error message is thread-local (dsacp.h).
 * Ownership: dsacp_alloc/dsacp_calloc memory is released with dsacp_free (never free());
 * dsacp_read_file's buffer with dsacp_free; a dsacp_out is the caller's struct, released by
 * dsacp_out_commit or dsacp_out_abort.
 */
#ifndef DSACP_UTIL_H
#define DSACP_UTIL_H

#include "dsacp.h"

#include <stdarg.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define DSACP_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define DSACP_PRINTF(a, b)
#endif

/* ---- errors ----
 * Records a formatted message for dsacp_last_error() in this thread and returns `status`, so a
 * caller layering its own checks on the library reports through the same path:
 * `return dsacp_error(DSACP_EINVAL, "%s: max_new_tokens must be >= 1", path);`. Messages name the
 * file, parameter or field at fault. */
int dsacp_error(int status, const char *fmt, ...) DSACP_PRINTF(2, 3);
/* Prefixes the current message with the formatted text and ": " (context on the way up). */
int dsacp_error_context(int status, const char *fmt, ...) DSACP_PRINTF(2, 3);

/* ---- memory ----
 * 64-byte aligned, zero-filled by dsacp_calloc; NULL on failure (a DSACP_ENOMEM message is
 * recorded). dsacp_free accepts NULL. */
void *dsacp_alloc(size_t bytes);
void *dsacp_calloc(size_t count, size_t size);
void dsacp_free(void *p);

/* ---- clock ---- Monotonic wall clock in seconds (CLOCK_MONOTONIC; the library's one timer). */
double dsacp_now(void);

/* ---- files ----
 * Reads a whole regular file (a FIFO, device or directory is refused without blocking) into a
 * NUL-terminated buffer (dsacp_free it); DSACP_EIO naming the path, DSACP_EFORMAT above max_len. */
int dsacp_read_file(const char *path, char **out, size_t *len, size_t max_len);
/* Writes `len` bytes to `path` atomically (below). */
int dsacp_write_file_atomic(const char *path, const void *data, size_t len);

/* src/core/core.h defines the same types and inline functions for the library's own files;
 * a translation unit sees one of the two. */
#ifndef DSACP_CORE_H
/* Overflow-checked a*b and a+b on sizes; false on overflow. */
static inline bool dsacp_mul_ok(size_t a, size_t b, size_t *out) { return !__builtin_mul_overflow(a, b, out); }
static inline bool dsacp_add_ok(size_t a, size_t b, size_t *out) { return !__builtin_add_overflow(a, b, out); }

/* Deterministic random numbers: xoshiro256** seeded by splitmix64. Same seed, same stream, on
 * every platform. */
typedef struct dsacp_rng {
    uint64_t s[4];
} dsacp_rng;

/* An output file in progress: the data goes to a fresh temporary beside the target (created
 * with O_CREAT|O_EXCL|O_NOFOLLOW under an unpredictable name), is fsync'd, renamed over the
 * target, and the directory fsync'd. A target that exists and is not a regular file (device,
 * FIFO, directory, symlink) is refused before anything is written; any failure removes the
 * temporary: no partial output. */
typedef struct dsacp_out {
    int fd;     /* the temporary, -1 when none is open */
    char *path; /* the target */
    char *tmp;  /* the temporary's name, NULL once renamed or removed */
} dsacp_out;
#endif

void dsacp_rng_seed(dsacp_rng *rng, uint64_t seed);
uint64_t dsacp_rng_u64(dsacp_rng *rng);
/* Uniform in [0, 1) with 53 random bits. */
double dsacp_rng_uniform(dsacp_rng *rng);
/* Standard normal (Box-Muller, no cached second value). */
double dsacp_rng_normal(dsacp_rng *rng);

/* Checks the target and creates its temporary. On failure nothing exists and *o is safe to pass
 * to dsacp_out_abort. */
int dsacp_out_open(dsacp_out *o, const char *path);
/* Writes all of data (short writes and EINTR retried); on failure the temporary stays until
 * dsacp_out_abort. */
int dsacp_out_write(dsacp_out *o, const void *data, size_t len);
/* fsync, close, re-check the target, rename, fsync the directory; on failure the temporary is
 * removed. Either way *o is released. */
int dsacp_out_commit(dsacp_out *o);
/* Closes and removes the temporary (no-op when committed or never opened); releases *o. */
void dsacp_out_abort(dsacp_out *o);

/* ---- kernels ----
 * y[rows] = W x with the engine's linear kernel (the decode matrix-vector product, one token) for
 * an F32 weight W [rows][cols], row-major; x F32 [cols]. What `dsacp plan --calibrate` times to
 * measure the bandwidth decode reads weights at. */
int dsacp_linear_f32(const float *w, int64_t rows, int64_t cols, const float *x, float *y);

#ifdef __cplusplus
}
#endif
#endif /* DSACP_UTIL_H */
