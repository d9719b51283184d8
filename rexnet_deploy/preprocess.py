"""timm's eval transform in numpy/Pillow, so runtimes need no torch.

Equal to ``timm.data.create_transform(**resolve_model_data_config(model), is_training=False)``
(tests hold it to ≤ 1e-5): resize the shorter side to ``floor(img_size / crop_pct)`` with Pillow's
filter, center-crop ``img_size``, scale to [0, 1], normalize with mean/std, HWC → CHW float32.

``fast=True`` trades that exactness for CPU time on images much larger than the resize target:
JPEGs are decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, ``Image.draft``) and other
images are box-reduced by an integer factor (``Image.reduce``) before the bicubic resize; either
step keeps at least ``FAST_GAP`` × the resize target, so the bicubic filter still does the final
antialiasing. The deviation this costs is measured in ``benchmarks/test_preprocess_cost.py`` and
bounded in ``tests/test_preprocess_fast.py`` (docs/cold-start-and-preprocessing.md: "Preprocessing cost").
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image

from .errors import UsageError

_PIL_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
CROP_MODES = ("center", "squash")
FAST_GAP = 2.0  # fast mode: the cheap reduction keeps >= this many times the resize target
DRAFT_INFO = "rexnet_draft"  # Image.info key: (original size, box in drafted pixels) of a drafted decode


@dataclass(frozen=True)
class PreprocessConfig:
    """The eval transform of one model, as recorded in an artifact's manifest."""

    input_size: tuple[int, int, int] = (3, 224, 224)
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    crop_mode: str = "center"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __post_init__(self) -> None:
        if self.interpolation not in _PIL_FILTERS:
            raise UsageError(f"unsupported interpolation {self.interpolation!r} (one of {', '.join(_PIL_FILTERS)})")
        if self.crop_mode not in CROP_MODES:
            raise UsageError(f"unsupported crop mode {self.crop_mode!r} (one of {', '.join(CROP_MODES)})")
        if not 0 < self.crop_pct <= 1:
            raise UsageError(f"crop_pct must be in (0, 1], got {self.crop_pct}")

    @property
    def crop_size(self) -> tuple[int, int]:
        return int(self.input_size[1]), int(self.input_size[2])

    @property
    def resize_size(self) -> tuple[int, int]:
        h, w = self.crop_size
        return math.floor(h / self.crop_pct), math.floor(w / self.crop_pct)

    @classmethod
    def from_data_config(cls, cfg: dict[str, Any]) -> "PreprocessConfig":
        """From timm's ``resolve_model_data_config`` dict (or a manifest's ``preprocess``)."""
        return cls(
            input_size=tuple(int(v) for v in cfg["input_size"]),
            interpolation=str(cfg.get("interpolation", "bicubic")),
            crop_pct=float(cfg.get("crop_pct") or 0.875),
            crop_mode=str(cfg.get("crop_mode") or "center"),
            mean=tuple(float(v) for v in cfg["mean"]),
            std=tuple(float(v) for v in cfg["std"]),
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["resize"] = list(self.resize_size)
        d["crop"] = list(self.crop_size)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def resize_target(size: tuple[int, int], cfg: PreprocessConfig) -> tuple[int, int]:
    """The (width, height) an image of ``size`` is resized to before the center crop."""
    scale_h, scale_w = cfg.resize_size
    w, h = size
    if cfg.crop_mode == "squash":
        return scale_w, scale_h
    if scale_h == scale_w:
        # torchvision Resize(int): shorter side to scale, longer side truncated (int), as timm does
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = scale_h, int(scale_h * long / short)
        return (new_short, new_long) if w <= h else (new_long, new_short)
    # timm ResizeKeepRatio(longest=0): scale by the smaller ratio so both sides cover the target
    ratio = min(h / scale_h, w / scale_w)
    return round(w / ratio), round(h / ratio)


def draft_size(size: tuple[int, int], cfg: PreprocessConfig) -> tuple[int, int]:
    """Fast mode: the smallest decode size ``Image.draft`` may reduce a JPEG of ``size`` to."""
    w, h = resize_target(size, cfg)
    return math.ceil(w * FAST_GAP), math.ceil(h * FAST_GAP)


def resize_and_crop(img: Image.Image, cfg: PreprocessConfig, *, fast: bool = False) -> Image.Image:
    """The geometric half of the transform (what torchvision's Resize + CenterCrop do).
    ``fast``: box-reduce by an integer factor first (see the module docstring)."""
    crop_h, crop_w = cfg.crop_size
    draft = img.info.get(DRAFT_INFO)
    # a drafted JPEG: the geometry of the original, resampled from the drafted pixels it maps to
    (w, h), box = draft if draft else (img.size, None)
    new_w, new_h = resize_target((w, h), cfg)
    if (new_w, new_h) != (w, h) or box is not None:
        img = img.resize((new_w, new_h), _PIL_FILTERS[cfg.interpolation], box=box,
                         reducing_gap=FAST_GAP if fast else None)
    if new_w < crop_w or new_h < crop_h:
        # torchvision pads with zeros before cropping an image smaller than the crop
        padded = Image.new(img.mode, (max(new_w, crop_w), max(new_h, crop_h)), 0)
        left, top = (max(crop_w - new_w, 0)) // 2, (max(crop_h - new_h, 0)) // 2
        padded.paste(img, (left, top))
        img, (new_w, new_h) = padded, padded.size
    top = int(round((new_h - crop_h) / 2.0))
    left = int(round((new_w - crop_w) / 2.0))
    return img.crop((left, top, left + crop_w, top + crop_h))


def normalize(img: Image.Image, cfg: PreprocessConfig, out: np.ndarray | None = None) -> np.ndarray:
    """RGB PIL image → normalized float32 CHW array (written into ``out`` when given).
    One fused multiply-add per value, ``x * (1 / (255 std)) - mean / std``, straight into the CHW
    layout: a third of the passes of divide, subtract, divide and a transposed copy (≤ 1e-6 apart)."""
    arr = np.asarray(img)
    chw = arr.transpose(2, 0, 1)
    if out is None:
        out = np.empty(chw.shape, dtype=np.float32)
    scale, offset = _affine(cfg)
    np.multiply(chw, scale, out=out, casting="unsafe")
    out -= offset
    return out


def _affine(cfg: PreprocessConfig) -> tuple[np.ndarray, np.ndarray]:
    std = np.asarray(cfg.std, dtype=np.float64)
    mean = np.asarray(cfg.mean, dtype=np.float64)
    return ((1.0 / (255.0 * std)).astype(np.float32)[:, None, None],
            (mean / std).astype(np.float32)[:, None, None])


def preprocess_image(img: Image.Image, cfg: PreprocessConfig, *, fast: bool = False) -> np.ndarray:
    """One RGB PIL image → float32 CHW, ready to stack into the engine's NCHW batch."""
    return normalize(resize_and_crop(img, cfg, fast=fast), cfg)


def preprocess_batch(images: Sequence[Image.Image] | Iterable[Image.Image], cfg: PreprocessConfig, *,
                     fast: bool = False) -> np.ndarray:
    """RGB PIL images → float32 NCHW batch (each image normalized into its row: no stacking copy)."""
    images = list(images)
    out = np.empty((len(images), 3, *cfg.crop_size), dtype=np.float32)
    for row, img in zip(out, images):
        normalize(resize_and_crop(img, cfg, fast=fast), cfg, out=row)
    return out
