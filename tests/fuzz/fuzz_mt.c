/*
 * fuzz_mt.c - the concurrent mode of the API fuzzer: two threads.
 *
 * The first half of the input is the main thread's script (begin C or
 * watched operations, register, end, read, fault), the second half a helper
 * thread's (abort, fault, end, register, read), run at the same time on one
 * host.  Watched operations (cc_op_begin_watched) are told to the harness's
 * binding function, which runs its users' callbacks as a binding would.
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
 *   watched: at most one CANCELED notice per operation, RUN_USER at most
 *       once and only for a registration that succeeds, never after an end
 *       returned; a free-state is due (end's key or ENDED|FREE_DUE) exactly
 *       once per successful registration with one;
 *   stats agree with the callbacks and notices counted;
 *   cc_channel_cancel_op: refused on another channel and once the end
 *       returned; counted as any cancel.
 * The old known bugs stale_per_thread and g3_vs_end are fixed in the core:
 * both are checked strictly.
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

static bool g_trace;

typedef struct {
    int op;
    bool watched;               /* cc_op_register_watched, key = index + 2 */
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
    bool watched;               /* set before h is published */
    int ch;                     /* its channel's index, likewise */
    atomic_int notices;         /* CANCELED notices */
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
static atomic_int g_unnamed_notices; /* CANCELED before begin_watched returned */
static atomic_int g_user_notices;

