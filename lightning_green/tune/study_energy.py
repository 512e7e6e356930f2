"""The energy of a study as a whole: the meter around it, its parts (one per run of a resumed
study), the framework's share (what no trial's EnergyMonitor saw), and the record that exports it.

No Ray here: the cluster nodes' figures come in as the dicts :mod:`lightning_green.tune.node_energy`
returns.
"""

from __future__ import annotations

import socket
from collections import Counter
from typing import Any

from omegaconf import DictConfig

from lightning_green.records import WindowRecord

#: The ``stage`` of the record that exports a study's own energy.
STUDY_STAGE = "study"


def study_meter(cfg: DictConfig) -> Any:
    """The meter around a whole study, with the runs' energy settings: node counters (RAPL, every
    visible GPU) where they exist, else the CPU-time estimate of this process tree."""
    from lightning_green.energy import make_meter

    e = cfg.energy
    return make_meter(
        e.get("backend", "auto"), gpu_indices=None, measure_node=True, rapl_root=e.get("rapl_root"),
        watts_per_core=e.get("watts_per_core"), include_children=True, track_descendants=True,
        attribution=e.get("attribution", "auto"),
    )  # fmt: skip


def add_study_energy(
    meta: dict[str, Any],
    reading: Any,
    nodes: list[dict[str, Any]],
    earlier: list[dict[str, Any]] | None = None,
    this_run: dict[str, Any] | None = None,
) -> None:
    """The study's energy in ``meta``: the driver's meter plus each cluster node's figure, with the
    trials' share and the framework's (never below zero: a difference that would be is said).

    A resumed study is measured in parts, one per run (``earlier``: the parts before this one, as
    :func:`earlier_parts` reads them; ``this_run``: this run's ``started``, ``finished``,
    ``wall_s``, ``interrupted``). ``parts`` lists them all and ``study_energy_j`` is their sum;
    ``reading`` is ``None`` when this run's meter failed (its part is then unknown).
    """
    earlier = list(earlier or [])
    if reading is None:
        part = {**(this_run or {}), "energy_j": None, "complete": False, "note": "the study's meter failed"}
        _add_parts(meta, [*earlier, part])
        meta["study_energy_covers"] = "the study's earlier runs only (see parts)"
        _add_framework(meta)
        return
    driver = {
        "node": "driver",
        "host": socket.gethostname(),
        "energy_j": reading.joules,
        "node_j": reading.node_joules,
        "complete": reading.complete,
        "sources": reading.sources,
        "attribution": reading.attributions,
    }
    known = [n["energy_j"] for n in nodes if n.get("energy_j") is not None]
    sources = set(reading.sources.values()) | {s for n in nodes for s in n.get("sources", {}).values()}
    part = {
        **(this_run or {}),
        "energy_j": reading.joules + sum(known),
        "complete": reading.complete and all(n.get("complete") for n in nodes),
        "source": "+".join(sorted(sources)),
    }
    meta["nodes"] = [driver, *nodes]
    _add_parts(meta, [*earlier, part])
    meta["study_energy_covers"] = _covers(meta, reading, nodes, earlier)
    _add_framework(meta)


def _covers(meta: dict[str, Any], reading: Any, nodes: list[dict[str, Any]], earlier: list) -> str:
    covers = (
        "the node's counters over the study's span"
        if "measured" in meta["study_energy_source"]
        else "CPU time of this driver and every process it started on this node (Ray's GCS, raylet, "
        "workers, idle or exited), over the study's span"
    )
    if nodes:
        covers = (
            "this driver's process tree, plus on each of the cluster's "
            f"{len(nodes)} node(s) Ray's processes there (raylet, workers; GCS and dashboard on the "
            "head), measured by an actor on that node (see nodes)"
        )
    if reading.attributions:
        covers += "; shared counters split by each part's share of the device's busy time"
    if earlier:
        measured = sum(p.get("energy_j") is not None for p in meta["parts"])
        covers += f"; summed over the parts of the study measured by its runs ({measured} of {len(meta['parts'])}: it was resumed)"
    return covers


def _add_parts(meta: dict[str, Any], parts: list[dict[str, Any]]) -> None:
    """``parts`` and their sum in ``meta`` (an unmeasured part makes the sum incomplete)."""
    meta["parts"] = parts
    known = [p["energy_j"] for p in parts if p.get("energy_j") is not None]
    meta["study_energy_j"] = float(sum(known))
    meta["study_energy_complete"] = len(known) == len(parts) and all(p.get("complete") for p in parts)
    meta["study_energy_source"] = "+".join(
        sorted({s for p in parts for s in str(p.get("source") or "").split("+") if s})
    )


def earlier_parts(previous: dict[str, Any]) -> list[dict[str, Any]]:
    """The parts of a study that its earlier runs measured, from its ``study.json`` as they left
    it: a run that ended normally wrote its part there; one that was killed before it could (its
    ``finished`` is unset) is a part of unknown energy, said so, never 0 J."""
    if not previous:
        return []
    parts = list(previous.get("parts") or [])
    if previous.get("finished") is None:
        return [*parts, {"energy_j": None, "complete": False, "interrupted": True,
                         "note": "not measured: this run of the study was killed before it wrote its energy"}]  # fmt: skip
    if "parts" in previous:
        return parts
    # A study.json written before studies were measured in parts: its one run.
    return [
        {
            "started": previous.get("started"),
            "finished": previous.get("finished"),
            "wall_s": previous.get("wall_s"),
            "interrupted": previous.get("interrupted"),
            "energy_j": previous.get("study_energy_j"),
            "complete": bool(previous.get("study_energy_complete")),
            "source": previous.get("study_energy_source"),
        }
    ]


def _add_framework(meta: dict[str, Any]) -> None:
    """The framework's energy: the study's less the trials' (unknown, and said, where negative)."""
    total = meta["study_energy_j"]
    used = meta.get("energy_used_j")
    if used is not None and total > 0:
        framework = total - used
        if framework < 0:
            meta["framework_note"] = (
                f"the trials' records ({used:.4g} J) exceed the study's measured energy ({total:.4g} J): "
                "a part of the study was not measured (a resumed study's earlier part, a lost node); "
                "the framework's share is unknown"
            )
            meta["framework_energy_j"] = None
            meta["framework_share"] = None
        else:
            meta["framework_energy_j"] = framework
            meta["framework_share"] = framework / total


def part_record(reading: Any, nodes: list[dict[str, Any]], run_id: str) -> WindowRecord:
    """This run's part of the study as one window record (stage ``study``), what the exporters
    send: the driver's domains as its meter read them, then each cluster node's, their devices
    prefixed with the node (``worker-3/process``; with the node id too where two nodes share a
    host name), so that the record's domains add up to the part's ``energy_j`` in ``study.json``."""
    record = WindowRecord.from_reading(reading, run_id=run_id, stage=STUDY_STAGE, epoch=0, global_step=0)
    hosts = Counter(str(n.get("host")) for n in nodes)
    for n in nodes:
        prefix = str(n.get("host"))
        if hosts[prefix] > 1:
            prefix += f":{str(n.get('node_id', ''))[:8]}"
        record.domains += [{**d, "device": f"{prefix}/{d['device']}"} for d in n.get("domains") or []]
        if n.get("energy_j") is not None:
            record.energy_j += float(n["energy_j"])
        record.complete = record.complete and bool(n.get("complete"))
    return record
