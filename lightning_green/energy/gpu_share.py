"""This job's share of a GPU that other processes use too, from NVML's per-process figures.

A GPU's energy counter counts every process on it (two trials packed on one GPU, a notebook beside a
run). :class:`ProcessSampler` reads, every :data:`PROCESS_SAMPLE_INTERVAL_S` on a background
thread, NVML's per-process SM utilisation samples and the processes holding a context on each GPU,
and :class:`GpuProcessShare` turns them into the job's share of a window:

* ``attributed:gpu-process-utilisation``: the SM utilisation of the job's processes (this process
  and its descendants) over everyone's, summed over the window's samples;
* ``attributed:gpu-processes-time-sliced``: where the window has no utilisation to share (an idle
  GPU, no samples, or a driver without per-process utilisation), the job's processes over all the
  processes on the GPU, averaged over the window's samples (the GPU time-slices between contexts);
  1.0 when the job is alone.

A MIG instance has no counter of its own: NVML counts the whole GPU, whose other instances this
process cannot see. :class:`MigShare` says so (``not-attributable:mig``): the job's figure is
``None`` and the whole GPU's is kept beside it.

NVML names processes by their PID in the host's PID namespace. In a container with its own PID
namespace no listed PID is this process's, so a job that holds a CUDA context but is never listed
is ``not-attributable:pid-namespace`` rather than charged nothing.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from lightning_green.energy.attribution import Share
from lightning_green.energy.base import PollingThread

log = logging.getLogger("lightning_green.energy")

#: Seconds between per-process samples. NVML keeps a short history of per-process utilisation, so
#: the samples between two reads are not lost; a tenth of a second keeps short windows resolved.
PROCESS_SAMPLE_INTERVAL_S = 0.1
_NO_SAMPLES = (0, 6)  # NVML_SUCCESS with nothing to return, NVML_ERROR_NOT_FOUND
_UNSUPPORTED = {3: "not supported", 4: "no permission", 13: "not in this driver"}


def job_pids() -> set[int]:
    """This process and its descendants (data-loader workers, ranks it launched): the job on a GPU."""
    from lightning_green.energy.estimate import _proc_children

    me = os.getpid()
    pids = {me}
    todo = _proc_children(me)
    if todo is None:  # no /proc/<pid>/task/*/children here
        import psutil

        try:
            return pids | {p.pid for p in psutil.Process(me).children(recursive=True)}
        except psutil.Error:
            return pids
    while todo:
        pid = todo.pop()
        if int(pid) not in pids:
            pids.add(int(pid))
            todo += _proc_children(pid) or []
    return pids


def _cuda_in_use() -> bool:
    """Whether this process has started CUDA through torch (without importing torch for it)."""
    torch = sys.modules.get("torch")
    try:
        return bool(torch is not None and torch.cuda.is_initialized())
    except Exception:
        return False


class ProcessTally(NamedTuple):
    """Cumulative per-process figures of one GPU; a window's share comes from two of them."""

    ours_util: float  # SM utilisation samples of the job's processes, summed
    all_util: float  # SM utilisation samples of every process, summed
    ticks: int  # process lists read
    sliced: float  # sum over the lists read of the job's part of them
    last_sliced: float | None  # the job's part of the latest list
    seen_us: bool  # a job process was ever listed on the GPU
    seen_others: bool  # another process was ever listed on the GPU


@dataclass
class _Gpu:
    handle: Any
    ours_util: float = 0.0
    all_util: float = 0.0
    ticks: int = 0
    sliced: float = 0.0
    last_sliced: float | None = None
    seen_us: bool = False
    seen_others: bool = False
    last_seen_us: int = 0  # NVML's timestamp of the newest utilisation sample taken
    util_off: str | None = None  # why per-process utilisation cannot be read
    procs_off: str | None = None  # why the process list cannot be read

    def tally(self) -> ProcessTally:
        return ProcessTally(
            self.ours_util, self.all_util, self.ticks, self.sliced, self.last_sliced,
            self.seen_us, self.seen_others,
        )  # fmt: skip


