"""One shard sample -> checked tensors, and samples -> THE BATCH (see data/README.md for the contract)."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import get_worker_info

from .annotations import choose_masks, low_res_masks, prompts_in_frame
from .codec import (
    EMB_KEY,
    EMBED_DIM,
    PATCH,
    Int8Embedding,
    LazyEmbedding,
    ShardFormatError,
    as_bytes,
    decode_embedding,
    decode_jpeg,
)
from .low_res import LOW_RES_KEY, decode_low_res

# The precompute writes the sizes first, so they are read without parsing the (large) annotation list.
_SIZES = re.compile(rb'^\{"orig_size": \[(\d+), (\d+)\], "size": \[(\d+), (\d+)\]')


class SampleDecoder:
    """Decodes raw shard samples (member name -> bytes) into checked arrays.

    Args:
        img_size: the manifest's img_size S; images must have long side S, embeddings 256 x S/16 x S/16.
        encoding: the manifest's embedding encoding ("float16" or "int8").
        masks_per_image: N ground-truth masks per sample (0: the json's annotations are not parsed).
        seed: seeds the training mask choice (with the epoch and the key).
    """

    def __init__(self, img_size: int, encoding: str, masks_per_image: int = 0, seed: int = 0) -> None:
        self.img_size, self.encoding, self.n, self.seed = img_size, encoding, masks_per_image, seed
        self.grid = img_size // PATCH

    def __call__(self, raw: dict[str, Any], epoch: int | None) -> dict[str, Any]:
        """epoch None: validation (masks chosen by key alone)."""
        key = raw.get("__key__", "?")
        where = f"sample {key} of {raw.get('__url__', '?')}"
        missing = [k for k in ("jpg", EMB_KEY, "json") if k not in raw]
        if missing:
            raise ShardFormatError(f"{where} lacks {missing}: not a shard written by data.precompute")
        image = decode_jpeg(as_bytes(raw["jpg"]))
        h, w = image.shape[1:]
        if max(h, w) != self.img_size:
            raise ShardFormatError(
                f"{where}: stored image is {h}x{w} but the manifest's img_size is {self.img_size} (long side)"
            )
        text, m, meta = raw["json"], None, None
        if self.n == 0:  # sizes only: read the json's first bytes
            m = _SIZES.match(text[:80] if isinstance(text, bytes) else text.read(0, 80))
        if m is not None:
            orig, size = (int(m[1]), int(m[2])), (int(m[3]), int(m[4]))
        else:
            meta = json.loads(as_bytes(text))
            orig, size = tuple(meta["orig_size"]), tuple(meta["size"])
        if size != (h, w):
            raise ShardFormatError(f"{where}: json says size {size} but the stored image is {(h, w)}")
        try:
            emb = decode_embedding(raw, self.encoding, self.grid)
        except ShardFormatError as e:
            raise ShardFormatError(f"{where}: {e}") from e
        out = {"key": key, "image": image, "embedding": emb, "size": (h, w), "orig_size": orig}
        if self.n > 0:
            anns = meta["annotations"]
            ids = choose_masks(len(anns), self.n, key, self.seed, epoch)
            if LOW_RES_KEY in raw:  # stored on the S/4 grid: the RLE is not touched
                try:
                    out["masks"] = decode_low_res(raw[LOW_RES_KEY], ids, len(anns), self.img_size)
                except ShardFormatError as e:
                    raise ShardFormatError(f"{where}: {e}") from e
            else:
                out["masks"] = low_res_masks(anns, ids, size, self.img_size)
            out["boxes"], out["points"] = prompts_in_frame(anns, ids, orig, size)
            out["mask_ids"] = ids
        return out


def _empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor; in a DataLoader worker it is allocated in shared memory (as torch's
    default_collate does), so handing the batch to the main process copies nothing."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    storage = torch.empty(0, dtype=dtype)._typed_storage()._new_shared(math.prod(shape))
    return torch.empty(0, dtype=dtype).set_(storage).view(shape)


def _copy_chw(src: torch.Tensor, dest: np.ndarray) -> None:
    """3xhxw uint8 -> dest (3 planes, rows may be strided). The decoder's tensor is a CHW view of interleaved HWC
    memory: OpenCV's channel split writes the planes straight into the batch (1.3 ms against 4.2 ms for torch's
    strided copy, 1024x683 on one core)."""
    hwc = src.permute(1, 2, 0).numpy()
    if hwc.flags.c_contiguous:
        cv2.mixChannels([hwc], [dest[0], dest[1], dest[2]], [0, 0, 1, 1, 2, 2])
    else:
        dest[...] = src.numpy()


def collate(samples: list[dict[str, Any]], img_size: int, masks_per_image: int = 0) -> dict[str, Any]:
    """Decoded samples -> the batch dict: uint8 images zero-padded bottom/right to SxS, float16 embeddings
    (copied once, into the batch tensor), int64 sizes, keys, and the N-mask fields when masks_per_image > 0."""
    b, s, grid, n = len(samples), img_size, img_size // PATCH, masks_per_image
    image = _empty((b, 3, s, s), torch.uint8)
    emb = _empty((b, EMBED_DIM, grid, grid), torch.float16)
    emb_np, image_np = emb.numpy(), image.numpy()
    for i, x in enumerate(samples):
        h, w = x["size"]
        _copy_chw(x["image"], image_np[i, :, :h, :w])
        image[i, :, h:, :] = 0  # zero only the padding
        image[i, :, :h, w:] = 0
        e = x["embedding"]
        if isinstance(e, (LazyEmbedding, Int8Embedding)):
            e.copy_to(emb_np[i])  # from the file (or the int8 codes) into the batch: the only copy
        else:
            np.copyto(emb_np[i], e)
    batch: dict[str, Any] = {
        "image": image,
        "embedding": emb,
        "size": torch.tensor([x["size"] for x in samples], dtype=torch.int64),
        "orig_size": torch.tensor([x["orig_size"] for x in samples], dtype=torch.int64),
        "key": [x["key"] for x in samples],
    }
    if n > 0:
        masks = torch.zeros(b, n, s // 4, s // 4, dtype=torch.bool)
        boxes = torch.zeros(b, n, 4, dtype=torch.float32)
        points = torch.zeros(b, n, 2, dtype=torch.float32)
        ids = torch.full((b, n), -1, dtype=torch.int64)
        for i, x in enumerate(samples):
            k = len(x["mask_ids"])
            masks[i, :k] = torch.from_numpy(x["masks"])
            boxes[i, :k] = torch.from_numpy(x["boxes"])
            points[i, :k] = torch.from_numpy(x["points"])
            ids[i, :k] = torch.from_numpy(x["mask_ids"])
        batch |= {"masks": masks, "boxes": boxes, "points": points, "mask_ids": ids}
        batch["num_masks"] = torch.tensor([len(x["mask_ids"]) for x in samples], dtype=torch.int64)
    return batch
