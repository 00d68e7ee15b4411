/* internal.h - the structures shared by the core's files.  Nothing here is
 * public; every symbol is hidden by the build's default visibility.
 *
 * The files, bottom to top; each calls only files above it in this list
 * (below it in the stack), never back up:
 *   sync.c      mutexes, monotonic time, the process-wide wait condition
 *   handle.c    the slot pool and the slot directory behind handles
 *   state.c     every move of a slot's state word (the transition table)
 *   inflight.c  a channel's in-flight list and slot cache; gathering
 *   faults.c    the fault plan's decisions (it carries none out)
 *   cancel.c    canceling (abort, fault, the fault plan's actions), running
 *               callbacks (C ones, binding batches) and finishing operations
 *   channel.c   channels (G9)
 *   host.c      hosts (G7, G8, G12) and statistics
 *   op.c        operations: begin, register, read, end (G1-G5, G10)
 */
#ifndef CC_INTERNAL_H
#define CC_INTERNAL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "cancelcore.h"
#include "sync.h"

/* ------------------------------------------------------ operation slots
 *
 * An operation lives in a pooled 64-byte slot.  Slots are never freed, only
 * recycled, so a stale handle always points at readable memory; the handle
 * carries the slot's generation, which the release bumps, so a stale handle
 * is recognised (G10).  The state word's bits are described in state.c.
 */
enum {
    ST_LIVE = 1u << 0,       /* begun, not yet released */
    ST_REG = 1u << 1,        /* a registration claimed the slot (G2) */
    ST_ARMED = 1u << 2,      /* ...and published its callbacks */
    ST_CANCELED = 1u << 3,   /* canceled; ST_FAULT_REASON gives the reason */
    ST_FAULT_REASON = 1u << 4,
    ST_RUNNING = 1u << 5,    /* a thread owns the slot's callback run */
    ST_FIRED = 1u << 6,      /* the registered cancel callback was claimed (G1) */
    ST_ENDING = 1u << 7,     /* the end began: no cancel may start (G5) */
    ST_WAITING = 1u << 8,    /* an end sleeps until the slot is not busy,
                                and will finish the operation itself */
    ST_INVOKED = 1u << 9,    /* the claimed run has started (else queued) */
    ST_FREED = 1u << 10,     /* an end that overtook a queued run ran
                                free-state; the claim's owner releases */
    ST_WATCH = 1u << 11,     /* a binding watches the operation */
    ST_HAS_FREE = 1u << 12,  /* watched: the registration has a free-state */
    ST_REGWAIT = 1u << 13,   /* a registration sleeps until ST_RUNNING clears */
    ST_OVERTAKEN = 1u << 14  /* the end overtook a queued run (see ST_FREED) */
};
#define ST_GEN(s) ((uint32_t)((s) >> 32))

/* Busy: a thread is inside a transition that an end must wait out. */
static inline bool st_busy(uint64_t s)
{
    return (s & ST_RUNNING) || ((s & ST_REG) && !(s & ST_ARMED));
}

static inline cc_reason st_reason(uint64_t s)
{
    return (s & ST_FAULT_REASON) ? CC_CHANNEL_FAULTED : CC_HOST_ABORT;
}

typedef struct cc_slot cc_slot;
struct cc_slot {
    _Atomic uint64_t state;
    cc_cancel_fn cancel;          /* valid once ST_ARMED (not watched) */
    cc_free_state_fn free_state;  /* likewise */
    void *user;                   /* the registration's state (watched: its key) */
    cc_channel *channel;          /* set at begin */
    cc_slot *prev, *next;         /* channel's in-flight list, or a free list */
    uint32_t index;               /* position in the slot directory */
    uint32_t next_cancel;         /* fan-out list (index + 1; 0 ends it) */
};

/* Handles: (generation, index + 1) packed into a pointer-sized value. */
#if UINTPTR_MAX > 0xffffffffu
#  define CC_IDX_BITS 32
#  define CC_MAX_SLOTS (1u << 28)
#else
#  define CC_IDX_BITS 20
#  define CC_MAX_SLOTS (1u << 20)
#endif
#define CC_IDX_MASK (((uintptr_t)1 << CC_IDX_BITS) - 1)
/* One bit short of the word, so a handle value is a positive int64_t. */
#define CC_GEN_MASK ((uint32_t)(UINTPTR_MAX >> (CC_IDX_BITS + 1)))
#define CC_CHUNK_BITS 12
#define CC_CHUNK_SLOTS (1u << CC_CHUNK_BITS)
#define CC_DIR_SIZE (CC_MAX_SLOTS / CC_CHUNK_SLOTS)

