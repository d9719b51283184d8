"""Preprocessing CPU cost per image, split into decode, resize + crop and normalize, exact vs fast
mode, and the fast mode's deviation from the exact (timm-equal) transform.

CPU seconds of this process (``time.process_time``) per image: Pillow and numpy run these steps
on one core, so the figures are ms·core, comparable across loaded and quiet runs.

Run: .venv/bin/python -m pytest benchmarks/test_preprocess_cost.py -s
 or: .venv/bin/python benchmarks/test_preprocess_cost.py     (prints the table as JSON)
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

SHARED_CALIB = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-sample" / "calib"
# camera-sized photos: where decoding dominates and fast mode applies
LARGE_SIZES = ((2048, 1536), (1536, 2048), (4000, 3000), (3000, 4000))


def large_photos(folder: Path, n: int = 8) -> list[Path]:
    from rexnet_deploy.synthetic import synthetic_images

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(synthetic_images(n, seed=5, sizes=LARGE_SIZES)):
        paths.append(folder / f"large{i:02d}.jpg")
        img.save(paths[-1], quality=90)
    return paths


def cost(paths: list[Path], *, fast: bool, rounds: int = 2) -> dict[str, float]:
    """ms·core per image of each step (the best of ``rounds`` passes over ``paths``)."""
    from rexnet_deploy.images import load_image
    from rexnet_deploy.preprocess import PreprocessConfig, normalize, resize_and_crop

    cfg = PreprocessConfig()
    best = {"decode": np.inf, "resize_crop": np.inf, "normalize": np.inf}
    for _ in range(rounds):
        spent = dict.fromkeys(best, 0.0)
        for p in paths:
            t0 = time.process_time()
            img = load_image(p, draft=cfg if fast else None)
            t1 = time.process_time()
            crop = resize_and_crop(img, cfg, fast=fast)
            t2 = time.process_time()
            normalize(crop, cfg)
            t3 = time.process_time()
            spent["decode"] += t1 - t0
            spent["resize_crop"] += t2 - t1
            spent["normalize"] += t3 - t2
        best = {k: min(best[k], 1000 * v / len(paths)) for k, v in spent.items()}
    best["total"] = sum(best.values())
    return best


def deviation(paths: list[Path]) -> dict[str, float]:
    """Fast vs exact output, in normalized units and in 8-bit pixel levels (× 255 × std)."""
    from rexnet_deploy.images import load_image
    from rexnet_deploy.preprocess import PreprocessConfig, preprocess_image

    cfg = PreprocessConfig()
    diffs = [np.abs(preprocess_image(load_image(p, draft=cfg), cfg, fast=True) - preprocess_image(load_image(p), cfg))
             for p in paths]
    levels = [d * (255 * np.asarray(cfg.std, dtype=np.float32))[:, None, None] for d in diffs]
    return {"max_abs": float(max(d.max() for d in diffs)), "mean_abs": float(np.mean([d.mean() for d in diffs])),
            "max_levels": float(max(v.max() for v in levels)), "mean_levels": float(np.mean([v.mean() for v in levels]))}


def report(workdir: Path) -> dict:
    sets = {"large generated JPEGs (2048x1536 .. 4000x3000)": large_photos(workdir / "large")}
    if SHARED_CALIB.is_dir():
        sets["ImageNet sample calib/ (first 100)"] = sorted(SHARED_CALIB.rglob("*.JPEG"))[:100]
    out = {}
    for name, paths in sets.items():
        exact, fast = cost(paths, fast=False), cost(paths, fast=True)
        out[name] = {"images": len(paths), "exact_ms_core": exact, "fast_ms_core": fast,
                     "fast_speedup": exact["total"] / fast["total"], "fast_deviation": deviation(paths)}
    return out


@pytest.mark.slow
def test_fast_mode_halves_preprocessing_of_large_photos(tmp_path):
    result = report(tmp_path)
    print("\n" + json.dumps(result, indent=1))
    large = result["large generated JPEGs (2048x1536 .. 4000x3000)"]
    assert large["fast_speedup"] >= 2.0, large
    assert large["fast_deviation"]["max_levels"] <= 8, large  # the bound in docs/cold-start-and-preprocessing.md


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        print(json.dumps(report(Path(d)), indent=1))
