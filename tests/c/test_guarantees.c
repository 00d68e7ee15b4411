/* test_guarantees.c - one test per guarantee of DESIGN.md (G1-G13), each
 * on the simplest schedule that shows it; test_stress.c races them. */
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include "cc_test.h"

/* What one operation's callbacks saw. */
typedef struct record {
    atomic_int cancels, frees;
    atomic_int reason;          /* last reason seen */
    atomic_int cancel_running;  /* set while the cancel callback runs */
    atomic_int overlap;         /* free-state ran while cancel was running */
    atomic_int cancel_after_free;
    pthread_t cancel_thread;
    cc_op *op;                  /* for callbacks that call back in */
    int end_inside;             /* the cancel callback ends its own op */
    int sleep_ms;               /* the cancel callback dawdles */
    cc_status inner_status;
} record;

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void on_cancel(cc_reason reason, void *state)
{
    record *r = state;
    if (atomic_load(&r->frees))
        atomic_fetch_add(&r->cancel_after_free, 1);
    atomic_store(&r->cancel_running, 1);
    r->cancel_thread = pthread_self();
    atomic_store(&r->reason, reason);
    atomic_fetch_add(&r->cancels, 1);
    if (r->sleep_ms)
        sleep_ms(r->sleep_ms);
    if (r->end_inside)
        r->inner_status = cc_op_end(r->op);
    atomic_store(&r->cancel_running, 0);
}

static void on_free(void *state)
{
    record *r = state;
    if (atomic_load(&r->cancel_running))
        atomic_fetch_add(&r->overlap, 1);
    atomic_fetch_add(&r->frees, 1);
}

static void record_init(record *r)
{
    memset(r, 0, sizeof *r);
    atomic_store(&r->reason, -1);
}

static cc_host *open_host(cc_channel **ch)
{
    cc_host *host = NULL;
    CHECK_ST(cc_host_create(&host), CC_OK);
    CHECK_ST(cc_host_open(host), CC_OK);
    if (ch)
        CHECK_ST(cc_channel_open(host, ch), CC_OK);
    return host;
}

/* G1: abort, then fault, then abort again: the callback runs once. */
static void g1_cancel_at_most_once(void)
{
    cc_channel *ch;
    cc_host *host = open_host(&ch);
    record r;
    record_init(&r);
    cc_op *op;
    CHECK_ST(cc_op_begin(ch, &op), CC_OK);
    CHECK_ST(cc_op_register_cancel(op, on_cancel, on_free, &r), CC_OK);
    CHECK_ST(cc_channel_fault(ch), CC_OK);
    CHECK_ST(cc_host_abort(host), CC_OK);
    CHECK_ST(cc_channel_fault(ch), CC_OK);
    CHECK_ST(cc_host_abort(host), CC_OK);
    CHECK_EQ_U(atomic_load(&r.cancels), 1);
    CHECK_ST(cc_op_end(op), CC_OK);
    CHECK_EQ_U(atomic_load(&r.cancels), 1);
    CHECK_EQ_U(atomic_load(&r.frees), 1);
    cc_host_free(host);
}

/* G2: the second registration fails; the first stays in force. */
static void g2_first_registration_wins(void)
{
    cc_channel *ch;
    cc_host *host = open_host(&ch);
    record first, second;
    record_init(&first);
    record_init(&second);
    cc_op *op;
    CHECK_ST(cc_op_begin(ch, &op), CC_OK);
    CHECK_ST(cc_op_register_cancel(op, on_cancel, on_free, &first), CC_OK);
    CHECK_ST(cc_op_register_cancel(op, on_cancel, on_free, &second), CC_E_INVALID_OPERATION);
    CHECK_ST(cc_host_abort(host), CC_OK);
    CHECK_ST(cc_op_end(op), CC_OK);
    CHECK_EQ_U(atomic_load(&first.cancels), 1);
    CHECK_EQ_U(atomic_load(&first.frees), 1);
    CHECK_EQ_U(atomic_load(&second.cancels), 0);
    CHECK_EQ_U(atomic_load(&second.frees), 0);
    cc_host_free(host);
}

