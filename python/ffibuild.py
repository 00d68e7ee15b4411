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
extern "Python" int _cc_py_notices(void *arg, const cc_notice *notices, size_t count);
void cc_py_binding(void *arg, const cc_notice *notices, size_t count);
"""

# The binding function the core calls: the Python handler, and once more
# with room on the stack if it could not even start (a RecursionError on
# entry, when the core calls back on a thread whose stack is nearly full):
# a cancel is never lost to where it was triggered from.  The handler
# returns 1 once it has started; cffi returns 0 when it raised first.
BINDING_SHIM = r"""
#include "cancelcore.h"
static int _cc_py_notices(void *arg, const cc_notice *notices, size_t count);
static void cc_py_binding(void *arg, const cc_notice *notices, size_t count)
{
    if (_cc_py_notices(arg, notices, count))
        return;
    PyGILState_STATE gil = PyGILState_Ensure();
    int limit = Py_GetRecursionLimit();
    Py_SetRecursionLimit(limit + 500);
    (void)_cc_py_notices(arg, notices, count);
    Py_SetRecursionLimit(limit);
    PyGILState_Release(gil);
}
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


MODULE = "cancelcore._cancelcore"


def make_ffi(header: Path, module: str = MODULE) -> cffi.FFI:
    ffi = cffi.FFI()
    ffi.cdef(cdef_from_header(header.read_text()) + TRAMPOLINES)
    ffi.set_source(module, BINDING_SHIM)
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
