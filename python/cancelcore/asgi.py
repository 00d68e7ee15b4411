"""Real servers: client disconnects and server shutdown as call cancellation.

``CancellationMiddleware`` wraps any ASGI 3 application.  Each HTTP request
runs as an operation on a channel of its own, so:

- the client disconnecting before the response is complete faults that
  channel: the request's cancel callbacks fire once with ``CHANNEL_FAULTED``
  and its task is cancelled (a disconnect delivered twice fires nothing
  twice: G1);
- a request that completes normally fires no cancel, and its free-state
  callback runs once when it ends;
- when the server gives up on in-flight requests at shutdown (uvicorn's
  ``timeout_graceful_shutdown``), they are canceled with ``HOST_ABORT``, and
  lifespan shutdown closes the host (waiting up to ``close_timeout``, then
  aborting).

Inside a request, ``cancelcore.current_operation()`` is its context, also in
sync endpoints a framework runs in a thread pool (they copy the context).
``serve()`` runs an app under uvicorn with this wiring.
"""

from __future__ import annotations

import asyncio
import functools
import math
from typing import Any, Awaitable, Callable, MutableMapping, Optional

from ._dispatch import call_soon, run_async
from ._enums import HostState
from ._errors import CancelCoreError
from ._host import ServiceHost
from ._operation import OperationContext

try:  # the cancel scopes of Starlette, FastAPI and most ASGI frameworks
    import anyio
except ImportError:  # pragma: no cover - plain asyncio apps
    anyio = None  # type: ignore[assignment]

