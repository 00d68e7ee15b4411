"""Runs exercise.py under valgrind memcheck and judges the report.

A memory error (invalid read, write or free, use of uninitialised memory)
or a "definitely lost" block whose stack passes through the core (a cc_*
function) or the extension module fails the run.  The interpreter's own
reports (CPython is not valgrind-clean: one-off allocations at start-up and
finalisation, getrandom-filled buffers it cannot see) are tolerated, and so
is what cffi allocates once when it loads the extension.
Usage: python valgrind_check.py PYTHON
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path


def main() -> int:
    python = sys.argv[1]
    here = Path(__file__).resolve().parent
    log = here.parent.parent / "build" / "valgrind.log"
    log.parent.mkdir(exist_ok=True)
    env = dict(os.environ, PYTHONMALLOC="malloc")
    cmd = [
        "valgrind", "--tool=memcheck", "--leak-check=full",
        "--show-leak-kinds=definite", f"--log-file={log}",
        python, str(here / "exercise.py"),
    ]
    run = subprocess.run(cmd, env=env)
    records = re.split(r"\n==\d+== \n", log.read_text())
    ours = [r for r in records
            if OURS.search(r) and KINDS.search(r) and not ONE_OFF.search(r)]
    print(f"valgrind: exercise exit {run.returncode}; "
          f"{len(ours)} memory errors or leaks through cancelcore (log: {log})")
    for r in ours:
        print(r)
    return 0 if run.returncode == 0 and not ours else 1


OURS = re.compile(r"\bcc_[a-z_]+ \(|_cancelcore\.|_cc_py_")
KINDS = re.compile(r"Invalid (read|write|free)|uninitialised|definitely lost|Mismatched")
# Allocated once, when cffi loads the extension, not by cancelcore: the module
# object (_my_Py_InitModule), and on CPython 3.13 the names cffi's loader puts
# into the module's dict (b_init_cffi_1_0_external_module), interned strings
# that 3.13 no longer frees at exit (two blocks, ~65 bytes, whatever the run).
ONE_OFF = re.compile(r"_my_Py_InitModule|b_init_cffi_1_0_external_module")


if __name__ == "__main__":
    sys.exit(main())
