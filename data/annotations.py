"""Mask annotations: the sample json, lazy COCO-RLE decoding, masks at the loader's resolution, prompt points."""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from mobilesam import rle


class AnnotationError(ValueError):
    """An annotation file that cannot be used (unreadable JSON, missing fields, masks of the wrong size)."""


def parse_sa1b_json(data: bytes, image_size: tuple[int, int] | None = None) -> list[dict[str, Any]]:
    """SA-1B annotation bytes -> the list of annotations, checked, masks left encoded.

    Each annotation keeps `segmentation` (COCO RLE at the original size), `bbox` (XYWH, original pixels),
    `point_coords` ([[x, y]], original pixels; added as the interior point farthest from the mask border when
    absent), `area`, and `id`/`predicted_iou`/`stability_score` when present.

    Args:
        data: the json file's bytes: {"image": {...}, "annotations": [...]} or a bare list of annotations.
        image_size: (H, W) of the decoded image; every RLE must have this size.

    Raises:
        AnnotationError: unreadable JSON or an annotation without a valid RLE.
    """
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, ValueError) as e:
        raise AnnotationError(f"bad JSON: {e}") from e
    anns = doc.get("annotations") if isinstance(doc, dict) else doc
    if not isinstance(anns, list):
        raise AnnotationError("bad JSON: no 'annotations' list")
    out = []
    for i, a in enumerate(anns):
        seg = a.get("segmentation") if isinstance(a, dict) else None
        if not isinstance(seg, dict) or "counts" not in seg or len(seg.get("size", ())) != 2:
            raise AnnotationError(f"bad JSON: annotation {i} has no COCO RLE 'segmentation' with 'size' and 'counts'")
        size = (int(seg["size"][0]), int(seg["size"][1]))
        if image_size is not None and size != tuple(image_size):
            raise AnnotationError(f"annotation {i}: mask size {size} differs from the image size {tuple(image_size)}")
        keep = {k: a[k] for k in ("id", "predicted_iou", "stability_score", "area") if k in a}
        keep["segmentation"] = {"size": list(size), "counts": seg["counts"]}
        needs_mask = "bbox" not in a or not a.get("point_coords")
        try:
            mask = rle.decode(keep["segmentation"]) if needs_mask else None
        except ValueError as e:  # uncompressed counts that do not cover the size
            raise AnnotationError(f"annotation {i}: {e}") from e
        keep["bbox"] = [float(v) for v in (a["bbox"] if "bbox" in a else rle.mask_bbox(mask))]
        point = a.get("point_coords") or [farthest_interior_point(mask)]
        keep["point_coords"] = [[float(point[0][0]), float(point[0][1])]]
        keep.setdefault("area", rle.area(keep["segmentation"]))
        out.append(keep)
    return out


decode_rle = rle.decode  # one COCO RLE -> HxW uint8 {0, 1} mask, Fortran-ordered (the old name)


def farthest_interior_point(mask: np.ndarray) -> list[float]:
    """(x, y) of the mask pixel farthest from the mask border (L2 distance transform, the image edge counting as
    border; among ties the one nearest their mean); the image centre for an empty mask."""
    m = np.ascontiguousarray(mask, dtype=np.uint8)
    if not m.any():
        return [m.shape[1] / 2.0, m.shape[0] / 2.0]
    dist = cv2.distanceTransform(np.pad(m, 1), cv2.DIST_L2, 5)[1:-1, 1:-1]  # pad: the image edge is a border
    ys, xs = np.nonzero(dist >= dist.max() - 1e-3)
    # ties (a ridge): the tied pixel nearest the ridge's mean, so a rectangle gives its centre
    i = int(np.argmin((xs - xs.mean()) ** 2 + (ys - ys.mean()) ** 2))
    return [float(xs[i]), float(ys[i])]


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """HxW {0,1} mask -> (h, w) bool by area interpolation and >= 0.5 (each output pixel is set when at least half
    of the original pixels it covers are set)."""
    h, w = size
    if mask.shape == (h, w):
        return mask.astype(bool)
    if mask.flags.f_contiguous and not mask.flags.c_contiguous:
        # pycocotools returns Fortran order: resize the transpose (a C-contiguous view) instead of copying
        return cv2.resize(mask.T.astype(np.float32), (h, w), interpolation=cv2.INTER_AREA).T >= 0.5
    return cv2.resize(mask.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA) >= 0.5


