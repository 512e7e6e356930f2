"""Carbon: the grid's carbon intensity by place and time, and the CO2e of measured energy.

Beside :mod:`lightning_green.energy` (which reads joules), not on top of it: nothing here imports
the meters, Lightning, Hydra or Ray, so ``lightning-green carbon`` answers at once.

- :mod:`~lightning_green.carbon.places`: the offline table (:func:`lookup`) and :class:`Intensity`;
- :mod:`~lightning_green.carbon.providers`: the intensity in force now, fixed or live
  (:class:`UKCarbonIntensity`, :class:`ElectricityMapsIntensity`, your own
  :class:`IntensityProvider`), built from the user's settings by :func:`make_intensity`;
- :mod:`~lightning_green.carbon.fetch`: the bounded HTTP GET the live providers use;
- :mod:`~lightning_green.carbon.co2e`: :class:`CarbonModel`, joules to kWh and grams of CO2e.

Example::

    >>> from lightning_green.carbon import CarbonModel, lookup
    >>> lookup("Germany").place
    'DE'
    >>> CarbonModel(400.0).co2e_g(3.6e6)  # 1 kWh at 400 g/kWh, PUE 1.0
    400.0
"""

from lightning_green.carbon.co2e import JOULES_PER_KWH, CarbonModel
from lightning_green.carbon.fetch import LiveIntensityError
from lightning_green.carbon.places import Intensity, lookup
from lightning_green.carbon.providers import (
    ElectricityMapsIntensity,
    FixedIntensity,
    IntensityProvider,
    LiveIntensity,
    UKCarbonIntensity,
    make_intensity,
)

__all__ = [
    "JOULES_PER_KWH",
    "CarbonModel",
    "ElectricityMapsIntensity",
    "FixedIntensity",
    "Intensity",
    "IntensityProvider",
    "LiveIntensity",
    "LiveIntensityError",
    "UKCarbonIntensity",
    "lookup",
    "make_intensity",
]
