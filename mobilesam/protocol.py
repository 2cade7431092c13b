"""The mask-agreement protocol (MobileSAM's mIoU): one implementation for training validation and evaluation.

For every ground-truth mask of an image, three prompts are built and decoded with a prompt encoder and a mask
decoder from an image embedding:

- `point`: the mask's point (SA-1B's `point_coords`; for other data the interior point farthest from the
  border); multimask output, the best of the three masks by predicted IoU;
- `two_points`: that point plus a second positive point drawn uniformly inside the mask (on the low-resolution
  grid of the ground truth, at the cell centre) with a seed fixed by (image key, mask id); single-mask output;
- `box`: the mask's box; single-mask output.

Masks are compared at the resized input resolution (long side img_size, padding removed): the decoder's
logits are upscaled x4 as SAM's postprocessing does and thresholded at 0. IoU of two empty masks is defined as
1.0 (both agree there is nothing); `image_ious` returns which ones were, so reports can count them.

"Against the teacher" decodes both embeddings (the student's and the stored teacher's); "against ground truth"
compares with the annotation at the same resolution.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .mask_ops import mask_iou, upscale_unpadded

PROMPT_TYPES = ("point", "two_points", "box")


@dataclass
class Prompts:
    """The protocol's prompts for N masks of one image, in input-frame pixels (x, y)."""

    point: Tensor  # N x 2
    second_point: Tensor  # N x 2
    box: Tensor  # N x 4, XYXY

    def __len__(self) -> int:
        return len(self.point)

    def subset(self, index: Tensor | list[int]) -> Prompts:
        """The prompts of some of the masks (e.g. the worst ones, to draw them)."""
        return Prompts(point=self.point[index], second_point=self.second_point[index], box=self.box[index])

    def for_type(self, kind: str) -> tuple[tuple[Tensor, Tensor] | None, Tensor | None, bool]:
        """(points, boxes, multimask_output) for the prompt encoder, for one prompt type."""
        n = len(self)
        ones = torch.ones(n, 1, dtype=torch.int, device=self.point.device)
        if kind == "point":
            return (self.point[:, None], ones), None, True
        if kind == "two_points":
            coords = torch.stack([self.point, self.second_point], dim=1)
            return (coords, torch.ones(n, 2, dtype=torch.int, device=coords.device)), None, False
        if kind == "box":
            return None, self.box, False
        raise ValueError(f"unknown prompt type {kind!r}; the protocol has {PROMPT_TYPES}")


def prompt_seed(key: str, mask_id: int) -> int:
    """The fixed seed of the second point of mask `mask_id` of image `key` (stable across runs and machines)."""
    return zlib.crc32(f"{key}/{mask_id}".encode())


def second_points(masks_low: Tensor, first: Tensor, seeds: list[int], img_size: int) -> Tensor:
    """A positive point drawn uniformly inside each low-resolution ground-truth mask.

    Args:
        masks_low: Nxsxs bool masks on the low-resolution grid of the padded input frame (s = img_size / 4).
        first: Nx2 first points, used where a mask has no cell at this resolution.
        seeds: N seeds (see `prompt_seed`).

    Returns:
        Nx2 points (x, y) in input-frame pixels, at cell centres.
    """
    scale = img_size / masks_low.shape[-1]
    out = first.clone().float()
    for i, (mask, seed) in enumerate(zip(masks_low, seeds)):
        cells = mask.nonzero()
        if len(cells):
            g = torch.Generator().manual_seed(seed)
            y, x = cells[int(torch.randint(len(cells), (1,), generator=g))].tolist()
            out[i, 0], out[i, 1] = (x + 0.5) * scale, (y + 0.5) * scale
    return out


def build_prompts(
    points: Tensor, boxes: Tensor, masks_low: Tensor, key: str, mask_ids: list[int], img_size: int
) -> Prompts:
    """The protocol's prompts for the N masks of one image (the loader's `points`, `boxes`, `masks` rows)."""
    seeds = [prompt_seed(key, int(m)) for m in mask_ids]
    second = second_points(masks_low.cpu(), points.cpu(), seeds, img_size).to(points.device)
    return Prompts(point=points.float(), second_point=second, box=boxes.float())


