"""`OnnxPredictor`: the exported encoder and decoder under ONNX Runtime, with the `SAM` facade's prompt API.

Needs numpy, Pillow and onnxruntime only: nothing here (nor in the modules it imports) imports PyTorch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..io import ImageSource, load_image
from ..transforms import ResizeLongestSide, resize_image
from .interface import ONNX_DECODER_INPUTS, ONNX_ENCODER_INPUTS
from .runtime import (
    DeployResults,
    Embedding,
    ExportFileError,
    RuntimePredictor,
    assemble,
    check_pair,
    check_role,
    checked_prompts,
    each_object,
    loading,
    object_prompts,
    require_export,
)

OnnxResults = DeployResults  # the name this module has always exported


def _session(path: str | os.PathLike, threads: int | None, providers: Sequence[str] | None, spin: bool) -> Any:
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ImportError("OnnxPredictor needs onnxruntime: pip install 'mobilesam[onnx]'") from e
    require_export(path, "onnx")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    if not spin:  # idle threads sleep instead of busy-waiting for the next run, leaving the cores to other work
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    with loading(path, "ONNX Runtime"):
        return ort.InferenceSession(str(path), options, providers=list(providers or ["CPUExecutionProvider"]))


def _img_size(session: Any, path: str | os.PathLike) -> int:
    meta = session.get_modelmeta().custom_metadata_map
    if "img_size" not in meta:
        raise ExportFileError(
            f"{path} carries no img_size in its metadata: it was not written by `mobilesam export`; export it again"
        )
    return int(meta["img_size"])


class OnnxPredictor(RuntimePredictor):
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
        roles = {"encoder": list(ONNX_ENCODER_INPUTS), "decoder": list(ONNX_DECODER_INPUTS)}
        for path, session, role in ((encoder_path, self.encoder, "encoder"), (decoder_path, self.decoder, "decoder")):
            check_role(path, role, [i.name for i in session.get_inputs()], roles)
        self.img_size = _img_size(self.encoder, encoder_path)
        self.export = check_pair(
            encoder_path, decoder_path, {"img_size": self.img_size}, {"img_size": _img_size(self.decoder, decoder_path)}
        )
        self.num_masks = int(self.decoder.get_modelmeta().custom_metadata_map.get("num_masks", 4))
        self.transform = ResizeLongestSide(self.img_size)

    def embed(self, source: ImageSource) -> Embedding:
        """Reads an image (path, PIL image or array, see `mobilesam.io`), resizes it with PIL and embeds it."""
        image = load_image(source)
        resized = np.asarray(resize_image(image, self.img_size))
        (features,) = self.encoder.run(None, dict(zip(ONNX_ENCODER_INPUTS, [resized])))
        return Embedding(features, image.shape[:2], resized.shape[:2], image, self.export)

    def _decode_object(
        self, emb: Embedding, coords: np.ndarray, labels: np.ndarray, box: np.ndarray | None
    ) -> list[np.ndarray]:
        """One object's prompts in original pixels -> the decoder's masks, IoUs and low-res logits."""
        coords, labels = object_prompts(self.transform, emb.original_size, coords, labels, box)
        g = 4 * emb.features.shape[-1]
        feeds = (
            emb.features,
            coords[None],
            labels[None],
            np.zeros((1, 1, g, g), np.float32),  # no mask input
            np.zeros(1, np.float32),
            np.array(emb.original_size, np.float32),
        )
        return self.decoder.run(None, dict(zip(ONNX_DECODER_INPUTS, feeds, strict=True)))

    def decode(
        self,
        emb: Embedding,
        points: Any = None,
        labels: Any = None,
        bboxes: Any = None,
        multimask_output: bool = False,
    ) -> OnnxResults:
        """Masks for prompts on an embedded image; prompts as in `predict`."""
        self.check_embedding(emb)
        pts, labs, boxes = checked_prompts(points, labels, bboxes, emb.original_size)
        if multimask_output and self.num_masks == 1:
            raise ValueError("this decoder was exported with --single-mask; export without it for multimask output")
        # Mask 0 is the single-mask output, 1-3 the multimask outputs; a single-mask decoder has chosen already
        sl = slice(0, 1) if self.num_masks == 1 or not multimask_output else slice(1, 4)
        outputs = []
        for coords, labels_i, box in each_object(pts, labs, boxes):
            m, s, lr = self._decode_object(emb, coords, labels_i, box)
            outputs.append((m[0, sl], s[0, sl], lr[0, sl]))
        return assemble(emb, outputs, {"points": pts, "labels": labs, "boxes": boxes})
