#!/usr/bin/env python3
"""bench_grpc_propagation.py: cancellation across gRPC hops, and what the
client interceptors cost.

    python bench/bench_grpc_propagation.py           full run (about a minute)
    python bench/bench_grpc_propagation.py --quick   a few seconds: a smoke test

Every server runs in a SUBPROCESS of its own on 127.0.0.1:

1. Per-call cost.  A leaf server (``grpc.server`` + ``CancellationInterceptor``,
   a unary method answering its request); this process calls it in a loop
   from inside an operation (``host.dispatch``), one call at a time: a
   plain channel, then one with ``client_interceptor()`` (inside an
   operation with a deadline, so the timeout is cut and the call linked),
   then the intercepted channel outside any operation; the same for
   ``grpc.aio`` channels and ``aio_client_interceptor()``.  The variants take
   turns, in an order that alternates between repetitions; each figure is
   the median over the repetitions of the mean time per call.

2. Propagation latency.  client -> A -> leaf, A being a sync server
   (``grpc.server``, a blocking call through ``client_interceptor()``) or an
   asyncio server (``aio_client_interceptor()``).  The client cancels its
   call once the leaf's handler runs; each server stamps its cancel
   callback with ``time.monotonic()`` (one clock for every process on
   Linux).  Hop 1: client cancel -> A's cancel callback; hop 2: A's ->
   the leaf's (what the interceptor adds); end to end: client -> leaf.
   p50 / p99 over the repetitions.

Every count is checked (each server's host stats at the end: every call an
operation begun and ended, every canceled one canceled once with
CHANNEL_FAULTED, one free-state each).  Exit status 0 when every count was
right (speeds are reported, never asserted), 1 when one was wrong, 2 on a
bad command line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import statistics
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Optional

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support"))
from measure import machine_line, percentile  # noqa: E402

HOST = "127.0.0.1"
SERVICE = "cancelcore.bench.Hop"
ECHO = f"/{SERVICE}/Echo"
WAIT = f"/{SERVICE}/Wait"
ROLES = ("leaf", "relay-sync", "relay-aio")
TIMEOUT = 20.0


# ----------------------------------------------------------------- servers


def serve(role: str, down: Optional[int]) -> int:
    """Runs one server until stdin closes.  Prints ``port N``, then
    ``entered KEY T`` and ``cancel KEY T`` as they happen, and at the end
    ``stats {...}`` (its host's)."""
    import grpc
    import grpc.aio

    import cancelcore
    from cancelcore.grpc import (AioCancellationInterceptor, CancellationInterceptor,
                                 aio_client_interceptor, client_interceptor)

    out: queue.SimpleQueue[Optional[str]] = queue.SimpleQueue()

    def writer() -> None:  # stdout off the cancel path: a stamp, then a queue
        while (line := out.get()) is not None:
            print(line, flush=True)

    threading.Thread(target=writer, daemon=True).start()

    def enter(request: bytes) -> Any:
        ctx = cancelcore.current_operation()
        assert ctx is not None
        key = request.decode()
        ctx.register_for_cancel(lambda reason, state: out.put(f"cancel {key} {time.monotonic()!r} {int(reason)}"),
                                lambda state: None)
        out.put(f"entered {key} {time.monotonic()!r}")
        return ctx

    def echo(request: bytes, context: Any) -> bytes:
        return request

    async def aecho(request: bytes, context: Any) -> bytes:
        return request

    def wait_stdin() -> None:
        sys.stdin.read()  # EOF: the parent is done

    if role in ("leaf", "relay-sync"):
        from concurrent.futures import ThreadPoolExecutor

        channel = None if down is None else grpc.intercept_channel(
            grpc.insecure_channel(f"{HOST}:{down}"), client_interceptor())

        def wait(request: bytes, context: Any) -> bytes:
            ctx = enter(request)
            if channel is not None:
                return channel.unary_unary(WAIT)(request)  # type: ignore[no-any-return]
            stopped = threading.Event()
            ctx._add_hook(stopped.set)  # library plumbing: woken by the cancel
            stopped.wait(TIMEOUT)
            ctx.raise_if_canceled()
            return b"not canceled"

        interceptor = CancellationInterceptor()
        server = grpc.server(ThreadPoolExecutor(max_workers=8), interceptors=[interceptor])
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {
            "Echo": grpc.unary_unary_rpc_method_handler(echo),
            "Wait": grpc.unary_unary_rpc_method_handler(wait)}),))
        port = server.add_insecure_port(f"{HOST}:0")
        server.start()
        out.put(f"port {port}")
        wait_stdin()
        interceptor.stop(server, 1.0)
        out.put(f"stats {json.dumps(interceptor.host.stats)}")
        out.put(None)
        time.sleep(0.2)
        return 0

    async def main() -> None:
        assert down is not None
        achannel = grpc.aio.insecure_channel(f"{HOST}:{down}", interceptors=aio_client_interceptor())

        async def await_wait(request: bytes, context: Any) -> bytes:
            enter(request)
            return await achannel.unary_unary(WAIT)(request)  # type: ignore[no-any-return]

        interceptor = AioCancellationInterceptor()
        server = grpc.aio.server(interceptors=[interceptor])
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {
            "Echo": grpc.unary_unary_rpc_method_handler(aecho),
            "Wait": grpc.unary_unary_rpc_method_handler(await_wait)}),))
        port = server.add_insecure_port(f"{HOST}:0")
        await server.start()
        out.put(f"port {port}")
        await asyncio.get_running_loop().run_in_executor(None, wait_stdin)
        await interceptor.stop(server, 1.0)
        await achannel.close()
        out.put(f"stats {json.dumps(interceptor.host.stats)}")
        out.put(None)
        await asyncio.sleep(0.2)

    asyncio.run(main())
    return 0


