"""Where the intensity in force comes from: a fixed value, or a live public API.

A provider of live intensity (:class:`UKCarbonIntensity`, :class:`ElectricityMapsIntensity`, or
your own :class:`IntensityProvider`), in the config tree ``energy.carbon_live=uk``, ``uk:13`` (a
GB region), ``electricitymaps`` or ``electricitymaps:DE``.

A live provider fetches once when the fit starts (at most ``timeout_s`` for the whole fetch,
however slowly the server answers; at most 1 MiB read: :mod:`lightning_green.carbon.fetch`), then
refreshes in a background thread when its value is older than ``refresh_s``: the training thread
never waits on the network. Offline, without a key, or on any error (a cut or garbled answer, a
redirect that would carry the API key to another origin or from https to http) it falls back to
the table's value for its place and says so (``method: "table (live unavailable: ...)"``), and
asks again ``refresh_s`` later. Every window records the intensity in force when it closed, and
CO2e is the sum over windows.

Example::

    >>> from lightning_green.carbon.providers import make_intensity
    >>> make_intensity(56).current().g_per_kwh
    56.0
    >>> make_intensity("FR").current().place
    'FR'
"""

from __future__ import annotations

import math
import os
import threading
import time
import urllib.parse
import warnings
from dataclasses import replace
from datetime import datetime
from typing import Any

from lightning_green._checks import UserInputError, check_number
from lightning_green.carbon.fetch import LiveIntensityError, get_json
from lightning_green.carbon.places import DEFAULT_PLACE, Intensity, parse_intensity, table

ELECTRICITYMAPS_KEY_ENV = "ELECTRICITYMAPS_API_KEY"
LIVE_HELP = "null, uk, uk:<GB region id 1-17>, electricitymaps or electricitymaps:<zone>"
#: The most characters of a failure's reason kept in a record's label.
_REASON_CHARS = 200


class IntensityProvider:
    """The grid intensity in force now. Subclass for your own source; :meth:`current` must be cheap."""

    def start(self) -> None:
        """Called when a fit starts (may block briefly, e.g. for a first fetch)."""

    def current(self) -> Intensity:
        raise NotImplementedError

    def close(self) -> None:
        """Called when the fit ends."""


class FixedIntensity(IntensityProvider):
    """One value for the whole run: a number or a table row."""

    def __init__(self, intensity: Intensity) -> None:
        self.intensity = intensity

    def current(self) -> Intensity:
        return self.intensity


