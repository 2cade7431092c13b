"""Segment everything: the generator against the official one, and its parts against their references."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from mobilesam import SAM, SamAutomaticMaskGenerator, SamPredictor
from mobilesam.cli import main
from mobilesam.everything import mask_stats
from mobilesam.everything import regions as ours_amg
from mobilesam.io import ImageReadError
from mobilesam.many_prompts import decode, decode_tokens
from mobilesam.mask_ops import masks_to_boxes
from mobilesam.prompts import PromptError
from mobilesam.transforms import preprocess_shape
from tests.helpers import object_logits, rel_err, scene

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import mobile_sam
    from mobile_sam.utils import amg as official_amg


def match(ref: list[dict], got: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """For each reference record: the best-IoU record of `got` and that IoU."""
    a = torch.from_numpy(np.stack([r["segmentation"] for r in ref])).flatten(1).float()
    b = torch.from_numpy(np.stack([r["segmentation"] for r in got])).flatten(1).float()
    inter = a @ b.T
    iou = inter / (a.sum(1)[:, None] + b.sum(1)[None] - inter).clamp(min=1)
    best = iou.max(1)
    return best.indices.numpy(), best.values.numpy()


def assert_same_records(ref: list[dict], got: list[dict]) -> None:
    assert len(got) == len(ref)
    j, iou = match(ref, got)
    assert len(set(j.tolist())) == len(ref), "two official masks matched the same mask"
    assert iou.min() > 0.99
    for r, i in zip(ref, j):
        g = got[i]
        assert abs(g["predicted_iou"] - r["predicted_iou"]) < 1e-4
        assert abs(g["stability_score"] - r["stability_score"]) < 1e-3
        assert g["point_coords"] == r["point_coords"] and g["crop_box"] == r["crop_box"]
        assert np.abs(np.array(g["bbox"]) - r["bbox"]).max() <= 1
        assert abs(g["area"] - r["area"]) <= 1e-3 * r["area"] + 2


# ---------------------------------------------------------------- the generator against the official one


OPEN = dict(
    points_per_side=5,
    points_per_batch=16,  # two batches
    pred_iou_thresh=0.02,  # random weights predict IoUs in about [-0.4, 0.3]: this drops some
    stability_score_offset=0.1,  # random logits are within +-1: an offset of 1 gives stability 0 everywhere
    stability_score_thresh=0.02,
    box_nms_thresh=1.0,  # random masks all span the image, so any lower threshold keeps one
)


@pytest.fixture(scope="module")
def official_records(vit_t_pair):
    official, _ = vit_t_pair
    return mobile_sam.SamAutomaticMaskGenerator(official, **OPEN).generate(scene())


@pytest.fixture(scope="module")
def ours_found(vit_t_pair):
    """Our MaskSet for the same image and settings (random logits are noise: the dense path)."""
    _, ours = vit_t_pair
    return SamAutomaticMaskGenerator(ours, **OPEN).generate_masks(scene())


def test_equals_official_generator(vit_t_pair, official_records, ours_found):
    _, ours = vit_t_pair
    got = SamAutomaticMaskGenerator(ours, **OPEN).records(ours_found)
    assert 20 <= len(official_records) < 75, "thresholds should keep dozens of masks, not all or none"
    assert_same_records(official_records, got)
    assert [type(v) for v in got[0].values()] == [type(v) for v in official_records[0].values()]


def test_border_cell_path_equals_official_generator(vit_t_pair, official_records, monkeypatch):
    _, ours = vit_t_pair
    # Force the border-cell path that object-shaped (trained) logits take; every cell of noise is a border cell
    monkeypatch.setattr(mask_stats, "DENSE_FRACTION", 2.0)
    assert_same_records(official_records, SamAutomaticMaskGenerator(ours, **OPEN).generate(scene()))


def test_rle_output_modes(vit_t_pair, ours_found):
    _, ours = vit_t_pair
    binary, rle, coco = (
        SamAutomaticMaskGenerator(ours, **OPEN, output_mode=mode).records(ours_found)
        for mode in ("binary_mask", "uncompressed_rle", "coco_rle")
    )
    from pycocotools import mask as mask_utils

    for b, r, c in zip(binary, rle, coco):
        want = official_amg.mask_to_rle_pytorch(torch.from_numpy(b["segmentation"])[None])[0]
        assert r["segmentation"] == want
        assert np.array_equal(official_amg.rle_to_mask(r["segmentation"]), b["segmentation"])
        assert c["segmentation"] == official_amg.coco_encode_rle(want)
        assert np.array_equal(mask_utils.decode(c["segmentation"]).astype(bool), b["segmentation"])
        assert r["area"] == c["area"] == b["area"] == official_amg.area_from_rle(want)
        json.dumps(c)  # COCO records serialise


def test_crop_layers_equal_official(vit_t_pair):
    official, ours = vit_t_pair
    # Random masks fill whatever crop they are in, so the crop-edge filter would drop every mask of a crop
    # whose inner edge is far from the image edge: crops of 190 px in a 200 px image keep them (edges within
    # 20 px of the image's), and the 10 px shifts between crops give NMS across crops distinct boxes.
    opts = dict(
        OPEN,
        points_per_side=4,
        crop_n_layers=1,
        crop_n_points_downscale_factor=2,  # 2x2 points in each of the 4 crops
        crop_overlap_ratio=0.9,
        crop_nms_thresh=0.97,
    )
    img = scene(200, 200)
    ref = mobile_sam.SamAutomaticMaskGenerator(official, **opts).generate(img)
    got = SamAutomaticMaskGenerator(ours, **opts).generate(img)
    assert len({tuple(r["crop_box"]) for r in ref}) >= 3, "masks of several crops should survive"
    assert_same_records(ref, got)


# ---------------------------------------------------------------- the parts


def test_point_grids_and_crop_boxes_equal_official():
    for n in (1, 5, 16, 32):
        assert np.array_equal(ours_amg.build_point_grid(n), official_amg.build_point_grid(n))
    assert all(
        np.array_equal(a, b)
        for a, b in zip(
            ours_amg.build_all_layer_point_grids(32, 2, 2), official_amg.build_all_layer_point_grids(32, 2, 2)
        )
    )
    for size in ((810, 1080), (300, 200), (1500, 2250), (7, 5)):
        for layers in (0, 1, 2):
            want = official_amg.generate_crop_boxes(size, layers, 512 / 1500)
            assert ours_amg.generate_crop_boxes(size, layers, 512 / 1500) == want


def test_crop_edge_filter_equals_official():
    g = torch.Generator().manual_seed(0)
    xy = torch.randint(0, 300, (200, 2, 2), generator=g).sort(dim=1).values
    boxes = xy.transpose(1, 2).reshape(-1, 4)[:, [0, 2, 1, 3]]  # x1 y1 x2 y2 in the crop frame
    image_box = [0, 0, 600, 400]
    for crop in ([0, 0, 310, 320], [40, 0, 350, 320], [40, 30, 600, 400]):
        want = official_amg.is_box_near_crop_edge(boxes, crop, image_box)
        got = ours_amg.box_near_crop_edge(boxes + torch.tensor(crop[:2] * 2), crop, image_box)
        assert torch.equal(got, want)
        assert 0 < int(want.sum()) < len(want)


def test_rle_encoder_equals_official():
    rng = np.random.default_rng(0)
    masks = torch.from_numpy(rng.random((5, 13, 17)) > 0.6)
    masks[0] = False  # empty
    masks[1] = True  # full
    masks[2, 0, 0] = True  # starts with a set pixel
    masks[3, 0, 0] = False
    ours = ours_amg.mask_to_rle(masks)
    assert ours == official_amg.mask_to_rle_pytorch(masks)
    assert [ours_amg.rle_area(r) for r in ours] == masks.flatten(1).sum(1).tolist()
    assert ours_amg.mask_to_rle(masks[:0]) == []


@pytest.mark.parametrize("points_per_prompt", [1, 2])
def test_many_prompts_decoder_equals_mask_decoder(sam, points_per_prompt):
    model = sam.model
    p = SamPredictor(model)
    p.set_image(scene(120, 160))
    g = torch.Generator().manual_seed(0)
    coords = torch.rand(7, points_per_prompt, 2, generator=g) * 200
    labels = torch.randint(0, 2, (7, points_per_prompt), generator=g)
    with torch.no_grad():
        sparse, dense = model.prompt_encoder((coords, labels), None, None)
        emb = p.get_image_embedding()
        want_masks, want_iou = model.mask_decoder(emb, model.prompt_encoder.get_dense_pe(), sparse, dense, True)
        masks, iou = decode(model, emb, coords, labels)
        all_iou = decode_tokens(model, emb, coords, labels)[0]
    assert rel_err(masks, want_masks) < 1e-4 and rel_err(iou, want_iou) < 1e-4
    assert rel_err(all_iou[:, 1:], want_iou) < 1e-4


@pytest.mark.parametrize("size", [(810, 1080), (1500, 2250), (300, 200), (40, 900)])
@pytest.mark.parametrize("path", ["dense", "sparse"])
def test_mask_stats_equal_official_postprocessing(vit_t_pair, monkeypatch, size, path):
    """Stability counts, boxes and masks from low-res logits equal the official full-resolution computation."""
    official, ours = vit_t_pair
    monkeypatch.setattr(mask_stats, "DENSE_FRACTION", 2.0 if path == "sparse" else 0.0)
    g = torch.Generator().manual_seed(1)
    logits = torch.cat(
        [
            object_logits(6, 12.0, 0),  # gentle slopes: wide borders
            object_logits(6, 200.0, 1),  # steep, as trained SAM logits
            torch.randn(1, 256, 256, generator=g) * 0.5,  # noise, as random weights
            torch.full((1, 256, 256), -3.0),  # empty
        ]
    )
    input_size = preprocess_shape(*size, 1024)
    up = mask_stats.LogitUpsampler(ours, input_size, size)
    counts, boxes = up.stats(logits, (1.0, -1.0), 0.0)
    masks = up.masks(logits, 0.0)

    full = official.postprocess_masks(logits[:, None], input_size, size)[:, 0]
    inter = (full > 1.0).flatten(1).sum(1)
    union = (full > -1.0).flatten(1).sum(1)
    assert torch.allclose(
        counts[:, 0] / counts[:, 1], official_amg.calculate_stability_score(full, 0.0, 1.0), equal_nan=True
    )
    # a pixel within float rounding of a threshold may flip: allow a handful in ~1e7
    assert (counts[:, 0] - inter).abs().max() <= 2 and (counts[:, 1] - union).abs().max() <= 2
    want = full > 0
    assert int((masks != want).sum()) <= 4
    assert torch.equal(boxes, official_amg.batched_mask_to_box(want).float())
    assert torch.equal(masks_to_boxes(masks), boxes)


def test_small_region_removal_equals_official(vit_t_pair):
    _, ours = vit_t_pair
    rng = np.random.default_rng(0)
    masks = np.zeros((4, 60, 80), dtype=bool)
    masks[0, 10:50, 10:70] = True
    masks[0, 20:23, 20:23] = False  # a small hole
    masks[1, 10:50, 10:70] = True  # the same object without the hole: a duplicate after filling
    masks[2, 5:8, 5:8] = True  # a small island ...
    masks[2, 30:58, 40:78] = True  # ... beside a big one
    masks[3] = rng.random((60, 80)) > 0.7  # speckle
    t = torch.from_numpy(masks)
    boxes = masks_to_boxes(t).long()
    ref = official_amg.MaskData(
        rles=official_amg.mask_to_rle_pytorch(t), boxes=boxes.clone(), iou_preds=torch.linspace(0.9, 0.6, 4)
    )
    ref = mobile_sam.SamAutomaticMaskGenerator.postprocess_small_regions(ref, 25, 0.7)
    generator = SamAutomaticMaskGenerator(ours, min_mask_region_area=25, box_nms_thresh=0.7)
    from mobilesam.everything import MaskSet

    found = MaskSet(t, torch.linspace(0.9, 0.6, 4), torch.ones(4), boxes, torch.zeros(4, 2), torch.zeros(4, 4))
    got = generator._remove_small_regions(found)
    assert len(got) == len(ref["rles"]) < 4
    assert torch.equal(got.iou_preds, ref["iou_preds"])
    assert torch.equal(got.boxes, ref["boxes"])
    for m, rle in zip(got.masks.numpy(), ref["rles"]):
        assert np.array_equal(m, official_amg.rle_to_mask(rle))


# ---------------------------------------------------------------- facade, command line, errors


@pytest.fixture(scope="module")
def sam(small_checkpoint):
    return SAM(small_checkpoint, device="cpu")


EVERYTHING = {"points_per_side": 4, "pred_iou_thresh": 0, "stability_score_thresh": 0, "box_nms_thresh": 1.0}


def test_facade_segments_everything_without_prompts(sam):
    img = scene(90, 120)
    (r,) = sam.predict(img, everything_options=EVERYTHING)
    assert r.masks.shape == (48, 90, 120) and r.masks.dtype == torch.bool  # 16 points x 3 masks, nothing dropped
    assert torch.all(r.scores[:-1] >= r.scores[1:]), "sorted by predicted IoU"
    assert torch.equal(r.boxes, masks_to_boxes(r.masks))
    found = SamAutomaticMaskGenerator(sam.model, **EVERYTHING).generate_masks(img)
    assert sorted(found.iou_preds.tolist()) == sorted(r.scores.tolist())
    (default,) = sam.predict(img, everything_options={"points_per_side": 8})  # default thresholds keep nothing
    assert default.masks.shape == (0, 90, 120)


def test_facade_rejects_bad_options(sam):
    with pytest.raises(ValueError, match="points_per_sid"):
        sam.predict(scene(90, 120), everything_options={"points_per_sid": 4})
    with pytest.raises(PromptError, match="only to segment-everything"):
        sam.predict(scene(90, 120), points=[10, 10], everything_options=EVERYTHING)


def test_cli_everything_writes_overlay_and_records(small_checkpoint, tmp_path, capsys):
    img = tmp_path / "scene.png"
    Image.fromarray(scene(90, 120)).save(img)
    out, records = tmp_path / "overlay.png", tmp_path / "masks.json"
    args = ["everything", str(img), "--checkpoint", str(small_checkpoint), "--device", "cpu"]
    args += ["--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh", "0"]
    args += ["--box-nms-thresh", "1", "--out", str(out), "--json", str(records)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert text.startswith("48 masks in ") and "overlay written" in text
    assert Image.open(out).size == (120, 90)
    from pycocotools import mask as mask_utils

    loaded = json.loads(records.read_text())
    assert len(loaded) == 48
    assert all(mask_utils.decode(r["segmentation"]).sum() == r["area"] for r in loaded)


def test_bad_arguments_are_refused(vit_t_pair):
    _, ours = vit_t_pair
    with pytest.raises(ValueError, match="exactly one of points_per_side"):
        SamAutomaticMaskGenerator(ours, points_per_side=None)
    with pytest.raises(ValueError, match="exactly one of points_per_side"):
        SamAutomaticMaskGenerator(ours, point_grids=[ours_amg.build_point_grid(4)])
    with pytest.raises(ValueError, match="output_mode"):
        SamAutomaticMaskGenerator(ours, output_mode="polygons")
    with pytest.raises(ValueError, match="needs 2"):
        SamAutomaticMaskGenerator(
            ours, points_per_side=None, point_grids=[ours_amg.build_point_grid(4)], crop_n_layers=1
        )
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        SamAutomaticMaskGenerator(ours, points_per_side=None, point_grids=[np.array([[2.0, 0.5]])])
    with pytest.raises(ValueError, match="crop_n_layers >= 0"):
        SamAutomaticMaskGenerator(ours, crop_n_layers=-1)
    with pytest.raises(ImageReadError, match="shape"):
        SamAutomaticMaskGenerator(ours).generate(np.zeros((4, 5, 6, 7), dtype=np.uint8))
