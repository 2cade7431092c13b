"""Deployment runtimes: `load_predictor` picks the runtime by file suffix (`.onnx` ONNX Runtime, `.pte`
ExecuTorch, `.xml` OpenVINO, `.tflite` LiteRT, `.mlpackage` Core ML).

Importing this package imports numpy and Pillow only; each runtime is imported when its predictor is built, and
the export side (`export_executorch`, `StaticDecoder`, the writers in `mobilesam.deploy.formats`; they need
PyTorch) only when asked for.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import lazy_attributes
from ..exported import DeployResults, Embedding

_EXPORTS = {
    "ExecuTorchPredictor": "et_runtime",
    "OpenVinoPredictor": "ov_runtime",
    "LiteRtPredictor": "litert_runtime",
    "CoreMLPredictor": "coreml_runtime",
    "StaticDecoder": "static_decoder",
    "export_executorch": "executorch",
    "xnnpack_encoder": "lowering",
}

__all__ = [
    "CoreMLPredictor",
    "DeployResults",
    "Embedding",
    "ExecuTorchPredictor",
    "LiteRtPredictor",
    "OpenVinoPredictor",
    "StaticDecoder",
    "export_executorch",
    "load_predictor",
    "xnnpack_encoder",
]

if TYPE_CHECKING:
    from .coreml_runtime import CoreMLPredictor
    from .et_runtime import ExecuTorchPredictor
    from .executorch import export_executorch
    from .litert_runtime import LiteRtPredictor
    from .lowering import xnnpack_encoder
    from .ov_runtime import OpenVinoPredictor
    from .static_decoder import StaticDecoder

# suffix -> (runtime name, module, predictor class)
SUFFIXES = {
    ".onnx": ("ONNX Runtime", "mobilesam.onnx.runtime", "OnnxPredictor"),
    ".pte": ("ExecuTorch", "mobilesam.deploy.et_runtime", "ExecuTorchPredictor"),
    ".xml": ("OpenVINO", "mobilesam.deploy.ov_runtime", "OpenVinoPredictor"),
    ".tflite": ("LiteRT", "mobilesam.deploy.litert_runtime", "LiteRtPredictor"),
    ".mlpackage": ("Core ML", "mobilesam.deploy.coreml_runtime", "CoreMLPredictor"),
}


def load_predictor(encoder_path: str | os.PathLike, decoder_path: str | os.PathLike, **kwargs: Any) -> Any:
    """The predictor for an exported encoder and decoder, chosen by their suffix.

    Args:
        encoder_path: `encoder.onnx`, `encoder.pte`, `encoder.xml`, `encoder.tflite` or `encoder.mlpackage` (or
            their `_fp16` / `_int8` versions).
        decoder_path: the decoder file of the same export and format.
        **kwargs: passed to the predictor (`threads`; for ONNX also `providers`, `spin`).

    Returns:
        A predictor with `predict`, `embed` and `decode` and the facade's prompt nesting: `OnnxPredictor`,
        `ExecuTorchPredictor`, `OpenVinoPredictor`, `LiteRtPredictor` or `CoreMLPredictor`.
    """
    kinds = {Path(p).suffix.lower() for p in (encoder_path, decoder_path)}
    if len(kinds) != 1 or not kinds <= SUFFIXES.keys():
        raise ValueError(
            f"cannot pick a runtime for {encoder_path} and {decoder_path}: both must end in one of "
            f"{sorted(SUFFIXES)} (the encoder and decoder of one export)"
        )
    (suffix,) = kinds
    runtime, module, cls = SUFFIXES[suffix]
    if suffix == ".mlpackage" and sys.platform != "darwin":
        raise RuntimeError(
            f"Core ML models run on macOS and iOS only (this is {sys.platform}): copy {encoder_path} and "
            f"{decoder_path} to a Mac, or export another format here (--format onnx, executorch, openvino, tflite)"
        )
    return getattr(importlib.import_module(module), cls)(encoder_path, decoder_path, **kwargs)


__getattr__ = lazy_attributes(__name__, _EXPORTS)