class ProcessSampler:
    """Reads NVML's per-process utilisation and process lists of some GPUs on a daemon thread.

    The first read happens here, so :meth:`unsupported` can tell at once what the driver offers.

    Args:
        nvml: The ``pynvml`` module.
        handles: NVML handles by device label (the CUDA index as a string).
        interval_s: Seconds between reads.
        pids: The job's PIDs now (default: :func:`job_pids`).
    """

    def __init__(
        self,
        nvml: Any,
        handles: Mapping[str, Any],
        interval_s: float | None = None,
        pids: Callable[[], set[int]] = job_pids,
    ) -> None:
        self._nvml, self._pids = nvml, pids
        self._gpus = {key: _Gpu(h) for key, h in handles.items()}
        self._lock = threading.Lock()
        self._probing = True  # a failing first read means the method is unavailable, not a blip
        self.sample()
        self._probing = False
        interval = PROCESS_SAMPLE_INTERVAL_S if interval_s is None else interval_s
        self._thread: PollingThread | None = PollingThread(self.sample, interval, "nvml-process-share")

    def unsupported(self, key: str) -> str | None:
        """Why GPU ``key`` cannot be split (no per-process figure at all), or ``None``."""
        g = self._gpus[key]
        if g.util_off and g.procs_off:
            return f"per-process utilisation: {g.util_off}; process list: {g.procs_off}"
        return None

    def methods(self, key: str) -> tuple[bool, bool]:
        """Whether per-process utilisation, and the process list, can be read for GPU ``key``."""
        g = self._gpus[key]
        return g.util_off is None, g.procs_off is None

    def snapshot(self, key: str) -> ProcessTally:
        with self._lock:
            return self._gpus[key].tally()

    def sample(self) -> None:
        """Read every GPU's new utilisation samples and its process list once (the thread's work)."""
        ours = self._pids()
        for g in self._gpus.values():
            samples = self._read(g, "util") if g.util_off is None else None
            procs = self._read(g, "procs") if g.procs_off is None else None
            with self._lock:
                since = g.last_seen_us  # NVML returns samples since a timestamp: skip those counted
                for s in samples or ():
                    if s.timeStamp <= since:
                        continue
                    g.last_seen_us = max(g.last_seen_us, s.timeStamp)
                    g.all_util += s.smUtil
                    g.ours_util += s.smUtil if s.pid in ours else 0
                    g.seen_us |= s.pid in ours
                    g.seen_others |= s.pid not in ours
                if procs is not None:
                    listed = {p.pid for p in procs}
                    mine = len(listed & ours)
                    part = mine / len(listed) if listed else 1.0  # nobody on it: nobody to share with
                    g.ticks, g.sliced, g.last_sliced = g.ticks + 1, g.sliced + part, part
                    g.seen_us |= mine > 0
                    g.seen_others |= mine < len(listed)

    def _read(self, g: _Gpu, what: str) -> list[Any] | None:
        nvml = self._nvml
        try:
            if what == "util":
                return list(nvml.nvmlDeviceGetProcessUtilization(g.handle, g.last_seen_us))
            return list(nvml.nvmlDeviceGetComputeRunningProcesses(g.handle))
        except Exception as err:
            code = getattr(err, "value", None)
            if what == "util" and code in _NO_SAMPLES:
                return []
            if self._probing or code in _UNSUPPORTED or not isinstance(err, nvml.NVMLError):
                why = _UNSUPPORTED.get(code, repr(err))
                if what == "util":
                    g.util_off = why
                else:
                    g.procs_off = why
            else:  # a passing failure: this read is skipped
                log.debug("nvml per-process read failed", exc_info=True)
            return None

    def close(self) -> None:
        if self._thread is not None:
            self._thread.stop()
            self._thread = None


class GpuProcessShare:
    """The job's share of one GPU between two snapshots of a :class:`ProcessSampler`.

    Args:
        sampler: Reads the GPU's per-process figures.
        key: The GPU's device label in the sampler.
        required: Where the job cannot be told apart (see the module's note on PID namespaces):
            ``True`` gives a share of ``None``, ``False`` charges the whole GPU, both labelled
            ``not-attributable:pid-namespace``.
    """

    def __init__(self, sampler: ProcessSampler, key: str, required: bool = False) -> None:
        self._sampler, self._key, self._required = sampler, key, required

    def snapshot(self) -> ProcessTally:
        return self._sampler.snapshot(self._key)

    def describe(self) -> str:
        util, procs = self._sampler.methods(self._key)
        how = []
        if util:
            how.append("SM utilisation of this process and its descendants over every process's (NVML)")
        if procs:
            how.append("their part of the processes on the GPU (time-sliced) where none was sampled")
        return "; ".join(how)

    def share(self, before: ProcessTally, after: ProcessTally) -> Share:
        if after.seen_others and not after.seen_us and _cuda_in_use():
            # We hold a CUDA context but NVML never lists our PID: it names processes in another
            # PID namespace (a container), so "ours" cannot be picked out of its list.
            return Share(None if self._required else 1.0, "not-attributable:pid-namespace")
        everyone = after.all_util - before.all_util
        if everyone > 0:
            ours = after.ours_util - before.ours_util
            return Share(min(1.0, max(0.0, ours / everyone)), "attributed:gpu-process-utilisation")
        ticks = after.ticks - before.ticks
        part = (after.sliced - before.sliced) / ticks if ticks else after.last_sliced
        if part is None:  # no process list either: the GPU was idle for everyone
            return Share(1.0, "attributed:gpu-process-utilisation")
        return Share(min(1.0, max(0.0, part)), "attributed:gpu-processes-time-sliced")


class MigShare:
    """A MIG instance: NVML's energy counter is the whole GPU's, shared with instances this process
    cannot see, so the job's part of it is unknown (``not-attributable:mig``)."""

    def __init__(self, parent_uuid: str | None = None) -> None:
        self.parent_uuid = parent_uuid

    def snapshot(self) -> None:
        return None

    def describe(self) -> str:
        return f"a MIG instance: the energy is the whole GPU's ({self.parent_uuid or 'parent'}), not split"

    def share(self, before: None, after: None) -> Share:
        return Share(None, "not-attributable:mig")
