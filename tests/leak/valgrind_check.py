"""Runs exercise.py under valgrind memcheck and judges the report.

A memory error (invalid read, write or free, use of uninitialised memory)
or a "definitely lost" block whose stack passes through the core (a cc_*
function) or the extension module fails the run.  The interpreter's own
reports (CPython is not valgrind-clean: one-off allocations at start-up and
finalisation, getrandom-filled buffers it cannot see) are tolerated, and so
is the module object cffi allocates once when it loads the extension.
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
            if OURS.search(r) and KINDS.search(r) and "_my_Py_InitModule" not in r]
    print(f"valgrind: exercise exit {run.returncode}; "
          f"{len(ours)} memory errors or leaks through cancelcore (log: {log})")
    for r in ours:
        print(r)
    return 0 if run.returncode == 0 and not ours else 1


OURS = re.compile(r"\bcc_[a-z_]+ \(|_cancelcore\.|_cc_py_")
KINDS = re.compile(r"Invalid (read|write|free)|uninitialised|definitely lost|Mismatched")


if __name__ == "__main__":
    sys.exit(main())
