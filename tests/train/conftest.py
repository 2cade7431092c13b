"""Fixtures for the training tests: a small random teacher on disk, demo shards made with it, composed configs."""

from __future__ import annotations

from pathlib import Path

import pytest

CONFIGS = str(Path(__file__).resolve().parents[2] / "configs")
IMG_SIZE = 256


@pytest.fixture(scope="session")
def teacher_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random (seeded, perturbed) SAM vit_t at 256: fast to run, and its decoder joins the student."""
    from mobilesam import build_sam
    from mobilesam.checkpoint import save_state_dict
    from tests.helpers import perturb_

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


def cpu_trainer(max_steps: int, **kwargs):
    """A bare Lightning Trainer for a few CPU steps: no logger, checkpoints, progress bar, summary or validation."""
    import lightning as L

    options = dict(
        accelerator="cpu",
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    return L.Trainer(**(options | kwargs))


def compose_train(overrides: list[str]):
    """configs/train.yaml composed with `overrides` (no Hydra run: paths must be given)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


@pytest.fixture
def fast_overrides(train_shards: Path, teacher_file: Path, tmp_path: Path) -> list[str]:
    """A run of a couple of steps on the test shards, everything under tmp_path."""
    return [
        f"paths.root_dir={tmp_path}",
        f"paths.data_dir={tmp_path / 'data'}",
        f"paths.output_dir={tmp_path / 'run'}",
        f"data.root={train_shards}",
        "data.synthesize=null",
        "data.batch_size=2",
        "data.val_masks_per_image=2",
        "teacher=vit_t",
        f"teacher.checkpoint={teacher_file}",
        "trainer.max_steps=2",
        "trainer.limit_val_batches=1",
        "trainer.enable_progress_bar=false",
        "predict_after=false",
        "demo.enabled=false",
    ]
