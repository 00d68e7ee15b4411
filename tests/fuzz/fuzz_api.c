/*
 * fuzz_api.c - a libFuzzer target over sequences of cancelcore API calls,
 * checked after every call against a model of the contract in
 * csrc/include/cancelcore.h (G1-G13 of DESIGN.md).
 *
 * The input bytes decode into calls over a few hosts, channels and
 * operations: create/open/close/abort/reset/free hosts, open/fault/shutdown/
 * close channels, begin/register/end C operations and watched ones (the
 * binding API: the harness's binding function gets the notices and runs its
 * users' callbacks), reads, stale and NULL handles, fault-plan rules and
 * statistics.  Callbacks record what ran and, as the
 * header allows (G11), call back into the library: end their own or another
 * operation, fault a channel, abort a host, register on another operation,
 * begin new ones.
 *
 * Everything runs on one thread, so the model can be exact.  It follows the
 * library call by call with a stack of "frames" (the library calls in
 * progress).  A call that cancels operations gets an ordered list of
 * "phases" (a channel fault, a host abort, the fault plan's cancel at end,
 * the G3 run of a registration); a phase marks operations in the model when
 * its first callback arrives or when the call returns, which is exactly the
 * order in which the core gathers and runs them.  Every callback is checked
 * when it starts (G1, G2, G4, G5, G6, who is canceled: G7, G9) and every
 * call's status when it returns (G10, G12); after each top-level call the
 * whole model is compared with what the library reports (states, reads,
 * statistics, fault counts).  On a mismatch: a clear message, the last calls
 * made, and abort().
 *
 * Known open bugs of the core are tolerated by switches (tests/fuzz/README.md);
 * CC_FUZZ_STRICT=all (or a comma list of names) turns them into checks.
 * CC_FUZZ_TRACE=1 prints every call as it is made.
 */
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cancelcore.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* ------------------------------------------------------------ sizes */

#define MAXH 2        /* hosts */
#define MAXCH 6       /* channel records (open handles and closed ones with ops) */
#define MAXOP 10      /* operation records */
#define MAXSTALE 8    /* handles of ended operations kept for G10 probes */
#define MAXREG 1024   /* registration attempts per input */
#define MAXFRAMES 64
#define MAXPH 96
#define MAXCTX 32
#define MAXDEPTH 4    /* callbacks nested deeper than this do nothing */
#define MAXSTEPS 3000

/* ------------------------------------------------- known-bug switches */

/* Each open one is on (tolerated) by default; CC_FUZZ_STRICT turns it off.
 * Fixed ones stay listed, off (checked). */
static struct {
    const char *name;
    bool tolerate;
    const char *what;
} g_kb[] = {
#define KB_WATCHED_G3_QUEUED 0
    {"watched_g3_queued", false, /* fixed (main e081621): checked */
     "cc_op_register_watched on a canceled watched operation whose CANCELED notice "
     "is queued for this thread's own batch (e.g. from a C callback of the same "
     "fan-out) waits for that batch: a self-deadlock; the harness avoids the call"},
#define KB_WATCHED_END_QUEUED 1
    {"watched_end_queued", false, /* fixed (main e081621): checked */
     "cc_op_end(_watched) from a C callback on a watched operation gathered into the "
     "same fan-out's batch, not yet delivered, waits for that batch: a self-deadlock "
     "(or, during the op's own registration, the end is deferred and the batch still "
     "tells the op CANCELED after its end began); the harness avoids the call"},
#define KB_BATCH_FINISH_HOLD 2
    {"batch_finish_hold", false, /* fixed (main, after e081621): checked */
     "after a batch returns, the core finishes its ops' deferred ends one by one while "
     "the later batch-mates still hold their run: a free-state or ENDED notice that ends "
     "or registers on a later batch-mate waits for it: a self-deadlock; the harness "
     "avoids the call"},
#define KB_G3_END_QUEUED 3
    {"g3_end_queued", true, /* fixed in the core (the end is deferred, as inside the
                               run); the model predicts an overtake, so the harness
                               still avoids the call: see tests/fuzz/README.md */
     "a C callback registers on a watched op queued in its own fan-out's batch (G3 runs "
     "in place and marks the queued run started), then ends it: the end waits for the "
     "batch this thread delivers later: a self-deadlock; the harness avoids the end"},
};
#define NKB ((int)(sizeof g_kb / sizeof g_kb[0]))
#define TOLERATE(k) (g_kb[k].tolerate)

static bool g_trace_live;
static bool g_prob_exact = true; /* the model mirrors the plan's hash */

/* ------------------------------------------------------------ input */

static const uint8_t *g_in;
static size_t g_len, g_pos;
static unsigned u8(void) { return g_pos < g_len ? g_in[g_pos++] : 0; }
static bool more(void) { return g_pos < g_len; }

/* ------------------------------------------------------------ trace */

#define TRACE_LINES 48
static char g_trace[TRACE_LINES][200];
static unsigned g_ntrace;
static int g_nctx; /* forward: callback nesting, for indentation */

static void trace(const char *fmt, ...)
{
    char *line = g_trace[g_ntrace++ % TRACE_LINES];
    int ind = g_nctx * 2 < 20 ? g_nctx * 2 : 20;
    memset(line, ' ', (size_t)ind);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line + ind, sizeof g_trace[0] - (size_t)ind, fmt, ap);
    va_end(ap);
    if (g_trace_live)
        fprintf(stderr, "%s\n", line);
}

static void fail(const char *fmt, ...)
{
    fprintf(stderr, "\ncancelcore fuzz: CONTRACT VIOLATION: ");
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nlast calls (oldest first; indented = inside a callback):\n");
    unsigned first = g_ntrace > TRACE_LINES ? g_ntrace - TRACE_LINES : 0;
    for (unsigned i = first; i < g_ntrace; i++)
        fprintf(stderr, "  %s\n", g_trace[i % TRACE_LINES]);
    fprintf(stderr, "known-bug switches:");
    for (int k = 0; k < NKB; k++)
        fprintf(stderr, " %s=%s", g_kb[k].name, g_kb[k].tolerate ? "tolerated" : "checked");
    fprintf(stderr, "\n");
    abort();
}

#define EXPECT(cond, ...)           \
    do {                            \
        if (!(cond))                \
            fail(__VA_ARGS__);      \
    } while (0)

/* Evaluates the call once. */
#define EXPECT_ST(what, call, want)                                                   \
    do {                                                                              \
        cc_status got_ = (call), want_ = (want);                                      \
        EXPECT(got_ == want_, "%s returned %s, the contract says %s", what,           \
               cc_status_str(got_), cc_status_str(want_));                            \
    } while (0)

/* ------------------------------------------------------------ model */

typedef struct {
    uint8_t kind, arg;
} act;

enum {
    A_NONE, A_END_SELF, A_END_OTHER, A_FAULT_OWN, A_FAULT_CH, A_ABORT_OWN, A_ABORT_HOST,
    A_REG_OTHER, A_BEGIN, A_BEGIN_W, A_READ_OTHER, A_READ_SELF, A_REG_SELF, A_CLOSE_OWN,
    A_CLOSE_HOST, A_REPORT, A_STATS, A_SHUT_CH, A_END_SELF_TWICE, A_OPEN_HOST, A_RESET_HOST,
    A_SHUT_OWN_CH, A_CLOSE_OWN_CH, A_CLOSE_CH, A_CANCEL_SELF, A_CANCEL_OTHER, A_COUNT
};

enum { REG_PENDING, REG_OK, REG_FAILED };

typedef struct {
    int op;          /* operation record */
    int state;
    bool has_free;
    bool watched;    /* cc_op_register_watched: key = index + 2 */
    bool wrong_api;  /* call the other kind's register function */
    int depth;       /* callback nesting at registration */
    act cancel_act[2];
    act free_act;
    int cancel_runs, free_runs;
} reg_t;

typedef struct {
    cc_fault_point point;
    cc_fault_action action;
    uint32_t nth;
    double p;
    uint64_t visits;
} mrule;

typedef struct {
    bool used;
    cc_host *h;
    bool bound;      /* has the harness's binding function */
    int state;
    bool aborted_in_close;
    int64_t close_timeout;
    uint64_t begun, ended, canceled, c_abort, c_fault, frees, errors, channels_open;
    int nrules;
    mrule rules[16];
    uint64_t seed, injected;
} mhost;

typedef struct {
    bool used;
    cc_channel *c;   /* NULL once the user closed the handle */
    int host;
    int state;
    bool shut;       /* cc_channel_shutdown was called */
    int nops;        /* operations not yet released */
} mchan;

typedef struct {
    bool used, known;    /* record in use; handle returned to us */
    bool watched;        /* begun with cc_op_begin_watched */
    cc_op *h;
    int host, ch;
    bool canceled;
    cc_reason reason;
    int reg;             /* successful registration, or -1 */
    bool reg_in_progress, armed;
    /* The run a canceller claimed: a C callback (CL_C), a watched op's
     * CANCELED notice (CL_NOTICE, with RUN_USER iff claim_user) or a G3
     * RUN_USER notice (CL_G3). */
    bool claimed, invoked, overtaken, returned;
    int claim_kind;
    bool claim_user;
    unsigned claim_frame;
    int claim_phase;
    bool end_begun, defer_end, released;
    int active;          /* runs of it (callbacks, batches) on the stack */
    unsigned held_frame; /* in a returned batch of this frame, run not yet dropped */
    bool deferred;       /* its end was deferred: a watched op gets an ENDED notice */
    /* A G3 run of a watched op whose CANCELED notice is still queued: the
     * queued claim, set aside until the RUN_USER notice returned. */
    bool saved, g3_pending, ran_queued;
    int s_kind;
    unsigned s_frame;
    int s_phase;
    int ended_notices;
    bool endpoint_cb;
    int cancel_runs, free_runs;
    int notices, user_runs, timed; /* watched: CANCELED / RUN_USER notices; latency-timed runs */
} mop;

enum { CL_C, CL_NOTICE, CL_G3 };

enum { PH_CHAN, PH_ABORT, PH_ENDCANCEL, PH_G3, PH_FINISH, PH_ENDVISIT, PH_ONE };
static const char *const ph_name[] = {"channel fault", "host abort", "cancel at end", "G3 run",
                                      "finish", "END visit", "one op's cancel"};

/* parent: -1 for a phase planned when the call began; else the phase during
 * whose run it was inserted (a deferred end's finish), which it precedes. */
typedef struct {
    int kind, arg;
    cc_reason reason;
    int parent;
} phase;

typedef struct {
    unsigned serial;
    const char *what;
    int op;          /* the operation a cc_op_end frame ends, else -1 */
    phase ph[MAXPH];
    int nph, next;   /* phases [0, next) applied */
    int reg;         /* PH_G3's registration */
    cc_status g3_status;
} frame;

typedef struct {
    int op, host;
    bool is_cancel;
} ctx_t;

static mhost g_hosts[MAXH];
static mchan g_chans[MAXCH];
static mop g_ops[MAXOP];
static cc_op *g_stale[MAXSTALE];
static bool g_stale_w[MAXSTALE];
static unsigned g_nstale;
static reg_t g_regs[MAXREG];
static int g_nregs;
static frame g_frames[MAXFRAMES];
static int g_nframes;
static unsigned g_serial;
static ctx_t g_ctx[MAXCTX];
static bool g_cleanup;
/* The stats' per-reason cancel counts come from the model's records of the
 * callbacks that ran (a record's count moves here when it is swept). */
static uint64_t g_swept_abort[MAXH], g_swept_fault[MAXH], g_swept_user[MAXH], g_swept_timed[MAXH];
static uint64_t g_user[MAXH], g_timed[MAXH];

