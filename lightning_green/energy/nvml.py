"""GPU energy straight from NVML (``nvidia-ml-py``'s ``pynvml`` module).

GPUs with an energy counter (Volta and newer) are read with
``nvmlDeviceGetTotalEnergyConsumption`` (millijoules since driver load), labelled
``measured:nvml``. Older GPUs are sampled with ``nvmlDeviceGetPowerUsage`` on a background thread
and integrated (trapezoid rule), labelled ``measured:nvml-power``.

A CUDA device is found in NVML by its UUID (:func:`resolve_gpu`): ``CUDA_VISIBLE_DEVICES`` may list
UUIDs or MIG instances, and CUDA's order need not be NVML's. A device that matches nothing is an
error, never another GPU's counter. A MIG instance is read through its parent GPU's counter. Where
other processes share a GPU, :meth:`NvmlMeter.shares` splits its counter among them
(:mod:`lightning_green.energy.gpu_share`).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from lightning_green.energy.attribution import Split
from lightning_green.energy.base import Channel, CounterMeter, MeterUnavailableError, PollingThread
from lightning_green.energy.gpu_share import GpuProcessShare, MigShare, ProcessSampler, job_pids


def _pynvml():
    try:
        import pynvml
    except ImportError as err:  # pragma: no cover - a declared dependency
        raise MeterUnavailableError("pynvml is not importable; install nvidia-ml-py") from err
    return pynvml


def driver_lists_a_gpu() -> bool:
    """Whether NVML (which CUDA needs too) lists a device; ``True`` when it cannot tell."""
    try:
        nvml = _pynvml()
        nvml.nvmlInit()
    except Exception:  # no driver, no library: no GPU CUDA could use
        return False
    try:
        return nvml.nvmlDeviceGetCount() > 0
    except Exception:
        return True
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()


def visible_devices(value: str | None) -> list[str] | None:
    """``CUDA_VISIBLE_DEVICES`` as CUDA reads it: its entries up to the first one CUDA would reject
    (an index, or a ``GPU-``/``MIG-`` UUID or unique prefix of one); ``None`` when unset."""
    if value is None:
        return None
    out: list[str] = []
    for entry in value.split(","):
        entry = entry.strip()
        if not (entry.isdigit() or entry.startswith(("GPU-", "MIG-"))):
            break
        if entry in out:
            return []  # CUDA shows no device at all when one is listed twice
        out.append(entry)
    return out


@dataclass(frozen=True)
class GpuIdentity:
    """Which NVML device a CUDA device is.

    Attributes:
        cuda_index: The CUDA (logical) index, as this process's code names the device.
        uuid: NVML's UUID of the device (``GPU-...``, or ``MIG-...`` for a MIG instance).
        handle: The device's NVML handle.
        counter: The handle whose energy counter is read: the parent GPU of a MIG instance.
        parent_uuid: The parent GPU's UUID for a MIG instance, else ``None``.
        by_index: Matched by NVML index without CUDA's own UUID for it: CUDA's device order is
            then taken to be NVML's (PCI bus order, which CUDA's default shares on a node of one
            GPU model).
    """

    cuda_index: int
    uuid: str | None
    handle: Any
    counter: Any
    parent_uuid: str | None = None
    by_index: bool = False

    @property
    def mig(self) -> bool:
        return self.counter is not self.handle


def _torch_cuda() -> Any:
    """``torch.cuda`` where CUDA works in this process, else ``None``."""
    try:
        import torch

        return torch.cuda if torch.cuda.is_available() else None
    except Exception:
        return None


def _bare_uuid(value: object) -> str | None:
    """A UUID without its ``GPU-``/``MIG-`` prefix, lower case (torch prints CUDA's without one)."""
    if value is None:
        return None
    text = str(value).strip().lower().removeprefix("gpu-").removeprefix("mig-")
    return text or None


def _uuid(nvml: Any, handle: Any) -> str | None:
    try:
        uuid = nvml.nvmlDeviceGetUUID(handle)
    except Exception:
        return None
    return uuid.decode() if isinstance(uuid, bytes) else str(uuid)


def _by_uuid(nvml: Any, uuid: str) -> Any:
    try:
        return nvml.nvmlDeviceGetHandleByUUID(uuid)
    except Exception:
        return None


def _every_device(nvml: Any) -> list[tuple[str | None, Any]]:
    """``(uuid, handle)`` of every GPU NVML sees and of every MIG instance on them."""
    out = []
    for j in range(nvml.nvmlDeviceGetCount()):
        handle = nvml.nvmlDeviceGetHandleByIndex(j)
        out.append((_uuid(nvml, handle), handle))
        try:
            slots = nvml.nvmlDeviceGetMaxMigDeviceCount(handle)
        except Exception:  # no MIG on this GPU or driver
            slots = 0
        for k in range(slots):
            try:
                mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, k)
            except Exception:  # an empty slot
                continue
            out.append((_uuid(nvml, mig), mig))
    return out


