"""What LayerEnergyProfiler writes: the two tables, the records, the chart."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightning_green._plotting import pyplot
from lightning_green.records import RECORDS_FILE, LayerRecord, RecordWriter, temporary_path

UNATTRIBUTED = "unattributed"
#: Whether the record schema has a field for the clock modules were timed by.


def logged_metrics(types: list[dict[str, Any]]) -> dict[str, float]:
    """``layer_energy/<type>_j``: joules per step of each layer type's own work (where known)."""
    return {
        f"layer_energy/{t['layer_type']}_j": t["joules_per_step"]
        for t in types
        if t["joules_per_step"] is not None
    }


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Replace ``path`` atomically (a temporary file beside the folder, then a rename)."""
    if not rows:
        return
    tmp = temporary_path(path)
    try:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = temporary_path(path)
    try:
        tmp.write_text(json.dumps(data, indent=2, allow_nan=False, default=str))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_records(
    folder: Path, run_id: str, mode: str, steps: int, rows: list[dict[str, Any]], types: list[dict[str, Any]]
) -> None:
    """Append the rows as ``layer`` records and the type table as ``layer_type`` records."""
    records = [
        LayerRecord(
            run_id=run_id, kind="layer", name=r["name"], layer_type=r["layer_type"],
            joules_per_step=r["joules_per_step"], share=r["share"], source=r["source"], mode=mode,
            params=r["params"], flops=r["flops"], forward_s=r["self_forward_s"], backward_s=r["self_backward_s"],
            joules_per_sample=r["joules_per_sample"], calls=round(r["calls"]), steps=steps,
            complete=r["complete"], note=r["note"], parent=r["parent"], depth=r["depth"],
            total_j=r["total_j"], optimizer_j=r["optimizer_j"], rank=r["rank"], world_size=r["world_size"],
            clock=r["clock"],
        )
        for r in rows
    ]  # fmt: skip
    unattributed_source = rows[-1]["source"]
    records += [
        LayerRecord(
            run_id=run_id, kind="layer_type", name=t["layer_type"], layer_type=t["layer_type"],
            joules_per_step=t["joules_per_step"], share=t["share"],
            source=unattributed_source if t["layer_type"] == UNATTRIBUTED else rows[0]["source"],
            mode=mode, params=t["params"], flops=t["flops"], steps=steps,
            complete=t["joules_per_step"] is not None, rank=rows[0]["rank"], world_size=rows[0]["world_size"],
        )
        for t in types
    ]  # fmt: skip
    writer = RecordWriter(folder / RECORDS_FILE)
    writer.write_many(records)
    writer.close()


def write_tables(
    folder: Path,
    run_id: str,
    rows: list[dict[str, Any]],
    types: list[dict[str, Any]],
    profile: dict[str, Any],
) -> list[str]:
    """``layers.csv``, ``layer_types.csv`` and ``layer_profile.json``, each naming its run (several
    trainings may share a folder: their records in energy.jsonl stay apart by run_id; the CSVs
    hold the latest run's table). Returns the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    write_csv(folder / "layers.csv", [{"run_id": run_id, **r} for r in rows])
    write_csv(folder / "layer_types.csv", [{"run_id": run_id, **t} for t in types])
    write_json(folder / "layer_profile.json", {"run_id": run_id, **profile})
    return ["layers.csv", "layer_types.csv", "layer_profile.json"]


def write_all(
    folder: Path, run_id: str, rows: list[dict[str, Any]], types: list[dict[str, Any]],
    profile: dict[str, Any], final: bool, chart: tuple[str, int] | None, warn: Callable[[str], None],
) -> list[str]:  # fmt: skip
    """The tables; at the end of training (``final``) also the chart (``chart``: its title and how
    many modules it shows; ``None``: no chart) and the records. Returns the files written. A full
    disk loses files (with a warning), never the training."""
    try:
        written = write_tables(folder, run_id, rows, types, profile)
    except OSError as err:
        warn(f"cannot write the layer tables to {folder} ({err})")
        return []
    if not final:
        return written
    if chart is not None:
        try:
            plot(folder / "layer_energy.png", chart[0], types, rows, chart[1])
            written.append("layer_energy.png")
        except OSError as err:
            warn(f"cannot save layer_energy.png ({err})")
    write_records(folder, run_id, str(profile["mode"]), int(profile["profiled_steps"]), rows, types)
    return written


def plot(path: Path, title: str, types: list[dict[str, Any]], rows: list[dict[str, Any]], top: int) -> None:
    """Bar charts: own energy by layer type, and the ``top`` modules by inclusive energy. Where the
    profile computed several methods (``power``, ``replay``: allocate, power and replay), each
    bar is a group of one bar per method side by side, the chosen one named in the legend."""
    from lightning_green._plotting import DPI, layer_inclusive_joules, layer_methods, layer_type_joules, save

    def module_label(r: dict[str, Any], width: int = 44) -> str:  # its name and class, cut to width
        text = f"{r['name']} ({r['module_type']})"
        return text if len(text) <= width else ".." + text[-(width - 2) :]

    plt = pyplot()
    methods, chosen = layer_methods(rows, UNATTRIBUTED)
    if len(methods) < 2:  # one method: the profile's own figures
        methods = [chosen or "chosen"]
    best = sorted(
        (r for r in rows if r["name"] != UNATTRIBUTED and r["total_j"] is not None),
        key=lambda r: -r["total_j"],
    )[:top]
    by_type = {t["layer_type"]: t["joules_per_step"] for t in types if t["joules_per_step"] is not None}
    names = list(by_type)
    n = len(methods)
    fig, (a, b) = plt.subplots(
        1, 2, figsize=(12, max(3.8, (0.14 + 0.1 * n) * max(len(best), len(names)) + 1.6)), dpi=DPI,
        layout="constrained",
    )  # fmt: skip
    colors = {"allocate": "tab:orange", "power": "tab:green", "replay": "tab:blue", "chosen": "tab:orange"}
    height = 0.8 / n
    for k, m in enumerate(methods):
        per_type = by_type if n == 1 else layer_type_joules(rows, m, UNATTRIBUTED)
        inclusive = {r["name"]: r["total_j"] for r in best} if n == 1 else layer_inclusive_joules(rows, m)
        offset = (n - 1) / 2 - k  # the first method on top of each group
        label = f"{m} (chosen)" if m == chosen and n > 1 else m
        a.barh([len(names) - 1 - j + offset * height for j in range(len(names))],
               [per_type.get(t, 0.0) for t in names], height=height, color=colors.get(m), label=label)  # fmt: skip
        b.barh([len(best) - 1 - j + offset * height for j in range(len(best))],
               [inclusive.get(r["name"], 0.0) for r in best], height=height, color=colors.get(m), label=label)  # fmt: skip
    a.set_yticks(range(len(names)), names[::-1])
    b.set_yticks(range(len(best)), [module_label(r) for r in best][::-1], fontsize=8)
    a.set_xlabel("joules per training step (own work)")
    a.set_title(
        "Energy by layer type" + (f": {', '.join(methods)} side by side" if n > 1 else ""), fontsize=10
    )
    b.set_xlabel("joules per training step (module and its children)")
    b.set_title(f"Top {len(best)} modules", fontsize=10)
    if n > 1:
        handles, labels = a.get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=n, fontsize=8, title="method")
    fig.suptitle(title, fontsize=9)
    save(fig, path)
