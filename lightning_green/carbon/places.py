"""Grid carbon intensity by place: the offline table that ships with the package.

``carbon_intensity`` (EnergyMonitor, ``energy.carbon_intensity`` in the config tree) takes a
number in gCO2e/kWh (``method: "given"``) or a place of the table (``method: "table"``), built by
``tools/build_grid_intensity.py`` (sources and licences in ``NOTICE.md`` beside it): a country by
ISO 3166 code (``"DE"``, ``"FRA"``, ``"USA"``) or name, a sub-national grid (``"US-CA"``,
``"CA-QC"``, ``"AU-NSW"``, ``"CN-BJ"``, Nordic bidding zones ``"SE3"``), or a cloud region
(``"aws:eu-west-1"``, ``"gcp:europe-west4"``, ``"azure:westeurope"``); the default ``"WORLD"`` is
the IEA's 2019 world average, 475 g/kWh. Live values: :mod:`lightning_green.carbon.providers`.

Example::

    >>> from lightning_green.carbon.places import lookup, parse_intensity
    >>> de = lookup("de")
    >>> de.place, de.year, de.method
    ('DE', '2024', 'table')
    >>> parse_intensity(56).g_per_kwh, parse_intensity("56").method
    (56.0, 'given')
"""

from __future__ import annotations

import csv
import difflib
import functools
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any

from lightning_green._checks import UserInputError, check_number

#: The table, as package data: ``lightning_green/<TABLE_PATH>`` (its NOTICE.md beside it).
TABLE_PATH = "energy/data/grid_intensity.csv"
#: The default place: the IEA's 2019 world average.
DEFAULT_PLACE = "WORLD"
PLACE_HELP = (
    "gCO2e/kWh (a number >= 0), a country code (DE, FRA, USA), a grid region (US-CA, CA-QC, "
    "AU-NSW, CN-BJ, SE3) or a cloud region (aws:eu-west-1, gcp:europe-west4, azure:westeurope), "
    "as `lightning-green carbon` lists them"
)


@dataclass(frozen=True)
class Intensity:
    """A grid carbon intensity and where it came from."""

    g_per_kwh: float
    place: str
    name: str
    source: str
    year: str = ""
    scope: str = ""
    #: ``given`` (a number), ``table``, ``live:<provider>``, or ``table (live unavailable: why)``.
    method: str = "table"
    #: Unix time the live value was published for (``None`` for a table value).
    at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def given(value: float, name: str = "carbon_intensity") -> Intensity:
    g = check_number(name, value, minimum=0.0, unit="gCO2e per kWh")
    return Intensity(g, "given", "given by the user", "given by the user", method="given")


@functools.cache
def table() -> dict[str, dict[str, str]]:
    """The packaged table, keyed by upper-case place and alias (``"DE"``, ``"DEU"``, ``"AWS:EU-WEST-1"``)."""
    text = resources.files("lightning_green").joinpath(TABLE_PATH).read_text("utf-8")
    rows: dict[str, dict[str, str]] = {}
    for row in csv.DictReader(text.splitlines()):
        for key in (row["place"], *filter(None, row["aliases"].split("|"))):
            rows[key.upper()] = row
    for row in list(rows.values()):  # countries by name too ("Germany"), codes first
        if row["kind"] == "country":
            rows.setdefault(row["name"].upper(), row)
    return rows


def lookup(place: str, name: str = "carbon_intensity") -> Intensity:
    """The table's intensity for ``place`` (case-insensitive); ``UserInputError`` naming ``name`` if unknown."""
    row = table().get(place.strip().upper())
    if row is None:
        close = difflib.get_close_matches(place.strip().upper(), table(), n=3, cutoff=0.7)
        hint = f" (close: {', '.join(close)})" if close else ""
        raise UserInputError(f"{name} must be {PLACE_HELP}; got {place!r}{hint}")
    return Intensity(
        float(row["g_per_kwh"]), row["place"], row["name"], row["source"], row["year"], row["scope"]
    )


def parse_intensity(value: object, name: str = "carbon_intensity") -> Intensity:
    """A number (or numeric string) in gCO2e/kWh, or a place of the table."""
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None  # a place: looked up outside this handler, so its error stands alone
        return lookup(value, name) if number is None else given(number, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserInputError(f"{name} must be {PLACE_HELP}; got {value!r}")
    return given(float(value), name)
