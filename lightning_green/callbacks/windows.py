"""The windows EnergyMonitor has open: a train epoch paused around its validation, a test run.

Segments of one window are merged when it closes, ranks are gathered under DDP, and a window
whose meter failed becomes an explicit reading with no figure, never a silent zero.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

import torch

from lightning_green.energy import Meter, Reading
from lightning_green.energy.baseline import IdleBaseline, apply_baseline
from lightning_green.energy.reading import DomainEnergy, merge_parallel, merge_readings


class Windows:
    """Open windows by stage, over one meter.

    Args:
        meter: What reads the energy.
        on_failure: Called with the stage and the error when the meter fails (to warn once).
    """

    def __init__(self, meter: Meter, on_failure: Callable[[str, Exception], None]) -> None:
        self.meter = meter
        self._on_failure = on_failure
        #: stage -> finished segments (a train window pauses around validation).
        self.segments: dict[str, list[Reading]] = {}
        self._failed: set[str] = set()

    def begin(self, stage: str) -> None:
        self.segments.setdefault(stage, [])
        try:
            self.meter.begin_window(stage)
        except Exception as err:  # a failing meter never ends training: the window is recorded as failed
            self._failed_in(stage, err)

    def pause(self, stage: str) -> None:
        reading = self._end_segment(stage)
        if reading is not None:
            self.segments[stage].append(reading)

    def is_open(self, stage: str) -> bool:
        return self.meter.is_open(stage)

    def finish(
        self, stage: str, baseline: IdleBaseline | None, world_size: int, settle: bool = False
    ) -> Reading | None:
        """Close window ``stage``: its segments merged, the baseline applied, the ranks gathered."""
        if stage not in self.segments:
            return None
        segments = self.segments.pop(stage)
        last = self._end_segment(stage, settle=settle)
        if last is not None:
            segments.append(last)
        failed = stage in self._failed
        self._failed.discard(stage)
        if failed or not segments:
            # No usable reading: an explicit incomplete window with no figure (never a silent zero).
            now = time.time()
            start = segments[0].start_time if segments else now
            domains = tuple(
                DomainEnergy(c.domain, c.device, None, c.source, complete=False) for c in self.meter.channels
            )
            domains = domains or (DomainEnergy("unknown", "-", None, "failed", False),)
            segments = [*segments, Reading(start, now, 0.0, domains)]
        local = merge_readings(segments)
        if baseline is not None:
            local = apply_baseline(local, baseline)
        return gather_ranks(local, world_size)

    def paused(self, stage: str) -> list[Reading]:
        return list(self.segments.get(stage, ()))

    def open_j(self, stage: str) -> float:
        """Energy of the open segment of window ``stage`` so far (0 when closed or unreadable)."""
        if not self.meter.is_open(stage):
            return 0.0
        try:
            r = self.meter.peek(stage)
        except Exception:
            return 0.0
        return r.joules if r is not None else 0.0

    def pending_j(self) -> float:
        """Energy of every window not closed yet: finished segments and open ones, in joules."""
        done = sum(r.joules for segs in self.segments.values() for r in segs)
        return done + sum(self.open_j(stage) for stage in list(self.segments))

    def _end_segment(self, stage: str, settle: bool = False) -> Reading | None:
        if not self.meter.is_open(stage):
            return None
        try:
            return self.meter.end_window(stage, settle=settle)
        except Exception as err:
            self._failed_in(stage, err)
            return None

    def _failed_in(self, stage: str, err: Exception) -> None:
        self._failed.add(stage)
        self._on_failure(stage, err)
        self.meter.discard_window(stage)  # leave no half-open window behind


#: Assumptions that name devices by their channel label (``{"0": "GPU-..."}``): under DDP each
#: rank's entries are kept, under the rank-prefixed label its domains carry (``"rank1/0"``), so a
#: record names every rank's GPU and not only the last rank's.
DEVICE_KEYED = ("gpu_uuids", "gpu_mig")


def gather_ranks(local: Reading, world_size: int) -> Reading:
    """Every rank's reading of one window, merged (rank zero's view; ranks' devices prefixed).

    Device identity is kept per rank: the devices of rank ``r`` become ``rank{r}/<device>``, in the
    domains and in the device-keyed assumptions (:data:`DEVICE_KEYED`: each GPU's UUID, a MIG
    instance's parent), which are the union over the ranks.
    """
    if world_size <= 1 or not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return local
    gathered: list[Reading | None] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, local)
    per_rank = []
    for rank, r in enumerate(gathered):
        assert r is not None
        per_rank.append(_on_rank(r, rank))
    merged = merge_parallel(per_rank)
    assumptions = dict(merged.assumptions)
    for key in DEVICE_KEYED:
        parts = [r.assumptions.get(key) for r in per_rank]
        union = {dev: v for part in parts if isinstance(part, dict) for dev, v in part.items()}
        if union:
            assumptions[key] = union
    return replace(merged, assumptions=assumptions)


def _on_rank(reading: Reading, rank: int) -> Reading:
    """``reading`` with its devices named as rank ``rank``'s (``"rank1/0"``)."""
    prefix = f"rank{rank}/"
    domains = tuple(replace(d, device=prefix + d.device) for d in reading.domains)
    assumptions = dict(reading.assumptions)
    for key in DEVICE_KEYED:
        value = assumptions.get(key)
        if isinstance(value, dict):
            assumptions[key] = {prefix + str(dev): v for dev, v in value.items()}
    return Reading(reading.start_time, reading.end_time, reading.seconds, domains, assumptions)
