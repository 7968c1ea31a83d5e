/*
 * alloc_count.h -- counting the heap allocations of a test executable: the malloc family
 * (malloc, calloc, realloc, aligned_alloc, posix_memalign, memalign; free) is interposed here --
 * the library, the OpenMP runtime and jansson resolve to it -- counted while alloc_counting is
 * set, and passed on to glibc's own. Include it in exactly one file of an executable.
 * alloc_hook, when set, runs for every counted allocation (test_alloc records the call stack).
 * ALLOC_COUNTING is 0 under AddressSanitizer, which owns malloc (the test then skips, exit 77).
 * alloc_llvm_openmp: whether LLVM's OpenMP runtime is loaded, which allocates in every parallel
 * region (GCC's libgomp only in regions of one thread and nested ones), so zero is asserted
 * under libgomp only.
 */
#ifndef DSACP_TEST_ALLOC_COUNT_H
#define DSACP_TEST_ALLOC_COUNT_H

#if defined(__SANITIZE_ADDRESS__)
#define ALLOC_COUNTING 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ALLOC_COUNTING 0
#endif
#endif
#ifndef ALLOC_COUNTING
#define ALLOC_COUNTING 1
#endif

#if ALLOC_COUNTING
#include <dlfcn.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

void *__libc_malloc(size_t);
void *__libc_calloc(size_t, size_t);
void *__libc_realloc(void *, size_t);
void *__libc_memalign(size_t, size_t);
void __libc_free(void *);

static atomic_bool alloc_counting;
static atomic_long alloc_count;
static void (*alloc_hook)(void);

static void alloc_counted(void)
{
    if (!atomic_load_explicit(&alloc_counting, memory_order_relaxed)) return;
    atomic_fetch_add(&alloc_count, 1);
    if (alloc_hook) alloc_hook();
}

void *malloc(size_t n)
{
    alloc_counted();
    return __libc_malloc(n);
}

void *calloc(size_t c, size_t n)
{
    alloc_counted();
    return __libc_calloc(c, n);
}

void *realloc(void *p, size_t n)
{
    alloc_counted();
    return __libc_realloc(p, n);
}

void *memalign(size_t a, size_t n)
{
    alloc_counted();
    return __libc_memalign(a, n);
}

void *aligned_alloc(size_t a, size_t n)
{
    alloc_counted();
    return __libc_memalign(a, n);
}

int posix_memalign(void **out, size_t a, size_t n)
{
    alloc_counted();
    void *p = __libc_memalign(a, n);
    if (!p) return 12; /* ENOMEM */
    *out = p;
    return 0;
}

void free(void *p) { __libc_free(p); }

static inline bool alloc_llvm_openmp(void) { return dlsym(RTLD_DEFAULT, "__kmpc_fork_call") != NULL; }

#endif
#endif
