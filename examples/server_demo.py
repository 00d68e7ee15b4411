"""A real server, real clients, checked.

    python examples/server_demo.py [--requests N] [--seed N] [--plain | --live]

Needs uvicorn and Starlette (``pip install 'cancelcore[asgi]' starlette``).
(``make demo`` runs ``service_demo.py``, then this.)

A real uvicorn server (in a thread of this process, on a free loopback port)
runs a Starlette application wrapped in
:class:`cancelcore.asgi.CancellationMiddleware`.  Its three endpoints each
register an ``on_cancel`` / ``on_free_state`` pair on their request's
operation (``cancelcore.current_operation()``):

* ``/query/{id}`` (``async def``): a "slow query" that awaits
  ``asyncio.sleep`` in steps; when its request is canceled its task sees
  ``CancelledError``;
* ``/work/{id}`` (``def``, run in Starlette's thread pool): blocks its worker
  thread on a ``threading.Event`` that its ``on_cancel`` sets -- the way to
  stop a worker thread that nothing else can interrupt;
* ``/stream/{id}``: a ``StreamingResponse`` yielding chunks.

Concurrent TCP clients (non-blocking sockets on an asyncio loop in the main
thread, one request per connection) drive it: some read their whole
response, some close the connection while their request is still running
(half with FIN, half with RST), some read a few chunks of a stream and
leave.  Meanwhile a set of long requests starts, and a few short ones just
before the server is told to exit (``server.should_exit``, as SIGTERM does)
while they are all in flight: uvicorn waits ``timeout_graceful_shutdown``
(1 s) -- the short ones finish in it -- then gives up on the rest, which the
middleware turns into ``HOST_ABORT``.  Lifespan shutdown closes the host.

Every callback writes to the demo's books, which are checked against what
each client saw, against ``host.stats`` and against the guarantees: every
free-state ran exactly once, every cancel callback at most once and only for
requests that were abandoned (``CHANNEL_FAULTED``) or cut by the shutdown
(``HOST_ABORT``).  Exit status 1 if a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import random
import socket
import struct
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Optional, TextIO

from cancelcore import CancelReason, HostState, current_operation

# This folder (a script's own) holds the other demo; support/ holds the
# measurement helpers shared with the tests and the benchmarks.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "support"))
from measure import percentile  # noqa: E402
from service_demo import ConnectionPool, Ledger, Progress  # noqa: E402

__all__ = ["main", "run_server_demo"]

HOST = "127.0.0.1"
CONCURRENCY = 30  # clients in flight during the traffic phase
GRACE = 3  # uvicorn's timeout_graceful_shutdown, seconds: a backstop after the host's close_timeout
CLOSE_TIMEOUT = 1.0  # the middleware host's close timeout
STEP = 0.02  # a slow query's sleep step; a stream's pause between chunks
LONG = 30.0  # "long" requests only end by being canceled
HELD_SHARE = 0.10  # share of the requests still in flight at the shutdown
HELD_MAX = 24  # (below the 40 threads of Starlette's pool: every sync one runs)
GRACEFUL_SHARE = 0.025  # short requests that finish inside the grace period
CLIENT_TIMEOUT = 10.0  # bound of every client-side wait
START_TIMEOUT = 10.0
STOP_TIMEOUT = 15.0
MIN_REQUESTS, MAX_REQUESTS = 20, 2000

KINDS = ("query", "work", "stream")
KIND_TEXT = {
    "query": "async, a slow query",
    "work": "sync, blocks a pool thread",
    "stream": "streaming response",
}
# What a request is planned to do: read its whole response; leave early;
# be in flight (long) at shutdown; be in flight (short) at shutdown.
FATES = ("complete", "leave", "shutdown", "graceful")

_now = time.perf_counter


# ------------------------------------------------------------------ books


@dataclass
class Req:
    """One request: its plan, what its client saw, what its server saw."""

    rid: int
    kind: str
    fate: str
    seconds: float = 0.0  # query/work: how long the handler runs if not canceled
    chunks: int = 0  # stream: chunks the handler yields if not canceled
    leave_after: float = 0.0  # query/work leaving: seconds after the handler entered
    leave_chunks: int = 0  # stream leaving: chunks read before leaving
    rst: bool = False  # leaving with a reset instead of a FIN
    # client side (the client loop's thread only)
    entered: Optional[asyncio.Event] = None
    closed_at: Optional[float] = None  # just before the client's close()
    status: Optional[int] = None
    got: str = "not sent"  # what the client ended with
    # server side (under Books.lock)
    entries: int = 0
    had_context: bool = False
    handler_thread: str = ""
    cancels: list[tuple[CancelReason, float, str]] = field(default_factory=list)
    frees: list[float] = field(default_factory=list)
    handler_done_at: Optional[float] = None
    handler_outcome: str = "not run"
    last_chunk_at: Optional[float] = None
    chunks_sent: int = 0
    stop: Optional[threading.Event] = None  # work: set by on_cancel
    released_at: Optional[float] = None  # work: when its Event woke it


def _on_cancel(reason: CancelReason, req: Req) -> None:
    t = _now()
    with _lock:
        req.cancels.append((reason, t, threading.current_thread().name))
    if req.stop is not None:
        req.stop.set()  # wakes the blocked worker thread


def _on_free(req: Req) -> None:
    t = _now()
    with _lock:
        req.frees.append(t)


_lock = threading.Lock()


class Books:
    """Everything that happened, written by the clients and the callbacks."""

    def __init__(self, plan: list[Req]) -> None:
        self.plan = plan
        self.lock = _lock
        self.clock = Ledger(ConnectionPool(0))  # the existing demo's clock, for Progress
        self.loop: Optional[asyncio.AbstractEventLoop] = None  # the clients' loop

    def now(self) -> float:
        return self.clock.now()

    # inside the server --------------------------------------------------

    def enter(self, rid_text: str) -> Req:
        """A handler starts: registers its request's callbacks."""
        req = self.plan[int(rid_text)]
        ctx = current_operation()
        if req.kind == "work":
            req.stop = threading.Event()
        with self.lock:
            req.entries += 1
            req.had_context = ctx is not None
            req.handler_thread = threading.current_thread().name
        if ctx is not None:
            ctx.register_for_cancel(_on_cancel, _on_free, req)
        loop, event = self.loop, req.entered
        if loop is not None and event is not None:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # the clients' loop has closed
                pass
        return req

    def handler_done(self, req: Req, outcome: str) -> None:
        t = _now()
        with self.lock:
            req.handler_done_at = t
            req.handler_outcome = outcome

    # figures ------------------------------------------------------------

    def counts(self) -> Counter[str]:
        c: Counter[str] = Counter()
        with self.lock:
            for req in self.plan:
                if req.got != "not sent":
                    c["sent"] += 1
                if req.got == "sending":
                    c["in flight"] += 1
                if req.got.startswith("200 complete"):
                    c["completed"] += 1
                if req.got == "left":
                    c["left"] += 1
                if req.cancels:
                    c["canceled"] += 1
                    c[req.cancels[0][0].name] += 1
                c["cancel callbacks"] += len(req.cancels)
                c["frees"] += len(req.frees)
                c["entered"] += 1 if req.entries else 0
        return c


