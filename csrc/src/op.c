/* op.c - an operation's life: begin, register, read, end (G1-G5, G10).
 *
 * Every transition is a CAS on the slot's state word.  Begin and end take
 * only their channel's lock, to link the slot into and out of the channel's
 * in-flight list; register and the getters take no lock at all.
 */
#include "internal.h"

static inline uint64_t load_state(const cc_slot *slot)
{
    return atomic_load_explicit(&((cc_slot *)slot)->state, memory_order_acquire);
}

static inline bool cas_state(cc_slot *slot, uint64_t *expected, uint64_t desired)
{
    return atomic_compare_exchange_weak_explicit(&slot->state, expected, desired,
                                                 memory_order_acq_rel,
                                                 memory_order_acquire);
}

/* The slot of an operation still valid to use, or NULL (its state word in
 * *s).  Once cc_op_end began the handle is stale (G10), even while the slot
 * is still being released -- except inside a cancel callback already
 * running, which may still read its operation. */
static inline cc_slot *live_slot(const cc_op *op, uint32_t *gen, uint64_t *s)
{
    cc_slot *slot = cc_handle_slot(op, gen);
    if (!slot)
        return NULL;
    *s = load_state(slot);
    if (!cc_gen_live(*s, *gen) || (*s & (ST_ENDING | ST_INVOKED)) == ST_ENDING)
        return NULL;
    return slot;
}

/* ---------------------------------------------------------------- begin */

static cc_status admission(const cc_channel *ch)
{
    int hs = atomic_load_explicit(&ch->host->state, memory_order_acquire);
    if (ch->state == CC_CHANNEL_STATE_FAULTED || hs == CC_HOST_STATE_FAULTED)
        return CC_E_OBJECT_FAULTED;
    if (ch->state != CC_CHANNEL_STATE_OPEN || hs != CC_HOST_STATE_OPEN)
        return CC_E_INVALID_OPERATION;
    return CC_OK;
}

cc_status cc_op_begin(cc_channel *ch, cc_op **out)
{
    if (!ch || !out)
        return CC_E_INVALID_ARG;
    cc_host *host = ch->host;
    cc_mutex_lock(&ch->lock);
    cc_status st = admission(ch);
    if (st != CC_OK) {
        cc_mutex_unlock(&ch->lock);
        return st;
    }
    /* Only begins that would succeed visit the plan (its lock is a leaf). */
    unsigned faults = cc_faults_armed(host) ? cc_faults_visit(host, CC_FAULT_AT_BEGIN) : 0;
    if (faults & (1u << CC_FAULT_NOMEM)) {
        cc_mutex_unlock(&ch->lock);
        return CC_E_NOMEM; /* nothing changed: other faults of this visit too */
    }
    if (!ch->free) {
        ch->nfree += cc_pool_take(&ch->free, CC_SLOT_BATCH);
        if (!ch->free) {
            cc_mutex_unlock(&ch->lock);
            return CC_E_NOMEM;
        }
    }
    cc_slot *slot = ch->free;
    ch->free = slot->next;
    ch->nfree--;
    slot->channel = ch;
    slot->prev = NULL;
    slot->next = ch->inflight;
    if (ch->inflight)
        ch->inflight->prev = slot;
    ch->inflight = slot;
    ch->n_inflight++;
    ch->begun++;
    uint32_t gen = ST_GEN(atomic_load_explicit(&slot->state, memory_order_relaxed));
    atomic_store_explicit(&slot->state, ((uint64_t)gen << 32) | ST_LIVE,
                          memory_order_release);
    cc_mutex_unlock(&ch->lock);

    *out = cc_handle_encode(slot, gen);
    if (faults)
        cc_faults_apply(host, ch, faults);
    return CC_OK;
}

/* ------------------------------------------------------------- register */

/* Hands back a registration claim that lost to cc_op_end.  If that end was
 * requested from this thread (a callback run by the fault plan below), it
 * was deferred to us: finish the operation. */
static void unclaim(cc_slot *slot)
{
    uint64_t s = load_state(slot);
    if (s & ST_WAITING) {
        cc_wait_lock();
        atomic_fetch_and_explicit(&slot->state, ~(uint64_t)ST_REG, memory_order_acq_rel);
        cc_wake_all_locked();
        cc_wait_unlock();
        return;
    }
    while (!cas_state(slot, &s, s & ~(uint64_t)ST_REG)) {
        if (s & ST_WAITING) {
            unclaim(slot);
            return;
        }
    }
    if (s & ST_ENDING)
        cc_op_finish(slot, s & ~(uint64_t)ST_REG);
}

static cc_status register_cancel(cc_op *op, cc_cancel_fn cancel, cc_free_state_fn free_state,
                                 void *state, bool visit_faults);

