/* test_stress.c - multi-threaded stress of the cancellation core.
 *
 * Every scenario races begin / register / end against cc_host_abort,
 * cc_channel_fault and cc_host_close over many rounds, then checks exact
 * counts.  The callbacks cannot check much where they run (they are the
 * thing under test), so each operation gets a record (op_rec) that its
 * callbacks fill with atomic counters, flags and sequence numbers; after
 * each round, with every thread joined and the host closed, the records are
 * checked against the guarantees of DESIGN.md (G1-G11) and against the
 * host's own statistics.
 *
 * Ordering is judged with one global sequence counter (tick()): a seq_cst
 * fetch-add taken before and after each interesting call, so "A's tick is
 * below B's" means A happened before B.  A check only ever concludes from
 * ticks that bracket a call from the outside, never from guesses about
 * where inside a call the library acts (one exception, scenario 4b, leans
 * on a 10 ms margin and says why).
 *
 * Environment:
 *   CC_STRESS_SCALE  float, default 1.0: scales every scenario's rounds.
 *                    Measured on 2 cores: plain 1.0 ~8-13 s; ASan 1.0
 *                    ~18 s; TSan 0.5 ~43 s (0.3 ~18 s).  Unscaled, a
 *                    per-scenario time cap keeps TSan under ~2 min.
 *   CC_STRESS_SEED   the seed of every random choice (printed at start), to
 *                    repeat a failing run's choices.  Thread timing cannot
 *                    be repeated, so rerun a few times.
 *   CC_STRESS_ONLY   run only the scenarios whose name contains this text.
 *
 * A watchdog (SIGALRM) ends the process with a message naming the scenario,
 * round and seed if a scenario deadlocks, instead of hanging CI.
 */
#define _POSIX_C_SOURCE 200809L

#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cc_test.h"

/* ================================================================ harness */

static double g_scale = 1.0;
static uint64_t g_seed;
static const char *g_only;
static unsigned g_watchdog_s;
static double g_budget_s;          /* wall-clock cap of one scenario */

static const char *g_scn = "";     /* the scenario running, for messages */
static int g_scn_id;
static _Atomic int g_round;
static uint64_t g_scn_start_ns;

/* Failures may be seen on any thread; cc_test_failures is a plain int that
 * only the main thread may touch, so threads count here and each scenario
 * folds the count in when it ends. */
static _Atomic int g_fails;
static _Atomic int g_printed;
#define MAX_PRINTED 30

static _Atomic uint64_t g_seq;     /* the global order, see tick() */
static _Atomic int g_next_tid;
static _Thread_local int t_tid;    /* small id of the current thread */

static uint64_t tick(void) { return atomic_fetch_add(&g_seq, 1) + 1; }
static int new_tid(void) { return atomic_fetch_add(&g_next_tid, 1) + 1; }

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Busy for ns, yielding: the machine may have fewer cores than threads. */
static void spin_ns(uint64_t ns)
{
    if (ns == 0)
        return;
    uint64_t end = now_ns() + ns;
    while (now_ns() < end)
        sched_yield();
}

static void sleep_ns(uint64_t ns)
{
    struct timespec ts = {(time_t)(ns / 1000000000u), (long)(ns % 1000000000u)};
    nanosleep(&ts, NULL);
}

static void wait_flag(_Atomic int *flag)
{
    while (!atomic_load(flag))
        sched_yield();
}

static void failf(const char *file, int line, const char *fmt, ...)
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
#define FAIL(...) failf(__FILE__, __LINE__, __VA_ARGS__)
#define EXPECT(cond, ...)                                                   \
    do {                                                                    \
        if (!(cond))                                                        \
            FAIL(__VA_ARGS__);                                              \
    } while (0)
#define EXPECT_ST(expr, want)                                               \
    do {                                                                    \
        cc_status st_ = (expr);                                             \
        if (st_ != (want))                                                  \
            FAIL("%s returned %s, wanted %s", #expr, cc_status_str(st_),    \
                 cc_status_str(want));                                      \
    } while (0)
