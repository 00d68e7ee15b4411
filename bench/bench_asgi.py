#!/usr/bin/env python3
"""bench_asgi.py: what CancellationMiddleware costs a real server, and how
soon a disconnect reaches a request's cancel callback.

    python bench/bench_asgi.py            full run (about 1-2 minutes)
    python bench/bench_asgi.py --quick    a few seconds: a smoke test, rough figures

(1) Throughput.  Two uvicorn servers (h11, asyncio loop, no access log), each
    in a SUBPROCESS of its own, serve the same Starlette app -- one trivial
    async endpoint answering "ok" -- one bare, one wrapped in
    cancelcore.asgi.CancellationMiddleware.  A load generator in this process
    (one asyncio loop, raw asyncio streams, --connections keep-alive
    connections, HTTP/1.1 GET) sends a fixed number of requests to one server
    at a time, under a time bound; the servers take turns, in an order that
    alternates from one repetition to the next, and each figure is the MEDIAN
    over the repetitions (after one untimed warm-up run per server).  The
    overhead is reported as the ratio of the medians (with / without; the
    target is >= 0.90, i.e. at most 10% fewer requests per second).
(2) Disconnect -> cancel latency.  Against the server with the middleware:
    sequential requests to a streaming endpoint that registers on_cancel via
    current_operation() and sends one chunk; the client reads the chunk (the
    callback is registered), notes the time and closes the connection (FIN
    and RST alternately).  The server notes when on_cancel ran.  Both times
    are time.monotonic(): CLOCK_MONOTONIC, one clock for every process of the
    machine.  Target: p99 < 5 ms.

Every count is checked: each load run got exactly its requests answered 200
"ok"; at the end each server reports (on SIGTERM, after uvicorn's graceful
shutdown and the lifespan close of the host) how many requests it served and
the middleware host's stats -- every request an operation begun and ended,
one CHANNEL_FAULTED cancel and one free-state per disconnect, nothing else
canceled.  Exit status: 0 when every count was right -- speed is reported,
never asserted; 1 when a count was wrong; 2 on a bad command line.

On a small machine the load generator competes with the server for the CPU
(it is Python too): the output says how many CPUs there were.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import select
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Optional

# support/: the measurement helpers shared with the tests and the examples.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "support"))
from measure import LoopStall, cpu_model, machine_line, percentile  # noqa: E402

HOST = "127.0.0.1"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 20.0
READ_TIMEOUT = 10.0  # any single read of the load generator
HOLD_SECONDS = 30.0  # the streaming endpoint's wait: only a disconnect ends it early


VARIANTS = ("plain", "passthrough", "basehttp", "middleware", "aiofence", "fastapi-disconnect")


class BenchFailure(Exception):
    """A count was wrong.  Never raised for speed."""


def check(cond: bool, what: str) -> None:
    if not cond:
        raise BenchFailure(what)


# ====================================================================
# The server (a subprocess: bench_asgi.py --serve plain|middleware)
# ====================================================================


def serve(kind: str) -> int:
    """Runs one server until SIGTERM, then prints its counts as JSON."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response, StreamingResponse
    from starlette.routing import Route

    import cancelcore
    from cancelcore.asgi import CancellationMiddleware

    served = 0
    cancels: dict[str, list[float]] = {}
    frees: dict[str, int] = {}
    missing_context = 0

    async def hello(request: Request) -> Response:
        nonlocal served
        served += 1
        return PlainTextResponse("ok")

    def on_cancel(reason: cancelcore.CancelReason, key: str) -> None:
        cancels.setdefault(key, []).append(time.monotonic())
        if reason is not cancelcore.CancelReason.CHANNEL_FAULTED:
            cancels[key].append(-1.0)  # flagged: not a disconnect

    def on_free(key: str) -> None:
        frees[key] = frees.get(key, 0) + 1

    async def hold(request: Request) -> Response:
        nonlocal served, missing_context
        served += 1
        key = request.path_params["key"]
        ctx = cancelcore.current_operation()
        if ctx is None:
            missing_context += 1
        else:
            ctx.register_for_cancel(on_cancel, on_free, key)

        async def body() -> AsyncIterator[bytes]:
            yield b"registered\n"
            await asyncio.sleep(HOLD_SECONDS)
            yield b"done\n"

        return StreamingResponse(body(), media_type="text/plain")

    def hello_sync(request: Request) -> Response:
        nonlocal served
        served += 1
        return PlainTextResponse("ok")

    variant, _, http = kind.partition("/")
    app: Any = Starlette(routes=[Route("/hello", hello), Route("/hello-sync", hello_sync),
                                 Route("/hold/{key}", hold)])
    mw: Optional[CancellationMiddleware] = None
    if variant == "middleware":
        app = mw = CancellationMiddleware(app, close_timeout=2.0)
    elif variant == "passthrough":
        inner = app

        async def passthrough(scope: Any, receive: Any, send: Any) -> None:
            await inner(scope, receive, send)

        app = passthrough
    elif variant == "basehttp":
        from starlette.middleware.base import BaseHTTPMiddleware

        async def dispatch(request: Request, call_next: Any) -> Response:
            return await call_next(request)  # type: ignore[no-any-return]

        app = BaseHTTPMiddleware(app, dispatch=dispatch)
    elif variant == "fastapi-disconnect":
        from fastapi_disconnect import CancelOnDisconnectMiddleware

        app = CancelOnDisconnectMiddleware(app)
    elif variant == "aiofence":
        from aiofence.contrib.starlette import DisconnectMiddleware

        app = DisconnectMiddleware(app)

    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets
    # whose proto says TCP, and accepted ones inherit it (without it every
    # response body waits ~40 ms for a delayed ACK: Nagle).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, 0))
    sock.listen(1024)
    config = uvicorn.Config(app, http=http or "h11", loop="asyncio", lifespan="on", log_level="warning",
                            access_log=False, timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)

    def announce() -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.005)
        print(f"READY {sock.getsockname()[1]}", flush=True)

    threading.Thread(target=announce, daemon=True).start()
    # uvicorn handles SIGTERM during run() and re-raises it afterwards under
    # the handler it found: make that one a no-op, so the report gets out.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    server.run(sockets=[sock])  # until SIGTERM: uvicorn's own handler
    report: dict[str, Any] = {
        "served": served, "cancels": cancels, "frees": frees,
        "missing_context": missing_context,
    }
    if mw is not None:
        report["stats"] = mw.host.stats
        report["host_state"] = mw.host.state.name
    print("REPORT " + json.dumps(report), flush=True)
    return 0


