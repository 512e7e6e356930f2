"""A patched NVML for tests: our real NVML reading code runs against fake GPUs.

GPUs are numbered in NVML's (PCI) order and have UUIDs ``GPU-11111111-...``, ``GPU-22222222-...``;
MIG instances, per-process utilisation samples and the processes on each GPU can be set. Torch's
CUDA is reported unavailable and ``CUDA_VISIBLE_DEVICES`` unset unless a test says otherwise, so a
machine with real GPUs runs the tests the same way.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pynvml
import torch


def gpu_uuid(i: int) -> str:
    """The fake UUID of NVML's GPU ``i``: a distinct first block, so short prefixes are unique."""
    digit = f"{i + 1:x}"
    return f"GPU-{digit * 8}-0000-4000-8000-{digit * 12}"


class FakeNvml:
    """Patches the real pynvml module so that our real NVML reading code runs against it.

    Args:
        monkeypatch: pytest's fixture; every patch is undone after the test.
        gpus: How many GPUs NVML sees.
        counter: Whether they have an energy counter (else only power is read).
        migs: MIG instances: their UUID (``MIG-...``) and the NVML index of their parent GPU.
    """

    def __init__(self, monkeypatch, gpus: int = 2, counter: bool = True, migs: dict[str, int] | None = None):
        self.mj = [1_000_000.0] * gpus
        self.watts = [100.0] * gpus
        self.fail = False
        self.uuids = [gpu_uuid(i) for i in range(gpus)]
        self.migs = dict(migs or {})
        #: Per-process utilisation samples of each GPU (``sample(pid, sm_util, timestamp)``).
        self.samples: dict[int, list[Any]] = {i: [] for i in range(gpus)}
        #: PIDs with a context on each GPU.
        self.processes: dict[int, list[int]] = {i: [] for i in range(gpus)}
        self.process_util = True  # False: the driver has no per-process utilisation
        self.process_list = True  # False: nor process lists
        for name, fn in {
            "nvmlInit": lambda: None,
            "nvmlDeviceGetCount": lambda: gpus,
            "nvmlDeviceGetHandleByIndex": self._by_index,
            "nvmlDeviceGetHandleByUUID": self._by_uuid,
            "nvmlDeviceGetUUID": self._uuid,
            "nvmlDeviceIsMigDeviceHandle": lambda h: h[0] == "mig",
            "nvmlDeviceGetDeviceHandleFromMigDeviceHandle": lambda h: ("handle", self.migs[h[1]]),
            "nvmlDeviceGetMaxMigDeviceCount": lambda h: len(self._migs_of(h[1])),
            "nvmlDeviceGetMigDeviceHandleByIndex": lambda h, k: ("mig", self._migs_of(h[1])[k]),
            "nvmlDeviceGetTotalEnergyConsumption": self._energy if counter else self._unsupported,
            "nvmlDeviceGetPowerUsage": self._power,
            "nvmlDeviceGetProcessUtilization": self._process_utilisation,
            "nvmlDeviceGetComputeRunningProcesses": self._processes,
        }.items():
            monkeypatch.setattr(pynvml, name, fn)
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    @staticmethod
    def sample(pid: int, sm_util: int, timestamp: int) -> Any:
        """One of NVML's per-process utilisation samples."""
        return SimpleNamespace(pid=pid, smUtil=sm_util, memUtil=0, timeStamp=timestamp)

    def _error(self, code: int) -> pynvml.NVMLError:
        return pynvml.NVMLError(code)

    def _migs_of(self, parent: int) -> list[str]:
        return [u for u, p in self.migs.items() if p == parent]

    def _by_index(self, i: int) -> tuple[str, Any]:
        if not 0 <= i < len(self.uuids):
            raise self._error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return ("handle", i)

    def _by_uuid(self, uuid: str | bytes) -> tuple[str, Any]:
        uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
        if uuid in self.uuids:
            return ("handle", self.uuids.index(uuid))
        if uuid in self.migs:
            return ("mig", uuid)
        raise self._error(pynvml.NVML_ERROR_NOT_FOUND)

    def _uuid(self, handle) -> str:
        return handle[1] if handle[0] == "mig" else self.uuids[handle[1]]

    def _gpu(self, handle) -> int:
        if handle[0] == "mig":  # like NVML: a MIG instance has no counter of its own
            raise self._error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return handle[1]

    def _energy(self, handle):
        if self.fail:
            raise self._error(pynvml.NVML_ERROR_GPU_IS_LOST)
        return self.mj[self._gpu(handle)]

    def _power(self, handle):
        return self.watts[self._gpu(handle)] * 1000.0

    def _unsupported(self, handle):
        raise self._error(pynvml.NVML_ERROR_NOT_SUPPORTED)

    def _process_utilisation(self, handle, last_seen: int):
        if not self.process_util:
            raise self._error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        new = [s for s in self.samples[self._gpu(handle)] if s.timeStamp > last_seen]
        if not new:
            raise self._error(pynvml.NVML_ERROR_NOT_FOUND)
        return new

    def _processes(self, handle):
        if not self.process_list:
            raise self._error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return [SimpleNamespace(pid=p, usedGpuMemory=None) for p in self.processes[self._gpu(handle)]]
