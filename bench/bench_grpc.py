#!/usr/bin/env python3
"""bench_grpc.py: what the cancelcore gRPC interceptors cost a real server.

    python bench/bench_grpc.py            full run (about a minute)
    python bench/bench_grpc.py --quick    a few seconds: a smoke test, rough figures

Four servers, each in a SUBPROCESS of its own on 127.0.0.1, serve one
unary method (a generic handler, raw bytes, answering its request):
``grpc.server`` (10 threads) with a sync handler and ``grpc.aio.server``
with an async handler, each bare and with the cancelcore interceptor
(``CancellationInterceptor`` / ``AioCancellationInterceptor``).  A load
generator in this process (a ``grpc.aio`` client, one channel,
--concurrency callers each calling in a loop) sends a fixed number of calls
to one server at a time; the bare and intercepted servers of a kind take
turns, in an order that alternates from one repetition to the next, and
each figure is the MEDIAN over the repetitions (after one untimed warm-up
per server).  The overhead is the ratio of the medians (with / without;
the issue's target is >= 0.95).

Every count is checked: each call got its own request back, and at the end
each intercepted server reports its host's stats -- every call an
operation begun and ended, none canceled, one free-state per call that
registered (none do here: the handler is the bare minimum).  Exit status:
0 when every count was right (speed is reported, never asserted), 1 when a
count was wrong, 2 on a bad command line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Optional

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support"))
from measure import machine_line  # noqa: E402

HOST = "127.0.0.1"
METHOD = "/cancelcore.bench.Echo/Call"
KINDS = ("sync-plain", "sync-cancelcore", "sync-noop", "aio-plain", "aio-cancelcore", "aio-noop")
START_TIMEOUT = 20.0


# ----------------------------------------------------------------- servers


def serve(kind: str) -> int:
    """Runs one server until stdin closes; prints its port, then (at the end)
    its host's stats as JSON."""
    import grpc
    import grpc.aio

    from cancelcore.grpc import AioCancellationInterceptor, CancellationInterceptor

    def call(request: bytes, context: Any) -> bytes:
        return request

    async def acall(request: bytes, context: Any) -> bytes:
        return request

    flavour, variant = kind.split("-")

    class PassThrough(grpc.ServerInterceptor):  # type: ignore[misc]
        """gRPC's own interceptor machinery, for comparison."""

        def intercept_service(self, continuation: Any, details: Any) -> Any:
            return continuation(details)

    class AioPassThrough(grpc.aio.ServerInterceptor):  # type: ignore[misc]
        async def intercept_service(self, continuation: Any, details: Any) -> Any:
            return await continuation(details)

    handler = grpc.method_handlers_generic_handler("cancelcore.bench.Echo", {
        "Call": grpc.unary_unary_rpc_method_handler(call if flavour == "sync" else acall)})
    wait_stdin = lambda: sys.stdin.read()  # noqa: E731 - EOF: the parent is done

    if flavour == "sync":
        from concurrent.futures import ThreadPoolExecutor

        interceptor = CancellationInterceptor() if variant == "cancelcore" else None
        server = grpc.server(ThreadPoolExecutor(max_workers=10),
                             interceptors=[interceptor] if interceptor else
                             [PassThrough()] if variant == "noop" else [])
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port(f"{HOST}:0")
        server.start()
        print(port, flush=True)
        wait_stdin()
        if interceptor is not None:
            interceptor.stop(server, 1.0)
            print(json.dumps(interceptor.host.stats), flush=True)
        else:
            server.stop(1.0).wait()
            print("{}", flush=True)
        return 0

    async def main() -> None:
        aio_interceptor = AioCancellationInterceptor() if variant == "cancelcore" else None
        server = grpc.aio.server(interceptors=[aio_interceptor] if aio_interceptor else
                                 [AioPassThrough()] if variant == "noop" else [])
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port(f"{HOST}:0")
        await server.start()
        print(port, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, wait_stdin)
        if aio_interceptor is not None:
            await aio_interceptor.stop(server, 1.0)
            print(json.dumps(aio_interceptor.host.stats), flush=True)
        else:
            await server.stop(1.0)
            print("{}", flush=True)

    asyncio.run(main())
    return 0


