"""What every web-demo backend shares: the decoded result, the backend protocol and the embedding cache."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

# Image embeddings each backend keeps (4 MiB each at img_size 1024); an image that left the cache is embedded again
CACHE_SIZE = 8


def image_key(image: np.ndarray) -> str:
    """A content hash of an HxWx3 uint8 image, the key of its cached embedding."""
    h = hashlib.blake2b(digest_size=16)
    h.update(repr(image.shape).encode())
    h.update(np.ascontiguousarray(image).data)
    return h.hexdigest()


@dataclass
class Decoded:
    """Masks for one object: CxHxW bool at the original size and C predicted IoUs (C = 1, or 3 with multimask).

    `embed_seconds` is the image encoder's time when this call had to embed the image (it was not cached), else None.
    """

    masks: np.ndarray
    scores: np.ndarray
    embed_seconds: float | None = None


class Backend(Protocol):
    """What the demo needs of a model: embed an image once (cached by key), decode prompts on it, and optionally
    segment everything. `TorchBackend` (a checkpoint) and `RuntimeBackend` (exported files) implement it.

    Every call takes the image with its key: an image whose embedding has left the cache (other sessions' images
    pushed it out) is embedded again, never refused. `toy` says why the weights are the `make demo` toy, or None.
    """

    description: str
    random_weights: bool
    toy: str | None
    img_size: int
    supports_everything: bool

    def embed(self, image: np.ndarray, key: str) -> bool: ...

    def decode(
        self,
        image: np.ndarray,
        key: str,
        points: np.ndarray,
        labels: np.ndarray,
        box: np.ndarray | None,
        multimask: bool,
    ) -> Decoded: ...

    def everything(
        self, image: np.ndarray, key: str, points_per_side: int, pred_iou_thresh: float, stability_score_thresh: float
    ) -> Decoded: ...


class EmbeddingCache:
    """A small LRU of image key -> embedding (whatever the backend stores); not thread-safe (callers lock)."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self.size = size
        self.items: OrderedDict[str, Any] = OrderedDict()

    def get(self, key: str) -> Any:
        value = self.items.get(key)
        if value is not None:
            self.items.move_to_end(key)
        return value

    def __len__(self) -> int:
        return len(self.items)

    def put(self, key: str, value: Any) -> None:
        self.items[key] = value
        self.items.move_to_end(key)
        while len(self.items) > self.size:
            self.items.popitem(last=False)
