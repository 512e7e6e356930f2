"""Grid carbon intensity: by place from an offline table, or live from a public API.

``carbon_intensity`` (EnergyMonitor, ``energy.carbon_intensity`` in the config tree) takes

- a number, in gCO2e/kWh (``method: "given"``);
- a place in the table that ships with the package (``data/grid_intensity.csv``, built by
  ``tools/build_grid_intensity.py``; sources and licences in ``data/NOTICE.md``): a country by ISO
  3166 code (``"DE"``, ``"FRA"``, ``"USA"``), a sub-national grid (``"US-CA"``, ``"CA-QC"``,
  ``"AU-NSW"``, ``"CN-BJ"``, Nordic bidding zones ``"SE3"``), or a cloud region (``"aws:eu-west-1"``,
  ``"gcp:europe-west4"``, ``"azure:westeurope"``); the default ``"WORLD"`` is the IEA's 2019
  world average, 475 g/kWh (``method: "table"``);
- a provider of live intensity (:class:`UKCarbonIntensity`, :class:`ElectricityMapsIntensity`,
  or your own :class:`IntensityProvider`), or in the config tree ``energy.carbon_live=uk``,
  ``uk:13`` (a GB region), ``electricitymaps`` or ``electricitymaps:DE``.

A live provider fetches once when the fit starts (at most ``timeout_s`` for the whole fetch,
however slowly the server answers; at most 1 MiB read), then refreshes in a background thread
when its value is older than ``refresh_s``: the training thread never waits on the network.
Offline, without a key, or on any error (a cut or garbled answer, a redirect that would carry the
API key to another origin or from https to http) it falls back to the table's value for its place
and says so (``method: "table (live unavailable: ...)"``), and asks again ``refresh_s`` later.
Every window records the intensity in force when it closed, and CO2e is the sum over windows.

Example::

    >>> from lightning_green.energy.grid import lookup, make_intensity
    >>> de = lookup("de")
    >>> de.place, de.year, de.method
    ('DE', '2024', 'table')
    >>> make_intensity(56).current().g_per_kwh
    56.0
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import functools
import http.client
import json
import math
import os
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from importlib import resources
from typing import Any

from lightning_green._checks import UserInputError, check_number

DEFAULT_PLACE = "WORLD"
ELECTRICITYMAPS_KEY_ENV = "ELECTRICITYMAPS_API_KEY"
PLACE_HELP = (
    "gCO2e/kWh (a number >= 0), a country code (DE, FRA, USA), a grid region (US-CA, CA-QC, "
    "AU-NSW, CN-BJ, SE3) or a cloud region (aws:eu-west-1, gcp:europe-west4, azure:westeurope), "
    "as `lightning-green carbon` lists them"
)
LIVE_HELP = "null, uk, uk:<GB region id 1-17>, electricitymaps or electricitymaps:<zone>"


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
    text = resources.files("lightning_green.energy").joinpath("data/grid_intensity.csv").read_text("utf-8")
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


class LiveIntensityError(RuntimeError):
    """A live provider could not give a value (offline, no key, bad answer)."""


#: The most bytes an answer may hold. Both APIs answer in under 2 KiB; anything near this is not an
#: intensity, and reading it whole would hold training's memory hostage to a stranger's server.
MAX_ANSWER_BYTES = 1 << 20
_CHUNK_BYTES = 64 * 1024
_REASON_CHARS = 200


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or {"http": 80, "https": 443}.get(scheme)


def redirect_refusal(from_url: str, to_url: str, carries_headers: bool) -> str | None:
    """Why a redirect from ``from_url`` to ``to_url`` must not be followed, or ``None`` if it may.

    The headers a provider adds (Electricity Maps' ``auth-token``) are meant for the configured
    origin only, and urllib would forward them to any host a server names, so with such headers a
    redirect must stay on the same scheme, host and port. Without them a redirect may change host,
    but never from https to http (a downgrade lets anyone on the path rewrite the answer).
    """
    try:
        old, new = _origin(from_url), _origin(to_url)
    except ValueError:  # a port that is not a number
        return f"redirect from {from_url} to an invalid URL {to_url!r} refused"
    if new[0] not in ("http", "https"):
        return f"redirect from {from_url} to {to_url} refused (not http or https)"
    if old[0] == "https" and new[0] != "https":
        return f"redirect from {from_url} to {to_url} refused (https to http)"
    if carries_headers and new != old:
        return (
            f"redirect from {from_url} to {to_url} refused (another origin: the API key is sent to "
            f"{old[0]}://{old[1]}:{old[2]} only)"
        )
    return None


class _GuardedRedirects(urllib.request.HTTPRedirectHandler):
    """Follows only the redirects :func:`redirect_refusal` allows; the others fail the fetch."""

    def __init__(self, carries_headers: bool) -> None:
        super().__init__()
        self.carries_headers = carries_headers

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        refusal = redirect_refusal(req.full_url, newurl, self.carries_headers)
        if refusal is not None:
            fp.close()
            raise LiveIntensityError(refusal)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class _Fetch:
    """One GET whose whole duration (name lookup, connect, headers, body) is bounded by a deadline.

    A socket timeout bounds each read, not their sum: a server sending one byte every second never
    trips it. So the request runs in a worker thread that the caller waits for at most
    ``timeout_s``; at the deadline the caller gives up and shuts the fetch's sockets down, which
    ends the worker's blocked read at once instead of leaving it to drip on.
    """

    def __init__(self, url: str, headers: dict[str, str], timeout_s: float, max_bytes: int) -> None:
        self.url, self.headers, self.timeout_s, self.max_bytes = url, headers, timeout_s, max_bytes
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._abandoned = False
        self._outcome: tuple[bool, Any] = (False, LiveIntensityError(f"no answer from {url}"))

    def run(self) -> Any:
        worker = threading.Thread(target=self._work, name="lg-carbon-fetch", daemon=True)
        worker.start()
        worker.join(self.timeout_s)
        if worker.is_alive():
            self._abandon()
            raise LiveIntensityError(f"no complete answer from {self.url} within {self.timeout_s:g} s")
        ok, value = self._outcome
        if not ok:
            raise value
        return value

    def _work(self) -> None:
        # Every failure becomes the outcome: a worker thread must never die with a traceback.
        try:
            self._outcome = (True, self._get())
        except LiveIntensityError as err:
            self._outcome = (False, err)
        except Exception as err:
            failure = LiveIntensityError(self._explain(err))
            failure.__cause__ = err
            self._outcome = (False, failure)

    def _get(self) -> Any:
        opener = urllib.request.build_opener(
            _WatchedHTTPHandler(self), _WatchedHTTPSHandler(self), _GuardedRedirects(bool(self.headers))
        )
        request = urllib.request.Request(self.url, headers={"Accept": "application/json", **self.headers})
        with opener.open(request, timeout=self.timeout_s) as response:
            declared = str(response.headers.get("Content-Length", "")).strip()
            if declared.isdigit() and int(declared) > self.max_bytes:
                raise LiveIntensityError(self._too_large(f"{int(declared)} announced"))
            body = bytearray()
            while chunk := response.read(min(_CHUNK_BYTES, self.max_bytes + 1 - len(body))):
                body += chunk
                if len(body) > self.max_bytes:
                    raise LiveIntensityError(self._too_large("sent without a length"))
            # A chunked read of a body shorter than its Content-Length ends quietly (http.client
            # raises IncompleteRead only for a whole read): a cut answer must not pass for complete.
            missing = getattr(response, "length", None)
            if missing:
                raise http.client.IncompleteRead(bytes(body), missing)
        return json.loads(body.decode("utf-8"))

    def _too_large(self, detail: str) -> str:
        return f"answer from {self.url} larger than {self.max_bytes} bytes ({detail}): refused unread"

    def _explain(self, err: Exception) -> str:
        url = self.url
        if isinstance(err, urllib.error.HTTPError):
            err.close()
            return f"HTTP {err.code} from {url}"
        if isinstance(err, http.client.HTTPException):  # IncompleteRead, BadStatusLine, RemoteDisconnected
            return f"broken answer from {url} ({err!r})"
        if isinstance(err, urllib.error.URLError):
            return f"cannot reach {url} ({err.reason})"
        if isinstance(err, TimeoutError):
            return f"no complete answer from {url} within {self.timeout_s:g} s"
        if isinstance(err, OSError):
            return f"connection to {url} failed ({err})"
        if isinstance(err, ValueError):  # JSONDecodeError, UnicodeDecodeError
            return f"not JSON from {url}"
        return f"fetch from {url} failed ({err!r})"

    def watched(self, http_class: type[http.client.HTTPConnection]) -> Any:
        """``http_class``, but each connection's socket is registered for :meth:`_abandon`."""

        def connection(*args: Any, **kwargs: Any) -> http.client.HTTPConnection:
            conn = http_class(*args, **kwargs)
            connect = conn.connect

            def connect_and_watch() -> None:
                connect()
                self._watch(conn.sock)

            conn.connect = connect_and_watch  # type: ignore[method-assign]
            return conn

        return connection

    def _watch(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        with self._lock:
            self._sockets.append(sock)
            abandoned = self._abandoned
        if abandoned:  # connected after the caller gave up
            _shut(sock)

    def _abandon(self) -> None:
        with self._lock:
            self._abandoned = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shut(sock)


def _shut(sock: socket.socket) -> None:
    # The plain socket's shutdown, also for TLS: it wakes a read blocked in another thread, where
    # SSLSocket.shutdown would first drop the TLS state under that read's feet.
    with contextlib.suppress(OSError):  # already closed: nothing left to wake
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _WatchedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, fetch: _Fetch) -> None:
        super().__init__()
        self._fetch = fetch

    def do_open(self, http_class: Any, req: Any, **kwargs: Any) -> Any:
        return super().do_open(self._fetch.watched(http_class), req, **kwargs)


class _WatchedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, fetch: _Fetch) -> None:
        super().__init__()
        self._fetch = fetch

    def do_open(self, http_class: Any, req: Any, **kwargs: Any) -> Any:
        return super().do_open(self._fetch.watched(http_class), req, **kwargs)


def get_json(
    url: str,
    headers: dict[str, str] | None = None,
    timeout_s: float = 3.0,
    max_bytes: int = MAX_ANSWER_BYTES,
) -> Any:
    """GET ``url`` and parse JSON; :class:`LiveIntensityError` with the reason on any failure.

    ``timeout_s`` bounds the whole fetch, not each read, and an answer over ``max_bytes`` is
    refused unread. ``headers`` (an API key) go to ``url``'s origin only: a redirect elsewhere, or
    from https to http, fails the fetch rather than carry them there.
    """
    return _Fetch(url, dict(headers or {}), timeout_s, max_bytes).run()


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
