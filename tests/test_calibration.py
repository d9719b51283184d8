"""The calibration sample: deterministic, stratified, held-out slice disjoint, bad files counted."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from rexnet_deploy import calibration
from rexnet_deploy.errors import InputError, UsageError
from rexnet_deploy.preprocess import PreprocessConfig, preprocess_batch
from rexnet_deploy.images import load_images

CONFIG = PreprocessConfig.from_data_config({
    "input_size": (3, 64, 64), "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225), "crop_pct": 0.875, "crop_mode": "center",
})


def _flat(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in sorted(src.rglob("*.jpg")):
        shutil.copy(f, dst / f"{f.parent.name}_{f.name}")
    return dst


def test_same_seed_same_sample_other_seed_other_sample(calib_dir):
    a = calibration.select(calib_dir, 12, seed=0).load(CONFIG, minimum=1)
    b = calibration.select(calib_dir, 12, seed=0).load(CONFIG, minimum=1)
    c = calibration.select(calib_dir, 12, seed=1).load(CONFIG, minimum=1)
    assert a.files == b.files and a.list_sha256() == b.list_sha256()
    assert a.files != c.files and a.list_sha256() != c.list_sha256()
    for x, y in zip(a.tensors(), b.tensors()):
        np.testing.assert_array_equal(x, y)


def test_image_folder_is_sampled_evenly_across_classes(calib_dir):
    s = calibration.select(calib_dir, 8, seed=3).load(CONFIG, minimum=1)
    assert s.stratified and s.n_classes == 4
    counts = {c: sum(f.parent.name == c for f in s.files) for c in {f.parent.name for f in s.files}}
    assert sorted(counts.values()) == [2, 2, 2, 2]


def test_flat_folder_is_a_seeded_random_sample(calib_dir, tmp_path):
    s = calibration.select(_flat(calib_dir, tmp_path / "flat"), 10, seed=0).load(CONFIG, minimum=1)
    assert not s.stratified and len(s) == 10
    assert len(set(s.files)) == 10


def test_held_out_slice_never_contains_calibration_images(calib_dir):
    s = calibration.select(calib_dir, 24).load(CONFIG, minimum=1)
    assert len(s.files) == 24 and len(s.held_out) == 16
    assert not set(s.files) & set(s.held_out)
    assert s.overlap([calib_dir]) == 24
    assert s.overlap(s.held_out) == 0


def test_tensors_are_the_runtime_preprocessing(calib_dir):
    s = calibration.select(calib_dir, 5).load(CONFIG, minimum=1)
    want = preprocess_batch(load_images(s.files).images, CONFIG)
    np.testing.assert_array_equal(np.concatenate(s.tensors()), want)
    assert [b.shape[0] for b in s.batches(2)] == [2, 2, 1]


def test_record_names_count_seed_and_list_hash(calib_dir):
    s = calibration.select(calib_dir, 6, seed=5).load(CONFIG, minimum=1)
    r = s.record()
    assert r["n"] == 6 and r["requested"] == 6 and r["seed"] == 5 and r["stratified"] is True
    assert r["list_sha256"] == s.list_sha256() and len(r["list_sha256"]) == 64
    assert r["unreadable"] == 0


def test_unreadable_files_are_counted_and_replaced(calib_dir, tmp_path):
    d = _flat(calib_dir, tmp_path / "flat")
    for name in ("bad1.jpg", "bad2.png"):
        (d / name).write_bytes(b"not an image")
    s = calibration.select(d, 41, seed=0).load(CONFIG, minimum=1)
    assert len(s) == 40 and s.record()["unreadable"] == 2
    assert {Path(f).name for f, _ in s.skipped} == {"bad1.jpg", "bad2.png"}
    assert all(not f.name.startswith("bad") for f in s.held_out)


def test_csv_file_list_with_class_index_is_stratified_and_labels_the_check(calib_dir, tmp_path):
    files = sorted(calib_dir.rglob("*.jpg"))
    csv = tmp_path / "list.csv"
    csv.write_text("file,class_index\n" + "".join(f"{f},{f.parent.name[-1]}\n" for f in files))
    s = calibration.select(csv, 8).load(CONFIG, minimum=1)
    assert s.kind == "csv" and s.stratified and s.labels_csv == csv
    assert len(s) == 8


def test_too_few_readable_images_is_a_clear_error(calib_dir, tmp_path):
    d = tmp_path / "few"
    d.mkdir()
    for f in sorted(calib_dir.rglob("*.jpg"))[:3]:
        shutil.copy(f, d / f.name)
    (d / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(InputError, match=r"at least 16 readable images; .* has 3 \(1 unreadable\)"):
        calibration.select(d, 300).load(CONFIG)


@pytest.mark.parametrize("make, match", [
    (lambda p: p, "no image files"),
    (lambda p: p / "missing", "not found"),
    (lambda p: (p / "x.txt").write_text("x") and p / "x.txt", "image folder or a .csv"),
    (lambda p: (p / "l.csv").write_text("name\na.jpg\n") and p / "l.csv", "'file' column"),
])
def test_bad_sources(tmp_path, make, match):
    with pytest.raises(InputError, match=match):
        calibration.select(make(tmp_path), 10)


def test_size_must_be_positive(calib_dir):
    with pytest.raises(UsageError):
        calibration.select(calib_dir, 0)
