"""Writing the ONNX files of a model: float encoder and decoder, and their dynamic int8 versions."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from ..modeling import Sam
from .graphs import DEFAULT_OPSET, export_decoder, export_encoder

ONNX_NAMES = {
    "encoder": "encoder.onnx",
    "decoder": "decoder.onnx",
    "encoder_int8": "encoder_int8.onnx",
    "decoder_int8": "decoder_int8.onnx",
}


def quantize_int8(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Dynamic int8 quantisation of an ONNX file (weights int8 ahead of time, activations at run time).

    MatMul and Gemm weights are quantised; convolutions stay float (quantised too, as ConvInteger, they made
    TinyViT's encoder no faster with uint8 weights and slower with int8 ones on CPU). Metadata is carried over.
    """
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as e:
        raise ImportError("int8 quantisation needs onnxruntime: pip install 'mobilesam[onnx]'") from e
    dst = Path(dst)
    with tempfile.TemporaryDirectory(prefix=f".{dst.name}.", dir=dst.parent) as tmp:
        staged = Path(tmp) / dst.name
        quantize_dynamic(src, staged, op_types_to_quantize=["MatMul", "Gemm"], weight_type=QuantType.QInt8)
        os.replace(staged, dst)
    return dst


def export_onnx(
    model: Sam,
    out_dir: str | os.PathLike,
    opset: int = DEFAULT_OPSET,
    quantize: bool = False,
    single_mask: bool = False,
    stamp: Mapping[str, object] = (),
) -> dict[str, Path]:
    """Writes `encoder.onnx` and `decoder.onnx` (and with `quantize` their `_int8` versions) into `out_dir`.

    Args:
        model: the SAM model (any variant, any img_size); every file records its img_size in its metadata.
        out_dir: output folder.
        opset: ONNX opset version.
        quantize: also write the dynamic int8 versions.
        single_mask: the decoder picks one mask (see `DecoderGraph`).
        stamp: extra metadata for every file (variant, source checksum, version).

    Returns:
        Role ("encoder", "decoder", "encoder_int8", "decoder_int8") -> path.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"encoder": export_encoder(model, out / ONNX_NAMES["encoder"], opset, stamp)}
    paths["decoder"] = export_decoder(model, out / ONNX_NAMES["decoder"], opset, stamp, single_mask=single_mask)
    if quantize:
        for role in ("encoder", "decoder"):
            paths[f"{role}_int8"] = quantize_int8(paths[role], out / ONNX_NAMES[f"{role}_int8"])
    return paths
