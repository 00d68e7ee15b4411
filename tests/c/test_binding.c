/* test_binding.c - the calls for language bindings: watched operations,
 * their batched notices, registrations by key and ends that hand back the
 * free-state (cancelcore.h, "bindings").  The last case races them on
 * threads with exact per-operation accounting. */
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include "cc_test.h"

#define MAXOPS 4096

/* What the binding was told, per operation (found by handle) and per key. */
typedef struct seen {
    cc_host *host;
    atomic_int calls;               /* binding calls */
    atomic_int notices;
    int64_t ops[MAXOPS];            /* handle of op i (set by the test) */
    atomic_int canceled[MAXOPS];    /* CC_NOTICE_CANCELED per op */
    atomic_int reason[MAXOPS];
    atomic_int run_user[MAXOPS];    /* by key - 2 */
    atomic_int ended[MAXOPS];       /* CC_NOTICE_ENDED per op */
    atomic_int free_due[MAXOPS];    /* by key - 2 */
    atomic_int live_inside[MAXOPS]; /* cc_op_is_canceled read 1 inside */
    /* Optional: end this op from inside the binding call (a deferred end). */
    int64_t end_inside;
    atomic_llong end_inside_result;
    int nops;
} seen;

static seen g;

static int op_index(int64_t h)
{
    for (int i = 0; i < g.nops; i++)
        if (g.ops[i] == h)
            return i;
    return -1;
}

static void binding(void *arg, const cc_notice *n, size_t count)
{
    if (arg != &g)
        abort();
    atomic_fetch_add(&g.calls, 1);
    atomic_fetch_add(&g.notices, (int)count);
    for (size_t k = 0; k < count; k++) {
        int64_t what = n[k].what;
        int i = op_index(n[k].op);
        if (what & CC_NOTICE_CANCELED) {
            if (i >= 0) {
                atomic_fetch_add(&g.canceled[i], 1);
                atomic_store(&g.reason[i], (int)(what >> 8));
                if (cc_op_is_canceled((cc_op *)(intptr_t)n[k].op) == 1)
                    atomic_fetch_add(&g.live_inside[i], 1);
            }
        }
        if (what & CC_NOTICE_RUN_USER)
            atomic_fetch_add(&g.run_user[n[k].user_key - 2], 1);
        if (what & CC_NOTICE_ENDED) {
            if (i >= 0)
                atomic_fetch_add(&g.ended[i], 1);
            if (what & CC_NOTICE_FREE_DUE)
                atomic_fetch_add(&g.free_due[n[k].user_key - 2], 1);
        }
        if (g.end_inside && n[k].op == g.end_inside && (what & CC_NOTICE_CANCELED))
            atomic_store(&g.end_inside_result, cc_op_end_watched(g.end_inside));
    }
}

static void reset(void)
{
    memset(&g, 0, sizeof g);
}

typedef struct fx {
    cc_host *host;
    cc_channel *ch;
} fx;

static void fx_open(fx *f)
{
    reset();
    CHECK_ST(cc_host_create(&f->host), CC_OK);
    CHECK_ST(cc_host_set_binding(f->host, binding, &g), CC_OK);
    CHECK_ST(cc_host_open(f->host), CC_OK);
    CHECK_ST(cc_channel_open(f->host, &f->ch), CC_OK);
    g.host = f->host;
}

static int64_t begin(fx *f)
{
    int64_t h = cc_op_begin_watched(f->ch);
    CHECK(h > 0);
    g.ops[g.nops++] = h;
    return h;
}

/* ---------------------------------------------------------- arguments */

