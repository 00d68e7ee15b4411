"""The demonstrations in examples/ (what ``make demo`` runs) pass their own
checks against the installed package: each keeps books of every callback and
exits 1 if a free-state ran other than once, a cancel callback more than
once, or the books disagree with ``host.stats``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _run(script: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run([sys.executable, str(EXAMPLES / script), *args],
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:  # a hang fails this test only
        pytest.fail(f"{script} did not finish in {timeout} s: {exc.stdout!r}")


def _checks(stdout: str) -> list[str]:
    start = stdout.index("\nchecks\n")
    return [line for line in stdout[start:].splitlines() if line.startswith("  [")]


def test_service_demo_passes_its_checks() -> None:
    out = _run("service_demo.py", "--plain", "--seed", "3", timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    checks = _checks(out.stdout)
    assert checks and all(line.startswith("  [ok]") for line in checks), checks
    assert out.stdout.rstrip().endswith("result: OK")


def test_server_demo_passes_its_checks() -> None:
    pytest.importorskip("uvicorn")
    pytest.importorskip("starlette")
    out = _run("server_demo.py", "--plain", "--requests", "40", "--seed", "2", timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    checks = _checks(out.stdout)
    assert checks and all(line.startswith("  [ok]") for line in checks), checks
    assert out.stdout.rstrip().endswith("result: OK")


# The chain demo (issue 10): four processes, a client leaving, a deadline.
def test_chain_demo_passes_its_checks() -> None:
    for module in ("uvicorn", "starlette", "httpx", "grpc"):
        pytest.importorskip(module)
    out = _run("chain_demo.py", timeout=50)  # under the watchdog's 60 s
    assert out.returncode == 0, out.stdout + out.stderr
    checks = _checks(out.stdout)
    assert len(checks) == 8 and all(line.startswith("  [ok]") for line in checks), checks
    assert out.stdout.rstrip().endswith("result: OK")


@pytest.mark.parametrize("script, args", [
    ("chain_demo.py", ["--deadline-ms", "5"]),
    ("chain_demo.py", ["--chain", "nope"]),
    ("service_demo.py", ["--plain", "--live"]),
    ("server_demo.py", ["--requests", "5"]),
    ("server_demo.py", ["--requests", "x"]),
])
def test_examples_reject_bad_arguments(script: str, args: list[str]) -> None:
    out = _run(script, *args, timeout=60)
    assert out.returncode == 2
    assert out.stdout == "" or "result" not in out.stdout
