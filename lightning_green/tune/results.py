"""A study's results, from what Ray handed back and the trials' energy records: the trials table
(``trials.csv``, columns in :mod:`lightning_green.trials`) and the trial figures of ``study.json``.

No Ray here: Ray's result grid is read through its ``metrics``, ``config``, ``error`` and
``path`` alone, and the rest comes from the files the trials wrote.
"""

from __future__ import annotations

import math
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig

from lightning_green.records import RECORDS_FILE, RUN_FILE, read_json, read_windows, trial_energy_j
from lightning_green.tune.space import flatten

#: Energy records of trial attempts that were interrupted (kept when a study is resumed).
ATTEMPTS_DIR = "attempts"
#: The stages of a fit: a trial's ``energy_j`` and ``dynamic_j`` (``total_j`` adds its test).
FIT_STAGES = ("train", "validate", "sanity_check")


def trials_table(grid: Iterable[Any], acc: str, energy: str) -> pd.DataFrame:
    """One row per trial, in creation order: parameters, final metrics, status, its folder.

    ``grid``: Ray's results (each with ``metrics``, ``config``, ``error`` and ``path``)."""
    rows = []
    for r in grid:
        m = r.metrics or {}
        trial_id = m.get("trial_id") or Path(r.path).name
        row: dict[str, Any] = {"trial_id": trial_id}
        row.update({f"param.{k}": v for k, v in flatten(r.config or {}).items()})
        row.update(
            accuracy=m.get(acc),
            energy_j=m.get(energy),
            dynamic_j=m.get("dynamic_j"),
            test_acc=m.get("test_acc"),
            total_j=m.get("total_j", m.get(energy)),
            epochs=m.get("epochs", m.get("training_iteration")),
            iterations=m.get("training_iteration"),
            finished=bool(m.get("final", False)),
            status="ERROR" if r.error else "TERMINATED",
            error=repr(r.error)[:300] if r.error else "",
            source=m.get("source", ""),
            node_id=m.get("node_id", ""),
            path=r.path,
        )
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    # Ray names a trial's folder <trainable>_<trial id>_<creation counter>_<params>: the counter is
    # the order in which the searcher proposed the trials.
    df["order"] = [_creation_index(tid, path) for tid, path in zip(df["trial_id"], df["path"], strict=True)]
    return df.sort_values("order").reset_index(drop=True)


def add_trial_figures(
    meta: dict[str, Any], df: pd.DataFrame, tune_cfg: DictConfig, *, experiment: Path, attempts: Path,
    max_epochs: int,
) -> None:  # fmt: skip
    """Complete ``df`` from the trials' records (:func:`add_savings`, :func:`add_attempts`) and
    put the study's trial figures in ``meta``: trials, failures, energy used and saved."""
    meta["trials"] = len(df)
    meta["failed"] = int((df["status"] == "ERROR").sum()) if not df.empty else 0
    if df.empty:
        return
    add_savings(df, max_epochs)
    meta["stopped_early"] = int(df["stopped_early"].sum())
    meta["energy_saved_estimate_j"] = float(df["energy_saved_estimate_j"].sum())
    add_attempts(df, experiment, attempts, tune_cfg.energy_metric)
    meta["other_attempts_j"] = float(df["other_attempts_j"].sum())
    meta["energy_used_j"] = float(trial_energy_j(df).sum())
    meta["trials_energy_j"] = meta["energy_used_j"] - meta["other_attempts_j"]
    meta["energy_used_covers"] = (
        "each trial's last attempt (train, validation, test; from its final report, or from its "
        "records where it sent none: failed, stopped by a scheduler, cut by an interruption) "
        "plus the recorded windows of its other attempts (other_attempts_j: crashed, killed or "
        "cut attempts)"
    )
    meta["stopped_by_energy_budget"] = bool(
        tune_cfg.energy_budget_j and meta["energy_used_j"] >= tune_cfg.energy_budget_j
    )


