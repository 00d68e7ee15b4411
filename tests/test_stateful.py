"""A hypothesis state machine of host / channels / operations against a plain
Python model of DESIGN.md's contract (G1-G13), single-threaded.

Every step compares the host's state, each live operation's canceled /
cancel_reason, every callback's call count, the error hook and host.stats
with the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import cancelcore
from cancelcore import (
    CancelReason,
    ChannelState,
    HostState,
    InvalidOperationError,
    ObjectFaultedError,
    ServiceHost,
)

INDEX = st.integers(min_value=0, max_value=1000)


@dataclass
class ChannelModel:
    channel: Any
    faulted: bool = False
    host_closed: bool = False  # its host was closed: CLOSED for good
    user_closed: bool = False  # Channel.close() was called

    @property
    def state(self) -> ChannelState:
        if self.user_closed or self.host_closed:
            return ChannelState.CLOSED
        return ChannelState.FAULTED if self.faulted else ChannelState.OPEN


@dataclass
class OpModel:
    ctx: Any
    channel: ChannelModel
    reason: Optional[CancelReason] = None
    registered: bool = False
    has_free: bool = False
    end_on_cancel: bool = False
    raise_cancel: bool = False
    raise_free: bool = False
    ended: bool = False
    # what the callbacks really saw
    cancel_calls: list[CancelReason] = field(default_factory=list)
    free_calls: int = 0
    # what the model expects
    exp_cancels: int = 0
    exp_frees: int = 0


class Boom(Exception):
    pass


class HostMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.host = ServiceHost(close_timeout=5.0)
        self.state = HostState.CREATED
        self.channels: list[ChannelModel] = []
        self.ops: list[OpModel] = []
        self.hook_calls: list[tuple[Any, Any, str]] = []
        self.previous_hook = cancelcore.set_callback_error_hook(lambda e, c, w: self.hook_calls.append((e, c, w)))
        self.never_called = 0  # callbacks of failed registrations
        # expected statistics
        self.begun = 0
        self.ended = 0
        self.canceled_abort = 0
        self.canceled_fault = 0
        self.cancel_callbacks = 0
        self.free_states = 0
        self.errors = 0
        self.channels_open = 0

    def teardown(self) -> None:
        try:
            for op in self.ops:
                if not op.ended:
                    op.ctx.end()
            if self.host.state in (HostState.OPEN, HostState.FAULTED):
                self.host.close()
        finally:
            cancelcore.set_callback_error_hook(self.previous_hook)

    # ------------------------------------------------------------ helpers

    def in_flight(self) -> list[OpModel]:
        return [op for op in self.ops if not op.ended]

    def _deliver(self, op: OpModel, reason: CancelReason) -> None:
        """The model of one operation being canceled (G1, G6, G11)."""
        if op.ended or op.reason is not None:
            return
        op.reason = reason
        if reason is CancelReason.HOST_ABORT:
            self.canceled_abort += 1
        else:
            self.canceled_fault += 1
        if op.registered:
            self._run_cancel(op)

    def _run_cancel(self, op: OpModel) -> None:
        op.exp_cancels += 1
        self.cancel_callbacks += 1
        if op.raise_cancel:
            self.errors += 1
        if op.end_on_cancel:
            self._end(op)

    def _end(self, op: OpModel) -> None:
        op.ended = True
        self.ended += 1
        if op.registered and op.has_free:
            op.exp_frees += 1
            self.free_states += 1
            if op.raise_free:
                self.errors += 1

    def _callbacks(self, op: OpModel) -> tuple[Any, Any]:
        def on_cancel(reason: CancelReason, state: Any) -> None:
            assert state is op
            op.cancel_calls.append(reason)
            if op.end_on_cancel:
                op.ctx.end()  # from inside its own callback (G5, G11)
            if op.raise_cancel:
                raise Boom("cancel")

        def on_free(state: Any) -> None:
            assert state is op
            assert not op.cancel_calls or len(op.cancel_calls) == 1
            op.free_calls += 1
            if op.raise_free:
                raise Boom("free")

        return on_cancel, (on_free if op.has_free else None)

    def _never(self, *args: Any) -> None:
        self.never_called += 1

    @initialize(n_channels=st.integers(min_value=0, max_value=3), n_ops=st.integers(min_value=0, max_value=4))
    def start(self, n_channels: int, n_ops: int) -> None:
        # Most examples start from an open host with some operations in
        # flight; n_channels == 0 keeps the host CREATED.
        if n_channels == 0:
            return
        self.open()
        for _ in range(n_channels):
            self.accept_channel()
        for i in range(n_ops):
            self.begin(i)

    # ------------------------------------------------------------ host rules

    @rule()
    def open(self) -> None:
        if self.state is HostState.CREATED:
            self.host.open()
            self.state = HostState.OPEN
        else:
            try:
                self.host.open()
            except InvalidOperationError:
                pass
            else:
                raise AssertionError(f"open accepted in {self.state}")

    @precondition(lambda self: not self.in_flight())
    @rule()
    def close(self) -> None:
        if self.state in (HostState.OPEN, HostState.FAULTED):
            assert self.host.close() is True
            self._closed()
        else:
            try:
                self.host.close()
            except InvalidOperationError:
                pass
            else:
                raise AssertionError(f"close accepted in {self.state}")

    def _closed(self) -> None:
        self.state = HostState.CLOSED
        for ch in self.channels:
            ch.host_closed = True

    @precondition(
        lambda self: self.state in (HostState.OPEN, HostState.FAULTED)
        and all(op.registered and op.end_on_cancel for op in self.in_flight())
    )
    @rule()
    def close_with_zero_timeout(self) -> None:
        # Escalates to an abort at once; the callbacks end their operations.
        flying = self.in_flight()
        result = self.host.close(timeout=0)
        for op in flying:
            self._deliver(op, CancelReason.HOST_ABORT)
        assert result is (not flying)
        self._closed()

    @rule()
    def abort(self) -> None:
        self.host.abort()
        if self.state is HostState.OPEN:
            self.state = HostState.FAULTED
        for op in list(self.ops):
            self._deliver(op, CancelReason.HOST_ABORT)

    @rule()
    def reset(self) -> None:
        if self.state in (HostState.CLOSED, HostState.CREATED):
            self.host.reset()
            self.state = HostState.CREATED
        else:
            try:
                self.host.reset()
            except InvalidOperationError:
                pass
            else:
                raise AssertionError(f"reset accepted in {self.state}")

    # ------------------------------------------------------------ channels

    @precondition(lambda self: len(self.channels) < 12)
    @rule()
    def accept_channel(self) -> None:
        if self.state is HostState.OPEN:
            self.channels.append(ChannelModel(self.host.accept_channel()))
            self.channels_open += 1
            return
        expected = ObjectFaultedError if self.state is HostState.FAULTED else InvalidOperationError
        try:
            self.host.accept_channel()
        except expected:
            pass
        else:
            raise AssertionError(f"accept_channel accepted in {self.state}")

    @precondition(lambda self: self.channels)
    @rule(i=INDEX)
    def fault_channel(self, i: int) -> None:
        ch = self.channels[i % len(self.channels)]
        if ch.user_closed or ch.host_closed:
            try:
                ch.channel.fault()
            except InvalidOperationError:
                return
            raise AssertionError("fault accepted on a closed channel")
        ch.channel.fault()
        ch.faulted = True
        for op in list(self.ops):
            if op.channel is ch:
                self._deliver(op, CancelReason.CHANNEL_FAULTED)

    @precondition(lambda self: self.channels)
    @rule(i=INDEX)
    def close_channel(self, i: int) -> None:
        ch = self.channels[i % len(self.channels)]
        ch.channel.close()
        if not ch.user_closed:
            ch.user_closed = True
            self.channels_open -= 1

    # ------------------------------------------------------------ operations

    @precondition(lambda self: self.channels and len(self.ops) < 40)
    @rule(i=INDEX)
    def begin(self, i: int) -> None:
        ch = self.channels[i % len(self.channels)]
        if ch.user_closed:
            expected: Any = InvalidOperationError
        elif ch.state is ChannelState.FAULTED or self.state is HostState.FAULTED:
            expected = ObjectFaultedError
        elif ch.host_closed or self.state is not HostState.OPEN:
            expected = InvalidOperationError
        else:
            ctx = ch.channel.begin_operation()
            self.ops.append(OpModel(ctx, ch))
            self.begun += 1
            return
        try:
            ch.channel.begin_operation()
        except expected:
            pass
        else:
            raise AssertionError("begin accepted")

    @precondition(lambda self: self.channels and len(self.ops) < 40)
    @rule(
        i=INDEX,
        has_free=st.booleans(),
        end_on_cancel=st.booleans(),
        raise_cancel=st.sampled_from([False, False, False, True]),
        raise_free=st.sampled_from([False, False, False, True]),
    )
    def begin_and_register(self, i: int, has_free: bool, end_on_cancel: bool, raise_cancel: bool, raise_free: bool) -> None:
        n = len(self.ops)
        self.begin(i)
        if len(self.ops) > n:
            self.register(n, has_free, end_on_cancel, raise_cancel, raise_free)

    @precondition(lambda self: self.ops)
    @rule(
        i=INDEX,
        has_free=st.booleans(),
        end_on_cancel=st.booleans(),
        raise_cancel=st.sampled_from([False, False, False, True]),
        raise_free=st.sampled_from([False, False, False, True]),
    )
    def register(self, i: int, has_free: bool, end_on_cancel: bool, raise_cancel: bool, raise_free: bool) -> None:
        op = self.ops[i % len(self.ops)]
        if op.ended or op.registered:
            try:
                op.ctx.register_for_cancel(self._never, self._never, None)
            except InvalidOperationError:
                return
            raise AssertionError("registration accepted")
        op.registered = True
        op.has_free, op.end_on_cancel = has_free, end_on_cancel
        op.raise_cancel, op.raise_free = raise_cancel, raise_free
        on_cancel, on_free = self._callbacks(op)
        op.ctx.register_for_cancel(on_cancel, on_free, op)
        if op.reason is not None:
            self._run_cancel(op)  # G3: ran inside the call
            assert op.cancel_calls == [op.reason]

    @precondition(lambda self: self.ops)
    @rule(i=INDEX)
    def end(self, i: int) -> None:
        op = self.ops[i % len(self.ops)]
        if op.ended:
            try:
                op.ctx.end()
            except InvalidOperationError:
                return
            raise AssertionError("end accepted twice")
        op.ctx.end()
        self._end(op)

    @precondition(lambda self: self.ops)
    @rule(i=INDEX)
    def read(self, i: int) -> None:
        op = self.ops[i % len(self.ops)]
        if op.ended:
            for attr in ("canceled", "cancel_reason"):
                try:
                    getattr(op.ctx, attr)
                except InvalidOperationError:
                    continue
                raise AssertionError(f"{attr} readable after end")
        else:
            assert op.ctx.canceled is (op.reason is not None)
            assert op.ctx.cancel_reason is op.reason

    # ------------------------------------------------------------ invariants

    @invariant()
    def host_state(self) -> None:
        assert self.host.state is self.state

    @invariant()
    def channel_states(self) -> None:
        for ch in self.channels:
            assert ch.channel.state is ch.state

    @invariant()
    def operations(self) -> None:
        for op in self.ops:
            if not op.ended:
                assert op.ctx.canceled is (op.reason is not None)
                assert op.ctx.cancel_reason is op.reason
            assert len(op.cancel_calls) == op.exp_cancels <= 1  # G1
            if op.cancel_calls:
                assert op.cancel_calls == [op.reason]  # G6
            assert op.free_calls == op.exp_frees <= 1  # G4
        assert self.never_called == 0  # G2

    @invariant()
    def errors_reported(self) -> None:
        assert len(self.hook_calls) == self.errors  # G13
        for exc, _ctx, where in self.hook_calls:
            assert isinstance(exc, Boom) and where in ("cancel", "free_state")

    @invariant()
    def stats(self) -> None:
        assert self.host.stats == {
            "ops_in_flight": self.begun - self.ended,
            "ops_begun": self.begun,
            "ops_ended": self.ended,
            "ops_canceled": self.canceled_abort + self.canceled_fault,
            "cancels_host_abort": self.canceled_abort,
            "cancels_channel_faulted": self.canceled_fault,
            "cancel_callbacks_run": self.cancel_callbacks,
            "free_states_run": self.free_states,
            "callback_errors": self.errors,
            "channels_open": self.channels_open,
            "faults_injected": 0,
            "deadlines_expired": 0,
        }


HostMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=50,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestHostMachine = HostMachine.TestCase
