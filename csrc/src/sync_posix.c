/* sync_posix.c - the POSIX backend of sync.h: pthreads, CLOCK_MONOTONIC,
 * mmap, and fork handlers for the process-wide locks. */
#include "sync.h"

#include <string.h>
#include <sys/mman.h>
#include <time.h>

int cc_mutex_init(cc_mutex *m) { return pthread_mutex_init(m, NULL); }
void cc_mutex_destroy(cc_mutex *m) { (void)pthread_mutex_destroy(m); }

CC_THREAD_LOCAL void *cc_tls_head;

int64_t cc_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void *cc_pages_alloc(size_t bytes)
{
    /* Page-granular: malloc would add a header page to every 256 KiB chunk,
     * and slots must stay cache-line aligned. */
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

/* ------------------------------------------------ the process-wide locks */

static pthread_mutex_t g_pool_mutex = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t g_wait_mutex = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_wait_cond;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static uint64_t g_wait_epoch;

/* Timed waits measure monotonic time, immune to wall-clock jumps. */
static void wait_cond_init(void)
{
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&g_wait_cond, &attr);
    pthread_condattr_destroy(&attr);
}

/* fork() copies only the calling thread.  A lock another thread held at
 * that moment would stay locked forever in the child, and the condition
 * would still count waiters that do not exist there (POSIX leaves a
 * condition with waiters undefined to reuse).  So the forking thread takes both locks first,
 * which also means no thread is inside the pool or the wait lock while the
 * address space is copied; the parent simply releases them; the child
 * releases them and gives the condition a fresh start.  The two locks never
 * nest elsewhere (both are leaves), so taking them together cannot
 * deadlock. */
static void fork_prepare(void)
{
    pthread_mutex_lock(&g_wait_mutex);
    pthread_mutex_lock(&g_pool_mutex);
}

static void fork_parent(void)
{
    pthread_mutex_unlock(&g_pool_mutex);
    pthread_mutex_unlock(&g_wait_mutex);
}

static void fork_child(void)
{
    pthread_mutex_unlock(&g_pool_mutex);
    /* Waiters of the parent's threads are gone: start from a blank
     * condition (the old one cannot be destroyed with "waiters" on it). */
    memset(&g_wait_cond, 0, sizeof g_wait_cond);
    wait_cond_init();
    /* Anyone still waiting on the epoch lives in the parent. */
    pthread_mutex_unlock(&g_wait_mutex);
}

static void sync_init(void)
{
    wait_cond_init();
    (void)pthread_atfork(fork_prepare, fork_parent, fork_child);
}

/* Run at load, while the process is still single-threaded for all the
 * library can tell, so no fork can split the one-time set-up.  The
 * pthread_once calls below only cover compilers without constructors and
 * calls from other constructors. */
#if defined(__GNUC__) || defined(__clang__)
__attribute__((constructor)) static void sync_load(void) { pthread_once(&g_once, sync_init); }
#endif

void cc_pool_lock(void)
{
    pthread_once(&g_once, sync_init);
    pthread_mutex_lock(&g_pool_mutex);
}

void cc_pool_unlock(void) { pthread_mutex_unlock(&g_pool_mutex); }

void cc_wait_lock(void)
{
    pthread_once(&g_once, sync_init);
    pthread_mutex_lock(&g_wait_mutex);
}

void cc_wait_unlock(void) { pthread_mutex_unlock(&g_wait_mutex); }

uint64_t cc_wait_epoch(void) { return g_wait_epoch; }

bool cc_wait_until(int64_t deadline_ns)
{
    if (deadline_ns < 0) {
        pthread_cond_wait(&g_wait_cond, &g_wait_mutex);
        return true;
    }
    if (cc_now_ns() >= deadline_ns)
        return false;
    struct timespec ts;
    ts.tv_sec = (time_t)(deadline_ns / 1000000000);
    ts.tv_nsec = (long)(deadline_ns % 1000000000);
    pthread_cond_timedwait(&g_wait_cond, &g_wait_mutex, &ts);
    return true;
}

void cc_wake_all_locked(void)
{
    g_wait_epoch++;
    pthread_cond_broadcast(&g_wait_cond);
}

void cc_wake_all(void)
{
    cc_wait_lock();
    cc_wake_all_locked();
    cc_wait_unlock();
}
