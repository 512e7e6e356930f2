"""Training throughput with and without EnergyMonitor (target: overhead <= 1%).

Same model, data and seed; runs interleaved (with/without alternate first) so drift hits both.
Two workloads: digits (tiny ~60 ms epochs, the worst case for a per-epoch cost) and 32x32
synthetic images (epochs of about a second).
Usage: python benchmarks/monitor_overhead.py [--repeats 7] [--epochs 30 4]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import warnings

import lightning.pytorch as pl
import torch
from common import interleaved, machine, median, save, timed_callback

from lightning_green import EnergyMonitor
from lightning_green.data import DigitsDataModule, SyntheticDataModule
from lightning_green.models import LitClassifier, SimpleCNN

WORKLOADS = {
    # name: (datamodule factory, model factory, training samples per epoch)
    "digits": (
        lambda: DigitsDataModule(batch_size=64),
        lambda: SimpleCNN(conv_layers=2, linear_layers=2),
        1259,
    ),
    "synthetic32": (
        lambda: SyntheticDataModule(samples=4096, in_channels=3, image_size=32, batch_size=64),
        lambda: SimpleCNN(conv_layers=3, linear_layers=2, base_channels=4, in_channels=3, image_size=32),
        4096 - 2 * 614,
    ),
}


HOOKS = (
    "setup", "teardown", "on_train_epoch_start", "on_train_epoch_end", "on_validation_start",
    "on_validation_epoch_end", "on_validation_end",
)  # fmt: skip
TimedMonitor = timed_callback(EnergyMonitor, HOOKS)
HOOK_SHARES: dict[str, list[float]] = {}


def fit_seconds(workload: str, epochs: int, monitor: bool, workdir: str) -> float:
    pl.seed_everything(0, verbose=False)
    make_dm, make_net, _ = WORKLOADS[workload]
    dm = make_dm()
    model = LitClassifier(make_net())
    callbacks = [TimedMonitor(output_dir=workdir)] if monitor else []
    trainer = pl.Trainer(
        max_epochs=epochs,
        logger=pl.loggers.CSVLogger(workdir),
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    t0 = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    seconds = time.perf_counter() - t0
    if monitor:
        HOOK_SHARES.setdefault(workload, []).append(callbacks[0].hook_seconds / seconds)
    return seconds


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--epochs", type=int, nargs=2, default=[30, 4], help="epochs for digits, synthetic32")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    lines = [
        f"EnergyMonitor overhead on CPU: same model, data and seed, {args.repeats} interleaved pairs per workload",
        f"machine: {machine()}",
    ]
    data = {"args": vars(args)}
    for (workload, (_, _, samples)), epochs in zip(WORKLOADS.items(), args.epochs, strict=True):
        with tempfile.TemporaryDirectory() as d:
            fit_seconds(workload, 1, True, d)  # warm-up: imports, allocator, first-epoch effects
            times = interleaved(
                {
                    "without": lambda w=workload, e=epochs, d=d: fit_seconds(w, e, False, d),
                    "with": lambda w=workload, e=epochs, d=d: fit_seconds(w, e, True, d),
                },
                args.repeats,
            )
        tw, tn = median(times["with"]), median(times["without"])
        pairs = [w / n for w, n in zip(times["with"], times["without"], strict=True)]
        overhead = median(pairs) - 1
        hook_share = median(HOOK_SHARES[workload])
        lines += [
            "",
            f"[{workload}] {epochs} epochs, {samples * epochs / tn:,.0f} samples/s without the monitor, "
            f"epoch ~{tn / epochs * 1000:.0f} ms",
            f"  median fit time without: {tn:.3f} s   with: {tw:.3f} s",
            f"  throughput ratio (with/without, medians): {tn / tw:.4f}",
            f"  overhead (median of per-pair ratios): {overhead * 100:+.2f}%  (target <= 1%)",
            f"  per-pair ratios: {', '.join(f'{r:.3f}' for r in pairs)}",
            f"  time inside EnergyMonitor's hooks: {hook_share * 100:.2f}% of fit time "
            f"({hook_share * tn / epochs * 1000:.2f} ms per epoch)  <- the monitor's own cost (target <= 1%)",
        ]
        data[workload] = {"times": times, "overhead": overhead, "epochs": epochs, "hook_share": hook_share}
    lines.append(
        f"\ncommand: python benchmarks/monitor_overhead.py --repeats {args.repeats} --epochs {args.epochs[0]} {args.epochs[1]}"
    )
    save("monitor_overhead", "\n".join(lines) + "\n", data)


if __name__ == "__main__":
    main()
