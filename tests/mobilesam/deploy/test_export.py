"""`mobilesam export` without ONNX: the official weights file from every kind of source, and its consumers."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from mobilesam import build_sam
from mobilesam.checkpoint import CheckpointError, find_setting, open_checkpoint, save_state_dict
from mobilesam.cli import main
from mobilesam.export import export
from mobilesam.files import sha256_file
from tests.helpers import official_registry, perturb_


def _assert_same_weights(path, reference: dict[str, torch.Tensor]) -> None:
    saved = torch.load(path, map_location="cpu", weights_only=True)
    assert list(saved) == list(reference)
    for k, v in reference.items():
        assert torch.equal(saved[k], v), k


@pytest.fixture(scope="module")
def official_export(tmp_path_factory):
    """A 1024 vit_t checkpoint with the official model's keys, no sidecar, exported with the CLI."""
    tmp = tmp_path_factory.mktemp("official")
    official = perturb_(official_registry()["vit_t"](), seed=3)
    src = tmp / "weights.pth"  # any name: the export names its output
    torch.save(official.state_dict(), src)
    assert main(["export", str(src), "--out", str(tmp / "out")]) == 0
    return src, tmp / "out" / "mobile_sam.pt", official.state_dict()


def test_export_writes_the_official_key_set_and_a_sidecar(official_export):
    src, path, official_state = official_export
    _assert_same_weights(path, official_state)
    assert len(official_state) == 439
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["img_size"] == 1024 and meta["variant"] == "vit_t"  # no sidecar: the official size
    assert meta["source_sha256"] == sha256_file(src)
    assert meta["mobilesam_version"] == "0.1.0"
    assert "onnx" not in meta
    assert not list(path.parent.glob(".*"))  # no temp files left behind


def test_exported_file_loads_strictly_in_the_official_code(official_export):
    _, path, official_state = official_export
    # the official builder calls load_state_dict (strict) on torch.load(path)
    model = official_registry()["vit_t"](checkpoint=str(path))
    for k, v in model.state_dict().items():
        assert torch.equal(v, official_state[k]), k


def test_exported_file_runs_in_ultralytics(official_export):
    _, path, official_state = official_export
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from ultralytics import SAM as UltralyticsSAM

    model = UltralyticsSAM(str(path))  # the name ends in mobile_sam.pt: Ultralytics builds MobileSAM, strictly
    for k, v in model.model.state_dict().items():
        assert torch.equal(v, official_state[k]), k
    image = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    (result,) = model.predict(image, points=[[80, 60]], labels=[1], device="cpu", verbose=False)
    assert result.masks.data.shape[-2:] == (120, 160)


def test_sidecar_of_the_source_is_merged_and_its_size_kept(small_checkpoint, tmp_path):
    written = export(small_checkpoint, tmp_path)
    meta = json.loads(written["sidecar"].read_text())
    assert meta["img_size"] == 256 and meta["variant"] == "vit_t"
    _assert_same_weights(written["weights"], build_sam("vit_t", small_checkpoint).state_dict())
    assert build_sam("vit_t", written["weights"]).img_size == 256  # the sidecar travels with the weights
    with pytest.raises(CheckpointError, match="conflicting img_size: 256 .its sidecar., 1024 .the img_size asked for."):
        export(small_checkpoint, tmp_path / "b", img_size=1024)


def test_sam_vit_source_is_named_for_ultralytics_and_sized_from_its_weights(tmp_path):
    model = build_sam("vit_b", img_size=256)
    src = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save(model.state_dict(), src)
    written = export(src, tmp_path / "out")
    assert written["weights"].name == "sam_b.pt"  # Ultralytics' builder suffix for SAM ViT-B
    assert json.loads(written["sidecar"].read_text())["img_size"] == 256  # from pos_embed, 1 x 16 x 16 x 768
    assert build_sam("auto", written["weights"]).img_size == 256


def _lightning_dict(state: dict[str, torch.Tensor], hparams: dict) -> dict:
    return {"state_dict": state, "pytorch-lightning_version": "2.5.0", "hyper_parameters": hparams, "epoch": 1}


