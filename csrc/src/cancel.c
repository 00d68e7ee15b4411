/* cancel.c - canceling operations and running their callbacks: at most once
 * (G1), never under a lock (G11), handed over to the end without overlap
 * (G5); and finishing ended operations (G4).
 *
 * A canceller first marks operations under their channel's lock, taking the
 * callback run of each armed or watched one in the same CAS (state.c); then
 * drops every lock and runs what it took.  The taken slots are linked
 * through next_cancel, so a cancel allocates nothing and costs time linear
 * in the operations in flight.  C callbacks run one by one; watched
 * operations go to their host's binding in batches, one call per batch.
 */
#include "internal.h"

/* ------------------------------------------------------------- frames */

/* The frames are a list per thread, headed in the sync layer's one
 * thread-local slot (a TLS index on Win32, _Thread_local elsewhere). */

void cc_frame_push(cc_frame *frame, const cc_slot *slot, const cc_host *host)
{
    frame->slot = slot;
    frame->batch = NULL;
    frame->nbatch = 0;
    frame->pending = NULL;
    frame->npending = NULL;
    frame->rest = NULL;
    frame->host = host;
    frame->prev = cc_tls_get();
    cc_tls_set(frame);
}

void cc_frame_pop(cc_frame *frame) { cc_tls_set(frame->prev); }

bool cc_in_callback(const cc_slot *slot, const cc_host *host)
{
    for (const cc_frame *f = cc_tls_get(); f; f = f->prev) {
        if (!slot) {
            if (f->host == host)
                return true;
            continue;
        }
        if (f->slot == slot)
            return true;
        for (unsigned i = 0; i < f->nbatch; i++)
            if (f->batch[i] == slot)
                return true;
    }
    return false;
}

bool cc_owns_queued(const cc_slot *slot)
{
    for (const cc_frame *f = cc_tls_get(); f; f = f->prev) {
        if (!f->pending)
            continue;
        for (unsigned i = 0; i < *f->npending; i++)
            if (f->pending[i] == slot)
                return true;
        for (uint32_t e = *f->rest; e; e = cc_slot_at(CC_LINK_INDEX(e))->next_cancel)
            if (CC_LINK_INDEX(e) == slot->index)
                return true;
    }
    return false;
}

/* --------------------------------------------------------- accounting */

static void count_cancel(cc_host *host, cc_reason reason, uint64_t n)
{
    atomic_fetch_add_explicit(reason == CC_HOST_ABORT ? &host->cancels_abort
                                                      : &host->cancels_fault,
                              n, memory_order_relaxed);
}

static void count_latency(cc_host *host, int64_t trigger_ns, uint64_t n)
{
    if (trigger_ns < 0)
        return;
    int64_t d = cc_now_ns() - trigger_ns;
    uint64_t ns = d > 0 ? (uint64_t)d : 0;
    unsigned b = 0;
    while (b < CC_LATENCY_BUCKETS - 1 && ns > cc_latency_bound_ns(b))
        b++;
    atomic_fetch_add_explicit(&host->latency[b], n, memory_order_relaxed);
    atomic_fetch_add_explicit(&host->latency_sum_ns, ns * n, memory_order_relaxed);
}

uint64_t cc_latency_bound_ns(unsigned bucket)
{
    if (bucket >= CC_LATENCY_BUCKETS - 1)
        return UINT64_MAX;
    return (uint64_t)1000 << bucket;
}

/* ------------------------------------------------------ running a list */

static int64_t handle_of(const cc_slot *slot, uint64_t s)
{
    return (int64_t)cc_handle_value(slot, ST_GEN(s));
}

static void binding_call(cc_host *host, const cc_notice *notices, size_t n)
{
    cc_binding_fn fn = atomic_load_explicit(&host->bind_fn, memory_order_acquire);
    if (fn)
        fn(atomic_load_explicit(&host->bind_arg, memory_order_acquire), notices, n);
}

