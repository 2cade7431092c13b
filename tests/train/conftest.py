"""Helpers of the training tests: a CPU trainer, composed configs, fast overrides (fixtures: tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

CONFIGS = str(Path(__file__).resolve().parents[2] / "configs")


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
