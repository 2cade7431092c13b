"""Demo and test data end to end: generated SA-1B tars turned into shards by a small random teacher."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from .manifest import MANIFEST
from .precompute import run
from .precompute_config import PrecomputeConfig, TeacherConfig
from .synthetic import make_sa1b_tars

log = logging.getLogger(__name__)


def precompute_config(source_root: str | os.PathLike, out_dir: str | os.PathLike, **overrides: Any) -> PrecomputeConfig:
    """The demo's precompute settings (a random vit_t teacher at 256 on the CPU, small shards, quiet), for calling
    `data.precompute.run` without Hydra; `overrides` replace fields (`teacher=` takes a dict or a `TeacherConfig`)."""
    demo = {
        "source": {"kind": "sa1b", "root": str(source_root)},
        "out_dir": str(out_dir),
        "teacher": TeacherConfig(variant="vit_t"),
        "img_size": 256,
        "batch_size": 4,
        "num_workers": 0,
        "shard_size": 8,
        "device": "cpu",
        "progress": False,
    }
    return PrecomputeConfig.of(demo | overrides)


def ensure_demo_shards(
    root: str | os.PathLike,
    n_tars: int = 2,
    images_per_tar: int = 8,
    image_size: tuple[int, int] = (192, 288),
    img_size: int = 256,
    shard_size: int = 4,
    seed: int = 0,
    teacher: dict[str, Any] | None = None,
) -> Path:
    """Makes `root` a shard directory of generated images unless it already is one.

    Takes a few seconds at img_size 256 on a CPU; the tars go to `root/_tars`. Rerunning resumes or does nothing.

    Args:
        teacher: {"variant", "checkpoint", "precision"}; default a random vit_t (seeded). Training's demo passes a
            random teacher written to disk, so its decoder can join the student.
    """
    root = Path(root)
    if (root / MANIFEST).is_file():
        return root
    teacher = dict(teacher) if teacher else {"variant": "vit_t", "checkpoint": None, "precision": "fp32"}
    log.info("generating demo shards in %s (%d images, %s teacher)", root, n_tars * images_per_tar, teacher["variant"])
    tars = make_sa1b_tars(root / "_tars", n_tars, images_per_tar, size=tuple(image_size), seed=seed)
    run(precompute_config(tars[0].parent, root, img_size=img_size, shard_size=shard_size, teacher=teacher))
    return root