class Server:
    def __init__(self, kind: str) -> None:
        self.kind = kind
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


# -------------------------------------------------------------------- load


async def load(port: int, calls: int, concurrency: int) -> tuple[float, int, int]:
    """(seconds, calls answered right, calls answered wrong)."""
    import grpc.aio

    left = calls
    good = bad = 0
    async with grpc.aio.insecure_channel(f"{HOST}:{port}") as channel:
        method = channel.unary_unary(METHOD)
        await method(b"warm", timeout=START_TIMEOUT)

        async def caller(n: int) -> None:
            nonlocal left, good, bad
            payload = b"%d" % n
            while left > 0:
                left -= 1
                try:
                    answer = await method(payload, timeout=30)
                except Exception:
                    bad += 1
                    continue
                if answer == payload:
                    good += 1
                else:
                    bad += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(caller(i) for i in range(concurrency)))
        return time.perf_counter() - t0, good, bad


class _Context:
    """The least of a servicer context the interceptors touch, for timing
    the interceptor's own code without a network in between."""

    def add_callback(self, callback: Any) -> bool:
        return True

    def is_active(self) -> bool:
        return True

    def add_done_callback(self, callback: Any) -> None:
        pass

    def time_remaining(self) -> float:
        return 30.0  # the load's timeout: each RPC's operation gets that deadline


def in_process(n: int, reps: int) -> tuple[float, float]:
    """The interceptors' own cost per call, microseconds (median over
    ``reps``): a wrapped handler called directly minus the bare handler."""
    import grpc

    from cancelcore.grpc import AioCancellationInterceptor, CancellationInterceptor

    def call(request: bytes, context: Any) -> bytes:
        return request

    async def acall(request: bytes, context: Any) -> bytes:
        return request

    context = _Context()
    sync_handler = grpc.unary_unary_rpc_method_handler(call)
    wrapped = CancellationInterceptor().intercept_service(lambda _: sync_handler, None).unary_unary
    sync_costs = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(n):
            wrapped(b"x", context)
        t1 = time.perf_counter()
        for _ in range(n):
            call(b"x", context)
        t2 = time.perf_counter()
        sync_costs.append(((t1 - t0) - (t2 - t1)) / n * 1e6)

    async def aio() -> list[float]:
        async def continuation(_: Any) -> Any:
            return grpc.unary_unary_rpc_method_handler(acall)

        handler = await AioCancellationInterceptor().intercept_service(continuation, None)
        awrapped = handler.unary_unary
        costs = []
        for _ in range(reps):
            t0 = time.perf_counter()
            for _ in range(n):
                await awrapped(b"x", context)
            t1 = time.perf_counter()
            for _ in range(n):
                await acall(b"x", context)
            t2 = time.perf_counter()
            costs.append(((t1 - t0) - (t2 - t1)) / n * 1e6)
        return costs

    return statistics.median(sync_costs), statistics.median(asyncio.run(aio()))


