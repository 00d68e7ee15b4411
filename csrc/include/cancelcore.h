/*
 * cancelcore.h - call cancellation for server-side operations.
 *
 * The call-cancellation model of the Windows Web Services API, portably:
 * a service host runs operations on channels; an operation may register a
 * cancel callback, fired at most once when the host is aborted or the
 * operation's channel faults, and a free-state callback, fired exactly once
 * when the operation ends.  The guarantees G1..G13 are those of the design
 * contract (DESIGN.md); each function below names the ones it upholds.
 *
 * Conventions
 *   - Every function returns a cc_status (CC_OK or a negative error) except
 *     the simple getters, which say what they return for a bad handle.
 *   - Handles are opaque.  A NULL handle is answered with CC_E_INVALID_ARG.
 *   - A cc_op is valid from cc_op_begin until its cc_op_end returns.  A
 *     cc_op passed back after that (ended, or its slot reused by another
 *     operation) is answered with CC_E_INVALID_OPERATION, never undefined
 *     behaviour: operation handles carry a generation (G10).
 *   - cc_host and cc_channel handles are pointers: after cc_host_free /
 *     cc_channel_close they must not be used again.
 *   - All functions are thread-safe unless stated otherwise.
 *   - No callback ever runs while the library holds one of its locks, so a
 *     callback may call any function of this header on any object, except
 *     cc_host_close and cc_host_free on the host of its own operation (G11).
 *
 * Threads: callbacks run on whichever thread triggered them: the thread
 * calling cc_host_abort, cc_channel_fault, cc_host_close (when its timeout
 * escalates), cc_op_register_cancel (G3) or cc_op_end (free-state).
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

typedef enum cc_status {
    CC_OK = 0,
    CC_E_INVALID_ARG = -1,        /* NULL handle or pointer, bad value */
    CC_E_INVALID_OPERATION = -2,  /* wrong state, stale operation, second registration */
    CC_E_OBJECT_FAULTED = -3,     /* the host or channel is faulted */
    CC_E_OPERATION_ABORTED = -4,  /* close finished, but the host was aborted meanwhile */
    CC_E_NOMEM = -5,              /* out of memory (or injected by the fault plan) */
    CC_E_TIMEOUT = -6             /* close timed out and aborted the host (it is CLOSED) */
} cc_status;

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
 *   CC_E_OPERATION_ABORTED  cc_host_abort was called during the close.
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
 * follow. */
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

/* The channel's state; CC_CHANNEL_STATE_INVALID for NULL. */
CC_API enum cc_channel_state cc_channel_state(const cc_channel *channel);

/* ------------------------------------------------------------ operation */

/* Begins an operation on the channel.  Takes no host-wide lock and, in
 * steady state, allocates nothing.  CC_E_OBJECT_FAULTED if the channel or
 * host is FAULTED; CC_E_INVALID_OPERATION if the host is not OPEN or the
 * channel was closed by its host; CC_E_NOMEM. */
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

/* For language bindings that pay per crossing and keep their users'
 * registrations themselves: cc_op_begin and cc_op_register_cancel in one
 * call, the registration being the binding's own, so it is no visit of the
 * fault plan's CC_FAULT_AT_REGISTER point (see cc_op_visit_register_faults).
 * Returns the operation, or NULL with *status (if status is not NULL) set to
 * the error of whichever step failed, leaving no operation behind.  The
 * callback may run inside this call (G3) if the operation is canceled as it
 * begins. */
CC_API cc_op *cc_op_begin_with_cancel(cc_channel *channel, cc_cancel_fn cancel,
                                      cc_free_state_fn free_state, void *state,
                                      cc_status *status);

/* The fault plan's CC_FAULT_AT_REGISTER visit, for a binding registering
 * its user's callbacks on an operation begun by cc_op_begin_with_cancel:
 * CC_E_NOMEM if a NOMEM rule fired (nothing changed: fail the user's
 * registration), else CC_OK after carrying out any channel fault or host
 * abort that fired.  CC_E_INVALID_OPERATION for a stale operation. */
CC_API cc_status cc_op_visit_register_faults(cc_op *op);

/* 1 if the operation has been canceled, 0 if not; for a NULL or stale
 * handle, CC_E_INVALID_OPERATION (negative, so truthy: stop the work).  A
 * handle is stale once its cc_op_end has begun (so also inside its
 * free-state callback), except inside its own cancel callback.
 * The hot path: one atomic load of the operation's state word. */
CC_API int cc_op_is_canceled(const cc_op *op);

/* CC_HOST_ABORT or CC_CHANNEL_FAULTED (the first trigger wins, G6),
 * CC_NOT_CANCELED, or CC_REASON_INVALID for a NULL or stale handle (as for
 * cc_op_is_canceled). */
CC_API cc_reason cc_op_reason(const cc_op *op);

/* Ends the operation (its completion, G4/G5): the handle is stale from the
 * moment this call begins, and no cancel callback starts after that (one
 * that an abort had queued but not started is dropped); if one is running
 * on another thread, this waits (on a condition) for it to return; then
 * free-state runs on this thread.  Called from inside the operation's own cancel
 * callback it does not wait: it returns CC_OK at once and free-state runs
 * right after that callback returns.  CC_E_INVALID_OPERATION for an
 * operation already ended (G10). */
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
 * end, a probability outside [0, 1], or no trigger (every_nth == 0 and
 * probability == 0); CC_E_NOMEM past 16 rules. */
CC_API cc_status cc_host_fault_add(cc_host *host, cc_fault_point point,
                                   cc_fault_action action, uint32_t every_nth,
                                   double probability);
/* Removes every rule and restarts the visit counts with a new seed. */
CC_API cc_status cc_host_fault_reset(cc_host *host, uint64_t seed);
/* How many faults the plan has injected since its last reset; 0 for NULL. */
CC_API uint64_t cc_host_fault_count(const cc_host *host);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* CANCELCORE_H */
