"""The pt2 backend (torch.export + AOTInductor): a built package against eager, its dynamic batch,
a runtime with torch alone, and the hosts and inputs it must refuse in one line.

One FP32 package is built per session (``pt2_fp32_path``, about 40 s on 2 cores: the C++ compile);
the INT8 path (PT2E quantization + a few distillation steps) is one test of the long tier."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from rexnet_deploy import Engine
from rexnet_deploy.backends import pt2
from rexnet_deploy.errors import ArtifactError, BackendUnavailable, UsageError

from .conftest import build_artifact, cli_in_process, expect_error


def _copy(src: Path, dst: Path, **runtime_or_manifest) -> Path:
    shutil.copytree(src, dst)
    mf = dst / "manifest.json"
    manifest = json.loads(mf.read_text())
    for key, value in runtime_or_manifest.items():
        if key in ("torch", "cpu_flags", "cpu_isa", "cuda", "sm"):
            manifest["runtime"][key] = value
        else:
            manifest[key] = value
    mf.write_text(json.dumps(manifest, indent=2))
    return dst


def test_fp32_package_equals_eager_at_every_batch_size(pt2_fp32_path):
    import torch

    from rexnet_deploy.harness.reference import TorchReference

    with Engine.load(pt2_fp32_path) as engine:
        manifest = engine.manifest
        assert manifest.payload == "model.pt2" and (pt2_fp32_path / "model.pt2").stat().st_size > 1e6
        check = manifest.reports["check"]
        assert check["gate"]["passed"] and check["metrics"]["max_abs_err"] < 1e-4
        ref = TorchReference.from_manifest(manifest)
        for n in (1, 3, 8):  # one graph, a dynamic batch dimension
            x = np.random.default_rng(n).standard_normal((n, 3, 224, 224), dtype=np.float32)
            got = engine.run_batch(x)[0]
            want = ref(x)[0]
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        # a tensor in, tensors out, no copy through numpy
        t = torch.zeros(2, 3, 224, 224)
        out = engine(t)
        assert isinstance(out, torch.Tensor) and out.shape == (2, 1000)
    config = manifest.backend_config
    assert config["inductor_configs"]["freezing"] is True and config["inductor_configs"]["cpp.dynamic_threads"] is True
    assert manifest.runtime["torch"] == "%d.%d" % tuple(int(v) for v in torch.__version__.split(".")[:2])
    assert manifest.runtime["cpu_flags"], "a host package records the CPU flags its kernels need"


def test_runtime_needs_torch_alone(pt2_fp32_path, image_dir, tmp_path):
    """A serving replica without timm/torchvision/torchao (import of any of them fails) loads and predicts."""
    site = tmp_path / "no-timm"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import sys\nfor name in ('timm', 'torchvision', 'torchao'):\n    sys.modules[name] = None\n")
    code = (
        "import json, sys\n"
        "try:\n    import timm\nexcept ImportError:\n    blocked = True\nelse:\n    blocked = False\n"
        "from rexnet_deploy import Engine\n"
        f"p = Engine.load({str(pt2_fp32_path)!r}).predict({str(image_dir / 'img0.jpg')!r}, topk=3)\n"
        "print(json.dumps({'blocked': blocked, 'n': len(p[0]), 'modules': sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('timm', 'torchvision', 'torchao') and sys.modules[m] is not None)}))\n"
    )
    import os

    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result == {"blocked": True, "n": 3, "modules": []}


@pytest.mark.parametrize("change, fragments", [
    ({"torch": "2.99"}, ["compiled by torch 2.99", "rebuild it on this host", "--backend pt2"]),
    ({"cpu_flags": ["avx2", "avx10_2"], "cpu_isa": "host (some future CPU)"},
     ["compiled for host (some future CPU)", "lacks avx10_2", "rebuild"]),
])
def test_package_for_another_host_is_refused_in_one_line(pt2_fp32_path, tmp_path, image_dir, change, fragments):
    art = _copy(pt2_fp32_path, tmp_path / "other", **change)
    with pytest.raises(BackendUnavailable) as exc:
        Engine.load(art)
    for fragment in fragments:
        assert fragment in str(exc.value)
    assert "\n" not in str(exc.value)
    expect_error(cli_in_process("predict", str(art), str(image_dir / "img0.jpg")), *fragments[:2])


def test_cuda_package_on_a_cpu_host_is_refused(pt2_fp32_path, tmp_path):
    art = _copy(pt2_fp32_path, tmp_path / "cuda", device="cuda")
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["backend_config"]["device"] = "cuda"
    (art / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises((BackendUnavailable, UsageError), match="CUDA|cuda"):
        Engine.load(art)


def test_corrupt_package_is_refused(pt2_fp32_path, tmp_path):
    art = tmp_path / "corrupt"
    shutil.copytree(pt2_fp32_path, art)
    (art / "model.pt2").write_bytes(b"PK\x03\x04 not a package")
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        Engine.load(art)
    with pytest.raises(ArtifactError, match="cannot load the pt2 payload"):  # the checksum skipped: the loader's error
        Engine.load(art, verify=False)


@pytest.mark.parametrize("args, fragments", [
    (["--precision", "fp16"], ["pt2 FP16 needs --device cuda"]),
    (["--precision", "int8", "--device", "cuda"], ["pt2 INT8 is for x86 CPUs"]),
    (["--cpu-isa", "avx9"], ["'avx9' is not one of 'host', 'avx2', 'avx512'"]),
    (["--qad-steps", "5"], ["--qad-steps is for --int8 builds"]),
    (["--precision", "int8", "--recipe", "ptq", "--qad-steps", "5", "--calib", "."], ["--qad-steps is for --recipe qad"]),
])
def test_bad_build_requests_fail_before_any_work(args, fragments, tmp_path):
    r = cli_in_process("build", "-q", "--backend", "pt2", "--weights", "random", "--out", str(tmp_path / "x"), *args)
    expect_error(r, *fragments)
    assert not (tmp_path / "x").exists()


def test_host_isa_rules():
    avx2 = ["avx", "avx2", "fma", "f16c", "bmi1", "bmi2", "movbe"]
    assert "needs AVX-512 BF16 or AMX" in pt2._cpu_problem("bf16", avx2)
    assert "needs a CPU with VNNI" in pt2._cpu_problem("int8", avx2)
    assert pt2._cpu_problem("int8", avx2 + ["avx_vnni"]) is None and pt2._cpu_problem("fp32", avx2) is None
    # a portable package needs its -march's flags; INT8 adds "any VNNI"
    need = pt2.required_cpu_flags("avx2", "int8", avx2 + ["avx512f", "amx_int8"])
    assert "avx512f" not in need and need[-1] == "avx512_vnni|avx_vnni|amx_int8"
    assert pt2.missing_cpu_flags(need, avx2) == ["avx512_vnni|avx_vnni|amx_int8"]
    assert pt2.missing_cpu_flags(need, avx2 + ["amx_int8"]) == []
    # a host package needs what the build host had of the SIMD flags (march=native)
    assert pt2.required_cpu_flags("host", "fp32", avx2 + ["avx512f", "sse2"]) == [
        f for f in pt2.SIMD_FLAGS if f in set(avx2 + ["avx512f"])]


def test_torchscript_build_says_once_that_it_is_deprecated():
    """torch.jit warns on every call; a TorchScript build collects those into one line of its log."""
    import torch

    from rexnet_deploy.backends.torchscript import _quiet_jit

    seen: list[str] = []
    with warnings.catch_warnings(record=True) as escaped:
        warnings.simplefilter("always")
        with _quiet_jit(seen):
            torch.jit.trace(torch.nn.Linear(2, 2).eval(), torch.zeros(1, 2))
            warnings.warn("someone else's warning", UserWarning)
    assert seen and all("deprecat" in s.lower() for s in seen)
    assert [str(w.message) for w in escaped] == ["someone else's warning"]


@pytest.mark.long
def test_int8_package_by_quantization_aware_distillation(tmp_path_factory, calib_dir):
    """PT2E QAT graph, ranges seeded on 24 generated images, 3 distillation steps, compiled: the
    package runs INT8 kernels (smaller than FP32's) and the manifest records the recipe. Random
    weights have flat logits: the gate is the cosine/SQNR part only."""
    pytest.importorskip("torchao")
    if pt2.host_problem("int8"):
        pytest.skip(pt2.host_problem("int8"))
    logs: list[str] = []
    art = build_artifact(tmp_path_factory, "pt2-int8", "pt2", "int8", calib=calib_dir, calib_size=24,
                         backend_options={"qad_steps": 3}, log=logs.append,
                         check_options={"gate": {"top1_agreement": 0.0}})
    with Engine.load(art) as engine:
        q = engine.manifest.backend_config["quantization"]
        assert q["recipe"] == "qad" and q["distillation"]["steps"] == 3 and q["quantizer"] == "X86InductorQuantizer"
        assert engine.manifest.runtime["cpu_flags"][-1] == "|".join(pt2.VNNI_FLAGS)
        x = np.random.default_rng(0).standard_normal((3, 3, 224, 224), dtype=np.float32)
        assert engine.run_batch(x)[0].shape == (3, 1000)
    assert any("distilling 3 steps" in line for line in logs)


@pytest.mark.parametrize("precision, fragment", [("int8", "INT8 pt2 needs a CPU with VNNI"),
                                                 ("bf16", "BF16 pt2 on CPU needs AVX-512 BF16 or AMX")])
def test_a_precision_the_cpu_cannot_run_is_refused_before_any_work(monkeypatch, tmp_path, calib_dir, precision,
                                                                     fragment):
    """On an AVX2-only CPU (its flags stand in for this host's) INT8 and BF16 builds stop in one line."""
    from rexnet_deploy import cpu

    monkeypatch.setattr(cpu, "cpuinfo_flags", lambda: ["sse4_2", "avx", "avx2", "fma", "f16c", "bmi1", "bmi2"])
    r = cli_in_process("build", "-q", "--backend", "pt2", "--precision", precision, "--weights", "random",
                       "--calib", str(calib_dir), "--out", str(tmp_path / "x"))
    expect_error(r, fragment, "(avx2)")
    assert not (tmp_path / "x").exists()