def run(args: argparse.Namespace) -> int:
    import cancelcore
    import grpc

    print("bench_grpc: unary calls per second, with and without the cancelcore interceptor")
    print(f"machine:  {machine_line()}")
    print(f"versions: grpcio {grpc.__version__}, cancelcore {cancelcore.__version__}")
    print(f"load:     {args.calls} calls per run, {args.concurrency} concurrent callers "
          f"(grpc.aio client, this process), {args.reps} repetitions; the medians")
    failures: list[str] = []
    own = dict(zip(("sync", "aio"), in_process(2000 if args.quick else 20000, args.reps)))
    for flavour in ("sync", "aio"):
        kinds = (f"{flavour}-plain", f"{flavour}-cancelcore", f"{flavour}-noop")
        servers = {k: Server(k) for k in kinds}
        sent = {k: 0 for k in kinds}  # calls each server answered
        qps: dict[str, list[float]] = {k: [] for k in kinds}
        cpu: dict[str, list[float]] = {k: [] for k in kinds}  # server CPU microseconds per call
        ratios: list[float] = []
        try:
            for k in kinds:  # untimed warm-up
                asyncio.run(load(servers[k].port, args.calls // 4, args.concurrency))
                sent[k] += args.calls // 4 + 1
            for rep in range(args.reps):
                order = kinds if rep % 2 == 0 else kinds[::-1]
                got: dict[str, float] = {}
                for k in order:
                    cpu0 = servers[k].cpu()
                    seconds, good, bad = asyncio.run(load(servers[k].port, args.calls, args.concurrency))
                    cpu[k].append((servers[k].cpu() - cpu0) / (args.calls + 1) * 1e6)
                    sent[k] += args.calls + 1
                    if good != args.calls or bad:
                        failures.append(f"{k}: {good} right and {bad} wrong answers of {args.calls}")
                    got[k] = good / seconds
                    qps[k].append(got[k])
                ratios.append(got[kinds[1]] / got[kinds[0]])
        finally:
            stats = {k: s.stop() for k, s in servers.items()}
        plain, cc = statistics.median(qps[kinds[0]]), statistics.median(qps[kinds[1]])
        server = "grpc.server, sync handler" if flavour == "sync" else "grpc.aio.server, async handler"
        print(f"\n{server}:")
        print(f"  bare:             {plain:8.0f} calls/s  (runs: {', '.join(f'{q:.0f}' for q in qps[kinds[0]])})")
        print(f"  with interceptor: {cc:8.0f} calls/s  (runs: {', '.join(f'{q:.0f}' for q in qps[kinds[1]])})")
        print(f"  ratio of the medians {cc / plain:.3f} (median of the per-repetition ratios "
              f"{statistics.median(ratios):.3f}); target >= 0.95: {'met' if cc / plain >= 0.95 else 'NOT met'}")
        cpu_plain, cpu_cc = statistics.median(cpu[kinds[0]]), statistics.median(cpu[kinds[1]])
        noop = statistics.median(qps[kinds[2]])
        print(f"  a pass-through interceptor (gRPC's interceptor machinery alone): {noop:.0f} calls/s, "
              f"ratio {noop / plain:.3f}, server CPU per call {statistics.median(cpu[kinds[2]]):.0f} us")
        print(f"  server CPU per call (median): bare {cpu_plain:.0f} us, with interceptor {cpu_cc:.0f} us "
              f"(+{cpu_cc - cpu_plain:.0f} us); capacity ratio (bare CPU / with) {cpu_plain / cpu_cc:.3f}")
        print(f"  the interceptor's own code, timed in process (no network): {own[flavour]:.1f} us per call, "
              f"{own[flavour] / cpu_plain * 100:.1f}% of the bare server's CPU per call "
              f"(ratio {cpu_plain / (cpu_plain + own[flavour]):.3f})")
        st = stats[kinds[1]]
        expected = sent[kinds[1]]
        if st.get("ops_begun") != expected or st.get("ops_ended") != expected:
            failures.append(f"{kinds[1]}: {st.get('ops_begun')} operations begun and "
                            f"{st.get('ops_ended')} ended for {expected} calls")
        elif st.get("ops_canceled") or st.get("ops_in_flight"):
            failures.append(f"{kinds[1]}: unexpected cancels or operations left: {st}")
        else:
            print(f"  [ok] {expected} calls, {expected} operations begun and ended, none canceled")
    if failures:
        print("\nFAILED:\n  " + "\n  ".join(failures))
        return 1
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--serve", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="a smoke test: few calls, 1 repetition")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--reps", type=int, default=11)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return 2 if exc.code else 0
    if args.serve:
        return serve(args.serve)
    if args.quick:
        args.calls, args.reps = 400, 1
    if args.calls < 1 or args.concurrency < 1 or args.reps < 1:
        print("--calls, --concurrency and --reps must be >= 1", file=sys.stderr)
        return 2
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
