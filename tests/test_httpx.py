"""cancelcore.httpx (DESIGN 4.4): outgoing HTTP calls canceled with their
operation, and the deadline they carry, against real servers on 127.0.0.1.

The downstream service is a Starlette app under uvicorn (in a thread of
this process) wrapped by ``CancellationMiddleware``: when our client aborts
a call, that service sees its client leave and cancels its request's
operation.  Both ends share this process's ``time.monotonic()``, so
deadlines are compared directly.  Every count is exact.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from typing import Any, Callable, Iterator, Optional

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from asgi_support import WAIT, LiveServer, close_rst, open_request, wait_until
from cancelcore import (
    CancelReason,
    OperationCanceledError,
    OperationContext,
    ServiceHost,
    current_operation,
)
from cancelcore._operation import _current
from cancelcore.asgi import CancellationMiddleware
from cancelcore.httpx import AsyncHTTPTransport, HTTPTransport

FAULTED = CancelReason.CHANNEL_FAULTED
HEADER = "cancelcore-deadline-ms"
# A cancel must reach the blocked call promptly; the bound is loose
# because the machine is shared (the measured figures are in the report).
PROMPT = 0.5
# Two hops' deadlines differ by the transit time (the header counts from
# its arrival) and the rounding down: milliseconds, bounded loosely here.
SAME_MOMENT = 0.25


# ------------------------------------------------------------- downstream


class Seen:
    """One downstream request: its callbacks (times on time.monotonic()),
    the deadline its operation got and the header that carried it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.cancels: list[tuple[CancelReason, float]] = []
        self.frees = 0
        self.deadline: Optional[float] = None
        self.header: Optional[str] = None
        self.entered = threading.Event()
        self.freed = threading.Event()

    def on_cancel(self, reason: CancelReason, state: Any) -> None:
        with self.lock:
            self.cancels.append((reason, time.monotonic()))

    def on_free(self, state: Any) -> None:
        with self.lock:
            self.frees += 1
        self.freed.set()

    @property
    def reasons(self) -> list[CancelReason]:
        with self.lock:
            return [r for r, _ in self.cancels]


