"""CPU package and DRAM energy from Linux powercap (RAPL) sysfs counters.

Reads ``<root>/intel-rapl:N/energy_uj`` (packages) and their ``dram`` sub-zones. Core and uncore
sub-zones are inside the package figure and are skipped, as is ``psys`` (whole platform), so
nothing is counted twice. Counters wrap at ``max_energy_range_uj``; a background thread reads
them every ``poll_interval_s`` so that no more than one wrap happens between two reads.

A decrease is taken as a wrap only when it is plausible: the energy it implies (the rest of the
range plus the new reading) could have been drawn in the time since the last read at no more
than ``max_power_w`` (default :data:`DEFAULT_MAX_POWER_W`, far above any CPU package). Anything
else (a zone re-created with a reset counter, a counter that steps back) adds nothing and marks
the windows across it incomplete.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_green._checks import check_number
from lightning_green.energy.base import Channel, CounterMeter, MeterUnavailableError, PollingThread

log = logging.getLogger("lightning_green.energy")

DEFAULT_ROOT = "/sys/class/powercap"
#: Highest power (W) a package or DRAM zone is assumed able to draw when judging a wrap; well above
#: the TDP of any current CPU package (about 500 W), so that only impossible jumps are rejected.
DEFAULT_MAX_POWER_W = 2000.0
#: One-minute load average per core above which an idle baseline is reported as possibly busy.
BUSY_LOAD_PER_CORE = 0.25
_ZONE = re.compile(r"^intel-rapl:(\d+)$")
_SUBZONE = re.compile(r"^intel-rapl:(\d+):(\d+)$")


@dataclass
class _Zone:
    path: Path
    domain: str
    device: str
    max_uj: int
    last_uj: int = 0
    acc_uj: int = 0
    last_t: float = 0.0


def _read_int(path: Path) -> int:
    return int(path.read_text().strip())


def discover_zones(root: str | os.PathLike[str] = DEFAULT_ROOT) -> list[_Zone]:
    """Find readable package and DRAM zones under ``root``.

    Raises:
        MeterUnavailableError: If there is no RAPL zone, or none is readable (since Linux 5.10
            ``energy_uj`` is readable by root only).
    """
    return _discover(root)[0]


def _discover(root: str | os.PathLike[str]) -> tuple[list[_Zone], list[str]]:
    """(readable zones, problems with the zones that were skipped)."""
    root = Path(root)
    if not root.is_dir():
        raise MeterUnavailableError(f"no powercap tree at {root}")
    zones: list[_Zone] = []
    problems: list[str] = []
    for entry in sorted(root.iterdir()):
        m, s = _ZONE.match(entry.name), _SUBZONE.match(entry.name)
        if not (m or s):
            continue
        try:
            name = (entry / "name").read_text().strip()
        except OSError as err:
            problems.append(f"{entry}/name: {err.strerror}")
            continue
        if m and name.startswith("package"):
            domain, device = "cpu", m.group(1)
        elif s and name == "dram":
            domain, device = "dram", s.group(1)
        else:
            continue  # psys, core, uncore: overlap with the package figure
        try:
            zone = _Zone(entry, domain, device, _read_int(entry / "max_energy_range_uj"))
            zone.last_uj = _read_int(entry / "energy_uj")
            zone.last_t = time.monotonic()
        except PermissionError:
            problems.append(f"{entry}/energy_uj: permission denied (readable by root only since Linux 5.10)")
            continue
        except (OSError, ValueError) as err:
            problems.append(f"{entry}/energy_uj: {err}")
            continue
        zones.append(zone)
    if not zones:
        detail = "; ".join(problems) if problems else "no package zone"
        raise MeterUnavailableError(f"no readable RAPL zone under {root}: {detail}")
    return zones, problems


class RaplMeter(CounterMeter):
    """CPU package and DRAM energy from the powercap sysfs tree, labelled ``measured:rapl``.

    Args:
        root: The powercap directory (tests point it at a fake tree).
        poll_interval_s: How often a background thread reads the counters to catch wraparound;
            ``None`` turns the thread off (then windows must be shorter than one wrap period).
        max_power_w: The most a zone can draw, in watts, when judging whether a decrease is a wrap.
        sample_interval_s: Read the counters on a background thread this often, so window edges
            cost the caller no file reads (``None``: read at the edges, on the caller's thread).

    Zones that exist but cannot be read (a second package without permission) are skipped; the
    meter's description and every record's assumptions (``rapl_skipped_zones``) say which and why.

    Raises:
        MeterUnavailableError: If no zone is readable.
        ValueError: On a non-positive or non-finite ``poll_interval_s`` or ``max_power_w``.
    """

    name = "rapl"

    def __init__(
        self,
        root: str | os.PathLike[str] = DEFAULT_ROOT,
        poll_interval_s: float | None = 10.0,
        max_power_w: float = DEFAULT_MAX_POWER_W,
        sample_interval_s: float | None = None,
    ) -> None:
        super().__init__(sample_interval_s=sample_interval_s)
        if poll_interval_s is not None:
            check_number("poll_interval_s", poll_interval_s, above=0.0, unit="seconds")
        self.max_power_w = check_number("max_power_w", max_power_w, above=0.0, unit="watts")
        self.root = Path(root)
        self._zones, self.skipped = _discover(self.root)
        if self.skipped:
            log.warning(
                "rapl: skipped unreadable zone(s), their energy is NOT measured: %s", "; ".join(self.skipped)
            )
        self._lock = threading.Lock()
        if sample_interval_s:
            self.start_sampling()  # its reads also catch every wrap
            poll_interval_s = None
        self._poller = PollingThread(self._poll, poll_interval_s, "rapl-poll") if poll_interval_s else None

    @property
    def channels(self) -> tuple[Channel, ...]:
        return tuple(Channel(z.domain, z.device, "measured:rapl") for z in self._zones)

    @property
    def assumptions(self) -> dict[str, Any]:
        out = dict(super().assumptions)
        if self.skipped:
            out["rapl_skipped_zones"] = list(self.skipped)
        return out

    def busy(self) -> list[str]:
        try:
            load = os.getloadavg()[0]
        except OSError:
            return []
        cores = os.cpu_count() or 1
        if load > BUSY_LOAD_PER_CORE * cores:
            return [f"the CPU load average was {load:.2f} on {cores} cores (other processes running?)"]
        return []

    def describe(self) -> str:
        text = super().describe()
        return text + (f" [NOT measured, unreadable: {'; '.join(self.skipped)}]" if self.skipped else "")

    def _poll(self) -> None:
        self.read_counters()

    def read_counters(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        with self._lock:
            for z in self._zones:
                key = f"{z.domain}:{z.device}"
                try:
                    now = _read_int(z.path / "energy_uj")
                except (OSError, ValueError):
                    out[key] = None
                    continue
                t = time.monotonic()
                delta = now - z.last_uj
                if delta < 0:
                    wrapped = delta + z.max_uj
                    # Plausible wrap: the energy since the last read fits the time at max power
                    # (one wrap at most; the new reading is then small). Else a reset or glitch.
                    limit_uj = self.max_power_w * (t - z.last_t) * 1e6 + 1e6
                    if 0 <= wrapped <= limit_uj:
                        delta = wrapped
                    else:
                        delta = 0
                        self._fault(
                            key,
                            f"{key} went from {z.last_uj} to {now} uJ in {t - z.last_t:.3f} s, neither "
                            f"a wrap at <= {self.max_power_w:g} W nor a forward step (counter reset?)",
                        )
                z.acc_uj += delta
                z.last_uj, z.last_t = now, t
                out[key] = z.acc_uj / 1e6
        return out

    def close(self) -> None:
        super().close()
        if self._poller is not None:
            self._poller.stop()
            self._poller = None
