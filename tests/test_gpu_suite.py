"""The GPU suite's logic on the CPU: targets, rows, budget, report files, arguments, its imports on a
bare host, the no-GPU refusal, and (slow) its whole dry run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks import gpu_suite as gs
from rexnet_deploy.harness.suite import Row, exit_status, judge, target_text

REPO = Path(__file__).resolve().parents[1]
# what a bare GPU host may lack: the suite must not need any of it
OPTIONAL = ("openvino", "nncf", "modelopt", "matplotlib", "click", "rich", "tensorrt", "onnxruntime", "typer", "tqdm")


def _bare_host_env(tmp_path: Path) -> dict:
    """A subprocess environment in which the OPTIONAL modules do not import (a meta-path blocker
    in sitecustomize), run from the repository as the GPU host does (PYTHONPATH=.)."""
    site = tmp_path / "bare-site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(
        "import sys, importlib.abc, importlib.util as u\n"
        f"BLOCK = {set(OPTIONAL)!r}\n"
        "class _Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in BLOCK:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r} (hidden by the test)', name=name)\n"
        "sys.meta_path.insert(0, _Block())\n"
        "_f = u.find_spec\n"
        "u.find_spec = lambda n, *a, **k: None if n.split('.')[0] in BLOCK else _f(n, *a, **k)\n")
    return {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{REPO}"}


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# -- targets and rows ------------------------------------------------------------------------------
def test_judge_each_target_kind():
    assert judge(1.19, "<=", 1.2) == "pass" and judge(1.21, "<=", 1.2) == "fail"
    assert judge(0.9, ">=", 0.9) == "pass" and judge(0.89, ">=", 0.9) == "fail"
    assert judge(1.09, "within", 0.1) == "pass" and judge(0.91, "within", 0.1) == "pass"
    assert judge(1.11, "within", 0.1) == "fail" and judge(0.89, "within", 0.1) == "fail"
    assert judge(float("nan"), ">=", 0.0) == "fail" and judge(None, "<=", 1.0) == "fail"
    assert target_text("within", 0.1) == "1 ± 0.1" and target_text(">=", 0.9) == ">= 0.9"
    with pytest.raises(ValueError):
        judge(1.0, "<", 2.0)


def test_exit_status_fails_on_fail_or_error_and_a_dry_run_on_errors_only():
    rows = [Row("s", "a", status="pass"), Row("s", "b", status="skip"), Row("s", "c", status="info")]
    assert exit_status(rows) == 0
    assert exit_status([*rows, Row("s", "d", status="fail")]) == 1
    assert exit_status([*rows, Row("s", "d", status="fail")], dry_run=True) == 0
    assert exit_status([*rows, Row("s", "d", status="error")], dry_run=True) == 1


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _cfg(tmp_path: Path, **kw) -> gs.Config:
    return gs.Config(out=tmp_path / "out", weights=None, dev=None, calib=None, **kw)


def test_sections_run_skip_on_budget_and_turn_exceptions_into_error_rows(tmp_path, capsys):
    clock = FakeClock()
    suite = gs.GpuSuite(_cfg(tmp_path, budget=100.0), clock=clock)

    def measures() -> None:
        clock.now += 30
        suite.add("fast", "b1 / eager graph b1", 1.1, "×", target=("<=", 1.2))
        suite.add("fast", "b256 img/s ratio", 0.8, "×", target=(">=", 0.9), note="a | pipe")

    def breaks() -> None:
        raise RuntimeError("CUDA error: out of memory\nmore lines")

    suite.run_section("fast", 10, measures, ["never used"])
    suite.run_section("broken", 10, breaks, ["never used"])
    clock.now = 95.0
    suite.run_section("late", 10, measures, ["late row 1", "late row 2"])
    rows = [(r.section, r.name, r.status) for r in suite.rows]
    assert rows == [("fast", "b1 / eager graph b1", "pass"), ("fast", "b256 img/s ratio", "fail"),
                    ("broken", "section", "error"), ("late", "late row 1", "skip"), ("late", "late row 2", "skip")]
    assert suite.rows[2].note == "RuntimeError: CUDA error: out of memory"
    assert suite.rows[3].note == "time budget: 5 s left, the section needs ~10 s"
    assert suite.sections["fast"] == {"status": "ran", "seconds": 30.0}
    assert suite.sections["broken"]["status"] == "error" and "RuntimeError" in suite.sections["broken"]["traceback"]
    assert suite.sections["late"]["status"] == "skipped"
    assert "FAIL" in capsys.readouterr().out  # each row is printed as it comes

    # the report files are (re)written after every section
    data = json.loads((tmp_path / "out" / "gpu_suite.json").read_text())
    assert data["kind"] == "rexnet-deploy-gpu-suite" and data["exit_status"] == 1
    assert data["summary"] == {"pass": 1, "fail": 1, "info": 0, "skip": 2, "error": 1}
    assert data["config"]["budget"] == 100.0 and len(data["rows"]) == 5
    md = (tmp_path / "out" / "gpu_suite.md").read_text()
    assert "| fast | b256 img/s ratio | 0.8 | × | >= 0.9 | **fail** | a / pipe |" in md
    assert "verdict: **FAILED**" in md


def test_markdown_appends_each_bench_table(tmp_path):
    suite = gs.GpuSuite(_cfg(tmp_path))
    row = {"batch": 1, "p50_ms": 2.0, "p90_ms": 2.1, "p99_ms": 2.5, "mean_ms": 2.05, "throughput_ips": 480.0,
           "first_call_ms": 2.2, "steady": True}
    ref = {**row, "p50_ms": 6.0, "throughput_ips": 160.0}
    suite.bench["torchscript fp16 (numpy I/O)"] = {
        "model": "rexnet_100", "engine": {"backend": "torchscript", "precision": "fp16"},
        "host": {"gpu": "NVIDIA H200", "cpu": "x", "cpu_count": 16}, "results": [row],
        "reference": {"kind": "torch eager fp32", "device": "cuda:0", "results": [ref]},
        "reference_fp16": {"kind": "torch eager fp16 autocast", "device": "cuda:0", "results": [ref]},
        "speedup": {"1": 3.0}, "speedup_vs_fp16_eager": {"1": 3.0}, "settings": {"io": "numpy"}}
    md = suite.markdown()
    assert "## torchscript fp16 (numpy I/O)" in md and "(NVIDIA H200; references: eager on cuda:0)" in md
    assert "| 1 | 2.00 | 2.10 | 2.50 | 2.05 | 480.0 | 2.2 | 6.00 | 160.0 | 3.00× | 6.00 | 160.0 | 3.00× |" in md


# -- arguments -------------------------------------------------------------------------------------
def test_arguments_and_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no gpu_carry/ or ../shared here: no defaults found
    monkeypatch.setenv("OUT", str(tmp_path / "from-env"))
    cfg = gs.parse_args([])
    assert cfg.out == tmp_path / "from-env" and cfg.weights is None and cfg.dev is None and not cfg.dry_run
    assert cfg.batches == (1, 32, 256) and cfg.batch_range == (1, 256) and cfg.budget == 420.0
    (tmp_path / "gpu_carry" / "dev").mkdir(parents=True)
    (tmp_path / "w.safetensors").write_bytes(b"")
    cfg = gs.parse_args(["given", "--dry-run", "--weights", "w.safetensors", "--budget", "60"])
    assert cfg.out == Path("given") and cfg.weights == Path("w.safetensors") and cfg.dev == Path("gpu_carry/dev")
    assert cfg.dry_run and cfg.device == "cpu" and cfg.batches == (1, 2) and cfg.budget == 60.0
    assert not cfg.with_compile
    with pytest.raises(SystemExit) as e:
        gs.parse_args(["--device", "cpu"])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        gs.parse_args(["--weights", "missing.safetensors"])


# -- processes -------------------------------------------------------------------------------------
def test_the_suite_and_its_engine_path_import_nothing_optional(tmp_path):
    """A bare GPU host has torch, timm, onnx, but maybe no click/rich, and no openvino/nncf/
    modelopt/matplotlib: the suite, the build and the TorchScript runtime must not need them."""
    code = ("import sys\n"
            "import benchmarks.gpu_suite, rexnet_deploy.builder, rexnet_deploy.backends.torchscript\n"
            "import rexnet_deploy.harness.bench, rexnet_deploy.harness.check, rexnet_deploy.harness.reference\n"
            f"print(sorted(m for m in {OPTIONAL!r} if m in sys.modules))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env=_bare_host_env(tmp_path), cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


@pytest.mark.skipif(_cuda(), reason="this host has a CUDA GPU: the suite would run")
def test_without_a_gpu_the_suite_refuses_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "benchmarks.gpu_suite", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=300, env=_bare_host_env(tmp_path), cwd=REPO)
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: no CUDA GPU: torch ") and "--dry-run" in lines[0]
    assert not (tmp_path / "out").exists()
    r = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_suite.sh"), str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 2 and "error: no CUDA GPU" in r.stderr


@pytest.mark.slow
@pytest.mark.long  # every section of the GPU suite on the CPU (18 s): a benchmark driver's whole run
def test_dry_run_on_a_bare_host_runs_every_section(tmp_path):
    """The whole suite on the CPU with the optional libraries hidden: no section may crash."""
    from .conftest import SHARED

    dev = SHARED / "data" / "imagenet-sample" / "dev"
    args = ["--dry-run", "--budget", "600"] + (["--dev", str(dev)] if dev.is_dir() else [])
    r = subprocess.run([sys.executable, "-m", "benchmarks.gpu_suite", str(tmp_path / "out"), *args],
                       capture_output=True, text=True, timeout=900, env=_bare_host_env(tmp_path), cwd=REPO)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    data = json.loads((tmp_path / "out" / "gpu_suite.json").read_text())
    assert data["summary"]["error"] == 0, [row for row in data["rows"] if row["status"] == "error"]
    assert all(s["status"] == "ran" for s in data["sections"].values()), data["sections"]
    names = {(row["section"], row["name"]): row for row in data["rows"]}
    assert names[("hand-timed loop", "engine b1 p50 (alternating with the hand loop) / hand loop")]["target"] == "1 ± 0.1"
    assert names[("cuda graphs", "torchscript cuda_graph b1 / eager CUDA graph b1")]["status"] == "skip"
    assert names[("tensor I/O (cpu)", "tensor vs numpy outputs, max abs diff")]["status"] == "pass"
    assert names[("tensorrt", "fp16")]["note"].startswith("tensorrt does not import")
    assert {"torchscript fp32 standing in for fp16 (numpy I/O)", "torchscript fp32 (numpy I/O)"} <= set(data["bench"])
    assert (tmp_path / "out" / "gpu_suite.md").read_text().startswith("# GPU suite: cpu")


def test_the_watchdog_writes_the_report_and_ends_a_stuck_run(tmp_path):
    """A stuck kernel or compile cannot be interrupted from Python: at budget + grace the
    watchdog writes what the suite has and ends the process (exit 124)."""
    code = ("import time\n"
            "from pathlib import Path\n"
            "from benchmarks import gpu_suite as gs\n"
            f"cfg = gs.Config(out=Path({str(tmp_path / 'out')!r}), weights=None, dev=None, calib=None, budget=0.5)\n"
            "suite = gs.GpuSuite(cfg)\n"
            "suite.add('setup', 'a row before', 1.0)\n"
            "gs._watchdog(suite, 1.0)\n"
            "time.sleep(60)\n")
    t = time.monotonic()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 124 and time.monotonic() - t < 30
    data = json.loads((tmp_path / "out" / "gpu_suite.json").read_text())
    assert [row["name"] for row in data["rows"]] == ["a row before", "hard time limit"]
    assert data["rows"][-1]["status"] == "error" and data["exit_status"] == 1
