"""export-triton: configs parsed by Triton's own ModelConfig protobuf, payloads that run on their
runtime exactly as the engine does, and refusals that leave the repository untouched."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rexnet_deploy import Engine
from rexnet_deploy.artifact import file_sha256, load_artifact
from rexnet_deploy.triton import export_triton, parse_config, triton_io_names

from .conftest import build_artifact, cli_in_process, expect_error

pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="needs tritonclient[grpc] (the triton extra)")


@pytest.fixture(scope="session")
def ort_fp32_path(tmp_path_factory) -> Path:
    pytest.importorskip("onnxruntime")
    return build_artifact(tmp_path_factory, "ort-fp32", "onnxruntime", "fp32", check_options={"synthetic": 8})


def _artifact(request, backend: str) -> Path:
    return request.getfixturevalue({"onnxruntime": "ort_fp32_path", "torchscript": "ts_engine_path",
                                    "openvino": "ov_fp32_path"}[backend])


# The parameters Triton's openvino backend reads into the CPU plugin's properties, and how
# (triton-inference-server/openvino_backend src/openvino.cc: ModelState::ParseParameters(device)
# lists the keys, ParseParameterHelper the values; any other key is never read, and a value it does
# not accept fails the model load). HINT_BF16 accepts only "yes" (case-insensitive).
_OV_BACKEND_READS = {"INFERENCE_NUM_THREADS", "COMPILATION_NUM_THREADS", "HINT_BF16", "NUM_STREAMS", "PERFORMANCE_HINT"}
# read by ModelState::ParseParameters() for the backend itself, not passed to OpenVINO
_OV_BACKEND_OWN = {"CPU_EXTENSION_PATH", "SKIP_OV_DYNAMIC_BATCHSIZE", "ENABLE_BATCH_PADDING", "RESHAPE_IO_LAYERS"}


def _openvino_backend_properties(parameters: dict[str, str]) -> dict[str, str]:
    """The CPU-plugin properties Triton's openvino backend sets from a config's parameters."""
    props = {}
    for key, value in parameters.items():
        assert key in _OV_BACKEND_READS | _OV_BACKEND_OWN, f"Triton's openvino backend never reads {key!r}"
        if key == "HINT_BF16":
            assert value.lower() == "yes", f"HINT_BF16 {value!r} fails the model load (the backend takes only YES)"
            props["INFERENCE_PRECISION_HINT"] = "bf16"
        elif key in _OV_BACKEND_READS:
            props[key] = value.upper() if key == "PERFORMANCE_HINT" else value
    return props


def _run_payload(backend: str, folder: Path, names: tuple[str, list[str]],
                 x: np.ndarray) -> tuple[list[np.ndarray], str]:
    """The copied model file, loaded with its runtime directly (as Triton's backend would), and the
    precision it ran in."""
    in_name, out_names = names
    if backend == "onnxruntime":
        import onnxruntime as ort

        return ort.InferenceSession(str(folder / "1" / "model.onnx")).run(out_names, {in_name: x}), "f32"
    if backend == "openvino":
        import openvino as ov

        # with the properties Triton's openvino backend makes of the config's parameters
        cfg = parse_config((folder / "config.pbtxt").read_text())
        props = _openvino_backend_properties({k: v.string_value for k, v in cfg.parameters.items()})
        compiled = ov.Core().compile_model(str(folder / "1" / "model.xml"), "CPU", props)
        result = compiled({in_name: x})
        precision = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        return [result[compiled.output(n)] for n in out_names], precision
    import torch

    with torch.inference_mode():
        out = torch.jit.load(str(folder / "1" / "model.pt"))(torch.from_numpy(x))
    return [o.numpy() for o in (out if isinstance(out, (list, tuple)) else [out])], "f32"


@pytest.mark.slow
@pytest.mark.parametrize("backend,platform", [("onnxruntime", "onnxruntime_onnx"), ("torchscript", "pytorch_libtorch"),
                                              ("openvino", "openvino")])
def test_export_config_and_payload(request, tmp_path, backend, platform):
    artifact_path = _artifact(request, backend)
    (model,) = export_triton([artifact_path], tmp_path / "repo", names=["rexnet"], instances=2)
    folder = tmp_path / "repo" / "rexnet"
    assert model.path == folder and model.kind == "KIND_CPU"
    cfg = parse_config((folder / "config.pbtxt").read_text())
    assert (cfg.backend if backend == "openvino" else cfg.platform) == platform
    assert cfg.name == "rexnet" and cfg.max_batch_size == 8  # the engine's batch range is 1..8
    artifact = load_artifact(artifact_path)
    in_name, out_names = triton_io_names(artifact)
    if backend == "torchscript":
        assert (in_name, out_names) == ("INPUT__0", ["OUTPUT__0"])
    else:
        assert (in_name, out_names) == ("input", ["logits"])
    assert [(i.name, list(i.dims), i.data_type) for i in cfg.input] == [(in_name, [3, 224, 224], 11)]  # 11: TYPE_FP32
    assert [(o.name, list(o.dims), o.label_filename) for o in cfg.output] == [(out_names[0], [1000], "labels.txt")]
    assert [(g.count, g.kind) for g in cfg.instance_group] == [(2, 2)]  # 2: KIND_CPU
    assert cfg.HasField("dynamic_batching") and cfg.dynamic_batching.max_queue_delay_microseconds == 500
    assert (folder / "labels.txt").read_text() == artifact.file("labels.txt").read_text()
    assert json.loads((folder / "preprocess.json").read_text()) == artifact.manifest.preprocess
    assert not list(tmp_path.glob(".*"))  # the staging folder is gone

    x = np.random.default_rng(3).standard_normal((3, 3, 224, 224)).astype(np.float32)
    with Engine.load(artifact_path) as engine:
        want = engine.infer(x)
    got, precision = _run_payload(backend, folder, (in_name, out_names), x)
    if precision != "f32":
        # a bf16 CPU: Triton runs this FP32 OpenVINO engine in bf16 (nothing in its config can pin f32),
        # and the config says so; the payload is still the engine's (measured: 2.2e-4 off, logits up to 0.027)
        assert backend == "openvino" and "cannot pin f32" in (folder / "config.pbtxt").read_text()
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=0, atol=0.05 * float(np.abs(w).max()))
            assert not np.allclose(g, w, rtol=1e-5, atol=1e-5)  # what the comment warns of, on this CPU
        return
    for g, w in zip(got, want):
        # same file, same runtime, same input: equal up to the thread-count's reduction order
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def _relabel_openvino(src: Path, dst: Path, precision: str, hint: str | None) -> Path:
    """An OpenVINO FP32 artifact relabelled as another precision (the manifest is not checksummed)."""
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["precision"] = precision
    manifest["backend_config"]["inference_precision_hint"] = hint
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def test_openvino_config_uses_only_what_the_backend_reads(ov_fp32_path, tmp_path):
    """Issue 19 (8): the config pinned FP32 with INFERENCE_PRECISION_HINT, a key Triton's openvino
    backend never reads. It reads HINT_BF16, and only as YES (src/openvino.cc ParseParameterHelper):
    a BF16 engine is pinned with it; an FP32 or INT8 engine cannot be pinned, and its config says so."""
    bf16 = _relabel_openvino(ov_fp32_path, tmp_path / "ov-bf16", "bf16", "bf16")
    int8 = _relabel_openvino(ov_fp32_path, tmp_path / "ov-int8", "int8", "f32")
    fp16 = _relabel_openvino(ov_fp32_path, tmp_path / "ov-fp16", "fp16", None)
    models = export_triton([ov_fp32_path, bf16, int8, fp16], tmp_path / "repo", names=["fp32", "bf16", "int8", "fp16"])
    texts = {m.name: (m.path / "config.pbtxt").read_text() for m in models}
    params = {n: {k: v.string_value for k, v in parse_config(t).parameters.items()} for n, t in texts.items()}
    assert params == {"fp32": {}, "bf16": {"HINT_BF16": "YES"}, "int8": {}, "fp16": {}}
    for name, p in params.items():
        assert _openvino_backend_properties(p) == ({"INFERENCE_PRECISION_HINT": "bf16"} if name == "bf16" else {})
        body = "\n".join(line for line in texts[name].splitlines() if not line.startswith("#"))
        assert "INFERENCE_PRECISION_HINT" not in body  # a key the backend never reads
    for name in ("fp32", "int8"):  # what cannot be pinned is said where the operator reads it
        assert texts[name].startswith("# ") and "cannot pin f32" in texts[name] and name.upper() in texts[name]
    # fp16: the CPU's own choice, in the engine as in Triton
    assert not texts["bf16"].startswith("#") and not texts["fp16"].startswith("#")


def test_several_engines_one_call_and_force(ort_fp32_path, ts_engine_path, tmp_path):
    repo = tmp_path / "repo"
    models = export_triton([ort_fp32_path, ts_engine_path], repo, names=["a", "b"], max_batch=4)
    assert [m.name for m in models] == ["a", "b"] and sorted(p.name for p in repo.iterdir()) == ["a", "b"]
    assert parse_config((repo / "a" / "config.pbtxt").read_text()).max_batch_size == 4
    assert file_sha256(repo / "b" / "1" / "model.pt") == file_sha256(ts_engine_path / "model.ts")
    # --force replaces one model and leaves the other alone
    export_triton([ts_engine_path], repo, names=["a"], force=True)
    assert (repo / "a" / "1" / "model.pt").is_file() and not (repo / "a" / "1" / "model.onnx").exists()
    assert (repo / "b" / "1" / "model.pt").is_file()


def _fake_tensorrt(src: Path, dst: Path, *, engine: bool) -> Path:
    """An ONNX Runtime artifact relabelled as TensorRT (the manifest is not checksummed; the files are)."""
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["backend"], manifest["device"] = "tensorrt", "cuda"
    manifest["backend_config"] = {"profile": {"min": 1, "opt": 4, "max": 6}, "engine": None}
    if engine:
        (dst / "model.engine").write_bytes(b"plan bytes")
        manifest["files"]["model.engine"] = file_sha256(dst / "model.engine")
        manifest["backend_config"]["engine"] = {"runtime": {"tensorrt": "10.13"}}
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def test_each_artifact_is_planned_once(ort_fp32_path, ts_engine_path, tmp_path, monkeypatch):
    """The target, batch limit and instance kind are worked out once per artifact and written as such."""
    import rexnet_deploy.triton as triton

    looked_up = []
    real = triton._target
    monkeypatch.setattr(triton, "_target", lambda artifact: looked_up.append(artifact.path) or real(artifact))
    models = export_triton([ort_fp32_path, ts_engine_path], tmp_path / "repo", names=["a", "b"], max_batch=3)
    assert looked_up == [ort_fp32_path, ts_engine_path]
    assert [(m.platform, m.max_batch_size, m.kind) for m in models] == [("onnxruntime_onnx", 3, "KIND_CPU"),
                                                                         ("pytorch_libtorch", 3, "KIND_CPU")]


def test_tensorrt_plan_config(ort_fp32_path, tmp_path):
    trt = _fake_tensorrt(ort_fp32_path, tmp_path / "trt", engine=True)
    (model,) = export_triton([trt], tmp_path / "repo")
    cfg = parse_config((model.path / "config.pbtxt").read_text())
    assert cfg.platform == "tensorrt_plan" and cfg.max_batch_size == 6  # the profile's max, not the manifest's 8
    assert [g.kind for g in cfg.instance_group] == [1]  # 1: KIND_GPU
    assert (model.path / "1" / "model.plan").read_bytes() == b"plan bytes"
    with pytest.raises(Exception, match="outside 1..6"):
        export_triton([trt], tmp_path / "repo2", max_batch=7)


def test_target_max_batch_caps_and_refuses(ort_fp32_path, tmp_path):
    """A target's documented batch limit (pt2: Triton's torch_aoti runs batch 1 as yet) caps the
    default max_batch_size and refuses a larger --max-batch in one line; an ONNX Runtime artifact
    relabelled as pt2 stands in for a real package (tests/test_pt2_serving.py builds one)."""
    fake = tmp_path / "pt2"
    shutil.copytree(ort_fp32_path, fake)
    (fake / "model.pt2").write_bytes(b"pt2 package bytes")
    manifest = json.loads((fake / "manifest.json").read_text())
    manifest["backend"], manifest["payload"] = "pt2", "model.pt2"
    manifest["files"]["model.pt2"] = file_sha256(fake / "model.pt2")
    (fake / "manifest.json").write_text(json.dumps(manifest))
    (model,) = export_triton([fake], tmp_path / "repo", names=["aoti"])
    cfg = parse_config((model.path / "config.pbtxt").read_text())
    assert (cfg.platform, cfg.max_batch_size, model.kind) == ("torch_aoti", 1, "KIND_CPU")  # the manifest says 8
    assert [i.name for i in cfg.input] == ["INPUT__0"] and [o.name for o in cfg.output] == ["OUTPUT__0"]
    assert (model.path / "1" / "model.pt2").read_bytes() == b"pt2 package bytes"
    r = cli_in_process("export-triton", str(fake), "--repo", str(tmp_path / "repo2"), "--max-batch", "2")
    expect_error(r, "--max-batch 2", "batch sizes above 1")
    assert not (tmp_path / "repo2").exists() or not list((tmp_path / "repo2").iterdir())


def test_refusals_leave_the_repo_untouched(ort_fp32_path, ts_engine_path, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "ts").mkdir()
    (repo / "ts" / "config.pbtxt").write_text("keep")
    r = cli_in_process("export-triton", str(ts_engine_path), "--repo", str(repo), "--name", "ts")
    expect_error(r, "already exists", "--force")
    r = cli_in_process("export-triton", str(ts_engine_path), str(ts_engine_path), "--repo", str(repo), "--name", "x",
                "--name", "x")
    expect_error(r, "'x'", "--name")
    r = cli_in_process("export-triton", str(_fake_tensorrt(ort_fp32_path, tmp_path / "trt", engine=False)), "--repo", str(repo))
    expect_error(r, "holds no TensorRT engine", "--rebuild-engine")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "manifest.json").write_text('{"format": "someone-else"}')
    expect_error(cli_in_process("export-triton", str(foreign), "--repo", str(repo)), "foreign")
    unknown = tmp_path / "unknown"
    shutil.copytree(ort_fp32_path, unknown)
    m = json.loads((unknown / "manifest.json").read_text())
    m["backend"] = "tflite"
    (unknown / "manifest.json").write_text(json.dumps(m))
    expect_error(cli_in_process("export-triton", str(unknown), "--repo", str(repo)), "'tflite'", "supported")
    assert sorted(p.name for p in repo.iterdir()) == ["ts"] and (repo / "ts" / "config.pbtxt").read_text() == "keep"
    assert not list(tmp_path.glob(".repo.triton-*"))


def test_failure_mid_export_writes_nothing(ort_fp32_path, ts_engine_path, tmp_path, monkeypatch):
    import rexnet_deploy.triton as triton

    real = shutil.copyfile

    def failing(src, dst, *a, **k):
        if str(dst).endswith("model.pt"):  # the second model's payload
            raise OSError(28, "No space left on device")
        return real(src, dst, *a, **k)

    monkeypatch.setattr(triton.shutil, "copyfile", failing)
    with pytest.raises(OSError):
        export_triton([ort_fp32_path, ts_engine_path], tmp_path / "repo", names=["a", "b"])
    assert list((tmp_path / "repo").iterdir()) == []  # not even the first, finished model
    assert not list(tmp_path.glob(".repo.triton-*"))


def test_cli_export_and_lazy_imports(ort_fp32_path, tmp_path):
    r = cli_in_process("export-triton", str(ort_fp32_path), "--repo", str(tmp_path / "repo"), "--name", "rexnet")
    assert r.returncode == 0, r.stderr
    assert "onnxruntime_onnx, max_batch_size 8, KIND_CPU" in r.stdout
    code = ("import sys, rexnet_deploy, rexnet_deploy.cli, rexnet_deploy.triton, rexnet_deploy.batch\n"
            "print(sorted(m for m in ('ray', 'tritonclient', 'pyarrow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
