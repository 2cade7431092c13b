"""Checkpoint safety and the derived inference state: strict loads, refused pickles, sidecars, stale caches."""

from __future__ import annotations

import json
import os

import pytest
import torch

from mobilesam import build_sam
from mobilesam.checkpoint import CheckpointError, load_state_dict, save_state_dict
from mobilesam.variants import infer_variant
from tests.helpers import perturb_, rel_err


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned_by_checkpoint",))


def test_pickle_that_runs_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil_mobile_sam.pt"
    torch.save({"image_encoder.x": _Exploit()}, path)
    with pytest.raises(CheckpointError, match="refusing to load"):
        build_sam("vit_t", path, img_size=256)
    assert not (tmp_path / "pwned_by_checkpoint").exists()


def test_foreign_checkpoint_names_missing_and_unexpected_keys(tmp_path):
    sd = build_sam("vit_t", img_size=256).state_dict()
    sd.pop("mask_decoder.iou_token.weight")
    sd["extra.weight"] = torch.zeros(3)
    path = tmp_path / "foreign.pt"
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as e:
        build_sam("vit_t", path, img_size=256)
    assert "mask_decoder.iou_token.weight" in str(e.value) and "extra.weight" in str(e.value)


def test_shape_mismatch_names_img_size(tmp_path):
    path = tmp_path / "b.pt"
    torch.save(build_sam("vit_b", img_size=256).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"conflicting img_size: 256 \(its positional embedding\), 512"):
        build_sam("vit_b", path, img_size=512)


def test_wrapper_prefixes_are_stripped_and_variant_inferred(tmp_path):
    model = perturb_(build_sam("vit_t", img_size=256))
    path = tmp_path / "ddp.pt"
    torch.save({f"module._orig_mod.{k}": v for k, v in model.state_dict().items()}, path)
    sd = load_state_dict(path)
    assert infer_variant(sd) == "vit_t"
    loaded = build_sam("auto", path, img_size=256)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())


def test_lightning_checkpoint_opens_through_the_front_door(tmp_path):
    model = build_sam("vit_t", img_size=256)
    state = {f"sam.{k}": v for k, v in model.state_dict().items()}
    path = tmp_path / "last.ckpt"
    hparams = {"cfg": {"model": {"img_size": 256}, "teacher": {"img_size": 1024}}}
    torch.save({"state_dict": state, "pytorch-lightning_version": "2.4", "hyper_parameters": hparams}, path)
    loaded = build_sam("auto", path)  # the same door as mobile_sam.pt: variant from the weights, size from hparams
    assert loaded.img_size == 256
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())
    assert load_state_dict(path).keys() == model.state_dict().keys()
    empty = tmp_path / "empty.ckpt"
    torch.save({"state_dict": {}, "pytorch-lightning_version": "2.4"}, empty)
    with pytest.raises(CheckpointError, match="self.sam"):
        load_state_dict(empty)


def test_sidecar_sets_img_size_and_refuses_another(tmp_path):
    model = build_sam("vit_t", img_size=256)
    path = save_state_dict(model.state_dict(), tmp_path / "mobile_sam.pt", meta={"img_size": 256, "variant": "vit_t"})
    assert json.loads((tmp_path / "mobile_sam.json").read_text())["img_size"] == 256
    assert build_sam("vit_t", path).img_size == 256
    assert build_sam("auto", path).img_size == 256
    with pytest.raises(CheckpointError, match=r"256 \(its sidecar\), 1024 \(the img_size asked for\)"):
        build_sam("vit_t", path, img_size=1024)
    with pytest.raises(CheckpointError, match="vit_t"):
        build_sam("vit_b", path)


def test_atomic_save_leaves_no_temp_files_and_a_normal_mode(tmp_path):
    save_state_dict({"a": torch.ones(2)}, tmp_path / "x.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "x.pt").stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600


@torch.no_grad()
def test_derived_state_never_goes_stale():
    """eval() before load, in-place edits, and train/eval switches all see the current weights."""
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    a = build_sam("vit_t", img_size=256)  # eval mode already
    a.image_encoder(x)  # fills the caches with a's random weights
    b = perturb_(build_sam("vit_t", img_size=256), seed=3)
    a.load_state_dict(b.state_dict())
    assert rel_err(a.image_encoder(x), b.image_encoder(x)) < 1e-6
    # an in-place change of one BatchNorm statistic and one bias table
    blk = a.image_encoder.layers[1].blocks[0]
    blk.local_conv.bn.running_var.mul_(2)
    blk.attn.attention_biases.add_(1)
    fresh = build_sam("vit_t", img_size=256)
    fresh.load_state_dict(a.state_dict())
    assert rel_err(a.image_encoder(x), fresh.image_encoder(x)) < 1e-6
    # training mode uses batch statistics; back in eval the folded weights are the running ones again
    out_eval = a.image_encoder(x)
    a.train()
    a.image_encoder(torch.randn(2, 3, 256, 256))
    a.eval()
    fresh.load_state_dict(a.state_dict())  # running stats moved during the train-mode pass
    assert rel_err(a.image_encoder(x), fresh.image_encoder(x)) < 1e-6
    assert not torch.equal(out_eval, a.image_encoder(x))
    # nothing derived ever reaches the state dict
    assert len(a.state_dict()) == 439
