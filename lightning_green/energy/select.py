"""Choosing a meter: ``backend="auto"`` takes the best that works and says why."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from lightning_green.energy.attribution import (
    Attribution,
    CpuTimeShare,
    Split,
    check_attribution,
    job_cpu_clock,
)
from lightning_green.energy.base import CompositeMeter, Meter, MeterUnavailableError
from lightning_green.energy.estimate import DEFAULT_WATTS_PER_CORE, EstimateMeter, ProcessTree
from lightning_green.energy.nvml import NvmlMeter, driver_lists_a_gpu
from lightning_green.energy.rapl import DEFAULT_ROOT, RaplMeter, discover_zones
from lightning_green.energy.zeus_backend import ZeusMeter

log = logging.getLogger("lightning_green.energy")

BACKENDS = ("auto", "zeus", "nvml", "rapl", "estimate")
#: Period of the background counter reads (GPU energy counters update every 10-100 ms).
DEFAULT_SAMPLE_INTERVAL_S = 0.05


def check_backend(backend: object) -> str:
    """``backend`` if it names a meter backend; else ``ValueError`` listing the allowed ones."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    return backend


class SelectedMeter(CompositeMeter):
    """The meter :func:`make_meter` built, with the reasons for its choice in :attr:`notes`.

    With an :class:`~lightning_green.energy.attribution.Attribution`, shared counters (RAPL
    packages, a GPU other processes use) are split: each domain's ``joules`` is this job's part,
    ``node_joules`` the device's.
    """

    def __init__(
        self,
        meters: Sequence[Meter],
        backend: str,
        notes: Sequence[str],
        attribution: Attribution | None = None,
        attribution_mode: str = "device",
    ) -> None:
        super().__init__(meters)
        self.name = backend
        self.notes = list(notes)
        self.attribution = attribution
        self.attribution_mode = attribution_mode
        #: A process tree this meter started for itself (closed with it).
        self.tree: ProcessTree | None = None

    def close(self) -> None:
        super().close()
        if self.tree is not None:
            self.tree.close()

    @property
    def assumptions(self) -> dict:
        out = dict(super().assumptions)
        if self.notes:
            out["meter_notes"] = list(self.notes)
        if self.attribution is not None:
            out["attribution"] = {"mode": self.attribution_mode, **self.attribution.describe()}
        return out

    def _begin(self, name: str) -> Any:
        super()._begin(name)
        return self.attribution.snapshot() if self.attribution is not None else None

    def _end(self, name: str, token: Any) -> list:
        domains = super()._end(name, token)
        if self.attribution is None:
            return domains
        return self.attribution.apply(domains, token, self.attribution.snapshot())

    def _peek(self, name: str, token: Any) -> list | None:
        domains = super()._peek(name, token)
        if domains is None or self.attribution is None:
            return domains
        return self.attribution.apply(domains, token, self.attribution.snapshot())

    def describe(self) -> str:
        chosen = super().describe()
        return f"backend={self.name}: {chosen}" + (f" ({'; '.join(self.notes)})" if self.notes else "")


def _visible_gpus() -> list[int]:
    """CUDA's devices in this process. Where no NVIDIA driver lists a GPU there is none, and torch
    (1.5 s to import) is not imported to say so: a tuning study's driver measures the node
    without it."""
    if "torch" not in sys.modules and not driver_lists_a_gpu():
        return []
    try:
        import torch
    except ImportError:  # pragma: no cover
        return []
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


