#!/usr/bin/env python3
"""bench_python.py: cancelcore's Python layer against anchors measured in the
same run (bench/py_anchors.py):

  (a) a plain-Python lock-and-dict registry with the same guarantees;
  (b) asyncio primitives (a future + done callbacks; cancelling futures and
      tasks).

    python bench/bench_python.py            full run (about 1-2 minutes)
    python bench/bench_python.py --quick    a few seconds: a smoke test, rough figures
    python bench/bench_python.py --profile  also cProfile the begin+register+end cycle
    python bench/bench_python.py --abi-modules build/pybench
                                            also shape 6: the limited API against the full one

Shape 6 needs the two stand-alone builds of the cffi module that CMake makes
with -DCC_BUILD_PY_ABI_BENCH=ON (`make bench-py` does it): the same generated
source, compiled against the limited API of 3.9 (what the cp39-abi3 wheel
ships) and against the full API, timed back to back on the raw cffi calls
(cc_op_begin + cc_op_end; cc_op_is_canceled), no Python layer in between.

Every measured run checks its counts (each cancel callback ran once where it
had to and never elsewhere, each free-state exactly once, the host's stats
agree).  Exit status: 0 when every count was right -- speed is reported,
never asserted; 1 when a model broke a guarantee; 2 on a bad command line.

Method: each figure is the MEDIAN over the repetitions (the minimum is shown
in the spread table) of one timed loop over n operations, timed with
time.perf_counter_ns, with the garbage collector off during the loop (as
timeit does).  Within a repetition the models run back to back in an order
that rotates from one repetition to the next, so a noisy stretch of the
machine falls on all of them alike.  Every model gets one untimed warm-up run.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import gc
import glob
import importlib.util
import io
import os
import platform
import pstats
import statistics
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, Callable, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# support/: the measurement helpers shared with the tests and the examples.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "support"))

import cffi  # noqa: E402

import cancelcore  # noqa: E402
from cancelcore import CancelReason, ServiceHost  # noqa: E402
from measure import cpu_model  # noqa: E402
from py_anchors import HOST_ABORT, Registry  # noqa: E402

_now = time.perf_counter_ns


class BenchFailure(Exception):
    """A model broke a guarantee: wrong counts.  Never raised for speed."""


def check(cond: bool, what: str) -> None:
    if not cond:
        raise BenchFailure(what)


def check_hits(hits: list[int], expected: int, what: str) -> None:
    """Every slot of `hits` holds `expected` (list.count runs in C)."""
    good = hits.count(expected)
    if good != len(hits):
        bad = next(i for i, h in enumerate(hits) if h != expected)
        raise BenchFailure(
            f"{what}: {len(hits) - good} of {len(hits)} operations wrong "
            f"(operation {bad}: {hits[bad]}, expected {expected})"
        )


def make_callbacks(
    cancel_hits: list[int], free_hits: list[int]
) -> tuple[Callable[[Any, int], None], Callable[[int], None]]:
    """The trivial callbacks every model runs: count per operation, so the
    check sees 'each once', not just a total.  Closures (one cell load)."""

    def on_cancel(reason: Any, i: int) -> None:
        cancel_hits[i] += 1

    def on_free(i: int) -> None:
        free_hits[i] += 1

    return on_cancel, on_free


def check_stats(host: ServiceHost, what: str, **expected: int) -> None:
    st = host.stats
    for key, value in expected.items():
        check(st[key] == value, f"{what}: host.stats[{key!r}] = {st[key]}, expected {value}")


class Timer:
    """The timed region: GC off (as timeit), perf_counter_ns."""

    __slots__ = ("t0", "ns", "gc_was")

    def __enter__(self) -> Timer:
        self.gc_was = gc.isenabled()
        gc.disable()
        self.t0 = _now()
        return self

    def __exit__(self, *exc: object) -> None:
        self.ns = _now() - self.t0
        if self.gc_was:
            gc.enable()


# ====================================================================
# Shape 1: begin + register + end on one thread
# ====================================================================


def cc_cycle(n: int, deadline: bool = False) -> float:
    """begin + register + end; with ``deadline``, each operation has one an
    hour away: what filing it in the host's timer heap adds (the heap is
    compacted as operations end)."""
    host = ServiceHost()
    host.open()
    ch = host.accept_channel()
    cancel_hits, free_hits = [0] * n, [0] * n
    on_cancel, on_free = make_callbacks(cancel_hits, free_hits)
    begin = functools.partial(ch.begin_operation, deadline=time.monotonic() + 3600.0) \
        if deadline else ch.begin_operation
    with Timer() as t:
        for i in range(n):
            ctx = begin()
            ctx.register_for_cancel(on_cancel, on_free, i)
            ctx.end()
    check_hits(free_hits, 1, "cancelcore cycle: free-state")
    check_hits(cancel_hits, 0, "cancelcore cycle: cancel")
    check_stats(host, "cancelcore cycle", ops_begun=n, ops_ended=n, ops_in_flight=0,
                free_states_run=n, cancel_callbacks_run=0, callback_errors=0, deadlines_expired=0)
    host.close()
    return t.ns / n


def cc_cycle_deadline(n: int) -> float:
    return cc_cycle(n, deadline=True)


def loop_timer_cycle(n: int) -> float:
    """The event loop's own timers: loop.call_at + TimerHandle.cancel per
    operation (what an asyncio-only library would pay for a deadline)."""
    loop = asyncio.new_event_loop()
    hits = [0]

    def expire() -> None:
        hits[0] += 1

    call_at = loop.call_at
    far = loop.time() + 3600.0
    with Timer() as t:
        for _ in range(n):
            call_at(far, expire).cancel()
    loop.close()
    check(hits[0] == 0, "loop timer cycle: a timer fired")
    return t.ns / n


def reg_cycle(n: int) -> float:
    reg = Registry()
    ch = reg.channel()
    cancel_hits, free_hits = [0] * n, [0] * n
    on_cancel, on_free = make_callbacks(cancel_hits, free_hits)
    begin, register, end = ch.begin, reg.register, reg.end
    with Timer() as t:
        for i in range(n):
            op = begin()
            register(op, on_cancel, on_free, i)
            end(op)
    check_hits(free_hits, 1, "registry cycle: free-state")
    check_hits(cancel_hits, 0, "registry cycle: cancel")
    check(not ch.ops and reg.callback_errors == 0, "registry cycle: operations left")
    return t.ns / n


def asyncio_cycle(n: int) -> float:
    """A future + add_done_callback + remove_done_callback per operation."""
    loop = asyncio.new_event_loop()
    try:
        cancel_hits = [0] * n
        on_cancel, _ = make_callbacks(cancel_hits, [])
        create = loop.create_future
        removed = 0
        with Timer() as t:
            for _ in range(n):
                fut = create()
                fut.add_done_callback(on_cancel)
                removed += fut.remove_done_callback(on_cancel)
        check(removed == n, f"asyncio cycle: removed {removed} callbacks of {n}")
        check_hits(cancel_hits, 0, "asyncio cycle: callback ran")
    finally:
        loop.close()
    return t.ns / n


# ====================================================================
# Shape 2: reading `canceled`
# ====================================================================

READS = 20  # reads per loop iteration (amortizes the loop)


class Plain:
    __slots__ = ("canceled",)

    def __init__(self) -> None:
        self.canceled = False


def _read_loop(obj: Any, n: int) -> int:
    with Timer() as t:
        for _ in repeat(None, n):
            obj.canceled; obj.canceled; obj.canceled; obj.canceled; obj.canceled  # noqa: B018,E702
            obj.canceled; obj.canceled; obj.canceled; obj.canceled; obj.canceled  # noqa: B018,E702
            obj.canceled; obj.canceled; obj.canceled; obj.canceled; obj.canceled  # noqa: B018,E702
            obj.canceled; obj.canceled; obj.canceled; obj.canceled; obj.canceled  # noqa: B018,E702
    return t.ns


def cc_read(n: int) -> float:
    host = ServiceHost()
    host.open()
    ctx = host.accept_channel().begin_operation()
    ns = _read_loop(ctx, n)
    check(ctx.canceled is False, "cancelcore read: canceled before abort")
    host.abort()
    check(ctx.canceled is True and ctx.cancel_reason is CancelReason.HOST_ABORT,
          "cancelcore read: not canceled after abort")
    ctx.end()
    host.close()
    return ns / (n * READS)


def plain_read(n: int) -> float:
    return _read_loop(Plain(), n) / (n * READS)


def cffi_read(n: int) -> float:
    """Informational: the C hot path (cc_op_is_canceled) called through cffi."""
    from cancelcore._cancelcore import ffi, lib

    host = ServiceHost()
    host.open()
    ctx = host.accept_channel().begin_operation()
    is_canceled, op = lib.cc_op_is_canceled, ffi.cast("cc_op *", ctx._h)
    with Timer() as t:
        for _ in repeat(None, n):
            is_canceled(op); is_canceled(op); is_canceled(op); is_canceled(op)  # noqa: E702
            is_canceled(op); is_canceled(op); is_canceled(op); is_canceled(op)  # noqa: E702
            is_canceled(op); is_canceled(op); is_canceled(op); is_canceled(op)  # noqa: E702
            is_canceled(op); is_canceled(op); is_canceled(op); is_canceled(op)  # noqa: E702
            is_canceled(op); is_canceled(op); is_canceled(op); is_canceled(op)  # noqa: E702
    check(is_canceled(op) == 0, "cffi read")
    ctx.end()
    host.close()
    return t.ns / (n * READS)


def asyncio_read(n: int) -> float:
    """Informational: Future.cancelled() (a method call)."""
    loop = asyncio.new_event_loop()
    fut = loop.create_future()
    c = fut.cancelled
    with Timer() as t:
        for _ in repeat(None, n):
            c(); c(); c(); c(); c(); c(); c(); c(); c(); c()  # noqa: E702
            c(); c(); c(); c(); c(); c(); c(); c(); c(); c()  # noqa: E702
    check(c() is False, "asyncio read")
    loop.close()
    return t.ns / (n * READS)


# ====================================================================
# Shape 3: abort fan-out
# ====================================================================

FANOUT_CHANNELS = 8


def cc_fanout(n: int) -> float:
    host = ServiceHost()
    host.open()
    chans = [host.accept_channel() for _ in range(FANOUT_CHANNELS)]
    cancel_hits, free_hits = [0] * n, [0] * n
    on_cancel, on_free = make_callbacks(cancel_hits, free_hits)
    ctxs = []
    for i in range(n):
        ctx = chans[i % FANOUT_CHANNELS].begin_operation()
        ctx.register_for_cancel(on_cancel, on_free, i)
        ctxs.append(ctx)
    gc.collect()
    with Timer() as t:
        host.abort()
    check_hits(cancel_hits, 1, "cancelcore fan-out: cancel")
    check_hits(free_hits, 0, "cancelcore fan-out: free-state before end")
    check(all(c.cancel_reason is CancelReason.HOST_ABORT for c in ctxs),
          "cancelcore fan-out: reason")
    for ctx in ctxs:
        ctx.end()
    check_hits(free_hits, 1, "cancelcore fan-out: free-state")
    check_hits(cancel_hits, 1, "cancelcore fan-out: cancel after end")
    check_stats(host, "cancelcore fan-out", ops_begun=n, ops_ended=n, ops_in_flight=0,
                ops_canceled=n, cancels_host_abort=n, cancels_channel_faulted=0,
                cancel_callbacks_run=n, free_states_run=n, callback_errors=0)
    host.close()
    return t.ns / n


def reg_fanout(n: int) -> float:
    reg = Registry()
    chans = [reg.channel() for _ in range(FANOUT_CHANNELS)]
    cancel_hits, free_hits = [0] * n, [0] * n
    on_cancel, on_free = make_callbacks(cancel_hits, free_hits)
    ops = []
    for i in range(n):
        op = chans[i % FANOUT_CHANNELS].begin()
        reg.register(op, on_cancel, on_free, i)
        ops.append(op)
    gc.collect()
    with Timer() as t:
        reg.abort()
    check_hits(cancel_hits, 1, "registry fan-out: cancel")
    check_hits(free_hits, 0, "registry fan-out: free-state before end")
    check(all(op.reason == HOST_ABORT for op in ops), "registry fan-out: reason")
    for op in ops:
        reg.end(op)
    check_hits(free_hits, 1, "registry fan-out: free-state")
    check(reg.callback_errors == 0, "registry fan-out: callback errors")
    return t.ns / n


def asyncio_fanout_futures(n: int) -> float:
    """N futures with a done callback each: cancel them all and run the loop
    until every callback ran (asyncio schedules them with call_soon)."""
    loop = asyncio.new_event_loop()
    try:
        hits = [0] * n

        def on_done(i: int, fut: asyncio.Future[Any]) -> None:
            hits[i] += 1

        futs = []
        for i in range(n):
            fut = loop.create_future()
            fut.add_done_callback(functools.partial(on_done, i))
            futs.append(fut)
        gc.collect()
        with Timer() as t:
            for fut in futs:
                fut.cancel()
            loop.call_soon(loop.stop)
            loop.run_forever()
        check_hits(hits, 1, "asyncio futures fan-out")
    finally:
        loop.close()
    return t.ns / n


def asyncio_fanout_tasks(n: int) -> float:
    """N tasks suspended on a future each: cancel them all and run the loop
    until every task has seen CancelledError and finished."""
    loop = asyncio.new_event_loop()
    try:
        hits = [0] * n

        async def worker(i: int) -> None:
            try:
                await loop.create_future()
            except asyncio.CancelledError:
                hits[i] += 1
                raise

        tasks = [loop.create_task(worker(i)) for i in range(n)]
        loop.call_soon(loop.stop)
        loop.run_forever()  # every task now waits on its future
        gc.collect()
        with Timer() as t:
            for task in tasks:
                task.cancel()
            while True:
                loop.call_soon(loop.stop)
                loop.run_forever()
                if tasks[-1].done():
                    break
        check(all(task.cancelled() for task in tasks), "asyncio tasks fan-out: not all cancelled")
        check_hits(hits, 1, "asyncio tasks fan-out")
    finally:
        loop.close()
    return t.ns / n


# ====================================================================
# Shape 4: the cycle on 2 threads at once (aggregate wall time per op)
# ====================================================================

THREADS = 2


def _two_threads(body: Callable[[int, int], None], n: int) -> int:
    """Runs body(thread_index, n) on THREADS threads started together;
    returns the wall time in ns."""
    barrier = threading.Barrier(THREADS + 1)
    errors: list[BaseException] = []

    def run(k: int) -> None:
        barrier.wait()
        try:
            body(k, n)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(THREADS)]
    for th in threads:
        th.start()
    with Timer() as t:
        barrier.wait()
        for th in threads:
            th.join()
    if errors:
        raise errors[0]
    return t.ns


def cc_cycle2(n: int) -> float:
    host = ServiceHost()
    host.open()
    chans = [host.accept_channel() for _ in range(THREADS)]
    hits = [([0] * n, [0] * n) for _ in range(THREADS)]

    def body(k: int, n: int) -> None:
        on_cancel, on_free = make_callbacks(*hits[k])
        begin = chans[k].begin_operation
        for i in range(n):
            ctx = begin()
            ctx.register_for_cancel(on_cancel, on_free, i)
            ctx.end()

    ns = _two_threads(body, n)
    for c, f in hits:
        check_hits(f, 1, "cancelcore 2 threads: free-state")
        check_hits(c, 0, "cancelcore 2 threads: cancel")
    total = THREADS * n
    check_stats(host, "cancelcore 2 threads", ops_begun=total, ops_ended=total,
                free_states_run=total, cancel_callbacks_run=0)
    host.close()
    return ns / total


def reg_cycle2(n: int) -> float:
    reg = Registry()
    chans = [reg.channel() for _ in range(THREADS)]
    hits = [([0] * n, [0] * n) for _ in range(THREADS)]

    def body(k: int, n: int) -> None:
        on_cancel, on_free = make_callbacks(*hits[k])
        begin, register, end = chans[k].begin, reg.register, reg.end
        for i in range(n):
            op = begin()
            register(op, on_cancel, on_free, i)
            end(op)

    ns = _two_threads(body, n)
    for c, f in hits:
        check_hits(f, 1, "registry 2 threads: free-state")
        check_hits(c, 0, "registry 2 threads: cancel")
    return ns / (THREADS * n)


# ====================================================================
# Shape 5: dispatch overhead
# ====================================================================


def cc_dispatch_seq(n: int) -> float:
    """host.dispatch(ch, fn).result(), one at a time (round-trip latency)."""
    with ServiceHost() as host:
        ch = host.accept_channel()
        calls = [0]

        def fn(ctx: Any) -> int:
            calls[0] += 1
            return 7

        dispatch = host.dispatch
        dispatch(ch, fn).result()  # start the pool's first worker untimed
        total = 0
        with Timer() as t:
            for _ in range(n):
                total += dispatch(ch, fn).result()
        check(calls[0] == n + 1 and total == 7 * n, "cancelcore dispatch: calls")
        check_stats(host, "cancelcore dispatch", ops_begun=n + 1, ops_ended=n + 1, ops_in_flight=0)
    return t.ns / n


def executor_seq(n: int) -> float:
    executor = ThreadPoolExecutor()
    calls = [0]

    def fn(arg: Any) -> int:
        calls[0] += 1
        return 7

    submit = executor.submit
    submit(fn, None).result()
    total = 0
    with Timer() as t:
        for _ in range(n):
            total += submit(fn, None).result()
    executor.shutdown()
    check(calls[0] == n + 1 and total == 7 * n, "executor: calls")
    return t.ns / n


def _burst_wait(futures: list[Future[int]]) -> int:
    return sum(f.result() for f in futures)


def cc_dispatch_burst(n: int) -> float:
    """n dispatches submitted at once, then all results collected."""
    with ServiceHost() as host:
        ch = host.accept_channel()

        def fn(ctx: Any) -> int:
            return 7

        dispatch = host.dispatch
        _burst_wait([dispatch(ch, fn) for _ in range(8)])  # warm the pool
        with Timer() as t:
            total = _burst_wait([dispatch(ch, fn) for _ in range(n)])
        check(total == 7 * n, "cancelcore dispatch burst: results")
        check_stats(host, "cancelcore dispatch burst", ops_begun=n + 8, ops_ended=n + 8, ops_in_flight=0)
    return t.ns / n


def executor_burst(n: int) -> float:
    executor = ThreadPoolExecutor()

    def fn(arg: Any) -> int:
        return 7

    submit = executor.submit
    _burst_wait([submit(fn, None) for _ in range(8)])
    with Timer() as t:
        total = _burst_wait([submit(fn, None) for _ in range(n)])
    executor.shutdown()
    check(total == 7 * n, "executor burst: results")
    return t.ns / n


def cc_dispatch_async(n: int) -> float:
    """n async dispatches created in a running loop, then gathered."""

    async def fn(ctx: Any) -> int:
        return 7

    async def main() -> float:
        with ServiceHost() as host:
            ch = host.accept_channel()
            dispatch = host.dispatch
            with Timer() as t:
                results = await asyncio.gather(*[dispatch(ch, fn) for _ in range(n)])
            check(sum(results) == 7 * n, "cancelcore async dispatch: results")
            check_stats(host, "cancelcore async dispatch", ops_begun=n, ops_ended=n, ops_in_flight=0)
        return t.ns / n

    return asyncio.run(main())


def create_task_async(n: int) -> float:
    async def fn(arg: Any) -> int:
        return 7

    async def main() -> float:
        create_task = asyncio.get_running_loop().create_task
        with Timer() as t:
            results = await asyncio.gather(*[create_task(fn(None)) for _ in range(n)])
        check(sum(results) == 7 * n, "create_task: results")
        return t.ns / n

    return asyncio.run(main())


# ====================================================================
# Shape 6: the limited API (abi3) against the full API, raw cffi calls
# ====================================================================

ABI_MODULES = {"abi3": "_cc_bench_limited", "full": "_cc_bench_full"}


def load_abi_module(directory: str, name: str) -> Any:
    """One of the stand-alone bench builds of the cffi module (CMake's
    CC_BUILD_PY_ABI_BENCH), loaded from its file."""
    paths = sorted(glob.glob(os.path.join(directory, f"{name}.*so")))
    if not paths:
        raise FileNotFoundError(f"no {name}.*so in {directory}: build it with `make bench-py` "
                                "(cmake -DCC_BUILD_PY_ABI_BENCH=ON)")
    spec = importlib.util.spec_from_file_location(name, paths[0])
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {paths[0]}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _raw_host(mod: Any) -> tuple[Any, Any]:
    ffi, lib = mod.ffi, mod.lib
    hp, cp = ffi.new("cc_host **"), ffi.new("cc_channel **")
    check(lib.cc_host_create(hp) == lib.CC_OK, "raw: cc_host_create")
    check(lib.cc_host_open(hp[0]) == lib.CC_OK, "raw: cc_host_open")
    check(lib.cc_channel_open(hp[0], cp) == lib.CC_OK, "raw: cc_channel_open")
    return hp[0], cp[0]


def _raw_done(mod: Any, host: Any, channel: Any, begun: int) -> None:
    """The host's own counts: every begin succeeded and was ended."""
    ffi, lib = mod.ffi, mod.lib
    stats = ffi.new("cc_stats *")
    check(lib.cc_host_get_stats(host, stats) == lib.CC_OK, "raw: cc_host_get_stats")
    check(stats.ops_begun == begun and stats.ops_ended == begun and stats.ops_in_flight == 0
          and stats.ops_canceled == 0,
          f"raw: {stats.ops_begun} begun, {stats.ops_ended} ended, {stats.ops_in_flight} in "
          f"flight, {stats.ops_canceled} canceled; wanted {begun}, {begun}, 0, 0")
    check(lib.cc_channel_close(channel) == lib.CC_OK, "raw: cc_channel_close")
    check(lib.cc_host_close(host, -1) == lib.CC_OK, "raw: cc_host_close")
    lib.cc_host_free(host)


