"""The demo's example images, drawn at start-up (no files shipped): shapes, a landscape, tiles."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def _noise(image: Image.Image, seed: int, sigma: float = 6.0) -> np.ndarray:
    a = np.asarray(image.filter(ImageFilter.GaussianBlur(1.0)), dtype=np.float32)
    a = a + np.random.default_rng(seed).normal(0, sigma, a.shape)
    return a.clip(0, 255).astype(np.uint8)


def shapes(w: int = 480, h: int = 360) -> np.ndarray:
    """A disc, a square and a triangle on a grey gradient: HxWx3 uint8."""
    grad = np.linspace(150, 210, w, dtype=np.float32)[None, :, None].repeat(h, 0).repeat(3, 2)
    im = Image.fromarray(grad.astype(np.uint8))
    d = ImageDraw.Draw(im)
    d.ellipse([0.08 * w, 0.2 * h, 0.4 * w, 0.63 * h], fill=(210, 60, 50))
    d.rectangle([0.5 * w, 0.12 * h, 0.78 * w, 0.5 * h], fill=(40, 110, 200))
    d.polygon([(0.55 * w, 0.92 * h), (0.95 * w, 0.92 * h), (0.75 * w, 0.55 * h)], fill=(60, 170, 80))
    d.ellipse([0.2 * w, 0.7 * h, 0.3 * w, 0.83 * h], fill=(240, 200, 40))
    return _noise(im, 0)


def landscape(w: int = 480, h: int = 320) -> np.ndarray:
    """Sky, a sun, two hills, a lake and a house: HxWx3 uint8."""
    sky = np.linspace([120, 170, 235], [200, 225, 250], h, dtype=np.float32)[:, None].repeat(w, 1)
    im = Image.fromarray(sky.astype(np.uint8))
    d = ImageDraw.Draw(im)
    d.ellipse([0.72 * w, 0.08 * h, 0.86 * w, 0.29 * h], fill=(255, 215, 90))
    d.ellipse([-0.3 * w, 0.45 * h, 0.6 * w, 1.4 * h], fill=(70, 140, 60))
    d.ellipse([0.35 * w, 0.55 * h, 1.3 * w, 1.5 * h], fill=(95, 160, 70))
    d.ellipse([0.05 * w, 0.78 * h, 0.45 * w, 0.97 * h], fill=(60, 110, 190))
    d.rectangle([0.6 * w, 0.5 * h, 0.75 * w, 0.68 * h], fill=(180, 120, 80))
    d.polygon([(0.57 * w, 0.5 * h), (0.78 * w, 0.5 * h), (0.675 * w, 0.38 * h)], fill=(150, 50, 40))
    return _noise(im, 1)


def tiles(w: int = 400, h: int = 400) -> np.ndarray:
    """A 3x3 grid of coloured rounded tiles on white: HxWx3 uint8."""
    im = Image.new("RGB", (w, h), (245, 245, 240))
    d = ImageDraw.Draw(im)
    colours = [(220, 70, 60), (240, 160, 40), (250, 220, 60), (90, 180, 80), (50, 150, 160), (60, 100, 200)]
    colours += [(130, 80, 180), (200, 90, 160), (120, 120, 120)]
    cell = min(w, h) / 3
    for i, c in enumerate(colours):
        x, y = (i % 3) * cell, (i // 3) * cell
        d.rounded_rectangle([x + 10, y + 10, x + cell - 10, y + cell - 10], radius=cell / 6, fill=c)
    return _noise(im, 2, sigma=4.0)


EXAMPLES = {"shapes": shapes, "landscape": landscape, "tiles": tiles}


def example(name: str) -> np.ndarray:
    """The example image called `name` (one of `EXAMPLES`)."""
    if name not in EXAMPLES:
        raise KeyError(f"no example image {name!r}; choose one of {sorted(EXAMPLES)}")
    return EXAMPLES[name]()
