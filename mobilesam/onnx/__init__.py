"""Old import path of the ONNX deployment, now in the deploy wing: `OnnxPredictor` (`mobilesam.deploy.onnx_runtime`)
runs the exported graphs with onnxruntime alone; `export_onnx` (`mobilesam.deploy.onnx_export`) writes them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import lazy_attributes
from ..deploy.onnx_runtime import Embedding, OnnxPredictor, OnnxResults

# Exporting needs torch: these names import `mobilesam.deploy.onnx_graphs` / `.onnx_export` only when asked for
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
    from ..deploy.onnx_export import export_onnx, quantize_int8
    from ..deploy.onnx_graphs import DecoderGraph, EncoderGraph, export_decoder, export_encoder


__getattr__ = lazy_attributes(__name__, _EXPORT_NAMES)