class ServerProcess:
    """One server subprocess, started and stopped by the parent."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--serve", kind],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        line = self._readline(START_TIMEOUT)
        if not line.startswith("READY "):
            self.proc.kill()
            _, err = self.proc.communicate(timeout=STOP_TIMEOUT)
            raise RuntimeError(f"{kind} server did not start: {line!r} {err[-2000:]}")
        self.port = int(line.split()[1])
        self.sent = 0  # requests this process sent it, to check its counts
        self.report: dict[str, Any] = {}
        self.stderr = ""

    def cpu_ns(self) -> Optional[int]:
        """CPU time the server has used so far (every thread; Linux), ns."""
        total = 0
        try:
            tasks = os.listdir(f"/proc/{self.proc.pid}/task")
            for tid in tasks:
                with open(f"/proc/{self.proc.pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return total

    def _readline(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        return self.proc.stdout.readline() if ready else ""

    def stop(self) -> None:
        """SIGTERM (uvicorn's graceful shutdown), then its report."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, self.stderr = self.proc.communicate(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, self.stderr = self.proc.communicate(timeout=STOP_TIMEOUT)
        for line in out.splitlines():
            if line.startswith("REPORT "):
                self.report = json.loads(line[len("REPORT "):])


# ====================================================================
# The load generator (this process)
# ====================================================================


@dataclass
class LoadResult:
    requested: int
    sent: int = 0
    ok: int = 0
    bad: list[str] = field(default_factory=list)
    seconds: float = 0.0
    bounded: bool = False  # the time bound stopped it before its count
    server_cpu_ns: Optional[int] = None  # CPU the server used during the run

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_us(self) -> float:
        """Server CPU per request, microseconds (nan if unknown)."""
        if self.server_cpu_ns is None or not self.ok:
            return math.nan
        return self.server_cpu_ns / self.ok / 1e3


async def _one_connection(port: int, state: dict[str, int], result: LoadResult, path: str,
                          deadline: float) -> None:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), READ_TIMEOUT)
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    request = f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode("ascii")
    try:
        while True:
            if state["left"] <= 0:
                return
            if time.monotonic() >= deadline:
                result.bounded = True
                return
            state["left"] -= 1
            result.sent += 1
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
            length = 0
            status = head[9:12]
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            body = await asyncio.wait_for(reader.readexactly(length), READ_TIMEOUT)
            if status == b"200" and body == b"ok":
                result.ok += 1
            else:
                result.bad.append(f"{status!r} {body[:40]!r}")
    finally:
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), READ_TIMEOUT)
        except (OSError, asyncio.TimeoutError):
            pass


