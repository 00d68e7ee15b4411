"""chainlib: starts a chain of hop.py processes on 127.0.0.1 and watches it.

Shared by examples/chain_demo.py, tests/test_chain.py and
bench/bench_chain.py (each puts this folder on ``sys.path``).

- ``Chain(spec)``: one ``hop.py`` process per hop, started last hop first
  (each is told the port of the next), every event line of every hop in one
  store; ``with Chain(spec) as chain:`` stops them all at the end, however
  the block ends (stdin closed, then SIGTERM, then SIGKILL, each bounded).
- ``chain.request(key, t, deadline_ms=None)``: a whole request through the
  chain, by httpx; ``chain.leave(key)``: a raw-socket client that sends a
  request, waits until the last hop is working on it, and closes its
  connection (the client leaves), returning the moment it closed.
- ``chain.wait(predicate)``, ``chain.events(key)``, ``chain.trace(key)``:
  what the hops reported, per hop in chain order.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import IO, Any, Callable, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
HOP = os.path.join(HERE, "hop.py")
HOST = "127.0.0.1"
READY_TIMEOUT = 30.0  # a hop's interpreter start and imports, on a loaded 2-core machine
WAIT = 10.0


@dataclass(frozen=True)
class HopSpec:
    name: str
    serve: str  # http | grpc | grpc-aio
    handler: str  # async | sync
    plain: bool = False  # calls the next hop through the plain clients (a baseline)

    @property
    def scheme(self) -> str:
        return "http" if self.serve == "http" else "grpc"


# The chain the tests and the demo run: the client (HTTP) -> edge (uvicorn,
# async) -[HTTP, AsyncHTTPTransport]-> A (uvicorn, sync endpoint in a
# thread) -[gRPC, client_interceptor, blocking call]-> B (grpc.server, sync
# servicer) -[HTTP, HTTPTransport, blocking call]-> C (uvicorn, async, the
# last hop: waits until canceled or done).
MIXED = (HopSpec("edge", "http", "async"), HopSpec("A", "http", "sync"),
         HopSpec("B", "grpc", "sync"), HopSpec("C", "http", "async"))
# The other clients and servers: edge -[gRPC aio, aio_client_interceptor]->
# A (grpc.aio, async) -[HTTP, AsyncHTTPTransport]-> B (uvicorn, async)
# -[gRPC aio]-> C (grpc.server, sync servicer, the last hop).
AIO = (HopSpec("edge", "http", "async"), HopSpec("A", "grpc-aio", "async"),
       HopSpec("B", "http", "async"), HopSpec("C", "grpc", "sync"))
# Every leg HTTP: edge (async) -> A (sync) -[HTTPTransport]-> B (sync)
# -[HTTPTransport]-> C (async).
HTTP = (HopSpec("edge", "http", "async"), HopSpec("A", "http", "sync"),
        HopSpec("B", "http", "sync"), HopSpec("C", "http", "async"))
# The baseline: every hop async, every leg plain httpx (no cancelcore
# transport): only the cancelled task's closing of its connection carries
# the cancel down.
PLAIN_ASYNC = tuple(HopSpec(name, "http", "async", plain=True) for name in ("edge", "A", "B", "C"))


def leg_name(caller: HopSpec, callee: HopSpec) -> str:
    """What carries a call from ``caller`` to ``callee``."""
    if caller.plain:
        client = "plain httpx " if callee.scheme == "http" else "plain gRPC "
        client += "(task cancelled)" if caller.handler == "async" else "(blocking)"
    elif callee.scheme == "http":
        client = "httpx " + ("AsyncHTTPTransport" if caller.handler == "async" else "HTTPTransport")
    else:
        client = "gRPC " + ("aio_client_interceptor" if caller.handler == "async" else "client_interceptor")
    server = {"http": "uvicorn", "grpc": "grpc.server", "grpc-aio": "grpc.aio"}[callee.serve]
    return f"{client} -> {server} {callee.handler}"


class Hop:
    def __init__(self, spec: HopSpec, next_url: str, chain: "Chain") -> None:
        self.spec = spec
        self.name = spec.name
        self.port = 0
        self.stderr: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, HOP, spec.name, spec.serve, spec.handler, next_url] + (["plain"] if spec.plain else []),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            bufsize=1, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert self.proc.stdout is not None and self.proc.stderr is not None
        threading.Thread(target=self._read, args=(self.proc.stdout, chain), daemon=True).start()
        threading.Thread(target=self._drain, args=(self.proc.stderr,), daemon=True).start()

    @property
    def url(self) -> str:
        return f"{self.spec.scheme}://{HOST}:{self.port}"

    def _read(self, stream: IO[str], chain: "Chain") -> None:
        for line in stream:
            try:
                event = json.loads(line)
            except ValueError:
                self.stderr.append("stdout: " + line)
                continue
            chain._add(event)

    def _drain(self, stream: IO[str]) -> None:
        for line in stream:
            self.stderr.append(line)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass

    def stop(self) -> None:
        """Closes stdin (a graceful stop), then escalates, each step bounded."""
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except OSError:
            pass
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None:
                try:
                    self.proc.send_signal(sig)
                except ProcessLookupError:
                    pass
            try:
                self.proc.wait(5.0)
                return
            except subprocess.TimeoutExpired:
                continue


class Chain:
    """The hops of ``spec`` as processes; a context manager."""

    def __init__(self, spec: "tuple[HopSpec, ...]") -> None:
        self.spec = spec
        self.names = [h.name for h in spec]
        self.hops: list[Hop] = []
        self._events: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        # Called with each event as it arrives (on a reader thread).
        self.listeners: list[Callable[[dict[str, Any]], None]] = []

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> "Chain":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> None:
        next_url = "-"
        for spec in reversed(self.spec):  # the last hop first: each needs the next one's port
            hop = Hop(spec, next_url, self)
            self.hops.insert(0, hop)
            ready = self.wait(lambda: self._find(spec.name, "ready"), READY_TIMEOUT)
            if not ready:
                raise RuntimeError(f"hop {spec.name} did not start: exit {hop.proc.poll()}, "
                                   f"stderr: {''.join(hop.stderr)[-3000:]}")
            hop.port = int(ready["port"])
            next_url = hop.url

    def stop(self) -> None:
        threads = [threading.Thread(target=hop.stop) for hop in self.hops]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    @property
    def edge(self) -> Hop:
        return self.hops[0]

    # --------------------------------------------------------------- events

    def _add(self, event: dict[str, Any]) -> None:
        with self._cond:
            self._events.append(event)
            self._cond.notify_all()
        for listener in self.listeners:
            try:
                listener(event)
            except Exception as exc:  # a reader thread must live on: the events are the results
                print(f"chainlib: a listener failed on {event}: {exc!r}", file=sys.stderr)

    def _find(self, hop: str, ev: str, key: Optional[str] = None) -> Optional[dict[str, Any]]:
        for event in self._events:
            if event["hop"] == hop and event["ev"] == ev and (key is None or event.get("key") == key):
                return event
        return None

    def wait(self, predicate: Callable[[], Any], timeout: float = WAIT) -> Any:
        """Waits until ``predicate()`` (called with the store locked) is
        truthy; returns its last value."""
        limit = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate()
                left = limit - time.monotonic()
                if value or left <= 0:
                    return value
                self._cond.wait(min(left, 0.1))

    def events(self, key: str) -> dict[str, list[dict[str, Any]]]:
        """The events of request ``key``, per hop in chain order."""
        with self._cond:
            out: dict[str, list[dict[str, Any]]] = {name: [] for name in self.names}
            for event in self._events:
                if event.get("key") == key:
                    out[event["hop"]].append(event)
            return out

    def count(self, key: str, ev: str) -> dict[str, int]:
        return {hop: sum(1 for e in evs if e["ev"] == ev) for hop, evs in self.events(key).items()}

    def first(self, key: str, ev: str) -> dict[str, Optional[dict[str, Any]]]:
        """Per hop, the first ``ev`` event of request ``key`` (or None)."""
        return {hop: next((e for e in evs if e["ev"] == ev), None) for hop, evs in self.events(key).items()}

    def wait_all(self, key: str, ev: str, timeout: float = WAIT) -> bool:
        """Waits until every hop has reported ``ev`` for ``key``."""
        return bool(self.wait(lambda: all(self._find(n, ev, key) for n in self.names), timeout))

    def settled(self, key: str, timeout: float = WAIT, linger: float = 0.2) -> bool:
        """Waits until every hop has freed request ``key``'s state, then
        ``linger`` seconds longer, so that a late duplicate (a second cancel
        or free) would be seen too."""
        ok = self.wait_all(key, "free", timeout)
        time.sleep(linger)
        return ok

    def stats(self, timeout: float = WAIT) -> dict[str, dict[str, int]]:
        """Every hop's host counters, now."""
        with self._cond:
            mark = len(self._events)
        for hop in self.hops:
            hop.send("stats")

        def fresh() -> Optional[dict[str, dict[str, int]]]:
            got = {e["hop"]: e["stats"] for e in self._events[mark:] if e["ev"] == "stats"}
            return got if len(got) == len(self.hops) else None

        got = self.wait(fresh, timeout)
        if not got:
            raise RuntimeError("a hop did not report its counters")
        return dict(got)

    def diagnostics(self) -> str:
        return "\n".join(f"--- {hop.name} (exit {hop.proc.poll()}):\n{''.join(hop.stderr)[-2000:]}"
                         for hop in self.hops)

    # -------------------------------------------------------------- clients

    def request(self, key: str, t: float, deadline_ms: Optional[int] = None,
                timeout: float = 30.0) -> tuple[int, str]:
        """One request through the whole chain (a plain httpx client)."""
        import httpx

        headers = {} if deadline_ms is None else {"cancelcore-deadline-ms": str(deadline_ms)}
        with httpx.Client(timeout=timeout) as client:
            response = client.get(f"http://{HOST}:{self.edge.port}/work", params={"key": key, "t": t},
                                  headers=headers)
            return response.status_code, response.text

    def leave(self, key: str, t: float = 30.0, rst: bool = False, after: float = 0.02) -> float:
        """Sends a request, waits until the last hop has begun it and then
        ``after`` seconds more (the request in its steady state: a server
        starts watching a quiet connection for a disconnect only once its
        handler has run on a little), then closes the connection (FIN, or
        RST with ``rst``); returns the ``time.monotonic()`` just before the
        close."""
        sock = socket.create_connection((HOST, self.edge.port), timeout=WAIT)
        try:
            sock.sendall(f"GET /work?key={key}&t={t} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
            last = self.names[-1]
            if not self.wait(lambda: self._find(last, "begin", key), WAIT):
                raise RuntimeError(f"request {key} did not reach {last}")
            time.sleep(after)
            if rst:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            t_close = time.monotonic()
            return t_close
        finally:
            sock.close()

    def trace(self, key: str, since: Optional[float] = None) -> list[tuple[str, str, float]]:
        """(hop, event, milliseconds after ``since``, or after the first
        event) of request ``key``, in time order."""
        rows = [(hop, e, e["t"]) for hop, evs in self.events(key).items() for e in evs]
        rows.sort(key=lambda row: row[2])
        origin = since if since is not None else (rows[0][2] if rows else 0.0)
        return [(hop, describe(e), (t - origin) * 1000.0) for hop, e, t in rows]


def describe(event: dict[str, Any]) -> str:
    ev = event["ev"]
    if ev == "cancel":
        return f"cancel callback ({event['reason']}, on thread {event['thread']})"
    if ev == "begin":
        remaining = event.get("remaining")
        return "operation begun" + ("" if remaining is None else f" (time_remaining {remaining * 1000:.0f} ms)")
    if ev == "free":
        return "free-state"
    if ev == "end":
        return f"handler ended: {event['outcome']}"
    return str(ev)
