"""`mobilesam export`: any checkpoint (`mobile_sam.pt`, SAM `.pth`, training `.ckpt`) -> the official
`mobile_sam.pt` with its sidecar, and the deployment files of any formats asked for (`mobilesam.deploy.formats`)."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .build import build_from
from .checkpoint import open_checkpoint, save_state_dict, student_meta, weights_name
from .deploy.formats import ALIASES
from .files import sha256_file, sha256_path

# File names by variant: Ultralytics picks its model builder by these suffixes
WEIGHTS_NAMES = {"vit_t": "mobile_sam.pt", "vit_b": "sam_b.pt", "vit_l": "sam_l.pt", "vit_h": "sam_h.pt"}
# the sidecar's per-format entries, under every name a format has had (a source's own are not carried over: they
# describe its files, not ours)
FORMAT_KEYS = tuple(ALIASES)


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
    precision: str = "fp32",
    verbose: bool = True,
    calibration: str | os.PathLike | None = None,
    calibration_images: int | None = None,
) -> dict[str, Path]:
    """Writes the official weights file and its sidecar, and the deployment files of `formats`, into `out_dir`.

    The weights load strictly into the model before anything is written; every file is written atomically. Each
    format's files are checked against PyTorch on two images before they are kept (`mobilesam.deploy.guard`);
    a format that fails raises `ExportCheckError` and leaves none of its files (nor the weights) behind.

    Args:
        source: `mobile_sam.pt`, `sam_vit_{b,l,h}_*.pth` or a training `.ckpt`.
        out_dir: output folder (created).
        onnx: also write `encoder.onnx` and `decoder.onnx` (the same as adding "onnx" to `formats`).
        opset: ONNX opset (default `mobilesam.deploy.onnx_graphs.DEFAULT_OPSET`).
        quantize: also write the int8 files of the formats that have them (ONNX, ExecuTorch); alone, it means ONNX.
        img_size: the input size, when the source does not say (see `mobilesam.checkpoint.open_checkpoint`).
        single_mask: the ONNX decoder returns one mask chosen as SAM's exported decoder does, instead of all four.
        formats: deployment formats, names or aliases of `mobilesam.deploy.formats.FORMATS` (onnx, executorch,
            openvino, litert (alias tflite), coreml).
        max_points: points per object the static-shape decoders hold (every format but ONNX; default
            `mobilesam.deploy.static_decoder.DEFAULT_MAX_POINTS`).
        precision: "fp32" or "fp16" (`_fp16` files, for the formats that have half precision).
        verbose: print what each writer reports (ExecuTorch's delegation summary).
        calibration: int8: a folder of images or shards to calibrate on (default: generated images).
        calibration_images: int8: how many calibration images (default
            `mobilesam.deploy.formats.CALIBRATION_IMAGES`).

    Returns:
        Role -> written path: "weights", "sidecar", ONNX's "encoder", "decoder" (and "_int8"), and
        "{format}_{role}" for the other formats ("openvino_encoder", "executorch_decoder_int8", ...).
    """
    from .deploy.formats import CALIBRATION_IMAGES, ExportOptions, check_formats, check_options
    from .deploy.static_decoder import DEFAULT_MAX_POINTS

    formats = check_formats(formats, onnx=onnx or (quantize and not formats))
    options = ExportOptions(
        precision=precision,
        quantize=quantize,
        max_points=DEFAULT_MAX_POINTS if max_points is None else max_points,  # 0 is refused, not the default
        opset=opset,
        single_mask=single_mask,
        verbose=verbose,
        img_size=img_size,
        calibration=None if calibration is None else str(calibration),
        calibration_images=CALIBRATION_IMAGES if calibration_images is None else calibration_images,
    )
    check_options(formats, options)  # refuse a bad option or a missing runtime before the slow part
    src = open_checkpoint(source, img_size)
    model = build_from(src)
    out = Path(out_dir)
    weights = out / WEIGHTS_NAMES.get(src.variant, weights_name(src.variant))  # a student: <student>.pt
    meta = {
        **_jsonable({k: v for k, v in src.meta.items() if k not in ("files", *FORMAT_KEYS)}),  # not its own files
        "img_size": src.img_size,
        **student_meta(src.variant),  # variant, and the student a sidecar names
        "source": str(src.path.resolve()),
        "source_sha256": sha256_file(src.path),
        "mobilesam_version": __version__,
        "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    options = dataclasses.replace(
        options, stamp={k: meta[k] for k in ("variant", "source_sha256", "mobilesam_version")}
    )
    written: dict[str, Path] = {}
    if formats:
        from .deploy.formats import write_format
        from .deploy.guard import reference

        ref = reference(model)  # PyTorch's side of every format's check, computed once
        for name in formats:
            files, info = write_format(name, model, out, options, ref)
            written.update({(role if name == "onnx" else f"{name}_{role}"): p for role, p in files.items()})
            meta[name] = _jsonable({**info, "files": {_rel(p, out): sha256_path(p) for p in files.values()}})
    meta["files"] = {_rel(p, out): sha256_path(p) for p in written.values()}
    for name in formats:  # companions of the role files (OpenVINO's .bin weights)
        meta["files"].update(meta[name].get("weight_files", {}))
    # Last, so that a failed export leaves no weights that look complete
    save_state_dict(model.state_dict(), weights, meta=meta)
    written["weights"] = weights
    written["sidecar"] = weights.with_suffix(".json")
    return written


def other_runtimes_hint(img_size: int, variant: str = "vit_t") -> str:
    """How to run a model of `img_size` in Ultralytics and the official MobileSAM code, which run at 1024 unless
    told otherwise ("" at 1024); for a student they cannot build (any but TinyViT-5M), that they cannot."""
    if variant not in WEIGHTS_NAMES:
        return (
            f"Ultralytics and the official MobileSAM code cannot build {variant} (they know SAM ViT-B/L/H and "
            f"TinyViT-5M only): run it with mobilesam (SAM('{variant}.pt'), build_sam('auto', '{variant}.pt'), which "
            "read the sidecar) or its exported files (mobilesam export --format ...)"
        )
    if img_size == 1024:
        return ""
    return (
        f"this model runs at img_size={img_size}; Ultralytics and the official code assume 1024 (wrong masks): "
        f"in Ultralytics pass imgsz={img_size} (SAM('mobile_sam.pt').predict(image, imgsz={img_size}, ...)); the "
        "official code's build_sam_vit_t has no img_size argument (image_size = 1024 in mobile_sam/build_sam.py): "
        f"set it to {img_size} there, or use mobilesam's build_sam('vit_t', 'mobile_sam.pt'), which reads the sidecar"
    )


def _rel(path: Path, out: Path) -> str:
    return path.relative_to(out).as_posix()
