"""The OpenVINO backend on the real library: FP32 exactness and pinned precision, INT8 through NNCF
on a calibration folder, static/dynamic shapes, throughput mode, threads, torch-free runtime."""

from __future__ import annotations

import json
import os
import threading

import numpy as np
import pytest

from rexnet_deploy import Engine
from rexnet_deploy.errors import ArtifactError

from .conftest import (SHARED_CALIB, SHARED_WEIGHTS, cli_in_process, expect_error, fresh_process_predict, run_cli,
                       without_module)

pytest.importorskip("openvino")
pytestmark = pytest.mark.slow


def _batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 224, 224)).astype(np.float32)


def _torch_reference(manifest):
    from rexnet_deploy.harness.reference import TorchReference

    return TorchReference.from_manifest(manifest)


def test_fp32_engine_runs_pinned_f32_and_matches_pytorch(ov_fp32_path):
    with Engine.load(ov_fp32_path) as engine:
        m = engine.manifest
        assert m.backend_config["inference_precision_hint"] == "f32"
        assert engine.inference_precision() == "f32"
        assert m.reports["check"]["metrics"]["top1_agreement"] == 1.0
        assert m.reports["check"]["metrics"]["cosine_min"] >= 0.9999
        ref = _torch_reference(m)
        for n in (1, 3, 8):
            x = _batch(n, n)
            np.testing.assert_allclose(engine(x), ref(x)[0], rtol=1e-3, atol=1e-3)


def test_latency_and_throughput_modes_agree(ov_fp32_path):
    x = _batch(7, 1)
    with Engine.load(ov_fp32_path, mode="latency") as lat, Engine.load(ov_fp32_path, mode="throughput") as tput:
        a, b = lat(x), tput(x)
        assert b.shape == (7, 1000)
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
        # infer() on more images than the batch range: chunks of 8 through the throughput path
        many = _batch(19, 2)
        np.testing.assert_allclose(tput.infer(many)[0], lat.infer(many)[0], rtol=1e-4, atol=1e-4)


def test_one_engine_is_safe_to_call_from_many_threads(ov_fp32_path):
    inputs = [_batch(n, 10 + i) for i, n in enumerate((1, 2, 8, 1, 5, 8, 3, 1))]
    with Engine.load(ov_fp32_path) as engine:
        want = [engine(x) for x in inputs]
        got: dict[int, list[np.ndarray]] = {}
        errors: list[BaseException] = []

        def work(t: int) -> None:
            try:
                got[t] = [engine(inputs[(t + k) % len(inputs)]) for k in range(len(inputs))]
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    assert not errors
    for t, outs in got.items():
        for k, out in enumerate(outs):
            np.testing.assert_allclose(out, want[(t + k) % len(inputs)], rtol=1e-5, atol=1e-5)


def test_int8_build_records_calibration_and_checks_on_held_out_images(ov_int8_path):
    with Engine.load(ov_int8_path) as engine:
        m = engine.manifest
        cal = m.calibration
        assert cal["n"] == 24 and cal["stratified"] and cal["classes"] == 4 and len(cal["list_sha256"]) == 64
        q = m.backend_config["quantization"]
        assert q["tool"] == "nncf" and q["fake_quantize_ops"] > 50
        assert m.backend_config["inference_precision_hint"] == "f32"
        report = m.reports["check"]
        assert report["n_images"] == 16  # the 40 - 24 images not used for calibration
        assert report["images"]["kind"] == "files" and report["images"]["calibration_overlap"] == 0
        assert report["metrics"]["cosine_mean"] > 0.9
        out = engine(_batch(4, 3))
        assert np.isfinite(out).all() and out.std() > 0


