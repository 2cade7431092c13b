"""Helpers of the automatic mask generator: point grids, crop boxes, RLE encoding, small-region clean-up.

Formats follow segment-anything's `utils/amg.py`, so records are interchangeable with the official generator's:
boxes are XYXY with inclusive x2/y2 (XYWH as x, y, x2 - x, y2 - y), crop boxes XYXY with exclusive x1/y1; RLE
is `mobilesam.rle`'s.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import rle


def build_point_grid(n_per_side: int) -> np.ndarray:
    """(n*n)x2 (x, y) points evenly spaced in [0, 1]^2, at the centres of an n x n grid of cells, row-major."""
    if n_per_side < 1:
        raise ValueError(f"points_per_side must be at least 1, got {n_per_side}")
    # linspace, not (arange + 0.5) / n: the float rounding must match segment-anything's grid exactly
    side = np.linspace(0.5 / n_per_side, 1 - 0.5 / n_per_side, n_per_side)
    xs, ys = np.meshgrid(side, side)  # xs varies along a row
    return np.stack([xs.ravel(), ys.ravel()], axis=-1)


def build_all_layer_point_grids(n_per_side: int, n_layers: int, scale_per_layer: int) -> list[np.ndarray]:
    """One grid per crop layer; layer i has `n_per_side / scale_per_layer**i` points per side (floored)."""
    return [build_point_grid(int(n_per_side / scale_per_layer**i)) for i in range(n_layers + 1)]


def generate_crop_boxes(im_size: tuple[int, int], n_layers: int, overlap_ratio: float) -> tuple[list, list]:
    """The whole image, then for layer i = 1..n_layers a (2^i)x(2^i) grid of overlapping crops.

    Args:
        im_size: (H, W) of the image.
        n_layers: crop layers below the whole image.
        overlap_ratio: overlap of neighbouring crops in layer 1, as a fraction of the short side (halved per layer).

    Returns:
        XYXY crop boxes (ints, x1/y1 exclusive) and the layer index of each.
    """
    im_h, im_w = im_size
    boxes, layers = [[0, 0, im_w, im_h]], [0]
    for layer in range(1, n_layers + 1):
        per_side = 2**layer
        overlap = int(overlap_ratio * min(im_h, im_w) * (2 / per_side))
        crop_w = math.ceil((overlap * (per_side - 1) + im_w) / per_side)
        crop_h = math.ceil((overlap * (per_side - 1) + im_h) / per_side)
        # x-major order, as segment-anything's itertools.product(x0s, y0s)
        for i in range(per_side):
            x0 = int((crop_w - overlap) * i)
            for j in range(per_side):
                y0 = int((crop_h - overlap) * j)
                boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
                layers.append(layer)
    return boxes, layers


def box_near_crop_edge(boxes: Tensor, crop_box: list[int], image_box: list[int], atol: float = 20.0) -> Tensor:
    """Nx4 XYXY boxes (image frame) within `atol` pixels of a crop edge that is not also an image edge -> N bool."""
    crop = torch.as_tensor(crop_box, dtype=torch.float, device=boxes.device)
    image = torch.as_tensor(image_box, dtype=torch.float, device=boxes.device)
    boxes = boxes.float()
    near_crop = torch.isclose(boxes, crop[None], atol=atol, rtol=0)
    near_image = torch.isclose(boxes, image[None], atol=atol, rtol=0)
    return (near_crop & ~near_image).any(dim=1)


def xyxy_to_xywh(box: list[float] | np.ndarray) -> list:
    """[x1, y1, x2, y2] -> [x1, y1, x2 - x1, y2 - y1] (segment-anything's record convention)."""
    x1, y1, x2, y2 = (v.item() if hasattr(v, "item") else v for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def mask_to_rle(masks: Tensor) -> list[dict[str, Any]]:
    """NxHxW bool masks -> uncompressed RLEs {"size": [H, W], "counts": [...]} (`mobilesam.rle.encode`)."""
    return [rle.encode(m) for m in masks.cpu().numpy()]


def mask_areas(masks: Tensor) -> Tensor:
    """NxHxW bool masks -> N int64 pixel counts (summed as bytes: a bool sum converts to int64 first, 5x slower)."""
    return masks.view(torch.uint8).flatten(1).sum(1, dtype=torch.int32).long()


rle_area = rle.area
coco_rle = rle.encode_compressed  # HxW bool mask -> COCO compressed RLE {"size": [H, W], "counts": str}


def import_pycocotools():
    """Fails early, naming the extra, when output_mode='coco_rle' cannot work."""
    return rle.mask_api("output_mode='coco_rle'")


def import_cv2():
    try:
        import cv2
    except ImportError as e:
        raise ImportError(
            "min_mask_region_area > 0 needs OpenCV's connected components: pip install mobilesam[opencv]"
        ) from e
    return cv2


def remove_small_regions(mask: np.ndarray, area_thresh: float, mode: str) -> tuple[np.ndarray, bool]:
    """Fills holes (mode "holes") or removes islands ("islands") smaller than `area_thresh` pixels.

    Connectivity is 8 for the regions examined, as segment-anything. When every island is small, the largest
    is kept. Returns the new HxW bool mask and whether it changed.
    """
    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    cv2 = import_cv2()
    holes = mode == "holes"
    working = (holes ^ mask).astype(np.uint8)
    n_labels, regions, stats, _ = cv2.connectedComponentsWithStats(working, 8)
    sizes = stats[1:, -1]  # label 0 is the background
    small = [i + 1 for i, s in enumerate(sizes) if s < area_thresh]
    if not small:
        return mask, False
    fill = [0, *small]
    if not holes:
        fill = [i for i in range(n_labels) if i not in fill] or [int(np.argmax(sizes)) + 1]
    return np.isin(regions, fill), True
