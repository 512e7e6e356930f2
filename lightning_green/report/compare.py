"""Comparisons of search strategies over seeds (``lightning-green compare``), from their studies'
files only: one row per strategy (means with bootstrap 95% intervals), the differences the seeds
resolve, the plots, and what the console shows of it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lightning_green.records import STUDY_FILE, read_json
from lightning_green.report.console import WIDTH, console_table, wrap
from lightning_green.report.metrics import read_study, study_metrics
from lightning_green.report.ranking import best_lines
from lightning_green.report.runs import markdown_table
from lightning_green.report.stats import BOOTSTRAP_RESAMPLES, bootstrap_ci, fmt_ci, resolved
from lightning_green.report.study_plots import anytime_plot

#: The columns of the comparison the console shows, most important first (compare.md has them all).
CONSOLE_COLUMNS = (
    "strategy", "seeds", "best_accuracy", "total_energy_j", "energy_to_target_j", "reached_target",
    "hypervolume_normalised", "study_energy_j", "failed_trials",
)  # fmt: skip
#: Their headers on the console, and what they are.
CONSOLE_HEADERS = {
    "best_accuracy": "best acc", "total_energy_j": "trials J", "energy_to_target_j": "J to target",
    "reached_target": "reached", "hypervolume_normalised": "hypervolume", "study_energy_j": "study J",
    "failed_trials": "failed",
}  # fmt: skip
CONSOLE_NOTE = (
    "Means over seeds. trials J: the trials' energy; study J: the whole study's, framework included; J to "
    "target: spent until the first trial at the target (over the seeds that reached it, - if none did); "
    "hypervolume: normalised."
)
#: What the columns of compare.md mean (the file's last paragraph).
DEFINITIONS = (
    "`energy_to_target_j`: tuning energy spent, in trial order, until the first trial at or above the target "
    "(mean over the seeds that reached it; `energy_to_target_per_seed_j` lists every seed, `never` where it did not). "
    "`hypervolume`: area of (accuracy, energy) space dominated by the trials, up to the reference point "
    "(normalised: divided by 1 x the reference energy). `_ci95`: percentile bootstrap interval of the mean over "
    f"seeds ({BOOTSTRAP_RESAMPLES} resamples); a difference is resolved when the intervals do not overlap. "
    "`total_energy_j`: the trials' energy; `study_energy_j`: the whole study measured around it (driver, Ray's "
    "processes, idle workers, trial start-up), `framework_share` the part outside the trials, "
    "`overhead_per_trial_s` the wall seconds per trial slot spent outside training; `startup_s` the "
    "study's fixed start-up (Ray, the first workers' imports, up to the first trial's first window) "
    "and `overhead_per_trial_after_startup_s` what each trial adds after it."
)


def compare_table(
    studies: dict[str, list[pd.DataFrame]],
    target_fraction: float = 0.95,
    ref_energy: float | None = None,
    target_accuracy: float | None = None,
    metas: dict[str, list[dict[str, Any]]] | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One row per strategy over its seeds: means with bootstrap 95% intervals; the target
    (``target_accuracy``, else ``target_fraction`` x the best any strategy found) and the
    hypervolume reference are shared by all. ``metas`` (each study's ``study.json``) adds the
    whole study's energy (framework included) beside the trials'."""
    all_trials = pd.concat([t for ts in studies.values() for t in ts], ignore_index=True)
    best = float(all_trials["accuracy"].max())
    target = float(target_accuracy) if target_accuracy is not None else target_fraction * best
    if ref_energy is None:
        ref_energy = 1.1 * float(all_trials["energy_j"].max())
    rows = []
    for name, ts in studies.items():
        ms = [study_metrics(t, target, ref_energy) for t in ts]
        reached = [m["energy_to_target_j"] for m in ms if m["energy_to_target_j"] is not None]
        tt = [m["trials_to_target"] for m in ms if m["trials_to_target"] is not None]
        per_seed = ", ".join(
            f"{m['energy_to_target_j']:.1f}" if m["energy_to_target_j"] is not None else "never" for m in ms
        )
        acc = [m["best_accuracy"] for m in ms]
        hv = [m["hypervolume_normalised"] for m in ms]
        row = {
            "strategy": name,
            "seeds": len(ms),
            "trials_per_seed": int(np.mean([m["trials"] for m in ms])),
            "best_accuracy": float(np.mean(acc)),
            "best_accuracy_ci95": fmt_ci(bootstrap_ci(acc)),
            "best_accuracy_sd": float(np.std(acc)),
            "total_energy_j": float(np.mean([m["total_energy_j"] for m in ms])),
            "total_dynamic_energy_j": float(np.mean([m["total_dynamic_energy_j"] for m in ms])),
            # NaN (numeric) where no seed reached the target; the Markdown table says "never"
            "energy_to_target_j": float(np.mean(reached)) if reached else math.nan,
            "energy_to_target_ci95": fmt_ci(bootstrap_ci(reached)),
            "trials_to_target": float(np.mean(tt)) if tt else math.nan,
            "trials_to_target_ci95": fmt_ci(bootstrap_ci(tt), 3),
            "reached_target": f"{len(reached)}/{len(ms)}",
            "energy_to_target_per_seed_j": per_seed,
            "hypervolume": float(np.mean([m["hypervolume"] for m in ms])),
            "hypervolume_normalised": float(np.mean(hv)),
            "hypervolume_ci95": fmt_ci(bootstrap_ci(hv)),
            "failed_trials": int(sum(m["failed"] for m in ms)),
        }
        studies_meta = (metas or {}).get(name) or []
        if metas is not None:
            row["interrupted_seeds"] = sum(bool(m.get("interrupted")) for m in studies_meta)
        whole = [m.get("study_energy_j") for m in studies_meta if m.get("study_energy_j") is not None]
        if whole:
            row["study_energy_j"] = float(np.mean(whole))
            shares = [m["framework_share"] for m in studies_meta if m.get("framework_share") is not None]
            row["framework_share"] = float(np.mean(shares)) if shares else math.nan
            for key in ("overhead_per_trial_s", "startup_s", "overhead_per_trial_after_startup_s"):
                values = [m[key] for m in studies_meta if m.get(key) is not None]
                row[key] = float(np.mean(values)) if values else math.nan
        row["_ci"] = {
            "energy_to_target_j": bootstrap_ci(reached), "best_accuracy": bootstrap_ci(acc),
            "hypervolume_normalised": bootstrap_ci(hv), "all_reached": len(reached) == len(ms),
        }  # fmt: skip
        rows.append(row)
    info = {"best_accuracy_any": best, "target_accuracy": target, "target_fraction": target_fraction,
            "target_is_absolute": target_accuracy is not None,
            "reference_point": {"accuracy": 0.0, "energy_j": ref_energy},
            "differences": differences(rows)}  # fmt: skip
    for r in rows:
        r.pop("_ci")
    return pd.DataFrame(rows), info