/* G3: registering on a canceled operation runs the callback inside the
 * call, on this thread, with the original reason. */
static void g3_register_after_cancel_runs_now(void)
{
    cc_channel *ch;
    cc_host *host = open_host(&ch);
    record r;
    record_init(&r);
    cc_op *op;
    CHECK_ST(cc_op_begin(ch, &op), CC_OK);
    CHECK_ST(cc_channel_fault(ch), CC_OK);
    CHECK_ST(cc_host_abort(host), CC_OK); /* later trigger: not the reason */
    CHECK_EQ_U(atomic_load(&r.cancels), 0);
    CHECK_ST(cc_op_register_cancel(op, on_cancel, on_free, &r), CC_OK);
    CHECK_EQ_U(atomic_load(&r.cancels), 1);
    CHECK(pthread_equal(r.cancel_thread, pthread_self()));
    CHECK_EQ_U(atomic_load(&r.reason), CC_CHANNEL_FAULTED);
    CHECK_ST(cc_op_end(op), CC_OK);
    CHECK_EQ_U(atomic_load(&r.frees), 1);
    cc_host_free(host);
}

/* G4: free-state runs exactly once at completion, canceled or not; never
 * after a failed registration, nor without a registration. */
static void g4_free_state_exactly_once(void)
{
    cc_channel *ch;
    cc_host *host = open_host(&ch);
    record r;
    record_init(&r);
    cc_op *op;
    CHECK_ST(cc_op_begin(ch, &op), CC_OK);
    CHECK_ST(cc_op_register_cancel(op, on_cancel, on_free, &r), CC_OK);
    CHECK_EQ_U(atomic_load(&r.frees), 0);
    CHECK_ST(cc_op_end(op), CC_OK);
    CHECK_EQ_U(atomic_load(&r.frees), 1);
    CHECK_EQ_U(atomic_load(&r.cancels), 0);
    CHECK_ST(cc_op_end(op), CC_E_INVALID_OPERATION);
    CHECK_EQ_U(atomic_load(&r.frees), 1);

    /* A registration without free-state, and an op with none at all. */
    CHECK_ST(cc_op_begin(ch, &op), CC_OK);
    CHECK_ST(cc_op_register_cancel(op, on_cancel, NULL, &r), CC_OK);
    CHECK_ST(cc_op_end(op), CC_OK);
    CHECK_ST(cc_op_begin(ch, &op), CC_OK);
    CHECK_ST(cc_op_end(op), CC_OK);
    CHECK_EQ_U(atomic_load(&r.frees), 1);

    cc_stats st;
    CHECK_ST(cc_host_get_stats(host, &st), CC_OK);
    CHECK_EQ_U(st.free_states_run, 1);
    CHECK_EQ_U(st.ops_begun, 3);
    CHECK_EQ_U(st.ops_ended, 3);
    CHECK_EQ_U(st.ops_in_flight, 0);
    cc_host_free(host);
}

typedef struct ender_args {
    cc_op *op;
    cc_status status;
    int64_t returned_ns;
} ender_args;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void *abort_thread(void *arg)
{
    cc_host_abort(arg);
    return NULL;
}

/* G5: end waits for a cancel callback running on another thread; free-state
 * follows it without overlap. */
