/* test_api.c - the public header's contract, case by case: every bad input
 * and every wrong state gets the status the header documents for it.
 *
 * Threads appear only where a case needs one object blocked in another
 * thread (a close waiting for an operation, a free waiting for an end).
 * Worker threads never call CHECK (the harness counter is not atomic): they
 * record what they saw in atomics and the main thread checks after a join. */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cc_test.h"

/* ------------------------------------------------------------ helpers */

static pthread_t g_main_thread;
static atomic_int g_seq; /* orders callbacks across one test */

/* A hung test is a failure that names itself, not a stuck ctest: each test
 * runs under an alarm whose handler reports the test and exits. */
static const char *volatile g_current_test = "?";

static void on_watchdog(int sig)
{
    (void)sig;
    static const char head[] = "\nHUNG (watchdog, 20 s): ";
    const char *name = g_current_test;
    size_t n = 0;
    while (name[n])
        n++;
    ssize_t w = write(2, head, sizeof head - 1);
    w = write(2, name, n);
    w = write(2, "\n", 1);
    (void)w;
    _exit(EXIT_FAILURE);
}

#define RUN_GUARDED(test)                                                   \
    do {                                                                    \
        g_current_test = #test;                                             \
        alarm(20);                                                          \
        RUN(test);                                                          \
        alarm(0);                                                           \
    } while (0)

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
    }
}

/* Polls the host's state (one atomic load) until it reads `want`. */
static int wait_host_state(const cc_host *host, enum cc_host_state want, int ms)
{
    int64_t deadline = now_ms() + ms;
    while (cc_host_state(host) != want) {
        if (now_ms() > deadline)
            return 0;
        sleep_ms(1);
    }
    return 1;
}

/* A one-shot event another thread can wait for, with a time limit so a
 * broken implementation fails the test instead of hanging it. */
typedef struct gate {
    pthread_mutex_t m;
    pthread_cond_t c;
    int open;
} gate;

static void gate_init(gate *g)
{
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_mutex_init(&g->m, NULL);
    pthread_cond_init(&g->c, &a);
    pthread_condattr_destroy(&a);
    g->open = 0;
}

static void gate_destroy(gate *g)
{
    pthread_cond_destroy(&g->c);
    pthread_mutex_destroy(&g->m);
}

static void gate_open(gate *g)
{
    pthread_mutex_lock(&g->m);
    g->open = 1;
    pthread_cond_broadcast(&g->c);
    pthread_mutex_unlock(&g->m);
}

static int gate_wait(gate *g, int ms)
{
    struct timespec dl;
    clock_gettime(CLOCK_MONOTONIC, &dl);
    dl.tv_sec += ms / 1000;
    dl.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (dl.tv_nsec >= 1000000000L) {
        dl.tv_sec++;
        dl.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&g->m);
    while (!g->open)
        if (pthread_cond_timedwait(&g->c, &g->m, &dl) == ETIMEDOUT)
            break;
    int r = g->open;
    pthread_mutex_unlock(&g->m);
    return r;
}

/* What one operation's callbacks did. */
typedef struct rec {
    atomic_int cancels, frees;
    atomic_int reason;          /* of the last cancel */
    atomic_int cancel_at, free_at; /* g_seq when they ran */
    atomic_int cancel_on_expected; /* ran on expect_thread */
    pthread_t expect_thread;    /* set before the trigger */
    gate *on_cancel;            /* opened by the cancel callback if set */
} rec;

static void rec_init(rec *r)
{
    atomic_init(&r->cancels, 0);
    atomic_init(&r->frees, 0);
    atomic_init(&r->reason, -100);
    atomic_init(&r->cancel_at, 0);
    atomic_init(&r->free_at, 0);
    atomic_init(&r->cancel_on_expected, 0);
    r->expect_thread = g_main_thread;
    r->on_cancel = NULL;
}

static void rec_cancel(cc_reason reason, void *state)
{
    rec *r = state;
    atomic_store(&r->reason, (int)reason);
    atomic_store(&r->cancel_at, atomic_fetch_add(&g_seq, 1) + 1);
    atomic_store(&r->cancel_on_expected,
                 pthread_equal(pthread_self(), r->expect_thread) ? 1 : 0);
    atomic_fetch_add(&r->cancels, 1);
    if (r->on_cancel)
        gate_open(r->on_cancel);
}

static void rec_free(void *state)
{
    rec *r = state;
    atomic_store(&r->free_at, atomic_fetch_add(&g_seq, 1) + 1);
    atomic_fetch_add(&r->frees, 1);
}

/* A host, opened, with one channel. */
typedef struct fx {
    cc_host *host;
    cc_channel *ch;
} fx;

static void fx_open(fx *f)
{
    f->host = NULL;
    f->ch = NULL;
    CHECK_ST(cc_host_create(&f->host), CC_OK);
    CHECK(f->host != NULL);
    CHECK_ST(cc_host_open(f->host), CC_OK);
    CHECK_ST(cc_channel_open(f->host, &f->ch), CC_OK);
    CHECK(f->ch != NULL);
}

static cc_op *begin_ok(cc_channel *ch)
{
    cc_op *op = NULL;
    CHECK_ST(cc_op_begin(ch, &op), CC_OK);
    CHECK(op != NULL);
    return op;
}

static cc_stats stats_of(cc_host *host)
{
    cc_stats s;
    memset(&s, 0xAB, sizeof s);
    CHECK_ST(cc_host_get_stats(host, &s), CC_OK);
    return s;
}

/* ------------------------------------------------------- NULL arguments */

static void test_null_handles(void)
{
    cc_channel *c = NULL;
    cc_op *op = NULL;
    cc_stats st;
    rec r;
    rec_init(&r);

    CHECK_ST(cc_host_create(NULL), CC_E_INVALID_ARG);
    CHECK_ST(cc_host_open(NULL), CC_E_INVALID_ARG);
    CHECK_ST(cc_host_close(NULL, 0), CC_E_INVALID_ARG);
    CHECK_ST(cc_host_close(NULL, -1), CC_E_INVALID_ARG);
    CHECK_ST(cc_host_abort(NULL), CC_E_INVALID_ARG);
    CHECK_ST(cc_host_reset(NULL), CC_E_INVALID_ARG);
    cc_host_free(NULL); /* ignored */
    CHECK(cc_host_state(NULL) == CC_HOST_STATE_INVALID);
    CHECK_ST(cc_host_set_close_timeout(NULL, 10), CC_E_INVALID_ARG);
    CHECK_ST(cc_host_set_close_timeout(NULL, -5), CC_E_INVALID_ARG);
    CHECK(cc_host_close_timeout(NULL) == -1);

    CHECK_ST(cc_channel_open(NULL, &c), CC_E_INVALID_ARG);
    CHECK(c == NULL);
    CHECK_ST(cc_channel_fault(NULL), CC_E_INVALID_ARG);
    CHECK_ST(cc_channel_close(NULL), CC_E_INVALID_ARG);
    CHECK(cc_channel_state(NULL) == CC_CHANNEL_STATE_INVALID);

    CHECK_ST(cc_op_begin(NULL, &op), CC_E_INVALID_ARG);
    CHECK(op == NULL);
    CHECK_ST(cc_op_register_cancel(NULL, rec_cancel, rec_free, &r), CC_E_INVALID_ARG);
    CHECK_ST(cc_op_register_cancel(NULL, NULL, NULL, NULL), CC_E_INVALID_ARG);
    CHECK(cc_op_is_canceled(NULL) < 0);
    CHECK(cc_op_is_canceled(NULL) == CC_E_INVALID_OPERATION);
    CHECK(cc_op_reason(NULL) == CC_REASON_INVALID);
    CHECK_ST(cc_op_end(NULL), CC_E_INVALID_ARG);

    CHECK_ST(cc_host_get_stats(NULL, &st), CC_E_INVALID_ARG);
    CHECK_ST(cc_host_report_callback_error(NULL), CC_E_INVALID_ARG);
    CHECK_ST(cc_host_fault_add(NULL, CC_FAULT_AT_BEGIN, CC_FAULT_NOMEM, 1, 0.0),
             CC_E_INVALID_ARG);
    CHECK_ST(cc_host_fault_reset(NULL, 1), CC_E_INVALID_ARG);

    CHECK_EQ_U(atomic_load(&r.cancels), 0);
    CHECK_EQ_U(atomic_load(&r.frees), 0);
}

/* NULL out-pointers with valid handles: refused, and nothing was created. */
static void test_null_out_pointers(void)
{
    fx f;
    fx_open(&f);
    CHECK_ST(cc_channel_open(f.host, NULL), CC_E_INVALID_ARG);
    CHECK_ST(cc_host_get_stats(f.host, NULL), CC_E_INVALID_ARG);
    CHECK_ST(cc_op_begin(f.ch, NULL), CC_E_INVALID_ARG);
    cc_stats s = stats_of(f.host);
    CHECK_EQ_U(s.channels_open, 1);
    CHECK_EQ_U(s.ops_in_flight, 0);
    CHECK_EQ_U(s.ops_begun, 0);
    cc_host_free(f.host);
}

/* A NULL cancel is refused, does not use up the one registration, and its
 * free_state is never called. */