# ------------------------------------------------------------ the server


def build_app(books: Books) -> Any:
    """The Starlette application (not yet wrapped)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response, StreamingResponse
    from starlette.routing import Route

    async def query(request: Request) -> Response:
        req = books.enter(request.path_params["rid"])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + req.seconds
        try:
            steps = 0
            while loop.time() < deadline:
                await asyncio.sleep(min(STEP, max(deadline - loop.time(), 0.0)))
                steps += 1
        except asyncio.CancelledError:
            books.handler_done(req, "saw CancelledError")
            raise
        books.handler_done(req, "completed")
        return PlainTextResponse(f"query {req.rid}: {steps} steps\n")

    def work(request: Request) -> Response:
        # A def endpoint: Starlette runs it in its thread pool, where nothing
        # but its own code can stop it.  It waits on the Event on_cancel sets.
        req = books.enter(request.path_params["rid"])
        assert req.stop is not None
        released = req.stop.wait(req.seconds)
        if released:
            req.released_at = _now()
            time.sleep(0.005)  # gives back what it holds
        if released:
            # Canceled: its client left (nobody reads this) or the server
            # is shutting down (the client gets it, if it can still be sent).
            books.handler_done(req, "released by on_cancel")
            return PlainTextResponse(f"work {req.rid}: stopped\n", status_code=503)
        books.handler_done(req, "completed")
        return PlainTextResponse(f"work {req.rid}: done\n")

    async def stream(request: Request) -> Response:
        req = books.enter(request.path_params["rid"])

        async def chunks() -> AsyncIterator[bytes]:
            outcome = "stopped"
            try:
                for n in range(req.chunks):
                    with books.lock:
                        req.chunks_sent += 1
                        req.last_chunk_at = _now()
                    yield f"chunk {n:04d} of request {req.rid}\n".encode()
                    await asyncio.sleep(STEP)
                outcome = "completed"
            except asyncio.CancelledError:
                outcome = "saw CancelledError"
                raise
            finally:
                books.handler_done(req, outcome)

        return StreamingResponse(chunks(), media_type="text/plain")

    return Starlette(routes=[
        Route("/query/{rid}", query),
        Route("/work/{rid}", work),
        Route("/stream/{rid}", stream),
    ])


class _Collect(logging.Handler):
    """Keeps what the server's loggers say while the demo runs."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []
        self.guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        line = f"{record.levelname} {record.name}: {record.getMessage()}"
        if record.exc_info and record.exc_info[1] is not None:
            line += f" [{type(record.exc_info[1]).__name__}: {record.exc_info[1]}]"
        with self.guard:
            self.lines.append(line)