static void g5_end_waits_for_running_cancel(void)
{
    cc_channel *ch;
    cc_host *host = open_host(&ch);
    record r;
    record_init(&r);
    r.sleep_ms = 100;
    cc_op *op;
    CHECK_ST(cc_op_begin(ch, &op), CC_OK);
    CHECK_ST(cc_op_register_cancel(op, on_cancel, on_free, &r), CC_OK);
    pthread_t t;
    pthread_create(&t, NULL, abort_thread, host);
    while (!atomic_load(&r.cancel_running) && !atomic_load(&r.cancels))
        sleep_ms(1);
    int64_t t0 = now_ns();
    CHECK_ST(cc_op_end(op), CC_OK);
    int64_t waited_ms = (now_ns() - t0) / 1000000;
    pthread_join(t, NULL);
    CHECK_EQ_U(atomic_load(&r.cancels), 1);
    CHECK_EQ_U(atomic_load(&r.frees), 1);
    CHECK_EQ_U(atomic_load(&r.overlap), 0);
    CHECK(waited_ms >= 50); /* it really waited for the sleeping callback */
    cc_host_free(host);
}

/* G5: ending from inside the own cancel callback does not deadlock, and
 * free-state runs after the callback returned. */
static void g5_end_inside_own_callback(void)
{
    cc_channel *ch;
    cc_host *host = open_host(&ch);
    record r;
    record_init(&r);
    r.end_inside = 1;
    CHECK_ST(cc_op_begin(ch, &r.op), CC_OK);
    CHECK_ST(cc_op_register_cancel(r.op, on_cancel, on_free, &r), CC_OK);
    CHECK_ST(cc_host_abort(host), CC_OK);
    CHECK_ST(r.inner_status, CC_OK);
    CHECK_EQ_U(atomic_load(&r.cancels), 1);
    CHECK_EQ_U(atomic_load(&r.frees), 1);
    CHECK_EQ_U(atomic_load(&r.overlap), 0);
    CHECK_ST(cc_op_end(r.op), CC_E_INVALID_OPERATION);

    /* The same through G3: the callback runs inside register. */
    record_init(&r);
    r.end_inside = 1;
    CHECK_ST(cc_host_reset(host), CC_E_INVALID_OPERATION); /* FAULTED */
    cc_channel *ch2;
    cc_host *host2 = open_host(&ch2);
    CHECK_ST(cc_op_begin(ch2, &r.op), CC_OK);
    CHECK_ST(cc_channel_fault(ch2), CC_OK);
    CHECK_ST(cc_op_register_cancel(r.op, on_cancel, on_free, &r), CC_OK);
    CHECK_ST(r.inner_status, CC_OK);
    CHECK_EQ_U(atomic_load(&r.frees), 1);
    CHECK_EQ_U(atomic_load(&r.overlap), 0);
    cc_stats st;
    CHECK_ST(cc_host_get_stats(host2, &st), CC_OK);
    CHECK_EQ_U(st.ops_in_flight, 0);
    cc_host_free(host2);
    cc_host_free(host);
}

/* G5: no cancel starts after completion began. */
static void g5_no_cancel_after_end(void)
{
    cc_channel *ch;
    cc_host *host = open_host(&ch);
    record r;
    record_init(&r);
    cc_op *op;
    CHECK_ST(cc_op_begin(ch, &op), CC_OK);
    CHECK_ST(cc_op_register_cancel(op, on_cancel, on_free, &r), CC_OK);
    CHECK_ST(cc_op_end(op), CC_OK);
    CHECK_ST(cc_host_abort(host), CC_OK);
    CHECK_EQ_U(atomic_load(&r.cancels), 0);
    CHECK_EQ_U(atomic_load(&r.cancel_after_free), 0);
    cc_host_free(host);
}

/* G6: the reasons' numbers, and the first trigger decides. */
static void g6_reasons(void)
{
    CHECK_EQ_U(CC_HOST_ABORT, 0);
    CHECK_EQ_U(CC_CHANNEL_FAULTED, 1);
    CHECK(CC_NOT_CANCELED == -1);
    cc_channel *ch;
    cc_host *host = open_host(&ch);
    record r;
    record_init(&r);
    cc_op *op;
    CHECK_ST(cc_op_begin(ch, &op), CC_OK);
    CHECK_ST(cc_op_register_cancel(op, on_cancel, on_free, &r), CC_OK);
    CHECK(cc_op_reason(op) == CC_NOT_CANCELED);
    CHECK(cc_op_is_canceled(op) == 0);
    CHECK_ST(cc_host_abort(host), CC_OK);
    CHECK_ST(cc_channel_fault(ch), CC_OK);
    CHECK(cc_op_is_canceled(op) == 1);
    CHECK(cc_op_reason(op) == CC_HOST_ABORT);
    CHECK_EQ_U(atomic_load(&r.reason), CC_HOST_ABORT);
    CHECK_ST(cc_op_end(op), CC_OK);
    cc_host_free(host);
}

