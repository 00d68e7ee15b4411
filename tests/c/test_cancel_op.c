/* test_cancel_op.c - cc_channel_cancel_op: one operation of a channel
 * canceled as a fault would cancel it, the channel and its other operations
 * left alone; its arguments and stale handles; and a race of it against
 * end, register and a fault of the same channel, with exact counts. */
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#include "cc_test.h"

static atomic_int g_cancels, g_frees, g_faulted_reason, g_abort_reason;

static void on_cancel(cc_reason reason, void *state)
{
    atomic_fetch_add((atomic_int *)state, 1);
    atomic_fetch_add(&g_cancels, 1);
    atomic_fetch_add(reason == CC_CHANNEL_FAULTED ? &g_faulted_reason : &g_abort_reason, 1);
}

static void on_free(void *state)
{
    (void)state;
    atomic_fetch_add(&g_frees, 1);
}

static void reset(void)
{
    atomic_store(&g_cancels, 0);
    atomic_store(&g_frees, 0);
    atomic_store(&g_faulted_reason, 0);
    atomic_store(&g_abort_reason, 0);
}

static int64_t hv(cc_op *op) { return (int64_t)(intptr_t)op; }

static void open_host(cc_host **host, cc_channel **ch)
{
    CHECK_ST(cc_host_create(host), CC_OK);
    CHECK_ST(cc_host_open(*host), CC_OK);
    CHECK_ST(cc_channel_open(*host, ch), CC_OK);
}

static void close_host(cc_host *host, cc_channel *ch)
{
    CHECK_ST(cc_channel_close(ch), CC_OK);
    CHECK_ST(cc_host_close(host, 0), CC_OK);
    cc_host_free(host);
}

static void test_cancels_one_and_leaves_the_rest(void)
{
    reset();
    cc_host *host;
    cc_channel *ch;
    cc_op *a, *b;
    atomic_int ra = 0, rb = 0;
    open_host(&host, &ch);
    CHECK_ST(cc_op_begin(ch, &a), CC_OK);
    CHECK_ST(cc_op_begin(ch, &b), CC_OK);
    CHECK_ST(cc_op_register_cancel(a, on_cancel, on_free, &ra), CC_OK);
    CHECK_ST(cc_op_register_cancel(b, on_cancel, on_free, &rb), CC_OK);

    CHECK_ST(cc_channel_cancel_op(ch, hv(a), CC_CHANNEL_FAULTED), CC_OK);
    CHECK(atomic_load(&ra) == 1 && atomic_load(&rb) == 0); /* ran before return */
    CHECK(cc_op_is_canceled(a) == 1 && cc_op_reason(a) == CC_CHANNEL_FAULTED);
    CHECK(cc_op_is_canceled(b) == 0);
    CHECK(cc_channel_state(ch) == CC_CHANNEL_STATE_OPEN);
    CHECK(cc_host_state(host) == CC_HOST_STATE_OPEN);

    /* Again, or with another reason: the first trigger stays (G1, G6). */
    CHECK_ST(cc_channel_cancel_op(ch, hv(a), CC_HOST_ABORT), CC_OK);
    CHECK(atomic_load(&ra) == 1 && cc_op_reason(a) == CC_CHANNEL_FAULTED);

    /* The channel still admits operations. */
    cc_op *c;
    CHECK_ST(cc_op_begin(ch, &c), CC_OK);
    CHECK_ST(cc_op_end(c), CC_OK);

    cc_stats st;
    CHECK_ST(cc_host_get_stats(host, &st), CC_OK);
    CHECK_EQ_U(st.ops_canceled, 1);
    CHECK_EQ_U(st.cancels_channel_faulted, 1);

    CHECK_ST(cc_op_end(a), CC_OK);
    CHECK_ST(cc_op_end(b), CC_OK);
    CHECK_EQ_U(atomic_load(&g_frees), 2);
    /* Ended: stale (G10). */
    CHECK_ST(cc_channel_cancel_op(ch, hv(a), CC_CHANNEL_FAULTED), CC_E_INVALID_OPERATION);
    close_host(host, ch);
}

