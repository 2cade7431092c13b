"""A timm student (RepViT-M0.9) through the recipes that follow stage 1: both fine-tunes, started from its own
`<student>.pt`, and the evaluation entry point; each run is one step at img_size 128 with nothing else on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from data.synthetic_labels import labelled_samples, write_labelled_dataset
from evaluation.evaluate import run as run_evaluation
from mobilesam import build_sam
from mobilesam.checkpoint import save_state_dict
from mobilesam.files import sha256_file
from mobilesam.protocol import PROMPT_TYPES
from tests.helpers import random_student_file
from tests.mobilesam.test_students import _one_thread  # noqa: F401 (autouse: one intra-op thread)
from tests.train.conftest import CONFIGS, compose_train
from tests.train.test_finetune_data import write_folder
from train.run import run

STUDENT = "repvit_m0_9"
S = 128


@pytest.fixture(scope="module")
def student_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random RepViT-M0.9 SAM at 128 saved as the student's own file, beside the sidecar that names it."""
    return random_student_file(STUDENT, S, tmp_path_factory.mktemp("student"), seed=1)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Four generated images with COCO masks (two held out at data.holdout=0.5)."""
    return write_labelled_dataset(tmp_path_factory.mktemp("labelled"), labelled_samples(4, size=(96, 128), seed=0))


def _one_step(tmp_path: Path) -> list[str]:
    """One CPU step at 128 with the before/after evaluation and the pictures off (evaluated below on their own)."""
    return [
        f"paths.root_dir={tmp_path}",
        f"paths.data_dir={tmp_path / 'data'}",
        f"paths.output_dir={tmp_path / 'run'}",
        "trainer=cpu",
        f"img_size={S}",
        "trainer.max_steps=1",
        "trainer.limit_val_batches=1",
        "trainer.enable_progress_bar=false",
        "data.holdout=0.5",
        "data.num_workers=0",
        "data.precompute.num_workers=0",
        "data.precompute.progress=false",
        "data.val_masks_per_image=1",
        "~callbacks.before_after",
        "~callbacks.mask_pictures",
        f"model/student={STUDENT}",
    ]


def _written(result: dict) -> dict[str, torch.Tensor]:
    """The run's weights file: the student's own name, a sidecar naming it, a strict load."""
    path = Path(result["mobile_sam"])
    assert path.name == f"{STUDENT}.pt" and not (path.parent / "mobile_sam.pt").exists()
    assert json.loads(path.with_suffix(".json").read_text())["student"] == STUDENT
    assert type(build_sam("auto", path).image_encoder).__name__ == "TimmStudent"
    return torch.load(path, weights_only=True)


def test_finetune_masks_starts_from_a_student_file(student_file, labelled, tmp_path) -> None:
    """`+experiment=finetune_masks model/student=repvit_m0_9 model.init=repvit_m0_9.pt`: the starting student
    embeds the images (the experiment's teacher follows model/student), and only the mask decoder trains."""
    cfg = compose_train(
        ["+experiment=finetune_masks", f"data.images={labelled['images']}", f"data.annotations={labelled['coco']}"]
        + [f"model.init={student_file}", "model.prompts_per_image=1", "model.refine_rounds=0"]
        + ["data.masks_per_image=1"]
        + _one_step(tmp_path)
    )
    assert cfg.teacher.variant == STUDENT
    after, before = _written(run(cfg)), torch.load(student_file, weights_only=True)
    frozen = ("image_encoder.", "prompt_encoder.")
    assert all(torch.equal(v, before[k]) for k, v in after.items() if k.startswith(frozen))
    assert any(not torch.equal(v, before[k]) for k, v in after.items() if k.startswith("mask_decoder."))
    (manifest,) = (tmp_path / "data" / "finetune").glob("*/train/dataset.json")
    teacher = json.loads(manifest.read_text())["teacher"]
    assert (teacher["variant"], teacher["checkpoint_sha256"]) == (STUDENT, sha256_file(student_file))


def test_finetune_domain_starts_from_a_student_file(student_file, teacher_file, tmp_path) -> None:
    """`+experiment=finetune_domain model/student=repvit_m0_9 model.init=repvit_m0_9.pt`: the student's encoder
    learns the teacher's embeddings; its prompt encoder and mask decoder stay the starting file's."""
    write_folder(tmp_path / "imgs", 4, seed=4)
    cfg = compose_train(
        ["+experiment=finetune_domain", f"data.root={tmp_path / 'imgs'}", f"model.init={student_file}"]
        + ["teacher=vit_t", f"teacher.checkpoint={teacher_file}", "data.batch_size=2"]
        + _one_step(tmp_path)
    )
    after, before = _written(run(cfg)), torch.load(student_file, weights_only=True)
    assert any(not torch.equal(v, before[k]) for k, v in after.items() if k.startswith("image_encoder."))
    assert all(torch.equal(v, before[k]) for k, v in after.items() if not k.startswith("image_encoder."))


def test_evaluation_entry_point_takes_a_student(student_file, labelled, tmp_path) -> None:
    """`scripts/evaluate.py checkpoint=repvit_m0_9.pt dataset=coco ... teacher.checkpoint=repvit_m0_9.pt`: the
    student's file read from its sidecar on both sides, so its masks are the teacher's exactly."""
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        cfg = compose(
            "evaluate",
            [f"checkpoint={student_file}", f"out_dir={tmp_path}", "dataset=coco", f"images={labelled['images']}"]
            + [f"annotations={labelled['coco']}", f"teacher.variant={STUDENT}", f"teacher.checkpoint={student_file}"]
            + ["masks_per_image=2", "num_workers=0", "device=cpu", "examples=0", "progress=false"],
        )
    result = run_evaluation(cfg)
    assert result["checkpoint"]["variant"] == result["teacher"]["variant"] == STUDENT
    assert result["checkpoint"]["img_size"] == S and result["data"]["images"] == 4
    assert result["vs_teacher"] == {k: 1.0 for k in PROMPT_TYPES}  # the same encoder on the same pixels
    assert result["vs_ground_truth"] == result["teacher_vs_ground_truth"]
    assert json.loads((tmp_path / "metrics.json").read_text())["vs_teacher"] == result["vs_teacher"]


def test_a_student_file_given_to_another_student_names_the_one_it_holds(student_file, tmp_path) -> None:
    """model.init=repvit_m0_9.pt without model/student=repvit_m0_9 (or with another): the error says which."""
    from mobilesam.checkpoint import CheckpointError
    from train.init import init_student

    for other in ("tiny_vit_5m", "repvit_m1_1"):
        with pytest.raises(CheckpointError, match=f"it holds {STUDENT} weights: set model/student={STUDENT}$"):
            init_student(build_sam(other, img_size=S), str(student_file))
    mobile_sam = save_state_dict(build_sam("vit_t", img_size=S).state_dict(), tmp_path / "mobile_sam.pt")
    with pytest.raises(CheckpointError, match="it holds tiny_vit_5m weights: set model/student=tiny_vit_5m$"):
        init_student(build_sam(STUDENT, img_size=S), str(mobile_sam))
