"""cancelcore.aiohttp against a real aiohttp server (AppRunner + TCPSite on
127.0.0.1) and raw-socket clients, so each test decides exactly when a
connection goes away.  Every count is exact."""

from __future__ import annotations

import logging
import math
import socket
import time
from typing import Any, Iterator

import pytest

pytest.importorskip("aiohttp")

from aiohttp import web  # noqa: E402

import cancelcore.aiohttp  # noqa: E402
from cancelcore import CancelReason, HostState, ServiceHost  # noqa: E402

from rpc_support import WAIT, AiohttpServer, close_rst, read_response, wait_until  # noqa: E402

FAULTED = CancelReason.CHANNEL_FAULTED
ABORT = CancelReason.HOST_ABORT


@pytest.fixture(params=[False, True], ids=["default", "handler_cancellation"])
def server(request: pytest.FixtureRequest) -> Iterator[AiohttpServer]:
    srv = AiohttpServer(handler_cancellation=request.param)
    try:
        yield srv
    finally:
        srv.close()


def settled(srv: AiohttpServer) -> dict[str, int]:
    assert wait_until(lambda: srv.host.stats["ops_in_flight"] == 0), srv.host.stats
    return srv.host.stats


def assert_canceled_once(probe: Any, reason: CancelReason, task_cancelled: bool = True) -> None:
    assert probe.settled(), f"free-state of {probe.key} never ran"
    assert probe.reasons == [reason]
    assert len(probe.frees) == 1 and not probe.cancel_after_free
    assert probe.saw_current and probe.second_registration_refused
    if task_cancelled:
        # The handler's CancelledError came once, with the reason already set.
        assert probe.task_cancelled == 1
        assert probe.reason_when_cancelled == reason


