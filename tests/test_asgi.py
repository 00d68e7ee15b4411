"""cancelcore.asgi under a real server: uvicorn on 127.0.0.1 in a background
thread, real TCP clients (DESIGN 4).

Each request registers its own callbacks (``current_operation()`` inside the
handler, the request's key as state); the tests assert exact counts from
those records and from ``middleware.host.stats``, and that uvicorn logs no
warning or error for the cases the adapter handles.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Any, AsyncIterator, Callable, Iterator, Optional

import httpx
import pytest
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from asgi_support import (
    HOST,
    WAIT,
    LiveServer,
    Probe,
    Probes,
    close_fin,
    close_rst,
    open_request,
    percentile,
    read_response,
    read_until_count,
    wait_until,
)
from cancelcore import CancelReason, HostState, OperationContext, ServiceHost, current_operation
from cancelcore.asgi import CancellationMiddleware

FAULTED = CancelReason.CHANNEL_FAULTED
ABORT = CancelReason.HOST_ABORT

# uvicorn's own report when its graceful-shutdown timeout expires: an
# ERROR it logs whatever the app does (the adapter's business is what
# happens next).
UVICORN_GAVE_UP = r"ERROR uvicorn\.error: Cancel \d+ running task\(s\), timeout graceful shutdown exceeded"


# ------------------------------------------------------------------ fixtures


@pytest.fixture
def live() -> Iterator[Callable[..., LiveServer]]:
    """Starts uvicorn servers (``live(app, **config)``); every one is stopped
    at teardown, bounded (a server that does not stop fails the test)."""
    servers: list[LiveServer] = []

    def start(app: Any, **config: Any) -> LiveServer:
        srv = LiveServer(app, **config)
        servers.append(srv)
        return srv.start()

    yield start
    errors = []
    for srv in reversed(servers):
        try:
            srv.stop()
        except AssertionError as exc:
            errors.append(str(exc))
    assert not errors, errors


def stats_of(host: ServiceHost, *keys: str) -> dict[str, int]:
    st = host.stats
    return {k: st[k] for k in keys}


STAT_KEYS = (
    "ops_begun", "ops_ended", "ops_in_flight", "ops_canceled",
    "cancels_channel_faulted", "cancels_host_abort",
    "cancel_callbacks_run", "free_states_run", "callback_errors", "channels_open",
)


def expect_stats(host: ServiceHost, *, begun: int, faulted: int = 0, aborted: int = 0,
                 freed: Optional[int] = None) -> None:
    """The host's counters once every request has ended: ``begun`` requests,
    ``faulted`` of them canceled by their client leaving, ``aborted`` by
    the host, ``freed`` free-states run (default: every request registered
    one), no callback error, and no channel but the one every request runs
    on."""
    assert wait_until(lambda: host.stats["ops_in_flight"] == 0)
    assert stats_of(host, *STAT_KEYS) == {
        "ops_begun": begun,
        "ops_ended": begun,
        "ops_in_flight": 0,
        "ops_canceled": faulted + aborted,
        "cancels_channel_faulted": faulted,
        "cancels_host_abort": aborted,
        "cancel_callbacks_run": faulted + aborted,
        "free_states_run": begun if freed is None else freed,
        "callback_errors": 0,
        "channels_open": 1,
    }


def assert_canceled_once(probe: Probe, reason: CancelReason, *, completed: bool = False) -> None:
    assert probe.freed.wait(WAIT), f"free-state never ran: {probe}"
    assert probe.reasons == [reason], probe
    assert [c[1] for c in probe.cancels] == [probe.key]  # its own state
    assert probe.n_free == 1, probe
    assert [f[0] for f in probe.frees] == [probe.key]
    assert not probe.cancel_after_free
    assert probe.completed is completed, probe


def assert_never_canceled(probe: Probe) -> None:
    assert probe.freed.wait(WAIT), f"free-state never ran: {probe}"
    assert probe.n_cancel == 0, probe
    assert probe.n_free == 1, probe
    assert [f[0] for f in probe.frees] == [probe.key]


def settle(probe: Probe, seconds: float = 0.1) -> None:
    """Gives a late (wrong) callback time to show up."""
    n = (probe.n_cancel, probe.n_free)
    time.sleep(seconds)
    assert (probe.n_cancel, probe.n_free) == n, f"late callback: {probe}"


# ---------------------------------------------------------------------- apps


class Notes:
    """What an app saw outside requests (lifespan), and its middleware."""

    def __init__(self) -> None:
        self.mw: Optional[CancellationMiddleware] = None
        self.startup_operation: Any = "unset"
        self.host_state_at_app_shutdown: Optional[HostState] = None
        self.lifespan_shutdown = threading.Event()


def starlette_app(probes: Probes, notes: Optional[Notes] = None) -> Starlette:
    notes = notes if notes is not None else Notes()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        notes.startup_operation = current_operation()
        yield
        if notes.mw is not None:
            notes.host_state_at_app_shutdown = notes.mw.host.state
        notes.lifespan_shutdown.set()

    async def sleep(request: Request) -> Response:
        key = request.path_params["key"]
        seconds = float(request.query_params.get("t", "30"))
        probe = probes.register(key)
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            with probe.lock:
                probe.task_cancelled += 1
            raise
        probe.completed = True
        return PlainTextResponse(f"slept {key}")

    async def stream(request: Request) -> Response:
        key = request.path_params["key"]
        probe = probes.register(key)

        async def chunks() -> AsyncIterator[bytes]:
            try:
                for n in range(2000):
                    yield f"chunk-{n:04d}\n".encode()
                    with probe.lock:
                        probe.chunks_sent += 1
                    await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                with probe.lock:
                    probe.task_cancelled += 1
                raise
            probe.completed = True

        return StreamingResponse(chunks(), media_type="text/plain")

    def sync_block(request: Request) -> Response:
        # A def endpoint: Starlette runs it in its thread pool.
        key = request.path_params["key"]
        probe = probes.register(key)
        probe.notes["thread"] = threading.get_ident()
        released = probe.released.wait(10.0)
        probe.notes["released_at"] = time.perf_counter()
        probe.notes["released"] = released
        time.sleep(0.2)  # cleaning up what the request holds
        ctx = current_operation()
        try:
            probe.notes["canceled_at_return"] = ctx.canceled if ctx is not None else None
        except Exception as exc:  # InvalidOperationError: it already ended
            probe.notes["canceled_at_return"] = exc
        probe.completed = True
        probe.notes["returned_at"] = time.perf_counter()
        return PlainTextResponse(f"sync {key}")

    def sync_ok(request: Request) -> Response:
        key = request.path_params["key"]
        probe = probes.register(key)
        ctx = current_operation()
        probe.notes["thread"] = threading.get_ident()
        probe.notes["canceled"] = ctx.canceled if ctx is not None else None
        probe.completed = True
        return PlainTextResponse(f"sync {key}")

    async def background(request: Request) -> Response:
        key = request.path_params["key"]
        probe = probes.register(key)

        async def after_response() -> None:
            probe.notes["background_started"] = time.perf_counter()
            await asyncio.sleep(0.4)
            probe.completed = True

        return PlainTextResponse(f"bg {key}", background=BackgroundTask(after_response))

    async def upload(request: Request) -> Response:
        key = request.path_params["key"]
        probe = probes.register(key)
        try:
            body = await request.body()
        except asyncio.CancelledError:
            with probe.lock:
                probe.task_cancelled += 1
            raise
        probe.completed = True
        return PlainTextResponse(f"got {len(body)}")

    async def whoami(request: Request) -> Response:
        ctx = current_operation()
        mw = notes.mw
        return JSONResponse({
            "is_context": isinstance(ctx, OperationContext),
            "live_on_host": mw is not None and ctx in mw.host._live,
            "canceled": ctx.canceled if ctx is not None else None,
            "id": id(ctx),
        })

    return Starlette(
        routes=[
            Route("/sleep/{key}", sleep),
            Route("/stream/{key}", stream),
            Route("/sync-block/{key}", sync_block),
            Route("/sync-ok/{key}", sync_ok),
            Route("/bg/{key}", background),
            Route("/upload/{key}", upload, methods=["POST"]),
            Route("/whoami", whoami),
        ],
        lifespan=lifespan,
    )


def wrapped(probes: Probes, notes: Optional[Notes] = None, **kw: Any) -> CancellationMiddleware:
    notes = notes if notes is not None else Notes()
    mw = CancellationMiddleware(starlette_app(probes, notes), **kw)
    notes.mw = mw
    return mw


# --------------------------------------------------- 1. one client leaves


@pytest.mark.parametrize("close", [close_fin, close_rst], ids=["fin", "rst"])
def test_client_disconnect_mid_request_cancels_once(live: Callable[..., LiveServer], close: Callable[..., float]) -> None:
    probes = Probes()
    mw = wrapped(probes)
    srv = live(mw)

    s = open_request(srv.port, "/sleep/a?t=30")
    probe = probes["a"]
    assert probe.entered.wait(WAIT)
    assert probe.n_cancel == 0
    t_close = close(s)

    assert_canceled_once(probe, FAULTED)
    assert probe.task_cancelled == 1  # the handler's task saw CancelledError
    latency = probe.cancel_time - t_close
    assert 0.0 <= latency < 1.0, latency
    settle(probe)
    expect_stats(mw.host, begun=1, faulted=1)
    assert mw.host.state == HostState.OPEN  # a fault is the channel's only

    srv.stop()
    assert srv.problems() == []
    assert mw.host.state == HostState.CLOSED


def test_disconnect_to_cancel_latency(live: Callable[..., LiveServer], capsys: pytest.CaptureFixture[str],
                                      record_property: Callable[[str, Any], None]) -> None:
    probes = Probes()
    mw = wrapped(probes)
    srv = live(mw)
    samples = []
    for i in range(40):
        s = open_request(srv.port, f"/sleep/l{i}?t=30")
        probe = probes[f"l{i}"]
        assert probe.entered.wait(WAIT)
        t_close = (close_fin if i % 2 else close_rst)(s)
        assert_canceled_once(probe, FAULTED)
        samples.append(probe.cancel_time - t_close)
    expect_stats(mw.host, begun=40, faulted=40)
    srv.stop()
    assert srv.problems() == []

    p50, p99 = percentile(samples, 50), percentile(samples, 99)
    record_property("disconnect_to_cancel_p50_ms", round(p50 * 1e3, 3))
    record_property("disconnect_to_cancel_p99_ms", round(p99 * 1e3, 3))
    with capsys.disabled():
        print(f"\n[asgi] disconnect-to-cancel latency over {len(samples)} disconnects: "
              f"p50 {p50 * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms, max {max(samples) * 1e3:.2f} ms")
    assert max(samples) < 1.0, samples


def test_client_leaves_during_upload(live: Callable[..., LiveServer]) -> None:
    """The handler is reading the request body when the client goes away."""
    probes = Probes()
    mw = wrapped(probes)
    srv = live(mw)

    s = open_request(srv.port, "/upload/u", method="POST", body=b"x" * 1000, content_length=1 << 20)
    probe = probes["u"]
    assert probe.entered.wait(WAIT)
    time.sleep(0.05)  # the handler is now waiting for the rest of the body
    t_close = close_fin(s)
    assert_canceled_once(probe, FAULTED)
    assert probe.task_cancelled == 1
    assert probe.cancel_time - t_close < 1.0
    settle(probe)
    expect_stats(mw.host, begun=1, faulted=1)
    srv.stop()
    assert srv.problems() == []


def test_each_request_on_a_keep_alive_connection_is_its_own(live: Callable[..., LiveServer]) -> None:
    """Two requests in turn on one connection: the client leaving during
    the second cancels the second only."""
    probes = Probes()
    mw = wrapped(probes)
    srv = live(mw)

    s = open_request(srv.port, "/sleep/first?t=0", keep_alive=True)
    assert read_response(s).body == b"slept first"
    assert probes["first"].freed.wait(WAIT)
    s.sendall(f"GET /sleep/second?t=30 HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
    assert probes["second"].entered.wait(WAIT)
    assert probes["second"].ctx is not probes["first"].ctx
    close_fin(s)
    assert_canceled_once(probes["second"], FAULTED)
    assert_never_canceled(probes["first"])
    expect_stats(mw.host, begun=2, faulted=1)
    srv.stop()
    assert srv.problems() == []


# ----------------------------------------------- 2. many clients, half leave


def test_many_concurrent_disconnects(live: Callable[..., LiveServer], capsys: pytest.CaptureFixture[str]) -> None:
    n = 50
    probes = Probes()
    mw = wrapped(probes)
    srv = live(mw)
    rng = random.Random(1234)
    jitter = [rng.uniform(0.0, 0.1) for _ in range(n)]

    async def client(i: int) -> Any:
        leaver = i % 2 == 0
        reader, writer = await asyncio.open_connection(HOST, srv.port)
        path = f"/sleep/{i}?t={30 if leaver else 0.4}"
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        if leaver:
            deadline = time.monotonic() + WAIT
            while not probes[str(i)].entered.is_set():
                assert time.monotonic() < deadline, f"request {i} never entered"
                await asyncio.sleep(0.002)
            await asyncio.sleep(jitter[i])
            t = time.perf_counter()
            writer.close()
            return t
        data = await asyncio.wait_for(reader.read(), WAIT)  # to EOF
        writer.close()
        return data

    async def main() -> list[Any]:
        return await asyncio.wait_for(asyncio.gather(*(client(i) for i in range(n))), 15)

    results = asyncio.run(main())

    latencies = []
    for i in range(n):
        probe = probes[str(i)]
        if i % 2 == 0:
            assert_canceled_once(probe, FAULTED)
            assert probe.task_cancelled == 1
            latencies.append(probe.cancel_time - results[i])
        else:
            assert results[i].startswith(b"HTTP/1.1 200 "), results[i][:80]
            assert results[i].endswith(f"slept {i}".encode())
            assert_never_canceled(probe)
            assert probe.completed and probe.task_cancelled == 0
    with capsys.disabled():
        print(f"\n[asgi] disconnect-to-cancel latency, {n // 2} leavers among {n} concurrent clients: "
              f"p50 {percentile(latencies, 50) * 1e3:.2f} ms, max {max(latencies) * 1e3:.2f} ms")
    assert max(latencies) < 1.0, latencies
    expect_stats(mw.host, begun=n, faulted=n // 2)

    srv.stop()
    assert srv.problems() == []


# ------------------------------------------------- 3. leaving mid-stream


def test_streaming_client_leaves_mid_stream(live: Callable[..., LiveServer]) -> None:
    probes = Probes()
    mw = wrapped(probes)
    srv = live(mw)

    s = open_request(srv.port, "/stream/s")
    probe = probes["s"]
    received = read_until_count(s, b"chunk-", 5)
    assert received.startswith(b"HTTP/1.1 200 ")
    assert probe.n_cancel == 0
    t_close = close_fin(s)

    assert_canceled_once(probe, FAULTED)
    assert probe.cancel_time - t_close < 1.0
    sent = probe.chunks_sent
    assert sent >= 5
    time.sleep(0.1)
    assert probe.chunks_sent == sent  # the stream stopped with its operation
    settle(probe)
    expect_stats(mw.host, begun=1, faulted=1)

    srv.stop()
    assert srv.problems() == []


# ---------------------------------------------- 4. normal completion


def test_completed_request_fires_no_cancel(live: Callable[..., LiveServer]) -> None:
    probes = Probes()
    mw = wrapped(probes)
    srv = live(mw)

    r = httpx.get(f"{srv.url}/sleep/ok?t=0.05", timeout=WAIT)
    assert (r.status_code, r.text) == (200, "slept ok")
    probe = probes["ok"]
    assert_never_canceled(probe)
    assert probe.completed and probe.task_cancelled == 0
    settle(probe)
    expect_stats(mw.host, begun=1)

    srv.stop()
    assert srv.problems() == []


@pytest.mark.parametrize("close", [close_fin, close_rst], ids=["fin", "rst"])
def test_disconnect_after_response_fires_nothing(live: Callable[..., LiveServer], close: Callable[..., float]) -> None:
    probes = Probes()
    mw = wrapped(probes)
    srv = live(mw)

    # keep-alive: the connection outlives the response; then the client leaves.
    s = open_request(srv.port, "/sleep/k?t=0", keep_alive=True)
    r = read_response(s)
    assert (r.status, r.body) == (200, b"slept k")
    probe = probes["k"]
    assert_never_canceled(probe)
    assert srv.open_connections == 1
    close(s)
    assert wait_until(lambda: srv.open_connections == 0)  # the server saw it go
    settle(probe)
    assert probe.n_cancel == 0 and probe.n_free == 1
    expect_stats(mw.host, begun=1)

    srv.stop()
    assert srv.problems() == []


def test_disconnect_after_response_during_background_task(live: Callable[..., LiveServer]) -> None:
    """The response is complete but the operation still runs (a Starlette
    background task): the client leaving then cancels nothing."""
    probes = Probes()
    mw = wrapped(probes)
    srv = live(mw)

    s = open_request(srv.port, "/bg/b")
    r = read_response(s)
    assert (r.status, r.body) == (200, b"bg b")
    probe = probes["b"]
    assert wait_until(lambda: "background_started" in probe.notes)
    assert probe.n_free == 0  # still in flight
    close_rst(s)
    assert wait_until(lambda: srv.open_connections == 0)
    assert_never_canceled(probe)
    assert probe.completed  # the background task ran to its end
    assert probe.frees[0][1] >= probe.notes["background_started"] + 0.3
    expect_stats(mw.host, begun=1)

    srv.stop()
    assert srv.problems() == []


# ----------------------------------------------------------- 5. shutdown


def test_shutdown_aborts_in_flight_requests(live: Callable[..., LiveServer]) -> None:
    probes = Probes()
    notes = Notes()
    mw = wrapped(probes, notes, close_timeout=1.0)
    srv = live(mw)

    longs = [f"long{i}" for i in range(3)]
    sockets = {key: open_request(srv.port, f"/sleep/{key}?t=30") for key in longs}
    sockets["short"] = open_request(srv.port, "/sleep/short?t=0.5")
    for key in sockets:
        assert probes[key].entered.wait(WAIT)

    responses: dict[str, Any] = {}

    def read(key: str) -> None:
        try:
            responses[key] = read_response(sockets[key], timeout=10)
        except Exception as exc:  # recorded, asserted below
            responses[key] = exc

    readers = [threading.Thread(target=read, args=(key,), daemon=True) for key in sockets]
    for t in readers:
        t.start()

    elapsed = srv.stop()  # should_exit, as SIGINT/SIGTERM would
    for t in readers:
        t.join(WAIT)
    for s in sockets.values():
        s.close()

    assert elapsed < 5.0, f"shutdown took {elapsed:.2f} s"
    for key in longs:
        probe = probes[key]
        assert_canceled_once(probe, ABORT)
        assert probe.task_cancelled == 1
        resp = responses[key]
        assert not isinstance(resp, Exception), resp
        assert resp.status == 503, resp
    short = probes["short"]
    assert_never_canceled(short)
    assert short.completed
    resp = responses["short"]
    assert not isinstance(resp, Exception), resp
    assert (resp.status, resp.body) == (200, b"slept short")

    expect_stats(mw.host, begun=4, aborted=3)
    assert notes.lifespan_shutdown.is_set()
    assert notes.host_state_at_app_shutdown == HostState.CLOSED
    assert mw.host.state == HostState.CLOSED
    # The host aborted before uvicorn's own timeout: uvicorn never had to
    # cancel a task, so it logs nothing at all.
    assert srv.problems() == []


def test_shutdown_aborts_in_flight_stream(live: Callable[..., LiveServer]) -> None:
    """A streaming response in flight at shutdown: HOST_ABORT once, freed
    once, and the client sees the stream cut (no terminating chunk), not a
    complete response."""
    probes = Probes()
    mw = wrapped(probes, close_timeout=1.0)
    srv = live(mw)

    s = open_request(srv.port, "/stream/st")
    got = [read_until_count(s, b"chunk-", 3)]

    def drain() -> None:
        s.settimeout(10)
        while True:
            try:
                data = s.recv(65536)
            except OSError:
                return
            if not data:
                return
            got.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    elapsed = srv.stop()
    reader.join(WAIT)
    s.close()

    assert elapsed < 5.0
    probe = probes["st"]
    assert_canceled_once(probe, ABORT)
    assert probe.task_cancelled == 1
    received = b"".join(got)
    assert received.startswith(b"HTTP/1.1 200 ") and not received.endswith(b"0\r\n\r\n")
    expect_stats(mw.host, begun=1, aborted=1)
    assert mw.host.state == HostState.CLOSED
    # uvicorn reports the cut response itself; nothing else may be logged.
    assert srv.problems(allow=[
        UVICORN_GAVE_UP, r"ERROR uvicorn\.error: ASGI callable returned without completing response\.$",
    ]) == []


def test_shutdown_with_only_short_requests_is_graceful(live: Callable[..., LiveServer]) -> None:
    probes = Probes()
    notes = Notes()
    mw = wrapped(probes, notes, close_timeout=1.0)
    srv = live(mw)

    s = open_request(srv.port, "/sleep/g?t=0.3")
    assert probes["g"].entered.wait(WAIT)
    got: list[Any] = []
    reader = threading.Thread(target=lambda: got.append(read_response(s, timeout=10)), daemon=True)
    reader.start()
    elapsed = srv.stop()
    reader.join(WAIT)
    s.close()

    assert elapsed < 3.0
    assert got and (got[0].status, got[0].body) == (200, b"slept g")
    assert_never_canceled(probes["g"])
    expect_stats(mw.host, begun=1)
    assert notes.host_state_at_app_shutdown == HostState.CLOSED
    assert mw.host.state == HostState.CLOSED
    assert srv.problems() == []


SERVE_CHILD = r"""
import asyncio, sys, time
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from cancelcore import current_operation
from cancelcore.asgi import serve

