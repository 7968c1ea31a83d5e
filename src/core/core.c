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

static const char *file_kind(mode_t m)
{
    if (S_ISDIR(m)) return "a directory";
    if (S_ISFIFO(m)) return "a FIFO";
    if (S_ISCHR(m)) return "a character device";
    if (S_ISBLK(m)) return "a block device";
    if (S_ISSOCK(m)) return "a socket";
    if (S_ISLNK(m)) return "a symbolic link";
    return "not a regular file";
}

int dsacp_open_regular(const char *path, int *fd_out, uint64_t *size)
{
    *fd_out = -1;
    if (size) *size = 0;
    /* O_NONBLOCK: opening a FIFO with no writer (or a device that waits) returns at once. */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return dsacp_error(DSACP_EIO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int rc = dsacp_error(DSACP_EIO, "%s: cannot stat: %s", path, strerror(errno));
        close(fd);
        return rc;
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return dsacp_error(DSACP_EIO, "%s: is %s, not a regular file", path, file_kind(st.st_mode));
    }
    /* Reads of a regular file never block; clear the flag so later reads behave normally. */
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0) (void)fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    *fd_out = fd;
    if (size) *size = (uint64_t)st.st_size;
    return DSACP_OK;
}

int dsacp_read_file(const char *path, char **out, size_t *len, size_t max_len)
{
    *out = NULL;
    if (len) *len = 0;
    int fd;
    uint64_t size;
    int rc = dsacp_open_regular(path, &fd, &size);
    if (rc) return rc;
    if (size > (uint64_t)max_len) {
        close(fd);
        return dsacp_error(DSACP_EFORMAT, "%s: file is %llu bytes, larger than the %zu allowed", path,
                           (unsigned long long)size, max_len);
    }
    size_t n = (size_t)size;
    char *buf = dsacp_alloc(n + 1);
    if (!buf) {
        close(fd);
        return dsacp_error(DSACP_ENOMEM, "%s: out of memory reading %zu bytes", path, n);
    }
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            rc = r < 0 ? dsacp_error(DSACP_EIO, "%s: read failed: %s", path, strerror(errno))
                       : dsacp_error(DSACP_EIO, "%s: file shrank while being read", path);
            close(fd);
            dsacp_free(buf);
            return rc;
        }
        got += (size_t)r;
    }
    close(fd);
    buf[n] = '\0';
    *out = buf;
    if (len) *len = n;
    return DSACP_OK;
}

/* DSACP_OK when `path` may be replaced by a new regular file: it does not exist or is a regular
 * file (lstat: a symlink there is refused, not resolved). DSACP_EIO naming the path otherwise. */
static int check_output_path(const char *path)
{
    if (!path || !*path) return dsacp_error(DSACP_EINVAL, "output path is empty");
    struct stat st;
    if (lstat(path, &st) != 0) {
        if (errno == ENOENT) return DSACP_OK;
        return dsacp_error(DSACP_EIO, "%s: cannot check the output path: %s", path, strerror(errno));
    }
    if (!S_ISREG(st.st_mode))
        return dsacp_error(DSACP_EIO, "%s: output path exists and is %s; refusing to replace it", path,
                           file_kind(st.st_mode));
    return DSACP_OK;
}

/* The directory part of path ("." when it has none); a heap string. */
static char *dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    size_t n = slash ? (size_t)(slash - path) : 1;
    if (slash && n == 0) n = 1; /* "/name" -> "/" */
    char *d = dsacp_alloc(n + 1);
    if (!d) return NULL;
    if (slash) memcpy(d, path, n);
    else d[0] = '.';
    d[n] = '\0';
    return d;
}

static void out_release(dsacp_out *o)
{
    dsacp_free(o->path);
    dsacp_free(o->tmp);
    o->path = o->tmp = NULL;
    o->fd = -1;
}

