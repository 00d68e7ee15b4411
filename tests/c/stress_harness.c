/* stress_harness.c - the harness of the stress suite: see stress_harness.h.
 * Scenario-independent code only; the scenarios are in test_stress.c. */
#include "stress_harness.h"

#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <unistd.h>

#include "cc_test.h"

static double g_scale = 1.0;
static const char *g_only;
static unsigned g_watchdog_s;
static double g_budget_s;          /* wall-clock cap of one scenario */

static const char *g_scn = "";     /* the scenario running, for messages */
static _Atomic int g_round;
static uint64_t g_scn_start_ns;

/* Failures may be seen on any thread; cc_test_failures is a plain int that
 * only the main thread may touch, so threads count here and each scenario
 * folds the count in when it ends. */
static _Atomic int g_fails;
static _Atomic int g_printed;
#define MAX_PRINTED 30


uint64_t g_seed;
int g_scn_id;
_Atomic uint64_t g_seq;
_Atomic int g_next_tid;
_Thread_local int t_tid;


void failf(const char *file, int line, const char *fmt, ...)
{
    atomic_fetch_add(&g_fails, 1);
    if (atomic_fetch_add(&g_printed, 1) >= MAX_PRINTED)
        return;
    char msg[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s:%d: [%s round %d, CC_STRESS_SEED=%" PRIu64 "] %s\n",
            file, line, g_scn, atomic_load(&g_round), g_seed, msg);
}

/* ------------------------------------------------------------ watchdog */

static char g_wd_msg[256];
static size_t g_wd_len;

static void on_alarm(int sig)
{
    (void)sig;
    /* Only async-signal-safe calls: the round is formatted by hand. */
    char num[16];
    int n = atomic_load(&g_round), i = (int)sizeof num;
    do {
        num[--i] = (char)('0' + n % 10);
        n /= 10;
    } while (n && i > 0);
    ssize_t ignored = write(2, g_wd_msg, g_wd_len);
    ignored = write(2, num + i, sizeof num - (size_t)i);
    ignored = write(2, "\n", 1);
    (void)ignored;
    _exit(3);
}

static void scenario_start(const char *name, int id)
{
    g_scn = name;
    g_scn_id = id;
    atomic_store(&g_round, 0);
    atomic_store(&g_printed, 0);
    snprintf(g_wd_msg, sizeof g_wd_msg,
             "\nwatchdog: %s still running after %u s (CC_STRESS_SEED=%" PRIu64
             "): deadlock? round ",
             name, g_watchdog_s, g_seed);
    g_wd_len = strlen(g_wd_msg);
    alarm(g_watchdog_s);
    g_scn_start_ns = now_ns();
}

static int rounds_for(int base)
{
    int n = (int)(base * g_scale + 0.5);
    return n < 1 ? 1 : n;
}

/* The time cap keeps a slow machine or a sanitizer build within ctest's
 * timeout; hitting it is reported, it is not a failure. */
static int over_budget(void)
{
    return (double)(now_ns() - g_scn_start_ns) / 1e9 > g_budget_s;
}

static void scenario_end(const summary *s, int planned)
{
    alarm(0);
    double secs = (double)(now_ns() - g_scn_start_ns) / 1e9;
    printf("  %s: %d/%d rounds%s, %" PRIu64 " ops, %" PRIu64 " canceled, "
           "cancels abort/fault %" PRIu64 "/%" PRIu64 ", free-states %" PRIu64,
           g_scn, s->rounds, planned, s->rounds < planned ? " (time cap)" : "",
           s->ops, s->canceled, s->cancels[0], s->cancels[1], s->frees);
    if (s->g3_sync)
        printf(", in-register cancels %" PRIu64, s->g3_sync);
    if (s->end_waited)
        printf(", ends that waited %" PRIu64, s->end_waited);
    if (s->cb_ended)
        printf(", ended in own cancel %" PRIu64, s->cb_ended);
    if (s->nested)
        printf(", nested ops %" PRIu64, s->nested);
    if (s->reg_losers)
        printf(", losing registrations %" PRIu64, s->reg_losers);
    if (s->close_ok + s->close_aborted + s->close_timeout)
        printf(", close OK/ABORTED/TIMEOUT %" PRIu64 "/%" PRIu64 "/%" PRIu64,
               s->close_ok, s->close_aborted, s->close_timeout);
    printf(", %.2f s\n", secs);
    int printed = atomic_load(&g_printed);
    if (printed > MAX_PRINTED)
        fprintf(stderr, "  ... %d more failures not printed\n", printed - MAX_PRINTED);
    cc_test_failures += atomic_exchange(&g_fails, 0);
}