class LiveIntensity(IntensityProvider):
    """A provider that polls a public API, with a timeout, a cache and a table fallback.

    Args:
        fallback: The table value (or number) used until the first fetch and whenever fetching fails.
        timeout_s: Seconds one fetch may take in all: connect, headers and body (the first one
            blocks ``start`` at most this long).
        refresh_s: Seconds a value stays fresh; older, the next :meth:`current` refreshes it in
            a background thread and returns the value it has meanwhile.
        base_url: The API's root (override for a proxy, a mirror or a test server).
    """

    provider = "live"
    default_url = ""

    def __init__(
        self,
        fallback: Intensity | float | str = DEFAULT_PLACE,
        timeout_s: float = 3.0,
        refresh_s: float = 900.0,
        base_url: str | None = None,
    ) -> None:
        self.fallback = fallback if isinstance(fallback, Intensity) else parse_intensity(fallback)
        self.timeout_s = check_number("timeout_s", timeout_s, above=0.0, unit="seconds")
        self.refresh_s = check_number("refresh_s", refresh_s, above=0.0, unit="seconds")
        self.base_url = (base_url or self.default_url).rstrip("/")
        if not self.base_url.startswith(("http://", "https://")):
            raise UserInputError(f"base_url must be an http(s) URL, got {base_url!r}")
        self._lock = threading.Lock()
        self._latest: Intensity = self._fallback("not fetched yet")
        self._fetched_at = -math.inf
        self._refreshing: threading.Thread | None = None
        self._warned = False
        self.fetches = 0
        self.failures = 0

    def fetch(self) -> Intensity:
        """One request to the API; raises :class:`LiveIntensityError` on failure."""
        raise NotImplementedError

    def _fallback(self, reason: str) -> Intensity:
        if len(reason) > _REASON_CHARS:  # a record's label, not a dump of what the server sent
            reason = reason[: _REASON_CHARS - 3] + "..."
        return replace(self.fallback, method=f"{self.fallback.method} (live unavailable: {reason})")

    def refresh(self) -> Intensity:
        """Fetch now (blocking, at most about ``timeout_s``) and return the value in force.

        Never raises: any failure, including a subclass's own bug, becomes the table fallback
        labelled with the reason, and counts as a fetch, so the next one waits ``refresh_s`` like
        after a success (a failing server is not asked again at every window).
        """
        try:
            value = self.fetch()
        except Exception as err:
            reason = str(err) if isinstance(err, LiveIntensityError) else f"{self.provider} failed ({err!r})"
            value = self._fallback(reason)
            with self._lock:
                self.failures += 1
                warn, self._warned = not self._warned, True
            if warn:
                warnings.warn(
                    f"lightning-green: live carbon intensity from {self.provider} unavailable ({reason}); using "
                    f"{self.fallback.place} {self.fallback.g_per_kwh:g} g/kWh from the table until it answers",
                    stacklevel=2,
                )
        with self._lock:
            self.fetches += 1
            self._latest = value
            self._fetched_at = time.monotonic()
        return value

    def start(self) -> None:
        """Fetch unless the value is fresh (a test after a fit reuses the fit's), or wait for the
        background refresh already in flight rather than start a second fetch beside it."""
        with self._lock:
            in_flight = self._refreshing if self._refreshing and self._refreshing.is_alive() else None
            stale = time.monotonic() - self._fetched_at > self.refresh_s
        if in_flight is not None:
            in_flight.join(timeout=self.timeout_s)
        elif stale:
            self.refresh()

    def current(self) -> Intensity:
        with self._lock:
            latest, stale = self._latest, time.monotonic() - self._fetched_at > self.refresh_s
            if stale and (self._refreshing is None or not self._refreshing.is_alive()):
                self._refreshing = threading.Thread(target=self.refresh, name="lg-carbon", daemon=True)
                self._refreshing.start()
        return latest

    def close(self) -> None:
        thread = self._refreshing
        if thread is not None:
            thread.join(timeout=self.timeout_s)


