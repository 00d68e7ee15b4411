"""Operation contexts: the Python face of one in-flight call (G1-G5, G10, G13).

Every operation is begun in C together with one registration that points at
the trampoline ``_cc_py_cancel`` (``cc_op_begin_with_cancel``: one crossing).
That registration is the library's own: the user's ``register_for_cancel``
is kept in Python, so dispatch's plumbing never takes it (DESIGN 3).  C then
guarantees the cancel-once state (G1), that ``cc_op_end`` waits for a running
trampoline (G5) and that no trampoline starts after the end began.

What Python adds on top is arbitrated by claims: a set of tokens per context
whose ``remove`` is atomic under the GIL.  ``_REG`` is the one registration
(G2; taken by the end too, so no registration succeeds after it began),
``_FIRE`` the one run of the user's cancel callback (G1; taken by the end
too, so no cancel starts after completion, G5), ``_END`` the one end (G10).  The free-state callback runs in Python right after ``cc_op_end``
returns, so completing an operation costs no C-to-Python round trip.
"""

from __future__ import annotations

import logging
import threading
import time
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Callable, Optional

from ._cancelcore import ffi, lib
from ._enums import CancelReason
from ._errors import raise_status

if TYPE_CHECKING:
    from ._host import ServiceHost

__all__ = [
    "OperationContext",
    "current_operation",
    "set_callback_error_hook",
    "CallbackErrorHook",
]

log = logging.getLogger("cancelcore")

_REG, _FIRE, _END = 0, 1, 2
_REASONS = (CancelReason.HOST_ABORT, CancelReason.CHANNEL_FAULTED)
_get_ident = threading.get_ident
_sleep = time.sleep
_op_end = lib.cc_op_end
_visit_register_faults = lib.cc_op_visit_register_faults

_current: ContextVar[Optional[OperationContext]] = ContextVar(
    "cancelcore_current_operation", default=None
)


def current_operation() -> Optional[OperationContext]:
    """The context of the operation running in this thread or task (set by
    ``dispatch`` and the server adapters), or ``None`` outside one."""
    return _current.get()


# ------------------------------------------------------------ errors (G13)

CallbackErrorHook = Callable[[BaseException, "OperationContext", str], None]


def _log_error(exc: BaseException, ctx: OperationContext, where: str) -> None:
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


def _report(exc: BaseException, ctx: OperationContext, where: str) -> None:
    lib.cc_host_report_callback_error(ctx._host._ptr)
    try:
        _hook(exc, ctx, where)
    except BaseException:  # a failing hook must not break G1-G5 either
        log.exception("callback error hook failed")


def _claim(tokens: set[int], token: int) -> bool:
    try:
        tokens.remove(token)
    except KeyError:
        return False
    return True


# ------------------------------------------------------------- contexts