/* =========================================================== bookkeeping */

static const char *const v_names[] = {
    "cancel ran twice (G1)", "free-state ran twice (G4)",
    "cancel started after free-state started (G5)",
    "free-state ran while the cancel was running (G5)",
    "cancel got a reason that is neither HOST_ABORT nor CHANNEL_FAULTED (G6)",
    "cancel's reason differs from cc_op_reason() (G6)",
    "cc_op_end inside the op's own cancel did not return CC_OK (G5)",
    "free-state ran before the cancel that ended the op returned (G5)",
    "a library call from inside a cancel callback failed (G11)",
    "cc_host_close from inside a callback was not refused (G11)"};

void rec_init(op_rec *r, round_ctx *ctx, int chan)
{
    memset(r, 0, sizeof *r);
    r->ctx = ctx;
    r->chan = chan;
    r->reason_at_end = NO_REASON;
    atomic_store(&r->reason_seen, NO_REASON);
    atomic_store(&r->reason_lib, NO_REASON);
    atomic_store(&r->cancel_tid, -1);
    atomic_store(&r->free_tid, -1);
}

/* The start and end of every cancel callback.  in_cancel and free_started
 * are a Dekker pair: cancel raises in_cancel then reads free_started,
 * free-state raises free_started then reads in_cancel, all seq_cst, so an
 * overlap in either order is seen by at least one side. */
void cancel_begin(op_rec *r, cc_reason reason)
{
    atomic_fetch_add(&r->in_cancel, 1);
    if (atomic_load(&r->free_started))
        note(r, V_CANCEL_AFTER_FREE);
    if (atomic_fetch_add(&r->cancel_calls, 1) != 0)
        note(r, V_CANCEL_TWICE);
    if (reason != CC_HOST_ABORT && reason != CC_CHANNEL_FAULTED)
        note(r, V_BAD_REASON);
    cc_reason lib = cc_op_reason(r->op);
    if (lib != reason)
        note(r, V_REASON_MISMATCH);
    atomic_store(&r->reason_seen, (int)reason);
    atomic_store(&r->reason_lib, (int)lib);
    atomic_store(&r->cancel_tid, t_tid);
    atomic_store(&r->cancel_enter, tick());
}

void cancel_finish(op_rec *r)
{
    atomic_store(&r->cancel_exit, tick());
    atomic_fetch_sub(&r->in_cancel, 1);
}

void cb_cancel(cc_reason reason, void *state)
{
    op_rec *r = state;
    cancel_begin(r, reason);
    spin_ns(r->spin_ns);
    cancel_finish(r);
}

void cb_free(void *state)
{
    op_rec *r = state;
    atomic_store(&r->free_started, 1);
    if (atomic_load(&r->in_cancel) != 0)
        note(r, V_FREE_DURING_CANCEL);
    if (atomic_fetch_add(&r->free_calls, 1) != 0)
        note(r, V_FREE_TWICE);
    atomic_store(&r->free_tid, t_tid);
    atomic_store(&r->free_enter, tick());
}

/* Registered on stale handles only: it must never run (G10). */
static _Atomic int g_poison;
static void cb_poison_cancel(cc_reason reason, void *state)
{
    (void)reason;
    (void)state;
    atomic_fetch_add(&g_poison, 1);
}
static void cb_poison_free(void *state)
{
    (void)state;
    atomic_fetch_add(&g_poison, 1);
}

/* ============================================================ the rounds */

void ctx_init(round_ctx *ctx, cc_host *h, int nch)
{
    memset(ctx, 0, sizeof *ctx);
    ctx->host = h;
    ctx->nch = nch;
    for (int c = 0; c < nch; c++) {
        cc_status st = cc_channel_open(h, &ctx->ch[c]);
        if (st != CC_OK) {
            fprintf(stderr, "cc_channel_open: %s; cannot go on\n", cc_status_str(st));
            exit(EXIT_FAILURE);
        }
    }
}

/* After the host was closed: every channel reports CLOSED (a faulted one
 * may still say FAULTED), and its handle is released. */
void ctx_close_channels(round_ctx *ctx)
{
    for (int c = 0; c < ctx->nch; c++) {
        enum cc_channel_state cs = cc_channel_state(ctx->ch[c]);
        if (atomic_load(&ctx->fault_started[c]))
            EXPECT(cs == CC_CHANNEL_STATE_CLOSED || cs == CC_CHANNEL_STATE_FAULTED,
                   "faulted channel %d is in state %d after its host closed", c, cs);
        else
            EXPECT(cs == CC_CHANNEL_STATE_CLOSED,
                   "channel %d is in state %d after its host closed, wanted CLOSED", c, cs);
        EXPECT_ST(cc_channel_close(ctx->ch[c]), CC_OK);
    }
}

