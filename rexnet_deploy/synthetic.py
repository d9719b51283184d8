"""Seeded, real-looking images (smooth colour fields, gradients, shapes, noise) for tests and for
``check`` when no photos are given. Not a substitute for real photos in accuracy claims."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def synthetic_images(n: int, seed: int = 0, sizes: tuple[tuple[int, int], ...] = ((500, 375), (375, 500), (320, 320), (640, 427))) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        # smooth low-frequency colour field: upsampled coarse noise
        coarse = rng.integers(0, 256, size=(rng.integers(3, 9), rng.integers(3, 9), 3), dtype=np.uint8)
        img = Image.fromarray(coarse, "RGB").resize((w, h), Image.Resampling.BICUBIC)
        # a linear gradient blended in
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        angle = rng.uniform(0, np.pi)
        grad = (np.cos(angle) * xx / w + np.sin(angle) * yy / h)
        grad = (grad - grad.min()) / max(float(np.ptp(grad)), 1e-6)
        arr = np.asarray(img, dtype=np.float32) * 0.7 + grad[..., None] * rng.uniform(0, 255, size=3) * 0.3
        img = Image.fromarray(arr.clip(0, 255).astype(np.uint8), "RGB")
        draw = ImageDraw.Draw(img)
        for _ in range(rng.integers(2, 7)):
            x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
            x1, y1 = x0 + int(rng.integers(10, w // 2)), y0 + int(rng.integers(10, h // 2))
            colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
        img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.5, 2.0))))
        noise = rng.normal(0, rng.uniform(2, 10), size=(h, w, 3))
        arr = (np.asarray(img, dtype=np.float32) + noise).clip(0, 255).astype(np.uint8)
        images.append(Image.fromarray(arr, "RGB"))
    return images
