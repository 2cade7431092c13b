"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")  # Ultralytics must never pip-install during a test
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory: pytest.TempPathFactory):
    """A random vit_t `mobile_sam.pt` at img_size 256 with its sidecar (fast for API and deploy tests), perturbed so
    that its embedding still depends on the image (`perturb_keeping_input_`: what the export checks need)."""
    from mobilesam import build_sam
    from mobilesam.checkpoint import save_state_dict
    from tests.helpers import perturb_keeping_input_

    with torch.random.fork_rng():  # the same weights whatever ran before (test order must not change numbers)
        torch.manual_seed(0)
        model = perturb_keeping_input_(build_sam("vit_t", img_size=256), seed=1)
    path = tmp_path_factory.mktemp("ckpt") / "small_mobile_sam.pt"
    save_state_dict(model.state_dict(), path, meta={"img_size": 256, "variant": "vit_t"})
    return path


@pytest.fixture(scope="session")
def vit_t_pair():
    """(official MobileSAM, ours) at 1024 with the same perturbed random weights, both in eval mode."""
    from mobilesam import build_sam
    from tests.helpers import official_registry, perturb_, refresh_official

    torch.manual_seed(0)
    official = perturb_(official_registry()["vit_t"](), seed=0)
    refresh_official(official)
    ours = build_sam("vit_t")
    ours.load_state_dict(official.state_dict(), strict=True)
    return official, ours


# The training and evaluation tests share these (session scope: made once per run)
IMG_SIZE = 256


@pytest.fixture(scope="session")
def teacher_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random (seeded, perturbed) SAM vit_t at 256: fast to run, and its decoder joins the student."""
    from mobilesam import build_sam
    from mobilesam.checkpoint import save_state_dict
    from tests.helpers import perturb_

    with torch.random.fork_rng():
        torch.manual_seed(0)
        sam = perturb_(build_sam("vit_t", img_size=IMG_SIZE), seed=11)
    return save_state_dict(sam.state_dict(), tmp_path_factory.mktemp("teacher") / "teacher_sam_vit_t.pth")


@pytest.fixture(scope="session")
def train_shards(teacher_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 generated SA-1B images in shards of 4, embedded by `teacher_file` at 256."""
    from data.demo import ensure_demo_shards

    teacher = {"variant": "vit_t", "checkpoint": str(teacher_file), "precision": "fp32"}
    return ensure_demo_shards(
        tmp_path_factory.mktemp("shards") / "s",
        n_tars=2,
        images_per_tar=8,
        image_size=(120, 160),
        img_size=IMG_SIZE,
        shard_size=4,
        teacher=teacher,
    )
