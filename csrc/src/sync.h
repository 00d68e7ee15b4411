/* sync.h - the few threading primitives the core needs, over pthreads.
 * One seam for a port: a Win32 build would map these onto SRWLOCK and
 * CONDITION_VARIABLE. */
#ifndef CC_SYNC_H
#define CC_SYNC_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

typedef pthread_mutex_t cc_mutex;
typedef pthread_cond_t cc_cond;

int cc_mutex_init(cc_mutex *m);
void cc_mutex_destroy(cc_mutex *m);

static inline void cc_mutex_lock(cc_mutex *m) { (void)pthread_mutex_lock(m); }
static inline void cc_mutex_unlock(cc_mutex *m) { (void)pthread_mutex_unlock(m); }

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
 * false once the deadline has passed. */
bool cc_wait_until(int64_t deadline_ns);
/* Bumps the epoch and wakes every waiter (wait lock held). */
void cc_wake_all_locked(void);
/* The same, taking the lock. */
void cc_wake_all(void);
uint64_t cc_wait_epoch(void); /* wait lock held */

#endif /* CC_SYNC_H */
