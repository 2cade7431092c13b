"""Numpy pre- and post-processing shared by the runtime predictors (ONNX Runtime, ExecuTorch, OpenVINO, LiteRT,
Core ML): no PyTorch. `StaticPredictor` is the whole predictor for the static-shape graphs (a normalised padded
image in, the `StaticDecoder` interface), each runtime adding only how it runs one graph.

Prompt parsing and checks come from `mobilesam.prompts` (the facade's), the resize rule from
`mobilesam.transforms`, so every predictor refuses and maps prompts exactly as `SAM.predict` does.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from ..io import ImageSource, image_batches, load_image
from ..prompts import PromptError, check_inside, parse_prompts
from ..transforms import PIXEL_MEAN, PIXEL_STD, preprocess_shape, resize_image
from ..viz import overlay, save_picture
from .checks import (  # noqa: F401  (the runtimes' and old callers' names)
    ExportFileError,
    check_inputs,
    check_pair,
    check_role,
    check_sidecar,
    loading,
    require_export,
    sidecar_of,
)
from .interface import EMBED_DIM, PATCH

MASK_THRESHOLD = 0.0


def masks_to_boxes_np(masks: np.ndarray) -> np.ndarray:
    """Tight XYXY boxes of NxHxW bool masks (inclusive pixel indices, float32; zeros for an empty mask)."""
    boxes = np.zeros((len(masks), 4), np.float32)
    for i, m in enumerate(masks):
        rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
        if len(rows):
            boxes[i] = (cols[0], rows[0], cols[-1], rows[-1])
    return boxes


@dataclass
class DeployResults:
    """The masks predicted for one image, as numpy arrays (the fields of `mobilesam.Results`).

    Attributes:
        orig_img: HxWx3 uint8 RGB image.
        masks: NxHxW bool masks at the original size (object-major: 3 per object with multimask output).
        scores: N predicted IoUs.
        boxes: Nx4 XYXY tight boxes of the masks in pixels (x2, y2 inclusive; zeros for an empty mask).
        low_res_logits: NxSxS logits (S = img_size / 4), to pass back as a mask prompt.
        path: the image's path when it came from a file.
    """

    orig_img: np.ndarray
    masks: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray
    low_res_logits: np.ndarray
    path: str | None = None
    prompts: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.masks)

    def plot(self) -> Image.Image:
        """The image with every mask blended in, mask boxes outlined and the prompt points drawn."""
        p = self.prompts
        return overlay(self.orig_img, self.masks, boxes=self.boxes, points=p.get("points"), labels=p.get("labels"))

    def save(self, path: str | os.PathLike) -> Path:
        """Writes `plot()` to an image file, in the format of its extension (`.png`, fast; `.jpg`, smaller)."""
        return save_picture(self.plot(), path)


class Embedding(NamedTuple):
    """An image's embedding and the sizes needed to decode prompts on it."""

    features: np.ndarray  # 1x256xgxg float32
    original_size: tuple[int, int]  # (H, W) of the image
    input_size: tuple[int, int]  # (h, w) after resizing, long side = img_size
    image: np.ndarray  # HxWx3 uint8 RGB
    export: str = ""  # the predictor that made it (its encoder file and img_size); "" for one made by hand


def normalize_pad(resized: np.ndarray, img_size: int) -> np.ndarray:
    """hxwx3 uint8 resized image -> 1x3xSxS float32, normalised (SAM mean, std) and zero-padded (`Sam.preprocess`)."""
    h, w = resized.shape[:2]
    out = np.zeros((1, 3, img_size, img_size), np.float32)
    mean, std = np.array(PIXEL_MEAN, np.float32), np.array(PIXEL_STD, np.float32)
    out[0, :, :h, :w] = ((resized.astype(np.float32) - mean) / std).transpose(2, 0, 1)
    return out


