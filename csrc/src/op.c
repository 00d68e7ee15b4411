/* op.c - an operation's life: begin, register, read, end (G1-G5, G10), for
 * C callers and, watched, for language bindings.
 *
 * The decisions are state.c's; this file checks arguments and handles,
 * visits the fault plan and carries out what each move says.
 */
#include "internal.h"

/* The slot of an operation still valid to use, or NULL (its state word in
 * *s).  Once the end began the handle is stale (G10), even while the slot
 * is still being released -- except on the thread running its cancel
 * callback, which may still read its operation. */
static cc_slot *live_slot(uintptr_t h, uint32_t *gen, uint64_t *s)
{
    cc_slot *slot = cc_handle_slot(h, gen);
    if (!slot)
        return NULL;
    *s = cc_st_load(slot);
    if (!cc_gen_live(*s, *gen))
        return NULL;
    if ((*s & ST_ENDING) && !((*s & ST_INVOKED) && cc_in_callback(slot, NULL)))
        return NULL;
    return slot;
}

/* ---------------------------------------------------------------- begin */

static cc_status admission(const cc_channel *ch)
{
    int hs = atomic_load_explicit(&ch->host->state, memory_order_acquire);
    int cs = atomic_load_explicit(&ch->state, memory_order_relaxed);
    if (cs == CC_CHANNEL_STATE_FAULTED || hs == CC_HOST_STATE_FAULTED)
        return CC_E_OBJECT_FAULTED;
    if (cs != CC_CHANNEL_STATE_OPEN || hs != CC_HOST_STATE_OPEN)
        return CC_E_INVALID_OPERATION;
    return CC_OK;
}

static cc_status begin(cc_channel *ch, bool watched, uintptr_t *out)
{
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
    cc_slot *slot = cc_inflight_add(ch, watched);
    if (!slot) {
        cc_mutex_unlock(&ch->lock);
        return CC_E_NOMEM;
    }
    *out = cc_handle_value(slot, ST_GEN(cc_st_load(slot)));
    cc_mutex_unlock(&ch->lock);
    if (faults)
        cc_cancel_apply(host, ch, faults);
    return CC_OK;
}

cc_status cc_op_begin(cc_channel *ch, cc_op **out)
{
    if (!ch || !out)
        return CC_E_INVALID_ARG;
    uintptr_t h;
    cc_status st = begin(ch, false, &h);
    if (st == CC_OK)
        *out = (cc_op *)h;
    return st;
}

int64_t cc_op_begin_watched(cc_channel *ch)
{
    if (!ch)
        return CC_E_INVALID_ARG;
    if (!atomic_load_explicit(&ch->host->bind_fn, memory_order_acquire))
        return CC_E_INVALID_OPERATION;
    uintptr_t h;
    cc_status st = begin(ch, true, &h);
    return st == CC_OK ? (int64_t)h : st;
}

/* ------------------------------------------------------------- register */

/* Gives back a registration claim that lost to an end; finishes the
 * operation if that end was deferred to us. */
static void drop_register(cc_slot *slot)
{
    uint64_t s;
    if (cc_st_drop_register(slot, &s) == CC_AFTER_FINISH)
        (void)cc_finish(slot, s, false);
}

static cc_status register_cancel(uintptr_t h, bool watched, cc_cancel_fn cancel,
                                 cc_free_state_fn free_state, void *state, bool has_free)
{
    uint32_t gen;
    uint64_t s;
    cc_slot *slot = live_slot(h, &gen, &s);
    if (!slot || watched != ((s & ST_WATCH) != 0))
        return CC_E_INVALID_OPERATION;

    /* Phase 1: claim the registration (G2).  While claimed and not armed the
     * slot is busy: an end waits, so the channel and host read below stay
     * alive and the fields written are ours alone. */
    cc_status st = cc_st_claim_register(slot, gen);
    if (st != CC_OK)
        return st;
    cc_channel *ch = slot->channel;
    cc_host *host = ch->host;
    if (cc_faults_armed(host)) {
        unsigned faults = cc_faults_visit(host, CC_FAULT_AT_REGISTER);
        if (faults & (1u << CC_FAULT_NOMEM)) {
            drop_register(slot);
            return CC_E_NOMEM;
        }
        if (faults) {
            /* Injected before the registration is armed, so this operation
             * is only marked; the callback then runs below, as for any
             * registration on a canceled operation (G3). */
            cc_frame frame;
            cc_frame_push(&frame, slot, host);
            cc_cancel_apply(host, ch, faults);
            cc_frame_pop(&frame);
        }
    }
    if (watched) {
        slot->user = state;
    } else {
        slot->cancel = cancel;
        slot->free_state = free_state;
        slot->user = state;
    }

    /* Phase 2: arm it, or run the callback now if already canceled (G3). */
    bool mine = cc_in_callback(slot, NULL);
    for (bool armed = false; !armed;) {
        switch (cc_st_arm(slot, has_free ? ST_HAS_FREE : 0, mine)) {
        case CC_ARM_DONE:
            return CC_OK;
        case CC_ARM_RUN:
            cc_run_registered(host, slot, true);
            return CC_OK;
        case CC_ARM_RUN_NESTED:
            cc_run_registered(host, slot, false);
            return CC_OK;
        case CC_ARM_BUSY:
            /* The run that owns the slot may be queued on this very thread
             * (a fan-out whose C callback we are in): then it is ours. */
            if (cc_owns_queued(slot))
                mine = true;
            else
                cc_st_wait_not_running(slot);
            break;
        case CC_ARM_ENDING:
            armed = true;
            break;
        }
    }
    drop_register(slot);
    return CC_E_INVALID_OPERATION;
}