def test_int8_static_and_dynamic_shapes_agree(ov_int8_path):
    """The engine compiles static shapes; the IR's dynamic batch must give the same logits (a
    partly reverted INT8 model has returned all-zero logits at a dynamic shape)."""
    import openvino as ov

    with Engine.load(ov_int8_path) as engine:
        x = _batch(3, 4)
        static = engine(x)
        core = ov.Core()
        dynamic = core.compile_model(str(engine.artifact.file("model.xml")), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        np.testing.assert_allclose(dynamic(x)[0], static, rtol=1e-3, atol=1e-3)
        assert np.abs(static).max() > 0


def test_runtime_imports_neither_torch_nor_timm(ov_int8_path, image_dir):
    got = fresh_process_predict(ov_int8_path, next(image_dir.glob("*.jpg")))
    assert got["imported"] == [] and got["n"] == 3


def test_tampered_ir_is_refused(ov_fp32_path, tmp_path):
    import shutil

    copy = tmp_path / "ov"
    shutil.copytree(ov_fp32_path, copy)
    data = bytearray((copy / "model.bin").read_bytes())
    data[1000] ^= 0xFF
    (copy / "model.bin").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="checksum mismatch .*model.bin"):
        Engine.load(copy)
    r = cli_in_process("predict", str(copy), str(tmp_path))
    assert r.returncode == 2 and r.stderr.strip().startswith("error: checksum mismatch") and "Traceback" not in r.stderr


def test_check_and_bench_work_unchanged(ov_fp32_path):
    r = cli_in_process("bench", str(ov_fp32_path), "--batch", "1,8", "--seconds", "0.3", "--warmup", "1", "--no-save", "-q")
    assert r.returncode == 0, r.stderr
    assert "| 8 |" in r.stdout and "speedup" in r.stdout


@pytest.mark.shared_data
@pytest.mark.long  # a fidelity measurement: the default recipe and calibration sample on real photos, 100 checked
def test_stand_in_weights_int8_on_real_photos(tmp_path):
    """The post-training INT8 recipe (``rexnet``, the fast one) on trained-like weights, checked on held-out real photos."""
    r = cli_in_process("build", "--backend", "openvino", "--int8", "--recipe", "rexnet", "--calib", str(SHARED_CALIB), "--weights",
                str(SHARED_WEIGHTS), "--out", str(tmp_path / "e"), "--json", str(tmp_path / "m.json"), "-q")
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "m.json").read_text())
    metrics = m["reports"]["check"]["metrics"]
    assert m["reports"]["check"]["n_images"] == 100
    assert metrics["top1_agreement"] >= 0.96 and metrics["cosine_min"] >= 0.98  # measured 0.98 / 0.991


# -- bad input: one error line, exit 2, nothing written -----------------------------------------
def _build_args(tmp_path, *extra: str) -> list[str]:
    return ["build", "--backend", "openvino", "--weights", "random", "--out", str(tmp_path / "out"), "-q", *extra]


@pytest.mark.parametrize("make_args, fragments", [
    (lambda t, c: ["--int8"], ["--int8 needs calibration images", "--calib DIR"]),
    (lambda t, c: ["--calib", str(c)], ["--calib is for --int8 builds"]),
    (lambda t, c: ["--int8", "--calib", str(t)], ["no image files"]),
    (lambda t, c: ["--int8", "--calib", str(t / "nope")], ["calibration source not found"]),
    (lambda t, c: ["--int8", "--calib", str(c), "--max-drop", "1.5"], ["--max-drop"]),
    (lambda t, c: ["--preset", "mixed"], ["--preset is for --int8 builds"]),
    (lambda t, c: ["--device", "cuda"], ["builds CPU engines"]),
    (lambda t, c: ["--qad-steps", "10"], ["--qad-steps is for --int8 builds"]),
    (lambda t, c: ["--int8", "--calib", str(c), "--qad-steps", "-1"], ["--qad-steps must be between 0 and"]),
    (lambda t, c: ["--int8", "--calib", str(c), "--qad-steps", "1000000"], ["--qad-steps must be between 0 and"]),
    (lambda t, c: ["--int8", "--calib", str(c), "--qad-steps", "lots"], ["--qad-steps"]),
    (lambda t, c: ["--int8", "--calib", str(c), "--qad-steps", "5", "--recipe", "rexnet"],
     ["--qad-steps is for --recipe qad, not --recipe rexnet"]),
    (lambda t, c: ["--int8", "--calib", str(c), "--recipe", "qad", "--max-drop", "0.01"],
     ["does not combine with --recipe qad"]),
    (lambda t, c: ["--int8", "--calib", str(c), "--recipe", "best"], ["--recipe"]),
], ids=["int8-no-calib", "calib-not-int8", "calib-empty", "calib-missing", "max-drop-range", "preset-not-int8",
        "device-cuda", "qad-not-int8", "qad-negative", "qad-absurd", "qad-not-int", "qad-other-recipe",
        "qad-max-drop", "recipe-unknown"])
