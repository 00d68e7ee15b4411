/* stress_harness.h - the harness of the stress suite (test_stress.c).
 *
 * test_stress.c is a table of race scenarios; everything they share lives
 * here: the run of a scenario (rounds, time cap, watchdog, summary line),
 * the per-operation records (op_rec) that callbacks fill with atomic
 * counters, flags and sequence numbers, the trigger threads (host abort,
 * channel fault) timed by the workers' progress, the steps of an operation
 * (begin, register, busy, end) and the checks of the records against the
 * guarantees of DESIGN.md (G1-G11) and against the host's own statistics.
 *
 * A new scenario is its workers and its checks only: a function that runs
 * one round (stress_round_fn) and a row in the table.  The harness gives it
 * an OPEN host, the round's random stream and the workers, and after the
 * round checks the host's statistics against the tally the scenario filled
 * with verify_rec(), then resets (or replaces) the host if the scenario
 * closed it.
 *
 * Ordering is judged with one global sequence counter (tick()): a seq_cst
 * fetch-add taken before and after each interesting call, so "A's tick is
 * below B's" means A happened before B.  A check only ever concludes from
 * ticks that bracket a call from the outside, never from guesses about
 * where inside a call the library acts.
 *
 * Environment (read by stress_main):
 *   CC_STRESS_SCALE  float, default 1.0: scales every scenario's rounds.
 *   CC_STRESS_SEED   the seed of every random choice (printed at start), to
 *                    repeat a failing run's choices.  Thread timing cannot
 *                    be repeated, so rerun a few times.
 *   CC_STRESS_ONLY   run only the scenarios whose name contains this text.
 *
 * The small hot helpers (tick, the PRNG, spinning) are static inline here so
 * that the scenarios' timing is what it was when all was one file.
 */
#ifndef CC_STRESS_HARNESS_H
#define CC_STRESS_HARNESS_H

#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cancelcore.h"

/* ================================================================ globals */

extern uint64_t g_seed;            /* CC_STRESS_SEED */
extern int g_scn_id;               /* the scenario running (its random stream) */
extern _Atomic uint64_t g_seq;     /* the global order, see tick() */
extern _Atomic int g_next_tid;
extern _Thread_local int t_tid;    /* small id of the current thread */

static inline uint64_t tick(void) { return atomic_fetch_add(&g_seq, 1) + 1; }
static inline int new_tid(void) { return atomic_fetch_add(&g_next_tid, 1) + 1; }

static inline uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Busy for ns, yielding: the machine may have fewer cores than threads. */
static inline void spin_ns(uint64_t ns)
{
    if (ns == 0)
        return;
    uint64_t end = now_ns() + ns;
    while (now_ns() < end)
        sched_yield();
}

static inline void sleep_ns(uint64_t ns)
{
    struct timespec ts = {(time_t)(ns / 1000000000u), (long)(ns % 1000000000u)};
    nanosleep(&ts, NULL);
}

static inline void wait_flag(_Atomic int *flag)
{
    while (!atomic_load(flag))
        sched_yield();
}

/* ================================================================ failures
 * Failures may be seen on any thread: they are counted atomically, printed
 * (the first 30 of a scenario) with the scenario, round and seed, and folded
 * into the suite's result when the scenario ends. */
