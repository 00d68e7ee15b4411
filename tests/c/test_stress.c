/* test_stress.c - multi-threaded stress of the cancellation core: the
 * scenarios.
 *
 * Every scenario races begin / register / end against cc_host_abort,
 * cc_channel_fault and cc_host_close over many rounds, then checks exact
 * counts.  The callbacks cannot check much where they run (they are the
 * thing under test), so each operation gets a record (op_rec) that its
 * callbacks fill with atomic counters, flags and sequence numbers; after
 * each round, with every thread joined and the host closed, the records are
 * checked against the guarantees of DESIGN.md (G1-G11) and against the
 * host's own statistics.  One exception to "ticks only" (see the harness),
 * scenario 4b, leans on a 10 ms margin and says why.
 *
 * This file is the table of scenarios: each is its workers, its callbacks,
 * one round (stress_round_fn) and its checks.  The machinery -- records,
 * triggers, operation steps, the checks every scenario shares, rounds, time
 * cap, watchdog, summaries -- is in stress_harness.[ch].  To add a race:
 * write its round function and add a row to the table at the bottom.
 *
 * Environment:
 *   CC_STRESS_SCALE  float, default 1.0: scales every scenario's rounds.
 *                    Measured on 2 cores: plain 1.0 ~8-13 s; ASan 1.0
 *                    ~18 s; TSan 0.5 ~43 s (0.3 ~18 s).  Unscaled, a
 *                    per-scenario time cap keeps TSan under ~2 min.
 *   CC_STRESS_SEED   the seed of every random choice (printed at start), to
 *                    repeat a failing run's choices.  Thread timing cannot
 *                    be repeated, so rerun a few times.
 *   CC_STRESS_ONLY   run only the scenarios whose name contains this text.
 *
 * A watchdog (SIGALRM) ends the process with a message naming the scenario,
 * round and seed if a scenario deadlocks, instead of hanging CI.
 */
#include "stress_harness.h"

/* ================================================= 1. workers vs abort
 *
 * 2-4 workers loop begin / (register) / busy / end on their own channels
 * while a trigger thread aborts the host at a random moment.  In a third of
 * the rounds the main thread closes the host concurrently too, so abort
 * lands before, during or after the close: close returns CC_OK, or
 * CC_E_OPERATION_ABORTED only if the abort overlapped it. */

#define S1_CAP 4096

static void *s1_worker(void *arg)
{
    worker *w = arg;
    t_tid = w->tid = new_tid();
    wait_flag(&w->ctx->go);
    while (!atomic_load(&w->ctx->stop)) {
        op_rec *r = worker_begin(w, w->chan);
        if (!r)
            break;
        if (rng_pct(&w->rng, 80))
            op_register(r, cb_cancel);
        op_busy(r, (unsigned)rng_below(&w->rng, 40));
        op_pause(w);
        hold_if_last(w, r);
        op_end(r, &w->rng);
        op_done(w);
    }
    return worker_exit(w);
}

static int s1_workers_vs_abort(stress_round *rd)
{
    cc_host *h = rd->host;
    int round = rd->round;
    worker *w = rd->w;
    summary *sum = rd->sum;
    rng_t rr = rd->rng;
    round_ctx ctx;
    int nw = 2 + (int)rng_below(&rr, 3);
    ctx_init(&ctx, h, nw);
    trig *ab = add_trig(&ctx, TRIG_ABORT, 0, (int)rng_below(&rr, S_TRIGGER_OPS),
                        rng_delay(&rr, 20000));
    int close_race = rng_pct(&rr, 33);
    int close_after = (int)rng_below(&rr, S_TRIGGER_OPS);
    if (close_race && rng_pct(&rr, 70)) {
        /* Aim the abort at the close, so that they often overlap. */
        ab->after_ops = close_after + (int)rng_below(&rr, 40) - 20;
        ab->delay_ns = rng_below(&rr, 30000);
    }

    ctx.nworkers = nw;
    for (int i = 0; i < nw; i++) {
        worker_init(&w[i], &ctx, i, i, round);
        start_thread(&w[i].thread, s1_worker, &w[i]);
    }
    start_trigs(&ctx);
    atomic_store(&ctx.go, 1);
    cc_status close_st = CC_OK;
    if (close_race) {
        while (atomic_load(&ctx.ops_done) < close_after
               && atomic_load(&ctx.workers_done) < nw)
            sched_yield();
        atomic_store(&ctx.close_started, 1);
        ctx.close_start = tick();
        close_st = cc_host_close(h, -1);
        ctx.close_end = tick();
    }
    join_trigs(&ctx);
    if (!close_race)
        EXPECT(cc_host_state(h) == CC_HOST_STATE_FAULTED,
               "host in state %d after cc_host_abort, wanted FAULTED (G7)", cc_host_state(h));
    atomic_store(&ctx.stop, 1);
    for (int i = 0; i < nw; i++)
        pthread_join(w[i].thread, NULL);

    if (!close_race) {
        close_quiet(&ctx);
        sum->close_ok++;
    } else {
        EXPECT(close_st == CC_OK || close_st == CC_E_OPERATION_ABORTED,
               "cc_host_close racing an abort returned %s", cc_status_str(close_st));
        if (ab->end < ctx.close_start || ab->start > ctx.close_end)
            EXPECT(close_st == CC_OK,
                   "cc_host_close returned %s though the abort did not overlap it",
                   cc_status_str(close_st));
        EXPECT(cc_host_state(h) == CC_HOST_STATE_CLOSED,
               "host in state %d after close (and abort), wanted CLOSED", cc_host_state(h));
        sum->close_ok += close_st == CC_OK;
        sum->close_aborted += close_st == CC_E_OPERATION_ABORTED;
    }
    ctx_close_channels(&ctx);

    tally *t = &rd->t;
    for (int i = 0; i < nw; i++)
        for (int k = 0; k < w[i].nrec; k++) {
            const op_rec *r = &w[i].recs[k];
            verify_rec(r, t, 1);
            check_triggers(&ctx, r);
            check_close_waited(&ctx, r);
            sum->g3_sync += atomic_load(&r->cancel_calls)
                           && atomic_load(&r->cancel_tid) == r->owner_tid;
        }
    rd->host_closed = 1;
    return 1;
}

