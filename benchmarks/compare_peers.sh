#!/usr/bin/env bash
# Tuning ahead of the strongest peers (issue 24): `efficient` against ASHA (random search + Ray's
# ASHAScheduler), BOHB-style (Optuna's TPE + ASHA over HyperBand's brackets) and FLAML's CFO
# (cost-frugal, its cost the trial's energy), beside grid, random and bayes, each strategy with the
# same trial budget, target, epochs cap and seeds, in two parts:
#   1. architecture: the `architecture` space (depth, width, batch size, precision, epochs, lr: where
#      energy varies), SAMPLES trials x SEEDS, one trial at a time, target accuracy 0.9, as
#      compare_architecture.sh (its committed results are comparable);
#   2. paper: the paper's RQ1 on its 3-parameter space (Adam's lr, beta1, beta2), PAPER_SAMPLES
#      trials x SEEDS, PAPER_EPOCHS epochs, two trials at once, as compare_strategies.sh: best
#      accuracy per strategy, trials and joules to reach 95% of the best accuracy any strategy
#      found (compare.target_fraction=0.95, no absolute target).
# Each part writes compare.md/.csv and the plots (the Differences section: every strategy against
# grid, resolved or not by the bootstrap intervals), and peers.md: efficient against each other
# strategy (same intervals and verdicts) and the RQ1 columns (best accuracy, trials and joules to
# the target, each with its interval).
#
# Usage: [OUT=<folder>] [PART=all|architecture|paper] bash benchmarks/compare_peers.sh
#   (default: a fresh temporary folder; the committed run: OUT=benchmarks/results/compare_peers)
#   Smaller: SEEDS='[0]' SAMPLES=2 PAPER_SAMPLES=2 PAPER_EPOCHS=1 STRATEGIES='[efficient,asha,bohb,cfo]'
# Needs FLAML for cfo (pip install "lightning-green[flaml]"; the dev extra has it). Ray stays on
# loopback (benchmarks/loopback.sh).
#
# Sizing, about 30 minutes on the project's 2-core VM (energy estimated from CPU time):
#   architecture: compare_architecture.sh ran 5 strategies x 8 seeds x 10 trials in 584 s and 613 s
#     (results/compare_architecture*/command.txt): 14.6-15.3 s per 10-trial study, of which ~4 s
#     outside the Tuner (composing, results, amortised Ray start), startup_s 5.4-7.2 s, and per
#     trial ~0.6 s (train_s 0.22-0.57 s + overhead_per_trial_after_startup_s 0.14-0.27 s; bayes'
#     GP the slowest). asha and bohb stop trials like efficient (19 epochs per 10 trials there), cfo
#     starts at 1 epoch on the cheapest model: taken at ~15 s per study like the others.
#     7 strategies x 8 seeds x 15 s = 840 s (14 min).
#   paper: compare_strategies.sh (results/compare/: 24 trials, 3 epochs, 2 at once) gives per study
#     Tuner wall = (overhead_per_trial_s x 24 + train_s) / 2 slots = (0.63-0.94 x 24 + 5.5-9.7) / 2
#     = 11-16 s, + ~4 s outside it: ~16.5 s. 7 strategies x 8 seeds x 16.5 s = 924 s (15.4 min).
#   Both, with two Ray starts and imports (~25 s each): 840 + 924 + 50 = ~1815 s, about 30 minutes.
#   PART=architecture or PART=paper runs one half (~14 or ~16 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-$PWD/.venv/bin}
PART=${PART:-all}
STRATEGIES=${STRATEGIES:-[efficient,asha,bohb,cfo,grid,random,bayes]}
SEEDS=${SEEDS:-[0,1,2,3,4,5,6,7]}
SAMPLES=${SAMPLES:-10}
PAPER_SAMPLES=${PAPER_SAMPLES:-24}
PAPER_EPOCHS=${PAPER_EPOCHS:-3}
out=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/compare_peers.XXXXXX")}
case "$PART" in all | architecture | paper) ;; *) echo "PART must be all, architecture or paper; got $PART" >&2; exit 2 ;; esac

