"""Is LayerEnergyProfiler's per-module energy right? Checked against ablation, for every mode.

For each case a big model and a smaller variant are trained with EnergyMonitor alone (no
profiler), interleaved, and their measured energy per training step compared: that difference is
the reference. The big model (and, for the CNN, the small one) is then profiled once in
``mode="power"``, which reports all three methods (allocate, power, replay) from the same steps;
each method's prediction of the difference is the own energy of the modules the two models do not
share (each from its own model's profile), and its error against the measured difference is printed.

Cases:
- ``cnn``: the paper's CNN, 4 conv blocks vs 1 (CIFAR-10 shaped synthetic data, 3x32x32). The
  first linear layer's input width changes with the depth, so it is in the differing set.
- ``transformer``: a nanoGPT-style transformer (attention through scaled_dot_product_attention in
  a parent's forward), N blocks vs N/2.
- ``resnet``: a residual network (CIFAR-style ResNet of torchvision BasicBlocks, three stages),
  4 blocks per stage vs 2: the removed blocks are Composite modules whose own work (the residual
  addition) happens between their children's calls, where a parent's replay minus its children's
  is least certain.

``--clock`` times the modules by another clock than the one the meter calls for (``auto``);
``--load N`` runs N CPU-bound processes beside the fits (a busy machine; this script's children,
stopped at its end).

Usage: python benchmarks/layer_ablation.py [--quick] [--threads 1] [--repeats 3]
       [--device cpu|cuda] [--precision 32-true|bf16-mixed] [--tag cpu] [--steps N] [--replay-s S]
       [--out DIR] [--only cnn|transformer|resnet] [--clock auto|wall|process-cpu|thread-cpu]
       [--load N] [--image 16]
Writes ``layer_ablation_<tag>.txt`` / ``.json`` into ``--out`` (default: a fresh temporary folder;
``--quick`` without ``--out`` only prints).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing
import os
import statistics
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import lightning.pytorch as pl
import torch
from common import add_out_argument, machine, save
from torch import nn
from torchvision.models.resnet import BasicBlock

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


class SmallResNet(nn.Module):
    """A CIFAR-style ResNet (He et al. 2016, section 4.2): a 3x3 stem, three stages of ``blocks``
    BasicBlocks (``width``, 2x, 4x channels; the first block of stages 2 and 3 halves the image),
    global pooling and a linear head."""

    def __init__(self, blocks: int, in_channels: int = 3, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        stages, c = [], width
        for i, w in enumerate((width, 2 * width, 4 * width)):
            stride = 1 if i == 0 else 2
            down = (
                None if stride == 1 and c == w
                else nn.Sequential(nn.Conv2d(c, w, 1, stride, bias=False), nn.BatchNorm2d(w))
            )  # fmt: skip
            stages.append(
                nn.Sequential(BasicBlock(c, w, stride, down), *(BasicBlock(w, w) for _ in range(blocks - 1)))
            )
            c = w
        self.layer1, self.layer2, self.layer3 = stages
        self.pool, self.flat, self.fc = nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flat(self.pool(self.layer3(self.layer2(self.layer1(self.stem(x)))))))


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
    per_stage, width = (4, 8) if quick else (4, 16)
    stages = ("net.layer1", "net.layer2", "net.layer3")
    removed = under(*(f"{st}.{i}" for st in stages for i in range(per_stage // 2, per_stage)))

    def resnet(n: int) -> torch.nn.Module:
        return SmallResNet(n, in_channels=channels, width=width)

    return [
        Case("cnn", lambda: cnn(4), lambda: cnn(1), cnn_differs.__contains__, ("net", "net.5").__contains__,
             "conv blocks 2-4 (conv, BatchNorm, ReLU, pool), the first linear layer and the container's own work"),
        Case("transformer", lambda: tf(depth), lambda: tf(half),
             lambda n: blocks(n) or n == "net.blocks", lambda n: n == "net.blocks",
             f"blocks {half}-{depth - 1} of {depth} (with their attention cores) and the block container's own work"),
        Case("resnet", lambda: resnet(per_stage), lambda: resnet(per_stage // 2),
             lambda n: removed(n) or n in stages, stages.__contains__,
             f"the last {per_stage - per_stage // 2} of {per_stage} BasicBlocks of each of the 3 stages "
             "(with their residual additions) and the stage containers' own work"),
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
        # No idle baseline: the figures compared are total energy, and each fit would wait for it
        mon = EnergyMonitor(output_dir=d, backend=args.backend, baseline_s=0)
        trainer([mon], args, args.steps, 2).fit(LitClassifier(make()), datamodule=data(args))
        last = [w for w in read_windows(d) if w.stage == "train"][-1]
        return last.energy_j / args.steps


def profile(
    make: Callable[[], torch.nn.Module], args: argparse.Namespace, clock: str
) -> tuple[list[dict], dict]:
    pl.seed_everything(0, verbose=False)
    with tempfile.TemporaryDirectory() as d:
        prof = LayerEnergyProfiler(
            warmup_steps=args.warmup, profile_steps=args.profile_steps, every_n_steps=2 * args.profile_steps,
            mode="power", replay_window_s=args.replay_s, plot=False, output_dir=d, clock=clock,
        )  # fmt: skip
        mon = EnergyMonitor(output_dir=d, backend=args.backend, baseline_s=0)
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
    clocks = args.clock.split(",")
    rows_big, fig_big = profile(case.big, args, clocks[0])
    small = profile(case.small, args, clocks[0]) if case.differs_small is not None else None
    rows_small = small[0] if small is not None else None
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
        "clock": fig_big.get("clock", "wall"),  # .get: also runs against profilers before the clock choice
        "machine_load": fig_big.get("machine_load"),
        **predictions(case, (rows_big, fig_big), small, big_j, small_j),
        "other_clocks": {},
    }
    for clock in clocks[1:]:  # the same reference, other clocks: what the clock changes
        big = profile(case.big, args, clock)
        other_small = profile(case.small, args, clock) if case.differs_small is not None else None
        out["other_clocks"][clock] = {
            "machine_load": big[1].get("machine_load"),
            **predictions(case, big, other_small, big_j, small_j),
        }

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


def predictions(
    case: Case, big: tuple[list[dict], dict], small: tuple[list[dict], dict] | None,
    big_j: list[float], small_j: list[float],
) -> dict:  # fmt: skip
    """Each mode's predicted drop and its error against the measured one, and its unattributed share."""
    measured = statistics.median(big_j) - statistics.median(small_j)
    modes = {}
    for mode, key in METHOD_KEYS.items():
        pred = predicted_drop(big[0], small and small[0], case.differs_big, case.differs_small, key=key)
        # The profile's split applied to the unprofiled fits' step: the error of the shares alone,
        # free of the drift between the profiled and the measured fits (load on a shared machine).
        shares = predicted_drop(
            _rescaled(big[0], key, statistics.median(big_j), big[1]["step_j"]),
            None if small is None else _rescaled(small[0], key, statistics.median(small_j), small[1]["step_j"]),
            case.differs_big, case.differs_small, key=key,
        )  # fmt: skip
        modes[mode] = {
            "predicted_drop_j": pred, "error": relative_error(pred, measured),
            "error_of_shares": relative_error(shares, measured),
        }  # fmt: skip
    unattributed = {
        mode: _unattributed_share(big[0], key, big[1]["step_j"]) for mode, key in METHOD_KEYS.items()
    }
    return {"unattributed_share": unattributed, "modes": modes}


