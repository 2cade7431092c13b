"""`QatModule`: quantization-aware distillation: the student's image encoder as an exported graph, fake-quantized the
way ExecuTorch's XNNPACK runs it in int8, trained on the stored teacher embeddings; it ends as `encoder_int8.pte`."""

from __future__ import annotations

import copy
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mobilesam import build_sam
from mobilesam.checkpoint import read_sidecar

from .base import SamModule

log = logging.getLogger(__name__)


class QuantizationError(ValueError):
    """A student the int8 XNNPACK path cannot take (refused before training)."""


def fake_quant_graph(encoder: nn.Module, img_size: int, batch: int = 2, dynamic: bool = True) -> nn.Module:
    """`torch.export` of the XNNPACK-friendly copy of `encoder` (BN folded, layer norms as linear layers), then
    `prepare_qat_pt2e` with the project's one XNNPACK quantizer (qat=True; the modules `keep_float_for` names stay
    float, as in post-training int8). Returns the prepared graph (any batch size when `dynamic`); its weights are
    trainable parameters."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    from mobilesam.deploy.lowering import xnnpack_encoder
    from mobilesam.deploy.quantize import keep_float_for, xnnpack_quantizer

    enc = xnnpack_encoder(encoder)
    example = (torch.randn(batch, 3, img_size, img_size),)
    shapes = ({0: torch.export.Dim("batch", min=1, max=1024)},) if dynamic else None
    graph = torch.export.export(enc, example, dynamic_shapes=shapes).module()
    prepared = prepare_qat_pt2e(graph, xnnpack_quantizer(qat=True, keep_float=keep_float_for(enc)))
    for p in prepared.parameters():
        p.requires_grad_(True)
    return prepared


class FakeQuantEncoder(nn.Module):
    """Holds the prepared graph (`self.graph`, checkpoint keys `qat.graph.*`: weights and every observer's and
    fake-quantizer's buffers). An exported graph refuses `.train()`/`.eval()`: here they call torchao's
    `move_exported_model_to_train` / `move_exported_model_to_eval`, so Lightning's own switches work too."""

    def __init__(self, graph: nn.Module) -> None:
        super().__init__()
        self.graph = graph

    def train(self, mode: bool = True) -> FakeQuantEncoder:
        from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train

        (move_exported_model_to_train if mode else move_exported_model_to_eval)(self.graph)
        self.training = mode
        return self

    def observe(self, on: bool) -> None:
        """Observers on (they track activation ranges) or off (scales fixed; fake quantization stays on)."""
        from torchao.quantization.pt2e import disable_observer, enable_observer

        self.graph.apply(enable_observer if on else disable_observer)

    def forward(self, x: Tensor) -> Tensor:
        """x: Bx3xSxS normalised image -> Bx256x(S/16)x(S/16) fake-quantized embedding."""
        return self.graph(x)

    def converted(self) -> nn.Module:
        """The int8 graph (`convert_pt2e` of a copy; this module keeps training)."""
        from torchao.quantization.pt2e import move_exported_model_to_eval
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

        graph = copy.deepcopy(self.graph)
        move_exported_model_to_eval(graph)
        return convert_pt2e(graph)


def _module_of(node: Any) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    return next(reversed(stack.values()))[0] if stack else "(top level)"


def check_lowerable(student: str, img_size: int, what: str) -> None:
    """A dry run at a small size (random weights: lowering depends on the ops only): fake-quantize, convert and
    lower to XNNPACK. Refuses (`QuantizationError`, naming the layers) a student whose heavy ops would be left to
    portable kernels, or that the quantizer or the lowering cannot take at all.

    Args:
        student: a name of `mobilesam.variants.STUDENTS` (or vit_t).
        img_size: the dry run's input side (the smallest the student takes is cheapest).
        what: the checkpoint, for messages.
    """
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.devtools.backend_debug import get_delegation_info
    from executorch.exir import to_edge_transform_and_lower

    from mobilesam.deploy.executorch import portable_heavy_ops
    from mobilesam.deploy.lowering import INT8_DECOMPOSITIONS

    fix = "quantize a student XNNPACK lowers in int8 (docs/training.md), or deploy it in float (encoder.pte)"
    x = torch.randn(1, 3, img_size, img_size)
    try:
        fq = FakeQuantEncoder(fake_quant_graph(build_sam(student, img_size=img_size).image_encoder, img_size, 1, False))
        with torch.no_grad():
            fq.eval()(x)
            program = torch.export.export(fq.converted(), (x,)).run_decompositions(dict(INT8_DECOMPOSITIONS))
            edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    except Exception as e:  # the quantizer or the lowering refused an op: its own words say which
        raise QuantizationError(
            f"{what}: the student {student} cannot be quantized for XNNPACK int8 ({type(e).__name__}: "
            f"{str(e).strip().splitlines()[0][:300]}); {fix}"
        ) from e
    graph = edge.exported_program().graph_module
    left = portable_heavy_ops(get_delegation_info(graph))
    if left:
        ops = {op.removeprefix("aten_") for op in left}
        layers = sorted({_module_of(n) for n in graph.graph.nodes if n.op == "call_function" and _op_name(n) in ops})
        raise QuantizationError(
            f"{what}: the student {student} does not lower to XNNPACK in int8: {left} would run on portable kernels, "
            f"in layers {layers[:8]}; {fix}"
        )


def _op_name(node: Any) -> str:
    """`aten.convolution.default` -> `convolution_default` (the delegation table's names, without `aten_`)."""
    return str(getattr(node.target, "__name__", node.target)).replace(".", "_").removeprefix("aten_")


class QatModule(SamModule):
    """Quantization-aware distillation: `model.init` (a trained float student) is exported, fake-quantized as the
    XNNPACK int8 runtime will quantize it, and trained against the stored teacher embeddings (MSE), optionally
    also against the float student's own embeddings (`float_weight`). The float SAM (`self.sam`) stays frozen: it
    gives the float target, the decoder and the `mobile_sam.pt` written beside the int8 encoder.

    Args:
        float_weight: weight of the MSE to the float student's embedding (0: teacher only).
        freeze_observers_at: fraction of the schedule after which activation ranges stop moving (None: never).
        dry_run_size: input side of the lowering dry run made before training (0: skip it).
        max_points: prompt points per object of the float `decoder.pte` written at the end.
        **kwargs: those of `SamModule` (`init` is required).
    """

    def __init__(
        self,
        float_weight: float = 0.0,
        freeze_observers_at: float | None = 0.8,
        dry_run_size: int = 64,
        max_points: int = 8,
        **kwargs: Any,
    ) -> None:
        init = kwargs.get("init")
        student = kwargs.get("student", "tiny_vit_5m")
        _check_init(init, student)
        if dry_run_size:
            check_lowerable(student, dry_run_size, f"model.init={init}")
        super().__init__(**{**kwargs, "init_required": True})
        self.hparams.update(
            float_weight=float(float_weight),
            freeze_observers_at=freeze_observers_at,
            dry_run_size=dry_run_size,
            max_points=max_points,
        )
        self.sam.requires_grad_(False)
        self.qat = FakeQuantEncoder(fake_quant_graph(self.sam.image_encoder, self.hparams.img_size))

    def configure_trainable(self) -> None:
        """Nothing of the float SAM trains: the fake-quantized graph (`self.qat`) is the student here."""
        self.sam.requires_grad_(False)

    def parameter_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        params = [p for p in self.qat.parameters() if p.requires_grad]
        return [
            {"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
        ]

    # ------------------------------------------------------------------------------------ modes and observers
    def on_train_start(self) -> None:
        self.sam.eval()  # the float target: BatchNorm running statistics, no drop path
        self.qat.train()
        self.qat.observe(not self._observers_frozen())

    def on_train_epoch_start(self) -> None:
        self.on_train_start()

    def _observers_frozen(self) -> bool:
        at = self.hparams.freeze_observers_at
        return at is not None and self.global_step >= at * max(1, int(self.trainer.estimated_stepping_batches))

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._observers_frozen() and not getattr(self, "_frozen_logged", False):
            self.qat.observe(False)
            self._frozen_logged = True
            log.info("step %d: observers frozen (activation ranges fixed for the rest of training)", self.global_step)

    def on_validation_start(self) -> None:
        self.qat.eval()
        self.qat.observe(False)  # validation must not move the ranges the int8 program will use

    def on_validation_end(self) -> None:
        self.qat.train()
        self.qat.observe(not self._observers_frozen())

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The saved state dict is a plain dict without `_metadata`: torch.ao's observers read a missing version as
        # their first format and reset `eps` to its default (the XNNPACK weight observers' is 2**-12). Give the
        # load the live module's versions, so that every buffer comes back as it was saved
        state = OrderedDict(checkpoint["state_dict"])
        state._metadata = self.state_dict()._metadata  # type: ignore[attr-defined]
        checkpoint["state_dict"] = state

    # ------------------------------------------------------------------------------------------------ steps
    def student_embedding(self, batch: dict[str, Any]) -> Tensor:
        from mobilesam.transforms import normalize

        return self.qat(normalize(batch["image"], batch["size"]))

    def losses(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        student = self.student_embedding(batch)
        parts = self.distill_loss(student, batch)
        if self.hparams.float_weight > 0:
            from mobilesam.transforms import normalize

            with torch.no_grad():
                target = self.sam.image_encoder(normalize(batch["image"], batch["size"]))
            parts["loss_teacher"] = parts["loss"]
            parts["loss_float"] = ((student - target) ** 2).mean()
            parts["loss"] = parts["loss"] + self.hparams.float_weight * parts["loss_float"]
        return parts

    # ------------------------------------------------------------------------------------------------ end
    def deploy(self, out_dir: Path, weights: Path) -> dict[str, Path]:
        """Writes `encoder_int8.pte` (this graph, converted and lowered) and `decoder.pte` (the float student's),
        checked by the export guard at int8 tolerances, and lists them in the sidecar of `weights`."""
        from .qat_export import write_int8_program

        return write_int8_program(self, Path(out_dir), Path(weights))


def _check_init(init: str | None, student: str) -> None:
    """Refuses a missing `model.init`, one that is not a file, a `timm:` start, or a file of another student."""
    fix = "set model.init=PATH/mobile_sam.pt, a trained float student (e.g. outputs/demo/<run>/mobile_sam.pt)"
    if not init:
        raise ValueError(f"quantization-aware training starts from a trained float student; model.init={init}: {fix}")
    if str(init).startswith("timm:"):
        raise ValueError(f"model.init={init} is ImageNet weights, not a trained student: distil first, then {fix}")
    if not Path(init).is_file():
        raise FileNotFoundError(f"model.init={init} does not exist: {fix}")
    meta = read_sidecar(init) or {}
    said = meta.get("student") or meta.get("variant")
    if said and said not in (student, "vit_t" if student == "tiny_vit_5m" else student):
        raise ValueError(
            f"model.init={init} holds the student {said} (its sidecar), not {student}: add model/student={said}"
        )


__all__ = ["FakeQuantEncoder", "QatModule", "QuantizationError", "check_lowerable", "fake_quant_graph"]
