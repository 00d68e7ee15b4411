"""cancelcore.grpc across services: the client interceptors and deadlines.

Real grpcio servers on 127.0.0.1 and real channels.  A "hop" is a server
with the cancelcore interceptor whose servicer calls the next hop through
``client_interceptor()`` (threaded server) or ``aio_client_interceptor()``
(asyncio server); the last hop waits until it is canceled.  Every count is
exact: each hop's operation is canceled once (``CHANNEL_FAULTED``) and
freed once, and one that completes is freed once and never canceled.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import select
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator, Iterator, Optional

import pytest

grpc = pytest.importorskip("grpc")

import cancelcore  # noqa: E402
import cancelcore.grpc as ccgrpc  # noqa: E402
from cancelcore import CancelReason, OperationCanceledError, ServiceHost  # noqa: E402

from rpc_support import HOST, SERVICE, WAIT, GrpcServer, Probes, wait_until  # noqa: E402

FAULTED = CancelReason.CHANNEL_FAULTED
HOP = "cancelcore.test.Hop"
UNARY = f"/{HOP}/Unary"
STREAM = f"/{HOP}/Stream"
UPLOAD = f"/{HOP}/Upload"
# A cancel or deadline must reach the next hop well before a leaf that was
# not told would give up by itself (WAIT, 10 s); on loopback it takes ms.
PROMPT = 2.0
# gRPC sends a timeout rounded up to its unit, and grpcio's threaded server
# measures what is left on the wall clock: a hop may see a hair more.
SLACK = 0.01


class Hop:
    """A server on 127.0.0.1 running the cancelcore interceptor of its kind
    ("sync": ``grpc.server``; "aio": ``grpc.aio.server``, async handlers, in
    a loop thread of its own).  With ``downstream`` (a port) its methods
    relay to the same method of that hop through the client interceptor;
    without, it is a leaf: a key starting "quick" answers at once, any
    other waits until its operation is canceled.

    ``Unary`` relays with a blocking call (``with_call`` for keys starting
    "with-call", ``.future().result()`` for "future"), ``Stream`` by
    iterating a response stream, ``Upload`` with a blocking stream-unary
    call.  For each key it records ``ctx.deadline``, ``time_remaining()``
    and the monotonic time the handler ended."""

    def __init__(self, kind: str, downstream: Optional[int] = None) -> None:
        self.kind = kind
        self.downstream = downstream
        self.probes = Probes()
        self.deadlines: dict[str, tuple[Optional[float], Optional[float]]] = {}
        self.ended: dict[str, float] = {}
        self.errors: dict[str, BaseException] = {}
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.thread: Optional[threading.Thread] = None
        self.pool: Optional[ThreadPoolExecutor] = None
        self.down: Any = None
        if kind == "sync":
            self.interceptor: Any = ccgrpc.CancellationInterceptor()
            if downstream is not None:
                self.down = grpc.intercept_channel(grpc.insecure_channel(f"{HOST}:{downstream}"),
                                                   ccgrpc.client_interceptor())
            self.pool = ThreadPoolExecutor(max_workers=8)
            self.server: Any = grpc.server(self.pool, interceptors=[self.interceptor])
            self.server.add_generic_rpc_handlers((self._sync_handlers(),))
            self.port = self.server.add_insecure_port(f"{HOST}:0")
            self.server.start()
        else:
            self.interceptor = ccgrpc.AioCancellationInterceptor()
            self.loop = asyncio.new_event_loop()
            self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
            self.thread.start()

            async def start() -> tuple[Any, int]:
                if downstream is not None:
                    self.down = grpc.aio.insecure_channel(f"{HOST}:{downstream}",
                                                          interceptors=ccgrpc.aio_client_interceptor())
                server = grpc.aio.server(interceptors=[self.interceptor])
                server.add_generic_rpc_handlers((self._aio_handlers(),))
                port = server.add_insecure_port(f"{HOST}:0")
                await server.start()
                return server, port

            self.server, self.port = self.run(start())
        self.channel = grpc.insecure_channel(f"{HOST}:{self.port}")
        grpc.channel_ready_future(self.channel).result(timeout=WAIT)

    def run(self, coro: Any, timeout: float = WAIT) -> Any:
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def host(self) -> ServiceHost:
        return self.interceptor.host  # type: ignore[no-any-return]

    def unary(self) -> Any:
        return self.channel.unary_unary(UNARY)

    def stream(self) -> Any:
        return self.channel.unary_stream(STREAM)

    def upload(self) -> Any:
        return self.channel.stream_unary(UPLOAD)

    def _enter(self, request: bytes) -> tuple[str, Any, Any]:
        key = request.decode()
        probe = self.probes(key)
        ctx = probe.register()
        self.deadlines[key] = (ctx.deadline, ctx.time_remaining())
        return key, probe, ctx

    # ------------------------------------------------------------ sync

    def _sync_handlers(self) -> Any:
        def unary(request: bytes, context: Any) -> bytes:
            key, probe, ctx = self._enter(request)
            try:
                if self.down is not None:
                    method = self.down.unary_unary(UNARY)
                    if key.startswith("with-call"):
                        return method.with_call(request)[0]  # type: ignore[no-any-return]
                    if key.startswith("future"):
                        return method.future(request).result()  # type: ignore[no-any-return]
                    return method(request)  # type: ignore[no-any-return]
                if key.startswith("quick"):
                    return request
                probe.canceled.wait(WAIT)
                ctx.raise_if_canceled()
                return b"not canceled"
            except BaseException as exc:
                self.errors[key] = exc
                raise
            finally:
                self.ended[key] = time.monotonic()

        def stream(request: bytes, context: Any) -> Iterator[bytes]:
            key, probe, ctx = self._enter(request)
            try:
                if self.down is not None:
                    yield from self.down.unary_stream(STREAM)(request)
                    return
                for _ in range(3 if key.startswith("quick") else 1000):
                    yield b"item"
                    time.sleep(0.01)
            except BaseException as exc:
                self.errors[key] = exc
                raise
            finally:
                self.ended[key] = time.monotonic()

        def upload(requests: Iterator[bytes], context: Any) -> bytes:
            first = next(requests)
            key, probe, ctx = self._enter(first)
            try:
                if self.down is not None:
                    return self.down.stream_unary(UPLOAD)(itertools.chain([first], requests))  # type: ignore[no-any-return]
                if key.startswith("quick"):
                    return b"%d" % (1 + sum(1 for _ in requests))
                probe.canceled.wait(WAIT)
                ctx.raise_if_canceled()
                return b"not canceled"
            except BaseException as exc:
                self.errors[key] = exc
                raise
            finally:
                self.ended[key] = time.monotonic()

        return grpc.method_handlers_generic_handler(HOP, {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
            "Upload": grpc.stream_unary_rpc_method_handler(upload),
        })

    # ------------------------------------------------------------- aio

    def _aio_handlers(self) -> Any:
        async def unary(request: bytes, context: Any) -> bytes:
            key, probe, ctx = self._enter(request)
            try:
                if self.down is not None:
                    return await self.down.unary_unary(UNARY)(request)  # type: ignore[no-any-return]
                if key.startswith("quick"):
                    return request
                await asyncio.sleep(WAIT)
                return b"not canceled"
            except BaseException as exc:
                self.errors[key] = exc
                raise
            finally:
                self.ended[key] = time.monotonic()

        async def stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
            key, probe, ctx = self._enter(request)
            try:
                if self.down is not None:
                    async for item in self.down.unary_stream(STREAM)(request):
                        yield item
                    return
                for _ in range(3 if key.startswith("quick") else 1000):
                    yield b"item"
                    await asyncio.sleep(0.01)
            except BaseException as exc:
                self.errors[key] = exc
                raise
            finally:
                self.ended[key] = time.monotonic()

        async def upload(requests: AsyncIterator[bytes], context: Any) -> bytes:
            iterator = requests.__aiter__()
            first = await iterator.__anext__()
            key, probe, ctx = self._enter(first)

            async def again() -> AsyncIterator[bytes]:
                yield first
                async for item in iterator:
                    yield item

            try:
                if self.down is not None:
                    return await self.down.stream_unary(UPLOAD)(again())  # type: ignore[no-any-return]
                if key.startswith("quick"):
                    return b"%d" % len([item async for item in again()])
                await asyncio.sleep(WAIT)
                return b"not canceled"
            except BaseException as exc:
                self.errors[key] = exc
                raise
            finally:
                self.ended[key] = time.monotonic()

        return grpc.method_handlers_generic_handler(HOP, {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
            "Upload": grpc.stream_unary_rpc_method_handler(upload),
        })

    def close(self) -> None:
        self.channel.close()
        if self.kind == "sync":
            self.interceptor.stop(self.server, 0)
            if self.down is not None:
                self.down.close()
            assert self.pool is not None
            self.pool.shutdown(wait=False)
        else:
            async def stop() -> None:
                await self.interceptor.stop(self.server, 0)
                if self.down is not None:
                    await self.down.close()

            try:
                self.run(stop(), timeout=WAIT + 5)
            finally:
                assert self.loop is not None and self.thread is not None
                self.loop.call_soon_threadsafe(self.loop.stop)
                self.thread.join(WAIT)
                if not self.loop.is_running():
                    self.loop.close()


class Chain:
    """Hops built leaf first: ``kinds[0]`` is the edge (the test's client
    calls it), ``kinds[-1]`` the leaf."""

    def __init__(self, *kinds: str) -> None:
        self.hops: list[Hop] = []
        try:
            downstream: Optional[int] = None
            for kind in reversed(kinds):
                hop = Hop(kind, downstream)
                self.hops.insert(0, hop)
                downstream = hop.port
        except BaseException:
            self.close()
            raise

    @property
    def edge(self) -> Hop:
        return self.hops[0]

    @property
    def leaf(self) -> Hop:
        return self.hops[-1]

    def close(self) -> None:
        for hop in self.hops:
            hop.close()


CHAINS = [("sync", "sync"), ("aio", "aio"), ("sync", "aio"), ("aio", "sync")]
CHAIN_IDS = ["sync-sync", "aio-aio", "sync-aio", "aio-sync"]


@pytest.fixture(params=CHAINS, ids=CHAIN_IDS)
def chain(request: pytest.FixtureRequest) -> Iterator[Chain]:
    built = Chain(*request.param)
    try:
        yield built
    finally:
        built.close()


def settled(hop: Hop) -> dict[str, int]:
    assert wait_until(lambda: hop.host.stats["ops_in_flight"] == 0), hop.host.stats
    return hop.host.stats


def assert_every_hop_canceled_once(chain: Chain, key: str) -> None:
    for hop in chain.hops:
        probe = hop.probes(key)
        assert probe.settled(), f"{hop.kind} hop: free-state of {key} never ran"
        assert probe.reasons == [FAULTED], (hop.kind, probe.reasons)
        assert len(probe.frees) == 1 and not probe.cancel_after_free
        stats = settled(hop)
        assert stats["ops_begun"] == stats["ops_ended"] == 1
        assert stats["ops_canceled"] == stats["cancels_channel_faulted"] == 1
        assert stats["cancels_host_abort"] == 0 and stats["free_states_run"] == 1


def cancel_after_leaf_entered(chain: Chain, call: Any, key: str) -> float:
    """Cancels the edge's call once the leaf's handler is running; returns
    the monotonic time of the cancel."""
    assert chain.leaf.probes(key).entered.wait(WAIT), "the call never reached the leaf"
    started = time.monotonic()
    call.cancel()
    return started


# ------------------------------------------------------ client leaves


def test_edge_cancel_aborts_a_blocking_unary_call_downstream(chain: Chain) -> None:
    cancel_unary_through(chain, "call")


@pytest.mark.parametrize("key", ["with-call", "future"])
@pytest.mark.parametrize("leaf_kind", ["sync", "aio"])
def test_edge_cancel_aborts_with_call_and_future_downstream(leaf_kind: str, key: str) -> None:
    """The sync API's other two ways to make a unary call."""
    chain = Chain("sync", leaf_kind)
    try:
        cancel_unary_through(chain, key)
    finally:
        chain.close()


