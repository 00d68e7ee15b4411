/*
 * cc_shapes.c - the measured shapes, run on cancelcore.
 *
 * Every library call's status is checked, also inside timed loops (one
 * predictable branch): a call that fails would otherwise be measured as a
 * fast no-op.  After each timed run the callback counts and the host's
 * statistics are compared with what the header promises; any difference
 * stops the program (bench_fail) instead of printing a figure.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

#define CC_CHECK(call)                                                      \
    do {                                                                    \
        cc_status s_ = (call);                                              \
        if (s_ != CC_OK)                                                    \
            bench_fail("%s returned %s (%d)", #call, cc_status_str(s_),     \
                       (int)s_);                                            \
    } while (0)

/* A created and opened host with n channels. */
static cc_host *open_host(cc_channel **channels, int n)
{
    cc_host *host = NULL;
    CC_CHECK(cc_host_create(&host));
    CC_CHECK(cc_host_open(host));
    for (int i = 0; i < n; i++)
        CC_CHECK(cc_channel_open(host, &channels[i]));
    return host;
}

static void free_host(cc_host *host, cc_channel **channels, int n)
{
    for (int i = 0; i < n; i++)
        CC_CHECK(cc_channel_close(channels[i]));
    cc_host_free(host);
}

static cc_stats get_stats(cc_host *host)
{
    cc_stats st;
    memset(&st, 0, sizeof st);
    CC_CHECK(cc_host_get_stats(host, &st));
    return st;
}

/* The counters of a host on which `total` operations were begun, registered
 * with a free-state and ended, `canceled` of them by a host abort. */
static void check_stats(cc_host *host, uint64_t total, uint64_t canceled,
                        const char *shape)
{
    cc_stats st = get_stats(host);
    if (st.ops_in_flight != 0 || st.ops_begun != total || st.ops_ended != total
        || st.free_states_run != total || st.ops_canceled != canceled
        || st.cancels_host_abort != canceled || st.cancels_channel_faulted != 0)
        bench_fail("%s: cc_host_get_stats disagrees with what ran "
                   "(%llu ops begun/ended/free-stated, %llu canceled by abort): "
                   "in_flight=%llu begun=%llu ended=%llu free_states_run=%llu "
                   "canceled=%llu cancels_host_abort=%llu "
                   "cancels_channel_faulted=%llu",
                   shape, (unsigned long long)total, (unsigned long long)canceled,
                   (unsigned long long)st.ops_in_flight,
                   (unsigned long long)st.ops_begun,
                   (unsigned long long)st.ops_ended,
                   (unsigned long long)st.free_states_run,
                   (unsigned long long)st.ops_canceled,
                   (unsigned long long)st.cancels_host_abort,
                   (unsigned long long)st.cancels_channel_faulted);
}

/* ------------------------------------------------------------ is-canceled */

double cc_shape_is_canceled(uint64_t checks)
{
    cc_channel *ch;
    cc_host *host = open_host(&ch, 1);
    cc_op *op;
    CC_CHECK(cc_op_begin(ch, &op));

    int seen = 0;
    uint64_t t0 = bench_now_ns();
    for (uint64_t i = 0; i < checks; i++) {
        int v = cc_op_is_canceled(op);
        BENCH_USE(v);
        seen |= v;
    }
    uint64_t t1 = bench_now_ns();

    if (seen != 0)
        bench_fail("cc_op_is_canceled returned nonzero (bits %#x) for a live, "
                   "uncanceled operation", (unsigned)seen);
    CC_CHECK(cc_op_end(op));
    free_host(host, &ch, 1);
    return (double)(t1 - t0) / (double)checks;
}

/* ------------------------------------------------------------------ cycle */

/* `cycles` times begin + register + end on one channel; the callbacks count
 * into *counts. */
static void run_cycles(cc_channel *ch, uint64_t cycles, bench_counts *counts)
{
    for (uint64_t i = 0; i < cycles; i++) {
        cc_op *op;
        CC_CHECK(cc_op_begin(ch, &op));
        CC_CHECK(cc_op_register_cancel(op, bench_cancel_cb, bench_free_cb, counts));
        CC_CHECK(cc_op_end(op));
    }
}

