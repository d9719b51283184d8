"""Batch shapes: the one input check, the batch sizes runtimes are warmed at, and padding up to them.

Every entry point checks its input here: ``Engine.validate`` (a whole NCHW batch) and the serving
batcher (one CHW image per request, so a bad request fails alone). Every short batch is padded by
:func:`pad_to`: ``Engine.infer`` (up to the smallest batch), the TorchScript engine (up to a warmed
size), OpenVINO's throughput split and the serving batcher (up to a compiled size).

A leaf module: numpy and the error types only (no torch; torch tensors are handled by duck typing).
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

import numpy as np

from .errors import InputError

PadFill = Literal["last", "zeros"]


def check_layout(shape: tuple[int, ...], dtype: str, input_shape: Sequence[int],
                 batch_range: tuple[int, int] | None = None) -> None:
    """InputError, with the fix, unless ``shape``/``dtype`` (by name: ``float32``) is what an engine
    of ``input_shape`` (``(-1, C, H, W)``) takes: a batch NCHW of a size in ``batch_range``, or,
    with ``batch_range`` None, one image CHW."""
    _, c, h, w = input_shape
    image = batch_range is None
    what = "tensor" if image else "engine input"
    if image:
        if shape != (c, h, w):
            if shape == (h, w, c):
                raise InputError(f"tensor looks HWC {shape}; expected CHW ({c}, {h}, {w}): use x.transpose(2, 0, 1)")
            raise InputError(f"tensor must have shape ({c}, {h}, {w}) (one image, CHW), got {shape}")
    else:
        if len(shape) == 3 and shape == (c, h, w):
            raise InputError(f"engine input must be a batch NCHW; add the batch axis: x[None] (shape (1, {c}, {h}, {w}))")
        if len(shape) != 4:
            raise InputError(f"engine input must be 4-D NCHW (N, {c}, {h}, {w}), got shape {shape}")
        if shape[1:] != (c, h, w):
            if shape[1:] == (h, w, c):
                raise InputError(f"engine input looks NHWC {shape}; expected NCHW: use x.transpose(0, 3, 1, 2)")
            raise InputError(f"engine input must have shape (N, {c}, {h}, {w}), got {shape}")
    if dtype != "float32":
        raise InputError(f"{what} must be float32 (normalized, see engine.preprocess), got {dtype}")
    if not image:
        lo, hi = batch_range
        if not lo <= shape[0] <= hi:
            raise InputError(f"batch size {shape[0]} is outside this engine's range {lo}..{hi}")


def check_array(x: np.ndarray, input_shape: Sequence[int], batch_range: tuple[int, int] | None = None, *,
                scan_finite: bool = True) -> np.ndarray:
    """:func:`check_layout` of a numpy array, then (``scan_finite``) no NaN/inf in it; returns it
    C-contiguous. ``scan_finite=False``: the runtime checks on its device instead (CUDA)."""
    check_layout(tuple(x.shape), str(x.dtype), input_shape, batch_range)
    if scan_finite and not np.isfinite(x).all():
        raise InputError(f"{'tensor' if batch_range is None else 'engine input'} contains NaN or inf values")
    return np.ascontiguousarray(x)


def batch_buckets(lo: int, hi: int) -> list[int]:
    """``lo``, every power of two between, and ``hi``: the batch sizes a runtime that compiles per
    shape is warmed at, and that other batch sizes are padded up to (:func:`padded_size`)."""
    return [lo] + [2 ** k for k in range(max(lo - 1, 0).bit_length(), hi.bit_length()) if lo < 2 ** k < hi] \
        + ([hi] if hi != lo else [])


def padded_size(n: int, sizes: Sequence[int]) -> int:
    """The smallest of ``sizes`` that holds ``n`` rows (``n`` itself when none does)."""
    return min((m for m in sizes if m >= n), default=n)


def pad_to(batch: Any, size: int, *, fill: PadFill = "last") -> Any:
    """``batch`` grown to ``size`` rows, the real rows first; the extra rows are copies of the last
    real one (``fill="last"``: every row is a valid input, so nothing the model sees is out of
    range) or zeros (``"zeros"``). Callers drop the padding rows from the outputs.

    ``batch``: a numpy array; a torch tensor (padded on its device, in its dtype); or a sequence
    of equally shaped numpy rows, stacked into one new array (one copy). An array or tensor that
    already has ``size`` rows is returned as it is."""
    if fill not in ("last", "zeros"):
        raise ValueError(f"fill must be 'last' or 'zeros', got {fill!r}")
    rows = len(batch)
    if not 1 <= rows <= size:
        raise ValueError(f"cannot pad {rows} rows to {size}")
    if isinstance(batch, (list, tuple)):
        out = np.empty((size, *batch[0].shape), dtype=batch[0].dtype)
        for i, row in enumerate(batch):
            out[i] = row
    elif rows == size:
        return batch
    else:
        shape = (size, *batch.shape[1:])
        out = np.empty(shape, dtype=batch.dtype) if isinstance(batch, np.ndarray) else batch.new_empty(shape)
        out[:rows] = batch
    if rows < size:
        out[rows:] = out[rows - 1] if fill == "last" else 0
    return out


__all__ = ["batch_buckets", "check_array", "check_layout", "pad_to", "padded_size"]
