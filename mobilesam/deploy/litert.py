"""Writing `encoder.tflite` and `decoder.tflite`: LiteRT (TensorFlow Lite) flatbuffers converted with litert-torch.

The encoder takes the image as SAM's encoder sees it (1x3xSxS float32, normalised and zero-padded,
`mobilesam.deploy.runtime.normalize_pad`); the decoder is `StaticDecoder` (a fixed number of points per object).
Each file has one signature, `serving_default`, whose inputs and outputs carry the names of the static interface
(`mobilesam.deploy.interface`: `image` -> `image_embeddings`; `image_embeddings`, `point_coords`, `point_labels`
-> `low_res_masks`, `iou_predictions`); img_size and max_points are the input shapes, so the files need no other
metadata.

The encoder converted is the model's own `image_encoder`, not `lowering.xnnpack_encoder`: litert-torch folds
BatchNorm and the attention-bias gather into constants itself (same speed, same error), and the layer norms of
both graphs stay LiteRT's MEAN / SQUARED_DIFFERENCE / RSQRT ops, which hold no weights, instead of linear layers
with a 1/C vector that fp16 would round (1/160, 1/320 are not fp16 numbers).

fp16 (`--precision fp16`) is LiteRT's half-precision model: the weights of FULLY_CONNECTED, CONV_2D and
DEPTHWISE_CONV_2D are stored as float16 with a DEQUANTIZE to float32 in front (litert-torch's fp16 recipe, run by
ai-edge-quantizer); every activation, LayerNorm (its statistics, scale and shift), softmax, batched matmul,
the attention-bias tables, GELU and the other elementwise ops stay float32. On CPU (XNNPACK) the arithmetic is
float32 with the weights widened once at load; the file is about half the size. `write` is the format's entry in
`mobilesam.deploy.formats`, which checks the files against PyTorch before keeping them.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ..files import write_bytes
from ..modeling import Sam
from .formats import FORMATS, file_name
from .interface import DECODER_INPUTS, DECODER_OUTPUTS, ENCODER_INPUTS, ENCODER_OUTPUTS, describe
from .litert_runtime import SIGNATURE
from .static_decoder import StaticDecoder
from .static_decoder import example_inputs as static_example_inputs

if TYPE_CHECKING:
    from .formats import ExportOptions

SUFFIX = FORMATS["litert"].suffix
# LiteRT ops whose weights the fp16 recipe stores in half precision (ai-edge-quantizer's FLOAT_CASTING ops)
FP16_WEIGHT_OPS = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D")
FP16_NOTE = (
    "weights of FULLY_CONNECTED, CONV_2D and DEPTHWISE_CONV_2D stored as float16 and dequantized to float32 at "
    "load; activations, LayerNorm, softmax, batched matmuls, attention-bias tables and elementwise ops are float32"
)


def require() -> None:
    """Raises ImportError naming the extra when litert-torch or the LiteRT interpreter is missing."""
    try:
        import litert_torch  # noqa: F401
        from ai_edge_litert.interpreter import Interpreter  # noqa: F401
    except ImportError as e:
        raise ImportError(
            f"exporting LiteRT (.tflite) files needs litert-torch and ai-edge-litert ({e}): "
            "pip install 'mobilesam[litert]'"
        ) from e


class _NamedEncoder(nn.Module):
    """The image encoder with a named output (the file's signature output `image_embeddings`)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, image: Tensor) -> dict[str, Tensor]:
        return dict(zip(ENCODER_OUTPUTS, [self.encoder(image)]))


class _NamedDecoder(nn.Module):
    """`StaticDecoder` with named outputs (`low_res_masks`, `iou_predictions`)."""

    def __init__(self, decoder: StaticDecoder) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, image_embeddings: Tensor, point_coords: Tensor, point_labels: Tensor) -> dict[str, Tensor]:
        masks, iou = self.decoder(image_embeddings, point_coords, point_labels)
        return dict(zip(DECODER_OUTPUTS, (masks, iou)))