/* ====================================== 2. channel faults vs workers
 *
 * One or two channels, each shared by two workers; each channel is faulted
 * at a random moment (85%), and the host is aborted at a random moment in a
 * third of the rounds.  The first trigger that reaches an op decides its
 * reason; faults reach only their own channel; the host stays OPEN without
 * an abort (G6, G9).  check_triggers judges every op. */

#define S2_CAP 4096

static void *s2_worker(void *arg)
{
    worker *w = arg;
    t_tid = w->tid = new_tid();
    wait_flag(&w->ctx->go);
    while (!atomic_load(&w->ctx->stop)) {
        op_rec *r = worker_begin(w, w->chan);
        if (!r)
            break;
        if (rng_pct(&w->rng, 90))
            op_register(r, cb_cancel);
        op_busy(r, (unsigned)rng_below(&w->rng, 30));
        op_pause(w);
        hold_if_last(w, r);
        op_end(r, &w->rng);
        op_done(w);
    }
    return worker_exit(w);
}

static int s2_faults_vs_workers(stress_round *rd)
{
    cc_host *h = rd->host;
    int round = rd->round;
    worker *w = rd->w;
    summary *sum = rd->sum;
    rng_t rr = rd->rng;
    round_ctx ctx;
    int nch = 1 + (int)rng_below(&rr, 2), nw = 2 * nch;
    ctx_init(&ctx, h, nch);
    add_fault_abort_trigs(&ctx, &rr, 85, 33, S_TRIGGER_OPS);
    for (int i = 0; i < nw; i++)
        worker_init(&w[i], &ctx, i, i % nch, round);
    run_round(&ctx, w, nw, s2_worker);
    check_states_after_trigs(&ctx);
    close_quiet(&ctx);
    sum->close_ok++;
    ctx_close_channels(&ctx);

    tally *t = &rd->t;
    for (int i = 0; i < nw; i++)
        for (int k = 0; k < w[i].nrec; k++) {
            verify_rec(&w[i].recs[k], t, 1);
            check_triggers(&ctx, &w[i].recs[k]);
        }
    rd->host_closed = 1;
    return 1;
}

/* ============================================ 3. racing registrations
 *
 * The main thread begins a batch of ops; two racers register on each op at
 * the same moment (they meet at a per-op rendezvous first).  Exactly one
 * registration wins (G2); the loser's callbacks never run; the winner's
 * free-state runs exactly once.  Modes: no cancel; ops canceled before the
 * race (the winner's cancel runs inside its register, G3); a channel fault
 * or a host abort racing the registrations. */

#define S3_OPS 8

enum { S3_PLAIN, S3_PRECANCELED, S3_FAULT_RACE, S3_ABORT_RACE };

typedef struct s3_round {
    round_ctx *ctx;
    int mode;
    op_rec rec[S3_OPS][3];  /* [op][racer 0, racer 1, main's late third try] */
    _Atomic int arrive[S3_OPS];
} s3_round;

typedef struct s3_racer {
    s3_round *sr;
    pthread_t thread;
    int me;
} s3_racer;

static void *s3_racer_main(void *arg)
{
    s3_racer *rc = arg;
    s3_round *sr = rc->sr;
    t_tid = new_tid();
    wait_flag(&sr->ctx->go);
    for (int i = 0; i < S3_OPS; i++) {
        /* Rendezvous: spin hard for a while (both racers on a core hit
         * register together), then yield (fewer cores than threads). */
        atomic_fetch_add(&sr->arrive[i], 1);
        for (unsigned n = 0; atomic_load(&sr->arrive[i]) < 2; n++)
            if (n > 200)
                sched_yield();
        op_rec *r = &sr->rec[i][rc->me];
        r->reg_tid = t_tid;
        r->reg_start = tick();
        r->reg_st = cc_op_register_cancel(r->op, cb_cancel, cb_free, r);
        r->reg_end = tick();
        r->registered = r->reg_st == CC_OK;
        if (r->registered && sr->mode == S3_PRECANCELED)
            EXPECT(atomic_load(&r->cancel_calls) == 1
                       && atomic_load(&r->cancel_tid) == t_tid,
                   "registration on a canceled op returned CC_OK without running the "
                   "cancel on this thread (G3): calls %d, thread %d vs %d",
                   atomic_load(&r->cancel_calls), atomic_load(&r->cancel_tid), t_tid);
    }
    return NULL;
}

