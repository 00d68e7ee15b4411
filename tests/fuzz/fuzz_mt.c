/*
 * fuzz_mt.c - the concurrent mode of the API fuzzer: two threads.
 *
 * The first half of the input is the main thread's script (begin, register,
 * end, read, fault, begin_with_cancel), the second half a helper thread's
 * (abort, fault, end, register, read), run at the same time on one host.
 * Callbacks may end their own operation and sleep a little, to widen the
 * races.  An optional last phase closes the host while the helper ends the
 * remaining operations.
 *
 * No interleaving is predicted; only what the header promises whatever the
 * interleaving is checked:
 *   G1  a cancel callback runs at most once (per registration and per op);
 *   G2  at most one registration of an operation succeeds; a failed one's
 *       callbacks never run;
 *   G3  an operation seen canceled before registering has its callback run
 *       inside the register call;
 *   G4  free-state runs exactly once after a successful registration with
 *       one, never otherwise; exactly one cc_op_end of each operation
 *       succeeds;
 *   G5  cancel and free-state never overlap; no cancel after free-state;
 *   G6  inside its cancel callback the operation reads canceled, with the
 *       callback's reason;
 *   G7  an operation registered before an abort started and ended after it
 *       returned had its callback run;
 *   G5  no cancel callback starts after a cc_op_end of its op returned;
 *   G8  once cc_host_close returned, nothing is in flight and no callback runs;
 *   G10 a handle whose end returned, or whose end was called from inside
 *       its own cancel callback, reads stale on any other thread;
 *   stats agree with the callbacks counted.
 * Known-bug switches (as in fuzz_api.c, CC_FUZZ_STRICT): stale_per_thread
 * (checked only when strict), g3_vs_end (G3 checked weakly unless strict)
 * and visit_race (the helper calls cc_op_visit_register_faults only when
 * strict: the core crashes).
 */
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cancelcore.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define NCH 3
#define MAXOPS 48
#define MAXREGS 128

static bool g_tolerate_stale_per_thread = true;
static bool g_tolerate_visit_race = true;
static bool g_tolerate_g3_vs_end = true;
static bool g_trace;

typedef struct {
    int op;
    bool has_free, end_self;
    unsigned sleep_us;
    atomic_int cancel_runs, free_runs, in_cancel;
    atomic_int ok;              /* register returned CC_OK */
    atomic_int failed;          /* register returned an error */
    atomic_int before_abort;    /* armed before any abort started */
    atomic_int reason;
    atomic_int ready;           /* fields above set: published by the index */
} mreg;

typedef struct {
    _Atomic(cc_op *) h;
    atomic_int ok_ends, ok_regs, ended_in_cb;
    atomic_int end_returned;    /* a cc_op_end from outside its callbacks returned CC_OK */
} mop;

static cc_host *g_host;
static cc_channel *g_ch[NCH];
static mop g_ops[MAXOPS];
static atomic_int g_nops;
static mreg g_regs[MAXREGS];
static atomic_int g_nregs;
static atomic_int g_abort_started, g_abort_done, g_fault_started;
static atomic_int g_callbacks_running;

static void fail(const char *fmt, ...)
{
    fprintf(stderr, "\ncancelcore fuzz (threads): CONTRACT VIOLATION: ");
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nknown-bug switches: stale_per_thread=%s visit_race=%s g3_vs_end=%s\n",
            g_tolerate_stale_per_thread ? "tolerated" : "checked",
            g_tolerate_visit_race ? "tolerated" : "checked",
            g_tolerate_g3_vs_end ? "tolerated" : "checked");
    abort();
}

#define EXPECT(cond, ...)      \
    do {                       \
        if (!(cond))           \
            fail(__VA_ARGS__); \
    } while (0)

static void nap(unsigned us)
{
    if (us == 0) {
        sched_yield();
        return;
    }
    struct timespec ts = {0, (long)us * 1000};
    nanosleep(&ts, NULL);
}

/* ------------------------------------------------------------ callbacks */