def differences(rows: list[dict[str, Any]], reference: str = "grid") -> list[str]:
    """One sentence per strategy and metric against ``reference`` (or the first strategy): the
    means, their intervals, the ratio, and whether the seeds resolve the difference."""
    by = {r["strategy"]: r for r in rows}
    ref = by.get(reference) or (rows[0] if rows else None)
    if ref is None:
        return []
    out = []
    for r in rows:
        if r is ref:
            continue
        for key, what, unit in (("energy_to_target_j", "energy to target", " J"), ("best_accuracy", "best accuracy", ""),
                                ("hypervolume_normalised", "hypervolume", "")):  # fmt: skip
            a, b = r[key], ref[key]
            if not isinstance(a, float) or not isinstance(b, float) or math.isnan(a) or math.isnan(b):
                out.append(
                    f"{r['strategy']} vs {ref['strategy']}, {what}: not comparable (a strategy never reached the target)"
                )
                continue
            ca, cb = r["_ci"][key], ref["_ci"][key]
            verdict = (
                "resolved (intervals do not overlap)"
                if resolved(ca, cb)
                else "not resolved (intervals overlap)"
            )
            if ca is None or cb is None:
                verdict = "not resolved (fewer than two seeds with a figure)"
            elif key == "energy_to_target_j" and not (r["_ci"]["all_reached"] and ref["_ci"]["all_reached"]):
                verdict += "; only over the seeds that reached the target"
            ratio = f", {a / b:.2f}x" if b else ""
            out.append(
                f"{r['strategy']} vs {ref['strategy']}, {what}: {a:.4g}{unit} {fmt_ci(ca)} vs {b:.4g}{unit} "
                f"{fmt_ci(cb)}{ratio}: {verdict}"
            )
    return out


