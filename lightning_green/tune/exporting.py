"""A study's figures on dashboards (:mod:`lightning_green.export`).

When the config asks for exporters (``callbacks.energy_monitor.exporters``), every trial's
EnergyMonitor exports with the study's labels plus ``trial`` (:func:`label_exporters`), and the
study exports its own energy, measured around it, through the same exporters with the study's
labels (:func:`export_study_energy`; stage ``study``). The labels take few values: the study's
name (``tune.name``), its strategy and seed (a comparison runs several studies of one name), and
Ray's trial id.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Iterator, MutableMapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lightning_green.config import ENABLED_KEY
from lightning_green.records import WindowRecord

#: The key of a callback's list of exporters (``EnergyMonitor(exporters=[...])``).
EXPORTERS_KEY = "exporters"


def study_labels(tune_cfg: DictConfig, seed: int) -> dict[str, str]:
    """The constant labels of everything a study exports: ``study`` (``tune.name``),
    ``strategy`` and ``seed``. A trial's exporters add ``trial``."""
    return {"study": str(tune_cfg.name), "strategy": str(tune_cfg.strategy.name), "seed": str(seed)}


def exporter_nodes(callbacks: MutableMapping | None) -> Iterator[MutableMapping]:
    """Each exporter node (``{_target_: ..., ...}``) of the enabled callbacks of a ``callbacks`` tree."""
    for node in (callbacks or {}).values():
        if not isinstance(node, MutableMapping) or not node.get(ENABLED_KEY, True):
            continue
        for exporter in node.get(EXPORTERS_KEY) or []:
            if isinstance(exporter, MutableMapping) and "_target_" in exporter:
                yield exporter


def takes_labels(target: str) -> bool:
    """Whether the exporter class ``target`` names takes ``labels=`` (lightning_green.export's all
    do); ``False`` for one it cannot find or that has no such argument (left as it is)."""
    from hydra.utils import get_class

    try:
        params = inspect.signature(get_class(target)).parameters
    except Exception:  # not found or not a class: the trial's own build says why
        return False
    return "labels" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def label_exporters(callbacks: MutableMapping | None, labels: dict[str, str]) -> int:
    """Add ``labels`` to the constant labels of every exporter in a trial's ``callbacks`` tree
    (a DictConfig or a dict, changed in place; ours win over the same names given there).
    Returns how many exporters got them."""
    n = 0
    for node in exporter_nodes(callbacks):
        if takes_labels(str(node["_target_"])):
            given = node.get("labels") or {}
            node["labels"] = {
                **(OmegaConf.to_container(given) if isinstance(given, DictConfig) else given),
                **labels,
            }
            n += 1
    return n


def study_exporters(cfg: DictConfig, labels: dict[str, str]) -> list[Any]:
    """The study's own exporters: one of each a trial's monitor gets, built here (on the driver)
    with the study's ``labels``; none when the config asks for none."""
    from hydra.utils import instantiate

    out = []
    for node in exporter_nodes(cfg.get("callbacks")):
        spec: dict[str, Any] = OmegaConf.to_container(node, resolve=True)  # type: ignore[assignment]
        if takes_labels(str(spec["_target_"])):
            spec["labels"] = {**(spec.get("labels") or {}), **labels}
        try:
            out.append(instantiate(spec, _convert_="all"))
        except Exception as err:  # the trials said so already: the study's figure is not sent
            _warn(f"exporter {spec['_target_']} could not be built ({err!r})")
    return out


def export_study_energy(cfg: DictConfig, labels: dict[str, str], record: WindowRecord) -> int:
    """Send the study's own energy (``record``, stage ``study``) through the exporters the config
    asks for, labelled with the study's ``labels``; a failing exporter is said in one line and the
    study goes on. Returns how many exporters sent it."""
    sent = 0
    for exporter in study_exporters(cfg, labels):
        try:
            exporter.export_window(record, None)
            exporter.close()  # a push gateway pushes now, OTLP flushes; a pull endpoint keeps serving
            sent += 1
        except Exception as err:
            _warn(f"exporter {type(exporter).__name__} failed ({err!r})")
    return sent


def _warn(what: str) -> None:
    print(f"lightning-green: {what}; the study's energy is in study.json", file=sys.stderr, flush=True)
