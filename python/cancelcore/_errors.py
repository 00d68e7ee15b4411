"""The exceptions of cancelcore, and the mapping from the core's statuses."""

from __future__ import annotations

from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from ._enums import CancelReason


class CancelCoreError(Exception):
    """Base of every error cancelcore raises for a wrong state or a failure."""


class InvalidOperationError(CancelCoreError):
    """The call is not valid in the object's current state (G10, G12), or the
    operation already has its one registration (G2)."""


class ObjectFaultedError(CancelCoreError):
    """The host or channel is faulted (aborted or faulted channel)."""


class OperationAbortedError(CancelCoreError):
    """The host was aborted while the call was waiting."""


class OperationCanceledError(CancelCoreError):
    """The operation has been canceled: raised by
    ``OperationContext.raise_if_canceled()``.  ``reason`` is the
    ``CancelReason`` (G6)."""

    def __init__(self, reason: "CancelReason", message: str = "") -> None:
        super().__init__(message or f"the operation was canceled ({reason.name})")
        self.reason = reason

    def __reduce__(self) -> "tuple[object, ...]":
        return (type(self), (self.reason, str(self)))


class OutOfMemoryError(CancelCoreError, MemoryError):
    """The core could not allocate (or the fault plan said so)."""


# Statuses of cancelcore.h (CC_E_*), by value.
_BY_STATUS: dict[int, type[Exception]] = {
    -1: ValueError,
    -2: InvalidOperationError,
    -3: ObjectFaultedError,
    -4: OperationAbortedError,
    -5: OutOfMemoryError,
    -6: TimeoutError,
}


def raise_status(status: int, what: str) -> NoReturn:
    """Raises the exception for a failed status of the core."""
    cls = _BY_STATUS.get(status, CancelCoreError)
    raise cls(f"{what}: {_STATUS_NAMES.get(status, 'CC_E_UNKNOWN')}")


_STATUS_NAMES = {
    -1: "CC_E_INVALID_ARG",
    -2: "CC_E_INVALID_OPERATION",
    -3: "CC_E_OBJECT_FAULTED",
    -4: "CC_E_OPERATION_ABORTED",
    -5: "CC_E_NOMEM",
    -6: "CC_E_TIMEOUT",
}
