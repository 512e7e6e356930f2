"""What every exporter sends of a window: its figures per domain and device, with bounded labels.

Pure functions over :class:`~lightning_green.records.WindowRecord`, shared by the Prometheus and
OpenTelemetry exporters so that both carry the same labels and the same joules.
"""

from __future__ import annotations

import math
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lightning_green.records import WindowRecord

#: Labels of a window's run-wide figures (CO2e, seconds, windows).
RUN_LABELS = ("run_id", "stage", "node")
#: Labels of a domain's figures (joules, dynamic joules, the device's joules, watts).
DOMAIN_LABELS = ("run_id", "stage", "domain", "device", "uuid", "source", "node")
#: Names a constant label may not take: ours, and the ones Prometheus itself attaches or reserves.
RESERVED = frozenset({*DOMAIN_LABELS, "complete", "finished", "job", "instance", "le", "quantile"})
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def check_labels(labels: Mapping[str, Any] | None) -> dict[str, str]:
    """Constant labels (``{"study": "rq1", "trial": "7"}``) as strings; ``ValueError`` on a bad one.

    Each value must be a string, a number or a bool (its text is the label's value): a label is
    fixed for the exporter's life, so it cannot grow without bound as epochs and steps do.
    """
    out: dict[str, str] = {}
    for key, value in (labels or {}).items():
        if not isinstance(key, str) or not _LABEL_NAME.match(key) or key.startswith("__"):
            raise ValueError(
                f"labels: {key!r} is not a label name (letters, digits and '_', not starting with a digit or '__')"
            )
        if key in RESERVED:
            raise ValueError(f"labels: {key!r} is set by the exporter itself; choose another name")
        if isinstance(value, bool):
            value = str(value).lower()
        if not isinstance(value, (str, int, float)):
            raise ValueError(f"labels: the value of {key!r} must be a string or a number, got {value!r}")
        out[key] = str(value)
    return out


def default_node() -> str:
    """The name of this machine, as the ``node`` label and the ``host.name`` attribute give it."""
    return socket.gethostname()


@dataclass(frozen=True)
class DomainFigures:
    """One domain and device of a window.

    Attributes:
        labels: ``run_id``, ``stage``, ``domain``, ``device``, ``uuid`` (a GPU's UUID where the
            meter named it, else ``""``), ``source``, ``node`` and the exporter's constant labels.
        joules: The job's energy in the window (its part of a split counter).
        dynamic_j: Energy above the idle baseline; ``None`` when no baseline applies.
        node_j: The device's whole figure, before a shared counter was split among jobs.
        watts: Average power over the window (``joules / seconds``); ``None`` for an empty window.
    """

    labels: dict[str, str]
    joules: float
    dynamic_j: float | None
    node_j: float | None
    watts: float | None


def run_labels(record: WindowRecord, node: str, constant: Mapping[str, str]) -> dict[str, str]:
    return {"run_id": record.run_id, "stage": record.stage, "node": node, **constant}


def domain_figures(record: WindowRecord, node: str, constant: Mapping[str, str]) -> list[DomainFigures]:
    """The window's figures per domain and device; a domain whose counter failed (no joules) has
    none: a failed reading is never sent as 0 J.

    Example::

        >>> from lightning_green.energy.reading import DomainEnergy, Reading
        >>> r = Reading(0.0, 2.0, 2.0, (DomainEnergy("gpu", "0", 500.0, "measured:nvml"),),
        ...             {"gpu_uuids": {"0": "GPU-1234"}})
        >>> record = WindowRecord.from_reading(r, run_id="abc", stage="train", epoch=0, global_step=9)
        >>> [f] = domain_figures(record, "node1", {"trial": "3"})
        >>> f.labels["device"], f.labels["uuid"], f.labels["trial"], f.joules, f.watts
        ('0', 'GPU-1234', '3', 500.0, 250.0)
    """
    uuids = record.assumptions.get("gpu_uuids") or {}
    out = []
    for d in record.domains:
        joules = d.get("joules")
        if joules is None or not math.isfinite(joules):
            continue
        domain, device = str(d["domain"]), str(d["device"])
        # Under DDP the devices carry a rank prefix ("rank1/0") and the merged assumptions name one
        # rank's GPUs only: a UUID is given where the device is this process's own.
        uuid = str(uuids.get(device, "")) if domain == "gpu" and isinstance(uuids, dict) else ""
        labels = {
            "run_id": record.run_id,
            "stage": record.stage,
            "domain": domain,
            "device": device,
            "uuid": uuid,
            "source": str(d.get("source", "")),
            "node": node,
            **constant,
        }
        # A split counter keeps the device's figure beside the job's (see DomainEnergy.device_joules).
        node_j = d.get("node_joules") if d.get("attribution") is not None else joules
        out.append(
            DomainFigures(
                labels=labels,
                joules=float(joules),
                dynamic_j=d.get("dynamic_joules"),
                node_j=node_j,
                watts=joules / record.seconds if record.seconds > 0 else None,
            )
        )
    return out
