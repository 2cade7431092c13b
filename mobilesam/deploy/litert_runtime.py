"""`LiteRtPredictor`: `encoder.tflite` and `decoder.tflite` under LiteRT's interpreter (ai-edge-litert), with the
facade's prompt API.

Imports numpy, Pillow and `ai_edge_litert.interpreter` only: no PyTorch, nothing from the model code. Inputs and
outputs are found by name through each file's `serving_default` signature (the names `mobilesam export` gives
them); img_size and max_points are read from the input shapes. Pre- and post-processing are
`mobilesam.exported.StaticPredictor`'s, shared with every static-shape runtime.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..exported import StaticPredictor, require_export
from ..transforms import ResizeLongestSide

SIGNATURE = "serving_default"
ENCODER_INPUTS = ("image",)
ENCODER_OUTPUTS = ("image_embeddings",)
DECODER_INPUTS = ("image_embeddings", "point_coords", "point_labels")
DECODER_OUTPUTS = ("low_res_masks", "iou_predictions")


def _runner(path: str | os.PathLike, threads: int | None, inputs: tuple[str, ...], outputs: tuple[str, ...]) -> Any:
    """The file's `serving_default` signature runner, after checking its input and output names."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as e:
        raise ImportError("LiteRtPredictor needs ai-edge-litert: pip install 'mobilesam[litert]'") from e
    require_export(path, "tflite")
    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    signatures = interpreter.get_signature_list()
    sig = signatures.get(SIGNATURE)
    if sig is None or sorted(sig["inputs"]) != sorted(inputs) or sorted(sig["outputs"]) != sorted(outputs):
        raise ValueError(
            f"{path} has signatures {signatures}, not `{SIGNATURE}` with inputs {list(inputs)} and outputs "
            f"{list(outputs)}: it was not written by `mobilesam export --format tflite`; export it again"
        )
    return interpreter.get_signature_runner(SIGNATURE)


def _shape(runner: Any, name: str) -> tuple[int, ...]:
    return tuple(int(n) for n in runner.get_input_details()[name]["shape"])


class LiteRtPredictor(StaticPredictor):
    """Segments prompted objects with `encoder.tflite` and `decoder.tflite`, like `SAM(...).predict`.

    Args:
        encoder_path: the encoder (`encoder.tflite` or `encoder_fp16.tflite`).
        decoder_path: the decoder of the same export (`decoder.tflite` or `decoder_fp16.tflite`).
        threads: the interpreter's CPU threads (`Interpreter(num_threads=...)`; None: LiteRT's default).
    """

    def __init__(
        self, encoder_path: str | os.PathLike, decoder_path: str | os.PathLike, threads: int | None = None
    ) -> None:
        self.encoder = _runner(encoder_path, threads, ENCODER_INPUTS, ENCODER_OUTPUTS)
        self.decoder = _runner(decoder_path, threads, DECODER_INPUTS, DECODER_OUTPUTS)
        image = _shape(self.encoder, "image")  # 1 x 3 x S x S
        embeddings = _shape(self.decoder, "image_embeddings")  # 1 x 256 x g x g
        coords = _shape(self.decoder, "point_coords")  # 1 x P x 2
        if len(image) != 4 or image[:2] != (1, 3) or image[2] != image[3]:
            raise ValueError(f"{encoder_path} takes an image of shape {image}, not 1x3xSxS: export it again")
        if len(embeddings) != 4 or len(coords) != 3:
            raise ValueError(f"{decoder_path} takes {embeddings} embeddings and {coords} points: export it again")
        self.img_size = image[2]
        decoder_size = embeddings[-1] * 16
        if decoder_size != self.img_size:
            raise ValueError(
                f"{encoder_path} expects img_size={self.img_size} but {decoder_path} was exported for "
                f"img_size={decoder_size}; use the two files of one export"
            )
        self.max_points = coords[1]
        self.transform = ResizeLongestSide(self.img_size)

    def _encode(self, image: np.ndarray) -> np.ndarray:
        return self.encoder(image=image)["image_embeddings"]

    def _decode(self, features: np.ndarray, coords: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self.decoder(image_embeddings=features, point_coords=coords, point_labels=labels)
        return out["low_res_masks"], out["iou_predictions"]