def cancel_unary_through(chain: Chain, key: str) -> None:
    call = chain.edge.unary().future(key.encode())
    canceled_at = cancel_after_leaf_entered(chain, call, key)
    leaf = chain.leaf.probes(key)
    assert leaf.canceled.wait(PROMPT), "the leaf was not canceled: the blocked call ran on"
    assert time.monotonic() - canceled_at < PROMPT
    assert_every_hop_canceled_once(chain, key)
    if chain.edge.kind == "sync":
        # The blocked thread woke with the operation's cancel, not gRPC's.
        error = chain.edge.errors[key]
        assert isinstance(error, OperationCanceledError) and error.reason == FAULTED


def test_edge_cancel_stops_a_response_stream_downstream(chain: Chain) -> None:
    call = chain.edge.stream()(b"stream")
    assert next(call) == b"item"  # the stream flows through every hop
    canceled_at = cancel_after_leaf_entered(chain, call, "stream")
    assert chain.leaf.probes("stream").canceled.wait(PROMPT)
    assert time.monotonic() - canceled_at < PROMPT
    assert_every_hop_canceled_once(chain, "stream")


def test_edge_cancel_aborts_a_blocking_stream_unary_call_downstream(chain: Chain) -> None:
    release = threading.Event()

    def requests() -> Iterator[bytes]:
        yield b"upload"
        release.wait(WAIT)

    call = chain.edge.upload().future(requests())
    try:
        cancel_after_leaf_entered(chain, call, "upload")
        assert chain.leaf.probes("upload").canceled.wait(PROMPT)
        assert_every_hop_canceled_once(chain, "upload")
    finally:
        release.set()


