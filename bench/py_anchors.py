"""Anchors for bench_python.py: what cancelcore's Python layer is measured
against, in the same run.

(a) ``Registry``: a plain-Python lock-and-dict registry with the guarantees of
    DESIGN.md that the benchmark exercises -- written to be fair and lean, not
    a strawman:

    G1  the cancel callback runs at most once;
    G2  only the first registration succeeds;
    G3  registering on an operation already canceled runs the cancel
        callback synchronously, inside ``register``, with the original reason;
    G4  the free-state callback runs exactly once, at the end;
    G5  no cancel callback starts after the end began, and ``end`` waits for
        a running one (a host-wide ``threading.Condition`` over the registry's
        one lock); ``end`` from inside the operation's own cancel callback
        returns at once and free-state runs when that callback returns;
    G6  first trigger decides the reason; G9 a channel fault cancels only that
        channel's operations; G11 no callback runs under the lock: ``abort``
        and ``fault`` gather under the lock and call back outside it;
    G13 an exception in a callback is counted and never stops the others.

    Costs it takes on purpose, as any correct lock-based version must: one
    lock acquisition at begin, at register and at end; per fired operation,
    one more (claiming "running" and releasing the previous operation's
    claim in the same critical section, so fan-out pays a single lock round
    per operation).  Objects use ``__slots__``; hot names are bound locally.

(b) asyncio primitives: a future + ``add_done_callback`` /
    ``remove_done_callback`` per operation, and cancelling N futures or N
    suspended tasks (see bench_python.py).
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Optional

__all__ = ["Registry", "RegChannel", "RegOp", "InvalidOperation", "HOST_ABORT", "CHANNEL_FAULTED"]

HOST_ABORT = 0
CHANNEL_FAULTED = 1

# Fire phases of an operation (guarded by the registry's lock).
_IDLE = 0  # no cancel callback claimed
_PENDING = 1  # claimed by abort/fault, not started yet (an end may withdraw it)
_RUNNING = 2  # the callback is running on thread `runner`


class InvalidOperation(Exception):
    pass


class RegOp:
    __slots__ = (
        "canceled",
        "reason",
        "channel",
        "on_cancel",
        "on_free",
        "state",
        "registered",
        "ended",
        "phase",
        "runner",
        "waiters",
        "deferred",
    )

    def __init__(self, channel: RegChannel) -> None:
        self.canceled = False
        self.reason: Optional[int] = None
        self.channel = channel
        self.on_cancel: Optional[Callable[[int, Any], object]] = None
        self.on_free: Optional[Callable[[Any], object]] = None
        self.state: Any = None
        self.registered = False
        self.ended = False
        self.phase = _IDLE
        self.runner = 0
        self.waiters = 0
        self.deferred = False


class RegChannel:
    __slots__ = ("registry", "ops", "faulted")

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.ops: dict[RegOp, None] = {}
        self.faulted = False

    def begin(self) -> RegOp:
        reg = self.registry
        op = RegOp(self)
        with reg.lock:
            if reg.aborted or self.faulted:
                raise InvalidOperation("faulted")
            self.ops[op] = None
        return op

    def fault(self) -> None:
        self.registry._cancel([self], CHANNEL_FAULTED, fault_channel=True)


class Registry:
    """The host: channels, one lock, one condition for G5 waits."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.channels: list[RegChannel] = []
        self.aborted = False
        self.callback_errors = 0

    def channel(self) -> RegChannel:
        ch = RegChannel(self)
        with self.lock:
            self.channels.append(ch)
        return ch

    # ---------------------------------------------------------- register

    def register(
        self,
        op: RegOp,
        on_cancel: Callable[[int, Any], object],
        on_free: Optional[Callable[[Any], object]] = None,
        state: Any = None,
    ) -> None:
        with self.lock:
            if op.ended:
                raise InvalidOperation("ended")
            if op.registered:
                raise InvalidOperation("already registered")  # G2
            op.registered = True
            op.on_cancel = on_cancel
            op.on_free = on_free
            op.state = state
            if not op.canceled:
                return
            # G3: canceled before it registered: run here, on this thread.
            op.phase = _RUNNING
            op.runner = threading.get_ident()
        self._run(op)
        self._release(op)

    # --------------------------------------------------------------- end

    def end(self, op: RegOp) -> None:
        cond = self.cond
        with cond:
            if op.ended:
                raise InvalidOperation("ended twice")
            op.ended = True
            del op.channel.ops[op]
            phase = op.phase
            if phase == _PENDING:
                op.phase = _IDLE  # withdrawn: no cancel starts after end (G5)
            elif phase == _RUNNING:
                if op.runner == threading.get_ident():
                    op.deferred = True  # end inside its own cancel callback
                    return
                op.waiters += 1
                while op.phase == _RUNNING:  # G5: wait for it to return
                    cond.wait()
                op.waiters -= 1
        self._free(op)

    def _free(self, op: RegOp) -> None:
        fn = op.on_free
        if fn is not None:
            try:
                fn(op.state)
            except BaseException:
                self.callback_errors += 1

    # ------------------------------------------------------------ cancel

    def abort(self) -> None:
        with self.lock:
            self.aborted = True
            channels = list(self.channels)
        self._cancel(channels, HOST_ABORT, fault_channel=False)

    def _cancel(self, channels: list[RegChannel], reason: int, fault_channel: bool) -> None:
        # Gather under the lock (G6: the first trigger wins) ...
        fire = []
        append = fire.append
        with self.lock:
            for ch in channels:
                if fault_channel:
                    ch.faulted = True
                for op in ch.ops:
                    if not op.canceled:
                        op.canceled = True
                        op.reason = reason
                        if op.registered:
                            op.phase = _PENDING
                            append(op)
        # ... and call back outside it (G11), one lock round per operation:
        # release the previous operation's claim and claim the next one.
        acquire = self.lock.acquire
        release = self.lock.release
        notify_all = self.cond.notify_all
        me = threading.get_ident()
        prev: Optional[RegOp] = None
        for op in fire:
            acquire()
            deferred = False
            if prev is not None:
                prev.phase = _IDLE
                if prev.waiters:
                    notify_all()
                deferred = prev.deferred
            go = op.phase == _PENDING  # an end may have withdrawn it
            if go:
                op.phase = _RUNNING
                op.runner = me
            release()
            if deferred:
                self._free(prev)  # type: ignore[arg-type]
            if go:
                try:
                    op.on_cancel(reason, op.state)  # type: ignore[misc]
                except BaseException:
                    self.callback_errors += 1
                prev = op
            else:
                prev = None
        if prev is not None:
            self._release(prev)

    def _run(self, op: RegOp) -> None:
        try:
            op.on_cancel(op.reason, op.state)  # type: ignore[misc, arg-type]
        except BaseException:
            self.callback_errors += 1

    def _release(self, op: RegOp) -> None:
        with self.cond:
            op.phase = _IDLE
            if op.waiters:
                self.cond.notify_all()
            deferred = op.deferred
        if deferred:
            self._free(op)