/* After dropping a run: finish or release what an end left to us. */
static void after_run(cc_slot *slot, bool invoked)
{
    uint64_t s;
    switch (cc_st_drop_run(slot, invoked, &s)) {
    case CC_AFTER_FINISH:
        (void)cc_finish(slot, s, false); /* the callback ended its operation */
        break;
    case CC_AFTER_RELEASE:
        cc_inflight_release(slot, s); /* the overtaking end is done with it */
        break;
    case CC_AFTER_NOTHING:
        break;
    }
}

static void run_c(cc_host *host, cc_slot *slot, cc_reason reason, int64_t trigger_ns)
{
    /* Start the callback unless an end overtook the claim first (G5). */
    bool invoked = cc_st_invoke(slot);
    if (invoked) {
        count_latency(host, trigger_ns, 1);
        cc_frame frame;
        cc_frame_push(&frame, slot, host);
        slot->cancel(reason, slot->user);
        cc_frame_pop(&frame);
        count_cancel(host, reason, 1);
    }
    after_run(slot, invoked);
}

#define CC_BATCH 64

/* A batch of watched operations whose runs this thread claimed: each starts
 * (ST_INVOKED) only now, as the batch is delivered, so until then an end
 * overtakes it -- also one from a C callback this thread runs meanwhile,
 * which must not wait for a batch that is waiting for it. */
typedef struct cc_batch {
    cc_slot *slot[CC_BATCH];
    bool user[CC_BATCH];  /* the user's cancel was taken with the mark */
    unsigned n;
} cc_batch;

static void deliver(cc_host *host, cc_batch *q, cc_reason reason, int64_t trigger_ns)
{
    cc_slot *run[CC_BATCH];
    cc_notice notices[CC_BATCH];
    unsigned n = 0;
    uint64_t users = 0;
    for (unsigned i = 0; i < q->n; i++) {
        cc_slot *slot = q->slot[i];
        if (!cc_st_invoke(slot)) {
            after_run(slot, false); /* an end overtook it: it never starts */
            continue;
        }
        uint64_t s = cc_st_load(slot);
        bool user = q->user[i];
        users += user;
        run[n] = slot;
        notices[n].op = handle_of(slot, s);
        notices[n].user_key = user ? (int64_t)(intptr_t)slot->user : 0;
        notices[n].what = CC_NOTICE_CANCELED | (user ? CC_NOTICE_RUN_USER : 0)
                          | ((int64_t)reason << 8);
        n++;
    }
    q->n = 0;
    if (!n)
        return;
    count_latency(host, trigger_ns, n);
    cc_frame frame;
    cc_frame_push(&frame, NULL, host);
    frame.batch = run;
    frame.nbatch = n;
    binding_call(host, notices, n);
    cc_frame_pop(&frame);
    count_cancel(host, reason, n);
    atomic_fetch_add_explicit(&host->user_cancels, users, memory_order_relaxed);
    /* The batch has returned: drop every run first, then finish what ends
     * left to us -- a free-state run by a finish may end a batch-mate, which
     * must not wait for a run this thread still held. */
    cc_after after[CC_BATCH];
    uint64_t st[CC_BATCH];
    for (unsigned i = 0; i < n; i++)
        after[i] = cc_st_drop_run(run[i], true, &st[i]);
    for (unsigned i = 0; i < n; i++) {
        if (after[i] == CC_AFTER_FINISH)
            (void)cc_finish(run[i], st[i], false);
        else if (after[i] == CC_AFTER_RELEASE)
            cc_inflight_release(run[i], st[i]);
    }
}

static void run_list(cc_host *host, uint32_t list, cc_reason reason, int64_t trigger_ns)
{
    cc_batch q;
    q.n = 0;
    /* The queued runs are this thread's: a registration on one from a C
     * callback run meanwhile must run its cancel here (G3), not wait. */
    cc_frame frame;
    cc_frame_push(&frame, NULL, NULL);
    frame.pending = q.slot;
    frame.npending = &q.n;
    frame.rest = &list;
    while (list) {
        uint32_t entry = list;
        cc_slot *slot = cc_slot_at(CC_LINK_INDEX(entry));
        /* Read the link first: once handed back, the slot may be reused. */
        list = slot->next_cancel;
        uint64_t s = cc_st_load(slot);
        if (!(s & ST_WATCH)) {
            run_c(host, slot, reason, trigger_ns);
            continue;
        }
        q.slot[q.n] = slot;
        q.user[q.n] = (entry & CC_LINK_USER) != 0; /* taken with the mark: ours */
        if (++q.n == CC_BATCH)
            deliver(host, &q, reason, trigger_ns);
    }
    if (q.n)
        deliver(host, &q, reason, trigger_ns);
    cc_frame_pop(&frame);
}