static void test_before_registration_runs_in_register(void)
{
    reset();
    cc_host *host;
    cc_channel *ch;
    cc_op *a;
    atomic_int ra = 0;
    open_host(&host, &ch);
    CHECK_ST(cc_op_begin(ch, &a), CC_OK);
    CHECK_ST(cc_channel_cancel_op(ch, hv(a), CC_HOST_ABORT), CC_OK);
    CHECK(cc_op_is_canceled(a) == 1 && cc_op_reason(a) == CC_HOST_ABORT);
    CHECK_ST(cc_op_register_cancel(a, on_cancel, on_free, &ra), CC_OK);
    CHECK(atomic_load(&ra) == 1 && atomic_load(&g_abort_reason) == 1); /* G3 */
    CHECK_ST(cc_op_end(a), CC_OK);
    CHECK_EQ_U(atomic_load(&g_frees), 1);
    close_host(host, ch);
}

static void test_arguments_and_other_channels(void)
{
    cc_host *host;
    cc_channel *ch, *other;
    cc_op *a;
    open_host(&host, &ch);
    CHECK_ST(cc_channel_open(host, &other), CC_OK);
    CHECK_ST(cc_op_begin(ch, &a), CC_OK);
    CHECK_ST(cc_channel_cancel_op(NULL, hv(a), CC_CHANNEL_FAULTED), CC_E_INVALID_ARG);
    CHECK_ST(cc_channel_cancel_op(ch, 0, CC_CHANNEL_FAULTED), CC_E_INVALID_ARG);
    CHECK_ST(cc_channel_cancel_op(ch, -5, CC_CHANNEL_FAULTED), CC_E_INVALID_ARG);
    CHECK_ST(cc_channel_cancel_op(ch, hv(a), CC_NOT_CANCELED), CC_E_INVALID_ARG);
    CHECK_ST(cc_channel_cancel_op(ch, hv(a), (cc_reason)7), CC_E_INVALID_ARG);
    /* An operation of another channel, and handles naming no operation. */
    CHECK_ST(cc_channel_cancel_op(other, hv(a), CC_CHANNEL_FAULTED), CC_E_INVALID_OPERATION);
    CHECK_ST(cc_channel_cancel_op(ch, hv(a) + 1, CC_CHANNEL_FAULTED), CC_E_INVALID_OPERATION);
    CHECK_ST(cc_channel_cancel_op(ch, INT64_MAX, CC_CHANNEL_FAULTED), CC_E_INVALID_OPERATION);
    CHECK(cc_op_is_canceled(a) == 0);
    /* Every host state: after an abort it is already canceled (CC_OK);
     * after the close, its channel is closed but still the caller's. */
    CHECK_ST(cc_channel_shutdown(ch), CC_OK);
    CHECK_ST(cc_channel_cancel_op(ch, hv(a), CC_CHANNEL_FAULTED), CC_OK);
    CHECK(cc_op_reason(a) == CC_CHANNEL_FAULTED);
    CHECK_ST(cc_op_end(a), CC_OK);
    CHECK_ST(cc_channel_close(ch), CC_OK);
    CHECK_ST(cc_channel_close(other), CC_OK);
    CHECK_ST(cc_host_close(host, 0), CC_OK);
    cc_host_free(host);
}

/* -------------------------------------------------------------- the race */

#define NOPS 2000

static cc_host *r_host;
static cc_channel *r_ch;
static _Atomic(int64_t) r_ops[NOPS];
static atomic_int r_runs[NOPS];
static atomic_int r_begun, r_registered;

static void *canceller(void *arg)
{
    (void)arg;
    for (int i = 0; i < NOPS; i++) {
        int64_t h;
        while ((h = atomic_load(&r_ops[i])) == 0)
            sched_yield();
        cc_status st = cc_channel_cancel_op(r_ch, h, (i & 1) ? CC_CHANNEL_FAULTED : CC_HOST_ABORT);
        if (st != CC_OK && st != CC_E_INVALID_OPERATION)
            abort(); /* reported below through the counts */
    }
    return NULL;
}

