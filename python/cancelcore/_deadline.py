"""Deadlines: one timer per host, whatever the number of operations.

An operation begun with a deadline is filed in its host's heap; one daemon
thread per host (started when the first deadline is filed, gone once the
heap has stayed empty a while) sleeps until the earliest entry and, if that
operation is still in flight and not canceled, cancels it with
``CHANNEL_FAULTED`` (``cc_channel_cancel_op``), as WWSAPI faults a channel
whose timeout expires -- that operation alone: its channel and the other
operations on it go on.

An operation that ends before its deadline is not looked up to be removed
(that would cost every end a lock): its entry stays until it falls due and
is then skipped, and the heap is rebuilt without such entries whenever they
outnumber the operations in flight, so it stays proportional to those.
"""

from __future__ import annotations

import heapq
import itertools
import math
import os
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Optional

from . import _operation

if TYPE_CHECKING:
    from ._host import Channel
    from ._operation import OperationContext

__all__ = ["DeadlineTimer", "check_deadline"]

_IDLE_SECONDS = 10.0  # an empty heap this long: the thread exits
_COMPACT_MIN = 1024
_heappush = heapq.heappush
_monotonic = time.monotonic
_ref = weakref.ref
_INF = math.inf

# (when, seq, context, handle, channel): seq keeps equal deadlines ordered
# without ever comparing the references.  The channel is held: its user may
# have dropped it with the operation still running.
_Entry = tuple[float, int, "weakref.ref[OperationContext]", int, "Channel"]


def check_deadline(value: Any) -> Optional[float]:
    """A ``time.monotonic()`` value or None: TypeError for a non-number
    (bools too), ValueError for NaN.  ``inf`` means no deadline."""
    if type(value) is float and value < _INF:  # the usual case: monotonic() + seconds
        return value
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"deadline must be a time.monotonic() value or None, not {type(value).__name__}")
    try:
        deadline = float(value)
    except OverflowError:  # an int beyond any float: never
        return None
    if math.isnan(deadline):
        raise ValueError("deadline must not be NaN")
    return None if deadline == math.inf else deadline


class DeadlineTimer:
    """The deadlines of one host's operations."""

    __slots__ = ("_lock", "_cond", "_heap", "_seq", "_thread", "_wake_at", "_compact_at",
                 "expired", "__weakref__")

    def __init__(self) -> None:
        # Filing takes the bare lock (a C call); the thread sleeps on the
        # condition over it, woken only for an entry sooner than its sleep.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._heap: list[_Entry] = []
        self._seq = itertools.count()
        self._thread: Optional[threading.Thread] = None
        self._wake_at = _INF  # when the thread wakes by itself: sooner entries notify it
        self._compact_at = _COMPACT_MIN  # heap size that triggers the next compaction
        self.expired = 0  # operations canceled by their deadline
        _timers.add(self)

    def add(self, ctx: OperationContext, h: int, channel: Channel, when: float) -> None:
        entry = (when, next(self._seq), _ref(ctx), h, channel)
        with self._lock:
            heap = self._heap
            if len(heap) >= self._compact_at:
                heap = self._compact()
            _heappush(heap, entry)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="cancelcore-deadlines", daemon=True
                )
                self._thread.start()
            elif when < self._wake_at:
                # Waking the thread costs this one the GIL: only when due
                # sooner than it already wakes.
                self._wake_at = when
                self._cond.notify()

    def _compact(self) -> list[_Entry]:
        """Drops the entries of operations that ended (lock held): at twice
        the size left, so its cost is spread over as many filings."""
        live = []
        for entry in self._heap:
            ctx = entry[2]()
            if ctx is not None and ctx._h == entry[3]:
                live.append(entry)
        heapq.heapify(live)
        self._heap = live
        self._compact_at = max(_COMPACT_MIN, 2 * len(live))
        return live

    def _run(self) -> None:
        cond = self._cond
        with cond:
            while True:
                heap = self._heap
                now = _monotonic()
                if not heap:
                    self._wake_at = now + _IDLE_SECONDS
                    if not cond.wait(_IDLE_SECONDS) and not self._heap:
                        self._thread = None
                        self._wake_at = _INF
                        return
                    continue
                delay = heap[0][0] - now
                if delay > 0:
                    self._wake_at = heap[0][0]
                    cond.wait(delay)
                    continue
                _, _, ctx_ref, h, channel = heapq.heappop(heap)
                del heap
                cond.release()
                try:
                    self._expire(ctx_ref(), h, channel)
                finally:
                    del channel  # not kept alive while the thread sleeps
                    cond.acquire()

    def _expire(self, ctx: Optional[OperationContext], h: int, channel: Channel) -> None:
        if ctx is None or ctx._h != h or ctx.canceled:
            return  # ended (or canceled) first
        if _operation._finalizing:
            return
        try:
            canceled = channel._cancel_operation(ctx)
        except BaseException:  # a signal, or one a callback raised: nobody here to get it
            return
        if canceled:  # else: its end began meanwhile
            self.expired += 1

    def _after_fork(self) -> None:
        # The parent's thread is not in the child, nor are its operations.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._heap = []
        self._thread = None
        self._wake_at = _INF
        self._compact_at = _COMPACT_MIN


_timers: weakref.WeakSet[DeadlineTimer] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for timer in list(_timers):
        timer._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