/* G7: abort cancels every operation of the host, moves OPEN to FAULTED and
 * returns while they are still in flight. */
static void g7_abort_cancels_all_without_waiting(void)
{
    cc_host *host = open_host(NULL);
    enum { NCH = 3, NOPS = 50 };
    cc_channel *ch[NCH];
    record r[NCH][NOPS];
    cc_op *op[NCH][NOPS];
    for (int c = 0; c < NCH; c++) {
        CHECK_ST(cc_channel_open(host, &ch[c]), CC_OK);
        for (int i = 0; i < NOPS; i++) {
            record_init(&r[c][i]);
            CHECK_ST(cc_op_begin(ch[c], &op[c][i]), CC_OK);
            CHECK_ST(cc_op_register_cancel(op[c][i], on_cancel, on_free, &r[c][i]), CC_OK);
        }
    }
    CHECK_ST(cc_host_abort(host), CC_OK); /* returns: nothing has ended */
    CHECK(cc_host_state(host) == CC_HOST_STATE_FAULTED);
    cc_stats st;
    CHECK_ST(cc_host_get_stats(host, &st), CC_OK);
    CHECK_EQ_U(st.ops_in_flight, NCH * NOPS);
    CHECK_EQ_U(st.cancels_host_abort, NCH * NOPS);
    for (int c = 0; c < NCH; c++)
        for (int i = 0; i < NOPS; i++) {
            CHECK_EQ_U(atomic_load(&r[c][i].cancels), 1);
            CHECK_ST(cc_op_end(op[c][i]), CC_OK);
            CHECK_EQ_U(atomic_load(&r[c][i].frees), 1);
        }
    cc_op *late;
    CHECK_ST(cc_op_begin(ch[0], &late), CC_E_OBJECT_FAULTED);
    CHECK_ST(cc_host_abort(host), CC_OK); /* idempotent */
    CHECK(cc_host_state(host) == CC_HOST_STATE_FAULTED);
    cc_host_free(host);
}

static void *end_later(void *arg)
{
    ender_args *a = arg;
    sleep_ms(50);
    a->returned_ns = now_ns();
    a->status = cc_op_end(a->op);
    return NULL;
}

/* G8: close fires no cancel, waits for operations, and escalates to abort
 * when its timeout expires. */