static void test_arguments(void)
{
    cc_host *host;
    cc_channel *ch;
    CHECK_ST(cc_host_set_binding(NULL, binding, &g), CC_E_INVALID_ARG);
    CHECK_EQ_U(cc_op_begin_watched(NULL), (unsigned long long)(int64_t)CC_E_INVALID_ARG);
    CHECK_ST(cc_host_create(&host), CC_OK);
    CHECK_ST(cc_host_open(host), CC_OK);
    CHECK_ST(cc_channel_open(host, &ch), CC_OK);
    /* No binding: nobody could be told. */
    CHECK(cc_op_begin_watched(ch) == CC_E_INVALID_OPERATION);
    CHECK_ST(cc_host_set_binding(host, binding, &g), CC_OK);
    int64_t h = cc_op_begin_watched(ch);
    CHECK(h > 0);
    CHECK_ST(cc_op_register_watched(h, 1, 1), CC_E_INVALID_ARG); /* keys are > 1 */
    CHECK_ST(cc_op_register_watched(0, 5, 1), CC_E_INVALID_ARG);
    CHECK_ST(cc_op_register_watched(-3, 5, 1), CC_E_INVALID_ARG);
    CHECK(cc_op_end_watched(0) == CC_E_INVALID_ARG);
    /* A watched op takes no C registration, a C op no watched one. */
    CHECK_ST(cc_op_register_cancel((cc_op *)(intptr_t)h, (cc_cancel_fn)binding, NULL, NULL),
             CC_E_INVALID_OPERATION);
    cc_op *op;
    CHECK_ST(cc_op_begin(ch, &op), CC_OK);
    CHECK_ST(cc_op_register_watched((int64_t)(intptr_t)op, 5, 1), CC_E_INVALID_OPERATION);
    CHECK(cc_op_end_watched((int64_t)(intptr_t)op) == CC_E_INVALID_OPERATION);
    CHECK_ST(cc_op_end(op), CC_OK);
    CHECK(cc_op_end((cc_op *)(intptr_t)h) == CC_E_INVALID_OPERATION);
    CHECK(cc_op_end_watched(h) == CC_END_DONE);
    CHECK(cc_op_end_watched(h) == CC_E_INVALID_OPERATION); /* G10 */
    CHECK_ST(cc_op_register_watched(h, 5, 1), CC_E_INVALID_OPERATION);
    cc_host_free(host);
}

/* --------------------------------------------------------- one by one */

static void test_register_then_cancel(void)
{
    fx f;
    fx_open(&f);
    int64_t a = begin(&f), b = begin(&f);
    CHECK_ST(cc_op_register_watched(a, 2, 1), CC_OK);
    CHECK_ST(cc_op_register_watched(a, 3, 1), CC_E_INVALID_OPERATION); /* G2 */
    CHECK_ST(cc_channel_fault(f.ch), CC_OK);
    /* One batch: both ops told, only a's user callback run (b has none). */
    CHECK_EQ_U(atomic_load(&g.calls), 1);
    CHECK_EQ_U(atomic_load(&g.canceled[0]) + atomic_load(&g.canceled[1]), 2);
    CHECK_EQ_U(atomic_load(&g.reason[0]), CC_CHANNEL_FAULTED);
    CHECK_EQ_U(atomic_load(&g.live_inside[0]), 1); /* readable inside (G10) */
    CHECK_EQ_U(atomic_load(&g.run_user[0]), 1);
    CHECK_EQ_U(atomic_load(&g.run_user[1]), 0);
    /* The end hands the due free-state back: the key. */
    CHECK(cc_op_end_watched(a) == 2);
    CHECK(cc_op_end_watched(b) == CC_END_DONE);
    cc_stats st;
    CHECK_ST(cc_host_get_stats(f.host, &st), CC_OK);
    CHECK_EQ_U(st.free_states_run, 1);
    CHECK_EQ_U(st.cancels_channel_faulted, 2);
    CHECK_EQ_U(cc_host_stat(f.host, CC_STAT_OPS_CANCELED), 2);
    CHECK_EQ_U(cc_host_stat(f.host, CC_STAT_LATENCY_COUNT), 2);
    CHECK_EQ_U(cc_host_stat(f.host, CC_STAT_OPS_IN_FLIGHT), 0);
    cc_host_free(f.host);
}

/* G3: on a canceled operation the user's cancel runs inside register. */
static void test_register_after_cancel(void)
{
    fx f;
    fx_open(&f);
    int64_t a = begin(&f);
    CHECK_ST(cc_host_abort(f.host), CC_OK);
    CHECK_EQ_U(atomic_load(&g.canceled[0]), 1);
    CHECK_EQ_U(atomic_load(&g.run_user[5]), 0);
    CHECK_ST(cc_op_register_watched(a, 7, 0), CC_OK);
    CHECK_EQ_U(atomic_load(&g.run_user[5]), 1);
    CHECK_EQ_U(atomic_load(&g.reason[0]), CC_HOST_ABORT);
    CHECK(cc_op_end_watched(a) == 7); /* the key, though no free-state was given */
    cc_host_free(f.host);
}

