"""Prompt sampling for mask-level training: noisy boxes and points inside ground-truth masks, and corrective
points drawn from where two masks disagree (EdgeSAM's prompt-in-the-loop)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class PromptBatch:
    """Prompts for P objects of one image, in input-frame pixels.

    Attributes:
        coords: PxKx2 points (x, y), or None for box-only prompts.
        labels: PxK point labels (1 positive, 0 negative).
        boxes: Px4 XYXY boxes, or None.
        source: P indices of the ground-truth mask each prompt came from.
    """

    coords: Tensor | None
    labels: Tensor | None
    boxes: Tensor | None
    source: Tensor

    def points(self) -> tuple[Tensor, Tensor] | None:
        return None if self.coords is None else (self.coords, self.labels)

    def with_point(self, xy: Tensor, label: Tensor) -> PromptBatch:
        """Appends one point per prompt (Px2, P)."""
        coords = xy[:, None] if self.coords is None else torch.cat([self.coords, xy[:, None]], 1)
        labels = label[:, None] if self.labels is None else torch.cat([self.labels, label[:, None]], 1)
        return PromptBatch(coords, labels.int(), self.boxes, self.source)


def cell_centres(cells: Tensor, scale: float) -> Tensor:
    """(row, col) cells of the low-resolution grid -> (x, y) input-frame pixels at the cell centres."""
    return torch.stack([(cells[:, 1].float() + 0.5) * scale, (cells[:, 0].float() + 0.5) * scale], dim=1)


def random_cells(masks: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """One uniformly drawn True cell per mask: (Px2 (row, col), P bool found). Empty masks get (0, 0), False."""
    flat = masks.flatten(1).float()
    found = flat.sum(1) > 0
    weights = torch.where(found[:, None], flat, torch.ones_like(flat))
    idx = torch.multinomial(weights, 1, generator=generator).squeeze(1)
    w = masks.shape[-1]
    return torch.stack([idx // w, idx % w], 1), found


def noisy_boxes(boxes: Tensor, size: tuple[int, int], std: float, max_px: float, generator=None) -> Tensor:
    """SAM's box jitter: each coordinate moves by N(0, std * side), at most `max_px`, kept inside the image."""
    wh = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
    noise = (torch.randn(boxes.shape, generator=generator, device=boxes.device) * std * wh).clamp(-max_px, max_px)
    out = boxes + noise
    h, w = size
    out[:, 0::2] = out[:, 0::2].clamp(0, w)
    out[:, 1::2] = out[:, 1::2].clamp(0, h)
    lo = torch.minimum(out[:, :2], out[:, 2:])
    hi = torch.maximum(out[:, :2], out[:, 2:])
    return torch.cat([lo, hi], 1)


