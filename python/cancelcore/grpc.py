"""gRPC: client cancels, deadlines and server stops as call cancellation.

``CancellationInterceptor`` (for ``grpc.server``) and
``AioCancellationInterceptor`` (for ``grpc.aio.server``) run every RPC --
unary or streaming requests and responses, sync or async handlers -- as an
operation of the interceptor's host, so:

- the client cancelling the call, or its deadline expiring, cancels that
  RPC alone, as a fault of a channel of its own would: its cancel callbacks
  fire once with ``CHANNEL_FAULTED`` and an async handler's task is
  cancelled;
- an RPC that completes fires no cancel, and its free-state callback runs
  once, after the handler (or its response generator) has finished;
- ``.stop(server, grace)`` closes the host with ``grace`` as its close
  timeout, then stops the server: in-flight RPCs get ``grace`` seconds,
  then ``HOST_ABORT``, before gRPC would cancel them itself; a client whose
  RPC was cut by that abort receives ``UNAVAILABLE``.

Inside the servicer method (and a streaming response generator)
``cancelcore.current_operation()`` is the RPC's context.  The handler's own
``register_for_cancel`` is never used by the adapter (G2).  The operation's
deadline is the RPC's own (the one its client sent): ``ctx.deadline`` and
``ctx.time_remaining()`` work in the servicer.

Across services, ``client_interceptor()`` (for ``grpc.intercept_channel``)
and ``aio_client_interceptor()`` (for ``grpc.aio`` channels) tie the calls
made inside an operation to it: each carries what is left of its deadline
and is cancelled the moment the operation is canceled, so the next server
sees its client leave (``CANCELLED``) and cancels its own operation.

What grpcio does without this (1.85): the sync server's
``context.add_callback`` fires on every termination, normal completion
included, on the one poller thread all RPCs share; ``server.stop(grace)``
cannot be told apart from a client cancel; the aio server has no
``add_callback`` and its sync handlers get no notice at all; a task it
cancels is answered with no status.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import queue
import threading
import sys
import time
from concurrent.futures import Future as ThreadFuture
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator, NoReturn, Optional, TypeVar

import grpc
import grpc.aio

from . import _adapters
from ._dispatch import call_soon
from ._enums import CancelReason, HostState
from ._errors import CancelCoreError, OperationCanceledError
from ._host import Channel, ServiceHost
from ._operation import OperationContext, _current

__all__ = ["AioCancellationInterceptor", "CancellationInterceptor", "ClientInterceptor", "aio_client_interceptor",
           "client_interceptor"]

T = TypeVar("T")

_SHUTDOWN_DETAILS = "cancelcore: the service is shutting down"
_CLOSED_DETAILS = "cancelcore: the service is not accepting calls"
_CANCELED_DETAILS = "cancelcore: the call was canceled"
_DEADLINE_DETAILS = "Deadline Exceeded"  # as gRPC words its own
# After the host has closed every operation has ended; gRPC gets this long
# to send the answers of the RPCs that are still being written out.
_FLUSH_GRACE = 1.0
# Wrapped handlers are cached per method handler; a server whose handlers
# are made per call gets a bounded cache rather than a growing one.
_CACHE_LIMIT = 1024
_HOST_ABORT = CancelReason.HOST_ABORT
_FAULTED = CancelReason.CHANNEL_FAULTED
_reason = _adapters.reason
_AIO_WORKERS = 32  # threads for sync handlers on the asyncio server
# More seconds left than this (about 31 years) is no deadline at all.
_NO_DEADLINE = 1e9


def _grace(value: Any) -> float:
    # gRPC's own None ("at once") is accepted and means 0.
    return 0.0 if value is None else _adapters.seconds(value, "grace")


def _after_abort(grace: float) -> float:
    """How long ``stop()`` waits for aborted RPCs to wind up before it stops
    the server anyway: as long as the grace period, 1 s at least."""
    return max(1.0, grace)


def _check_server(server: Any, kind: Any) -> None:
    if not isinstance(server, kind):
        raise TypeError(f"server must be a {kind.__module__}.{kind.__qualname__}, not {type(server).__name__}")


class _HandlerCache:
    """Wrapped method handlers, keyed by the handler object they wrap."""

    __slots__ = ("_entries", "_wrap")

    def __init__(self, wrap: Callable[[Any], Any]) -> None:
        self._entries: dict[int, tuple[Any, Any]] = {}
        self._wrap = wrap

    def get(self, handler: Any) -> Any:
        entry = self._entries.get(id(handler))
        if entry is not None and entry[0] is handler:
            return entry[1]
        wrapped = self._wrap(handler)
        if len(self._entries) >= _CACHE_LIMIT:
            self._entries.clear()
        # The entry keeps `handler` alive, so its id is not reused meanwhile.
        self._entries[id(handler)] = (handler, wrapped)
        return wrapped


def _method_handler(handler: Any, behavior: Callable[..., Any]) -> Any:
    """A method handler like ``handler`` with ``behavior`` as its code."""
    if handler.request_streaming:
        make = grpc.stream_stream_rpc_method_handler if handler.response_streaming \
            else grpc.stream_unary_rpc_method_handler
    else:
        make = grpc.unary_stream_rpc_method_handler if handler.response_streaming \
            else grpc.unary_unary_rpc_method_handler
    return make(behavior, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)


def _behavior(handler: Any) -> Optional[Callable[..., Any]]:
    if handler.request_streaming:
        return handler.stream_stream if handler.response_streaming else handler.stream_unary  # type: ignore[no-any-return]
    return handler.unary_stream if handler.response_streaming else handler.unary_unary  # type: ignore[no-any-return]


def _rpc_deadline(context: Any) -> Optional[float]:
    """The RPC's own deadline (the one its client set, which gRPC enforces
    too) as a ``time.monotonic()`` value, or None without one.  grpcio's
    threaded server reports "no deadline" as some 9.2e18 seconds left, the
    asyncio server as None."""
    remaining = context.time_remaining()
    if remaining is None or not remaining < _NO_DEADLINE:  # NaN too
        return None
    return time.monotonic() + max(float(remaining), 0.0)


def _call_with(ctx: OperationContext, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` with ``current_operation()`` set to ``ctx``."""
    token = _current.set(ctx)
    try:
        return fn(*args)
    finally:
        _current.reset(token)


