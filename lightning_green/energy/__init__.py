"""Energy meters: how joules are read. Nothing here imports Lightning.

Example::

    >>> from lightning_green.energy import make_meter
    >>> meter = make_meter("auto")  # the best this machine has: NVML, RAPL, else the CPU-time estimate
    >>> meter.start()
    >>> _ = sum(range(10**5))  # work
    >>> reading = meter.stop()
    >>> reading.complete and all(s.startswith(("measured:", "estimated:")) for s in reading.sources.values())
    True
    >>> meter.close()
"""

from lightning_green.energy.base import CompositeMeter, Meter, MeterUnavailableError
from lightning_green.energy.carbon import CarbonModel
from lightning_green.energy.estimate import DEFAULT_WATTS_PER_CORE, EstimateMeter
from lightning_green.energy.grid import (
    ElectricityMapsIntensity,
    Intensity,
    IntensityProvider,
    UKCarbonIntensity,
    lookup,
)
from lightning_green.energy.measure import measure
from lightning_green.energy.nvml import NvmlMeter
from lightning_green.energy.rapl import RaplMeter
from lightning_green.energy.reading import DomainEnergy, Reading, merge_parallel, merge_readings
from lightning_green.energy.select import BACKENDS, SelectedMeter, check_backend, make_meter
from lightning_green.energy.zeus_backend import ZeusMeter

__all__ = [
    "BACKENDS",
    "DEFAULT_WATTS_PER_CORE",
    "CarbonModel",
    "CompositeMeter",
    "DomainEnergy",
    "ElectricityMapsIntensity",
    "EstimateMeter",
    "Intensity",
    "IntensityProvider",
    "Meter",
    "MeterUnavailableError",
    "NvmlMeter",
    "RaplMeter",
    "Reading",
    "SelectedMeter",
    "UKCarbonIntensity",
    "ZeusMeter",
    "check_backend",
    "lookup",
    "make_meter",
    "measure",
    "merge_parallel",
    "merge_readings",
]
