/* host.c - the service host: its state machine (G7, G8, G12), the waits of
 * close and free, and statistics. */
#include <stdlib.h>

#include "internal.h"

static inline int host_state(const cc_host *host)
{
    return atomic_load_explicit(&((cc_host *)host)->state, memory_order_acquire);
}

static inline void set_state(cc_host *host, int state)
{
    atomic_store_explicit(&host->state, state, memory_order_release);
}

cc_status cc_host_create(cc_host **out)
{
    if (!out)
        return CC_E_INVALID_ARG;
    cc_host *host = calloc(1, sizeof *host);
    if (!host)
        return CC_E_NOMEM;
    if (cc_mutex_init(&host->lock) != 0) {
        free(host);
        return CC_E_NOMEM;
    }
    atomic_init(&host->state, CC_HOST_STATE_CREATED);
    host->close_timeout_ms = 5000;
    cc_faults_init(&host->faults);
    *out = host;
    return CC_OK;
}

cc_status cc_host_open(cc_host *host)
{
    if (!host)
        return CC_E_INVALID_ARG;
    cc_status st = CC_E_INVALID_OPERATION;
    cc_mutex_lock(&host->lock);
    if (host_state(host) == CC_HOST_STATE_CREATED) {
        set_state(host, CC_HOST_STATE_OPEN);
        st = CC_OK;
    }
    cc_mutex_unlock(&host->lock);
    return st;
}

cc_status cc_host_abort(cc_host *host)
{
    if (!host)
        return CC_E_INVALID_ARG;
    cc_cancel_host(host);
    return CC_OK;
}

/* Waits until no operation of the host is in flight, or until deadline_ns
 * (monotonic; < 0: forever).  False on timeout.  Host lock not held. */
static bool wait_idle(cc_host *host, int64_t deadline_ns)
{
    for (;;) {
        /* Read the epoch before looking: an end that idles a channel after
         * we looked bumps it, so the wait below cannot miss it. */
        cc_wait_lock();
        uint64_t epoch = cc_wait_epoch();
        cc_wait_unlock();

        uint64_t busy = 0;
        cc_mutex_lock(&host->lock);
        CC_FOR_EACH_CHANNEL(host, ch) {
            cc_mutex_lock(&ch->lock);
            ch->closing = true;
            busy += ch->n_inflight;
            cc_mutex_unlock(&ch->lock);
        }
        cc_mutex_unlock(&host->lock);
        if (busy == 0)
            return true;

        bool in_time = true;
        cc_wait_lock();
        while (cc_wait_epoch() == epoch && (in_time = cc_wait_until(deadline_ns)))
            ;
        cc_wait_unlock();
        if (!in_time)
            return false;
    }
}

cc_status cc_host_close(cc_host *host, int64_t timeout_ms)
{
    if (!host)
        return CC_E_INVALID_ARG;
    /* From inside a callback of this host, close would wait for an
     * operation that cannot end before the callback returns. */
    if (cc_in_callback(NULL, host))
        return CC_E_INVALID_OPERATION;
    cc_mutex_lock(&host->lock);
    int hs = host_state(host);
    if (hs != CC_HOST_STATE_OPEN && hs != CC_HOST_STATE_FAULTED) {
        cc_mutex_unlock(&host->lock);
        return CC_E_INVALID_OPERATION;
    }
    if (timeout_ms < 0)
        timeout_ms = host->close_timeout_ms;
    set_state(host, CC_HOST_STATE_CLOSING);
    host->aborted_in_close = false;
    cc_mutex_unlock(&host->lock);

    /* A timeout too large to add to the clock is no deadline at all. */
    int64_t now = cc_now_ns(), deadline = -1;
    if (timeout_ms <= (INT64_MAX - now) / 1000000)
        deadline = now + timeout_ms * 1000000;
    bool escalated = false;
    if (!wait_idle(host, deadline)) {
        /* G8: the timeout turns into an abort, then close waits on. */
        escalated = true;
        cc_cancel_host(host);
        wait_idle(host, -1);
    }

    cc_mutex_lock(&host->lock);
    set_state(host, CC_HOST_STATE_CLOSED);
    CC_FOR_EACH_CHANNEL(host, ch) {
        cc_mutex_lock(&ch->lock);
        atomic_store_explicit(&ch->state, CC_CHANNEL_STATE_CLOSED, memory_order_release);
        ch->closing = false;
        cc_mutex_unlock(&ch->lock);
    }
    cc_sweep_zombies(host);
    bool aborted = host->aborted_in_close;
    cc_mutex_unlock(&host->lock);
    if (escalated)
        return CC_E_TIMEOUT;
    return aborted ? CC_E_OPERATION_ABORTED : CC_OK;
}

cc_status cc_host_reset(cc_host *host)
{
    if (!host)
        return CC_E_INVALID_ARG;
    cc_status st = CC_E_INVALID_OPERATION;
    cc_mutex_lock(&host->lock);
    int hs = host_state(host);
    if (hs == CC_HOST_STATE_CLOSED || hs == CC_HOST_STATE_CREATED) {
        set_state(host, CC_HOST_STATE_CREATED);
        st = CC_OK;
    }
    cc_mutex_unlock(&host->lock);
    return st;
}

