/* inflight.c - a channel's operations in flight, and its cache of slots.
 *
 * Begin and end take only their channel's lock, to link a slot into and out
 * of the channel's in-flight list; slots come from a per-channel cache that
 * is refilled from, and trimmed back to, the process-wide pool in batches,
 * so an operation allocates nothing in steady state.
 */
#include "internal.h"

cc_slot *cc_inflight_add(cc_channel *ch, bool watched)
{
    if (!ch->free) {
        ch->nfree += cc_pool_take(&ch->free, CC_SLOT_BATCH);
        if (!ch->free)
            return NULL;
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
    cc_st_begin(slot, watched);
    return slot;
}

uint64_t cc_inflight_gather(cc_channel *ch, cc_reason reason, uint32_t *list)
{
    uint64_t n = 0;
    for (cc_slot *slot = ch->inflight; slot; slot = slot->next) {
        int marked = cc_st_mark(slot, reason);
        n += marked != 0;
        if (marked >= 2) {
            slot->next_cancel = *list;
            *list = (slot->index + 1) | (marked == 3 ? CC_LINK_USER : 0);
        }
    }
    return n;
}

/* Gives slots beyond one batch of the local cache back to the pool. */
static void trim(cc_channel *ch)
{
    cc_slot *head = ch->free, *tail = head;
    for (unsigned i = 1; i < CC_SLOT_BATCH; i++)
        tail = tail->next;
    ch->free = tail->next;
    ch->nfree -= CC_SLOT_BATCH;
    cc_pool_give(head, tail, CC_SLOT_BATCH);
}

void cc_inflight_release(cc_slot *slot, uint64_t s)
{
    cc_channel *ch = slot->channel;
    bool freed = (s & ST_ARMED) && ((s & ST_WATCH) ? (s & ST_HAS_FREE) != 0
                                                   : slot->free_state != NULL);
    cc_mutex_lock(&ch->lock);
    if (slot->prev)
        slot->prev->next = slot->next;
    else
        ch->inflight = slot->next;
    if (slot->next)
        slot->next->prev = slot->prev;
    slot->channel = NULL; /* no stale pointer keeps a freed channel "reachable" */
    slot->free_state = NULL;
    if (cc_st_release(slot, s)) {
        slot->next = ch->free;
        ch->free = slot;
        ch->nfree++;
    }
    ch->n_inflight--;
    ch->ended++;
    ch->free_states += freed;
    bool wake = ch->closing && ch->n_inflight == 0;
    if (ch->nfree > 2 * CC_SLOT_BATCH)
        trim(ch);
    cc_mutex_unlock(&ch->lock);
    /* After the unlock this thread touches neither channel nor host: a
     * waiting close may free both as soon as it sees the channel idle. */
    if (wake)
        cc_wake_all();
}

void cc_inflight_drain(cc_channel *ch)
{
    if (!ch->free)
        return;
    cc_slot *tail = ch->free;
    while (tail->next)
        tail = tail->next;
    cc_pool_give(ch->free, tail, ch->nfree);
    ch->free = NULL;
    ch->nfree = 0;
}
