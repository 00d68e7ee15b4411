"""Shared fixtures for the cancelcore test suite.

- ``watchdog`` (autouse): a deadlock dumps every thread's stack and kills the
  run instead of hanging it (faulthandler, 60 s per test).
- ``host`` / ``make_host``: open hosts that are cleaned up at teardown: any
  operation a test left in flight is ended, then the host is closed.
- ``error_hook``: collects what reaches ``set_callback_error_hook`` and
  restores the previous hook afterwards.
- ``Recorder``: what an operation's callbacks saw (counts, reasons, threads,
  order), thread-safe.
"""

from __future__ import annotations

import faulthandler
import os
import subprocess
import sys
import textwrap
import threading
from typing import Any, Callable, Iterator, Optional

import pytest

# support/ holds the measurement helpers the tests share with bench/ and
# examples/ (``import measure``); it is not part of the package.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "support"))

import cancelcore  # noqa: E402
from cancelcore import CancelReason, HostState, InvalidOperationError, ServiceHost  # noqa: E402

# Seconds a single test may run before the watchdog dumps and exits.
WATCHDOG_SECONDS = float(os.environ.get("CANCELCORE_TEST_WATCHDOG", "60"))
_watchdog_fd: Optional[int] = None


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    # The real stderr, duplicated while output capture is suspended: a dump
    # written to the captured fd 2 would vanish with the process.
    global _watchdog_fd
    try:
        _watchdog_fd = os.dup(2)
    except OSError:
        _watchdog_fd = None


@pytest.fixture(autouse=True)
def watchdog() -> Iterator[None]:
    """Dumps all stacks and exits the process if one test runs > 60 s, so a
    deadlock fails the suite rather than hanging it."""
    target: Any = _watchdog_fd if _watchdog_fd is not None else sys.__stderr__
    faulthandler.dump_traceback_later(WATCHDOG_SECONDS, exit=True, file=target)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


def run_isolated(code: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Runs ``code`` in a child interpreter (for scenarios that could
    deadlock: a hang there fails one test instead of the session).  A child
    that outlives ``timeout`` is killed and reported as returncode -9 with
    ``TIMEOUT`` appended to its stdout."""
    try:
        return subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        return subprocess.CompletedProcess(exc.cmd, -9, out + "TIMEOUT\n", err)


def cleanup_host(host: ServiceHost) -> None:
    """Ends whatever a test left in flight, then closes the host."""
    for ctx in list(host._live):
        try:
            ctx.end()
        except InvalidOperationError:
            pass
    if host.state in (HostState.OPEN, HostState.FAULTED):
        host.close(timeout=5.0)


@pytest.fixture
def make_host() -> Iterator[Callable[..., ServiceHost]]:
    """A factory of open hosts (``make_host(close_timeout=..., open=True)``),
    each cleaned up at teardown."""
    hosts: list[ServiceHost] = []

    def factory(close_timeout: float = 5.0, open: bool = True, **kw: Any) -> ServiceHost:
        h = ServiceHost(close_timeout=close_timeout, **kw)
        hosts.append(h)
        if open:
            h.open()
        return h

    yield factory
    for h in reversed(hosts):
        cleanup_host(h)


@pytest.fixture
def host(make_host: Callable[..., ServiceHost]) -> ServiceHost:
    """An open host with the default close timeout."""
    return make_host()


@pytest.fixture
def channel(host: ServiceHost) -> cancelcore.Channel:
    return host.accept_channel()


class HookCollector:
    def __init__(self) -> None:
        self.calls: list[tuple[BaseException, Any, str]] = []
        self.lock = threading.Lock()

    def __call__(self, exc: BaseException, ctx: Any, where: str) -> None:
        with self.lock:
            self.calls.append((exc, ctx, where))

    @property
    def wheres(self) -> list[str]:
        return [w for _, _, w in self.calls]


@pytest.fixture
def error_hook() -> Iterator[HookCollector]:
    """Installs a collecting callback-error hook; restores the old one."""
    collector = HookCollector()
    previous = cancelcore.set_callback_error_hook(collector)
    try:
        yield collector
    finally:
        cancelcore.set_callback_error_hook(previous)


class Recorder:
    """Records the callbacks of one operation.  ``on_cancel`` and
    ``on_free`` can be passed to ``register_for_cancel``; ``before_cancel``/
    ``after_cancel`` hooks let a test act inside the cancel callback."""

    def __init__(self, inside_cancel: Optional[Callable[[CancelReason, Any], None]] = None) -> None:
        self.lock = threading.Lock()
        self.events: list[str] = []
        self.cancels: list[tuple[CancelReason, Any, int]] = []  # reason, state, thread
        self.frees: list[tuple[Any, int]] = []
        self.cancel_running = False
        self.overlap = False  # free-state ran while cancel was running
        self.cancel_after_free = False
        self.inside_cancel = inside_cancel
        self.cancel_started = threading.Event()
        self.cancel_done = threading.Event()

    def on_cancel(self, reason: CancelReason, state: Any) -> None:
        with self.lock:
            if self.frees:
                self.cancel_after_free = True
            self.cancel_running = True
            self.cancels.append((reason, state, threading.get_ident()))
            self.events.append("cancel-start")
        self.cancel_started.set()
        try:
            if self.inside_cancel is not None:
                self.inside_cancel(reason, state)
        finally:
            with self.lock:
                self.cancel_running = False
                self.events.append("cancel-end")
            self.cancel_done.set()

    def on_free(self, state: Any) -> None:
        with self.lock:
            if self.cancel_running:
                self.overlap = True
            self.frees.append((state, threading.get_ident()))
            self.events.append("free")

    @property
    def n_cancel(self) -> int:
        return len(self.cancels)

    @property
    def n_free(self) -> int:
        return len(self.frees)

    @property
    def reasons(self) -> list[CancelReason]:
        return [r for r, _, _ in self.cancels]
