/*
 * cancelcore.h - call cancellation for server-side operations.
 *
 * The call-cancellation model of the Windows Web Services API, portably:
 * a service host runs operations on channels; an operation may register a
 * cancel callback, fired at most once when the host is aborted or the
 * operation's channel faults, and a free-state callback, fired exactly once
 * when the operation ends.
 *
 * The guarantees (each function below names the ones it upholds)
 *   G1  The cancel callback runs at most once per operation, whatever races
 *       (abort vs. channel fault vs. completion vs. registration).
 *   G2  Only the first registration on an operation succeeds; a second one
 *       fails with CC_E_INVALID_OPERATION, the first stays in force and the
 *       second free-state callback is never called (its caller still owns
 *       that state).
 *   G3  If the operation is already canceled when it registers, the cancel
 *       callback runs synchronously inside the register call, on the
 *       caller's thread, with the original reason, and register returns
 *       CC_OK.
 *   G4  The free-state callback runs exactly once after a successful
 *       registration that gave one, when the operation ends, whether or not
 *       cancel ran.  It never runs when registration failed.
 *   G5  A cancel callback that started happens-before free-state: they never
 *       overlap, and no cancel starts after the end began.  Ending an
 *       operation whose cancel callback runs on another thread waits for it
 *       to return; ending it from inside its own cancel callback does not
 *       deadlock: free-state runs after that callback returns.
 *   G6  Two reasons, numbered as in WWSAPI: CC_HOST_ABORT = 0,
 *       CC_CHANNEL_FAULTED = 1.  The first trigger that reaches an operation
 *       decides its reason.
 *   G7  Abort cancels every operation in flight on the host, moves OPEN to
 *       FAULTED, and does not wait for operations to end.  It is accepted in
 *       every state and is idempotent.
 *   G8  Close stops new channels and operations, fires no cancel callback by
 *       itself, and waits for the operations in flight up to the close
 *       timeout (5 s by default); then it aborts the host (cancels fire with
 *       CC_HOST_ABORT) and goes on waiting for them to end.  OPEN or FAULTED
 *       -> CLOSING -> CLOSED.
 *   G9  A channel fault cancels that channel's operations only, with
 *       CC_CHANNEL_FAULTED; the host stays OPEN; the faulted channel accepts
 *       no new operation.
 *   G10 An operation handle is valid only until its end begins.  Any later
 *       use (register, end twice, read) is CC_E_INVALID_OPERATION, never
 *       undefined behaviour: handles carry a generation and are checked.
 *   G11 No callback ever runs while the library holds one of its locks, so
 *       callbacks may call back into the library (register, end, fault,
 *       abort) without deadlock.
 *   G12 Host states are numbered as WWSAPI's: CREATED 0, OPENING 1, OPEN 2,
 *       CLOSING 3, CLOSED 4, FAULTED 5; open: CREATED -> OPEN; close:
 *       OPEN/FAULTED -> CLOSED; abort: OPEN -> FAULTED, CREATED, FAULTED and
 *       CLOSED unchanged, CLOSING finishes as CLOSED; reset: CLOSED/CREATED
 *       -> CREATED.  Anything else is CC_E_INVALID_OPERATION.
 *   G13 A failure inside a user callback never escapes into the library,
 *       never stops the other callbacks of an abort, and never breaks
 *       G1-G5.  (C callbacks cannot fail; bindings report their users'
 *       errors with cc_host_report_callback_error.)
 *
 * Conventions
 *   - Every function returns a cc_status (CC_OK or a negative error) except
 *     the simple getters, which say what they return for a bad handle.
 *   - Argument checks come first: a NULL handle or pointer, or a bad value,
 *     is CC_E_INVALID_ARG whatever the object's state.
 *   - Handles are opaque.  A cc_op is valid from cc_op_begin until its
 *     cc_op_end begins.  A cc_op passed back after that (ended, or its slot
 *     reused by another operation) is answered with CC_E_INVALID_OPERATION
 *     (G10).  The one exception is the thread running the operation's own
 *     cancel callback: there the handle stays readable until the callback
 *     returns, though an end already began elsewhere.  A slot whose
 *     generation would wrap is retired, so a stale handle never names a live
 *     operation.
 *   - cc_host and cc_channel handles are pointers: after cc_host_free /
 *     cc_channel_close they must not be used again.
 *   - All functions are thread-safe unless stated otherwise.
 *   - "Inside an operation's callback" means on the thread that runs its
 *     cancel callback, its free-state callback or its registration, at any
 *     depth of nesting; other threads are never inside it.
 *
 * Threads: callbacks run on whichever thread triggered them: the thread
 * calling cc_host_abort, cc_channel_fault, cc_host_close (when its timeout
 * escalates), cc_op_register_cancel (G3), or cc_op_end (free-state, and the
 * fault plan's CC_FAULT_AT_END).
 */
