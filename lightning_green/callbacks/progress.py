"""A progress bar that shows the energy spent so far beside Lightning's own metrics."""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import TQDMProgressBar
from typing_extensions import override

from lightning_green.callbacks.energy_monitor import EnergyMonitor


class EnergyProgressBar(TQDMProgressBar):
    """Lightning's TQDM progress bar with two more fields, from the Trainer's EnergyMonitor:
    ``energy`` (joules of this run so far, open windows included) and ``power`` (their average
    over the run's wall time so far, in watts). Without an EnergyMonitor it is Lightning's bar.

    Example::

        >>> from lightning import Trainer
        >>> from lightning_green import EnergyMonitor
        >>> from lightning_green.callbacks.progress import EnergyProgressBar
        >>> trainer = Trainer(callbacks=[EnergyMonitor(), EnergyProgressBar()], logger=False)
    """

    def __init__(self, refresh_rate: int = 1, process_position: int = 0, leave: bool = False) -> None:
        super().__init__(refresh_rate=refresh_rate, process_position=process_position, leave=leave)
        self._t0: float | None = None

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        self._t0 = time.monotonic()

    @override
    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        try:
            monitor = EnergyMonitor.of(trainer)
            if monitor.meter is None:
                return items
            joules = monitor.spent_j()
        except Exception:  # no monitor, or a failing counter: Lightning's bar as it is
            return items
        items["energy"] = f"{joules:.3g} J"
        if self._t0 is not None and time.monotonic() > self._t0:
            items["power"] = f"{joules / (time.monotonic() - self._t0):.3g} W"
        return items
