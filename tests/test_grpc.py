"""cancelcore.grpc against real gRPC servers on 127.0.0.1 and real clients.

Three set-ups, every test over each where it applies: the threaded server
(``grpc.server``) with sync handlers, and the asyncio server
(``grpc.aio.server``) with async handlers and with sync handlers.  Every
count is exact: one cancel per canceled RPC, with its reason, one
free-state per RPC, none of either for an RPC that completes.
"""

from __future__ import annotations

import gc
import logging
import math
import threading
import time
from typing import Any, Iterator

import pytest

grpc = pytest.importorskip("grpc")

from cancelcore import CancelReason, HostState, ServiceHost  # noqa: E402
from cancelcore.grpc import AioCancellationInterceptor, CancellationInterceptor  # noqa: E402

from rpc_support import WAIT, GrpcServer, blocking_requests, wait_until  # noqa: E402

SETUPS = [("sync", "sync"), ("aio", "async"), ("aio", "sync")]
IDS = ["sync-server", "aio-async", "aio-sync"]
FAULTED = CancelReason.CHANNEL_FAULTED
ABORT = CancelReason.HOST_ABORT


@pytest.fixture(params=SETUPS, ids=IDS)
def server(request: pytest.FixtureRequest) -> Iterator[GrpcServer]:
    kind, handlers = request.param
    srv = GrpcServer(kind, handlers)
    try:
        yield srv
    finally:
        srv.close()


def settled_host(srv: GrpcServer) -> dict[str, int]:
    """The host's counters once no operation is in flight."""
    assert wait_until(lambda: srv.host.stats["ops_in_flight"] == 0), srv.host.stats
    return srv.host.stats


def assert_canceled_once(srv: GrpcServer, probe: Any, reason: CancelReason) -> None:
    assert probe.settled(), f"free-state of {probe.key} never ran"
    assert probe.reasons == [reason]
    assert len(probe.frees) == 1
    assert not probe.cancel_after_free
    assert probe.saw_current and probe.second_registration_refused
    if srv.kind == "sync":
        # Never on gRPC's poller thread: the interceptor's fault thread, the
        # handler's own when it saw the cancel first, or (the RPC's deadline
        # is its operation's too) the host's deadline timer.
        assert probe.cancels[0][1] in ("cancelcore-grpc-faults", probe.handler_thread, "cancelcore-deadlines")


# --------------------------------------------------------------- completion


def test_completion_of_all_four_kinds_fires_no_cancel(server: GrpcServer) -> None:
    assert server.method("Echo")(b"u-u", timeout=WAIT) == b"u-u"
    assert list(server.method("Count")(b"u-s", timeout=WAIT)) == [b"0", b"1", b"2"]
    assert server.method("Sum")(iter([b"s-u"] * 4), timeout=WAIT) == b"4"
    assert list(server.method("Echoes")(iter([b"s-s"] * 3), timeout=WAIT)) == [b"s-s"] * 3
    for key in ("u-u", "u-s", "s-u", "s-s"):
        probe = server.probes(key)
        assert probe.settled()
        assert probe.completed and probe.saw_current and probe.second_registration_refused
        assert probe.reasons == [] and len(probe.frees) == 1
    assert server.probes("u-s").generator_closed
    stats = settled_host(server)
    assert stats["ops_begun"] == stats["ops_ended"] == 4
    assert stats["ops_canceled"] == 0 and stats["free_states_run"] == 4
    assert stats["channels_open"] == 1  # the one every RPC runs on


def test_handler_that_ends_its_own_operation(server: GrpcServer) -> None:
    """Regression: the adapter's own end of an operation the handler ended
    (a misuse) is not an error for the RPC."""
    assert server.method("SelfEnd")(b"self-end", timeout=WAIT) == b"self-end"
    probe = server.probes("self-end")
    assert probe.settled() and probe.completed and probe.reasons == [] and len(probe.frees) == 1
    assert settled_host(server)["ops_ended"] == 1


# ------------------------------------------------------------ client cancel


def test_client_cancel_faults_the_channel_once(server: GrpcServer) -> None:
    future = server.method("Block").future(b"cancel-me")
    probe = server.probes("cancel-me")
    assert probe.entered.wait(WAIT)
    future.cancel()
    assert_canceled_once(server, probe, FAULTED)
    if server.kind == "aio" and server.handlers == "async":
        # The handler's CancelledError came once, with the reason already set.
        assert probe.task_cancelled == 1 and probe.reason_when_cancelled == FAULTED
    stats = settled_host(server)
    assert stats["cancels_channel_faulted"] == 1 and stats["cancels_host_abort"] == 0
    assert stats["free_states_run"] == 1


