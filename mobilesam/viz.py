"""Drawing masks, boxes and points over an image (PNG overlays for the CLI and the reports)."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw


def palette(n: int, seed: int = 0) -> np.ndarray:
    """n distinct RGB colours (golden-ratio hue steps), uint8 n x 3."""
    hues = (seed * 0.1 + np.arange(n) * 0.618033988749895) % 1.0
    return np.array([[int(255 * c) for c in colorsys.hsv_to_rgb(h, 0.75, 1.0)] for h in hues], dtype=np.uint8)


def overlay(
    image: np.ndarray,
    masks: np.ndarray | Sequence[np.ndarray],
    boxes: np.ndarray | None = None,
    points: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    alpha: float = 0.5,
) -> Image.Image:
    """Blends each NxHxW boolean mask in its own colour over an HxWx3 uint8 image; draws boxes and points.

    Args:
        image: HxWx3 uint8 RGB.
        masks: N boolean HxW masks.
        boxes: Nx4 XYXY boxes drawn as outlines in the mask colours, or None.
        points: Px2 (x, y) prompt points, drawn green (positive) or red (negative) by `labels`.
        alpha: mask opacity.
    """
    out = image.astype(np.float32)
    masks = [np.asarray(m, dtype=bool) for m in masks]
    colours = palette(len(masks))
    for m, c in zip(masks, colours):
        out[m] = out[m] * (1 - alpha) + c.astype(np.float32) * alpha
    canvas = Image.fromarray(out.round().astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    width = max(1, round(max(image.shape[:2]) / 400))
    if boxes is not None:
        for b, c in zip(np.asarray(boxes).reshape(-1, 4), colours):
            draw.rectangle([float(v) for v in b], outline=tuple(int(v) for v in c), width=width)
    if points is not None:
        pts = np.asarray(points).reshape(-1, 2)
        labs = np.ones(len(pts)) if labels is None else np.asarray(labels).reshape(-1)
        r = 3 * width + 2
        for (x, y), lab in zip(pts, labs):
            fill = (40, 220, 40) if lab > 0 else (230, 40, 40)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=fill, outline=(255, 255, 255), width=max(1, width // 2))
    return canvas