def raw_cycle(mod: Any) -> Callable[[int], float]:
    """cc_op_begin + cc_op_end through the module's lib: two cffi calls."""
    def run(n: int) -> float:
        host, channel = _raw_host(mod)
        opp = mod.ffi.new("cc_op **")
        begin, end = mod.lib.cc_op_begin, mod.lib.cc_op_end
        with Timer() as t:
            for _ in repeat(None, n):
                begin(channel, opp)
                end(opp[0])
        _raw_done(mod, host, channel, n)
        return t.ns / n
    return run


def raw_read(mod: Any) -> Callable[[int], float]:
    """cc_op_is_canceled through the module's lib, 20 calls per iteration."""
    def run(n: int) -> float:
        host, channel = _raw_host(mod)
        opp = mod.ffi.new("cc_op **")
        check(mod.lib.cc_op_begin(channel, opp) == mod.lib.CC_OK, "raw: cc_op_begin")
        is_canceled, op = mod.lib.cc_op_is_canceled, opp[0]
        with Timer() as t:
            for _ in repeat(None, n):
                is_canceled(op); is_canceled(op); is_canceled(op); is_canceled(op)  # noqa: E702
                is_canceled(op); is_canceled(op); is_canceled(op); is_canceled(op)  # noqa: E702
                is_canceled(op); is_canceled(op); is_canceled(op); is_canceled(op)  # noqa: E702
                is_canceled(op); is_canceled(op); is_canceled(op); is_canceled(op)  # noqa: E702
                is_canceled(op); is_canceled(op); is_canceled(op); is_canceled(op)  # noqa: E702
        check(is_canceled(op) == 0, "raw read: canceled")
        check(mod.lib.cc_op_end(op) == mod.lib.CC_OK, "raw: cc_op_end")
        _raw_done(mod, host, channel, 1)
        return t.ns / (n * READS)
    return run


