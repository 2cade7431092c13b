"""The demo's models: a PyTorch checkpoint or exported files behind one small embed-once, decode-many interface."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from .base import Backend, Decoded, EmbeddingCache


# How many image embeddings each backend keeps (4 MiB each at img_size 1024): a few browser tabs switching images
def default_checkpoint(root: str | os.PathLike = ".") -> Path | None:
    """The newest `outputs/demo/*/mobile_sam.pt` under `root` (what `make demo` leaves), or None."""
    found = sorted(Path(root).glob("outputs/demo/*/mobile_sam.pt"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def _runtime_predictor(encoder: str | os.PathLike, decoder: str | os.PathLike) -> Any:
    """The predictor for exported files, by their suffix (`mobilesam.deploy.load_predictor`: .onnx, .pte)."""
    from mobilesam.deploy import load_predictor

    return load_predictor(encoder, decoder)


class RuntimeBackend:
    """Exported encoder and decoder files (ONNX, or ExecuTorch through `mobilesam.deploy`), OnnxPredictor's API.

    Segment-everything is not offered: the exported graphs have no grid decoder or mask filters.
    """

    supports_everything = False

    def __init__(self, predictor: Any, description: str) -> None:
        self.predictor = predictor
        self.description = description
        self.random_weights = False
        self.img_size = int(predictor.img_size)
        self.cache = EmbeddingCache()
        self.lock = threading.Lock()

    def embed(self, image: np.ndarray, key: str) -> bool:
        """Embeds an HxWx3 uint8 image unless its embedding is cached; returns True when it was cached."""
        with self.lock:
            if self.cache.get(key) is not None:
                return True
            self.cache.put(key, self.predictor.embed(image))
            return False

    def decode(
        self, key: str, points: np.ndarray, labels: np.ndarray, box: np.ndarray | None, multimask: bool
    ) -> Decoded:
        """Masks for one object on an embedded image (arguments as `TorchBackend.decode`)."""
        with self.lock:
            emb = self.cache.get(key)
        if emb is None:
            raise KeyError(f"no embedding cached for image {key}; embed the image first")
        kwargs: dict[str, Any] = {"multimask_output": multimask}
        if len(points):
            kwargs.update(points=[points.tolist()], labels=[labels.tolist()])
        if box is not None:
            kwargs["bboxes"] = [box.tolist()]
        r = self.predictor.decode(emb, **kwargs)
        return Decoded(np.asarray(r.masks, bool), np.asarray(r.scores, np.float32))

    def everything(
        self, image: np.ndarray, key: str, points_per_side: int, pred_iou_thresh: float, stability_score_thresh: float
    ) -> Decoded:
        raise NotImplementedError(
            "segment everything needs the PyTorch model: start the demo with --checkpoint, not --encoder/--decoder"
        )


def load_backend(
    checkpoint: str | os.PathLike | None = None,
    encoder: str | os.PathLike | None = None,
    decoder: str | os.PathLike | None = None,
    device: str | None = None,
    img_size: int | None = None,
    root: str | os.PathLike = ".",
) -> Backend:
    """The model the demo runs, by the command line's rule.

    `encoder` and `decoder` (both) -> the exported files; else `checkpoint`; else the newest
    `outputs/demo/*/mobile_sam.pt` under `root` (what `make demo` leaves); else random `vit_t` weights (seeded).
    """
    if (encoder is None) != (decoder is None):
        raise ValueError(f"give --encoder and --decoder together (got encoder={encoder}, decoder={decoder})")
    if encoder is not None:
        if checkpoint is not None:
            raise ValueError("give either --checkpoint or --encoder/--decoder, not both")
        predictor = _runtime_predictor(encoder, decoder)
        return RuntimeBackend(predictor, f"exported files {Path(encoder).name} + {Path(decoder).name}")

    import torch

    from mobilesam import SAM

    from .torch_backend import TorchBackend

    random_weights = False
    if checkpoint is None:
        checkpoint = default_checkpoint(root)
    if checkpoint is None:
        torch.manual_seed(0)
        random_weights = True
        description = "RANDOM weights (vit_t): the masks mean nothing; pass --checkpoint mobile_sam.pt"
    else:
        description = f"checkpoint {checkpoint}"
    sam = SAM(checkpoint, device=device, img_size=img_size)
    sam.model.eval()
    return TorchBackend(sam.model, description, random_weights=random_weights)
