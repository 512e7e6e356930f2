"""``lightning-green train``: train one configuration of the Hydra tree with EnergyMonitor on.

Usage::

    lightning-green train                                  # default CNN on digits
    lightning-green train model.conv_layers=4 trainer.max_epochs=3
    lightning-green train -m model.conv_layers=1,2,4       # a multirun
    lightning-green train +experiment=paper_rq2            # the paper's 2x2x2 design
    python -m lightning_green.train ...                    # the same
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from lightning_green.carbon import JOULES_PER_KWH
from lightning_green.config import CONF_DIR, friendly_errors
from lightning_green.experiment import Run, build_run, forward_flops, run_training  # re-exported
from lightning_green.records import RunRecord

__all__ = ["Run", "build_run", "forward_flops", "main", "print_summary", "run_training"]


def print_summary(record: RunRecord, output_dir: str) -> None:
    import shutil

    from rich.console import Console
    from rich.table import Table

    table = Table(title="lightning-green run", show_header=False)
    table.add_row("overrides", " ".join(record.overrides) or "(defaults)")
    table.add_row("test accuracy", f"{record.test_acc:.4f}" if record.test_acc is not None else "-")
    table.add_row("training energy", f"{record.energy_j:,.1f} J ({record.energy_j / JOULES_PER_KWH:.3g} kWh)")
    table.add_row("total energy (with test)", f"{record.total_j:,.1f} J, {record.co2e_g:.3g} g CO2e")
    if record.carbon:
        c = record.carbon
        year = f", {c['year']}" if c.get("year") else ""
        table.add_row(
            "carbon intensity",
            f"{c['effective_g_per_kwh']:.1f} g/kWh x PUE {c['pue']:g}: {c['place']} ({c['name']}{year}; "
            f"{c['method']}; {c['source']})",
        )
    table.add_row("source", ", ".join(f"{d}: {s}" for d, s in record.sources.items()))
    table.add_row("complete", "yes" if record.complete else "NO: a counter failed, see energy.jsonl")
    table.add_row("time", f"{record.seconds:.1f} s ({record.epochs} epochs)")
    table.add_row("params / FLOPs per sample", f"{record.params:,} / {record.flops_per_sample:,}")
    table.add_row("records", output_dir)
    # At most 100 columns, wrapped within its cells; piped output (no terminal) gets the 100 too.
    Console(width=min(100, shutil.get_terminal_size((100, 24)).columns)).print(table)


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
@friendly_errors
def main(cfg: DictConfig) -> float:
    """Hydra entry point; returns the test accuracy (what a sweeper maximises)."""
    record = run_training(cfg)
    print_summary(record, cfg.output_dir)
    return float(record.test_acc if record.test_acc is not None else record.val_acc or 0.0)


if __name__ == "__main__":
    main()