/* A call's target: NULL, a model record, or a stale handle. */
enum { T_NULL, T_REC, T_STALE };
typedef struct {
    int kind, idx;
    cc_op *h;
    bool watched;
} tgt;

/* ------------------------------------------------------- fault plan */

static uint64_t mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* The plan's probability draw for rule i's k-th visit.  The header only says
 * "a hash of (seed, rule, k)"; this mirrors faults.c, and a start-up probe
 * (calibrate) checks it still does, else only p = 1 rules are used. */
static bool prob_fire(uint64_t seed, int i, uint64_t k, double p)
{
    return (double)(mix(seed ^ mix((uint64_t)i << 56 ^ k)) >> 11) * 0x1p-53 < p;
}

static unsigned m_visit(int h, cc_fault_point point)
{
    mhost *H = &g_hosts[h];
    unsigned fired = 0;
    for (int i = 0; i < H->nrules; i++) {
        mrule *r = &H->rules[i];
        if (r->point != point)
            continue;
        uint64_t k = ++r->visits;
        bool fire = r->nth ? k % r->nth == 0 : prob_fire(H->seed, i, k, r->p);
        if (fire) {
            fired |= 1u << r->action;
            H->injected++;
        }
    }
    return fired;
}

#define F_CHAN (1u << CC_FAULT_CHANNEL)
#define F_ABORT (1u << CC_FAULT_ABORT_HOST)
#define F_NOMEM (1u << CC_FAULT_NOMEM)

/* ----------------------------------------------------- frames, phases */

static frame *top(void) { return g_nframes ? &g_frames[g_nframes - 1] : NULL; }

static frame *push_frame(const char *what, int op)
{
    EXPECT(g_nframes < MAXFRAMES, "harness: frames nested too deep");
    frame *f = &g_frames[g_nframes++];
    memset(f, 0, sizeof *f);
    f->serial = ++g_serial;
    f->what = what;
    f->op = op;
    f->reg = -1;
    return f;
}

static void insert_phase(frame *f, int pos, int kind, int arg, cc_reason reason, int parent)
{
    EXPECT(f->nph < MAXPH, "harness: too many phases");
    memmove(&f->ph[pos + 1], &f->ph[pos], (size_t)(f->nph - pos) * sizeof f->ph[0]);
    f->ph[pos] = (phase){kind, arg, reason, parent};
    f->nph++;
}

static void add_phase(frame *f, int kind, int arg, cc_reason reason)
{
    insert_phase(f, f->nph, kind, arg, reason, -1);
}

static void add_fault_phases(frame *f, unsigned fired, int ch, int host)
{
    if (fired & F_CHAN)
        add_phase(f, PH_CHAN, ch, CC_CHANNEL_FAULTED);
    if (fired & F_ABORT)
        add_phase(f, PH_ABORT, host, CC_HOST_ABORT);
}

/* An operation's finish (the header: every end on a live handle visits
 * CC_FAULT_AT_END once, when the operation is finished): the plan's END
 * visit (made when the phase is applied: visits count in the order the core
 * makes them) -- its channel fault, then its host abort, then the cancel of
 * the ending operation itself -- then free-state and the release.  Inserted
 * at pos of f, as children of phase parent (they all run before any further
 * run of that phase). */
static void add_finish(frame *f, int pos, int x, int parent)
{
    insert_phase(f, pos, PH_ENDVISIT, x, CC_NOT_CANCELED, parent);
    insert_phase(f, pos + 1, PH_FINISH, x, CC_NOT_CANCELED, parent);
}

static void apply_endvisit(frame *f, int p)
{
    int x = f->ph[p].arg, parent = f->ph[p].parent, pos = p + 1;
    mop *o = &g_ops[x];
    unsigned fired = m_visit(o->host, CC_FAULT_AT_END);
    if (fired & F_CHAN)
        insert_phase(f, pos++, PH_CHAN, o->ch, CC_CHANNEL_FAULTED, parent);
    if (fired & F_ABORT)
        insert_phase(f, pos++, PH_ABORT, o->host, CC_HOST_ABORT, parent);
    if (fired)
        insert_phase(f, pos, PH_ENDCANCEL, x, fired & F_CHAN ? CC_CHANNEL_FAULTED : CC_HOST_ABORT,
                     parent);
}

static void stale_push(cc_op *h, bool watched)
{
    if (h) {
        g_stale_w[g_nstale % MAXSTALE] = watched;
        g_stale[g_nstale++ % MAXSTALE] = h;
    }
}

static void release(int x)
{
    mop *o = &g_ops[x];
    EXPECT(!o->released, "harness: op %d released twice", x);
    o->released = true;
    mhost *H = &g_hosts[o->host];
    H->ended++;
    if (o->armed && g_regs[o->reg].has_free)
        H->frees++;
    g_chans[o->ch].nops--;
    stale_push(o->h, o->watched);
}

static void claim(int x, frame *f, int p, int kind, bool user)
{
    mop *o = &g_ops[x];
    o->claimed = true;
    o->invoked = false;
    o->returned = false;
    o->claim_kind = kind;
    o->claim_user = user;
    o->claim_frame = f->serial;
    o->claim_phase = p;
}

/* The first trigger decides (G6); none reaches an op whose end began (G5).
 * A canceller takes the run of an armed C op, and of every watched op (its
 * binding hears of each cancel; RUN_USER with it iff armed). */
static void mark(int x, cc_reason reason, frame *f, int p)
{
    mop *o = &g_ops[x];
    if (!o->used || o->released || o->canceled || o->end_begun)
        return;
    o->canceled = true;
    o->reason = reason;
    g_hosts[o->host].canceled++;
    if (o->watched)
        claim(x, f, p, CL_NOTICE, o->armed);
    else if (o->armed)
        claim(x, f, p, CL_C, true);
}

static void apply_phase(frame *f, int p)
{
    phase *ph = &f->ph[p];
    switch (ph->kind) {
    case PH_CHAN: {
        mchan *c = &g_chans[ph->arg];
        if (!c->used || c->state == CC_CHANNEL_STATE_CLOSED)
            break;
        c->state = CC_CHANNEL_STATE_FAULTED;
        for (int x = 0; x < MAXOP; x++)
            if (g_ops[x].used && g_ops[x].ch == ph->arg)
                mark(x, CC_CHANNEL_FAULTED, f, p);
        break;
    }
    case PH_ONE: /* cc_channel_cancel_op: the op alone, as a fault marks it */
        mark(ph->arg, ph->reason, f, p);
        break;
    case PH_ABORT: {
        mhost *H = &g_hosts[ph->arg];
        if (H->state == CC_HOST_STATE_OPEN)
            H->state = CC_HOST_STATE_FAULTED;
        else if (H->state == CC_HOST_STATE_CLOSING)
            H->aborted_in_close = true;
        for (int x = 0; x < MAXOP; x++)
            if (g_ops[x].used && g_ops[x].host == ph->arg)
                mark(x, CC_HOST_ABORT, f, p);
        break;
    }
    case PH_ENDCANCEL: {
        mop *o = &g_ops[ph->arg];
        if (o->canceled)
            break;
        o->canceled = true;
        o->reason = ph->reason;
        g_hosts[o->host].canceled++;
        if (o->watched)
            claim(ph->arg, f, p, CL_NOTICE, o->armed);
        else if (o->armed)
            claim(ph->arg, f, p, CL_C, true);
        break;
    }
    case PH_G3: {
        int x = ph->arg;
        mop *o = &g_ops[x];
        reg_t *r = &g_regs[f->reg];
        o->reg_in_progress = false;
        if (o->end_begun) {
            /* Ended during its own registration (by a callback run by the
             * fault plan): the registration fails, nothing of it runs, and
             * the register call finishes the operation. */
            r->state = REG_FAILED;
            f->g3_status = CC_E_INVALID_OPERATION;
            o->deferred = true;
            add_finish(f, p + 1, x, p);
        } else {
            o->armed = true;
            o->reg = f->reg;
            r->state = REG_OK;
            f->g3_status = CC_OK;
            if (o->canceled) {
                if (o->watched && o->claimed && !o->invoked && !o->overtaken) {
                    o->saved = true;
                    o->s_kind = o->claim_kind;
                    o->s_frame = o->claim_frame;
                    o->s_phase = o->claim_phase;
                }
                o->g3_pending = o->watched;
                claim(x, f, p, o->watched ? CL_G3 : CL_C, true);
            }
        }
        break;
    }
    case PH_FINISH: {
        mop *o = &g_ops[ph->arg];
        int want = o->watched && o->deferred && g_hosts[o->host].bound;
        EXPECT(o->ended_notices == want, "op%d finished; its binding got %d ENDED notices, the "
               "contract says %d (a deferred end of a watched op: exactly one)", ph->arg,
               o->ended_notices, want);
        release(ph->arg);
        break;
    }
    case PH_ENDVISIT:
        apply_endvisit(f, p);
        break;
    }
}

/* Every run phase p claimed ran and returned, or an end overtook it. */
static void check_claims_done(frame *f, int p)
{
    for (int x = 0; x < MAXOP; x++) {
        mop *o = &g_ops[x];
        if (o->used && o->claimed && o->claim_frame == f->serial && o->claim_phase == p)
            EXPECT((o->invoked && o->returned) || o->overtaken,
                   "op%d was canceled (reason %d) by the %s of %s, its %s is due, yet it %s "
                   "(G1/G3/G7/G9)",
                   x, o->reason, ph_name[f->ph[p].kind], f->what,
                   o->claim_kind == CL_C ? "cancel callback" : "binding notice",
                   o->invoked ? "had not returned when the next step began" : "never came");
    }
}

static bool ancestor(const frame *f, int a, int p)
{
    for (int q = f->ph[p].parent; q >= 0; q = f->ph[q].parent)
        if (q == a)
            return true;
    return false;
}

static void advance(frame *f)
{
    int r = f->next;
    for (int j = 0; j < r; j++)
        if (!ancestor(f, j, r))
            check_claims_done(f, j);
    apply_phase(f, r);
    f->next++;
}

static void flush(frame *f)
{
    while (f->next < f->nph)
        advance(f);
    for (int j = 0; j < f->nph; j++)
        check_claims_done(f, j);
}

/* A run of op x (claimed in f) is arriving: apply the phases before it.
 * Finishes inserted during its phase's runs go first. */
static void arrive(frame *f, int x, const char *what)
{
    mop *o = &g_ops[x];
    for (;;) {
        bool mine = o->used && o->claimed && o->claim_frame == f->serial && !o->invoked
                    && !o->overtaken;
        if (mine && !(f->next < f->nph && f->ph[f->next].parent >= 0
                      && (f->ph[f->next].parent == o->claim_phase
                          || ancestor(f, o->claim_phase, f->next))))
            return;
        EXPECT(f->next < f->nph,
               "op%d's %s came inside %s, where nothing cancels it "
               "(model: canceled=%d end_begun=%d armed=%d cancel_runs=%d claimed=%d invoked=%d)",
               x, what, f->what, o->canceled, o->end_begun, o->armed, o->cancel_runs, o->claimed,
               o->invoked);
        advance(f);
    }
}

/* Op x's free-state (or ENDED notice) is arriving: its finish is next. */
static void arrive_finish(frame *f, int x)
{
    for (;;) {
        EXPECT(f->next < f->nph, "op%d's free-state came inside %s, where it does not end (G4)",
               x, f->what);
        if (f->ph[f->next].kind == PH_FINISH && f->ph[f->next].arg == x)
            return;
        advance(f);
    }
}

