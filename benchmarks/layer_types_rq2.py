"""The paper's architecture finding, per layer type: profile its simple CNN in the 2x2x2
design (conv layers {1, 4} x linear layers {3, 7} x ReLU {on, off}) on the embedded digits data
with `lightning-green profile`, and tabulate each layer type's share of the step energy.

Usage: python benchmarks/layer_types_rq2.py [--out DIR]
Writes layer_types_rq2.md / .csv / _c4_l7_relu.png into ``--out`` (default: a fresh temporary folder).
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
from common import add_out_argument, machine, out_dir

from lightning_green.report.runs import markdown_table

CLI = str(Path(sys.executable).with_name("lightning-green"))
ARGS = [
    "trainer.max_epochs=3",
    "profiler.warmup_steps=5",
    "profiler.profile_steps=40",
    "profiler.every_n_steps=null",
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_out_argument(p)
    out = out_dir(p.parse_args().out, "layer_types_rq2")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for conv, linear, act in itertools.product((1, 4), (3, 7), ("relu", "none")):
            run = Path(tmp) / f"c{conv}_l{linear}_{act}"
            cmd = [
                CLI,
                "profile",
                f"model.conv_layers={conv}",
                f"model.linear_layers={linear}",
                f"model.activation={act}",
                *ARGS,
                f"hydra.run.dir={run}",
            ]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode:
                sys.exit(r.stderr[-3000:])
            types = pd.read_csv(run / "layer_types.csv").set_index("layer_type")
            step_j = types["joules_per_step"].sum()
            layers_j = step_j - types["joules_per_step"].get("unattributed", 0.0)
            row = {"conv_layers": conv, "linear_layers": linear, "activation": act, "step_j": step_j}
            for t in ("Conv", "Linear", "ReLU", "BatchNorm", "Pooling", "unattributed"):
                j = types["joules_per_step"].get(t, 0.0)
                row[f"{t}_share"] = j / step_j
                if t != "unattributed":
                    row[f"{t}_of_layers"] = j / layers_j
            row["source"] = pd.read_csv(run / "layers.csv")["source"].iloc[0]
            rows.append(row)
            if (conv, linear, act) == (4, 7, "relu"):
                shutil.copy(run / "layer_energy.png", out / "layer_types_rq2_c4_l7_relu.png")
    df = pd.DataFrame(rows)
    df.to_csv(out / "layer_types_rq2.csv", index=False)
    of_layers = [c for c in df.columns if c.endswith("_of_layers")]
    means = df[of_layers].mean()
    text = [
        "# Energy by layer type in the study's 2x2x2 CNN design (digits, CPU)",
        "",
        f"machine: {machine()}",
        f"command per cell: lightning-green profile model.conv_layers=C model.linear_layers=L model.activation=A {' '.join(ARGS)}",
        f"source: {df['source'].iloc[0]} (the measured step energy, from unhooked reference steps, split by each module's own synchronised time; a layer type's share includes its layers' optimizer updates)",
        "",
        markdown_table(df.round(4)),
        "",
        "Mean share of the energy the layers explain (unattributed excluded): "
        + ", ".join(f"{c.removesuffix('_of_layers')} {v:.1%}" for c, v in means.items()),
        f"Conv share of layer energy: 1 conv layer {df[df.conv_layers == 1]['Conv_of_layers'].mean():.1%}, "
        f"4 conv layers {df[df.conv_layers == 4]['Conv_of_layers'].mean():.1%}.",
    ]
    (out / "layer_types_rq2.md").write_text("\n".join(text) + "\n")
    print("\n".join(text))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
