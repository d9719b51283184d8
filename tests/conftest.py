"""Shared fixtures: one seeded artifact per backend and precision a session needs (each built by the cheapest
recipe that tests what its users claim), generated images, optional shared data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_CALIB = SHARED / "data" / "imagenet-sample" / "calib"
SHARED_WEIGHTS = SHARED / "models" / "rexnet_100-exemplar400.safetensors"


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    skip_shared = pytest.mark.skip(reason=f"optional shared data not present ({SHARED})")
    have_shared = SHARED_CALIB.is_dir() and SHARED_WEIGHTS.is_file()
    for item in items:
        # markers, not keywords: pytest adds folder names to the keywords (a checkout at .../gpu)
        if item.get_closest_marker("gpu") is not None and not _cuda():
            item.add_marker(skip_gpu)
        if item.get_closest_marker("shared_data") is not None and not have_shared:
            item.add_marker(skip_shared)


@pytest.fixture(scope="session")
def ts_engine_path(tmp_path_factory) -> Path:
    """A TorchScript FP32 artifact of rexnet_100 with random weights (seed 0), batch 1..8."""
    from rexnet_deploy import BuildSpec, ModelSpec, WeightsSpec, build

    out = tmp_path_factory.mktemp("engines") / "ts"
    engine = build(ModelSpec("rexnet_100", weights=WeightsSpec("random", seed=0)),
                   BuildSpec(backend="torchscript", batch=(1, 8)), out, check_options={"synthetic": 8})
    engine.close()
    return out


@pytest.fixture()
def engine_copy(ts_engine_path, tmp_path) -> Path:
    """A private copy of the session artifact, for tests that modify it."""
    import shutil

    dst = tmp_path / "engine"
    shutil.copytree(ts_engine_path, dst)
    return dst


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory) -> Path:
    """Six generated JPEG/PNG photos-like images of different sizes and modes."""
    from rexnet_deploy.synthetic import synthetic_images

    d = tmp_path_factory.mktemp("images")
    for i, img in enumerate(synthetic_images(6, seed=7)):
        if i == 4:
            img = img.convert("L")  # a greyscale file, converted to RGB on load
        img.save(d / (f"img{i}.jpg" if i % 2 == 0 else f"img{i}.png"), quality=92)
    return d


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None):
    """Run the installed console script in a fresh process; returns CompletedProcess."""
    import subprocess
    import sys

    exe = Path(sys.executable).parent / "rexnet-deploy"
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([str(exe), *args], capture_output=True, text=True, cwd=cwd, env=full_env, timeout=600)


def cli_in_process(*args: str):
    """The CLI called in this process (click's runner): the same exit code, stdout and stderr as
    :func:`run_cli` without a fresh interpreter importing torch and timm again (about 4 s a call).
    For tests of what a command does; tests of the console script itself use :func:`run_cli`."""
    import subprocess

    from click.testing import CliRunner

    from rexnet_deploy.cli import main

    result = CliRunner().invoke(main, list(args), prog_name="rexnet-deploy")
    return subprocess.CompletedProcess(["rexnet-deploy", *args], result.exit_code, result.stdout, result.stderr)


@pytest.fixture(scope="session")
def calib_dir(tmp_path_factory) -> Path:
    """A generated ImageFolder: 4 class folders × 10 photo-like JPEGs."""
    from rexnet_deploy.synthetic import synthetic_images

    d = tmp_path_factory.mktemp("calib")
    for i, img in enumerate(synthetic_images(40, seed=11)):
        folder = d / f"class{i % 4}"
        folder.mkdir(exist_ok=True)
        img.save(folder / f"img{i:02d}.jpg", quality=90)
    return d


def build_artifact(tmp_path_factory, name: str, backend: str, precision: str, *, batch_opt: int | None = None,
                   **kwargs) -> Path:
    """A rexnet_100 artifact (random weights, seed 0, batch 1..8); ``kwargs`` go to ``rexnet_deploy.build``."""
    from rexnet_deploy import BuildSpec, ModelSpec, WeightsSpec, build

    out = tmp_path_factory.mktemp("engines") / name
    build(ModelSpec("rexnet_100", weights=WeightsSpec("random", seed=0)),
          BuildSpec(backend=backend, precision=precision, batch=(1, 8), batch_opt=batch_opt), out, **kwargs).close()
    return out


@pytest.fixture(scope="session")
def pt2_fp32_path(tmp_path_factory) -> Path:
    """A pt2 (torch.export + AOTInductor) FP32 package of rexnet_100, random weights (seed 0), batch 1..8
    (about 40 s: the C++ compile)."""
    return build_artifact(tmp_path_factory, "pt2-fp32", "pt2", "fp32", check_options={"synthetic": 8})


def _ov_build(tmp_path_factory, name: str, precision: str, **kwargs) -> Path:
    pytest.importorskip("openvino")
    return build_artifact(tmp_path_factory, name, "openvino", precision, **kwargs)


@pytest.fixture(scope="session")
def ov_fp32_path(tmp_path_factory) -> Path:
    """An OpenVINO FP32 artifact of rexnet_100 (random weights, seed 0), batch 1..8."""
    return _ov_build(tmp_path_factory, "ov-fp32", "fp32", check_options={"synthetic": 8})


@pytest.fixture(scope="session")
def ov_int8_path(tmp_path_factory, calib_dir) -> Path:
    """An OpenVINO INT8 artifact calibrated on 24 of the 40 generated images (16 held out), by the
    fast post-training ``rexnet`` recipe, pinned (``qad`` distils for minutes, whichever is the
    default; test_qad.py covers it).
    Random weights have flat logits, so only the gate's cosine/SQNR parts are meaningful here."""
    pytest.importorskip("nncf")
    return _ov_build(tmp_path_factory, "ov-int8", "int8", calib=calib_dir, calib_size=24,
                     backend_options={"recipe": "rexnet"}, check_options={"gate": {"top1_agreement": 0.0}})


@pytest.fixture(scope="session")
def trt_int8_rexnet(tmp_path_factory, calib_dir) -> tuple[Path, list[str]]:
    """(artifact, build log lines) of a TensorRT INT8 graph by the ``rexnet`` recipe: ModelOpt's
    PyTorch PTQ (BatchNorm folded; SE gates, depthwise convolutions and the global-pool input
    unquantized), exported, then converted to FP16 outside the Q/DQ pairs; batch 1:4:8, calibrated
    on 24 of the 40 generated images. The cheapest build of the PyTorch Q/DQ path: the default
    ``qad`` recipe is this plus distillation steps, tested at a few steps in test_qad.py."""
    pytest.importorskip("modelopt.torch.quantization")
    pytest.importorskip("onnxruntime")
    logs: list[str] = []
    out = build_artifact(tmp_path_factory, "trt-int8-rexnet", "tensorrt", "int8", batch_opt=4, calib=calib_dir,
                         calib_size=24, backend_options={"recipe": "rexnet"}, log=logs.append,
                         check_options={"gate": {"top1_agreement": 0.0}})
    return out, logs


def fresh_process_predict(artifact: Path, image: Path) -> dict:
    """``Engine.load`` + one ``predict`` in a new Python process: which heavy modules it imported,
    the number of predictions, and its peak RSS in MB (VmHWM; ``ru_maxrss`` survives exec and
    would report the size of the forking pytest process)."""
    import json
    import subprocess
    import sys

    code = (
        "import json, sys\n"
        "from rexnet_deploy import Engine\n"
        f"p = Engine.load({str(artifact)!r}).predict({str(image)!r}, topk=3)\n"
        "hwm = next(l for l in open('/proc/self/status') if l.startswith('VmHWM'))\n"
        "print(json.dumps({'imported': sorted(m for m in ('torch', 'timm', 'nncf') if m in sys.modules),"
        " 'n': len(p[0]), 'rss_mb': int(hwm.split()[1]) / 1024}))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def error_line(r, code: int = 2) -> str:
    """The single stderr line of a refused command, after checking the exit code and no traceback."""
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == code, f"exit {r.returncode}, expected {code}; stderr: {r.stderr!r}"
    assert len(lines) == 1, f"expected exactly one stderr line, got {lines!r}"
    assert lines[0].startswith("error: "), lines[0]
    assert not lines[0].startswith("error: unexpected"), lines[0]  # the exit-70 "this is a bug" path
    return lines[0]


def expect_error(r, *fragments: str, code: int = 2) -> str:
    line = error_line(r, code)
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    return line


def without_module(tmp_path: Path, module: str) -> dict:
    """Environment for a subprocess in which ``module`` looks uninstalled to importlib.util.find_spec."""
    site = tmp_path / f"without-{module}"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import importlib.util as u\n_f = u.find_spec\n"
        f"u.find_spec = lambda n, *a, **k: None if n.split('.')[0] == {module!r} else _f(n, *a, **k)\n")
    return {"PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
