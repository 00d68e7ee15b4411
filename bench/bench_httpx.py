#!/usr/bin/env python3
"""bench_httpx.py: what ``cancelcore.httpx``'s transports cost per request.

    python bench/bench_httpx.py            full run (about half a minute)
    python bench/bench_httpx.py --quick    a few seconds: a smoke test, rough figures

A minimal HTTP/1.1 server (asyncio streams, keep-alive, answers "ok") runs
in a SUBPROCESS on 127.0.0.1, so the client measured here has the
interpreter to itself.  One ``httpx.Client`` (sync) and one
``httpx.AsyncClient`` per variant send GETs over one keep-alive
connection:

- ``plain``: httpx's own transport;
- ``outside``: cancelcore's transport, no operation current (the wrapped
  network backend passes through);
- ``inside``: cancelcore's transport inside an operation (one hook and one
  request record per request, the socket recorded at every read/write);
- ``deadline``: the same with a deadline (the header computed and sent).

Then the work the transport adds to a request inside an operation, in
isolation (no I/O): the request record, the hook, three socket records (a
write and two reads), the context variable, the end; with a deadline also
the header.  That is the floor under the end-to-end figures, which on a
shared 2-core machine move by more than it from one run to the next.

The variants take turns in an order that rotates between repetitions; each
figure is the MEDIAN over the repetitions of the mean time per request in
a batch (after an untimed warm-up), and each ratio is that median over
plain's, measured in the same run.  Nothing is asserted about speed; every
response is checked to be 200 "ok" (exit status 1 otherwise).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Optional

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support"))
from measure import machine_line  # noqa: E402

HOST = "127.0.0.1"
VARIANTS = ("plain", "outside", "inside", "deadline")
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


def serve() -> int:
    """The server: prints its port, runs until stdin closes."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not head:
                    break
                writer.write(RESPONSE)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, HOST, 0)
        print(server.sockets[0].getsockname()[1], flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes it
        server.close()

    asyncio.run(main())
    return 0


class Bad(Exception):
    pass


def check(response: Any) -> None:
    if response.status_code != 200 or response.content != b"ok":
        raise Bad(f"unexpected response {response.status_code} {response.content[:40]!r}")


def sync_batch(client: Any, url: str, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        check(client.get(url))
    return (time.perf_counter() - t0) / n


async def async_batch(client: Any, url: str, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        check(await client.get(url))
    return (time.perf_counter() - t0) / n


def run(port: int, reps: int, batch: int) -> dict[str, dict[str, float]]:
    import httpx

    from cancelcore import ServiceHost
    from cancelcore._operation import _current
    from cancelcore.httpx import AsyncHTTPTransport, HTTPTransport

    url = f"http://{HOST}:{port}/"
    host = ServiceHost()
    host.open()

    def in_op(deadline: Optional[float], fn: Callable[[], Any]) -> Any:
        # One operation per batch, current while the batch runs (as in a
        # handler making many calls).
        with host.accept_channel() as ch, ch.begin_operation(deadline=deadline) as ctx:
            token = _current.set(ctx)
            try:
                return fn()
            finally:
                _current.reset(token)

    results: dict[str, dict[str, list[float]]] = {"sync": {v: [] for v in VARIANTS},
                                                  "async": {v: [] for v in VARIANTS}}
    sync_clients = {v: httpx.Client(transport=httpx.HTTPTransport() if v == "plain" else HTTPTransport())
                    for v in VARIANTS}

    def sync_variant(v: str, n: int) -> float:
        client = sync_clients[v]
        if v in ("plain", "outside"):
            return sync_batch(client, url, n)
        deadline = time.monotonic() + 3600 if v == "deadline" else None
        return float(in_op(deadline, lambda: sync_batch(client, url, n)))

    for v in VARIANTS:  # warm-up: connections open, code paths hot
        sync_variant(v, max(20, batch // 10))
    for rep in range(reps):
        order = VARIANTS[rep % len(VARIANTS):] + VARIANTS[:rep % len(VARIANTS)]
        for v in order:
            results["sync"][v].append(sync_variant(v, batch))
    for c in sync_clients.values():
        c.close()

    async def async_all() -> None:
        clients = {v: httpx.AsyncClient(transport=httpx.AsyncHTTPTransport() if v == "plain"
                                        else AsyncHTTPTransport()) for v in VARIANTS}

        async def variant(v: str, n: int) -> float:
            client = clients[v]
            if v in ("plain", "outside"):
                return await async_batch(client, url, n)
            deadline = time.monotonic() + 3600 if v == "deadline" else None
            with host.accept_channel() as ch, ch.begin_operation(deadline=deadline) as ctx:
                token = _current.set(ctx)
                try:
                    return await async_batch(client, url, n)
                finally:
                    _current.reset(token)

        for v in VARIANTS:
            await variant(v, max(20, batch // 10))
        for rep in range(reps):
            order = VARIANTS[rep % len(VARIANTS):] + VARIANTS[:rep % len(VARIANTS)]
            for v in order:
                results["async"][v].append(await variant(v, batch))
        for c in clients.values():
            await c.aclose()

    asyncio.run(async_all())
    host.close()
    return {mode: {v: statistics.median(xs) for v, xs in by.items()} for mode, by in results.items()}


def isolated(reps: int, n: int) -> dict[str, float]:
    """Microseconds the transport adds per request inside an operation,
    without the network (median of ``reps`` loops of ``n``)."""
    import socket

    import httpx

    from cancelcore import ServiceHost
    from cancelcore.httpx import _calls, _start

    host = ServiceHost()
    host.open()
    sock = socket.socket()
    out = {}
    try:
        for name, deadline in (("inside", None), ("deadline", time.monotonic() + 3600)):
            times = []
            for _ in range(reps):
                with host.accept_channel() as ch, ch.begin_operation(deadline=deadline) as ctx:
                    request = httpx.Request("GET", f"http://{HOST}/")
                    t0 = time.perf_counter()
                    for _ in range(n):
                        call = _start(ctx, request)
                        assert call is not None
                        token = _calls.set(call)
                        for _ in range(3):
                            current = _calls.get()
                            assert current is not None
                            current.use(sock)
                        _calls.reset(token)
                        call.finish()
                    times.append((time.perf_counter() - t0) / n)
            out[name] = statistics.median(times)
    finally:
        sock.close()
        host.close()
    return out


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a smoke test: few, short repetitions")
    parser.add_argument("--reps", type=int, default=None, help="repetitions per variant (default 40)")
    parser.add_argument("--batch", type=int, default=None, help="requests per repetition (default 100)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        return serve()
    reps = args.reps or (3 if args.quick else 40)
    batch = args.batch or (50 if args.quick else 100)
    if reps <= 0 or batch <= 0:
        parser.error("--reps and --batch must be > 0")
    server = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        try:
            medians = run(port, reps, batch)
        except Bad as exc:
            print(f"FAILED: {exc}", file=sys.stderr)
            return 1
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server.wait(10)
    print(f"# bench_httpx: {machine_line()}")
    print(f"# per-request time, median of {reps} repetitions x {batch} keep-alive GETs "
          f"to a local asyncio server (its own process)")
    print(f"{'mode':6} {'variant':9} {'us/request':>11} {'vs plain':>9} {'extra us':>9}")
    for mode, by in medians.items():
        base = by["plain"]
        for v in VARIANTS:
            t = by[v]
            print(f"{mode:6} {v:9} {t * 1e6:11.1f} {t / base:9.3f} {(t - base) * 1e6:9.1f}")
    alone = isolated(reps, 2000 if args.quick else 20000)
    print("# the transport's added work per request, in isolation (no I/O), median of "
          f"{reps} loops")
    for v, t in alone.items():
        print(f"isolated {v:9} {t * 1e6:9.2f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
