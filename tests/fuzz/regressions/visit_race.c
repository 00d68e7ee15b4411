/* Reproducer, suspected bug visit_race (not fixed in csrc/ at the time of
 * writing; see tests/fuzz/README.md).
 *
 * cc_op_visit_register_faults(op) checks that op is live, then reads
 * slot->channel and its host with nothing keeping the slot in flight.  If
 * another thread ends the operation in between, cc_op_release has set
 * slot->channel = NULL (or the slot was begun again on another channel, or
 * the channel was freed): a NULL dereference, a use after free, and in any
 * case a data race on slot->channel (ThreadSanitizer reports it).  The header
 * promises thread safety and "never undefined behaviour" for a handle that
 * went stale.
 *
 * One thread begins and ends operations in a loop; another calls
 * cc_op_visit_register_faults on whatever handle was last published.  Run it
 * under TSan (the race is reported at once) or plainly (a crash, given time).
 * Exit status 0: no crash within the time given (argv[1] seconds, default 3). */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "cancelcore.h"

static cc_channel *g_ch;
static _Atomic(cc_op *) g_op;
static atomic_int g_stop;

static void *churn(void *arg)
{
    (void)arg;
    while (!atomic_load(&g_stop)) {
        cc_op *op;
        if (cc_op_begin(g_ch, &op) != CC_OK)
            abort();
        atomic_store(&g_op, op);
        (void)cc_op_end(op);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    double secs = argc > 1 ? atof(argv[1]) : 3.0;
    cc_host *host;
    if (cc_host_create(&host) || cc_host_open(host) || cc_channel_open(host, &g_ch))
        return 2;
    pthread_t t;
    pthread_create(&t, NULL, churn, NULL);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    unsigned long calls = 0, ok = 0;
    for (;;) {
        cc_op *op = atomic_load(&g_op);
        if (op) {
            ok += cc_op_visit_register_faults(op) == CC_OK;
            calls++;
        }
        if ((calls & 0xfff) == 0) {
            clock_gettime(CLOCK_MONOTONIC, &t1);
            if ((double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9 > secs)
                break;
        }
    }
    atomic_store(&g_stop, 1);
    pthread_join(t, NULL);
    cc_host_free(host);
    printf("visit_race: %lu visits (%lu on a live op), no crash\n", calls, ok);
    return 0;
}
