"""Finding and decoding image files, with errors that name every bad file. No torch."""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import ImageError, ImageTooLarge, InputError, UnsupportedImageFormat, UsageError, one_line
from .preprocess import DRAFT_INFO, PreprocessConfig, draft_size

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
# The formats a photo service needs, and the only Pillow plugins that ever see untrusted bytes:
# TGA, PCX, DDS, JPEG 2000, QOI, EPS (handed to Ghostscript), ... are refused unread. MPO, the
# multi-picture JPEG of phones and stereo cameras, opens through the JPEG plugin (its first picture).
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
ACCEPTED_NAMES = "JPEG, PNG, WebP, BMP, TIFF or GIF"

# Decode budget, in pixels, refused from the header, before any pixel is decoded. Decode +
# preprocess peaks at ~4.2 bytes a pixel for RGB, ~8.8 for the worst other accepted modes (RGBA,
# LA, CMYK, float TIFF: the decoded image plus its RGB copy) and ~16 for WebP (libwebp's canvases
# plus Pillow's copy: a WebP counts double). Measured at this budget: +253 MB (a 30 MP RGBA PNG),
# +251 MB (a 15 MP WebP), under the +300 MB a request may add to a server (docs/serving.md,
# "Input limits"). 30 MP is above a 24 MP camera's photos; a classifier sees 224x224 of it.
# Pillow's own limit (179 MP, and it raises only at twice that) let a 39 KB 18000x18000 PNG
# through: +1.5 GB.
DEFAULT_MAX_IMAGE_PIXELS = 30_000_000
MAX_PIXELS_ENV = "REXNET_DEPLOY_MAX_IMAGE_PIXELS"  # how worker processes (serve --workers, Ray actors) inherit it
# A decompression bomb is an input error here, not a warning: Pillow's own check (for what the
# header check cannot see, e.g. a GIF frame that grows the canvas) raises too.
warnings.simplefilter("error", Image.DecompressionBombWarning)
_FORMAT_COST = {"WEBP": 2}  # pixels counted per pixel against the budget (see check_pixels)
_STRIP_PIXELS = 1 << 20  # to_rgb converts a large image in strips of about this many pixels
_PILLOW_FLOOR = 4 * _STRIP_PIXELS  # the least Image.MAX_IMAGE_PIXELS is set to (see set_max_image_pixels)


def max_image_pixels() -> int:
    """The decode budget in pixels now in force (see :func:`set_max_image_pixels`)."""
    return _max_pixels


def set_max_image_pixels(pixels: int | None, *, export: bool = False) -> None:
    """Set the decode budget for this process (None: ``DEFAULT_MAX_IMAGE_PIXELS``); an image of
    more pixels is refused (:class:`ImageTooLarge`) before it is decoded. ``export``: also set
    ``REXNET_DEPLOY_MAX_IMAGE_PIXELS``, so worker processes started later use it too."""
    global _max_pixels
    pixels = DEFAULT_MAX_IMAGE_PIXELS if pixels is None else int(pixels)
    if pixels < 1:
        raise UsageError(f"--max-image-pixels must be >= 1, got {pixels}")
    _max_pixels = pixels
    # Pillow's own checks (a warning past it, made an error above) are the backstop; they also
    # run on every crop, so never below what preprocessing crops (a 224x224 center crop, strips)
    Image.MAX_IMAGE_PIXELS = max(pixels, _PILLOW_FLOOR)
    if export:
        os.environ[MAX_PIXELS_ENV] = str(pixels)


def _budget_from_env() -> int | None:
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:  # at import time: a line on stderr, not a traceback
        warnings.warn(f"{MAX_PIXELS_ENV} must be a positive integer (pixels), got {raw!r}: "
                      f"using the default {DEFAULT_MAX_IMAGE_PIXELS}", stacklevel=2)
        return None
    return int(raw)


_max_pixels = DEFAULT_MAX_IMAGE_PIXELS
set_max_image_pixels(_budget_from_env())


def find_images(folder: str | os.PathLike) -> list[Path]:
    """All image files below ``folder`` (recursive, by extension), in a stable sorted order."""
    root = Path(folder)
    if not root.exists():
        raise ImageError(f"image folder not found: {root}")
    if not root.is_dir():
        raise ImageError(f"not a folder: {root}")
    # a dangling symlink is listed too: it becomes a "broken link" error (a batch row), not a silent gap
    files = sorted(
        p for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS and (p.is_file() or _dangling(p)) and not p.name.startswith(".")
    )
    if not files:
        raise ImageError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) found in {root}")
    return files


