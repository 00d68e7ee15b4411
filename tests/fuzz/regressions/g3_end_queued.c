/* Reproducer, core bug g3_end_queued (found on main e081621, which fixed
 * watched_g3_queued and watched_end_queued; csrc/ not changed by the
 * fuzzer's author).
 *
 * One abort cancels a C operation A (registered) and a watched operation W
 * (not registered): A's callback runs first, W is queued for the batch.
 * A's callback registers on W -- G3 now runs W's user cancel in place
 * (RUN_USER inside the register call) and marks the queued run started
 * (ST_INVOKED), "so no end overtakes it meanwhile" -- and then ends W.  The
 * end is neither an overtake (the run counts as started) nor inside a
 * callback of W on this thread (cc_in_callback does not look at the queued
 * runs, cc_owns_queued would), so it waits for the run -- which is this
 * thread's own batch, delivered after A's callback returns: a self-deadlock
 * (G5 waits only for a cancel running on another thread; G11).  Expected:
 * the end is deferred (CC_END_DEFERRED; the queued CANCELED notice may still
 * come, then ENDED|FREE_DUE) or overtakes the queued notice (W's key handed
 * back at once) -- the lead's choice; anything but a hang.
 *
 * Exit status: 0 if the calls return, 1 if the bug is present (a deadlock,
 * cut by alarm() after 5 s). */
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

#include "cancelcore.h"

static int64_t g_w, g_end = 99;
static cc_status g_st = (cc_status)99;
static int g_run_user, g_ended;

static void binding(void *arg, const cc_notice *n, size_t count)
{
    (void)arg;
    for (size_t i = 0; i < count; i++) {
        g_run_user += (n[i].what & CC_NOTICE_RUN_USER) != 0;
        g_ended += (n[i].what & CC_NOTICE_ENDED) != 0;
    }
}

static void on_cancel(cc_reason reason, void *state)
{
    (void)reason;
    (void)state;
    g_st = cc_op_register_watched(g_w, 7, 1);
    g_end = cc_op_end_watched(g_w);
}

static void on_alarm(int sig)
{
    (void)sig;
    static const char msg[] = "g3_end_queued: DEADLOCK: cc_op_end_watched after a G3 run on "
                              "a watched op queued in this thread's batch never returned\n";
    (void)!write(2, msg, sizeof msg - 1);
    _exit(1);
}

int main(void)
{
    cc_host *host;
    cc_channel *ch;
    cc_op *a;
    if (cc_host_create(&host) || cc_host_open(host) || cc_channel_open(host, &ch)
        || cc_host_set_binding(host, binding, NULL) || cc_op_begin(ch, &a)
        || cc_op_register_cancel(a, on_cancel, NULL, NULL))
        return 2;
    g_w = cc_op_begin_watched(ch);
    if (g_w <= 0)
        return 2;
    signal(SIGALRM, on_alarm);
    alarm(5);
    cc_host_abort(host);
    alarm(0);
    int bad = g_st != CC_OK || g_run_user != 1 || !(g_end == 7 || (g_end == CC_END_DEFERRED && g_ended == 1));
    printf("register %s, RUN_USER %d, end %lld, ENDED %d\n", cc_status_str(g_st), g_run_user,
           (long long)g_end, g_ended);
    if (cc_op_end(a) != CC_OK)
        bad = 1;
    cc_host_free(host);
    printf("g3_end_queued: %s\n", bad ? "BUG PRESENT" : "ok");
    return bad;
}