def say(*words):
    print(*words, flush=True)

async def sleep(request):
    ctx = current_operation()
    ctx.register_for_cancel(lambda reason, state: say("CANCEL", reason.name, state),
                            lambda state: say("FREE", state), "req")
    say("ENTERED")
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        say("TASK-CANCELLED")
        raise
    return PlainTextResponse("slept")

serve(Starlette(routes=[Route("/sleep", sleep)]), "127.0.0.1", 0, close_timeout=1.0)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_serve_sigterm_aborts_in_flight_request() -> None:
    """serve() in a child process, stopped by SIGTERM as a process manager
    would: the in-flight request is canceled with HOST_ABORT, freed, answered
    503, and the process exits in about close_timeout, not 30 s."""
    child = subprocess.Popen([sys.executable, "-c", SERVE_CHILD], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        port = None
        deadline = time.monotonic() + 15
        lines = []
        assert child.stderr is not None and child.stdout is not None
        while port is None and time.monotonic() < deadline:
            line = child.stderr.readline()
            if not line:
                break
            lines.append(line)
            m = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", line)
            if m:
                port = int(m.group(1))
        assert port, "".join(lines)
        s = open_request(port, "/sleep")
        assert child.stdout.readline().strip() == "ENTERED"
        t0 = time.monotonic()
        child.send_signal(signal.SIGTERM)
        got: list[Any] = []
        reader = threading.Thread(target=lambda: got.append(read_response(s, timeout=10)), daemon=True)
        reader.start()
        out, err = child.communicate(timeout=10)
        elapsed = time.monotonic() - t0
        reader.join(WAIT)
        s.close()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(5)
    err = "".join(lines) + err
    # uvicorn re-raises the signal it captured once it has shut down.
    assert child.returncode == -signal.SIGTERM, (child.returncode, out, err)
    assert elapsed < 5.0, elapsed
    ours = [line for line in out.splitlines() if not line.startswith("INFO:")]  # access log
    assert ours == ["CANCEL HOST_ABORT req", "TASK-CANCELLED", "FREE req"], (out, err)
    assert "Application shutdown complete." in err, err
    assert got and got[0].status == 503, got
    assert "Exception in ASGI application" not in err and "Traceback" not in err, err


# ------------------------------------------------------ 6. sync endpoints


def test_sync_endpoint_sees_its_operation(live: Callable[..., LiveServer]) -> None:
    probes = Probes()
    mw = wrapped(probes)
    srv = live(mw)

    r = httpx.get(f"{srv.url}/sync-ok/s1", timeout=WAIT)
    assert (r.status_code, r.text) == (200, "sync s1")
    probe = probes["s1"]
    assert isinstance(probe.ctx, OperationContext)  # current_operation() in the pool thread
    assert probe.notes["canceled"] is False
    assert probe.notes["thread"] != srv.thread.ident  # really another thread
    assert_never_canceled(probe)
    expect_stats(mw.host, begun=1)
    srv.stop()
    assert srv.problems() == []


def test_blocking_sync_endpoint_released_by_disconnect(live: Callable[..., LiveServer]) -> None:
    """A def endpoint blocked on an Event its on_cancel sets: the client
    leaving releases it; it then cleans up for 0.2 s and returns.  The
    operation is the request, so it ends (free-state) only after that."""
    probes = Probes()
    mw = wrapped(probes)
    srv = live(mw)

    s = open_request(srv.port, "/sync-block/sb")
    probe = probes["sb"]
    assert probe.entered.wait(WAIT)
    assert probe.ctx_thread != srv.thread.ident
    t_close = close_fin(s)

    assert probe.canceled_event.wait(WAIT)
    assert wait_until(lambda: "returned_at" in probe.notes)
    assert probe.notes["released"] is True  # woken by its on_cancel, not the 10 s timeout
    assert probe.notes["released_at"] - t_close < 1.0
    # The request is still running (in its thread) until the handler returns:
    # free-state runs only after it returned, and its context is valid there.
    assert probe.freed.wait(WAIT)
    assert probe.frees[0][1] >= probe.notes["returned_at"], (
        f"free-state ran {1e3 * (probe.notes['returned_at'] - probe.frees[0][1]):.1f} ms "
        "before the sync handler returned")
    assert probe.notes["canceled_at_return"] is True
    assert_canceled_once(probe, FAULTED, completed=True)
    settle(probe)
    expect_stats(mw.host, begun=1, faulted=1)
    srv.stop()
    assert srv.problems() == []


# ----------------------- 7. context, plain ASGI, a given host, a closed host


def test_current_operation_in_async_endpoint(live: Callable[..., LiveServer]) -> None:
    probes = Probes()
    notes = Notes()
    mw = wrapped(probes, notes)
    srv = live(mw)

    with httpx.Client(base_url=srv.url, timeout=WAIT) as client:
        seen = [client.get("/whoami").json() for _ in range(3)]
    for info in seen:
        assert info["is_context"] and info["live_on_host"] and info["canceled"] is False
    assert current_operation() is None  # outside a request (this thread)
    assert notes.startup_operation is None  # outside a request (lifespan, server's loop)
    expect_stats(mw.host, begun=3, freed=0)  # /whoami registers nothing
    srv.stop()
    assert srv.problems() == []


def make_plain_app(probes: Probes) -> Callable[..., Any]:
    """A bare ASGI app without lifespan support: echoes the body's length
    and first bytes; ``/sleep/{key}`` registers and sleeps 30 s first."""

    async def plain_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        path = scope["path"]
        assert isinstance(current_operation(), OperationContext)
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        if path.startswith("/sleep/"):
            probe = probes.register(path.rsplit("/", 1)[1])
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                with probe.lock:
                    probe.task_cancelled += 1
                raise
        answer = b"echo %d %s" % (len(body), body[:16])
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain"),
                                (b"content-length", str(len(answer)).encode())]})
        await send({"type": "http.response.body", "body": answer})

    return plain_app


