/* test_fork.c - the core's process-wide locks survive fork() (POSIX only).
 *
 * fork() copies only the calling thread.  While the parent's threads keep
 * the slot pool's lock and the wait lock/condition busy (operations begun
 * and ended in batches; a close that times out, so a thread sleeps on the
 * wait condition), the main thread forks again and again.  Each child
 * creates a host of its own, runs operations, aborts them, makes a close
 * time out and escalate, and exits 0 if every count is exact.  Without the
 * core's fork handlers a child inherits a lock held by a thread it does not
 * have, or a condition with waiters it does not have, and hangs: each child
 * has a deadline (an alarm, and the parent kills it after CHILD_LIMIT_S), so
 * a deadlock fails the test instead of hanging it.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cc_test.h"

#define ROUNDS 200
#define CHURNERS 2
#define CHILD_OPS 300           /* more than a channel caches: the pool is used */
#define CHILD_LIMIT_S 10

static atomic_int g_stop;

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_us(long us)
{
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000L};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
    }
}

/* ------------------------------------------------------------ callbacks */

typedef struct counts {
    atomic_int cancels, frees;
    cc_op *end_inside; /* the cancel callback ends this operation */
} counts;

static void on_cancel(cc_reason reason, void *state)
{
    (void)reason;
    counts *c = state;
    atomic_fetch_add(&c->cancels, 1);
    if (c->end_inside)
        (void)cc_op_end(c->end_inside);
}

static void on_free(void *state)
{
    counts *c = state;
    atomic_fetch_add(&c->frees, 1);
}

static cc_host *open_host(cc_channel **ch)
{
    cc_host *host = NULL;
    if (cc_host_create(&host) != CC_OK || cc_host_open(host) != CC_OK
        || cc_channel_open(host, ch) != CC_OK) {
        fprintf(stderr, "test_fork: cannot open a host\n");
        exit(EXIT_FAILURE);
    }
    return host;
}

/* ------------------------------------------------ the parent's threads */

/* Begins and ends operations in batches larger than a channel's cache, so
 * the pool's lock is taken and given back all the time. */
static void *churn(void *arg)
{
    (void)arg;
    cc_channel *ch;
    cc_host *host = open_host(&ch);
    counts c;
    memset(&c, 0, sizeof c);
    cc_op *ops[3 * 64];
    while (!atomic_load(&g_stop)) {
        unsigned n = 0;
        for (; n < sizeof ops / sizeof ops[0]; n++) {
            if (cc_op_begin(ch, &ops[n]) != CC_OK)
                break;
            (void)cc_op_register_cancel(ops[n], on_cancel, on_free, &c);
        }
        for (unsigned i = 0; i < n; i++)
            (void)cc_op_end(ops[i]);
    }
    cc_host_free(host);
    return NULL;
}

/* Sleeps on the wait condition most of the time: a close that waits for
 * an operation, times out, escalates to an abort whose callback ends it. */
static void *waiter(void *arg)
{
    (void)arg;
    while (!atomic_load(&g_stop)) {
        cc_channel *ch;
        cc_host *host = open_host(&ch);
        counts c;
        memset(&c, 0, sizeof c);
        cc_op *op;
        if (cc_op_begin(ch, &op) == CC_OK) {
            c.end_inside = op;
            (void)cc_op_register_cancel(op, on_cancel, on_free, &c);
        }
        (void)cc_host_close(host, 3);
        cc_host_free(host);
    }
    return NULL;
}

/* ------------------------------------------------------------ the child */

