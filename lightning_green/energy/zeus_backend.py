"""Energy through Zeus's ``ZeusMonitor``: GPU energy counters and CPU RAPL, device-synchronised."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from lightning_green.energy.base import Channel, Meter, MeterUnavailableError
from lightning_green.energy.reading import DomainEnergy

log = logging.getLogger("lightning_green.energy")


def _zeus_monitor_cls() -> Any:
    try:
        # zeus imports amdsmi, which raises KeyError (not ImportError) without ROCm.
        from zeus.monitor import ZeusMonitor
    except ModuleNotFoundError as err:
        raise MeterUnavailableError(
            "backend=zeus needs Zeus: install lightning-green[zeus] (or use backend=auto / nvml / rapl, "
            "which read the same counters without it)"
        ) from err
    except Exception as err:
        raise MeterUnavailableError(f"zeus is not importable: {err!r}") from err
    return ZeusMonitor


class ZeusMeter(Meter):
    """Energy of GPUs (``measured:zeus-nvml``) and CPU packages/DRAM (``measured:zeus-rapl``) via Zeus.

    Args:
        gpu_indices: CUDA indices to measure; ``None`` for all, ``[]`` for none.
        cpu_indices: CPU packages to measure; ``None`` for all readable, ``[]`` for none.

    Raises:
        MeterUnavailableError: If Zeus is missing or finds nothing to measure.
    """

    name = "zeus"

    def __init__(
        self, gpu_indices: Sequence[int] | None = None, cpu_indices: Sequence[int] | None = None
    ) -> None:
        super().__init__()
        monitor_cls = _zeus_monitor_cls()
        try:
            self._monitor = monitor_cls(
                gpu_indices=None if gpu_indices is None else list(gpu_indices),
                cpu_indices=None if cpu_indices is None else list(cpu_indices),
                sync_execution_with="torch",
            )
        except Exception as err:
            raise MeterUnavailableError(f"ZeusMonitor did not start: {err!r}") from err
        self._gpus = list(self._monitor.gpu_indices)
        self._cpus = list(self._monitor.cpu_indices)
        if not self._gpus and not self._cpus:
            raise MeterUnavailableError("Zeus found no GPU and no readable RAPL package")
        self._has_dram = False
        self._n = 0

    @property
    def channels(self) -> tuple[Channel, ...]:
        chans = [Channel("gpu", str(i), "measured:zeus-nvml") for i in self._gpus]
        chans += [Channel("cpu", str(i), "measured:zeus-rapl") for i in self._cpus]
        return tuple(chans)

    def synchronize(self) -> None:
        if self._gpus:
            from zeus.utils.framework import sync_execution

            sync_execution(self._gpus, sync_with="torch")

    def _begin(self, name: str) -> str:
        self._n += 1
        key = f"lightning_green/{name}/{self._n}"
        try:
            self._monitor.begin_window(key, sync_execution=False)
        except Exception as err:
            log.warning("zeus: begin_window failed (%r); the window is incomplete", err)
            return ""
        return key

    def _end(self, name: str, token: str) -> list[DomainEnergy]:
        if not token:
            return [DomainEnergy(c.domain, c.device, None, c.source, complete=False) for c in self.channels]
        try:
            m = self._monitor.end_window(token, sync_execution=False)
        except Exception as err:
            log.warning("zeus: end_window failed (%r); the window is incomplete", err)
            return [DomainEnergy(c.domain, c.device, None, c.source, complete=False) for c in self.channels]
        out = []
        for i in self._gpus:
            j = m.gpu_energy.get(i)
            out.append(DomainEnergy("gpu", str(i), j, "measured:zeus-nvml", complete=j is not None))
        for i in self._cpus:
            j = (m.cpu_energy or {}).get(i)
            out.append(DomainEnergy("cpu", str(i), j, "measured:zeus-rapl", complete=j is not None))
            if m.dram_energy and i in m.dram_energy:
                out.append(DomainEnergy("dram", str(i), m.dram_energy[i], "measured:zeus-rapl"))
        return out