#define EXPECT_EQ(a, b, what)                                               \
    do {                                                                    \
        unsigned long long a_ = (unsigned long long)(a);                    \
        unsigned long long b_ = (unsigned long long)(b);                    \
        if (a_ != b_)                                                       \
            FAIL("%s: %s == %llu, wanted %llu", what, #a, a_, b_);          \
    } while (0)

/* ------------------------------------------------------------ the PRNG
 * splitmix64; every thread of every round gets its own stream derived from
 * (seed, scenario, round, thread), so the choices repeat with the seed. */
typedef struct rng_t {
    uint64_t s;
} rng_t;

static uint64_t rng_next(rng_t *r)
{
    uint64_t z = (r->s += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}

static rng_t rng_make(int round, int stream)
{
    rng_t r = {g_seed ^ ((uint64_t)g_scn_id << 56) ^ ((uint64_t)round << 20)
               ^ (uint64_t)stream};
    rng_next(&r);
    return r;
}

static uint64_t rng_below(rng_t *r, uint64_t n) { return n ? rng_next(r) % n : 0; }
static int rng_pct(rng_t *r, unsigned pct) { return rng_below(r, 100) < pct; }

/* A trigger delay: often near zero (racing begin/register head-on), else
 * anywhere up to max_ns. */
static uint64_t rng_delay(rng_t *r, uint64_t max_ns)
{
    return rng_pct(r, 25) ? rng_below(r, 5000) : rng_below(r, max_ns);
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

/* ----------------------------------------------------------- scenarios */

typedef struct summary {
    int rounds;
    uint64_t ops, canceled, cancels[2], frees;
    uint64_t g3_sync;       /* cancels run inside register (G3) */
    uint64_t end_waited;    /* ends that had to wait for a running cancel */
    uint64_t cb_ended;      /* ops ended from inside their own cancel */
    uint64_t nested;        /* ops begun inside callbacks */
    uint64_t close_ok, close_aborted, close_timeout;
    uint64_t reg_losers;
} summary;

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

/* What the callbacks detect where they run (a bit each). */
enum {
    V_CANCEL_TWICE = 1u << 0,       /* G1 */
    V_FREE_TWICE = 1u << 1,         /* G4 */
    V_CANCEL_AFTER_FREE = 1u << 2,  /* G5: a cancel started after free-state */
    V_FREE_DURING_CANCEL = 1u << 3, /* G5: free-state overlapped a cancel */
    V_BAD_REASON = 1u << 4,         /* G6: not HOST_ABORT / CHANNEL_FAULTED */
    V_REASON_MISMATCH = 1u << 5,    /* G6: argument != cc_op_reason() */
    V_END_IN_CB = 1u << 6,          /* G5: cc_op_end inside own cancel != CC_OK */
    V_FREE_EARLY = 1u << 7,         /* G5: ...or ran free-state before returning */
    V_REENTRY = 1u << 8,            /* G11: a re-entrant call failed */
    V_CLOSE_IN_CB = 1u << 9         /* G11: close from a callback not refused */
};
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

#define NO_REASON (-100)

typedef struct round_ctx round_ctx;

typedef struct op_rec {
    cc_op *op;
    round_ctx *ctx;
    int chan;
    int owner_tid, reg_tid, end_tid;
    int registered;
    cc_status reg_st;
    int action, arg;        /* what a re-entrant cancel does (scenario 6) */
    uint64_t spin_ns;       /* how long the cancel callback stays busy */
    /* Who ends the op: 1 its owner, 2 its own cancel callback (scenario 5
     * decides it with a CAS so exactly one of them calls cc_op_end). */
    _Atomic int ender;
    /* Written by the callbacks. */
    _Atomic int cancel_calls, free_calls, free_started, in_cancel;
    _Atomic int reason_seen, reason_lib, cancel_tid, free_tid;
    _Atomic uint64_t cancel_enter, cancel_exit, free_enter;
    _Atomic unsigned viol;
    /* Written by the thread that begins / registers / ends. */
    uint64_t begin_start, begin_seq, reg_start, reg_end;
    uint64_t end_seq;       /* tick before reading the reason at the end */
    uint64_t end_call;      /* tick after reading it, right before cc_op_end */
    uint64_t end_ret, end_ret_ns;
    int reason_at_end;
    int cancels_at_end_ret;
} op_rec;

static void rec_init(op_rec *r, round_ctx *ctx, int chan)
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

static void note(op_rec *r, unsigned v) { atomic_fetch_or(&r->viol, v); }

/* The start and end of every cancel callback.  in_cancel and free_started
 * are a Dekker pair: cancel raises in_cancel then reads free_started,
 * free-state raises free_started then reads in_cancel, all seq_cst, so an
 * overlap in either order is seen by at least one side. */
static void cancel_begin(op_rec *r, cc_reason reason)
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

static void cancel_finish(op_rec *r)
{
    atomic_store(&r->cancel_exit, tick());
    atomic_fetch_sub(&r->in_cancel, 1);
}

static void cb_cancel(cc_reason reason, void *state)
{
    op_rec *r = state;
    cancel_begin(r, reason);
    spin_ns(r->spin_ns);
    cancel_finish(r);
}

static void cb_free(void *state)
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

#define MAX_CH 6
#define MAX_TRIG 6
#define MAX_W 4
/* Triggers of the worker scenarios fire after a random number of ended ops
 * below this: enough for every worker to be in full swing, few enough that
 * rounds stay short. */
#define S_TRIGGER_OPS 600

enum { TRIG_ABORT, TRIG_FAULT };

typedef struct trig {
    round_ctx *ctx;
    pthread_t thread;
    int kind, chan;
    int after_ops;          /* fire once the workers ended this many ops... */
    uint64_t delay_ns;      /* ...and then this much later */
    uint64_t start, end;    /* ticks around the call; 0: never fired */
    int tid;
    cc_status st;
    _Atomic int done;       /* fire() returned (for threads that poll) */
} trig;

struct round_ctx {
    cc_host *host;
    cc_channel *ch[MAX_CH];
    int nch;
    /* Raised before the corresponding call, so a refusal can be blamed. */
    _Atomic int fault_started[MAX_CH];
    _Atomic int abort_started, close_started;
    _Atomic int go, stop;
    /* Triggers are timed by the workers' progress, not by the clock: on a
     * machine with fewer cores than threads a trigger thread waiting for a
     * deadline may not run until the workers are long done. */
    _Atomic int ops_done, workers_done;
    int nworkers;
    trig trig[MAX_TRIG];
    int ntrig;
    uint64_t close_start, close_end;
    /* Scenario 6: ops begun inside callbacks. */
    op_rec *nested;
    int nested_cap;
    _Atomic int nested_used;
};

typedef struct worker {
    round_ctx *ctx;
    pthread_t thread;
    int idx, tid, chan;
    rng_t rng;
    op_rec *recs;
    int nrec, cap;
    uint64_t g3_sync, cb_ended;
} worker;

static void ctx_init(round_ctx *ctx, cc_host *h, int nch)
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
static void ctx_close_channels(round_ctx *ctx)
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

static trig *add_trig(round_ctx *ctx, int kind, int chan, int after_ops, uint64_t delay_ns)
{
    trig *t = &ctx->trig[ctx->ntrig++];
    t->ctx = ctx;
    t->kind = kind;
    t->chan = chan;
    t->after_ops = after_ops;
    t->delay_ns = delay_ns;
    return t;
}

static cc_reason trig_reason(const trig *t)
{
    return t->kind == TRIG_ABORT ? CC_HOST_ABORT : CC_CHANNEL_FAULTED;
}

/* Fires a trigger on the calling thread, ticks around the call. */
static void fire(trig *t)
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

static void *trig_main(void *arg)
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

static void start_thread(pthread_t *th, void *(*fn)(void *), void *arg)
{
    if (pthread_create(th, NULL, fn, arg) != 0) {
        fprintf(stderr, "pthread_create failed; cannot go on\n");
        exit(EXIT_FAILURE);
    }
}

static void start_trigs(round_ctx *ctx)
{
    for (int i = 0; i < ctx->ntrig; i++)
        start_thread(&ctx->trig[i].thread, trig_main, &ctx->trig[i]);
}

static void join_trigs(round_ctx *ctx)
{
    for (int i = 0; i < ctx->ntrig; i++)
        pthread_join(ctx->trig[i].thread, NULL);
}

static void worker_init(worker *w, round_ctx *ctx, int idx, int chan, int round)
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
static void run_round(round_ctx *ctx, worker *w, int nw, void *(*fn)(void *))
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
static void check_refusal(round_ctx *ctx, int c, cc_status st)
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
static int op_begin(op_rec *r, round_ctx *ctx, int c)
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
static op_rec *worker_begin(worker *w, int c)
{
    if (w->nrec >= w->cap)
        return NULL;
    op_rec *r = &w->recs[w->nrec];
    if (!op_begin(r, w->ctx, c))
        return NULL;
    w->nrec++;
    return r;
}

static cc_status op_register(op_rec *r, cc_cancel_fn cancel)
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
static void op_busy(op_rec *r, unsigned iters)
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
static void check_stale(cc_op *op)
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
static void op_end(op_rec *r, rng_t *rng)
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
static void hold_if_last(worker *w, op_rec *r)
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
static void op_pause(worker *w)
{
    if (rng_pct(&w->rng, 60))
        sched_yield();
}

/* After each op: progress for the triggers. */
static void op_done(worker *w) { atomic_fetch_add(&w->ctx->ops_done, 1); }

static void *worker_exit(worker *w)
{
    atomic_fetch_add(&w->ctx->workers_done, 1);
    return NULL;
}

/* -------------------------------------------------------------- checks */

typedef struct tally {
    uint64_t ops, frees, cancels[2], canceled;
} tally;

/* The guarantees one record must meet once everything has ended.
 * count_op: the record stands for its op in the tally (scenario 3 has three
 * records per op). */
static void verify_rec(const op_rec *r, tally *t, int count_op)
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

static int reaches(const trig *t, const op_rec *r)
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
static void check_triggers(const round_ctx *ctx, const op_rec *r)
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
static void check_close_waited(const round_ctx *ctx, const op_rec *r)
{
    if (!ctx->close_end)
        return;
    EXPECT(r->end_seq < ctx->close_end,
           "cc_host_close returned before an op's end began (G8)");
    if (atomic_load(&r->free_calls))
        EXPECT(atomic_load(&r->free_enter) < ctx->close_end,
               "cc_host_close returned before an op's free-state ran (G8)");
}

static cc_stats stats_of(cc_host *h)
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
static void close_quiet(round_ctx *ctx)
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

/* ================================================= 1. workers vs abort
 *
 * 2-4 workers loop begin / (register) / busy / end on their own channels
 * while a trigger thread aborts the host at a random moment.  In a third of
 * the rounds the main thread closes the host concurrently too, so abort
 * lands before, during or after the close: close returns CC_OK, or
 * CC_E_OPERATION_ABORTED only if the abort overlapped it. */

#define S1_CAP 4096

static void *s1_worker(void *arg)
{
    worker *w = arg;
    t_tid = w->tid = new_tid();
    wait_flag(&w->ctx->go);
    while (!atomic_load(&w->ctx->stop)) {
        op_rec *r = worker_begin(w, w->chan);
        if (!r)
            break;
        if (rng_pct(&w->rng, 80))
            op_register(r, cb_cancel);
        op_busy(r, (unsigned)rng_below(&w->rng, 40));
        op_pause(w);
        hold_if_last(w, r);
        op_end(r, &w->rng);
        op_done(w);
    }
    return worker_exit(w);
}

static void test_s1_workers_vs_abort(void)
{
    scenario_start("s1_workers_vs_abort", 1);
    int planned = rounds_for(2000);
    summary sum = {0};
    worker w[MAX_W];
    alloc_workers(w, MAX_W, S1_CAP);
    cc_host *h = host_fresh();
    for (int round = 0; round < planned && !over_budget(); round++) {
        atomic_store(&g_round, round);
        rng_t rr = rng_make(round, 0);
        round_ctx ctx;
        int nw = 2 + (int)rng_below(&rr, 3);
        cc_stats base = stats_of(h);
        ctx_init(&ctx, h, nw);
        trig *ab = add_trig(&ctx, TRIG_ABORT, 0, (int)rng_below(&rr, S_TRIGGER_OPS),
                            rng_delay(&rr, 20000));
        int close_race = rng_pct(&rr, 33);
        int close_after = (int)rng_below(&rr, S_TRIGGER_OPS);
        if (close_race && rng_pct(&rr, 70)) {
            /* Aim the abort at the close, so that they often overlap. */
            ab->after_ops = close_after + (int)rng_below(&rr, 40) - 20;
            ab->delay_ns = rng_below(&rr, 30000);
        }

        ctx.nworkers = nw;
        for (int i = 0; i < nw; i++) {
            worker_init(&w[i], &ctx, i, i, round);
            start_thread(&w[i].thread, s1_worker, &w[i]);
        }
        start_trigs(&ctx);
        atomic_store(&ctx.go, 1);
        cc_status close_st = CC_OK;
        if (close_race) {
            while (atomic_load(&ctx.ops_done) < close_after
                   && atomic_load(&ctx.workers_done) < nw)
                sched_yield();
            atomic_store(&ctx.close_started, 1);
            ctx.close_start = tick();
            close_st = cc_host_close(h, -1);
            ctx.close_end = tick();
        }
        join_trigs(&ctx);
        if (!close_race)
            EXPECT(cc_host_state(h) == CC_HOST_STATE_FAULTED,
                   "host in state %d after cc_host_abort, wanted FAULTED (G7)", cc_host_state(h));
        atomic_store(&ctx.stop, 1);
        for (int i = 0; i < nw; i++)
            pthread_join(w[i].thread, NULL);

        if (!close_race) {
            close_quiet(&ctx);
            sum.close_ok++;
        } else {
            EXPECT(close_st == CC_OK || close_st == CC_E_OPERATION_ABORTED,
                   "cc_host_close racing an abort returned %s", cc_status_str(close_st));
            if (ab->end < ctx.close_start || ab->start > ctx.close_end)
                EXPECT(close_st == CC_OK,
                       "cc_host_close returned %s though the abort did not overlap it",
                       cc_status_str(close_st));
            EXPECT(cc_host_state(h) == CC_HOST_STATE_CLOSED,
                   "host in state %d after close (and abort), wanted CLOSED", cc_host_state(h));
            sum.close_ok += close_st == CC_OK;
            sum.close_aborted += close_st == CC_E_OPERATION_ABORTED;
        }
        ctx_close_channels(&ctx);

        tally t = {0};
        for (int i = 0; i < nw; i++)
            for (int k = 0; k < w[i].nrec; k++) {
                const op_rec *r = &w[i].recs[k];
                verify_rec(r, &t, 1);
                check_triggers(&ctx, r);
                check_close_waited(&ctx, r);
                sum.g3_sync += atomic_load(&r->cancel_calls)
                               && atomic_load(&r->cancel_tid) == r->owner_tid;
            }
        check_stats(h, &base, &t);
        add_summary(&sum, &t);
        sum.rounds++;
        h = host_next(h, round);
    }
    cc_host_free(h);
    free_workers(w, MAX_W);
    scenario_end(&sum, planned);
}

/* ====================================== 2. channel faults vs workers
 *
 * One or two channels, each shared by two workers; each channel is faulted
 * at a random moment (85%), and the host is aborted at a random moment in a
 * third of the rounds.  The first trigger that reaches an op decides its
 * reason; faults reach only their own channel; the host stays OPEN without
 * an abort (G6, G9).  check_triggers judges every op. */

#define S2_CAP 4096

static void *s2_worker(void *arg)
{
    worker *w = arg;
    t_tid = w->tid = new_tid();
    wait_flag(&w->ctx->go);
    while (!atomic_load(&w->ctx->stop)) {
        op_rec *r = worker_begin(w, w->chan);
        if (!r)
            break;
        if (rng_pct(&w->rng, 90))
            op_register(r, cb_cancel);
        op_busy(r, (unsigned)rng_below(&w->rng, 30));
        op_pause(w);
        hold_if_last(w, r);
        op_end(r, &w->rng);
        op_done(w);
    }
    return worker_exit(w);
}

/* The triggers of a scenario 2/5 round: a fault per channel (pct_fault),
 * maybe an abort (pct_abort), at least one of them. */
static void add_fault_abort_trigs(round_ctx *ctx, rng_t *rr, unsigned pct_fault,
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
static void check_states_after_trigs(const round_ctx *ctx)
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

static void test_s2_faults_vs_workers(void)
{
    scenario_start("s2_faults_vs_workers", 2);
    int planned = rounds_for(2000);
    summary sum = {0};
    worker w[MAX_W];
    alloc_workers(w, MAX_W, S2_CAP);
    cc_host *h = host_fresh();
    for (int round = 0; round < planned && !over_budget(); round++) {
        atomic_store(&g_round, round);
        rng_t rr = rng_make(round, 0);
        round_ctx ctx;
        int nch = 1 + (int)rng_below(&rr, 2), nw = 2 * nch;
        cc_stats base = stats_of(h);
        ctx_init(&ctx, h, nch);
        add_fault_abort_trigs(&ctx, &rr, 85, 33, S_TRIGGER_OPS);
        for (int i = 0; i < nw; i++)
            worker_init(&w[i], &ctx, i, i % nch, round);
        run_round(&ctx, w, nw, s2_worker);
        check_states_after_trigs(&ctx);
        close_quiet(&ctx);
        sum.close_ok++;
        ctx_close_channels(&ctx);

        tally t = {0};
        for (int i = 0; i < nw; i++)
            for (int k = 0; k < w[i].nrec; k++) {
                verify_rec(&w[i].recs[k], &t, 1);
                check_triggers(&ctx, &w[i].recs[k]);
            }
        check_stats(h, &base, &t);
        add_summary(&sum, &t);
        sum.rounds++;
        h = host_next(h, round);
    }
    cc_host_free(h);
    free_workers(w, MAX_W);
    scenario_end(&sum, planned);
}

/* ============================================ 3. racing registrations
 *
 * The main thread begins a batch of ops; two racers register on each op at
 * the same moment (they meet at a per-op rendezvous first).  Exactly one
 * registration wins (G2); the loser's callbacks never run; the winner's
 * free-state runs exactly once.  Modes: no cancel; ops canceled before the
 * race (the winner's cancel runs inside its register, G3); a channel fault
 * or a host abort racing the registrations. */

#define S3_OPS 8

enum { S3_PLAIN, S3_PRECANCELED, S3_FAULT_RACE, S3_ABORT_RACE };

typedef struct s3_round {
    round_ctx *ctx;
    int mode;
    op_rec rec[S3_OPS][3];  /* [op][racer 0, racer 1, main's late third try] */
    _Atomic int arrive[S3_OPS];
} s3_round;

typedef struct s3_racer {
    s3_round *sr;
    pthread_t thread;
    int me;
} s3_racer;

static void *s3_racer_main(void *arg)
{
    s3_racer *rc = arg;
    s3_round *sr = rc->sr;
    t_tid = new_tid();
    wait_flag(&sr->ctx->go);
    for (int i = 0; i < S3_OPS; i++) {
        /* Rendezvous: spin hard for a while (both racers on a core hit
         * register together), then yield (fewer cores than threads). */
        atomic_fetch_add(&sr->arrive[i], 1);
        for (unsigned n = 0; atomic_load(&sr->arrive[i]) < 2; n++)
            if (n > 200)
                sched_yield();
        op_rec *r = &sr->rec[i][rc->me];
        r->reg_tid = t_tid;
        r->reg_start = tick();
        r->reg_st = cc_op_register_cancel(r->op, cb_cancel, cb_free, r);
        r->reg_end = tick();
        r->registered = r->reg_st == CC_OK;
        if (r->registered && sr->mode == S3_PRECANCELED)
            EXPECT(atomic_load(&r->cancel_calls) == 1
                       && atomic_load(&r->cancel_tid) == t_tid,
                   "registration on a canceled op returned CC_OK without running the "
                   "cancel on this thread (G3): calls %d, thread %d vs %d",
                   atomic_load(&r->cancel_calls), atomic_load(&r->cancel_tid), t_tid);
    }
    return NULL;
}

static void test_s3_register_race(void)
{
    scenario_start("s3_register_race", 3);
    int planned = rounds_for(6000);
    summary sum = {0};
    s3_round *sr = calloc(1, sizeof *sr);
    if (!sr)
        exit(EXIT_FAILURE);
    cc_host *h = host_fresh();
    for (int round = 0; round < planned && !over_budget(); round++) {
        atomic_store(&g_round, round);
        rng_t rr = rng_make(round, 0);
        round_ctx ctx;
        cc_stats base = stats_of(h);
        ctx_init(&ctx, h, 1);
        memset(sr, 0, sizeof *sr);
        sr->ctx = &ctx;
        sr->mode = (int)rng_below(&rr, 4);

        int nops = 0;
        for (int i = 0; i < S3_OPS; i++) {
            op_rec *r0 = &sr->rec[i][0];
            if (!op_begin(r0, &ctx, 0))
                break;
            for (int k = 1; k < 3; k++) {
                rec_init(&sr->rec[i][k], &ctx, 0);
                sr->rec[i][k].op = r0->op;
                sr->rec[i][k].begin_start = r0->begin_start;
                sr->rec[i][k].begin_seq = r0->begin_seq;
            }
            nops++;
        }
        EXPECT(nops == S3_OPS, "only %d of %d ops began on a fresh channel", nops, S3_OPS);
        if (sr->mode == S3_PRECANCELED)
            fire(add_trig(&ctx, TRIG_FAULT, 0, 0, 0));
        else if (sr->mode == S3_FAULT_RACE)
            add_trig(&ctx, TRIG_FAULT, 0, 0, rng_delay(&rr, 40000));
        else if (sr->mode == S3_ABORT_RACE)
            add_trig(&ctx, TRIG_ABORT, 0, 0, rng_delay(&rr, 40000));

        s3_racer rc[2] = {{.sr = sr, .me = 0}, {.sr = sr, .me = 1}};
        for (int k = 0; k < 2; k++)
            start_thread(&rc[k].thread, s3_racer_main, &rc[k]);
        int first_trig = sr->mode == S3_PRECANCELED;
        for (int i = first_trig; i < ctx.ntrig; i++)
            start_thread(&ctx.trig[i].thread, trig_main, &ctx.trig[i]);
        atomic_store(&ctx.go, 1);
        for (int k = 0; k < 2; k++)
            pthread_join(rc[k].thread, NULL);
        for (int i = first_trig; i < ctx.ntrig; i++)
            pthread_join(ctx.trig[i].thread, NULL);

        tally t = {0};
        for (int i = 0; i < nops; i++) {
            op_rec *a = &sr->rec[i][0], *b = &sr->rec[i][1], *late = &sr->rec[i][2];
            /* A third registration, after the race: refused, never called. */
            late->reg_tid = t_tid;
            late->reg_st = cc_op_register_cancel(a->op, cb_cancel, cb_free, late);
            late->registered = late->reg_st == CC_OK;
            EXPECT(late->reg_st == CC_E_INVALID_OPERATION,
                   "third registration returned %s (G2)", cc_status_str(late->reg_st));
            EXPECT(a->registered + b->registered == 1,
                   "racing registrations: %s and %s, wanted exactly one CC_OK (G2)",
                   cc_status_str(a->reg_st), cc_status_str(b->reg_st));
            op_rec *win = a->registered ? a : b, *lose = a->registered ? b : a;
            EXPECT(lose->reg_st == CC_E_INVALID_OPERATION,
                   "losing registration returned %s, wanted INVALID_OPERATION (G2)",
                   cc_status_str(lose->reg_st));
            op_end(win, &rr);
            /* The op-level facts, for the records that did not end it. */
            for (int k = 0; k < 3; k++) {
                op_rec *o = &sr->rec[i][k];
                if (o == win)
                    continue;
                o->end_seq = win->end_seq;
                o->end_call = win->end_call;
                o->reason_at_end = win->reason_at_end;
            }
            verify_rec(win, &t, 1);
            verify_rec(lose, &t, 0);
            verify_rec(late, &t, 0);
            check_triggers(&ctx, win);
            sum.g3_sync += atomic_load(&win->cancel_calls)
                           && atomic_load(&win->cancel_tid) == win->reg_tid;
            sum.reg_losers++;
        }
        if (sr->mode == S3_ABORT_RACE) {
            close_quiet(&ctx);
            ctx_close_channels(&ctx);
            check_stats(h, &base, &t);
            h = host_next(h, round);
        } else {
            EXPECT(cc_host_state(h) == CC_HOST_STATE_OPEN, "host not OPEN after a channel fault (G9)");
            EXPECT_ST(cc_channel_close(ctx.ch[0]), CC_OK);
            check_stats(h, &base, &t);
        }
        add_summary(&sum, &t);
        sum.rounds++;
    }
    EXPECT_ST(cc_host_close(h, -1), CC_OK);
    cc_host_free(h);
    free(sr);
    scenario_end(&sum, planned);
}

/* =========================================== 4. end vs running cancel
 *
 * 1-3 registered ops on a channel, each with a cancel that stays busy for
 * 20-150 us; a trigger thread faults the channel (or aborts the host) and
 * runs them one after the other.  The main thread ends the ops: in most
 * rounds it first waits until a cancel is running and ends that op, which
 * must wait for the callback to return and only then run free-state (G5);
 * otherwise at a random moment, before, during or after the callbacks. */

#define S4_OPS 3

static void test_s4_end_vs_running_cancel(void)
{
    scenario_start("s4_end_vs_running_cancel", 4);
    int planned = rounds_for(4000);
    summary sum = {0};
    cc_host *h = host_fresh();
    op_rec rec[S4_OPS];
    for (int round = 0; round < planned && !over_budget(); round++) {
        atomic_store(&g_round, round);
        rng_t rr = rng_make(round, 0);
        round_ctx ctx;
        cc_stats base = stats_of(h);
        ctx_init(&ctx, h, 1);
        int nops = 1 + (int)rng_below(&rr, S4_OPS);
        for (int i = 0; i < nops; i++) {
            if (!op_begin(&rec[i], &ctx, 0)) {
                FAIL("cc_op_begin refused on a fresh channel");
                nops = i;
                break;
            }
            rec[i].spin_ns = 20000 + rng_below(&rr, 130000);
            op_register(&rec[i], cb_cancel);
        }
        int aborting = rng_pct(&rr, 25);
        trig *t = add_trig(&ctx, aborting ? TRIG_ABORT : TRIG_FAULT, 0, 0, 0);
        int wait_running = rng_pct(&rr, 65);
        uint64_t end_delay = rng_below(&rr, 200000);
        int order[S4_OPS] = {0, 1, 2};
        for (int i = nops - 1; i > 0; i--) {
            int j = (int)rng_below(&rr, (uint64_t)i + 1), tmp = order[i];
            order[i] = order[j];
            order[j] = tmp;
        }

        start_thread(&t->thread, trig_main, t);
        atomic_store(&ctx.go, 1);
        if (wait_running) {
            /* The trigger is done only after every callback ran, so then
             * no cancel is left to catch running. */
            int running = -1;
            while (running < 0) {
                for (int i = 0; i < nops && running < 0; i++)
                    if (atomic_load(&rec[i].in_cancel))
                        running = i;
                if (running < 0 && atomic_load(&t->done))
                    break;
                sched_yield();
            }
            if (running >= 0) {
                /* Put the running one first. */
                for (int i = 0; i < nops; i++)
                    if (order[i] == running) {
                        order[i] = order[0];
                        order[0] = running;
                    }
                op_rec *r = &rec[running];
                op_end(r, NULL);
                EXPECT(atomic_load(&r->cancel_calls) == 1
                           && atomic_load(&r->cancel_exit) < atomic_load(&r->free_enter)
                           && atomic_load(&r->free_enter) < r->end_ret,
                       "cc_op_end did not wait for the running cancel before free-state (G5)");
                /* Usually it was still running when end began: count those. */
                sum.end_waited += atomic_load(&r->cancel_exit) > r->end_call;
            }
        } else {
            spin_ns(end_delay);
        }
        for (int i = 0; i < nops; i++)
            if (!atomic_load(&rec[order[i]].ender))
                op_end(&rec[order[i]], &rr);
        pthread_join(t->thread, NULL);

        tally tl = {0};
        for (int i = 0; i < nops; i++) {
            verify_rec(&rec[i], &tl, 1);
            check_triggers(&ctx, &rec[i]);
        }
        if (aborting) {
            close_quiet(&ctx);
            ctx_close_channels(&ctx);
            check_stats(h, &base, &tl);
            h = host_next(h, round);
        } else {
            EXPECT_ST(cc_channel_close(ctx.ch[0]), CC_OK);
            check_stats(h, &base, &tl);
        }
        add_summary(&sum, &tl);
        sum.rounds++;
    }
    EXPECT_ST(cc_host_close(h, -1), CC_OK);
    cc_host_free(h);
    scenario_end(&sum, planned);
}

/* ==================================== 4b. end vs a queued cancel
 *
 * A fan-out claims the callbacks of all the ops it cancels, then runs them
 * one after the other.  Two registered ops; the first callback to run is
 * held until the main thread is about to end the other op, and then stays
 * busy 10 ms more.  The other op's end thus begins while its cancel is only
 * queued: "no cancel callback starts after this call began" (cc_op_end, G5)
 * means that cancel must never run.  The 10 ms margin stands for "after":
 * only a stall of the main thread that long between raising the flag and
 * entering cc_op_end could make a run legitimate. */

#define S4B_GUARD_NS 10000000u

static _Atomic int g_s4b_first;     /* the first callback claimed the gate */
static _Atomic int g_s4b_ending;    /* main is about to end the other op */

static void cb_cancel_gate(cc_reason reason, void *state)
{
    op_rec *r = state;
    cancel_begin(r, reason);
    int expected = 0;
    if (atomic_compare_exchange_strong(&g_s4b_first, &expected, 1)) {
        wait_flag(&g_s4b_ending);
        sleep_ns(S4B_GUARD_NS);
    }
    cancel_finish(r);
}

static void test_s4b_end_vs_queued_cancel(void)
{
    scenario_start("s4b_end_vs_queued_cancel", 9);
    int planned = rounds_for(40);
    summary sum = {0};
    cc_host *h = host_fresh();
    op_rec rec[2];
    for (int round = 0; round < planned && !over_budget(); round++) {
        atomic_store(&g_round, round);
        rng_t rr = rng_make(round, 0);
        round_ctx ctx;
        cc_stats base = stats_of(h);
        ctx_init(&ctx, h, 1);
        atomic_store(&g_s4b_first, 0);
        atomic_store(&g_s4b_ending, 0);
        int nops = 0;
        for (int i = 0; i < 2; i++)
            if (op_begin(&rec[i], &ctx, 0)) {
                op_register(&rec[i], cb_cancel_gate);
                nops++;
            }
        EXPECT(nops == 2, "cc_op_begin refused on a fresh channel");
        if (nops < 2) {
            atomic_store(&g_s4b_ending, 1);
            for (int i = 0; i < nops; i++)
                op_end(&rec[i], NULL);
            EXPECT_ST(cc_channel_close(ctx.ch[0]), CC_OK);
            break;
        }
        int aborting = rng_pct(&rr, 30);
        trig *t = add_trig(&ctx, aborting ? TRIG_ABORT : TRIG_FAULT, 0, 0, 0);
        start_thread(&t->thread, trig_main, t);
        atomic_store(&ctx.go, 1);

        int first = -1;
        while (first < 0) {
            for (int i = 0; i < 2 && first < 0; i++)
                if (atomic_load(&rec[i].in_cancel))
                    first = i;
            sched_yield();
        }
        op_rec *other = &rec[1 - first];
        /* op_end takes its ticks before the call; raise the gate last. */
        atomic_store(&other->ender, 1);
        other->end_seq = tick();
        other->reason_at_end = cc_op_reason(other->op);
        other->end_tid = t_tid;
        other->end_call = tick();
        uint64_t call_ns = now_ns();
        atomic_store(&g_s4b_ending, 1);
        EXPECT_ST(cc_op_end(other->op), CC_OK);
        other->end_ret = tick();
        other->cancels_at_end_ret = atomic_load(&other->cancel_calls);
        uint64_t end_ns = now_ns() - call_ns;
        int ran = atomic_load(&other->cancel_calls);
        EXPECT(ran == 0,
               "the cancel of an op whose cc_op_end had begun %.1f ms earlier ran anyway "
               "(it was queued behind another op's callback in the same %s; cc_op_end "
               "waited %.1f ms for it): a cancel started after completion began (G5)",
               (double)S4B_GUARD_NS / 1e6, aborting ? "abort" : "fault",
               (double)end_ns / 1e6);
        EXPECT(atomic_load(&other->free_calls) == 1, "free-state did not run in cc_op_end (G4)");
        op_end(&rec[first], NULL);
        pthread_join(t->thread, NULL);

        tally tl = {0};
        for (int i = 0; i < 2; i++) {
            verify_rec(&rec[i], &tl, 1);
            check_triggers(&ctx, &rec[i]);
        }
        if (aborting) {
            close_quiet(&ctx);
            ctx_close_channels(&ctx);
            check_stats(h, &base, &tl);
            h = host_next(h, round);
        } else {
            EXPECT_ST(cc_channel_close(ctx.ch[0]), CC_OK);
            check_stats(h, &base, &tl);
        }
        add_summary(&sum, &tl);
        sum.rounds++;
    }
    EXPECT_ST(cc_host_close(h, -1), CC_OK);
    cc_host_free(h);
    scenario_end(&sum, planned);
}

/* ======================================== 5. end from inside own cancel
 *
 * As scenario 2, but most ops' cancel callbacks end their own op.  The
 * owner and the callback settle who ends it with a CAS, so exactly one of
 * them calls cc_op_end.  From inside the callback cc_op_end returns CC_OK at
 * once; free-state runs only after the callback returned, on its thread
 * (G5).  When the op was canceled before registering, all of this happens
 * inside cc_op_register_cancel (G3). */

#define S5_CAP 4096

static void cb_cancel_end_self(cc_reason reason, void *state)
{
    op_rec *r = state;
    cancel_begin(r, reason);
    int expected = 0;
    if (r->action && atomic_compare_exchange_strong(&r->ender, &expected, 2)) {
        r->end_tid = t_tid;
        if (cc_op_end(r->op) != CC_OK)
            note(r, V_END_IN_CB);
        if (atomic_load(&r->free_calls) != 0)
            note(r, V_FREE_EARLY);
        /* Stay a little: a free-state run too early would overlap. */
        spin_ns(r->spin_ns);
    }
    cancel_finish(r);
}

static void *s5_worker(void *arg)
{
    worker *w = arg;
    t_tid = w->tid = new_tid();
    wait_flag(&w->ctx->go);
    while (!atomic_load(&w->ctx->stop)) {
        op_rec *r = worker_begin(w, w->chan);
        if (!r)
            break;
        r->action = rng_pct(&w->rng, 80);
        r->spin_ns = rng_pct(&w->rng, 50) ? rng_below(&w->rng, 20000) : 0;
        op_register(r, cb_cancel_end_self);
        if (atomic_load(&r->ender) == 2 && atomic_load(&r->cancel_tid) == t_tid) {
            /* Canceled before registering: cancel, its cc_op_end and the
             * free-state all ran inside register, on this thread. */
            EXPECT(atomic_load(&r->free_calls) == 1,
                   "op ended in its cancel inside register: free-state ran %d times "
                   "by the time register returned",
                   atomic_load(&r->free_calls));
            w->g3_sync++;
        }
        if (atomic_load(&r->ender) == 0) {
            op_busy(r, (unsigned)rng_below(&w->rng, 30));
            op_pause(w);
        }
        hold_if_last(w, r);
        int expected = 0;
        if (atomic_compare_exchange_strong(&r->ender, &expected, 1)) {
            op_end(r, &w->rng);
        } else {
            /* The callback ends it; the handle is canceled or stale now. */
            int c = cc_op_is_canceled(r->op);
            EXPECT(c == 1 || c == CC_E_INVALID_OPERATION,
                   "cc_op_is_canceled == %d on an op ending in its cancel", c);
            w->cb_ended++;
        }
        op_done(w);
    }
    return worker_exit(w);
}

static void test_s5_end_inside_cancel(void)
{
    scenario_start("s5_end_inside_cancel", 5);
    int planned = rounds_for(2000);
    summary sum = {0};
    worker w[MAX_W];
    alloc_workers(w, MAX_W, S5_CAP);
    cc_host *h = host_fresh();
    for (int round = 0; round < planned && !over_budget(); round++) {
        atomic_store(&g_round, round);
        rng_t rr = rng_make(round, 0);
        round_ctx ctx;
        int nch = 1 + (int)rng_below(&rr, 2), nw = nch == 1 ? 2 : 3;
        cc_stats base = stats_of(h);
        ctx_init(&ctx, h, nch);
        add_fault_abort_trigs(&ctx, &rr, 70, 50, S_TRIGGER_OPS);
        for (int i = 0; i < nw; i++)
            worker_init(&w[i], &ctx, i, i % nch, round);
        run_round(&ctx, w, nw, s5_worker);
        check_states_after_trigs(&ctx);
        close_quiet(&ctx);
        sum.close_ok++;
        ctx_close_channels(&ctx);

        tally t = {0};
        for (int i = 0; i < nw; i++) {
            sum.g3_sync += w[i].g3_sync;
            sum.cb_ended += w[i].cb_ended;
            for (int k = 0; k < w[i].nrec; k++) {
                op_rec *r = &w[i].recs[k];
                if (atomic_load(&r->ender) == 2) {
                    /* Ended by its cancel: its end began inside the callback. */
                    r->end_seq = r->end_call = atomic_load(&r->cancel_enter);
                    r->reason_at_end = atomic_load(&r->reason_seen);
                }
                verify_rec(r, &t, 1);
                check_triggers(&ctx, r);
                check_close_waited(&ctx, r);
            }
        }
        check_stats(h, &base, &t);
        add_summary(&sum, &t);
        sum.rounds++;
        h = host_next(h, round);
    }
    cc_host_free(h);
    free_workers(w, MAX_W);
    scenario_end(&sum, planned);
}

/* ========================================= 6. re-entrant callbacks
 *
 * Four channels shared by three workers.  Each cancel callback re-enters the
 * library (G11): faults another channel, begins / registers / ends an op on
 * another channel, aborts the host again, tries to close its own host
 * (refused), or just reads its op.  One or two trigger threads start the
 * chain.  No deadlock (watchdog), and the counts stay exact, nested ops
 * included. */

#define S6_CH 4
#define S6_CAP 4096
#define S6_NESTED 8192

enum { ACT_READ, ACT_FAULT, ACT_NESTED, ACT_ABORT, ACT_CLOSE };

static void nested_op(round_ctx *ctx, int c)
{
    int i = atomic_fetch_add(&ctx->nested_used, 1);
    if (i >= ctx->nested_cap)
        return;
    op_rec *n = &ctx->nested[i];
    if (!op_begin(n, ctx, c))
        return;
    /* G3 may run this op's cancel right here, inside a cancel. */
    op_register(n, cb_cancel);
    op_busy(n, 3);
    op_end(n, NULL);
}

static void cb_reentrant(cc_reason reason, void *state)
{
    op_rec *r = state;
    round_ctx *ctx = r->ctx;
    cancel_begin(r, reason);
    switch (r->action) {
    case ACT_FAULT:
        atomic_store(&ctx->fault_started[r->arg], 1);
        if (cc_channel_fault(ctx->ch[r->arg]) != CC_OK)
            note(r, V_REENTRY);
        break;
    case ACT_NESTED:
        nested_op(ctx, r->arg);
        break;
    case ACT_ABORT:
        atomic_store(&ctx->abort_started, 1);
        if (cc_host_abort(ctx->host) != CC_OK)
            note(r, V_REENTRY);
        break;
    case ACT_CLOSE:
        if (cc_host_close(ctx->host, 0) != CC_E_INVALID_OPERATION)
            note(r, V_CLOSE_IN_CB);
        break;
    default:
        if (cc_op_is_canceled(r->op) != 1 || cc_op_reason(r->op) != reason)
            note(r, V_REENTRY);
        break;
    }
    cancel_finish(r);
}

static void *s6_worker(void *arg)
{
    worker *w = arg;
    round_ctx *ctx = w->ctx;
    t_tid = w->tid = new_tid();
    wait_flag(&ctx->go);
    while (!atomic_load(&ctx->stop) && !atomic_load(&ctx->abort_started)) {
        int c = (int)rng_below(&w->rng, (uint64_t)ctx->nch), open = 0;
        for (int k = 0; k < ctx->nch; k++)
            open += !atomic_load(&ctx->fault_started[k]);
        if (!open)
            break;
        op_rec *r = worker_begin(w, c);
        if (!r) {
            if (w->nrec >= w->cap)
                break;
            continue;
        }
        unsigned p = (unsigned)rng_below(&w->rng, 100);
        r->action = p < 30 ? ACT_READ : p < 55 ? ACT_FAULT : p < 82 ? ACT_NESTED
                    : p < 92 ? ACT_ABORT : ACT_CLOSE;
        r->arg = (c + 1 + (int)rng_below(&w->rng, (uint64_t)ctx->nch - 1)) % ctx->nch;
        if (rng_pct(&w->rng, 90))
            op_register(r, cb_reentrant);
        op_busy(r, (unsigned)rng_below(&w->rng, 20));
        op_pause(w);
        hold_if_last(w, r);
        op_end(r, &w->rng);
        op_done(w);
    }
    return worker_exit(w);
}

/* Canceled ops need a started cause in the round (G6, G9). */
static void check_cause_s6(const round_ctx *ctx, const op_rec *r)
{
    int why = atomic_load(&r->cancel_calls) ? atomic_load(&r->reason_seen) : r->reason_at_end;
    if (why == CC_CHANNEL_FAULTED)
        EXPECT(atomic_load(&ctx->fault_started[r->chan]),
               "op on channel %d canceled as CHANNEL_FAULTED, channel never faulted", r->chan);
    else if (why == CC_HOST_ABORT)
        EXPECT(atomic_load(&ctx->abort_started), "op canceled as HOST_ABORT, never aborted");
}

static void test_s6_reentrant_callbacks(void)
{
    scenario_start("s6_reentrant_callbacks", 6);
    int planned = rounds_for(2000);
    summary sum = {0};
    worker w[MAX_W];
    alloc_workers(w, 3, S6_CAP);
    op_rec *nested = calloc(S6_NESTED, sizeof(op_rec));
    if (!nested)
        exit(EXIT_FAILURE);
    cc_host *h = host_fresh();
    for (int round = 0; round < planned && !over_budget(); round++) {
        atomic_store(&g_round, round);
        rng_t rr = rng_make(round, 0);
        round_ctx ctx;
        cc_stats base = stats_of(h);
        ctx_init(&ctx, h, S6_CH);
        ctx.nested = nested;
        ctx.nested_cap = S6_NESTED;
        int ntrig = 1 + (int)rng_below(&rr, 2);
        for (int i = 0; i < ntrig; i++) {
            if (rng_pct(&rr, 65))
                add_trig(&ctx, TRIG_FAULT, (int)rng_below(&rr, S6_CH),
                         (int)rng_below(&rr, S_TRIGGER_OPS), rng_delay(&rr, 20000));
            else
                add_trig(&ctx, TRIG_ABORT, 0, (int)rng_below(&rr, S_TRIGGER_OPS),
                         rng_delay(&rr, 20000));
        }
        for (int i = 0; i < 3; i++)
            worker_init(&w[i], &ctx, i, 0, round);
        run_round(&ctx, w, 3, s6_worker);
        close_quiet(&ctx);
        sum.close_ok++;
        ctx_close_channels(&ctx);

        tally t = {0};
        for (int i = 0; i < 3; i++)
            for (int k = 0; k < w[i].nrec; k++) {
                verify_rec(&w[i].recs[k], &t, 1);
                check_cause_s6(&ctx, &w[i].recs[k]);
            }
        int nn = atomic_load(&ctx.nested_used);
        if (nn > S6_NESTED)
            nn = S6_NESTED;
        for (int k = 0; k < nn; k++)
            if (nested[k].op) {
                verify_rec(&nested[k], &t, 1);
                check_cause_s6(&ctx, &nested[k]);
                sum.nested++;
            }
        check_stats(h, &base, &t);
        add_summary(&sum, &t);
        sum.rounds++;
        h = host_next(h, round);
    }
    cc_host_free(h);
    free(nested);
    free_workers(w, 3);
    scenario_end(&sum, planned);
}

/* ========================================= 7. register vs cancellation
 *
 * Workers begin batches of ops, then register them one by one with small
 * gaps while the host is aborted (and maybe one channel faulted) at a
 * random moment, so many ops are canceled between begin and register.  An
 * op seen canceled just before registering must have its cancel run inside
 * register, on the registering thread, with the reason it already had (G3). */

#define S7_CAP 4096
#define S7_BATCH 6

static void *s7_worker(void *arg)
{
    worker *w = arg;
    t_tid = w->tid = new_tid();
    wait_flag(&w->ctx->go);
    int refused = 0;
    while (!refused && !atomic_load(&w->ctx->stop)) {
        op_rec *batch[S7_BATCH];
        int n = 0, want = 1 + (int)rng_below(&w->rng, S7_BATCH);
        while (n < want && (batch[n] = worker_begin(w, w->chan)) != NULL)
            n++;
        refused = n < want;
        for (int i = 0; i < n; i++) {
            op_rec *r = batch[i];
            spin_ns(rng_below(&w->rng, 15000));
            int pre = cc_op_is_canceled(r->op);
            cc_reason pre_reason = cc_op_reason(r->op);
            op_register(r, cb_cancel);
            if (pre == 1) {
                EXPECT(atomic_load(&r->cancel_calls) == 1 && atomic_load(&r->cancel_tid) == t_tid
                           && atomic_load(&r->cancel_enter) > r->reg_start
                           && atomic_load(&r->cancel_enter) < r->reg_end,
                       "op canceled before register: cancel ran %d times, on thread %d "
                       "(registering thread %d), not inside register (G3)",
                       atomic_load(&r->cancel_calls), atomic_load(&r->cancel_tid), t_tid);
                EXPECT(atomic_load(&r->reason_seen) == (int)pre_reason,
                       "cancel inside register got reason %d, the op had reason %d (G3/G6)",
                       atomic_load(&r->reason_seen), pre_reason);
                w->g3_sync++;
            } else {
                EXPECT(pre == 0, "cc_op_is_canceled on a live op == %d", pre);
            }
        }
        for (int i = 0; i < n; i++) {
            op_end(batch[i], &w->rng);
            op_done(w);
        }
    }
    return worker_exit(w);
}

static void test_s7_register_vs_cancel(void)
{
    scenario_start("s7_register_vs_cancel", 7);
    int planned = rounds_for(2500);
    summary sum = {0};
    worker w[MAX_W];
    alloc_workers(w, 3, S7_CAP);
    cc_host *h = host_fresh();
    for (int round = 0; round < planned && !over_budget(); round++) {
        atomic_store(&g_round, round);
        rng_t rr = rng_make(round, 0);
        round_ctx ctx;
        cc_stats base = stats_of(h);
        ctx_init(&ctx, h, 3);
        if (rng_pct(&rr, 50))
            add_trig(&ctx, TRIG_FAULT, (int)rng_below(&rr, 3), (int)rng_below(&rr, 150),
                     rng_delay(&rr, 20000));
        add_trig(&ctx, TRIG_ABORT, 0, (int)rng_below(&rr, 150), rng_delay(&rr, 20000));
        for (int i = 0; i < 3; i++)
            worker_init(&w[i], &ctx, i, i, round);
        run_round(&ctx, w, 3, s7_worker);
        close_quiet(&ctx);
        sum.close_ok++;
        ctx_close_channels(&ctx);

        tally t = {0};
        for (int i = 0; i < 3; i++) {
            sum.g3_sync += w[i].g3_sync;
            for (int k = 0; k < w[i].nrec; k++) {
                verify_rec(&w[i].recs[k], &t, 1);
                check_triggers(&ctx, &w[i].recs[k]);
            }
        }
        check_stats(h, &base, &t);
        add_summary(&sum, &t);
        sum.rounds++;
        h = host_next(h, round);
    }
    cc_host_free(h);
    free_workers(w, 3);
    scenario_end(&sum, planned);
}

/* ========================================== 8. close escalating to abort
 *
 * Workers hold their ops until canceled or for a random time (some far
 * longer than the close timeout) while the main thread closes with a
 * timeout of 0-5 ms.  Close returns CC_OK (then no cancel ran at all: close
 * fires none by itself) or CC_E_TIMEOUT (then it aborted: every cancel says
 * HOST_ABORT and ran on the closing thread or inside a register), the host
 * is CLOSED and nothing is left in flight when it returns (G8). */

#define S8_CAP 4096

static void *s8_worker(void *arg)
{
    worker *w = arg;
    t_tid = w->tid = new_tid();
    wait_flag(&w->ctx->go);
    while (!atomic_load(&w->ctx->stop)) {
        op_rec *r = worker_begin(w, w->chan);
        if (!r)
            break;
        if (rng_pct(&w->rng, 90))
            op_register(r, cb_cancel);
        uint64_t hold = rng_pct(&w->rng, 50) ? rng_below(&w->rng, 300000)
                                             : rng_below(&w->rng, 8000000);
        uint64_t until = now_ns() + hold;
        while (now_ns() < until) {
            int c = cc_op_is_canceled(r->op);
            if (c) {
                EXPECT(c == 1 && cc_op_reason(r->op) == CC_HOST_ABORT,
                       "op held during close: is_canceled %d, reason %d", c, cc_op_reason(r->op));
                break;
            }
            sleep_ns(20000);
        }
        op_end(r, &w->rng);
    }
    return NULL;
}

static void test_s8_close_escalation(void)
{
    scenario_start("s8_close_escalation", 8);
    int planned = rounds_for(400);
    summary sum = {0};
    worker w[MAX_W];
    alloc_workers(w, 3, S8_CAP);
    cc_host *h = host_fresh();
    for (int round = 0; round < planned && !over_budget(); round++) {
        atomic_store(&g_round, round);
        rng_t rr = rng_make(round, 0);
        round_ctx ctx;
        int nw = 2 + (int)rng_below(&rr, 2);
        cc_stats base = stats_of(h);
        ctx_init(&ctx, h, nw);
        int64_t timeout_ms = (int64_t)rng_below(&rr, 6);
        int via_default = rng_pct(&rr, 50);
        if (via_default)
            EXPECT_ST(cc_host_set_close_timeout(h, timeout_ms), CC_OK);
        uint64_t run_ns = rng_below(&rr, 2000000);

        for (int i = 0; i < nw; i++) {
            worker_init(&w[i], &ctx, i, i, round);
            start_thread(&w[i].thread, s8_worker, &w[i]);
        }
        atomic_store(&ctx.go, 1);
        sleep_ns(run_ns);
        atomic_store(&ctx.close_started, 1);
        uint64_t close_start_ns = now_ns();
        ctx.close_start = tick();
        cc_status st = cc_host_close(h, via_default ? -1 : timeout_ms);
        ctx.close_end = tick();
        uint64_t close_ns = now_ns() - close_start_ns;
        cc_stats mid = stats_of(h);
        EXPECT_EQ(mid.ops_in_flight, 0, "ops in flight when cc_host_close returned (G8)");
        EXPECT(cc_host_state(h) == CC_HOST_STATE_CLOSED, "host in state %d after close, wanted CLOSED",
               cc_host_state(h));
        EXPECT(st == CC_OK || st == CC_E_TIMEOUT, "cc_host_close(%lld ms) returned %s",
               (long long)timeout_ms, cc_status_str(st));
        atomic_store(&ctx.stop, 1);
        for (int i = 0; i < nw; i++)
            pthread_join(w[i].thread, NULL);
        ctx_close_channels(&ctx);
        if (via_default)
            EXPECT_ST(cc_host_set_close_timeout(h, 60000), CC_OK);

        tally t = {0};
        uint64_t last_end_ns = 0;
        int closer = t_tid;
        for (int i = 0; i < nw; i++)
            for (int k = 0; k < w[i].nrec; k++) {
                op_rec *r = &w[i].recs[k];
                verify_rec(r, &t, 1);
                check_close_waited(&ctx, r);
                if (r->end_ret_ns > last_end_ns)
                    last_end_ns = r->end_ret_ns;
                int cc = atomic_load(&r->cancel_calls);
                if (st == CC_OK) {
                    EXPECT(cc == 0 && r->reason_at_end == CC_NOT_CANCELED,
                           "close returned CC_OK but an op was canceled (reason %d, cancel "
                           "ran %d times): close fires no cancel by itself (G8)",
                           r->reason_at_end, cc);
                } else if (cc) {
                    uint64_t ce = atomic_load(&r->cancel_enter);
                    int ctid = atomic_load(&r->cancel_tid);
                    EXPECT(atomic_load(&r->reason_seen) == CC_HOST_ABORT,
                           "close escalated: cancel reason %d, wanted HOST_ABORT (G8)",
                           atomic_load(&r->reason_seen));
                    EXPECT((ctid == closer && ce > ctx.close_start && ce < ctx.close_end)
                               || (ctid == r->reg_tid && ce > r->reg_start && ce < r->reg_end),
                           "close escalated: a cancel ran on thread %d, neither the closing "
                           "thread during close nor inside register", ctid);
                }
                if (st == CC_E_TIMEOUT && r->reason_at_end != CC_NOT_CANCELED)
                    EXPECT(r->reason_at_end == CC_HOST_ABORT, "close escalated: reason %d",
                           r->reason_at_end);
                sum.g3_sync += cc && atomic_load(&r->cancel_tid) == r->reg_tid;
            }
        if (st == CC_E_TIMEOUT) {
            /* Its deadline passed with an op in flight: the close lasted the
             * timeout, and that op ended after it (0.5 ms for clock skew). */
            uint64_t timeout_ns = (uint64_t)timeout_ms * 1000000u;
            EXPECT(close_ns + 500000 >= timeout_ns,
                   "close timed out after %.3f ms, its timeout was %lld ms",
                   (double)close_ns / 1e6, (long long)timeout_ms);
            EXPECT(last_end_ns + 500000 >= close_start_ns + timeout_ns,
                   "close timed out (%lld ms) though every op had ended %.3f ms into it",
                   (long long)timeout_ms, ((double)last_end_ns - (double)close_start_ns) / 1e6);
        }
        check_stats(h, &base, &t);
        add_summary(&sum, &t);
        sum.close_ok += st == CC_OK;
        sum.close_timeout += st == CC_E_TIMEOUT;
        sum.rounds++;
        h = host_next(h, round);
    }
    cc_host_free(h);
    free_workers(w, 3);
    scenario_end(&sum, planned);
}

/* ================================================================ main */

static int selected(const char *name) { return !g_only || strstr(name, g_only) != NULL; }

#define RUN_IF(fn)                                                          \
    do {                                                                    \
        if (selected(#fn))                                                  \
            RUN(fn);                                                        \
    } while (0)

int main(void)
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

    RUN_IF(test_s1_workers_vs_abort);
    RUN_IF(test_s2_faults_vs_workers);
    RUN_IF(test_s3_register_race);
    RUN_IF(test_s4_end_vs_running_cancel);
    RUN_IF(test_s4b_end_vs_queued_cancel);
    RUN_IF(test_s5_end_inside_cancel);
    RUN_IF(test_s6_reentrant_callbacks);
    RUN_IF(test_s7_register_vs_cancel);
    RUN_IF(test_s8_close_escalation);

    EXPECT(atomic_load(&g_poison) == 0, "a callback registered on a stale handle ran (G10)");
    cc_test_failures += atomic_exchange(&g_fails, 0);
    return TEST_EXIT();
}
