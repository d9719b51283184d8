"""The benchmark matrix as a pytest-benchmark suite: one group per backend/precision/batch, the
FP32 eager reference timed in the same session, and ``extra_info`` carrying the speedup against it
and the engine's agreement (from its build check).

Run: .venv/bin/python -m pytest benchmarks/test_matrix.py --benchmark-json out.json
Engines are built once per session (lazily); engines this host cannot build are skipped with the
reason `rexnet-deploy matrix` gives.
"""

from __future__ import annotations

import pytest

from rexnet_deploy.matrix import skip_reason

from .conftest import HAVE_SHARED, batch_of, build_engine

ENGINES = ["torchscript/fp32", "openvino/fp32", "openvino/fp16", "openvino/int8", "onnxruntime/fp32",
           "onnxruntime/int8", "tensorrt/fp16"]
BATCHES = [1, 8, 32]


@pytest.fixture(scope="session")
def engines(tmp_path_factory, weights_arg, calib_source):
    built: dict[str, object] = {}

    def get(key: str):
        if key not in built:
            backend, precision = key.split("/")
            reason = skip_reason(backend, precision, calib=str(calib_source))
            if reason:
                pytest.skip(f"{key}: {reason}")
            int8 = {"calib": calib_source, "calib_size": 300} if precision == "int8" else {}
            gate = None if HAVE_SHARED or precision != "int8" else {"top1_agreement": 0.0}
            built[key] = build_engine(tmp_path_factory.mktemp("bench") / key.replace("/", "-"), backend, precision,
                                      weights_arg, check_options={"synthetic": 8, "gate": gate} if not int8
                                      else {"gate": gate}, **int8)
        return built[key]

    yield get
    for engine in built.values():
        engine.close()


@pytest.fixture(scope="session")
def reference_p50() -> dict:
    return {}


@pytest.mark.parametrize("batch", BATCHES)
def test_reference(benchmark, batch, reference, reference_p50):
    benchmark.group = f"batch {batch}"
    x = batch_of(batch)
    reference(x)
    benchmark.pedantic(reference, args=(x,), rounds=max(3, 24 // batch), warmup_rounds=1)
    reference_p50[batch] = benchmark.stats.stats.median
    benchmark.extra_info.update({"engine": "torch eager fp32 (reference)", "batch": batch})


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("key", ENGINES)
def test_engine(benchmark, key, batch, engines, reference_p50):
    engine = engines(key)
    benchmark.group = f"batch {batch}"
    x = batch_of(batch)
    engine(x)
    benchmark.pedantic(engine, args=(x,), rounds=max(5, 48 // batch), warmup_rounds=2)
    metrics = (engine.manifest.reports.get("check") or {}).get("metrics", {})
    benchmark.extra_info.update({"engine": key, "batch": batch,
                                 "top1_agreement": metrics.get("top1_agreement"),
                                 "cosine_min": metrics.get("cosine_min")})
    if batch in reference_p50:
        speedup = reference_p50[batch] / benchmark.stats.stats.median
        benchmark.extra_info["speedup_vs_eager"] = speedup
        assert speedup > 0.5, f"{key} at batch {batch} is {speedup:.2f}x the eager reference"