trig *add_trig(round_ctx *ctx, int kind, int chan, int after_ops, uint64_t delay_ns)
{
    trig *t = &ctx->trig[ctx->ntrig++];
    t->ctx = ctx;
    t->kind = kind;
    t->chan = chan;
    t->after_ops = after_ops;
    t->delay_ns = delay_ns;
    return t;
}

cc_reason trig_reason(const trig *t)
{
    return t->kind == TRIG_ABORT ? CC_HOST_ABORT : CC_CHANNEL_FAULTED;
}

/* Fires a trigger on the calling thread, ticks around the call. */
void fire(trig *t)
{
    round_ctx *ctx = t->ctx;
    t->tid = t_tid;
    if (t->kind == TRIG_ABORT) {
        atomic_store(&ctx->abort_started, 1);
        t->start = tick();
        t->st = cc_host_abort(ctx->host);
        t->end = tick();
        EXPECT(t->st == CC_OK, "cc_host_abort returned %s", cc_status_str(t->st));
    } else {
        atomic_store(&ctx->fault_started[t->chan], 1);
        t->start = tick();
        t->st = cc_channel_fault(ctx->ch[t->chan]);
        t->end = tick();
        EXPECT(t->st == CC_OK, "cc_channel_fault returned %s", cc_status_str(t->st));
        EXPECT(cc_channel_state(ctx->ch[t->chan]) == CC_CHANNEL_STATE_FAULTED,
               "channel %d not FAULTED after cc_channel_fault (G9)", t->chan);
    }
}

void *trig_main(void *arg)
{
    trig *t = arg;
    round_ctx *ctx = t->ctx;
    t_tid = new_tid();
    wait_flag(&ctx->go);
    while (atomic_load(&ctx->ops_done) < t->after_ops
           && atomic_load(&ctx->workers_done) < ctx->nworkers)
        sched_yield();
    spin_ns(t->delay_ns);
    fire(t);
    atomic_store(&t->done, 1);
    return NULL;
}

void start_thread(pthread_t *th, void *(*fn)(void *), void *arg)
{
    if (pthread_create(th, NULL, fn, arg) != 0) {
        fprintf(stderr, "pthread_create failed; cannot go on\n");
        exit(EXIT_FAILURE);
    }
}

void start_trigs(round_ctx *ctx)
{
    for (int i = 0; i < ctx->ntrig; i++)
        start_thread(&ctx->trig[i].thread, trig_main, &ctx->trig[i]);
}

void join_trigs(round_ctx *ctx)
{
    for (int i = 0; i < ctx->ntrig; i++)
        pthread_join(ctx->trig[i].thread, NULL);
}

void worker_init(worker *w, round_ctx *ctx, int idx, int chan, int round)
{
    w->ctx = ctx;
    w->idx = idx;
    w->chan = chan;
    w->rng = rng_make(round, 100 + idx);
    w->nrec = 0;
    w->g3_sync = w->cb_ended = 0;
}

/* Starts the workers and triggers, lets them go, waits for the triggers,
 * then stops the workers (those not already stopped by a refused begin). */
void run_round(round_ctx *ctx, worker *w, int nw, void *(*fn)(void *))
{
    ctx->nworkers = nw;
    for (int i = 0; i < nw; i++)
        start_thread(&w[i].thread, fn, &w[i]);
    start_trigs(ctx);
    atomic_store(&ctx->go, 1);
    join_trigs(ctx);
    atomic_store(&ctx->stop, 1);
    for (int i = 0; i < nw; i++)
        pthread_join(w[i].thread, NULL);
}

/* ------------------------------------------------------------ op steps */

/* A refused begin must have a cause the test itself started: a fault of
 * that channel or an abort (OBJECT_FAULTED), or a close (INVALID_OPERATION). */
void check_refusal(round_ctx *ctx, int c, cc_status st)
{
    if (st == CC_E_OBJECT_FAULTED)
        EXPECT(atomic_load(&ctx->fault_started[c]) || atomic_load(&ctx->abort_started),
               "cc_op_begin on channel %d: OBJECT_FAULTED, but nothing faulted it", c);
    else if (st == CC_E_INVALID_OPERATION)
        EXPECT(atomic_load(&ctx->close_started),
               "cc_op_begin on channel %d: INVALID_OPERATION, but no close began", c);
    else
        FAIL("cc_op_begin on channel %d returned %s", c, cc_status_str(st));
}