/* An end from inside the batch is deferred; ENDED follows when it returns. */
static void test_end_inside_batch(void)
{
    fx f;
    fx_open(&f);
    int64_t a = begin(&f);
    CHECK_ST(cc_op_register_watched(a, 2, 1), CC_OK);
    g.end_inside = a;
    CHECK_ST(cc_host_abort(f.host), CC_OK);
    CHECK(atomic_load(&g.end_inside_result) == CC_END_DEFERRED);
    CHECK_EQ_U(atomic_load(&g.ended[0]), 1);
    CHECK_EQ_U(atomic_load(&g.free_due[0]), 1);
    CHECK_EQ_U(atomic_load(&g.run_user[0]), 1);
    CHECK(cc_op_end_watched(a) == CC_E_INVALID_OPERATION);
    CHECK_EQ_U(cc_host_stat(f.host, CC_STAT_OPS_IN_FLIGHT), 0);
    cc_host_free(f.host);
}

/* Many operations reach the binding in batches, each exactly once. */
static void test_batches(void)
{
    fx f;
    fx_open(&f);
    const int n = 1000;
    for (int i = 0; i < n; i++) {
        int64_t h = begin(&f);
        if (i % 2 == 0)
            CHECK_ST(cc_op_register_watched(h, 2 + i, 1), CC_OK);
    }
    CHECK_ST(cc_host_abort(f.host), CC_OK);
    CHECK(atomic_load(&g.calls) <= (n + 63) / 64);
    CHECK_EQ_U(atomic_load(&g.notices), n);
    int bad = 0;
    for (int i = 0; i < n; i++) {
        bad += atomic_load(&g.canceled[i]) != 1;
        bad += atomic_load(&g.run_user[i]) != (i % 2 == 0);
        int64_t r = cc_op_end_watched(g.ops[i]);
        bad += r != (i % 2 == 0 ? 2 + i : CC_END_DONE);
    }
    CHECK_EQ_U(bad, 0);
    cc_stats st;
    CHECK_ST(cc_host_get_stats(f.host, &st), CC_OK);
    CHECK_EQ_U(st.free_states_run, n / 2);
    CHECK_EQ_U(st.cancels_host_abort, n);
    cc_host_free(f.host);
}

/* The fault plan at END cancels the op before it completes: told once,
 * readable inside, then its free-state handed back. */
static void test_fault_at_end(void)
{
    fx f;
    fx_open(&f);
    int64_t a = begin(&f);
    CHECK_ST(cc_op_register_watched(a, 2, 1), CC_OK);
    CHECK_ST(cc_host_fault_add(f.host, CC_FAULT_AT_END, CC_FAULT_CHANNEL, 1, 0.0), CC_OK);
    CHECK(cc_op_end_watched(a) == 2);
    CHECK_EQ_U(atomic_load(&g.canceled[0]), 1);
    CHECK_EQ_U(atomic_load(&g.run_user[0]), 1);
    CHECK_EQ_U(atomic_load(&g.live_inside[0]), 1);
    CHECK(cc_channel_state(f.ch) == CC_CHANNEL_STATE_FAULTED);
    cc_host_free(f.host);
}

static void test_status_names(void)
{
#define CC_NAME_CHECK_(name, value, meaning) CHECK(strcmp(cc_status_str(name), #name) == 0);
    CC_STATUS_LIST(CC_NAME_CHECK_)
#undef CC_NAME_CHECK_
    CHECK(strcmp(cc_status_str((cc_status)-99), "CC_E_UNKNOWN") == 0);
    CHECK(cc_latency_bound_ns(0) == 1000);
    CHECK(cc_latency_bound_ns(CC_LATENCY_BUCKETS - 1) == UINT64_MAX);
    uint64_t counts[CC_LATENCY_BUCKETS];
    CHECK_ST(cc_host_latency(NULL, counts, CC_LATENCY_BUCKETS), CC_E_INVALID_ARG);
    CHECK_EQ_U(cc_host_stat(NULL, CC_STAT_OPS_BEGUN), 0);
}

/* ------------------------------------------------------------- stress */

/* Workers begin, register (some), and end watched ops while a canceller
 * faults and reopens channels and the G3 check runs on every registration
 * that found its op canceled.  Exact counts: every registered op's user
 * cancel ran at most once (G1), and its free-state came back exactly once
 * (G4) -- from the end or from an ENDED notice. */
#define WORKERS 3
#define PER_WORKER 1200

