"""Multi-threaded stress with exact counts.

Workers loop begin / register / end on their own channels and on a shared
one while a chaos thread faults channels, aborts or closes the host at
seeded-random moments; rounds are separated by close / reset / open.  Every
callback is counted per operation, and the counts must satisfy G1-G5 and
agree with host.stats exactly.  Then targeted races: register vs abort (G3
through Python), end vs a cancel running on another thread (G5), register
vs end (G2/G4).
"""

from __future__ import annotations

import random
import sys
import threading
import time
from typing import Any, Iterator, Optional

import pytest

from cancelcore import (
    CancelReason,
    HostState,
    InvalidOperationError,
    ObjectFaultedError,
    ServiceHost,
)


@pytest.fixture(autouse=True)
def fast_switching() -> Iterator[None]:
    """A short GIL switch interval makes the threads interleave far more
    often inside the library's Python code."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(5e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


class OpRecord:
    __slots__ = (
        "lock",
        "cancels",
        "frees",
        "ends",
        "reasons",
        "cancel_running",
        "overlap",
        "cancel_after_free",
        "reason_mismatch",
        "registered",
        "must_have_cancel",
        "self_end",
        "ctx",
        "late",
        "channel",
    )

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.cancels = 0
        self.frees = 0
        self.ends = 0
        self.reasons: list[CancelReason] = []
        self.cancel_running = False
        self.overlap = False
        self.cancel_after_free = False
        self.reason_mismatch = False
        self.registered = False
        self.must_have_cancel = False
        self.self_end = False
        self.ctx: Any = None
        self.late = False
        self.channel: Any = None

    def on_cancel(self, reason: CancelReason, state: Any) -> None:
        with self.lock:
            if self.frees:
                self.cancel_after_free = True
            self.cancel_running = True
            self.cancels += 1
            self.reasons.append(reason)
        ctx = self.ctx
        if ctx.cancel_reason is not reason or ctx.canceled is not True:
            self.reason_mismatch = True
        if self.self_end:
            try:
                ctx.end()
                with self.lock:
                    self.ends += 1
            except InvalidOperationError:
                pass
        with self.lock:
            self.cancel_running = False

    def on_free(self, state: Any) -> None:
        with self.lock:
            if self.cancel_running:
                self.overlap = True
            self.frees += 1


class Round:
    """Shared state of one round."""

    def __init__(self, host: ServiceHost, shared: Any) -> None:
        self.host = host
        self.shared = shared
        self.channels_lock = threading.Lock()
        self.channels: list[Any] = [shared]
        self.stop = threading.Event()
        self.records: list[OpRecord] = []
        self.records_lock = threading.Lock()
        self.begins = 0
        self.unexpected: list[BaseException] = []
        # Triggers whose call has returned: every registered operation they
        # reached has had its cancel callback run by then (G7/G9 run the
        # callbacks before returning; G3 runs a later registration's).
        self.abort_returned = False
        self.faults_returned: set[int] = set()


def finish(rnd: Round, rec: OpRecord) -> None:
    """Ends one operation of a worker, checking what G1/G3/G5 promise."""
    ctx = rec.ctx
    # A registered operation whose channel fault or host abort has returned
    # before its end begins must have had its cancel callback run: the
    # trigger ran it before returning, or the registration did (G3).  (Merely
    # seeing ctx.canceled is not enough: an end may overtake a callback that
    # an abort on another thread has queued but not started, G5.)
    if rec.registered and (rnd.abort_returned or id(rec.channel) in rnd.faults_returned):
        rec.must_have_cancel = True
    try:
        if rec.must_have_cancel:
            assert ctx.canceled is True
    except InvalidOperationError:
        # Only a callback ending its own operation can have ended it.
        assert rec.self_end
        return
    try:
        ctx.end()
        with rec.lock:
            rec.ends += 1
    except InvalidOperationError:
        assert rec.self_end  # ended by its own cancel callback meanwhile


def worker(rnd: Round, seed: int, max_ops: int) -> None:
    """Keeps a window of 1-6 operations in flight, on its own channel and
    on the shared one, beginning and ending them in random order."""
    rng = random.Random(seed)
    host = rnd.host
    own: Optional[Any] = None
    mine: list[OpRecord] = []
    window: list[OpRecord] = []
    width = rng.randint(1, 6)
    begins = 0
    try:
        for i in range(max_ops):
            if rnd.stop.is_set():
                break
            if own is None:
                try:
                    own = host.accept_channel()
                except (ObjectFaultedError, InvalidOperationError):
                    break  # host faulted or closing: this round is over
                with rnd.channels_lock:
                    rnd.channels.append(own)
            ch = rnd.shared if i % 3 == 0 else own
            try:
                ctx = ch.begin_operation()
            except ObjectFaultedError:
                if host.state is not HostState.OPEN:
                    break
                if ch is own:
                    own = None  # faulted: take a new channel
                continue
            except InvalidOperationError:
                break  # closing
            begins += 1
            rec = OpRecord()
            rec.ctx = ctx
            rec.channel = ch
            mine.append(rec)
            mode = rng.random()
            late = mode < 0.25  # registers later (G3 path if canceled by then)
            rec.self_end = 0.25 <= mode < 0.4
            if mode < 0.9 and not late:
                ctx.register_for_cancel(rec.on_cancel, rec.on_free)
                rec.registered = True
            window.append(rec)
            if rng.random() < 0.3:
                time.sleep(0)
            rec.late = late
            for other in window:
                if other.late and not other.registered and rng.random() < 0.4:
                    other.ctx.register_for_cancel(other.on_cancel, other.on_free)
                    other.registered = True
            while len(window) > width:
                finish(rnd, window.pop(rng.randrange(len(window))))
    except BaseException as exc:  # noqa: BLE001
        rnd.unexpected.append(exc)
    finally:
        try:
            for rec in window:
                finish(rnd, rec)
        except BaseException as exc:  # noqa: BLE001
            rnd.unexpected.append(exc)
        with rnd.records_lock:
            rnd.records.extend(mine)
            rnd.begins += begins


def chaos(rnd: Round, rng: random.Random, ending: str) -> None:
    try:
        for _ in range(rng.randint(5, 30)):
            time.sleep(rng.random() * 0.001)
            with rnd.channels_lock:
                victim = rng.choice(rnd.channels)
            try:
                victim.fault()
                rnd.faults_returned.add(id(victim))
            except InvalidOperationError:
                pass  # its host was closed meanwhile
        time.sleep(rng.random() * 0.003)
        if ending == "abort":
            rnd.host.abort()
            rnd.abort_returned = True
            rnd.host.abort()  # idempotent
        elif ending == "close":
            # Concurrent with the workers: begins are refused from now on,
            # the operations in flight end on their own or are aborted.
            rnd.host.close(timeout=rng.choice([0.0, 0.001, 0.05]))
    except BaseException as exc:  # noqa: BLE001
        rnd.unexpected.append(exc)
    finally:
        rnd.stop.set()


def test_stress_rounds() -> None:
    rng = random.Random(20240601)
    host = ServiceHost(close_timeout=5.0)
    all_records: list[OpRecord] = []
    total_begins = 0
    n_workers = 4
    t_start = time.monotonic()
    rounds = 0
    try:
        for rnd_no in range(60):
            if time.monotonic() - t_start > 10.0:
                break  # keep the file well under its time budget
            rounds += 1
            if rnd_no:
                host.reset()
            host.open()
            rnd = Round(host, host.accept_channel())
            ending = rng.choice(["abort", "close", "none"])
            workers = [
                threading.Thread(target=worker, args=(rnd, rng.randrange(2**32), 400)) for _ in range(n_workers)
            ]
            chaos_thread = threading.Thread(target=chaos, args=(rnd, random.Random(rng.randrange(2**32)), ending))
            for t in workers:
                t.start()
            chaos_thread.start()
            for t in workers:
                t.join(30)
                assert not t.is_alive(), f"round {rnd_no}: worker stuck"
            chaos_thread.join(30)
            assert not chaos_thread.is_alive(), f"round {rnd_no}: chaos stuck"
            assert rnd.unexpected == [], rnd.unexpected
            assert host.stats["ops_in_flight"] == 0
            if host.state in (HostState.OPEN, HostState.FAULTED):
                assert host.close() is True  # nothing left in flight
            assert host.state is HostState.CLOSED
            all_records.extend(rnd.records)
            total_begins += rnd.begins
    finally:
        if host.state in (HostState.OPEN, HostState.FAULTED):
            host.abort()

    assert rounds >= 5
    assert total_begins == len(all_records) > 1000
    cancels = frees = 0
    for rec in all_records:
        assert rec.ends == 1, "every operation ends exactly once"
        assert rec.cancels <= 1  # G1
        assert not rec.overlap and not rec.cancel_after_free  # G5
        assert not rec.reason_mismatch  # G6: the reason the context reports
        if rec.registered:
            assert rec.frees == 1  # G4
        else:
            assert rec.frees == 0 and rec.cancels == 0
        if rec.must_have_cancel:
            assert rec.cancels == 1  # G3 / G1: canceled and registered
        cancels += rec.cancels
        frees += rec.frees
    st = host.stats
    assert st["ops_begun"] == st["ops_ended"] == total_begins
    assert st["ops_in_flight"] == 0
    assert st["free_states_run"] == frees
    assert st["cancel_callbacks_run"] == cancels
    assert st["callback_errors"] == 0
    # Marked canceled >= delivered to the library's callback (an end may
    # overtake a queued one) >= the user's callbacks run.
    assert cancels <= st["cancels_host_abort"] + st["cancels_channel_faulted"] <= st["ops_canceled"]
    assert st["ops_canceled"] >= sum(1 for r in all_records if r.must_have_cancel)
    assert cancels > 0 and any(r.self_end and r.cancels for r in all_records)


def test_register_races_abort() -> None:
    # The op is canceled for sure; the registration races the abort.  Either
    # the abort's thread runs the callback, or register does (G3) -- exactly
    # once, with HOST_ABORT.
    threads_seen = {"register": 0, "abort": 0}
    host = ServiceHost()
    for i in range(300):
        if i:
            host.reset()
        host.open()
        ch = host.accept_channel()
        ctx = ch.begin_operation()
        rec = OpRecord()
        rec.ctx = ctx
        idents: dict[str, int] = {}
        seen: list[int] = []
        barrier = threading.Barrier(2)

        def on_cancel(reason: CancelReason, state: Any) -> None:
            seen.append(threading.get_ident())
            rec.on_cancel(reason, state)

        def register() -> None:
            idents["register"] = threading.get_ident()
            barrier.wait()
            ctx.register_for_cancel(on_cancel, rec.on_free)

        def abort() -> None:
            idents["abort"] = threading.get_ident()
            barrier.wait()
            if i % 3 == 1:  # vary who gets there first, so both orders occur
                time.sleep(0.0003)
            host.abort()

        ts = [threading.Thread(target=register), threading.Thread(target=abort)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(10)
        assert rec.cancels == 1, f"iteration {i}"
        assert rec.reasons == [CancelReason.HOST_ABORT]
        who = "register" if seen[0] == idents["register"] else "abort"
        assert seen[0] == idents[who]
        threads_seen[who] += 1
        ctx.end()
        assert rec.frees == 1 and not rec.overlap and not rec.cancel_after_free
        assert host.close() is True
    st = host.stats
    assert st["cancel_callbacks_run"] == 300 and st["free_states_run"] == 300
    # Both sides of the race happened at least once (G3 through Python).
    assert threads_seen["register"] > 0 and threads_seen["abort"] > 0, threads_seen


def test_register_races_fault_many_ops() -> None:
    host = ServiceHost()
    host.open()
    try:
        for _ in range(60):
            ch = host.accept_channel()
            ops = [ch.begin_operation() for _ in range(8)]
            recs = [OpRecord() for _ in ops]
            for ctx, rec in zip(ops, recs):
                rec.ctx = ctx
            barrier = threading.Barrier(3)

            def register(part: list[int]) -> None:
                barrier.wait()
                for k in part:
                    ops[k].register_for_cancel(recs[k].on_cancel, recs[k].on_free)

            def fault() -> None:
                barrier.wait()
                ch.fault()

            ts = [
                threading.Thread(target=register, args=([0, 2, 4, 6],)),
                threading.Thread(target=register, args=([7, 5, 3, 1],)),
                threading.Thread(target=fault),
            ]
            for t in ts:
                t.start()
            for t in ts:
                t.join(10)
            for ctx, rec in zip(ops, recs):
                assert rec.cancels == 1 and rec.reasons == [CancelReason.CHANNEL_FAULTED]
                ctx.end()
                assert rec.frees == 1 and not rec.overlap
            ch.close()
        assert host.stats["cancel_callbacks_run"] == 480
    finally:
        host.abort()
        host.close()


def test_end_races_running_cancel() -> None:
    # The cancel callback runs on the aborting thread and dawdles a random
    # while; other threads end the operations at random moments.  No end
    # returns before its callback returned; free-state never overlaps it.
    rng = random.Random(7)
    host = ServiceHost()
    for i in range(40):
        if i:
            host.reset()
        host.open()
        ch = host.accept_channel()
        n = 6
        ops = [ch.begin_operation() for _ in range(n)]
        recs = []
        done_flags: list[list[bool]] = []
        for ctx in ops:
            rec = OpRecord()
            rec.ctx = ctx
            delay = rng.random() * 0.002
            flag: list[bool] = []

            def on_cancel(reason: CancelReason, state: Any, rec: OpRecord = rec, delay: float = delay, flag: list[bool] = flag) -> None:
                rec.on_cancel(reason, state)
                time.sleep(delay)
                with rec.lock:
                    flag.append(True)  # callback about to return
                    if rec.frees:
                        rec.overlap = True

            ctx.register_for_cancel(on_cancel, rec.on_free)
            recs.append(rec)
            done_flags.append(flag)
        delays = [rng.random() * 0.004 for _ in ops]
        results: list[Any] = [None] * n

        def end(k: int) -> None:
            time.sleep(delays[k])
            ops[k].end()
            # If the callback started, it returned before end returned.
            with recs[k].lock:
                results[k] = (recs[k].cancels, bool(done_flags[k]), recs[k].frees)

        ts = [threading.Thread(target=end, args=(k,)) for k in range(n)]
        aborter = threading.Thread(target=lambda: (time.sleep(rng.random() * 0.002), host.abort()))
        for t in ts:
            t.start()
        aborter.start()
        for t in ts + [aborter]:
            t.join(10)
            assert not t.is_alive()
        for k in range(n):
            cancels, returned, frees = results[k]
            assert cancels <= 1
            if cancels:
                assert returned, "end returned while its cancel callback was running"
            assert frees == 1
            assert not recs[k].overlap and not recs[k].cancel_after_free
        assert host.close() is True
    assert host.stats["ops_in_flight"] == 0


def test_register_races_end() -> None:
    # A registration racing the end: it either fails (InvalidOperationError,
    # its free-state never called) or succeeds and its free-state runs once.
    host = ServiceHost()
    host.open()
    outcomes = {"ok": 0, "invalid": 0}
    try:
        ch = host.accept_channel()
        for i in range(300):
            ctx = ch.begin_operation()
            frees: list[int] = []
            result: list[str] = []
            barrier = threading.Barrier(2)

            def register() -> None:
                barrier.wait()
                try:
                    ctx.register_for_cancel(lambda r, s: None, frees.append, 1)
                    result.append("ok")
                except InvalidOperationError:
                    result.append("invalid")

            def end() -> None:
                barrier.wait()
                ctx.end()

            ts = [threading.Thread(target=register), threading.Thread(target=end)]
            for t in ts:
                t.start()
            for t in ts:
                t.join(10)
            outcomes[result[0]] += 1
            assert len(frees) == (1 if result[0] == "ok" else 0), (i, result, frees)
        assert host.stats["ops_in_flight"] == 0
    finally:
        host.close()


def test_no_error_escapes_under_stress(error_hook: Any) -> None:
    # Raising callbacks under concurrent aborts: every error is reported,
    # counted exactly once, and never escapes into a worker.
    host = ServiceHost()
    host.open()
    try:
        ch = host.accept_channel()
        errors = 0
        ops = []
        for i in range(200):
            ctx = ch.begin_operation()

            def bad_cancel(reason: CancelReason, state: Any) -> None:
                raise RuntimeError("cancel")

            def bad_free(state: Any) -> None:
                raise RuntimeError("free")

            ctx.register_for_cancel(bad_cancel, bad_free if i % 2 else None)
            ops.append(ctx)
        ts = [threading.Thread(target=host.abort) for _ in range(3)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(10)
        errors += 200  # one per cancel callback
        enders = [threading.Thread(target=lambda part=ops[k::4]: [c.end() for c in part]) for k in range(4)]
        for t in enders:
            t.start()
        for t in enders:
            t.join(10)
        errors += 100  # the odd ones' free-states
        assert host.stats["callback_errors"] == errors
        assert len(error_hook.calls) == errors
        assert sorted(set(error_hook.wheres)) == ["cancel", "free_state"]
    finally:
        host.close()

