"""Finds the CPython interpreters on this machine that the wheel supports.

    python support/interpreters.py oldest   path of the oldest supported one
    python support/interpreters.py newest   path of the newest supported one
    python support/interpreters.py list     every one found: version and path

Used by the Makefile (``make test`` runs the Python suites on the oldest and
the newest).  Nothing is hard-coded: candidates are pyenv's interpreters
(``pyenv root``, else ``$PYENV_ROOT``, else ``~/.pyenv``), ``python3.N`` on
PATH, and the interpreter running this script.  Each candidate is asked for
its own version, so a stale shim or a broken install is skipped, as are
other implementations and free-threaded builds (which have no stable ABI).
Standard library only, and old syntax, so any python3 can run it.
"""

import glob
import os
import shutil
import subprocess
import sys

MINIMUM = (3, 9)  # the wheel's tag: cp39-abi3

_PROBE = (
    "import platform, sys, sysconfig, venv; "
    "print(platform.python_implementation(), *sys.version_info[:3], "
    "int(bool(sysconfig.get_config_var('Py_GIL_DISABLED'))))"
)


def _pyenv_root():
    try:
        out = subprocess.run(["pyenv", "root"], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, universal_newlines=True,
                             timeout=30)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")


def candidates():
    found = sorted(glob.glob(os.path.join(_pyenv_root(), "versions", "*", "bin", "python3")))
    for minor in range(MINIMUM[1], 40):
        path = shutil.which("python3.%d" % minor)
        if path:
            found.append(path)
    found.append(sys.executable)
    return found


def probe(path):
    """(major, minor, micro) of a usable CPython at `path`, else None."""
    try:
        out = subprocess.run([path, "-c", _PROBE], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, universal_newlines=True,
                             timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    fields = out.stdout.split()
    if out.returncode != 0 or len(fields) != 5 or fields[0] != "CPython" or fields[4] != "0":
        return None
    return tuple(int(f) for f in fields[1:4])


def supported():
    """{(major, minor): (version, path)}: one interpreter per minor version,
    the newest patch release of each."""
    best = {}
    for path in candidates():
        version = probe(path)
        if version is None or version[:2] < MINIMUM:
            continue
        key = version[:2]
        if key not in best or version > best[key][0]:
            best[key] = (version, os.path.realpath(path))
    return best


def main(argv):
    if len(argv) != 2 or argv[1] not in ("oldest", "newest", "list"):
        sys.stderr.write(__doc__)
        return 2
    best = supported()
    if not best:
        sys.stderr.write("no CPython >= %d.%d found\n" % MINIMUM)
        return 1
    if argv[1] == "list":
        for key in sorted(best):
            version, path = best[key]
            print("%s %s" % (".".join(map(str, version)), path))
    else:
        key = min(best) if argv[1] == "oldest" else max(best)
        print(best[key][1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
