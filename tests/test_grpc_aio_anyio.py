"""Regression (found by the chain of issue 10): an async grpc.aio handler
that uses anyio -- as httpx.AsyncClient does to open a connection -- was
canceled (CHANNEL_FAULTED) by AioCancellationInterceptor although its client
never cancelled: anyio's ``connect_tcp`` cancels its own task group's scope
once connected, which throws a ``CancelledError`` (with anyio's message)
into the handler's task, and the interceptor took every ``CancelledError``
for gRPC's.  With the cancelcore httpx transport inside, the handler then
failed and gRPC sent no status: the caller hung.

A real grpc.aio server on 127.0.0.1; anyio opens real TCP connections."""

from __future__ import annotations

import asyncio
import contextvars
import socket
import threading
from typing import Any

import pytest

pytest.importorskip("grpc")
anyio = pytest.importorskip("anyio")
import grpc  # noqa: E402
import grpc.aio  # noqa: E402

from cancelcore import CancelReason, current_operation  # noqa: E402
from cancelcore.grpc import AioCancellationInterceptor  # noqa: E402

HOST = "127.0.0.1"


async def _serve(work: Any) -> tuple[Any, AioCancellationInterceptor, int]:
    interceptor = AioCancellationInterceptor()
    server = grpc.aio.server(interceptors=[interceptor])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "t.Anyio", {"Work": grpc.unary_unary_rpc_method_handler(work)}),))
    port = server.add_insecure_port(f"{HOST}:0")
    await server.start()
    return server, interceptor, port


def test_an_anyio_cancel_scope_inside_a_handler_is_not_a_client_cancel() -> None:
    listener = socket.create_server((HOST, 0))
    target = listener.getsockname()[1]
    cancels: list[CancelReason] = []
    frees: list[int] = []

    async def work(request: bytes, context: Any) -> bytes:
        ctx = current_operation()
        assert ctx is not None
        ctx.register_for_cancel(lambda reason, _: cancels.append(reason), lambda _: frees.append(1))
        for _ in range(3):  # each connect cancels anyio's own task group
            stream = await anyio.connect_tcp(HOST, target)
            await stream.aclose()
        return b"canceled" if ctx.canceled else b"ok"

    async def main() -> None:
        server, interceptor, port = await _serve(work)
        try:
            async with grpc.aio.insecure_channel(f"{HOST}:{port}") as channel:
                reply = await channel.unary_unary("/t.Anyio/Work")(b"", timeout=10)
            assert reply == b"ok"
            stats = interceptor.host.stats
            assert stats["ops_canceled"] == 0 and stats["cancels_channel_faulted"] == 0, stats
            assert stats["free_states_run"] == 1, stats
        finally:
            await server.stop(0)

    try:
        asyncio.run(main())
    finally:
        listener.close()
    assert cancels == [] and frees == [1]


def test_a_client_cancel_still_reaches_a_handler_inside_an_anyio_scope() -> None:
    # The positive control: gRPC's own cancel (no message) is still taken as
    # the client's, also when the handler waits inside an anyio scope.
    cancels: list[CancelReason] = []
    frees: list[int] = []
    entered = threading.Event()
    seen_cancelled: list[bool] = []

    async def work(request: bytes, context: Any) -> bytes:
        ctx = current_operation()
        assert ctx is not None
        ctx.register_for_cancel(lambda reason, _: cancels.append(reason), lambda _: frees.append(1))
        entered.set()
        try:
            with anyio.CancelScope():
                await anyio.sleep(30)
        except BaseException:
            seen_cancelled.append(ctx.canceled)  # the fault went first
            raise
        return b"slept"

    async def main() -> None:
        server, interceptor, port = await _serve(work)
        try:
            async with grpc.aio.insecure_channel(f"{HOST}:{port}") as channel:
                call = channel.unary_unary("/t.Anyio/Work")(b"", timeout=10)
                while not entered.is_set():
                    await asyncio.sleep(0.005)
                call.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await call
            for _ in range(400):
                if frees:
                    break
                await asyncio.sleep(0.005)
            stats = interceptor.host.stats
            assert stats["cancels_channel_faulted"] == 1 and stats["free_states_run"] == 1, stats
        finally:
            await server.stop(0)

    asyncio.run(main())
    assert cancels == [CancelReason.CHANNEL_FAULTED] and frees == [1]
    assert seen_cancelled == [True]


# Regression (found by the chain of issue 10): the handler's own
# asyncio.wait_for / asyncio.timeout, and a TaskGroup whose child failed,
# cancel the handler's task with no message on Python >= 3.11 -- as gRPC
# does -- and were taken for its client leaving (CHANNEL_FAULTED).


