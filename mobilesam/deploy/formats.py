"""Every deployment format in one table, and the one way each is written: staged, checked, then kept.

`FORMATS` says, per format: its name (the `--format` value and the sidecar's key) and accepted aliases, its file
suffixes, its writer module, its runtime predictor, the precisions it takes, whether it has int8, the platforms its
runtime runs on and the pip extra it needs. `mobilesam export`, `load_predictor`, the CLI's help and the tests read
it. A new format is two modules and one row: a writer (`require()`, and `write(model, out_dir, options) ->
({role: path}, info)` writing `encoder<suffix>` and `decoder<suffix>` with `file_name`), a runtime (a predictor
class taking `(encoder_path, decoder_path, threads=None)`; for static graphs a `runtime.StaticPredictor` with
`_encode` and `_decode`, reading the names and shapes of `interface`), and a `Format(...)` below.

A format's writer puts its files into a staging folder inside the output folder. The pairs it wrote (encoder +
decoder, and their int8 versions) are then loaded with the runtime's own predictor and checked against PyTorch
(`mobilesam.deploy.guard`). Only when every pair passes are the files moved into the output folder; otherwise the
staging folder is removed and the export stops with the check's error. Formats whose runtime does not run on this
machine (Core ML off macOS) are validated structurally by their writer instead, and say so in `info["checked"]`.
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
# sys.platform -> (the systems it names, the machine to copy files to)
PLATFORMS = {"darwin": ("macOS and iOS", "a Mac")}


@dataclass(frozen=True)
class Format:
    """One deployment format: its files, writer, runtime predictor, precisions, platforms and extra."""

    name: str  # the `--format` value and the sidecar's key
    runtime: str  # the runtime, in words ("ONNX Runtime")
    suffixes: tuple[str, ...]  # the graph files' suffix (what `load_predictor` picks by), then companion files'
    writer_module: str  # a module of this package holding `require()` and `write(model, out_dir, options)`
    # "module:Class" (a module of this package), the runtime predictor `load_predictor` builds ("": a tool runs
    # the files)
    predictor: str
    runtime_module: str  # what the predictor needs to run the files (its tests skip without it)
    extra: str  # `pip install 'mobilesam[<extra>]'`
    precisions: tuple[str, ...] = PRECISIONS
    int8: bool = False  # `--quantize` writes int8 files too
    platforms: tuple[str, ...] = ()  # `sys.platform` values its runtime runs on; empty: every platform
    aliases: tuple[str, ...] = ()  # other `--format` values accepted for it
    note: str = ""  # a few words for the CLI's help

    @property
    def suffix(self) -> str:
        """The graph files' suffix: `encoder<suffix>`, `decoder<suffix>`."""
        return self.suffixes[0]

    def writer(self) -> Any:
        """The writer module (imports PyTorch and the format's converter)."""
        return importlib.import_module(f".{self.writer_module}", __package__)

    def predictor_class(self) -> type:
        """The runtime predictor class (imports numpy, Pillow and the runtime only)."""
        module, cls = self.predictor.split(":")
        return getattr(importlib.import_module(f".{module}", __package__), cls)

    def runs_here(self) -> bool:
        """Whether the runtime runs on this machine (`platforms`)."""
        return not self.platforms or sys.platform in self.platforms

    def platform_names(self) -> str:
        """The systems the runtime runs on, in words ("macOS and iOS"; "any" for every platform)."""
        return " and ".join(PLATFORMS.get(p, (p, ""))[0] for p in self.platforms) or "any"

    def require_platform(self, *paths: str | os.PathLike) -> None:
        """Off `platforms`: RuntimeError naming the files, where to run them and the formats that run here."""
        if self.runs_here():
            return
        where = " or ".join(PLATFORMS.get(p, ("", f"a {p} machine"))[1] for p in self.platforms)
        others = ", ".join(f.name for f in FORMATS.values() if f.runs_here() and f.predictor)
        raise RuntimeError(
            f"{self.runtime} models run on {self.platform_names()} only (this is {sys.platform}): copy "
            f"{' and '.join(map(str, paths))} to {where}, or export another format here (--format {others})"
        )

    def help(self) -> str:
        """The format in the CLI's `--format` help: `litert (.tflite, LiteRT; also tflite)`."""
        where = f"; runs on {self.platform_names()} only" if self.platforms else ""
        also = f"; also {', '.join(self.aliases)}" if self.aliases else ""
        return f"{self.name} ({'/'.join(self.suffixes)}, {self.runtime}{self.note}{where}{also})"


