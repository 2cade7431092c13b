"""Small SA-1B-format data for tests and the demo: shapes on textured backgrounds, json with COCO-RLE masks.

Deterministic by seed. `make_sa1b_tars` writes `sa_000000.tar` ... with `sa_N.jpg` + `sa_N.json` members as the
real dataset has them; `make_image_folder` writes a folder tree of jpg/png/tif images for `source=folder`.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from mobilesam import rle

from .codec import encode_jpeg


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    f = rng.uniform(0.005, 0.05, 3)
    base = rng.uniform(60, 190, 3)
    img = np.stack([base[c] + 40 * np.sin(xx * f[c] + yy * f[(c + 1) % 3] + c) for c in range(3)], -1)
    return img + rng.normal(0, 8, img.shape).astype(np.float32)


def _shape_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    cy, cx = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w
    ry, rx = rng.uniform(0.05, 0.25) * h, rng.uniform(0.05, 0.25) * w
    if rng.random() < 0.5:
        return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    return (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)


def make_sa1b_image(rng: np.random.Generator, size: tuple[int, int], n_masks: int) -> tuple[np.ndarray, list[dict]]:
    """One HxWx3 uint8 image with `n_masks` shapes, and its SA-1B annotations (visible part of each shape)."""
    h, w = size
    img = _background(rng, h, w)
    owner = np.full((h, w), -1, np.int32)
    for i in range(n_masks):
        m = _shape_mask(rng, h, w)
        img[m] = rng.uniform(0, 255, 3) + rng.normal(0, 6, (int(m.sum()), 3))
        owner[m] = i  # later shapes occlude earlier ones
    anns = []
    for i in range(n_masks):
        m = owner == i
        if not m.any():
            continue
        ys, xs = np.nonzero(m)
        j = int(rng.integers(len(xs)))
        anns.append(
            {
                "id": len(anns),
                "segmentation": rle.encode_compressed(m),
                "bbox": rle.mask_bbox(m),
                "area": int(m.sum()),
                "predicted_iou": float(rng.uniform(0.8, 1.0)),
                "point_coords": [[float(xs[j]) + 0.5, float(ys[j]) + 0.5]],
                "crop_box": [0, 0, w, h],
                "stability_score": float(rng.uniform(0.9, 1.0)),
            }
        )
    return img.clip(0, 255).astype(np.uint8), anns


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def make_sa1b_tars(
    out_dir: str | os.PathLike,
    n_tars: int = 2,
    images_per_tar: int = 4,
    size: tuple[int, int] = (96, 144),
    seed: int = 0,
    masks_per_image: tuple[int, int] = (3, 6),
    quality: int = 90,
) -> list[Path]:
    """Writes `sa_000000.tar` ... in `out_dir`, each with `images_per_tar` pairs `sa_N.jpg` + `sa_N.json`.

    Args:
        size: (H, W) of every image, in pixels.
        masks_per_image: inclusive range of shapes drawn per image (occluded shapes may drop out).

    Returns:
        The tar paths, in order. Image ids run from 1 over all tars (`sa_1`, `sa_2`, ...).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for t in range(n_tars):
        path = out / f"sa_{t:06d}.tar"
        with tarfile.open(path, "w") as tf:
            for i in range(images_per_tar):
                image_id = t * images_per_tar + i + 1
                rng = np.random.default_rng([seed, image_id])
                img, anns = make_sa1b_image(rng, size, int(rng.integers(masks_per_image[0], masks_per_image[1] + 1)))
                info = {"image_id": image_id, "height": size[0], "width": size[1], "file_name": f"sa_{image_id}.jpg"}
                meta = {"image": info, "annotations": anns}
                _add(tf, f"sa_{image_id}.jpg", encode_jpeg(img, quality))
                _add(tf, f"sa_{image_id}.json", json.dumps(meta).encode())
        paths.append(path)
    return paths


def make_image_folder(out_dir: str | os.PathLike, size: tuple[int, int] = (80, 120), seed: int = 0) -> list[Path]:
    """A small tree of images in the formats `source=folder` converts: RGB jpg, grayscale png, RGBA png,
    16-bit grayscale tif, RGB tif (one each, two in a sub-folder), with an SA-1B-style json beside the first."""
    out = Path(out_dir)
    (out / "sub").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    img, anns = make_sa1b_image(rng, size, 3)
    for a in anns:  # a source without points or boxes: the pipeline derives them from the masks
        del a["point_coords"], a["bbox"]
    files = {
        out / "rgb.jpg": Image.fromarray(img),
        out / "gray.png": Image.fromarray(img[..., 1]),
        out / "sub" / "rgba.png": Image.fromarray(np.dstack([img, np.full(size, 128, np.uint8)])),
        out / "sub" / "deep.tif": Image.fromarray(img[..., 0].astype(np.uint16) * 200 + 300),
        out / "color.tif": Image.fromarray(img[:, ::-1].copy()),
    }
    for path, im in files.items():
        im.save(path)
    (out / "rgb.json").write_text(json.dumps({"annotations": anns}))
    return sorted(files)
