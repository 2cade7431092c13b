"""The deploy wing: every export format (`formats.FORMATS`: ONNX, ExecuTorch, OpenVINO, LiteRT, Core ML), its writer
and its runtime predictor; `load_predictor` picks the runtime by the files' suffix.

Importing this package imports numpy and Pillow only; each runtime is imported when its predictor is built, and
the export side (`export_onnx`, `export_executorch`, `StaticDecoder`, the writers named in `formats.FORMATS`; they
need PyTorch) only when asked for.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import lazy_attributes
from .formats import FORMATS, by_suffix
from .runtime import DeployResults, Embedding, ExportFileError

_EXPORTS = {
    "OnnxPredictor": "onnx_runtime",
    "ExecuTorchPredictor": "et_runtime",
    "OpenVinoPredictor": "ov_runtime",
    "LiteRtPredictor": "litert_runtime",
    "CoreMLPredictor": "coreml_runtime",
    "StaticDecoder": "static_decoder",
    "export_onnx": "onnx_export",
    "export_executorch": "executorch",
    "xnnpack_encoder": "lowering",
}

__all__ = [
    "FORMATS",
    "CoreMLPredictor",
    "DeployResults",
    "Embedding",
    "ExportFileError",
    "ExecuTorchPredictor",
    "LiteRtPredictor",
    "OnnxPredictor",
    "OpenVinoPredictor",
    "StaticDecoder",
    "export_executorch",
    "export_onnx",
    "load_predictor",
    "xnnpack_encoder",
]

if TYPE_CHECKING:
    from .coreml_runtime import CoreMLPredictor
    from .et_runtime import ExecuTorchPredictor
    from .executorch import export_executorch
    from .litert_runtime import LiteRtPredictor
    from .lowering import xnnpack_encoder
    from .onnx_export import export_onnx
    from .onnx_runtime import OnnxPredictor
    from .ov_runtime import OpenVinoPredictor
    from .static_decoder import StaticDecoder


def load_predictor(encoder_path: str | os.PathLike, decoder_path: str | os.PathLike, **kwargs: Any) -> Any:
    """The predictor for an exported encoder and decoder, chosen by their suffix (`formats.FORMATS`).

    Args:
        encoder_path: `encoder.onnx`, `encoder.pte`, `encoder.xml`, `encoder.tflite` or `encoder.mlpackage` (or
            their `_fp16` / `_int8` versions): the graph suffix of a format of `FORMATS`.
        decoder_path: the decoder file of the same export and format.
        **kwargs: passed to the predictor (`threads`; for ONNX also `providers`, `spin`).

    Returns:
        A predictor with `predict`, `embed` and `decode` and the facade's prompt nesting: the format's runtime
        predictor (`OnnxPredictor`, `ExecuTorchPredictor`, `OpenVinoPredictor`, `LiteRtPredictor`, ...).

    Raises:
        ValueError: the suffixes differ or belong to no format. ExportFileError (a ValueError): a file is a folder,
            empty, truncated, not a SAM graph, the other role, of another export than its partner, or changed since
            export (its sidecar's sha256). RuntimeError: the format's runtime does not run on
            this platform (Core ML off macOS).
    """
    for p in (encoder_path, decoder_path):
        if Path(p).is_dir() and by_suffix(Path(p).suffix) is None:  # a folder, not a `.mlpackage`
            graphs = sorted(str(g) for f in FORMATS.values() if f.predictor for g in Path(p).glob(f"*coder*{f.suffix}"))
            raise ExportFileError(
                f"{p} is a folder, not an exported graph: pass the encoder and the decoder files inside it"
                + (f" (it holds {', '.join(graphs)})" if graphs else "")
            )
    kinds = {by_suffix(Path(p).suffix) for p in (encoder_path, decoder_path)}
    if len(kinds) != 1 or None in kinds:
        raise ValueError(
            f"cannot pick a runtime for {encoder_path} and {decoder_path}: both must end in one of "
            f"{sorted(f.suffix for f in FORMATS.values())} (the encoder and decoder of one export)"
        )
    (fmt,) = kinds
    fmt.require_platform(encoder_path, decoder_path)
    return fmt.predictor_class()(encoder_path, decoder_path, **kwargs)


__getattr__ = lazy_attributes(__name__, _EXPORTS)