#ifndef CANCELCORE_H
#define CANCELCORE_H

#include <stddef.h>
#include <stdint.h>

#define CC_VERSION_MAJOR 0
#define CC_VERSION_MINOR 1
#define CC_VERSION_PATCH 0
#define CC_VERSION_NUMBER \
    (CC_VERSION_MAJOR * 10000 + CC_VERSION_MINOR * 100 + CC_VERSION_PATCH)
#define CC_VERSION_STRING "0.1.0"

/* CC_API marks the public symbols; everything else is hidden. */
#if defined(_WIN32) && defined(CC_SHARED_LIBRARY)
#  ifdef CC_BUILDING_LIBRARY
#    define CC_API __declspec(dllexport)
#  else
#    define CC_API __declspec(dllimport)
#  endif
#elif defined(__GNUC__) || defined(__clang__)
#  define CC_API __attribute__((visibility("default")))
#else
#  define CC_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- types */

typedef struct cc_host cc_host;       /* a service host */
typedef struct cc_channel cc_channel; /* a channel (connection) of a host */
typedef struct cc_op cc_op;           /* an operation context (generation-checked) */

/* The statuses, as one list: X(name, value, meaning).  cc_status_str and
 * the bindings read their names from here. */
#define CC_STATUS_LIST(X)                                                      \
    X(CC_OK, 0, "success")                                                     \
    X(CC_E_INVALID_ARG, -1, "NULL handle or pointer, or a bad value")         \
    X(CC_E_INVALID_OPERATION, -2, "wrong state, stale operation, second registration") \
    X(CC_E_OBJECT_FAULTED, -3, "the host or channel is faulted")              \
    X(CC_E_OPERATION_ABORTED, -4, "close finished, but the host was aborted meanwhile") \
    X(CC_E_NOMEM, -5, "out of memory (or injected by the fault plan)")        \
    X(CC_E_TIMEOUT, -6, "close timed out and aborted the host (it is CLOSED)")

#define CC_STATUS_ENUM_(name, value, meaning) name = value,
typedef enum cc_status { CC_STATUS_LIST(CC_STATUS_ENUM_) CC_STATUS_END_ = 1 } cc_status;
#undef CC_STATUS_ENUM_

/* Why an operation was canceled (G6); numbered as WWSAPI's WS_SERVICE_CANCEL_REASON. */
typedef enum cc_reason {
    CC_REASON_INVALID = -2,  /* cc_op_reason on a stale or NULL handle */
    CC_NOT_CANCELED = -1,
    CC_HOST_ABORT = 0,
    CC_CHANNEL_FAULTED = 1
} cc_reason;

/* Host states, numbered as WWSAPI's WS_SERVICE_HOST_STATE (G12).  The
 * getter cc_host_state() takes the plain name, so the type is spelled
 * `enum cc_host_state` (C has one namespace for typedefs and functions). */
