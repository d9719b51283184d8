"""Hostile input (issue 19): every hostile request to the HTTP app is a 4xx JSON error of one
line, refused before it can cost memory or a traceback, and the service stays healthy; the
decode budget (pixels, from the header), the format allowlist, depth-limited JSON, .npy headers
checked against their bodies; close(drain=False) runs nothing queued; a broken symlink is a batch
row. The app runs in this process (starlette's TestClient) on the session TorchScript engine."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import CancelledError
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rexnet_deploy import images
from rexnet_deploy.errors import ImageError, ImageTooLarge, InputError, UnsupportedImageFormat

from .conftest import cli_in_process

# as in production (rexnet_deploy.images makes it an error; pytest resets the filters per test)
pytestmark = pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")


# -- hostile bodies, built small ------------------------------------------------------------------
def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _photo(size=(96, 64)) -> Image.Image:
    """A smooth RGB picture (not flat: truncation then cuts real data)."""
    x = np.linspace(0, 255, size[0], dtype=np.uint8)
    y = np.linspace(0, 255, size[1], dtype=np.uint8)
    return Image.fromarray(np.stack([np.add.outer(y, x) // 2, np.broadcast_to(x, size[::-1]),
                                     np.broadcast_to(y[:, None], size[::-1])], axis=-1).astype(np.uint8))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_bomb(side: int = 18000) -> bytes:
    """A valid bilevel PNG of side x side pixels, all black: ~40 KB for 18000 (324 megapixels;
    Pillow's default decoded it, 1.7 GB)."""
    row = b"\0" * (1 + (side + 7) // 8)  # filter byte + packed bits
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row * 1000) for _ in range(side // 1000)) + z.compress(row * (side % 1000)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
            + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b""))


def _gif_with(screen: tuple[int, int] | None = None, frame: tuple[int, int] | None = None) -> bytes:
    """A 1x1 GIF whose header then claims a huge logical screen, or whose first frame claims a
    huge extent (Pillow grows the canvas to it while opening)."""
    data = bytearray(_encode(Image.new("P", (1, 1)), "GIF"))
    if screen:
        data[6:10] = struct.pack("<HH", *screen)
    if frame:
        at = data.index(b"\x2c\x00\x00\x00\x00")  # the image descriptor at (0, 0)
        data[at + 5:at + 9] = struct.pack("<HH", *frame)
    return bytes(data)


def _npy_claiming(shape: tuple[int, ...], body: bytes = b"\0" * 16) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buf.getvalue() + body


def _npy(x: np.ndarray, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x, allow_pickle=allow_pickle)
    return buf.getvalue()


PHOTO = _photo()
JPEG, PNG = _encode(PHOTO, "JPEG", quality=90), _encode(PHOTO, "PNG")
NPY, JSON = {"content-type": "application/x-npy"}, {"content-type": "application/json"}

