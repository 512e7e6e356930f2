"""Tables, main effects and plots from training runs' records (``run.json`` + energy records)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from lightning_green.carbon import JOULES_PER_KWH
from lightning_green.records import RECORDS_FILE, RUN_FILE, read_run, read_windows
from lightning_green.report.console import WIDTH, console_table, wrap
from lightning_green.report.run_plots import plot_runs
from lightning_green.report.run_plots import point_label as point_label  # re-exported

COLUMNS = [
    "test_acc",
    "val_acc",
    "energy_j",
    "dynamic_j",
    "energy_kwh",
    "total_j",
    "co2e_g",
    "seconds",
    "train_seconds",
    "params",
    "flops_per_sample",
    "epochs",
    "source",
    "complete",
    "other_cpu_cores",
    "status",
]
#: Average CPU cores other processes kept busy above which a run's CPU figures are called loaded.
LOADED_CORES = 0.25
#: ``status`` of a run with ``energy.jsonl`` but no ``run.json``: it crashed or was interrupted.
PARTIAL = "partial: no run.json (crashed or interrupted); energy from its records"
#: ``status`` of a run whose folder's ``run.json`` is another run's (two trainings, one folder).
SHARED = "partial: another run's run.json in its folder; energy from its records"


def _parse_override(text: str) -> tuple[str, str] | None:
    if "=" not in text:
        return None
    key, value = text.split("=", 1)
    key = key.lstrip("+~")
    if key.startswith("hydra"):
        return None
    return key, value


def load_runs(root: str | Path) -> pd.DataFrame:
    """One row per run folder under ``root`` (``root`` itself may be a run).

    Energy comes from each run's window records (checked against ``run.json``), never from logs.
    """
    root = Path(root)
    rows = []
    for path in sorted({p.parent for p in root.rglob(RUN_FILE)}):
        rec = read_run(path)
        # Several runs may share a folder (and its energy.jsonl): count this run's windows and
        # those of the runs it resumed from, never another run's.
        lineage = {rec.run_id, *rec.resumed_from}
        windows = [w for w in read_windows(path) if w.run_id in lineage]
        fit = [w for w in windows if w.stage in ("train", "validate", "sanity_check")]
        fit_j = sum(w.energy_j for w in fit)
        dynamic = [w.dynamic_j for w in fit]
        dynamic_j = float(sum(dynamic)) if fit and all(d is not None for d in dynamic) else float("nan")
        row: dict[str, object] = {"run": str(path.relative_to(root)) if path != root else "."}
        for ov in rec.overrides:
            kv = _parse_override(ov)
            if kv:
                row[kv[0]] = _number(kv[1])
        row.update(
            status="finished",
            test_acc=rec.test_acc,
            val_acc=rec.val_acc,
            energy_j=fit_j,
            dynamic_j=dynamic_j,
            energy_kwh=fit_j / JOULES_PER_KWH,
            total_j=rec.total_j,
            co2e_g=rec.co2e_g,
            seconds=rec.seconds,
            train_seconds=rec.train_seconds,
            params=rec.params,
            flops_per_sample=rec.flops_per_sample,
            epochs=rec.epochs,
            source=", ".join(f"{d}={s}" for d, s in sorted(rec.sources.items())),
            complete=rec.complete and all(w.complete for w in windows),
            other_cpu_cores=rec.machine.get("other_cpu_cores"),
        )
        rows.append(row)
        # Another training into the same folder: its run.json was overwritten, its energy was not.
        rows += _partial_rows(root, path, skip=frozenset(lineage), status=SHARED)
    finished = {p.parent for p in root.rglob(RUN_FILE)}
    for path in sorted({p.parent for p in root.rglob(RECORDS_FILE)} - finished):
        rows += _partial_rows(root, path)
    if not rows:
        raise FileNotFoundError(
            f"no run.json or {RECORDS_FILE} under {root}: is it a `lightning-green train` run or multirun folder?"
        )
    df = pd.DataFrame(rows)
    factors = swept_factors(df)
    return df[["run", *factors, *COLUMNS]]


def load_records(path: str | Path, kind: str = "window") -> pd.DataFrame:
    """Records of a run folder (or an ``energy.jsonl``) as a DataFrame, for a notebook: ``kind``
    ``"window"`` (one row per epoch window: stage, epoch, seconds, energy_j, dynamic_j, complete,
    one ``<domain>_j`` column per domain), ``"layer"`` or ``"layer_type"`` (LayerEnergyProfiler)."""
    from dataclasses import asdict

    from lightning_green.records import iter_records

    path = Path(path)
    file = path / RECORDS_FILE if path.is_dir() else path
    rows = []
    for rec in iter_records(file, kind):
        row = asdict(rec)
        if kind == "window":
            for d in row.pop("domains"):
                row[f"{d['domain']}_j"] = (row.get(f"{d['domain']}_j") or 0.0) + (d["joules"] or 0.0)
            row.pop("assumptions", None)
        rows.append(row)
    return pd.DataFrame(rows)


def _partial_rows(
    root: Path, path: Path, skip: frozenset[str] = frozenset(), status: str = PARTIAL
) -> list[dict[str, object]]:
    """Rows for the runs of a folder that have no ``run.json`` of their own: one per run in its
    records (except the ``skip`` ids), energy from its windows (the unfinished window's figure
    included as recorded), overrides from Hydra's ``.hydra/overrides.yaml`` where it exists (not
    for runs beside a finished one, whose overrides were another run's)."""
    windows = [w for w in read_windows(path) if w.stage != "layer" and w.run_id not in skip]
    overrides: dict[str, object] = {}
    hydra_file = path / ".hydra" / "overrides.yaml"
    if hydra_file.is_file() and not skip:
        import yaml

        for ov in yaml.safe_load(hydra_file.read_text()) or []:
            kv = _parse_override(str(ov))
            if kv:
                overrides[kv[0]] = _number(kv[1])
    rows = []
    run_ids = list(dict.fromkeys(w.run_id for w in windows))
    for run_id in run_ids:
        mine = [w for w in windows if w.run_id == run_id]
        fit = [w for w in mine if w.stage in ("train", "validate", "sanity_check")]
        fit_j = sum(w.energy_j for w in fit)
        dynamic = [w.dynamic_j for w in fit]
        name = str(path.relative_to(root)) if path != root else "."
        rows.append({
            "run": name if len(run_ids) == 1 and not skip else f"{name}#{run_id}", **overrides,
            "status": status, "test_acc": None, "val_acc": None, "energy_j": fit_j,
            "dynamic_j": float(sum(dynamic)) if fit and all(d is not None for d in dynamic) else float("nan"),
            "energy_kwh": fit_j / JOULES_PER_KWH, "total_j": sum(w.energy_j for w in mine), "co2e_g": None,
            "seconds": sum(w.seconds for w in mine), "train_seconds": sum(w.seconds for w in mine if w.stage == "train"),
            "params": None, "flops_per_sample": None, "epochs": len([w for w in mine if w.stage == "train"]),
            "source": ", ".join(f"{d}={s}" for d, s in sorted({k: v for w in mine for k, v in w.sources.items()}.items())),
            "complete": False, "other_cpu_cores": None,
        })  # fmt: skip
    return rows


