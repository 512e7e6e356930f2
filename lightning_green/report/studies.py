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
        # Above the devices' idle baseline (NaN when the trials had none); CPU estimates are dynamic already.
        "total_dynamic_energy_j": float(t["dynamic_j"].astype(float).sum(min_count=1))
        if "dynamic_j" in t
        else math.nan,
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
    studies: dict[str, list[pd.DataFrame]], target_fraction: float = 0.95, ref_energy: float | None = None
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One row per strategy, averaged over its seeds; the target and reference are shared by all."""
    all_trials = pd.concat([t for ts in studies.values() for t in ts], ignore_index=True)
    best = float(all_trials["accuracy"].max())
    target = target_fraction * best
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
        rows.append(
            {
                "strategy": name,
                "seeds": len(ms),
                "trials_per_seed": int(np.mean([m["trials"] for m in ms])),
                "best_accuracy": float(np.mean([m["best_accuracy"] for m in ms])),
                "best_accuracy_sd": float(np.std([m["best_accuracy"] for m in ms])),
                "total_energy_j": float(np.mean([m["total_energy_j"] for m in ms])),
                "total_dynamic_energy_j": float(np.mean([m["total_dynamic_energy_j"] for m in ms])),
                "energy_to_target_j": float(np.mean(reached)) if reached else "never",
                "trials_to_target": float(np.mean(tt)) if tt else "never",
                "reached_target": f"{len(reached)}/{len(ms)}",
                "energy_to_target_per_seed_j": per_seed,
                "hypervolume": float(np.mean([m["hypervolume"] for m in ms])),
                "hypervolume_normalised": float(np.mean([m["hypervolume_normalised"] for m in ms])),
                "failed_trials": int(sum(m["failed"] for m in ms)),
            }
        )
    info = {"best_accuracy_any": best, "target_accuracy": target, "target_fraction": target_fraction,
            "reference_point": {"accuracy": 0.0, "energy_j": ref_energy}}  # fmt: skip
    return pd.DataFrame(rows), info


def anytime_plot(
    studies: dict[str, list[pd.DataFrame]], out: Path, target: float | None = None
) -> list[Path]:
    """Best-so-far accuracy against trials and against cumulative joules, per strategy."""
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    colors = dict(zip(studies, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    for name, ts in studies.items():
        curves = []
        for k, t in enumerate(ts):
            t = t.sort_values("order") if "order" in t else t
            best = t["accuracy"].astype(float).fillna(-np.inf).cummax().replace(-np.inf, np.nan)
            joules = trial_energy_j(t).cumsum()
            x = np.arange(1, len(t) + 1)
            a.plot(x, best, color=colors[name], alpha=0.35, lw=1)
            b.plot(joules, best, color=colors[name], alpha=0.6, lw=1.2, label=name if k == 0 else None)
            curves.append(best.to_numpy())
        n = min(len(c) for c in curves)
        a.plot(
            np.arange(1, n + 1),
            np.nanmean([c[:n] for c in curves], axis=0),
            color=colors[name],
            lw=2.2,
            label=name,
        )
    for ax in (a, b):
        if target is not None:
            ax.axhline(target, ls="--", c="k", lw=0.8, label="target")
        ax.set_ylabel("best accuracy so far")
    a.set_xlabel("trials")
    b.set_xlabel("cumulative tuning energy (J)")
    a.set_title("Anytime accuracy vs trials (thick: mean of seeds)")
    b.set_title("Anytime accuracy vs energy")
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
    studies: dict[str, list[pd.DataFrame]], out: Path, target_fraction: float, ref_energy: float | None
) -> list[Path]:
    table, info = compare_table(studies, target_fraction, ref_energy)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "compare.csv", out / "compare.md"]
    table.to_csv(paths[0], index=False)
    sources = sorted({str(s) for ts in studies.values() for t in ts for s in t.get("source", [])})
    text = [
        "# Search strategies compared",
        "",
        f"Target accuracy: {info['target_accuracy']:.4f} ({info['target_fraction']:.0%} of the best any strategy found, "
        f"{info['best_accuracy_any']:.4f}). Hypervolume reference point: accuracy {info['reference_point']['accuracy']}, "
        f"energy {info['reference_point']['energy_j']:.1f} J. Energy source: {'; '.join(sources)}.",
        "",
        markdown_table(table),
        "",
        "`energy_to_target_j`: tuning energy spent, in trial order, until the first trial at or above the target "
        "(mean over the seeds that reached it; `energy_to_target_per_seed_j` lists every seed, `never` where it did not). `hypervolume`: area of (accuracy, energy) space dominated by the "
        "trials, up to the reference point (normalised: divided by 1 x the reference energy).",
    ]
    paths[1].write_text("\n".join(text) + "\n")
    paths += anytime_plot(studies, out, info["target_accuracy"])
    return paths


def report_compare(path: Path, out: Path | None = None) -> list[Path]:
    """Rebuild a comparison's table and plots from its studies (``<strategy>/seed<k>/``)."""
    path = Path(path)
    settings = read_json(path / "compare.json")
    studies: dict[str, list[pd.DataFrame]] = {}
    for strategy in settings["strategies"]:
        for seed in settings["seeds"]:
            d = path / strategy / f"seed{seed}"
            if (d / STUDY_FILE).is_file():
                studies.setdefault(strategy, []).append(read_study(d)[1])
    return write_compare(
        studies, Path(out) if out else path, settings["target_fraction"], settings["reference_energy_j"]
    )


def pareto_table(trials: pd.DataFrame) -> pd.DataFrame:
    """The non-dominated trials (accuracy up, energy down): the study's trade-off curve."""
    done = trials[trials["accuracy"].notna() & trials["energy_j"].notna()]
    if done.empty:
        return done
    mask = pareto_mask(done["accuracy"].astype(float), done["energy_j"].astype(float))
    return done[mask].sort_values("energy_j")


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