@pytest.mark.parametrize("edge_kind", ["sync", "aio"])
def test_edge_stop_cancels_downstream_and_answers_unavailable(edge_kind: str) -> None:
    """A stop of the edge aborts its host: its operation gets HOST_ABORT,
    the call it made is cancelled, the leaf sees its client leave."""
    chain = Chain(edge_kind, "sync")
    try:
        call = chain.edge.unary().future(b"stop")
        assert chain.leaf.probes("stop").entered.wait(WAIT)
        edge = chain.edge
        if edge_kind == "sync":
            edge.interceptor.stop(edge.server, 0)
        else:
            edge.run(edge.interceptor.stop(edge.server, 0), timeout=WAIT + 5)
        with pytest.raises(grpc.RpcError) as caught:
            call.result(WAIT)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        probe = edge.probes("stop")
        assert probe.settled() and probe.reasons == [CancelReason.HOST_ABORT] and len(probe.frees) == 1
        leaf = chain.leaf.probes("stop")
        assert leaf.settled() and leaf.reasons == [FAULTED] and len(leaf.frees) == 1
    finally:
        chain.close()


def test_three_hops_mixed() -> None:
    chain = Chain("sync", "aio", "sync")
    try:
        call = chain.edge.unary().future(b"three")
        cancel_after_leaf_entered(chain, call, "three")
        assert chain.leaf.probes("three").canceled.wait(PROMPT * 2)
        assert_every_hop_canceled_once(chain, "three")
    finally:
        chain.close()


