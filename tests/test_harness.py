"""check / bench / metrics / gates."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest

from rexnet_deploy import Engine
from rexnet_deploy.harness.check import check
from rexnet_deploy.harness.metrics import Comparison, cosine_rows, evaluate_gate, gate_thresholds, sqnr_db

from .conftest import SHARED_CALIB, SHARED_WEIGHTS


# -- metrics ---------------------------------------------------------------------------------------
def test_metrics_on_known_values():
    ref = np.array([[1.0, 0.0, 0.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0, 0.0, 0.0]], np.float32)
    eng = np.array([[1.0, 0.0, 0.0, 0.0, 0.0, 0.0], [2.0, 1.0, 0.0, 0.0, 0.0, 0.0]], np.float32)
    cos = cosine_rows(ref, eng)
    assert cos[0] == pytest.approx(1.0) and cos[1] == pytest.approx(2 / (2 * math.sqrt(5)))
    c = Comparison(["logits"], classify=True)
    c.update([ref], [eng], labels=np.array([0, 1]))
    m = c.metrics()
    assert m["top1_agreement"] == 0.5  # second row: engine says 0, reference says 1
    assert m["top5_agreement"] == 1.0
    assert m["sqnr_db"] == pytest.approx(10 * math.log10(5 / 5))
    assert m["max_abs_err"] == pytest.approx(2.0)
    lab = c.labelled_accuracy()
    assert lab == {"n": 2, "engine_top1": 0.5, "engine_top5": 1.0, "reference_top1": 1.0, "reference_top5": 1.0}
    assert sqnr_db(1.0, 0.0) == math.inf


def test_gate_bounds_and_failures():
    th = gate_thresholds("fp32", {"max_abs_err": 0.1})
    ok = evaluate_gate({"top1_agreement": 1.0, "cosine_min": 0.99999, "sqnr_db": 60.0, "max_abs_err": 0.01}, th)
    assert ok["passed"] and ok["failures"] == []
    bad = evaluate_gate({"top1_agreement": 0.5, "cosine_min": float("nan"), "sqnr_db": 60.0, "max_abs_err": 0.5}, th)
    assert not bad["passed"] and len(bad["failures"]) == 3
    assert gate_thresholds("int8")["cosine_min"] < gate_thresholds("fp16")["cosine_min"] < gate_thresholds("fp32")["cosine_min"]


# -- check -----------------------------------------------------------------------------------------
def test_check_with_labels_csv_and_wnid_folders(ts_engine_path, image_dir, tmp_path):
    files = sorted(p.name for p in image_dir.iterdir())
    csv = tmp_path / "labels.csv"
    csv.write_text("file,wnid,class_index\n" + "".join(f"{f},x,{i}\n" for i, f in enumerate(files)))
    with Engine.load(ts_engine_path) as engine:
        r = check(engine, images=image_dir, labels=csv)
        assert r["n_images"] == len(files) and r["labels"] == str(csv)
        assert r["labelled"]["n"] == len(files)
        for key in ("engine_top1", "engine_top5", "reference_top1", "reference_top5"):
            assert 0.0 <= r["labelled"][key] <= 1.0
        assert r["metrics"]["top1_agreement"] == 1.0 and r["gate"]["passed"]
        # wnid-named subfolders label themselves through the artifact's wnids.txt
        wnids = engine.artifact.file("wnids.txt").read_text().split()
        tree = tmp_path / "tree"
        for i, f in enumerate(files):
            (tree / wnids[i * 10]).mkdir(parents=True)
            shutil.copy(image_dir / f, tree / wnids[i * 10] / f)
        r2 = check(engine, images=tree)
        assert r2["labels"] == "wnid folders" and r2["labelled"]["n"] == len(files)
        # the reference's labelled accuracy must not depend on how the labels were given
        r3 = check(engine, images=image_dir, labels=csv, synthetic=0)
        assert r3["labelled"] == r["labelled"]


def test_check_on_synthetic_images_default(ts_engine_path):
    with Engine.load(ts_engine_path) as engine:
        r = check(engine, synthetic=5)
    assert r["images"] == {"kind": "synthetic", "n": 5, "seed": 0} and r["n_images"] == 5
    assert r["labelled"] is None
    assert set(r["metrics"]) >= {"top1_agreement", "top5_agreement", "cosine_mean", "cosine_min", "sqnr_db", "max_abs_err"}


@pytest.mark.shared_data
@pytest.mark.slow
def test_fp32_torchscript_is_exact_on_real_photos_with_trained_weights(tmp_path):
    """The issue's done-when: top-1 agreement 1.0 and cosine >= 0.99999 on real photos."""
    from rexnet_deploy import BuildSpec, ModelSpec, WeightsSpec, build

    with build(ModelSpec("rexnet_100", weights=WeightsSpec.parse(str(SHARED_WEIGHTS))), BuildSpec(batch=(1, 16)),
               tmp_path / "ts", check_options={"images": SHARED_CALIB, "limit": 64}) as engine:
        r = engine.manifest.reports["check"]
    assert r["n_images"] == 64 and r["labels"].endswith("labels.csv")
    assert r["metrics"]["top1_agreement"] == 1.0
    assert r["metrics"]["cosine_min"] >= 0.99999
    assert r["labelled"]["engine_top1"] == r["labelled"]["reference_top1"]