def test_training_checkpoint_from_lightning_exports_the_sam_weights(tmp_path):
    L = pytest.importorskip("lightning")

    class Module(L.LightningModule):
        def __init__(self, cfg: dict) -> None:
            super().__init__()
            self.save_hyperparameters({"cfg": cfg})
            self.sam = build_sam("vit_t", img_size=cfg["model"]["img_size"])
            self.teacher = torch.nn.Linear(2, 2)  # other weights of the module are ignored

    cfg = {"model": {"img_size": 256, "variant": "vit_t"}, "teacher": {"variant": "vit_h", "img_size": 1024}}
    module = Module(cfg)
    perturb_(module.sam, seed=4)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(module)
    ckpt = tmp_path / "last.ckpt"
    trainer.save_checkpoint(ckpt)

    written = export(ckpt, tmp_path / "out")
    _assert_same_weights(written["weights"], module.sam.state_dict())
    meta = json.loads(written["sidecar"].read_text())
    assert meta["img_size"] == 256 and meta["variant"] == "vit_t"
    assert meta["hyper_parameters"] == {"cfg": cfg}


def test_training_checkpoint_prefixes_and_nesting(tmp_path):
    state = build_sam("vit_t", img_size=256).state_dict()
    # torch.compile inside the module, and a teacher whose settings must not be taken for the student's
    keys = {f"sam.image_encoder._orig_mod.{k[14:]}" if k.startswith("image_encoder.") else f"sam.{k}": v
            for k, v in state.items()}  # fmt: skip
    keys["teacher.image_encoder.pos_embed"] = torch.zeros(1)
    hparams = {"teacher": {"img_size": 1024, "variant": "vit_h"}, "cfg": {"model": {"img_size": 512}, "img": 1}}
    path = tmp_path / "x.ckpt"
    torch.save(_lightning_dict(keys, hparams), path)
    src = open_checkpoint(path)
    assert (src.variant, src.img_size) == ("vit_t", 512)
    assert list(src.state_dict) == list(state)


def test_find_setting_prefers_the_model_and_skips_the_teacher():
    hp = {"teacher": {"img_size": 1024}, "data": {"img_size": 256}, "cfg": {"model": {"img_size": 512}}}
    assert find_setting(hp, "img_size") == 512
    assert find_setting({"data": {"img_size": 256}}, "img_size") == 256
    assert find_setting({"teacher": {"variant": "vit_h"}}, "variant") is None


def test_bad_training_checkpoints_fail_clearly(tmp_path):
    state = {f"sam.{k}": v for k, v in build_sam("vit_t", img_size=256).state_dict().items()}
    no_size = tmp_path / "no_size.ckpt"
    torch.save(_lightning_dict(state, {"lr": 1e-3}), no_size)
    with pytest.raises(CheckpointError, match="no img_size .*--img-size"):
        open_checkpoint(no_size)
    assert open_checkpoint(no_size, img_size=256).img_size == 256

    wrong_variant = tmp_path / "wrong_variant.ckpt"
    torch.save(_lightning_dict(state, {"img_size": 256, "variant": "vit_b"}), wrong_variant)
    with pytest.raises(CheckpointError, match="its hyper_parameters says 'vit_b' but its weights are 'vit_t'"):
        open_checkpoint(wrong_variant)

    no_sam = tmp_path / "no_sam.ckpt"
    torch.save(_lightning_dict({"student.w": torch.zeros(1)}, {"img_size": 256}), no_sam)
    with pytest.raises(CheckpointError, match=r"none of its 1 weights is under 'sam\.'.*\['student'\]"):
        open_checkpoint(no_sam)


def test_cli_refuses_a_file_that_does_not_fit(tmp_path, capsys):
    state = build_sam("vit_t", img_size=256).state_dict()
    del state["mask_decoder.iou_token.weight"]
    src = tmp_path / "broken_mobile_sam.pt"
    save_state_dict(state, src)
    assert main(["export", str(src), "--out", str(tmp_path / "out")]) == 1
    assert "Missing keys: mask_decoder.iou_token.weight" in capsys.readouterr().err
    assert not (tmp_path / "out" / "mobile_sam.pt").exists()


def test_cli_refuses_an_opset_the_exporter_cannot_write(small_checkpoint, tmp_path, capsys):
    pytest.importorskip("onnxscript")
    for opset in ("17", "99"):
        assert main(["export", str(small_checkpoint), "--out", str(tmp_path), "--onnx", "--opset", opset]) == 1
        assert f"error: opset {opset} is not available: choose 18 to" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # refused before anything was written