# =================================================================== sync


class _FaultWorker:
    """One thread per interceptor that cancels the RPCs gRPC has
    terminated.  gRPC runs its termination callbacks on its single poller
    thread; handing the cancel (and so the user's cancel callbacks) to this
    thread keeps a slow callback from stalling every RPC of the server."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Optional[_SyncRpc]] = queue.SimpleQueue()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()

    def put(self, rpc: _SyncRpc) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    thread = threading.Thread(target=self._run, name="cancelcore-grpc-faults", daemon=True)
                    thread.start()
                    self._thread = thread
        self._queue.put(rpc)

    def _run(self) -> None:
        while True:
            rpc = self._queue.get()
            if rpc is None:
                return
            rpc.fault()

    def stop(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)


class _SyncRpc:
    """One RPC on the threaded server."""

    __slots__ = ("channel", "ctx", "worker", "deadline", "finished", "reason")

    def __init__(self, channel: Channel, ctx: OperationContext, worker: _FaultWorker,
                 deadline: Optional[float]) -> None:
        self.channel = channel
        self.ctx = ctx
        self.worker = worker
        self.deadline = deadline  # the RPC's, as a time.monotonic() value
        self.finished = False
        self.reason: Optional[CancelReason] = None  # read as it ends

    def terminated(self) -> None:
        """gRPC's termination callback, on its poller thread.  It fires for
        every end of the RPC; only one that comes before the handler (or its
        response generator) has finished is a cancel: a normal end is sent
        by gRPC after the handler returned, an abort after it raised."""
        if not self.finished:
            self.worker.put(self)

    def fault(self) -> None:
        """Cancels this RPC alone (CHANNEL_FAULTED), from any thread: once
        it has ended, the core refuses its stale handle (G10)."""
        _adapters.cancel(self.channel, self.ctx)

    def finish(self, context: Any) -> None:
        """The handler has finished: the operation ends (a running cancel
        callback is waited for, then free-state runs: G4, G5).  gRPC wakes a
        handler reading requests of a canceled RPC before it runs the
        termination callbacks, so the handler may get here first: an RPC no
        longer active before its answer was sent was canceled."""
        self.finished = True
        if not context.is_active():
            self.fault()
        self.reason = _reason(self.ctx)
        _adapters.end(self.ctx)


def _sync_requests(rpc: _SyncRpc, requests: Iterator[Any], context: Any) -> Iterator[Any]:
    """The request stream a threaded-server handler reads.  gRPC may end
    the request stream of a canceled RPC as if the client had half-closed
    it, just before it learns of the cancel: at the end the reader lets
    gRPC's poller run, then cancels an RPC no longer active,
    before the handler takes the end for a normal one."""
    yield from requests
    time.sleep(0)
    time.sleep(0)
    if not context.is_active():
        rpc.fault()


class CancellationInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Runs each RPC of a ``grpc.server`` as a cancelcore operation.

    ``host``: the ServiceHost to run RPCs on; by default one is created with
    ``close_timeout`` and opened.  It is ``.host``.  RPCs that arrive when the
    host is not open are answered ``UNAVAILABLE``.
    """

    def __init__(self, host: Optional[ServiceHost] = None, close_timeout: float = 5.0) -> None:
        self.host = _adapters.adapter_host(host, close_timeout)
        self._calls = _adapters.CallChannel(self.host)
        self._worker = _FaultWorker()
        self._handlers = _HandlerCache(self._wrap)

    def intercept_service(self, continuation: Callable[[Any], Any], handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        return self._handlers.get(handler)

    def stop(self, server: grpc.Server, grace: Optional[float]) -> None:
        """Closes the host with ``grace`` as its close timeout -- new RPCs get
        ``UNAVAILABLE``, in-flight ones ``grace`` seconds to finish, then
        ``HOST_ABORT`` -- and once every operation has ended (or the aborted
        ones had as long again, 1 s at least) stops ``server``; returns when
        it has stopped."""
        _check_server(server, grpc.Server)
        seconds = _grace(grace)
        if self.host.state in (HostState.OPEN, HostState.FAULTED):
            # The close goes on until every operation has ended (G8); the
            # server stops anyway once the aborted RPCs have had as long
            # again to wind up, so a handler that ignores its cancel cannot
            # keep the stop from returning.
            closer = threading.Thread(target=self.host.close, args=(seconds,),
                                      name="cancelcore-grpc-stop", daemon=True)
            closer.start()
            closer.join(seconds + _after_abort(seconds))
        server.stop(_FLUSH_GRACE).wait()
        self._worker.stop()

    # ----------------------------------------------------------- wrapping

    def _wrap(self, handler: Any) -> Any:
        behavior = _behavior(handler)
        if behavior is None:
            return handler
        streaming_in = bool(handler.request_streaming)
        if handler.response_streaming:
            return _method_handler(handler, functools.partial(self._streaming, behavior, streaming_in))
        return _method_handler(handler, functools.partial(self._unary, behavior, streaming_in))

    def _begin(self, context: Any) -> _SyncRpc:
        deadline = _rpc_deadline(context)
        try:
            channel, ctx = self._calls.begin(deadline)
        except CancelCoreError:
            context.abort(grpc.StatusCode.UNAVAILABLE, _CLOSED_DETAILS)
            raise  # not reached: abort raises
        rpc = _SyncRpc(channel, ctx, self._worker, deadline)
        if not context.add_callback(rpc.terminated):
            # gRPC refuses callbacks once the RPC has terminated: it was
            # canceled before the handler even started.
            rpc.worker.put(rpc)
        return rpc

    def _unary(self, behavior: Callable[..., Any], streaming_in: bool, request: Any, context: Any) -> Any:
        rpc = self._begin(context)
        ctx = rpc.ctx
        if streaming_in:
            request = _sync_requests(rpc, request, context)
        error: Optional[BaseException] = None
        response = None
        token = _current.set(ctx)
        try:
            response = behavior(request, context)
        except BaseException as exc:
            error = exc
        finally:
            _current.reset(token)
            rpc.finish(context)
        # A handler that finished its work despite the abort answers.
        _answer(rpc, context, error, cut=error is not None or response is None)
        return response

    def _streaming(self, behavior: Callable[..., Any], streaming_in: bool, request: Any,
                   context: Any) -> Iterator[Any]:
        rpc = self._begin(context)
        ctx = rpc.ctx
        if streaming_in:
            request = _sync_requests(rpc, request, context)
        token = _current.set(ctx)
        try:
            responses = iter(behavior(request, context))
        except BaseException as exc:
            rpc.finish(context)
            _answer(rpc, context, exc, cut=True)
            raise AssertionError("not reached") from exc  # _answer raised
        finally:
            _current.reset(token)
        return self._responses(rpc, responses, context)

    @staticmethod
    def _responses(rpc: _SyncRpc, responses: Iterator[Any], context: Any) -> Iterator[Any]:
        """The handler's response iterator, run with its context current.
        gRPC stops iterating an RPC that ended and never closes the
        iterator; dropping this generator closes it (GeneratorExit at the
        yield), which closes the handler's generator and ends the
        operation."""
        ctx = rpc.ctx
        error: Optional[BaseException] = None
        try:
            while True:
                token = _current.set(ctx)
                try:
                    item = next(responses)
                except StopIteration:
                    break
                except BaseException as exc:
                    error = exc
                    break
                finally:
                    _current.reset(token)
                yield item
                if ctx.canceled:
                    break  # pull no more from a canceled RPC's generator
        finally:
            close = getattr(responses, "close", None)
            try:
                if close is not None:
                    _call_with(ctx, close)
            finally:
                rpc.finish(context)
        # A stream the abort reached is cut short, however its generator
        # ended: the client must not take it for a complete one.
        _answer(rpc, context, error, cut=True)


def _answer(rpc: _SyncRpc, context: Any, error: Optional[BaseException], cut: bool) -> None:
    """How a finished handler's RPC ends on the threaded server: cut by the
    host's abort -> ``UNAVAILABLE``; canceled because its client left or its
    deadline passed -> quietly (gRPC would log the handler's exception as
    "Exception calling application" for a call nobody waits for);
    otherwise as the handler left it."""
    reason = rpc.reason
    if reason is _HOST_ABORT and cut:
        context.abort(grpc.StatusCode.UNAVAILABLE, _SHUTDOWN_DETAILS)
    if error is not None:
        if reason is _FAULTED and isinstance(error, Exception):
            # The host's deadline timer may fault the channel a moment
            # before gRPC's own timer ends the call: past the deadline the
            # answer is the one gRPC would have given.
            if rpc.deadline is not None and time.monotonic() >= rpc.deadline:
                context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, _DEADLINE_DETAILS)
            context.abort(grpc.StatusCode.CANCELLED, _CANCELED_DETAILS)
        raise error


