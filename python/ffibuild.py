"""Generates the C source of the cffi extension ``cancelcore._cancelcore``.

Run by CMake at build time (out-of-line API mode): ``python ffibuild.py
cancelcore.h out.c [module]``; the module name defaults to
``cancelcore._cancelcore`` (the benchmark builds stand-alone copies under
other names).  The cdef is the public header itself with the
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
extern "Python" void _cc_py_cancel(cc_reason reason, void *state);
"""


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
    return "\n".join(lines)


MODULE = "cancelcore._cancelcore"


def make_ffi(header: Path, module: str = MODULE) -> cffi.FFI:
    ffi = cffi.FFI()
    ffi.cdef(cdef_from_header(header.read_text()) + TRAMPOLINES)
    ffi.set_source(module, '#include "cancelcore.h"\n')
    return ffi


def main(argv: list[str]) -> int:
    if len(argv) not in (3, 4):
        print("usage: ffibuild.py cancelcore.h out.c [module]", file=sys.stderr)
        return 2
    header, out = Path(argv[1]), Path(argv[2])
    module = argv[3] if len(argv) == 4 else MODULE
    make_ffi(header, module).emit_c_code(str(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