static void test_register_null_cancel(void)
{
    fx f;
    fx_open(&f);
    rec bad, good;
    rec_init(&bad);
    rec_init(&good);
    cc_op *op = begin_ok(f.ch);
    CHECK_ST(cc_op_register_cancel(op, NULL, rec_free, &bad), CC_E_INVALID_ARG);
    CHECK_ST(cc_op_register_cancel(op, NULL, NULL, NULL), CC_E_INVALID_ARG);
    CHECK_ST(cc_op_register_cancel(op, rec_cancel, rec_free, &good), CC_OK);
    CHECK_ST(cc_channel_fault(f.ch), CC_OK);
    CHECK_ST(cc_op_end(op), CC_OK);
    CHECK_EQ_U(atomic_load(&bad.frees), 0);
    CHECK_EQ_U(atomic_load(&bad.cancels), 0);
    CHECK_EQ_U(atomic_load(&good.cancels), 1);
    CHECK_EQ_U(atomic_load(&good.frees), 1);
    cc_host_free(f.host);
}

/* G2: the second registration is refused, the first stays in force, and
 * the second free_state never runs. */
static void test_second_registration(void)
{
    fx f;
    fx_open(&f);
    rec first, second;
    rec_init(&first);
    rec_init(&second);
    cc_op *op = begin_ok(f.ch);
    CHECK_ST(cc_op_register_cancel(op, rec_cancel, rec_free, &first), CC_OK);
    CHECK_ST(cc_op_register_cancel(op, rec_cancel, rec_free, &second),
             CC_E_INVALID_OPERATION);
    CHECK_ST(cc_op_register_cancel(op, rec_cancel, NULL, &second),
             CC_E_INVALID_OPERATION);
    CHECK_ST(cc_host_abort(f.host), CC_OK);
    CHECK_ST(cc_op_end(op), CC_OK);
    CHECK_EQ_U(atomic_load(&first.cancels), 1);
    CHECK_EQ_U(atomic_load(&first.reason), CC_HOST_ABORT);
    CHECK_EQ_U(atomic_load(&first.frees), 1);
    CHECK_EQ_U(atomic_load(&second.cancels), 0);
    CHECK_EQ_U(atomic_load(&second.frees), 0);
    cc_host_free(f.host);
}

/* ------------------------------------------------ stale operation handles */

static void check_stale(cc_op *op, rec *r)
{
    CHECK_ST(cc_op_register_cancel(op, rec_cancel, rec_free, r), CC_E_INVALID_OPERATION);
    CHECK_ST(cc_op_end(op), CC_E_INVALID_OPERATION);
    CHECK(cc_op_is_canceled(op) < 0);
    CHECK(cc_op_is_canceled(op) == CC_E_INVALID_OPERATION);
    CHECK(cc_op_reason(op) == CC_REASON_INVALID);
}

static void test_stale_op_after_end(void)
{
    fx f;
    fx_open(&f);
    rec r, stale;
    rec_init(&r);
    rec_init(&stale);
    cc_op *op = begin_ok(f.ch);
    CHECK_ST(cc_op_register_cancel(op, rec_cancel, rec_free, &r), CC_OK);
    CHECK_ST(cc_op_end(op), CC_OK);
    CHECK_EQ_U(atomic_load(&r.frees), 1);
    check_stale(op, &stale);
    check_stale(op, &stale); /* still stale, nothing changed */
    /* the stale registration's callbacks never run, even on an abort */
    CHECK_ST(cc_host_abort(f.host), CC_OK);
    CHECK_EQ_U(atomic_load(&stale.cancels), 0);
    CHECK_EQ_U(atomic_load(&stale.frees), 0);
    CHECK_EQ_U(atomic_load(&r.cancels), 0);
    CHECK_EQ_U(atomic_load(&r.frees), 1);
    cc_stats s = stats_of(f.host);
    CHECK_EQ_U(s.ops_begun, 1);
    CHECK_EQ_U(s.ops_ended, 1);
    CHECK_EQ_U(s.ops_in_flight, 0);
    cc_host_free(f.host);
}

/* A canceled then ended op reads as stale, not as its old reason; a new op
 * (very likely in its slot) starts not canceled. */
static void test_stale_op_after_cancel(void)
{
    fx f;
    fx_open(&f);
    cc_channel *c2 = NULL;
    CHECK_ST(cc_channel_open(f.host, &c2), CC_OK);
    cc_op *op = begin_ok(c2);
    CHECK_ST(cc_channel_fault(c2), CC_OK);
    CHECK(cc_op_is_canceled(op) == 1);
    CHECK(cc_op_reason(op) == CC_CHANNEL_FAULTED);
    CHECK_ST(cc_op_end(op), CC_OK);
    rec stale;
    rec_init(&stale);
    check_stale(op, &stale);
    cc_op *fresh = begin_ok(f.ch);
    CHECK(cc_op_is_canceled(fresh) == 0);
    CHECK(cc_op_reason(fresh) == CC_NOT_CANCELED);
    check_stale(op, &stale);
    CHECK(cc_op_is_canceled(fresh) == 0);
    CHECK_ST(cc_op_end(fresh), CC_OK);
    CHECK_EQ_U(atomic_load(&stale.cancels), 0);
    CHECK_EQ_U(atomic_load(&stale.frees), 0);
    cc_host_free(f.host);
}

#define REUSE_N 64

/* The old handle stays stale after its slot was (very likely) reused, and
 * using it does not disturb the operations now in flight. */
static void test_stale_op_slot_reused(void)
{
    fx f;
    fx_open(&f);
    rec stale;
    rec_init(&stale);
    cc_op *old = begin_ok(f.ch);
    CHECK_ST(cc_op_end(old), CC_OK);
    for (int i = 0; i < 200; i++) {
        cc_op *t = begin_ok(f.ch);
        CHECK_ST(cc_op_end(t), CC_OK);
    }
    cc_op *fresh[REUSE_N];
    rec rs[REUSE_N];
    int same_pointer = 0;
    for (int i = 0; i < REUSE_N; i++) {
        rec_init(&rs[i]);
        fresh[i] = begin_ok(f.ch);
        if (fresh[i] == old)
            same_pointer = 1;
    }
    printf("  (old handle value reused by a new op: %s)\n", same_pointer ? "yes" : "no");

    check_stale(old, &stale);
    for (int i = 0; i < REUSE_N; i++) {
        CHECK(cc_op_is_canceled(fresh[i]) == 0);
        CHECK(cc_op_reason(fresh[i]) == CC_NOT_CANCELED);
        CHECK_ST(cc_op_register_cancel(fresh[i], rec_cancel, rec_free, &rs[i]), CC_OK);
    }
    check_stale(old, &stale);
    cc_stats s = stats_of(f.host);
    CHECK_EQ_U(s.ops_in_flight, REUSE_N);

    CHECK_ST(cc_channel_fault(f.ch), CC_OK);
    check_stale(old, &stale);
    for (int i = 0; i < REUSE_N; i++) {
        CHECK_EQ_U(atomic_load(&rs[i].cancels), 1);
        CHECK_EQ_U(atomic_load(&rs[i].reason), CC_CHANNEL_FAULTED);
        CHECK_EQ_U(atomic_load(&rs[i].frees), 0);
        CHECK_ST(cc_op_end(fresh[i]), CC_OK);
        CHECK_EQ_U(atomic_load(&rs[i].frees), 1);
    }
    check_stale(old, &stale);
    CHECK_EQ_U(atomic_load(&stale.cancels), 0);
    CHECK_EQ_U(atomic_load(&stale.frees), 0);
    s = stats_of(f.host);
    CHECK_EQ_U(s.ops_in_flight, 0);
    CHECK_EQ_U(s.ops_begun, 1 + 200 + REUSE_N);
    CHECK_EQ_U(s.ops_ended, 1 + 200 + REUSE_N);
    CHECK_EQ_U(s.free_states_run, REUSE_N);
    cc_host_free(f.host);
}

/* ------------------------------------------------- host state table, G12 */

static void test_host_state_created(void)
{
    cc_host *h = NULL;
    cc_channel *c = NULL;
    CHECK_ST(cc_host_create(&h), CC_OK);
    CHECK(cc_host_state(h) == CC_HOST_STATE_CREATED);
    CHECK_ST(cc_host_close(h, 0), CC_E_INVALID_OPERATION);
    CHECK_ST(cc_host_close(h, -1), CC_E_INVALID_OPERATION);
    CHECK(cc_host_state(h) == CC_HOST_STATE_CREATED);
    CHECK_ST(cc_host_abort(h), CC_OK);
    CHECK(cc_host_state(h) == CC_HOST_STATE_CREATED);
    CHECK_ST(cc_host_abort(h), CC_OK);
    CHECK(cc_host_state(h) == CC_HOST_STATE_CREATED);
    CHECK_ST(cc_host_reset(h), CC_OK);
    CHECK(cc_host_state(h) == CC_HOST_STATE_CREATED);
    CHECK_ST(cc_channel_open(h, &c), CC_E_INVALID_OPERATION);
    CHECK(cc_host_state(h) == CC_HOST_STATE_CREATED);
    CHECK_ST(cc_host_open(h), CC_OK);
    CHECK(cc_host_state(h) == CC_HOST_STATE_OPEN);
    cc_host_free(h);
}

static void test_host_state_open(void)
{
    cc_host *h = NULL;
    CHECK_ST(cc_host_create(&h), CC_OK);
    CHECK_ST(cc_host_open(h), CC_OK);
    CHECK_ST(cc_host_open(h), CC_E_INVALID_OPERATION);
    CHECK(cc_host_state(h) == CC_HOST_STATE_OPEN);
    CHECK_ST(cc_host_reset(h), CC_E_INVALID_OPERATION);
    CHECK(cc_host_state(h) == CC_HOST_STATE_OPEN);
    CHECK_ST(cc_host_close(h, 0), CC_OK);
    CHECK(cc_host_state(h) == CC_HOST_STATE_CLOSED);

    /* OPEN -> FAULTED by abort, on a fresh host */
    cc_host *h2 = NULL;
    CHECK_ST(cc_host_create(&h2), CC_OK);
    CHECK_ST(cc_host_open(h2), CC_OK);
    CHECK_ST(cc_host_abort(h2), CC_OK);
    CHECK(cc_host_state(h2) == CC_HOST_STATE_FAULTED);

    /* close with the default timeout, nothing in flight */
    cc_host *h3 = NULL;
    CHECK_ST(cc_host_create(&h3), CC_OK);
    CHECK_ST(cc_host_open(h3), CC_OK);
    CHECK_ST(cc_host_close(h3, -1), CC_OK);
    CHECK(cc_host_state(h3) == CC_HOST_STATE_CLOSED);
    cc_host_free(h);
    cc_host_free(h2);
    cc_host_free(h3);
}

