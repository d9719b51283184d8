"""One request's input → the float32 CHW tensor a batch is stacked from, or an error for that
request alone. Runs in the submitting thread (or the batcher's preprocessing pool), never in the
engine worker: a corrupt image fails here, before it could join (and spoil) a batch."""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np
from PIL import Image

from ..batch_shapes import check_array
from ..errors import ImageError, InputError
from ..images import array_to_image, decode_or_fail, load_image, to_rgb
from ..preprocess import PreprocessConfig, preprocess_image


def decode_image_bytes(data: bytes, *, draft: PreprocessConfig | None = None) -> Image.Image:
    """Encoded image bytes (JPEG, PNG, WebP, ...) → RGB PIL image, fully decoded (a truncated
    upload fails here, in its own request); ImageError if not. ``draft``: fast mode (see images.load_image)."""
    if not data:
        raise ImageError("empty image body", [("<bytes>", "empty")])
    return decode_or_fail(io.BytesIO(data), None, draft=draft)


def check_tensor(x: np.ndarray, input_shape: tuple[int, ...]) -> np.ndarray:
    """A preprocessed (C, H, W) or (1, C, H, W) float32 array → contiguous (C, H, W); InputError
    with the fix otherwise (the batcher runs its batches unchecked, so this is the check)."""
    if x.ndim == 4 and x.shape[0] == 1:
        x = x[0]
    return check_array(x, input_shape)


def to_tensor(item: Any, cfg: PreprocessConfig, input_shape: tuple[int, ...], *, fast: bool = False) -> np.ndarray:
    """A float array is taken as preprocessed; bytes, a path, a PIL image or a uint8 HxWx3 array
    is decoded and run through the engine's eval transform (``fast``: the engine's fast_preprocess)."""
    draft = cfg if fast else None
    if isinstance(item, np.ndarray) and item.dtype.kind == "f":
        return check_tensor(item, input_shape)
    if isinstance(item, (bytes, bytearray, memoryview)):
        img = decode_image_bytes(bytes(item), draft=draft)
    elif isinstance(item, (str, os.PathLike)):
        img = load_image(item, draft=draft)
    elif isinstance(item, Image.Image):
        img = to_rgb(item)
    elif isinstance(item, np.ndarray):
        img = array_to_image(item)
    else:
        raise InputError(f"cannot serve a {type(item).__name__}: pass a float32 CHW tensor, image bytes, "
                         "a path, a PIL image or a uint8 HxWx3 array")
    return preprocess_image(img, cfg, fast=fast)
