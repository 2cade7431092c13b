"""Labelled custom datasets (COCO instances JSON, image folders with mask PNGs) -> SA-1B-style annotation dicts.

Every reader returns a `LabelledSet`: one `LabelledImage` per usable image, each holding annotations in the form
the shards' json holds (`segmentation` COCO RLE at the original size with str counts, `bbox` XYWH in original
pixels, `point_coords` [[x, y]] = the interior point farthest from the mask border, `area`, `id`), so
`data.annotations` (`choose_masks`, `decode_masks`, `low_res_masks`, `prompts_in_frame`) works on them unchanged.
What cannot be used is skipped and listed in `LabelledSet.skipped` ({"source", "reason"}), never silently dropped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mobilesam import rle

from .annotations import farthest_interior_point
from .sources import IMAGE_EXTS, make_key

MASK_EXTS = (".png", ".tif", ".tiff", ".bmp")
LAYOUTS = ("auto", "objects", "labels")
_EXIF_ORIENTATION = 0x0112


class LabelError(ValueError):
    """A label file or folder that cannot be read at all (missing, not JSON, not COCO)."""


@dataclass
class LabelledImage:
    """One image and its object masks.

    Attributes:
        key: sample key (the image's relative path without extension, as `data.sources.make_key` makes it).
        path: the image file.
        size: (H, W) of the image as `mobilesam.io.load_image` reads it (EXIF orientation applied).
        raw_annotations: the annotations without `point_coords` (cheap to read; see `annotations`).
    """

    key: str
    path: Path
    size: tuple[int, int]
    raw_annotations: list[dict[str, Any]] = field(default_factory=list)

    @cached_property
    def annotations(self) -> list[dict[str, Any]]:
        """SA-1B-style annotations with `point_coords` (computed on first access: it decodes every mask, so in an
        evaluation it runs in the loader's workers, not at read time)."""
        out = []
        for a in self.raw_annotations:
            if not a.get("point_coords"):
                a = a | {"point_coords": [farthest_interior_point(rle.decode(a["segmentation"]))]}
            out.append(a)
        return out


@dataclass
class LabelledSet:
    """The usable images of a labelled dataset, and what was skipped.

    Attributes:
        kind: "coco" or "masks".
        root: what was read (for reports).
        images: sorted by key.
        skipped: {"source", "reason"} for every image or annotation that could not be used.
    """

    kind: str
    root: str
    images: list[LabelledImage]
    skipped: list[dict[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    def select(self, indices: Sequence[int]) -> LabelledSet:
        """A subset of the images (e.g. a validation split), with the same skip records."""
        return LabelledSet(self.kind, self.root, [self.images[i] for i in indices], list(self.skipped))


def rle_annotation(seg: dict[str, Any], ann_id: int, bbox: Sequence[float] | None = None, **extra: Any) -> dict:
    """A compressed COCO RLE (bytes or str counts) -> an SA-1B-style annotation without `point_coords`.

    Args:
        seg: {"size": [H, W], "counts": ...} at the image's original size.
        ann_id: the annotation's id (kept as `id`).
        bbox: XYWH in original pixels; None derives the tight box of the mask.
        extra: further fields to keep (e.g. `category_id`).
    """
    seg = rle.compress(seg)  # str counts
    box = [float(v) for v in (bbox if bbox is not None else rle.bbox(seg))]
    return {"id": ann_id, "segmentation": seg, "bbox": box, "area": rle.area(seg)} | extra


def mask_annotation(mask: np.ndarray, ann_id: int, **extra: Any) -> dict[str, Any]:
    """An HxW boolean mask -> an SA-1B-style annotation with `point_coords` (the mask is at hand, so the point is
    cheap here)."""
    m = np.asfortranarray(mask.astype(np.uint8))
    ann = rle_annotation(rle.encode_compressed(m), ann_id, **extra)
    ann["point_coords"] = [farthest_interior_point(m)]
    return ann


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(H, W) of an image file from its header, after its EXIF orientation (as `mobilesam.io.load_image` reads it).

    Raises:
        OSError / UnidentifiedImageError: not a readable image.
    """
    with Image.open(path) as im:
        w, h = im.size
        if im.getexif().get(_EXIF_ORIENTATION) in (5, 6, 7, 8):  # transposed: width and height swap
            w, h = h, w
    return int(h), int(w)


# ------------------------------------------------------------------------------------------------------------ COCO
def _coco_rle(seg: Any, h: int, w: int) -> dict[str, Any]:
    """A COCO `segmentation` (polygons, uncompressed or compressed RLE) -> compressed RLE, or ValueError."""
    if isinstance(seg, list):
        polys = [p for p in seg if isinstance(p, list)]
        if not polys or any(len(p) < 6 or len(p) % 2 for p in polys):
            raise ValueError("a polygon needs an even number of coordinates, at least 3 points")
        api = rle.mask_api("COCO polygons")
        return api.merge(api.frPyObjects(polys, h, w))
    if isinstance(seg, dict) and "counts" in seg and len(seg.get("size", ())) == 2:
        if [int(v) for v in seg["size"]] != [h, w]:
            raise ValueError(f"RLE size {list(seg['size'])} differs from the image size {[h, w]}")
        return rle.compress(seg)
    raise ValueError("segmentation is neither polygons nor a COCO RLE")


def read_coco(images: str | os.PathLike, annotations: str | os.PathLike, include_crowd: bool = False) -> LabelledSet:
    """A COCO instances dataset: `annotations` JSON (`images`, `annotations` with polygon or RLE `segmentation`)
    and the image files under `images` (`file_name` relative to it).

    Skipped and listed: images whose file is missing or unreadable or whose size differs from the JSON, annotations
    of unknown images, malformed or empty segmentations, and crowd regions (`iscrowd=1`, a group rather than one
    object) unless `include_crowd`. Images left without annotations are kept (the evaluation counts them).
    COCO's own `bbox` is kept (the "ground-truth box" of the box protocol); it is derived when absent or degenerate.

    Raises:
        LabelError: the JSON is missing, unreadable, or has no `images` / `annotations` lists.
    """
    root, ann_path = Path(images), Path(annotations)
    if not root.is_dir():
        raise LabelError(f"images={root} is not a folder: point it at the COCO images (e.g. val2017/)")
    try:
        doc = json.loads(ann_path.read_text())
    except FileNotFoundError as e:
        raise LabelError(f"annotations={ann_path} does not exist: give the instances JSON") from e
    except (OSError, ValueError) as e:
        raise LabelError(f"annotations={ann_path} is not readable JSON: {e}") from e
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), list) for k in ("images", "annotations")):
        raise LabelError(f"{ann_path} is not a COCO instances file: it needs 'images' and 'annotations' lists")

    skipped: list[dict[str, str]] = []
    by_id: dict[Any, LabelledImage] = {}
    for entry in doc["images"]:
        name = entry.get("file_name") if isinstance(entry, dict) else None
        if name is None or "id" not in entry or "height" not in entry or "width" not in entry:
            reason = "an image entry needs id, file_name, height and width"
            skipped.append({"source": f"{ann_path}: image {entry!r:.80}", "reason": reason})
            continue
        path, size = root / name, (int(entry["height"]), int(entry["width"]))
        try:
            found = image_size(path)
        except (OSError, UnidentifiedImageError) as e:
            skipped.append({"source": str(path), "reason": f"missing or unreadable image: {e}"})
            continue
        if found != size:
            skipped.append({"source": str(path), "reason": f"image is {found} (H, W) but the JSON says {size}"})
            continue
        by_id[entry["id"]] = LabelledImage(make_key(Path(name).with_suffix("").as_posix()), path, size)

    for i, a in enumerate(doc["annotations"]):
        where = f"{ann_path}: annotation {a.get('id', i) if isinstance(a, dict) else i}"
        img = by_id.get(a.get("image_id")) if isinstance(a, dict) else None
        if img is None:
            skipped.append({"source": where, "reason": "its image_id is not a usable image of this file"})
            continue
        if a.get("iscrowd") and not include_crowd:
            skipped.append({"source": where, "reason": "crowd region (iscrowd=1); include_crowd=true keeps it"})
            continue
        try:
            seg = _coco_rle(a.get("segmentation"), *img.size)
        except ValueError as e:
            skipped.append({"source": where, "reason": f"bad segmentation: {e}"})
            continue
        bbox = a.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and bbox[2] > 0 and bbox[3] > 0):
            bbox = None
        extra = {k: a[k] for k in ("category_id", "iscrowd") if k in a}
        ann = rle_annotation(seg, int(a.get("id", i)), bbox, **extra)
        if ann["area"] == 0:
            skipped.append({"source": where, "reason": "empty mask"})
            continue
        img.raw_annotations.append(ann)
    return LabelledSet("coco", f"{root} + {ann_path}", _unique(list(by_id.values()), skipped), skipped)


def _unique(images: list[LabelledImage], skipped: list[dict[str, str]]) -> list[LabelledImage]:
    """Sorted by key; a second image with the same key is skipped (keys seed the protocol's prompts)."""
    seen: dict[str, LabelledImage] = {}
    for img in sorted(images, key=lambda x: (x.key, str(x.path))):
        if img.key in seen:
            skipped.append({"source": str(img.path), "reason": f"duplicate key {img.key} (also {seen[img.key].path})"})
            continue
        seen[img.key] = img
    return list(seen.values())


# ------------------------------------------------------------------------------------------------ mask folders
def _read_mask_file(path: Path) -> np.ndarray:
    """A mask or label image -> HxW integer ids (0 = background): palette indices, grey or 16-bit values, or one
    id per RGB colour (black = background). Alpha is ignored."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        a = np.asarray(im.convert("RGB") if im.mode in ("CMYK", "YCbCr") else im)
    if a.ndim == 3:
        rgb = a[..., :3].astype(np.int64) if a.shape[2] >= 3 else a[..., 0].astype(np.int64)
        return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2] if rgb.ndim == 3 else rgb
    return a.astype(np.int64)


def _find_masks(masks_root: Path, rel: str, layout: str) -> tuple[str, Path | list[Path]] | str:
    """(layout, label file or object files) of an image, or a reason why there is none."""
    folder = masks_root / rel
    labels = [p for p in (masks_root / f"{rel}{e}" for e in MASK_EXTS) if p.is_file()]
    objects = sorted(p for p in folder.iterdir() if p.suffix.lower() in MASK_EXTS) if folder.is_dir() else []
    if layout == "auto" and labels and objects:
        return f"both {labels[0]} and {folder}/ exist: set layout=objects or layout=labels"
    if layout in ("auto", "objects") and objects:
        return "objects", objects
    if layout in ("auto", "labels") and labels:
        return "labels", labels[0]
    return "no masks"


def read_mask_folder(
    images: str | os.PathLike,
    masks: str | os.PathLike,
    layout: str = "auto",
    ignore_values: Sequence[int] = (),
) -> LabelledSet:
    """An image folder with mask files, matched by relative path (`images/a/b.jpg` <-> `masks/a/b...`):

    - layout "objects": `masks/a/b/*.png`, one file per object (nonzero pixels = the object; files by name order);
    - layout "labels": `masks/a/b.png` (or .tif/.bmp), one label image per image: each distinct nonzero value
      (palette index, grey or 16-bit value, or RGB colour) is one object, in value order; overlapping objects
      cannot be expressed in this layout;
    - "auto": per image, whichever exists (both at once is refused for that image).

    Masks must have the image's size (EXIF orientation applied to both). `ignore_values` are label values that are
    not objects (e.g. [255] for Pascal VOC's object borders). An image without mask files is kept without
    annotations (the evaluation counts it); empty object masks and masks of the wrong size are skipped and listed.

    Raises:
        LabelError: `images` or `masks` is not a folder, or no image is found.
    """
    root, masks_root = Path(images), Path(masks)
    if layout not in LAYOUTS:
        raise LabelError(f"layout={layout!r}; choose one of {LAYOUTS}")
    for name, p in (("images", root), ("masks", masks_root)):
        if not p.is_dir():
            raise LabelError(f"{name}={p} is not a folder")
    inside = masks_root.resolve()  # masks/ may sit inside images/: its files are not images
    files = [
        p
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix.lower() in IMAGE_EXTS and inside not in p.resolve().parents
    ]
    if not files:
        raise LabelError(f"no images ({', '.join(IMAGE_EXTS)}) under images={root}")
    ignore = set(int(v) for v in ignore_values) | {0}
    out, skipped = [], []
    for path in files:
        rel = path.relative_to(root).with_suffix("").as_posix()
        try:
            size = image_size(path)
        except (OSError, UnidentifiedImageError) as e:
            skipped.append({"source": str(path), "reason": f"unreadable image: {e}"})
            continue
        img = LabelledImage(make_key(rel), path, size)
        found = _find_masks(masks_root, rel, layout)
        if isinstance(found, str):
            if found != "no masks":
                skipped.append({"source": str(path), "reason": found})
                continue
            out.append(img)  # no mask files: an image without annotations
            continue
        kind, where = found
        for mask, source in _objects(where) if kind == "objects" else _labels(where, ignore):
            if isinstance(mask, str):
                skipped.append({"source": source, "reason": mask})
            elif mask.shape != size:
                skipped.append({"source": source, "reason": f"mask is {mask.shape} (H, W), the image {size}"})
            elif not mask.any():
                skipped.append({"source": source, "reason": "empty mask"})
            else:
                img.raw_annotations.append(mask_annotation(mask, len(img.raw_annotations)))
        out.append(img)
    return LabelledSet("masks", f"{root} + {masks_root}", _unique(out, skipped), skipped)


def _objects(files: list[Path]) -> list[tuple[np.ndarray | str, str]]:
    """(HxW bool mask or a reason, source) per object file."""
    out = []
    for p in files:
        try:
            out.append((_read_mask_file(p) != 0, str(p)))
        except (OSError, UnidentifiedImageError, ValueError) as e:
            out.append((f"unreadable mask: {e}", str(p)))
    return out


def _labels(path: Path, ignore: set[int]) -> list[tuple[np.ndarray | str, str]]:
    """(HxW bool mask, source) per object of a label image."""
    try:
        ids = _read_mask_file(path)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        return [(f"unreadable label image: {e}", str(path))]
    return [(ids == v, f"{path}#{v}") for v in np.unique(ids) if int(v) not in ignore]


def read_labels(
    kind: str,
    images: str | os.PathLike,
    annotations: str | os.PathLike | None = None,
    masks: str | os.PathLike | None = None,
    **options: Any,
) -> LabelledSet:
    """`read_coco` (kind "coco", needs `annotations`) or `read_mask_folder` (kind "masks", needs `masks`)."""
    if kind == "coco":
        if annotations is None:
            raise LabelError("dataset=coco needs annotations=FILE.json (the COCO instances file)")
        return read_coco(images, annotations, **options)
    if kind == "masks":
        if masks is None:
            raise LabelError("dataset=masks needs masks=DIR (mask PNGs matching the images by relative path)")
        return read_mask_folder(images, masks, **options)
    raise LabelError(f"dataset={kind!r}; labelled datasets are 'coco' and 'masks'")