class Server:
    """A server subprocess and what it reported."""

    def __init__(self, role: str, down: Optional[int] = None) -> None:
        command = [sys.executable, os.path.abspath(__file__), "--serve", role]
        if down is not None:
            command += ["--down", str(down)]
        self.role = role
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.cond = threading.Condition()
        self.events: dict[tuple[str, str], tuple[float, int]] = {}  # (what, key) -> (time, reason)
        self.cancels = 0
        self.port: Optional[int] = None
        self.stats: dict[str, int] = {}
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        with self.cond:
            if not self.cond.wait_for(lambda: self.port is not None or self.proc.poll() is not None, TIMEOUT) \
                    or self.port is None:
                self.proc.kill()
                raise RuntimeError(f"server {role} did not start")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            what, _, rest = line.strip().partition(" ")
            with self.cond:
                if what == "port":
                    self.port = int(rest)
                elif what == "stats":
                    self.stats = json.loads(rest)
                elif what in ("entered", "cancel"):
                    key, stamp, *reason = rest.split()
                    if what == "cancel":
                        self.cancels += 1
                    self.events[(what, key)] = (float(stamp), int(reason[0]) if reason else -1)
                self.cond.notify_all()

    def wait_for(self, what: str, key: str, timeout: float = TIMEOUT) -> Optional[tuple[float, int]]:
        with self.cond:
            self.cond.wait_for(lambda: (what, key) in self.events, timeout)
            return self.events.get((what, key))

    def stop(self) -> dict[str, int]:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        self.reader.join(5)
        return self.stats


# ---------------------------------------------------------------- per call


