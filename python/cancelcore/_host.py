"""Service hosts, channels and the fault plan: thin wrappers of cancelcore.h."""

from __future__ import annotations

import asyncio
import atexit
import gc
import math
import os
import threading
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any, Callable, Coroutine, Optional, TypeVar, Union, overload

from . import _dispatch, _operation
from ._cancelcore import ffi, lib
from ._deadline import DeadlineTimer, check_deadline
from ._enums import ChannelState, FaultAction, FaultPoint, HostState
from ._errors import InvalidOperationError, raise_status
from ._operation import (
    Binding,
    OperationContext,
    _current,
    _interrupts,
    _LiveOperationContext,
    _new_context,
    inside_callback_of,
    reraise_interrupts,
)

__all__ = ["ServiceHost", "Channel", "FaultPlan"]

T = TypeVar("T")
_begin = lib.cc_op_begin_watched
_binding_fn = ffi.addressof(lib, "cc_py_binding")
_NULL = ffi.NULL
_weakref = weakref.ref
_MAX_MS = 2**62  # beyond any clock: the core waits without a deadline


def _seconds(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    try:
        seconds = float(value)
    except OverflowError:  # an int beyond any float: forever
        seconds = math.inf
    if math.isnan(seconds) or seconds < 0:
        raise ValueError(f"{name} must be >= 0 seconds, not {value!r}")
    return seconds


def _ms(seconds: float) -> int:
    if not seconds < _MAX_MS / 1000.0:  # inf, or past any clock
        return _MAX_MS
    return int(math.ceil(seconds * 1000.0))


def _workers_count(value: Any) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"max_workers must be an int or None, not {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"max_workers must be > 0, not {value}")
    return value


class ServiceHost:
    """A service host: runs operations on channels and cancels them when
    aborted (G7) or when their channel faults (G9).

    ``close_timeout`` (seconds) is how long ``close()`` waits for in-flight
    operations before aborting the host (G8).  As a context manager the host
    is opened on enter and closed on exit.  ``max_workers`` sizes the thread
    pool that ``dispatch`` runs plain functions on.
    """

    def __init__(self, close_timeout: float = 5.0, *, max_workers: Optional[int] = None) -> None:
        timeout = _seconds(close_timeout, "close_timeout")
        self._max_workers = _workers_count(max_workers)
        out = ffi.new("cc_host **")
        status = lib.cc_host_create(out)
        if status:
            raise_status(status, "cc_host_create")
        self._ptr = out[0]
        self._b = b = Binding(self._ptr)
        lib.cc_host_set_binding(self._ptr, _binding_fn, b.handle)
        lib.cc_host_set_close_timeout(self._ptr, _ms(timeout))
        self._close_timeout = timeout
        self._async_live: set[OperationContext] = set()  # dispatched coroutines
        self._faults = FaultPlan(self)
        self._executor: Optional[ThreadPoolExecutor] = None
        self._executor_lock = threading.Lock()
        self._timer: Optional[DeadlineTimer] = None
        # Not at exit: a host Python can still reach is never freed under it.
        self._finalizer = weakref.finalize(self, _release_host, b)
        self._finalizer.atexit = False
        _bindings.add(b)
        _hosts.add(self)

    def __repr__(self) -> str:
        return f"<ServiceHost {self.state.name}>"

    @property
    def _live(self) -> set[OperationContext]:
        """The contexts in flight (for tests and cleanup)."""
        live = set()
        for ref in list(self._b.ops.values()):
            ctx = ref()
            if ctx is not None:
                live.add(ctx)
        return live

    # ----------------------------------------------------------- states

    @property
    def state(self) -> HostState:
        """The host's state (G12)."""
        return HostState(lib.cc_host_state(self._ptr))

    @property
    def close_timeout(self) -> float:
        """Seconds ``close()`` waits before aborting the host."""
        return self._close_timeout

    @close_timeout.setter
    def close_timeout(self, value: float) -> None:
        timeout = _seconds(value, "close_timeout")
        lib.cc_host_set_close_timeout(self._ptr, _ms(timeout))
        self._close_timeout = timeout

    def open(self) -> None:
        """CREATED -> OPEN; ``InvalidOperationError`` in any other state."""
        status = lib.cc_host_open(self._ptr)
        if status:
            raise_status(status, f"open a host in state {self.state.name}")

    def close(self, timeout: Optional[float] = None) -> bool:
        """OPEN or FAULTED -> CLOSED (G8).  Refuses new channels and
        operations, fires no cancel by itself and waits for the operations in
        flight; after ``timeout`` seconds (default: the host's close timeout)
        it aborts the host and waits for them to finish.  Returns True if
        every operation ended without being canceled by an abort during the
        close, False if the timeout expired or the host was aborted.

        Refused with ``InvalidOperationError`` from inside one of this host's
        operations or callbacks, which it would wait for forever, and on an
        event loop thread that has dispatched coroutines in flight (use
        ``aclose()``).  Ctrl-C reaches the caller at once; the close goes on
        in the background."""
        ms = -1 if timeout is None else _ms(_seconds(timeout, "timeout"))
        b = self._b
        cur = _current.get()
        if (cur is not None and cur._host is self and cur._h != 0) or inside_callback_of(b):
            raise InvalidOperationError("close() from inside an operation or callback of this host")
        if self._async_live and _on_loop_thread():
            # Blocking here would starve the loop its async operations need
            # to finish, or to see their cancellation: they never could.
            raise InvalidOperationError(
                "close() on the event loop thread with async operations in flight "
                "would deadlock; use `await host.aclose()`"
            )
        # The core waits on its own thread, so this one stays interruptible
        # (Ctrl-C) and the callbacks an escalation runs never see a signal.
        result: list[int] = []
        done = threading.Event()

        def closer() -> None:
            try:
                result.append(lib.cc_host_close(self._ptr, ms))
            finally:
                done.set()

        threading.Thread(target=closer, name="cancelcore-close", daemon=True).start()
        while not done.wait(1.0):
            # A context dropped inside a reference cycle ends when the cycle
            # is collected: do not wait for the next automatic collection.
            gc.collect()
        status = result[0]
        if status == lib.CC_E_TIMEOUT or status == lib.CC_E_OPERATION_ABORTED:
            graceful = False
        elif status:
            raise_status(status, f"close a host in state {self.state.name}")
        else:
            graceful = True
        # Every operation has ended in the core; the free-states Python runs
        # right after may still be running on other threads.  Completion
        # includes them (G4, G8).
        if b.ops:
            b.closing = True
            with b.idle:
                while b.ops:
                    b.idle.wait(0.05)
            b.closing = False
        self._shutdown_executor()
        return graceful

    async def aclose(self, timeout: Optional[float] = None) -> bool:
        """``close()`` for coroutines: waits on a thread of its own (never a
        pool the host's operations could fill), so the event loop keeps
        running the operations being waited for."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()

        def run() -> None:
            try:
                graceful = self.close(timeout)
            except BaseException as exc:  # handed to the awaiting task
                _dispatch.call_soon(loop, _settle, future, None, exc)
            else:
                _dispatch.call_soon(loop, _settle, future, graceful, None)

        threading.Thread(target=run, name="cancelcore-aclose", daemon=True).start()
        return await future

    def abort(self) -> None:
        """Cancels every in-flight operation with ``HOST_ABORT`` (their
        callbacks run on this thread before it returns) without waiting for
        them to end (G7).  Accepted in every state; idempotent."""
        lib.cc_host_abort(self._ptr)
        reraise_interrupts()

    def reset(self) -> None:
        """CLOSED or CREATED -> CREATED, so the host can be opened again."""
        status = lib.cc_host_reset(self._ptr)
        if status:
            raise_status(status, f"reset a host in state {self.state.name}")

    async def __aenter__(self) -> ServiceHost:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        if self.state in (HostState.OPEN, HostState.FAULTED):
            await self.aclose()

    def __enter__(self) -> ServiceHost:
        if self.state == HostState.CREATED:
            self.open()
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        if self.state in (HostState.OPEN, HostState.FAULTED):
            self.close()

    # ----------------------------------------------------------- channels

    def accept_channel(self) -> Channel:
        """Opens a channel (a connection operations run on).
        ``ObjectFaultedError`` if the host is FAULTED, ``InvalidOperationError``
        if it is not OPEN."""
        out = ffi.new("cc_channel **")
        status = lib.cc_channel_open(self._ptr, out)
        if status:
            raise_status(status, f"accept a channel on a host in state {self.state.name}")
        return Channel(self, out[0])

    # ---------------------------------------------------------- observing

    @property
    def stats(self) -> dict[str, int]:
        """Counters since the host was created: ``ops_in_flight``,
        ``ops_begun``, ``ops_ended``, ``ops_canceled``,
        ``cancels_host_abort`` and ``cancels_channel_faulted`` (cancellations
        delivered, by reason), ``cancel_callbacks_run``, ``free_states_run``,
        ``callback_errors``, ``channels_open``, ``faults_injected``,
        ``deadlines_expired`` (operations canceled by their deadline)."""
        st = ffi.new("cc_stats *")
        lib.cc_host_get_stats(self._ptr, st)
        return {
            "ops_in_flight": st.ops_in_flight,
            "ops_begun": st.ops_begun,
            "ops_ended": st.ops_ended,
            "ops_canceled": st.ops_canceled,
            "cancels_host_abort": st.cancels_host_abort,
            "cancels_channel_faulted": st.cancels_channel_faulted,
            "cancel_callbacks_run": lib.cc_host_stat(self._ptr, lib.CC_STAT_USER_CANCELS_RUN),
            "free_states_run": st.free_states_run,
            "callback_errors": st.callback_errors,
            "channels_open": st.channels_open,
            "faults_injected": lib.cc_host_fault_count(self._ptr),
            "deadlines_expired": self._timer.expired if self._timer is not None else 0,
        }

    def cancel_latency(self) -> tuple[list[tuple[float, int]], int, float]:
        """The core's histogram of the latency from a cancel's trigger to
        its callback's start: ``(buckets, count, sum_seconds)``, buckets as
        ``(upper_bound_seconds, count)`` (not cumulative; the last bound is
        ``inf``)."""
        n = lib.CC_LATENCY_BUCKETS
        counts = ffi.new("uint64_t[]", n)
        lib.cc_host_latency(self._ptr, counts, n)
        buckets = []
        for i in range(n):
            bound = lib.cc_latency_bound_ns(i)
            buckets.append((math.inf if i == n - 1 else bound / 1e9, int(counts[i])))
        total = lib.cc_host_stat(self._ptr, lib.CC_STAT_LATENCY_COUNT)
        sum_s = lib.cc_host_stat(self._ptr, lib.CC_STAT_LATENCY_SUM_NS) / 1e9
        return buckets, int(total), float(sum_s)

    @property
    def faults(self) -> FaultPlan:
        """The host's fault plan (for testing cancellation paths)."""
        return self._faults

    # ------------------------------------------------------------ dispatch

    @overload
    def dispatch(
        self, channel: Channel, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any,
        deadline: Optional[float] = None,
    ) -> asyncio.Task[T]: ...

    @overload
    def dispatch(
        self, channel: Channel, fn: Callable[..., T], *args: Any, deadline: Optional[float] = None
    ) -> Future[T]: ...

    def dispatch(
        self, channel: Channel, fn: Callable[..., Any], *args: Any, deadline: Optional[float] = None
    ) -> Union[Future[Any], asyncio.Task[Any]]:
        """Begins an operation on ``channel`` and runs ``fn(ctx, *args)``.

        A plain function runs on the host's worker threads and a
        ``concurrent.futures.Future`` is returned.  An ``async def`` function
        must be dispatched from inside a running event loop: it runs as an
        ``asyncio.Task`` (returned), cancelled when its operation is canceled.
        Either way the operation ends when ``fn`` returns or raises, and the
        future or task holds its result or exception.  ``current_operation()``
        inside ``fn`` is ``ctx``.  ``deadline``: as for
        ``Channel.begin_operation``."""
        if not isinstance(channel, Channel):
            raise TypeError("channel must be a Channel")
        if channel._host is not self:
            raise ValueError("the channel belongs to another host")
        if not callable(fn):
            raise TypeError("fn must be callable")
        if _dispatch.is_async(fn):
            return _dispatch.run_async(channel, fn, args, deadline=deadline)
        return _dispatch.run_sync(self._workers(), channel, fn, args, deadline=deadline)

    def _deadlines(self) -> DeadlineTimer:
        timer = self._timer
        if timer is None:
            with self._executor_lock:
                if self._timer is None:
                    self._timer = DeadlineTimer()
                timer = self._timer
        return timer

    def _workers(self) -> ThreadPoolExecutor:
        with self._executor_lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=self._max_workers, thread_name_prefix="cancelcore"
                )
            return self._executor

    def _shutdown_executor(self) -> None:
        with self._executor_lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False)


