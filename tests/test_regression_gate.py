"""The performance-regression gate (baselines of speedup ratios and agreement), end-to-end
throughput from image files, and bench charts — on the session's TorchScript engine."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from rexnet_deploy.cpu import isa_class
from rexnet_deploy.errors import UsageError
from rexnet_deploy.harness import baseline as gate

from .conftest import cli_in_process as run_cli
from .conftest import expect_error

pytestmark = pytest.mark.slow
FAST = ["--batch", "1", "--seconds", "0.3", "--warmup", "1", "--repeat", "1", "--no-save", "-q"]
HERE = isa_class()
OTHER = "amx" if HERE != "amx" else "avx2"  # a class this host is not
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def saved_baseline(ts_engine_path, tmp_path_factory):
    path = tmp_path_factory.mktemp("gate") / "baseline.json"
    r = run_cli("bench", str(ts_engine_path), *FAST, "--save-baseline", str(path))
    assert r.returncode == 0, r.stderr
    return path


def test_saved_baseline_holds_speedups_and_agreement(saved_baseline):
    data = json.loads(saved_baseline.read_text())
    assert data["kind"] == gate.KIND and data["model"] == "rexnet_100" and list(data["classes"]) == [HERE]
    assert data["classes"][HERE]["host"]["cpu_isa"] == HERE
    entry = data["classes"][HERE]["engines"]["torchscript/fp32"]
    assert set(entry["speedup"]) == {"1"} and entry["speedup"]["1"] > 0
    assert entry["agreement"]["top1_agreement"] == 1.0  # from the artifact's build check


def test_gate_passes_on_the_real_baseline_and_fails_on_a_planted_regression(ts_engine_path, saved_baseline, tmp_path):
    r = run_cli("bench", str(ts_engine_path), *FAST, "--baseline", str(saved_baseline), "--max-regression", "0.6")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "gate: **passed**" in r.stdout
    planted = json.loads(saved_baseline.read_text())
    planted["classes"][HERE]["engines"]["torchscript/fp32"]["speedup"]["1"] *= 3  # a ratio the engine never reaches
    planted["classes"][OTHER] = json.loads(json.dumps(planted["classes"][HERE]))  # another class does not mask it
    (tmp_path / "planted.json").write_text(json.dumps(planted))
    r = run_cli("bench", str(ts_engine_path), *FAST, "--baseline", str(tmp_path / "planted.json"))
    line = expect_error(r, "regression gate failed", "torchscript/fp32 speedup at batch 1", code=1)
    assert "REGRESSED" in r.stdout and f"on CPU class {HERE}" in r.stdout and line
    assert "NOT GATED" not in r.stderr
    # a real regression reproduces: measured three times (two confirmations), failed every time
    assert "best of 3 measurements" in r.stdout


def test_a_speedup_dip_that_does_not_reproduce_passes(ts_engine_path, saved_baseline, monkeypatch):
    """The confirmation logic alone: timed runs replaced by scripted ratios (one slow, then normal)."""
    from rexnet_deploy.harness import bench as bench_module
    from rexnet_deploy.harness.bench_gate import bench_with_gate

    base = gate.for_host(gate.load(saved_baseline))["engines"]["torchscript/fp32"]["speedup"]["1"]
    ratios = iter([base * 0.5, base * 0.5, base * 0.5, base * 1.01, base * 0.99, base])

    def scripted(engine, **_kw):
        return {"speedup": {"1": next(ratios)}, "settings": {}}

    monkeypatch.setattr(bench_module, "bench", scripted)
    report = bench_with_gate(ts_engine_path, batches=[1], baseline=saved_baseline, save_report=False)
    assert report["gate"]["passed"] and report["gate"]["attempts"] == 2
    ratios = iter([base * 0.5] * 3)
    report = bench_with_gate(ts_engine_path, batches=[1], baseline=saved_baseline, save_report=False, confirm=0)
    assert not report["gate"]["passed"] and report["gate"]["attempts"] == 1


def test_gate_fails_on_an_agreement_drop(saved_baseline):
    data = gate.for_host(gate.load(saved_baseline))
    current = {"speedup": dict(data["engines"]["torchscript/fp32"]["speedup"]),
               "agreement": {"top1_agreement": 0.95}}
    result = gate.compare(data, "rexnet_100", "torchscript/fp32", current)
    assert not result["passed"] and "top1_agreement is 0.95" in result["failures"][0]


@pytest.mark.parametrize("edit, fragment", [
    (lambda d: d.update(model="rexnet_150"), "is for model rexnet_150"),
    (lambda d: d["classes"][HERE]["engines"].pop("torchscript/fp32"), f"no entry for torchscript/fp32 on CPU class {HERE}"),
    (lambda d: d["classes"][HERE]["engines"]["torchscript/fp32"]["speedup"].pop("1"),
     "no torchscript/fp32 speedup at batch 1"),
    (lambda d: d.update(kind="something-else"), "is not a rexnet-deploy baseline"),
    (lambda d: d.update(version=1), "has version 1"),
    (lambda d: d.update(classes=[]), "no per-class engine entries"),
])
def test_a_baseline_that_does_not_fit_is_exit_2_before_timing(ts_engine_path, saved_baseline, tmp_path, edit, fragment):
    data = json.loads(saved_baseline.read_text())
    edit(data)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    r = run_cli("bench", str(ts_engine_path), *FAST, "--baseline", str(bad))
    expect_error(r, fragment)


def test_isa_class_is_the_best_instruction_set_the_flags_name():
    assert gate.isa_class is isa_class  # the gate keys by the one shared detector
    assert isa_class(["sse4_2", "avx", "avx2", "fma"]) == "avx2"
    assert isa_class(["avx2", "avx512f", "avx512bw"]) == "avx512"
    assert isa_class(["avx2", "avx512f", "avx512_vnni", "avx512_bf16"]) == "avx512-vnni"
    assert isa_class(["avx2", "avx512f", "avx512_vnni", "amx_bf16", "amx_tile", "amx_int8"]) == "amx"
    assert isa_class(["fp", "asimd"]).startswith("generic-")
    assert HERE in {"avx2", "avx512", "avx512-vnni", "amx"} or HERE.startswith("generic-")
    from rexnet_deploy.artifact import environment

    assert environment()["cpu_isa"] == HERE  # manifests record the class they were built and checked on


def test_a_host_whose_class_has_no_entry_is_not_gated_and_says_so(ts_engine_path, saved_baseline, tmp_path):
    data = json.loads(saved_baseline.read_text())
    data["classes"] = {OTHER: data["classes"][HERE]}
    data["classes"][OTHER]["engines"]["torchscript/fp32"]["speedup"]["1"] *= 100  # would fail if compared
    other = tmp_path / "other.json"
    other.write_text(json.dumps(data))
    r = run_cli("bench", str(ts_engine_path), *FAST, "--baseline", str(other))
    assert r.returncode == 0, r.stdout + r.stderr
    warning = [line for line in r.stderr.splitlines() if "NOT GATED" in line]
    assert len(warning) == 1, r.stderr
    assert f"CPU class {HERE}" in warning[0] and f"it has: {OTHER}" in warning[0]
    assert "bash benchmarks/ci_gate.sh --save" in warning[0] and "commit" in warning[0]
    assert "regression gate" not in r.stdout and "REGRESSED" not in r.stdout


def test_save_merges_into_this_class_only_keeping_the_lower_bar(ts_engine_path, saved_baseline, tmp_path):
    data = json.loads(saved_baseline.read_text())
    mine = data["classes"][HERE]
    mine["engines"]["torchscript/fp32"]["speedup"]["1"] = 1e6  # a faster machine's bar: lowered to this one's
    mine["engines"]["openvino/fp32"] = {"speedup": {"1": 9.0}, "agreement": {}, "runs": 5}  # kept: other engine
    data["classes"][OTHER] = {"engines": {"torchscript/fp32": {"speedup": {"1": 123.0}, "agreement": {}, "runs": 5}},
                              "host": {"cpu": "elsewhere"}, "created": "then"}
    path = tmp_path / "b.json"
    path.write_text(json.dumps(data))
    r = run_cli("bench", str(ts_engine_path), *FAST, "--save-baseline", str(path))
    assert r.returncode == 0, r.stderr
    after = json.loads(path.read_text())
    assert after["classes"][OTHER] == data["classes"][OTHER]
    assert after["classes"][HERE]["engines"]["openvino/fp32"]["speedup"] == {"1": 9.0}
    merged = after["classes"][HERE]["engines"]["torchscript/fp32"]
    assert 0 < merged["speedup"]["1"] < 1e6 and merged["measurements"] == 2
    path.write_text(json.dumps(after).replace(str(merged["speedup"]["1"]), "0.001"))  # a slower machine's bar: kept
    assert run_cli("bench", str(ts_engine_path), *FAST, "--save-baseline", str(path)).returncode == 0
    assert json.loads(path.read_text())["classes"][HERE]["engines"]["torchscript/fp32"]["speedup"]["1"] == 0.001
    with pytest.raises(UsageError, match="is for model rexnet_100"):  # never drops the classes of another model
        gate.save(path, "rexnet_150", {}, {})


def test_ci_gate_exits_0_at_once_on_an_ungated_class_and_2_on_a_bad_baseline(saved_baseline, tmp_path):
    data = json.loads(saved_baseline.read_text())
    data["classes"] = {OTHER: data["classes"][HERE]}
    (tmp_path / "other.json").write_text(json.dumps(data))

    def run(name: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "benchmarks/ci_gate.sh"], cwd=REPO, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "BASELINE": str(tmp_path / name)})

    r = run("other.json")  # what .ci/run meets on a class without an entry: green, loudly ungated, no builds
    assert r.returncode == 0 and "NOT GATED" in r.stderr and "bash benchmarks/ci_gate.sh --save" in r.stderr, r.stderr
    (tmp_path / "v1.json").write_text(json.dumps({"kind": gate.KIND, "version": 1, "model": "rexnet_100", "engines": {}}))
    r = run("v1.json")
    assert r.returncode == 2 and "has version 1" in r.stderr, r.stderr
    committed = gate.load(REPO / "benchmarks" / "baseline.json")
    assert "avx2" in committed["classes"]  # measured on an AVX2-only AMD EPYC


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


@pytest.mark.long  # builds every backend this host runs (11 s); tests/test_matrix.py keeps matrix in the default tier
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
        assert row["check"]["top1_agreement"] == 1.0 and row["size_mb"] > 1 and row["speedup_first_batch"] > 0
        assert row["eval"] is None and row["refused"] is None  # no --eval-images; the gate passed
        assert (out / "engines" / key.replace("/", "-") / "manifest.json").is_file()
    assert "INT8 needs --calib" in rows["tensorrt/int8"]["skipped"]
    from rexnet_deploy.backends import _trt

    if _trt.host_problem():
        assert "TensorRT GPU host" in rows["tensorrt/fp16"]["skipped"]
    md = (out / "matrix.md").read_text()
    assert "| torchscript/fp32 |" in md and "skipped:" in md and md.strip() in r.stdout
    assert "/ eval" not in md
    if (out / "matrix.png").exists():
        assert (out / "matrix.png").read_bytes()[:4] == b"\x89PNG"


def test_matrix_bad_input(tmp_path):
    expect_error(run_cli("matrix", "--weights", "random", "--calib", str(tmp_path / "nope"), "--out", str(tmp_path / "m"),
                         "-q"), "--calib", "does not exist")
    expect_error(run_cli("matrix", "--weights", "random", "--batch", "0", "--out", str(tmp_path / "m"), "-q"),
                 "batch sizes")
