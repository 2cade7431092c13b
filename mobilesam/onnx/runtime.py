"""`OnnxPredictor`: the exported encoder and decoder under ONNX Runtime, with the `SAM` facade's prompt API.

Needs numpy, Pillow and onnxruntime only: nothing here (nor in the modules it imports) imports PyTorch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from ..io import ImageSource, load_image
from ..prompts import PromptError, check_inside, parse_prompts
from ..transforms import ResizeLongestSide, resize_image
from ..viz import overlay, save_picture

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
class OnnxResults:
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


def _session(path: str | os.PathLike, threads: int | None, providers: Sequence[str] | None, spin: bool) -> Any:
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ImportError("OnnxPredictor needs onnxruntime: pip install 'mobilesam[onnx]'") from e
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} does not exist; write it with `mobilesam export CHECKPOINT --out DIR --onnx`")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    if not spin:  # idle threads sleep instead of busy-waiting for the next run, leaving the cores to other work
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=list(providers or ["CPUExecutionProvider"]))


def _img_size(session: Any, path: str | os.PathLike) -> int:
    meta = session.get_modelmeta().custom_metadata_map
    if "img_size" not in meta:
        raise ValueError(
            f"{path} carries no img_size in its metadata: it was not written by `mobilesam export`; export it again"
        )
    return int(meta["img_size"])


class OnnxPredictor:
    """Segments prompted objects with `encoder.onnx` and `decoder.onnx`, like `SAM(...).predict`.

    Args:
        encoder_path: the encoder graph (`encoder.onnx` or `encoder_int8.onnx`).
        decoder_path: the decoder graph (`decoder.onnx` or `decoder_int8.onnx`).
        threads: ONNX Runtime's intra-op threads (None: its default, all cores).
        providers: ONNX Runtime execution providers (default CPU).
        spin: let ONNX Runtime's idle threads busy-wait for the next run (its default; faster back-to-back runs,
            but the spinning takes the cores from PyTorch or other work in the same process). Off by default.
    """

    def __init__(
        self,
        encoder_path: str | os.PathLike,
        decoder_path: str | os.PathLike,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        spin: bool = False,
    ) -> None:
        self.encoder = _session(encoder_path, threads, providers, spin)
        self.decoder = _session(decoder_path, threads, providers, spin)
        self.img_size = _img_size(self.encoder, encoder_path)
        decoder_size = _img_size(self.decoder, decoder_path)
        if decoder_size != self.img_size:
            raise ValueError(
                f"{encoder_path} expects img_size={self.img_size} but {decoder_path} was exported for "
                f"img_size={decoder_size}; use the two files of one export"
            )
        self.num_masks = int(self.decoder.get_modelmeta().custom_metadata_map.get("num_masks", 4))
        self.transform = ResizeLongestSide(self.img_size)

    def embed(self, source: ImageSource) -> Embedding:
        """Reads an image (path, PIL image or array, see `mobilesam.io`), resizes it with PIL and embeds it."""
        image = load_image(source)
        resized = np.asarray(resize_image(image, self.img_size))
        (features,) = self.encoder.run(None, {"image": resized})
        return Embedding(features, image.shape[:2], resized.shape[:2], image)

    def _decode_object(
        self, emb: Embedding, coords: np.ndarray, labels: np.ndarray, box: np.ndarray | None
    ) -> list[np.ndarray]:
        """One object's prompts in original pixels -> the decoder's masks, IoUs and low-res logits."""
        coords = self.transform.apply_coords(coords, emb.original_size)
        if box is not None:  # the box's corners are two more points, labels 2 and 3
            coords = np.concatenate([coords, self.transform.apply_boxes(box[None], emb.original_size).reshape(2, 2)])
            labels = np.concatenate([labels, [2, 3]])
        else:  # without a box SAM appends a padding point, label -1
            coords = np.concatenate([coords, np.zeros((1, 2))])
            labels = np.concatenate([labels, [-1]])
        g = 4 * emb.features.shape[-1]
        feeds = {
            "image_embeddings": emb.features,
            "point_coords": coords[None].astype(np.float32),
            "point_labels": labels[None].astype(np.float32),
            "mask_input": np.zeros((1, 1, g, g), np.float32),
            "has_mask_input": np.zeros(1, np.float32),
            "orig_im_size": np.array(emb.original_size, np.float32),
        }
        return self.decoder.run(None, feeds)

    def decode(
        self,
        emb: Embedding,
        points: Any = None,
        labels: Any = None,
        bboxes: Any = None,
        multimask_output: bool = False,
    ) -> OnnxResults:
        """Masks for prompts on an embedded image; prompts as in `predict`."""
        pts, labs, boxes = parse_prompts(points, labels, bboxes)
        if pts is None and boxes is None:
            raise PromptError("pass points or bboxes: segment-everything is not part of the ONNX predictor")
        if pts is not None:
            check_inside(pts, emb.original_size, "point")
        if boxes is not None:
            check_inside(boxes.reshape(-1, 2), emb.original_size, "box corner")
        if multimask_output and self.num_masks == 1:
            raise ValueError("this decoder was exported with --single-mask; export without it for multimask output")
        # Mask 0 is the single-mask output, 1-3 the multimask outputs; a single-mask decoder has chosen already
        sl = slice(0, 1) if self.num_masks == 1 or not multimask_output else slice(1, 4)
        n = len(pts) if pts is not None else len(boxes)
        masks, scores, low_res = [], [], []
        for i in range(n):
            coords = pts[i] if pts is not None else np.zeros((0, 2))
            labels_i = labs[i] if labs is not None else np.zeros(0, np.int64)
            m, s, lr = self._decode_object(emb, coords, labels_i, boxes[i] if boxes is not None else None)
            masks.append(m[0, sl] > MASK_THRESHOLD)
            scores.append(s[0, sl])
            low_res.append(lr[0, sl])
        all_masks = np.concatenate(masks)
        return OnnxResults(
            orig_img=emb.image,
            masks=all_masks,
            scores=np.concatenate(scores),
            boxes=masks_to_boxes_np(all_masks),
            low_res_logits=np.concatenate(low_res),
            prompts={"points": pts, "labels": labs, "boxes": boxes},
        )

    def predict(
        self,
        source: ImageSource | Sequence[ImageSource],
        points: Any = None,
        labels: Any = None,
        bboxes: Any = None,
        multimask_output: bool = False,
    ) -> list[OnnxResults]:
        """Segments the prompted objects in one image or a list of images, as `mobilesam.SAM.predict`.

        `source` is a path, PIL image, HxWx3 uint8 array, or a list of them; prompts are in original pixels, nested
        as Ultralytics nests them (see the README). Returns one `OnnxResults` per image.
        """
        sources = list(source) if isinstance(source, (list, tuple)) else [source]
        results = []
        for s in sources:
            r = self.decode(self.embed(s), points, labels, bboxes, multimask_output)
            r.path = str(s) if isinstance(s, (str, os.PathLike)) else None
            results.append(r)
        return results
