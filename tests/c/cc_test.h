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

/* ------------------------------------------------------------ Windows
 * The suites are POSIX programs; mingw-w64's winpthreads gives them
 * pthreads, nanosleep, clock_gettime and sched_yield, but Windows has no
 * SIGALRM.  Their watchdogs (alarm + a SIGALRM handler that reports and
 * exits) run here on a thread instead: it polls the deadline, and calls
 * the handler from that thread, which is fine for a handler that only
 * writes and exits. */
#if defined(_WIN32)
#  include <pthread.h>
#  include <signal.h>
#  include <stdatomic.h>
#  include <time.h>
#  include <unistd.h>

#  ifndef SIGALRM
#    define SIGALRM 14
#  endif

typedef void (*cc_test_handler)(int);
static _Atomic(cc_test_handler) cc_test_alarm_handler;
static _Atomic long long cc_test_alarm_at; /* monotonic ms; 0: disarmed */
static atomic_int cc_test_alarm_thread;

static inline long long cc_test_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline void *cc_test_alarm_main(void *arg)
{
    (void)arg;
    for (;;) {
        struct timespec tick = {0, 50 * 1000000L};
        nanosleep(&tick, NULL);
        long long at = atomic_load(&cc_test_alarm_at);
        if (at == 0 || cc_test_now_ms() < at)
            continue;
        cc_test_handler h = atomic_load(&cc_test_alarm_handler);
        if (h && h != SIG_DFL && h != SIG_IGN)
            h(SIGALRM);
        if (h != SIG_IGN) {
            /* SIGALRM's default action ends the process. */
            static const char msg[] = "\nwatchdog: alarm expired\n";
            (void)!write(2, msg, sizeof msg - 1);
            _exit(EXIT_FAILURE);
        }
        atomic_store(&cc_test_alarm_at, 0);
    }
    return NULL;
}

/* alarm(): arms (s > 0) or disarms (0) the one watchdog; returns the
 * seconds that were left. */
static inline unsigned cc_test_alarm(unsigned s)
{
    if (!atomic_exchange(&cc_test_alarm_thread, 1)) {
        pthread_t t;
        if (pthread_create(&t, NULL, cc_test_alarm_main, NULL) == 0)
            pthread_detach(t);
    }
    long long now = cc_test_now_ms();
    long long at = atomic_exchange(&cc_test_alarm_at, s ? now + (long long)s * 1000 : 0);
    return at > now ? (unsigned)((at - now + 999) / 1000) : 0;
}

static inline cc_test_handler cc_test_signal(int sig, cc_test_handler h)
{
    if (sig == SIGALRM)
        return atomic_exchange(&cc_test_alarm_handler, h);
    return signal(sig, h);
}

/* winpthreads accepts pthread_condattr_setclock(CLOCK_MONOTONIC) but still
 * reads a timed wait's deadline as wall-clock time, so a monotonic deadline
 * lies in the past and every timed wait times out at once.  The suites
 * time-wait only with CLOCK_MONOTONIC deadlines (so must any new one): turn
 * them into the relative wait winpthreads offers. */
static inline int cc_test_cond_timedwait(pthread_cond_t *c, pthread_mutex_t *m,
                                         const struct timespec *deadline)
{
    struct timespec now, rel;
    clock_gettime(CLOCK_MONOTONIC, &now);
    long long ns = ((long long)deadline->tv_sec - now.tv_sec) * 1000000000LL
                   + (deadline->tv_nsec - now.tv_nsec);
    if (ns < 0)
        ns = 0;
    rel.tv_sec = (time_t)(ns / 1000000000LL);
    rel.tv_nsec = (long)(ns % 1000000000LL);
    return pthread_cond_timedwait_relative_np(c, m, &rel);
}

#  define alarm(s) cc_test_alarm(s)
#  define signal(sig, h) cc_test_signal((sig), (h))
#  define pthread_cond_timedwait(c, m, t) cc_test_cond_timedwait((c), (m), (t))
#endif /* _WIN32 */

#endif /* CC_TEST_H */
