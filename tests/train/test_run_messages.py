"""What a training run says and leaves: the NaN stop names what exists, one last.ckpt, the demo teacher per size."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from mobilesam import build_sam
from mobilesam.demo.backends import toy_reason
from tests.train.conftest import compose_train
from train.demo import prepare_demo
from train.distill import DistillModule
from train.run import run


def _nan_from(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """The distillation loss turns NaN from training step `step` on."""
    losses = DistillModule.losses

    def nan_losses(self, batch):
        parts = losses(self, batch)
        if self.global_step >= step:
            parts["loss"] = parts["loss"] * float("nan")
        return parts

    monkeypatch.setattr(DistillModule, "losses", nan_losses)


def test_a_nan_before_the_first_checkpoint_says_nothing_was_saved(fast_overrides, tmp_path, monkeypatch):
    _nan_from(monkeypatch, 0)
    with pytest.raises(FloatingPointError) as e:
        run(compose_train(fast_overrides))
    message = str(e.value)
    assert "loss is nan at step 0" in message
    assert "nothing was saved" in message and "start the run again" in message and "last.ckpt" not in message
    assert not list((tmp_path / "run").rglob("*.ckpt"))  # and indeed none exists


def test_a_nan_after_a_checkpoint_names_the_file_that_exists(fast_overrides, tmp_path, monkeypatch):
    _nan_from(monkeypatch, 2)
    overrides = fast_overrides + ["trainer.max_steps=4", "callbacks.last.every_n_train_steps=1"]
    with pytest.raises(FloatingPointError) as e:
        run(compose_train(overrides))
    named = re.search(r"ckpt_path=(\S+?)\)", str(e.value))
    assert named and "loss is nan at step 2" in str(e.value)
    last = Path(named[1])
    assert last == tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 2  # the state before the NaN step


def test_one_last_ckpt_and_it_is_the_newest(fast_overrides, tmp_path):
    # as in `make demo`: `best` writes last.ckpt with each validation (step 2), ExportMobileSam at the end, and the
    # `last` callback, which had not written one yet, at the end too (with a version counter: last-v1.ckpt)
    overrides = fast_overrides + ["trainer.max_steps=3", "trainer.val_check_interval=2"]
    run(compose_train(overrides))
    folder = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["best.ckpt", "last.ckpt"]
    assert torch.load(folder / "last.ckpt", weights_only=True)["global_step"] == 3
    # resuming in the run folder (ckpt_path=last) goes on from it and still leaves one last.ckpt
    run(compose_train([o for o in overrides if "max_steps" not in o] + ["trainer.max_steps=5", "ckpt_path=last"]))
    assert sorted(p.name for p in folder.iterdir()) == ["best.ckpt", "last.ckpt"]
    assert torch.load(folder / "last.ckpt", weights_only=True)["global_step"] == 5


def _demo_cfg(tmp_path: Path, img_size: int):
    overrides = [f"paths.root_dir={tmp_path}", f"paths.data_dir={tmp_path}/data", f"paths.output_dir={tmp_path}/run"]
    return compose_train(overrides + [f"img_size={img_size}", "teacher.variant=vit_t"])  # vit_t: small files


def test_the_demo_teacher_is_cached_per_img_size(tmp_path):
    small, large = _demo_cfg(tmp_path, 256), _demo_cfg(tmp_path, 320)
    assert small.teacher.checkpoint != large.teacher.checkpoint
    assert small.teacher.checkpoint.endswith("teacher_sam_vit_t_256.pth") and large.data.root.endswith("shards_320")
    prepare_demo(small)
    prepare_demo(large)  # a run at 320 after one at 256: its own teacher, not the 256 one
    for cfg in (small, large):
        assert build_sam("vit_t", cfg.teacher.checkpoint).image_encoder.img_size == cfg.img_size
    # the same weights whatever the run's seed (the file is defined by its variant and img_size alone)
    before = torch.load(small.teacher.checkpoint, weights_only=True)
    Path(small.teacher.checkpoint).unlink()
    small.seed = 7
    prepare_demo(small)
    after = torch.load(small.teacher.checkpoint, weights_only=True)
    assert all(torch.equal(before[k], after[k]) for k in before)
    # a file made for another size, put there by hand, is refused by name before any work
    src, dest = Path(small.teacher.checkpoint), Path(large.teacher.checkpoint)
    for suffix in (".pth", ".json"):
        shutil.copy(src.with_suffix(suffix), dest.with_suffix(suffix))
    with pytest.raises(ValueError, match=r"teacher_sam_vit_t_320.pth is a vit_t at img_size 256 .* needs a vit_t at "):
        prepare_demo(large)


def test_the_web_demo_recognises_a_make_demo_model_as_the_toy():
    """`make demo` runs the default config; its sidecar records that config (train.callbacks.export_module)."""
    cfg = compose_train(["paths.root_dir=/x", "paths.data_dir=/x", "paths.output_dir=/x"])
    meta = {"config": OmegaConf.to_container(cfg), "teacher": dict(cfg.teacher)}
    assert "`make demo` toy" in toy_reason(meta)
    real = compose_train(["+experiment=distill_1pct", "paths.root_dir=/x", "paths.data_dir=/x"])
    real_meta = {"config": OmegaConf.to_container(real), "teacher": {"variant": "vit_h", "checkpoint": "sam_vit_h.pth"}}
    assert toy_reason(real_meta) is None
