"""`FinetuneMasksModule`: supervised fine-tuning of a MobileSAM on labelled masks, with SAM's prompt simulation and
losses, and a choice of which parts train (a frozen image encoder trains from the stored embeddings)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mobilesam.protocol import PROMPT_TYPES, build_prompts, decode

from .base import SamModule
from .losses import mask_ious, sam_losses, valid_cells
from .prompts import PromptBatch, PromptSampler

log = logging.getLogger(__name__)

PARTS = ("image_encoder", "prompt_encoder", "mask_decoder")


class FinetuneMasksModule(SamModule):
    """Fine-tunes the whole SAM (`self.sam`, checkpoint keys `sam.*`) on ground-truth masks.

    Each step, for every image of the batch: `prompts_per_image` of its masks get a noisy box or a point inside
    the mask; the model predicts; `refine_rounds` times a corrective point is added where the prediction is wrong
    (positive where the mask was missed, negative where it spilled over), with the previous logits as mask input,
    as SAM's interactive training does. Every round is supervised with SAM's loss (`train.losses.sam_losses`).

    Args (beyond `SamModule`'s; `init` is the `mobile_sam.pt` to start from, and its decoder is used):
        freeze: parts that do not train, among "image_encoder", "prompt_encoder", "mask_decoder". Frozen parts get
            requires_grad False and stay in eval mode (BatchNorm keeps its statistics). With a frozen image
            encoder the encoder never runs: the embeddings stored in the shards (made by this same model) are used.
        prompts_per_image: objects prompted per image and step (each at most once while the image has enough).
        box_fraction: share of box prompts (the rest start from one positive point).
        box_noise, box_noise_max: box jitter, N(0, box_noise x side) per coordinate, at most this many pixels.
        refine_rounds: corrective-point rounds after the first prediction (SAM: up to 10; EdgeSAM: a few).
        mask_input: feed the previous round's logits back as the mask prompt (SAM does).
        focal_weight, dice_weight, iou_weight: loss = focal_weight * focal + dice_weight * dice + iou_weight *
            MSE(predicted IoU, actual IoU); SAM uses 20 : 1 : 1.
        embedding_weight: with a training image encoder, adds this times the MSE to the stored embeddings of the
            starting model (keeps the encoder near where it started; 0 disables).
        check_embeddings: refuse stored embeddings that were not made by `init` (a frozen encoder would then be
            trained against another model's features).
    """

    def __init__(
        self,
        freeze: Sequence[str] = ("image_encoder", "prompt_encoder"),
        prompts_per_image: int = 16,
        box_fraction: float = 0.5,
        box_noise: float = 0.1,
        box_noise_max: float = 20.0,
        refine_rounds: int = 2,
        mask_input: bool = True,
        focal_weight: float = 20.0,
        dice_weight: float = 1.0,
        iou_weight: float = 1.0,
        embedding_weight: float = 0.0,
        check_embeddings: bool = True,
        **kwargs: Any,
    ) -> None:
        freeze = [str(p) for p in (freeze or [])]
        unknown = sorted(set(freeze) - set(PARTS))
        if unknown:
            raise ValueError(f"model.freeze has {unknown}; name parts among {list(PARTS)}, e.g. [image_encoder]")
        if set(freeze) == set(PARTS):
            raise ValueError(f"model.freeze={freeze} leaves nothing to train; drop one part from the list")
        if not kwargs.get("init"):
            raise ValueError("fine-tuning starts from a model: set model.init=mobile_sam.pt")
        self.sampler = PromptSampler(
            prompts_per_image, box_fraction, box_noise, box_noise_max, refine_rounds, distinct=True
        )
        self._freeze = freeze
        kwargs.setdefault("decoder_from", "init")
        kwargs.setdefault("bn_train", False)
        kwargs.setdefault("val_mask_iou", True)
        super().__init__(**kwargs)
        self.hparams.update(
            freeze=freeze,
            **self.sampler.settings(),
            mask_input=mask_input,
            focal_weight=focal_weight,
            dice_weight=dice_weight,
            iou_weight=iou_weight,
            embedding_weight=embedding_weight,
            check_embeddings=check_embeddings,
        )

    # ----------------------------------------------------------------------------------------------- set-up
    @property
    def stored_embeddings(self) -> bool:
        """The image encoder is frozen: its output is the embedding the shards already hold."""
        return "image_encoder" in self._freeze

    def configure_trainable(self) -> None:
        for name, p in self.sam.named_parameters():
            part = name.split(".", 1)[0]
            unused = name.startswith(("image_encoder.head.", "image_encoder.norm_head."))  # the ImageNet head
            p.requires_grad_(part not in self._freeze and not unused)

    def on_train_start(self) -> None:
        super().on_train_start()
        for part in self._freeze:  # frozen parts compute as at inference (BatchNorm with its running statistics)
            getattr(self.sam, part).eval()

    def on_fit_start(self) -> None:
        if not (self.hparams.check_embeddings and (self.stored_embeddings or self.hparams.embedding_weight > 0)):
            return
        manifest = getattr(getattr(self.trainer, "datamodule", None), "manifest", None)
        if not isinstance(manifest, dict):
            return
        from data.teacher import checkpoint_sha256

        made_by = manifest.get("teacher", {}).get("checkpoint_sha256")
        start = checkpoint_sha256(self.hparams.init) if Path(str(self.hparams.init)).is_file() else None
        if made_by != start:
            raise ValueError(
                f"the shards' embeddings were made by {manifest['teacher'].get('checkpoint')} (sha256 {made_by}), not "
                f"by model.init={self.hparams.init} (sha256 {start}); with a frozen image encoder the decoder would "
                "learn another model's features. Make the shards with teacher=vit_t teacher.checkpoint=<model.init> "
                "(the finetune_masks experiment does), or train the encoder too: model.freeze=[prompt_encoder]."
            )

    # --------------------------------------------------------------------------------------------- forward
    def image_embedding(self, batch: dict[str, Any]) -> Tensor:
        """Bx256xExE: the stored embeddings with a frozen encoder, else the encoder's output (with gradients)."""
        if self.stored_embeddings:
            return batch["embedding"].float()
        return self.student_embedding(batch)

    def decode(self, embedding: Tensor, prompts: PromptBatch, mask_input: Tensor | None) -> tuple[Tensor, Tensor]:
        """All four outputs for P prompt sets on one image: Px4xLxL logits and Px4 predicted IoUs.

        Args:
            embedding: 1x256xExE.
            mask_input: Px1xLxL logits of the previous round (L = img_size / 4), or None.
        """
        pe = self.sam.prompt_encoder
        sparse, dense = pe(prompts.points(), prompts.boxes, mask_input)
        return self.sam.mask_decoder.predict_masks(embedding, pe.get_dense_pe(), sparse, dense)

    # -------------------------------------------------------------------------------------------- training
    def image_loss(self, embedding: Tensor, batch: dict[str, Any], i: int) -> tuple[Tensor, int, Tensor, Tensor]:
        """Summed loss over image i's prompts and rounds.

        Returns:
            (summed loss, number of terms, IoUs of the first round, IoUs of the last round).
        """
        hp = self.hparams
        n = int(batch["num_masks"][i])
        masks, boxes = batch["masks"][i, :n], batch["boxes"][i, :n]
        keep = masks.flatten(1).any(1)  # a mask under one low-resolution cell gives no point to draw
        masks, boxes = masks[keep], boxes[keep]
        size = (int(batch["size"][i, 0]), int(batch["size"][i, 1]))
        valid = valid_cells(size, masks.shape[-1], hp.img_size, masks.device)
        if len(masks) == 0:
            return embedding.new_zeros(()), 0, embedding.new_zeros(0), embedding.new_zeros(0)
        losses, first, last = [], [], []

        def step(prompts: PromptBatch, previous: Tensor | None, r: int) -> tuple[Tensor, Tensor]:
            target = masks[prompts.source].float()
            mask_input = previous[:, None] if previous is not None and hp.mask_input else None
            logits, iou_pred = self.decode(embedding, prompts, mask_input)
            # SAM: one point is ambiguous, so its three candidates compete; otherwise the single output
            cand = slice(1, 4) if prompts.boxes is None and prompts.coords.shape[1] == 1 else slice(0, 1)
            logits, iou_pred = logits[:, cand].float(), iou_pred[:, cand]
            loss, best, iou, _ = sam_losses(
                logits, iou_pred, target, valid, hp.focal_weight, hp.dice_weight, hp.iou_weight
            )
            losses.append(loss)
            if r == 0:
                first.append(iou)
            if r == self.sampler.refine_rounds:
                last.append(iou)
            return logits[torch.arange(len(best), device=logits.device), best], target > 0.5

        for prompts in self.sampler.initial(masks, boxes, size, hp.img_size):
            if len(prompts.source):
                self.sampler.refine(prompts, valid, hp.img_size, step)
        if not losses:
            return embedding.new_zeros(()), 0, embedding.new_zeros(0), embedding.new_zeros(0)
        total = torch.cat(losses)
        return total.sum(), len(total), torch.cat(first), torch.cat(last)

    def losses(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        if "masks" not in batch:
            raise KeyError("fine-tuning on masks needs ground-truth masks in the batch: set data.masks_per_image > 0")
        hp = self.hparams
        emb = self.image_embedding(batch)
        total, terms, first, last = emb.new_zeros(()), 0, [], []
        for i in range(emb.shape[0]):
            loss, n, iou0, iou1 = self.image_loss(emb[i : i + 1], batch, i)
            total, terms = total + loss, terms + n
            first.append(iou0)
            last.append(iou1)
        out = {"loss_mask": total / max(terms, 1)}
        loss = out["loss_mask"]
        if hp.embedding_weight > 0 and not self.stored_embeddings:
            out["loss_embedding"] = self.embedding_loss(emb, batch)
            loss = loss + hp.embedding_weight * out["loss_embedding"]
        if terms == 0:  # no masks in this batch: a zero loss that still touches every trainable weight (DDP)
            loss = loss + 0.0 * sum(p.sum() for p in self.parameters() if p.requires_grad)
        else:
            out |= {"iou_first": torch.cat(first).mean(), "iou_last": torch.cat(last).mean()}
        return {"loss": loss} | out

    # ------------------------------------------------------------------------------------------ validation
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """The protocol's prompts (mobilesam.protocol) against the ground truth, on the low-resolution grid of the
        loss (scripts/evaluate.py measures at full resolution)."""
        if "masks" not in batch:
            return
        emb = self.image_embedding(batch)
        dec = self.sam
        for i in range(emb.shape[0]):
            n = int(batch["num_masks"][i])
            masks = batch["masks"][i, :n]
            keep = masks.flatten(1).any(1)
            if not keep.any():
                continue
            prompts = build_prompts(
                batch["points"][i, :n][keep],
                batch["boxes"][i, :n][keep],
                masks[keep],
                batch["key"][i],
                batch["mask_ids"][i, :n][keep].tolist(),
                self.hparams.img_size,
            )
            size = (int(batch["size"][i, 0]), int(batch["size"][i, 1]))
            valid = valid_cells(size, masks.shape[-1], self.hparams.img_size, masks.device)
            for kind in PROMPT_TYPES:
                pts, boxes, multimask = prompts.for_type(kind)
                logits = decode(dec.prompt_encoder, dec.mask_decoder, emb[i : i + 1], pts, boxes, multimask)
                self.val_miou[kind].update(mask_ious(logits.float(), masks[keep].float(), valid))

    def on_validation_epoch_end(self) -> None:
        for kind, metric in self.val_miou.items():
            if metric.update_count:
                self.log(f"val/miou_{kind}", metric.compute(), prog_bar=kind == "point")
            metric.reset()
