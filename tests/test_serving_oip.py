"""The Open Inference Protocol v2 on ``serve`` (rexnet_deploy.serving.oip), driven by Triton's own
client, ``tritonclient.http``, against a real uvicorn server on 127.0.0.1 (one per module, in a
thread) over a seeded ONNX Runtime FP32 engine (batch 1..8). Every answer is compared with
``Engine`` on the same input. No traffic goes anywhere else."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from rexnet_deploy.engine import topk_predictions

from .conftest import build_artifact

pytest.importorskip("onnxruntime")
pytest.importorskip("uvicorn")
httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

ATOL = 1e-4  # a row's logits may differ in the last bits between batch sizes (other kernels)
MAX_BODY = 3_000_000  # a 4-row FP32 batch (2.4 MB) fits; 5 rows do not
MODEL = "oip-ort"  # the artifact folder's name: what export-triton names the model too


@pytest.fixture(scope="module")
def ort_path(tmp_path_factory) -> Path:
    return build_artifact(tmp_path_factory, MODEL, "onnxruntime", "fp32", check=False)


@contextlib.contextmanager
def serving(app, **config) -> Iterator[str]:
    """``app`` under uvicorn in a thread, on a free port of 127.0.0.1; yields ``host:port``."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", **config))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@pytest.fixture(scope="module")
def server(ort_path):
    from rexnet_deploy.serving import Service, create_app

    service = Service(ort_path, max_batch=8, max_delay_ms=5, warmup_rounds=1)
    with serving(create_app(service, max_body_bytes=MAX_BODY)) as url:
        yield url, service.engine  # the service's own engine: the reference for every answer


@pytest.fixture(scope="module")
def client(server):
    with httpclient.InferenceServerClient(server[0]) as c:
        yield c


@pytest.fixture(scope="module")
def engine(server):
    return server[1]


def tensors(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 224, 224), dtype=np.float32)


def infer_input(x: np.ndarray, binary: bool = True, name: str = "input", datatype: str = "FP32"):
    inp = httpclient.InferInput(name, list(x.shape), datatype)
    return inp.set_data_from_numpy(x, binary_data=binary)