/* A run of op x (claimed by phase parent of f) returned: a deferred end it
 * was holding finishes now. */
static void run_returned(frame *f, int x, int parent)
{
    mop *o = &g_ops[x];
    if (o->defer_end && o->active == 0 && !o->reg_in_progress) {
        o->defer_end = false;
        o->deferred = true;
        int pos = f->next; /* after the finishes already due from this phase */
        while (pos < f->nph && f->ph[pos].parent >= 0
               && (f->ph[pos].parent == parent || ancestor(f, parent, pos)))
            pos++;
        add_finish(f, pos, x, parent);
    }
}

static void pop_frame(void)
{
    frame *f = top();
    flush(f);
    g_nframes--;
}
static bool frame_on_stack(unsigned serial)
{
    for (int i = 0; i < g_nframes; i++)
        if (g_frames[i].serial == serial)
            return true;
    return false;
}

/* Known bug batch_finish_hold: is x a batch-mate still held by the core? */
static bool held(int x)
{
    mop *o = &g_ops[x];
    return o->held_frame && frame_on_stack(o->held_frame) && TOLERATE(KB_BATCH_FINISH_HOLD);
}

static bool ctx_has_host(int h)
{
    for (int i = 0; i < g_nctx; i++)
        if (g_ctx[i].host == h)
            return true;
    return false;
}

/* ------------------------------------------------------------ picks */

static int pick_host(unsigned b)
{
    int i = (int)(b % (MAXH + 1));
    return i < MAXH && g_hosts[i].used ? i : -1;
}

static cc_host *host_ptr(int h) { return h < 0 ? NULL : g_hosts[h].h; }

static int pick_chan(unsigned b)
{
    int i = (int)(b % (MAXCH + 1));
    return i < MAXCH && g_chans[i].used && g_chans[i].c ? i : -1;
}

static cc_channel *chan_ptr(int c) { return c < 0 ? NULL : g_chans[c].c; }

static tgt pick_op(unsigned b)
{
    tgt t = {T_NULL, -1, NULL, false};
    if ((b & 0x80) && g_nstale) {
        unsigned n = g_nstale < MAXSTALE ? g_nstale : MAXSTALE;
        t.kind = T_STALE;
        t.h = g_stale[(b & 0x7f) % n];
        t.watched = g_stale_w[(b & 0x7f) % n];
        return t;
    }
    int i = (int)(b % (MAXOP + 1));
    if (i < MAXOP && g_ops[i].used && g_ops[i].known) {
        t.kind = T_REC;
        t.idx = i;
        t.h = g_ops[i].h;
        t.watched = g_ops[i].watched;
        return t;
    }
    if (i < MAXOP && g_ops[i].used)
        t.kind = -1; /* begun, handle not yet returned: nothing can name it */
    return t;
}

static tgt rec_tgt(int x) { return (tgt){T_REC, x, g_ops[x].h, g_ops[x].watched}; }

/* Is the handle still valid to use?  Stale once its end began (G10),
 * except inside a run of its own (its cancel callback or a batch it is in:
 * one thread here, so every call nested in that run is on its thread). */
static bool live(tgt t)
{
    if (t.kind != T_REC)
        return false;
    mop *o = &g_ops[t.idx];
    if (o->released)
        return false;
    if (!o->end_begun)
        return true;
    return o->active > 0;
}

static const char *tname(tgt t)
{
    static char buf[4][32];
    static int n;
    char *s = buf[n++ & 3];
    if (t.kind == T_NULL)
        return "NULL";
    if (t.kind == T_STALE)
        snprintf(s, 32, "stale(%p)", (void *)t.h);
    else
        snprintf(s, 32, "op%d", t.idx);
    return s;
}

/* ------------------------------------------------------- callbacks */

static void run_action(act a, int self, bool in_cancel);
static void check_reads(tgt t, const char *where);

static reg_t *reg_of(void *state)
{
    reg_t *r = state;
    EXPECT(r >= g_regs && r < g_regs + g_nregs, "callback called with a state pointer %p "
           "that no registration gave", state);
    return r;
}

static void push_ctx(int x, int host)
{
    EXPECT(g_nctx < MAXCTX, "harness: callbacks nested too deep");
    g_ctx[g_nctx++] = (ctx_t){x, host, true};
}

static void cancel_cb(cc_reason reason, void *state)
{
    reg_t *r = reg_of(state);
    int x = r->op;
    trace("-> cancel callback of op%d (reason %d, registration %d)", x, reason,
          (int)(r - g_regs));
    EXPECT(r->state != REG_FAILED && x >= 0 && !r->watched, "the cancel callback of a failed "
           "or watched registration (%d, op%d) ran (G2: only the first registration is in force)",
           (int)(r - g_regs), x);
    mop *o = &g_ops[x];
    EXPECT(reason == CC_HOST_ABORT || reason == CC_CHANNEL_FAULTED,
           "cancel callback got reason %d, not one of the two (G6)", reason);
    EXPECT(r->cancel_runs == 0, "a registration's cancel callback ran twice (G1)");
    r->cancel_runs++;
    frame *f = top();
    EXPECT(f, "a cancel callback ran outside any library call");
    arrive(f, x, "cancel callback");
    bool endpoint = f->ph[o->claim_phase].kind == PH_ENDCANCEL;
    EXPECT(o->claim_kind == CL_C, "harness: op%d claim kind %d", x, o->claim_kind);
    EXPECT(o->reg == (int)(r - g_regs), "op%d's cancel callback came from registration %d, "
           "but %d is the one in force (G2)", x, (int)(r - g_regs), o->reg);
    EXPECT(reason == o->reason, "op%d canceled with reason %d but its first trigger gave %d (G6)",
           x, reason, o->reason);
    EXPECT(o->cancel_runs == 0, "op%d's cancel callback ran twice (G1)", x);
    EXPECT(o->free_runs == 0, "op%d's cancel callback ran after its free-state (G5)", x);
    EXPECT(!o->end_begun || endpoint, "op%d's cancel callback started after its end began (G5)", x);
    int cp = o->claim_phase;
    int pk = f->ph[cp].kind;
    if (pk == PH_CHAN || pk == PH_ABORT || pk == PH_ONE)
        o->timed++;
    o->invoked = true;
    o->cancel_runs++;
    o->active++;
    bool was_endpoint = o->endpoint_cb;
    o->endpoint_cb = endpoint;
    push_ctx(x, o->host);

    /* Inside its own cancel callback the handle is valid (header), also in
     * the one the plan's END point runs. */
    if (o->known)
        check_reads(rec_tgt(x), "inside its own cancel callback");
    for (int i = 0; i < 2; i++)
        run_action(r->cancel_act[i], x, true);

    g_nctx--;
    o->active--;
    o->endpoint_cb = was_endpoint;
    o->returned = true;
    trace("<- cancel callback of op%d", x);
    run_returned(f, x, cp);
}

/* A registration's free-state: by the core (C ops, free_cb), by the binding
 * on CC_NOTICE_FREE_DUE, or by the harness after cc_op_end_watched handed
 * its key back (in_library false: the op is released by then). */
static void user_free(reg_t *r, bool in_library)
{
    int x = r->op;
    trace("-> free-state of op%d (registration %d)", x, (int)(r - g_regs));
    EXPECT(r->state == REG_OK && x >= 0, "the free-state of a registration that did not "
           "succeed (%d, op%d) ran (G2/G4)", (int)(r - g_regs), x);
    EXPECT(r->has_free, "the free-state of registration %d (op%d), which has none, is due (G4)",
           (int)(r - g_regs), x);
    mop *o = &g_ops[x];
    EXPECT(r->free_runs == 0, "a registration's free-state ran twice (G4)");
    r->free_runs++;
    EXPECT(o->used && o->released != in_library && o->reg == (int)(r - g_regs),
           "free-state of op%d ran but the op is not in flight with that registration", x);
    EXPECT(o->end_begun, "op%d's free-state ran before its end began (G4)", x);
    EXPECT(o->active == 0, "op%d's free-state ran while its cancel callback runs (G5)", x);
    EXPECT(o->free_runs == 0, "op%d's free-state ran twice (G4)", x);
    if (in_library) {
        frame *f = top();
        EXPECT(f, "a free-state callback ran outside any library call");
        arrive_finish(f, x); /* free-state comes after everything its end triggers */
    }
    o->free_runs++;
    push_ctx(x, in_library ? o->host : -1);
    if (o->known)
        check_reads(rec_tgt(x), "inside its own free-state");
    run_action(r->free_act, x, false);
    g_nctx--;
    trace("<- free-state of op%d", x);
}

static void free_cb(void *state)
{
    reg_t *r = reg_of(state);
    EXPECT(!r->watched, "the core ran a free-state for watched registration %d",
           (int)(r - g_regs));
    user_free(r, true);
}

static int find_watched(int h, int64_t v)
{
    for (int x = 0; x < MAXOP; x++) {
        mop *o = &g_ops[x];
        if (o->used && o->watched && !o->released && o->host == h && o->known
            && (int64_t)(intptr_t)o->h == v)
            return x;
    }
    /* A watched op canceled inside its own cc_op_begin_watched (the plan's
     * BEGIN point): its handle is not returned yet; its begin is the
     * innermost call (the frame's op). */
    frame *f = top();
    int x = f ? f->op : -1;
    if (x >= 0 && g_ops[x].used && g_ops[x].watched && !g_ops[x].known && !g_ops[x].released
        && g_ops[x].host == h && !g_ops[x].h) {
        g_ops[x].h = (cc_op *)(intptr_t)v;
        return x;
    }
    return -1;
}

/* The harness's binding function (arg: host index + 1): checks each notice
 * against the model and runs the users' callbacks as a binding would. */
