"""Compiled-model caches (``Engine.load(cache_dir=...)``) and runtime-only installs."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from .conftest import build_artifact

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def ort_path(tmp_path_factory) -> Path:
    pytest.importorskip("onnxruntime")
    return build_artifact(tmp_path_factory, "ort-fp32-cache", "onnxruntime", "fp32", check_options={"synthetic": 8})


def _batch(n: int = 2) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((n, 3, 224, 224), dtype=np.float32)


def test_cache_folder_is_keyed_by_artifact_runtime_and_cpu(ort_path, monkeypatch, tmp_path):
    from rexnet_deploy import cache
    from rexnet_deploy.artifact import load_artifact

    art = load_artifact(ort_path)
    base = cache.cache_folder(tmp_path, art, "onnxruntime", "1.0")
    assert base.is_dir() and base != cache.cache_folder(tmp_path, art, "onnxruntime", "1.1")
    art.manifest.files = {**art.manifest.files, "model.onnx": "0" * 64}  # another payload
    assert cache.cache_folder(tmp_path, art, "onnxruntime", "1.0") != base
    art = load_artifact(ort_path)
    monkeypatch.setattr(cache, "cpuinfo_flags", lambda: ["avx2", "fma"])  # another CPU
    assert cache.cache_folder(tmp_path, art, "onnxruntime", "1.0") != base


def test_onnxruntime_cache_is_written_once_then_loaded(ort_path, tmp_path):
    from rexnet_deploy import Engine

    x = _batch()
    with Engine.load(ort_path) as plain:
        want = plain(x)
    with Engine.load(ort_path, cache_dir=tmp_path) as first:
        assert not first.cache_hit and (first.cache_folder / "optimized.onnx").is_file()
        np.testing.assert_allclose(first(x), want, rtol=1e-5, atol=1e-5)
    with Engine.load(ort_path, cache_dir=tmp_path) as second:
        assert second.cache_hit
        np.testing.assert_allclose(second(x), want, rtol=1e-5, atol=1e-5)
    assert not list(second.cache_folder.glob(".*.tmp"))  # no half-written file left


def test_onnxruntime_damaged_cache_is_rebuilt(ort_path, tmp_path):
    from rexnet_deploy import Engine

    with Engine.load(ort_path, cache_dir=tmp_path) as e:
        cached = e.cache_folder / "optimized.onnx"
    cached.write_bytes(b"not an onnx model")
    with Engine.load(ort_path, cache_dir=tmp_path) as e:
        assert not e.cache_hit and e(_batch(1)).shape == (1, 1000)
    assert cached.stat().st_size > 1000


def test_openvino_cache_holds_a_blob_per_compiled_batch(ov_fp32_path, tmp_path):
    from rexnet_deploy import Engine

    x = _batch()
    with Engine.load(ov_fp32_path) as plain:
        want = plain(x)
    with Engine.load(ov_fp32_path, cache_dir=tmp_path) as e:
        folder = e.cache_folder
        e(x[:1]), e(x)
    assert len(list(folder.glob("*.blob"))) == 2
    with Engine.load(ov_fp32_path, cache_dir=tmp_path) as e:
        np.testing.assert_allclose(e(x), want, rtol=1e-5, atol=1e-5)
    assert len(list(folder.glob("*.blob"))) == 2  # imported, not compiled again


def _damage(path: Path, size: int = 4096) -> None:
    """Overwrite ``size`` bytes in the middle of ``path`` (what issue 19 did to every cached file)."""
    data = bytearray(path.read_bytes())
    mid = max(0, len(data) // 2 - size // 2)
    data[mid:mid + size] = bytes((b ^ 0x5A) for b in data[mid:mid + size])
    path.write_bytes(bytes(data))


def _cached_files(folder: Path) -> list[Path]:
    """What a runtime could read from the cache folder (not the checksum records, not temporaries)."""
    from rexnet_deploy.cache import RECORD_SUFFIX

    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and not p.name.endswith(RECORD_SUFFIX))


def _uncached_answer_and_cache(artifact, cache_root, x):
    """The engine's answer without a cache, and the cache folder a run with ``cache_root`` filled."""
    from rexnet_deploy import Engine

    with Engine.load(artifact) as plain:
        want = plain(x)
    with Engine.load(artifact, cache_dir=cache_root) as e:
        folder = e.cache_folder
        e(x)
    return want, folder


