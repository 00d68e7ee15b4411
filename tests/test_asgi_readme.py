"""The README's database example, run exactly as written (extracted from
README.md) under uvicorn on 127.0.0.1 against the suite's PostgreSQL: a
client that leaves mid-query stops the query in the database, the
connection goes back to the pool once, and the event loop is not the
thread that ran the blocking ``conn.cancel()``."""

from __future__ import annotations

import os
import re
import threading
from typing import Any

import pytest

from asgi_support import WAIT, LiveServer, close_fin, open_request, read_response, wait_until
from pg_support import Postgres, postgres  # noqa: F401  (the session fixture)

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def readme_example() -> str:
    with open(README, encoding="utf-8") as f:
        text = f.read()
    m = re.search(r"<!-- readme-db-example -->\s*```python\n(.*?)```", text, re.S)
    assert m, "README.md lost its database example"
    return m.group(1)


def active_reports(pg: Postgres) -> int:
    import psycopg

    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                           "AND query LIKE '%%/* report */%%' AND pid <> pg_backend_pid()").fetchone()
        assert row is not None
        return int(row[0])


def test_readme_database_example(postgres: Postgres, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    pytest.importorskip("fastapi")
    monkeypatch.setenv("DATABASE_URL", postgres.dsn)
    namespace: dict[str, Any] = {"__name__": "readme_example"}
    exec(compile(readme_example(), "README.md", "exec"), namespace)
    app, pool = namespace["app"], namespace["pool"]
    cancel_threads: list[str] = []
    real_cancel = None
    try:
        import psycopg

        real_cancel = psycopg.Connection.cancel

        def spy(self: Any) -> None:
            cancel_threads.append(threading.current_thread().name)
            assert real_cancel is not None
            real_cancel(self)

        monkeypatch.setattr(psycopg.Connection, "cancel", spy)
        srv = LiveServer(app).start()
        try:
            s = open_request(srv.port, "/report")
            assert wait_until(lambda: active_reports(postgres) == 1, timeout=WAIT)
            close_fin(s)
            assert wait_until(lambda: active_reports(postgres) == 0, timeout=WAIT)
            assert wait_until(lambda: pool.get_stats().get("pool_available", 0) == pool.get_stats()["pool_size"])
            assert len(cancel_threads) == 1 and cancel_threads[0].startswith("cancelcore-offload"), cancel_threads
            st = app.host.stats
            assert wait_until(lambda: app.host.stats["free_states_run"] == 1)
            assert st["cancels_channel_faulted"] == 1
            # A request that completes: the example still answers.
            monkeypatch.setattr(psycopg.Connection, "cancel", real_cancel)
        finally:
            srv.stop()
        assert srv.problems() == [], srv.problems()
    finally:
        pool.close()