def is_factorial(df: pd.DataFrame, factors: list[str]) -> bool:
    """At least two swept factors and every combination of their levels present: main effects
    (eta^2) mean something only then. One factor gets a plain comparison; runs that differ in
    unrelated ways are not a design."""
    if len(factors) < 2:
        return False
    cells = 1
    for f in factors:
        cells *= df[f].nunique(dropna=False)
    return len(df[factors].drop_duplicates()) == cells


def _number(value: str) -> object:
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def swept_factors(df: pd.DataFrame) -> list[str]:
    """Override keys that take more than one value across runs."""
    return [c for c in df.columns if c not in ("run", *COLUMNS) and df[c].nunique(dropna=False) > 1]


def main_effects(df: pd.DataFrame, response: str = "energy_j") -> pd.DataFrame:
    """Each swept factor's main effect on ``response``: eta squared (SS_factor / SS_total), the share of
    variance it explains, as the paper reports, plus the mean response per level and the change
    from the highest level to the lowest."""
    y = df[response].astype(float)
    ss_total = float(((y - y.mean()) ** 2).sum())
    if df[response].isna().all():
        return pd.DataFrame(columns=["response", "factor", "eta_sq", "levels", "change_high_to_low"])
    rows = []
    for f in swept_factors(df):
        groups = df.groupby(f)[response]
        ss = float(sum(len(g) * (g.mean() - y.mean()) ** 2 for _, g in groups))
        means = groups.mean()
        levels = sorted(means.index, key=lambda v: (isinstance(v, str), v))
        lo, hi = levels[0], levels[-1]
        change = (means[lo] - means[hi]) / means[hi] if means[hi] else float("nan")
        rows.append(
            {
                "response": response,
                "factor": f,
                "eta_sq": ss / ss_total if ss_total > 0 else float("nan"),
                "levels": ", ".join(f"{lv}: {means[lv]:.4g}" for lv in levels),
                "change_high_to_low": change,  # e.g. 4 -> 1 conv layers: (mean at 1 - mean at 4) / mean at 4
            }
        )
    return pd.DataFrame(rows)


