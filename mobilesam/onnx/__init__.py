"""ONNX deployment: `OnnxPredictor` runs the exported graphs with onnxruntime alone (no PyTorch); `export_onnx`
writes them from a model (needs PyTorch and onnxscript, imported on first use)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import lazy_attributes
from .runtime import Embedding, OnnxPredictor, OnnxResults

# Exporting needs torch: these names import `mobilesam.onnx.graphs` / `.export` only when asked for
_EXPORT_NAMES = {
    "export_onnx": "export",
    "quantize_int8": "export",
    "export_encoder": "graphs",
    "export_decoder": "graphs",
    "EncoderGraph": "graphs",
    "DecoderGraph": "graphs",
}

__all__ = [
    "DecoderGraph",
    "Embedding",
    "EncoderGraph",
    "OnnxPredictor",
    "OnnxResults",
    "export_decoder",
    "export_encoder",
    "export_onnx",
    "quantize_int8",
]

if TYPE_CHECKING:
    from .export import export_onnx, quantize_int8
    from .graphs import DecoderGraph, EncoderGraph, export_decoder, export_encoder


__getattr__ = lazy_attributes(__name__, _EXPORT_NAMES)
