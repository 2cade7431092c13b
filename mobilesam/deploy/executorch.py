"""Writing `encoder.pte` and `decoder.pte`: ExecuTorch programs lowered to XNNPACK, float or int8 (PTQ).

The encoder takes the image as SAM's encoder sees it: 1x3xSxS float32, normalised with SAM's pixel mean and std
and zero-padded at the bottom and right (the predictor resizes with PIL and normalises in numpy,
`mobilesam.deploy.runtime.normalize_pad`), so that every op of the graph runs in XNNPACK. The decoder is
`StaticDecoder` (a fixed number of points per object) with its layer norms as linear layers
(`lowering.replace_layer_norms`: XNNPACK has no layer-norm kernel; this writer alone rewrites them). Each program
also holds constant methods `img_size`, `max_points`, `num_masks` and `graph`, which the predictor reads. `write`
is the format's entry in `mobilesam.deploy.formats`, which checks the programs against PyTorch before keeping them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ..files import write_bytes
from ..modeling import Sam
from .calibration import Calibration, generated_images, read_calibration
from .formats import FORMATS, file_name
from .interface import describe
from .lowering import DECOMPOSITIONS, INT8_DECOMPOSITIONS, replace_layer_norms, xnnpack_encoder
from .quantize import keep_float_for, own_layers, ptq
from .static_decoder import DEFAULT_MAX_POINTS, StaticDecoder, example_inputs

if TYPE_CHECKING:
    from .formats import ExportOptions

SUFFIX = FORMATS["executorch"].suffix

PTE_NAMES = {role: file_name(role, SUFFIX) for role in ("encoder", "decoder")}
PTE_INT8_NAMES = {role: file_name(f"{role}_int8", SUFFIX) for role in ("encoder", "decoder")}
# ops that must run in XNNPACK (edge-dialect names, as in `get_delegation_info`'s table)
HEAVY_OPS = ("convolution", "linear", "addmm", "mm", "bmm", "layer_norm", "softmax", "scaled_dot_product_attention")
CALIBRATION_IMAGES = 4  # generated images, the int8 path before real calibration (the benchmark's baseline)


def require() -> None:
    """Raises ImportError naming the extra when ExecuTorch is missing."""
    try:
        import executorch  # noqa: F401
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner  # noqa: F401
    except ImportError as e:
        raise ImportError("exporting ExecuTorch programs needs executorch: pip install 'mobilesam[executorch]'") from e


def calibration_images(img_size: int, n: int = CALIBRATION_IMAGES, seed: int = 0) -> list[Tensor]:
    """Generated calibration images (`calibration.generated_images`): the fallback when no real images are given."""
    return generated_images(img_size, n, seed)


def lower(
    module: nn.Module,
    args: tuple[Tensor, ...],
    constants: Mapping[str, Any] = (),
    verbose: bool = False,
    decompositions: Mapping[Any, Any] = DECOMPOSITIONS,
) -> tuple[bytes, Any]:
    """`torch.export` + our decompositions + XNNPACK lowering -> (.pte bytes, delegation info)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.devtools.backend_debug import get_delegation_info
    from executorch.exir import to_edge_transform_and_lower

    with torch.no_grad():
        program = torch.export.export(module, args).run_decompositions(dict(decompositions))
        edge = to_edge_transform_and_lower(
            program, partitioner=[XnnpackPartitioner()], constant_methods=dict(constants) or None
        )
    info = get_delegation_info(edge.exported_program().graph_module)
    if verbose:
        print(info.get_summary().strip())
    return edge.to_executorch().buffer, info


def portable_heavy_ops(info: Any) -> dict[str, int]:
    """Heavy ops (conv, linear, matmul, layer norm, softmax, attention) left to portable kernels: name -> count."""
    df = info.get_operator_delegation_dataframe()
    left = {}
    for op, n in zip(df["op_type"], df["occurrences_in_non_delegated_graphs"]):
        name = str(op).removeprefix("aten_").rsplit("_", 1)[0]
        if n and any(name == h or name.startswith(h + "_") for h in HEAVY_OPS):
            left[str(op)] = int(n)
    return left


def delegation_report(info: Any) -> dict[str, Any]:
    """What XNNPACK took: delegated subgraphs, node counts, and every op left to portable kernels with its count."""
    df = info.get_operator_delegation_dataframe()
    portable = {
        str(op): int(n)
        for op, n in zip(df["op_type"], df["occurrences_in_non_delegated_graphs"])
        if n and str(op) not in ("Total", "getitem")
    }
    return {
        "delegated_subgraphs": int(info.num_delegated_subgraphs),
        "delegated_nodes": int(info.num_delegated_nodes),
        "portable_nodes": int(info.num_non_delegated_nodes),
        "portable_ops": portable,
    }


