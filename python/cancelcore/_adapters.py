"""Pieces the gRPC and aiohttp adapters share: argument checks, the host an
adapter runs on, and a fault that tolerates a channel already gone."""

from __future__ import annotations

import math
from typing import Any, Optional

from ._enums import CancelReason
from ._errors import CancelCoreError, InvalidOperationError
from ._host import Channel, ServiceHost
from ._operation import OperationContext


def seconds(value: Any, name: str) -> float:
    """A number of seconds >= 0: TypeError for a non-number (bools too),
    ValueError for NaN or a negative value."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if math.isnan(value) or value < 0:
        raise ValueError(f"{name} must be >= 0 seconds, not {value!r}")
    return float(value)


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


def fault(channel: Channel) -> None:
    """Faults ``channel`` (G9); nothing if it was closed or its host closed
    meanwhile -- then its operation has ended or been aborted already."""
    try:
        channel.fault()
    except CancelCoreError:
        pass


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
