"""The shards' low-resolution masks member: every annotation's mask on the loader's S/4 grid, bit-packed, zlib'd."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from .annotations import low_res_masks
from .codec import Member, ShardFormatError, as_bytes, npy_bytes, npy_view

# webdataset extension of the member `KEY.masks.npy.zlib`: zlib (level 1) over the .npy bytes of the masks packed
# with np.packbits along the last axis, A x (S/4) x (S/32) uint8, A = every annotation of the json, in its order.
LOW_RES_KEY = "masks.npy.zlib"
LOW_RES_FORMAT = "zlib(npy(np.packbits(masks, axis=-1))), all annotations in json order"


def manifest_entry(img_size: int) -> dict[str, Any]:
    """How dataset.json declares the member (`low_res_masks`)."""
    return {"member": LOW_RES_KEY, "shape": ["annotations", img_size // 4, img_size // 4], "format": LOW_RES_FORMAT}


def encode_low_res(annotations: Sequence[dict[str, Any]], size: tuple[int, int], img_size: int) -> bytes:
    """Every annotation's mask on the low-resolution grid (`annotations.low_res_masks`'s rule), as member bytes.

    Args:
        annotations: the sample json's annotations (COCO RLE at the original size).
        size: (h, w) of the stored (resized) image.
        img_size: the manifest's S.

    Returns:
        The `masks.npy.zlib` member: ~90 bytes per SA-1B-like mask at S = 1024 (8 KiB unpacked to bits).
    """
    masks = low_res_masks(annotations, range(len(annotations)), size, img_size)
    return zlib.compress(npy_bytes(np.packbits(masks, axis=-1)), 1)


def decode_low_res(member: bytes | Member, ids: Sequence[int] | np.ndarray, count: int, img_size: int) -> np.ndarray:
    """The chosen rows of a `masks.npy.zlib` member -> len(ids) x (S/4) x (S/4) bool (what `low_res_masks` gives).

    Args:
        member: the member's bytes (or the tar member).
        ids: indices into the json's annotations.
        count: the number of annotations in the json (the member must hold one mask each).
        img_size: the manifest's S.

    Raises:
        ShardFormatError: not zlib, not .npy, or a shape other than count x (S/4) x (S/32) uint8.
    """
    try:
        packed = npy_view(zlib.decompress(as_bytes(member)))
    except (zlib.error, ValueError) as e:
        raise ShardFormatError(f"{LOW_RES_KEY} is not zlib-compressed .npy bytes: {e}") from e
    low = img_size // 4
    if packed.dtype != np.uint8 or packed.shape != (count, low, low // 8):
        raise ShardFormatError(
            f"{LOW_RES_KEY} holds {packed.dtype} {packed.shape}, expected uint8 {(count, low, low // 8)} "
            f"({count} annotations, img_size {img_size}); re-add it with scripts/add_low_res_masks.py --force"
        )
    return np.unpackbits(packed[np.asarray(ids, dtype=np.int64)], axis=-1).view(bool)
