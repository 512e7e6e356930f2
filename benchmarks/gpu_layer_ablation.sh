#!/usr/bin/env bash
# On a lent GPU machine (PyTorch, Lightning and nvidia-ml-py there; nothing to install: the package
# goes on PYTHONPATH): LayerEnergyProfiler against ablation in bf16-mixed and in fp32, NVML counters.
# Writes layer_ablation_gpu_bf16.* and layer_ablation_gpu_fp32.* (about 3 minutes each) into
# OUT (default: a fresh temporary folder). benchmarks/gpu_suite.sh runs the same, smaller, with the
# rest of the GPU checks.
# Usage: [OUT=<folder>] bash benchmarks/gpu_layer_ablation.sh
set -euo pipefail
cd "$(dirname "$0")"
export PYTHONPATH="$PWD/..${PYTHONPATH:+:$PYTHONPATH}"
out=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/gpu_layer_ablation.XXXXXX")}
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv
python layer_ablation.py --device cuda --precision bf16-mixed --backend nvml --tag gpu_bf16 --repeats 3 --out "$out"
python layer_ablation.py --device cuda --precision 32-true --backend nvml --tag gpu_fp32 --repeats 3 --out "$out"
