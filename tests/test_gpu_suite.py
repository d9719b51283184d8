"""The GPU suite's logic on the CPU: targets, rows, budget, report files, arguments, its imports on a
bare host, the no-GPU refusal, the pt2 rows' logic on fakes (build policy, alternating rounds,
ratios, the build child), and (long) its whole dry run and a pt2 dry run that builds on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from benchmarks import gpu_suite as gs
from rexnet_deploy.harness.suite import ChildRun, Row, alternate, exit_status, judge, target_text

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


# -- the pt2 rows' machinery, on fakes -------------------------------------------------------------
def test_alternate_interleaves_the_runners_and_takes_medians():
    calls = []

    def measure(name, p50s):
        figures = iter(p50s)

        def m():
            calls.append(name)
            p50 = next(figures)
            return {"p50_ms": p50, "throughput_ips": 1000.0 / p50}
        return m

    got = alternate({"a": measure("a", [3.0, 1.0, 2.0]), "b": measure("b", [5.0, 4.0, 10.0])}, rounds=3)
    assert calls == ["a", "b"] * 3  # alternating, not one runner's rounds then the other's
    assert got["a"] == {"p50_ms": 2.0, "throughput_ips": 500.0, "rounds_p50_ms": [3.0, 1.0, 2.0]}
    assert got["b"]["p50_ms"] == 5.0 and got["b"]["throughput_ips"] == 200.0
    with pytest.raises(ValueError):
        alternate({}, rounds=3)


def test_attempt_turns_one_rows_exception_into_its_error_row(tmp_path):
    suite = gs.GpuSuite(_cfg(tmp_path))
    with suite.attempt("pt2 fp16", "b256 timing"):
        raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore lines")
    with suite.attempt("pt2 fp16", "b1 timing"):
        suite.add("pt2 fp16", "b1 p50 (tensor I/O)", 0.5, "ms")
    assert [(r.name, r.status, r.note) for r in suite.rows] == [
        ("b256 timing", "error", "RuntimeError: CUDA error: an illegal memory access was encountered"),
        ("b1 p50 (tensor I/O)", "info", "")]


def _gone(pid: int, wait: float = 10.0) -> bool:
    """The process has ended (a zombie that nobody reaps counts as ended)."""
    end = time.monotonic() + wait
    while time.monotonic() < end:
        try:
            if "State:\tZ" in Path(f"/proc/{pid}/status").read_text():
                return True
        except FileNotFoundError:
            return True
        time.sleep(0.1)
    return False


def test_run_child_kills_the_whole_group_at_its_timeout_or_on_kill_children(tmp_path):
    """A max_autotune build compiles in worker processes: its timeout (and the watchdog) must end them all."""
    suite = gs.GpuSuite(_cfg(tmp_path))
    pidfile = tmp_path / "worker.pid"
    code = ("import subprocess, sys, time\n"
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
            f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
            "print('started', flush=True)\n"
            "time.sleep(120)\n")
    t = time.monotonic()
    run = suite.run_child([sys.executable, "-c", code], timeout=4.0)
    assert run.timed_out and run.returncode is None and not run.ok and "started" in run.stdout
    assert time.monotonic() - t < 30 and _gone(int(pidfile.read_text()))
    threading.Timer(1.0, suite.kill_children).start()
    run = suite.run_child([sys.executable, "-c", "import time; time.sleep(120)"], timeout=120)
    assert run.returncode == -9 and not run.timed_out and run.seconds < 30
    run = suite.run_child([sys.executable, "-c", "print('fine')"], timeout=120)
    assert run.ok and run.stdout.strip() == "fine" and not suite._children


def test_parse_child_reads_the_result_line_or_one_line_of_what_went_wrong():
    tag = gs.CHILD_TAG
    ok = gs.parse_child(ChildRun(0, 50.0, f"a log line\n{tag}{json.dumps({'build_s': 42.0, 'export_s': 5.0})}\n", "",
                                 False))
    assert ok["ok"] and ok["build_s"] == 42.0 and ok["seconds"] == 50.0 and ok["error"] is None
    failed = gs.parse_child(ChildRun(1, 3.0, f"{tag}{json.dumps({'error': 'BuildError: no'})}\n", "Traceback", False))
    assert not failed["ok"] and failed["error"] == "BuildError: no"
    crashed = gs.parse_child(ChildRun(-11, 3.0, "", "a warning\nSegmentation fault\n\n", False))
    assert not crashed["ok"] and crashed["error"] == "the build process exited with status -11: Segmentation fault"
    killed = gs.parse_child(ChildRun(None, 240.5, "", "", True))
    assert killed["timed_out"] and not killed["ok"] and killed["error"] is None
    silent = gs.parse_child(ChildRun(0, 3.0, "", "", False))
    assert not silent["ok"] and silent["error"] == "the build process printed no result"


def _checks(tmp_path: Path, clock=None, **kw):
    import torch

    suite = gs.GpuSuite(_cfg(tmp_path, **kw), clock=clock or FakeClock())
    checks = gs.GpuChecks(suite, torch)
    checks.work = tmp_path / "work"
    return suite, checks


def _fake_builds(clock: FakeClock, outcomes: dict[bool, str], plain_s: float = 80.0):
    """pt2_child_build on a fake clock: per max_autotune on/off, 'ok', 'timeout' or 'error'."""
    builds = []

    def build(precision, path, autotune, timeout):
        builds.append((autotune, timeout))
        outcome = outcomes[autotune]
        clock.now += timeout if outcome == "timeout" else plain_s
        if outcome == "ok":
            return {"ok": True, "timed_out": False, "seconds": plain_s + 5, "build_s": plain_s, "error": None,
                    "precision": precision, "max_autotune": autotune, "export_s": 5.0, "compile_s": 60.0}
        return {"ok": False, "timed_out": outcome == "timeout", "seconds": timeout + 0.5,
                "error": None if outcome == "timeout" else "BuildError: the package differs"}
    return build, builds


@pytest.mark.parametrize("case", ["autotune ok", "autotune killed", "autotune fails", "no budget for autotune",
                                  "--no-max-autotune", "both fail"])
def test_pt2_build_policy(tmp_path, monkeypatch, case):
    """max_autotune within its cap and the budget; killed at the cap (a judged row) or failed, it
    is rebuilt without; with too little budget it is not tried; every row says why."""
    clock = FakeClock()
    suite, checks = _checks(tmp_path, clock, budget=420.0, pt2_build_cap=240.0,
                            pt2_autotune=case != "--no-max-autotune")
    assert checks.cuda  # the GPU's policy (nothing here touches CUDA)
    outcomes = {"autotune ok": {True: "ok"}, "autotune killed": {True: "timeout", False: "ok"},
                "autotune fails": {True: "error", False: "ok"}, "no budget for autotune": {False: "ok"},
                "--no-max-autotune": {False: "ok"}, "both fail": {True: "error", False: "timeout"}}[case]
    build, builds = _fake_builds(clock, outcomes)
    monkeypatch.setattr(checks, "pt2_child_build", build)
    clock.now = 250.0 if case == "no budget for autotune" else 0.0  # 170 s left: 110 s for a build
    assert checks.pt2_build("pt2 fp16", "fp16", tmp_path / "p") == (case != "both fail")
    rows = [(r.name, r.status, r.target) for r in suite.rows]
    notes = " | ".join(r.note for r in suite.rows)
    if case == "autotune ok":
        assert builds == [(True, 240.0)] and rows == [("build (max_autotune)", "info", "")]
        assert "backend_options={'max_autotune': True}" in notes and "AOTInductor compile 60.0 s" in notes
    elif case == "autotune killed":  # 240 s gone: 180 left, 60 kept for the measurements
        assert builds == [(True, 240.0), (False, 120.0)]
        assert rows == [("build (max_autotune)", "fail", "<= 240"), ("build (no max_autotune)", "info", "")]
        assert "did not finish in 240 s" in suite.rows[1].note
    elif case == "autotune fails":
        assert builds == [(True, 240.0), (False, 280.0)]  # 80 s gone, 60 kept
        assert rows == [("build (max_autotune)", "error", ""), ("build (no max_autotune)", "info", "")]
        assert suite.rows[0].note == "BuildError: the package differs"
    elif case == "no budget for autotune":
        assert builds == [(False, 110.0)] and "time budget: 170 s left" in suite.rows[0].note
    elif case == "--no-max-autotune":
        assert builds == [(False, 300.0)] and suite.rows[0].note.endswith("; --no-max-autotune")
    else:
        assert [r[:2] for r in rows] == [("build (max_autotune)", "error"), ("build (no max_autotune)", "fail")]


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_pt2_compare_times_alternately_and_judges_fp16_against_torch_compile(tmp_path, monkeypatch, precision):
    suite, checks = _checks(tmp_path, dry_run=True, batches=(1, 2))
    checks.engine = "torchscript"  # steady is faked: runners are names
    p50 = {"pt2": {1: 0.5, 2: 0.05}, "compile": {1: 0.4, 2: 0.1}, "torchscript": {1: 0.8, 2: 0.2}}
    timed = []

    def steady(fn, x, seconds=None, min_warm=None):
        assert min_warm == 0.25  # every runner was warmed before: a short floor
        timed.append((fn, len(x)))
        return {"p50_ms": p50[fn][len(x)], "throughput_ips": len(x) * 1e3 / p50[fn][len(x)]}

    monkeypatch.setattr(checks, "steady", steady)
    checks.compile_fns = {1: "compile", 2: "compile"}
    for b in (1, 2):
        checks.pt2_compare("pt2 x", "pt2", b, judged=precision == "fp16")
    assert timed[:3] == [("pt2", 1), ("compile", 1), ("torchscript", 1)] and len(timed) == 18
    rows = {r.name: r for r in suite.rows}
    vs_compile_b1, vs_compile_b2 = rows[f"b1 p50 / {gs.COMPILE} b1 p50"], rows[f"b2 img/s / {gs.COMPILE} b2 img/s"]
    assert rows["b1 p50 (tensor I/O)"].value == 0.5 and rows["b2 img/s (tensor I/O)"].value == pytest.approx(40000)
    assert vs_compile_b1.value == pytest.approx(1.25) and vs_compile_b2.value == pytest.approx(2.0)
    assert rows["b1 p50 / torchscript b1 p50"].value == pytest.approx(0.625)
    assert rows["b1 p50 / torchscript b1 p50"].status == "info"
    if precision == "fp16":  # b1 slower than torch.compile: fail; b2 twice its img/s: pass; the stretch met
        assert (vs_compile_b1.status, vs_compile_b1.target) == ("fail", "<= 1")
        assert (vs_compile_b2.status, vs_compile_b2.target) == ("pass", ">= 1")
        assert rows["b2 img/s, stretch goal"].status == "pass"
    else:  # BF16 has no target
        assert vs_compile_b1.status == vs_compile_b2.status == "info" and "b2 img/s, stretch goal" not in rows
    checks.compile_fns, checks.compile_why = {}, "--no-compile"
    checks.pt2_compare("pt2 y", "pt2", 1, judged=True)
    skipped = [r for r in suite.rows if r.section == "pt2 y" and r.status == "skip"]
    assert [(r.name, r.note) for r in skipped] == [(f"b1 p50 / {gs.COMPILE} b1 p50", "--no-compile")]


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
    assert cfg.pt2 == ("fp16",) and cfg.pt2_autotune and cfg.skip == ()  # the dry run builds one pt2 package
    cfg = gs.parse_args(["--pt2", "bf16", "--no-max-autotune", "--pt2-build-cap", "90", "--skip", "bench, fp32"])
    assert cfg.pt2 == ("bf16",) and not cfg.pt2_autotune and cfg.pt2_build_cap == 90.0 and cfg.skip == ("bench", "fp32")
    assert gs.parse_args([]).pt2 == ("fp16", "bf16") and gs.parse_args(["--pt2", "none"]).pt2 == ()
    with pytest.raises(SystemExit) as e:
        gs.parse_args(["--device", "cpu"])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        gs.parse_args(["--weights", "missing.safetensors"])
    for bad in (["--skip", "setup"], ["--pt2", "int8"]):
        with pytest.raises(SystemExit) as e:
            gs.parse_args(bad)
        assert e.value.code == 2


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
    args = ["--dry-run", "--budget", "600", "--skip", "pt2"] + (["--dev", str(dev)] if dev.is_dir() else [])
    r = subprocess.run([sys.executable, "-m", "benchmarks.gpu_suite", str(tmp_path / "out"), *args],
                       capture_output=True, text=True, timeout=900, env=_bare_host_env(tmp_path), cwd=REPO)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    data = json.loads((tmp_path / "out" / "gpu_suite.json").read_text())
    assert data["summary"]["error"] == 0, [row for row in data["rows"] if row["status"] == "error"]
    not_ran = {name: s["status"] for name, s in data["sections"].items() if s["status"] != "ran"}
    assert not_ran == {"pt2 fp32 standing in for fp16": "not run", "pt2 bf16": "not run"}, data["sections"]
    assert {row["note"] for row in data["rows"] if row["section"].startswith("pt2")} == {"--skip pt2"}
    names = {(row["section"], row["name"]): row for row in data["rows"]}
    assert names[("hand-timed loop", "engine b1 p50 (alternating with the hand loop) / hand loop")]["target"] == "1 ± 0.1"
    assert names[("cuda graphs", "torchscript cuda_graph b1 / eager CUDA graph b1")]["status"] == "skip"
    assert names[("tensor I/O (cpu)", "tensor vs numpy outputs, max abs diff")]["status"] == "pass"
    assert names[("tensorrt", "fp16")]["note"].startswith("tensorrt does not import")
    assert {"torchscript fp32 standing in for fp16 (numpy I/O)", "torchscript fp32 (numpy I/O)"} <= set(data["bench"])
    assert (tmp_path / "out" / "gpu_suite.md").read_text().startswith("# GPU suite: cpu")


@pytest.mark.slow
@pytest.mark.long  # a pt2 package built on the CPU through the build API, in the suite's child process (~100 s)
def test_pt2_dry_run_builds_through_the_build_api_and_times_against_torchscript(tmp_path):
    """The pt2 section's code on the CPU up to where CUDA is needed: the bounded child build
    (rexnet_deploy.build, pt2 FP32 standing in for FP16), load and first-call rows, the check,
    alternating rounds against TorchScript, ratio rows; CUDA-graph and torch.compile rows skipped."""
    from .conftest import SHARED

    dev = SHARED / "data" / "imagenet-sample" / "dev"
    args = ["--dry-run", "--budget", "600", "--work", str(tmp_path / "work"),
            "--skip", "cuda-graphs,device-io,bench,hand-loop,first-calls,fp32,tensorrt"]
    args += ["--dev", str(dev)] if dev.is_dir() else []
    r = subprocess.run([sys.executable, "-m", "benchmarks.gpu_suite", str(tmp_path / "out"), *args],
                       capture_output=True, text=True, timeout=900, env=_bare_host_env(tmp_path), cwd=REPO)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    data = json.loads((tmp_path / "out" / "gpu_suite.json").read_text())
    assert data["summary"]["error"] == 0, [row for row in data["rows"] if row["status"] == "error"]
    sec = "pt2 fp32 standing in for fp16"
    assert data["sections"][sec]["status"] == "ran"
    rows = {row["name"]: row for row in data["rows"] if row["section"] == sec}
    build = rows["build (no max_autotune)"]
    assert build["value"] > 0 and "BuildSpec(backend='pt2', device='cpu', precision='fp32')" in build["note"]
    assert "dry run: no max_autotune" in build["note"] and "AOTInductor compile" in build["note"]
    assert gs.CHILD_TAG in (tmp_path / "out" / "pt2-fp32-plain.log").read_text()  # the child's output comes back
    manifest = json.loads((tmp_path / "work" / "pt2-fp32" / "manifest.json").read_text())
    assert (manifest["backend"], manifest["precision"], manifest["device"]) == ("pt2", "fp32", "cpu")
    for name in ("package load (no warm-up)", "first call b1 after that load (tensor I/O)", "load with warm-up",
                 "b1 first call after the load (tensor I/O)", "b2 first call after the load (tensor I/O)",
                 "b1 p50 (tensor I/O)", "b2 img/s (tensor I/O)", "b1 p50 / torchscript b1 p50",
                 "b2 img/s / torchscript b2 img/s", "AOTI module called directly, b1 p50"):
        assert isinstance(rows[name]["value"], float) and rows[name]["value"] > 0, (name, rows.get(name))
    assert rows["b1 p50 / torchscript b1 p50"]["status"] == "info"
    assert "median of 3 alternating rounds (pt2 " in rows["b1 p50 (tensor I/O)"]["note"]
    assert rows["cuda_graph replay"]["status"] == "skip"
    for name in (f"b1 p50 / {gs.COMPILE} b1 p50", f"b2 img/s / {gs.COMPILE} b2 img/s"):
        assert rows[name]["status"] == "skip" and rows[name]["note"].startswith("dry run: torch.compile")
    assert rows["b2 img/s, stretch goal"]["status"] == "info"  # a CPU is not 30k img/s
    if dev.is_dir():
        assert rows["check on dev photos (dev)"]["status"] == "pass"
    assert {row["status"] for row in data["rows"] if row["section"] == "pt2 bf16"} == {"skip"}


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
