"""The embedded demo's two ends: the random teacher written to disk before the data, the prediction after."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from mobilesam import SAM, build_sam
from mobilesam.checkpoint import save_state_dict

log = logging.getLogger(__name__)


def prepare_demo(cfg: DictConfig) -> None:
    """Writes the demo teacher (a randomly initialised SAM, seeded) to `cfg.teacher.checkpoint` if missing.

    The DataModule's `prepare_data` then makes the demo shards with it, and the student takes its prompt
    encoder and mask decoder, so validation masks and the exported model decode consistently.
    """
    path = Path(cfg.teacher.checkpoint)
    if path.is_file():
        return
    log.warning(
        "writing the demo teacher %s: a RANDOM %s at img_size %d (not a real teacher)",
        path,
        cfg.teacher.variant,
        cfg.img_size,
    )
    torch.manual_seed(cfg.seed)
    teacher = build_sam(cfg.teacher.variant, img_size=cfg.img_size)
    save_state_dict(teacher.state_dict(), path, meta={"img_size": int(cfg.img_size), "variant": cfg.teacher.variant})


def predict_with(checkpoint: Path, cfg: DictConfig, out_dir: Path) -> Path:
    """Segments two objects of a generated scene with the exported model; writes and returns an overlay PNG."""
    from data.synthetic import make_sa1b_image

    rng = np.random.default_rng(cfg.seed + 1)
    image, anns = make_sa1b_image(rng, (240, 320), 4)
    points = [a["point_coords"][0] for a in anns[:2]]
    model = SAM(checkpoint, device="cpu")
    (result,) = model.predict(image, points=points)
    path = result.save(Path(out_dir) / "prediction.png")
    log.info("predicted %d masks with %s -> %s", len(result), checkpoint, path)
    return path
