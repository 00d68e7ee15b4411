"""A service host at work, in a few seconds, checked.

    python examples/service_demo.py [--seed N] [--plain | --live]

(``make demo`` runs it, then ``server_demo.py``.)

A :class:`ServiceHost` runs a mix of operations over several channels:

* blocking ones on the host's dispatch worker threads: each takes a fake
  connection from a pool, registers a cancel callback that sets the
  ``threading.Event`` its work loop waits on, and a free-state callback that
  puts the connection back into the pool;
* async ones dispatched on the asyncio loop: each takes a connection too,
  registers the same pair of callbacks and awaits ``asyncio.sleep`` in a
  loop; when its operation is canceled the library cancels its task.

Short operations complete normally.  At about 1 s two channels are faulted
(their clients "disconnected": their operations are canceled with
``CHANNEL_FAULTED``, on the loop's thread); just before 2 s a burst of late
blocking requests queues behind the busy workers; at 2 s an admin thread
aborts the host (every remaining operation is canceled with ``HOST_ABORT``,
on that thread; the queued ones, canceled before they could register, see
their cancel callback run synchronously inside ``register_for_cancel``).
Then the host is closed.

The demo keeps its own books -- every callback writes to a ledger -- and
checks them against ``host.stats`` and against the guarantees: every
free-state ran exactly once, every cancel callback at most once, every
connection went back to the pool once.  Exit status 1 if any check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import random
import shutil
import statistics
import sys
import threading
import time
from collections import Counter, deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Optional, TextIO, Union, cast

from cancelcore import (
    CancelCoreError,
    CancelReason,
    Channel,
    HostState,
    OperationContext,
    ServiceHost,
)

__all__ = ["ConnectionPool", "Ledger", "Progress", "main", "run_demo"]

# The plan (seconds from the start).
N_CHANNELS = 6
FAULTED_CHANNELS = (1, 4)
FAULT_AT = 1.0
STOP_ACCEPTING_AT = 1.85  # new requests stop; only the late burst follows
LATE_BURST_AT = 1.9
ABORT_AT = 2.0
TRAFFIC_EVERY = 0.06
WORKERS = 10
POOL_SIZE = 64
LONG = 60.0  # "long" operations only end by being canceled


# ------------------------------------------------------------ the resource


class Connection:
    """A fake connection: what a free-state callback gives back."""

    __slots__ = ("number", "owner")

    def __init__(self, number: int) -> None:
        self.number = number
        self.owner: Optional[int] = None


class ConnectionPool:
    """A pool that notices a connection returned twice or by a stranger."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._idle: deque[Connection] = deque(Connection(i) for i in range(size))
        self.errors: list[str] = []
        self.peak_in_use = 0

    def acquire(self, owner: int) -> Connection:
        with self._lock:
            if not self._idle:
                raise RuntimeError("connection pool exhausted")
            conn = self._idle.popleft()
            conn.owner = owner
            self.peak_in_use = max(self.peak_in_use, self.size - len(self._idle))
            return conn

    def release(self, conn: Connection, owner: int) -> None:
        with self._lock:
            if conn.owner != owner:
                self.errors.append(
                    f"connection {conn.number} returned by operation {owner}, "
                    f"held by {conn.owner}"
                )
                return
            conn.owner = None
            self._idle.append(conn)

    @property
    def idle(self) -> int:
        with self._lock:
            return len(self._idle)


# ------------------------------------------------------------- the books


@dataclass
class Op:
    """One operation as the demo sees it."""

    ident: int
    kind: str  # "blocking" or "async"
    channel: int
    work: float  # seconds of work planned
    late: bool = False  # part of the burst queued just before the abort
    started: bool = False  # its function ran
    registering: bool = False
    cancels: list[CancelReason] = field(default_factory=list)
    cancel_threads: list[str] = field(default_factory=list)
    in_register: bool = False  # the cancel ran inside register_for_cancel (G3)
    frees: int = 0
    canceled_at: Optional[float] = None
    stopped_at: Optional[float] = None  # when its code saw the cancellation
    outcome: str = "pending"


