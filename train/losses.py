"""Per-prompt mask losses on the low-resolution grid: BCE, dice, focal, and SAM's focal + dice + IoU-MSE mix."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss

from mobilesam.mask_ops import mask_iou


def _mean_over_valid(per_cell: Tensor, valid: Tensor) -> Tensor:
    """PxHxW per-cell losses -> P means over the valid (HxW) cells."""
    return (per_cell * valid).flatten(1).sum(1) / valid.expand_as(per_cell).flatten(1).sum(1).clamp_min(1)


def dice_loss(logits: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """Per-prompt soft dice loss over the valid cells: PxHxW logits, PxHxW targets in [0, 1], HxW valid -> P."""
    p = torch.sigmoid(logits) * valid
    t = target * valid
    inter = (p * t).flatten(1).sum(1)
    return 1 - (2 * inter + 1) / (p.flatten(1).sum(1) + t.flatten(1).sum(1) + 1)


def bce_loss(logits: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """Per-prompt binary cross-entropy over the valid (HxW) cells -> P."""
    return _mean_over_valid(F.binary_cross_entropy_with_logits(logits, target, reduction="none"), valid)


def focal_loss(logits: Tensor, target: Tensor, valid: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Per-prompt sigmoid focal loss (Lin et al. 2017, torchvision's) averaged over the valid cells -> P."""
    return _mean_over_valid(sigmoid_focal_loss(logits, target, alpha=alpha, gamma=gamma, reduction="none"), valid)


def mask_ious(logits: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """IoU of the thresholded logits (> 0) with binary targets over the valid cells, per mask: ...xHxW -> ...

    The IoU rule is `mobilesam.mask_ops.mask_iou` (two empty masks count as IoU 1), the protocol's.
    """
    return mask_iou((logits > 0) & valid, (target > 0.5) & valid)[0]


def sam_losses(
    logits: Tensor,
    iou_pred: Tensor,
    target: Tensor,
    valid: Tensor,
    focal_weight: float = 20.0,
    dice_weight: float = 1.0,
    iou_weight: float = 1.0,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """SAM's supervision for P prompts with K candidate masks each (Kirillov et al. 2023, Sec. 3 and App. A).

    Mask loss = focal_weight * focal + dice_weight * dice (SAM: 20:1). With several candidates (an ambiguous
    single point), only the candidate with the lowest mask loss is back-propagated. The IoU head learns, by MSE,
    the IoU of each candidate's thresholded mask with the ground truth.

    Args:
        logits: PxKxHxW mask logits on the low-resolution grid.
        iou_pred: PxK predicted IoUs.
        target: PxHxW ground truth in {0, 1} (float).
        valid: HxW bool, the unpadded region.

    Returns:
        (P losses: best candidate's mask loss + iou_weight * IoU MSE over all K, P chosen candidate indices,
        P IoUs of the chosen candidates, P focal + dice parts for logging).
    """
    p, k = logits.shape[:2]
    flat = logits.flatten(0, 1)
    tgt = target[:, None].expand(-1, k, -1, -1).flatten(0, 1)
    focal = focal_loss(flat, tgt, valid, focal_alpha, focal_gamma)
    mask = (focal_weight * focal + dice_weight * dice_loss(flat, tgt, valid)).view(p, k)
    best = mask.detach().argmin(1)
    rows = torch.arange(p, device=logits.device)
    actual = mask_ious(logits.detach(), target[:, None], valid)  # PxK
    iou_mse = F.mse_loss(iou_pred.float(), actual, reduction="none").mean(1)
    chosen = mask[rows, best]
    return chosen + iou_weight * iou_mse, best, actual[rows, best], chosen.detach()


def valid_cells(size: tuple[int, int], low: int, img_size: int, device: torch.device | None = None) -> Tensor:
    """The cells of the low x low mask grid that lie on the image (h, w) rather than its padding: low x low bool."""
    scale = img_size / low
    rows = torch.arange(low, device=device)
    return (rows[:, None] < size[0] / scale) & (rows[None, :] < size[1] / scale)


# Stage 1's losses on the image embedding (`model.loss`)
EMBEDDING_LOSSES = ("mse", "mse_cosine")


def embedding_cells(sizes: Tensor, grid: int, img_size: int) -> Tensor:
    """Bx1xExE float mask of the embedding cells that cover the image (the rest is padding): B x 2 (h, w) sizes."""
    cells = torch.ceil(sizes.float() * grid / img_size).long()
    ar = torch.arange(grid, device=sizes.device)
    valid = (ar[None, :, None] < cells[:, 0, None, None]) & (ar[None, None, :] < cells[:, 1, None, None])
    return valid[:, None].float()


def embedding_cosine(student: Tensor, teacher: Tensor, sizes: Tensor | None, img_size: int) -> Tensor:
    """Mean over the embedding cells of 1 - cos(student, teacher), each cell's 256 channels one vector (Bx256xExE).

    It weighs every cell's direction equally whatever its norm, which the MSE leaves to the large-norm cells; with
    `sizes`, only the cells that cover the image count.
    """
    per_cell = 1 - F.cosine_similarity(student.float(), teacher.float(), dim=1, eps=1e-6)[:, None]  # Bx1xExE
    if sizes is None:
        return per_cell.mean()
    valid = embedding_cells(sizes, student.shape[-1], img_size)
    return (per_cell * valid).sum() / valid.sum().clamp_min(1)


def check_embedding_loss(name: str) -> str:
    """`name` when it is one of `EMBEDDING_LOSSES`, else a ValueError naming the choices."""
    if name not in EMBEDDING_LOSSES:
        raise ValueError(f"model.loss={name!r} is not an embedding loss; choose one of {', '.join(EMBEDDING_LOSSES)}")
    return name