def test_health_and_metadata_match_the_triton_export(client, ort_path, tmp_path):
    from rexnet_deploy.triton import export_triton, parse_config

    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL) and client.is_model_ready(MODEL, "1")
    assert not client.is_model_ready("other") and not client.is_model_ready(MODEL, "2")
    meta = client.get_server_metadata()
    assert {"binary_tensor_data", "classification"} <= set(meta["extensions"])
    model = client.get_model_metadata(MODEL)
    assert model == client.get_model_metadata(MODEL, "1")
    assert model == {"name": MODEL, "versions": ["1"], "platform": "onnxruntime_onnx",
                     "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 224, 224]}],
                     "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 1000]}]}
    # the point: what export-triton writes for this artifact has the same name, tensors and dims
    (exported,) = export_triton([ort_path], tmp_path / "repo")
    config = parse_config((exported.path / "config.pbtxt").read_text())
    assert exported.name == model["name"] and config.platform == model["platform"]
    assert [(i.name, list(i.dims)) for i in config.input] == [("input", [3, 224, 224])]
    assert [(o.name, list(o.dims)) for o in config.output] == [("logits", [1000])]


def test_infer_binary_and_json_tensors_batch_of_3(client, engine):
    x = tensors(3, seed=1)
    want = engine.run(x)["logits"]
    # binary in, every output binary (tritonclient asks binary_data_output when no outputs are named)
    r = client.infer(MODEL, [infer_input(x)], request_id="req-7")
    assert r.get_response()["id"] == "req-7" and r.get_response()["model_name"] == MODEL
    assert r.get_output("logits")["parameters"]["binary_data_size"] == 3 * 1000 * 4
    np.testing.assert_allclose(r.as_numpy("logits"), want, atol=ATOL, rtol=1e-4)
    # JSON in, JSON out
    small = np.round(x[1:2], 3)
    r = client.infer(MODEL, [infer_input(small, binary=False)],
                     outputs=[httpclient.InferRequestedOutput("logits", binary_data=False)])
    assert "data" in r.get_output("logits")
    np.testing.assert_allclose(r.as_numpy("logits"), engine.run(small)["logits"], atol=ATOL, rtol=1e-4)
    # binary in, JSON out; and the versioned route
    r = client.infer(MODEL, [infer_input(x[2:])], model_version="1",
                     outputs=[httpclient.InferRequestedOutput("logits", binary_data=False)])
    np.testing.assert_allclose(r.as_numpy("logits"), want[2:], atol=ATOL, rtol=1e-4)


def test_classification_extension_is_the_engine_top5(client, engine):
    x = tensors(2, seed=2)
    logits = engine.run(x)["logits"]
    want = topk_predictions(logits, 5, engine.labels)
    for binary in (True, False):
        r = client.infer(MODEL, [infer_input(x)],
                         outputs=[httpclient.InferRequestedOutput("logits", binary_data=binary, class_count=5)])
        got = r.as_numpy("logits")
        assert got.shape == (2, 5) and r.get_output("logits")["datatype"] == "BYTES"
        for row, preds, values in zip(got, want, logits):
            # Triton's "value:index:label" (bytes from binary data, str from JSON)
            fields = [(s.decode() if isinstance(s, bytes) else s).split(":", 2) for s in row]
            assert [int(f[1]) for f in fields] == [p.index for p in preds]
            assert [f[2] for f in fields] == [p.label for p in preds]
            np.testing.assert_allclose([float(f[0]) for f in fields], values[[p.index for p in preds]], atol=ATOL)


def test_async_infer_many_and_fp16_input(server, engine):
    x = tensors(6, seed=3)
    with httpclient.InferenceServerClient(server[0], concurrency=6) as c:
        pending = [c.async_infer(MODEL, [infer_input(x[i:i + 1])]) for i in range(6)]
        got = np.concatenate([p.get_result(timeout=60).as_numpy("logits") for p in pending])
        np.testing.assert_allclose(got, engine.run(x)["logits"], atol=ATOL, rtol=1e-4)
        half = x[:1].astype(np.float16)  # widened to FP32 exactly on the server
        r = c.infer(MODEL, [infer_input(half, datatype="FP16")])
        np.testing.assert_allclose(r.as_numpy("logits"), engine.run(half.astype(np.float32))["logits"],
                                   atol=ATOL, rtol=1e-4)


def _status(fn) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as info:
        fn()
    return info.value.status(), info.value.message()


def test_errors_come_back_as_tritonclient_exceptions(client):
    x = tensors(1, seed=4)
    assert _status(lambda: client.infer("resnet50", [infer_input(x)])) == (
        "404", "unknown model 'resnet50': this server serves 'oip-ort'")
    status, message = _status(lambda: client.infer(MODEL, [infer_input(x)], model_version="3"))
    assert status == "404" and "only version is '1'" in message
    status, message = _status(lambda: client.get_model_metadata("other"))
    assert status == "404" and "unknown model 'other'" in message
    status, message = _status(lambda: client.infer(MODEL, [infer_input(x[:, :, :100])]))
    assert status == "400" and "must have shape [N, 3, 224, 224]" in message
    status, message = _status(lambda: client.infer(MODEL, [infer_input(x.astype(np.int32), datatype="INT32")]))
    assert status == "400" and "datatype 'INT32' is not supported" in message
    status, message = _status(lambda: client.infer(MODEL, [infer_input(x, name="images")]))
    assert status == "400" and "unknown input 'images'" in message
    nan = x.copy()
    nan[0, 0, 0, 0] = np.nan
    status, message = _status(lambda: client.infer(MODEL, [infer_input(nan)]))
    assert status == "400" and "NaN" in message
    status, message = _status(lambda: client.infer(MODEL, [infer_input(x)],
                                                   outputs=[httpclient.InferRequestedOutput("probs")]))
    assert status == "400" and "unknown output 'probs'" in message
    status, message = _status(lambda: client.infer(MODEL, [infer_input(x)], request_compression_algorithm="gzip"))
    assert status == "415" and "Content-Encoding gzip is not supported" in message
    status, message = _status(lambda: client.infer(MODEL, [infer_input(tensors(5))]))  # 3 MB over the limit
    assert status == "413" and "over the limit of 3000000 bytes" in message


@pytest.mark.parametrize("header_length,body,fragment", [
    ("abc", b'{"inputs": []}', "Inference-Header-Content-Length must be"),
    ("-1", b'{"inputs": []}', "Inference-Header-Content-Length must be"),
    ("999", b'{"inputs": []}', "Inference-Header-Content-Length must be"),
    ("5", b'{"inputs": []}', "invalid JSON"),
    (None, b'{"inputs": [{"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32", "data": '
           + b"[" * 100_000 + b"]" * 100_000 + b"}]}", "nested 100003 deep"),
    (None, b'{"inputs": [{"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32", '
           b'"parameters": {"binary_data_size": 602112}}]}', "binary_data_size 602112 must be the 0 bytes"),
    (None, b'{"inputs": [{"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32", "data": [1, 2]}]}',
     "2 values of data for shape [1, 3, 224, 224]"),
    (None, b'{"outputs": []}', '"inputs": [...]'),
    (None, b'{"inputs": [{"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32", '
           b'"parameters": {"shared_memory_region": "r", "shared_memory_byte_size": 602112}}]}',
     "shared memory is not supported"),
    (None, b'{"inputs": [{"name": "input", "shape": [9, 3, 224, 224], "datatype": "FP32", "data": []}]}',
     "a batch of 9 is over this model's max_batch_size 8"),
])
def test_malformed_requests_are_400(server, header_length, body, fragment):
    import httpx

    headers = {} if header_length is None else {"Inference-Header-Content-Length": header_length}
    r = httpx.post(f"http://{server[0]}/v2/models/{MODEL}/infer", content=body, headers=headers, timeout=30)
    assert r.status_code == 400, r.text
    assert fragment in r.json()["error"] and "Traceback" not in r.text


def test_not_ready_is_503(ort_path):
    from rexnet_deploy.serving import create_app

    # no lifespan: the service is never started (as while loading), but the server listens
    with serving(create_app(ort_path), lifespan="off") as url, httpclient.InferenceServerClient(url) as c:
        assert c.is_server_live() and not c.is_server_ready() and not c.is_model_ready(MODEL)
        status, message = _status(lambda: c.infer(MODEL, [infer_input(tensors(1))]))
        assert status == "503" and "not ready" in message


def test_torchscript_model_uses_the_positional_triton_names(ts_engine_path):
    """export-triton names libtorch tensors INPUT__0 / OUTPUT__0; /v2 does too (and takes the manifest's)."""
    from starlette.testclient import TestClient

    from rexnet_deploy.serving import Service, create_app

    x = tensors(1, seed=6)
    body = {"inputs": [{"name": "INPUT__0", "shape": [1, 3, 224, 224], "datatype": "FP32", "data": x.ravel().tolist()}],
            "outputs": [{"name": "OUTPUT__0"}]}
    with TestClient(create_app(Service(ts_engine_path, max_batch=1, warmup_rounds=0))) as c:
        name = ts_engine_path.name
        meta = c.get(f"/v2/models/{name}").json()
        assert (meta["platform"], meta["inputs"][0]["name"], meta["outputs"][0]["name"]) == (
            "pytorch_libtorch", "INPUT__0", "OUTPUT__0")
        r = c.post(f"/v2/models/{name}/infer", json=body)
        assert r.status_code == 200, r.text
        got = np.asarray(r.json()["outputs"][0]["data"], dtype=np.float32)
        body["inputs"][0]["name"] = "input"  # the manifest's name is accepted too
        assert c.post(f"/v2/models/{name}/infer", json=body).status_code == 200
        want = c.app.state.service.engine(x)[0]
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=1e-4)
