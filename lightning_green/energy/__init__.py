"""Energy meters: how joules are read. Nothing here imports Lightning.

What this package exports is what a user calls: :func:`make_meter` (the best meter this machine
has) or a meter class, :class:`measure` around a block, the :class:`Reading` a window gives (one
:class:`DomainEnergy` per domain and device), :class:`IdleBaseline` (idle watts, for dynamic
energy) and :class:`MeterUnavailableError`. Everything else lives in its module
(``lightning_green.energy.select.check_backend``); carbon is :mod:`lightning_green.carbon`.

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

import importlib
import warnings
from typing import Any

from lightning_green.energy.base import Meter, MeterUnavailableError
from lightning_green.energy.baseline import IdleBaseline
from lightning_green.energy.estimate import EstimateMeter
from lightning_green.energy.measure import measure
from lightning_green.energy.nvml import NvmlMeter
from lightning_green.energy.rapl import RaplMeter
from lightning_green.energy.reading import DomainEnergy, Reading
from lightning_green.energy.select import make_meter
from lightning_green.energy.zeus_backend import ZeusMeter

__all__ = [
    "DomainEnergy",
    "EstimateMeter",
    "IdleBaseline",
    "Meter",
    "MeterUnavailableError",
    "NvmlMeter",
    "RaplMeter",
    "Reading",
    "ZeusMeter",
    "make_meter",
    "measure",
]

#: Names this package exported before it kept to the user API, and the module each lives in:
#: ``from lightning_green.energy import <name>`` still works, with a DeprecationWarning saying where
#: to import it from. (Imported by name on first use, so this package does not import carbon/.)
_MOVED = {
    "BACKENDS": "lightning_green.energy.select",
    "SelectedMeter": "lightning_green.energy.select",
    "check_backend": "lightning_green.energy.select",
    "CompositeMeter": "lightning_green.energy.base",
    "DEFAULT_WATTS_PER_CORE": "lightning_green.energy.estimate",
    "merge_parallel": "lightning_green.energy.reading",
    "merge_readings": "lightning_green.energy.reading",
    "CarbonModel": "lightning_green.carbon",
    "ElectricityMapsIntensity": "lightning_green.carbon",
    "Intensity": "lightning_green.carbon",
    "IntensityProvider": "lightning_green.carbon",
    "UKCarbonIntensity": "lightning_green.carbon",
    "lookup": "lightning_green.carbon",
}


def __getattr__(name: str) -> Any:
    module = _MOVED.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"lightning_green.energy.{name} is not part of the energy API: import it from {module}",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(importlib.import_module(module), name)
