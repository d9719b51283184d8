"""OpenVINO FP32 / INT8 engines vs each other and the FP32 eager reference, in one session.

Run: .venv/bin/python -m pytest benchmarks/test_openvino.py --benchmark-json out.json
With ../shared present, the engines use the trained stand-in weights and INT8 is calibrated on
300 of the real photos (the other 100 are the held-out check); otherwise seeded random weights
and generated images (speed figures still hold; agreement figures are skipped).

Targets (issue 3), all ratios from this session except the build time and the RSS:
* INT8 batch-1 p50 <= 0.75x the OpenVINO FP32 engine's; INT8 batch-32 throughput >= 1.8x;
* INT8 top-1 agreement >= 0.97 and min cosine >= 0.98 on held-out photos (stand-in weights);
* Engine.load + first predict of the INT8 artifact in a fresh process: peak RSS <= 200 MB, no torch;
* INT8 build with 300 calibration images <= 3 minutes;
* engine batch-1 p50 within 10% of OpenVINO's benchmark_app on the same IR and settings.
The INT8 speed targets assume INT8 dot-product instructions (VNNI/AMX); on a CPU without them
(AVX2 only) INT8 convolutions are not faster than FP32 FMA, and those two tests xfail saying so.
On an AMX CPU `serve` and `bench` run OpenVINO INT8 with oneDNN capped at AVX-512 VNNI (faster there,
rexnet_deploy/cpu.py), a per-process setting this session's engines cannot share: the in-process
targets measure the uncapped library there, and test_int8_speed_as_served measures both engines in
a fresh process configured as serve configures it (issue 20: b1 <= 0.7x, b32 >= 1.8x).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rexnet_deploy.cpu import cpuinfo_flags, isa_class

from .conftest import HAVE_SHARED, batch_of, build_engine

pytest.importorskip("openvino")
BATCHES = (1, 32)


def _int8_dot_product() -> bool:
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & set(cpuinfo_flags()))


needs_vnni = pytest.mark.xfail(not _int8_dot_product(), strict=False,
                               reason="this CPU has no VNNI/AMX: INT8 convolutions are not faster than FP32 here")
# the served figures on AMX CPUs are test_int8_speed_as_served's
uncapped_on_amx = pytest.mark.xfail(isa_class() == "amx", strict=False,
                                    reason="AMX CPU: the in-process engine runs uncapped oneDNN (AMX kernels), slower "
                                           "than served; see test_int8_speed_as_served")


@pytest.fixture(scope="session")
def ov_fp32(tmp_path_factory, weights_arg):
    engine = build_engine(tmp_path_factory.mktemp("bench") / "ov-fp32", "openvino", "fp32", weights_arg,
                          check_options={"synthetic": 8})
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def int8_build(tmp_path_factory, weights_arg, calib_source):
    t0 = time.perf_counter()
    gate = None if HAVE_SHARED else {"top1_agreement": 0.0}  # random weights: flat logits
    engine = build_engine(tmp_path_factory.mktemp("bench") / "ov-int8", "openvino", "int8", weights_arg, calib=calib_source,
                          calib_size=300, check_options={"gate": gate})
    seconds = time.perf_counter() - t0
    yield engine, seconds
    engine.close()


@pytest.fixture(scope="session")
def ov_int8(int8_build):
    return int8_build[0]


@pytest.fixture(scope="session")
def ov_ratios() -> dict:
    return {}


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("runner", ["reference", "ov-fp32", "ov-int8"])
def test_latency(benchmark, runner, batch, reference, ov_fp32, ov_int8, ov_ratios):
    benchmark.group = f"openvino batch {batch}"
    fn = {"reference": reference, "ov-fp32": ov_fp32, "ov-int8": ov_int8}[runner]
    x = batch_of(batch)
    fn(x)  # compiles the static shape
    benchmark.pedantic(fn, args=(x,), rounds=5 if batch > 8 else 30, warmup_rounds=2)
    ov_ratios[(batch, runner)] = benchmark.stats.stats.median
    benchmark.extra_info.update({"backend": "openvino" if runner != "reference" else "torch-eager",
                                 "precision": runner.split("-")[-1] if runner != "reference" else "fp32",
                                 "batch": batch, "runner": runner})
    ref = ov_ratios.get((batch, "reference"))
    if ref and runner != "reference":
        benchmark.extra_info["speedup_vs_eager"] = ref / ov_ratios[(batch, runner)]
    fp32 = ov_ratios.get((batch, "ov-fp32"))
    if fp32 and runner == "ov-int8":
        benchmark.extra_info["time_ratio_vs_ov_fp32"] = ov_ratios[(batch, runner)] / fp32


def _ratio(ov_ratios, batch: int) -> float:
    if (batch, "ov-int8") not in ov_ratios or (batch, "ov-fp32") not in ov_ratios:
        pytest.skip("latency benchmarks did not run (e.g. --benchmark-disable or -k)")
    return ov_ratios[(batch, "ov-int8")] / ov_ratios[(batch, "ov-fp32")]


@needs_vnni
@uncapped_on_amx
def test_int8_batch1_latency_target(ov_ratios):
    ratio = _ratio(ov_ratios, 1)
    assert ratio <= 0.75, f"INT8 batch-1 p50 is {ratio:.2f}x the FP32 engine's (target <= 0.75x)"


@needs_vnni
@uncapped_on_amx
def test_int8_batch32_throughput_target(ov_ratios):
    ratio = 1 / _ratio(ov_ratios, 32)
    assert ratio >= 1.8, f"INT8 batch-32 throughput is {ratio:.2f}x the FP32 engine's (target >= 1.8x)"


_SERVED = """
import json, sys
from rexnet_deploy.cpu import cap_onednn_for
cap = cap_onednn_for("openvino", "int8")  # what serve and bench do before their engine loads
from rexnet_deploy import Engine
from rexnet_deploy.harness.bench import bench
fp32, int8 = Engine.load(sys.argv[1]), Engine.load(sys.argv[2])
t = bench(int8, batches=[1, 32], reference=fp32, seconds=4.0)
print(json.dumps({"capped": cap is not None, "throughput": {str(k): v for k, v in t["throughput_ratio"].items()}}))
"""


@needs_vnni
def test_int8_speed_as_served(ov_fp32, ov_int8):
    """Both engines in one fresh process configured as `serve` configures it for the INT8 engine
    (on an AMX CPU: oneDNN capped at AVX-512 VNNI; elsewhere nothing changes)."""
    r = subprocess.run([sys.executable, "-c", _SERVED, str(ov_fp32.artifact.path), str(ov_int8.artifact.path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    b1, b32 = got["throughput"]["1"], got["throughput"]["32"]
    print(f"\nas served ({'oneDNN capped at AVX-512 VNNI' if got['capped'] else 'no oneDNN cap'}): b1 latency {1 / b1:.2f}x, b32 throughput {b32:.2f}x OpenVINO FP32")
    assert 1 / b1 <= 0.75 and b32 >= 1.8, f"INT8 as served: b1 latency {1 / b1:.2f}x (<= 0.75x), b32 {b32:.2f}x (>= 1.8x)"


def test_openvino_faster_than_eager(ov_ratios):
    for batch in BATCHES:
        if (batch, "reference") not in ov_ratios:
            pytest.skip("latency benchmarks did not run")
        assert ov_ratios[(batch, "ov-fp32")] < ov_ratios[(batch, "reference")], f"OpenVINO FP32 slower than eager at {batch}"


def test_fp32_is_exact(ov_fp32):
    m = ov_fp32.manifest.reports["check"]["metrics"]
    assert m["top1_agreement"] == 1.0 and m["cosine_min"] >= 0.9999


@pytest.mark.skipif(not HAVE_SHARED, reason="agreement targets need the trained stand-in weights and real photos (../shared)")
def test_int8_agreement_target(ov_int8):
    report = ov_int8.manifest.reports["check"]
    m = report["metrics"]
    assert report["n_images"] >= 100
    assert m["top1_agreement"] >= 0.97 and m["cosine_min"] >= 0.98, m


def test_int8_build_time_target(int8_build):
    _, seconds = int8_build
    assert seconds <= 180, f"INT8 build took {seconds:.0f} s (target <= 180 s)"


def test_fresh_process_rss_and_no_torch(ov_int8, calib_source, tmp_path):
    from tests.conftest import fresh_process_predict

    shutil.copytree(ov_int8.artifact.path, tmp_path / "e")
    image = next(p for p in sorted(calib_source.rglob("*")) if p.suffix.lower() in (".jpg", ".jpeg"))
    got = fresh_process_predict(tmp_path / "e", image)
    print(f"peak RSS {got['rss_mb']:.0f} MB")
    assert got["imported"] == []
    assert got["rss_mb"] <= 200, f"peak RSS {got['rss_mb']:.0f} MB (target <= 200 MB)"


@pytest.mark.parametrize("which", ["ov-fp32", "ov-int8"])
def test_engine_overhead_vs_benchmark_app(which, ov_fp32, ov_int8):
    """Our batch-1 p50 against benchmark_app's median on the same IR, LATENCY hint, f32, sync API,
    measured back to back (twice each, best of two, to damp the machine's noise)."""
    app = Path(sys.executable).parent / "benchmark_app"
    if not app.exists():
        pytest.skip("benchmark_app is not installed with openvino here")
    engine = ov_fp32 if which == "ov-fp32" else ov_int8
    from rexnet_deploy.harness.bench import bench

    xml = engine.artifact.file("model.xml")
    ours, theirs = [], []
    for _ in range(2):
        r = subprocess.run([str(app), "-m", str(xml), "-d", "CPU", "-hint", "latency", "-api", "sync",
                            "-shape", "[1,3,224,224]", "-infer_precision", "f32", "-t", "5"],
                           capture_output=True, text=True, timeout=120)
        match = re.search(r"Median:\s+([\d.]+) ms", r.stdout)
        assert match, r.stdout[-2000:] + r.stderr[-2000:]
        theirs.append(float(match.group(1)))
        report = bench(engine, batches=[1], reference=False, seconds=5.0)
        ours.append(report["results"][0]["p50_ms"])
    print(f"{which} batch 1: engine p50 {min(ours):.2f} ms, benchmark_app median {min(theirs):.2f} ms")
    assert min(ours) <= 1.10 * min(theirs), f"engine {min(ours):.2f} ms vs benchmark_app {min(theirs):.2f} ms"
