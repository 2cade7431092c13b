"""Training any student: `model/student=` in every recipe, a run that saves `<student>.pt` beside its sidecar, the
MSE + cosine loss, `model.init=timm:<file>` for timm backbones, and shards refused when another teacher made them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from data.manifest import ManifestError, check_teacher, read_manifest
from mobilesam import build_sam
from mobilesam.checkpoint import CheckpointError, open_checkpoint
from tests.train.conftest import compose_train
from train.init import init_student
from train.losses import embedding_cosine
from train.run import run


@pytest.mark.parametrize(
    ("overrides", "model", "student"),
    [
        ([], "distill", "tiny_vit_5m"),
        (["model/student=repvit_m1_1"], "distill", "repvit_m1_1"),
        (["+experiment=distill_1pct", "model/student=repvit_m1_1"], "distill", "repvit_m1_1"),
        (["+experiment=distill_1pct_pitl", "model/student=efficientvit_b1"], "pitl", "efficientvit_b1"),
        (["model=finetune", "model/student=tiny_vit_21m"], "finetune", "tiny_vit_21m"),
    ],
)
def test_student_is_chosen_in_the_config(overrides: list[str], model: str, student: str) -> None:
    cfg = compose_train(overrides)
    assert cfg.model.student == student
    assert cfg.model._target_.split(".")[1] == {"distill": "distill", "pitl": "pitl", "finetune": "finetune"}[model]


def test_stage_2_trains_a_timm_student(fast_overrides, tmp_path) -> None:
    """Prompt-in-the-loop (stage 2) with a RepViT student: one step, and the exported file is the student's."""
    cfg = compose_train(
        fast_overrides
        + ["model=pitl", "model/student=repvit_m0_9", "data.masks_per_image=2", "model.prompts_per_image=2"]
        + ["trainer.max_steps=1"]
    )
    result = run(cfg)
    assert Path(result["mobile_sam"]).name == "repvit_m0_9.pt"
    assert {"train/loss", "train/loss_mask", "train/loss_embedding"} <= set(result["metrics"])
    assert build_sam("auto", result["mobile_sam"]).image_encoder.img_size == 256


def test_a_timm_student_run_saves_its_own_file_and_sidecar(fast_overrides, tmp_path) -> None:
    cfg = compose_train(
        fast_overrides + ["model/student=efficientvit_b0", "model.loss=mse_cosine", "trainer.max_steps=1"]
    )
    result = run(cfg)
    path = Path(result["mobile_sam"])
    assert path.name == "efficientvit_b0.pt" and not (tmp_path / "run" / "mobile_sam.pt").exists()
    meta = json.loads(path.with_suffix(".json").read_text())
    assert (meta["student"], meta["variant"], meta["img_size"]) == ("efficientvit_b0", "efficientvit_b0", 256)
    model = build_sam("auto", path)  # strict, from the sidecar
    written = torch.load(path, weights_only=True)
    assert model.state_dict().keys() == written.keys()
    assert all(torch.equal(v, written[k]) for k, v in model.state_dict().items())
    # The Lightning checkpoint names the student in its hyper-parameters: the door builds it from there too
    ckpt = open_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert (ckpt.variant, ckpt.variant_from) == ("efficientvit_b0", "its hyper_parameters")
    assert {"train/loss_mse", "train/loss_cosine"} <= set(result["metrics"])


def test_shards_of_another_teacher_are_refused(fast_overrides, train_shards, teacher_file, tmp_path) -> None:
    manifest = read_manifest(train_shards)
    check_teacher(manifest, {"variant": "vit_t", "checkpoint": str(teacher_file)})  # the shards' own teacher
    with pytest.raises(ManifestError, match="another teacher .*variant 'vit_t' in the shards, 'vit_b' in the config"):
        check_teacher(manifest, {"variant": "vit_b", "checkpoint": str(teacher_file)})
    other = tmp_path / "other.pth"
    other.write_bytes(teacher_file.read_bytes() + b"\0")
    with pytest.raises(ManifestError, match="checkpoint_sha256 .* in the shards, '[0-9a-f]{64}' in the config"):
        check_teacher(manifest, {"variant": "vit_t", "checkpoint": str(other)})
    with pytest.raises(ManifestError, match="'random' in the config"):
        check_teacher(manifest, {"variant": "vit_t", "checkpoint": None})
    # and a run refuses them before its first step
    cfg = compose_train(fast_overrides + ["teacher.variant=vit_b"])
    with pytest.raises(ManifestError, match="made by another teacher than this run's"):
        run(cfg)


def test_embedding_cosine_against_a_reference() -> None:
    torch.manual_seed(0)
    s, t = torch.randn(2, 256, 4, 4), torch.randn(2, 256, 4, 4)
    ref = 1 - (s * t).sum(1) / (s.norm(dim=1) * t.norm(dim=1))
    assert torch.allclose(embedding_cosine(s, t, None, 64), ref.mean(), atol=1e-6)
    assert embedding_cosine(3 * t, t, None, 64).item() == pytest.approx(0.0, abs=1e-6)  # blind to the norm
    assert embedding_cosine(-t, t, None, 64).item() == pytest.approx(2.0, abs=1e-6)
    # with sizes: only the cells that cover a 32 x 16 image in a 64-pixel input (2 x 1 of the 4 x 4 cells)
    sizes = torch.tensor([[32, 16], [32, 16]])
    assert torch.allclose(embedding_cosine(s, t, sizes, 64), ref[:, :2, :1].mean(), atol=1e-6)


def test_timm_init_from_a_local_file(tmp_path) -> None:
    import timm

    torch.manual_seed(0)
    classifier = timm.create_model("repvit_m0_9", pretrained=False)  # stands in for timm's ImageNet weights
    path = tmp_path / "repvit_m0_9.pth"
    torch.save(classifier.state_dict(), path)
    sam = build_sam("repvit_m0_9", img_size=128)
    left = init_student(sam, f"timm:{path}")
    assert left and all(k.startswith("neck.") for k in left)  # the neck is SAM's, not ImageNet's
    own = sam.image_encoder.backbone.state_dict()
    assert torch.equal(
        own["stages_2.blocks.0.token_mixer.conv.c.weight"],
        classifier.state_dict()["stages.2.blocks.0.token_mixer.conv.c.weight"],
    )
    # the features of the initialised backbone are the classifier's own
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        ref = classifier.eval().forward_intermediates(x, indices=(2, 3), intermediates_only=True)
        got = sam.image_encoder.backbone.eval()(x)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(got, ref, strict=True))
    # another backbone's weights are refused, naming what is missing
    torch.save(timm.create_model("efficientvit_b0", pretrained=False).state_dict(), tmp_path / "b0.pth")
    with pytest.raises(CheckpointError, match="is not this student's backbone: it lacks"):
        init_student(build_sam("repvit_m0_9", img_size=128), f"timm:{tmp_path / 'b0.pth'}")
