"""Concurrent trainings on one CPU package: is every joule charged once, to the job that spent it?

An emulated RAPL package (lightning_green.testing.EmulatedRapl: idle 10 W + 15 W per busy core of
this machine's real CPU use, updated every 10 ms) is read by trainings with
`EnergyMonitor(backend="rapl")`, threads pinned to 1:

1. each of two jobs (A: conv_layers=1, B: conv_layers=3) alone, with attribution="auto";
2. both at once, with attribution="auto" and with attribution="device" (the whole package each).

Each job measures the default idle baseline at set-up (2 s: the idle watts, and the node's
background CPU that the jobs' split leaves out); the jobs start training together once both have
imported and set up, as trials started by one scheduler would.

Printed: the jobs' energies together over the node counter across the span of their windows
(target [0.90, 1.05]; "device" shows the double counting), each job's attributed dynamic energy
under contention against its dynamic energy alone (target within 15%), and a lone job's attributed
figure against the whole package over its windows (target within 1%).

Usage: python benchmarks/shared_node.py [--epochs 40] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS, machine

from lightning_green.records import read_summary, read_windows
from lightning_green.testing import EmulatedRapl

JOB = """
import os, sys, time, torch
torch.set_num_threads(1)
from lightning import Trainer
from lightning_green import EnergyMonitor
from lightning_green.data import DigitsDataModule
from lightning_green.models import LitClassifier, SimpleCNN
root, out, conv, epochs, attribution = sys.argv[1:6]
# The default idle baseline (2 s, measured at set-up): it gives the idle watts and the node's background CPU.
monitor = EnergyMonitor(backend="rapl", rapl_root=root, output_dir=out, attribution=attribution, sync_reads=True)
trainer = Trainer(max_epochs=int(epochs), callbacks=[monitor], logger=False, enable_progress_bar=False,
                  enable_checkpointing=False, enable_model_summary=False, num_sanity_val_steps=0)
open(out + ".ready", "w").close()  # imports and set-up done: wait to start training together
while not os.path.exists(os.path.join(os.path.dirname(out), "go")):
    time.sleep(0.01)
