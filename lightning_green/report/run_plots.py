"""Plots of training runs (``report`` on a run, a multirun or several folders): accuracy against
energy with its Pareto front, and mean energy per level of each swept factor."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lightning_green._plotting import DPI, fix_layout, level, place_labels, pyplot, save
from lightning_green.report.pareto import pareto_mask

#: Runs up to which every point is labelled (where it fits); above it, the Pareto front and the extremes.
LABEL_ALL = 10
#: Characters per line of a point's label.
LABEL_WIDTH = 30


def point_label(row: pd.Series, factors: list[str]) -> str:
    """A run's label on a plot: its swept values (``conv_layers=4, lr=0.001``), else its folder.
    A value the run did not set is left out, and a whole number stays whole (``3``, not ``3.0``)."""
    parts = [f"{f.rsplit('.', 1)[-1]}={level(row[f])}" for f in factors if pd.notna(row[f])]
    if parts:
        return ", ".join(parts)
    run = str(row["run"])
    tail = "/".join(run.rstrip("/").split("/")[-2:])
    return run if len(run) <= LABEL_WIDTH else f".../{tail}"


def _source_word(df: pd.DataFrame) -> str:
    s = " ".join(map(str, df["source"]))
    if "estimated" in s and "measured" in s:
        return "measured + estimated"
    return "estimated" if "estimated" in s else "measured"


def label_order(acc: np.ndarray, en: np.ndarray, front: np.ndarray) -> list[int]:
    """Which points to label, most important first: the most accurate and the cheapest run, the
    rest of the Pareto front (cheapest first), the other extremes (least accurate, most energy),
    then, for a few runs, the rest."""
    ok = np.flatnonzero(np.isfinite(acc) & np.isfinite(en))
    if not ok.size:
        return []
    ends = [ok[np.argmax(acc[ok])], ok[np.argmin(en[ok])]]
    others = [ok[np.argmin(acc[ok])], ok[np.argmax(en[ok])]]
    order: list[int] = []
    for i in [*ends, *sorted((i for i in ok if front[i]), key=lambda i: en[i]), *others]:
        if int(i) not in order:
            order.append(int(i))
    if len(ok) <= LABEL_ALL:
        order += [int(i) for i in ok if i not in order]
    return [int(i) for i in order]


def accuracy_energy_figure(df: pd.DataFrame, factors: list[str]) -> Any:
    """Every run with an accuracy at its training energy, the Pareto front joined, points labelled
    by their swept values without overlap (:func:`label_order`); the title says how many runs
    are drawn and which are labelled."""
    plt = pyplot()
    acc = df["test_acc"].astype(float).fillna(df["val_acc"].astype(float)).to_numpy()
    en = df["energy_j"].astype(float).to_numpy()
    ok = np.isfinite(acc) & np.isfinite(en)
    front = np.zeros(len(df), dtype=bool)
    front[ok] = pareto_mask(acc[ok], en[ok])
    fig, ax = plt.subplots(figsize=(7, 5), dpi=DPI)
    rest = ok & ~front
    ax.scatter(en[rest], acc[rest], c="tab:gray", s=25, label="run" if rest.any() else None)
    order = np.flatnonzero(front)[np.argsort(en[front])]
    ax.plot(en[order], acc[order], "o-", c="tab:green", ms=6, label="Pareto front")
    ax.margins(0.08)
    ax.set_xlabel(f"training energy (J, {_source_word(df)})")
    ax.set_ylabel("accuracy (test, else validation)")
    missing = int((~ok).sum())
    head = f"Accuracy vs energy: {int(ok.sum())} run{'s' if ok.sum() != 1 else ''}" + (
        f" ({missing} without an accuracy not drawn)" if missing else ""
    )
    ax.set_title(f"{head}\nlabelled: every run", fontsize=10)
    if ok.any():
        ax.legend(fontsize=8, loc="best")
    fix_layout(fig)
    texts = [textwrap.fill(point_label(row, factors), LABEL_WIDTH) for _, row in df.iterrows()]
    wanted = label_order(acc, en, front)
    placed = place_labels(ax, list(zip(en.tolist(), acc.tolist(), strict=True)), texts, wanted)
    if len(placed) < int(ok.sum()):
        which = (
            "the Pareto front and the extremes first" if len(wanted) < int(ok.sum()) else "where a label fits"
        )
        ax.set_title(
            f"{head}\n{len(placed)} of {int(ok.sum())} labelled ({which}; every run in summary.csv)",
            fontsize=10,
        )
    return fig


def factor_figure(df: pd.DataFrame, factors: list[str], effects: pd.DataFrame | None) -> Any:
    """Mean training energy per level of each swept factor (runs that did not set it: ``(not
    set)``), with each factor's eta^2 where the design is factorial."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(factors), figsize=(3.4 * len(factors), 3.8), squeeze=False, dpi=DPI)
    for ax, f in zip(axes[0], factors, strict=True):
        means = df.groupby(f, dropna=False)["energy_j"].mean()
        keys, values = list(means.index), means.to_numpy(dtype=float)
        pos = sorted(range(len(keys)), key=lambda k: _level_key(keys[k]))
        names = [level(keys[k]) for k in pos]
        ax.bar(range(len(pos)), values[pos], color="tab:orange")
        ax.set_xticks(range(len(pos)), names)
        if sum(len(n) for n in names) > 18:  # long levels would run into each other
            ax.tick_params(axis="x", labelrotation=30)
            for t in ax.get_xticklabels():
                t.set_ha("right")
        title = f.rsplit(".", 1)[-1] if len(f) > 24 else f
        if effects is not None and not effects.empty:
            eta = effects[effects["response"] == "energy_j"].set_index("factor").loc[f, "eta_sq"]
            title += f"\neta^2 = {eta:.3f}"
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("mean training energy (J)")
    fig.tight_layout()
    return fig


def _level_key(v: Any) -> tuple[bool, bool, Any]:
    """Levels in order: numbers, then names, then ``(not set)``."""
    missing = v is None or (isinstance(v, float) and np.isnan(v))
    return missing, isinstance(v, str), 0 if missing else v


def plot_runs(df: pd.DataFrame, out: Path, effects: pd.DataFrame | None, factors: list[str]) -> list[Path]:
    """``accuracy_vs_energy.png`` and, with swept factors, ``energy_by_factor.png``."""
    paths = [save(accuracy_energy_figure(df, factors), out / "accuracy_vs_energy.png")]
    if factors:
        paths.append(save(factor_figure(df, factors, effects), out / "energy_by_factor.png"))
    return paths