def _mode_lines(r: dict, indent: str = "  ") -> list[str]:
    lines = []
    for mode, m in r["modes"].items():
        pred, err, by_share = m["predicted_drop_j"], m["error"], m["error_of_shares"]
        lines.append(
            f"{indent}{mode:>8}: predicted drop {'-' if pred is None else f'{pred:.4f}'} J, "
            f"error {'-' if err is None else f'{err:+.1%}'} "
            f"(its shares x the measured step: {'-' if by_share is None else f'{by_share:+.1%}'})"
        )
    return lines


def case_lines(name: str, r: dict) -> list[str]:
    """The report's lines for one case."""
    lo, hi = r["measured_drop_range_j"]
    lines = [
        f"[{name}] removed: {r['what']}",
        f"  measured step: big {statistics.median(r['measured_big_step_j']):.4f} J, small "
        f"{statistics.median(r['measured_small_step_j']):.4f} J; drop {r['measured_drop_j']:.4f} J "
        f"(per repeat {lo:.4f}..{hi:.4f})",
        f"  profiler's step (reference steps) vs EnergyMonitor's: {r['profiler_step_vs_monitor']:+.1%}; "
        f"hooks' own time {r['hook_overhead_s_per_step'] * 1000:.2f} ms per {r['step_s'] * 1000:.1f} ms step",
        f"  clock {r['clock']}; {_load_text(r['machine_load'])}; unattributed share: "
        + ", ".join(f"{m} {'-' if v is None else f'{v:.1%}'}" for m, v in r["unattributed_share"].items()),
    ]
    lines += _mode_lines(r)
    for clock, other in r.get("other_clocks", {}).items():
        lines.append(
            f"  timed by {clock} instead: {_load_text(other['machine_load'])}; unattributed share: "
            + ", ".join(
                f"{m} {'-' if v is None else f'{v:.1%}'}" for m, v in other["unattributed_share"].items()
            )
        )
        lines += _mode_lines(other, "    ")
    leaf = r["leaf_only_allocate"]
    lines += [
        f"  (leaves only, as before the whole tree: predicted {leaf['predicted_drop_j']:.4f} J, "
        f"error {leaf['error']:+.1%})",
        "",
    ]
    return lines