def test_async_handler_task_is_cancelled_after_the_fault() -> None:
    srv = GrpcServer("aio", "async")
    try:
        future = srv.method("Block").future(b"task")
        probe = srv.probes("task")
        assert probe.entered.wait(WAIT)
        future.cancel()
        assert_canceled_once(srv, probe, FAULTED)
        # The handler's CancelledError came once, with the reason already set.
        assert probe.task_cancelled == 1
        assert probe.reason_when_cancelled == FAULTED
    finally:
        srv.close()


def test_slow_cancel_callback_does_not_stall_other_rpcs() -> None:
    """Regression: gRPC runs termination callbacks on its one poller
    thread; the fault (and so the user's callback) runs elsewhere."""
    srv = GrpcServer("sync")
    try:
        slow = srv.probes("slow")
        slow.cancel_delay = 3.0
        future = srv.method("Block").future(b"slow")
        assert slow.entered.wait(WAIT)
        future.cancel()
        assert wait_until(lambda: slow.reasons == [FAULTED])  # the slow callback is running
        started = time.monotonic()
        assert srv.method("Echo")(b"meanwhile", timeout=WAIT) == b"meanwhile"
        assert time.monotonic() - started < 2.0  # not held up by the 3 s callback
        assert slow.settled()
        assert_canceled_once(srv, slow, FAULTED)
    finally:
        srv.close()


