"""The two ONNX graphs (image encoder, prompt decoder) as PyTorch modules, and their export with PyTorch's exporter.

The encoder graph takes the image already resized (long side = img_size, as `mobilesam.transforms.resize_image`
does with PIL) and does SAM's normalisation and padding inside. The decoder graph has segment-anything's ONNX
interface (`segment_anything/utils/onnx.py`), so tools written for SAM's exported decoder can run it.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..modeling import Sam
from .interface import ONNX_DECODER_INPUTS as DECODER_INPUTS
from .interface import ONNX_DECODER_OUTPUTS as DECODER_OUTPUTS
from .interface import ONNX_ENCODER_INPUT
from .interface import ONNX_ENCODER_INPUTS as ENCODER_INPUTS
from .interface import ONNX_ENCODER_OUTPUTS as ENCODER_OUTPUTS
from .onnx_guard import refuse_other_sizes

DEFAULT_OPSET = 18
MIN_OPSET = 18  # the exporter's own; its conversion to 17 writes invalid graphs (ReduceMax attributes)

# Above this many bytes of weights, ONNX files keep them in `<name>.data` beside the graph (protobuf's 2 GiB cap)
EXTERNAL_DATA_BYTES = 1 << 30
# Constant folding limit, in elements (the largest folded tensor: the decoder's 256x64x64 positional grid at 1024)
FOLD_LIMIT = 1 << 24


class EncoderGraph(nn.Module):
    """hxwx3 uint8 RGB image, long side = img_size -> 1x256x(img_size/16)x(img_size/16) embedding.

    The image is normalised with SAM's pixel mean and std and zero-padded at the bottom and right to
    img_size x img_size inside the graph, exactly as `Sam.preprocess` does.
    """

    def __init__(self, sam: Sam) -> None:
        super().__init__()
        self.sam = sam

    def forward(self, image: Tensor) -> Tensor:
        x = image.permute(2, 0, 1)[None]  # HWC -> 1xCxHxW
        return self.sam.image_encoder(self.sam.preprocess(x))


class DecoderGraph(nn.Module):
    """segment-anything's ONNX decoder: prompts for one object -> mask logits at the original image size.

    Inputs:
        image_embeddings: 1x256xgxg (g = img_size / 16), the encoder's output.
        point_coords: 1xNx2 float (x, y) in pixels of the resized image (the encoder's input frame).
        point_labels: 1xN float: 1 positive, 0 negative, 2 and 3 a box's top-left and bottom-right corner,
            -1 padding. Without a box, append one padding point (0, 0) with label -1, as SAM's predictor does.
        mask_input: 1x1x(4g)x(4g) low-resolution logits of a previous prediction (zeros when none).
        has_mask_input: (1,) float, 1 when `mask_input` holds a mask, else 0.
        orig_im_size: (2,) float (H, W) of the original image.

    Outputs:
        masks: 1xMxHxW mask logits at the original size (threshold at 0).
        iou_predictions: 1xM predicted IoUs.
        low_res_masks: 1xMx(4g)x(4g) logits, to feed back as `mask_input`.
        M = 4 (mask 0 the single-mask output, 1-3 the multimask outputs), or M = 1 with `single_mask`, where the
        graph picks as SAM's exported decoder does: mask 0 for more than one point (padding and box corners
        count), else the best of 1-3 by predicted IoU.
    """

    def __init__(self, sam: Sam, single_mask: bool = False) -> None:
        super().__init__()
        self.sam = sam
        self.single_mask = single_mask
        self.img_size = sam.img_size

    def _embed_masks(self, mask_input: Tensor, has_mask_input: Tensor) -> Tensor:
        pe = self.sam.prompt_encoder
        no_mask = pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
        return has_mask_input * pe.mask_downscaling(mask_input) + (1 - has_mask_input) * no_mask

    def _select_mask(self, masks: Tensor, iou: Tensor, num_points: int) -> tuple[Tensor, Tensor]:
        # SAM's rule without control flow: a large bonus for mask 0 when there is more than one point
        bonus = torch.zeros_like(iou[:1])
        bonus[:, 0] = 1000.0
        best = torch.argmax(iou + (num_points - 2.5) * bonus, dim=1)
        rows = torch.arange(masks.shape[0])
        return masks[rows, best][:, None], iou[rows, best][:, None]

    def _upscale(self, masks: Tensor, orig_im_size: Tensor) -> Tensor:
        """Bx Mx(4g)x(4g) logits -> BxMxHxW: upscale to img_size, remove the padding, upscale to (H, W)."""
        s = self.img_size
        masks = F.interpolate(masks, size=(s, s), mode="bilinear", align_corners=False)
        size = orig_im_size.to(torch.float32)
        # the resized image's size, SAM's round-half-up rule, at least one pixel (mobilesam.transforms.preprocess_shape)
        resized = torch.floor(size * (s / size.max()) + 0.5).clamp(min=1).to(torch.int64)
        masks = masks[..., : resized[0], : resized[1]]
        h, w = orig_im_size.to(torch.int64)
        return F.interpolate(masks, size=(h, w), mode="bilinear", align_corners=False)

    def forward(
        self,
        image_embeddings: Tensor,
        point_coords: Tensor,
        point_labels: Tensor,
        mask_input: Tensor,
        has_mask_input: Tensor,
        orig_im_size: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        pe = self.sam.prompt_encoder
        # Labels 2 and 3 take the box-corner embeddings, -1 the not-a-point embedding, as boxes and padding do
        sparse = pe._embed_points(point_coords, point_labels, pad=False)
        dense = self._embed_masks(mask_input, has_mask_input)
        masks, iou = self.sam.mask_decoder.predict_masks(image_embeddings, pe.get_dense_pe(), sparse, dense)
        if self.single_mask:
            masks, iou = self._select_mask(masks, iou, point_coords.shape[1])
        return self._upscale(masks, orig_im_size), iou, masks


def example_inputs(img_size: int) -> dict[str, tuple[Tensor, ...]]:
    """Inputs to trace each graph with: a non-square image, three points (positive, negative, padding)."""
    g = img_size // 16
    image = torch.randint(0, 256, (img_size, img_size * 3 // 4, 3), dtype=torch.uint8)
    decoder = (
        torch.randn(1, 256, g, g),
        torch.tensor([[[10.0, 20.0], [30.0, 5.0], [0.0, 0.0]]]) * img_size / 64,
        torch.tensor([[1.0, 0.0, -1.0]]),
        torch.zeros(1, 1, 4 * g, 4 * g),
        torch.zeros(1),
        torch.tensor([float(img_size), img_size * 1.5]),
    )
    return {"encoder": (image,), "decoder": decoder}


def _save_program(
    program: Any, path: Path, metadata: Mapping[str, str], edit: Callable[[Any], Any] | None = None
) -> Path:
    """Stamps `metadata` into the ONNX model and saves it atomically (weights > 1 GiB go to `<name>.data`).

    The exporter names the weights file after the model file, so both are written in a temp folder beside
    `path` and moved into place; with a weights file, an old graph is removed first and the new graph moved in
    last, so a killed run never leaves a graph beside weights that are not its own.
    """
    import onnxscript
    from onnxscript.rewriter import onnx_fusions

    # The exporter's own optimisation (turned off in `_export`), with a larger constant-folding limit: it would
    # skip inputs over 8192 elements, leaving e.g. BatchNorm folds as graph nodes, and int8 quantisation only sees
    # weights that are initializers
    onnxscript.optimizer.optimize(program.model, input_size_limit=FOLD_LIMIT, output_size_limit=FOLD_LIMIT)
    onnx_fusions.fuse(program.model)
    program.model.metadata_props.update({k: str(v) for k, v in metadata.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as tmp:
        staged = Path(tmp) / path.name
        weights = sum(v.const_value.nbytes for v in program.model.graph.initializers.values() if v.const_value)
        program.save(staged, external_data=weights > EXTERNAL_DATA_BYTES)
        if edit is not None:  # a rewrite of the saved graph (e.g. `onnx_guard`'s size check); the weights stay put
            import onnx

            onnx.save(edit(onnx.load(staged, load_external_data=False)), staged)
        data = staged.with_name(staged.name + ".data")
        if data.exists():
            path.unlink(missing_ok=True)
            os.replace(data, path.with_name(data.name))
        os.replace(staged, path)
    return path


def check_opset(opset: int) -> None:
    """Refuses an opset the exporter cannot write: below 18 or above what onnx knows."""
    try:
        import onnx
        import onnxscript  # noqa: F401  (PyTorch's exporter needs it; fail with the extra's name, not deep inside)
    except ImportError as e:
        raise ImportError("exporting ONNX needs onnx and onnxscript: pip install 'mobilesam[onnx]'") from e
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise ValueError(f"opset {opset} is not available: choose {MIN_OPSET} to {newest} (default {DEFAULT_OPSET})")


def _export(module: nn.Module, args: tuple[Tensor, ...], opset: int, **kwargs: Any) -> Any:
    check_opset(opset)
    with torch.no_grad():
        program = torch.onnx.export(
            module.eval(), args, dynamo=True, opset_version=opset, optimize=False, verbose=False, **kwargs
        )
    # The exporter converts to other opsets on a best-effort basis and keeps its own when it cannot
    written = program.model.opset_imports.get("")
    if written != opset:
        raise ValueError(f"the exporter could not convert the graph to opset {opset} (it wrote {written}); use 18")
    return program


def export_encoder(sam: Sam, path: str | os.PathLike, opset: int = DEFAULT_OPSET, metadata: Mapping = ()) -> Path:
    """Writes `EncoderGraph(sam)` to `path`: input `image` (height x width x 3 uint8, both dynamic up to img_size)."""
    s = sam.img_size
    height, width = torch.export.Dim("height", min=1, max=s), torch.export.Dim("width", min=1, max=s)
    program = _export(
        EncoderGraph(sam),
        example_inputs(s)["encoder"],
        opset,
        input_names=list(ENCODER_INPUTS),
        output_names=list(ENCODER_OUTPUTS),
        dynamic_shapes={"image": {0: height, 1: width}},
    )
    meta = {**dict(metadata), "graph": "encoder", "img_size": s, "input": ONNX_ENCODER_INPUT}
    # the graph pads what is smaller and crops what is larger: any long side but img_size is refused instead
    return _save_program(program, Path(path), meta, edit=lambda proto: refuse_other_sizes(proto, s))


def export_decoder(
    sam: Sam, path: str | os.PathLike, opset: int = DEFAULT_OPSET, metadata: Mapping = (), single_mask: bool = False
) -> Path:
    """Writes `DecoderGraph(sam, single_mask)` to `path`, with a dynamic number of points."""
    num_points = torch.export.Dim("num_points", min=1)
    with warnings.catch_warnings():
        # both point inputs share the one `num_points` axis, which the exporter reports as a name it will not use
        warnings.filterwarnings("ignore", message=".*axis name: num_points will not be used")
        program = _export(
            DecoderGraph(sam, single_mask),
            example_inputs(sam.img_size)["decoder"],
            opset,
            input_names=list(DECODER_INPUTS),
            output_names=list(DECODER_OUTPUTS),
            dynamic_shapes=(None, {1: num_points}, {1: num_points}, None, None, None),
        )
    from onnxscript import ir

    # The exporter names the size of the upscaled masks after internal symbols; give them readable names
    masks = program.model.graph.outputs[0]
    masks.shape = ir.Shape([*masks.shape[:2], "orig_height", "orig_width"])
    meta = {
        **dict(metadata),
        "graph": "decoder",
        "img_size": sam.img_size,
        "num_masks": 1 if single_mask else sam.mask_decoder.num_mask_tokens,
    }
    return _save_program(program, Path(path), meta)
