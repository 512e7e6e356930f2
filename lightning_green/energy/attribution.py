"""Splitting a shared counter among the jobs that used it.

A RAPL package, its DRAM zone and a GPU count the energy of every process on them. When several
jobs share a node (Ray Tune's concurrent trials, a packed cluster node, two trials on one GPU),
each job reading the counter as its own would charge the same joules to all of them. Here each
job is charged its share of the device's busy time in the window, as Kepler and Scaphandre do:

* **CPU packages and DRAM** (``attributed:cpu-time-share``): the CPU time of the job (this
  process and its descendants, or its cgroup where the job is one: a SLURM job, a Kubernetes pod)
  over the node's busy CPU time from ``/proc/stat``. A job alone on a quiet node gets nearly the
  whole package; two jobs get parts that add up to at most the node's figure.
* **GPUs**: per-process utilisation where the driver reports it; see
  :mod:`lightning_green.energy.nvml`.

The job's figure is ``joules`` (what reports, budgets, stopping and tuning use); the device's
stays beside it as ``node_joules``, with the ``share`` and the method (``attribution``).

Example::

    >>> from lightning_green.energy.attribution import CpuTimeShare
    >>> split = CpuTimeShare()
    >>> before = split.snapshot()
    >>> _ = sum(i * i for i in range(10**6))  # this process is busy
    >>> 0.0 <= split.share(before, split.snapshot()).value <= 1.0
    True
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from lightning_green.energy.reading import DomainEnergy

#: ``EnergyMonitor(attribution=...)`` / ``make_meter(attribution=...)`` choices.
ATTRIBUTIONS = ("auto", "job", "device")
#: Node busy CPU seconds below which a window is too short for ``/proc/stat``'s 10 ms ticks: its
#: share is then the job's over the shortest recent span that is long enough and ends where the
#: window ends (``...(recent)``: from an earlier window's edge), or before there is one, the job's
#: share since the meter started (``...(run)``).
MIN_RESOLVED_BUSY_S = 0.2
#: Window edges remembered for the spans of short windows (a few seconds of epochs).
_EDGES = 256
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
#: cgroup paths that are a job of their own (the whole cgroup is the job, not just this process).
JOB_CGROUP = re.compile(r"(slurm|job_\d+|kubepods|\.scope$|docker|containerd|libpod)")


def check_attribution(value: object) -> str:
    """``value`` if it names an attribution mode; else ``ValueError`` listing the allowed ones."""
    if not isinstance(value, str) or value not in ATTRIBUTIONS:
        raise ValueError(f"attribution must be one of {', '.join(ATTRIBUTIONS)}; got {value!r}")
    return value


@dataclass(frozen=True)
class Share:
    """The job's part of a device over a window.

    Attributes:
        value: 0 to 1, or ``None`` when it cannot be known (the job's figure is then ``None``).
        method: ``attributed:<how>`` or ``not-attributable:<why>``.
    """

    value: float | None
    method: str


class ShareSource(Protocol):
    """Tells the job's share of one device between two snapshots (cheap to take at an edge)."""

    def snapshot(self) -> Any: ...

    def share(self, before: Any, after: Any) -> Share: ...


def node_busy_seconds(stat_path: str | os.PathLike[str] = "/proc/stat") -> float:
    """CPU seconds the node's cores spent busy since boot (user, nice, system, irq, softirq).

    Steal is left out: it is time a virtual CPU wanted to run and the hypervisor ran another guest,
    so no process here spent it (and on bare metal, where RAPL is, it is zero).
    """
    with open(stat_path) as f:
        fields = f.readline().split()
    # cpu user nice system idle iowait irq softirq steal guest guest_nice (guest is inside user)
    values = [int(v) for v in fields[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = values + [0] * (7 - len(values))
    return (user + nice + system + irq + softirq) / _CLK_TCK


def own_cgroup(proc_cgroup: str | os.PathLike[str] = "/proc/self/cgroup") -> str | None:
    """This process's cgroup v2 path (``/system.slice/slurmstepd.scope/job_42``), or ``None``."""
    try:
        for line in Path(proc_cgroup).read_text().splitlines():
            hierarchy, _, rest = line.split(":", 2)
            if hierarchy == "0":
                return rest
    except (OSError, ValueError):
        return None
    return None


def cgroup_cpu_seconds(path: str | os.PathLike[str]) -> float:
    """``usage_usec`` of a cgroup v2 ``cpu.stat``, in seconds."""
    for line in Path(path).read_text().splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec":
            return int(value) / 1e6
    raise OSError(f"no usage_usec in {path}")


def job_cpu_clock(
    scope: str = "auto",
    include_children: bool = True,
    cgroup_root: str | os.PathLike[str] = "/sys/fs/cgroup",
    proc_cgroup: str | os.PathLike[str] = "/proc/self/cgroup",
) -> tuple[Callable[[], float], str]:
    """A function returning the job's CPU seconds so far, and what it counts.

    ``scope="process"``: this process (and, with ``include_children``, its descendants);
    ``"cgroup"``: this process's cgroup; ``"auto"``: the cgroup where it looks like a job of its
    own (SLURM, Kubernetes, a container, a systemd scope), else the process.
    """
    from lightning_green.energy.estimate import _process_cpu_seconds

    if scope not in ("auto", "process", "cgroup"):
        raise ValueError(f"job scope must be one of auto, process, cgroup; got {scope!r}")
    if scope != "process":
        group = own_cgroup(proc_cgroup)
        stat = Path(cgroup_root) / (group or "/").lstrip("/") / "cpu.stat"
        usable = group not in (None, "/") and stat.is_file()
        if usable and (scope == "cgroup" or JOB_CGROUP.search(group or "")):
            try:
                cgroup_cpu_seconds(stat)
            except (OSError, ValueError):
                usable = False
            if usable:
                return (lambda: cgroup_cpu_seconds(stat)), f"cgroup {group}"
        if scope == "cgroup":
            raise OSError(f"no cgroup v2 cpu.stat for this process (cgroup {group!r} under {cgroup_root})")
    what = "this process" + (" and its descendants" if include_children else "")
    return (lambda: _process_cpu_seconds(include_children)), what


class CpuTimeShare:
    """The job's share of the node's CPU packages and DRAM: its CPU time over the node's busy CPU time.

    The node's *background* (the busy CPU of a quiet node: kernel threads, agents, a shell) is
    learnt from the idle baseline (:meth:`calibrate`) and left out of the busy time the jobs
    share: its power is part of the idle watts already, and a job alone on a node is charged the
    whole package, not the package less what the node's own daemons happened to use. A background
    above :func:`max_background_cores` is another job's work, not the node's: it is not learnt.

    Args:
        job_seconds: The job's CPU seconds so far (default: :func:`job_cpu_clock`).
        node_seconds: The node's busy CPU seconds so far (default: ``/proc/stat``).
        job: What ``job_seconds`` counts, for the records.
        wall: Seconds of a monotonic clock (for the background's CPU seconds in a window).

    Raises:
        OSError: If ``/proc/stat`` (or the given clocks) cannot be read.
    """

    def __init__(
        self,
        job_seconds: Callable[[], float] | None = None,
        node_seconds: Callable[[], float] = node_busy_seconds,
        job: str | None = None,
        wall: Callable[[], float] = time.monotonic,
    ) -> None:
        if job_seconds is None:
            job_seconds, job = job_cpu_clock()
        self._job, self._node, self._wall = job_seconds, node_seconds, wall
        self.job = job or "the job"
        #: Busy CPU cores of the quiet node, left out of the busy time jobs share (0: none known).
        self.background_cores = 0.0
        self.background_note = "not measured (no idle baseline): the jobs share all the node's busy time"
        self._start = self.snapshot()  # fails here, not mid-run, where /proc/stat is unreadable
        self._edges: deque[Sequence[float]] = deque(maxlen=_EDGES)  # window ends, oldest first
        self._lock = threading.Lock()  # shares are asked on the training thread and the sampler's

    def snapshot(self) -> tuple[float, float, float]:
        return self._job(), self._node(), self._wall()

    def describe(self) -> str:
        return (
            f"CPU time of {self.job} over the node's busy CPU time (/proc/stat) less the node's "
            f"background, {self.background_note}"
        )

    def calibrate(self, before: Sequence[float], after: Sequence[float]) -> str:
        """Learn the node's background from an idle window of this job (its idle baseline).

        Returns what was learnt, for the records; a rate above :func:`max_background_cores` is
        not learnt (another job was running: it keeps its own share).
        """
        seconds = after[2] - before[2]
        if seconds <= 0:
            return self.background_note
        cores = max(0.0, (after[1] - before[1]) - (after[0] - before[0])) / seconds
        limit = max_background_cores()
        if cores > limit:
            self.background_note = (
                f"not learnt: {cores:.2f} busy cores of other processes during the idle baseline "
                f"(above {limit:.2f}: another job's work, which keeps its share)"
            )
        else:
            self.background_cores = cores
            self.background_note = f"{cores:.3f} cores, measured over the {seconds:.1f} s idle baseline"
        return self.background_note

    def share(self, before: Sequence[float], after: Sequence[float]) -> Share:
        method = "attributed:cpu-time-share"
        with self._lock:
            edges = list(self._edges)
            self._edges.append(after)
        if after[1] - before[1] >= MIN_RESOLVED_BUSY_S:
            return Share(self._over(before, after), method)
        # Too short for /proc/stat's ticks: over the latest span long enough that ends with this
        # window (not the share since the start, which holds the wait before training began, nor
        # an earlier window's alone, which is stale by now).
        for edge in reversed(edges):
            if _wall(edge) <= _wall(after) and after[1] - edge[1] >= MIN_RESOLVED_BUSY_S:
                return Share(self._over(edge, after), method + "(recent)")
        return Share(self._over(self._start, after), method + "(run)")

    def _over(self, before: Sequence[float], after: Sequence[float]) -> float:
        return self._of(after[0] - before[0], after[1] - before[1], _wall(after) - _wall(before))

    def _of(self, job: float, node: float, seconds: float) -> float:
        # The others' busy time, less the node's background over the window (never below zero).
        others = max(0.0, node - job - self.background_cores * max(0.0, seconds))
        if job + others <= 0:
            return 1.0  # nothing was busy: nobody else used the package either
        return min(1.0, max(0.0, job / (job + others)))


def _wall(snapshot: Sequence[float]) -> float:
    return snapshot[2] if len(snapshot) > 2 else 0.0


def max_background_cores() -> float:
    """Busy cores of other processes in an idle baseline still taken as the node's own background:
    a quarter of a core, or 2% of the node's cores on a large node."""
    return max(0.25, 0.02 * (os.cpu_count() or 1))


@dataclass(frozen=True)
class Split:
    """Which channels one share source splits: ``domains`` of ``sources`` on ``devices`` (``None``: any)."""

    source: ShareSource
    domains: tuple[str, ...]
    sources: tuple[str, ...] = ()
    devices: tuple[str, ...] | None = None

    def covers(self, d: DomainEnergy) -> bool:
        return (
            d.domain in self.domains
            and (not self.sources or d.source in self.sources)
            and (self.devices is None or d.device in self.devices)
        )


class Attribution:
    """Applies splits to a meter's domains: snapshots at window edges, shares at the end."""

    def __init__(self, splits: Sequence[Split], notes: Sequence[str] = ()) -> None:
        self.splits = list(splits)
        self.notes = list(notes)

    def snapshot(self) -> list[Any]:
        return [s.source.snapshot() for s in self.splits]

    def calibrate(self, before: list[Any], after: list[Any]) -> list[str]:
        """Let each share source that learns from an idle window (the node's background CPU)
        learn from this one; returns what each learnt."""
        out = []
        for split, b, a in zip(self.splits, before, after, strict=True):
            calibrate = getattr(split.source, "calibrate", None)
            if calibrate is not None:
                out.append(f"{'+'.join(split.domains)} background: {calibrate(b, a)}")
        return out

    def apply(
        self, domains: Sequence[DomainEnergy], before: list[Any], after: list[Any]
    ) -> list[DomainEnergy]:
        shares = [s.source.share(b, a) for s, b, a in zip(self.splits, before, after, strict=True)]
        out = []
        for d in domains:
            for split, share in zip(self.splits, shares, strict=True):
                if split.covers(d):
                    d = attribute(d, share)
                    break
            out.append(d)
        return out

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for s in self.splits:
            key = "+".join(s.domains) + (f" {','.join(s.devices)}" if s.devices else "")
            describe = getattr(s.source, "describe", None)
            out[key] = describe() if describe is not None else type(s.source).__name__
        if self.notes:
            out["notes"] = list(self.notes)
        return out


def attribute(d: DomainEnergy, share: Share) -> DomainEnergy:
    """Domain ``d`` with the job's part of it: ``joules`` x share, the device's figure kept."""
    if d.joules is None:
        return replace(d, node_joules=None, share=share.value, attribution=share.method)
    job = None if share.value is None else d.joules * share.value
    return replace(
        d,
        joules=job,
        node_joules=d.joules,
        share=share.value,
        attribution=share.method,
        dynamic_joules=None,  # recomputed from the device's figure by apply_baseline
    )