/* Begins an op into r; 0 if begin was refused (checked). */
int op_begin(op_rec *r, round_ctx *ctx, int c)
{
    rec_init(r, ctx, c);
    r->owner_tid = t_tid;
    r->begin_start = tick();
    cc_op *op = NULL;
    cc_status st = cc_op_begin(ctx->ch[c], &op);
    if (st != CC_OK) {
        check_refusal(ctx, c, st);
        return 0;
    }
    r->begin_seq = tick();
    EXPECT(op != NULL, "cc_op_begin gave CC_OK and a NULL op");
    r->op = op;
    return 1;
}

/* The next record of a worker, begun on channel c; NULL when refused or
 * when the worker's records are used up. */
op_rec *worker_begin(worker *w, int c)
{
    if (w->nrec >= w->cap)
        return NULL;
    op_rec *r = &w->recs[w->nrec];
    if (!op_begin(r, w->ctx, c))
        return NULL;
    w->nrec++;
    return r;
}

cc_status op_register(op_rec *r, cc_cancel_fn cancel)
{
    r->reg_tid = t_tid;
    r->reg_start = tick();
    cc_status st = cc_op_register_cancel(r->op, cancel, cb_free, r);
    r->reg_end = tick();
    r->reg_st = st;
    r->registered = st == CC_OK;
    EXPECT(st == CC_OK, "first cc_op_register_cancel returned %s", cc_status_str(st));
    return st;
}

/* The operation's "work": polls the hot path, stops early once canceled.
 * In scenario 5 the op's own cancel may end it meanwhile (ender 2): then
 * its handle turns stale under our feet, which must read as such (G10). */
void op_busy(op_rec *r, unsigned iters)
{
    for (unsigned i = 0; i < iters; i++) {
        int c = cc_op_is_canceled(r->op);
        if (c == CC_E_INVALID_OPERATION && atomic_load(&r->ender) == 2)
            return;
        if (c < 0 || c > 1) {
            FAIL("cc_op_is_canceled on a live op returned %d", c);
            return;
        }
        if (c == 1) {
            cc_reason why = cc_op_reason(r->op);
            if (why == CC_REASON_INVALID && atomic_load(&r->ender) == 2)
                return;
            EXPECT(why == CC_HOST_ABORT || why == CC_CHANNEL_FAULTED,
                   "op canceled but cc_op_reason says %d", why);
            return;
        }
        for (volatile int k = 0; k < 20; k++) {
        }
    }
}

/* A stale handle (ended; its slot maybe reused by another thread's op by
 * now) must be refused cleanly and must not touch that other op (G10). */
void check_stale(cc_op *op)
{
    EXPECT_ST(cc_op_end(op), CC_E_INVALID_OPERATION);
    int c = cc_op_is_canceled(op);
    EXPECT(c == CC_E_INVALID_OPERATION, "cc_op_is_canceled(stale) == %d", c);
    cc_reason why = cc_op_reason(op);
    EXPECT(why == CC_REASON_INVALID, "cc_op_reason(stale) == %d", why);
    EXPECT_ST(cc_op_register_cancel(op, cb_poison_cancel, cb_poison_free, &g_poison),
              CC_E_INVALID_OPERATION);
}

/* Ends the op on this thread: free-state must have run when end returns,
 * on this thread (G4), and no cancel may start afterwards (G5). */
void op_end(op_rec *r, rng_t *rng)
{
    atomic_store(&r->ender, 1);
    r->end_seq = tick();
    cc_reason why = cc_op_reason(r->op);
    EXPECT(why == CC_NOT_CANCELED || why == CC_HOST_ABORT || why == CC_CHANNEL_FAULTED,
           "cc_op_reason on a live op == %d", why);
    r->reason_at_end = why;
    r->end_tid = t_tid;
    r->end_call = tick();
    cc_status st = cc_op_end(r->op);
    r->end_ret = tick();
    r->end_ret_ns = now_ns();
    EXPECT(st == CC_OK, "cc_op_end returned %s", cc_status_str(st));
    r->cancels_at_end_ret = atomic_load(&r->cancel_calls);
    if (r->registered) {
        EXPECT(atomic_load(&r->free_calls) == 1,
               "free-state had not run when cc_op_end returned (G4)");
        EXPECT(atomic_load(&r->in_cancel) == 0,
               "cc_op_end returned while the op's cancel was still running (G5)");
    }
    if (rng && rng_below(rng, 8) == 0)
        check_stale(r->op);
}

