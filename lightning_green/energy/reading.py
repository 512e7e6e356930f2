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
            :mod:`lightning_green.energy.baseline`. For a split counter, this job's share of the
            device's dynamic energy.
        node_joules: The whole device's energy over the window when its counter is shared and
            ``joules`` is this job's part of it (see :mod:`lightning_green.energy.attribution`);
            ``None`` when ``joules`` is the device's own figure (not split).
        share: The job's share of the device in the window (``joules / node_joules``), 0 to 1.
        attribution: How a shared counter was split (``attributed:cpu-time-share``,
            ``attributed:gpu-process-utilisation``, ...), or why it could not be
            (``not-attributable:mig``: ``joules`` is then ``None``); ``None`` when not split.
    """

    domain: str
    device: str
    joules: float | None
    source: str
    complete: bool = True
    dynamic_joules: float | None = None
    node_joules: float | None = None
    share: float | None = None
    attribution: str | None = None

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
        if self.attribution is not None:
            out["node_joules"] = self.node_joules
            out["share"] = self.share
            out["attribution"] = self.attribution
        return out

    @property
    def device_joules(self) -> float | None:
        """The whole device's figure: ``node_joules`` where the counter was split, else ``joules``."""
        return self.node_joules if self.attribution is not None else self.joules

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DomainEnergy:
        return cls(
            domain=data["domain"],
            device=str(data["device"]),
            joules=data["joules"],
            source=data["source"],
            complete=bool(data.get("complete", True)),
            dynamic_joules=data.get("dynamic_joules"),
            node_joules=data.get("node_joules"),
            share=data.get("share"),
            attribution=data.get("attribution"),
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

    @property
    def node_joules(self) -> float:
        """The devices' whole figures summed: what the counters read, before any split among jobs
        (equal to :attr:`joules` where nothing was split)."""
        return float(sum(d.device_joules for d in self.domains if d.device_joules is not None))

    @property
    def attributions(self) -> dict[str, str]:
        """How each split domain was attributed, e.g. ``{"cpu": "attributed:cpu-time-share"}``."""
        out: dict[str, str] = {}
        for d in self.domains:
            if d.attribution is not None:
                prev = out.get(d.domain)
                out[d.domain] = d.attribution if prev in (None, d.attribution) else f"{prev}+{d.attribution}"
        return out

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
            node, share, how = _merge_attribution(prev, d)
            acc[d.key] = DomainEnergy(
                domain=d.domain,
                device=d.device,
                joules=joules,
                source=prev.source if prev.source == d.source else f"{prev.source}+{d.source}",
                complete=prev.complete and d.complete and prev.joules is not None and d.joules is not None,
                dynamic_joules=dynamic,
                node_joules=node,
                share=share,
                attribution=how,
            )
    return tuple(acc.values())


def _merge_attribution(a: DomainEnergy, b: DomainEnergy) -> tuple[float | None, float | None, str | None]:
    """(node joules, share, attribution) of two segments of one domain added together."""
    if a.attribution is None and b.attribution is None:
        return None, None, None
    node = (a.device_joules or 0.0) + (b.device_joules or 0.0)
    how = a.attribution if a.attribution == b.attribution or b.attribution is None else b.attribution
    if a.attribution is not None and b.attribution is not None and a.attribution != b.attribution:
        how = f"{a.attribution}+{b.attribution}"
    if a.joules is None and b.joules is None:
        return node, None, how
    job = (a.joules or 0.0) + (b.joules or 0.0)
    return node, (job / node if node > 0 else None), how
