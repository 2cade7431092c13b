"""`PromptInTheLoopModule`: mask-level distillation with prompts in the loop (EdgeSAM's second stage), on top of
MobileSAM's embedding MSE. Everything comes from the shards: the teacher's masks are decoded from the stored
teacher embedding by the teacher's own prompt encoder and mask decoder, so no ViT-H runs."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor

from mobilesam.protocol import Decoder, decode_all

from .base import SamModule
from .losses import bce_loss, dice_loss, mask_ious, valid_cells
from .prompts import PromptBatch, PromptSampler


class PromptInTheLoopModule(SamModule):
    """Stage 2: the student's masks learn the teacher's, for sampled prompts refined where the two disagree.

    Args (beyond `SamModule`'s):
        prompts_per_image: objects prompted per image per step (drawn from the batch's ground-truth masks).
        box_fraction: share of box prompts (the rest are one positive point inside the mask).
        box_noise: box jitter, as a fraction of the box side (SAM: 0.1), at most `box_noise_max` pixels.
        refine_rounds: corrective-point rounds after the first decode (EdgeSAM: prompt-in-the-loop).
        target: "soft" (the teacher's sigmoid probabilities) or "binary" (the teacher's thresholded masks).
        mask_weight, embedding_weight: loss = mask_weight * (BCE + dice) + embedding_weight * MSE.
        hard_weighting: weight each prompt by the student-teacher disagreement (1 - IoU), normalised to mean 1.
        train_decoder: also train the student's mask decoder (the teacher keeps a frozen copy).
    """

    def __init__(
        self,
        prompts_per_image: int = 16,
        box_fraction: float = 0.5,
        box_noise: float = 0.1,
        box_noise_max: float = 20.0,
        refine_rounds: int = 2,
        target: str = "soft",
        mask_weight: float = 1.0,
        embedding_weight: float = 1.0,
        hard_weighting: bool = False,
        train_decoder: bool = False,
        **kwargs: Any,
    ) -> None:
        if target not in ("soft", "binary"):
            raise ValueError(f"target={target!r}; use 'soft' (teacher probabilities) or 'binary' (teacher masks)")
        self._train_decoder = train_decoder
        self.sampler = PromptSampler(prompts_per_image, box_fraction, box_noise, box_noise_max, refine_rounds)
        super().__init__(**kwargs)
        self.hparams.update(
            **self.sampler.settings(),
            target=target,
            mask_weight=mask_weight,
            embedding_weight=embedding_weight,
            hard_weighting=hard_weighting,
            train_decoder=train_decoder,
        )
        # The teacher's decoder stays as it was even when the student's trains
        self.teacher_prompt_encoder = copy.deepcopy(self.sam.prompt_encoder).requires_grad_(False)
        self.teacher_mask_decoder = copy.deepcopy(self.sam.mask_decoder).requires_grad_(False)

    def teacher_decoder(self) -> Decoder:
        return Decoder(self.teacher_prompt_encoder, self.teacher_mask_decoder)

    def configure_trainable(self) -> None:
        super().configure_trainable()
        if self._train_decoder:
            self.sam.mask_decoder.requires_grad_(True)

    # ------------------------------------------------------------------------------------------ losses
    def _decode_pair(self, s_emb: Tensor, t_emb: Tensor, prompts: PromptBatch) -> tuple[Tensor, Tensor]:
        """(student logits with grad, teacher logits): Px4x(S/4)x(S/4), all four mask outputs (the single mask
        and the three multimask candidates), so point prompts learn the outputs the `point` protocol uses."""
        pts, boxes = prompts.points(), prompts.boxes
        with torch.no_grad():
            t, _ = decode_all(self.teacher_prompt_encoder, self.teacher_mask_decoder, t_emb, pts, boxes)
        s, _ = decode_all(self.sam.prompt_encoder, self.sam.mask_decoder, s_emb, pts, boxes)
        return s.float(), t.float()

    def _prompt_losses(self, s: Tensor, t: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        """(per-prompt BCE + dice averaged over the four outputs, per-prompt IoU of the single-mask outputs)."""
        target = torch.sigmoid(t) if self.hparams.target == "soft" else (t > 0).float()
        p = s.shape[0]
        flat_s, flat_t = s.flatten(0, 1), target.flatten(0, 1)
        loss = (bce_loss(flat_s, flat_t, valid) + dice_loss(flat_s, flat_t, valid)).view(p, -1).mean(1)
        return loss, mask_ious(s[:, 0], (t[:, 0] > 0).float(), valid)

    def mask_loss(self, s_emb: Tensor, batch: dict[str, Any], i: int) -> tuple[Tensor, Tensor]:
        """Mask loss of image i over its prompts and refinement rounds: (loss, mean IoU of the last round)."""
        hp, sampler = self.hparams, self.sampler
        n = int(batch["num_masks"][i])
        size = (int(batch["size"][i, 0]), int(batch["size"][i, 1]))
        valid = valid_cells(size, batch["masks"].shape[-1], hp.img_size, s_emb.device)
        t_emb = batch["embedding"][i : i + 1].float()
        losses, ious = [], []

        def step(prompts: PromptBatch, previous: Tensor | None, r: int) -> tuple[Tensor, Tensor]:
            s, t = self._decode_pair(s_emb[i : i + 1], t_emb, prompts)
            loss, iou = self._prompt_losses(s, t, valid)
            if hp.hard_weighting:
                w = (1 - iou).detach() + 1e-3
                loss = loss * (w / w.mean())
            losses.append(loss)
            if r == sampler.refine_rounds:
                ious.append(iou.detach())
            return s[:, 0], t[:, 0] > 0  # the single-mask outputs: the student's is corrected toward the teacher's

        for prompts in sampler.initial(batch["masks"][i, :n], batch["boxes"][i, :n], size, hp.img_size):
            if len(prompts.source):
                sampler.refine(prompts, valid, hp.img_size, step)
        if not losses:
            return s_emb.new_zeros(()), s_emb.new_ones(())
        return torch.cat(losses).mean(), torch.cat(ious).mean()

    def losses(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        if "masks" not in batch:
            raise KeyError(
                "prompt-in-the-loop training needs ground-truth masks in the batch: set data.masks_per_image"
            )
        hp = self.hparams
        s_emb = self.student_embedding(batch)
        emb_loss = self.embedding_loss(s_emb, batch)
        mask_losses, ious = [], []
        for i in range(s_emb.shape[0]):
            if int(batch["num_masks"][i]) == 0:
                continue
            loss, iou = self.mask_loss(s_emb, batch, i)
            mask_losses.append(loss)
            ious.append(iou)
        mask_loss = torch.stack(mask_losses).mean() if mask_losses else s_emb.new_zeros(())
        out = {"loss": hp.embedding_weight * emb_loss + hp.mask_weight * mask_loss}
        out |= {"loss_embedding": emb_loss, "loss_mask": mask_loss}
        if ious:
            out["mask_iou"] = torch.stack(ious).mean()
        return out