HOSTILE = [  # (id, path, body, headers, status, fragment of the error)
    ("png-bomb-40KB", "/v1/predict", _png_bomb(), {}, 413, "image too large"),
    ("png-bomb-just-over", "/v1/predict", _png_bomb(5478), {}, 413, "over the limit of 30 megapixels"),
    ("gif-bomb-screen", "/v1/predict", _gif_with(screen=(65535, 65535)), {}, 413, "image too large"),
    ("gif-bomb-frame", "/v1/predict", _gif_with(frame=(30000, 30000)), {}, 413, "image too large"),
    ("tga", "/v1/predict", _encode(PHOTO, "TGA"), {}, 415, "not a supported image format"),
    ("pcx", "/v1/predict", _encode(PHOTO, "PCX"), {}, 415, "not a supported image format"),
    ("qoi", "/v1/predict", _encode(PHOTO, "QOI"), {}, 415, "not a supported image format"),
    ("eps", "/v1/predict", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", {}, 415, "not a supported image format"),
    ("random-bytes", "/v1/predict", np.random.default_rng(0).bytes(4096), {}, 415, "accepted: JPEG, PNG"),
    ("tga-multipart", "/v1/predict", None, {"files": {"image": ("x.jpg", _encode(PHOTO, "TGA"), "image/jpeg")}}, 415,
     "not a supported image format"),
    ("truncated-jpeg", "/v1/predict", JPEG[:len(JPEG) // 2], {}, 400, "corrupt image"),
    ("truncated-png", "/v1/predict", PNG[:len(PNG) // 2], {}, 400, "corrupt image"),
    ("png-signature-only", "/v1/predict", PNG[:8], {}, 400, "corrupt image"),
    ("zero-length", "/v1/predict", b"", {}, 400, "empty image body"),
    ("deep-json-100k", "/v1/infer", b"[" * 100_000 + b"]" * 100_000, JSON, 400, "nested 100000 deep"),
    ("deep-json-in-input", "/v1/infer", b'{"input": ' + b"[" * 9 + b"0" + b"]" * 9 + b"}", JSON, 400, "over the limit of 8"),
    ("json-many-lists", "/v1/infer", b"[" + b"[]," * 300_000 + b"[]]", JSON, 400, "lists/objects, over the limit"),
    ("json-strings", "/v1/infer", json.dumps({"input": [["a"] * 3]}).encode(), JSON, 400, "not a rectangular array"),
    ("json-not-utf8", "/v1/infer", b"\xff\xfe[1]", JSON, 400, "invalid JSON"),
    ("npy-huge-shape", "/v1/infer", _npy_claiming((100_000, 100_000, 3)), NPY, 400, "declares shape (100000, 100000, 3)"),
    ("npy-short-body", "/v1/infer", _npy(np.zeros((3, 224, 224), np.float32))[:-100], NPY, 400, "but 602012 bytes follow"),
    ("npy-object", "/v1/infer", _npy(np.array([{"a": 1}], dtype=object), allow_pickle=True), NPY, 400, "Python objects"),
    ("npy-bad-magic", "/v1/infer", b"\x93NUMPY\x09\x00garbage", NPY, 400, "cannot read the .npy body"),
]


@pytest.fixture(scope="module")
def client(ts_engine_path):
    from starlette.testclient import TestClient

    from rexnet_deploy.serving import create_app

    app = create_app(ts_engine_path, max_batch=2, max_delay_ms=1, warmup_rounds=1, max_body_bytes=4_000_000)
    with TestClient(app) as c:
        yield c


@pytest.fixture()
def budget():
    """Restores the process-wide decode budget (and its environment variable) after the test."""
    before, env = images.max_image_pixels(), os.environ.get(images.MAX_PIXELS_ENV)
    yield
    images.set_max_image_pixels(before)
    if env is None:
        os.environ.pop(images.MAX_PIXELS_ENV, None)
    else:
        os.environ[images.MAX_PIXELS_ENV] = env


@pytest.mark.parametrize("name,path,body,extra,status,fragment", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_body_is_a_one_line_json_4xx(client, name, path, body, extra, status, fragment):
    headers = extra if "files" not in extra else {}
    kwargs = {"files": extra["files"]} if "files" in extra else {"content": body, "headers": headers}
    r = client.post(path, **kwargs)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert fragment in error, error
    assert "\n" not in error and "Traceback" not in r.text


def test_service_stays_healthy_after_hostile_requests(client):
    for name, path, body, extra, _status, _fragment in HOSTILE:
        if name.startswith(("png-bomb", "gif-bomb", "tga", "deep-json")) and body is not None:
            client.post(path, content=body, headers=extra)
    assert client.get("/healthz").status_code == 200
    r = client.post("/v1/predict?topk=1", content=JPEG)
    assert r.status_code == 200 and len(r.json()["predictions"]) == 1, r.text
    metrics = client.get("/metrics").text
    assert 'error="ImageTooLarge"' in metrics and 'error="UnsupportedImageFormat"' in metrics  # counted by type


# -- the decode budget ----------------------------------------------------------------------------
def test_the_budget_refuses_from_the_header_and_is_configurable(budget):
    small = _encode(PHOTO, "PNG")  # 96 x 64 = 6144 pixels
    assert images.decode_or_fail(io.BytesIO(small), None).size == (96, 64)
    images.set_max_image_pixels(6000)
    with pytest.raises(ImageTooLarge, match=r"96x64 is 0\.0 megapixels, over the limit of 0\.006 megapixels"):
        images.decode_or_fail(io.BytesIO(small), "x.png")
    images.set_max_image_pixels(None)
    assert images.max_image_pixels() == images.DEFAULT_MAX_IMAGE_PIXELS
    # a WebP counts double (libwebp's own canvases), so its limit is half
    images.check_pixels((5000, 5000), "PNG")
    with pytest.raises(ImageTooLarge, match="limit of 15 megapixels for WEBP"):
        images.check_pixels((5000, 5000), "WEBP")


def test_a_worker_process_inherits_the_budget(budget):
    """serve --workers and Ray actors are separate processes: the budget travels in the environment."""
    images.set_max_image_pixels(1234, export=True)
    code = "from rexnet_deploy import images; print(images.max_image_pixels())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert out.stdout.strip() == "1234", out.stderr


def test_to_rgb_in_strips_equals_converting_whole(monkeypatch):
    """The strip-wise conversion (bounded memory) gives the same pixels as converting at once."""
    rng = np.random.default_rng(1)
    rgba = Image.fromarray(rng.integers(0, 256, (61, 97, 4), dtype=np.uint8), "RGBA")
    p = rgba.convert("RGB").quantize(64)
    p.info["transparency"] = 3
    cases = [rgba, rgba.convert("LA"), p, rgba.convert("CMYK"), rgba.convert("L"), rgba.convert("1"),
             rgba.convert("F"), rgba.convert("I"), rgba.convert("I").convert("I;16")]
    whole = [np.asarray(images.to_rgb(img)) for img in cases]
    monkeypatch.setattr(images, "_STRIP_PIXELS", 500)  # strips of 5 rows
    for img, want in zip(cases, whole):
        got = images.to_rgb(img)
        assert got.mode == "RGB" and np.array_equal(np.asarray(got), want), img.mode


# -- the format allowlist -------------------------------------------------------------------------
@pytest.mark.parametrize("fmt,kw", [("JPEG", {"quality": 95}), ("PNG", {}), ("WEBP", {"lossless": True}),
                                    ("BMP", {}), ("TIFF", {}), ("GIF", {}), ("MPO", {})])
def test_the_accepted_formats_decode(fmt, kw):
    from rexnet_deploy.serving.inputs import decode_image_bytes

    img = Image.new("RGB", (40, 30), (200, 40, 20))
    if fmt == "MPO":  # a phone's multi-picture JPEG: its first picture
        kw = {"save_all": True, "append_images": [Image.new("RGB", (40, 30), (0, 0, 255))]}
    elif fmt == "GIF":  # an animation: its first frame
        kw = {"save_all": True, "append_images": [Image.new("RGB", (40, 30), (0, 0, 255))]}
    data = _encode(img, fmt, **kw)
    if fmt == "MPO":
        assert Image.open(io.BytesIO(data)).format == "MPO"
    got = decode_image_bytes(data)
    assert got.mode == "RGB" and got.size == (40, 30)
    assert np.abs(np.asarray(got, dtype=int)[15, 20] - [200, 40, 20]).max() <= 12


def test_refused_format_is_an_error_row_in_batch_and_predict(tmp_path, ts_engine_path):
    from rexnet_deploy import Engine

    (tmp_path / "good.jpg").write_bytes(JPEG)
    (tmp_path / "renamed.jpg").write_bytes(_encode(PHOTO, "TGA"))  # an extension proves nothing
    with Engine.load(ts_engine_path) as engine:
        result = engine.predict_files([tmp_path], topk=1, skip_bad=True)
    assert result.names == [str(tmp_path / "good.jpg")]
    assert result.skipped == [(str(tmp_path / "renamed.jpg"), "not a supported image format")]


def test_refused_format_raises_unsupported_image_format():
    with pytest.raises(UnsupportedImageFormat):
        images.decode_or_fail(io.BytesIO(_encode(PHOTO, "PCX")), "x.pcx")
    with pytest.raises(ImageError) as corrupt:  # a PNG signature, broken after it: corrupt, not foreign
        images.decode_or_fail(io.BytesIO(PNG[:20]), "x.png")
    assert not isinstance(corrupt.value, UnsupportedImageFormat)


# -- JSON -----------------------------------------------------------------------------------------
def test_json_body_parses_a_tensor_and_refuses_deep_nesting():
    from rexnet_deploy.serving.inputs import json_body, json_tensor

    x = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)
    doc = json_body(json.dumps({"input": x.tolist()}).encode())
    assert np.array_equal(json_tensor(doc["input"]), x)
    with pytest.raises(InputError, match="nested 9 deep"):
        json_body(b"[" * 9 + b"]" * 9)
    assert json_body(b'{"s": "[[[[[[[[["}', max_depth=10) == {"s": "[[[[[[[[["}


# -- Batcher.close(drain=False) -------------------------------------------------------------------
def test_close_without_drain_cancels_requests_waiting_for_their_batch_to_fill(client):
    """The worker waits up to max_delay for a batch to fill; close(drain=False) during that wait
    used to cut the wait short and run the batch. Now nothing queued runs."""
    from rexnet_deploy.serving import Batcher

    engine = client.app.state.service.engine
    b = Batcher(engine, max_batch=8, max_delay_ms=60_000)
    x = np.zeros((3, 224, 224), np.float32)
    futures = [b.submit(x) for _ in range(4)]
    time.sleep(0.2)  # the worker is now in its max_delay wait for 4 more
    closer = threading.Thread(target=b.close, kwargs={"drain": False})
    closer.start()
    closer.join(30)
    assert not closer.is_alive()
    assert b.stats.batches == 0 and b.stats.requests == 0, b.stats
    assert all(f.cancelled() for f in futures)
    with pytest.raises(CancelledError):
        futures[0].result(timeout=0)


# -- batch: a broken symlink ----------------------------------------------------------------------
def test_a_broken_symlink_is_an_error_row_in_batch(tmp_path, ts_engine_path):
    pytest.importorskip("pyarrow", reason="batch writes Parquet with pyarrow (the batch extra)")
    from rexnet_deploy.batch import batch_predict, read_predictions

    src = tmp_path / "in"
    src.mkdir()
    (src / "a.jpg").write_bytes(JPEG)
    (src / "b.jpg").symlink_to(src / "gone.jpg")  # dangling
    result = batch_predict(ts_engine_path, src, tmp_path / "out.parquet", topk=1)
    rows = {Path(r["file"]).name: r for r in read_predictions(result.out)}
    assert set(rows) == {"a.jpg", "b.jpg"} and result.skipped == 1
    assert rows["a.jpg"]["error"] is None
    assert rows["b.jpg"]["indices"] == [] and "broken link" in rows["b.jpg"]["error"]


def test_batch_cli_takes_max_image_pixels(tmp_path, ts_engine_path, budget):
    pytest.importorskip("pyarrow", reason="batch writes Parquet with pyarrow (the batch extra)")
    from rexnet_deploy.batch import read_predictions

    src = tmp_path / "in"
    src.mkdir()
    (src / "a.jpg").write_bytes(JPEG)  # 96 x 64
    (src / "b.jpg").write_bytes(_encode(_photo((40, 30)), "JPEG"))
    r = cli_in_process("batch", str(ts_engine_path), str(src), "--out", str(tmp_path / "o.parquet"),
                       "--max-image-pixels", "5000")
    assert r.returncode == 0, r.stderr
    rows = {Path(x["file"]).name: x["error"] for x in read_predictions(tmp_path / "o.parquet")}
    assert rows["b.jpg"] is None and "image too large: 96x64" in rows["a.jpg"], rows
    assert os.environ[images.MAX_PIXELS_ENV] == "5000"  # for Ray actors started after it
    assert "--max-image-pixels" in cli_in_process("serve", "--help").stdout


# -- memory: the largest accepted image, worst mode -----------------------------------------------
# VmHWM (the peak RSS of this process image), reset to the current RSS before the image: not
# ru_maxrss, which a child forked from this (large) pytest process starts at the parent's size
_MEASURE = """
import io, re, sys
from PIL import Image
from rexnet_deploy.preprocess import PreprocessConfig, preprocess_image
from rexnet_deploy.serving.inputs import decode_image_bytes
def hwm_mb():
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) / 1024
cfg, data = PreprocessConfig(), open(sys.argv[1], "rb").read()
small = io.BytesIO()  # the codec's library loaded, and a first image done, before the baseline
Image.new("RGBA", (300, 200)).convert(sys.argv[2]).save(small, Image.open(io.BytesIO(data)).format)
preprocess_image(decode_image_bytes(small.getvalue()), cfg)
open("/proc/self/clear_refs", "w").write("5")  # peak := current RSS
base = hwm_mb()
preprocess_image(decode_image_bytes(data), cfg)
print(hwm_mb() - base)
"""


@pytest.mark.long
@pytest.mark.parametrize("fmt,mode,factor", [("PNG", "RGBA", 1), ("TIFF", "F", 1), ("JPEG", "CMYK", 1), ("WEBP", "RGBA", 2)])
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="measures with Linux's /proc/self/status")
def test_largest_accepted_image_adds_under_300_mb(tmp_path, fmt, mode, factor):
    """Decode + preprocess of an image just under the default budget (a WebP: half of it), in a
    fresh process: the peak RSS it adds stays under 300 MB (measured: docs/serving.md, Input limits)."""
    side_w = int((images.DEFAULT_MAX_IMAGE_PIXELS / factor * 1.5) ** 0.5)
    side_h = images.DEFAULT_MAX_IMAGE_PIXELS // factor // side_w
    x = np.linspace(0, 255, side_w).astype(np.uint8)
    grey = Image.fromarray(np.broadcast_to(x, (side_h, side_w)).copy(), "L")
    img = Image.merge("RGBA", [grey, grey.transpose(Image.Transpose.FLIP_LEFT_RIGHT), grey, grey]).convert(mode)
    path = tmp_path / f"big.{fmt.lower()}"
    img.save(path, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    del img, grey
    out = subprocess.run([sys.executable, "-c", _MEASURE, str(path), mode], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])})
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) < 300, f"{fmt} {mode} {side_w}x{side_h}: +{float(out.stdout):.0f} MB"
