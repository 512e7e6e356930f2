"""Lightning callbacks that turn meter readings into records and logged metrics."""

from lightning_green.callbacks.energy_monitor import EnergyMonitor

__all__ = ["EnergyMonitor"]
