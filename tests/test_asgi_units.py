"""cancelcore.asgi without a server: argument checking, offload()'s ordering
(G5 for offloaded callbacks), and the loop stall a blocking cancel callback
causes with and without offload()."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from cancelcore import CancelReason, ServiceHost
from cancelcore.asgi import CancellationMiddleware, offload, serve
from measure import LoopStall  # support/ (on sys.path via conftest)


async def _app(scope: Any, receive: Any, send: Any) -> None:
    pass


def test_middleware_arguments(make_host: Any) -> None:
    with pytest.raises(TypeError):
        CancellationMiddleware(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        CancellationMiddleware(_app, host="nope")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        CancellationMiddleware(_app, deliver=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        CancellationMiddleware(_app, deliver="sometimes")
    host = make_host()
    assert CancellationMiddleware(_app, host=host).host is host


@pytest.mark.parametrize("kwargs, exc", [
    (dict(server=3), TypeError),
    (dict(server="tornado"), ValueError),
    (dict(close_timeout="5"), TypeError),
    (dict(close_timeout=True), TypeError),
    (dict(close_timeout=-1.0), ValueError),
    (dict(close_timeout=float("nan")), ValueError),
    (dict(close_timeout=float("inf")), ValueError),
    (dict(port="80"), TypeError),
    (dict(port=70000), ValueError),
])
def test_serve_arguments(kwargs: dict[str, Any], exc: type[Exception]) -> None:
    # Refused before any server starts.
    with pytest.raises(exc):
        serve(_app, **kwargs)


def test_offload_arguments() -> None:
    with pytest.raises(TypeError):
        offload(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        offload(lambda r, s: None, 3)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        offload(lambda r, s: None, executor=object())  # type: ignore[arg-type]


def test_offloaded_free_state_follows_the_cancel(host: ServiceHost) -> None:
    """The cancel runs on the executor; the operation's end does not wait
    for it, and the free-state runs once, after the cancel has returned."""
    events: list[tuple[str, Any, int]] = []
    lock = threading.Lock()
    started = threading.Event()
    release = threading.Event()

    def slow_cancel(reason: CancelReason, state: Any) -> None:
        started.set()
        release.wait(5)
        with lock:
            events.append(("cancel", reason, threading.get_ident()))

    def free(state: Any) -> None:
        with lock:
            events.append(("free", state, threading.get_ident()))

    with ThreadPoolExecutor(1) as pool:
        ch = host.accept_channel()
        ctx = ch.begin_operation()
        ctx.register_for_cancel(*offload(slow_cancel, free, executor=pool), "s")
        t0 = time.monotonic()
        ch.fault()  # returns without waiting for the slow callback
        assert time.monotonic() - t0 < 0.5
        assert started.wait(5)
        ctx.end()  # nor does the end
        assert events == []
        release.set()
        deadline = time.monotonic() + 5
        while len(events) < 2 and time.monotonic() < deadline:
            time.sleep(0.005)
    assert [e[0] for e in events] == ["cancel", "free"]
    assert events[0][1] is CancelReason.CHANNEL_FAULTED and events[1][1] == "s"
    assert events[0][2] != threading.get_ident()
    assert host.stats["free_states_run"] == 1


def test_offloaded_without_cancel_frees_at_once(host: ServiceHost) -> None:
    freed: list[Any] = []
    ch = host.accept_channel()
    ctx = ch.begin_operation()
    ctx.register_for_cancel(*offload(lambda r, s: None, freed.append), "x")
    ctx.end()
    assert freed == ["x"]


def test_offload_error_is_logged_not_raised(host: ServiceHost, caplog: pytest.LogCaptureFixture) -> None:
    freed: list[Any] = []

    def boom(reason: CancelReason, state: Any) -> None:
        raise RuntimeError("cancel failed")

    ch = host.accept_channel()
    ctx = ch.begin_operation()
    ctx.register_for_cancel(*offload(boom, freed.append), "y")
    ch.fault()
    ctx.end()
    deadline = time.monotonic() + 5
    while not freed and time.monotonic() < deadline:
        time.sleep(0.005)
    assert freed == ["y"]
    assert any("cancel failed" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)


def loop_stall(host: ServiceHost, offloaded: bool, n: int = 5, block: float = 0.02) -> float:
    """The longest the event loop went without running a 1 ms ticker while
    n operations whose cancel callback blocks `block` seconds were canceled
    from the loop (as a disconnect is)."""

    async def main() -> float:
        async with LoopStall() as stall:
            await asyncio.sleep(0.02)
            for _ in range(n):
                ch = host.accept_channel()
                ctx = ch.begin_operation()
                cb = (lambda r, s: time.sleep(block))
                if offloaded:
                    ctx.register_for_cancel(*offload(cb))
                else:
                    ctx.register_for_cancel(cb)
                ch.fault()  # on the loop's thread, like a disconnect
                ctx.end()
                await asyncio.sleep(0.005)
            await asyncio.sleep(0.1)
        return stall.worst

    return asyncio.run(main())


def test_offload_keeps_the_loop_running(host: ServiceHost) -> None:
    inline = loop_stall(host, offloaded=False, n=3, block=0.06)
    off = loop_stall(host, offloaded=True, n=3, block=0.06)
    # Inline, each 60 ms callback stalls the loop for 60 ms; offloaded, the
    # loop keeps ticking (a generous bound for a busy CI machine).
    assert inline >= 0.059, inline
    assert off < 0.045, (off, inline)


def test_uvicorn_server_needs_the_middleware() -> None:
    uvicorn = pytest.importorskip("uvicorn")
    from cancelcore.asgi import uvicorn_server

    with pytest.raises(TypeError):
        uvicorn_server(uvicorn.Config(_app))
    with pytest.raises(TypeError):
        uvicorn_server(object())
    mw = CancellationMiddleware(_app)
    server = uvicorn_server(uvicorn.Config(mw))
    assert isinstance(server, uvicorn.Server)
    mw.host.close()
