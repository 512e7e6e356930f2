"""Energy to kWh and CO2-equivalent.

``kWh = joules / 3.6e6``; ``CO2e (g) = kWh x PUE x carbon intensity (g/kWh)``, with the intensity
in force when each window closed (a number, a place of the packaged table,
:mod:`lightning_green.carbon.places`, or a live provider, :mod:`lightning_green.carbon.providers`). Operational emissions only: embodied carbon (making the
hardware) is not included.

Defaults: ``"WORLD"``, 475 gCO2e/kWh, the IEA's 2019 world-average electricity carbon intensity
(IEA, Global Energy & CO2 Status Report 2019, also CodeCarbon's world default), and PUE 1.0 (no
facility overhead: the figure is for the measured devices alone; the Uptime Institute's 2023
survey puts the average data-centre PUE at 1.58).

Example::

    >>> from lightning_green.carbon import CarbonModel
    >>> model = CarbonModel("FR", pue=1.5)
    >>> model.current().place, model.kwh(3.6e6)
    ('FR', 1.0)
    >>> round(model.co2e_g(3.6e6) / model.current().g_per_kwh, 6)  # kWh x PUE
    1.5
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace

from lightning_green._checks import check_number
from lightning_green.carbon.places import DEFAULT_PLACE, Intensity, lookup, parse_intensity
from lightning_green.carbon.providers import IntensityProvider, make_intensity

DEFAULT_INTENSITY_G_PER_KWH = 475.0
DEFAULT_CARBON_INTENSITY = DEFAULT_PLACE
DEFAULT_PUE = 1.0
JOULES_PER_KWH = 3.6e6
#: Bounds on what is physically possible, so that a typo (an extra zero, a unit slip) fails before
#: training rather than scaling every CO2e figure: the dirtiest grids are about 1,000-1,300 g/kWh
#: (Turkmenistan 1,306, the packaged table's highest; a lignite plant alone about 1,200), and
#: facilities report a PUE of 1.1 (hyperscale) to the 2.5 that was the average in 2007.
MAX_INTENSITY_G_PER_KWH = 5000.0
MAX_PUE = 5.0
INTENSITY_WHY = (
    "the dirtiest grids are about 1000-1300 g/kWh (Turkmenistan 1306, the packaged table's highest)"
)
PUE_WHY = "data centres average 1.58 (Uptime Institute 2023; 2.5 in 2007), hyperscale ones about 1.1"
COVERS = (
    "operational emissions of the measured energy: kWh x PUE x grid intensity in force when each window "
    "closed; embodied carbon (making the hardware) and facility overhead beyond PUE are not included"
)


@dataclass(frozen=True)
class CarbonModel:
    """Converts joules to kWh and grams of CO2e.

    ``intensity``: gCO2e/kWh, a place (``"DE"``, ``"aws:eu-west-1"``) or an
    :class:`~lightning_green.carbon.IntensityProvider`; ``live``: ``"uk"``, ``"electricitymaps"``...

    Raises:
        ValueError: If the intensity is negative, above ``MAX_INTENSITY_G_PER_KWH`` or unknown, or
            ``pue`` is below 1 or above ``MAX_PUE``.
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
        if not isinstance(self.intensity, IntensityProvider):
            # Every intensity a user gives (EnergyMonitor's argument, energy.carbon_intensity) passes
            # here, and a live provider's fallback with it; a provider object is checked per value.
            g_per_kwh = parse_intensity(self.intensity, "carbon_intensity").g_per_kwh
            check_number(
                "carbon_intensity",
                g_per_kwh,
                minimum=0.0,
                maximum=MAX_INTENSITY_G_PER_KWH,
                unit="gCO2e per kWh",
                why=INTENSITY_WHY,
            )
        check_number(
            "pue", self.pue, minimum=1.0, maximum=MAX_PUE, unit="facility energy / IT energy", why=PUE_WHY
        )

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
            intensity = self.provider.current()
            # A live source (or the user's provider) can answer what no grid emits: not used.
            check_number(
                "intensity", intensity.g_per_kwh, minimum=0.0, maximum=MAX_INTENSITY_G_PER_KWH, unit="g/kWh"
            )
            return intensity
        except Exception as err:
            self._warn(f"lightning-green: the carbon intensity provider failed ({err!r}); using WORLD")
            return replace(lookup(DEFAULT_PLACE), method=f"table (provider failed: {err!r})"[:200])

    @property
    def intensity_g_per_kwh(self) -> float:
        return self.current().g_per_kwh

    def co2e_g(self, joules: float, intensity: Intensity | None = None) -> float:
        g_per_kwh = (intensity or self.current()).g_per_kwh
        return self.kwh(joules) * self.pue * g_per_kwh