static int s3_register_race(stress_round *rd)
{
    cc_host *h = rd->host;
    summary *sum = rd->sum;
    s3_round *sr = rd->scratch;
    rng_t rr = rd->rng;
    round_ctx ctx;
    ctx_init(&ctx, h, 1);
    memset(sr, 0, sizeof *sr);
    sr->ctx = &ctx;
    sr->mode = (int)rng_below(&rr, 4);

    int nops = 0;
    for (int i = 0; i < S3_OPS; i++) {
        op_rec *r0 = &sr->rec[i][0];
        if (!op_begin(r0, &ctx, 0))
            break;
        for (int k = 1; k < 3; k++) {
            rec_init(&sr->rec[i][k], &ctx, 0);
            sr->rec[i][k].op = r0->op;
            sr->rec[i][k].begin_start = r0->begin_start;
            sr->rec[i][k].begin_seq = r0->begin_seq;
        }
        nops++;
    }
    EXPECT(nops == S3_OPS, "only %d of %d ops began on a fresh channel", nops, S3_OPS);
    if (sr->mode == S3_PRECANCELED)
        fire(add_trig(&ctx, TRIG_FAULT, 0, 0, 0));
    else if (sr->mode == S3_FAULT_RACE)
        add_trig(&ctx, TRIG_FAULT, 0, 0, rng_delay(&rr, 40000));
    else if (sr->mode == S3_ABORT_RACE)
        add_trig(&ctx, TRIG_ABORT, 0, 0, rng_delay(&rr, 40000));

    s3_racer rc[2] = {{.sr = sr, .me = 0}, {.sr = sr, .me = 1}};
    for (int k = 0; k < 2; k++)
        start_thread(&rc[k].thread, s3_racer_main, &rc[k]);
    int first_trig = sr->mode == S3_PRECANCELED;
    for (int i = first_trig; i < ctx.ntrig; i++)
        start_thread(&ctx.trig[i].thread, trig_main, &ctx.trig[i]);
    atomic_store(&ctx.go, 1);
    for (int k = 0; k < 2; k++)
        pthread_join(rc[k].thread, NULL);
    for (int i = first_trig; i < ctx.ntrig; i++)
        pthread_join(ctx.trig[i].thread, NULL);

    tally *t = &rd->t;
    for (int i = 0; i < nops; i++) {
        op_rec *a = &sr->rec[i][0], *b = &sr->rec[i][1], *late = &sr->rec[i][2];
        /* A third registration, after the race: refused, never called. */
        late->reg_tid = t_tid;
        late->reg_st = cc_op_register_cancel(a->op, cb_cancel, cb_free, late);
        late->registered = late->reg_st == CC_OK;
        EXPECT(late->reg_st == CC_E_INVALID_OPERATION,
               "third registration returned %s (G2)", cc_status_str(late->reg_st));
        EXPECT(a->registered + b->registered == 1,
               "racing registrations: %s and %s, wanted exactly one CC_OK (G2)",
               cc_status_str(a->reg_st), cc_status_str(b->reg_st));
        op_rec *win = a->registered ? a : b, *lose = a->registered ? b : a;
        EXPECT(lose->reg_st == CC_E_INVALID_OPERATION,
               "losing registration returned %s, wanted INVALID_OPERATION (G2)",
               cc_status_str(lose->reg_st));
        op_end(win, &rr);
        /* The op-level facts, for the records that did not end it. */
        for (int k = 0; k < 3; k++) {
            op_rec *o = &sr->rec[i][k];
            if (o == win)
                continue;
            o->end_seq = win->end_seq;
            o->end_call = win->end_call;
            o->reason_at_end = win->reason_at_end;
        }
        verify_rec(win, t, 1);
        verify_rec(lose, t, 0);
        verify_rec(late, t, 0);
        check_triggers(&ctx, win);
        sum->g3_sync += atomic_load(&win->cancel_calls)
                       && atomic_load(&win->cancel_tid) == win->reg_tid;
        sum->reg_losers++;
    }
    if (sr->mode == S3_ABORT_RACE) {
        close_quiet(&ctx);
        ctx_close_channels(&ctx);
        rd->host_closed = 1;
    } else {
        EXPECT(cc_host_state(h) == CC_HOST_STATE_OPEN, "host not OPEN after a channel fault (G9)");
        EXPECT_ST(cc_channel_close(ctx.ch[0]), CC_OK);
    }
    return 1;
}

/* =========================================== 4. end vs running cancel
 *
 * 1-3 registered ops on a channel, each with a cancel that stays busy for
 * 20-150 us; a trigger thread faults the channel (or aborts the host) and
 * runs them one after the other.  The main thread ends the ops: in most
 * rounds it first waits until a cancel is running and ends that op, which
 * must wait for the callback to return and only then run free-state (G5);
 * otherwise at a random moment, before, during or after the callbacks. */

#define S4_OPS 3