def _preamble(
    studies: dict[str, list[pd.DataFrame]],
    info: dict[str, Any],
    metas: dict[str, list[dict[str, Any]]] | None,
    not_run: list[str] | None,
) -> tuple[str | None, str]:
    """The warning of an incomplete comparison (``None`` for a whole one) and the line saying
    the target, the hypervolume reference and the energy source."""
    sources = sorted(
        {str(s) for ts in studies.values() for t in ts for s in t.get("source", pd.Series()).dropna()}
    )
    how = (
        "set by tune.target_accuracy"
        if info["target_is_absolute"]
        else f"{info['target_fraction']:.0%} of the best any strategy found, {info['best_accuracy_any']:.4f}"
    )
    cut = [
        f"{name} seed {m.get('seed')} ({m.get('trials', 0)} trials)"
        for name, ms in (metas or {}).items()
        for m in ms
        if m.get("interrupted")
    ]
    warning = None
    if cut or not_run:
        warning = (
            "**Incomplete comparison**: "
            + "; ".join(
                ([f"interrupted before its end: {', '.join(cut)}"] if cut else [])
                + ([f"not run to its end: {', '.join(not_run)}"] if not_run else [])
            )
            + ". Its figures do not cover every strategy's whole budget; rerun the same command with "
            "`tune.resume=true` (same `hydra.run.dir`) to finish it."
        )
    target = (
        f"Target accuracy: {info['target_accuracy']:.4f} ({how}). Hypervolume reference point: accuracy "
        f"{info['reference_point']['accuracy']}, energy {info['reference_point']['energy_j']:.1f} J. Energy source: "
        f"{'; '.join(sources)}."
    )
    return warning, target


def write_compare(
    studies: dict[str, list[pd.DataFrame]],
    out: Path,
    target_fraction: float,
    ref_energy: float | None,
    target_accuracy: float | None = None,
    metas: dict[str, list[dict[str, Any]]] | None = None,
    not_run: list[str] | None = None,
) -> list[Path]:
    """``compare.csv``, ``compare.md`` and the plots. A comparison with a study that was cut short
    (``interrupted`` in its ``study.json``) or that did not run (``not_run``: "<strategy> seed <k>")
    says so at the top of ``compare.md``: its figures are not the strategies' whole budgets."""
    table, info = compare_table(studies, target_fraction, ref_energy, target_accuracy, metas)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "compare.csv", out / "compare.md"]
    table.to_csv(paths[0], index=False)
    warning, target = _preamble(studies, info, metas, not_run)
    text = [
        "# Search strategies compared",
        "",
        *([warning, ""] if warning else []),
        target,
        "",
        markdown_table(table.fillna({"energy_to_target_j": "never", "trials_to_target": "never"})),
        "",
        "## Differences (means over seeds, bootstrap 95% intervals of the mean)",
        "",
        *[f"- {d}" for d in info["differences"]],
        "",
        DEFINITIONS,
    ]
    paths[1].write_text("\n".join(text) + "\n")
    paths += anytime_plot(studies, out, info["target_accuracy"])
    return paths


def compare_console(
    studies: dict[str, list[pd.DataFrame]],
    target_fraction: float,
    ref_energy: float | None,
    target_accuracy: float | None = None,
    metas: dict[str, list[dict[str, Any]]] | None = None,
    not_run: list[str] | None = None,
    width: int = WIDTH,
) -> str:
    """What ``compare`` (and ``report`` on a comparison) prints, in ``width`` columns: the
    warning of an incomplete comparison, the target, the key columns of ``compare.md``'s table,
    the differences, and the best configurations of all the trials (:func:`best_of_all`)."""
    table, info = compare_table(studies, target_fraction, ref_energy, target_accuracy, metas)
    warning, target = _preamble(studies, info, metas, not_run)
    lines = [
        "Search strategies compared",
        *([wrap(warning, width)] if warning else []),
        wrap(target, width),
        "",
        console_table(table, list(CONSOLE_COLUMNS), width, keep_end=(), headers=CONSOLE_HEADERS),
        wrap(CONSOLE_NOTE, width),
        "",
        "Differences (means over seeds, bootstrap 95% intervals of the mean):",
        *[wrap(f"- {d}", width) for d in info["differences"]],
        "",
        *best_of_all(studies, info["target_accuracy"], metas, width),
        f"All {len(table.columns)} columns and what they mean: compare.md",
    ]
    return "\n".join(lines)