# One row per format (modules are in this package): a new format is its writer, its runtime and a row here
FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("onnx", "ONNX Runtime", (".onnx",), "onnx_export", "onnx_runtime:OnnxPredictor", "onnxruntime", "onnx",
               int8=True),
        Format("executorch", "ExecuTorch", (".pte",), "executorch", "et_runtime:ExecuTorchPredictor",
               "executorch.runtime", "executorch", precisions=("fp32",), int8=True, note=" on XNNPACK"),
        Format("openvino", "OpenVINO", (".xml", ".bin"), "openvino", "ov_runtime:OpenVinoPredictor", "openvino",
               "openvino"),
        Format("litert", "LiteRT", (".tflite",), "litert", "litert_runtime:LiteRtPredictor",
               "ai_edge_litert.interpreter", "litert", aliases=("tflite",)),
        Format("coreml", "Core ML", (".mlpackage",), "coreml", "coreml_runtime:CoreMLPredictor", "coremltools",
               "coreml", platforms=("darwin",)),
        # annotation tools: the tool runs the files (no predictor here; each writer checks its graphs)
        Format("anylabeling", "AnyLabeling / X-AnyLabeling", (".onnx", ".yaml"), "anylabeling", "", "onnxruntime",
               "onnx", precisions=("fp32",), aliases=("x-anylabeling",)),
        Format("osam", "osam (labelme)", (".onnx", ".json"), "osam", "", "onnxruntime", "onnx",
               precisions=("fp32",)),
        # the browser: a static page running the ONNX graphs with onnxruntime-web (`mobilesam web DIR` serves it)
        Format("web", "onnxruntime-web", (".onnx", ".html"), "web", "", "onnxruntime", "onnx", int8=True,
               note=" static page; serve with `mobilesam web DIR`"),
    )
}  # fmt: skip
ALIASES = {alias: f.name for f in FORMATS.values() for alias in (f.name, *f.aliases)}  # every accepted name


def get_format(name: str) -> Format:
    """The format of a `--format` value or alias (case and spaces ignored); ValueError naming the known ones."""
    (key,) = check_formats([name])
    return FORMATS[key]


def by_suffix(suffix: str) -> Format | None:
    """The format whose graph files end in `suffix` (".onnx"), or None."""
    return next((f for f in FORMATS.values() if f.predictor and f.suffix == suffix.lower()), None)


CALIBRATION_IMAGES, MAX_CALIBRATION_IMAGES = 16, 1024  # int8 calibration images: default, most


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
    img_size: int | None = None  # `--img-size`, when given (checked here; the model is built with it)
    calibration: str | None = None  # int8: a folder of images or shards to calibrate on (None: generated images)
    calibration_images: int = CALIBRATION_IMAGES  # int8: how many of them


MAX_POINTS = 64  # the most prompt slots a static decoder may hold (each costs time on every decode)
OPSET_FORMATS = ("onnx",)  # the formats `--opset` and `--single-mask` apply to


