"""Calibration images for int8 post-training quantization: a folder of images, the project's shards, or generated.

Every image is resized (long side img_size, PIL bilinear, `mobilesam.transforms.resize_image`), normalised with
SAM's mean and std and zero-padded at the bottom and right, as the predictor feeds the encoder. Shards (a folder
holding `*.tar` webdataset shards, `mobilesam`'s shard format) are read with `tarfile`: the `<key>.jpg` member of
each sample, in shard-name order, so that the first shards (those a training run trains on; it holds out the last)
come first. Generated images (colour gradients with discs and noise) are the fallback when no source is given.
"""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..io import ImageReadError, decode_image, load_image
from ..transforms import PIXEL_MEAN, PIXEL_STD, resize_image
from .formats import CALIBRATION_IMAGES, MAX_CALIBRATION_IMAGES

DEFAULT_COUNT, MAX_COUNT = CALIBRATION_IMAGES, MAX_CALIBRATION_IMAGES
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
FIX = "pass --calibration a folder of images (jpg, png, ...) or of shards (*.tar), or leave it out for generated images"


class CalibrationError(ValueError):
    """Calibration images that cannot be read: names the path and the fix."""


@dataclass(frozen=True)
class Calibration:
    """The encoder inputs of a calibration set (each 1x3xSxS float32) and where they came from, in words."""

    images: list[Tensor]
    source: str  # "generated", or "<n> images from <folder>" / "<n> shard images from <folder>"

    @property
    def generated(self) -> bool:
        return self.source == "generated"


def to_input(image: np.ndarray, img_size: int) -> Tensor:
    """HxWx3 uint8 RGB -> 1x3xSxS float32 encoder input: resized, normalised, zero-padded (bottom, right)."""
    resized = np.asarray(resize_image(image, img_size), np.float32)
    h, w = resized.shape[:2]
    out = torch.zeros(1, 3, img_size, img_size)
    mean, std = np.asarray(PIXEL_MEAN, np.float32), np.asarray(PIXEL_STD, np.float32)
    out[0, :, :h, :w] = torch.from_numpy(((resized - mean) / std).transpose(2, 0, 1).copy())
    return out


def generated_images(img_size: int, n: int = DEFAULT_COUNT, seed: int = 0) -> list[Tensor]:
    """Generated calibration inputs: smooth colour gradients with random discs and noise (1x3xSxS, normalised)."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.linspace(0, 1, img_size), torch.linspace(0, 1, img_size), indexing="ij")
    out = []
    for _ in range(n):
        base = torch.rand(3, 1, 1, generator=g) * 255 * (1 - ys) + torch.rand(3, 1, 1, generator=g) * 255 * xs
        for _ in range(6):
            cy, cx, r = torch.rand(3, generator=g)
            disc = ((ys - cy) ** 2 + (xs - cx) ** 2) < (0.3 * r) ** 2
            base = torch.where(disc, torch.rand(3, 1, 1, generator=g) * 255, base)
        img = (base + torch.randn(3, img_size, img_size, generator=g) * 8).clamp(0, 255)
        mean, std = torch.tensor(PIXEL_MEAN).view(3, 1, 1), torch.tensor(PIXEL_STD).view(3, 1, 1)
        out.append(((img - mean) / std)[None])
    return out


def _shard_images(shards: list[Path], count: int) -> list[tuple[str, np.ndarray]]:
    """The first `count` sample images of `shards` (in order): (where, HxWx3 uint8)."""
    out: list[tuple[str, np.ndarray]] = []
    for path in shards:
        try:
            with tarfile.open(path) as tar:
                for member in tar:
                    if len(out) == count:
                        return out
                    if member.isfile() and member.name.lower().endswith(".jpg"):
                        where = f"{path}:{member.name}"
                        data = tar.extractfile(member).read()
                        out.append((where, decode_image(data, where)))
        except (tarfile.TarError, OSError) as e:
            raise CalibrationError(f"calibration shard {path} cannot be read ({e}): {FIX}") from e
    return out


def read_calibration(source: str | os.PathLike | None, img_size: int, count: int = DEFAULT_COUNT) -> Calibration:
    """The calibration set: `count` images of `source` (a folder of images or of shards), or generated ones.

    Args:
        source: a folder of images (searched recursively; `count` of them spread evenly over the sorted list), a
            folder of shards (`*.tar`; the first `count` samples in shard-name order), or None for generated images.
        img_size: the model's input size.
        count: how many images (1 to `MAX_COUNT`).

    Raises:
        CalibrationError: a missing or empty folder, an unreadable image or shard (naming it and the fix).
    """
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_COUNT:
        raise CalibrationError(f"calibration count {count!r} is out of range: choose an integer from 1 to {MAX_COUNT}")
    if source is None:
        return Calibration(generated_images(img_size, count), "generated")
    root = Path(source)
    if not root.is_dir():
        raise CalibrationError(f"calibration folder {root} does not exist or is not a folder: {FIX}")
    shards = sorted(root.glob("*.tar"))
    if shards:
        images = _shard_images(shards, count)
        kind = "shard images"
    else:
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        picked = [files[int(i)] for i in np.linspace(0, len(files) - 1, min(count, len(files)))] if files else []
        images = []
        for path in picked:
            try:
                images.append((str(path), load_image(path)))
            except ImageReadError as e:
                raise CalibrationError(f"calibration image {path} cannot be read ({e}): remove it, or {FIX}") from e
        kind = "images"
    if not images:
        suffixes = ", ".join(IMAGE_SUFFIXES)
        raise CalibrationError(f"calibration folder {root} holds no images ({suffixes}) or shards (*.tar): {FIX}")
    return Calibration([to_input(im, img_size) for _, im in images], f"{len(images)} {kind} from {root}")
