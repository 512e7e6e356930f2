"""Energy saved and accuracy lost by EnergyEfficientStopping, against a fixed number of epochs and
against Lightning's EarlyStopping on the same metric.

Digits, the paper's CNN (2 conv layers), ``--epochs`` epochs at most, ``--seeds`` seeds; energy is
the fit's (estimated:cpu-time here, threads pinned to 1), accuracy the test accuracy of the last
weights; several thresholds of EnergyEfficientStopping show the trade-off a user picks from.
Usage: python benchmarks/energy_stopping.py [--epochs 40] [--seeds 5] [--min-gain-per-kj 5 10 20] [--out DIR]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import warnings

import lightning.pytorch as pl
import torch
from common import add_out_argument, machine, save
from lightning.pytorch.callbacks import EarlyStopping

from lightning_green import EnergyEfficientStopping, EnergyMonitor
from lightning_green.data import DigitsDataModule
from lightning_green.models import LitClassifier, SimpleCNN


def fit(policy: str, seed: int, epochs: int, patience: int) -> dict:
    pl.seed_everything(seed, verbose=False)
    with tempfile.TemporaryDirectory() as d:
        monitor = EnergyMonitor(output_dir=d)
        if policy == "fixed":
            extra = []
        elif policy == "early_stopping":
            extra = [EarlyStopping(monitor="val_acc", mode="max", patience=patience)]
        else:  # energy_efficient@<min_gain_per_kj>
            gain = float(policy.split("@")[1])
            extra = [
                EnergyEfficientStopping(
                    monitor="val_acc", mode="max", min_gain_per_kj=gain, patience=patience
                )
            ]
        trainer = pl.Trainer(max_epochs=epochs, logger=False, callbacks=[monitor, *extra], enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
        dm = DigitsDataModule(seed=seed)
        model = LitClassifier(SimpleCNN(conv_layers=2, linear_layers=2))
        trainer.fit(model, datamodule=dm)
        fit_j = monitor.total_j
        acc = float(trainer.test(model, datamodule=dm, verbose=False)[0]["test_acc"])
    return {"energy_j": fit_j, "test_acc": acc, "epochs": trainer.current_epoch}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--min-gain-per-kj", type=float, nargs="+", default=[5.0, 10.0, 20.0])
    p.add_argument("--patience", type=int, default=3)
    add_out_argument(p)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    policies = ("fixed", "early_stopping", *(f"energy_efficient@{g:g}" for g in args.min_gain_per_kj))
    results = {pol: [fit(pol, s, args.epochs, args.patience) for s in range(args.seeds)] for pol in policies}
    mean = statistics.mean
    base_j = mean(r["energy_j"] for r in results["fixed"])
    base_acc = mean(r["test_acc"] for r in results["fixed"])
    lines = [
        f"Stopping policies on digits (SimpleCNN conv=2), at most {args.epochs} epochs, {args.seeds} seeds, "
        f"patience {args.patience}; energy estimated:cpu-time (1 thread), accuracy = test accuracy",
        "energy_efficient@G: EnergyEfficientStopping(val_acc, max, min_gain_per_kj=G, i.e. accuracy per kJ); "
        "early_stopping: Lightning's EarlyStopping(val_acc, max)",
        f"machine: {machine()}",
        "",
        "| policy | epochs (mean) | energy J (mean) | energy saved vs fixed | test acc (mean) | acc lost vs fixed |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for pol in policies:
        rs = results[pol]
        j, acc = mean(r["energy_j"] for r in rs), mean(r["test_acc"] for r in rs)
        lines.append(
            f"| {pol} | {mean(r['epochs'] for r in rs):.1f} | {j:.2f} | {(1 - j / base_j) * 100:.1f}% | "
            f"{acc:.4f} | {(base_acc - acc) * 100:+.2f} points |"
        )
    lines += [
        "",
        "per seed (energy J / test acc / epochs):",
        *(
            f"  {pol}: "
            + ", ".join(f"{r['energy_j']:.2f}/{r['test_acc']:.3f}/{r['epochs']}" for r in results[pol])
            for pol in policies
        ),
        "",
        f"command: python benchmarks/energy_stopping.py --epochs {args.epochs} --seeds {args.seeds} "
        f"--min-gain-per-kj {' '.join(f'{g:g}' for g in args.min_gain_per_kj)} --patience {args.patience}",
    ]
    save("energy_stopping", "\n".join(lines) + "\n", {"args": vars(args), "results": results}, args.out)


if __name__ == "__main__":
    main()