def test_bad_build_options_fail_fast(tmp_path, calib_dir, make_args, fragments):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = cli_in_process(*_build_args(tmp_path, *make_args(empty, calib_dir)))
    expect_error(r, *fragments)
    assert not (tmp_path / "out").exists()


def test_too_few_calibration_images(tmp_path, calib_dir):
    few = tmp_path / "few"
    few.mkdir()
    for f in sorted(calib_dir.rglob("*.jpg"))[:5]:
        (few / f.name).write_bytes(f.read_bytes())
    (few / "broken.jpg").write_bytes(b"\xff\xd8\xff broken")
    r = cli_in_process(*_build_args(tmp_path, "--int8", "--calib", str(few)))
    expect_error(r, "at least 16 readable images", "has 5 (1 unreadable)")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_missing_nncf_names_the_extra(tmp_path, calib_dir):
    r = run_cli(*_build_args(tmp_path, "--int8", "--calib", str(calib_dir)), env=without_module(tmp_path, "nncf"))
    expect_error(r, "needs nncf", "pip install 'rexnet-deploy[openvino]'")


def test_check_images_overlapping_calibration_warn(calib_dir):
    """Build-time overlap warning is checked via the library; the CLI check needs no rebuild."""
    from rexnet_deploy import calibration

    plan = calibration.select(calib_dir, 24)
    messages: list[str] = []
    from rexnet_deploy.builder import _plan_check_images

    plan.files = plan.candidates[:24]
    _plan_check_images(plan, {"images": calib_dir}, 100, messages.append)
    assert messages and "24 check image(s) are calibration images" in messages[0]


@pytest.mark.long  # NNCF's accuracy-control loop re-quantizes and re-evaluates the model (12 s)
def test_accuracy_control_path(tmp_path, calib_dir):
    """--max-drop goes through nncf.quantize_with_accuracy_control with the agreement metric; the
    result keeps its dynamic batch and is compiled static by the engine. (A loose drop keeps the
    test short: NNCF stops after the first validation; reverting layers takes minutes.)"""
    pytest.importorskip("nncf")
    from rexnet_deploy import BuildSpec, ModelSpec, WeightsSpec, build

    engine = build(ModelSpec("rexnet_100", weights=WeightsSpec("random", seed=0)),
                   BuildSpec(backend="openvino", precision="int8", batch=(1, 4)), tmp_path / "ac",
                   calib=calib_dir, calib_size=16, backend_options={"max_drop": 0.5},
                   check_options={"gate": {"top1_agreement": 0.0}})
    with engine:
        q = engine.manifest.backend_config["quantization"]
        assert q["method"] == "quantize_with_accuracy_control" and q["max_drop"] == 0.5
        assert q["overflow_fix"] == "enable" and q["fake_quantize_ops"] > 50
        assert engine._model.inputs[0].get_partial_shape().is_dynamic
        out = engine(_batch(3, 5))
        assert np.isfinite(out).all() and out.std() > 0


@pytest.mark.parametrize("precision, weights_dtype", [("fp16", "f16"), ("bf16", "f32")])
def test_fp16_and_bf16_builds(tmp_path, ov_fp32_path, precision, weights_dtype):
    from rexnet_deploy import BuildSpec, ModelSpec, WeightsSpec, build

    engine = build(ModelSpec("rexnet_100", weights=WeightsSpec("random", seed=0)),
                   BuildSpec(backend="openvino", precision=precision, batch=(1, 2)), tmp_path / precision,
                   check_options={"synthetic": 4})
    with engine:
        config = engine.manifest.backend_config
        assert config["weights_dtype"] == weights_dtype
        assert config["inference_precision_hint"] == ("bf16" if precision == "bf16" else None)
        assert engine.manifest.reports["check"]["gate"]["passed"]
        size = (engine.artifact.path / "model.bin").stat().st_size
        fp32_size = (ov_fp32_path / "model.bin").stat().st_size
        assert size < 0.6 * fp32_size if precision == "fp16" else size == fp32_size