cc_status cc_op_register_cancel(cc_op *op, cc_cancel_fn cancel,
                                cc_free_state_fn free_state, void *state)
{
    if (!op || !cancel)
        return CC_E_INVALID_ARG;
    return register_cancel((uintptr_t)op, false, cancel, free_state, state, false);
}

cc_status cc_op_register_watched(int64_t op, int64_t user_key, int has_free_state)
{
    if (op <= 0 || user_key <= CC_END_DEFERRED)
        return CC_E_INVALID_ARG;
    return register_cancel((uintptr_t)op, true, NULL, NULL, (void *)(intptr_t)user_key,
                           has_free_state != 0);
}

/* -------------------------------------------------------------- getters */

int cc_op_is_canceled(const cc_op *op)
{
    uint32_t gen;
    uint64_t s;
    if (!live_slot((uintptr_t)op, &gen, &s))
        return CC_E_INVALID_OPERATION;
    return (s & ST_CANCELED) != 0;
}

cc_reason cc_op_reason(const cc_op *op)
{
    uint32_t gen;
    uint64_t s;
    if (!live_slot((uintptr_t)op, &gen, &s))
        return CC_REASON_INVALID;
    return (s & ST_CANCELED) ? st_reason(s) : CC_NOT_CANCELED;
}

/* ------------------------------------------------------------------ end */

static int64_t end(uintptr_t h, bool watched)
{
    uint32_t gen;
    uint64_t s;
    cc_slot *slot = live_slot(h, &gen, &s);
    if (!slot || watched != ((s & ST_WATCH) != 0))
        return CC_E_INVALID_OPERATION;
    cc_end how = cc_st_begin_end(slot, gen, cc_in_callback(slot, NULL), false, &s);
    if (how == CC_ENDING_BUSY) {
        /* Busy with a run that has started: on another thread, wait for it
         * (G5); but a run this thread queued and will deliver once the
         * callback it is in returns is its own: deferred, as inside it. */
        how = cc_st_begin_end(slot, gen, cc_owns_queued(slot), true, &s);
    }
    switch (how) {
    case CC_ENDING_BUSY: /* (not with may_wait) */
    case CC_ENDING_STALE:
        return CC_E_INVALID_OPERATION;
    case CC_ENDING_DEFERRED:
        /* Inside its own callback: the thread that owns the busy slot
         * finishes it when that returns (G5). */
        return CC_END_DEFERRED;
    case CC_ENDING_OVERTAKE: {
        /* A run queued by a canceller never starts (G5); free-state runs
         * now, and whichever of us and the run's owner lets go last
         * releases the slot. */
        int64_t due = cc_finish_free(slot, &s, watched);
        if (!cc_st_leave_overtaken(slot, &s))
            cc_inflight_release(slot, s);
        return due;
    }
    case CC_ENDING_WAIT:
        s = cc_st_wait_not_busy(slot); /* a cancel on another thread (G5) */
        break;
    case CC_ENDING_PROCEED:
        break;
    }
    return cc_finish(slot, s, watched);
}

cc_status cc_op_end(cc_op *op)
{
    if (!op)
        return CC_E_INVALID_ARG;
    int64_t r = end((uintptr_t)op, false);
    return r < 0 ? (cc_status)r : CC_OK;
}

int64_t cc_op_end_watched(int64_t op)
{
    if (op <= 0)
        return CC_E_INVALID_ARG;
    return end((uintptr_t)op, true);
}

/* --------------------------------------------------------------- cancel */

cc_status cc_channel_cancel_op(cc_channel *ch, int64_t op, cc_reason reason)
{
    if (!ch || op <= 0 || (reason != CC_HOST_ABORT && reason != CC_CHANNEL_FAULTED))
        return CC_E_INVALID_ARG;
    return cc_cancel_one(ch, (uintptr_t)op, reason);
}
