"""COCO RLE (mobilesam.rle): hand-made counts, pycocotools as the reference, and what works without pycocotools."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from mobilesam import rle


def _masks() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    full, first_set, edge = np.ones((4, 3), bool), np.zeros((5, 7), bool), np.zeros((6, 9), bool)
    first_set[0, 0] = True
    edge[:, -1] = True
    return [rng.random((37, 53)) < 0.4, np.zeros((8, 8), bool), full, first_set, edge]


def test_hand_made_counts() -> None:
    m = np.array([[0, 1, 1], [0, 1, 0]], bool)  # column-major: 0 0 | 1 1 | 1 0 -> runs 2, 3, 1
    assert rle.encode(m) == {"size": [2, 3], "counts": [2, 3, 1]}
    assert rle.encode(np.ones((2, 2), bool))["counts"] == [0, 4]  # starts with an empty run of zeros
    assert rle.encode(np.zeros((2, 2), bool))["counts"] == [4]
    assert np.array_equal(rle.decode({"size": [2, 3], "counts": [2, 3, 1]}), m)
    assert rle.area({"size": [2, 3], "counts": [2, 3, 1]}) == 3
    assert rle.bbox({"size": [2, 3], "counts": [2, 3, 1]}) == [1.0, 0.0, 2.0, 2.0]
    assert rle.mask_bbox(m) == [1, 0, 2, 2] and rle.mask_bbox(np.zeros((3, 3), bool)) == [0, 0, 0, 0]
    with pytest.raises(ValueError, match="sum to 5 but the size 2x3 holds 6"):
        rle.decode({"size": [2, 3], "counts": [2, 3]})
    with pytest.raises(ValueError, match="HxW"):
        rle.encode(np.zeros((2, 2, 2), bool))


def test_every_form_agrees_with_pycocotools() -> None:
    mask_utils = pytest.importorskip("pycocotools.mask")
    for m in _masks():
        h, w = m.shape
        ref = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        plain = rle.encode(m)
        assert np.array_equal(mask_utils.decode(mask_utils.frPyObjects(plain, h, w)), m)
        packed = rle.encode_compressed(m)
        assert packed == {"size": [h, w], "counts": ref["counts"].decode()}
        assert rle.compress(plain) == packed and rle.compress(packed) == packed
        assert rle.compress({"size": [h, w], "counts": ref["counts"]}) == packed  # bytes counts -> str
        for form in (plain, packed):
            out = rle.decode(form)
            assert out.dtype == np.uint8 and out.flags.f_contiguous and np.array_equal(out, m)
            assert rle.area(form) == int(mask_utils.area(ref)) == int(m.sum())
            assert rle.bbox(form) == [float(v) for v in mask_utils.toBbox(ref)]
        assert rle.mask_bbox(m) == [int(v) for v in mask_utils.toBbox(ref)]


def test_without_pycocotools_uncompressed_works_and_compressed_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    m = _masks()[0]
    plain = rle.encode(m)
    assert np.array_equal(rle.decode(plain), m) and rle.area(plain) == int(m.sum())
    assert rle.bbox(plain) == [float(v) for v in rle.mask_bbox(m)]
    for call in (lambda: rle.compress(plain), lambda: rle.encode_compressed(m)):
        with pytest.raises(ImportError, match=r"needs pycocotools: pip install 'mobilesam\[coco\]'"):
            call()
    with pytest.raises(ImportError, match="output_mode='coco_rle' needs pycocotools"):
        rle.mask_api("output_mode='coco_rle'")
