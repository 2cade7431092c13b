"""The embedded demo's two ends: the random teacher written to disk before the data, the prediction after."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from mobilesam import SAM, build_sam
from mobilesam.checkpoint import read_sidecar, save_state_dict

log = logging.getLogger(__name__)


# The demo teacher's seed: fixed, so that its file is defined by its variant and img_size alone (the names it is
# cached under, as the demo shards it makes are cached by img_size)
TEACHER_SEED = 0


def prepare_demo(cfg: DictConfig) -> None:
    """Writes the demo teacher (a randomly initialised SAM, seeded) to `cfg.teacher.checkpoint` if missing.

    The DataModule's `prepare_data` then makes the demo shards with it, and the student takes its prompt
    encoder and mask decoder, so validation masks and the exported model decode consistently. The file name holds
    the variant and img_size (configs/teacher/demo.yaml); a file there made for another size or variant (given by
    hand) is refused, naming it, before any work.
    """
    path = Path(cfg.teacher.checkpoint)
    variant, img_size = str(cfg.teacher.variant), int(cfg.img_size)
    if path.is_file():
        meta = read_sidecar(path) or {}
        said = {"img_size": meta.get("img_size", img_size), "variant": meta.get("variant", variant)}
        if said != {"img_size": img_size, "variant": variant}:
            raise ValueError(
                f"the demo teacher {path} is a {said['variant']} at img_size {said['img_size']} (its sidecar), but "
                f"this run needs a {variant} at img_size {img_size}: delete {path} (it is written again, seconds) or "
                "set teacher.checkpoint to another file"
            )
        return
    log.warning("writing the demo teacher %s: a RANDOM %s at img_size %d (not a real teacher)", path, variant, img_size)
    with torch.random.fork_rng():
        torch.manual_seed(TEACHER_SEED)
        teacher = build_sam(variant, img_size=img_size)
    save_state_dict(teacher.state_dict(), path, meta={"img_size": img_size, "variant": variant})


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
