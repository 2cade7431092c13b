"""`mobilesam export`: any checkpoint (`mobile_sam.pt`, SAM `.pth`, training `.ckpt`) -> the official
`mobile_sam.pt` with its sidecar, and optionally the ONNX encoder and decoder (float and int8)."""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from .build import VARIANTS, build_sam, infer_variant
from .checkpoint import (
    CheckpointError,
    flat_state_dict,
    is_lightning_checkpoint,
    load_file,
    load_into,
    read_sidecar,
    save_state_dict,
    sha256_file,
    strip_prefixes,
)

# File names by variant: Ultralytics picks its model builder by these suffixes
WEIGHTS_NAMES = {"vit_t": "mobile_sam.pt", "vit_b": "sam_b.pt", "vit_l": "sam_l.pt", "vit_h": "sam_h.pt"}
# In a training checkpoint, the LightningModule holds the whole SAM model as the attribute `sam`
LIGHTNING_PREFIX = "sam."
SAM_PARTS = ("image_encoder.", "prompt_encoder.", "mask_decoder.")


@dataclass
class Source:
    """A checkpoint's weights under the official keys, and what is known about them.

    Attributes:
        path: the file read.
        state_dict: flat state dict with the official keys (wrapper and LightningModule prefixes removed).
        variant: "vit_t", "vit_b", "vit_l" or "vit_h", read from the weights.
        img_size: input side in pixels the weights were trained for.
        meta: what the source says about itself (its sidecar, or a training checkpoint's hyper-parameters).
    """

    path: Path
    state_dict: dict[str, Tensor]
    variant: str
    img_size: int
    meta: dict[str, Any] = field(default_factory=dict)


def _walk(tree: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], str, Any]]:
    """(path, key, value) of every entry of nested dicts; subtrees about the teacher are skipped."""
    if not isinstance(tree, Mapping):
        return
    for key, value in tree.items():
        if "teacher" in str(key).lower():
            continue
        yield path, str(key), value
        yield from _walk(value, (*path, str(key)))


def find_setting(hparams: Any, key: str) -> Any:
    """The value of `key` in a training checkpoint's hyper-parameters, wherever the config nests it.

    Entries under a `model` or `student` node win over the rest, then the shallowest; anything under a key that
    names the teacher is ignored (the teacher has its own variant and sizes). None when absent.
    """
    found = [(p, v) for p, k, v in _walk(hparams) if k == key and v is not None and not isinstance(v, Mapping)]
    if not found:
        return None
    found.sort(key=lambda pv: (not any(n in ("model", "student") for n in pv[0]), len(pv[0])))
    return found[0][1]


def _lightning_state_dict(ckpt: dict[str, Any], path: Path) -> dict[str, Tensor]:
    state = {strip_prefixes(k).replace("._orig_mod.", "."): v for k, v in ckpt["state_dict"].items()}
    if any(k.startswith(SAM_PARTS) for k in state):  # a module that is itself the SAM model
        return {k: v for k, v in state.items() if k.startswith(SAM_PARTS)}
    sam = {strip_prefixes(k[len(LIGHTNING_PREFIX) :]): v for k, v in state.items() if k.startswith(LIGHTNING_PREFIX)}
    if not sam:
        prefixes = sorted({k.split(".")[0] for k in state})
        raise CheckpointError(
            f"{path} is a Lightning checkpoint but none of its {len(state)} weights is under '{LIGHTNING_PREFIX}' "
            f"(its top-level names: {prefixes[:10]}); the training module must keep the SAM model as `self.sam`"
        )
    return sam


def _size_from_weights(state: Mapping[str, Tensor], variant: str) -> int | None:
    """A SAM ViT's input size from its positional embedding (1 x g x g x C); None for TinyViT (size-free)."""
    pos = state.get("image_encoder.pos_embed")
    return int(pos.shape[1]) * 16 if variant != "vit_t" and pos is not None else None


def read_source(path: str | os.PathLike, img_size: int | None = None) -> Source:
    """Reads a `mobile_sam.pt`, a SAM checkpoint or a Lightning training checkpoint (`weights_only=True`).

    Args:
        path: the checkpoint file.
        img_size: the input size, when the file does not say (a `mobile_sam.pt` without sidecar is taken to be
            the official 1024). A value that contradicts the file is refused.

    Returns:
        The weights under the official keys, with their variant and img_size.
    """
    path = Path(path)
    obj = load_file(path)
    sizes: dict[str, int] = {}  # where each statement of the size came from, to refuse contradictions
    variant_said = None
    if is_lightning_checkpoint(obj):
        state = _lightning_state_dict(obj, path)
        hparams = obj.get("hyper_parameters") or {}
        meta = {"hyper_parameters": hparams, "epoch": obj.get("epoch"), "global_step": obj.get("global_step")}
        if (size := find_setting(hparams, "img_size")) is not None:
            sizes["the checkpoint's hyper_parameters"] = int(size)
        variant_said = find_setting(hparams, "variant")
    else:
        state = flat_state_dict(obj, str(path))
        meta = read_sidecar(path) or {}
        if meta.get("img_size") is not None:
            sizes["its sidecar"] = int(meta["img_size"])
        variant_said = meta.get("variant")
    variant = infer_variant(state)
    if variant_said in VARIANTS and variant_said != variant:
        raise CheckpointError(f"{path} says it is {variant_said!r} but its weights are {variant!r}")
    if (size := _size_from_weights(state, variant)) is not None:
        sizes["its positional embedding"] = size
    if img_size is not None:
        sizes["--img-size"] = int(img_size)
    if len(set(sizes.values())) > 1:
        said = ", ".join(f"{v} ({k})" for k, v in sizes.items())
        raise CheckpointError(f"{path}: conflicting img_size: {said}. Give the size the weights were trained at.")
    if sizes:
        size = next(iter(sizes.values()))
    elif is_lightning_checkpoint(obj):
        raise CheckpointError(
            f"{path}: no img_size in the checkpoint's hyper_parameters (looked for an 'img_size' key in nested "
            "dicts such as hyper_parameters['cfg']['model']); pass --img-size N"
        )
    else:
        size = 1024  # a file without sidecar is an official one (DESIGN.md)
    return Source(path=path, state_dict=state, variant=variant, img_size=size, meta=meta)


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
        img_size: the input size, when the source does not say (see `read_source`).
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
    src = read_source(source, img_size)
    model = build_sam(src.variant, img_size=src.img_size)
    load_into(model, src.state_dict, source=str(src.path))
    out = Path(out_dir)
    weights = out / WEIGHTS_NAMES[src.variant]
    from . import __version__

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
