#!/usr/bin/env bash
# The GPU validation suite in one command: benchmarks/gpu_suite.py says what each part proves, its
# target, and how the sizes were chosen (about 8 minutes on an H200).
#
# On the lent GPU machine, through the device tool's `run` (one call, in the repository root):
#
#   run(command="set -o pipefail; bash benchmarks/gpu_suite.sh --archive $OUT/gpu_suite.tar.gz 2>&1 | tee $OUT/log.txt",
#       timeout_s=600)
#
# Nothing to install or carry there: the image has PyTorch, Lightning, nvidia-ml-py, pandas and
# matplotlib, this script puts the checkout on PYTHONPATH, and nothing the suite runs imports Hydra,
# Ray or Zeus (summary.json's imported_but_absent_on_gpu_machine says so). $OUT comes back with
# four files (the tool returns at most 8): gpu_suite.tar.gz (the whole results folder, rewritten
# after every part, so a run cut short still returns what finished), summary.txt, summary.json and
# log.txt. To commit them, here:
#
#   mkdir -p benchmarks/results/gpu && tar xzf <files_at>/gpu_suite.tar.gz -C benchmarks/results/gpu
#
# which makes benchmarks/results/gpu/<date>-<time>_<gpu>/ (e.g. 20261203-101500_nvidia-h200).
#
# Elsewhere: bash benchmarks/gpu_suite.sh [--out DIR] [--budget-s 480] [--parts 6,3,1] [--dry-run]
# (default: a fresh temporary folder). If the suite process dies or is stopped inside a part (a
# crash, a hang outside Python), that part is recorded as failed and the run resumes with the rest.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
args=("$@")
out=""
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
    --out) out=${args[i + 1]:-} ;;
    --out=*) out=${args[i]#--out=} ;;
  esac
done
if [ -z "$out" ]; then
  out=$(mktemp -d "${TMPDIR:-/tmp}/gpu_suite.XXXXXX")
  args+=(--out "$out")
fi
"$PY" benchmarks/gpu_suite.py "${args[@]}"
rc=$?
# 75: stopped by its watchdog inside a part; 128+N: killed by signal N (a crash). Not: 1 or 2 (a usage error)
for _ in 1 2; do
  if { [ "$rc" -ne 75 ] && [ "$rc" -lt 128 ]; } || [ ! -f "$out/summary.json" ]; then break; fi
  echo "gpu_suite: the suite process ended with $rc inside a part; resuming with the parts left" >&2
  "$PY" benchmarks/gpu_suite.py "${args[@]}" --resume
  rc=$?
done
exit "$rc"
