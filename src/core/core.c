/* core.c -- status codes, the error message, allocator, rng, timer, file helpers. */
#include "core/core.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- status codes ---- */

const char *dsacp_strerror(int status)
{
    switch (status) {
#define DSACP_STATUS_DESC_(name, value, desc) \
    case value:                               \
        return desc;
        DSACP_STATUS_MAP(DSACP_STATUS_DESC_)
#undef DSACP_STATUS_DESC_
    }
    return "unknown status";
}

const char *dsacp_status_name(int status)
{
    switch (status) {
#define DSACP_STATUS_NAME_(name, value, desc) \
    case value:                               \
        return "DSACP_" #name;
        DSACP_STATUS_MAP(DSACP_STATUS_NAME_)
#undef DSACP_STATUS_NAME_
    }
    return "DSACP_UNKNOWN";
}

/* ---- error message ---- */

enum { DSACP_ERROR_CAP = 1024 };
static _Thread_local char error_msg[DSACP_ERROR_CAP];

const char *dsacp_last_error(void) { return error_msg; }
void dsacp_error_clear(void) { error_msg[0] = '\0'; }

int dsacp_error(int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(error_msg, sizeof error_msg, fmt, ap);
    va_end(ap);
    return status;
}

int dsacp_error_context(int status, const char *fmt, ...)
{
    char prefix[DSACP_ERROR_CAP];
    char old[DSACP_ERROR_CAP];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, error_msg, sizeof old);
    /* Truncation is acceptable for a message; keep the head, which names the file. */
    size_t n = strlen(prefix);
    if (n > sizeof error_msg - 3) n = sizeof error_msg - 3;
    memcpy(error_msg, prefix, n);
    memcpy(error_msg + n, ": ", 2);
    const char *tail = old[0] ? old : dsacp_strerror(status);
    size_t room = sizeof error_msg - n - 3, tl = strlen(tail);
    if (tl > room) tl = room;
    memcpy(error_msg + n + 2, tail, tl);
    error_msg[n + 2 + tl] = '\0';
    return status;
}

/* ---- dtypes ---- */

static const struct {
    const char *name;
    size_t size;
} dtype_info[DSACP_DTYPE_COUNT] = {
    [DSACP_DTYPE_INVALID] = {"INVALID", 0}, [DSACP_BOOL] = {"BOOL", 1},
    [DSACP_U8] = {"U8", 1},                 [DSACP_I8] = {"I8", 1},
    [DSACP_F8_E4M3] = {"F8_E4M3", 1},       [DSACP_F8_E5M2] = {"F8_E5M2", 1},
    [DSACP_I16] = {"I16", 2},               [DSACP_U16] = {"U16", 2},
    [DSACP_F16] = {"F16", 2},               [DSACP_BF16] = {"BF16", 2},
    [DSACP_I32] = {"I32", 4},               [DSACP_U32] = {"U32", 4},
    [DSACP_F32] = {"F32", 4},               [DSACP_F64] = {"F64", 8},
    [DSACP_I64] = {"I64", 8},               [DSACP_U64] = {"U64", 8},
};

const char *dsacp_dtype_name(dsacp_dtype dtype)
{
    if ((int)dtype <= 0 || dtype >= DSACP_DTYPE_COUNT) return "INVALID";
    return dtype_info[dtype].name;
}

dsacp_dtype dsacp_dtype_from_name(const char *name)
{
    if (!name) return DSACP_DTYPE_INVALID;
    for (int d = 1; d < DSACP_DTYPE_COUNT; d++)
        if (strcmp(name, dtype_info[d].name) == 0) return (dsacp_dtype)d;
    return DSACP_DTYPE_INVALID;
}

size_t dsacp_dtype_size(dsacp_dtype dtype)
{
    if ((int)dtype <= 0 || dtype >= DSACP_DTYPE_COUNT) return 0;
    return dtype_info[dtype].size;
}

/* ---- allocator ---- */

void *dsacp_alloc(size_t bytes)
{
    size_t rounded = (bytes + 63) & ~(size_t)63;
    if (rounded < bytes) {
        dsacp_error(DSACP_ENOMEM, "allocation of %zu bytes overflows", bytes);
        return NULL;
    }
    void *p = aligned_alloc(64, rounded ? rounded : 64);
    if (!p) dsacp_error(DSACP_ENOMEM, "out of memory allocating %zu bytes", bytes);
    return p;
}

