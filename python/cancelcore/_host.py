"""Service hosts, channels and the fault plan: thin wrappers of cancelcore.h."""

from __future__ import annotations

import asyncio
import atexit
import functools
import itertools
import math
import threading
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any, Callable, Coroutine, Optional, TypeVar, Union, overload

from . import _dispatch
from ._cancelcore import ffi, lib
from ._enums import ChannelState, FaultAction, FaultPoint, HostState
from ._errors import InvalidOperationError, raise_status
from ._operation import OperationContext, new_context

__all__ = ["ServiceHost", "Channel", "FaultPlan"]

T = TypeVar("T")
_begin_with_cancel = lib.cc_op_begin_with_cancel
_trampoline = lib._cc_py_cancel
_NULL = ffi.NULL


def _seconds(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if math.isnan(value) or value < 0:
        raise ValueError(f"{name} must be >= 0 seconds, not {value!r}")
    return float(value)


def _ms(seconds: float) -> int:
    return min(int(math.ceil(seconds * 1000.0)), 2**62) if math.isfinite(seconds) else 2**62


def _count(counter: itertools.count[int]) -> int:
    # itertools.count is CPython's GIL-atomic counter (one C call to bump,
    # no lock on the hot path); its repr, "count(N)", is the one way to read
    # it without advancing it.
    text = repr(counter)
    if not (text.startswith("count(") and text.endswith(")")):
        raise RuntimeError(f"unexpected itertools.count repr {text!r}")
    return int(text[6:-1])


class ServiceHost:
    """A service host: runs operations on channels and cancels them when
    aborted (G7) or when their channel faults (G9).

    ``close_timeout`` (seconds) is how long ``close()`` waits for in-flight
    operations before aborting the host (G8).  As a context manager the host
    is opened on enter and closed on exit.
    """

    def __init__(self, close_timeout: float = 5.0, *, max_workers: Optional[int] = None) -> None:
        timeout = _seconds(close_timeout, "close_timeout")
        out = ffi.new("cc_host **")
        status = lib.cc_host_create(out)
        if status:
            raise_status(status, "cc_host_create")
        self._ptr = out[0]
        lib.cc_host_set_close_timeout(self._ptr, _ms(timeout))
        self._close_timeout = timeout
        # Contexts whose operation C may still call back about: they, and so
        # their cffi handles, stay alive until they end.
        self._live: set[OperationContext] = set()
        self._async_live: set[OperationContext] = set()  # dispatched coroutines
        # close() waits on this for free-states Python runs after C's end.
        self._closing = False
        self._idle = threading.Condition()
        self._free_states = itertools.count()
        self._cancel_callbacks = itertools.count()
        self._faults_armed = False  # read by register_for_cancel
        self._faults = FaultPlan(self)
        self._max_workers = max_workers
        self._executor: Optional[ThreadPoolExecutor] = None
        self._executor_lock = threading.Lock()
        self._finalizer = weakref.finalize(self, _free_host, self._ptr, self._live)
        _hosts.add(self)

    def __repr__(self) -> str:
        return f"<ServiceHost {self.state.name}>"

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
        close, False if the timeout expired or the host was aborted."""
        ms = -1 if timeout is None else _ms(_seconds(timeout, "timeout"))
        me = threading.get_ident()
        if any(ctx._firing == me for ctx in list(self._live)):
            # Inside a cancel callback of one of our operations (one run by
            # register_for_cancel, G3, which C does not see): close would
            # wait for an operation that cannot end before we return.
            raise InvalidOperationError("close() from inside a cancel callback of this host")
        if self._async_live and _on_loop_thread():
            # Blocking here would starve the loop its async operations need
            # to finish, or to see their cancellation: they never could.
            raise InvalidOperationError(
                "close() on the event loop thread with async operations in flight "
                "would deadlock; use `await host.aclose()`"
            )
        status = lib.cc_host_close(self._ptr, ms)
        if status == lib.CC_E_TIMEOUT or status == lib.CC_E_OPERATION_ABORTED:
            graceful = False
        elif status:
            raise_status(status, f"close a host in state {self.state.name}")
        else:
            graceful = True
        # Every operation has ended in C; the free-states Python runs after
        # that may still be running on other threads.  Completion includes
        # them (G4, G8).
        if self._live:
            self._closing = True
            with self._idle:
                while self._live:
                    self._idle.wait()
            self._closing = False
        self._shutdown_executor()
        return graceful

    def _notify_idle(self) -> None:
        with self._idle:
            self._idle.notify_all()

    async def aclose(self, timeout: Optional[float] = None) -> bool:
        """``close()`` for coroutines: waits on a worker thread, so the
        event loop keeps running the operations being waited for."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, functools.partial(self.close, timeout))

    def abort(self) -> None:
        """Cancels every in-flight operation with ``HOST_ABORT`` (their
        callbacks run on this thread before it returns) without waiting for
        them to end (G7).  Accepted in every state; idempotent."""
        lib.cc_host_abort(self._ptr)

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
        ``callback_errors``, ``channels_open``, ``faults_injected``."""
        st = ffi.new("cc_stats *")
        lib.cc_host_get_stats(self._ptr, st)
        return {
            "ops_in_flight": st.ops_in_flight,
            "ops_begun": st.ops_begun,
            "ops_ended": st.ops_ended,
            "ops_canceled": st.ops_canceled,
            "cancels_host_abort": st.cancels_host_abort,
            "cancels_channel_faulted": st.cancels_channel_faulted,
            "cancel_callbacks_run": _count(self._cancel_callbacks),
            "free_states_run": _count(self._free_states) + st.free_states_run,
            "callback_errors": st.callback_errors,
            "channels_open": st.channels_open,
            "faults_injected": lib.cc_host_fault_count(self._ptr),
        }

    @property
    def faults(self) -> FaultPlan:
        """The host's fault plan (for testing cancellation paths)."""
        return self._faults

    # ------------------------------------------------------------ dispatch

    @overload
    def dispatch(  # type: ignore[overload-overlap]
        self, channel: Channel, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any
    ) -> asyncio.Task[T]: ...

    @overload
    def dispatch(self, channel: Channel, fn: Callable[..., T], *args: Any) -> Future[T]: ...

    def dispatch(self, channel: Channel, fn: Callable[..., Any], *args: Any) -> Union[Future[Any], asyncio.Task[Any]]:
        """Begins an operation on ``channel`` and runs ``fn(ctx, *args)``.

        A plain function runs on the host's worker threads and a
        ``concurrent.futures.Future`` is returned.  An ``async def`` function
        must be dispatched from inside a running event loop: it runs as an
        ``asyncio.Task`` (returned), cancelled when its operation is canceled.
        Either way the operation ends when ``fn`` returns or raises, and the
        future or task holds its result or exception.  ``current_operation()``
        inside ``fn`` is ``ctx``."""
        if not isinstance(channel, Channel):
            raise TypeError("channel must be a Channel")
        if channel._host is not self:
            raise ValueError("the channel belongs to another host")
        if not callable(fn):
            raise TypeError("fn must be callable")
        if _dispatch.is_async(fn):
            return _dispatch.run_async(channel, fn, args)
        return _dispatch.run_sync(self._workers(), channel, fn, args)

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


def _on_loop_thread() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _free_host(ptr: Any, live: set[OperationContext]) -> None:
    # A host collected with operations still in flight is left allocated:
    # freeing it would abort them into contexts that no longer exist.
    if not live:
        lib.cc_host_free(ptr)


# Interpreter exit: abort what is still in flight while callbacks can still
# run -- before the interpreter joins its non-daemon threads, or a dispatch
# worker blocked until its operation is canceled would hang the exit -- and
# then refuse callbacks into a finalizing interpreter.
_hosts: weakref.WeakSet[ServiceHost] = weakref.WeakSet()


def _abort_live_hosts() -> None:
    for host in list(_hosts):
        if host._live:
            host.abort()


@atexit.register
def _at_exit() -> None:
    from . import _operation

    _abort_live_hosts()
    _operation._finalizing = True


# Runs where concurrent.futures stops its workers: ahead of the thread joins.
_before_thread_joins = getattr(threading, "_register_atexit", None)
if _before_thread_joins is not None:
    _before_thread_joins(_abort_live_hosts)


class Channel:
    """A channel of a host: the unit a fault cancels (G9).  Created by
    ``ServiceHost.accept_channel()``; as a context manager, closed on exit."""

    __slots__ = ("_host", "_ptr", "__weakref__")

    def __init__(self, host: ServiceHost, ptr: Any) -> None:
        self._host = host
        self._ptr = ptr

    def __repr__(self) -> str:
        return f"<Channel {self.state.name if self._ptr is not None else 'released'}>"

    @property
    def host(self) -> ServiceHost:
        return self._host

    @property
    def state(self) -> ChannelState:
        """OPEN, FAULTED, or CLOSED once its host was closed or it was."""
        if self._ptr is None:
            return ChannelState.CLOSED
        return ChannelState(lib.cc_channel_state(self._ptr))

    def begin_operation(self) -> OperationContext:
        """Begins an operation: one call into the core, no host-wide lock.
        ``ObjectFaultedError`` on a faulted channel or host,
        ``InvalidOperationError`` if the host is not open or the channel was
        closed."""
        ptr = self._ptr
        if ptr is None:
            raise InvalidOperationError("the channel is closed")
        host = self._host
        ctx = new_context(host)
        host._live.add(ctx)
        op = _begin_with_cancel(ptr, _trampoline, _NULL, ctx._handle, _NULL)
        if not op:
            host._live.discard(ctx)
            self._begin_failed()
        ctx._op = op
        return ctx

    def _begin_failed(self) -> None:
        # Re-read the states to name the refusal; both open means memory.
        hs = lib.cc_host_state(self._host._ptr)
        cs = lib.cc_channel_state(self._ptr)
        if cs == lib.CC_CHANNEL_STATE_FAULTED or hs == lib.CC_HOST_STATE_FAULTED:
            raise_status(lib.CC_E_OBJECT_FAULTED, "begin an operation")
        if cs != lib.CC_CHANNEL_STATE_OPEN or hs != lib.CC_HOST_STATE_OPEN:
            raise_status(lib.CC_E_INVALID_OPERATION, "begin an operation")
        raise_status(lib.CC_E_NOMEM, "begin an operation")

    def fault(self) -> None:
        """Faults the channel: its in-flight operations are canceled with
        ``CHANNEL_FAULTED`` (callbacks run on this thread before it returns);
        the host stays open (G9).  Idempotent."""
        if self._ptr is None:
            raise InvalidOperationError("the channel is closed")
        status = lib.cc_channel_fault(self._ptr)
        if status:
            raise_status(status, "fault a channel whose host was closed")

    def close(self) -> None:
        """Releases the channel.  Its in-flight operations go on and can
        still be canceled by an abort.  Closing twice is harmless."""
        ptr, self._ptr = self._ptr, None
        if ptr is not None:
            lib.cc_channel_close(ptr)

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
        status = lib.cc_host_fault_add(self._host._ptr, at, action, every, float(probability))
        if status == lib.CC_OK:
            self._host._faults_armed = True
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
        self._host._faults_armed = False

    @property
    def injected(self) -> int:
        """Faults injected since the last reset."""
        return int(lib.cc_host_fault_count(self._host._ptr))