async def load(port: int, requests: int, connections: int, time_bound: float,
               path: str = "/hello") -> LoadResult:
    """Sends `requests` GET /hello over `connections` keep-alive connections;
    no new request after `time_bound` seconds (those in flight finish)."""
    result = LoadResult(requests)
    state = {"left": requests}
    t0 = time.perf_counter()
    deadline = time.monotonic() + time_bound
    outcomes = await asyncio.gather(
        *(_one_connection(port, state, result, path, deadline) for _ in range(connections)),
        return_exceptions=True,
    )
    result.seconds = time.perf_counter() - t0
    for exc in outcomes:
        if isinstance(exc, BaseException):
            result.bad.append(f"connection failed: {exc!r}")
    return result


async def disconnects(port: int, n: int) -> tuple[list[float], list[str]]:
    """n sequential requests to /hold/{key}: read the first chunk, close
    (FIN, then RST, alternately); returns the close times by key and errors."""
    loop = asyncio.get_running_loop()
    closed: list[float] = []
    errors: list[str] = []
    for i in range(n):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, (HOST, port)), READ_TIMEOUT)
            await loop.sock_sendall(sock, f"GET /hold/{i} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
            data = b""
            deadline = time.monotonic() + READ_TIMEOUT
            while b"registered" not in data:
                chunk = await asyncio.wait_for(loop.sock_recv(sock, 4096),
                                               max(deadline - time.monotonic(), 0.001))
                if not chunk:
                    raise ConnectionError(f"closed early: {data[:80]!r}")
                data += chunk
            if i % 2:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            closed.append(time.monotonic())
            sock.close()
        except (OSError, asyncio.TimeoutError) as exc:
            closed.append(math.nan)
            errors.append(f"hold {i}: {exc!r}")
            sock.close()
        await asyncio.sleep(0.002)  # the server settles: one disconnect at a time
    return closed, errors


# ====================================================================
# Report
# ====================================================================


def machine() -> None:
    import cancelcore
    import starlette
    import uvicorn

    cpus = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cpus
    print(f"machine:  {cpu_model()}, nproc {usable} (of {cpus}), "
          f"{platform.system()} {platform.release()}")
    print(f"Python:   {platform.python_implementation()} {platform.python_version()}; "
          f"uvicorn {uvicorn.__version__} (h11, asyncio loop), starlette {starlette.__version__}, "
          f"cancelcore {cancelcore.__version__}")
    if usable <= 2:
        print(f"note:     only {usable} CPU(s): the load generator (Python, this process) competes "
              "with the server under test for them, so requests per second are those of the pair;\n"
              "          the ratio still compares the two servers under the same client.")


def loop_stall(offloaded: bool, n: int, block: float) -> list[float]:
    """Per cancel, the longest gap (ms) of a 1 ms ticker on the event loop
    while an operation whose cancel callback blocks ``block`` seconds (as
    psycopg's conn.cancel(), a network round trip, does) is canceled from
    the loop's thread, as a disconnect is: inline, and through offload()."""
    import cancelcore
    from cancelcore.asgi import offload

    host = cancelcore.ServiceHost()
    host.open()

    async def main() -> list[float]:
        gaps: list[float] = []
        for _ in range(n):
            async with LoopStall() as stall:
                await asyncio.sleep(0.005)
                stall.reset()
                ch = host.accept_channel()
                ctx = ch.begin_operation()

                def blocking(reason: Any, state: Any) -> None:
                    time.sleep(block)

                if offloaded:
                    ctx.register_for_cancel(*offload(blocking))
                else:
                    ctx.register_for_cancel(blocking)
                ch.fault()
                ctx.end()
                await asyncio.sleep(block + 0.005)
            gaps.append(stall.worst * 1e3)
        return gaps

    try:
        return asyncio.run(main())
    finally:
        host.close()


def in_process(reps: int, n: int) -> dict[str, float]:
    """Per-request cost in this process, no server and no sockets: a raw
    ASGI app answering "ok", called in a loop on one task -- bare, inside an
    operation of the core only (on one shared channel, as the middleware
    runs them), and inside CancellationMiddleware.
    Medians over ``reps`` runs of ``n`` requests, microseconds."""
    from cancelcore.asgi import CancellationMiddleware

    start = {"type": "http.response.start", "status": 200, "headers": []}
    body = {"type": "http.response.body", "body": b"ok"}

    async def raw(scope: Any, receive: Any, send: Any) -> None:
        await send(start)
        await send(body)

    mw = CancellationMiddleware(raw)
    host = mw.host

    channel = host.accept_channel()

    async def core(scope: Any, receive: Any, send: Any) -> None:
        ctx = channel.begin_operation()
        try:
            await raw(scope, receive, send)
        finally:
            ctx.end()

    scope = {"type": "http", "path": "/"}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request"}

    async def send(message: Any) -> None:
        pass

    async def timed(app: Any, count: int) -> float:
        t = time.perf_counter()
        for _ in range(count):
            await app(scope, receive, send)
        return (time.perf_counter() - t) / count * 1e6

    async def main() -> dict[str, float]:
        apps = {"raw": raw, "core": core, "middleware": mw}
        got: dict[str, list[float]] = {k: [] for k in apps}
        for app in apps.values():
            await timed(app, n // 4)
        for _ in range(reps):
            for k, app in apps.items():
                got[k].append(await timed(app, n))
        return {k: statistics.median(v) for k, v in got.items()}

    try:
        return asyncio.run(main())
    finally:
        host.close()


def run(args: argparse.Namespace) -> int:
    quick = args.quick
    reps = args.reps or (3 if quick else 15)
    requests = args.requests or (600 if quick else 3000)
    bound = 10.0 if quick else 30.0
    n_disc = args.disconnects or (50 if quick else 200)
    conns = args.connections

    print("bench_asgi: uvicorn + Starlette, with and without cancelcore's CancellationMiddleware\n")
    machine()
    print(f"run:      {'--quick (rough figures)' if quick else 'full'}; {reps} repetitions x "
          f"{requests} requests per server over {conns} keep-alive connections (bound {bound:.0f} s "
          f"per run), servers alternating, medians; then {n_disc} disconnects")
    print("servers:  each in its own subprocess (its own interpreter and GIL); the load generator is "
          "one asyncio loop in this process\n")

    servers: dict[str, ServerProcess] = {}
    failures: list[str] = []
    unavailable: dict[str, str] = {}
    # (label, server, path): each compared with plain on the same parser and endpoint.
    runs: list[tuple[str, str, str]] = []
    for http in ("h11", "httptools"):
        for variant in VARIANTS:
            runs.append((f"{variant}/{http}", f"{variant}/{http}", "/hello"))
    runs += [("plain/h11 sync", "plain/h11", "/hello-sync"), ("middleware/h11 sync", "middleware/h11", "/hello-sync")]
    try:
        for label, key, path in list(runs):
            if key in servers or key in unavailable:
                continue
            try:
                servers[key] = ServerProcess(key)
            except RuntimeError as exc:
                unavailable[key] = str(exc).splitlines()[-1][:160] if str(exc) else "failed"
        runs = [r for r in runs if r[1] in servers]
        rps: dict[str, list[float]] = {r[0]: [] for r in runs}
        cpu: dict[str, list[float]] = {r[0]: [] for r in runs}

        def one(key: str, path: str, n: int) -> LoadResult:
            srv = servers[key]
            cpu0 = srv.cpu_ns()
            res = asyncio.run(load(srv.port, n, conns, bound, path))
            cpu1 = srv.cpu_ns()
            if cpu0 is not None and cpu1 is not None:
                res.server_cpu_ns = cpu1 - cpu0
            srv.sent += res.sent
            check(res.ok == res.sent and not res.bad,
                  f"{key}{path}: {res.ok} of {res.sent} requests answered 200 ok; {res.bad[:3]}")
            check(res.sent == n or res.bounded, f"{key}{path}: sent {res.sent} of {n}")
            return res

        for label, key, path in runs:  # warm-up, untimed
            one(key, path, max(requests // 4, 100))
        for rep in range(reps):
            # Rotate the order, so no variant always runs first or last.
            order = runs[rep % len(runs):] + runs[:rep % len(runs)]
            for label, key, path in order:
                res = one(key, path, requests)
                rps[label].append(res.rps)
                cpu[label].append(res.cpu_us)
            print(f"  rep {rep + 1}/{reps} done", flush=True)

        def base_of(label: str) -> str:
            variant, _, rest = label.partition("/")
            return "plain/" + rest

        print(f"\n  {'variant/parser':<28} {'median req/s':>12} {'ratio':>7} {'CPU/req':>9} {'+CPU':>8}")
        for label, _, _ in runs:
            med = statistics.median(rps[label])
            base = statistics.median(rps[base_of(label)])
            c = statistics.median(cpu[label]) if not any(math.isnan(v) for v in cpu[label]) else math.nan
            cb = statistics.median(cpu[base_of(label)]) if not any(math.isnan(v) for v in cpu[base_of(label)]) else math.nan
            print(f"  {label:<28} {med:>12.0f} {med / base:>7.3f} {c:>6.1f} us {c - cb:>+6.1f} us")
        for key, why in unavailable.items():
            print(f"  {key:<28} {'not run':>12}  ({why})")
        for http in ("h11", "httptools"):
            label = f"middleware/{http}"
            if label in rps:
                ratio = statistics.median(rps[label]) / statistics.median(rps[f"plain/{http}"])
                print(f"  overhead on {http}: ratio of the medians {ratio:.3f}; target >= 0.95: "
                      f"{'met' if ratio >= 0.95 else 'NOT met'}")

        # ------------------------------------------------ disconnects
        srv = servers["middleware/h11"]
        closed, errors = asyncio.run(disconnects(srv.port, n_disc))
        srv.sent += n_disc
        check(not errors, f"disconnects: {errors[:3]}")
    finally:
        for srv in servers.values():
            srv.stop()

    # ---------------------------------------------------- server counts
    for kind, srv in servers.items():
        rep_ = srv.report
        if not rep_:
            failures.append(f"{kind} server gave no report (exit {srv.proc.returncode}): "
                            f"{srv.stderr[-1500:]}")
            continue
        if rep_["served"] != srv.sent:
            failures.append(f"{kind} server served {rep_['served']} requests, {srv.sent} were sent")
    mw_report = servers["middleware/h11"].report
    lat: list[float] = []
    if mw_report:
        st = mw_report["stats"]
        cancels: dict[str, list[float]] = mw_report["cancels"]
        frees: dict[str, int] = mw_report["frees"]
        sent = servers["middleware/h11"].sent
        expect = {
            "ops_begun": sent, "ops_ended": sent, "ops_in_flight": 0, "ops_canceled": n_disc,
            "cancels_channel_faulted": n_disc, "cancels_host_abort": 0,
            "cancel_callbacks_run": n_disc, "free_states_run": n_disc, "callback_errors": 0,
        }
        for key, value in expect.items():
            if st[key] != value:
                failures.append(f"middleware host.stats[{key!r}] = {st[key]}, expected {value}")
        if mw_report["host_state"] != "CLOSED":
            failures.append(f"middleware host ended {mw_report['host_state']}, not CLOSED")
        if mw_report["missing_context"]:
            failures.append(f"current_operation() was None in {mw_report['missing_context']} requests")
        wrong = [k for k in map(str, range(n_disc)) if len(cancels.get(k, [])) != 1 or frees.get(k) != 1]
        if wrong:
            failures.append(f"{len(wrong)} disconnects without exactly one CHANNEL_FAULTED cancel "
                            f"and one free-state, e.g. {wrong[:5]}")
        lat = [(cancels[str(i)][0] - closed[i]) * 1e3 for i in range(n_disc)
               if len(cancels.get(str(i), [])) == 1 and not math.isnan(closed[i])]
    if lat:
        fin = [v for i, v in enumerate(lat) if i % 2 == 0]
        rst = [v for i, v in enumerate(lat) if i % 2 == 1]

        def fmt(values: list[float]) -> str:
            return (f"p50 {percentile(values, 50):.3f} ms, p99 {percentile(values, 99):.3f} ms, "
                    f"max {max(values):.3f} ms (n={len(values)})")

        print("\n  disconnect -> on_cancel (client close() to the callback in the server process, "
              "CLOCK_MONOTONIC):")
        print(f"    all  {fmt(lat)}  target p99 < 5 ms: "
              f"{'met' if percentile(lat, 99) < 5.0 else 'NOT met'}")
        print(f"    FIN  {fmt(fin)}")
        print(f"    RST  {fmt(rst)}")
    ip = in_process(3 if quick else 9, 5000 if quick else 20000)
    print("\n  in process (a raw ASGI app called in a loop on one task; no server, no sockets), per request:")
    print(f"    bare {ip['raw']:.2f} us; in a core channel + operation {ip['core']:.2f} us "
          f"(+{ip['core'] - ip['raw']:.2f}); in CancellationMiddleware {ip['middleware']:.2f} us "
          f"(+{ip['middleware'] - ip['raw']:.2f})")
    n_stall = 10 if quick else 40
    inline = loop_stall(False, n_stall, 0.005)
    off = loop_stall(True, n_stall, 0.005)
    base = loop_stall(False, n_stall, 0.0)
    print("\n  event-loop stall per cancel whose callback blocks 5 ms (a loopback conn.cancel() took "
          "3-14 ms), longest 1 ms-ticker gap:")
    print(f"    baseline   p50 {percentile(base, 50):.2f} ms, p99 {percentile(base, 99):.2f} ms "
          "(a callback that returns at once: the ticker's own jitter)")
    print(f"    inline     p50 {percentile(inline, 50):.2f} ms, p99 {percentile(inline, 99):.2f} ms")
    print(f"    offload()  p50 {percentile(off, 50):.2f} ms, p99 {percentile(off, 99):.2f} ms")
    print("\ncounts")
    if failures:
        for text in failures:
            print(f"  [FAILED] {text}")
        return 1
    print(f"  [ok] every load request answered 200 ok; each server served exactly what was sent "
          f"({', '.join(f'{k} {v.sent}' for k, v in servers.items())})")
    print(f"  [ok] middleware host: {servers['middleware/h11'].sent} operations begun and ended, "
          f"{n_disc} CHANNEL_FAULTED cancels and free-states, each once per disconnect; "
          f"nothing else canceled; host CLOSED after SIGTERM")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few seconds, rough figures")
    parser.add_argument("--reps", type=int, default=0, help="repetitions (default 15; --quick 3)")
    parser.add_argument("--requests", type=int, default=0,
                        help="requests per load run (default 3000; --quick 600)")
    parser.add_argument("--connections", type=int, default=16,
                        help="concurrent keep-alive connections (default 16)")
    parser.add_argument("--disconnects", type=int, default=0,
                        help="disconnects for the latency figure (default 200; --quick 50)")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args.serve)
    for name, top in (("reps", 50), ("requests", 200_000), ("connections", 256), ("disconnects", 5000)):
        value = getattr(args, name)
        if value < 0 or value > top:
            parser.error(f"--{name} must be between 1 and {top}")
    try:
        return run(args)
    except BenchFailure as exc:
        print(f"\nFAILED: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
