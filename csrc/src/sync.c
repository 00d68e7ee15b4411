/* sync.c - mutexes, monotonic time and the process-wide wait condition. */
#include "sync.h"

#include <time.h>

int cc_mutex_init(cc_mutex *m) { return pthread_mutex_init(m, NULL); }
void cc_mutex_destroy(cc_mutex *m) { (void)pthread_mutex_destroy(m); }

int64_t cc_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static pthread_mutex_t g_wait_mutex = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_wait_cond;
static pthread_once_t g_wait_once = PTHREAD_ONCE_INIT;
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

void cc_wait_lock(void)
{
    pthread_once(&g_wait_once, wait_cond_init);
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