def _own_cancels() -> list[str]:
    kinds = ["wait_for"]
    if hasattr(asyncio, "timeout"):
        kinds.append("timeout")
    if hasattr(asyncio, "TaskGroup"):
        kinds.append("taskgroup")
    return kinds


@pytest.mark.parametrize("kind", _own_cancels())
def test_the_handlers_own_timeout_or_task_group_is_not_a_client_cancel(kind: str) -> None:
    cancels: list[CancelReason] = []
    frees: list[int] = []

    async def own(kind: str) -> str:
        if kind == "wait_for":
            try:
                await asyncio.wait_for(asyncio.sleep(5), 0.02)
            except asyncio.TimeoutError:
                return "timed out"
        elif kind == "timeout":
            try:
                async with asyncio.timeout(0.02):  # type: ignore[attr-defined]
                    await asyncio.sleep(5)
            except TimeoutError:
                return "timed out"
        else:
            async def fail() -> None:
                await asyncio.sleep(0.01)
                raise ValueError("child failed")

            try:
                async with asyncio.TaskGroup() as group:  # type: ignore[attr-defined]
                    group.create_task(fail())
                    await asyncio.sleep(5)  # cancelled by the group
            except BaseException as exc:  # an ExceptionGroup (3.11+)
                return f"group: {type(exc).__name__}"
        return "not reached"

    async def work(request: bytes, context: Any) -> bytes:
        ctx = current_operation()
        assert ctx is not None
        ctx.register_for_cancel(lambda reason, _: cancels.append(reason), lambda _: frees.append(1))
        outcome = await own(kind)
        return f"{outcome}; canceled={ctx.canceled}".encode()

    async def main() -> None:
        server, interceptor, port = await _serve(work)
        try:
            async with grpc.aio.insecure_channel(f"{HOST}:{port}") as channel:
                reply = await channel.unary_unary("/t.Anyio/Work")(b"", timeout=10)
            assert reply.endswith(b"; canceled=False"), reply
            assert not reply.startswith(b"not reached"), reply
            stats = interceptor.host.stats
            assert stats["ops_canceled"] == 0 and stats["free_states_run"] == 1, stats
        finally:
            await server.stop(0)

    asyncio.run(main())
    assert cancels == [] and frees == [1]


@pytest.mark.parametrize("kind", [k for k in _own_cancels() if k != "wait_for"] or ["wait_for"])
def test_a_generator_steps_own_timeout_is_not_a_client_cancel(kind: str) -> None:
    """The same for an async generator handler (a streamed response): a
    step's own asyncio.timeout or TaskGroup (Python >= 3.11) is not taken
    for gRPC's cancel; a context variable a step sets is seen by the next."""
    cancels: list[CancelReason] = []
    frees: list[int] = []
    seen = contextvars.ContextVar("seen", default=0)

    async def stream(request: bytes, context: Any) -> Any:
        ctx = current_operation()
        assert ctx is not None
        ctx.register_for_cancel(lambda reason, _: cancels.append(reason), lambda _: frees.append(1))
        for i in range(3):
            if kind == "timeout":
                try:
                    async with asyncio.timeout(0.01):  # type: ignore[attr-defined]
                        await asyncio.sleep(5)
                except TimeoutError:
                    pass
            elif kind == "taskgroup":
                async def fail() -> None:
                    raise ValueError("child failed")

                try:
                    async with asyncio.TaskGroup() as group:  # type: ignore[attr-defined]
                        group.create_task(fail())
                        await asyncio.sleep(5)
                except BaseException:
                    pass
            else:
                try:
                    await asyncio.wait_for(asyncio.sleep(5), 0.01)
                except asyncio.TimeoutError:
                    pass
            seen.set(seen.get() + 1)
            yield f"{i}:{seen.get()}:{ctx.canceled}".encode()

    async def main() -> None:
        interceptor = AioCancellationInterceptor()
        server = grpc.aio.server(interceptors=[interceptor])
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "t.Anyio", {"Stream": grpc.unary_stream_rpc_method_handler(stream)}),))
        port = server.add_insecure_port(f"{HOST}:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"{HOST}:{port}") as channel:
                items = [item async for item in channel.unary_stream("/t.Anyio/Stream")(b"", timeout=10)]
            assert items == [b"0:1:False", b"1:2:False", b"2:3:False"], items
            for _ in range(200):
                if frees:
                    break
                await asyncio.sleep(0.005)
            stats = interceptor.host.stats
            assert stats["ops_canceled"] == 0 and stats["free_states_run"] == 1, stats
        finally:
            await server.stop(0)

    asyncio.run(main())
    assert cancels == [] and frees == [1]