static void test_race_with_end_and_register(void)
{
    reset();
    open_host(&r_host, &r_ch);
    memset(r_ops, 0, sizeof r_ops);
    memset(r_runs, 0, sizeof r_runs);
    pthread_t t;
    CHECK(pthread_create(&t, NULL, canceller, NULL) == 0);
    int ok_regs = 0;
    for (int i = 0; i < NOPS; i++) {
        cc_op *op;
        CHECK_ST(cc_op_begin(r_ch, &op), CC_OK);
        atomic_store(&r_ops[i], hv(op));
        if (i % 3)
            sched_yield();
        if (cc_op_register_cancel(op, on_cancel, on_free, &r_runs[i]) == CC_OK)
            ok_regs++;
        CHECK_ST(cc_op_end(op), CC_OK);
    }
    pthread_join(t, NULL);
    /* Every registration succeeded (nothing else registers), every
     * free-state ran once, no cancel ran twice, and the stats agree. */
    CHECK_EQ_U(ok_regs, NOPS);
    CHECK_EQ_U(atomic_load(&g_frees), NOPS);
    int ran = 0;
    for (int i = 0; i < NOPS; i++) {
        CHECK(atomic_load(&r_runs[i]) <= 1);
        ran += atomic_load(&r_runs[i]);
    }
    cc_stats st;
    CHECK_ST(cc_host_get_stats(r_host, &st), CC_OK);
    CHECK_EQ_U(st.cancels_host_abort + st.cancels_channel_faulted, ran);
    CHECK_EQ_U(st.ops_in_flight, 0);
    CHECK(cc_channel_state(r_ch) == CC_CHANNEL_STATE_OPEN);
    close_host(r_host, r_ch);
}

/* One thread faults the channel while another cancels its operations one
 * by one: each operation is canceled once, with whichever came first. */
static void *faulter(void *arg)
{
    (void)arg;
    while (atomic_load(&r_registered) < NOPS / 2)
        sched_yield();
    CHECK_ST(cc_channel_fault(r_ch), CC_OK);
    return NULL;
}

static void test_race_with_channel_fault(void)
{
    reset();
    open_host(&r_host, &r_ch);
    memset(r_ops, 0, sizeof r_ops);
    memset(r_runs, 0, sizeof r_runs);
    atomic_store(&r_registered, 0);
    cc_op *ops[NOPS];
    int n = 0;
    for (; n < NOPS; n++) {
        if (cc_op_begin(r_ch, &ops[n]) != CC_OK)
            break;
        CHECK_ST(cc_op_register_cancel(ops[n], on_cancel, on_free, &r_runs[n]), CC_OK);
    }
    CHECK_EQ_U(n, NOPS);
    pthread_t t1, t2;
    for (int i = 0; i < NOPS; i++)
        atomic_store(&r_ops[i], hv(ops[i]));
    CHECK(pthread_create(&t2, NULL, faulter, NULL) == 0);
    CHECK(pthread_create(&t1, NULL, canceller, NULL) == 0);
    for (int i = 0; i < NOPS; i++)
        atomic_fetch_add(&r_registered, 1);
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
    for (int i = 0; i < NOPS; i++) {
        CHECK(atomic_load(&r_runs[i]) == 1);
        CHECK_ST(cc_op_end(ops[i]), CC_OK);
    }
    CHECK_EQ_U(atomic_load(&g_cancels), NOPS);
    CHECK_EQ_U(atomic_load(&g_frees), NOPS);
    cc_stats st;
    CHECK_ST(cc_host_get_stats(r_host, &st), CC_OK);
    CHECK_EQ_U(st.ops_canceled, NOPS);
    CHECK_EQ_U(st.cancels_host_abort + st.cancels_channel_faulted, NOPS);
    CHECK(cc_channel_state(r_ch) == CC_CHANNEL_STATE_FAULTED);
    close_host(r_host, r_ch);
}

int main(void)
{
    RUN(test_cancels_one_and_leaves_the_rest);
    RUN(test_before_registration_runs_in_register);
    RUN(test_arguments_and_other_channels);
    for (int k = 0; k < 5; k++) {
        RUN(test_race_with_end_and_register);
        RUN(test_race_with_channel_fault);
    }
    return TEST_EXIT();
}