_LOGGERS = ("uvicorn", "asyncio", "cancelcore")
# What uvicorn says when the grace period runs out, and when a response it
# was streaming ends cut (the streams in flight at the shutdown).
_EXPECTED_LOG = (
    "timeout graceful shutdown exceeded",
    "ASGI callable returned without completing response",
)


class Server:
    """uvicorn in a daemon thread on a pre-bound loopback socket."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        # proto IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets whose
        # proto says TCP (accepted ones inherit it), as uvicorn's own bind does.
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((HOST, 0))
        self.sock.listen(512)
        self.port: int = self.sock.getsockname()[1]
        config = uvicorn.Config(
            app, http="h11", loop="asyncio", lifespan="on", log_config=None,
            access_log=False, timeout_graceful_shutdown=GRACE,
        )
        # The middleware's server: its shutdown aborts the host before
        # uvicorn's own timeout would cancel the requests' tasks.
        from .asgi import uvicorn_server

        self.server = uvicorn_server(config)
        self.thread = threading.Thread(target=self._run, name="uvicorn", daemon=True)
        self.error: Optional[BaseException] = None
        self.log = _Collect()
        self._saved: dict[str, tuple[int, bool]] = {}
        self.exit_at: Optional[float] = None
        self.stopped_at: Optional[float] = None

    def _run(self) -> None:
        try:
            self.server.run(sockets=[self.sock])
        except BaseException as exc:  # reported by the checks
            self.error = exc

    def start(self) -> None:
        for name in _LOGGERS:
            logger = logging.getLogger(name)
            self._saved[name] = (logger.level, logger.propagate)
            logger.addHandler(self.log)
            logger.propagate = False
        self.thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self.server.started and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self.server.started:
            self.server.should_exit = True
            self.thread.join(STOP_TIMEOUT)
            self.restore_logging()
            raise RuntimeError(f"uvicorn did not start: {self.error!r} {self.log.lines}")

    def restore_logging(self) -> None:
        for name, (level, propagate) in self._saved.items():
            logger = logging.getLogger(name)
            logger.removeHandler(self.log)
            logger.setLevel(level)
            logger.propagate = propagate
        self._saved.clear()
        try:
            self.sock.close()
        except OSError:
            pass

    def unexpected_log(self) -> list[str]:
        with self.log.guard:
            return [line for line in self.log.lines if not any(e in line for e in _EXPECTED_LOG)]


# ------------------------------------------------------------ the clients


def _request_bytes(req: Req, port: int) -> bytes:
    return (f"GET /{req.kind}/{req.rid} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
            "Connection: close\r\n\r\n").encode("ascii")


def _parse(data: bytes) -> tuple[int, bytes, bool]:
    """(status, body, complete) of one HTTP/1.1 response read to EOF."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        raise ConnectionError(f"no complete head in {data[:80]!r}")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        n = int(headers["content-length"])
        return status, rest[:n], len(rest) >= n
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body: list[bytes] = []
        pos = 0
        while True:
            eol = rest.find(b"\r\n", pos)
            if eol < 0:
                return status, b"".join(body), False
            size = int(rest[pos:eol].split(b";")[0], 16)
            if size == 0:
                return status, b"".join(body), True
            if len(rest) < eol + 2 + size + 2:
                body.append(rest[eol + 2:eol + 2 + size])
                return status, b"".join(body), False
            body.append(rest[eol + 2:eol + 2 + size])
            pos = eol + 2 + size + 2
    return status, rest, True


