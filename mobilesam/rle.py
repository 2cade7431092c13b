"""COCO run-length encoding of masks (encode, compress, decode, area, box): the one place every package uses.

COCO's RLE runs over the mask in column-major (Fortran) order and starts with a run of zeros. The uncompressed form
`{"size": [H, W], "counts": [int, ...]}` is read and written here with numpy alone; the compressed form (counts as
COCO's string) goes through pycocotools, an optional extra (`pip install 'mobilesam[coco]'`; the train extra has
it). Boxes are COCO's XYWH in pixels: x, y of the first set column and row, w and h counting both ends.
"""

from __future__ import annotations

from typing import Any

import numpy as np

RLE = dict[str, Any]


def mask_api(purpose: str = "compressed COCO RLE") -> Any:
    """`pycocotools.mask`, or an ImportError that names `purpose` and the extra to install."""
    try:
        from pycocotools import mask as mask_utils
    except ImportError as e:
        raise ImportError(f"{purpose} needs pycocotools: pip install 'mobilesam[coco]' (or pycocotools)") from e
    return mask_utils


def is_compressed(rle: RLE) -> bool:
    """Whether the counts are COCO's compressed string (str or bytes) rather than a list of run lengths."""
    return isinstance(rle["counts"], (str, bytes))


def _for_api(rle: RLE) -> RLE:
    """A compressed RLE in the form pycocotools reads (bytes counts, int size)."""
    counts = rle["counts"]
    return {"size": [int(v) for v in rle["size"]], "counts": counts.encode() if isinstance(counts, str) else counts}


def _text(rle: RLE) -> RLE:
    """A compressed RLE with str counts (JSON-serialisable) and int size."""
    counts = rle["counts"]
    return {"size": [int(v) for v in rle["size"]], "counts": counts.decode() if isinstance(counts, bytes) else counts}


def encode(mask: np.ndarray) -> RLE:
    """HxW bool mask -> uncompressed RLE `{"size": [H, W], "counts": [...]}` (numpy only; segment-anything's
    `mask_to_rle_pytorch` gives the same counts)."""
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise ValueError(f"a mask must be HxW, got shape {m.shape}")
    flat = m.ravel(order="F")
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1  # a new run starts here
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]  # runs start with zeros
    return {"size": [int(m.shape[0]), int(m.shape[1])], "counts": counts}


def encode_compressed(mask: np.ndarray) -> RLE:
    """HxW bool mask -> compressed RLE `{"size": [H, W], "counts": str}` (needs pycocotools)."""
    api = mask_api()
    return _text(api.encode(np.asfortranarray(mask, dtype=np.uint8)))


def compress(rle: RLE) -> RLE:
    """Any RLE -> compressed, counts as str (needs pycocotools for an uncompressed one)."""
    if is_compressed(rle):
        return _text(rle)
    h, w = (int(v) for v in rle["size"])
    return _text(mask_api().frPyObjects({"size": [h, w], "counts": list(rle["counts"])}, h, w))


def decode(rle: RLE) -> np.ndarray:
    """Any RLE -> HxW uint8 {0, 1} mask, Fortran-ordered as pycocotools returns it (`.view(bool)` for a bool mask;
    a compressed one needs pycocotools).

    Raises:
        ValueError: uncompressed counts that do not sum to H * W.
    """
    if is_compressed(rle):
        return mask_api().decode(_for_api(rle))
    h, w = (int(v) for v in rle["size"])
    counts = np.asarray(rle["counts"], dtype=np.int64)
    if counts.sum() != h * w:
        raise ValueError(f"RLE counts sum to {int(counts.sum())} but the size {h}x{w} holds {h * w} pixels")
    values = (np.arange(len(counts)) % 2).astype(np.uint8)  # runs alternate 0, 1, 0, ...
    return np.repeat(values, counts).reshape((w, h)).T


def area(rle: RLE) -> int:
    """Pixels set in an RLE (the odd runs of an uncompressed one; pycocotools for a compressed one)."""
    if is_compressed(rle):
        return int(mask_api().area(_for_api(rle)))
    return int(sum(rle["counts"][1::2]))


def mask_bbox(mask: np.ndarray) -> list[int]:
    """The tight XYWH box of an HxW mask in pixels ([0, 0, 0, 0] for an empty mask), as COCO writes `bbox`."""
    m = np.asarray(mask, dtype=bool)
    rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
    if not len(rows):
        return [0, 0, 0, 0]
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


def bbox(rle: RLE) -> list[float]:
    """The tight XYWH box of an RLE's mask in pixels, floats as pycocotools' `toBbox` gives them."""
    if is_compressed(rle):
        return [float(v) for v in mask_api().toBbox(_for_api(rle))]
    return [float(v) for v in mask_bbox(decode(rle))]