/* A worker's last record stays in flight until canceled (or the round
 * stops), so a trigger that comes late still finds an op to cancel. */
void hold_if_last(worker *w, op_rec *r)
{
    if (w->nrec < w->cap)
        return;
    while (!atomic_load(&w->ctx->stop) && atomic_load(&r->ender) == 0
           && cc_op_is_canceled(r->op) == 0)
        sched_yield();
}

/* Often a yield in the middle of an op: the trigger threads then tend to
 * run while ops are in flight (otherwise, ops being a few hundred ns long,
 * a trigger mostly finds the workers between ops), and workers, triggers
 * and callbacks interleave on few cores. */
void op_pause(worker *w)
{
    if (rng_pct(&w->rng, 60))
        sched_yield();
}

/* After each op: progress for the triggers. */
void op_done(worker *w) { atomic_fetch_add(&w->ctx->ops_done, 1); }

void *worker_exit(worker *w)
{
    atomic_fetch_add(&w->ctx->workers_done, 1);
    return NULL;
}

/* -------------------------------------------------------------- checks */

/* The guarantees one record must meet once everything has ended.
 * count_op: the record stands for its op in the tally (scenario 3 has three
 * records per op). */
void verify_rec(const op_rec *r, tally *t, int count_op)
{
    unsigned v = atomic_load(&r->viol);
    for (unsigned b = 0; b < sizeof v_names / sizeof v_names[0]; b++)
        if (v & (1u << b))
            FAIL("op on channel %d: %s", r->chan, v_names[b]);

    int cc = atomic_load(&r->cancel_calls), fc = atomic_load(&r->free_calls);
    int seen = atomic_load(&r->reason_seen), lib = atomic_load(&r->reason_lib);
    EXPECT(cc <= 1, "cancel ran %d times (G1)", cc);
    if (r->registered)
        EXPECT(fc == 1, "registered op: free-state ran %d times, wanted 1 (G4)", fc);
    else
        EXPECT(fc == 0 && cc == 0,
               "unregistered (reg %s): free-state ran %d times, cancel %d times (G2/G4)",
               cc_status_str(r->reg_st), fc, cc);
    if (cc) {
        EXPECT(seen == CC_HOST_ABORT || seen == CC_CHANNEL_FAULTED,
               "cancel reason %d (G6)", seen);
        EXPECT(seen == lib, "cancel reason %d but cc_op_reason %d inside it (G6)", seen, lib);
        if (r->reason_at_end != CC_NOT_CANCELED && r->reason_at_end != NO_REASON)
            EXPECT(seen == r->reason_at_end,
                   "cancel reason %d but cc_op_reason %d before end (G6)", seen,
                   r->reason_at_end);
        if (seen == CC_HOST_ABORT || seen == CC_CHANNEL_FAULTED)
            t->cancels[seen] += (uint64_t)cc;
    }
    if (cc && fc)
        EXPECT(atomic_load(&r->cancel_exit) < atomic_load(&r->free_enter),
               "free-state started before the cancel returned (G5)");
    int ender = atomic_load(&r->ender);
    if (ender == 1) {
        EXPECT(cc == r->cancels_at_end_ret,
               "a cancel started after cc_op_end returned (G5)");
        if (fc)
            EXPECT(atomic_load(&r->free_tid) == r->end_tid,
                   "free-state ran on thread %d, not on the one calling cc_op_end (%d)",
                   atomic_load(&r->free_tid), r->end_tid);
    } else if (ender == 2 && fc) {
        EXPECT(atomic_load(&r->free_tid) == atomic_load(&r->cancel_tid),
               "op ended inside its cancel: free-state ran on thread %d, the cancel on %d",
               atomic_load(&r->free_tid), atomic_load(&r->cancel_tid));
    }
    t->frees += (uint64_t)fc;
    if (count_op) {
        t->ops++;
        if (cc || (r->reason_at_end != CC_NOT_CANCELED && r->reason_at_end != NO_REASON))
            t->canceled++;
    }
}

int reaches(const trig *t, const op_rec *r)
{
    return t->start && (t->kind == TRIG_ABORT || t->chan == r->chan);
}

