"""Deadlines (DESIGN section 4.4): ``ctx.deadline``, ``ctx.time_remaining()``
and the host's one timer, which cancels an operation still running at its
deadline with ``CHANNEL_FAULTED`` -- that operation alone."""

from __future__ import annotations

import asyncio
import gc
import math
import os
import threading
import time

import pytest

from cancelcore import CancelReason, InvalidOperationError, ServiceHost
from conftest import run_isolated


def _expired(host: ServiceHost, want: int) -> int:
    """host.stats["deadlines_expired"] once it reaches ``want`` (5 s at
    most): the timer thread counts an expiry when its cancel has returned,
    a moment after the operation's own code saw it."""
    for _ in range(500):
        if host.stats["deadlines_expired"] >= want:
            break
        time.sleep(0.01)
    return host.stats["deadlines_expired"]


def _threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name == "cancelcore-deadlines"]


def test_no_deadline_reads_none() -> None:
    with ServiceHost() as host, host.accept_channel() as ch:
        with ch.begin_operation() as ctx:
            assert ctx.deadline is None
            assert ctx.time_remaining() is None
        assert host.stats["deadlines_expired"] == 0


def test_deadline_and_time_remaining() -> None:
    with ServiceHost() as host, host.accept_channel() as ch:
        when = time.monotonic() + 30.0
        with ch.begin_operation(deadline=when) as ctx:
            assert ctx.deadline == when
            left = ctx.time_remaining()
            assert left is not None and 29.0 < left <= 30.0
        with pytest.raises(InvalidOperationError):
            ctx.deadline
        with pytest.raises(InvalidOperationError):
            ctx.time_remaining()


def test_expiry_cancels_with_channel_faulted_once() -> None:
    seen: list[tuple[CancelReason, str]] = []
    freed: list[str] = []
    with ServiceHost() as host:
        ch = host.accept_channel()
        t0 = time.monotonic()
        ctx = ch.begin_operation(deadline=t0 + 0.2)
        ctx.register_for_cancel(lambda r, s: seen.append((r, s)), freed.append, "op")
        while not ctx.canceled and time.monotonic() - t0 < 5:
            time.sleep(0.005)
        late = time.monotonic() - (t0 + 0.2)
        assert ctx.canceled and ctx.cancel_reason is CancelReason.CHANNEL_FAULTED
        assert ctx.time_remaining() == 0.0
        assert 0 <= late < 1.0
        time.sleep(0.05)
        assert seen == [(CancelReason.CHANNEL_FAULTED, "op")]
        ctx.end()
        assert freed == ["op"]
        st = host.stats
        assert _expired(host, 1) == 1
        assert st["cancels_channel_faulted"] == 1


def test_expiry_cancels_that_operation_alone() -> None:
    """Siblings on the same channel, with later or no deadlines, go on; the
    channel stays open and admits new operations."""
    with ServiceHost() as host, host.accept_channel() as ch:
        now = time.monotonic()
        soon = ch.begin_operation(deadline=now + 0.1)
        later = ch.begin_operation(deadline=now + 30)
        never = ch.begin_operation()
        for _ in range(1000):
            if soon.canceled:
                break
            time.sleep(0.005)
        assert soon.cancel_reason is CancelReason.CHANNEL_FAULTED
        assert not later.canceled and not never.canceled
        assert ch.state.name == "OPEN"
        ch.begin_operation().end()
        for ctx in (soon, later, never):
            ctx.end()
        assert _expired(host, 1) == 1 and host.stats["ops_canceled"] == 1


def test_past_deadline_cancels_at_once() -> None:
    with ServiceHost() as host, host.accept_channel() as ch:
        ctx = ch.begin_operation(deadline=time.monotonic() - 1.0)
        for _ in range(500):
            if ctx.canceled:
                break
            time.sleep(0.002)
        assert ctx.cancel_reason is CancelReason.CHANNEL_FAULTED
        assert ctx.time_remaining() == 0.0
        ctx.end()


def test_ended_before_deadline_cancels_nothing() -> None:
    with ServiceHost() as host:
        chans = [host.accept_channel() for _ in range(50)]
        soon = time.monotonic() + 0.1
        for ch in chans:
            with ch.begin_operation(deadline=soon) as ctx:
                ctx.register_for_cancel(lambda r, s: pytest.fail("canceled after its end"))
        time.sleep(0.3)
        st = host.stats
        assert st["deadlines_expired"] == 0 and st["ops_canceled"] == 0
        assert all(ch.state.name == "OPEN" for ch in chans)