# ==================================================================== aio


class _AioRpc:
    """One RPC on the asyncio server.

    A coroutine handler runs in a task of its own (``run_inner``), so only
    gRPC's cancel reaches the RPC's task.  Before Python 3.11 an async
    generator's steps run in the RPC's own task, behind a ``_Guard``: an exception gRPC throws
    into the task (its cancel, for a client cancel or a deadline) reaches
    the guard before the handler's code, and the guard faults the channel
    first -- so the handler's cancel callbacks have run
    and ``ctx.cancel_reason`` is set when its ``CancelledError`` arrives,
    once.  A cancel of the operation from elsewhere (the host's abort)
    cancels the task only while the handler's code runs, never gRPC's own
    code around it.  A sync handler runs on a worker thread that the task
    awaits shielded, and is waited for.  "Faults" below: cancels this RPC
    alone with CHANNEL_FAULTED, as a fault of a channel of its own would.
    On Python >= 3.11 an async generator's steps run in tasks of their own
    too (``run_inner``, sharing one context): there a step's own
    asyncio.timeout or TaskGroup cancels its task with no message, as gRPC
    does."""

    __slots__ = ("channel", "ctx", "loop", "task", "inner", "pending", "guarding", "cancel_sent",
                 "finished", "gone", "reason")

    def __init__(self, channel: Channel, ctx: OperationContext, loop: asyncio.AbstractEventLoop) -> None:
        self.channel = channel
        self.ctx = ctx
        self.loop = loop
        self.task = asyncio.current_task()
        self.inner: Optional[asyncio.Task[Any]] = None  # a coroutine handler's own task
        self.pending: Optional[ThreadFuture[Any]] = None  # a sync handler's read of a request
        self.guarding = False  # the handler's code is running in the task
        self.cancel_sent = False  # the task's cancel was delivered (once)
        self.finished = False
        self.gone = False  # gRPC has terminated the RPC: nobody to answer
        self.reason: Optional[CancelReason] = None  # read as it ends
        ctx._add_hook(self._canceled)

    def _canceled(self) -> None:
        """The operation was canceled (any thread): interrupt what the
        handler waits on.  A sync handler's thread is not interrupted: its
        own cancel callback tells it to stop, and it is waited for."""
        call_soon(self.loop, self.deliver)
        pending = self.pending
        if pending is not None:
            pending.cancel()

    def deliver(self) -> None:
        """On the loop, so the task is suspended: inside the guard, the
        cancel lands in the handler's code."""
        task = self.inner or self.task
        if self.guarding and not self.cancel_sent and not self.finished and task is not None:
            self.cancel_sent = True
            task.cancel(f"cancelcore: RPC canceled ({_reason(self.ctx)!r})")

    def terminated(self) -> None:
        """gRPC cancelled the RPC's task: a client cancel, a deadline, or a
        server stop not made through the interceptor."""
        self.cancel_sent = True
        self.gone = True
        _adapters.cancel(self.channel, self.ctx)

    def done(self, _context: Any) -> None:
        """gRPC's done callback: the RPC is over.  Before the handler has
        finished, that is a cancel the handler did not see (say, the
        client left while gRPC was writing a streamed response)."""
        if not self.finished:
            self.gone = True
            _adapters.cancel(self.channel, self.ctx)

    def unanswered(self) -> bool:
        """Nobody waits for this RPC's answer: gRPC has terminated it, or
        its deadline (the client's, which gRPC enforces at that same moment)
        faulted it -- nothing else cancels an adapter's call that way."""
        return self.gone or _reason(self.ctx) is _FAULTED

    def guard(self, coro: Any) -> _Guard:
        return _Guard(self, coro)

    async def run_inner(self, coro: Awaitable[T], context: Optional[contextvars.Context] = None) -> T:
        """Runs a coroutine handler in a task of its own, which the RPC's
        task awaits shielded.  Then gRPC's cancel (a client cancel, a
        deadline) is the only one that reaches the RPC's task: the fault
        goes first, so the handler's cancel callbacks have run and
        ``ctx.cancel_reason`` is set when its CancelledError arrives, once;
        and what cancels the handler's own task -- its asyncio.timeout or
        wait_for, a TaskGroup whose child failed, an anyio cancel scope, all
        without a message on Python >= 3.11, as gRPC's -- stays the
        handler's business.  The task copies the context:
        ``current_operation()`` is the RPC's there too (``context``: the one
        an async generator's steps share, so what one step sets the next
        sees)."""
        inner = self.inner = _start_task(self.loop, coro, context)
        self.guarding = True
        if not inner.done() and _reason(self.ctx) is not None:
            call_soon(self.loop, self.deliver)  # canceled before it began
        try:
            return await asyncio.shield(inner)
        except asyncio.CancelledError:
            if inner.done():
                raise  # the handler's own outcome: our cancel, or its own
            # The RPC's task was cancelled: by gRPC, the one that does.
            self.terminated()
            inner.cancel(f"cancelcore: RPC canceled ({_reason(self.ctx)!r})")
            await _settle(inner)  # it is waited for, then gRPC's cancel goes on
            raise
        finally:
            self.guarding = False

    async def run_sync(self, pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
        """Awaits a sync step of the handler on a worker thread."""
        future = self.loop.run_in_executor(pool, functools.partial(_call_with, self.ctx, fn, *args))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            if not future.done():
                self.terminated()
                await _settle(future)  # a thread cannot be stopped: wait for it
            raise

    def finish(self) -> None:
        self.finished = True
        if self.cancel_sent and self.task is not None:
            _uncancel(self.task)  # the task goes on (to send a status) without it pending
        self.reason = _reason(self.ctx)
        _adapters.end(self.ctx)


def _start_task(loop: asyncio.AbstractEventLoop, coro: Any,
                context: Optional[contextvars.Context] = None) -> asyncio.Task[Any]:
    """A task for ``coro``, run at once up to its first suspension where
    asyncio can (3.12+): a handler that answers without waiting costs no
    trip through the event loop."""
    if _EAGER:
        return asyncio.Task(coro, loop=loop, eager_start=True, context=context)
    if context is not None:
        return loop.create_task(coro, context=context)  # type: ignore[call-arg,unused-ignore]
    return loop.create_task(coro)


async def _anext(responses: AsyncIterator[Any]) -> Any:
    return await responses.__anext__()


_EAGER = sys.version_info >= (3, 12)
# Python >= 3.11: a handler's own asyncio.timeout and TaskGroup cancel its
# task with no message, as gRPC does -- so an async generator's steps run in
# tasks of their own too (before 3.11 nothing of asyncio's does that, and
# the guard in the RPC's task tells them apart by the message).
_STEP_TASKS = sys.version_info >= (3, 11)


class _Guard:
    """Awaits the handler's coroutine (or one step of its async generator)
    in the RPC's task, seeing first what the task's owner throws into it."""

    __slots__ = ("_rpc", "_coro")

    def __init__(self, rpc: _AioRpc, coro: Any) -> None:
        self._rpc = rpc
        self._coro = coro
        rpc.guarding = True
        if rpc.ctx.canceled:
            call_soon(rpc.loop, rpc.deliver)  # canceled before this step began

    def __await__(self) -> _Guard:
        return self

    def __iter__(self) -> _Guard:
        return self

    def __next__(self) -> Any:
        return self.send(None)

    def send(self, value: Any) -> Any:
        try:
            return self._coro.send(value)
        except BaseException:  # StopIteration included: the step is over
            self._rpc.guarding = False
            raise

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        exc = val if val is not None else (typ() if isinstance(typ, type) else typ)
        rpc = self._rpc
        if isinstance(exc, asyncio.CancelledError) and not rpc.cancel_sent and not exc.args:
            # gRPC's cancel (grpc.aio cancels the RPC's task with no message):
            # the fault goes first.  A cancel with a message is the handler's
            # own business -- an anyio cancel scope ("Cancelled via cancel
            # scope ...": httpx's AsyncClient connecting through anyio's
            # connect_tcp cancels its own task group) -- and is caught there.
            rpc.terminated()
        try:
            return self._coro.throw(exc)
        except BaseException:
            rpc.guarding = False
            raise

    def close(self) -> None:
        self._rpc.guarding = False
        self._coro.close()


def _uncancel(task: asyncio.Task[Any]) -> None:
    uncancel = getattr(task, "uncancel", None)  # Python >= 3.11
    if uncancel is not None and task.cancelling():
        uncancel()


async def _settle(future: asyncio.Future[Any]) -> None:
    """Waits for ``future`` to be done, whatever cancels the waiter."""
    while not future.done():
        try:
            await asyncio.wait((future,))
        except asyncio.CancelledError:
            pass
    if not future.cancelled():
        future.exception()  # retrieved: the RPC's own exception is what counts


class _Requests:
    """The request stream an aio handler reads.  gRPC ends the request
    stream of a canceled RPC as if the client had half-closed it, and
    cancels the RPC's task a moment later; at the end of the stream the
    reader yields to the loop twice, so that cancel reaches the adapter
    (which faults the channel) before the handler takes the end for a
    normal one and completes."""

    __slots__ = ("_requests",)

    def __init__(self, requests: Any) -> None:
        self._requests: AsyncIterator[Any] = requests.__aiter__()

    def __aiter__(self) -> _Requests:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self._requests.__anext__()
        except StopAsyncIteration:
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            raise


class _SyncRequests:
    """A sync handler's request iterator over gRPC's async one, read from
    the handler's worker thread; a canceled RPC's read raises
    ``OperationCanceledError`` instead of waiting on."""

    def __init__(self, rpc: _AioRpc, requests: Any) -> None:
        self._rpc = rpc
        self._requests = _Requests(requests)

    def __iter__(self) -> _SyncRequests:
        return self

    def __next__(self) -> Any:
        rpc = self._rpc
        rpc.ctx.raise_if_canceled()
        future = asyncio.run_coroutine_threadsafe(self._next(), rpc.loop)
        rpc.pending = future
        if rpc.ctx.canceled:
            future.cancel()
        try:
            return future.result()
        except StopAsyncIteration:
            raise StopIteration from None
        except BaseException:
            rpc.ctx.raise_if_canceled()
            raise
        finally:
            rpc.pending = None

    async def _next(self) -> Any:
        return await self._requests.__anext__()


_DONE = object()


def _next_or_done(iterator: Iterator[Any]) -> Any:
    try:
        return next(iterator)
    except StopIteration:
        return _DONE


class AioCancellationInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Runs each RPC of a ``grpc.aio.server`` as a cancelcore operation.

    ``host``: the ServiceHost to run RPCs on; by default one is created with
    ``close_timeout`` and opened.  It is ``.host``.  RPCs that arrive when the
    host is not open are answered ``UNAVAILABLE``.  Sync handlers run on the
    interceptor's own thread pool, of ``max_workers`` threads at most
    (default 32): a sync handler holds its thread until it returns.
    """

    def __init__(self, host: Optional[ServiceHost] = None, close_timeout: float = 5.0,
                 *, max_workers: Optional[int] = None) -> None:
        if max_workers is not None:
            if isinstance(max_workers, bool) or not isinstance(max_workers, int):
                raise TypeError("max_workers must be an int or None")
            if max_workers < 1:
                raise ValueError("max_workers must be >= 1")
        self.host = _adapters.adapter_host(host, close_timeout)
        self._calls = _adapters.CallChannel(self.host)
        self._max_workers = max_workers
        self._pool: Optional[ThreadPoolExecutor] = None
        self._pool_lock = threading.Lock()
        self._closing: Optional[asyncio.Future[bool]] = None  # the host's close, once stop() began it
        self._handlers = _HandlerCache(self._wrap)

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]], handler_call_details: Any) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        return self._handlers.get(handler)

    async def stop(self, server: grpc.aio.Server, grace: Optional[float]) -> None:
        """Closes the host with ``grace`` as its close timeout -- new RPCs get
        ``UNAVAILABLE``, in-flight ones ``grace`` seconds to finish, then
        ``HOST_ABORT`` (their clients receive ``UNAVAILABLE``) -- and once
        every operation has ended (or the aborted ones had as long again,
        1 s at least) stops ``server``."""
        _check_server(server, grpc.aio.Server)
        seconds = _grace(grace)
        if self.host.state in (HostState.OPEN, HostState.FAULTED):
            # As for the sync server: bounded, the close itself goes on.
            self._closing = asyncio.ensure_future(self.host.aclose(seconds))
            await asyncio.wait((self._closing,), timeout=seconds + _after_abort(seconds))
        await server.stop(_FLUSH_GRACE)
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False)

    def _workers(self) -> ThreadPoolExecutor:
        pool = self._pool
        if pool is None:
            with self._pool_lock:
                pool = self._pool
                if pool is None:
                    pool = self._pool = ThreadPoolExecutor(
                        self._max_workers or _AIO_WORKERS, thread_name_prefix="cancelcore-grpc")
        return pool

    # ----------------------------------------------------------- wrapping

    def _wrap(self, handler: Any) -> Any:
        behavior = _behavior(handler)
        if behavior is None:
            return handler
        streaming_in = bool(handler.request_streaming)
        if inspect.isasyncgenfunction(behavior):
            code: Callable[..., Any] = self._async_gen(behavior, streaming_in)
        elif inspect.iscoroutinefunction(behavior):
            code = self._coroutine(behavior, streaming_in)
        elif handler.response_streaming:
            code = self._sync_gen(behavior, streaming_in)
        else:
            code = self._sync(behavior, streaming_in)
        return _method_handler(handler, code)

    async def _begin(self, context: Any) -> _AioRpc:
        try:
            channel, ctx = self._calls.begin(_rpc_deadline(context))
        except CancelCoreError:
            await context.abort(grpc.StatusCode.UNAVAILABLE, _CLOSED_DETAILS)
            raise  # not reached: abort raises
        rpc = _AioRpc(channel, ctx, asyncio.get_running_loop())
        context.add_done_callback(rpc.done)
        return rpc

    def _coroutine(self, behavior: Callable[..., Awaitable[Any]], streaming_in: bool) -> Callable[..., Awaitable[Any]]:
        async def handle(request: Any, context: Any) -> Any:
            rpc = await self._begin(context)
            ctx = rpc.ctx
            if streaming_in:
                request = _Requests(request)
            token = _current.set(ctx)
            try:
                response = await rpc.run_inner(behavior(request, context))
            except BaseException as exc:
                if rpc.unanswered():
                    _quiet(exc)
                if _reason(ctx) is not _HOST_ABORT:
                    raise
            else:
                if rpc.gone or _reason(ctx) is not _HOST_ABORT or response is not None:
                    return response
            finally:
                _current.reset(token)
                rpc.finish()
            await _cut(context)
        return handle

    def _sync(self, behavior: Callable[..., Any], streaming_in: bool) -> Callable[..., Awaitable[Any]]:
        async def handle(request: Any, context: Any) -> Any:
            rpc = await self._begin(context)
            ctx = rpc.ctx
            argument = _SyncRequests(rpc, request) if streaming_in else request
            try:
                response = await rpc.run_sync(self._workers(), behavior, argument, context)
            except BaseException as exc:
                if rpc.unanswered():
                    _quiet(exc)
                if _reason(ctx) is not _HOST_ABORT:
                    raise
            else:
                if rpc.gone or _reason(ctx) is not _HOST_ABORT or response is not None:
                    return response
            finally:
                rpc.finish()
            await _cut(context)
        return handle

    def _async_gen(self, behavior: Callable[..., AsyncIterator[Any]], streaming_in: bool) -> Callable[..., AsyncIterator[Any]]:
        async def handle(request: Any, context: Any) -> AsyncIterator[Any]:
            rpc = await self._begin(context)
            ctx = rpc.ctx
            if streaming_in:
                request = _Requests(request)
            # Set for the rest of the RPC's task, which serves this RPC only:
            # the generator's steps run in it, between gRPC's writes.
            _current.set(ctx)
            responses = behavior(request, context)
            steps = contextvars.copy_context() if _STEP_TASKS else None
            cut = False
            try:
                while True:
                    try:
                        if steps is not None:
                            item = await rpc.run_inner(_anext(responses), steps)
                        else:
                            item = await rpc.guard(responses.__anext__())
                    except StopAsyncIteration:
                        break
                    except BaseException as exc:
                        if rpc.unanswered():
                            _quiet(exc)
                        if _reason(ctx) is not _HOST_ABORT:
                            raise
                        cut = True
                        break
                    yield item
                    if ctx.canceled:
                        cut = not rpc.gone and _reason(ctx) is _HOST_ABORT
                        break
            finally:
                try:
                    await _settle(asyncio.ensure_future(_aclose(ctx, responses)))
                finally:
                    rpc.finish()
            if cut or (not rpc.gone and rpc.reason is _HOST_ABORT):
                await _cut(context)  # a stream cut short, however it ended
        return handle

    def _sync_gen(self, behavior: Callable[..., Any], streaming_in: bool) -> Callable[..., AsyncIterator[Any]]:
        async def handle(request: Any, context: Any) -> AsyncIterator[Any]:
            rpc = await self._begin(context)
            ctx = rpc.ctx
            pool = self._workers()
            argument = _SyncRequests(rpc, request) if streaming_in else request
            responses: Optional[Iterator[Any]] = None
            cut = False
            try:
                try:
                    responses = iter(await rpc.run_sync(pool, behavior, argument, context))
                    while True:
                        # gRPC would feed a sync generator through a one-slot
                        # queue nothing drains after a cancel; stepping it
                        # here lets it be stopped and closed.
                        item = await rpc.run_sync(pool, _next_or_done, responses)
                        if item is _DONE:
                            break
                        yield item
                        if ctx.canceled:
                            cut = not rpc.gone and _reason(ctx) is _HOST_ABORT
                            break
                except (GeneratorExit, asyncio.CancelledError):
                    raise
                except BaseException as exc:
                    if rpc.unanswered():
                        _quiet(exc)
                    if _reason(ctx) is not _HOST_ABORT:
                        raise
                    cut = True
            finally:
                try:
                    close = getattr(responses, "close", None)
                    if close is not None:
                        await _settle(asyncio.ensure_future(rpc.loop.run_in_executor(
                            pool, functools.partial(_call_with, ctx, close))))
                finally:
                    rpc.finish()
            if cut or (not rpc.gone and rpc.reason is _HOST_ABORT):
                await _cut(context)  # a stream cut short, however it ended
        return handle


async def _aclose(ctx: OperationContext, responses: Any) -> None:
    _current.set(ctx)
    aclose = getattr(responses, "aclose", None)
    if aclose is not None:
        await aclose()


def _quiet(exc: BaseException) -> NoReturn:
    """The handler of an RPC gRPC has terminated (its client left, its
    deadline passed) raised: nobody waits for its answer, so it ends as a
    cancelled task, which grpc.aio does not log as a servicer error."""
    if isinstance(exc, Exception):
        raise asyncio.CancelledError() from exc
    raise exc


async def _cut(context: Any) -> None:
    """Answers an RPC cut by the host's abort: grpc.aio would send no status
    for a cancelled handler, leaving a client without a deadline waiting."""
    await context.abort(grpc.StatusCode.UNAVAILABLE, _SHUTDOWN_DETAILS)


# ================================================================ clients
#
# An outgoing call made inside an operation is tied to it: it carries what
# is left of the operation's deadline, it is not started for an operation
# already canceled, and it is cancelled (RST_STREAM, status CANCELLED at the
# server) the moment the operation is canceled, from whichever thread that
# happens on.  Outside an operation the interceptors only pass the call on.


_NO_OPERATION = (None, None)


def _operation() -> tuple[Optional[OperationContext], Optional[float]]:
    """The operation an outgoing call belongs to, and the seconds left of
    its deadline (None: no deadline).  No operation outside one, nor for one
    that has ended: a thread or task that outlived its operation has nothing
    left to propagate."""
    ctx = _current.get()
    if ctx is None:
        return _NO_OPERATION
    try:
        return ctx, ctx.time_remaining()
    except CancelCoreError:  # ended: InvalidOperationError
        return _NO_OPERATION


def _timeout(timeout: Optional[float], remaining: Optional[float]) -> Optional[float]:
    """What the call may take: the caller's timeout, cut to what is left of
    the operation's deadline (gRPC sends it on: the server's own deadline)."""
    if remaining is None:
        return timeout
    if timeout is None or remaining < timeout:
        return remaining
    return timeout


def _reason_name(ctx: OperationContext) -> str:
    reason = ctx.cancel_reason
    return reason.name if reason is not None else "canceled"


def _refuse(ctx: OperationContext) -> NoReturn:
    reason = ctx.cancel_reason
    raise OperationCanceledError(reason if reason is not None else _FAULTED,
                                 "the operation was canceled: the call was not started")


class _Details(grpc.ClientCallDetails):  # type: ignore[misc]
    """The call's details with the timeout replaced."""

    __slots__ = ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")

    def __init__(self, details: Any, timeout: Optional[float]) -> None:
        self.method = details.method
        self.timeout = timeout
        self.metadata = details.metadata
        self.credentials = getattr(details, "credentials", None)
        self.wait_for_ready = getattr(details, "wait_for_ready", None)
        self.compression = getattr(details, "compression", None)