def test_canceled_calls_are_not_logged_as_errors(server: GrpcServer) -> None:
    """Regression: a handler that raises because its client left (here
    OperationCanceledError from raise_if_canceled) was logged by gRPC as
    "Exception calling application", and on the aio server an unretrieved
    worker-thread exception by asyncio."""
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(f"{record.name}: {record.getMessage()}")

    handler = Collect(level=logging.WARNING)
    loggers = [logging.getLogger("grpc"), logging.getLogger("asyncio")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        future = server.method("Block").future(b"quiet-cancel")
        assert server.probes("quiet-cancel").entered.wait(WAIT)
        future.cancel()
        with pytest.raises(grpc.RpcError):
            server.method("Block")(b"quiet-deadline", timeout=0.3)
        assert server.probes("quiet-cancel").settled() and server.probes("quiet-deadline").settled()
        time.sleep(0.2)
        gc.collect()
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    assert records == []


def test_deadline_faults_the_channel_once(server: GrpcServer) -> None:
    with pytest.raises(grpc.RpcError) as info:
        server.method("Block")(b"deadline", timeout=0.3)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    probe = server.probes("deadline")
    assert_canceled_once(server, probe, FAULTED)


def test_twenty_concurrent_cancels_exact_counts(server: GrpcServer) -> None:
    futures = [server.method("Block").future(b"c%d" % i) for i in range(20)]
    probes = [server.probes("c%d" % i) for i in range(20)]
    assert all(p.entered.wait(WAIT) for p in probes)
    for f in futures:
        f.cancel()
    for p in probes:
        assert_canceled_once(server, p, FAULTED)
    stats = settled_host(server)
    assert stats["ops_begun"] == stats["ops_ended"] == 20
    assert stats["cancels_channel_faulted"] == 20 and stats["cancels_host_abort"] == 0
    assert stats["cancel_callbacks_run"] == 20 and stats["free_states_run"] == 20


def test_cancel_of_a_response_stream_stops_its_generator(server: GrpcServer) -> None:
    call = server.method("Drip")(b"drip", timeout=WAIT)
    assert next(call) == b"drop"
    probe = server.probes("drip")
    assert probe.entered.wait(WAIT)
    call.cancel()
    assert_canceled_once(server, probe, FAULTED)
    assert wait_until(lambda: probe.generator_closed)
    sent = probe.items_sent
    time.sleep(0.1)
    assert probe.items_sent == sent, "the generator kept running after the cancel"


def test_cancel_while_reading_a_request_stream(server: GrpcServer) -> None:
    release = threading.Event()
    try:
        future = server.method("Hold").future(blocking_requests("hold", release))
        probe = server.probes("hold")
        assert probe.entered.wait(WAIT)
        future.cancel()
        assert_canceled_once(server, probe, FAULTED)
        assert wait_until(lambda: probe.generator_closed)
    finally:
        release.set()


def test_cancel_of_a_bidi_stream(server: GrpcServer) -> None:
    release = threading.Event()
    try:
        call = server.method("Echoes")(blocking_requests("bidi", release), timeout=WAIT)
        assert next(call) == b"bidi"
        probe = server.probes("bidi")
        call.cancel()
        assert_canceled_once(server, probe, FAULTED)
    finally:
        release.set()


# --------------------------------------------------------------------- stop


def test_stop_aborts_in_flight_rpcs_with_unavailable(server: GrpcServer) -> None:
    blocked = [server.method("Block").future(b"s%d" % i) for i in range(3)]  # no deadline
    lingering = server.method("Linger").future(b"linger")
    probes = [server.probes("s%d" % i) for i in range(3)]
    assert all(p.entered.wait(WAIT) for p in probes)
    assert server.probes("linger").entered.wait(WAIT)
    started = time.monotonic()
    server.stop(grace=0.6)
    elapsed = time.monotonic() - started
    # The RPC that finishes within the grace period is answered.
    assert lingering.result(timeout=WAIT) == b"linger"
    assert server.probes("linger").reasons == []
    for future, probe in zip(blocked, probes):
        with pytest.raises(grpc.RpcError) as info:
            future.result(timeout=WAIT)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value
        assert probe.settled()
        assert probe.reasons == [ABORT] and len(probe.frees) == 1
        if server.kind == "aio" and server.handlers == "async":
            assert probe.task_cancelled == 1 and probe.reason_when_cancelled == ABORT
    assert 0.5 <= elapsed < 0.6 + 5.0
    stats = server.host.stats
    assert stats["cancels_host_abort"] == 3 and stats["cancels_channel_faulted"] == 0
    assert stats["free_states_run"] == 4 and stats["ops_in_flight"] == 0
    assert server.host.state == HostState.CLOSED


def test_stop_cuts_a_response_stream_with_unavailable(server: GrpcServer) -> None:
    call = server.method("Drip")(b"drip-stop")  # no deadline
    assert next(call) == b"drop"
    probe = server.probes("drip-stop")
    server.stop(grace=0.2)
    with pytest.raises(grpc.RpcError) as info:
        for _ in call:
            pass
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value
    assert probe.settled()
    assert probe.reasons == [ABORT] and len(probe.frees) == 1
    assert probe.generator_closed


def test_stop_returns_although_a_handler_ignores_its_cancel(server: GrpcServer) -> None:
    future = server.method("Stubborn").future(b"stubborn")
    probe = server.probes("stubborn")
    assert probe.entered.wait(WAIT)
    try:
        started = time.monotonic()
        server.stop(grace=0.2)  # aborted at 0.2 s; the server stops 1 s later
        assert time.monotonic() - started < 0.2 + 1.0 + 3.0
        assert probe.reasons == [ABORT] and probe.frees == []
    finally:
        probe.released.set()
    assert probe.settled()  # the host's close finishes once the handler returns
    assert len(probe.frees) == 1
    assert wait_until(lambda: server.host.state == HostState.CLOSED)
    with pytest.raises(grpc.RpcError):
        future.result(timeout=WAIT)


def test_stop_with_nothing_in_flight_is_prompt(server: GrpcServer) -> None:
    assert server.method("Echo")(b"one", timeout=WAIT) == b"one"
    started = time.monotonic()
    server.stop(grace=5.0)
    assert time.monotonic() - started < 3.0
    assert server.host.state == HostState.CLOSED


def test_rpcs_on_a_closed_host_get_unavailable(server: GrpcServer) -> None:
    server.host.close()
    with pytest.raises(grpc.RpcError) as info:
        server.method("Echo")(b"late", timeout=WAIT)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(grpc.RpcError) as info:
        list(server.method("Count")(b"late-stream", timeout=WAIT))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


# -------------------------------------------------------------- arguments


@pytest.mark.parametrize("cls", [CancellationInterceptor, AioCancellationInterceptor])
def test_argument_checks(cls: Any) -> None:
    with pytest.raises(TypeError):
        cls(host="not a host")
    with pytest.raises(TypeError):
        cls(close_timeout="5")
    with pytest.raises(TypeError):
        cls(close_timeout=True)
    with pytest.raises(ValueError):
        cls(close_timeout=-1)
    with pytest.raises(ValueError):
        cls(close_timeout=math.nan)
    # An int beyond any float is "forever", as for ServiceHost itself (it
    # raised OverflowError while the adapters had a check of their own).
    assert cls(close_timeout=10**400).host.close_timeout == math.inf


def test_given_host_keeps_its_close_timeout() -> None:
    host = ServiceHost(close_timeout=0.25)
    host.open()
    interceptor = CancellationInterceptor(host=host, close_timeout=30.0)
    assert interceptor.host is host and host.close_timeout == 0.25
    own = AioCancellationInterceptor(close_timeout=2.5)
    assert own.host.close_timeout == 2.5 and own.host.state == HostState.OPEN
    host.close()
    own.host.close()


def test_stop_argument_checks() -> None:
    srv = GrpcServer("sync")
    try:
        with pytest.raises(TypeError):
            srv.interceptor.stop("not a server", 1.0)
        with pytest.raises(TypeError):
            srv.interceptor.stop(srv.server, "1")
        with pytest.raises(ValueError):
            srv.interceptor.stop(srv.server, -1.0)
        assert srv.host.state == HostState.OPEN  # nothing was stopped
    finally:
        srv.close()
