"""Energy to kWh and CO2-equivalent.

``kWh = joules / 3.6e6``; ``CO2e (g) = kWh x PUE x carbon intensity (g/kWh)``.

Defaults: 475 gCO2e/kWh, the IEA's 2019 world-average electricity carbon intensity (IEA, Global
Energy & CO2 Status Report 2019, also CodeCarbon's world default), and PUE 1.0 (no facility
overhead: the figure is for the measured devices alone; the Uptime Institute's 2023 survey puts
the average data-centre PUE at 1.58).
"""

from __future__ import annotations

from dataclasses import dataclass

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
        if not isinstance(self.intensity_g_per_kwh, (int, float)) or self.intensity_g_per_kwh < 0:
            raise ValueError(
                f"carbon_intensity_g_per_kwh must be a number >= 0 (gCO2e per kWh), got {self.intensity_g_per_kwh!r}"
            )
        if not isinstance(self.pue, (int, float)) or self.pue < 1.0:
            raise ValueError(f"pue must be a number >= 1.0 (facility / IT energy), got {self.pue!r}")

    @staticmethod
    def kwh(joules: float) -> float:
        return joules / JOULES_PER_KWH

    def co2e_g(self, joules: float) -> float:
        return self.kwh(joules) * self.pue * self.intensity_g_per_kwh
