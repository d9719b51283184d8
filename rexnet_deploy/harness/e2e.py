"""End-to-end throughput: image files → top-k labels, decoding and preprocessing included.

Decoding and preprocessing run on a thread pool (Pillow's decoder and resize, and numpy, release
the GIL) and stay ``prefetch`` batches ahead of the engine, so the engine is not starved. The
tensor-only throughput of the same engine at the same batch size is measured in the same run;
their ratio is what the target and CI compare.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..engine import Engine
from ..errors import ImageError, UsageError
from ..images import find_images, load_image
from ..log import Progress
from ..preprocess import preprocess_image

def _load(path: Path, config) -> np.ndarray | None:
    try:
        return preprocess_image(load_image(path), config)
    except ImageError:
        return None  # left out of the batch (and of the image count): a benchmark does not stop on one bad file


def run_files(engine: Engine, files: Sequence[Path], batch: int, *, workers: int, prefetch: int = 2,
              topk: int = 5) -> tuple[float, int]:
    """Files → top-k predictions through ``engine``; returns (seconds, images predicted)."""
    config = engine.preprocess_config
    chunks = [files[i:i + batch] for i in range(0, len(files), batch)]
    done = 0
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rexnet-preprocess") as pool:
        pending: list[list[Future]] = []

        def submit(k: int) -> None:
            if k < len(chunks):
                pending.append([pool.submit(_load, p, config) for p in chunks[k]])

        for k in range(prefetch + 1):
            submit(k)
        for k in range(len(chunks)):
            arrays = [a for a in (f.result() for f in pending.pop(0)) if a is not None]
            submit(k + prefetch + 1)
            if arrays:
                x = np.stack(arrays)
                _topk(engine, x, topk)
                done += len(arrays)
    return time.perf_counter() - started, done


def _topk(engine: Engine, x: np.ndarray, topk: int) -> None:
    """The work ``predict`` does after preprocessing: run the engine, softmax, top-k labels."""
    from ..engine import topk_predictions

    topk_predictions(engine.infer(x)[0], topk, engine.labels)


def end_to_end(engine: Engine, images: str | os.PathLike, *, batches: Sequence[int] = (32,), workers: int | None = None,
               min_images: int = 64, progress: Progress | None = None) -> dict[str, Any]:
    """Per batch size: end-to-end images/s on the files of ``images`` (cycled up to ``min_images``)
    and tensor-only images/s of the same engine; ``ratio`` = end-to-end / tensor-only."""
    if engine.head != "classify":
        raise UsageError("end-to-end throughput is files → top-k labels: it needs a classify-head engine")
    files = find_images(images)  # (none found: ImageError naming the folder)
    if not any(_load(p, engine.preprocess_config) is not None for p in files):  # stops at the first good one
        raise ImageError(f"--images {images}: no readable image")
    lo, hi = engine.batch_range
    bad = [b for b in batches if not lo <= b <= hi]
    if bad:
        raise UsageError(f"batch sizes {bad} are outside this engine's range {lo}..{hi}")
    workers = workers or max(2, os.cpu_count() or 2)
    rows = []
    for i, batch in enumerate(batches):
        want = max(min_images, 2 * batch)
        run = (files * (-(-want // len(files))))[:want]
        if progress:
            progress(f"end to end, batch {batch}", i, len(batches))
        run_files(engine, run[:batch], batch, workers=workers)  # warm-up: compile, caches
        seconds, n = run_files(engine, run, batch, workers=workers)
        x = np.random.default_rng(0).standard_normal((batch, *engine.input_shape[1:]), dtype=np.float32)
        engine(x)
        reps = max(2, -(-n // batch))
        t = time.perf_counter()
        for _ in range(reps):
            engine(x)
        tensor_ips = reps * batch / (time.perf_counter() - t)
        rows.append({"batch": batch, "images": n, "images_per_s": n / seconds, "tensor_images_per_s": tensor_ips,
                     "ratio": (n / seconds) / tensor_ips})
    return {"images": str(images), "files": len(files), "workers": workers, "results": rows}
