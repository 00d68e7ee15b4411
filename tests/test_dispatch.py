"""host.dispatch: operations run for the caller on worker threads (Future)
or as asyncio tasks (Task), and current_operation()."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
import time
from typing import Any

import pytest

import cancelcore
from cancelcore import (
    CancelReason,
    ChannelState,
    HostState,
    InvalidOperationError,
    ObjectFaultedError,
    OperationContext,
    ServiceHost,
    current_operation,
)
from conftest import Recorder

# ------------------------------------------------------------ thread pool


def test_returns_future_with_result(host: ServiceHost, channel: Any) -> None:
    seen: list[Any] = []

    def fn(ctx: OperationContext, a: int, b: int) -> int:
        seen.append((ctx, current_operation(), threading.get_ident()))
        return a + b

    fut = host.dispatch(channel, fn, 2, 3)
    assert isinstance(fut, concurrent.futures.Future)
    assert fut.result(10) == 5
    ctx, current, ident = seen[0]
    assert isinstance(ctx, OperationContext)
    assert current is ctx
    assert ident != threading.get_ident()
    assert current_operation() is None
    # The operation ended when fn returned.
    with pytest.raises(InvalidOperationError):
        ctx.canceled
    st = host.stats
    assert st["ops_begun"] == 1 and st["ops_ended"] == 1 and st["ops_in_flight"] == 0


def test_future_holds_exception_and_op_ends(host: ServiceHost, channel: Any) -> None:
    ctxs: list[Any] = []

    def fn(ctx: OperationContext) -> None:
        ctxs.append(ctx)
        raise ValueError("inner")

    fut = host.dispatch(channel, fn)
    with pytest.raises(ValueError, match="inner"):
        fut.result(10)
    assert isinstance(fut.exception(), ValueError)
    with pytest.raises(InvalidOperationError):
        ctxs[0].end()
    assert host.stats["ops_in_flight"] == 0


def test_current_operation_outside_is_none() -> None:
    assert current_operation() is None


def test_current_operation_reset_after_fn(make_host: Any) -> None:
    # A worker thread reused for a later task sees no stale operation.
    host = make_host(max_workers=1)
    channel = host.accept_channel()
    outside: list[Any] = []
    host.dispatch(channel, lambda ctx: None).result(10)
    fut = host._workers().submit(lambda: outside.append(current_operation()))
    fut.result(10)
    assert outside == [None]


def test_user_registration_inside_dispatched_fn(host: ServiceHost, channel: Any) -> None:
    rec = Recorder()
    second: list[Any] = []
    registered = threading.Event()

    def fn(ctx: OperationContext) -> str:
        ctx.register_for_cancel(rec.on_cancel, rec.on_free, "mine")
        try:
            ctx.register_for_cancel(lambda r, s: None)
        except InvalidOperationError as exc:
            second.append(exc)
        registered.set()
        assert rec.cancel_done.wait(10)
        return "stopped"

    fut = host.dispatch(channel, fn)
    assert registered.wait(10)
    host.abort()
    assert fut.result(10) == "stopped"
    assert len(second) == 1  # exactly one registration for the user (G2)
    assert rec.cancels[0][:2] == (CancelReason.HOST_ABORT, "mine")
    assert rec.frees == [("mine", rec.frees[0][1])]
    assert rec.n_cancel == 1 and rec.n_free == 1


def test_abort_reaches_blocking_fn(host: ServiceHost, channel: Any) -> None:
    registered = threading.Semaphore(0)

    def fn(ctx: OperationContext) -> Any:
        stop = threading.Event()
        ctx.register_for_cancel(lambda reason, ev: ev.set(), None, stop)
        registered.release()
        if not stop.wait(10):
            return "timed out"
        return ("canceled", ctx.cancel_reason, threading.get_ident())

    futs = [host.dispatch(channel, fn) for _ in range(3)]
    for _ in futs:
        assert registered.acquire(timeout=10)
    host.abort()
    results = [f.result(10) for f in futs]
    assert [r[:2] for r in results] == [("canceled", CancelReason.HOST_ABORT)] * 3
    assert threading.get_ident() not in {r[2] for r in results}
    assert host.stats["ops_in_flight"] == 0
    assert host.stats["cancel_callbacks_run"] == 3


def test_channel_fault_reaches_blocking_fn(host: ServiceHost, channel: Any) -> None:
    started = threading.Event()

    def fn(ctx: OperationContext) -> Any:
        stop = threading.Event()
        ctx.register_for_cancel(lambda reason, ev: ev.set(), None, stop)
        started.set()
        stop.wait(10)
        return ctx.cancel_reason

    fut = host.dispatch(channel, fn)
    assert started.wait(10)
    channel.fault()
    assert fut.result(10) is CancelReason.CHANNEL_FAULTED
    with pytest.raises(ObjectFaultedError):
        host.dispatch(channel, fn)  # begins on the dispatching thread


def test_dispatch_on_faulted_host_raises_here(host: ServiceHost, channel: Any) -> None:
    host.abort()
    with pytest.raises(ObjectFaultedError):
        host.dispatch(channel, lambda ctx: None)


def test_dispatch_partial(host: ServiceHost, channel: Any) -> None:
    def fn(prefix: str, ctx: OperationContext, x: int) -> str:
        return f"{prefix}{x}"

    fut = host.dispatch(channel, functools.partial(fn, "v"), 7)
    assert fut.result(10) == "v7"


def test_close_waits_for_dispatched_ops(host: ServiceHost, channel: Any) -> None:
    def fn(ctx: OperationContext) -> str:
        time.sleep(0.2)
        return "done"

    fut = host.dispatch(channel, fn)
    assert host.close() is True
    assert host.stats["ops_in_flight"] == 0
    assert fut.result(10) == "done"


def test_many_dispatched_ops(host: ServiceHost) -> None:
    channels = [host.accept_channel() for _ in range(4)]

    def fn(ctx: OperationContext, i: int) -> int:
        assert current_operation() is ctx
        return i * i

    futs = [host.dispatch(channels[i % 4], fn, i) for i in range(200)]
    assert [f.result(10) for f in futs] == [i * i for i in range(200)]
    st = host.stats
    assert st["ops_begun"] == st["ops_ended"] == 200


# ------------------------------------------------------------ asyncio


def test_async_dispatch_outside_loop_raises(host: ServiceHost, channel: Any) -> None:
    async def fn(ctx: OperationContext) -> None:
        pass

    with pytest.raises(RuntimeError):
        host.dispatch(channel, fn)
    assert host.stats["ops_begun"] == 0


def test_async_result_and_current_operation(host: ServiceHost, channel: Any) -> None:
    async def fn(ctx: OperationContext, x: int) -> Any:
        await asyncio.sleep(0)
        return x * 2, current_operation() is ctx, ctx

    async def main() -> Any:
        task = host.dispatch(channel, fn, 21)
        assert isinstance(task, asyncio.Task)
        assert current_operation() is None  # not in the caller's context
        return await task

    value, same, ctx = asyncio.run(main())
    assert value == 42 and same
    with pytest.raises(InvalidOperationError):
        ctx.canceled
    assert host.stats["ops_in_flight"] == 0


def test_async_exception_propagates(host: ServiceHost, channel: Any) -> None:
    async def fn(ctx: OperationContext) -> None:
        await asyncio.sleep(0)
        raise KeyError("k")

    async def main() -> None:
        await host.dispatch(channel, fn)

    with pytest.raises(KeyError):
        asyncio.run(main())
    assert host.stats["ops_in_flight"] == 0


def _run_cancel_scenario(trigger: Any, from_thread: bool) -> tuple[Any, Any]:
    """Dispatches a coroutine that sleeps; triggers a cancel; returns the
    task's outcome and what the user's callback saw."""
    rec = Recorder()
    started = asyncio.Event

    async def main() -> Any:
        ready = started()

        async def fn(ctx: OperationContext) -> str:
            ctx.register_for_cancel(rec.on_cancel, rec.on_free)
            ready.set()
            await asyncio.sleep(30)
            return "not canceled"

        task = trigger.dispatch(fn)
        await ready.wait()
        if from_thread:
            t = threading.Thread(target=trigger.fire)
            t.start()
            await asyncio.get_running_loop().run_in_executor(None, t.join)
        else:
            trigger.fire()
        try:
            await asyncio.wait_for(task, 10)
        except asyncio.CancelledError:
            return "cancelled", task.cancelled()
        return "completed", task.result()

    return asyncio.run(main()), rec


class _Trigger:
    def __init__(self, host: ServiceHost, channel: Any, kind: str) -> None:
        self.host, self.channel, self.kind = host, channel, kind

    def dispatch(self, fn: Any) -> Any:
        return self.host.dispatch(self.channel, fn)

    def fire(self) -> None:
        if self.kind == "abort":
            self.host.abort()
        else:
            self.channel.fault()


@pytest.mark.parametrize("from_thread", [False, True], ids=["same-thread", "other-thread"])
@pytest.mark.parametrize("kind, reason", [("abort", CancelReason.HOST_ABORT), ("fault", CancelReason.CHANNEL_FAULTED)])
def test_async_task_cancelled_when_op_canceled(
    host: ServiceHost, channel: Any, kind: str, reason: CancelReason, from_thread: bool
) -> None:
    outcome, rec = _run_cancel_scenario(_Trigger(host, channel, kind), from_thread)
    assert outcome == ("cancelled", True)
    assert rec.reasons == [reason]  # the user's own registration (G2 not taken)
    assert rec.n_free == 1
    assert host.stats["ops_in_flight"] == 0


def test_async_cancellation_message_and_ctx_state(host: ServiceHost, channel: Any) -> None:
    async def fn(ctx: OperationContext) -> Any:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            return ("caught", ctx.canceled, ctx.cancel_reason)
        return "not canceled"

    async def main() -> Any:
        task = host.dispatch(channel, fn)
        await asyncio.sleep(0.01)
        channel.fault()
        return await asyncio.wait_for(task, 10)

    assert asyncio.run(main()) == ("caught", True, CancelReason.CHANNEL_FAULTED)


def test_async_user_gets_exactly_one_registration(host: ServiceHost, channel: Any) -> None:
    async def fn(ctx: OperationContext) -> Any:
        ctx.register_for_cancel(lambda r, s: None)
        with pytest.raises(InvalidOperationError):
            ctx.register_for_cancel(lambda r, s: None)
        return "ok"

    async def main() -> Any:
        return await host.dispatch(channel, fn)

    assert asyncio.run(main()) == "ok"


def test_async_op_canceled_before_it_starts(host: ServiceHost, channel: Any) -> None:
    rec = Recorder()

    async def fn(ctx: OperationContext) -> str:
        ctx.register_for_cancel(rec.on_cancel, rec.on_free)
        await asyncio.sleep(30)
        return "ran"

    async def main() -> Any:
        task = host.dispatch(channel, fn)
        host.abort()  # before the task ever ran
        try:
            await asyncio.wait_for(task, 10)
        except asyncio.CancelledError:
            return "cancelled"
        return task.result()

    assert asyncio.run(main()) == "cancelled"
    assert host.stats["ops_in_flight"] == 0


def test_async_many_tasks_one_abort(host: ServiceHost) -> None:
    channels = [host.accept_channel() for _ in range(3)]

    async def fn(ctx: OperationContext) -> str:
        await asyncio.sleep(30)
        return "ran"

    async def main() -> list[Any]:
        tasks = [host.dispatch(channels[i % 3], fn) for i in range(30)]
        await asyncio.sleep(0.01)
        threading.Thread(target=host.abort).start()
        return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)

    results = asyncio.run(main())
    assert len(results) == 30
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    st = host.stats
    assert st["ops_in_flight"] == 0 and st["ops_canceled"] == 30


def test_cancel_after_loop_closed_is_harmless(host: ServiceHost, channel: Any, error_hook: Any, caplog: Any) -> None:
    rec = Recorder()
    ctxs: list[Any] = []

    async def fn(ctx: OperationContext) -> None:
        ctxs.append(ctx)
        ctx.register_for_cancel(rec.on_cancel, rec.on_free)
        await asyncio.Event().wait()  # never set

    loop = asyncio.new_event_loop()
    holder: list[Any] = []

    async def start() -> None:
        holder.append(host.dispatch(channel, fn))
        await asyncio.sleep(0.01)

    loop.run_until_complete(start())
    loop.close()  # the task is left pending, its operation in flight
    task = holder[0]
    task._log_destroy_pending = False  # it is left pending on purpose
    assert host.stats["ops_in_flight"] == 1
    host.abort()  # the plumbing's task.cancel finds a closed loop
    assert rec.reasons == [CancelReason.HOST_ABORT]
    assert error_hook.calls == []
    assert host.stats["callback_errors"] == 0
    assert not [r for r in caplog.records if r.name == "cancelcore"]
    # The coroutine can still be closed; the operation completes.
    task.get_coro().close()
    assert rec.n_free == 1
    assert host.stats["ops_in_flight"] == 0
    with pytest.raises(InvalidOperationError):
        ctxs[0].end()


def test_async_task_cancelled_by_user_ends_op(host: ServiceHost, channel: Any) -> None:
    rec = Recorder()

    async def fn(ctx: OperationContext) -> None:
        ctx.register_for_cancel(rec.on_cancel, rec.on_free)
        await asyncio.sleep(30)

    async def main() -> None:
        task = host.dispatch(channel, fn)
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert rec.n_cancel == 0 and rec.n_free == 1
    assert host.stats["ops_in_flight"] == 0
    assert channel.state is ChannelState.OPEN


def test_sync_and_async_share_a_host(host: ServiceHost, channel: Any) -> None:
    async def afn(ctx: OperationContext) -> str:
        return "async"

    async def main() -> Any:
        fut = host.dispatch(channel, lambda ctx: "sync")
        return await host.dispatch(channel, afn), await asyncio.wrap_future(fut)

    assert asyncio.run(main()) == ("async", "sync")
    assert cancelcore.current_operation() is None


# ------------------------------------------------------------ closing from asyncio


def test_aclose_waits_while_the_loop_runs_the_operations(host: ServiceHost, channel: Any) -> None:
    rec = Recorder()

    async def fn(ctx: OperationContext) -> str:
        ctx.register_for_cancel(rec.on_cancel, rec.on_free)
        await asyncio.sleep(0.1)
        return "done"

    async def main() -> Any:
        task = host.dispatch(channel, fn)
        await asyncio.sleep(0)
        graceful = await host.aclose()
        return graceful, task.done() and task.result()

    assert asyncio.run(main()) == (True, "done")
    assert host.state is HostState.CLOSED
    assert rec.n_cancel == 0 and rec.n_free == 1


def test_aclose_timeout_cancels_the_tasks(host: ServiceHost, channel: Any) -> None:
    async def fn(ctx: OperationContext) -> str:
        await asyncio.sleep(30)
        return "ran"

    async def main() -> Any:
        task = host.dispatch(channel, fn)
        await asyncio.sleep(0)
        graceful = await asyncio.wait_for(host.aclose(timeout=0.05), 10)
        return graceful, task.cancelled()

    assert asyncio.run(main()) == (False, True)
    assert host.state is HostState.CLOSED
    assert host.stats["ops_in_flight"] == 0


def test_blocking_close_on_the_loop_with_async_ops_is_refused(host: ServiceHost, channel: Any) -> None:
    async def fn(ctx: OperationContext) -> str:
        await asyncio.sleep(0.05)
        return "done"

    async def main() -> Any:
        task = host.dispatch(channel, fn)
        await asyncio.sleep(0)
        with pytest.raises(InvalidOperationError):
            host.close()  # would starve the loop the operation needs
        assert host.state is HostState.OPEN
        return await task

    assert asyncio.run(main()) == "done"
    assert host.close() is True


def test_async_with_host() -> None:
    async def fn(ctx: OperationContext) -> str:
        await asyncio.sleep(0.05)
        return "done"

    async def main() -> Any:
        async with ServiceHost() as host:
            assert host.state is HostState.OPEN
            task = host.dispatch(host.accept_channel(), fn)
        return host, task.result()

    host, result = asyncio.run(main())
    assert result == "done"
    assert host.state is HostState.CLOSED
