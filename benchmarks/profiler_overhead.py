"""Training throughput with LayerEnergyProfiler at its defaults vs without (target: <= 3% amortised).

Both arms run EnergyMonitor; runs are interleaved. Besides whole-fit times (noisy on a shared
2-core VM), it reports the profiler's own cost, measured inside the run: the time in its
callback hooks plus the extra time of profiled steps over the median unprofiled step.
Usage: python benchmarks/profiler_overhead.py [--repeats 7] [--epochs 30] [--out DIR]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import warnings

import lightning.pytorch as pl
import torch
from common import add_out_argument, interleaved, machine, median, save, timed_callback

from lightning_green import EnergyMonitor, LayerEnergyProfiler
from lightning_green.data import DigitsDataModule
from lightning_green.models import LitClassifier, SimpleCNN

HOOKS = (
    "setup",
    "teardown",
    "on_train_batch_start",
    "on_train_batch_end",
    "on_train_epoch_end",
    "on_validation_start",
    "on_before_optimizer_step",
)
TimedProfiler = timed_callback(LayerEnergyProfiler, HOOKS)


class TimedEnd(TimedProfiler):
    """Also times on_train_end (FLOP count, CSVs, records, chart) on its own."""

    end_seconds = 0.0

    def on_train_end(self, trainer, pl_module):
        t0 = time.perf_counter()
        super().on_train_end(trainer, pl_module)
        self.end_seconds += time.perf_counter() - t0


OWN_COST: list[float] = []
END_COST: list[float] = []


class StepTimer(pl.Callback):
    def __init__(self) -> None:
        self.steps: list[tuple[int, float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._t = time.perf_counter()
        self._step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps.append((self._step, time.perf_counter() - self._t))


def fit_seconds(epochs: int, profile: bool, workdir: str) -> float:
    pl.seed_everything(0, verbose=False)
    timer = StepTimer()
    prof = TimedEnd(output_dir=workdir) if profile else None
    # The timer wraps every other callback's batch hooks: first in, last out is not possible in
    # Lightning, so it measures the step body; the profiler's own hook time is added separately.
    callbacks = [EnergyMonitor(output_dir=workdir), timer, *([prof] if prof else [])]
    trainer = pl.Trainer(
        max_epochs=epochs, logger=False, callbacks=callbacks, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    t0 = time.perf_counter()
    trainer.fit(LitClassifier(SimpleCNN(conv_layers=2, linear_layers=2)), datamodule=DigitsDataModule())
    seconds = time.perf_counter() - t0
    if prof is not None:
        normal = statistics.median(t for s, t in timer.steps if not prof.is_profiled_step(s))
        extra = sum(t - normal for s, t in timer.steps if prof.is_profiled_step(s))
        end = prof.end_seconds
        OWN_COST.append((prof.hook_seconds + extra) / (seconds - end))
        END_COST.append(end)
    return seconds


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--epochs", type=int, default=30)
    add_out_argument(p)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        fit_seconds(1, True, d)
        OWN_COST.clear()
        times = interleaved(
            {
                "without": lambda: fit_seconds(args.epochs, False, d),
                "with": lambda: fit_seconds(args.epochs, True, d),
            },
            args.repeats,
        )
    tw, tn = median(times["with"]), median(times["without"])
    pairs = [w / n for w, n in zip(times["with"], times["without"], strict=True)]
    steps = args.epochs * 20
    d = LayerEnergyProfiler()
    text = (
        f"LayerEnergyProfiler overhead on CPU at its defaults (warmup_steps={d.warmup_steps}, profile_steps={d.profile_steps}, "
        f"every_n_steps={d.every_n_steps}); digits, SimpleCNN(2 conv, 2 linear), {args.epochs} epochs = {steps} steps, "
        f"{args.repeats} interleaved pairs, EnergyMonitor in both arms\n"
        f"machine: {machine()}\n"
        f"median fit time without: {tn:.3f} s   with: {tw:.3f} s\n"
        f"throughput ratio (with/without, medians): {tn / tw:.4f}\n"
        f"whole-fit overhead (median of per-pair ratios): {(median(pairs) - 1) * 100:+.2f}%  (noise: per-pair ratios "
        f"{', '.join(f'{r:.3f}' for r in pairs)})\n"
        f"profiler's own cost during training (its hooks + extra time of profiled steps): {median(OWN_COST) * 100:.2f}% "
        f"of training time (target <= 3% amortised)\n"
        f"one-time cost at the end of training (FLOP count, CSVs, records, chart): {median(END_COST):.3f} s "
        f"(whole-fit figures include it; it does not grow with training length)\n"
        f"command: python benchmarks/profiler_overhead.py --repeats {args.repeats} --epochs {args.epochs}\n"
    )
    save(
        "profiler_overhead",
        text,
        {"times": times, "own_cost": OWN_COST, "end_cost": END_COST, "args": vars(args)},
        args.out,
    )


if __name__ == "__main__":
    main()
