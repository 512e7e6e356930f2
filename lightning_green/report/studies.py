"""Reports on tuning studies and comparisons of search strategies, from their files only
(``study.json``, ``trials.csv``): best accuracy, tuning energy, energy to a target accuracy,
hypervolume of the (accuracy, energy) front, Pareto sets, anytime curves.

One study's report is here; its trials' metrics are in :mod:`~lightning_green.report.metrics`,
comparisons in :mod:`~lightning_green.report.compare`, the ranking by objective in
:mod:`~lightning_green.report.ranking` and the plots in :mod:`~lightning_green.report.study_plots`
(all importable from here too, as before).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from lightning_green.records import PARETO_FILE, TRIALS_FILE
from lightning_green.report.compare import (
    compare_console,
    compare_table,
    differences,
    load_comparison,
    report_compare,
    report_compare_console,
    write_compare,
)
from lightning_green.report.console import WIDTH, console_table, wrap
from lightning_green.report.metrics import pareto_table, read_study, study_metrics, trial_dynamic_j
from lightning_green.report.ranking import best_lines, best_trial, rank_trials
from lightning_green.report.runs import markdown_table
from lightning_green.report.stats import BOOTSTRAP_RESAMPLES, bootstrap_ci, resolved
from lightning_green.report.study_plots import anytime_plot, pareto_plot

__all__ = [
    "BOOTSTRAP_RESAMPLES", "anytime_plot", "bootstrap_ci", "compare_console", "compare_table", "differences",
    "load_compare", "load_comparison", "load_study", "pareto_plot", "pareto_table", "read_study", "report_compare",
    "report_compare_console", "report_study", "resolved", "study_console", "study_metrics", "trial_dynamic_j",
    "write_compare", "write_pareto",
]  # fmt: skip

#: Trials ``report`` prints of a study (summary.md lists them all).
CONSOLE_TRIALS = 10


def load_study(path: str | Path) -> tuple[dict[str, Any], pd.DataFrame]:
    """A study's settings (``study.json``) and its trials as a DataFrame, for a notebook:
    ``meta, trials = load_study("lightning_green_runs/tune/<date>")``."""
    return read_study(path)


def load_compare(path: str | Path) -> pd.DataFrame:
    """A comparison's table (``compare.csv``) with numeric columns numeric (NaN where a strategy
    never reached the target)."""
    return pd.read_csv(Path(path) / "compare.csv", na_values=["never"])


def _columns(trials: pd.DataFrame) -> list[str]:
    """The columns of a study's trial tables: searched values, then results."""
    results = ["accuracy", "test_acc", "energy_j", "total_j", "epochs", "status", "source"]
    return [c for c in trials.columns if c.startswith("param.")] + [c for c in results if c in trials]


def _source(trials: pd.DataFrame) -> str:
    sources = sorted({str(s) for s in trials["source"].dropna()}) if "source" in trials else []
    kind = "measured" if "measured" in " ".join(sources) else "estimated"
    return f"{kind}: {', '.join(sources)}" if sources else kind


def report_study(path: str | Path, out: str | Path | None = None) -> list[Path]:
    """summary.csv / summary.md (the trials best first by the study's objective, see
    :mod:`~lightning_green.report.ranking`; the Pareto set) and plots (accuracy vs energy with
    the Pareto front; anytime curves)."""
    path = Path(path)
    out = Path(out) if out else path
    out.mkdir(parents=True, exist_ok=True)
    meta, trials = read_study(path)
    if trials.empty:
        raise FileNotFoundError(
            f"{path}: the study has no {TRIALS_FILE} yet (still running, or interrupted: resume it)"
        )
    metrics = study_metrics(trials)
    paths = [out / "summary.csv", out / "summary.md", out / PARETO_FILE]
    trials.to_csv(paths[0], index=False)
    pareto = pareto_table(trials)
    pareto.to_csv(paths[2], index=False)
    cols = _columns(trials)
    ranked, objective = rank_trials(meta, trials)
    lines = [
        f"# Study: {meta['strategy']['name']} ({len(trials)} trials, seed {meta['seed']})",
        "",
        f"best accuracy {metrics['best_accuracy']:.4f}; tuning energy {metrics['total_energy_j']:.1f} J "
        f"({_source(trials)}); {metrics['failed']} failed",
        "",
        f"## Trials, best first by the study's objective: {objective.text}",
        "",
        markdown_table(ranked[cols]),
        "",
        "## Pareto set (no other trial is both more accurate and cheaper)",
        "",
        markdown_table(pareto[cols]) if not pareto.empty else "(none)",
    ]
    paths[1].write_text("\n".join(lines) + "\n")
    paths += anytime_plot({meta["strategy"]["name"]: [trials]}, out)
    return paths


def study_console(path: str | Path, rows: int = CONSOLE_TRIALS, width: int = WIDTH) -> str:
    """What ``tune`` (``rows=0``) and ``report`` on a study print, in ``width`` columns: a line
    with its trials, best accuracy and tuning energy; the first ``rows`` trials best first by its
    objective (key columns); the best trial's configuration and figures; the Pareto set's size."""
    meta, trials = read_study(path)
    name = meta["strategy"]["name"]
    cut = " (interrupted)" if meta.get("interrupted") else ""
    if trials.empty:
        return wrap(f"{name} study{cut}: no trials; results in {path}", width)
    m = study_metrics(trials)
    lines = [
        wrap(
            f"{name} study{cut}: {m['trials']} trials ({m['failed']} failed), best accuracy "
            f"{m['best_accuracy']:.4f}, tuning energy {m['total_energy_j']:.1f} J ({_source(trials)})",
            width,
        )
    ]
    ranked, objective = rank_trials(meta, trials)
    if rows > 0:
        shown = ranked.head(rows).reset_index(drop=True)
        more = (
            f"; the first {len(shown)} of {len(trials)}, all in summary.md"
            if len(trials) > len(shown)
            else ""
        )
        lines += [
            wrap(f"Trials, best first by {objective.text}{more}:", width),
            console_table(
                shown.assign(rank=range(1, len(shown) + 1)), ["rank", "trial_id", *_columns(shown)], width
            ),
        ]
    best, _ = best_trial(meta, trials)
    lines += (
        best_lines(best, f"Best configuration ({objective.text})", width)
        if best is not None
        else ["No trial reported an accuracy: no best configuration."]
    )
    front = len(pareto_table(trials))
    lines.append(
        f"Pareto set (accuracy up, energy down): {front} trial{'s' if front != 1 else ''} (pareto.csv)"
    )
    return "\n".join(lines)


def write_pareto(path: str | Path) -> Path | None:
    """Write a study's ``pareto.csv`` from its ``trials.csv``; ``None`` when it has no trials yet."""
    path = Path(path)
    _, trials = read_study(path)
    if trials.empty:
        return None
    pareto_table(trials).to_csv(path / PARETO_FILE, index=False)
    return path / PARETO_FILE
