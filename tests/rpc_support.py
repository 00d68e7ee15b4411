"""Helpers for tests/test_grpc.py and tests/test_aiohttp.py: records of what
each call's callbacks and handler saw, a gRPC test service built from
generic handlers (no generated code), and real servers on 127.0.0.1 run in
background threads.

A request is ``b"<key>"``: the key names the call's ``Probe``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator, Callable, Iterator, Optional

from cancelcore import CancelReason, InvalidOperationError, current_operation

try:  # the aiohttp tests need none of the gRPC half
    import grpc
    import grpc.aio

    from cancelcore.grpc import AioCancellationInterceptor, CancellationInterceptor
except ImportError:  # pragma: no cover - grpcio not installed
    pass

HOST = "127.0.0.1"
WAIT = 10.0  # bound for any wait on the server's side
SERVICE = "cancelcore.test.Probe"
# Handlers reading a request stream work this long after its end: gRPC ends
# the request stream of a canceled RPC like a half-close and reports the
# cancel a moment later, so a handler returning at once may complete first
# (a documented limit); one doing anything more sees the cancel.
AFTER_READ = 0.2


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT, interval: float = 0.002) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return bool(predicate())
        time.sleep(interval)
    return True


# ------------------------------------------------------------------ records


class Probe:
    """What one call's callbacks and handler saw (thread-safe)."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.lock = threading.Lock()
        self.cancels: list[tuple[CancelReason, str]] = []  # reason, thread name
        self.frees: list[str] = []  # thread name
        self.cancel_after_free = False
        self.saw_current = False
        self.handler_thread = ""
        self.second_registration_refused = False
        self.task_cancelled = 0  # CancelledError seen by an async handler
        self.reason_when_cancelled: Optional[CancelReason] = None
        self.completed = False
        self.generator_closed = False
        self.items_sent = 0
        self.cancel_delay = 0.0
        self.entered = threading.Event()
        self.canceled = threading.Event()
        self.freed = threading.Event()
        self.released = threading.Event()

    def on_cancel(self, reason: CancelReason, state: Any) -> None:
        with self.lock:
            if self.frees:
                self.cancel_after_free = True
            self.cancels.append((reason, threading.current_thread().name))
        if self.cancel_delay:
            time.sleep(self.cancel_delay)  # a slow cancel callback
        self.canceled.set()

    def on_free(self, state: Any) -> None:
        with self.lock:
            self.frees.append(threading.current_thread().name)
        self.freed.set()

    def register(self) -> Any:
        """Registers this probe's callbacks on the current operation (the
        handler's own registration, G2) and checks a second one fails."""
        ctx = current_operation()
        self.saw_current = ctx is not None
        self.handler_thread = threading.current_thread().name
        assert ctx is not None
        ctx.register_for_cancel(self.on_cancel, self.on_free, self.key)
        try:
            ctx.register_for_cancel(self.on_cancel, self.on_free, "again")
        except InvalidOperationError:
            self.second_registration_refused = True
        self.entered.set()
        return ctx

    @property
    def reasons(self) -> list[CancelReason]:
        with self.lock:
            return [r for r, _ in self.cancels]

    def settled(self, timeout: float = WAIT) -> bool:
        return self.freed.wait(timeout)


class Probes:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_key: dict[str, Probe] = {}

    def __call__(self, key: str) -> Probe:
        with self.lock:
            probe = self.by_key.get(key)
            if probe is None:
                probe = self.by_key[key] = Probe(key)
            return probe

    def all(self) -> list[Probe]:
        with self.lock:
            return list(self.by_key.values())


def _key(request: Any) -> str:
    return bytes(request).decode()


# ------------------------------------------------------------ gRPC service
#
# Methods (request and response are raw bytes):
#   Echo        unary-unary    answers the key
#   Block       unary-unary    waits until canceled (or WAIT), then raises
#   Linger      unary-unary    sleeps 0.2 s and answers (finishes in a grace)
#   Count       unary-stream   yields 3 items
#   Drip        unary-stream   yields one item, then one more each time it
#                              is asked, forever, until the RPC is canceled
#   Sum         stream-unary   reads every request, answers their count
#   Hold        stream-unary   reads requests until canceled
#   Echoes      stream-stream  answers each request