def abi_shapes(directory: str, quick: bool) -> list[Shape]:
    mods = {key: load_abi_module(directory, name) for key, name in ABI_MODULES.items()}
    reps = 3 if quick else 11
    return [
        Shape("raw cffi begin + end, limited vs full API", 20_000 if quick else 300_000, reps,
              {"abi3": raw_cycle(mods["abi3"]), "full": raw_cycle(mods["full"])},
              [Row("6 cffi begin+end, abi3", "ns/op", "abi3", "full")]),
        Shape("raw cffi is_canceled, limited vs full API", 50_000 if quick else 500_000, reps,
              {"abi3": raw_read(mods["abi3"]), "full": raw_read(mods["full"])},
              [Row("6 cffi is_canceled, abi3", "ns/read", "abi3", "full")]),
    ]


# ====================================================================
# Running the shapes
# ====================================================================


@dataclass
class Row:
    shape: str
    unit: str
    cc: str  # model keys into Shape.models
    anchor: str
    target: Optional[float] = None  # ratio cc/anchor to meet; None: informational


@dataclass
class Shape:
    name: str
    n: int
    reps: int
    models: dict[str, Callable[[int], float]]
    rows: list[Row]
    samples: dict[str, list[float]] = field(default_factory=dict)

    def median(self, key: str) -> float:
        return statistics.median(self.samples[key])


