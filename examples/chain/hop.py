#!/usr/bin/env python3
"""hop.py: one service of the cancellation chain, in a process of its own.

    python hop.py NAME SERVE HANDLER NEXT [plain]

- ``NAME``: the hop's name in its reports.
- ``SERVE``: how it is served on 127.0.0.1 (a free port):
  ``http`` (uvicorn, ``cancelcore.asgi.CancellationMiddleware`` around a
  Starlette app: ``GET /work?key=K&t=T``), ``grpc`` (``grpc.server``, a
  thread pool, with ``CancellationInterceptor``) or ``grpc-aio``
  (``grpc.aio.server`` with ``AioCancellationInterceptor``); the gRPC
  method is ``/chain.Hop/Work``, its request the JSON ``{"key", "t"}``.
- ``HANDLER``: ``async`` (an ``async def`` endpoint on the event loop) or
  ``sync`` (a plain ``def``, run in a worker thread).
- ``NEXT``: the next hop, ``http://127.0.0.1:PORT`` or
  ``grpc://127.0.0.1:PORT``, called through cancelcore's client for the
  handler's kind (``cancelcore.httpx.AsyncHTTPTransport`` /
  ``HTTPTransport``, ``cancelcore.grpc.aio_client_interceptor()`` /
  ``client_interceptor()``); or ``-``: the last hop, whose work is to wait
  ``t`` seconds (or until it is canceled).
- ``plain`` (benchmarks only): call the next hop through the plain clients
  (``httpx.AsyncHTTPTransport``, no gRPC interceptor): the baseline, in
  which only a cancelled task closes its connection.

Every request's handler registers a cancel callback and a free-state
callback on its operation (``cancelcore.current_operation()``), and the
process reports what happens as one JSON object per line on stdout,
flushed at once, with ``time.monotonic()`` timestamps (CLOCK_MONOTONIC:
comparable across the processes of one machine):

    {"ev": "ready", "hop": NAME, "port": P, "pid": N}
    {"ev": "begin", "hop", "key", "t", "deadline", "remaining"}
    {"ev": "cancel", "hop", "key", "t", "reason", "thread"}
    {"ev": "free", "hop", "key", "t"}
    {"ev": "end", "hop", "key", "t", "outcome"}   (the handler returned or raised)
    {"ev": "deadline-wait", "hop", "key", "t", "left", "error"}
        (a downstream call failed within DEADLINE_SLACK of this hop's own
        deadline: the handler waits for that deadline before it fails)
    {"ev": "stats", "hop", "stats"}                (the host's counters)

Standard input is the control line: ``stats`` asks for the host's
counters; end of input (the parent closed it, or died) stops the server
gracefully, and the process exits within a few seconds whatever happens.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Optional
from urllib.parse import urlsplit

import cancelcore
from cancelcore import CancelReason, OperationContext, current_operation

HOST = "127.0.0.1"
GRPC_METHOD = "/chain.Hop/Work"
# A downstream failure this close to our own deadline is that deadline: the
# budget we forwarded ran out one hop further down a moment before ours
# (the header carries whole milliseconds; gRPC's client has its own timer).
# The handler then waits for its own deadline to cancel it rather than
# returning first, so every hop reports the deadline it reached.
DEADLINE_SLACK = 0.05
# httpx's timeouts (connect, each read...) for a downstream HTTP call: no
# deadline, only a bound on a silent peer.  gRPC calls get none: a gRPC
# timeout is a deadline, and would be forwarded as one.
CALL_TIMEOUT = 60.0
EXIT_BACKSTOP = 8.0  # after stdin closes, the process is gone within this

_out_lock = threading.Lock()


def emit(ev: str, **fields: Any) -> None:
    line = json.dumps({"ev": ev, "hop": NAME, **fields})
    with _out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class Record:
    """One request's callbacks: they report, and wake a sync handler."""

    __slots__ = ("key", "canceled")

    def __init__(self, ctx: OperationContext, key: str) -> None:
        self.key = key
        self.canceled = threading.Event()
        ctx.register_for_cancel(self.on_cancel, self.on_free)
        emit("begin", key=key, t=time.monotonic(), deadline=ctx.deadline, remaining=ctx.time_remaining())

    def on_cancel(self, reason: CancelReason, _state: Any) -> None:
        t = time.monotonic()  # first: what the chain's latency is measured by
        self.canceled.set()
        emit("cancel", key=self.key, t=t, reason=reason.name, thread=threading.current_thread().name)

    def on_free(self, _state: Any) -> None:
        emit("free", key=self.key, t=time.monotonic())


