/* internal.h - the structures shared by the core's files.  Nothing here is
 * public; every symbol is hidden by the build's default visibility. */
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
 * carries the slot's generation, which cc_op_end bumps, so a stale handle
 * is recognised (G10).
 *
 * The slot's one atomic state word holds the generation (high 32 bits) and
 * the flags below: cancel-once (G1), registration (G2/G3), and the hand-off
 * between a cancel callback and the end of the operation (G5) are all CAS
 * transitions on this word.
 */
enum {
    ST_LIVE = 1u << 0,       /* begun, not yet released */
    ST_REG = 1u << 1,        /* a registration claimed the slot (G2) */
    ST_ARMED = 1u << 2,      /* ...and published its callbacks */
    ST_CANCELED = 1u << 3,   /* canceled; ST_FAULT_REASON gives the reason */
    ST_FAULT_REASON = 1u << 4,
    ST_RUNNING = 1u << 5,    /* a thread owns the cancel callback's run */
    ST_FIRED = 1u << 6,      /* the cancel callback was claimed (G1) */
    ST_ENDING = 1u << 7,     /* cc_op_end began: no cancel may start (G5) */
    ST_WAITING = 1u << 8,    /* cc_op_end sleeps until the slot is not busy */
    ST_INVOKED = 1u << 9,    /* the claimed callback has started (else queued) */
    ST_FREED = 1u << 10      /* an end that overtook a queued callback ran
                                free-state; the claim's owner releases */
};
#define ST_FLAGS 0xffffffffu
#define ST_GEN(s) ((uint32_t)((s) >> 32))

/* Busy: a thread is inside a transition that cc_op_end must wait out. */
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
    cc_cancel_fn cancel;          /* valid once ST_ARMED */
    cc_free_state_fn free_state;
    void *user;
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
#define CC_GEN_MASK ((uint32_t)(UINTPTR_MAX >> CC_IDX_BITS))
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

static inline cc_op *cc_handle_encode(const cc_slot *slot, uint32_t gen)
{
    return (cc_op *)(((uintptr_t)(gen & CC_GEN_MASK) << CC_IDX_BITS)
                     | ((uintptr_t)slot->index + 1));
}

/* The slot a handle names and the generation it carries; NULL if it names
 * no slot.  The caller compares generations with cc_gen_matches. */
static inline cc_slot *cc_handle_slot(const cc_op *op, uint32_t *gen)
{
    uintptr_t h = (uintptr_t)op;
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

/* ------------------------------------------------------------- channels */

struct cc_channel {
    cc_mutex lock;            /* guards everything below but `host` */
    cc_host *host;
    cc_channel *host_prev, *host_next; /* the host's channel list (host lock) */
    _Atomic int state;        /* enum cc_channel_state; written under lock */
    bool user_closed;         /* cc_channel_close called: free once idle */
    bool closing;             /* the host is waiting for this channel to idle */
    cc_slot *inflight;        /* doubly linked through prev/next */
    cc_slot *free;            /* local cache of free slots */
    unsigned nfree;
    uint64_t n_inflight;
    uint64_t begun, ended, free_states;
};

/* Slots a channel takes from, and beyond twice this gives back to, the pool. */
#define CC_SLOT_BATCH 32u

/* Marks every live operation of the channel canceled with `reason` and
 * links the ones whose callback this caller now owns into *list (index + 1
 * links through next_cancel).  Channel lock held.  Returns how many
 * operations were newly canceled. */
uint64_t cc_channel_gather(cc_channel *ch, cc_reason reason, uint32_t *list);

/* Gives slots beyond one batch of the local cache back to the pool.
 * Channel lock held. */
void cc_channel_trim(cc_channel *ch);

/* Frees a channel that is idle and unlinked from its host, folding its
 * counters into the host's.  Host lock held. */
void cc_channel_destroy(cc_channel *ch);

/* Destroys the closed channels that have become idle.  Host lock held. */
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
    /* Counters of channels already destroyed, plus ones updated outside any
     * channel (fan-out).  Summed with live channels' by cc_host_get_stats. */
    uint64_t gone_begun, gone_ended, gone_free_states;
    uint64_t nchannels;       /* handles not yet closed */
    _Atomic uint64_t ops_canceled, cancels_abort, cancels_fault, cb_errors;
    cc_fault_plan faults;
};

/* Runs the callbacks of a gathered list (no lock held, G11). */
void cc_fanout_run(cc_host *host, uint32_t list, cc_reason reason);

/* Runs the cancel callback of a slot this thread claimed (ST_RUNNING), then
 * hands the slot back: wakes a waiting cc_op_end, or finishes an end that
 * was requested from inside the callback. */
void cc_run_cancel(cc_host *host, cc_slot *slot, cc_reason reason);

/* Cancels an operation whose end this thread owns (ST_ENDING, not busy),
 * because the fault plan fired at its end; runs its callback here if it has
 * one that has not run.  Returns the new state word. */
uint64_t cc_cancel_ending(cc_host *host, cc_slot *slot, unsigned faults);

/* Which operations' callbacks run on this thread now: cc_op_end from inside
 * one must not wait for it, and cc_host_close from inside one never ends. */
typedef struct cc_frame {
    const cc_slot *slot;
    const cc_host *host;
    struct cc_frame *prev;
} cc_frame;
void cc_frame_push(cc_frame *frame, const cc_slot *slot, const cc_host *host);
void cc_frame_pop(cc_frame *frame);
/* True if this thread is inside a callback (or registration) of `slot`'s
 * operation, or (slot NULL) of any operation of `host`. */
bool cc_in_callback(const cc_slot *slot, const cc_host *host);

/* Runs free-state if due, then returns the slot to its
 * channel (cc_op_release).  The caller owns the end: ST_ENDING set and the
 * slot not busy, or the last one out of an overtaken claim. */
void cc_op_finish(cc_slot *slot, uint64_t s);
void cc_op_release(cc_slot *slot, uint64_t s);

/* The fault plan.  visit counts a visit to `point` and returns the actions
 * that fire (bit 1 << cc_fault_action); apply carries out the channel and
 * host ones (no lock held). */
void cc_faults_init(cc_fault_plan *plan);
void cc_faults_destroy(cc_fault_plan *plan);
unsigned cc_faults_visit(cc_host *host, cc_fault_point point);
void cc_faults_apply(cc_host *host, cc_channel *ch, unsigned faults);

static inline bool cc_faults_armed(cc_host *host)
{
    return atomic_load_explicit(&host->faults.nrules, memory_order_relaxed) != 0;
}

#endif /* CC_INTERNAL_H */
