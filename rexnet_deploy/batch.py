"""Offline batch inference: a folder of images → one Parquet file of top-k predictions.

Rows: ``file`` (the path as found), ``indices`` / ``labels`` / ``scores`` (the top-k, best first:
the same as ``Engine.predict_files`` gives) and ``error`` (null, or why an unreadable file was
skipped: one bad photo must not sink a job over a million). The local path runs in this process;
:mod:`rexnet_deploy.ray_batch` spreads the same work over Ray actors. Needs pyarrow (``batch`` extra).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .batch_rows import ParquetSink, predict_rows
from .errors import UsageError


@dataclass(frozen=True)
class BatchResult:
    out: Path
    rows: int
    skipped: int
    seconds: float
    mode: str  # "local" or "ray (N actors)"

    @property
    def images_per_s(self) -> float:
        return (self.rows - self.skipped) / self.seconds if self.seconds > 0 else 0.0


def list_files(input_dir: str | os.PathLike) -> list[str]:
    """The images below ``input_dir`` (recursive, sorted), as the engine's own finder sees them."""
    from .images import find_images

    root = Path(input_dir).expanduser()
    if not root.is_dir():
        raise UsageError(f"INPUT_DIR {root} is not a folder")
    return [str(p) for p in find_images(root)]  # it refuses a folder without images


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def run_local(engine_path: str | os.PathLike, files: list[str], sink: ParquetSink, *, topk: int = 5,
              batch_size: int = 64, **engine_options: Any) -> None:
    """The single-process path: one engine, files in chunks of ``batch_size``."""
    from .engine import Engine

    with Engine.load(engine_path, **engine_options) as engine:
        for chunk in _chunks(files, batch_size):
            sink.write(predict_rows(engine, chunk, topk))


def batch_predict(engine_path: str | os.PathLike, input_dir: str | os.PathLike, out: str | os.PathLike, *,
                  topk: int = 5, batch_size: int = 64, ray_actors: int | None = None, force: bool = False,
                  **engine_options: Any) -> BatchResult:
    """Predict every image below ``input_dir`` and write the rows to the Parquet file ``out``.

    ``ray_actors``: run on Ray Data with this many actors (each loads the engine once); None: here."""
    if topk < 1 or batch_size < 1:
        raise UsageError("--topk and --batch-size must be >= 1")
    if ray_actors is not None and ray_actors < 1:
        raise UsageError(f"--actors must be >= 1, got {ray_actors}")
    from .artifact import load_artifact

    load_artifact(engine_path)  # a bad artifact fails here, once, not in every actor
    files = list_files(input_dir)
    sink = ParquetSink(out, force=force)
    start = time.perf_counter()
    ok = False
    try:
        if ray_actors is None:
            run_local(engine_path, files, sink, topk=topk, batch_size=batch_size, **engine_options)
            mode = "local"
        else:
            from .ray_batch import run_ray

            run_ray(engine_path, files, sink, topk=topk, batch_size=batch_size, actors=ray_actors, **engine_options)
            mode = f"ray ({ray_actors} actor{'s' if ray_actors > 1 else ''})"
        ok = True
    finally:
        sink.close(ok)
    return BatchResult(sink.out, sink.rows, sink.skipped, time.perf_counter() - start, mode)


def read_predictions(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a predictions Parquet file, as dicts (for tests and small jobs)."""
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


__all__ = ["BatchResult", "ParquetSink", "batch_predict", "list_files", "predict_rows", "read_predictions", "run_local"]