# ------------------------------------------------------------ completion


def test_normal_completion_cancels_nothing(chain: Chain) -> None:
    edge = chain.edge
    assert edge.unary()(b"quick-u", timeout=WAIT) == b"quick-u"
    assert list(edge.stream()(b"quick-s", timeout=WAIT)) == [b"item"] * 3
    assert edge.upload()(iter([b"quick-up"] * 4), timeout=WAIT) == b"4"
    for hop in chain.hops:
        for key in ("quick-u", "quick-s", "quick-up"):
            probe = hop.probes(key)
            assert probe.settled()
            assert probe.reasons == [] and len(probe.frees) == 1
            assert hop.deadlines[key][0] is not None  # the timeout travelled
        stats = settled(hop)
        assert stats["ops_begun"] == stats["ops_ended"] == stats["free_states_run"] == 3
        assert stats["ops_canceled"] == 0 and stats["deadlines_expired"] == 0


# -------------------------------------------------------------- deadlines


def test_deadline_travels_and_expires_at_every_hop_at_once(chain: Chain) -> None:
    sent = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        chain.edge.unary()(b"deadline", timeout=0.5)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    edge_deadline, edge_left = chain.edge.deadlines["deadline"]
    leaf_deadline, leaf_left = chain.leaf.deadlines["deadline"]
    assert edge_deadline is not None and leaf_deadline is not None
    assert edge_left is not None and 0.3 < edge_left <= 0.5 + SLACK
    assert abs(edge_deadline - (sent + 0.5)) < 0.1
    # The same moment at the next hop (the interceptor forwarded what was
    # left; CLOCK_MONOTONIC is the same clock in every process).
    assert abs(leaf_deadline - edge_deadline) < 0.05, (leaf_deadline - edge_deadline)
    assert leaf_left is not None and leaf_left <= edge_left + SLACK
    assert_every_hop_canceled_once(chain, "deadline")
    for hop in chain.hops:
        # Each hop's handler ended at about the deadline, not at WAIT.
        ended = hop.ended["deadline"]
        assert edge_deadline - 0.05 < ended < edge_deadline + PROMPT, (hop.kind, ended - edge_deadline)


def test_caller_timeout_shorter_than_the_deadline_is_kept() -> None:
    """The call's own timeout wins when it is shorter than what is left."""
    leaf = Hop("sync")
    host = ServiceHost()
    host.open()
    try:
        channel = grpc.intercept_channel(leaf.channel, ccgrpc.client_interceptor())

        def work(ctx: Any) -> Optional[float]:
            channel.unary_unary(UNARY)(b"quick-short", timeout=0.4)
            return ctx.time_remaining()  # type: ignore[no-any-return]

        left = host.dispatch(host.accept_channel(), work, deadline=time.monotonic() + 5.0).result(WAIT)
        assert left is not None and left > 4.0
        deadline, remaining = leaf.deadlines["quick-short"]
        assert remaining is not None and 0.2 < remaining <= 0.4 + SLACK
    finally:
        host.close()
        leaf.close()


