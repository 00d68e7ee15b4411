"""Blocking cancel callbacks off the event loop.

A cancel callback runs on whichever thread canceled the operation: for the
ASGI adapter that is usually the event loop's thread (a disconnect is seen
there).  A callback that blocks -- psycopg's ``conn.cancel()`` is a network
round trip -- stalls every other request for as long.  ``offload`` wraps a
pair of callbacks so the cancel runs on an executor instead, and the
free-state runs only after that cancel has returned (G5 still holds for the
user's callbacks, without the ending thread ever blocking on it).
"""

from __future__ import annotations

import threading
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any, Callable, Optional

from ._enums import CancelReason
import logging

log = logging.getLogger("cancelcore")

__all__ = ["offload"]

_default: Optional[ThreadPoolExecutor] = None
_default_lock = threading.Lock()


def _default_executor() -> ThreadPoolExecutor:
    # Its own small pool, not the loop's default executor: anyio, Starlette
    # and the host's aclose() use that one, and a cancel must not queue
    # behind the very threads it is meant to stop.
    global _default
    with _default_lock:
        if _default is None:
            _default = ThreadPoolExecutor(max_workers=4, thread_name_prefix="cancelcore-offload")
        return _default


class _Offloaded:
    __slots__ = ("_cancel", "_free", "_executor", "_lock", "_pending")

    def __init__(self, cancel: Callable[[CancelReason, Any], object],
                 free: Optional[Callable[[Any], object]], executor: Optional[Executor]) -> None:
        self._cancel = cancel
        self._free = free
        self._executor = executor
        self._lock = threading.Lock()
        self._pending: Optional[Future[None]] = None

    def on_cancel(self, reason: CancelReason, state: Any) -> None:
        executor = self._executor if self._executor is not None else _default_executor()
        with self._lock:
            self._pending = executor.submit(self._run_cancel, reason, state)

    def _run_cancel(self, reason: CancelReason, state: Any) -> None:
        try:
            self._cancel(reason, state)
        except Exception as exc:  # G13: reported, never raised into a pool
            log.error("exception in offloaded cancel callback", exc_info=exc)

    def on_free_state(self, state: Any) -> None:
        with self._lock:
            pending = self._pending
        if pending is None or pending.done():
            self._run_free(state)
        else:
            # The cancel is still running on the executor: free-state follows
            # it there, so the two never overlap and this thread never waits.
            pending.add_done_callback(lambda _f: self._run_free(state))

    def _run_free(self, state: Any) -> None:
        if self._free is None:
            return
        try:
            self._free(state)
        except Exception as exc:
            log.error("exception in offloaded free-state callback", exc_info=exc)


def offload(
    on_cancel: Callable[[CancelReason, Any], object],
    on_free_state: Optional[Callable[[Any], object]] = None,
    *,
    executor: Optional[Executor] = None,
) -> tuple[Callable[[CancelReason, Any], None], Callable[[Any], None]]:
    """Returns ``(on_cancel, on_free_state)`` for ``register_for_cancel``
    that run ``on_cancel`` on ``executor`` (a small pool of the library's
    own by default) instead of the canceling thread, and ``on_free_state``
    only once that cancel has returned::

        ctx.register_for_cancel(*offload(lambda r, c: c.cancel(), pool.putconn), conn)

    Use it for a cancel callback that blocks (a network round trip): the
    event loop that delivered the disconnect is not stalled by it."""
    if not callable(on_cancel):
        raise TypeError("on_cancel must be callable")
    if on_free_state is not None and not callable(on_free_state):
        raise TypeError("on_free_state must be callable or None")
    if executor is not None and not isinstance(executor, Executor):
        raise TypeError("executor must be a concurrent.futures.Executor or None")
    pair = _Offloaded(on_cancel, on_free_state, executor)
    return pair.on_cancel, pair.on_free_state
