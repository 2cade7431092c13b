"""The frozen teacher of the precompute: building it, its numeric precision, and embedding decoded images."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mobilesam import Sam, build_sam
from mobilesam.files import sha256_file
from mobilesam.variants import ALIASES

log = logging.getLogger(__name__)
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")


@functools.lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def checkpoint_sha256(path: str | os.PathLike) -> str:
    """sha256 of a checkpoint file, hashed once per process while its size and mtime stay (ViT-H: 2.4 GiB, seconds)."""
    st = os.stat(path)
    return _sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def describe_teacher(variant: str, checkpoint: str | None, seed: int = 0) -> dict[str, Any]:
    """The manifest's record of a teacher: {"variant", "checkpoint", "checkpoint_sha256" (or "random"), "seed"}."""
    return {
        "variant": ALIASES.get(variant, variant),  # one name per model: tiny_vit_5m is recorded as vit_t
        "checkpoint": None if checkpoint is None else str(checkpoint),
        "checkpoint_sha256": "random" if checkpoint is None else checkpoint_sha256(checkpoint),
        "seed": seed if checkpoint is None else None,
    }


def load_teacher(
    variant: str, checkpoint: str | None, img_size: int, device: str | torch.device, seed: int = 0
) -> tuple[Sam, dict[str, Any]]:
    """Builds the teacher in eval mode on `device`, with its `describe_teacher` record.

    checkpoint None gives random weights drawn with `seed` (the same on every rank and every resumed run), with a
    loud warning: such embeddings are only good for tests and the demo.
    """
    if checkpoint is None:
        log.warning(
            "teacher.checkpoint is null: the %s teacher has RANDOM weights (seed %d). The embeddings are useless for "
            "distillation; pass teacher.checkpoint=sam_vit_h_4b8939.pth for real ones.",
            variant,
            seed,
        )
        torch.manual_seed(seed)
    model = build_sam(variant, checkpoint, img_size=img_size).to(device).eval()
    return model, describe_teacher(variant, checkpoint, seed)


@contextlib.contextmanager
def precision_context(precision: str, device: torch.device) -> Iterator[None]:
    """fp32 (TF32 off), tf32 (TF32 matmuls and convolutions), bf16 / fp16 (autocast) around the teacher."""
    if precision not in PRECISIONS:
        raise ValueError(f"teacher.precision={precision!r}; choose one of {PRECISIONS}")
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
    try:
        if precision in ("bf16", "fp16"):
            dtype = torch.bfloat16 if precision == "bf16" else torch.float16
            with torch.autocast(device.type, dtype=dtype):
                yield
        else:
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@torch.no_grad()
def embed(model: Sam, images: Sequence[Tensor], precision: str = "fp32") -> Tensor:
    """Teacher embeddings of decoded images.

    Args:
        images: 3xhxw uint8 RGB tensors with long side model.img_size (the decoded stored JPEGs).
        precision: one of PRECISIONS.

    Returns:
        Bx256x(img_size/16)x(img_size/16) float32 on the model's device.
    """
    device = model.device
    # normalise and pad on the device: uint8 crosses the bus, as in training
    x = torch.stack([model.preprocess(im.to(device, non_blocking=True)) for im in images])
    with precision_context(precision, device):
        return model.image_encoder(x).float()