def test_many_deadlines_one_thread_exact_counts() -> None:
    """200 operations on 4 threads, half ending in time: exactly the other
    half expire, each canceled once, all on the one timer thread."""
    n, threads = 200, 4
    canceled = [0] * n
    lock = threading.Lock()
    before = len(_threads())
    with ServiceHost() as host:
        def work(first: int) -> None:
            for i in range(first, n, threads):
                ch = host.accept_channel()
                quick = i % 2 == 0
                ctx = ch.begin_operation(deadline=time.monotonic() + (5.0 if quick else 0.05))

                def on_cancel(reason: CancelReason, idx: int) -> None:
                    with lock:
                        canceled[idx] += 1

                ctx.register_for_cancel(on_cancel, None, i)
                if not quick:
                    while not ctx.canceled:
                        time.sleep(0.002)
                ctx.end()

        workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
        for w in workers:
            w.start()
        assert len(_threads()) - before <= 1
        for w in workers:
            w.join(30)
        assert canceled == [0 if i % 2 == 0 else 1 for i in range(n)]
        assert _expired(host, n // 2) == n // 2


def test_heap_stays_proportional_to_live_operations() -> None:
    with ServiceHost() as host, host.accept_channel() as ch:
        far = time.monotonic() + 3600
        for _ in range(5000):
            ch.begin_operation(deadline=far).end()
        timer = host._timer
        assert timer is not None
        assert len(timer._heap) <= 1024
        live = [ch.begin_operation(deadline=far) for _ in range(3000)]
        for _ in range(20000):
            ch.begin_operation(deadline=far).end()
        assert 3000 <= len(timer._heap) <= 2 * 3000 + 1
        for ctx in live:
            ctx.end()


def test_dispatch_with_deadline_cancels_task_and_thread() -> None:
    with ServiceHost() as host:
        ch = host.accept_channel()

        def blocking(ctx: object) -> str:
            ev = threading.Event()
            ctx.register_for_cancel(lambda r, s: ev.set())  # type: ignore[attr-defined]
            assert ev.wait(5)
            return "canceled"

        fut = host.dispatch(ch, blocking, deadline=time.monotonic() + 0.1)
        assert fut.result(10) == "canceled"

        async def main() -> None:
            ch2 = host.accept_channel()

            async def sleeper(ctx: object) -> None:
                await asyncio.sleep(30)

            task = host.dispatch(ch2, sleeper, deadline=time.monotonic() + 0.1)
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, 10)

        asyncio.run(main())
        assert _expired(host, 2) == 2


@pytest.mark.parametrize("bad", ["1", b"x", [], True])
def test_deadline_wrong_type(bad: object) -> None:
    with ServiceHost() as host, host.accept_channel() as ch:
        with pytest.raises(TypeError):
            ch.begin_operation(deadline=bad)  # type: ignore[arg-type]
        assert host.stats["ops_begun"] == 0


def test_deadline_nan_and_inf() -> None:
    with ServiceHost() as host, host.accept_channel() as ch:
        with pytest.raises(ValueError):
            ch.begin_operation(deadline=math.nan)
        assert host.stats["ops_begun"] == 0
        with ch.begin_operation(deadline=math.inf) as ctx:
            assert ctx.deadline is None
        with ch.begin_operation(deadline=10**400) as ctx:
            assert ctx.deadline is None


def test_deadline_close_while_pending() -> None:
    """A host closed with deadlines still filed: nothing fires after."""
    host = ServiceHost()
    host.open()
    ch = host.accept_channel()
    ctx = ch.begin_operation(deadline=time.monotonic() + 0.2)
    ctx.end()
    assert host.close() is True
    time.sleep(0.3)
    assert host.stats["ops_canceled"] == 0
    del host, ch, ctx
    gc.collect()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_deadline_in_forked_child() -> None:
    """The child's hosts get deadlines of their own; the parent's pending
    ones never fire there."""
    code = """
import os, time
from cancelcore import ServiceHost, CancelReason
parent = ServiceHost(); parent.open()
pch = parent.accept_channel()
pctx = parent_ctx = pch.begin_operation(deadline=time.monotonic() + 0.3)
pctx.register_for_cancel(lambda r, s: print("PARENT-CANCEL", os.getpid() == s, flush=True), None, os.getpid())
pid = os.fork()
if pid == 0:
    h = ServiceHost(); h.open()
    ctx = h.accept_channel().begin_operation(deadline=time.monotonic() + 0.1)
    t0 = time.monotonic()
    while not ctx.canceled and time.monotonic() - t0 < 5:
        time.sleep(0.01)
    print("CHILD", ctx.cancel_reason.name, flush=True)
    ctx.end()
    time.sleep(0.5)
    os._exit(0)
os.waitpid(pid, 0)
time.sleep(0.2)
pctx.end()
"""
    out = run_isolated(code)
    lines = out.stdout.split()
    assert "CHILD" in out.stdout and "CHANNEL_FAULTED" in out.stdout, out
    assert out.stdout.count("PARENT-CANCEL") == 1 and "PARENT-CANCEL True" in out.stdout, out
