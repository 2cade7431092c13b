"""Fixtures shared by every test folder."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("YOLO_OFFLINE", "1")
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
    """A random, perturbed vit_t `mobile_sam.pt` at img_size 256 with its sidecar (fast for API tests)."""
    from mobilesam import build_sam
    from mobilesam.checkpoint import save_state_dict
    from tests.helpers import perturb_

    model = perturb_(build_sam("vit_t", img_size=256), seed=1)
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
