"""Serving: the dynamic batcher (batching, answers matched to requests, per-request errors,
overload, shutdown) and the HTTP app (every endpoint, JSON 4xx errors, 413, Prometheus metrics),
on a seeded ONNX Runtime FP32 engine (batch 1..8); one test runs the real ``serve`` CLI on
127.0.0.1. No traffic goes anywhere else."""

from __future__ import annotations

import asyncio
import io
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import CancelledError, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from rexnet_deploy.errors import ImageError, InputError, Overloaded, ServiceClosed, UsageError

from .conftest import build_artifact, expect_error, run_cli, without_module
from .serve_process import start, wait_ready

pytest.importorskip("onnxruntime")
ATOL = 1e-4  # a row's logits may differ in the last bits between batch sizes (other kernels)


@pytest.fixture(scope="module")
def ort_path(tmp_path_factory) -> Path:
    return build_artifact(tmp_path_factory, "serve-ort", "onnxruntime", "fp32", check=False)


@pytest.fixture(scope="module")
def engine(ort_path):
    from rexnet_deploy import Engine

    with Engine.load(ort_path) as e:
        yield e


@pytest.fixture(scope="module")
def photos() -> list:
    from rexnet_deploy.synthetic import synthetic_images

    return synthetic_images(6, seed=5)


def jpeg(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def npy(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x)
    return buf.getvalue()


def tensors(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 224, 224), dtype=np.float32)


class Gate:
    """Holds the engine inside its next batch until released, so a test can fill the queue."""

    def __init__(self, engine, monkeypatch):
        self.entered, self.release = threading.Event(), threading.Event()
        real = engine._infer

        def gated(batch):
            self.entered.set()
            assert self.release.wait(30), "gate never released"
            return real(batch)

        monkeypatch.setattr(engine, "_infer", gated)


def _batcher(engine, **kw):
    from rexnet_deploy.serving import Batcher

    return Batcher(engine, **kw)


# -- the batcher ------------------------------------------------------------------------------
def test_concurrent_submits_are_batched_and_answers_match_requests(engine):
    x = tensors(24, seed=1)
    start = threading.Barrier(24)
    with _batcher(engine, max_batch=8, max_delay_ms=50) as b:
        def client(i):
            start.wait()
            return b.submit(x[i]).result(timeout=60)

        with ThreadPoolExecutor(24) as pool:
            got = list(pool.map(client, range(24)))
        assert b.stats.requests == 24
        assert max(b.stats.sizes) > 1, b.stats.sizes  # requests did share batches
        assert max(b.stats.sizes) <= 8
    for i in range(24):  # each answer is its own input's, not a neighbour's
        np.testing.assert_allclose(got[i], engine(x[i:i + 1])[0], atol=ATOL, rtol=1e-4)
    assert not np.allclose(got[0], got[1], atol=ATOL)  # (distinct inputs give distinct rows)


def test_max_batch_clamped_to_engine_range_and_sizes_warmed(engine):
    with _batcher(engine, max_batch=100) as b:
        assert (b.max_batch, b.batch_sizes) == (8, [1, 2, 4, 8])
        assert b.warmup(rounds=1) == [1, 2, 4, 8]
    with _batcher(engine, max_batch=3) as b:
        assert b.batch_sizes == [1, 2, 3]
    with pytest.raises(UsageError, match="outside this engine's range"):
        _batcher(engine, batch_sizes=[1, 16])
    with pytest.raises(UsageError, match="max_queue"):
        _batcher(engine, max_queue=0)