def decode_all(
    prompt_encoder: nn.Module,
    mask_decoder: nn.Module,
    embedding: Tensor,
    points: tuple[Tensor, Tensor] | None,
    boxes: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """All four mask outputs for N prompt sets on one image: Nx4x(S/4)x(S/4) logits and Nx4 predicted IoUs.

    Output 0 is SAM's single-mask answer, outputs 1-3 its multimask candidates. Without gradients (evaluation,
    validation, the teacher's side of stage 2) the decoder runs in the factored form for many prompts on one image
    (`mobilesam.many_prompts`, equal up to float rounding; 0.6x the time for 16 prompts at 1024 on CPU).
    """
    from .many_prompts import decode_low_res
    from .modeling.mask_decoder import MaskDecoder

    sparse, dense = prompt_encoder(points, boxes, None)
    # the factored form reads MaskDecoder's own layers (a stand-in decoder takes the plain call)
    if embedding.shape[0] == 1 and not torch.is_grad_enabled() and isinstance(mask_decoder, MaskDecoder):
        return decode_low_res(prompt_encoder, mask_decoder, embedding, sparse, dense)
    return mask_decoder.predict_masks(embedding, prompt_encoder.get_dense_pe(), sparse, dense)


def select(logits: Tensor, iou: Tensor, multimask: bool) -> Tensor:
    """The protocol's mask from `decode_all`'s outputs: output 0, or the best of 1-3 by predicted IoU."""
    if not multimask:
        return logits[:, 0]
    best = iou[:, 1:].argmax(dim=1) + 1
    return logits[torch.arange(len(best), device=logits.device), best]


def decode(
    prompt_encoder: nn.Module,
    mask_decoder: nn.Module,
    embedding: Tensor,
    points: tuple[Tensor, Tensor] | None,
    boxes: Tensor | None,
    multimask: bool,
) -> Tensor:
    """Mask logits for N prompt sets on one image: Nx(S/4)x(S/4); with `multimask` the best of three by IoU."""
    return select(*decode_all(prompt_encoder, mask_decoder, embedding, points, boxes), multimask)


@dataclass
class Decoder:
    """A prompt encoder and a mask decoder (the student's, or the teacher's own)."""

    prompt_encoder: nn.Module
    mask_decoder: nn.Module


@torch.no_grad()
def protocol_masks(
    decoder: Decoder, embedding: Tensor, prompts: Prompts, kind: str, input_size: tuple[int, int], img_size: int
) -> Tensor:
    """The protocol's boolean masks for N prompts of one type: Nxhxw at the resized input size (padding removed).

    Args:
        embedding: 1xCxExE image embedding.
        kind: one of PROMPT_TYPES.
        input_size: (h, w) of the resized image.
    """
    pts, boxes, multimask = prompts.for_type(kind)
    logits = decode(decoder.prompt_encoder, decoder.mask_decoder, embedding, pts, boxes, multimask)
    return upscale_unpadded(logits[:, None].float(), input_size, img_size)[:, 0] > 0


@torch.no_grad()
def image_ious(
    student: Decoder,
    student_embedding: Tensor,
    prompts: Prompts,
    input_size: tuple[int, int],
    img_size: int,
    teacher: Decoder | None = None,
    teacher_embedding: Tensor | None = None,
    gt_masks: Tensor | None = None,
) -> dict[str, dict[str, Tensor]]:
    """Per-mask IoUs of one image for every prompt type.

    Args:
        student: decoder for the student embedding.
        student_embedding: 1xCxExE.
        prompts: the protocol's prompts for N masks.
        input_size: (h, w) of the resized image.
        teacher: decoder for the teacher embedding (defaults to the student's: encoder-only distillation).
        teacher_embedding: 1xCxExE, or None to skip the comparison with the teacher.
        gt_masks: Nxhxw bool ground truth at the resized input resolution, or None.

    Returns:
        {"vs_teacher": {type: N IoUs}, "vs_ground_truth": {...}, "teacher_vs_ground_truth": {...},
        "both_empty": {type: N flags}}, with the keys that apply.
    """
    teacher = teacher or student
    out: dict[str, dict[str, Tensor]] = {}
    for kind in PROMPT_TYPES:
        s_mask = protocol_masks(student, student_embedding, prompts, kind, input_size, img_size)
        if teacher_embedding is not None:
            t_mask = protocol_masks(teacher, teacher_embedding, prompts, kind, input_size, img_size)
            iou, empty = mask_iou(s_mask, t_mask)
            out.setdefault("vs_teacher", {})[kind] = iou
            out.setdefault("both_empty", {})[kind] = empty
        if gt_masks is not None:
            out.setdefault("vs_ground_truth", {})[kind] = mask_iou(s_mask, gt_masks)[0]
            if teacher_embedding is not None:
                out.setdefault("teacher_vs_ground_truth", {})[kind] = mask_iou(t_mask, gt_masks)[0]
    return out
