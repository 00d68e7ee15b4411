/* sync_win32.c - the Win32 backend of sync.h: SRWLOCK, CONDITION_VARIABLE,
 * InitOnceExecuteOnce, a TLS index, QueryPerformanceCounter and
 * VirtualAlloc.  Only kernel32 primitives: nothing here goes through a
 * pthreads emulation.  Windows has no fork(), so no fork handlers either. */
#ifndef WIN32_LEAN_AND_MEAN
#  define WIN32_LEAN_AND_MEAN
#endif
#ifndef NOMINMAX
#  define NOMINMAX
#endif
#include <windows.h>

#include <stdatomic.h>
#include <stdlib.h>

#include "sync.h"

/* sync.h's opaque types stand in for these: same size, and all-zero is the
 * initial state of both (SRWLOCK_INIT, CONDITION_VARIABLE_INIT). */
_Static_assert(sizeof(cc_mutex) == sizeof(SRWLOCK), "cc_mutex is an SRWLOCK");
_Static_assert(sizeof(cc_cond) == sizeof(CONDITION_VARIABLE),
               "cc_cond is a CONDITION_VARIABLE");

static SRWLOCK *srw(cc_mutex *m) { return (SRWLOCK *)(void *)m; }

int cc_mutex_init(cc_mutex *m)
{
    InitializeSRWLock(srw(m));
    return 0;
}

/* An SRWLOCK owns no kernel object: nothing to release. */
void cc_mutex_destroy(cc_mutex *m) { (void)m; }

void cc_mutex_lock(cc_mutex *m) { AcquireSRWLockExclusive(srw(m)); }
void cc_mutex_unlock(cc_mutex *m) { ReleaseSRWLockExclusive(srw(m)); }

/* ------------------------------------------------------------------- TLS */

static INIT_ONCE g_tls_once = INIT_ONCE_STATIC_INIT;
static atomic_bool g_tls_ready; /* g_tls_index is set */
static DWORD g_tls_index;

static BOOL CALLBACK tls_init(PINIT_ONCE once, PVOID param, PVOID *context)
{
    (void)once;
    (void)param;
    (void)context;
    g_tls_index = TlsAlloc();
    /* Only when a process has used up all of its TLS indexes (over a
     * thousand): without the frame list an end from inside its own
     * callback would wait for itself, so stop here rather than hang. */
    if (g_tls_index == TLS_OUT_OF_INDEXES)
        abort();
    atomic_store_explicit(&g_tls_ready, true, memory_order_release);
    return TRUE;
}

/* No index yet means no thread ever pushed a frame: the list is empty.
 * (TlsGetValue is a few loads from the thread's TEB, no system call.) */
void *cc_tls_get(void)
{
    return atomic_load_explicit(&g_tls_ready, memory_order_acquire) ? TlsGetValue(g_tls_index)
                                                                    : NULL;
}

void cc_tls_set(void *p)
{
    if (!atomic_load_explicit(&g_tls_ready, memory_order_acquire))
        InitOnceExecuteOnce(&g_tls_once, tls_init, NULL, NULL);
    (void)TlsSetValue(g_tls_index, p);
}

/* ------------------------------------------------------------------ time */

static INIT_ONCE g_qpc_once = INIT_ONCE_STATIC_INIT;
static LONGLONG g_qpc_freq; /* ticks per second, fixed at boot */

static BOOL CALLBACK qpc_init(PINIT_ONCE once, PVOID param, PVOID *context)
{
    (void)once;
    (void)param;
    (void)context;
    LARGE_INTEGER f;
    QueryPerformanceFrequency(&f); /* cannot fail since Windows XP */
    g_qpc_freq = f.QuadPart;
    return TRUE;
}

int64_t cc_now_ns(void)
{
    InitOnceExecuteOnce(&g_qpc_once, qpc_init, NULL, NULL);
    LARGE_INTEGER c;
    QueryPerformanceCounter(&c);
    /* Whole seconds and the remainder apart: ticks * 1e9 would overflow
     * after about 15 minutes of uptime at a 10 MHz counter. */
    int64_t ticks = c.QuadPart, f = g_qpc_freq;
    return ticks / f * 1000000000 + ticks % f * 1000000000 / f;
}

void *cc_pages_alloc(size_t bytes)
{
    /* Page-granular and zeroed, like mmap: slots stay cache-line aligned. */
    return VirtualAlloc(NULL, bytes, MEM_COMMIT | MEM_RESERVE, PAGE_READWRITE);
}

/* ------------------------------------------------ the process-wide locks */

static SRWLOCK g_pool_lock = SRWLOCK_INIT;
static SRWLOCK g_wait_lock = SRWLOCK_INIT;
static CONDITION_VARIABLE g_wait_cond = CONDITION_VARIABLE_INIT;
static uint64_t g_wait_epoch;

void cc_pool_lock(void) { AcquireSRWLockExclusive(&g_pool_lock); }
void cc_pool_unlock(void) { ReleaseSRWLockExclusive(&g_pool_lock); }

void cc_wait_lock(void) { AcquireSRWLockExclusive(&g_wait_lock); }
void cc_wait_unlock(void) { ReleaseSRWLockExclusive(&g_wait_lock); }

uint64_t cc_wait_epoch(void) { return g_wait_epoch; }

bool cc_wait_until(int64_t deadline_ns)
{
    DWORD ms = INFINITE;
    if (deadline_ns >= 0) {
        int64_t left = deadline_ns - cc_now_ns();
        if (left <= 0)
            return false;
        /* Round up, or a wait of under a millisecond would spin at 0 ms;
         * cap below INFINITE: a far deadline just wakes up to look again. */
        int64_t left_ms = (left + 999999) / 1000000;
        ms = left_ms >= (int64_t)INFINITE ? INFINITE - 1 : (DWORD)left_ms;
    }
    /* A timeout (FALSE, ERROR_TIMEOUT) is not reported here: the caller
     * re-checks its condition and calls again, which then sees the
     * deadline passed.  Wake-ups may be spurious, as sync.h allows. */
    (void)SleepConditionVariableSRW(&g_wait_cond, &g_wait_lock, ms, 0);
    return true;
}

void cc_wake_all_locked(void)
{
    g_wait_epoch++;
    WakeAllConditionVariable(&g_wait_cond);
}

void cc_wake_all(void)
{
    cc_wait_lock();
    cc_wake_all_locked();
    cc_wait_unlock();
}
