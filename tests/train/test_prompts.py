"""Prompt sampling for mask-level training: inside the image, inside (or near) the masks, corrective points."""

from __future__ import annotations

import torch

from train.prompts import corrective_points, initial_prompts, noisy_boxes


def _masks() -> tuple[torch.Tensor, torch.Tensor]:
    masks = torch.zeros(3, 64, 64, dtype=torch.bool)
    masks[0, 5:20, 10:30] = True
    masks[1, 40:44, 2:6] = True
    masks[2, 30:50, 30:60] = True
    boxes = torch.tensor([[40.0, 20, 120, 80], [8, 160, 24, 176], [120, 120, 240, 200]])
    return masks, boxes


def test_points_fall_inside_their_masks_and_boxes_stay_in_the_image():
    masks, boxes = _masks()
    g = torch.Generator().manual_seed(0)
    size = (210, 256)
    for _ in range(20):
        box_p, point_p = initial_prompts(masks, boxes, size, 256, n=12, generator=g)
        assert len(box_p.source) + len(point_p.source) == 12
        cells = (point_p.coords[:, 0] / 4).floor().long()
        assert masks[point_p.source, cells[:, 1], cells[:, 0]].all()
        b = box_p.boxes
        assert (b[:, 0] >= 0).all() and (b[:, 2] <= 256).all() and (b[:, 1] >= 0).all() and (b[:, 3] <= 210).all()
        assert (b[:, :2] <= b[:, 2:]).all()
        # noise of at most 20 px per coordinate
        assert (b - boxes[box_p.source]).abs().max() <= 20 + 1e-4


def test_box_noise_scales_with_the_box():
    g = torch.Generator().manual_seed(1)
    small = torch.tensor([[100.0, 100, 110, 110]]).repeat(500, 1)
    moved = (noisy_boxes(small, (1024, 1024), 0.1, 20.0, g) - small).abs()
    assert 0.3 < moved.mean() < 1.5  # ~ 0.8 = E|N(0, 1 px)|


def test_corrective_points_sit_where_the_masks_disagree():
    g = torch.Generator().manual_seed(2)
    teacher = torch.zeros(4, 16, 16, dtype=torch.bool)
    student = torch.zeros(4, 16, 16, dtype=torch.bool)
    teacher[0, 2:6, 2:6] = True  # student misses it: positive point there
    student[1, 8:10, 8:10] = True  # student hallucinates: negative point there
    teacher[2, 0:3, 0:3] = student[2, 0:3, 0:3] = True  # agree: a positive point inside the teacher's mask
    valid = torch.ones(16, 16, dtype=torch.bool)
    xy, label = corrective_points(student, teacher, valid, 64, g)
    cells = (xy / 4).floor().long()
    assert label.tolist() == [1, 0, 1, 0]
    assert teacher[0, cells[0, 1], cells[0, 0]] and student[1, cells[1, 1], cells[1, 0]]
    assert teacher[2, cells[2, 1], cells[2, 0]]
