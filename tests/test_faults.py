"""The fault plan (host.faults): injected channel faults, host aborts and
out-of-memory failures at an operation's begin, registration and end."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from cancelcore import (
    CancelReason,
    ChannelState,
    FaultAction,
    FaultPoint,
    HostState,
    ObjectFaultedError,
    OutOfMemoryError,
    ServiceHost,
)
from conftest import Recorder, run_isolated


def test_enums() -> None:
    assert [int(p) for p in FaultPoint] == [0, 1, 2]
    assert [p.name for p in FaultPoint] == ["BEGIN", "REGISTER", "END"]
    assert [a.name for a in FaultAction] == ["FAULT_CHANNEL", "ABORT_HOST", "NOMEM"]


# ------------------------------------------------------------ NOMEM


def test_nomem_every_third_begin(host: ServiceHost) -> None:
    ch = host.accept_channel()
    host.faults.add(FaultPoint.BEGIN, FaultAction.NOMEM, every=3)
    outcomes = []
    ctxs = []
    for _ in range(9):
        try:
            ctxs.append(ch.begin_operation())
            outcomes.append("ok")
        except OutOfMemoryError as exc:
            assert isinstance(exc, MemoryError)
            outcomes.append("nomem")
    assert outcomes == ["ok", "ok", "nomem"] * 3
    assert host.faults.injected == 3
    # Nothing else changed.
    assert host.state is HostState.OPEN
    assert ch.state is ChannelState.OPEN
    assert all(not c.canceled for c in ctxs)
    st = host.stats
    assert st["ops_begun"] == 6 and st["ops_in_flight"] == 6
    assert st["ops_canceled"] == 0
    assert st["faults_injected"] == 3
    for c in ctxs:
        c.end()
    assert host.stats["ops_ended"] == 6


def test_nomem_is_a_memory_error(host: ServiceHost) -> None:
    ch = host.accept_channel()
    host.faults.add(FaultPoint.BEGIN, FaultAction.NOMEM, every=1)
    with pytest.raises(MemoryError):
        ch.begin_operation()


def test_refused_begin_is_no_visit(host: ServiceHost) -> None:
    ch = host.accept_channel()
    ch.fault()
    host.faults.add(FaultPoint.BEGIN, FaultAction.NOMEM, every=2)
    for _ in range(3):
        with pytest.raises(ObjectFaultedError):
            ch.begin_operation()
    ok = host.accept_channel()
    ok.begin_operation().end()  # visit 1
    with pytest.raises(OutOfMemoryError):
        ok.begin_operation()  # visit 2
    assert host.faults.injected == 1


def test_nomem_drops_the_other_faults_of_its_visit(host: ServiceHost) -> None:
    ch = host.accept_channel()
    host.faults.add(FaultPoint.BEGIN, FaultAction.FAULT_CHANNEL, every=1)
    host.faults.add(FaultPoint.BEGIN, FaultAction.NOMEM, every=1)
    with pytest.raises(OutOfMemoryError):
        ch.begin_operation()
    assert ch.state is ChannelState.OPEN
    assert host.state is HostState.OPEN


def test_nomem_at_register(host: ServiceHost) -> None:
    # "fail with OutOfMemoryError" at the registration: the registration
    # fails, nothing changed, and its free-state is never called.
    ch = host.accept_channel()
    host.faults.add(FaultPoint.REGISTER, FaultAction.NOMEM, every=1)
    ctx = ch.begin_operation()
    failed = Recorder()
    with pytest.raises(OutOfMemoryError):
        ctx.register_for_cancel(failed.on_cancel, failed.on_free)
    host.faults.reset()
    rec = Recorder()
    ctx.register_for_cancel(rec.on_cancel, rec.on_free)  # still available
    host.abort()
    ctx.end()
    assert rec.n_cancel == 1 and rec.n_free == 1
    assert failed.n_cancel == 0 and failed.n_free == 0


# ------------------------------------------------------------ at BEGIN


def test_fault_channel_at_begin(host: ServiceHost) -> None:
    ch, other = host.accept_channel(), host.accept_channel()
    bystander = other.begin_operation()
    host.faults.add(FaultPoint.BEGIN, FaultAction.FAULT_CHANNEL, every=1)
    ctx = ch.begin_operation()
    assert ctx.canceled is True
    assert ctx.cancel_reason is CancelReason.CHANNEL_FAULTED
    assert ch.state is ChannelState.FAULTED
    assert host.state is HostState.OPEN
    rec = Recorder()
    ctx.register_for_cancel(rec.on_cancel, rec.on_free, "s")
    assert rec.cancels == [(CancelReason.CHANNEL_FAULTED, "s", threading.get_ident())]  # synchronous (G3)
    assert rec.n_free == 0
    ctx.end()
    assert rec.n_free == 1
    assert not bystander.canceled
    bystander.end()
    assert host.faults.injected == 1


def test_abort_host_at_begin(host: ServiceHost) -> None:
    ch = host.accept_channel()
    earlier = ch.begin_operation()
    host.faults.add(FaultPoint.BEGIN, FaultAction.ABORT_HOST, every=1)
    ctx = ch.begin_operation()
    assert host.state is HostState.FAULTED
    assert ctx.cancel_reason is CancelReason.HOST_ABORT
    assert earlier.cancel_reason is CancelReason.HOST_ABORT
    rec = Recorder()
    ctx.register_for_cancel(rec.on_cancel, rec.on_free)
    assert rec.reasons == [CancelReason.HOST_ABORT]
    ctx.end()
    earlier.end()


# ------------------------------------------------------------ at REGISTER


def test_abort_host_at_register(host: ServiceHost) -> None:
    ch = host.accept_channel()
    host.faults.add(FaultPoint.REGISTER, FaultAction.ABORT_HOST, every=1)
    ctx = ch.begin_operation()
    rec = Recorder()
    ctx.register_for_cancel(rec.on_cancel, rec.on_free)
    # on_cancel fired during register_for_cancel, on this thread, with the
    # host's abort as reason.
    assert rec.cancels == [(CancelReason.HOST_ABORT, None, threading.get_ident())]
    assert host.state is HostState.FAULTED
    assert host.faults.injected == 1
    ctx.end()
    assert rec.n_free == 1


def test_register_fault_fires_at_the_registration_not_at_begin(host: ServiceHost) -> None:
    # FaultPlan: faults "at an operation's begin, registration or end"; a
    # REGISTER rule belongs to the registration, which has not happened yet
    # after begin_operation().
    ch = host.accept_channel()
    host.faults.add(FaultPoint.REGISTER, FaultAction.ABORT_HOST, every=1)
    ctx = ch.begin_operation()
    assert host.state is HostState.OPEN
    assert not ctx.canceled
    assert host.faults.injected == 0
    rec = Recorder()
    ctx.register_for_cancel(rec.on_cancel, rec.on_free)
    assert rec.reasons == [CancelReason.HOST_ABORT]
    assert host.state is HostState.FAULTED
    ctx.end()


def test_fault_channel_at_register(host: ServiceHost) -> None:
    ch = host.accept_channel()
    host.faults.add(FaultPoint.REGISTER, FaultAction.FAULT_CHANNEL, every=1)
    ctx = ch.begin_operation()
    rec = Recorder()
    ctx.register_for_cancel(rec.on_cancel, rec.on_free)
    assert rec.reasons == [CancelReason.CHANNEL_FAULTED]
    assert ch.state is ChannelState.FAULTED
    assert host.state is HostState.OPEN
    ctx.end()
    assert rec.n_free == 1


def test_register_point_counts_registrations_not_begins(host: ServiceHost) -> None:
    ch = host.accept_channel()
    host.faults.add(FaultPoint.REGISTER, FaultAction.FAULT_CHANNEL, every=2)
    unregistered = [ch.begin_operation() for _ in range(3)]
    assert ch.state is ChannelState.OPEN  # no registration, no visit
    assert host.faults.injected == 0
    first = Recorder()
    unregistered[0].register_for_cancel(first.on_cancel)  # visit 1
    assert ch.state is ChannelState.OPEN
    second = Recorder()
    unregistered[1].register_for_cancel(second.on_cancel)  # visit 2: fires
    assert ch.state is ChannelState.FAULTED
    assert first.reasons == [CancelReason.CHANNEL_FAULTED]
    assert second.reasons == [CancelReason.CHANNEL_FAULTED]
    for c in unregistered:
        c.end()


# ------------------------------------------------------------ at END


@pytest.mark.parametrize(
    "action, reason",
    [
        (FaultAction.FAULT_CHANNEL, CancelReason.CHANNEL_FAULTED),
        (FaultAction.ABORT_HOST, CancelReason.HOST_ABORT),
    ],
    ids=["FAULT_CHANNEL", "ABORT_HOST"],
)
def test_fault_at_end_runs_cancel_before_free_state(host: ServiceHost, action: FaultAction, reason: CancelReason) -> None:
    ch = host.accept_channel()
    host.faults.add(FaultPoint.END, action, every=1)
    ctx = ch.begin_operation()
    rec = Recorder()
    ctx.register_for_cancel(rec.on_cancel, rec.on_free)
    assert rec.n_cancel == 0
    ctx.end()
    assert rec.reasons == [reason]
    assert rec.events == ["cancel-start", "cancel-end", "free"]
    assert not rec.overlap
    if action is FaultAction.FAULT_CHANNEL:
        assert ch.state is ChannelState.FAULTED
    else:
        assert host.state is HostState.FAULTED
    assert host.stats["cancel_callbacks_run"] == 1


def test_fault_at_end_of_canceled_op_runs_nothing_more(host: ServiceHost) -> None:
    ch = host.accept_channel()
    ctx = ch.begin_operation()
    rec = Recorder()
    ctx.register_for_cancel(rec.on_cancel, rec.on_free)
    host.abort()
    host.faults.add(FaultPoint.END, FaultAction.FAULT_CHANNEL, every=1)
    ctx.end()
    assert rec.reasons == [CancelReason.HOST_ABORT]
    assert rec.n_free == 1


def test_fault_at_end_reaches_other_ops(host: ServiceHost) -> None:
    ch = host.accept_channel()
    other = ch.begin_operation()
    orec = Recorder()
    other.register_for_cancel(orec.on_cancel, orec.on_free)
    host.faults.add(FaultPoint.END, FaultAction.FAULT_CHANNEL, every=1)
    ch.begin_operation().end()
    assert orec.reasons == [CancelReason.CHANNEL_FAULTED]
    host.faults.reset()
    other.end()
    assert orec.n_free == 1


# ------------------------------------------------------------ determinism


def nomem_pattern(seed: int, n: int = 200, probability: float = 0.3) -> list[bool]:
    host = ServiceHost()
    host.open()
    try:
        host.faults.reset(seed)
        host.faults.add(FaultPoint.BEGIN, FaultAction.NOMEM, probability=probability)
        ch = host.accept_channel()
        pattern = []
        for _ in range(n):
            try:
                ch.begin_operation().end()
                pattern.append(False)
            except OutOfMemoryError:
                pattern.append(True)
        assert host.faults.injected == sum(pattern)
        return pattern
    finally:
        host.close()


def fault_pattern(seed: int, n: int = 100, probability: float = 0.3) -> list[Any]:
    # Which begins come out canceled by an injected channel fault.
    host = ServiceHost()
    host.open()
    try:
        host.faults.reset(seed)
        host.faults.add(FaultPoint.BEGIN, FaultAction.FAULT_CHANNEL, probability=probability)
        pattern = []
        for _ in range(n):
            ch = host.accept_channel()
            ctx = ch.begin_operation()
            pattern.append(ctx.cancel_reason)
            ctx.end()
            ch.close()
        return pattern
    finally:
        host.close()


def test_same_seed_same_faults() -> None:
    a, b = nomem_pattern(1234), nomem_pattern(1234)
    assert a == b
    assert 0.15 < sum(a) / len(a) < 0.45  # roughly the probability
    fa, fb = fault_pattern(99), fault_pattern(99)
    assert fa == fb
    assert set(fa) == {None, CancelReason.CHANNEL_FAULTED}


def test_different_seed_different_faults() -> None:
    assert nomem_pattern(1) != nomem_pattern(2)
    assert fault_pattern(1) != fault_pattern(2)


def test_probability_one_and_every_one(host: ServiceHost) -> None:
    host.faults.add(FaultPoint.BEGIN, FaultAction.NOMEM, probability=1.0)
    ch = host.accept_channel()
    for _ in range(5):
        with pytest.raises(OutOfMemoryError):
            ch.begin_operation()
    assert host.faults.injected == 5


# ------------------------------------------------------------ counting and reset


def test_injected_counts_and_reset_clears(host: ServiceHost) -> None:
    ch = host.accept_channel()
    assert host.faults.injected == 0
    host.faults.add(FaultPoint.BEGIN, FaultAction.NOMEM, every=2)
    for _ in range(4):
        try:
            ch.begin_operation().end()
        except OutOfMemoryError:
            pass
    assert host.faults.injected == 2
    assert host.stats["faults_injected"] == 2
    host.faults.reset()
    assert host.faults.injected == 0
    assert host.stats["faults_injected"] == 0
    for _ in range(6):
        ch.begin_operation().end()  # no rule left
    assert host.faults.injected == 0
    # Visit counts restart: the 2nd visit after re-adding fires.
    host.faults.add(FaultPoint.BEGIN, FaultAction.NOMEM, every=2)
    ch.begin_operation().end()
    with pytest.raises(OutOfMemoryError):
        ch.begin_operation()
    assert host.faults.injected == 1


def test_plan_survives_close_and_reset(host: ServiceHost) -> None:
    host.faults.add(FaultPoint.BEGIN, FaultAction.FAULT_CHANNEL, every=1)
    host.close()
    host.reset()
    host.open()
    ctx = host.accept_channel().begin_operation()
    assert ctx.cancel_reason is CancelReason.CHANNEL_FAULTED
    ctx.end()


def test_callback_run_by_register_fault_ends_the_registering_op() -> None:
    # A REGISTER fault aborts the host inside B's register_for_cancel; the
    # abort runs A's cancel callback on this thread, and it ends B -- whose
    # registration is still in progress below it on the stack.  G11: no
    # deadlock.  Either outcome keeps G2/G4: the registration fails and B's
    # callbacks never run, or it succeeds and B's free-state runs once (in
    # the C core the end is deferred to the registration, which then fails).
    # In a child interpreter, so a hang fails this test only.
    proc = run_isolated(
        """
        import threading, cancelcore
        from cancelcore import FaultPoint, FaultAction
        host = cancelcore.ServiceHost(); host.open()
        ch = host.accept_channel()
        a, b = ch.begin_operation(), ch.begin_operation()
        log = []
        def a_cancel(reason, state):
            b.end()
            log.append("b-ended")
        a.register_for_cancel(a_cancel)
        host.faults.add(FaultPoint.REGISTER, FaultAction.ABORT_HOST, every=1)
        def register_b():
            try:
                b.register_for_cancel(lambda r, s: log.append("b-cancel"),
                                      lambda s: log.append("b-free"))
                log.append("registered")
            except cancelcore.InvalidOperationError:
                log.append("refused")
        t = threading.Thread(target=register_b, daemon=True)
        t.start(); t.join(5)
        if t.is_alive():
            print("HANG", log, flush=True)
            import os; os._exit(3)
        a.end()
        print("DONE", ",".join(log), host.stats["ops_in_flight"], flush=True)
        """
    )
    words = proc.stdout.split()
    assert words[:1] == ["DONE"], (proc.returncode, proc.stdout, proc.stderr)
    log, in_flight = words[1].split(","), int(words[2])
    assert in_flight == 0
    assert log.count("b-ended") == 1
    assert log.count("refused") + log.count("registered") == 1
    if "refused" in log:
        assert "b-cancel" not in log and "b-free" not in log  # G2/G4
    else:
        assert log.count("b-free") == 1 and log.count("b-cancel") <= 1  # G4, G1
        if "b-cancel" in log:
            assert log.index("b-cancel") < log.index("b-free")  # G5
