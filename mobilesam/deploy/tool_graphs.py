"""The ONNX graphs in the interfaces annotation tools feed (AnyLabeling's 684x1024 canvas, osam's padded square),
wrapped around the ONNX export's own encoder and decoder graphs, and the check they pass before they are kept.

AnyLabeling and X-AnyLabeling (`SegmentAnythingONNX`) warp every image into a fixed 684x1024 canvas (top-left,
scaled to fit), feed it as an HxWx3 float32 (or uint8) image, give prompts in the canvas's pixels and hard-code
`mask_input` 1x1x256x256 and `orig_im_size` (684, 1024). osam (`osam._models.sam.Sam`) resizes the image to the
encoder's static input size S itself (PIL bilinear), normalises and zero-pads it, feeds `x` 1x3xSxS, gives prompts in
the resized image's pixels, `mask_input` 1x1x256x256 and `has_mask_input` -1 for "no mask". The wrappers below map
each onto `EncoderGraph` / `DecoderGraph` at the model's img_size, so any img_size runs in either tool.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..modeling import Sam
from ..transforms import preprocess_shape
from .onnx_graphs import DECODER_INPUTS, DECODER_OUTPUTS, DecoderGraph, EncoderGraph, _export, _save_program

if TYPE_CHECKING:
    from .formats import ExportOptions

CANVAS = (684, 1024)  # (H, W): AnyLabeling's and X-AnyLabeling's `SegmentAnythingONNX.input_size`
TOOL_MASK_INPUT = 256  # both tools feed mask_input 1x1x256x256 whatever the model's size


class CanvasEncoder(nn.Module):
    """684x1024x3 float32 canvas (values 0-255) -> 1x256x(S/16)x(S/16) embedding, for any img_size S.

    At S = 1024 the canvas is the resized image `EncoderGraph` takes. Otherwise it is resized inside the graph to
    (684 S / 1024, S) with an antialiased bilinear filter rounded to integers (as PIL's bilinear resize to uint8
    that `OnnxPredictor` uses), then normalised and padded by `EncoderGraph`.
    """

    def __init__(self, sam: Sam) -> None:
        super().__init__()
        self.encoder = EncoderGraph(sam)
        self.size = preprocess_shape(*CANVAS, sam.img_size)

    def forward(self, image: Tensor) -> Tensor:
        if self.size != CANVAS:
            x = image.permute(2, 0, 1)[None]  # HWC -> 1xCxHxW
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=True)
            image = x.clamp(0, 255).round()[0].permute(1, 2, 0)  # 1xCxhxw -> hwC
        return self.encoder(image)


class SquareEncoder(nn.Module):
    """1x3xSxS float32, the image resized (long side S), normalised and zero-padded -> the embedding (osam's `x`)."""

    def __init__(self, sam: Sam) -> None:
        super().__init__()
        self.image_encoder = sam.image_encoder

    def forward(self, x: Tensor) -> Tensor:
        return self.image_encoder(x)


class ToolDecoder(nn.Module):
    """segment-anything's six decoder inputs as a tool feeds them -> `DecoderGraph` at the model's img_size S.

    point_coords arrive in pixels of a `frame`-pixel long side (the canvas's 1024 for AnyLabeling, S for osam) and
    are scaled to S; mask_input arrives 1x1x256x256 and is resized to the model's 4(S/16) side; has_mask_input is
    clamped to [0, 1] (osam feeds -1 for "no mask", which segment-anything's graph would read as a negative mask).
    Outputs as `DecoderGraph` (four masks; mask 0 the single-mask output, the one both tools show).
    """

    def __init__(self, sam: Sam, frame: int) -> None:
        super().__init__()
        self.decoder = DecoderGraph(sam)
        self.scale = sam.img_size / frame
        self.low_res = sam.img_size // 4

    def forward(
        self,
        image_embeddings: Tensor,
        point_coords: Tensor,
        point_labels: Tensor,
        mask_input: Tensor,
        has_mask_input: Tensor,
        orig_im_size: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        if self.scale != 1:
            point_coords = point_coords * self.scale
        if self.low_res != TOOL_MASK_INPUT:
            size = (self.low_res, self.low_res)
            mask_input = F.interpolate(mask_input, size=size, mode="bilinear", align_corners=False, antialias=True)
        has_mask_input = has_mask_input.clamp(0, 1)
        return self.decoder(image_embeddings, point_coords, point_labels, mask_input, has_mask_input, orig_im_size)


def decoder_example(img_size: int, frame: int) -> tuple[Tensor, ...]:
    """Decoder inputs to trace with: three points (positive, negative, padding) in a `frame`-pixel frame."""
    g = img_size // 16
    return (
        torch.randn(1, 256, g, g),
        torch.tensor([[[10.0, 20.0], [30.0, 5.0], [0.0, 0.0]]]) * frame / 64,
        torch.tensor([[1.0, 0.0, -1.0]]),
        torch.zeros(1, 1, TOOL_MASK_INPUT, TOOL_MASK_INPUT),
        torch.zeros(1),
        torch.tensor([float(frame) * 2 / 3, float(frame)]),
    )


def export_encoder(
    module: nn.Module, example: Tensor, path: str | os.PathLike, input_name: str, metadata: Mapping, opset: int
) -> Path:
    """Writes an encoder wrapper with a static input (`example`'s shape): ONNX Runtime refuses any other size."""
    program = _export(module, (example,), opset, input_names=[input_name], output_names=["image_embeddings"])
    return _save_program(program, Path(path), {**dict(metadata), "graph": "encoder"})


def export_decoder(
    module: ToolDecoder, img_size: int, frame: int, path: str | os.PathLike, metadata: Mapping, opset: int
) -> Path:
    """Writes a `ToolDecoder` with a dynamic number of points."""
    num_points = torch.export.Dim("num_points", min=1)
    with warnings.catch_warnings():
        # both point inputs share the one `num_points` axis, which the exporter reports as a name it will not use
        warnings.filterwarnings("ignore", message=".*axis name: num_points will not be used")
        program = _export(
            module,
            decoder_example(img_size, frame),
            opset,
            input_names=list(DECODER_INPUTS),
            output_names=list(DECODER_OUTPUTS),
            dynamic_shapes=(None, {1: num_points}, {1: num_points}, None, None, None),
        )
    return _save_program(program, Path(path), {**dict(metadata), "graph": "decoder", "num_masks": 4})


# The check: the exported graphs under ONNX Runtime against the same wrappers in PyTorch, fed as the tool feeds them
EMBEDDING_TOLERANCE = 1e-3  # relative L2 error of the embedding (guard.TOLERANCES["fp32"])
MASK_AGREEMENT = 0.999  # smallest pixel agreement of a mask
SPREAD = 0.5  # two images' embeddings must differ at least this much relative to PyTorch's (guard.SPREAD)

Feed = tuple[dict[str, np.ndarray], list[dict[str, np.ndarray]]]  # encoder inputs, one decoder feed per prompt


def check_graphs(
    label: str,
    encoder: tuple[Path, nn.Module],
    decoder: tuple[Path, nn.Module],
    feeds: Sequence[Feed],
) -> dict[str, float]:
    """Runs the exported encoder and decoder (ONNX Runtime) and their PyTorch modules on the same tool-made feeds.

    Args:
        label: the files, for the message.
        encoder, decoder: (exported file, the module it was exported from).
        feeds: per image, the encoder's input dict and the decoder's inputs (without `image_embeddings`) per prompt.

    Returns:
        {"embedding_rel_error", "spread_ratio", "mask_agreement_min"}: the worst figures.

    Raises:
        RuntimeError: a figure is out of bounds (the caller does not keep the files).
    """
    import onnxruntime as ort

    from .guard import ExportCheckError, relative_error

    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (encoder[0], decoder[0])]
    ours, theirs, errors, agreement = [], [], [], []
    with torch.no_grad():
        for enc_inputs, prompts in feeds:
            emb = sessions[0].run(None, enc_inputs)[0]
            ref = encoder[1](*(torch.from_numpy(v) for v in enc_inputs.values())).numpy()
            ours.append(emb)
            theirs.append(ref)
            errors.append(relative_error(emb, ref))
            for prompt in prompts:
                # both sides decode PyTorch's embedding: the decoder is checked on its own
                got = sessions[1].run(None, {"image_embeddings": ref, **prompt})[0]
                want = decoder[1](torch.from_numpy(ref), *(torch.from_numpy(v) for v in prompt.values()))[0].numpy()
                agreement.append(float(((got[0, 0] > 0) == (want[0, 0] > 0)).mean()))
    spread = float(np.linalg.norm(ours[0] - ours[1]) / max(np.linalg.norm(theirs[0] - theirs[1]), 1e-12))
    figures = {"embedding_rel_error": max(errors), "spread_ratio": spread, "mask_agreement_min": min(agreement)}
    failed = []
    if figures["embedding_rel_error"] > EMBEDDING_TOLERANCE:
        failed.append(f"embedding relative error {figures['embedding_rel_error']:.2e} (limit {EMBEDDING_TOLERANCE:g})")
    if spread < SPREAD:
        failed.append(f"its embeddings of two images differ {spread:.2f}x as much as PyTorch's (at least {SPREAD}x)")
    if figures["mask_agreement_min"] < MASK_AGREEMENT:
        failed.append(f"masks agree with PyTorch on {figures['mask_agreement_min']:.2%} of pixels")
    if failed:
        raise ExportCheckError(
            f"{label} failed the export check against PyTorch: {'; '.join(failed)}. The files were not kept; this is "
            "a bug: please report it with the variant, img_size and format"
        )
    return figures


def write_graphs(
    model: Sam,
    out_dir: Path,
    options: ExportOptions,
    files: Mapping[str, str],
    encoder: tuple[nn.Module, Tensor, str],
    frame: int,
    feed: Callable[[np.ndarray], Feed],
) -> tuple[Path, Path, dict[str, Any]]:
    """Exports a tool's encoder and a `ToolDecoder` into `out_dir` and checks them (`check_graphs`).

    Args:
        model: the SAM model.
        out_dir: the writer's staging folder.
        options: the export's options (opset, stamp).
        files: role -> file name ("encoder", "decoder").
        encoder: (the encoder wrapper, an example input whose shape becomes the graph's static input, its name).
        frame: the long side of the frame the tool's prompt coordinates are in.
        feed: the guard's probe image -> the tool's feed of it (`Feed`).

    Returns:
        The encoder's and decoder's paths, and the sidecar's description: opset and the check's figures.
    """
    from .guard import probe_images
    from .onnx_graphs import DEFAULT_OPSET

    opset = options.opset or DEFAULT_OPSET
    meta = {**dict(options.stamp), "img_size": model.img_size, "interface": Path(files["config"]).stem}
    module, example, name = encoder
    decoder = ToolDecoder(model, frame).eval()
    enc = export_encoder(module.eval(), example, out_dir / files["encoder"], name, meta, opset)
    dec = export_decoder(decoder, model.img_size, frame, out_dir / files["decoder"], meta, opset)
    feeds = [feed(image) for image in probe_images()]
    figures = check_graphs(f"{enc.name} + {dec.name}", (enc, module), (dec, decoder), feeds)
    how = "the graphs under ONNX Runtime against the same wrappers in PyTorch, fed as the tool feeds them"
    return enc, dec, {"opset": opset, "checked": how, "check": figures}


def decoder_feed(
    coords: np.ndarray, labels: np.ndarray, orig_im_size: Sequence[float], has_mask: float
) -> dict[str, Any]:
    """A tool's decoder inputs (after `image_embeddings`): coords Nx2 and labels N, plus the padding point."""
    return {
        "point_coords": np.concatenate([coords, [[0.0, 0.0]]])[None].astype(np.float32),
        "point_labels": np.concatenate([labels, [-1]])[None].astype(np.float32),
        "mask_input": np.zeros((1, 1, TOOL_MASK_INPUT, TOOL_MASK_INPUT), np.float32),
        "has_mask_input": np.array([has_mask], np.float32),
        "orig_im_size": np.array(orig_im_size, np.float32),
    }


def probe_prompts(h: float, w: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """A point, and a box (corners labelled 2 and 3, as both tools send one), in an hxw frame's pixels."""
    return [
        (np.array([[0.4 * w, 0.55 * h]]), np.array([1])),
        (np.array([[0.15 * w, 0.2 * h], [0.75 * w, 0.85 * h]]), np.array([2, 3])),
    ]
