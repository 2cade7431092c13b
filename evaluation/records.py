"""What the evaluation reads: one record per image (pixels, the stored teacher embedding, the protocol's masks and
prompts) from shards or a labelled dataset, prepared in DataLoader workers."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data.annotations import choose_masks, decode_masks, pool_low_res, prompts_in_frame, read_sample_annotations
from data.batch import SampleDecoder
from data.codec import EMBED_DIM, PATCH, Int8Embedding, LazyEmbedding, ShardFormatError, as_bytes
from data.labels import LabelledImage, LabelledSet
from data.manifest import read_manifest
from data.stream import raw_samples, split_shards
from mobilesam.io import load_image
from mobilesam.transforms import resize_image


def protocol_inputs(
    annotations: list[dict[str, Any]],
    key: str,
    orig_size: tuple[int, int],
    size: tuple[int, int],
    img_size: int,
    masks_per_image: int | None,
) -> dict[str, torch.Tensor]:
    """The masks an image is scored on and their prompts' inputs.

    Which masks: all, or `masks_per_image` of them chosen by `data.annotations.choose_masks` seeded by the key alone
    (the masks training validation uses).

    Returns:
        {"mask_ids" N int64, "gt" Nxhxw bool (ground truth at the resized input size), "low" Nx(S/4)x(S/4) bool,
        "points" Nx2 and "boxes" Nx4 float32 in input-frame pixels}.
    """
    n = len(annotations) if masks_per_image is None else masks_per_image
    ids = choose_masks(len(annotations), n, key, 0, None)
    gt = decode_masks(annotations, ids, size)
    boxes, points = prompts_in_frame(annotations, ids, orig_size, size)
    return {
        "mask_ids": torch.from_numpy(ids),
        "gt": torch.from_numpy(gt),
        "low": torch.from_numpy(pool_low_res(gt, img_size)),
        "points": torch.from_numpy(points),
        "boxes": torch.from_numpy(boxes),
    }


def _embedding(e: Any, grid: int) -> torch.Tensor:
    """A decoded shard embedding (array view, file reference or int8 codes) -> its own 256 x g x g float16 tensor."""
    if isinstance(e, (LazyEmbedding, Int8Embedding)):
        out = np.empty((EMBED_DIM, grid, grid), np.float16)
        e.copy_to(out)
        return torch.from_numpy(out)
    return torch.from_numpy(np.array(e, dtype=np.float16))


class ShardSource:
    """The samples of a shard directory (`data.precompute`'s output), with the teacher's stored embeddings."""

    kind = "shards"

    def __init__(
        self, root: str | os.PathLike, val_fraction: float = 0.0, val_shards: Sequence[str] | None = None
    ) -> None:
        """`val_fraction` / `val_shards` keep only the shards a training run held out with the same setting
        (`data.stream.split_shards`: the last shards by name, or the named ones); by default every shard."""
        self.root = Path(root)
        self.manifest = read_manifest(self.root)
        self.img_size = int(self.manifest["img_size"])
        chosen = list(split_shards(self.manifest, self.root, 0.0, None)[0])
        if val_fraction > 0 or val_shards:
            chosen = split_shards(self.manifest, self.root, val_fraction, val_shards)[1]
        self.shards = [s.path for s in chosen]
        self.count = sum(s.count for s in chosen)
        self.decoder = SampleDecoder(self.img_size, self.manifest["embedding"]["encoding"], 0)

    def __len__(self) -> int:
        return self.count

    def items(self) -> Iterator[Any]:
        """Raw samples in shard-name order; an unreadable rest of a shard becomes an error record."""
        for path in self.shards:
            try:
                yield from raw_samples(path)
            except ShardFormatError as e:
                yield {"__error__": str(e), "__url__": path}

    def load(self, raw: dict[str, Any], masks_per_image: int | None) -> dict[str, Any]:
        if "__error__" in raw:
            raise ShardFormatError(raw["__error__"])
        s = self.decoder(raw, None)
        meta = read_sample_annotations(as_bytes(raw["json"]))
        rec = {"key": s["key"], "image": s["image"], "size": s["size"], "orig_size": s["orig_size"]}
        rec["embedding"] = _embedding(s["embedding"], self.img_size // PATCH)
        return rec | protocol_inputs(
            meta["annotations"], s["key"], s["orig_size"], s["size"], self.img_size, masks_per_image
        )


class LabelledSource:
    """The images of a `data.labels.LabelledSet`, resized with `mobilesam.transforms` (no stored embedding)."""

    def __init__(self, labelled: LabelledSet, img_size: int) -> None:
        self.labelled, self.img_size, self.kind = labelled, img_size, labelled.kind
        self.root = labelled.root

    def __len__(self) -> int:
        return len(self.labelled)

    def items(self) -> Iterator[LabelledImage]:
        return iter(self.labelled.images)

    def load(self, item: LabelledImage, masks_per_image: int | None) -> dict[str, Any]:
        rgb = load_image(item.path)
        if rgb.shape[:2] != tuple(item.size):
            raise ValueError(f"{item.path} reads as {rgb.shape[:2]} (H, W) but its labels are for {tuple(item.size)}")
        resized = np.array(resize_image(rgb, self.img_size))  # a writable copy
        size = (int(resized.shape[0]), int(resized.shape[1]))
        image = torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1)  # HWC -> CHW, uint8
        rec = {"key": item.key, "image": image, "size": size, "orig_size": tuple(item.size), "embedding": None}
        return rec | protocol_inputs(item.annotations, item.key, tuple(item.size), size, self.img_size, masks_per_image)


def _describe(item: Any) -> tuple[str, str]:
    if isinstance(item, LabelledImage):
        return item.key, str(item.path)
    return item.get("__key__", "?"), str(item.get("__url__", "?"))


class EvalRecords(IterableDataset):
    """One record per image (see `protocol_inputs` plus key, image 3xhxw uint8, size, orig_size, embedding), or
    {"key", "source", "error"} for an image that cannot be used. Worker w of W takes images w, w + W, ..."""

    def __init__(self, source: ShardSource | LabelledSource, masks_per_image: int | None, limit: int | None) -> None:
        self.source, self.masks_per_image, self.limit = source, masks_per_image, limit

    def __len__(self) -> int:
        return len(self.source) if self.limit is None else min(self.limit, len(self.source))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for i, item in enumerate(self.source.items()):
            if self.limit is not None and i >= self.limit:
                return
            if i % workers != worker:
                continue
            try:
                yield self.source.load(item, self.masks_per_image)
            except (ValueError, OSError, KeyError, RuntimeError) as e:  # corrupt JPEG (torchvision raises
                # RuntimeError), bad json, unreadable image: skip and count
                key, where = _describe(item)
                yield {"key": key, "source": where, "error": f"{type(e).__name__}: {e}"}


def _one(x: dict[str, Any]) -> dict[str, Any]:
    return x


def record_loader(records: EvalRecords, num_workers: int) -> DataLoader:
    """Records one at a time, read by `num_workers` processes (0: in this one)."""
    return DataLoader(records, batch_size=None, num_workers=num_workers, collate_fn=_one)