def add_overheads(
    meta: dict[str, Any], df: pd.DataFrame, tune_cfg: DictConfig, cluster: dict[str, Any], wall_s: float,
    started: float,
) -> None:  # fmt: skip
    """Each trial's seconds in windows (``train_s``) and its records' source where it reported
    none; in ``meta``, the wall seconds per trial slot outside training (``overhead_per_trial_s``)
    and the study's fixed start-up apart from what each further trial adds."""
    if df.empty:
        return
    windows = [_windows_span(p) for p in df["path"]]
    df["train_s"] = [seconds for seconds, _ in windows]
    # A trial a scheduler stopped never sent its final report: its source is in its records
    missing = df["source"].isna() | (df["source"].astype(str) == "")
    df.loc[missing, "source"] = [_records_source(p) for p in df.loc[missing, "path"]]
    cpus = int(cluster.get("cpus") or 1) // max(1, tune_cfg.cpus_per_trial)
    slots = max(1, min(tune_cfg.max_concurrent, len(df), cpus))
    train_s = float(df["train_s"].sum())
    meta["overhead_per_trial_s"] = max(0.0, (wall_s * slots - train_s) / len(df))
    # The study's fixed start-up (Ray, the first workers' imports, the first Trainer) apart
    # from what each further trial adds
    first = [start for _, start in windows if start is not None]
    if first:
        startup_s = max(0.0, min(first) - started)
        meta["startup_s"] = startup_s
        meta["overhead_per_trial_after_startup_s"] = max(
            0.0, ((wall_s - startup_s) * slots - train_s) / len(df)
        )


def add_savings(df: pd.DataFrame, max_epochs: int) -> None:
    """Mark trials that ended before their last epoch (a scheduler or stopper, or a callback in
    the trial such as the efficient strategy's stop at the target), and estimate the energy that
    saved: their mean energy per epoch so far x the epochs they did not run (an estimate). A
    trial's own ``param.trainer.max_epochs``, when searched, is its last epoch."""
    ok = df["status"] == "TERMINATED"
    epochs = df["epochs"].astype(float)
    last = (
        df["param.trainer.max_epochs"].astype(float)
        if "param.trainer.max_epochs" in df
        else float(max_epochs)
    )
    df["stopped_early"] = ok & (epochs < last)
    per_epoch = df["energy_j"].astype(float) / epochs.where(epochs > 0)
    df["energy_saved_estimate_j"] = (per_epoch * (last - epochs)).where(df["stopped_early"], 0.0).fillna(0.0)


def keep_attempts(experiment: Path, dest: Path) -> None:
    """Copy every trial folder's energy records under ``dest/<trial folder>/`` before a resume."""
    for records in sorted(experiment.glob(f"*/{RECORDS_FILE}")):
        target = dest / records.parent.name
        target.mkdir(parents=True, exist_ok=True)
        n = len(list(target.glob("*.jsonl")))
        shutil.copyfile(records, target / f"{RECORDS_FILE.removesuffix('.jsonl')}-{n}.jsonl")