/* Checks one op against the triggers of its round (aborts, and faults of
 * its channel), using only the ticks around each call:
 *   - a begin that started after a trigger completed must have been refused;
 *   - an op in flight for the whole of a trigger's call was canceled, with
 *     that trigger's reason if no trigger of the other reason had started
 *     before it ended (G6, G7, G9);
 *   - a reason or a cancel needs a trigger that had started (no spurious
 *     cancels, G9: another channel's fault does not count);
 *   - a registered op, canceled, whose triggers had all returned before its
 *     end began, had its cancel run (G3/G7: abort and fault run the
 *     callbacks before returning, register runs it if already canceled);
 *   - the cancel ran on the thread of the trigger with its reason, or on the
 *     registering thread inside register (G3). */
void check_triggers(const round_ctx *ctx, const op_rec *r)
{
    int canceled = r->reason_at_end == CC_HOST_ABORT || r->reason_at_end == CC_CHANNEL_FAULTED;
    int all_over = 1;
    for (int i = 0; i < ctx->ntrig; i++) {
        const trig *t = &ctx->trig[i];
        if (!reaches(t, r))
            continue;
        EXPECT(r->begin_start < t->end,
               "cc_op_begin on channel %d succeeded though it began after %s returned",
               r->chan, t->kind == TRIG_ABORT ? "cc_host_abort" : "cc_channel_fault");
        if (t->start < r->end_call && t->end > r->end_call)
            all_over = 0;
        if (r->begin_seq < t->start && r->end_seq > t->end) {
            EXPECT(canceled, "op on channel %d was in flight through a %s but is not canceled",
                   r->chan, t->kind == TRIG_ABORT ? "host abort" : "channel fault");
            int first = 1;
            for (int j = 0; j < ctx->ntrig; j++) {
                const trig *u = &ctx->trig[j];
                if (reaches(u, r) && trig_reason(u) != trig_reason(t) && u->start < t->end)
                    first = 0;
            }
            if (first && canceled)
                EXPECT(r->reason_at_end == (int)trig_reason(t),
                       "op on channel %d canceled with reason %d, but only a trigger of "
                       "reason %d had reached it (G6)",
                       r->chan, r->reason_at_end, trig_reason(t));
        }
    }
    if (canceled) {
        int cause = 0;
        for (int i = 0; i < ctx->ntrig; i++)
            cause |= reaches(&ctx->trig[i], r) && (int)trig_reason(&ctx->trig[i]) == r->reason_at_end
                     && ctx->trig[i].start < r->end_call;
        EXPECT(cause, "op on channel %d has reason %d but no such trigger had started",
               r->chan, r->reason_at_end);
    }
    int cc = atomic_load(&r->cancel_calls);
    if (r->registered && canceled && all_over)
        EXPECT(cc == 1,
               "registered op on channel %d canceled (reason %d), every trigger returned before "
               "its end, yet its cancel ran %d times (G3/G7/G9)",
               r->chan, r->reason_at_end, cc);
    if (cc) {
        uint64_t ce = atomic_load(&r->cancel_enter);
        int ctid = atomic_load(&r->cancel_tid), seen = atomic_load(&r->reason_seen);
        int cause = 0, thread_ok = ctid == r->reg_tid && r->reg_start < ce && ce < r->reg_end;
        for (int i = 0; i < ctx->ntrig; i++) {
            const trig *t = &ctx->trig[i];
            if (!reaches(t, r) || (int)trig_reason(t) != seen)
                continue;
            cause |= t->start < ce;
            thread_ok |= t->tid == ctid && t->start < ce && ce < t->end;
        }
        EXPECT(cause, "cancel ran with reason %d before any such trigger started", seen);
        EXPECT(thread_ok,
               "cancel (reason %d) ran on thread %d: neither inside register on the "
               "registering thread %d nor on the triggering thread during its call",
               seen, ctid, r->reg_tid);
    }
}

/* Close must wait for every op, free-state included (G8). */
void check_close_waited(const round_ctx *ctx, const op_rec *r)
{
    if (!ctx->close_end)
        return;
    EXPECT(r->end_seq < ctx->close_end,
           "cc_host_close returned before an op's end began (G8)");
    if (atomic_load(&r->free_calls))
        EXPECT(atomic_load(&r->free_enter) < ctx->close_end,
               "cc_host_close returned before an op's free-state ran (G8)");
}

cc_stats stats_of(cc_host *h)
{
    cc_stats s;
    memset(&s, 0, sizeof s);
    EXPECT_ST(cc_host_get_stats(h, &s), CC_OK);
    return s;
}

/* The host's counters must agree exactly with the records (the round is
 * over: nothing in flight, every channel handle released). */
