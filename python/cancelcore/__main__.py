"""``python -m cancelcore``: the version, and where the wheel keeps what C
embedders need.

    python -m cancelcore                 version and every directory
    python -m cancelcore --version       the version alone
    python -m cancelcore --include       the directory holding cancelcore.h
    python -m cancelcore --libdir        the directory holding libcancelcore.a
    python -m cancelcore --cmakedir      for cancelcore_DIR (find_package)
    python -m cancelcore --pkgconfigdir  for PKG_CONFIG_PATH

One option prints one line, so a shell can use it:
``cc -I"$(python -m cancelcore --include)" ...``.  The demonstrations live in
the repository's examples/, not in the package.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Optional

from . import __version__, get_cmake_dir, get_include, get_library_dir, get_pkgconfig_dir

_DIRS: dict[str, tuple[str, Callable[[], str]]] = {
    "include": ("the directory holding cancelcore.h", get_include),
    "libdir": ("the directory holding the static library libcancelcore.a", get_library_dir),
    "cmakedir": ("the directory holding cancelcoreConfig.cmake (cancelcore_DIR)", get_cmake_dir),
    "pkgconfigdir": ("the directory holding cancelcore.pc (PKG_CONFIG_PATH)", get_pkgconfig_dir),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cancelcore",
        description="cancelcore: call cancellation for server-side operations (the WWSAPI "
        "service-host model).  Without an option: the version and every directory.",
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--version", action="store_true", help="print the version")
    for name, (text, _) in _DIRS.items():
        which.add_argument(f"--{name}", action="store_true", help=f"print {text}")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if args.version:
        print(__version__)
        return 0
    for name, (_, get) in _DIRS.items():
        if getattr(args, name):
            print(get())
            return 0
    print(f"cancelcore {__version__}")
    for name, (_, get) in _DIRS.items():
        print(f"{name + ':':14}{get()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