def test_onednn_isa_cap_is_for_openvino_int8_on_amx_cpus_only():
    """The cap a one-engine process (serve) takes: OpenVINO INT8 on an AMX CPU, and never over a
    user's own ONEDNN_MAX_CPU_ISA (ALL keeps AMX)."""
    from rexnet_deploy.cpu import ONEDNN_INT8_CAP, onednn_isa_cap

    amx, vnni = ["avx512f", "avx512_vnni", "amx_tile", "amx_int8"], ["avx512f", "avx512_vnni"]
    assert onednn_isa_cap("openvino", "int8", flags=amx, env={}) == ONEDNN_INT8_CAP == "AVX512_CORE_VNNI"
    assert onednn_isa_cap("openvino", "int8", flags=vnni, env={}) is None
    assert onednn_isa_cap("openvino", "int8", flags=amx, env={"ONEDNN_MAX_CPU_ISA": "ALL"}) is None
    for backend, precision in (("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "fp16"), ("onnxruntime", "int8"),
                               ("pt2", "int8")):
        assert onednn_isa_cap(backend, precision, flags=amx, env={}) is None, (backend, precision)


def test_serve_and_bench_cap_onednn_for_an_openvino_int8_engine_on_amx(monkeypatch, ov_int8_path, ov_fp32_path):
    """`serve` and `bench` (one engine a process) set the cap in their environment (inherited by
    --workers) and say so in one line; not for other engines."""
    from rexnet_deploy import cli, cpu

    def fresh_env() -> None:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "restored-by-monkeypatch")  # so that undo removes what is set
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")

    fresh_env()
    monkeypatch.setattr(cpu, "cpuinfo_flags", lambda: ["avx512f", "avx512_vnni", "amx_tile"])
    assert cpu.cap_onednn_for("openvino", "bf16") is None and "ONEDNN_MAX_CPU_ISA" not in os.environ
    line = cpu.cap_onednn_for("openvino", "int8")
    assert os.environ["ONEDNN_MAX_CPU_ISA"] == "AVX512_CORE_VNNI"
    assert "oneDNN capped at AVX512_CORE_VNNI" in line and "ONEDNN_MAX_CPU_ISA=ALL" in line
    fresh_env()
    said: list[str] = []
    monkeypatch.setattr(cli.click, "echo", lambda m="", err=False: said.append(m))
    cli._cap_onednn(ov_fp32_path)
    assert said == [] and "ONEDNN_MAX_CPU_ISA" not in os.environ
    cli._cap_onednn(ov_int8_path)
    assert os.environ["ONEDNN_MAX_CPU_ISA"] == "AVX512_CORE_VNNI" and len(said) == 1
    # serve: tests/test_serving_lifecycle.py reads the line from a served INT8 engine on an AMX CPU


def _primitives(artifact, env: dict) -> list[str]:
    """The kernels OpenVINO picked for an engine's convolutions, in a fresh process with ``env``."""
    import subprocess
    import sys

    code = ("import json\nfrom rexnet_deploy import Engine\n"
            f"e = Engine.load({str(artifact)!r})\n"
            "rts = [o.get_rt_info() for o in e._compiled_for('LATENCY', 1).get_runtime_model().get_ops()]\n"
            "print(json.dumps([rt['primitiveType'].value for rt in rts if 'Convolution' in rt['layerType'].value]))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={k: v for k, v in {**os.environ, **env}.items() if v is not None})
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.long  # two fresh processes each compiling the INT8 engine (~10 s); meaningful on AMX CPUs only
def test_capped_int8_engine_uses_no_amx_kernels(ov_int8_path):
    """On an AMX CPU, the INT8 engine's convolutions run oneDNN's AMX kernels unless the process is
    capped as serve caps it; capped, none do (the speed figures are in benchmarks/test_openvino.py)."""
    from rexnet_deploy.cpu import ONEDNN_INT8_CAP, isa_class

    if isa_class() != "amx":
        pytest.skip(f"this CPU is {isa_class()}, not amx: OpenVINO uses no AMX kernels here to cap")
    uncapped = _primitives(ov_int8_path, {"ONEDNN_MAX_CPU_ISA": None})
    capped = _primitives(ov_int8_path, {"ONEDNN_MAX_CPU_ISA": ONEDNN_INT8_CAP})
    assert any("amx" in p.lower() for p in uncapped), uncapped
    assert capped and not any("amx" in p.lower() for p in capped), capped