static void cancel_cb(cc_reason reason, void *state)
{
    mreg *r = state;
    mop *o = &g_ops[r->op];
    EXPECT(atomic_load(&r->failed) == 0, "the cancel callback of a failed registration ran (G2)");
    EXPECT(atomic_load(&r->free_runs) == 0, "a cancel callback started after free-state (G5)");
    EXPECT(atomic_load(&o->end_returned) == 0,
           "op%d's cancel callback started after a cc_op_end of it returned (G5)", r->op);
    EXPECT(atomic_fetch_add(&r->cancel_runs, 1) == 0, "a cancel callback ran twice (G1)");
    atomic_fetch_add(&g_callbacks_running, 1);
    EXPECT(reason == CC_HOST_ABORT || reason == CC_CHANNEL_FAULTED, "bad reason %d", reason);
    atomic_store(&r->reason, reason);
    atomic_store(&r->in_cancel, 1);
    cc_op *h = atomic_load(&o->h);
    if (h) { /* (NULL in a G3 run inside cc_op_begin_with_cancel) */
        int is = cc_op_is_canceled(h);
        cc_reason rr = cc_op_reason(h);
        EXPECT(is == 1 && rr == reason, "inside its own cancel callback op%d reads "
               "is_canceled %d reason %d; the callback's reason is %d (G6/G10)", r->op, is, rr, reason);
        if (r->end_self) {
            cc_status st = cc_op_end(h);
            EXPECT(st == CC_OK || st == CC_E_INVALID_OPERATION,
                   "cc_op_end from its own cancel callback returned %s", cc_status_str(st));
            if (st == CC_OK) {
                /* In this order: a reader that sees ok_ends sees this too. */
                atomic_store(&o->ended_in_cb, 1);
                atomic_fetch_add(&o->ok_ends, 1);
            }
        }
    }
    nap(r->sleep_us);
    atomic_store(&r->in_cancel, 0);
    atomic_fetch_sub(&g_callbacks_running, 1);
}

static void free_cb(void *state)
{
    mreg *r = state;
    EXPECT(atomic_load(&r->failed) == 0, "the free-state of a failed registration ran (G2/G4)");
    EXPECT(atomic_load(&r->in_cancel) == 0, "free-state overlaps its cancel callback (G5)");
    atomic_fetch_add(&g_callbacks_running, 1);
    EXPECT(atomic_fetch_add(&r->free_runs, 1) == 0, "free-state ran twice (G4)");
    atomic_fetch_sub(&g_callbacks_running, 1);
}

/* ------------------------------------------------------------- actions */

static mreg *new_reg(int op, unsigned fl)
{
    int i = atomic_fetch_add(&g_nregs, 1);
    if (i >= MAXREGS)
        return NULL;
    mreg *r = &g_regs[i];
    r->op = op;
    r->has_free = fl & 1;
    r->end_self = (fl & 2) != 0;
    r->sleep_us = (fl & 4) ? (fl >> 3) * 20 : 0;
    atomic_store(&r->ready, 1);
    return r;
}

static int pick(unsigned b)
{
    int n = atomic_load(&g_nops);
    return n ? (int)(b % (unsigned)n) : -1;
}

static void act_register(int k, unsigned fl)
{
    if (k < 0)
        return;
    mop *o = &g_ops[k];
    cc_op *h = atomic_load(&o->h);
    mreg *r = new_reg(k, fl);
    if (!h || !r)
        return;
    int was = cc_op_is_canceled(h);
    cc_status st = cc_op_register_cancel(h, cancel_cb, r->has_free ? free_cb : NULL, r);
    if (st == CC_OK) {
        atomic_store(&r->ok, 1);
        EXPECT(atomic_fetch_add(&o->ok_regs, 1) == 0,
               "two registrations of op%d succeeded (G2)", k);
        if (was == 1 && atomic_load(&r->cancel_runs) != 1) {
            /* Known bug g3_vs_end: an end on another thread overtook the
             * registration's own G3 run.  Tolerated, the end must at least
             * have begun (the handle reads stale). */
            EXPECT(g_tolerate_g3_vs_end && cc_op_is_canceled(h) == CC_E_INVALID_OPERATION,
                   "op%d was canceled before it registered and the registration succeeded, "
                   "but its callback did not run inside the register call (G3)%s", k,
                   g_tolerate_g3_vs_end ? "" : " [known bug g3_vs_end]");
        }
        if (!atomic_load(&g_abort_started))
            atomic_store(&r->before_abort, 1);
    } else {
        EXPECT(st == CC_E_INVALID_OPERATION, "cc_op_register_cancel returned %s",
               cc_status_str(st));
        atomic_store(&r->failed, 1);
    }
}