static void binding_fn(void *arg, const cc_notice *n, size_t count)
{
    int h = (int)(intptr_t)arg - 1;
    frame *f = top();
    EXPECT(f, "the binding function was called outside any library call");
    EXPECT(h >= 0 && h < MAXH && g_hosts[h].used && g_hosts[h].bound,
           "the binding function of host%d was called", h);
    EXPECT(count >= 1 && count <= 64, "a batch of %zu notices (1 to 64)", count);
    if (n[0].what & CC_NOTICE_ENDED) {
        EXPECT(count == 1, "an ENDED notice came in a batch of %zu", count);
        int x = find_watched(h, n[0].op);
        trace("-> binding: ENDED op%d what %lld key %lld", x, (long long)n[0].what,
              (long long)n[0].user_key);
        EXPECT(x >= 0, "ENDED notice for handle %lld, no watched op in flight has it",
               (long long)n[0].op);
        mop *o = &g_ops[x];
        EXPECT(o->end_begun && !o->released, "ENDED notice for op%d, whose end did not begin (G4)", x);
        arrive_finish(f, x);
        EXPECT(o->deferred && o->ended_notices == 0, "op%d: an ENDED notice for an end that was "
               "not deferred, or a second one", x);
        o->ended_notices++;
        bool due = o->armed && g_regs[o->reg].has_free;
        int64_t key = o->armed ? o->reg + 2 : 0;
        EXPECT(n[0].what == (CC_NOTICE_ENDED | (due ? CC_NOTICE_FREE_DUE : 0))
                   && n[0].user_key == key,
               "op%d's ENDED notice: what %lld key %lld, the model says what %d key %lld (G4)", x,
               (long long)n[0].what, (long long)n[0].user_key,
               CC_NOTICE_ENDED | (due ? CC_NOTICE_FREE_DUE : 0), (long long)key);
        if (due)
            user_free(&g_regs[o->reg], true);
        trace("<- binding: ENDED op%d", x);
        return;
    }
    int xs[64], cps[64];
    for (size_t i = 0; i < count; i++) {
        int x = find_watched(h, n[i].op);
        EXPECT(x >= 0, "notice for handle %lld, no watched op in flight on host%d has it",
               (long long)n[i].op, h);
        xs[i] = x;
        mop *o = &g_ops[x];
        trace("-> binding: op%d what %lld key %lld (%zu of %zu)", x, (long long)n[i].what,
              (long long)n[i].user_key, i + 1, count);
        EXPECT(!(o->claimed && o->overtaken && !o->invoked && o->claim_frame == f->serial),
               "op%d: a notice for the run its end overtook: the run started after the end "
               "began (G5)", x);
        arrive(f, x, "notice");
        cps[i] = o->claim_phase;
        EXPECT(o->claim_kind != CL_C, "harness: op%d claim kind", x);
        bool user = o->claim_kind == CL_G3 || o->claim_user;
        int64_t bits = (o->claim_kind == CL_NOTICE ? CC_NOTICE_CANCELED : 0)
                       | (user ? CC_NOTICE_RUN_USER : 0);
        int64_t key = user ? o->reg + 2 : 0;
        EXPECT((n[i].what & 0xff) == bits && n[i].user_key == key,
               "op%d's notice: what %lld key %lld, the model says bits %lld key %lld (G1/G3)",
               x, (long long)n[i].what, (long long)n[i].user_key, (long long)bits,
               (long long)key);
        EXPECT((n[i].what >> 8) == o->reason, "op%d's notice gives reason %lld, its first "
               "trigger gave %d (G6)", x, (long long)(n[i].what >> 8), o->reason);
        int pk = f->ph[o->claim_phase].kind;
        EXPECT(!o->end_begun || pk == PH_ENDCANCEL,
               "op%d's notice came after its end began (G5)", x);
        EXPECT(o->free_runs == 0, "op%d's notice came after its free-state (G5)", x);
        if (i > 0)
            EXPECT(o->claim_phase == g_ops[xs[0]].claim_phase,
                   "one batch holds cancels of two triggers");
        o->invoked = true;
        if (o->claim_kind == CL_G3)
            o->g3_pending = false;
        else
            o->ran_queued = false;
        if (bits & CC_NOTICE_CANCELED) {
            EXPECT(o->notices == 0, "op%d was told CANCELED twice", x);
            o->notices++;
            if (pk == PH_CHAN || pk == PH_ABORT || pk == PH_ONE)
                o->timed++;
        }
        if (user) {
            reg_t *r = &g_regs[o->reg];
            EXPECT(r->cancel_runs == 0 && o->cancel_runs == 0, "op%d: RUN_USER twice (G1)", x);
            r->cancel_runs++;
            o->cancel_runs++;
            o->user_runs++;
        }
    }
    /* Every op of the batch is inside its own callback for all of it. */
    for (size_t i = 0; i < count; i++) {
        g_ops[xs[i]].active++;
        push_ctx(xs[i], h);
    }
    for (size_t i = 0; i < count; i++)
        if (g_ops[xs[i]].known)
            check_reads(rec_tgt(xs[i]), "inside its own batch");
    for (size_t i = 0; i < count; i++) {
        mop *o = &g_ops[xs[i]];
        /* RUN_USER of a batch-mate whose end a callback before it began:
         * like the Python layer, the binding does not start it (G5). */
        bool ep = o->claim_frame == f->serial && f->ph[o->claim_phase].kind == PH_ENDCANCEL;
        if ((n[i].what & CC_NOTICE_RUN_USER) && !(o->end_begun && !ep)) {
            bool was = o->endpoint_cb;
            o->endpoint_cb = ep;
            reg_t *r = &g_regs[o->reg];
            for (int k = 0; k < 2; k++)
                run_action(r->cancel_act[k], xs[i], true);
            o->endpoint_cb = was;
        }
    }
    g_nctx -= (int)count;
    for (size_t i = 0; i < count; i++) {
        mop *o = &g_ops[xs[i]];
        o->active--;
        o->returned = true;
        if (i > 0)
            o->held_frame = f->serial;
        if (o->claim_kind == CL_G3 && o->saved) {
            /* Back to the queued CANCELED notice (its user run was not
             * taken with the mark: the op was not armed then). */
            o->saved = false;
            o->claimed = true;
            o->invoked = o->returned = false;
            o->claim_kind = o->s_kind;
            o->claim_user = false;
            o->claim_frame = o->s_frame;
            o->claim_phase = o->s_phase;
            o->ran_queued = true;
        }
    }
    trace("<- binding batch");
    for (size_t i = 0; i < count; i++)
        run_returned(f, xs[i], cps[i]);
}

/* ------------------------------------------------------ host calls */

static int alloc_host(void)
{
    for (int i = 0; i < MAXH; i++)
        if (!g_hosts[i].used)
            return i;
    return -1;
}

static void do_create(unsigned b)
{
    if (b & 0x40) {
        trace("cc_host_create(NULL)");
        EXPECT_ST("cc_host_create(NULL)", cc_host_create(NULL), CC_E_INVALID_ARG);
        return;
    }
    int i = alloc_host();
    if (i < 0)
        return;
    cc_host *h = NULL;
    trace("cc_host_create -> host%d", i);
    EXPECT_ST("cc_host_create", cc_host_create(&h), CC_OK);
    EXPECT(h, "cc_host_create returned CC_OK and no host");
    mhost *H = &g_hosts[i];
    memset(H, 0, sizeof *H);
    H->used = true;
    H->h = h;
    H->state = CC_HOST_STATE_CREATED;
    H->close_timeout = 5000;
    g_swept_abort[i] = g_swept_fault[i] = g_swept_user[i] = g_swept_timed[i] = 0;
    if (!(b & 0x20)) {
        EXPECT_ST("cc_host_set_binding", cc_host_set_binding(h, binding_fn, (void *)(intptr_t)(i + 1)),
                  CC_OK);
        H->bound = true;
    }
}

static void do_open(int h)
{
    trace("cc_host_open(host%d)", h);
    cc_status want = CC_E_INVALID_ARG;
    if (h >= 0) {
        want = g_hosts[h].state == CC_HOST_STATE_CREATED ? CC_OK : CC_E_INVALID_OPERATION;
        if (want == CC_OK)
            g_hosts[h].state = CC_HOST_STATE_OPEN;
    }
    EXPECT_ST("cc_host_open", cc_host_open(host_ptr(h)), want);
}

static void do_reset(int h)
{
    trace("cc_host_reset(host%d)", h);
    cc_status want = CC_E_INVALID_ARG;
    if (h >= 0) {
        int s = g_hosts[h].state;
        want = s == CC_HOST_STATE_CLOSED || s == CC_HOST_STATE_CREATED ? CC_OK
                                                                       : CC_E_INVALID_OPERATION;
        if (want == CC_OK)
            g_hosts[h].state = CC_HOST_STATE_CREATED;
    }
    EXPECT_ST("cc_host_reset", cc_host_reset(host_ptr(h)), want);
}

static void do_abort(int h)
{
    trace("cc_host_abort(host%d)", h);
    if (h < 0) {
        EXPECT_ST("cc_host_abort(NULL)", cc_host_abort(NULL), CC_E_INVALID_ARG);
        return;
    }
    frame *f = push_frame("cc_host_abort", -1);
    add_phase(f, PH_ABORT, h, CC_HOST_ABORT);
    cc_status st = cc_host_abort(g_hosts[h].h);
    pop_frame();
    EXPECT_ST("cc_host_abort", st, CC_OK);
}

static int host_inflight(int h)
{
    int n = 0;
    for (int x = 0; x < MAXOP; x++)
        if (g_ops[x].used && !g_ops[x].released && g_ops[x].host == h)
            n++;
    return n;
}

/* Would an abort of h end every operation in flight on it?  Only then can a
 * single thread close or free it without waiting forever. */
static bool host_drainable(int h)
{
    for (int x = 0; x < MAXOP; x++) {
        mop *o = &g_ops[x];
        if (!o->used || o->released || o->host != h)
            continue;
        if (!(o->known && o->armed && !o->canceled && !o->end_begun
              && g_regs[o->reg].cancel_act[0].kind == A_END_SELF))
            return false;
    }
    return true;
}

static const int64_t g_timeouts[] = {
    0, 1, 2, -1, INT64_MIN, 1000, 1000000000000, 9223372036853, 9223372036852,
    9223372036000, 9223372036854, INT64_MAX, 9223372036854775 /* INT64_MAX/1000 */,
    4611686018427, 100, 2,
};
#define NTIMEOUTS ((unsigned)(sizeof g_timeouts / sizeof g_timeouts[0]))


static void do_close(int h, unsigned b, bool top_level)
{
    if (h < 0) {
        trace("cc_host_close(NULL)");
        EXPECT_ST("cc_host_close(NULL)", cc_host_close(NULL, 0), CC_E_INVALID_ARG);
        return;
    }
    mhost *H = &g_hosts[h];
    int64_t t = g_timeouts[b % NTIMEOUTS];
    cc_status want;
    bool proceeds = false;
    int n = host_inflight(h);
    if (ctx_has_host(h)) {
        want = CC_E_INVALID_OPERATION; /* would wait for itself (G11) */
    } else if (H->state != CC_HOST_STATE_OPEN && H->state != CC_HOST_STATE_FAULTED) {
        want = CC_E_INVALID_OPERATION;
    } else {
        if (n && (!top_level || !host_drainable(h)))
            return; /* one thread: nothing would ever end them */
        int64_t eff = t < 0 ? H->close_timeout : t;
        if (n && eff > 2)
            t = (int64_t)(b % 3); /* it will time out: keep it short */
        /* (Huge timeouts with nothing in flight stay: "a timeout too large
         * to add to the clock waits without a deadline".) */
        proceeds = true;
        want = n ? CC_E_TIMEOUT : CC_OK;
    }
    trace("cc_host_close(host%d, %lld) [%d in flight]", h, (long long)t, n);
    frame *f = push_frame("cc_host_close", -1);
    if (proceeds) {
        H->state = CC_HOST_STATE_CLOSING;
        H->aborted_in_close = false;
        if (n)
            add_phase(f, PH_ABORT, h, CC_HOST_ABORT); /* the timeout escalates (G8) */
    }
    cc_status st = cc_host_close(H->h, t);
    pop_frame();
    if (proceeds) {
        if (!n && H->aborted_in_close)
            want = CC_E_OPERATION_ABORTED;
        H->state = CC_HOST_STATE_CLOSED;
        for (int c = 0; c < MAXCH; c++)
            if (g_chans[c].used && g_chans[c].host == h)
                g_chans[c].state = CC_CHANNEL_STATE_CLOSED;
        EXPECT(host_inflight(h) == 0, "cc_host_close returned with operations in flight (G8)");
    }
    EXPECT_ST("cc_host_close", st, want);
}

static void do_free(int h)
{
    if (h < 0) {
        trace("cc_host_free(NULL)");
        cc_host_free(NULL);
        return;
    }
    if (!host_drainable(h))
        return;
    trace("cc_host_free(host%d) [%d in flight]", h, host_inflight(h));
    frame *f = push_frame("cc_host_free", -1);
    add_phase(f, PH_ABORT, h, CC_HOST_ABORT);
    cc_host_free(g_hosts[h].h);
    pop_frame();
    EXPECT(host_inflight(h) == 0, "cc_host_free returned with operations in flight");
    for (int x = 0; x < MAXOP; x++)
        if (g_ops[x].used && g_ops[x].host == h)
            g_ops[x].used = false;
    for (int c = 0; c < MAXCH; c++)
        if (g_chans[c].used && g_chans[c].host == h)
            g_chans[c].used = false;
    g_hosts[h].used = false;
}

