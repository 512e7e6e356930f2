"""The meter API: open a window, close it, get a :class:`~lightning_green.energy.reading.Reading`.

Meters nest: several named windows can be open at once (an epoch and a profiled step inside it).
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from lightning_green.energy.reading import DomainEnergy, Reading, merge_parallel

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

        meter = make_meter("estimate")
        meter.start()
        sum(i * i for i in range(10**6))
        reading = meter.stop()
        print(reading.joules, reading.sources)
    """

    name: str = "meter"

    def __init__(self) -> None:
        self._windows: dict[str, tuple[float, float, Any]] = {}

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
        self._windows[name] = (time.time(), time.monotonic(), self._begin(name))

    def end_window(self, name: str, sync: bool = True) -> Reading:
        """Close window ``name`` and return its reading."""
        if name not in self._windows:
            raise ValueError(f"window {name!r} is not open")
        if sync:
            self.synchronize()
        start_wall, start_mono, token = self._windows.pop(name)
        domains = self._end(name, token)
        end_mono = time.monotonic()
        return Reading(
            start_time=start_wall,
            end_time=start_wall + (end_mono - start_mono),
            seconds=end_mono - start_mono,
            domains=tuple(domains),
            assumptions=self.assumptions,
        )

    def is_open(self, name: str = DEFAULT_WINDOW) -> bool:
        return name in self._windows

    def synchronize(self) -> None:
        """Wait for queued device work (no-op for CPU meters)."""

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
    incomplete, never zero.
    """

    def __init__(self, sync_fn: Callable[[], None] | None = None) -> None:
        super().__init__()
        self._sync_fn = sync_fn
        self._warned: set[str] = set()

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

    def _begin(self, name: str) -> dict[str, float | None]:
        return self._safe_read()

    def _end(self, name: str, token: dict[str, float | None]) -> list[DomainEnergy]:
        now = self._safe_read()
        out = []
        for c in self.channels:
            key = f"{c.domain}:{c.device}"
            a, b = token.get(key), now.get(key)
            if a is None or b is None:
                self._warn_once(key, f"{self.name}: {key} could not be read; its windows are incomplete")
                out.append(DomainEnergy(c.domain, c.device, None, c.source, complete=False))
            else:
                out.append(DomainEnergy(c.domain, c.device, max(0.0, b - a), c.source))
        return out


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

    def _begin(self, name: str) -> None:
        for m in self.meters:
            m.begin_window(name, sync=False)

    def _end(self, name: str, token: Any) -> list[DomainEnergy]:
        readings = [m.end_window(name, sync=False) for m in self.meters]
        return list(merge_parallel(readings).domains)

    def close(self) -> None:
        for m in self.meters:
            m.close()

    def describe(self) -> str:
        return "; ".join(m.describe() for m in self.meters)