static void test_host_state_faulted(void)
{
    fx f;
    fx_open(&f);
    CHECK_ST(cc_host_abort(f.host), CC_OK);
    CHECK(cc_host_state(f.host) == CC_HOST_STATE_FAULTED);
    CHECK_ST(cc_host_abort(f.host), CC_OK); /* idempotent */
    CHECK(cc_host_state(f.host) == CC_HOST_STATE_FAULTED);
    CHECK_ST(cc_host_open(f.host), CC_E_INVALID_OPERATION);
    CHECK(cc_host_state(f.host) == CC_HOST_STATE_FAULTED);
    CHECK_ST(cc_host_reset(f.host), CC_E_INVALID_OPERATION);
    CHECK(cc_host_state(f.host) == CC_HOST_STATE_FAULTED);
    cc_channel *c = NULL;
    CHECK_ST(cc_channel_open(f.host, &c), CC_E_OBJECT_FAULTED);
    cc_op *op = NULL;
    CHECK_ST(cc_op_begin(f.ch, &op), CC_E_OBJECT_FAULTED);
    /* abort was before the close, not during it: CC_OK */
    CHECK_ST(cc_host_close(f.host, 0), CC_OK);
    CHECK(cc_host_state(f.host) == CC_HOST_STATE_CLOSED);
    cc_host_free(f.host);
}

static void test_host_state_closed_and_reset(void)
{
    fx f;
    fx_open(&f);
    cc_op *op = begin_ok(f.ch);
    CHECK_ST(cc_op_end(op), CC_OK);
    CHECK_ST(cc_host_close(f.host, 1000), CC_OK);
    CHECK(cc_host_state(f.host) == CC_HOST_STATE_CLOSED);
    CHECK_ST(cc_host_open(f.host), CC_E_INVALID_OPERATION);
    CHECK_ST(cc_host_close(f.host, 0), CC_E_INVALID_OPERATION);
    CHECK(cc_host_state(f.host) == CC_HOST_STATE_CLOSED);
    CHECK_ST(cc_host_abort(f.host), CC_OK);
    CHECK(cc_host_state(f.host) == CC_HOST_STATE_CLOSED);
    cc_channel *c = NULL;
    CHECK_ST(cc_channel_open(f.host, &c), CC_E_INVALID_OPERATION);
    CHECK_ST(cc_host_reset(f.host), CC_OK);
    CHECK(cc_host_state(f.host) == CC_HOST_STATE_CREATED);
    CHECK_ST(cc_channel_open(f.host, &c), CC_E_INVALID_OPERATION);

    /* a reset host opens again and works; its old channel stays closed */
    CHECK_ST(cc_host_open(f.host), CC_OK);
    CHECK(cc_host_state(f.host) == CC_HOST_STATE_OPEN);
    CHECK(cc_channel_state(f.ch) == CC_CHANNEL_STATE_CLOSED);
    CHECK_ST(cc_op_begin(f.ch, &op), CC_E_INVALID_OPERATION);
    CHECK_ST(cc_channel_open(f.host, &c), CC_OK);
    CHECK(cc_channel_state(c) == CC_CHANNEL_STATE_OPEN);
    rec r;
    rec_init(&r);
    op = begin_ok(c);
    CHECK_ST(cc_op_register_cancel(op, rec_cancel, rec_free, &r), CC_OK);
    CHECK_ST(cc_host_abort(f.host), CC_OK);
    CHECK_EQ_U(atomic_load(&r.cancels), 1);
    CHECK_EQ_U(atomic_load(&r.reason), CC_HOST_ABORT);
    CHECK_ST(cc_op_end(op), CC_OK);
    CHECK_EQ_U(atomic_load(&r.frees), 1);
    /* counters run since cc_host_create, across the reset */
    cc_stats s = stats_of(f.host);
    CHECK_EQ_U(s.ops_begun, 2);
    CHECK_EQ_U(s.ops_ended, 2);
    CHECK_ST(cc_channel_close(f.ch), CC_OK);
    CHECK_ST(cc_host_close(f.host, 0), CC_OK);
    CHECK_ST(cc_host_reset(f.host), CC_OK);
    CHECK_ST(cc_host_reset(f.host), CC_OK); /* CREATED -> CREATED */
    CHECK(cc_host_state(f.host) == CC_HOST_STATE_CREATED);
    cc_host_free(f.host);
}

typedef struct closer {
    cc_host *host;
    int64_t timeout;
    atomic_int status;
    atomic_int done;
} closer;

static void *closer_main(void *p)
{
    closer *c = p;
    atomic_store(&c->status, (int)cc_host_close(c->host, c->timeout));
    atomic_store(&c->done, 1);
    return NULL;
}

/* CLOSING: a close blocked in another thread on an operation in flight. */
static void test_host_state_closing(void)
{
    fx f;
    fx_open(&f);
    rec r;
    rec_init(&r);
    cc_op *op = begin_ok(f.ch);
    CHECK_ST(cc_op_register_cancel(op, rec_cancel, rec_free, &r), CC_OK);

    closer cl = {.host = f.host, .timeout = 5000};
    atomic_init(&cl.status, 999);
    atomic_init(&cl.done, 0);
    pthread_t t;
    pthread_create(&t, NULL, closer_main, &cl);
    CHECK(wait_host_state(f.host, CC_HOST_STATE_CLOSING, 2000));

    CHECK_ST(cc_host_open(f.host), CC_E_INVALID_OPERATION);
    CHECK_ST(cc_host_close(f.host, 0), CC_E_INVALID_OPERATION);
    CHECK_ST(cc_host_close(f.host, -1), CC_E_INVALID_OPERATION);
    CHECK_ST(cc_host_reset(f.host), CC_E_INVALID_OPERATION);
    cc_channel *c = NULL;
    CHECK_ST(cc_channel_open(f.host, &c), CC_E_INVALID_OPERATION);
    cc_op *op2 = NULL;
    CHECK_ST(cc_op_begin(f.ch, &op2), CC_E_INVALID_OPERATION);
    CHECK(cc_host_state(f.host) == CC_HOST_STATE_CLOSING);
    CHECK(atomic_load(&cl.done) == 0);
    /* close fires no cancel by itself (G8) */
    CHECK(cc_op_is_canceled(op) == 0);
    CHECK_EQ_U(atomic_load(&r.cancels), 0);

    CHECK_ST(cc_op_end(op), CC_OK);
    pthread_join(t, NULL);
    CHECK_ST((cc_status)atomic_load(&cl.status), CC_OK);
    CHECK(cc_host_state(f.host) == CC_HOST_STATE_CLOSED);
    CHECK_EQ_U(atomic_load(&r.cancels), 0);
    CHECK_EQ_U(atomic_load(&r.frees), 1);
    cc_host_free(f.host);
}

/* ----------------------------------------------------------- channels */

static void test_channel_open_by_host_state(void)
{
    cc_host *h = NULL;
    cc_channel *c = NULL;
    CHECK_ST(cc_host_create(&h), CC_OK);
    CHECK_ST(cc_channel_open(h, &c), CC_E_INVALID_OPERATION); /* CREATED */
    CHECK_ST(cc_host_open(h), CC_OK);
    CHECK_ST(cc_channel_open(h, &c), CC_OK);                  /* OPEN */
    CHECK(cc_channel_state(c) == CC_CHANNEL_STATE_OPEN);
    CHECK_ST(cc_host_abort(h), CC_OK);
    cc_channel *c2 = NULL;
    CHECK_ST(cc_channel_open(h, &c2), CC_E_OBJECT_FAULTED);   /* FAULTED */
    CHECK_ST(cc_host_close(h, 0), CC_OK);
    CHECK_ST(cc_channel_open(h, &c2), CC_E_INVALID_OPERATION); /* CLOSED */
    CHECK(cc_channel_state(c) == CC_CHANNEL_STATE_CLOSED);
    cc_stats s = stats_of(h);
    CHECK_EQ_U(s.channels_open, 1);
    cc_host_free(h); /* frees the channel never closed */
}

static void test_op_begin_faulted_channel(void)
{
    fx f;
    fx_open(&f);
    cc_channel *c2 = NULL;
    CHECK_ST(cc_channel_open(f.host, &c2), CC_OK);
    CHECK_ST(cc_channel_fault(f.ch), CC_OK);
    CHECK(cc_channel_state(f.ch) == CC_CHANNEL_STATE_FAULTED);
    CHECK(cc_host_state(f.host) == CC_HOST_STATE_OPEN);
    cc_op *op = NULL;
    CHECK_ST(cc_op_begin(f.ch, &op), CC_E_OBJECT_FAULTED);
    /* the other channel is unaffected (G9) */
    CHECK(cc_channel_state(c2) == CC_CHANNEL_STATE_OPEN);
    op = begin_ok(c2);
    CHECK(cc_op_is_canceled(op) == 0);
    CHECK_ST(cc_op_end(op), CC_OK);
    cc_stats s = stats_of(f.host);
    CHECK_EQ_U(s.ops_begun, 1);
    CHECK_EQ_U(s.ops_in_flight, 0);
    CHECK_ST(cc_channel_close(f.ch), CC_OK);
    CHECK_ST(cc_channel_close(c2), CC_OK);
    cc_host_free(f.host);
}

