"""One tuning study's trials (``study.json``, ``trials.csv``): reading them, their metrics (best
accuracy, tuning energy, energy to a target, hypervolume) and their Pareto set."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lightning_green.records import STUDY_FILE, read_json, trial_energy_j
from lightning_green.report.pareto import hypervolume_2d, pareto_mask
from lightning_green.trials import read_trials


def read_study(path: str | Path) -> tuple[dict[str, Any], pd.DataFrame]:
    """A study folder's ``study.json`` and ``trials.csv`` (empty without one: no trial ended yet)."""
    path = Path(path)
    meta = read_json(path / STUDY_FILE)
    return meta, read_trials(path)


def trial_dynamic_j(trials: pd.DataFrame) -> pd.Series:
    """Energy above the idle baseline each trial of a ``trials.csv`` table spent, over the same
    windows as :func:`~lightning_green.records.trial_energy_j`: its last attempt's
    (``total_dynamic_j``, from its records; ``dynamic_j`` in studies written without it) plus its
    other attempts' (``other_attempts_dynamic_j``). NaN where it is unknown (no baseline); 0 for a
    trial that spent nothing."""
    nan = pd.Series(math.nan, index=trials.index)
    dynamic = trials["total_dynamic_j"] if "total_dynamic_j" in trials else trials.get("dynamic_j", nan)
    dynamic = dynamic.astype(float)
    if "other_attempts_dynamic_j" in trials:
        dynamic = dynamic + trials["other_attempts_dynamic_j"].astype(float)
    return dynamic.where(dynamic.notna() | (trial_energy_j(trials) != 0), 0.0)


def study_metrics(
    trials: pd.DataFrame,
    target: float | None = None,
    ref_energy: float | None = None,
    ref_accuracy: float = 0.0,
) -> dict[str, Any]:
    """Metrics of one study's trials (in the order the searcher asked for them).

    ``energy_to_target_j`` is the tuning energy spent (cumulative :func:`~lightning_green.records.trial_energy_j`, in trial order) up to
    and including the first trial whose accuracy reaches ``target``; ``None`` if none does.
    """
    t = trials.sort_values("order") if "order" in trials else trials
    acc = t["accuracy"].astype(float)
    spent = trial_energy_j(t)
    cum = spent.cumsum().to_numpy()
    ok = acc.notna().to_numpy()
    out: dict[str, Any] = {
        "trials": len(t),
        "failed": int((t["status"] == "ERROR").sum()) if "status" in t else 0,
        "best_accuracy": float(acc.max()) if ok.any() else math.nan,
        "total_energy_j": float(cum[-1]) if len(cum) else 0.0,
        # Above the devices' idle baseline, over the windows total_energy_j covers (NaN when a
        # trial's is unknown: no baseline); CPU estimates are dynamic already.
        "total_dynamic_energy_j": float(trial_dynamic_j(t).sum(skipna=False)),
        "energy_to_target_j": None,
        "trials_to_target": None,
    }
    if target is not None:
        hit = np.flatnonzero(ok & (acc.to_numpy() >= target))
        if hit.size:
            out["energy_to_target_j"] = float(cum[hit[0]])
            out["trials_to_target"] = int(hit[0] + 1)
    if ref_energy is not None:
        e = t["energy_j"].astype(float)
        m = ok & e.notna().to_numpy()
        out["hypervolume"] = hypervolume_2d(acc[m], e[m], ref_accuracy, ref_energy)
        out["hypervolume_normalised"] = out["hypervolume"] / ((1.0 - ref_accuracy) * ref_energy)
    return out


def pareto_table(trials: pd.DataFrame) -> pd.DataFrame:
    """The non-dominated trials (accuracy up, energy down): the study's trade-off curve."""
    done = trials[trials["accuracy"].notna() & trials["energy_j"].notna()]
    if done.empty:
        return done
    mask = pareto_mask(done["accuracy"].astype(float), done["energy_j"].astype(float))
    return done[mask].sort_values("energy_j")