async def _recv(loop: asyncio.AbstractEventLoop, sock: socket.socket, deadline: float) -> bytes:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("client deadline")
    return await asyncio.wait_for(loop.sock_recv(sock, 65536), remaining)


async def client(books: Books, req: Req, port: int) -> None:
    """One connection, one request, and what its plan says to do."""
    loop = asyncio.get_running_loop()
    # Every wait is bounded; a request held for the shutdown waits for it.
    deadline = time.monotonic() + CLIENT_TIMEOUT + (LONG if req.fate == "shutdown" else 0.0)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    req.got = "sending"
    try:
        await asyncio.wait_for(loop.sock_connect(sock, (HOST, port)), CLIENT_TIMEOUT)
        await asyncio.wait_for(loop.sock_sendall(sock, _request_bytes(req, port)), CLIENT_TIMEOUT)
        data = b""
        if req.fate == "leave":
            if req.kind == "stream":
                while data.count(b"chunk ") < req.leave_chunks:
                    got = await _recv(loop, sock, deadline)
                    if not got:
                        raise ConnectionError("closed before the chunks to read")
                    data += got
            else:
                assert req.entered is not None
                await asyncio.wait_for(req.entered.wait(), CLIENT_TIMEOUT)
                await asyncio.sleep(req.leave_after)
            if req.rst:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            req.closed_at = _now()
            sock.close()
            req.got = "left"
            return
        while True:
            got = await _recv(loop, sock, deadline)
            if not got:
                break
            data += got
        status, body, complete = _parse(data)
        req.status = status
        if status == 200 and complete:
            if req.kind == "stream":
                ok = body.count(b"chunk ") == req.chunks
            else:
                ok = body.startswith(f"{req.kind} {req.rid}:".encode())
            req.got = "200 complete" if ok else f"200 complete, unexpected body {body[:60]!r}"
        elif status == 200:
            req.got = f"200 cut after {body.count(b'chunk ')} chunks"
        elif status == 503 and complete and body == b"service unavailable\n":
            req.got = "503 from the middleware"
        elif status == 503 and complete and body == f"work {req.rid}: stopped\n".encode():
            req.got = "503 from the handler"
        else:
            req.got = f"{status}{'' if complete else ' cut'} {body[:60]!r}"
    except (OSError, asyncio.TimeoutError, ValueError, IndexError) as exc:
        req.got = f"error: {exc!r}"
    finally:
        sock.close()


# ------------------------------------------------------------- the plan


def make_plan(n: int, rng: random.Random) -> tuple[list[Req], list[Req], list[Req]]:
    """(traffic, held, graceful): the requests of each phase."""
    n_held = min(max(3, round(n * HELD_SHARE)), HELD_MAX)
    n_graceful = min(max(2, round(n * GRACEFUL_SHARE)), 8)
    n_traffic = n - n_held - n_graceful
    plan: list[Req] = []
    traffic: list[Req] = []
    for _ in range(n_traffic):
        kind = rng.choices(KINDS, weights=(4, 3, 3))[0]
        fate = "leave" if rng.random() < 0.45 else "complete"
        req = Req(len(plan), kind, fate)
        if fate == "complete":
            req.seconds = rng.uniform(0.05, 0.35)
            req.chunks = rng.randint(5, 15)
        else:
            req.seconds = LONG
            req.chunks = int(LONG / STEP)
            req.leave_after = rng.uniform(0.0, 0.1)
            req.leave_chunks = rng.randint(2, 6)
            req.rst = rng.random() < 0.5
        plan.append(req)
        traffic.append(req)
    held: list[Req] = []
    for i in range(n_held):
        req = Req(len(plan), KINDS[i % 3], "shutdown", seconds=LONG, chunks=int(LONG / STEP))
        plan.append(req)
        held.append(req)
    graceful: list[Req] = []
    for i in range(n_graceful):
        req = Req(len(plan), ("query", "work")[i % 2], "graceful", seconds=rng.uniform(0.3, 0.5))
        plan.append(req)
        graceful.append(req)
    return traffic, held, graceful


# ----------------------------------------------------------- the progress


