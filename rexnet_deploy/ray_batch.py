"""Batch inference on Ray Data: a pool of actors, each loading the engine once.

``RayPredictor`` is the callable class ``Dataset.map_batches`` runs in every actor: it takes a
batch of file paths and decodes them with the engine's own ``predict_files`` (not Ray's
``read_images``, whose resize differs from timm's eval transform), so the predictions are those of
``Engine.predict_files`` on the same files. Paths must be readable on every node (a shared
filesystem on a cluster). Needs ``pip install 'rexnet-deploy[ray]'``; imported only by ``batch --ray``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .batch_rows import COLUMNS, ParquetSink, predict_rows
from .errors import UsageError


class RayPredictor:
    """``map_batches`` callable class: ``{"file": paths}`` in, the prediction columns out."""

    def __init__(self, engine_path: str, topk: int = 5, **engine_options: Any):
        from .engine import Engine

        self.engine = Engine.load(engine_path, **engine_options)  # once per actor, not per batch
        self.topk = topk

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = predict_rows(self.engine, [str(f) for f in batch["file"]], self.topk)
        out: dict[str, np.ndarray] = {}
        for column in COLUMNS:
            # 1-D object arrays of lists: Ray keeps them as list columns (a skipped file's are empty)
            values = np.empty(len(rows[column]), dtype=object)
            values[:] = rows[column]
            out[column] = values
        return out


def _ray():
    try:
        import ray
        import ray.data
    except ImportError:
        raise UsageError("--ray needs Ray Data: pip install 'rexnet-deploy[ray]' (or drop --ray for the local path)") from None
    return ray


def run_ray(engine_path: str | os.PathLike, files: list[str], sink: ParquetSink, *, topk: int = 5,
            batch_size: int = 64, actors: int = 2, **engine_options: Any) -> None:
    """Predict ``files`` on ``actors`` Ray actors and write the rows to ``sink`` in input order.
    Joins a running Ray (``ray.init`` done, or RAY_ADDRESS) or starts a local one for this call."""
    ray = _ray()
    started = not ray.is_initialized()
    if started:
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True  # rows in the order of the files, as the local path
        ctx.enable_progress_bars = False
        # enough blocks for every actor to get work; one block per batch at most
        blocks = max(1, min(len(files), max(actors * 2, -(-len(files) // batch_size))))
        ds = ray.data.from_items([{"file": f} for f in files], override_num_blocks=blocks)
        ds = ds.map_batches(RayPredictor, fn_constructor_kwargs={"engine_path": str(engine_path), "topk": topk,
                                                                 **engine_options},
                            batch_size=batch_size, batch_format="numpy", num_cpus=1,
                            # a fixed pool (Ray 2.51 deprecated concurrency= for compute=)
                            compute=ray.data.ActorPoolStrategy(size=actors))
        for part in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            sink.write({c: part.column(c).to_pylist() for c in COLUMNS})
    finally:
        if started:
            ray.shutdown()


__all__ = ["RayPredictor", "run_ray"]
