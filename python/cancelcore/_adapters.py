"""Pieces the adapters share: argument checks, the host an adapter runs on,
the channel its calls run on and how one call is canceled, and the
``cancelcore-deadline-ms`` header every HTTP adapter reads."""

from __future__ import annotations

import threading
import time
from typing import Any, Optional

from ._enums import CancelReason, HostState
from ._errors import CancelCoreError, InvalidOperationError
from ._host import Channel, ServiceHost, _seconds
from ._operation import OperationContext


# The hosts' own check of a number of seconds: one rule for every timeout.
seconds = _seconds


def adapter_host(host: Optional[ServiceHost], close_timeout: Any) -> ServiceHost:
    """``host`` as given (it keeps its own close timeout), or a new open
    host with ``close_timeout``.  ``close_timeout`` is checked either way,
    so a bad value is reported at the call that received it."""
    timeout = seconds(close_timeout, "close_timeout")
    if host is None:
        host = ServiceHost(close_timeout=timeout)
        host.open()
        return host
    if not isinstance(host, ServiceHost):
        raise TypeError(f"host must be a ServiceHost or None, not {type(host).__name__}")
    return host


class CallChannel:
    """The channel an adapter's calls run on: one, shared by all of them.

    A call canceled because its client left or its deadline passed is
    canceled alone (``cc_channel_cancel_op``) with ``CHANNEL_FAULTED``, what
    a fault of a channel of its own would do, and the channel goes on: no
    channel is opened and closed per call (two crossings into the core and
    an object each, a third of what the adapters cost per call).  A channel
    closed with its host (a close, then ``reset()`` and ``open()``) is
    replaced by the next call."""

    __slots__ = ("_host", "_channel", "_lock")

    def __init__(self, host: ServiceHost) -> None:
        self._host = host
        self._channel: Optional[Channel] = None
        self._lock = threading.Lock()

    def begin(self, deadline: Optional[float] = None) -> tuple[Channel, OperationContext]:
        """A call's operation, or the host's refusal (``CancelCoreError``:
        not open, or faulted by an abort)."""
        channel = self._channel
        if channel is not None:
            try:
                return channel, channel.begin_operation(deadline=deadline)
            except InvalidOperationError:
                if self._host.state is not HostState.OPEN:
                    raise
                # Closed with its host, which has been opened again since.
        with self._lock:
            if self._channel is channel:
                self._channel = self._host.accept_channel()
            channel = self._channel
            assert channel is not None
        return channel, channel.begin_operation(deadline=deadline)


def cancel(channel: Channel, ctx: Optional[OperationContext]) -> None:
    """Cancels one call (``CHANNEL_FAULTED``); nothing once it ended."""
    if ctx is not None:
        channel._cancel_operation(ctx)


def end(ctx: OperationContext) -> None:
    """Ends the call's operation (its completion: free-state runs).  A
    handler that ended it itself already completed it."""
    try:
        ctx.end()
    except InvalidOperationError:
        pass


def reason(ctx: OperationContext) -> Optional[CancelReason]:
    """``ctx.cancel_reason``, or None once a handler ended the operation itself."""
    try:
        return ctx.cancel_reason
    except InvalidOperationError:
        return None


# ------------------------------------------------------- the deadline header

#: The request header carrying a caller's deadline: the milliseconds it has
#: left, a non-negative integer in ASCII digits (DESIGN 4.4).
DEADLINE_HEADER = "cancelcore-deadline-ms"

# More digits than this is not a deadline anyone means (10 digits is ~115
# days) and would only cost a big-integer parse: such a header is ignored.
_MAX_DEADLINE_DIGITS = 10
_MAX_DEADLINE_MS = 9_999_999_999


def deadline_ms(value: "str | bytes | bytearray | None") -> Optional[int]:
    """The milliseconds a ``cancelcore-deadline-ms`` header value holds, or
    None when it is absent (``None``) or malformed: anything but 1 to 10
    ASCII digits (surrounding spaces and tabs aside) -- a sign, an exponent,
    a fraction, an empty value, non-ASCII digits, a huge number.  A
    malformed header never fails the request: it only carries no deadline.
    TypeError for a value that is not a header value at all."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            raw = value.encode("ascii")
        except UnicodeEncodeError:  # e.g. Arabic-Indic digits, which str.isdigit() accepts
            return None
    elif isinstance(value, (bytes, bytearray)):
        raw = bytes(value)
    else:
        raise TypeError(f"a header value is str or bytes, not {type(value).__name__}")
    raw = raw.strip(b" \t")
    # bytes.isdigit() is true for ASCII digits only.
    if not raw or len(raw) > _MAX_DEADLINE_DIGITS or not raw.isdigit():
        return None
    return int(raw)


def deadline_from_header(value: "str | bytes | bytearray | None",
                         now: Optional[float] = None) -> Optional[float]:
    """The deadline (a ``time.monotonic()`` value) a request's
    ``cancelcore-deadline-ms`` header gives: ``now`` (default: the current
    ``time.monotonic()``) plus its milliseconds; None when the header is
    absent or malformed (see ``deadline_ms``)."""
    ms = deadline_ms(value)
    if ms is None:
        return None
    return (time.monotonic() if now is None else now) + ms / 1000.0


def header_ms(deadline: float, now: Optional[float] = None) -> int:
    """What a client sends in ``cancelcore-deadline-ms`` for ``deadline``:
    the whole milliseconds left, rounded down (never promise the next hop
    more time than there is), 0 once past, capped to what a server accepts."""
    left = deadline - (time.monotonic() if now is None else now)
    if not left > 0.0:
        return 0
    return min(int(left * 1000.0), _MAX_DEADLINE_MS)
