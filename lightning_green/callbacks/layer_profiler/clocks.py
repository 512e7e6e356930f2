"""Which clock times the modules, and how busy the machine was while they ran.

Time what the meter measures: CUDA events where the energy is a GPU's, the wall clock for any
other measured counter (``"wall"``), and CPU time where the energy is CPU time (the
``estimated:cpu-time`` estimate). On a busy machine a wall-clock interval includes time the process
waited for a CPU, which the estimate never charged, so wall-clock shares move joules between
modules and "unattributed".

Of the CPU clocks, ``"process-cpu"`` (``CLOCK_PROCESS_CPUTIME_ID``: every thread of this process)
is what the estimate counts, torch's intra-op workers included: the thread running ``forward``
only waits for them, so its own CPU time (``"thread-cpu"``) misses their work, and a convolution
split over 4 threads would weigh a quarter of its cost. The price of ``"process-cpu"``: other
threads of the process (a meter's background sampler, a pin-memory thread) land in whichever
interval is open, and workers that spin after a parallel region charge the spin to the next
module, as the estimate charges it to the run. Reading it costs about 2 us (a system call).

:class:`MachineLoad` records, over the profiled steps, this process's CPU time, the other
processes' (the node's busy time from ``/proc/stat`` minus ours) and the time the training thread
waited in the run queue for a CPU (``/proc/thread-self/schedstat``): the part of a wall-clock
interval that was not this process's work.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from lightning_green.energy.attribution import node_busy_seconds

#: ``LayerEnergyProfiler(clock=...)`` choices; ``"auto"``: CPU time for the CPU-time estimate, else ``"wall"``.
CLOCKS = ("auto", "wall", "process-cpu", "thread-cpu")
#: The meter source whose joules are CPU time.
CPU_TIME_SOURCE = "estimated:cpu-time"
#: Share of the profiled time the training thread may wait for a CPU before the figures are said
#: to be moved by the machine's load.
WAIT_WARN_SHARE = 0.05
_NOW: dict[str, Callable[[], float]] = {
    "wall": time.perf_counter, "process-cpu": time.process_time, "thread-cpu": time.thread_time,
}  # fmt: skip


def choose_clock(requested: str, sources: list[str]) -> str:
    """The clock to time modules by: ``requested``, or for ``"auto"`` the process's CPU time where
    every source of the meter is the CPU-time estimate, else the wall clock (CUDA events on a GPU)."""
    if requested != "auto":
        return requested
    return "process-cpu" if sources and all(s == CPU_TIME_SOURCE for s in sources) else "wall"


class Clock:
    """Marks points in time: CUDA events on a GPU for ``"wall"`` (no sync per mark), else
    ``perf_counter``, or CPU time (``"process-cpu"``, ``"thread-cpu"``). ``now``, a function
    returning seconds in the meter's unit, replaces the reading (kind ``"custom"``: a test's
    injected clock)."""

    def __init__(
        self, device: torch.device, kind: str = "wall", now: Callable[[], float] | None = None
    ) -> None:
        if kind not in _NOW:
            raise ValueError(f"clock must be one of {', '.join(CLOCKS)}; got {kind!r}")
        self.device_cuda = device.type == "cuda"
        self.cuda = kind == "wall" and self.device_cuda and now is None
        #: What the marks are, for the records: cuda-events, wall, process-cpu, thread-cpu or custom.
        self.kind = "cuda-events" if self.cuda else "custom" if now is not None else kind
        self.now = now or _NOW[kind]

    def mark(self) -> Any:
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return self.now()

    def seconds(self, a: Any, b: Any) -> float:
        return a.elapsed_time(b) / 1000.0 if self.cuda else b - a

    def sync(self) -> None:
        if self.device_cuda:
            torch.cuda.synchronize()


def _run_delay_s() -> float | None:
    """Seconds the calling thread has waited in the run queue (``None`` where the kernel lacks it)."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


def _node_busy_s() -> float | None:
    try:
        return node_busy_seconds()
    except (OSError, ValueError, IndexError):
        return None


@dataclass(frozen=True)
class LoadSnapshot:
    wall_s: float
    own_cpu_s: float
    node_busy_s: float | None
    waited_s: float | None

    @classmethod
    def now(cls) -> LoadSnapshot:
        return cls(time.perf_counter(), time.process_time(), _node_busy_s(), _run_delay_s())


@dataclass
class MachineLoad:
    """The machine during the profiled steps, summed over the windows."""

    wall_s: float = 0.0
    own_cpu_s: float = 0.0
    other_cpu_s: float | None = 0.0
    waited_s: float | None = 0.0
    cpus: int = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

    def add(self, a: LoadSnapshot, b: LoadSnapshot) -> None:
        own = max(0.0, b.own_cpu_s - a.own_cpu_s)
        self.wall_s += max(0.0, b.wall_s - a.wall_s)
        self.own_cpu_s += own
        if self.other_cpu_s is not None:
            node = None if a.node_busy_s is None or b.node_busy_s is None else b.node_busy_s - a.node_busy_s
            self.other_cpu_s = None if node is None else self.other_cpu_s + max(0.0, node - own)
        if self.waited_s is not None:
            waited = None if a.waited_s is None or b.waited_s is None else b.waited_s - a.waited_s
            self.waited_s = None if waited is None else self.waited_s + max(0.0, waited)

    def figures(self) -> dict[str, Any]:
        """CPUs this process kept busy on average, CPUs other processes kept busy (from
        ``/proc/stat``; this process's data-loader workers included), and the share of the time the
        training thread waited for a CPU; ``None`` where unknown."""
        w = self.wall_s

        def per_s(x: float | None) -> float | None:
            return None if x is None or w <= 0 else x / w

        return {
            "seconds": w, "cpus": self.cpus, "own_cpus": per_s(self.own_cpu_s),
            "other_cpus": per_s(self.other_cpu_s), "waited_share": per_s(self.waited_s),
        }  # fmt: skip

    def warning(self, clock_kind: str, threads: int) -> str | None:
        """Why the load moved the figures, or ``None`` (the training thread barely waited)."""
        f = self.figures()
        waited = f["waited_share"]
        if waited is None or waited < WAIT_WARN_SHARE:
            return None
        other = (
            ""
            if f["other_cpus"] is None
            else f" while other processes kept {f['other_cpus']:.1f} of {f['cpus']} CPUs busy"
        )
        busy = f"the training thread waited for a CPU {waited:.0%} of the profiled time{other}"
        if clock_kind != "wall" and clock_kind != "cuda-events":
            if threads <= 1:
                return None  # CPU time leaves the waiting out: the figures did not move
            return (
                f"{busy}; modules are timed by CPU time, but {threads} intra-op threads spin while a "
                "sibling waits for a CPU, and the estimate counts that spin: the figures grow with the "
                "load. Profile on a quiet machine or with torch.set_num_threads(1)."
            )
        return (
            f"{busy}; modules are timed by the wall clock, which includes that wait and moves joules "
            "between modules and 'unattributed'. Profile on a quiet machine."
        )
