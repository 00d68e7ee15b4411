"""Enumerations, numbered as in WWSAPI and cancelcore.h (G6, G12)."""

from __future__ import annotations

import enum


class CancelReason(enum.IntEnum):
    """Why an operation was canceled (WS_SERVICE_CANCEL_REASON)."""

    HOST_ABORT = 0
    CHANNEL_FAULTED = 1


class HostState(enum.IntEnum):
    """States of a service host (WS_SERVICE_HOST_STATE)."""

    CREATED = 0
    OPENING = 1
    OPEN = 2
    CLOSING = 3
    CLOSED = 4
    FAULTED = 5


class ChannelState(enum.IntEnum):
    """States of a channel (the WS_CHANNEL_STATE values used)."""

    OPEN = 3
    FAULTED = 4
    CLOSED = 6


class FaultPoint(enum.IntEnum):
    """Where the fault plan can inject a fault."""

    BEGIN = 0
    REGISTER = 1
    END = 2


class FaultAction(enum.IntEnum):
    """What an injected fault does."""

    FAULT_CHANNEL = 0
    ABORT_HOST = 1
    NOMEM = 2
