#!/usr/bin/env bash
# Wall time a tuning study spends outside training: its fixed start-up (Ray, the first worker's
# imports) and what each further trial adds, with Ray's own per-trial loggers on and off, and for
# the efficient strategy (which also counts each candidate model's FLOPs). 10 one-at-a-time
# digits trials per study, 2 repeats each.
# Usage: [OUT=<folder>] bash benchmarks/tune_overhead.sh   (writes <folder>/tune_overhead.txt;
#   default: a fresh temporary folder; the committed run: OUT=benchmarks/results)
# Ray stays on loopback (benchmarks/loopback.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-$PWD/.venv/bin}
out=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/tune_overhead.XXXXXX")}
mkdir -p "$out"
tmp=$(mktemp -d)
common="tune.num_samples=10 tune.max_concurrent=1 energy.rapl_root=/nonexistent-powercap"
run() {  # name, overrides
  for rep in 1 2; do
    dir="$tmp/study$RANDOM-$rep"
    # shellcheck disable=SC2086  # overrides are a list
    OMP_NUM_THREADS=1 bash benchmarks/loopback.sh "$BIN/lightning-green" tune $2 $common hydra.run.dir="$dir" > "$tmp/log.txt" 2>&1
    "$BIN/python" - "$1" "$dir/study.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[2]))
print(f"{sys.argv[1]:<28} wall {m['wall_s']:5.1f} s  startup {m['startup_s']:4.2f} s  "
      f"per trial after start-up {m['overhead_per_trial_after_startup_s']:.3f} s  "
      f"per trial amortised {m['overhead_per_trial_s']:.3f} s")
PY
  done
}
{
  echo "# bash benchmarks/tune_overhead.sh  ($(nproc) cores, $(date -u +%F))"
  run "grid, Ray loggers on" "tune/strategy=grid trainer.max_epochs=1"
  run "grid, Ray loggers off" "tune/strategy=grid trainer.max_epochs=1 tune.ray_loggers=false"
  run "efficient, architecture" "tune/strategy=efficient tune/space=architecture tune.target_accuracy=0.9"
} | tee "$out/tune_overhead.txt"
echo "written to $out/tune_overhead.txt"
