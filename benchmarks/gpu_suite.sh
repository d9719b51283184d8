#!/usr/bin/env bash
# Every GPU check of the project in one bounded run (<= 8 min on one GPU): TorchScript FP16/FP32
# CUDA builds checked on photos, bench against eager PyTorch on the same GPU, first-call latency,
# a hand-timed loop, CUDA graphs, GPU-resident I/O, torch.compile as a yardstick, pt2 (AOTInductor)
# FP16/BF16 packages built here with max_autotune and replayed as CUDA graphs, TensorRT when it
# imports. Writes gpu_suite.json and gpu_suite.md to OUT_DIR (or $OUT). Exit 0: every target met;
# 1: a target failed or a section errored; 2: no CUDA GPU (or bad arguments).
#   bash benchmarks/gpu_suite.sh OUT_DIR --weights FILE --dev DIR [--calib DIR] [--budget S]
#        [--skip SECTIONS] [--pt2 fp16,bf16|none] [--no-max-autotune] [--pt2-build-cap S]
#   bash benchmarks/gpu_suite.sh OUT_DIR --dry-run     # the same code on the CPU (a smoke run)
# Relative paths are taken from the repository root (the script cd-s there). A thin wrapper: see
# `python -m benchmarks.gpu_suite --help` (run from the repository root). Uses $PYTHON, else the
# repository's .venv when there is one, else python3 (a bare GPU host: no venv, PYTHONPATH=.).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
py=${PYTHON:-}
if [[ -z $py ]]; then
  if [[ -x .venv/bin/python ]]; then py=.venv/bin/python; else py=python3; fi
fi
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
exec "$py" -m benchmarks.gpu_suite "$@"
