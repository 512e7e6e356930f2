"""Plots of tuning studies and comparisons: anytime curves (best accuracy so far against trials
and against tuning energy) and accuracy against energy per trial with each Pareto front.

Every strategy stays visible where its curve is another's: each has its own colour, line style
and marker, the first drawn is the widest (a later one on top leaves its edges showing), markers
are staggered along the curves and, against trials, each strategy is shifted a little sideways.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lightning_green._plotting import DPI, pyplot, save, style
from lightning_green.records import trial_energy_j
from lightning_green.report.pareto import pareto_mask


def best_so_far(t: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Best accuracy so far and cumulative tuning energy after each trial, in trial order."""
    t = t.sort_values("order") if "order" in t else t
    best = t["accuracy"].astype(float).fillna(-np.inf).cummax().replace(-np.inf, np.nan).to_numpy()
    return best, trial_energy_j(t).cumsum().to_numpy()


def band(
    curves: list[np.ndarray], level: float = 0.95, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over seeds per trial index and its bootstrap interval (columns: trial index)."""
    n = min(len(c) for c in curves)
    m = np.array([c[:n] for c in curves], dtype=float)
    mean = np.nanmean(m, axis=0)
    if len(curves) < 2:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(curves), size=(2000, len(curves)))
    means = np.nanmean(m[idx], axis=1)
    lo, hi = np.nanquantile(means, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return mean, lo, hi


def seeds_phrase(studies: dict[str, list[pd.DataFrame]]) -> str:
    """What the trials panel draws: ``one seed``, ``mean of 3 seeds, 95% bootstrap band``, or,
    where strategies ran different numbers of seeds, ``mean of 1-3 seeds; 95% band where 2 or more``."""
    counts = sorted({len(ts) for ts in studies.values()})
    if counts == [1]:
        return "one seed" if len(studies) == 1 else "one seed each"
    if len(counts) == 1:
        return f"mean of {counts[0]} seeds, 95% bootstrap band"
    band_note = "; 95% band where 2 or more" if counts[0] == 1 else ", 95% bootstrap band"
    return f"mean of {counts[0]}-{counts[-1]} seeds{band_note}"


def _widths(k: int) -> list[float]:
    """Line widths, widest first: a strategy drawn over another's identical curve leaves it showing."""
    return [1.2 + 2.0 * (k - 1 - i) / max(k - 1, 1) for i in range(k)]


def _marks(i: int, n: int) -> list[int]:
    """Which of a curve's ``n`` points get a marker: every one of a short curve; of a long one, one
    in ``step``, starting at a different point per strategy (where curves coincide, each shows)."""
    step = max(1, n // 8)
    return list(range(i % step, n, step))


def _fit(ax: Any, ys: list[np.ndarray], target: float | None, axis: str = "y") -> None:
    """An axis fitted to what is drawn (the target too), a small margin either side."""
    values = np.concatenate(
        [np.ravel(y) for y in ys] + [np.array([target if target is not None else np.nan])]
    )
    values = values[np.isfinite(values)]
    if not values.size:
        return
    lo, hi = float(values.min()), float(values.max())
    pad = (hi - lo) * 0.06 or max(abs(hi) * 0.05, 0.01)
    (ax.set_ylim if axis == "y" else ax.set_xlim)(lo - pad, hi + pad)


def anytime_figure(studies: dict[str, list[pd.DataFrame]], target: float | None = None) -> Any:
    """Best accuracy so far against trials (mean over seeds, bootstrap band with two or more) and
    against cumulative tuning energy (each seed), one colour, line style and marker per strategy;
    one legend below both panels."""
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.8), dpi=DPI, layout="constrained")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    k = len(studies)
    widths, shown, xmax, spent, seeds = _widths(k), [], 1, [], []
    for i, (name, ts) in enumerate(studies.items()):
        color, look = colors[i % len(colors)], style(i)
        curves = []
        for t in ts:
            best, joules = best_so_far(t)
            b.step(joules, best, where="post", color=color, ls=look["ls"], lw=widths[i], alpha=0.85, zorder=2 + i)  # fmt: skip
            b.plot(joules, best, ls="none", marker=look["marker"], ms=4, color=color, zorder=2 + i,
                   markevery=_marks(i, len(best)))  # fmt: skip
            curves.append(best)
            spent.append(joules)
            seeds.append(best)
        mean, lo, hi = band(curves)
        shift = (i - (k - 1) / 2) * min(0.1, 0.5 / k)
        # one more point half a trial on: the last trial's level shows as a step too
        x = np.arange(1, len(mean) + 2)[: len(mean) + 1] + shift
        x[-1] -= 0.5
        mean, lo, hi = (np.append(v, v[-1:]) for v in (mean, lo, hi))
        a.step(x, mean, where="post", color=color, ls=look["ls"], lw=widths[i], zorder=2 + i,
               marker=look["marker"], ms=5, markevery=_marks(i, len(mean) - 1), label=name)  # fmt: skip
        if len(curves) > 1:
            a.fill_between(x, lo, hi, step="post", color=color, alpha=0.12, lw=0)
            shown += [lo, hi]
        shown.append(mean)
        xmax = max(xmax, len(mean) - 1)
    if target is not None:
        for ax in (a, b):
            ax.axhline(target, ls=(0, (4, 3)), c="k", lw=0.9, zorder=1, label=f"target {target:.4f}")
    for ax, drawn in ((a, shown), (b, seeds)):
        ax.set_ylabel("best accuracy so far")
        _fit(ax, drawn, target)
    a.set_xlim(0.5, xmax + 0.5)
    a.xaxis.get_major_locator().set_params(integer=True)
    _fit(b, spent, None, axis="x")
    a.set_xlabel("trials")
    b.set_xlabel("cumulative tuning energy (J)")
    a.set_title(f"Best accuracy so far vs trials ({seeds_phrase(studies)})", fontsize=9)
    several = any(len(ts) > 1 for ts in studies.values())
    b.set_title(f"Best accuracy so far vs tuning energy{' (each seed)' if several else ''}", fontsize=9)
    handles, labels = a.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 6), fontsize=8)
    return fig


