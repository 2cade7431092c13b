"""Numpy pre- and post-processing shared by the runtime predictors (ONNX Runtime, ExecuTorch, OpenVINO, LiteRT,
Core ML): no PyTorch. `StaticPredictor` is the whole predictor for the static-shape graphs (a normalised padded
image in, the `StaticDecoder` interface), each runtime adding only how it runs one graph.

Prompt parsing and checks come from `mobilesam.prompts` (the facade's), the resize rule from
`mobilesam.transforms`, so every predictor refuses and maps prompts exactly as `SAM.predict` does.
"""

from __future__ import annotations

import functools
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


SMALL_PRODUCT = 1 << 17  # rows x taps x columns of one block product: OpenBLAS runs one this small on one thread
LAST_PASS_FLOATS = 1 << 18  # floats of the last pass held at once (1 MiB: it stays in the cache)


class Banded(NamedTuple):
    """One axis of SAM's mask resize as a banded matrix in blocks of `rows` outputs: block b is
    `weights[b] @ x[taps[b]]` (x: the input samples along that axis, first)."""

    weights: np.ndarray  # B x rows x K float32; rows past the output size are zero
    taps: np.ndarray  # B x K indices of the K consecutive input samples block b reads
    used: int  # input samples any output reads (the rest lie in the padding)


@functools.lru_cache(maxsize=32)
def _banded(low: int, img_size: int, crop: int, out: int, columns: int) -> Banded:
    """SAM's resize of one axis (`low` samples upscaled to `img_size`, the first `crop` kept, resized to `out`) as
    the product of its two interpolation matrices, with PyTorch's float32 taps and weights (composed in float64),
    cut into row blocks whose product with `columns` columns stays small (`SMALL_PRODUCT`)."""
    i0, i1, f = _taps(low, img_size, crop)
    first = np.zeros((crop, low))
    np.add.at(first, (np.arange(crop), i0), 1 - f.astype(np.float64))
    np.add.at(first, (np.arange(crop), i1), f.astype(np.float64))
    j0, j1, g = _taps(crop, out, out)
    g = g.astype(np.float64)[:, None]
    matrix = (1 - g) * first[j0] + g * first[j1]  # out x low, each row a convex combination of a few samples
    nonzero = matrix != 0
    lo, hi = nonzero.argmax(1), low - nonzero[:, ::-1].argmax(1)  # each output's band [lo, hi)
    used = int(hi.max())
    rows = 64
    while True:
        k = max(int(hi[r : r + rows].max() - lo[r : r + rows].min()) for r in range(0, out, rows))
        if rows == 1 or rows * k * columns <= SMALL_PRODUCT:
            break
        rows //= 2
    starts = np.minimum([lo[r : r + rows].min() for r in range(0, out, rows)], used - k)
    weights = np.zeros((len(starts) * rows, k), np.float32)
    for b, start in enumerate(starts):
        block = matrix[b * rows : (b + 1) * rows, start : start + k]
        weights[b * rows : b * rows + len(block)] = block
    return Banded(weights.reshape(len(starts), rows, k), starts[:, None] + np.arange(k), used)


def upscale_masks(
    low_res: np.ndarray, img_size: int, original_size: tuple[int, int], threshold: float | None = None
) -> np.ndarray:
    """MxSxS low-resolution logits of the padded frame -> MxHxW logits at the original size, or with a
    `threshold` the MxHxW bool masks `logits > threshold`.

    SAM's postprocessing (upscale to img_size, remove the padding, upscale to (H, W)) is linear and separable:
    along each axis one banded matrix (`_banded`; an output reads at most a few consecutive low-resolution
    samples). It runs as block matrix products, along the width on the low-resolution rows, then along the height
    to the full size, a cache-sized slab at a time that is thresholded before the next (no full-size float array
    with a `threshold`). The logits equal PyTorch's two `F.interpolate` calls up to float rounding (the weights are
    composed); the masks are exactly these logits `> threshold`. Each product is small enough for BLAS to run on
    the calling thread (`SMALL_PRODUCT`): a thread pool per tiny product costs more than it saves on a busy machine.
    """
    out_h, out_w = original_size
    h, w = preprocess_shape(out_h, out_w, img_size)
    m, s = low_res.shape[0], low_res.shape[-1]
    rows = _banded(s, img_size, h, out_h, out_w)
    cols = _banded(s, img_size, w, out_w, m * rows.used)
    x = np.asarray(low_res[:, : rows.used, : cols.used], np.float32)
    # Along the width: (W x K blocks) @ (the used columns x M*rows), then back to M x rows x W
    xt = np.ascontiguousarray(x.transpose(2, 0, 1)).reshape(cols.used, -1)
    yt = np.matmul(cols.weights, xt[cols.taps]).reshape(-1, m, rows.used)[:out_w]
    y = np.ascontiguousarray(yt.transpose(1, 2, 0))  # M x rows x W
    # Along the height, `step` blocks of output rows at a time
    out = np.empty((m, out_h, out_w), np.float32 if threshold is None else np.bool_)
    blocks, r, _ = rows.weights.shape
    step = max(1, LAST_PASS_FLOATS // (r * out_w))
    slab = np.empty((step, r, out_w), np.float32)
    for i in range(m):
        for b in range(0, blocks, step):
            e = min(blocks, b + step)
            r0, r1 = b * r, min(out_h, e * r)
            part = np.matmul(rows.weights[b:e], y[i][rows.taps[b:e]], out=slab[: e - b]).reshape(-1, out_w)
            if threshold is None:
                out[i, r0:r1] = part[: r1 - r0]
            else:
                np.greater(part[: r1 - r0], threshold, out=out[i, r0:r1])
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