@pytest.mark.parametrize("kind", ["sync", "aio"])
def test_grpc_deadline_and_operation_deadline_race_cancel_once(kind: str) -> None:
    """The RPC's own deadline (gRPC ends the call) and the operation's (the
    host's timer faults the channel) fall at the same moment: the cancel is
    delivered once, whichever comes first."""
    leaf = Hop(kind)
    try:
        keys = [f"race-{i}" for i in range(8)]
        calls = [leaf.unary().future(key.encode(), timeout=0.25) for key in keys]
        for call in calls:
            with pytest.raises(grpc.RpcError) as caught:
                call.result(WAIT)
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        for key in keys:
            probe = leaf.probes(key)
            assert probe.settled() and probe.reasons == [FAULTED] and len(probe.frees) == 1
            assert leaf.deadlines[key][0] is not None
        stats = settled(leaf)
        assert stats["ops_canceled"] == stats["cancels_channel_faulted"] == 8
        assert stats["free_states_run"] == 8
        assert stats["deadlines_expired"] <= 8
    finally:
        leaf.close()


@pytest.mark.parametrize("kind", ["sync", "aio"])
def test_rpc_without_deadline_runs_without_one(kind: str) -> None:
    leaf = Hop(kind)
    try:
        assert leaf.unary()(b"quick-none") == b"quick-none"
        assert leaf.deadlines["quick-none"] == (None, None)
    finally:
        leaf.close()


# ------------------------------------------------ in a dispatched operation


@pytest.fixture
def leaf() -> Iterator[Hop]:
    hop = Hop("sync")
    try:
        yield hop
    finally:
        hop.close()


@pytest.fixture
def local_host() -> Iterator[ServiceHost]:
    host = ServiceHost()
    host.open()
    try:
        yield host
    finally:
        host.abort()
        host.close(1.0)


def test_worker_thread_blocked_in_a_call_is_woken_by_a_fault(leaf: Hop, local_host: ServiceHost) -> None:
    """A sync call blocked in a worker thread is aborted at once when its
    operation is canceled from another thread."""
    channel = grpc.intercept_channel(leaf.channel, ccgrpc.client_interceptor())
    op_channel = local_host.accept_channel()
    future = local_host.dispatch(op_channel, lambda ctx: channel.unary_unary(UNARY)(b"worker"))
    assert leaf.probes("worker").entered.wait(WAIT)
    faulted_at = time.monotonic()
    op_channel.fault()
    with pytest.raises(OperationCanceledError) as caught:
        future.result(PROMPT)
    assert time.monotonic() - faulted_at < PROMPT
    assert caught.value.reason == FAULTED
    assert isinstance(caught.value.__cause__, grpc.FutureCancelledError)
    probe = leaf.probes("worker")
    assert probe.settled() and probe.reasons == [FAULTED] and len(probe.frees) == 1


def test_host_abort_reaches_the_call_with_its_reason(leaf: Hop, local_host: ServiceHost) -> None:
    channel = grpc.intercept_channel(leaf.channel, ccgrpc.client_interceptor())
    future = local_host.dispatch(local_host.accept_channel(),
                                 lambda ctx: list(channel.unary_stream(STREAM)(b"aborted")))
    assert leaf.probes("aborted").entered.wait(WAIT)
    local_host.abort()
    with pytest.raises(OperationCanceledError) as caught:
        future.result(PROMPT)
    assert caught.value.reason == CancelReason.HOST_ABORT
    probe = leaf.probes("aborted")
    # The leaf saw its client leave: for it that is a channel fault.
    assert probe.settled() and probe.reasons == [FAULTED] and len(probe.frees) == 1


@pytest.mark.parametrize("kind", ["unary", "stream", "future", "upload"])
def test_already_canceled_operation_starts_no_call(leaf: Hop, local_host: ServiceHost, kind: str) -> None:
    channel = grpc.intercept_channel(leaf.channel, ccgrpc.client_interceptor())
    op_channel = local_host.accept_channel()
    ctx = op_channel.begin_operation()
    op_channel.fault()
    token = cancelcore._operation._current.set(ctx)
    try:
        with pytest.raises(OperationCanceledError) as caught:
            if kind == "unary":
                channel.unary_unary(UNARY)(b"quick-never")
            elif kind == "stream":
                next(channel.unary_stream(STREAM)(b"quick-never"))
            elif kind == "future":
                channel.unary_unary(UNARY).future(b"quick-never").result()
            else:
                channel.stream_unary(UPLOAD)(iter([b"quick-never"]))
        assert caught.value.reason == FAULTED
    finally:
        cancelcore._operation._current.reset(token)
        ctx.end()
    time.sleep(0.05)
    assert leaf.host.stats["ops_begun"] == 0  # never sent


