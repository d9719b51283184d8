"""ONNX Runtime FP32 / INT8 engines vs the FP32 eager reference, in one session.

Run: .venv/bin/python -m pytest benchmarks/test_onnxruntime.py --benchmark-json out.json
Targets (issue 4): ONNX FP32 vs PyTorch max abs error <= 1e-4 and top-1 agreement 1.0; INT8 on
held-out real photos (stand-in weights) top-1 agreement >= 0.97 and min cosine >= 0.98; INT8
batch-1 p50 <= 1/2 of the eager FP32 reference's, same run; the default INT8 build (fused-qad) in
<= 180 s on 2 idle cores (issue 20).
"""

from __future__ import annotations

import time

import pytest

from .conftest import HAVE_SHARED, batch_of, build_engine

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="session")
def ort_fp32(tmp_path_factory, weights_arg):
    engine = build_engine(tmp_path_factory.mktemp("bench") / "ort-fp32", "onnxruntime", "fp32", weights_arg,
                          check_options={"synthetic": 8})
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def int8_build(tmp_path_factory, weights_arg, calib_source):
    """The default INT8 build (fused-qad), timed whole."""
    t0 = time.perf_counter()
    gate = None if HAVE_SHARED else {"top1_agreement": 0.0}
    engine = build_engine(tmp_path_factory.mktemp("bench") / "ort-int8", "onnxruntime", "int8", weights_arg, calib=calib_source,
                          calib_size=300, check_options={"gate": gate})
    seconds = time.perf_counter() - t0
    yield engine, seconds
    engine.close()


@pytest.fixture(scope="session")
def ort_int8(int8_build):
    return int8_build[0]


def test_int8_build_time_target(int8_build):
    _, seconds = int8_build
    assert seconds <= 180, f"INT8 build took {seconds:.0f} s (target <= 180 s)"


@pytest.fixture(scope="session")
def ort_times() -> dict:
    return {}


@pytest.mark.parametrize("runner", ["reference", "ort-fp32", "ort-int8"])
def test_latency_batch1(benchmark, runner, reference, ort_fp32, ort_int8, ort_times):
    benchmark.group = "onnxruntime batch 1"
    fn = {"reference": reference, "ort-fp32": ort_fp32, "ort-int8": ort_int8}[runner]
    x = batch_of(1)
    fn(x)
    benchmark.pedantic(fn, args=(x,), rounds=30, warmup_rounds=2)
    ort_times[runner] = benchmark.stats.stats.median
    benchmark.extra_info.update({"runner": runner, "batch": 1})
    if runner != "reference" and "reference" in ort_times:
        benchmark.extra_info["speedup_vs_eager"] = ort_times["reference"] / ort_times[runner]


def test_int8_batch1_half_of_eager(ort_times):
    if {"reference", "ort-int8"} - set(ort_times):
        pytest.skip("latency benchmarks did not run")
    ratio = ort_times["ort-int8"] / ort_times["reference"]
    assert ratio <= 0.5, f"ONNX Runtime INT8 batch-1 p50 is {ratio:.2f}x eager FP32 (target <= 0.5x)"


def test_fp32_graph_equals_pytorch(ort_fp32):
    assert ort_fp32.manifest.backend_config["export"]["max_abs_error_vs_torch"] <= 1e-4
    assert ort_fp32.manifest.reports["check"]["metrics"]["top1_agreement"] == 1.0


@pytest.mark.skipif(not HAVE_SHARED, reason="agreement targets need the trained stand-in weights and real photos (../shared)")
def test_int8_agreement_target(ort_int8):
    m = ort_int8.manifest.reports["check"]["metrics"]
    assert m["top1_agreement"] >= 0.97 and m["cosine_min"] >= 0.98, m