static void test_op_begin_aborted_host(void)
{
    fx f;
    fx_open(&f);
    CHECK_ST(cc_host_abort(f.host), CC_OK);
    cc_op *op = NULL;
    CHECK_ST(cc_op_begin(f.ch, &op), CC_E_OBJECT_FAULTED);
    CHECK_ST(cc_host_close(f.host, 0), CC_OK);
    /* once closed, the channel is CLOSED and the host not OPEN */
    CHECK(cc_channel_state(f.ch) == CC_CHANNEL_STATE_CLOSED);
    CHECK_ST(cc_op_begin(f.ch, &op), CC_E_INVALID_OPERATION);
    cc_host_free(f.host);
}

static void test_op_begin_after_host_closed(void)
{
    fx f;
    fx_open(&f);
    CHECK_ST(cc_host_close(f.host, 0), CC_OK);
    CHECK(cc_channel_state(f.ch) == CC_CHANNEL_STATE_CLOSED);
    cc_op *op = NULL;
    CHECK_ST(cc_op_begin(f.ch, &op), CC_E_INVALID_OPERATION);
    CHECK_ST(cc_channel_fault(f.ch), CC_E_INVALID_OPERATION);
    CHECK(cc_channel_state(f.ch) == CC_CHANNEL_STATE_CLOSED);
    CHECK_ST(cc_channel_fault(f.ch), CC_E_INVALID_OPERATION);
    CHECK_ST(cc_channel_close(f.ch), CC_OK); /* what remains */
    cc_stats s = stats_of(f.host);
    CHECK_EQ_U(s.ops_begun, 0);
    CHECK_EQ_U(s.channels_open, 0);
    cc_host_free(f.host);
}

static void test_channel_fault_twice(void)
{
    fx f;
    fx_open(&f);
    rec r;
    rec_init(&r);
    cc_op *op = begin_ok(f.ch);
    CHECK_ST(cc_op_register_cancel(op, rec_cancel, rec_free, &r), CC_OK);
    CHECK_ST(cc_channel_fault(f.ch), CC_OK);
    CHECK(cc_channel_state(f.ch) == CC_CHANNEL_STATE_FAULTED);
    CHECK_EQ_U(atomic_load(&r.cancels), 1);
    CHECK_EQ_U(atomic_load(&r.cancel_on_expected), 1);
    CHECK_ST(cc_channel_fault(f.ch), CC_OK);
    CHECK(cc_channel_state(f.ch) == CC_CHANNEL_STATE_FAULTED);
    CHECK_EQ_U(atomic_load(&r.cancels), 1);
    CHECK(cc_host_state(f.host) == CC_HOST_STATE_OPEN);
    /* the first trigger decides the reason (G6) */
    CHECK_ST(cc_host_abort(f.host), CC_OK);
    CHECK_EQ_U(atomic_load(&r.cancels), 1);
    CHECK(cc_op_reason(op) == CC_CHANNEL_FAULTED);
    CHECK_ST(cc_op_end(op), CC_OK);
    CHECK_EQ_U(atomic_load(&r.frees), 1);
    cc_stats s = stats_of(f.host);
    CHECK_EQ_U(s.ops_canceled, 1);
    CHECK_EQ_U(s.cancels_channel_faulted, 1);
    CHECK_EQ_U(s.cancels_host_abort, 0);
    cc_host_free(f.host);
}

/* The channel handle goes, its operation stays: it registers, is canceled
 * by an abort and ends; the channel's memory goes with it (ASan checks). */
static void test_channel_close_with_op_in_flight(void)
{
    fx f;
    fx_open(&f);
    rec r;
    rec_init(&r);
    cc_op *op = begin_ok(f.ch);
    CHECK_ST(cc_channel_close(f.ch), CC_OK);
    cc_stats s = stats_of(f.host);
    CHECK_EQ_U(s.channels_open, 0);
    CHECK_EQ_U(s.ops_in_flight, 1);
    CHECK(cc_op_is_canceled(op) == 0);
    CHECK(cc_op_reason(op) == CC_NOT_CANCELED);
    CHECK_ST(cc_op_register_cancel(op, rec_cancel, rec_free, &r), CC_OK);
    CHECK_EQ_U(atomic_load(&r.cancels), 0);
    CHECK_ST(cc_host_abort(f.host), CC_OK);
    CHECK_EQ_U(atomic_load(&r.cancels), 1);
    CHECK_EQ_U(atomic_load(&r.reason), CC_HOST_ABORT);
    CHECK(cc_op_is_canceled(op) == 1);
    CHECK(cc_op_reason(op) == CC_HOST_ABORT);
    CHECK_ST(cc_op_end(op), CC_OK);
    CHECK_EQ_U(atomic_load(&r.frees), 1);
    s = stats_of(f.host);
    CHECK_EQ_U(s.ops_in_flight, 0);
    CHECK_ST(cc_host_close(f.host, 0), CC_OK);
    cc_host_free(f.host);

    /* and the same with the host closed normally, op ending last */
    fx g;
    fx_open(&g);
    rec r2;
    rec_init(&r2);
    op = begin_ok(g.ch);
    CHECK_ST(cc_op_register_cancel(op, rec_cancel, rec_free, &r2), CC_OK);
    CHECK_ST(cc_channel_close(g.ch), CC_OK);
    CHECK_ST(cc_op_end(op), CC_OK);
    CHECK_EQ_U(atomic_load(&r2.cancels), 0);
    CHECK_EQ_U(atomic_load(&r2.frees), 1);
    CHECK_ST(cc_host_close(g.host, 0), CC_OK);
    cc_host_free(g.host);
}

/* ------------------------------------------------------ close timeout */

static void test_close_timeout_setting(void)
{
    cc_host *h = NULL;
    CHECK_ST(cc_host_create(&h), CC_OK);
    CHECK(cc_host_close_timeout(h) == 5000);
    CHECK_ST(cc_host_set_close_timeout(h, 100), CC_OK);
    CHECK(cc_host_close_timeout(h) == 100);
    CHECK_ST(cc_host_set_close_timeout(h, -1), CC_E_INVALID_ARG);
    CHECK_ST(cc_host_set_close_timeout(h, INT64_MIN), CC_E_INVALID_ARG);
    CHECK(cc_host_close_timeout(h) == 100);
    CHECK_ST(cc_host_set_close_timeout(h, 0), CC_OK);
    CHECK(cc_host_close_timeout(h) == 0);
    CHECK_ST(cc_host_set_close_timeout(h, INT64_MAX), CC_OK);
    CHECK(cc_host_close_timeout(h) == INT64_MAX);
    CHECK_ST(cc_host_set_close_timeout(h, 5000), CC_OK);
    CHECK(cc_host_close_timeout(h) == 5000);
    cc_host_free(h);
}

/* --------------------------------------------------- names, versions */

static void test_status_str(void)
{
    CHECK(strcmp(cc_status_str(CC_OK), "CC_OK") == 0);
    CHECK(strcmp(cc_status_str(CC_E_INVALID_ARG), "CC_E_INVALID_ARG") == 0);
    CHECK(strcmp(cc_status_str(CC_E_INVALID_OPERATION), "CC_E_INVALID_OPERATION") == 0);
    CHECK(strcmp(cc_status_str(CC_E_OBJECT_FAULTED), "CC_E_OBJECT_FAULTED") == 0);
    CHECK(strcmp(cc_status_str(CC_E_OPERATION_ABORTED), "CC_E_OPERATION_ABORTED") == 0);
    CHECK(strcmp(cc_status_str(CC_E_NOMEM), "CC_E_NOMEM") == 0);
    CHECK(strcmp(cc_status_str(CC_E_TIMEOUT), "CC_E_TIMEOUT") == 0);
    const int others[] = {1, 2, 7, -7, -8, 42, -100, INT_MAX, INT_MIN};
    for (size_t i = 0; i < sizeof others / sizeof others[0]; i++) {
        const char *s = cc_status_str((cc_status)others[i]);
        CHECK(s != NULL && strcmp(s, "CC_E_UNKNOWN") == 0);
    }
}

static void test_version(void)
{
    CHECK_EQ_U(cc_version_number(), CC_VERSION_NUMBER);
    CHECK(cc_version_string() != NULL);
    CHECK(strcmp(cc_version_string(), CC_VERSION_STRING) == 0);
    CHECK_EQ_U(CC_VERSION_NUMBER,
               CC_VERSION_MAJOR * 10000 + CC_VERSION_MINOR * 100 + CC_VERSION_PATCH);
}

/* --------------------------------------------------------- statistics */