class ServerProgress(Progress):
    """The existing demo's status display, with this demo's status line."""

    def __init__(self, out: TextIO, live: bool, books: Books) -> None:
        super().__init__(out, live, books.clock)
        self.books = books

    def status(self) -> str:
        c = self.books.counts()
        return (
            f"[{self.books.now():3.1f}s] {self.phase}: {c['sent']}/{len(self.books.plan)} sent, "
            f"{c['in flight']} in flight, {c['completed']} completed, {c['left']} left early; "
            f"{c['canceled']} canceled ({c['CHANNEL_FAULTED']} CHANNEL_FAULTED, "
            f"{c['HOST_ABORT']} HOST_ABORT), {c['frees']} freed"
        )


# ----------------------------------------------------------------- the run


class ServerDemo:
    def __init__(self, out: TextIO, live: bool, seed: int, requests: int) -> None:
        from cancelcore.asgi import CancellationMiddleware

        self.out = out
        self.seed = seed
        self.rng = random.Random(seed)
        self.traffic, self.held, self.graceful = make_plan(requests, self.rng)
        self.books = Books(self.traffic + self.held + self.graceful)
        self.books.plan.sort(key=lambda r: r.rid)
        self.progress = ServerProgress(out, live, self.books)
        self.mw = CancellationMiddleware(build_app(self.books), close_timeout=CLOSE_TIMEOUT)
        self.server = Server(self.mw)
        self.stats: dict[str, int] = {}
        self.final_state = HostState.CREATED
        self.shutdown_seconds = math.nan
        self.abort_seen_at: Optional[float] = None
        self.error: Optional[BaseException] = None

    async def run(self) -> None:
        import uvicorn

        books, progress, server = self.books, self.progress, self.server
        books.loop = asyncio.get_running_loop()
        for req in books.plan:
            req.entered = asyncio.Event()
        done = asyncio.Event()
        status = asyncio.create_task(self.progress.follow(done))
        port = server.port
        progress.phase = "traffic"
        progress.event(
            f"uvicorn {uvicorn.__version__} (h11) serving on {HOST}:{port} in a thread of this "
            f"process: a Starlette app in CancellationMiddleware; {len(books.plan)} requests, "
            f"{CONCURRENCY} clients at a time"
        )

        # Traffic: CONCURRENCY clients at a time; the long requests that the
        # shutdown will find in flight start three quarters of the way in.
        slots = asyncio.Semaphore(CONCURRENCY)
        tasks: list[asyncio.Task[None]] = []
        held_tasks: list[asyncio.Task[None]] = []
        start_held = int(len(self.traffic) * 0.75)
        for i, req in enumerate(self.traffic):
            if i == start_held:
                held_tasks = [asyncio.create_task(client(books, r, port)) for r in self.held]
            await slots.acquire()
            task = asyncio.create_task(client(books, req, port))
            task.add_done_callback(lambda _: slots.release())
            tasks.append(task)
        await asyncio.gather(*tasks)
        c = books.counts()
        progress.event(
            f"traffic done: {c['completed']} completed, {c['left']} clients left early "
            f"({c['CHANNEL_FAULTED']} requests canceled with CHANNEL_FAULTED)"
        )

        # Shutdown with requests in flight: the long ones, and short ones
        # that finish inside the grace period.
        graceful_tasks = [asyncio.create_task(client(books, r, port)) for r in self.graceful]
        waiting = [r.entered.wait() for r in self.held + self.graceful if r.entered is not None]
        try:
            await asyncio.wait_for(asyncio.gather(*waiting), CLIENT_TIMEOUT)
        except asyncio.TimeoutError:
            pass  # the checks name the requests that never entered
        progress.phase = "shutting down"
        server.exit_at = _now()
        server.server.should_exit = True  # as SIGINT / SIGTERM would
        progress.event(
            f"server told to exit with {len(self.held)} long and {len(self.graceful)} short "
            f"requests in flight (timeout_graceful_shutdown={GRACE} s)"
        )
        stop_by = time.monotonic() + STOP_TIMEOUT
        while server.thread.is_alive() and time.monotonic() < stop_by:
            if self.abort_seen_at is None and self.mw.host.stats["cancels_host_abort"]:
                self.abort_seen_at = _now()
                progress.event(
                    f"uvicorn gave up on the requests still running: canceled with HOST_ABORT "
                    f"by the middleware ({self.mw.host.stats['cancels_host_abort']} so far)"
                )
            await asyncio.sleep(0.01)
        if server.thread.is_alive():
            server.server.force_exit = True
            await asyncio.sleep(1.0)
        server.stopped_at = _now()
        self.shutdown_seconds = server.stopped_at - server.exit_at
        await asyncio.wait_for(asyncio.gather(*held_tasks, *graceful_tasks), CLIENT_TIMEOUT)
        self.final_state = self.mw.host.state
        self.stats = self.mw.host.stats
        progress.phase = "stopped"
        progress.event(
            f"server stopped {self.shutdown_seconds:.2f} s after should_exit; "
            f"host {self.final_state.name}"
        )
        done.set()
        await status
        progress.done()


