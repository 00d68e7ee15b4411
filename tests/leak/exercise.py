"""Exercises the Python API end to end for a memory checker (valgrind).

Run by `make test-leaks`: every path that allocates in C or holds a cffi
handle -- begin/register/end, aborts and faults with callbacks, stale
contexts, the fault plan, dispatch on threads, closed and freed hosts -- so
that a leak or an invalid access in the core or the bindings shows up.
"""

from __future__ import annotations

import gc
import threading
import weakref

import cancelcore as cc


def main() -> None:
    counts = {"cancel": 0, "free": 0}

    def on_cancel(reason: cc.CancelReason, state: object) -> None:
        counts["cancel"] += 1

    def on_free(state: object) -> None:
        counts["free"] += 1

    for _ in range(3):
        host = cc.ServiceHost(close_timeout=0.5)
        host.open()
        channels = [host.accept_channel() for _ in range(4)]
        contexts = []
        for i in range(200):
            ctx = channels[i % 4].begin_operation()
            ctx.register_for_cancel(on_cancel, on_free, i)
            contexts.append(ctx)
        channels[1].fault()
        host.abort()
        for ctx in contexts:
            ctx.end()
        try:
            contexts[0].end()
        except cc.InvalidOperationError:
            pass
        host.faults.reset(7)
        host.faults.add(cc.FaultPoint.BEGIN, cc.FaultAction.NOMEM, every=2)
        host.close()
        host.reset()
        host.open()
        ch = host.accept_channel()
        for _ in range(10):
            try:
                ch.begin_operation().end()
            except cc.OutOfMemoryError:
                pass
        host.faults.reset(0)
        futures = [host.dispatch(ch, lambda ctx, n: n * 2, n) for n in range(20)]
        assert [f.result() for f in futures] == [n * 2 for n in range(20)]
        done = threading.Event()

        def blocking(ctx: cc.OperationContext) -> None:
            ctx.register_for_cancel(lambda r, s: done.set(), on_free)
            done.wait(5)

        fut = host.dispatch(ch, blocking)
        while host.stats["ops_in_flight"] == 0:
            pass
        assert host.close(timeout=0.05) is False
        fut.result()
        ch.close()
        host_ref = weakref.ref(host)
        del host, channels, contexts, ch, futures, fut, blocking, ctx
        gc.collect()
        # Collected, so its finalizer freed the C host (a leak valgrind sees).
        assert host_ref() is None, gc.get_referrers(host_ref())
    assert counts["cancel"] == 3 * 200, counts
    assert counts["free"] == 3 * 201, counts
    print("exercise: ok", counts)


if __name__ == "__main__":
    main()
