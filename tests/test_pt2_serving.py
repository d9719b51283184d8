"""A pt2 (AOTInductor ``.pt2``) artifact served like any other: the dynamic batcher, the HTTP app
(in process, no socket), ``rexnet-deploy batch`` and ``export-triton`` (platform ``torch_aoti``),
each checked against ``Engine`` on the same artifact. One CPU FP32 package is built per session
(torch.export + AOTInductor's C++ compile: about a minute on two cores); every test reuses it."""

from __future__ import annotations

import json
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from rexnet_deploy import Engine
from rexnet_deploy.artifact import file_sha256, load_artifact

from .conftest import cli_in_process, expect_error
from .test_serving import jpeg, npy

pytest.importorskip("torch")
ATOL = 1e-4  # a row's logits may differ in the last bits between batch sizes (other kernels)


@pytest.fixture(scope="session")
def pt2_path(pt2_fp32_path) -> Path:
    """The session's pt2 FP32 CPU package (conftest: random weights, seed 0, batch 1..8)."""
    return pt2_fp32_path


@pytest.fixture(scope="module")
def engine(pt2_path):
    with Engine.load(pt2_path) as e:
        yield e


def tensors(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 224, 224), dtype=np.float32)


def test_batcher_batches_pt2_requests_and_answers_each_its_own(engine):
    from rexnet_deploy.serving import Batcher

    x = tensors(12, seed=1)
    start = threading.Barrier(12)
    with Batcher(engine, max_batch=8, max_delay_ms=50) as b:
        assert (b.max_batch, b.batch_sizes) == (8, [1, 2, 4, 8])  # the package's dynamic batch range

        def client(i):
            start.wait()
            return b.submit(x[i]).result(timeout=60)

        with ThreadPoolExecutor(12) as pool:
            got = list(pool.map(client, range(12)))
        assert b.stats.requests == 12 and max(b.stats.sizes) > 1, b.stats.sizes  # requests shared batches
    for i in range(12):
        np.testing.assert_allclose(got[i], engine(x[i:i + 1])[0], atol=ATOL, rtol=1e-4)


def test_http_app_predict_and_infer_match_engine(pt2_path, engine):
    from starlette.testclient import TestClient

    from rexnet_deploy.serving import create_app
    from rexnet_deploy.serving.inputs import decode_image_bytes
    from rexnet_deploy.synthetic import synthetic_images

    photos = [jpeg(p) for p in synthetic_images(2, seed=5)]
    x = tensors(1, seed=9)
    with TestClient(create_app(pt2_path, max_batch=4, max_delay_ms=2, max_body_bytes=4_000_000)) as c:
        health = c.get("/healthz").json()
        assert (health["status"], health["backend"], health["batch_sizes"]) == ("ready", "pt2", [1, 2, 4])
        for body in photos:
            r = c.post("/v1/predict?topk=3", content=body, headers={"content-type": "image/jpeg"})
            assert r.status_code == 200, r.text
            want = engine.predict(decode_image_bytes(body), topk=3)[0]
            got = r.json()["predictions"]
            assert [(p["index"], p["label"]) for p in got] == [(p.index, p.label) for p in want]
            np.testing.assert_allclose([p["score"] for p in got], [p.score for p in want], atol=1e-5)
        r = c.post("/v1/infer", content=npy(x[0]), headers={"content-type": "application/x-npy"})
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json()["outputs"]["logits"], engine(x)[0], atol=ATOL, rtol=1e-4)


def test_cli_batch_on_a_pt2_artifact(pt2_path, image_dir, tmp_path):
    pytest.importorskip("pyarrow", reason="batch writes Parquet with pyarrow (the batch extra)")
    from rexnet_deploy.batch import read_predictions

    out = tmp_path / "preds.parquet"
    r = cli_in_process("batch", str(pt2_path), str(image_dir), "--out", str(out), "--topk", "3", "--batch-size", "4")
    assert r.returncode == 0, r.stderr
    assert "6 files" in r.stdout and "local" in r.stdout
    rows = read_predictions(out)
    with Engine.load(pt2_path) as engine:
        want = engine.predict_files([row["file"] for row in rows], 3)
    assert [row["file"] for row in rows] == want.names and all(row["error"] is None for row in rows)
    for row, preds in zip(rows, want.predictions):
        assert row["indices"] == [p.index for p in preds]
        np.testing.assert_allclose(row["scores"], [p.score for p in preds], rtol=1e-5, atol=1e-7)