def per_call(leaf: Server, calls: int, reps: int) -> tuple[dict[str, float], int]:
    """Microseconds per sequential unary call for each variant (median over
    ``reps``), and how many calls the leaf answered."""
    import grpc
    import grpc.aio

    from cancelcore import ServiceHost
    from cancelcore.grpc import aio_client_interceptor, client_interceptor

    target = f"{HOST}:{leaf.port}"
    plain = grpc.insecure_channel(target)
    intercepted = grpc.intercept_channel(plain, client_interceptor())
    host = ServiceHost()
    host.open()
    answered = 0

    def loop(channel: Any, future: bool = False) -> Callable[..., float]:
        method = channel.unary_unary(ECHO)
        call: Callable[[], Any] = (lambda: method.future(b"x", timeout=TIMEOUT).result()) if future else \
            (lambda: method(b"x", timeout=TIMEOUT))

        def run(ctx: Any = None) -> float:
            t0 = time.perf_counter()
            for _ in range(calls):
                if call() != b"x":
                    raise AssertionError("wrong answer")
            return (time.perf_counter() - t0) / calls * 1e6
        return run

    def in_op(run: Callable[..., float]) -> Callable[[], float]:
        # An operation with a deadline, as a servicer with a caller's
        # deadline has: the interceptor cuts the timeout and links the call.
        return lambda: host.dispatch(host.accept_channel(), run, deadline=time.monotonic() + 600).result()

    async def aio_variant(with_interceptor: bool, in_operation: bool) -> float:
        async with grpc.aio.insecure_channel(
                target, interceptors=aio_client_interceptor() if with_interceptor else None) as channel:
            method = channel.unary_unary(ECHO)
            await method(b"warm", timeout=TIMEOUT)

            async def run(ctx: Any = None) -> float:
                t0 = time.perf_counter()
                for _ in range(calls):
                    if await method(b"x", timeout=TIMEOUT) != b"x":
                        raise AssertionError("wrong answer")
                return (time.perf_counter() - t0) / calls * 1e6

            if in_operation:
                return await host.dispatch(host.accept_channel(), run, deadline=time.monotonic() + 600)
            return await run()

    variants: dict[str, Callable[[], float]] = {
        "sync plain channel, in an operation": in_op(loop(plain)),
        "sync client_interceptor(), in an operation": in_op(loop(intercepted)),
        "sync client_interceptor(), outside": loop(intercepted),
        # What a blocking call inside an operation becomes (it must have a
        # handle to cancel): grpcio's future path, with no interceptor.
        "sync plain channel, .future().result()": in_op(loop(plain, future=True)),
        "aio plain channel, in an operation": lambda: asyncio.run(aio_variant(False, True)),
        "aio aio_client_interceptor(), in an operation": lambda: asyncio.run(aio_variant(True, True)),
        "aio aio_client_interceptor(), outside": lambda: asyncio.run(aio_variant(True, False)),
    }
    results: dict[str, list[float]] = {name: [] for name in variants}
    try:
        for name, run in variants.items():  # untimed warm-up
            run()
            answered += calls + (1 if name.startswith("aio") else 0)
        for rep in range(reps):
            names = list(variants) if rep % 2 == 0 else list(variants)[::-1]
            for name in names:
                results[name].append(variants[name]())
                answered += calls + (1 if name.startswith("aio") else 0)
    finally:
        plain.close()
        host.close(5.0)
    return {name: statistics.median(values) for name, values in results.items()}, answered


# ------------------------------------------------------------- propagation


