"""Operation contexts: the Python face of one in-flight call.

The core decides every guarantee (G1-G5, G10); this module carries out its
decisions and decides none of its own.

- Every Python operation is begun *watched* (``cc_op_begin_watched``): its
  host's :class:`Binding` hears of its cancel, in batches, whether or not it
  has a registration.  The library's own plumbing (dispatch, the adapters)
  listens there, through ``ctx._add_hook``, so it never takes the
  operation's one registration (G2).
- ``register_for_cancel`` is the core's one registration, by key
  (``cc_op_register_watched``): the core says when to run the user's cancel
  callback (``CC_NOTICE_RUN_USER``, at most once: G1, inside the call when
  already canceled: G3) and hands the free-state back from
  ``cc_op_end_watched`` (G4, after any running cancel: G5), so completing an
  operation costs no C-to-Python round trip.
- ``canceled`` and ``cancel_reason`` are plain attributes, written from the
  core's notice before any callback of the operation runs: reading one costs
  an attribute load.

Nothing here relies on the GIL: the core's state word decides who runs
what; the dictionaries only find the Python objects a notice names.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import warnings
import weakref
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Callable, Optional

from ._cancelcore import ffi, lib
from ._enums import CancelReason
from ._errors import InvalidOperationError, OperationCanceledError, raise_status

if TYPE_CHECKING:
    from ._host import ServiceHost

__all__ = [
    "Binding",
    "CallbackErrorHook",
    "OperationContext",
    "current_operation",
    "reraise_interrupts",
    "set_callback_error_hook",
]

log = logging.getLogger("cancelcore")

_REASONS = (CancelReason.HOST_ABORT, CancelReason.CHANNEL_FAULTED)
_CANCELED = lib.CC_NOTICE_CANCELED
_RUN_USER = lib.CC_NOTICE_RUN_USER
_FREE_DUE = lib.CC_NOTICE_FREE_DUE
_DEFERRED = lib.CC_END_DEFERRED
_E_INVALID_OPERATION = lib.CC_E_INVALID_OPERATION
_register = lib.cc_op_register_watched
_end = lib.cc_op_end_watched
_unpack = ffi.unpack
_cast = ffi.cast
_from_handle = ffi.from_handle
_get_ident = threading.get_ident
_monotonic = time.monotonic

_hooks_lock = threading.Lock()  # adding and removing plumbing hooks (held for a list copy)

_current: ContextVar[Optional[OperationContext]] = ContextVar(
    "cancelcore_current_operation", default=None
)


def current_operation() -> Optional[OperationContext]:
    """The context of the operation running in this thread or task (set by
    ``dispatch`` and the server adapters), or ``None`` outside one."""
    return _current.get()


# ------------------------------------------------------------ errors (G13)

CallbackErrorHook = Callable[[BaseException, Optional["OperationContext"], str], None]


def _log_error(exc: BaseException, ctx: Optional[OperationContext], where: str) -> None:
    log.error("exception in %s callback of %r", where, ctx, exc_info=exc)


_hook: CallbackErrorHook = _log_error


def set_callback_error_hook(hook: Optional[CallbackErrorHook]) -> CallbackErrorHook:
    """Sets what receives an exception raised inside a user callback:
    ``hook(exc, ctx, where)`` with ``where`` one of ``"cancel"``,
    ``"free_state"``.  ``None`` restores the default, which logs to the
    ``cancelcore`` logger.  Every error is also counted in
    ``host.stats["callback_errors"]``.  Returns the previous hook."""
    global _hook
    if hook is not None and not callable(hook):
        raise TypeError("hook must be callable or None")
    previous, _hook = _hook, hook if hook is not None else _log_error
    return previous


# KeyboardInterrupt and SystemExit raised inside callbacks that the core ran
# (or that ran between them): held per thread until every callback of the
# call has run, then raised to its caller.
_interrupts: dict[int, BaseException] = {}


def _hold_interrupt(exc: BaseException) -> None:
    _interrupts.setdefault(_get_ident(), exc)


def reraise_interrupts() -> None:
    """Raises the interrupt a callback run on this thread raised, if any."""
    exc = _interrupts.pop(_get_ident(), None)
    if exc is not None:
        raise exc


def _callback_failed(exc: BaseException, b: Binding, ctx: Optional[OperationContext], where: str) -> None:
    if not isinstance(exc, Exception) and isinstance(exc, (KeyboardInterrupt, SystemExit)):
        _hold_interrupt(exc)
        return
    if not b.freed:
        lib.cc_host_report_callback_error(b.ptr)
    try:
        _hook(exc, ctx, where)
    except BaseException as hook_exc:  # a failing hook must not break G1-G5 either
        if isinstance(hook_exc, (KeyboardInterrupt, SystemExit)):
            _hold_interrupt(hook_exc)
        else:
            log.exception("callback error hook failed")


def inside_callback_of(b: Binding) -> bool:
    """True if this thread is running a callback of one of b's operations
    (a close from there would wait for itself).  Read off the stack, so the
    hot path sets no marker."""
    frame: Any = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code in _CALLBACK_CODES:
            owner = frame.f_locals.get("self")
            if owner is b or getattr(owner, "_b", None) is b:
                return True
        frame = frame.f_back
    return False


# ------------------------------------------------------------- bindings

Registration = tuple[Any, ...]  # (on_cancel, on_free_state, state)

# Registrations the core may name before their context files them: between
# the core arming one and register_for_cancel storing it on the context.
_arming: dict[int, Registration] = {}


def _registration(ctx: Optional[OperationContext], key: int) -> Optional[Registration]:
    """The registration the core names by key (its id: unique while alive):
    on the context, or else still in the arming table -- unless filed since,
    as it is filed on the context before it leaves the table."""
    reg = ctx._reg if ctx is not None else None
    if reg is None or id(reg) != key:
        reg = _arming.get(key)
        if reg is None and ctx is not None:
            reg = ctx._reg
    return reg if reg is not None and id(reg) == key else None


class Binding:
    """A host's side of the core's binding: what its notices name.

    ``ops`` maps a handle to a weak reference of its context, so a context
    dropped without ``end()`` is collected (and ends itself).  It outlives
    its ``ServiceHost`` until the core host is freed, since the core calls
    back with ``handle``."""

    __slots__ = ("ptr", "ops", "early", "deferred", "handle", "freed", "inherited",
                 "closing", "idle", "__weakref__")

    def __init__(self, ptr: Any) -> None:
        self.ptr = ptr
        self.ops: dict[int, weakref.ref[OperationContext]] = {}
        # Cancels that reached an operation before its context was filed.
        self.early: dict[int, CancelReason] = {}
        # Contexts whose end the core finishes later (CC_END_DEFERRED): kept
        # until then, since their registration is on them.
        self.deferred: dict[int, OperationContext] = {}
        self.handle = ffi.new_handle(self)
        self.freed = False
        self.inherited = False  # a forked child's copy: calls back never
        self.closing = False
        self.idle = threading.Condition()

    def early_cancel(self, h: int, ctx: OperationContext) -> None:
        """A cancel reached the operation before its context was filed."""
        reason = self.early.pop(h, None)
        if reason is not None:
            ctx.cancel_reason = reason
            ctx.canceled = True

    def done(self, h: int) -> None:
        """An operation has completed, free-state included (G8 waits)."""
        self.ops.pop(h, None)
        if self.closing:
            self.wake()

    def wake(self) -> None:
        with self.idle:
            self.idle.notify_all()

    def run_free_state(self, reg: Optional[Registration], ctx: Optional[OperationContext]) -> None:
        if reg is None or reg[1] is None:
            return
        try:
            reg[1](reg[2])
        except BaseException as exc:  # G13
            _callback_failed(exc, self, ctx, "free_state")

    # The core's notices: runs on whichever thread canceled or ended.
    def notices(self, values: list[int]) -> None:
        ops = self.ops
        n = len(values)
        i = 0
        stage = 0  # how far notice i got, should a signal interrupt it
        ctx: Optional[OperationContext] = None
        failure: Optional[BaseException] = None
        raised = 0  # the recursion limit, while raised for room
        while i < n:
            try:
                while i < n:
                    h = values[i]
                    what = values[i + 2]
                    if what & 3:  # canceled, or its user's cancel to run
                        reason = _REASONS[what >> 8]
                        if stage == 0:
                            ref = ops.get(h)
                            ctx = ref() if ref is not None else None
                            if ctx is not None:
                                ctx.cancel_reason = reason
                                ctx.canceled = True
                            elif what & _CANCELED:
                                self._early(h, reason)
                            stage = 1
                        if stage == 1:
                            failure = None
                            if what & _RUN_USER:
                                key = values[i + 1]
                                reg = ctx._reg if ctx is not None else None
                                if reg is None or id(reg) != key:
                                    reg = _registration(ctx, key)
                                if reg is not None:
                                    try:
                                        reg[0](reason, reg[2])
                                    except RecursionError as exc:
                                        tb = exc.__traceback__
                                        if not raised and tb is not None and tb.tb_next is None:
                                            raise  # never entered: again, with room
                                        failure = exc
                                    except BaseException as exc:  # G13
                                        failure = exc
                            stage = 2
                        if stage == 2:
                            if failure is not None:
                                _callback_failed(failure, self, ctx, "cancel")
                                failure = None
                            stage = 3
                        if stage == 3 and ctx is not None and what & _CANCELED:
                            stage = 4
                            hooks = ctx._hooks
                            if hooks is not None:
                                for hook in hooks:
                                    try:
                                        hook()
                                    except Exception:
                                        log.exception("cancelcore plumbing hook failed")
                    else:  # a deferred end finished (CC_NOTICE_ENDED)
                        if stage == 0:
                            stage = 1
                            ctx = self.deferred.pop(h, None)
                            if ctx is None:  # its end() has not filed it yet
                                ref = ops.get(h)
                                ctx = ref() if ref is not None else None
                            if values[i + 1]:
                                self.run_free_state(_registration(ctx, values[i + 1]), ctx)
                        self.done(h)
                    i += 3
                    stage = 0
                    ctx = None
            except BaseException as exc:  # between the steps above
                if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    _hold_interrupt(exc)  # a signal: resume notice i where it stopped
                elif isinstance(exc, RecursionError) and not raised:
                    # Called back on a nearly full stack: room to finish.
                    raised = sys.getrecursionlimit()
                    sys.setrecursionlimit(raised + 200)
                else:  # pragma: no cover - a bug of ours: skip the notice
                    log.exception("cancelcore: internal error handling a notice")
                    i += 3
                    stage = 0
        if raised:
            _restore_recursion_limit(raised)

    def _early(self, h: int, reason: CancelReason) -> None:
        self.early[h] = reason
        ref = self.ops.get(h)  # filed meanwhile: it did not see the entry
        ctx = ref() if ref is not None else None
        if ctx is not None:
            self.early.pop(h, None)
            ctx.cancel_reason = reason
            ctx.canceled = True


def _notices_failed(exc_type: Any, exc: BaseException, tb: Any) -> None:
    # The handler raised before it started (it catches everything after):
    # typically a RecursionError on entry, on a thread whose stack is nearly
    # full.  Returning 0 makes the C shim (ffibuild.py) call it once more
    # with room on the stack, so no cancel is lost.
    return None


def _restore_recursion_limit(limit: int) -> None:
    try:
        sys.setrecursionlimit(limit)
    except RecursionError:  # still deeper than that: leave the room given
        pass


_finalizing = False


@ffi.def_extern(onerror=_notices_failed)  # type: ignore[untyped-decorator]
def _cc_py_notices(arg: Any, notices: Any, count: int) -> int:
    """The binding function of every host (no lock held, G11), through the
    C shim ``cc_py_binding``.  1: started (and so handled every notice)."""
    b: Binding = _from_handle(arg)
    if _finalizing or b.inherited:
        return 1
    b.notices(_unpack(_cast("int64_t *", notices), 3 * count))
    return 1


# ------------------------------------------------------------- contexts


class OperationContext:
    """One in-flight operation.  Begun by ``Channel.begin_operation()`` or by
    ``ServiceHost.dispatch``; valid until ``end()`` (or the end of its
    ``with`` block), after which every use raises ``InvalidOperationError``
    (G10).  A context dropped without ``end()`` is ended when collected, with
    a ``ResourceWarning``.

    ``canceled`` and ``cancel_reason`` are plain attributes, set before any
    cancel callback runs: reading them costs an attribute load.
    """

    __slots__ = ("canceled", "cancel_reason", "_h", "_b", "_host", "_hooks", "_reg", "_deadline",
                 "__weakref__")

    canceled: bool
    cancel_reason: Optional[CancelReason]
    _h: int
    _b: Binding
    _host: ServiceHost
    _hooks: Optional[list[Callable[[], object]]]
    _reg: Optional[Registration]
    _deadline: Optional[float]

    def __init__(self) -> None:
        raise TypeError("operations are begun with Channel.begin_operation()")

    def __repr__(self) -> str:
        if not getattr(self, "_h", 0):
            return "<OperationContext ended>"
        if self.canceled:
            return f"<OperationContext canceled={self.cancel_reason!r}>"
        return "<OperationContext in flight>"

    # -------------------------------------------------------- registration

    def register_for_cancel(
        self,
        on_cancel: Callable[[CancelReason, Any], object],
        on_free_state: Optional[Callable[[Any], object]] = None,
        state: Any = None,
    ) -> None:
        """Registers ``on_cancel(reason, state)``, run at most once if the
        operation is canceled (G1), and ``on_free_state(state)``, run exactly
        once when it ends (G4).  Only the first registration succeeds (G2);
        on an operation already canceled, ``on_cancel`` runs here, on this
        thread, with the original reason (G3)."""
        if not callable(on_cancel):
            raise TypeError("on_cancel must be callable")
        if on_free_state is not None and not callable(on_free_state):
            raise TypeError("on_free_state must be callable or None")
        h = self._h
        if not h:
            raise InvalidOperationError("register on an operation that has ended")
        reg = (on_cancel, on_free_state, state)
        key = id(reg)
        # The core may name it (on any thread) as soon as it arms it: it is
        # in the table until this context has it.
        status = -1
        _arming[key] = reg
        try:
            status = _register(h, key, on_free_state is not None)
        finally:  # (also when a signal interrupts: never a half registration)
            if status == 0:
                self._reg = reg
            del _arming[key]
        if status:
            reraise_interrupts()
            if status == _E_INVALID_OPERATION:
                raise InvalidOperationError(
                    "the operation already has its registration, or has ended"
                )
            raise_status(status, "register_for_cancel")
        if _interrupts:
            reraise_interrupts()

    def raise_if_canceled(self) -> None:
        """Raises ``OperationCanceledError`` (with ``.reason``) if the
        operation has been canceled; returns ``None`` otherwise.  The check
        a handler makes between steps (after registering, before a query)."""
        if self.canceled:
            reason = self.cancel_reason
            assert reason is not None
            raise OperationCanceledError(reason)

    # ------------------------------------------------------------ deadline

    @property
    def deadline(self) -> Optional[float]:
        """When the operation is canceled if still running (a
        ``time.monotonic()`` value; ``CHANNEL_FAULTED``), or ``None``."""
        if not self._h:
            raise InvalidOperationError("the operation has ended")
        return self._deadline

    def time_remaining(self) -> Optional[float]:
        """Seconds left before the deadline: ``0.0`` once it has passed,
        ``None`` without a deadline (there is no budget to split)."""
        if not self._h:
            raise InvalidOperationError("the operation has ended")
        deadline = self._deadline
        if deadline is None:
            return None
        left = deadline - _monotonic()
        return left if left > 0.0 else 0.0

    def _add_hook(self, hook: Callable[[], object]) -> None:
        """Library plumbing: ``hook()`` runs when the operation is canceled,
        on the thread that canceled it (at once if it already was).  Hooks
        must be quick and idempotent: a race may run one twice."""
        # Copy on write: a notice runs the list it read, whatever is added
        # or removed meanwhile.
        with _hooks_lock:
            hooks = self._hooks
            self._hooks = [hook] if hooks is None else [*hooks, hook]
        if self.canceled:
            hook()

    def _remove_hook(self, hook: Callable[[], object]) -> None:
        """Library plumbing: a hook no longer needed (its outgoing call has
        finished), so an operation making many calls does not keep them."""
        with _hooks_lock:
            hooks = self._hooks
            if hooks is not None:
                kept = [h for h in hooks if h != hook]  # (a bound method: equal, not the same)
                self._hooks = kept or None

    # ------------------------------------------------------------------ end

    def end(self) -> None:
        """Ends the operation (its completion, G4/G5): no cancel callback
        starts after this; a running one is waited for; then free-state
        runs.  Called from inside its own cancel callback it returns at
        once and free-state runs when that callback returns."""
        h = self._h
        if not h:
            raise InvalidOperationError("the operation has already ended")
        self._h = 0
        b = self._b
        r = _end(h)
        if r < 0:
            if r == _E_INVALID_OPERATION:
                raise InvalidOperationError("the operation has already ended")
            raise_status(r, "end")
        self.__class__ = _EndedOperationContext
        if r == _DEFERRED:
            # The core finishes it later and tells the binding (CC_NOTICE_
            # ENDED): its registration must live until then.  If that came
            # first (on another thread), the operation is filed no more.
            b.deferred[h] = self
            if h not in b.ops:
                b.deferred.pop(h, None)
        else:
            # Binding.run_free_state and Binding.done, inlined: this is the
            # path every operation takes.
            try:
                if r:
                    reg = self._reg
                    if reg is None or id(reg) != r:
                        reg = _registration(self, r)
                    if reg is not None and reg[1] is not None:
                        try:
                            reg[1](reg[2])
                        except BaseException as exc:  # G13
                            _callback_failed(exc, b, self, "free_state")
            finally:  # completed, even if a signal lands here (close waits)
                b.ops.pop(h, None)
                if b.closing:
                    b.wake()
        if _interrupts:
            reraise_interrupts()

    def __enter__(self) -> OperationContext:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._h:
            self.end()


class _LiveOperationContext(OperationContext):
    """What a context is while in flight: if it is collected without end(),
    its operation ends then.  (Ended contexts change class, so they pay for
    no finalizer.)"""

    __slots__ = ()

    def __del__(self) -> None:
        b = self._b
        if self._h and not _finalizing and not b.inherited and not b.freed:
            warnings.warn(f"{self!r} was dropped without end(); ending it now",
                          ResourceWarning, stacklevel=1)
            try:
                self.end()
            except Exception:  # pragma: no cover - ended meanwhile
                pass


class _EndedOperationContext(OperationContext):
    """What a context becomes once ended: every read is an error (G10).
    The class swap keeps ``canceled`` a plain attribute while in flight."""

    __slots__ = ()

    @property
    def canceled(self) -> bool:  # type: ignore[override]
        raise InvalidOperationError("the operation has ended")

    @property
    def cancel_reason(self) -> Optional[CancelReason]:  # type: ignore[override]
        raise InvalidOperationError("the operation has ended")


# The frames user callbacks run under (see inside_callback_of).
_CALLBACK_CODES = (
    Binding.notices.__code__,
    Binding.run_free_state.__code__,
    OperationContext.end.__code__,
)

_new_context = object.__new__
