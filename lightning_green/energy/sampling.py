"""Background threads that read slow counters, so window edges cost the training thread microseconds.

:class:`CounterSampler` reads cumulative counters and interpolates them at window edges;
:class:`PollingThread` calls a function at a fixed interval (power sampling, per-process figures).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("lightning_green.energy")


class Edge:
    """A window edge: a moment, and the counter values at it once a sample after it has arrived."""

    __slots__ = ("t", "values")

    def __init__(self, t: float) -> None:
        self.t = t
        self.values: dict[str, float | None] | None = None


def _interpolate(
    a: tuple[float, dict[str, float | None]], b: tuple[float, dict[str, float | None]], t: float
) -> dict[str, float | None]:
    """Counter values at ``t`` on the line through samples ``a`` and ``b`` (beyond ``b``: extrapolated)."""
    (ta, va), (tb, vb) = a, b
    f = (t - ta) / (tb - ta) if tb > ta else 1.0
    out: dict[str, float | None] = {}
    for key, y1 in vb.items():
        y0 = va.get(key)
        out[key] = None if y0 is None or y1 is None else y0 + max(0.0, y1 - y0) * f
    return out


class CounterSampler:
    """Reads slow cumulative counters on a background thread, so window edges cost the caller
    microseconds instead of a counter read (``nvmlDeviceGetTotalEnergyConsumption`` takes about
    4 ms on an H200).

    An edge takes a timestamp only. Its counter values are interpolated between the samples just
    before and just after it, as soon as the sample after it arrives (each sample is stamped at the
    midpoint of its read). Asked for earlier, they are extrapolated from the last two samples (the
    power of the last sampling interval), which errs by at most the change in power over one
    interval; ``wait=True`` waits for the sample instead.

    Args:
        read: Returns cumulative joules per channel key (``None`` for a failed channel).
        interval_s: Time between the end of one read and the start of the next.
        clock: A monotonic clock (tests pass a fake one).
    """

    def __init__(
        self,
        read: Callable[[], dict[str, float | None]],
        interval_s: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
        name: str = "counter-sampler",
    ) -> None:
        self._read, self.interval_s, self._clock = read, interval_s, clock
        self._cond = threading.Condition()
        self._prev: tuple[float, dict[str, float | None]] | None = None
        self._last: tuple[float, dict[str, float | None]] | None = None
        self._pending: list[Edge] = []
        self._stop = threading.Event()
        self.sample()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def sample(self) -> None:
        """Take one sample (the thread calls this; tests may too) and settle the edges it passes."""
        t0 = self._clock()
        try:
            values = self._read()
        except Exception:  # a failing counter: its edges get None, windows are incomplete
            log.debug("sample failed", exc_info=True)
            values = {}
        t1 = self._clock()
        t = 0.5 * (t0 + t1)
        with self._cond:
            self._prev, self._last = self._last, (t, values)
            if self._pending:
                keep = []
                for e in self._pending:
                    if e.t <= t:
                        e.values = _interpolate(self._prev or self._last, self._last, e.t)
                    else:
                        keep.append(e)
                self._pending = keep
            self._cond.notify_all()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def edge(self) -> Edge:
        """Mark a window edge now (cheap: a timestamp and a list append)."""
        e = Edge(self._clock())
        with self._cond:
            self._pending.append(e)
        return e

    def values(self, edge: Edge, wait: bool = False) -> dict[str, float | None]:
        """Counter values at ``edge``: interpolated if settled, else extrapolated (or waited for)."""
        with self._cond:
            if edge.values is None and wait and self._thread.is_alive():
                self._cond.wait_for(lambda: edge.values is not None, timeout=10 * self.interval_s + 1.0)
            if edge.values is not None:
                return edge.values
            assert self._last is not None
            return _interpolate(self._prev or self._last, self._last, edge.t)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval_s + 5.0)


class PollingThread:
    """Calls ``fn`` every ``interval_s`` seconds on a daemon thread until stopped."""

    def __init__(self, fn: Callable[[], None], interval_s: float, name: str) -> None:
        self._fn = fn
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._fn()
            except Exception:  # errors surface on the next window read instead
                log.debug("poll failed", exc_info=True)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2 * self._interval + 1)