class _Link:
    """The one outgoing call an operation's hook cancels.  It lets go of
    the call once the call is done, so an operation making many calls keeps
    a small object per call, not the calls and their responses."""

    __slots__ = ("call", "cut", "loop", "ctx")

    def __init__(self, call: Any, loop: Optional[asyncio.AbstractEventLoop] = None) -> None:
        self.call: Any = call
        self.cut = False  # the operation's cancel reached the call
        self.loop = loop
        self.ctx: Optional[OperationContext] = None  # while the hook is on it

    def __call__(self) -> None:
        """The operation's hook (any thread, may run twice)."""
        call = self.call
        if call is None:
            return
        self.cut = True  # before the cancel: a waiter it wakes reads this
        if self.loop is None:
            call.cancel()
        else:  # an asyncio call is cancelled on its own loop
            call_soon(self.loop, call.cancel)

    def done(self, _call: Any = None) -> None:
        self.call = None
        ctx, self.ctx = self.ctx, None
        if ctx is not None:
            ctx._remove_hook(self)


def _link(ctx: OperationContext, call: Any, loop: Optional[asyncio.AbstractEventLoop] = None) -> _Link:
    link = _Link(call, loop)
    link.ctx = ctx
    ctx._add_hook(link)  # runs at once if the operation was canceled meanwhile
    add_done = getattr(call, "add_done_callback", None)
    if add_done is not None:
        add_done(link.done)  # at once for a call already done
    return link