static void check_stats(cc_host *h, const cc_stats *base, const tally *t)
{
    cc_stats s = stats_of(h);
    EXPECT_EQ(s.ops_in_flight, 0, "stats");
    EXPECT_EQ(s.ops_begun - base->ops_begun, t->ops, "stats: ops begun this round");
    EXPECT_EQ(s.ops_ended - base->ops_ended, t->ops, "stats: ops ended this round");
    EXPECT_EQ(s.free_states_run - base->free_states_run, t->frees, "stats: free-states run");
    EXPECT_EQ(s.cancels_host_abort - base->cancels_host_abort, t->cancels[CC_HOST_ABORT],
              "stats: HOST_ABORT cancels run");
    EXPECT_EQ(s.cancels_channel_faulted - base->cancels_channel_faulted,
              t->cancels[CC_CHANNEL_FAULTED], "stats: CHANNEL_FAULTED cancels run");
    EXPECT_EQ(s.callback_errors - base->callback_errors, 0, "stats: callback errors");
    EXPECT_EQ(s.channels_open, 0, "stats: channel handles open");
    uint64_t canceled = s.ops_canceled - base->ops_canceled;
    EXPECT(canceled >= t->canceled && canceled <= t->ops,
           "stats: %llu ops canceled this round; the records saw at least %llu of %llu ops",
           (unsigned long long)canceled, (unsigned long long)t->canceled,
           (unsigned long long)t->ops);
}

static void add_summary(summary *s, const tally *t)
{
    s->ops += t->ops;
    s->canceled += t->canceled;
    s->cancels[0] += t->cancels[0];
    s->cancels[1] += t->cancels[1];
    s->frees += t->frees;
}

/* -------------------------------------------------------------- hosts */

static cc_host *host_fresh(void)
{
    cc_host *h = NULL;
    cc_status st = cc_host_create(&h);
    if (st != CC_OK || !h) {
        fprintf(stderr, "cc_host_create: %s; cannot go on\n", cc_status_str(st));
        exit(EXIT_FAILURE);
    }
    /* Long enough that close never escalates unless a scenario asks. */
    EXPECT_ST(cc_host_set_close_timeout(h, 60000), CC_OK);
    EXPECT_ST(cc_host_open(h), CC_OK);
    return h;
}

/* Between rounds the host is CLOSED.  Mostly it is reset and reopened, now
 * and then freed and replaced, so both paths see traffic (G12). */
static cc_host *host_next(cc_host *h, int round)
{
    EXPECT(cc_host_state(h) == CC_HOST_STATE_CLOSED,
           "host in state %d at the end of the round, wanted CLOSED", cc_host_state(h));
    if (round % 8 == 7) {
        cc_host_free(h);
        return host_fresh();
    }
    EXPECT_ST(cc_host_reset(h), CC_OK);
    EXPECT(cc_host_state(h) == CC_HOST_STATE_CREATED, "host not CREATED after reset");
    EXPECT_ST(cc_host_open(h), CC_OK);
    return h;
}

/* Closes a host whose ops have all ended or are about to (the close timeout
 * is long): CC_OK, CLOSED, nothing in flight. */
void close_quiet(round_ctx *ctx)
{
    atomic_store(&ctx->close_started, 1);
    ctx->close_start = tick();
    cc_status st = cc_host_close(ctx->host, -1);
    ctx->close_end = tick();
    EXPECT(st == CC_OK, "cc_host_close after the round returned %s", cc_status_str(st));
    EXPECT(cc_host_state(ctx->host) == CC_HOST_STATE_CLOSED, "host not CLOSED after close");
}

static void alloc_workers(worker *w, int n, int cap)
{
    for (int i = 0; i < n; i++) {
        w[i].recs = calloc((size_t)cap, sizeof(op_rec));
        w[i].cap = cap;
        if (!w[i].recs) {
            fprintf(stderr, "out of memory\n");
            exit(EXIT_FAILURE);
        }
    }
}

static void free_workers(worker *w, int n)
{
    for (int i = 0; i < n; i++)
        free(w[i].recs);
}

/* The triggers of a scenario 2/5 round: a fault per channel (pct_fault),
 * maybe an abort (pct_abort), at least one of them. */
void add_fault_abort_trigs(round_ctx *ctx, rng_t *rr, unsigned pct_fault,
                                  unsigned pct_abort, int max_ops)
{
    for (int c = 0; c < ctx->nch; c++)
        if (rng_pct(rr, pct_fault))
            add_trig(ctx, TRIG_FAULT, c, (int)rng_below(rr, (uint64_t)max_ops),
                     rng_delay(rr, 20000));
    if (rng_pct(rr, pct_abort) || ctx->ntrig == 0)
        add_trig(ctx, TRIG_ABORT, 0, (int)rng_below(rr, (uint64_t)max_ops),
                 rng_delay(rr, 20000));
}

