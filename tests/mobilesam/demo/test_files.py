"""The demo's download formats: COCO RLE (against pycocotools) and the label PNG."""

from __future__ import annotations

import numpy as np
import pytest

from mobilesam.demo import MODES
from mobilesam.demo.files import mask_png, masks_json, rle_decode, rle_encode

POS, NEG, BOX = MODES


def test_rle_round_trips_and_matches_pycocotools():
    rng = np.random.default_rng(0)
    for mask in [rng.random((37, 53)) > 0.5, np.ones((4, 5), bool), np.zeros((6, 3), bool), np.eye(5, dtype=bool)]:
        rle = rle_encode(mask)
        assert sum(rle["counts"]) == mask.size and np.array_equal(rle_decode(rle), mask)
    mask = rng.random((37, 53)) > 0.5
    assert rle_encode(np.ones((2, 2), bool))["counts"] == [0, 4]
    assert rle_encode(np.array([[0, 1], [0, 1]], bool))["counts"] == [2, 2]  # column-major
    mask_utils = pytest.importorskip("pycocotools.mask")
    compressed = masks_json(mask[None], np.array([0.5]), "x", {})["annotations"][0]["segmentation"]
    assert isinstance(compressed["counts"], str)
    assert np.array_equal(mask_utils.decode({**compressed, "counts": compressed["counts"].encode()}), mask)
    assert np.array_equal(mask_utils.decode(mask_utils.frPyObjects(rle_encode(mask), 37, 53)), mask)


def test_label_png_of_several_masks():
    masks = np.zeros((3, 4, 4), bool)
    masks[0, :2], masks[1, :, :2], masks[2, 3, 3] = True, True, True
    labels = np.asarray(mask_png(masks))
    assert labels.tolist() == [[2, 2, 1, 1], [2, 2, 1, 1], [2, 2, 0, 0], [2, 2, 0, 3]]