int dsacp_out_open(dsacp_out *o, const char *path)
{
    o->fd = -1;
    o->path = o->tmp = NULL;
    int rc = check_output_path(path);
    if (rc) return rc;
    size_t plen = strlen(path);
    o->path = dsacp_alloc(plen + 1);
    o->tmp = dsacp_alloc(plen + 32);
    if (!o->path || !o->tmp) {
        out_release(o);
        return dsacp_error(DSACP_ENOMEM, "%s: out of memory", path);
    }
    memcpy(o->path, path, plen + 1);
    /* An unpredictable name beside the target, created exclusively: an existing entry (a planted
     * symlink included) is never opened, only skipped for another name. */
    static _Atomic uint64_t counter;
    uint64_t x = ((uint64_t)getpid() << 32) ^ (uint64_t)(dsacp_now() * 1e9) ^ (uint64_t)(uintptr_t)o;
    for (int attempt = 0; attempt < 100; attempt++) {
        dsacp_rng r;
        dsacp_rng_seed(&r, x ^ (counter++ * 0x9E3779B97F4A7C15ull));
        x = dsacp_rng_u64(&r);
        snprintf(o->tmp, plen + 32, "%s.tmp.%012llx", path, (unsigned long long)(x & 0xFFFFFFFFFFFFull));
        int fd = open(o->tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
        if (fd >= 0) {
            o->fd = fd;
            return DSACP_OK;
        }
        if (errno != EEXIST) break;
    }
    rc = dsacp_error(DSACP_EIO, "%s: cannot create a temporary file beside it: %s", path, strerror(errno));
    out_release(o);
    return rc;
}

int dsacp_out_write(dsacp_out *o, const void *data, size_t len)
{
    if (o->fd < 0) return dsacp_error(DSACP_EINVAL, "%s: write to a closed output", o->path ? o->path : "?");
    const char *p = data;
    while (len) {
        ssize_t w = write(o->fd, p, len > (1u << 30) ? (1u << 30) : len);
        if (w < 0) {
            if (errno == EINTR) continue;
            return dsacp_error(DSACP_EIO, "%s: write failed: %s", o->path, strerror(errno));
        }
        if (w == 0) return dsacp_error(DSACP_EIO, "%s: write failed: no progress", o->path);
        p += w;
        len -= (size_t)w;
    }
    return DSACP_OK;
}

void dsacp_out_abort(dsacp_out *o)
{
    if (o->fd >= 0) close(o->fd);
    if (o->tmp) unlink(o->tmp);
    out_release(o);
}

int dsacp_out_commit(dsacp_out *o)
{
    if (o->fd < 0 || !o->tmp) {
        out_release(o);
        return dsacp_error(DSACP_EINVAL, "output not open");
    }
    int rc = DSACP_OK;
    if (fsync(o->fd) != 0) rc = dsacp_error(DSACP_EIO, "%s: fsync failed: %s", o->path, strerror(errno));
    int cr = close(o->fd);
    o->fd = -1;
    if (!rc && cr != 0) rc = dsacp_error(DSACP_EIO, "%s: close failed: %s", o->path, strerror(errno));
    /* Checked again: something may have appeared at the target since dsacp_out_open. */
    if (!rc) rc = check_output_path(o->path);
    if (!rc && rename(o->tmp, o->path) != 0)
        rc = dsacp_error(DSACP_EIO, "%s: cannot rename the temporary into place: %s", o->path, strerror(errno));
    if (rc) {
        dsacp_out_abort(o);
        return rc;
    }
    dsacp_free(o->tmp);
    o->tmp = NULL;
    /* The rename is durable once the directory is synced. Filesystems that cannot sync a
     * directory (EINVAL, EROFS, ENOTSUP) have nothing more to do. */
    char *dir = dir_of(o->path);
    if (!dir) {
        rc = dsacp_error(DSACP_ENOMEM, "%s: out of memory", o->path);
    } else {
        int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd < 0) {
            rc = dsacp_error(DSACP_EIO, "%s: cannot open its directory to sync it: %s", o->path, strerror(errno));
        } else {
            if (fsync(dfd) != 0 && errno != EINVAL && errno != EROFS && errno != ENOTSUP)
                rc = dsacp_error(DSACP_EIO, "%s: fsync of its directory failed: %s", o->path, strerror(errno));
            close(dfd);
        }
        dsacp_free(dir);
    }
    out_release(o);
    return rc;
}

int dsacp_write_file_atomic(const char *path, const void *data, size_t len)
{
    dsacp_out o;
    int rc = dsacp_out_open(&o, path);
    if (rc) return rc;
    rc = dsacp_out_write(&o, data, len);
    if (rc) {
        dsacp_out_abort(&o);
        return rc;
    }
    return dsacp_out_commit(&o);
}