enum cc_host_state {
    CC_HOST_STATE_CREATED = 0,
    CC_HOST_STATE_OPENING = 1,
    CC_HOST_STATE_OPEN = 2,
    CC_HOST_STATE_CLOSING = 3,
    CC_HOST_STATE_CLOSED = 4,
    CC_HOST_STATE_FAULTED = 5,
    CC_HOST_STATE_INVALID = -1   /* cc_host_state(NULL) */
};

/* Channel states, numbered as WWSAPI's WS_CHANNEL_STATE (the ones used);
 * spelled `enum cc_channel_state` for the same reason. */
enum cc_channel_state {
    CC_CHANNEL_STATE_OPEN = 3,
    CC_CHANNEL_STATE_FAULTED = 4,
    CC_CHANNEL_STATE_CLOSED = 6,   /* its host was closed; only cc_channel_close remains */
    CC_CHANNEL_STATE_INVALID = -1  /* cc_channel_state(NULL) */
};

/* The cancel callback: runs at most once per operation (G1), never after
 * its free-state callback started (G5). */
typedef void (*cc_cancel_fn)(cc_reason reason, void *state);
/* The free-state callback: runs exactly once, when the operation ends (G4). */
typedef void (*cc_free_state_fn)(void *state);

/* ------------------------------------------------------------- versions */

/* CC_VERSION_NUMBER and CC_VERSION_STRING of the library actually linked. */
CC_API unsigned cc_version_number(void);
CC_API const char *cc_version_string(void);

/* The name of a status ("CC_E_TIMEOUT"); "CC_E_UNKNOWN" for other values. */
CC_API const char *cc_status_str(cc_status status);

/* ----------------------------------------------------------------- host */

/* Creates a host in CREATED with a close timeout of 5000 ms.
 * CC_E_INVALID_ARG if out is NULL; CC_E_NOMEM. */
CC_API cc_status cc_host_create(cc_host **out);

/* CREATED -> OPEN (G12).  Any other state: CC_E_INVALID_OPERATION. */
CC_API cc_status cc_host_open(cc_host *host);

/* OPEN or FAULTED -> CLOSING -> CLOSED (G8).  Refuses new channels and
 * operations, fires no cancel callback by itself, and waits (on a condition)
 * for the operations in flight to end, free-state callbacks included.
 * timeout_ms < 0 uses the host's close timeout.  When the timeout expires the
 * host aborts itself (cancels fire with CC_HOST_ABORT) and close goes on
 * waiting for completion.  Returns, the host being CLOSED in all three cases:
 *   CC_OK                   every operation ended within the timeout;
 *   CC_E_TIMEOUT            the timeout expired and close aborted the host;
 *   CC_E_OPERATION_ABORTED  cc_host_abort was called during the close (and
 *                           the timeout did not expire: when both happen,
 *                           CC_E_TIMEOUT).
 * A timeout too large to add to the clock waits without a deadline.
 * Any other state: CC_E_INVALID_OPERATION.  So is a call from inside a
 * callback of one of this host's operations, which could never finish. */
CC_API cc_status cc_host_close(cc_host *host, int64_t timeout_ms);

/* Cancels every operation in flight on the host with CC_HOST_ABORT (their
 * cancel callbacks run on this thread before it returns) and does not wait
 * for them to end (G7).  Accepted in every state and idempotent: OPEN ->
 * FAULTED; CLOSING stays CLOSING (the close ends CLOSED); other states are
 * unchanged (G12).  Safe from inside a callback (G11). */
CC_API cc_status cc_host_abort(cc_host *host);

/* CLOSED or CREATED -> CREATED, so the host can be opened again (G12).
 * Any other state: CC_E_INVALID_OPERATION. */
CC_API cc_status cc_host_reset(cc_host *host);

/* Frees the host and every channel it still has.  A host that still has
 * operations in flight is aborted first and freed once they have ended (so
 * this waits for their owners to call cc_op_end).  NULL is ignored.  No
 * other call on this host, its channels or operations may be in progress or
 * follow, except that the callbacks this abort runs, and the owners of the
 * operations, may read and end those operations (and only that). */