# -- bench -----------------------------------------------------------------------------------------
def test_bench_reports_engine_and_reference_in_one_run(ts_engine_path):
    from rexnet_deploy.harness.bench import bench

    with Engine.load(ts_engine_path) as engine:
        r = bench(engine, batches=[1, 2], seconds=0.3, min_iters=3, warmup=1)
    assert [x["batch"] for x in r["results"]] == [1, 2]
    assert [x["batch"] for x in r["reference"]["results"]] == [1, 2]
    for row in r["results"] + r["reference"]["results"]:
        assert set(row) >= {"batch", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "throughput_ips"}
        assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
        assert row["iters"] >= 3
    for b in ("1", "2"):
        ref_p50 = r["reference"]["results"][int(b) - 1]["p50_ms"]
        assert r["speedup"][b] == pytest.approx(ref_p50 / r["results"][int(b) - 1]["p50_ms"])


def test_bench_without_reference(ts_engine_path):
    from rexnet_deploy.harness.bench import bench

    with Engine.load(ts_engine_path) as engine:
        r = bench(engine, batches=[1], reference=False, seconds=0.1, min_iters=2, warmup=1)
    assert r["reference"] is None and r["speedup"] is None and len(r["results"]) == 1


class _SlowFirstCall:
    """An engine whose first call at each batch size takes 0.4 s longer (a compile on first use)."""

    def __init__(self, engine):
        self._engine, self._seen = engine, set()

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def __call__(self, x):
        if len(x) not in self._seen:
            self._seen.add(len(x))
            import time

            time.sleep(0.4)
        return self._engine(x)


def test_bench_reports_the_first_call_apart_from_the_steady_latency(ts_engine_path):
    from rexnet_deploy.harness.bench import bench
    from rexnet_deploy.harness.report import bench_markdown

    with Engine.load(ts_engine_path) as engine:
        r = bench(_SlowFirstCall(engine), batches=[1], reference=False, seconds=0.3, min_iters=3, warmup=1,
                  max_warmup_seconds=10.0)  # a loaded CPU must not hit the cap with the first call
    row = r["results"][0]
    assert row["first_call_ms"] >= 400 and row["p99_ms"] < row["first_call_ms"] - 300  # never in the percentiles
    assert row["warmup_calls"] >= 2 and row["warmup_seconds"] >= 0.25 and isinstance(row["steady"], bool)
    assert r["settings"]["warmup_rule"]["max_seconds"] == 10.0 and r["settings"]["sync"] is None
    assert r["engine"]["device"] == "cpu"
    assert "| first call ms |" in bench_markdown(r) and f"| {row['first_call_ms']:.1f} |" in bench_markdown(r)


def test_bench_keeps_the_gate_keys_and_says_where_the_reference_ran(ts_engine_path):
    from rexnet_deploy.harness.bench import bench

    with Engine.load(ts_engine_path) as engine:
        r = bench(engine, batches=[1], seconds=0.2, min_iters=2, warmup=1)
    assert set(r) >= {"speedup", "throughput_ratio", "results", "settings", "reference", "host"}
    assert r["reference"]["kind"] == "torch eager fp32" and r["reference"]["device"] == "cpu"
    assert "reference_fp16" not in r  # an FP16-autocast column is for engines on a GPU
    for row in r["results"] + r["reference"]["results"]:
        assert row["first_call_ms"] > 0 and row["warmup_calls"] >= 1


def test_bench_with_tensors_on_the_device(ts_engine_path):
    """io="device": torch tensors in and out (on a CPU engine: CPU tensors), reference too."""
    from rexnet_deploy.harness.bench import bench

    from rexnet_deploy.errors import UsageError

    with Engine.load(ts_engine_path) as engine:
        r = bench(engine, batches=[2], seconds=0.2, min_iters=2, warmup=1, io="device")
        with pytest.raises(UsageError, match="io must be one of numpy, device"):
            bench(engine, batches=[2], io="gpu")
    assert r["settings"]["io"] == "device" and r["reference"]["device"] == "cpu" and r["speedup"]["2"] > 0


def test_bench_of_an_onnxruntime_engine_reports_its_first_call(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    from rexnet_deploy.harness.bench import bench

    from .conftest import build_artifact

    path = build_artifact(tmp_path_factory, "ort-bench", "onnxruntime", "fp32", check=False)
    with Engine.load(path) as engine:
        r = bench(engine, batches=[1], reference=False, seconds=0.2, min_iters=2, warmup=1)
    row = r["results"][0]
    assert r["engine"]["backend"] == "onnxruntime" and row["first_call_ms"] > 0 and row["warmup_calls"] >= 1


@pytest.mark.gpu
@pytest.mark.slow
def test_bench_of_a_cuda_engine_compares_with_eager_on_the_same_gpu(tmp_path):
    from rexnet_deploy import BuildSpec, ModelSpec, WeightsSpec, build
    from rexnet_deploy.harness.bench import bench

    with build(ModelSpec("rexnet_100", weights=WeightsSpec("random", seed=0)),
               BuildSpec(backend="torchscript", precision="fp16", device="cuda", batch=(1, 8)), tmp_path / "e",
               check=False) as engine:
        r = bench(engine, batches=[1, 8], seconds=0.3, io="numpy")
        d = bench(engine, batches=[8], seconds=0.3, io="device")
    assert r["reference"]["device"].startswith("cuda") and r["reference_fp16"]["kind"] == "torch eager fp16 autocast"
    assert set(r["speedup_vs_fp16_eager"]) == {"1", "8"} and r["settings"]["sync"] == "torch.cuda.synchronize"
    assert r["host"]["gpu"] and set(r["engine"]["load_warmup"]) == {"1", "8", "4"}
    assert r["results"][0]["first_call_ms"] < 1000  # warmed at load: no compile on the first timed call
    assert d["settings"]["io"] == "device" and d["results"][0]["p50_ms"] > 0