def _future_starter(continuation: Callable[..., Any]) -> Optional[Callable[[Any, Any], Any]]:
    """The non-blocking way to start the call ``continuation`` would make.

    Why a grpcio internal: for a blocking call (``stub.Method(request)``,
    ``.with_call``) grpcio's continuation makes the whole RPC before it
    returns, so an interceptor gets no handle it could cancel while the
    calling thread is blocked.  The continuation is a closure over its
    multi-callable (``self``), whose ``_thunk(method)`` is the next channel's
    multi-callable for the method (the next interceptor's, or the channel's
    own); its ``.future()`` starts the same call, through the rest of the
    chain, and returns a call that ``cancel()`` ends from any thread, which
    also wakes the thread blocked in its ``result()``.  Checked on grpcio
    1.85 (tests/test_grpc_propagation.py fails if it changes); when the
    closure is not what is expected this returns None and the caller falls
    back to the plain continuation, bounded by the deadline it forwards."""
    code = getattr(continuation, "__code__", None)
    closure = getattr(continuation, "__closure__", None)
    if code is None or not closure:
        return None
    try:
        owner = dict(zip(code.co_freevars, closure))["self"].cell_contents
    except (KeyError, ValueError):  # no such variable, or an empty cell
        return None
    thunk = getattr(owner, "_thunk", None)
    if not callable(thunk) or not isinstance(owner, (grpc.UnaryUnaryMultiCallable,
                                                     grpc.StreamUnaryMultiCallable)):
        return None

    def start(details: Any, request: Any) -> Any:
        return thunk(details.method).future(
            request, timeout=details.timeout, metadata=details.metadata,
            credentials=details.credentials, wait_for_ready=details.wait_for_ready,
            compression=details.compression)

    return start