static void do_set_timeout(int h, unsigned b)
{
    static const int64_t vals[] = {0, 1, 2, 5, -1, -1000, 5000, 9223372036853, INT64_MAX};
    int64_t v = vals[b % (sizeof vals / sizeof vals[0])];
    trace("cc_host_set_close_timeout(host%d, %lld)", h, (long long)v);
    cc_status want = h < 0 || v < 0 ? CC_E_INVALID_ARG : CC_OK;
    EXPECT_ST("cc_host_set_close_timeout", cc_host_set_close_timeout(host_ptr(h), v), want);
    if (want == CC_OK)
        g_hosts[h].close_timeout = v;
    int64_t got = cc_host_close_timeout(host_ptr(h));
    EXPECT(got == (h < 0 ? -1 : g_hosts[h].close_timeout),
           "cc_host_close_timeout returned %lld", (long long)got);
}

static void check_stats(int h)
{
    cc_stats s;
    memset(&s, 0xab, sizeof s);
    EXPECT_ST("cc_host_get_stats", cc_host_get_stats(g_hosts[h].h, &s), CC_OK);
    mhost *H = &g_hosts[h];
#define CMP(field, want)                                                            \
    EXPECT(s.field == (uint64_t)(want), "host%d stats." #field " is %llu, the model counts %llu", \
           h, (unsigned long long)s.field, (unsigned long long)(want))
    CMP(ops_begun, H->begun);
    CMP(ops_ended, H->ended);
    CMP(ops_in_flight, H->begun - H->ended);
    CMP(ops_canceled, H->canceled);
    CMP(cancels_host_abort, H->c_abort);
    CMP(cancels_channel_faulted, H->c_fault);
    CMP(free_states_run, H->frees);
    CMP(callback_errors, H->errors);
    CMP(channels_open, H->channels_open);
#undef CMP
    /* The same counters by name, and the newer ones. */
    static const cc_stat names[] = {CC_STAT_OPS_IN_FLIGHT, CC_STAT_OPS_BEGUN, CC_STAT_OPS_ENDED,
                                    CC_STAT_OPS_CANCELED, CC_STAT_CANCELS_HOST_ABORT,
                                    CC_STAT_CANCELS_CHANNEL_FAULTED, CC_STAT_FREE_STATES_RUN,
                                    CC_STAT_CALLBACK_ERRORS, CC_STAT_CHANNELS_OPEN};
    const uint64_t *fields[] = {&s.ops_in_flight, &s.ops_begun, &s.ops_ended, &s.ops_canceled,
                                &s.cancels_host_abort, &s.cancels_channel_faulted,
                                &s.free_states_run, &s.callback_errors, &s.channels_open};
    for (unsigned i = 0; i < sizeof names / sizeof names[0]; i++) {
        uint64_t v = cc_host_stat(H->h, names[i]);
        EXPECT(v == *fields[i], "host%d cc_host_stat(%d) is %llu, cc_host_get_stats says %llu",
               h, names[i], (unsigned long long)v, (unsigned long long)*fields[i]);
    }
    uint64_t v = cc_host_stat(H->h, CC_STAT_FAULTS_INJECTED);
    EXPECT(v == H->injected, "host%d CC_STAT_FAULTS_INJECTED is %llu, the model counts %llu", h,
           (unsigned long long)v, (unsigned long long)H->injected);
    v = cc_host_stat(H->h, CC_STAT_USER_CANCELS_RUN);
    EXPECT(v == g_user[h], "host%d CC_STAT_USER_CANCELS_RUN is %llu, the model counts %llu "
           "RUN_USER notices", h, (unsigned long long)v, (unsigned long long)g_user[h]);
    v = cc_host_stat(H->h, CC_STAT_LATENCY_COUNT);
    EXPECT(v == g_timed[h], "host%d CC_STAT_LATENCY_COUNT is %llu, the model counts %llu "
           "cancels run by a fan-out", h, (unsigned long long)v, (unsigned long long)g_timed[h]);
    uint64_t hist[CC_LATENCY_BUCKETS + 1], sum = 0;
    EXPECT_ST("cc_host_latency(n too small)", cc_host_latency(H->h, hist, CC_LATENCY_BUCKETS - 1),
              CC_E_INVALID_ARG);
    EXPECT_ST("cc_host_latency", cc_host_latency(H->h, hist, CC_LATENCY_BUCKETS + 1), CC_OK);
    for (int i = 0; i < CC_LATENCY_BUCKETS; i++)
        sum += hist[i];
    EXPECT(sum == g_timed[h], "host%d latency histogram holds %llu, CC_STAT_LATENCY_COUNT %llu", h,
           (unsigned long long)sum, (unsigned long long)g_timed[h]);
    EXPECT(cc_host_stat(H->h, (cc_stat)999) == 0, "cc_host_stat(unknown) is not 0");
}

/* Sets (or removes) a host's binding function: only while it has no
 * watched operation (the header: set it before beginning them). */
static void do_set_binding(int h, unsigned b)
{
    if (h < 0) {
        trace("cc_host_set_binding(NULL)");
        EXPECT_ST("cc_host_set_binding(NULL)", cc_host_set_binding(NULL, binding_fn, NULL),
                  CC_E_INVALID_ARG);
        return;
    }
    for (int x = 0; x < MAXOP; x++)
        if (g_ops[x].used && !g_ops[x].released && g_ops[x].host == h && g_ops[x].watched)
            return;
    bool on = (b & 1) != 0;
    trace("cc_host_set_binding(host%d, %s)", h, on ? "fn" : "NULL");
    EXPECT_ST("cc_host_set_binding", cc_host_set_binding(g_hosts[h].h, on ? binding_fn : NULL,
                                                         (void *)(intptr_t)(h + 1)), CC_OK);
    g_hosts[h].bound = on;
}

static void do_report(int h)
{
    trace("cc_host_report_callback_error(host%d)", h);
    EXPECT_ST("cc_host_report_callback_error", cc_host_report_callback_error(host_ptr(h)),
              h < 0 ? CC_E_INVALID_ARG : CC_OK);
    if (h >= 0)
        g_hosts[h].errors++;
}

/* --------------------------------------------------- fault plan calls */

static void do_fault_add(int h, unsigned b1, unsigned b2, unsigned b3)
{
    static const uint32_t nths[] = {0, 1, 2, 3, 4, 7, 13, UINT32_MAX};
    static const double ps[] = {0.0, 1.0, 0.5, 0.1, 0.9, 0.02, -0.1, 1.5, NAN, 1e-9, 0.999, INFINITY};
    int point = (int)(b1 & 3) == 3 ? (b1 & 4 ? 3 : -1) : (int)(b1 & 3);
    int action = (int)(b1 >> 3 & 3) == 3 ? (b1 & 0x20 ? 7 : -1) : (int)(b1 >> 3 & 3);
    uint32_t nth = nths[b2 % 8];
    double p = ps[b3 % (sizeof ps / sizeof ps[0])];
    if (!g_prob_exact && nth == 0 && p > 0.0 && p < 1.0)
        p = 1.0; /* the draw cannot be predicted: make it certain */
    cc_status want;
    if (h < 0 || (unsigned)point > CC_FAULT_AT_END || (unsigned)action > CC_FAULT_NOMEM)
        want = CC_E_INVALID_ARG;
    else if (action == CC_FAULT_NOMEM && point == CC_FAULT_AT_END)
        want = CC_E_INVALID_ARG;
    else if (!(p >= 0.0 && p <= 1.0) || (nth == 0 && p == 0.0))
        want = CC_E_INVALID_ARG;
    else if (g_hosts[h].nrules == 16)
        want = CC_E_NOMEM;
    else
        want = CC_OK;
    trace("cc_host_fault_add(host%d, point %d, action %d, every %u, p %g)", h, point, action,
          nth, p);
    EXPECT_ST("cc_host_fault_add",
              cc_host_fault_add(host_ptr(h), (cc_fault_point)point, (cc_fault_action)action, nth, p),
              want);
    if (want == CC_OK) {
        mhost *H = &g_hosts[h];
        H->rules[H->nrules++] = (mrule){(cc_fault_point)point, (cc_fault_action)action, nth, p, 0};
    }
}

static void do_fault_reset(int h, unsigned b)
{
    uint64_t seed = (uint64_t)b * 0x9e3779b97f4a7c15ull;
    trace("cc_host_fault_reset(host%d, %llu)", h, (unsigned long long)seed);
    EXPECT_ST("cc_host_fault_reset", cc_host_fault_reset(host_ptr(h), seed),
              h < 0 ? CC_E_INVALID_ARG : CC_OK);
    if (h >= 0) {
        g_hosts[h].nrules = 0;
        g_hosts[h].injected = 0;
        g_hosts[h].seed = seed;
    }
}

/* ---------------------------------------------------- channel calls */

static void do_channel_open(int h, unsigned b)
{
    int c = -1;
    for (int i = 0; i < MAXCH; i++)
        if (!g_chans[i].used) {
            c = i;
            break;
        }
    cc_status want = CC_E_INVALID_ARG;
    bool null_out = (b & 0x40) != 0;
    if (h >= 0 && !null_out) {
        int s = g_hosts[h].state;
        want = s == CC_HOST_STATE_OPEN      ? CC_OK
               : s == CC_HOST_STATE_FAULTED ? CC_E_OBJECT_FAULTED
                                            : CC_E_INVALID_OPERATION;
    }
    if (want == CC_OK && c < 0)
        return; /* no record to track it */
    trace("cc_channel_open(host%d%s) -> chan%d", h, null_out ? ", NULL" : "", c);
    cc_channel *ch = NULL;
    EXPECT_ST("cc_channel_open", cc_channel_open(host_ptr(h), null_out ? NULL : &ch), want);
    if (want == CC_OK) {
        EXPECT(ch, "cc_channel_open returned CC_OK and no channel");
        g_chans[c] = (mchan){true, ch, h, CC_CHANNEL_STATE_OPEN, false, 0};
        g_hosts[h].channels_open++;
    }
}

static void do_channel_fault(int c)
{
    trace("cc_channel_fault(chan%d)", c);
    if (c < 0) {
        EXPECT_ST("cc_channel_fault(NULL)", cc_channel_fault(NULL), CC_E_INVALID_ARG);
        return;
    }
    cc_status want = g_chans[c].state == CC_CHANNEL_STATE_CLOSED ? CC_E_INVALID_OPERATION : CC_OK;
    frame *f = push_frame("cc_channel_fault", -1);
    if (want == CC_OK)
        add_phase(f, PH_CHAN, c, CC_CHANNEL_FAULTED);
    cc_status st = cc_channel_fault(g_chans[c].c);
    pop_frame();
    EXPECT_ST("cc_channel_fault", st, want);
}

/* cc_channel_cancel_op: the op's own channel, another channel (refused),
 * or a stale handle (refused, G10). */
