#!/usr/bin/env bash
# CI's performance-regression gate (a few minutes): build small engines from seeded random weights,
# then `rexnet-deploy bench --baseline` each against benchmarks/baseline.json. Speedups over the
# FP32 eager reference are measured in the same run (medians of --repeat runs), so the gate holds
# across machines of this kind; exit 1 on a regression, 2 on a baseline that does not fit.
#   bash benchmarks/ci_gate.sh           # the gate
#   bash benchmarks/ci_gate.sh --save    # re-measure and rewrite the baseline (commit it)
# GATE_THREADS=1 runs the engines on one thread: a planted slowdown the gate must catch.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cli=.venv/bin/rexnet-deploy
baseline=${BASELINE:-benchmarks/baseline.json}
max_regression=${MAX_REGRESSION:-0.15}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
status=0
for engine in openvino/fp32 onnxruntime/fp32; do
  backend=${engine%/*} precision=${engine#*/}
  out="$work/$backend-$precision"
  "$cli" build --backend "$backend" --precision "$precision" --weights random --seed 0 --batch 1:8 \
    --synthetic 8 --out "$out" -q >/dev/null
  if [[ ${1:-} == --save ]]; then
    "$cli" bench "$out" --batch 1,8 --seconds 1.5 --repeat 5 --save-baseline "$baseline" --no-save -q
  else
    # every engine is gated even when one fails; the exit status is the worst one
    "$cli" bench "$out" --batch 1,8 --seconds 1.5 --repeat 3 --baseline "$baseline" \
      --max-regression "$max_regression" --no-save -q ${GATE_THREADS:+--threads "$GATE_THREADS"} || {
      rc=$?; (( rc > status )) && status=$rc; }
  fi
done
exit $status