cc_status cc_op_register_cancel(cc_op *op, cc_cancel_fn cancel,
                                cc_free_state_fn free_state, void *state)
{
    return register_cancel(op, cancel, free_state, state, true);
}

cc_status cc_op_visit_register_faults(cc_op *op)
{
    if (!op)
        return CC_E_INVALID_ARG;
    uint32_t gen;
    uint64_t s;
    cc_slot *slot = live_slot(op, &gen, &s);
    if (!slot)
        return CC_E_INVALID_OPERATION;
    /* The binding's own registration keeps the slot in flight while its
     * caller holds the handle, so the channel read here is alive. */
    cc_channel *ch = slot->channel;
    if (!cc_faults_armed(ch->host))
        return CC_OK;
    unsigned faults = cc_faults_visit(ch->host, CC_FAULT_AT_REGISTER);
    if (faults & (1u << CC_FAULT_NOMEM))
        return CC_E_NOMEM;
    cc_faults_apply(ch->host, ch, faults);
    return CC_OK;
}

static cc_status register_cancel(cc_op *op, cc_cancel_fn cancel, cc_free_state_fn free_state,
                                 void *state, bool visit_faults)
{
    if (!op || !cancel)
        return CC_E_INVALID_ARG;
    uint32_t gen;
    uint64_t s;
    cc_slot *slot = live_slot(op, &gen, &s);
    if (!slot)
        return CC_E_INVALID_OPERATION;

    /* Phase 1: claim the registration (G2).  While ST_REG is set without
     * ST_ARMED the slot is busy: cc_op_end waits, so the channel and host
     * read below stay alive and the fields written are ours alone. */
    do {
        if (!cc_gen_live(s, gen) || (s & (ST_ENDING | ST_REG)))
            return CC_E_INVALID_OPERATION;
    } while (!cas_state(slot, &s, s | ST_REG));

    cc_channel *ch = slot->channel;
    cc_host *host = ch->host;
    if (visit_faults && cc_faults_armed(host)) {
        unsigned faults = cc_faults_visit(host, CC_FAULT_AT_REGISTER);
        if (faults & (1u << CC_FAULT_NOMEM)) {
            unclaim(slot);
            return CC_E_NOMEM;
        }
        if (faults) {
            /* Injected before the registration is armed, so this operation
             * is only marked; the callback then runs below, as for any
             * registration on a canceled operation (G3). */
            cc_frame frame;
            cc_frame_push(&frame, slot, host);
            cc_faults_apply(host, ch, faults);
            cc_frame_pop(&frame);
        }
    }
    slot->cancel = cancel;
    slot->free_state = free_state;
    slot->user = state;

    /* Phase 2: arm it, or run the callback now if already canceled (G3). */
    s = load_state(slot);
    for (;;) {
        if (s & ST_ENDING) {
            unclaim(slot);
            return CC_E_INVALID_OPERATION;
        }
        uint64_t next = s | ST_ARMED;
        if (s & ST_CANCELED)
            next |= ST_RUNNING | ST_FIRED;
        if (cas_state(slot, &s, next)) {
            if (s & ST_CANCELED)
                cc_run_cancel(host, slot, st_reason(s));
            return CC_OK;
        }
    }
}

cc_op *cc_op_begin_with_cancel(cc_channel *ch, cc_cancel_fn cancel,
                               cc_free_state_fn free_state, void *state,
                               cc_status *status)
{
    cc_op *op = NULL;
    cc_status st = cancel ? cc_op_begin(ch, &op) : CC_E_INVALID_ARG;
    if (st == CC_OK) {
        st = register_cancel(op, cancel, free_state, state, false);
        if (st != CC_OK) {
            (void)cc_op_end(op);
            op = NULL;
        }
    }
    if (status)
        *status = st;
    return op;
}

/* -------------------------------------------------------------- getters */

int cc_op_is_canceled(const cc_op *op)
{
    uint32_t gen;
    uint64_t s;
    if (!live_slot(op, &gen, &s))
        return CC_E_INVALID_OPERATION;
    return (s & ST_CANCELED) != 0;
}

cc_reason cc_op_reason(const cc_op *op)
{
    uint32_t gen;
    uint64_t s;
    if (!live_slot(op, &gen, &s))
        return CC_REASON_INVALID;
    return (s & ST_CANCELED) ? st_reason(s) : CC_NOT_CANCELED;
}

/* ------------------------------------------------------------------ end */

/* Sleeps until the slot is no longer busy; ST_ENDING | ST_WAITING set. */
static uint64_t wait_not_busy(cc_slot *slot)
{
    cc_wait_lock();
    uint64_t s = load_state(slot);
    while (st_busy(s)) {
        cc_wait_until(-1);
        s = load_state(slot);
    }
    cc_wait_unlock();
    return s;
}