def test_aio_already_canceled_operation_starts_no_call(leaf: Hop, local_host: ServiceHost) -> None:
    op_channel = local_host.accept_channel()
    ctx = op_channel.begin_operation()
    op_channel.fault()

    async def main() -> list[BaseException]:
        errors: list[BaseException] = []
        async with grpc.aio.insecure_channel(f"{HOST}:{leaf.port}",
                                             interceptors=ccgrpc.aio_client_interceptor()) as channel:
            cancelcore._operation._current.set(ctx)  # this task's copy only
            for call in (lambda: channel.unary_unary(UNARY)(b"quick-no"),
                         lambda: channel.stream_unary(UPLOAD)(iter([b"quick-no"]))):
                try:
                    await call()
                except asyncio.CancelledError as exc:  # a cancelled call, as grpc.aio has them
                    errors.append(exc)
            try:
                async for _ in channel.unary_stream(STREAM)(b"quick-no"):
                    pass
            except asyncio.CancelledError as exc:
                errors.append(exc)
        return errors

    try:
        errors = asyncio.run(main())
    finally:
        ctx.end()
    assert len(errors) == 3, errors  # (its message names the reason; Python 3.9 drops it)
    time.sleep(0.05)
    assert leaf.host.stats["ops_begun"] == 0  # never sent


def test_finished_calls_leave_no_hook_on_their_operation(leaf: Hop, local_host: ServiceHost) -> None:
    """An operation making many calls keeps no hook per finished call:
    blocking, future and streaming (sync), and aio calls."""
    channel = grpc.intercept_channel(leaf.channel, ccgrpc.client_interceptor())
    ctx = local_host.accept_channel().begin_operation()
    token = cancelcore._operation._current.set(ctx)
    try:
        for i in range(10):
            key = f"quick-h{i}".encode()
            assert channel.unary_unary(UNARY)(key) == key
            assert channel.unary_unary(UNARY).future(key).result(WAIT) == key
        assert not ctx._hooks

        async def calls() -> None:
            async with grpc.aio.insecure_channel(f"{HOST}:{leaf.port}",
                                                 interceptors=ccgrpc.aio_client_interceptor()) as aio:
                for i in range(10):
                    key = f"quick-a{i}".encode()
                    assert await aio.unary_unary(UNARY)(key) == key

        asyncio.run(calls())
        assert not ctx._hooks
    finally:
        cancelcore._operation._current.reset(token)
        ctx.end()


def test_ended_operation_is_no_operation(leaf: Hop, local_host: ServiceHost) -> None:
    channel = grpc.intercept_channel(leaf.channel, ccgrpc.client_interceptor())
    op_channel = local_host.accept_channel()
    ctx = op_channel.begin_operation(deadline=time.monotonic() + 0.001)
    ctx.end()
    token = cancelcore._operation._current.set(ctx)
    try:
        assert channel.unary_unary(UNARY)(b"quick-after") == b"quick-after"
    finally:
        cancelcore._operation._current.reset(token)
    assert leaf.deadlines["quick-after"] == (None, None)


def test_aio_call_in_a_child_task_is_cancelled_with_the_operation(leaf: Hop, local_host: ServiceHost) -> None:
    """A task the handler started (it inherits current_operation()) is not
    cancelled by the adapter; its call is, by the interceptor, on its loop,
    although the fault comes from another thread."""
    results: list[BaseException] = []
    op_channel = local_host.accept_channel()

    async def main() -> None:
        async with grpc.aio.insecure_channel(f"{HOST}:{leaf.port}",
                                             interceptors=ccgrpc.aio_client_interceptor()) as channel:
            ctx = op_channel.begin_operation()
            token = cancelcore._operation._current.set(ctx)
            try:
                child = asyncio.ensure_future(channel.unary_unary(UNARY)(b"child"))
            finally:
                cancelcore._operation._current.reset(token)
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, leaf.probes("child").entered.wait, WAIT)
            threading.Thread(target=op_channel.fault).start()
            try:
                await asyncio.wait_for(child, PROMPT)
            except BaseException as exc:  # CancelledError: the call was cancelled
                results.append(exc)
            finally:
                ctx.end()

    asyncio.run(main())
    assert len(results) == 1 and isinstance(results[0], asyncio.CancelledError)
    probe = leaf.probes("child")
    assert probe.settled() and probe.reasons == [FAULTED] and len(probe.frees) == 1


# ------------------------------------------------------- outside an operation


