"""Typed results of an energy window.

A :class:`Reading` is what every meter returns: seconds, and joules per domain and device, each
labelled with its source (``measured:nvml``, ``measured:rapl``, ``estimated:cpu-time``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

#: Domains a meter can report.
DOMAINS = ("gpu", "cpu", "dram")


@dataclass(frozen=True)
class DomainEnergy:
    """Energy of one domain and device over a window.

    Attributes:
        domain: ``"gpu"``, ``"cpu"`` (a CPU package, or the process's CPU share for estimates) or ``"dram"``.
        device: Which device: a GPU index, a RAPL package index, ``"process"`` for estimates.
            Under DDP the callback prefixes the rank/node (``"rank1/gpu0"``).
        joules: Energy in joules, or ``None`` when the reading failed (never a silent zero).
        source: ``measured:<how>`` or ``estimated:<model>``.
        complete: ``False`` when the counter failed during the window; ``joules`` is then ``None``
            or covers only part of the window.
        dynamic_joules: Energy above the device's idle baseline (``joules`` minus idle power x
            seconds, at least 0); ``None`` when no baseline applies. See
            :mod:`lightning_green.energy.baseline`.
    """

    domain: str
    device: str
    joules: float | None
    source: str
    complete: bool = True
    dynamic_joules: float | None = None

    @property
    def key(self) -> str:
        return f"{self.domain}:{self.device}"

    def to_dict(self) -> dict[str, Any]:
        out = {
            "domain": self.domain,
            "device": self.device,
            "joules": self.joules,
            "source": self.source,
            "complete": self.complete,
        }
        if self.dynamic_joules is not None:
            out["dynamic_joules"] = self.dynamic_joules
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DomainEnergy:
        return cls(
            domain=data["domain"],
            device=str(data["device"]),
            joules=data["joules"],
            source=data["source"],
            complete=bool(data.get("complete", True)),
            dynamic_joules=data.get("dynamic_joules"),
        )


@dataclass(frozen=True)
class Reading:
    """The result of one energy window.

    Attributes:
        start_time: Unix time the window opened, in seconds.
        end_time: Unix time the window closed, in seconds.
        seconds: Wall-clock length of the window (monotonic clock), in seconds.
        domains: Energy per domain and device.
        assumptions: What an estimate assumed (model, watts per core, ...); empty for measurements.
    """

    start_time: float
    end_time: float
    seconds: float
    domains: tuple[DomainEnergy, ...]
    assumptions: dict[str, Any] = field(default_factory=dict)

    @property
    def joules(self) -> float:
        """Sum of every domain that was read (failed domains contribute nothing; see ``complete``)."""
        return float(sum(d.joules for d in self.domains if d.joules is not None))

    @property
    def dynamic_joules(self) -> float | None:
        """Energy above the idle baseline, summed over domains read; ``None`` when no baseline applies."""
        read = [d for d in self.domains if d.joules is not None]
        if not read or any(d.dynamic_joules is None for d in read):
            return None
        return float(sum(d.dynamic_joules for d in read))  # type: ignore[misc]

    @property
    def complete(self) -> bool:
        """``True`` when every domain was read for the whole window."""
        return bool(self.domains) and all(d.complete and d.joules is not None for d in self.domains)

    @property
    def sources(self) -> dict[str, str]:
        """Source label per domain, e.g. ``{"gpu": "measured:nvml", "cpu": "estimated:cpu-time"}``."""
        out: dict[str, str] = {}
        for d in self.domains:
            prev = out.get(d.domain)
            out[d.domain] = d.source if prev in (None, d.source) else f"{prev}+{d.source}"
        return out

    @property
    def watts(self) -> float:
        """Average power over the window, in watts (0 for an empty window)."""
        return self.joules / self.seconds if self.seconds > 0 else 0.0

    def joules_by_domain(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for d in self.domains:
            if d.joules is not None:
                out[d.domain] = out.get(d.domain, 0.0) + d.joules
        return out


def merge_readings(readings: Iterable[Reading]) -> Reading:
    """Add windows together: consecutive segments of one window, or the ranks of one DDP window.

    Domains with the same (domain, device) are summed; seconds are summed, so merge the segments of
    one window (train epoch around its validation), not parallel ranks, when time matters. For ranks,
    use :func:`merge_parallel`.
    """
    readings = list(readings)
    if not readings:
        raise ValueError("merge_readings needs at least one reading")
    merged = _merge_domains(readings)
    assumptions: dict[str, Any] = {}
    for r in readings:
        assumptions.update(r.assumptions)
    return Reading(
        start_time=min(r.start_time for r in readings),
        end_time=max(r.end_time for r in readings),
        seconds=sum(r.seconds for r in readings),
        domains=merged,
        assumptions=assumptions,
    )


def merge_parallel(readings: Iterable[Reading]) -> Reading:
    """Combine readings taken at the same time on different ranks: joules add, time does not."""
    readings = list(readings)
    if not readings:
        raise ValueError("merge_parallel needs at least one reading")
    assumptions: dict[str, Any] = {}
    for r in readings:
        assumptions.update(r.assumptions)
    return Reading(
        start_time=min(r.start_time for r in readings),
        end_time=max(r.end_time for r in readings),
        seconds=max(r.seconds for r in readings),
        domains=_merge_domains(readings),
        assumptions=assumptions,
    )


def _merge_domains(readings: list[Reading]) -> tuple[DomainEnergy, ...]:
    acc: dict[str, DomainEnergy] = {}
    for r in readings:
        for d in r.domains:
            prev = acc.get(d.key)
            if prev is None:
                acc[d.key] = d
                continue
            joules = (
                None if prev.joules is None and d.joules is None else (prev.joules or 0.0) + (d.joules or 0.0)
            )
            dynamic = (
                None
                if prev.dynamic_joules is None or d.dynamic_joules is None
                else prev.dynamic_joules + d.dynamic_joules
            )
            acc[d.key] = DomainEnergy(
                domain=d.domain,
                device=d.device,
                joules=joules,
                source=prev.source if prev.source == d.source else f"{prev.source}+{d.source}",
                complete=prev.complete and d.complete and prev.joules is not None and d.joules is not None,
                dynamic_joules=dynamic,
            )
    return tuple(acc.values())
