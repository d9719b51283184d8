"""Fast preprocessing (JPEG draft decoding, integer reduction before the resize): its deviation from
the exact transform stays inside the bound docs/cold-start-and-preprocessing.md states, and it changes nothing where it
does not apply. The exact transform's equality with timm is tests/test_preprocess.py's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rexnet_deploy.images import load_image
from rexnet_deploy.preprocess import DRAFT_INFO, PreprocessConfig, normalize, preprocess_image, resize_and_crop
from rexnet_deploy.synthetic import synthetic_images

CFG = PreprocessConfig()
MAX_LEVELS = 8.0   # docs/cold-start-and-preprocessing.md "Preprocessing cost": generated large photos measured 4 levels at most
MEAN_LEVELS = 0.5  # measured 0.2


def _levels(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| in 8-bit pixel levels (normalized units × 255 × std)."""
    return np.abs(a - b) * (255 * np.asarray(CFG.std, dtype=np.float32))[:, None, None]


@pytest.fixture(scope="module")
def large_jpegs(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("large")
    paths = []
    for i, img in enumerate(synthetic_images(4, seed=21, sizes=((2048, 1536), (1536, 2048), (4000, 3000), (1300, 1100)))):
        paths.append(d / f"{i}.jpg")
        img.save(paths[-1], quality=92)
    return paths


def test_fast_mode_stays_within_the_documented_bound_on_large_jpegs(large_jpegs):
    for p in large_jpegs:
        drafted = load_image(p, draft=CFG)
        assert DRAFT_INFO in drafted.info and drafted.size[0] < Image.open(p).size[0]  # it did draft
        diff = _levels(preprocess_image(drafted, CFG, fast=True), preprocess_image(load_image(p), CFG))
        assert diff.max() <= MAX_LEVELS and diff.mean() <= MEAN_LEVELS, (p, diff.max(), diff.mean())
        assert diff.max() > 0  # fast mode is really another computation (or this test proves nothing)


def test_draft_keeps_twice_the_resize_target(tmp_path):
    from rexnet_deploy.preprocess import FAST_GAP, resize_target

    for size in ((4000, 3000), (3000, 4000), (1200, 900), (640, 480)):
        path = tmp_path / f"{size[0]}x{size[1]}.jpg"
        Image.new("RGB", size, (120, 60, 200)).save(path, quality=90)  # the draft reads the header's size alone
        drafted = load_image(path, draft=CFG)
        w, h = resize_target(size, CFG)
        # drafted only where half the size still covers twice the target (640x480 is not)
        assert drafted.size == size or (drafted.size[0] >= FAST_GAP * w and drafted.size[1] >= FAST_GAP * h)
        assert (drafted.size != size) == (size[0] >= 2 * FAST_GAP * w and size[1] >= 2 * FAST_GAP * h), size


def test_fast_mode_reduces_large_non_jpeg_images_within_the_bound():
    img = synthetic_images(1, seed=4, sizes=((2400, 1800),))[0]  # a PIL image: no draft, Image.reduce
    diff = _levels(preprocess_image(img, CFG, fast=True), preprocess_image(img, CFG))
    assert 0 < diff.max() <= MAX_LEVELS and diff.mean() <= MEAN_LEVELS


def test_fast_mode_is_exact_below_twice_the_target(tmp_path):
    img = synthetic_images(1, seed=2, sizes=((500, 375),))[0]
    img.save(tmp_path / "small.jpg", quality=90)
    fast = preprocess_image(load_image(tmp_path / "small.jpg", draft=CFG), CFG, fast=True)
    np.testing.assert_array_equal(fast, preprocess_image(load_image(tmp_path / "small.jpg"), CFG))


def test_fused_normalize_matches_the_textbook_formula():
    img = resize_and_crop(synthetic_images(1, seed=3)[0], CFG)
    arr = np.asarray(img, dtype=np.float32) / np.float32(255.0)
    want = ((arr - np.asarray(CFG.mean, np.float32)) / np.asarray(CFG.std, np.float32)).transpose(2, 0, 1)
    np.testing.assert_allclose(normalize(img, CFG), want, atol=1e-6, rtol=0)


def test_engine_fast_preprocess_option(ts_engine_path, large_jpegs):
    from rexnet_deploy import Engine

    with Engine.load(ts_engine_path) as exact, Engine.load(ts_engine_path, fast_preprocess=True) as fast:
        assert fast.fast_preprocess and not exact.fast_preprocess
        diff = _levels(fast.preprocess(large_jpegs), exact.preprocess(large_jpegs))
        assert 0 < diff.max() <= MAX_LEVELS
        assert len(fast.predict_files(large_jpegs[:1], topk=2).predictions[0]) == 2