static void fail(const char *fmt, ...)
{
    fprintf(stderr, "\ncancelcore fuzz (threads): CONTRACT VIOLATION: ");
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
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

static int64_t hv(cc_op *h) { return (int64_t)(intptr_t)h; }

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
    if (h) {
        int is = cc_op_is_canceled(h);
        cc_reason rr = cc_op_reason(h);
        EXPECT(is == 1 && rr == reason, "inside its own cancel callback op%d reads "
               "is_canceled %d reason %d; the callback's reason is %d (G6/G10)", r->op, is, rr, reason);
        if (r->end_self) {
            /* Deferred (CC_OK / CC_END_DEFERRED), or an end on another
             * thread began first and waits for us. */
            int64_t st = o->watched ? cc_op_end_watched(hv(h)) : (int64_t)cc_op_end(h);
            EXPECT(st == (o->watched ? CC_END_DEFERRED : CC_OK) || st == CC_E_INVALID_OPERATION,
                   "ending op%d from its own cancel callback returned %lld", r->op, (long long)st);
            if (st >= 0) {
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

static void run_free(mreg *r)
{
    EXPECT(atomic_load(&r->ready), "free-state of an unpublished registration");
    EXPECT(atomic_load(&r->failed) == 0, "the free-state of a failed registration ran (G2/G4)");
    EXPECT(atomic_load(&r->in_cancel) == 0, "free-state overlaps its cancel callback (G5)");
    EXPECT(atomic_fetch_add(&r->free_runs, 1) == 0, "free-state ran twice (G4)");
}

/* A free-state the core runs (or has the binding run): G8 covers it. */
static void free_cb(void *state)
{
    atomic_fetch_add(&g_callbacks_running, 1);
    run_free(state);
    atomic_fetch_sub(&g_callbacks_running, 1);
}

static int op_of(int64_t v)
{
    int n = atomic_load(&g_nops);
    for (int k = 0; k < n; k++)
        if (hv(atomic_load(&g_ops[k].h)) == v)
            return k;
    return -1;
}

static mreg *reg_of_key(int64_t key)
{
    int i = (int)(key - 2);
    EXPECT(key >= 2 && i < atomic_load(&g_nregs) && i < MAXREGS, "notice with key %lld, "
           "which no registration gave", (long long)key);
    mreg *r = &g_regs[i];
    EXPECT(atomic_load(&r->ready) && r->watched, "notice with key %lld of a C registration",
           (long long)key);
    return r;
}

/* The binding function: runs on any thread; checks what can be checked
 * whatever the interleaving, and runs the users' cancel callbacks. */
static void binding_fn(void *arg, const cc_notice *n, size_t count)
{
    (void)arg;
    EXPECT(count >= 1 && count <= 64, "a batch of %zu notices", count);
    for (size_t i = 0; i < count; i++) {
        int64_t what = n[i].what;
        if (what & CC_NOTICE_ENDED) {
            EXPECT(count == 1 && !(what & (CC_NOTICE_CANCELED | CC_NOTICE_RUN_USER)),
                   "an ENDED notice in a batch or with cancel bits");
            if (what & CC_NOTICE_FREE_DUE)
                free_cb(reg_of_key(n[i].user_key));
            else if (n[i].user_key)
                EXPECT(!reg_of_key(n[i].user_key)->has_free,
                       "ENDED without FREE_DUE for a registration with a free-state (G4)");
            continue;
        }
        cc_reason reason = (cc_reason)(what >> 8);
        EXPECT(reason == CC_HOST_ABORT || reason == CC_CHANNEL_FAULTED, "notice reason %d", reason);
        if (what & CC_NOTICE_CANCELED) {
            int k = op_of(n[i].op);
            if (k < 0)
                atomic_fetch_add(&g_unnamed_notices, 1);
            else
                EXPECT(atomic_fetch_add(&g_ops[k].notices, 1) == 0,
                       "op%d was told CANCELED twice", k);
        }
        if (what & CC_NOTICE_RUN_USER) {
            atomic_fetch_add(&g_user_notices, 1);
            cancel_cb(reason, reg_of_key(n[i].user_key));
        } else {
            EXPECT(n[i].user_key == 0, "a notice without RUN_USER carries key %lld",
                   (long long)n[i].user_key);
        }
    }
}

/* ------------------------------------------------------------- actions */

static mreg *new_reg(int op, unsigned fl)
{
    int i = atomic_fetch_add(&g_nregs, 1);
    if (i >= MAXREGS)
        return NULL;
    mreg *r = &g_regs[i];
    r->op = op;
    r->watched = g_ops[op].watched;
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
    if (fl & 0x80) { /* the other kind's function: refused, nothing changes */
        cc_status wst = o->watched ? cc_op_register_cancel(h, cancel_cb, NULL, r)
                                   : cc_op_register_watched(hv(h), 5, 1);
        EXPECT(wst == CC_E_INVALID_OPERATION, "registering op%d with the other kind's function "
               "returned %s", k, cc_status_str(wst));
    }
    cc_status st = o->watched
                       ? cc_op_register_watched(hv(h), (int64_t)(r - g_regs) + 2, r->has_free)
                       : cc_op_register_cancel(h, cancel_cb, r->has_free ? free_cb : NULL, r);
    if (st == CC_OK) {
        atomic_store(&r->ok, 1);
        EXPECT(atomic_fetch_add(&o->ok_regs, 1) == 0,
               "two registrations of op%d succeeded (G2)", k);
        if (was == 1)
            EXPECT(atomic_load(&r->cancel_runs) == 1,
                   "op%d was canceled before it registered and the registration succeeded, "
                   "but its callback did not run inside the register call (G3; once g3_vs_end)",
                   k);
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
    int64_t st;
    if (o->watched) {
        st = cc_op_end_watched(hv(h));
        EXPECT(st == CC_END_DONE || st >= 2 || st == CC_E_INVALID_OPERATION,
               "cc_op_end_watched from outside its callbacks returned %lld", (long long)st);
        if (st >= 2) {
            mreg *r = reg_of_key(st);
            EXPECT(r->op == k, "cc_op_end_watched(op%d) handed back op%d's key", k, r->op);
            /* The caller runs it after the end returned, outside the core:
             * a close may have returned meanwhile, so G8 does not cover it. */
            if (r->has_free)
                run_free(r);
        }
    } else {
        st = cc_op_end(h);
        EXPECT(st == CC_OK || st == CC_E_INVALID_OPERATION, "cc_op_end returned %s",
               cc_status_str((cc_status)st));
    }
    if (st < 0)
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
    if (ended_in_cb)
        EXPECT(is == CC_E_INVALID_OPERATION,
               "op%d ended itself from inside its cancel callback (running on another thread), "
               "yet this thread reads is_canceled %d, not stale (G10; once stale_per_thread)",
               k, is);
}

static void act_begin(unsigned b, bool watched)
{
    int k = atomic_load(&g_nops);
    if (k >= MAXOPS)
        return;
    cc_channel *ch = g_ch[b % NCH];
    cc_op *h = NULL;
    cc_status st;
    g_ops[k].watched = watched;
    g_ops[k].ch = (int)(b % NCH);
    if (watched) {
        int64_t v = cc_op_begin_watched(ch);
        st = v > 0 ? CC_OK : (cc_status)v;
        h = v > 0 ? (cc_op *)(intptr_t)v : NULL;
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

/* cc_channel_cancel_op on the op's own channel (CC_OK, or stale once its
 * end began) or on another (refused: CC_E_INVALID_OPERATION). */
static void act_cancel_op(int k, unsigned b)
{
    if (k < 0)
        return;
    mop *o = &g_ops[k];
    cc_op *h = atomic_load(&o->h);
    if (!h)
        return;
    atomic_store(&g_fault_started, 1); /* another canceller: G7 no longer checked */
    cc_reason reason = (b & 1) ? CC_CHANNEL_FAULTED : CC_HOST_ABORT;
    bool other = (b & 6) == 6;
    cc_channel *ch = g_ch[(o->ch + (other ? 1 : 0)) % NCH];
    /* Read before: the callback this call runs may end the op itself. */
    int ended_before = atomic_load(&o->ok_ends);
    cc_status st = cc_channel_cancel_op(ch, hv(h), reason);
    EXPECT(st == CC_OK || st == CC_E_INVALID_OPERATION, "cc_channel_cancel_op returned %s",
           cc_status_str(st));
    if (other)
        EXPECT(st == CC_E_INVALID_OPERATION, "cc_channel_cancel_op on another channel returned %s",
               cc_status_str(st));
    else if (ended_before) /* (if not: an end racing may have begun, either status) */
        EXPECT(st == CC_E_INVALID_OPERATION, "cc_channel_cancel_op of op%d after its end "
               "returned gave %s (G10)", k, cc_status_str(st));
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
        unsigned op = next(s) % 7, b = next(s);
        switch (op) {
        case 6: act_cancel_op(pick(b), b >> 4); break;
        case 0: act_abort(); break;
        case 1: act_fault(b); break;
        case 2: act_end(pick(b)); break;
        case 3: act_read(pick(b)); break;
        case 4: act_register(pick(b), next(s)); break;
        case 5: nap(b & 0x1f); break;
        }
    }
    return NULL;
}

static void main_script(script *s)
{
    while (s->i < s->n) {
        unsigned op = next(s) % 9, b = next(s);
        switch (op) {
        case 8: act_cancel_op(pick(b), b >> 4); break;
        case 0: act_begin(b, false); break;
        case 1: act_register(pick(b), next(s)); break;
        case 2: act_end(pick(b)); break;
        case 3: act_read(pick(b)); break;
        case 4: act_fault(b); break;
        case 5: nap(b & 0x1f); break;
        case 6: act_begin(b, true); break;
        case 7:
            act_begin(b, (b & 0x40) != 0);
            act_register(atomic_load(&g_nops) - 1, b & 0x3f);
            break;
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
    atomic_store(&g_unnamed_notices, 0);
    atomic_store(&g_user_notices, 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool inited;
    if (!inited) {
        inited = true;
        const char *t = getenv("CC_FUZZ_TRACE");
        g_trace = t && *t && strcmp(t, "0") != 0;
    }
    if (size < 2)
        return 0;
    reset();
    unsigned flags = data[0];
    data++;
    size--;
    EXPECT(cc_host_create(&g_host) == CC_OK && cc_host_set_binding(g_host, binding_fn, NULL) == CC_OK
               && cc_host_open(g_host) == CC_OK, "host set-up");
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

    uint64_t cancels = 0, frees = 0, notices = (uint64_t)atomic_load(&g_unnamed_notices);
    for (int k = 0; k < n; k++) {
        notices += (uint64_t)atomic_load(&g_ops[k].notices);
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
        if (!r->watched)
            cancels += (uint64_t)c; /* watched: counted by their CANCELED notices */
        frees += (uint64_t)f;
    }
    cc_stats st;
    EXPECT(cc_host_get_stats(g_host, &st) == CC_OK, "stats");
    EXPECT(st.ops_begun == (uint64_t)n && st.ops_ended == (uint64_t)n && st.ops_in_flight == 0,
           "stats: begun %llu ended %llu in flight %llu, %d operations", (unsigned long long)st.ops_begun,
           (unsigned long long)st.ops_ended, (unsigned long long)st.ops_in_flight, n);
    EXPECT(st.cancels_host_abort + st.cancels_channel_faulted == cancels + notices,
           "stats count %llu cancels, %llu C callbacks ran and %llu CANCELED notices came",
           (unsigned long long)(st.cancels_host_abort + st.cancels_channel_faulted),
           (unsigned long long)cancels, (unsigned long long)notices);
    EXPECT(cc_host_stat(g_host, CC_STAT_USER_CANCELS_RUN) == (uint64_t)atomic_load(&g_user_notices),
           "CC_STAT_USER_CANCELS_RUN is %llu, %d RUN_USER notices came",
           (unsigned long long)cc_host_stat(g_host, CC_STAT_USER_CANCELS_RUN),
           atomic_load(&g_user_notices));
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
