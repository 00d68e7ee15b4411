/* blocking_service.c - embedding cancelcore around a blocking call.
 *
 * The shape of WWSAPI's BlockingServiceExample: a service operation makes a
 * long blocking call (here, a wait on a condition variable standing in for
 * a slow database query or a peer that never answers).  Nothing inside that
 * call knows about the service host, so when the host is aborted someone
 * must reach in and wake it.  That is the cancel callback's job; releasing
 * what the wake-up needed is the free-state callback's job.
 *
 *   main thread                         worker thread (the operation)
 *   -----------                         -----------------------------
 *   create + open host, open channel
 *   start worker  ------------------->  cc_op_begin
 *                                       allocate the wait state
 *                                       cc_op_register_cancel(state)
 *                 <-------------------  "I am about to block"
 *   (a moment later) cc_host_abort
 *     -> cancel callback (this thread)  ...blocked in the wait...
 *        sets `canceled`, signals  -->  wakes up, sees `canceled`
 *                                       cc_op_end
 *                                         -> free-state callback: destroys
 *                                            the condition, frees the state
 *   join worker, close channel, close host, free host
 *
 * It runs as a ctest: it exits non-zero unless the cancel callback ran
 * exactly once with CC_HOST_ABORT and the free-state callback exactly once.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "cancelcore.h"

/* The state the operation shares with its two callbacks.  It lives on the
 * heap, not on the worker's stack: the free-state callback is the one owner
 * that knows when nobody (the cancel callback included) can touch it any
 * more, so it is the one that releases it. */
typedef struct blocking_call {
    pthread_mutex_t lock;
    pthread_cond_t wake;
    int canceled; /* guarded by lock; set by the cancel callback */
} blocking_call;

/* What the callbacks did, checked at the end.  Atomics because the cancel
 * callback runs on the main thread and the free-state one on the worker. */
static atomic_int g_cancel_runs;
static atomic_int g_cancel_reason = CC_NOT_CANCELED;
static atomic_int g_free_runs;

/* The worker tells main it is about to block, so the abort lands on a
 * blocked call (the interesting case) rather than racing the setup.  Even
 * if it did race, nothing breaks: see the `canceled` check in the wait. */
static pthread_mutex_t g_ready_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_ready_cond = PTHREAD_COND_INITIALIZER;
static int g_ready;

typedef struct worker_args {
    cc_channel *channel;
    int ok; /* every step of the worker went as expected */
} worker_args;

static const char *reason_name(cc_reason r)
{
    switch (r) {
    case CC_HOST_ABORT: return "CC_HOST_ABORT";
    case CC_CHANNEL_FAULTED: return "CC_CHANNEL_FAULTED";
    default: return "?";
    }
}

/* Runs on whichever thread canceled the operation (here the main thread,
 * inside cc_host_abort), and at most once.  It must not block or free the
 * state: the operation is still running and still owns the wait.  It only
 * flips the flag and wakes the waiter.  Setting the flag under the lock is
 * what makes a wake-up impossible to miss: the waiter tests the flag under
 * the same lock before every wait. */
static void on_cancel(cc_reason reason, void *state)
{
    blocking_call *call = state;
    printf("[cancel]  reason %s: waking the blocked call\n", reason_name(reason));
    fflush(stdout);
    atomic_store(&g_cancel_reason, (int)reason);
    atomic_fetch_add(&g_cancel_runs, 1);
    pthread_mutex_lock(&call->lock);
    call->canceled = 1;
    pthread_cond_broadcast(&call->wake);
    pthread_mutex_unlock(&call->lock);
}

/* Runs exactly once, inside cc_op_end, after any cancel callback has
 * returned (the library guarantees they never overlap), so it is the safe
 * place to destroy what the cancel callback used. */
static void on_free_state(void *state)
{
    blocking_call *call = state;
    printf("[free]    destroying the condition and freeing the call state\n");
    fflush(stdout);
    pthread_cond_destroy(&call->wake);
    pthread_mutex_destroy(&call->lock);
    free(call);
    atomic_fetch_add(&g_free_runs, 1);
}

/* The "long blocking call": waits until canceled, with a generous deadline
 * so that a broken cancellation makes the example fail instead of hang.
 * Returns 1 if it was woken by the cancel callback. */
static int long_blocking_call(blocking_call *call)
{
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 10;
    int canceled;
    pthread_mutex_lock(&call->lock);
    while (!call->canceled)
        if (pthread_cond_timedwait(&call->wake, &call->lock, &deadline) == ETIMEDOUT)
            break;
    canceled = call->canceled;
    pthread_mutex_unlock(&call->lock);
    return canceled;
}

