#!/usr/bin/env python3
"""bench_aiohttp.py: what ``cancelcore.aiohttp.setup`` costs a real server.

    python bench/bench_aiohttp.py            full run (about a minute)
    python bench/bench_aiohttp.py --quick    a few seconds: a smoke test, rough figures

Two aiohttp servers (``AppRunner`` + ``TCPSite``, no access log), each in
a SUBPROCESS of its own on 127.0.0.1, serve one async handler answering
"ok": one bare, one with ``cancelcore.aiohttp.setup(app)``.  A load
generator in this process (one asyncio loop, raw asyncio streams,
--connections keep-alive connections, HTTP/1.1 GET) sends a fixed number of
requests to one server at a time; the servers take turns, in an order that
alternates from one repetition to the next, and each figure is the MEDIAN
over the repetitions (after one untimed warm-up per server).  The overhead
is the ratio of the medians (with / without; the issue's target is >= 0.95).

Every count is checked: each request was answered 200 "ok", and at the end
the server with the adapter reports its host's stats -- every request an
operation begun and ended, none canceled.  Exit status: 0 when every count
was right (speed is reported, never asserted), 1 when a count was wrong, 2
on a bad command line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from typing import Any, Optional

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support"))
from measure import machine_line  # noqa: E402

HOST = "127.0.0.1"
KINDS = ("plain", "cancelcore", "noop")
READ_TIMEOUT = 30.0


def serve(kind: str) -> int:
    """Runs one server until stdin closes; prints its port, then (at the
    end) its host's stats as JSON."""
    from aiohttp import web

    import cancelcore.aiohttp

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/hello", hello)
        host = cancelcore.aiohttp.setup(app) if kind == "cancelcore" else None
        if kind == "noop":  # aiohttp's middleware machinery alone, for comparison
            @web.middleware
            async def passthrough(request: web.Request, handler: Any) -> web.StreamResponse:
                return await handler(request)

            app.middlewares.append(passthrough)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, HOST, 0)
        await site.start()
        print(site._server.sockets[0].getsockname()[1], flush=True)  # type: ignore[union-attr]
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await runner.cleanup()
        print(json.dumps(host.stats if host is not None else {}), flush=True)

    asyncio.run(main())
    return 0