def test_outside_an_operation_calls_pass_through_unchanged() -> None:
    """The same calls on a plain and an intercepted channel give the same
    results, call types, deadlines and errors."""
    server = GrpcServer("sync")
    try:
        plain = server.channel
        intercepted = grpc.intercept_channel(plain, ccgrpc.client_interceptor())
        for channel, tag in ((plain, "p"), (intercepted, "i")):
            assert channel.unary_unary(f"/{SERVICE}/Echo")(tag.encode() + b"-echo", timeout=WAIT) == tag.encode() + b"-echo"
            assert list(channel.unary_stream(f"/{SERVICE}/Count")(tag.encode() + b"-count")) == [b"0", b"1", b"2"]
            assert channel.stream_unary(f"/{SERVICE}/Sum")(iter([tag.encode() + b"-sum"] * 2)) == b"2"
            with pytest.raises(grpc.RpcError) as caught:
                channel.unary_unary(f"/{SERVICE}/Block")(tag.encode() + b"-late", timeout=0.2)
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            future = channel.unary_unary(f"/{SERVICE}/Block").future(tag.encode() + b"-cancel")
            assert server.probes(tag + "-cancel").entered.wait(WAIT)
            assert future.cancel()
            with pytest.raises(grpc.FutureCancelledError):
                future.result()
        assert type(intercepted.unary_unary(f"/{SERVICE}/Echo").future(b"type")) is \
            type(plain.unary_unary(f"/{SERVICE}/Echo").future(b"type2"))
        assert type(intercepted.unary_stream(f"/{SERVICE}/Count")(b"type3")) is \
            type(plain.unary_stream(f"/{SERVICE}/Count")(b"type4"))
        for tag in ("p", "i"):
            for key in ("-late", "-cancel", "-echo"):  # the server's side settles after the client's
                assert server.probes(tag + key).settled(), tag + key
            assert server.probes(tag + "-late").reasons == [FAULTED]
            assert server.probes(tag + "-cancel").reasons == [FAULTED]
            assert server.probes(tag + "-echo").reasons == []
    finally:
        server.close()


def test_aio_outside_an_operation_passes_through(leaf: Hop) -> None:
    async def main() -> tuple[bytes, list[bytes]]:
        async with grpc.aio.insecure_channel(f"{HOST}:{leaf.port}",
                                             interceptors=ccgrpc.aio_client_interceptor()) as channel:
            answer = await channel.unary_unary(UNARY)(b"quick-aio", timeout=WAIT)
            items = [item async for item in channel.unary_stream(STREAM)(b"quick-aio-s")]
            return answer, items

    assert asyncio.run(main()) == (b"quick-aio", [b"item"] * 3)
    assert leaf.probes("quick-aio").reasons == [] and leaf.probes("quick-aio-s").reasons == []


# ------------------------------------------------ the grpcio internal we use


def test_grpcio_blocking_continuation_still_gives_a_future_path(leaf: Hop) -> None:
    """``_future_starter`` reads grpcio's blocking continuation (a closure
    over its multi-callable): if grpcio changes that, blocking calls would
    silently lose their prompt cancel.  This fails loudly instead."""
    seen: list[Any] = []

    class Spy(grpc.UnaryUnaryClientInterceptor, grpc.StreamUnaryClientInterceptor):  # type: ignore[misc]
        def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
            seen.append(ccgrpc._future_starter(continuation))
            return continuation(details, request)

        def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
            seen.append(ccgrpc._future_starter(continuation))
            return continuation(details, request_iterator)

    channel = grpc.intercept_channel(leaf.channel, Spy())
    assert channel.unary_unary(UNARY)(b"quick-spy1") == b"quick-spy1"
    assert channel.unary_unary(UNARY).with_call(b"quick-spy2")[0] == b"quick-spy2"
    assert channel.stream_unary(UPLOAD)(iter([b"quick-spy3"])) == b"1"
    assert len(seen) == 3 and all(start is not None for start in seen), \
        f"grpcio {grpc.__version__} changed its interceptor continuation: {seen}"
    assert ccgrpc._future_starter(lambda details, request: None) is None


def test_fallback_without_the_internal_still_forwards_the_deadline(
        leaf: Hop, local_host: ServiceHost, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ccgrpc, "_future_starter", lambda continuation: None)
    channel = grpc.intercept_channel(leaf.channel, ccgrpc.client_interceptor())
    future = local_host.dispatch(local_host.accept_channel(),
                                 lambda ctx: channel.unary_unary(UNARY)(b"fallback"),
                                 deadline=time.monotonic() + 0.3)
    with pytest.raises(grpc.RpcError) as caught:
        future.result(WAIT)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    probe = leaf.probes("fallback")
    assert probe.settled() and probe.reasons == [FAULTED]
    deadline, remaining = leaf.deadlines["fallback"]
    assert remaining is not None and remaining <= 0.3 + SLACK