static int s4_end_vs_running_cancel(stress_round *rd)
{
    cc_host *h = rd->host;
    summary *sum = rd->sum;
    op_rec rec[S4_OPS];
    rng_t rr = rd->rng;
    round_ctx ctx;
    ctx_init(&ctx, h, 1);
    int nops = 1 + (int)rng_below(&rr, S4_OPS);
    for (int i = 0; i < nops; i++) {
        if (!op_begin(&rec[i], &ctx, 0)) {
            FAIL("cc_op_begin refused on a fresh channel");
            nops = i;
            break;
        }
        rec[i].spin_ns = 20000 + rng_below(&rr, 130000);
        op_register(&rec[i], cb_cancel);
    }
    int aborting = rng_pct(&rr, 25);
    trig *t = add_trig(&ctx, aborting ? TRIG_ABORT : TRIG_FAULT, 0, 0, 0);
    int wait_running = rng_pct(&rr, 65);
    uint64_t end_delay = rng_below(&rr, 200000);
    int order[S4_OPS] = {0, 1, 2};
    for (int i = nops - 1; i > 0; i--) {
        int j = (int)rng_below(&rr, (uint64_t)i + 1), tmp = order[i];
        order[i] = order[j];
        order[j] = tmp;
    }

    start_thread(&t->thread, trig_main, t);
    atomic_store(&ctx.go, 1);
    if (wait_running) {
        /* The trigger is done only after every callback ran, so then
         * no cancel is left to catch running. */
        int running = -1;
        while (running < 0) {
            for (int i = 0; i < nops && running < 0; i++)
                if (atomic_load(&rec[i].in_cancel))
                    running = i;
            if (running < 0 && atomic_load(&t->done))
                break;
            sched_yield();
        }
        if (running >= 0) {
            /* Put the running one first. */
            for (int i = 0; i < nops; i++)
                if (order[i] == running) {
                    order[i] = order[0];
                    order[0] = running;
                }
            op_rec *r = &rec[running];
            op_end(r, NULL);
            EXPECT(atomic_load(&r->cancel_calls) == 1
                       && atomic_load(&r->cancel_exit) < atomic_load(&r->free_enter)
                       && atomic_load(&r->free_enter) < r->end_ret,
                   "cc_op_end did not wait for the running cancel before free-state (G5)");
            /* Usually it was still running when end began: count those. */
            sum->end_waited += atomic_load(&r->cancel_exit) > r->end_call;
        }
    } else {
        spin_ns(end_delay);
    }
    for (int i = 0; i < nops; i++)
        if (!atomic_load(&rec[order[i]].ender))
            op_end(&rec[order[i]], &rr);
    pthread_join(t->thread, NULL);

    tally *tl = &rd->t;
    for (int i = 0; i < nops; i++) {
        verify_rec(&rec[i], tl, 1);
        check_triggers(&ctx, &rec[i]);
    }
    if (aborting) {
        close_quiet(&ctx);
        ctx_close_channels(&ctx);
        rd->host_closed = 1;
    } else {
        EXPECT_ST(cc_channel_close(ctx.ch[0]), CC_OK);
    }
    return 1;
}

/* ==================================== 4b. end vs a queued cancel
 *
 * A fan-out claims the callbacks of all the ops it cancels, then runs them
 * one after the other.  Two registered ops; the first callback to run is
 * held until the main thread is about to end the other op, and then stays
 * busy 10 ms more.  The other op's end thus begins while its cancel is only
 * queued: "no cancel callback starts after this call began" (cc_op_end, G5)
 * means that cancel must never run.  The 10 ms margin stands for "after":
 * only a stall of the main thread that long between raising the flag and
 * entering cc_op_end could make a run legitimate. */

#define S4B_GUARD_NS 10000000u

static _Atomic int g_s4b_first;     /* the first callback claimed the gate */
static _Atomic int g_s4b_ending;    /* main is about to end the other op */

static void cb_cancel_gate(cc_reason reason, void *state)
{
    op_rec *r = state;
    cancel_begin(r, reason);
    int expected = 0;
    if (atomic_compare_exchange_strong(&g_s4b_first, &expected, 1)) {
        wait_flag(&g_s4b_ending);
        sleep_ns(S4B_GUARD_NS);
    }
    cancel_finish(r);
}

static int s4b_end_vs_queued_cancel(stress_round *rd)
{
    cc_host *h = rd->host;
    op_rec rec[2];
    rng_t rr = rd->rng;
    round_ctx ctx;
    ctx_init(&ctx, h, 1);
    atomic_store(&g_s4b_first, 0);
    atomic_store(&g_s4b_ending, 0);
    int nops = 0;
    for (int i = 0; i < 2; i++)
        if (op_begin(&rec[i], &ctx, 0)) {
            op_register(&rec[i], cb_cancel_gate);
            nops++;
        }
    EXPECT(nops == 2, "cc_op_begin refused on a fresh channel");
    if (nops < 2) {
        atomic_store(&g_s4b_ending, 1);
        for (int i = 0; i < nops; i++)
            op_end(&rec[i], NULL);
        EXPECT_ST(cc_channel_close(ctx.ch[0]), CC_OK);
        return 0;
    }
    int aborting = rng_pct(&rr, 30);
    trig *t = add_trig(&ctx, aborting ? TRIG_ABORT : TRIG_FAULT, 0, 0, 0);
    start_thread(&t->thread, trig_main, t);
    atomic_store(&ctx.go, 1);

    int first = -1;
    while (first < 0) {
        for (int i = 0; i < 2 && first < 0; i++)
            if (atomic_load(&rec[i].in_cancel))
                first = i;
        sched_yield();
    }
    op_rec *other = &rec[1 - first];
    /* op_end takes its ticks before the call; raise the gate last. */
    atomic_store(&other->ender, 1);
    other->end_seq = tick();
    other->reason_at_end = cc_op_reason(other->op);
    other->end_tid = t_tid;
    other->end_call = tick();
    uint64_t call_ns = now_ns();
    atomic_store(&g_s4b_ending, 1);
    EXPECT_ST(cc_op_end(other->op), CC_OK);
    other->end_ret = tick();
    other->cancels_at_end_ret = atomic_load(&other->cancel_calls);
    uint64_t end_ns = now_ns() - call_ns;
    int ran = atomic_load(&other->cancel_calls);
    EXPECT(ran == 0,
           "the cancel of an op whose cc_op_end had begun %.1f ms earlier ran anyway "
           "(it was queued behind another op's callback in the same %s; cc_op_end "
           "waited %.1f ms for it): a cancel started after completion began (G5)",
           (double)S4B_GUARD_NS / 1e6, aborting ? "abort" : "fault",
           (double)end_ns / 1e6);
    EXPECT(atomic_load(&other->free_calls) == 1, "free-state did not run in cc_op_end (G4)");
    op_end(&rec[first], NULL);
    pthread_join(t->thread, NULL);

    tally *tl = &rd->t;
    for (int i = 0; i < 2; i++) {
        verify_rec(&rec[i], tl, 1);
        check_triggers(&ctx, &rec[i]);
    }
    if (aborting) {
        close_quiet(&ctx);
        ctx_close_channels(&ctx);
        rd->host_closed = 1;
    } else {
        EXPECT_ST(cc_channel_close(ctx.ch[0]), CC_OK);
    }
    return 1;
}