/* The slot directory: chunk pointers, published once, never freed. */
extern cc_slot *_Atomic cc_slot_dir[CC_DIR_SIZE];

/* The slot at a directory index; NULL if there is none. */
static inline cc_slot *cc_slot_at(uint32_t index)
{
    if (index >= CC_MAX_SLOTS)
        return NULL;
    cc_slot *chunk = atomic_load_explicit(&cc_slot_dir[index >> CC_CHUNK_BITS],
                                          memory_order_acquire);
    return chunk ? &chunk[index & (CC_CHUNK_SLOTS - 1)] : NULL;
}

static inline uintptr_t cc_handle_value(const cc_slot *slot, uint32_t gen)
{
    return ((uintptr_t)(gen & CC_GEN_MASK) << CC_IDX_BITS) | ((uintptr_t)slot->index + 1);
}

/* The slot a handle value names and the generation it carries; NULL if it
 * names no slot. */
static inline cc_slot *cc_handle_slot(uintptr_t h, uint32_t *gen)
{
    uintptr_t low = h & CC_IDX_MASK;
    if (low == 0)
        return NULL;
    *gen = (uint32_t)(h >> CC_IDX_BITS);
    return cc_slot_at((uint32_t)(low - 1));
}

/* Does state word s belong to the operation of generation gen, still live? */
static inline bool cc_gen_live(uint64_t s, uint32_t gen)
{
    return (s & ST_LIVE) && (ST_GEN(s) & CC_GEN_MASK) == gen;
}

/* Takes up to n free slots from the process-wide pool as a list linked by
 * ->next; returns how many (0: out of memory). */
unsigned cc_pool_take(cc_slot **head, unsigned n);
/* Gives a ->next-linked list of n slots back to the pool. */
void cc_pool_give(cc_slot *head, cc_slot *tail, unsigned n);

/* ------------------------------------------------- state.c: transitions */

static inline uint64_t cc_st_load(const cc_slot *slot)
{
    return atomic_load_explicit(&((cc_slot *)slot)->state, memory_order_acquire);
}

/* Begin: the slot (free, owned by the channel lock) becomes live. */
void cc_st_begin(cc_slot *slot, bool watched);

/* Cancel: marks the slot canceled with `reason` unless it already was or its
 * end began (G5, G6).  Returns 0 if not marked, 1 if marked, 2 if marked and
 * the run is now the caller's (ST_RUNNING: watched), 3 if the registered
 * cancel callback's run too (ST_FIRED: armed). */
int cc_st_mark(cc_slot *slot, cc_reason reason);

/* Registration, phase 1: claims the one registration (G2).
 * CC_E_INVALID_OPERATION if stale, ending or already registered. */
cc_status cc_st_claim_register(cc_slot *slot, uint32_t gen);

/* Registration, phase 2: publishes it.  `extra` is ST_HAS_FREE or 0. */
typedef enum cc_arm {
    CC_ARM_DONE,      /* armed; any cancel comes later, from a canceller */
    CC_ARM_RUN,       /* armed on a canceled operation: run it now (G3); the
                         run is ours (ST_RUNNING | ST_INVOKED) */
    CC_ARM_RUN_NESTED,/* armed on a canceled operation whose run this thread
                         already owns further up its stack: run it now */
    CC_ARM_BUSY,      /* canceled, and a run owns the slot on some thread:
                         if it is not ours (cc_owns_queued), wait it out
                         (cc_st_wait_not_running) and arm again */
    CC_ARM_ENDING     /* the end began first: give the claim back */
} cc_arm;
cc_arm cc_st_arm(cc_slot *slot, uint64_t extra, bool owner_is_me);

/* A claimed run starts, unless an end overtook it; true if it starts. */
bool cc_st_invoke(cc_slot *slot);

/* What the thread that drops its part in a slot must do next. */
typedef enum cc_after {
    CC_AFTER_NOTHING, /* others still hold it, or an end finishes it */
    CC_AFTER_FINISH,  /* an end was requested meanwhile: finish it */
    CC_AFTER_RELEASE  /* an overtaking end ran free-state: release it */
} cc_after;
/* Drops a claimed run (ST_RUNNING | ST_INVOKED); `invoked`: it started. */
cc_after cc_st_drop_run(cc_slot *slot, bool invoked, uint64_t *s);
/* Drops a registration claim that lost to an end (ST_REG). */
cc_after cc_st_drop_register(cc_slot *slot, uint64_t *s);