@pytest.mark.parametrize("lifespan", ["on", "auto"])
def test_plain_asgi_app(live: Callable[..., LiveServer], lifespan: str) -> None:
    probes = Probes()
    mw = CancellationMiddleware(make_plain_app(probes))
    srv = live(mw, lifespan=lifespan)

    with httpx.Client(base_url=srv.url, timeout=WAIT) as client:
        r = client.post("/echo", content=b"hello")
        assert (r.status_code, r.content) == (200, b"echo 5 hello")
        big = os.urandom(1 << 20)  # several http.request messages
        r = client.post("/echo", content=big)
        assert (r.status_code, r.content) == (200, b"echo %d %s" % (len(big), big[:16]))

    s = open_request(srv.port, "/sleep/p")
    probe = probes["p"]
    assert probe.entered.wait(WAIT)
    close_fin(s)
    assert_canceled_once(probe, FAULTED)
    assert probe.task_cancelled == 1
    expect_stats(mw.host, begun=3, faulted=1, freed=1)  # only /sleep/p registered

    srv.stop()
    assert srv.problems() == []
    assert mw.host.state == HostState.CLOSED  # the middleware spoke lifespan for it


def test_given_host_is_used(live: Callable[..., LiveServer]) -> None:
    probes = Probes()
    host = ServiceHost(close_timeout=1.0)
    host.open()
    mw = wrapped(probes, host=host)
    assert mw.host is host
    srv = live(mw)

    r = httpx.get(f"{srv.url}/sleep/h?t=0", timeout=WAIT)
    assert r.status_code == 200
    s = open_request(srv.port, "/sleep/h2")
    assert probes["h2"].entered.wait(WAIT)
    assert probes["h2"].ctx in host._live
    close_rst(s)
    assert_canceled_once(probes["h2"], FAULTED)
    assert_never_canceled(probes["h"])
    expect_stats(host, begun=2, faulted=1)
    srv.stop()
    assert srv.problems() == []
    assert host.state == HostState.CLOSED