/* ======================================== 5. end from inside own cancel
 *
 * As scenario 2, but most ops' cancel callbacks end their own op.  The
 * owner and the callback settle who ends it with a CAS, so exactly one of
 * them calls cc_op_end.  From inside the callback cc_op_end returns CC_OK at
 * once; free-state runs only after the callback returned, on its thread
 * (G5).  When the op was canceled before registering, all of this happens
 * inside cc_op_register_cancel (G3). */

#define S5_CAP 4096

static void cb_cancel_end_self(cc_reason reason, void *state)
{
    op_rec *r = state;
    cancel_begin(r, reason);
    int expected = 0;
    if (r->action && atomic_compare_exchange_strong(&r->ender, &expected, 2)) {
        r->end_tid = t_tid;
        if (cc_op_end(r->op) != CC_OK)
            note(r, V_END_IN_CB);
        if (atomic_load(&r->free_calls) != 0)
            note(r, V_FREE_EARLY);
        /* Stay a little: a free-state run too early would overlap. */
        spin_ns(r->spin_ns);
    }
    cancel_finish(r);
}

static void *s5_worker(void *arg)
{
    worker *w = arg;
    t_tid = w->tid = new_tid();
    wait_flag(&w->ctx->go);
    while (!atomic_load(&w->ctx->stop)) {
        op_rec *r = worker_begin(w, w->chan);
        if (!r)
            break;
        r->action = rng_pct(&w->rng, 80);
        r->spin_ns = rng_pct(&w->rng, 50) ? rng_below(&w->rng, 20000) : 0;
        op_register(r, cb_cancel_end_self);
        if (atomic_load(&r->ender) == 2 && atomic_load(&r->cancel_tid) == t_tid) {
            /* Canceled before registering: cancel, its cc_op_end and the
             * free-state all ran inside register, on this thread. */
            EXPECT(atomic_load(&r->free_calls) == 1,
                   "op ended in its cancel inside register: free-state ran %d times "
                   "by the time register returned",
                   atomic_load(&r->free_calls));
            w->g3_sync++;
        }
        if (atomic_load(&r->ender) == 0) {
            op_busy(r, (unsigned)rng_below(&w->rng, 30));
            op_pause(w);
        }
        hold_if_last(w, r);
        int expected = 0;
        if (atomic_compare_exchange_strong(&r->ender, &expected, 1)) {
            op_end(r, &w->rng);
        } else {
            /* The callback ends it; the handle is canceled or stale now. */
            int c = cc_op_is_canceled(r->op);
            EXPECT(c == 1 || c == CC_E_INVALID_OPERATION,
                   "cc_op_is_canceled == %d on an op ending in its cancel", c);
            w->cb_ended++;
        }
        op_done(w);
    }
    return worker_exit(w);
}

static int s5_end_inside_cancel(stress_round *rd)
{
    cc_host *h = rd->host;
    int round = rd->round;
    worker *w = rd->w;
    summary *sum = rd->sum;
    rng_t rr = rd->rng;
    round_ctx ctx;
    int nch = 1 + (int)rng_below(&rr, 2), nw = nch == 1 ? 2 : 3;
    ctx_init(&ctx, h, nch);
    add_fault_abort_trigs(&ctx, &rr, 70, 50, S_TRIGGER_OPS);
    for (int i = 0; i < nw; i++)
        worker_init(&w[i], &ctx, i, i % nch, round);
    run_round(&ctx, w, nw, s5_worker);
    check_states_after_trigs(&ctx);
    close_quiet(&ctx);
    sum->close_ok++;
    ctx_close_channels(&ctx);

    tally *t = &rd->t;
    for (int i = 0; i < nw; i++) {
        sum->g3_sync += w[i].g3_sync;
        sum->cb_ended += w[i].cb_ended;
        for (int k = 0; k < w[i].nrec; k++) {
            op_rec *r = &w[i].recs[k];
            if (atomic_load(&r->ender) == 2) {
                /* Ended by its cancel: its end began inside the callback. */
                r->end_seq = r->end_call = atomic_load(&r->cancel_enter);
                r->reason_at_end = atomic_load(&r->reason_seen);
            }
            verify_rec(r, t, 1);
            check_triggers(&ctx, r);
            check_close_waited(&ctx, r);
        }
    }
    rd->host_closed = 1;
    return 1;
}

/* ========================================= 6. re-entrant callbacks
 *
 * Four channels shared by three workers.  Each cancel callback re-enters the
 * library (G11): faults another channel, begins / registers / ends an op on
 * another channel, aborts the host again, tries to close its own host
 * (refused), or just reads its op.  One or two trigger threads start the
 * chain.  No deadlock (watchdog), and the counts stay exact, nested ops
 * included. */

#define S6_CH 4
#define S6_CAP 4096
#define S6_NESTED 8192

enum { ACT_READ, ACT_FAULT, ACT_NESTED, ACT_ABORT, ACT_CLOSE };