CC_API void cc_host_free(cc_host *host);

/* The host's state; CC_HOST_STATE_INVALID for NULL.  One atomic load. */
CC_API enum cc_host_state cc_host_state(const cc_host *host);

/* The close timeout used by cc_host_close(host, -1): >= 0 ms.
 * CC_E_INVALID_ARG for NULL or a negative value. */
CC_API cc_status cc_host_set_close_timeout(cc_host *host, int64_t timeout_ms);
CC_API int64_t cc_host_close_timeout(const cc_host *host); /* -1 for NULL */

/* -------------------------------------------------------------- channel */

/* Opens a channel on an OPEN host (a connection that operations run on).
 * CC_E_OBJECT_FAULTED if the host is FAULTED; CC_E_INVALID_OPERATION in
 * any other state but OPEN; CC_E_NOMEM. */
CC_API cc_status cc_channel_open(cc_host *host, cc_channel **out);

/* Faults the channel: OPEN -> FAULTED.  Cancels the channel's operations in
 * flight with CC_CHANNEL_FAULTED (their callbacks run on this thread before
 * it returns); the host stays OPEN and the channel accepts no new operation
 * (G9).  Idempotent on a FAULTED channel; CC_E_INVALID_OPERATION on a
 * channel whose host was closed.  Safe from inside a callback (G11). */
CC_API cc_status cc_channel_fault(cc_channel *channel);

/* Releases the channel handle.  Operations still in flight on it are not
 * canceled: they go on, can still be canceled by an abort, and end as
 * usual; the channel's memory is reclaimed after the last one ends. */
CC_API cc_status cc_channel_close(cc_channel *channel);

/* Closes the channel to new operations (it reads CLOSED and no longer
 * counts in channels_open) without releasing the handle, which stays valid
 * until cc_channel_close: for bindings, whose other threads may still be
 * about to use the handle.  Operations in flight go on as after
 * cc_channel_close.  Idempotent. */
CC_API cc_status cc_channel_shutdown(cc_channel *channel);

/* The channel's state; CC_CHANNEL_STATE_INVALID for NULL. */
CC_API enum cc_channel_state cc_channel_state(const cc_channel *channel);

/* Cancels one operation of the channel with `reason`, as a fault of the
 * channel would cancel it, but leaves the channel and its other operations
 * alone: for a timeout or a client gone that concern one call of a channel
 * shared by many.  `op` is a handle of cc_op_begin_watched, or a cc_op *
 * of cc_op_begin cast to int64_t through intptr_t.  The callback (or the
 * binding's notice) runs on this thread before it returns (G1: at most
 * once; a later registration runs it inside the register call, G3); the
 * first trigger keeps its reason (G6), so an operation already canceled is
 * left as it is, CC_OK.  Accepted in every host and channel state, as an
 * abort is.  CC_E_INVALID_ARG for a NULL channel, an op <= 0 or a reason
 * other than CC_HOST_ABORT and CC_CHANNEL_FAULTED; CC_E_INVALID_OPERATION
 * for an operation of another channel, or whose end has begun (G10).  The
 * caller keeps the channel handle valid for the call (not yet
 * cc_channel_close'd).  Safe from inside a callback (G11). */
CC_API cc_status cc_channel_cancel_op(cc_channel *channel, int64_t op, cc_reason reason);

/* ------------------------------------------------------------ operation */

/* Begins an operation on the channel.  Takes no host-wide lock and, in
 * steady state, allocates nothing.  CC_E_OBJECT_FAULTED if the channel or
 * host is FAULTED; CC_E_INVALID_OPERATION if the host is not OPEN or the
 * channel was closed by its host (FAULTED wins: a closed channel of an
 * aborted host is CC_E_OBJECT_FAULTED); CC_E_NOMEM.  The fault plan visits
 * only begins that would succeed (CC_FAULT_AT_BEGIN). */