# peers.md of a finished comparison: efficient against every other strategy, and the RQ1 columns
summarise() {
  "$BIN/python" - "$1" "$2" <<'PY'
import math
import sys
from pathlib import Path

import numpy as np

from lightning_green.report.compare import compare_table, differences, load_comparison
from lightning_green.report.metrics import study_metrics
from lightning_green.report.runs import markdown_table
from lightning_green.report.stats import bootstrap_ci

run, out = Path(sys.argv[1]), Path(sys.argv[2])
settings, studies, metas, not_run = load_comparison(run)
table, info = compare_table(studies, settings["target_fraction"], settings["reference_energy_j"],
                            settings.get("target_accuracy"), metas)
target, ref = info["target_accuracy"], info["reference_point"]["energy_j"]
rows = []  # the rows differences() takes: means over seeds and their bootstrap intervals
for name, ts in studies.items():
    ms = [study_metrics(t, target, ref) for t in ts]
    reached = [m["energy_to_target_j"] for m in ms if m["energy_to_target_j"] is not None]
    acc = [m["best_accuracy"] for m in ms]
    hv = [m["hypervolume_normalised"] for m in ms]
    rows.append({
        "strategy": name, "energy_to_target_j": float(np.mean(reached)) if reached else math.nan,
        "best_accuracy": float(np.mean(acc)), "hypervolume_normalised": float(np.mean(hv)),
        "_ci": {"energy_to_target_j": bootstrap_ci(reached), "best_accuracy": bootstrap_ci(acc),
                "hypervolume_normalised": bootstrap_ci(hv), "all_reached": len(reached) == len(ms)},
    })
rq1 = ["strategy", "seeds", "best_accuracy", "best_accuracy_ci95", "trials_to_target", "trials_to_target_ci95",
       "energy_to_target_j", "energy_to_target_ci95", "reached_target", "total_energy_j"]
shown = table[[c for c in rq1 if c in table]].astype(object)
for c in ("trials_to_target", "energy_to_target_j"):  # NaN: no seed reached the target
    shown[c] = shown[c].where(table[c].notna(), "never")
how = "set by tune.target_accuracy" if info["target_is_absolute"] else (
    f"{info['target_fraction']:.0%} of the best accuracy any strategy found, {info['best_accuracy_any']:.4f}")
text = [
    f"# {run.name}: efficient and its peers", "",
    f"Target accuracy {target:.4f} ({how}). Means over seeds with bootstrap 95% intervals; trials and "
    "joules to the target over the seeds that reached it (reached_target says how many).", "",
    markdown_table(shown),
    "", "## efficient against each other strategy", "",
    *[f"- {d}" for d in (differences(rows, reference="efficient") if "efficient" in studies else [])],
    *(["", f"Not run: {', '.join(not_run)}"] if not_run else []),
]
(out / "peers.md").write_text("\n".join(text) + "\n")
print("\n".join(text))
PY
}

# run_part NAME OVERRIDES...: one comparison into $out/NAME
run_part() {
  local name=$1
  shift
  local run
  run=$(mktemp -d)/compare_$name
  local args=("compare.strategies=$STRATEGIES" "compare.seeds=$SEEDS" "$@" energy.rapl_root=/nonexistent-powercap "hydra.run.dir=$run")
  local start
  start=$(date +%s)
  OMP_NUM_THREADS=1 bash benchmarks/loopback.sh "$BIN/lightning-green" compare "${args[@]}"
  local took=$(($(date +%s) - start))
  mkdir -p "$out/$name"
  cp "$run"/compare.md "$run"/compare.csv "$run"/*.png "$out/$name"/
  for s in $(echo "$STRATEGIES" | tr -d '[]' | tr ',' ' '); do
    cp "$run/$s/seed0/trials.csv" "$out/$name/trials_${s}_seed0.csv" 2>/dev/null || true
  done
  echo "OMP_NUM_THREADS=1 lightning-green compare ${args[*]}  # $took s on $(nproc) cores" >"$out/$name/command.txt"
  summarise "$run" "$out/$name"
  echo "$name: $took s"
}

start=$(date +%s)
if [ "$PART" != paper ]; then
  run_part architecture tune/space=architecture "tune.num_samples=$SAMPLES" tune.target_accuracy=0.9 tune.max_concurrent=1
fi
if [ "$PART" != architecture ]; then
  run_part paper tune/space=paper "tune.num_samples=$PAPER_SAMPLES" "trainer.max_epochs=$PAPER_EPOCHS" compare.target_fraction=0.95
fi
echo "compare_peers.sh: $(($(date +%s) - start)) s in all; written to $out"