static void *worker(void *p)
{
    worker_args *args = p;
    cc_op *op = NULL;
    cc_status st;

    args->ok = 0;
    st = cc_op_begin(args->channel, &op);
    if (st != CC_OK) {
        fprintf(stderr, "[worker]  cc_op_begin: %s\n", cc_status_str(st));
        return NULL;
    }
    printf("[worker]  operation begun\n");

    blocking_call *call = malloc(sizeof *call);
    if (!call || pthread_mutex_init(&call->lock, NULL) != 0 ||
        pthread_cond_init(&call->wake, NULL) != 0) {
        fprintf(stderr, "[worker]  out of memory\n");
        free(call);
        cc_op_end(op);
        return NULL;
    }
    call->canceled = 0;

    /* From here on the library owns `call`: it hands it to on_cancel (at
     * most once) and to on_free_state (exactly once, at cc_op_end).  Had the
     * operation been canceled already, on_cancel would run right inside this
     * call and the wait below would return at once: registering late is
     * never a missed cancellation. */
    st = cc_op_register_cancel(op, on_cancel, on_free_state, call);
    if (st != CC_OK) {
        /* A failed registration never calls free-state: we still own it. */
        fprintf(stderr, "[worker]  cc_op_register_cancel: %s\n", cc_status_str(st));
        pthread_cond_destroy(&call->wake);
        pthread_mutex_destroy(&call->lock);
        free(call);
        cc_op_end(op);
        return NULL;
    }
    printf("[worker]  cancel and free-state callbacks registered; blocking\n");
    fflush(stdout);

    pthread_mutex_lock(&g_ready_lock);
    g_ready = 1;
    pthread_cond_signal(&g_ready_cond);
    pthread_mutex_unlock(&g_ready_lock);

    int woken = long_blocking_call(call);
    printf("[worker]  blocking call returned: %s; canceled? %d\n",
           woken ? "woken by cancel" : "TIMED OUT", cc_op_is_canceled(op));

    /* Ending is the operation's completion: free-state runs here, on this
     * thread, so `call` must not be touched after this line. */
    st = cc_op_end(op);
    printf("[worker]  cc_op_end: %s\n", cc_status_str(st));
    fflush(stdout);
    args->ok = woken && st == CC_OK;
    return NULL;
}

static int step(const char *what, cc_status st)
{
    printf("[main]    %-28s %s\n", what, cc_status_str(st));
    fflush(stdout);
    return st == CC_OK;
}

int main(void)
{
    cc_host *host = NULL;
    cc_channel *channel = NULL;
    int ok = 1;

    printf("cancelcore %s: blocking service example\n", cc_version_string());

    if (!step("cc_host_create", cc_host_create(&host)))
        return EXIT_FAILURE;
    ok &= step("cc_host_open", cc_host_open(host));
    ok &= step("cc_channel_open", cc_channel_open(host, &channel));
    if (!ok) {
        cc_host_free(host);
        return EXIT_FAILURE;
    }

    worker_args args = {.channel = channel, .ok = 0};
    pthread_t t;
    if (pthread_create(&t, NULL, worker, &args) != 0) {
        cc_host_free(host);
        return EXIT_FAILURE;
    }

    /* Wait (bounded) until the worker is blocked, then give it a moment. */
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 5;
    pthread_mutex_lock(&g_ready_lock);
    while (!g_ready)
        if (pthread_cond_timedwait(&g_ready_cond, &g_ready_lock, &deadline) == ETIMEDOUT)
            break;
    pthread_mutex_unlock(&g_ready_lock);
    struct timespec moment = {0, 50 * 1000000L};
    nanosleep(&moment, NULL);

    /* The abort: every operation in flight is canceled with CC_HOST_ABORT,
     * their cancel callbacks run right here before it returns, and it does
     * not wait for the operations to finish (the worker does that). */
    ok &= step("cc_host_abort", cc_host_abort(host));
    ok &= cc_host_state(host) == CC_HOST_STATE_FAULTED;
    printf("[main]    host state after abort: %d (FAULTED = %d)\n",
           (int)cc_host_state(host), (int)CC_HOST_STATE_FAULTED);

    pthread_join(t, NULL);
    ok &= args.ok;

    /* Orderly teardown.  The abort came before the close, so close has
     * nothing to wait for and reports CC_OK; it moves FAULTED to CLOSED. */
    ok &= step("cc_channel_close", cc_channel_close(channel));
    ok &= step("cc_host_close", cc_host_close(host, -1));
    cc_host_free(host);
    printf("[main]    host freed\n");

    int cancels = atomic_load(&g_cancel_runs);
    int reason = atomic_load(&g_cancel_reason);
    int frees = atomic_load(&g_free_runs);
    printf("cancel ran %d time(s) with %s; free-state ran %d time(s)\n", cancels,
           reason_name((cc_reason)reason), frees);
    if (cancels != 1 || reason != CC_HOST_ABORT || frees != 1)
        ok = 0;
    printf("%s\n", ok ? "OK" : "FAILED");
    return ok ? EXIT_SUCCESS : EXIT_FAILURE;
}