static void nested_op(round_ctx *ctx, int c)
{
    int i = atomic_fetch_add(&ctx->nested_used, 1);
    if (i >= ctx->nested_cap)
        return;
    op_rec *n = &ctx->nested[i];
    if (!op_begin(n, ctx, c))
        return;
    /* G3 may run this op's cancel right here, inside a cancel. */
    op_register(n, cb_cancel);
    op_busy(n, 3);
    op_end(n, NULL);
}

static void cb_reentrant(cc_reason reason, void *state)
{
    op_rec *r = state;
    round_ctx *ctx = r->ctx;
    cancel_begin(r, reason);
    switch (r->action) {
    case ACT_FAULT:
        atomic_store(&ctx->fault_started[r->arg], 1);
        if (cc_channel_fault(ctx->ch[r->arg]) != CC_OK)
            note(r, V_REENTRY);
        break;
    case ACT_NESTED:
        nested_op(ctx, r->arg);
        break;
    case ACT_ABORT:
        atomic_store(&ctx->abort_started, 1);
        if (cc_host_abort(ctx->host) != CC_OK)
            note(r, V_REENTRY);
        break;
    case ACT_CLOSE:
        if (cc_host_close(ctx->host, 0) != CC_E_INVALID_OPERATION)
            note(r, V_CLOSE_IN_CB);
        break;
    default:
        if (cc_op_is_canceled(r->op) != 1 || cc_op_reason(r->op) != reason)
            note(r, V_REENTRY);
        break;
    }
    cancel_finish(r);
}

static void *s6_worker(void *arg)
{
    worker *w = arg;
    round_ctx *ctx = w->ctx;
    t_tid = w->tid = new_tid();
    wait_flag(&ctx->go);
    while (!atomic_load(&ctx->stop) && !atomic_load(&ctx->abort_started)) {
        int c = (int)rng_below(&w->rng, (uint64_t)ctx->nch), open = 0;
        for (int k = 0; k < ctx->nch; k++)
            open += !atomic_load(&ctx->fault_started[k]);
        if (!open)
            break;
        op_rec *r = worker_begin(w, c);
        if (!r) {
            if (w->nrec >= w->cap)
                break;
            continue;
        }
        unsigned p = (unsigned)rng_below(&w->rng, 100);
        r->action = p < 30 ? ACT_READ : p < 55 ? ACT_FAULT : p < 82 ? ACT_NESTED
                    : p < 92 ? ACT_ABORT : ACT_CLOSE;
        r->arg = (c + 1 + (int)rng_below(&w->rng, (uint64_t)ctx->nch - 1)) % ctx->nch;
        if (rng_pct(&w->rng, 90))
            op_register(r, cb_reentrant);
        op_busy(r, (unsigned)rng_below(&w->rng, 20));
        op_pause(w);
        hold_if_last(w, r);
        op_end(r, &w->rng);
        op_done(w);
    }
    return worker_exit(w);
}

/* Canceled ops need a started cause in the round (G6, G9). */
static void check_cause_s6(const round_ctx *ctx, const op_rec *r)
{
    int why = atomic_load(&r->cancel_calls) ? atomic_load(&r->reason_seen) : r->reason_at_end;
    if (why == CC_CHANNEL_FAULTED)
        EXPECT(atomic_load(&ctx->fault_started[r->chan]),
               "op on channel %d canceled as CHANNEL_FAULTED, channel never faulted", r->chan);
    else if (why == CC_HOST_ABORT)
        EXPECT(atomic_load(&ctx->abort_started), "op canceled as HOST_ABORT, never aborted");
}

static int s6_reentrant_callbacks(stress_round *rd)
{
    cc_host *h = rd->host;
    int round = rd->round;
    worker *w = rd->w;
    summary *sum = rd->sum;
    op_rec *nested = rd->scratch;
    rng_t rr = rd->rng;
    round_ctx ctx;
    ctx_init(&ctx, h, S6_CH);
    ctx.nested = nested;
    ctx.nested_cap = S6_NESTED;
    int ntrig = 1 + (int)rng_below(&rr, 2);
    for (int i = 0; i < ntrig; i++) {
        if (rng_pct(&rr, 65))
            add_trig(&ctx, TRIG_FAULT, (int)rng_below(&rr, S6_CH),
                     (int)rng_below(&rr, S_TRIGGER_OPS), rng_delay(&rr, 20000));
        else
            add_trig(&ctx, TRIG_ABORT, 0, (int)rng_below(&rr, S_TRIGGER_OPS),
                     rng_delay(&rr, 20000));
    }
    for (int i = 0; i < 3; i++)
        worker_init(&w[i], &ctx, i, 0, round);
    run_round(&ctx, w, 3, s6_worker);
    close_quiet(&ctx);
    sum->close_ok++;
    ctx_close_channels(&ctx);

    tally *t = &rd->t;
    for (int i = 0; i < 3; i++)
        for (int k = 0; k < w[i].nrec; k++) {
            verify_rec(&w[i].recs[k], t, 1);
            check_cause_s6(&ctx, &w[i].recs[k]);
        }
    int nn = atomic_load(&ctx.nested_used);
    if (nn > S6_NESTED)
        nn = S6_NESTED;
    for (int k = 0; k < nn; k++)
        if (nested[k].op) {
            verify_rec(&nested[k], t, 1);
            check_cause_s6(&ctx, &nested[k]);
            sum->nested++;
        }
    rd->host_closed = 1;
    return 1;
}

