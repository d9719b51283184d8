"""The graphs the TensorRT backend compiles, measured on ONNX Runtime CPU (the emulation) against
the FP32 reference — and, on a TensorRT GPU host, the engines' latency against the same reference.

Run: .venv/bin/python -m pytest benchmarks/test_tensorrt.py -s
Targets (issue 4), with the trained stand-in weights and real photos not used for calibration:
INT8 Q/DQ graph top-1 agreement >= 0.97 and min cosine >= 0.98; FP16 graph min cosine >= 0.9995
and top-1 agreement >= 0.995.
"""

from __future__ import annotations

import pytest

from .conftest import HAVE_SHARED, SHARED_CALIB, batch_of, build_engine

pytest.importorskip("modelopt.onnx.quantization")
needs_shared = pytest.mark.skipif(not HAVE_SHARED, reason="agreement targets need the trained stand-in weights "
                                                         "and real photos (../shared)")


@pytest.fixture(scope="session")
def trt_int8_graph(tmp_path_factory, weights_arg, calib_source):
    gate = None if HAVE_SHARED else {"top1_agreement": 0.0}
    engine = build_engine(tmp_path_factory.mktemp("bench") / "trt-int8", "tensorrt", "int8", weights_arg,
                          calib=calib_source, calib_size=300, check_options={"gate": gate})
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def trt_fp16_graph(tmp_path_factory, weights_arg):
    images = {"images": SHARED_CALIB} if HAVE_SHARED else {"synthetic": 16}
    engine = build_engine(tmp_path_factory.mktemp("bench") / "trt-fp16", "tensorrt", "fp16", weights_arg,
                          check_options=images)
    yield engine
    engine.close()


def _metrics(engine) -> dict:
    report = engine.manifest["reports"]["check"]
    print(f"\n{engine.backend}/{engine.precision} on {report['n_images']} images "
          f"(emulation: {report['engine'].get('emulation')}): {report['metrics']}")
    return report["metrics"]


@needs_shared
def test_int8_qdq_graph_agreement_target(trt_int8_graph):
    m = _metrics(trt_int8_graph)
    assert m["top1_agreement"] >= 0.97 and m["cosine_min"] >= 0.98, m


@needs_shared
def test_fp16_graph_agreement_target(trt_fp16_graph):
    m = _metrics(trt_fp16_graph)
    assert m["top1_agreement"] >= 0.995 and m["cosine_min"] >= 0.9995, m


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_gpu_engine_latency_vs_eager(benchmark, precision, reference, trt_fp16_graph, trt_int8_graph, tmp_path):
    """Batch-1 p50 of the TensorRT engine (CUDA graphs) against the FP32 eager reference, same run."""
    import shutil

    from rexnet_deploy import Engine
    from rexnet_deploy.backends import _trt

    problem = _trt.host_problem()
    if problem:
        pytest.skip(f"needs a TensorRT GPU host: {problem}")
    src = {"fp16": trt_fp16_graph, "int8": trt_int8_graph}[precision].artifact.path
    shutil.copytree(src, tmp_path / "a")
    with Engine.load(tmp_path / "a", rebuild_engine=True, cuda_graph=True) as engine:
        x = batch_of(1)
        engine(x)
        benchmark.group = "tensorrt batch 1"
        benchmark.pedantic(engine, args=(x,), rounds=200, warmup_rounds=10)
        ours = benchmark.stats.stats.median
    from rexnet_deploy.harness.bench import time_calls

    eager = sorted(time_calls(reference, x, iters=20))[10]
    benchmark.extra_info.update({"precision": precision, "speedup_vs_eager_cpu": eager / ours})
    assert ours < eager
