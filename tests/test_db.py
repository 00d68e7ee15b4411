"""Real databases behind CancellationMiddleware (uvicorn on 127.0.0.1, real
TCP clients): a client that leaves, or a shutdown, stops the request's query
in the database itself.  Each test asserts the query is gone from
pg_stat_activity, the pool is whole again, and every free-state ran once.

PostgreSQL is started by the suite (tests/pg_support.py); without it these
tests skip, except under CI, where they fail.  The sqlite3 test needs
nothing.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from typing import Any, Callable, Iterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from asgi_support import WAIT, LiveServer, close_fin, close_rst, open_request, read_response, wait_until
from cancelcore import CancelReason, current_operation
from cancelcore.asgi import CancellationMiddleware, offload
from pg_support import Postgres, postgres  # noqa: F401  (the session fixture)

SLEEP_SQL = "SELECT pg_sleep(30) /* cancelcore-test */"


@pytest.fixture
def live() -> Iterator[Callable[..., LiveServer]]:
    servers: list[LiveServer] = []

    def start(app: Any, **config: Any) -> LiveServer:
        srv = LiveServer(app, **config)
        servers.append(srv)
        return srv.start()

    yield start
    for srv in reversed(servers):
        srv.stop()


def running_queries(pg: Postgres) -> int:
    import psycopg

    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE %s AND pid <> pg_backend_pid()",
            ("%cancelcore-test%",)).fetchone()
        assert row is not None
        return int(row[0])


class Record:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.cancels: list[CancelReason] = []
        self.frees = 0
        self.entered = threading.Event()
        self.errors: list[str] = []

    def cancel(self, reason: CancelReason) -> None:
        with self.lock:
            self.cancels.append(reason)

    def free(self) -> None:
        with self.lock:
            self.frees += 1


# ------------------------------------------------------------- psycopg sync


def psycopg_sync_app(pg: Postgres, rec: Record) -> tuple[CancellationMiddleware, Any]:
    import psycopg
    from psycopg_pool import ConnectionPool

    pool = ConnectionPool(pg.dsn, min_size=2, max_size=2, open=True, kwargs={"autocommit": True})

    def query(request: Request) -> Response:
        ctx = current_operation()
        assert ctx is not None
        conn = pool.getconn()

        def on_cancel(reason: CancelReason, c: Any) -> None:
            rec.cancel(reason)
            c.cancel()  # a network round trip: offloaded, not on the event loop

        def on_free(c: Any) -> None:
            pool.putconn(c)
            rec.free()

        ctx.register_for_cancel(*offload(on_cancel, on_free), conn)
        ctx.raise_if_canceled()  # the client may have left while we waited for the pool
        rec.entered.set()
        try:
            conn.execute(SLEEP_SQL)
        except psycopg.errors.QueryCanceled:
            raise
        return PlainTextResponse("done")

    return CancellationMiddleware(Starlette(routes=[Route("/q", query)]), close_timeout=0.5), pool


@pytest.mark.parametrize("close", [close_fin, close_rst], ids=["fin", "rst"])
def test_psycopg_sync_client_leaves(postgres: Postgres, live: Callable[..., LiveServer],  # noqa: F811
                                    close: Callable[..., float]) -> None:
    rec = Record()
    mw, pool = psycopg_sync_app(postgres, rec)
    try:
        srv = live(mw)
        s = open_request(srv.port, "/q")
        assert rec.entered.wait(WAIT)
        assert wait_until(lambda: running_queries(postgres) == 1)
        close(s)
        assert wait_until(lambda: rec.frees == 1)
        assert rec.cancels == [CancelReason.CHANNEL_FAULTED]
        assert wait_until(lambda: running_queries(postgres) == 0)
        # putconn may hand a connection to the pool's worker to reset first.
        assert wait_until(lambda: pool.get_stats().get("pool_available", 0) == 2), pool.get_stats()
        assert pool.get_stats()["pool_size"] == 2
        srv.stop()
        assert srv.problems() == [], srv.problems()
        assert mw.host.stats["free_states_run"] == 1
    finally:
        pool.close()


def test_psycopg_sync_shutdown_with_query_in_flight(postgres: Postgres,  # noqa: F811
                                                    live: Callable[..., LiveServer]) -> None:
    rec = Record()
    mw, pool = psycopg_sync_app(postgres, rec)
    try:
        srv = live(mw)
        s = open_request(srv.port, "/q")
        assert rec.entered.wait(WAIT)
        got: list[Any] = []
        reader = threading.Thread(target=lambda: got.append(read_response(s, timeout=10)), daemon=True)
        reader.start()
        srv.stop()
        reader.join(WAIT)
        s.close()
        assert rec.cancels == [CancelReason.HOST_ABORT]
        assert wait_until(lambda: rec.frees == 1)
        assert got and got[0].status == 503, got
        assert wait_until(lambda: running_queries(postgres) == 0)
        assert wait_until(lambda: pool.get_stats().get("pool_available", 0) == 2), pool.get_stats()
        assert srv.problems() == [], srv.problems()
    finally:
        pool.close()


# ------------------------------------------------------------ psycopg async


def test_psycopg_async_client_leaves(postgres: Postgres, live: Callable[..., LiveServer]) -> None:  # noqa: F811
    """One Task.cancel: psycopg awaits its own server-side cancel request to
    the end, so the query stops in PostgreSQL and the connection returns to
    the pool whole (a cancel scope that re-cancels would cut that cleanup)."""
    from psycopg_pool import AsyncConnectionPool

    rec = Record()
    pools: list[Any] = []
    stats: dict[str, Any] = {}

    async def query(request: Request) -> Response:
        if not pools:
            pool = AsyncConnectionPool(postgres.dsn, min_size=1, max_size=1, open=False,
                                       kwargs={"autocommit": True})
            await pool.open()
            pools.append(pool)
        pool = pools[0]
        ctx = current_operation()
        assert ctx is not None
        ctx.register_for_cancel(lambda r, _: rec.cancel(r), lambda _: rec.free())
        async with pool.connection() as conn:
            rec.entered.set()
            await conn.execute(SLEEP_SQL)
        return PlainTextResponse("done")

    async def pool_stats(request: Request) -> Response:
        stats.update(pools[0].get_stats())
        await pools[0].close()
        return PlainTextResponse("ok")

    mw = CancellationMiddleware(Starlette(routes=[Route("/q", query), Route("/stats", pool_stats)]))
    srv = live(mw)
    s = open_request(srv.port, "/q")
    assert rec.entered.wait(WAIT)
    assert wait_until(lambda: running_queries(postgres) == 1)
    close_rst(s)
    assert wait_until(lambda: rec.frees == 1)
    assert rec.cancels == [CancelReason.CHANNEL_FAULTED]
    assert wait_until(lambda: running_queries(postgres) == 0)
    time.sleep(0.1)
    s = open_request(srv.port, "/stats")
    assert read_response(s).status == 200
    s.close()
    assert stats["pool_size"] == 1 and stats["pool_available"] == 1, stats
    # psycopg's cleanup ran to its end: the connection was not discarded.
    assert stats.get("connections_lost", 0) == 0 and stats.get("returns_bad", 0) == 0, stats
    srv.stop()
    assert srv.problems() == [], srv.problems()


# ------------------------------------------------------------------ asyncpg


def test_asyncpg_client_leaves(postgres: Postgres, live: Callable[..., LiveServer]) -> None:  # noqa: F811
    asyncpg = pytest.importorskip("asyncpg")
    rec = Record()
    pools: list[Any] = []
    sizes: list[int] = []

    async def query(request: Request) -> Response:
        if not pools:
            pools.append(await asyncpg.create_pool(postgres.url, min_size=1, max_size=1))
        ctx = current_operation()
        assert ctx is not None
        ctx.register_for_cancel(lambda r, _: rec.cancel(r), lambda _: rec.free())
        async with pools[0].acquire() as conn:
            rec.entered.set()
            await conn.execute(SLEEP_SQL)
        return PlainTextResponse("done")

    async def pool_size(request: Request) -> Response:
        async with pools[0].acquire() as conn:  # the one connection came back
            await conn.execute("SELECT 1")
        sizes.append(pools[0].get_idle_size())
        await pools[0].close()
        return PlainTextResponse("ok")

    mw = CancellationMiddleware(Starlette(routes=[Route("/q", query), Route("/size", pool_size)]))
    srv = live(mw)
    s = open_request(srv.port, "/q")
    assert rec.entered.wait(WAIT)
    assert wait_until(lambda: running_queries(postgres) == 1)
    close_fin(s)
    assert wait_until(lambda: rec.frees == 1)
    assert rec.cancels == [CancelReason.CHANNEL_FAULTED]
    assert wait_until(lambda: running_queries(postgres) == 0)
    s = open_request(srv.port, "/size")
    assert read_response(s, timeout=10).status == 200
    s.close()
    assert sizes == [1]
    srv.stop()
    assert srv.problems() == [], srv.problems()


# ------------------------------------------------------------------- sqlite3


def test_sqlite_interrupt_from_cancel_callback(live: Callable[..., LiveServer], tmp_path: Any) -> None:
    rec = Record()
    outcome: list[str] = []
    db = str(tmp_path / "t.db")

    def query(request: Request) -> Response:
        ctx = current_operation()
        assert ctx is not None
        conn = sqlite3.connect(db, check_same_thread=False)

        def on_cancel(reason: CancelReason, c: sqlite3.Connection) -> None:
            rec.cancel(reason)
            c.interrupt()  # safe from any thread; returns at once

        def on_free(c: sqlite3.Connection) -> None:
            c.close()
            rec.free()

        ctx.register_for_cancel(on_cancel, on_free, conn)
        rec.entered.set()
        try:
            conn.execute("WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r) "
                         "SELECT count(*) FROM r").fetchone()
        except sqlite3.OperationalError as exc:
            outcome.append(str(exc))
            raise
        return PlainTextResponse("done")

    srv = live(CancellationMiddleware(Starlette(routes=[Route("/q", query)])))
    s = open_request(srv.port, "/q")
    assert rec.entered.wait(WAIT)
    time.sleep(0.2)
    close_fin(s)
    assert wait_until(lambda: rec.frees == 1)
    assert rec.cancels == [CancelReason.CHANNEL_FAULTED]
    assert outcome == ["interrupted"]
    srv.stop()
    assert srv.problems() == [], srv.problems()


def test_psycopg_client_left_while_waiting_for_the_pool(postgres: Postgres,  # noqa: F811
                                                         live: Callable[..., LiveServer]) -> None:
    """The README pattern's regression: a client that leaves while its
    request waits for a pooled connection.  Its registration then runs
    on_cancel at once (G3), with no query yet; raise_if_canceled() stops the
    handler before it starts one."""
    from psycopg_pool import ConnectionPool

    from cancelcore import OperationCanceledError

    pool = ConnectionPool(postgres.dsn, min_size=1, max_size=1, open=True, kwargs={"autocommit": True})
    started: list[str] = []
    stopped: list[str] = []
    frees: list[str] = []
    try:
        def query(request: Request) -> Response:
            key = request.query_params["k"]
            ctx = current_operation()
            assert ctx is not None
            conn = pool.getconn(timeout=20)
            ctx.register_for_cancel(*offload(lambda r, c: c.cancel(),
                                             lambda c: (pool.putconn(c), frees.append(key))), conn)
            try:
                ctx.raise_if_canceled()
            except OperationCanceledError:
                stopped.append(key)
                raise
            started.append(key)
            conn.execute(SLEEP_SQL)
            return PlainTextResponse("done")

        mw = CancellationMiddleware(Starlette(routes=[Route("/q", query)]))
        srv = live(mw)
        first = open_request(srv.port, "/q?k=1")
        assert wait_until(lambda: running_queries(postgres) == 1)
        second = open_request(srv.port, "/q?k=2")
        assert wait_until(lambda: pool.get_stats().get("requests_waiting", 0) == 1)
        close_fin(second)  # leaves while waiting for the pool
        time.sleep(0.2)
        close_fin(first)  # its query is canceled; the connection goes to the second
        assert wait_until(lambda: sorted(frees) == ["1", "2"])
        assert started == ["1"] and stopped == ["2"]
        assert wait_until(lambda: running_queries(postgres) == 0)
        assert wait_until(lambda: pool.get_stats().get("pool_available", 0) == 1), pool.get_stats()
        st = mw.host.stats
        assert (st["cancels_channel_faulted"], st["free_states_run"], st["callback_errors"]) == (2, 2, 0)
        srv.stop()
        assert srv.problems() == [], srv.problems()
    finally:
        pool.close()
