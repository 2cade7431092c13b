"""End to end through `train.run`: one-batch runs that export a strictly loading mobile_sam.pt, resume, configs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mobilesam import build_sam
from tests.train.conftest import CONFIGS, compose_train
from train.run import place_trainer, run

EXPERIMENTS = sorted(p.stem for p in (Path(CONFIGS) / "experiment").glob("*.yaml"))


def test_one_batch_run_exports_a_strictly_loading_mobile_sam(fast_overrides, teacher_file, tmp_path):
    cfg = compose_train(fast_overrides + ["trainer.max_steps=1", "trainer.val_check_interval=1", "predict_after=true"])
    result = run(cfg)
    path = Path(result["mobile_sam"])
    assert path.name == "mobile_sam.pt" and path.parent == tmp_path / "run"
    sd = torch.load(path, weights_only=True)
    assert len(sd) == 439 and all(v.device.type == "cpu" for v in sd.values())
    model = build_sam("vit_t", path)  # strict
    assert model.img_size == 256
    teacher = torch.load(teacher_file, weights_only=True)
    assert torch.equal(sd["mask_decoder.iou_token.weight"], teacher["mask_decoder.iou_token.weight"])
    meta = json.loads((tmp_path / "run" / "mobile_sam.json").read_text())
    assert meta["img_size"] == 256 and meta["variant"] == "vit_t" and meta["global_step"] == 1
    assert len(meta["data"]["manifest_sha256"]) == 64 and meta["data"]["samples"] == 16
    assert meta["teacher"]["sha256"] and "val/miou_point" in meta["metrics"]
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    assert Path(result["overlay"]).is_file()
    # every Lightning checkpoint loads with weights_only=True and holds the SAM under `sam.`
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert sum(k.startswith("sam.") for k in ckpt["state_dict"]) == 439
    _consumers_load(path)


def _consumers_load(path: Path) -> None:
    """The official MobileSAM code loads the file strictly; Ultralytics' SAM loads it and predicts."""
    import numpy as np

    from tests.helpers import official_registry

    official = official_registry()["vit_t"](checkpoint=str(path))
    written = torch.load(path, weights_only=True)
    for k, v in official.state_dict().items():
        assert torch.equal(v, written[k]), k
    from ultralytics import SAM as UltralyticsSAM

    image = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    (res,) = UltralyticsSAM(str(path)).predict(image, points=[80, 60], labels=[1], verbose=False, device="cpu")
    assert res.masks.data.shape[-2:] == (120, 160)


def test_resume_continues_the_step_count(fast_overrides, tmp_path):
    first = compose_train(fast_overrides + ["trainer.max_steps=2", "callbacks.last.every_n_train_steps=1"])
    run(first)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 2
    opt_state = torch.load(last, weights_only=True)["optimizer_states"][0]["state"]
    second = compose_train(fast_overrides + ["trainer.max_steps=4", "ckpt_path=last"])
    result = run(second)
    resumed = torch.load(last, weights_only=True)
    assert resumed["global_step"] == 4
    assert json.loads((tmp_path / "run" / "mobile_sam.json").read_text())["global_step"] == 4
    # AdamW's step counters continued from the checkpoint rather than restarting
    steps = [int(s["step"]) for s in resumed["optimizer_states"][0]["state"].values()]
    assert opt_state and min(steps) == 4
    assert result["mobile_sam"] is not None


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_instantiates(experiment, teacher_file, tmp_path):
    cfg = compose_train(
        [
            f"+experiment={experiment}",
            f"paths.root_dir={tmp_path}",
            f"paths.data_dir={tmp_path}",
            f"paths.output_dir={tmp_path / 'run'}",
            f"teacher.checkpoint={teacher_file}",
            "trainer.accelerator=cpu",
            "trainer.precision=32-true",
            "trainer.devices=1",
            "++trainer.strategy=auto",
        ]
    )
    assert cfg.experiment == experiment
    # stage 2 starts from a stage-1 mobile_sam.pt, a fine-tune from the model it adapts
    needs_init = cfg.model.get("init_required") or "finetune" in experiment
    if needs_init:
        assert cfg.model.init is None
        with pytest.raises(InstantiationException, match="model.init"):  # refused, naming the fix, before any work
            instantiate(cfg.model)
        cfg.model.init = str(teacher_file)
    if "dry_run_size" in cfg.model:  # qat_int8's lowering dry run (~100 s) has its own test: tests/train/test_qat.py
        cfg.model.dry_run_size = 0
    for key in ("root", "images", "annotations"):  # fine-tunes name the user's folders
        if key in cfg.data.keys() and OmegaConf.is_missing(cfg.data, key):
            cfg.data[key] = str(tmp_path)
    model = instantiate(cfg.model)
    assert model.hparams.img_size == cfg.img_size
    datamodule = instantiate(cfg.data)
    assert datamodule.batch_size == cfg.data.batch_size
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    trainer = instantiate(place_trainer(cfg.trainer), callbacks=callbacks, logger=False)
    assert trainer.max_epochs == cfg.trainer.max_epochs


