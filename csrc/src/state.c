/* state.c - every move of an operation slot's state word.
 *
 * The word is the slot's generation (high 32 bits) and the flags of
 * internal.h.  Each move below is one CAS (or fetch-or/and) on it, so the
 * guarantees that are decided per operation -- cancel once (G1), register
 * once (G2), cancel-or-register races (G3), the hand-over from a running
 * cancel to the end (G5), staleness (G10) -- are decided here and nowhere
 * else.
 *
 *   move             requires                          sets (clears)         by
 *   begin            a free slot (channel lock)        LIVE [WATCH]          begin
 *   mark             !CANCELED, !ENDING                CANCELED [+reason];   a canceller,
 *                                                      RUNNING|FIRED if      under the
 *                                                      ARMED, RUNNING if     channel lock
 *                                                      WATCH (the run is
 *                                                      the canceller's)
 *   claim_register   live, !ENDING, !REG               REG                   register
 *   arm              REG, !ENDING                      ARMED [HAS_FREE];     register
 *                                                      if CANCELED, !FIRED:
 *                                                      FIRED and, unless a
 *                                                      run owns the slot,
 *                                                      RUNNING|INVOKED (G3)
 *   drop_register    REG (the end began first)         (REG)                 register
 *   invoke           RUNNING, !ENDING                  INVOKED               run owner
 *   drop_run         RUNNING                           (RUNNING|INVOKED)     run owner
 *   begin_end        live, !ENDING                     ENDING, and WAITING   end
 *                                                      (busy elsewhere) or
 *                                                      OVERTAKEN (queued run)
 *   leave_overtaken  ENDING|OVERTAKEN, RUNNING         FREED                 end
 *   run_ending       ENDING, owned, !CANCELED          CANCELED [+reason],   end (fault
 *                                                      RUNNING|INVOKED,      plan at END)
 *                                                      FIRED if ARMED
 *   release          ENDING, not busy                  generation + 1, no    finisher
 *                                                      flags (or retired)
 *
 * Busy (st_busy) means a thread is inside a move the end must wait out: a
 * run owns the slot, or a registration claimed it and has not armed it.
 * Who finishes an ended operation: the end itself when the slot was not
 * busy (or after waiting, WAITING); otherwise -- an end requested from
 * inside the operation's own callback -- the last busy party to leave.
 */
#include "internal.h"

static inline bool cas(cc_slot *slot, uint64_t *expected, uint64_t desired)
{
    return atomic_compare_exchange_weak_explicit(&slot->state, expected, desired,
                                                 memory_order_acq_rel,
                                                 memory_order_acquire);
}

void cc_st_begin(cc_slot *slot, bool watched)
{
    uint32_t gen = ST_GEN(atomic_load_explicit(&slot->state, memory_order_relaxed));
    atomic_store_explicit(&slot->state,
                          ((uint64_t)gen << 32) | ST_LIVE | (watched ? ST_WATCH : 0),
                          memory_order_release);
}

int cc_st_mark(cc_slot *slot, cc_reason reason)
{
    uint64_t mark = ST_CANCELED | (reason == CC_CHANNEL_FAULTED ? ST_FAULT_REASON : 0);
    uint64_t s = cc_st_load(slot);
    for (;;) {
        /* The first trigger decides (G6); none after the end began (G5). */
        if (s & (ST_CANCELED | ST_ENDING))
            return 0;
        /* Not canceled, so no run was ever claimed: an armed callback never
         * ran, and a watched operation's binding never heard of it. */
        uint64_t claim = (s & ST_ARMED) ? ST_RUNNING | ST_FIRED
                         : (s & ST_WATCH) ? ST_RUNNING
                                          : 0;
        if (cas(slot, &s, s | mark | claim))
            return (claim & ST_FIRED) ? 3 : claim ? 2 : 1;
    }
}

