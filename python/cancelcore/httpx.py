"""Outgoing HTTP calls canceled with their operation (DESIGN 4.4): httpx
transports.

``HTTPTransport`` and ``AsyncHTTPTransport`` take the arguments of
``httpx.HTTPTransport`` / ``httpx.AsyncHTTPTransport`` and are used the same
way::

    client = httpx.Client(transport=cancelcore.httpx.HTTPTransport())
    client = httpx.AsyncClient(transport=cancelcore.httpx.AsyncHTTPTransport())

Outside an operation (``current_operation()`` is None) they are the plain
transports: the same requests on the same connections, nothing added.

Inside an operation, each request

- is refused with ``OperationCanceledError`` (its ``.reason``), before
  anything is sent, if the operation is already canceled;
- carries ``cancelcore-deadline-ms: <whole milliseconds left>`` if the
  operation has a deadline.  A caller-given header is kept when it is a
  valid value no larger than ours (the caller asked for less time);
  otherwise ours replaces it;
- is aborted at once when the operation is canceled, from whichever thread
  cancels it: the TCP connection the request is using is shut down, which
  wakes a ``recv`` blocked in a worker thread as well as an event loop's
  selector, so the call raises ``OperationCanceledError`` (chained from the
  httpx error) and the server on the other end sees its client leave
  (ASGI ``http.disconnect``; with cancelcore there, its request's
  operation is canceled with ``CHANNEL_FAULTED``).  httpcore drops a
  connection that failed this way instead of returning it to the pool.
  A request that has finished (its response closed) holds no connection:
  canceling its operation later touches nothing.

How: the transport's httpcore pool gets a network backend wrapping the
usual one.  While a request runs, a context variable names it; its
connection's stream, at connect and at every read and write, records its
socket in that request (a reused keep-alive connection included), and the
operation's cancel hook shuts that socket down.  A cancel that lands before
the socket is known is caught when it is published (both sides hold the
request's small lock).  A request gives its socket up when its response is
closed (before httpcore can hand the connection to another request) and
when its connection is closed (so a late hook never shuts down a descriptor
number that may already name another socket).

Limits:

- HTTP/2 multiplexes requests on one connection, so shutting it down would
  cancel unrelated requests too: ``http2=True`` raises ``ValueError``.
- A cancel during the TCP connect or while the request waits for a free
  connection in the pool takes effect when that step ends (bounded by the
  client's connect and pool timeouts): there is no socket to shut down yet.
- In an async function that ``dispatch`` runs, the operation's cancel also
  cancels the task; the call then raises whichever comes first,
  ``OperationCanceledError`` or ``asyncio.CancelledError`` (never swallowed).
"""

from __future__ import annotations

import socket
import ssl
import threading
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, AsyncIterator, Iterable, Iterator, Optional

import httpcore
import httpx

from . import _adapters
from ._enums import CancelReason
from ._errors import InvalidOperationError, OperationCanceledError
from ._operation import OperationContext, _current

__all__ = ["AsyncHTTPTransport", "HTTPTransport"]

DEADLINE_HEADER = _adapters.DEADLINE_HEADER

_SOCKET_OPTIONS = Iterable[httpcore.SOCKET_OPTION]


def _shutdown(sock: Any) -> None:
    """Shuts ``sock`` down both ways: a blocked recv returns EOF, a
    selector sees it readable, the peer gets a FIN.  Thread-safe (one system
    call on the socket's descriptor, which stays open: its owner closes
    it).  An ``ssl.SSLSocket`` is shut down as the plain socket under it:
    its own ``shutdown`` also drops the TLS state another thread may be
    using."""
    try:
        if isinstance(sock, socket.socket):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        else:  # asyncio's TransportSocket, a trio socket
            sock.shutdown(socket.SHUT_RDWR)
    except Exception:  # already closed or never connected (OSError, or a wrapper's own
        pass           # error for a closed socket): nothing to wake, and a hook never raises


