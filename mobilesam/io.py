"""Reading images into HxWx3 uint8 RGB arrays, by one documented rule for every input type.

Conversion rule (the README repeats it):
- 8-bit RGB is used as is; grayscale (and palette) images are replicated to three channels;
- an alpha channel is dropped (RGBA -> RGB, LA -> L -> RGB);
- 16-bit and 32-bit integer images are stretched linearly from their own min..max to 0..255;
- float images with every value in [0, 1] are multiplied by 255; other float images are stretched like 16-bit;
- files are decoded with Pillow, and the EXIF orientation tag is applied (as OpenCV's `imread` does).
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Iterator
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .files import require_file

# torch is not imported here: the ONNX runtime predictor reads images with this module and runs without PyTorch.
ImageSource = Union[str, os.PathLike, Image.Image, np.ndarray, "torch.Tensor"]  # noqa: F821, UP007


class ImageReadError(ValueError):
    """An image that cannot be read or converted."""


def _stretch(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    return np.round((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def to_uint8(a: np.ndarray) -> np.ndarray:
    """Any numeric array -> uint8 by the module's rule (integers wider than 8 bits and floats are stretched)."""
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    if np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise ImageReadError("the image holds NaN or infinite values")
        if a.size and a.min() >= 0.0 and a.max() <= 1.0:
            return np.round(a * 255.0).astype(np.uint8)
        return _stretch(a)
    if np.issubdtype(a.dtype, np.integer):
        return _stretch(a)
    raise ImageReadError(f"unsupported image dtype {a.dtype}")


def array_to_rgb(a: np.ndarray) -> np.ndarray:
    """HxW, HxWx1, HxWx3 or HxWx4 array of any numeric dtype -> HxWx3 uint8 RGB (C-contiguous)."""
    if a.ndim == 3 and a.shape[2] in (1, 2, 3, 4):
        a = a[..., :3] if a.shape[2] >= 3 else a[..., :1]  # drop alpha
    elif a.ndim != 2:
        raise ImageReadError(f"expected an HxW or HxWxC image with C in 1..4, got an array of shape {a.shape}")
    if min(a.shape[:2]) < 1:
        raise ImageReadError(f"the image is empty: shape {a.shape}")
    a = to_uint8(a)
    if a.ndim == 2:
        a = a[..., None]
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return np.ascontiguousarray(a)


def pil_to_rgb(image: Image.Image) -> np.ndarray:
    """PIL image of any mode -> HxWx3 uint8 RGB."""
    if image.mode == "RGB":
        return np.asarray(image)
    if image.mode in ("RGBA", "RGBa", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "1"):
        image = image.convert("RGBA" if image.mode in ("P", "PA") else "RGB")
        if image.mode == "RGBA":
            image = image.convert("RGB")  # alpha dropped, not composited
        return np.asarray(image)
    if image.mode in ("L", "LA"):
        return array_to_rgb(np.asarray(image.convert("L")))
    # I;16 variants, I (int32), F (float32)
    return array_to_rgb(np.asarray(image))


def _decode_file(fp: str | os.PathLike | BinaryIO, name: str) -> np.ndarray:
    """An image file (path or binary file object) -> HxWx3 uint8 RGB: Pillow, EXIF orientation applied."""
    try:
        with Image.open(fp) as im:
            im = ImageOps.exif_transpose(im)
            im.load()
            return pil_to_rgb(im)
    except Image.DecompressionBombError as e:
        raise ImageReadError(
            f"refusing to decode image {name}: {e}. Pillow's limit (Image.MAX_IMAGE_PIXELS = "
            f"{Image.MAX_IMAGE_PIXELS} pixels) guards against decompression bombs; raise it if you trust the file"
        ) from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, ImportError) as e:
        # ImportError: a third party's patch of `Image.open` (Ultralytics') reaching for an optional plugin (pi_heif)
        raise ImageReadError(f"cannot read image {name}: {e}") from e


def decode_image(data: bytes, name: str = "bytes") -> np.ndarray:
    """The bytes of an image file (JPEG, PNG, TIFF, ...) -> HxWx3 uint8 RGB by the module's rule, as `load_image`
    reads the file; `name` says where the bytes came from in errors.

    Raises:
        ImageReadError: bytes that are not a readable image.
    """
    return _decode_file(io.BytesIO(data), name)


def load_image(source: ImageSource) -> np.ndarray:
    """A path, PIL image, HxWxC array or CxHxW / HxWxC uint8 tensor -> HxWx3 uint8 RGB array."""
    if isinstance(source, (str, os.PathLike)):
        try:
            path = require_file(source, "image")
        except OSError as e:
            raise ImageReadError(str(e)) from e
        return _decode_file(path, str(path))
    if isinstance(source, Image.Image):
        return pil_to_rgb(source)
    torch = sys.modules.get("torch")  # a tensor can only come from a process that imported torch
    if torch is not None and isinstance(source, torch.Tensor):
        t = source.detach().cpu()
        if t.ndim == 3 and t.shape[0] in (1, 3, 4) and t.shape[2] not in (1, 3, 4):
            t = t.permute(1, 2, 0)  # CHW -> HWC
        return array_to_rgb(t.numpy())
    if isinstance(source, np.ndarray):
        return array_to_rgb(source)
    raise ImageReadError(
        f"cannot use a {type(source).__name__} as an image: pass a path, a PIL image or an HxWx3 uint8 array"
    )


def image_batches(sources: list, batch_size: int) -> Iterator[list]:
    """`sources` in groups of `batch_size` (the last one shorter), after checking `batch_size`."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive int (images per encoder batch)")
    for start in range(0, len(sources), batch_size):
        yield sources[start : start + batch_size]
