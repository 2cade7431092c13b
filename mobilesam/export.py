"""`mobilesam export`: any checkpoint (`mobile_sam.pt`, SAM `.pth`, training `.ckpt`) -> the official
`mobile_sam.pt` with its sidecar, and optionally the ONNX encoder and decoder (float and int8)."""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .build import build_from
from .checkpoint import open_checkpoint, save_state_dict
from .files import sha256_file

# File names by variant: Ultralytics picks its model builder by these suffixes
WEIGHTS_NAMES = {"vit_t": "mobile_sam.pt", "vit_b": "sam_b.pt", "vit_l": "sam_l.pt", "vit_h": "sam_h.pt"}


FORMATS = ("onnx", "executorch")
DECODER_INPUTS_TEXT = (
    "image_embeddings 1x256x(img_size/16)^2; point_coords 1x{points}x2 float32 (x, y) in the resized image's "
    "pixels; point_labels 1x{points} float32 (1 positive, 0 negative, 2/3 box corners, -1 padding)"
)


def check_formats(formats: Sequence[str] | str, onnx: bool = False) -> list[str]:
    """A comma list or sequence of formats -> the list, checked against `FORMATS` (`onnx=True` adds "onnx")."""
    if isinstance(formats, str):
        formats = [f for f in formats.split(",") if f.strip()]
    out = [f.strip().lower() for f in formats]
    unknown = [f for f in out if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown export format(s) {unknown}: choose from {', '.join(FORMATS)} (a comma list)")
    if onnx and "onnx" not in out:
        out.insert(0, "onnx")
    return list(dict.fromkeys(out))


def _jsonable(value: Any) -> Any:
    """`value` with anything JSON cannot hold turned into its string form."""
    return json.loads(json.dumps(value, default=str))


def export(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    onnx: bool = False,
    opset: int | None = None,
    quantize: bool = False,
    img_size: int | None = None,
    single_mask: bool = False,
    formats: Sequence[str] = (),
    max_points: int | None = None,
) -> dict[str, Path]:
    """Writes the official weights file and its sidecar, and with `onnx` the ONNX graphs, into `out_dir`.

    The weights load strictly into the model before anything is written; every file is written atomically.

    Args:
        source: `mobile_sam.pt`, `sam_vit_{b,l,h}_*.pth` or a training `.ckpt`.
        out_dir: output folder (created).
        onnx: also write `encoder.onnx` and `decoder.onnx`.
        opset: ONNX opset (default `mobilesam.onnx.graphs.DEFAULT_OPSET`).
        quantize: also write `encoder_int8.onnx` and `decoder_int8.onnx` (dynamic int8; implies `onnx`).
        img_size: the input size, when the source does not say (see `mobilesam.checkpoint.open_checkpoint`).
        single_mask: the decoder returns one mask chosen as SAM's exported decoder does, instead of all four.
        formats: deployment formats to write, from `FORMATS` ("onnx", "executorch"); `onnx=True` adds "onnx".
            With "executorch", `quantize` also writes the int8 `.pte` files.
        max_points: points per object the ExecuTorch decoder holds (default
            `mobilesam.deploy.static_decoder.DEFAULT_MAX_POINTS`).

    Returns:
        Role ("weights", "sidecar", "encoder", "decoder", "encoder_int8", "decoder_int8") -> written path.
    """
    formats = check_formats(formats, onnx=onnx)
    if "executorch" in formats:
        from .deploy.executorch import _require_executorch

        _require_executorch()
    onnx = "onnx" in formats or (quantize and not formats)
    if onnx:  # refuse a bad opset before the slow part
        from .onnx.graphs import DEFAULT_OPSET, check_opset

        opset = opset or DEFAULT_OPSET
        check_opset(opset)
    src = open_checkpoint(source, img_size)
    model = build_from(src)
    out = Path(out_dir)
    weights = out / WEIGHTS_NAMES[src.variant]
    meta = {
        **_jsonable({k: v for k, v in src.meta.items() if k not in ("onnx", "executorch", "files")}),  # own files
        "img_size": src.img_size,
        "variant": src.variant,
        "source": str(src.path.resolve()),
        "source_sha256": sha256_file(src.path),
        "mobilesam_version": __version__,
        "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    written: dict[str, Path] = {}
    if onnx:
        from .onnx.export import export_onnx

        stamp = {k: meta[k] for k in ("variant", "source_sha256", "mobilesam_version")}
        written.update(export_onnx(model, out, opset=opset, quantize=quantize, single_mask=single_mask, stamp=stamp))
        meta["onnx"] = {
            "files": {p.name: sha256_file(p) for p in written.values()},
            "opset": opset,
            "single_mask": single_mask,
            "encoder_input": "RGB uint8 HxWx3, long side = img_size (resize with PIL bilinear first)",
        }
    if "executorch" in formats:
        from .deploy.executorch import ENCODER_INPUT, export_executorch
        from .deploy.static_decoder import DEFAULT_MAX_POINTS

        points = max_points or DEFAULT_MAX_POINTS
        pte, delegation = export_executorch(model, out, quantize=quantize, max_points=points)
        written.update({f"executorch_{k}": v for k, v in pte.items()})
        meta["executorch"] = {
            "files": {p.name: sha256_file(p) for p in pte.values()},
            "encoder_input": ENCODER_INPUT,
            "decoder_inputs": DECODER_INPUTS_TEXT.format(points=points),
            "decoder_outputs": "low_res_masks 1x4x(img_size/4)^2 logits (mask 0 single, 1-3 multimask), iou 1x4",
            "max_points": points,
            "backend": "XNNPACK",
            "int8": quantize,
            "delegation": delegation,
        }
    meta["files"] = {p.name: sha256_file(p) for p in written.values()}
    # Last, so that a failed ONNX export leaves no weights that look complete
    save_state_dict(model.state_dict(), weights, meta=meta)
    written["weights"] = weights
    written["sidecar"] = weights.with_suffix(".json")
    return written
