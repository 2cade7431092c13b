"""Writing `encoder.xml` / `decoder.xml` (+ `.bin`): OpenVINO IR converted with OpenVINO's PyTorch frontend.

The encoder takes the image as SAM's encoder sees it (Bx3xSxS float32, normalised and zero-padded,
`mobilesam.deploy.runtime.normalize_pad`; the batch dimension is free, so the predictor embeds a batch of images in
one call); the decoder is `StaticDecoder` (a fixed number of points per object). Inputs and outputs carry the names
of the static interface (`mobilesam.deploy.interface`: `image` -> `image_embeddings`; `image_embeddings`,
`point_coords`, `point_labels` -> `low_res_masks`, `iou_predictions`). Each model's `rt_info` holds, under
`mobilesam`: `role`, `img_size`, `max_points`, `precision` and the export's stamp, which the predictor reads.

Conversion is `openvino.convert_model` on the module's `torch.export` program (OpenVINO's FX frontend): the plain
`model.image_encoder`, not `lowering.xnnpack_encoder` (OpenVINO folds BatchNorm and the attention-bias gather into
constants itself, its layer norms become MVN ops and its attention an SDPA op; same error, a smaller graph and a
faster conversion than the TorchScript-traced route). The decoder's layer norms are `nn.LayerNorm`s, so they too
become MVN.

fp16 (`--precision fp16`): the weights are stored in half precision (`save_model(compress_to_fp16=True)`, a
Convert to f32 after each, which the CPU plugin fuses), the predictor compiles with the CPU plugin's
`INFERENCE_PRECISION_HINT` = f16 where the plugin lists FP16 among its capabilities (AVX512-FP16 / AMX-FP16), and
every `FP32_OPS` node (MVN: LayerNorm's statistics; SDPA and Softmax: the attention matmuls and softmax) carries
OpenVINO's `precise` runtime attribute (what `ov::disable_fp16_compression` sets, saved in the IR), under which the
plugin runs it in f32 between f16 neighbours. On a CPU without native f16 the predictor asks for f32 (the
half-precision weights widened at load): asked for f16 there, the plugin silently runs bf16, whose error fails the
fp16 check. fp32 files hold float32 weights and are compiled with an explicit f32 hint: on CPUs with AMX /
AVX512-BF16 the plugin's default is bf16 too (~1e-2 error, which fails the fp32 check). `write` is the format's entry in
`mobilesam.deploy.formats`, which checks the files against PyTorch before keeping them.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ..files import sha256_file
from ..modeling import Sam
from .formats import FORMATS, file_name
from .interface import NAMES, describe
from .ov_runtime import RT_SECTION
from .static_decoder import StaticDecoder, example_inputs

if TYPE_CHECKING:
    from .formats import ExportOptions

SUFFIX, WEIGHTS_SUFFIX = FORMATS["openvino"].suffixes
# IR op types kept in f32 in fp16 files: LayerNorm (MVN), attention (SDPA: QK^T, softmax, AV) and any bare softmax
# (the IR writes opset8's softmax as "SoftMax": the static decoder's factored image-to-token attentions have three)
FP32_OPS = ("MVN", "ScaledDotProductAttention", "Softmax", "SoftMax")
PRECISE = ("precise", "0")  # the IR name and version of OpenVINO's DisableFP16Compression runtime attribute
FP16_NOTE = (
    "weights stored as float16 (compress_to_fp16); OpenVinoPredictor runs them with the CPU plugin's "
    "INFERENCE_PRECISION_HINT=f16 on CPUs whose plugin lists FP16 (AVX512-FP16 / AMX-FP16) and f32 elsewhere "
    "(weights widened at load; the plugin's own fallback there is bf16, too coarse); LayerNorm (MVN), attention "
    "(ScaledDotProductAttention: matmuls and softmax) and Softmax nodes carry the 'precise' runtime attribute and "
    "run in f32"
)


def require() -> None:
    """Raises ImportError naming the extra when OpenVINO (with its PyTorch frontend) is missing."""
    try:
        import openvino

        openvino.convert_model  # noqa: B018 (the converter ships with the runtime since 2023.1)
    except (ImportError, AttributeError) as e:
        raise ImportError(f"exporting OpenVINO IR needs openvino ({e}): pip install 'mobilesam[openvino]'") from e


def convert(
    module: nn.Module,
    args: tuple[Tensor, ...],
    input_names: tuple[str, ...],
    output_names: tuple[str, ...],
    dynamic_batch: bool = False,
) -> Any:
    """One module -> `openvino.Model` with the interface's tensor names; static input shapes, or with
    `dynamic_batch` a free first dimension of the (single) input (exported from a batch of two: torch.export
    specialises a dimension of size 1)."""
    import openvino

    shapes = [tuple(a.shape) for a in args]
    dynamic = None
    if dynamic_batch:
        (x,) = args
        args, shapes = (x.expand(2, *x.shape[1:]).contiguous(),), [(-1, *x.shape[1:])]
        dynamic = ({0: torch.export.Dim("batch", max=1024)},)
    with torch.no_grad():
        program = torch.export.export(module.eval(), args, dynamic_shapes=dynamic)
        model = openvino.convert_model(program, input=shapes)
    for port, name in zip(model.inputs, input_names, strict=True):
        port.get_tensor().set_names({name})
    for port, name in zip(model.outputs, output_names, strict=True):
        port.get_tensor().set_names({name})
    return model


def mark_precise(xml_path: Path, op_types: tuple[str, ...] = FP32_OPS) -> dict[str, int]:
    """Gives every layer of `op_types` in an IR file OpenVINO's `precise` runtime attribute (the serialised
    `DisableFP16Compression`, which the Python API cannot create): the CPU plugin then runs it in f32 under an f16
    inference precision. Returns op type -> layers marked."""
    tree = ET.parse(xml_path)
    marked: dict[str, int] = {}
    for layer in tree.getroot().iter("layer"):
        kind = layer.get("type")
        if kind not in op_types:
            continue
        rt = layer.find("rt_info")
        if rt is None:
            rt = ET.Element("rt_info")
            data = layer.find("data")
            layer.insert(0 if data is None else list(layer).index(data) + 1, rt)
        if not any(a.get("name") == PRECISE[0] for a in rt.iter("attribute")):
            ET.SubElement(rt, "attribute", {"name": PRECISE[0], "version": PRECISE[1]})
        marked[kind] = marked.get(kind, 0) + 1
    tree.write(xml_path, encoding="utf-8", xml_declaration=True)
    return marked


def save(model: Any, path: Path, precision: str, meta: Mapping[str, object]) -> tuple[Path, dict[str, int]]:
    """Saves an `openvino.Model` as `path` (+ `.bin`) with `meta` and the precision in its `mobilesam` rt_info;
    fp16: half-precision weights and `FP32_OPS` marked precise. Returns the path and op type -> nodes kept f32."""
    import openvino

    for key, value in {**meta, "precision": precision}.items():
        model.set_rt_info(value if isinstance(value, int) else str(value), [RT_SECTION, key])
    path.parent.mkdir(parents=True, exist_ok=True)
    openvino.save_model(model, path, compress_to_fp16=precision == "fp16")
    return path, mark_precise(path) if precision == "fp16" else {}


def export_openvino(
    model: Sam,
    out_dir: str | Path,
    precision: str = "fp32",
    max_points: int = 8,
    stamp: Mapping[str, object] = (),
) -> tuple[dict[str, Path], dict[str, Any]]:
    """Writes `encoder.xml`/`.bin` and `decoder.xml`/`.bin` (`encoder_fp16.xml`, ... for fp16).

    Args:
        model: the SAM model (any variant, any img_size), in eval mode; it is not modified.
        out_dir: output folder.
        precision: "fp32" or "fp16" (see the module's docstring).
        max_points: prompt points per object the decoder holds (a box takes two).
        stamp: extra metadata for both files' rt_info (variant, source checksum, version).

    Returns:
        Role -> path of the `.xml` (its `.bin` lies next to it), and a report: conversion seconds per role and, for
        fp16, the nodes kept in f32 per role.
    """
    require()
    if precision not in ("fp32", "fp16"):
        raise ValueError(f"OpenVINO files are fp32 or fp16, not {precision}")
    model = model.eval()
    s = model.img_size
    ex = example_inputs(s, max_points)
    jobs = {
        "encoder": (model.image_encoder, *NAMES["encoder"]),
        "decoder": (StaticDecoder(model, max_points), *NAMES["decoder"]),
    }
    out = Path(out_dir)
    files, seconds, kept = {}, {}, {}
    for role, (module, inputs, outputs) in jobs.items():
        start = time.perf_counter()
        meta = {**dict(stamp), "role": role, "img_size": s, "max_points": max_points}
        path = out / file_name(role, SUFFIX, precision)
        ir = convert(module, ex[role], inputs, outputs, dynamic_batch=role == "encoder")  # images batch
        files[role], kept[role] = save(ir, path, precision, meta)
        seconds[role] = round(time.perf_counter() - start, 1)
    report: dict[str, Any] = {"conversion_seconds": seconds}
    if precision == "fp16":
        report["fp32_nodes"] = kept
    return files, report


def cpu_f16() -> bool:
    """Whether this machine's CPU plugin computes in f16 (it lists FP16 among its optimisation capabilities)."""
    from .ov_runtime import core

    return "FP16" in core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def write(model: Sam, out_dir: Path, options: ExportOptions) -> tuple[dict[str, Path], dict[str, Any]]:
    """The format's writer (`mobilesam.deploy.formats`): role -> path, and the sidecar's description."""
    if options.quantize:
        raise ValueError("OpenVINO files have no int8 export here: drop --quantize")
    files, report = export_openvino(
        model, out_dir, precision=options.precision, max_points=options.max_points, stamp=options.stamp
    )
    fp16 = options.precision == "fp16"
    info = {
        **describe(options.max_points, batch="B"),
        "encoder_batch": "any",
        "input_names": {role: list(names[0]) for role, names in NAMES.items()},
        "output_names": {role: list(names[1]) for role, names in NAMES.items()},
        "weight_files": {
            p.with_suffix(WEIGHTS_SUFFIX).name: sha256_file(p.with_suffix(WEIGHTS_SUFFIX)) for p in files.values()
        },
        "inference_precision": "f16 where the CPU has it, else f32" if fp16 else "f32",
        "fp16": FP16_NOTE if fp16 else None,
        "fp32_ops": list(FP32_OPS) if fp16 else None,
        **report,
    }
    if fp16:
        info["f16_on_export_machine"] = cpu_f16()
    return files, info
