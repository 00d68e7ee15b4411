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


def _status_classes() -> "dict[int, type[Exception]]":
    # The statuses are the header's (one X-macro); only their classes are
    # chosen here.
    from ._cancelcore import lib

    return {
        lib.CC_E_INVALID_ARG: ValueError,
        lib.CC_E_INVALID_OPERATION: InvalidOperationError,
        lib.CC_E_OBJECT_FAULTED: ObjectFaultedError,
        lib.CC_E_OPERATION_ABORTED: OperationAbortedError,
        lib.CC_E_NOMEM: OutOfMemoryError,
        lib.CC_E_TIMEOUT: TimeoutError,
    }


_BY_STATUS = _status_classes()


def status_name(status: int) -> str:
    """The header's name of a status ("CC_E_TIMEOUT")."""
    from ._cancelcore import ffi, lib

    return str(ffi.string(lib.cc_status_str(status)).decode())


def raise_status(status: int, what: str) -> NoReturn:
    """Raises the exception for a failed status of the core."""
    cls = _BY_STATUS.get(status, CancelCoreError)
    raise cls(f"{what}: {status_name(status)}")