class _Call:
    """One request made inside an operation: the socket it is using, and
    whether its operation was canceled.  ``cancel`` is the operation's hook
    (any thread); ``use`` runs on the request's own thread or task; the lock
    makes "publish the socket, then look at the flag" and "set the flag,
    then look at the socket" exclusive, so one of them shuts it down."""

    __slots__ = ("lock", "sock", "canceled", "reason", "ctx", "done")

    def __init__(self, ctx: OperationContext) -> None:
        self.lock = threading.Lock()
        self.sock: Any = None
        self.canceled = False
        self.reason: Optional[CancelReason] = None
        self.ctx: Optional[OperationContext] = ctx  # dropped at finish (no cycle lives on)
        self.done = False

    def use(self, sock: Any) -> None:
        if sock is self.sock or sock is None:
            return  # published already: a cancel from now on finds it
        with self.lock:
            if self.done:
                return
            self.sock = sock
            if self.canceled:
                _shutdown(sock)

    def cancel(self) -> None:
        # The operation's hook: quick, never raises, idempotent.
        reason: Optional[CancelReason] = None
        ctx = self.ctx
        if ctx is not None:
            try:
                reason = ctx.cancel_reason  # set before hooks run
            except InvalidOperationError:  # pragma: no cover - ended meanwhile
                pass
        with self.lock:
            if self.reason is None:
                self.reason = reason
            self.canceled = True
            # Under the lock: once finish() has returned, this request's
            # socket may serve another request and must not be touched.
            if self.sock is not None:
                _shutdown(self.sock)

    def release(self, sock: Any) -> None:
        """``sock`` is about to be closed: never shut it down after this
        (its descriptor number could by then name another socket)."""
        with self.lock:
            if self.sock is sock:
                self.sock = None

    def finish(self) -> None:
        with self.lock:
            self.done = True
            self.sock = None
        ctx, self.ctx = self.ctx, None
        if ctx is not None:
            ctx._remove_hook(self.cancel)  # an operation may make many calls

    def fail(self) -> Optional[OperationCanceledError]:
        """The request failed: gives up its socket, and returns the error
        to raise instead if its operation was canceled (the failure is
        then the abort, or happened as the operation was going away)."""
        with self.lock:
            canceled, reason = self.canceled, self.reason
        if canceled and reason is None:
            reason = _adapters.reason(self.ctx) if self.ctx is not None else None
        self.finish()
        if not canceled:
            return None
        if reason is None:  # pragma: no cover - the hook ran on a context that had just ended
            reason = CancelReason.CHANNEL_FAULTED
        return OperationCanceledError(
            reason, f"the HTTP request was aborted: its operation was canceled ({reason.name})")


# The request the current thread or task is sending (None outside our
# requests: then the streams below are pass-through).
_calls: ContextVar[Optional[_Call]] = ContextVar("cancelcore_httpx_call", default=None)


def _start(ctx: OperationContext, request: httpx.Request) -> Optional[_Call]:
    """Inside an operation: raises if it is canceled, sets the deadline
    header, and returns the request's record with its hook added.  None if
    the context has ended (the request is then an ordinary one)."""
    try:
        canceled = ctx.canceled
        deadline = ctx.deadline
    except InvalidOperationError:
        return None
    if canceled:
        reason = ctx.cancel_reason
        assert reason is not None
        raise OperationCanceledError(reason, f"the HTTP request was not sent: its operation was canceled ({reason.name})")
    if deadline is not None:
        ours = _adapters.header_ms(deadline)
        given = _adapters.deadline_ms(request.headers.get(DEADLINE_HEADER))
        if given is None or given > ours:
            request.headers[DEADLINE_HEADER] = str(ours)
    call = _Call(ctx)
    ctx._add_hook(call.cancel)  # runs at once if canceled meanwhile
    return call


# ------------------------------------------------------------ sync network


class _Socket:
    """What both kinds of stream keep: their socket, and the request that
    used it last."""

    _sock: Any
    _user: Optional[_Call]

    def _open(self, inner: Any) -> None:
        self._sock = inner.get_extra_info("socket")
        self._user = None
        self._claim()

    def _claim(self) -> None:
        """The request being sent (if one of ours) is using the socket now."""
        call = _calls.get()
        if call is not None:
            self._user = call
            call.use(self._sock)

    def _closing(self) -> None:
        # Whichever thread closes it: a cancel hook must not shut the
        # descriptor down once it is closed (the number may be reused).
        user = self._user
        if user is not None:
            user.release(self._sock)