static void act_end(int k)
{
    if (k < 0)
        return;
    mop *o = &g_ops[k];
    cc_op *h = atomic_load(&o->h);
    if (!h)
        return;
    /* G7 is checked only where that abort is the one canceller there was:
     * no channel fault, no other abort, no close (whose timeout aborts): a
     * callback another canceller queued may be overtaken by this end (G5). */
    bool after_abort = atomic_load(&g_abort_done) && atomic_load(&g_abort_started) == 1
                       && !atomic_load(&g_fault_started);
    cc_status st = cc_op_end(h);
    EXPECT(st == CC_OK || st == CC_E_INVALID_OPERATION, "cc_op_end returned %s", cc_status_str(st));
    if (st != CC_OK)
        return;
    atomic_store(&o->end_returned, 1);
    atomic_fetch_add(&o->ok_ends, 1);
    if (!after_abort)
        return;
    int n = atomic_load(&g_nregs);
    for (int i = 0; i < n && i < MAXREGS; i++) {
        mreg *r = &g_regs[i];
        if (atomic_load(&r->ready) && r->op == k && atomic_load(&r->ok)
            && atomic_load(&r->before_abort))
            EXPECT(atomic_load(&r->cancel_runs) == 1, "op%d was registered before an abort "
                   "started and ended after it returned, yet its callback never ran (G7)", k);
    }
}

static void act_read(int k)
{
    if (k < 0)
        return;
    mop *o = &g_ops[k];
    cc_op *h = atomic_load(&o->h);
    if (!h)
        return;
    bool ended = atomic_load(&o->ok_ends) > 0 && !atomic_load(&o->ended_in_cb);
    bool ended_in_cb = atomic_load(&o->ended_in_cb);
    int is = cc_op_is_canceled(h);
    cc_reason rr = cc_op_reason(h);
    EXPECT(is == 0 || is == 1 || is == CC_E_INVALID_OPERATION, "cc_op_is_canceled returned %d", is);
    EXPECT(rr >= CC_REASON_INVALID && rr <= CC_CHANNEL_FAULTED, "cc_op_reason returned %d", rr);
    if (ended)
        EXPECT(is == CC_E_INVALID_OPERATION, "op%d's end returned, yet it reads %d (G10)", k, is);
    if (ended_in_cb && !g_tolerate_stale_per_thread)
        EXPECT(is == CC_E_INVALID_OPERATION,
               "op%d ended itself from inside its cancel callback (running on another thread), "
               "yet this thread reads is_canceled %d, not stale (G10) [known bug stale_per_thread]",
               k, is);
}

static void act_begin(unsigned b, bool with_cancel, unsigned fl)
{
    int k = atomic_load(&g_nops);
    if (k >= MAXOPS)
        return;
    cc_channel *ch = g_ch[b % NCH];
    cc_op *h = NULL;
    cc_status st;
    if (with_cancel) {
        mreg *r = new_reg(k, fl);
        if (!r)
            return;
        h = cc_op_begin_with_cancel(ch, cancel_cb, r->has_free ? free_cb : NULL, r, &st);
        if (st == CC_OK) {
            atomic_store(&r->ok, 1);
            atomic_store(&g_ops[k].ok_regs, 1);
            if (!atomic_load(&g_abort_started))
                atomic_store(&r->before_abort, 1);
        } else {
            atomic_store(&r->failed, 1);
        }
    } else {
        st = cc_op_begin(ch, &h);
    }
    EXPECT(st == CC_OK || st == CC_E_OBJECT_FAULTED || st == CC_E_INVALID_OPERATION,
           "beginning an operation returned %s", cc_status_str(st));
    EXPECT((st == CC_OK) == (h != NULL), "begin: status and handle disagree");
    if (st != CC_OK)
        return;
    atomic_store(&g_ops[k].h, h);
    atomic_store(&g_nops, k + 1); /* only the main thread begins */
}

