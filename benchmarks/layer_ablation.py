"""Is LayerEnergyProfiler's per-module energy right? Checked against ablation, for every mode.

For each case a big model and a smaller variant are trained with EnergyMonitor alone (no
profiler), interleaved, and their measured energy per training step compared: that difference is
the reference. The big model (and, for the CNN, the small one) is then profiled once in
``mode="power"``, which reports all three methods (allocate, power, replay) from the same steps;
each method's prediction of the difference is the own energy of the modules the two models do not
share (each from its own model's profile), and its error against the measured difference is printed.

Cases:
- ``cnn``: the study's CNN, 4 conv blocks vs 1 (CIFAR-10 shaped synthetic data, 3x32x32). The
  first linear layer's input width changes with the depth, so it is in the differing set.
- ``transformer``: a nanoGPT-style transformer (attention through scaled_dot_product_attention in
  a parent's forward), N blocks vs N/2.

Usage: python benchmarks/layer_ablation.py [--quick] [--threads 1] [--repeats 3]
       [--device cpu|cuda] [--precision 32-true|bf16-mixed] [--tag cpu]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import lightning.pytorch as pl
import torch
from common import machine, save

from lightning_green import EnergyMonitor, LayerEnergyProfiler
from lightning_green.callbacks.layer_profiler.validation import (
    METHOD_KEYS,
    predicted_drop,
    relative_error,
    under,
)
from lightning_green.data import SyntheticDataModule
from lightning_green.models import LitClassifier, SimpleCNN, TransformerClassifier
from lightning_green.records import read_windows


@dataclass
class Case:
    name: str
    big: Callable[[], torch.nn.Module]
    small: Callable[[], torch.nn.Module]
    differs_big: Callable[[str], bool]
    differs_small: Callable[[str], bool] | None  # None: the small model is the big one minus modules
    what: str


def cases(quick: bool, image: int, channels: int, depth: int) -> list[Case]:
    shape = {"in_channels": channels, "image_size": image}
    width = 32 if quick else 64
    patch = 2 if quick else 4
    half = depth // 2

    def cnn(conv: int) -> torch.nn.Module:
        return SimpleCNN(conv_layers=conv, linear_layers=2, **shape)

    def tf(d: int) -> torch.nn.Module:
        return TransformerClassifier(depth=d, width=width, heads=4, patch=patch, **shape)

    # SimpleCNN(4): blocks of conv, bn, relu, pool = net.0..15; flatten 16; linear 17, relu 18, linear 19.
    # SimpleCNN(1): net.0..3; flatten 4; linear 5 (wider input), relu 6, linear 7.
    cnn_differs = {"net", "net.17", *(f"net.{i}" for i in range(4, 16))}
    blocks = under(*(f"net.blocks.{i}" for i in range(half, depth)))
    return [
        Case("cnn", lambda: cnn(4), lambda: cnn(1), cnn_differs.__contains__, ("net", "net.5").__contains__,
             "conv blocks 2-4 (conv, BatchNorm, ReLU, pool), the first linear layer and the container's own work"),
        Case("transformer", lambda: tf(depth), lambda: tf(half),
             lambda n: blocks(n) or n == "net.blocks", lambda n: n == "net.blocks",
             f"blocks {half}-{depth - 1} of {depth} (with their attention cores) and the block container's own work"),
    ]  # fmt: skip


def trainer(callbacks: list, args: argparse.Namespace, steps: int, epochs: int) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=epochs, limit_train_batches=steps, limit_val_batches=0, num_sanity_val_steps=0,
        accelerator=args.device, devices=1, precision=args.precision, logger=False,
        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False, callbacks=callbacks,
    )  # fmt: skip


def data(args: argparse.Namespace) -> SyntheticDataModule:
    return SyntheticDataModule(
        samples=args.batch * args.steps * 2,
        in_channels=args.channels,
        image_size=args.image,
        batch_size=args.batch,
    )


def measured_step_j(make: Callable[[], torch.nn.Module], args: argparse.Namespace) -> float:
    """Energy per training step of an unprofiled fit (the last epoch; the first warms up)."""
    pl.seed_everything(0, verbose=False)
    with tempfile.TemporaryDirectory() as d:
        mon = EnergyMonitor(output_dir=d, backend=args.backend)
        trainer([mon], args, args.steps, 2).fit(LitClassifier(make()), datamodule=data(args))
        last = [w for w in read_windows(d) if w.stage == "train"][-1]
        return last.energy_j / args.steps


def profile(make: Callable[[], torch.nn.Module], args: argparse.Namespace) -> tuple[list[dict], dict]:
    pl.seed_everything(0, verbose=False)
    with tempfile.TemporaryDirectory() as d:
        prof = LayerEnergyProfiler(
            warmup_steps=args.warmup, profile_steps=args.profile_steps, every_n_steps=2 * args.profile_steps,
            mode="power", replay_window_s=args.replay_s, plot=False, output_dir=d,
        )  # fmt: skip
        mon = EnergyMonitor(output_dir=d, backend=args.backend)
        trainer([mon, prof], args, args.steps, 2).fit(LitClassifier(make()), datamodule=data(args))
        return prof.rows(), prof.step_figures()


def run_case(case: Case, args: argparse.Namespace) -> dict:
    big_j, small_j = [], []
    for i in range(args.repeats):  # interleaved, alternating the order, so drift hits both alike
        pair = [(big_j, case.big), (small_j, case.small)]
        for store, make in pair if i % 2 == 0 else pair[::-1]:
            store.append(measured_step_j(make, args))
    drops = [b - s for b, s in zip(big_j, small_j, strict=True)]
    measured = statistics.median(big_j) - statistics.median(small_j)
    rows_big, fig_big = profile(case.big, args)
    rows_small = profile(case.small, args)[0] if case.differs_small is not None else None
    out: dict = {
        "what": case.what,
        "measured_big_step_j": big_j,
        "measured_small_step_j": small_j,
        "measured_drop_j": measured,
        "measured_drop_range_j": [min(drops), max(drops)],
        "profiler_step_j": fig_big["step_j"],
        "profiler_step_vs_monitor": relative_error(fig_big["step_j"], statistics.median(big_j)),
        "hook_overhead_s_per_step": fig_big["hook_overhead_s_per_step"],
        "step_s": fig_big["step_s"],
        "modes": {},
    }
    for mode, key in METHOD_KEYS.items():
        pred = predicted_drop(rows_big, rows_small, case.differs_big, case.differs_small, key=key)
        out["modes"][mode] = {"predicted_drop_j": pred, "error": relative_error(pred, measured)}

    # What a leaf-only profile (the profiler before the whole tree) would have said: only the
    # leaves' own time counts; a parent's own work (an attention core, residuals) is unattributed.
    def leaves(rows: list[dict]) -> set[str]:
        return {r["name"] for r in rows} - {r["parent"] for r in rows}

    lb = leaves(rows_big)
    ls = leaves(rows_small) if rows_small is not None else set()
    pred = predicted_drop(
        rows_big, rows_small, lambda n: n in lb and case.differs_big(n),
        (lambda n: n in ls and case.differs_small(n)) if case.differs_small else None, key="allocated_j",
    )  # fmt: skip
    out["leaf_only_allocate"] = {"predicted_drop_j": pred, "error": relative_error(pred, measured)}
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny models and few steps (the test suite's mode)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="32-true")
    p.add_argument("--backend", default="auto")
    p.add_argument("--tag", default=None, help="results/layer_ablation_<tag>.txt (default: the device)")
    p.add_argument("--only", default=None, help="run one case: cnn or transformer")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    q = args.quick
    args.image, args.channels = (8, 1) if q else (32, 3)
    args.batch = 16 if q else (32 if args.device == "cpu" else 256)
    args.steps = 8 if q else (40 if args.device == "cpu" else 300)
    args.warmup, args.profile_steps = (1, 2) if q else ((5, 8) if args.device == "cpu" else (20, 60))
    args.replay_s = 0.05 if q else (1.0 if args.device == "cpu" else 2.0)
    args.repeats = 1 if q else args.repeats
    depth = 2 if q else 6
    results: dict = {"args": vars(args), "machine": machine(), "cases": {}}
    lines = [
        "LayerEnergyProfiler against ablation: measured drop in energy per training step when modules are",
        "removed (EnergyMonitor, unprofiled fits, median of repeats) vs the drop each mode predicts.",
        f"device {args.device}, precision {args.precision}, threads {args.threads}, batch {args.batch}, "
        f"{args.steps} steps x 2 epochs per fit, {args.repeats} repeat(s); machine: {machine()}",
        "",
    ]
    for case in cases(q, args.image, args.channels, depth):
        if args.only and case.name != args.only:
            continue
        r = run_case(case, args)
        results["cases"][case.name] = r
        lo, hi = r["measured_drop_range_j"]
        lines += [
            f"[{case.name}] removed: {r['what']}",
            f"  measured step: big {statistics.median(r['measured_big_step_j']):.4f} J, small "
            f"{statistics.median(r['measured_small_step_j']):.4f} J; drop {r['measured_drop_j']:.4f} J "
            f"(per repeat {lo:.4f}..{hi:.4f})",
            f"  profiler's step (reference steps) vs EnergyMonitor's: {r['profiler_step_vs_monitor']:+.1%}; "
            f"hooks' own time {r['hook_overhead_s_per_step'] * 1000:.2f} ms per {r['step_s'] * 1000:.1f} ms step",
        ]
        for mode, m in r["modes"].items():
            pred, err = m["predicted_drop_j"], m["error"]
            lines.append(
                f"  {mode:>8}: predicted drop {'-' if pred is None else f'{pred:.4f}'} J, "
                f"error {'-' if err is None else f'{err:+.1%}'}"
            )
        leaf = r["leaf_only_allocate"]
        lines += [
            f"  (leaves only, as before the whole tree: predicted {leaf['predicted_drop_j']:.4f} J, "
            f"error {leaf['error']:+.1%})",
            "",
        ]
    best = {
        mode: max(
            abs(c["modes"][mode]["error"])
            for c in results["cases"].values()
            if c["modes"][mode]["error"] is not None
        )
        for mode in METHOD_KEYS
        if all(c["modes"][mode]["error"] is not None for c in results["cases"].values())
    }
    if best:
        winner = min(best, key=best.get)
        results["worst_error_by_mode"], results["best_mode"] = best, winner
        lines.append(
            "worst |error| over the cases: "
            + ", ".join(f"{m} {e:.1%}" for m, e in best.items())
            + f"; best mode: {winner}"
        )
    cmd = "python benchmarks/layer_ablation.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines.append(f"command: {cmd.strip()}")
    tag = args.tag or ("quick" if q else args.device)
    if not q:
        save(f"layer_ablation_{tag}", "\n".join(lines) + "\n", results)
    else:
        print("\n".join(lines))
    return results


if __name__ == "__main__":
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    main()