def _checked_again(folder: Path) -> None:
    """Every cached file now matches its record: a third load warns about nothing."""
    from rexnet_deploy.artifact import file_sha256
    from rexnet_deploy.cache import RECORD_SUFFIX

    for path in _cached_files(folder):
        assert (folder / (path.name + RECORD_SUFFIX)).read_text().strip() == file_sha256(path)


def test_openvino_damaged_cache_never_changes_an_answer(ov_fp32_path, tmp_path, caplog):
    """Issue 19 (2): 4 KB overwritten in each cached blob changed every score (0.0744 for 0.0750)."""
    from rexnet_deploy import Engine

    x = _batch(1)
    want, folder = _uncached_answer_and_cache(ov_fp32_path, tmp_path, x)
    blobs = _cached_files(folder)
    assert blobs
    for blob in blobs:
        _damage(blob)
    with caplog.at_level("WARNING", logger="rexnet_deploy.cache"):
        with Engine.load(ov_fp32_path, cache_dir=tmp_path) as e:
            np.testing.assert_allclose(e(x), want, rtol=1e-5, atol=1e-5)
    lines = [r.getMessage() for r in caplog.records if "failed its checksum" in r.getMessage()]
    assert len(lines) == 1 and blobs[0].name in lines[0], caplog.text
    assert [p.name for p in _cached_files(folder)] == [p.name for p in blobs]  # written again
    _checked_again(folder)


def test_openvino_unrecorded_blob_is_not_used(ov_fp32_path, tmp_path, caplog):
    """A blob under the very name OpenVINO looks up, but not recorded by us (dropped in by hand,
    or half-written by another replica), is removed before OpenVINO can import it."""
    from rexnet_deploy import Engine
    from rexnet_deploy.cache import RECORD_SUFFIX

    x = _batch(1)
    want, folder = _uncached_answer_and_cache(ov_fp32_path, tmp_path, x)
    for record in folder.glob("*" + RECORD_SUFFIX):
        record.unlink()
    for blob in _cached_files(folder):
        _damage(blob)
    with caplog.at_level("WARNING", logger="rexnet_deploy.cache"):
        with Engine.load(ov_fp32_path, cache_dir=tmp_path) as e:
            np.testing.assert_allclose(e(x), want, rtol=1e-5, atol=1e-5)
    assert "is not recorded" in caplog.text
    _checked_again(folder)


def test_onnxruntime_damaged_cache_never_changes_an_answer(ort_path, tmp_path, caplog):
    """Issue 19 (2): the same damage to optimized.onnx loaded, and every answer was NaN."""
    from rexnet_deploy import Engine

    x = _batch(1)
    want, folder = _uncached_answer_and_cache(ort_path, tmp_path, x)
    cached = _cached_files(folder)
    assert [p.name for p in cached] == ["optimized.onnx"]
    _damage(cached[0])
    with caplog.at_level("WARNING", logger="rexnet_deploy.cache"):
        with Engine.load(ort_path, cache_dir=tmp_path) as e:
            np.testing.assert_allclose(e(x), want, rtol=1e-5, atol=1e-5)
            assert not e.cache_hit
    lines = [r.getMessage() for r in caplog.records if "failed its checksum" in r.getMessage()]
    assert len(lines) == 1 and "optimized.onnx" in lines[0], caplog.text
    _checked_again(folder)
    with Engine.load(ort_path, cache_dir=tmp_path) as e:
        assert e.cache_hit  # the rebuilt file is trusted again


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_damaged_file_that_cannot_be_removed_is_not_read(backend, ov_fp32_path, ort_path, tmp_path, monkeypatch,
                                                          caplog):
    """A read-only cache folder holding a damaged file: the engine compiles from the payload instead."""
    from rexnet_deploy import Engine, cache

    artifact = ov_fp32_path if backend == "openvino" else ort_path
    x = _batch(1)
    want, folder = _uncached_answer_and_cache(artifact, tmp_path, x)
    for path in _cached_files(folder):
        _damage(path)

    def read_only(path):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cache, "_remove", read_only)
    with caplog.at_level("WARNING", logger="rexnet_deploy.cache"):
        with Engine.load(artifact, cache_dir=tmp_path) as e:
            np.testing.assert_allclose(e(x), want, rtol=1e-5, atol=1e-5)
            assert e.cache_folder is None
    assert "cannot be removed" in caplog.text and "does not use the cache folder" in caplog.text


