"""Deployment runtimes: `load_predictor` picks ONNX Runtime (`.onnx`) or ExecuTorch (`.pte`) by file suffix.

Importing this package imports numpy and Pillow only; each runtime is imported when its predictor is built, and
the export side (`export_executorch`, `StaticDecoder`, needs PyTorch) only when asked for.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import lazy_attributes
from ..exported import DeployResults, Embedding

_EXPORTS = {
    "ExecuTorchPredictor": "et_runtime",
    "StaticDecoder": "static_decoder",
    "export_executorch": "executorch",
    "xnnpack_encoder": "lowering",
}

__all__ = [
    "DeployResults",
    "Embedding",
    "ExecuTorchPredictor",
    "StaticDecoder",
    "export_executorch",
    "load_predictor",
    "xnnpack_encoder",
]

if TYPE_CHECKING:
    from .et_runtime import ExecuTorchPredictor
    from .executorch import export_executorch
    from .lowering import xnnpack_encoder
    from .static_decoder import StaticDecoder

SUFFIXES = {".onnx": "onnx", ".pte": "executorch"}


def load_predictor(encoder_path: str | os.PathLike, decoder_path: str | os.PathLike, **kwargs: Any) -> Any:
    """The predictor for an exported encoder and decoder, chosen by their suffix.

    Args:
        encoder_path: `encoder.onnx` / `encoder.pte` (or their `_int8` versions).
        decoder_path: the decoder file of the same export and format.
        **kwargs: passed to the predictor (`threads`; for ONNX also `providers`, `spin`).

    Returns:
        `mobilesam.onnx.OnnxPredictor` for `.onnx` files, `ExecuTorchPredictor` for `.pte` files; both have
        `predict`, `embed` and `decode` with the facade's prompt nesting.
    """
    kinds = {SUFFIXES.get(Path(p).suffix.lower()) for p in (encoder_path, decoder_path)}
    if len(kinds) != 1 or None in kinds:
        raise ValueError(
            f"cannot pick a runtime for {encoder_path} and {decoder_path}: both must end in one of "
            f"{sorted(SUFFIXES)} (the encoder and decoder of one export)"
        )
    if kinds == {"onnx"}:
        from ..onnx.runtime import OnnxPredictor

        return OnnxPredictor(encoder_path, decoder_path, **kwargs)
    from .et_runtime import ExecuTorchPredictor

    return ExecuTorchPredictor(encoder_path, decoder_path, **kwargs)


__getattr__ = lazy_attributes(__name__, _EXPORTS)
