"""The multi-process chain (issue 10): cancellation and deadlines travel
from the edge to the last hop over real transports, each hop its own
process on 127.0.0.1 (examples/chain/hop.py, started by chainlib).

Three chains, mixing sync and async hops; the first two have an HTTP and
a gRPC leg each:

- ``mixed``: client -> edge (uvicorn, async) -[httpx AsyncHTTPTransport]->
  A (uvicorn, sync endpoint in a thread) -[gRPC client_interceptor,
  blocking]-> B (grpc.server, sync) -[httpx HTTPTransport, blocking]-> C
  (uvicorn, async: waits until canceled or done);
- ``aio``: client -> edge -[gRPC aio_client_interceptor]-> A (grpc.aio,
  async) -[AsyncHTTPTransport]-> B (uvicorn, async) -[gRPC aio]-> C
  (grpc.server, sync);
- ``http``: every leg HTTP, sync hops calling sync hops: edge (async) -> A
  (sync) -[HTTPTransport]-> B (sync) -[HTTPTransport]-> C (async).

Every hop reports its operation's begin, cancel callback (reason),
free-state and handler end with CLOCK_MONOTONIC timestamps (one clock for
every process of the machine); the tests count them exactly and read the
hosts' own counters, before and after, for every hop.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Iterator

import pytest

pytest.importorskip("httpx")
pytest.importorskip("grpc")
pytest.importorskip("uvicorn")
pytest.importorskip("starlette")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "examples", "chain"))

import chainlib  # noqa: E402
from chainlib import Chain  # noqa: E402

CHAINS = {"mixed": chainlib.MIXED, "aio": chainlib.AIO, "http": chainlib.HTTP}
SETTLE = 10.0  # every hop has freed its state by then (a hop not reached would wait 30 s)
DEADLINE_MS = 600
# "About the same moment" on loopback: every hop's cancel within this of
# the others.  Loose on purpose: a loaded 2-core CI machine, not a benchmark.
SPREAD = 0.1


@pytest.fixture(scope="module", params=sorted(CHAINS))
def chain(request: pytest.FixtureRequest) -> Iterator[Chain]:
    with Chain(CHAINS[request.param]) as ch:
        # First calls pay for imports and connections: not what is measured.
        status, body = ch.request("warm-up", 0.0)
        assert (status, body) == (200, "edge>A>B>C"), ch.diagnostics()
        assert ch.settled("warm-up"), ch.diagnostics()
        yield ch
    codes = {hop.name: hop.proc.returncode for hop in ch.hops}
    assert codes == {name: 0 for name in ch.names}, f"hops did not stop cleanly: {codes}\n{ch.diagnostics()}"


def _delta(after: dict[str, dict[str, int]], before: dict[str, dict[str, int]], counter: str) -> dict[str, int]:
    return {hop: after[hop][counter] - before[hop][counter] for hop in after}


def _each(chain: Chain, value: Any) -> dict[str, Any]:
    return {name: value for name in chain.names}


def _assert_freed_once(chain: Chain, key: str) -> None:
    assert chain.count(key, "begin") == _each(chain, 1), chain.events(key)
    assert chain.count(key, "free") == _each(chain, 1), chain.events(key)
    assert chain.count(key, "end") == _each(chain, 1), chain.events(key)
    for hop, events in chain.events(key).items():
        kinds = [e["ev"] for e in events]
        # free-state is the last thing that happens to an operation
        assert kinds[-1] == "free", (hop, kinds)


# -------------------------------------------------------------- completion


def test_normal_completion_cancels_nothing(chain: Chain) -> None:
    before = chain.stats()
    status, body = chain.request("done", 0.05)
    assert (status, body) == (200, "edge>A>B>C")
    assert chain.settled("done", SETTLE), chain.diagnostics()
    assert chain.count("done", "cancel") == _each(chain, 0), chain.events("done")
    _assert_freed_once(chain, "done")
    assert {h: e["outcome"] for h, e in chain.first("done", "end").items() if e} == _each(chain, "ok")
    # no deadline was set anywhere, so none is forwarded
    assert {h: e["deadline"] for h, e in chain.first("done", "begin").items() if e} == _each(chain, None)
    after = chain.stats()
    assert _delta(after, before, "ops_begun") == _each(chain, 1)
    assert _delta(after, before, "ops_canceled") == _each(chain, 0)
    assert _delta(after, before, "cancel_callbacks_run") == _each(chain, 0)
    assert _delta(after, before, "free_states_run") == _each(chain, 1)
    assert {h: s["ops_in_flight"] for h, s in after.items()} == _each(chain, 0)


# ----------------------------------------------------------- client leaves


@pytest.mark.parametrize("how", ["fin", "rst"])
def test_client_leaving_cancels_every_hop_once(chain: Chain, how: str) -> None:
    key = f"leave-{how}"
    before = chain.stats()
    t_close = chain.leave(key, t=30.0, rst=how == "rst")
    # Settling at all proves the blocking calls were cut: C's work is 30 s
    # and a sync hop's call would block that long.
    assert chain.settled(key, SETTLE), chain.diagnostics()
    assert chain.count(key, "cancel") == _each(chain, 1), chain.events(key)
    cancels = chain.first(key, "cancel")
    assert {h: e["reason"] for h, e in cancels.items() if e} == _each(chain, "CHANNEL_FAULTED")
    _assert_freed_once(chain, key)
    assert {h: e["outcome"] for h, e in chain.first(key, "end").items() if e} == _each(chain, "canceled")
    # The cancel travels down: each hop's callback after the client left
    # and after the hop before it (one clock for all the processes).
    times = [cancels[name]["t"] for name in chain.names]  # type: ignore[index]
    assert times[0] >= t_close, (t_close, times)
    assert times == sorted(times), times
    assert times[-1] - t_close < 2.0, f"the cancel took {times[-1] - t_close:.3f} s to reach the last hop"
    after = chain.stats()
    assert _delta(after, before, "cancels_channel_faulted") == _each(chain, 1)
    assert _delta(after, before, "cancel_callbacks_run") == _each(chain, 1)
    assert _delta(after, before, "free_states_run") == _each(chain, 1)
    assert _delta(after, before, "deadlines_expired") == _each(chain, 0)
    assert {h: s["ops_in_flight"] for h, s in after.items()} == _each(chain, 0)


# ---------------------------------------------------------------- deadline


def test_deadline_set_at_the_edge_expires_at_every_hop(chain: Chain) -> None:
    key = "deadline"
    before = chain.stats()
    sent = time.monotonic()
    status, _ = chain.request(key, 30.0, deadline_ms=DEADLINE_MS)
    took = time.monotonic() - sent
    # The edge's operation is cut by its deadline while its client waits: 503.
    assert status == 503
    assert took < DEADLINE_MS / 1000 + 2.0, took
    assert chain.settled(key, SETTLE), chain.diagnostics()

    begins = chain.first(key, "begin")
    deadlines = {h: e["deadline"] for h, e in begins.items() if e}
    assert all(d is not None for d in deadlines.values()), deadlines
    # Every hop got (about) the same moment: what is left is forwarded,
    # not the full budget again (nor nothing).
    edge_deadline = deadlines["edge"]
    # (the edge counts from the header's arrival, which trails ``sent`` by
    # the client's set-up and the request's way in)
    assert sent + DEADLINE_MS / 1000 <= edge_deadline < sent + DEADLINE_MS / 1000 + 0.5
    assert begins["edge"]["remaining"] > DEADLINE_MS / 1000 - 0.05  # type: ignore[index]
    for hop, deadline in deadlines.items():
        # (each hop counts what it was sent from the request's arrival: the
        # request's way down, slowed by a loaded machine, shifts it a little)
        assert abs(deadline - edge_deadline) < SPREAD, (hop, deadline - edge_deadline)
        remaining = begins[hop]["remaining"]  # type: ignore[index]
        assert 0 < remaining <= DEADLINE_MS / 1000, (hop, remaining)

    # Every hop is canceled exactly once, CHANNEL_FAULTED, about then --
    # by its own deadline or by its caller's cut, whichever came first.
    assert chain.count(key, "cancel") == _each(chain, 1), chain.events(key)
    cancels = chain.first(key, "cancel")
    assert {h: e["reason"] for h, e in cancels.items() if e} == _each(chain, "CHANNEL_FAULTED")
    times = {h: e["t"] for h, e in cancels.items() if e}
    assert max(times.values()) - min(times.values()) < SPREAD, times
    earliest = min(deadlines.values())
    for hop, t in times.items():
        assert earliest - 0.01 <= t < earliest + SPREAD, (hop, t - earliest)
    _assert_freed_once(chain, key)
    assert {h: e["outcome"] for h, e in chain.first(key, "end").items() if e} == _each(chain, "canceled")

    after = chain.stats()
    assert _delta(after, before, "cancels_channel_faulted") == _each(chain, 1)
    assert _delta(after, before, "cancel_callbacks_run") == _each(chain, 1)
    assert _delta(after, before, "free_states_run") == _each(chain, 1)
    expired = _delta(after, before, "deadlines_expired")
    # Nothing can cut the edge but its own deadline (its client waits);
    # further down a hop's own timer may win or lose against its caller.
    assert expired["edge"] == 1, expired
    assert all(n in (0, 1) for n in expired.values()), expired
    assert {h: s["ops_in_flight"] for h, s in after.items()} == _each(chain, 0)


def test_a_deadline_that_is_not_reached_cancels_nothing(chain: Chain) -> None:
    key = "deadline-met"
    before = chain.stats()
    status, body = chain.request(key, 0.05, deadline_ms=5000)
    assert (status, body) == (200, "edge>A>B>C")
    assert chain.settled(key, SETTLE), chain.diagnostics()
    assert chain.count(key, "cancel") == _each(chain, 0), chain.events(key)
    _assert_freed_once(chain, key)
    assert all(e is not None and e["deadline"] is not None for e in chain.first(key, "begin").values())
    after = chain.stats()
    assert _delta(after, before, "ops_canceled") == _each(chain, 0)
    assert _delta(after, before, "deadlines_expired") == _each(chain, 0)
    assert _delta(after, before, "free_states_run") == _each(chain, 1)
