"""Measurement helpers shared by the benchmarks, the tests and the examples.

Not part of the installed package: scripts put this folder on ``sys.path``
(``sys.path.insert(0, <repo>/support)``) and ``import measure``.
"""

from __future__ import annotations

import asyncio
import math
import os
import platform
import time
from typing import Any, Optional


def percentile(values: "list[float]", q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]); NaN for no values."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(1, min(len(ordered), math.ceil(q / 100.0 * len(ordered))))
    return ordered[rank - 1]


def cpu_model() -> str:
    """The processor's model name, as /proc/cpuinfo gives it."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line() -> str:
    """One line naming the machine a figure was measured on."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count() or 0
    return (f"{cpu_model()}, {usable} usable of {os.cpu_count()} CPUs, "
            f"{platform.python_implementation()} {platform.python_version()}, "
            f"{platform.system()} {platform.release()}")


class LoopStall:
    """The longest gap between the ticks of a ``tick``-second asyncio ticker,
    running while the ``async with`` block does: how long the event loop went
    without running other work.  ``reset()`` forgets the gaps so far."""

    def __init__(self, tick: float = 0.001) -> None:
        self.tick = tick
        self.worst = 0.0
        self._stop = False
        self._task: "Optional[asyncio.Future[None]]" = None

    async def _ticker(self) -> None:
        last = time.perf_counter()
        while not self._stop:
            await asyncio.sleep(self.tick)
            now = time.perf_counter()
            self.worst = max(self.worst, now - last)
            last = now

    def reset(self) -> None:
        self.worst = 0.0

    async def __aenter__(self) -> "LoopStall":
        self._task = asyncio.ensure_future(self._ticker())
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self._stop = True
        assert self._task is not None
        await self._task
