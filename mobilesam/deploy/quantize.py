"""Int8 for XNNPACK: the one quantizer (what runs in int8, what stays float), shared by post-training and
quantization-aware paths, so that a QAT graph is fake-quantized exactly the way the runtime will quantize it;
the default float set (`keep_float_for`), post-training quantization (`ptq`) and the per-block cost report
(`sensitivity`) that chose it."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn


def xnnpack_quantizer(qat: bool = False, keep_float: Sequence[str] = (), *, only: Sequence[str] | None = None) -> Any:
    """XNNPACK's static int8 quantizer: per-channel symmetric weights, per-tensor activations.

    XNNPACK's quantizer takes convolutions, linear layers, adds, multiplies, concatenations and poolings; matmuls
    and softmax stay float whatever it is told. A node left float runs in fp32 inside XNNPACK between int8 nodes.

    Args:
        qat: fake-quantize for quantization-aware training (`prepare_qat_pt2e`) instead of observing for
            post-training calibration (`prepare_pt2e`).
        keep_float: module names (as in `named_modules()` of the exported module) left in float; every node
            inside such a module is (`keep_float_for` gives the default).
        only: when given, only the nodes inside these modules are quantized (for `sensitivity`).
    """
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_qat=qat))
    if keep_float or only is not None:
        from torchao.quantization.pt2e.quantizer.utils import get_module_name_filter

        kept = [get_module_name_filter(name) for name in keep_float]
        chosen = None if only is None else [get_module_name_filter(name) for name in only]

        def quantized(node: Any) -> bool:
            # weights and biases (no module stack) belong to the op they feed: that op's node decides
            inside = chosen is None or not node.meta.get("nn_module_stack") or any(f(node) for f in chosen)
            return inside and not any(f(node) for f in kept)

        quantizer.set_filter_function(quantized)
    return quantizer


def _norm_types() -> tuple[type, ...]:
    from timm.layers import LayerNorm2d

    from .lowering import LinearLayerNorm

    return (nn.LayerNorm, nn.GroupNorm, LayerNorm2d, LinearLayerNorm)


def keep_float_for(model: nn.Module) -> list[str]:
    """The module names int8 keeps in float by default: every layer norm of the image encoder.

    Chosen by measurement (`sensitivity`, docs/quantization.md): on the trained demo student, keeping the layer
    norms float took the embedding error from 2.6% to 1.0% and the worst mask agreement from 96% to 99%; no other
    group of layers (attention's softmax inputs, residual adds, the first convolution, the neck's convolutions)
    mattered as much. XNNPACK runs them in fp32 between the int8 layers.

    Args:
        model: a `Sam` (its image encoder is read) or an image encoder, eager or its XNNPACK copy
            (`lowering.xnnpack_encoder`): the names are the same in both.

    Returns:
        Names relative to the image encoder (`layers.1.blocks.0.attn.norm`, ..., `neck.1`, `neck.3`).
    """
    encoder = getattr(model, "image_encoder", model)
    norms = _norm_types()
    unused = ("norm_head",)  # TinyViT's ImageNet head, never run (the export's copy drops it)
    return [name for name, m in encoder.named_modules() if name not in ("", *unused) and isinstance(m, norms)]


def own_layers(module: nn.Module) -> list[str]:
    """The names of `module`'s children with weights: quantizing `only` these leaves the ops of its own `forward`
    float, and every layer it does not call as a module of its own (the name filter matches a module where it is
    called: the static decoder runs its two-way transformer layer by layer, so that stays float too). For the static
    decoder the whole-int8 version (its prompts' positional encoding and mask product included) took the export
    check's worst mask agreement on the demo student to 87.5%; with this, 98.9%."""
    return [name for name, child in module.named_children() if _has_weights(child)]


def ptq(
    module: nn.Module,
    args: tuple[Tensor, ...],
    calibration: Sequence[tuple[Tensor, ...]],
    keep_float: Sequence[str] = (),
    only: Sequence[str] | None = None,
    exported: Any = None,
) -> nn.Module:
    """XNNPACK static int8 post-training quantization of `module`, calibrated on `calibration`.

    Args:
        module: the module to quantize (eval mode; e.g. `lowering.xnnpack_encoder(...)`).
        args: example inputs for `torch.export`.
        calibration: input tuples run through the observed graph.
        keep_float: module names left float (`keep_float_for`).
        only: quantize only inside these modules (see `xnnpack_quantizer`).
        exported: `torch.export.export(module, args)`, to reuse one export for many quantizations.

    Returns:
        The converted graph module (quantize / dequantize nodes around int8 ops), ready for `executorch.lower`.
    """
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    program = copy.deepcopy(exported) if exported is not None else torch.export.export(module, args)
    prepared = prepare_pt2e(program.module(), xnnpack_quantizer(keep_float=keep_float, only=only))
    with torch.no_grad():
        for inputs in calibration:
            prepared(*inputs)
    return convert_pt2e(prepared)


def _has_weights(module: nn.Module) -> bool:
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


def encoder_units(encoder: nn.Module) -> list[str]:
    """The blocks a sensitivity report measures: the stem, each block of each stage and each downsample, the neck
    (the encoder's children with weights; a list of stages, or a stage holding `blocks`, split one level down)."""
    out = []
    for name, child in encoder.named_children():
        if not _has_weights(child):
            continue  # an Identity head
        stages = list(child.named_children()) if isinstance(child, nn.ModuleList) else [("", child)]
        for sub, stage in stages:
            path = f"{name}.{sub}" if sub else name
            if isinstance(getattr(stage, "blocks", None), nn.ModuleList):
                out += [f"{path}.blocks.{i}" for i in range(len(stage.blocks))]
                if getattr(stage, "downsample", None) is not None:
                    out.append(f"{path}.downsample")
            else:
                out.append(path)
    return out


@dataclass(frozen=True)
class UnitCost:
    """What quantizing one unit costs, measured against the float encoder on held-out images."""

    unit: str
    alone_error: float  # median relative L2 embedding error with only this unit int8
    alone_masks: float  # median mask pixel agreement with only this unit int8
    without_error: float  # ... with everything int8 but this unit
    without_masks: float
    without_masks_worst: float


def mask_agreement(model: Any, embedding: Tensor, reference: Tensor, points: int = 24) -> list[float]:
    """Per-prompt pixel agreement of the low-resolution masks (S/4) decoded from `embedding` and `reference`
    (1x256xExE each) with `model`'s prompt encoder and mask decoder, over a grid of `points` single-point
    prompts spread over the image (rows x columns as square as `points` allows)."""
    s = model.image_encoder.img_size
    rows = int(np.sqrt(points))
    cols = -(-points // rows)
    grid = [(x, y) for x in np.linspace(0.1, 0.9, cols) for y in np.linspace(0.1, 0.9, rows)][:points]
    coords = torch.tensor(grid, dtype=torch.float32)[:, None] * s
    labels = torch.ones(len(grid), 1, dtype=torch.int)
    pe = model.prompt_encoder
    with torch.no_grad():
        sparse, dense = pe((coords, labels), None, None)
        masks = [model.mask_decoder(e, pe.get_dense_pe(), sparse, dense, False)[0] > 0 for e in (embedding, reference)]
    return (masks[0] == masks[1]).float().mean(dim=(1, 2, 3)).tolist()


def relative_l2(a: Tensor, b: Tensor) -> float:
    """||a - b|| / ||b|| (the export check's embedding error)."""
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def measure(model: Any, encoder: nn.Module, images: Sequence[Tensor], reference: Sequence[Tensor]) -> dict[str, float]:
    """Median and worst relative embedding error and mask agreement of `encoder` against `reference`."""
    errors, agree = [], []
    with torch.no_grad():
        for x, ref in zip(images, reference):
            emb = encoder(x)
            errors.append(relative_l2(emb, ref))
            agree += mask_agreement(model, emb, ref)
    return {
        "error": float(np.median(errors)),
        "error_worst": max(errors),
        "masks": float(np.median(agree)),
        "masks_worst": min(agree),
    }


def sensitivity(
    model: Any,
    images: Sequence[Tensor],
    calibration: Sequence[Tensor],
    units: Sequence[str] | None = None,
    keep_float: Sequence[str] = (),
    progress: Callable[[str], None] | None = None,
) -> tuple[dict[str, float], list[UnitCost]]:
    """Per block, what int8 costs: quantize that block alone, and everything but that block.

    Args:
        model: a `Sam` (its encoder is quantized as the ExecuTorch export quantizes it; its decoder gives masks).
        images: held-out encoder inputs (1x3xSxS, normalised and padded), compared with the float encoder.
        calibration: calibration inputs (`calibration.read_calibration(...).images`).
        units: module names of the encoder to measure (default `encoder_units`).
        keep_float: kept float in every run (e.g. `keep_float_for(model)`, to see what is left to gain).
        progress: called with each finished unit's line.

    Returns:
        (the all-int8 figures of `measure`, one `UnitCost` per unit).
    """
    from .lowering import xnnpack_encoder

    encoder = xnnpack_encoder(model.image_encoder)
    units = list(units or encoder_units(encoder))
    with torch.no_grad():
        reference = [encoder(x) for x in images]
    exported = torch.export.export(encoder, (images[0],))
    calib = [(x,) for x in calibration]

    def run(**kw: Any) -> dict[str, float]:
        q = ptq(encoder, (images[0],), calib, exported=exported, **kw)
        return measure(model, q, images, reference)

    everything = run(keep_float=keep_float)
    costs = []
    for unit in units:
        alone, without = run(keep_float=keep_float, only=[unit]), run(keep_float=[*keep_float, unit])
        cost = UnitCost(
            unit, alone["error"], alone["masks"], without["error"], without["masks"], without["masks_worst"]
        )
        costs.append(cost)
        if progress is not None:
            progress(f"{unit}: alone {alone['error']:.4f} / {alone['masks']:.2%}, without {without['error']:.4f}")
    return everything, costs


def report_rows(costs: Sequence[UnitCost], everything: Mapping[str, float]) -> list[list[str]]:
    """Table rows: unit, error with it alone int8, masks, error with all but it int8, masks (median, worst),
    and the error it saves (all-int8 error minus error without it)."""
    return [
        [
            c.unit,
            f"{c.alone_error:.4f}",
            f"{c.alone_masks:.2%}",
            f"{c.without_error:.4f}",
            f"{c.without_masks:.2%} / {c.without_masks_worst:.2%}",
            f"{everything['error'] - c.without_error:+.4f}",
        ]
        for c in costs
    ]
