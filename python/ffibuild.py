"""Generates the C source of the cffi extension ``cancelcore._cancelcore``.

Run by CMake at build time (out-of-line API mode): ``python ffibuild.py
cancelcore.h out.c``.  The cdef is the public header itself with the
preprocessor lines and the export macro taken out, so the bindings cannot
drift from the header; the trampolines C calls back into are declared
``extern "Python"``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import cffi

TRAMPOLINES = """
extern "Python" void _cc_py_notices(void *arg, const cc_notice *notices, size_t count);
"""

_STATUS_ITEM = re.compile(r"X\((CC_\w+),\s*(-?\d+),")


def expand_status_list(header: str, text: str) -> str:
    """The header's X-macro of statuses, spelled out as the enum cffi reads
    (its parser takes no macros)."""
    items = _STATUS_ITEM.findall(header)
    if not items:
        raise SystemExit("ffibuild: no CC_STATUS_LIST in the header")
    body = ", ".join(f"{name} = {value}" for name, value in items)
    return re.sub(
        r"typedef enum cc_status \{[^}]*\} cc_status;",
        "typedef enum cc_status { " + body + " } cc_status;",
        text,
    )


def cdef_from_header(text: str) -> str:
    """The header as cffi's parser accepts it: no directives, no macros."""
    text = re.sub(r"\\\n", " ", text)  # join continued lines
    lines = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            continue
        if stripped.startswith('extern "C"') or stripped.startswith('} /* extern "C"'):
            continue
        lines.append(line.replace("CC_API ", ""))
    return expand_status_list(text, "\n".join(lines))


def make_ffi(header: Path) -> cffi.FFI:
    ffi = cffi.FFI()
    ffi.cdef(cdef_from_header(header.read_text()) + TRAMPOLINES)
    ffi.set_source("cancelcore._cancelcore", '#include "cancelcore.h"\n')
    return ffi


def main(argv: list[str]) -> int:
    header, out = Path(argv[1]), Path(argv[2])
    make_ffi(header).emit_c_code(str(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
