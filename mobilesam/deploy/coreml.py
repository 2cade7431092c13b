"""Writing `encoder.mlpackage` and `decoder.mlpackage`: Core ML ML programs converted with coremltools.

The encoder takes the image as SAM's encoder sees it (input `image`, 1x3xSxS float32, normalised and zero-padded,
`mobilesam.deploy.runtime.normalize_pad`) and returns `image_embeddings`; the decoder is `StaticDecoder` (inputs
`image_embeddings`, `point_coords`, `point_labels`; outputs `low_res_masks`, `iou_predictions`). Each package's
user-defined metadata holds `img_size`, `max_points`, `graph` (encoder or decoder) and `precision`, which
`CoreMLPredictor` reads. Both are ML programs for iOS 16 / macOS 13 (`TARGET`) or later.

Conversion goes through `torch.export` (an ATen-dialect `ExportedProgram`), not `torch.jit.trace`: coremltools'
TorchScript frontend fails on both encoders (`view_as` of the BatchNorm folding the model does at trace time; a
tensor-to-int cast in `lowering.xnnpack_encoder`). The
encoder converted is the model's own `image_encoder`: coremltools folds BatchNorm and the attention-bias gather
into constants itself, and its layer norms become Core ML `layer_norm` ops, which fp16 can keep in float32 one by
one, where `xnnpack_encoder`'s linear layers with a 1/C vector would round to fp16 (and crash coremltools'
linear-bias fusion pass). The decoder's layer norms are `nn.LayerNorm`s too (`StaticDecoder`'s own).

fp16 (`--precision fp16`) is Core ML's half-precision compute (`ct.transform.FP16ComputePrecision`): weights are
stored as float16 and convolutions, linear layers, matmuls, GELU, the point encoding (`sin`, `cos`) and the
elementwise ops run in float16, but every `layer_norm` and `softmax` (`FP32_OPS`; the norms are single `layer_norm`
ops, nothing is decomposed into reductions) takes and returns float32, with cast ops around it and its scale and
shift in float32. Inputs and outputs are float32 in both precisions. The Neural Engine computes in float16 only,
so with `compute_units` "ALL" Core ML is expected to place the float32 ops on the CPU or GPU (not measured here).

Core ML runs only on macOS and iOS (the format's `platforms`), so off macOS the export check cannot run these
files: `write` validates each package structurally instead (on every platform; on a Mac the check then runs them
too): `validate` reloads the package from disk and checks its interface, metadata, that every MIL op is available
for `TARGET`, and in fp16 where each op computes; `info["checked"]` says what was done.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from ..modeling import Sam
from .formats import FORMATS, file_name
from .interface import NAMES, describe, static_shapes
from .static_decoder import StaticDecoder, example_inputs

if TYPE_CHECKING:
    from .formats import ExportOptions

COREML = FORMATS["coreml"]
SUFFIX = COREML.suffix

TARGET = "iOS16"  # `ct.target.iOS16`, macOS 13: ML programs with float32 layer norms inside an fp16 graph
# MIL ops that stay float32 in the fp16 files (the norms are single `layer_norm` ops: nothing is decomposed)
FP32_OPS = ("layer_norm", "softmax")
FP16_WEIGHT_OPS = ("conv", "linear")  # ops whose weights fp16 stores in half precision
FP16_NOTE = (
    "Core ML float16 compute (FP16ComputePrecision): weights float16; conv, linear, matmul, GELU, sin/cos and the "
    "elementwise ops in float16; every layer_norm and softmax (inputs, outputs, scale and shift) in float32; inputs "
    "and outputs float32"
)


def require() -> None:
    """Raises ImportError naming the extra when coremltools is missing."""
    try:
        import coremltools  # noqa: F401
    except ImportError as e:
        raise ImportError(
            f"exporting Core ML (.mlpackage) files needs coremltools ({e}): pip install 'mobilesam[coreml]'"
        ) from e


class _Encoder(nn.Module):
    """The image encoder with its input named `image` (`torch.export` names the program's inputs by argument)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, image: Tensor) -> Tensor:
        return self.encoder(image)


def _fp32_op(op: Any) -> bool:
    """Whether a MIL op stays float32 in the fp16 files (`FP16ComputePrecision`'s op selector is its negation)."""
    return op.op_type in FP32_OPS


@contextlib.contextmanager
def _quiet(show: bool) -> Iterator[None]:
    """coremltools' progress bars, its untested-torch-version warning and its log lines shown or hidden."""
    if show:
        yield
        return
    logger = logging.getLogger("coremltools")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def convert(
    module: nn.Module,
    args: tuple[Tensor, ...],
    outputs: tuple[str, ...],
    precision: str = "fp32",
    metadata: dict[str, object] | None = None,
    verbose: bool = False,
) -> Any:
    """One module -> a `ct.models.MLModel` (ML program for `TARGET`, in memory; `.save(path)` writes it).

    Args:
        module: the graph, whose `forward` argument names become the inputs' names.
        args: example inputs (their shapes are the model's fixed shapes).
        outputs: the outputs' names.
        precision: "fp32" or "fp16" (see the module's docstring).
        metadata: user-defined metadata (values written as strings).
        verbose: show coremltools' progress bars and warnings.
    """
    import coremltools as ct

    if precision == "fp32":
        compute_precision = ct.precision.FLOAT32
    elif precision == "fp16":
        compute_precision = ct.transform.FP16ComputePrecision(op_selector=lambda op: not _fp32_op(op))
    else:
        raise ValueError(f"Core ML files are fp32 or fp16, not {precision}")
    with torch.no_grad(), _quiet(verbose):
        program = torch.export.export(module.eval(), args).run_decompositions({})
        mlmodel = ct.convert(
            program,
            outputs=[ct.TensorType(name=n, dtype=np.float32) for n in outputs],  # fp16 would default to float16
            convert_to="mlprogram",
            minimum_deployment_target=getattr(ct.target, TARGET),
            compute_precision=compute_precision,
            skip_model_load=True,  # nothing to load off macOS; on a Mac the predictor compiles it
        )
    for key, value in (metadata or {}).items():
        mlmodel.user_defined_metadata[key] = str(value)
    return mlmodel


def _program(path: Path) -> Any:
    """The ML program of a saved package, reloaded from its files (spec and weights) as a PyMIL program."""
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load as load_mil

    with _quiet(False):
        mlmodel = ct.models.MLModel(str(path), skip_model_load=True)
        spec = mlmodel.get_spec()
        program = None
        if spec.WhichOneof("Type") == "mlProgram":
            program = load_mil(spec, spec.specificationVersion, mlmodel.weights_dir)
    return mlmodel, spec, program


def _operations(block: Any) -> Iterator[Any]:
    for op in block.operations:
        yield op
        for inner in op.blocks:
            yield from _operations(inner)


def _dtype(var: Any) -> str:
    from coremltools.converters.mil.mil import types

    t = var.dtype if types.is_tensor(var.sym_type) else var.sym_type
    return types.builtin_to_string(t)


class CoreMLValidationError(RuntimeError):
    """A written package is not the one the export meant to write; it was not kept."""


def validate(
    path: str | os.PathLike, role: str, options: ExportOptions, img_size: int | None = None
) -> dict[str, dict[str, int]]:
    """Checks a written package without running it (Core ML runs on macOS and iOS only).

    Reloads the package from disk (`ct.models.MLModel(path, skip_model_load=True)`; its ML program from the spec
    and the weight file) and checks: an ML program for `TARGET`; the inputs and outputs of `static_shapes`
    (names, order, shapes, float32); the metadata `CoreMLPredictor` reads; every MIL op in coremltools' opset for
    `TARGET`; in fp32, no float16 value anywhere; in fp16, every `FP32_OPS` op computing in float32 (its input,
    scale, shift and output) and every conv and linear layer computing in float16 with a float16 constant weight.

    Args:
        path: the `.mlpackage`.
        role: "encoder" or "decoder".
        options: the export's options (precision, max_points).
        img_size: the model's img_size (None: the metadata's, which the shapes must match).

    Returns:
        {"ops": op type -> count (constants aside), "float32_ops" / "float16_ops": op type -> count of the ops
        computing in that precision}.

    Raises:
        CoreMLValidationError: the package differs; the message names every difference.
    """
    import coremltools as ct
    from coremltools.converters.mil.mil.ops.registry import SSAOpRegistry

    path = Path(path)
    if not (path / "Manifest.json").is_file():
        raise CoreMLValidationError(f"{path} is not a Core ML package (no Manifest.json)")
    mlmodel, spec, program = _program(path)
    if program is None:
        raise CoreMLValidationError(f"{path} holds a {spec.WhichOneof('Type')} model, not an ML program")
    problems: list[str] = []
    target = getattr(ct.target, TARGET)
    if spec.specificationVersion != int(target):
        problems.append(f"specification version {spec.specificationVersion}, not {int(target)} ({TARGET})")
    meta = dict(mlmodel.user_defined_metadata)
    if img_size is None:
        img_size = int(meta["img_size"]) if meta.get("img_size", "").isdigit() else 0
    want = {"img_size": img_size, "max_points": options.max_points, "graph": role, "precision": options.precision}
    problems += [f"metadata {k}={meta.get(k)!r}, not {str(v)!r}" for k, v in want.items() if meta.get(k) != str(v)]
    array = ct.proto.FeatureTypes_pb2.ArrayFeatureType
    for kind, features, shapes in zip(
        ("inputs", "outputs"),
        (spec.description.input, spec.description.output),
        static_shapes(role, img_size, options.max_points),
    ):
        got = [
            (f.name, tuple(f.type.multiArrayType.shape), array.ArrayDataType.Name(f.type.multiArrayType.dataType))
            for f in features
        ]
        expected = [(name, shape, "FLOAT32") for name, shape in shapes.items()]
        if got != expected:
            problems.append(f"{kind} {_features(got)}, not {_features(expected)}")

    ops = [op for f in program.functions.values() for op in _operations(f) if op.op_type != "const"]
    opset = {t for t, versions in SSAOpRegistry.core_ops.items() if any(v <= target for v in versions)}
    unknown = sorted({op.op_type for op in ops} - opset)
    if unknown:
        problems.append(f"ops outside coremltools' {TARGET} opset: {unknown}")
    computing: dict[str, Counter] = {"fp32": Counter(), "fp16": Counter()}
    for op in ops:
        for dtype in {_dtype(v) for v in op.outputs} & computing.keys():
            computing[dtype][op.op_type] += 1
    if options.precision == "fp32" and computing["fp16"]:
        problems.append(f"float16 values in an fp32 file (from {sorted(computing['fp16'])})")
    if options.precision == "fp16":
        problems += _fp16_placement(ops)
    if problems:
        raise CoreMLValidationError(f"{path} failed its structural check: {'; '.join(problems)}")
    return {
        "ops": dict(sorted(Counter(op.op_type for op in ops).items())),
        "float32_ops": dict(sorted(computing["fp32"].items())),
        "float16_ops": dict(sorted(computing["fp16"].items())),
    }


def _features(features: list[tuple[str, tuple[int, ...], str]]) -> str:
    return ", ".join(f"{name} {'x'.join(map(str, shape))} {dtype.lower()}" for name, shape, dtype in features) or "none"


def _fp16_placement(ops: list[Any]) -> list[str]:
    """Where the fp16 file's ops compute: the problems found (empty when as `FP16_NOTE` says)."""
    problems = []
    kinds = Counter(op.op_type for op in ops)
    for name in FP32_OPS:
        if not kinds[name]:
            problems.append(f"no {name} op (the norms or the attention were decomposed)")
    for op in ops:
        x = op.inputs.get("x")
        if x is None:
            continue
        if op.op_type in FP32_OPS:
            scale = [op.inputs[k] for k in ("gamma", "beta") if op.inputs.get(k) is not None]
            if {_dtype(v) for v in (x, *scale, *op.outputs)} != {"fp32"}:
                problems.append(f"{op.op_type} {op.name} computes in {_dtype(x)}, not float32")
        elif op.op_type in FP16_WEIGHT_OPS:
            weight = op.inputs.get("weight")
            if _dtype(x) != "fp16" or weight is None or _dtype(weight) != "fp16" or weight.op.op_type != "const":
                problems.append(f"{op.op_type} {op.name} computes in {_dtype(x)}, not float16 with float16 weights")
    return problems


def _save(mlmodel: Any, path: Path) -> Path:
    """Saves a package atomically: written next to `path`, then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(f".{path.stem}.partial{SUFFIX}")  # coremltools insists on the suffix
    shutil.rmtree(staged, ignore_errors=True)
    with _quiet(False):
        mlmodel.save(str(staged))
    if path.exists():
        shutil.rmtree(path)
    os.replace(staged, path)
    return path


def export_coreml(
    model: Sam,
    out_dir: str | os.PathLike,
    precision: str = "fp32",
    max_points: int = 8,
    stamp: dict[str, object] | None = None,
    verbose: bool = False,
) -> tuple[dict[str, Path], dict[str, float]]:
    """Writes `encoder.mlpackage` and `decoder.mlpackage` (`encoder_fp16.mlpackage`, `decoder_fp16.mlpackage`).

    Args:
        model: the SAM model (any img_size), in eval mode; it is not modified.
        out_dir: output folder.
        precision: "fp32" or "fp16" (see the module's docstring).
        max_points: prompt points per object the decoder holds (a box takes two).
        stamp: extra metadata for both packages (variant, source checksum, version).
        verbose: show coremltools' progress bars and warnings.

    Returns:
        Role -> path, and role -> conversion seconds.
    """
    require()
    model = model.eval()
    s = model.img_size
    ex = example_inputs(s, max_points)
    jobs = {
        "encoder": (_Encoder(model.image_encoder), NAMES["encoder"][1]),
        "decoder": (StaticDecoder(model, max_points), NAMES["decoder"][1]),
    }
    out = Path(out_dir)
    files, seconds = {}, {}
    for role, (module, outputs) in jobs.items():
        start = time.perf_counter()
        meta = {**(stamp or {}), "img_size": s, "max_points": max_points, "graph": role, "precision": precision}
        mlmodel = convert(module, ex[role], outputs, precision, meta, verbose)
        files[role] = _save(mlmodel, out / file_name(role, SUFFIX, precision))
        seconds[role] = round(time.perf_counter() - start, 1)
    return files, seconds


def _checked_note(precision: str) -> str:
    """`info["checked"]`: what `validate` established, and whether Core ML ran the packages (on macOS only)."""
    ran = COREML.runs_here()
    return (
        (
            "validated structurally, then run by Core ML in the export check"
            if ran
            else f"validated structurally, not run ({COREML.runtime} runs on {COREML.platform_names()} only)"
        )
        + f": each package reloaded from disk is an ML program for {TARGET} with the interface's input and output "
        "names, shapes and float32 types and the metadata the predictor reads, every MIL op is in coremltools' "
        "opset for the target, and "
        + (
            "every layer_norm and softmax computes in float32 while every conv and linear layer computes in float16 "
            "with float16 weights"
            if precision == "fp16"
            else "no value is float16"
        )
        + (
            ""
            if ran
            else ". Check it on a Mac: load_predictor(encoder, decoder) and mobilesam.deploy.guard.check_export"
        )
    )


def write(model: Sam, out_dir: Path, options: ExportOptions) -> tuple[dict[str, Path], dict[str, Any]]:
    """The format's writer (`mobilesam.deploy.formats`): role -> path, and the sidecar's description.

    Core ML cannot run here, so each package is validated structurally (`validate`) before it is handed back.
    """
    if options.quantize:
        raise ValueError("Core ML files have no int8 export here: drop --quantize")
    files, seconds = export_coreml(
        model,
        out_dir,
        precision=options.precision,
        max_points=options.max_points,
        stamp=dict(options.stamp),
        verbose=options.verbose,
    )
    structure = {role: validate(path, role, options, model.img_size) for role, path in files.items()}
    info = {
        **describe(options.max_points),
        "inputs": {role: list(names[0]) for role, names in NAMES.items()},
        "outputs": {role: list(names[1]) for role, names in NAMES.items()},
        "minimum_deployment_target": f"{TARGET} / macOS 13",
        "fp16": FP16_NOTE if options.precision == "fp16" else None,
        "checked": _checked_note(options.precision),
        "mil_ops": {role: r["ops"] for role, r in structure.items()},
        "float32_ops": {role: r["float32_ops"] for role, r in structure.items()}
        if options.precision == "fp16"
        else None,
        "conversion_seconds": seconds,
    }
    return files, info
