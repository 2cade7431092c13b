"""Generated labelled datasets (a COCO instances JSON and mask folders in both layouts, all holding the same
masks) from `data.synthetic` images, for tests and demos of `data.labels`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from mobilesam import rle

from .synthetic import _background, make_sa1b_image


def _rectangles(rng: np.random.Generator, size: tuple[int, int], n: int) -> list[tuple[int, int, int, int]]:
    """n disjoint (x0, y0, x1, y1) rectangles, one per cell of a 2 x 3 grid, corners on whole pixels."""
    h, w = size
    cells = rng.permutation(6)[:n]
    out = []
    for c in cells:
        cy, cx = divmod(int(c), 3)
        y0 = cy * h // 2 + int(rng.integers(1, h // 8))
        x0 = cx * w // 3 + int(rng.integers(1, w // 12))
        out.append((x0, y0, x0 + int(rng.integers(4, w // 4)), y0 + int(rng.integers(4, h // 3))))
    return out


def labelled_samples(n_images: int = 3, size: tuple[int, int] = (96, 128), seed: int = 0) -> list[dict]:
    """Images with disjoint object masks, cycling through three kinds: occluded ellipses and boxes (SA-1B-like,
    stored as RLE in COCO), disjoint rectangles (stored as polygons in COCO), and no objects at all.

    Returns:
        [{"key", "image" HxWx3 uint8, "masks" list of HxW bool, "rects" (x0, y0, x1, y1) per mask or None}].
    """
    out = []
    for i in range(n_images):
        rng = np.random.default_rng([seed, i])
        kind = i % 3
        if kind == 0:
            image, anns = make_sa1b_image(rng, size, 4)
            masks, rects = [rle.decode(a["segmentation"]).astype(bool) for a in anns], None
        else:
            image = _background(rng, *size).clip(0, 255).astype(np.uint8)
            rects = _rectangles(rng, size, 3) if kind == 1 else []
            masks = []
            for x0, y0, x1, y1 in rects:
                m = np.zeros(size, bool)
                m[y0:y1, x0:x1] = True
                image[m] = rng.uniform(0, 255, 3)
                masks.append(m)
        out.append({"key": f"img_{i:03d}", "image": image, "masks": masks, "rects": rects})
    return out


def write_labelled_dataset(out_dir: str | os.PathLike, samples: list[dict]) -> dict[str, Path]:
    """Writes `samples` (see `labelled_samples`) as `images/KEY.jpg`, a COCO `instances.json` (SA-1B-like masks
    alternately as compressed and uncompressed RLE, rectangles as polygons), `masks_objects/KEY/NN.png` (one PNG
    per object) and `masks_labels/KEY.png` (one 8-bit label image per image, object i has value i + 1).

    Returns:
        {"images", "coco", "objects", "labels"} paths.
    """
    out = Path(out_dir)
    paths = {"images": out / "images", "coco": out / "instances.json", "objects": out / "masks_objects"}
    paths["labels"] = out / "masks_labels"
    for p in (paths["images"], paths["objects"], paths["labels"]):
        p.mkdir(parents=True, exist_ok=True)
    doc: dict = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "object"}]}
    for image_id, s in enumerate(samples, 1):
        h, w = s["image"].shape[:2]
        Image.fromarray(s["image"]).save(paths["images"] / f"{s['key']}.jpg", quality=90)
        doc["images"].append({"id": image_id, "file_name": f"{s['key']}.jpg", "height": h, "width": w})
        label = np.zeros((h, w), np.uint8)
        (paths["objects"] / s["key"]).mkdir(exist_ok=True)
        for j, m in enumerate(s["masks"]):
            label[m] = j + 1
            Image.fromarray(m.astype(np.uint8) * 255).save(paths["objects"] / s["key"] / f"{j:02d}.png")
            if s["rects"] is not None:
                x0, y0, x1, y1 = s["rects"][j]
                seg: list | dict = [[x0, y0, x1, y0, x1, y1, x0, y1]]  # pixel-edge corners: exactly the rectangle
            elif j % 2:
                seg = rle.encode(m)
            else:
                seg = rle.encode_compressed(m)
            ann = {"id": len(doc["annotations"]) + 1, "image_id": image_id, "category_id": 1, "iscrowd": 0}
            doc["annotations"].append(ann | {"segmentation": seg, "bbox": rle.mask_bbox(m), "area": int(m.sum())})
        Image.fromarray(label).save(paths["labels"] / f"{s['key']}.png")
    paths["coco"].write_text(json.dumps(doc))
    return paths