def export_executorch(
    model: Sam,
    out_dir: str | os.PathLike,
    quantize: bool = False,
    max_points: int = DEFAULT_MAX_POINTS,
    verbose: bool = True,
    calibration: Calibration | None = None,
    keep_float: bool = True,
) -> tuple[dict[str, Path], dict[str, dict[str, Any]]]:
    """Writes `encoder.pte` and `decoder.pte` (and with `quantize` `encoder_int8.pte`, `decoder_int8.pte`).

    Args:
        model: the SAM model (any variant, any img_size), in eval mode; it is not modified.
        out_dir: output folder.
        quantize: also write int8 programs (XNNPACK static PTQ, per-channel weights).
        max_points: prompt points per object the decoder holds (a box takes two).
        verbose: print each program's delegation summary.
        calibration: the int8 calibration images (`calibration.read_calibration`); None: generated ones.
        keep_float: keep `quantize.keep_float_for`'s layers (the layer norms) and the decoder's own ops float; False
            quantizes all it can.

    Returns:
        Role ("encoder", "decoder", "encoder_int8", "decoder_int8") -> path, and file name -> its delegation
        report (`delegation_report`).

    Raises:
        RuntimeError: a convolution, linear layer, matmul, layer norm, softmax or attention was left outside
            XNNPACK (nothing is written then).
    """
    require()
    model = model.eval()
    s = model.img_size
    ex = example_inputs(s, max_points)
    modules = {
        "encoder": xnnpack_encoder(model.image_encoder),
        "decoder": replace_layer_norms(StaticDecoder(model, max_points).eval()),  # XNNPACK has no layer norm
    }
    consts = {"img_size": s, "max_points": max_points, "num_masks": model.mask_decoder.num_mask_tokens}
    jobs = [(role, modules[role], PTE_NAMES[role]) for role in ("encoder", "decoder")]
    if quantize:
        images = (calibration or read_calibration(None, s)).images
        calib = {
            "encoder": [(x,) for x in images],
            "decoder": [_decoder_calibration(modules["encoder"], x, max_points) for x in images],
        }
        for role in ("encoder", "decoder"):
            kept = keep_float_for(modules[role]) if keep_float else []
            # the decoder's own ops (prompt encoding, mask product) and its transformer stay float (`own_layers`)
            only = own_layers(modules[role]) if keep_float and role == "decoder" else None
            q = ptq(modules[role], ex[role], calib[role], keep_float=kept, only=only)
            jobs.append((f"{role}_int8", q, PTE_INT8_NAMES[role]))
    out = Path(out_dir)
    staged: dict[str, tuple[bytes, Path]] = {}
    reports = {}
    for role, module, name in jobs:
        if verbose:
            print(f"{name}: lowering to XNNPACK")
        table = INT8_DECOMPOSITIONS if role.endswith("_int8") else DECOMPOSITIONS
        data, info = lower(module, ex[role.removesuffix("_int8")], {**consts, "graph": role}, verbose, table)
        left = portable_heavy_ops(info)
        if left:
            raise RuntimeError(f"{name}: these ops were left to portable kernels instead of XNNPACK: {left}")
        staged[role] = (data, out / name)
        reports[name] = delegation_report(info)
    return {role: write_bytes(path, data) for role, (data, path) in staged.items()}, reports


@torch.no_grad()
def _decoder_calibration(encoder: nn.Module, image: Tensor, max_points: int) -> tuple[Tensor, ...]:
    """A calibration sample for the decoder: the image's embedding and a positive point, a box, padding."""
    s = image.shape[-1]
    coords = torch.zeros(1, max_points, 2)
    labels = torch.full((1, max_points), -1.0)
    coords[0, 0] = torch.tensor([s * 0.4, s * 0.6])
    coords[0, 1:3] = torch.tensor([[s * 0.2, s * 0.3], [s * 0.7, s * 0.8]])
    labels[0, :3] = torch.tensor([1.0, 2.0, 3.0])
    return encoder(image), coords, labels


def write(model: Sam, out_dir: Path, options: ExportOptions) -> tuple[dict[str, Path], dict[str, Any]]:
    """The format's writer (`mobilesam.deploy.formats`): role -> path, and the sidecar's description."""
    if options.precision != "fp32":
        raise ValueError(f"ExecuTorch programs are fp32 (or int8 with quantize), not {options.precision}")
    calibration = None
    if options.quantize:
        calibration = read_calibration(options.calibration, model.img_size, options.calibration_images)
        if options.verbose and calibration.generated:
            print("int8: calibrated on generated images (no --calibration given): real images give better int8")
    pte, delegation = export_executorch(
        model,
        out_dir,
        quantize=options.quantize,
        max_points=options.max_points,
        verbose=options.verbose,
        calibration=calibration,
    )
    info = {
        **describe(options.max_points),
        "backend": "XNNPACK",
        "int8": options.quantize,
        "delegation": delegation,
    }
    if calibration is not None:
        info["int8_calibration"] = calibration.source
        info["int8_float_layers"] = "layer norms; the decoder but its own module layers (deploy.quantize.own_layers)"
    return pte, info