def notes(df: pd.DataFrame, effects: pd.DataFrame | None, console: bool = False) -> list[str]:
    """The sentences under a run table: the energy source and what the energy columns cover
    (without the ``dynamic_j`` definition on the ``console``), runs measured under load, partial
    runs, and a sweep that is not a factorial design."""
    sources = sorted(set(map(str, df["source"])))
    text = [
        f"Energy source: {'; '.join(sources)}. `energy_j` is training energy (train epochs, validation, "
        "sanity check); `total_j` adds the test run."
    ]
    if not console:
        text.append(
            "`dynamic_j` is the training energy above the devices' idle baseline (what model choices change; "
            "NaN without a baseline); an `estimated:cpu-time` figure is dynamic already."
        )
    loaded = (
        df[df["other_cpu_cores"].astype(float) > LOADED_CORES] if "other_cpu_cores" in df else df.iloc[:0]
    )
    if not loaded.empty:
        text.append(
            f"**{len(loaded)} of {len(df)} runs were measured while other processes kept more than "
            f"{LOADED_CORES} CPU core busy** (`other_cpu_cores`, up to {loaded['other_cpu_cores'].max():.2f}): "
            "their CPU figures, above all the CPU-time estimate, moved with that load; rerun them on a quiet machine "
            "before comparing."
        )
    factors = swept_factors(df)
    if (df["status"] != "finished").any():
        text.append(
            "Runs marked partial have no run.json of their own (they crashed or were interrupted, or another training "
            "into the same folder wrote over it); their energy comes from their records, and they are left out of main effects."
        )
    if factors and (effects is None or effects.empty):
        text.append(
            f"Swept: {', '.join(factors)}. Not a factorial design of two or more factors, so no main effects "
            "(eta^2 needs every combination of at least two factors); compare the rows directly."
        )
    return text


#: Main effects' titles per response.
RESPONSES = (("energy_j", "training energy"), ("dynamic_j", "dynamic training energy"))


