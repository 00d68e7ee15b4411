/* Reproducer, core bug watched_end_queued (found by fuzz_api.c; csrc/ not
 * changed by the fuzzer's author).  The end form of watched_g3_queued.
 *
 * One abort cancels watched operations W1, W2 (registered or not) and a C
 * operation A (registered).  The canceller walks its list: a watched op met
 * before A is claimed for the batch (RUNNING|INVOKED) but the batch is only
 * delivered after the list is walked; A's C callback runs in between and
 * ends W1 and W2 (cc_op_end_watched).  Neither is inside a callback of this
 * thread, so the end waits for "the run on another thread" to return -- but
 * the run is this thread's own pending batch: a self-deadlock (G5 says an
 * end waits only for a cancel running on another thread; a queued run that
 * has not started is overtaken; G11: callbacks may call back without
 * deadlock).  Which of W1, W2 comes before A in the list is the core's
 * business, so both are tried; one that is overtaken must get no notice and
 * the end returns its key / CC_END_DONE.
 *
 * Exit status: 0 if the contract holds, 1 if the bug is present (a
 * deadlock, cut by alarm() after 5 s). */
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

#include "cancelcore.h"

static int64_t g_w[2];
static int64_t g_end[2] = {99, 99};

static void binding(void *arg, const cc_notice *n, size_t count)
{
    (void)arg;
    (void)n;
    (void)count;
}

static void on_cancel(cc_reason reason, void *state)
{
    (void)reason;
    (void)state;
    for (int i = 0; i < 2; i++)
        g_end[i] = cc_op_end_watched(g_w[i]);
}

static void on_alarm(int sig)
{
    (void)sig;
    static const char msg[] = "watched_end_queued: DEADLOCK: cc_op_end_watched on a watched "
                              "op queued in this thread's unsent batch never returned\n";
    (void)!write(2, msg, sizeof msg - 1);
    _exit(1);
}

int main(void)
{
    cc_host *host;
    cc_channel *ch;
    cc_op *a;
    if (cc_host_create(&host) || cc_host_open(host) || cc_channel_open(host, &ch)
        || cc_host_set_binding(host, binding, NULL))
        return 2;
    g_w[0] = cc_op_begin_watched(ch);
    if (g_w[0] <= 0 || cc_op_begin(ch, &a) || cc_op_register_cancel(a, on_cancel, NULL, NULL))
        return 2;
    g_w[1] = cc_op_begin_watched(ch);
    if (g_w[1] <= 0 || cc_op_register_watched(g_w[1], 9, 1))
        return 2;
    signal(SIGALRM, on_alarm);
    alarm(5);
    cc_host_abort(host);
    alarm(0);
    int bad = g_end[0] != CC_END_DONE || g_end[1] != 9;
    if (bad)
        printf("ends returned %lld and %lld (wanted %d and 9)\n", (long long)g_end[0],
               (long long)g_end[1], CC_END_DONE);
    if (cc_op_end(a) != CC_OK)
        bad = 1;
    cc_host_free(host);
    printf("watched_end_queued: %s\n", bad ? "BUG PRESENT" : "ok");
    return bad;
}
