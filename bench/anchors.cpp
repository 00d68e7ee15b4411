// anchors.cpp - two C++20 models of the cancellation guarantees, built
// from std::stop_source / std::stop_callback, that cancelcore is measured
// against.  Both run the same C callbacks as cancelcore (bench_cancel_cb,
// bench_free_cb through stored function pointers) and keep the guarantees
// the benchmark checks: a cancel callback runs at most once per operation
// and only while the operation has not ended (G1, G5), a registration on an
// already stopped source runs the callback at once (G3, std::stop_callback
// does this), free-state runs exactly once at the end (G4), and abort runs
// every cancel callback before it returns (G7).
//
// Operation objects live in storage the caller owns (the handler's frame, or
// an array for the fan-out), as C++ code would keep a std::stop_callback;
// cancelcore keeps its own slots.  Where an anchor takes a shortcut a real
// library could not take, the comment says so: each shortcut makes the
// anchor faster, so the ratios printed are, if anything, unfair to
// cancelcore.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <stop_token>
#include <thread>
#include <vector>

#include "bench.h"

namespace {

// The callable a std::stop_callback holds in anchor (a): forwards to the C
// cancel callback.
struct CancelThunk {
    cc_cancel_fn fn;
    void *state;
    void operator()() const noexcept { fn(CC_HOST_ABORT, state); }
};

// Checks the counts of a stream of operations that were never canceled.
void check_cycle_counts(const bench_counts &c, uint64_t cycles, const char *shape)
{
    if (c.cancels != 0 || c.frees != cycles)
        bench_fail("%s: after %llu begin/register/end cycles with no abort, "
                   "cancel ran %u times (want 0) and free-state %u times (want %llu)",
                   shape, (unsigned long long)cycles, c.cancels, c.frees,
                   (unsigned long long)cycles);
}

// Checks the per-operation counts of a fan-out, right after the abort
// returned (ended == false) and after every operation ended (ended == true).
void check_fanout_counts(const std::vector<bench_counts> &counts, bool ended,
                         const char *shape)
{
    const uint32_t frees = ended ? 1 : 0;
    for (size_t i = 0; i < counts.size(); i++) {
        const bench_counts &c = counts[i];
        if (c.cancels != 1 || c.last_reason != CC_HOST_ABORT || c.frees != frees)
            bench_fail("%s: %s, operation %zu saw cancel %u times (want 1), "
                       "last reason %d (want 0), free-state %u times (want %u)",
                       shape, ended ? "after every end" : "after the abort returned",
                       i, c.cancels, (int)c.last_reason, c.frees, frees);
    }
}

// Runs body(thread_index) on two threads that start together, and returns
// the wall time from the first start to the last finish in nanoseconds.
template <class Body>
uint64_t run_two_threads(Body body)
{
    std::atomic<int> arrived{0};
    uint64_t t0[2] = {0, 0}, t1[2] = {0, 0};
    auto thread_main = [&](int i) {
        arrived.fetch_add(1);
        while (arrived.load() < 2) {
            // spin: a sleep would add wake-up skew between the threads
        }
        t0[i] = bench_now_ns();
        body(i);
        t1[i] = bench_now_ns();
    };
    std::thread a(thread_main, 0), b(thread_main, 1);
    a.join();
    b.join();
    return std::max(t1[0], t1[1]) - std::min(t0[0], t0[1]);
}

// ------------------------------------------------------------ anchor (a)
//
// One std::stop_source per operation.  The registry holds a pointer to each
// in-flight operation's source, in a slot vector with a free list, under one
// std::mutex: that mutex is what every begin and end of the host shares.

namespace a {

class Registry {
public:
    uint32_t insert(std::stop_source *src)
    {
        std::lock_guard<std::mutex> lock(mu_);
        if (!free_.empty()) {
            uint32_t slot = free_.back();
            free_.pop_back();
            slots_[slot] = src;
            return slot;
        }
        slots_.push_back(src);
        return (uint32_t)(slots_.size() - 1);
    }

    void remove(uint32_t slot)
    {
        std::lock_guard<std::mutex> lock(mu_);
        slots_[slot] = nullptr;
        free_.push_back(slot);
    }