static void check_cycle_counts(const bench_counts *c, uint64_t cycles,
                               const char *shape)
{
    if (c->cancels != 0 || c->frees != cycles)
        bench_fail("%s: after %llu begin/register/end cycles with no abort, "
                   "cancel ran %u times (want 0) and free-state %u times (want %llu)",
                   shape, (unsigned long long)cycles, c->cancels, c->frees,
                   (unsigned long long)cycles);
}

double cc_shape_cycle1(uint64_t cycles)
{
    cc_channel *ch;
    cc_host *host = open_host(&ch, 1);
    bench_counts counts = {0, 0, CC_NOT_CANCELED};

    uint64_t t0 = bench_now_ns();
    run_cycles(ch, cycles, &counts);
    uint64_t t1 = bench_now_ns();

    check_cycle_counts(&counts, cycles, "cancelcore cycle (1 thread)");
    check_stats(host, cycles, 0, "cancelcore cycle (1 thread)");
    free_host(host, &ch, 1);
    return (double)(t1 - t0) / (double)cycles;
}

/* One of the two threads of cycle2: waits at a start line shared with the
 * other, so that both run at the same time, and records its own start and
 * end so that the wall time excludes thread creation and joining. */
typedef struct cycle_thread {
    cc_channel *ch;
    uint64_t cycles;
    atomic_int *arrived;
    bench_counts counts;
    uint64_t t0, t1;
} cycle_thread;

static void *cycle_thread_main(void *arg)
{
    cycle_thread *t = (cycle_thread *)arg;
    atomic_fetch_add(t->arrived, 1);
    while (atomic_load(t->arrived) < 2)
        ; /* spin: a sleep here would add wake-up skew between the threads */
    t->t0 = bench_now_ns();
    run_cycles(t->ch, t->cycles, &t->counts);
    t->t1 = bench_now_ns();
    return NULL;
}

double cc_shape_cycle2(uint64_t cycles_per_thread)
{
    cc_channel *ch[2];
    cc_host *host = open_host(ch, 2);
    atomic_int arrived = 0;
    cycle_thread t[2];
    pthread_t tid[2];

    for (int i = 0; i < 2; i++) {
        t[i] = (cycle_thread){ch[i], cycles_per_thread, &arrived,
                              {0, 0, CC_NOT_CANCELED}, 0, 0};
        if (pthread_create(&tid[i], NULL, cycle_thread_main, &t[i]) != 0)
            bench_fail("pthread_create failed");
    }
    for (int i = 0; i < 2; i++)
        pthread_join(tid[i], NULL);

    for (int i = 0; i < 2; i++)
        check_cycle_counts(&t[i].counts, cycles_per_thread,
                           "cancelcore cycle (2 threads)");
    check_stats(host, 2 * cycles_per_thread, 0, "cancelcore cycle (2 threads)");
    free_host(host, ch, 2);

    uint64_t start = t[0].t0 < t[1].t0 ? t[0].t0 : t[1].t0;
    uint64_t end = t[0].t1 > t[1].t1 ? t[0].t1 : t[1].t1;
    return (double)(end - start) / (double)cycles_per_thread;
}

/* ---------------------------------------------------------------- fan-out */

/* Begins and registers n operations spread round-robin over the channels;
 * each one's callbacks count into its own counts[i]. */
static void begin_many(cc_channel **ch, int nch, cc_op **ops, bench_counts *counts,
                       uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        counts[i] = (bench_counts){0, 0, CC_NOT_CANCELED};
        CC_CHECK(cc_op_begin(ch[i % (uint32_t)nch], &ops[i]));
        CC_CHECK(cc_op_register_cancel(ops[i], bench_cancel_cb, bench_free_cb,
                                       &counts[i]));
    }
}