def _rescaled(rows: list[dict], key: str, measured_j: float, profiled_j: float | None) -> list[dict]:
    factor = measured_j / profiled_j if profiled_j else float("nan")
    return [{**r, key: None if r.get(key) is None else r[key] * factor} for r in rows]


def _unattributed_share(rows: list[dict], key: str, step_j: float | None) -> float | None:
    figures = [r[key] for r in rows if r["name"] != "unattributed"]
    if step_j is None or any(f is None for f in figures):
        return None
    return (step_j - sum(figures)) / step_j


def _load_text(load: dict | None) -> str:
    if load is None:
        return "machine load not recorded"

    def f(x: float | None, fmt: str) -> str:
        return "-" if x is None else format(x, fmt)

    return (
        f"profiled steps: this process {f(load['own_cpus'], '.2f')} CPUs, others {f(load['other_cpus'], '.2f')} "
        f"of {load['cpus']}, training thread waited {f(load['waited_share'], '.0%')}"
    )


def _spin() -> None:  # pragma: no cover - a background load process
    while True:
        pass


@contextlib.contextmanager
def background_load(n: int) -> Iterator[None]:
    """``n`` CPU-bound processes (this script's children) while the block runs."""
    spinners = [multiprocessing.get_context("fork").Process(target=_spin, daemon=True) for _ in range(n)]
    for sp in spinners:
        sp.start()
    try:
        yield
    finally:
        for sp in spinners:
            sp.terminate()
            sp.join()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny models and few steps (the test suite's mode)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="32-true")
    p.add_argument("--backend", default="auto")
    p.add_argument("--tag", default=None, help="results/layer_ablation_<tag>.txt (default: the device)")
    p.add_argument("--only", default=None, help="run one case: cnn, transformer or resnet")
    p.add_argument("--clock", default="auto", help="LayerEnergyProfiler(clock=...); several, comma-separated")
    p.add_argument("--load", type=int, default=0, help="CPU-bound processes to run beside the fits")
    p.add_argument("--image", type=int, default=None, help="image side (default 32; 8 with --quick)")
    p.add_argument("--steps", type=int, default=None, help="training steps per epoch (default: by device)")
    p.add_argument(
        "--replay-s", type=float, default=None, help="seconds per replay loop (default: by device)"
    )
    add_out_argument(p)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    q = args.quick
    image = args.image
    args.image, args.channels = (8, 1) if q else (32, 3)
    args.image = image or args.image
    args.batch = 16 if q else (32 if args.device == "cpu" else 256)
    args.steps = args.steps or (8 if q else (40 if args.device == "cpu" else 300))
    args.warmup, args.profile_steps = (1, 2) if q else ((5, 8) if args.device == "cpu" else (20, 60))
    args.replay_s = args.replay_s or (0.05 if q else (1.0 if args.device == "cpu" else 2.0))
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
    with background_load(args.load):
        for case in cases(q, args.image, args.channels, depth):
            if args.only and case.name != args.only:
                continue
            r = run_case(case, args)
            results["cases"][case.name] = r
            lines += case_lines(case.name, r)
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
    if q and args.out is None:
        print("\n".join(lines))
    else:
        save(f"layer_ablation_{tag}", "\n".join(lines) + "\n", results, args.out)
    return results


if __name__ == "__main__":
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    main()