def _check_int(value: object, option: str, low: int, high: int, why: str) -> None:
    """Refuses a `value` of `option` that is not an int in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{option} {value!r} is out of range: choose an integer from {low} to {high} ({why})")


def file_name(role: str, suffix: str, precision: str = "fp32") -> str:
    """`encoder` + `.xml` + fp16 -> `encoder_fp16.xml` (fp32 files carry no tag; int8 roles carry their own)."""
    return f"{role}{'' if precision == 'fp32' or role.endswith('_int8') else '_' + precision}{suffix}"


def check_formats(formats: Sequence[str] | str, onnx: bool = False) -> list[str]:
    """A comma list or sequence of formats -> their names (aliases resolved), checked against `FORMATS`
    (`onnx=True` adds "onnx")."""
    if isinstance(formats, str):
        formats = [f for f in formats.split(",") if f.strip()]
    names = [f.strip().lower() for f in formats]
    unknown = [f for f in names if f not in ALIASES]
    if unknown:
        raise ValueError(f"unknown export format(s) {unknown}: choose from {', '.join(FORMATS)} (a comma list)")
    out = [ALIASES[f] for f in names]
    if onnx and "onnx" not in out:
        out.insert(0, "onnx")
    return list(dict.fromkeys(out))


def check_options(formats: Sequence[str], options: ExportOptions) -> None:
    """Refuses, before any work, every option out of range or that no format asked for takes: `--max-points`
    (2 to `MAX_POINTS`), `--opset` (the exporter's range; onnx only), `--single-mask` (onnx only), `--img-size` (a
    positive multiple of 16), the precision, `--quantize` for a format without int8, `--calibration` without
    `--quantize` or not a folder, and a missing runtime."""
    from ..variants import check_img_size

    _check_int(options.max_points, "--max-points", 2, MAX_POINTS, "points per object; a box takes two")
    if options.img_size is not None:
        check_img_size(options.img_size, "--img-size", multiple=16)
    if options.precision not in PRECISIONS:
        raise ValueError(f"precision={options.precision!r}: choose from {', '.join(PRECISIONS)}")
    names = [get_format(name).name for name in formats]
    _check_calibration(options)
    for option, used in (("--opset", options.opset is not None), ("--single-mask", options.single_mask)):
        if used and not set(names) & set(OPSET_FORMATS):
            raise ValueError(
                f"{option} applies to --format {', '.join(OPSET_FORMATS)} only, not {', '.join(names) or 'none'}: "
                f"drop {option} or add --format onnx"
            )
    if options.opset is not None:
        from .onnx_graphs import check_opset  # imports torch: only when exporting

        check_opset(options.opset)
    for f in map(get_format, names):
        if options.precision not in f.precisions:
            raise ValueError(
                f"--format {f.name} has no {options.precision} export (it has {', '.join(f.precisions)}); "
                f"export {f.name} separately with --precision {f.precisions[0]}"
            )
        if options.quantize and not f.int8:
            raise ValueError(
                f"--format {f.name} has no int8 export: drop --quantize, or export {f.name} separately without it"
            )
        f.writer().require()


def _check_calibration(options: ExportOptions) -> None:
    """`--calibration` and `--calibration-images` apply to int8 files: a folder, and a count in range."""
    n = options.calibration_images
    if options.calibration is None and n == CALIBRATION_IMAGES:
        return
    if not options.quantize:
        raise ValueError("--calibration and --calibration-images apply to int8 files: add --quantize, or drop them")
    _check_int(n, "--calibration-images", 1, MAX_CALIBRATION_IMAGES, "images the int8 activations are calibrated on")
    if options.calibration is not None and not Path(options.calibration).is_dir():
        raise ValueError(
            f"--calibration {options.calibration} is not a folder: pass a folder of images (jpg, png, ...) or of "
            "shards (*.tar), or leave it out to calibrate on generated images"
        )


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
        name: a key of `FORMATS` (or an alias).
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

    fmt = get_format(name)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}.", dir=out) as tmp:
        files, info = fmt.writer().write(model, Path(tmp), options)
        info = {**info, "precision": options.precision}
        if fmt.runs_here() and fmt.predictor:  # an annotation tool's files are checked by their writer
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
