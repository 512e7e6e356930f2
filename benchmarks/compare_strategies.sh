#!/usr/bin/env bash
# The study's RQ1: grid, random, Bayesian and multi-objective search on the paper's search space,
# 24 trials per strategy, 3 seeds, on the embedded digits data.
# Usage: bash benchmarks/compare_strategies.sh   (writes benchmarks/results/compare/)
# On this machine it runs inside a private network namespace so that Ray stays on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-$PWD/.venv/bin}
run=$(mktemp -d)/compare
args="tune.num_samples=24 compare.seeds=[0,1,2] trainer.max_epochs=3 hydra.run.dir=$run"
if unshare -n true 2>/dev/null; then
  unshare -n bash -c "ip link set lo up && '$BIN/lightning-green' compare $args"
else
  "$BIN/lightning-green" compare $args
fi
out=benchmarks/results/compare
mkdir -p "$out"
cp "$run"/compare.md "$run"/compare.csv "$run"/*.png "$out"/
for s in grid random bayes multi efficient; do cp "$run/$s/seed0/trials.csv" "$out/trials_${s}_seed0.csv"; done
echo "lightning-green compare $args" > "$out/command.txt"
cat "$out/compare.md"
