"""CPU energy estimated from process CPU time, for machines with no energy counter.

The model: ``joules = CPU seconds x watts per core``. CPU seconds are the user + system time of
this process (all threads) and, by default, of its child processes (data-loader workers).

The default of 12 W per core is the "unknown CPU" figure of the Green Algorithms calculator
(Lannelongue, Grealey and Inouye, "Green Algorithms: Quantifying the Carbon Footprint of
Computation", Advanced Science 8(12), 2021), derived from TDP per core of common server CPUs.
It excludes idle power, DRAM, GPUs and the rest of the machine, so it is a floor for the CPU's
share, not a wall-socket figure. Every reading is labelled ``estimated:cpu-time``.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from lightning_green._checks import check_number
from lightning_green.energy.base import Channel, CounterMeter

DEFAULT_WATTS_PER_CORE = 12.0
WATTS_PER_CORE_SOURCE = "Green Algorithms (Lannelongue et al., Adv. Sci. 2021), 'unknown CPU' per-core TDP"


_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_children(pid: int | str) -> list[str] | None:
    """Child pids from /proc/<pid>/task/*/children (cheap), or None where the kernel lacks it."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    kids: list[str] = []
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids += f.read().split()
        except FileNotFoundError:
            return None  # CONFIG_PROC_CHILDREN is off
        except OSError:
            continue
    return kids


def _stat(pid: str) -> list[str] | None:
    """/proc/<pid>/stat after the command name (field 3 on): ``[1]`` ppid, ``[11]`` utime,
    ``[12]`` stime, ``[19]`` start time; ``None`` if the process has exited."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _stat_cpu_seconds(pid: str) -> float:
    fields = _stat(pid)
    if fields is None:
        return 0.0  # exited between listing and reading: counted via children_* once reaped
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime


def _live_children_seconds() -> float:
    todo = _proc_children("self")
    if todo is None:
        import psutil

        total = 0.0
        for child in psutil.Process().children(recursive=True):
            try:
                ct = child.cpu_times()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            total += ct.user + ct.system
        return total
    total = 0.0
    while todo:
        pid = todo.pop()
        total += _stat_cpu_seconds(pid)
        todo += _proc_children(pid) or []
    return total


def _process_cpu_seconds(include_children: bool) -> float:
    # CLOCK_PROCESS_CPUTIME_ID: nanosecond resolution, every thread of this process.
    own = time.process_time()
    if not include_children:
        return own
    t = os.times()  # children_*: children that already exited and were waited for
    return own + t.children_user + t.children_system + _live_children_seconds()


class ProcessTree:
    """CPU seconds of a process (this one by default) and every descendant it has seen, kept when
    they exit.

    A live descendant's own time (user + system) is remembered at each :meth:`sample`; when it
    exits, that last figure stays counted (its time after the last sample is lost, at most one
    sampling interval), unless it was a direct child of the root, whose whole time the kernel then
    adds to the root's ``children`` times (once the root has waited for it). A background thread
    samples every ``interval_s`` so that workers that come and go (Ray's) are seen.

    Args:
        interval_s: Sampling period of the background thread.
        root: The process at the top (default: this one). A Ray node's energy counts its raylet's
            tree: the raylet and every worker it started.
        extra: More processes to count with their trees (a Ray head's GCS server beside its raylet).
        what: What the tree is, for the records.
    """

    def __init__(
        self,
        interval_s: float = 0.25,
        root: int | None = None,
        extra: list[int] | None = None,
        what: str = "this process and every descendant process (sampled, kept after it exits)",
    ) -> None:
        self.what = what
        self._seen: dict[tuple[str, str], tuple[float, str]] = {}  # (pid, start) -> (seconds, ppid)
        self._lock = threading.Lock()
        self._me = str(os.getpid())
        self._roots = [str(root) if root is not None else self._me, *(str(p) for p in extra or [])]
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._last_roots = 0.0
        self.sample()
        self._thread = threading.Thread(target=self._run, name="process-tree-cpu", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.sample()

    def sample(self) -> None:
        live: dict[tuple[str, str], tuple[float, str]] = {}
        todo = [kid for r in self._roots for kid in (_proc_children("self" if r == self._me else r) or [])]
        while todo:
            pid = todo.pop()
            fields = _stat(pid)
            if fields is None:
                continue
            live[(pid, fields[19])] = ((int(fields[11]) + int(fields[12])) / _CLK_TCK, fields[1])
            todo += _proc_children(pid) or []
        with self._lock:
            for key in list(self._seen):
                if key not in live and self._seen[key][1] in self._roots:
                    del self._seen[key]  # a root's own child: its whole time is in the root's children times
            self._seen.update(live)

    def _roots_seconds(self) -> float:
        """The roots' own time and that of their exited, waited-for children."""
        total = 0.0
        for r in self._roots:
            if r == self._me:
                t = os.times()
                total += time.process_time() + t.children_user + t.children_system
                continue
            fields = _stat(r)
            if fields is None:
                continue  # a root that exited: its time stays as last seen in _last_roots
            total += sum(int(v) for v in fields[11:15]) / _CLK_TCK  # utime stime cutime cstime
        self._last_roots = max(self._last_roots, total)
        return self._last_roots

    def pids(self) -> set[int]:
        """The roots and every live descendant seen at the last sample."""
        with self._lock:
            return {int(r) for r in self._roots} | {int(pid) for pid, _ in self._seen}

    def seconds(self) -> float:
        self.sample()
        roots = self._roots_seconds()
        with self._lock:
            return roots + sum(v for v, _ in self._seen.values())

    def close(self) -> None:
        self._stop.set()


class EstimateMeter(CounterMeter):
    """Estimated CPU energy: process CPU time x ``watts_per_core``.

    Args:
        watts_per_core: Power of one fully busy core, in watts (default 12 W, see module docs).
        include_children: Count child processes (data-loader workers) too. Turn it off when the
            children are measured themselves (DDP ranks started by rank 0).
        track_descendants: Count every descendant, sampled in the background and remembered after
            it exits (:class:`ProcessTree`): for a whole Ray study, whose workers come and go. A
            :class:`ProcessTree` counts that tree instead (a Ray node's processes).

    Raises:
        ValueError: If ``watts_per_core`` is not a positive number.
    """

    name = "estimate"

    def __init__(
        self, watts_per_core: float = DEFAULT_WATTS_PER_CORE, include_children: bool = True,
        track_descendants: bool | ProcessTree = False,
    ) -> None:  # fmt: skip
        super().__init__()
        self.watts_per_core = check_number("watts_per_core", watts_per_core, above=0.0, unit="watts")
        self.include_children = include_children
        if isinstance(track_descendants, ProcessTree):
            self._tree: ProcessTree | None = track_descendants
        else:
            self._tree = ProcessTree() if track_descendants else None

    @property
    def channels(self) -> tuple[Channel, ...]:
        return (Channel("cpu", "process", "estimated:cpu-time"),)

    @property
    def assumptions(self) -> dict[str, Any]:
        return {
            "cpu_model": "cpu-time",
            "cpu_watts_per_core": self.watts_per_core,
            "cpu_watts_per_core_source": WATTS_PER_CORE_SOURCE
            if self.watts_per_core == DEFAULT_WATTS_PER_CORE
            else "user-configured",
            "cpu_covers": "CPU time of "
            + (
                self._tree.what
                if self._tree
                else "this process and its child processes"
                if self.include_children
                else "this process"
            )
            + "; excludes idle power, DRAM, GPU and the rest of the machine",
        }

    def read_counters(self) -> dict[str, float | None]:
        seconds = self._tree.seconds() if self._tree else _process_cpu_seconds(self.include_children)
        return {"cpu:process": seconds * self.watts_per_core}

    def close(self) -> None:
        if self._tree is not None:
            self._tree.close()
        super().close()
