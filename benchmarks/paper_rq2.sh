#!/usr/bin/env bash
# The study's RQ2 design as a Hydra multirun on the embedded digits data, then the report.
# Usage: bash benchmarks/paper_rq2.sh   (writes benchmarks/results/paper_rq2/)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
sweep=$(mktemp -d)/paper_rq2
"$BIN/lightning-green" train +experiment=paper_rq2 trainer.max_epochs=10 hydra.sweep.dir="$sweep"
"$BIN/lightning-green" report "$sweep"
out=benchmarks/results/paper_rq2
mkdir -p "$out"
cp "$sweep"/summary.md "$sweep"/summary.csv "$sweep"/main_effects.csv "$sweep"/*.png "$out"/
echo "lightning-green train +experiment=paper_rq2 trainer.max_epochs=10 && lightning-green report <sweep dir>" > "$out/command.txt"
cat "$out/summary.md"
