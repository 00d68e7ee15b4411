/* test_findings.c - regressions for what reading and fuzzing the core found:
 * each case failed before its fix.
 *
 * The generation case is white-box: it reads the slot a handle names
 * (internal.h) to age it to the last generation instead of reusing it two
 * billion times. */
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include "cc_test.h"
#include "../../csrc/src/internal.h"

typedef struct seen {
    atomic_int cancels;
    atomic_int frees;
    atomic_int live_inside; /* cc_op_is_canceled(own op) == 1 inside cancel */
    atomic_int end_inside;  /* status of cc_op_end(own op) inside cancel */
    cc_op *op;
} seen;

static void on_cancel(cc_reason reason, void *state)
{
    (void)reason;
    seen *s = state;
    atomic_fetch_add(&s->cancels, 1);
    if (cc_op_is_canceled(s->op) == 1)
        atomic_fetch_add(&s->live_inside, 1);
}

static void on_free(void *state)
{
    atomic_fetch_add(&((seen *)state)->frees, 1);
}

static void open_host(cc_host **h, cc_channel **ch)
{
    CHECK_ST(cc_host_create(h), CC_OK);
    CHECK_ST(cc_host_open(*h), CC_OK);
    CHECK_ST(cc_channel_open(*h, ch), CC_OK);
}

/* The fault plan's END point cancels the op as its last act: inside that
 * callback its own handle still reads live (it used to read stale). */
static void test_end_fault_callback_sees_its_handle(void)
{
    cc_host *h;
    cc_channel *ch;
    open_host(&h, &ch);
    seen s;
    memset(&s, 0, sizeof s);
    CHECK_ST(cc_op_begin(ch, &s.op), CC_OK);
    CHECK_ST(cc_op_register_cancel(s.op, on_cancel, on_free, &s), CC_OK);
    CHECK_ST(cc_host_fault_add(h, CC_FAULT_AT_END, CC_FAULT_ABORT_HOST, 1, 0.0), CC_OK);
    CHECK_ST(cc_op_end(s.op), CC_OK);
    CHECK_EQ_U(atomic_load(&s.cancels), 1);
    CHECK_EQ_U(atomic_load(&s.live_inside), 1);
    CHECK_EQ_U(atomic_load(&s.frees), 1);
    CHECK(cc_op_is_canceled(s.op) == CC_E_INVALID_OPERATION);
    cc_host_free(h);
}

/* A close timeout too large to add to the clock waits without a deadline
 * (it overflowed: UBSan reports signed overflow in the old code). */
static void test_close_huge_timeout(void)
{
    cc_host *h;
    cc_channel *ch;
    open_host(&h, &ch);
    CHECK_ST(cc_host_close(h, INT64_MAX), CC_OK);
    CHECK_ST(cc_host_reset(h), CC_OK);
    CHECK_ST(cc_host_open(h), CC_OK);
    /* The largest value the old check let through to the multiplication. */
    CHECK_ST(cc_host_close(h, INT64_MAX / 1000000 - 1), CC_OK);
    CHECK_ST(cc_host_reset(h), CC_OK);
    CHECK_ST(cc_host_open(h), CC_OK);
    CHECK_ST(cc_host_set_close_timeout(h, INT64_MAX - 1), CC_OK);
    CHECK_ST(cc_host_close(h, -1), CC_OK);
    cc_host_free(h);
}

/* Deferred ends visit the END point too: one from inside the op's own
 * cancel callback is counted by the plan (it was skipped). */
static cc_status g_end_status;
static void end_own(cc_reason reason, void *state)
{
    (void)reason;
    seen *s = state;
    atomic_fetch_add(&s->cancels, 1);
    g_end_status = cc_op_end(s->op);
}

static void test_deferred_end_visits_end_faults(void)
{
    cc_host *h;
    cc_channel *ch;
    open_host(&h, &ch);
    seen s;
    memset(&s, 0, sizeof s);
    CHECK_ST(cc_op_begin(ch, &s.op), CC_OK);
    CHECK_ST(cc_op_register_cancel(s.op, end_own, on_free, &s), CC_OK);
    cc_channel *other;
    CHECK_ST(cc_channel_open(h, &other), CC_OK);
    CHECK_ST(cc_host_fault_add(h, CC_FAULT_AT_END, CC_FAULT_CHANNEL, 1, 0.0), CC_OK);
    CHECK_ST(cc_host_abort(h), CC_OK);
    CHECK_ST(g_end_status, CC_OK);
    CHECK_EQ_U(atomic_load(&s.frees), 1);
    CHECK_EQ_U(cc_host_fault_count(h), 1); /* the deferred end was a visit */
    cc_host_free(h);
}