/* ========================================= 7. register vs cancellation
 *
 * Workers begin batches of ops, then register them one by one with small
 * gaps while the host is aborted (and maybe one channel faulted) at a
 * random moment, so many ops are canceled between begin and register.  An
 * op seen canceled just before registering must have its cancel run inside
 * register, on the registering thread, with the reason it already had (G3). */

#define S7_CAP 4096
#define S7_BATCH 6

static void *s7_worker(void *arg)
{
    worker *w = arg;
    t_tid = w->tid = new_tid();
    wait_flag(&w->ctx->go);
    int refused = 0;
    while (!refused && !atomic_load(&w->ctx->stop)) {
        op_rec *batch[S7_BATCH];
        int n = 0, want = 1 + (int)rng_below(&w->rng, S7_BATCH);
        while (n < want && (batch[n] = worker_begin(w, w->chan)) != NULL)
            n++;
        refused = n < want;
        for (int i = 0; i < n; i++) {
            op_rec *r = batch[i];
            spin_ns(rng_below(&w->rng, 15000));
            int pre = cc_op_is_canceled(r->op);
            cc_reason pre_reason = cc_op_reason(r->op);
            op_register(r, cb_cancel);
            if (pre == 1) {
                EXPECT(atomic_load(&r->cancel_calls) == 1 && atomic_load(&r->cancel_tid) == t_tid
                           && atomic_load(&r->cancel_enter) > r->reg_start
                           && atomic_load(&r->cancel_enter) < r->reg_end,
                       "op canceled before register: cancel ran %d times, on thread %d "
                       "(registering thread %d), not inside register (G3)",
                       atomic_load(&r->cancel_calls), atomic_load(&r->cancel_tid), t_tid);
                EXPECT(atomic_load(&r->reason_seen) == (int)pre_reason,
                       "cancel inside register got reason %d, the op had reason %d (G3/G6)",
                       atomic_load(&r->reason_seen), pre_reason);
                w->g3_sync++;
            } else {
                EXPECT(pre == 0, "cc_op_is_canceled on a live op == %d", pre);
            }
        }
        for (int i = 0; i < n; i++) {
            op_end(batch[i], &w->rng);
            op_done(w);
        }
    }
    return worker_exit(w);
}

static int s7_register_vs_cancel(stress_round *rd)
{
    cc_host *h = rd->host;
    int round = rd->round;
    worker *w = rd->w;
    summary *sum = rd->sum;
    rng_t rr = rd->rng;
    round_ctx ctx;
    ctx_init(&ctx, h, 3);
    if (rng_pct(&rr, 50))
        add_trig(&ctx, TRIG_FAULT, (int)rng_below(&rr, 3), (int)rng_below(&rr, 150),
                 rng_delay(&rr, 20000));
    add_trig(&ctx, TRIG_ABORT, 0, (int)rng_below(&rr, 150), rng_delay(&rr, 20000));
    for (int i = 0; i < 3; i++)
        worker_init(&w[i], &ctx, i, i, round);
    run_round(&ctx, w, 3, s7_worker);
    close_quiet(&ctx);
    sum->close_ok++;
    ctx_close_channels(&ctx);

    tally *t = &rd->t;
    for (int i = 0; i < 3; i++) {
        sum->g3_sync += w[i].g3_sync;
        for (int k = 0; k < w[i].nrec; k++) {
            verify_rec(&w[i].recs[k], t, 1);
            check_triggers(&ctx, &w[i].recs[k]);
        }
    }
    rd->host_closed = 1;
    return 1;
}

/* ========================================== 8. close escalating to abort
 *
 * Workers hold their ops until canceled or for a random time (some far
 * longer than the close timeout) while the main thread closes with a
 * timeout of 0-5 ms.  Close returns CC_OK (then no cancel ran at all: close
 * fires none by itself) or CC_E_TIMEOUT (then it aborted: every cancel says
 * HOST_ABORT and ran on the closing thread or inside a register), the host
 * is CLOSED and nothing is left in flight when it returns (G8). */

#define S8_CAP 4096

static void *s8_worker(void *arg)
{
    worker *w = arg;
    t_tid = w->tid = new_tid();
    wait_flag(&w->ctx->go);
    while (!atomic_load(&w->ctx->stop)) {
        op_rec *r = worker_begin(w, w->chan);
        if (!r)
            break;
        if (rng_pct(&w->rng, 90))
            op_register(r, cb_cancel);
        uint64_t hold = rng_pct(&w->rng, 50) ? rng_below(&w->rng, 300000)
                                             : rng_below(&w->rng, 8000000);
        uint64_t until = now_ns() + hold;
        while (now_ns() < until) {
            int c = cc_op_is_canceled(r->op);
            if (c) {
                EXPECT(c == 1 && cc_op_reason(r->op) == CC_HOST_ABORT,
                       "op held during close: is_canceled %d, reason %d", c, cc_op_reason(r->op));
                break;
            }
            sleep_ns(20000);
        }
        op_end(r, &w->rng);
    }
    return NULL;
}