    // Shortcut: runs the callbacks while holding the registry lock (G11 asks
    // a library not to); copying the sources out first would cost more.
    void abort()
    {
        std::lock_guard<std::mutex> lock(mu_);
        for (std::stop_source *src : slots_)
            if (src)
                src->request_stop();
    }

private:
    std::mutex mu_;
    std::vector<std::stop_source *> slots_;
    std::vector<uint32_t> free_;
};

struct Op {
    std::stop_source src{std::nostopstate};
    std::optional<std::stop_callback<CancelThunk>> cb;
    cc_free_state_fn free_fn = nullptr;
    void *state = nullptr;
    uint32_t slot = 0;
};

// begin + register: a fresh stop state (one allocation), one callback on it,
// and the registry insert.  The callback's reason is fixed: abort is the
// only trigger this model implements (a channel fault would walk the
// registry the same way for one channel's operations).
void begin_register(Registry &reg, Op &op, cc_cancel_fn cancel,
                    cc_free_state_fn free_fn, void *state)
{
    op.src = std::stop_source();
    op.free_fn = free_fn;
    op.state = state;
    op.cb.emplace(op.src.get_token(), CancelThunk{cancel, state});
    op.slot = reg.insert(&op.src);
}

// end: once the callback is destroyed no cancel can start, and a running one
// has returned (~stop_callback waits for it); then the registry forgets the
// source, the stop state is released and free-state runs (G4, G5).
void end(Registry &reg, Op &op)
{
    op.cb.reset();
    reg.remove(op.slot);
    op.src = std::stop_source(std::nostopstate);
    if (op.free_fn)
        op.free_fn(op.state);
}

} // namespace a

// ------------------------------------------------------------ anchor (b)
//
// One std::stop_source for the host and one per channel; each operation
// hangs a std::stop_callback on both.  An atomic flag per operation keeps
// the cancel callback to one run when both sources fire (G1) and stops any
// cancel from starting once the operation's end has begun (G5).

namespace b {

struct Host {
    std::stop_source src;
};

struct Channel {
    std::stop_token host_tok;
    std::stop_source src;
    std::stop_token tok;
    explicit Channel(const Host &host) : host_tok(host.src.get_token()), tok(src.get_token()) {}
};

struct Op {
    struct Thunk {
        Op *op;
        cc_reason reason;
        void operator()() const noexcept { op->fire(reason); }
    };

    std::atomic<bool> done{false};  // a cancel ran, or the end began
    cc_cancel_fn cancel = nullptr;
    cc_free_state_fn free_fn = nullptr;
    void *state = nullptr;
    std::optional<std::stop_callback<Thunk>> on_host, on_channel;

    void fire(cc_reason reason) noexcept
    {
        if (!done.exchange(true, std::memory_order_acq_rel))
            cancel(reason, state);
    }
};

void begin_register(const Channel &ch, Op &op, cc_cancel_fn cancel,
                    cc_free_state_fn free_fn, void *state)
{
    op.done.store(false, std::memory_order_relaxed);
    op.cancel = cancel;
    op.free_fn = free_fn;
    op.state = state;
    op.on_host.emplace(ch.host_tok, Op::Thunk{&op, CC_HOST_ABORT});
    op.on_channel.emplace(ch.tok, Op::Thunk{&op, CC_CHANNEL_FAULTED});
}

void end(Op &op)
{
    op.done.exchange(true, std::memory_order_acq_rel);  // no cancel starts now
    op.on_host.reset();     // each waits for its callback if it is running
    op.on_channel.reset();
    if (op.free_fn)
        op.free_fn(op.state);
}

} // namespace b

} // namespace

// ------------------------------------------------------------ the shapes