/* End: what the caller of cc_op_end does, given whether this thread is
 * inside a callback of the slot.  *s is the state word after the move. */
typedef enum cc_end {
    CC_ENDING_STALE,     /* stale handle or an end already began */
    CC_ENDING_PROCEED,   /* not busy: finish it now */
    CC_ENDING_OVERTAKE,  /* a queued run will never start: free-state now */
    CC_ENDING_DEFERRED, /* inside its own callback: its owner finishes it */
    CC_ENDING_WAIT,      /* busy on another thread: cc_st_wait_not_busy */
    CC_ENDING_BUSY       /* (!may_wait) it would wait: nothing changed */
} cc_end;
cc_end cc_st_begin_end(cc_slot *slot, uint32_t gen, bool in_callback, bool may_wait,
                       uint64_t *s);
/* Sleeps until the slot is no longer busy; returns the state word. */
uint64_t cc_st_wait_not_busy(cc_slot *slot);
/* Registration only: sleeps until no run owns the slot. */
void cc_st_wait_not_running(cc_slot *slot);
/* The fault plan canceled an operation whose end this thread owns: marks it
 * canceled (if it was not) and takes its run; returns the word before (0 if
 * it was already canceled: nothing taken).  cc_st_ran_ending gives the run
 * back and returns the word after. */
uint64_t cc_st_run_ending(cc_slot *slot, cc_reason reason);
uint64_t cc_st_ran_ending(cc_slot *slot);
/* After an overtaking end ran free-state: true if the claim's owner will
 * release the slot, false if the caller must. */
bool cc_st_leave_overtaken(cc_slot *slot, uint64_t *s);
/* Release: the new generation makes every copy of the handle stale (G10).
 * False if the generation would wrap: the slot is retired, never reused. */
bool cc_st_release(cc_slot *slot, uint64_t s);

/* ------------------------------------------------------------- channels */

struct cc_channel {
    cc_mutex lock;            /* guards everything below but `host` */
    cc_host *host;
    cc_channel *host_prev, *host_next; /* the host's channel list (host lock) */
    _Atomic int state;        /* enum cc_channel_state; written under lock */
    bool user_closed;         /* cc_channel_close called: free once idle */
    bool shut;                /* cc_channel_shutdown called */
    bool closing;             /* the host is waiting for this channel to idle */
    cc_slot *inflight;        /* doubly linked through prev/next */
    cc_slot *free;            /* local cache of free slots */
    unsigned nfree;
    uint64_t n_inflight;
    uint64_t begun, ended, free_states;
};

/* Slots a channel takes from, and beyond twice this gives back to, the pool. */
#define CC_SLOT_BATCH 32u

/* A fan-out list entry: the slot's index + 1, and whether the canceller
 * took the registered callback's run with the mark (the entry's own, since
 * a nested registration may take ST_FIRED later). */
#define CC_LINK_USER 0x80000000u
#define CC_LINK_INDEX(e) (((e) & ~CC_LINK_USER) - 1)

/* inflight.c.  Links a fresh live slot into the channel (channel lock held);
 * NULL when out of memory. */
cc_slot *cc_inflight_add(cc_channel *ch, bool watched);
/* Marks every live operation of the channel canceled with `reason` and
 * links the ones whose callback run this caller now owns into *list (index
 * + 1 links through next_cancel).  Channel lock held.  Returns how many
 * operations were newly canceled. */
uint64_t cc_inflight_gather(cc_channel *ch, cc_reason reason, uint32_t *list);
/* Unlinks an ended slot and returns it to the channel's cache.  Takes the
 * channel lock; after it, the caller must touch neither channel nor host. */
void cc_inflight_release(cc_slot *slot, uint64_t s);
/* Gives the channel's cached slots back to the pool.  Channel unused. */
void cc_inflight_drain(cc_channel *ch);

/* channel.c, for the host: frees an idle channel unlinked from its host,
 * folding its counters into the host's; destroys the closed channels that
 * have become idle.  Host lock held. */
void cc_channel_destroy(cc_channel *ch);
void cc_sweep_zombies(cc_host *host);

/* ---------------------------------------------------------------- hosts */

#define CC_MAX_FAULT_RULES 16

typedef struct cc_fault_rule {
    cc_fault_point point;
    cc_fault_action action;
    uint32_t every_nth;
    double probability;
    uint64_t visits;
} cc_fault_rule;

typedef struct cc_fault_plan {
    cc_mutex lock;            /* rules and counts; a leaf lock */
    _Atomic int nrules;       /* read without the lock: the hot path's test */
    cc_fault_rule rules[CC_MAX_FAULT_RULES];
    uint64_t seed;
    _Atomic uint64_t injected;
} cc_fault_plan;

