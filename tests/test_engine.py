"""Engine.load / __call__ / predict / run on a real TorchScript artifact."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import numpy as np
import pytest

from rexnet_deploy import Engine
from rexnet_deploy.engine import Prediction, softmax


@pytest.fixture(scope="module")
def engine(ts_engine_path):
    with Engine.load(ts_engine_path) as e:
        yield e


def test_manifest_records_what_the_issue_names(engine):
    m = engine.manifest
    assert m["schema"] == 1 and m["format"] == "rexnet-deploy-engine"
    assert m["backend"] == "torchscript" and m["precision"] == "fp32"
    assert m["model"]["name"] == "rexnet_100" and m["model"]["head"] == "classify"
    w = m["model"]["weights"]
    assert w["source"] == "random" and w["seed"] == 0 and w["production"] is False and len(w["state_sha256"]) == 64
    assert m["input"] == {"name": "input", "dtype": "float32", "layout": "NCHW", "shape": [-1, 3, 224, 224], "batch": [1, 8]}
    assert m["preprocess"]["resize"] == [256, 256] and m["preprocess"]["crop"] == [224, 224]
    assert m["preprocess"]["interpolation"] == "bicubic" and m["preprocess"]["crop_pct"] == 0.875
    assert m["outputs"] == [{"name": "logits", "dtype": "float32", "shape": [-1, 1000]}]
    assert set(m["files"]) == {"model.ts", "labels.txt", "wnids.txt"}
    assert all(len(v) == 64 for v in m["files"].values())
    assert m["runtime"]["torch"].startswith(">=")
    for key in ("torch", "timm", "python", "numpy", "rexnet_deploy", "cpu"):
        assert m["environment"].get(key), key
    check = m["reports"]["check"]
    assert check["gate"]["passed"] and check["n_images"] == 8


def test_labels_are_imagenet_in_index_order(engine):
    assert len(engine.labels) == 1000
    assert engine.labels[0].startswith("tench")
    wnids = engine.artifact.file("wnids.txt").read_text().split()
    assert wnids[0] == "n01440764" and wnids[-1] == "n15075141"


def test_call_matches_eager_reference_at_every_batch(engine):
    from rexnet_deploy.harness.reference import TorchReference

    ref = TorchReference.from_manifest(engine.manifest)
    rng = np.random.default_rng(1)
    for n in (1, 3, 8):
        x = rng.standard_normal((n, 3, 224, 224), dtype=np.float32)
        got = engine(x)
        assert isinstance(got, np.ndarray) and got.shape == (n, 1000) and got.dtype == np.float32
        np.testing.assert_allclose(got, ref(x)[0], rtol=1e-3, atol=1e-4)
        assert list(engine.run(x)) == ["logits"]


def test_infer_chunks_batches_beyond_the_range(engine):
    x = np.random.default_rng(2).standard_normal((11, 3, 224, 224), dtype=np.float32)
    out = engine.infer(x)[0]
    assert out.shape == (11, 1000)
    np.testing.assert_allclose(out[8:], engine(x[8:]), rtol=1e-4, atol=1e-5)


def test_predict_paths_pil_and_arrays_agree(engine, image_dir):
    from PIL import Image

    files = sorted(image_dir.iterdir())
    by_path = engine.predict([str(p) for p in files], topk=3)
    assert len(by_path) == len(files) and all(len(p) == 3 for p in by_path)
    first = by_path[0][0]
    assert isinstance(first, Prediction) and first.label == engine.labels[first.index]
    scores = [p.score for p in by_path[0]]
    assert scores == sorted(scores, reverse=True) and 0 < scores[0] <= 1
    pil = Image.open(files[0]).convert("RGB")
    assert [p.index for p in engine.predict(pil, topk=3)[0]] == [p.index for p in by_path[0]]
    arr = np.asarray(pil)
    assert [p.index for p in engine.predict(arr, topk=3)[0]] == [p.index for p in by_path[0]]


def test_predict_files_decodes_each_file_once_and_lists_the_skipped(engine, image_dir, tmp_path, monkeypatch):
    from rexnet_deploy import images

    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a picture")
    decoded: list[str] = []
    original = images.load_image
    monkeypatch.setattr(images, "load_image", lambda p: decoded.append(str(p)) or original(p))
    files = sorted(image_dir.iterdir())
    found = engine.predict_files([image_dir, bad], topk=2, skip_bad=True)
    assert found.names == [str(p) for p in files] and [f for f, _ in found.skipped] == [str(bad)]
    assert len(found.predictions) == len(files) and all(len(p) == 2 for p in found.predictions)
    assert sorted(decoded) == sorted([*found.names, str(bad)])  # every file decoded exactly once
    assert [p.index for p in found.predictions[0]] == [p.index for p in engine.predict(str(files[0]), topk=2)[0]]


def test_predict_probabilities_are_softmax_of_logits(engine, image_dir):
    f = sorted(image_dir.iterdir())[0]
    logits = engine(engine.preprocess(str(f)))
    probs = softmax(logits)[0]
    top = engine.predict(str(f), topk=1000)[0]
    assert sum(p.score for p in top) == pytest.approx(1.0, abs=1e-6)
    assert top[0].index == int(probs.argmax()) and top[0].score == pytest.approx(float(probs.max()))


def test_one_engine_many_threads_gives_correct_results(engine):
    rng = np.random.default_rng(3)
    inputs = [rng.standard_normal((2, 3, 224, 224), dtype=np.float32) for _ in range(6)]
    expected = [engine(x) for x in inputs]
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(2):
                results[i] = engine(inputs[i])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, want in enumerate(expected):
        np.testing.assert_allclose(results[i], want, rtol=1e-5, atol=1e-6)


def test_closed_engine_refuses_calls(ts_engine_path):
    from rexnet_deploy.errors import UsageError

    e = Engine.load(ts_engine_path)
    with e:
        pass
    with pytest.raises(UsageError, match="closed"):
        e(np.zeros((1, 3, 224, 224), np.float32))


def test_fresh_process_load_imports_no_timm_and_predicts(ts_engine_path, image_dir):
    """A TorchScript runtime needs torch, but never timm/torchvision (the build side)."""
    code = (
        "import sys, json\n"
        "from rexnet_deploy import Engine\n"
        "assert 'torch' not in sys.modules\n"
        f"e = Engine.load({str(ts_engine_path)!r})\n"
        f"p = e.predict({str(next(iter(sorted(image_dir.iterdir()))))!r}, topk=2)\n"
        "print(json.dumps({'top': p[0][0].index, 'mods': sorted(m for m in ('timm', 'torchvision', 'onnxruntime', 'openvino') if m in sys.modules)}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["mods"] == []
    assert 0 <= result["top"] < 1000


def test_import_package_is_cheap():
    out = subprocess.run([sys.executable, "-c", "import sys, rexnet_deploy, rexnet_deploy.engine; "
                          "print(sorted(m for m in ('torch', 'timm', 'PIL.ImageDraw') if m in sys.modules))"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "torch" not in out.stdout and "timm" not in out.stdout