class Server:
    def __init__(self, kind: str) -> None:
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve", kind],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            self.proc.kill()
            raise RuntimeError(f"server {kind} did not start: {line!r}")
        self.port = int(line)

    def cpu(self) -> float:
        """CPU seconds the server process has used (user + system)."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> dict[str, int]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        try:
            out = self.proc.stdout.read()
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        return json.loads(out.strip().splitlines()[-1]) if out.strip() else {}


async def _connection(port: int, state: dict[str, int]) -> None:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), READ_TIMEOUT)
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    request = f"GET /hello HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode("ascii")
    try:
        while state["left"] > 0:
            state["left"] -= 1
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            body = await asyncio.wait_for(reader.readexactly(length), READ_TIMEOUT)
            if head[9:12] == b"200" and body == b"ok":
                state["ok"] += 1
            else:
                state["bad"] += 1
    finally:
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), READ_TIMEOUT)
        except (OSError, asyncio.TimeoutError):
            pass


async def load(port: int, requests: int, connections: int) -> tuple[float, int, int]:
    """(seconds, right answers, wrong answers)."""
    state = {"left": requests, "ok": 0, "bad": 0}
    t0 = time.perf_counter()
    outcomes = await asyncio.gather(*(_connection(port, state) for _ in range(connections)),
                                    return_exceptions=True)
    seconds = time.perf_counter() - t0
    bad = state["bad"] + sum(isinstance(o, BaseException) for o in outcomes)
    return seconds, state["ok"], bad


def in_process(n: int, reps: int) -> float:
    """The adapter's middleware's own cost per request, microseconds (median
    over ``reps``): called directly with the least of a request it touches
    (a transport already watched), minus a pass-through middleware."""
    from aiohttp import web

    import cancelcore.aiohttp

    class Transport:
        def __init__(self) -> None:
            self.protocol = cancelcore.aiohttp._Watch(object())

        def is_closing(self) -> bool:
            return False

        def get_protocol(self) -> Any:
            return self.protocol

    class Request:
        transport = Transport()
        headers: dict[str, str] = {}  # no cancelcore-deadline-ms: no deadline

    response = web.Response(text="ok")

    async def handler(request: Any) -> web.Response:
        return response

    async def passthrough(request: Any, handler: Any) -> web.StreamResponse:
        return await handler(request)

    async def measure() -> float:
        app = web.Application()
        cancelcore.aiohttp.setup(app)
        middleware = app.middlewares[0]
        request = Request()
        costs = []
        for _ in range(reps):
            t0 = time.perf_counter()
            for _ in range(n):
                await middleware(request, handler)  # type: ignore[arg-type]
            t1 = time.perf_counter()
            for _ in range(n):
                await passthrough(request, handler)
            t2 = time.perf_counter()
            costs.append(((t1 - t0) - (t2 - t1)) / n * 1e6)
        return statistics.median(costs)

    return asyncio.run(measure())


def run(args: argparse.Namespace) -> int:
    import aiohttp

    import cancelcore

    print("bench_aiohttp: requests per second, with and without cancelcore.aiohttp.setup()")
    print(f"machine:  {machine_line()}")
    print(f"versions: aiohttp {aiohttp.__version__}, cancelcore {cancelcore.__version__}")
    print(f"load:     {args.requests} requests per run over {args.connections} keep-alive connections "
          f"(raw asyncio streams, this process), {args.reps} repetitions; the medians")
    failures: list[str] = []
    own = in_process(2000 if args.quick else 20000, args.reps)
    servers = {k: Server(k) for k in KINDS}
    sent = {k: 0 for k in KINDS}
    rps: dict[str, list[float]] = {k: [] for k in KINDS}
    cpu: dict[str, list[float]] = {k: [] for k in KINDS}  # server CPU microseconds per request
    ratios: list[float] = []
    try:
        for k in KINDS:  # untimed warm-up
            asyncio.run(load(servers[k].port, args.requests // 4, args.connections))
            sent[k] += args.requests // 4
        for rep in range(args.reps):
            order = KINDS if rep % 2 == 0 else KINDS[::-1]
            got: dict[str, float] = {}
            for k in order:
                cpu0 = servers[k].cpu()
                seconds, ok, bad = asyncio.run(load(servers[k].port, args.requests, args.connections))
                cpu[k].append((servers[k].cpu() - cpu0) / args.requests * 1e6)
                sent[k] += args.requests
                if ok != args.requests or bad:
                    failures.append(f"{k}: {ok} right and {bad} wrong answers of {args.requests}")
                got[k] = ok / seconds
                rps[k].append(got[k])
            ratios.append(got["cancelcore"] / got["plain"])
    finally:
        stats = {k: s.stop() for k, s in servers.items()}
    plain, cc = statistics.median(rps["plain"]), statistics.median(rps["cancelcore"])
    print(f"\n  bare:          {plain:8.0f} requests/s  (runs: {', '.join(f'{r:.0f}' for r in rps['plain'])})")
    print(f"  with setup():  {cc:8.0f} requests/s  (runs: {', '.join(f'{r:.0f}' for r in rps['cancelcore'])})")
    noop = statistics.median(rps["noop"])
    print(f"  a pass-through middleware (aiohttp's middleware machinery alone): {noop:.0f} requests/s, "
          f"ratio {noop / plain:.3f}, server CPU per request {statistics.median(cpu['noop']):.0f} us")
    print(f"  ratio of the medians {cc / plain:.3f} (median of the per-repetition ratios "
          f"{statistics.median(ratios):.3f}); target >= 0.95: {'met' if cc / plain >= 0.95 else 'NOT met'}")
    cpu_plain, cpu_cc = statistics.median(cpu["plain"]), statistics.median(cpu["cancelcore"])
    print(f"  server CPU per request (median): bare {cpu_plain:.0f} us, with setup() {cpu_cc:.0f} us "
          f"(+{cpu_cc - cpu_plain:.0f} us); capacity ratio (bare CPU / with) {cpu_plain / cpu_cc:.3f}")
    print(f"  the middleware's own code, timed in process (no network): {own:.1f} us per request, "
          f"{own / cpu_plain * 100:.1f}% of the bare server's CPU per request "
          f"(ratio {cpu_plain / (cpu_plain + own):.3f})")
    st, expected = stats["cancelcore"], sent["cancelcore"]
    if st.get("ops_begun") != expected or st.get("ops_ended") != expected:
        failures.append(f"cancelcore: {st.get('ops_begun')} operations begun and "
                        f"{st.get('ops_ended')} ended for {expected} requests")
    elif st.get("ops_canceled") or st.get("ops_in_flight"):
        failures.append(f"cancelcore: unexpected cancels or operations left: {st}")
    else:
        print(f"  [ok] {expected} requests, {expected} operations begun and ended, none canceled")
    if failures:
        print("\nFAILED:\n  " + "\n  ".join(failures))
        return 1
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--serve", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="a smoke test: few requests, 1 repetition")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--reps", type=int, default=11)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return 2 if exc.code else 0
    if args.serve:
        return serve(args.serve)
    if args.quick:
        args.requests, args.reps = 600, 1
    if args.requests < 1 or args.connections < 1 or args.reps < 1:
        print("--requests, --connections and --reps must be >= 1", file=sys.stderr)
        return 2
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
