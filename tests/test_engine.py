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
    m = engine.manifest.to_json()  # the manifest.json as written
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
    monkeypatch.setattr(images, "load_image", lambda p, **kw: decoded.append(str(p)) or original(p, **kw))
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
    with pytest.raises(UsageError, match="closed"):
        e.run_batch(np.zeros((1, 3, 224, 224), np.float32), check=False)


def test_run_batch_validates_unless_told_the_rows_were_checked(engine):
    from rexnet_deploy.errors import InputError

    x = np.random.default_rng(7).standard_normal((3, 3, 224, 224), dtype=np.float32)
    want = engine(x)
    for check in (True, False):
        got = engine.run_batch(x, check=check)
        assert isinstance(got, list) and len(got) == 1
        np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-6)
    x[1, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN or inf"):
        engine.run_batch(x)
    with pytest.raises(InputError, match="outside this engine's range"):
        engine.run_batch(np.zeros((9, 3, 224, 224), np.float32))
    unchecked = engine.run_batch(x, check=False)[0]  # no scan: the NaN reaches the model
    assert np.isnan(unchecked[1]).any() and np.isfinite(unchecked[0]).all()


def test_pad_to_fills_with_the_last_row_or_zeros_for_arrays_tensors_and_rows():
    import torch

    from rexnet_deploy.batch_shapes import pad_to

    x = np.arange(2 * 3, dtype=np.float32).reshape(2, 3) + 1
    last = pad_to(x, 4)
    assert last.shape == (4, 3) and last.dtype == np.float32
    np.testing.assert_array_equal(last, x[[0, 1, 1, 1]])
    np.testing.assert_array_equal(pad_to(x, 3, fill="zeros"), np.concatenate([x, np.zeros((1, 3), np.float32)]))
    assert pad_to(x, 2) is x  # nothing to pad: no copy
    stacked = pad_to([x[0], x[1]], 3)  # rows (the serving batcher): stacked and padded in one array
    np.testing.assert_array_equal(stacked, x[[0, 1, 1]])
    np.testing.assert_array_equal(pad_to([x[0], x[1]], 2), x)
    t = torch.from_numpy(x)
    for fill, want in (("last", x[[0, 1, 1]]), ("zeros", np.concatenate([x, np.zeros((1, 3), np.float32)]))):
        padded = pad_to(t, 3, fill=fill)
        assert isinstance(padded, torch.Tensor) and padded.dtype == t.dtype and padded.device == t.device
        np.testing.assert_array_equal(padded.numpy(), want)
    with pytest.raises(ValueError, match="cannot pad 2 rows to 1"):
        pad_to(x, 1)
    with pytest.raises(ValueError, match="fill must be"):
        pad_to(x, 3, fill="edge")


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


# -- tensors in, tensors out (DLPack) ------------------------------------------------------------
class _Capsule:
    """A DLPack-capable array of a library without from_dlpack (and, with ``device``, in GPU memory)."""

    def __init__(self, array: np.ndarray, device: tuple[int, int] = (1, 0)):
        self._array, self._device = array, device

    def __dlpack__(self, **kwargs):
        return self._array.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._device


def test_cpu_torch_tensor_in_gives_a_torch_tensor_out(engine):
    import torch

    x = np.random.default_rng(4).standard_normal((2, 3, 224, 224), dtype=np.float32)
    want = engine(x)
    got = engine(torch.from_numpy(x))
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32 and got.device.type == "cpu"
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    run = engine.run(torch.from_numpy(x))
    assert list(run) == ["logits"] and isinstance(run["logits"], torch.Tensor)


def test_tensor_input_is_validated_like_numpy(engine):
    import torch

    from rexnet_deploy.errors import InputError, UsageError

    with pytest.raises(InputError, match="must be float32"):
        engine(torch.zeros(1, 3, 224, 224, dtype=torch.float64))
    with pytest.raises(InputError, match="looks NHWC"):
        engine(torch.zeros(1, 224, 224, 3))
    with pytest.raises(InputError, match="outside this engine's range"):
        engine(torch.zeros(9, 3, 224, 224))
    bad = torch.zeros(1, 3, 224, 224)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN or inf"):
        engine(bad)
    with pytest.raises(UsageError, match="has no from_dlpack"):  # outputs could not go back as its kind
        engine(_Capsule(np.zeros((1, 3, 224, 224), np.float32)))


@pytest.fixture(scope="module")
def ort_engine(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    from .conftest import build_artifact

    with Engine.load(build_artifact(tmp_path_factory, "ort-tensors", "onnxruntime", "fp32", check=False)) as e:
        yield e


def test_host_memory_backends_take_cpu_tensors_without_copies_and_refuse_gpu_memory(ort_engine):
    import torch

    from rexnet_deploy.errors import UsageError

    x = np.random.default_rng(5).standard_normal((2, 3, 224, 224), dtype=np.float32)
    got = ort_engine(torch.from_numpy(x))
    assert isinstance(got, torch.Tensor)
    np.testing.assert_allclose(got.numpy(), ort_engine(x), rtol=1e-6, atol=1e-6)
    with pytest.raises(UsageError, match=r"onnxruntime engines run on host memory; .* CUDA memory: pass x.cpu\(\)"):
        ort_engine(_Capsule(x, device=(2, 0)))


def test_torchscript_options_are_checked(ts_engine_path):
    from rexnet_deploy.errors import UsageError

    with pytest.raises(UsageError, match="cuda_graph needs a CUDA engine"):
        Engine.load(ts_engine_path, cuda_graph=True)
    with pytest.raises(UsageError, match=r"warm_batches \[9\] must be batch sizes in this engine's range 1..8"):
        Engine.load(ts_engine_path, warm=True, warm_batches=[1, 9])
    with pytest.raises(UsageError, match="warm_batches without warm"):
        Engine.load(ts_engine_path, warm=False, warm_batches=[1])
    with pytest.raises(UsageError, match="unknown torchscript options: fast"):
        Engine.load(ts_engine_path, fast=True)


def test_torchscript_engine_exposes_its_module_device_and_dtype(engine):
    """What the GPU suite's hand-timed loop calls: the engine's own module, fed as the engine feeds it."""
    import torch

    assert engine.torch_device == torch.device("cpu") and engine.torch_dtype == torch.float32
    x = np.random.default_rng(8).standard_normal((1, 3, 224, 224), dtype=np.float32)
    with torch.inference_mode():
        t = torch.from_numpy(x).to(engine.torch_device).to(dtype=engine.torch_dtype, memory_format=torch.channels_last)
        by_hand = engine.module(t).float().numpy()
    np.testing.assert_allclose(by_hand, engine(x), rtol=1e-5, atol=1e-6)


def test_warm_at_load_records_each_batch_size(ts_engine_path):
    from rexnet_deploy.backends.torch_engine import default_warm_batches
    from rexnet_deploy.batch_shapes import padded_size

    assert default_warm_batches(1, 256) == (1, 2, 4, 8, 16, 32, 64, 128, 256)
    assert default_warm_batches(3, 20) == (3, 4, 8, 16, 20) and default_warm_batches(1, 1) == (1,)
    # a CUDA call runs at the next warmed size; a size above every warmed one runs as it is
    assert [padded_size(n, (1, 2, 4, 8)) for n in (1, 3, 5, 8, 9)] == [1, 4, 8, 8, 9]
    assert padded_size(5, ()) == 5
    with Engine.load(ts_engine_path) as cold:
        assert cold.warmup == {}  # off by default on the CPU
    with Engine.load(ts_engine_path, warm=True, warm_batches=[2]) as warm:
        record = warm.warmup[2]
        assert list(warm.warmup) == [2] and record["warmup_calls"] >= 2 and record["first_call_ms"] > 0
        assert set(record) == {"first_call_ms", "warmup_calls", "warmup_seconds", "steady", "warm_ms"}


# -- on a CUDA GPU (skipped without one) -----------------------------------------------------------
@pytest.fixture(scope="module")
def cuda_fp16_path(tmp_path_factory):
    from rexnet_deploy import BuildSpec, ModelSpec, WeightsSpec, build

    out = tmp_path_factory.mktemp("engines") / "ts-cuda-fp16"
    build(ModelSpec("rexnet_100", weights=WeightsSpec("random", seed=0)),
          BuildSpec(backend="torchscript", precision="fp16", device="cuda", batch=(1, 8)), out,
          check_options={"synthetic": 4}).close()
    return out


@pytest.mark.gpu
@pytest.mark.slow
def test_cuda_engine_warms_at_load_and_keeps_tensors_on_the_gpu(cuda_fp16_path):
    import torch

    from rexnet_deploy.errors import UsageError

    with Engine.load(cuda_fp16_path) as e:
        assert set(e.warmup) == {1, 2, 4, 8}  # default_warm_batches(1, 8)
        x = torch.randn(3, 3, 224, 224, device="cuda")  # runs padded to 4
        with Engine.load(cuda_fp16_path, warm=False) as unpadded:
            np.testing.assert_allclose(e(x.cpu().numpy()), unpadded(x.cpu().numpy()), rtol=0, atol=1e-2)
        out = e(x)
        assert isinstance(out, torch.Tensor) and out.device == x.device and out.dtype == torch.float32
        np.testing.assert_allclose(out.cpu().numpy(), e(x.cpu().numpy()), rtol=0, atol=1e-3)
        with pytest.raises(UsageError, match="this tensor is on cpu, the engine runs on cuda:0"):
            e(x.cpu())


@pytest.mark.gpu
@pytest.mark.slow
def test_cuda_graph_replay_matches_the_module(cuda_fp16_path):
    import torch

    from rexnet_deploy.errors import InputError

    x = np.random.default_rng(6).standard_normal((8, 3, 224, 224), dtype=np.float32)
    with Engine.load(cuda_fp16_path) as plain, Engine.load(cuda_fp16_path, cuda_graph=True, warm_batches=[1, 8]) as g:
        assert g.graph_batches == (1, 8)
        np.testing.assert_allclose(g(x), plain(x), rtol=0, atol=1e-2)
        np.testing.assert_allclose(g(x[:3]), plain(x[:3]), rtol=0, atol=1e-2)  # no graph at 3: the module
        t = torch.from_numpy(x).cuda()
        first, second = g(t), g(t * 2)
        assert not torch.equal(first, second)  # the first output survived the next replay (a clone)
        np.testing.assert_allclose(first.cpu().numpy(), plain(x), rtol=0, atol=1e-2)
        x[0, 0, 0, 0] = np.nan
        with pytest.raises(InputError, match="NaN or inf"):
            g(x)
