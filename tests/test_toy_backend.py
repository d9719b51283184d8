"""A new backend is one module and one row: the toy backend (tests/toy_backend.py), registered
here and nowhere else, is listed by ``backends``, gets its build flag in ``build`` and its
``--help``, is built, checked and run by ``build``, measured by ``matrix`` and exported by
``export-triton`` — and the registry's generic checks (head, device, options, load options) hold
for it. The CLI runs in this process (click's runner): the registration is this process's."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

import pytest

from rexnet_deploy import Engine, backends
from rexnet_deploy.errors import UsageError

from . import toy_backend
from .conftest import cli_in_process

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def toy():
    backends.register(toy_backend.INFO)
    yield toy_backend.INFO
    backends.unregister("toy")


def _cli(*args: str):
    r = cli_in_process(*args)
    return r.returncode, r.stdout, r.stderr


@pytest.fixture(scope="module")
def toy_artifact(toy, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("toy") / "engine"
    code, stdout, stderr = _cli("build", "--backend", "toy", "--weights", "random", "--batch", "1:2", "--synthetic", "2",
                                "--out", str(out), "-q")
    assert code == 0, stderr
    assert f"built {out} (toy fp32, rexnet_100)" in stdout and "gate: **passed**" in stdout
    return out


def test_register_refuses_a_taken_name_and_unregister_undoes(toy):
    with pytest.raises(UsageError, match="already registered"):
        backends.register(toy)
    assert backends.get("toy") is toy
    twin = dataclasses.replace(toy, name="toy2")
    backends.register(twin)
    assert backends.unregister("toy2") is twin and "toy2" not in backends.BACKENDS
    with pytest.raises(UsageError, match="unknown backend 'toy2'"):
        backends.get("toy2")


def test_listed_by_backends_with_its_flag_in_build_help(toy):
    code, stdout, _ = _cli("backends")
    line = next(line for line in stdout.splitlines() if line.startswith("toy "))
    assert code == 0 and "fp32" in line and "ready" in line and toy.summary in line
    code, stdout, _ = _cli("build", "--help")
    assert code == 0 and "--toy-note" in stdout and "Toy: a note the build records" in stdout and "[hello]" in stdout


@pytest.mark.slow
def test_built_with_its_default_option_and_run(toy_artifact):
    manifest = json.loads((toy_artifact / "manifest.json").read_text())
    assert manifest["backend"] == "toy" and manifest["backend_config"]["toy_note"] == "hello"  # the row's default
    with Engine.load(toy_artifact, threads=1) as engine:
        x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
        (logits,) = engine.infer(x)
    assert logits.shape == (2, 1000)


@pytest.mark.parametrize("args,message", [
    (["--head", "embed"], "backend toy does not support --head embed (it supports classify)"),
    (["--device", "cuda"], "the toy backend builds CPU engines; --device cuda is not supported (use --device cpu)"),
    (["--int8"], "backend toy does not support int8 (it supports fp32)"),
    (["--preset", "mixed"], "the toy backend does not take --preset"),
    (["--toy-note", " "], "--toy-note must not be blank"),  # its own rule, after the generic ones
])
def test_the_generic_checks_hold_for_it(toy, tmp_path, args, message):
    code, _, stderr = _cli("build", "--backend", "toy", "--weights", "random", "--out", str(tmp_path / "e"), "-q", *args)
    assert code == 2 and stderr.strip() == f"error: {message}"
    assert not (tmp_path / "e").exists()


def test_its_flag_is_refused_by_other_backends(toy, tmp_path):
    code, _, stderr = _cli("build", "--backend", "torchscript", "--weights", "random", "--toy-note", "x",
                           "--out", str(tmp_path / "e"), "-q")
    assert code == 2 and "the torchscript backend takes no build options (--toy-note)" in stderr


@pytest.mark.slow
def test_unknown_load_options_are_refused_once_for_it(toy_artifact):
    with pytest.raises(UsageError, match=r"unknown toy options: turbo \(known: threads\)"):
        Engine.load(toy_artifact, turbo=True)


@pytest.mark.slow
def test_measured_by_matrix(toy, tmp_path, image_dir):
    from rexnet_deploy import matrix

    assert matrix.candidates(["toy"]) == [("toy", "fp32")] and ("toy", "fp32") in matrix.candidates()
    out = tmp_path / "m"
    code, stdout, stderr = _cli("matrix", "--weights", "random", "--only", "toy", "--images", str(image_dir),
                                "--batch", "1", "--seconds", "0.1", "--out", str(out), "-q")
    assert code == 0, stderr
    (row,) = json.loads((out / "matrix.json").read_text())["rows"]
    assert row["engine"] == "toy/fp32" and row["gate"] is True and row["throughput_last_batch"] > 0
    assert "| toy/fp32 |" in stdout


@pytest.mark.slow
def test_exported_to_triton(toy_artifact, tmp_path):
    code, stdout, stderr = _cli("export-triton", str(toy_artifact), "--repo", str(tmp_path / "repo"), "--name", "toy")
    assert code == 0, stderr
    assert "onnxruntime_onnx, max_batch_size 2, KIND_CPU" in stdout
    folder = tmp_path / "repo" / "toy"
    assert (folder / "1" / "model.onnx").read_bytes() == (toy_artifact / "model.onnx").read_bytes()
    assert 'platform: "onnxruntime_onnx"' in (folder / "config.pbtxt").read_text()
