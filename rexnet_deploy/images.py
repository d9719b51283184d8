"""Finding and decoding image files, with errors that name every bad file. No torch."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import ImageError, InputError, one_line
from .preprocess import DRAFT_INFO, PreprocessConfig, draft_size

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
# A decompression bomb is an input error here, not a warning.
Image.MAX_IMAGE_PIXELS = 178_956_970


def find_images(folder: str | os.PathLike) -> list[Path]:
    """All image files below ``folder`` (recursive, by extension), in a stable sorted order."""
    root = Path(folder)
    if not root.exists():
        raise ImageError(f"image folder not found: {root}")
    if not root.is_dir():
        raise ImageError(f"not a folder: {root}")
    files = sorted(
        p for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and not p.name.startswith(".")
    )
    if not files:
        raise ImageError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) found in {root}")
    return files


def expand_paths(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given; a folder stands for the image files below it (see find_images)."""
    return [f for p in paths for f in (find_images(p) if Path(p).is_dir() else [Path(p)])]


def load_image(path: str | os.PathLike, *, draft: PreprocessConfig | None = None) -> Image.Image:
    """Decode one file fully into an RGB PIL image; raise ImageError naming the file and why.
    ``draft``: fast mode for that transform, a large JPEG is decoded at a reduced scale (see
    :mod:`.preprocess`); the original size travels in ``info`` so the geometry stays the original's."""
    p = Path(path)
    if not p.exists():
        raise ImageError(f"image not found: {p}", [(str(p), "not found")])
    if p.is_dir():
        raise ImageError(f"not an image file (a folder): {p}", [(str(p), "is a folder")])
    try:
        # the file object, not the image, is closed after decoding: an RGB image then needs no copy
        with open(p, "rb") as f:
            return decode_or_fail(f, str(p), draft=draft)
    except OSError as exc:  # open() itself (permissions, a vanished file); decoding failed above
        reason = f"corrupt image ({one_line(exc)})"
        raise ImageError(f"cannot read image {p}: {reason}", [(str(p), reason)]) from None


def decode_or_fail(fp: BinaryIO, source: str | None, *, draft: PreprocessConfig | None = None) -> Image.Image:
    """:func:`decode`, with Pillow's failures turned into one ImageError naming ``source`` (a
    path; None for uploaded bytes) and why."""
    try:
        return decode(fp, draft=draft)
    except UnidentifiedImageError:
        reason = "not a supported image format"
    except Image.DecompressionBombError:
        reason = "image too large"
    except (OSError, SyntaxError, ValueError) as exc:
        reason = f"corrupt image ({one_line(exc)})"
    where = f" {source}" if source else ""
    raise ImageError(f"cannot read image{where}: {reason}", [(source or "<bytes>", reason)])


def decode(fp: BinaryIO, *, draft: PreprocessConfig | None = None) -> Image.Image:
    """An open image file → RGB PIL image, fully decoded (a truncated file fails here, not later
    in the pipeline); the caller closes ``fp``, so an RGB image needs no copy. ``draft``: see
    :func:`load_image`. Raises Pillow's errors."""
    img = Image.open(fp)
    if draft is not None and img.format == "JPEG":
        original = img.size
        drafted = img.draft("RGB", draft_size(original, draft))
        if drafted is not None and img.size != original:
            img.info[DRAFT_INFO] = (original, drafted[1])
    img.load()
    return img if img.mode == "RGB" else to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode → RGB; transparency is composited on white rather than dropped to black."""
    if img.mode == "RGB":
        return img.copy()
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def array_to_image(arr: np.ndarray) -> Image.Image:
    """An HxWx3 (RGB) or HxW (grey) uint8 array → PIL image; anything else is an InputError."""
    if not isinstance(arr, np.ndarray):
        raise InputError(f"expected a numpy array, got {type(arr).__name__}")
    if arr.dtype != np.uint8:
        raise InputError(
            f"image arrays must be uint8 HxWx3 RGB (got dtype {arr.dtype}); "
            "for a preprocessed float32 NCHW batch call the engine directly: engine(batch)"
        )
    if arr.size == 0:
        raise InputError(f"image array is empty (shape {arr.shape})")
    if arr.ndim == 2:
        return Image.fromarray(arr, mode="L").convert("RGB")
    if arr.ndim == 3 and arr.shape[2] == 3:
        return Image.fromarray(arr, mode="RGB")
    if arr.ndim == 3 and arr.shape[0] == 3:
        raise InputError(f"image array of shape {arr.shape} looks channel-first; pass HxWx3 (RGB)")
    raise InputError(f"image arrays must be HxWx3 RGB or HxW grey, got shape {arr.shape}")


@dataclass
class LoadedImages:
    """Images decoded from a list of sources, with the ones that failed and why."""

    images: list[Image.Image] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def load_images(sources: Iterable, *, skip_bad: bool = False, draft: PreprocessConfig | None = None) -> LoadedImages:
    """Decode paths, PIL images or uint8 arrays. Bad files are all listed in one error, or
    skipped (and recorded) when ``skip_bad``; an empty result is always an error. ``draft``: see
    :func:`load_image` (files only)."""
    out = LoadedImages()
    for i, src in enumerate(sources):
        if isinstance(src, Image.Image):
            out.images.append(to_rgb(src))
            out.names.append(f"<image {i}>")
        elif isinstance(src, np.ndarray):
            out.images.append(array_to_image(src))
            out.names.append(f"<array {i}>")
        elif isinstance(src, (str, os.PathLike)):
            try:
                out.images.append(load_image(src, draft=draft))
                out.names.append(str(src))
            except ImageError as exc:
                out.skipped.extend(exc.bad)
        else:
            raise InputError(f"cannot use a {type(src).__name__} as an image; pass paths, PIL images or uint8 arrays")
    if out.skipped and not skip_bad:
        raise ImageError(describe_bad(out.skipped, hint=True), out.skipped)
    if not out.images:
        raise ImageError("no readable image in the input" + (f" ({describe_bad(out.skipped)})" if out.skipped else ""),
                         out.skipped)
    return out


def describe_bad(bad: Sequence[tuple[str, str]], hint: bool = False) -> str:
    shown = "; ".join(f"{path}: {why}" for path, why in bad[:5])
    more = f"; and {len(bad) - 5} more" if len(bad) > 5 else ""
    tail = " (pass --skip-bad to skip them)" if hint else ""
    noun = "image" if len(bad) == 1 else "images"
    return f"{len(bad)} {noun} could not be read: {shown}{more}{tail}"
