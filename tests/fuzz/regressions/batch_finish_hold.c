/* Reproducer, core bug batch_finish_hold (found by fuzz_api.c; csrc/ not
 * changed by the fuzzer's author).
 *
 * An abort hands two registered watched operations to the binding in one
 * batch.  The binding runs the first one's user callback, which ends it
 * (CC_END_DEFERRED: inside its own batch).  When the batch returns, the
 * core (deliver -> after_run) finishes that operation -- its ENDED|FREE_DUE
 * notice, where the binding runs the free-state -- while the second
 * operation of the batch still holds its run (RUNNING|INVOKED, dropped only
 * by the next after_run).  The free-state ends the second operation: not
 * inside any callback of this thread any more, the end waits for a run "on
 * another thread" that this very thread would drop next: a self-deadlock
 * (G5: the batch has returned; G11).
 *
 * Exit status: 0 if the contract holds, 1 if the bug is present (a
 * deadlock, cut by alarm() after 5 s). */
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

#include "cancelcore.h"

static int64_t g_w[2];
static int64_t g_first = -1, g_end_other = 99;

static void binding(void *arg, const cc_notice *n, size_t count)
{
    (void)arg;
    if (count == 2 && (n[0].what & CC_NOTICE_RUN_USER)) {
        g_first = n[0].op;
        int64_t r = cc_op_end_watched(n[0].op); /* inside its batch: deferred */
        if (r != CC_END_DEFERRED)
            printf("end inside the batch returned %lld\n", (long long)r);
    } else if (count == 1 && (n[0].what & CC_NOTICE_ENDED) && n[0].op == g_first) {
        /* The first one's free-state: end its batch-mate (the batch returned). */
        g_end_other = cc_op_end_watched(g_w[0] == g_first ? g_w[1] : g_w[0]);
    }
}

static void on_alarm(int sig)
{
    (void)sig;
    static const char msg[] = "batch_finish_hold: DEADLOCK: ending a batch-mate from the "
                              "free-state of a deferred end never returned\n";
    (void)!write(2, msg, sizeof msg - 1);
    _exit(1);
}

int main(void)
{
    cc_host *host;
    cc_channel *ch;
    if (cc_host_create(&host) || cc_host_open(host) || cc_channel_open(host, &ch)
        || cc_host_set_binding(host, binding, NULL))
        return 2;
    for (int i = 0; i < 2; i++) {
        g_w[i] = cc_op_begin_watched(ch);
        if (g_w[i] <= 0 || cc_op_register_watched(g_w[i], 10 + i, 1))
            return 2;
    }
    signal(SIGALRM, on_alarm);
    alarm(5);
    cc_host_abort(host);
    alarm(0);
    int64_t other_key = g_w[0] == g_first ? 11 : 10;
    int bad = g_first < 0 || g_end_other != other_key;
    if (bad)
        printf("the batch-mate's end returned %lld (wanted its key %lld)\n",
               (long long)g_end_other, (long long)other_key);
    cc_host_free(host);
    printf("batch_finish_hold: %s\n", bad ? "BUG PRESENT" : "ok");
    return bad;
}
