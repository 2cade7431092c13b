"""The Ultralytics-style `SAM` facade: prompt nesting, sources, results."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mobilesam import SAM, SamPredictor, build_sam
from mobilesam.io import ImageReadError
from mobilesam.mask_ops import masks_to_boxes
from mobilesam.prompts import PromptError


@pytest.fixture(scope="module")
def sam(small_checkpoint):
    return SAM(small_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def photo():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 60, (120, 160, 3), dtype=np.uint8)
    img[30:90, 40:110] = [230, 200, 30]
    return img


def test_reads_img_size_from_sidecar(sam):
    assert sam.model.img_size == 256 and sam.device.type == "cpu"


@pytest.mark.parametrize(
    "points,labels,n_masks",
    [
        ([60, 50], None, 1),
        ([60, 50], [1], 1),
        ([[60, 50], [20, 100]], [1, 0], 2),
        ([[[60, 50], [20, 100]]], [[1, 0]], 1),
        (np.array([[60, 50], [20, 100], [150, 10]]), None, 3),
    ],
    ids=["one_point", "one_point_label", "two_objects", "one_object_two_points", "array_three_objects"],
)
def test_point_nesting(sam, photo, points, labels, n_masks):
    (r,) = sam.predict(photo, points=points, labels=labels)
    assert r.masks.shape == (n_masks, 120, 160) and r.masks.dtype == torch.bool
    assert r.scores.shape == (n_masks,) and r.boxes.shape == (n_masks, 4)
    (rm,) = sam.predict(photo, points=points, labels=labels, multimask_output=True)
    assert rm.masks.shape == (3 * n_masks, 120, 160)


def test_results_equal_the_predictor(sam, photo):
    (r,) = sam.predict(photo, points=[[[60, 50], [20, 100]]], labels=[[1, 0]], multimask_output=True)
    p = SamPredictor(sam.model)
    p.set_image(photo)
    masks, iou, _ = p.predict(np.array([[60, 50], [20, 100]]), np.array([1, 0]), multimask_output=True)
    assert np.array_equal(r.masks.numpy(), masks)
    assert np.allclose(r.scores.numpy(), iou)


def test_boxes_and_points_with_boxes(sam, photo):
    (r,) = sam.predict(photo, bboxes=[40, 30, 110, 90])
    assert r.masks.shape == (1, 120, 160)
    (r2,) = sam.predict(photo, bboxes=[[40, 30, 110, 90], [0, 0, 50, 50]])
    assert r2.masks.shape == (2, 120, 160)
    (r3,) = sam.predict(photo, points=[[60, 50], [10, 10]], bboxes=[[40, 30, 110, 90], [0, 0, 50, 50]])
    assert r3.masks.shape == (2, 120, 160)
    with pytest.raises(PromptError, match="counts must match"):
        sam.predict(photo, points=[60, 50], bboxes=[[40, 30, 110, 90], [0, 0, 50, 50]])


def test_result_boxes_are_tight_boxes_of_masks(sam, photo):
    (r,) = sam.predict(photo, points=[[60, 50], [20, 100], [150, 10]], multimask_output=True)
    for mask, box in zip(r.masks, r.boxes):
        ys, xs = np.nonzero(mask.numpy())
        want = [xs.min(), ys.min(), xs.max(), ys.max()] if len(xs) else [0, 0, 0, 0]
        assert box.tolist() == [float(v) for v in want]


def test_masks_to_boxes_handles_empty_and_batched():
    m = torch.zeros(2, 3, 5, 6, dtype=torch.bool)
    m[0, 1, 1:3, 2:5] = True
    b = masks_to_boxes(m)
    assert b.shape == (2, 3, 4)
    assert b[0, 1].tolist() == [2, 1, 4, 2] and b[1].abs().sum() == 0


def test_sources_path_pil_array_and_list(sam, photo, tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(photo).save(path)
    results = sam.predict([str(path), Image.fromarray(photo), photo], points=[60, 50])
    assert len(results) == 3 and results[0].path == str(path)
    assert all(torch.equal(r.masks, results[0].masks) for r in results)
    out = results[0].save(tmp_path / "overlay.png")
    assert Image.open(out).size == (160, 120)


def test_bad_prompts_and_images(sam, photo, tmp_path):
    with pytest.raises(PromptError, match="outside the 160x120"):
        sam.predict(photo, points=[500, 10])
    with pytest.raises(PromptError, match="labels has 1 values"):
        sam.predict(photo, points=[[1, 1], [2, 2]], labels=[1])
    with pytest.raises(PromptError, match=r"labels must be 1 \(positive\) or 0"):
        sam.predict(photo, points=[1, 1], labels=[5])
    with pytest.raises(PromptError, match="x1 <= x2"):
        sam.predict(photo, bboxes=[50, 50, 10, 10])
    with pytest.raises(PromptError, match="points has shape"):
        sam.predict(photo, points=[1, 2, 3])
    with pytest.raises(PromptError, match="without points"):
        sam.predict(photo, labels=[1])
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ImageReadError, match="cannot read image"):
        sam.predict(str(bad), points=[1, 1])
    with pytest.raises(ImageReadError, match="does not exist"):
        sam.predict(str(tmp_path / "missing.png"), points=[1, 1])


def test_missing_checkpoint_says_where_to_get_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="train.py"):
        SAM(tmp_path / "mobile_sam.pt", device="cpu")


def test_bf16_needs_cuda():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ValueError, match="CUDA"):
        SAM(None, device="cpu", bf16=True)


@pytest.mark.gpu
def test_bf16_on_cuda_agrees_with_fp32(small_checkpoint, photo):
    fp32 = SAM(small_checkpoint, device="cuda")
    bf16 = SAM(small_checkpoint, device="cuda", bf16=True)
    (a,) = fp32.predict(photo, points=[60, 50])
    (b,) = bf16.predict(photo, points=[60, 50])
    assert (a.masks == b.masks).float().mean() > 0.98


def test_random_facade_builds_vit_t():
    from mobilesam.modeling.tiny_vit import TinyViT

    m = SAM(None, device="cpu", img_size=256)
    assert isinstance(m.model.image_encoder, TinyViT) and m.model.image_encoder.img_size == 256
    # vit_t's exact key set and shapes (vit_b, vit_l and vit_h have other encoder keys)
    want = {k: tuple(v.shape) for k, v in build_sam("vit_t", img_size=256).state_dict().items()}
    assert {k: tuple(v.shape) for k, v in m.model.state_dict().items()} == want
    assert want != {k: tuple(v.shape) for k, v in build_sam("vit_b", img_size=256).state_dict().items()}


def test_extreme_aspect_ratio_keeps_one_pixel_row_everywhere(tmp_path):
    from mobilesam.transforms import preprocess_shape, resize_image

    assert preprocess_shape(1, 5000, 1024) == (1, 1024)  # SAM's rounding gives 0 rows: at least one is kept
    assert preprocess_shape(5000, 1, 256) == (256, 1) and preprocess_shape(683, 1024, 1024) == (683, 1024)
    image = np.full((1, 5000, 3), 128, np.uint8)
    assert resize_image(image, 256).size == (256, 1)
    sam = SAM(None, device="cpu", img_size=256)
    (r,) = sam.predict(image, points=[2500, 0])
    assert r.masks.shape == (1, 1, 5000) and torch.isfinite(r.scores).all()
    (r,) = sam.predict(image.transpose(1, 0, 2).copy(), bboxes=[0, 100, 0, 4000])
    assert r.masks.shape == (1, 5000, 1)