#define MAXCH 512
typedef struct worker {
    fx *f;
    cc_channel *_Atomic ch;
    cc_channel *old[MAXCH]; /* faulted ones, closed after the run */
    int nold;
    int id;
    atomic_int g3_late; /* registration on a canceled op returned before its cancel ran */
    int due_from_end[PER_WORKER];
} worker;

static atomic_int g_stop;

static void *work(void *arg)
{
    worker *w = arg;
    for (int i = 0; i < PER_WORKER; i++) {
        int key = 2 + w->id * PER_WORKER + i;
        int64_t h = cc_op_begin_watched(atomic_load(&w->ch));
        if (h < 0) { /* faulted channel: open another (the canceller may
                        still fault the old one, so it stays open) */
            cc_channel *nc;
            if (w->nold == MAXCH || cc_channel_open(w->f->host, &nc) != CC_OK)
                continue;
            w->old[w->nold++] = atomic_exchange(&w->ch, nc);
            i--;
            continue;
        }
        if (i % 7 == 0)
            sched_yield();
        if (i % 3 != 2) {
            int was = cc_op_is_canceled((cc_op *)(intptr_t)h);
            cc_status st = cc_op_register_watched(h, key, 1);
            if (st != CC_OK)
                atomic_fetch_add(&w->g3_late, 100000);
            if (was == 1 && atomic_load(&g.run_user[key - 2]) != 1)
                atomic_fetch_add(&w->g3_late, 1);
        }
        int64_t r = cc_op_end_watched(h);
        if (r > 1) {
            w->due_from_end[i] = 1;
            if (r != key)
                atomic_fetch_add(&w->g3_late, 1000);
        }
    }
    return NULL;
}

static void *canceller(void *arg)
{
    worker *ws = arg;
    unsigned k = 0;
    while (!atomic_load(&g_stop)) {
        cc_channel_fault(atomic_load(&ws[k % WORKERS].ch));
        k++;
        sched_yield();
    }
    return NULL;
}

static void test_stress(void)
{
    fx f;
    fx_open(&f);
    worker ws[WORKERS];
    pthread_t t[WORKERS], c;
    memset(ws, 0, sizeof ws);
    for (int i = 0; i < WORKERS; i++) {
        ws[i].f = &f;
        ws[i].id = i;
        cc_channel *ch;
        CHECK_ST(cc_channel_open(f.host, &ch), CC_OK);
        atomic_store(&ws[i].ch, ch);
    }
    atomic_store(&g_stop, 0);
    pthread_create(&c, NULL, canceller, ws);
    for (int i = 0; i < WORKERS; i++)
        pthread_create(&t[i], NULL, work, &ws[i]);
    for (int i = 0; i < WORKERS; i++)
        pthread_join(t[i], NULL);
    atomic_store(&g_stop, 1);
    pthread_join(c, NULL);

    int bad_once = 0, bad_free = 0, late = 0, registered = 0, ran = 0;
    for (int w = 0; w < WORKERS; w++) {
        late += atomic_load(&ws[w].g3_late);
        for (int i = 0; i < PER_WORKER; i++) {
            int key = 2 + w * PER_WORKER + i;
            int runs = atomic_load(&g.run_user[key - 2]);
            bad_once += runs > 1;
            ran += runs;
            if (i % 3 == 2)
                continue;
            registered++;
            bad_free += ws[w].due_from_end[i] + atomic_load(&g.free_due[key - 2]) != 1;
        }
    }
    CHECK_EQ_U(bad_once, 0);
    CHECK_EQ_U(bad_free, 0);
    CHECK_EQ_U(late, 0);
    cc_stats st;
    CHECK_ST(cc_host_get_stats(f.host, &st), CC_OK);
    CHECK_EQ_U(st.ops_in_flight, 0);
    CHECK_EQ_U(st.free_states_run, registered);
    printf("  stress: %d registered, %d user cancels, %llu canceled\n", registered, ran,
           (unsigned long long)st.ops_canceled);
    cc_host_free(f.host);
}

int main(void)
{
    RUN(test_arguments);
    RUN(test_register_then_cancel);
    RUN(test_register_after_cancel);
    RUN(test_end_inside_batch);
    RUN(test_batches);
    RUN(test_fault_at_end);
    RUN(test_status_names);
    RUN(test_stress);
    return TEST_EXIT();
}
