"""rexnet-deploy batch: a folder → Parquet, here and on Ray actors, with the predictions of
``Engine.predict_files`` on the same files."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from rexnet_deploy import Engine
from rexnet_deploy.batch import batch_predict, read_predictions

from .conftest import expect_error, run_cli

pytest.importorskip("pyarrow", reason="batch writes Parquet with pyarrow (the batch extra)")


@pytest.fixture(scope="module")
def photos(image_dir, tmp_path_factory) -> Path:
    """The six generated images in two folders, plus one unreadable file."""
    d = tmp_path_factory.mktemp("batch-in")
    for i, f in enumerate(sorted(image_dir.iterdir())):
        sub = d / ("a" if i % 2 else "b")
        sub.mkdir(exist_ok=True)
        shutil.copy(f, sub / f.name)
    (d / "a" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return d


def assert_matches_predict_files(rows: list[dict], engine_path: Path, topk: int) -> None:
    files = [r["file"] for r in rows]
    with Engine.load(engine_path) as engine:
        want = engine.predict_files(files, topk, skip_bad=True)
    good = [r for r in rows if r["error"] is None]
    assert [r["file"] for r in good] == want.names
    assert {f for f, _why in want.skipped} == {r["file"] for r in rows if r["error"] is not None}
    for row, preds in zip(good, want.predictions):
        assert row["indices"] == [p.index for p in preds]
        assert row["labels"] == [p.label for p in preds]
        # other batch compositions: the same logits up to float rounding
        np.testing.assert_allclose(row["scores"], [p.score for p in preds], rtol=1e-5, atol=1e-7)


def test_local_matches_predict_files(ts_engine_path, photos, tmp_path):
    out = tmp_path / "preds.parquet"
    result = batch_predict(ts_engine_path, photos, out, topk=3, batch_size=4)  # 7 files: chunks of 4 + 3
    rows = read_predictions(out)
    assert result.rows == 7 and result.skipped == 1 and result.mode == "local"
    assert [r["file"] for r in rows] == sorted(r["file"] for r in rows)  # input order (sorted finder)
    broken = next(r for r in rows if r["file"].endswith("broken.jpg"))
    assert broken["indices"] == [] and broken["error"]
    assert all(len(r["indices"]) == 3 for r in rows if r["error"] is None)
    assert_matches_predict_files(rows, ts_engine_path, 3)


def test_a_chunk_without_a_readable_file_becomes_error_rows(ts_engine_path, photos, tmp_path):
    """batch size 1: the broken file is a chunk alone, where predict_files finds nothing to read."""
    out = tmp_path / "preds.parquet"
    result = batch_predict(ts_engine_path, photos, out, topk=2, batch_size=1)
    rows = read_predictions(out)
    assert result.rows == 7 and result.skipped == 1
    broken = next(r for r in rows if r["file"].endswith("broken.jpg"))
    assert broken["indices"] == [] and broken["error"] == "not a supported image format"  # the reason, not a crash
    assert_matches_predict_files(rows, ts_engine_path, 2)


def test_cli_batch_and_refusals(ts_engine_path, photos, tmp_path):
    out = tmp_path / "p.parquet"
    r = run_cli("batch", str(ts_engine_path), str(photos), "--out", str(out), "--topk", "2")
    assert r.returncode == 0, r.stderr
    assert "7 files (1 skipped)" in r.stdout and "local" in r.stdout
    assert all(len(row["labels"]) == 2 for row in read_predictions(out) if row["error"] is None)
    expect_error(run_cli("batch", str(ts_engine_path), str(photos), "--out", str(out)), "already exists", "--force")
    expect_error(run_cli("batch", str(ts_engine_path), str(photos), "--out", str(tmp_path / "q.parquet"),
                         "--actors", "2"), "--actors needs --ray")
    expect_error(run_cli("batch", str(ts_engine_path), str(tmp_path / "nope"), "--out", str(tmp_path / "q.parquet")),
                 "not a folder")
    expect_error(run_cli("batch", str(tmp_path), str(photos), "--out", str(tmp_path / "q.parquet")), "artifact")
    assert not (tmp_path / "q.parquet").exists() and not list(tmp_path.glob(".*.tmp"))


def test_predictor_class_without_ray(ts_engine_path, photos):
    """The map_batches callable is plain Python: one engine, a dict of arrays in and out."""
    from rexnet_deploy.ray_batch import RayPredictor

    files = sorted(str(p) for p in photos.rglob("*") if p.is_file())
    out = RayPredictor(str(ts_engine_path), topk=2)({"file": np.array(files)})
    assert list(out["file"]) == files and all(len(x) in (0, 2) for x in out["indices"])


@pytest.mark.slow
@pytest.mark.long  # starts and stops a local Ray of its own (10 s); test_ray_matches_predict_files stays in the default tier
def test_cli_ray_starts_and_stops_its_own(ts_engine_path, photos, tmp_path):
    pytest.importorskip("ray", reason="needs ray[data] (the ray extra)")
    out = tmp_path / "r.parquet"
    r = run_cli("batch", str(ts_engine_path), str(photos), "--out", str(out), "--ray", "--actors", "1",
                "--batch-size", "3", env={"RAY_ADDRESS": ""})
    assert r.returncode == 0, r.stderr
    assert "ray (1 actor)" in r.stdout
    assert_matches_predict_files(read_predictions(out), ts_engine_path, 5)


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray", reason="needs ray[data] (the ray extra)")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_matches_predict_files(local_ray, ts_engine_path, photos, tmp_path):
    out = tmp_path / "ray.parquet"
    result = batch_predict(ts_engine_path, photos, out, topk=3, batch_size=2, ray_actors=2)
    rows = read_predictions(out)
    assert result.mode == "ray (2 actors)" and result.rows == 7 and result.skipped == 1
    assert [r["file"] for r in rows] == sorted(r["file"] for r in rows)  # preserve_order: the input order
    assert_matches_predict_files(rows, ts_engine_path, 3)
    assert local_ray.is_initialized()  # a Ray the caller started is joined, not shut down
