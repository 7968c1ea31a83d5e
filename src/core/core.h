/*
 * core -- what every other module may use: the error path (status + thread-local message),
 * the allocator, the deterministic random generator, timers and small file helpers.
 * It calls nothing else in dsacp.
 */
#ifndef DSACP_CORE_H
#define DSACP_CORE_H

#include "dsacp.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#if defined(__GNUC__)
#define DSACP_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define DSACP_PRINTF(a, b)
#endif

/* The one error path: records a formatted message for dsacp_last_error() and returns
 * `status`, so a failure reads `return dsacp_error(DSACP_EFORMAT, "%s: ...", path);`. */
int dsacp_error(int status, const char *fmt, ...) DSACP_PRINTF(2, 3);
/* Prefixes the current message with "prefix: " (adds context on the way up) and returns status. */
int dsacp_error_context(int status, const char *fmt, ...) DSACP_PRINTF(2, 3);
void dsacp_error_clear(void);

/* The one allocator: 64-byte aligned, zero-filled when requested; NULL on failure (and a
 * DSACP_ENOMEM message recorded). dsacp_free accepts NULL. */
void *dsacp_alloc(size_t bytes);
void *dsacp_calloc(size_t count, size_t size);
void dsacp_free(void *p);
/* Overflow-checked a*b and a+b on sizes; return false on overflow. */
static inline bool dsacp_mul_ok(size_t a, size_t b, size_t *out)
{
    return !__builtin_mul_overflow(a, b, out);
}
static inline bool dsacp_add_ok(size_t a, size_t b, size_t *out)
{
    return !__builtin_add_overflow(a, b, out);
}

/* Deterministic random numbers (splitmix64 seeding xoshiro256**). Same seed, same stream,
 * on every platform. */
typedef struct dsacp_rng {
    uint64_t s[4];
} dsacp_rng;
void dsacp_rng_seed(dsacp_rng *rng, uint64_t seed);
uint64_t dsacp_rng_u64(dsacp_rng *rng);
/* Uniform in [0, 1) with 53 random bits. */
double dsacp_rng_uniform(dsacp_rng *rng);
/* Standard normal (Box-Muller, no cached second value so the stream is position-independent). */
double dsacp_rng_normal(dsacp_rng *rng);

/* Monotonic wall clock in seconds (the one timer). */
double dsacp_now(void);

/* Reads a whole file into a NUL-terminated heap buffer (dsacp_free it). */
int dsacp_read_file(const char *path, char **out, size_t *len, size_t max_len);
/* Writes `len` bytes to `path` atomically: a temporary beside it, fsync, rename. */
int dsacp_write_file_atomic(const char *path, const void *data, size_t len);
/* mkdir -p for one level (parents must exist); succeeds when it exists as a directory. */
int dsacp_make_dir(const char *path);

#endif