def propagation(relay_role: str, reps: int, failures: list[str]) -> dict[str, list[float]]:
    """client -> A (``relay_role``) -> leaf; milliseconds per hop."""
    import grpc

    leaf = Server("leaf")
    relay = Server(relay_role, leaf.port)
    hops: dict[str, list[float]] = {"hop 1 (client -> A)": [], "hop 2 (A -> leaf)": [], "end to end": []}
    channel = grpc.insecure_channel(f"{HOST}:{relay.port}")
    try:
        method = channel.unary_unary(WAIT)
        for i in range(reps + 1):  # the first is a warm-up
            key = f"r{i}"
            future = method.future(key.encode())
            if leaf.wait_for("entered", key) is None:
                failures.append(f"{relay_role}: call {key} never reached the leaf")
                future.cancel()
                continue
            t0 = time.monotonic()
            future.cancel()
            a = relay.wait_for("cancel", key)
            b = leaf.wait_for("cancel", key)
            if a is None or b is None:
                failures.append(f"{relay_role}: call {key} not canceled at every hop ({a}, {b})")
                continue
            if a[1] != 1 or b[1] != 1:
                failures.append(f"{relay_role}: call {key} canceled with reasons {a[1]}, {b[1]} (not CHANNEL_FAULTED)")
            if i:
                hops["hop 1 (client -> A)"].append((a[0] - t0) * 1e3)
                hops["hop 2 (A -> leaf)"].append((b[0] - a[0]) * 1e3)
                hops["end to end"].append((b[0] - t0) * 1e3)
    finally:
        channel.close()
        stats = {"A": relay.stop(), "leaf": leaf.stop()}
    for name, server in (("A", relay), ("leaf", leaf)):
        st = stats[name]
        n = reps + 1
        if server.cancels != n:
            failures.append(f"{relay_role} {name}: {server.cancels} cancel callbacks for {n} canceled calls")
        if not (st.get("ops_begun") == st.get("ops_ended") == st.get("ops_canceled") == n
                and st.get("cancels_channel_faulted") == n and st.get("free_states_run") == n):
            failures.append(f"{relay_role} {name}: stats {st} for {n} canceled calls")
    return hops


def run(args: argparse.Namespace) -> int:
    import grpc

    import cancelcore

    print("bench_grpc_propagation: cancellation across gRPC hops, and the client interceptors' cost")
    print(f"machine:  {machine_line()}")
    print(f"versions: grpcio {grpc.__version__}, cancelcore {cancelcore.__version__}")
    failures: list[str] = []

    leaf = Server("leaf")
    try:
        costs, answered = per_call(leaf, args.calls, args.reps)
    finally:
        stats = leaf.stop()
    print(f"\nper-call cost: {args.calls} sequential unary calls per run to a leaf in another process, "
          f"{args.reps} repetitions; the medians")
    for flavour in ("sync", "aio"):
        base = costs[f"{flavour} plain channel, in an operation"]
        for name, us in costs.items():
            if name.startswith(flavour):
                print(f"  {name[len(flavour) + 1:]:<46} {us:8.1f} us/call   "
                      f"(+{us - base:5.1f} us, ratio {base / us:.3f})")
    if not (stats.get("ops_begun") == stats.get("ops_ended") == answered and not stats.get("ops_canceled")):
        failures.append(f"leaf: stats {stats} for {answered} calls answered")
    else:
        print(f"  [ok] {answered} calls, as many operations begun and ended at the leaf, none canceled")

    print(f"\npropagation latency: the client cancels, {args.hops} repetitions, milliseconds (p50 / p99 / max)")
    for role, title in (("relay-sync", "A = grpc.server, blocking call, client_interceptor()"),
                        ("relay-aio", "A = grpc.aio.server, async call, aio_client_interceptor()")):
        hops = propagation(role, args.hops, failures)
        print(f"  {title}:")
        for name, values in hops.items():
            if values:
                print(f"    {name:<22} {percentile(values, 50):6.2f} / {percentile(values, 99):6.2f} / "
                      f"{max(values):6.2f}")
    if failures:
        print("\nFAILED:\n  " + "\n  ".join(failures))
        return 1
    print("  [ok] every call canceled once at every hop (CHANNEL_FAULTED), one free-state each")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--serve", choices=ROLES, help=argparse.SUPPRESS)
    parser.add_argument("--down", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="a smoke test: few calls, 1 repetition")
    parser.add_argument("--calls", type=int, default=500, help="calls per per-call run")
    parser.add_argument("--reps", type=int, default=7, help="repetitions of the per-call runs")
    parser.add_argument("--hops", type=int, default=200, help="canceled calls per chain")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return 2 if exc.code else 0
    if args.serve:
        return serve(args.serve, args.down)
    if args.quick:
        args.calls, args.reps, args.hops = 100, 1, 20
    if args.calls < 1 or args.reps < 1 or args.hops < 1:
        print("--calls, --reps and --hops must be >= 1", file=sys.stderr)
        return 2
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
