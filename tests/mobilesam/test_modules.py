"""Module-level checks in timm's manner: every used parameter trains; import isolation of the inference core."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from mobilesam import build_sam
from tests.helpers import perturb_


@pytest.mark.parametrize("variant,size", [("vit_t", 256), ("vit_b", 128)])
def test_every_parameter_the_forward_uses_gets_a_gradient(variant, size):
    # perturbed: fresh weights zero some branches on purpose (MBConv's last BatchNorm starts at 0)
    model = perturb_(build_sam(variant, img_size=size)).train()
    x = torch.randn(2, 3, size, size)
    emb = model.image_encoder(x)
    pts = (torch.tensor([[[10.0, 20.0]], [[50.0, 60.0]]]), torch.tensor([[1], [0]]))
    pe = model.prompt_encoder.get_dense_pe()
    # points alone (padding point, no-mask embedding), then points + boxes + a mask input
    for boxes, mask_in in [
        (None, None),
        (torch.tensor([[0.0, 0, 40, 40], [5, 5, 90, 90]]), torch.randn(2, 1, size // 4, size // 4)),
    ]:
        sparse, dense = model.prompt_encoder(pts, boxes, mask_in)
        masks, iou = model.mask_decoder.predict_masks(emb, pe, sparse, dense)  # all four outputs
        (masks.mean() + iou.mean()).backward(retain_graph=True)
    unused = {
        "image_encoder.head.weight",
        "image_encoder.head.bias",
        "image_encoder.norm_head.weight",
        "image_encoder.norm_head.bias",
    }
    missing = [n for n, p in model.named_parameters() if n not in unused and (p.grad is None or not p.grad.any())]
    assert missing == []


def test_eval_mode_keeps_the_module_tree_and_grad_flows_in_eval():
    model = build_sam("vit_t", img_size=256)
    names = [n for n, _ in model.named_modules()]
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        model.image_encoder(x)
    assert [n for n, _ in model.named_modules()] == names
    # gradients still reach conv weights through the folded BatchNorm in eval mode
    model.image_encoder(x).sum().backward()
    assert model.image_encoder.patch_embed.seq[0].c.weight.grad.abs().sum() > 0


BLOCKER = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'lightning', 'pytorch_lightning', 'hydra', 'omegaconf', 'webdataset', 'wandb'}:
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
import numpy as np, mobilesam
from mobilesam.cli import main
m = mobilesam.SAM(None, device='cpu', img_size=256)
r, = m.predict(np.zeros((40, 60, 3), np.uint8), points=[10, 10])
assert r.masks.shape == (1, 40, 60)
bad = [k for k in sys.modules if k.split('.')[0] in {'lightning', 'hydra', 'webdataset', 'wandb'}]
assert not bad, bad
print('ok')
"""


def test_inference_core_imports_without_training_dependencies():
    out = subprocess.run([sys.executable, "-c", BLOCKER], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")


@torch.no_grad()
def test_every_way_to_run_the_two_way_transformer_gives_the_reference_decoder():
    """The block and its loop are written once (`modeling.transformer`); the static padded path of the exported
    decoders (batched-matmul kernel, padding tokens masked) and the factored many-prompt path supply only their
    attention, and both give the reference decoder's numbers."""
    from mobilesam.deploy.static_decoder import StaticDecoder
    from mobilesam.many_prompts import decode_low_res
    from tests.helpers import rel_err

    sam = perturb_(build_sam("vit_t", img_size=256), seed=4).eval()
    pe, dec = sam.prompt_encoder, sam.mask_decoder
    emb = torch.randn(1, 256, 16, 16, generator=torch.Generator().manual_seed(0))
    static = StaticDecoder(sam, max_points=6)
    cases = [  # (points, labels, box): three points; a point and a box
        (torch.tensor([[[30.0, 40.0], [200.0, 90.0], [120.0, 250.0]]]), torch.tensor([[1, 0, 1]]), None),
        (torch.tensor([[[100.0, 60.0]]]), torch.tensor([[0]]), torch.tensor([[20.0, 30.0, 180.0, 150.0]])),
    ]
    for points, labels, box in cases:
        sparse, dense = pe((points, labels), box, None)
        want, want_iou = dec.predict_masks(emb, pe.get_dense_pe(), sparse, dense)
        # the factored path on a batch of two identical prompt sets (shared, then per-prompt image tokens)
        got, iou = decode_low_res(pe, dec, emb, sparse.expand(2, -1, -1), dense.expand(2, -1, -1, -1))
        assert rel_err(got, want.expand(2, -1, -1, -1)) < 1e-5 and rel_err(iou, want_iou.expand(2, -1)) < 1e-5
        # the static path: the prompt in 6 slots, the rest padding (label -1); a box is two corners labelled 2, 3
        coords, slots = torch.zeros(1, 6, 2), torch.full((1, 6), -1.0)
        n = points.shape[1]
        coords[:, :n], slots[:, :n] = points, labels.float()
        if box is not None:
            coords[0, n : n + 2], slots[0, n : n + 2] = box.view(2, 2), torch.tensor([2.0, 3.0])
        got, iou = static(emb, coords, slots)
        assert rel_err(got, want) < 1e-5 and rel_err(iou, want_iou) < 1e-5
