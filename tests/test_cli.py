"""The five user commands of the issue, end to end, in fresh processes."""

from __future__ import annotations

import json

import pytest

from .conftest import run_cli

pytestmark = pytest.mark.slow


def test_build_check_bench_predict_info(tmp_path, image_dir):
    out = tmp_path / "engines" / "ts"
    r = run_cli("build", "--model", "rexnet_100", "--backend", "torchscript", "--weights", "random", "--seed", "0",
                "--batch", "1:4", "--synthetic", "4", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "not for production" in r.stderr and "gate: **passed**" in r.stdout
    assert (out / "manifest.json").is_file()

    csv = tmp_path / "labels.csv"
    csv.write_text("file,class_index\n" + "".join(f"{p.name},{i}\n" for i, p in enumerate(sorted(image_dir.iterdir()))))
    r = run_cli("check", str(out), "--images", str(image_dir), "--labels", str(csv), "--json", str(tmp_path / "check.json"), "-q")
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "check.json").read_text())
    assert report["n_images"] == 6 and report["gate"]["passed"] is True and report["labelled"]["n"] == 6
    assert set(report["metrics"]) >= {"top1_agreement", "top5_agreement", "cosine_mean", "cosine_min", "sqnr_db", "max_abs_err"}
    assert "| top1_agreement | 1.0000 |" in r.stdout

    r = run_cli("bench", str(out), "--batch", "1,2", "--seconds", "0.2", "--json", str(tmp_path / "bench.json"), "-q")
    assert r.returncode == 0, r.stderr
    bench = json.loads((tmp_path / "bench.json").read_text())
    assert [x["batch"] for x in bench["results"]] == [1, 2] and set(bench["speedup"]) == {"1", "2"}
    assert "| batch | p50 ms |" in r.stdout

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["reports"]["check"]["n_images"] == 6 and manifest["reports"]["bench"]["results"]

    files = [str(p) for p in sorted(image_dir.iterdir())[:2]]
    r = run_cli("predict", str(out), *files, "--topk", "5", "--json")
    assert r.returncode == 0, r.stderr
    preds = json.loads(r.stdout)["results"]
    assert [p["image"] for p in preds] == files and all(len(p["top"]) == 5 for p in preds)
    r = run_cli("predict", str(out), files[0], "--topk", "2")
    assert r.returncode == 0 and r.stdout.count("%") == 2

    r = run_cli("info", str(out))
    assert r.returncode == 0, r.stderr
    assert "NOT FOR PRODUCTION" in r.stdout and "3 files verified" in r.stdout and "check: 6 images" in r.stdout
    r = run_cli("info", str(out), "--json")
    assert json.loads(r.stdout)["backend"] == "torchscript"


def test_check_gate_failure_exits_1_and_still_writes_the_report(ts_engine_path, tmp_path):
    import shutil

    eng = tmp_path / "e"
    shutil.copytree(ts_engine_path, eng)
    r = run_cli("check", str(eng), "--synthetic", "2", "--gate", "max_abs_err=0", "--gate", "sqnr_db=1000",
                "--json", str(tmp_path / "c.json"), "-q")
    assert r.returncode == 1
    assert r.stderr.strip().startswith("error: check gate failed") and "Traceback" not in r.stderr
    assert json.loads((tmp_path / "c.json").read_text())["gate"]["passed"] is False


def test_backends_and_models_listing():
    r = run_cli("backends")
    assert r.returncode == 0 and r.stdout.startswith("torchscript") and "ready" in r.stdout
    r = run_cli("models")
    assert r.returncode == 0 and "rexnet_100.nav_in1k" in r.stdout.split()
