"""A throwaway PostgreSQL for the database tests: initdb in a temporary
directory, started on 127.0.0.1 as an unprivileged user, stopped and removed
at the end of the session.

Where PostgreSQL is missing and we are root, Debian's ``postgresql`` is
installed with apt-get.  Otherwise the tests skip with the reason -- except
under CI (``CI=true``), where a missing database fails them: CI must run them.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Iterator, Optional

import pytest

HOST = "127.0.0.1"
USER = "cancelcore"


@dataclass
class Postgres:
    port: int
    bindir: str
    datadir: str
    run_as: Optional[str]

    @property
    def dsn(self) -> str:
        return f"host={HOST} port={self.port} user={USER} dbname=postgres"

    @property
    def url(self) -> str:
        return f"postgresql://{USER}@{HOST}:{self.port}/postgres"


def _bindir() -> Optional[str]:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if found:
        return os.path.dirname(found[-1])
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


def _install() -> Optional[str]:
    """apt-get install postgresql, as root only; the bin directory or None."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-q"], env=env, check=False, capture_output=True, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-q", "postgresql"], env=env, check=False,
                   capture_output=True, timeout=900)
    return _bindir()


def _unavailable(why: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL tests cannot run on CI: {why}")
    pytest.skip(f"PostgreSQL tests skipped: {why} (install Debian's postgresql, or run as root to let the suite do it)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _run(cmd: list[str], run_as: Optional[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    kwargs = {}
    if run_as is not None:
        kwargs["user"] = run_as  # PostgreSQL refuses to run as root
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)  # type: ignore[call-overload]


def start_postgres() -> Iterator[Postgres]:
    bindir = _bindir() or _install()
    if bindir is None:
        _unavailable("no initdb under /usr/lib/postgresql/*/bin")
        return
    run_as: Optional[str] = None
    if os.geteuid() == 0:
        for name in ("postgres", "cancelcore-pg"):
            try:
                pwd.getpwnam(name)
                run_as = name
                break
            except KeyError:
                pass
        if run_as is None and shutil.which("useradd"):
            # PostgreSQL refuses to run as root: make a system user for it.
            subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                            "cancelcore-pg"], capture_output=True, check=False, timeout=60)
            try:
                pwd.getpwnam("cancelcore-pg")
                run_as = "cancelcore-pg"
            except KeyError:
                pass
        if run_as is None:
            _unavailable("running as root with no unprivileged user to run PostgreSQL as")
            return
    datadir = tempfile.mkdtemp(prefix="cancelcore-pg-")
    if run_as is not None:
        entry = pwd.getpwnam(run_as)
        os.chown(datadir, entry.pw_uid, entry.pw_gid)
    data = os.path.join(datadir, "data")
    port = _free_port()
    try:
        r = _run([os.path.join(bindir, "initdb"), "-D", data, "-U", USER, "--auth=trust", "-E", "UTF8",
                  "--no-sync"], run_as)
        if r.returncode:
            _unavailable(f"initdb failed: {r.stderr.strip()[-500:]}")
            return
        options = (f"-p {port} -k {datadir} -c listen_addresses={HOST} -c fsync=off "
                   f"-c synchronous_commit=off -c max_connections=50")
        r = _run([os.path.join(bindir, "pg_ctl"), "-D", data, "-o", options, "-l",
                  os.path.join(datadir, "log"), "-w", "-t", "60", "start"], run_as)
        if r.returncode:
            _unavailable(f"pg_ctl start failed: {r.stderr.strip()[-500:]}")
            return
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection((HOST, port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        yield Postgres(port, bindir, datadir, run_as)
    finally:
        if os.path.exists(os.path.join(data, "postmaster.pid")):
            _run([os.path.join(bindir, "pg_ctl"), "-D", data, "-m", "immediate", "-w", "stop"], run_as, 60)
        shutil.rmtree(datadir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A running PostgreSQL on 127.0.0.1 for the session."""
    yield from start_postgres()