def _settle(future: asyncio.Future[bool], result: Optional[bool], exc: Optional[BaseException]) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(bool(result))


def _on_loop_thread() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


_leaked: list[Binding] = []


def _release_host(b: Binding) -> None:
    """The ServiceHost is gone: free the core host, unless operations are
    still in flight (freeing would wait for them, or abort them into
    contexts nobody holds): then it stays allocated, and so does its
    binding, which the core may still call."""
    if b.inherited:
        return  # the parent's: not ours to free
    if lib.cc_host_stat(b.ptr, lib.CC_STAT_OPS_IN_FLIGHT):
        _leaked.append(b)
        return
    b.freed = True
    lib.cc_host_free(b.ptr)


# Interpreter exit: abort what is still in flight while callbacks can still
# run -- before the interpreter joins its non-daemon threads, or a dispatch
# worker blocked until its operation is canceled would hang the exit -- and
# then refuse callbacks into a finalizing interpreter.
_hosts: weakref.WeakSet[ServiceHost] = weakref.WeakSet()
_bindings: weakref.WeakSet[Binding] = weakref.WeakSet()


def _abort_live_hosts() -> None:
    for host in list(_hosts):
        b = host._b
        if not b.inherited and not b.freed and b.ops:
            host.abort()


@atexit.register
def _at_exit() -> None:
    _abort_live_hosts()
    _operation._finalizing = True
    for b in list(_bindings):
        if not b.freed and not b.inherited:
            lib.cc_host_set_binding(b.ptr, _NULL, _NULL)