def _mig_parent(nvml: Any, handle: Any) -> Any:
    """The parent GPU's handle if ``handle`` is a MIG instance's, else ``None``."""
    try:
        is_mig = nvml.nvmlDeviceIsMigDeviceHandle(handle)
    except Exception:  # an old driver or a GPU without MIG
        return None
    if not getattr(is_mig, "value", is_mig):
        return None
    return nvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(handle)


def _cuda_device_count(nvml: Any) -> int:
    """How many devices CUDA shows this process: torch's count, else ``CUDA_VISIBLE_DEVICES``'s, else NVML's."""
    cuda = _torch_cuda()
    if cuda is not None:
        return cuda.device_count()
    visible = visible_devices(os.environ.get("CUDA_VISIBLE_DEVICES"))
    if visible is not None:
        return len(visible)
    try:
        return nvml.nvmlDeviceGetCount()
    except Exception as err:
        raise MeterUnavailableError(f"NVML could not count GPUs: {err}") from err


def resolve_gpu(nvml: Any, index: int) -> GpuIdentity:
    """The NVML device behind CUDA device ``index``.

    Through the UUID CUDA reports for it (``torch.cuda.get_device_properties(index).uuid``) where
    torch has CUDA: CUDA's device order (fastest first by default) need not be NVML's (PCI bus
    order). Else through ``CUDA_VISIBLE_DEVICES``: an index is NVML's, a ``GPU-``/``MIG-`` UUID (or
    a unique prefix, as CUDA accepts) is looked up; unset, the index is taken as NVML's.

    Raises:
        MeterUnavailableError: In one line naming the CUDA index and ``CUDA_VISIBLE_DEVICES``,
            where no NVML device matches: never another GPU's counter.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")

    def fail(why: str) -> MeterUnavailableError:
        said = "unset" if visible is None else repr(visible)
        return MeterUnavailableError(
            f"CUDA device {index} has no NVML counter: {why} (CUDA_VISIBLE_DEVICES={said})"
        )

    cuda = _torch_cuda()
    bare, entry = None, None
    if cuda is not None:
        count = cuda.device_count()
        if not 0 <= index < count:
            raise fail(f"CUDA sees {count} device(s)")
        try:
            bare = _bare_uuid(getattr(cuda.get_device_properties(index), "uuid", None))
        except Exception:  # torch without the UUID, or CUDA failing: CUDA_VISIBLE_DEVICES instead
            bare = None
    if bare is not None:
        handle = _by_uuid(nvml, f"GPU-{bare}")
        if handle is None:
            handle = _by_uuid(nvml, f"MIG-{bare}")
        if handle is None:
            raise fail(f"CUDA names it {bare}, a UUID NVML does not know")
    else:
        entries = visible_devices(visible)
        entry = str(index) if entries is None else entries[index] if 0 <= index < len(entries) else None
        if entry is None:
            raise fail(f"CUDA_VISIBLE_DEVICES lists {len(entries or [])} usable device(s)")
        if entry.isdigit():
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(int(entry))
            except Exception as err:
                raise fail(f"NVML has no GPU {entry} ({err})") from err
        else:
            handle = _by_uuid(nvml, entry)
            if handle is None:
                try:
                    every = _every_device(nvml)
                except Exception as err:
                    raise fail(f"NVML could not list its devices ({err})") from err
                found = [(u, h) for u, h in every if u and u.lower().startswith(entry.lower())]
                if len(found) != 1:
                    what = "no" if not found else f"{len(found)} ({', '.join(str(u) for u, _ in found)})"
                    raise fail(f"{what} NVML device(s) have a UUID starting {entry}")
                handle = found[0][1]
    try:
        parent = _mig_parent(nvml, handle)
    except Exception as err:
        raise fail(f"NVML has no parent GPU for MIG instance {_uuid(nvml, handle)} ({err})") from err
    return GpuIdentity(
        index,
        _uuid(nvml, handle),
        handle,
        handle if parent is None else parent,
        None if parent is None else _uuid(nvml, parent),
        by_index=entry is not None and entry.isdigit(),
    )


def torch_cuda_sync(indices: Sequence[int]) -> Callable[[], None] | None:
    """A function that synchronises the given CUDA devices, or ``None`` without CUDA."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        return None
    if not torch.cuda.is_available():
        return None

    def sync() -> None:
        for i in indices:
            torch.cuda.synchronize(i)

    return sync