def checked_prompts(
    points: Any, labels: Any, bboxes: Any, original_size: tuple[int, int]
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """The facade's prompt parsing and checks: (N x K x 2 points, N x K labels, N x 4 boxes), None when absent."""
    pts, labs, boxes = parse_prompts(points, labels, bboxes)
    if pts is None and boxes is None:
        raise PromptError("pass points or bboxes: segment-everything is not part of the deployed predictors")
    if pts is not None:
        check_inside(pts, original_size, "point")
    if boxes is not None:
        check_inside(boxes.reshape(-1, 2), original_size, "box corner")
    return pts, labs, boxes


def each_object(
    pts: np.ndarray | None, labs: np.ndarray | None, boxes: np.ndarray | None
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """Each object's points (Nx2, maybe none), labels (N) and box (4, or None) from `checked_prompts`' arrays."""
    for i in range(len(pts) if pts is not None else len(boxes)):
        coords = pts[i] if pts is not None else np.zeros((0, 2))
        yield coords, labs[i] if labs is not None else np.zeros(0, np.int64), boxes[i] if boxes is not None else None


def object_prompts(
    transform: Any,
    original_size: tuple[int, int],
    coords: np.ndarray,
    labels: np.ndarray,
    box: np.ndarray | None,
    pad: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """One object's points (Kx2, original pixels) and box -> SAM's decoder points in the resized frame.

    A box becomes two more points labelled 2 and 3; without a box and with `pad`, SAM's padding point (0, 0),
    label -1, is appended (the static decoder appends its own, `pad=False`).
    Returns (K'x2 float32 coordinates, K' float32 labels).
    """
    coords = transform.apply_coords(coords, original_size)
    if box is not None:
        coords = np.concatenate([coords, transform.apply_boxes(box[None], original_size).reshape(2, 2)])
        labels = np.concatenate([labels, [2, 3]])
    elif pad:
        coords = np.concatenate([coords, np.zeros((1, 2))])
        labels = np.concatenate([labels, [-1]])
    return coords.astype(np.float32), labels.astype(np.float32)


def _taps(in_size: int, out_size: int, keep: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (i0, i1) and the weight of i1 for the first `keep` outputs of PyTorch's bilinear resize
    (align_corners=False, no scale factor), in float32 as PyTorch computes them."""
    scale = np.float32(in_size / out_size)
    src = np.maximum(scale * (np.arange(keep, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5), np.float32(0))
    i0 = src.astype(np.int64)
    return i0, np.minimum(i0 + 1, in_size - 1), (src - i0).astype(np.float32)


def _resize_axis(x: np.ndarray, axis: int, out_size: int, keep: int | None = None) -> np.ndarray:
    """Bilinear resize of one axis of `x` to `out_size`, returning its first `keep` samples (default all)."""
    i0, i1, frac = _taps(x.shape[axis], out_size, out_size if keep is None else keep)
    shape = [1] * x.ndim
    shape[axis] = -1
    frac = frac.reshape(shape)
    out, right = x.take(i0, axis=axis), x.take(i1, axis=axis)  # in place from here: no more full-size arrays
    out *= 1 - frac
    right *= frac
    out += right
    return out


def upscale_masks(
    low_res: np.ndarray, img_size: int, original_size: tuple[int, int], threshold: float | None = None
) -> np.ndarray:
    """MxSxS low-resolution logits of the padded frame -> MxHxW logits at the original size, or with a
    `threshold` the MxHxW bool masks `logits > threshold`.

    SAM's postprocessing (upscale to img_size, remove the padding, upscale to (H, W)) one axis at a time, with
    PyTorch's bilinear taps and weights and its order (along the width, then the height); only the img_size rows
    and columns inside the crop are computed. The last pass, the largest, makes booleans directly: an output
    between two rows on the same side of the threshold is on that side too (a convex combination), so only the
    outputs between rows on either side (the mask border) are interpolated, with the same float32 operations as
    the full pass (`_above_rows`).
    """
    h, w = preprocess_shape(original_size[0], original_size[1], img_size)
    x = low_res.astype(np.float32)
    x = _resize_axis(_resize_axis(x, -1, img_size, keep=w), -2, img_size, keep=h)
    x = _resize_axis(x, -1, original_size[1])
    if threshold is None:
        return _resize_axis(x, -2, original_size[0])
    return _above_rows(x, original_size[0], threshold)


DENSE_BORDER = 0.1  # above this fraction of rows pairs on either side of the threshold, interpolate everything


def _above_rows(x: np.ndarray, out_size: int, threshold: float) -> np.ndarray:
    """`_resize_axis(x, -2, out_size) > threshold` for MxHxW `x`, interpolating only the outputs whose two taps
    disagree."""
    above = x > threshold
    # edge[:, i]: rows i and i + 1 lie on either side; outputs with taps (i, i + 1) must be interpolated
    edge = np.zeros_like(above)
    np.not_equal(above[:, :-1], above[:, 1:], out=edge[:, :-1])
    if edge.mean() > DENSE_BORDER:  # noise-like logits (random weights): the border is everywhere
        return _resize_axis(x, -2, out_size) > threshold
    i0, i1, frac = _taps(x.shape[-2], out_size, out_size)
    border = edge.take(i0, axis=-2)  # take: C-contiguous, so the flat indices below address it
    border &= (i1 != i0)[:, None]
    out = above.take(i0, axis=-2)
    plane, row, col = np.unravel_index(np.flatnonzero(border), border.shape)
    f = frac[row]
    values = x[plane, i0[row], col] * (1 - f) + x[plane, i1[row], col] * f
    out[plane, row, col] = values > threshold
    return out


def assemble(
    emb: Embedding,
    outputs: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    prompts: dict[str, Any],
) -> DeployResults:
    """Per-object (CxHxW logits or bool masks, C IoUs, CxSxS low-res logits) -> one `DeployResults` (object-major)."""
    masks = np.concatenate([m for m, _, _ in outputs])
    if masks.dtype != np.bool_:
        masks = masks > MASK_THRESHOLD
    return DeployResults(
        orig_img=emb.image,
        masks=masks,
        scores=np.concatenate([s for _, s, _ in outputs]),
        boxes=masks_to_boxes_np(masks),
        low_res_logits=np.concatenate([lr for _, _, lr in outputs]),
        prompts=prompts,
    )


class RuntimePredictor:
    """What every runtime predictor shares on top of its own `embed(image) -> Embedding` and
    `decode(embedding, points, labels, bboxes, multimask_output) -> DeployResults`: `predict` over images, and the
    check that an embedding is one this predictor can decode."""

    img_size: int
    export: str = ""  # `check_pair`'s identity of the encoder and decoder

    def check_embedding(self, emb: Embedding) -> None:
        """Refuses an embedding another export's predictor made, or one of another size."""
        if emb.export and self.export and emb.export != self.export:
            raise ValueError(
                f"this embedding was made by another export's encoder ({emb.export}), not this predictor's "
                f"({self.export}): embed the image with this predictor, or decode with the one that embedded it"
            )
        g = self.img_size // PATCH
        if tuple(np.shape(emb.features)) != (1, EMBED_DIM, g, g):
            raise ValueError(
                f"this embedding is {tuple(np.shape(emb.features))}, not the (1, {EMBED_DIM}, {g}, {g}) of this "
                f"predictor's img_size={self.img_size}: embed the image with this predictor"
            )

    def embed_images(self, sources: Sequence[ImageSource]) -> list[Embedding]:
        """Embeds images in one encoder call where the runtime's encoder takes a batch (see `StaticPredictor`);
        here, one at a time (the ONNX encoder takes one resized image of its own size)."""
        return [self.embed(s) for s in sources]

    def predict(
        self,
        source: ImageSource | Sequence[ImageSource],
        points: Any = None,
        labels: Any = None,
        bboxes: Any = None,
        multimask_output: bool = False,
        batch_size: int = 1,
    ) -> list[DeployResults]:
        """Segments the prompted objects in one image or a list of images, as `mobilesam.SAM.predict`.

        `source` is a path, PIL image, HxWx3 uint8 array, or a list of them; prompts are in original pixels, nested
        as Ultralytics nests them (see the README). `batch_size` images go through the encoder per call
        (`embed_images`; the same results as one at a time). Returns one `DeployResults` per image.
        """
        sources = list(source) if isinstance(source, (list, tuple)) else [source]
        results = []
        for group in image_batches(sources, batch_size):
            for s, emb in zip(group, self.embed_images(group), strict=True):
                r = self.decode(emb, points, labels, bboxes, multimask_output)
                r.path = str(s) if isinstance(s, (str, os.PathLike)) else None
                results.append(r)
        return results


class StaticPredictor(RuntimePredictor):
    """A predictor for the static-shape export (every runtime but ONNX): the encoder takes the normalised, padded
    1x3xSxS float32 image (`normalize_pad`), the decoder is `mobilesam.deploy.StaticDecoder` (P prompt slots, low-res
    masks out, upsampled here). A runtime subclass sets `img_size`, `max_points` and `transform` and implements
    `_encode` and `_decode`.
    """

    img_size: int
    max_points: int
    transform: Any

    def _encode(self, image: np.ndarray) -> np.ndarray:
        """1x3xSxS float32 normalised padded image -> 1x256x(S/16)x(S/16) float32 embedding."""
        raise NotImplementedError

    def _encode_batch(self, images: np.ndarray) -> np.ndarray:
        """Bx3xSxS -> Bx256x(S/16)x(S/16). Graphs exported for one image (ExecuTorch, LiteRT, Core ML: static
        shapes) run the images one by one; a runtime whose encoder takes a batch (OpenVINO) overrides this."""
        return np.concatenate([np.asarray(self._encode(x[None]), np.float32) for x in images])

    def _decode(self, features: np.ndarray, coords: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Embedding, 1xPx2 float32 coordinates (resized frame), 1xP float32 labels -> (1x4x(S/4)^2 logits, 1x4)."""
        raise NotImplementedError

    def embed(self, source: ImageSource) -> Embedding:
        """Reads an image (path, PIL image or array, see `mobilesam.io`), resizes it with PIL and embeds it."""
        return self.embed_images([source])[0]

    def embed_images(self, sources: Sequence[ImageSource]) -> list[Embedding]:
        """Embeds images in one encoder call (`_encode_batch`); the same embeddings as one at a time."""
        images = [load_image(s) for s in sources]
        resized = [np.asarray(resize_image(im, self.img_size)) for im in images]
        batch = np.concatenate([normalize_pad(r, self.img_size) for r in resized])
        features = np.asarray(self._encode_batch(batch), np.float32)
        return [
            Embedding(f[None], im.shape[:2], r.shape[:2], im, self.export)
            for f, im, r in zip(features, images, resized)
        ]

    def _decode_object(
        self, emb: Embedding, coords: np.ndarray, labels: np.ndarray, box: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """One object's prompts in original pixels -> 4 low-res logits (4xSxS) and 4 IoUs."""
        coords, labels = object_prompts(self.transform, emb.original_size, coords, labels, box, pad=False)
        n, p = len(labels), self.max_points
        if n > p:
            raise PromptError(
                f"this object needs {n} decoder points (its points, plus 2 for a box's corners) but "
                f"the exported decoder holds {p}; export again with `--max-points {n}` or more"
            )
        c = np.zeros((1, p, 2), np.float32)
        lab = np.full((1, p), -1.0, np.float32)
        c[0, :n], lab[0, :n] = coords, labels
        low_res, iou = self._decode(emb.features, c, lab)
        return np.asarray(low_res, np.float32)[0], np.asarray(iou, np.float32)[0]

    def decode(
        self,
        emb: Embedding,
        points: Any = None,
        labels: Any = None,
        bboxes: Any = None,
        multimask_output: bool = False,
    ) -> DeployResults:
        """Masks for prompts on an embedded image; prompts as in `predict`."""
        self.check_embedding(emb)
        pts, labs, boxes = checked_prompts(points, labels, bboxes, emb.original_size)
        sl = slice(1, 4) if multimask_output else slice(0, 1)  # mask 0 single-mask, 1-3 multimask
        outputs = []
        for coords, labels_i, box in each_object(pts, labs, boxes):
            low_res, iou = self._decode_object(emb, coords, labels_i, box)
            low_res = low_res[sl]
            masks = upscale_masks(low_res, self.img_size, emb.original_size, threshold=MASK_THRESHOLD)
            outputs.append((masks, iou[sl], low_res))
        return assemble(emb, outputs, {"points": pts, "labels": labs, "boxes": boxes})
