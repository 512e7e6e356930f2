"""Lightning callbacks that turn meter readings into records and logged metrics."""

from lightning_green.callbacks.energy_monitor import EnergyMonitor
from lightning_green.callbacks.layer_profiler import LayerEnergyProfiler

__all__ = ["EnergyMonitor", "LayerEnergyProfiler"]
