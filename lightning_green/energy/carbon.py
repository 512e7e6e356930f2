"""Energy to kWh and CO2-equivalent.

``kWh = joules / 3.6e6``; ``CO2e (g) = kWh x PUE x carbon intensity (g/kWh)``, with the intensity
in force when each window closed (a number, a place of the packaged table, or a live provider:
see :mod:`lightning_green.energy.grid`). Operational emissions only: embodied carbon (making the
hardware) is not included.

Defaults: ``"WORLD"``, 475 gCO2e/kWh, the IEA's 2019 world-average electricity carbon intensity
(IEA, Global Energy & CO2 Status Report 2019, also CodeCarbon's world default), and PUE 1.0 (no
facility overhead: the figure is for the measured devices alone; the Uptime Institute's 2023
survey puts the average data-centre PUE at 1.58).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace

from lightning_green._checks import check_number
from lightning_green.energy.grid import DEFAULT_PLACE, Intensity, IntensityProvider, lookup, make_intensity

DEFAULT_INTENSITY_G_PER_KWH = 475.0
DEFAULT_CARBON_INTENSITY = DEFAULT_PLACE
DEFAULT_PUE = 1.0
JOULES_PER_KWH = 3.6e6
COVERS = (
    "operational emissions of the measured energy: kWh x PUE x grid intensity in force when each window "
    "closed; embodied carbon (making the hardware) and facility overhead beyond PUE are not included"
)


@dataclass(frozen=True)
class CarbonModel:
    """Converts joules to kWh and grams of CO2e.

    ``intensity``: gCO2e/kWh, a place (``"DE"``, ``"aws:eu-west-1"``) or an
    :class:`~lightning_green.energy.grid.IntensityProvider`; ``live``: ``"uk"``, ``"electricitymaps"``...

    Raises:
        ValueError: If the intensity is negative or unknown, or ``pue`` is below 1.
    """

    intensity: float | str | IntensityProvider = DEFAULT_CARBON_INTENSITY
    pue: float = DEFAULT_PUE
    live: str | None = None
    live_url: str | None = None
    provider: IntensityProvider = field(init=False, repr=False, compare=False)
    #: One warning per model for a failing provider (a set, so the frozen model can record it).
    _warned: set[str] = field(default_factory=set, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "provider",
            make_intensity(self.intensity, self.live, self.live_url, name="carbon_intensity"),
        )
        check_number("pue", self.pue, minimum=1.0, unit="facility energy / IT energy")

    def _warn(self, message: str) -> None:
        if not self._warned:
            self._warned.add(message)
            warnings.warn(message, stacklevel=3)

    @staticmethod
    def kwh(joules: float) -> float:
        return joules / JOULES_PER_KWH

    def start(self) -> None:
        """Start the provider (a live one's first fetch); a failing provider never ends training."""
        try:
            self.provider.start()
        except Exception as err:
            self._warn(f"lightning-green: the carbon intensity provider failed to start ({err!r})")

    def close(self) -> None:
        try:
            self.provider.close()
        except Exception as err:
            self._warn(f"lightning-green: the carbon intensity provider failed to close ({err!r})")

    def current(self) -> Intensity:
        """The intensity in force now; the table's world average, labelled, if the provider fails."""
        try:
            return self.provider.current()
        except Exception as err:
            self._warn(f"lightning-green: the carbon intensity provider failed ({err!r}); using WORLD")
            return replace(lookup(DEFAULT_PLACE), method=f"table (provider failed: {err!r})"[:200])

    @property
    def intensity_g_per_kwh(self) -> float:
        return self.current().g_per_kwh

    def co2e_g(self, joules: float, intensity: Intensity | None = None) -> float:
        g_per_kwh = (intensity or self.current()).g_per_kwh
        return self.kwh(joules) * self.pue * g_per_kwh
