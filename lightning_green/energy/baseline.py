"""Static and dynamic energy: what a device draws when idle, and what the work costs above it.

A device that is on draws power whether or not it computes: a large GPU idles at tens of watts,
and on a small model most of its energy is that. The *total* is what the bill and the carbon are;
the *dynamic* part (total minus idle power x time) is what model choices change.

An :class:`IdleBaseline` holds idle watts per channel (``"gpu:0"``, ``"cpu:0"``), measured over an
idle window (:func:`measure_idle`) or given by the user. :func:`apply_baseline` adds each
domain's ``dynamic_joules`` to a reading. An *estimated* domain (``estimated:cpu-time``) counts
only the CPU time the process used, so it is dynamic already: its dynamic energy is its energy,
with nothing subtracted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

from lightning_green._checks import check_number
from lightning_green.energy.base import Meter
from lightning_green.energy.reading import Reading

_WINDOW = "idle_baseline"


@dataclass(frozen=True)
class IdleBaseline:
    """Idle power per channel key, and how it was obtained.

    Attributes:
        watts: Idle power in watts per channel key (``"gpu:0"``); channels absent here have no
            baseline (their dynamic energy is unknown), except estimated ones (dynamic already).
        how: ``"measured: ..."`` or ``"given by the user"``.
        seconds: Length of the idle window (0 when given).
        busy: Why the device may not have been idle during the window (empty: nothing seen).
        background: What shared counters' splits learnt from the window (the node's background
            CPU, see :meth:`~lightning_green.energy.attribution.CpuTimeShare.calibrate`).
    """

    watts: dict[str, float]
    how: str
    seconds: float = 0.0
    busy: list[str] = field(default_factory=list)
    background: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "watts": dict(self.watts),
            "how": self.how,
            "seconds": self.seconds,
            "busy": list(self.busy),
            "background": list(self.background),
        }


def given_baseline(idle_w: dict[str, float]) -> IdleBaseline:
    """A baseline from the user's figures, e.g. ``{"gpu:0": 80.0}``.

    Raises:
        ValueError: If a key is not ``"<domain>:<device>"`` or a value is not a finite number >= 0.
    """
    if not isinstance(idle_w, dict) or not idle_w:
        raise ValueError(f'idle_w must map channels to idle watts, e.g. {{"gpu:0": 80.0}}; got {idle_w!r}')
    out = {}
    for key, watts in idle_w.items():
        if not isinstance(key, str) or ":" not in key:
            raise ValueError(f'idle_w keys must be "<domain>:<device>" such as "gpu:0"; got {key!r}')
        out[key] = check_number(f"idle_w[{key!r}]", watts, minimum=0.0, unit="watts")
    return IdleBaseline(out, "given by the user")


def measure_idle(meter: Meter, seconds: float) -> IdleBaseline:
    """Measure idle power: a window of ``seconds`` with the devices synchronised and nothing queued.

    Only measured channels get a baseline (an estimate is dynamic already). The meter's
    :meth:`~lightning_green.energy.Meter.busy` notes (another process on the GPU, CPU load) go
    into ``busy``.
    """
    check_number("baseline_s", seconds, above=0.0, unit="seconds")
    attribution = getattr(meter, "attribution", None)  # a SelectedMeter's splits of shared counters
    before = attribution.snapshot() if attribution is not None else None
    meter.begin_window(_WINDOW)  # synchronises the devices: nothing of ours is running
    time.sleep(seconds)
    busy = meter.busy()
    reading = meter.end_window(_WINDOW, settle=True)
    # The node's own background CPU in the window: left out of the busy time jobs share later.
    background = attribution.calibrate(before, attribution.snapshot()) if attribution is not None else []
    # The device's idle power, not this job's share of it (a split counter keeps both).
    watts = {
        d.key: d.device_joules / reading.seconds
        for d in reading.domains
        if d.device_joules is not None
        and d.complete
        and d.source.startswith("measured")
        and reading.seconds > 0
    }
    return IdleBaseline(
        watts,
        f"measured: a {reading.seconds:.2f} s idle window before training",
        reading.seconds,
        busy,
        background,
    )


def apply_baseline(reading: Reading, baseline: IdleBaseline) -> Reading:
    """``reading`` with each domain's ``dynamic_joules``: joules minus idle watts x seconds (>= 0)
    for channels with a baseline, the joules themselves for estimated channels, else ``None``.

    A split counter's dynamic energy is the job's share of the device's: ``share x (node joules -
    idle watts x seconds)``, attributed the same way as its total.
    """
    domains = []
    for d in reading.domains:
        if d.joules is None:
            dynamic = None
        elif d.source.startswith("estimated"):
            dynamic = d.joules
        elif d.key in baseline.watts and d.attribution is not None and d.share is not None:
            node = d.node_joules or 0.0
            dynamic = d.share * max(0.0, node - baseline.watts[d.key] * reading.seconds)
        elif d.key in baseline.watts:
            dynamic = max(0.0, d.joules - baseline.watts[d.key] * reading.seconds)
        else:
            dynamic = None
        domains.append(replace(d, dynamic_joules=dynamic))
    return replace(reading, domains=tuple(domains))
