"""What the demo's page shows of a state: the image with its mask blended in, the prompts drawn on top."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

from mobilesam.viz import overlay

if TYPE_CHECKING:
    from .session import Prompts

# The prompted mask's colour (segment-anything's notebooks' blue), and its opacity
MASK_COLOUR, MASK_ALPHA = np.array([30, 144, 255], np.float32), 0.6


def blend(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 image with an HxW bool mask blended in `MASK_COLOUR`."""
    out = image.astype(np.float32)
    out[mask] = out[mask] * (1 - MASK_ALPHA) + MASK_COLOUR * MASK_ALPHA
    return out.round().astype(np.uint8)


def picture(image: np.ndarray, masks: np.ndarray, prompts: Prompts, everything: bool) -> Image.Image:
    """What the page shows: the prompted mask in blue with its points (green positive, red negative), box and
    pending box corner (white); after segment-everything every mask in its own colour (`mobilesam.viz.overlay`)."""
    if everything:
        return overlay(image, masks)
    base = blend(image, masks[0]) if len(masks) else image
    p = prompts
    points = np.asarray(p.points).reshape(-1, 2) if p.points else None
    canvas = overlay(base, [], points=points, labels=np.asarray(p.labels) if p.points else None)
    draw = ImageDraw.Draw(canvas)
    width = max(2, round(max(image.shape[:2]) / 300))
    if p.box is not None:
        draw.rectangle(p.box, outline=(255, 255, 255), width=width)
    if p.corner is not None:
        x, y = p.corner
        r = 4 * width
        draw.line([x - r, y, x + r, y], fill=(255, 255, 255), width=width)
        draw.line([x, y - r, x, y + r], fill=(255, 255, 255), width=width)
    return canvas