CC_API cc_status cc_op_begin(cc_channel *channel, cc_op **out);

/* Registers the operation's cancel callback (required) and free-state
 * callback (may be NULL) with their state pointer.
 *   - Only the first registration succeeds; a second one returns
 *     CC_E_INVALID_OPERATION, the first stays in force and the second
 *     free_state is never called: its caller still owns state (G2).
 *   - If the operation is already canceled, cancel runs synchronously inside
 *     this call, on this thread, with the original reason, and the call
 *     returns CC_OK (G3).
 *   - After CC_OK, free_state (if given) runs exactly once when the
 *     operation ends (G4); after an error it never runs.
 * CC_E_INVALID_ARG if cancel is NULL; CC_E_INVALID_OPERATION for an ended
 * operation (G10). */
CC_API cc_status cc_op_register_cancel(cc_op *op, cc_cancel_fn cancel,
                                       cc_free_state_fn free_state, void *state);

/* 1 if the operation has been canceled, 0 if not; for a NULL or stale
 * handle, CC_E_INVALID_OPERATION (negative, so truthy: stop the work).  A
 * handle is stale once its cc_op_end has begun (so also inside its
 * free-state callback), except on the thread running its own cancel
 * callback (see Conventions).
 * The hot path: one atomic load of the operation's state word. */
CC_API int cc_op_is_canceled(const cc_op *op);

/* CC_HOST_ABORT or CC_CHANNEL_FAULTED (the first trigger wins, G6),
 * CC_NOT_CANCELED, or CC_REASON_INVALID for a NULL or stale handle (as for
 * cc_op_is_canceled). */
CC_API cc_reason cc_op_reason(const cc_op *op);

/* Ends the operation (its completion, G4/G5).
 *   - First, on a live handle, the fault plan's CC_FAULT_AT_END visit: a
 *     channel fault or host abort that fires cancels the operation before
 *     its end begins, through the usual path (its callback runs on this
 *     thread, the handle still valid).  Every call on a live handle is a
 *     visit, deferred ends included.
 *   - Then the end begins: the handle is stale from that moment, and no
 *     cancel callback starts after that (one that an abort had queued but
 *     not started is dropped); if one is running on another thread, this
 *     waits (on a condition) for it to return; then free-state runs on this
 *     thread.
 *   - Called from inside the operation's own callback (see Conventions) it
 *     does not wait: it returns CC_OK at once and free-state runs right
 *     after that callback (or registration) returns.
 * CC_E_INVALID_OPERATION for an operation whose end already began (G10),
 * also from inside its own cancel callback. */
CC_API cc_status cc_op_end(cc_op *op);

/* ----------------------------------------------------------- statistics */

typedef struct cc_stats {
    uint64_t ops_in_flight;        /* begun and not yet ended */
    uint64_t ops_begun;
    uint64_t ops_ended;
    uint64_t ops_canceled;         /* marked canceled, registered or not */
    uint64_t cancels_host_abort;   /* cancel callbacks run, by reason */
    uint64_t cancels_channel_faulted;
    uint64_t free_states_run;
    uint64_t callback_errors;      /* as reported by cc_host_report_callback_error */
    uint64_t channels_open;        /* handles not yet closed */
} cc_stats;

/* Fills *out with the host's counters since cc_host_create (consistent per
 * channel, not a global snapshot while operations run). */
CC_API cc_status cc_host_get_stats(cc_host *host, cc_stats *out);

/* Counts one error raised inside a user callback (G13).  C callbacks cannot
 * fail; language bindings call this when theirs do. */
CC_API cc_status cc_host_report_callback_error(cc_host *host);

/* One counter by name: the extensible form of cc_stats (new counters get
 * new names; the struct above never changes).  0 for NULL or an unknown
 * name. */
