"""The demo's downloads: masks as a PNG and as COCO RLE JSON (compressed with pycocotools, else uncompressed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .. import rle

rle_encode = rle.encode  # HxW bool mask -> COCO uncompressed RLE


def rle_decode(seg: dict[str, Any]) -> np.ndarray:
    """COCO RLE (uncompressed, or compressed when pycocotools is installed) -> HxW bool mask."""
    return rle.decode(seg).view(bool)


def compress(seg: dict[str, Any]) -> dict[str, Any]:
    """Uncompressed RLE -> COCO's compressed string form when pycocotools is installed, else unchanged."""
    try:
        return rle.compress(seg)
    except ImportError:
        return seg


bbox_xywh = rle.mask_bbox  # the tight XYWH box of a bool mask in pixels, as COCO writes `bbox`


def masks_json(masks: np.ndarray, scores: np.ndarray, image_name: str, prompts: dict[str, Any]) -> dict[str, Any]:
    """A COCO-style document of NxHxW masks: `image`, `annotations` (RLE `segmentation`, `area`, `bbox` XYWH,
    `predicted_iou`) and the `prompts` that made them (points, labels, box, mode)."""
    h, w = masks.shape[1:] if masks.ndim == 3 else (0, 0)
    annotations = []
    for i, (m, s) in enumerate(zip(masks, scores)):
        annotations.append(
            {
                "id": i + 1,
                "image_id": 1,
                "category_id": 1,
                "segmentation": compress(rle_encode(m)),
                "area": int(m.sum()),
                "bbox": bbox_xywh(m),
                "iscrowd": 0,
                "predicted_iou": round(float(s), 6),
            }
        )
    return {
        "image": {"id": 1, "file_name": image_name, "height": int(h), "width": int(w)},
        "annotations": annotations,
        "prompts": prompts,
    }


def mask_png(masks: np.ndarray) -> Image.Image:
    """One mask -> an 8-bit PNG image, 255 inside; several -> a label image (0 background, mask i is i + 1;
    later masks drawn over earlier ones; 16-bit when there are more than 255)."""
    if masks.ndim != 3 or not len(masks):
        raise ValueError(f"need N x H x W masks with N >= 1, got shape {masks.shape}")
    if len(masks) == 1:
        return Image.fromarray(masks[0].astype(np.uint8) * 255)
    labels = np.zeros(masks.shape[1:], np.uint16 if len(masks) > 255 else np.uint8)
    for i, m in enumerate(masks):
        labels[m] = i + 1
    return Image.fromarray(labels)


def write_downloads(
    folder: Path, masks: np.ndarray, scores: np.ndarray, image_name: str, prompts: dict[str, Any]
) -> tuple[Path, Path]:
    """Writes `masks.png` and `masks.json` (see `mask_png`, `masks_json`) into `folder`; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    png, js = folder / "masks.png", folder / "masks.json"
    mask_png(masks).save(png)
    js.write_text(json.dumps(masks_json(masks, scores, image_name, prompts)))
    return png, js
