"""Lightning callbacks that turn meter readings into records and logged metrics, and act on them."""

from lightning_green.callbacks.energy_budget import EnergyBudget
from lightning_green.callbacks.energy_efficient_stopping import EnergyEfficientStopping
from lightning_green.callbacks.energy_monitor import EnergyMonitor
from lightning_green.callbacks.layer_profiler import LayerEnergyProfiler
from lightning_green.callbacks.stop_at_target import StopAtTarget

__all__ = ["EnergyBudget", "EnergyEfficientStopping", "EnergyMonitor", "LayerEnergyProfiler", "StopAtTarget"]