def sync_handlers(probes: Probes) -> grpc.GenericRpcHandler:
    def echo(request: bytes, context: Any) -> bytes:
        probe = probes(_key(request))
        probe.register()
        probe.completed = True
        return request

    def block(request: bytes, context: Any) -> bytes:
        probe = probes(_key(request))
        ctx = probe.register()
        probe.canceled.wait(WAIT)
        ctx.raise_if_canceled()
        return b"not canceled"

    def linger(request: bytes, context: Any) -> bytes:
        probe = probes(_key(request))
        probe.register()
        time.sleep(0.2)
        probe.completed = True
        return request

    def count(request: bytes, context: Any) -> Iterator[bytes]:
        probe = probes(_key(request))
        probe.register()
        try:
            for i in range(3):
                assert current_operation() is not None
                probe.items_sent += 1
                yield b"%d" % i
            probe.completed = True
        finally:
            probe.generator_closed = True

    def drip(request: bytes, context: Any) -> Iterator[bytes]:
        probe = probes(_key(request))
        probe.register()
        try:
            while True:  # a generator that never stops by itself
                probe.items_sent += 1
                yield b"drop"
                time.sleep(0.01)
        finally:
            probe.generator_closed = True

    def sum_(requests: Iterator[bytes], context: Any) -> bytes:
        n = 0
        probe: Optional[Probe] = None
        for request in requests:
            if probe is None:
                probe = probes(_key(request))
                probe.register()
            n += 1
        assert probe is not None
        probe.completed = True
        return b"%d" % n

    def hold(requests: Iterator[bytes], context: Any) -> bytes:
        probe: Optional[Probe] = None
        try:
            for request in requests:
                if probe is None:
                    probe = probes(_key(request))
                    probe.register()
        finally:
            if probe is not None:
                probe.generator_closed = True  # the read loop has ended
        time.sleep(AFTER_READ)
        ctx = current_operation()
        assert ctx is not None
        ctx.raise_if_canceled()
        return b"end of requests"

    def echoes(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
        probe: Optional[Probe] = None
        for request in requests:
            if probe is None:
                probe = probes(_key(request))
                probe.register()
            yield request
        time.sleep(AFTER_READ)
        if probe is not None:
            probe.completed = True

    def self_end(request: bytes, context: Any) -> bytes:
        probe = probes(_key(request))
        ctx = probe.register()
        ctx.end()  # misuse: the adapter's operation, ended by the handler
        probe.completed = True
        return request

    def stubborn(request: bytes, context: Any) -> bytes:
        probe = probes(_key(request))
        probe.register()
        probe.released.wait(WAIT)  # ignores its cancel
        return request

    return _generic(echo, block, linger, count, drip, sum_, hold, echoes, self_end, stubborn)


def async_handlers(probes: Probes) -> grpc.GenericRpcHandler:
    async def echo(request: bytes, context: Any) -> bytes:
        probe = probes(_key(request))
        probe.register()
        await asyncio.sleep(0)
        probe.completed = True
        return request

    async def block(request: bytes, context: Any) -> bytes:
        probe = probes(_key(request))
        ctx = probe.register()
        try:
            await asyncio.sleep(WAIT)
        except asyncio.CancelledError:
            probe.task_cancelled += 1
            probe.reason_when_cancelled = ctx.cancel_reason
            raise
        return b"not canceled"

    async def linger(request: bytes, context: Any) -> bytes:
        probe = probes(_key(request))
        probe.register()
        await asyncio.sleep(0.2)
        probe.completed = True
        return request

    async def count(request: bytes, context: Any) -> AsyncIterator[bytes]:
        probe = probes(_key(request))
        probe.register()
        try:
            for i in range(3):
                assert current_operation() is not None
                probe.items_sent += 1
                yield b"%d" % i
                await asyncio.sleep(0)
            probe.completed = True
        finally:
            probe.generator_closed = True

    async def drip(request: bytes, context: Any) -> AsyncIterator[bytes]:
        probe = probes(_key(request))
        ctx = probe.register()
        try:
            while True:
                probe.items_sent += 1
                yield b"drop"
                await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            probe.task_cancelled += 1
            probe.reason_when_cancelled = ctx.cancel_reason
            raise
        finally:
            probe.generator_closed = True

    async def sum_(requests: AsyncIterator[bytes], context: Any) -> bytes:
        n = 0
        probe: Optional[Probe] = None
        async for request in requests:
            if probe is None:
                probe = probes(_key(request))
                probe.register()
            n += 1
        assert probe is not None
        probe.completed = True
        return b"%d" % n

    async def hold(requests: AsyncIterator[bytes], context: Any) -> bytes:
        probe: Optional[Probe] = None
        ctx = current_operation()
        assert ctx is not None
        try:
            async for request in requests:
                if probe is None:
                    probe = probes(_key(request))
                    probe.register()
            await asyncio.sleep(AFTER_READ)
        except asyncio.CancelledError:
            if probe is not None:
                probe.task_cancelled += 1
                probe.reason_when_cancelled = ctx.cancel_reason
            raise
        finally:
            if probe is not None:
                probe.generator_closed = True
        ctx.raise_if_canceled()
        return b"end of requests"

    async def echoes(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        probe: Optional[Probe] = None
        async for request in requests:
            if probe is None:
                probe = probes(_key(request))
                probe.register()
            yield request
        await asyncio.sleep(AFTER_READ)
        if probe is not None:
            probe.completed = True

    async def self_end(request: bytes, context: Any) -> bytes:
        probe = probes(_key(request))
        ctx = probe.register()
        ctx.end()
        probe.completed = True
        return request

    async def stubborn(request: bytes, context: Any) -> bytes:
        probe = probes(_key(request))
        probe.register()
        while not probe.released.is_set():  # ignores its cancel
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                pass
        return request

    return _generic(echo, block, linger, count, drip, sum_, hold, echoes, self_end, stubborn)


def _generic(echo: Any, block: Any, linger: Any, count: Any, drip: Any, sum_: Any, hold: Any,
             echoes: Any, self_end: Any, stubborn: Any) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(SERVICE, {
        "Echo": grpc.unary_unary_rpc_method_handler(echo),
        "Block": grpc.unary_unary_rpc_method_handler(block),
        "Linger": grpc.unary_unary_rpc_method_handler(linger),
        "Count": grpc.unary_stream_rpc_method_handler(count),
        "Drip": grpc.unary_stream_rpc_method_handler(drip),
        "Sum": grpc.stream_unary_rpc_method_handler(sum_),
        "Hold": grpc.stream_unary_rpc_method_handler(hold),
        "Echoes": grpc.stream_stream_rpc_method_handler(echoes),
        "SelfEnd": grpc.unary_unary_rpc_method_handler(self_end),
        "Stubborn": grpc.unary_unary_rpc_method_handler(stubborn),
    })


# ------------------------------------------------------------ gRPC servers


class GrpcServer:
    """A gRPC server on 127.0.0.1 with the interceptor: ``kind`` is "sync"
    (``grpc.server``, sync handlers) or "aio" (``grpc.aio.server`` in a
    loop thread of its own, with ``handlers`` "async" or "sync")."""

    def __init__(self, kind: str, handlers: str = "sync", interceptor: Any = None,
                 probes: Optional[Probes] = None, **interceptor_options: Any) -> None:
        self.kind = kind
        self.handlers = handlers
        self.probes = probes if probes is not None else Probes()
        generic = (async_handlers if handlers == "async" else sync_handlers)(self.probes)
        if interceptor is None:
            if kind == "sync":
                interceptor = CancellationInterceptor(**interceptor_options)
            else:
                interceptor_options.setdefault("max_workers", 40)  # 20 blocked handlers at once
                interceptor = AioCancellationInterceptor(**interceptor_options)
        self.interceptor = interceptor
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.thread: Optional[threading.Thread] = None
        self.pool: Optional[ThreadPoolExecutor] = None
        self.stopped = False
        if kind == "sync":
            self.pool = ThreadPoolExecutor(max_workers=40)
            self.server: Any = grpc.server(self.pool, interceptors=[interceptor])
            self.server.add_generic_rpc_handlers((generic,))
            self.port = self.server.add_insecure_port(f"{HOST}:0")
            self.server.start()
        else:
            self.loop = asyncio.new_event_loop()
            ready = threading.Event()
            self.thread = threading.Thread(target=self._run_loop, args=(ready,), daemon=True)
            self.thread.start()
            assert ready.wait(WAIT)

            async def start() -> tuple[Any, int]:
                server = grpc.aio.server(interceptors=[interceptor])
                server.add_generic_rpc_handlers((generic,))
                port = server.add_insecure_port(f"{HOST}:0")
                await server.start()
                return server, port

            self.server, self.port = self.run(start())
        self.channel = grpc.insecure_channel(f"{HOST}:{self.port}")
        grpc.channel_ready_future(self.channel).result(timeout=WAIT)

    def _run_loop(self, ready: threading.Event) -> None:
        assert self.loop is not None
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(ready.set)
        self.loop.run_forever()

    def run(self, coro: Any, timeout: float = WAIT) -> Any:
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def host(self) -> Any:
        return self.interceptor.host

    def method(self, name: str) -> Any:
        kinds = {"Echo": "unary_unary", "Block": "unary_unary", "Linger": "unary_unary",
                 "Count": "unary_stream", "Drip": "unary_stream", "Sum": "stream_unary",
                 "Hold": "stream_unary", "Echoes": "stream_stream", "SelfEnd": "unary_unary", "Stubborn": "unary_unary"}
        return getattr(self.channel, kinds[name])(f"/{SERVICE}/{name}")

    def stop(self, grace: Optional[float] = 0.5) -> None:
        """Stops through the interceptor (bounded)."""
        if self.stopped:
            return
        self.stopped = True
        if self.kind == "sync":
            done = threading.Event()

            def stop() -> None:
                self.interceptor.stop(self.server, grace)
                done.set()

            threading.Thread(target=stop, daemon=True).start()
            assert done.wait(WAIT + 5), "interceptor.stop did not return"
        else:
            self.run(self.interceptor.stop(self.server, grace), timeout=WAIT + 5)

    def close(self) -> None:
        try:
            self.stop(0)
        finally:
            self.channel.close()
            if self.pool is not None:
                self.pool.shutdown(wait=False)
            if self.loop is not None:
                self.loop.call_soon_threadsafe(self.loop.stop)
                assert self.thread is not None
                self.thread.join(WAIT)
                if not self.loop.is_running():
                    self.loop.close()


def blocking_requests(key: str, release: threading.Event, first: int = 1) -> Iterator[bytes]:
    """A client's request stream: ``first`` requests, then it waits."""
    for _ in range(first):
        yield key.encode()
    release.wait(WAIT)


# ---------------------------------------------------------- aiohttp server


def aiohttp_app(probes: Probes) -> Any:
    """An aiohttp app; every route takes ``?key=`` naming the Probe.
    /echo answers at once; /block waits until canceled (or WAIT);
    /linger answers after 0.2 s; /stream is a StreamResponse writing a
    chunk every 10 ms until canceled."""
    from aiohttp import web

    async def echo(request: web.Request) -> web.Response:
        probe = probes(request.query["key"])
        probe.register()
        probe.completed = True
        return web.Response(text=probe.key)

    async def block(request: web.Request) -> web.Response:
        probe = probes(request.query["key"])
        ctx = probe.register()
        try:
            await asyncio.sleep(WAIT)
        except asyncio.CancelledError:
            probe.task_cancelled += 1
            probe.reason_when_cancelled = ctx.cancel_reason
            raise
        return web.Response(text="not canceled")

    async def linger(request: web.Request) -> web.Response:
        probe = probes(request.query["key"])
        probe.register()
        await asyncio.sleep(0.2)
        probe.completed = True
        return web.Response(text=probe.key)

    async def stream(request: web.Request) -> web.StreamResponse:
        probe = probes(request.query["key"])
        ctx = probe.register()
        response = web.StreamResponse()
        await response.prepare(request)
        try:
            while True:
                await response.write(b"chunk\n")
                probe.items_sent += 1
                await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            probe.task_cancelled += 1
            probe.reason_when_cancelled = ctx.cancel_reason
            raise
        finally:
            probe.generator_closed = True

    async def stubborn(request: web.Request) -> web.Response:
        probe = probes(request.query["key"])
        probe.register()
        while not probe.released.is_set():  # ignores every cancel
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                probe.task_cancelled += 1
        return web.Response(text=probe.key)

    async def give_up(request: web.Request) -> web.Response:
        probe = probes(request.query["key"])
        ctx = probe.register()
        try:
            await asyncio.sleep(WAIT)
        except asyncio.CancelledError:
            probe.task_cancelled += 1
        ctx.raise_if_canceled()  # OperationCanceledError, for a client gone
        return web.Response(text="not canceled")

    app = web.Application()
    app.router.add_get("/give-up", give_up)
    app.router.add_get("/stubborn", stubborn)
    app.router.add_get("/echo", echo)
    app.router.add_get("/block", block)
    app.router.add_get("/linger", linger)
    app.router.add_get("/stream", stream)
    return app


class AiohttpServer:
    """An aiohttp app with ``cancelcore.aiohttp.setup`` on 127.0.0.1 (an
    ``AppRunner`` + ``TCPSite`` in a loop thread of its own)."""

    def __init__(self, close_timeout: float = 5.0, shutdown_timeout: float = 5.0,
                 handler_cancellation: bool = False, host: Any = None) -> None:
        from aiohttp import web

        import cancelcore.aiohttp

        self.probes = Probes()
        self.app = aiohttp_app(self.probes)
        self.host = cancelcore.aiohttp.setup(self.app, host=host, close_timeout=close_timeout)
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run_loop, args=(ready,), daemon=True)
        self.thread.start()
        assert ready.wait(WAIT)
        self.runner = web.AppRunner(self.app, handler_cancellation=handler_cancellation,
                                    shutdown_timeout=shutdown_timeout)

        async def start() -> int:
            await self.runner.setup()
            site = web.TCPSite(self.runner, HOST, 0)
            await site.start()
            return int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

        self.port = self.run(start())
        self.cleaned = False

    def _run_loop(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(ready.set)
        self.loop.run_forever()

    def run(self, coro: Any, timeout: float = WAIT) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def shutdown(self, timeout: float = WAIT + 10) -> None:
        if not self.cleaned:
            self.cleaned = True
            self.run(self.runner.cleanup(), timeout=timeout)

    def close(self) -> None:
        try:
            self.shutdown()
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(WAIT)
            if not self.loop.is_running():
                self.loop.close()

    # raw HTTP/1.1 clients -------------------------------------------------

    def open(self, path: str) -> Any:
        """Sends a GET for ``path`` on a new connection; returns the socket."""
        import socket

        sock = socket.create_connection((HOST, self.port), timeout=WAIT)
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        return sock


def close_rst(sock: Any) -> None:
    """Closes with a reset (SO_LINGER 0) rather than a FIN."""
    import socket
    import struct

    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def read_response(sock: Any, timeout: float = WAIT) -> tuple[int, bytes]:
    """Reads one response with a Content-Length body: (status, body)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed after {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, body[:length]