static void g8_close_waits_then_escalates(void)
{
    cc_channel *ch;
    cc_host *host = open_host(&ch);
    record r;
    record_init(&r);
    ender_args a = {0};
    CHECK_ST(cc_op_begin(ch, &a.op), CC_OK);
    CHECK_ST(cc_op_register_cancel(a.op, on_cancel, on_free, &r), CC_OK);
    pthread_t t;
    pthread_create(&t, NULL, end_later, &a);
    CHECK_ST(cc_host_close(host, -1), CC_OK);
    int64_t closed_ns = now_ns();
    pthread_join(t, NULL);
    CHECK_ST(a.status, CC_OK);
    CHECK(closed_ns >= a.returned_ns); /* close returned after the end */
    CHECK_EQ_U(atomic_load(&r.cancels), 0);
    CHECK_EQ_U(atomic_load(&r.frees), 1);
    CHECK(cc_host_state(host) == CC_HOST_STATE_CLOSED);
    cc_channel *late;
    CHECK_ST(cc_channel_open(host, &late), CC_E_INVALID_OPERATION);

    /* Reopened: an operation that only ends when canceled. */
    CHECK_ST(cc_host_reset(host), CC_OK);
    CHECK_ST(cc_host_open(host), CC_OK);
    CHECK_ST(cc_channel_open(host, &ch), CC_OK);
    record_init(&r);
    r.end_inside = 1;
    CHECK_ST(cc_op_begin(ch, &r.op), CC_OK);
    CHECK_ST(cc_op_register_cancel(r.op, on_cancel, on_free, &r), CC_OK);
    int64_t t0 = now_ns();
    CHECK_ST(cc_host_close(host, 30), CC_E_TIMEOUT);
    CHECK(now_ns() - t0 >= 30 * 1000000LL);
    CHECK_EQ_U(atomic_load(&r.cancels), 1);
    CHECK_EQ_U(atomic_load(&r.reason), CC_HOST_ABORT);
    CHECK_EQ_U(atomic_load(&r.frees), 1);
    CHECK(cc_host_state(host) == CC_HOST_STATE_CLOSED);
    cc_host_free(host);
}

/* G9: a channel fault cancels that channel's operations only. */
static void g9_fault_is_per_channel(void)
{
    cc_channel *a, *b;
    cc_host *host = open_host(&a);
    CHECK_ST(cc_channel_open(host, &b), CC_OK);
    record ra, rb;
    record_init(&ra);
    record_init(&rb);
    cc_op *oa, *ob;
    CHECK_ST(cc_op_begin(a, &oa), CC_OK);
    CHECK_ST(cc_op_begin(b, &ob), CC_OK);
    CHECK_ST(cc_op_register_cancel(oa, on_cancel, on_free, &ra), CC_OK);
    CHECK_ST(cc_op_register_cancel(ob, on_cancel, on_free, &rb), CC_OK);
    CHECK_ST(cc_channel_fault(a), CC_OK);
    CHECK_EQ_U(atomic_load(&ra.cancels), 1);
    CHECK_EQ_U(atomic_load(&ra.reason), CC_CHANNEL_FAULTED);
    CHECK_EQ_U(atomic_load(&rb.cancels), 0);
    CHECK(cc_host_state(host) == CC_HOST_STATE_OPEN);
    CHECK(cc_channel_state(a) == CC_CHANNEL_STATE_FAULTED);
    cc_op *late;
    CHECK_ST(cc_op_begin(a, &late), CC_E_OBJECT_FAULTED);
    CHECK_ST(cc_op_begin(b, &late), CC_OK);
    CHECK_ST(cc_op_end(late), CC_OK);
    CHECK_ST(cc_op_end(oa), CC_OK);
    CHECK_ST(cc_op_end(ob), CC_OK);
    CHECK_EQ_U(atomic_load(&ra.frees) + atomic_load(&rb.frees), 2);
    cc_host_free(host);
}

/* G10: an ended operation's handle is stale, also once its slot is reused. */
static void g10_stale_handles(void)
{
    cc_channel *ch;
    cc_host *host = open_host(&ch);
    record r;
    record_init(&r);
    cc_op *old, *reused;
    CHECK_ST(cc_op_begin(ch, &old), CC_OK);
    CHECK_ST(cc_op_end(old), CC_OK);
    CHECK_ST(cc_op_begin(ch, &reused), CC_OK); /* LIFO cache: same slot */
    CHECK(old != reused);
    CHECK_ST(cc_op_register_cancel(old, on_cancel, on_free, &r), CC_E_INVALID_OPERATION);
    CHECK_ST(cc_op_end(old), CC_E_INVALID_OPERATION);
    CHECK(cc_op_is_canceled(old) == CC_E_INVALID_OPERATION);
    CHECK(cc_op_reason(old) == CC_REASON_INVALID);
    CHECK_ST(cc_op_register_cancel(reused, on_cancel, on_free, &r), CC_OK);
    CHECK_ST(cc_op_end(reused), CC_OK);
    CHECK_EQ_U(atomic_load(&r.frees), 1);
    /* Values that were never handles. */
    CHECK_ST(cc_op_end((cc_op *)(uintptr_t)0x7fffffff), CC_E_INVALID_OPERATION);
    CHECK_ST(cc_op_end((cc_op *)(uintptr_t)1), CC_E_INVALID_OPERATION);
    cc_host_free(host);
}

