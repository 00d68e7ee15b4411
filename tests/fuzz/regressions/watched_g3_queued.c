/* Reproducer, core bug watched_g3_queued (found while bringing the fuzzer up
 * to the binding API; csrc/ not changed by the fuzzer's author).
 *
 * One abort cancels a C operation A (registered) and a watched operation W
 * (begun, not registered).  The canceller runs A's C callback first and
 * holds W's run (RUNNING, claimed with the mark) for the binding batch it
 * delivers after the C callbacks.  A's callback registers on W: W is
 * canceled, so G3 wants the binding told CC_NOTICE_RUN_USER inside that
 * cc_op_register_watched call.  The core's cc_st_arm sees W's run owned by
 * a run that is not in this thread's frames and waits for it to end
 * (cc_st_wait_not_running) -- but that run is this very thread's, after
 * the callback returns: a self-deadlock (G3, G11: "callbacks may call back
 * into the library ... without deadlock").
 *
 * Exit status: 0 if the contract holds, 1 if the bug is present (a
 * deadlock, cut by alarm() after 5 s, or a wrong outcome). */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cancelcore.h"

static int64_t g_w;
static cc_status g_st = (cc_status)99;
static int g_canceled, g_run_user, g_run_user_in_register, g_in_register;

static void binding(void *arg, const cc_notice *n, size_t count)
{
    (void)arg;
    for (size_t i = 0; i < count; i++) {
        if (n[i].op != g_w)
            continue;
        if (n[i].what & CC_NOTICE_CANCELED)
            g_canceled++;
        if (n[i].what & CC_NOTICE_RUN_USER) {
            g_run_user++;
            g_run_user_in_register += g_in_register;
        }
    }
}

static void on_cancel(cc_reason reason, void *state)
{
    (void)reason;
    (void)state;
    g_in_register = 1;
    g_st = cc_op_register_watched(g_w, 7, 0);
    g_in_register = 0;
}

static void on_alarm(int sig)
{
    (void)sig;
    static const char msg[] = "watched_g3_queued: DEADLOCK: cc_op_register_watched on a "
                              "watched op queued for this thread's batch never returned\n";
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
        || cc_op_register_cancel(a, on_cancel, NULL, NULL)) {
        fprintf(stderr, "set-up failed\n");
        return 2;
    }
    g_w = cc_op_begin_watched(ch);
    if (g_w <= 0) {
        fprintf(stderr, "cc_op_begin_watched failed\n");
        return 2;
    }
    signal(SIGALRM, on_alarm);
    alarm(5);
    cc_host_abort(host);
    alarm(0);
    int bad = 0;
    if (g_st != CC_OK) {
        printf("cc_op_register_watched returned %s, not CC_OK (G3)\n", cc_status_str(g_st));
        bad = 1;
    }
    if (g_run_user != 1 || g_run_user_in_register != 1) {
        printf("RUN_USER %d times, %d inside the register call (G3 wants 1 and 1)\n",
               g_run_user, g_run_user_in_register);
        bad = 1;
    }
    if (g_canceled != 1) {
        printf("CANCELED told %d times (wanted 1)\n", g_canceled);
        bad = 1;
    }
    if (cc_op_end(a) != CC_OK || cc_op_end_watched(g_w) != 7) {
        printf("ending the two operations failed\n");
        bad = 1;
    }
    cc_host_free(host);
    printf("watched_g3_queued: %s\n", bad ? "BUG PRESENT" : "ok");
    return bad;
}
