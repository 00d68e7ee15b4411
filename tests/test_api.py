"""The Python API's surface: argument checking, context managers, stats,
version and the files shipped for C embedders (DESIGN section 3)."""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import math
import os
import re
from typing import Any

import pytest

import cancelcore
from cancelcore import (
    CancelReason,
    Channel,
    ChannelState,
    FaultAction,
    FaultPoint,
    HostState,
    InvalidOperationError,
    ObjectFaultedError,
    OperationContext,
    ServiceHost,
)
from conftest import Recorder, run_isolated

# ------------------------------------------------------------ exports


def test_public_names() -> None:
    for name in (
        "CancelReason",
        "HostState",
        "CancelCoreError",
        "InvalidOperationError",
        "ObjectFaultedError",
        "OperationAbortedError",
        "ServiceHost",
        "Channel",
        "OperationContext",
        "current_operation",
        "set_callback_error_hook",
        "get_include",
        "get_library_dir",
        "get_cmake_dir",
        "get_pkgconfig_dir",
        "__version__",
    ):
        assert hasattr(cancelcore, name), name
    for name in cancelcore.__all__:
        assert hasattr(cancelcore, name), name


def test_error_hierarchy() -> None:
    for cls in (
        cancelcore.InvalidOperationError,
        cancelcore.ObjectFaultedError,
        cancelcore.OperationAbortedError,
        cancelcore.OutOfMemoryError,
    ):
        assert issubclass(cls, cancelcore.CancelCoreError)
    assert issubclass(cancelcore.CancelCoreError, Exception)
    assert issubclass(cancelcore.OutOfMemoryError, MemoryError)


# ------------------------------------------------------------ TypeError


@pytest.mark.parametrize("bad", ["x", None, [1], object()])
def test_host_close_timeout_type(bad: Any) -> None:
    with pytest.raises(TypeError):
        ServiceHost(close_timeout=bad)


@pytest.mark.parametrize("bad", [-1, -0.001, math.nan, -math.inf])
def test_host_close_timeout_value(bad: float) -> None:
    with pytest.raises(ValueError):
        ServiceHost(close_timeout=bad)


def test_host_close_timeout_accepts_numbers() -> None:
    assert ServiceHost(close_timeout=0).close_timeout == 0.0
    assert ServiceHost(close_timeout=2).close_timeout == 2.0
    assert ServiceHost(close_timeout=math.inf).close_timeout == math.inf


def test_close_timeout_setter_checks(host: ServiceHost) -> None:
    with pytest.raises(TypeError):
        host.close_timeout = "1"  # type: ignore[assignment]
    with pytest.raises(ValueError):
        host.close_timeout = -1.0
    with pytest.raises(ValueError):
        host.close_timeout = math.nan
    assert host.close_timeout == 5.0
    host.close_timeout = 1.5
    assert host.close_timeout == 1.5


def test_close_timeout_argument_checks(host: ServiceHost) -> None:
    with pytest.raises(TypeError):
        host.close(timeout="1")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        host.close(timeout=-1)
    with pytest.raises(ValueError):
        host.close(timeout=math.nan)
    assert host.state is HostState.OPEN  # the bad calls changed nothing
    assert host.close(timeout=0) is True


