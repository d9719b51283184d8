"""The performance-regression gate (baselines of speedup ratios and agreement), end-to-end
throughput from image files, and bench charts — on the session's TorchScript engine."""

from __future__ import annotations

import json

import pytest

from rexnet_deploy.errors import UsageError
from rexnet_deploy.harness import baseline as gate

from .conftest import expect_error, run_cli

pytestmark = pytest.mark.slow
FAST = ["--batch", "1", "--seconds", "0.3", "--warmup", "1", "--repeat", "1", "--no-save", "-q"]


@pytest.fixture(scope="module")
def saved_baseline(ts_engine_path, tmp_path_factory):
    path = tmp_path_factory.mktemp("gate") / "baseline.json"
    r = run_cli("bench", str(ts_engine_path), *FAST, "--save-baseline", str(path))
    assert r.returncode == 0, r.stderr
    return path


def test_saved_baseline_holds_speedups_and_agreement(saved_baseline):
    data = json.loads(saved_baseline.read_text())
    assert data["kind"] == gate.KIND and data["model"] == "rexnet_100"
    entry = data["engines"]["torchscript/fp32"]
    assert set(entry["speedup"]) == {"1"} and entry["speedup"]["1"] > 0
    assert entry["agreement"]["top1_agreement"] == 1.0  # from the artifact's build check


def test_gate_passes_on_the_real_baseline_and_fails_on_a_planted_regression(ts_engine_path, saved_baseline, tmp_path):
    r = run_cli("bench", str(ts_engine_path), *FAST, "--baseline", str(saved_baseline), "--max-regression", "0.6")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "gate: **passed**" in r.stdout
    planted = json.loads(saved_baseline.read_text())
    planted["engines"]["torchscript/fp32"]["speedup"]["1"] *= 3  # claims a ratio the engine never reaches
    (tmp_path / "planted.json").write_text(json.dumps(planted))
    r = run_cli("bench", str(ts_engine_path), *FAST, "--baseline", str(tmp_path / "planted.json"))
    line = expect_error(r, "regression gate failed", "torchscript/fp32 speedup at batch 1", code=1)
    assert "REGRESSED" in r.stdout and line


def test_gate_fails_on_an_agreement_drop(saved_baseline):
    data = json.loads(saved_baseline.read_text())
    current = {"speedup": dict(data["engines"]["torchscript/fp32"]["speedup"]),
               "agreement": {"top1_agreement": 0.95}}
    result = gate.compare(data, "rexnet_100", "torchscript/fp32", current)
    assert not result["passed"] and "top1_agreement is 0.95" in result["failures"][0]


@pytest.mark.parametrize("edit, fragment", [
    (lambda d: d.update(model="rexnet_150"), "is for model rexnet_150"),
    (lambda d: d["engines"].pop("torchscript/fp32"), "no entry for torchscript/fp32"),
    (lambda d: d["engines"]["torchscript/fp32"]["speedup"].pop("1"), "no torchscript/fp32 speedup at batch 1"),
    (lambda d: d.update(kind="something-else"), "is not a rexnet-deploy baseline"),
])
def test_a_baseline_that_does_not_fit_is_exit_2_before_timing(ts_engine_path, saved_baseline, tmp_path, edit, fragment):
    data = json.loads(saved_baseline.read_text())
    edit(data)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    r = run_cli("bench", str(ts_engine_path), *FAST, "--baseline", str(bad))
    expect_error(r, fragment)


def test_bad_gate_input(ts_engine_path, tmp_path):
    (tmp_path / "x.json").write_text("{not json")
    expect_error(run_cli("bench", str(ts_engine_path), *FAST, "--baseline", str(tmp_path / "x.json")), "not readable JSON")
    expect_error(run_cli("bench", str(ts_engine_path), *FAST, "--baseline", str(tmp_path / "none.json")), "does not exist")
    expect_error(run_cli("bench", str(ts_engine_path), *FAST, "--save-baseline", str(tmp_path / "b.json"),
                         "--no-reference"), "drop --no-reference")
    expect_error(run_cli("bench", str(ts_engine_path), *FAST, "--save-baseline", str(tmp_path / "b.json"),
                         "--max-regression", "1.5"), "--max-regression must be a fraction")
    with pytest.raises(UsageError, match="fraction"):
        gate.compare({"model": "m", "engines": {}}, "m", "k", {"speedup": {}}, max_regression=1.5)


def test_end_to_end_from_files_and_the_chart(ts_engine_path, image_dir, tmp_path):
    pytest.importorskip("matplotlib")
    out, png = tmp_path / "b.json", tmp_path / "b.png"
    r = run_cli("bench", str(ts_engine_path), "--batch", "1,2", "--seconds", "0.3", "--warmup", "1", "--no-save", "-q",
                "--images", str(image_dir), "--json", str(out), "--plot", str(png))
    assert r.returncode == 0, r.stderr
    e2e = json.loads(out.read_text())["end_to_end"]
    assert [row["batch"] for row in e2e["results"]] == [1, 2]
    assert all(row["images"] >= 64 and 0 < row["ratio"] < 2 for row in e2e["results"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "files → labels" in r.stdout


def test_end_to_end_bad_input(ts_engine_path, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    expect_error(run_cli("bench", str(ts_engine_path), *FAST, "--images", str(empty)), "no image files")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.jpg").write_bytes(b"not a jpeg")
    expect_error(run_cli("bench", str(ts_engine_path), *FAST, "--images", str(broken)), "no readable image")
    expect_error(run_cli("bench", str(ts_engine_path), "--batch", "64", "--no-save", "-q"), "outside this engine's range")


def test_matrix_builds_what_runs_here_and_says_why_the_rest_is_skipped(tmp_path):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "m"
    r = run_cli("matrix", "--weights", "random", "--only", "torchscript", "--only", "onnxruntime/fp32",
                "--only", "tensorrt", "--batch", "1,2", "--seconds", "0.3", "--out", str(out), "-q")
    assert r.returncode == 0, r.stderr
    result = json.loads((out / "matrix.json").read_text())
    rows = {row["engine"]: row for row in result["rows"]}
    assert set(rows) == {"torchscript/fp32", "torchscript/fp16", "onnxruntime/fp32", "tensorrt/fp16", "tensorrt/int8"}
    for key in ("torchscript/fp32", "onnxruntime/fp32"):
        row = rows[key]
        assert row["top1_agreement"] == 1.0 and row["size_mb"] > 1 and row["speedup_first_batch"] > 0
        assert (out / "engines" / key.replace("/", "-") / "manifest.json").is_file()
    assert "INT8 needs --calib" in rows["tensorrt/int8"]["skipped"]
    from rexnet_deploy.backends import _trt

    if _trt.host_problem():
        assert "TensorRT GPU host" in rows["tensorrt/fp16"]["skipped"]
    md = (out / "matrix.md").read_text()
    assert "| torchscript/fp32 |" in md and "skipped:" in md and md.strip() in r.stdout
    if (out / "matrix.png").exists():
        assert (out / "matrix.png").read_bytes()[:4] == b"\x89PNG"


def test_matrix_bad_input(tmp_path):
    expect_error(run_cli("matrix", "--weights", "random", "--calib", str(tmp_path / "nope"), "--out", str(tmp_path / "m"),
                         "-q"), "--calib", "does not exist")
    expect_error(run_cli("matrix", "--weights", "random", "--batch", "0", "--out", str(tmp_path / "m"), "-q"),
                 "batch sizes")