def initial_prompts(
    masks_low: Tensor,
    boxes: Tensor,
    size: tuple[int, int],
    img_size: int,
    n: int,
    box_fraction: float = 0.5,
    box_noise: float = 0.1,
    box_noise_max: float = 20.0,
    generator: torch.Generator | None = None,
    distinct: bool = False,
) -> tuple[PromptBatch, PromptBatch]:
    """Draws `n` objects (with repetition when the image has fewer masks) and gives each a noisy box or a
    positive point inside its mask.

    Args:
        masks_low: Mx(S/4)x(S/4) bool ground-truth masks of one image (the loader's `masks`).
        boxes: Mx4 ground-truth XYXY boxes (input-frame pixels).
        size: (h, w) of the resized image.
        n: prompts to draw.
        distinct: draw each object at most once while there are enough (then every object once, the rest
            drawn again); otherwise objects are drawn independently.

    Returns:
        (box prompts, point prompts): two groups, since a decoder batch needs one prompt layout.
    """
    m = masks_low.shape[0]
    dev = masks_low.device
    if distinct:
        pick = torch.cat([torch.randperm(m, generator=generator) for _ in range(-(-n // m))])[:n].to(dev)
    else:
        pick = torch.randint(m, (n,), generator=generator, device="cpu").to(dev)
    is_box = torch.rand(n, generator=generator) < box_fraction
    is_box = is_box.to(dev)
    bsrc, psrc = pick[is_box], pick[~is_box]
    box_prompts = PromptBatch(
        None, None, noisy_boxes(boxes[bsrc].float(), size, box_noise, box_noise_max, generator), bsrc
    )
    cells, _ = random_cells(masks_low[psrc], generator)
    xy = cell_centres(cells, img_size / masks_low.shape[-1])
    ones = torch.ones(len(psrc), 1, dtype=torch.int, device=dev)
    point_prompts = PromptBatch(xy[:, None].to(dev), ones, None, psrc)
    return box_prompts, point_prompts


def corrective_points(
    student: Tensor, teacher: Tensor, valid: Tensor, img_size: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """A point per prompt where the student's mask and the teacher's disagree, labelled by the teacher.

    Args:
        student, teacher: Px(S/4)x(S/4) bool masks.
        valid: (S/4)x(S/4) bool, the unpadded region.

    Returns:
        Px2 points (input-frame pixels) and P labels (1 where the teacher sees the object). Where the two agree
        everywhere, the point is drawn inside the teacher's mask (positive) or, if that is empty, anywhere valid.
    """
    error = (student ^ teacher) & valid
    cells, found = random_cells(error, generator)
    fallback, has_fg = random_cells(teacher & valid, generator)
    anywhere, _ = random_cells(valid.expand_as(teacher), generator)
    fallback = torch.where(has_fg[:, None], fallback, anywhere)
    cells = torch.where(found[:, None], cells, fallback)
    label = teacher[torch.arange(len(cells), device=cells.device), cells[:, 0], cells[:, 1]]
    return cell_centres(cells, img_size / teacher.shape[-1]), label.int()


@dataclass
class PromptSampler:
    """The prompt simulation of mask-level training (stage 2 and fine-tuning): which objects get a prompt, of
    which kind, and the corrective rounds that follow.

    Attributes:
        prompts_per_image: objects prompted per image and step.
        box_fraction: share of box prompts (the rest start from one positive point inside the mask).
        box_noise, box_noise_max: box jitter, N(0, box_noise x side) per coordinate, at most this many pixels.
        refine_rounds: corrective-point rounds after the first prediction.
        distinct: each object at most once while the image has enough (see `initial_prompts`).
    """

    prompts_per_image: int = 16
    box_fraction: float = 0.5
    box_noise: float = 0.1
    box_noise_max: float = 20.0
    refine_rounds: int = 2
    distinct: bool = False

    def __post_init__(self) -> None:
        if self.prompts_per_image < 1:
            raise ValueError(f"model.prompts_per_image={self.prompts_per_image} must be >= 1")
        if self.refine_rounds < 0:
            raise ValueError(f"model.refine_rounds={self.refine_rounds} must be >= 0 (0: no corrective rounds)")
        if not 0.0 <= self.box_fraction <= 1.0:
            raise ValueError(f"model.box_fraction={self.box_fraction} must be within [0, 1]")

    def settings(self) -> dict[str, float | int]:
        """The sampler's options as the modules record them in their hyper-parameters."""
        return {
            k: getattr(self, k)
            for k in ("prompts_per_image", "box_fraction", "box_noise", "box_noise_max", "refine_rounds")
        }

    def initial(
        self, masks_low: Tensor, boxes: Tensor, size: tuple[int, int], img_size: int
    ) -> tuple[PromptBatch, PromptBatch]:
        """(box prompts, point prompts) for one image's ground-truth masks (see `initial_prompts`)."""
        return initial_prompts(
            masks_low, boxes, size, img_size, self.prompts_per_image, self.box_fraction, self.box_noise,
            self.box_noise_max, distinct=self.distinct,
        )  # fmt: skip

    def refine(
        self,
        prompts: PromptBatch,
        valid: Tensor,
        img_size: int,
        step: Callable[[PromptBatch, Tensor | None, int], tuple[Tensor, Tensor]],
    ) -> None:
        """The corrective-refinement loop: `refine_rounds + 1` predictions, each followed by a point where the
        prediction and the target disagree (labelled by the target), as SAM's and EdgeSAM's training do.

        Args:
            prompts: the first round's prompts (P objects).
            valid: (S/4)x(S/4) bool, the unpadded region.
            step: `step(prompts, previous_logits, round) -> (logits, target)`: predicts and records its loss;
                returns the Px(S/4)x(S/4) logits the next point corrects (the previous round's, detached, come back
                as `previous_logits`: SAM's mask input) and the Px(S/4)x(S/4) bool target.
        """
        previous = None
        for r in range(self.refine_rounds + 1):
            logits, target = step(prompts, previous, r)
            if r == self.refine_rounds:
                return
            previous = logits.detach()
            xy, label = corrective_points(previous > 0, target, valid, img_size)
            prompts = prompts.with_point(xy, label)