class OperationContext:
    """One in-flight operation.  Begun by ``Channel.begin_operation()`` or by
    ``ServiceHost.dispatch``; valid until ``end()`` (or the end of its
    ``with`` block), after which every use raises ``InvalidOperationError``.

    ``canceled`` and ``cancel_reason`` are plain attributes, set before any
    cancel callback runs: reading them costs an attribute load.
    """

    __slots__ = (
        "canceled",
        "cancel_reason",
        "_op",
        "_host",
        "_handle",
        "_tokens",
        "_user",
        "_hooks",
        "_firing",
        "_deferred",
        "_sync_done",
        "__weakref__",
    )

    canceled: bool
    cancel_reason: Optional[CancelReason]
    _op: Any
    _host: ServiceHost
    _handle: Any
    _tokens: set[int]
    _user: Optional[tuple[Callable[[CancelReason, Any], object], Optional[Callable[[Any], object]], Any]]
    _hooks: Optional[list[Callable[[], object]]]
    _firing: Optional[int]
    _deferred: bool
    _sync_done: Optional[threading.Event]

    def __init__(self) -> None:
        raise TypeError("operations are begun with Channel.begin_operation()")

    def __repr__(self) -> str:
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
        tokens = self._tokens
        if _END not in tokens:
            raise _invalid("register on an operation that has ended")
        try:
            tokens.remove(_REG)
        except KeyError:
            if _END not in tokens:
                raise _invalid("register on an operation that has ended") from None
            raise _invalid("the operation already has its registration") from None
        if self._host._faults_armed:
            # The fault plan's REGISTER point: a channel fault or abort lands
            # here, before the callbacks are published, so on_cancel runs
            # below (G3); NOMEM fails the registration, changing nothing.
            # Callbacks it runs on this thread may end this very operation:
            # like C, that end is deferred to us, and the registration fails.
            self._firing = _get_ident()
            try:
                status = _visit_register_faults(self._op)
            finally:
                self._firing = None
            if self._deferred:
                self._finish()
                raise _invalid("the operation ended during its registration")
            if status:
                tokens.add(_REG)
                raise_status(status, "register_for_cancel")
        self._user = (on_cancel, on_free_state, state)
        if self.canceled:
            # The cancel was delivered before this registration (G3).  An end
            # on another thread that loses the _FIRE claim to us waits for
            # this event, so free-state never overlaps the callback (G5).
            done = self._sync_done = threading.Event()
            try:
                if _claim(tokens, _FIRE):
                    self._run_cancel(on_cancel, state)
            finally:
                done.set()

    def _run_cancel(self, on_cancel: Callable[[CancelReason, Any], object], state: Any) -> None:
        """Runs the user's cancel callback; only the holder of _FIRE calls
        this, so only it can owe the finish of an end deferred from inside
        the callback."""
        reason = self.cancel_reason
        assert reason is not None
        next(self._host._cancel_callbacks)
        self._firing = _get_ident()
        try:
            on_cancel(reason, state)
        except BaseException as exc:  # G13: never escapes into the library
            _report(exc, self, "cancel")
        finally:
            self._firing = None
        if self._deferred:
            self._finish()

    def _add_hook(self, hook: Callable[[], object]) -> None:
        """Library plumbing: ``hook()`` runs when the operation is canceled
        (at once if it already was).  Hooks must be idempotent and quick."""
        if self._hooks is None:
            self._hooks = [hook]
        else:
            self._hooks.append(hook)
        if self.canceled:
            hook()

    def raise_if_canceled(self) -> None:
        """Raises ``OperationCanceledError`` (with ``.reason``) if the
        operation has been canceled; returns ``None`` otherwise.  The check
        a handler makes between steps (after registering, before a query)."""
        if self.canceled:
            from ._errors import OperationCanceledError

            reason = self.cancel_reason
            assert reason is not None
            raise OperationCanceledError(reason)

    # ------------------------------------------------------------------ end

    def end(self) -> None:
        """Ends the operation (its completion, G4/G5): no cancel callback
        starts after this; a running one is waited for; then free-state
        runs.  Called from inside its own cancel callback it returns at
        once and free-state runs when that callback returns."""
        tokens = self._tokens
        try:
            tokens.remove(_END)
        except KeyError:
            raise _invalid("the operation has already ended") from None
        firing = self._firing
        if firing is not None and firing == _get_ident():
            # Inside our own cancel callback (or registration): C defers its
            # end likewise, and the frame below us finishes the operation.
            self._deferred = True
            tokens.discard(_REG)
            _op_end(self._op)
            return
        try:
            tokens.remove(_REG)  # no registration can succeed from here on
        except KeyError:
            # One claimed it first: wait the few bytecodes until it has
            # published its callbacks (or given the claim back), so
            # free-state is not missed (G4).
            while self._user is None:
                try:
                    tokens.remove(_REG)
                    break
                except KeyError:
                    _sleep(0)
        # C first: from here no trampoline starts, a running one is waited
        # for, and a cancel injected by the fault plan at END runs inside.
        _op_end(self._op)
        try:
            tokens.remove(_FIRE)  # from here on no user cancel starts (G5)
        except KeyError:
            done = self._sync_done
            if done is not None:
                done.wait()  # a run inside register (G3) is waited for too
        self._finish()

    def _finish(self) -> None:
        host = self._host
        user = self._user
        self._handle = None
        self.__class__ = _EndedOperationContext
        if user is not None and user[1] is not None:
            next(host._free_states)
            self._firing = _get_ident()  # close() from in here is refused
            try:
                user[1](user[2])
            except BaseException as exc:  # G13
                _report(exc, self, "free_state")
            finally:
                self._firing = None
        # Only now has the operation completed: close() waits for this (G8).
        host._live.discard(self)
        if host._closing:
            host._notify_idle()

    def __enter__(self) -> OperationContext:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if _END in self._tokens:
            self.end()


def _invalid(message: str) -> Exception:
    from ._errors import InvalidOperationError

    return InvalidOperationError(message)


class _EndedOperationContext(OperationContext):
    """What a context becomes once ended: every use is an error (G10).  The
    class swap keeps ``canceled`` a plain attribute while in flight."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<OperationContext ended>"

    @property
    def canceled(self) -> bool:  # type: ignore[override]
        raise _invalid("the operation has ended")

    @property
    def cancel_reason(self) -> Optional[CancelReason]:  # type: ignore[override]
        raise _invalid("the operation has ended")

    def register_for_cancel(self, *args: Any, **kwargs: Any) -> None:
        raise _invalid("register on an operation that has ended")

    def end(self) -> None:
        raise _invalid("the operation has already ended")

    def __exit__(self, *exc_info: object) -> None:
        pass


_new_context = object.__new__


def new_context(host: ServiceHost) -> OperationContext:
    """A context for an operation about to begin (see Channel)."""
    ctx: OperationContext = _new_context(OperationContext)
    ctx.canceled = False
    ctx.cancel_reason = None
    ctx._host = host
    ctx._tokens = {_REG, _FIRE, _END}
    ctx._user = ctx._hooks = ctx._firing = ctx._sync_done = None
    ctx._deferred = False
    ctx._handle = _new_handle(ctx)
    return ctx


_new_handle = ffi.new_handle


# ------------------------------------------------------------ trampoline

_finalizing = False


def _trampoline_error(exc_type: Any, exc: BaseException, tb: Any) -> None:
    # Only the library's own code can get here; user errors are caught below.
    log.error("internal error in cancel trampoline", exc_info=exc)


@ffi.def_extern(onerror=_trampoline_error)  # type: ignore[untyped-decorator]
def _cc_py_cancel(reason: int, handle: Any) -> None:
    """C's cancel callback for every Python operation (no lock held, G11).
    C runs it at most once per operation, and never after the end began."""
    if _finalizing:
        return
    ctx: OperationContext = ffi.from_handle(handle)
    ctx.cancel_reason = _REASONS[reason]
    ctx.canceled = True
    user = ctx._user
    if user is not None and _claim(ctx._tokens, _FIRE):
        ctx._run_cancel(user[0], user[2])
    hooks = ctx._hooks
    if hooks is not None:
        for hook in hooks:
            try:
                hook()
            except Exception:
                log.exception("cancelcore plumbing hook failed")
