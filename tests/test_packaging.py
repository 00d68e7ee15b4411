"""What the installed distribution is: one stable-ABI (cp39-abi3) wheel
holding only the library, whose metadata ships no test tools, and whose
``python -m cancelcore`` prints the version and the embedders' directories.

These read the installed distribution's metadata (importlib.metadata), so
they test what ``pip install`` put on this interpreter, not the source tree.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from importlib import metadata
from typing import Callable, Optional

import pytest

import cancelcore


@pytest.fixture(scope="module")
def dist() -> metadata.Distribution:
    return metadata.distribution("cancelcore")


def _files(dist: metadata.Distribution) -> list[str]:
    files = dist.files
    assert files is not None, "the distribution has no RECORD"
    return [str(f).replace(os.sep, "/") for f in files]


def test_wheel_tag_is_cp39_abi3(dist: metadata.Distribution) -> None:
    wheel = dist.read_text("WHEEL")
    assert wheel is not None, "installed from a wheel: WHEEL metadata present"
    tags = [line.split(":", 1)[1].strip() for line in wheel.splitlines()
            if line.startswith("Tag:")]
    assert tags, wheel
    for tag in tags:
        python, abi, _platform = tag.split("-", 2)
        assert (python, abi) == ("cp39", "abi3"), tag


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX extension suffix")
def test_extension_module_is_the_stable_abi_one(dist: metadata.Distribution) -> None:
    extensions = [f for f in _files(dist) if f.endswith(".so")]
    # One extension module, named for the stable ABI: the same file loads on
    # every CPython >= 3.9 (this suite runs it on the oldest and the newest).
    assert extensions == ["cancelcore/_cancelcore.abi3.so"]


def test_package_holds_only_the_library(dist: metadata.Distribution) -> None:
    files = _files(dist)
    assert not [f for f in files if "demo" in f.lower()], "demos belong in examples/"
    for name in ("_demo", "_server_demo"):
        assert importlib.util.find_spec(f"cancelcore.{name}") is None
    outside = [f for f in files if not f.startswith(("cancelcore/", "cancelcore-"))
               and "__pycache__" not in f and not f.startswith("..")]
    assert outside == []


def test_metadata_ships_no_test_tools(dist: metadata.Distribution) -> None:
    requires = dist.requires or []
    unconditional = [r for r in requires if "extra ==" not in r]
    assert [r.split(">")[0].split("=")[0].strip() for r in unconditional] == ["cffi"]
    extras = dist.metadata.get_all("Provides-Extra") or []
    assert "test" not in extras
    tools = ("pytest", "hypothesis", "mypy", "fastapi", "httpx")
    # httpx is also what cancelcore.httpx runs on: allowed under its own extra only.
    shipped = [r for r in requires if not r.replace(" ", "").endswith('extra=="httpx"')]
    assert not [r for r in shipped if r.split()[0].lower().startswith(tools)]


def _main(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cancelcore", *args],
                          capture_output=True, text=True, timeout=60)


def test_main_prints_version_and_directories() -> None:
    out = _main()
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == f"cancelcore {cancelcore.__version__}"
    assert lines[1:] == [
        f"include:      {cancelcore.get_include()}",
        f"libdir:       {cancelcore.get_library_dir()}",
        f"cmakedir:     {cancelcore.get_cmake_dir()}",
        f"pkgconfigdir: {cancelcore.get_pkgconfig_dir()}",
    ]


@pytest.mark.parametrize("option, expected, must_hold", [
    ("--version", lambda: cancelcore.__version__, None),
    ("--include", cancelcore.get_include, "cancelcore.h"),
    ("--libdir", cancelcore.get_library_dir, "libcancelcore.a"),
    ("--cmakedir", cancelcore.get_cmake_dir, "cancelcoreConfig.cmake"),
    ("--pkgconfigdir", cancelcore.get_pkgconfig_dir, "cancelcore.pc"),
])
def test_main_option_prints_one_line(option: str, expected: Callable[[], str],
                                     must_hold: Optional[str]) -> None:
    out = _main(option)
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"{expected()}\n"
    if must_hold is not None:
        assert os.path.isfile(os.path.join(out.stdout.strip(), must_hold))


@pytest.mark.parametrize("args", [["demo"], ["serve-demo"], ["--include", "--libdir"]])
def test_main_rejects_other_arguments(args: list[str]) -> None:
    out = _main(*args)
    assert out.returncode == 2
    assert out.stdout == ""
    assert "usage: python -m cancelcore" in out.stderr


def test_interpreter_finder_finds_this_interpreter() -> None:
    """make test picks the oldest and newest CPython with support/interpreters.py
    (on sys.path via conftest); whichever of them runs this suite must be
    among those it finds, and nothing below the wheel's 3.9."""
    import interpreters

    found = interpreters.supported()
    assert found and min(found) >= (3, 9)
    version, path = found[sys.version_info[:2]]
    assert version[:2] == sys.version_info[:2]
    assert os.path.isfile(path)