def example_inputs(img_size: int, max_points: int) -> dict[str, dict[str, Tensor]]:
    """`static_decoder.example_inputs` as keyword inputs (their names become the signature's input names)."""
    ex = static_example_inputs(img_size, max_points)
    return {
        "encoder": dict(zip(ENCODER_INPUTS, ex["encoder"])),
        "decoder": dict(zip(DECODER_INPUTS, ex["decoder"])),
    }


@contextlib.contextmanager
def _progress(show: bool) -> Iterator[None]:
    """litert-torch's progress lines (its switch is an environment variable, restored afterwards) and
    ai-edge-quantizer's report (printed) shown or hidden."""
    key = "LITERT_TORCH_SHOW_PROGRESS"
    before = os.environ.get(key)
    os.environ[key] = "y" if show else "n"
    try:
        if show:
            yield
        else:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def convert(module: nn.Module, kwargs: dict[str, Tensor], precision: str = "fp32", verbose: bool = False) -> bytes:
    """One module -> .tflite bytes (litert-torch; with "fp16" its fp16 weight recipe)."""
    import litert_torch

    quant_config = None
    if precision == "fp16":
        from litert_torch.generative.quantize import quant_recipes

        quant_config = quant_recipes.full_fp16_recipe()  # not generative-only: a default rule for every layer
    elif precision != "fp32":
        raise ValueError(f"LiteRT files are fp32 or fp16, not {precision}")
    with torch.no_grad(), _progress(verbose):
        edge = litert_torch.convert(module.eval(), sample_kwargs=kwargs, quant_config=quant_config)
        return bytes(edge.model_content())  # the flatbuffer (`edge.export(path)` writes the same bytes)


def export_litert(
    model: Sam, out_dir: str | os.PathLike, precision: str = "fp32", max_points: int = 8, verbose: bool = False
) -> tuple[dict[str, Path], dict[str, float]]:
    """Writes `encoder.tflite` and `decoder.tflite` (`encoder_fp16.tflite`, `decoder_fp16.tflite` for fp16).

    Args:
        model: the SAM model (any img_size), in eval mode; it is not modified.
        out_dir: output folder.
        precision: "fp32" or "fp16" (fp16 weights, see the module's docstring).
        max_points: prompt points per object the decoder holds (a box takes two).
        verbose: show litert-torch's progress lines.

    Returns:
        Role -> path, and role -> conversion seconds.
    """
    require()
    model = model.eval()
    ex = example_inputs(model.img_size, max_points)
    modules = {
        "encoder": _NamedEncoder(model.image_encoder),  # not `xnnpack_encoder`: see the module's docstring
        "decoder": _NamedDecoder(StaticDecoder(model, max_points, factored=False)),  # LiteRT: faster unfactored
    }
    staged, seconds = {}, {}
    for role, module in modules.items():
        start = time.perf_counter()
        staged[role] = convert(module, ex[role], precision, verbose)
        seconds[role] = round(time.perf_counter() - start, 1)
    out = Path(out_dir)
    return {role: write_bytes(out / file_name(role, SUFFIX, precision), data) for role, data in staged.items()}, seconds


def write(model: Sam, out_dir: Path, options: ExportOptions) -> tuple[dict[str, Path], dict[str, Any]]:
    """The format's writer (`mobilesam.deploy.formats`): role -> path, and the sidecar's description."""
    if options.quantize:
        raise ValueError("LiteRT files have no int8 export here: drop --quantize")
    files, seconds = export_litert(
        model, out_dir, precision=options.precision, max_points=options.max_points, verbose=options.verbose
    )
    info = {
        **describe(options.max_points),
        "signature": SIGNATURE,
        "signature_inputs": {"encoder": list(ENCODER_INPUTS), "decoder": list(DECODER_INPUTS)},
        "signature_outputs": {"encoder": list(ENCODER_OUTPUTS), "decoder": list(DECODER_OUTPUTS)},
        "fp16": FP16_NOTE if options.precision == "fp16" else None,
        "conversion_seconds": seconds,
    }
    return files, info