# Runs where concurrent.futures stops its workers: ahead of the thread joins.
_before_thread_joins = getattr(threading, "_register_atexit", None)
if _before_thread_joins is not None:
    _before_thread_joins(_abort_live_hosts)


def _after_fork_in_child() -> None:
    # The parent's hosts are the parent's: the child never runs their
    # callbacks, now or at its exit, and never frees them.
    for b in list(_bindings):
        b.inherited = True
        if not b.freed:
            lib.cc_host_set_binding(b.ptr, _NULL, _NULL)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class Channel:
    """A channel of a host: the unit a fault cancels (G9).  Created by
    ``ServiceHost.accept_channel()``; as a context manager, closed on exit.
    A channel dropped without ``close()`` is released when collected."""

    __slots__ = ("_host", "_b", "_ptr", "_closed", "__weakref__")

    def __init__(self, host: ServiceHost, ptr: Any) -> None:
        self._host = host
        self._b = host._b
        self._ptr = ptr
        self._closed = False

    def __repr__(self) -> str:
        return f"<Channel {self.state.name}>"

    @property
    def host(self) -> ServiceHost:
        return self._host

    @property
    def state(self) -> ChannelState:
        """OPEN, FAULTED, or CLOSED once its host was closed or it was."""
        if self._closed:
            return ChannelState.CLOSED
        return ChannelState(lib.cc_channel_state(self._ptr))

    def begin_operation(self, *, deadline: Optional[float] = None) -> OperationContext:
        """Begins an operation: one call into the core, no host-wide lock.
        ``ObjectFaultedError`` on a faulted channel or host,
        ``InvalidOperationError`` if the host is not open or the channel was
        closed.

        ``deadline`` (a ``time.monotonic()`` value): if the operation is
        still running then, it is canceled with ``CHANNEL_FAULTED``, as
        WWSAPI faults a channel whose timeout expires -- the operation
        alone: the channel and its other operations go on.  The host's one
        timer thread keeps every deadline: none costs a thread or a task."""
        if deadline is not None:
            deadline = check_deadline(deadline)
        h = _begin(self._ptr)
        if h < 0:
            reraise_interrupts()
            if self._closed:
                raise InvalidOperationError("begin an operation: the channel is closed")
            raise_status(h, "begin an operation")
        # The context, filed where the core's notices will look for it (a
        # weak reference: one dropped without end() ends itself).
        ctx: OperationContext = _new_context(_LiveOperationContext)
        ctx.canceled = False
        ctx.cancel_reason = None
        ctx._h = h
        ctx._b = b = self._b
        ctx._host = self._host
        ctx._hooks = ctx._reg = None
        ctx._deadline = deadline
        b.ops[h] = _weakref(ctx)
        if deadline is not None:
            (self._host._timer or self._host._deadlines()).add(ctx, h, self, deadline)
        if b.early:  # canceled before it was filed
            b.early_cancel(h, ctx)
        if _interrupts:
            reraise_interrupts()
        return ctx

    def fault(self) -> None:
        """Faults the channel: its in-flight operations are canceled with
        ``CHANNEL_FAULTED`` (callbacks run on this thread before it returns);
        the host stays open (G9).  Idempotent."""
        if self._closed:
            raise InvalidOperationError("the channel is closed")
        status = lib.cc_channel_fault(self._ptr)
        reraise_interrupts()
        if status:
            raise_status(status, "fault a channel whose host was closed")

    def _cancel_operation(self, ctx: OperationContext, reason: int = lib.CC_CHANNEL_FAULTED) -> bool:
        """Library plumbing: cancels ``ctx`` (an operation of this channel)
        alone, as a fault of the channel would cancel it, leaving the
        channel and its other operations alone; its callbacks run on this
        thread before it returns.  Nothing if it ended meanwhile, or was
        canceled already (the first reason stays, G6).  False if its end
        had begun."""
        h = ctx._h
        if not h or self._b.freed:
            return False
        status = lib.cc_channel_cancel_op(self._ptr, h, reason)
        reraise_interrupts()
        return bool(status == 0)

    def close(self) -> None:
        """Closes the channel to new operations.  Its in-flight operations
        go on and can still be canceled by an abort.  Closing twice is
        harmless.  (The core's handle is released when the channel is
        collected, so a close racing a begin on another thread is safe.)"""
        if not self._closed:
            self._closed = True
            lib.cc_channel_shutdown(self._ptr)

    def __del__(self) -> None:
        b = getattr(self, "_b", None)
        if b is not None and not b.freed and not b.inherited and not _operation._finalizing:
            lib.cc_channel_close(self._ptr)

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class FaultPlan:
    """A seeded, deterministic plan of injected faults on a host: at an
    operation's begin, registration or end, fault its channel, abort the host
    or fail with ``OutOfMemoryError`` -- every Nth visit, or with a
    probability drawn from the seed.  Same seed, same order of calls, same
    faults."""

    def __init__(self, host: ServiceHost) -> None:
        self._host = host

    def add(
        self,
        at: FaultPoint,
        action: FaultAction,
        *,
        every: int = 0,
        probability: float = 0.0,
    ) -> None:
        """Adds a rule firing on every ``every``-th visit of ``at`` or else
        with ``probability``.  ``ValueError`` for NOMEM at END, no trigger, a
        probability outside [0, 1], or more than 16 rules."""
        if not isinstance(at, FaultPoint) or not isinstance(action, FaultAction):
            raise TypeError("at must be a FaultPoint and action a FaultAction")
        if isinstance(every, bool) or not isinstance(every, int):
            raise TypeError("every must be an int")
        if isinstance(probability, bool) or not isinstance(probability, (int, float)):
            raise TypeError("probability must be a number")
        if not 0 <= every < 2**32:
            raise ValueError("every must be in [0, 2**32)")
        try:
            p = float(probability)
        except OverflowError:
            raise ValueError(f"probability must be in [0, 1], not {probability!r}") from None
        status = lib.cc_host_fault_add(self._host._ptr, at, action, every, p)
        if status == lib.CC_E_NOMEM:
            raise ValueError("a fault plan holds at most 16 rules")
        if status:
            raise ValueError(
                "invalid fault rule: NOMEM only at BEGIN or REGISTER, a trigger "
                "(every > 0 or 0 < probability), probability in [0, 1]"
            )

    def reset(self, seed: int = 0) -> None:
        """Removes every rule and restarts the counts with ``seed``."""
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError("seed must be an int")
        lib.cc_host_fault_reset(self._host._ptr, seed & (2**64 - 1))

    @property
    def injected(self) -> int:
        """Faults injected since the last reset."""
        return int(lib.cc_host_fault_count(self._host._ptr))
