#!/usr/bin/env bash
# Energy-aware tuning where energy varies: every strategy (grid, random, bayes, multi, efficient)
# on the `architecture` space (depth, width, batch size, precision, epochs, learning rate), the
# same trial budget, 8 seeds, on the embedded digits data; target accuracy 0.9 for every strategy;
# one trial at a time (tune.max_concurrent=1), so that every strategy decides with all it has seen.
# Usage: bash benchmarks/compare_architecture.sh   (writes benchmarks/results/compare_architecture/,
# or OUT=<folder>)
# On this machine it runs inside a private network namespace so that Ray stays on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-$PWD/.venv/bin}
SAMPLES=${SAMPLES:-10}
SEEDS=${SEEDS:-[0,1,2,3,4,5,6,7]}
run=$(mktemp -d)/compare
args="tune/space=architecture tune.num_samples=$SAMPLES compare.seeds=$SEEDS tune.target_accuracy=0.9 tune.max_concurrent=1 energy.rapl_root=/nonexistent-powercap hydra.run.dir=$run"
start=$(date +%s)
if unshare -n true 2>/dev/null; then
  unshare -n bash -c "ip link set lo up && OMP_NUM_THREADS=1 '$BIN/lightning-green' compare $args"
else
  OMP_NUM_THREADS=1 "$BIN/lightning-green" compare $args
fi
out=${OUT:-benchmarks/results/compare_architecture}
mkdir -p "$out"
cp "$run"/compare.md "$run"/compare.csv "$run"/*.png "$out"/
for s in grid random bayes multi efficient; do cp "$run/$s/seed0/trials.csv" "$out/trials_${s}_seed0.csv"; done
echo "OMP_NUM_THREADS=1 lightning-green compare $args  # $(( $(date +%s) - start )) s on $(nproc) cores" > "$out/command.txt"
cat "$out/compare.md"
