"""The demo's downloads: masks as a PNG and as COCO RLE JSON (compressed with pycocotools, else uncompressed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def rle_encode(mask: np.ndarray) -> dict[str, Any]:
    """HxW bool mask -> COCO uncompressed RLE `{"size": [H, W], "counts": [...]}` (column-major run lengths,
    starting with a run of zeros), the form `pycocotools.mask.frPyObjects` reads."""
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise ValueError(f"a mask must be HxW, got shape {m.shape}")
    flat = m.ravel(order="F")
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"size": [int(m.shape[0]), int(m.shape[1])], "counts": counts}


def rle_decode(rle: dict[str, Any]) -> np.ndarray:
    """COCO RLE (uncompressed, or compressed when pycocotools is installed) -> HxW bool mask."""
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        try:
            from pycocotools import mask as mask_utils
        except ImportError as e:
            raise ImportError("compressed COCO RLE needs pycocotools: pip install 'mobilesam[coco]'") from e
        c = counts.encode() if isinstance(counts, str) else counts
        return mask_utils.decode({"size": [h, w], "counts": c}).astype(bool)
    counts = np.asarray(counts, dtype=np.int64)
    if counts.sum() != h * w:
        raise ValueError(f"RLE counts sum to {int(counts.sum())} but the size {h}x{w} holds {h * w} pixels")
    values = np.arange(len(counts)) % 2 == 1  # runs alternate 0, 1, 0, ...
    return np.repeat(values, counts).reshape((w, h)).T


def compress(rle: dict[str, Any]) -> dict[str, Any]:
    """Uncompressed RLE -> COCO's compressed string form when pycocotools is installed, else unchanged."""
    try:
        from pycocotools import mask as mask_utils
    except ImportError:
        return rle
    h, w = rle["size"]
    out = mask_utils.frPyObjects(rle, h, w)
    return {"size": [int(h), int(w)], "counts": out["counts"].decode()}


def bbox_xywh(mask: np.ndarray) -> list[int]:
    """The tight XYWH box of a bool mask in pixels (zeros for an empty mask), as COCO writes `bbox`."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return [0, 0, 0, 0]
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


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