static void test_stats_script(void)
{
    cc_host *h = NULL;
    cc_channel *c1 = NULL, *c2 = NULL;
    CHECK_ST(cc_host_create(&h), CC_OK);
    cc_stats s = stats_of(h);
    CHECK_EQ_U(s.ops_in_flight, 0);
    CHECK_EQ_U(s.ops_begun, 0);
    CHECK_EQ_U(s.ops_ended, 0);
    CHECK_EQ_U(s.ops_canceled, 0);
    CHECK_EQ_U(s.cancels_host_abort, 0);
    CHECK_EQ_U(s.cancels_channel_faulted, 0);
    CHECK_EQ_U(s.free_states_run, 0);
    CHECK_EQ_U(s.callback_errors, 0);
    CHECK_EQ_U(s.channels_open, 0);

    CHECK_ST(cc_host_open(h), CC_OK);
    CHECK_ST(cc_channel_open(h, &c1), CC_OK);
    CHECK_ST(cc_channel_open(h, &c2), CC_OK);
    s = stats_of(h);
    CHECK_EQ_U(s.channels_open, 2);

    rec ra, rb, rc, re;
    rec_init(&ra);
    rec_init(&rb);
    rec_init(&rc);
    rec_init(&re);
    cc_op *a = begin_ok(c1);
    CHECK_ST(cc_op_register_cancel(a, rec_cancel, rec_free, &ra), CC_OK);
    CHECK_ST(cc_op_end(a), CC_OK);
    s = stats_of(h);
    CHECK_EQ_U(s.ops_begun, 1);
    CHECK_EQ_U(s.ops_ended, 1);
    CHECK_EQ_U(s.ops_in_flight, 0);
    CHECK_EQ_U(s.free_states_run, 1);

    cc_op *b = begin_ok(c1);  /* registered, free-state */
    cc_op *c = begin_ok(c2);  /* registered, free-state */
    cc_op *d = begin_ok(c2);  /* never registered */
    cc_op *e = begin_ok(c1);  /* registered, no free-state */
    CHECK_ST(cc_op_register_cancel(b, rec_cancel, rec_free, &rb), CC_OK);
    CHECK_ST(cc_op_register_cancel(c, rec_cancel, rec_free, &rc), CC_OK);
    CHECK_ST(cc_op_register_cancel(e, rec_cancel, NULL, &re), CC_OK);
    s = stats_of(h);
    CHECK_EQ_U(s.ops_begun, 5);
    CHECK_EQ_U(s.ops_ended, 1);
    CHECK_EQ_U(s.ops_in_flight, 4);
    CHECK_EQ_U(s.ops_canceled, 0);

    CHECK_ST(cc_channel_fault(c2), CC_OK); /* cancels c (callback) and d (none) */
    s = stats_of(h);
    CHECK_EQ_U(s.ops_canceled, 2);
    CHECK_EQ_U(s.cancels_channel_faulted, 1);
    CHECK_EQ_U(s.cancels_host_abort, 0);
    CHECK_EQ_U(s.ops_in_flight, 4);

    CHECK_ST(cc_host_abort(h), CC_OK); /* cancels b and e; c, d already are */
    CHECK_ST(cc_host_abort(h), CC_OK);
    s = stats_of(h);
    CHECK_EQ_U(s.ops_canceled, 4);
    CHECK_EQ_U(s.cancels_channel_faulted, 1);
    CHECK_EQ_U(s.cancels_host_abort, 2);
    CHECK_EQ_U(s.free_states_run, 1);

    CHECK_ST(cc_op_end(b), CC_OK);
    CHECK_ST(cc_op_end(c), CC_OK);
    CHECK_ST(cc_op_end(d), CC_OK);
    CHECK_ST(cc_op_end(e), CC_OK);
    CHECK_ST(cc_channel_close(c1), CC_OK);
    CHECK_ST(cc_host_report_callback_error(h), CC_OK);
    CHECK_ST(cc_host_report_callback_error(h), CC_OK);
    s = stats_of(h);
    CHECK_EQ_U(s.ops_begun, 5);
    CHECK_EQ_U(s.ops_ended, 5);
    CHECK_EQ_U(s.ops_in_flight, 0);
    CHECK_EQ_U(s.ops_canceled, 4);
    CHECK_EQ_U(s.cancels_host_abort, 2);
    CHECK_EQ_U(s.cancels_channel_faulted, 1);
    CHECK_EQ_U(s.free_states_run, 3);
    CHECK_EQ_U(s.callback_errors, 2);
    CHECK_EQ_U(s.channels_open, 1);

    CHECK_EQ_U(atomic_load(&ra.cancels), 0);
    CHECK_EQ_U(atomic_load(&rb.reason), CC_HOST_ABORT);
    CHECK_EQ_U(atomic_load(&rc.reason), CC_CHANNEL_FAULTED);
    CHECK_EQ_U(atomic_load(&re.reason), CC_HOST_ABORT);
    CHECK_EQ_U(atomic_load(&re.frees), 0);

    CHECK_ST(cc_host_close(h, 0), CC_OK);
    s = stats_of(h);
    CHECK_EQ_U(s.ops_begun, 5);
    CHECK_EQ_U(s.free_states_run, 3);
    CHECK_EQ_U(s.callback_errors, 2);
    cc_host_free(h);
}

/* --------------------------------------------------------- fault plan */

static void test_fault_add_validation(void)
{
    fx f;
    fx_open(&f);
    CHECK_ST(cc_host_fault_reset(f.host, 1), CC_OK);
    CHECK_ST(cc_host_fault_add(f.host, (cc_fault_point)3, CC_FAULT_CHANNEL, 1, 0.0),
             CC_E_INVALID_ARG);
    CHECK_ST(cc_host_fault_add(f.host, (cc_fault_point)-1, CC_FAULT_CHANNEL, 1, 0.0),
             CC_E_INVALID_ARG);
    CHECK_ST(cc_host_fault_add(f.host, (cc_fault_point)1000, CC_FAULT_CHANNEL, 1, 0.0),
             CC_E_INVALID_ARG);
    CHECK_ST(cc_host_fault_add(f.host, CC_FAULT_AT_BEGIN, (cc_fault_action)3, 1, 0.0),
             CC_E_INVALID_ARG);
    CHECK_ST(cc_host_fault_add(f.host, CC_FAULT_AT_BEGIN, (cc_fault_action)-1, 1, 0.0),
             CC_E_INVALID_ARG);
    CHECK_ST(cc_host_fault_add(f.host, CC_FAULT_AT_END, CC_FAULT_NOMEM, 1, 0.0),
             CC_E_INVALID_ARG);
    CHECK_ST(cc_host_fault_add(f.host, CC_FAULT_AT_END, CC_FAULT_NOMEM, 0, 0.5),
             CC_E_INVALID_ARG);
    const double bad_p[] = {-0.01, 1.01, -1.0, 2.0, NAN, INFINITY, -INFINITY};
    for (size_t i = 0; i < sizeof bad_p / sizeof bad_p[0]; i++) {
        CHECK_ST(cc_host_fault_add(f.host, CC_FAULT_AT_BEGIN, CC_FAULT_CHANNEL, 0, bad_p[i]),
                 CC_E_INVALID_ARG);
        CHECK_ST(cc_host_fault_add(f.host, CC_FAULT_AT_BEGIN, CC_FAULT_CHANNEL, 2, bad_p[i]),
                 CC_E_INVALID_ARG);
    }
    CHECK_ST(cc_host_fault_add(f.host, CC_FAULT_AT_BEGIN, CC_FAULT_NOMEM, 0, 0.0),
             CC_E_INVALID_ARG);
    CHECK_ST(cc_host_fault_add(f.host, CC_FAULT_AT_REGISTER, CC_FAULT_ABORT_HOST, 0, -0.0),
             CC_E_INVALID_ARG);

    /* none of that added a rule */
    for (int i = 0; i < 10; i++) {
        rec r;
        rec_init(&r);
        cc_op *op = begin_ok(f.ch);
        CHECK_ST(cc_op_register_cancel(op, rec_cancel, rec_free, &r), CC_OK);
        CHECK_ST(cc_op_end(op), CC_OK);
        CHECK_EQ_U(atomic_load(&r.cancels), 0);
    }
    CHECK_EQ_U(cc_host_fault_count(f.host), 0);
    CHECK(cc_channel_state(f.ch) == CC_CHANNEL_STATE_OPEN);
    CHECK(cc_host_state(f.host) == CC_HOST_STATE_OPEN);

    /* 16 rules fit (the refused ones took no room), the 17th does not.
     * Every combination of point and valid action appears; the bounds of
     * the probability are valid. */
    for (int i = 0; i < 16; i++) {
        cc_fault_point pt = (cc_fault_point)(i % 3);
        cc_fault_action ac = (cc_fault_action)(i % (pt == CC_FAULT_AT_END ? 2 : 3));
        uint32_t nth = (i == 0) ? 0u : 1000000u;
        double p = (i == 0) ? 1.0 : 0.0; /* no visit happens before the reset */
        CHECK_ST(cc_host_fault_add(f.host, pt, ac, nth, p), CC_OK);
    }
    CHECK_ST(cc_host_fault_add(f.host, CC_FAULT_AT_BEGIN, CC_FAULT_CHANNEL, 1000000u, 0.0),
             CC_E_NOMEM);
    CHECK_ST(cc_host_fault_add(f.host, CC_FAULT_AT_END, CC_FAULT_ABORT_HOST, 0, 1.0),
             CC_E_NOMEM);
    CHECK_ST(cc_host_fault_reset(f.host, 2), CC_OK);
    CHECK_ST(cc_host_fault_add(f.host, CC_FAULT_AT_BEGIN, CC_FAULT_CHANNEL, 1000000u, 0.0),
             CC_OK);
    CHECK_ST(cc_host_fault_reset(f.host, 3), CC_OK);
    CHECK_ST(cc_host_fault_add(f.host, CC_FAULT_AT_END, CC_FAULT_CHANNEL, 0, 1.0), CC_OK);
    CHECK_ST(cc_host_fault_add(f.host, CC_FAULT_AT_REGISTER, CC_FAULT_ABORT_HOST, 7, 1.0),
             CC_OK);
    CHECK_ST(cc_host_fault_reset(f.host, 4), CC_OK);
    CHECK_EQ_U(cc_host_fault_count(f.host), 0);
    cc_host_free(f.host);
}