def test_padded_batch_answers_only_real_rows(engine, monkeypatch):
    """3 requests in one batch run padded to 4; the 3 answers are the 3 inputs' rows."""
    gate = Gate(engine, monkeypatch)
    x = tensors(4, seed=2)
    with _batcher(engine, max_batch=8, max_delay_ms=0) as b:
        first = b.submit(x[3])
        assert gate.entered.wait(10)
        futures = [b.submit(x[i]) for i in range(3)]  # queued together behind the gated batch
        gate.release.set()
        got = [f.result(timeout=30) for f in futures]
        first.result(timeout=30)
        assert b.stats.sizes[3] == 1, b.stats.sizes
    monkeypatch.undo()
    for i in range(3):
        np.testing.assert_allclose(got[i], engine(x[i:i + 1])[0], atol=ATOL, rtol=1e-4)


def test_bad_requests_fail_only_their_own_future(engine, photos, monkeypatch):
    gate = Gate(engine, monkeypatch)
    good = jpeg(photos[0])
    nan = tensors(1, seed=3)[0]
    nan[0, 0, 0] = np.nan
    x = tensors(2, seed=4)
    with _batcher(engine, max_batch=8, max_delay_ms=0) as b:
        blocker = b.submit(x[0])
        assert gate.entered.wait(10)
        items = [good, good[: len(good) // 2], x[1], b"not an image", x[1][:, :100], nan,
                 x[1].transpose(1, 2, 0), x[1].astype(np.float64), object(), photos[1]]
        futures = [b.submit(item) for item in items]
        gate.release.set()
        outcomes = []
        for f in futures:
            try:
                outcomes.append(f.result(timeout=30))
            except Exception as exc:  # noqa: BLE001 - the test sorts them below
                outcomes.append(exc)
        blocker.result(timeout=30)
        assert b.stats.sizes[3] == 1  # the three good ones ran as one batch, unharmed
    monkeypatch.undo()
    assert isinstance(outcomes[1], ImageError) and "corrupt" in str(outcomes[1])
    assert isinstance(outcomes[3], ImageError) and "not a supported image format" in str(outcomes[3])
    assert isinstance(outcomes[4], InputError) and "shape (3, 224, 224)" in str(outcomes[4])
    assert isinstance(outcomes[5], InputError) and "NaN" in str(outcomes[5])
    assert isinstance(outcomes[6], InputError) and "looks HWC" in str(outcomes[6])
    assert isinstance(outcomes[7], InputError) and "float32" in str(outcomes[7])
    assert isinstance(outcomes[8], InputError) and "cannot serve a object" in str(outcomes[8])
    np.testing.assert_allclose(outcomes[0], engine(engine.preprocess(_decoded(good)))[0], atol=ATOL, rtol=1e-4)
    np.testing.assert_allclose(outcomes[2], engine(x[1:2])[0], atol=ATOL, rtol=1e-4)
    np.testing.assert_allclose(outcomes[9], engine(engine.preprocess(photos[1]))[0], atol=ATOL, rtol=1e-4)


def test_full_queue_refuses_with_overloaded(engine, monkeypatch):
    gate = Gate(engine, monkeypatch)
    x = tensors(1, seed=5)[0]
    with _batcher(engine, max_batch=2, max_delay_ms=0, max_queue=4) as b:
        running = b.submit(x)
        assert gate.entered.wait(10)
        queued = [b.submit(x) for _ in range(4)]
        refused = b.submit(x)
        with pytest.raises(Overloaded, match=r"overloaded: 4 requests already queued \(max_queue 4\)"):
            refused.result(timeout=1)
        assert b.queue_depth == 4
        gate.release.set()
        for f in [running, *queued]:
            assert f.result(timeout=30).shape == (1000,)
        assert b.submit(x).result(timeout=30).shape == (1000,)  # room again once the queue drained


def test_close_drains_every_queued_request(engine, monkeypatch):
    gate = Gate(engine, monkeypatch)
    x = tensors(1, seed=6)[0]
    b = _batcher(engine, max_batch=2, max_delay_ms=0)
    futures = [b.submit(x)]
    assert gate.entered.wait(10)
    futures += [b.submit(x) for _ in range(5)]
    closer = threading.Thread(target=b.close)  # blocks until everything queued is answered
    closer.start()
    time.sleep(0.1)
    late = b.submit(x)
    gate.release.set()
    closer.join(30)
    assert not closer.is_alive()
    assert all(f.result(timeout=1).shape == (1000,) for f in futures)
    with pytest.raises(ServiceClosed, match="closed"):
        late.result(timeout=1)


def test_close_without_drain_cancels_what_is_queued(engine, monkeypatch):
    gate = Gate(engine, monkeypatch)
    x = tensors(1, seed=7)[0]
    b = _batcher(engine, max_batch=2, max_delay_ms=0)
    running = b.submit(x)
    assert gate.entered.wait(10)
    queued = [b.submit(x) for _ in range(5)]
    closer = threading.Thread(target=b.close, kwargs={"drain": False})
    closer.start()
    time.sleep(0.1)
    gate.release.set()
    closer.join(30)
    assert not closer.is_alive()
    assert running.result(timeout=1).shape == (1000,)  # the batch in the engine is still answered
    assert all(f.cancelled() for f in queued)
    for f in queued:
        with pytest.raises(CancelledError):
            f.result(timeout=0)


def test_submit_async_from_many_coroutines(engine, photos):
    x = tensors(6, seed=8)

    async def main(b):
        return await asyncio.gather(*[b.submit_async(x[i]) for i in range(6)],
                                    *[b.submit_async(jpeg(p)) for p in photos],
                                    b.submit_async(b"broken"), return_exceptions=True)

    with _batcher(engine, max_batch=8, max_delay_ms=20) as b:
        got = asyncio.run(main(b))
        assert max(b.stats.sizes) > 1
    for i in range(6):
        np.testing.assert_allclose(got[i], engine(x[i:i + 1])[0], atol=ATOL, rtol=1e-4)
    ref = engine(engine.preprocess([_decoded(jpeg(p)) for p in photos]))
    for i in range(6):
        np.testing.assert_allclose(got[6 + i], ref[i], atol=ATOL, rtol=1e-4)
    assert isinstance(got[12], ImageError)


def test_images_waiting_for_decoding_count_against_max_queue(engine, photos, monkeypatch):
    gate = Gate(engine, monkeypatch)
    data = jpeg(photos[0])

    async def main(b):
        first = asyncio.ensure_future(b.submit_async(tensors(1)[0]))  # holds the engine
        while not gate.entered.is_set():
            await asyncio.sleep(0.01)
        tasks = [asyncio.ensure_future(b.submit_async(data)) for _ in range(6)]
        await asyncio.sleep(0)  # each task has reserved its place, or been refused, before its first await
        gate.release.set()
        return await asyncio.gather(first, *tasks, return_exceptions=True)

    with _batcher(engine, max_batch=8, max_delay_ms=0, max_queue=3, preprocess_workers=1) as b:
        got = asyncio.run(main(b))
    assert got[0].shape == (1000,)
    assert sum(isinstance(g, Overloaded) for g in got[1:]) == 3, got
    assert sum(isinstance(g, np.ndarray) for g in got[1:]) == 3, got


def _decoded(data: bytes):
    from rexnet_deploy.serving.inputs import decode_image_bytes

    return decode_image_bytes(data)


# -- the HTTP app -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client(ort_path):
    from starlette.testclient import TestClient

    from rexnet_deploy.serving import create_app

    app = create_app(ort_path, max_batch=8, max_delay_ms=2, max_body_bytes=4_000_000)  # a JSON tensor is ~3 MB
    with TestClient(app) as c:  # runs the lifespan: load + warm-up
        yield c


def test_healthz_ready_after_warmup(client):
    r = client.get("/healthz")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ready" and body["backend"] == "onnxruntime"
    assert body["batch_sizes"] == [1, 2, 4, 8] and body["max_batch"] == 8


def test_healthz_503_until_started(ort_path):
    from starlette.testclient import TestClient

    from rexnet_deploy.serving import create_app

    c = TestClient(create_app(ort_path))  # no `with`: the lifespan (load + warm-up) never ran
    r = c.get("/healthz")
    assert (r.status_code, r.json()["status"]) == (503, "stopped")
    r = c.post("/v1/infer", content=npy(tensors(1)[0]), headers={"content-type": "application/x-npy"})
    assert r.status_code == 503 and "not ready" in r.json()["error"]


def test_predict_raw_and_multipart(client, engine, photos):
    want = engine.predict(_decoded(jpeg(photos[2])), topk=3)[0]
    for kwargs in ({"content": jpeg(photos[2]), "headers": {"content-type": "image/jpeg"}},
                   {"content": jpeg(photos[2])},
                   {"files": {"image": ("p.jpg", jpeg(photos[2]), "image/jpeg")}}):
        r = client.post("/v1/predict?topk=3", **kwargs)
        assert r.status_code == 200, r.text
        got = r.json()["predictions"]
        assert [p["index"] for p in got] == [p.index for p in want]
        assert [p["label"] for p in got] == [p.label for p in want]
        np.testing.assert_allclose([p["score"] for p in got], [p.score for p in want], atol=1e-5)
    assert len(client.post("/v1/predict", content=jpeg(photos[3])).json()["predictions"]) == 5  # default topk


def test_infer_npy_json_and_npy_answer(client, engine):
    x = tensors(2, seed=9)
    want = engine(x[:1])[0]
    r = client.post("/v1/infer", content=npy(x[0]), headers={"content-type": "application/x-npy"})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["outputs"]["logits"], want, atol=ATOL, rtol=1e-4)
    r = client.post("/v1/infer", content=npy(x[:1]), headers={"content-type": "application/x-npy",
                                                               "accept": "application/x-npy"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-npy"
    np.testing.assert_allclose(np.load(io.BytesIO(r.content)), want, atol=ATOL, rtol=1e-4)
    small = np.round(x[1], 3)  # JSON: a nested list
    r = client.post("/v1/infer", json={"input": small.tolist()})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["outputs"]["logits"], engine(small[None])[0], atol=ATOL, rtol=1e-4)


def _object_npy() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return buf.getvalue()


@pytest.mark.parametrize("method,url,kwargs,status,fragment", [
    ("post", "/v1/predict", {"content": b"\xff\xd8\xff\xe0 truncated"}, 400, "cannot read image"),
    ("post", "/v1/predict", {"content": b""}, 400, "empty image body"),
    ("post", "/v1/predict?topk=0", {"content": b"x"}, 400, "topk must be in 1..1000"),
    ("post", "/v1/predict?topk=abc", {"content": b"x"}, 400, "topk must be an integer"),
    ("post", "/v1/predict", {"json": {"input": 1}}, 415, "send tensors to /v1/infer"),
    ("post", "/v1/predict", {"files": {"note": (None, "text only")}}, 400, "no file field"),
    ("post", "/v1/infer", {"content": b"hello", "headers": {"content-type": "text/plain"}}, 415, "application/x-npy"),
    ("post", "/v1/infer", {"content": npy(np.zeros((3, 10, 10), np.float32)),
                           "headers": {"content-type": "application/x-npy"}}, 400, "shape (3, 224, 224)"),
    ("post", "/v1/infer", {"content": npy(np.zeros((3, 224, 224), np.uint8)),
                           "headers": {"content-type": "application/x-npy"}}, 400, "takes a float32 tensor"),
    ("post", "/v1/infer", {"content": _object_npy(), "headers": {"content-type": "application/x-npy"}}, 400,
     "cannot read the .npy body"),
    ("post", "/v1/infer", {"content": b"[1, 2", "headers": {"content-type": "application/json"}}, 400, "invalid JSON"),
    ("post", "/v1/infer", {"json": {"input": [[1, 2], [3]]}}, 400, "not a rectangular array"),
    ("post", "/v1/infer", {"json": {"other": 1}}, 400, '{"input"'),
    ("get", "/v1/predict", {}, 405, "Method Not Allowed"),
    ("get", "/nowhere", {}, 404, "Not Found"),
])
def test_bad_requests_get_json_4xx(client, method, url, kwargs, status, fragment):
    r = getattr(client, method)(url, **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert fragment in body["error"], body
    assert "Traceback" not in r.text


def test_engine_failure_is_a_json_500_without_details(client, monkeypatch):
    def broken(batch):
        raise RuntimeError("device lost\n  File internals.py, line 1")

    monkeypatch.setattr(client.app.state.service.engine, "_infer", broken)
    r = client.post("/v1/infer", content=npy(tensors(1)[0]), headers={"content-type": "application/x-npy"})
    assert r.status_code == 500
    assert r.json() == {"error": "internal error (RuntimeError); see the server log", "type": "RuntimeError"}
    monkeypatch.undo()
    r = client.post("/v1/infer", content=npy(tensors(1)[0]), headers={"content-type": "application/x-npy"})
    assert r.status_code == 200  # the worker survived the failed batch


def test_full_queue_is_a_503_with_retry_after(engine, monkeypatch):
    from starlette.testclient import TestClient

    from rexnet_deploy.serving import Service, create_app

    gate = Gate(engine, monkeypatch)
    body, headers = npy(tensors(1)[0]), {"content-type": "application/x-npy"}
    service = Service(engine, max_batch=1, max_delay_ms=0, max_queue=1, warmup_rounds=0)
    with TestClient(create_app(service)) as c, ThreadPoolExecutor(2) as pool:
        held = pool.submit(c.post, "/v1/infer", content=body, headers=headers)  # in the engine
        assert gate.entered.wait(30)
        queued = pool.submit(c.post, "/v1/infer", content=body, headers=headers)
        deadline = time.monotonic() + 30
        while service.batcher.queue_depth < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        r = c.post("/v1/infer", content=body, headers=headers)
        gate.release.set()
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["type"] == "Overloaded" and "max_queue 1" in r.json()["error"]
        assert held.result(30).status_code == 200 and queued.result(30).status_code == 200
    assert engine(tensors(1)).shape == (1, 1000)  # the app did not close an engine it was given


def test_body_limit_413_declared_and_streamed(client):
    big = b"\0" * 4_000_001
    r = client.post("/v1/predict", content=big)
    assert r.status_code == 413 and "over the limit of 4000000 bytes" in r.json()["error"]

    def chunks():  # no Content-Length: counted while streaming
        for _ in range(50):
            yield b"\0" * 100_000

    r = client.post("/v1/infer", content=chunks(), headers={"content-type": "application/x-npy"})
    assert r.status_code == 413 and r.json()["type"] == "BodyTooLarge"


def test_metrics_in_prometheus_text(ort_path, photos):
    from prometheus_client.parser import text_string_to_metric_families
    from starlette.testclient import TestClient

    from rexnet_deploy.serving import create_app

    app = create_app(ort_path, max_batch=8, max_delay_ms=30)
    other = create_app(ort_path)  # a second app in the process: its own registry, no clash
    with TestClient(app) as c:
        with ThreadPoolExecutor(6) as pool:  # concurrent requests, so batches form
            codes = list(pool.map(lambda p: c.post("/v1/predict", content=jpeg(p)).status_code, photos))
        assert codes == [200] * 6
        assert c.post("/v1/predict", content=b"\xff\xd8\xff junk").status_code == 400  # a broken JPEG (junk: 415)
        r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    assert samples[("rexnet_requests_total", (("code", "200"), ("endpoint", "predict")))] == 6
    assert samples[("rexnet_requests_total", (("code", "400"), ("endpoint", "predict")))] == 1
    assert samples[("rexnet_errors_total", (("endpoint", "predict"), ("error", "ImageError")))] == 1
    assert samples[("rexnet_batch_size_sum", ())] == 6
    assert samples[("rexnet_batch_size_count", ())] < 6  # some requests shared a batch
    assert samples[("rexnet_request_latency_seconds_count", (("endpoint", "predict"),))] == 7
    assert samples[("rexnet_queue_depth", ())] == 0
    assert ("rexnet_batch_latency_seconds_count", ()) in samples
    assert other.state.service.metrics.registry is not app.state.service.metrics.registry


# -- imports, the CLI ---------------------------------------------------------------------------
def test_core_and_other_commands_do_not_import_the_web_stack():
    code = ("import sys, rexnet_deploy, rexnet_deploy.cli, rexnet_deploy.serving\n"
            "from rexnet_deploy.serving import Batcher\n"
            "print(sorted(m for m in ('starlette', 'uvicorn', 'prometheus_client', 'multipart', 'httpx') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_serve_without_the_extra_names_it(ort_path, tmp_path):
    r = run_cli("serve", str(ort_path), env=without_module(tmp_path, "uvicorn"))
    expect_error(r, "serve needs the serve extra", "rexnet-deploy[serve]", "uvicorn")


def test_serve_refuses_bad_engine_and_busy_port(ort_path, tmp_path):
    expect_error(run_cli("serve", str(tmp_path / "missing"), "--port", "0"), "missing")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        r = run_cli("serve", str(ort_path), "--port", str(busy.getsockname()[1]))
    expect_error(r, "cannot listen on 127.0.0.1:", "in use")


def _start_serve(ort_path, *extra: str) -> tuple[subprocess.Popen, str]:
    """``rexnet-deploy serve`` on 127.0.0.1, port 0 (the OS picks a free one; serve announces it)."""
    proc, base, _ = start(ort_path, *extra)
    return proc, base


def _wait_ready(httpx, base: str, proc) -> dict:
    return wait_ready(base, proc)


def _stop(proc) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
def test_serve_cli_answers_20_concurrent_requests_then_stops(ort_path, engine, photos):
    httpx = pytest.importorskip("httpx")
    proc, base = _start_serve(ort_path, "--max-batch", "8", "--max-delay-ms", "20", "--log-level", "warning")
    try:
        info = _wait_ready(httpx, base, proc)
        assert info["batch_sizes"] == [1, 2, 4, 8]
        bodies = [jpeg(photos[i % len(photos)]) for i in range(20)]
        with httpx.Client(base_url=base, timeout=30) as http, ThreadPoolExecutor(10) as pool:
            answers = list(pool.map(lambda b: http.post("/v1/predict?topk=1", content=b), bodies))
            metrics = http.get("/metrics").text
        want = [engine.predict(_decoded(b), topk=1)[0][0].index for b in bodies]
        assert [a.status_code for a in answers] == [200] * 20
        assert [a.json()["predictions"][0]["index"] for a in answers] == want
        assert 'rexnet_requests_total{code="200",endpoint="predict"} 20.0' in metrics
    finally:
        code = _stop(proc)
    assert code == 0


@pytest.mark.slow
def test_serve_cli_workers_each_load_the_engine(ort_path):
    httpx = pytest.importorskip("httpx")
    proc, base = _start_serve(ort_path, "--workers", "2", "--threads", "1", "--max-batch", "2", "--log-level", "warning")
    try:
        _wait_ready(httpx, base, proc)
        x = npy(tensors(1, seed=10)[0])
        pids, deadline = set(), time.monotonic() + 60
        with httpx.Client(base_url=base, timeout=30) as http:
            while len(pids) < 2 and time.monotonic() < deadline:  # new connections land on either worker
                with httpx.Client(base_url=base, timeout=30) as one:
                    r = one.get("/healthz")
                    if r.status_code == 200:
                        pids.add(r.json()["pid"])
            assert http.post("/v1/infer", content=x, headers={"content-type": "application/x-npy"}).status_code == 200
        assert len(pids) == 2 and proc.pid not in pids
    finally:
        code = _stop(proc)
    assert code == 0