def write_tables(df: pd.DataFrame, out: Path, effects: pd.DataFrame | None) -> list[Path]:
    """``summary.csv``, ``summary.md`` (the table, :func:`notes`, the main effects) and, for a
    factorial design, ``main_effects.csv``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "summary.csv", out / "summary.md"]
    df.to_csv(paths[0], index=False)
    text = ["# lightning-green report", "", markdown_table(df), "", *notes(df, effects)]
    if effects is not None and not effects.empty:
        paths.append(out / "main_effects.csv")
        effects.to_csv(paths[-1], index=False)
        for response, title in RESPONSES:
            part = effects[effects["response"] == response]
            if not part.empty:
                text += [
                    "",
                    f"## Main effects on {title} (share of variance explained, eta^2)",
                    "",
                    markdown_table(part.drop(columns="response")),
                ]
    paths[1].write_text("\n".join(text) + "\n")
    return paths


def runs_console(folder: Path, width: int = WIDTH) -> str:
    """What ``report`` on runs prints, in ``width`` columns, from the files it wrote
    (``summary.csv``, ``main_effects.csv``): the key columns of the run table (run, swept values,
    accuracy, energy, status, CO2e, time), the notes that matter (:func:`notes`), the main effects."""
    df = pd.read_csv(folder / "summary.csv", dtype={"run": str})
    factors = swept_factors(df)
    # the folder every run is in said once, each row naming the rest; a status by its first word
    runs = df["run"].astype(str)
    prefix = _common_folder(runs.tolist())
    shown = df.assign(
        status=df["status"].astype(str).str.split(":").str[0],
        run=runs.str.removeprefix(f"{prefix}/") if prefix else runs,
    )
    columns = ["run", *factors[:3], "test_acc", "energy_j", "status", "dynamic_j", "co2e_g", "seconds",
               *factors[3:], "other_cpu_cores"]  # fmt: skip
    file = folder / "main_effects.csv"
    effects = pd.read_csv(file) if file.is_file() else None
    head = f"lightning-green report: {len(df)} run{'s' if len(df) != 1 else ''}" + (
        f" in {prefix}/" if prefix else ""
    )
    lines = [wrap(head, width), console_table(shown, columns, width)]
    lines += [wrap(n, width) for n in notes(df, effects, console=True)]
    for response, title in RESPONSES if effects is not None else ():
        part = effects[effects["response"] == response]
        if not part.empty:
            lines += [f"Main effects on {title} (eta^2):"]
            lines += [
                console_table(part, ["factor", "eta_sq", "change_high_to_low", "levels"], width, keep_end=())
            ]
    lines.append(f"All {len(df.columns)} columns: summary.md")
    return "\n".join(lines)


def _common_folder(names: list[str]) -> str:
    """The folder all of several run names are in (``""`` for none, or for one run)."""
    try:
        common = os.path.commonpath(names) if len(names) > 1 else ""
    except ValueError:  # absolute and relative names side by side
        return ""
    return os.path.dirname(common) if common in names else common


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of ``df`` (floats to 4 significant digits)."""

    def fmt(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    header = "| " + " | ".join(map(str, df.columns)) + " |"
    sep = "| " + " | ".join("---" for _ in df.columns) + " |"
    body = ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([header, sep, *body])


def load_named_runs(roots: list[Path]) -> pd.DataFrame:
    """:func:`load_runs` of several folders side by side; ``run`` is named by the folder as given
    (``A``, ``B/3``). Override keys that only some folders have are factors only where they vary."""
    frames = []
    for root in roots:
        df = load_runs(root)
        df["run"] = [str(root) if r == "." else f"{root}/{r}" for r in df["run"]]
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    factors = swept_factors(df)
    return df[["run", *factors, *COLUMNS]]


def report_runs(root: str | Path | list[Path], out: str | Path | None = None) -> list[Path]:
    """``summary.csv``/``.md`` and plots of one run folder (or multirun), or of several side by side."""
    roots = [Path(r) for r in root] if isinstance(root, list) else [Path(root)]
    out = Path(out) if out else roots[0]
    df = load_runs(roots[0]) if len(roots) == 1 else load_named_runs(roots)
    finished = df[df["status"] == "finished"]
    factors = swept_factors(finished) if not finished.empty else []
    effects = (
        pd.concat(
            [main_effects(finished, "energy_j"), main_effects(finished, "dynamic_j")], ignore_index=True
        )
        if is_factorial(finished, factors)
        else None
    )
    return write_tables(df, out, effects) + plot_runs(df, out, effects, swept_factors(df))
