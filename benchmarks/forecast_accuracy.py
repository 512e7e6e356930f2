"""How right EnergyMonitor's forecast of a fit's energy is, and how early (target: within 5% after epoch 1).

For several models on the embedded digits data (CPU-time estimate; threads pinned to 1), each fit
runs ``--epochs`` epochs; the forecast logged inside the first epoch (after warm-up) and after each
epoch is compared with the fit's final energy. Beside it: what a mean over whole epochs (the
forecast before this change) would have said after each epoch. ``--warmup-ms`` adds CPU work to
the first 4 batches of each fit, as CUDA autotuning and compilation do on a GPU.
Usage: python benchmarks/forecast_accuracy.py [--epochs 5] [--warmup-ms 60] [--repeats 3] [--out DIR]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import warnings

import lightning.pytorch as pl
import torch
from common import add_out_argument, machine, median, save

from lightning_green import EnergyMonitor
from lightning_green.data import DigitsDataModule
from lightning_green.models import DenseNet, LitClassifier, SimpleCNN

MODELS = {
    "cnn conv=1": lambda: SimpleCNN(conv_layers=1, linear_layers=2),
    "cnn conv=4": lambda: SimpleCNN(conv_layers=4, linear_layers=2),
    "dense 3x256": lambda: DenseNet(hidden_layers=3, width=256, in_channels=1, image_size=8),
}


class Record(pl.Callback):
    def __init__(self, monitor: EnergyMonitor, warmup_s: float) -> None:
        self.monitor, self.warmup_s = monitor, warmup_s
        self.mid: float | None = None
        self.after_epoch: list[float] = []
        self.mean_of_epochs: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == 0 and batch_idx < 4:
            end = time.process_time() + self.warmup_s
            while time.process_time() < end:
                pass

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.mid is None and self.monitor.forecast is not None:
            self.mid = self.monitor.forecast.fit_j

    def on_train_epoch_end(self, trainer, pl_module):
        m = self.monitor
        self.after_epoch.append(m.forecast.fit_j if m.forecast else float("nan"))
        done = len(m.ledger.epoch_j)
        self.mean_of_epochs.append(m.total_j + (trainer.max_epochs - done) * sum(m.ledger.epoch_j) / done)


def run(name: str, epochs: int, warmup_s: float) -> dict:
    pl.seed_everything(0, verbose=False)
    with tempfile.TemporaryDirectory() as d:
        monitor = EnergyMonitor(output_dir=d)
        rec = Record(monitor, warmup_s)
        trainer = pl.Trainer(max_epochs=epochs, logger=False, callbacks=[monitor, rec], enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
        trainer.fit(LitClassifier(MODELS[name]()), datamodule=DigitsDataModule(batch_size=32))
        final = monitor.total_j

    def err(x: float) -> float:
        return (x - final) / final * 100

    return {
        "final_j": final,
        "mid_first_epoch_pct": err(rec.mid) if rec.mid is not None else None,
        "after_epoch_pct": [err(x) for x in rec.after_epoch],
        "mean_of_epochs_pct": [err(x) for x in rec.mean_of_epochs],
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--warmup-ms", type=float, default=60.0)
    p.add_argument("--repeats", type=int, default=3)
    add_out_argument(p)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    lines = [
        f"EnergyMonitor forecast error (forecast - final) / final, digits, {args.epochs} epochs, batch 32, "
        f"{args.warmup_ms:g} ms of extra CPU work in each of the first 4 batches (warm-up), "
        f"median of {args.repeats} fits; energy estimated:cpu-time, 1 thread",
        f"machine: {machine()}",
        "",
    ]
    data: dict = {"args": vars(args)}
    firsts = []
    for name in MODELS:
        runs = [run(name, args.epochs, args.warmup_ms / 1000) for _ in range(args.repeats)]
        mid = median([r["mid_first_epoch_pct"] for r in runs])
        after = [median([r["after_epoch_pct"][i] for r in runs]) for i in range(args.epochs)]
        old = [median([r["mean_of_epochs_pct"][i] for r in runs]) for i in range(args.epochs)]
        firsts += [abs(r["after_epoch_pct"][0]) for r in runs]
        lines += [
            f"[{name}] final {median([r['final_j'] for r in runs]):.2f} J",
            f"  forecast inside epoch 1 (after warm-up): {mid:+.1f}%",
            "  forecast after epoch:        " + "  ".join(f"{i + 1}: {e:+.1f}%" for i, e in enumerate(after)),
            "  mean of whole epochs (old):  " + "  ".join(f"{i + 1}: {e:+.1f}%" for i, e in enumerate(old)),
        ]
        data[name] = runs
    lines += [
        "",
        f"after epoch 1, over every fit: median |error| {median(firsts):.1f}%, max {max(firsts):.1f}% (target <= 5%)",
        f"command: python benchmarks/forecast_accuracy.py --epochs {args.epochs} --warmup-ms {args.warmup_ms:g} "
        f"--repeats {args.repeats}",
    ]
    save("forecast_accuracy", "\n".join(lines) + "\n", data, args.out)


if __name__ == "__main__":
    main()