int dsacp_make_dir_created(const char *path, bool *created)
{
    if (created) *created = false;
    if (mkdir(path, 0755) == 0) {
        if (created) *created = true;
        return DSACP_OK;
    }
    int err = errno;
    struct stat st;
    if (err == EEXIST && stat(path, &st) == 0) {
        if (S_ISDIR(st.st_mode)) return DSACP_OK;
        return dsacp_error(DSACP_EIO, "%s: exists and is not a directory", path);
    }
    return dsacp_error(DSACP_EIO, "%s: cannot create directory: %s", path, strerror(err));
}

/* ---- fault injection ---- */

static const char *const fault_sites[] = {"pools", "engine", "cp", "weights", "plan", "step", "views",
                                          "layer", "strategy", "lean", "merge", "o_proj", "topk", "logits"};
enum { FAULT_NSITES = sizeof fault_sites / sizeof fault_sites[0] };

static struct {
    int ready;         /* 0: DSACP_FAULT not read yet */
    int site;          /* index into fault_sites, -1: no fault */
    int rank;          /* -1: every rank */
    int64_t nth;       /* the pass that fails (1-based) */
    int64_t passes;    /* passes of `site` so far */
    int my_rank;
} fault = {0, -1, -1, 1, 0, 0};

static int fault_parse(const char *spec)
{
    fault.site = -1, fault.rank = -1, fault.nth = 1, fault.passes = 0;
    if (!spec || !*spec) return DSACP_OK;
    char name[32];
    const char *colon = strchr(spec, ':');
    const size_t n = colon ? (size_t)(colon - spec) : strlen(spec);
    if (n >= sizeof name) return dsacp_error(DSACP_EINVAL, "DSACP_FAULT '%s': unknown site", spec);
    memcpy(name, spec, n);
    name[n] = 0;
    int site = -1;
    for (int i = 0; i < FAULT_NSITES; i++)
        if (strcmp(name, fault_sites[i]) == 0) site = i;
    if (site < 0) return dsacp_error(DSACP_EINVAL, "DSACP_FAULT '%s': unknown site '%s'", spec, name);
    long long rank = -1, nth = 1;
    if (colon) {
        char *end = NULL;
        errno = 0;
        rank = strtoll(colon + 1, &end, 10);
        if (end == colon + 1 || errno || rank < 0 || rank > INT32_MAX || (*end && *end != ':'))
            return dsacp_error(DSACP_EINVAL, "DSACP_FAULT '%s': the rank must be a decimal integer >= 0", spec);
        if (*end == ':') {
            const char *p = end + 1;
            nth = strtoll(p, &end, 10);
            if (end == p || errno || nth < 1 || *end)
                return dsacp_error(DSACP_EINVAL, "DSACP_FAULT '%s': nth must be a decimal integer >= 1", spec);
        }
    }
    fault.site = site, fault.rank = (int)rank, fault.nth = nth;
    return DSACP_OK;
}

int dsacp_fault_configure(const char *spec)
{
    int rc = fault_parse(spec);
    if (rc) fault.site = -1;
    __atomic_store_n(&fault.ready, 1, __ATOMIC_RELEASE);
    return rc;
}

void dsacp_fault_set_rank(int rank) { fault.my_rank = rank; }

bool dsacp_fault(const char *site)
{
    /* ready: 0 unread, 1 read, 2 being read by another thread */
    int expect = 0;
    if (__atomic_load_n(&fault.ready, __ATOMIC_ACQUIRE) != 1) {
        if (__atomic_compare_exchange_n(&fault.ready, &expect, 2, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
            const char *env = getenv("DSACP_FAULT");
            if (fault_parse(env)) {
                /* A test's typo must not pass silently, nor crash a run: said once, then ignored. */
                fprintf(stderr, "dsacp: %s (ignored)\n", dsacp_last_error());
                dsacp_error_clear();
                fault.site = -1;
            }
            __atomic_store_n(&fault.ready, 1, __ATOMIC_RELEASE);
        }
        while (__atomic_load_n(&fault.ready, __ATOMIC_ACQUIRE) != 1) {
        }
    }
    if (fault.site < 0 || strcmp(site, fault_sites[fault.site]) != 0) return false;
    if (fault.rank >= 0 && fault.rank != fault.my_rank) return false;
    return __atomic_add_fetch(&fault.passes, 1, __ATOMIC_RELAXED) == fault.nth;
}

int dsacp_fault_error(const char *site, const char *what)
{
    return dsacp_error(DSACP_ENOMEM, "%s: out of memory (injected: DSACP_FAULT=%s)", what, site);
}