def decode_masks(annotations: Sequence[dict[str, Any]], ids: Sequence[int], size: tuple[int, int]) -> np.ndarray:
    """The chosen annotations' masks at `size` (h, w): decoded at the original size, then `resize_mask`.

    Returns:
        len(ids) x h x w bool array.
    """
    out = np.zeros((len(ids), size[0], size[1]), dtype=bool)
    for row, i in enumerate(ids):
        out[row] = resize_mask(rle.decode(annotations[i]["segmentation"]), size)
    return out


def low_res_masks(
    annotations: Sequence[dict[str, Any]], ids: Sequence[int], size: tuple[int, int], img_size: int
) -> np.ndarray:
    """Masks on the low-resolution grid of the padded input frame: N x (img_size/4) x (img_size/4) bool.

    Rule: decode at the original size, resize to the input frame (h, w) (`resize_mask`), zero-pad to
    img_size x img_size, then average each 4x4 block and keep >= 0.5.
    """
    return pool_low_res(decode_masks(annotations, ids, size), img_size)


def pool_low_res(masks: np.ndarray, img_size: int) -> np.ndarray:
    """N x h x w bool masks at the input frame's size -> N x (img_size/4) x (img_size/4) bool: zero-pad to
    img_size x img_size, average each 4x4 block, keep >= 0.5 (the second half of `low_res_masks`'s rule, for
    masks already decoded). Computed as a count of set pixels per block (>= 8 of 16), all masks at once."""
    n, h, w = masks.shape
    low = img_size // 4
    h4, w4 = -(-h // 4) * 4, -(-w // 4) * 4  # the padding beyond the last partial block holds zeros only
    frame = np.zeros((n, h4, w4), dtype=np.uint8)
    frame[:, :h, :w] = masks
    rows = frame.reshape(n, h4 // 4, 4, w4)
    by_rows = rows[:, :, 0] + rows[:, :, 1] + rows[:, :, 2] + rows[:, :, 3]  # whole-array uint8 adds: ~9x np.sum
    cols = by_rows.reshape(n, h4 // 4, w4 // 4, 4)
    counts = cols[..., 0] + cols[..., 1] + cols[..., 2] + cols[..., 3]
    out = np.zeros((n, low, low), dtype=bool)
    out[:, : h4 // 4, : w4 // 4] = counts >= 8
    return out


def prompts_in_frame(
    annotations: Sequence[dict[str, Any]], ids: Sequence[int], orig_size: tuple[int, int], size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (Nx4 XYXY) and points (Nx2 x, y) of the chosen annotations, scaled from the original image (H, W)
    to the input frame (h, w), float32 pixels."""
    sx, sy = size[1] / orig_size[1], size[0] / orig_size[0]
    boxes = np.zeros((len(ids), 4), np.float32)
    points = np.zeros((len(ids), 2), np.float32)
    for row, i in enumerate(ids):
        x, y, bw, bh = annotations[i]["bbox"]
        boxes[row] = (x * sx, y * sy, (x + bw) * sx, (y + bh) * sy)
        px, py = annotations[i]["point_coords"][0]
        points[row] = (px * sx, py * sy)
    return boxes, points


def choose_masks(count: int, n: int, key: str, seed: int, epoch: int | None) -> np.ndarray:
    """Which `n` of `count` annotations a sample uses (int64, at most n, no repeats).

    epoch None (validation) seeds the choice by the key alone: the same masks every time. Training seeds it by
    (seed, epoch, key): a fresh choice each epoch, reproducible.
    """
    k = zlib.crc32(key.encode())
    rng = np.random.default_rng([k] if epoch is None else [seed, epoch, k])
    if count <= n:
        return np.arange(count, dtype=np.int64)
    return np.sort(rng.choice(count, size=n, replace=False)).astype(np.int64)


def read_sample_annotations(json_bytes: bytes | str | dict) -> dict[str, Any]:
    """A shard sample's json (bytes, text or parsed) -> dict with `orig_size` (H, W), `size` (h, w) and the
    `annotations` list (masks still encoded): the function the evaluation uses with `decode_masks`."""
    meta = json_bytes if isinstance(json_bytes, dict) else json.loads(json_bytes)
    for k in ("orig_size", "size"):
        if k not in meta:
            raise AnnotationError(f"the sample json has no {k!r}: it was not written by data.precompute")
    meta.setdefault("annotations", [])
    return meta
