"""The demo's PyTorch backend: `SamPredictor` with a cache of image embeddings, so each image is embedded once."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from mobilesam import SamAutomaticMaskGenerator, SamPredictor

from .base import Decoded, EmbeddingCache, image_key


class CachingPredictor(SamPredictor):
    """A `SamPredictor` that keeps the embeddings of the last images it saw, by key (see `EmbeddingCache`).

    `embed(image, key)` embeds and caches; `use(key)` makes a cached embedding current. While `hold` is set, the mask
    generator's own `set_image` of the whole current image keeps the current embedding: segment-everything on an
    image already clicked on costs no second encoder run.
    """

    def __init__(self, sam_model: Any) -> None:
        super().__init__(sam_model)
        self.cache = EmbeddingCache()
        self.current: str | None = None
        self.hold = False

    def use(self, key: str) -> bool:
        """Makes the cached embedding of `key` the current one; False when it is not cached."""
        if self.current == key and self.is_image_set:
            return True
        cached = self.cache.get(key)
        if cached is None:
            return False
        self.features, self.original_size, self.input_size = cached
        self.is_image_set, self.current = True, key
        return True

    def embed(self, image: np.ndarray, key: str) -> None:
        """Embeds an HxWx3 uint8 RGB image, caches it under `key` and makes it current."""
        super().set_image(image)
        self.cache.put(key, (self.features, self.original_size, self.input_size))
        self.current = key

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        if self.hold and self.is_image_set and tuple(np.shape(image)[:2]) == tuple(self.original_size):
            return  # the generator's call on the image the backend made current
        if image_format != "RGB":  # not the demo's case: embedded as usual, not cached
            super().set_image(image, image_format)
            self.current = None
            return
        key = image_key(np.asarray(image))
        if not self.use(key):
            self.embed(image, key)

    def reset_image(self) -> None:
        super().reset_image()
        self.current = None


class TorchBackend:
    """A PyTorch `Sam`: `set_image` once per image, then only the prompt encoder and mask decoder per prompt.

    One predictor serves every browser session: each call holds the lock from making its image current to its
    masks, and an image that left the cache is embedded again inside that call.

    Args:
        model: the SAM model (any variant), in eval mode on its device.
        description: what the page says about the weights (the file, or that they are random).
        random_weights: the weights are a random initialisation (the page warns).
        toy: why the weights are the `make demo` toy (the page says so), or None.
    """

    supports_everything = True

    def __init__(self, model: Any, description: str, random_weights: bool = False, toy: str | None = None) -> None:
        self.model = model
        self.description = description
        self.random_weights = random_weights
        self.toy = toy
        self.img_size = int(model.image_encoder.img_size)
        self.predictor = CachingPredictor(model)
        self.lock = threading.Lock()  # one predictor for every browser session: one image on it at a time

    def _ensure(self, image: np.ndarray, key: str) -> float | None:
        """Makes `key` the current image, embedding it when it is not cached (the caller holds the lock).

        Returns the encoder's seconds when it ran, None when the embedding was cached."""
        if self.predictor.use(key):
            return None
        start = time.perf_counter()
        self.predictor.embed(image, key)
        return time.perf_counter() - start

    def embed(self, image: np.ndarray, key: str) -> bool:
        """Embeds an HxWx3 uint8 RGB image unless its embedding is cached; True when it was cached."""
        with self.lock:
            return self._ensure(image, key) is None

    def decode(
        self,
        image: np.ndarray,
        key: str,
        points: np.ndarray,
        labels: np.ndarray,
        box: np.ndarray | None,
        multimask: bool,
    ) -> Decoded:
        """Masks for one object on an image (embedded again first when its embedding left the cache).

        Args:
            image: the HxWx3 uint8 RGB image of `key`.
            key: the image's cache key (`DemoSession` scopes it to its session).
            points: Kx2 (x, y) points in original pixels (K may be 0 when a box is given).
            labels: K labels, 1 positive, 0 negative.
            box: XYXY box in original pixels, or None.
            multimask: three candidate masks instead of one.
        """
        with self.lock:
            spent = self._ensure(image, key)
            masks, scores, _ = self.predictor.predict(
                point_coords=points if len(points) else None,
                point_labels=labels if len(points) else None,
                box=box,
                multimask_output=multimask,
            )
        return Decoded(masks.astype(bool), scores.astype(np.float32), spent)

    def everything(
        self, image: np.ndarray, key: str, points_per_side: int, pred_iou_thresh: float, stability_score_thresh: float
    ) -> Decoded:
        """Every mask `SamAutomaticMaskGenerator` finds from an NxN point grid with these quality thresholds."""
        with self.lock:
            spent = self._ensure(image, key)
            generator = SamAutomaticMaskGenerator(
                self.model,
                points_per_side=points_per_side,
                pred_iou_thresh=pred_iou_thresh,
                stability_score_thresh=stability_score_thresh,
                predictor=self.predictor,
            )
            self.predictor.hold = True
            try:
                records = generator.generate(image)
            finally:
                self.predictor.hold = False
        h, w = image.shape[:2]
        masks = np.stack([r["segmentation"] for r in records]) if records else np.zeros((0, h, w), bool)
        scores = np.array([r["predicted_iou"] for r in records], np.float32)
        return Decoded(masks, scores, spent)
