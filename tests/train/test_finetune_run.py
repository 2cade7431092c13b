"""Fine-tuning end to end through `train.run`, as the README's commands run it: the shards made on first use, a few
steps, `mobile_sam.pt` that the official code and Ultralytics load, and the before/after evaluation report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from data.inputs import holdout_part
from data.synthetic_labels import labelled_samples, write_labelled_dataset
from mobilesam import build_sam
from mobilesam.checkpoint import save_state_dict
from mobilesam.protocol import PROMPT_TYPES
from tests.train.conftest import compose_train
from tests.train.test_finetune_data import write_folder
from tests.train.test_run import _consumers_load
from train.run import run

HOLDOUT = 0.5


@pytest.fixture(scope="module")
def start_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random MobileSAM at 256 with its sidecar: the `model.init` of the fine-tunes."""
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("start") / "mobile_sam.pt"
    return save_state_dict(build_sam("vit_t", img_size=256).state_dict(), path, meta={"img_size": 256})


def _common(tmp_path: Path) -> list[str]:
    return [
        f"paths.root_dir={tmp_path}",
        f"paths.data_dir={tmp_path / 'data'}",
        f"paths.output_dir={tmp_path / 'run'}",
        "trainer=cpu",
        "img_size=256",
        "trainer.max_steps=2",
        "trainer.enable_progress_bar=false",
        f"data.holdout={HOLDOUT}",
        "data.num_workers=0",
        "data.precompute.num_workers=0",
        "data.precompute.progress=false",
        "callbacks.before_after.masks_per_image=4",
    ]


def _check_before_after(run_dir: Path, comparisons: tuple[str, ...]) -> dict:
    summary = json.loads((run_dir / "evaluation" / "before_after.json").read_text())
    for comp in comparisons:
        for kind in PROMPT_TYPES:
            cell = summary["miou"][comp][kind]
            assert 0.0 <= cell["before"] <= 1.0 and 0.0 <= cell["after"] <= 1.0
            assert cell["change"] == pytest.approx(cell["after"] - cell["before"])
    for name in ("before", "after"):
        metrics = json.loads((run_dir / "evaluation" / name / "metrics.json").read_text())
        assert metrics["data"]["kind"] == "shards" and metrics["data"]["images"] >= 1
        assert (run_dir / "evaluation" / name / "examples.png").is_file()
    meta = json.loads((run_dir / "mobile_sam.json").read_text())
    assert meta["evaluation"]["miou"] == summary["miou"]
    return summary


@pytest.mark.parametrize("labels", ["coco", "objects"])
def test_finetune_masks_ends_with_a_loading_mobile_sam_and_a_before_after_report(labels, start_model, tmp_path):
    samples = labelled_samples(n_images=6, size=(96, 128), seed=0)
    assert {holdout_part(s["key"], HOLDOUT) for s in samples} == {"train", "val"}  # both parts get images
    paths = write_labelled_dataset(tmp_path / "labelled", samples)
    cfg = compose_train(
        [
            "+experiment=finetune_masks",
            f"data.images={paths['images']}",
            f"data.annotations={paths[labels]}",
            f"model.init={start_model}",
            "model.prompts_per_image=2",
            "model.refine_rounds=1",
        ]
        + _common(tmp_path)
    )
    result = run(cfg)
    path = Path(result["mobile_sam"])
    after, before = torch.load(path, weights_only=True), torch.load(start_model, weights_only=True)
    # the default freeze: the image and prompt encoders are the starting model's, the mask decoder trained
    for k, v in after.items():
        if k.startswith(("image_encoder.", "prompt_encoder.")):
            assert torch.equal(v, before[k]), k
    assert any(not torch.equal(v, before[k]) for k, v in after.items() if k.startswith("mask_decoder."))
    _consumers_load(path)
    _check_before_after(tmp_path / "run", ("vs_ground_truth",))


def test_finetune_domain_distils_on_a_folder_and_reports_the_embedding_error(start_model, teacher_file, tmp_path):
    write_folder(tmp_path / "imgs", 6, seed=4)  # NAME.json masks beside the images: mIoU on the held-out part too
    cfg = compose_train(
        [
            "+experiment=finetune_domain",
            f"data.root={tmp_path / 'imgs'}",
            f"model.init={start_model}",
            "teacher=vit_t",
            f"teacher.checkpoint={teacher_file}",
            "data.batch_size=2",
            "data.val_masks_per_image=2",
        ]
        + _common(tmp_path)
    )
    result = run(cfg)
    path = Path(result["mobile_sam"])
    sd = torch.load(path, weights_only=True)
    start = torch.load(start_model, weights_only=True)
    # the encoder trained; the prompt encoder and mask decoder are the starting model's (decoder_from: init)
    assert any(not torch.equal(v, start[k]) for k, v in sd.items() if k.startswith("image_encoder."))
    assert all(torch.equal(v, start[k]) for k, v in sd.items() if not k.startswith("image_encoder."))
    build_sam("vit_t", path)  # strict
    summary = _check_before_after(tmp_path / "run", ("vs_teacher", "vs_ground_truth"))
    mse = summary["miou"]["embedding_mse"]["vs_teacher"]
    assert mse["before"] > 0 and mse["after"] > 0
    # a second run finds the teacher's shards made by the first
    cache = sorted((tmp_path / "data" / "finetune").iterdir())
    run(cfg)
    assert sorted((tmp_path / "data" / "finetune").iterdir()) == cache
