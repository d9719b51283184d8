"""The rows of a batch job, shared by the local path (:mod:`rexnet_deploy.batch`) and the Ray
actors (:mod:`rexnet_deploy.ray_batch`): the columns, one chunk of files → its rows, and the Parquet
sink the rows are written to. A leaf: neither of those two modules is imported here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import ImageError, UsageError

COLUMNS = ("file", "indices", "labels", "scores", "error")


def predict_rows(engine: Any, files: list[str], topk: int) -> dict[str, list]:
    """Top-k rows for ``files`` with one ``predict_files`` call (decoding and preprocessing exactly
    as it does); skipped files get empty lists and the reason, also when no file of the chunk is
    readable (``predict_files`` then raises)."""
    try:
        result = engine.predict_files(files, topk, skip_bad=True)
        by_name, why = dict(zip(result.names, result.predictions)), dict(result.skipped)
    except ImageError as exc:
        by_name, why = {}, dict(exc.bad)
    rows: dict[str, list] = {c: [] for c in COLUMNS}
    for f in files:
        preds = by_name.get(f, [])
        rows["file"].append(f)
        rows["indices"].append([p.index for p in preds])
        rows["labels"].append([p.label for p in preds])
        rows["scores"].append([p.score for p in preds])
        rows["error"].append(None if f in by_name else why.get(f, "not decoded"))
    return rows


def _schema():
    import pyarrow as pa

    return pa.schema([("file", pa.string()), ("indices", pa.list_(pa.int64())), ("labels", pa.list_(pa.string())),
                      ("scores", pa.list_(pa.float64())), ("error", pa.string())])


class ParquetSink:
    """Writes row chunks to ``out`` as they come (bounded memory), via a temporary file renamed
    at the end: an interrupted job leaves no half-written Parquet file."""

    def __init__(self, out: str | os.PathLike, *, force: bool = False):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise UsageError("batch writes Parquet with pyarrow: pip install 'rexnet-deploy[batch]'") from None
        self.out = Path(out).expanduser()
        if self.out.exists() and not force:
            raise UsageError(f"--out {self.out} already exists (pass --force to replace it)")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.out.with_name(f".{self.out.name}.{os.getpid()}.tmp")
        self.writer = pq.ParquetWriter(self.tmp, _schema())
        self.rows = self.skipped = 0

    def write(self, rows: dict[str, list]) -> None:
        import pyarrow as pa

        self.writer.write_table(pa.table({c: rows[c] for c in COLUMNS}, schema=_schema()))
        self.rows += len(rows["file"])
        self.skipped += sum(e is not None for e in rows["error"])

    def close(self, ok: bool) -> None:
        self.writer.close()
        if ok:
            os.replace(self.tmp, self.out)
        else:
            self.tmp.unlink(missing_ok=True)


__all__ = ["COLUMNS", "ParquetSink", "predict_rows"]