static void do_cancel_op(tgt t, unsigned b)
{
    cc_reason reason = (b & 1) ? CC_CHANNEL_FAULTED : CC_HOST_ABORT;
    if (t.kind < 0)
        return; /* begun, its handle not yet returned: nothing can name it */
    if (b & 0x40) { /* argument errors first: nothing changes */
        int64_t v = t.kind == T_NULL ? 1 : (int64_t)(intptr_t)t.h;
        trace("cc_channel_cancel_op with a bad argument");
        EXPECT_ST("cc_channel_cancel_op(NULL, ...)", cc_channel_cancel_op(NULL, v, reason),
                  CC_E_INVALID_ARG);
        int c = pick_chan(b >> 1);
        if (c >= 0) {
            EXPECT_ST("cc_channel_cancel_op(ch, 0, ...)", cc_channel_cancel_op(g_chans[c].c, 0, reason),
                      CC_E_INVALID_ARG);
            EXPECT_ST("cc_channel_cancel_op(ch, op, NOT_CANCELED)",
                      cc_channel_cancel_op(g_chans[c].c, v, CC_NOT_CANCELED), CC_E_INVALID_ARG);
        }
        return;
    }
    if (t.kind == T_NULL)
        return;
    int x = t.idx;
    mop *o = t.kind == T_REC ? &g_ops[x] : NULL;
    int c = o ? o->ch : pick_chan(b >> 1);
    bool own = o != NULL;
    if ((b & 0x20) || c < 0 || !g_chans[c].c) {
        c = pick_chan(b >> 1); /* some other channel, whose handle is still held */
        own = o && c == o->ch;
    }
    if (c < 0 || !g_chans[c].c)
        return;
    cc_status want = own && live(t) && !o->end_begun ? CC_OK : CC_E_INVALID_OPERATION;
    trace("cc_channel_cancel_op(chan%d, %s, %s) -> %s", c, tname(t),
          reason == CC_HOST_ABORT ? "HOST_ABORT" : "CHANNEL_FAULTED", cc_status_str(want));
    frame *f = push_frame("cc_channel_cancel_op", -1);
    if (want == CC_OK)
        add_phase(f, PH_ONE, x, reason);
    cc_status st = cc_channel_cancel_op(g_chans[c].c, (int64_t)(intptr_t)t.h, reason);
    pop_frame();
    EXPECT_ST("cc_channel_cancel_op", st, want);
}

static void do_channel_close(int c)
{
    trace("cc_channel_close(chan%d)", c);
    if (c < 0) {
        EXPECT_ST("cc_channel_close(NULL)", cc_channel_close(NULL), CC_E_INVALID_ARG);
        return;
    }
    EXPECT_ST("cc_channel_close", cc_channel_close(g_chans[c].c), CC_OK);
    g_chans[c].c = NULL;
    if (!g_chans[c].shut)
        g_hosts[g_chans[c].host].channels_open--;
}

/* Closed to new operations, the handle kept (it reads CLOSED). */
static void do_channel_shutdown(int c)
{
    trace("cc_channel_shutdown(chan%d)", c);
    if (c < 0) {
        EXPECT_ST("cc_channel_shutdown(NULL)", cc_channel_shutdown(NULL), CC_E_INVALID_ARG);
        return;
    }
    EXPECT_ST("cc_channel_shutdown", cc_channel_shutdown(g_chans[c].c), CC_OK);
    if (!g_chans[c].shut)
        g_hosts[g_chans[c].host].channels_open--;
    g_chans[c].shut = true;
    g_chans[c].state = CC_CHANNEL_STATE_CLOSED;
}

/* -------------------------------------------------- operation calls */

static int alloc_op(void)
{
    for (int i = 0; i < MAXOP; i++)
        if (!g_ops[i].used)
            return i;
    return -1;
}

static cc_status admission(int c)
{
    int cs = g_chans[c].state, hs = g_hosts[g_chans[c].host].state;
    if (cs == CC_CHANNEL_STATE_FAULTED || hs == CC_HOST_STATE_FAULTED)
        return CC_E_OBJECT_FAULTED;
    if (cs != CC_CHANNEL_STATE_OPEN || hs != CC_HOST_STATE_OPEN)
        return CC_E_INVALID_OPERATION;
    return CC_OK;
}

static int new_op(int c)
{
    int x = alloc_op();
    mop *o = &g_ops[x];
    memset(o, 0, sizeof *o);
    o->used = true;
    o->host = g_chans[c].host;
    o->ch = c;
    o->reg = -1;
    o->reason = CC_NOT_CANCELED;
    g_chans[c].nops++;
    g_hosts[o->host].begun++;
    return x;
}

static void do_begin(int c, bool null_out, bool watched)
{
    cc_status want = c < 0 || null_out ? CC_E_INVALID_ARG : admission(c);
    if (watched && c >= 0 && !g_hosts[g_chans[c].host].bound)
        want = CC_E_INVALID_OPERATION; /* no binding function */
    int x = -1;
    unsigned fired = 0;
    if (want == CC_OK) {
        if (alloc_op() < 0)
            return;
        fired = m_visit(g_chans[c].host, CC_FAULT_AT_BEGIN);
        if (fired & F_NOMEM)
            want = CC_E_NOMEM; /* the visit's other faults are dropped */
        else {
            x = new_op(c);
            g_ops[x].watched = watched;
        }
    }
    const char *what = watched ? "cc_op_begin_watched" : "cc_op_begin";
    trace("%s(chan%d%s) -> op%d", what, c, null_out ? ", NULL" : "", x);
    frame *f = push_frame(what, watched ? x : -1);
    if (x >= 0)
        add_fault_phases(f, fired, c, g_chans[c].host);
    cc_op *op = NULL;
    cc_status st;
    if (watched) {
        int64_t v = cc_op_begin_watched(chan_ptr(c));
        st = v > 0 ? CC_OK : (cc_status)v;
        if (v > 0) {
            op = (cc_op *)(intptr_t)v;
            if (x >= 0 && g_ops[x].h)
                EXPECT(g_ops[x].h == op, "cc_op_begin_watched returned a handle other than "
                       "the one its notices named");
        }
    } else {
        st = cc_op_begin(chan_ptr(c), null_out ? NULL : &op);
    }
    if (x >= 0 && st == CC_OK) {
        g_ops[x].h = op;
        g_ops[x].known = true;
    }
    pop_frame();
    EXPECT_ST(what, st, want);
    if (x >= 0)
        EXPECT(op, "%s returned CC_OK and no operation", what);
}

static int decode_reg(bool *cancel_null)
{
    unsigned fl = u8();
    act a0 = {(uint8_t)(u8() % A_COUNT), (uint8_t)u8()};
    act a1 = {(uint8_t)(u8() % A_COUNT), (uint8_t)u8()};
    act fa = {(uint8_t)(u8() % A_COUNT), (uint8_t)u8()};
    if (cancel_null)
        *cancel_null = (fl & 0x30) == 0x30;
    if (g_nregs >= MAXREG)
        return -1;
    reg_t *r = &g_regs[g_nregs];
    memset(r, 0, sizeof *r);
    r->op = -1;
    r->state = REG_PENDING;
    r->has_free = fl & 1;
    r->wrong_api = (fl & 0xc0) == 0xc0;
    r->depth = g_nctx;
    r->cancel_act[0] = (fl & 2) ? (act){A_END_SELF, 0} : a0;
    r->cancel_act[1] = a1;
    r->free_act = fa;
    return g_nregs++;
}

/* cc_op_register_cancel, or cc_op_register_watched for a watched op (the
 * registration's wrong_api flips which; the wrong one is
 * CC_E_INVALID_OPERATION).  cancel_null: a NULL cancel, or a watched key of
 * 1 (both CC_E_INVALID_ARG). */
static void do_register(tgt t, int r, bool cancel_null)
{
    cc_status want;
    int x = t.kind == T_REC ? t.idx : -1;
    bool proceeds = false;
    unsigned fired = 0;
    bool watched = t.watched != g_regs[r].wrong_api;
    g_regs[r].watched = watched;
    if (t.kind == T_NULL || cancel_null)
        want = CC_E_INVALID_ARG;
    else if (!live(t) || g_ops[x].end_begun)
        want = CC_E_INVALID_OPERATION; /* G10 */
    else if (watched != g_ops[x].watched)
        want = CC_E_INVALID_OPERATION; /* the other kind of operation */
    else if (g_ops[x].reg_in_progress || g_ops[x].armed)
        want = CC_E_INVALID_OPERATION; /* G2 */
    else {
        mop *o = &g_ops[x];
        if (o->watched && o->canceled && o->claimed && !o->invoked && !o->overtaken
            && o->active == 0 && TOLERATE(KB_WATCHED_G3_QUEUED)) {
            trace("(skipped: register on queued op%d [known bug watched_g3_queued])", x);
            g_regs[r].state = REG_FAILED;
            return;
        }
        if (held(x)) {
            trace("(skipped: register on held op%d [known bug batch_finish_hold])", x);
            g_regs[r].state = REG_FAILED;
            return;
        }
        fired = m_visit(g_ops[x].host, CC_FAULT_AT_REGISTER);
        want = fired & F_NOMEM ? CC_E_NOMEM : CC_OK;
        proceeds = want == CC_OK;
    }
    g_regs[r].op = x;
    if (!proceeds)
        g_regs[r].state = REG_FAILED;
    const char *what = watched ? "cc_op_register_watched" : "cc_op_register_cancel";
    trace("%s(%s, reg %d%s%s)", what, tname(t), r, g_regs[r].has_free ? ", free" : "",
          cancel_null ? ", cancel NULL / key 1" : "");
    frame *f = push_frame(what, -1);
    if (proceeds) {
        g_ops[x].reg_in_progress = true;
        add_fault_phases(f, fired, g_ops[x].ch, g_ops[x].host);
        add_phase(f, PH_G3, x, CC_NOT_CANCELED);
        f->reg = r;
    }
    cc_status st;
    if (watched)
        st = cc_op_register_watched((int64_t)(intptr_t)t.h, cancel_null ? 1 : r + 2,
                                    g_regs[r].has_free);
    else
        st = cc_op_register_cancel(t.h, cancel_null ? NULL : cancel_cb,
                                   g_regs[r].has_free ? free_cb : NULL, (void *)&g_regs[r]);
    pop_frame();
    if (proceeds) {
        want = f->g3_status;
        EXPECT(!g_ops[x].g3_pending, "op%d was canceled when it registered, yet RUN_USER did "
               "not come inside %s (G3)", x, what);
    }
    EXPECT_ST(what, st, want);
}

static void check_reads(tgt t, const char *where)
{
    int want_is;
    cc_reason want_r;
    if (!live(t)) {
        want_is = CC_E_INVALID_OPERATION;
        want_r = CC_REASON_INVALID;
    } else {
        mop *o = &g_ops[t.idx];
        want_is = o->canceled;
        want_r = o->canceled ? o->reason : CC_NOT_CANCELED;
    }
    int got_is = cc_op_is_canceled(t.h);
    cc_reason got_r = cc_op_reason(t.h);
    EXPECT(got_is == want_is, "cc_op_is_canceled(%s) %s returned %d, the contract says %d "
           "(G10/G6)", tname(t), where, got_is, want_is);
    EXPECT(got_r == want_r, "cc_op_reason(%s) %s returned %d, the contract says %d (G6/G10)",
           tname(t), where, got_r, want_r);
}

