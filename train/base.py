"""`SamModule`: the base of every training module: the SAM it trains, its set-up, the step, validation, export."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from torchmetrics import MeanMetric

from mobilesam import build_sam
from mobilesam.checkpoint import load_state_dict
from mobilesam.protocol import PROMPT_TYPES, Decoder, build_prompts, image_ious
from mobilesam.transforms import normalize
from mobilesam.variants import check_variant

from .callbacks import resume_advice
from .init import init_student
from .losses import check_embedding_loss, embedding_cells, embedding_cosine

log = logging.getLogger(__name__)

DECODER_PREFIXES = ("prompt_encoder.", "mask_decoder.")
NO_DECAY = ("attention_biases", "rel_pos", "bias", "norm", "bn.", "neck.1.", "neck.3.")


def plain(x: Any) -> Any:
    """DictConfig -> plain dict/list, so hyper-parameters load with `torch.load(weights_only=True)`."""
    return OmegaConf.to_container(x, resolve=True) if isinstance(x, DictConfig) else x


def embedding_mse(student: Tensor, teacher: Tensor, sizes: Tensor | None, img_size: int) -> Tensor:
    """Mean squared error of Bx256xExE embeddings; with `sizes`, only over the cells that cover the image
    (EdgeSAM's variant: the padded region is excluded)."""
    diff = (student.float() - teacher.float()).pow_(2)
    if sizes is None:
        return diff.mean()
    valid = embedding_cells(sizes, student.shape[-1], img_size)
    return (diff * valid).sum() / (valid.sum() * student.shape[1]).clamp_min(1)


class SamModule(L.LightningModule):
    """The base of the training modules (encoder distillation, stage 2, mask fine-tuning): the whole SAM is held as
    `self.sam` (checkpoint keys `sam.*`); by default only its image encoder (the student) trains, and its prompt
    encoder and mask decoder are the teacher's, used for validation. Subclasses define `losses(batch)`.

    Args:
        img_size: input side in pixels (1024 for the paper's recipe).
        student: the image encoder to train, a name of `mobilesam.variants.STUDENTS` (`model/student=`).
        init: student initialisation, see `train.init.init_student`.
        teacher: {"variant", "checkpoint", "precision"}: the checkpoint's prompt encoder and mask decoder join
            the student (and go into the exported `mobile_sam.pt`).
        decoder_from: "teacher" or "init" (a fine-tune keeps the decoder of the model it starts from).
        optimizer: Hydra config of the optimizer (`_target_`, lr, ...), instantiated with the parameter groups.
        scheduler: Hydra config of a schedule factory called with (optimizer, total_steps), or None.
        loss: stage 1's embedding loss (`distill_loss`): "mse" (MobileSAM) or "mse_cosine" (MSE + cosine_weight x
            (1 - cosine) per cell, EfficientSAM3). Validation's `val/mse` is the MSE either way.
        cosine_weight: the cosine term's weight with loss="mse_cosine".
        mask_padding: exclude the padded region from the loss.
        compile: `torch.compile` the student (in place: the state-dict keys do not change).
        val_mask_iou: compute the mask-agreement mIoU in validation (needs masks in the validation batches).
        bn_train: BatchNorm uses batch statistics and updates its running ones (MobileSAM's recipe); False keeps
            the running statistics fixed (fine-tuning from a trained model with small batches).
        init_required: refuse `init=None` (set by recipes that continue a trained model, such as stage 2).
    """

    def __init__(
        self,
        img_size: int = 1024,
        student: str = "tiny_vit_5m",
        init: str | None = None,
        teacher: dict | None = None,
        decoder_from: str = "teacher",
        optimizer: dict | None = None,
        scheduler: dict | None = None,
        loss: str = "mse",
        cosine_weight: float = 1.0,
        mask_padding: bool = False,
        compile: bool = False,
        val_mask_iou: bool = True,
        bn_train: bool = True,
        init_required: bool = False,
    ) -> None:
        super().__init__()
        if init_required and not init:
            raise ValueError(
                "this recipe continues a trained model, but model.init is not set: pass model.init=PATH/mobile_sam.pt "
                "(e.g. stage 1's outputs/<experiment>/<run>/mobile_sam.pt)"
            )
        teacher, optimizer, scheduler = plain(teacher) or {}, plain(optimizer), plain(scheduler)
        self.save_hyperparameters(
            {
                "img_size": img_size,
                "variant": check_variant(student, "model.student"),
                "student": student,
                "init": init,
                "teacher": teacher,
                "decoder_from": decoder_from,
                "optimizer": optimizer,
                "scheduler": scheduler,
                "loss": check_embedding_loss(loss),
                "cosine_weight": float(cosine_weight),
                "mask_padding": mask_padding,
                "compile": compile,
                "val_mask_iou": val_mask_iou,
                "bn_train": bn_train,
            }
        )
        self.sam = build_sam(student, img_size=img_size)
        init_student(self.sam, init)
        self._load_decoder(teacher.get("checkpoint"), init, decoder_from)
        self.configure_trainable()
        if compile:
            self.sam.image_encoder.compile()
        self.val_mse = MeanMetric()
        self.val_miou = torch.nn.ModuleDict({k: MeanMetric() for k in PROMPT_TYPES})
        self.examples: list[dict[str, Tensor]] = []

    # ----------------------------------------------------------------------------------------------- set-up
    def _load_decoder(self, teacher_ckpt: str | None, init: str | None, decoder_from: str) -> None:
        source = teacher_ckpt if decoder_from == "teacher" else init
        if decoder_from not in ("teacher", "init"):
            raise ValueError(f"decoder_from={decoder_from!r}; use 'teacher' or 'init'")
        if decoder_from == "init" and (not init or str(init).startswith("timm:")):
            raise ValueError(
                f"decoder_from=init keeps the prompt encoder and mask decoder of model.init, but model.init={init!r}: "
                "set model.init=mobile_sam.pt (the model to fine-tune)"
            )
        if not source or str(source).startswith("timm:"):
            log.warning(
                "no checkpoint for the prompt encoder and mask decoder (decoder_from=%s): they stay RANDOM, so "
                "validation masks and the exported model's masks mean nothing. Set teacher.checkpoint.",
                decoder_from,
            )
            return
        state = load_state_dict(source)
        part = {k: v for k, v in state.items() if k.startswith(DECODER_PREFIXES)}
        missing, unexpected = self.sam.load_state_dict(part, strict=False)
        missing = [k for k in missing if k.startswith(DECODER_PREFIXES)]
        if missing or unexpected:
            raise RuntimeError(f"{source} lacks decoder weights: missing {missing[:5]}, unexpected {unexpected[:5]}")

    def on_fit_start(self) -> None:
        """Refuses shards another teacher made than `teacher` says (their manifest records it)."""
        manifest = getattr(getattr(self.trainer, "datamodule", None), "manifest", None)
        if isinstance(manifest, dict) and self.hparams.teacher:
            from data.manifest import check_teacher

            check_teacher(manifest, self.hparams.teacher, getattr(self.trainer.datamodule, "root", "the shards"))

    def configure_trainable(self) -> None:
        """Only the student encoder trains; the unused ImageNet head is frozen (no DDP unused-parameter hunt)."""
        for name, p in self.sam.named_parameters():
            p.requires_grad_(
                name.startswith("image_encoder.")
                and not name.startswith(("image_encoder.head.", "image_encoder.norm_head."))
            )

    def parameter_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """The optimizer's parameter groups: the trainable weights with `weight_decay`, norms and biases without."""
        decay, no_decay = [], []
        for name, p in self.sam.named_parameters():
            if p.requires_grad:
                (no_decay if any(t in name for t in NO_DECAY) or p.ndim <= 1 else decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    def configure_optimizers(self) -> Any:
        cfg = self.hparams.optimizer or {"_target_": "torch.optim.AdamW", "lr": 1e-3, "weight_decay": 0.05}
        cfg = {k: v for k, v in cfg.items() if k != "_partial_"}
        groups = self.parameter_groups(cfg.get("weight_decay", 0.0))
        optimizer = instantiate(cfg, _partial_=True)(groups)  # Hydra must not convert the parameter groups
        if not self.hparams.scheduler:
            return optimizer
        sched_cfg = {k: v for k, v in self.hparams.scheduler.items() if k != "_partial_"}
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = instantiate(sched_cfg, _partial_=True)(optimizer, total_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -------------------------------------------------------------------------------------------- training
    def on_train_start(self) -> None:
        # Lightning keeps whatever mode a module is in, and build_sam returns eval mode: the student must train
        # with batch statistics (and update its BatchNorm running statistics), as in MobileSAM's recipe.
        self.train()
        if not self.hparams.bn_train:
            for m in self.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()

    def on_train_epoch_start(self) -> None:
        self.on_train_start()  # validation restores the modes it found; keep the BatchNorm choice explicit

    def student_embedding(self, batch: dict[str, Any]) -> Tensor:
        """The student's Bx256xExE embedding of a loader batch (normalised on the device)."""
        return self.sam.image_encoder(normalize(batch["image"], batch["size"]))

    def embedding_loss(self, student: Tensor, batch: dict[str, Any]) -> Tensor:
        sizes = batch["size"] if self.hparams.mask_padding else None
        return embedding_mse(student, batch["embedding"], sizes, self.hparams.img_size)

    def distill_loss(self, student: Tensor, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Stage 1's loss as `loss` says: {"loss"}, with its "loss_mse" and "loss_cosine" parts for mse_cosine."""
        mse = self.embedding_loss(student, batch)
        if self.hparams.get("loss", "mse") == "mse":
            return {"loss": mse}
        sizes = batch["size"] if self.hparams.mask_padding else None
        cosine = embedding_cosine(student, batch["embedding"], sizes, self.hparams.img_size)
        return {"loss": mse + self.hparams.cosine_weight * cosine, "loss_mse": mse, "loss_cosine": cosine}

    def losses(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """The step's loss ("loss") and what else is logged as train/<name>."""
        raise NotImplementedError(f"{type(self).__name__} must define losses(batch)")

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        parts = self.losses(batch)
        self.check_finite(parts["loss"], batch)
        bs = batch["size"].shape[0]
        for name, value in parts.items():
            self.log(f"train/{name}", value, prog_bar=name.startswith("loss"), batch_size=bs)
        return parts["loss"]

    def check_finite(self, loss: Tensor, batch: dict[str, Any]) -> None:
        """Stops the run (every rank together) on a NaN/Inf loss, before it reaches the weights or a checkpoint."""
        bad = (~torch.isfinite(loss.detach())).float()
        if self.trainer.world_size > 1:
            bad = self.trainer.strategy.reduce(bad, reduce_op="max")
        if bad.item() > 0:
            raise FloatingPointError(
                f"loss is {loss.item()} at step {self.global_step} (batch keys {batch.get('key', [])[:4]}...). "
                "Nothing from this step was saved. Lower model.optimizer.lr, raise trainer.gradient_clip_val, or "
                f"check these samples with scripts/verify_shards.py; then {resume_advice(self.trainer)}."
            )

    # ------------------------------------------------------------------------------------------ validation
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        student = self.student_embedding(batch)
        bs = student.shape[0]
        self.val_mse.update(self.embedding_loss(student, batch), weight=bs)
        if self.hparams.val_mask_iou and "points" in batch:
            self.mask_agreement(student, batch, batch_idx)

    def teacher_decoder(self) -> Decoder:
        """The prompt encoder and mask decoder that decode the teacher's embedding (the student's own here)."""
        return Decoder(self.sam.prompt_encoder, self.sam.mask_decoder)

    def batch_ious(self, student: Tensor, batch: dict[str, Any]) -> Iterator[tuple[int, Any, dict]]:
        """The protocol's IoUs, image by image: (index, prompts, `image_ious` result) against the teacher's masks
        decoded from the stored embedding (images without masks are skipped)."""
        dec = Decoder(self.sam.prompt_encoder, self.sam.mask_decoder)
        img_size = self.hparams.img_size
        for i in range(student.shape[0]):
            n = int(batch["num_masks"][i])
            if n == 0:
                continue
            prompts = build_prompts(
                batch["points"][i, :n],
                batch["boxes"][i, :n],
                batch["masks"][i, :n],
                batch["key"][i],
                batch["mask_ids"][i, :n].tolist(),
                img_size,
            )
            size = (int(batch["size"][i, 0]), int(batch["size"][i, 1]))
            teacher_embedding = batch["embedding"][i : i + 1].float()
            ious = image_ious(
                dec,
                student[i : i + 1].float(),
                prompts,
                size,
                img_size,
                teacher=self.teacher_decoder(),
                teacher_embedding=teacher_embedding,
            )
            yield i, prompts, ious

    def mask_agreement(self, student: Tensor, batch: dict[str, Any], batch_idx: int) -> None:
        """Accumulates the validation mIoU of the student's masks against the teacher's, per prompt type."""
        for i, prompts, ious in self.batch_ious(student, batch):
            for kind, values in ious["vs_teacher"].items():
                self.val_miou[kind].update(values)
            if batch_idx == 0 and len(self.examples) < 4:
                size = (int(batch["size"][i, 0]), int(batch["size"][i, 1]))
                self.examples.append(self._example(batch, i, student[i : i + 1], prompts, size))

    @torch.no_grad()
    def _example(self, batch: dict[str, Any], i: int, student: Tensor, prompts: Any, size: tuple[int, int]) -> dict:
        """One image with the student's and the teacher's point-prompt masks, for the image logger."""
        from mobilesam.mask_ops import upscale_unpadded
        from mobilesam.protocol import decode

        pts, _, _ = prompts.for_type("point")
        k = min(3, len(prompts))
        pts = (pts[0][:k], pts[1][:k])
        out = {"image": batch["image"][i, :, : size[0], : size[1]].cpu(), "points": pts[0][:, 0].cpu()}
        own, teacher = Decoder(self.sam.prompt_encoder, self.sam.mask_decoder), self.teacher_decoder()
        for name, emb, dec in (
            ("student", student.float(), own),
            ("teacher", batch["embedding"][i : i + 1].float(), teacher),
        ):
            logits = decode(dec.prompt_encoder, dec.mask_decoder, emb, pts, None, True)
            out[name] = (upscale_unpadded(logits[:, None], size, self.hparams.img_size)[:, 0] > 0).cpu()
        return out

    def on_validation_epoch_start(self) -> None:
        self.examples = []

    def on_validation_epoch_end(self) -> None:
        self.log("val/mse", self.val_mse.compute(), prog_bar=True, sync_dist=False)
        self.val_mse.reset()
        for kind, metric in self.val_miou.items():
            if metric.update_count:
                self.log(f"val/miou_{kind}", metric.compute(), prog_bar=kind == "point")
            metric.reset()

    # -------------------------------------------------------------------------------------------- helpers
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # torch.compile's wrapper never reaches the keys (compiled in place), but be explicit about the contract
        checkpoint["state_dict"] = {k.replace("._orig_mod", ""): v for k, v in checkpoint["state_dict"].items()}

    def export_state_dict(self) -> dict[str, Tensor]:
        """The `mobile_sam.pt` tensors: the official key set, float32, on CPU."""
        return {
            k: v.detach().float().cpu() if v.is_floating_point() else v.detach().cpu()
            for k, v in self.sam.state_dict().items()
        }


def count_trainable(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


__all__ = ["SamModule", "count_trainable", "embedding_mse", "plain"]