struct cc_host {
    cc_mutex lock;            /* state transitions and the channel list */
    _Atomic int state;        /* enum cc_host_state; written under lock */
    cc_channel *channels;     /* channels whose handle is open */
    cc_channel *zombies;      /* closed handles with operations in flight */
    int64_t close_timeout_ms;
    bool aborted_in_close;    /* cc_host_abort ran while CLOSING */
    /* Counters of channels already destroyed.  Summed with live channels'
     * by the statistics. */
    uint64_t gone_begun, gone_ended, gone_free_states;
    uint64_t nchannels;       /* handles not yet closed */
    _Atomic uint64_t ops_canceled, cancels_abort, cancels_fault, cb_errors;
    _Atomic uint64_t user_cancels; /* watched registrations' cancels run */
    _Atomic uint64_t latency[CC_LATENCY_BUCKETS]; /* trigger -> callback start */
    _Atomic uint64_t latency_sum_ns;
    _Atomic(cc_binding_fn) bind_fn;
    void *_Atomic bind_arg;
    cc_fault_plan faults;
};

/* --------------------------------------------------------- cancel.c */

/* Both lists of a host: operations of closed channels still count. */
#define CC_FOR_EACH_CHANNEL(host, ch)                                 \
    for (int list_ = 0; list_ < 2; list_++)                          \
        for (cc_channel *ch = list_ ? (host)->zombies : (host)->channels; ch; \
             ch = ch->host_next)

/* The bodies of cc_channel_fault and cc_host_abort (G7, G9, G12). */
cc_status cc_cancel_channel(cc_channel *ch);
void cc_cancel_host(cc_host *host);
/* The body of cc_channel_cancel_op: one operation of ch, as a fault would. */
cc_status cc_cancel_one(cc_channel *ch, uintptr_t h, cc_reason reason);
/* Carries out the channel and host actions of a fault-plan visit. */
void cc_cancel_apply(cc_host *host, cc_channel *ch, unsigned faults);
/* Runs the cancel of a registration that found its operation canceled
 * (G3); `owned`: the run is ours (CC_ARM_RUN) and is dropped here, else a
 * run further up this thread's stack owns the slot (CC_ARM_RUN_NESTED). */
void cc_run_registered(cc_host *host, cc_slot *slot, bool owned);
/* Finishes an ended operation whose end this thread owns: the fault plan's
 * END visit, free-state, release.  A watched operation's free-state goes to
 * its binding as a notice, or (hand_back) is returned: its key, or
 * CC_END_DONE when none is due. */
int64_t cc_finish(cc_slot *slot, uint64_t s, bool hand_back);
/* The same without the release, for an end that overtook a queued run
 * (the run's owner may be the one to release).  *s is updated. */
int64_t cc_finish_free(cc_slot *slot, uint64_t *s, bool hand_back);

/* Which operations' callbacks run on this thread now: an end from inside
 * one must not wait for it, and a close from inside one never ends. */
typedef struct cc_frame {
    const cc_slot *slot;
    cc_slot *const *batch;        /* a binding batch: these slots too */
    unsigned nbatch;
    cc_slot *const *pending;      /* a batch this thread claimed and will */
    const unsigned *npending;     /* deliver: queued, not inside (yet), */
    const uint32_t *rest;         /* like the rest of its fan-out list */
    const cc_host *host;
    struct cc_frame *prev;
} cc_frame;
void cc_frame_push(cc_frame *frame, const cc_slot *slot, const cc_host *host);
void cc_frame_pop(cc_frame *frame);
/* True if this thread is inside a callback (or registration) of `slot`'s
 * operation, or (slot NULL) of any operation of `host`. */
bool cc_in_callback(const cc_slot *slot, const cc_host *host);
/* True if `slot`'s run is queued in a batch this thread will deliver. */
bool cc_owns_queued(const cc_slot *slot);

/* ------------------------------------------------- faults.c: decisions */

void cc_faults_init(cc_fault_plan *plan);
void cc_faults_destroy(cc_fault_plan *plan);
/* Counts a visit to `point`; returns the actions that fire (bit 1 <<
 * cc_fault_action).  The caller carries them out. */
unsigned cc_faults_visit(cc_host *host, cc_fault_point point);

static inline bool cc_faults_armed(cc_host *host)
{
    return atomic_load_explicit(&host->faults.nrules, memory_order_relaxed) != 0;
}

#endif /* CC_INTERNAL_H */
