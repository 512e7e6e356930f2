"""GPU energy straight from NVML (``nvidia-ml-py``'s ``pynvml`` module).

GPUs with an energy counter (Volta and newer) are read with
``nvmlDeviceGetTotalEnergyConsumption`` (millijoules since driver load), labelled
``measured:nvml``. Older GPUs are sampled with ``nvmlDeviceGetPowerUsage`` on a background thread
and integrated (trapezoid rule), labelled ``measured:nvml-power``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence

from lightning_green.energy.base import Channel, CounterMeter, MeterUnavailableError, PollingThread


def _pynvml():
    try:
        import pynvml
    except ImportError as err:  # pragma: no cover - a declared dependency
        raise MeterUnavailableError("pynvml is not importable; install nvidia-ml-py") from err
    return pynvml


def physical_gpu_index(logical: int) -> int:
    """Map a CUDA (logical) index to the NVML (physical) one through ``CUDA_VISIBLE_DEVICES``."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not visible:
        return logical
    ids = [v.strip() for v in visible.split(",") if v.strip()]
    if logical < len(ids) and ids[logical].isdigit():
        return int(ids[logical])
    return logical


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
        gpu_indices: CUDA indices of the GPUs to measure (``None``: every visible GPU). They are
            mapped to NVML indices through ``CUDA_VISIBLE_DEVICES``.
        sync: Synchronise these CUDA devices at window edges so queued kernels are counted.
        sample_interval_s: Power sampling period for GPUs without an energy counter, and the
            period of the background reads of the energy counter.
        sync_reads: Read the energy counter at each window edge on the caller's thread (about
            4 ms per read on an H200) instead of interpolating background samples (microseconds).
        clock: The monotonic clock power samples are integrated over (tests pass a fake one).

    Raises:
        MeterUnavailableError: If NVML cannot start or finds no GPU.
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
            try:
                count = nvml.nvmlDeviceGetCount()
            except Exception as err:
                raise MeterUnavailableError(f"NVML could not count GPUs: {err}") from err
            gpu_indices = list(range(count))
        if not gpu_indices:
            raise MeterUnavailableError("NVML found no GPU")
        self.gpu_indices = list(gpu_indices)
        super().__init__(
            sync_fn=torch_cuda_sync(self.gpu_indices) if sync else None,
            sample_interval_s=None if sync_reads else sample_interval_s,
        )
        self._nvml = nvml
        self._handles = {}
        self._integrators: dict[int, _PowerIntegrator] = {}
        for i in self.gpu_indices:
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(physical_gpu_index(i))
            except Exception as err:
                raise MeterUnavailableError(f"NVML has no GPU {i}: {err}") from err
            self._handles[i] = handle
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
        if self._poller is not None:
            self._poller.stop()
            self._poller = None
