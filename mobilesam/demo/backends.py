"""The demo's models: a PyTorch checkpoint or exported files behind one small embed-once, decode-many interface."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from .base import Backend, Decoded, EmbeddingCache


def default_checkpoint(root: str | os.PathLike = ".") -> Path | None:
    """The newest `outputs/demo/*/mobile_sam.pt` under `root` (what `make demo` leaves), or None."""
    found = sorted(Path(root).glob("outputs/demo/*/mobile_sam.pt"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def toy_reason(meta: dict[str, Any] | None) -> str | None:
    """Why a model's sidecar (`mobile_sam.json`, also beside exported files) marks it as a toy, or None.

    `make demo` (`python train.py` with the default config) records `demo.enabled` in the training config it
    stores; a run distilled from a random teacher records the teacher without a checkpoint.
    """
    if not isinstance(meta, dict):
        return None
    config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    demo = config.get("demo") if isinstance(config.get("demo"), dict) else {}
    if demo.get("enabled"):
        return (
            "this is the `make demo` toy: a few minutes of training on generated shapes against a RANDOM demo "
            "teacher, so its masks look like noise (that is expected, not a bug)"
        )
    teacher = meta.get("teacher") if isinstance(meta.get("teacher"), dict) else {}
    if teacher and not teacher.get("checkpoint"):
        return f"it was distilled from a RANDOM {teacher.get('variant', '')} teacher, so its masks mean nothing"
    return None


def _read_meta(path: Path) -> dict[str, Any] | None:
    """The sidecar beside a weights file (or in an exported file's folder); None when absent or unreadable (the
    loader itself reports a broken sidecar of a checkpoint)."""
    from mobilesam.checkpoint import CheckpointError, read_sidecar

    try:
        return read_sidecar(path)
    except CheckpointError:
        return None


def _runtime_predictor(encoder: str | os.PathLike, decoder: str | os.PathLike) -> Any:
    """The predictor for exported files, by their suffix (`mobilesam.deploy.load_predictor`: .onnx, .pte)."""
    from mobilesam.deploy import load_predictor

    return load_predictor(encoder, decoder)


class RuntimeBackend:
    """Exported encoder and decoder files (ONNX, or ExecuTorch through `mobilesam.deploy`), OnnxPredictor's API.

    Segment-everything is not offered: the exported graphs have no grid decoder or mask filters.
    """

    supports_everything = False

    def __init__(self, predictor: Any, description: str, toy: str | None = None) -> None:
        self.predictor = predictor
        self.description = description
        self.random_weights = False
        self.toy = toy
        self.img_size = int(predictor.img_size)
        self.cache = EmbeddingCache()
        self.lock = threading.Lock()

    def _ensure(self, image: np.ndarray, key: str) -> tuple[Any, float | None]:
        """The embedding of `key`, computed (and cached) when it is not cached; with the encoder's seconds, or None
        when it was cached."""
        with self.lock:
            emb = self.cache.get(key)
            if emb is not None:
                return emb, None
            start = time.perf_counter()
            emb = self.predictor.embed(image)
            self.cache.put(key, emb)
            return emb, time.perf_counter() - start

    def embed(self, image: np.ndarray, key: str) -> bool:
        """Embeds an HxWx3 uint8 image unless its embedding is cached; returns True when it was cached."""
        return self._ensure(image, key)[1] is None

    def decode(
        self,
        image: np.ndarray,
        key: str,
        points: np.ndarray,
        labels: np.ndarray,
        box: np.ndarray | None,
        multimask: bool,
    ) -> Decoded:
        """Masks for one object on an image (arguments as `TorchBackend.decode`; embedded again on a cache miss)."""
        emb, spent = self._ensure(image, key)
        kwargs: dict[str, Any] = {"multimask_output": multimask}
        if len(points):
            kwargs.update(points=[points.tolist()], labels=[labels.tolist()])
        if box is not None:
            kwargs["bboxes"] = [box.tolist()]
        r = self.predictor.decode(emb, **kwargs)
        return Decoded(np.asarray(r.masks, bool), np.asarray(r.scores, np.float32), spent)

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
        toy = toy_reason(_read_meta(Path(encoder).parent / "mobile_sam.pt"))
        return RuntimeBackend(predictor, f"exported files {Path(encoder).name} + {Path(decoder).name}", toy)

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
    toy = None if checkpoint is None else toy_reason(_read_meta(Path(checkpoint)))
    return TorchBackend(sam.model, description, random_weights=random_weights, toy=toy)
