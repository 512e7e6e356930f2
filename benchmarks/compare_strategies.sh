#!/usr/bin/env bash
# The paper's RQ1: grid, random, Bayesian and multi-objective search on its search space,
# 24 trials per strategy, 3 seeds, on the embedded digits data.
# Usage: [OUT=<folder>] bash benchmarks/compare_strategies.sh
#   (default: a fresh temporary folder; the committed run: OUT=benchmarks/results/compare)
# Ray stays on loopback (benchmarks/loopback.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-$PWD/.venv/bin}
out=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/compare_strategies.XXXXXX")}
run=$(mktemp -d)/compare
args="tune.num_samples=24 compare.seeds=[0,1,2] trainer.max_epochs=3 hydra.run.dir=$run"
# shellcheck disable=SC2086  # $args is a list of overrides
bash benchmarks/loopback.sh "$BIN/lightning-green" compare $args
mkdir -p "$out"
cp "$run"/compare.md "$run"/compare.csv "$run"/*.png "$out"/
for s in grid random bayes multi efficient; do cp "$run/$s/seed0/trials.csv" "$out/trials_${s}_seed0.csv"; done
echo "lightning-green compare $args" > "$out/command.txt"
cat "$out/compare.md"
echo "written to $out"
