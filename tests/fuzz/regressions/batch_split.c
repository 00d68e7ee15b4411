/* Regression: batched delivery past one batch.  The exact model
 * (fuzz_api.c) never has more than ten operations, so this checks what it
 * cannot: one abort of 150 watched operations (every other one registered,
 * a few C operations among them) reaches the binding in calls of at most 64
 * notices (so at least three calls), every operation told CANCELED exactly
 * once with CC_HOST_ABORT, RUN_USER exactly for the registered ones, with
 * their keys; the statistics agree (cancels_host_abort counts the notices
 * and the C callbacks, CC_STAT_USER_CANCELS_RUN the RUN_USER notices).
 *
 * Exit status: 0 if the contract holds, 1 if not. */
#include <stdio.h>
#include <string.h>

#include "cancelcore.h"

#define N 150
#define NC 5

static int64_t g_op[N];
static int g_canceled[N], g_run_user[N];
static int g_calls, g_bad, g_c_runs;

static int index_of(int64_t v)
{
    for (int i = 0; i < N; i++)
        if (g_op[i] == v)
            return i;
    return -1;
}

static void binding(void *arg, const cc_notice *n, size_t count)
{
    (void)arg;
    g_calls++;
    if (count < 1 || count > 64) {
        printf("a binding call with %zu notices (1 to 64)\n", count);
        g_bad = 1;
    }
    for (size_t k = 0; k < count; k++) {
        int i = index_of(n[k].op);
        if (i < 0 || (n[k].what >> 8) != CC_HOST_ABORT) {
            printf("notice for an unknown handle or with reason %lld\n", (long long)(n[k].what >> 8));
            g_bad = 1;
            continue;
        }
        g_canceled[i] += (n[k].what & CC_NOTICE_CANCELED) != 0;
        if (n[k].what & CC_NOTICE_RUN_USER) {
            g_run_user[i]++;
            if (n[k].user_key != 1000 + i) {
                printf("op %d: RUN_USER with key %lld\n", i, (long long)n[k].user_key);
                g_bad = 1;
            }
        }
    }
}

static void on_cancel(cc_reason reason, void *state)
{
    (void)reason;
    (void)state;
    g_c_runs++;
}

int main(void)
{
    cc_host *host;
    cc_channel *ch[3];
    if (cc_host_create(&host) || cc_host_set_binding(host, binding, NULL) || cc_host_open(host))
        return 2;
    for (int c = 0; c < 3; c++)
        if (cc_channel_open(host, &ch[c]))
            return 2;
    cc_op *cop[NC];
    for (int i = 0; i < N; i++) {
        g_op[i] = cc_op_begin_watched(ch[i % 3]);
        if (g_op[i] <= 0)
            return 2;
        if (i % 2 == 0 && cc_op_register_watched(g_op[i], 1000 + i, i % 4 == 0))
            return 2;
        if (i % 30 == 0) {
            if (cc_op_begin(ch[i % 3], &cop[i / 30])
                || cc_op_register_cancel(cop[i / 30], on_cancel, NULL, NULL))
                return 2;
        }
    }
    if (cc_host_abort(host))
        return 2;
    int users = 0;
    for (int i = 0; i < N; i++) {
        if (g_canceled[i] != 1 || g_run_user[i] != (i % 2 == 0)) {
            printf("op %d: CANCELED %d times, RUN_USER %d times\n", i, g_canceled[i],
                   g_run_user[i]);
            g_bad = 1;
        }
        users += g_run_user[i];
    }
    if (g_calls < (N + 63) / 64 || g_c_runs != NC) {
        printf("%d binding calls, %d C callbacks\n", g_calls, g_c_runs);
        g_bad = 1;
    }
    cc_stats st;
    if (cc_host_get_stats(host, &st) || st.cancels_host_abort != (uint64_t)(N + NC)
        || st.ops_canceled != (uint64_t)(N + NC)
        || cc_host_stat(host, CC_STAT_USER_CANCELS_RUN) != (uint64_t)users
        || cc_host_stat(host, CC_STAT_LATENCY_COUNT) != (uint64_t)(N + NC)) {
        printf("stats: cancels_host_abort %llu ops_canceled %llu user %llu latency count %llu\n",
               (unsigned long long)st.cancels_host_abort, (unsigned long long)st.ops_canceled,
               (unsigned long long)cc_host_stat(host, CC_STAT_USER_CANCELS_RUN),
               (unsigned long long)cc_host_stat(host, CC_STAT_LATENCY_COUNT));
        g_bad = 1;
    }
    for (int i = 0; i < N; i++) {
        int64_t r = cc_op_end_watched(g_op[i]);
        if (r != (i % 2 == 0 ? 1000 + i : CC_END_DONE)) {
            printf("op %d: end returned %lld\n", i, (long long)r);
            g_bad = 1;
        }
    }
    for (int k = 0; k < NC; k++)
        if (cc_op_end(cop[k]))
            g_bad = 1;
    if (cc_host_stat(host, CC_STAT_FREE_STATES_RUN) != (uint64_t)((N + 3) / 4)) {
        printf("free_states_run %llu\n",
               (unsigned long long)cc_host_stat(host, CC_STAT_FREE_STATES_RUN));
        g_bad = 1;
    }
    cc_host_free(host);
    printf("batch_split: %d binding calls for %d watched ops: %s\n", g_calls, N,
           g_bad ? "CONTRACT BROKEN" : "ok");
    return g_bad;
}
