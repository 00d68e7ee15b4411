"""Real servers: client disconnects and server shutdown as call cancellation.

``CancellationMiddleware`` wraps any ASGI 3 application, under any ASGI
server, on asyncio or trio.  Each HTTP request (and each websocket
connection) runs as an operation of the middleware's host, so:

- the client disconnecting before the response is complete cancels that
  request alone, as a fault of a channel of its own would: its cancel
  callbacks fire once with ``CHANNEL_FAULTED`` and its handler is cancelled
  once (a disconnect delivered twice fires nothing twice: G1);
- a request that completes normally fires no cancel, and its free-state
  callback runs once when it ends -- never before its handler (task or
  worker thread) has finished;
- the host's abort (at shutdown: ``serve()``, a lifespan shutdown whose
  close timeout expires, or ``host.abort()``) cancels in-flight requests
  with ``HOST_ABORT``; a request cut that way whose client is still there
  gets ``503``.

Delivery.  On asyncio the handler runs in the server's own task (no task
of ours per request) and is cancelled with one ``Task.cancel()``: an
edge-triggered cancel, so cleanup that awaits (psycopg sending its own
cancel request) can finish.  While that task waits in an anyio shielded
scope -- Starlette and FastAPI waiting for a sync endpoint's worker thread
-- delivery is deferred until the wait ends, so the thread is waited for.
Django's handler runs the view in a task of its own and cancels it itself
when it reads ``http.disconnect``: the middleware hands it that message
instead of cancelling its task, and waits for it to return.  On trio the
handler runs in a ``trio.CancelScope`` (trio's worker threads are waited
for by trio itself).

Inside a request, ``cancelcore.current_operation()`` is its context, also in
sync endpoints a framework runs in a thread pool (they copy the context).
``serve()`` runs an app under uvicorn, hypercorn or granian and owns the
shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import sys
import weakref
from collections import deque
from typing import Any, Awaitable, Callable, MutableMapping, Optional

from . import _adapters
from ._dispatch import call_soon
from ._enums import CancelReason, HostState
from ._errors import CancelCoreError
from ._host import ServiceHost
from ._offload import offload
from ._operation import OperationContext, _current

_DEADLINE_HEADER = _adapters.DEADLINE_HEADER.encode("ascii")

__all__ = ["CancellationMiddleware", "serve", "offload", "uvicorn_server"]

log = logging.getLogger("cancelcore.asgi")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_CANCEL_MESSAGE = "cancelcore: request canceled"
_DEFER_SECONDS = 0.001  # how often a deferred delivery looks again
_get_running_loop = asyncio._get_running_loop  # None, not an error, under trio
_current_task = asyncio.current_task


def _shielded(task: "asyncio.Task[Any]") -> bool:
    """True while ``task`` runs inside an anyio shielded cancel scope (a
    worker thread being awaited, a shielded cleanup).  anyio keeps no public
    way to ask; its asyncio backend is looked up only if already imported,
    and anything unexpected reads as "not shielded"."""
    backend = sys.modules.get("anyio._backends._asyncio")
    if backend is None:
        return False
    try:
        state = backend._task_states.get(task)
        scope = state.cancel_scope if state is not None else None
        while scope is not None:
            if scope._shield:
                return True
            scope = scope._parent_scope
    except Exception:  # pragma: no cover - a different anyio
        return False
    return False


def _is_django(app: Any) -> bool:
    """True for Django's ASGI handler (through a few wrappers) when it
    watches for the disconnect itself and runs the view in a task of its own
    (Django >= 5.0); older ones run the view in the request's task, which a
    Task.cancel reaches as for any app."""
    handlers = sys.modules.get("django.core.handlers.asgi")
    if handlers is None or not hasattr(handlers.ASGIHandler, "listen_for_disconnect"):
        return False
    for _ in range(8):  # through a few wrapping middlewares
        if isinstance(app, handlers.ASGIHandler):
            return True
        app = getattr(app, "app", None)
        if app is None:
            return False
    return False


class _Request:
    """One HTTP request or websocket connection: what it sent and received,
    the reading of the server's messages, and the delivery of its cancel.

    The app reads the server's messages itself while it wants to; only when
    it runs on without reading does a pump take over, so that a disconnect
    is noticed then too.  A handler that finishes without yielding costs no
    pump at all."""

    # Defaults at class level: a request sets only what differs, which is
    # most of what creating one costs on the per-request path.
    loop: Any = None
    task: Any = None
    by_disconnect = False  # Django: cancel by handing it a disconnect
    stash: Optional[deque[Message]] = None  # read by the pump, not yet by the app
    waiter: Any = None  # the app waiting for the pump
    pump: Any = None
    reading = False
    response_started = False  # websocket: accepted or closed
    response_complete = False  # websocket: closed by the app
    disconnected = False
    delivered = False
    finished = False
    scope: Any = None  # trio: the handler's cancel scope
    token: Any = None  # trio: the run's token

    def __init__(self, mw: CancellationMiddleware, receive: Receive, send: Send, channel: Any,
                 ctx: Optional[OperationContext], websocket: bool) -> None:
        self.mw = mw
        self.receive = receive
        self.send = send
        self.channel = channel
        self.ctx = ctx
        self.websocket = websocket

    # ------------------------------------------------------------ messages

    def fault(self) -> None:
        """Cancels this request alone (CHANNEL_FAULTED; idempotent: a second
        disconnect is a no-op), unless it has ended."""
        _adapters.cancel(self.channel, self.ctx)

    def _arrived(self, message: Message) -> bool:
        """Notes a server message; True for the disconnect, which cancels
        the request unless the response was complete."""
        kind = message["type"]
        if kind != "http.disconnect" and kind != "websocket.disconnect":
            return False
        self.disconnected = True
        if not self.response_complete:
            self.fault()
        return True

    def _disconnect_message(self) -> Message:
        if self.websocket:
            return {"type": "websocket.disconnect", "code": 1006}
        return {"type": "http.disconnect"}

    async def app_receive(self) -> Message:
        stash = self.stash
        if stash is not None:  # the pump reads for the app
            while not stash:
                if self.disconnected or self.pump is None:
                    return self._disconnect_message()
                if self.token is None:
                    future = self.waiter = self.loop.create_future()
                    await future
                else:
                    event = self.waiter = _TrioWaiter()
                    await event.wait()
            return stash.popleft()
        if self.disconnected:
            return self._disconnect_message()
        self.reading = True
        try:
            message = await self.receive()
        finally:
            self.reading = False
        if self._arrived(message):
            if self.token is None:
                # Let the cancellation the fault scheduled reach the task
                # first: it sees CancelledError, not a disconnect that outran it.
                await asyncio.sleep(0)
        elif not self.finished:
            self.mw._watcher(self.loop).add(self)
        return message

    async def app_send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start" or kind == "websocket.accept":
            self.response_started = True
            ctx = self.ctx
            if (message.get("status") == 500 and ctx is not None
                    and ctx.cancel_reason is CancelReason.HOST_ABORT):
                # The framework's own error page for what the abort made the
                # handler raise (a sync endpoint's driver error): the request
                # was cut by the shutdown, and its client is told so.
                message = dict(message, status=503)
        if self.delivered and self.token is not None:
            # trio's cancel is level-triggered: a send cut midway would leave
            # the server's protocol state torn.  What the app still sends
            # once canceled (its error page) goes out whole.
            import trio

            with trio.CancelScope(shield=True):
                await self.send(message)
            return
        elif kind == "http.response.body":
            if not message.get("more_body", False):
                self.response_complete = True
        elif kind == "websocket.close":
            self.response_started = self.response_complete = True
        await self.send(message)

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if self.token is None:
                if not waiter.done():
                    waiter.set_result(None)
            else:
                waiter.set()

    # -------------------------------------------------------- asyncio watch

    def watch(self) -> None:
        """Starts the pump if the app runs on without reading."""
        if self.pump is None and not self.reading and not self.disconnected and not self.finished:
            self.stash = deque()
            self.pump = self.loop.create_task(self._pump())

    async def _pump(self) -> None:
        stash = self.stash
        assert stash is not None
        try:
            while True:
                message = await self.receive()
                if self._arrived(message):
                    # As in app_receive: the cancellation goes first.
                    self.loop.call_soon(self._wake)
                    return
                stash.append(message)
                self._wake()
        except asyncio.CancelledError:
            pass
        except Exception:  # the server's receive failed: the client is gone
            if not self.finished:
                self.disconnected = True
                if not self.response_complete:
                    self.fault()
            self._wake()

    # ------------------------------------------------------------- delivery

    def hook(self) -> None:
        """The operation was canceled (any thread): deliver to the handler."""
        if self.token is None:
            call_soon(self.loop, self.deliver)
        else:
            try:
                self.token.run_sync_soon(self.deliver_trio)
            except Exception:  # the trio run has finished: nothing to stop
                pass

    def deliver(self) -> None:
        """On the loop: cancel the handler once (asyncio)."""
        if self.finished or self.delivered:
            return
        if self.by_disconnect:
            # Django cancels its own view task on reading a disconnect, and
            # waits for it: hand it one.
            self.delivered = True
            self.disconnected = True
            self._wake()
            return
        if _shielded(self.task):
            # A worker thread is being awaited: a Task.cancel now would cut
            # through anyio's shield and leave the thread running after the
            # request's state was freed.  Look again shortly.
            self.loop.call_later(_DEFER_SECONDS, self.deliver)
            return
        self.delivered = True
        self.task.cancel(_CANCEL_MESSAGE)

    def deliver_trio(self) -> None:
        if not self.finished and not self.delivered:
            self.delivered = True
            self.scope.cancel()


_WATCH_SECONDS = 0.002


class _Watcher:
    """Starts the pump of each request that runs on without reading the
    server's messages.  One timer per event loop, armed only while requests
    are in flight, looks every 2 ms -- instead of a callback per request: a
    request that ends within that costs a set insertion, and a disconnect
    is noticed at most 2 ms later than with a pump from the start."""

    __slots__ = ("loop", "pending", "armed")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending: set[_Request] = set()
        self.armed = False

    def add(self, request: _Request) -> None:
        self.pending.add(request)
        if not self.armed:
            self.armed = True
            self.loop.call_later(_WATCH_SECONDS, self.sweep)

    def sweep(self) -> None:
        self.armed = False
        pending, self.pending = self.pending, set()
        for request in pending:
            # A request reading for itself is added again when its read returns.
            request.watch()


class _TrioWaiter:
    """A one-shot event for the trio path (a trio.Event, made lazily so
    asyncio apps never import trio)."""

    __slots__ = ("event",)

    def __init__(self) -> None:
        import trio

        self.event = trio.Event()

    def set(self) -> None:
        self.event.set()

    async def wait(self) -> None:
        await self.event.wait()


class CancellationMiddleware:
    """Runs each HTTP request and websocket connection of ``app`` as a
    cancelcore operation.

    ``host``: the ServiceHost to run requests on; by default one is created
    with ``close_timeout`` and opened.  It is ``.host``.  Requests that
    arrive when the host is not open get ``503 Service Unavailable``.

    ``deliver``: how a canceled request's handler is stopped.  ``"auto"``
    (the default) hands Django's ASGI handler an ``http.disconnect`` (it
    cancels and waits for its own view task) and cancels any other app's
    task; ``"task"`` and ``"disconnect"`` force one or the other.
    """

    def __init__(self, app: ASGIApp, host: Optional[ServiceHost] = None, close_timeout: float = 5.0,
                 *, deliver: str = "auto") -> None:
        if not callable(app):
            raise TypeError("app must be an ASGI application")
        if not isinstance(deliver, str):
            raise TypeError("deliver must be a string")
        if deliver not in ("auto", "task", "disconnect"):
            raise ValueError("deliver must be 'auto', 'task' or 'disconnect'")
        if host is None:
            host = ServiceHost(close_timeout=close_timeout)
            host.open()
        elif not isinstance(host, ServiceHost):
            raise TypeError("host must be a ServiceHost or None")
        self.app = app
        self.host = host
        self._calls = _adapters.CallChannel(host)
        self._by_disconnect = deliver == "disconnect" or (deliver == "auto" and _is_django(app))
        self._watchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Watcher] = (
            weakref.WeakKeyDictionary())
        self._last_watcher: Optional[_Watcher] = None
        # Set when the server is known to be stopping (serve(), lifespan
        # shutdown): a request the server then cancels itself is cut by the
        # shutdown (HOST_ABORT), not by its client.
        self.stopping = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http" or kind == "websocket":
            loop = _get_running_loop()
            if loop is not None:
                await self._asyncio(scope, receive, send, loop, kind == "websocket")
            else:
                await self._trio(scope, receive, send, kind == "websocket")
        elif kind == "lifespan":
            await self._lifespan(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    def _watcher(self, loop: asyncio.AbstractEventLoop) -> _Watcher:
        watcher = self._last_watcher
        if watcher is None or watcher.loop is not loop:
            watcher = self._watchers.get(loop)
            if watcher is None:
                watcher = self._watchers[loop] = _Watcher(loop)
            self._last_watcher = watcher
        return watcher

    def _begin(self, scope: Scope) -> Optional[tuple[Any, OperationContext]]:
        # The caller's deadline (cancelcore-deadline-ms; DESIGN 4.4): a
        # malformed one is ignored, never an error.  ASGI header names are
        # lower-case bytes.
        deadline: Optional[float] = None
        for name, value in scope.get("headers", ()):
            if name == _DEADLINE_HEADER:
                deadline = _adapters.deadline_from_header(value)
                break
        try:
            return self._calls.begin(deadline)
        except CancelCoreError:
            return None

    # ------------------------------------------------------------- asyncio

    async def _asyncio(self, scope: Scope, receive: Receive, send: Send,
                       loop: asyncio.AbstractEventLoop, websocket: bool) -> None:
        begun = self._begin(scope)
        if begun is None:
            await _unavailable(send, websocket, accepted=False)
            return
        channel, ctx = begun
        request = _Request(self, receive, send, channel, ctx, websocket)
        request.loop = loop
        task = request.task = _current_task(loop)
        server_cancel = False
        error: Optional[BaseException] = None
        ctx._add_hook(request.hook)
        token = _current.set(ctx)
        try:
            if self._by_disconnect:
                request.by_disconnect = True
                request.watch()  # the pump from the start: a disconnect can be handed in
            else:
                watcher = self._last_watcher
                if watcher is None or watcher.loop is not loop:
                    watcher = self._watcher(loop)
                watcher.add(request)
            await self.app(scope, request.app_receive, request.app_send)
            if request.delivered and not request.by_disconnect:
                # The app caught our cancellation and returned: take it back,
                # so the server's own timeouts in this task still work.
                cancelling = getattr(task, "cancelling", None)  # Python >= 3.11
                if cancelling is not None and cancelling():
                    task.uncancel()  # type: ignore[union-attr]
        except asyncio.CancelledError:
            request.finished = True
            if request.delivered and not request.by_disconnect:
                # Ours: the request is over and accounted for.
                uncancel = getattr(task, "uncancel", None)
                if uncancel is not None:
                    uncancel()
            else:
                server_cancel = True
                self._server_gave_up(request)
        except Exception as exc:
            request.finished = True
            if not ctx.canceled:
                error = exc
            else:
                # What a canceled handler raised on its way out (the driver's
                # "query canceled", a send to a closed connection): the
                # cancellation, not an application error.
                log.debug("canceled request ended with %r", exc)
        finally:
            request.finished = True
            _current.reset(token)
            pump = request.pump
            if pump is not None:
                request.pump = None
                pump.cancel()
            reason = ctx.cancel_reason
            ctx.end()
            # The context keeps our hook, the hook keeps us: without this
            # cut every request would be a reference cycle, and the garbage
            # collector's passes would cost more than the rest of the adapter.
            request.ctx = None
        if error is not None:
            raise error
        if reason is not None:
            await self._after(request, reason, server_cancel)

    def _server_gave_up(self, request: _Request) -> None:
        """The server cancelled the request's task itself.  When it is
        stopping (known from serve(), a lifespan shutdown or the host's own
        state, never from a message's text) that is the host's abort (G7);
        otherwise only this request is canceled (CHANNEL_FAULTED)."""
        if self.stopping or self.host.state != HostState.OPEN:
            self.host.abort()
        else:
            request.fault()

    async def _after(self, request: _Request, reason: Optional[CancelReason], server_cancel: bool) -> None:
        # Cut by the host (shutdown, abort) while its client still waits:
        # it gets a 503 rather than nothing or a 500.
        if reason is not None and not request.disconnected and not request.response_complete:
            if not request.response_started or request.websocket:
                try:
                    await _unavailable(request.send, request.websocket, accepted=request.response_started)
                except Exception:  # the connection went away meanwhile
                    pass

    # ---------------------------------------------------------------- trio

    async def _trio(self, scope: Scope, receive: Receive, send: Send, websocket: bool) -> None:
        import trio

        begun = self._begin(scope)
        if begun is None:
            await _unavailable(send, websocket, accepted=False)
            return
        channel, ctx = begun
        request = _Request(self, receive, send, channel, ctx, websocket)
        request.token = trio.lowlevel.current_trio_token()
        request.stash = deque()
        error: Optional[BaseException] = None
        server_cancel = False
        token = _current.set(ctx)
        try:
            async with trio.open_nursery() as nursery:
                request.pump = nursery
                nursery.start_soon(self._trio_pump, request)
                try:
                    with trio.CancelScope() as cancel_scope:
                        request.scope = cancel_scope
                        ctx._add_hook(request.hook)
                        try:
                            await self.app(scope, request.app_receive, request.app_send)
                        except trio.Cancelled:
                            raise
                        except Exception as exc:
                            if not ctx.canceled:
                                error = exc
                            else:
                                log.debug("canceled request ended with %r", exc)
                except trio.Cancelled:
                    # Not ours (our scope keeps its own): the server cancelled
                    # the request.  Caught here, inside the nursery, where it
                    # is not yet wrapped in an exception group.
                    request.finished = True
                    server_cancel = True
                    self._server_gave_up(request)
                    raise
                request.finished = True
                nursery.cancel_scope.cancel()  # the pump
        finally:
            request.finished = True
            _current.reset(token)
            reason = ctx.cancel_reason
            ctx.end()
            # The context keeps our hook, the hook keeps us: without this
            # cut every request would be a reference cycle, and the garbage
            # collector's passes would cost more than the rest of the adapter.
            request.ctx = None
            if error is None and not server_cancel:
                with trio.CancelScope(shield=True):
                    await self._after(request, reason, server_cancel)
        if error is not None:
            raise error

    async def _trio_pump(self, request: _Request) -> None:
        stash = request.stash
        assert stash is not None
        try:
            while True:
                message = await request.receive()
                stash.append(message)
                if request._arrived(message):
                    stash.pop()
                    request._wake()
                    return
                request._wake()
        except Exception:
            if not request.finished:
                request.disconnected = True
                if not request.response_complete:
                    request.fault()
            request._wake()

    # ------------------------------------------------------------ lifespan

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        received = False

        async def lifespan_receive() -> Message:
            nonlocal received
            received = True
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                self.stopping = True
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
        """Closes the host (G8) without blocking the event loop (asyncio or
        trio): in-flight requests get the close timeout to finish, then are
        canceled with ``HOST_ABORT``.  Returns what ``ServiceHost.close``
        returns; True if the host was not open."""
        self.stopping = True
        if self.host.state == HostState.CLOSING:
            # Another path (serve(), a lifespan shutdown) is closing it: wait
            # for that close to finish, so whoever comes next finds it CLOSED.
            sleep = asyncio.sleep if _get_running_loop() is not None else _trio_sleep()
            while self.host.state == HostState.CLOSING:
                await sleep(0.005)
            return True
        if self.host.state not in (HostState.OPEN, HostState.FAULTED):
            return True
        if _get_running_loop() is not None:
            try:
                return await self.host.aclose()
            except CancelCoreError:  # closed meanwhile by another path (serve, lifespan)
                return True
        import trio

        return bool(await trio.to_thread.run_sync(self._close_quietly))

    def _close_quietly(self) -> bool:
        try:
            return self.host.close()
        except CancelCoreError:  # closed meanwhile by another path
            return True


def _trio_sleep() -> Callable[[float], Awaitable[None]]:
    import trio

    return trio.sleep


async def _unavailable(send: Send, websocket: bool, *, accepted: bool) -> None:
    if websocket:
        # 1013 "try again later" before the handshake; 1012 "service
        # restart" for a connection the shutdown cuts.
        await send({"type": "websocket.close", "code": 1012 if accepted else 1013})
        return
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


# ====================================================================== serve

SERVERS = ("uvicorn", "hypercorn", "granian")


def serve(
    app: ASGIApp,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    server: str = "uvicorn",
    close_timeout: float = 5.0,
    service_host: Optional[ServiceHost] = None,
    **options: Any,
) -> None:
    """Runs ``app`` under ``server`` (``"uvicorn"``, ``"hypercorn"`` or
    ``"granian"``) with cancellation-aware graceful shutdown.  On SIGINT or
    SIGTERM the server stops accepting connections, in-flight requests get
    ``close_timeout`` seconds to finish, then their cancel callbacks fire
    with ``HOST_ABORT`` (clients still waiting get 503), their state is
    freed as they unwind, and the server exits.  ``app`` is wrapped in
    ``CancellationMiddleware`` unless it already is one.

    ``options`` go to the server's configuration: ``uvicorn.Config``
    keywords; hypercorn ``Config`` attributes (``worker_class="trio"`` runs
    hypercorn's trio worker); granian's embedded ``Server`` keywords."""
    if not isinstance(server, str):
        raise TypeError("server must be a string")
    if server not in SERVERS:
        raise ValueError(f"server must be one of {', '.join(SERVERS)}")
    if isinstance(close_timeout, bool) or not isinstance(close_timeout, (int, float)):
        raise TypeError("close_timeout must be a number of seconds")
    if math.isnan(close_timeout) or close_timeout < 0 or math.isinf(close_timeout):
        raise ValueError("close_timeout must be a finite number >= 0")
    if not isinstance(port, int) or isinstance(port, bool):
        raise TypeError("port must be an int")
    if not 0 <= port <= 65535:
        raise ValueError("port must be in 0..65535")
    if isinstance(app, CancellationMiddleware):
        mw = app
    else:
        mw = CancellationMiddleware(app, host=service_host, close_timeout=close_timeout)
    if server == "uvicorn":
        _serve_uvicorn(mw, host, port, close_timeout, options)
    elif server == "hypercorn":
        _serve_hypercorn(mw, host, port, close_timeout, options)
    else:
        _serve_granian(mw, host, port, close_timeout, options)


# A backstop after close_timeout: the server's own limit, should the host's
# abort not end every request (a handler that ignores its cancellation).
_BACKSTOP = 5.0


def uvicorn_server(config: Any) -> Any:
    """A ``uvicorn.Server`` for ``config`` (a ``uvicorn.Config`` whose app
    is a ``CancellationMiddleware``), for code that runs uvicorn's server
    itself rather than through ``serve()``.  Its shutdown closes the
    middleware's host: uvicorn's own SIGINT/SIGTERM handling (or
    ``should_exit``) ends its main loop and calls ``shutdown()``; closing the
    host from there starts ``close_timeout`` as the listeners close, so the
    host aborts in-flight requests (HOST_ABORT, delivered so that sync
    endpoints' threads are waited for) before uvicorn's own
    ``timeout_graceful_shutdown`` would cancel their tasks (give it more than
    ``close_timeout``)."""
    mw = getattr(config, "app", None)
    if not isinstance(mw, CancellationMiddleware):
        raise TypeError("config.app must be a CancellationMiddleware")
    return _uvicorn_server(mw, config)


def _uvicorn_server(mw: CancellationMiddleware, config: Any) -> Any:
    import uvicorn

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: Any = None) -> None:
            closing = asyncio.ensure_future(mw.aclose())
            try:
                await super().shutdown(sockets)
            finally:
                await closing

    return Server(config)


def _serve_uvicorn(mw: CancellationMiddleware, host: str, port: int, close_timeout: float,
                   options: dict[str, Any]) -> None:
    import uvicorn

    options.setdefault("lifespan", "on")
    options.setdefault("timeout_graceful_shutdown", math.ceil(close_timeout + _BACKSTOP))
    sockets = options.pop("sockets", None)
    config = uvicorn.Config(mw, host=host, port=port, **options)
    _uvicorn_server(mw, config).run(sockets=sockets)


def _serve_hypercorn(mw: CancellationMiddleware, host: str, port: int, close_timeout: float,
                     options: dict[str, Any]) -> None:
    from hypercorn.config import Config

    worker = options.pop("worker_class", "asyncio")
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.graceful_timeout = close_timeout + _BACKSTOP
    for name, value in options.items():
        if not hasattr(config, name):
            raise TypeError(f"hypercorn's Config has no setting {name!r}")
        setattr(config, name, value)
    if worker == "trio":
        import trio
        from hypercorn.trio import serve as trio_serve

        async def trio_main() -> None:
            async with trio.open_nursery() as nursery:
                async def trigger() -> None:
                    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                        async for _ in signals:
                            break
                    # Closing (close_timeout, then HOST_ABORT) runs while
                    # hypercorn stops listening and waits for connections.
                    nursery.start_soon(mw.aclose)

                await trio_serve(mw, config, shutdown_trigger=trigger)  # type: ignore[arg-type]

        trio.run(trio_main)
        return
    if worker not in ("asyncio", "uvloop"):
        raise ValueError("hypercorn's worker_class must be 'asyncio', 'uvloop' or 'trio'")
    from hypercorn.asyncio import serve as asyncio_serve

    async def asyncio_main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        closing: list[asyncio.Future[bool]] = []

        async def trigger() -> None:
            await stop.wait()
            closing.append(asyncio.ensure_future(mw.aclose()))

        await asyncio_serve(mw, config, shutdown_trigger=trigger)  # type: ignore[arg-type]
        for fut in closing:
            await fut

    if worker == "uvloop":
        import uvloop

        uvloop.run(asyncio_main())
    else:
        asyncio.run(asyncio_main())


def _serve_granian(mw: CancellationMiddleware, host: str, port: int, close_timeout: float,
                   options: dict[str, Any]) -> None:
    from granian.constants import Interfaces
    from granian.server.embed import Server

    options.setdefault("interface", Interfaces.ASGI)

    async def main() -> None:
        # Made inside the running loop: on Python < 3.10 the asyncio.Event
        # it creates binds to the loop current at construction.
        server = Server(mw, address=host, port=port, **options)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        serving = asyncio.ensure_future(server.serve())
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait([serving, stopper], return_when=asyncio.FIRST_COMPLETED)
        if not serving.done():
            # granian alone waits for in-flight requests however long they
            # take: the host's close gives them close_timeout, then aborts;
            # new requests meanwhile get 503.  Then granian stops.
            await mw.aclose()
            server.stop()  # type: ignore[no-untyped-call]
        stopper.cancel()
        await serving

    asyncio.run(main())