def _begin(key: str) -> tuple[OperationContext, Record]:
    ctx = current_operation()
    if ctx is None:  # the adapters always run a request as an operation
        raise RuntimeError("no operation inside a request")
    return ctx, Record(ctx, key)


def _near_deadline(ctx: OperationContext, key: str, exc: Exception) -> Optional[float]:
    """Seconds to wait for our own deadline after a downstream failure, or
    None; reported (``deadline-wait``) when it is waited for."""
    left = ctx.time_remaining()
    if left is None or left > DEADLINE_SLACK or ctx.canceled:
        return None
    emit("deadline-wait", key=key, t=time.monotonic(), left=left, error=type(exc).__name__)
    return left + DEADLINE_SLACK


def _outcome(ctx: OperationContext, exc: BaseException) -> str:
    if ctx.canceled:
        return "canceled"
    return f"error {type(exc).__name__}"


# ------------------------------------------------------------- downstream


class Downstream:
    """The next hop, through cancelcore's client for the handler's kind.
    Clients are made once (connections are reused); the asyncio ones on the
    loop that first uses them."""

    def __init__(self, url: str, plain: bool = False) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "grpc") or parts.hostname != HOST or parts.port is None:
            raise ValueError(f"NEXT must be http://{HOST}:PORT or grpc://{HOST}:PORT, not {url!r}")
        self.scheme = parts.scheme
        self.plain = plain
        self.address = f"{HOST}:{parts.port}"
        self._sync: Any = None
        self._async: Any = None
        self._lock = threading.Lock()

    @staticmethod
    def _request(key: str, t: float) -> bytes:
        return json.dumps({"key": key, "t": t}).encode()

    def call(self, key: str, t: float) -> str:
        """A blocking call, from a worker thread."""
        with self._lock:
            if self._sync is None:
                self._sync = self._make_sync()
        if self.scheme == "http":
            response = self._sync.get("/work", params={"key": key, "t": t})
            response.raise_for_status()
            return str(response.text)
        return bytes(self._sync(self._request(key, t))).decode()

    def _make_sync(self) -> Any:
        if self.scheme == "http":
            import httpx

            import cancelcore.httpx as cc_httpx
            return httpx.Client(base_url=f"http://{self.address}", timeout=CALL_TIMEOUT,
                                transport=httpx.HTTPTransport() if self.plain else cc_httpx.HTTPTransport())
        import grpc

        import cancelcore.grpc as cc_grpc
        channel = grpc.insecure_channel(self.address)
        if not self.plain:
            channel = grpc.intercept_channel(channel, cc_grpc.client_interceptor())
        return channel.unary_unary(GRPC_METHOD)

    async def acall(self, key: str, t: float) -> str:
        """A call from a task."""
        if self._async is None:
            self._async = self._make_async()
        if self.scheme == "http":
            response = await self._async.get("/work", params={"key": key, "t": t})
            response.raise_for_status()
            return str(response.text)
        return bytes(await self._async(self._request(key, t))).decode()

    def _make_async(self) -> Any:
        if self.scheme == "http":
            import httpx

            import cancelcore.httpx as cc_httpx
            transport = httpx.AsyncHTTPTransport() if self.plain else cc_httpx.AsyncHTTPTransport()
            return httpx.AsyncClient(base_url=f"http://{self.address}", timeout=CALL_TIMEOUT,
                                     transport=transport)
        import grpc.aio

        import cancelcore.grpc as cc_grpc
        interceptors = [] if self.plain else cc_grpc.aio_client_interceptor()
        if not isinstance(interceptors, (list, tuple)):
            interceptors = [interceptors]
        channel = grpc.aio.insecure_channel(self.address, interceptors=list(interceptors) or None)
        return channel.unary_unary(GRPC_METHOD)