def pareto_figure(studies: dict[str, list[pd.DataFrame]]) -> Any:
    """Every trial at its accuracy and energy and each strategy's Pareto front (its seeds pooled),
    one colour, line style and marker per strategy; the legend beside the axes, off the data."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=DPI, layout="constrained")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    widths = _widths(len(studies))
    drawn = 0
    for i, (name, ts) in enumerate(studies.items()):
        t = pd.concat(ts, ignore_index=True)
        t = t[t["accuracy"].notna() & t["energy_j"].notna()]
        if t.empty:
            continue
        color, look = colors[i % len(colors)], style(i)
        acc, en = t["accuracy"].astype(float).to_numpy(), t["energy_j"].astype(float).to_numpy()
        m = pareto_mask(acc, en)
        ax.plot(en[~m], acc[~m], ls="none", marker=look["marker"], ms=4, alpha=0.35, color=color)
        order = np.argsort(en[m])
        ax.plot(en[m][order], acc[m][order], color=color, ls=look["ls"], lw=widths[i], marker=look["marker"],
                ms=3 + 2 * widths[i], zorder=3 + i, label=f"{name}: front")  # fmt: skip
        drawn += len(t)
    ax.margins(0.05)
    ax.set_xlabel("trial training energy (J)")
    ax.set_ylabel("accuracy")
    pooled = any(len(ts) > 1 for ts in studies.values())
    whose = "the study's Pareto front" if len(studies) == 1 else "each strategy's Pareto front"
    ax.set_title(
        f"Accuracy vs energy: {drawn} trials, {whose}{' (its seeds pooled)' if pooled else ''}", fontsize=9
    )
    if drawn:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def anytime_plot(
    studies: dict[str, list[pd.DataFrame]], out: Path, target: float | None = None
) -> list[Path]:
    """``anytime.png`` (:func:`anytime_figure`) and ``accuracy_vs_energy.png`` (:func:`pareto_figure`)."""
    return [save(anytime_figure(studies, target), out / "anytime.png"), *pareto_plot(studies, out)]


def pareto_plot(studies: dict[str, list[pd.DataFrame]], out: Path) -> list[Path]:
    """``accuracy_vs_energy.png``: :func:`pareto_figure`."""
    return [save(pareto_figure(studies), out / "accuracy_vs_energy.png")]
