"""The guarantees G1-G13 of DESIGN.md, each through the Python API."""

from __future__ import annotations

import enum
import logging
import sys
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
    ServiceHost,
)
from conftest import Recorder, run_isolated

MAIN = threading.get_ident


def wait_for(pred: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def registered(channel: cancelcore.Channel, state: Any = None, **kw: Any) -> tuple[Any, Recorder]:
    rec = Recorder(**kw)
    ctx = channel.begin_operation()
    ctx.register_for_cancel(rec.on_cancel, rec.on_free, state)
    return ctx, rec


# ---------------------------------------------------------------- G1


class TestG1AtMostOnce:
    def test_abort_fault_abort_fires_once(self, host: ServiceHost, channel: Any) -> None:
        ctx, rec = registered(channel, "st")
        host.abort()
        channel.fault()
        host.abort()
        assert rec.n_cancel == 1
        assert rec.cancels[0][:2] == (CancelReason.HOST_ABORT, "st")
        ctx.end()
        assert rec.n_cancel == 1
        assert rec.n_free == 1

    def test_fault_fault_abort_fires_once(self, host: ServiceHost, channel: Any) -> None:
        ctx, rec = registered(channel)
        channel.fault()
        channel.fault()
        host.abort()
        ctx.end()
        assert rec.reasons == [CancelReason.CHANNEL_FAULTED]
        assert rec.n_free == 1

    def test_concurrent_triggers_fire_once(self, make_host: Any) -> None:
        # Abort and fault from several threads at once, many times.
        for _ in range(50):
            host = make_host()
            ch = host.accept_channel()
            ctx, rec = registered(ch)
            barrier = threading.Barrier(4)

            def trigger(kind: int) -> None:
                barrier.wait()
                (host.abort if kind % 2 else ch.fault)()

            threads = [threading.Thread(target=trigger, args=(i,)) for i in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            ctx.end()
            assert rec.n_cancel == 1
            assert rec.n_free == 1
            host.close()


# ---------------------------------------------------------------- G2


class TestG2FirstRegistrationWins:
    def test_second_registration_raises_and_first_stays(self, host: ServiceHost, channel: Any) -> None:
        ctx = channel.begin_operation()
        first, second = Recorder(), Recorder()
        ctx.register_for_cancel(first.on_cancel, first.on_free, "first")
        with pytest.raises(InvalidOperationError):
            ctx.register_for_cancel(second.on_cancel, second.on_free, "second")
        host.abort()
        ctx.end()
        assert [c[:2] for c in first.cancels] == [(CancelReason.HOST_ABORT, "first")]
        assert first.frees == [("first", MAIN())]
        assert second.n_cancel == 0
        assert second.n_free == 0

    def test_second_registration_on_canceled_op_runs_nothing(self, host: ServiceHost, channel: Any) -> None:
        ctx = channel.begin_operation()
        first, second = Recorder(), Recorder()
        ctx.register_for_cancel(first.on_cancel, first.on_free)
        channel.fault()
        with pytest.raises(InvalidOperationError):
            ctx.register_for_cancel(second.on_cancel, second.on_free)
        ctx.end()
        assert first.n_cancel == 1 and first.n_free == 1
        assert second.n_cancel == 0 and second.n_free == 0

    def test_second_registration_without_free_state_also_fails(self, channel: Any) -> None:
        ctx = channel.begin_operation()
        ctx.register_for_cancel(lambda r, s: None)
        with pytest.raises(InvalidOperationError):
            ctx.register_for_cancel(lambda r, s: None)
        ctx.end()

    def test_invalid_operation_error_is_a_cancelcore_error(self) -> None:
        assert issubclass(InvalidOperationError, cancelcore.CancelCoreError)
        assert issubclass(ObjectFaultedError, cancelcore.CancelCoreError)
        assert issubclass(cancelcore.OperationAbortedError, cancelcore.CancelCoreError)


# ---------------------------------------------------------------- G3


class TestG3RegisterOnCanceled:
    def test_runs_synchronously_with_original_reason(self, host: ServiceHost, channel: Any) -> None:
        ctx = channel.begin_operation()
        channel.fault()
        host.abort()  # a later trigger: not the reason
        rec = Recorder()
        assert ctx.register_for_cancel(rec.on_cancel, rec.on_free, "s") is None
        # It ran inside the call, before it returned, on this thread.
        assert rec.cancels == [(CancelReason.CHANNEL_FAULTED, "s", MAIN())]
        assert rec.n_free == 0
        ctx.end()
        assert rec.n_cancel == 1
        assert rec.frees == [("s", MAIN())]

    def test_runs_on_the_registering_thread(self, host: ServiceHost, channel: Any) -> None:
        ctx = channel.begin_operation()
        host.abort()
        rec = Recorder()
        idents: list[int] = []

        def register() -> None:
            idents.append(threading.get_ident())
            ctx.register_for_cancel(rec.on_cancel, rec.on_free)
            idents.append(rec.n_cancel)

        t = threading.Thread(target=register)
        t.start()
        t.join()
        assert idents[1] == 1  # already ran when register returned
        assert rec.cancels == [(CancelReason.HOST_ABORT, None, idents[0])]
        assert idents[0] != MAIN()
        ctx.end()
        assert rec.n_cancel == 1 and rec.n_free == 1

    def test_host_abort_reason_kept(self, host: ServiceHost, channel: Any) -> None:
        ctx = channel.begin_operation()
        host.abort()
        channel.fault()
        rec = Recorder()
        ctx.register_for_cancel(rec.on_cancel)
        assert rec.reasons == [CancelReason.HOST_ABORT]
        ctx.end()


# ---------------------------------------------------------------- G4


class TestG4FreeStateExactlyOnce:
    def test_not_canceled(self, host: ServiceHost, channel: Any) -> None:
        ctx, rec = registered(channel, "state")
        assert rec.n_free == 0
        ctx.end()
        assert rec.frees == [("state", MAIN())]
        assert rec.n_cancel == 0
        with pytest.raises(InvalidOperationError):
            ctx.end()
        host.abort()
        assert rec.n_free == 1 and rec.n_cancel == 0

    def test_canceled(self, host: ServiceHost, channel: Any) -> None:
        ctx, rec = registered(channel)
        host.abort()
        assert rec.n_free == 0  # not at cancel: at completion
        ctx.end()
        assert rec.n_free == 1
        assert rec.events == ["cancel-start", "cancel-end", "free"]

    def test_never_after_failed_registration(self, host: ServiceHost, channel: Any) -> None:
        ctx, rec = registered(channel)
        failed = Recorder()
        with pytest.raises(InvalidOperationError):
            ctx.register_for_cancel(failed.on_cancel, failed.on_free)
        ctx.end()
        with pytest.raises(InvalidOperationError):
            ctx.register_for_cancel(failed.on_cancel, failed.on_free)
        host.abort()
        assert rec.n_free == 1
        assert failed.n_free == 0 and failed.n_cancel == 0

    def test_no_free_state_given(self, host: ServiceHost, channel: Any) -> None:
        ctx = channel.begin_operation()
        rec = Recorder()
        ctx.register_for_cancel(rec.on_cancel)
        host.abort()
        ctx.end()
        assert rec.n_cancel == 1
        assert host.stats["free_states_run"] == 0

    def test_runs_on_the_ending_thread(self, channel: Any) -> None:
        ctx, rec = registered(channel)
        t = threading.Thread(target=ctx.end)
        t.start()
        t.join()
        assert rec.n_free == 1
        assert rec.frees[0][1] == t.ident


# ---------------------------------------------------------------- G5


class TestG5CancelHappensBeforeFree:
    def test_end_waits_for_cancel_running_on_another_thread(self, host: ServiceHost, channel: Any) -> None:
        release = threading.Event()
        rec = Recorder(inside_cancel=lambda r, s: release.wait(10))
        ctx = channel.begin_operation()
        ctx.register_for_cancel(rec.on_cancel, rec.on_free)
        aborter = threading.Thread(target=host.abort)
        aborter.start()
        assert rec.cancel_started.wait(10)
        ended = threading.Event()

        def end() -> None:
            ctx.end()
            ended.set()

        ender = threading.Thread(target=end)
        ender.start()
        # The end must wait for the running cancel callback.
        assert not ended.wait(0.3)
        assert rec.n_free == 0
        release.set()
        assert ended.wait(10)
        ender.join()
        aborter.join()
        assert not rec.overlap
        assert rec.events == ["cancel-start", "cancel-end", "free"]
        assert rec.n_cancel == 1 and rec.n_free == 1

    def test_end_waits_for_cancel_running_inside_register(self, host: ServiceHost, channel: Any) -> None:
        # G3's synchronous run is a running cancel too: an end on another
        # thread waits for it.
        release = threading.Event()
        rec = Recorder(inside_cancel=lambda r, s: release.wait(10))
        ctx = channel.begin_operation()
        host.abort()
        registrar = threading.Thread(target=ctx.register_for_cancel, args=(rec.on_cancel, rec.on_free))
        registrar.start()
        assert rec.cancel_started.wait(10)
        ended = threading.Event()

        def end() -> None:
            ctx.end()
            ended.set()

        ender = threading.Thread(target=end)
        ender.start()
        assert not ended.wait(0.3)
        release.set()
        assert ended.wait(10)
        ender.join()
        registrar.join()
        assert not rec.overlap
        assert rec.events == ["cancel-start", "cancel-end", "free"]

    def test_end_inside_own_cancel_callback(self, host: ServiceHost, channel: Any) -> None:
        ctx = channel.begin_operation()
        inside: list[Any] = []

        def inside_cancel(reason: CancelReason, state: Any) -> None:
            ctx.end()  # must not deadlock
            inside.append(rec.n_free)  # free-state has not run yet

        rec = Recorder(inside_cancel=inside_cancel)
        ctx.register_for_cancel(rec.on_cancel, rec.on_free)
        host.abort()
        assert inside == [0]
        assert rec.events == ["cancel-start", "cancel-end", "free"]
        assert rec.n_free == 1
        with pytest.raises(InvalidOperationError):
            ctx.end()
        assert host.stats["ops_in_flight"] == 0

    def test_end_inside_own_cancel_callback_from_fault_on_other_thread(self, host: ServiceHost, channel: Any) -> None:
        ctx = channel.begin_operation()
        inside: list[Any] = []

        def inside_cancel(reason: CancelReason, state: Any) -> None:
            ctx.end()
            inside.append(rec.n_free)

        rec = Recorder(inside_cancel=inside_cancel)
        ctx.register_for_cancel(rec.on_cancel, rec.on_free)
        t = threading.Thread(target=channel.fault)
        t.start()
        t.join(10)
        assert not t.is_alive()
        assert inside == [0]
        assert rec.events == ["cancel-start", "cancel-end", "free"]
        assert rec.frees[0][1] == t.ident  # free-state after the callback, same thread
        assert host.stats["ops_in_flight"] == 0

    def test_end_inside_own_cancel_callback_run_by_register(self, host: ServiceHost, channel: Any) -> None:
        ctx = channel.begin_operation()
        channel.fault()
        inside: list[Any] = []

        def inside_cancel(reason: CancelReason, state: Any) -> None:
            ctx.end()
            inside.append(rec.n_free)

        rec = Recorder(inside_cancel=inside_cancel)
        ctx.register_for_cancel(rec.on_cancel, rec.on_free)
        assert inside == [0]
        assert rec.events == ["cancel-start", "cancel-end", "free"]
        assert host.stats["ops_in_flight"] == 0

    def test_no_cancel_after_end(self, host: ServiceHost, channel: Any) -> None:
        ctx, rec = registered(channel)
        ctx.end()
        channel.fault()
        host.abort()
        assert rec.n_cancel == 0
        assert rec.n_free == 1
        st = host.stats
        assert st["ops_canceled"] == 0
        assert st["cancels_host_abort"] == 0 and st["cancels_channel_faulted"] == 0

    def test_end_overtaking_a_pending_cancel(self, host: ServiceHost, channel: Any) -> None:
        # Schedule: the abort (thread A) has made the registered operation
        # observably canceled, but its cancel callback has not started; thread
        # B sees ctx.canceled and ends the operation.  The end neither
        # deadlocks nor lets the callback overlap or follow free-state: the
        # callback runs before free-state or not at all ("no cancel starts
        # after completion began", G5; cancelcore.h: a queued callback that an
        # end overtakes is dropped).  A tracer on thread A pauses it at the
        # first line it runs after the operation became canceled.
        ctx = channel.begin_operation()
        rec = Recorder()
        ctx.register_for_cancel(rec.on_cancel, rec.on_free)
        paused, resume = threading.Event(), threading.Event()

        def tracer(frame: Any, event: str, arg: Any) -> Any:
            if event == "line" and not paused.is_set() and ctx.__class__.__name__ != "_EndedOperationContext":
                if ctx.canceled and rec.n_cancel == 0:
                    paused.set()
                    resume.wait(0.5)
            return tracer

        def abort() -> None:
            sys.settrace(tracer)
            try:
                host.abort()
            finally:
                sys.settrace(None)

        seen: list[bool] = []

        def end() -> None:
            seen.append(ctx.canceled)
            ctx.end()

        a = threading.Thread(target=abort)
        a.start()
        assert paused.wait(10), "the abort never made the operation canceled"
        b = threading.Thread(target=end)
        b.start()
        time.sleep(0.2)  # let B get as far as it can
        resume.set()
        a.join(10)
        b.join(10)
        assert not a.is_alive() and not b.is_alive()
        assert seen == [True]
        assert rec.n_free == 1
        assert rec.n_cancel <= 1
        assert rec.events in (["free"], ["cancel-start", "cancel-end", "free"])
        assert not rec.overlap and not rec.cancel_after_free
        assert host.stats["ops_in_flight"] == 0

    def test_free_state_never_overlaps_cancel_racing(self, make_host: Any) -> None:
        # End and abort race on two threads; whatever the order, the cancel
        # callback never overlaps free-state and never follows it.
        for i in range(100):
            host = make_host()
            ch = host.accept_channel()
            rec = Recorder(inside_cancel=lambda r, s: time.sleep(0.0005 * (i % 3)))
            ctx = ch.begin_operation()
            ctx.register_for_cancel(rec.on_cancel, rec.on_free)
            barrier = threading.Barrier(2)

            def end() -> None:
                barrier.wait()
                ctx.end()

            def abort() -> None:
                barrier.wait()
                host.abort()

            threads = [threading.Thread(target=end), threading.Thread(target=abort)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert rec.n_cancel <= 1
            assert rec.n_free == 1
            assert not rec.overlap
            assert not rec.cancel_after_free
            assert rec.events[-1] == "free"
            host.close()


# ---------------------------------------------------------------- G6


class TestG6Reasons:
    def test_values(self) -> None:
        assert issubclass(CancelReason, enum.IntEnum)
        assert CancelReason.HOST_ABORT == 0
        assert CancelReason.CHANNEL_FAULTED == 1
        assert [m.name for m in CancelReason] == ["HOST_ABORT", "CHANNEL_FAULTED"]

    def test_not_canceled(self, channel: Any) -> None:
        ctx = channel.begin_operation()
        assert ctx.canceled is False
        assert ctx.cancel_reason is None
        ctx.end()

    def test_first_trigger_decides_fault_first(self, host: ServiceHost, channel: Any) -> None:
        ctx, rec = registered(channel)
        channel.fault()
        host.abort()
        assert ctx.canceled is True
        assert ctx.cancel_reason is CancelReason.CHANNEL_FAULTED
        assert rec.reasons == [CancelReason.CHANNEL_FAULTED]
        assert isinstance(rec.reasons[0], CancelReason)
        ctx.end()

    def test_first_trigger_decides_abort_first(self, host: ServiceHost, channel: Any) -> None:
        ctx, rec = registered(channel)
        host.abort()
        channel.fault()
        assert ctx.cancel_reason is CancelReason.HOST_ABORT
        assert rec.reasons == [CancelReason.HOST_ABORT]
        ctx.end()

    def test_reason_set_before_callback_runs(self, host: ServiceHost, channel: Any) -> None:
        ctx = channel.begin_operation()
        seen: list[Any] = []
        ctx.register_for_cancel(lambda r, s: seen.append((ctx.canceled, ctx.cancel_reason, r)))
        channel.fault()
        assert seen == [(True, CancelReason.CHANNEL_FAULTED, CancelReason.CHANNEL_FAULTED)]
        ctx.end()

    def test_unregistered_op_is_marked(self, host: ServiceHost, channel: Any) -> None:
        ctx = channel.begin_operation()
        host.abort()
        assert ctx.canceled is True
        assert ctx.cancel_reason is CancelReason.HOST_ABORT
        ctx.end()


# ---------------------------------------------------------------- G7


class TestG7Abort:
    def test_cancels_every_op_across_channels_and_does_not_wait(self, host: ServiceHost) -> None:
        channels = [host.accept_channel() for _ in range(3)]
        ops = [registered(ch, (i, j)) for i, ch in enumerate(channels) for j in range(2)]
        closed = host.accept_channel()
        ops.append(registered(closed, "closed-channel"))
        closed.close()  # its operation goes on and is still reached by abort
        unregistered = channels[0].begin_operation()
        host.abort()
        # Every callback ran on this thread before abort returned...
        for ctx, rec in ops:
            assert len(rec.cancels) == 1
            reason, state, thread = rec.cancels[0]
            assert reason is CancelReason.HOST_ABORT
            assert thread == MAIN()
            assert ctx.canceled and ctx.cancel_reason is CancelReason.HOST_ABORT
            assert rec.n_free == 0
        assert unregistered.cancel_reason is CancelReason.HOST_ABORT
        # ...and abort did not wait for the operations to end.
        assert host.state is HostState.FAULTED
        assert host.stats["ops_in_flight"] == len(ops) + 1
        host.abort()  # idempotent
        assert host.state is HostState.FAULTED
        assert all(rec.n_cancel == 1 for _, rec in ops)
        with pytest.raises(ObjectFaultedError):
            host.accept_channel()
        with pytest.raises(ObjectFaultedError):
            channels[1].begin_operation()
        for ctx, rec in ops:
            ctx.end()
            assert rec.n_free == 1
        unregistered.end()
        st = host.stats
        assert st["ops_in_flight"] == 0
        assert st["ops_canceled"] == len(ops) + 1
        assert st["cancels_host_abort"] == len(ops) + 1
        assert st["cancel_callbacks_run"] == len(ops)
        assert host.close() is True
        assert host.state is HostState.CLOSED

    def test_abort_does_not_wait_for_a_blocked_operation(self, host: ServiceHost, channel: Any) -> None:
        # An operation whose owner is busy elsewhere does not hold abort up.
        ctx = channel.begin_operation()
        started, release = threading.Event(), threading.Event()

        def owner() -> None:
            started.set()
            release.wait(10)
            ctx.end()

        t = threading.Thread(target=owner)
        t.start()
        started.wait(10)
        t0 = time.monotonic()
        host.abort()
        assert time.monotonic() - t0 < 1.0
        assert ctx.canceled
        release.set()
        t.join()

    def test_abort_accepted_in_every_state(self, make_host: Any) -> None:
        h = make_host(open=False)
        h.abort()
        assert h.state is HostState.CREATED
        h.open()
        h.close()
        h.abort()
        assert h.state is HostState.CLOSED
        h.reset()
        h.abort()
        assert h.state is HostState.CREATED


# ---------------------------------------------------------------- G8


class TestG8Close:
    def test_close_waits_and_fires_no_cancel(self, host: ServiceHost, channel: Any) -> None:
        ctx, rec = registered(channel)
        result: list[bool] = []
        closer = threading.Thread(target=lambda: result.append(host.close()))
        closer.start()
        assert wait_for(lambda: host.state is HostState.CLOSING)
        time.sleep(0.1)
        assert closer.is_alive()  # waiting for the operation
        assert rec.n_cancel == 0 and not ctx.canceled
        with pytest.raises(InvalidOperationError):
            host.accept_channel()  # close stops new channels
        with pytest.raises(InvalidOperationError):
            channel.begin_operation()
        ctx.end()
        closer.join(10)
        assert result == [True]
        assert host.state is HostState.CLOSED
        assert rec.n_cancel == 0 and rec.n_free == 1
        assert channel.state is ChannelState.CLOSED
        with pytest.raises(InvalidOperationError):
            channel.begin_operation()

    def test_close_returns_true_when_all_end_in_time(self, make_host: Any) -> None:
        host = make_host(close_timeout=5.0)
        ch = host.accept_channel()
        ctx, rec = registered(ch)
        timer = threading.Timer(0.2, ctx.end)
        timer.start()
        t0 = time.monotonic()
        assert host.close() is True
        assert 0.15 <= time.monotonic() - t0 < 4.0
        timer.join()  # (whether close also waits for free-state: below)
        assert rec.n_cancel == 0 and rec.n_free == 1

    def test_close_waits_for_free_state(self, host: ServiceHost, channel: Any) -> None:
        # Close waits for the operations in flight to complete, and an
        # operation's completion includes its free-state callback (G4;
        # cancelcore.h: close waits "for the operations in flight to end,
        # free-state callbacks included").  When close returns, every
        # free-state has run.
        ctx = channel.begin_operation()
        freed = threading.Event()

        def on_free(state: Any) -> None:
            time.sleep(0.3)
            freed.set()

        ctx.register_for_cancel(lambda r, s: None, on_free)
        ender = threading.Thread(target=ctx.end)
        ender.start()
        assert host.close() is True
        done_at_close = freed.is_set()
        ender.join()
        assert done_at_close, "close() returned while a free-state callback was still running"
        assert host.stats["free_states_run"] == 1

    def test_close_with_nothing_in_flight(self, host: ServiceHost) -> None:
        host.accept_channel()
        assert host.close() is True
        assert host.state is HostState.CLOSED

    def test_faulted_host_closes(self, host: ServiceHost) -> None:
        host.abort()
        assert host.close() is True
        assert host.state is HostState.CLOSED

    def test_timeout_escalates_to_abort(self, make_host: Any) -> None:
        host = make_host(close_timeout=0.2)
        assert host.close_timeout == 0.2
        ch = host.accept_channel()
        ctx = ch.begin_operation()
        rec = Recorder()
        ctx.register_for_cancel(rec.on_cancel, rec.on_free)
        worker = threading.Thread(target=lambda: (rec.cancel_done.wait(10), ctx.end()))
        worker.start()
        t0 = time.monotonic()
        assert host.close() is False
        elapsed = time.monotonic() - t0
        worker.join()
        assert 0.15 <= elapsed < 5.0
        assert rec.reasons == [CancelReason.HOST_ABORT]
        assert rec.n_free == 1
        assert host.state is HostState.CLOSED
        assert host.stats["ops_in_flight"] == 0

    def test_close_waits_on_after_escalating(self, make_host: Any) -> None:
        # After the abort, close goes on waiting for completion.
        host = make_host(close_timeout=0.05)
        ch = host.accept_channel()
        ctx, rec = registered(ch)
        done: list[bool] = []
        closer = threading.Thread(target=lambda: done.append(host.close()))
        closer.start()
        assert rec.cancel_done.wait(10)
        time.sleep(0.2)
        assert closer.is_alive() and done == []
        assert host.state is HostState.CLOSING
        ctx.end()
        closer.join(10)
        assert done == [False]
        assert host.state is HostState.CLOSED

    def test_timeout_argument_overrides_host_timeout(self, make_host: Any) -> None:
        host = make_host(close_timeout=30.0)
        ch = host.accept_channel()
        ctx, rec = registered(ch, inside_cancel=None)
        threading.Thread(target=lambda: (rec.cancel_done.wait(10), ctx.end())).start()
        t0 = time.monotonic()
        assert host.close(timeout=0.1) is False
        assert time.monotonic() - t0 < 5.0
        assert rec.reasons == [CancelReason.HOST_ABORT]
        assert host.close_timeout == 30.0  # only for that call

    def test_longer_timeout_argument_overrides_zero_host_timeout(self, make_host: Any) -> None:
        host = make_host(close_timeout=0.0)
        ch = host.accept_channel()
        ctx, rec = registered(ch)
        timer = threading.Timer(0.2, ctx.end)
        timer.start()
        assert host.close(timeout=10.0) is True
        timer.join()
        assert rec.n_cancel == 0 and rec.n_free == 1

    def test_close_timeout_setter(self, make_host: Any) -> None:
        host = make_host(close_timeout=30.0)
        host.close_timeout = 0.05
        ch = host.accept_channel()
        ctx, rec = registered(ch)
        threading.Thread(target=lambda: (rec.cancel_done.wait(10), ctx.end())).start()
        t0 = time.monotonic()
        assert host.close() is False
        assert time.monotonic() - t0 < 5.0

    def test_abort_during_close_returns_false(self, host: ServiceHost, channel: Any) -> None:
        ctx, rec = registered(channel)
        done: list[bool] = []
        closer = threading.Thread(target=lambda: done.append(host.close()))
        closer.start()
        assert wait_for(lambda: host.state is HostState.CLOSING)
        host.abort()
        assert host.state is HostState.CLOSING  # finishes as CLOSED
        assert rec.reasons == [CancelReason.HOST_ABORT]
        ctx.end()
        closer.join(10)
        assert done == [False]
        assert host.state is HostState.CLOSED

    def test_default_close_timeout(self) -> None:
        assert ServiceHost().close_timeout == 5.0


# ---------------------------------------------------------------- G9


class TestG9ChannelFault:
    def test_fault_cancels_only_that_channel(self, host: ServiceHost) -> None:
        a, b = host.accept_channel(), host.accept_channel()
        ops_a = [registered(a, "a") for _ in range(3)]
        ops_b = [registered(b, "b") for _ in range(3)]
        a.fault()
        assert host.state is HostState.OPEN
        assert a.state is ChannelState.FAULTED
        assert b.state is ChannelState.OPEN
        for ctx, rec in ops_a:
            assert rec.cancels == [(CancelReason.CHANNEL_FAULTED, "a", MAIN())]
            assert ctx.cancel_reason is CancelReason.CHANNEL_FAULTED
        for ctx, rec in ops_b:
            assert rec.n_cancel == 0 and not ctx.canceled
        with pytest.raises(ObjectFaultedError):
            a.begin_operation()
        a.fault()  # idempotent
        assert all(rec.n_cancel == 1 for _, rec in ops_a)
        extra = b.begin_operation()  # the other channel goes on
        c = host.accept_channel()  # and the host accepts channels
        c.begin_operation().end()
        extra.end()
        for ctx, rec in ops_a + ops_b:
            ctx.end()
            assert rec.n_free == 1
        st = host.stats
        assert st["cancels_channel_faulted"] == 3
        assert st["cancels_host_abort"] == 0


# ---------------------------------------------------------------- G10


class TestG10EndedContext:
    @pytest.mark.parametrize("canceled", [False, True])
    def test_every_use_after_end_raises(self, host: ServiceHost, channel: Any, canceled: bool) -> None:
        ctx, rec = registered(channel)
        if canceled:
            host.abort()
        ctx.end()
        with pytest.raises(InvalidOperationError):
            ctx.register_for_cancel(lambda r, s: None)
        with pytest.raises(InvalidOperationError):
            ctx.end()
        with pytest.raises(InvalidOperationError):
            ctx.canceled
        with pytest.raises(InvalidOperationError):
            ctx.cancel_reason
        assert rec.n_free == 1

    def test_unregistered_end_twice(self, channel: Any) -> None:
        ctx = channel.begin_operation()
        ctx.end()
        with pytest.raises(InvalidOperationError):
            ctx.end()

    def test_ended_context_stays_invalid_when_slot_is_reused(self, channel: Any) -> None:
        old = channel.begin_operation()
        old.end()
        fresh = [channel.begin_operation() for _ in range(10)]
        with pytest.raises(InvalidOperationError):
            old.end()
        with pytest.raises(InvalidOperationError):
            old.canceled
        for ctx in fresh:
            assert ctx.canceled is False
            ctx.end()

    def test_with_block_after_manual_end(self, channel: Any) -> None:
        with channel.begin_operation() as ctx:
            ctx.end()
        with pytest.raises(InvalidOperationError):
            ctx.end()


# ---------------------------------------------------------------- G11


class TestG11Reentrancy:
    def test_cancel_callback_faults_another_channel(self, host: ServiceHost) -> None:
        a, b = host.accept_channel(), host.accept_channel()
        ctx_b, rec_b = registered(b)
        ctx_a, rec_a = registered(a, inside_cancel=lambda r, s: b.fault())
        a.fault()
        assert rec_a.reasons == [CancelReason.CHANNEL_FAULTED]
        assert rec_b.reasons == [CancelReason.CHANNEL_FAULTED]
        assert b.state is ChannelState.FAULTED
        ctx_a.end()
        ctx_b.end()

    def test_cancel_callback_aborts_host(self, host: ServiceHost) -> None:
        a, b = host.accept_channel(), host.accept_channel()
        ctx_b, rec_b = registered(b)
        ctx_a, rec_a = registered(a, inside_cancel=lambda r, s: host.abort())
        a.fault()
        assert host.state is HostState.FAULTED
        assert rec_a.reasons == [CancelReason.CHANNEL_FAULTED]
        assert rec_b.reasons == [CancelReason.HOST_ABORT]
        ctx_a.end()
        ctx_b.end()

    def test_cancel_callback_aborts_host_during_abort(self, host: ServiceHost, channel: Any) -> None:
        ops = [registered(channel, inside_cancel=lambda r, s: host.abort()) for _ in range(3)]
        host.abort()
        for ctx, rec in ops:
            assert rec.reasons == [CancelReason.HOST_ABORT]
            ctx.end()

    def test_cancel_callback_begins_registers_and_ends_other_ops(self, host: ServiceHost) -> None:
        a, b = host.accept_channel(), host.accept_channel()
        inner: list[Any] = []

        def inside(reason: CancelReason, state: Any) -> None:
            other = b.begin_operation()
            r = Recorder()
            other.register_for_cancel(r.on_cancel, r.on_free)
            inner.append((other, r))
            other.end()
            inner.append(r.n_free)

        ctx, rec = registered(a, inside_cancel=inside)
        a.fault()
        assert inner[1] == 1
        assert inner[0][1].n_cancel == 0
        ctx.end()
        assert rec.n_free == 1

    def test_cancel_callback_registers_on_a_canceled_op(self, host: ServiceHost, channel: Any) -> None:
        target = channel.begin_operation()
        nested = Recorder()
        ctx, rec = registered(channel, inside_cancel=lambda r, s: target.register_for_cancel(nested.on_cancel, nested.on_free))
        host.abort()
        assert nested.reasons == [CancelReason.HOST_ABORT]
        assert rec.reasons == [CancelReason.HOST_ABORT]
        target.end()
        ctx.end()
        assert nested.n_free == 1 and rec.n_free == 1

    def test_cancel_callback_ends_other_op_of_same_abort(self) -> None:
        # A cancel callback ends a sibling operation that the same abort has
        # yet to reach.  G11: no deadlock; G1/G4/G5 hold for every op.  Run in
        # a child interpreter so a deadlock fails this test only.
        proc = run_isolated(
            """
            import threading, cancelcore
            host = cancelcore.ServiceHost(); host.open()
            ch = host.accept_channel()
            ctxs, cancels, frees = [], [0] * 4, [0] * 4
            def on_cancel(reason, i):
                cancels[i] += 1
                for c in ctxs:
                    try:
                        c.end()
                    except cancelcore.InvalidOperationError:
                        pass
            def on_free(i):
                frees[i] += 1
            for i in range(4):
                ctx = ch.begin_operation()
                ctx.register_for_cancel(on_cancel, on_free, i)
                ctxs.append(ctx)
            t = threading.Thread(target=host.abort, daemon=True)
            t.start(); t.join(5)
            if t.is_alive():
                print("DEADLOCK", cancels, frees, flush=True)
                import os; os._exit(3)
            print("OK", sum(cancels) >= 1 and max(cancels) <= 1, frees,
                  host.stats["ops_in_flight"], flush=True)
            """
        )
        assert proc.stdout.strip() == "OK True [1, 1, 1, 1] 0", (proc.returncode, proc.stdout, proc.stderr)

    def test_cancel_callback_ends_an_op_it_already_canceled(self) -> None:
        # The callback of the *last* operation an abort reaches ends all the
        # others (already past their callbacks): no deadlock, G4 holds.
        # (No fixture host: after a deadlock its teardown would hang too.)
        host = ServiceHost()
        host.open()
        channel = host.accept_channel()
        ctxs: list[Any] = []
        recs: list[Recorder] = []

        def end_all(reason: CancelReason, state: Any) -> None:
            if state != 3:
                return
            for c in ctxs:
                try:
                    c.end()
                except InvalidOperationError:
                    pass

        for i in range(4):
            ctx = channel.begin_operation()
            rec = Recorder(inside_cancel=end_all)
            ctx.register_for_cancel(rec.on_cancel, rec.on_free, i)
            ctxs.append(ctx)
            recs.append(rec)
        # Run the abort on a helper thread so that a deadlock (as in the test
        # above, which an abort visiting op 3 first would also be) fails here
        # instead of hanging the session.
        t = threading.Thread(target=host.abort, daemon=True)
        t.start()
        t.join(5)
        if t.is_alive():
            pytest.fail("abort deadlocked in a callback ending sibling operations")
        assert all(r.n_cancel <= 1 for r in recs)
        assert recs[3].n_cancel == 1
        assert all(r.n_free == 1 for r in recs)
        assert all(not r.overlap and not r.cancel_after_free for r in recs)
        assert host.stats["ops_in_flight"] == 0
        assert host.close() is True

    def test_free_state_callback_calls_back(self, host: ServiceHost) -> None:
        a, b = host.accept_channel(), host.accept_channel()
        victim, vrec = registered(b)
        log: list[Any] = []

        def on_free(state: Any) -> None:
            nxt = a.begin_operation()
            nxt.end()
            b.fault()
            log.append("freed")

        ctx = a.begin_operation()
        ctx.register_for_cancel(lambda r, s: None, on_free)
        ctx.end()
        assert log == ["freed"]
        assert vrec.reasons == [CancelReason.CHANNEL_FAULTED]
        victim.end()

    def test_close_inside_cancel_callback_of_abort_is_refused(self, make_host: Any) -> None:
        # cancelcore.h: close from inside a callback of the host's own
        # operations "could never finish" and is an invalid operation.
        host = make_host(close_timeout=0.2)
        ch = host.accept_channel()
        errors: list[Any] = []

        def inside(reason: CancelReason, state: Any) -> None:
            try:
                host.close()
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)

        ctx, rec = registered(ch, inside_cancel=inside)
        t = threading.Thread(target=host.abort, daemon=True)
        t.start()
        t.join(5)
        assert not t.is_alive(), "close inside a cancel callback deadlocked"
        assert len(errors) == 1 and isinstance(errors[0], InvalidOperationError)
        ctx.end()

    def test_close_inside_cancel_callback_run_by_register_is_refused(self) -> None:
        # The same close, from the cancel callback that register runs on an
        # already-canceled operation (G3).  Run in a child interpreter: if it
        # deadlocks it must not take the test session with it.
        proc = run_isolated(
            """
            import threading, cancelcore
            host = cancelcore.ServiceHost(close_timeout=0.2)
            host.open()
            ch = host.accept_channel()
            ctx = ch.begin_operation()
            ch.fault()
            out = []
            def on_cancel(reason, state):
                try:
                    host.close()
                    out.append("closed")
                except cancelcore.InvalidOperationError:
                    out.append("refused")
            t = threading.Thread(target=ctx.register_for_cancel, args=(on_cancel,), daemon=True)
            t.start()
            t.join(5)
            if t.is_alive():
                print("DEADLOCK", host.state.name, flush=True)
                import os; os._exit(3)
            print(out[0], flush=True)
            ctx.end()
            host.close()
            """
        )
        assert proc.stdout.strip() == "refused", (proc.returncode, proc.stdout, proc.stderr)


# ---------------------------------------------------------------- G12


def host_in(state: HostState, make_host: Any) -> ServiceHost:
    h = make_host(open=False)
    if state is HostState.CREATED:
        return h
    h.open()
    if state is HostState.OPEN:
        return h
    if state is HostState.FAULTED:
        h.abort()
        return h
    if state is HostState.CLOSED:
        h.close()
        return h
    raise AssertionError(state)


OK_OPEN = {HostState.CREATED: HostState.OPEN}
OK_CLOSE = {HostState.OPEN: HostState.CLOSED, HostState.FAULTED: HostState.CLOSED}
OK_RESET = {HostState.CLOSED: HostState.CREATED, HostState.CREATED: HostState.CREATED}
ABORT = {
    HostState.CREATED: HostState.CREATED,
    HostState.OPEN: HostState.FAULTED,
    HostState.FAULTED: HostState.FAULTED,
    HostState.CLOSED: HostState.CLOSED,
}
STABLE = [HostState.CREATED, HostState.OPEN, HostState.FAULTED, HostState.CLOSED]


class TestG12States:
    def test_values(self) -> None:
        assert issubclass(HostState, enum.IntEnum)
        assert {m.name: int(m) for m in HostState} == {
            "CREATED": 0,
            "OPENING": 1,
            "OPEN": 2,
            "CLOSING": 3,
            "CLOSED": 4,
            "FAULTED": 5,
        }

    def test_new_host_is_created(self) -> None:
        h = ServiceHost()
        assert h.state is HostState.CREATED

    @pytest.mark.parametrize("start", STABLE, ids=lambda s: s.name)
    @pytest.mark.parametrize("action", ["open", "close", "abort", "reset"])
    def test_transition_table(self, make_host: Any, start: HostState, action: str) -> None:
        h = host_in(start, make_host)
        assert h.state is start
        table = {"open": OK_OPEN, "close": OK_CLOSE, "reset": OK_RESET, "abort": ABORT}[action]
        if start in table:
            result = getattr(h, action)()
            if action == "close":
                assert result is True
            assert h.state is table[start]
        else:
            with pytest.raises(InvalidOperationError):
                getattr(h, action)()
            assert h.state is start

    def test_closing_state(self, host: ServiceHost, channel: Any) -> None:
        ctx = channel.begin_operation()
        done: list[bool] = []
        closer = threading.Thread(target=lambda: done.append(host.close()))
        closer.start()
        assert wait_for(lambda: host.state is HostState.CLOSING)
        for action in ("open", "close", "reset"):
            with pytest.raises(InvalidOperationError):
                getattr(host, action)()
            assert host.state is HostState.CLOSING
        with pytest.raises(InvalidOperationError):
            host.accept_channel()
        host.abort()  # CLOSING finishes as CLOSED
        assert host.state is HostState.CLOSING
        ctx.end()
        closer.join(10)
        assert done == [False]
        assert host.state is HostState.CLOSED

    def test_reset_host_opens_again(self, host: ServiceHost) -> None:
        for _ in range(3):
            ch = host.accept_channel()
            ctx, rec = registered(ch)
            host.abort()
            ctx.end()
            assert rec.n_cancel == 1 and rec.n_free == 1
            assert host.close() is True
            host.reset()
            assert host.state is HostState.CREATED
            with pytest.raises(InvalidOperationError):
                host.accept_channel()
            host.open()
            assert host.state is HostState.OPEN
        ch = host.accept_channel()
        ctx, rec = registered(ch)
        ctx.end()
        assert rec.n_cancel == 0 and rec.n_free == 1

    def test_old_channel_stays_closed_after_reset(self, host: ServiceHost) -> None:
        ch = host.accept_channel()
        host.close()
        host.reset()
        host.open()
        assert ch.state is ChannelState.CLOSED
        with pytest.raises(InvalidOperationError):
            ch.begin_operation()
        with pytest.raises(InvalidOperationError):
            ch.fault()

    def test_accept_channel_per_state(self, make_host: Any) -> None:
        assert isinstance(host_in(HostState.OPEN, make_host).accept_channel(), cancelcore.Channel)
        with pytest.raises(ObjectFaultedError):
            host_in(HostState.FAULTED, make_host).accept_channel()
        for st in (HostState.CREATED, HostState.CLOSED):
            with pytest.raises(InvalidOperationError):
                host_in(st, make_host).accept_channel()


# ---------------------------------------------------------------- G13


class Boom(Exception):
    pass


def raising_cancel(reason: CancelReason, state: Any) -> None:
    raise Boom("cancel")


def raising_free(state: Any) -> None:
    raise Boom("free")


class TestG13CallbackErrors:
    def test_cancel_error_does_not_stop_others(self, host: ServiceHost, channel: Any, error_hook: Any) -> None:
        first, rf = registered(channel)
        bad = channel.begin_operation()
        freed: list[Any] = []
        bad.register_for_cancel(raising_cancel, freed.append, "bad")
        last, rl = registered(channel)
        host.abort()  # nothing escapes
        assert rf.n_cancel == 1 and rl.n_cancel == 1
        assert host.stats["callback_errors"] == 1
        assert len(error_hook.calls) == 1
        exc, ctx, where = error_hook.calls[0]
        assert isinstance(exc, Boom) and ctx is bad and where == "cancel"
        host.abort()
        channel.fault()
        assert host.stats["callback_errors"] == 1  # still at most once (G1)
        for c in (first, bad, last):
            c.end()
        assert freed == ["bad"]  # G4 holds
        assert rf.n_free == 1 and rl.n_free == 1

    def test_free_state_error(self, host: ServiceHost, channel: Any, error_hook: Any) -> None:
        ctx = channel.begin_operation()
        ctx.register_for_cancel(lambda r, s: None, raising_free)
        ctx.end()  # does not raise
        assert host.stats["callback_errors"] == 1
        assert host.stats["free_states_run"] == 1
        assert error_hook.wheres == ["free_state"]
        assert error_hook.calls[0][1] is ctx
        with pytest.raises(InvalidOperationError):
            ctx.end()

    def test_error_in_cancel_run_by_register(self, host: ServiceHost, channel: Any, error_hook: Any) -> None:
        ctx = channel.begin_operation()
        channel.fault()
        ctx.register_for_cancel(raising_cancel)  # does not raise
        assert error_hook.wheres == ["cancel"]
        assert host.stats["callback_errors"] == 1
        ctx.end()

    def test_error_on_another_thread(self, host: ServiceHost, channel: Any, error_hook: Any) -> None:
        ctx = channel.begin_operation()
        ctx.register_for_cancel(raising_cancel, raising_free)
        t = threading.Thread(target=channel.fault)
        t.start()
        t.join()
        t = threading.Thread(target=ctx.end)
        t.start()
        t.join()
        assert error_hook.wheres == ["cancel", "free_state"]
        assert host.stats["callback_errors"] == 2

    def test_default_hook_logs(self, host: ServiceHost, channel: Any, caplog: Any) -> None:
        previous = cancelcore.set_callback_error_hook(None)  # the default
        try:
            ctx = channel.begin_operation()
            ctx.register_for_cancel(raising_cancel, raising_free)
            with caplog.at_level(logging.ERROR, logger="cancelcore"):
                host.abort()
                ctx.end()
        finally:
            cancelcore.set_callback_error_hook(previous)
        records = [r for r in caplog.records if r.name == "cancelcore"]
        assert len(records) == 2
        assert all(r.levelno == logging.ERROR for r in records)
        assert all(r.exc_info and isinstance(r.exc_info[1], Boom) for r in records)
        assert host.stats["callback_errors"] == 2

    def test_failing_hook_breaks_nothing(self, host: ServiceHost, channel: Any, caplog: Any) -> None:
        def bad_hook(exc: BaseException, ctx: Any, where: str) -> None:
            raise RuntimeError("hook")

        previous = cancelcore.set_callback_error_hook(bad_hook)
        try:
            ops = [registered(channel) for _ in range(2)]
            bad = channel.begin_operation()
            bad.register_for_cancel(raising_cancel, raising_free)
            ops.append(registered(channel))
            with caplog.at_level(logging.ERROR, logger="cancelcore"):
                host.abort()
                bad.end()
                for ctx, _rec in ops:
                    ctx.end()
            for _, rec in ops:
                assert rec.n_cancel == 1 and rec.n_free == 1
            assert host.stats["callback_errors"] == 2
            assert any(r.name == "cancelcore" for r in caplog.records)
        finally:
            cancelcore.set_callback_error_hook(previous)

    def test_set_hook_returns_previous_and_validates(self) -> None:
        def h1(exc: BaseException, ctx: Any, where: str) -> None:
            pass

        original = cancelcore.set_callback_error_hook(h1)
        try:
            assert cancelcore.set_callback_error_hook(None) is h1
            with pytest.raises(TypeError):
                cancelcore.set_callback_error_hook(42)  # type: ignore[arg-type]
        finally:
            cancelcore.set_callback_error_hook(original)
