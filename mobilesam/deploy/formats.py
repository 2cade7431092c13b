"""Every deployment format in one table, and the one way each is written: staged, checked, then kept.

A format's writer (`write(model, out_dir, options) -> ({role: path}, info)`) puts its files into a staging
folder inside the output folder. The pairs it wrote (encoder + decoder, and their int8 versions) are then loaded
with the runtime's own predictor and checked against PyTorch (`mobilesam.deploy.guard`). Only when every pair
passes are the files moved into the output folder; otherwise the staging folder is removed and the export stops
with the check's error. Formats whose runtime does not run on this machine (Core ML off macOS) are validated
structurally by their writer instead, and say so in `info["checked"]`.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PRECISIONS = ("fp32", "fp16")


@dataclass(frozen=True)
class Format:
    """One deployment format: its writer module, files, extra and precisions."""

    name: str  # the `--format` value
    module: str  # holds `require()`, `write(model, out_dir, options)` and `SUFFIX`
    extra: str  # `pip install 'mobilesam[<extra>]'`
    precisions: tuple[str, ...]
    int8: bool  # `--quantize` writes int8 files too
    description: str

    def writer(self) -> Any:
        return importlib.import_module(self.module)

    def runs_here(self) -> bool:
        return self.name != "coreml" or sys.platform == "darwin"


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("onnx", "mobilesam.onnx.export", "onnx", PRECISIONS, True, "encoder.onnx, decoder.onnx (ONNX Runtime)"),
        Format(
            "executorch",
            "mobilesam.deploy.executorch",
            "executorch",
            ("fp32",),
            True,
            "encoder.pte, decoder.pte (ExecuTorch, XNNPACK)",
        ),
        Format(
            "openvino",
            "mobilesam.deploy.openvino",
            "openvino",
            PRECISIONS,
            False,
            "encoder.xml/.bin, decoder.xml/.bin (OpenVINO)",
        ),
        Format(
            "tflite", "mobilesam.deploy.litert", "litert", PRECISIONS, False, "encoder.tflite, decoder.tflite (LiteRT)"
        ),
        Format(
            "coreml",
            "mobilesam.deploy.coreml",
            "coreml",
            PRECISIONS,
            False,
            "encoder.mlpackage, decoder.mlpackage (Core ML; runs on macOS/iOS)",
        ),
    )
}


@dataclass(frozen=True)
class ExportOptions:
    """What a writer may use; each uses the fields that apply to its format."""

    precision: str = "fp32"
    quantize: bool = False
    max_points: int = 8
    opset: int | None = None  # ONNX
    single_mask: bool = False  # ONNX (the dynamic decoder)
    stamp: Mapping[str, object] = field(default_factory=dict)  # metadata for formats that carry it
    verbose: bool = True


def file_name(role: str, suffix: str, precision: str = "fp32") -> str:
    """`encoder` + `.xml` + fp16 -> `encoder_fp16.xml` (fp32 files carry no tag; int8 roles carry their own)."""
    return f"{role}{'' if precision == 'fp32' or role.endswith('_int8') else '_' + precision}{suffix}"


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


def check_options(formats: Sequence[str], options: ExportOptions) -> None:
    """Refuses a precision or `--quantize` a format does not have, and a missing runtime, before any work."""
    if options.precision not in PRECISIONS:
        raise ValueError(f"precision={options.precision!r}: choose from {', '.join(PRECISIONS)}")
    for name in formats:
        f = FORMATS[name]
        if options.precision not in f.precisions:
            raise ValueError(
                f"--format {name} has no {options.precision} export (it has {', '.join(f.precisions)}); "
                f"export {name} separately with --precision {f.precisions[0]}"
            )
        if options.quantize and not f.int8:
            raise ValueError(
                f"--format {name} has no int8 export: drop --quantize, or export {name} separately without it"
            )
        f.writer().require()
    from .static_decoder import check_max_points  # imports torch: only when exporting

    check_max_points(options.max_points)


def pairs(files: Mapping[str, Path], precision: str) -> list[tuple[str, Path, Path]]:
    """The (precision, encoder, decoder) pairs among a writer's files."""
    out = []
    for tag, p in (("", precision), ("_int8", "int8")):
        if f"encoder{tag}" in files and f"decoder{tag}" in files:
            out.append((p, files[f"encoder{tag}"], files[f"decoder{tag}"]))
    return out


def _publish(staging: Path, out: Path, files: Mapping[str, Path]) -> dict[str, Path]:
    """Moves everything in `staging` (companion files such as OpenVINO's `.bin` included) into `out`."""
    for item in sorted(staging.iterdir()):
        target = out / item.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)  # an `.mlpackage` from an earlier export
        os.replace(item, target)
    return {role: out / p.relative_to(staging) for role, p in files.items()}


def write_format(
    name: str, model: Any, out_dir: str | os.PathLike, options: ExportOptions, reference: Any = None
) -> tuple[dict[str, Path], dict[str, Any]]:
    """Writes one format's files into `out_dir`, keeping them only when they pass the export check.

    Args:
        name: a key of `FORMATS`.
        model: the SAM model, in eval mode.
        out_dir: output folder (created).
        options: precision, quantize and the format's own options.
        reference: `guard.reference(model)`, to share between formats (computed when None).

    Returns:
        (role -> path, the sidecar's entry for the format: the writer's info, the files' precision and the check's
        figures per pair, or `"checked"` saying what was validated instead).

    Raises:
        guard.ExportCheckError: a pair disagrees with PyTorch (nothing of this format is left in `out_dir`).
    """
    from . import load_predictor
    from .guard import check_export
    from .guard import reference as make_reference

    fmt = FORMATS[name]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}.", dir=out) as tmp:
        files, info = fmt.writer().write(model, Path(tmp), options)
        info = {**info, "precision": options.precision}
        if fmt.runs_here():
            reference = reference if reference is not None else make_reference(model)
            checks = {}
            for precision, enc, dec in pairs(files, options.precision):
                label = f"{enc.name} + {dec.name}"
                predictor = load_predictor(enc, dec)
                checks[label] = check_export(label, predictor, reference, precision)
                del predictor  # release the runtime's hold on the files before they move
            info["check"] = checks
        written = _publish(Path(tmp), out, files)
    return written, info
