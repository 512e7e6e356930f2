"""lightning-green: energy-aware training for PyTorch Lightning.

Example::

    from lightning import Trainer
    from lightning_green import EnergyMonitor

    trainer = Trainer(callbacks=[EnergyMonitor()])

Outside Lightning, ``with lightning_green.measure() as m:`` (or ``@lightning_green.measure()``)
gives the same labelled reading.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lightning_green.callbacks import (
        EnergyBudget,
        EnergyEfficientStopping,
        EnergyMonitor,
        LayerEnergyProfiler,
        StopAtTarget,
    )
    from lightning_green.energy.measure import measure

__version__ = "0.1.0"
__all__ = [
    "EnergyBudget",
    "EnergyEfficientStopping",
    "EnergyMonitor",
    "LayerEnergyProfiler",
    "StopAtTarget",
    "__version__",
    "measure",
]

_CALLBACKS = frozenset(__all__) - {"__version__", "measure"}


def __getattr__(name: str) -> Any:
    if name == "measure":  # no Lightning needed: a plain PyTorch loop measures with it
        from lightning_green.energy.measure import measure

        globals()[name] = measure
        return measure
    # The callbacks import Lightning (seconds); importing them on first use keeps `lightning-green
    # --help`, `carbon` and every other `import lightning_green.<module>` that needs no Lightning fast.
    if name in _CALLBACKS:
        value = getattr(importlib.import_module("lightning_green.callbacks"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_CALLBACKS, "measure"})
