"""The one preprocessing transform: resize the long side to `img_size` (and map prompts with it), and the input
normalisation.

The teacher precompute, the training loader, evaluation and the predictor all call this module, so the pixels a
student learns from are the pixels the predictor feeds it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:  # the torch methods import it when called: the PIL path runs without PyTorch (mobilesam.onnx)
    from torch import Tensor


# SAM's input normalisation (ImageNet statistics on the 0..255 scale), RGB
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


def preprocess_shape(old_h: int, old_w: int, long_side: int) -> tuple[int, int]:
    """(h, w) after scaling so that the long side is `long_side`, rounded half up (SAM's rule).

    A side never rounds to 0: an image of extreme aspect ratio (1 x 5000) keeps at least one pixel row or column.
    """
    scale = long_side * 1.0 / max(old_h, old_w)
    return max(1, int(old_h * scale + 0.5)), max(1, int(old_w * scale + 0.5))


def normalize(images: Tensor, sizes: Tensor) -> Tensor:
    """Bx3xSxS uint8 padded batch -> float input: (x - mean) / std inside each image, 0 in the padding (as
    SAM pads after normalising). Training, evaluation and the precompute normalise with it, on the device.

    Args:
        images: uint8 Bx3xSxS, each image in the top-left corner.
        sizes: int64 Bx2, (h, w) of each image.
    """
    import torch

    mean = images.new_tensor(PIXEL_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = images.new_tensor(PIXEL_STD, dtype=torch.float32).view(1, 3, 1, 1)
    x = (images.float() - mean) / std
    s = images.shape[-1]
    ar = torch.arange(s, device=images.device)
    valid = (ar[None, :, None] < sizes[:, 0, None, None]) & (ar[None, None, :] < sizes[:, 1, None, None])
    return x.masked_fill_(~valid[:, None], 0.0)


def resize_image(image: Image.Image | np.ndarray, long_side: int) -> Image.Image:
    """Bilinear PIL resize of an RGB image so its long side is `long_side` (as SAM's `ResizeLongestSide`)."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    h, w = preprocess_shape(image.height, image.width, long_side)
    if (h, w) == (image.height, image.width):
        return image
    return image.resize((w, h), Image.BILINEAR)


class ResizeLongestSide:
    """Resizes images so the long side is `target_length`, and maps coordinates and boxes the same way."""

    def __init__(self, target_length: int) -> None:
        self.target_length = target_length

    get_preprocess_shape = staticmethod(preprocess_shape)

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 -> hxwx3 uint8 with max(h, w) = target_length."""
        return np.array(resize_image(image, self.target_length))

    def apply_coords(self, coords: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        """...x2 (x, y) pixel coordinates in an image of `original_size` (H, W) -> the resized frame (float)."""
        new_h, new_w = preprocess_shape(original_size[0], original_size[1], self.target_length)
        coords = np.array(coords, dtype=float)
        coords[..., 0] *= new_w / original_size[1]
        coords[..., 1] *= new_h / original_size[0]
        return coords

    def apply_boxes(self, boxes: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        """Bx4 XYXY boxes -> the resized frame."""
        return self.apply_coords(np.asarray(boxes).reshape(-1, 2, 2), original_size).reshape(-1, 4)

    def apply_image_torch(self, image: Tensor) -> Tensor:
        """BxCxHxW float images -> resized with antialiased bilinear interpolation (close to, not equal to, PIL)."""
        import torch.nn.functional as F

        size = preprocess_shape(image.shape[2], image.shape[3], self.target_length)
        return F.interpolate(image, size, mode="bilinear", align_corners=False, antialias=True)

    def apply_coords_torch(self, coords: Tensor, original_size: tuple[int, ...]) -> Tensor:
        """Tensor version of `apply_coords`."""
        import torch

        new_h, new_w = preprocess_shape(original_size[0], original_size[1], self.target_length)
        scale = coords.new_tensor([new_w / original_size[1], new_h / original_size[0]], dtype=torch.float32)
        return coords.float() * scale

    def apply_boxes_torch(self, boxes: Tensor, original_size: tuple[int, ...]) -> Tensor:
        """Tensor version of `apply_boxes`."""
        return self.apply_coords_torch(boxes.reshape(-1, 2, 2), original_size).reshape(-1, 4)