def _cancellation(call: Any, link: _Link) -> bool:
    """Whether ``call`` ended because the operation cancelled it."""
    if not link.cut:
        return False
    try:
        return bool(call.cancelled()) or call.code() is grpc.StatusCode.CANCELLED
    except Exception:  # not a full call: the cut is what we know
        return True


class _Call(grpc.Call, grpc.Future):  # type: ignore[misc]
    """An outgoing call of an operation, as grpcio's own: a call, a future
    and (streamed responses) an iterator.  Reading the result of a call the
    operation's cancel cut -- ``result()``, ``exception()``, the blocking
    call, iterating -- raises ``OperationCanceledError`` with the
    operation's reason, where grpcio would raise ``FutureCancelledError``
    or a ``CANCELLED`` RpcError "Locally cancelled by application"."""

    __slots__ = ("_call", "_ctx", "_link")

    def __init__(self, call: Any, ctx: OperationContext, link: _Link) -> None:
        self._call = call
        self._ctx = ctx
        self._link = link

    def _canceled(self, exc: BaseException) -> NoReturn:
        if _cancellation(self._call, self._link):
            reason = self._ctx.cancel_reason
            raise OperationCanceledError(reason if reason is not None else _FAULTED,
                                         "the operation was canceled: the call was cancelled") from exc
        raise exc

    # grpc.Future
    def result(self, timeout: Optional[float] = None) -> Any:
        try:
            return self._call.result(timeout)
        except (grpc.RpcError, grpc.FutureCancelledError) as exc:
            self._canceled(exc)

    def exception(self, timeout: Optional[float] = None) -> Optional[BaseException]:
        try:
            error: Optional[BaseException] = self._call.exception(timeout)
        except grpc.FutureCancelledError as exc:
            self._canceled(exc)
        return error

    def traceback(self, timeout: Optional[float] = None) -> Any:
        return self._call.traceback(timeout)

    def add_done_callback(self, fn: Callable[[Any], object]) -> None:
        self._call.add_done_callback(lambda _call: fn(self))

    def cancel(self) -> bool:
        return bool(self._call.cancel())

    def cancelled(self) -> bool:
        return bool(self._call.cancelled())

    def running(self) -> bool:
        return bool(self._call.running())

    def done(self) -> bool:
        return bool(self._call.done())

    # grpc.Call / grpc.RpcContext
    def initial_metadata(self) -> Any:
        return self._call.initial_metadata()

    def trailing_metadata(self) -> Any:
        return self._call.trailing_metadata()

    def code(self) -> Any:
        return self._call.code()

    def details(self) -> Any:
        return self._call.details()

    def is_active(self) -> bool:
        return bool(self._call.is_active())

    def time_remaining(self) -> Optional[float]:
        return self._call.time_remaining()  # type: ignore[no-any-return]

    def add_callback(self, callback: Callable[[], object]) -> bool:
        return bool(self._call.add_callback(callback))

    # streamed responses
    def __iter__(self) -> _Call:
        return self

    def __next__(self) -> Any:
        try:
            return next(self._call)
        except grpc.RpcError as exc:
            self._canceled(exc)

    def __getattr__(self, name: str) -> Any:  # debug_error_string() and the like
        if name.startswith("_"):  # never our own slots (unset while copying)
            raise AttributeError(name)
        return getattr(self._call, name)


