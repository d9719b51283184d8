"""The graphs the TensorRT backend compiles, measured on ONNX Runtime CPU (the emulation) against
the FP32 reference — and, on a TensorRT GPU host, the engines' latency against PyTorch eager on
the same GPU (FP32, and FP16 autocast), timed the same way: numpy in and out, synchronised.

Run: .venv/bin/python -m pytest benchmarks/test_tensorrt.py -s
Targets (issue 4), with the trained stand-in weights and real photos not used for calibration:
INT8 Q/DQ graph top-1 agreement >= 0.97 and min cosine >= 0.98; FP16 graph min cosine >= 0.9995
and top-1 agreement >= 0.995.
"""

from __future__ import annotations

import numpy as np
import pytest

from rexnet_deploy.backends import _trt

from .conftest import HAVE_SHARED, SHARED_CALIB, batch_of, build_engine

pytest.importorskip("modelopt.onnx.quantization")
needs_shared = pytest.mark.skipif(not HAVE_SHARED, reason="agreement targets need the trained stand-in weights "
                                                         "and real photos (../shared)")
HOST_PROBLEM = _trt.host_problem()


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
    report = engine.manifest.reports["check"]
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


def _eager_on_gpu(reference, *, fp16: bool):
    """The reference's PyTorch module on the GPU, called like an engine: numpy in, numpy out (the
    copies included, so the call ends synchronised); ``fp16``: under FP16 autocast."""
    import copy

    import torch

    from rexnet_deploy.outputs import output_list

    module = copy.deepcopy(reference.module).to("cuda").eval()

    def run(batch: np.ndarray) -> list[np.ndarray]:
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=fp16):
            out = module(torch.from_numpy(batch).to("cuda"))
        return [o.float().cpu().numpy() for o in output_list(out)]

    return run


@pytest.mark.gpu
@pytest.mark.skipif(HOST_PROBLEM is not None, reason=f"needs a TensorRT GPU host: {HOST_PROBLEM}")
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_gpu_engine_latency_vs_eager_on_the_same_gpu(benchmark, precision, reference, trt_fp16_graph, trt_int8_graph,
                                                     tmp_path):
    """Batch-1 p50 of the TensorRT engine (CUDA graphs) against PyTorch eager FP32 and FP16 autocast
    on the same GPU, in the same run."""
    import shutil

    from rexnet_deploy import Engine
    from rexnet_deploy.harness.bench import time_calls

    src = {"fp16": trt_fp16_graph, "int8": trt_int8_graph}[precision].artifact.path
    shutil.copytree(src, tmp_path / "a")
    x = batch_of(1)
    with Engine.load(tmp_path / "a", rebuild_engine=True, cuda_graph=True) as engine:
        engine(x)
        benchmark.group = "tensorrt batch 1"
        benchmark.pedantic(engine, args=(x,), rounds=200, warmup_rounds=10)
        ours = benchmark.stats.stats.median
    eager = {}
    for name, fp16 in (("fp32", False), ("fp16_autocast", True)):
        run = _eager_on_gpu(reference, fp16=fp16)
        time_calls(run, x, iters=10)  # warm-up: cuDNN's algorithm choice, autocast's weight casts
        eager[name] = float(np.median(time_calls(run, x, iters=100)))
    benchmark.extra_info.update({"precision": precision, "gpu": _trt.gpu()["name"],
                                 **{f"speedup_vs_eager_{k}_same_gpu": v / ours for k, v in eager.items()}})
    assert ours < min(eager.values()), (ours, eager)
