"""TorchScript engine vs FP32 eager reference, per batch size, in one session.

Run: .venv/bin/python -m pytest benchmarks/ --benchmark-json out.json
The ratio target (TorchScript not slower than eager) is checked from the same session's numbers.
"""

from __future__ import annotations

import pytest

from .conftest import batch_of

BATCHES = (1, 32)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("runner", ["reference", "engine"])
def test_latency(benchmark, runner, batch, ts_engine, reference, ratios):
    benchmark.group = f"torchscript-fp32 batch {batch}"
    fn = ts_engine if runner == "engine" else reference
    x = batch_of(batch)
    fn(x)  # warm-up
    benchmark.pedantic(fn, args=(x,), rounds=5 if batch > 8 else 20, warmup_rounds=1)
    ratios[(batch, runner)] = benchmark.stats.stats.median
    benchmark.extra_info.update({"backend": "torchscript", "precision": "fp32", "batch": batch, "runner": runner})
    other = ratios.get((batch, "reference"))
    if runner == "engine" and other:
        benchmark.extra_info["speedup_vs_eager"] = other / ratios[(batch, "engine")]


@pytest.mark.parametrize("batch", BATCHES)
def test_speedup_target(batch, ratios):
    """Target: the TorchScript engine is at least as fast as eager (10% noise allowance)."""
    if (batch, "engine") not in ratios or (batch, "reference") not in ratios:
        pytest.skip("latency benchmarks did not run (e.g. --benchmark-disable or -k)")
    speedup = ratios[(batch, "reference")] / ratios[(batch, "engine")]
    assert speedup >= 0.9, f"TorchScript is {speedup:.2f}× eager at batch {batch}"