void *dsacp_calloc(size_t count, size_t size)
{
    size_t bytes;
    if (!dsacp_mul_ok(count, size, &bytes)) {
        dsacp_error(DSACP_ENOMEM, "allocation of %zu x %zu bytes overflows", count, size);
        return NULL;
    }
    void *p = dsacp_alloc(bytes);
    if (p) memset(p, 0, bytes);
    return p;
}

void dsacp_free(void *p) { free(p); }

/* ---- rng ---- */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void dsacp_rng_seed(dsacp_rng *rng, uint64_t seed)
{
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) rng->s[i] = splitmix64(&x);
}

static inline uint64_t rotl64(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t dsacp_rng_u64(dsacp_rng *rng)
{
    uint64_t *s = rng->s;
    uint64_t result = rotl64(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl64(s[3], 45);
    return result;
}

double dsacp_rng_uniform(dsacp_rng *rng) { return (double)(dsacp_rng_u64(rng) >> 11) * 0x1.0p-53; }

double dsacp_rng_normal(dsacp_rng *rng)
{
    double u1 = 1.0 - dsacp_rng_uniform(rng); /* (0, 1] */
    double u2 = dsacp_rng_uniform(rng);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* ---- timer ---- */

double dsacp_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- files ---- */

int dsacp_read_file(const char *path, char **out, size_t *len, size_t max_len)
{
    *out = NULL;
    if (len) *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return dsacp_error(DSACP_EIO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return dsacp_error(DSACP_EIO, "%s: not a regular file", path);
    }
    if ((uint64_t)st.st_size > (uint64_t)max_len) {
        fclose(f);
        return dsacp_error(DSACP_EFORMAT, "%s: file is %lld bytes, larger than the %zu allowed",
                           path, (long long)st.st_size, max_len);
    }
    size_t n = (size_t)st.st_size;
    char *buf = dsacp_alloc(n + 1);
    if (!buf) {
        fclose(f);
        return dsacp_error(DSACP_ENOMEM, "%s: out of memory reading %zu bytes", path, n);
    }
    if (n && fread(buf, 1, n, f) != n) {
        fclose(f);
        dsacp_free(buf);
        return dsacp_error(DSACP_EIO, "%s: read failed", path);
    }
    fclose(f);
    buf[n] = '\0';
    *out = buf;
    if (len) *len = n;
    return DSACP_OK;
}

int dsacp_write_file_atomic(const char *path, const void *data, size_t len)
{
    size_t plen = strlen(path);
    char *tmp = dsacp_alloc(plen + 32);
    if (!tmp) return DSACP_ENOMEM;
    snprintf(tmp, plen + 32, "%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        int rc = dsacp_error(DSACP_EIO, "%s: cannot create: %s", path, strerror(errno));
        dsacp_free(tmp);
        return rc;
    }
    const char *p = data;
    size_t left = len;
    while (left) {
        ssize_t w = write(fd, p, left > (1u << 30) ? (1u << 30) : left);
        if (w < 0) {
            if (errno == EINTR) continue;
            int rc = dsacp_error(DSACP_EIO, "%s: write failed: %s", path, strerror(errno));
            close(fd);
            unlink(tmp);
            dsacp_free(tmp);
            return rc;
        }
        p += w;
        left -= (size_t)w;
    }
    if (close(fd) != 0 || rename(tmp, path) != 0) {
        int rc = dsacp_error(DSACP_EIO, "%s: cannot finish writing: %s", path, strerror(errno));
        unlink(tmp);
        dsacp_free(tmp);
        return rc;
    }
    dsacp_free(tmp);
    return DSACP_OK;
}

int dsacp_make_dir(const char *path)
{
    struct stat st;
    if (stat(path, &st) == 0) {
        if (S_ISDIR(st.st_mode)) return DSACP_OK;
        return dsacp_error(DSACP_EIO, "%s: exists and is not a directory", path);
    }
    if (mkdir(path, 0755) != 0)
        return dsacp_error(DSACP_EIO, "%s: cannot create directory: %s", path, strerror(errno));
    return DSACP_OK;
}
