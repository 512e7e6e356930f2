"""Energy meters: how joules are read. Nothing here imports Lightning.

Example::

    from lightning_green.energy import make_meter
    meter = make_meter("auto")
    meter.start()
    ...  # work
    reading = meter.stop()
    print(reading.joules, reading.sources)
"""

from lightning_green.energy.base import CompositeMeter, Meter, MeterUnavailableError
from lightning_green.energy.carbon import CarbonModel
from lightning_green.energy.estimate import DEFAULT_WATTS_PER_CORE, EstimateMeter
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
    "EstimateMeter",
    "Meter",
    "MeterUnavailableError",
    "NvmlMeter",
    "RaplMeter",
    "Reading",
    "SelectedMeter",
    "ZeusMeter",
    "check_backend",
    "make_meter",
    "merge_parallel",
    "merge_readings",
]