@dataclass
class OpState:
    """The ``state`` handed to the callbacks."""

    op: Op
    ledger: Ledger
    conn: Optional[Connection] = None
    stop: Optional[threading.Event] = None


class Ledger:
    """Everything that happened, written by the callbacks themselves."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self.lock = threading.Lock()
        self.ops: list[Op] = []
        self.refused = 0
        self.t0 = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def new_op(self, kind: str, channel: int, work: float, late: bool = False) -> Op:
        with self.lock:
            return Op(len(self.ops) + self.refused, kind, channel, work, late)

    def admitted(self, op: Op) -> None:
        with self.lock:
            self.ops.append(op)

    def refuse(self) -> None:
        with self.lock:
            self.refused += 1

    # The callbacks (module-level functions below call these).

    def on_cancel(self, reason: CancelReason, st: OpState) -> None:
        op = st.op
        with self.lock:
            op.cancels.append(reason)
            op.cancel_threads.append(threading.current_thread().name)
            op.in_register = op.registering
            if op.canceled_at is None:
                op.canceled_at = self.now()
        if st.stop is not None:
            st.stop.set()  # wakes the blocking operation's work loop

    def on_free(self, st: OpState) -> None:
        op = st.op
        if st.conn is not None:
            self.pool.release(st.conn, op.ident)
        with self.lock:
            op.frees += 1

    # Figures for the status line and the report.

    def counts(self) -> dict[str, int]:
        with self.lock:
            ops = list(self.ops)
        c: Counter[str] = Counter()
        for op in ops:
            c["started"] += 1
            if op.outcome != "pending":
                c["ended"] += 1
            if op.cancels:
                c["canceled"] += 1
                c[op.cancels[0].name] += 1
            elif op.outcome == "completed":
                c["completed"] += 1
            c["cancel_callbacks"] += len(op.cancels)
            c["frees"] += op.frees
        c["running"] = c["started"] - c["ended"]
        c["refused"] = self.refused
        return dict(c)


def _on_cancel(reason: CancelReason, st: OpState) -> None:
    st.ledger.on_cancel(reason, st)


def _on_free(st: OpState) -> None:
    st.ledger.on_free(st)


# -------------------------------------------------------- the operations


def _register(ctx: OperationContext, st: OpState) -> None:
    op = st.op
    st.conn = st.ledger.pool.acquire(op.ident)
    op.registering = True
    try:
        ctx.register_for_cancel(_on_cancel, _on_free, st)
    except BaseException:
        st.ledger.pool.release(st.conn, op.ident)  # not registered: still ours
        raise
    finally:
        op.registering = False


def blocking_operation(ctx: OperationContext, st: OpState) -> str:
    """Runs on a dispatch worker thread; stops when its Event is set."""
    op = st.op
    op.started = True
    st.stop = threading.Event()
    _register(ctx, st)
    deadline = time.monotonic() + op.work
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return "completed"
        if st.stop.wait(min(remaining, 0.25)):
            op.stopped_at = st.ledger.now()
            return "stopped"


async def async_operation(ctx: OperationContext, st: OpState) -> str:
    """Runs as a task on the loop; cancelled when its operation is."""
    op = st.op
    op.started = True
    _register(ctx, st)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + op.work
    try:
        while loop.time() < deadline:
            await asyncio.sleep(min(0.05, max(deadline - loop.time(), 0.0)))
        return "completed"
    except asyncio.CancelledError:
        op.stopped_at = st.ledger.now()
        raise


# ----------------------------------------------------------- the progress


class Progress:
    """A live status line on a terminal, plain lines otherwise."""

    def __init__(self, out: TextIO, live: bool, ledger: Ledger) -> None:
        self.out = out
        self.live = live
        self.ledger = ledger
        self.phase = "starting"
        self._shown = False
        self._last_plain = -1.0

    def status(self) -> str:
        c = self.ledger.counts()
        return (
            f"[{self.ledger.now():3.1f}s] {self.phase}: {c.get('started', 0)} started, "
            f"{c.get('running', 0)} running, {c.get('completed', 0)} completed, "
            f"{c.get('canceled', 0)} canceled ({c.get('CHANNEL_FAULTED', 0)} fault, "
            f"{c.get('HOST_ABORT', 0)} abort); {c.get('frees', 0)} freed; "
            f"pool {self.ledger.pool.idle}/{self.ledger.pool.size}"
        )

    async def follow(self, done: asyncio.Event) -> None:
        """Refreshes the status every 0.1 s until done is set."""
        while not done.is_set():
            self.tick()
            try:
                await asyncio.wait_for(done.wait(), 0.1)
            except asyncio.TimeoutError:
                pass

    def tick(self) -> None:
        if self.live:
            width = shutil.get_terminal_size((120, 24)).columns - 1
            self.out.write("\r\x1b[K" + self.status()[:width])
            self.out.flush()
            self._shown = True
        elif self.ledger.now() - self._last_plain >= 0.5:
            self._last_plain = self.ledger.now()
            print("  " + self.status(), file=self.out, flush=True)

    def event(self, message: str) -> None:
        """A line that stays: a phase change."""
        if self.live and self._shown:
            self.out.write("\r\x1b[K")
        print(f"  t={self.ledger.now():4.2f}s  {message}", file=self.out, flush=True)
        self._shown = False
        if self.live:
            self.tick()

    def done(self) -> None:
        if self.live and self._shown:
            self.out.write("\r\x1b[K")
            self.out.flush()
            self._shown = False


# ----------------------------------------------------------------- the run


class Demo:
    def __init__(self, out: TextIO, live: bool, seed: int) -> None:
        self.out = out
        self.rng = random.Random(seed)
        self.pool = ConnectionPool(POOL_SIZE)
        self.ledger = Ledger(self.pool)
        self.progress = Progress(out, live, self.ledger)
        self.host = ServiceHost(close_timeout=2.0, max_workers=WORKERS)
        self.channels: list[Channel] = []
        self.futures: list[Future[str]] = []
        self.tasks: list[asyncio.Task[str]] = []
        self.task_ops: list[Op] = []
        self.stats: dict[str, int] = {}
        self.close_graceful = False
        self.final_state = HostState.CREATED
        self.abort_thread = ""

    def _callbacks(self, thread: str) -> int:
        """Cancel callbacks run so far on the thread named ``thread``."""
        with self.ledger.lock:
            return sum(op.cancel_threads.count(thread) for op in self.ledger.ops)

    def dispatch(self, kind: str, channel: int, work: float, late: bool = False) -> bool:
        op = self.ledger.new_op(kind, channel, work, late)
        st = OpState(op, self.ledger)
        ch = self.channels[channel]
        try:
            if kind == "blocking":
                fut = cast("Future[str]", self.host.dispatch(ch, blocking_operation, st))
            else:
                task = cast("asyncio.Task[str]", self.host.dispatch(ch, async_operation, st))
        except CancelCoreError:  # faulted channel or aborted host: not begun
            self.ledger.refuse()
            return False
        self.ledger.admitted(op)
        if kind == "blocking":
            fut.add_done_callback(functools.partial(_settle, op))
            self.futures.append(fut)
        else:
            task.add_done_callback(functools.partial(_settle, op))
            self.tasks.append(task)
        return True

    async def traffic(self, stop: asyncio.Event) -> None:
        """Short requests on random channels until the server stops accepting."""
        while not stop.is_set():
            for _ in range(2):
                kind = self.rng.choice(("blocking", "async"))
                self.dispatch(kind, self.rng.randrange(N_CHANNELS), self.rng.uniform(0.1, 0.5))
            try:
                await asyncio.wait_for(stop.wait(), TRAFFIC_EVERY)
            except asyncio.TimeoutError:
                pass

    async def sleep_until(self, t: float) -> None:
        await asyncio.sleep(max(0.0, t - self.ledger.now()))

    async def run(self) -> None:
        host, progress = self.host, self.progress
        host.open()
        self.channels = [host.accept_channel() for _ in range(N_CHANNELS)]
        done = asyncio.Event()
        status = asyncio.create_task(progress.follow(done))
        progress.phase = "serving"
        progress.event(
            f"host open: {N_CHANNELS} channels, {WORKERS} worker threads + this asyncio loop, "
            f"a pool of {POOL_SIZE} connections"
        )
        # Long operations (end only when canceled) and a first wave of short
        # ones on every channel.
        for ch in range(N_CHANNELS):
            self.dispatch("blocking", ch, LONG)
            self.dispatch("async", ch, LONG)
            self.dispatch("async", ch, LONG)
            self.dispatch("blocking", ch, self.rng.uniform(0.2, 0.7))
            self.dispatch("async", ch, self.rng.uniform(0.2, 0.7))
        stop_traffic = asyncio.Event()
        traffic = asyncio.create_task(self.traffic(stop_traffic))

        await self.sleep_until(FAULT_AT)
        here = threading.current_thread().name
        before, ran = host.stats["ops_canceled"], self._callbacks(here)
        for ch in FAULTED_CHANNELS:
            self.channels[ch].fault()  # callbacks run here, on the loop's thread
        progress.phase = "channels faulted"
        progress.event(
            f"channels {', '.join(map(str, FAULTED_CHANNELS))} faulted (clients gone): "
            f"{host.stats['ops_canceled'] - before} operations canceled with CHANNEL_FAULTED, "
            f"{self._callbacks(here) - ran} cancel callbacks ran on this thread ({here}); "
            "new requests on them are refused"
        )

        await self.sleep_until(STOP_ACCEPTING_AT)
        stop_traffic.set()
        await traffic
        await self.sleep_until(LATE_BURST_AT)
        late = [ch for ch in range(N_CHANNELS) if ch not in FAULTED_CHANNELS]
        for i in range(2 * WORKERS):
            self.dispatch("blocking", late[i % len(late)], 0.3, late=True)
        progress.phase = "shutting down"
        progress.event(
            f"server stops accepting; {2 * WORKERS} late blocking requests arrive, "
            f"more than the {WORKERS} workers can start at once"
        )

        await self.sleep_until(ABORT_AT)
        admin = threading.Thread(target=host.abort, name="admin")
        self.abort_thread = admin.name
        before, ran = host.stats["ops_canceled"], self._callbacks(admin.name)
        admin.start()
        admin.join()  # abort runs every cancel callback before it returns
        progress.phase = "host aborted"
        progress.event(
            f"host aborted by the '{admin.name}' thread: {host.stats['ops_canceled'] - before} "
            f"operations canceled with HOST_ABORT, {self._callbacks(admin.name) - ran} cancel callbacks "
            f"ran on that thread (queued operations run theirs when they register); "
            f"host {host.state.name}"
        )

        # Every operation finishes on its own: blocking ones return when
        # their Event is set, tasks end with CancelledError.
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await asyncio.gather(*(asyncio.wrap_future(f) for f in self.futures), return_exceptions=True)
        self.close_graceful = host.close()
        self.final_state = host.state
        progress.phase = "closed"
        progress.event(f"every operation finished; host closed ({self.final_state.name})")
        done.set()
        await status
        progress.done()
        self.stats = host.stats


def _settle(op: Op, fut: Union[Future[str], asyncio.Future[str]]) -> None:
    if fut.cancelled():
        op.outcome = "task cancelled" if op.started else "cancelled before it ran"
    elif fut.exception() is not None:
        op.outcome = f"error: {fut.exception()!r}"
    else:
        op.outcome = fut.result()


# ------------------------------------------------------------------ report


def _report(demo: Demo, out: TextIO) -> bool:
    ledger, stats, ops = demo.ledger, demo.stats, demo.ledger.ops
    c = ledger.counts()
    unstarted = [op for op in ops if not op.started]
    never_registered_canceled = sum(1 for op in unstarted if op.outcome != "completed")

    def line(label: str, ours: object, theirs: object = "", key: str = "") -> None:
        note = f"  (host.stats['{key}'])" if key else ""
        print(f"  {label:<34} {ours!s:>6} {theirs!s:>11}{note}", file=out)

    print("\nreport", file=out)
    print(f"  {'':<34} {'demo':>6} {'host.stats':>11}", file=out)
    line("operations started", len(ops), stats["ops_begun"], "ops_begun")
    line("operations ended", c.get("ended", 0), stats["ops_ended"], "ops_ended")
    line("in flight at the end", c.get("running", 0), stats["ops_in_flight"], "ops_in_flight")
    line("completed normally", c.get("completed", 0), "-")
    line("canceled", c.get("canceled", 0), stats["ops_canceled"], "ops_canceled")
    line("  with CHANNEL_FAULTED", c.get("CHANNEL_FAULTED", 0), stats["cancels_channel_faulted"],
         "cancels_channel_faulted")
    line("  with HOST_ABORT", c.get("HOST_ABORT", 0), stats["cancels_host_abort"], "cancels_host_abort")
    line("cancel callbacks run", c.get("cancel_callbacks", 0), stats["cancel_callbacks_run"],
         "cancel_callbacks_run")
    line("free-state callbacks run", c.get("frees", 0), stats["free_states_run"], "free_states_run")
    line("callback errors", 0, stats["callback_errors"], "callback_errors")
    line("requests refused (not begun)", ledger.refused, "-")
    if never_registered_canceled:
        line("canceled before their code ran", never_registered_canceled, "-")

    print("\n  by kind:", file=out)
    for kind in ("blocking", "async"):
        mine = [op for op in ops if op.kind == kind]
        canceled = [op for op in mine if op.cancels]
        by_reason = Counter(op.cancels[0].name for op in canceled)
        print(
            f"    {kind:<8} {len(mine):3d} started, {sum(1 for op in mine if not op.cancels):3d} completed, "
            f"{len(canceled):3d} canceled (CHANNEL_FAULTED {by_reason['CHANNEL_FAULTED']}, "
            f"HOST_ABORT {by_reason['HOST_ABORT']})",
            file=out,
        )
    g3 = [op for op in ops if op.in_register]
    late = [op for op in ops if op.late]
    print(
        f"    {len(g3)} cancel callbacks ran synchronously inside register_for_cancel (G3):\n"
        f"      operations canceled while they waited for a worker "
        f"({sum(1 for op in late if op.in_register)} of them among the {len(late)} late requests)",
        file=out,
    )
    threads = Counter(
        "worker (inside register)" if op.in_register else op.cancel_threads[0]
        for op in ops
        if op.cancel_threads
    )
    print("    cancel callbacks ran on: " + ", ".join(f"{n} x {k}" for k, n in threads.most_common()),
          file=out)
    for kind, how in (("blocking", "the Event woke its loop"), ("async", "its task saw CancelledError")):
        lat = [
            (op.stopped_at - op.canceled_at) * 1e3
            for op in ops
            if op.kind == kind and op.canceled_at is not None and op.stopped_at is not None
            and not op.in_register
        ]
        if lat:
            print(f"    {kind} operations stopped {statistics.median(lat):.2f} ms after their cancel "
                  f"callback (median; max {max(lat):.2f} ms, {len(lat)} ops): {how}", file=out)
    print(f"    connection pool: {demo.pool.idle}/{demo.pool.size} idle at the end, "
          f"peak {demo.pool.peak_in_use} in use", file=out)
    print(f"    close() returned {demo.close_graceful} (nothing was left in flight); "
          f"host state {demo.final_state.name}", file=out)

    # ---------------------------------------------------------- checks
    checks: list[tuple[bool, str]] = []
    started = [op for op in ops if op.started]
    once = sum(1 for op in started if op.frees == 1)
    checks.append((
        once == len(started) and all(op.frees == 0 for op in unstarted),
        f"every free-state ran exactly once ({once} of {len(started)} registered operations)",
    ))
    twice = [op.ident for op in ops if len(op.cancels) > 1]
    checks.append((
        not twice,
        f"every cancel callback ran at most once ({c.get('cancel_callbacks', 0)} ran, "
        f"{len(twice)} operations more than once)",
    ))
    agree = (
        stats["ops_begun"] == len(ops)
        and stats["ops_ended"] == c.get("ended", 0) == len(ops)
        and stats["ops_in_flight"] == 0
        and stats["ops_canceled"] == c.get("canceled", 0) + never_registered_canceled
        and stats["cancels_channel_faulted"] + stats["cancels_host_abort"]
        == c.get("canceled", 0) + never_registered_canceled
        and (never_registered_canceled > 0 or (
            stats["cancels_channel_faulted"] == c.get("CHANNEL_FAULTED", 0)
            and stats["cancels_host_abort"] == c.get("HOST_ABORT", 0)))
        and stats["cancel_callbacks_run"] == c.get("cancel_callbacks", 0)
        and stats["free_states_run"] == c.get("frees", 0)
        and stats["callback_errors"] == 0
    )
    checks.append((agree, "the demo's books agree with host.stats"))
    wrong_channel = [
        op.ident for op in ops
        if op.cancels and op.cancels[0] is CancelReason.CHANNEL_FAULTED
        and op.channel not in FAULTED_CHANNELS
    ]
    checks.append((
        not wrong_channel,
        f"channel faults canceled only operations of channels "
        f"{', '.join(map(str, FAULTED_CHANNELS))}",
    ))
    long_left = [op.ident for op in ops if op.work >= LONG and not op.cancels]
    checks.append((not long_left, "every long operation was canceled (fault or abort)"))
    errors = [op.outcome for op in ops if op.outcome.startswith("error")]
    checks.append((not errors, "no operation failed" + (f": {errors[0]}" if errors else "")))
    checks.append((
        demo.pool.idle == demo.pool.size and not demo.pool.errors,
        "every connection went back to the pool exactly once"
        + (f": {demo.pool.errors[0]}" if demo.pool.errors else ""),
    ))
    checks.append((demo.final_state is HostState.CLOSED, "the host ended CLOSED"))

    print("\nchecks", file=out)
    for ok, text in checks:
        print(f"  [{'ok' if ok else 'FAILED'}] {text}", file=out)
    passed = all(ok for ok, _ in checks)
    print(f"\nresult: {'OK' if passed else 'FAILED'}", file=out)
    return passed


def run_demo(seed: int = 1, live: Optional[bool] = None, out: Optional[TextIO] = None) -> int:
    """Runs the demonstration; returns the exit status (0 when every check
    passed).  ``live``: a single status line updated in place (default: when
    ``out`` is a terminal)."""
    stream: TextIO = out if out is not None else sys.stdout
    if live is None:
        live = stream.isatty()
    print("cancelcore demo: a service host running blocking and async operations,", file=stream)
    print("faulting channels, then aborted and closed\n", file=stream)
    demo = Demo(stream, live, seed)
    try:
        asyncio.run(demo.run())
    finally:
        demo.progress.done()
        if demo.host.state in (HostState.OPEN, HostState.FAULTED):
            demo.host.abort()
    return 0 if _report(demo, stream) else 1


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="service_demo.py",
        description="Runs blocking operations on dispatch worker threads and async ones on an "
        "asyncio loop over several channels; faults some channels, aborts the host and closes "
        "it; then checks that every free-state callback ran exactly once and every cancel "
        "callback at most once, against its own books and host.stats.  Exit status 1 if a "
        "check fails.",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the request mix (default 1)")
    display = parser.add_mutually_exclusive_group()
    display.add_argument(
        "--plain", action="store_true", help="plain progress lines even on a terminal"
    )
    display.add_argument(
        "--live", action="store_true", help="a live status line even when not on a terminal"
    )
    args = parser.parse_args(argv)
    live: Optional[bool] = True if args.live else False if args.plain else None
    return run_demo(seed=args.seed, live=live)


if __name__ == "__main__":
    sys.exit(main())