/* ----------------------------------------------------------- triggers */

cc_status cc_cancel_channel(cc_channel *ch)
{
    cc_host *host = ch->host;
    uint32_t list = 0;
    int64_t t0 = cc_now_ns();
    cc_mutex_lock(&ch->lock);
    if (atomic_load_explicit(&ch->state, memory_order_relaxed) == CC_CHANNEL_STATE_CLOSED) {
        cc_mutex_unlock(&ch->lock);
        return CC_E_INVALID_OPERATION;
    }
    atomic_store_explicit(&ch->state, CC_CHANNEL_STATE_FAULTED, memory_order_release);
    uint64_t n = cc_inflight_gather(ch, CC_CHANNEL_FAULTED, &list);
    cc_mutex_unlock(&ch->lock);
    atomic_fetch_add_explicit(&host->ops_canceled, n, memory_order_relaxed);
    run_list(host, list, CC_CHANNEL_FAULTED, t0);
    return CC_OK;
}

cc_status cc_cancel_one(cc_channel *ch, uintptr_t h, cc_reason reason)
{
    cc_host *host = ch->host;
    uint32_t gen, list = 0;
    int64_t t0 = cc_now_ns();
    cc_slot *slot = cc_handle_slot(h, &gen);
    if (!slot)
        return CC_E_INVALID_OPERATION;
    /* Under the channel's lock the slot is in its in-flight list or not:
     * its release unlinks it under this lock, so a live generation read
     * here cannot be reused before the mark. */
    cc_mutex_lock(&ch->lock);
    uint64_t s = cc_st_load(slot);
    if (slot->channel != ch || !cc_gen_live(s, gen) || (s & ST_ENDING)) {
        cc_mutex_unlock(&ch->lock);
        return CC_E_INVALID_OPERATION;
    }
    int marked = cc_st_mark(slot, reason);
    if (marked >= 2) {
        slot->next_cancel = 0;
        list = (slot->index + 1) | (marked == 3 ? CC_LINK_USER : 0);
    }
    cc_mutex_unlock(&ch->lock);
    if (marked)
        atomic_fetch_add_explicit(&host->ops_canceled, 1, memory_order_relaxed);
    run_list(host, list, reason, t0);
    return CC_OK;
}

void cc_cancel_host(cc_host *host)
{
    int64_t t0 = cc_now_ns();
    uint32_t list = 0;
    uint64_t n = 0;
    cc_mutex_lock(&host->lock);
    int hs = atomic_load_explicit(&host->state, memory_order_relaxed);
    if (hs == CC_HOST_STATE_OPEN)
        atomic_store_explicit(&host->state, CC_HOST_STATE_FAULTED, memory_order_release);
    else if (hs == CC_HOST_STATE_CLOSING)
        host->aborted_in_close = true;
    CC_FOR_EACH_CHANNEL(host, ch) {
        cc_mutex_lock(&ch->lock);
        n += cc_inflight_gather(ch, CC_HOST_ABORT, &list);
        cc_mutex_unlock(&ch->lock);
    }
    cc_mutex_unlock(&host->lock);
    atomic_fetch_add_explicit(&host->ops_canceled, n, memory_order_relaxed);
    /* Fire and return: G7 does not wait for the operations to end. */
    run_list(host, list, CC_HOST_ABORT, t0);
}

void cc_cancel_apply(cc_host *host, cc_channel *ch, unsigned faults)
{
    if (faults & (1u << CC_FAULT_CHANNEL))
        (void)cc_cancel_channel(ch);
    if (faults & (1u << CC_FAULT_ABORT_HOST))
        cc_cancel_host(host);
}

