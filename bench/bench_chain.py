#!/usr/bin/env python3
"""bench_chain.py: how fast a cancel travels down a chain of services.

    python bench/bench_chain.py             full run (100 repetitions per chain)
    python bench/bench_chain.py --reps 20   fewer
    python bench/bench_chain.py --quick     a smoke test, rough figures

Each chain is four processes on 127.0.0.1 (examples/chain/hop.py, started
by examples/chain/chainlib.py): an edge and three hops, every one a real
server calling the next through cancelcore's clients, sync and async
handlers mixed, HTTP and gRPC legs (the chains are listed in the output).
One repetition: a raw-socket client sends a request, waits until the last
hop is working on it, and closes its connection; every hop reports the
``time.monotonic()`` (CLOCK_MONOTONIC: one clock for all the processes) at
which its operation's cancel callback started.  A leg's latency is the
callee's cancel callback minus the caller's (the first leg: minus the
client's close); end to end is the last hop's minus the close.  Figures
are percentiles over the repetitions (nearest rank), in milliseconds.

Then, per chain, --deadline-reps requests carry ``cancelcore-deadline-ms``
from the client: the spread of the hops' cancel callbacks (last minus
first) and how late the first came after the earliest deadline.

Every count is checked: one cancel callback (``CHANNEL_FAULTED``) and one
free-state per hop and request, and every hop's host counters agree.
Exit status: 0 when every count was right (speed is reported, never
asserted), 1 when one was wrong, 2 on a bad command line.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Optional

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "support"))
sys.path.insert(0, os.path.join(ROOT, "examples", "chain"))
import chainlib  # noqa: E402
from chainlib import Chain, HopSpec  # noqa: E402
from measure import machine_line, percentile  # noqa: E402

CHAINS: dict[str, tuple[HopSpec, ...]] = {"mixed": chainlib.MIXED, "aio": chainlib.AIO, "http": chainlib.HTTP,
                                          "plain-async": chainlib.PLAIN_ASYNC}
TARGET_MS = 2.0  # the target: the last hop's cancel callback within 2 ms per hop at p99
DEADLINE_MS = 200


def loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover - not Linux
        return "unknown"


def describe(spec: tuple[HopSpec, ...]) -> str:
    server = {"http": "uvicorn", "grpc": "grpc.server", "grpc-aio": "grpc.aio"}
    return "client -> " + " -> ".join(f"{h.name} ({server[h.serve]}, {h.handler})" for h in spec)


def stats_delta(after: dict[str, dict[str, int]], before: dict[str, dict[str, int]], counter: str) -> dict[str, int]:
    return {hop: after[hop][counter] - before[hop][counter] for hop in after}


def check(chain: Chain, keys: list[str], failures: list[str], label: str) -> None:
    """One cancel (CHANNEL_FAULTED) and one free-state per hop for every key."""
    for key in keys:
        cancels = chain.count(key, "cancel")
        frees = chain.count(key, "free")
        reasons = {e["reason"] for evs in chain.events(key).values() for e in evs if e["ev"] == "cancel"}
        if set(cancels.values()) != {1} or set(frees.values()) != {1} or reasons != {"CHANNEL_FAULTED"}:
            failures.append(f"{label} {key}: cancels {cancels}, free-states {frees}, reasons {reasons}")


def bench_chain(name: str, spec: tuple[HopSpec, ...], args: argparse.Namespace, failures: list[str]) -> None:
    legs = ["client closes -> edge (uvicorn sees the disconnect)"]
    legs += [f"{a.name} -> {b.name}: {chainlib.leg_name(a, b)}" for a, b in zip(spec, spec[1:])]
    print(f"\nchain {name}: {describe(spec)}")
    with Chain(spec) as chain:
        for i in range(3):  # imports, connections: not measured
            chain.request(f"warm-{i}", 0.0)
            chain.settled(f"warm-{i}", linger=0.0)
            chain.leave(f"warm-leave-{i}")
            chain.settled(f"warm-leave-{i}", linger=0.0)
        before = chain.stats()
        per_leg: list[list[float]] = [[] for _ in legs]
        end_to_end: list[float] = []
        keys = []
        for rep in range(args.reps):
            key = f"leave-{rep}"
            keys.append(key)
            t_close = chain.leave(key)
            if not chain.settled(key, linger=0.0):
                failures.append(f"{name} {key}: not every hop freed its state\n{chain.diagnostics()}")
                break
            cancels = chain.first(key, "cancel")
            times = [t_close] + [cancels[h.name]["t"] if cancels[h.name] else float("nan")  # type: ignore[index]
                                 for h in spec]
            for i in range(len(legs)):
                per_leg[i].append((times[i + 1] - times[i]) * 1000.0)
            end_to_end.append((times[-1] - t_close) * 1000.0)
            time.sleep(args.pause)
        deadline_keys = []
        spreads: list[float] = []
        late: list[float] = []
        for rep in range(args.deadline_reps):
            key = f"deadline-{rep}"
            deadline_keys.append(key)
            chain.request(key, 30.0, deadline_ms=DEADLINE_MS)
            if not chain.settled(key, linger=0.0):
                failures.append(f"{name} {key}: not every hop freed its state\n{chain.diagnostics()}")
                break
            times = [e["t"] for e in chain.first(key, "cancel").values() if e]
            deadlines = [e["deadline"] for e in chain.first(key, "begin").values() if e and e["deadline"]]
            if times and deadlines:
                spreads.append((max(times) - min(times)) * 1000.0)
                late.append((min(times) - min(deadlines)) * 1000.0)
        time.sleep(0.3)  # a late duplicate would be counted below
        after = chain.stats()
    check(chain, keys + deadline_keys, failures, name)
    n = len(keys) + len(deadline_keys)
    for counter in ("cancels_channel_faulted", "cancel_callbacks_run", "free_states_run", "ops_begun"):
        delta = stats_delta(after, before, counter)
        if set(delta.values()) != {n}:
            failures.append(f"{name}: host counter {counter} went up by {delta}, not {n} each")

    width = max(len(leg) for leg in legs + ["end to end (client closes -> last hop's cancel callback)"])
    print(f"  {'':{width}}  {'p50':>7} {'p99':>7} {'max':>7}  ms, {len(end_to_end)} repetitions")
    for leg, values in zip(legs, per_leg):
        print(f"  {leg:{width}}  {percentile(values, 50):7.2f} {percentile(values, 99):7.2f} {max(values):7.2f}")
    label = "end to end (client closes -> last hop's cancel callback)"
    p99 = percentile(end_to_end, 99)
    print(f"  {label:{width}}  {percentile(end_to_end, 50):7.2f} {p99:7.2f} {max(end_to_end):7.2f}")
    per_hop = [v / len(legs) for v in end_to_end]
    print(f"  {'per hop (end to end / ' + str(len(legs)) + ')':{width}}  {percentile(per_hop, 50):7.2f} "
          f"{percentile(per_hop, 99):7.2f} {max(per_hop):7.2f}   target {TARGET_MS:.1f} ms per hop at p99: "
          f"{'met' if percentile(per_hop, 99) <= TARGET_MS else 'NOT met'}")
    worst = [leg for leg, values in zip(legs, per_leg) if percentile(values, 99) > TARGET_MS]
    if worst:
        print(f"  legs over {TARGET_MS:.1f} ms at p99: " + "; ".join(worst))
    if spreads:
        print(f"  deadline {DEADLINE_MS} ms set by the client, {len(spreads)} requests: the hops' cancel "
              f"callbacks spread over p50 {percentile(spreads, 50):.2f} / p99 {percentile(spreads, 99):.2f} ms; "
              f"the first came p50 {percentile(late, 50):.2f} / p99 {percentile(late, 99):.2f} ms "
              f"after the earliest deadline")
    print(f"  load average after this chain: {loadavg()}")
    for hop, st in after.items():
        if st["ops_in_flight"]:
            failures.append(f"{name}: {hop} has {st['ops_in_flight']} operations in flight at the end")


def run(args: argparse.Namespace) -> int:
    import cancelcore

    print("bench_chain: cancel propagation down a chain of services, each its own process on 127.0.0.1")
    print(f"machine:  {machine_line()}")
    versions = [f"cancelcore {cancelcore.__version__}"]
    for module in ("httpx", "grpc", "uvicorn", "starlette"):
        try:
            versions.append(f"{module} {__import__(module).__version__}")
        except ImportError:  # pragma: no cover - the test group has them all
            pass
    print(f"versions: {', '.join(versions)}")
    print(f"load:     {args.reps} clients leaving per chain, one at a time; {args.deadline_reps} deadlines")
    print(f"machine load average at the start: {loadavg()} (the p99s follow it: 4 processes share the cores)")
    failures: list[str] = []
    for name in args.chains:
        bench_chain(name, CHAINS[name], args, failures)
    if failures:
        print("\nFAILED:\n  " + "\n  ".join(failures))
        return 1
    print("\n[ok] every request: one cancel callback (CHANNEL_FAULTED) and one free-state at every hop; "
          "the hosts' counters agree")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=100, help="clients leaving, per chain (default 100)")
    parser.add_argument("--deadline-reps", type=int, default=10, help="deadlines, per chain (default 10)")
    parser.add_argument("--pause", type=float, default=0.02, help="seconds between repetitions")
    parser.add_argument("--chains", nargs="+", choices=sorted(CHAINS), default=list(CHAINS))
    parser.add_argument("--quick", action="store_true", help="10 repetitions, 2 deadlines")
    args: Any = parser.parse_args(argv)
    if args.quick:
        args.reps, args.deadline_reps = 10, 2
    if args.reps < 1 or args.deadline_reps < 0 or args.pause < 0:
        parser.error("--reps must be >= 1, --deadline-reps and --pause >= 0")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
