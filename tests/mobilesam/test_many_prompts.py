"""Many prompts on one image: the facade's chunked, factored decoding gives the one-batch decoder's masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mobilesam import SAM
from tests.helpers import rel_err


@pytest.fixture(scope="module")
def sam(small_checkpoint):
    return SAM(small_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def photo():
    rng = np.random.default_rng(3)
    img = rng.integers(0, 80, (150, 200, 3), dtype=np.uint8)
    img[30:100, 50:150] = [230, 190, 40]
    img[90:140, 10:70] = [40, 90, 220]
    return img


def _boxes(n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, [180, 130], (n, 2))
    return np.concatenate([xy, np.minimum(xy + rng.uniform(10, 120, (n, 2)), [199, 149])], 1).round()


@pytest.mark.parametrize("multimask", [False, True])
def test_many_boxes_and_points_equal_the_one_batch_decoder(sam, photo, multimask):
    boxes = _boxes(70)  # more than four chunks of 16
    pts = np.stack([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, :2] + 2], 1)  # 2 points per object: + and -
    labels = np.tile([1, 0], (70, 1))
    (r,) = sam.predict(
        photo, points=pts.tolist(), labels=labels.tolist(), bboxes=boxes.tolist(), multimask_output=multimask
    )
    p = sam.predictor
    p.set_image(photo)
    t = p.transform
    masks, iou, _ = p.predict_torch(
        torch.as_tensor(t.apply_coords(pts, photo.shape[:2]), dtype=torch.float),
        torch.as_tensor(labels, dtype=torch.int),
        torch.as_tensor(t.apply_boxes(boxes, photo.shape[:2]), dtype=torch.float),
        multimask_output=multimask,
    )
    m = 3 if multimask else 1
    assert r.masks.shape == (70 * m, 150, 200) and r.masks.dtype == torch.bool and r.scores.shape == (70 * m,)
    ref = masks.flatten(0, 1)
    assert (r.masks == ref).float().mean() > 0.9999 and 0.01 < ref.float().mean() < 0.99
    assert torch.allclose(r.scores, iou.flatten(), atol=1e-4)


def test_chunk_size_does_not_change_the_masks(sam, photo):
    p = sam.predictor
    p.set_image(photo)
    a, ia = p.predict_many(boxes=_boxes(20), multimask_output=True, chunk=32)
    b, ib = p.predict_many(boxes=_boxes(20), multimask_output=True, chunk=3)
    assert a.shape == (20, 3, 150, 200) and (a == b).float().mean() > 0.9999 and torch.allclose(ia, ib, atol=1e-5)


def test_low_res_masks_are_the_decoders_and_filtered_by_predicted_iou(sam, photo):
    """`predict_many_low_res` (segment-everything's path): the one-batch decoder's low-resolution logits of the
    masks whose predicted IoU passes, and only those."""
    p = sam.predictor
    p.set_image(photo)
    pts = _boxes(9)[:, None, :2] + 3  # 9 objects of one point
    labels = np.ones((9, 1), dtype=np.int64)
    t = p.transform
    _, want_iou, want_low = p.predict_torch(
        torch.as_tensor(t.apply_coords(pts, photo.shape[:2]), dtype=torch.float),
        torch.ones(9, 1, dtype=torch.int),
        multimask_output=True,
        return_logits=True,
    )
    cut = float(want_iou.median())
    logits, iou, keep = p.predict_many_low_res(pts, labels, min_iou=cut)
    assert iou.shape == keep.shape == (9, 3) and torch.allclose(iou, want_iou, atol=1e-4)
    assert torch.equal(keep, iou > cut) and 0 < int(keep.sum()) < 27
    low = tuple(want_low.shape[-2:])
    assert logits.shape == (int(keep.sum()), *low) and rel_err(logits, want_low[keep]) < 1e-4
    every, iou0, kept = p.predict_many_low_res(pts, labels, multimask_output=False)
    assert kept.all() and every.shape == (9, *low) and iou0.shape == (9, 1)
    nothing, _, none = p.predict_many_low_res(pts, labels, min_iou=float(want_iou.max()) + 1)
    assert not none.any() and nothing.shape == (0, *low)


def test_batched_images_equal_one_at_a_time(sam, photo):
    rng = np.random.default_rng(5)
    images = [photo, rng.integers(0, 255, (90, 210, 3), dtype=np.uint8), photo[::-1].copy()]  # two sizes
    kwargs = {"points": [[60, 50], [20, 80]], "bboxes": [[40, 30, 110, 90], [0, 0, 60, 88]], "multimask_output": True}
    one = sam.predict(images, **kwargs)
    batched = sam.predict(images, batch_size=2, **kwargs)  # a batch of 2, then 1
    assert len(batched) == 3
    for a, b in zip(one, batched):
        assert a.masks.shape == b.masks.shape and (a.masks == b.masks).float().mean() > 0.9999
        assert torch.allclose(a.scores, b.scores, atol=1e-4) and a.masks.any()
    # each batched embedding is its own image's (random weights barely tell images apart: compare the gaps)
    batch = [e[0] for e in sam.predictor.embed_images(images)]
    single = []
    for im in images:
        sam.predictor.set_image(im)
        single.append(sam.predictor.get_image_embedding())
    for i in range(3):
        gap = min(float((single[i] - single[j]).abs().max()) for j in range(3) if j != i)
        assert float((batch[i] - single[i]).abs().max()) < 0.1 * gap and gap > 0
    with pytest.raises(ValueError, match="batch_size=0 must be a positive int"):
        sam.predict(photo, points=[60, 50], batch_size=0)
