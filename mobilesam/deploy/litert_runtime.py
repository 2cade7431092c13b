"""`LiteRtPredictor`: `encoder.tflite` and `decoder.tflite` under LiteRT's interpreter (ai-edge-litert), with the
facade's prompt API.

Imports numpy, Pillow and `ai_edge_litert.interpreter` only: no PyTorch, nothing from the model code. Inputs and
outputs are found by name through each file's `serving_default` signature (the names of `interface`, which
`mobilesam export` gives them); img_size and max_points are read from the input shapes. Pre- and post-processing
are `mobilesam.deploy.runtime.StaticPredictor`'s, shared with every static-shape runtime.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..transforms import ResizeLongestSide
from .interface import DECODER_INPUTS, DECODER_OUTPUTS, ENCODER_INPUTS, ENCODER_OUTPUTS, NAMES, PATCH
from .runtime import ExportFileError, StaticPredictor, check_inputs, check_pair, check_role, loading, require_export

SIGNATURE = "serving_default"  # litert-torch's default signature name, what `get_signature_runner()` picks


def _runner(path: str | os.PathLike, threads: int | None, role: str) -> Any:
    """The file's `serving_default` signature runner, after checking its input and output names."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as e:
        raise ImportError("LiteRtPredictor needs ai-edge-litert: pip install 'mobilesam[litert]'") from e
    require_export(path, "litert")
    with loading(path, "LiteRT"):
        interpreter = Interpreter(model_path=str(path), num_threads=threads)
    signatures = interpreter.get_signature_list()
    sig = signatures.get(SIGNATURE)
    inputs, outputs = NAMES[role]
    if sig is not None:
        check_role(path, role, sorted(sig["inputs"]), {r: sorted(names[0]) for r, names in NAMES.items()})
    if sig is None or sorted(sig["inputs"]) != sorted(inputs) or sorted(sig["outputs"]) != sorted(outputs):
        raise ExportFileError(
            f"{path} has signatures {signatures}, not `{SIGNATURE}` with inputs {list(inputs)} and outputs "
            f"{list(outputs)}: it was not written by `mobilesam export --format litert`; export it again"
        )
    return interpreter.get_signature_runner(SIGNATURE)


def _shapes(runner: Any) -> dict[str, tuple[int, ...]]:
    """Input name -> shape."""
    return {name: tuple(int(n) for n in d["shape"]) for name, d in runner.get_input_details().items()}


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
        self.encoder = _runner(encoder_path, threads, "encoder")
        self.decoder = _runner(decoder_path, threads, "decoder")
        image, decoder = _shapes(self.encoder), _shapes(self.decoder)
        self.img_size = image["image"][-1]  # 1 x 3 x S x S
        embedding_side = decoder["image_embeddings"][-1]  # 1 x 256 x g x g
        self.export = check_pair(
            encoder_path, decoder_path, {"img_size": self.img_size}, {"img_size": embedding_side * PATCH}
        )
        self.max_points = decoder["point_coords"][1]  # 1 x P x 2
        check_inputs(encoder_path, "encoder", image, self.img_size, self.max_points)
        check_inputs(decoder_path, "decoder", decoder, self.img_size, self.max_points)
        self.transform = ResizeLongestSide(self.img_size)

    def _encode(self, image: np.ndarray) -> np.ndarray:
        return self.encoder(**dict(zip(ENCODER_INPUTS, [image])))[ENCODER_OUTPUTS[0]]

    def _decode(self, features: np.ndarray, coords: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self.decoder(**dict(zip(DECODER_INPUTS, (features, coords, labels))))
        low_res, iou = (out[name] for name in DECODER_OUTPUTS)
        return low_res, iou