def test_default_config_is_the_demo():
    cfg = compose_train(["paths.root_dir=/x", "paths.data_dir=/x", "paths.output_dir=/x"])
    assert cfg.demo.enabled and cfg.trainer.accelerator == "cpu" and cfg.img_size == 256
    assert cfg.teacher.checkpoint.endswith("teacher_sam_vit_b_256.pth")  # cached by variant and img_size
    # experiments are appended with +experiment=NAME: the primary defaults list must not name the group
    primary = OmegaConf.load(Path(CONFIGS) / "train.yaml").defaults
    groups = [next(iter(d)) if isinstance(d, dict) or OmegaConf.is_dict(d) else str(d) for d in primary]
    assert "experiment" not in groups and "_self_" in groups and {"data", "model", "trainer"} <= set(groups)
    assert compose_train(["+experiment=distill_1pct", "paths.root_dir=/x"]).experiment == "distill_1pct"


def test_gpu_trainer_falls_back_to_the_cpu_with_a_notice(capsys, tmp_path):
    cfg = compose_train(["+experiment=finetune_masks", f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path}"])
    assert cfg.trainer.accelerator == "auto" and cfg.trainer.precision == "bf16-mixed"
    placed = place_trainer(cfg.trainer)
    if torch.cuda.is_available():
        assert placed.accelerator == "gpu" and placed.precision == "bf16-mixed"
    else:
        assert placed.accelerator == "cpu" and placed.precision == "32-true"
        assert "no GPU found: training on the CPU" in capsys.readouterr().out
        trainer = instantiate(placed, logger=False)  # what died with "No supported gpu backend found!" before
        assert trainer.accelerator.__class__.__name__ == "CPUAccelerator"
    assert cfg.trainer.accelerator == "auto"  # the composed config itself is not changed
    assert place_trainer(OmegaConf.create({"accelerator": "cpu", "precision": "bf16-mixed"})).precision == "bf16-mixed"


@pytest.mark.slow
def test_ddp_with_two_cpu_processes(train_shards, teacher_file, tmp_path):
    """Lightning's DDP (gloo) with two processes: both ranks train on disjoint shards, rank 0 exports."""
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "train.py",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.precision=32-true",
        "trainer.max_steps=2",
        "trainer.limit_val_batches=1",
        "trainer.enable_progress_bar=false",
        f"hydra.run.dir={out}",
        f"paths.data_dir={tmp_path / 'data'}",
        f"data.root={train_shards}",
        "data.synthesize=null",
        "data.batch_size=2",
        "data.val_masks_per_image=2",
        "teacher=vit_t",
        f"teacher.checkpoint={teacher_file}",
        "predict_after=false",
        "demo.enabled=false",
        "logger=csv",
        "+callbacks.rank_probe._target_=tests.train.probes.RankProbe",
        f"+callbacks.rank_probe.out_dir={tmp_path / 'ranks'}",
    ]
    proc = subprocess.run(cmd, cwd=Path(CONFIGS).parent, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "mobile_sam.pt").is_file()
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    ranks = [json.loads((tmp_path / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["rank"] for r in ranks] == [0, 1]
    assert len(ranks[0]["keys"]) == len(ranks[1]["keys"]) == 4  # 2 steps x batch 2 on each rank
    assert set(ranks[0]["keys"]).isdisjoint(ranks[1]["keys"])  # the ranks read different samples


def test_a_run_killed_before_the_step_interval_leaves_a_current_last_ckpt(fast_overrides, tmp_path):
    # validation (and best.ckpt) at step 2 (not 1: Lightning takes val_check_interval=1 for 1.0, "each epoch end")
    overrides = fast_overrides + [
        "trainer.max_steps=4",
        "trainer.val_check_interval=2",
        "callbacks.last.every_n_train_steps=1000",
    ]
    killed = compose_train(overrides + ["+callbacks.fail._target_=tests.train.probes.FailAt", "+callbacks.fail.step=3"])
    with pytest.raises(RuntimeError, match="killed at step 3"):
        run(killed)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    # validation ran at step 2 and wrote best.ckpt: last.ckpt came with it, long before every_n_train_steps
    assert torch.load(last, weights_only=True)["global_step"] == 2
    resumed = run(compose_train(overrides + [f"ckpt_path={last}"]))
    assert torch.load(last, weights_only=True)["global_step"] == 4 and Path(resumed["mobile_sam"]).is_file()


def test_ckpt_path_that_cannot_resume_is_named(fast_overrides, tmp_path, small_checkpoint):
    from mobilesam.checkpoint import CheckpointError

    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "epoch=1.ckpt").write_bytes(b"")
    with pytest.raises(
        FileNotFoundError,
        match=r"ckpt_path=.*missing.ckpt does not exist; the checkpoints in .* are \['epoch=1.ckpt'\]",
    ):
        run(compose_train(fast_overrides + [f"ckpt_path={tmp_path / 'ck' / 'missing.ckpt'}"]))
    truncated = tmp_path / "cut.ckpt"
    truncated.write_bytes(small_checkpoint.read_bytes()[:4096])
    with pytest.raises(CheckpointError, match="ckpt_path: cannot read checkpoint .*cut.ckpt"):
        run(compose_train(fast_overrides + [f"ckpt_path={truncated}"]))
    with pytest.raises(CheckpointError, match="not a Lightning training checkpoint .* set model.init=PATH"):
        run(compose_train(fast_overrides + [f"ckpt_path={small_checkpoint}"]))


def test_bad_config_values_end_in_one_line_naming_the_key(tmp_path):
    cases = [
        ("data.batch_size=-1", "error: data.batch_size=-1 must be an integer >= 1"),
        ("img_size=1000", "error: img_size=1000 must be a positive multiple of 64"),
        ("ckpt_path=/nonexistent/last.ckpt", "error: ckpt_path=/nonexistent/last.ckpt does not exist"),
    ]
    for override, message in cases:
        cmd = [sys.executable, "train.py", override, f"hydra.run.dir={tmp_path / 'r'}", f"paths.data_dir={tmp_path}"]
        proc = subprocess.run(cmd, cwd=Path(CONFIGS).parent, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 1 and message in proc.stderr, (override, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr


def test_wandb_online_without_credentials_falls_back_to_offline(monkeypatch, tmp_path, capsys):
    from train.run import place_loggers

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    cfg = compose_train(["logger=wandb", "logger.wandb.offline=false", f"paths.root_dir={tmp_path}"])
    placed = place_loggers(cfg.logger)
    assert placed.wandb.offline is True and cfg.logger.wandb.offline is False
    assert "logging offline instead" in capsys.readouterr().out
    (tmp_path / "netrc").write_text("machine api.wandb.ai login user password k\n")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert place_loggers(cfg.logger).wandb.offline is False  # with credentials: as asked