typedef enum cc_stat {
    CC_STAT_OPS_IN_FLIGHT = 0,
    CC_STAT_OPS_BEGUN = 1,
    CC_STAT_OPS_ENDED = 2,
    CC_STAT_OPS_CANCELED = 3,
    CC_STAT_CANCELS_HOST_ABORT = 4,
    CC_STAT_CANCELS_CHANNEL_FAULTED = 5,
    CC_STAT_FREE_STATES_RUN = 6,
    CC_STAT_CALLBACK_ERRORS = 7,
    CC_STAT_CHANNELS_OPEN = 8,
    CC_STAT_FAULTS_INJECTED = 9,
    CC_STAT_LATENCY_COUNT = 10,   /* cancels timed, and the sum of their */
    CC_STAT_LATENCY_SUM_NS = 11,  /* trigger-to-callback latencies */
    CC_STAT_USER_CANCELS_RUN = 12 /* watched registrations' cancels run */
} cc_stat;
CC_API uint64_t cc_host_stat(cc_host *host, cc_stat which);

/* The latency from a cancel's trigger (the abort, fault or close escalation
 * that canceled the operation) to the start of its callback (a watched
 * operation's: to the start of its binding's batch), as a histogram with
 * fixed buckets: bucket i counts latencies of at most cc_latency_bound_ns(i),
 * 1 us * 2^i for i < CC_LATENCY_BUCKETS - 1; the last bucket counts the rest
 * (its bound is UINT64_MAX).  Counts are not cumulative.  Kept without
 * allocation; read at any time.  CC_E_INVALID_ARG for NULL or n too small. */
enum { CC_LATENCY_BUCKETS = 16 };
CC_API uint64_t cc_latency_bound_ns(unsigned bucket);
CC_API cc_status cc_host_latency(cc_host *host, uint64_t *counts, size_t n);

/* ------------------------------------------------------------- bindings */

/* For language bindings, whose callbacks are costly to enter one by one and
 * who keep their users' callbacks themselves.  A binding sets one function
 * on the host; the operations it begins "watched" are told to it in
 * batches, and the core still decides everything (G1-G5, G10):
 *   - A watched operation is handed to the binding (CC_NOTICE_CANCELED) when
 *     it is canceled, whether or not it has a registration: the binding's
 *     own plumbing hears of every cancel, and the operation's one
 *     registration (G2) stays its user's.
 *   - Its registration (cc_op_register_watched) keeps a key instead of
 *     function pointers: the core tells the binding when to run the user's
 *     cancel callback (CC_NOTICE_RUN_USER, at most once, G1) and when its
 *     free-state is due (the return of cc_op_end_watched, or
 *     CC_NOTICE_ENDED | CC_NOTICE_FREE_DUE for an end it finished later).
 * The binding function runs with no lock held (G11), under the same rules
 * as a cancel callback: every operation in a batch counts as "inside its own
 * callback" on that thread, and an end on another thread waits for the
 * batch to return (G5).  An operation a canceller has taken for a batch it
 * has not delivered yet has not started: an end overtakes it (the binding
 * never hears of that cancel), and a registration on it from the
 * canceller's own thread runs the user's cancel in place (G3).  Handles are passed as integers (int64_t): the same
 * value as the cc_op pointer, always positive. */
typedef struct cc_notice {
    int64_t op;        /* the operation's handle value */
    int64_t user_key;  /* the registration's key, with RUN_USER or FREE_DUE */
    int64_t what;      /* CC_NOTICE_* bits | the cc_reason << 8 */
} cc_notice;

enum {
    CC_NOTICE_CANCELED = 1,  /* the operation was canceled (reason given) */
    CC_NOTICE_RUN_USER = 2,  /* run the registration's cancel callback now */
    CC_NOTICE_ENDED = 4,     /* a deferred end (CC_END_DEFERRED) finished */
    CC_NOTICE_FREE_DUE = 8   /* ...and the registration's free-state is due */
};

typedef void (*cc_binding_fn)(void *arg, const cc_notice *notices, size_t count);

/* Sets the host's binding function (NULL removes it: notices are then
 * dropped, and the binding's users' callbacks never run).  Set it before
 * beginning watched operations. */
