"""Emulated hardware for machines without it: a RAPL package counter that follows real CPU use.

A VM or a CI runner has no RAPL counter, so the part of the product that only matters where a
counter is shared (several jobs on one CPU package) cannot be seen there. :class:`EmulatedRapl`
writes a powercap tree (``intel-rapl:0/energy_uj``) whose package energy follows this machine's
real CPU use: ``idle_w`` watts plus ``watts_per_core`` for each busy core, from ``/proc/stat``,
updated every ``interval_s``. Point :class:`~lightning_green.energy.RaplMeter` (or
``EnergyMonitor(backend="rapl", rapl_root=...)``) at it: the real reading code reads it, and
everything that runs on the machine, including other jobs, draws from it as from a real package.

Example::

    >>> import tempfile, time
    >>> from lightning_green.energy import RaplMeter
    >>> from lightning_green.testing import EmulatedRapl
    >>> with EmulatedRapl(tempfile.mkdtemp(), idle_w=10.0) as rapl:
    ...     meter = RaplMeter(rapl.root, poll_interval_s=None)
    ...     meter.start()
    ...     time.sleep(0.3)
    ...     watts = meter.stop().watts
    >>> watts >= 9.0  # at least the idle power
    True

Run as ``python -m lightning_green.testing ROOT`` it emulates until killed.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from pathlib import Path
from types import TracebackType

from lightning_green.energy.attribution import _CLK_TCK

__all__ = ["EmulatedRapl", "merge_spans"]


class EmulatedRapl:
    """A powercap tree whose package counter integrates ``idle_w + watts_per_core x busy cores``.

    Args:
        root: Folder to write the tree into (created).
        idle_w: The package's power with every core idle, in watts.
        watts_per_core: Extra power of one fully busy core, in watts.
        interval_s: How often the counter is updated (real RAPL: about 1 ms; 10 ms here).
        max_uj: Where the counter wraps, in microjoules (real packages: about 2^32 to 2^38).
        history: Keep ``(unix time, cumulative joules)`` of every update in :attr:`history`, so
            a benchmark can tell the node's energy over any span.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        idle_w: float = 10.0,
        watts_per_core: float = 15.0,
        interval_s: float = 0.01,
        max_uj: int = 262_143_328_850,
        history: bool = False,
    ) -> None:
        self.root = Path(root)
        self.idle_w, self.watts_per_core, self.interval_s = idle_w, watts_per_core, interval_s
        self.max_uj = max_uj
        self.history: list[tuple[float, float]] | None = [] if history else None
        zone = self.root / "intel-rapl:0"
        zone.mkdir(parents=True, exist_ok=True)
        (zone / "name").write_text("package-0\n")
        (zone / "max_energy_range_uj").write_text(f"{max_uj}\n")
        self._counter = zone / "energy_uj"
        self._fd = os.open(self._counter, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._stat = os.open("/proc/stat", os.O_RDONLY)
        self.joules = 0.0
        self._busy = self._busy_now()
        self._t = time.monotonic()
        self._write()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="emulated-rapl", daemon=True)

    def start(self) -> EmulatedRapl:
        self._thread.start()
        return self

    def _busy_now(self) -> float:
        # One pread of an open /proc/stat: the emulator's own CPU use is part of what it measures,
        # so it keeps it small (about 0.5% of a core at 10 ms).
        line = os.pread(self._stat, 256, 0).split(b"\n", 1)[0].split()
        # user nice system irq softirq: idle, iowait and steal (another guest's time) draw no power here
        return sum(int(v) for i, v in enumerate(line[1:8]) if i not in (3, 4)) / _CLK_TCK

    def update(self) -> None:
        """Add the energy since the last update and write the counter (the thread calls this)."""
        t, busy = time.monotonic(), self._busy_now()
        self.joules += self.idle_w * (t - self._t) + self.watts_per_core * max(0.0, busy - self._busy)
        self._t, self._busy = t, busy
        self._write()

    def _write(self) -> None:
        # Fixed width, one pwrite within one page: a reader sees the old value or the new one.
        os.pwrite(self._fd, b"%020d\n" % (int(self.joules * 1e6) % self.max_uj), 0)
        if self.history is not None:
            self.history.append((time.time(), self.joules))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.update()

    def joules_between(self, start: float, end: float) -> float:
        """The package's energy between two unix times, as the counter showed it."""
        if not self.history:
            raise ValueError("EmulatedRapl(history=True) keeps the history this needs")
        return _at(self.history, end) - _at(self.history, start)

    def joules_over(self, spans: list[tuple[float, float]]) -> float:
        """The package's energy over the union of ``spans`` (unix times; overlaps counted once)."""
        return sum(self.joules_between(s, e) for s, e in merge_spans(spans))

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=1.0)
        for fd in (self._fd, self._stat):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> EmulatedRapl:
        return self.start()

    def __exit__(
        self, typ: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def merge_spans(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Time spans with overlaps joined: the union of windows, for a node's energy over several
    jobs' windows (an overlap counted once).

    >>> merge_spans([(0, 2), (1, 3), (5, 6)])
    [(0, 3), (5, 6)]
    """
    merged: list[list[float]] = []
    for s, e in sorted(spans):
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    return [(s, e) for s, e in merged]


def _at(history: list[tuple[float, float]], t: float) -> float:
    """Cumulative joules the counter showed at unix time ``t``: the last value written by then, as
    a reader of the file saw it (the counter moves in steps of ``interval_s``, as RAPL's does)."""
    import bisect

    i = bisect.bisect_right(history, (t, float("inf")))
    return history[max(0, i - 1)][1]


if __name__ == "__main__":  # pragma: no cover - a process for tests that need one
    with EmulatedRapl(sys.argv[1], *(float(a) for a in sys.argv[2:3])) as _rapl:
        while True:
            time.sleep(3600)
