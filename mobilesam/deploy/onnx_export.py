"""Writing the ONNX files of a model: float (fp32 or fp16) encoder and decoder, and their int8 versions.

`write` is the format's entry in `mobilesam.deploy.formats` (staged, then checked against PyTorch); the graphs are
`mobilesam.deploy.onnx_graphs`, their runtime `mobilesam.deploy.onnx_runtime`."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..modeling import Sam
from .formats import FORMATS, file_name
from .interface import ONNX_ENCODER_INPUT
from .interface import ONNX_ENCODER_INPUTS as ENCODER_INPUTS
from .onnx_graphs import DEFAULT_OPSET, check_opset, export_decoder, export_encoder

if TYPE_CHECKING:
    from .calibration import Calibration
    from .formats import ExportOptions

SUFFIX = FORMATS["onnx"].suffix
ENCODER_INPUT = f"{ONNX_ENCODER_INPUT} (resize with PIL bilinear first)"
# fp16 files keep these in fp32 (with casts around them): normalisation statistics and softmax lose too much in
# half precision, and the resizes feed the mask threshold
FP32_OPS = ["LayerNormalization", "Softmax", "ReduceMean", "Pow", "Sqrt", "Div", "Resize"]

# Static int8 quantises these (weights per channel, activations calibrated); layer norms, softmax, residual adds
# and the rest stay float, as the ExecuTorch int8 path keeps its layer norms float (they were the costly ones)
STATIC_OPS = ["Conv", "MatMul", "Gemm"]

ONNX_NAMES = {role: file_name(role, SUFFIX) for role in ("encoder", "decoder", "encoder_int8", "decoder_int8")}


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


def encoder_inputs(calibration: Calibration) -> list[np.ndarray]:
    """The ONNX encoder's inputs (HxWx3 uint8, long side img_size) of a calibration set, recovered exactly from
    its normalised, padded tensors (`calibration.to_input`): SAM's pixel mean is not an integer, so no image pixel
    normalises to exactly zero in all three channels and the zero rows and columns are the padding."""
    from ..transforms import PIXEL_MEAN, PIXEL_STD

    out = []
    for x in calibration.images:
        chw = x[0].numpy()
        filled = np.any(chw != 0, axis=0)
        h, w = int(filled.any(axis=1).sum()), int(filled.any(axis=0).sum())
        mean, std = np.asarray(PIXEL_MEAN, np.float32), np.asarray(PIXEL_STD, np.float32)
        image = chw[:, :h, :w].transpose(1, 2, 0) * std + mean
        out.append(np.clip(np.rint(image), 0, 255).astype(np.uint8))
    return out


def quantize_static_int8(src: str | os.PathLike, dst: str | os.PathLike, calibration: Calibration) -> Path:
    """Static int8 quantisation of the ONNX encoder, calibrated on `calibration` (`calibration.read_calibration`).

    QDQ format (QuantizeLinear/DequantizeLinear pairs, which ONNX Runtime fuses into int8 kernels), weights int8
    per channel, activations uint8 (ONNX Runtime's fastest on CPU), only `STATIC_OPS` quantised. Metadata is
    carried over.
    """
    try:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    except ImportError as e:
        raise ImportError("int8 quantisation needs onnxruntime: pip install 'mobilesam[onnx]'") from e

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.inputs = iter([{ENCODER_INPUTS[0]: image} for image in encoder_inputs(calibration)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.inputs, None)

    dst = Path(dst)
    with tempfile.TemporaryDirectory(prefix=f".{dst.name}.", dir=dst.parent) as tmp:
        staged = Path(tmp) / dst.name
        quantize_static(
            src,
            staged,
            Reader(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=STATIC_OPS,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        os.replace(staged, dst)
    return dst


def to_fp16(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """An fp16 copy of an ONNX file: weights and activations in half precision, inputs and outputs as they were,
    `FP32_OPS` kept in fp32. Metadata is carried over."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True, op_block_list=FP32_OPS)
    dst = Path(dst)
    onnx.save(model, str(dst))
    return dst


def require() -> None:
    """Raises ImportError naming the extra when the exporter or ONNX Runtime is missing."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ImportError(
            f"ONNX export needs onnx, onnxscript and onnxruntime ({e}): pip install 'mobilesam[onnx]'"
        ) from e


def write(model: Sam, out_dir: Path, options: ExportOptions) -> tuple[dict[str, Path], dict[str, Any]]:
    """The format's writer (`mobilesam.deploy.formats`): role -> path, and the sidecar's description."""
    opset = options.opset or DEFAULT_OPSET
    check_opset(opset)
    calibration = None
    if options.quantize and options.calibration is not None:
        from .calibration import read_calibration

        calibration = read_calibration(options.calibration, model.img_size, options.calibration_images)
    paths = export_onnx(
        model,
        out_dir,
        opset=opset,
        quantize=options.quantize,
        single_mask=options.single_mask,
        stamp=options.stamp,
        precision=options.precision,
        calibration=calibration,
    )
    info = {"opset": opset, "single_mask": options.single_mask, "encoder_input": ENCODER_INPUT}
    if options.quantize:
        static = f"static, {calibration.source}" if calibration is not None else "dynamic"
        info["int8_quantization"] = {"encoder": static, "decoder": "dynamic"}
    return paths, info


def export_onnx(
    model: Sam,
    out_dir: str | os.PathLike,
    opset: int = DEFAULT_OPSET,
    quantize: bool = False,
    single_mask: bool = False,
    stamp: Mapping[str, object] = (),
    precision: str = "fp32",
    calibration: Calibration | None = None,
) -> dict[str, Path]:
    """Writes `encoder.onnx` and `decoder.onnx` (and with `quantize` their `_int8` versions) into `out_dir`.

    Args:
        model: the SAM model (any variant, any img_size); every file records its img_size in its metadata.
        out_dir: output folder.
        opset: ONNX opset version.
        quantize: also write the int8 versions (dynamic, `quantize_int8`; see `calibration`).
        single_mask: the decoder picks one mask (see `DecoderGraph`).
        stamp: extra metadata for every file (variant, source checksum, version).
        precision: "fp32", or "fp16" to write `encoder_fp16.onnx` and `decoder_fp16.onnx` (`to_fp16`) instead of
            the fp32 files (int8 files are still made from fp32).
        calibration: with `quantize`, the encoder's int8 file is static, calibrated on these images
            (`quantize_static_int8`); the decoder's stays dynamic. None: both dynamic.

    Returns:
        Role ("encoder", "decoder", "encoder_int8", "decoder_int8") -> path.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"encoder": export_encoder(model, out / ONNX_NAMES["encoder"], opset, stamp)}
    paths["decoder"] = export_decoder(model, out / ONNX_NAMES["decoder"], opset, stamp, single_mask=single_mask)
    if quantize:
        for role in ("encoder", "decoder"):
            dst = out / ONNX_NAMES[f"{role}_int8"]
            if role == "encoder" and calibration is not None:
                paths["encoder_int8"] = quantize_static_int8(paths[role], dst, calibration)
            else:
                paths[f"{role}_int8"] = quantize_int8(paths[role], dst)
    if precision == "fp16":
        for role in ("encoder", "decoder"):
            fp32 = paths[role]
            paths[role] = to_fp16(fp32, out / file_name(role, SUFFIX, precision))
            fp32.unlink()
    elif precision != "fp32":
        raise ValueError(f"precision={precision!r}: ONNX files are fp32 or fp16")
    return paths