def _intercept(continuation: Callable[..., Any], details: Any, request: Any, blocking: bool) -> Any:
    ctx, remaining = _operation()
    if ctx is None:
        return continuation(details, request)
    if ctx.canceled:
        _refuse(ctx)
    details = _Details(details, _timeout(details.timeout, remaining))
    start = _future_starter(continuation) if blocking else None
    # Without a starter a blocking call returns once it is over (the
    # fallback: bounded by the deadline it forwards); ``.future()`` and
    # streaming calls return at once, and are linked either way.
    call = continuation(details, request) if start is None else start(details, request)
    if not callable(getattr(call, "cancel", None)):  # another interceptor's answer, not a call
        return call
    return _Call(call, ctx, _link(ctx, call))


_SYNC_KINDS: tuple[Any, ...] = (grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                                 grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor)


class ClientInterceptor(*_SYNC_KINDS):  # type: ignore[misc]
    """The four kinds of client interceptor in one, for
    ``grpc.intercept_channel``: see ``client_interceptor()``."""

    def intercept_unary_unary(self, continuation: Callable[..., Any], client_call_details: Any,
                              request: Any) -> Any:
        return _intercept(continuation, client_call_details, request, True)

    def intercept_unary_stream(self, continuation: Callable[..., Any], client_call_details: Any,
                               request: Any) -> Any:
        return _intercept(continuation, client_call_details, request, False)

    def intercept_stream_unary(self, continuation: Callable[..., Any], client_call_details: Any,
                               request_iterator: Any) -> Any:
        return _intercept(continuation, client_call_details, request_iterator, True)

    def intercept_stream_stream(self, continuation: Callable[..., Any], client_call_details: Any,
                                request_iterator: Any) -> Any:
        return _intercept(continuation, client_call_details, request_iterator, False)