static int s8_close_escalation(stress_round *rd)
{
    cc_host *h = rd->host;
    int round = rd->round;
    worker *w = rd->w;
    summary *sum = rd->sum;
    rng_t rr = rd->rng;
    round_ctx ctx;
    int nw = 2 + (int)rng_below(&rr, 2);
    ctx_init(&ctx, h, nw);
    int64_t timeout_ms = (int64_t)rng_below(&rr, 6);
    int via_default = rng_pct(&rr, 50);
    if (via_default)
        EXPECT_ST(cc_host_set_close_timeout(h, timeout_ms), CC_OK);
    uint64_t run_ns = rng_below(&rr, 2000000);

    for (int i = 0; i < nw; i++) {
        worker_init(&w[i], &ctx, i, i, round);
        start_thread(&w[i].thread, s8_worker, &w[i]);
    }
    atomic_store(&ctx.go, 1);
    sleep_ns(run_ns);
    atomic_store(&ctx.close_started, 1);
    uint64_t close_start_ns = now_ns();
    ctx.close_start = tick();
    cc_status st = cc_host_close(h, via_default ? -1 : timeout_ms);
    ctx.close_end = tick();
    uint64_t close_ns = now_ns() - close_start_ns;
    cc_stats mid = stats_of(h);
    EXPECT_EQ(mid.ops_in_flight, 0, "ops in flight when cc_host_close returned (G8)");
    EXPECT(cc_host_state(h) == CC_HOST_STATE_CLOSED, "host in state %d after close, wanted CLOSED",
           cc_host_state(h));
    EXPECT(st == CC_OK || st == CC_E_TIMEOUT, "cc_host_close(%lld ms) returned %s",
           (long long)timeout_ms, cc_status_str(st));
    atomic_store(&ctx.stop, 1);
    for (int i = 0; i < nw; i++)
        pthread_join(w[i].thread, NULL);
    ctx_close_channels(&ctx);
    if (via_default)
        EXPECT_ST(cc_host_set_close_timeout(h, 60000), CC_OK);

    tally *t = &rd->t;
    uint64_t last_end_ns = 0;
    int closer = t_tid;
    for (int i = 0; i < nw; i++)
        for (int k = 0; k < w[i].nrec; k++) {
            op_rec *r = &w[i].recs[k];
            verify_rec(r, t, 1);
            check_close_waited(&ctx, r);
            if (r->end_ret_ns > last_end_ns)
                last_end_ns = r->end_ret_ns;
            int cc = atomic_load(&r->cancel_calls);
            if (st == CC_OK) {
                EXPECT(cc == 0 && r->reason_at_end == CC_NOT_CANCELED,
                       "close returned CC_OK but an op was canceled (reason %d, cancel "
                       "ran %d times): close fires no cancel by itself (G8)",
                       r->reason_at_end, cc);
            } else if (cc) {
                uint64_t ce = atomic_load(&r->cancel_enter);
                int ctid = atomic_load(&r->cancel_tid);
                EXPECT(atomic_load(&r->reason_seen) == CC_HOST_ABORT,
                       "close escalated: cancel reason %d, wanted HOST_ABORT (G8)",
                       atomic_load(&r->reason_seen));
                EXPECT((ctid == closer && ce > ctx.close_start && ce < ctx.close_end)
                           || (ctid == r->reg_tid && ce > r->reg_start && ce < r->reg_end),
                       "close escalated: a cancel ran on thread %d, neither the closing "
                       "thread during close nor inside register", ctid);
            }
            if (st == CC_E_TIMEOUT && r->reason_at_end != CC_NOT_CANCELED)
                EXPECT(r->reason_at_end == CC_HOST_ABORT, "close escalated: reason %d",
                       r->reason_at_end);
            sum->g3_sync += cc && atomic_load(&r->cancel_tid) == r->reg_tid;
        }
    if (st == CC_E_TIMEOUT) {
        /* Its deadline passed with an op in flight: the close lasted the
         * timeout, and that op ended after it (0.5 ms for clock skew). */
        uint64_t timeout_ns = (uint64_t)timeout_ms * 1000000u;
        EXPECT(close_ns + 500000 >= timeout_ns,
               "close timed out after %.3f ms, its timeout was %lld ms",
               (double)close_ns / 1e6, (long long)timeout_ms);
        EXPECT(last_end_ns + 500000 >= close_start_ns + timeout_ns,
               "close timed out (%lld ms) though every op had ended %.3f ms into it",
               (long long)timeout_ms, ((double)last_end_ns - (double)close_start_ns) / 1e6);
    }
    sum->close_ok += st == CC_OK;
    sum->close_timeout += st == CC_E_TIMEOUT;
    rd->host_closed = 1;
    return 1;
}

/* ============================================================== the table
 * name, random stream id, rounds at scale 1, workers and records per
 * worker, scratch bytes, round function; run in this order. */

static const stress_scenario scenarios[] = {
    {"s1_workers_vs_abort", 1, 2000, MAX_W, S1_CAP, 0, s1_workers_vs_abort},
    {"s2_faults_vs_workers", 2, 2000, MAX_W, S2_CAP, 0, s2_faults_vs_workers},
    {"s3_register_race", 3, 6000, 0, 0, sizeof(s3_round), s3_register_race},
    {"s4_end_vs_running_cancel", 4, 4000, 0, 0, 0, s4_end_vs_running_cancel},
    {"s4b_end_vs_queued_cancel", 9, 40, 0, 0, 0, s4b_end_vs_queued_cancel},
    {"s5_end_inside_cancel", 5, 2000, MAX_W, S5_CAP, 0, s5_end_inside_cancel},
    {"s6_reentrant_callbacks", 6, 2000, 3, S6_CAP, S6_NESTED * sizeof(op_rec),
     s6_reentrant_callbacks},
    {"s7_register_vs_cancel", 7, 2500, 3, S7_CAP, 0, s7_register_vs_cancel},
    {"s8_close_escalation", 8, 400, 3, S8_CAP, 0, s8_close_escalation},
};

int main(void)
{
    return stress_main(scenarios, sizeof scenarios / sizeof scenarios[0]);
}
