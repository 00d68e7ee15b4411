"""aiohttp: client disconnects and server shutdown as call cancellation.

``setup(app)`` installs a middleware and shutdown hooks on an
``aiohttp.web.Application``.  Each request runs as an operation of the
adapter's host, so:

- the client disconnecting before the response is complete cancels that
  request alone, as a fault of a channel of its own would: its cancel
  callbacks fire once with ``CHANNEL_FAULTED`` and its handler is cancelled, whatever the server's
  ``handler_cancellation`` says (``web.StreamResponse`` handlers too);
- a request that completes fires no cancel; its free-state callback runs
  once, after the handler has finished;
- at shutdown the host is closed (``on_shutdown``, which aiohttp awaits
  before its own ``shutdown_timeout`` starts): in-flight requests get the
  host's close timeout, then ``HOST_ABORT`` -- handlers cancelled, clients
  still there answered ``503`` -- before aiohttp would cancel them itself,
  even when the close timeout is the longer one.

Inside a handler ``cancelcore.current_operation()`` is the request's
context.  The handler's own ``register_for_cancel`` is never used by the
adapter (G2).

What aiohttp does without this (3.14): ``handler_cancellation`` is off by
default, so a disconnect shows only as ``request.transport`` turning
``None``; at shutdown, in-flight handlers are cancelled after
``shutdown_timeout`` with no reason given.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Optional

from aiohttp import web

from . import _adapters
from ._dispatch import call_soon
from ._enums import HostState
from ._errors import CancelCoreError
from ._host import Channel, ServiceHost
from ._operation import OperationContext, _current

__all__ = ["setup"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

class _Watch(asyncio.Protocol):
    """Stands between a connection's transport and aiohttp's protocol to
    hear the connection being lost, which aiohttp itself turns into a
    handler cancel only with ``handler_cancellation``.  One per connection;
    ``requests`` are the requests in flight on it (one at a time in
    HTTP/1.1)."""

    __slots__ = ("protocol", "requests")

    def __init__(self, protocol: Any) -> None:
        self.protocol = protocol
        self.requests: set[_Request] = set()

    def connection_made(self, transport: Any) -> None:  # pragma: no cover - installed later
        self.protocol.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.protocol.data_received(data)

    def eof_received(self) -> Optional[bool]:
        return self.protocol.eof_received()  # type: ignore[no-any-return]

    def pause_writing(self) -> None:
        self.protocol.pause_writing()

    def resume_writing(self) -> None:
        self.protocol.resume_writing()

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        # The requests' cancels go first: their handlers see CHANNEL_FAULTED
        # set, whatever aiohttp does next.
        try:
            for request in list(self.requests):
                request.gone()
        finally:
            self.protocol.connection_lost(exc)


class _Request:
    """One request's operation and the plumbing that cancels its handler."""

    __slots__ = ("channel", "ctx", "task", "loop", "finished", "cancel_sent")

    def __init__(self, channel: Channel, ctx: OperationContext, task: asyncio.Task[Any],
                 loop: asyncio.AbstractEventLoop) -> None:
        self.channel = channel
        self.ctx = ctx
        self.task = task
        self.loop = loop
        self.finished = False
        self.cancel_sent = False

    def gone(self) -> None:
        """The client's connection is lost (on the loop): this request
        alone is canceled (CHANNEL_FAULTED)."""
        if not self.finished:
            _adapters.cancel(self.channel, self.ctx)

    def canceled(self) -> None:
        """The operation was canceled (any thread): cancel the handler."""
        call_soon(self.loop, self._cancel_task)

    def _cancel_task(self) -> None:
        # On the loop, so this cannot race the request's end: once the
        # middleware has finished, the task serves the next request.
        if not self.finished and not self.cancel_sent:
            self.cancel_sent = True
            self.task.cancel(f"cancelcore: request canceled ({_adapters.reason(self.ctx)!r})")


