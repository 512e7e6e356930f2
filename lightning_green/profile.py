"""``lightning-green profile``: energy per layer and layer type of a model from the config tree.

Usage::

    lightning-green profile                                   # the default CNN on digits
    lightning-green profile model=resnet18 data=synthetic profiler.mode=replay
"""

from __future__ import annotations

import hydra
import lightning.pytorch as pl
from omegaconf import DictConfig

from lightning_green.callbacks import LayerEnergyProfiler
from lightning_green.config import CONF_DIR, ConfigError, friendly_errors
from lightning_green.experiment import build_run

#: Distinct module notes printed; the rest are in layers.csv.
MAX_NOTES = 8


def print_type_table(profiler: LayerEnergyProfiler, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("layer type", "layers", "J / step", "share", "params", "fwd FLOPs / step"):
        table.add_column(col, justify="left" if col == "layer type" else "right")
    for t in profiler.type_table():
        j, share = t["joules_per_step"], t["share"]
        table.add_row(
            t["layer_type"], str(t["layers"]), "no figure" if j is None else f"{j:.4g}",
            "-" if share is None else f"{share:.1%}", f"{t['params']:,}", f"{t['flops']:,}",
        )  # fmt: skip
    Console().print(table)


def print_top_modules(profiler: LayerEnergyProfiler, top: int = 10) -> None:
    """The ``top`` modules by total energy (with their children), indented by depth."""
    from rich.console import Console
    from rich.table import Table

    rows = [r for r in profiler.rows() if r["name"] != "unattributed" and r["total_j"] is not None]
    if not rows:
        return
    table = Table(title=f"Top {min(top, len(rows))} modules by energy per step")
    for col in ("module", "type", "total J", "own J", "own share"):
        table.add_column(col, justify="left" if col in ("module", "type") else "right")
    for r in sorted(rows, key=lambda r: -r["total_j"])[:top]:
        table.add_row(
            "  " * (r["depth"] - 1) + r["name"], f"{r['module_type']} ({r['layer_type']})",
            f"{r['total_j']:.4g}", f"{r['joules_per_step']:.4g}", f"{r['share']:.1%}",
        )  # fmt: skip
    Console().print(table)


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
