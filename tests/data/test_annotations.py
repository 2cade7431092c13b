"""Masks at the loader's resolution, prompts in the input frame, the mask choice, the farthest interior point."""

from __future__ import annotations

import numpy as np

from data.annotations import (
    choose_masks,
    decode_masks,
    farthest_interior_point,
    low_res_masks,
    prompts_in_frame,
    resize_mask,
)


def _ann(mask: np.ndarray, point: list[float]) -> dict:
    """An annotation encoded by pycocotools itself (not by the project's RLE code)."""
    from pycocotools import mask as mask_utils

    ys, xs = np.nonzero(mask)
    bbox = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {
        "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
        "bbox": bbox,
        "point_coords": [point],
    }


def _coverage(n_in: int, n_out: int) -> np.ndarray:
    """n_out x n_in: the fraction of output cell i that source pixel k covers (cells of n_in / n_out pixels)."""
    scale = n_in / n_out
    out = np.zeros((n_out, n_in))
    for i in range(n_out):
        lo, hi = i * scale, (i + 1) * scale
        for k in range(int(np.floor(lo)), min(n_in, int(np.ceil(hi)))):
            out[i, k] = min(hi, k + 1) - max(lo, k)
    return out / scale


def _area_fraction(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The share of set original pixels under each pixel of an (h, w) grid, by explicit fractional coverage."""
    return _coverage(mask.shape[0], size[0]) @ mask.astype(np.float64) @ _coverage(mask.shape[1], size[1]).T


def test_low_res_masks_follow_the_documented_rule() -> None:
    rng = np.random.default_rng(0)
    H, W, S = 150, 225, 64  # noqa: N806 - original size, as in the batch contract
    h, w = 43, 64  # preprocess_shape(150, 225, 64)
    masks = [rng.random((H, W)) < 0.3, np.zeros((H, W), bool)]
    masks[1][20:100, 30:200] = True
    anns = [_ann(masks[1], [50.0, 50.0]), _ann(masks[0], [1.0, 1.0])]
    low = low_res_masks(anns, [0, 1], (h, w), S)
    assert low.shape == (2, 16, 16) and low.dtype == bool
    for row, m in enumerate([masks[1], masks[0]]):
        # reference: area resize to (h, w) by explicit coverage, >= 0.5; pad; 4x4 block mean >= 0.5
        share = _area_fraction(m, (h, w))
        assert np.abs(share - 0.5).min() > 1e-6  # no pixel on the threshold, where float rounding could decide
        frame = np.zeros((S, S))
        frame[:h, :w] = share >= 0.5
        ref = frame.reshape(16, 4, 16, 4).mean(axis=(1, 3)) >= 0.5
        assert np.array_equal(low[row], ref)
        assert np.array_equal(resize_mask(m.astype(np.uint8), (h, w)), share >= 0.5)
    assert low[0, 11:, :].sum() == 0  # below the image (rows 43..63 of the frame) is padding
    # area resize: a pixel is set when at least half the original pixels under it are
    big = np.zeros((100, 100), np.uint8)
    big[:, :50] = 1
    small = resize_mask(big, (10, 10))
    assert small[:, :5].all() and not small[:, 5:].any()
    fortran = np.asfortranarray(masks[0].astype(np.uint8))
    assert np.array_equal(resize_mask(fortran, (h, w)), resize_mask(np.ascontiguousarray(fortran), (h, w)))
    assert decode_masks(anns, [1], (h, w)).shape == (1, h, w)


def test_prompts_scale_to_the_input_frame() -> None:
    m = np.zeros((100, 200), bool)
    m[10:30, 40:100] = True
    boxes, points = prompts_in_frame([_ann(m, [50.0, 20.0])], [0], (100, 200), (32, 64))
    assert np.allclose(boxes, [[40 * 0.32, 10 * 0.32, 100 * 0.32, 30 * 0.32]])
    assert np.allclose(points, [[50 * 0.32, 20 * 0.32]])
    assert boxes.dtype == points.dtype == np.float32


def test_farthest_interior_point_is_the_centre_of_a_rectangle() -> None:
    m = np.zeros((60, 80), np.uint8)
    m[10:31, 20:61] = 1  # 21 rows, 41 columns: centre (40, 20)
    x, y = farthest_interior_point(m)
    assert abs(x - 40) <= 1 and y == 20
    m2 = np.zeros((20, 20), np.uint8)
    m2[:, :5] = 1  # touching the image edge: the edge counts as border
    assert farthest_interior_point(m2)[0] == 2


def test_mask_choice_is_fixed_in_validation_and_varies_by_epoch_in_training() -> None:
    val = [choose_masks(50, 4, "sa_7", seed=0, epoch=None) for _ in range(3)]
    assert all(np.array_equal(v, val[0]) for v in val) and len(set(val[0])) == 4
    train = [tuple(choose_masks(50, 4, "sa_7", seed=0, epoch=e)) for e in range(6)]
    assert len(set(train)) > 1
    assert tuple(choose_masks(50, 4, "sa_7", seed=0, epoch=2)) == train[2]  # reproducible
    assert list(choose_masks(3, 4, "k", 0, None)) == [0, 1, 2]  # fewer than asked: all of them


def test_pool_low_res_counts_blocks_as_the_float_mean_does() -> None:
    from data.annotations import pool_low_res

    rng = np.random.default_rng(1)
    for h, w in [(64, 64), (43, 64), (64, 37), (1, 2)]:
        masks = rng.random((5, h, w)) < rng.random((5, 1, 1))  # densities from empty to full, many exact halves
        frame = np.zeros((5, 64, 64), np.float32)
        frame[:, :h, :w] = masks
        ref = frame.reshape(5, 16, 4, 16, 4).mean(axis=(2, 4)) >= 0.5
        assert np.array_equal(pool_low_res(masks, 64), ref), (h, w)