/* After the triggers returned: faulted channels say FAULTED; the host is
 * FAULTED only if aborted (G7, G9). */
void check_states_after_trigs(const round_ctx *ctx)
{
    int aborted = 0;
    for (int i = 0; i < ctx->ntrig; i++)
        aborted |= ctx->trig[i].kind == TRIG_ABORT;
    enum cc_host_state hs = cc_host_state(ctx->host);
    if (aborted)
        EXPECT(hs == CC_HOST_STATE_FAULTED, "host in state %d after abort, wanted FAULTED", hs);
    else
        EXPECT(hs == CC_HOST_STATE_OPEN,
               "host in state %d after channel faults only, wanted OPEN (G9)", hs);
}

/* ========================================================== the driver */

/* One scenario: its rounds on one host (reset, or now and then replaced,
 * between rounds once the scenario closed it), each round's records checked
 * against the host's statistics, a summary line at the end. */
static void stress_run(const stress_scenario *s)
{
    scenario_start(s->name, s->id);
    int planned = rounds_for(s->base_rounds);
    summary sum = {0};
    worker w[MAX_W];
    alloc_workers(w, s->nworkers, s->cap);
    void *scratch = NULL;
    if (s->scratch && !(scratch = calloc(1, s->scratch))) {
        fprintf(stderr, "out of memory\n");
        exit(EXIT_FAILURE);
    }
    cc_host *h = host_fresh();
    for (int round = 0; round < planned && !over_budget(); round++) {
        atomic_store(&g_round, round);
        stress_round r;
        memset(&r, 0, sizeof r);
        r.host = h;
        r.round = round;
        r.rng = rng_make(round, 0);
        r.w = w;
        r.scratch = scratch;
        r.sum = &sum;
        cc_stats base = stats_of(h);
        if (!s->round(&r))
            break;
        check_stats(h, &base, &r.t);
        add_summary(&sum, &r.t);
        sum.rounds++;
        if (r.host_closed)
            h = host_next(h, round);
    }
    if (cc_host_state(h) == CC_HOST_STATE_OPEN)
        EXPECT_ST(cc_host_close(h, -1), CC_OK);
    cc_host_free(h);
    free(scratch);
    free_workers(w, s->nworkers);
    scenario_end(&sum, planned);
}

static int selected(const char *name)
{
    return !g_only || strstr(name, g_only) != NULL;
}

int stress_main(const stress_scenario *table, size_t n)
{
    const char *s = getenv("CC_STRESS_SCALE");
    if (s && *s) {
        g_scale = strtod(s, NULL);
        if (!(g_scale > 0.0)) {
            fprintf(stderr, "CC_STRESS_SCALE must be a positive number\n");
            return EXIT_FAILURE;
        }
    }
    s = getenv("CC_STRESS_SEED");
    g_seed = s && *s ? strtoull(s, NULL, 0)
                     : (now_ns() ^ ((uint64_t)getpid() << 32)) & 0xffffffffffffu;
    g_only = getenv("CC_STRESS_ONLY");
    double big = g_scale > 1.0 ? g_scale : 1.0;
    g_watchdog_s = (unsigned)(120.0 * big);
    /* Scenarios take about 0.5-3 s at scale 1; the cap only guards CI
     * against a much slower machine or an unscaled sanitizer build. */
    g_budget_s = 15.0 * big;
    signal(SIGALRM, on_alarm);
    t_tid = new_tid();

    printf("test_stress: CC_STRESS_SEED=%" PRIu64 " CC_STRESS_SCALE=%.2f, watchdog %u s "
           "per scenario\n", g_seed, g_scale, g_watchdog_s);
    fflush(stdout);

    for (size_t i = 0; i < n; i++) {
        char test_name[96];
        snprintf(test_name, sizeof test_name, "test_%s", table[i].name);
        if (!selected(test_name))
            continue;
        int before = cc_test_failures;
        stress_run(&table[i]);
        printf("%-48s %s\n", test_name, cc_test_failures == before ? "ok" : "FAILED");
        fflush(stdout);
    }

    EXPECT(atomic_load(&g_poison) == 0, "a callback registered on a stale handle ran (G10)");
    cc_test_failures += atomic_exchange(&g_fails, 0);
    return TEST_EXIT();
}
