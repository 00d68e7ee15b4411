/* Reproducer, bug g3_vs_end (found by the threaded fuzz mode; not fixed in
 * csrc/ at the time of writing; see tests/fuzz/README.md).
 *
 * An operation is canceled (its channel faulted) before any registration.
 * One thread registers on it while another ends it.  Register's phase 2 sets
 * ARMED | RUNNING | FIRED in one step and then calls cc_run_cancel; an end in
 * between sees "claimed, not started", overtakes it as if a fan-out had
 * queued it, runs free-state and drops the callback.  Register still returns
 * CC_OK.  No order of the two calls explains that: register first means the
 * callback runs inside it (G3); end first means register fails with
 * CC_E_INVALID_OPERATION (G10) and its free-state never runs (G4).
 *
 * Exit status: 0 if no such outcome within argv[1] seconds (default 5), 1 if
 * seen. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "cancelcore.h"

static cc_op *g_op;
static atomic_int g_go, g_done, g_round;
static atomic_int g_cancels, g_frees;

static void on_cancel(cc_reason reason, void *state)
{
    (void)reason;
    (void)state;
    atomic_fetch_add(&g_cancels, 1);
}

static void on_free(void *state)
{
    (void)state;
    atomic_fetch_add(&g_frees, 1);
}

static void *ender(void *arg)
{
    (void)arg;
    for (int round = 1;; round++) {
        while (atomic_load(&g_go) < round)
            if (atomic_load(&g_done))
                return NULL;
        (void)cc_op_end(g_op);
        atomic_store(&g_round, round);
    }
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    double secs = argc > 1 ? atof(argv[1]) : 5.0, t0 = now();
    cc_host *host;
    if (cc_host_create(&host) || cc_host_open(host))
        return 2;
    pthread_t t;
    pthread_create(&t, NULL, ender, NULL);
    long rounds = 0, bad = 0, ok_regs = 0;
    for (int round = 1; now() - t0 < secs; round++) {
        cc_channel *ch;
        if (cc_channel_open(host, &ch) || cc_op_begin(ch, &g_op) || cc_channel_fault(ch))
            return 2;
        atomic_store(&g_cancels, 0);
        atomic_store(&g_frees, 0);
        atomic_store(&g_go, round); /* the other thread ends it, now */
        cc_status st = cc_op_register_cancel(g_op, on_cancel, on_free, NULL);
        int cancels_inside = atomic_load(&g_cancels);
        while (atomic_load(&g_round) < round)
            ;
        rounds++;
        if (st == CC_OK) {
            ok_regs++;
            if (cancels_inside == 0) {
                bad++;
                if (bad == 1)
                    printf("BUG g3_vs_end (round %d): register returned CC_OK on a canceled "
                           "operation, its cancel callback never ran (free-states: %d)\n",
                           round, atomic_load(&g_frees));
            }
        }
        cc_channel_close(ch);
    }
    atomic_store(&g_done, 1);
    pthread_join(t, NULL);
    cc_host_free(host);
    printf("g3_vs_end: %ld rounds, %ld registrations won, %ld broke G3\n", rounds, ok_regs, bad);
    return bad ? 1 : 0;
}