def test_host_not_open_gives_503(live: Callable[..., LiveServer]) -> None:
    probes = Probes()
    created = ServiceHost()  # never opened
    srv = live(wrapped(probes, host=created))
    r = httpx.get(f"{srv.url}/sleep/x?t=0", timeout=WAIT)
    assert (r.status_code, r.text) == (503, "service unavailable\n")
    assert probes.values() == []  # the app never ran
    assert created.stats["ops_begun"] == 0
    srv.stop()
    assert srv.problems() == []


def test_aborted_host_gives_503(live: Callable[..., LiveServer]) -> None:
    probes = Probes()
    mw = wrapped(probes)
    srv = live(mw)
    with httpx.Client(base_url=srv.url, timeout=WAIT) as client:
        assert client.get("/sleep/before?t=0").status_code == 200
        # The response can reach the client just before its operation ends.
        assert_never_canceled(probes["before"])
        mw.host.abort()
        assert mw.host.state == HostState.FAULTED
        r = client.get("/sleep/after?t=0")
        assert (r.status_code, r.text) == (503, "service unavailable\n")
    assert "after" not in probes.by_key
    assert_never_canceled(probes["before"])
    expect_stats(mw.host, begun=1)
    srv.stop()
    assert srv.problems() == []
    assert mw.host.state == HostState.CLOSED  # lifespan shutdown closes a faulted host