static void act_fault(unsigned b)
{
    atomic_store(&g_fault_started, 1);
    cc_status st = cc_channel_fault(g_ch[b % NCH]);
    EXPECT(st == CC_OK, "cc_channel_fault returned %s", cc_status_str(st));
}

static void act_abort(void)
{
    atomic_fetch_add(&g_abort_started, 1); /* counts aborts begun */
    EXPECT(cc_host_abort(g_host) == CC_OK, "cc_host_abort failed");
    atomic_store(&g_abort_done, 1);
}

/* -------------------------------------------------------------- scripts */

typedef struct {
    const uint8_t *p;
    size_t n, i;
} script;

static unsigned next(script *s) { return s->i < s->n ? s->p[s->i++] : 0; }

static void *helper(void *arg)
{
    script *s = arg;
    while (s->i < s->n) {
        unsigned op = next(s) % 6, b = next(s);
        switch (op) {
        case 0: act_abort(); break;
        case 1: act_fault(b); break;
        case 2: act_end(pick(b)); break;
        case 3: act_read(pick(b)); break;
        case 4: act_register(pick(b), next(s)); break;
        case 5:
            if (g_tolerate_visit_race) {
                nap(b & 0x1f);
            } else {
                int k = pick(b);
                cc_op *h = k < 0 ? NULL : atomic_load(&g_ops[k].h);
                if (h) {
                    cc_status st = cc_op_visit_register_faults(h);
                    EXPECT(st == CC_OK || st == CC_E_INVALID_OPERATION,
                           "cc_op_visit_register_faults returned %s", cc_status_str(st));
                }
            }
            break;
        }
    }
    return NULL;
}

static void main_script(script *s)
{
    while (s->i < s->n) {
        unsigned op = next(s) % 8, b = next(s);
        switch (op) {
        case 0: act_begin(b, false, 0); break;
        case 1: act_register(pick(b), next(s)); break;
        case 2: act_end(pick(b)); break;
        case 3: act_read(pick(b)); break;
        case 4: act_fault(b); break;
        case 5: nap(b & 0x1f); break;
        case 6: act_begin(b, true, next(s)); break;
        case 7: act_begin(b, false, 0); act_register(atomic_load(&g_nops) - 1, b); break;
        }
    }
}

static bool g_ender_aborts;

static void *ender(void *arg)
{
    nap((unsigned)(uintptr_t)arg);
    if (g_ender_aborts)
        act_abort(); /* during the close, if timing allows: CC_E_OPERATION_ABORTED */
    int n = atomic_load(&g_nops);
    for (int k = 0; k < n; k++)
        act_end(k);
    return NULL;
}

