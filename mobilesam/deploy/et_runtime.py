"""`ExecuTorchPredictor`: `encoder.pte` and `decoder.pte` under ExecuTorch's runtime, with the facade's prompt API.

Imports numpy, Pillow and ExecuTorch's Python runtime (which brings PyTorch's tensors with it); nothing from the
model code. Pre- and post-processing are `mobilesam.exported`'s, shared with `OnnxPredictor`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..exported import (
    DeployResults,
    Embedding,
    RuntimePredictor,
    assemble,
    checked_prompts,
    normalize_pad,
    object_prompts,
    upscale_masks,
)
from ..io import ImageSource, load_image
from ..prompts import PromptError
from ..transforms import ResizeLongestSide, resize_image


def _program(path: str | os.PathLike) -> Any:
    try:
        from executorch.runtime import Runtime
    except ImportError as e:
        raise ImportError("ExecuTorchPredictor needs executorch: pip install 'mobilesam[executorch]'") from e
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"{path} does not exist; write it with `mobilesam export CHECKPOINT --out DIR --format executorch`"
        )
    return Runtime.get().load_program(Path(path))


def _constant(program: Any, name: str, path: str | os.PathLike) -> int:
    if name not in program.method_names:
        raise ValueError(f"{path} has no `{name}` method: it was not written by `mobilesam export`; export it again")
    return int(program.load_method(name).execute([])[0])


class ExecuTorchPredictor(RuntimePredictor):
    """Segments prompted objects with `encoder.pte` and `decoder.pte`, like `SAM(...).predict`.

    Args:
        encoder_path: the encoder program (`encoder.pte` or `encoder_int8.pte`).
        decoder_path: the decoder program (`decoder.pte` or `decoder_int8.pte`).
        threads: XNNPACK's thread pool size (None: ExecuTorch's default; the pool is shared by the process).
    """

    def __init__(
        self, encoder_path: str | os.PathLike, decoder_path: str | os.PathLike, threads: int | None = None
    ) -> None:
        import torch  # ExecuTorch's Python runtime takes and returns torch tensors

        self._torch = torch
        if threads:
            from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

            _unsafe_reset_threadpool(threads)
        enc, dec = _program(encoder_path), _program(decoder_path)
        self.img_size = _constant(enc, "img_size", encoder_path)
        decoder_size = _constant(dec, "img_size", decoder_path)
        if decoder_size != self.img_size:
            raise ValueError(
                f"{encoder_path} expects img_size={self.img_size} but {decoder_path} was exported for "
                f"img_size={decoder_size}; use the two files of one export"
            )
        self.max_points = _constant(dec, "max_points", decoder_path)
        self.encoder = enc.load_method("forward")
        self.decoder = dec.load_method("forward")
        self.transform = ResizeLongestSide(self.img_size)

    def embed(self, source: ImageSource) -> Embedding:
        """Reads an image (path, PIL image or array, see `mobilesam.io`), resizes it with PIL and embeds it."""
        image = load_image(source)
        resized = np.asarray(resize_image(image, self.img_size))
        x = self._torch.from_numpy(normalize_pad(resized, self.img_size))
        (features,) = self.encoder.execute([x])
        return Embedding(features.numpy(), image.shape[:2], resized.shape[:2], image)

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
        t = self._torch.from_numpy
        low_res, iou = self.decoder.execute([t(emb.features), t(c), t(lab)])
        return low_res.numpy()[0], iou.numpy()[0]

    def decode(
        self,
        emb: Embedding,
        points: Any = None,
        labels: Any = None,
        bboxes: Any = None,
        multimask_output: bool = False,
    ) -> DeployResults:
        """Masks for prompts on an embedded image; prompts as in `predict`."""
        pts, labs, boxes = checked_prompts(points, labels, bboxes, emb.original_size)
        sl = slice(1, 4) if multimask_output else slice(0, 1)  # mask 0 single-mask, 1-3 multimask
        n = len(pts) if pts is not None else len(boxes)
        outputs = []
        for i in range(n):
            coords = pts[i] if pts is not None else np.zeros((0, 2))
            labels_i = labs[i] if labs is not None else np.zeros(0, np.int64)
            low_res, iou = self._decode_object(emb, coords, labels_i, boxes[i] if boxes is not None else None)
            low_res = low_res[sl]
            outputs.append((upscale_masks(low_res, self.img_size, emb.original_size), iou[sl], low_res))
        return assemble(emb, outputs, {"points": pts, "labels": labs, "boxes": boxes})
