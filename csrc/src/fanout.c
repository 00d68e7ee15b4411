/* fanout.c - running cancel callbacks: at most once (G1), never under a
 * lock (G11), handed over to cc_op_end without overlap (G5).
 *
 * A canceller first marks operations under their channel's lock, claiming
 * the callback run of each armed one (ST_RUNNING | ST_FIRED in one CAS);
 * then drops every lock and runs the claimed callbacks.  The claimed slots
 * are linked through next_cancel, so an abort allocates nothing and costs
 * time linear in the operations in flight.
 */
#include "internal.h"

static _Thread_local cc_frame *tls_frames;

void cc_frame_push(cc_frame *frame, const cc_slot *slot, const cc_host *host)
{
    frame->slot = slot;
    frame->host = host;
    frame->prev = tls_frames;
    tls_frames = frame;
}

void cc_frame_pop(cc_frame *frame) { tls_frames = frame->prev; }

bool cc_in_callback(const cc_slot *slot, const cc_host *host)
{
    for (const cc_frame *f = tls_frames; f; f = f->prev)
        if ((slot && f->slot == slot) || (!slot && f->host == host))
            return true;
    return false;
}

uint64_t cc_channel_gather(cc_channel *ch, cc_reason reason, uint32_t *list)
{
    uint64_t mark = ST_CANCELED | (reason == CC_CHANNEL_FAULTED ? ST_FAULT_REASON : 0);
    uint64_t n = 0;
    for (cc_slot *slot = ch->inflight; slot; slot = slot->next) {
        uint64_t s = atomic_load_explicit(&slot->state, memory_order_acquire);
        for (;;) {
            /* The first trigger decides (G6); none after the end began (G5). */
            if (s & (ST_CANCELED | ST_ENDING))
                break;
            /* Armed and not canceled means the callback never ran. */
            uint64_t claim = (s & ST_ARMED) ? ST_RUNNING | ST_FIRED : 0;
            if (atomic_compare_exchange_weak_explicit(&slot->state, &s, s | mark | claim,
                                                      memory_order_acq_rel,
                                                      memory_order_acquire)) {
                n++;
                if (claim) {
                    slot->next_cancel = *list;
                    *list = slot->index + 1;
                }
                break;
            }
        }
    }
    return n;
}

void cc_fanout_run(cc_host *host, uint32_t list, cc_reason reason)
{
    while (list) {
        cc_slot *slot = cc_slot_at(list - 1);
        /* Read the link first: once handed back, the slot may be reused. */
        list = slot->next_cancel;
        cc_run_cancel(host, slot, reason);
    }
}

static void count_cancel(cc_host *host, cc_reason reason)
{
    atomic_fetch_add_explicit(reason == CC_HOST_ABORT ? &host->cancels_abort
                                                      : &host->cancels_fault,
                              1, memory_order_relaxed);
}

void cc_run_cancel(cc_host *host, cc_slot *slot, cc_reason reason)
{
    /* Start the callback unless an end overtook the claim first (G5). */
    uint64_t s = atomic_load_explicit(&slot->state, memory_order_acquire);
    while (!(s & ST_ENDING))
        if (atomic_compare_exchange_weak_explicit(&slot->state, &s, s | ST_INVOKED,
                                                  memory_order_acq_rel,
                                                  memory_order_acquire))
            break;
    bool invoked = !(s & ST_ENDING);
    if (invoked) {
        cc_frame frame;
        cc_frame_push(&frame, slot, host);
        slot->cancel(reason, slot->user);
        cc_frame_pop(&frame);
        count_cancel(host, reason);
    }

    /* Hand the slot back.  A waiting end sleeps under the wait lock, so
     * clear the claim under it too: the waiter cannot wake before we are
     * done touching anything. */
    const uint64_t claim = ST_RUNNING | ST_INVOKED;
    s = atomic_load_explicit(&slot->state, memory_order_acquire);
    for (;;) {
        if (s & ST_WAITING) {
            cc_wait_lock();
            atomic_fetch_and_explicit(&slot->state, ~claim, memory_order_acq_rel);
            cc_wake_all_locked();
            cc_wait_unlock();
            return;
        }
        if (atomic_compare_exchange_weak_explicit(&slot->state, &s, s & ~claim,
                                                  memory_order_acq_rel,
                                                  memory_order_acquire))
            break;
    }
    s &= ~claim;
    if (!(s & ST_ENDING))
        return;
    if (invoked)
        cc_op_finish(slot, s); /* the callback ended its own operation (G5) */
    else if (s & ST_FREED)
        cc_op_release(slot, s); /* the overtaking end is done with it */
    /* else the overtaking end is still in free-state and releases itself */
}

uint64_t cc_cancel_ending(cc_host *host, cc_slot *slot, unsigned faults)
{
    uint64_t s = atomic_load_explicit(&slot->state, memory_order_acquire);
    if (s & ST_CANCELED)
        return s;
    cc_reason reason = (faults & (1u << CC_FAULT_CHANNEL)) ? CC_CHANNEL_FAULTED
                                                            : CC_HOST_ABORT;
    uint64_t mark = ST_CANCELED | (reason == CC_CHANNEL_FAULTED ? ST_FAULT_REASON : 0);
    if (s & ST_ARMED)
        mark |= ST_FIRED;
    /* Cancellers skip an ending slot, so only the fan-out's marks race us. */
    s = atomic_fetch_or_explicit(&slot->state, mark, memory_order_acq_rel) | mark;
    atomic_fetch_add_explicit(&host->ops_canceled, 1, memory_order_relaxed);
    if (s & ST_ARMED) {
        cc_frame frame;
        cc_frame_push(&frame, slot, host);
        slot->cancel(reason, slot->user);
        cc_frame_pop(&frame);
        count_cancel(host, reason);
    }
    return s;
}