# ------------------------------------------------------------------ report


def _ms(values: list[float]) -> str:
    if not values:
        return "none"
    return (f"p50 {percentile(values, 50):.2f} ms, p99 {percentile(values, 99):.2f} ms, "
            f"max {max(values):.2f} ms (n={len(values)})")


_EXPECTED_REASON = {"leave": CancelReason.CHANNEL_FAULTED, "shutdown": CancelReason.HOST_ABORT}


def _client_ok(req: Req) -> bool:
    if req.fate == "leave":
        return req.got == "left"
    if req.fate == "shutdown":
        # A stream is cut.  Nothing sent yet: the middleware answers 503,
        # unless a sync handler, woken by its on_cancel, answers first.
        if req.kind == "stream":
            return req.got.startswith("200 cut")
        return req.got == "503 from the middleware" or (
            req.kind == "work" and req.got == "503 from the handler")
    return req.got == "200 complete"


def _report(demo: ServerDemo, out: TextIO) -> bool:
    books, stats, plan = demo.books, demo.stats, demo.books.plan
    c = books.counts()
    n = len(plan)

    def line(label: str, ours: object, theirs: object = "", key: str = "") -> None:
        note = f"  (host.stats['{key}'])" if key else ""
        print(f"  {label:<38} {ours!s:>6} {theirs!s:>11}{note}", file=out)

    ended = sum(1 for r in plan if r.frees)
    print("\nreport", file=out)
    print(f"  {'':<38} {'demo':>6} {'host.stats':>11}", file=out)
    line("requests sent", c["sent"], "-")
    line("handlers entered (operations begun)", c["entered"], stats["ops_begun"], "ops_begun")
    line("operations ended (freed)", ended, stats["ops_ended"], "ops_ended")
    line("in flight at the end", n - ended, stats["ops_in_flight"], "ops_in_flight")
    line("completed (whole response, no cancel)", c["completed"], "-")
    line("canceled", c["canceled"], stats["ops_canceled"], "ops_canceled")
    line("  CHANNEL_FAULTED (client left)", c["CHANNEL_FAULTED"], stats["cancels_channel_faulted"],
         "cancels_channel_faulted")
    line("  HOST_ABORT (server shutdown)", c["HOST_ABORT"], stats["cancels_host_abort"],
         "cancels_host_abort")
    line("cancel callbacks run", c["cancel callbacks"], stats["cancel_callbacks_run"],
         "cancel_callbacks_run")
    line("free-state callbacks run", c["frees"], stats["free_states_run"], "free_states_run")
    line("callback errors", 0, stats["callback_errors"], "callback_errors")

    print("\n  by endpoint (planned fate -> what happened):", file=out)
    for kind in KINDS:
        mine = [r for r in plan if r.kind == kind]
        fates = Counter(r.fate for r in mine)
        reasons = Counter(r.cancels[0][0].name for r in mine if r.cancels)
        print(f"    /{kind:<6} ({KIND_TEXT[kind]}): {len(mine)} sent: {fates['complete']} to complete, "
              f"{fates['leave']} left early, {fates['shutdown']} long + {fates['graceful']} short "
              f"in flight at shutdown; canceled: {reasons['CHANNEL_FAULTED']} CHANNEL_FAULTED, "
              f"{reasons['HOST_ABORT']} HOST_ABORT", file=out)
    got = Counter(r.got if not r.got.startswith("200 cut") else "200 cut mid-stream" for r in plan)
    print("    what the clients got: " + ", ".join(f"{k}: {v}" for k, v in sorted(got.items())),
          file=out)

    leave = [r for r in plan if r.fate == "leave" and r.closed_at is not None and r.cancels]
    lat = [(r.cancels[0][1] - r.closed_at) * 1e3 for r in leave if r.closed_at is not None]
    lat_fin = [(r.cancels[0][1] - r.closed_at) * 1e3 for r in leave
               if r.closed_at is not None and not r.rst]
    lat_rst = [(r.cancels[0][1] - r.closed_at) * 1e3 for r in leave
               if r.closed_at is not None and r.rst]
    print("\n  disconnect -> on_cancel (the client's close() to the cancel callback, "
          "time.perf_counter of this process):", file=out)
    print(f"    all  {_ms(lat)}", file=out)
    print("         (clients, server and its callbacks share this process and its GIL, under load; "
          "bench/bench_asgi.py measures an idle server)", file=out)
    print(f"    FIN  {_ms(lat_fin)}", file=out)
    print(f"    RST  {_ms(lat_rst)}", file=out)
    threads = Counter(r.cancels[0][2] for r in plan if r.cancels)
    print("    cancel callbacks ran on: " + ", ".join(f"{v} x {k}" for k, v in threads.most_common()),
          file=out)
    woken = [r for r in plan if r.kind == "work" and r.cancels]
    wake = [(r.released_at - r.cancels[0][1]) * 1e3 for r in woken if r.released_at is not None]
    print(f"    blocked sync handlers woken by their on_cancel: {len(wake)} of {len(woken)} "
          f"canceled; callback -> thread awake {_ms(wake)}", file=out)
    stopped = [r for r in plan if r.kind == "query" and r.cancels and r.handler_done_at is not None]
    stop_lat = [(r.handler_done_at - r.cancels[0][1]) * 1e3 for r in stopped
                if r.handler_done_at is not None]
    print(f"    async handlers: callback -> CancelledError seen {_ms(stop_lat)}", file=out)
    print(f"\n  shutdown: should_exit -> server thread done in {demo.shutdown_seconds:.2f} s "
          f"(timeout_graceful_shutdown {GRACE} s, host close_timeout {CLOSE_TIMEOUT} s); "
          f"host {demo.final_state.name}", file=out)
    log_lines = demo.server.log.lines
    print(f"  server log (WARNING and up): {len(log_lines)} line(s)", file=out)
    for log_line, times in Counter(log_lines).most_common():
        print(f"    {times} x {log_line[:150]}", file=out)

    # ---------------------------------------------------------- checks
    checks: list[tuple[bool, str]] = []

    def some(reqs: list[Req]) -> str:
        return "" if not reqs else " -- e.g. " + "; ".join(
            f"#{r.rid} {r.kind}/{r.fate}: client {r.got!r}, handler {r.handler_outcome!r}, "
            f"cancels {[x[0].name for x in r.cancels]}, frees {len(r.frees)}" for r in reqs[:3])

    bad = [r for r in plan if r.entries != 1 or not r.had_context]
    checks.append((not bad, f"every request ran its handler once, with current_operation() set "
                   f"({n - len(bad)} of {n}){some(bad)}"))
    bad = [r for r in plan if len(r.frees) != 1]
    checks.append((not bad, f"every free-state ran exactly once ({n - len(bad)} of {n}){some(bad)}"))
    bad = [r for r in plan if len(r.cancels) > 1]
    checks.append((not bad, f"every cancel callback ran at most once ({c['cancel callbacks']} ran, "
                   f"{len(bad)} more than once){some(bad)}"))
    bad = [r for r in plan
           if [x[0] for x in r.cancels] != ([_EXPECTED_REASON[r.fate]] if r.fate in _EXPECTED_REASON else [])]
    checks.append((not bad, "clients that left were canceled with CHANNEL_FAULTED, requests cut by the "
                   "shutdown with HOST_ABORT, and no other request was canceled" + some(bad)))
    bad = [r for r in plan if not _client_ok(r)]
    checks.append((not bad, "every client got what its fate implies (200 complete; 503 or a cut stream "
                   "at shutdown)" + some(bad)))
    bad = [r for r in plan if r.kind != "stream" and r.frees
           and (r.handler_done_at is None or r.frees[0] < r.handler_done_at)]
    checks.append((not bad, "no free-state ran before its handler had returned (also in the thread pool)"
                   + some(bad)))
    bad = [r for r in plan if r.kind == "stream" and r.frees and r.last_chunk_at is not None
           and r.last_chunk_at > r.frees[0]]
    checks.append((not bad, "no stream produced a chunk after its state was freed" + some(bad)))
    bad = [r for r in plan if r.kind == "work" and r.cancels and r.released_at is None]
    checks.append((not bad, f"every canceled sync handler was woken by its on_cancel "
                   f"({len(woken) - len(bad)} of {len(woken)}), none waited out its {LONG:.0f} s"
                   + some(bad)))
    canceled = c["canceled"]
    agree = (
        stats["ops_begun"] == n
        and stats["ops_ended"] == n == ended
        and stats["ops_in_flight"] == 0
        and stats["ops_canceled"] == canceled
        and stats["cancels_channel_faulted"] == c["CHANNEL_FAULTED"]
        and stats["cancels_host_abort"] == c["HOST_ABORT"]
        and stats["cancel_callbacks_run"] == c["cancel callbacks"]
        and stats["free_states_run"] == c["frees"]
        and stats["callback_errors"] == 0
    )
    checks.append((agree, "the demo's books agree with host.stats"))
    checks.append((demo.final_state is HostState.CLOSED, "lifespan shutdown closed the host (CLOSED)"))
    checks.append((
        not demo.server.thread.is_alive() and demo.server.error is None
        and demo.shutdown_seconds < GRACE + CLOSE_TIMEOUT + 2.0,
        f"uvicorn stopped by itself in {demo.shutdown_seconds:.2f} s (grace {GRACE} s)"
        + (f": {demo.server.error!r}" if demo.server.error else ""),
    ))
    unexpected = demo.server.unexpected_log()
    checks.append((not unexpected, "the server logged no unexpected warning or error"
                   + (f": {unexpected[0]}" if unexpected else "")))
    if demo.error is not None:
        checks.append((False, f"the run ended early: {demo.error!r}"))

    print("\nchecks", file=out)
    for ok, text in checks:
        print(f"  [{'ok' if ok else 'FAILED'}] {text}", file=out)
    passed = all(ok for ok, _ in checks)
    print(f"\nresult: {'OK' if passed else 'FAILED'}", file=out)
    return passed


