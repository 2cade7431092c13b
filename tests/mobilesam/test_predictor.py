"""`SamPredictor` against the official predictor, and its errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mobilesam import SamPredictor, build_sam, load_image
from mobilesam.io import ImageReadError
from mobilesam.prompts import PromptError
from tests.helpers import rel_err


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (600, 800, 3), dtype=np.uint8)  # landscape: the encoder input is padded
    img[150:450, 200:500] = [200, 40, 40]
    return img


@pytest.fixture(scope="module")
def predictors(vit_t_pair, image):
    import mobile_sam

    official, ours = vit_t_pair
    ref = mobile_sam.SamPredictor(official)
    ref.set_image(image)
    own = SamPredictor(ours)
    own.set_image(image)
    return ref, own


def test_embedding_matches_official(predictors):
    ref, own = predictors
    assert own.input_size == ref.input_size == (768, 1024)
    assert rel_err(own.get_image_embedding(), ref.get_image_embedding()) < 1e-3


@pytest.mark.parametrize(
    "prompt",
    [
        dict(point_coords=np.array([[350, 300]]), point_labels=np.array([1])),
        dict(point_coords=np.array([[350, 300], [700, 50]]), point_labels=np.array([1, 0])),
        dict(box=np.array([190, 140, 510, 460])),
        dict(box=np.array([190, 140, 510, 460]), point_coords=np.array([[350, 300]]), point_labels=np.array([0])),
    ],
    ids=["point", "two_points", "box", "box_and_point"],
)
@pytest.mark.parametrize("multimask", [True, False])
def test_predict_matches_official(predictors, prompt, multimask):
    ref, own = predictors
    m_ref, iou_ref, low_ref = ref.predict(**prompt, multimask_output=multimask)
    m, iou, low = own.predict(**prompt, multimask_output=multimask)
    assert m.shape == m_ref.shape == ((3 if multimask else 1), 600, 800) and m.dtype == bool
    assert rel_err(torch.from_numpy(low), torch.from_numpy(low_ref)) < 1e-3
    assert rel_err(torch.from_numpy(iou), torch.from_numpy(iou_ref)) < 1e-3
    assert (m == m_ref).mean() >= 0.999
    # a mask input from the previous round
    m2_ref, _, _ = ref.predict(**prompt, mask_input=low_ref[:1], multimask_output=False)
    m2, _, _ = own.predict(**prompt, mask_input=low_ref[:1], multimask_output=False)
    assert (m2 == m2_ref).mean() >= 0.999


def test_predict_torch_batches_prompts(predictors):
    _, own = predictors
    pts = np.array([[350, 300], [100, 500], [780, 20]])
    coords = torch.as_tensor(own.transform.apply_coords(pts, own.original_size), dtype=torch.float)[:, None]
    masks, iou, low = own.predict_torch(coords, torch.ones(3, 1, dtype=torch.int), multimask_output=False)
    assert masks.shape == (3, 1, 600, 800) and iou.shape == (3, 1) and low.shape == (3, 1, 256, 256)
    for i, p in enumerate(pts):
        _, iou_i, low_i = own.predict(p[None], np.array([1]), multimask_output=False)
        assert rel_err(low[i], torch.from_numpy(low_i)) < 1e-4
        assert abs(float(iou[i, 0]) - float(iou_i[0])) < 1e-4


def test_errors_name_the_problem(vit_t_pair, predictors):
    _, own = predictors
    fresh = SamPredictor(vit_t_pair[1])
    with pytest.raises(RuntimeError, match=r"set_image"):
        fresh.predict(np.array([[1, 1]]), np.array([1]))
    with pytest.raises(RuntimeError, match=r"set_image"):
        fresh.get_image_embedding()
    with pytest.raises(PromptError, match=r"\(3, 2\).*\(2,\)"):
        own.predict(np.array([[1, 1], [2, 2], [3, 3]]), np.array([1, 0]))
    with pytest.raises(PromptError, match="outside the 800x600"):
        own.predict(np.array([[900, 10]]), np.array([1]))
    with pytest.raises(PromptError, match="point_labels must be given"):
        own.predict(np.array([[10, 10]]))
    with pytest.raises(ValueError, match="4 values"):
        own.predict(box=np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="image_format"):
        own.set_image(np.zeros((4, 4, 3), np.uint8), image_format="RGBA")


def test_bgr_input_is_flipped(vit_t_pair):
    small = SamPredictor(vit_t_pair[1])
    img = np.zeros((32, 48, 3), np.uint8)
    img[..., 0] = 255
    small.set_image(img)
    a = small.get_image_embedding().clone()
    small.set_image(img[..., ::-1].copy(), image_format="BGR")
    assert torch.equal(a, small.get_image_embedding())


def test_low_level_predictor_refuses_nonsense_with_the_facades_messages():
    from mobilesam import SAM, build_sam

    predictor = SamPredictor(build_sam("vit_t", img_size=256))
    predictor.set_image(np.zeros((60, 80, 3), np.uint8))
    bad = [
        (dict(point_coords=np.array([[np.nan, 5.0]]), point_labels=np.array([1])), "NaN or infinite"),
        (dict(point_coords=np.array([[np.inf, 5.0]]), point_labels=np.array([1])), "NaN or infinite"),
        (dict(point_coords=np.array([[5.0, 5.0]]), point_labels=np.array([7])), r"labels must be one of .*got \[7\]"),
        (dict(box=np.array([50.0, 5.0, 10.0, 40.0])), "x1 <= x2 and y1 <= y2"),
        (dict(box=np.array([np.nan, 5.0, 10.0, 40.0])), "NaN or infinite"),
    ]
    for kwargs, message in bad:
        with pytest.raises(PromptError, match=message):
            predictor.predict(**kwargs)
    with pytest.raises(PromptError, match="NaN or infinite"):
        predictor.predict_torch(torch.tensor([[[float("nan"), 1.0]]]), torch.tensor([[1]]))
    with pytest.raises(PromptError, match="x1 <= x2"):
        predictor.predict_torch(None, None, boxes=torch.tensor([[9.0, 1.0, 2.0, 5.0]]))
    # the same words as the facade
    with pytest.raises(PromptError) as low:
        predictor.predict(box=np.array([50.0, 5.0, 10.0, 40.0]))
    with pytest.raises(PromptError) as high:
        SAM(None, device="cpu", img_size=256).predict(np.zeros((60, 80, 3), np.uint8), bboxes=[50, 5, 10, 40])
    assert str(low.value).split("got")[0] == str(high.value).split("got")[0]
    # SAM's own labels (-1 padding, 2 / 3 box corners) stay allowed at this level
    masks, _, _ = predictor.predict(np.array([[5.0, 5.0], [0.0, 0.0]]), np.array([1, -1]))
    assert masks.shape[-2:] == (60, 80)


def test_set_image_refuses_a_path_and_says_how_to_read_it(tmp_path):
    from PIL import Image

    predictor = SamPredictor(build_sam("vit_t", img_size=256))
    with pytest.raises(ImageReadError, match=r"HxWx3 uint8 RGB array, not the path 'photo.jpg'.*load_image\('photo"):
        predictor.set_image("photo.jpg")
    with pytest.raises(ImageReadError, match=r"not the path .*photo.png"):
        predictor.embed_images([tmp_path / "photo.png"])
    with pytest.raises(ImageReadError, match=r"HxWx3 uint8 RGB array, got a NoneType.*load_image\(path\)"):
        predictor.set_image(None)
    # what the message says works
    Image.fromarray(np.full((60, 80, 3), 90, np.uint8)).save(tmp_path / "photo.png")
    predictor.set_image(load_image(tmp_path / "photo.png"))
    assert predictor.original_size == (60, 80) and predictor.input_size == (192, 256)


def test_predict_many_gives_predict_torchs_masks_from_original_pixels():
    predictor = SamPredictor(build_sam("vit_t", img_size=256))
    image = np.random.default_rng(2).integers(0, 60, (60, 80, 3), dtype=np.uint8)
    image[10:40, 20:60] = [220, 180, 30]
    predictor.set_image(image)
    boxes = np.array([[5.0, 5.0, 40.0, 30.0], [10.0, 20.0, 70.0, 55.0], [0.0, 0.0, 80.0, 60.0]])
    pts = np.array([[[20.0, 15.0], [30.0, 25.0]], [[40.0, 40.0], [5.0, 5.0]], [[60.0, 10.0], [70.0, 50.0]]])
    labels = np.array([[1, 0], [1, 1], [1, 0]])
    masks, iou = predictor.predict_many(pts, labels, boxes, multimask_output=True, chunk=2)
    t = predictor.transform
    want, want_iou, _ = predictor.predict_torch(
        torch.as_tensor(t.apply_coords(pts, (60, 80)), dtype=torch.float),
        torch.as_tensor(labels, dtype=torch.int),
        torch.as_tensor(t.apply_boxes(boxes, (60, 80)), dtype=torch.float),
        multimask_output=True,
    )
    assert masks.shape == (3, 3, 60, 80) and masks.dtype == torch.bool and iou.shape == (3, 3)
    assert (masks == want).float().mean() > 0.999 and torch.allclose(iou, want_iou, atol=1e-4)
    one, one_iou = predictor.predict_many(boxes=boxes[:1])
    assert one.shape == (1, 1, 60, 80) and torch.allclose(
        one_iou,
        predictor.predict_torch(
            None, None, torch.as_tensor(t.apply_boxes(boxes[:1], (60, 80)), dtype=torch.float), multimask_output=False
        )[1],
        atol=1e-4,
    )
    with pytest.raises(PromptError, match="outside the 80x60"):
        predictor.predict_many(boxes=np.array([[0.0, 0.0, 90.0, 10.0]]))
    with pytest.raises(PromptError, match="3 point sets and 2 boxes"):
        predictor.predict_many(pts, labels, boxes[:2])
    with pytest.raises(PromptError, match=r"\(3, 2, 2\) but point_labels has shape \(3,\)"):
        predictor.predict_many(pts, labels[:, 0])
    with pytest.raises(ValueError, match="no prompt"):
        predictor.predict_many()
    with pytest.raises(RuntimeError, match="set_image"):
        SamPredictor(predictor.model).predict_many(boxes=boxes)
