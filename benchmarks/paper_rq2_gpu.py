"""The paper's RQ2 design (conv layers {1,4} x linear {3,7} x ReLU {on,off}) on total and dynamic energy.

Each of the 8 configurations of the project's SimpleCNN trains two epochs of ``--steps`` batches
of ``--batch-size`` on synthetic data shaped like Fashion-MNIST (1x28x28) and like CIFAR-10
(3x32x32); the second epoch's training energy is measured by EnergyMonitor, beside its dynamic
part (above the devices' idle baseline, measured before training). It prints, for each shape, the
energy cut from 4 to 1 conv layers and each factor's eta^2, on total and on dynamic energy, next to
the paper's figures. On a GPU it reads NVML (plain python: no Hydra or Ray needed). On a machine
without counters the energy is the CPU-time estimate, which is dynamic already (the two columns
then agree).
Usage: python benchmarks/paper_rq2_gpu.py [--steps 300] [--batch-size 128] [--baseline-s 2]
       [--shapes fashion_mnist cifar10] [--tag cuda|cpu] [--out DIR]
Writes ``paper_rq2_gpu_<tag>.txt`` / ``.json`` (tag: the device by default) into ``--out`` (default:
a fresh temporary folder).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import tempfile
import warnings

import lightning.pytorch as pl
import pandas as pd
import torch
from common import add_out_argument, machine, save

from lightning_green import EnergyMonitor
from lightning_green.data import SyntheticDataModule
from lightning_green.models import LitClassifier, SimpleCNN
from lightning_green.records import read_summary, read_windows
from lightning_green.report.runs import main_effects

SHAPES = {"fashion_mnist": (1, 28), "cifar10": (3, 32)}
STUDY = {  # Yarally et al., CAIN 2023 (their GPU; nvidia-smi power x time, total energy)
    "fashion_mnist": {"cut": 48.8, "eta_conv": 0.990, "eta_linear": 0.006, "eta_relu": 0.002},
    "cifar10": {"cut": 39.9, "eta_conv": 0.976, "eta_linear": 0.016, "eta_relu": 0.003},
}


def run(
    shape: str, conv: int, linear: int, act: str, args: argparse.Namespace, baseline: dict | None
) -> dict:
    channels, size = SHAPES[shape]
    pl.seed_everything(0, verbose=False)
    samples = int(args.steps * args.batch_size / 0.7) + args.batch_size
    dm = SyntheticDataModule(
        samples=samples, in_channels=channels, image_size=size, batch_size=args.batch_size
    )
    net = SimpleCNN(
        conv_layers=conv, linear_layers=linear, activation=act, in_channels=channels, image_size=size
    )
    with tempfile.TemporaryDirectory() as d:
        kw = {"idle_w": baseline} if baseline else {"baseline_s": args.baseline_s}
        monitor = EnergyMonitor(output_dir=d, **kw)
        trainer = pl.Trainer(max_epochs=2, limit_train_batches=args.steps, limit_val_batches=0, logger=False,
                             callbacks=[monitor], enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, num_sanity_val_steps=0, accelerator="auto", devices=1)  # fmt: skip
        trainer.fit(LitClassifier(net), datamodule=dm)
        second = next(w for w in read_windows(d) if w.stage == "train" and w.epoch == 1)
        measured_baseline = read_summary(d).get("idle_baseline")
    return {
        "shape": shape,
        "conv_layers": conv,
        "linear_layers": linear,
        "activation": act,
        "energy_j": second.energy_j,
        "dynamic_j": second.dynamic_j if second.dynamic_j is not None else float("nan"),
        "seconds": second.seconds,
        "watts": second.energy_j / second.seconds,
        "source": ", ".join(f"{k}={v}" for k, v in sorted(second.sources.items())),
        "baseline": measured_baseline,
    }


def main(argv: list[str] | None = None) -> dict:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=300 if cuda else 8)
    p.add_argument("--batch-size", type=int, default=128 if cuda else 64)
    p.add_argument("--baseline-s", type=float, default=2.0)
    p.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    p.add_argument("--tag", default="cuda" if cuda else "cpu", help="results are paper_rq2_gpu_<tag>.*")
    add_out_argument(p)
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    if not cuda:
        torch.set_num_threads(1)
    rows = []
    baseline = None
    for shape in args.shapes:
        for conv, linear, act in itertools.product((1, 4), (3, 7), ("relu", "none")):
            row = run(shape, conv, linear, act, args, baseline)
            rows.append(row)
            if baseline is None and row["baseline"] and row["baseline"]["watts"]:
                baseline = row["baseline"]["watts"]  # one idle measurement, reused: same devices
    df = pd.DataFrame(rows)
    lines = [
        "The study's RQ2 design on total and dynamic energy (second epoch's training energy, EnergyMonitor)",
        f"machine: {machine()}",
        f"{args.steps} steps of batch {args.batch_size} per epoch; source: {df['source'].iloc[0]}",
        f"idle baseline: {rows[0]['baseline']}",
        "",
    ]
    data: dict = {"args": vars(args), "rows": rows}
    for shape in args.shapes:
        part = df[df["shape"] == shape].drop(columns=["shape", "baseline", "source"]).reset_index(drop=True)
        lines.append(f"[{shape}-shaped data]")
        lines.append(part.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        study = STUDY[shape]
        for response in ("energy_j", "dynamic_j"):
            if part[response].isna().all():
                lines.append(f"  {response}: no idle baseline, not computed")
                continue
            eff = main_effects(
                part.rename(columns={"conv_layers": "conv", "linear_layers": "linear"}), response
            )
            eta = dict(zip(eff["factor"], eff["eta_sq"], strict=True))
            by_conv = part.groupby("conv_layers")[response].mean()
            cut = (1 - by_conv[1] / by_conv[4]) * 100
            label = "total  " if response == "energy_j" else "dynamic"
            lines.append(
                f"  {label}: 4 -> 1 conv layers cuts {cut:.1f}% (study {study['cut']}%); eta^2 conv "
                f"{eta.get('conv', float('nan')):.3f} / linear {eta.get('linear', float('nan')):.3f} / ReLU "
                f"{eta.get('activation', float('nan')):.3f} (study {study['eta_conv']} / {study['eta_linear']} / "
                f"{study['eta_relu']})"
            )
            data[f"{shape}_{response}"] = {"cut_pct": cut, "eta": eta}
        lines.append("")
    lines.append(
        f"command: python benchmarks/paper_rq2_gpu.py --steps {args.steps} --batch-size {args.batch_size} "
        f"--baseline-s {args.baseline_s:g} --shapes {' '.join(args.shapes)} --tag {args.tag}"
    )
    save(f"paper_rq2_gpu_{args.tag}", "\n".join(lines) + "\n", data, args.out)
    return data


if __name__ == "__main__":
    main()