/* cc_op_end, or cc_op_end_watched for a watched op (wrong flips which). */
static void do_end(tgt t, bool wrong)
{
    bool watched = t.watched != wrong;
    const char *what = watched ? "cc_op_end_watched" : "cc_op_end";
    trace("%s(%s)", what, tname(t));
    if (t.kind == T_NULL) {
        if (watched)
            EXPECT(cc_op_end_watched(0) == CC_E_INVALID_ARG, "cc_op_end_watched(0)");
        else
            EXPECT_ST("cc_op_end(NULL)", cc_op_end(NULL), CC_E_INVALID_ARG);
        return;
    }
    int x = t.idx;
    mop *o = t.kind == T_REC ? &g_ops[x] : NULL;
    if (!o || !live(t) || o->end_begun || watched != o->watched) {
        int64_t got = watched ? cc_op_end_watched((int64_t)(intptr_t)t.h)
                              : (int64_t)cc_op_end(t.h);
        EXPECT(got == CC_E_INVALID_OPERATION, "%s of an ended operation or of the other "
               "kind returned %lld, the contract says CC_E_INVALID_OPERATION (G10)", what,
               (long long)got);
        return;
    }
    if (o->watched && o->claimed && !o->invoked && !o->overtaken && o->active == 0
        && TOLERATE(KB_WATCHED_END_QUEUED)) {
        trace("(skipped: end of queued op%d [known bug watched_end_queued])", x);
        return;
    }
    if (held(x)) {
        trace("(skipped: end of held op%d [known bug batch_finish_hold])", x);
        return;
    }
    if (o->saved) {
        /* Not modelled: an end inside a G3 run that took over a queued run
         * is finished when that batch is delivered (not when the run
         * returns), after the fan-out's other C callbacks. */
        trace("(skipped: end of op%d inside a G3 run over its queued run)", x);
        return;
    }
    if (o->ran_queued && TOLERATE(KB_G3_END_QUEUED)) {
        trace("(skipped: end of op%d, its queued run taken by G3 [known bug g3_end_queued])", x);
        return;
    }
    frame *f = push_frame(what, x);
    bool deferred = false;
    o->end_begun = true;
    if (o->reg_in_progress) {
        /* Ended from a callback run during its own registration: deferred,
         * the registration fails and finishes it (PH_G3).  A run queued for
         * it never starts. */
        deferred = true;
        if (o->claimed && !o->invoked)
            o->overtaken = true;
    } else if (o->claimed && !o->invoked && !o->overtaken) {
        /* A fan-out claimed its run but has not started it: the end
         * overtakes it, the run never starts (G5), the end finishes now. */
        o->overtaken = true;
        add_finish(f, 0, x, -1);
    } else if (o->active > 0) {
        /* From inside its own run: finished when that returns (G5). */
        deferred = true;
        o->defer_end = true;
    } else {
        add_finish(f, 0, x, -1);
    }
    int64_t got = watched ? cc_op_end_watched((int64_t)(intptr_t)t.h) : (int64_t)cc_op_end(t.h);
    pop_frame();
    int64_t want = CC_OK;
    bool due = o->armed && g_regs[o->reg].has_free;
    if (watched)
        want = deferred ? CC_END_DEFERRED : o->armed ? o->reg + 2 : CC_END_DONE;
    EXPECT(got == want, "%s(op%d) returned %lld, the model says %lld (G4/G5)", what, x,
           (long long)got, (long long)want);
    if (!deferred) {
        EXPECT(o->released, "harness: op%d not finished by its end", x);
        if (watched && due)
            user_free(&g_regs[o->reg], false);
        EXPECT(o->free_runs == due, "%s(op%d) returned; free-state ran %d times, the "
               "contract says %d (G4)", what, x, o->free_runs, due);
    }
}

/* ----------------------------------------------------- callback actions */

static void run_action(act a, int self, bool in_cancel)
{
    if (!g_ops[self].known)
        switch (a.kind) { /* its begin has not returned it yet */
        case A_END_SELF: case A_READ_SELF: case A_REG_SELF: case A_END_SELF_TWICE:
        case A_CANCEL_SELF:
            return;
        }
    if (a.kind == A_END_SELF) { /* always: hosts being closed count on it */
        do_end(rec_tgt(self), false);
        return;
    }
    if (g_cleanup || g_nctx > MAXDEPTH)
        return;
    mop *o = &g_ops[self];
    switch (a.kind) {
    case A_NONE:
        break;
    case A_END_OTHER: {
        tgt t = pick_op(a.arg);
        if (t.kind >= 0)
            do_end(t, (a.arg & 0x70) == 0x70);
        break;
    }
    case A_FAULT_OWN:
        if (g_chans[o->ch].c)
            do_channel_fault(o->ch);
        break;
    case A_FAULT_CH:
        do_channel_fault(pick_chan(a.arg));
        break;
    case A_ABORT_OWN:
        do_abort(o->host);
        break;
    case A_CANCEL_SELF:
        do_cancel_op(rec_tgt(self), a.arg & 0x9f);
        break;
    case A_CANCEL_OTHER:
        do_cancel_op(pick_op(a.arg), a.arg);
        break;
    case A_ABORT_HOST:
        do_abort(pick_host(a.arg));
        break;
    case A_REG_OTHER: {
        tgt t = pick_op(a.arg);
        bool cancel_null = false;
        int r = decode_reg(&cancel_null);
        if (t.kind >= 0 && r >= 0)
            do_register(t, r, cancel_null);
        break;
    }
    case A_BEGIN:
        do_begin(pick_chan(a.arg), false, false);
        break;
    case A_BEGIN_W:
        do_begin(pick_chan(a.arg), false, true);
        break;
    case A_READ_OTHER: {
        tgt t = pick_op(a.arg);
        if (t.kind >= 0)
            check_reads(t, "inside a callback");
        break;
    }
    case A_READ_SELF:
        check_reads(rec_tgt(self), in_cancel ? "inside its own cancel callback"
                                              : "inside its own free-state");
        break;
    case A_REG_SELF: {
        int r = decode_reg(NULL);
        if (r >= 0)
            do_register(rec_tgt(self), r, false);
        break;
    }
    case A_CLOSE_OWN:
        do_close(o->host, a.arg, false); /* refused: it would wait for itself */
        break;
    case A_CLOSE_HOST:
        do_close(pick_host(a.arg), a.arg, false);
        break;
    case A_REPORT:
        do_report(pick_host(a.arg));
        break;
    case A_STATS: {
        int h = pick_host(a.arg);
        cc_stats s;
        if (h >= 0)
            EXPECT_ST("cc_host_get_stats", cc_host_get_stats(g_hosts[h].h, &s), CC_OK);
        break;
    }
    case A_SHUT_CH:
        do_channel_shutdown(pick_chan(a.arg));
        break;
    case A_SHUT_OWN_CH:
        if (g_chans[o->ch].c)
            do_channel_shutdown(o->ch);
        break;
    case A_END_SELF_TWICE:
        do_end(rec_tgt(self), false);
        do_end(rec_tgt(self), false);
        break;
    case A_CLOSE_OWN_CH: /* the op goes on on a closed handle's channel */
        if (g_chans[o->ch].c)
            do_channel_close(o->ch);
        break;
    case A_CLOSE_CH: {
        int c = pick_chan(a.arg);
        if (c >= 0)
            do_channel_close(c);
        break;
    }
    case A_OPEN_HOST:
        do_open(pick_host(a.arg));
        break;
    case A_RESET_HOST:
        do_reset(pick_host(a.arg));
        break;
    }
}

/* ------------------------------------------------------------ checks */

