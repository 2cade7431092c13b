"""The mask-agreement protocol: hand-counted IoU, identical embeddings, prompts inside masks."""

from __future__ import annotations

import torch

from mobilesam import build_sam
from mobilesam.protocol import PROMPT_TYPES, Decoder, build_prompts, image_ious, mask_iou, prompt_seed, second_points
from tests.helpers import perturb_


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


def test_the_protocol_module_imports_first() -> None:
    """`mobilesam.mask_ops` (which the protocol imports) and `mobilesam.modeling` import each other: a fresh process
    importing the protocol before anything else must work (the evaluation does)."""
    import subprocess
    import sys

    code = "from mobilesam.protocol import image_ious; from mobilesam.mask_ops import upsample_binary; print('ok')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