static void free_state(cc_slot *slot, uint64_t s);

/* The end overtook a queued callback (ST_ENDING set while claimed and not
 * invoked).  Free-state runs now; the slot is released by whichever of us
 * and the claim's owner lets go last. */
static cc_status overtake(cc_slot *slot, uint64_t s)
{
    free_state(slot, s);
    s = load_state(slot);
    while (s & ST_RUNNING)
        if (cas_state(slot, &s, s | ST_FREED))
            return CC_OK; /* the owner releases when it reaches the slot */
    cc_op_release(slot, s);
    return CC_OK;
}

cc_status cc_op_end(cc_op *op)
{
    if (!op)
        return CC_E_INVALID_ARG;
    uint32_t gen;
    uint64_t s;
    cc_slot *slot = live_slot(op, &gen, &s);
    if (!slot)
        return CC_E_INVALID_OPERATION;

    for (;;) {
        if (!cc_gen_live(s, gen) || (s & ST_ENDING))
            return CC_E_INVALID_OPERATION;
        if (!st_busy(s)) {
            if (cas_state(slot, &s, s | ST_ENDING)) {
                s |= ST_ENDING;
                break;
            }
            continue;
        }
        if ((s & ST_RUNNING) && !(s & ST_INVOKED)) {
            /* A fan-out claimed the callback but has not started it: the
             * end overtakes it, so it never starts (G5), and nobody waits. */
            if (cas_state(slot, &s, s | ST_ENDING))
                return overtake(slot, s | ST_ENDING);
            continue;
        }
        if (cc_in_callback(slot, NULL)) {
            /* Ended from inside its own callback (or registration): the
             * thread that owns the busy slot finishes it on return (G5). */
            if (cas_state(slot, &s, s | ST_ENDING))
                return CC_OK;
            continue;
        }
        /* Another thread runs its callback: sleep until it returns (G5).
         * ST_WAITING is set under the wait lock, so the wake-up that
         * follows the callback cannot be missed. */
        cc_wait_lock();
        s = load_state(slot);
        bool claimed = false;
        while (cc_gen_live(s, gen) && !(s & ST_ENDING) && st_busy(s)
               && !((s & ST_RUNNING) && !(s & ST_INVOKED))) {
            if (cas_state(slot, &s, s | ST_ENDING | ST_WAITING)) {
                claimed = true;
                break;
            }
        }
        cc_wait_unlock();
        if (claimed) {
            s = wait_not_busy(slot);
            break;
        }
    }

    cc_channel *ch = slot->channel;
    if (cc_faults_armed(ch->host)) {
        unsigned faults = cc_faults_visit(ch->host, CC_FAULT_AT_END);
        if (faults) {
            cc_faults_apply(ch->host, ch, faults);
            s = cc_cancel_ending(ch->host, slot, faults);
        }
    }
    cc_op_finish(slot, s);
    return CC_OK;
}

void cc_op_finish(cc_slot *slot, uint64_t s)
{
    free_state(slot, s);
    cc_op_release(slot, s);
}

static void free_state(cc_slot *slot, uint64_t s)
{
    if (!(s & ST_ARMED) || !slot->free_state)
        return;
    /* Still in flight: a close from in here could never finish. */
    cc_frame frame;
    cc_frame_push(&frame, slot, slot->channel->host);
    slot->free_state(slot->user);
    cc_frame_pop(&frame);
}

void cc_op_release(cc_slot *slot, uint64_t s)
{
    cc_channel *ch = slot->channel;
    bool freed = (s & ST_ARMED) && slot->free_state;
    cc_mutex_lock(&ch->lock);
    if (slot->prev)
        slot->prev->next = slot->next;
    else
        ch->inflight = slot->next;
    if (slot->next)
        slot->next->prev = slot->prev;
    /* The new generation makes every copy of the handle stale (G10). */
    atomic_store_explicit(&slot->state, (uint64_t)(ST_GEN(s) + 1) << 32,
                          memory_order_release);
    slot->channel = NULL; /* no stale pointer keeps a freed channel "reachable" */
    slot->next = ch->free;
    ch->free = slot;
    ch->nfree++;
    ch->n_inflight--;
    ch->ended++;
    ch->free_states += freed;
    bool wake = ch->closing && ch->n_inflight == 0;
    if (ch->nfree > 2 * CC_SLOT_BATCH)
        cc_channel_trim(ch);
    cc_mutex_unlock(&ch->lock);
    /* After the unlock this thread touches neither channel nor host: a
     * waiting close may free both as soon as it sees the channel idle. */
    if (wake)
        cc_wake_all();
}
