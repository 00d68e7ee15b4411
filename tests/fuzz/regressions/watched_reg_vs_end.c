/* Regression (was visit_race, whose function cc_op_visit_register_faults is
 * gone; now the watched form of g3_vs_end): one thread registers on a
 * watched operation (canceled before, or not) while another ends it.
 *
 * Whatever the order, the outcome must be one of the two sequential ones:
 *   register first: it returns CC_OK, and on a canceled operation the
 *     binding got RUN_USER (once, with the key) inside the register call
 *     (G3); the end hands back the key (its free-state is due, G4);
 *   end first: register fails with CC_E_INVALID_OPERATION (G10), RUN_USER
 *     never comes and the end returns CC_END_DONE.
 * And a canceled operation's binding is told CANCELED exactly once (the
 * channel fault runs before the race starts).
 *
 * Exit status: 0 if every round had a sequential outcome within argv[1]
 * seconds (default 3), 1 otherwise. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "cancelcore.h"

#define KEY 42

static atomic_llong g_op;
static atomic_int g_go, g_done, g_round;
static atomic_int g_run_user, g_canceled, g_in_register, g_run_user_inside;
static atomic_llong g_end_result;

static void binding(void *arg, const cc_notice *n, size_t count)
{
    (void)arg;
    for (size_t i = 0; i < count; i++) {
        if (n[i].op != atomic_load(&g_op))
            continue;
        if (n[i].what & CC_NOTICE_CANCELED)
            atomic_fetch_add(&g_canceled, 1);
        if (n[i].what & CC_NOTICE_RUN_USER) {
            atomic_fetch_add(&g_run_user, 1);
            if (n[i].user_key != KEY)
                printf("RUN_USER with key %lld\n", (long long)n[i].user_key);
            atomic_fetch_add(&g_run_user_inside, atomic_load(&g_in_register));
        }
    }
}

static void *ender(void *arg)
{
    (void)arg;
    for (int round = 1;; round++) {
        while (atomic_load(&g_go) < round)
            if (atomic_load(&g_done))
                return NULL;
        atomic_store(&g_end_result, cc_op_end_watched(atomic_load(&g_op)));
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
    double secs = argc > 1 ? atof(argv[1]) : 3.0, t0 = now();
    cc_host *host;
    if (cc_host_create(&host) || cc_host_set_binding(host, binding, NULL) || cc_host_open(host))
        return 2;
    pthread_t t;
    pthread_create(&t, NULL, ender, NULL);
    long rounds = 0, bad = 0, won = 0;
    for (int round = 1; now() - t0 < secs; round++) {
        cc_channel *ch;
        if (cc_channel_open(host, &ch))
            return 2;
        int64_t op = cc_op_begin_watched(ch);
        if (op <= 0)
            return 2;
        bool canceled = round & 1;
        atomic_store(&g_run_user, 0);
        atomic_store(&g_run_user_inside, 0);
        atomic_store(&g_canceled, 0);
        atomic_store(&g_op, op);
        if (canceled && cc_channel_fault(ch))
            return 2;
        atomic_store(&g_in_register, 1);
        atomic_store(&g_go, round); /* the other thread ends it, now */
        cc_status st = cc_op_register_watched(op, KEY, 1);
        atomic_store(&g_in_register, 0);
        while (atomic_load(&g_round) < round)
            ;
        rounds++;
        int64_t end = atomic_load(&g_end_result);
        int ru = atomic_load(&g_run_user), inside = atomic_load(&g_run_user_inside);
        int cn = atomic_load(&g_canceled);
        bool ok;
        if (st == CC_OK) {
            won++;
            ok = end == KEY && ru == (canceled ? 1 : 0) && inside == ru;
        } else {
            ok = st == CC_E_INVALID_OPERATION && end == CC_END_DONE && ru == 0;
        }
        ok = ok && cn == (canceled ? 1 : 0);
        if (!ok && ++bad <= 3)
            printf("round %d (%s): register %s, end %lld, RUN_USER %d (%d inside register), "
                   "CANCELED %d: no sequential order explains it\n",
                   round, canceled ? "canceled" : "not canceled", cc_status_str(st),
                   (long long)end, ru, inside, cn);
        cc_channel_close(ch);
    }
    atomic_store(&g_done, 1);
    pthread_join(t, NULL);
    cc_host_free(host);
    printf("watched_reg_vs_end: %ld rounds, %ld registrations won, %ld not sequential\n", rounds,
           won, bad);
    return bad ? 1 : 0;
}
