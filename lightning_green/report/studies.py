"""Reports on tuning studies and comparisons of search strategies, from their files only
(``study.json``, ``trials.csv``): best accuracy, tuning energy, energy to a target accuracy,
hypervolume of the (accuracy, energy) front, Pareto sets, anytime curves."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lightning_green._plotting import pyplot
from lightning_green.records import PARETO_FILE, STUDY_FILE, TRIALS_FILE, read_json, trial_energy_j
from lightning_green.report.pareto import hypervolume_2d, pareto_mask
from lightning_green.report.runs import markdown_table

#: Resamples of the bootstrap intervals (percentile method, fixed seed so reports reproduce).
BOOTSTRAP_RESAMPLES = 10_000


def bootstrap_ci(
    values: Any, level: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean of ``values`` (e.g. one figure per seed);
    ``None`` with fewer than two values (no spread to resample)."""
    x = np.asarray(
        [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))], dtype=float
    )
    if x.size < 2:
        return None
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def resolved(a: tuple[float, float] | None, b: tuple[float, float] | None) -> bool:
    """Whether two intervals do not overlap (a difference the seeds resolve)."""
    return a is not None and b is not None and (a[1] < b[0] or b[1] < a[0])


def _fmt_ci(ci: tuple[float, float] | None, digits: int = 4) -> str:
    return "-" if ci is None else f"[{ci[0]:.{digits}g}, {ci[1]:.{digits}g}]"


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
            "best_accuracy_ci95": _fmt_ci(bootstrap_ci(acc)),
            "best_accuracy_sd": float(np.std(acc)),
            "total_energy_j": float(np.mean([m["total_energy_j"] for m in ms])),
            "total_dynamic_energy_j": float(np.mean([m["total_dynamic_energy_j"] for m in ms])),
            # NaN (numeric) where no seed reached the target; the Markdown table says "never"
            "energy_to_target_j": float(np.mean(reached)) if reached else math.nan,
            "energy_to_target_ci95": _fmt_ci(bootstrap_ci(reached)),
            "trials_to_target": float(np.mean(tt)) if tt else math.nan,
            "trials_to_target_ci95": _fmt_ci(bootstrap_ci(tt), 3),
            "reached_target": f"{len(reached)}/{len(ms)}",
            "energy_to_target_per_seed_j": per_seed,
            "hypervolume": float(np.mean([m["hypervolume"] for m in ms])),
            "hypervolume_normalised": float(np.mean(hv)),
            "hypervolume_ci95": _fmt_ci(bootstrap_ci(hv)),
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
                f"{r['strategy']} vs {ref['strategy']}, {what}: {a:.4g}{unit} {_fmt_ci(ca)} vs {b:.4g}{unit} "
                f"{_fmt_ci(cb)}{ratio}: {verdict}"
            )
    return out