/* ------------------------------------------------------- registrations */

void cc_run_registered(cc_host *host, cc_slot *slot, bool owned)
{
    uint64_t s = cc_st_load(slot);
    cc_reason reason = st_reason(s);
    cc_frame frame;
    cc_frame_push(&frame, slot, host);
    if (s & ST_WATCH) {
        cc_notice n = {handle_of(slot, s), (int64_t)(intptr_t)slot->user,
                       CC_NOTICE_RUN_USER | ((int64_t)reason << 8)};
        binding_call(host, &n, 1);
        atomic_fetch_add_explicit(&host->user_cancels, 1, memory_order_relaxed);
    } else {
        slot->cancel(reason, slot->user);
        count_cancel(host, reason, 1);
    }
    cc_frame_pop(&frame);
    if (owned)
        after_run(slot, true);
}

/* ---------------------------------------------------------- finishing */

/* The fault plan fired at this operation's end: it is canceled as the last
 * thing before it completes, its callback run here (G5: free-state follows
 * on this thread), its handle still readable inside. */
static uint64_t cancel_ending(cc_host *host, cc_slot *slot, unsigned faults, uint64_t s)
{
    cc_reason reason = (faults & (1u << CC_FAULT_CHANNEL)) ? CC_CHANNEL_FAULTED : CC_HOST_ABORT;
    uint64_t before = cc_st_run_ending(slot, reason);
    if (!before)
        return s;
    atomic_fetch_add_explicit(&host->ops_canceled, 1, memory_order_relaxed);
    bool armed = (before & ST_ARMED) != 0;
    cc_frame frame;
    cc_frame_push(&frame, slot, host);
    if (before & ST_WATCH) {
        cc_notice n = {handle_of(slot, before), armed ? (int64_t)(intptr_t)slot->user : 0,
                       CC_NOTICE_CANCELED | (armed ? CC_NOTICE_RUN_USER : 0)
                           | ((int64_t)reason << 8)};
        binding_call(host, &n, 1);
        count_cancel(host, reason, 1);
        if (armed)
            atomic_fetch_add_explicit(&host->user_cancels, 1, memory_order_relaxed);
    } else if (armed) {
        slot->cancel(reason, slot->user);
        count_cancel(host, reason, 1);
    }
    cc_frame_pop(&frame);
    return cc_st_ran_ending(slot);
}

int64_t cc_finish_free(cc_slot *slot, uint64_t *state, bool hand_back)
{
    uint64_t s = *state;
    cc_channel *ch = slot->channel;
    cc_host *host = ch->host;
    if (cc_faults_armed(host)) {
        unsigned faults = cc_faults_visit(host, CC_FAULT_AT_END);
        if (faults) {
            cc_cancel_apply(host, ch, faults);
            s = cancel_ending(host, slot, faults, s);
        }
    }
    int64_t due = CC_END_DONE;
    if (s & ST_WATCH) {
        bool has = (s & ST_ARMED) && (s & ST_HAS_FREE);
        int64_t key = (s & ST_ARMED) ? (int64_t)(intptr_t)slot->user : 0;
        if (hand_back) {
            due = key ? key : CC_END_DONE;
        } else {
            cc_notice n = {handle_of(slot, s), key,
                           CC_NOTICE_ENDED | (has ? CC_NOTICE_FREE_DUE : 0)};
            cc_frame frame; /* still in flight: a close from in here never ends */
            cc_frame_push(&frame, slot, host);
            binding_call(host, &n, 1);
            cc_frame_pop(&frame);
        }
    } else if ((s & ST_ARMED) && slot->free_state) {
        cc_frame frame;
        cc_frame_push(&frame, slot, host);
        slot->free_state(slot->user);
        cc_frame_pop(&frame);
    }
    *state = s;
    return due;
}

int64_t cc_finish(cc_slot *slot, uint64_t s, bool hand_back)
{
    int64_t due = cc_finish_free(slot, &s, hand_back);
    cc_inflight_release(slot, s);
    return due;
}
