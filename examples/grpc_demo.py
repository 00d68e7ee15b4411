#!/usr/bin/env python3
"""grpc_demo.py: the cancelcore gRPC interceptors on real servers, checked.

    python examples/grpc_demo.py

Two real gRPC servers on a free loopback port -- ``grpc.server`` (a thread
pool, sync handlers) with ``CancellationInterceptor`` and
``grpc.aio.server`` (async handlers, and one sync handler) with
``AioCancellationInterceptor`` -- and real gRPC clients play three scenes
on each:

1. a client cancels its call while the handler runs a "slow query";
2. a call whose deadline (0.3 s) expires while the handler runs;
3. the server is stopped through ``interceptor.stop(server, grace=0.5)``
   with four calls in flight and no client deadline: a short one finishes
   within the grace period; a long unary call, a long sync handler blocked
   on a ``threading.Event`` and a long response stream are cut.

Each handler registers ``on_cancel`` / ``on_free_state`` on its RPC's
operation (``cancelcore.current_operation()``).  The report shows, per
call, what the client got, the cancel reason, where and how soon the
cancel callback ran and whether free-state ran; the checks at the end say
whether every guarantee held: one cancel with the right reason for every
call cut (``CHANNEL_FAULTED`` for 1 and 2, ``HOST_ABORT`` for 3), none for
a call that completed, one free-state for every call, ``UNAVAILABLE`` for
the clients cut by the stop, and never a cancel callback on gRPC's poller
thread.  Exit status 1 if a check fails.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Iterator, Optional

import grpc
import grpc.aio

from cancelcore import CancelReason, current_operation
from cancelcore.grpc import AioCancellationInterceptor, CancellationInterceptor

HOST = "127.0.0.1"
SERVICE = "demo.Shop"
LONG = 30.0  # "long" calls only end by being canceled
DEADLINE = 0.3
GRACE = 0.5
WAIT = 15.0


@dataclass
class Book:
    """What one call's callbacks saw."""

    name: str
    began: float = 0.0
    reasons: list[CancelReason] = field(default_factory=list)
    cancel_at: Optional[float] = None
    cancel_thread: str = ""
    frees: int = 0
    cancel_after_free: bool = False
    client_saw: str = ""
    trigger_at: Optional[float] = None  # when the client/deadline/stop acted
    entered: threading.Event = field(default_factory=threading.Event)
    freed: threading.Event = field(default_factory=threading.Event)
    wake: threading.Event = field(default_factory=threading.Event)

    def on_cancel(self, reason: CancelReason, _: Any) -> None:
        if self.frees:
            self.cancel_after_free = True
        self.reasons.append(reason)
        self.cancel_at = time.monotonic()
        self.cancel_thread = threading.current_thread().name
        self.wake.set()

    def on_free(self, _: Any) -> None:
        self.frees += 1
        self.freed.set()


class Books:
    def __init__(self) -> None:
        self.by_name: dict[str, Book] = {}
        self.lock = threading.Lock()

    def register(self, request: bytes) -> Book:
        name = request.decode()
        with self.lock:
            book = self.by_name.setdefault(name, Book(name))
        ctx = current_operation()
        assert ctx is not None, "current_operation() is None inside a handler"
        ctx.register_for_cancel(book.on_cancel, book.on_free)
        book.began = time.monotonic()
        book.entered.set()
        return book


def sync_service(books: Books) -> Any:
    def query(request: bytes, context: Any) -> bytes:
        book = books.register(request)
        if book.wake.wait(LONG if request.startswith(b"long") else 0.1):
            current_operation().raise_if_canceled()  # type: ignore[union-attr]
        return b"done"

    def stream(request: bytes, context: Any) -> Iterator[bytes]:
        book = books.register(request)
        while not book.wake.wait(0.05):
            yield b"row"

    return _generic(query, query, stream)


def aio_service(books: Books) -> Any:
    async def query(request: bytes, context: Any) -> bytes:
        books.register(request)
        await asyncio.sleep(LONG if request.startswith(b"long") else 0.1)
        return b"done"

    def blocking(request: bytes, context: Any) -> bytes:  # a sync handler on the aio server
        book = books.register(request)
        book.wake.wait(LONG)  # only its on_cancel wakes it
        current_operation().raise_if_canceled()  # type: ignore[union-attr]
        return b"done"

    async def stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
        books.register(request)
        while True:
            yield b"row"
            await asyncio.sleep(0.05)

    return _generic(query, blocking, stream)


def _generic(query: Callable[..., Any], blocking: Callable[..., Any], stream: Callable[..., Any]) -> Any:
    return grpc.method_handlers_generic_handler(SERVICE, {
        "Query": grpc.unary_unary_rpc_method_handler(query),
        "Blocking": grpc.unary_unary_rpc_method_handler(blocking),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
    })