def best_of_all(
    studies: dict[str, list[pd.DataFrame]],
    target: float,
    metas: dict[str, list[dict[str, Any]]] | None = None,
    width: int = WIDTH,
) -> list[str]:
    """The most accurate trial of every strategy and seed (ties: the cheaper), and the cheapest
    that reached ``target``, each with its configuration (``metas``, each study's ``study.json``
    in the order of ``studies``, name its seed)."""
    rows = []
    for name, ts in studies.items():
        seeds = [m.get("seed") for m in (metas or {}).get(name, [])]
        for k, t in enumerate(ts):
            rows.append(t.assign(_where=f"{name} seed {seeds[k]}" if k < len(seeds) else name))
    trials = pd.concat(rows, ignore_index=True)
    done = trials[trials["accuracy"].notna() & trials["energy_j"].notna()]
    if done.empty:
        return ["No trial reported both an accuracy and an energy."]
    acc, en = done["accuracy"].astype(float), done["energy_j"].astype(float)
    best = done.iloc[int(np.lexsort((en.to_numpy(), -acc.to_numpy()))[0])]
    lines = best_lines(
        best, f"Best configuration of all {len(trials)} trials (highest accuracy): {best['_where']}", width
    )
    reached = done[acc >= target]
    if reached.empty:
        lines.append(f"No trial reached the target {target:.4f}.")
    else:
        cheap = reached.iloc[int(np.argmin(reached["energy_j"].astype(float).to_numpy()))]
        lines += best_lines(
            cheap, f"Cheapest trial to reach the target {target:.4f}: {cheap['_where']}", width
        )
    return lines


def load_comparison(
    path: Path,
) -> tuple[dict[str, Any], dict[str, list[pd.DataFrame]], dict[str, list[dict[str, Any]]], list[str]]:
    """A comparison folder's settings (``compare.json``), its studies' trials and ``study.json``
    per strategy (one per seed that has trials), and the ``<strategy> seed <k>`` that have none."""
    settings = read_json(path / "compare.json")
    studies: dict[str, list[pd.DataFrame]] = {}
    metas: dict[str, list[dict[str, Any]]] = {}
    not_run = []
    for strategy in settings["strategies"]:
        for seed in settings["seeds"]:
            d = path / strategy / f"seed{seed}"
            meta, trials = read_study(d) if (d / STUDY_FILE).is_file() else ({}, pd.DataFrame())
            if trials.empty:
                not_run.append(f"{strategy} seed {seed}")
                continue
            studies.setdefault(strategy, []).append(trials)
            metas.setdefault(strategy, []).append(meta)
    if not studies:
        raise FileNotFoundError(f"{path}: no study of the comparison has trials yet (resume it)")
    return settings, studies, metas, not_run


def report_compare(path: Path, out: Path | None = None) -> list[Path]:
    """Rebuild a comparison's table and plots from its studies (``<strategy>/seed<k>/``)."""
    path = Path(path)
    settings, studies, metas, not_run = load_comparison(path)
    return write_compare(
        studies, Path(out) if out else path, settings["target_fraction"], settings["reference_energy_j"],
        settings.get("target_accuracy"), metas, not_run,
    )  # fmt: skip


def report_compare_console(path: Path, width: int = WIDTH) -> str:
    """:func:`compare_console` of a comparison folder."""
    settings, studies, metas, not_run = load_comparison(Path(path))
    return compare_console(
        studies, settings["target_fraction"], settings["reference_energy_j"], settings.get("target_accuracy"),
        metas, not_run, width,
    )  # fmt: skip
