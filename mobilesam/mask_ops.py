"""Mask utilities shared by the predictor, the facade, the automatic mask generator, the protocol and training."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .device import is_tracing


def upscale_unpadded(logits: Tensor, input_size: tuple[int, int], img_size: int) -> Tensor:
    """Low-resolution mask logits of the padded input frame -> logits at the unpadded input size.

    Equal to SAM's upscale to img_size x img_size followed by a crop to `input_size`, but only the low-resolution
    rows and columns that reach the unpadded region are upscaled (one more than needed, so the bilinear weights
    at the crop border are the same as on the full grid).

    Args:
        logits: BxCx(img_size/4)x(img_size/4).
        input_size: (h, w) of the resized image inside the padded frame.

    Returns:
        BxCxhxw logits.
    """
    low = logits.shape[-1]
    factor = img_size // low
    keep_h = min(low, math.ceil(input_size[0] / factor) + 1)
    keep_w = min(low, math.ceil(input_size[1] / factor) + 1)
    logits = logits[..., :keep_h, :keep_w]
    if is_tracing() or logits.dim() != 4:
        logits = F.interpolate(logits, (keep_h * factor, keep_w * factor), mode="bilinear", align_corners=False)
        return logits[..., : input_size[0], : input_size[1]]
    # The kernel at the full grid's scale, writing only the rows and columns kept (contiguous, no crop copy)
    return torch.ops.aten.upsample_bilinear2d(logits, list(input_size), False, float(factor), float(factor))


def masks_to_boxes(masks: Tensor) -> Tensor:
    """Tight XYXY boxes of boolean masks: ...xHxW -> ...x4 (inclusive pixel indices, float; zeros if empty).

    Same convention as segment-anything's `batched_mask_to_box`: x2 and y2 are the last set column and row.
    """
    if masks.numel() == 0:
        return torch.zeros(*masks.shape[:-2], 4, device=masks.device)
    h, w = masks.shape[-2:]
    rows = masks.any(dim=-1)  # ...xH
    cols = masks.any(dim=-2)  # ...xW
    ys = torch.arange(h, device=masks.device)
    xs = torch.arange(w, device=masks.device)
    y1 = torch.where(rows, ys, h).amin(dim=-1)
    y2 = torch.where(rows, ys, -1).amax(dim=-1)
    x1 = torch.where(cols, xs, w).amin(dim=-1)
    x2 = torch.where(cols, xs, -1).amax(dim=-1)
    boxes = torch.stack([x1, y1, x2, y2], dim=-1).float()
    empty = ~rows.any(dim=-1)
    return torch.where(empty[..., None], torch.zeros_like(boxes), boxes)


def mask_iou(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """IoU of boolean masks over their last two dims: ...xHxW -> (... IoUs, ... flags where both are empty).

    Two empty masks agree that there is nothing: their IoU is defined as 1, and the flag says which ones they were.
    The one IoU rule of the project (the metric protocol, the training losses' IoU target).
    """
    a, b = a.flatten(-2), b.flatten(-2)
    inter = (a & b).sum(-1).float()
    union = (a | b).sum(-1).float()
    empty = union == 0
    return torch.where(empty, torch.ones_like(union), inter / union.clamp_min(1)), empty


# Above this fraction of blocks on the mask border, interpolating everything is cheaper than the sparse path.
DENSE_FRACTION = 0.02


def _bilinear_taps(in_size: int, out_size: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Source rows (i0, i1) and weight of i1 for each output row, as PyTorch's bilinear kernel
    (align_corners=False, no scale factor) computes them in float32."""
    scale = torch.tensor(in_size, dtype=torch.float32) / out_size
    src = (scale * (torch.arange(out_size, dtype=torch.float32) + 0.5) - 0.5).clamp_min(0)
    i0 = src.long()
    i1 = torch.where(i0 < in_size - 1, i0 + 1, i0)
    return i0.to(device), i1.to(device), (src - i0).to(device)


def _expand(x: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """x[..., rows, :][..., cols] for BxCxhxw x, done as two row copies (an element gather is ~5x slower)."""
    x = x.transpose(2, 3).contiguous().index_select(2, cols)  # BxCxWxh
    return x.transpose(2, 3).contiguous().index_select(2, rows)


def upsample_binary(logits: Tensor, size: tuple[int, int], threshold: float = 0.0) -> Tensor:
    """`F.interpolate(logits, size, mode="bilinear") > threshold`, interpolating only at the mask border.

    A bilinear output is a convex combination of a 2x2 block of inputs, so where all four lie on the same side of
    the threshold the block's corner gives the answer (a nearest-neighbour copy of the thresholded logits). Only
    the outputs of blocks that straddle the threshold (the mask boundary, a few percent of the pixels) are
    interpolated, with the taps and the order of operations of PyTorch's kernel.

    Args:
        logits: BxCxhxw float mask logits.
        size: (H, W) output size.

    Returns:
        BxCxHxW bool masks.
    """
    b, c, h, w = logits.shape
    out_h, out_w = size
    dev = logits.device
    above = logits > threshold
    # Blocks (i, j) whose corners (i|i+1, j|j+1) disagree, edges replicated as the kernel clamps them
    ext = torch.cat([above, above[:, :, -1:]], dim=2)
    ext = torch.cat([ext, ext[..., -1:]], dim=3)
    corner = ext[:, :, :-1, :-1]
    mixed = (corner != ext[:, :, 1:, :-1]) | (corner != ext[:, :, :-1, 1:]) | (corner != ext[:, :, 1:, 1:])
    if is_tracing() or int(mixed.sum()) > DENSE_FRACTION * mixed.numel():
        # Noisy logits (e.g. random weights): the border is everywhere, so interpolate everything
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False) > threshold

    y0, y1, ly = _bilinear_taps(h, out_h, dev)
    x0, x1, lx = _bilinear_taps(w, out_w, dev)
    out = _expand(above.to(torch.uint8), y0, x0)
    plane, bl_y, bl_x = mixed.view(b * c, h, w).nonzero(as_tuple=True)
    if len(plane) == 0:
        return out.view(torch.bool)

    # The output pixels of each mixed block: the rows with y0 == i times the columns with x0 == j
    n_rows = torch.bincount(y0, minlength=h)
    n_cols = torch.bincount(x0, minlength=w)
    nr, nc = n_rows[bl_y], n_cols[bl_x]
    count = nr * nc
    block = torch.repeat_interleave(torch.arange(len(plane), device=dev), count)
    offset = torch.arange(len(block), device=dev) - torch.repeat_interleave(torch.cumsum(count, 0) - count, count)
    ncb = nc[block]
    yy = (torch.cumsum(n_rows, 0) - n_rows)[bl_y][block] + offset // ncb
    xx = (torch.cumsum(n_cols, 0) - n_cols)[bl_x][block] + offset % ncb

    # Interpolate there, in the kernel's order of operations
    flat = logits.reshape(-1)
    base = plane[block] * (h * w)
    r0, r1 = base + y0[yy] * w, base + y1[yy] * w
    c0, c1 = x0[xx], x1[xx]
    wy, wx = ly[yy], lx[xx]
    top = (1 - wx) * flat[r0 + c0] + wx * flat[r0 + c1]
    bottom = (1 - wx) * flat[r1 + c0] + wx * flat[r1 + c1]
    out.view(-1)[plane[block] * (out_h * out_w) + yy * out_w + xx] = ((1 - wy) * top + wy * bottom > threshold).to(
        torch.uint8
    )
    return out.view(torch.bool)
