"""The check every export passes before its files are kept: the exported encoder and decoder against PyTorch.

Two generated images (different content and aspect ratio) go through the exported files with the runtime's own
predictor and through the PyTorch model (`mobilesam.SamPredictor`). For each precision the export must

- match PyTorch's embedding: relative error ||exported - pytorch|| / ||pytorch|| under `TOLERANCES[p].embedding`;
- tell the two images apart as PyTorch does: the distance between the two exported embeddings must be at least
  `SPREAD` times PyTorch's, and the difference itself must match PyTorch's (relative error under
  `TOLERANCES[p].difference`). An encoder that "emits the same embedding for every input", as OpenVINO's fp16 did
  for a MobileSAM product, fails here even when its error looks small (much of an embedding is the same for every
  image), and so does one whose half-precision noise drowns what depends on the image;
- give PyTorch's masks: pixel agreement of every prompt (a point, a box, a box and a point on each image) at least
  `TOLERANCES[p].masks`.

`check_export` returns the measured figures (they go into the sidecar); a failure raises `ExportCheckError`,
which names what failed and how to export instead, and the caller deletes the files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    embedding: float  # largest relative L2 error of the embedding
    masks: float  # smallest pixel agreement of a mask
    difference: float | None  # largest relative error of (embedding 1 - embedding 2), None: not checked


TOLERANCES = {
    "fp32": Tolerance(embedding=1e-3, masks=0.999, difference=1e-2),
    "fp16": Tolerance(embedding=2e-2, masks=0.99, difference=0.25),
    # int8 (ExecuTorch's static PTQ with float layer norms, ONNX's dynamic int8): this check measured 0.0099 embedding
    # error and 98.9% worst mask agreement on the trained demo student, ~0.04 error on random test models, whose noise
    # exceeds the difference between their two probe images (so only the spread is checked); the former all-int8
    # PTQ on generated images (0.106 on the random test model) fails here
    "int8": Tolerance(embedding=0.1, masks=0.95, difference=None),
}
SPREAD = 0.5
INSTEAD = {
    "fp16": "export with --precision fp32",
    "int8": "export without --quantize",
    "fp32": "this is a bug: please report it with the variant, img_size and format",
}


class ExportCheckError(RuntimeError):
    """An exported file disagrees with PyTorch; it was not kept."""


def probe_images(seed: int = 1) -> list[np.ndarray]:
    """Two HxWx3 uint8 test images, 300x410 and 420x290: smooth gradients with coloured discs and noise."""
    rng = np.random.default_rng(seed)
    out = []
    for h, w in ((300, 410), (420, 290)):
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        img = (
            rng.uniform(0, 255, (1, 1, 3)) * (1 - ys / h)[..., None]
            + rng.uniform(0, 255, (1, 1, 3)) * (xs / w)[..., None]
        )
        for _ in range(6):
            cy, cx, r = rng.uniform(0, 1, 3)
            disc = (ys - cy * h) ** 2 + (xs - cx * w) ** 2 < (0.3 * r * min(h, w)) ** 2
            img[disc] = rng.uniform(0, 255, 3)
        out.append(np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8))
    return out


def probe_prompts(shape: tuple[int, ...]) -> list[dict[str, Any]]:
    """A point, a box, and a box with a negative point, in the image's pixels."""
    h, w = shape[:2]
    box = [0.15 * w, 0.2 * h, 0.75 * w, 0.85 * h]
    return [
        {"points": [0.4 * w, 0.55 * h], "labels": [1]},
        {"bboxes": box},
        {"points": [[[0.5 * w, 0.5 * h]]], "labels": [[0]], "bboxes": [box]},
    ]


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b|| / ||b|| (L2 over the whole tensor)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


def reference(model: Any) -> list[dict[str, Any]]:
    """PyTorch's embeddings and masks for the probe images (`SamPredictor` on `model`), computed once per export."""
    import torch

    from ..predictor import SamPredictor

    predictor = SamPredictor(model)
    out = []
    with torch.no_grad():
        for image in probe_images():
            predictor.set_image(image)
            masks = []
            for p in probe_prompts(image.shape):
                box = np.asarray(p["bboxes"], np.float32).reshape(4) if "bboxes" in p else None
                pts = np.asarray(p["points"], np.float32).reshape(-1, 2) if "points" in p else None
                labels = np.asarray(p["labels"]).reshape(-1) if "labels" in p else None
                m, _, _ = predictor.predict(pts, labels, box, multimask_output=False)
                masks.append(m[0])
            out.append({"image": image, "embedding": predictor.features.cpu().numpy(), "masks": masks})
    return out


def check_export(name: str, predictor: Any, ref: list[dict[str, Any]], precision: str) -> dict[str, float]:
    """Runs the exported files (through `predictor`, any runtime predictor) on the probe images against `ref`.

    Args:
        name: the files, for messages ("encoder_fp16.xml + decoder_fp16.xml").
        predictor: a predictor built from the staged files (`embed`, `decode`).
        ref: `reference(model)`.
        precision: "fp32", "fp16" or "int8" (picks the tolerances).

    Returns:
        {"embedding_rel_error", "spread_ratio", "difference_rel_error", "mask_agreement_min"}: the worst figures
        over the probes.

    Raises:
        ExportCheckError: a figure is out of its bound.
    """
    tol = TOLERANCES[precision]
    embeddings, errors, agreement = [], [], []
    for r in ref:
        emb = predictor.embed(r["image"])
        embeddings.append(emb.features)
        errors.append(relative_error(emb.features, r["embedding"]))
        for prompt, want in zip(probe_prompts(r["image"].shape), r["masks"]):
            got = predictor.decode(emb, **prompt).masks[0]
            agreement.append(float((got == want).mean()))
    ours, theirs = embeddings[0] - embeddings[1], ref[0]["embedding"] - ref[1]["embedding"]
    spread = float(np.linalg.norm(ours) / max(np.linalg.norm(theirs), 1e-12))
    figures = {
        "embedding_rel_error": max(errors),
        "spread_ratio": spread,
        "difference_rel_error": relative_error(ours, theirs),
        "mask_agreement_min": min(agreement),
    }
    failed = []
    if spread < SPREAD:
        failed.append(
            f"its embeddings of two different images differ {spread:.2f}x as much as PyTorch's (at least {SPREAD}x "
            "expected): the encoder barely depends on its input"
        )
    if tol.difference is not None and figures["difference_rel_error"] > tol.difference:
        failed.append(
            f"the difference between its embeddings of two images is off PyTorch's by "
            f"{figures['difference_rel_error']:.2f} (relative, limit {tol.difference:g}): what depends on the image "
            "is lost"
        )
    if figures["embedding_rel_error"] > tol.embedding:
        failed.append(f"embedding relative error {figures['embedding_rel_error']:.2e} (limit {tol.embedding:g})")
    if figures["mask_agreement_min"] < tol.masks:
        failed.append(
            f"masks agree with PyTorch on {figures['mask_agreement_min']:.2%} of pixels (at least {tol.masks:.1%})"
        )
    if failed:
        raise ExportCheckError(
            f"{name} ({precision}) failed the export check against PyTorch: {'; '.join(failed)}. "
            f"The files were not kept; {INSTEAD[precision]}"
        )
    return figures
