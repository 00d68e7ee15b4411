/* sync.h - the operating-system seam: the few primitives the core needs.
 *
 * Two backends implement it: POSIX threads (sync_posix.c) and Win32
 * (sync_win32.c: SRWLOCK, CONDITION_VARIABLE, InitOnceExecuteOnce, TlsAlloc,
 * QueryPerformanceCounter, VirtualAlloc).  No other core file includes an
 * OS header, so a port touches only this header and one backend.
 *
 * Every process-wide lock of the core lives behind this seam (the slot
 * pool's and the wait lock), so the POSIX backend can make them safe across
 * fork(): its pthread_atfork handlers take them before a fork and release
 * them in both processes afterwards.  A new process-wide lock belongs here
 * too, or a child forked while another thread held it would deadlock.
 */
#ifndef CC_SYNC_H
#define CC_SYNC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
/* Opaque stand-ins for SRWLOCK and CONDITION_VARIABLE (one pointer each,
 * zero meaning "unlocked"/"no waiters"), so that <windows.h> and its macros
 * stay out of every core file but the backend, which checks the sizes. */
typedef struct cc_mutex { void *opaque; } cc_mutex;
typedef struct cc_cond { void *opaque; } cc_cond;

int cc_mutex_init(cc_mutex *m);
void cc_mutex_destroy(cc_mutex *m);
void cc_mutex_lock(cc_mutex *m);
void cc_mutex_unlock(cc_mutex *m);
#else
#  include <pthread.h>

typedef pthread_mutex_t cc_mutex;
typedef pthread_cond_t cc_cond;

int cc_mutex_init(cc_mutex *m);
void cc_mutex_destroy(cc_mutex *m);

static inline void cc_mutex_lock(cc_mutex *m) { (void)pthread_mutex_lock(m); }
static inline void cc_mutex_unlock(cc_mutex *m) { (void)pthread_mutex_unlock(m); }
#endif

/* A thread-local variable: C11's keyword everywhere but MSVC.  (GCC for
 * mingw-w64 emulates it in libgcc, whose emutls then stands on the compiler's
 * thread library; the core's own per-thread state uses cc_tls_get/set.) */
#if defined(_MSC_VER) && !defined(__clang__)
#  define CC_THREAD_LOCAL __declspec(thread)
#else
#  define CC_THREAD_LOCAL _Thread_local
#endif

/* One pointer per thread: the head of the core's frame list (which
 * callbacks run on this thread now).  The frames live on their threads'
 * stacks, so nothing is left to free when a thread exits.  POSIX: a
 * CC_THREAD_LOCAL variable.  Win32: a TLS index (TlsAlloc, once), so the
 * mingw-w64 build, whose GCC would emulate _Thread_local in libgcc, needs
 * nothing but kernel32. */
#if defined(_WIN32)
void *cc_tls_get(void);
void cc_tls_set(void *p);
#else
extern CC_THREAD_LOCAL void *cc_tls_head;
static inline void *cc_tls_get(void) { return cc_tls_head; }
static inline void cc_tls_set(void *p) { cc_tls_head = p; }
#endif

/* Monotonic nanoseconds. */
int64_t cc_now_ns(void);

/* One process-wide lock and condition for the rare waits: cc_op_end waiting
 * for a cancel callback, close and free waiting for operations to end.  It
 * is never destroyed, so a thread that wakes a waiter touches no memory the
 * waiter may free once it wakes; its epoch counts wake-ups, so a waiter that
 * read the epoch before checking its condition cannot miss one. */
void cc_wait_lock(void);
void cc_wait_unlock(void);
/* Waits (wait lock held) until woken or deadline_ns (< 0: no deadline);
 * false once the deadline has passed.  May return true spuriously. */
bool cc_wait_until(int64_t deadline_ns);
/* Bumps the epoch and wakes every waiter (wait lock held). */
void cc_wake_all_locked(void);
/* The same, taking the lock. */
void cc_wake_all(void);
uint64_t cc_wait_epoch(void); /* wait lock held */

/* The slot pool's process-wide lock (handle.c); a leaf lock. */
void cc_pool_lock(void);
void cc_pool_unlock(void);

/* Zeroed, page-aligned memory for a chunk of slots; never freed.  NULL when
 * out of memory. */
void *cc_pages_alloc(size_t bytes);

#endif /* CC_SYNC_H */