void failf(const char *file, int line, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
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

/* ============================================================ the PRNG
 * splitmix64; every thread of every round gets its own stream derived from
 * (seed, scenario, round, thread), so the choices repeat with the seed. */
typedef struct rng_t {
    uint64_t s;
} rng_t;

static inline uint64_t rng_next(rng_t *r)
{
    uint64_t z = (r->s += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}

static inline rng_t rng_make(int round, int stream)
{
    rng_t r = {g_seed ^ ((uint64_t)g_scn_id << 56) ^ ((uint64_t)round << 20)
               ^ (uint64_t)stream};
    rng_next(&r);
    return r;
}

static inline uint64_t rng_below(rng_t *r, uint64_t n) { return n ? rng_next(r) % n : 0; }
static inline int rng_pct(rng_t *r, unsigned pct) { return rng_below(r, 100) < pct; }

/* A trigger delay: often near zero (racing begin/register head-on), else
 * anywhere up to max_ns. */
static inline uint64_t rng_delay(rng_t *r, uint64_t max_ns)
{
    return rng_pct(r, 25) ? rng_below(r, 5000) : rng_below(r, max_ns);
}

/* ============================================================ summaries */

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

void rec_init(op_rec *r, round_ctx *ctx, int chan);
static inline void note(op_rec *r, unsigned v) { atomic_fetch_or(&r->viol, v); }

/* The start and end of every cancel callback: a scenario's own callbacks
 * call these around what they do (cb_cancel is the plain one). */
void cancel_begin(op_rec *r, cc_reason reason);
void cancel_finish(op_rec *r);
/* The plain callbacks: cancel stays busy r->spin_ns; free-state records. */
void cb_cancel(cc_reason reason, void *state);
void cb_free(void *state);

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

void ctx_init(round_ctx *ctx, cc_host *h, int nch);
void ctx_close_channels(round_ctx *ctx);
trig *add_trig(round_ctx *ctx, int kind, int chan, int after_ops, uint64_t delay_ns);
cc_reason trig_reason(const trig *t);
void fire(trig *t);
void *trig_main(void *arg);
void start_thread(pthread_t *th, void *(*fn)(void *), void *arg);
void start_trigs(round_ctx *ctx);
void join_trigs(round_ctx *ctx);
void worker_init(worker *w, round_ctx *ctx, int idx, int chan, int round);
void run_round(round_ctx *ctx, worker *w, int nw, void *(*fn)(void *));
void add_fault_abort_trigs(round_ctx *ctx, rng_t *rr, unsigned pct_fault,
                           unsigned pct_abort, int max_ops);
void check_states_after_trigs(const round_ctx *ctx);

/* ------------------------------------------------------------ op steps */

void check_refusal(round_ctx *ctx, int c, cc_status st);
int op_begin(op_rec *r, round_ctx *ctx, int c);
op_rec *worker_begin(worker *w, int c);
cc_status op_register(op_rec *r, cc_cancel_fn cancel);
void op_busy(op_rec *r, unsigned iters);
void check_stale(cc_op *op);
void op_end(op_rec *r, rng_t *rng);
void hold_if_last(worker *w, op_rec *r);
void op_pause(worker *w);
void op_done(worker *w);
void *worker_exit(worker *w);

/* -------------------------------------------------------------- checks */

typedef struct tally {
    uint64_t ops, frees, cancels[2], canceled;
} tally;

void verify_rec(const op_rec *r, tally *t, int count_op);
int reaches(const trig *t, const op_rec *r);
void check_triggers(const round_ctx *ctx, const op_rec *r);
void check_close_waited(const round_ctx *ctx, const op_rec *r);
cc_stats stats_of(cc_host *h);
void close_quiet(round_ctx *ctx);

/* ========================================================== the scenarios */

/* One round, as the harness hands it to a scenario. */
typedef struct stress_round {
    cc_host *host;      /* OPEN, no channel, nothing in flight */
    int round;
    rng_t rng;          /* the round's stream: rng_make(round, 0) */
    worker *w;          /* the scenario's workers (nworkers of them, cap records each) */
    void *scratch;      /* the scenario's scratch: zeroed once, kept across rounds */
    summary *sum;       /* the scenario's summary: add its own counts */
    tally t;            /* fill with verify_rec(); checked against the host's stats */
    int host_closed;    /* set when the round closed the host: it is reset for the next */
} stress_round;

/* Runs one round; returns 0 to end the scenario early (the round is then
 * not counted and its tally not checked). */
typedef int (*stress_round_fn)(stress_round *r);

typedef struct stress_scenario {
    const char *name;
    int id;             /* the scenario's random stream */
    int base_rounds;    /* rounds at CC_STRESS_SCALE=1 */
    int nworkers, cap;  /* workers to allocate (<= MAX_W) and records per worker */
    size_t scratch;     /* bytes of scratch, 0 for none */
    stress_round_fn round;
} stress_scenario;

/* Runs the selected scenarios of the table; returns the exit status. */
int stress_main(const stress_scenario *table, size_t n);

#endif /* CC_STRESS_HARNESS_H */
