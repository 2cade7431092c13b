"""The runtime predictors' numpy post-processing (`mobilesam.deploy.runtime`) against SAM's in PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mobilesam.deploy.runtime import upscale_masks
from mobilesam.transforms import preprocess_shape


def _sam_postprocess(low_res: np.ndarray, img_size: int, size: tuple[int, int]) -> np.ndarray:
    """segment-anything's `postprocess_masks`: upscale to img_size, crop the padding, upscale to the original."""
    h, w = preprocess_shape(size[0], size[1], img_size)
    x = F.interpolate(torch.from_numpy(low_res)[None], (img_size, img_size), mode="bilinear", align_corners=False)
    return F.interpolate(x[..., :h, :w], size, mode="bilinear", align_corners=False)[0].numpy()


def _logits(kind: str) -> np.ndarray:
    rng = np.random.default_rng(3)
    if kind == "noise":  # random weights: the mask border is everywhere
        return rng.standard_normal((3, 64, 64)).astype(np.float32)
    yy, xx = np.mgrid[:64, :64]  # two smooth blobs and a ramp, as trained weights give
    blobs = [(20, 30, 9), (45, 12, 5), (50, 50, 12)]
    out = [8.0 - np.hypot(yy - cy, xx - cx) for cy, cx, _ in blobs[:2]] + [xx / 8.0 - 4.0]
    return (np.stack(out) + 0.01 * rng.standard_normal((3, 64, 64))).astype(np.float32)


@pytest.mark.parametrize("kind", ["smooth", "noise"])
@pytest.mark.parametrize("size", [(300, 410), (410, 300), (1500, 2250), (17, 33)])
def test_upscaled_masks_are_sams_and_the_boolean_pass_is_exact(kind, size):
    """The float path equals SAM's two bilinear resizes; thresholded directly (interpolating only at the border,
    or everywhere for noise) it gives exactly the float path's `> 0`."""
    low = _logits(kind)
    logits = upscale_masks(low, 256, size)
    assert logits.shape == (3, *size) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, _sam_postprocess(low, 256, size), atol=2e-5)
    masks = upscale_masks(low, 256, size, threshold=0.0)
    assert masks.dtype == np.bool_ and masks.shape == (3, *size)
    np.testing.assert_array_equal(masks, logits > 0)
    assert 0.01 < masks.mean() < 0.99


@pytest.mark.parametrize("size", [(900, 1350), (1333, 750)])
def test_upscaled_masks_at_1024_are_pytorchs(size):
    """At the deployed size (256 x 256 logits of the 1024 frame, an SA-1B photo): the logits are PyTorch's two
    `F.interpolate` calls up to float rounding (1e-5 of the largest logit: PyTorch's float32 source coordinates
    are off by that on some rows, as they were for the former numpy passes), and the masks the facade's
    (`Sam.postprocess_masks` with the threshold, PyTorch's border-only pass) but where a logit is within that of 0."""
    from mobilesam.mask_ops import upsample_binary, upscale_unpadded

    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[:256, :256]
    smooth = np.stack([30.0 - np.hypot(yy - 90, xx - 140) / 2, xx / 40.0 - 3.0]) + rng.standard_normal((2, 256, 256))
    noise = 4 * rng.standard_normal((1, 256, 256))
    low = np.concatenate([smooth, noise]).astype(np.float32)
    logits = upscale_masks(low, 1024, size)
    want = _sam_postprocess(low, 1024, size)
    tol = 1e-5 * np.abs(low).max()
    np.testing.assert_allclose(logits, want, rtol=0, atol=tol)
    masks = upscale_masks(low, 1024, size, threshold=0.0)
    np.testing.assert_array_equal(masks, logits > 0)
    # `Sam.postprocess_masks(..., threshold=0.0)`
    cropped = upscale_unpadded(torch.from_numpy(low)[None], preprocess_shape(*size, 1024), 1024)
    facade = upsample_binary(cropped, size, 0.0)[0]
    assert (masks != facade.numpy()).sum() <= (np.abs(want) < tol).sum()
    assert 0.1 < masks.mean() < 0.9
