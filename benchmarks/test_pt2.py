"""The pt2 engine (torch.export + AOTInductor) on this CPU against TorchScript, in one session:
the issue-18 targets, as ratios measured in the same run (harness ``bench``: engines warmed until
steady, then alternating timed rounds), plus its build and load time.

Run: .venv/bin/python -m pytest benchmarks/test_pt2.py -s  (about 5 min on 2 cores)
Targets: FP32 pt2 vs TorchScript FP32: batch 32 throughput >= 2.0x, batch 1 latency <= 0.85x;
build <= 3 min, load <= 0.5 s; INT8 pt2 (VNNI CPUs) batch 32 throughput >= 1.5x pt2 FP32; BF16
reported against pt2 FP32 (BF16 CPUs). Each result is printed as one JSON line (``pt2-bench``).
"""

from __future__ import annotations

import json
import time

import pytest

from rexnet_deploy import cpu

BATCHES = (1, 32)


def _report(name: str, data: dict) -> None:
    print(json.dumps({"pt2-bench": name, "cpu_isa": cpu.isa_class(), **data}), flush=True)


@pytest.fixture(scope="session")
def pt2_build(tmp_path_factory, weights_arg):
    from rexnet_deploy import BuildSpec, ModelSpec, WeightsSpec, build

    out = tmp_path_factory.mktemp("bench") / "pt2"
    started = time.perf_counter()
    engine = build(ModelSpec("rexnet_100", weights=WeightsSpec.parse(weights_arg)),
                   BuildSpec(backend="pt2", batch=(1, 32)), out, check_options={"synthetic": 8})
    seconds = time.perf_counter() - started
    yield engine, seconds
    engine.close()


def _bench(engine, reference):
    from rexnet_deploy.harness.bench import bench

    return bench(engine, batches=BATCHES, reference=reference, seconds=6.0, rounds=3)


def test_fp32_against_torchscript(pt2_build, ts_engine):
    engine, _ = pt2_build
    report = _bench(engine, ts_engine)  # the TorchScript engine plays the reference: ratios are TS / pt2
    latency = 1 / report["speedup"]["1"]  # pt2 p50 / TorchScript p50
    throughput = report["throughput_ratio"]["32"]
    _report("fp32-vs-torchscript", {"b1_latency_ratio": round(latency, 3), "b32_throughput_ratio": round(throughput, 3),
                                    "p50_ms": {str(r["batch"]): r["p50_ms"] for r in report["results"]},
                                    "torchscript_p50_ms": {str(r["batch"]): r["p50_ms"]
                                                           for r in report["reference"]["results"]}})
    assert throughput >= 2.0 and latency <= 0.85, \
        f"pt2 vs TorchScript on {cpu.isa_class()}: b32 throughput {throughput:.2f}x (>= 2.0), b1 latency {latency:.2f}x (<= 0.85)"


def test_build_and_load_time(pt2_build):
    from rexnet_deploy import Engine

    engine, build_s = pt2_build
    loads = []
    for _ in range(3):
        started = time.perf_counter()
        Engine.load(engine.artifact.path).close()
        loads.append(time.perf_counter() - started)
    load_s = sorted(loads)[1]
    _report("build-and-load", {"build_s": round(build_s, 1), "load_s": round(load_s, 3),
                               "compile_s": engine.manifest.backend_config["compile_seconds"]})
    assert build_s <= 180 and load_s <= 0.5, f"build {build_s:.0f} s (<= 180), load {load_s:.2f} s (<= 0.5)"


def test_bf16_against_fp32(pt2_build, tmp_path_factory, weights_arg):
    from rexnet_deploy import BuildSpec, ModelSpec, WeightsSpec, build
    from rexnet_deploy.backends import pt2

    problem = pt2.host_problem("bf16")
    if problem:
        pytest.skip(problem)
    fp32, _ = pt2_build
    with build(ModelSpec("rexnet_100", weights=WeightsSpec.parse(weights_arg)),
               BuildSpec(backend="pt2", precision="bf16", batch=(1, 32)), tmp_path_factory.mktemp("bench") / "bf16",
               check_options={"synthetic": 8}) as engine:
        report = _bench(engine, fp32)
    metrics = engine.manifest.reports["check"]["metrics"]
    _report("bf16-vs-fp32", {"b1_speedup": round(report["speedup"]["1"], 3),
                             "b32_throughput_ratio": round(report["throughput_ratio"]["32"], 3),
                             "cosine_min": metrics["cosine_min"], "sqnr_db": metrics["sqnr_db"]})
    assert report["throughput_ratio"]["32"] >= 1.0


def test_int8_against_fp32(pt2_build, tmp_path_factory, weights_arg):
    """Speed only (the PTQ recipe: the kernels are the QAD recipe's); fidelity is measured on dev/
    photos by benchmarks/int8_recipes.py."""
    from rexnet_deploy import BuildSpec, ModelSpec, WeightsSpec, build
    from rexnet_deploy.backends import pt2
    from rexnet_deploy.synthetic import synthetic_images

    problem = pt2.host_problem("int8")
    if problem:
        pytest.skip(problem)
    calib = tmp_path_factory.mktemp("calib")
    for i, img in enumerate(synthetic_images(32, seed=3)):
        img.save(calib / f"{i}.jpg")
    fp32, _ = pt2_build
    with build(ModelSpec("rexnet_100", weights=WeightsSpec.parse(weights_arg)),
               BuildSpec(backend="pt2", precision="int8", batch=(1, 32)), tmp_path_factory.mktemp("bench") / "int8",
               calib=calib, backend_options={"recipe": "ptq"}, check=False) as engine:
        report = _bench(engine, fp32)
    _report("int8-vs-fp32", {"b1_speedup": round(report["speedup"]["1"], 3),
                             "b32_throughput_ratio": round(report["throughput_ratio"]["32"], 3)})
    assert report["throughput_ratio"]["32"] >= 1.5, f"INT8 b32 {report['throughput_ratio']['32']:.2f}x pt2 FP32 (>= 1.5)"