CC_API cc_status cc_host_set_binding(cc_host *host, cc_binding_fn fn, void *arg);

/* cc_op_begin for a watched operation.  Returns the handle value (> 0) or a
 * negative cc_status; CC_E_INVALID_OPERATION also if the host has no
 * binding function. */
CC_API int64_t cc_op_begin_watched(cc_channel *channel);

/* cc_op_register_cancel for a watched operation: G2 and G3 as there, the
 * user's callbacks being named by user_key (> 1; CC_E_INVALID_ARG
 * otherwise) and has_free_state telling whether it has a free-state
 * callback.  On a canceled operation the binding function is called inside
 * this call with CC_NOTICE_RUN_USER (G3).  The fault plan's
 * CC_FAULT_AT_REGISTER visit is made as for cc_op_register_cancel.
 * CC_E_INVALID_OPERATION for an operation that is not watched. */
CC_API cc_status cc_op_register_watched(int64_t op, int64_t user_key, int has_free_state);

/* cc_op_end for a watched operation; the free-state is handed back rather
 * than run.  Returns a negative cc_status, or:
 *   CC_END_DONE      ended; no free-state is due;
 *   CC_END_DEFERRED  called inside its own callback: it finishes when that
 *                    returns, and the binding gets CC_NOTICE_ENDED then;
 *   a user_key (> 1) ended, and the registration with that key is done:
 *                    the caller runs its free-state now if it has one (it
 *                    counts in free_states_run) and may forget the key.
 * Likewise CC_NOTICE_ENDED carries the registration's key, if any, and
 * CC_NOTICE_FREE_DUE when it has a free-state. */
enum { CC_END_DONE = 0, CC_END_DEFERRED = 1 };
CC_API int64_t cc_op_end_watched(int64_t op);

/* ----------------------------------------------------------- fault plan */

/* A seeded, deterministic plan of injected faults, for testing the
 * cancellation paths of code built on this library.  Each rule watches one
 * point; the rule's k-th visit (counted from 1 across all threads) fires when
 * every_nth > 0 and k is a multiple of it, or else with the given
 * probability, drawn from a hash of (seed, rule, k): the same seed and the
 * same order of calls give the same faults. */
typedef enum cc_fault_point {
    CC_FAULT_AT_BEGIN = 0,     /* after the operation was admitted (a begin
                                  refused by the channel's or host's state
                                  is no visit) */
    CC_FAULT_AT_REGISTER = 1,  /* after the registration succeeded (or, for
                                  CC_FAULT_NOMEM, instead of it) */
    CC_FAULT_AT_END = 2        /* before the operation ends */
} cc_fault_point;

typedef enum cc_fault_action {
    CC_FAULT_CHANNEL = 0,      /* fault the operation's channel */
    CC_FAULT_ABORT_HOST = 1,   /* abort the host */
    CC_FAULT_NOMEM = 2         /* fail with CC_E_NOMEM, nothing changed
                                  (begin and register only); when it fires,
                                  the visit's other faults are dropped */
} cc_fault_action;

/* Adds a rule.  CC_E_INVALID_ARG for an unknown point or action, NOMEM at
 * end, a probability outside [0, 1] (checked even when every_nth > 0 makes
 * it unused), or no trigger (every_nth == 0 and probability == 0);
 * CC_E_NOMEM past 16 rules. */
CC_API cc_status cc_host_fault_add(cc_host *host, cc_fault_point point,
                                   cc_fault_action action, uint32_t every_nth,
                                   double probability);
/* Removes every rule and restarts the visit counts with a new seed. */
CC_API cc_status cc_host_fault_reset(cc_host *host, uint64_t seed);
/* How many faults the plan has injected since its last reset, counting
 * every rule that fired, also those a NOMEM of the same visit dropped; 0 for
 * NULL. */
CC_API uint64_t cc_host_fault_count(const cc_host *host);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* CANCELCORE_H */