#: GPU utilisation (percent) above which an idle baseline is reported as possibly busy.
BUSY_UTILISATION_PCT = 5


class _PowerIntegrator:
    """Integrates sampled power into a cumulative energy counter."""

    def __init__(self, read_watts: Callable[[], float], clock: Callable[[], float] = time.monotonic) -> None:
        self._read, self._clock = read_watts, clock
        self._lock = threading.Lock()
        self._t = clock()
        self._w = read_watts()
        self.joules = 0.0

    def sample(self) -> float:
        with self._lock:
            now, w = self._clock(), self._read()
            self.joules += 0.5 * (w + self._w) * (now - self._t)
            self._t, self._w = now, w
            return self.joules


class NvmlMeter(CounterMeter):
    """Energy of the given GPUs from NVML.

    Args:
        gpu_indices: CUDA indices of the GPUs to measure (``None``: every visible GPU). Each is
            mapped to its NVML device by UUID (see :func:`resolve_gpu`); channels are labelled by
            the CUDA index, and :attr:`assumptions` give each one's UUID (``gpu_uuids``). A MIG
            instance is read through its parent GPU's counter (``gpu_mig``).
        sync: Synchronise these CUDA devices at window edges so queued kernels are counted.
        sample_interval_s: Power sampling period for GPUs without an energy counter, and the
            period of the background reads of the energy counter.
        sync_reads: Read the energy counter at each window edge on the caller's thread (about
            4 ms per read on an H200) instead of interpolating background samples (microseconds).
        clock: The monotonic clock power samples are integrated over (tests pass a fake one).

    Raises:
        MeterUnavailableError: If NVML cannot start, finds no GPU, or a CUDA device matches no
            NVML device.
    """

    name = "nvml"

    def __init__(
        self,
        gpu_indices: Sequence[int] | None = None,
        sync: bool = True,
        sample_interval_s: float = 0.05,
        sync_reads: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        nvml = _pynvml()
        try:
            nvml.nvmlInit()
        except Exception as err:
            raise MeterUnavailableError(f"NVML did not start: {err}") from err
        if gpu_indices is None:
            gpu_indices = list(range(_cuda_device_count(nvml)))
        if not gpu_indices:
            raise MeterUnavailableError("NVML found no GPU")
        self.gpu_indices = list(gpu_indices)
        super().__init__(
            sync_fn=torch_cuda_sync(self.gpu_indices) if sync else None,
            sample_interval_s=None if sync_reads else sample_interval_s,
        )
        self._nvml = nvml
        self._gpus: dict[int, GpuIdentity] = {}
        self._handles: dict[int, Any] = {}  # the handles whose energy counters are read
        self._integrators: dict[int, _PowerIntegrator] = {}
        self._process_sampler: ProcessSampler | None = None
        #: The job's processes on a shared GPU (default: this process and its descendants).
        self.job_pids: Callable[[], set[int]] | None = None
        for i in self.gpu_indices:
            gpu = self._gpus[i] = resolve_gpu(nvml, i)
            handle = self._handles[i] = gpu.counter
            try:
                nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
            except Exception:
                self._integrators[i] = _PowerIntegrator(
                    lambda h=handle: nvml.nvmlDeviceGetPowerUsage(h) / 1000.0, clock
                )
        self._poller = (
            PollingThread(self._sample_power, sample_interval_s, "nvml-power") if self._integrators else None
        )
        if len(self._integrators) < len(self._handles):  # a slow energy counter: read it off-thread
            self.start_sampling()

    @property
    def assumptions(self) -> dict[str, Any]:
        out = dict(super().assumptions)
        out["gpu_uuids"] = {str(i): g.uuid for i, g in self._gpus.items()}
        by_index = [str(i) for i, g in self._gpus.items() if g.by_index]
        if by_index:
            out["gpu_identity"] = (
                f"gpu {', '.join(by_index)} matched by index (torch has no CUDA here): CUDA's device "
                "order taken to be NVML's"
            )
        mig = {str(i): g.parent_uuid for i, g in self._gpus.items() if g.mig}
        if mig:
            out["gpu_mig"] = {
                dev: f"a MIG instance: the energy is the whole GPU's ({parent}), other instances' included"
                for dev, parent in mig.items()
            }
        return out

    def shares(self, required: bool, notes: list[str]) -> list[Split]:
        """How each GPU's counter is split among the processes on it (see
        :mod:`lightning_green.energy.gpu_share`), for ``make_meter(attribution=...)``.

        Args:
            required: ``attribution="job"``: a GPU that cannot be split is an error. Else it is
                charged whole to this job, and a line in ``notes`` says so.
            notes: Where the reasons go.

        Raises:
            MeterUnavailableError: If ``required`` and a GPU's driver gives no per-process figure.
        """
        splits: list[Split] = []
        shared = {str(i): g.handle for i, g in self._gpus.items() if not g.mig}
        if shared and self._process_sampler is None:
            self._process_sampler = ProcessSampler(self._nvml, shared, pids=self.job_pids or job_pids)
        for i, g in self._gpus.items():
            dev = str(i)
            if g.mig:
                splits.append(Split(MigShare(g.parent_uuid), ("gpu",), (), devices=(dev,)))
                continue
            assert self._process_sampler is not None
            why = self._process_sampler.unsupported(dev)
            if why is None:
                source = GpuProcessShare(self._process_sampler, dev, required=required)
                splits.append(Split(source, ("gpu",), (), devices=(dev,)))
            elif required:
                self.close_shares()
                raise MeterUnavailableError(f"attribution=job: gpu:{dev} cannot be split ({why})")
            else:
                notes.append(f"gpu:{dev}: the whole GPU is charged to this job, its share is unknown ({why})")
        if not any(isinstance(s.source, GpuProcessShare) for s in splits):
            self.close_shares()  # nothing reads the samples
        return splits

    def close_shares(self) -> None:
        """Stop reading per-process figures."""
        if self._process_sampler is not None:
            self._process_sampler.close()
            self._process_sampler = None

    @property
    def channels(self) -> tuple[Channel, ...]:
        return tuple(
            Channel("gpu", str(i), "measured:nvml-power" if i in self._integrators else "measured:nvml")
            for i in self.gpu_indices
        )

    def busy(self) -> list[str]:
        out = []
        for i, handle in self._handles.items():
            try:
                util = self._nvml.nvmlDeviceGetUtilizationRates(handle).gpu
            except Exception:
                continue
            if util > BUSY_UTILISATION_PCT:
                out.append(f"gpu:{i} was {util}% utilised (another process on the GPU?)")
        return out

    def _sample_power(self) -> None:
        for integ in self._integrators.values():
            integ.sample()

    def read_counters(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for i, handle in self._handles.items():
            try:
                if i in self._integrators:
                    out[f"gpu:{i}"] = self._integrators[i].sample()
                else:
                    out[f"gpu:{i}"] = self._nvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000.0
            except Exception:
                out[f"gpu:{i}"] = None
        return out

    def close(self) -> None:
        super().close()
        self.close_shares()
        if self._poller is not None:
            self._poller.stop()
            self._poller = None