/* G11: callbacks call back into the library without deadlock. */
typedef struct reentrant {
    cc_host *host;
    cc_channel *other;
    cc_op *own;
    int calls;
} reentrant;

static void reenter(cc_reason reason, void *state)
{
    (void)reason;
    reentrant *re = state;
    re->calls++;
    cc_op *fresh;
    CHECK_ST(cc_channel_fault(re->other), CC_OK);
    CHECK_ST(cc_host_abort(re->host), CC_OK);
    CHECK_ST(cc_op_begin(re->other, &fresh), CC_E_OBJECT_FAULTED);
    CHECK_ST(cc_op_register_cancel(re->own, reenter, NULL, re), CC_E_INVALID_OPERATION);
    CHECK_ST(cc_host_close(re->host, 0), CC_E_INVALID_OPERATION);
    CHECK_ST(cc_op_end(re->own), CC_OK);
}

static void g11_callbacks_reenter(void)
{
    cc_channel *ch;
    cc_host *host = open_host(&ch);
    reentrant re = {host, NULL, NULL, 0};
    CHECK_ST(cc_channel_open(host, &re.other), CC_OK);
    CHECK_ST(cc_op_begin(ch, &re.own), CC_OK);
    CHECK_ST(cc_op_register_cancel(re.own, reenter, NULL, &re), CC_OK);
    CHECK_ST(cc_channel_fault(ch), CC_OK);
    CHECK_EQ_U(re.calls, 1);
    cc_stats st;
    CHECK_ST(cc_host_get_stats(host, &st), CC_OK);
    CHECK_EQ_U(st.ops_in_flight, 0);
    CHECK_ST(cc_host_close(host, 0), CC_OK);
    cc_host_free(host);
}

/* G11 + G5: a callback ends another operation whose callback the same
 * abort has claimed but not started.  The end overtakes it: no deadlock,
 * that callback never starts after its end began, both free-states run. */
typedef struct pair_op {
    record r;
    struct pair_op *other;
} pair_op;

static void end_the_other(cc_reason reason, void *state)
{
    pair_op *p = state;
    on_cancel(reason, &p->r);
    p->r.inner_status = cc_op_end(p->other->r.op);
}

static void pair_free(void *state) { on_free(&((pair_op *)state)->r); }

static void g11_callback_ends_queued_op(void)
{
    cc_channel *ch;
    cc_host *host = open_host(&ch);
    pair_op a, b;
    record_init(&a.r);
    record_init(&b.r);
    a.other = &b;
    b.other = &a;
    CHECK_ST(cc_op_begin(ch, &a.r.op), CC_OK);
    CHECK_ST(cc_op_begin(ch, &b.r.op), CC_OK);
    CHECK_ST(cc_op_register_cancel(a.r.op, end_the_other, pair_free, &a), CC_OK);
    CHECK_ST(cc_op_register_cancel(b.r.op, end_the_other, pair_free, &b), CC_OK);
    CHECK_ST(cc_host_abort(host), CC_OK);
    pair_op *first = atomic_load(&a.r.cancels) ? &a : &b;
    CHECK_EQ_U(atomic_load(&a.r.cancels) + atomic_load(&b.r.cancels), 1);
    CHECK_ST(first->r.inner_status, CC_OK);
    CHECK_EQ_U(atomic_load(&first->other->r.frees), 1); /* the overtaken one */
    CHECK_EQ_U(atomic_load(&first->other->r.cancel_after_free), 0);
    CHECK(cc_op_is_canceled(first->other->r.op) == CC_E_INVALID_OPERATION);
    CHECK_ST(cc_op_end(first->r.op), CC_OK);
    CHECK_EQ_U(atomic_load(&first->r.frees), 1);
    cc_stats st;
    CHECK_ST(cc_host_get_stats(host, &st), CC_OK);
    CHECK_EQ_U(st.ops_in_flight, 0);
    CHECK_EQ_U(st.free_states_run, 2);
    CHECK_EQ_U(st.cancels_host_abort, 1);
    CHECK_ST(cc_host_close(host, 0), CC_OK);
    cc_host_free(host);
}

