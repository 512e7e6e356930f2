"""CPU package and DRAM energy from Linux powercap (RAPL) sysfs counters.

Reads ``<root>/intel-rapl:N/energy_uj`` (packages) and their ``dram`` sub-zones. Core and uncore
sub-zones are inside the package figure and are skipped, as is ``psys`` (whole platform), so
nothing is counted twice. Counters wrap at ``max_energy_range_uj``; a background thread reads
them every ``poll_interval_s`` so that no more than one wrap happens between two reads.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from lightning_green.energy.base import Channel, CounterMeter, MeterUnavailableError, PollingThread

DEFAULT_ROOT = "/sys/class/powercap"
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


def _read_int(path: Path) -> int:
    return int(path.read_text().strip())


def discover_zones(root: str | os.PathLike[str] = DEFAULT_ROOT) -> list[_Zone]:
    """Find readable package and DRAM zones under ``root``.

    Raises:
        MeterUnavailableError: If there is no RAPL zone, or none is readable (since Linux 5.10
            ``energy_uj`` is readable by root only).
    """
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
    return zones


class RaplMeter(CounterMeter):
    """CPU package and DRAM energy from the powercap sysfs tree, labelled ``measured:rapl``.

    Args:
        root: The powercap directory (tests point it at a fake tree).
        poll_interval_s: How often a background thread reads the counters to catch wraparound;
            ``None`` turns the thread off (then windows must be shorter than one wrap period).

    Raises:
        MeterUnavailableError: If no zone is readable.
    """

    name = "rapl"

    def __init__(
        self, root: str | os.PathLike[str] = DEFAULT_ROOT, poll_interval_s: float | None = 10.0
    ) -> None:
        super().__init__()
        self.root = Path(root)
        self._zones = discover_zones(self.root)
        self._lock = threading.Lock()
        self._poller = PollingThread(self._poll, poll_interval_s, "rapl-poll") if poll_interval_s else None

    @property
    def channels(self) -> tuple[Channel, ...]:
        return tuple(Channel(z.domain, z.device, "measured:rapl") for z in self._zones)

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
                delta = now - z.last_uj
                if delta < 0:  # the counter wrapped past max_energy_range_uj
                    delta += z.max_uj
                z.acc_uj += delta
                z.last_uj = now
                out[key] = z.acc_uj / 1e6
        return out

    def close(self) -> None:
        if self._poller is not None:
            self._poller.stop()
            self._poller = None