def test_register_checks_types_and_keeps_the_registration(host: ServiceHost, channel: Channel) -> None:
    ctx = channel.begin_operation()
    with pytest.raises(TypeError):
        ctx.register_for_cancel(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ctx.register_for_cancel(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ctx.register_for_cancel(lambda r, s: None, 42)  # type: ignore[arg-type]
    # A rejected call did not use up the one registration (G2).
    rec = Recorder()
    ctx.register_for_cancel(rec.on_cancel, rec.on_free, "s")
    host.abort()
    ctx.end()
    assert rec.n_cancel == 1 and rec.n_free == 1


def test_register_keyword_arguments(host: ServiceHost, channel: Channel) -> None:
    ctx = channel.begin_operation()
    rec = Recorder()
    ctx.register_for_cancel(on_cancel=rec.on_cancel, on_free_state=rec.on_free, state={"k": 1})
    channel.fault()
    ctx.end()
    assert rec.cancels[0][:2] == (CancelReason.CHANNEL_FAULTED, {"k": 1})
    assert rec.frees[0][0] == {"k": 1}


@pytest.mark.parametrize(
    "args, kwargs",
    [
        (("BEGIN", FaultAction.NOMEM), {"every": 1}),
        ((FaultPoint.BEGIN, "NOMEM"), {"every": 1}),
        ((None, FaultAction.NOMEM), {"every": 1}),
        ((FaultPoint.BEGIN, FaultAction.NOMEM), {"every": "3"}),
        ((FaultPoint.BEGIN, FaultAction.NOMEM), {"every": 1.0}),
        ((FaultPoint.BEGIN, FaultAction.NOMEM), {"probability": "0.5"}),
        ((FaultPoint.BEGIN, FaultAction.NOMEM), {"probability": None}),
    ],
)
def test_fault_add_types(host: ServiceHost, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    with pytest.raises(TypeError):
        host.faults.add(*args, **kwargs)
    channel = host.accept_channel()
    channel.begin_operation().end()  # no rule was added
    assert host.faults.injected == 0


@pytest.mark.parametrize(
    "args, kwargs",
    [
        ((FaultPoint.END, FaultAction.NOMEM), {"every": 1}),
        ((FaultPoint.BEGIN, FaultAction.FAULT_CHANNEL), {"probability": 1.5}),
        ((FaultPoint.BEGIN, FaultAction.FAULT_CHANNEL), {"probability": -0.1}),
        ((FaultPoint.BEGIN, FaultAction.FAULT_CHANNEL), {"probability": math.nan}),
        ((FaultPoint.BEGIN, FaultAction.FAULT_CHANNEL), {}),
        ((FaultPoint.BEGIN, FaultAction.FAULT_CHANNEL), {"every": 0, "probability": 0.0}),
        ((FaultPoint.BEGIN, FaultAction.FAULT_CHANNEL), {"every": -1}),
    ],
)
def test_fault_add_values(host: ServiceHost, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        host.faults.add(*args, **kwargs)
    channel = host.accept_channel()
    ctx = channel.begin_operation()
    assert not ctx.canceled
    ctx.end()
    assert host.faults.injected == 0


def test_fault_plan_holds_sixteen_rules(host: ServiceHost) -> None:
    for _ in range(16):
        host.faults.add(FaultPoint.END, FaultAction.FAULT_CHANNEL, every=1000)
    with pytest.raises(ValueError):
        host.faults.add(FaultPoint.END, FaultAction.FAULT_CHANNEL, every=1000)
    host.faults.reset()
    host.faults.add(FaultPoint.END, FaultAction.FAULT_CHANNEL, every=1000)  # room again


def test_fault_reset_seed_type(host: ServiceHost) -> None:
    with pytest.raises(TypeError):
        host.faults.reset("1")  # type: ignore[arg-type]


def test_dispatch_argument_checks(make_host: Any) -> None:
    host, other = make_host(), make_host()
    ch = host.accept_channel()
    with pytest.raises(TypeError):
        host.dispatch(ch, 42)
    with pytest.raises(TypeError):
        host.dispatch("not a channel", lambda ctx: None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        host.dispatch(None, lambda ctx: None)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        host.dispatch(other.accept_channel(), lambda ctx: None)
    assert host.stats["ops_begun"] == 0  # nothing was begun
    assert other.stats["ops_begun"] == 0


def test_operation_context_cannot_be_constructed() -> None:
    with pytest.raises(TypeError):
        OperationContext()


# ------------------------------------------------------------ channels


def test_closed_channel(host: ServiceHost) -> None:
    ch = host.accept_channel()
    assert ch.state is ChannelState.OPEN
    assert ch.host is host
    ch.close()
    assert ch.state is ChannelState.CLOSED
    with pytest.raises(InvalidOperationError):
        ch.begin_operation()
    with pytest.raises(InvalidOperationError):
        ch.fault()
    ch.close()  # harmless twice
    with pytest.raises(InvalidOperationError):
        host.dispatch(ch, lambda ctx: None)
    assert host.stats["channels_open"] == 0


def test_closed_channel_ops_go_on(host: ServiceHost) -> None:
    ch = host.accept_channel()
    ctx = ch.begin_operation()
    rec = Recorder()
    ctx.register_for_cancel(rec.on_cancel, rec.on_free)
    ch.close()
    assert not ctx.canceled
    host.abort()
    assert rec.reasons == [CancelReason.HOST_ABORT]
    ctx.end()
    assert rec.n_free == 1


def test_faulted_channel_state(host: ServiceHost) -> None:
    ch = host.accept_channel()
    ch.fault()
    assert ch.state is ChannelState.FAULTED
    with pytest.raises(ObjectFaultedError):
        ch.begin_operation()


def test_channel_of_faulted_host_refuses_begin(host: ServiceHost) -> None:
    ch = host.accept_channel()
    host.abort()
    with pytest.raises(ObjectFaultedError):
        ch.begin_operation()


def test_begin_on_closed_host(host: ServiceHost) -> None:
    ch = host.accept_channel()
    host.close()
    with pytest.raises(InvalidOperationError):
        ch.begin_operation()


def test_reprs(host: ServiceHost) -> None:
    ch = host.accept_channel()
    ctx = ch.begin_operation()
    for obj in (host, ch, ctx):
        assert isinstance(repr(obj), str)
    ctx.end()
    assert isinstance(repr(ctx), str)
    ch.close()
    assert isinstance(repr(ch), str)


# ------------------------------------------------------------ context managers


def test_host_context_manager() -> None:
    host = ServiceHost()
    with host as h:
        assert h is host
        assert host.state is HostState.OPEN
        ch = host.accept_channel()
        ch.begin_operation().end()
    assert host.state is HostState.CLOSED


def test_host_context_manager_closes_on_error() -> None:
    host = ServiceHost()
    with pytest.raises(KeyError):
        with host:
            raise KeyError("x")
    assert host.state is HostState.CLOSED


def test_host_context_manager_of_faulted_host() -> None:
    with ServiceHost() as host:
        host.abort()
    assert host.state is HostState.CLOSED


def test_host_context_manager_waits_for_ops() -> None:
    import threading

    with ServiceHost() as host:
        ctx = host.accept_channel().begin_operation()
        threading.Timer(0.1, ctx.end).start()
    assert host.state is HostState.CLOSED
    assert host.stats["ops_in_flight"] == 0


def test_operation_context_manager(host: ServiceHost, channel: Channel) -> None:
    rec = Recorder()
    with channel.begin_operation() as ctx:
        ctx.register_for_cancel(rec.on_cancel, rec.on_free)
        assert rec.n_free == 0
    assert rec.n_free == 1
    with pytest.raises(InvalidOperationError):
        ctx.end()
    assert host.stats["ops_in_flight"] == 0


def test_operation_context_manager_ends_when_block_raises(host: ServiceHost, channel: Channel) -> None:
    rec = Recorder()
    with pytest.raises(ZeroDivisionError):
        with channel.begin_operation() as ctx:
            ctx.register_for_cancel(rec.on_cancel, rec.on_free)
            host.abort()
            1 / 0
    assert rec.n_cancel == 1 and rec.n_free == 1
    with pytest.raises(InvalidOperationError):
        ctx.canceled
    assert host.stats["ops_in_flight"] == 0


def test_channel_context_manager(host: ServiceHost) -> None:
    with host.accept_channel() as ch:
        assert host.stats["channels_open"] == 1
        ch.begin_operation().end()
    assert ch.state is ChannelState.CLOSED
    assert host.stats["channels_open"] == 0
    with pytest.raises(InvalidOperationError):
        ch.begin_operation()


# ------------------------------------------------------------ stats

STATS_KEYS = {
    "ops_in_flight",
    "ops_begun",
    "ops_ended",
    "ops_canceled",
    "cancels_host_abort",
    "cancels_channel_faulted",
    "cancel_callbacks_run",
    "free_states_run",
    "callback_errors",
    "channels_open",
    "faults_injected",
    "deadlines_expired",
}


def test_stats_of_new_host() -> None:
    st = ServiceHost().stats
    assert isinstance(st, dict)
    assert set(st) == STATS_KEYS
    assert all(type(v) is int and v == 0 for v in st.values())


def test_stats_after_scripted_sequence(host: ServiceHost, error_hook: Any) -> None:
    a, b = host.accept_channel(), host.accept_channel()
    r1, r2 = Recorder(), Recorder()
    op1 = a.begin_operation()
    op1.register_for_cancel(r1.on_cancel, r1.on_free)  # cancel + free
    op2 = a.begin_operation()
    op2.register_for_cancel(r2.on_cancel)  # cancel, no free-state
    op3 = b.begin_operation()  # never registers
    op4 = b.begin_operation()
    freed4: list[Any] = []

    def boom(reason: CancelReason, state: Any) -> None:
        raise RuntimeError("boom")

    op4.register_for_cancel(boom, freed4.append, 4)
    op5 = b.begin_operation()
    op5.end()  # completes uncanceled
    st = host.stats
    assert st["ops_begun"] == 5 and st["ops_ended"] == 1 and st["ops_in_flight"] == 4
    assert st["channels_open"] == 2

    a.fault()  # op1, op2: CHANNEL_FAULTED
    host.abort()  # op3, op4: HOST_ABORT (op4's callback raises)
    st = host.stats
    assert st["ops_in_flight"] == 4
    assert st["ops_canceled"] == 4
    assert st["cancels_channel_faulted"] == 2
    assert st["cancels_host_abort"] == 2
    assert st["cancel_callbacks_run"] == 3  # op1, op2, op4 registered one
    assert st["callback_errors"] == 1
    assert st["free_states_run"] == 0

    for op in (op1, op2, op3, op4):
        op.end()
    b.close()
    assert host.close() is True
    assert host.stats == {
        "ops_in_flight": 0,
        "ops_begun": 5,
        "ops_ended": 5,
        "ops_canceled": 4,
        "cancels_host_abort": 2,
        "cancels_channel_faulted": 2,
        "cancel_callbacks_run": 3,
        "free_states_run": 2,  # op1 and op4 gave one
        "callback_errors": 1,
        "channels_open": 1,  # a was never closed by its user
        "faults_injected": 0,
        "deadlines_expired": 0,
    }
    assert freed4 == [4]
    # Counters run since the host was created: a reset does not clear them.
    host.reset()
    host.open()
    host.accept_channel().begin_operation().end()
    st = host.stats
    assert st["ops_begun"] == 6 and st["ops_ended"] == 6 and st["cancel_callbacks_run"] == 3


# ------------------------------------------------------------ version and files


def _header_version() -> str:
    text = open(os.path.join(cancelcore.get_include(), "cancelcore.h")).read()
    m = re.search(r'#define CC_VERSION_STRING "([^"]+)"', text)
    assert m
    return m.group(1)


def test_version_is_the_c_version() -> None:
    from cancelcore._cancelcore import ffi, lib

    c_version = ffi.string(lib.cc_version_string()).decode()
    assert cancelcore.__version__ == c_version
    assert cancelcore.__version__ == _header_version()
    assert importlib.metadata.version("cancelcore") == c_version
    major, minor, patch = (int(x) for x in c_version.split("."))
    assert lib.cc_version_number() == major * 10000 + minor * 100 + patch


@pytest.mark.parametrize(
    "getter, filename",
    [
        (cancelcore.get_include, "cancelcore.h"),
        (cancelcore.get_library_dir, "libcancelcore.a"),
        (cancelcore.get_cmake_dir, "cancelcoreConfig.cmake"),
        (cancelcore.get_pkgconfig_dir, "cancelcore.pc"),
    ],
)
def test_embedding_paths(getter: Any, filename: str) -> None:
    path = getter()
    assert isinstance(path, str)
    assert os.path.isdir(path), path
    assert os.path.isfile(os.path.join(path, filename)), os.listdir(path)


def test_py_typed_shipped() -> None:
    assert importlib.resources.files("cancelcore").joinpath("py.typed").is_file()


def test_interpreter_exit_cancels_operations_in_flight() -> None:
    # A dispatched operation blocked until canceled must not hang the exit:
    # hosts still running operations are aborted before the interpreter
    # joins its threads, while callbacks can still run.
    proc = run_isolated(
        """
        import threading, time, cancelcore
        host = cancelcore.ServiceHost(); host.open(); ch = host.accept_channel()
        def blocking(ctx):
            woken = threading.Event()
            ctx.register_for_cancel(lambda r, s: woken.set(),
                                    lambda s: print("freed", flush=True))
            woken.wait(20)
            print("woken", ctx.cancel_reason.name, flush=True)
        host.dispatch(ch, blocking)
        time.sleep(0.2)
        print("exiting", flush=True)
        """,
        timeout=15,
    )
    assert proc.stdout.split() == ["exiting", "woken", "HOST_ABORT", "freed"], (proc.stdout, proc.stderr)
    assert proc.returncode == 0, proc.stderr


def test_cancel_one_operation_of_a_channel() -> None:
    """The adapters' per-call cancel (Channel._cancel_operation over
    cc_channel_cancel_op): that operation alone, once, its first reason
    kept; the channel and its other operations go on."""
    seen: list[tuple[CancelReason, str]] = []
    with ServiceHost() as host, host.accept_channel() as ch:
        a, b = ch.begin_operation(), ch.begin_operation()
        a.register_for_cancel(lambda r, s: seen.append((r, s)), None, "a")
        b.register_for_cancel(lambda r, s: seen.append((r, s)), None, "b")
        ch._cancel_operation(a)
        assert seen == [(CancelReason.CHANNEL_FAULTED, "a")]
        ch._cancel_operation(a, CancelReason.HOST_ABORT)
        assert a.cancel_reason is CancelReason.CHANNEL_FAULTED and len(seen) == 1
        assert not b.canceled and ch.state is ChannelState.OPEN
        a.end()
        ch._cancel_operation(a)  # ended: nothing
        b.end()
        assert host.stats["ops_canceled"] == 1