class _Adapter:
    def __init__(self, host: ServiceHost) -> None:
        self.host = host
        self.calls = _adapters.CallChannel(host)
        self.closing: Optional[asyncio.Future[bool]] = None  # the host's close, once begun

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            # The caller's deadline (DESIGN 4.4); a malformed one is ignored.
            channel, ctx = self.calls.begin(_adapters.deadline_from_header(
                request.headers.get(_adapters.DEADLINE_HEADER)))
        except CancelCoreError:
            return _unavailable()
        task = asyncio.current_task()
        assert task is not None
        rq = _Request(channel, ctx, task, task.get_loop())
        transport = request.transport
        watch: Optional[_Watch] = None
        if transport is None or transport.is_closing():
            rq.gone()  # the client left before its handler started
        else:
            protocol: Any = transport.get_protocol()
            if type(protocol) is _Watch:
                watch = protocol
            else:  # the connection's first request
                watch = _Watch(protocol)
                transport.set_protocol(watch)
            watch.requests.add(rq)
        ctx._add_hook(rq.canceled)
        token = _current.set(ctx)
        response: Optional[web.StreamResponse] = None
        try:
            response = await handler(request)
            return response
        except asyncio.CancelledError:
            if not rq.cancel_sent:
                # aiohttp's own cancel (handler_cancellation, or shutdown
                # without our hooks having run): the client left, or the
                # server gave up on the request.
                if _gone(request):
                    rq.gone()
                raise
            # Cut while its client still waits (shutdown, or its deadline:
            # CHANNEL_FAULTED with the client there): it gets a 503, as
            # under the ASGI middleware, rather than a dropped connection.
            if _adapters.reason(ctx) is not None and not _gone(request) \
                    and not _answered(request):
                _uncancel(task)
                rq.cancel_sent = False
                return _unavailable()
            raise
        except BaseException as exc:
            if _gone(request):
                rq.gone()  # a write failed before the loss reached us
                if isinstance(exc, Exception):
                    # Nobody waits for the answer: end as a cancelled
                    # request, which aiohttp does not log as an error.
                    raise asyncio.CancelledError() from exc
            raise
        finally:
            if response is not None and not response.prepared and _gone(request):
                rq.gone()  # the client left before its answer
            rq.finished = True
            _current.reset(token)
            if watch is not None:
                watch.requests.discard(rq)
            try:
                _adapters.end(ctx)
            finally:
                if rq.cancel_sent:
                    # Our cancel was absorbed by the handler: the task goes
                    # on serving this connection without it pending.
                    _uncancel(task)

    async def on_shutdown(self, app: web.Application) -> None:
        """aiohttp awaits this before starting its own shutdown timeout:
        in-flight requests get the close timeout, then ``HOST_ABORT``.  The
        close goes on until every request has ended (G8); aiohttp's
        shutdown goes on once the aborted ones had as long again (1 s at
        least), so a handler that ignores its cancel cannot hang it."""
        host = self.host
        if self.closing is None and host.state in (HostState.OPEN, HostState.FAULTED):
            self.closing = asyncio.ensure_future(host.aclose())
        if self.closing is not None:
            await asyncio.wait((self.closing,), timeout=host.close_timeout + max(1.0, host.close_timeout))

    async def on_cleanup(self, app: web.Application) -> None:
        await self.on_shutdown(app)


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _answered(request: web.Request) -> bool:
    """Whether bytes of a response are on the wire: a prepared response's
    head is buffered until its first write, and until then a 503 can still
    replace it."""
    return getattr(request.writer, "output_size", 0) > 0


def _uncancel(task: asyncio.Task[Any]) -> None:
    uncancel = getattr(task, "uncancel", None)  # Python >= 3.11
    if uncancel is not None and task.cancelling():
        uncancel()


def _unavailable() -> web.Response:
    response = web.Response(status=503, text="service unavailable\n")
    response.force_close()
    return response


def setup(app: web.Application, host: Optional[ServiceHost] = None, close_timeout: float = 5.0) -> ServiceHost:
    """Runs each request of ``app`` as a cancelcore operation and closes the
    host at shutdown; returns the host.

    ``host``: the ServiceHost to run requests on (it keeps its own close
    timeout); by default one is created with ``close_timeout`` and opened.
    Requests that arrive when the host is not open get ``503``.
    """
    if not isinstance(app, web.Application):
        raise TypeError(f"app must be an aiohttp.web.Application, not {type(app).__name__}")
    service_host = _adapters.adapter_host(host, close_timeout)
    if app.frozen:
        raise RuntimeError("setup() must be called before the application starts")
    adapter = _Adapter(service_host)
    # Outermost, so the operation spans every other middleware too.
    app.middlewares.insert(0, adapter.middleware)
    app.on_shutdown.append(adapter.on_shutdown)
    app.on_cleanup.append(adapter.on_cleanup)
    return service_host
