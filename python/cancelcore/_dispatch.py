"""The service model: running an operation's function for the caller.

The operation begins on the dispatching thread (so a faulted channel raises
there) and ends when the function returns or raises -- the completion of G4.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable, Optional

from ._operation import OperationContext, _current

if TYPE_CHECKING:
    from ._host import Channel


def is_async(fn: Callable[..., Any]) -> bool:
    while isinstance(fn, functools.partial):
        fn = fn.func
    return inspect.iscoroutinefunction(fn)


def _run(ctx: OperationContext, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    token = _current.set(ctx)
    try:
        return fn(ctx, *args)
    finally:
        _current.reset(token)
        ctx.end()


def run_sync(
    executor: ThreadPoolExecutor, channel: Channel, fn: Callable[..., Any], args: tuple[Any, ...],
    *, deadline: Optional[float] = None,
) -> Future[Any]:
    ctx = channel.begin_operation(deadline=deadline)
    try:
        future = executor.submit(_run, ctx, fn, args)
    except BaseException:
        ctx.end()  # never submitted: it completes here
        raise
    future.add_done_callback(functools.partial(_end_unstarted, ctx))
    return future


def _end_unstarted(ctx: OperationContext, _: object) -> None:
    # A future or task cancelled before fn started never reached its
    # `finally`: the operation completes with it.
    ctx.__exit__(None, None, None)


def _task_done(ctx: OperationContext, live: set[OperationContext], task: object) -> None:
    _end_unstarted(ctx, task)
    live.discard(ctx)


def run_async(
    channel: Channel, fn: Callable[..., Any], args: tuple[Any, ...], *, cancel_task: bool = True,
    deadline: Optional[float] = None,
) -> asyncio.Task[Any]:
    """``cancel_task=False``: the caller's ``fn`` interrupts itself (through
    ``ctx._add_hook``), as the ASGI adapter does with an anyio cancel scope."""
    loop = asyncio.get_running_loop()  # RuntimeError outside a loop
    ctx = channel.begin_operation(deadline=deadline)

    async def operation() -> Any:
        _current.set(ctx)  # the task runs in its own copy of the context
        try:
            return await fn(ctx, *args)
        finally:
            ctx.__exit__(None, None, None)  # unless its plumbing ended it

    task = loop.create_task(operation())
    live = channel._host._async_live
    live.add(ctx)
    task.add_done_callback(functools.partial(_task_done, ctx, live))
    if cancel_task:
        ctx._add_hook(functools.partial(_cancel_task, loop, task, ctx))
    return task


def _cancel_task(loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any], ctx: OperationContext) -> None:
    """Runs on whichever thread canceled the operation."""
    try:
        loop.call_soon_threadsafe(
            task.cancel, f"cancelcore: operation canceled ({ctx.cancel_reason!r})"
        )
    except RuntimeError:
        # The loop has closed: the task will never run again, so nothing
        # else will end its operation, and close() would wait for it
        # forever.  It completes here.
        live = ctx._host._async_live
        live.discard(ctx)
        if ctx._h:
            try:
                ctx.end()
            except Exception:  # ended meanwhile
                pass


def call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> None:
    """Schedules fn on the loop from any thread; nothing once it closed."""
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:
        pass  # the loop has closed: there is no task left to stop