cc_status cc_st_claim_register(cc_slot *slot, uint32_t gen)
{
    uint64_t s = cc_st_load(slot);
    do {
        if (!cc_gen_live(s, gen) || (s & (ST_ENDING | ST_REG)))
            return CC_E_INVALID_OPERATION;
    } while (!cas(slot, &s, s | ST_REG));
    return CC_OK;
}

cc_arm cc_st_arm(cc_slot *slot, uint64_t extra, bool owner_is_me)
{
    uint64_t s = cc_st_load(slot);
    for (;;) {
        if (s & ST_ENDING)
            return CC_ARM_ENDING;
        uint64_t next = s | ST_ARMED | extra;
        cc_arm result = CC_ARM_DONE;
        if ((s & ST_CANCELED) && !(s & ST_FIRED)) {
            if (!(s & ST_RUNNING)) {
                next |= ST_RUNNING | ST_INVOKED | ST_FIRED;
                result = CC_ARM_RUN;
            } else if (owner_is_me) {
                /* The run is this thread's (started further up the stack,
                 * or queued in a batch it will deliver): the user's cancel
                 * runs here, and the run counts as started, so no end
                 * overtakes it meanwhile (G5). */
                next |= ST_FIRED | ST_INVOKED;
                result = CC_ARM_RUN_NESTED;
            } else {
                /* A watched operation's binding is told of the cancel by a
                 * run on some thread; G3 wants the callback on ours. */
                return CC_ARM_BUSY;
            }
        }
        if (cas(slot, &s, next))
            return result;
    }
}

void cc_st_wait_not_running(cc_slot *slot)
{
    cc_wait_lock();
    uint64_t s = cc_st_load(slot);
    while (s & ST_RUNNING) {
        /* Set under the wait lock: the owner's drop cannot miss it. */
        if (!(s & ST_REGWAIT) && !cas(slot, &s, s | ST_REGWAIT))
            continue;
        cc_wait_until(-1);
        s = cc_st_load(slot);
    }
    cc_wait_unlock();
}

bool cc_st_invoke(cc_slot *slot)
{
    uint64_t s = cc_st_load(slot);
    while (!(s & ST_ENDING))
        if (cas(slot, &s, s | ST_INVOKED))
            return true;
    return false;
}

/* Clears `bits`; under the wait lock, with a wake-up, if anyone sleeps on
 * the slot, so the sleeper cannot wake before we are done with it. */
static uint64_t clear_and_wake(cc_slot *slot, uint64_t bits)
{
    uint64_t s = cc_st_load(slot);
    for (;;) {
        if (s & (ST_WAITING | ST_REGWAIT)) {
            cc_wait_lock();
            s = atomic_fetch_and_explicit(&slot->state, ~bits, memory_order_acq_rel) & ~bits;
            cc_wake_all_locked();
            cc_wait_unlock();
            return s;
        }
        if (cas(slot, &s, s & ~bits))
            return s & ~bits;
    }
}

cc_after cc_st_drop_run(cc_slot *slot, bool invoked, uint64_t *out)
{
    uint64_t s = *out = clear_and_wake(slot, ST_RUNNING | ST_INVOKED);
    /* A waiting end finishes by itself; a registration still in progress
     * finishes when it drops its claim. */
    if (!(s & ST_ENDING) || (s & ST_WAITING) || st_busy(s))
        return CC_AFTER_NOTHING;
    if (s & ST_OVERTAKEN)
        return (s & ST_FREED) ? CC_AFTER_RELEASE : CC_AFTER_NOTHING;
    (void)invoked; /* invoked or not, an end requested inside is ours */
    return CC_AFTER_FINISH;
}

cc_after cc_st_drop_register(cc_slot *slot, uint64_t *out)
{
    uint64_t s = *out = clear_and_wake(slot, ST_REG);
    if (!(s & ST_ENDING) || (s & ST_WAITING) || st_busy(s))
        return CC_AFTER_NOTHING;
    return CC_AFTER_FINISH;
}