static void null_battery(void)
{
    trace("NULL handles everywhere");
    cc_stats s;
    cc_status st = CC_OK;
    EXPECT_ST("cc_host_open(NULL)", cc_host_open(NULL), CC_E_INVALID_ARG);
    EXPECT_ST("cc_host_close(NULL)", cc_host_close(NULL, -1), CC_E_INVALID_ARG);
    EXPECT_ST("cc_host_abort(NULL)", cc_host_abort(NULL), CC_E_INVALID_ARG);
    EXPECT_ST("cc_host_reset(NULL)", cc_host_reset(NULL), CC_E_INVALID_ARG);
    cc_host_free(NULL);
    EXPECT(cc_host_state(NULL) == CC_HOST_STATE_INVALID, "cc_host_state(NULL)");
    EXPECT_ST("cc_host_set_close_timeout(NULL)", cc_host_set_close_timeout(NULL, 1), CC_E_INVALID_ARG);
    EXPECT(cc_host_close_timeout(NULL) == -1, "cc_host_close_timeout(NULL)");
    EXPECT_ST("cc_channel_open(NULL)", cc_channel_open(NULL, NULL), CC_E_INVALID_ARG);
    EXPECT_ST("cc_channel_fault(NULL)", cc_channel_fault(NULL), CC_E_INVALID_ARG);
    EXPECT_ST("cc_channel_close(NULL)", cc_channel_close(NULL), CC_E_INVALID_ARG);
    EXPECT(cc_channel_state(NULL) == CC_CHANNEL_STATE_INVALID, "cc_channel_state(NULL)");
    EXPECT_ST("cc_op_begin(NULL)", cc_op_begin(NULL, NULL), CC_E_INVALID_ARG);
    EXPECT_ST("cc_op_register_cancel(NULL)", cc_op_register_cancel(NULL, cancel_cb, NULL, NULL),
              CC_E_INVALID_ARG);
    EXPECT(cc_op_begin_watched(NULL) == CC_E_INVALID_ARG, "cc_op_begin_watched(NULL)");
    EXPECT(cc_op_register_watched(0, 5, 0) == CC_E_INVALID_ARG, "cc_op_register_watched(0)");
    EXPECT(cc_op_register_watched(-3, 5, 1) == CC_E_INVALID_ARG, "cc_op_register_watched(-3)");
    EXPECT(cc_op_end_watched(0) == CC_E_INVALID_ARG, "cc_op_end_watched(0)");
    EXPECT(cc_op_end_watched(-1) == CC_E_INVALID_ARG, "cc_op_end_watched(-1)");
    EXPECT_ST("cc_channel_shutdown(NULL)", cc_channel_shutdown(NULL), CC_E_INVALID_ARG);
    EXPECT_ST("cc_host_set_binding(NULL)", cc_host_set_binding(NULL, binding_fn, NULL),
              CC_E_INVALID_ARG);
    EXPECT(cc_host_stat(NULL, CC_STAT_OPS_BEGUN) == 0, "cc_host_stat(NULL)");
    uint64_t hist[CC_LATENCY_BUCKETS];
    EXPECT_ST("cc_host_latency(NULL)", cc_host_latency(NULL, hist, CC_LATENCY_BUCKETS),
              CC_E_INVALID_ARG);
    for (unsigned i = 0; i + 1 < CC_LATENCY_BUCKETS; i++)
        EXPECT(cc_latency_bound_ns(i) == (uint64_t)1000 << i, "cc_latency_bound_ns(%u)", i);
    EXPECT(cc_latency_bound_ns(CC_LATENCY_BUCKETS - 1) == UINT64_MAX
               && cc_latency_bound_ns(1000) == UINT64_MAX, "cc_latency_bound_ns(last)");
    (void)st;
    EXPECT(cc_op_is_canceled(NULL) == CC_E_INVALID_OPERATION, "cc_op_is_canceled(NULL)");
    EXPECT(cc_op_reason(NULL) == CC_REASON_INVALID, "cc_op_reason(NULL)");
    EXPECT_ST("cc_op_end(NULL)", cc_op_end(NULL), CC_E_INVALID_ARG);
    EXPECT_ST("cc_host_get_stats(NULL)", cc_host_get_stats(NULL, &s), CC_E_INVALID_ARG);
    EXPECT_ST("cc_host_report_callback_error(NULL)", cc_host_report_callback_error(NULL), CC_E_INVALID_ARG);
    EXPECT_ST("cc_host_fault_add(NULL)", cc_host_fault_add(NULL, CC_FAULT_AT_BEGIN, CC_FAULT_CHANNEL, 1, 0),
              CC_E_INVALID_ARG);
    EXPECT_ST("cc_host_fault_reset(NULL)", cc_host_fault_reset(NULL, 1), CC_E_INVALID_ARG);
    EXPECT(cc_host_fault_count(NULL) == 0, "cc_host_fault_count(NULL)");
    for (int i = 0; i < MAXH; i++)
        if (g_hosts[i].used) {
            EXPECT_ST("cc_host_get_stats(host, NULL)", cc_host_get_stats(g_hosts[i].h, NULL),
                      CC_E_INVALID_ARG);
            break;
        }
    /* Every status of the header's list has its own name. */
#define CHECK_STATUS_(name, value, meaning)                                          \
    EXPECT(name == value && strcmp(cc_status_str(name), #name) == 0,                 \
           "cc_status_str(%d) is %s, CC_STATUS_LIST says " #name, value, cc_status_str(name));
    CC_STATUS_LIST(CHECK_STATUS_)
#undef CHECK_STATUS_
    EXPECT(strcmp(cc_status_str((cc_status)-99), "CC_E_UNKNOWN") == 0, "cc_status_str(-99)");
}

/* After every top-level call: the library agrees with the model. */
static void check_all(void)
{
    EXPECT(g_nframes == 0 && g_nctx == 0, "harness: frames left open");
    for (int h = 0; h < MAXH; h++) {
        mhost *H = &g_hosts[h];
        if (!H->used)
            continue;
        int s = cc_host_state(H->h);
        EXPECT(s == H->state, "host%d is in state %d, the model says %d (G12)", h, s, H->state);
        check_stats(h);
        uint64_t n = cc_host_fault_count(H->h);
        EXPECT(n == H->injected, "host%d's fault plan injected %llu faults, the model counts %llu "
               "(every end on a live handle visits CC_FAULT_AT_END once)",
               h, (unsigned long long)n, (unsigned long long)H->injected);
        EXPECT(cc_host_close_timeout(H->h) == H->close_timeout, "host%d close timeout", h);
    }
    for (int c = 0; c < MAXCH; c++) {
        mchan *C = &g_chans[c];
        if (C->used && C->c) {
            int s = cc_channel_state(C->c);
            EXPECT(s == C->state, "chan%d is in state %d, the model says %d (G9/G12)", c, s, C->state);
        }
    }
    for (int x = 0; x < MAXOP; x++) {
        mop *o = &g_ops[x];
        if (!o->used)
            continue;
        EXPECT(!o->defer_end && !o->reg_in_progress && (!o->end_begun || o->released),
               "harness: op%d left half-ended", x);
        EXPECT(!o->watched || !o->canceled || o->overtaken || o->notices == 1,
               "watched op%d was canceled; its binding was told %d times (once, unless an end "
               "overtook the run)", x, o->notices);
        EXPECT(o->cancel_runs <= 1, "op%d's cancel callback ran %d times (G1)", x, o->cancel_runs);
        if (o->released) {
            int want = o->armed && g_regs[o->reg].has_free;
            EXPECT(o->free_runs == want, "op%d ended; its free-state ran %d times, the contract "
                   "says %d (G4)", x, o->free_runs, want);
        } else {
            EXPECT(o->free_runs == 0, "op%d's free-state ran before it ended (G4)", x);
            EXPECT(!(o->armed && o->canceled) || o->cancel_runs == 1,
                   "op%d is canceled and registered, but its callback ran %d times (G1/G3)", x,
                   o->cancel_runs);
            check_reads(rec_tgt(x), "between calls");
        }
    }
    for (int i = 0; i < g_nregs; i++)
        if (g_regs[i].state == REG_FAILED)
            EXPECT(g_regs[i].cancel_runs == 0 && g_regs[i].free_runs == 0,
                   "a failed registration's callbacks ran (G2/G4)");
    unsigned n = g_nstale < MAXSTALE ? g_nstale : MAXSTALE;
    for (unsigned i = 0; i < n; i++)
        check_reads((tgt){T_STALE, -1, g_stale[i], g_stale_w[i]}, "on a stale handle");
}

/* Forget what has ended, so its records can be reused. */
static void sweep(void)
{
    for (int x = 0; x < MAXOP; x++)
        if (g_ops[x].used && g_ops[x].released)
            g_ops[x].used = false;
    for (int c = 0; c < MAXCH; c++)
        if (g_chans[c].used && !g_chans[c].c && g_chans[c].nops == 0)
            g_chans[c].used = false;
}

/* -------------------------------------------------------- the driver */

static void step(void)
{
    unsigned opc = u8() % 26;
    switch (opc) {
    case 0:
        do_create(u8());
        break;
    case 1:
        do_open(pick_host(u8()));
        break;
    case 2: {
        int h = pick_host(u8());
        do_close(h, u8(), true);
        break;
    }
    case 3:
        do_abort(pick_host(u8()));
        break;
    case 4:
        do_reset(pick_host(u8()));
        break;
    case 5:
        do_free(pick_host(u8()));
        break;
    case 6: {
        int h = pick_host(u8());
        do_set_timeout(h, u8());
        break;
    }
    case 7: {
        int h = pick_host(u8());
        do_channel_open(h, u8());
        break;
    }
    case 8:
        do_channel_fault(pick_chan(u8()));
        break;
    case 9:
        do_channel_close(pick_chan(u8()));
        break;
    case 10:
    case 20: {
        unsigned b = u8();
        do_begin(pick_chan(b), (b & 0xc0) == 0xc0, false);
        break;
    }
    case 11:
        do_begin(pick_chan(u8()), false, true);
        break;
    case 12:
    case 21: {
        tgt t = pick_op(u8());
        bool cancel_null = false;
        int r = decode_reg(&cancel_null);
        if (t.kind >= 0 && r >= 0)
            do_register(t, r, cancel_null);
        break;
    }
    case 13:
        do_channel_shutdown(pick_chan(u8()));
        break;
    case 14:
    case 22: {
        unsigned b = u8();
        tgt t = pick_op(b);
        if (t.kind >= 0)
            do_end(t, (b & 0x70) == 0x70);
        break;
    }
    case 24: {
        int h = pick_host(u8());
        do_set_binding(h, u8());
        break;
    }
    case 15: {
        tgt t = pick_op(u8());
        if (t.kind >= 0)
            check_reads(t, "between calls");
        break;
    }
    case 16: {
        int h = pick_host(u8());
        unsigned b1 = u8(), b2 = u8(), b3 = u8();
        do_fault_add(h, b1, b2, b3);
        break;
    }
    case 17: {
        int h = pick_host(u8());
        do_fault_reset(h, u8());
        break;
    }
    case 18: {
        int h = pick_host(u8());
        if (h >= 0)
            check_stats(h);
        break;
    }
    case 19:
        do_report(pick_host(u8()));
        break;
    case 23:
        null_battery();
        break;
    case 25: {
        unsigned b = u8();
        do_cancel_op(pick_op(u8()), b);
        break;
    }
    }
}

static void between_calls(void);

static void cleanup(void)
{
    g_cleanup = true;
    for (int round = 0; round < 100; round++) {
        int x;
        for (x = 0; x < MAXOP; x++)
            if (g_ops[x].used && g_ops[x].known && !g_ops[x].released && !g_ops[x].end_begun)
                break;
        if (x == MAXOP)
            break;
        do_end(rec_tgt(x), false);
        between_calls();
    }
    for (int h = 0; h < MAXH; h++)
        if (g_hosts[h].used) {
            EXPECT(host_inflight(h) == 0, "harness: op left in flight at cleanup");
            do_free(h);
        }
    g_cleanup = false;
}


/* The per-reason cancel counts: C callbacks run and watched CANCELED
 * notices; RUN_USER notices; latency-timed runs (those of a fan-out). */
static void count_from_model(void)
{
    for (int h = 0; h < MAXH; h++) {
        g_hosts[h].c_abort = g_swept_abort[h];
        g_hosts[h].c_fault = g_swept_fault[h];
        g_user[h] = g_swept_user[h];
        g_timed[h] = g_swept_timed[h];
    }
    for (int x = 0; x < MAXOP; x++) {
        mop *o = &g_ops[x];
        if (!o->used)
            continue;
        int n = o->watched ? o->notices : o->cancel_runs;
        if (o->reason == CC_HOST_ABORT)
            g_hosts[o->host].c_abort += (uint64_t)n;
        else
            g_hosts[o->host].c_fault += (uint64_t)n;
        g_user[o->host] += (uint64_t)o->user_runs;
        g_timed[o->host] += (uint64_t)o->timed;
    }
}

static void sweep_counts(void)
{
    for (int x = 0; x < MAXOP; x++) {
        mop *o = &g_ops[x];
        if (o->used && o->released) {
            int n = o->watched ? o->notices : o->cancel_runs;
            if (o->reason == CC_HOST_ABORT)
                g_swept_abort[o->host] += (uint64_t)n;
            else
                g_swept_fault[o->host] += (uint64_t)n;
            g_swept_user[o->host] += (uint64_t)o->user_runs;
            g_swept_timed[o->host] += (uint64_t)o->timed;
        }
    }
}

static void between_calls(void)
{
    count_from_model();
    check_all();
    sweep_counts();
    sweep();
}

static void parse_env(void)
{
    const char *s = getenv("CC_FUZZ_STRICT");
    if (s)
        for (int k = 0; k < NKB; k++)
            if (strstr(s, "all") || strstr(s, g_kb[k].name))
                g_kb[k].tolerate = false;
    const char *t = getenv("CC_FUZZ_TRACE");
    g_trace_live = t && *t && strcmp(t, "0") != 0;
}

/* Checks that the model's copy of the plan's probability draw still matches
 * the core's; if not, probability rules are made certain (p = 1). */
static void calibrate(void)
{
    cc_host *h = NULL;
    cc_channel *c = NULL;
    if (cc_host_create(&h) != CC_OK || cc_host_open(h) != CC_OK || cc_channel_open(h, &c) != CC_OK
        || cc_host_fault_reset(h, 12345) != CC_OK
        || cc_host_fault_add(h, CC_FAULT_AT_BEGIN, CC_FAULT_NOMEM, 0, 0.5) != CC_OK) {
        fprintf(stderr, "cancelcore fuzz: calibration set-up failed\n");
        abort();
    }
    for (uint64_t k = 1; k <= 64; k++) {
        cc_op *op = NULL;
        cc_status st = cc_op_begin(c, &op);
        if (st == CC_OK)
            (void)cc_op_end(op);
        if ((st == CC_E_NOMEM) != prob_fire(12345, 0, k, 0.5)) {
            g_prob_exact = false;
            fprintf(stderr, "cancelcore fuzz: the fault plan's probability draw changed; "
                            "probability rules are replaced by p = 1\n");
            break;
        }
    }
    cc_host_free(h);
}

static void reset_model(void)
{
    memset(g_hosts, 0, sizeof g_hosts);
    memset(g_chans, 0, sizeof g_chans);
    memset(g_ops, 0, sizeof g_ops);
    memset(g_swept_abort, 0, sizeof g_swept_abort);
    memset(g_swept_fault, 0, sizeof g_swept_fault);
    memset(g_swept_user, 0, sizeof g_swept_user);
    memset(g_swept_timed, 0, sizeof g_swept_timed);
    g_nstale = 0;
    g_nregs = 0;
    g_nframes = 0;
    g_nctx = 0;
    g_ntrace = 0;
    g_cleanup = false;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool inited;
    if (!inited) {
        inited = true;
        parse_env();
        calibrate();
    }
    reset_model();
    g_in = data;
    g_len = size;
    g_pos = 0;
    for (int n = 0; more() && n < MAXSTEPS; n++) {
        step();
        between_calls();
    }
    cleanup();
    for (int h = 0; h < MAXH; h++)
        EXPECT(!g_hosts[h].used, "harness: host left after cleanup");
    return 0;
}
