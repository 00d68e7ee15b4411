"""Callbacks arriving on a native thread that Python did not start.

The thread is created with pthread_create (through ctypes) and its start
routine is the C function cc_host_abort / cc_channel_fault itself, taken
from the extension with ffi.addressof: no Python code runs on that thread
until the library calls back into Python.  (A ctypes CFUNCTYPE start
routine would be Python code: not acceptable here.)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import threading
from typing import Any

import pytest

from cancelcore import CancelReason, HostState, ServiceHost
from cancelcore._cancelcore import ffi, lib
from conftest import Recorder

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pthread via ctypes: Linux only")


def _libpthread() -> Any:
    libc = ctypes.CDLL(ctypes.util.find_library("pthread") or None, use_errno=True)
    libc.pthread_create.argtypes = [ctypes.POINTER(ctypes.c_ulong), ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    libc.pthread_create.restype = ctypes.c_int
    libc.pthread_join.argtypes = [ctypes.c_ulong, ctypes.POINTER(ctypes.c_void_p)]
    libc.pthread_join.restype = ctypes.c_int
    return libc


def run_on_native_thread(fn_name: str, arg: Any) -> int:
    """Runs the C function ``fn_name(arg)`` (one pointer argument, returning
    cc_status) as the start routine of a new pthread, joins it, and returns
    what it returned.  ctypes releases the GIL around pthread_join, so the
    thread can call back into Python meanwhile."""
    libpthread = _libpthread()
    start = int(ffi.cast("uintptr_t", ffi.addressof(lib, fn_name)))
    tid = ctypes.c_ulong()
    rc = libpthread.pthread_create(ctypes.byref(tid), None, ctypes.c_void_p(start), ctypes.c_void_p(int(ffi.cast("uintptr_t", arg))))
    assert rc == 0, f"pthread_create failed: {rc}"
    ret = ctypes.c_void_p()
    assert libpthread.pthread_join(tid.value, ctypes.byref(ret)) == 0
    # The start routine returned an int (cc_status) in the return register.
    return ctypes.c_int(ret.value or 0).value


def test_abort_from_native_thread(host: ServiceHost, channel: Any) -> None:
    main = threading.get_ident()
    ctx = channel.begin_operation()
    seen: list[Any] = []

    def inside(reason: CancelReason, state: Any) -> None:
        seen.append((threading.get_ident(), ctx.canceled, ctx.cancel_reason))

    rec = Recorder(inside_cancel=inside)
    ctx.register_for_cancel(rec.on_cancel, rec.on_free, "st")
    status = run_on_native_thread("cc_host_abort", host._ptr)
    assert status == 0
    assert rec.n_cancel == 1
    reason, state, ident = rec.cancels[0]
    assert (reason, state) == (CancelReason.HOST_ABORT, "st")
    assert ident != main
    assert seen == [(ident, True, CancelReason.HOST_ABORT)]
    assert host.state is HostState.FAULTED
    assert rec.n_free == 0
    ctx.end()
    assert rec.n_cancel == 1
    assert rec.frees == [("st", main)]
    st = host.stats
    assert st["cancel_callbacks_run"] == 1 and st["free_states_run"] == 1
    assert st["ops_in_flight"] == 0


def test_fault_from_native_thread_many_ops(host: ServiceHost) -> None:
    main = threading.get_ident()
    ch, other = host.accept_channel(), host.accept_channel()
    ops = []
    for i in range(20):
        ctx = ch.begin_operation()
        rec = Recorder()
        ctx.register_for_cancel(rec.on_cancel, rec.on_free, i)
        ops.append((ctx, rec))
    bystander = other.begin_operation()
    assert run_on_native_thread("cc_channel_fault", ch._ptr) == 0
    idents = {rec.cancels[0][2] for _, rec in ops}
    assert len(idents) == 1 and main not in idents  # one native thread ran them all
    for i, (ctx, rec) in enumerate(ops):
        assert [c[:2] for c in rec.cancels] == [(CancelReason.CHANNEL_FAULTED, i)]
        ctx.end()
        assert rec.n_free == 1
    assert not bystander.canceled
    bystander.end()
    assert host.state is HostState.OPEN


def test_native_thread_end_inside_callback_and_errors(host: ServiceHost, channel: Any, error_hook: Any) -> None:
    # From the native thread: one callback ends its own operation (free-state
    # then runs on that thread), another raises (reported, not escaping).
    main = threading.get_ident()
    own = channel.begin_operation()
    rec_own = Recorder(inside_cancel=lambda r, s: own.end())
    own.register_for_cancel(rec_own.on_cancel, rec_own.on_free)

    def boom(reason: CancelReason, state: Any) -> None:
        raise RuntimeError("native boom")

    bad = channel.begin_operation()
    bad.register_for_cancel(boom)
    assert run_on_native_thread("cc_host_abort", host._ptr) == 0
    assert rec_own.n_cancel == 1 and rec_own.n_free == 1
    native = rec_own.cancels[0][2]
    assert native != main
    assert rec_own.frees[0][1] == native
    assert rec_own.events == ["cancel-start", "cancel-end", "free"]
    assert error_hook.wheres == ["cancel"]
    assert host.stats["callback_errors"] == 1
    bad.end()
    assert host.stats["ops_in_flight"] == 0


def test_repeated_native_aborts(make_host: Any) -> None:
    # Each pthread is new: the first callback on it creates a thread state.
    idents = set()
    for _ in range(10):
        host = make_host()
        ch = host.accept_channel()
        ctx = ch.begin_operation()
        rec = Recorder()
        ctx.register_for_cancel(rec.on_cancel, rec.on_free)
        assert run_on_native_thread("cc_host_abort", host._ptr) == 0
        assert rec.n_cancel == 1
        idents.add(rec.cancels[0][2])
        ctx.end()
        assert rec.n_free == 1
        host.close()
    assert threading.get_ident() not in idents