__all__ = ["CancellationMiddleware", "serve"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# The message uvicorn cancels request tasks with when its graceful shutdown
# times out; other servers' shutdown cancellations are recognised by the
# host no longer being open.
_SHUTDOWN_HINTS = ("graceful shutdown",)


class _Request:
    """One HTTP request: what it sent and received, and the reading of the
    server's messages.  The app reads them itself while it wants to; only
    when it runs on without reading does a pump task take over, so that a
    disconnect is noticed then too.  A handler that finishes without
    yielding costs no pump at all."""

    __slots__ = ("receive", "send", "channel", "task", "inbox", "pump", "reading",
                 "response_started", "response_complete", "disconnected", "canceled")

    def __init__(self, receive: Receive, send: Send, channel: Any) -> None:
        self.receive = receive
        self.send = send
        self.channel = channel
        self.task: Optional[asyncio.Task[Any]] = None
        self.inbox: Optional[asyncio.Queue[Message]] = None
        self.pump: Optional[asyncio.Future[None]] = None
        self.reading = False
        self.response_started = False
        self.response_complete = False
        self.disconnected = False
        self.canceled = False

    async def app_receive(self) -> Message:
        inbox = self.inbox
        if inbox is not None:  # the pump reads for the app
            if self.disconnected and inbox.empty():
                return {"type": "http.disconnect"}
            return await inbox.get()
        if self.disconnected:
            return {"type": "http.disconnect"}
        self.reading = True
        try:
            message = await self.receive()
        finally:
            self.reading = False
        if self._arrived(message):
            # Let the cancellation the fault scheduled reach the task first:
            # it sees CancelledError, not a disconnect that outran it.
            await asyncio.sleep(0)
        else:
            asyncio.get_running_loop().call_soon(self.watch)
        return message

    async def app_send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.response_started = True
        elif kind == "http.response.body" and not message.get("more_body", False):
            self.response_complete = True
        await self.send(message)

    def _arrived(self, message: Message) -> bool:
        """Notes a server message; True for the disconnect, which faults
        the request's channel unless the response was complete."""
        if message["type"] != "http.disconnect":
            return False
        self.disconnected = True
        if not self.response_complete:
            self.channel.fault()  # idempotent: a second disconnect is a no-op
        return True

    def watch(self) -> None:
        """Starts the pump if the app runs on without reading."""
        task = self.task
        if (self.pump is None and not self.reading and not self.disconnected
                and task is not None and not task.done()):
            self.inbox = asyncio.Queue()
            self.pump = asyncio.ensure_future(self._pump(self.inbox))

    async def _pump(self, inbox: asyncio.Queue[Message]) -> None:
        while True:
            message = await self.receive()
            if self._arrived(message):
                # As in app_receive: the cancellation goes first.
                asyncio.get_running_loop().call_soon(inbox.put_nowait, message)
                return
            inbox.put_nowait(message)


class CancellationMiddleware:
    """Runs each HTTP request of ``app`` as a cancelcore operation.

    ``host``: the ServiceHost to run requests on; by default one is created
    with ``close_timeout`` and opened.  It is ``.host``.  Requests that arrive
    when the host is not open get ``503 Service Unavailable``.
    """

    def __init__(self, app: ASGIApp, host: Optional[ServiceHost] = None, close_timeout: float = 5.0) -> None:
        if not callable(app):
            raise TypeError("app must be an ASGI application")
        if host is None:
            host = ServiceHost(close_timeout=close_timeout)
            host.open()
        elif not isinstance(host, ServiceHost):
            raise TypeError("host must be a ServiceHost or None")
        self.app = app
        self.host = host

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    # ----------------------------------------------------------------- http

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            channel = self.host.accept_channel()
        except CancelCoreError:
            await _unavailable(send)
            return
        request = _Request(receive, send, channel)
        app_receive, app_send = request.app_receive, request.app_send

        loop = asyncio.get_running_loop()
        # The app runs in a task of its own, so the server cancelling ours
        # does not cut it short (a sync endpoint's thread must be waited
        # for); `done` is what we wait on, completed by the app's task as it
        # finishes -- one event-loop pass sooner than waiting on the task.
        done: asyncio.Future[None] = loop.create_future()

        async def operation(ctx: OperationContext) -> None:
            try:
                if anyio is None:
                    await self.app(scope, app_receive, app_send)
                else:
                    # A cancel scope rather than Task.cancel: anyio shields
                    # the wait for a sync endpoint's worker thread from it,
                    # so the operation ends (and frees its state) only once
                    # the thread has returned.
                    with anyio.CancelScope() as cancel_scope:
                        ctx._add_hook(functools.partial(call_soon, loop, cancel_scope.cancel))
                        await self.app(scope, app_receive, app_send)
                    request.canceled = cancel_scope.cancelled_caught
            except asyncio.CancelledError:
                request.canceled = True  # our own Task.cancel (no anyio)
            except BaseException as exc:
                if not done.done():
                    done.set_exception(exc)  # for the server, through us
                return
            if not done.done():
                done.set_result(None)

        with channel:
            try:
                task = run_async(channel, operation, (), cancel_task=anyio is None)
            except CancelCoreError:
                await _unavailable(send)
                return
            request.task = task
            loop.call_soon(request.watch)  # after the app's first step
            try:
                await done
            except asyncio.CancelledError as exc:
                if not task.done():
                    # The server cancelled the request itself.  Let it unwind
                    # so its callbacks and free-state run, then step aside.
                    shutdown = self._server_gave_up(channel, exc)
                    await asyncio.wait([task])
                    if not shutdown:
                        raise
                    # At shutdown the request is over and accounted for:
                    # answer 503 if nothing was sent yet, and end quietly
                    # rather than as an "exception in ASGI application".
                    if not request.response_started and not request.disconnected:
                        await _unavailable(send)
                    current = asyncio.current_task()
                    if current is not None and hasattr(current, "uncancel"):
                        current.uncancel()
                    return
                raise
            finally:
                if request.pump is not None:
                    request.pump.cancel()
            # Canceled by us: the client left, or the host was aborted while
            # the client waits -- then it gets a 503 rather than nothing.
            if request.canceled and not request.response_started and not request.disconnected:
                await _unavailable(send)

    def _server_gave_up(self, channel: Any, exc: asyncio.CancelledError) -> bool:
        """At shutdown that is the host's abort (G7): True.  Otherwise
        (say, an outer timeout) only this request's channel faults."""
        message = " ".join(str(a) for a in exc.args)
        if any(h in message for h in _SHUTDOWN_HINTS) or self.host.state != HostState.OPEN:
            self.host.abort()
            return True
        channel.fault()
        return False

    # ------------------------------------------------------------- lifespan

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        received = False

        async def lifespan_receive() -> Message:
            nonlocal received
            received = True
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                await self.aclose()
            return message

        try:
            await self.app(scope, lifespan_receive, send)
        except Exception:
            if received:
                raise
            # An app without lifespan support: speak the protocol for it,
            # so the host is still closed at shutdown.
            await _own_lifespan(receive, send, self.aclose)

    async def aclose(self) -> bool:
        """Closes the host (G8) without blocking the event loop: in-flight
        requests get the close timeout to finish, then are canceled with
        ``HOST_ABORT``.  Returns what ``ServiceHost.close`` returns; True if
        the host was not open."""
        if self.host.state not in (HostState.OPEN, HostState.FAULTED):
            return True
        return await self.host.aclose()


async def _unavailable(send: Send) -> None:
    await send({"type": "http.response.start", "status": 503,
                "headers": [(b"content-type", b"text/plain"), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": b"service unavailable\n"})


async def _own_lifespan(receive: Receive, send: Send, close: Callable[[], Awaitable[bool]]) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await close()
            await send({"type": "lifespan.shutdown.complete"})
            return


def serve(
    app: ASGIApp,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    close_timeout: float = 5.0,
    service_host: Optional[ServiceHost] = None,
    **uvicorn_options: Any,
) -> None:
    """Runs ``app`` under uvicorn with cancellation-aware graceful shutdown:
    at shutdown, in-flight requests get ``close_timeout`` seconds to finish,
    then their cancel callbacks fire with ``HOST_ABORT`` and their state is
    freed as they unwind.  ``app`` is wrapped in ``CancellationMiddleware``
    unless it already is one."""
    import uvicorn

    if not isinstance(app, CancellationMiddleware):
        app = CancellationMiddleware(app, host=service_host, close_timeout=close_timeout)
    uvicorn_options.setdefault("lifespan", "on")
    uvicorn_options.setdefault("timeout_graceful_shutdown", math.ceil(close_timeout))
    config = uvicorn.Config(app, host=host, port=port, **uvicorn_options)
    uvicorn.Server(config).run()
