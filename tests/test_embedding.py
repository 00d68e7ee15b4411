"""The installed package serves C embedders: a small C program built against
the header and static library shipped inside it, with CMake's
find_package(cancelcore) (via cancelcore_DIR and via CMAKE_PREFIX_PATH) and
with pkg-config."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

import cancelcore

C_PROGRAM = r"""
#include <stdio.h>
#include <cancelcore.h>

static int cancels, frees, last_reason = -1;

static void on_cancel(cc_reason reason, void *state)
{
    (void)state;
    cancels++;
    last_reason = (int)reason;
}

static void on_free(void *state)
{
    (void)state;
    frees++;
}

int main(void)
{
    cc_host *host;
    cc_channel *ch;
    cc_op *op;
    if (cc_host_create(&host) != CC_OK || cc_host_open(host) != CC_OK)
        return 2;
    if (cc_channel_open(host, &ch) != CC_OK || cc_op_begin(ch, &op) != CC_OK)
        return 3;
    if (cc_op_register_cancel(op, on_cancel, on_free, NULL) != CC_OK)
        return 4;
    cc_host_abort(host);
    int canceled = cc_op_is_canceled(op);
    if (cc_op_end(op) != CC_OK)
        return 5;
    int stale = cc_op_end(op) == CC_E_INVALID_OPERATION;
    printf("version=%s state=%d cancels=%d reason=%d frees=%d canceled=%d stale=%d\n",
           cc_version_string(), (int)cc_host_state(host), cancels, last_reason,
           frees, canceled, stale);
    cc_host_close(host, 0);
    cc_host_free(host);
    return 0;
}
"""

CMAKE_LISTS = """
cmake_minimum_required(VERSION 3.16)
project(embed C)
find_package(cancelcore CONFIG REQUIRED)
add_executable(embed main.c)
target_link_libraries(embed PRIVATE cancelcore::cancelcore)
"""

EXPECTED = f"version={cancelcore.__version__} state=5 cancels=1 reason=0 frees=1 canceled=1 stale=1"


def _c_compiler() -> str:
    for name in (os.environ.get("CC", ""), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    pytest.skip("no C compiler found")


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} not found")
    return path


def _run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def _package_dir() -> str:
    return os.path.dirname(os.path.abspath(cancelcore.__file__))


def _cmake_build(tmp_path: Path, extra: list[str], env: dict[str, str]) -> Path:
    cmake = _need("cmake")
    _c_compiler()
    src = tmp_path / "src"
    src.mkdir()
    (src / "main.c").write_text(C_PROGRAM)
    (src / "CMakeLists.txt").write_text(CMAKE_LISTS)
    build = tmp_path / "build"
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    _run([cmake, "-S", str(src), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", *gen, *extra], env=env)
    _run([cmake, "--build", str(build)], env=env)
    exe = build / "embed"
    assert exe.is_file()
    return exe


def _clean_env() -> dict[str, str]:
    env = dict(os.environ)
    for var in ("CMAKE_PREFIX_PATH", "cancelcore_DIR", "PKG_CONFIG_PATH"):
        env.pop(var, None)
    return env


def test_cmake_with_cancelcore_dir(tmp_path: Path) -> None:
    exe = _cmake_build(tmp_path, [f"-Dcancelcore_DIR={cancelcore.get_cmake_dir()}"], _clean_env())
    assert _run([str(exe)]).stdout.strip() == EXPECTED


def test_cmake_with_prefix_path(tmp_path: Path) -> None:
    exe = _cmake_build(tmp_path, [f"-DCMAKE_PREFIX_PATH={_package_dir()}"], _clean_env())
    assert _run([str(exe)]).stdout.strip() == EXPECTED


def test_cmake_with_prefix_path_environment(tmp_path: Path) -> None:
    env = _clean_env()
    env["CMAKE_PREFIX_PATH"] = _package_dir()
    exe = _cmake_build(tmp_path, [], env)
    assert _run([str(exe)]).stdout.strip() == EXPECTED


def test_pkg_config(tmp_path: Path) -> None:
    pkg_config = _need("pkg-config")
    cc = _c_compiler()
    env = _clean_env()
    env["PKG_CONFIG_PATH"] = cancelcore.get_pkgconfig_dir()
    version = _run([pkg_config, "--modversion", "cancelcore"], env=env).stdout.strip()
    assert version == cancelcore.__version__
    flags = _run([pkg_config, "--cflags", "--libs", "cancelcore"], env=env).stdout.split()
    assert any(f.startswith("-I") and os.path.samefile(f[2:], cancelcore.get_include()) for f in flags)
    assert any(f.startswith("-L") and os.path.samefile(f[2:], cancelcore.get_library_dir()) for f in flags)
    assert "-lcancelcore" in flags
    (tmp_path / "main.c").write_text(C_PROGRAM)
    exe = tmp_path / "embed"
    # -pthread: the static library's private requirement (Libs.private).
    static_flags = _run([pkg_config, "--libs", "--static", "cancelcore"], env=env).stdout.split()
    _run([cc, str(tmp_path / "main.c"), "-o", str(exe), *flags, *static_flags, "-pthread"], cwd=tmp_path)
    assert _run([str(exe)]).stdout.strip() == EXPECTED