class Downstream:
    """The next service: ``/hold/{key}`` waits (up to 30 s) until its
    request is canceled; ``/info/{key}`` answers at once with what it
    received.  Both register callbacks on their request's operation."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: dict[str, Seen] = {}
        self.requests = 0
        routes = [Route("/hold/{key}", self.hold, methods=["GET", "POST"]),
                  Route("/info/{key}", self.info)]
        self.middleware = CancellationMiddleware(Starlette(routes=routes))

    def __getitem__(self, key: str) -> Seen:
        with self.lock:
            return self.seen.setdefault(key, Seen())

    def _enter(self, request: Request) -> Seen:
        with self.lock:
            self.requests += 1
        seen = self[request.path_params["key"]]
        ctx = current_operation()
        assert ctx is not None
        ctx.register_for_cancel(seen.on_cancel, seen.on_free)
        seen.deadline = ctx.deadline
        seen.header = request.headers.get(HEADER)
        seen.entered.set()
        return seen

    async def hold(self, request: Request) -> Response:
        self._enter(request)
        await asyncio.sleep(30)
        return Response("held")

    async def info(self, request: Request) -> Response:
        seen = self._enter(request)
        client = request.client
        return JSONResponse({
            "header": seen.header,
            "deadline": seen.deadline,
            "port": client.port if client else None,
            "headers": sorted(k for k, _ in request.headers.items()),
        })

    @property
    def host(self) -> ServiceHost:
        return self.middleware.host


@pytest.fixture
def down() -> Iterator[tuple[Downstream, LiveServer]]:
    ds = Downstream()
    srv = LiveServer(ds.middleware).start()
    try:
        yield ds, srv
    finally:
        srv.stop()


def assert_canceled_once(seen: Seen) -> None:
    assert seen.freed.wait(WAIT), "the downstream request's free-state never ran"
    time.sleep(0.05)  # a second cancel would show by now
    assert seen.reasons == [FAULTED]
    assert seen.frees == 1


def settled(host: ServiceHost) -> dict[str, int]:
    assert wait_until(lambda: host.stats["ops_in_flight"] == 0), host.stats
    return host.stats


def pool_connections(transport: Any) -> int:
    return len(transport._pool.connections)


# ---------------------------------------------------------------- sync


def test_sync_call_in_a_worker_thread_is_aborted_at_once(
        down: tuple[Downstream, LiveServer], host: ServiceHost) -> None:
    ds, srv = down
    transport = HTTPTransport()
    client = httpx.Client(transport=transport, timeout=20)
    ch = host.accept_channel()

    def call(ctx: OperationContext) -> httpx.Response:
        return client.get(f"{srv.url}/hold/a")

    future = host.dispatch(ch, call)
    assert ds["a"].entered.wait(WAIT)
    t0 = time.monotonic()
    ch.fault()
    exc = future.exception(WAIT)
    elapsed = time.monotonic() - t0
    assert isinstance(exc, OperationCanceledError), repr(exc)
    assert exc.reason is FAULTED
    assert isinstance(exc.__cause__, httpx.TransportError)
    assert elapsed < PROMPT, elapsed
    # The next service saw its client leave: its request canceled once.
    assert_canceled_once(ds["a"])
    assert ds["a"].cancels[0][1] - t0 < PROMPT
    # The aborted connection did not go back to the pool.
    assert pool_connections(transport) == 0
    stats = settled(ds.host)
    assert (stats["ops_begun"], stats["cancels_channel_faulted"], stats["free_states_run"]) == (1, 1, 1)
    # The client still works, on a new connection.
    assert client.get(f"{srv.url}/info/after").status_code == 200
    client.close()


def test_cancel_from_another_thread_while_blocked(
        down: tuple[Downstream, LiveServer], host: ServiceHost) -> None:
    """The operation canceled on a third thread (not the caller's, not the
    host's): the hook runs there and still wakes the blocked recv."""
    ds, srv = down
    ch = host.accept_channel()
    ctx = ch.begin_operation()
    result: list[BaseException] = []

    def caller() -> None:
        token = _current.set(ctx)
        try:
            with httpx.Client(transport=HTTPTransport(), timeout=20) as client:
                client.get(f"{srv.url}/hold/b")
        except BaseException as exc:
            result.append(exc)
        finally:
            _current.reset(token)

    t = threading.Thread(target=caller)
    t.start()
    assert ds["b"].entered.wait(WAIT)
    canceller = threading.Thread(target=ch.fault)
    canceller.start()
    canceller.join(WAIT)
    t.join(WAIT)
    assert not t.is_alive()
    assert len(result) == 1 and isinstance(result[0], OperationCanceledError)
    assert result[0].reason is FAULTED
    ctx.end()
    assert_canceled_once(ds["b"])


def test_canceled_before_the_request_sends_nothing(
        down: tuple[Downstream, LiveServer], host: ServiceHost) -> None:
    ds, srv = down
    transport = HTTPTransport()
    ch = host.accept_channel()
    ctx = ch.begin_operation()
    ch.fault()
    token = _current.set(ctx)
    try:
        with httpx.Client(transport=transport) as client:
            with pytest.raises(OperationCanceledError) as info:
                client.get(f"{srv.url}/info/never")
            assert info.value.reason is FAULTED
            assert pool_connections(transport) == 0  # not even a connection
    finally:
        _current.reset(token)
        ctx.end()
    time.sleep(0.05)
    assert ds.requests == 0
    assert ds.host.stats["ops_begun"] == 0


def test_cancel_after_the_response_touches_nothing(
        down: tuple[Downstream, LiveServer], host: ServiceHost) -> None:
    """A finished request holds no connection: canceling its operation
    afterwards leaves the keep-alive connection to the next request."""
    ds, srv = down
    transport = HTTPTransport()
    client = httpx.Client(transport=transport, timeout=20)
    ch = host.accept_channel()
    ctx = ch.begin_operation()
    token = _current.set(ctx)
    try:
        ports = [client.get(f"{srv.url}/info/done{i}").json()["port"] for i in range(5)]
    finally:
        _current.reset(token)
    ch.fault()  # five hooks run: all of finished requests
    assert ctx.canceled
    ctx.end()
    again = client.get(f"{srv.url}/info/next").json()["port"]
    assert ports == [again] * 5  # one connection throughout
    for key in [f"done{i}" for i in range(5)] + ["next"]:
        assert ds[key].freed.wait(WAIT) and ds[key].reasons == [] and ds[key].frees == 1
    stats = settled(ds.host)
    assert stats["ops_begun"] == 6 and stats["ops_canceled"] == 0
    client.close()


def test_finished_calls_leave_no_hook_on_their_operation(
        down: tuple[Downstream, LiveServer], host: ServiceHost) -> None:
    """An operation making many calls (a websocket's, a batch job's) keeps
    no hook per finished call, sync or async: only an unfinished one."""
    ds, srv = down
    ctx = host.accept_channel().begin_operation()
    token = _current.set(ctx)
    try:
        with httpx.Client(transport=HTTPTransport(), timeout=20) as client:
            for i in range(20):
                assert client.get(f"{srv.url}/info/h{i}").status_code == 200
            assert not ctx._hooks
            with client.stream("GET", f"{srv.url}/info/hs") as response:
                assert len(ctx._hooks or []) == 1  # its body is still to read
                response.read()
            assert not ctx._hooks

        async def calls() -> None:
            async with httpx.AsyncClient(transport=AsyncHTTPTransport(), timeout=20) as client:
                for i in range(20):
                    assert (await client.get(f"{srv.url}/info/a{i}")).status_code == 200

        asyncio.run(calls())
        assert not ctx._hooks
    finally:
        _current.reset(token)
        ctx.end()


def test_canceled_while_reading_a_streamed_body(
        down: tuple[Downstream, LiveServer], host: ServiceHost) -> None:
    ds, srv = down
    ch = host.accept_channel()
    ctx = ch.begin_operation()

    # A downstream that sends its headers, one chunk, then waits: a raw
    # server on a socket (the body phase is what is tested).
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    closed = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(WAIT)
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(4096)
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
            if conn.recv(4096) == b"":
                closed.set()

    server = threading.Thread(target=serve)
    server.start()
    token = _current.set(ctx)
    try:
        with httpx.Client(transport=HTTPTransport(), timeout=20) as client:
            with client.stream("GET", f"http://127.0.0.1:{port}/") as response:
                chunks = response.iter_raw()
                assert next(chunks) == b"first"
                threading.Timer(0.05, ch.fault).start()
                with pytest.raises(OperationCanceledError):
                    next(chunks)
    finally:
        _current.reset(token)
        ctx.end()
        server.join(WAIT)
        listener.close()
    assert closed.is_set()  # the server saw its client leave


def test_canceled_while_uploading_on_the_request_thread(
        down: tuple[Downstream, LiveServer], host: ServiceHost) -> None:
    """The operation canceled by the request's own thread mid-upload (the
    body generator faults the channel): the hook shuts the socket down
    there, the next write fails, the call raises; the server saw its
    client leave."""
    ds, srv = down
    ch = host.accept_channel()

    def body() -> Iterator[bytes]:
        yield b"x" * 1000
        assert ds["up"].entered.wait(WAIT)
        ch.fault()
        yield b"y" * 1000

    def call(ctx: OperationContext) -> Any:
        with httpx.Client(transport=HTTPTransport(), timeout=20) as client:
            return client.post(f"{srv.url}/hold/up", content=body(), headers={"content-length": "2000"})

    exc = host.dispatch(ch, call).exception(WAIT)
    assert isinstance(exc, OperationCanceledError) and exc.reason is FAULTED, repr(exc)
    assert_canceled_once(ds["up"])


def test_canceled_before_the_socket_is_known(down: tuple[Downstream, LiveServer], host: ServiceHost) -> None:
    """The cancel lands while the connection is being made, before the
    request has a socket to record: the hook finds none, and the socket is
    shut down as it is published -- nothing reaches the server's app."""
    import httpcore

    ds, srv = down
    ch = host.accept_channel()

    class FaultingWhileConnecting(httpcore.SyncBackend):  # the real backend, then a fault
        def connect_tcp(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
            stream = super().connect_tcp(*args, **kwargs)
            ch.fault()
            return stream

    transport = HTTPTransport()
    transport._pool._network_backend._inner = FaultingWhileConnecting()  # type: ignore[attr-defined]

    def call(ctx: OperationContext) -> Any:
        with httpx.Client(transport=transport, timeout=20) as client:
            return client.get(f"{srv.url}/info/early")

    exc = host.dispatch(ch, call).exception(WAIT)
    assert isinstance(exc, OperationCanceledError) and exc.reason is FAULTED, repr(exc)
    time.sleep(0.05)
    assert ds.requests == 0


def test_sync_handler_chain_client_leaving(down: tuple[Downstream, LiveServer]) -> None:
    """Two hops in this process: a client leaves the edge service, whose
    *sync* endpoint (run in a thread pool) is blocked in an httpx call to
    the next service; that call is aborted and the next service's request
    is canceled once."""
    ds, srv = down
    transport = HTTPTransport()
    client = httpx.Client(transport=transport, timeout=20)
    edge_seen = Seen()

    def edge(request: Request) -> Response:  # sync: Starlette runs it in a thread
        ctx = current_operation()
        assert ctx is not None
        ctx.register_for_cancel(edge_seen.on_cancel, edge_seen.on_free)
        edge_seen.entered.set()
        try:
            client.get(f"{srv.url}/hold/chain")
        except OperationCanceledError:
            edge_seen.header = "aborted"
            raise
        return Response("unreachable")

    edge_mw = CancellationMiddleware(Starlette(routes=[Route("/edge", edge)]))
    edge_srv = LiveServer(edge_mw).start()
    try:
        sock = open_request(edge_srv.port, "/edge")
        assert ds["chain"].entered.wait(WAIT)
        t0 = time.monotonic()
        close_rst(sock)
        assert_canceled_once(ds["chain"])
        hop = ds["chain"].cancels[0][1] - t0
        assert hop < PROMPT, hop
        assert edge_seen.freed.wait(WAIT)
        assert edge_seen.reasons == [FAULTED] and edge_seen.frees == 1
        assert edge_seen.header == "aborted"
    finally:
        edge_srv.stop()
        client.close()


def test_async_handler_chain_client_leaving(down: tuple[Downstream, LiveServer]) -> None:
    """The same with an async endpoint and the async transport: the edge
    request's task is cancelled (or the transport aborts the call first);
    either way the next service's request is canceled once."""
    ds, srv = down
    edge_seen = Seen()

    async def edge(request: Request) -> Response:
        ctx = current_operation()
        assert ctx is not None
        ctx.register_for_cancel(edge_seen.on_cancel, edge_seen.on_free)
        try:
            async with httpx.AsyncClient(transport=AsyncHTTPTransport(), timeout=20) as client:
                await client.get(f"{srv.url}/hold/achain")
        except (OperationCanceledError, asyncio.CancelledError):
            edge_seen.header = "aborted"
            raise
        return Response("unreachable")

    edge_srv = LiveServer(CancellationMiddleware(Starlette(routes=[Route("/edge", edge)]))).start()
    try:
        sock = open_request(edge_srv.port, "/edge")
        assert ds["achain"].entered.wait(WAIT)
        t0 = time.monotonic()
        close_rst(sock)
        assert_canceled_once(ds["achain"])
        assert ds["achain"].cancels[0][1] - t0 < PROMPT
        assert edge_seen.freed.wait(WAIT)
        assert edge_seen.reasons == [FAULTED] and edge_seen.frees == 1
        assert edge_seen.header == "aborted"
    finally:
        edge_srv.stop()


# --------------------------------------------------------------- async


def test_async_dispatched_call_is_aborted(down: tuple[Downstream, LiveServer], host: ServiceHost) -> None:
    ds, srv = down

    async def main() -> BaseException:
        async with httpx.AsyncClient(transport=AsyncHTTPTransport(), timeout=20) as client:
            async def call(ctx: OperationContext) -> httpx.Response:
                return await client.get(f"{srv.url}/hold/c")

            ch = host.accept_channel()
            task = host.dispatch(ch, call)
            await asyncio.to_thread(ds["c"].entered.wait, WAIT)
            threading.Thread(target=ch.fault).start()  # from another thread
            try:
                await asyncio.wait_for(task, WAIT)
            except BaseException as exc:
                return exc
            raise AssertionError("the call returned")

    exc = asyncio.run(main())
    # The dispatched task is cancelled too: whichever comes first.
    assert isinstance(exc, (OperationCanceledError, asyncio.CancelledError)), repr(exc)
    assert_canceled_once(ds["c"])


def test_async_call_in_an_uncancelled_task_raises_operation_canceled(
        down: tuple[Downstream, LiveServer], host: ServiceHost) -> None:
    """A task that carries the operation but is not the one the host
    cancels (one the handler started itself): the transport alone aborts
    the call, as ``OperationCanceledError``, within the bound."""
    ds, srv = down
    ch = host.accept_channel()
    ctx = ch.begin_operation()
    transport = AsyncHTTPTransport()

    async def call() -> httpx.Response:
        _current.set(ctx)  # this task's own context copy
        async with httpx.AsyncClient(transport=transport, timeout=20) as client:
            try:
                return await client.get(f"{srv.url}/hold/d")
            finally:
                # The aborted connection did not go back to the pool.
                assert pool_connections(transport) == 0

    async def main() -> tuple[BaseException, float]:
        task = asyncio.ensure_future(call())
        await asyncio.to_thread(ds["d"].entered.wait, WAIT)
        t0 = time.monotonic()
        threading.Thread(target=ch.fault).start()
        try:
            await asyncio.wait_for(task, WAIT)
        except BaseException as exc:
            return exc, time.monotonic() - t0
        raise AssertionError("the call returned")

    exc, elapsed = asyncio.run(main())
    ctx.end()
    assert isinstance(exc, OperationCanceledError), repr(exc)
    assert exc.reason is FAULTED and isinstance(exc.__cause__, httpx.TransportError)
    assert elapsed < PROMPT, elapsed
    assert_canceled_once(ds["d"])


def test_async_canceled_before_start_and_after_completion(
        down: tuple[Downstream, LiveServer], host: ServiceHost) -> None:
    ds, srv = down
    transport = AsyncHTTPTransport()

    async def main() -> None:
        async with httpx.AsyncClient(transport=transport, timeout=20) as client:
            ch = host.accept_channel()
            ctx = ch.begin_operation()
            token = _current.set(ctx)
            first = (await client.get(f"{srv.url}/info/a1")).json()["port"]
            _current.reset(token)
            ch.fault()  # after completion: nothing to abort
            token = _current.set(ctx)
            with pytest.raises(OperationCanceledError):
                await client.get(f"{srv.url}/info/never")
            _current.reset(token)
            ctx.end()
            second = (await client.get(f"{srv.url}/info/a2")).json()["port"]
            assert first == second  # the keep-alive connection survived

    asyncio.run(main())
    assert ds.requests == 2
    stats = settled(ds.host)
    assert stats["ops_begun"] == 2 and stats["ops_canceled"] == 0


# --------------------------------------------------- outside an operation


def _echo(transport: Any, url: str) -> tuple[int, dict[str, Any]]:
    with httpx.Client(transport=transport) as client:
        r = client.get(url, headers={"x-test": "1"})
        return r.status_code, r.json()


def test_outside_an_operation_it_is_the_plain_transport(down: tuple[Downstream, LiveServer]) -> None:
    ds, srv = down
    assert current_operation() is None
    plain = _echo(httpx.HTTPTransport(), f"{srv.url}/info/p")
    ours = _echo(HTTPTransport(), f"{srv.url}/info/o")
    for status, body in (plain, ours):
        assert status == 200 and body["header"] is None and body["deadline"] is None
    assert plain[1]["headers"] == ours[1]["headers"]
    assert HEADER not in ours[1]["headers"]

    async def both() -> list[dict[str, Any]]:
        out = []
        for t in (httpx.AsyncHTTPTransport(), AsyncHTTPTransport()):
            async with httpx.AsyncClient(transport=t) as client:
                out.append((await client.get(f"{srv.url}/info/a", headers={"x-test": "1"})).json())
        return out

    a_plain, a_ours = asyncio.run(both())
    assert a_plain["headers"] == a_ours["headers"] == plain[1]["headers"]


def test_an_operation_without_deadline_sends_no_header(
        down: tuple[Downstream, LiveServer], host: ServiceHost) -> None:
    ds, srv = down
    body = host.dispatch(host.accept_channel(), _deadline_call(f"{srv.url}/info/nd")).result(WAIT)
    assert body["header"] is None and body["deadline"] is None


def test_constructor() -> None:
    with pytest.raises(ValueError, match="http2"):
        HTTPTransport(http2=True)
    with pytest.raises(ValueError, match="http2"):
        AsyncHTTPTransport(http2=True)
    with pytest.raises(ValueError, match="http2"):  # httpx's order: verify, cert, trust_env, http1, http2
        HTTPTransport(True, None, True, True, True)
    with pytest.raises(TypeError):
        HTTPTransport(no_such_argument=1)  # httpx's own check
    t = HTTPTransport(limits=httpx.Limits(max_connections=3), retries=1)
    assert isinstance(t, httpx.HTTPTransport)
    assert isinstance(AsyncHTTPTransport(), httpx.AsyncHTTPTransport)
    t.close()


# ------------------------------------------------------------- deadlines


def _deadline_call(url: str, headers: Optional[dict[str, str]] = None) -> Callable[[OperationContext], Any]:
    def call(ctx: OperationContext) -> Any:
        with httpx.Client(transport=HTTPTransport(), timeout=20) as client:
            return client.get(url, headers=headers).json()
    return call


def test_deadline_travels_in_the_header(down: tuple[Downstream, LiveServer], host: ServiceHost) -> None:
    ds, srv = down
    deadline = time.monotonic() + 5.0
    body = host.dispatch(host.accept_channel(), _deadline_call(f"{srv.url}/info/dl"),
                         deadline=deadline).result(WAIT)
    ms = int(body["header"])
    assert 4000 < ms <= 5000
    # The same moment, give or take the hop's transit (the header counts
    # from its arrival, as gRPC's timeout does) and the rounding down.
    assert abs(body["deadline"] - deadline) < SAME_MOMENT


@pytest.mark.parametrize("given, kept", [("100", True), ("999999", False), ("abc", False),
                                         ("-5", False)])
def test_a_caller_given_header_is_kept_only_when_smaller(
        down: tuple[Downstream, LiveServer], host: ServiceHost, given: str, kept: bool) -> None:
    ds, srv = down
    body = host.dispatch(host.accept_channel(),
                         _deadline_call(f"{srv.url}/info/g", {HEADER: given}),
                         deadline=time.monotonic() + 5.0).result(WAIT)
    if kept:
        assert body["header"] == given
    else:
        assert 4000 < int(body["header"]) <= 5000


def test_deadline_expires_downstream_at_the_same_moment(
        down: tuple[Downstream, LiveServer], host: ServiceHost) -> None:
    """The edge operation's deadline reaches the next service, whose
    request is canceled with CHANNEL_FAULTED at about the same moment; the
    edge's own expiry aborts its call."""
    ds, srv = down
    deadline = time.monotonic() + 0.6
    ch = host.accept_channel()

    def call(ctx: OperationContext) -> Any:
        with httpx.Client(transport=HTTPTransport(), timeout=20) as client:
            return client.get(f"{srv.url}/hold/exp")

    future = host.dispatch(ch, call, deadline=deadline)
    seen = ds["exp"]
    assert seen.entered.wait(WAIT)
    assert seen.deadline is not None and abs(seen.deadline - deadline) < SAME_MOMENT
    outcome = future.exception(WAIT) or future.result()
    assert_canceled_once(seen)
    when = seen.cancels[0][1]
    assert deadline - SAME_MOMENT < when < deadline + SAME_MOMENT + PROMPT, when - deadline
    # Downstream expired first (its deadline is rounded down) and answered
    # 503, or the edge's own deadline aborted the call first.
    assert isinstance(outcome, OperationCanceledError) or outcome.status_code == 503, outcome
    assert wait_until(lambda: host.stats["deadlines_expired"] == 1)
    # Whichever timer fired first, the downstream request was canceled once.
    assert settled(ds.host)["cancels_channel_faulted"] == 1


def test_the_downstream_deadline_expires_there(
        down: tuple[Downstream, LiveServer], host: ServiceHost) -> None:
    """A shorter caller-given budget: the next service's own timer cancels
    its request (CHANNEL_FAULTED) while the edge operation runs on; the
    edge's call gets that service's answer (503: cut while its client
    waits)."""
    ds, srv = down
    ch = host.accept_channel()

    def call(ctx: OperationContext) -> int:
        with httpx.Client(transport=HTTPTransport(), timeout=20) as client:
            return client.get(f"{srv.url}/hold/short", headers={HEADER: "300"}).status_code

    t0 = time.monotonic()
    future = host.dispatch(ch, call, deadline=t0 + 10.0)
    assert future.result(WAIT) == 503
    seen = ds["short"]
    assert seen.header == "300"
    assert_canceled_once(seen)
    assert seen.deadline is not None and seen.cancels[0][1] - t0 >= 0.3
    assert 0.0 <= seen.cancels[0][1] - seen.deadline < PROMPT
    stats = settled(ds.host)
    assert stats["deadlines_expired"] == 1 and stats["cancels_channel_faulted"] == 1
    assert host.stats["deadlines_expired"] == 0


# ------------------------------------------------ many at once, trio, TLS


def test_host_abort_cancels_every_call_once(down: tuple[Downstream, LiveServer],
                                            make_host: Callable[..., ServiceHost]) -> None:
    """Ten sync calls in flight on ten operations; the edge host is
    aborted: each call raises with HOST_ABORT, and each downstream request
    is canceled exactly once (its client left: CHANNEL_FAULTED there)."""
    ds, srv = down
    host = make_host(max_workers=12)
    transport = HTTPTransport()
    client = httpx.Client(transport=transport, timeout=20)
    keys = [f"m{i}" for i in range(10)]
    futures = [host.dispatch(host.accept_channel(), lambda ctx, k=k: client.get(f"{srv.url}/hold/{k}"))
               for k in keys]
    assert all(ds[k].entered.wait(WAIT) for k in keys)
    host.abort()
    for f in futures:
        exc = f.exception(WAIT)
        assert isinstance(exc, OperationCanceledError) and exc.reason is CancelReason.HOST_ABORT, exc
    for k in keys:
        assert_canceled_once(ds[k])
    stats = settled(ds.host)
    assert (stats["ops_begun"], stats["cancels_channel_faulted"], stats["free_states_run"]) == (10, 10, 10)
    assert pool_connections(transport) == 0
    client.close()


def test_async_transport_under_trio(down: tuple[Downstream, LiveServer], host: ServiceHost) -> None:
    trio = pytest.importorskip("trio")
    ds, srv = down
    ch = host.accept_channel()
    ctx = ch.begin_operation()
    out: list[BaseException] = []

    async def main() -> None:
        _current.set(ctx)
        async with httpx.AsyncClient(transport=AsyncHTTPTransport(), timeout=20) as client:
            threading.Thread(target=lambda: (ds["trio"].entered.wait(WAIT), ch.fault())).start()
            try:
                await client.get(f"{srv.url}/hold/trio")
            except OperationCanceledError as exc:
                out.append(exc)

    trio.run(main)
    ctx.end()
    assert len(out) == 1 and out[0].reason is FAULTED
    assert_canceled_once(ds["trio"])


@pytest.fixture
def tls(tmp_path: Any) -> tuple[str, str, str]:
    """A self-signed certificate for 127.0.0.1: (certfile, keyfile, cafile)."""
    pytest.importorskip("cryptography")
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return str(certfile), str(keyfile), str(certfile)


def test_tls_calls_are_aborted_sync_and_async(tls: tuple[str, str, str], host: ServiceHost) -> None:
    """Over TLS the socket under the TLS layer is shut down (an SSLSocket's
    own shutdown would drop TLS state the blocked reader still uses)."""
    import ssl

    certfile, keyfile, cafile = tls
    ds = Downstream()
    srv = LiveServer(ds.middleware, ssl_certfile=certfile, ssl_keyfile=keyfile).start()
    url = f"https://127.0.0.1:{srv.port}"
    try:
        verify = ssl.create_default_context(cafile=cafile)
        with httpx.Client(transport=HTTPTransport(verify=verify), timeout=20) as client:
            assert client.get(f"{url}/info/plain").status_code == 200  # outside an operation
            ch = host.accept_channel()
            future = host.dispatch(ch, lambda ctx: client.get(f"{url}/hold/tls-sync"))
            assert ds["tls-sync"].entered.wait(WAIT)
            t0 = time.monotonic()
            ch.fault()
            exc = future.exception(WAIT)
            assert isinstance(exc, OperationCanceledError), repr(exc)
            assert time.monotonic() - t0 < PROMPT
        assert_canceled_once(ds["tls-sync"])

        ch = host.accept_channel()
        ctx = ch.begin_operation()

        async def main() -> BaseException:
            _current.set(ctx)
            async with httpx.AsyncClient(transport=AsyncHTTPTransport(verify=verify), timeout=20) as client:
                task = asyncio.ensure_future(client.get(f"{url}/hold/tls-async"))
                await asyncio.to_thread(ds["tls-async"].entered.wait, WAIT)
                threading.Thread(target=ch.fault).start()
                try:
                    await asyncio.wait_for(task, WAIT)
                except BaseException as exc:
                    return exc
                raise AssertionError("the call returned")

        exc = asyncio.run(main())
        ctx.end()
        assert isinstance(exc, OperationCanceledError), repr(exc)
        assert_canceled_once(ds["tls-async"])
    finally:
        srv.stop()


def test_cancels_racing_requests_never_hit_a_neighbour(
        down: tuple[Downstream, LiveServer], make_host: Callable[..., ServiceHost]) -> None:
    """Operations canceled at random moments around their request (before
    it starts, while it connects or waits, after it completed) on a client
    shared with a thread making plain requests: no call hangs, each
    canceled call raises OperationCanceledError, no downstream request is
    canceled twice, and the neighbour never loses a request (a hook of a
    finished request never shuts down a connection that went back to the
    pool)."""
    import random

    ds, srv = down
    host = make_host(max_workers=2)
    client = httpx.Client(transport=HTTPTransport(limits=httpx.Limits(max_connections=4)), timeout=20)
    stop = threading.Event()
    neighbour: list[int] = []
    failures: list[BaseException] = []

    def plain_requests() -> None:
        i = 0
        while not stop.is_set():
            try:
                neighbour.append(client.get(f"{srv.url}/info/n{i}").status_code)
            except BaseException as exc:  # recorded: the test fails on it
                failures.append(exc)
            i += 1

    t = threading.Thread(target=plain_requests)
    t.start()
    rng = random.Random(1234)
    outcomes = {"ok": 0, "canceled": 0}
    try:
        for i in range(150):
            ch = host.accept_channel()
            future = host.dispatch(ch, lambda ctx, i=i: client.get(f"{srv.url}/info/r{i}").status_code)
            time.sleep(rng.random() * 0.003)
            ch.fault()
            exc = future.exception(WAIT)
            if exc is None:
                assert future.result() == 200
                outcomes["ok"] += 1
            else:
                assert isinstance(exc, OperationCanceledError), repr(exc)
                outcomes["canceled"] += 1
    finally:
        stop.set()
        t.join(WAIT)
        client.close()
    assert failures == [] and neighbour and set(neighbour) == {200}
    assert outcomes["ok"] + outcomes["canceled"] == 150
    stats = settled(ds.host)
    assert stats["ops_begun"] == stats["free_states_run"] == ds.requests
    for key, seen in ds.seen.items():
        assert seen.reasons in ([], [FAULTED]) and seen.frees == 1, key
        if key.startswith("n"):
            assert seen.reasons == [], key  # the neighbour's requests all completed