/* A run was claimed by a canceller but has not started: an end from
 * another thread overtakes it, unless a registration is also in progress. */
static inline bool overtakable(uint64_t s)
{
    return (s & ST_RUNNING) && !(s & ST_INVOKED) && !((s & ST_REG) && !(s & ST_ARMED));
}

cc_end cc_st_begin_end(cc_slot *slot, uint32_t gen, bool in_callback, uint64_t *out)
{
    uint64_t s = cc_st_load(slot);
    for (;;) {
        if (!cc_gen_live(s, gen) || (s & ST_ENDING))
            return CC_ENDING_STALE;
        if (!st_busy(s)) {
            if (cas(slot, &s, s | ST_ENDING)) {
                *out = s | ST_ENDING;
                return CC_ENDING_PROCEED;
            }
            continue;
        }
        if (overtakable(s) && !in_callback) {
            if (cas(slot, &s, s | ST_ENDING | ST_OVERTAKEN)) {
                *out = s | ST_ENDING | ST_OVERTAKEN;
                return CC_ENDING_OVERTAKE;
            }
            continue;
        }
        if (in_callback) {
            if (cas(slot, &s, s | ST_ENDING)) {
                *out = s | ST_ENDING;
                return CC_ENDING_DEFERRED;
            }
            continue;
        }
        /* Busy on another thread: WAITING is set under the wait lock, so
         * the wake-up that follows cannot be missed. */
        bool claimed = false;
        cc_wait_lock();
        s = cc_st_load(slot);
        while (cc_gen_live(s, gen) && !(s & ST_ENDING) && st_busy(s) && !overtakable(s))
            if (cas(slot, &s, s | ST_ENDING | ST_WAITING)) {
                claimed = true;
                break;
            }
        cc_wait_unlock();
        if (claimed) {
            *out = s | ST_ENDING | ST_WAITING;
            return CC_ENDING_WAIT;
        }
    }
}

uint64_t cc_st_wait_not_busy(cc_slot *slot)
{
    cc_wait_lock();
    uint64_t s = cc_st_load(slot);
    while (st_busy(s)) {
        cc_wait_until(-1);
        s = cc_st_load(slot);
    }
    cc_wait_unlock();
    return s;
}

bool cc_st_leave_overtaken(cc_slot *slot, uint64_t *out)
{
    uint64_t s = cc_st_load(slot);
    while (s & ST_RUNNING)
        if (cas(slot, &s, s | ST_FREED))
            return true; /* the owner releases when it reaches the slot */
    *out = s;
    return false;
}

uint64_t cc_st_run_ending(cc_slot *slot, cc_reason reason)
{
    uint64_t s = cc_st_load(slot);
    for (;;) {
        if (s & ST_CANCELED)
            return 0;
        uint64_t next = s | ST_CANCELED | ST_RUNNING | ST_INVOKED
                        | (reason == CC_CHANNEL_FAULTED ? ST_FAULT_REASON : 0)
                        | ((s & ST_ARMED) ? ST_FIRED : 0);
        if (cas(slot, &s, next))
            return s;
    }
}

uint64_t cc_st_ran_ending(cc_slot *slot)
{
    const uint64_t bits = ST_RUNNING | ST_INVOKED;
    return atomic_fetch_and_explicit(&slot->state, ~bits, memory_order_acq_rel) & ~bits;
}

bool cc_st_release(cc_slot *slot, uint64_t s)
{
    uint32_t gen = ST_GEN(s);
    if ((gen & CC_GEN_MASK) == CC_GEN_MASK) {
        /* One more reuse would give a handle value an old operation had:
         * retire the slot instead (G10's "never"). */
        atomic_store_explicit(&slot->state, (uint64_t)gen << 32, memory_order_release);
        return false;
    }
    atomic_store_explicit(&slot->state, (uint64_t)(gen + 1) << 32, memory_order_release);
    return true;
}