static void test_fault_nomem_every_third_begin(void)
{
    fx f;
    fx_open(&f);
    CHECK_ST(cc_host_fault_reset(f.host, 11), CC_OK);
    CHECK_ST(cc_host_fault_add(f.host, CC_FAULT_AT_BEGIN, CC_FAULT_NOMEM, 3, 0.0), CC_OK);
    cc_op *ops[12];
    int ok = 0;
    for (int k = 1; k <= 12; k++) {
        cc_op *op = NULL;
        cc_status st = cc_op_begin(f.ch, &op);
        if (k % 3 == 0) {
            CHECK_ST(st, CC_E_NOMEM);
        } else {
            CHECK_ST(st, CC_OK);
            if (st == CC_OK)
                ops[ok++] = op;
        }
        CHECK_EQ_U(cc_host_fault_count(f.host), k / 3);
    }
    CHECK_EQ_U(ok, 8);
    cc_stats s = stats_of(f.host);
    CHECK_EQ_U(s.ops_in_flight, 8);
    CHECK_EQ_U(s.ops_begun, 8);
    CHECK_EQ_U(s.ops_canceled, 0);
    CHECK(cc_channel_state(f.ch) == CC_CHANNEL_STATE_OPEN);
    CHECK(cc_host_state(f.host) == CC_HOST_STATE_OPEN);
    for (int i = 0; i < ok; i++) {
        CHECK(cc_op_is_canceled(ops[i]) == 0);
        CHECK_ST(cc_op_end(ops[i]), CC_OK);
    }
    /* reset clears the rule and the count */
    CHECK_ST(cc_host_fault_reset(f.host, 12), CC_OK);
    CHECK_EQ_U(cc_host_fault_count(f.host), 0);
    for (int k = 0; k < 9; k++) {
        cc_op *op = begin_ok(f.ch);
        CHECK_ST(cc_op_end(op), CC_OK);
    }
    CHECK_EQ_U(cc_host_fault_count(f.host), 0);
    s = stats_of(f.host);
    CHECK_EQ_U(s.ops_in_flight, 0);
    cc_host_free(f.host);
}

/* A begin point is visited "after the operation was admitted": a begin
 * refused for the channel's or host's state is no visit, fires nothing and
 * answers with its own status, not the plan's. */
static void test_fault_begin_visits_only_admitted(void)
{
    fx f;
    fx_open(&f);
    cc_channel *c2 = NULL, *c3 = NULL;
    CHECK_ST(cc_channel_open(f.host, &c2), CC_OK);
    CHECK_ST(cc_channel_open(f.host, &c3), CC_OK);
    CHECK_ST(cc_channel_fault(f.ch), CC_OK);
    CHECK_ST(cc_host_fault_reset(f.host, 13), CC_OK);
    CHECK_ST(cc_host_fault_add(f.host, CC_FAULT_AT_BEGIN, CC_FAULT_NOMEM, 1, 0.0), CC_OK);
    CHECK_ST(cc_host_fault_add(f.host, CC_FAULT_AT_BEGIN, CC_FAULT_CHANNEL, 2, 0.0), CC_OK);
    cc_op *op = NULL;
    CHECK_ST(cc_op_begin(f.ch, &op), CC_E_OBJECT_FAULTED);
    CHECK_ST(cc_op_begin(f.ch, &op), CC_E_OBJECT_FAULTED);
    CHECK_EQ_U(cc_host_fault_count(f.host), 0);
    /* the first admitted begin is visit 1 of both rules: only NOMEM fires */
    CHECK_ST(cc_op_begin(c2, &op), CC_E_NOMEM);
    CHECK_EQ_U(cc_host_fault_count(f.host), 1);
    CHECK(cc_channel_state(c2) == CC_CHANNEL_STATE_OPEN);
    CHECK_ST(cc_host_fault_reset(f.host, 14), CC_OK);
    CHECK_ST(cc_host_fault_add(f.host, CC_FAULT_AT_BEGIN, CC_FAULT_CHANNEL, 1, 0.0), CC_OK);
    CHECK_ST(cc_host_abort(f.host), CC_OK);
    CHECK_ST(cc_op_begin(c3, &op), CC_E_OBJECT_FAULTED);
    CHECK_ST(cc_host_close(f.host, 0), CC_OK);
    CHECK_ST(cc_op_begin(c3, &op), CC_E_INVALID_OPERATION);
    CHECK_EQ_U(cc_host_fault_count(f.host), 0);
    CHECK(cc_channel_state(c3) == CC_CHANNEL_STATE_CLOSED);
    cc_stats s = stats_of(f.host);
    CHECK_EQ_U(s.ops_begun, 0);
    cc_host_free(f.host);
}

static void test_fault_nomem_at_register(void)
{
    fx f;
    fx_open(&f);
    rec failed, later;
    rec_init(&failed);
    rec_init(&later);
    CHECK_ST(cc_host_fault_reset(f.host, 5), CC_OK);
    CHECK_ST(cc_host_fault_add(f.host, CC_FAULT_AT_REGISTER, CC_FAULT_NOMEM, 1, 0.0), CC_OK);
    cc_op *op = begin_ok(f.ch);
    CHECK_ST(cc_op_register_cancel(op, rec_cancel, rec_free, &failed), CC_E_NOMEM);
    CHECK_EQ_U(cc_host_fault_count(f.host), 1);
    CHECK(cc_op_is_canceled(op) == 0);
    /* nothing changed: with the plan cleared, the one registration is
     * still available */
    CHECK_ST(cc_host_fault_reset(f.host, 6), CC_OK);
    CHECK_ST(cc_op_register_cancel(op, rec_cancel, rec_free, &later), CC_OK);
    CHECK_ST(cc_channel_fault(f.ch), CC_OK);
    CHECK_ST(cc_op_end(op), CC_OK);
    CHECK_EQ_U(atomic_load(&failed.cancels), 0);
    CHECK_EQ_U(atomic_load(&failed.frees), 0);
    CHECK_EQ_U(atomic_load(&later.cancels), 1);
    CHECK_EQ_U(atomic_load(&later.frees), 1);

    /* and an operation whose only registration failed ends without
     * calling anything */
    cc_channel *c2 = NULL;
    CHECK_ST(cc_channel_open(f.host, &c2), CC_OK);
    CHECK_ST(cc_host_fault_add(f.host, CC_FAULT_AT_REGISTER, CC_FAULT_NOMEM, 1, 0.0), CC_OK);
    rec only;
    rec_init(&only);
    op = begin_ok(c2);
    CHECK_ST(cc_op_register_cancel(op, rec_cancel, rec_free, &only), CC_E_NOMEM);
    CHECK_ST(cc_host_abort(f.host), CC_OK);
    CHECK_ST(cc_op_end(op), CC_OK);
    CHECK_EQ_U(atomic_load(&only.cancels), 0);
    CHECK_EQ_U(atomic_load(&only.frees), 0);
    cc_stats s = stats_of(f.host);
    CHECK_EQ_U(s.free_states_run, 1);
    cc_host_free(f.host);
}

static void test_fault_channel_at_begin(void)
{
    fx f;
    fx_open(&f);
    rec r;
    rec_init(&r);
    CHECK_ST(cc_host_fault_reset(f.host, 7), CC_OK);
    CHECK_ST(cc_host_fault_add(f.host, CC_FAULT_AT_BEGIN, CC_FAULT_CHANNEL, 1, 0.0), CC_OK);
    cc_op *op = begin_ok(f.ch);
    CHECK_EQ_U(cc_host_fault_count(f.host), 1);
    CHECK(cc_op_is_canceled(op) == 1);
    CHECK(cc_op_reason(op) == CC_CHANNEL_FAULTED);
    CHECK(cc_channel_state(f.ch) == CC_CHANNEL_STATE_FAULTED);
    CHECK(cc_host_state(f.host) == CC_HOST_STATE_OPEN);
    /* G3: registering an already canceled op runs cancel right here */
    CHECK_ST(cc_op_register_cancel(op, rec_cancel, rec_free, &r), CC_OK);
    CHECK_EQ_U(atomic_load(&r.cancels), 1);
    CHECK_EQ_U(atomic_load(&r.reason), CC_CHANNEL_FAULTED);
    CHECK_EQ_U(atomic_load(&r.cancel_on_expected), 1);
    CHECK_EQ_U(atomic_load(&r.frees), 0);
    cc_op *op2 = NULL;
    CHECK_ST(cc_op_begin(f.ch, &op2), CC_E_OBJECT_FAULTED);
    CHECK_ST(cc_op_end(op), CC_OK);
    CHECK_EQ_U(atomic_load(&r.frees), 1);
    CHECK_EQ_U(atomic_load(&r.cancels), 1);
    CHECK_EQ_U(cc_host_fault_count(f.host), 1);
    cc_stats s = stats_of(f.host);
    CHECK_EQ_U(s.ops_canceled, 1);
    CHECK_EQ_U(s.cancels_channel_faulted, 1);
    cc_host_free(f.host);
}

