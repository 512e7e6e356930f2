"""Run-to-run spread of the CPU-time estimate: the same `lightning-green train` several times,
threads pinned to 1 and at PyTorch's default, interleaved (same seed, same data, same accuracy).

Usage: python benchmarks/estimate_spread.py [--repeats 5] [--epochs 5] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import add_out_argument, machine, save

CLI = str(Path(sys.executable).parent / "lightning-green")


def run(threads: str, epochs: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        args = [CLI, "train", f"threads={threads}", f"trainer.max_epochs={epochs}", "energy.rapl_root=/nonexistent-powercap",
                f"hydra.run.dir={d}"]  # fmt: skip
        subprocess.run(args, check=True, capture_output=True, text=True)
        r = json.loads((Path(d) / "run.json").read_text())
        return {"energy_j": r["energy_j"], "test_acc": r["test_acc"], "seconds": r["seconds"], **r["machine"]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--epochs", type=int, default=5)
    add_out_argument(p)
    args = p.parse_args()
    settings = ["1", "null"]
    results: dict[str, list[dict]] = {s: [] for s in settings}
    for i in range(args.repeats):
        for s in settings if i % 2 == 0 else settings[::-1]:
            results[s].append(run(s, args.epochs))
    lines = [
        f"Run-to-run spread of the CPU-time estimate: `lightning-green train` (digits, default CNN, {args.epochs} "
        f"epochs), {args.repeats} interleaved runs per thread setting; machine: {machine()}",
        "",
    ]
    for s in settings:
        e = [r["energy_j"] for r in results[s]]
        acc = sorted({round(r["test_acc"], 4) for r in results[s]})
        cv = statistics.stdev(e) / statistics.mean(e) if len(e) > 1 else 0.0
        lines.append(
            f"threads={s} ({results[s][0]['threads']} thread(s)): energy median {statistics.median(e):.2f} J, "
            f"min {min(e):.2f}, max {max(e):.2f} (max/min {max(e) / min(e):.2f}x, CV {cv:.1%}); test accuracy {acc}; "
            f"other load at the end {[round(r['other_load'] or 0, 2) for r in results[s]]}"
        )
    lines.append(
        f"command: python benchmarks/estimate_spread.py --repeats {args.repeats} --epochs {args.epochs}"
    )
    save("estimate_spread", "\n".join(lines) + "\n", {"args": vars(args), "results": results}, args.out)


if __name__ == "__main__":
    main()