void cc_host_free(cc_host *host)
{
    if (!host)
        return;
    cc_cancel_host(host);
    wait_idle(host, -1);
    cc_mutex_lock(&host->lock);
    cc_channel *next;
    for (int zombies = 0; zombies < 2; zombies++)
        for (cc_channel *ch = zombies ? host->zombies : host->channels; ch; ch = next) {
            next = ch->host_next;
            cc_channel_destroy(ch);
        }
    cc_mutex_unlock(&host->lock);
    cc_faults_destroy(&host->faults);
    cc_mutex_destroy(&host->lock);
    free(host);
}

enum cc_host_state cc_host_state(const cc_host *host)
{
    return host ? (enum cc_host_state)host_state(host) : CC_HOST_STATE_INVALID;
}

cc_status cc_host_set_close_timeout(cc_host *host, int64_t timeout_ms)
{
    if (!host || timeout_ms < 0)
        return CC_E_INVALID_ARG;
    cc_mutex_lock(&host->lock);
    host->close_timeout_ms = timeout_ms;
    cc_mutex_unlock(&host->lock);
    return CC_OK;
}

int64_t cc_host_close_timeout(const cc_host *host)
{
    if (!host)
        return -1;
    cc_mutex_lock((cc_mutex *)&host->lock);
    int64_t ms = host->close_timeout_ms;
    cc_mutex_unlock((cc_mutex *)&host->lock);
    return ms;
}

cc_status cc_host_get_stats(cc_host *host, cc_stats *out)
{
    if (!host || !out)
        return CC_E_INVALID_ARG;
    cc_stats st = {0};
    cc_mutex_lock(&host->lock);
    st.ops_begun = host->gone_begun;
    st.ops_ended = host->gone_ended;
    st.free_states_run = host->gone_free_states;
    st.channels_open = host->nchannels;
    CC_FOR_EACH_CHANNEL(host, ch) {
        cc_mutex_lock(&ch->lock);
        st.ops_begun += ch->begun;
        st.ops_ended += ch->ended;
        st.ops_in_flight += ch->n_inflight;
        st.free_states_run += ch->free_states;
        cc_mutex_unlock(&ch->lock);
    }
    cc_mutex_unlock(&host->lock);
    st.ops_canceled = atomic_load_explicit(&host->ops_canceled, memory_order_relaxed);
    st.cancels_host_abort = atomic_load_explicit(&host->cancels_abort, memory_order_relaxed);
    st.cancels_channel_faulted = atomic_load_explicit(&host->cancels_fault, memory_order_relaxed);
    st.callback_errors = atomic_load_explicit(&host->cb_errors, memory_order_relaxed);
    *out = st;
    return CC_OK;
}

uint64_t cc_host_stat(cc_host *host, cc_stat which)
{
    if (!host)
        return 0;
    cc_stats st;
    switch (which) {
    case CC_STAT_OPS_CANCELED:
        return atomic_load_explicit(&host->ops_canceled, memory_order_relaxed);
    case CC_STAT_CANCELS_HOST_ABORT:
        return atomic_load_explicit(&host->cancels_abort, memory_order_relaxed);
    case CC_STAT_CANCELS_CHANNEL_FAULTED:
        return atomic_load_explicit(&host->cancels_fault, memory_order_relaxed);
    case CC_STAT_CALLBACK_ERRORS:
        return atomic_load_explicit(&host->cb_errors, memory_order_relaxed);
    case CC_STAT_FAULTS_INJECTED:
        return cc_host_fault_count(host);
    case CC_STAT_LATENCY_SUM_NS:
        return atomic_load_explicit(&host->latency_sum_ns, memory_order_relaxed);
    case CC_STAT_LATENCY_COUNT: {
        uint64_t n = 0;
        for (unsigned i = 0; i < CC_LATENCY_BUCKETS; i++)
            n += atomic_load_explicit(&host->latency[i], memory_order_relaxed);
        return n;
    }
    case CC_STAT_OPS_IN_FLIGHT:
    case CC_STAT_OPS_BEGUN:
    case CC_STAT_OPS_ENDED:
    case CC_STAT_FREE_STATES_RUN:
    case CC_STAT_CHANNELS_OPEN:
        (void)cc_host_get_stats(host, &st);
        return which == CC_STAT_OPS_IN_FLIGHT ? st.ops_in_flight
             : which == CC_STAT_OPS_BEGUN     ? st.ops_begun
             : which == CC_STAT_OPS_ENDED     ? st.ops_ended
             : which == CC_STAT_FREE_STATES_RUN ? st.free_states_run
                                              : st.channels_open;
    }
    return 0;
}

cc_status cc_host_latency(cc_host *host, uint64_t *counts, size_t n)
{
    if (!host || !counts || n < CC_LATENCY_BUCKETS)
        return CC_E_INVALID_ARG;
    for (unsigned i = 0; i < CC_LATENCY_BUCKETS; i++)
        counts[i] = atomic_load_explicit(&host->latency[i], memory_order_relaxed);
    return CC_OK;
}

cc_status cc_host_set_binding(cc_host *host, cc_binding_fn fn, void *arg)
{
    if (!host)
        return CC_E_INVALID_ARG;
    atomic_store_explicit(&host->bind_arg, arg, memory_order_release);
    atomic_store_explicit(&host->bind_fn, fn, memory_order_release);
    return CC_OK;
}

cc_status cc_host_report_callback_error(cc_host *host)
{
    if (!host)
        return CC_E_INVALID_ARG;
    atomic_fetch_add_explicit(&host->cb_errors, 1, memory_order_relaxed);
    return CC_OK;
}