extern "C" {

double anchor_a_is_canceled(uint64_t checks)
{
    a::Registry reg;
    a::Op op;
    bench_counts counts{0, 0, CC_NOT_CANCELED};
    a::begin_register(reg, op, bench_cancel_cb, bench_free_cb, &counts);
    const std::stop_token tok = op.src.get_token();  // what the handler checks

    bool seen = false;
    uint64_t t0 = bench_now_ns();
    for (uint64_t i = 0; i < checks; i++) {
        bool v = tok.stop_requested();
        BENCH_USE(v);
        seen |= v;
    }
    uint64_t t1 = bench_now_ns();

    if (seen)
        bench_fail("anchor (a): stop_requested() true on a live, uncanceled operation");
    a::end(reg, op);
    return (double)(t1 - t0) / (double)checks;
}

double anchor_a_cycle1(uint64_t cycles)
{
    a::Registry reg;
    a::Op op;
    bench_counts counts{0, 0, CC_NOT_CANCELED};

    uint64_t t0 = bench_now_ns();
    for (uint64_t i = 0; i < cycles; i++) {
        a::begin_register(reg, op, bench_cancel_cb, bench_free_cb, &counts);
        a::end(reg, op);
    }
    uint64_t t1 = bench_now_ns();

    check_cycle_counts(counts, cycles, "anchor (a) cycle (1 thread)");
    return (double)(t1 - t0) / (double)cycles;
}

double anchor_a_cycle2(uint64_t cycles_per_thread)
{
    a::Registry reg;  // shared: both threads take its mutex
    a::Op ops[2];
    bench_counts counts[2] = {{0, 0, CC_NOT_CANCELED}, {0, 0, CC_NOT_CANCELED}};

    uint64_t wall = run_two_threads([&](int t) {
        for (uint64_t i = 0; i < cycles_per_thread; i++) {
            a::begin_register(reg, ops[t], bench_cancel_cb, bench_free_cb, &counts[t]);
            a::end(reg, ops[t]);
        }
    });

    for (const bench_counts &c : counts)
        check_cycle_counts(c, cycles_per_thread, "anchor (a) cycle (2 threads)");
    return (double)wall / (double)cycles_per_thread;
}

double anchor_a_fanout(uint32_t n)
{
    a::Registry reg;
    std::unique_ptr<a::Op[]> ops(new a::Op[n]);
    std::vector<bench_counts> counts(n, bench_counts{0, 0, CC_NOT_CANCELED});
    for (uint32_t i = 0; i < n; i++)
        a::begin_register(reg, ops[i], bench_cancel_cb, bench_free_cb, &counts[i]);

    uint64_t t0 = bench_now_ns();
    reg.abort();
    uint64_t t1 = bench_now_ns();

    check_fanout_counts(counts, false, "anchor (a) fan-out");
    for (uint32_t i = 0; i < n; i++)
        a::end(reg, ops[i]);
    check_fanout_counts(counts, true, "anchor (a) fan-out");
    return (double)(t1 - t0) / (double)n;
}

double anchor_b_is_canceled(uint64_t checks)
{
    b::Host host;
    b::Channel ch(host);
    b::Op op;
    bench_counts counts{0, 0, CC_NOT_CANCELED};
    b::begin_register(ch, op, bench_cancel_cb, bench_free_cb, &counts);

    // An operation of this model is canceled when its host or its channel
    // is stopped: two flags to read (both, while neither is set).
    bool seen = false;
    uint64_t t0 = bench_now_ns();
    for (uint64_t i = 0; i < checks; i++) {
        bool v = ch.host_tok.stop_requested() || ch.tok.stop_requested();
        BENCH_USE(v);
        seen |= v;
    }
    uint64_t t1 = bench_now_ns();

    if (seen)
        bench_fail("anchor (b): stop_requested() true on a live, uncanceled operation");
    b::end(op);
    return (double)(t1 - t0) / (double)checks;
}

double anchor_b_cycle1(uint64_t cycles)
{
    b::Host host;
    b::Channel ch(host);
    b::Op op;
    bench_counts counts{0, 0, CC_NOT_CANCELED};

    uint64_t t0 = bench_now_ns();
    for (uint64_t i = 0; i < cycles; i++) {
        b::begin_register(ch, op, bench_cancel_cb, bench_free_cb, &counts);
        b::end(op);
    }
    uint64_t t1 = bench_now_ns();

    check_cycle_counts(counts, cycles, "anchor (b) cycle (1 thread)");
    return (double)(t1 - t0) / (double)cycles;
}

double anchor_b_cycle2(uint64_t cycles_per_thread)
{
    b::Host host;  // shared: every registration links into its stop state
    b::Channel ch0(host), ch1(host);
    const b::Channel *ch[2] = {&ch0, &ch1};
    b::Op ops[2];
    bench_counts counts[2] = {{0, 0, CC_NOT_CANCELED}, {0, 0, CC_NOT_CANCELED}};

    uint64_t wall = run_two_threads([&](int t) {
        for (uint64_t i = 0; i < cycles_per_thread; i++) {
            b::begin_register(*ch[t], ops[t], bench_cancel_cb, bench_free_cb, &counts[t]);
            b::end(ops[t]);
        }
    });

    for (const bench_counts &c : counts)
        check_cycle_counts(c, cycles_per_thread, "anchor (b) cycle (2 threads)");
    return (double)wall / (double)cycles_per_thread;
}

double anchor_b_fanout(uint32_t n)
{
    b::Host host;
    std::vector<std::unique_ptr<b::Channel>> ch;
    for (int i = 0; i < BENCH_FANOUT_CHANNELS; i++)
        ch.push_back(std::make_unique<b::Channel>(host));
    std::unique_ptr<b::Op[]> ops(new b::Op[n]);
    std::vector<bench_counts> counts(n, bench_counts{0, 0, CC_NOT_CANCELED});
    for (uint32_t i = 0; i < n; i++)
        b::begin_register(*ch[i % BENCH_FANOUT_CHANNELS], ops[i], bench_cancel_cb,
                          bench_free_cb, &counts[i]);

    uint64_t t0 = bench_now_ns();
    host.src.request_stop();
    uint64_t t1 = bench_now_ns();

    check_fanout_counts(counts, false, "anchor (b) fan-out");
    for (uint32_t i = 0; i < n; i++)
        b::end(ops[i]);
    check_fanout_counts(counts, true, "anchor (b) fan-out");
    return (double)(t1 - t0) / (double)n;
}

#define BENCH_STR2(x) #x
#define BENCH_STR(x) BENCH_STR2(x)

const char *anchor_cxx_compiler(void)
{
#if defined(__clang__)
    return "clang++ " __clang_version__;
#elif defined(__GNUC__)
    return "g++ " __VERSION__;
#else
    return "unknown C++ compiler";
#endif
}

const char *anchor_cxx_library(void)
{
#if defined(_GLIBCXX_RELEASE)
    return "libstdc++ " BENCH_STR(_GLIBCXX_RELEASE) " (" BENCH_STR(__GLIBCXX__) ")";
#elif defined(_LIBCPP_VERSION)
    return "libc++ " BENCH_STR(_LIBCPP_VERSION);
#else
    return "unknown C++ library";
#endif
}

} // extern "C"
