"""The mask-agreement protocol: hand-counted IoU, identical embeddings, prompts inside masks."""

from __future__ import annotations

import pytest
import torch

from mobilesam import build_sam
from mobilesam.protocol import (
    PROMPT_TYPES,
    Decoder,
    build_prompts,
    decode_all,
    image_ious,
    mask_iou,
    prompt_seed,
    second_points,
)
from tests.helpers import perturb_, rel_err


def test_iou_matches_a_hand_count():
    a = torch.zeros(3, 4, 5, dtype=torch.bool)
    b = torch.zeros(3, 4, 5, dtype=torch.bool)
    a[0, :2, :2] = True  # 4 px
    b[0, 1:3, 1:3] = True  # 4 px, overlap 1 -> 1 / 7
    a[1, 0, 0] = True  # disjoint -> 0
    b[1, 3, 4] = True
    iou, empty = mask_iou(a, b)  # third pair: both empty -> 1, flagged
    assert torch.allclose(iou, torch.tensor([1 / 7, 0.0, 1.0]))
    assert empty.tolist() == [False, False, True]


def test_second_points_are_inside_and_reproducible():
    masks = torch.zeros(3, 64, 64, dtype=torch.bool)
    masks[0, 10:20, 30:40] = True
    masks[1, 50, 5] = True
    first = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])  # mask 2 is empty at this resolution
    seeds = [prompt_seed("sa_1", i) for i in range(3)]
    pts = second_points(masks, first, seeds, img_size=256)
    assert torch.equal(pts, second_points(masks, first, seeds, img_size=256))
    cells = (pts[:2] / 4).floor().long()
    assert masks[0, cells[0, 1], cells[0, 0]] and masks[1, cells[1, 1], cells[1, 0]]
    assert pts[1].tolist() == [5 * 4 + 2, 50 * 4 + 2]
    assert torch.equal(pts[2], first[2])
    assert prompt_seed("sa_1", 0) != prompt_seed("sa_1", 1) != prompt_seed("sa_2", 0)


@torch.no_grad()
def test_same_embedding_scores_one_and_a_perturbed_one_less():
    sam = perturb_(build_sam("vit_t", img_size=256), seed=5)
    dec = Decoder(sam.prompt_encoder, sam.mask_decoder)
    emb = sam.image_encoder(torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(0)))
    masks = torch.zeros(4, 64, 64, dtype=torch.bool)
    for i in range(4):
        masks[i, 8 * i : 8 * i + 20, 10 : 30 + 5 * i] = True
    boxes = torch.tensor([[40.0, 32 * i, 120 + 20 * i, 32 * i + 80] for i in range(4)])
    points = torch.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1)
    prompts = build_prompts(points, boxes, masks, "img", [0, 1, 2, 3], 256)
    same = image_ious(dec, emb, prompts, (256, 192), 256, teacher_embedding=emb.clone())
    assert set(same["vs_teacher"]) == set(PROMPT_TYPES)
    assert all(torch.all(v == 1) for v in same["vs_teacher"].values())
    noisy = emb + 0.5 * emb.std() * torch.randn(emb.shape, generator=torch.Generator().manual_seed(1))
    diff = image_ious(dec, noisy, prompts, (256, 192), 256, teacher_embedding=emb)
    assert all(v.mean() < 1 for v in diff["vs_teacher"].values())
    gt = torch.zeros(4, 256, 192, dtype=torch.bool)
    gt[:, :100, :100] = True
    with_gt = image_ious(dec, emb, prompts, (256, 192), 256, teacher_embedding=emb, gt_masks=gt)
    assert torch.equal(with_gt["vs_ground_truth"]["box"], with_gt["teacher_vs_ground_truth"]["box"])


@pytest.mark.parametrize("kind", PROMPT_TYPES)
def test_evaluation_decodes_as_training_does(kind):
    """Evaluation and validation (no gradients) decode through the factored many-prompt path, a fine-tune with
    gradients through the decoder's own forward: the same logits and IoUs for every prompt type."""
    sam = perturb_(build_sam("vit_t", img_size=256), seed=2)
    emb = sam.image_encoder(torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(3))).detach()
    boxes = torch.tensor([[20.0 + 9 * i, 30.0, 140.0 + 6 * i, 90.0 + 11 * i] for i in range(5)])
    points = (boxes[:, :2] + boxes[:, 2:]) / 2
    masks = torch.zeros(5, 64, 64, dtype=torch.bool)
    masks[:, 8:22, 6:34] = True
    pts, bxs, _ = build_prompts(points, boxes, masks, "img", list(range(5)), 256).for_type(kind)
    with torch.no_grad():
        fast, fast_iou = decode_all(sam.prompt_encoder, sam.mask_decoder, emb, pts, bxs)
    plain, plain_iou = decode_all(sam.prompt_encoder, sam.mask_decoder, emb, pts, bxs)
    assert plain.requires_grad and not fast.requires_grad and fast.shape == (5, 4, 64, 64)
    assert rel_err(fast, plain.detach()) < 1e-4 and rel_err(fast_iou, plain_iou.detach()) < 1e-4
