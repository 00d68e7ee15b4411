/* Reproducer, known bug stale_per_thread (not fixed in csrc/ at the time of
 * writing; see tests/fuzz/README.md).
 *
 * The header: "A handle is stale once its cc_op_end has begun ..., except
 * inside its own cancel callback."  An operation ends itself from inside its
 * cancel callback (the end is deferred, CC_OK); while that callback still
 * runs, another thread reads the handle.  That thread is not inside the
 * callback, so it must read CC_E_INVALID_OPERATION; the core answers 1
 * (canceled) because its exception is decided by the state word (ST_INVOKED),
 * not by the thread asking.
 *
 * Exit status: 0 if the contract holds, 1 if the bug is present. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>

#include "cancelcore.h"

static cc_op *g_op;
static atomic_int g_ended, g_read_done;
static int g_read;

static void *reader(void *arg)
{
    (void)arg;
    while (!atomic_load(&g_ended))
        ;
    g_read = cc_op_is_canceled(g_op);
    atomic_store(&g_read_done, 1);
    return NULL;
}

static void on_cancel(cc_reason reason, void *state)
{
    (void)reason;
    (void)state;
    cc_status st = cc_op_end(g_op); /* deferred: returns at once */
    if (st != CC_OK)
        printf("cc_op_end from its own callback returned %s\n", cc_status_str(st));
    atomic_store(&g_ended, 1);
    while (!atomic_load(&g_read_done)) /* the callback is still running */
        ;
}

int main(void)
{
    cc_host *host;
    cc_channel *ch;
    pthread_t t;
    if (cc_host_create(&host) || cc_host_open(host) || cc_channel_open(host, &ch)
        || cc_op_begin(ch, &g_op) || cc_op_register_cancel(g_op, on_cancel, NULL, NULL)
        || pthread_create(&t, NULL, reader, NULL))
        return 2;
    cc_host_abort(host); /* runs on_cancel on this thread */
    pthread_join(t, NULL);
    cc_host_free(host);
    if (g_read != CC_E_INVALID_OPERATION) {
        printf("BUG stale_per_thread: another thread read cc_op_is_canceled == %d on an "
               "operation whose end had begun (wanted %d)\n", g_read, CC_E_INVALID_OPERATION);
        return 1;
    }
    printf("stale_per_thread: fixed (the other thread reads the handle stale)\n");
    return 0;
}
