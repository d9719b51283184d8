"""One request's input → the float32 CHW tensor a batch is stacked from, or an error for that
request alone. Runs in the submitting thread (or the batcher's preprocessing pool), never in the
engine worker: a corrupt image fails here, before it could join (and spoil) a batch. Also the
parsers of tensor request bodies (JSON, .npy), which bound what they allocate before parsing."""

from __future__ import annotations

import io
import json
import os
from typing import Any

import numpy as np
from PIL import Image

from ..batch_shapes import check_array
from ..errors import ImageError, InputError, one_line
from ..images import array_to_image, decode_or_fail, load_image, to_rgb
from ..preprocess import PreprocessConfig, preprocess_image


def decode_image_bytes(data: bytes, *, draft: PreprocessConfig | None = None) -> Image.Image:
    """Encoded image bytes (JPEG, PNG, WebP, ...) → RGB PIL image, fully decoded (a truncated
    upload fails here, in its own request); ImageError if not. ``draft``: fast mode (see images.load_image)."""
    if not data:
        raise ImageError("empty image body", [("<bytes>", "empty")])
    return decode_or_fail(io.BytesIO(data), None, draft=draft)


# A tensor body is {"input": C x H x W lists} (4 deep) or (1, C, H, W) (5); a protocol body
# ({"inputs": [{"data": ...}]}) a few more. Deeper is refused before parsing: json.loads and
# np.asarray recurse once per level (a 100k-deep [[[...]]] was a RecursionError, a 500).
MAX_JSON_DEPTH = 8
# Containers ([ or {) per body: a C x H x W tensor has 1 + C + C*H (677 at 3x224x224); a 16 MB
# body of [[],[],...] would otherwise be 5 million Python lists (~300 MB).
MAX_JSON_CONTAINERS = 200_000


def json_body(body: bytes, *, max_depth: int = MAX_JSON_DEPTH, max_containers: int = MAX_JSON_CONTAINERS) -> Any:
    """A JSON request body → Python objects, or InputError in one line: invalid JSON, nested
    deeper than ``max_depth`` or with more than ``max_containers`` lists/objects (counted by a
    vectorised scan before parsing; brackets inside strings count too, which no tensor body has)."""
    raw = np.frombuffer(body, dtype=np.uint8)
    opens = (raw == ord("[")) | (raw == ord("{"))
    containers = int(np.count_nonzero(opens))
    if containers > max_containers:
        raise InputError(f"JSON body has {containers} lists/objects, over the limit of {max_containers}")
    if containers > max_depth:  # fewer cannot nest deeper
        steps = opens[opens | (raw == ord("]")) | (raw == ord("}"))].astype(np.int32) * 2 - 1  # +1 [ or {, -1 ] or }
        depth = int(np.cumsum(steps).max())
        if depth > max_depth:
            raise InputError(f"JSON body is nested {depth} deep, over the limit of {max_depth} "
                             '(a tensor is {"input": C x H x W nested lists})')
    try:
        return json.loads(body)
    except RecursionError:  # the scan bounds the depth; this is the backstop
        raise InputError("JSON body is nested too deep") from None
    except ValueError as exc:  # JSONDecodeError, and bytes that are not UTF-8
        raise InputError(f"invalid JSON body: {one_line(exc)}") from None


def json_tensor(data: Any, what: str = "JSON input") -> np.ndarray:
    """Nested lists of numbers → float32 array; InputError (one line) when they are not a
    rectangular array of numbers."""
    try:
        return np.asarray(data, dtype=np.float32)
    except RecursionError:
        raise InputError(f"{what} is nested too deep") from None
    except (ValueError, TypeError, OverflowError) as exc:
        raise InputError(f"{what} is not a rectangular array of numbers: {one_line(exc)}") from None


def npy_body(body: bytes) -> np.ndarray:
    """An .npy body (``numpy.save``) → array, never unpickling (a body is untrusted); the header
    is read first, so an object dtype or a declared shape the body does not hold is refused
    before any array is allocated."""
    fp = io.BytesIO(body)
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
    except Exception as exc:  # bad magic, a malformed or oversized header
        raise InputError(f"cannot read the .npy body: {one_line(exc)}") from None
    if dtype.hasobject:
        raise InputError(f"cannot read the .npy body: dtype {dtype} holds Python objects (send float32)")
    expected = int(np.prod(shape, dtype=object)) * dtype.itemsize
    data = len(body) - fp.tell()
    if expected != data:
        raise InputError(f"cannot read the .npy body: its header declares shape {tuple(shape)} {dtype} "
                         f"({expected} bytes) but {data} bytes follow")
    fp.seek(0)
    try:
        return np.load(fp, allow_pickle=False)
    except Exception as exc:
        raise InputError(f"cannot read the .npy body: {one_line(exc)}") from None


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
