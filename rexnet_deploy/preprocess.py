"""timm's eval transform in numpy/Pillow, so runtimes need no torch.

Equal to ``timm.data.create_transform(**resolve_model_data_config(model), is_training=False)``
(tests hold it to ≤ 1e-5): resize the shorter side to ``floor(img_size / crop_pct)`` with Pillow's
filter, center-crop ``img_size``, scale to [0, 1], normalize with mean/std, HWC → CHW float32.
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


def resize_and_crop(img: Image.Image, cfg: PreprocessConfig) -> Image.Image:
    """The geometric half of the transform (what torchvision's Resize + CenterCrop do)."""
    crop_h, crop_w = cfg.crop_size
    scale_h, scale_w = cfg.resize_size
    w, h = img.size
    if cfg.crop_mode == "squash":
        new_w, new_h = scale_w, scale_h
    elif scale_h == scale_w:
        # torchvision Resize(int): shorter side to scale, longer side truncated (int), as timm does
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = scale_h, int(scale_h * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    else:
        # timm ResizeKeepRatio(longest=0): scale by the smaller ratio so both sides cover the target
        ratio = min(h / scale_h, w / scale_w)
        new_h, new_w = round(h / ratio), round(w / ratio)
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), _PIL_FILTERS[cfg.interpolation])
    if new_w < crop_w or new_h < crop_h:
        # torchvision pads with zeros before cropping an image smaller than the crop
        padded = Image.new(img.mode, (max(new_w, crop_w), max(new_h, crop_h)), 0)
        left, top = (max(crop_w - new_w, 0)) // 2, (max(crop_h - new_h, 0)) // 2
        padded.paste(img, (left, top))
        img, (new_w, new_h) = padded, padded.size
    top = int(round((new_h - crop_h) / 2.0))
    left = int(round((new_w - crop_w) / 2.0))
    return img.crop((left, top, left + crop_w, top + crop_h))


def normalize(img: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """RGB PIL image → normalized float32 CHW array."""
    arr = np.asarray(img, dtype=np.float32) / np.float32(255.0)
    mean = np.asarray(cfg.mean, dtype=np.float32)
    std = np.asarray(cfg.std, dtype=np.float32)
    arr = (arr - mean) / std
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def preprocess_image(img: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """One RGB PIL image → float32 CHW, ready to stack into the engine's NCHW batch."""
    return normalize(resize_and_crop(img, cfg), cfg)


def preprocess_batch(images: Sequence[Image.Image] | Iterable[Image.Image], cfg: PreprocessConfig) -> np.ndarray:
    """RGB PIL images → float32 NCHW batch."""
    return np.stack([preprocess_image(img, cfg) for img in images]).astype(np.float32, copy=False)
