"""What LayerEnergyProfiler writes: the two tables, the records, the chart."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from lightning_green._plotting import pyplot
from lightning_green.records import RECORDS_FILE, LayerRecord, RecordWriter, temporary_path

UNATTRIBUTED = "unattributed"


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


def plot(path: Path, title: str, types: list[dict[str, Any]], rows: list[dict[str, Any]], top: int) -> None:
    """Bar charts: own energy by layer type, and the ``top`` modules by inclusive energy."""
    plt = pyplot()
    types = [t for t in types if t["joules_per_step"] is not None]
    best = sorted(
        (r for r in rows if r["name"] != UNATTRIBUTED and r["total_j"] is not None),
        key=lambda r: -r["total_j"],
    )[:top]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, max(3.5, 0.3 * len(best) + 1)))
    a.barh(
        [t["layer_type"] for t in types][::-1],
        [t["joules_per_step"] for t in types][::-1],
        color="tab:orange",
    )
    a.set_xlabel("joules per training step (own work)")
    a.set_title("Energy by layer type")
    b.barh(
        [f"{'  ' * (r['depth'] - 1)}{r['name']} ({r['module_type']})" for r in best][::-1],
        [r["total_j"] for r in best][::-1],
        color="tab:green",
    )
    b.set_xlabel("joules per training step (module and its children)")
    b.set_title(f"Top {len(best)} modules")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