class Server:
    """One of the two servers, with its interceptor."""

    def __init__(self, kind: str, books: Books) -> None:
        self.kind = kind
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        if kind == "sync":
            self.interceptor: Any = CancellationInterceptor()
            self.server: Any = grpc.server(ThreadPoolExecutor(max_workers=16), interceptors=[self.interceptor])
            self.server.add_generic_rpc_handlers((sync_service(books),))
            self.port = self.server.add_insecure_port(f"{HOST}:0")
            self.server.start()
        else:
            self.loop = asyncio.new_event_loop()
            threading.Thread(target=self.loop.run_forever, name="aio-server-loop", daemon=True).start()
            self.interceptor = AioCancellationInterceptor()

            async def start() -> tuple[Any, int]:
                server = grpc.aio.server(interceptors=[self.interceptor])
                server.add_generic_rpc_handlers((aio_service(books),))
                port = server.add_insecure_port(f"{HOST}:0")
                await server.start()
                return server, port

            self.server, self.port = asyncio.run_coroutine_threadsafe(start(), self.loop).result(WAIT)
        self.channel = grpc.insecure_channel(f"{HOST}:{self.port}")
        grpc.channel_ready_future(self.channel).result(timeout=WAIT)

    def call(self, method: str) -> Any:
        kind = "unary_stream" if method == "Stream" else "unary_unary"
        return getattr(self.channel, kind)(f"/{SERVICE}/{method}")

    def stop(self, grace: float) -> None:
        if self.kind == "sync":
            self.interceptor.stop(self.server, grace)
        else:
            assert self.loop is not None
            asyncio.run_coroutine_threadsafe(self.interceptor.stop(self.server, grace), self.loop).result(WAIT)

    def close(self) -> None:
        self.channel.close()
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)


def status_of(fn: Callable[[], Any]) -> str:
    try:
        fn()
        return "OK"
    except grpc.RpcError as exc:
        return str(exc.code().name)


def play(kind: str, books: Books) -> None:
    server = Server(kind, books)
    try:
        # 1. the client cancels
        book = books.by_name.setdefault(f"long-{kind}-cancel", Book(f"long-{kind}-cancel"))
        future = server.call("Query").future(book.name.encode())
        book.entered.wait(WAIT)
        time.sleep(0.05)
        book.trigger_at = time.monotonic()
        future.cancel()
        book.client_saw = "CANCELLED (its own cancel)"
        book.freed.wait(WAIT)

        # 2. the deadline expires
        book = books.by_name.setdefault(f"long-{kind}-deadline", Book(f"long-{kind}-deadline"))
        started = time.monotonic()
        book.client_saw = status_of(lambda: server.call("Query")(book.name.encode(), timeout=DEADLINE))
        book.trigger_at = started + DEADLINE
        book.freed.wait(WAIT)

        # 3. a stop with four calls in flight (no client deadlines)
        names = {"Query": f"short-{kind}-stop", "Blocking": f"long-{kind}-stop-blocking",
                 "Stream": f"long-{kind}-stop-stream"}
        calls: dict[str, Any] = {}
        for method, name in names.items():
            books.by_name.setdefault(name, Book(name))
            if method == "Stream":
                calls[name] = server.call(method)(name.encode())
            else:
                calls[name] = server.call(method).future(name.encode())
        long_name = f"long-{kind}-stop-query"
        books.by_name.setdefault(long_name, Book(long_name))
        calls[long_name] = server.call("Query").future(long_name.encode())
        for name in calls:
            books.by_name[name].entered.wait(WAIT)
        stop_at = time.monotonic()
        server.stop(GRACE)
        for name, call in calls.items():
            books.by_name[name].trigger_at = stop_at + GRACE
            if name.endswith("stream"):
                books.by_name[name].client_saw = status_of(lambda: list(call))
            else:
                books.by_name[name].client_saw = status_of(lambda: call.result(timeout=WAIT))
            books.by_name[name].freed.wait(WAIT)
    finally:
        server.close()


def main() -> int:
    books = Books()
    print("cancelcore gRPC demo: real servers on 127.0.0.1, real clients\n")
    for kind in ("sync", "aio"):
        play(kind, books)

    print(f"{'call':<30} {'client got':<28} {'cancel':<16} {'after':>8} {'free':>5}  cancel ran on")
    for book in books.by_name.values():
        reason = ",".join(r.name for r in book.reasons) or "-"
        after = (f"{(book.cancel_at - book.trigger_at) * 1000:6.1f}ms"
                 if book.cancel_at is not None and book.trigger_at is not None else "-")
        print(f"{book.name:<30} {book.client_saw:<28} {reason:<16} {after:>8} {book.frees:>5}  "
              f"{book.cancel_thread or '-'}")
    print("  (after: from the client's cancel, the deadline, or the end of the stop's grace period)")

    checks: list[tuple[bool, str]] = []
    for book in books.by_name.values():
        cut = book.name.startswith("long")
        want = ([CancelReason.HOST_ABORT] if "stop" in book.name else [CancelReason.CHANNEL_FAULTED]) if cut else []
        client = ("UNAVAILABLE" if cut else "OK") if "stop" in book.name else \
            "DEADLINE_EXCEEDED" if "deadline" in book.name else book.client_saw
        ok = (book.reasons == want and book.frees == 1 and not book.cancel_after_free
              and book.client_saw == client
              # gRPC's poller thread runs its `_serve` loop
              and "_serve" not in book.cancel_thread)
        checks.append((ok, f"{book.name}: {'cancel ' + want[0].name + ' once' if want else 'no cancel'}, "
                           f"free-state once after it, client got {client.split()[0]}, "
                           "no callback on gRPC's poller thread"))
    print("\nchecks")
    for ok, text in checks:
        print(f"  [{'ok' if ok else 'FAILED'}] {text}")
    passed = all(ok for ok, _ in checks)
    print(f"\nresult: {'OK' if passed else 'FAILED'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