def test_openvino_checks_before_each_compile(ov_fp32_path, tmp_path, monkeypatch, caplog):
    """A blob that turns up after the engine loaded (its record missing) is not imported by a later
    compile; one that cannot be removed makes the engine stop reading the folder."""
    from rexnet_deploy import Engine, cache

    x = _batch(2)
    with Engine.load(ov_fp32_path) as plain:
        want = plain(x)
    with Engine.load(ov_fp32_path, cache_dir=tmp_path) as e:
        folder = e.cache_folder
        e(x[:1])  # batch 1 compiled and recorded
        (folder / "dropped.blob").write_bytes(b"not a blob")
        monkeypatch.setattr(cache, "_remove", lambda path: (_ for _ in ()).throw(PermissionError(13, "read-only")))
        with caplog.at_level("WARNING", logger="rexnet_deploy.cache"):
            np.testing.assert_allclose(e(x), want, rtol=1e-5, atol=1e-5)  # batch 2: a compile, after the check
        assert e.cache_folder is None and "dropped.blob is not recorded and cannot be removed" in caplog.text


def test_unwritable_cache_dir_is_one_clear_error(ov_fp32_path, tmp_path):
    from rexnet_deploy import Engine
    from rexnet_deploy.errors import UsageError

    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UsageError, match="cannot create the cache folder"):
        Engine.load(ov_fp32_path, cache_dir=blocker)


# A subprocess in which the build-side libraries cannot be imported at all: what a runtime-only
# install (``openvino-runtime`` / ``onnxruntime-runtime`` extras) has.
_BLOCKED = ("torch", "timm", "nncf", "onnx", "torchao", "modelopt")
_RUN = """
import importlib.abc, json, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {blocked!r}:
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
from rexnet_deploy import Engine
e = Engine.load({artifact!r}, cache_dir={cache!r})
p = e.predict({image!r}, topk=2)
print(json.dumps({{'n': len(p[0]), 'imported': sorted(m for m in {blocked!r} if m in sys.modules)}}))
"""


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_runtime_needs_no_build_libraries(backend, ov_fp32_path, ort_path, image_dir, tmp_path):
    artifact = ov_fp32_path if backend == "openvino" else ort_path
    image = next(image_dir.glob("*.jpg"))
    code = _RUN.format(blocked=_BLOCKED, artifact=str(artifact), cache=str(tmp_path), image=str(image))
    for _ in range(2):  # filling the cache, then reading it
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout.strip().splitlines()[-1]) == {"n": 2, "imported": []}


def test_runtime_extras_hold_only_the_runtime():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {k: sorted(d.split(">")[0].split("=")[0].split("[")[0].strip() for d in v) for k, v in extras.items()}
    assert names["openvino-runtime"] == ["openvino"]
    assert names["onnxruntime-runtime"] == ["onnxruntime"]
    assert "nncf" in names["openvino"]  # the build extra keeps its name and contents


@pytest.mark.slow
def test_serve_cache_dir_and_fast_preprocess(ort_path, tmp_path):
    httpx = pytest.importorskip("httpx")
    from .test_serving import _start_serve, _stop, _wait_ready

    proc, base = _start_serve(ort_path, "--max-batch", "2", "--cache-dir", str(tmp_path / "cache"),
                              "--fast-preprocess", "--log-level", "warning")
    try:
        _wait_ready(httpx, base, proc)
        from rexnet_deploy.synthetic import synthetic_images

        body = io.BytesIO()
        synthetic_images(1, seed=3, sizes=((2400, 1800),))[0].save(body, "JPEG", quality=90)
        r = httpx.post(f"{base}/v1/predict?topk=1", content=body.getvalue(), timeout=30)
        assert r.status_code == 200 and len(r.json()["predictions"]) == 1
    finally:
        assert _stop(proc) == 0
    assert len(list((tmp_path / "cache").rglob("optimized.onnx"))) == 1


def test_loading_without_the_runtime_names_the_runtime_extra(ort_path, image_dir, tmp_path):
    from .conftest import expect_error, run_cli, without_module

    r = run_cli("predict", str(ort_path), str(image_dir), env=without_module(tmp_path, "onnxruntime"))
    expect_error(r, "needs onnxruntime", "pip install 'rexnet-deploy[onnxruntime-runtime]'")