def _iso_time(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except (ValueError, AttributeError):
        return None


class UKCarbonIntensity(LiveIntensity):
    """Great Britain's grid from the Carbon Intensity API (NESO; no key; https://carbonintensity.org.uk).

    National (``region=None``): the half hour's actual intensity, else its forecast. A region
    (1-17, e.g. 13 = London): the regional forecast, the only figure the API gives per region.
    """

    provider = "uk-carbon-intensity"
    default_url = "https://api.carbonintensity.org.uk"

    def __init__(self, region: int | None = None, fallback: Intensity | float | str = "GB", **kwargs: Any):
        if region is not None and (
            isinstance(region, bool) or not isinstance(region, int) or not 1 <= region <= 17
        ):
            raise UserInputError(f"region must be a GB region id 1-17 or None, got {region!r}")
        self.region = region
        super().__init__(fallback=fallback, **kwargs)

    def fetch(self) -> Intensity:
        if self.region is None:
            body = get_json(f"{self.base_url}/intensity", timeout_s=self.timeout_s)
            try:
                period = body["data"][0]
                figures = period["intensity"]
                value = figures["actual"] if figures.get("actual") is not None else figures["forecast"]
                kind = "actual" if figures.get("actual") is not None else "forecast"
            except (KeyError, IndexError, TypeError) as err:
                raise LiveIntensityError(f"unexpected answer from {self.base_url}/intensity") from err
            place, name = "GB", "Great Britain"
        else:
            url = f"{self.base_url}/regional/regionid/{self.region}"
            body = get_json(url, timeout_s=self.timeout_s)
            try:
                region = body["data"][0]
                period = region["data"][0]
                value, kind = period["intensity"]["forecast"], "forecast"
            except (KeyError, IndexError, TypeError) as err:
                raise LiveIntensityError(f"unexpected answer from {url}") from err
            place, name = f"GB-region-{self.region}", str(region.get("shortname") or f"region {self.region}")
        g = _live_number(value, self.provider)
        return Intensity(
            g, place, name, f"Carbon Intensity API, {kind} for {period.get('from', '?')}",
            year=str(period.get("from", ""))[:4], scope="CO2, generation (GB)",
            method=f"live:{self.provider}", at=_iso_time(period.get("from", "")),
        )  # fmt: skip


class ElectricityMapsIntensity(LiveIntensity):
    """Any Electricity Maps zone's latest intensity (needs a key: ``api_key`` or ``$ELECTRICITYMAPS_API_KEY``)."""

    provider = "electricitymaps"
    default_url = "https://api.electricitymaps.com/v3"

    def __init__(self, zone: str, api_key: str | None = None, fallback: Intensity | float | str | None = None,
                 **kwargs: Any):  # fmt: skip
        if not isinstance(zone, str) or not zone.strip():
            raise UserInputError(
                f"zone must be an Electricity Maps zone such as 'DE' or 'US-CAL-CISO', got {zone!r}"
            )
        self.zone = zone.strip()
        self.api_key = api_key if api_key is not None else os.environ.get(ELECTRICITYMAPS_KEY_ENV)
        if fallback is None:
            fallback = self.zone if self.zone.upper() in table() else DEFAULT_PLACE
        super().__init__(fallback=fallback, **kwargs)

    def fetch(self) -> Intensity:
        if not self.api_key:
            raise LiveIntensityError(f"no API key (set {ELECTRICITYMAPS_KEY_ENV})")
        url = f"{self.base_url}/carbon-intensity/latest?{urllib.parse.urlencode({'zone': self.zone})}"
        body = get_json(url, headers={"auth-token": self.api_key}, timeout_s=self.timeout_s)
        if not isinstance(body, dict) or "carbonIntensity" not in body:
            raise LiveIntensityError(f"unexpected answer from {url}")
        g = _live_number(body["carbonIntensity"], self.provider)
        estimated = " (estimated by Electricity Maps)" if body.get("isEstimated") else ""
        return Intensity(
            g, str(body.get("zone", self.zone)), str(body.get("zone", self.zone)),
            f"Electricity Maps, latest for {body.get('datetime', '?')}{estimated}",
            year=str(body.get("datetime", ""))[:4], scope=f"{body.get('emissionFactorType', 'lifecycle')} CO2e",
            method=f"live:{self.provider}", at=_iso_time(str(body.get("datetime", ""))),
        )  # fmt: skip


def _live_number(value: object, provider: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise LiveIntensityError(f"{provider} answered {value!r}, not an intensity")
    return float(value)


def make_intensity(
    value: object = DEFAULT_PLACE,
    live: str | None = None,
    live_url: str | None = None,
    name: str = "carbon_intensity",
) -> IntensityProvider:
    """A provider from the user's settings (see the module's docstring); errors name the setting."""
    if isinstance(value, IntensityProvider):
        if live is not None:
            raise UserInputError("carbon_live must be null when carbon_intensity is a provider")
        return value
    fixed = parse_intensity(value, name)
    if live is None:
        return FixedIntensity(fixed)
    kind, _, arg = str(live).partition(":")
    fallback: Intensity | None = fixed if fixed.place != DEFAULT_PLACE else None
    if kind == "uk":
        if arg and not arg.isdigit():
            raise UserInputError(f"carbon_live must be {LIVE_HELP}; got {live!r}")
        return UKCarbonIntensity(int(arg) if arg else None, fallback=fallback or "GB", base_url=live_url)
    if kind == "electricitymaps":
        zone = arg or (fixed.place if fixed.method == "table" and fixed.place != DEFAULT_PLACE else "")
        if not zone:
            raise UserInputError(
                f"carbon_live must name a zone (electricitymaps:DE) or carbon_intensity a place; got {live!r}"
            )
        return ElectricityMapsIntensity(zone, fallback=fallback, base_url=live_url)
    raise UserInputError(f"carbon_live must be {LIVE_HELP}; got {live!r}")