def _best_so_far(t: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    t = t.sort_values("order") if "order" in t else t
    best = t["accuracy"].astype(float).fillna(-np.inf).cummax().replace(-np.inf, np.nan).to_numpy()
    return best, trial_energy_j(t).cumsum().to_numpy()


def _band(
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


def anytime_plot(
    studies: dict[str, list[pd.DataFrame]], out: Path, target: float | None = None
) -> list[Path]:
    """Best-so-far accuracy (steps) against trials, with the mean over seeds and its bootstrap 95%
    band, and against cumulative joules (each seed's steps), per strategy."""
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    colors = dict(zip(studies, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    styles = ["-", "--", "-.", ":"]
    for i, (name, ts) in enumerate(studies.items()):
        curves = []
        for k, t in enumerate(ts):
            best, joules = _best_so_far(t)
            b.step(joules, best, where="post", color=colors[name], alpha=0.7, lw=1.2,
                   ls=styles[i % len(styles)], label=name if k == 0 else None)  # fmt: skip
            curves.append(best)
        mean, lo, hi = _band(curves)
        x = np.arange(1, len(mean) + 1)
        a.step(
            x,
            mean,
            where="post",
            color=colors[name],
            lw=2,
            ls=styles[i % len(styles)],
            label=f"{name} (mean)",
        )
        if len(curves) > 1:
            a.fill_between(x, lo, hi, step="post", color=colors[name], alpha=0.15)
    for ax in (a, b):
        if target is not None:
            ax.axhline(target, ls="--", c="k", lw=0.8, label="target")
        ax.set_ylabel("best accuracy so far")
    a.set_xlabel("trials")
    b.set_xlabel("cumulative tuning energy (J)")
    a.set_title("Anytime accuracy vs trials (mean of seeds, 95% band)", fontsize=9)
    b.set_title("Anytime accuracy vs energy (each seed)", fontsize=9)
    a.legend(fontsize=8)
    b.legend(fontsize=8)
    fig.tight_layout()
    path = out / "anytime.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path, *pareto_plot(studies, out)]


def pareto_plot(studies: dict[str, list[pd.DataFrame]], out: Path) -> list[Path]:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name, ts in studies.items():
        t = pd.concat(ts, ignore_index=True)
        t = t[t["accuracy"].notna() & t["energy_j"].notna()]
        if t.empty:
            continue
        acc, en = t["accuracy"].astype(float).to_numpy(), t["energy_j"].astype(float).to_numpy()
        (line,) = ax.plot(en, acc, "o", alpha=0.35, ms=4)
        m = pareto_mask(acc, en)
        order = np.argsort(en[m])
        ax.plot(en[m][order], acc[m][order], "-o", color=line.get_color(), ms=5, label=f"{name} front")
    ax.set_xlabel("trial training energy (J)")
    ax.set_ylabel("accuracy")
    ax.set_title("Accuracy vs energy per trial, with each strategy's Pareto front")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "accuracy_vs_energy.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


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
    warning = []
    if cut or not_run:
        warning = [
            "**Incomplete comparison**: "
            + "; ".join(
                ([f"interrupted before its end: {', '.join(cut)}"] if cut else [])
                + ([f"not run to its end: {', '.join(not_run)}"] if not_run else [])
            )
            + ". Its figures do not cover every strategy's whole budget; rerun the same command with "
            "`tune.resume=true` (same `hydra.run.dir`) to finish it.",
            "",
        ]
    text = [
        "# Search strategies compared",
        "",
        *warning,
        f"Target accuracy: {info['target_accuracy']:.4f} ({how}). Hypervolume reference point: accuracy "
        f"{info['reference_point']['accuracy']}, energy {info['reference_point']['energy_j']:.1f} J. Energy source: "
        f"{'; '.join(sources)}.",
        "",
        markdown_table(table.fillna({"energy_to_target_j": "never", "trials_to_target": "never"})),
        "",
        "## Differences (means over seeds, bootstrap 95% intervals of the mean)",
        "",
        *[f"- {d}" for d in info["differences"]],
        "",
        "`energy_to_target_j`: tuning energy spent, in trial order, until the first trial at or above the target "
        "(mean over the seeds that reached it; `energy_to_target_per_seed_j` lists every seed, `never` where it did not). "
        "`hypervolume`: area of (accuracy, energy) space dominated by the trials, up to the reference point "
        "(normalised: divided by 1 x the reference energy). `_ci95`: percentile bootstrap interval of the mean over "
        f"seeds ({BOOTSTRAP_RESAMPLES} resamples); a difference is resolved when the intervals do not overlap. "
        "`total_energy_j`: the trials' energy; `study_energy_j`: the whole study measured around it (driver, Ray's "
        "processes, idle workers, trial start-up), `framework_share` the part outside the trials, "
        "`overhead_per_trial_s` the wall seconds per trial slot spent outside training; `startup_s` the "
        "study's fixed start-up (Ray, the first workers' imports, up to the first trial's first window) "
        "and `overhead_per_trial_after_startup_s` what each trial adds after it.",
    ]
    paths[1].write_text("\n".join(text) + "\n")
    paths += anytime_plot(studies, out, info["target_accuracy"])
    return paths


def report_compare(path: Path, out: Path | None = None) -> list[Path]:
    """Rebuild a comparison's table and plots from its studies (``<strategy>/seed<k>/``)."""
    path = Path(path)
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
    return write_compare(
        studies, Path(out) if out else path, settings["target_fraction"], settings["reference_energy_j"],
        settings.get("target_accuracy"), metas, not_run,
    )  # fmt: skip


def pareto_table(trials: pd.DataFrame) -> pd.DataFrame:
    """The non-dominated trials (accuracy up, energy down): the study's trade-off curve."""
    done = trials[trials["accuracy"].notna() & trials["energy_j"].notna()]
    if done.empty:
        return done
    mask = pareto_mask(done["accuracy"].astype(float), done["energy_j"].astype(float))
    return done[mask].sort_values("energy_j")


def load_study(path: str | Path) -> tuple[dict[str, Any], pd.DataFrame]:
    """A study's settings (``study.json``) and its trials as a DataFrame, for a notebook:
    ``meta, trials = load_study("lightning_green_runs/tune/<date>")``."""
    return read_study(path)


def load_compare(path: str | Path) -> pd.DataFrame:
    """A comparison's table (``compare.csv``) with numeric columns numeric (NaN where a strategy
    never reached the target)."""
    return pd.read_csv(Path(path) / "compare.csv", na_values=["never"])


def read_study(path: str | Path) -> tuple[dict[str, Any], pd.DataFrame]:
    path = Path(path)
    meta = read_json(path / STUDY_FILE)
    # trial ids are hex strings: one made of digits alone must not turn into a number
    trials = (
        pd.read_csv(path / TRIALS_FILE, dtype={"trial_id": str})
        if (path / TRIALS_FILE).is_file()
        else pd.DataFrame()
    )
    return meta, trials


def report_study(path: str | Path, out: str | Path | None = None) -> list[Path]:
    """summary.csv / summary.md and plots (accuracy vs energy with the Pareto front; anytime curves)."""
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
    cols = [c for c in trials.columns if c.startswith("param.")] + [
        "accuracy",
        "test_acc",
        "energy_j",
        "total_j",
        "epochs",
        "status",
        "source",
    ]
    lines = [
        f"# Study: {meta['strategy']['name']} ({len(trials)} trials, seed {meta['seed']})",
        "",
        f"best accuracy {metrics['best_accuracy']:.4f}; tuning energy {metrics['total_energy_j']:.1f} J "
        f"({'measured' if 'measured' in ' '.join(map(str, trials['source'])) else 'estimated'}: {', '.join(sorted(set(map(str, trials['source']))))}); "
        f"{metrics['failed']} failed",
        "",
        markdown_table(trials[cols]),
        "",
        "## Pareto set (no other trial is both more accurate and cheaper)",
        "",
        markdown_table(pareto[cols]) if not pareto.empty else "(none)",
    ]
    paths[1].write_text("\n".join(lines) + "\n")
    paths += anytime_plot({meta["strategy"]["name"]: [trials]}, out)
    return paths


def write_pareto(path: str | Path) -> Path | None:
    """Write a study's ``pareto.csv`` from its ``trials.csv``; ``None`` when it has no trials yet."""
    path = Path(path)
    _, trials = read_study(path)
    if trials.empty:
        return None
    pareto_table(trials).to_csv(path / PARETO_FILE, index=False)
    return path / PARETO_FILE