def make_meter(
    backend: str = "auto",
    gpu_indices: Sequence[int] | None = None,
    measure_node: bool = True,
    watts_per_core: float = DEFAULT_WATTS_PER_CORE,
    rapl_root: str | os.PathLike[str] = DEFAULT_ROOT,
    include_children: bool = True,
    sync_reads: bool = False,
    sample_interval_s: float = DEFAULT_SAMPLE_INTERVAL_S,
    track_descendants: bool | ProcessTree = False,
    attribution: str = "device",
    gpu_share: Any = None,
) -> SelectedMeter:
    """Build a meter.

    Args:
        backend: ``"auto"`` (best that works: GPU through NVML, read off the caller's thread; CPU
            through RAPL, else the CPU-time estimate), or one of ``"zeus"``, ``"nvml"``,
            ``"rapl"``, ``"estimate"``. ``"zeus"`` reads the counters at each edge, on the
            caller's thread (about 4 ms per GPU counter read on an H200).
        gpu_indices: CUDA indices this process should measure (``None``: every visible GPU; ``[]``:
            none). Under DDP pass the rank's own device.
        measure_node: Whether this process reads node-wide counters (RAPL packages, DRAM). Under
            DDP only one process per node should.
        watts_per_core: For the estimate backend.
        rapl_root: The powercap tree to read.
        include_children: For the estimate backend: count child processes' CPU time.
        sync_reads: Read GPU and RAPL counters at each window edge on the caller's thread instead
            of interpolating samples a background thread takes every ``sample_interval_s``.
        sample_interval_s: Period of the background counter reads.
        track_descendants: Every descendant process, remembered after it exits (a whole Ray
            study), or a :class:`~lightning_green.energy.estimate.ProcessTree` to count (a Ray
            node's processes): what the estimate counts, and the job a split counter is shared by.
        attribution: How node-wide counters are charged (see
            :mod:`lightning_green.energy.attribution`): ``"device"`` (the whole device, for a
            machine this job owns whole), ``"job"`` (this job's share of the device's busy time;
            an error where it cannot be told), ``"auto"`` (the job's share where it can be told,
            else the whole device, said in :attr:`SelectedMeter.notes`).
        gpu_share: Builds GPU splits for an :class:`~lightning_green.energy.NvmlMeter`:
            ``gpu_share(meter, required)`` returns a list of splits (default: the meter's own
            :meth:`~lightning_green.energy.NvmlMeter.shares`).

    Raises:
        ValueError: If ``backend`` is unknown.
        MeterUnavailableError: If an explicitly named backend cannot work here.
    """
    check_backend(backend)
    check_attribution(attribution)
    tree = ProcessTree() if track_descendants is True else track_descendants or None
    gpus = _visible_gpus() if gpu_indices is None else list(gpu_indices)
    meters: list[Meter] = []
    notes: list[str] = []

    def estimate() -> EstimateMeter:
        return EstimateMeter(
            watts_per_core=watts_per_core,
            include_children=include_children,
            track_descendants=tree or False,
        )

    sampling = None if sync_reads else sample_interval_s

    def rapl() -> RaplMeter:
        return RaplMeter(rapl_root, sample_interval_s=sampling)

    def nvml() -> NvmlMeter:
        return NvmlMeter(gpus, sync_reads=sync_reads, sample_interval_s=sample_interval_s)

    if backend == "estimate":
        meters.append(estimate())
    elif backend == "rapl":
        if measure_node:
            meters.append(rapl())
        else:
            discover_zones(rapl_root)  # fail loudly here too if RAPL cannot work
            notes.append("cpu: RAPL is read by local rank 0 of this node")
    elif backend == "nvml":
        meters.append(nvml())
    elif backend == "zeus":
        meters.append(ZeusMeter(gpu_indices=gpus, cpu_indices=None if measure_node else []))
    else:
        if gpus:
            # NVML directly rather than through Zeus: the same counter, but read off the training
            # thread (Zeus reads it at every edge, about 4 ms a read on an H200).
            try:
                meters.append(nvml())
            except MeterUnavailableError as nerr:
                notes.append(f"gpu: NOT MEASURED: NVML unavailable ({nerr})")
        try:
            if measure_node:
                meters.append(rapl())
            else:
                discover_zones(rapl_root)
                notes.append("cpu: RAPL is read by local rank 0 of this node")
        except MeterUnavailableError as rerr:
            meters.append(estimate())
            notes.append(f"cpu: estimated, no RAPL counter ({rerr})")
    if not meters:
        # Only a non-zero local rank with node-wide RAPL gets here: it measures nothing itself.
        meters.append(_NullMeter())
    split = None
    if attribution != "device":
        split = _attribution(meters, attribution == "job", notes, tree)
    meter = SelectedMeter(meters, backend, notes, split, attribution)
    if track_descendants is True:
        meter.tree = tree
    return meter


#: Sources of node-wide CPU / DRAM counters (the estimate is per process: nothing to split).
NODE_CPU_SOURCES = ("measured:rapl", "measured:zeus-rapl")


def _attribution(
    meters: Sequence[Meter], required: bool, notes: list[str], tree: ProcessTree | None = None
) -> Attribution | None:
    """The splits for the meters' shared counters; notes say what could not be split (``auto``)."""
    splits: list[Split] = []
    channels = [c for m in meters for c in m.channels]
    if any(c.domain in ("cpu", "dram") and c.source in NODE_CPU_SOURCES for c in channels):
        try:
            # The job's descendants (data-loader workers, DDP ranks a launcher started as children)
            # are part of it, whatever the estimate counts.
            clock, job = (tree.seconds, tree.what) if tree else job_cpu_clock(include_children=True)
            splits.append(Split(CpuTimeShare(clock, job=job), ("cpu", "dram"), NODE_CPU_SOURCES))
        except OSError as err:
            if required:
                raise MeterUnavailableError(
                    f"attribution=job: the CPU counters cannot be split ({err})"
                ) from err
            notes.append(f"cpu: the whole package is charged to this job, its share is unknown ({err})")
    for m in meters:
        if tree is not None and hasattr(m, "job_pids"):
            m.job_pids = tree.pids  # the tree is the job on the GPU too
        gpu_splits = getattr(m, "shares", None)
        if gpu_splits is not None:
            splits += gpu_splits(required=required, notes=notes)
    return Attribution(splits) if splits else None


class _NullMeter(Meter):
    """Measures nothing: for a DDP rank whose node counters are read by another rank."""

    name = "none"

    @property
    def channels(self) -> tuple:
        return ()

    def _begin(self, name: str) -> None:
        return None

    def _end(self, name: str, token: object) -> list:
        return []

    def _peek(self, name: str, token: object) -> list:
        return []
