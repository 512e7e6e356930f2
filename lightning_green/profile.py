"""``lightning-green profile``: energy per layer and layer type of a model from the config tree.

Usage::

    lightning-green profile                                   # the default CNN on digits
    lightning-green profile model=resnet18 data=synthetic profiler.mode=replay
"""

from __future__ import annotations

from typing import Any

import hydra
import lightning.pytorch as pl
from omegaconf import DictConfig

from lightning_green._plotting import layer_inclusive_joules, layer_methods, layer_type_joules
from lightning_green.callbacks import LayerEnergyProfiler
from lightning_green.config import CONF_DIR, ConfigError, friendly_errors
from lightning_green.experiment import build_run

#: Distinct module notes printed; the rest are in layers.csv.
MAX_NOTES = 8


def _console() -> Any:
    """A rich console of at most 100 columns (piped output, with no terminal, gets the 100 too)."""
    import shutil

    from rich.console import Console

    return Console(width=min(100, shutil.get_terminal_size((100, 24)).columns))


def _method_header(method: str, chosen: str | None) -> str:
    """A method's column: ``power J*`` for the profile's own method (the caption says so)."""
    return f"{method} J" + ("*" if method == chosen else "")


def _joules(v: float | None) -> str:
    return "no figure" if v is None else f"{0.0 if abs(v) < 1e-12 else v:.4g}"  # no -1e-16 of rounding


def print_type_table(profiler: LayerEnergyProfiler, title: str) -> None:
    """Joules per step by layer type; with several methods computed (``power``, ``replay``
    modes), one column per method (allocate, power, replay) side by side."""
    from rich.table import Table

    rows = profiler.rows()
    methods, chosen = layer_methods(rows)
    several = len(methods) > 1
    by_method = {m: layer_type_joules(rows, m) for m in methods} if several else {}
    figures = [_method_header(m, chosen) for m in methods] if several else ["J / step"]
    table = Table(title=title, caption=f"J per step; * the profile's method ({chosen})" if several else None)
    for col in ("layer type", "layers", *figures, "share", "params", "fwd FLOPs / step"):
        table.add_column(col, justify="left" if col == "layer type" else "right")
    for t in profiler.type_table():
        j, share = t["joules_per_step"], t["share"]
        js = [by_method[m].get(t["layer_type"]) for m in methods] if several else [j]
        table.add_row(
            t["layer_type"], str(t["layers"]), *(_joules(v) for v in js),
            "-" if share is None else f"{share:.1%}", f"{t['params']:,}", f"{t['flops']:,}",
        )  # fmt: skip
    _console().print(table)


def print_top_modules(profiler: LayerEnergyProfiler, top: int = 10) -> None:
    """The ``top`` modules by total energy (with their children), indented by depth; with several
    methods computed, each method's total side by side."""
    from rich.table import Table

    all_rows = profiler.rows()
    rows = [r for r in all_rows if r["name"] != "unattributed" and r["total_j"] is not None]
    if not rows:
        return
    methods, chosen = layer_methods(all_rows)
    several = len(methods) > 1
    totals = {m: layer_inclusive_joules(all_rows, m) for m in methods} if several else {}
    figures = [_method_header(m, chosen) for m in methods] if several else ["total J", "own J"]
    table = Table(
        title=f"Top {min(top, len(rows))} modules by energy per step",
        caption=f"J per step with its children; * the profile's method ({chosen})" if several else None,
    )
    for col in ("module", "type", *figures, "own share"):
        table.add_column(col, justify="left" if col in ("module", "type") else "right", overflow="fold",
                         min_width=24 if col == "module" else None)  # fmt: skip
    for r in sorted(rows, key=lambda r: -r["total_j"])[:top]:
        js = [totals[m].get(r["name"]) for m in methods] if several else [r["total_j"], r["joules_per_step"]]
        table.add_row(
            "  " * (r["depth"] - 1) + r["name"],
            r["module_type"] if several else f"{r['module_type']} ({r['layer_type']})",
            *("-" if v is None else _joules(v) for v in js), f"{r['share']:.1%}",
        )  # fmt: skip
    _console().print(table)


@hydra.main(config_path=str(CONF_DIR), config_name="profile", version_base="1.3")
@friendly_errors
def main(cfg: DictConfig) -> None:
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    run = build_run(cfg)
    run.trainer.fit(run.module, datamodule=run.datamodule)
    profiler = next(c for c in run.trainer.callbacks if isinstance(c, LayerEnergyProfiler))
    if profiler.steps == 0:
        raise ConfigError(
            f"nothing was profiled: training ran {run.trainer.global_step} step(s), not more than "
            f"profiler.warmup_steps={profiler.warmup_steps}, and no layer files were written; lower "
            "profiler.warmup_steps or train longer (trainer.limit_train_batches, trainer.max_epochs)"
        )
    rows = profiler.rows()
    print_type_table(
        profiler,
        f"Energy per layer type ({profiler.steps} profiled steps; {rows[0]['source']}; timed by {rows[0]['clock']})",
    )
    print_top_modules(profiler)
    notes = list(dict.fromkeys(r["note"] for r in rows if r["note"] and r["name"] != "unattributed"))
    for note in notes[:MAX_NOTES]:
        print(f"note: {note}")
    if len(notes) > MAX_NOTES:
        print(f"note: ... and {len(notes) - MAX_NOTES} more (layers.csv, column note)")
    if rows[-1]["note"]:
        print(f"unattributed: {rows[-1]['note']}")
    if profiler.written:
        print(f"files in {profiler.output_dir}: {', '.join(profiler.written)}")


if __name__ == "__main__":
    main()
