"""Helpers for tests/test_asgi.py: a real uvicorn server in a background
thread, raw TCP clients with precise disconnects, and thread-safe records of
what each request's callbacks saw.

- ``LiveServer``: uvicorn on 127.0.0.1, on an ephemeral port bound before the
  server starts (a pre-bound socket handed to ``Server.run(sockets=...)``),
  run in a daemon thread; ``start()`` waits for ``server.started``, ``stop()``
  sets ``should_exit`` and joins, bounded.  Every record that uvicorn,
  asyncio or cancelcore log while it runs is kept in ``.records``.
- ``Probe`` / ``Probes``: per-request records (cancel reasons with times and
  threads, free-states, whether the handler's task saw ``CancelledError``).
- ``open_request`` / ``read_response`` / ``close_fin`` / ``close_rst``: an
  HTTP/1.1 client on a plain socket, so a test decides exactly when the
  connection goes away (FIN or RST) and what it has read by then.
"""

from __future__ import annotations

import logging
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

import uvicorn

from cancelcore import CancelReason, current_operation
from cancelcore.asgi import CancellationMiddleware, uvicorn_server
from measure import percentile  # support/ (on sys.path via conftest): shared with bench/, examples/

HOST = "127.0.0.1"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 15.0
WAIT = 5.0  # default bound for any wait on the server's side


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT, interval: float = 0.002) -> bool:
    """Polls ``predicate`` until it is true or ``timeout`` passes; returns
    its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return bool(predicate())
        time.sleep(interval)


# ------------------------------------------------------------------ records


class Probe:
    """What one request's callbacks and handler saw.  Thread-safe: cancel
    callbacks run on whichever thread faults or aborts, free-states where the
    operation ends, handlers on the loop or in a thread pool."""

    def __init__(self, key: Any) -> None:
        self.key = key
        self.lock = threading.Lock()
        self.cancels: list[tuple[CancelReason, Any, float, int]] = []  # reason, state, t, thread
        self.frees: list[tuple[Any, float, int]] = []  # state, t, thread
        self.cancel_after_free = False
        self.task_cancelled = 0  # CancelledError seen by the handler
        self.completed = False  # the handler ran to its end
        self.chunks_sent = 0  # streaming handlers
        self.ctx: Any = None
        self.ctx_thread: Optional[int] = None
        self.notes: dict[str, Any] = {}
        self.entered = threading.Event()
        self.canceled_event = threading.Event()
        self.freed = threading.Event()
        self.released = threading.Event()  # set by on_cancel, for sync handlers

    # callbacks ------------------------------------------------------------

    def on_cancel(self, reason: CancelReason, state: Any) -> None:
        t = time.perf_counter()
        with self.lock:
            if self.frees:
                self.cancel_after_free = True
            self.cancels.append((reason, state, t, threading.get_ident()))
        self.released.set()
        self.canceled_event.set()

    def on_free(self, state: Any) -> None:
        t = time.perf_counter()
        with self.lock:
            self.frees.append((state, t, threading.get_ident()))
        self.freed.set()

    # views ----------------------------------------------------------------

    @property
    def n_cancel(self) -> int:
        with self.lock:
            return len(self.cancels)

    @property
    def n_free(self) -> int:
        with self.lock:
            return len(self.frees)

    @property
    def reasons(self) -> list[CancelReason]:
        with self.lock:
            return [c[0] for c in self.cancels]

    @property
    def cancel_time(self) -> float:
        with self.lock:
            return self.cancels[0][2]

    def __repr__(self) -> str:
        return (f"<Probe {self.key!r} cancels={self.reasons} frees={self.n_free} "
                f"task_cancelled={self.task_cancelled} completed={self.completed}>")


class Probes:
    """Probes by request key, created on first use."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_key: dict[Any, Probe] = {}

    def __getitem__(self, key: Any) -> Probe:
        with self.lock:
            probe = self.by_key.get(key)
            if probe is None:
                probe = self.by_key[key] = Probe(key)
            return probe

    def register(self, key: Any) -> Probe:
        """Inside a request: registers the probe's callbacks on the request's
        operation (``current_operation()``, with the key as state) and marks
        the handler as entered."""
        probe = self[key]
        ctx = current_operation()
        assert ctx is not None, "current_operation() is None inside a request"
        probe.ctx = ctx
        probe.ctx_thread = threading.get_ident()
        ctx.register_for_cancel(probe.on_cancel, probe.on_free, key)
        probe.entered.set()
        return probe

    def values(self) -> list[Probe]:
        with self.lock:
            return list(self.by_key.values())


# ------------------------------------------------------------------- server


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self.guard:
            self.records.append(record)


_WATCHED_LOGGERS = ("uvicorn", "asyncio", "cancelcore")


