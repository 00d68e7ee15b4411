/* cc_test.h - the few macros the C suites share: a failed check prints
 * where and why, and the test exits non-zero so ctest reports it. */
#ifndef CC_TEST_H
#define CC_TEST_H

#include <stdio.h>
#include <stdlib.h>

#include "cancelcore.h"

static int cc_test_failures;

#define CHECK(cond)                                                         \
    do {                                                                    \
        if (!(cond)) {                                                      \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__,          \
                    __LINE__, #cond);                                       \
            cc_test_failures++;                                             \
        }                                                                   \
    } while (0)

/* Checks a status, naming both sides when they differ. */
#define CHECK_ST(expr, want)                                                \
    do {                                                                    \
        cc_status got_ = (expr);                                            \
        if (got_ != (want)) {                                               \
            fprintf(stderr, "%s:%d: %s returned %s, wanted %s\n", __FILE__, \
                    __LINE__, #expr, cc_status_str(got_),                   \
                    cc_status_str(want));                                   \
            cc_test_failures++;                                             \
        }                                                                   \
    } while (0)

#define CHECK_EQ_U(a, b)                                                    \
    do {                                                                    \
        unsigned long long a_ = (unsigned long long)(a);                    \
        unsigned long long b_ = (unsigned long long)(b);                    \
        if (a_ != b_) {                                                     \
            fprintf(stderr, "%s:%d: %s == %llu, wanted %s == %llu\n",       \
                    __FILE__, __LINE__, #a, a_, #b, b_);                    \
            cc_test_failures++;                                             \
        }                                                                   \
    } while (0)

/* Runs one test function and reports it. */
#define RUN(test)                                                           \
    do {                                                                    \
        int before_ = cc_test_failures;                                     \
        test();                                                             \
        printf("%-48s %s\n", #test,                                         \
               cc_test_failures == before_ ? "ok" : "FAILED");              \
        fflush(stdout);                                                     \
    } while (0)

#define TEST_EXIT() (cc_test_failures == 0 ? EXIT_SUCCESS : EXIT_FAILURE)

#endif /* CC_TEST_H */