/* Staleness is per thread: once the end began on thread E while the op's
 * cancel callback runs on thread C, a third thread sees the handle stale
 * (it saw it live), while C still reads it. */
typedef struct stale_case {
    cc_op *op;
    atomic_int in_cb, release, seen_by_cb, ended;
} stale_case;

static void slow_cancel(cc_reason reason, void *state)
{
    (void)reason;
    stale_case *c = state;
    atomic_store(&c->in_cb, 1);
    while (!atomic_load(&c->release)) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    atomic_store(&c->seen_by_cb, cc_op_is_canceled(c->op));
}

static void *aborter(void *arg)
{
    cc_host_abort(arg);
    return NULL;
}

static void *ender(void *arg)
{
    stale_case *c = arg;
    atomic_store(&c->ended, cc_op_end(c->op) == CC_OK ? 1 : -1);
    return NULL;
}

static void test_staleness_is_per_thread(void)
{
    cc_host *h;
    cc_channel *ch;
    open_host(&h, &ch);
    stale_case c;
    memset(&c, 0, sizeof c);
    CHECK_ST(cc_op_begin(ch, &c.op), CC_OK);
    CHECK_ST(cc_op_register_cancel(c.op, slow_cancel, NULL, &c), CC_OK);
    pthread_t a, e;
    pthread_create(&a, NULL, aborter, h);
    while (!atomic_load(&c.in_cb)) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    pthread_create(&e, NULL, ender, &c);
    /* Wait until the end has begun (it sleeps on the running callback). */
    uint32_t gen;
    cc_slot *slot = cc_handle_slot((uintptr_t)c.op, &gen);
    for (int i = 0; i < 5000 && !(cc_st_load(slot) & ST_ENDING); i++) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    CHECK(cc_st_load(slot) & ST_ENDING);
    CHECK(cc_op_is_canceled(c.op) == CC_E_INVALID_OPERATION); /* this thread: stale */
    CHECK(cc_op_reason(c.op) == CC_REASON_INVALID);
    atomic_store(&c.release, 1);
    pthread_join(a, NULL);
    pthread_join(e, NULL);
    CHECK_EQ_U(atomic_load(&c.seen_by_cb), 1); /* its own callback still read it */
    CHECK_EQ_U(atomic_load(&c.ended), 1);
    cc_host_free(h);
}

/* A slot at its last generation is retired rather than reused with a
 * generation that an old handle already had (G10's "never"). */
static void test_generation_wrap_retires_the_slot(void)
{
    cc_host *h;
    cc_channel *ch;
    open_host(&h, &ch);
    cc_op *op;
    CHECK_ST(cc_op_begin(ch, &op), CC_OK);
    uint32_t gen;
    cc_slot *slot = cc_handle_slot((uintptr_t)op, &gen);
    CHECK_ST(cc_op_end(op), CC_OK);
    /* Age the (free, cached) slot to the last generation. */
    atomic_store(&slot->state, (uint64_t)CC_GEN_MASK << 32);
    cc_op *last;
    CHECK_ST(cc_op_begin(ch, &last), CC_OK);
    uint32_t lgen;
    CHECK(cc_handle_slot((uintptr_t)last, &lgen) == slot); /* the cache is LIFO */
    CHECK_EQ_U(lgen, CC_GEN_MASK);
    CHECK_ST(cc_op_end(last), CC_OK);
    /* Retired: a handle with the wrapped generation names nothing live,
     * and the next operations never get this slot again. */
    cc_op *wrapped = (cc_op *)cc_handle_value(slot, 0);
    CHECK(cc_op_is_canceled(wrapped) == CC_E_INVALID_OPERATION);
    CHECK(cc_op_is_canceled(last) == CC_E_INVALID_OPERATION);
    for (int i = 0; i < 200; i++) {
        cc_op *o;
        CHECK_ST(cc_op_begin(ch, &o), CC_OK);
        uint32_t g2;
        CHECK(cc_handle_slot((uintptr_t)o, &g2) != slot);
        CHECK_ST(cc_op_end(o), CC_OK);
    }
    cc_host_free(h);
}

int main(void)
{
    RUN(test_end_fault_callback_sees_its_handle);
    RUN(test_close_huge_timeout);
    RUN(test_deferred_end_visits_end_faults);
    RUN(test_staleness_is_per_thread);
    RUN(test_generation_wrap_retires_the_slot);
    return TEST_EXIT();
}
