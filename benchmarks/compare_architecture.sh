#!/usr/bin/env bash
# Energy-aware tuning where energy varies: every strategy (grid, random, bayes, multi, efficient)
# on the `architecture` space (depth, width, batch size, precision, epochs, learning rate), the
# same trial budget, 8 seeds, on the embedded digits data; target accuracy 0.9 for every strategy;
# one trial at a time (tune.max_concurrent=1), so that every strategy decides with all it has seen.
# Usage: [OUT=<folder>] bash benchmarks/compare_architecture.sh
#   (default: a fresh temporary folder; the committed run: OUT=benchmarks/results/compare_architecture)
# Ray stays on loopback (benchmarks/loopback.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-$PWD/.venv/bin}
SAMPLES=${SAMPLES:-10}
SEEDS=${SEEDS:-[0,1,2,3,4,5,6,7]}
out=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/compare_architecture.XXXXXX")}
run=$(mktemp -d)/compare
args="tune/space=architecture tune.num_samples=$SAMPLES compare.seeds=$SEEDS tune.target_accuracy=0.9 tune.max_concurrent=1 energy.rapl_root=/nonexistent-powercap hydra.run.dir=$run"
start=$(date +%s)
# shellcheck disable=SC2086  # $args is a list of overrides
OMP_NUM_THREADS=1 bash benchmarks/loopback.sh "$BIN/lightning-green" compare $args
mkdir -p "$out"
cp "$run"/compare.md "$run"/compare.csv "$run"/*.png "$out"/
for s in grid random bayes multi efficient; do cp "$run/$s/seed0/trials.csv" "$out/trials_${s}_seed0.csv"; done
echo "OMP_NUM_THREADS=1 lightning-green compare $args  # $(( $(date +%s) - start )) s on $(nproc) cores" > "$out/command.txt"
cat "$out/compare.md"
echo "written to $out"
