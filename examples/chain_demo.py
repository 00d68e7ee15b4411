#!/usr/bin/env python3
"""chain_demo.py: a cancel travelling down a chain of services, checked.

    python examples/chain_demo.py [--chain mixed|aio|http] [--deadline-ms N]

Needs uvicorn, Starlette, httpx and grpcio.  (``make demo`` runs it.)

Four processes on 127.0.0.1 (examples/chain/hop.py), each a real server
whose handler calls the next through cancelcore's clients; the default
chain mixes sync and async handlers, an HTTP and a gRPC leg:

    client -HTTP-> edge (uvicorn, async def)
           -httpx AsyncHTTPTransport-> A (uvicorn, a def endpoint in a thread)
           -gRPC client_interceptor (blocking call)-> B (grpc.server, sync servicer)
           -httpx HTTPTransport (blocking call)-> C (uvicorn, async def: the work)

Every handler registers a cancel callback and a free-state callback on its
operation; each process reports them, with CLOCK_MONOTONIC timestamps
(one clock for all the processes), and this script prints them as they
arrive, in three scenes:

1. a request that completes: nothing is canceled, each hop frees its state;
2. the client leaves (closes its connection) while C works: the edge sees
   the disconnect, and each hop's outgoing call is cut at once -- a worker
   thread blocked in a sync call included -- so the next service sees its
   client leave: the cancel travels down, hop after hop, with timings;
3. the client sends ``cancelcore-deadline-ms``: every hop gets what is left
   of it, and at that moment every hop is canceled (``CHANNEL_FAULTED``),
   by its own deadline or its caller's cut, whichever comes first.

The checks at the end: one cancel callback per hop in scenes 2 and 3 (none
in 1), with ``CHANNEL_FAULTED``, in chain order in scene 2 and within
100 ms of each other in scene 3; one free-state per hop and request; the
hosts' own counters agree; every process stopped cleanly.  Exit status 1
if a check fails, 2 on a bad command line or a missing package.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from typing import Any, Optional

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "chain"))
import chainlib  # noqa: E402
from chainlib import Chain  # noqa: E402

CHAINS = {"mixed": chainlib.MIXED, "aio": chainlib.AIO, "http": chainlib.HTTP}
SPREAD = 0.1  # scene 3: every hop's cancel within this of the others
SETTLE = 10.0


class Printer:
    """Prints each hop's events as they arrive, in ms since the scene began.
    The processes' reports reach this one through pipes, in whatever order
    the scheduler lets them: a line waits ``HOLD`` seconds so that lines are
    printed in the order of their timestamps (one clock for all)."""

    HOLD = 0.03

    def __init__(self, chain: Chain) -> None:
        self.lock = threading.Lock()
        self.origin = time.monotonic()
        self.key: Optional[str] = None
        self.pending: list[tuple[float, str, str]] = []
        self.indent = {name: "  " * i for i, name in enumerate(chain.names)}
        self.stopped = threading.Event()
        chain.listeners.append(self.event)
        threading.Thread(target=self._drain, name="printer", daemon=True).start()

    def scene(self, key: str) -> None:
        self.flush()
        with self.lock:
            self.key = key
            self.origin = time.monotonic()

    def say(self, who: str, what: str, t: Optional[float] = None) -> None:
        with self.lock:
            self.pending.append((t if t is not None else time.monotonic(), who, what))

    def event(self, event: dict[str, Any]) -> None:
        if self.key is not None and event.get("key") == self.key and event["ev"] != "end":
            self.say(event["hop"], chainlib.describe(event), event["t"])

    def _print(self, until: float) -> None:
        with self.lock:
            ready = sorted(row for row in self.pending if row[0] <= until)
            self.pending = [row for row in self.pending if row[0] > until]
            for t, who, what in ready:
                ms = (t - self.origin) * 1000.0
                print(f"  {ms:9.2f} ms  {self.indent.get(who, '')}{who:5} {what}", flush=True)

    def _drain(self) -> None:
        while not self.stopped.wait(0.01):
            self._print(time.monotonic() - self.HOLD)

    def flush(self) -> None:
        self._print(float("inf"))

    def close(self) -> None:
        self.stopped.set()
        self.flush()


def counts(chain: Chain, key: str, ev: str) -> set[int]:
    return set(chain.count(key, ev).values())


def run(chain_name: str, deadline_ms: int) -> int:
    spec = CHAINS[chain_name]
    checks: list[tuple[bool, str]] = []
    print("cancelcore chain demo: a chain of services, each its own process on 127.0.0.1\n")
    print("  client -HTTP-> " + " -> ".join(f"{h.name}" for h in spec))
    for a, b in zip(spec, spec[1:]):
        print(f"    {a.name} ({a.handler} handler) -> {b.name}: {chainlib.leg_name(a, b)}")
    with Chain(spec) as chain:
        printer = Printer(chain)
        ports = ", ".join(f"{hop.name} :{hop.port} (pid {hop.proc.pid})" for hop in chain.hops)
        print(f"  started: {ports}")
        chain.request("warm-up", 0.0)  # imports and connections, not shown
        chain.settled("warm-up")
        before = chain.stats()

        print("\n1. a request that completes (C works 0.1 s)")
        printer.scene("done")
        status, body = chain.request("done", 0.1)
        printer.say("client", f"got {status} {body!r}")
        chain.settled("done", SETTLE)
        printer.flush()
        checks.append((status == 200 and body == "edge>A>B>C" and counts(chain, "done", "cancel") == {0}
                       and counts(chain, "done", "free") == {1},
                       "1: the request completed (200 'edge>A>B>C'), nothing was canceled, "
                       "one free-state per hop"))

        print("\n2. the client leaves while C works (closes its connection)")
        printer.scene("leave")
        t_close = chain.leave("leave", t=30.0)
        printer.say("client", "closed its connection", t_close)
        settled = chain.settled("leave", SETTLE)
        printer.flush()
        cancels = chain.first("leave", "cancel")
        times = [e["t"] if e else float("nan") for e in cancels.values()]
        if all(e is not None for e in cancels.values()):
            hops = [t_close] + times
            legs = ", ".join(f"{a} -> {b} {(hops[i + 1] - hops[i]) * 1000:.2f} ms"
                             for i, (a, b) in enumerate(zip(["client"] + chain.names, chain.names)))
            print(f"  the cancel reached the last hop {(times[-1] - t_close) * 1000:.2f} ms after the "
                  f"client left: {legs}")
        checks.append((settled and counts(chain, "leave", "cancel") == {1}
                       and {e["reason"] for e in cancels.values() if e} == {"CHANNEL_FAULTED"}
                       and times == sorted(times) and times[0] >= t_close,
                       "2: the client leaving canceled every hop once (CHANNEL_FAULTED), "
                       "hop after hop, in chain order"))
        checks.append((counts(chain, "leave", "free") == {1},
                       "2: every hop freed its state once, its blocked call cut (C's work was 30 s)"))

        print(f"\n3. the client sends cancelcore-deadline-ms: {deadline_ms} (C would work 30 s)")
        printer.scene("deadline")
        status, _ = chain.request("deadline", 30.0, deadline_ms=deadline_ms)
        printer.say("client", f"got {status}")
        settled = chain.settled("deadline", SETTLE)
        printer.flush()
        begins = chain.first("deadline", "begin")
        deadlines = [e["deadline"] for e in begins.values() if e and e["deadline"] is not None]
        cancels = chain.first("deadline", "cancel")
        times = [e["t"] for e in cancels.values() if e]
        forwarded = len(deadlines) == len(spec) and max(deadlines) - min(deadlines) < SPREAD
        if times and deadlines:
            print(f"  every hop's deadline within {(max(deadlines) - min(deadlines)) * 1000:.2f} ms of the "
                  f"others; their cancel callbacks within {(max(times) - min(times)) * 1000:.2f} ms, "
                  f"the first {(min(times) - min(deadlines)) * 1000:.2f} ms after the earliest deadline")
        checks.append((forwarded, f"3: every hop got the deadline, what was left of it (all within {SPREAD * 1000:.0f} ms)"))
        checks.append((settled and status == 503 and counts(chain, "deadline", "cancel") == {1}
                       and {e["reason"] for e in cancels.values() if e} == {"CHANNEL_FAULTED"}
                       and bool(times) and max(times) - min(times) < SPREAD,
                       f"3: the deadline canceled every hop once (CHANNEL_FAULTED), all within "
                       f"{SPREAD * 1000:.0f} ms; the client got 503"))
        checks.append((counts(chain, "deadline", "free") == {1}, "3: every hop freed its state once"))

        printer.close()
        after = chain.stats()
        agree = all(after[h]["cancel_callbacks_run"] - before[h]["cancel_callbacks_run"] == 2
                    and after[h]["cancels_channel_faulted"] - before[h]["cancels_channel_faulted"] == 2
                    and after[h]["free_states_run"] - before[h]["free_states_run"] == 3
                    and after[h]["ops_in_flight"] == 0 for h in chain.names)
        checks.append((agree and after["edge"]["deadlines_expired"] - before["edge"]["deadlines_expired"] == 1,
                       "every hop's host counted 2 cancels (CHANNEL_FAULTED), 3 free-states, none in "
                       "flight; the edge's deadline expired once"))
    codes = {hop.name: hop.proc.returncode for hop in chain.hops}
    checks.append((set(codes.values()) == {0}, f"every process stopped cleanly (exit codes {codes})"))

    print("\nchecks")
    for ok, text in checks:
        print(f"  [{'ok' if ok else 'FAILED'}] {text}")
    passed = all(ok for ok, _ in checks)
    if not passed:
        print(chain.diagnostics())
    print(f"\nresult: {'OK' if passed else 'FAILED'}")
    return 0 if passed else 1


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="chain_demo.py", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--chain", choices=sorted(CHAINS), default="mixed", help="which chain (default mixed)")
    parser.add_argument("--deadline-ms", type=int, default=800,
                        help="the deadline the client sends in scene 3, 100 to 10000 (default 800)")
    args = parser.parse_args(argv)
    if not 100 <= args.deadline_ms <= 10000:
        parser.error("--deadline-ms must be between 100 and 10000")
    try:
        import grpc  # noqa: F401
        import httpx  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        print(f"chain_demo.py needs uvicorn, starlette, httpx and grpcio ({exc})", file=sys.stderr)
        return 2
    return run(args.chain, args.deadline_ms)


if __name__ == "__main__":
    sys.exit(main())