static void reset(void)
{
    memset(g_ops, 0, sizeof g_ops);
    memset(g_regs, 0, sizeof g_regs);
    atomic_store(&g_nops, 0);
    atomic_store(&g_nregs, 0);
    atomic_store(&g_abort_started, 0);
    atomic_store(&g_abort_done, 0);
    atomic_store(&g_fault_started, 0);
    atomic_store(&g_callbacks_running, 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool inited;
    if (!inited) {
        inited = true;
        const char *s = getenv("CC_FUZZ_STRICT");
        if (s && (strstr(s, "all") || strstr(s, "stale_per_thread")))
            g_tolerate_stale_per_thread = false;
        if (s && (strstr(s, "all") || strstr(s, "visit_race")))
            g_tolerate_visit_race = false;
        if (s && (strstr(s, "all") || strstr(s, "g3_vs_end")))
            g_tolerate_g3_vs_end = false;
        const char *t = getenv("CC_FUZZ_TRACE");
        g_trace = t && *t && strcmp(t, "0") != 0;
    }
    if (size < 2)
        return 0;
    reset();
    unsigned flags = data[0];
    data++;
    size--;
    EXPECT(cc_host_create(&g_host) == CC_OK && cc_host_open(g_host) == CC_OK, "host set-up");
    for (int i = 0; i < NCH; i++)
        EXPECT(cc_channel_open(g_host, &g_ch[i]) == CC_OK, "channel set-up");

    script ms = {data, size / 2, 0}, hs = {data + size / 2, size - size / 2, 0};
    pthread_t t;
    EXPECT(pthread_create(&t, NULL, helper, &hs) == 0, "pthread_create");
    main_script(&ms);
    pthread_join(t, NULL);

    int n = atomic_load(&g_nops);
    if (flags & 1) {
        /* Close while another thread ends what is left (G8). */
        static const int64_t timeouts[] = {0, 1, 5, 1000};
        g_ender_aborts = (flags & 0x80) != 0;
        EXPECT(pthread_create(&t, NULL, ender, (void *)(uintptr_t)(((flags >> 3) & 15) * 10)) == 0,
               "pthread_create");
        atomic_store(&g_fault_started, 1); /* its timeout may abort: G7 no longer checked */
        cc_status st = cc_host_close(g_host, timeouts[(flags >> 1) & 3]);
        EXPECT(st == CC_OK || st == CC_E_TIMEOUT
                   || (st == CC_E_OPERATION_ABORTED && g_ender_aborts),
               "cc_host_close returned %s (another thread %s)", cc_status_str(st),
               g_ender_aborts ? "aborted the host" : "only ended operations");
        EXPECT(cc_host_state(g_host) == CC_HOST_STATE_CLOSED, "closed host not CLOSED");
        /* Close waited for every operation to end, callbacks included. */
        EXPECT(atomic_load(&g_callbacks_running) == 0,
               "a callback is still running after cc_host_close returned (G8)");
        cc_stats cs;
        EXPECT(cc_host_get_stats(g_host, &cs) == CC_OK && cs.ops_in_flight == 0,
               "operations in flight after cc_host_close returned (G8)");
        if (g_trace)
            fprintf(stderr, "cc_host_close -> %s\n", cc_status_str(st));
        pthread_join(t, NULL);
    } else {
        for (int k = 0; k < n; k++)
            act_end(k);
    }

    uint64_t cancels = 0, frees = 0;
    for (int k = 0; k < n; k++) {
        EXPECT(atomic_load(&g_ops[k].ok_ends) == 1, "op%d: %d calls of cc_op_end succeeded, "
               "exactly one should (G4/G10)", k, atomic_load(&g_ops[k].ok_ends));
        EXPECT(atomic_load(&g_ops[k].ok_regs) <= 1, "op%d: two registrations succeeded (G2)", k);
    }
    int nr = atomic_load(&g_nregs);
    for (int i = 0; i < nr && i < MAXREGS; i++) {
        mreg *r = &g_regs[i];
        int c = atomic_load(&r->cancel_runs), f = atomic_load(&r->free_runs);
        if (atomic_load(&r->ok)) {
            EXPECT(c <= 1, "G1");
            EXPECT(f == (r->has_free ? 1 : 0), "op%d ended; its free-state ran %d times (G4)", r->op, f);
        } else {
            EXPECT(c == 0 && f == 0, "a registration that failed ran callbacks (G2/G4)");
        }
        cancels += (uint64_t)c;
        frees += (uint64_t)f;
    }
    cc_stats st;
    EXPECT(cc_host_get_stats(g_host, &st) == CC_OK, "stats");
    EXPECT(st.ops_begun == (uint64_t)n && st.ops_ended == (uint64_t)n && st.ops_in_flight == 0,
           "stats: begun %llu ended %llu in flight %llu, %d operations", (unsigned long long)st.ops_begun,
           (unsigned long long)st.ops_ended, (unsigned long long)st.ops_in_flight, n);
    EXPECT(st.cancels_host_abort + st.cancels_channel_faulted == cancels,
           "stats count %llu cancel callbacks, %llu ran", (unsigned long long)(st.cancels_host_abort
           + st.cancels_channel_faulted), (unsigned long long)cancels);
    EXPECT(st.free_states_run == frees, "stats count %llu free-states, %llu ran",
           (unsigned long long)st.free_states_run, (unsigned long long)frees);
    EXPECT(st.ops_canceled >= st.cancels_host_abort + st.cancels_channel_faulted,
           "stats: fewer operations canceled than cancel callbacks run");
    if (g_trace)
        fprintf(stderr, "%d operations, %d registrations, %llu cancels, %llu free-states\n", n, nr,
                (unsigned long long)cancels, (unsigned long long)frees);
    cc_host_free(g_host);
    return 0;
}