def test_host_abort_with_request_in_flight(live: Callable[..., LiveServer]) -> None:
    """host.abort() outside shutdown: the in-flight request is canceled with
    HOST_ABORT and freed, and (as at shutdown, where the adapter answers 503
    if nothing was sent yet) it gets 503 without uvicorn logging an error;
    later requests get 503."""
    probes = Probes()
    mw = wrapped(probes)
    srv = live(mw)
    s = open_request(srv.port, "/sleep/inflight")
    probe = probes["inflight"]
    assert probe.entered.wait(WAIT)
    mw.host.abort()
    assert_canceled_once(probe, ABORT)
    assert probe.task_cancelled == 1
    resp = read_response(s)
    s.close()
    expect_stats(mw.host, begun=1, aborted=1)
    r = httpx.get(f"{srv.url}/sleep/later?t=0", timeout=WAIT)
    assert r.status_code == 503
    srv.stop()
    assert (resp.status, srv.problems()) == (503, [])


# -------------------------------------------------------------- 8. FastAPI


def test_fastapi_disconnect_and_sync_route(live: Callable[..., LiveServer]) -> None:
    fastapi = pytest.importorskip("fastapi")
    probes = Probes()
    api = fastapi.FastAPI()

    @api.get("/sleep/{key}")
    async def sleep(key: str, t: float = 30.0) -> dict[str, str]:
        probe = probes.register(key)
        try:
            await asyncio.sleep(t)
        except asyncio.CancelledError:
            with probe.lock:
                probe.task_cancelled += 1
            raise
        probe.completed = True
        return {"slept": key}

    @api.get("/sync/{key}")
    def sync(key: str) -> dict[str, Any]:
        probes.register(key)  # current_operation() in FastAPI's thread pool
        return {"key": key, "other_thread": threading.get_ident() != srv.thread.ident}

    mw = CancellationMiddleware(api)
    srv = live(mw)
    with httpx.Client(base_url=srv.url, timeout=WAIT) as client:
        assert client.get("/sleep/f1", params={"t": 0}).json() == {"slept": "f1"}
        assert client.get("/sync/f2").json() == {"key": "f2", "other_thread": True}
    s = open_request(srv.port, "/sleep/f3")
    assert probes["f3"].entered.wait(WAIT)
    close_fin(s)
    assert_canceled_once(probes["f3"], FAULTED)
    assert probes["f3"].task_cancelled == 1
    assert_never_canceled(probes["f1"])
    assert_never_canceled(probes["f2"])
    expect_stats(mw.host, begun=3, faulted=1)
    srv.stop()
    assert srv.problems() == []
    assert mw.host.state == HostState.CLOSED
