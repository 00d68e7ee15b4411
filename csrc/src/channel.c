/* channel.c - channels: the unit a fault cancels (G9), and their memory. */
#include <stdlib.h>

#include "internal.h"

cc_status cc_channel_open(cc_host *host, cc_channel **out)
{
    if (!host || !out)
        return CC_E_INVALID_ARG;
    cc_channel *ch = calloc(1, sizeof *ch);
    if (!ch)
        return CC_E_NOMEM;
    if (cc_mutex_init(&ch->lock) != 0) {
        free(ch);
        return CC_E_NOMEM;
    }
    ch->host = host;
    atomic_init(&ch->state, CC_CHANNEL_STATE_OPEN);

    cc_mutex_lock(&host->lock);
    int hs = atomic_load_explicit(&host->state, memory_order_relaxed);
    if (hs != CC_HOST_STATE_OPEN) {
        cc_mutex_unlock(&host->lock);
        cc_mutex_destroy(&ch->lock);
        free(ch);
        return hs == CC_HOST_STATE_FAULTED ? CC_E_OBJECT_FAULTED : CC_E_INVALID_OPERATION;
    }
    cc_sweep_zombies(host);
    ch->host_next = host->channels;
    if (host->channels)
        host->channels->host_prev = ch;
    host->channels = ch;
    host->nchannels++;
    cc_mutex_unlock(&host->lock);
    *out = ch;
    return CC_OK;
}

cc_status cc_channel_fault(cc_channel *ch)
{
    if (!ch)
        return CC_E_INVALID_ARG;
    return cc_cancel_channel(ch);
}

/* Unlinks ch from the host list starting at *head.  Host lock held. */
static void channel_unlink(cc_channel **head, cc_channel *ch)
{
    if (ch->host_prev)
        ch->host_prev->host_next = ch->host_next;
    else
        *head = ch->host_next;
    if (ch->host_next)
        ch->host_next->host_prev = ch->host_prev;
    ch->host_prev = ch->host_next = NULL;
}

cc_status cc_channel_close(cc_channel *ch)
{
    if (!ch)
        return CC_E_INVALID_ARG;
    cc_host *host = ch->host;
    cc_mutex_lock(&host->lock);
    cc_mutex_lock(&ch->lock);
    ch->user_closed = true;
    bool idle = ch->n_inflight == 0;
    cc_mutex_unlock(&ch->lock);
    channel_unlink(&host->channels, ch);
    host->nchannels--;
    cc_sweep_zombies(host);
    if (idle) {
        cc_channel_destroy(ch);
    } else {
        /* Its operations go on; abort and close still reach them there. */
        ch->host_next = host->zombies;
        if (host->zombies)
            host->zombies->host_prev = ch;
        host->zombies = ch;
    }
    cc_mutex_unlock(&host->lock);
    return CC_OK;
}

enum cc_channel_state cc_channel_state(const cc_channel *ch)
{
    if (!ch)
        return CC_CHANNEL_STATE_INVALID;
    return (enum cc_channel_state)atomic_load_explicit(&((cc_channel *)ch)->state,
                                                      memory_order_acquire);
}

void cc_channel_destroy(cc_channel *ch)
{
    cc_host *host = ch->host;
    host->gone_begun += ch->begun;
    host->gone_ended += ch->ended;
    host->gone_free_states += ch->free_states;
    cc_inflight_drain(ch);
    cc_mutex_destroy(&ch->lock);
    free(ch);
}

void cc_sweep_zombies(cc_host *host)
{
    cc_channel *next;
    for (cc_channel *z = host->zombies; z; z = next) {
        next = z->host_next;
        cc_mutex_lock(&z->lock);
        bool idle = z->n_inflight == 0;
        cc_mutex_unlock(&z->lock);
        /* Idle is final: a closed channel admits no new operation, and an
         * operation's end touches its channel only under the lock. */
        if (idle) {
            channel_unlink(&host->zombies, z);
            cc_channel_destroy(z);
        }
    }
}