def expand_paths(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given; a folder stands for the image files below it (see find_images)."""
    return [f for p in paths for f in (find_images(p) if Path(p).is_dir() else [Path(p)])]


def _dangling(p: Path) -> bool:
    return p.is_symlink() and not p.exists()


def load_image(path: str | os.PathLike, *, draft: PreprocessConfig | None = None) -> Image.Image:
    """Decode one file fully into an RGB PIL image; raise ImageError naming the file and why.
    ``draft``: fast mode for that transform, a large JPEG is decoded at a reduced scale (see
    :mod:`.preprocess`); the original size travels in ``info`` so the geometry stays the original's."""
    p = Path(path)
    if _dangling(p):
        raise ImageError(f"image not found: {p} is a broken link", [(str(p), "broken link (its target is missing)")])
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
    path; None for uploaded bytes) and why: :class:`ImageTooLarge` past the pixel budget,
    :class:`UnsupportedImageFormat` for bytes of no accepted format, ImageError otherwise."""
    where = f" {source}" if source else ""
    error, hint = ImageError, ""
    try:
        return decode(fp, draft=draft)
    except ImageTooLarge as exc:
        reason, error = one_line(exc), ImageTooLarge
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # Pillow's own check
        reason, error = _too_large(exc), ImageTooLarge
    except UnidentifiedImageError:
        if _looks_accepted(fp):  # a JPEG/PNG/... signature with a broken header: corrupt, not a wrong format
            reason = "corrupt image (cannot identify image file)"
        else:
            reason, error, hint = "not a supported image format", UnsupportedImageFormat, f" (accepted: {ACCEPTED_NAMES})"
    except (OSError, SyntaxError, ValueError) as exc:
        reason = f"corrupt image ({one_line(exc)})"
    raise error(f"cannot read image{where}: {reason}{hint}", [(source or "<bytes>", reason)])


def _accepted_formats() -> list[str]:
    """ACCEPTED_FORMATS this Pillow has a plugin for (a build without WebP lacks one)."""
    Image.init()
    return [f for f in ACCEPTED_FORMATS if f in Image.OPEN]


def _looks_accepted(fp: BinaryIO) -> bool:
    """Do the first bytes carry the signature of an accepted format? (Signatures only: no plugin
    of another format is asked.)"""
    try:
        fp.seek(0)
        prefix = fp.read(16)
    except (OSError, ValueError):
        return False
    for fmt in _accepted_formats():
        accept = Image.OPEN[fmt][1]
        try:
            found = accept is None or accept(prefix)
        except Exception:  # a plugin's signature test on a short prefix
            continue
        if found and not isinstance(found, str):  # (a str is Pillow's "almost": a warning text)
            return True
    return False


def _too_large(exc: Exception) -> str:
    """Pillow's bomb message ("Image size (N pixels) exceeds limit of ...", where the limit is
    twice ours past which it raises) → ours."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    size = f"{int(found.group(1)) / 1e6:.1f} megapixels" if found else "its size"
    return f"image too large: {size}, {_over()}"


def check_pixels(size: tuple[int, int], fmt: str | None = None) -> None:
    """ImageTooLarge when an image of ``size`` (width, height) is over the decode budget; a
    WebP (``fmt``) counts twice its pixels: libwebp decodes into canvases of its own, then Pillow
    copies the frame out, so it peaks at about twice the memory a pixel of the other formats takes."""
    w, h = size
    cost = _FORMAT_COST.get(fmt or "", 1)
    if w * h * cost > _max_pixels:
        raise ImageTooLarge(f"image too large: {w}x{h} is {w * h / 1e6:.1f} megapixels, {_over(cost, fmt)}")


def _over(cost: int = 1, fmt: str | None = None) -> str:
    if cost == 1:
        return f"over the limit of {_max_pixels / 1e6:g} megapixels (--max-image-pixels)"
    return (f"over the limit of {_max_pixels / cost / 1e6:g} megapixels for {fmt} "
            f"(1/{cost} of --max-image-pixels: it takes {cost}x the memory to decode)")


def decode(fp: BinaryIO, *, draft: PreprocessConfig | None = None) -> Image.Image:
    """An open image file → RGB PIL image, fully decoded (a truncated file fails here, not later
    in the pipeline); the caller closes ``fp``, so an RGB image needs no copy. ``draft``: see
    :func:`load_image`. Only ACCEPTED_FORMATS are opened, and an image over the pixel budget is
    refused from its header (:class:`ImageTooLarge`), before a pixel is decoded. Raises Pillow's errors."""
    img = Image.open(fp, formats=_accepted_formats())
    check_pixels(img.size, img.format)  # Image.open read only the header: nothing is decoded yet
    if draft is not None and img.format in ("JPEG", "MPO"):
        original = img.size
        drafted = img.draft("RGB", draft_size(original, draft))
        if drafted is not None and img.size != original:
            img.info[DRAFT_INFO] = (original, drafted[1])
    img.load()
    return img if img.mode == "RGB" else to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode → RGB; transparency is composited on white rather than dropped to black.
    A large image is converted in strips (each pixel on its own, so the result is the same): the
    peak is the image and its RGB copy, not the 4-5 full-size copies compositing makes."""
    if img.mode == "RGB":
        return img.copy()
    if img.width * img.height <= 2 * _STRIP_PIXELS:
        return _to_rgb(img)
    out = Image.new("RGB", img.size)
    rows = max(1, _STRIP_PIXELS // img.width)
    for top in range(0, img.height, rows):
        part = _to_rgb(img.crop((0, top, img.width, min(top + rows, img.height))))
        out.paste(part, (0, top))
    out.info = part.info  # what converting it whole carries (the draft geometry of a grey JPEG)
    return out


def _to_rgb(img: Image.Image) -> Image.Image:
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
