"""Which trial of a study is best, by the study's own objective, and the trials in that order.

- ``random``, ``grid``, ``bayes``: the highest accuracy (ties: the lower training energy).
- ``multi`` (accuracy up, energy down): the Pareto front first (non-dominated sorting: the front,
  then the front of what is left, ...), each front from its most accurate trial; its best is the
  front's most accurate trial.
- ``efficient`` (least energy to reach the target): the trials that reached the target accuracy
  (``tune.target_accuracy``, else ``tune.target_fraction`` x the study's best accuracy), cheapest
  first, then the rest by accuracy; its best is the cheapest that reached it.

Failed trials (``status`` ``ERROR``) come after every trial that ended, whatever they reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from lightning_green._plotting import level
from lightning_green.report.pareto import pareto_mask


@dataclass(frozen=True)
class Objective:
    """What a study's trials are ranked by: ``kind`` (``accuracy``, ``pareto`` or ``target``),
    a sentence saying so, and the target accuracy (``kind == "target"`` only)."""

    kind: str
    text: str
    target: float | None = None


def objective(meta: dict[str, Any], trials: pd.DataFrame) -> Objective:
    """The objective of a study from its ``study.json`` (strategy, metrics, target)."""
    strategy = (meta.get("strategy") or {}).get("name", "")
    acc = meta.get("accuracy_metric") or "accuracy"
    energy = meta.get("energy_metric") or "energy_j"
    if strategy == "efficient":
        target = meta.get("target_accuracy")
        how = "tune.target_accuracy"
        if target is None:
            best = float(trials["accuracy"].astype(float).max()) if len(trials) else float("nan")
            target = float(meta.get("target_fraction") or 0.95) * best
            how = f"{float(meta.get('target_fraction') or 0.95):.0%} of the best {acc}"
        return Objective(
            "target", f"least {energy} among the trials reaching {acc} >= {target:.4f} ({how})", float(target)
        )
    if strategy == "multi":
        return Objective("pareto", f"Pareto rank on ({acc} up, {energy} down), then {acc}")
    return Objective("accuracy", f"highest {acc}, ties by lower {energy}")


def pareto_ranks(accuracy: np.ndarray, energy: np.ndarray) -> np.ndarray:
    """Non-dominated sorting: 1 for the Pareto front, 2 for the front of the rest, ...; 0 where a
    figure is missing."""
    ranks = np.zeros(len(accuracy), dtype=int)
    left = np.flatnonzero(np.isfinite(accuracy) & np.isfinite(energy))
    rank = 1
    while left.size:
        front = pareto_mask(accuracy[left], energy[left])
        ranks[left[front]] = rank
        left, rank = left[~front], rank + 1
    return ranks


def rank_trials(meta: dict[str, Any], trials: pd.DataFrame) -> tuple[pd.DataFrame, Objective]:
    """The trials, best first by the study's :func:`objective`, and that objective."""
    obj = objective(meta, trials)
    if trials.empty:
        return trials, obj
    acc = trials["accuracy"].astype(float).to_numpy()
    en = trials["energy_j"].astype(float).to_numpy()
    failed = (trials["status"] == "ERROR").to_numpy() if "status" in trials else np.zeros(len(trials), bool)
    unknown = ~np.isfinite(acc)
    keys: list[np.ndarray] = [failed, unknown]
    if obj.kind == "pareto":
        ranks = pareto_ranks(acc, en).astype(float)
        keys.append(np.where(ranks == 0, np.inf, ranks))
    elif obj.kind == "target":
        reached = np.isfinite(acc) & (acc >= (obj.target or 0.0))
        keys += [~reached, np.where(reached, np.nan_to_num(en, nan=np.inf), 0.0)]
    keys += [-np.nan_to_num(acc, nan=-np.inf), np.nan_to_num(en, nan=np.inf)]
    order = np.lexsort(keys[::-1])  # lexsort's last key is the primary one
    return trials.iloc[order], obj


def best_trial(meta: dict[str, Any], trials: pd.DataFrame) -> tuple[pd.Series | None, Objective]:
    """The study's best trial by its objective (``None`` when no trial has an accuracy)."""
    ranked, obj = rank_trials(meta, trials)
    if ranked.empty or pd.isna(ranked.iloc[0]["accuracy"]):
        return None, obj
    return ranked.iloc[0], obj


def configuration(row: pd.Series) -> dict[str, Any]:
    """A trial's searched values (its ``param.*`` columns, the prefix dropped)."""
    return {
        k.removeprefix("param."): row[k] for k in row.index if k.startswith("param.") and pd.notna(row[k])
    }


def best_lines(row: pd.Series, what: str, width: int = 100) -> list[str]:
    """A best trial on the console: what it is best by, its accuracy and energy, then its
    configuration as ``key=value`` overrides wrapped to ``width`` columns."""
    import textwrap

    trial = f", trial {row['trial_id']}" if "trial_id" in row and pd.notna(row["trial_id"]) else ""
    head = (
        f"{what}{trial}: accuracy {float(row['accuracy']):.4f}, training energy "
        f"{float(row['energy_j']):.1f} J"
    )
    if "total_j" in row and pd.notna(row["total_j"]):
        head += f" ({float(row['total_j']):.1f} J with its test)"
    config = " ".join(f"{k}={_value(v)}" for k, v in configuration(row).items()) or "(no searched values)"
    return [
        *textwrap.wrap(head, width, subsequent_indent="  "),
        *textwrap.wrap(config, width, initial_indent="  ", subsequent_indent="  ", break_on_hyphens=False),
    ]


def _value(v: Any) -> str:
    if isinstance(v, float) and not v.is_integer():
        return f"{v:.6g}"
    return level(v)