class _Stream(_Socket, httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner
        self._open(inner)

    def read(self, max_bytes: int, timeout: Optional[float] = None) -> bytes:
        self._claim()
        return self._inner.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: Optional[float] = None) -> None:
        self._claim()
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        self._closing()
        self._inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: Optional[str] = None,
                  timeout: Optional[float] = None) -> httpcore.NetworkStream:
        return _Stream(self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _Backend(httpcore.NetworkBackend):
    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(self, host: str, port: int, timeout: Optional[float] = None,
                    local_address: Optional[str] = None,
                    socket_options: Optional[_SOCKET_OPTIONS] = None) -> httpcore.NetworkStream:
        return _Stream(self._inner.connect_tcp(host, port, timeout, local_address, socket_options))

    def connect_unix_socket(self, path: str, timeout: Optional[float] = None,
                            socket_options: Optional[_SOCKET_OPTIONS] = None) -> httpcore.NetworkStream:
        return _Stream(self._inner.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _Body(httpx.SyncByteStream):
    """The response body: a failure once the operation is canceled is its
    cancellation; closing it ends the request's hold on the connection."""

    def __init__(self, inner: httpx.SyncByteStream, call: _Call) -> None:
        self._inner = inner
        self._call = call

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._inner
        except Exception as exc:
            error = self._call.fail()
            if error is not None:
                raise error from exc
            raise

    def close(self) -> None:
        # finish first: the connection may go back to the pool in close().
        self._call.finish()
        self._inner.close()


def _check_http2(http2: bool) -> None:
    if http2:
        raise ValueError("cancelcore's httpx transports do not support http2=True: aborting one "
                         "request closes its connection, which HTTP/2 shares with other requests")


def _init(transport: Any, base: Any, wrap: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """The transports' constructor: httpx's own arguments, HTTP/2 refused,
    then every pool httpx builds (direct, HTTP or SOCKS proxy) opens its
    connections through ``wrap`` of its backend, lazily: wrapping it here
    covers them all."""
    _check_http2(kwargs.get("http2", args[4] if len(args) > 4 else False))
    base.__init__(transport, *args, **kwargs)
    pool: Any = transport._pool
    pool._network_backend = wrap(pool._network_backend)


@contextmanager
def _sending(call: _Call) -> Iterator[None]:
    """Around httpx's own sending of a request made inside an operation:
    the streams know it is this call's; a failure of a canceled call is
    its cancel (``OperationCanceledError``)."""
    token = _calls.set(call)
    try:
        yield
    except Exception as exc:
        error = call.fail()
        if error is not None:
            raise error from exc
        raise
    except BaseException:
        call.finish()
        raise
    finally:
        _calls.reset(token)


class HTTPTransport(httpx.HTTPTransport):
    """``httpx.HTTPTransport`` whose requests made inside an operation are
    aborted when it is canceled and carry its deadline (see the module)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """httpx.HTTPTransport's arguments; ``http2=True`` is refused."""
        _init(self, httpx.HTTPTransport, _Backend, args, kwargs)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        ctx = _current.get()
        call = None if ctx is None else _start(ctx, request)
        if call is None:
            return super().handle_request(request)
        with _sending(call):
            response = super().handle_request(request)
        stream = response.stream
        assert isinstance(stream, httpx.SyncByteStream)
        response.stream = _Body(stream, call)
        return response


# ----------------------------------------------------------- async network


class _AsyncStream(_Socket, httpcore.AsyncNetworkStream):
    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner
        self._open(inner)

    async def read(self, max_bytes: int, timeout: Optional[float] = None) -> bytes:
        self._claim()
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: Optional[float] = None) -> None:
        self._claim()
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        self._closing()
        await self._inner.aclose()

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: Optional[str] = None,
                        timeout: Optional[float] = None) -> httpcore.AsyncNetworkStream:
        return _AsyncStream(await self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _AsyncBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, inner: httpcore.AsyncNetworkBackend) -> None:
        self._inner = inner

    async def connect_tcp(self, host: str, port: int, timeout: Optional[float] = None,
                          local_address: Optional[str] = None,
                          socket_options: Optional[_SOCKET_OPTIONS] = None) -> httpcore.AsyncNetworkStream:
        return _AsyncStream(await self._inner.connect_tcp(host, port, timeout, local_address,
                                                          socket_options))

    async def connect_unix_socket(self, path: str, timeout: Optional[float] = None,
                                  socket_options: Optional[_SOCKET_OPTIONS] = None
                                  ) -> httpcore.AsyncNetworkStream:
        return _AsyncStream(await self._inner.connect_unix_socket(path, timeout, socket_options))

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _AsyncBody(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, call: _Call) -> None:
        self._inner = inner
        self._call = call

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                yield chunk
        except Exception as exc:
            error = self._call.fail()
            if error is not None:
                raise error from exc
            raise

    async def aclose(self) -> None:
        self._call.finish()
        await self._inner.aclose()


class AsyncHTTPTransport(httpx.AsyncHTTPTransport):
    """``httpx.AsyncHTTPTransport`` whose requests made inside an operation
    are aborted when it is canceled and carry its deadline (see the
    module).  Works on asyncio and trio."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """httpx.AsyncHTTPTransport's arguments; ``http2=True`` is refused."""
        _init(self, httpx.AsyncHTTPTransport, _AsyncBackend, args, kwargs)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        ctx = _current.get()
        call = None if ctx is None else _start(ctx, request)
        if call is None:
            return await super().handle_async_request(request)
        with _sending(call):
            response = await super().handle_async_request(request)
        stream = response.stream
        assert isinstance(stream, httpx.AsyncByteStream)
        response.stream = _AsyncBody(stream, call)
        return response