double cc_shape_fanout(uint32_t n)
{
    cc_channel *ch[BENCH_FANOUT_CHANNELS];
    cc_host *host = open_host(ch, BENCH_FANOUT_CHANNELS);
    cc_op **ops = malloc(n * sizeof *ops);
    bench_counts *counts = malloc(n * sizeof *counts);
    if (!ops || !counts)
        bench_fail("out of memory for %u operations", n);
    begin_many(ch, BENCH_FANOUT_CHANNELS, ops, counts, n);

    uint64_t t0 = bench_now_ns();
    CC_CHECK(cc_host_abort(host));
    uint64_t t1 = bench_now_ns();

    /* G7: every cancel callback ran on this thread before abort returned;
     * G5: no free-state ran yet, the operations have not ended. */
    if (cc_host_state(host) != CC_HOST_STATE_FAULTED)
        bench_fail("cancelcore fan-out: host state %d after cc_host_abort on an "
                   "OPEN host (want FAULTED = %d)",
                   (int)cc_host_state(host), (int)CC_HOST_STATE_FAULTED);
    for (uint32_t i = 0; i < n; i++) {
        if (counts[i].cancels != 1 || counts[i].last_reason != CC_HOST_ABORT
            || counts[i].frees != 0)
            bench_fail("cancelcore fan-out: after cc_host_abort returned, "
                       "operation %u of %u (channel %u) saw cancel %u times "
                       "(want 1), last reason %d (want CC_HOST_ABORT = 0), "
                       "free-state %u times (want 0)",
                       i, n, i % BENCH_FANOUT_CHANNELS, counts[i].cancels,
                       (int)counts[i].last_reason, counts[i].frees);
        if (cc_op_is_canceled(ops[i]) != 1 || cc_op_reason(ops[i]) != CC_HOST_ABORT)
            bench_fail("cancelcore fan-out: operation %u after abort: "
                       "cc_op_is_canceled=%d (want 1), cc_op_reason=%d (want 0)",
                       i, cc_op_is_canceled(ops[i]), (int)cc_op_reason(ops[i]));
    }

    for (uint32_t i = 0; i < n; i++)
        CC_CHECK(cc_op_end(ops[i]));
    for (uint32_t i = 0; i < n; i++)
        if (counts[i].cancels != 1 || counts[i].frees != 1)
            bench_fail("cancelcore fan-out: after cc_op_end, operation %u saw "
                       "cancel %u times and free-state %u times (want 1 and 1)",
                       i, counts[i].cancels, counts[i].frees);
    check_stats(host, n, n, "cancelcore fan-out");

    free_host(host, ch, BENCH_FANOUT_CHANNELS);
    free(ops);
    free(counts);
    return (double)(t1 - t0) / (double)n;
}

/* ----------------------------------------------------------------- memory */

void cc_measure_memory(uint32_t n, double *rss_per_op, double *malloc_per_op)
{
    cc_channel *ch[BENCH_FANOUT_CHANNELS];
    cc_host *host = open_host(ch, BENCH_FANOUT_CHANNELS);
    cc_op **ops = malloc(n * sizeof *ops);
    bench_counts *counts = malloc(n * sizeof *counts);
    if (!ops || !counts)
        bench_fail("out of memory for %u operations", n);
    /* Touch the benchmark's own arrays first, so that the delta below holds
     * only what the library keeps per operation.  Not with zeros: the
     * compiler may turn malloc + memset(0) into calloc, which touches
     * nothing. */
    memset(ops, 0x5a, n * sizeof *ops);
    memset(counts, 0x5a, n * sizeof *counts);

    uint64_t rss0 = bench_rss_bytes(), heap0 = bench_malloc_bytes();
    begin_many(ch, BENCH_FANOUT_CHANNELS, ops, counts, n);
    uint64_t rss1 = bench_rss_bytes(), heap1 = bench_malloc_bytes();

    for (uint32_t i = 0; i < n; i++)
        CC_CHECK(cc_op_end(ops[i]));
    for (uint32_t i = 0; i < n; i++)
        if (counts[i].cancels != 0 || counts[i].frees != 1)
            bench_fail("cancelcore memory run: operation %u saw cancel %u times "
                       "and free-state %u times (want 0 and 1)",
                       i, counts[i].cancels, counts[i].frees);
    check_stats(host, n, 0, "cancelcore memory run");
    free_host(host, ch, BENCH_FANOUT_CHANNELS);
    free(ops);
    free(counts);

    *rss_per_op = ((double)rss1 - (double)rss0) / (double)n;
    *malloc_per_op = ((double)heap1 - (double)heap0) / (double)n;
}