def run_shape(shape: Shape, progress: bool) -> None:
    keys = list(shape.models)
    if progress:
        print(f"measuring: {shape.name} (n={shape.n:,}, {shape.reps} reps) ...", flush=True)
    for key in keys:  # warm-up, untimed (also checks the counts once)
        shape.models[key](max(shape.n // 10, 1000))
    shape.samples = {key: [] for key in keys}
    for r in range(shape.reps):
        for k in range(len(keys)):
            key = keys[(r + k) % len(keys)]
            gc.collect()
            shape.samples[key].append(shape.models[key](shape.n))


def build_shapes(quick: bool) -> list[Shape]:
    reps = 3 if quick else 9
    fan_reps = 3 if quick else 7
    cycles = 20_000 if quick else 200_000
    reads = 50_000 if quick else 500_000
    fan_n = 20_000 if quick else 100_000
    seq_n = 300 if quick else 3_000
    burst_n = 2_000 if quick else 20_000
    return [
        Shape("begin + register + end", cycles, reps,
              {"cc": cc_cycle, "reg": reg_cycle, "fut": asyncio_cycle},
              [Row("1 begin+register+end", "ns/op", "cc", "reg", 0.5),
               Row("1 ... vs asyncio future+cb", "ns/op", "cc", "fut")]),
        Shape("read canceled", reads, reps,
              {"cc": cc_read, "plain": plain_read, "cffi": cffi_read, "fut": asyncio_read},
              [Row("2 read ctx.canceled", "ns/read", "cc", "plain", 2.0),
               Row("2 ... vs fut.cancelled()", "ns/read", "cc", "fut"),
               Row("2 lib.cc_op_is_canceled(op)", "ns/read", "cffi", "plain")]),
        Shape(f"abort fan-out, {fan_n:,} ops", fan_n, fan_reps,
              {"cc": cc_fanout, "reg": reg_fanout, "futs": asyncio_fanout_futures,
               "tasks": asyncio_fanout_tasks},
              [Row("3 abort fan-out", "ns/op", "cc", "reg", 1.0),
               Row("3 ... vs cancel N futures", "ns/op", "cc", "futs"),
               Row("3 ... vs cancel N tasks", "ns/op", "cc", "tasks")]),
        Shape("begin + register + end, 2 threads", cycles // 2, reps,
              {"cc": cc_cycle2, "reg": reg_cycle2},
              [Row("4 cycle, 2 threads (wall)", "ns/op", "cc", "reg")]),
        Shape("dispatch sync, one at a time", seq_n, reps,
              {"cc": cc_dispatch_seq, "ex": executor_seq},
              [Row("5 dispatch().result()", "us/op", "cc", "ex")]),
        Shape("dispatch sync, burst", burst_n, reps,
              {"cc": cc_dispatch_burst, "ex": executor_burst},
              [Row("5 dispatch burst", "us/op", "cc", "ex")]),
        Shape("dispatch async, burst", burst_n, reps,
              {"cc": cc_dispatch_async, "task": create_task_async},
              [Row("5 async dispatch burst", "us/op", "cc", "task")]),
        Shape("begin(deadline=) + register + end", cycles, reps,
              {"cc": cc_cycle, "ccdl": cc_cycle_deadline, "timer": loop_timer_cycle},
              [Row("7 cycle with a deadline", "ns/op", "ccdl", "cc")]),
    ]


ANCHOR_NAMES = {
    "reg": "registry (a)",
    "fut": "asyncio (b)",
    "plain": "__slots__",
    "futs": "futures (b)",
    "tasks": "tasks (b)",
    "ex": "executor",
    "task": "create_task",
    "cffi": "cffi call",
    "cc": "cancelcore",
    "ccdl": "cc+deadline",
    "timer": "loop.call_at",
    "abi3": "abi3 build",
    "full": "full API",
}


def fmt(value_ns: float, unit: str) -> str:
    return f"{value_ns / 1000:.2f}" if unit.startswith("us") else f"{value_ns:.1f}"


def report(shapes: list[Shape]) -> None:
    header = (f"{'shape':<30} | {'unit':<7} | {'cancelcore':>10} | {'anchor':<13} | {'anchor':>9} | "
              f"{'ratio':>6} | {'of mins':>7} | {'target':>7} | verdict")
    print(header)
    print("-" * len(header))
    for shape in shapes:
        for row in shape.rows:
            cc, an = shape.median(row.cc), shape.median(row.anchor)
            ratio = cc / an
            min_ratio = min(shape.samples[row.cc]) / min(shape.samples[row.anchor])
            if row.target is None:
                target, verdict = "-", "info"
            else:
                target = f"<= {row.target:.1f}x"
                verdict = "meets" if ratio <= row.target else "MISSES"
            print(f"{row.shape:<30} | {row.unit:<7} | {fmt(cc, row.unit):>10} | "
                  f"{ANCHOR_NAMES[row.anchor]:<13} | {fmt(an, row.unit):>9} | {ratio:>5.2f}x | "
                  f"{min_ratio:>6.2f}x | {target:>7} | {verdict}")
    for shape in shapes:
        if "ccdl" in shape.samples:
            own = shape.median("ccdl") - shape.median("cc")
            print(f"{'7 ... the deadline alone':<30} | {'ns/op':<7} | {own:>10.1f} | "
                  f"{ANCHOR_NAMES['timer']:<13} | {shape.median('timer'):>9.1f} | "
                  f"{own / shape.median('timer'):>5.2f}x | {'':>7} | {'-':>7} | info")
    print("\nspread over the repetitions (min / median / max, ns per op or read):")
    for shape in shapes:
        parts = []
        for key, samples in shape.samples.items():
            parts.append(f"{ANCHOR_NAMES[key]} {min(samples):.0f}/{statistics.median(samples):.0f}/{max(samples):.0f}")
        print(f"  {shape.name}: " + ";  ".join(parts))


def profile_cycle(n: int) -> None:
    """cProfile of the public-API cycle (function-level; cProfile inflates
    Python-level calls, so read it for the shape, not the figures)."""
    host = ServiceHost()
    host.open()
    ch = host.accept_channel()
    on_cancel, on_free = make_callbacks([0] * n, [0] * n)

    def loop() -> None:
        for i in range(n):
            ctx = ch.begin_operation()
            ctx.register_for_cancel(on_cancel, on_free, i)
            ctx.end()

    prof = cProfile.Profile()
    prof.runcall(loop)
    host.close()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(14)
    print(f"\ncProfile of {n:,} begin+register+end cycles (sorted by own time):")
    print("\n".join(line for line in out.getvalue().splitlines() if line.strip())[:4000])


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few seconds: smoke test, rough figures")
    parser.add_argument("--profile", action="store_true", help="also cProfile the begin+register+end cycle")
    parser.add_argument("--abi-modules", metavar="DIR",
                        help="also shape 6, limited vs full API: DIR holds CMake's "
                        "CC_BUILD_PY_ABI_BENCH builds of the cffi module")
    args = parser.parse_args(argv)

    started = time.monotonic()
    shapes = build_shapes(args.quick)
    if args.abi_modules:
        try:
            shapes += abi_shapes(args.abi_modules, args.quick)
        except (OSError, ImportError) as exc:
            print(f"--abi-modules: {exc}", file=sys.stderr)
            return 2
    print(f"bench_python: cancelcore {cancelcore.__version__} (Python layer) against a "
          "lock-and-dict registry and asyncio")
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count() or 0
    print(f"machine:  {cpu_model()}, nproc {affinity} ({os.cpu_count()} online), "
          f"{platform.system()} {platform.release()}")
    print(f"Python:   {platform.python_implementation()} {platform.python_version()}, cffi {cffi.__version__}, "
          f"switch interval {sys.getswitchinterval() * 1e3:.0f} ms")
    print(f"run:      {'--quick (rough figures)' if args.quick else 'full'}; figures are medians of "
          f"{shapes[0].reps} repetitions (fan-out: {shapes[2].reps}), each one timed loop, GC off, "
          "models interleaved; min/max below")
    print("anchor (a): bench/py_anchors.py Registry: one lock + dicts, G1-G6/G9/G11/G13, "
          "a Condition for G5, abort gathers under the lock and calls back outside it")
    print("anchor (b): asyncio future + add/remove_done_callback; cancelling N futures / N tasks\n")
    try:
        for shape in shapes:
            run_shape(shape, progress=True)
    except BenchFailure as exc:
        print(f"\nFAILED: {exc}", file=sys.stderr)
        return 1
    print()
    report(shapes)
    print("\nnotes:")
    print("  ratio = cancelcore / anchor of the medians (lower is better); the verdict compares it with")
    print("    the target.  'of mins' is the same ratio of the fastest repetitions, steadier on a noisy VM.")
    print("  shape 2 counts the loop (1/20 of an iteration) in each read; both sides pay it alike.")
    print("  shape 3 times host.abort() alone (every callback runs on this thread before it returns);")
    print("    asyncio rows time cancel() of N plus running the loop until every callback/task finished.")
    print("  shape 4 is the wall time per operation with 2 threads doing the cycle at once (GIL-bound).")
    print("  shape 5 includes the thread or loop hand-off: informational, not a target.")
    print("  shape 7: the cycle with a deadline an hour away (filed in the host's timer heap, skipped")
    print("    once ended) against the cycle without ('7 cycle with a deadline') and against")
    print("    loop.call_at + cancel alone ('7 ... the deadline alone': cycle with minus cycle without,")
    print("    against the cheapest timer Python has).")
    if args.abi_modules:
        print("  shape 6 times two builds of one generated source, compiled alike but for Py_LIMITED_API")
        print("    (0x03090000, the wheel's) against the full API: the 'cancelcore' column is the abi3")
        print("    build, the anchor the full-API one; a ratio near 1.00x means the limited API costs")
        print("    nothing on the hot path.  Every raw run checked the host's counts.")
    print("  every run's counts were checked: each cancel callback once where due and never elsewhere,")
    print("    each free-state exactly once, host.stats agreeing.")
    if args.profile:
        profile_cycle(20_000 if args.quick else 200_000)
    print(f"\ntotal time: {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