def run_server_demo(requests: int = 120, seed: int = 1, live: Optional[bool] = None,
                    out: Optional[TextIO] = None) -> int:
    """Runs the demonstration; returns the exit status (0 when every check
    passed, 1 when one failed, 2 when uvicorn or Starlette is missing)."""
    stream: TextIO = out if out is not None else sys.stdout
    if live is None:
        live = stream.isatty()
    if not MIN_REQUESTS <= requests <= MAX_REQUESTS:
        print(f"--requests must be between {MIN_REQUESTS} and {MAX_REQUESTS}", file=sys.stderr)
        return 2
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        print(f"server_demo.py needs uvicorn and starlette ({exc}); "
              "pip install 'cancelcore[asgi]' starlette", file=sys.stderr)
        return 2
    print("cancelcore serve-demo: a real uvicorn server, real TCP clients that leave early,", file=stream)
    print(f"and a shutdown with requests in flight (seed {seed})\n", file=stream)
    demo = ServerDemo(stream, live, seed, requests)
    demo.server.start()
    try:
        asyncio.run(demo.run())
    except Exception as exc:  # reported as a failed check, with the books so far
        demo.error = exc
    finally:
        demo.progress.done()
        if demo.server.thread.is_alive():
            demo.server.server.force_exit = True
            demo.server.thread.join(STOP_TIMEOUT)
        demo.server.restore_logging()
        if not demo.stats:
            demo.stats = demo.mw.host.stats
            demo.final_state = demo.mw.host.state
    return 0 if _report(demo, stream) else 1


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="server_demo.py",
        description="Starts uvicorn in a thread of this process on a free 127.0.0.1 port, "
        "serving a Starlette app (an async slow query, a sync endpoint blocked in the thread "
        "pool, a streaming one) wrapped in cancelcore.asgi.CancellationMiddleware; drives it "
        "with concurrent TCP clients, some of which close their connection mid-request or "
        "mid-stream; then tells the server to exit with requests in flight.  Reports cancels "
        "by reason, free-states and disconnect-to-cancel latency, and checks them against "
        "what the clients saw and host.stats.  Needs uvicorn and starlette.  Exit status 1 "
        "if a check fails.",
    )
    parser.add_argument("--requests", type=int, default=120,
                        help=f"number of requests, {MIN_REQUESTS} to {MAX_REQUESTS} (default 120)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the request mix (default 1)")
    display = parser.add_mutually_exclusive_group()
    display.add_argument(
        "--plain", action="store_true", help="plain progress lines even on a terminal"
    )
    display.add_argument(
        "--live", action="store_true", help="a live status line even when not on a terminal"
    )
    args = parser.parse_args(argv)
    live: Optional[bool] = True if args.live else False if args.plain else None
    return run_server_demo(requests=args.requests, seed=args.seed, live=live)


if __name__ == "__main__":
    sys.exit(main())