class LiveServer:
    """A uvicorn server for one test.  ``config`` goes to ``uvicorn.Config``
    (h11, the asyncio loop, no access log and no logging config of its own
    unless overridden)."""

    def __init__(self, app: Any, **config: Any) -> None:
        self.app = app
        # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets whose
        # proto says TCP, and accepted sockets inherit it (else Nagle stalls
        # keep-alive responses by ~40 ms).
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((HOST, 0))
        self.sock.listen(256)
        self.port: int = self.sock.getsockname()[1]
        options: dict[str, Any] = dict(
            http="h11", loop="asyncio", lifespan="on", log_config=None,
            access_log=False, timeout_graceful_shutdown=8,
        )
        options.update(config)
        self.config = uvicorn.Config(app, **options)
        # A middleware's server closes its host at shutdown, as serve() does.
        self.server = (uvicorn_server(self.config) if isinstance(app, CancellationMiddleware)
                       else uvicorn.Server(self.config))
        self.thread = threading.Thread(target=self._run, name=f"uvicorn-{self.port}", daemon=True)
        self.error: Optional[BaseException] = None
        self.stop_seconds: Optional[float] = None
        self._collector = _Collect()
        self._levels: dict[str, int] = {}
        self._stopped = False

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def _run(self) -> None:
        try:
            self.server.run(sockets=[self.sock])
        except BaseException as exc:  # reported by start()/stop()
            self.error = exc

    def start(self) -> LiveServer:
        for name in _WATCHED_LOGGERS:
            logger = logging.getLogger(name)
            self._levels[name] = logger.level
            if logger.getEffectiveLevel() > logging.INFO:
                logger.setLevel(logging.INFO)
            logger.addHandler(self._collector)
        self.thread.start()
        ok = wait_until(lambda: self.server.started or not self.thread.is_alive(), START_TIMEOUT)
        if not (ok and self.server.started):
            self.stop()
            raise RuntimeError(f"uvicorn did not start: {self.error!r}; logs: {self.log_lines()}")
        return self

    def stop(self, timeout: float = STOP_TIMEOUT) -> float:
        """Asks the server to exit (as a signal would) and joins it; returns
        how long that took.  A server that does not stop is forced, and the
        call raises."""
        if self._stopped:
            return self.stop_seconds or 0.0
        self._stopped = True
        t0 = time.monotonic()
        self.server.should_exit = True
        self.thread.join(timeout)
        hung = self.thread.is_alive()
        if hung:
            self.server.force_exit = True
            self.thread.join(5.0)
        self.stop_seconds = time.monotonic() - t0
        for name in _WATCHED_LOGGERS:
            logger = logging.getLogger(name)
            logger.removeHandler(self._collector)
            logger.setLevel(self._levels.get(name, logging.NOTSET))
        try:
            self.sock.close()
        except OSError:
            pass
        if hung:
            raise AssertionError(f"uvicorn did not stop within {timeout} s; logs: {self.log_lines()}")
        return self.stop_seconds

    # logs -----------------------------------------------------------------

    @property
    def records(self) -> list[logging.LogRecord]:
        with self._collector.guard:
            return list(self._collector.records)

    def log_lines(self, level: int = logging.DEBUG) -> list[str]:
        out = []
        for r in self.records:
            if r.levelno >= level:
                line = f"{r.levelname} {r.name}: {r.getMessage()}"
                if r.exc_info and r.exc_info[1] is not None:
                    line += f" [{type(r.exc_info[1]).__name__}: {r.exc_info[1]}]"
                out.append(line)
        return out

    def problems(self, allow: Iterable[str] = ()) -> list[str]:
        """WARNING-or-worse log lines not matching one of the ``allow``
        regular expressions."""
        patterns = [re.compile(p) for p in allow]
        return [line for line in self.log_lines(logging.WARNING)
                if not any(p.search(line) for p in patterns)]

    @property
    def open_connections(self) -> int:
        return len(self.server.server_state.connections)

    @property
    def running_tasks(self) -> int:
        return len(self.server.server_state.tasks)


# ------------------------------------------------------------------- client


def open_request(port: int, path: str, *, keep_alive: bool = False, timeout: float = WAIT,
                 method: str = "GET", body: bytes = b"",
                 content_length: Optional[int] = None) -> socket.socket:
    """Connects and sends one HTTP/1.1 request; returns the socket.  A
    ``content_length`` larger than ``body`` leaves the upload unfinished."""
    s = socket.create_connection((HOST, port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    head = f"{method} {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
    if not keep_alive:
        head += "Connection: close\r\n"
    if content_length is not None or body or method in ("POST", "PUT"):
        head += f"Content-Length: {len(body) if content_length is None else content_length}\r\n"
    s.sendall(head.encode("ascii") + b"\r\n" + body)
    return s


def close_fin(s: socket.socket) -> float:
    """Closes normally (FIN); returns the time just before, perf_counter."""
    t = time.perf_counter()
    s.close()
    return t


def close_rst(s: socket.socket) -> float:
    """Closes with a reset (SO_LINGER 0); returns the time just before."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    t = time.perf_counter()
    s.close()
    return t


@dataclass
class Response:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


class _Reader:
    def __init__(self, s: socket.socket) -> None:
        self.s = s
        self.buf = b""

    def fill(self) -> bool:
        data = self.s.recv(65536)
        if not data:
            return False
        self.buf += data
        return True

    def until(self, sep: bytes) -> bytes:
        while sep not in self.buf:
            if not self.fill():
                raise ConnectionError(f"closed before {sep!r}; got {self.buf[:200]!r}")
        head, _, self.buf = self.buf.partition(sep)
        return head

    def exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self.fill():
                raise ConnectionError(f"closed after {len(self.buf)} of {n} bytes")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out


def read_response(s: socket.socket, timeout: float = WAIT) -> Response:
    """Reads one complete response (Content-Length, chunked, or to EOF)."""
    s.settimeout(timeout)
    r = _Reader(s)
    head = r.until(b"\r\n\r\n").decode("latin-1").split("\r\n")
    status = int(head[0].split()[1])
    headers = {}
    for line in head[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        body = r.exactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while True:
            size = int(r.until(b"\r\n").split(b";")[0], 16)
            if size == 0:
                r.until(b"\r\n")
                break
            parts.append(r.exactly(size))
            r.exactly(2)
        body = b"".join(parts)
    else:
        while r.fill():
            pass
        body = r.buf
    return Response(status, headers, body)


def read_until_count(s: socket.socket, marker: bytes, count: int, timeout: float = WAIT) -> bytes:
    """Reads raw bytes until ``marker`` occurred ``count`` times."""
    s.settimeout(timeout)
    data = b""
    while data.count(marker) < count:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {data.count(marker)} of {count} {marker!r}")
        data += chunk
    return data
