"""cancelcore: call cancellation for server-side operations.

The call-cancellation model of the Windows Web Services API: a
:class:`ServiceHost` runs operations on channels; an operation may register a
cancel callback, fired at most once when the host is aborted or its channel
faults, and a free-state callback, fired exactly once when it ends.  The
guarantees G1-G13 are those of the design contract; the native core is C.
"""

from __future__ import annotations

from ._cancelcore import ffi as _ffi
from ._cancelcore import lib as _lib
from ._enums import CancelReason, ChannelState, FaultAction, FaultPoint, HostState
from ._errors import (
    CancelCoreError,
    InvalidOperationError,
    ObjectFaultedError,
    OperationAbortedError,
    OperationCanceledError,
    OutOfMemoryError,
)
from ._host import Channel, FaultPlan, ServiceHost
from ._operation import (
    CallbackErrorHook,
    OperationContext,
    current_operation,
    set_callback_error_hook,
)
from ._paths import get_cmake_dir, get_include, get_library_dir, get_pkgconfig_dir

__version__: str = _ffi.string(_lib.cc_version_string()).decode()

__all__ = [
    "CallbackErrorHook",
    "CancelCoreError",
    "CancelReason",
    "Channel",
    "ChannelState",
    "FaultAction",
    "FaultPlan",
    "FaultPoint",
    "HostState",
    "InvalidOperationError",
    "ObjectFaultedError",
    "OperationAbortedError",
    "OperationCanceledError",
    "OperationContext",
    "OutOfMemoryError",
    "ServiceHost",
    "current_operation",
    "get_cmake_dir",
    "get_include",
    "get_library_dir",
    "get_pkgconfig_dir",
    "set_callback_error_hook",
]