def client_interceptor() -> ClientInterceptor:
    """Ties the calls of a ``grpc`` channel to the operation that makes them:
    ``grpc.intercept_channel(channel, cancelcore.grpc.client_interceptor())``.

    A call made inside an operation (``current_operation()`` is not None):

    - is given the timeout ``min(its own, ctx.time_remaining())`` when the
      operation has a deadline, so the next server sees what is left of it
      as its own deadline (and ends the call ``DEADLINE_EXCEEDED`` then);
    - is not started if the operation is already canceled: the call raises
      ``OperationCanceledError`` (``.future()`` and streaming calls raise it
      from ``result()`` / iteration, as grpcio reports interceptor errors);
    - is cancelled the moment the operation is canceled, from any thread:
      the server sees the stream reset (``CANCELLED``) and, if it runs
      cancelcore, faults its own operation (``CHANNEL_FAULTED``).  This
      holds for a blocking call too: its thread wakes at once.  Reading the
      result of a call so cut raises ``OperationCanceledError`` (with the
      operation's reason) rather than grpcio's ``FutureCancelledError`` or
      ``CANCELLED`` error.  Other outcomes are grpcio's own.

    Outside an operation, or for one that has ended, the call goes on as if
    there were no interceptor.  One interceptor serves any number of
    channels and threads."""
    return ClientInterceptor()


# ------------------------------------------------------------ aio clients


async def _aio_intercept(continuation: Callable[..., Awaitable[Any]], details: Any, request: Any) -> Any:
    ctx, remaining = _operation()
    if ctx is None:
        return await continuation(details, request)
    if ctx.canceled:
        # A cancelled call, as grpc.aio has them: grpcio (before 1.85)
        # expects nothing else from an interceptor's task when it collects
        # the call, and would report any other exception as unraisable.
        raise asyncio.CancelledError(f"cancelcore: the operation was canceled ({_reason_name(ctx)}): "
                                     "the call was not started")
    details = grpc.aio.ClientCallDetails(details.method, _timeout(details.timeout, remaining), details.metadata,
                                         details.credentials, details.wait_for_ready)
    call = await continuation(details, request)
    _link(ctx, call, asyncio.get_running_loop())
    return call


class _AioUnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(self, continuation: Callable[..., Awaitable[Any]], client_call_details: Any,
                                    request: Any) -> Any:
        return await _aio_intercept(continuation, client_call_details, request)


class _AioUnaryStream(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_stream(self, continuation: Callable[..., Awaitable[Any]], client_call_details: Any,
                                     request: Any) -> Any:
        return await _aio_intercept(continuation, client_call_details, request)


class _AioStreamUnary(grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_unary(self, continuation: Callable[..., Awaitable[Any]], client_call_details: Any,
                                     request_iterator: Any) -> Any:
        return await _aio_intercept(continuation, client_call_details, request_iterator)


class _AioStreamStream(grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_stream(self, continuation: Callable[..., Awaitable[Any]], client_call_details: Any,
                                      request_iterator: Any) -> Any:
        return await _aio_intercept(continuation, client_call_details, request_iterator)


def aio_client_interceptor() -> list[Any]:
    """The same for ``grpc.aio`` channels, as a list of four interceptors,
    one per kind of call (grpc.aio files each interceptor under one kind
    only): ``grpc.aio.insecure_channel(target,
    interceptors=cancelcore.grpc.aio_client_interceptor())``, or
    ``interceptors=[*aio_client_interceptor(), *others]``.

    Inside an operation a call gets the timeout ``min(its own,
    ctx.time_remaining())``, and is cancelled on its event loop the moment
    the operation is canceled, from any thread: the server sees the stream
    reset (``CANCELLED``), and awaiting or iterating the call raises
    ``asyncio.CancelledError``, as for any cancelled grpc.aio call.  If the
    operation is already canceled the call is not started and is a
    cancelled call from the outset (the same ``CancelledError``).  The
    handler's own task is being cancelled then too when it runs under a
    cancelcore adapter or ``host.dispatch``.  Outside an operation the calls
    go on as if there were no interceptor."""
    return [_AioUnaryUnary(), _AioUnaryStream(), _AioStreamUnary(), _AioStreamStream()]