/* G12: the states' numbers (the full table is in test_api.c). */
static void g12_state_numbers(void)
{
    CHECK_EQ_U(CC_HOST_STATE_CREATED, 0);
    CHECK_EQ_U(CC_HOST_STATE_OPENING, 1);
    CHECK_EQ_U(CC_HOST_STATE_OPEN, 2);
    CHECK_EQ_U(CC_HOST_STATE_CLOSING, 3);
    CHECK_EQ_U(CC_HOST_STATE_CLOSED, 4);
    CHECK_EQ_U(CC_HOST_STATE_FAULTED, 5);
    cc_host *host;
    CHECK_ST(cc_host_create(&host), CC_OK);
    CHECK(cc_host_state(host) == CC_HOST_STATE_CREATED);
    CHECK_ST(cc_host_abort(host), CC_OK);
    CHECK(cc_host_state(host) == CC_HOST_STATE_CREATED);
    CHECK_ST(cc_host_open(host), CC_OK);
    CHECK_ST(cc_host_open(host), CC_E_INVALID_OPERATION);
    CHECK_ST(cc_host_abort(host), CC_OK);
    CHECK(cc_host_state(host) == CC_HOST_STATE_FAULTED);
    CHECK_ST(cc_host_reset(host), CC_E_INVALID_OPERATION);
    CHECK_ST(cc_host_close(host, -1), CC_OK);
    CHECK(cc_host_state(host) == CC_HOST_STATE_CLOSED);
    CHECK_ST(cc_host_abort(host), CC_OK);
    CHECK(cc_host_state(host) == CC_HOST_STATE_CLOSED);
    CHECK_ST(cc_host_reset(host), CC_OK);
    CHECK_ST(cc_host_open(host), CC_OK);
    cc_host_free(host);
}

/* G13 is about errors in callbacks: C callbacks cannot raise, so the core's
 * part is counting what a binding reports, and running every callback of
 * an abort whatever the others did (here: one that re-aborts). */
static void g13_callback_errors_counted(void)
{
    cc_channel *ch;
    cc_host *host = open_host(&ch);
    CHECK_ST(cc_host_report_callback_error(host), CC_OK);
    CHECK_ST(cc_host_report_callback_error(host), CC_OK);
    cc_stats st;
    CHECK_ST(cc_host_get_stats(host, &st), CC_OK);
    CHECK_EQ_U(st.callback_errors, 2);
    cc_host_free(host);
}

int main(void)
{
    RUN(g1_cancel_at_most_once);
    RUN(g2_first_registration_wins);
    RUN(g3_register_after_cancel_runs_now);
    RUN(g4_free_state_exactly_once);
    RUN(g5_end_waits_for_running_cancel);
    RUN(g5_end_inside_own_callback);
    RUN(g5_no_cancel_after_end);
    RUN(g6_reasons);
    RUN(g7_abort_cancels_all_without_waiting);
    RUN(g8_close_waits_then_escalates);
    RUN(g9_fault_is_per_channel);
    RUN(g10_stale_handles);
    RUN(g11_callbacks_reenter);
    RUN(g11_callback_ends_queued_op);
    RUN(g12_state_numbers);
    RUN(g13_callback_errors_counted);
    return TEST_EXIT();
}