/* Everything a child checks; its exit status is the number of failures. */
static int child_main(void)
{
    alarm(CHILD_LIMIT_S); /* default action: killed, reported by the parent */
    int fails = 0;
#define EXPECT(cond)                                                        \
    do {                                                                    \
        if (!(cond)) {                                                      \
            fprintf(stderr, "test_fork child %d: %s:%d: %s\n", (int)getpid(), \
                    __FILE__, __LINE__, #cond);                             \
            fails++;                                                        \
        }                                                                   \
    } while (0)

    cc_channel *ch;
    cc_host *host = open_host(&ch);
    static cc_op *ops[CHILD_OPS];
    counts c;
    memset(&c, 0, sizeof c);
    for (int i = 0; i < CHILD_OPS; i++) {
        EXPECT(cc_op_begin(ch, &ops[i]) == CC_OK);
        EXPECT(cc_op_register_cancel(ops[i], on_cancel, on_free, &c) == CC_OK);
    }
    EXPECT(cc_host_abort(host) == CC_OK);
    EXPECT(atomic_load(&c.cancels) == CHILD_OPS);
    for (int i = 0; i < CHILD_OPS; i++)
        EXPECT(cc_op_end(ops[i]) == CC_OK);
    EXPECT(atomic_load(&c.frees) == CHILD_OPS);
    cc_host_free(host);

    /* A close that sleeps on the wait condition, times out, escalates, and
     * is woken by the end inside the abort's callback (a broadcast). */
    host = open_host(&ch);
    counts w;
    memset(&w, 0, sizeof w);
    cc_op *op;
    EXPECT(cc_op_begin(ch, &op) == CC_OK);
    w.end_inside = op;
    EXPECT(cc_op_register_cancel(op, on_cancel, on_free, &w) == CC_OK);
    EXPECT(cc_host_close(host, 5) == CC_E_TIMEOUT);
    EXPECT(atomic_load(&w.cancels) == 1);
    EXPECT(atomic_load(&w.frees) == 1);
    cc_host_free(host);
#undef EXPECT
    return fails;
}

/* ------------------------------------------------------------ the test */

static void test_fork_while_locks_busy(void)
{
    pthread_t threads[CHURNERS + 1];
    for (int i = 0; i < CHURNERS; i++)
        CHECK(pthread_create(&threads[i], NULL, churn, NULL) == 0);
    CHECK(pthread_create(&threads[CHURNERS], NULL, waiter, NULL) == 0);
    sleep_us(20000); /* let them get going */

    int ok = 0, hung = 0, failed = 0;
    unsigned seed = 12345;
    for (int round = 0; round < ROUNDS && !hung; round++) {
        seed = seed * 1103515245u + 12345u;
        sleep_us((long)(seed >> 16) % 2000); /* land at varied moments */
        fflush(NULL);
        pid_t pid = fork();
        if (pid < 0) {
            CHECK(pid >= 0);
            break;
        }
        if (pid == 0)
            _exit(child_main() ? 1 : 0);
        int status = 0;
        int64_t deadline = now_ms() + (CHILD_LIMIT_S + 2) * 1000;
        pid_t got;
        while ((got = waitpid(pid, &status, WNOHANG)) == 0 && now_ms() < deadline)
            sleep_us(1000);
        if (got == 0) {
            (void)kill(pid, SIGKILL);
            (void)waitpid(pid, &status, 0);
            hung++;
            fprintf(stderr, "round %d: the child did not finish (killed)\n", round);
        } else if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
            ok++;
        } else if (WIFSIGNALED(status) && WTERMSIG(status) == SIGALRM) {
            hung++;
            fprintf(stderr, "round %d: the child hung (deadlock after fork)\n", round);
        } else {
            failed++;
            fprintf(stderr, "round %d: the child failed (status %#x)\n", round, status);
        }
    }
    atomic_store(&g_stop, 1);
    for (int i = 0; i <= CHURNERS; i++)
        pthread_join(threads[i], NULL);
    printf("  %d children ok, %d hung, %d failed\n", ok, hung, failed);
    CHECK_EQ_U(hung, 0);
    CHECK_EQ_U(failed, 0);
    CHECK_EQ_U(ok, ROUNDS);
}

/* The parent's own use of the core after all those forks. */
static void test_parent_still_works(void)
{
    cc_channel *ch;
    cc_host *host = open_host(&ch);
    counts c;
    memset(&c, 0, sizeof c);
    cc_op *op;
    CHECK_ST(cc_op_begin(ch, &op), CC_OK);
    CHECK_ST(cc_op_register_cancel(op, on_cancel, on_free, &c), CC_OK);
    CHECK_ST(cc_host_abort(host), CC_OK);
    CHECK_ST(cc_op_end(op), CC_OK);
    CHECK_EQ_U(atomic_load(&c.cancels), 1);
    CHECK_EQ_U(atomic_load(&c.frees), 1);
    CHECK_ST(cc_host_close(host, 100), CC_OK);
    cc_host_free(host);
}

int main(void)
{
    /* The whole test is bounded too (a round takes milliseconds; the first
     * hung child ends the loop): SIGALRM's default action ends it. */
    alarm(300);
    RUN(test_fork_while_locks_busy);
    RUN(test_parent_still_works);
    return TEST_EXIT();
}
