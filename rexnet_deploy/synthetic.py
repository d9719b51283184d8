"""Seeded, real-looking images (smooth colour fields, gradients, shapes, noise) for tests and for
``check`` when no photos are given. Not a substitute for real photos in accuracy claims."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


# Rows computed at a time: the float intermediates of a 12-megapixel image are ~300 MB each, and on
# these VMs fresh memory costs seconds to touch (a 4000x3000 image took 20 s whole, 1 s in strips).
# Elementwise work and sequential draws, so the pixels are the same as computed in one piece.
_STRIP_ROWS = 256


def synthetic_images(n: int, seed: int = 0, sizes: tuple[tuple[int, int], ...] = ((500, 375), (375, 500), (320, 320), (640, 427))) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        strips = [(r, min(h, r + _STRIP_ROWS)) for r in range(0, h, _STRIP_ROWS)]
        # smooth low-frequency colour field: upsampled coarse noise
        coarse = rng.integers(0, 256, size=(rng.integers(3, 9), rng.integers(3, 9), 3), dtype=np.uint8)
        field = np.asarray(Image.fromarray(coarse, "RGB").resize((w, h), Image.Resampling.BICUBIC))
        # a linear gradient blended in, scaled to 0..1 over the whole image
        angle = rng.uniform(0, np.pi)

        def gradient(r0: int, r1: int) -> np.ndarray:
            yy, xx = np.mgrid[r0:r1, 0:w].astype(np.float32)
            return np.cos(angle) * xx / w + np.sin(angle) * yy / h

        extremes = [(float(g.min()), float(g.max())) for g in (gradient(r0, r1) for r0, r1 in strips)]
        lo = min(e[0] for e in extremes)
        span = max(e[1] for e in extremes) - lo
        tint = rng.uniform(0, 255, size=3)
        blended = np.empty((h, w, 3), np.uint8)
        for r0, r1 in strips:
            grad = (gradient(r0, r1) - lo) / max(span, 1e-6)
            arr = field[r0:r1].astype(np.float32) * 0.7 + grad[..., None] * tint * 0.3
            blended[r0:r1] = arr.clip(0, 255).astype(np.uint8)
        img = Image.fromarray(blended, "RGB")
        draw = ImageDraw.Draw(img)
        for _ in range(rng.integers(2, 7)):
            x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
            x1, y1 = x0 + int(rng.integers(10, w // 2)), y0 + int(rng.integers(10, h // 2))
            colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
        blurred = np.asarray(img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.5, 2.0)))))
        sigma = rng.uniform(2, 10)
        out = np.empty((h, w, 3), np.uint8)
        for r0, r1 in strips:  # noise drawn strip after strip: the same stream as one draw
            noise = rng.normal(0, sigma, size=(r1 - r0, w, 3))
            out[r0:r1] = (blurred[r0:r1].astype(np.float32) + noise).clip(0, 255).astype(np.uint8)
        images.append(Image.fromarray(out, "RGB"))
    return images
