#!/usr/bin/env bash
# On a lent GPU machine (PyTorch, Lightning and nvidia-ml-py there; nothing to install: the package
# goes on PYTHONPATH): LayerEnergyProfiler against ablation in bf16-mixed and in fp32, NVML counters.
# Writes benchmarks/results/layer_ablation_gpu_bf16.* and layer_ablation_gpu_fp32.* (about 3 minutes each).
set -euo pipefail
cd "$(dirname "$0")"
export PYTHONPATH="$PWD/..${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv
python layer_ablation.py --device cuda --precision bf16-mixed --backend nvml --tag gpu_bf16 --repeats 3
python layer_ablation.py --device cuda --precision 32-true --backend nvml --tag gpu_fp32 --repeats 3