static void test_fault_abort_host_at_register(void)
{
    fx f;
    fx_open(&f);
    rec r, other;
    rec_init(&r);
    rec_init(&other);
    cc_channel *c2 = NULL;
    CHECK_ST(cc_channel_open(f.host, &c2), CC_OK);
    cc_op *bystander = begin_ok(c2);
    CHECK_ST(cc_op_register_cancel(bystander, rec_cancel, rec_free, &other), CC_OK);
    /* the bystander registered before the rule existed: not a visit */
    CHECK_ST(cc_host_fault_reset(f.host, 8), CC_OK);
    CHECK_ST(cc_host_fault_add(f.host, CC_FAULT_AT_REGISTER, CC_FAULT_ABORT_HOST, 1, 0.0),
             CC_OK);
    cc_op *op = begin_ok(f.ch);
    CHECK_ST(cc_op_register_cancel(op, rec_cancel, rec_free, &r), CC_OK);
    CHECK_EQ_U(cc_host_fault_count(f.host), 1);
    CHECK_EQ_U(atomic_load(&r.cancels), 1);
    CHECK_EQ_U(atomic_load(&r.reason), CC_HOST_ABORT);
    CHECK_EQ_U(atomic_load(&r.cancel_on_expected), 1);
    CHECK(cc_host_state(f.host) == CC_HOST_STATE_FAULTED);
    CHECK(cc_op_reason(op) == CC_HOST_ABORT);
    CHECK_EQ_U(atomic_load(&other.cancels), 1);
    CHECK_EQ_U(atomic_load(&other.reason), CC_HOST_ABORT);
    CHECK_ST(cc_op_end(op), CC_OK);
    CHECK_ST(cc_op_end(bystander), CC_OK);
    CHECK_EQ_U(atomic_load(&r.frees), 1);
    CHECK_EQ_U(atomic_load(&other.frees), 1);
    CHECK_ST(cc_host_close(f.host, 0), CC_OK);
    cc_host_free(f.host);
}

static void test_fault_channel_at_end(void)
{
    fx f;
    fx_open(&f);
    rec r;
    rec_init(&r);
    cc_channel *c2 = NULL;
    CHECK_ST(cc_channel_open(f.host, &c2), CC_OK);
    CHECK_ST(cc_host_fault_reset(f.host, 9), CC_OK);
    CHECK_ST(cc_host_fault_add(f.host, CC_FAULT_AT_END, CC_FAULT_CHANNEL, 1, 0.0), CC_OK);
    cc_op *op = begin_ok(f.ch);
    CHECK_ST(cc_op_register_cancel(op, rec_cancel, rec_free, &r), CC_OK);
    CHECK_EQ_U(atomic_load(&r.cancels), 0);
    CHECK_ST(cc_op_end(op), CC_OK);
    CHECK_EQ_U(cc_host_fault_count(f.host), 1);
    CHECK_EQ_U(atomic_load(&r.cancels), 1);
    CHECK_EQ_U(atomic_load(&r.reason), CC_CHANNEL_FAULTED);
    CHECK_EQ_U(atomic_load(&r.frees), 1);
    CHECK(atomic_load(&r.cancel_at) < atomic_load(&r.free_at));
    CHECK(cc_channel_state(f.ch) == CC_CHANNEL_STATE_FAULTED);
    CHECK(cc_channel_state(c2) == CC_CHANNEL_STATE_OPEN);
    CHECK(cc_host_state(f.host) == CC_HOST_STATE_OPEN);
    cc_host_free(f.host);
}

/* The pattern of a probability-0.3 rule over n visits, from a fresh reset. */
static void fault_pattern(cc_host *h, cc_channel *ch, uint64_t seed, unsigned char *pat,
                          int n)
{
    CHECK_ST(cc_host_fault_reset(h, seed), CC_OK);
    CHECK_ST(cc_host_fault_add(h, CC_FAULT_AT_BEGIN, CC_FAULT_NOMEM, 0, 0.3), CC_OK);
    uint64_t fired = 0;
    for (int i = 0; i < n; i++) {
        cc_op *op = NULL;
        cc_status st = cc_op_begin(ch, &op);
        if (st == CC_OK) {
            pat[i] = 0;
            CHECK_ST(cc_op_end(op), CC_OK);
        } else {
            CHECK_ST(st, CC_E_NOMEM);
            pat[i] = 1;
            fired++;
        }
    }
    CHECK_EQ_U(cc_host_fault_count(h), fired);
}

#define PAT_N 200

static void test_fault_determinism(void)
{
    fx a, b;
    fx_open(&a);
    fx_open(&b);
    unsigned char p1[PAT_N], p2[PAT_N], p3[PAT_N], p4[PAT_N];
    fault_pattern(a.host, a.ch, 0x5EEDu, p1, PAT_N);
    fault_pattern(b.host, b.ch, 0x5EEDu, p2, PAT_N);   /* another host */
    fault_pattern(a.host, a.ch, 0x5EEDu, p3, PAT_N);   /* reset restarts */
    fault_pattern(b.host, b.ch, 0xD1FFu, p4, PAT_N);   /* another seed */
    CHECK(memcmp(p1, p2, PAT_N) == 0);
    CHECK(memcmp(p1, p3, PAT_N) == 0);
    CHECK(memcmp(p1, p4, PAT_N) != 0);
    int n1 = 0, n4 = 0;
    for (int i = 0; i < PAT_N; i++) {
        n1 += p1[i];
        n4 += p4[i];
    }
    printf("  (p = 0.3 over %d visits: %d and %d faults)\n", PAT_N, n1, n4);
    /* 60 expected, sd ~6.5: these bounds only catch a broken draw */
    CHECK(n1 >= 25 && n1 <= 95);
    CHECK(n4 >= 25 && n4 <= 95);
    cc_host_free(a.host);
    cc_host_free(b.host);
}

/* ------------------------------------------------------------ close */

typedef struct ender {
    cc_op *op;
    int delay_ms;      /* before ending */
    gate *wait_for;    /* if set, end only once it opens */
    atomic_int status;
    atomic_int gate_opened;
} ender;

static void *ender_main(void *p)
{
    ender *e = p;
    if (e->wait_for)
        atomic_store(&e->gate_opened, gate_wait(e->wait_for, 5000));
    if (e->delay_ms)
        sleep_ms(e->delay_ms);
    atomic_store(&e->status, (int)cc_op_end(e->op));
    return NULL;
}

static void ender_start(pthread_t *t, ender *e, cc_op *op, int delay_ms, gate *g)
{
    e->op = op;
    e->delay_ms = delay_ms;
    e->wait_for = g;
    atomic_init(&e->status, 999);
    atomic_init(&e->gate_opened, 0);
    pthread_create(t, NULL, ender_main, e);
}

static void test_close_waits_for_op(void)
{
    fx f;
    fx_open(&f);
    rec r;
    rec_init(&r);
    cc_op *op = begin_ok(f.ch);
    CHECK_ST(cc_op_register_cancel(op, rec_cancel, rec_free, &r), CC_OK);
    pthread_t t;
    ender e;
    ender_start(&t, &e, op, 50, NULL);
    int64_t t0 = now_ms();
    CHECK_ST(cc_host_close(f.host, -1), CC_OK); /* default 5000 ms */
    int64_t dt = now_ms() - t0;
    CHECK(dt >= 40);
    CHECK(cc_host_state(f.host) == CC_HOST_STATE_CLOSED);
    CHECK_EQ_U(atomic_load(&r.cancels), 0);
    CHECK_EQ_U(atomic_load(&r.frees), 1); /* close waited for free-state */
    pthread_join(t, NULL);
    CHECK_ST((cc_status)atomic_load(&e.status), CC_OK);
    cc_host_free(f.host);
}

/* An op that ends only when canceled: close times out after timeout_arg
 * (or the host's timeout), aborts, and waits for the end. */
static void close_timeout_case(int64_t timeout_arg, int64_t host_timeout)
{
    fx f;
    fx_open(&f);
    if (host_timeout >= 0)
        CHECK_ST(cc_host_set_close_timeout(f.host, host_timeout), CC_OK);
    gate g;
    gate_init(&g);
    rec r;
    rec_init(&r);
    r.on_cancel = &g;
    cc_op *op = begin_ok(f.ch);
    CHECK_ST(cc_op_register_cancel(op, rec_cancel, rec_free, &r), CC_OK);
    pthread_t t;
    ender e;
    ender_start(&t, &e, op, 0, &g);
    int64_t t0 = now_ms();
    CHECK_ST(cc_host_close(f.host, timeout_arg), CC_E_TIMEOUT);
    int64_t dt = now_ms() - t0;
    CHECK(dt >= 90);
    CHECK(dt < 3000);
    CHECK(cc_host_state(f.host) == CC_HOST_STATE_CLOSED);
    CHECK_EQ_U(atomic_load(&r.cancels), 1);
    CHECK_EQ_U(atomic_load(&r.reason), CC_HOST_ABORT);
    CHECK_EQ_U(atomic_load(&r.cancel_on_expected), 1); /* on the closing thread */
    CHECK_EQ_U(atomic_load(&r.frees), 1);
    pthread_join(t, NULL);
    CHECK_EQ_U(atomic_load(&e.gate_opened), 1);
    CHECK_ST((cc_status)atomic_load(&e.status), CC_OK);
    gate_destroy(&g);
    cc_host_free(f.host);
}

static void test_close_timeout_expires(void) { close_timeout_case(100, -1); }
static void test_close_timeout_from_host(void) { close_timeout_case(-1, 100); }

typedef struct aborter {
    cc_host *host;
    cc_op *op;
    rec *r;
    atomic_int saw_closing, abort_status, state_after, cancels_after, end_status;
} aborter;

static void *aborter_main(void *p)
{
    aborter *a = p;
    a->r->expect_thread = pthread_self();
    atomic_store(&a->saw_closing, wait_host_state(a->host, CC_HOST_STATE_CLOSING, 2000));
    atomic_store(&a->abort_status, (int)cc_host_abort(a->host));
    atomic_store(&a->state_after, (int)cc_host_state(a->host));
    atomic_store(&a->cancels_after, atomic_load(&a->r->cancels));
    atomic_store(&a->end_status, (int)cc_op_end(a->op));
    return NULL;
}