def _package_io(package) -> tuple[list, list, object]:
    """The call spec Triton's PyTorch backend reads to name a package's tensors (pytorch_backend
    src/pt2/model_state.cc): (positional args, keyword args, output spec)."""
    in_spec, out_spec = (json.loads(s)[1] for s in package.loader.get_call_spec())
    args, kwargs = in_spec["children_spec"]
    return args["children_spec"], kwargs["children_spec"], out_spec


def test_export_triton_torch_aoti_config_and_payload(pt2_path, engine, tmp_path):
    pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="needs tritonclient[grpc] (the triton extra)")
    import torch

    from rexnet_deploy.triton import export_triton, parse_config, triton_io_names

    (model,) = export_triton([pt2_path], tmp_path / "repo", names=["rexnet"])
    folder = tmp_path / "repo" / "rexnet"
    cfg = parse_config((folder / "config.pbtxt").read_text())  # Triton's own ModelConfig protobuf
    assert (model.platform, model.max_batch_size, model.kind) == ("torch_aoti", 1, "KIND_CPU")
    assert (cfg.platform, cfg.backend, cfg.max_batch_size) == ("torch_aoti", "", 1)  # batch > 1: not yet in Triton
    assert triton_io_names(load_artifact(pt2_path)) == ("INPUT__0", ["OUTPUT__0"])
    assert [(i.name, list(i.dims), i.data_type) for i in cfg.input] == [("INPUT__0", [3, 224, 224], 11)]  # TYPE_FP32
    assert [(o.name, list(o.dims), o.data_type, o.label_filename) for o in cfg.output] == [
        ("OUTPUT__0", [1000], 11, "labels.txt")]
    assert [(g.count, g.kind) for g in cfg.instance_group] == [(1, 2)]  # 2: KIND_CPU, the package's device
    assert file_sha256(folder / "1" / "model.pt2") == file_sha256(pt2_path / "model.pt2")

    # the copied package, loaded as Triton's backend loads it (AOTIModelPackageLoader): one positional
    # tensor in (ARGS[0], ordinal INPUT__0) and a bare tensor out (RESULT, ordinal OUTPUT__0)
    package = torch._inductor.aoti_load_package(str(folder / "1" / "model.pt2"))
    args, kwargs, out_spec = _package_io(package)
    assert ([a["type"] for a in args], kwargs, out_spec["type"]) == ([None], [], None)
    x = tensors(1, seed=4)
    with torch.inference_mode():
        got = package(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, engine.infer(x)[0], rtol=1e-5, atol=1e-5)


def test_export_triton_pt2_refusals_and_gpu_kind(pt2_path, tmp_path):
    pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="needs tritonclient[grpc] (the triton extra)")
    from rexnet_deploy.triton import export_triton, parse_config

    repo = tmp_path / "repo"
    r = cli_in_process("export-triton", str(pt2_path), "--repo", str(repo), "--max-batch", "4")
    expect_error(r, "--max-batch 4", "batch sizes above 1", "torchscript")
    assert not repo.exists() or not list(repo.iterdir())
    # a CUDA package (relabelled here: the manifest is not checksummed) is served by GPU instances only
    cuda = tmp_path / "cuda"
    shutil.copytree(pt2_path, cuda)
    manifest = json.loads((cuda / "manifest.json").read_text())
    manifest["device"] = manifest["backend_config"]["device"] = "cuda"
    (cuda / "manifest.json").write_text(json.dumps(manifest))
    (model,) = export_triton([cuda], repo, names=["gpu"], max_batch=1)
    assert model.kind == "KIND_GPU"
    assert [g.kind for g in parse_config((model.path / "config.pbtxt").read_text()).instance_group] == [1]
