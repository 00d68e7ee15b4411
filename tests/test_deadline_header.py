"""The ``cancelcore-deadline-ms`` header on the server side (DESIGN 4.4):
the ASGI middleware (uvicorn) and the aiohttp adapter give a request's
operation the deadline its caller sent; a malformed header is ignored and
never fails the request.  Real servers on 127.0.0.1, real clients."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Iterator, Optional

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from asgi_support import WAIT, LiveServer, wait_until
from cancelcore import CancelReason, current_operation
from cancelcore._adapters import DEADLINE_HEADER, deadline_from_header, deadline_ms, header_ms
from cancelcore.asgi import CancellationMiddleware

FAULTED = CancelReason.CHANNEL_FAULTED

MALFORMED: list[Any] = ["abc", "-5", "+5", "1e3", "1.5", "", "0x10", "5 5", str(10 ** 30),
                        "12345678901", "\u0661\u0662"]


# ------------------------------------------------------------- the parser


@pytest.mark.parametrize("value, ms", [
    ("0", 0), ("250", 250), (b"250", 250), (bytearray(b"7"), 7), (" 42\t", 42),
    ("0000000012", 12), ("9999999999", 9999999999), (None, None),
    *[(v, None) for v in MALFORMED], (" ", None), ("\t", None),
    (b"\xd9\xa1", None), (b"abc", None),
])
def test_deadline_ms(value: Any, ms: Optional[int]) -> None:
    assert deadline_ms(value) == ms


def test_deadline_from_header() -> None:
    assert deadline_from_header("1500", now=100.0) == 101.5
    assert deadline_from_header("0", now=100.0) == 100.0
    assert deadline_from_header("abc", now=100.0) is None
    assert deadline_from_header(None) is None
    t0 = time.monotonic()
    d = deadline_from_header(b"2000")
    assert d is not None and t0 + 2.0 <= d <= time.monotonic() + 2.0
    with pytest.raises(TypeError):
        deadline_from_header(250)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        deadline_ms(2.5)  # type: ignore[arg-type]


def test_header_ms() -> None:
    assert header_ms(101.2345, now=100.0) == 1234  # rounded down
    assert header_ms(100.0, now=100.0) == 0
    assert header_ms(99.0, now=100.0) == 0  # past: 0, never negative
    assert header_ms(1e300, now=100.0) == 9999999999  # what a server accepts
    assert deadline_ms(str(header_ms(1e300, now=0.0))) == 9999999999


# ----------------------------------------------------------------- ASGI


class Seen:
    def __init__(self) -> None:
        self.reasons: list[CancelReason] = []
        self.frees = 0
        self.freed = threading.Event()

    def on_cancel(self, reason: CancelReason, state: Any) -> None:
        self.reasons.append(reason)

    def on_free(self, state: Any) -> None:
        self.frees += 1
        self.freed.set()


def _asgi_app(seen: dict[str, Seen]) -> CancellationMiddleware:
    async def info(request: Request) -> Response:
        ctx = current_operation()
        assert ctx is not None
        return JSONResponse({"deadline": ctx.deadline, "now": time.monotonic()})

    async def hold(request: Request) -> Response:
        ctx = current_operation()
        assert ctx is not None
        s = seen.setdefault(request.path_params["key"], Seen())
        ctx.register_for_cancel(s.on_cancel, s.on_free)
        await asyncio.sleep(30)
        return Response("held")

    return CancellationMiddleware(Starlette(routes=[Route("/info", info), Route("/hold/{key}", hold)]))


@pytest.fixture
def asgi() -> Iterator[tuple[LiveServer, dict[str, Seen]]]:
    seen: dict[str, Seen] = {}
    srv = LiveServer(_asgi_app(seen)).start()
    try:
        yield srv, seen
    finally:
        srv.stop()


def _check_server(url: str, seen: dict[str, Seen], host_stats: Any) -> None:
    """What every server adapter must do with the header."""
    with httpx.Client(timeout=WAIT) as client:
        # Malformed: no deadline, and the request succeeds.
        # (h11 refuses to send the non-ASCII str value, so it goes as UTF-8.)
        for value in [v.encode() for v in MALFORMED]:
            r = client.get(f"{url}/info", headers={DEADLINE_HEADER: value})
            assert r.status_code == 200, (value, r.status_code)
            assert r.json()["deadline"] is None, value
        r = client.get(f"{url}/info")
        assert r.status_code == 200 and r.json()["deadline"] is None
        # Valid: the deadline is the arrival plus the milliseconds.
        t0 = time.monotonic()
        body = client.get(f"{url}/info", headers={DEADLINE_HEADER: "4000"}).json()
        assert t0 + 4.0 <= body["deadline"] <= time.monotonic() + 4.0
        assert body["deadline"] - body["now"] <= 4.0
        # And it expires there: CHANNEL_FAULTED once, at about that moment;
        # the caller, still waiting, gets 503.
        t0 = time.monotonic()
        r = client.get(f"{url}/hold/x", headers={DEADLINE_HEADER: "200"})
        elapsed = time.monotonic() - t0
        assert r.status_code == 503
        assert 0.2 <= elapsed < 0.2 + 1.0, elapsed  # (loose: a shared machine)
    s = seen["x"]
    assert s.freed.wait(WAIT)
    time.sleep(0.05)
    assert s.reasons == [FAULTED] and s.frees == 1
    assert wait_until(lambda: host_stats()["ops_in_flight"] == 0)
    stats = host_stats()
    assert stats["deadlines_expired"] == 1
    assert stats["cancels_channel_faulted"] == 1 and stats["ops_canceled"] == 1
    assert stats["ops_begun"] == len(MALFORMED) + 3


def test_asgi_reads_the_header(asgi: tuple[LiveServer, dict[str, Seen]]) -> None:
    srv, seen = asgi
    app = srv.app
    assert isinstance(app, CancellationMiddleware)
    _check_server(srv.url, seen, lambda: app.host.stats)


# -------------------------------------------------------------- aiohttp


class AiohttpApp:
    """An aiohttp app with cancelcore.aiohttp.setup on 127.0.0.1, run in a
    loop thread of its own."""

    def __init__(self, seen: dict[str, Seen]) -> None:
        from aiohttp import web

        import cancelcore.aiohttp

        async def info(request: web.Request) -> web.Response:
            ctx = current_operation()
            assert ctx is not None
            return web.json_response({"deadline": ctx.deadline, "now": time.monotonic()})

        async def hold(request: web.Request) -> web.Response:
            ctx = current_operation()
            assert ctx is not None
            s = seen.setdefault(request.match_info["key"], Seen())
            ctx.register_for_cancel(s.on_cancel, s.on_free)
            await asyncio.sleep(30)
            return web.Response(text="held")

        app = web.Application()
        app.router.add_get("/info", info)
        app.router.add_get("/hold/{key}", hold)
        self.host = cancelcore.aiohttp.setup(app)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runner = web.AppRunner(app)

        async def start() -> int:
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            return int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

        self.port = asyncio.run_coroutine_threadsafe(start(), self.loop).result(WAIT)

    def close(self) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(WAIT + 5)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(WAIT)
            if not self.loop.is_running():
                self.loop.close()


def test_aiohttp_reads_the_header() -> None:
    pytest.importorskip("aiohttp")
    seen: dict[str, Seen] = {}
    app = AiohttpApp(seen)
    try:
        _check_server(f"http://127.0.0.1:{app.port}", seen, lambda: app.host.stats)
    finally:
        app.close()