# ---------------------------------------------------------------- handlers


def work_sync(key: str, t: float) -> str:
    """The handler as a plain function, in a worker thread."""
    ctx, record = _begin(key)
    try:
        if NEXT is None:
            # The last hop's work: only its cancel callback (or the end of
            # the work) wakes it.
            record.canceled.wait(t)
            ctx.raise_if_canceled()
            result = NAME
        else:
            try:
                result = f"{NAME}>{NEXT.call(key, t)}"
            except Exception as exc:
                wait = _near_deadline(ctx, key, exc)
                if wait is not None:
                    record.canceled.wait(wait)
                raise
    except BaseException as exc:
        emit("end", key=key, t=time.monotonic(), outcome=_outcome(ctx, exc))
        raise
    emit("end", key=key, t=time.monotonic(), outcome="ok")
    return result


async def work_async(key: str, t: float) -> str:
    """The handler as a coroutine: a canceled operation cancels its task."""
    ctx, record = _begin(key)
    try:
        if NEXT is None:
            await asyncio.sleep(t)
            result = NAME
        else:
            try:
                result = f"{NAME}>{await NEXT.acall(key, t)}"
            except Exception as exc:
                wait = _near_deadline(ctx, key, exc)
                if wait is not None:
                    limit = time.monotonic() + wait
                    while not record.canceled.is_set() and time.monotonic() < limit:
                        await asyncio.sleep(0.002)  # the cancel cancels this task
                raise
    except BaseException as exc:
        emit("end", key=key, t=time.monotonic(), outcome=_outcome(ctx, exc))
        raise
    emit("end", key=key, t=time.monotonic(), outcome="ok")
    return result


# ----------------------------------------------------------------- servers


def _parse(key: Any, t: Any) -> tuple[str, float]:
    if not isinstance(key, str) or not key:
        raise ValueError("key must be a non-empty string")
    seconds = float(t)
    if not 0.0 <= seconds <= 600.0:
        raise ValueError("t must be within 0..600 seconds")
    return key, seconds


def serve_http(stopping: threading.Event) -> tuple[Callable[[], Any], Callable[[], Any], Callable[[], None]]:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route

    from cancelcore.asgi import CancellationMiddleware, uvicorn_server

    if HANDLER == "async":
        async def endpoint(request: Request) -> Response:
            key, t = _parse(request.query_params.get("key"), request.query_params.get("t", "0"))
            return PlainTextResponse(await work_async(key, t))
    else:
        def endpoint(request: Request) -> Response:  # type: ignore[misc]  # Starlette runs it in a thread
            key, t = _parse(request.query_params.get("key"), request.query_params.get("t", "0"))
            return PlainTextResponse(work_sync(key, t))

    mw = CancellationMiddleware(Starlette(routes=[Route("/work", endpoint)]), close_timeout=2.0)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, 0))
    config = uvicorn.Config(mw, log_level="warning", lifespan="on", timeout_graceful_shutdown=4)
    server = uvicorn_server(config)

    def stop() -> None:
        server.should_exit = True

    def run() -> None:
        def ready() -> None:
            while not server.started and not stopping.is_set():
                time.sleep(0.01)
            if server.started:
                emit("ready", port=sock.getsockname()[1], pid=os.getpid())

        threading.Thread(target=ready, daemon=True).start()
        server.run(sockets=[sock])

    return run, lambda: mw.host.stats, stop


def _grpc_handler(behaviour: Callable[..., Any]) -> Any:
    import grpc

    return grpc.method_handlers_generic_handler("chain.Hop", {
        "Work": grpc.unary_unary_rpc_method_handler(behaviour)})


