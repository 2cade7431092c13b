"""Student initialisation: timm's TinyViT layout remapped to MobileSAM's names, and mobile_sam.pt."""

from __future__ import annotations

import pytest
import torch
from timm.models import tiny_vit

from mobilesam import build_sam
from mobilesam.checkpoint import CheckpointError, save_state_dict
from tests.helpers import perturb_
from train.init import init_student, timm_to_mobilesam


def test_every_timm_tensor_lands_where_it_should(tmp_path):
    # timm's own builder, not timm.create_model: importing the official MobileSAM code (other tests do) replaces
    # the registry's tiny_vit_5m_224 with MobileSAM's own TinyViT
    ref = perturb_(tiny_vit.tiny_vit_5m_224(pretrained=False, num_classes=1000), seed=7)
    path = tmp_path / "tiny_vit_5m_224.pth"
    torch.save(ref.state_dict(), path)
    sam = build_sam("vit_t", img_size=256)
    neck_before = {k: v.clone() for k, v in sam.image_encoder.state_dict().items() if k.startswith("neck.")}
    left = init_student(sam, f"timm:{path}")
    assert sorted(left) == sorted(neck_before)  # only the SAM neck has no ImageNet counterpart
    own = sam.image_encoder.state_dict()
    mapped = timm_to_mobilesam(ref.state_dict())
    src = {k: v for k, v in ref.state_dict().items() if not k.endswith("attention_bias_idxs")}
    assert len(mapped) == len(src) == len(own) - len(neck_before)
    # spot-check the renames that move tensors between stages, then every tensor
    pairs = {
        "patch_embed.conv1.conv.weight": "patch_embed.seq.0.c.weight",
        "patch_embed.conv2.bn.running_var": "patch_embed.seq.2.bn.running_var",
        "stages.1.downsample.conv1.conv.weight": "layers.0.downsample.conv1.c.weight",
        "stages.3.downsample.conv2.bn.weight": "layers.2.downsample.conv2.bn.weight",
        "stages.2.blocks.5.attn.attention_biases": "layers.2.blocks.5.attn.attention_biases",
        "stages.2.blocks.0.local_conv.conv.weight": "layers.2.blocks.0.local_conv.c.weight",
        "head.fc.weight": "head.weight",
        "head.norm.bias": "norm_head.bias",
    }
    for t, m in pairs.items():
        assert torch.equal(own[m], ref.state_dict()[t]), (t, m)
    for k, v in mapped.items():
        assert torch.equal(own[k], v), k
    for k, v in neck_before.items():
        assert torch.equal(own[k], v)


def test_imagenet22k_head_is_left_alone(tmp_path):
    ref = tiny_vit.tiny_vit_5m_224(pretrained=False, num_classes=21841)
    path = tmp_path / "in22k.pth"
    torch.save({"model": ref.state_dict()}, path)
    sam = build_sam("vit_t", img_size=256)
    left = init_student(sam, f"timm:{path}")
    assert "head.weight" in left and sam.image_encoder.head.weight.shape == (1000, 320)


def test_init_from_mobile_sam(tmp_path):
    src = perturb_(build_sam("vit_t", img_size=256), seed=2)
    path = save_state_dict(src.state_dict(), tmp_path / "mobile_sam.pt")
    sam = build_sam("vit_t", img_size=256)
    assert init_student(sam, str(path)) == []
    for k, v in src.image_encoder.state_dict().items():
        assert torch.equal(sam.image_encoder.state_dict()[k], v)
    # only the encoder: the decoder is not taken from there
    assert not torch.equal(sam.mask_decoder.iou_token.weight, src.mask_decoder.iou_token.weight)


def test_foreign_init_is_refused(tmp_path):
    path = tmp_path / "sam_vit_b.pth"
    torch.save(build_sam("vit_b", img_size=128).state_dict(), path)
    with pytest.raises(CheckpointError, match="keys the student does not"):
        init_student(build_sam("vit_t", img_size=256), str(path))