/* Another thread aborts while close waits: CLOSING stays CLOSING, the
 * cancel runs on the aborting thread, and close reports the abort. */
static void test_abort_during_close(void)
{
    fx f;
    fx_open(&f);
    rec r;
    rec_init(&r);
    cc_op *op = begin_ok(f.ch);
    CHECK_ST(cc_op_register_cancel(op, rec_cancel, rec_free, &r), CC_OK);
    aborter a = {.host = f.host, .op = op, .r = &r};
    atomic_init(&a.saw_closing, 0);
    atomic_init(&a.abort_status, 999);
    atomic_init(&a.state_after, 999);
    atomic_init(&a.cancels_after, 999);
    atomic_init(&a.end_status, 999);
    pthread_t t;
    pthread_create(&t, NULL, aborter_main, &a);
    CHECK_ST(cc_host_close(f.host, 5000), CC_E_OPERATION_ABORTED);
    CHECK(cc_host_state(f.host) == CC_HOST_STATE_CLOSED);
    pthread_join(t, NULL);
    CHECK_EQ_U(atomic_load(&a.saw_closing), 1);
    CHECK_ST((cc_status)atomic_load(&a.abort_status), CC_OK);
    CHECK_EQ_U(atomic_load(&a.state_after), CC_HOST_STATE_CLOSING);
    CHECK_EQ_U(atomic_load(&a.cancels_after), 1);
    CHECK_ST((cc_status)atomic_load(&a.end_status), CC_OK);
    CHECK_EQ_U(atomic_load(&r.reason), CC_HOST_ABORT);
    CHECK_EQ_U(atomic_load(&r.cancel_on_expected), 1);
    CHECK_EQ_U(atomic_load(&r.cancels), 1);
    CHECK_EQ_U(atomic_load(&r.frees), 1);
    cc_host_free(f.host);
}

/* A callback that tries to close its own operation's host. */
typedef struct self_closer {
    cc_host *host;
    atomic_int ran;
    atomic_int status;
    atomic_int state_in_cb;
} self_closer;

static void self_closer_init(self_closer *s, cc_host *h)
{
    s->host = h;
    atomic_init(&s->ran, 0);
    atomic_init(&s->status, 999);
    atomic_init(&s->state_in_cb, 999);
}

static void close_in_cancel(cc_reason reason, void *state)
{
    (void)reason;
    self_closer *s = state;
    atomic_store(&s->status, (int)cc_host_close(s->host, 0));
    atomic_store(&s->state_in_cb, (int)cc_host_state(s->host));
    atomic_fetch_add(&s->ran, 1);
}

static void close_in_free(void *state) { close_in_cancel(CC_NOT_CANCELED, state); }

static void noop_cancel(cc_reason reason, void *state)
{
    (void)reason;
    (void)state;
}

static void test_close_inside_cancel_callback(void)
{
    fx f;
    fx_open(&f);
    cc_channel *c2 = NULL;
    CHECK_ST(cc_channel_open(f.host, &c2), CC_OK);
    self_closer s1, s2;
    self_closer_init(&s1, f.host);
    self_closer_init(&s2, f.host);

    /* from a cancel callback, the host being OPEN (channel fault) */
    cc_op *op1 = begin_ok(f.ch);
    CHECK_ST(cc_op_register_cancel(op1, close_in_cancel, NULL, &s1), CC_OK);
    CHECK_ST(cc_channel_fault(f.ch), CC_OK);
    CHECK_EQ_U(atomic_load(&s1.ran), 1);
    CHECK_ST((cc_status)atomic_load(&s1.status), CC_E_INVALID_OPERATION);
    CHECK_EQ_U(atomic_load(&s1.state_in_cb), CC_HOST_STATE_OPEN);
    CHECK(cc_host_state(f.host) == CC_HOST_STATE_OPEN);

    /* from a cancel callback run by an abort (host FAULTED) */
    cc_op *op2 = begin_ok(c2);
    CHECK_ST(cc_op_register_cancel(op2, close_in_cancel, NULL, &s2), CC_OK);
    CHECK_ST(cc_host_abort(f.host), CC_OK);
    CHECK_EQ_U(atomic_load(&s2.ran), 1);
    CHECK_ST((cc_status)atomic_load(&s2.status), CC_E_INVALID_OPERATION);
    CHECK_EQ_U(atomic_load(&s2.state_in_cb), CC_HOST_STATE_FAULTED);
    CHECK_EQ_U(atomic_load(&s1.ran), 1); /* op1 was canceled already */
    CHECK(cc_host_state(f.host) == CC_HOST_STATE_FAULTED);

    CHECK_ST(cc_op_end(op1), CC_OK);
    CHECK_ST(cc_op_end(op2), CC_OK);
    CHECK_ST(cc_host_close(f.host, 0), CC_OK);
    CHECK(cc_host_state(f.host) == CC_HOST_STATE_CLOSED);
    cc_host_free(f.host);
}

/* The free-state callback is a callback of the operation too: a close
 * there would wait for the very operation that is ending.  (Run last: an
 * implementation that accepts it never returns.) */
static void test_close_inside_free_state_callback(void)
{
    fx f;
    fx_open(&f);
    self_closer s3;
    self_closer_init(&s3, f.host);
    cc_op *op3 = begin_ok(f.ch);
    CHECK_ST(cc_op_register_cancel(op3, noop_cancel, close_in_free, &s3), CC_OK);
    CHECK_ST(cc_op_end(op3), CC_OK);
    CHECK_EQ_U(atomic_load(&s3.ran), 1);
    CHECK_ST((cc_status)atomic_load(&s3.status), CC_E_INVALID_OPERATION);
    CHECK_EQ_U(atomic_load(&s3.state_in_cb), CC_HOST_STATE_OPEN);
    CHECK(cc_host_state(f.host) == CC_HOST_STATE_OPEN);
    CHECK_ST(cc_host_close(f.host, 0), CC_OK);
    cc_host_free(f.host);
}

/* ------------------------------------------------------------- free */

static void test_free_with_op_in_flight(void)
{
    cc_host *h = NULL;
    cc_channel *c = NULL;
    CHECK_ST(cc_host_create(&h), CC_OK);
    CHECK_ST(cc_host_open(h), CC_OK);
    CHECK_ST(cc_channel_open(h, &c), CC_OK); /* never closed: free takes it */
    gate g;
    gate_init(&g);
    rec r;
    rec_init(&r);
    r.on_cancel = &g;
    cc_op *op = begin_ok(c);
    CHECK_ST(cc_op_register_cancel(op, rec_cancel, rec_free, &r), CC_OK);
    pthread_t t;
    ender e;
    ender_start(&t, &e, op, 30, &g); /* ends 30 ms after its cancel */
    int64_t t0 = now_ms();
    cc_host_free(h);
    int64_t dt = now_ms() - t0;
    CHECK_EQ_U(atomic_load(&r.cancels), 1);
    CHECK_EQ_U(atomic_load(&r.reason), CC_HOST_ABORT);
    CHECK_EQ_U(atomic_load(&r.frees), 1); /* free returned after the end */
    CHECK(dt >= 25);
    pthread_join(t, NULL);
    CHECK_EQ_U(atomic_load(&e.gate_opened), 1);
    CHECK_ST((cc_status)atomic_load(&e.status), CC_OK);
    gate_destroy(&g);
}

/* --------------------------------------------------------------- main */

int main(void)
{
    g_main_thread = pthread_self();
    signal(SIGALRM, on_watchdog);

    RUN_GUARDED(test_null_handles);
    RUN_GUARDED(test_null_out_pointers);
    RUN_GUARDED(test_register_null_cancel);
    RUN_GUARDED(test_second_registration);

    RUN_GUARDED(test_stale_op_after_end);
    RUN_GUARDED(test_stale_op_after_cancel);
    RUN_GUARDED(test_stale_op_slot_reused);

    RUN_GUARDED(test_host_state_created);
    RUN_GUARDED(test_host_state_open);
    RUN_GUARDED(test_host_state_faulted);
    RUN_GUARDED(test_host_state_closed_and_reset);
    RUN_GUARDED(test_host_state_closing);

    RUN_GUARDED(test_channel_open_by_host_state);
    RUN_GUARDED(test_op_begin_faulted_channel);
    RUN_GUARDED(test_op_begin_aborted_host);
    RUN_GUARDED(test_op_begin_after_host_closed);
    RUN_GUARDED(test_channel_fault_twice);
    RUN_GUARDED(test_channel_close_with_op_in_flight);
    RUN_GUARDED(test_close_timeout_setting);

    RUN_GUARDED(test_status_str);
    RUN_GUARDED(test_version);
    RUN_GUARDED(test_stats_script);

    RUN_GUARDED(test_fault_add_validation);
    RUN_GUARDED(test_fault_nomem_every_third_begin);
    RUN_GUARDED(test_fault_begin_visits_only_admitted);
    RUN_GUARDED(test_fault_nomem_at_register);
    RUN_GUARDED(test_fault_channel_at_begin);
    RUN_GUARDED(test_fault_abort_host_at_register);
    RUN_GUARDED(test_fault_channel_at_end);
    RUN_GUARDED(test_fault_determinism);

    RUN_GUARDED(test_close_waits_for_op);
    RUN_GUARDED(test_close_timeout_expires);
    RUN_GUARDED(test_close_timeout_from_host);
    RUN_GUARDED(test_abort_during_close);
    RUN_GUARDED(test_close_inside_cancel_callback);
    RUN_GUARDED(test_free_with_op_in_flight);
    RUN_GUARDED(test_close_inside_free_state_callback);

    return TEST_EXIT();
}