def add_attempts(df: pd.DataFrame, experiment: Path, kept: Path, energy_metric: str = "energy_j") -> None:
    """Complete each trial's energy from its records (the trial folder's ``energy.jsonl`` and the
    copies :func:`keep_attempts` made; each window counted once):

    - ``other_attempts_j`` / ``other_attempts_dynamic_j``: the windows of attempts other than its
      last (a crash or kill retried by Ray, an attempt cut by an interrupted study);
    - ``total_dynamic_j``: the dynamic energy of its last attempt's windows, test included (what
      a comparison sums beside ``total_j``);
    - for a trial whose final report is missing (it failed, a scheduler stopped it, the study was
      cut): ``total_j`` and ``dynamic_j`` from its last attempt's windows, and its energy metric
      where it reported none. Energy spent is counted whether or not Ray heard of it.

    ``energy_from`` says where a trial's figures come from: ``final report``, ``records``,
    ``last report`` (no records to read), or ``none``. The last attempt is the one that wrote
    ``run.json``, else the one whose windows started last.
    """
    for column in ("energy_j", "total_j", "dynamic_j"):
        if column not in df:
            df[column] = math.nan
    finished = (
        df["finished"].fillna(False).astype(bool) if "finished" in df else pd.Series(False, index=df.index)
    )
    extra, extra_dynamic, total_dynamic, sources = [], [], [], []
    for i, path in zip(df.index, df["path"], strict=True):
        mine, others = _attempts(Path(str(path)), kept)
        extra.append(sum(w.energy_j for w in others))
        extra_dynamic.append(_dynamic_j(others))
        total_dynamic.append(_dynamic_j(mine) if mine else df.at[i, "dynamic_j"])
        if finished[i]:
            sources.append("final report")
        elif mine:
            fit = [w for w in mine if w.stage in FIT_STAGES]
            df.at[i, "total_j"] = sum(w.energy_j for w in mine)
            df.at[i, "dynamic_j"] = _dynamic_j(fit)
            if pd.isna(df.at[i, "energy_j"]):
                df.at[i, "energy_j"] = _metric_from_windows(energy_metric, mine)
            sources.append("records")
        else:
            sources.append("none" if pd.isna(df.at[i, "energy_j"]) else "last report")
    df["other_attempts_j"] = extra
    df["other_attempts_dynamic_j"] = pd.Series(extra_dynamic, index=df.index, dtype=float)
    df["total_dynamic_j"] = pd.Series(total_dynamic, index=df.index, dtype=float)
    df["energy_from"] = sources


def _attempts(folder: Path, kept: Path) -> tuple[list, list]:
    """A trial's windows (its folder's records and the kept copies, each once): its last
    attempt's, and every other attempt's."""
    files = [folder / RECORDS_FILE, *sorted((kept / folder.name).glob("*.jsonl"))]
    seen: dict[tuple, Any] = {}
    for f in files:
        if f.is_file():
            for w in read_windows(f):
                seen[(w.run_id, w.stage, w.epoch, w.start_time)] = w
    last = read_json(folder / RUN_FILE).get("run_id") if (folder / RUN_FILE).is_file() else None
    if last is None and seen:
        last = max(seen.values(), key=lambda w: w.start_time).run_id
    return [w for w in seen.values() if w.run_id == last], [w for w in seen.values() if w.run_id != last]


def _dynamic_j(windows: list) -> float | None:
    """Dynamic energy of ``windows`` (0 for none); ``None`` when a window has none (no baseline)."""
    if any(w.dynamic_j is None for w in windows):
        return None
    return float(sum(w.dynamic_j for w in windows))


def _metric_from_windows(metric: str, windows: list) -> float:
    """A trial's energy metric (what it reports every epoch) recomputed from its windows."""
    fit = [w for w in windows if w.stage in FIT_STAGES]
    if metric == "total_j":
        return float(sum(w.energy_j for w in windows))
    if metric == "train_epoch_j":
        train = [w for w in fit if w.stage == "train"]
        return float(max(train, key=lambda w: w.start_time).energy_j) if train else math.nan
    if metric == "dynamic_j":
        dynamic = _dynamic_j(fit)
        return math.nan if dynamic is None else dynamic
    return float(sum(w.energy_j for w in fit))


def _records_source(path: Any) -> str:
    """``domain=source`` of a trial's energy records (as the final report says it)."""
    folder = Path(str(path))
    windows = read_windows(folder) if (folder / RECORDS_FILE).is_file() else []
    sources = {d: src for w in windows for d, src in w.sources.items()}
    return ", ".join(f"{d}={src}" for d, src in sorted(sources.items()))


def _windows_span(path: Any) -> tuple[float, float | None]:
    """Seconds a trial spent in EnergyMonitor's windows (training, validation, test), and the Unix
    time its first window opened (``None`` without records)."""
    folder = Path(str(path))
    if not (folder / RECORDS_FILE).is_file():
        return 0.0, None
    windows = read_windows(folder)
    return float(sum(w.seconds for w in windows)), min((w.start_time for w in windows), default=None)


def _creation_index(trial_id: str, path: str) -> float:
    m = re.search(rf"_{re.escape(str(trial_id))}_(\d+)", Path(str(path)).name)
    return int(m.group(1)) if m else math.inf
