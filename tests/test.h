/*
 * test.h -- the tiny harness every tests/test_*.c uses. Each test file is its own executable
 * (one CTest test, own process, own timeout). CHECK prints where it failed and keeps going;
 * the file's main returns test_finish(), non-zero when any check failed.
 */
#ifndef DSACP_TEST_H
#define DSACP_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int test_failures_ = 0;
static int test_checks_ = 0;

#define CHECK(cond)                                                                  \
    do {                                                                             \
        test_checks_++;                                                              \
        if (!(cond)) {                                                               \
            test_failures_++;                                                        \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
        }                                                                            \
    } while (0)

#define CHECKF(cond, ...)                                                            \
    do {                                                                             \
        test_checks_++;                                                              \
        if (!(cond)) {                                                               \
            test_failures_++;                                                        \
            fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                            \
            fputc('\n', stderr);                                                     \
        }                                                                            \
    } while (0)

/* A call returning a dsacp status must succeed; prints dsacp_last_error() otherwise. */
#define CHECK_OK(call)                                                                    \
    do {                                                                                  \
        int rc_ = (call);                                                                 \
        test_checks_++;                                                                   \
        if (rc_ != 0) {                                                                   \
            test_failures_++;                                                             \
            fprintf(stderr, "%s:%d: %s returned %s: %s\n", __FILE__, __LINE__, #call,     \
                    dsacp_status_name(rc_), dsacp_last_error());                          \
        }                                                                                 \
    } while (0)

/* Same, but stops the test (for set-up calls whose failure makes the rest meaningless). */
#define REQUIRE_OK(call)                                                                  \
    do {                                                                                  \
        int rc_ = (call);                                                                 \
        if (rc_ != 0) {                                                                   \
            fprintf(stderr, "%s:%d: %s returned %s: %s\n", __FILE__, __LINE__, #call,     \
                    dsacp_status_name(rc_), dsacp_last_error());                          \
            exit(1);                                                                      \
        }                                                                                 \
    } while (0)

static inline int test_finish(const char *name)
{
    if (test_failures_) {
        fprintf(stderr, "FAIL %s: %d of %d checks failed\n", name, test_failures_, test_checks_);
        return 1;
    }
    printf("OK %s: %d checks\n", name, test_checks_);
    return 0;
}

#endif