def test_interceptor_shapes() -> None:
    sync = ccgrpc.client_interceptor()
    for kind in (grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                 grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
        assert isinstance(sync, kind)
    kinds = [grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor,
             grpc.aio.StreamUnaryClientInterceptor, grpc.aio.StreamStreamClientInterceptor]
    aio = ccgrpc.aio_client_interceptor()
    assert len(aio) == 4
    assert [sum(isinstance(i, kind) for i in aio) for kind in kinds] == [1, 1, 1, 1]


# ------------------------------------------------ each hop in its own process


class HopProcess:
    """A ``Hop`` in a child process (this file run as a script); commands on
    its stdin, answers (JSON) on its stdout."""

    def __init__(self, kind: str, downstream: Optional[int] = None) -> None:
        command = [sys.executable, os.path.abspath(__file__), kind, str(downstream or 0)]
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.ask(None)
        self.port = int(line)

    def ask(self, command: Optional[str]) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if command is not None:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], WAIT + 5)
        assert ready, f"hop process did not answer {command!r}"
        line = self.proc.stdout.readline()
        assert line, f"hop process exited (status {self.proc.poll()})"
        return json.loads(line)

    def close(self) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait(WAIT + 5)
        except BaseException:
            self.proc.kill()
            raise


def _serve_hop(kind: str, downstream: int) -> None:
    """The child: runs a Hop until stdin closes.  ``entered KEY`` waits for
    the handler to run; ``probe KEY`` waits for its free-state and gives
    what it saw; ``stats`` gives the host's once nothing is in flight."""
    hop = Hop(kind, downstream or None)
    print(json.dumps(hop.port), flush=True)
    for line in sys.stdin:
        command, _, key = line.strip().partition(" ")
        if command == "entered":
            answer: Any = hop.probes(key).entered.wait(WAIT)
        elif command == "probe":
            probe = hop.probes(key)
            probe.settled(WAIT)
            deadline, remaining = hop.deadlines.get(key, (None, None))
            answer = {"reasons": [int(r) for r in probe.reasons], "frees": len(probe.frees),
                      "deadline": deadline, "remaining": remaining, "ended": hop.ended.get(key)}
        else:
            wait_until(lambda: hop.host.stats["ops_in_flight"] == 0)
            answer = hop.host.stats
        print(json.dumps(answer), flush=True)
    hop.close()


@pytest.fixture(scope="module")
def processes() -> Iterator[list[HopProcess]]:
    """edge (threaded server) -> middle (asyncio server) -> leaf (threaded),
    each in its own process."""
    hops: list[HopProcess] = []
    try:
        downstream: Optional[int] = None
        for kind in ("sync", "aio", "sync"):
            hops.insert(0, HopProcess(kind, downstream))
            downstream = hops[0].port
        yield hops
    finally:
        for hop in hops:
            hop.close()


def test_processes_client_cancel_reaches_every_hop_once(processes: list[HopProcess]) -> None:
    with grpc.insecure_channel(f"{HOST}:{processes[0].port}") as channel:
        call = channel.unary_unary(UNARY).future(b"p-cancel")
        assert processes[-1].ask("entered p-cancel")
        call.cancel()
        for hop in processes:
            probe = hop.ask("probe p-cancel")
            assert probe["reasons"] == [int(FAULTED)] and probe["frees"] == 1


def test_processes_deadline_expires_at_every_hop_at_once(processes: list[HopProcess]) -> None:
    with grpc.insecure_channel(f"{HOST}:{processes[0].port}") as channel:
        sent = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            channel.unary_unary(UNARY)(b"p-deadline", timeout=0.5)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    seen = [hop.ask("probe p-deadline") for hop in processes]
    edge = seen[0]["deadline"]
    assert abs(edge - (sent + 0.5)) < 0.1  # CLOCK_MONOTONIC: one clock for every process
    for hop in seen:
        assert hop["reasons"] == [int(FAULTED)] and hop["frees"] == 1
        assert abs(hop["deadline"] - edge) < 0.05, hop["deadline"] - edge
        assert edge - 0.05 < hop["ended"] < edge + PROMPT


def test_processes_completion_cancels_nothing(processes: list[HopProcess]) -> None:
    before = [hop.ask("stats") for hop in processes]
    with grpc.insecure_channel(f"{HOST}:{processes[0].port}") as channel:
        assert channel.unary_unary(UNARY)(b"quick-p", timeout=WAIT) == b"quick-p"
    for hop, old in zip(processes, before):
        probe = hop.ask("probe quick-p")
        assert probe["reasons"] == [] and probe["frees"] == 1 and probe["deadline"] is not None
        new = hop.ask("stats")
        assert {name: new[name] - old[name] for name in
                ("ops_begun", "ops_ended", "free_states_run", "ops_canceled", "deadlines_expired")} == \
            {"ops_begun": 1, "ops_ended": 1, "free_states_run": 1, "ops_canceled": 0, "deadlines_expired": 0}


if __name__ == "__main__":
    _serve_hop(sys.argv[1], int(sys.argv[2]))