cpu0 = time.process_time()
trainer.fit(LitClassifier(SimpleCNN(conv_layers=int(conv))), datamodule=DigitsDataModule(batch_size=16, seed=0))
open(out + ".cpu", "w").write(str(time.process_time() - cpu0))  # the fit's CPU seconds: what the package charges
"""


def start(root: Path, out: Path, conv: int, epochs: int, attribution: str) -> subprocess.Popen:
    args = [sys.executable, "-c", JOB, str(root), str(out), str(conv), str(epochs), attribution]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def release(work: Path, procs: dict[str, subprocess.Popen], outs: dict[str, Path]) -> None:
    """Start the jobs' training at once, after every one has imported and set up (a job's imports
    would otherwise run during another's windows, and be charged to nobody's window)."""
    deadline = time.monotonic() + 300
    while not all(Path(str(o) + ".ready").exists() for o in outs.values()):
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs.values()):
            raise SystemExit(
                "a job did not start: "
                + "; ".join(p.stderr.read()[-2000:] for p in procs.values() if p.poll() is not None)
            )
        time.sleep(0.05)
    (work / "go").touch()


def finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"a job failed:\n{err[-3000:]}")


def figures(out: Path, rapl: EmulatedRapl) -> dict:
    windows = read_windows(out)
    summary = read_summary(out)
    start, end = min(w.start_time for w in windows), max(w.end_time for w in windows)
    return {
        "energy_j": summary["total_j"],
        "dynamic_j": summary["total_dynamic_j"],
        "node_j_recorded": summary["total_node_j"],
        "start": start,
        "end": end,
        "windows": [(w.start_time, w.end_time) for w in windows],
        "seconds": sum(w.seconds for w in windows),
        "share_mean": summary["total_j"] / summary["total_node_j"] if summary["total_node_j"] else None,
        "attribution": windows[0].attribution,
        "baseline": summary["idle_baseline"],
        "fit_cpu_s": float(Path(str(out) + ".cpu").read_text()),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--out", type=Path, default=None, help="results folder (default: a fresh temporary one)")
    args = ap.parse_args()
    out_dir = args.out or Path(tempfile.mkdtemp(prefix="shared_node_"))
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="shared_node_work_"))
    jobs = {"A": 1, "B": 3}
    res: dict = {
        "machine": machine(),
        "epochs": args.epochs,
        "jobs": {k: f"SimpleCNN(conv_layers={v})" for k, v in jobs.items()},
    }
    with EmulatedRapl(work / "powercap", idle_w=10.0, watts_per_core=15.0, history=True) as rapl:
        time.sleep(3.0)
        t0 = time.time()
        time.sleep(3.0)
        idle_w = rapl.joules_between(t0, time.time()) / 3.0
        res["idle_w_measured"] = idle_w
        alone = {}
        for name, conv in jobs.items():
            out = work / f"alone_{name}"
            (work / "go").unlink(missing_ok=True)
            proc = start(rapl.root, out, conv, args.epochs, "auto")
            release(work, {name: proc}, {name: out})
            finish(proc)
            alone[name] = figures(out, rapl)
        together = {}
        for attribution in ("auto", "device"):
            (work / "go").unlink(missing_ok=True)
            outs = {n: work / f"{attribution}_{n}" for n in jobs}
            procs = {n: start(rapl.root, outs[n], c, args.epochs, attribution) for n, c in jobs.items()}
            release(work, procs, outs)
            for p in procs.values():
                finish(p)
            together[attribution] = {n: figures(work / f"{attribution}_{n}", rapl) for n in jobs}
    lines = [
        f"Shared CPU package (emulated RAPL: idle 10 W + 15 W per busy core, measured idle {idle_w:.2f} W), {args.epochs} epochs, 1 thread each",
        "",
    ]
    lines.append(
        "Lone job: attributed energy / the whole-package figure of the same windows (attribution=device's; target >= 0.99)"
    )
    for n, f in alone.items():
        ratio = f["energy_j"] / f["node_j_recorded"]
        res.setdefault("lone_ratio", {})[n] = ratio
        lines.append(f"  {n}: {f['energy_j']:.1f} J of {f['node_j_recorded']:.1f} J -> {ratio:.4f}")
    lines.append("")
    lines.append(
        "Both at once: jobs' energies together / node counter over the span of their windows (target [0.90, 1.05])"
    )
    for attribution, figs in together.items():
        claimed = sum(f["energy_j"] for f in figs.values())
        node = rapl.joules_between(
            min(f["start"] for f in figs.values()), max(f["end"] for f in figs.values())
        )
        union = rapl.joules_over([w for f in figs.values() for w in f["windows"]])
        res.setdefault("together_ratio", {})[attribution] = claimed / node
        res.setdefault("together_ratio_union", {})[attribution] = claimed / union
        lines.append(
            f"  attribution={attribution}: {claimed:.1f} J claimed / {node:.1f} J node = {claimed / node:.3f} "
            f"(over the union of their windows only: {claimed / union:.3f})"
        )
    lines.append("")
    lines.append("Attributed dynamic energy under contention vs the same job alone (target within 15%)")
    for n in jobs:
        a, c = alone[n]["dynamic_j"], together["auto"][n]["dynamic_j"]
        err = c / a - 1
        res.setdefault("dynamic_error", {})[n] = err
        cpu = together["auto"][n]["fit_cpu_s"] / alone[n]["fit_cpu_s"] - 1
        res.setdefault("fit_cpu_change", {})[n] = cpu
        lines.append(
            f"  {n}: {c:.1f} J together vs {a:.1f} J alone -> {err:+.1%} "
            f"(the job's own CPU seconds for the same fit: {cpu:+.1%}, which the emulated package charges)"
        )
    res["alone"], res["together"] = alone, together
    text = "\n".join(lines) + "\n"
    (out_dir / "shared_node.txt").write_text(text)
    (out_dir / "shared_node.json").write_text(json.dumps(res, indent=2, default=str))
    print(text)
    print(f"written to {out_dir} (commit by passing --out {RESULTS / 'shared_node'})")


if __name__ == "__main__":
    main()
