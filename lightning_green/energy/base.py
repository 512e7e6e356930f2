"""The meter API: open a window, close it, get a :class:`~lightning_green.energy.reading.Reading`.

Meters nest: several named windows can be open at once (an epoch and a profiled step inside it).
:class:`CounterMeter` reads cumulative counters, on the caller's thread or through the background
threads of :mod:`lightning_green.energy.sampling` (whose classes are importable from here too).
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from lightning_green.energy.reading import DomainEnergy, Reading, merge_parallel
from lightning_green.energy.sampling import CounterSampler, Edge, PollingThread

__all__ = [
    "DEFAULT_WINDOW",
    "Channel",
    "CompositeMeter",
    "CounterMeter",
    "CounterSampler",
    "Meter",
    "MeterUnavailableError",
    "PollingThread",
]

log = logging.getLogger("lightning_green.energy")

DEFAULT_WINDOW = "__default__"


class MeterUnavailableError(RuntimeError):
    """The backend cannot work on this machine (no device, no counter, no permission)."""


@dataclass(frozen=True)
class Channel:
    """One counter a meter reads: which domain and device it covers, and how."""

    domain: str
    device: str
    source: str


class Meter(ABC):
    """Reads energy over windows.

    Subclasses set :attr:`name` (the backend) and :attr:`channels`.

    Example::

        >>> from lightning_green.energy import make_meter
        >>> meter = make_meter("estimate")
        >>> meter.start()
        >>> _ = sum(i * i for i in range(10**6))
        >>> reading = meter.stop()
        >>> reading.joules > 0, reading.sources
        (True, {'cpu': 'estimated:cpu-time'})
    """

    name: str = "meter"
    _settling = False

    def __init__(self) -> None:
        self._windows: dict[str, tuple[float, float, Any]] = {}
        #: The monotonic clock windows are timed by (tests give a fake one, as they give a fake counter).
        self.clock: Callable[[], float] = time.monotonic

    @property
    @abstractmethod
    def channels(self) -> tuple[Channel, ...]:
        """The counters this meter reads."""

    @property
    def assumptions(self) -> dict[str, Any]:
        """What the figures assume (estimates only)."""
        return {}

    def start(self) -> None:
        """Open the default window."""
        self.begin_window(DEFAULT_WINDOW)

    def stop(self) -> Reading:
        """Close the default window."""
        return self.end_window(DEFAULT_WINDOW)

    def begin_window(self, name: str, sync: bool = True) -> None:
        """Open window ``name``. ``sync`` waits for queued device work first."""
        if name in self._windows:
            raise ValueError(f"window {name!r} is already open")
        if sync:
            self.synchronize()
        self._windows[name] = (time.time(), self.clock(), self._begin(name))

    def end_window(self, name: str, sync: bool = True, settle: bool = False) -> Reading:
        """Close window ``name`` and return its reading.

        ``settle`` (for the last window of a run): a meter that reads its counters in the
        background waits for the sample after this edge instead of extrapolating to it.
        """
        if name not in self._windows:
            raise ValueError(f"window {name!r} is not open")
        if sync:
            self.synchronize()
        start_wall, start_mono, token = self._windows.pop(name)
        # Stamped before the counters are read, as the window's start is (time first, then the
        # read): the two edges' read latencies cancel, and a settling wait for the next
        # background sample is not counted as seconds of the window.
        end_mono = self.clock()
        self._settling = settle
        try:
            domains = self._end(name, token)
        finally:
            self._settling = False
        return Reading(
            start_time=start_wall,
            end_time=start_wall + (end_mono - start_mono),
            seconds=end_mono - start_mono,
            domains=tuple(domains),
            assumptions=self.assumptions,
        )

    def peek(self, name: str) -> Reading | None:
        """Energy of open window ``name`` so far, leaving it open (no device sync: queued work is
        not waited for); ``None`` where the backend cannot tell without closing the window."""
        if name not in self._windows:
            raise ValueError(f"window {name!r} is not open")
        start_wall, start_mono, token = self._windows[name]
        domains = self._peek(name, token)
        if domains is None:
            return None
        seconds = self.clock() - start_mono
        return Reading(start_wall, start_wall + seconds, seconds, tuple(domains), self.assumptions)

    def _peek(self, name: str, token: Any) -> list[DomainEnergy] | None:
        return None

    def is_open(self, name: str = DEFAULT_WINDOW) -> bool:
        return name in self._windows

    def discard_window(self, name: str) -> None:
        """Forget window ``name`` without reading it (after a failure); no-op if it is not open."""
        self._windows.pop(name, None)

    def synchronize(self) -> None:
        """Wait for queued device work (no-op for CPU meters)."""

    def busy(self) -> list[str]:
        """Signs that the measured devices are busy with other work right now (another process on
        the GPU, CPU load), for checking an idle baseline; empty when nothing is seen."""
        return []

    def close(self) -> None:
        """Release threads and handles."""

    @abstractmethod
    def _begin(self, name: str) -> Any: ...

    @abstractmethod
    def _end(self, name: str, token: Any) -> list[DomainEnergy]: ...

    def describe(self) -> str:
        chans = ", ".join(f"{c.domain}:{c.device} ({c.source})" for c in self.channels)
        return f"{self.name}: {chans}"


class CounterMeter(Meter):
    """A meter over cumulative counters: a window is the difference of two snapshots.

    Subclasses implement :meth:`read_counters`, returning cumulative joules per channel key
    (``None`` for a channel that failed to read). A failing channel makes the windows it touches
    incomplete, never zero. A subclass that sees a counter do something implausible (a reset, a
    jump no power could explain) calls :meth:`_fault`: every window open across it is incomplete.
    """

    #: How edges are read: ``"direct"`` (a counter read on the caller's thread) or ``"sampled"``.
    edge_reads = "direct"

    def __init__(
        self, sync_fn: Callable[[], None] | None = None, sample_interval_s: float | None = None
    ) -> None:
        super().__init__()
        self._sync_fn = sync_fn
        self._warned: set[str] = set()
        self._faults: dict[str, int] = {}
        self._sampler: CounterSampler | None = None
        self._sample_interval_s = sample_interval_s

    def start_sampling(self) -> None:
        """Read the counters on a background thread from now on (see :class:`CounterSampler`)."""
        if self._sampler is None and self._sample_interval_s:
            self._sampler = CounterSampler(
                self._safe_read, self._sample_interval_s, clock=self.clock, name=f"{self.name}-sampler"
            )
            self.edge_reads = "sampled"

    @property
    def assumptions(self) -> dict[str, Any]:
        if self._sampler is None:
            return {}
        return {
            f"{self.name}_edges": f"interpolated between background counter samples every "
            f"{self._sample_interval_s * 1000:g} ms (extrapolated from the last interval when read "
            "before the next sample)"
        }

    @abstractmethod
    def read_counters(self) -> dict[str, float | None]:
        """Cumulative joules per channel key (``f"{domain}:{device}"``)."""

    def synchronize(self) -> None:
        if self._sync_fn is not None:
            self._sync_fn()

    def _safe_read(self) -> dict[str, float | None]:
        try:
            return self.read_counters()
        except Exception as err:  # a backend failing mid-run must not stop training
            self._warn_once("all", f"{self.name}: reading failed ({err!r}); windows are marked incomplete")
            return {f"{c.domain}:{c.device}": None for c in self.channels}

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message)

    def close(self) -> None:
        if self._sampler is not None:
            self._sampler.close()
            self._sampler = None

    def _fault(self, key: str, message: str) -> None:
        """Channel ``key`` misbehaved: windows open across this moment are marked incomplete."""
        self._faults[key] = self._faults.get(key, 0) + 1
        self._warn_once(f"fault:{key}", f"{self.name}: {message}; windows across it are marked incomplete")

    def _begin(self, name: str) -> tuple[Any, dict[str, int]]:
        if self._sampler is not None:
            return self._sampler.edge(), dict(self._faults)
        return self._safe_read(), dict(self._faults)

    def _end(self, name: str, token: tuple[Any, dict[str, int]]) -> list[DomainEnergy]:
        first, faults_before = token
        if self._sampler is not None:
            end = self._sampler.edge()
            now = self._sampler.values(end, wait=self._settling)
            before = self._sampler.values(first, wait=self._settling)
        else:
            before, now = first, self._safe_read()
        return self._diff(before, now, faults_before)

    def _peek(self, name: str, token: tuple[Any, dict[str, int]]) -> list[DomainEnergy]:
        first, faults_before = token
        if self._sampler is not None:
            now = self._sampler.values(Edge(self.clock()))  # extrapolated, nothing queued
            before = self._sampler.values(first)
        else:
            before, now = first, self._safe_read()
        return self._diff(before, now, faults_before, warn=False)

    def _diff(
        self,
        before: dict[str, float | None],
        now: dict[str, float | None],
        faults_before: dict[str, int],
        warn: bool = True,
    ) -> list[DomainEnergy]:
        out = []
        for c in self.channels:
            key = f"{c.domain}:{c.device}"
            a, b = before.get(key), now.get(key)
            if a is None or b is None:
                if warn:
                    self._warn_once(key, f"{self.name}: {key} could not be read; its windows are incomplete")
                out.append(DomainEnergy(c.domain, c.device, None, c.source, complete=False))
            else:
                faulted = self._faults.get(key, 0) != faults_before.get(key, 0)
                out.append(DomainEnergy(c.domain, c.device, max(0.0, b - a), c.source, complete=not faulted))
        return out


class CompositeMeter(Meter):
    """Several meters read as one (a GPU meter and a CPU meter); their domains are kept apart."""

    name = "composite"

    def __init__(self, meters: Sequence[Meter]) -> None:
        super().__init__()
        if not meters:
            raise ValueError("CompositeMeter needs at least one meter")
        self.meters = list(meters)

    @property
    def channels(self) -> tuple[Channel, ...]:
        return tuple(c for m in self.meters for c in m.channels)

    @property
    def assumptions(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for m in self.meters:
            out.update(m.assumptions)
        return out

    def synchronize(self) -> None:
        for m in self.meters:
            m.synchronize()

    def discard_window(self, name: str) -> None:
        super().discard_window(name)
        for m in self.meters:
            m.discard_window(name)

    def busy(self) -> list[str]:
        return [note for m in self.meters for note in m.busy()]

    def _peek(self, name: str, token: Any) -> list[DomainEnergy] | None:
        readings = [m.peek(name) for m in self.meters]
        if any(r is None for r in readings):
            return None
        return list(merge_parallel([r for r in readings if r is not None]).domains)

    def _begin(self, name: str) -> None:
        try:
            for m in self.meters:
                m.begin_window(name, sync=False)
        except Exception:
            for m in self.meters:
                m.discard_window(name)
            raise

    def _end(self, name: str, token: Any) -> list[DomainEnergy]:
        try:
            readings = [m.end_window(name, sync=False, settle=self._settling) for m in self.meters]
        except Exception:
            for m in self.meters:
                m.discard_window(name)
            raise
        return list(merge_parallel(readings).domains)

    def close(self) -> None:
        for m in self.meters:
            m.close()

    def describe(self) -> str:
        return "; ".join(m.describe() for m in self.meters)
