"""Energy to kWh and CO2-equivalent.

``kWh = joules / 3.6e6``; ``CO2e (g) = kWh x PUE x carbon intensity (g/kWh)``.

Defaults: 475 gCO2e/kWh, the IEA's 2019 world-average electricity carbon intensity (IEA, Global
Energy & CO2 Status Report 2019, also CodeCarbon's world default), and PUE 1.0 (no facility
overhead: the figure is for the measured devices alone; the Uptime Institute's 2023 survey puts
the average data-centre PUE at 1.58).
"""

from __future__ import annotations

from dataclasses import dataclass

from lightning_green._checks import check_number

DEFAULT_INTENSITY_G_PER_KWH = 475.0
DEFAULT_PUE = 1.0
JOULES_PER_KWH = 3.6e6


@dataclass(frozen=True)
class CarbonModel:
    """Converts joules to kWh and grams of CO2e.

    Raises:
        ValueError: If ``intensity_g_per_kwh`` is negative or ``pue`` is below 1.
    """

    intensity_g_per_kwh: float = DEFAULT_INTENSITY_G_PER_KWH
    pue: float = DEFAULT_PUE

    def __post_init__(self) -> None:
        check_number(
            "carbon_intensity_g_per_kwh", self.intensity_g_per_kwh, minimum=0.0, unit="gCO2e per kWh"
        )
        check_number("pue", self.pue, minimum=1.0, unit="facility energy / IT energy")

    @staticmethod
    def kwh(joules: float) -> float:
        return joules / JOULES_PER_KWH

    def co2e_g(self, joules: float) -> float:
        return self.kwh(joules) * self.pue * self.intensity_g_per_kwh