def test_completion_fires_no_cancel(server: AiohttpServer) -> None:
    sock = server.open("/echo?key=a")
    try:
        assert read_response(sock) == (200, b"a")
        # The same keep-alive connection serves a second request cleanly.
        sock.sendall("GET /echo?key=b HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert read_response(sock) == (200, b"b")
    finally:
        sock.close()
    for key in "ab":
        probe = server.probes(key)
        assert probe.settled() and probe.completed
        assert probe.reasons == [] and len(probe.frees) == 1
        assert probe.saw_current and probe.second_registration_refused
    stats = settled(server)
    assert stats["ops_begun"] == stats["ops_ended"] == 2
    assert stats["ops_canceled"] == 0 and stats["free_states_run"] == 2


@pytest.mark.parametrize("how", ["fin", "rst"])
def test_disconnect_faults_and_cancels_the_handler(server: AiohttpServer, how: str) -> None:
    sock = server.open("/block?key=gone")
    probe = server.probes("gone")
    assert probe.entered.wait(WAIT)
    if how == "rst":
        close_rst(sock)
    else:
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()
    assert_canceled_once(probe, FAULTED)
    stats = settled(server)
    assert stats["cancels_channel_faulted"] == 1 and stats["cancels_host_abort"] == 0


def test_a_handler_giving_up_after_a_disconnect_is_not_logged(server: AiohttpServer) -> None:
    """Regression: a handler that raises because its client left (here
    OperationCanceledError) was logged by aiohttp as an error."""
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(f"{record.name}: {record.getMessage()}")

    handler = Collect(level=logging.WARNING)
    loggers = [logging.getLogger("aiohttp"), logging.getLogger("asyncio")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        sock = server.open("/give-up?key=give-up")
        probe = server.probes("give-up")
        assert probe.entered.wait(WAIT)
        sock.close()
        assert_canceled_once(probe, FAULTED, task_cancelled=False)
        assert probe.task_cancelled == 1
        time.sleep(0.2)
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    assert records == []


def test_twenty_concurrent_disconnects_exact_counts(server: AiohttpServer) -> None:
    socks = [server.open(f"/block?key=c{i}") for i in range(20)]
    probes = [server.probes(f"c{i}") for i in range(20)]
    assert all(p.entered.wait(WAIT) for p in probes)
    for s in socks:
        s.close()
    for p in probes:
        assert_canceled_once(p, FAULTED)
    stats = settled(server)
    assert stats["ops_begun"] == stats["ops_ended"] == 20
    assert stats["cancels_channel_faulted"] == 20 and stats["cancels_host_abort"] == 0
    assert stats["cancel_callbacks_run"] == 20 and stats["free_states_run"] == 20


def test_stream_response_disconnect(server: AiohttpServer) -> None:
    sock = server.open("/stream?key=s")
    probe = server.probes("s")
    assert probe.entered.wait(WAIT)
    sock.settimeout(WAIT)
    assert b"chunk" in sock.recv(65536)
    close_rst(sock)
    assert probe.settled()
    assert probe.reasons == [FAULTED] and len(probe.frees) == 1
    assert probe.generator_closed
    sent = probe.items_sent
    time.sleep(0.1)
    assert probe.items_sent == sent


@pytest.mark.parametrize("close_timeout,shutdown_timeout", [(0.4, 3.0), (1.2, 0.3)],
                         ids=["close<shutdown", "close>shutdown"])
def test_shutdown_aborts_in_flight_requests(close_timeout: float, shutdown_timeout: float) -> None:
    srv = AiohttpServer(close_timeout=close_timeout, shutdown_timeout=shutdown_timeout)
    try:
        blocked = [srv.open(f"/block?key=s{i}") for i in range(3)]
        lingering = srv.open("/linger?key=linger")
        probes = [srv.probes(f"s{i}") for i in range(3)]
        assert all(p.entered.wait(WAIT) for p in probes)
        assert srv.probes("linger").entered.wait(WAIT)
        started = time.monotonic()
        srv.shutdown()
        elapsed = time.monotonic() - started
        # HOST_ABORT came at the close timeout, not at aiohttp's own
        # (shorter or longer) shutdown timeout.
        assert close_timeout - 0.05 <= elapsed < close_timeout + 3.0
        assert read_response(lingering) == (200, b"linger")
        assert srv.probes("linger").reasons == []
        for sock, probe in zip(blocked, probes):
            assert read_response(sock)[0] == 503
            assert_canceled_once(probe, ABORT)
        stats = srv.host.stats
        assert stats["cancels_host_abort"] == 3 and stats["cancels_channel_faulted"] == 0
        assert stats["free_states_run"] == 4 and stats["ops_in_flight"] == 0
        assert srv.host.state == HostState.CLOSED
        for sock in blocked + [lingering]:
            sock.close()
    finally:
        srv.close()


def test_shutdown_cuts_a_stream_response() -> None:
    srv = AiohttpServer(close_timeout=0.3, shutdown_timeout=5.0)
    try:
        sock = srv.open("/stream?key=st")
        probe = srv.probes("st")
        assert probe.entered.wait(WAIT)
        sock.settimeout(WAIT)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        srv.shutdown()
        # Its head is on the wire: no 503, the connection ends.
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        assert b"503" not in data
        sock.close()
        assert_canceled_once(probe, ABORT)
        assert probe.generator_closed
    finally:
        srv.close()


def test_shutdown_returns_although_a_handler_ignores_its_cancel() -> None:
    srv = AiohttpServer(close_timeout=0.2, shutdown_timeout=0.3)
    probe = srv.probes("stubborn")
    try:
        sock = srv.open("/stubborn?key=stubborn")
        assert probe.entered.wait(WAIT)
        started = time.monotonic()
        srv.shutdown()  # aborted at 0.2 s; bounded however the handler behaves
        assert time.monotonic() - started < 0.2 + 1.0 + 0.3 + 1.2 + 3.0
        assert probe.reasons == [ABORT] and probe.task_cancelled >= 1
        probe.released.set()
        assert probe.settled() and len(probe.frees) == 1
        sock.close()
    finally:
        probe.released.set()
        srv.close()


def test_requests_on_a_closed_host_get_503() -> None:
    srv = AiohttpServer()
    try:
        srv.host.close()
        sock = srv.open("/echo?key=late")
        try:
            assert read_response(sock)[0] == 503
        finally:
            sock.close()
        assert srv.probes.all() == []  # the handler never ran
    finally:
        srv.close()


def test_given_host_and_its_close_timeout() -> None:
    host = ServiceHost(close_timeout=0.3)
    host.open()
    srv = AiohttpServer(host=host, close_timeout=30.0, shutdown_timeout=5.0)
    try:
        assert srv.host is host and host.close_timeout == 0.3
        sock = srv.open("/block?key=g")
        assert srv.probes("g").entered.wait(WAIT)
        started = time.monotonic()
        srv.shutdown()
        assert time.monotonic() - started < 3.0  # the host's 0.3 s, not 30 s
        assert read_response(sock)[0] == 503
        sock.close()
        assert_canceled_once(srv.probes("g"), ABORT)
    finally:
        srv.close()


def test_setup_argument_checks() -> None:
    with pytest.raises(TypeError):
        cancelcore.aiohttp.setup("not an app")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        cancelcore.aiohttp.setup(web.Application(), host="not a host")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        cancelcore.aiohttp.setup(web.Application(), close_timeout="5")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        cancelcore.aiohttp.setup(web.Application(), close_timeout=-1.0)
    with pytest.raises(ValueError):
        cancelcore.aiohttp.setup(web.Application(), close_timeout=math.nan)
    host = cancelcore.aiohttp.setup(web.Application(), close_timeout=2.0)
    assert host.state == HostState.OPEN and host.close_timeout == 2.0
    host.close()