def serve_grpc(stopping: threading.Event) -> tuple[Callable[[], Any], Callable[[], Any], Callable[[], None]]:
    import grpc

    from cancelcore.grpc import CancellationInterceptor

    if HANDLER != "sync":
        raise ValueError("a grpc.server hop runs sync handlers (use grpc-aio for async)")

    def behaviour(request: bytes, context: Any) -> bytes:
        body = json.loads(request)
        return work_sync(*_parse(body.get("key"), body.get("t", 0))).encode()

    interceptor = CancellationInterceptor(close_timeout=2.0)
    server = grpc.server(ThreadPoolExecutor(max_workers=8), interceptors=[interceptor])
    server.add_generic_rpc_handlers((_grpc_handler(behaviour),))
    port = server.add_insecure_port(f"{HOST}:0")

    def run() -> None:
        server.start()
        emit("ready", port=port, pid=os.getpid())
        stopping.wait()
        interceptor.stop(server, 1.0)

    return run, lambda: interceptor.host.stats, lambda: None


def serve_grpc_aio(stopping: threading.Event) -> tuple[Callable[[], Any], Callable[[], Any], Callable[[], None]]:
    import grpc.aio

    from cancelcore.grpc import AioCancellationInterceptor

    interceptor: Any = None

    if HANDLER == "async":
        async def behaviour(request: bytes, context: Any) -> bytes:
            body = json.loads(request)
            return (await work_async(*_parse(body.get("key"), body.get("t", 0)))).encode()
    else:
        def behaviour(request: bytes, context: Any) -> bytes:  # type: ignore[misc]  # the interceptor's threads
            body = json.loads(request)
            return work_sync(*_parse(body.get("key"), body.get("t", 0))).encode()

    async def main() -> None:
        nonlocal interceptor
        interceptor = AioCancellationInterceptor(close_timeout=2.0)
        server = grpc.aio.server(interceptors=[interceptor])
        server.add_generic_rpc_handlers((_grpc_handler(behaviour),))
        port = server.add_insecure_port(f"{HOST}:0")
        await server.start()
        emit("ready", port=port, pid=os.getpid())
        await asyncio.get_running_loop().run_in_executor(None, stopping.wait)
        await interceptor.stop(server, 1.0)

    return (lambda: asyncio.run(main()),
            lambda: interceptor.host.stats if interceptor is not None else {}, lambda: None)


# -------------------------------------------------------------------- main

NAME = "hop"
HANDLER = "async"
NEXT: Optional[Downstream] = None


def _control(stopping: threading.Event, stats: Callable[[], Any], stop: Callable[[], None]) -> None:
    """Reads the control lines from stdin until it closes."""
    for line in sys.stdin:
        if line.strip() == "stats":
            emit("stats", stats=stats())
    stopping.set()
    stop()
    # Whatever the server does with its stop, the process is gone soon.
    timer = threading.Timer(EXIT_BACKSTOP, os._exit, args=(3,))
    timer.daemon = True
    timer.start()


def main(argv: list[str]) -> int:
    global NAME, HANDLER, NEXT
    if (len(argv) not in (4, 5) or argv[1] not in ("http", "grpc", "grpc-aio") or argv[2] not in ("async", "sync")
            or argv[4:] not in ([], ["plain"])):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    NAME, serve, HANDLER = argv[0], argv[1], argv[2]
    try:
        NEXT = None if argv[3] == "-" else Downstream(argv[3], plain=argv[4:] == ["plain"])
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    stopping = threading.Event()
    make = {"http": serve_http, "grpc": serve_grpc, "grpc-aio": serve_grpc_aio}[serve]
    run, stats, stop = make(stopping)
    threading.Thread(target=_control, args=(stopping, stats, stop), name="control", daemon=True).start()
    run()
    emit("exit", t=time.monotonic(), cancelcore=cancelcore.__version__)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
