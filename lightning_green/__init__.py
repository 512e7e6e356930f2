"""lightning-green: energy-aware training for PyTorch Lightning.

Example::

    from lightning import Trainer
    from lightning_green import EnergyMonitor

    trainer = Trainer(callbacks=[EnergyMonitor()])
"""

from lightning_green.callbacks import (
    EnergyBudget,
    EnergyEfficientStopping,
    EnergyMonitor,
    LayerEnergyProfiler,
    StopAtTarget,
)

__version__ = "0.1.0"
__all__ = [
    "EnergyBudget",
    "EnergyEfficientStopping",
    "EnergyMonitor",
    "LayerEnergyProfiler",
    "StopAtTarget",
    "__version__",
]
